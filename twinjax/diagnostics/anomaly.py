r"""Calibrated anomaly detection: likelihood scores, a conformal threshold from the twin's own samples, injected
faults, ROC AUC and detection delay.

**Score.** Any twin with an explicit likelihood ``p_θ`` defines the anomaly score

$$ S(\mathbf{x}) = -\log p_\theta(\mathbf{x}), $$

low on nominal data and high on data the twin finds implausible. Three sources are provided:

- :func:`log_prob_score` — any model with ``log_prob`` (a :class:`~twinjax.generative.flows.CouplingFlow`, a
  Gaussian, ...);
- :func:`filter_score` / :func:`window_score` — a state-space twin and a Gaussian filter: the one-step predictive
  log-densities ``log p(y_k | y_{0:k-1})`` of a window of sensor readings (KF, EKF or UKF), whose sum over the window
  is the window's log marginal likelihood; :func:`sliding_sum` turns the per-step values into a streaming score
  ``S_t = -Σ_{k=t-w+1}^{t} log p(y_k | y_{0:k-1})``;
- :func:`iwae_score` — a :class:`~twinjax.generative.vae.VAE`: the importance-weighted bound
  ``log (1/K) Σ_k p(y, z_k) / q(z_k | y)``, ``z_k ~ q(z | y)`` (Burda et al. 2016), a lower bound on ``log p(y)``
  that tightens as ``K`` grows.

**Threshold.** With ``M`` scores ``S_1, …, S_M`` of synthetic samples drawn from ``p_θ`` itself,
:func:`conformal_threshold` returns the ``k``-th smallest, ``k = ⌈(M + 1)(1 − α)⌉`` (split-conformal quantile). If a
new nominal ``x`` is exchangeable with the synthetic ones (drawn from the same twin, with fresh initial states and
noise), its rank among the ``M + 1`` scores is uniform, so

$$ \alpha - \frac{1}{M + 1} \;\le\; \frac{M + 1 - k}{M + 1} \;=\; P(S(\mathbf{x}) > \tau) \;\le\; \alpha, $$

the right equality when scores have no ties (the left inequality then too). The guarantee is marginal over the
calibration draw; conditionally on one calibration set the false-alarm rate fluctuates around it with standard
deviation ``≈ √(α(1 − α)/M)``. It needs no faulty data and no exact likelihood: any fixed score function (an EKF's
approximate likelihood, a bound) is calibrated alike. Applied along the first axis of ``(M, time)`` scores it gives a
threshold per time step (exchangeability holds at each time separately), used for streaming detection.

**Faults** on sensor readings ``ys (time, obs)`` from step ``onset`` on: :func:`inject_bias` (a constant offset),
:func:`inject_drift` (a ramp), :func:`inject_stuck` (the sensor repeats its reading at ``onset``),
:func:`inject_noise` (extra Gaussian noise: a variance increase), and :func:`simulate_parameter_change` (the plant
itself changes: the twin is simulated with a modified parameter from ``onset``).

**Evaluation.** :func:`roc_auc` (Mann–Whitney, ties counted one half), :func:`roc_curve`, :func:`false_alarm_rate`
(with its binomial standard error) and :func:`detection_delay` (first alarm at or after the onset).

References:
    Chapter 000, "Applications", "Diagnostics and Anomaly Detection".
    V. Vovk, A. Gammerman, G. Shafer, *Algorithmic Learning in a Random World*, Springer, 2005 (conformal
    prediction); J. Lei et al., "Distribution-free predictive inference for regression", JASA 113, 2018, Thm. 2.2.
    Y. Burda, R. Grosse, R. Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
    J. A. Hanley, B. J. McNeil, "The meaning and use of the area under a ROC curve", Radiology 143, 1982.
"""

import fractions
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_float_array, concrete_probability, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Key
from ..generative.vae import VAE
from ..inference import extended_kalman_filter, kalman_filter, unscented_kalman_filter
from ..model.ssm import AbstractStateSpaceModel
from ..simulate import simulate

__all__ = [
    "conformal_threshold",
    "detect",
    "detection_delay",
    "false_alarm_rate",
    "filter_score",
    "inject_bias",
    "inject_drift",
    "inject_noise",
    "inject_stuck",
    "iwae_score",
    "log_prob_score",
    "roc_auc",
    "roc_curve",
    "simulate_parameter_change",
    "sliding_sum",
    "window_score",
]

