r"""Variational autoencoders of trajectories with a neural, a physics (the twin's solver) or a hybrid decoder.

**Model.** A trajectory ``y ∈ R^{time×obs}``; prior ``p(z) = N(0, I_d)``; decoder mean ``f_θ(z) ∈ R^{time×obs}``;
likelihood ``p(y | z) = Π_{k,j} N(y_kj; f_θ(z)_kj, σ_j²)`` with a learned noise scale ``σ_j`` per channel; encoder
``q_φ(z | y) = N(μ_φ(y), diag s_φ(y)²)``, an MLP on the flattened, standardised trajectory.

**Objective.** ``ELBO(y) = E_q[log p(y | z)] − KL(q(z | y) ‖ p(z))``, the expectation by the reparameterisation
``z = μ + s ⊙ ε`` (one draw per trajectory in :meth:`VAE.loss`), the KL in closed form
``½ Σ_i (μ_i² + s_i² − 1 − 2 log s_i)``. :meth:`VAE.loss` is the batch mean of

    −ELBO(y) + λ E_q ‖C(f_θ(z))‖² + μ E_q ‖g(z)‖²,

the chapter's augmented objective: ``C`` is an invariant residual (zero on physical trajectories) and ``λ``
(``physics_weight``) is the precision of a Gaussian pseudo-observation ``C = 0`` of variance ``1/(2λ)``; ``g`` is
the neural correction of a hybrid decoder and ``μ`` (``correction_weight``) keeps it small.

**Decoders** (all map ``z (d,) ↦ (time, obs)``):

- :class:`NeuralDecoder` — ``f_θ(z) = loc + scale ⊙ MLP(z)``; physics only through the penalty.
- :class:`PhysicsDecoder` — ``z ↦ u = m_θ(z)`` (a small MLP) ``↦`` physical values by the constraint bijections of a
  :class:`~twinjax.Params` spec (e.g. ``exp`` for a positive stiffness) and, optionally, the initial state ``x₀``;
  then the twin's ODE is solved (diffrax with the twin's :class:`~twinjax.Discretisation`, or a fixed-step explicit
  Runge–Kutta method, :func:`~twinjax.simulate.rk_step`) and read through the twin's noise-free sensor
  ``h(t, x, u)``. Every decoded trajectory solves the twin's ODE, so any invariant of the ODE holds up to solver
  error, and the latent coordinates decode to named physical quantities (:meth:`PhysicsDecoder.physical`).
- :class:`HybridDecoder` — the physics decoder plus ``g(z) = scale ⊙ MLP(z)`` (last layer initialised at zero), for
  what the twin leaves out; penalise ``C`` of the corrected output and/or ``‖g‖²``.

:func:`PhysicsVAE` assembles a :class:`VAE` around a twin. Samples (:meth:`VAE.sample`) are the decoder means of
prior draws (add ``noise=True`` for draws of ``y``); there is no explicit density (``has_log_prob`` is ``False``).

Fixed arrays (the twin, ``loc`` / ``scale``) are held out of training by ``stop_gradient``: the training loop
updates every inexact array of the model, and a zero gradient leaves them where they are.

References:
    Kingma & Welling (2014), Auto-encoding variational Bayes. Chapter 001, "Physics-Informed Generative Models" and
    "Interpretable and Controllable Generation" (a differentiable simulator as the decoder).
"""

import abc
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_times, is_concrete
from .._types import Array, Float, Scalar
from ..model.dynamics import AbstractDynamics
from ..model.params import Params
from ..model.ssm import StateSpaceModel
from ..simulate.rk import Tableau, get_tableau, rk_step
from ._base import AbstractGenerativeModel

__all__ = [
    "AbstractDecoder",
    "HybridDecoder",
    "NeuralDecoder",
    "PhysicsDecoder",
    "PhysicsVAE",
    "VAE",
    "gaussian_kl",
]

_LOG_SD_RANGE = (-12.0, 6.0)  # clip encoder log-sd: keeps exp() finite early in training


