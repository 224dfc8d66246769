r"""Distribution shift between the data a twin was built on and the data it is used on, and the tail risk of its
losses.

**Shift.** Write the source (training) law as ``p_s(x, y) = p_s(x) p_s(y | x)`` and the target (deployment) law as
``p_t(x, y)``. *Covariate shift* changes the input law only, ``p_t(x) ≠ p_s(x)`` with ``p_t(y | x) = p_s(y | x)``: a
model of ``y | x`` stays right, but averages over ``x`` must be reweighted. *Concept shift* changes the relation
itself, ``p_t(y | x) ≠ p_s(y | x)``: no reweighting of source data can repair it (test it on joint samples
``(x, y)``, which the tests below accept as well).

**Two-sample tests** of ``H_0: P = Q`` from ``x_1..x_n ~ P``, ``y_1..y_m ~ Q``:

- :func:`mmd_test` — the unbiased MMD² (:func:`twinjax.generative.metrics.mmd`, Gaussian kernels with the median
  heuristic) and its permutation null: with ``P`` random relabellings of the pooled sample,
  ``p = (1 + #\{b : \mathrm{MMD}^2_b \ge \mathrm{MMD}^2\}) / (1 + P)``, a valid p-value at every ``n``
  (``P(p ≤ u) ≤ u`` under ``H_0``, exchangeability) (Gretton et al. 2012).
- :func:`classifier_test` — train a classifier to tell ``x`` from ``y`` on half of each sample and count its correct
  answers ``k`` on the other, balanced half of size ``n_test``. Under ``H_0`` the held-out labels are independent of
  the features, so ``k`` is a sum of two binomials with success probabilities ``q`` and ``1 − q``, whose upper tail is
  dominated by ``Binomial(n_test, 1/2)``'s; the p-value ``P(K ≥ k) = I_{1/2}(k, n_{test} − k + 1)`` is exact for that
  binomial and conservative otherwise (Lopez-Paz & Oquab 2017).

**Importance weighting.** Under covariate shift ``E_t[f(X)] = E_s[w(X) f(X)]`` with ``w = p_t / p_s``, provided
``p_t`` is absolutely continuous with respect to ``p_s`` (``p_s(x) = 0 ⇒ p_t(x) = 0``). :func:`density_ratio_weights`
computes ``w`` from known log-densities, or from a probabilistic classifier ``c(x) = P(\text{target} | x)`` trained
on ``n_s`` source and ``n_t`` target points, by Bayes' rule ``w(x) = (n_s / n_t)\, c(x) / (1 − c(x))``
(Sugiyama et al. 2012), with the self-normalised weights ``w̃_i = w_i / Σ_j w_j`` and the effective sample size
``ESS = (Σ w_i)² / Σ w_i²``. Where the source has (almost) no mass the ratio explodes and the estimate is dominated by
a handful of points or is simply wrong (target mass that no source point sees is invisible to every reweighting):
:func:`support_check` flags the target points where ``c(x) > 1 − ε`` (equivalently ``w(x) > (n_s/n_t)(1 − ε)/ε``),
where ``w`` exceeds a cap, or where a source density falls below a floor, and :func:`importance_weighted_mean`
refuses (``ValueError``) to return an estimate when any point is flagged.

**Tail risk.** For losses ``L`` and a tail fraction ``α ∈ (0, 1]``, ``VaR_α`` is the ``(1 − α)``-quantile of ``L``
and (Rockafellar & Uryasev 2000)

$$ \mathrm{CVaR}_\alpha(L) = \min_t \Big\{ t + \tfrac{1}{\alpha} \mathbb{E}[(L - t)_+] \Big\}
   = \mathrm{VaR}_\alpha + \tfrac{1}{\alpha} \mathbb{E}[(L - \mathrm{VaR}_\alpha)_+], $$

the mean of the worst ``α`` fraction of outcomes. Empirically (:func:`var`, :func:`cvar`) the expectation is over the
(optionally importance-weighted) empirical law and ``VaR_α`` is its lower ``(1 − α)``-quantile, the smallest sorted
loss whose cumulative weight reaches ``1 − α`` — NumPy's ``np.quantile(losses, 1 − α, method="inverted_cdf")`` when
unweighted — at which the minimum over ``t`` is attained exactly. :func:`twin_cvar` does this on the twin's own
samples, with the delta-method standard error ``sd(VaR + (L − VaR)_+/α) / √n``.

References:
    A. Gretton, K. M. Borgwardt, M. J. Rasch, B. Schölkopf, A. Smola, "A kernel two-sample test", JMLR 13, 2012.
    D. Lopez-Paz, M. Oquab, "Revisiting classifier two-sample tests", ICLR 2017.
    M. Sugiyama, T. Suzuki, T. Kanamori, "Density Ratio Estimation in Machine Learning", Cambridge University Press,
    2012. R. T. Rockafellar, S. Uryasev, "Optimization of conditional value-at-risk", Journal of Risk 2(3), 2000.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import as_float_array, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Int, Key
from ..generative.metrics import BANDWIDTH_FACTORS, mmd, pairwise_distances

__all__ = [
    "ClassifierTestResult",
    "ImportanceWeights",
    "ShiftClassifier",
    "SupportReport",
    "TailRisk",
    "classifier_test",
    "cvar",
    "density_ratio_weights",
    "fit_classifier",
    "importance_weighted_mean",
    "mmd_test",
    "support_check",
    "twin_cvar",
    "var",
]


# ------------------------------------------------------------------------------------------------------------ helpers


def _samples(a, name: str, min_n: int = 2) -> Array:
    """``a`` as a float ``(n, d)`` array: a vector is ``n`` scalar samples, trailing axes are flattened."""
    a = as_float_array(a, name)
    if a.ndim < 1 or a.shape[0] < min_n:
        raise ValueError(f"`{name}` must have a leading sample axis of at least {min_n} samples, got shape {a.shape}.")
    return a.reshape(a.shape[0], -1)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _alpha(alpha) -> float:
    if not is_concrete(alpha) or np.ndim(alpha) != 0:
        raise ValueError(f"`alpha` must be a concrete scalar in (0, 1], got {alpha!r}.")
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1], got {alpha!r}.")
    return alpha


def _binomial_sf_half(k, n: int) -> Array:
    """``P(K ≥ k)`` for ``K ~ Binomial(n, 1/2)``: ``I_{1/2}(k, n − k + 1)`` (1 at ``k ≤ 0``, 0 at ``k > n``)."""
    k = jnp.asarray(k, jnp.result_type(float))
    inside = (k >= 1) & (k <= n)
    kk = jnp.clip(k, 1.0, float(n))
    tail = jax.scipy.special.betainc(kk, n - kk + 1.0, jnp.asarray(0.5, kk.dtype))
    return jnp.where(inside, tail, jnp.where(k < 1, 1.0, 0.0))


# ------------------------------------------------------------------------------------------------------------ MMD test


def mmd_test(
    key: Key,
    x: Float[ArrayLike, "n ..."],
    y: Float[ArrayLike, "m ..."],
    *,
    permutations: int = 500,
    bandwidth: Float[ArrayLike, ""] | Float[ArrayLike, " k"] | None = None,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Kernel two-sample test: the unbiased MMD² and its permutation p-value (see the module docstring).

    Args:
        key: PRNG key for the permutations.
        x, y: samples ``(n, ...)`` and ``(m, ...)`` (a vector is a sample of scalars; trailing axes are flattened).
        permutations: number ``P`` of random relabellings of the pooled sample (vmapped: one matrix product).
        bandwidth: Gaussian kernel length scale(s); default the median pairwise distance of the pooled sample times
            ``(0.25, 0.5, 1, 2, 4)`` (the kernel of :func:`twinjax.generative.metrics.mmd`). Computed on the pooled
            sample, it is the same for every relabelling, so the test stays exact.

    Returns:
        ``(statistic, p_value)`` with ``p_value = (1 + #{permuted ≥ observed}) / (1 + P) ∈ [1/(1 + P), 1]``.

    Raises:
        ValueError: fewer than 2 samples, mismatched event shapes, ``permutations < 1`` or a non-positive bandwidth.
    """
    permutations = _positive_int(permutations, "permutations")
    x, y = _samples(x, "x"), _samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same event size, got {x.shape[1]} and {y.shape[1]}.")
    n, m = x.shape[0], y.shape[0]
    z = jnp.concatenate([x, y.astype(x.dtype)])
    dist = pairwise_distances(z, z)
    if bandwidth is None:
        median = jnp.nanmedian(jnp.where(dist > 0, dist, jnp.nan))
        bw = jax.lax.stop_gradient(median) * jnp.asarray(BANDWIDTH_FACTORS, z.dtype)
    else:
        bw = jnp.atleast_1d(as_float_array(bandwidth, "bandwidth")).astype(z.dtype)
        if bw.ndim != 1:
            raise ValueError(f"`bandwidth` must be a scalar or a vector, got shape {bw.shape}.")
        if is_concrete(bw) and not bool(jnp.all(bw > 0)):
            raise ValueError(f"`bandwidth` must be positive, got {bw}.")
    statistic = mmd(x, y, bw)

    kern = jnp.sum(jnp.exp(-(dist[..., None] ** 2) / (2.0 * bw**2)), axis=-1)
    kern0 = kern - jnp.diag(jnp.diag(kern))  # within-sample sums skip i = j (U-statistic)
    keys = jax.random.split(key, permutations)
    # a[:, b] = 1 for the points that relabelling b puts in the x group
    a = jax.vmap(lambda k: jax.random.permutation(k, n + m) < n)(keys).T.astype(z.dtype)
    b = 1.0 - a
    ka, kb = kern0 @ a, kern0 @ b
    sxx = jnp.sum(a * ka, 0)
    syy = jnp.sum(b * kb, 0)
    sxy = jnp.sum(b * (kern @ a), 0)
    null = sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)
    # a relative tolerance so that a relabelling equal to the observed one (e.g. the identity) counts as ≥
    tol = 1e-10 * jnp.maximum(jnp.abs(statistic), jnp.max(jnp.abs(kern)) / min(n, m))
    exceed = jnp.sum(null >= statistic - tol)
    p_value = (1.0 + exceed) / (1.0 + permutations)
    return statistic, p_value


