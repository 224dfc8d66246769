r"""DC motor driving a centrifugal pump."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

import twinjax as tj
from twinjax.model.dynamics import AbstractDynamics

from ._utils import param


class DCMotorPump(AbstractDynamics):
    r"""Permanent-magnet DC motor driving a centrifugal pump, with viscous and (smoothed) Coulomb friction.

    State ``x = [ω, i]`` (shaft speed in rad/s, armature current in A), control ``u = [V]`` (armature voltage, V).

    $$
    \begin{aligned}
    L \frac{di}{dt} &= V - R\, i - k\, \omega, \\
    J \frac{d\omega}{dt} &= k\, i - \underbrace{k_{\mathrm{load}}\, \omega |\omega|}_{\text{pump load}}
        - \underbrace{b\, \omega}_{\text{viscous friction}}
        - \underbrace{\tau_c \tanh(\omega / \omega_c)}_{\text{Coulomb friction, smoothed}},
    \end{aligned}
    $$

    with one motor constant ``k`` for torque (N m/A) and back-EMF (V s/rad), as in SI units. The pump's hydraulic
    torque follows the affinity laws (torque ∝ ω², flow ∝ ω); ``ω|ω|`` keeps it opposing the motion and C¹ at 0.
    Outputs (:meth:`outputs`): speed, current and flow ``Q = q_ω ω``.

    The two physical factors that set the operating point are the **load factor** ``load_coeff`` (the pump's
    hydraulic load — impeller size, fluid density, valve/pipe resistance) and the **friction factor**
    ``friction_coeff`` (bearing and seal wear, lubrication). At steady state they are the only mechanical terms
    balancing the motor torque, so a change in speed–current behaviour can be attributed to one or the other.

    Default values: a 12 V, ~30 W brushed DC motor on a small circulation pump (no-load speed ≈ 240 rad/s ≈ 2300 rpm,
    ≈ 217 rad/s and 2.3 A at 12 V with the default load; electrical time constant ``L/R`` = 1 ms, mechanical
    ``J R / k²`` = 40 ms). Assumed, typical values, not a particular product.

    Arguments:
        resistance_ohm: armature resistance ``R`` (Ω). Default 0.5.
        inductance_H: armature inductance ``L`` (H). Default 5e-4.
        motor_constant_Nm_A: torque / back-EMF constant ``k`` (N m/A = V s/rad). Default 0.05.
        inertia_kg_m2: rotor + impeller inertia ``J`` (kg m²). Default 2e-4.
        load_coeff: pump load factor ``k_load`` (N m s²/rad²). Default 2e-6.
        friction_coeff: viscous friction factor ``b`` (N m s/rad). Default 1e-4.
        coulomb_friction_Nm: Coulomb (dry) friction torque ``τ_c`` (N m). Default 0.
        coulomb_speed_rad_s: smoothing speed ``ω_c`` of the Coulomb term (rad/s). Default 1.
        flow_per_rad_m3: volumetric flow per unit speed ``q_ω`` (m³/rad). Default 1e-6 (≈ 0.22 L/s at 217 rad/s).

    Example:
        ```python
        pump = DCMotorPump(load_coeff=3e-6)
        pump.steady_state(jnp.array([12.0]))  # [ω, i] at 12 V
        ```

    References:
        K. Ogata, *System Dynamics*, 4th ed., Pearson, 2004, §6-5 (armature-controlled DC motor);
        I. J. Karassik et al., *Pump Handbook*, 4th ed., McGraw-Hill, 2008, §2.1 (affinity laws).
    """

    resistance_ohm: Float[ArrayLike, ""] = param(0.5)
    inductance_H: Float[ArrayLike, ""] = param(5.0e-4)
    motor_constant_Nm_A: Float[ArrayLike, ""] = param(0.05)
    inertia_kg_m2: Float[ArrayLike, ""] = param(2.0e-4)
    load_coeff: Float[ArrayLike, ""] = param(2.0e-6)
    friction_coeff: Float[ArrayLike, ""] = param(1.0e-4)
    coulomb_friction_Nm: Float[ArrayLike, ""] = param(0.0)
    coulomb_speed_rad_s: Float[ArrayLike, ""] = param(1.0)
    flow_per_rad_m3: Float[ArrayLike, ""] = param(1.0e-6)

    def _voltage(self, u):
        if u.shape != (1,):
            raise ValueError(f"control must be [voltage_V]; got shape {u.shape}.")
        return u[0]

    def load_torque_Nm(self, omega: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Total resisting torque at speed ``omega`` (N m): pump load + viscous + smoothed Coulomb friction."""
        return (
            self.load_coeff * omega * jnp.abs(omega)
            + self.friction_coeff * omega
            + self.coulomb_friction_Nm * jnp.tanh(omega / self.coulomb_speed_rad_s)
        )

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]
    ) -> Float[Array, " 2"]:
        """``[dω/dt, di/dt]`` for state ``[ω, i]`` and control ``[V]``."""
        voltage = self._voltage(u)
        omega, current = x[0], x[1]
        k = self.motor_constant_Nm_A
        domega = (k * current - self.load_torque_Nm(omega)) / self.inertia_kg_m2
        dcurrent = (voltage - self.resistance_ohm * current - k * omega) / self.inductance_H
        return jnp.stack([domega, dcurrent]).astype(x.dtype)

    def outputs(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]
    ) -> Float[Array, " 3"]:
        """Measured outputs ``[ω (rad/s), i (A), Q (m³/s)]``."""
        return jnp.stack([x[0], x[1], self.flow_per_rad_m3 * x[0]])

    def steady_state(self, u: Float[Array, " control"], n_iter: int = 30) -> Float[Array, " 2"]:
        r"""Equilibrium ``[ω, i]`` under constant voltage ``u = [V]``, solving the torque balance

        $$ \frac{k (V - k \omega)}{R} = k_{\mathrm{load}} \omega|\omega| + b\omega + \tau_c \tanh(\omega/\omega_c) $$

        by ``n_iter`` safeguarded Newton steps (bisection fallback) on the bracket between 0 and the no-load speed
        ``V/k``; the residual is strictly decreasing in ω, so the root is unique. Differentiable (implicitly through
        the iterations).
        """
        voltage = self._voltage(u)
        k, r = self.motor_constant_Nm_A, self.resistance_ohm

        def residual(w):
            return k * (voltage - k * w) / r - self.load_torque_Nm(w)

        lo = jnp.minimum(0.0, voltage / k)
        hi = jnp.maximum(0.0, voltage / k)

        def body(_, carry):
            w, lo, hi = carry
            f, df = jax.value_and_grad(residual)(w)
            positive = f > 0  # residual decreases in w: the root lies above w
            lo = jnp.where(positive, w, lo)
            hi = jnp.where(positive, hi, w)
            newton = w - f / df
            inside = (newton >= lo) & (newton <= hi)  # inclusive: a converged iterate equals a bracket end
            return jnp.where(inside, newton, 0.5 * (lo + hi)), lo, hi

        w0 = 0.5 * (lo + hi)
        omega, _, _ = jax.lax.fori_loop(0, n_iter, body, (w0, lo, hi))
        return jnp.stack([omega, (voltage - k * omega) / r])


def pump_twin(
    pump: DCMotorPump | None = None,
    *,
    dt: float = 0.01,
    speed_sd_rad_s: float = 1.0,
    current_sd_A: float = 0.05,
    flow_sd_m3_s: float = 5e-6,
) -> tj.StateSpaceModel:
    """A pump twin: speed, current and flow (:meth:`DCMotorPump.outputs`) measured every ``dt`` (s) with Gaussian
    noise; input ``u = [V]``. Initial belief: at rest, ``N(0, diag(1, 0.01))``.

    The sensor function is the method ``pump.outputs``, bound by ``tj.StateSpaceModel`` to the twin's current dynamics
    (parameter edits reach the sensor).
    """
    pump = DCMotorPump() if pump is None else pump
    cov = jnp.diag(jnp.array([speed_sd_rad_s**2, current_sd_A**2, flow_sd_m3_s**2]))
    return tj.StateSpaceModel(
        pump,
        tj.GaussianObservation(pump.outputs, cov),
        tj.Gaussian(jnp.zeros(2), jnp.diag(jnp.array([1.0, 0.01]))),
        dt,
        control_dim=1,
    )