def _frozen(tree):
    """``tree`` with gradients stopped at every array (fixed data inside a trained module)."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree)


def _check_int(v, name, lo=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"`{name}` must be an int >= {lo}, got {v!r}")


def _affine(value, event_shape, name, default):
    dtype = jnp.zeros(()).dtype
    a = jnp.full(event_shape, default, dtype) if value is None else jnp.asarray(value, dtype)
    try:
        return jnp.broadcast_to(a, event_shape)
    except ValueError:
        raise ValueError(f"`{name}` must broadcast to the event shape {event_shape}, got shape {a.shape}") from None


def gaussian_kl(
    mean_q: Float[Array, "*batch d"],
    log_sd_q: Float[Array, "*batch d"],
    mean_p: Float[Array, "*batch d"] | float = 0.0,
    log_sd_p: Float[Array, "*batch d"] | float = 0.0,
) -> Float[Array, "*batch"]:
    """``KL(N(μ_q, diag s_q²) ‖ N(μ_p, diag s_p²))`` summed over the last axis (closed form)::

        Σ_i [log s_p − log s_q + (s_q² + (μ_q − μ_p)²) / (2 s_p²) − ½]

    The defaults ``μ_p = 0``, ``log s_p = 0`` give the KL to the standard normal prior.
    """
    var_ratio = jnp.exp(2.0 * (log_sd_q - log_sd_p))
    mahal = (mean_q - mean_p) ** 2 * jnp.exp(-2.0 * jnp.asarray(log_sd_p))
    return jnp.sum(log_sd_p - log_sd_q + 0.5 * (var_ratio + mahal) - 0.5, axis=-1)


# ------------------------------------------------------------------------------------------------------ decoders
class AbstractDecoder(eqx.Module):
    """Maps a latent ``z (latent_dim,)`` to the mean of a trajectory ``(time, obs)``.

    ``decode`` returns ``(mean, correction)``: ``correction`` is the neural part of a hybrid decoder (penalised by
    ``correction_weight``), ``None`` otherwise.
    """

    latent_dim: eqx.AbstractVar[int]
    event_shape: eqx.AbstractVar[tuple[int, int]]

    @abc.abstractmethod
    def decode(self, z: Float[Array, " latent"]) -> tuple[Float[Array, "time obs"], Float[Array, "time obs"] | None]:
        """The decoded trajectory mean and the correction term (or ``None``)."""


class NeuralDecoder(AbstractDecoder):
    """``f_θ(z) = loc + scale ⊙ MLP(z)`` reshaped to ``event_shape``.

    Arguments:
        latent_dim: ``d``.
        event_shape: ``(time, obs)``.
        key: PRNG key of the MLP.
        width, depth: of the MLP (SiLU activations).
        loc, scale: the output's offset and scale (broadcast to ``event_shape``; defaults 0 and 1), not trained.
    """

    mlp: eqx.nn.MLP
    loc: Float[Array, "time obs"]
    scale: Float[Array, "time obs"]
    latent_dim: int = eqx.field(static=True)
    event_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, latent_dim: int, event_shape, key: jax.Array, *, width: int = 64,
                 depth: int = 2, loc=None, scale=None):  # fmt: skip
        _check_int(latent_dim, "latent_dim")
        event_shape = tuple(event_shape)
        if len(event_shape) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in event_shape):
            raise ValueError(f"`event_shape` must be (time, obs) of positive ints, got {event_shape!r}")
        _check_int(width, "width")
        _check_int(depth, "depth", 0)
        self.latent_dim, self.event_shape = latent_dim, event_shape
        size = event_shape[0] * event_shape[1]
        self.mlp = eqx.nn.MLP(latent_dim, size, width, depth, activation=jax.nn.silu, key=key)
        self.loc = _affine(loc, event_shape, "loc", 0.0)
        self.scale = _affine(scale, event_shape, "scale", 1.0)

    def decode(self, z):
        loc, scale = _frozen((self.loc, self.scale))
        return loc + scale * self.mlp(z).reshape(self.event_shape), None


class PhysicsDecoder(AbstractDecoder):
    """The twin's solver as the decoder: ``z ↦`` physical parameters and initial state ``↦`` ODE solve ``↦`` sensor.

    ``u = m_θ(z)`` (an MLP of ``depth`` hidden layers; ``depth=0`` is affine) is split into the unconstrained values of
    ``params`` (mapped to physical units by each :class:`~twinjax.ParamSpec`'s bijection) and, with
    ``initial_state=True``, ``x₀`` (real). The ODE ``dx/dt = f(t, x, u_ctrl)`` with zero controls is solved from
    ``ts[0]`` and the trajectory ``h(t_k, x(t_k), 0)`` of the twin's noise-free sensor is returned (the states when the
    twin has no sensor). The last layer's bias starts at the twin's own values, so an untrained decoder reproduces the
    twin.

    Arguments:
        twin: a :class:`~twinjax.StateSpaceModel` with ODE dynamics (not trained: only the map ``m_θ`` is).
        ts: the save times ``(time,)`` (s), strictly increasing.
        key: PRNG key of the map.
        params: which of the twin's parameters the latent decodes to (:class:`~twinjax.Params`), or ``None``.
        initial_state: whether the latent also decodes to ``x₀`` (else ``x₀`` is the mean of ``twin.initial``).
        latent_dim: ``d`` (default: the number of physical quantities decoded).
        width, depth: of the map ``m_θ``.
        tableau: ``None`` — diffrax with the twin's discretisation (one solve saving at ``ts``); or an explicit RK
            method (``"rk4"``, ``"heun"``, ... or a :class:`~twinjax.simulate.Tableau`) with ``substeps`` fixed steps
            per interval (one ``lax.scan``; faster to train, the error is the method's ``O(h^order)``).
        substeps: fixed steps per interval of ``ts`` (the diffrax path's initial step is ``Δt / substeps``).

    Raises:
        ValueError: a twin that is not a continuous-time ``StateSpaceModel`` or has no ``initial``, no physical
            quantity to decode, unsorted ``ts``, a bad spec path or tableau.
    """

    twin: StateSpaceModel
    ts: Float[Array, " time"]
    params: Params | None = eqx.field(static=True)
    latent_map: eqx.nn.MLP
    initial_state: bool = eqx.field(static=True)
    tableau: Tableau | None
    substeps: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    event_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, twin, ts, key: jax.Array, *, params: Params | None = None,
                 initial_state: bool = True, latent_dim: int | None = None, width: int = 32, depth: int = 1,
                 tableau: "str | Tableau | None" = None, substeps: int = 4):  # fmt: skip
        if not isinstance(twin, StateSpaceModel) or not isinstance(twin.dynamics, AbstractDynamics):
            what = type(twin).__name__ + (f" with {type(twin.dynamics).__name__}" if hasattr(twin, "dynamics") else "")
            raise ValueError(
                f"PhysicsDecoder: `twin` must be a tj.StateSpaceModel with continuous-time (ODE) dynamics, got {what}"
            )
        if params is not None and not isinstance(params, Params):
            raise ValueError(f"PhysicsDecoder: `params` must be a tj.Params spec or None, got {type(params).__name__}")
        if not isinstance(initial_state, bool):
            raise ValueError(f"PhysicsDecoder: `initial_state` must be a bool, got {initial_state!r}")
        if twin.initial is None:
            raise ValueError("PhysicsDecoder: the twin needs `initial`: its mean is the starting (or fixed) x₀")
        _check_int(substeps, "substeps")
        _check_int(width, "width")
        _check_int(depth, "depth", 0)
        ts = check_times(ts, "ts")
        if ts.shape[0] < 2:
            raise ValueError(f"PhysicsDecoder: `ts` needs at least 2 times, got shape {ts.shape}")
        n_par = 0 if params is None else params.size(twin)  # raises ValueError naming a bad path
        x_ref = self._x_ref(twin)
        n_phys = n_par + (x_ref.shape[0] if initial_state else 0)
        if n_phys == 0:
            raise ValueError("PhysicsDecoder: nothing to decode: give `params` and/or `initial_state=True`")
        latent_dim = n_phys if latent_dim is None else latent_dim
        _check_int(latent_dim, "latent_dim")
        self.twin, self.ts, self.params, self.initial_state = twin, ts, params, initial_state
        self.tableau = None if tableau is None else get_tableau(tableau)
        self.substeps, self.latent_dim = substeps, latent_dim
        start = [] if params is None else [params.to_unconstrained(twin)]
        if initial_state:
            start.append(x_ref)
        start = jnp.concatenate(start).astype(ts.dtype)
        mlp = eqx.nn.MLP(latent_dim, n_phys, width, depth, activation=jax.nn.silu, key=key)
        self.latent_map = eqx.tree_at(lambda m: m.layers[-1].bias, mlp, start)  # start at the twin's own values
        u = jnp.zeros((twin.control_dim,), ts.dtype)
        obs = twin.observation
        n_obs = x_ref.shape[0] if obs is None else jax.eval_shape(obs.mean, ts[0], x_ref, u).shape[0]
        self.event_shape = (ts.shape[0], n_obs)

    @staticmethod
    def _x_ref(twin):
        return jnp.asarray(twin.initial.mean, dtype=float)

    def physical(self, z: Float[Array, " latent"]) -> tuple[Float[Array, " param"], Float[Array, " state"]]:
        """The physical parameter values (flat, in ``params`` order, physical units) and ``x₀`` decoded from ``z``."""
        twin = _frozen(self.twin)
        u = self.latent_map(z)
        n_par = 0 if self.params is None else self.params.size(twin)
        phi = u[:0] if self.params is None else self.params.constrain(twin, u[:n_par])
        x0 = u[n_par:] if self.initial_state else self._x_ref(twin).astype(u.dtype)
        return phi, x0

    def model_at(self, z: Float[Array, " latent"]) -> StateSpaceModel:
        """The twin with its ``params`` set to the values decoded from ``z``."""
        return self._at(self.physical(z)[0])

    def _at(self, phi):
        twin = _frozen(self.twin)
        return twin if self.params is None else self.params.with_values(twin, phi)

    def states(self, z: Float[Array, " latent"]) -> Float[Array, "time state"]:
        """The state trajectory ``x(ts)`` of the twin at the decoded parameters and initial state."""
        phi, x0 = self.physical(z)
        twin = self._at(phi)
        ts = jax.lax.stop_gradient(self.ts)
        u = jnp.zeros((twin.control_dim,), x0.dtype)
        if self.tableau is None:
            return _solve_diffrax(twin, x0, ts, u, self.substeps)
        return _solve_rk(twin.dynamics, x0, ts, u, self.tableau, self.substeps)

    def decode(self, z):
        xs = self.states(z)
        obs = _frozen(self.twin).observation
        if obs is None:
            return xs, None
        u = jnp.zeros((self.twin.control_dim,), xs.dtype)
        return jax.vmap(lambda t, x: obs.mean(t, x, u))(jax.lax.stop_gradient(self.ts), xs), None


def _solve_diffrax(twin, x0, ts, u, substeps):
    disc = twin.discretisation.resolved(stochastic=False)
    dyn = twin.dynamics
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, x, args: dyn.vector_field(t, x, u)),
        disc.solver,
        ts[0],
        ts[-1],
        (ts[1] - ts[0]) / substeps,
        x0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=disc.stepsize_controller,
        max_steps=disc.max_steps * (ts.shape[0] - 1),
        adjoint=disc.adjoint,
        throw=False,  # a failed solve gives non-finite values; train() then stops naming the step
    )
    return jnp.where(sol.result == diffrax.RESULTS.successful, sol.ys, jnp.nan)


def _solve_rk(dyn, x0, ts, u, tableau, substeps):
    f = lambda t, x: dyn.vector_field(t, x, u)  # noqa: E731

    def interval(x, k):
        h = (ts[k + 1] - ts[k]) / substeps
        x = jax.lax.fori_loop(0, substeps, lambda j, y: rk_step(f, ts[k] + j * h, y, h, tableau), x)
        return x, x

    _, xs = jax.lax.scan(interval, x0, jnp.arange(ts.shape[0] - 1))
    return jnp.concatenate([x0[None], xs])


class HybridDecoder(AbstractDecoder):
    """A physics decoder plus a neural correction: ``f(z) = f_phys(z) + g(z)``, ``g(z) = scale ⊙ MLP(z)``.

    The correction's last layer starts at zero (the untrained hybrid is the physics decoder). Keep it physical with
    ``physics_weight`` (the invariant of the corrected output) and/or ``correction_weight`` (``‖g‖²``) in
    :meth:`VAE.loss`.

    Arguments:
        physics: a :class:`PhysicsDecoder`.
        key: PRNG key of the correction MLP.
        width, depth: of the correction MLP.
        scale: output scale of the correction (broadcast to the event shape; default 1), not trained.
    """

    physics: PhysicsDecoder
    correction: eqx.nn.MLP
    scale: Float[Array, "time obs"]

    def __init__(self, physics, key: jax.Array, *, width: int = 64, depth: int = 2, scale=None):
        if not isinstance(physics, PhysicsDecoder):
            raise ValueError(f"HybridDecoder: `physics` must be a PhysicsDecoder, got {type(physics).__name__}")
        _check_int(width, "width")
        _check_int(depth, "depth", 0)
        self.physics = physics
        t, p = physics.event_shape
        mlp = eqx.nn.MLP(physics.latent_dim, t * p, width, depth, activation=jax.nn.silu, key=key)
        last = mlp.layers[-1]
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                          (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))  # fmt: skip
        self.correction = mlp
        self.scale = _affine(scale, physics.event_shape, "scale", 1.0)

    @property
    def latent_dim(self) -> int:
        return self.physics.latent_dim

    @property
    def event_shape(self) -> tuple[int, int]:
        return self.physics.event_shape

    def decode(self, z):
        base, _ = self.physics.decode(z)
        g = jax.lax.stop_gradient(self.scale) * self.correction(z).reshape(self.event_shape)
        return base + g, g


# ----------------------------------------------------------------------------------------------------------- VAE
class VAE(AbstractGenerativeModel):
    """A VAE of trajectories ``(time, obs)`` with any :class:`AbstractDecoder` (module docstring for the maths).

    Arguments:
        decoder: a :class:`NeuralDecoder`, :class:`PhysicsDecoder` or :class:`HybridDecoder` (or another
            :class:`AbstractDecoder`).
        key: PRNG key of the encoder.
        invariant: ``C(y (time, obs)) -> array``, zero on physical trajectories (e.g. energy minus its mean); needed
            for ``physics_weight`` and :meth:`residual`.
        encoder: a callable module ``y_flat (time·obs,) -> (2 d,)`` (means, then log-sds) replacing the default MLP.
        width, depth: of the default encoder MLP.
        loc, scale: standardisation of the encoder's input ``(y − loc)/scale`` (broadcast to ``(time, obs)``), not
            trained; also the default ``obs_sd`` is ``0.1 · scale`` averaged over time.
        obs_sd: initial noise scale ``σ_j`` of each channel ``(obs,)`` (learned).

    Example:
        ```python
        dec = NeuralDecoder(3, (40, 2), key, loc=data.mean((0, 1)), scale=data.std((0, 1)))
        vae = VAE(dec, key, invariant=energy_residual, loc=data.mean((0, 1)), scale=data.std((0, 1)))
        res = gen.train(vae, data, optimizer=optax.adam(1e-3), steps=2000, key=key, physics_weight=10.0)
        trajectories = res.model.sample(key, 1000)      # (1000, 40, 2)
        ```
    """

    encoder: Callable
    decoder: AbstractDecoder
    log_obs_sd: Float[Array, " obs"]
    loc: Float[Array, "time obs"]
    scale: Float[Array, "time obs"]
    invariant: Callable | None = eqx.field(static=True)

    def __init__(self, decoder, key: jax.Array, *, invariant: Callable | None = None,
                 encoder: Callable | None = None, width: int = 64, depth: int = 2, loc=None, scale=None,
                 obs_sd=None):  # fmt: skip
        if not isinstance(decoder, AbstractDecoder):
            raise ValueError(f"VAE: `decoder` must be an AbstractDecoder, got {type(decoder).__name__}")
        if invariant is not None and not callable(invariant):
            raise ValueError(f"VAE: `invariant` must be a callable C(y) or None, got {type(invariant).__name__}")
        _check_int(width, "width")
        _check_int(depth, "depth", 0)
        t, p = decoder.event_shape
        d = decoder.latent_dim
        self.decoder, self.invariant = decoder, invariant
        self.encoder = (
            eqx.nn.MLP(t * p, 2 * d, width, depth, activation=jax.nn.silu, key=key) if encoder is None else encoder
        )
        self.loc = _affine(loc, (t, p), "loc", 0.0)
        self.scale = _affine(scale, (t, p), "scale", 1.0)
        if is_concrete(self.scale) and not bool(jnp.all(self.scale > 0)):
            raise ValueError("VAE: `scale` must be positive")
        sd = 0.1 * jnp.mean(self.scale, 0) if obs_sd is None else jnp.broadcast_to(jnp.asarray(obs_sd, float), (p,))
        if is_concrete(sd) and not bool(jnp.all(sd > 0)):
            raise ValueError(f"VAE: `obs_sd` must be positive, got {obs_sd}")
        self.log_obs_sd = jnp.log(sd)

    @property
    def latent_dim(self) -> int:
        return self.decoder.latent_dim

    @property
    def event_shape(self) -> tuple[int, int]:
        return self.decoder.event_shape

    def _check_y(self, y, name):
        y = jnp.asarray(y)
        if y.ndim != 3 or y.shape[1:] != self.event_shape:
            t, p = self.event_shape
            raise ValueError(f"`{name}` must have shape (n, {t}, {p}), got {y.shape}")
        return y

    def _no_cond(self, cond):
        if cond is not None:
            raise ValueError("VAE: `cond` must be None (the model is unconditional)")

    def encode(self, y: Float[Array, "n time obs"]) -> tuple[Float[Array, "n latent"], Float[Array, "n latent"]]:
        """The mean and log-sd of ``q(z | y)`` for each trajectory."""
        y = self._check_y(y, "y")
        loc, scale = _frozen((self.loc, self.scale))
        out = jax.vmap(lambda row: self.encoder(((row - loc) / scale).ravel()))(y)
        d = self.latent_dim
        return out[:, :d], jnp.clip(out[:, d:], *_LOG_SD_RANGE)

    def decode(self, z: Float[Array, "n latent"]) -> Float[Array, "n time obs"]:
        """The decoder mean ``f_θ(z)`` of each latent."""
        z = jnp.asarray(z)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"`z` must have shape (n, {self.latent_dim}), got {z.shape}")
        return jax.vmap(lambda zz: self.decoder.decode(zz)[0])(z)

    @eqx.filter_jit
    def reconstruct(self, y: Float[Array, "n time obs"]) -> Float[Array, "n time obs"]:
        """``f_θ(μ_φ(y))``: the decoded posterior mean of each trajectory."""
        return self.decode(self.encode(y)[0])

    @eqx.filter_jit
    def residual(self, y: Float[Array, "n time obs"]) -> Float[Array, " n"]:
        """``‖C(y)‖²`` of each trajectory (``invariant`` required)."""
        if self.invariant is None:
            raise ValueError("VAE.residual: the model has no `invariant`")
        y = self._check_y(y, "y")
        return jax.vmap(lambda row: jnp.sum(self.invariant(row) ** 2))(y)

    def _log_lik(self, y, mean):
        log_sd = jnp.broadcast_to(self.log_obs_sd, y.shape)
        r = (y - mean) * jnp.exp(-log_sd)
        return jnp.sum(-0.5 * r**2 - log_sd - 0.5 * jnp.log(2.0 * jnp.pi), axis=(-2, -1))

    def _terms(self, key, y):
        mean, log_sd = self.encode(y)
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        z = mean + jnp.exp(log_sd) * eps
        decoded, corr = jax.vmap(self.decoder.decode)(z)
        return decoded, corr, gaussian_kl(mean, log_sd)

    @eqx.filter_jit
    def elbo(self, key: jax.Array, y: Float[Array, "n time obs"], samples: int = 1) -> Float[Array, " n"]:
        """The ELBO of each trajectory, averaged over ``samples`` reparameterised draws (nats)."""
        _check_int(samples, "samples")
        y = self._check_y(y, "y")

        def one(k):
            decoded, _, kl = self._terms(k, y)
            return self._log_lik(y, decoded) - kl

        return jnp.mean(jax.vmap(one)(jax.random.split(key, samples)), axis=0)

    def loss(self, key: jax.Array, batch: Float[Array, "n time obs"], cond=None, *, physics_weight: Scalar = 0.0,
             correction_weight: Scalar = 0.0, beta: Scalar = 1.0) -> tuple[Scalar, dict[str, Any]]:  # fmt: skip
        """Batch mean of ``−E_q log p(y|z) + β KL + λ ‖C(f(z))‖² + μ ‖g(z)‖²`` (one draw of ``z`` per row).

        ``physics_weight`` ``λ``, ``correction_weight`` ``μ`` and ``beta`` (``β = 1``: the ELBO) may be arrays, so a
        sweep over them reuses one compilation. Aux: ``recon`` (``−E log p(y|z)``), ``kl``, ``mse`` (of the decoded
        draw), ``residual`` (``E ‖C(f(z))‖²``, with an ``invariant``), ``correction`` (``E ‖g‖²``, hybrid decoders).

        Raises:
            ValueError: a wrong batch shape, a ``cond``, or a non-zero ``physics_weight`` without ``invariant``.
        """
        self._no_cond(cond)
        batch = self._check_y(batch, "batch")
        if self.invariant is None and not (is_concrete(physics_weight) and float(physics_weight) == 0.0):
            raise ValueError(f"VAE.loss: `physics_weight={physics_weight}` needs an `invariant` C(y) on the model")
        decoded, corr, kl = self._terms(key, batch)
        recon = -jnp.mean(self._log_lik(batch, decoded))
        kl = jnp.mean(kl)
        total = recon + beta * kl
        aux = {"recon": recon, "kl": kl, "mse": jnp.mean((batch - decoded) ** 2)}
        if self.invariant is not None:
            res = jnp.mean(jax.vmap(lambda row: jnp.sum(self.invariant(row) ** 2))(decoded))
            total = total + physics_weight * res
            aux["residual"] = res
        if corr is not None:
            c = jnp.mean(jnp.sum(corr**2, axis=(-2, -1)))
            total = total + correction_weight * c
            aux["correction"] = c
        return total, aux

    @eqx.filter_jit
    def sample(self, key: jax.Array, n: int, cond=None, *, noise: bool = False) -> Float[Array, "n time obs"]:
        """``n`` trajectories: decoder means ``f_θ(z)`` of ``z ~ N(0, I)``; ``noise=True`` adds ``N(0, σ²)`` (draws
        of ``y``)."""
        self._no_cond(cond)
        _check_int(n, "n")
        k_z, k_y = jax.random.split(key)
        dtype = self.log_obs_sd.dtype
        y = self.decode(jax.random.normal(k_z, (n, self.latent_dim), dtype))
        if noise:
            y = y + jnp.exp(self.log_obs_sd) * jax.random.normal(k_y, y.shape, dtype)
        return y


def PhysicsVAE(twin, ts, *, key: jax.Array, latent: Params | None = None,
               initial_state: bool = True, hybrid: bool = False, invariant: Callable | None = None,
               latent_dim: int | None = None, tableau: "str | Tableau | None" = None, substeps: int = 4,
               map_width: int = 32, map_depth: int = 1, width: int = 64, depth: int = 2, loc=None, scale=None,
               obs_sd=None) -> VAE:  # fmt: skip
    """A :class:`VAE` whose decoder is ``twin``'s solver (:class:`PhysicsDecoder`), plus a neural correction
    (:class:`HybridDecoder`) with ``hybrid=True``.

    ``latent`` names the twin's parameters the latent decodes to; ``initial_state`` adds ``x₀``. The other arguments
    are those of :class:`PhysicsDecoder` (``latent_dim``, ``tableau``, ``substeps``, ``map_width`` / ``map_depth``),
    of the correction and encoder MLPs (``width``, ``depth``; the correction's output scale is ``scale``) and of
    :class:`VAE` (``invariant``, ``loc``, ``scale``, ``obs_sd``).

    Example:
        ```python
        spec = tj.Params({"dynamics.stiffness_N_m": tj.positive()})
        vae = PhysicsVAE(twin, ts, latent=spec, key=jax.random.key(3))
        vae = gen.train(vae, data, optimizer=optax.adam(3e-3), steps=2_000, key=key).model
        synthetic = vae.sample(jax.random.key(4), 10_000)
        stiffness, x0 = vae.decoder.physical(z)           # the latent, in physical units
        ```
    """
    k_map, k_corr, k_enc = jax.random.split(key, 3)
    decoder = PhysicsDecoder(twin, ts, k_map, params=latent, initial_state=initial_state, latent_dim=latent_dim,
                             width=map_width, depth=map_depth, tableau=tableau, substeps=substeps)  # fmt: skip
    if hybrid:
        decoder = HybridDecoder(decoder, k_corr, width=width, depth=depth, scale=scale)
    return VAE(decoder, k_enc, invariant=invariant, width=width, depth=depth, loc=loc, scale=scale, obs_sd=obs_sd)
