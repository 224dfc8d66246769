r"""Lorenz-63 and Lorenz-96: the standard chaotic test beds of data assimilation."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

import twinjax as tj
from twinjax.model.dynamics import AbstractDynamics, AbstractSDEDynamics

from ._utils import no_input, param


def _lorenz63(sigma, rho, beta, x):
    return jnp.stack(
        [
            sigma * (x[1] - x[0]),
            x[0] * (rho - x[2]) - x[1],
            x[0] * x[1] - beta * x[2],
        ]
    ).astype(x.dtype)


def _fixed_points(sigma, rho, beta):
    c = jnp.sqrt(beta * (rho - 1.0))
    zero = jnp.zeros_like(c)
    return jnp.stack([jnp.stack([zero, zero, zero]), jnp.stack([c, c, rho - 1.0]), jnp.stack([-c, -c, rho - 1.0])])


class Lorenz63(AbstractDynamics):
    r"""The Lorenz (1963) convection model.

    State ``x = [x, y, z]`` (dimensionless), no control (``u`` of shape ``(0,)``).

    $$ \dot x = \sigma (y - x), \qquad \dot y = x (\rho - z) - y, \qquad \dot z = x y - \beta z. $$

    For ``ρ > 1`` the fixed points are the origin and $(\pm\sqrt{\beta(\rho - 1)}, \pm\sqrt{\beta(\rho - 1)},
    \rho - 1)$; the classical values σ = 10, ρ = 28, β = 8/3 give the chaotic attractor (leading Lyapunov exponent
    ≈ 0.91).

    Arguments:
        sigma: Prandtl number σ. Default 10.
        rho: scaled Rayleigh number ρ. Default 28.
        beta: geometric factor β. Default 8/3.

    Example:
        ```python
        Lorenz63().vector_field(0.0, jnp.array([1.0, 1.0, 1.0]), jnp.zeros(0))
        ```

    References:
        E. N. Lorenz, "Deterministic nonperiodic flow", J. Atmos. Sci. 20(2), 1963.
    """

    sigma: Float[ArrayLike, ""] = param(10.0)
    rho: Float[ArrayLike, ""] = param(28.0)
    beta: Float[ArrayLike, ""] = param(8.0 / 3.0)

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 3"], u: Float[Array, " control"]
    ) -> Float[Array, " 3"]:
        """``[dx/dt, dy/dt, dz/dt]``."""
        no_input(u)
        return _lorenz63(self.sigma, self.rho, self.beta, x)

    def fixed_points(self) -> Float[Array, "3 3"]:
        """The three equilibria (rows): origin, then ``(±√(β(ρ−1)), ±√(β(ρ−1)), ρ−1)``; real for ``ρ ≥ 1``."""
        return _fixed_points(self.sigma, self.rho, self.beta)


class Lorenz63SDE(AbstractSDEDynamics):
    r"""Lorenz-63 with additive isotropic noise: $dX = f(X)\,dt + s\, dW$, ``W`` a 3-D Brownian motion.

    Drift as :class:`Lorenz63`; diffusion ``G = s I_3`` (shape ``(3, 3)``).

    Arguments:
        sigma, rho, beta: as :class:`Lorenz63` (defaults 10, 28, 8/3).
        noise_sd: noise intensity ``s`` (state units per √time). Default 1.

    Example:
        ```python
        Lorenz63SDE(noise_sd=0.5).diffusion(0.0, jnp.ones(3), jnp.zeros(0))
        ```

    References:
        E. N. Lorenz (1963), as :class:`Lorenz63`; P. E. Kloeden and E. Platen, *Numerical Solution of Stochastic
        Differential Equations*, Springer, 1992 (additive-noise SDEs).
    """

    sigma: Float[ArrayLike, ""] = param(10.0)
    rho: Float[ArrayLike, ""] = param(28.0)
    beta: Float[ArrayLike, ""] = param(8.0 / 3.0)
    noise_sd: Float[ArrayLike, ""] = param(1.0)

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 3"], u: Float[Array, " control"]
    ) -> Float[Array, " 3"]:
        """Drift ``f(x)`` of Lorenz-63."""
        no_input(u)
        return _lorenz63(self.sigma, self.rho, self.beta, x)

    def diffusion(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 3"], u: Float[Array, " control"]
    ) -> Float[Array, "3 3"]:
        """``G = noise_sd · I_3``."""
        return (self.noise_sd * jnp.eye(3, dtype=x.dtype)).astype(x.dtype)


class Lorenz96(AbstractDynamics):
    r"""The Lorenz (1996) model on a ring of ``n`` sites.

    State ``x`` of shape ``(n,)`` (cyclic: ``x_{-1} = x_{n-1}``, …), no control (``u`` of shape ``(0,)``).

    $$ \dot x_i = (x_{i+1} - x_{i-2})\, x_{i-1} - x_i + F, \qquad i = 0, \dots, n - 1, $$

    vectorised with ``jnp.roll``. ``x_i = F`` for all ``i`` is an equilibrium; F = 8 with n = 40 is the standard
    chaotic configuration (13 positive Lyapunov exponents, doubling time ≈ 0.42).

    Arguments:
        forcing: external forcing ``F``. Default 8.
        n: number of sites (static; used by :meth:`initial_state`, the vector field works for any ``n ≥ 4``).
            Default 40.

    Example:
        ```python
        model = Lorenz96()
        model.vector_field(0.0, model.initial_state(), jnp.zeros(0))
        ```

    References:
        E. N. Lorenz, "Predictability – a problem partly solved", Proc. ECMWF Seminar on Predictability, 1996;
        E. N. Lorenz and K. A. Emanuel, J. Atmos. Sci. 55(3), 1998.
    """

    forcing: Float[ArrayLike, ""] = param(8.0)
    n: int = eqx.field(static=True, default=40)

    def __check_init__(self):
        if not isinstance(self.n, int) or self.n < 4:
            raise ValueError(f"Lorenz96 needs an integer number of sites n >= 4; got n={self.n!r}.")

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " n"], u: Float[Array, " control"]
    ) -> Float[Array, " n"]:
        """``dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F`` for all sites at once."""
        no_input(u)
        if x.shape[0] < 4:
            raise ValueError(f"Lorenz96 state needs at least 4 sites; got shape {x.shape}.")
        return ((jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + self.forcing).astype(x.dtype)

    def initial_state(self, perturbation: Float[ArrayLike, ""] = 0.01) -> Float[Array, " n"]:
        """The equilibrium ``x_i = F`` with ``x_0`` perturbed by ``perturbation`` (Lorenz's standard start)."""
        x = jnp.full((self.n,), self.forcing, dtype=jnp.result_type(self.forcing, float))
        return x.at[0].add(perturbation)


def _identity(
    t: Float[ArrayLike, ""], x: Float[Array, " state"], u: Float[Array, " control"]
) -> Float[Array, " state"]:
    return x


def lorenz63_twin(
    model: Lorenz63 | Lorenz63SDE | None = None, *, dt: float = 0.05, obs_sd: float = 1.0
) -> tj.StateSpaceModel:
    """A Lorenz-63 twin: the full state measured with noise ``obs_sd`` every ``dt``; initial belief ``N(1, I)``.
    Pass a :class:`Lorenz63SDE` for a stochastic twin. No input (``u`` of shape ``(0,)``)."""
    return tj.StateSpaceModel(
        Lorenz63() if model is None else model,
        tj.GaussianObservation(_identity, obs_sd**2 * jnp.eye(3)),
        tj.Gaussian(jnp.ones(3), jnp.eye(3)),
        dt,
        control_dim=0,
    )


def lorenz96_twin(model: Lorenz96 | None = None, *, dt: float = 0.05, obs_sd: float = 1.0) -> tj.StateSpaceModel:
    """A Lorenz-96 twin: every site measured with noise ``obs_sd`` every ``dt``; initial belief
    ``N(model.initial_state(), I)``. No input (``u`` of shape ``(0,)``)."""
    model = Lorenz96() if model is None else model
    return tj.StateSpaceModel(
        model,
        tj.GaussianObservation(_identity, obs_sd**2 * jnp.eye(model.n)),
        tj.Gaussian(model.initial_state(), jnp.eye(model.n)),
        dt,
        control_dim=0,
    )