# ---------------------------------------------------------------------------------------------------- classifier test


class ShiftClassifier(eqx.Module):
    """A probabilistic classifier ``c(x) = P(target | x)`` on standardised inputs: logistic regression (``depth=0``)
    or an MLP, trained by :func:`fit_classifier`.

    ``logit(x)`` and ``__call__(x)`` (the probability) take a batch ``(n, ...)`` (a vector is ``n`` scalars).
    ``n_source`` and ``n_target`` are the training class counts, so :func:`density_ratio_weights` can undo the class
    prior.
    """

    net: eqx.nn.MLP
    mean: Float[Array, " d"]
    scale: Float[Array, " d"]
    n_source: int = eqx.field(static=True)
    n_target: int = eqx.field(static=True)

    def logit(self, x: Float[ArrayLike, "n ..."]) -> Float[Array, " n"]:
        x = _samples(x, "x", min_n=1)
        u = (x - self.mean) / self.scale
        return jax.vmap(self.net)(u.astype(self.mean.dtype))

    def __call__(self, x: Float[ArrayLike, "n ..."]) -> Float[Array, " n"]:
        return jax.nn.sigmoid(self.logit(x))


def _train(key, source, target, steps, depth, width, learning_rate):
    z = jnp.concatenate([source, target.astype(source.dtype)])
    labels = jnp.concatenate([jnp.zeros(source.shape[0], z.dtype), jnp.ones(target.shape[0], z.dtype)])
    mean = jnp.mean(z, 0)
    scale = jnp.where(jnp.std(z, 0) > 0, jnp.std(z, 0), 1.0)
    net = eqx.nn.MLP(z.shape[1], "scalar", width, depth, key=key, dtype=z.dtype)
    if depth == 0:  # logistic regression: start at zero (a convex problem; no symmetry to break)
        net = jax.tree.map(lambda v: jnp.zeros_like(v) if eqx.is_inexact_array(v) else v, net)
    counts = (int(source.shape[0]), int(target.shape[0]))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt = optax.adam(learning_rate)

    def loss(p):
        model = ShiftClassifier(eqx.combine(p, static), mean, scale, *counts)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(model.logit(z), labels))

    def step(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(loss)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return ShiftClassifier(eqx.combine(params, static), mean, scale, *counts)


def fit_classifier(
    key: Key,
    source: Float[ArrayLike, "n ..."],
    target: Float[ArrayLike, "m ..."],
    *,
    steps: int = 500,
    depth: int = 0,
    width: int = 32,
    learning_rate: float = 0.05,
) -> ShiftClassifier:
    """Fit ``c(x) = P(target | x)`` by full-batch Adam on the binary cross-entropy (label 0: source, 1: target).

    Args:
        key: PRNG key (the MLP's initialisation; logistic regression starts at zero).
        source, target: samples ``(n, ...)`` and ``(m, ...)``.
        steps: optimisation steps.
        depth: hidden layers; 0 is logistic regression (well specified for two Gaussians with one covariance, whose
            log-ratio is affine).
        width: hidden width of the MLP (unused at ``depth=0``).
        learning_rate: Adam step size.

    Raises:
        ValueError: bad shapes or hyper-parameters.
    """
    steps = _positive_int(steps, "steps")
    width = _positive_int(width, "width")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"`depth` must be a non-negative integer, got {depth!r}.")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"`learning_rate` must be a positive number, got {learning_rate!r}.")
    source, target = _samples(source, "source", 1), _samples(target, "target", 1)
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"`source` and `target` must have the same event size, got {source.shape[1]} and {target.shape[1]}."
        )
    return _train(key, source, target, steps, int(depth), width, float(learning_rate))


