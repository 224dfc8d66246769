r"""Damped pendulum driven by a torque."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

import twinjax as tj
from twinjax.model.dynamics import AbstractDynamics

from ._utils import param, single_input


class Pendulum(AbstractDynamics):
    r"""Damped rigid pendulum with an applied torque.

    State ``x = [θ, ω]`` (rad, rad/s; θ = 0 hanging down), control ``u = [τ]`` (N m) or ``u`` of shape ``(0,)`` (no
    torque).

    $$ \dot\theta = \omega, \qquad
       \dot\omega = -\frac{g}{L}\sin\theta - c\,\omega + \frac{\tau}{m L^2}, $$

    with total mechanical energy $E = \tfrac12 m L^2 \omega^2 + m g L (1 - \cos\theta)$, conserved when ``c = 0`` and
    ``τ = 0``. For small angles it is the damped harmonic oscillator with natural frequency $\omega_0 = \sqrt{g/L}$.

    Arguments:
        length_m: pendulum length ``L`` (m), point mass at its end. Default 1.
        mass_kg: bob mass ``m`` (kg). Default 1.
        damping_per_s: damping rate ``c`` (1/s), i.e. a viscous torque ``c m L² ω``. Default 0.1.
        gravity_m_s2: gravitational acceleration ``g`` (m/s²). Default 9.81 (standard gravity, rounded).

    Example:
        ```python
        pendulum = Pendulum(length_m=0.5)
        pendulum.vector_field(0.0, jnp.array([0.1, 0.0]), jnp.zeros(0))
        ```

    References:
        S. H. Strogatz, *Nonlinear Dynamics and Chaos*, 2nd ed., Westview, 2015, §6.7.
    """

    length_m: Float[ArrayLike, ""] = param(1.0)
    mass_kg: Float[ArrayLike, ""] = param(1.0)
    damping_per_s: Float[ArrayLike, ""] = param(0.1)
    gravity_m_s2: Float[ArrayLike, ""] = param(9.81)

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]
    ) -> Float[Array, " 2"]:
        """``[dθ/dt, dω/dt]`` for state ``[θ, ω]`` and control ``[τ]`` (or empty)."""
        torque = single_input(u, "torque_Nm")
        theta, omega = x[0], x[1]
        domega = (
            -(self.gravity_m_s2 / self.length_m) * jnp.sin(theta)
            - self.damping_per_s * omega
            + torque / (self.mass_kg * self.length_m**2)
        )
        return jnp.stack([omega, domega.astype(x.dtype)])

    def energy(self, x: Float[Array, " 2"]) -> Float[Array, ""]:
        """Total mechanical energy (J): kinetic ``½ m L² ω²`` plus potential ``m g L (1 − cos θ)``."""
        m, length = self.mass_kg, self.length_m
        return 0.5 * m * length**2 * x[1] ** 2 + m * self.gravity_m_s2 * length * (1.0 - jnp.cos(x[0]))

    def linearised_matrices(self) -> tuple[Float[Array, "2 2"], Float[Array, "2 1"]]:
        """Continuous-time ``(A, B)`` of the linearisation about the hanging equilibrium ``θ = ω = τ = 0``."""
        a = jnp.array([[0.0, 1.0], [-self.gravity_m_s2 / self.length_m, -self.damping_per_s]])
        b = jnp.array([[0.0], [1.0 / (self.mass_kg * self.length_m**2)]])
        return a, b


def _angle(t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]) -> Float[Array, " 1"]:
    return x[:1]


def pendulum_twin(
    pendulum: Pendulum | None = None,
    *,
    dt: float = 0.05,
    angle_sd_rad: float = 0.05,
    process_noise: ArrayLike | None = None,
) -> tj.StateSpaceModel:
    """A pendulum twin: angle measured with Gaussian noise every ``dt`` (s), torque input ``u = [τ]``.

    ``process_noise``: optional additive process-noise covariance per interval ``dt`` (a ``(2, 2)`` matrix or the
    two variances), the model error a filter should allow for.

    Initial belief ``N([1, 0], diag(0.1², 0.1²))`` (rad, rad/s). Default pendulum: :class:`Pendulum` ``()``.

    Example:
        ```python
        twin = pendulum_twin()
        path = tj.simulate(twin, None, jnp.arange(0.0, 5.0, twin.dt), controls=jnp.zeros((100, 1)), key=key)
        ```
    """
    return tj.StateSpaceModel(
        Pendulum() if pendulum is None else pendulum,
        tj.GaussianObservation(_angle, jnp.array([[angle_sd_rad**2]])),
        tj.Gaussian(jnp.array([1.0, 0.0]), jnp.diag(jnp.array([0.1**2, 0.1**2]))),
        dt,
        process_noise=process_noise,
        control_dim=1,
    )