_FILTERS = {"kf": kalman_filter, "ekf": extended_kalman_filter, "ukf": unscented_kalman_filter}
_LOG_2PI = float(np.log(2 * np.pi))


# ------------------------------------------------------------------------------------------------------------ scores


def log_prob_score(model, x: Float[ArrayLike, "n ..."], cond: ArrayLike | None = None) -> Float[Array, " n"]:
    """``S(x) = −log p_θ(x)`` for any model with a ``log_prob(x, cond=None)`` method (a flow, a Gaussian, ...).

    Arguments:
        model: an object with ``log_prob`` returning one log-density per row of ``x``.
        x: a batch of samples ``(n, ...)``.
        cond: the conditioning input of a conditional model (passed on when not ``None``).

    Returns:
        The scores ``(n,)`` (nats).

    Raises:
        ValueError: if ``model`` has no ``log_prob``.

    Example:
        ```python
        scores = log_prob_score(flow, data)      # flow: a trained CouplingFlow
        ```
    """
    if not callable(getattr(model, "log_prob", None)):
        raise ValueError(f"`model` must have a `log_prob(x)` method, got {type(model).__name__}.")
    logp = model.log_prob(x) if cond is None else model.log_prob(x, cond)
    return -jnp.asarray(logp)


def filter_score(
    twin: AbstractStateSpaceModel,
    ys: Float[ArrayLike, "time obs"],
    us: Float[ArrayLike, "_time control"] | None = None,
    ts: Float[ArrayLike, " _time"] | None = None,
    *,
    method: str = "ekf",
) -> Float[Array, " time"]:
    r"""Per-step anomaly scores ``−log p(y_k | y_{0:k-1})``: the twin's one-step predictive densities.

    The filter (``"kf"``, ``"ekf"`` or ``"ukf"``) starts from the twin's initial belief at ``ts[0]``; its
    predictive ``p(y_k | y_{0:k-1}) = N(y_k; ŷ_k, S_k)`` is exact for a linear-Gaussian twin and the filter's Gaussian
    approximation otherwise. The sum over the window is ``−log p(y_{0:T-1})`` (:func:`window_score`).

    Arguments:
        twin: the state-space twin with a Gaussian sensor.
        ys, us, ts: the readings ``(time, obs)``, controls and times, as for
            :func:`~twinjax.inference.extended_kalman_filter`.
        method: ``"kf"``, ``"ekf"`` or ``"ukf"``.

    Returns:
        ``(time,)`` negative log predictive densities (nats).

    Raises:
        ValueError: for an unknown ``method``, or (from the filter) inputs of the wrong shape.

    Example:
        ```python
        path = tj.simulate(twin, None, ts, key=key)
        per_step = filter_score(twin, path.ys, ts=ts)
        ```
    """
    if method not in _FILTERS:
        raise ValueError(f"`method` must be one of {sorted(_FILTERS)}, got {method!r}.")
    return -_FILTERS[method](twin, ys, us, ts).log_likelihoods


def window_score(
    twin: AbstractStateSpaceModel,
    ys: Float[ArrayLike, "time obs"],
    us: Float[ArrayLike, "_time control"] | None = None,
    ts: Float[ArrayLike, " _time"] | None = None,
    *,
    method: str = "ekf",
) -> Float[Array, ""]:
    """``S(y_{0:T-1}) = −log p(y_{0:T-1}) = −Σ_k log p(y_k | y_{0:k-1})``: a window's score (see
    :func:`filter_score` for the arguments)."""
    return jnp.sum(filter_score(twin, ys, us, ts, method=method))