class ClassifierTestResult(NamedTuple):
    """Result of :func:`classifier_test`: held-out ``accuracy = correct / n_test``, its exact binomial p-value, and
    the trained ``classifier`` (``P(y-sample | x)``, usable by :func:`density_ratio_weights`)."""

    accuracy: Float[Array, ""]
    p_value: Float[Array, ""]
    classifier: ShiftClassifier
    correct: Int[Array, ""]
    n_test: int


def classifier_test(
    key: Key,
    x: Float[ArrayLike, "n ..."],
    y: Float[ArrayLike, "m ..."],
    *,
    steps: int = 300,
    depth: int = 0,
    width: int = 32,
    learning_rate: float = 0.05,
) -> ClassifierTestResult:
    """Classifier two-sample test (Lopez-Paz & Oquab 2017; see the module docstring).

    Each sample is shuffled and split in half; a :class:`ShiftClassifier` (``x`` → 0, ``y`` → 1) is trained on the
    first halves and its accuracy measured on the second (balanced) halves, ``n_test = 2 (n − ⌊n/2⌋)`` points. The
    p-value is ``P(K ≥ correct)`` for ``K ~ Binomial(n_test, 1/2)`` (= ``scipy.stats.binom.sf(correct − 1, n_test,
    0.5)``).

    Args:
        key: PRNG key (the split and the classifier's initialisation).
        x, y: samples of the same size ``n ≥ 4`` (equal sizes keep the chance accuracy at 1/2: subsample the larger).
        steps, depth, width, learning_rate: as :func:`fit_classifier`.

    Raises:
        ValueError: different sample sizes or event shapes, fewer than 4 samples, bad hyper-parameters.
    """
    x, y = _samples(x, "x", 4), _samples(y, "y", 4)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`y` must have as many samples as `x` (chance accuracy 1/2), got {y.shape[0]} and {x.shape[0]}; "
            "subsample the larger one."
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same event size, got {x.shape[1]} and {y.shape[1]}.")
    n = x.shape[0]
    half = n // 2
    kx, ky, kfit = jax.random.split(key, 3)
    x, y = jax.random.permutation(kx, x), jax.random.permutation(ky, y)
    clf = fit_classifier(kfit, x[:half], y[:half], steps=steps, depth=depth, width=width, learning_rate=learning_rate)
    correct = jnp.sum(clf.logit(x[half:]) < 0) + jnp.sum(clf.logit(y[half:]) > 0)
    n_test = 2 * (n - half)
    return ClassifierTestResult(correct / n_test, _binomial_sf_half(correct, n_test), clf, correct, n_test)


