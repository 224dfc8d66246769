"""The state-space twin: dynamics + sensor + initial belief + sampling interval.

It exposes what every algorithm needs from a twin and nothing algorithm-specific:

- ``transition(t0, t1, x, u)``: the noise-free one-interval map ``x(t1)`` given ``x(t0)`` (the ODE — or the SDE's
  drift — integrated by diffrax with ``u`` held; the exact map for discrete and linear models);
- ``sample_transition(key, t0, t1, x, u)``: one stochastic draw of ``x(t1)`` (SDE sample path, or the deterministic
  map plus additive process noise);
- ``process_noise_cov(t0, t1, x, u)``: the covariance ``Q`` of the one-interval process noise that filters use.

Intervals may be irregular (``t1 - t0`` need not equal ``dt``): continuous-time twins are integrated over the actual
interval, and an additive ``process_noise`` given per ``dt`` is scaled by ``(t1 - t0) / dt``.
"""

import abc

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import as_float_array, check_covariance, check_square, is_concrete
from .._types import Array, Control, Float, Int, Key, State, Time
from .discretisation import Discretisation
from .distributions import AbstractInitial, Gaussian, PointMass, _psd_sqrt
from .dynamics import AbstractDiscreteDynamics, AbstractDynamics, AbstractSDEDynamics
from .observation import AbstractObservation, DynamicsMethod, GaussianObservation, LinearFunction
from .status import Status, from_diffrax


def _drift(t, y, args):
    dynamics, u = args
    return dynamics.vector_field(t, y, u)


def _diffusion(t, y, args):
    dynamics, u = args
    return dynamics.diffusion(t, y, u)


class AbstractStateSpaceModel(eqx.Module):
    """Interface shared by :class:`StateSpaceModel` and :class:`LinearGaussianSSM`."""

    dynamics: eqx.AbstractVar[AbstractDynamics | AbstractDiscreteDynamics]
    observation: eqx.AbstractVar[AbstractObservation | None]
    initial: eqx.AbstractVar[AbstractInitial | None]
    dt: eqx.AbstractVar[float | None]
    control_dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def transition_with_status(self, t0: Time, t1: Time, x: State, u: Control) -> tuple[State, Int[Array, ""]]:
        """The noise-free one-interval map and its :class:`~twinjax.Status`."""

    @abc.abstractmethod
    def sample_transition_with_status(
        self, key: Key, t0: Time, t1: Time, x: State, u: Control, brownian=None
    ) -> tuple[State, Int[Array, ""]]:
        """One stochastic draw of ``x(t1)`` and its status (``brownian``: a path shared over intervals)."""

    @abc.abstractmethod
    def process_noise_cov(self, t0: Time, t1: Time, x: State, u: Control) -> Float[Array, "state state"]:
        """Covariance of the additive process noise over ``[t0, t1]``."""

    @property
    def is_stochastic(self) -> bool:
        """Whether a draw of the transition differs from its noise-free map."""
        return isinstance(self.dynamics, AbstractSDEDynamics) or getattr(self, "process_noise", None) is not None

    def transition(self, t0: Time, t1: Time, x: State, u: Control) -> State:
        """The noise-free one-interval map ``x(t0) ↦ x(t1)`` with ``u`` held constant."""
        return self.transition_with_status(t0, t1, x, u)[0]

    def sample_transition(self, key: Key, t0: Time, t1: Time, x: State, u: Control) -> State:
        """One stochastic draw of ``x(t1)`` given ``x(t0)``."""
        return self.sample_transition_with_status(key, t0, t1, x, u)[0]