def iwae_score(vae: VAE, key: Key, y: Float[ArrayLike, "n time obs"], samples: int = 16) -> Float[Array, " n"]:
    r"""``S(y) = −log (1/K) Σ_k p(y | z_k) p(z_k) / q(z_k | y)``: the negative importance-weighted bound of a VAE.

    With ``z_k ~ q(z | y)`` (the encoder's Gaussian) and the decoder's Gaussian likelihood, the bound is a lower bound
    on ``log p(y)`` that increases with ``K`` and equals the ELBO in expectation for ``K = 1`` (Burda et al. 2016),
    so the score is an upper bound on ``−log p(y)`` in expectation.

    Arguments:
        vae: a :class:`~twinjax.generative.vae.VAE`.
        key: PRNG key of the latent draws.
        y: trajectories ``(n, time, obs)``.
        samples: ``K ≥ 1``.

    Returns:
        The scores ``(n,)`` (nats).

    Raises:
        ValueError: if ``samples`` is not a positive integer or ``y`` has the wrong shape.

    Example:
        ```python
        scores = iwae_score(vae, key, data, samples=64)
        ```
    """
    if not isinstance(vae, VAE):
        raise ValueError(f"`vae` must be a twinjax VAE, got {type(vae).__name__}.")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"`samples` must be a positive integer, got {samples!r}.")
    y = jnp.asarray(y)
    mean, log_sd = vae.encode(y)  # validates the shape of y
    eps = jax.random.normal(key, (samples, *mean.shape), mean.dtype)
    z = mean + jnp.exp(log_sd) * eps
    d = mean.shape[-1]
    log_q = jnp.sum(-0.5 * eps**2 - log_sd, axis=-1) - 0.5 * d * _LOG_2PI
    log_prior = jnp.sum(-0.5 * z**2, axis=-1) - 0.5 * d * _LOG_2PI
    decoded = jax.vmap(vae.decode)(z)  # (samples, n, time, obs)
    log_sd_y = jnp.broadcast_to(vae.log_obs_sd, y.shape)
    r = (y - decoded) * jnp.exp(-log_sd_y)
    log_lik = jnp.sum(-0.5 * r**2 - log_sd_y - 0.5 * _LOG_2PI, axis=(-2, -1))
    bound = jax.nn.logsumexp(log_lik + log_prior - log_q, axis=0) - math.log(samples)
    return -bound


def sliding_sum(per_step: Float[ArrayLike, "*batch time"], width: int) -> Float[Array, "*batch time"]:
    """Streaming score ``S_t = Σ_{k = max(0, t-w+1)}^{t} s_k`` over the last ``width`` steps (the last axis is time).

    Raises:
        ValueError: if ``width`` is not a positive integer.

    Example:
        ```python
        stream = sliding_sum(filter_score(twin, ys, us), width=10)
        ```
    """
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"`width` must be a positive integer, got {width!r}.")
    s = as_float_array(per_step, "per_step")
    # differences of one cumulative sum: O(time) for any width; in float64 the cancellation is negligible for the
    # window lengths of a detector (thousands of steps of O(1–100)-nat scores)
    c = jnp.cumsum(s, axis=-1)
    lagged = jnp.concatenate([jnp.zeros((*c.shape[:-1], min(width, c.shape[-1])), c.dtype), c], axis=-1)
    return c - lagged[..., : c.shape[-1]]


# ------------------------------------------------------------------------------------------------- threshold, alarms


def conformal_threshold(scores: Float[ArrayLike, "..."], alpha: float | Float[ArrayLike, ""]) -> Float[Array, "*rest"]:
    r"""The conformal ``(1 − α)`` threshold: the ``⌈(M + 1)(1 − α)⌉``-th smallest of ``M`` nominal scores.

    ``scores`` are those of ``M`` synthetic samples from the twin (along the first axis; further axes, e.g. time, get
    one threshold each). A new exchangeable nominal score then exceeds ``τ`` with probability at most ``α`` and,
    without ties, at least ``α − 1/(M + 1)`` (module docstring). ``k`` is computed in exact rational arithmetic with
    ``α`` the decimal it prints as, so ``α = 0.05, M = 99`` gives ``k = 95``, not 96 by a rounding of ``100 × 0.95``.

    Arguments:
        scores: ``(M, ...)`` scores of nominal synthetic samples.
        alpha: the false-alarm rate, ``1/(M + 1) ≤ α < 1``.

    Returns:
        ``τ`` with shape ``scores.shape[1:]``.

    Raises:
        ValueError: if ``scores`` is a scalar or empty, ``alpha`` is not in ``(0, 1)``, or ``α < 1/(M + 1)`` (too few
            samples for that rate: ``τ`` would be ``+∞``); an ``eqx.error_if`` runtime error if a score is NaN.

    Example:
        ```python
        tau = conformal_threshold(window_scores_of_synthetic_data, alpha=0.01)
        alarms = detect(new_scores, tau)
        ```
    """
    alpha = concrete_probability(alpha, "alpha")
    s = as_float_array(scores, "scores")
    if s.ndim == 0 or s.shape[0] == 0:
        raise ValueError(f"`scores` must have shape (M, ...) with M ≥ 1 calibration scores, got {tuple(s.shape)}.")
    m = s.shape[0]
    k = math.ceil((m + 1) * (1 - fractions.Fraction(repr(alpha))))
    if k > m:
        raise ValueError(
            f"`alpha`={alpha!r} is below 1/(M + 1) = {1 / (m + 1):.3g} for M={m} calibration scores: the threshold "
            f"would be +inf. Draw at least M = {math.ceil(1 / alpha) - 1} synthetic samples."
        )
    tau = jnp.sort(s, axis=0)[k - 1]
    return eqx.error_if(tau, jnp.any(jnp.isnan(s)), "conformal_threshold: `scores` contains NaN.")