# ------------------------------------------------------------------------------------------------ importance weighting


class ImportanceWeights(NamedTuple):
    """Importance weights at the source points: ``weights = p_t/p_s``, ``log_weights``, the self-normalised
    ``normalized = w / Σ w`` and the effective sample size ``ess = (Σ w)² / Σ w²`` (between 1 and ``n``)."""

    weights: Float[Array, " n"]
    log_weights: Float[Array, " n"]
    normalized: Float[Array, " n"]
    ess: Float[Array, ""]


def _log_odds(classifier, x):
    if isinstance(classifier, ShiftClassifier):
        return classifier.logit(x)
    c = jnp.asarray(classifier(x))
    return jnp.log(c) - jnp.log1p(-c)


def _class_ratio(classifier, n_source, n_target):
    if n_source is None and n_target is None and isinstance(classifier, ShiftClassifier):
        n_source, n_target = classifier.n_source, classifier.n_target
    n_source = 1 if n_source is None else _positive_int(n_source, "n_source")
    n_target = 1 if n_target is None else _positive_int(n_target, "n_target")
    return math.log(n_source / n_target)


def density_ratio_weights(
    x: Float[ArrayLike, "n ..."],
    *,
    log_p_target: Callable | None = None,
    log_p_source: Callable | None = None,
    classifier: Callable | None = None,
    n_source: int | None = None,
    n_target: int | None = None,
) -> ImportanceWeights:
    """Importance weights ``w(x) = p_target(x) / p_source(x)`` at the source points ``x``.

    Either from known log-densities, ``log w = log_p_target(x) − log_p_source(x)``, or from a probabilistic classifier
    ``c(x) = P(target | x)``, ``log w = logit c(x) + log(n_s / n_t)`` (a :class:`ShiftClassifier` carries its training
    counts; for another callable returning probabilities pass ``n_source`` and ``n_target``, default equal).

    Args:
        x: source points ``(n, ...)``; each callable gets the whole batch ``x`` as given and returns ``(n,)``.
        log_p_target, log_p_source: log-densities (both or neither).
        classifier: ``P(target | x)`` (exclusive with the log-densities).
        n_source, n_target: the classifier's training class counts.

    Raises:
        ValueError: neither or both ways given, a missing log-density, a callable returning the wrong shape.
    """
    arr = as_float_array(x, "x")
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(f"`x` must have a leading sample axis, got shape {arr.shape}.")
    n = arr.shape[0]
    have_densities = log_p_target is not None or log_p_source is not None
    if have_densities == (classifier is not None):
        raise ValueError("Pass either `log_p_target` and `log_p_source`, or `classifier` (exactly one way).")
    if have_densities:
        if log_p_target is None or log_p_source is None:
            raise ValueError("`log_p_target` and `log_p_source` must both be given.")
        log_w = jnp.asarray(log_p_target(arr)) - jnp.asarray(log_p_source(arr))
    else:
        log_w = _log_odds(classifier, arr) + _class_ratio(classifier, n_source, n_target)
    if log_w.shape != (n,):
        raise ValueError(f"the density callables / `classifier` must return shape ({n},), got {log_w.shape}.")
    normalized = jax.nn.softmax(log_w)
    return ImportanceWeights(jnp.exp(log_w), log_w, normalized, 1.0 / jnp.sum(normalized**2))


