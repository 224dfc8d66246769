r"""Linear mass–spring–damper."""

import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, ArrayLike, Float

import twinjax as tj
from twinjax.model.dynamics import AbstractDynamics

from ._utils import param, single_input


class MassSpringDamper(AbstractDynamics):
    r"""Linear mass–spring–damper driven by a force.

    State ``x = [q, v]`` (position in m, velocity in m/s), control ``u = [F]`` (N) or shape ``(0,)`` (unforced).

    $$ m \ddot q + c \dot q + k q = F, \qquad
       \dot x = A x + B u, \quad
       A = \begin{pmatrix} 0 & 1 \\ -k/m & -c/m \end{pmatrix}, \quad
       B = \begin{pmatrix} 0 \\ 1/m \end{pmatrix}. $$

    Energy $E = \tfrac12 m v^2 + \tfrac12 k q^2$ obeys $\dot E = -c v^2 + F v$. With the force held constant over a
    step ``dt`` (zero-order hold) the exact discretisation is $x_{k+1} = A_d x_k + B_d u_k$ with
    $\begin{pmatrix} A_d & B_d \\ 0 & I \end{pmatrix}
    = \exp\left(\begin{pmatrix} A & B \\ 0 & 0 \end{pmatrix} dt\right)$
    (:meth:`discretise`).

    Arguments:
        mass_kg: mass ``m`` (kg). Default 1.
        damping_Ns_m: viscous damping ``c`` (N s/m). Default 0.4 (damping ratio 0.2 with the default ``k``).
        stiffness_N_m: spring stiffness ``k`` (N/m). Default 1 (natural frequency 1 rad/s).

    Example:
        ```python
        osc = MassSpringDamper(stiffness_N_m=4.0)
        a, b = osc.matrices()
        ```

    References:
        K. Ogata, *System Dynamics*, 4th ed., Pearson, 2004, ch. 4; C. Van Loan, "Computing integrals involving the
        matrix exponential", IEEE Trans. Autom. Control 23(3), 1978.
    """

    mass_kg: Float[ArrayLike, ""] = param(1.0)
    damping_Ns_m: Float[ArrayLike, ""] = param(0.4)
    stiffness_N_m: Float[ArrayLike, ""] = param(1.0)

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]
    ) -> Float[Array, " 2"]:
        """``[dq/dt, dv/dt]`` for state ``[q, v]`` and control ``[F]`` (or empty)."""
        force = single_input(u, "force_N")
        q, v = x[0], x[1]
        dv = (force - self.damping_Ns_m * v - self.stiffness_N_m * q) / self.mass_kg
        return jnp.stack([v, dv.astype(x.dtype)])

    def matrices(self) -> tuple[Float[Array, "2 2"], Float[Array, "2 1"]]:
        """Continuous-time ``(A, B)`` with ``dx/dt = A x + B u``."""
        m = self.mass_kg
        a = jnp.array([[0.0, 1.0], [-self.stiffness_N_m / m, -self.damping_Ns_m / m]])
        b = jnp.array([[0.0], [1.0 / m]])
        return a, b

    def discretise(self, dt: Float[ArrayLike, ""]) -> tuple[Float[Array, "2 2"], Float[Array, "2 1"]]:
        """Exact zero-order-hold discretisation ``(A_d, B_d)`` over a step ``dt`` (s), by one matrix exponential."""
        a, b = self.matrices()
        top = jnp.concatenate([a, b], axis=1)
        block = jnp.concatenate([top, jnp.zeros((1, 3), top.dtype)], axis=0)
        e = jsl.expm(block * dt)
        return e[:2, :2], e[:2, 2:]

    def energy(self, x: Float[Array, " 2"]) -> Float[Array, ""]:
        """Mechanical energy (J): ``½ m v² + ½ k q²``."""
        return 0.5 * self.mass_kg * x[1] ** 2 + 0.5 * self.stiffness_N_m * x[0] ** 2


def _position(t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]) -> Float[Array, " 1"]:
    return x[:1]


def oscillator_twin(
    oscillator: MassSpringDamper | None = None, *, dt: float = 0.1, position_sd_m: float = 0.05
) -> tj.StateSpaceModel:
    """A mass–spring–damper twin: position measured with Gaussian noise every ``dt`` (s), force input ``u = [F]``.

    Initial belief ``N([1, 0], 0.1² I)`` (m, m/s). Default oscillator: :class:`MassSpringDamper` ``()``.
    """
    return tj.StateSpaceModel(
        MassSpringDamper() if oscillator is None else oscillator,
        tj.GaussianObservation(_position, jnp.array([[position_sd_m**2]])),
        tj.Gaussian(jnp.array([1.0, 0.0]), 0.1**2 * jnp.eye(2)),
        dt,
        control_dim=1,
    )