def detect(scores: Float[ArrayLike, "*batch"], tau: Float[ArrayLike, "*tau"]) -> Bool[Array, "*batch"]:
    """Alarms ``S > τ`` (strict: a score equal to ``τ`` is no alarm, which keeps the conformal bound under ties);
    ``tau`` broadcasts against ``scores`` (a scalar, or one threshold per time step)."""
    return as_float_array(scores, "scores") > as_float_array(tau, "tau")


def false_alarm_rate(
    scores: Float[ArrayLike, "..."], tau: Float[ArrayLike, ""]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The fraction of nominal ``scores`` above ``τ`` and its binomial standard error ``√(p(1 − p)/n)``.

    Raises:
        ValueError: if ``scores`` is not a non-empty vector.
    """
    s = as_float_array(scores, "scores")
    if s.ndim != 1 or s.shape[0] == 0:
        raise ValueError(f"`scores` must be a non-empty vector (n,), got shape {tuple(s.shape)}.")
    p = jnp.mean(detect(s, tau).astype(s.dtype))
    return p, jnp.sqrt(p * (1 - p) / s.shape[0])


def _check_vector(x, name):
    x = as_float_array(x, name)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty vector (n,), got shape {tuple(x.shape)}.")
    return x


def roc_auc(nominal: Float[ArrayLike, "..."], faulty: Float[ArrayLike, "..."]) -> Float[Array, ""]:
    r"""Area under the ROC curve, ``P(S_faulty > S_nominal) + ½ P(S_faulty = S_nominal)`` (Mann–Whitney ``U / (n f)``).

    Computed from exact counts per faulty score (``#{nominal < s} + ½ #{nominal = s}`` by binary search), so it is
    exact with ties and does not lose precision to large rank sums. ``1`` separates perfectly, ``½`` is chance.

    Raises:
        ValueError: if either argument is not a non-empty vector.

    Example:
        ```python
        roc_auc(jnp.array([0.0, 1.0]), jnp.array([1.0, 2.0]))   # (1 + ½ + 1 + 1) / 4 = 0.875
        ```
    """
    nominal, faulty = _check_vector(nominal, "nominal"), _check_vector(faulty, "faulty")
    srt = jnp.sort(nominal)
    below = jnp.searchsorted(srt, faulty, side="left")
    upto = jnp.searchsorted(srt, faulty, side="right")
    wins = below.astype(nominal.dtype) + 0.5 * (upto - below).astype(nominal.dtype)
    return jnp.mean(wins) / nominal.shape[0]


def roc_curve(
    nominal: Float[ArrayLike, "..."], faulty: Float[ArrayLike, "..."]
) -> tuple[Float[Array, " points"], Float[Array, " points"]]:
    """``(false-positive rate, true-positive rate)`` of the alarm ``S ≥ τ`` for every threshold ``τ`` among the
    scores, from ``(0, 0)`` to ``(1, 1)`` (``n + f + 1`` points, non-decreasing in both).

    Raises:
        ValueError: if either argument is not a non-empty vector.
    """
    nominal, faulty = _check_vector(nominal, "nominal"), _check_vector(faulty, "faulty")
    thresholds = jnp.sort(jnp.concatenate([nominal, faulty]))[::-1]
    sn, sf = jnp.sort(nominal), jnp.sort(faulty)
    fpr = (nominal.shape[0] - jnp.searchsorted(sn, thresholds, side="left")).astype(nominal.dtype) / nominal.shape[0]
    tpr = (faulty.shape[0] - jnp.searchsorted(sf, thresholds, side="left")).astype(nominal.dtype) / faulty.shape[0]
    zero = jnp.zeros((1,), fpr.dtype)
    return jnp.concatenate([zero, fpr]), jnp.concatenate([zero, tpr])


def detection_delay(
    scores: Float[ArrayLike, "..."], tau: Float[ArrayLike, "*tau"], onset: int | ArrayLike
) -> Float[Array, "*batch"]:
    """Steps from the fault ``onset`` to the first alarm ``S_t > τ_t`` with ``t ≥ onset`` (``+inf`` if none).

    Alarms before the onset are false alarms and do not count; an alarm at the onset step is a delay of 0. Multiply
    by the sampling interval for seconds. ``tau`` broadcasts against ``scores`` (scalar or per time step).

    Raises:
        ValueError: if ``scores`` has no time axis or a concrete ``onset`` lies outside it.

    Example:
        ```python
        detection_delay(jnp.array([0.0, 5.0, 0.0, 5.0]), 1.0, onset=2)   # 1.0
        ```
    """
    s = as_float_array(scores, "scores")
    if s.ndim == 0:
        raise ValueError("`scores` must have a time axis (last axis), got a scalar.")
    n = s.shape[-1]
    if is_concrete(onset) and not 0 <= int(onset) < n:
        raise ValueError(f"`onset` must be a time index in [0, {n}), got {onset!r}.")
    hit = detect(s, tau) & (jnp.arange(n) >= onset)
    first = jnp.argmax(hit, axis=-1)
    return jnp.where(jnp.any(hit, axis=-1), (first - onset).astype(s.dtype), jnp.inf)


# ------------------------------------------------------------------------------------------------------------ faults


def _after(ys, onset, name="ys"):
    ys = as_float_array(ys, name)
    if ys.ndim != 2:
        raise ValueError(f"`{name}` must have shape (time, obs), got {tuple(ys.shape)}.")
    if is_concrete(onset) and not 0 <= int(onset) < ys.shape[0]:
        raise ValueError(f"`onset` must be a time index in [0, {ys.shape[0]}), got {onset!r}.")
    return ys, (jnp.arange(ys.shape[0]) >= onset)[:, None]


def _per_channel(value, ys, name):
    v = as_float_array(value, name)
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != ys.shape[1]):
        raise ValueError(f"`{name}` must be a scalar or have shape ({ys.shape[1]},) (one per channel), got {v.shape}.")
    return v.astype(ys.dtype)


def inject_bias(
    ys: Float[ArrayLike, "..."], onset: int | ArrayLike, bias: Float[ArrayLike, "*channel"]
) -> Float[Array, "time obs"]:
    """Sensor bias: ``y_k + b`` for ``k ≥ onset``; ``bias`` is a scalar or one offset per channel (0 = healthy).

    Example:
        ```python
        faulty = inject_bias(path.ys, onset=50, bias=jnp.array([0.005, 0.0]))   # +5 mV on the voltage only
        ```
    """
    ys, after = _after(ys, onset)
    return jnp.where(after, ys + _per_channel(bias, ys, "bias"), ys)


def inject_drift(
    ys: Float[ArrayLike, "..."], onset: int | ArrayLike, rate: Float[ArrayLike, "*channel"]
) -> Float[Array, "time obs"]:
    """Slow drift: ``y_k + r (k − onset)`` for ``k ≥ onset`` (a ramp, ``rate`` per step; scalar or per channel)."""
    ys, after = _after(ys, onset)
    steps = (jnp.arange(ys.shape[0]) - onset).astype(ys.dtype)[:, None]
    return jnp.where(after, ys + _per_channel(rate, ys, "rate") * steps, ys)


def inject_stuck(
    ys: Float[ArrayLike, "..."], onset: int | ArrayLike, channels: ArrayLike | None = None
) -> Float[Array, "time obs"]:
    """Stuck sensor: from ``onset`` on, the selected ``channels`` (a boolean mask, default all) repeat ``y_onset``."""
    ys, after = _after(ys, onset)
    mask = jnp.ones((ys.shape[1],), bool) if channels is None else jnp.asarray(channels)
    if mask.shape != (ys.shape[1],) or mask.dtype != jnp.bool_:
        raise ValueError(f"`channels` must be a boolean mask of shape ({ys.shape[1]},), got {mask.dtype}{mask.shape}.")
    held = jax.lax.dynamic_index_in_dim(ys, jnp.asarray(onset), axis=0, keepdims=True)
    return jnp.where(after & mask[None, :], held, ys)


def inject_noise(
    key: Key, ys: Float[ArrayLike, "..."], onset: int | ArrayLike, sd: Float[ArrayLike, "*channel"]
) -> Float[Array, "time obs"]:
    """Variance increase: ``y_k + e_k``, ``e_k ~ N(0, sd²)`` for ``k ≥ onset`` (scalar or per-channel ``sd``).

    A sensor with noise variance ``σ²`` then has ``σ² + sd²``: ``sd = σ√3`` doubles its standard deviation.
    """
    ys, after = _after(ys, onset)
    sd = _per_channel(sd, ys, "sd")
    return jnp.where(after, ys + sd * jax.random.normal(key, ys.shape, ys.dtype), ys)


def simulate_parameter_change(
    twin: AbstractStateSpaceModel,
    changed: AbstractStateSpaceModel,
    ts: Float[ArrayLike, " time"],
    onset: int,
    *,
    key: Key,
    controls: Float[ArrayLike, "_time control"] | None = None,
    x0: Float[ArrayLike, " state"] | None = None,
) -> Float[Array, "time obs"]:
    """Sensor readings of a plant whose parameters change at ``ts[onset]``: ``twin`` before, ``changed`` after.

    ``twin`` is simulated over ``ts[:onset + 1]``; ``changed`` (e.g. ``eqx.tree_at`` of a parameter of ``twin``)
    continues from the state reached at ``ts[onset]`` with fresh noise. Readings ``ys[onset:]`` come from
    ``changed``'s sensor. ``onset`` is a Python ``int`` (it sets the segment lengths).

    Arguments:
        twin, changed: the nominal and the faulty twin (same state and sensor shapes).
        ts: strictly increasing times ``(time,)``.
        onset: the first faulty step, ``0 ≤ onset < time``.
        key: PRNG key (initial state and noise).
        controls: an open-loop array ``(time, control)``, or ``None`` for an autonomous twin.
        x0: the initial state; default a draw from ``twin.initial``.

    Returns:
        ``ys`` of shape ``(time, obs)``.

    Raises:
        ValueError: if ``onset`` is not an integer in range, or (from :func:`~twinjax.simulate`) shapes disagree.

    Example:
        ```python
        worn = eqx.tree_at(lambda m: m.dynamics.r0_ohm, twin, 0.02)
        ys = simulate_parameter_change(twin, worn, ts, 30, key=key, controls=us)
        ```
    """
    ts = as_float_array(ts, "ts")
    n = ts.shape[0]
    if not isinstance(onset, int) or isinstance(onset, bool) or not 0 <= onset < n:
        raise ValueError(f"`onset` must be a Python int in [0, {n}), got {onset!r}.")
    k_before, k_after = jax.random.split(key)
    us = None if controls is None else as_float_array(controls, "controls")
    if us is not None and (us.ndim != 2 or us.shape[0] != n):
        raise ValueError(f"`controls` must have shape ({n}, control), got {tuple(us.shape)}.")
    if onset == 0:
        return simulate(changed, x0, ts, controls=us, key=k_after).ys
    before = simulate(twin, x0, ts[: onset + 1], controls=None if us is None else us[: onset + 1], key=k_before)
    after = simulate(changed, before.xs[-1], ts[onset:], controls=None if us is None else us[onset:], key=k_after)
    return jnp.concatenate([before.ys[:-1], after.ys], axis=0)