class StateSpaceModel(AbstractStateSpaceModel):
    """A twin: dynamics, sensor, initial belief and sampling interval, all in one pytree.

    ``x(t_{k+1}) = Φ(t_k, t_{k+1}, x(t_k), u_k) + w_k``,  ``y_k = h(t_k, x_k, u_k) + v_k``,  ``x_0 ~ initial``.

    ``Φ`` is the ODE flow (diffrax, settings in ``discretisation``), the SDE solution driven by Brownian motion, or the
    discrete transition. ``w_k ~ N(0, Q)`` is optional additive process noise for ODE and discrete twins.

    Arguments:
        dynamics: an ``AbstractDynamics`` (ODE), ``AbstractSDEDynamics`` or ``AbstractDiscreteDynamics``.
        observation: the sensor (e.g. ``GaussianObservation``); ``None`` for a twin simulated without sensors.
        initial: the distribution of ``x_0`` (``Gaussian``, ``PointMass``), or an array (a known ``x_0``); optional.
        dt: the sampling interval (s); needed by discrete twins and by filters stepping on a regular grid.
        process_noise: ``Q`` per interval ``dt``, shape ``(state, state)`` (or ``(state,)``: variances).
        control_dim: the number of inputs ``m`` (``u`` has shape ``(m,)``; 0 for an autonomous twin).
        discretisation: how the continuous dynamics are integrated over an interval.

    Raises:
        ValueError: for a wrong type of dynamics / observation / initial, a non-positive ``dt``, or a ``process_noise``
            that is not a PSD square matrix of the state's size.

    Example:
        ```python
        twin = tj.StateSpaceModel(
            dynamics=Pendulum(),
            observation=tj.GaussianObservation(lambda t, x, u: jnp.sin(x[:1]), cov=jnp.eye(1) * 0.05**2),
            initial=tj.Gaussian(mean=jnp.array([1.0, 0.0]), cov=jnp.eye(2) * 0.1),
            dt=0.05,
        )
        ```
    """

    dynamics: AbstractDynamics | AbstractDiscreteDynamics
    _observation: AbstractObservation | None
    initial: AbstractInitial | None
    dt: float | None
    process_noise: Float[Array, "state state"] | None
    control_dim: int = eqx.field(static=True)
    discretisation: Discretisation

    def __init__(
        self,
        dynamics,
        observation=None,
        initial=None,
        dt=None,
        *,
        process_noise=None,
        control_dim: int = 0,
        discretisation: Discretisation | None = None,
    ):
        if not isinstance(dynamics, (AbstractDynamics, AbstractDiscreteDynamics)):
            raise ValueError(
                "`dynamics` must be a twinjax AbstractDynamics, AbstractSDEDynamics or AbstractDiscreteDynamics, "
                f"got {type(dynamics).__name__}."
            )
        if observation is not None and not isinstance(observation, AbstractObservation):
            raise ValueError(
                f"`observation` must be an AbstractObservation (e.g. tj.GaussianObservation), got "
                f"{type(observation).__name__}."
            )
        if initial is not None and not isinstance(initial, AbstractInitial):
            initial = PointMass(initial)
        if dt is not None and is_concrete(dt):
            if not float(dt) > 0:
                raise ValueError(f"`dt` must be a positive sampling interval, got {dt!r}.")
        if isinstance(dynamics, AbstractDiscreteDynamics) and dt is None:
            raise ValueError("`dt` is required for discrete-time dynamics (the time between two transitions).")
        if process_noise is not None:
            process_noise = as_float_array(process_noise, "process_noise")
            if process_noise.ndim == 1:
                process_noise = jnp.diag(process_noise)
            n = None if initial is None else initial.mean.shape[0]
            check_square(process_noise, "process_noise", n)
            check_covariance(process_noise, "process_noise")
        if not isinstance(control_dim, int) or control_dim < 0:
            raise ValueError(f"`control_dim` must be a non-negative integer, got {control_dim!r}.")
        fn = getattr(observation, "fn", None)
        if fn is not None and getattr(fn, "__self__", None) is dynamics:
            # the sensor is a method of the dynamics: store it unbound so it always sees the current parameters
            observation = eqx.tree_at(lambda o: o.fn, observation, DynamicsMethod(fn.__func__.__name__))
        self.dynamics = dynamics
        self._observation = observation
        self.initial = initial
        self.dt = dt
        self.process_noise = process_noise
        self.control_dim = control_dim
        self.discretisation = Discretisation() if discretisation is None else discretisation

    @property
    def observation(self) -> AbstractObservation | None:
        """The sensor model (a sensor method of the dynamics is bound to the current ``dynamics``)."""
        obs = self._observation
        if isinstance(getattr(obs, "fn", None), DynamicsMethod):
            return eqx.tree_at(lambda o: o.fn, obs, DynamicsMethod(obs.fn.name, self.dynamics))
        return obs

    def _interval_fraction(self, t0, t1):
        return (t1 - t0) / self.dt if self.dt is not None else jnp.ones_like(t1 - t0)

    def _solve(self, t0, t1, x, u, brownian):
        dyn = self.dynamics
        disc = self.discretisation.resolved(stochastic=brownian is not None)
        if brownian is None:
            terms = diffrax.ODETerm(_drift)
        else:
            terms = diffrax.MultiTerm(diffrax.ODETerm(_drift), diffrax.ControlTerm(_diffusion, brownian))
        sol = diffrax.diffeqsolve(
            terms,
            disc.solver,
            t0,
            t1,
            (t1 - t0) / disc.substeps,
            x,
            args=(dyn, u),
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=disc.stepsize_controller,
            max_steps=disc.max_steps,
            adjoint=disc.adjoint,
            throw=False,
        )
        x1 = sol.ys[-1]
        status = from_diffrax(sol.result)
        status = jnp.where((status == Status.successful) & ~jnp.all(jnp.isfinite(x1)), Status.nonfinite, status)
        return x1, status.astype(jnp.int32)

    def transition_with_status(self, t0, t1, x, u):
        if isinstance(self.dynamics, AbstractDiscreteDynamics):
            x1 = self.dynamics.transition(t0, x, u)
            status = jnp.where(jnp.all(jnp.isfinite(x1)), Status.successful, Status.nonfinite).astype(jnp.int32)
            return x1, status
        return self._solve(t0, t1, x, u, brownian=None)

    def brownian_motion(
        self, key: Key, t0: Time, t1: Time, x: State, u: Control, tol=None
    ) -> diffrax.AbstractBrownianPath:
        """A Brownian path over ``[t0, t1]`` for this twin's SDE (its dimension read from ``diffusion``); ``tol`` is
        the time resolution of the virtual Brownian tree (default ``(t1 - t0) / 2**20``)."""
        g = jax.eval_shape(self.dynamics.diffusion, t0, x, u)
        if len(g.shape) != 2 or g.shape[0] != x.shape[0]:
            raise ValueError(
                f"`diffusion(t, x, u)` must return a matrix of shape (state, noise) = ({x.shape[0]}, k), got {g.shape}."
            )
        tol = (t1 - t0) * 2.0**-20 if tol is None else tol
        return diffrax.VirtualBrownianTree(t0, t1, tol=tol, shape=(g.shape[1],), key=key)

    def sample_transition_with_status(self, key, t0, t1, x, u, brownian=None):
        if isinstance(self.dynamics, AbstractSDEDynamics):
            if brownian is None:
                brownian = self.brownian_motion(key, t0, t1, x, u)
            x1, status = self._solve(t0, t1, x, u, brownian=brownian)
        else:
            x1, status = self.transition_with_status(t0, t1, x, u)
        if self.process_noise is not None:
            q = self.process_noise * self._interval_fraction(t0, t1)
            x1 = x1 + _psd_sqrt(q) @ jax.random.normal(jax.random.fold_in(key, 1), x1.shape, x1.dtype)
        return x1, status

    def process_noise_cov(self, t0, t1, x, u):
        if self.process_noise is not None:
            return self.process_noise * self._interval_fraction(t0, t1)
        if isinstance(self.dynamics, AbstractSDEDynamics):
            g = self.dynamics.diffusion(t0, x, u)
            return (g @ g.T) * (t1 - t0)
        return jnp.zeros((x.shape[0], x.shape[0]), x.dtype)