class SupportReport(NamedTuple):
    """Result of :func:`support_check`: ``flagged[i]`` when target point ``points[i]`` is (numerically) outside the
    source's support, by the criterion ``score`` (``c(x)``, ``log w`` or ``log p_source``) against ``threshold``."""

    flagged: Bool[Array, " n"]
    score: Float[Array, " n"]
    threshold: float
    points: Float[Array, "n d"]

    @property
    def count(self) -> int:
        return int(jnp.sum(self.flagged))


def support_check(
    target: Float[ArrayLike, "n ..."],
    *,
    classifier: Callable | None = None,
    eps: float = 1e-3,
    log_weights: Callable | None = None,
    ratio_cap: float | None = None,
    log_p_source: Callable | None = None,
    density_floor: float | None = None,
) -> SupportReport:
    """Flag target points where the source has negligible mass (absolute continuity ``p_t ≪ p_s`` fails there).

    Exactly one criterion:

    - ``classifier``: ``c(x) = P(target | x) > 1 − eps`` (the classifier is all but certain no source point lies
      there);
    - ``log_weights`` (a callable ``x → log w(x)``) with ``ratio_cap``: ``w(x) > ratio_cap``;
    - ``log_p_source`` (a known or estimated source log-density) with ``density_floor``: ``p_s(x) < density_floor``.

    Args:
        target: target points ``(n, ...)``; each callable gets the whole batch as given and returns ``(n,)``.

    Raises:
        ValueError: not exactly one criterion, a threshold out of range, a callable returning the wrong shape.
    """
    arr = as_float_array(target, "target")
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(f"`target` must have a leading sample axis, got shape {arr.shape}.")
    n = arr.shape[0]
    chosen = [classifier is not None, log_weights is not None, log_p_source is not None]
    if sum(chosen) != 1:
        raise ValueError("Pass exactly one of `classifier`, `log_weights` (with `ratio_cap`) or `log_p_source`.")
    if classifier is not None:
        if not (isinstance(eps, (int, float)) and 0.0 < eps < 1.0):
            raise ValueError(f"`eps` must lie in (0, 1), got {eps!r}.")
        score = jax.nn.sigmoid(_log_odds(classifier, arr)) if isinstance(classifier, ShiftClassifier) else None
        score = jnp.asarray(classifier(arr)) if score is None else score
        threshold = 1.0 - float(eps)
        flagged = score > threshold
    elif log_weights is not None:
        if not (isinstance(ratio_cap, (int, float)) and ratio_cap > 0):
            raise ValueError(f"`ratio_cap` must be a positive number with `log_weights`, got {ratio_cap!r}.")
        score = jnp.asarray(log_weights(arr))
        threshold = math.log(ratio_cap)
        flagged = score > threshold
    else:
        if not (isinstance(density_floor, (int, float)) and density_floor > 0):
            raise ValueError(f"`density_floor` must be a positive number with `log_p_source`, got {density_floor!r}.")
        score = jnp.asarray(log_p_source(arr))
        threshold = math.log(density_floor)
        flagged = score < threshold
    if score.shape != (n,):
        raise ValueError(f"the criterion callable must return shape ({n},), got {score.shape}.")
    return SupportReport(flagged, score, threshold, arr.reshape(n, -1))


