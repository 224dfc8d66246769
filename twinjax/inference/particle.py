r"""Bootstrap particle filter with ESS-triggered systematic resampling, and its regularised variant.

The filtering distribution ``p(x_k | y_{0:k})`` is a weighted cloud ``{x_k^i, w_k^i}_{i=1}^N``. One cycle is

1. **predict** — every particle is propagated through ``model.sample_transition`` over ``[t_{k-1}, t_k]`` (an SDE
   twin draws a Brownian path per particle, an ODE / discrete twin with ``process_noise`` adds a Gaussian draw, a
   deterministic twin just maps it) — the bootstrap proposal ``q = p(x_k | x_{k-1})``;
2. **update** — ``log w_k^i = log w_{k-1}^i + log p(y_k | x_k^i) - log Σ_j w_{k-1}^j p(y_k | x_k^j)`` with
   ``model.observation.log_prob`` (missing channels are masked there), and the log-likelihood increment

   $$ \log \hat p(y_k | y_{0:k-1}) = \operatorname{logsumexp}_i(\log w_{k-1}^i + \ell_k^i)
      - \operatorname{logsumexp}_i(\log w_{k-1}^i), $$

   which stays correct when resampling is skipped (adaptive resampling);
3. **resample** when the effective sample size ``ESS = 1 / Σ w²`` falls to ``resample_threshold · N`` or below
   (DAPPER's ``NER``), by systematic resampling; the weights become uniform;
4. **regularise** (optional, Musso, Oudjane & Le Gland 2001) — after resampling, Gaussian kernel jitter with
   covariance ``h² Σ_w`` is added, ``Σ_w`` the (unbiased) weighted covariance of the cloud before resampling and
   ``h = regularisation · N^{-1/(n+4)}`` — exactly DAPPER's ``PartFilt(reg=...)`` (its ``auto_bandw`` ·
   ``raw_C12``), so DAPPER's tuning tables carry over. The Musso et al. optimal bandwidth for a Gaussian kernel is
   ``A · N^{-1/(n+4)}`` with ``A = (4 / (n + 2))^{1/(n+4)}`` (≈ 0.95 for ``n = 40``): ``regularisation = A`` is that
   rule, larger values jitter more. By default (DAPPER's ``nuj=True``) only particles that were duplicated by the
   resampling are jittered. The jitter is what lets a particle filter run on deterministic models such as Lorenz-96,
   whose bootstrap filter otherwise collapses onto one particle.

Shapes are fixed: resampling runs inside ``lax.cond``, so a scan over time compiles once. The filter state carries a
PRNG key that each ``predict`` / ``update`` splits (or pass ``key=`` explicitly); the same key gives the same result.

References:
    N. J. Gordon, D. J. Salmond and A. F. M. Smith, "Novel approach to nonlinear/non-Gaussian Bayesian state
    estimation", IEE Proc. F 140(2), 1993. G. Kitagawa, "Monte Carlo filter and smoother for non-Gaussian nonlinear
    state space models", J. Comput. Graph. Stat. 5(1), 1996 (systematic resampling). C. Musso, N. Oudjane and
    F. Le Gland, "Improving regularised particle filters", in *Sequential Monte Carlo Methods in Practice*, 2001.
    P. N. Raanes et al., DAPPER, ``dapper/da_methods/particle.py`` (``PartFilt``).
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from .._checks import as_float_array, is_concrete
from .._types import Array, ArrayLike, Bool, Control, Float, Int, Key, Scalar, State
from ..model.distributions import Gaussian, _psd_sqrt
from ..model.observation import GaussianObservation
from ._base import check_model, default_control, prepare_inputs

Jitter = Literal["duplicates", "all"]

# DAPPER's `weight_degeneracy` tolerance: weights this close to a single particle use the unweighted covariance
_DEGENERACY = 1e-10
# `store_covariances=None` keeps the (T, n, n) covariances while they hold at most this many numbers (80 MB in f64)
_MAX_STORED_COVARIANCE = 10_000_000


class ParticleFilterState(eqx.Module):
    """A weighted particle cloud at time ``t``; ``u`` is the control held since ``t``.

    Attributes:
        particles: ``(N, n)``.
        log_weights: ``(N,)``, normalised (``logsumexp = 0``).
        t: the time of the belief.
        u: the control held since ``t``.
        log_likelihood: the running estimate of ``log p(y_{0:k})``.
        status: the worst :class:`~twinjax.Status` of the particle transitions so far.
        key: the PRNG key the next ``predict`` / ``update`` splits.
    """

    particles: Float[Array, "particle state"]
    log_weights: Float[Array, " particle"]
    t: Scalar
    u: Control
    log_likelihood: Scalar
    status: Int[Array, ""]
    key: Key

    @property
    def weights(self) -> Float[Array, " particle"]:
        """The normalised weights ``exp(log_weights)``."""
        return jnp.exp(self.log_weights)

    @property
    def mean(self) -> State:
        """The weighted mean of the cloud."""
        return weighted_mean(self.particles, self.log_weights)

    @property
    def cov(self) -> Float[Array, "state state"]:
        """The weighted covariance of the cloud (of the weighted empirical distribution)."""
        return weighted_covariance(self.particles, self.log_weights)

    @property
    def ess(self) -> Scalar:
        """The effective sample size ``1 / Σ w²``."""
        return effective_sample_size(self.log_weights)


class ParticleUpdateInfo(eqx.Module):
    """What one ``pf_update`` saw.

    Attributes:
        log_likelihood: the increment ``log p̂(y_k | y_{0:k-1})`` (0 for a fully missing ``y``).
        ess: the effective sample size after reweighting, before any resampling.
        resampled: whether the cloud was resampled (and jittered, when regularised).
        particles, log_weights: the reweighted cloud *before* resampling (the lower-variance estimate of
            ``p(x_k | y_{0:k})``; the driver's means and covariances are computed from it).
    """

    log_likelihood: Scalar
    ess: Scalar
    resampled: Bool[Array, ""]
    particles: Float[Array, "particle state"]
    log_weights: Float[Array, " particle"]


class ParticleFilterResult(eqx.Module):
    """Output of :func:`particle_filter`.

    Attributes:
        ts: the observation times ``(T,)``.
        means: the filtered means ``E[x_k | y_{0:k}]`` of the weighted cloud before resampling, ``(T, n)``.
        covariances: the weighted covariances ``(T, n, n)``, or ``None`` when not stored (``store_covariances``).
        log_likelihood: the estimate of ``log p(y_{0:T-1})`` (its exponential is unbiased when every observed step
            resamples, ``resample_threshold=1``; the log is biased low by about half its variance).
        log_likelihoods: the per-step increments, ``(T,)``.
        ess: the effective sample size after each update, before resampling, ``(T,)``.
        resampled: whether step ``k`` resampled, ``(T,)``.
        status: per step, the worst :class:`~twinjax.Status` of the particle transitions into ``ts[k]`` (0 at
            ``k = 0``), ``(T,)``; a failed particle gets zero weight, so the estimates stay finite — check ``ok``.
        particles, log_weights: the weighted clouds before resampling, ``(T, N, n)`` and ``(T, N)``, or ``None``
            unless ``store_particles=True``.
    """

    ts: Float[Array, " time"]
    means: Float[Array, "time state"]
    covariances: Float[Array, "time state state"] | None
    log_likelihood: Scalar
    log_likelihoods: Float[Array, " time"]
    ess: Float[Array, " time"]
    resampled: Bool[Array, " time"]
    status: Int[Array, " time"]
    particles: Float[Array, "time particle state"] | None
    log_weights: Float[Array, "time particle"] | None

    @property
    def ok(self) -> Bool[Array, ""]:
        """Whether every transition solve succeeded."""
        return jnp.all(self.status == 0)


# --------------------------------------------------------------------------------------------------------------------
# weights, resampling, kernel jitter


def effective_sample_size(log_weights: Float[Array, " particle"]) -> Scalar:
    """``ESS = (Σ w)² / Σ w²`` of (possibly unnormalised) log-weights; between 1 and ``N``."""
    return jnp.exp(2 * logsumexp(log_weights) - logsumexp(2 * log_weights))


def _finite(particles):
    """Rows that are finite, and the particles with the others zeroed: a particle whose transition failed has zero
    weight (its likelihood is NaN → -inf), and its NaNs must not reach the weighted sums."""
    ok = jnp.all(jnp.isfinite(particles), axis=1)
    return ok, jnp.where(ok[:, None], particles, 0.0)


def weighted_mean(particles: Float[Array, "particle state"], log_weights: Float[Array, " particle"]) -> State:
    """``m = Σ_i w_i x_i`` with ``w = softmax(log_weights)`` (non-finite particles, which carry no weight, ignored)."""
    return jax.nn.softmax(log_weights) @ _finite(particles)[1]


def weighted_covariance(
    particles: Float[Array, "particle state"], log_weights: Float[Array, " particle"]
) -> Float[Array, "state state"]:
    """``Σ_i w_i (x_i - m)(x_i - m)ᵀ`` with ``m = Σ_i w_i x_i`` and ``w = softmax(log_weights)`` — the covariance of
    the weighted empirical distribution (non-finite particles ignored)."""
    w = jax.nn.softmax(log_weights)
    x = _finite(particles)[1]
    a = x - w @ x
    return (a * w[:, None]).T @ a


def systematic_resample(key: Key, log_weights: Float[ArrayLike, " particle"], n: int) -> Int[Array, " draw"]:
    r"""Systematic resampling: ``n`` ancestor indices drawn with probabilities ``softmax(log_weights)``.

    One uniform ``U ~ U[0, 1)`` places the ``n`` points ``(U + j) / n``, ``j = 0, …, n-1``, on the weights' CDF;
    particle ``i`` is chosen once for each point in ``[c_{i-1}, c_i)``. The expected count of particle ``i`` is
    ``n w_i`` (unbiased) and every count is ``⌊n w_i⌋`` or ``⌈n w_i⌉`` (the lowest variance of the standard schemes).

    Arguments:
        key: a PRNG key.
        log_weights: ``(N,)`` log-weights, normalised or not; ``-inf`` marks a particle that is never drawn.
        n: the number of draws (a Python ``int``; may differ from ``N``).

    Returns:
        ``(n,)`` integer indices into the particles, sorted ascending.

    Raises:
        ValueError: if ``log_weights`` is not a 1-D array or ``n`` is not a positive integer.

    Example:
        ```python
        idx = tj.inference.systematic_resample(jax.random.key(0), jnp.log(jnp.array([0.1, 0.6, 0.3])), 10)
        # -> counts 1, 6, 3
        ```

    References:
        G. Kitagawa, J. Comput. Graph. Stat. 5(1), 1996; R. Douc, O. Cappé and E. Moulines, "Comparison of
        resampling schemes for particle filtering", ISPA 2005.
    """
    log_weights = as_float_array(log_weights, "log_weights", ndim=1)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive integer (the number of draws), got {n!r}.")
    return _systematic(key, log_weights, int(n))


def _systematic(key, log_weights, n):
    w = jax.nn.softmax(log_weights)
    cdf = jnp.cumsum(w)
    cdf = cdf.at[-1].set(1.0)  # rounding must not leave a point beyond the last particle
    u = (jax.random.uniform(key, (), w.dtype) + jnp.arange(n, dtype=w.dtype)) / n
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(idx, w.shape[0] - 1).astype(jnp.int32)


def _bandwidth(n_particles: int, n_state: int) -> float:
    """DAPPER's ``auto_bandw``: Scott's rule ``N^{-1/(n+4)}`` (the user's ``regularisation`` multiplies it)."""
    return float(n_particles) ** (-1.0 / (n_state + 4))


def _kernel_jitter(key, particles, log_weights, idx, regularisation, jitter: Jitter):
    """Gaussian kernel noise ``N(0, h² Σ_w)`` for the resampled cloud (DAPPER ``raw_C12`` / ``regularize``)."""
    N, n = particles.shape
    w = jax.nn.softmax(log_weights)
    ok, x = _finite(particles)
    # degenerate weights would give Σ_w = 0: fall back to the unweighted covariance, as DAPPER does
    w = jnp.where(1.0 - jnp.max(w) < _DEGENERACY, (ok / jnp.sum(ok)).astype(w.dtype), w)
    a = x - w @ x
    sum_w2 = jnp.sum(w**2)
    unbias = jnp.where(sum_w2 < 1.0, 1.0 / (1.0 - jnp.where(sum_w2 < 1.0, sum_w2, 0.0)), 0.0)  # one particle: none
    c12 = jnp.sqrt(unbias * w)[:, None] * a  # c12ᵀ c12 = unbiased weighted covariance
    h = regularisation * _bandwidth(N, n)
    # a smoothing kernel needs no float64 draws, and float32 normals cost a third as much (erf⁻¹ in float64)
    draw_dtype = jnp.float32
    if N > n:
        root = _psd_sqrt(c12.T @ c12)
        noise = jax.random.normal(key, (N, n), draw_dtype).astype(particles.dtype) @ root.T
    else:  # rank-deficient cloud: colour N-dimensional noise by the anomalies directly
        noise = jax.random.normal(key, (N, N), draw_dtype).astype(particles.dtype) @ c12
    noise = h * noise
    if jitter == "duplicates":
        dup = (idx == jnp.roll(idx, 1)) | (idx == jnp.roll(idx, -1))
        noise = jnp.where(dup[:, None], noise, 0.0)
    return noise


# --------------------------------------------------------------------------------------------------------------------
# checks


def _check_key(key, name: str = "key"):
    if key is None:
        raise ValueError(f"`{name}` is required: a PRNG key such as jax.random.key(0).")
    if not isinstance(key, jax.Array):
        raise ValueError(f"`{name}` must be a JAX PRNG key (jax.random.key(...)), got {type(key).__name__}.")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"`{name}` must be a single PRNG key (shape ()), got shape {key.shape}.")
    elif key.dtype != jnp.uint32 or key.shape != (2,):
        raise ValueError(f"`{name}` must be a JAX PRNG key (jax.random.key(...)), got {key.dtype}{list(key.shape)}.")
    return key


def _check_threshold(value):
    if is_concrete(value):
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise ValueError(
                f"`resample_threshold` must lie in [0, 1] (resample when ESS <= threshold · N), got {value!r}."
            )
    return jnp.asarray(value, jnp.result_type(float))


def _check_regularisation(value):
    if value is None:
        return None
    if is_concrete(value):
        v = float(value)
        if not (np.isfinite(v) and v >= 0.0):
            raise ValueError(f"`regularisation` must be None or a finite bandwidth scale >= 0, got {value!r}.")
    return jnp.asarray(value, jnp.result_type(float))


def _check_jitter(jitter):
    if jitter not in ("duplicates", "all"):
        raise ValueError(f"`jitter` must be 'duplicates' (DAPPER's default) or 'all', got {jitter!r}.")
    return jitter


def _state_dim(model) -> int | None:
    return None if model.initial is None else int(model.initial.mean.shape[0])


def _obs_dim(model, n: int, dtype) -> int:
    obs = model.observation
    if isinstance(obs, GaussianObservation):  # no trace needed (an online step calls this every tick)
        return int(obs.cov.shape[0])
    x = jax.ShapeDtypeStruct((n,), dtype)
    u = jax.ShapeDtypeStruct((model.control_dim,), dtype)
    t = jax.ShapeDtypeStruct((), dtype)
    return int(jax.eval_shape(obs.mean, t, x, u).shape[0])


def _check_y(model, state, y):
    y = as_float_array(y, "y")
    if y.ndim == 0:
        y = y[None]
    p = _obs_dim(model, state.particles.shape[1], state.particles.dtype)
    if y.shape != (p,):
        raise ValueError(f"`y` must have shape ({p},) (the sensor's output), got {tuple(y.shape)}.")
    return y.astype(state.particles.dtype)


def _check_state(state):
    if not isinstance(state, ParticleFilterState):
        raise ValueError(f"`state` must be a ParticleFilterState (from pf_init), got {type(state).__name__}.")
    return state


# --------------------------------------------------------------------------------------------------------------------
# the one-step family


def _initial_particles(model, key, particles, mean, cov, dtype):
    if isinstance(particles, bool) or not isinstance(particles, (int, np.integer)):
        arr = as_float_array(particles, "particles")
        if arr.ndim != 2:
            raise ValueError(
                f"`particles` must be a number of particles or an (N, state) array of them, got shape {arr.shape}."
            )
        n = _state_dim(model)
        if n is not None and arr.shape[1] != n:
            raise ValueError(f"`particles` must have shape (N, {n}) to match the model's state, got {arr.shape}.")
        if arr.shape[0] < 2:
            raise ValueError(f"`particles` must hold at least 2 particles, got {arr.shape[0]}.")
        if mean is not None or cov is not None:
            raise ValueError("`mean` / `cov` only apply when `particles` is a number to draw, not an array.")
        return arr
    if particles < 2:
        raise ValueError(f"`particles` must be at least 2, got {particles!r}.")
    initial = model.initial
    if mean is not None or cov is not None:
        if initial is None and (mean is None or cov is None):
            raise ValueError("The model has no `initial` belief: pass both `mean` and `cov` to pf_init.")
        mean = initial.mean if mean is None else mean
        cov = initial.cov if cov is None else cov
        initial = Gaussian(mean, cov)
    if initial is None:
        raise ValueError("The model has no `initial` belief: pass `mean` and `cov`, or an array of `particles`.")
    keys = jax.random.split(key, int(particles))
    return jax.vmap(initial.sample)(keys).astype(dtype)


def pf_init(
    model,
    key: Key,
    particles,
    *,
    mean: Float[ArrayLike, " state"] | None = None,
    cov: Float[ArrayLike, "state state"] | None = None,
    t0: Scalar = 0.0,
    u0: Float[ArrayLike, "*control"] | None = None,
) -> ParticleFilterState:
    """Draw the initial particle cloud (uniform weights) at ``t0``.

    Arguments:
        model: a :class:`~twinjax.StateSpaceModel` or :class:`~twinjax.LinearGaussianSSM` with a sensor.
        key: a PRNG key; it draws the particles and seeds the key carried in the state.
        particles: the number ``N >= 2`` of particles drawn from ``model.initial`` (or ``N(mean, cov)``), or an
            ``(N, state)`` array of initial particles.
        mean, cov: override the initial belief's mean / covariance (a Gaussian is then sampled).
        t0: the time of the initial belief.
        u0: the control held from ``t0`` (default zeros).

    Returns:
        A :class:`ParticleFilterState` with ``log_weights = -log N``.

    Raises:
        ValueError: for a model without a sensor, a bad ``key``, fewer than 2 particles, or an array whose state size
            differs from the model's.

    Example:
        ```python
        state = tj.inference.pf_init(twin, jax.random.key(0), 1000)
        state, info = tj.inference.pf_step(twin, state, y_now, u_now)
        ```
    """
    check_model(model)
    _check_key(key)
    k_draw, k_state = jax.random.split(key)
    dtype = jnp.result_type(float)
    x = _initial_particles(model, k_draw, particles, mean, cov, dtype)
    dtype = x.dtype
    N = x.shape[0]
    u = default_control(model, u0, dtype)
    return ParticleFilterState(
        particles=x,
        log_weights=jnp.full((N,), -np.log(N), dtype),
        t=jnp.asarray(t0, dtype),
        u=u,
        log_likelihood=jnp.zeros((), dtype),
        status=jnp.zeros((), jnp.int32),
        key=k_state,
    )


def _next_key(state, key):
    if key is None:
        new_key, sub = jax.random.split(state.key)
        return new_key, sub
    return state.key, key


def _predict(model, state, t, key):
    """The predicted state and this step's worst particle transition status."""
    state_key, key = _next_key(state, key)
    keys = jax.random.split(key, state.particles.shape[0])
    step = jax.vmap(model.sample_transition_with_status, in_axes=(0, None, None, 0, None))
    x1, status = step(keys, state.t, t, state.particles, state.u)
    step_status = jnp.max(status).astype(state.status.dtype)
    new = eqx.tree_at(
        lambda s: (s.particles, s.t, s.status, s.key),
        state,
        (
            x1.astype(state.particles.dtype),
            jnp.asarray(t, state.t.dtype),
            jnp.maximum(state.status, step_status),
            state_key,
        ),
    )
    return new, step_status


def _update(model, state, y, u, key, threshold, regularisation, jitter: Jitter):
    state_key, key = _next_key(state, key)
    N = state.particles.shape[0]
    obs = model.observation
    loglik = jax.vmap(lambda x: obs.log_prob(y, state.t, x, u))(state.particles)
    loglik = jnp.where(jnp.isnan(loglik), -jnp.inf, loglik)  # a failed particle carries no weight
    prev = state.log_weights
    joint = logsumexp(prev + loglik)
    increment = joint - logsumexp(prev)
    # if every particle has zero likelihood the estimate is -inf; keep the old weights rather than NaNs
    logw = jnp.where(jnp.isfinite(joint), prev + loglik - joint, prev)
    ess = effective_sample_size(logw)
    observed = jnp.any(~jnp.isnan(y))
    do_resample = observed & ((ess <= threshold * N) | (threshold >= 1.0))

    def resample(operand):
        x, lw, k = operand
        k_idx, k_jit = jax.random.split(k)
        idx = _systematic(k_idx, lw, N)
        new = x[idx]
        if regularisation is not None:
            new = new + _kernel_jitter(k_jit, x, lw, idx, regularisation, jitter)
        return new, jnp.full_like(lw, -np.log(N))

    def keep(operand):
        x, lw, _ = operand
        return x, lw

    particles, log_weights = jax.lax.cond(do_resample, resample, keep, (state.particles, logw, key))
    new_state = ParticleFilterState(
        particles=particles,
        log_weights=log_weights,
        t=state.t,
        u=u,
        log_likelihood=state.log_likelihood + increment,
        status=state.status,
        key=state_key,
    )
    info = ParticleUpdateInfo(increment, ess, do_resample, state.particles, logw)
    return new_state, info


def _predict_impl(model, state, t, key):
    return _predict(model, state, t, key)[0]


def _update_impl(model, state, y, u, key, threshold, regularisation, jitter):
    return _update(model, state, y, u, key, threshold, regularisation, jitter)


def _step_impl(model, state, y, u, t, key, threshold, regularisation, jitter):
    k_pred, k_upd = (None, None) if key is None else tuple(jax.random.split(key))
    state, _ = _predict(model, state, t, k_pred)
    return _update(model, state, y, u, k_upd, threshold, regularisation, jitter)


# the trace counters (`eqx.debug.get_num_traces`) let tests assert one compilation per shape
_predict_traced = eqx.debug.assert_max_traces(_predict_impl, max_traces=None)
_update_traced = eqx.debug.assert_max_traces(_update_impl, max_traces=None)
_step_traced = eqx.debug.assert_max_traces(_step_impl, max_traces=None)
_predict_jit = eqx.filter_jit(_predict_traced)
_update_jit = eqx.filter_jit(_update_traced)
_step_jit = eqx.filter_jit(_step_traced)


def pf_predict(model, state: ParticleFilterState, t: Scalar, *, key: Key | None = None) -> ParticleFilterState:
    """Propagate every particle from ``state.t`` to ``t`` with ``model.sample_transition`` (``state.u`` held).

    Arguments:
        model: the twin.
        state: the current :class:`ParticleFilterState`.
        t: the time to predict to (``> state.t``).
        key: optional PRNG key for the transition noise; by default the state's key is split (and advanced).

    Returns:
        The predicted state (weights unchanged; ``status`` keeps the worst particle transition status).

    Raises:
        ValueError: for a model without a sensor, a state that is not a ParticleFilterState or a bad ``key``.
    """
    check_model(model)
    _check_state(state)
    if key is not None:
        _check_key(key)
    return _predict_jit(model, state, jnp.asarray(t, state.t.dtype), key)


def pf_update(
    model,
    state: ParticleFilterState,
    y: Float[ArrayLike, "*obs"],
    u: Float[ArrayLike, "*control"] | None = None,
    *,
    key: Key | None = None,
    resample_threshold: Scalar = 0.5,
    regularisation: Scalar | None = None,
    jitter: Jitter = "duplicates",
) -> tuple[ParticleFilterState, ParticleUpdateInfo]:
    """Reweight by ``log p(y | x)``, then resample (and jitter) when the ESS drops to ``resample_threshold · N``.

    Arguments:
        model: the twin.
        state: the predicted :class:`ParticleFilterState` at the time of ``y``.
        y: the measurement ``(obs,)``; ``NaN`` channels are missing (a fully missing ``y`` changes nothing but the
            key and the held control).
        u: the control in the sensor at this time, held from now on (default zeros).
        key: optional PRNG key for the resampling; by default the state's key is split (and advanced).
        resample_threshold: resample when ``ESS <= threshold · N``; 0 never resamples, 1 always (DAPPER's ``NER``).
        regularisation: ``None`` (bootstrap) or the bandwidth scale of the kernel jitter (DAPPER's ``reg``).
        jitter: ``"duplicates"`` jitters only particles resampled more than once (DAPPER's ``nuj=True``),
            ``"all"`` every particle.

    Returns:
        ``(state, info)``: the updated :class:`ParticleFilterState` and a :class:`ParticleUpdateInfo`.

    Raises:
        ValueError: for a ``y`` of the wrong shape, a threshold outside ``[0, 1]``, a negative ``regularisation`` or
            an unknown ``jitter``.
    """
    check_model(model)
    _check_state(state)
    y = _check_y(model, state, y)
    u = default_control(model, u, state.particles.dtype)
    if key is not None:
        _check_key(key)
    return _update_jit(
        model,
        state,
        y,
        u,
        key,
        _check_threshold(resample_threshold),
        _check_regularisation(regularisation),
        _check_jitter(jitter),
    )


def pf_step(
    model,
    state: ParticleFilterState,
    y: Float[ArrayLike, "*obs"],
    u: Float[ArrayLike, "*control"] | None = None,
    *,
    t: Scalar | None = None,
    key: Key | None = None,
    resample_threshold: Scalar = 0.5,
    regularisation: Scalar | None = None,
    jitter: Jitter = "duplicates",
) -> tuple[ParticleFilterState, ParticleUpdateInfo]:
    """One assimilation cycle: :func:`pf_predict` to ``t`` (default ``state.t + model.dt``), then :func:`pf_update`.

    Arguments are those of :func:`pf_predict` and :func:`pf_update`; an explicit ``key`` is split in two, the first
    half for the prediction and the second for the update. Without one, both split the state's key in turn — the
    batch driver's sequence, so stepping by hand reproduces :func:`particle_filter` draw for draw.

    Example:
        ```python
        state = tj.inference.pf_init(twin, jax.random.key(0), 2000)
        for y in stream:
            state, info = tj.inference.pf_step(twin, state, y, regularisation=1.0)
        ```
    """
    check_model(model)
    _check_state(state)
    if t is None:
        if model.dt is None:
            raise ValueError("`t` is required: the model has no `dt` to step by.")
        t = state.t + model.dt
    y = _check_y(model, state, y)
    u = default_control(model, u, state.particles.dtype)
    if key is not None:
        _check_key(key)
    return _step_jit(
        model,
        state,
        y,
        u,
        jnp.asarray(t, state.t.dtype),
        key,
        _check_threshold(resample_threshold),
        _check_regularisation(regularisation),
        _check_jitter(jitter),
    )


# --------------------------------------------------------------------------------------------------------------------
# the batch driver


def _summaries(info, store_covariances: bool, store_particles: bool):
    mean = weighted_mean(info.particles, info.log_weights)
    cov = weighted_covariance(info.particles, info.log_weights) if store_covariances else None
    x = info.particles if store_particles else None
    lw = info.log_weights if store_particles else None
    return mean, cov, x, lw


def _particle_filter_impl(
    model, ys, us, ts, particles, key, threshold, regularisation, jitter, store_covariances, store_particles
):
    state = _init_traced(model, key, particles, ts[0], us[0])

    def body(state, inputs):
        y, u, t, first = inputs
        # the first observation updates the prior directly; one scan body keeps a single traced update (compile time)
        state, status = jax.lax.cond(
            first, lambda s: (s, jnp.zeros_like(s.status)), lambda s: _predict(model, s, t, None), state
        )
        state, info = _update(model, state, y, u, None, threshold, regularisation, jitter)
        out = (info.log_likelihood, info.ess, info.resampled, status) + _summaries(
            info, store_covariances, store_particles
        )
        return state, out

    first = jnp.arange(ts.shape[0]) == 0
    state, stacked = jax.lax.scan(body, state, (ys, us, ts, first))
    lls, ess, resampled, status, means, covs, xs, lws = stacked
    return ParticleFilterResult(
        ts=ts,
        means=means,
        covariances=covs,
        log_likelihood=state.log_likelihood,
        log_likelihoods=lls,
        ess=ess,
        resampled=resampled,
        status=status,
        particles=xs,
        log_weights=lws,
    )


def _init_traced(model, key, particles, t0, u0):
    """``pf_init`` inside a trace (``particles`` an int or an array already checked)."""
    k_draw, k_state = jax.random.split(key)
    dtype = t0.dtype
    if isinstance(particles, int):
        x = jax.vmap(model.initial.sample)(jax.random.split(k_draw, particles)).astype(dtype)
    else:
        x = particles.astype(dtype)
    N = x.shape[0]
    return ParticleFilterState(
        particles=x,
        log_weights=jnp.full((N,), -np.log(N), dtype),
        t=t0,
        u=u0,
        log_likelihood=jnp.zeros((), dtype),
        status=jnp.zeros((), jnp.int32),
        key=k_state,
    )


_particle_filter_traced = eqx.debug.assert_max_traces(_particle_filter_impl, max_traces=None)
_particle_filter_jit = eqx.filter_jit(_particle_filter_traced)


def particle_filter(
    model,
    ys: Float[ArrayLike, " time *obs"],
    us: Float[ArrayLike, "..."] | None = None,
    ts: Float[ArrayLike, " time"] | None = None,
    *,
    particles,
    key: Key,
    resample_threshold: Scalar = 0.5,
    regularisation: Scalar | None = None,
    jitter: Jitter = "duplicates",
    store_particles: bool = False,
    store_covariances: bool | None = None,
) -> ParticleFilterResult:
    r"""Bootstrap (or regularised) particle filter over a whole record, compiled once per shape.

    The first observation reweights the initial cloud drawn from ``model.initial``; every later one follows a
    prediction over ``[ts[k-1], ts[k]]``. See the module docstring for the update, the likelihood estimate and the
    regularisation.

    Arguments:
        model: a :class:`~twinjax.StateSpaceModel` or :class:`~twinjax.LinearGaussianSSM` with a sensor.
        ys: measurements ``(T, obs)``; ``NaN`` marks a missing channel (a fully missing row is predict-only).
        us: controls ``(T, control)`` (``us[k]`` in the sensor at ``ts[k]`` and held until ``ts[k+1]``).
        ts: observation times ``(T,)`` (default ``model.dt * arange(T)``); irregular spacing is integrated exactly.
        particles: the number ``N >= 2`` of particles, or an ``(N, state)`` array of initial particles.
        key: a PRNG key (the same key gives the same result).
        resample_threshold: resample when ``ESS <= threshold · N`` (DAPPER's ``NER``); 0 never, 1 at every observed
            step.
        regularisation: ``None`` for the bootstrap filter, or the kernel bandwidth scale ``reg``: after resampling,
            jitter ``N(0, h² Σ_w)`` with ``h = reg · N^{-1/(n+4)}`` (DAPPER's ``PartFilt(reg=...)``).
        jitter: ``"duplicates"`` (DAPPER's default) or ``"all"``: which resampled particles get the jitter.
        store_particles: also return the weighted clouds ``(T, N, n)`` (memory!).
        store_covariances: return the weighted covariances ``(T, n, n)``; ``None`` (default) stores them while
            ``T·n²`` is at most 10⁷ numbers and returns ``covariances=None`` beyond.

    Returns:
        A :class:`ParticleFilterResult` (``.means``, ``.covariances``, ``.log_likelihood``, ``.ess``,
        ``.resampled``, …).

    Raises:
        ValueError: naming ``ys``, ``us``, ``ts``, ``particles``, ``key``, ``resample_threshold``,
            ``regularisation`` or ``jitter`` when one is malformed.

    Example:
        ```python
        twin = physics.lorenz96_twin(dt=0.05)
        truth = tj.simulate(twin, None, ts, key=jax.random.key(0))
        post = tj.inference.particle_filter(twin, truth.ys, particles=3000, key=jax.random.key(1),
                                            resample_threshold=0.5, regularisation=0.7)
        rmse = jnp.sqrt(jnp.mean((post.means - truth.xs) ** 2, axis=1))
        ```

    References:
        Gordon, Salmond & Smith 1993; Kitagawa 1996; Musso, Oudjane & Le Gland 2001; DAPPER ``PartFilt``.
    """
    check_model(model)
    _check_key(key)
    ys, us, ts = prepare_inputs(model, ys, us, ts)
    dtype = ys.dtype
    if isinstance(particles, bool) or not isinstance(particles, (int, np.integer)):
        x0 = _initial_particles(model, key, particles, None, None, dtype)
        n = x0.shape[1]
        particles = x0.astype(dtype)
    else:
        particles = int(particles)
        if particles < 2:
            raise ValueError(f"`particles` must be at least 2, got {particles!r}.")
        if model.initial is None:
            raise ValueError("The model has no `initial` belief: pass an (N, state) array of `particles`.")
        n = int(model.initial.mean.shape[0])
    p = _obs_dim(model, n, dtype)
    if ys.shape[1] != p:
        raise ValueError(f"`ys` must have shape ({ys.shape[0]}, {p}) (time, the sensor's output), got {ys.shape}.")
    if store_covariances is None:
        store_covariances = ys.shape[0] * n * n <= _MAX_STORED_COVARIANCE
    return _particle_filter_jit(
        model,
        ys,
        us,
        ts,
        particles,
        key,
        _check_threshold(resample_threshold),
        _check_regularisation(regularisation),
        _check_jitter(jitter),
        bool(store_covariances),
        bool(store_particles),
    )