class LinearDynamics(AbstractDiscreteDynamics):
    """``x_{k+1} = A x_k + B u_k``."""

    A: Float[Array, "state state"]
    B: Float[Array, "state control"]

    def transition(self, t, x, u):
        return self.A @ x + self.B @ u


class LinearGaussianSSM(AbstractStateSpaceModel):
    """The exact linear-Gaussian twin.

    ``x_{k+1} = A x_k + B u_k + w_k``, ``w_k ~ N(0, Q)``;  ``y_k = C x_k + D u_k + v_k``, ``v_k ~ N(0, R)``;
    ``x_0 ~ N(m0, P0)``.

    Arguments:
        A: ``(n, n)``; B: ``(n, m)`` or ``None`` (no inputs); C: ``(p, n)``; D: ``(p, m)`` or ``None``;
        Q: ``(n, n)``; R: ``(p, p)``; m0: ``(n,)``; P0: ``(n, n)``; dt: the sampling interval (default 1).

    Raises:
        ValueError: naming the matrix whose shape disagrees with the others, or a covariance that is not PSD.

    Example:
        ```python
        lgssm = tj.LinearGaussianSSM(A=jnp.eye(2), B=None, C=jnp.eye(1, 2), D=None, Q=0.01 * jnp.eye(2),
                                     R=0.1 * jnp.eye(1), m0=jnp.zeros(2), P0=jnp.eye(2))
        ```
    """

    A: Float[Array, "state state"]
    B: Float[Array, "state control"]
    C: Float[Array, "obs state"]
    D: Float[Array, "obs control"]
    Q: Float[Array, "state state"]
    R: Float[Array, "obs obs"]
    m0: Float[Array, " state"]
    P0: Float[Array, "state state"]
    _dt: float

    def __init__(self, A, B, C, D, Q, R, m0, P0, dt=1.0):
        A = as_float_array(A, "A", ndim=2)
        check_square(A, "A")
        n = A.shape[0]
        C = as_float_array(C, "C", ndim=2)
        if C.shape[1] != n:
            raise ValueError(f"`C` must have shape (obs, {n}) to match `A`, got {tuple(C.shape)}.")
        p = C.shape[0]
        m = 0
        if B is not None:
            B = as_float_array(B, "B", ndim=2)
            m = B.shape[1]
            if B.shape[0] != n:
                raise ValueError(f"`B` must have shape ({n}, control), got {tuple(B.shape)}.")
        if D is not None:
            D = as_float_array(D, "D", ndim=2)
            if B is None:
                m = D.shape[1]
            if D.shape != (p, m):
                raise ValueError(f"`D` must have shape ({p}, {m}), got {tuple(D.shape)}.")
        B = jnp.zeros((n, m), A.dtype) if B is None else B
        D = jnp.zeros((p, m), A.dtype) if D is None else D
        Q = as_float_array(Q, "Q")
        R = as_float_array(R, "R")
        P0 = as_float_array(P0, "P0")
        m0 = as_float_array(m0, "m0", ndim=1)
        for name, mat, size in (("Q", Q, n), ("R", R, p), ("P0", P0, n)):
            check_square(mat, name, size)
            check_covariance(mat, name)
        if m0.shape[0] != n:
            raise ValueError(f"`m0` must have shape ({n},), got {tuple(m0.shape)}.")
        if is_concrete(dt) and not float(dt) > 0:
            raise ValueError(f"`dt` must be positive, got {dt!r}.")
        self.A, self.B, self.C, self.D, self.Q, self.R, self.m0, self.P0 = A, B, C, D, Q, R, m0, P0
        self._dt = dt

    @property
    def dynamics(self):
        return LinearDynamics(self.A, self.B)

    @property
    def observation(self):
        return GaussianObservation(LinearFunction(self.C, self.D), self.R)

    @property
    def initial(self):
        return Gaussian(self.m0, self.P0)

    @property
    def dt(self):
        return self._dt

    @property
    def control_dim(self) -> int:
        return self.B.shape[1]

    @property
    def process_noise(self):
        return self.Q

    def transition_with_status(self, t0, t1, x, u):
        x1 = self.A @ x + self.B @ u
        return x1, jnp.where(jnp.all(jnp.isfinite(x1)), Status.successful, Status.nonfinite).astype(jnp.int32)

    def sample_transition_with_status(self, key, t0, t1, x, u, brownian=None):
        x1, status = self.transition_with_status(t0, t1, x, u)
        return x1 + _psd_sqrt(self.Q) @ jax.random.normal(key, x1.shape, x1.dtype), status

    def process_noise_cov(self, t0, t1, x, u):
        return self.Q