def importance_weighted_mean(
    values: ArrayLike,
    weights: ArrayLike,
    *,
    support: SupportReport | None = None,
    refuse: bool = True,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Self-normalised importance-sampling estimate of ``E_target[f]`` from source values ``f(x_i)`` and weights
    ``w_i``: ``μ̂ = Σ w̃_i f_i`` with the delta-method standard error ``√(Σ w̃_i² (f_i − μ̂)²)``.

    Args:
        values: ``f(x_i)`` at the source points.
        weights: ``w(x_i) ≥ 0`` (e.g. :func:`density_ratio_weights`'s ``weights``), not all zero.
        support: a :func:`support_check` of the target points; with ``refuse=True`` any flagged point raises.
        refuse: raise instead of estimating when ``support`` flags points.

    Returns:
        ``(estimate, standard_error)``.

    Raises:
        ValueError: mismatched shapes, negative / non-finite / all-zero weights, or (``refuse``) target points
            outside the source's support — the message gives their count and where they are.
    """
    values = as_float_array(values, "values", ndim=1)
    weights = as_float_array(weights, "weights", ndim=1)
    if values.shape != weights.shape:
        raise ValueError(f"`weights` must match `values`' shape {values.shape}, got {weights.shape}.")
    if is_concrete(weights):
        w = np.asarray(weights)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError("`weights` must be finite, non-negative and not all zero.")
    if support is not None and refuse:
        flagged = np.asarray(support.flagged)
        k = int(flagged.sum())
        if k:
            idx = np.nonzero(flagged)[0]
            pts = np.asarray(support.points)[idx[:5]]
            raise ValueError(
                f"importance_weighted_mean: {k} of {flagged.size} target points lie where the source has negligible "
                f"mass (`support` flags them; indices {idx[:5].tolist()}{' …' if k > 5 else ''} at "
                f"{np.array2string(pts.squeeze(-1) if pts.shape[-1] == 1 else pts, precision=3)}). The density "
                "ratio p_target/p_source is unbounded there, so no reweighting of source data estimates the target "
                "mean; collect source data covering those points or restrict the target (or pass refuse=False)."
            )
    wn = weights / jnp.sum(weights)
    est = jnp.sum(wn * values)
    return est, jnp.sqrt(jnp.sum(wn**2 * (values - est) ** 2))


# ---------------------------------------------------------------------------------------------------------- tail risk


def _var_index(losses_sorted, alpha, weights):
    n = losses_sorted.shape[0]
    q = 1.0 - alpha
    if weights is None:
        return int(np.clip(np.ceil(n * q - 1.0), 0, n - 1))  # NumPy's "inverted_cdf" arithmetic
    cum = jnp.cumsum(weights) / jnp.sum(weights)
    return jnp.clip(jnp.searchsorted(cum, q, side="left"), 0, n - 1)


def _prepare(losses, weights):
    losses = as_float_array(losses, "losses", ndim=1)
    if losses.shape[0] < 1:
        raise ValueError("`losses` must not be empty.")
    order = jnp.argsort(losses)
    if weights is None:
        return losses[order], None, losses
    w = as_float_array(weights, "weights", ndim=1)
    if w.shape != losses.shape:
        raise ValueError(f"`weights` must match `losses`' shape {losses.shape}, got {w.shape}.")
    if is_concrete(w):
        wn = np.asarray(w)
        if not np.all(np.isfinite(wn)) or np.any(wn < 0) or not np.any(wn > 0):
            raise ValueError("`weights` must be finite, non-negative and not all zero.")
    return losses[order], w[order], losses


def var(losses: ArrayLike, alpha: float, weights: ArrayLike | None = None) -> Float[Array, ""]:
    """Value at risk ``VaR_α``: the lower ``(1 − α)``-quantile of the (weighted) empirical loss law — the smallest
    sorted loss whose cumulative normalised weight reaches ``1 − α``. Unweighted it equals
    ``np.quantile(losses, 1 − alpha, method="inverted_cdf")``.

    Raises:
        ValueError: ``alpha`` not a concrete scalar in (0, 1], ``losses`` not a non-empty vector, bad ``weights``.
    """
    alpha = _alpha(alpha)
    srt, w, _ = _prepare(losses, weights)
    return srt[_var_index(srt, alpha, w)]


def cvar(losses: ArrayLike, alpha: float, weights: ArrayLike | None = None) -> Float[Array, ""]:
    """Conditional value at risk ``CVaR_α = VaR_α + E[(L − VaR_α)_+] / α`` (Rockafellar–Uryasev) over the
    (optionally importance-weighted, self-normalised) empirical law: the mean of the worst ``α`` fraction of the
    losses (large = bad). ``alpha = 1`` gives the mean. See :func:`var` for the quantile convention.

    Raises:
        ValueError: as :func:`var`.
    """
    alpha = _alpha(alpha)
    srt, w, _ = _prepare(losses, weights)
    v = srt[_var_index(srt, alpha, w)]
    excess = jnp.maximum(srt - v, 0.0)
    mean_excess = jnp.mean(excess) if w is None else jnp.sum(w * excess) / jnp.sum(w)
    return v + mean_excess / alpha


class TailRisk(NamedTuple):
    """``VaR_α``, ``CVaR_α`` and the CVaR's standard error ``sd(VaR + (L − VaR)_+/α) / √n``, with the ``losses``."""

    var: Float[Array, ""]
    cvar: Float[Array, ""]
    standard_error: Float[Array, ""]
    losses: Float[Array, " n"]


def twin_cvar(key: Key, sample_fn: Callable, loss_fn: Callable, alpha: float, n: int) -> TailRisk:
    """CVaR of a loss under the twin's own law: draw ``sample_fn(key, n)`` (a batch ``(n, ...)``, or any pytree of
    arrays with leading axis ``n``), map ``loss_fn`` over the samples (one sample → a scalar loss), then
    :func:`var` / :func:`cvar`.

    Raises:
        ValueError: ``n < 2``, ``alpha`` out of (0, 1], or ``loss_fn`` not returning one scalar per sample.
    """
    alpha = _alpha(alpha)
    n = _positive_int(n, "n")
    if n < 2:
        raise ValueError(f"`n` must be at least 2, got {n}.")
    samples = sample_fn(key, n)
    losses = jnp.asarray(jax.vmap(loss_fn)(samples))
    if losses.shape != (n,):
        raise ValueError(f"`loss_fn` must return a scalar per sample (losses of shape ({n},)), got {losses.shape}.")
    v, c = var(losses, alpha), cvar(losses, alpha)
    h = v + jnp.maximum(losses - v, 0.0) / alpha
    return TailRisk(v, c, jnp.std(h, ddof=1) / jnp.sqrt(n), losses)
