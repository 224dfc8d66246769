r"""Transporting a trial's treatment effect to a target population: reweighting, positivity and a subgroup audit.

A (real or virtual) randomised trial in a *source* population gives outcomes ``Y_i``, treatment indicators ``T_i``
and covariates ``X_i ~ p_s``. The question is the average treatment effect in a *target* population with covariates
``X ~ p_t``. If the conditional effect ``τ(x) = E[Y | T=1, x] − E[Y | T=0, x]`` is the same in both populations
(*transportability*: no effect modifier outside ``X`` differs), then

$$ \tau_t = \mathbb{E}_t[\tau(X)] = \frac{\mathbb{E}_s[w(X)\, Y\, T] }{ \mathbb{E}_s[w(X)\, T] }
   - \frac{\mathbb{E}_s[w(X)\, Y\, (1-T)] }{ \mathbb{E}_s[w(X)\, (1-T)] },
   \qquad w = p_t / p_s, $$

under randomisation (``T ⫫ X`` in the source), estimated by the self-normalised weighted difference of arm means with
the delta-method standard error (:func:`transported_effect`). The weights come from known densities or a classifier
density ratio (:func:`transport_weights`, via :func:`twinjax.risk.shift.density_ratio_weights`).

**Positivity.** The identity needs ``p_s(x) > 0`` wherever ``p_t(x) > 0``. Where the source has no patients
(e.g. an exclusion criterion: no severe renal impairment in the trial), no weighting recovers the target: the weights
are unbounded there and the estimate silently ignores that part of the target. :func:`positivity_check` flags
*strata* (cells of binned covariates, :func:`strata_from_bins`) with fewer than ``min_count`` source patients or an
effective sample size of the weights below ``min_ess``, and, given a classifier ``c(x) = P(target | x)``, the target
points with ``c(x) > 1 − ε``. :func:`transported_effect` then either refuses (``ValueError`` naming the strata) or,
with ``on_unsupported="restrict"``, estimates the effect in the supported part of the target only and reports the
fraction of the target it covers. :func:`subgroup_audit` gives, per stratum, the source and target counts, the ESS,
the transported effect with its confidence interval, and whether it is supported (unsupported: no estimate).

References:
    E. Stuart, S. Cole, C. Bradshaw, P. Leaf, "The use of propensity scores to assess the generalizability of results
    from randomized trials", J. R. Stat. Soc. A 174(2), 2011. I. Dahabreh, S. Robertson, E. Tchetgen Tchetgen,
    E. Stuart, M. Hernán, "Generalizing causal inferences from individuals in randomized trials to all
    trial-eligible individuals", Biometrics 75(2), 2019. E. Bareinboim, J. Pearl, "Causal inference and the
    data-fusion problem", PNAS 113(27), 2016 (transportability). M. Petersen et al., "Diagnosing and responding to
    violations in the positivity assumption", Stat. Methods Med. Res. 21(1), 2012.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from scipy import stats

from .._checks import as_float_array
from .._types import Array, ArrayLike, Bool, Float, Int, Key
from ..risk.shift import ImportanceWeights, ShiftClassifier, density_ratio_weights, fit_classifier, support_check

__all__ = [
    "PositivityReport",
    "TransportedEffect",
    "positivity_check",
    "strata_from_bins",
    "subgroup_audit",
    "transport_weights",
    "transported_effect",
]


# ------------------------------------------------------------------------------------------------------------ helpers


def _covariates(x, name: str) -> np.ndarray:
    arr = np.asarray(as_float_array(x, name))
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"`{name}` must have shape (n, d) or (n,) with n >= 1, got {arr.shape}.")
    return arr


def _labels(labels, name: str, n_strata: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`{name}` must be a 1-D integer array of stratum labels, got {arr.dtype} {arr.shape}.")
    if arr.size and (arr.min() < 0 or arr.max() >= n_strata):
        raise ValueError(f"`{name}` must lie in [0, {n_strata}), got range [{arr.min()}, {arr.max()}].")
    return arr


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _clusters(clusters, n: int) -> np.ndarray:
    if clusters is None:
        return np.arange(n)
    c = np.asarray(clusters)
    if c.shape != (n,) or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"`clusters` must be an integer array of shape ({n},), got {c.dtype} {c.shape}.")
    return np.unique(c, return_inverse=True)[1].ravel()


def _weighted_difference(y, t, w, c):
    """Weighted difference of arm means, its cluster-robust (sandwich) variance and the smaller arm's ESS.

    The linearisation of ``μ̂_a = Σ_{i∈a} w_i y_i / Σ_{i∈a} w_i`` is ``Σ_{i∈a} w̃_i (y_i − μ̂_a)``; a cluster's
    contributions to the difference are summed before squaring, so patients sharing a cluster (virtual patients drawn
    at one source patient's covariates) count as one unit. With singleton clusters the variance is ``v_1 + v_0``,
    ``v_a = Σ_{i∈a} w̃_i² (y_i − μ̂_a)²``. ``None`` if an arm is empty or carries no weight.
    """
    infl = np.zeros(y.size)
    means, ess = [], []
    for arm, sign in ((True, 1.0), (False, -1.0)):
        m = t == arm
        total = w[m].sum()
        if not m.any() or total <= 0:
            return None
        wn = w[m] / total
        mu = float(np.sum(wn * y[m]))
        infl[m] = sign * wn * (y[m] - mu)
        means.append(mu)
        ess.append(float(1.0 / np.sum(wn**2)))
    var = float(np.sum(np.bincount(c, weights=infl) ** 2))
    return means[0] - means[1], var, min(ess)


def _z(level: float) -> float:
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"`level` must be a float in (0, 1), got {level!r}.")
    return float(stats.norm.ppf(0.5 + level / 2.0))


# ------------------------------------------------------------------------------------------------------------ strata


def strata_from_bins(
    covariates: Float[ArrayLike, "n ..."], edges: Sequence[Sequence[float]]
) -> tuple[Int[Array, " n"], int]:
    """Stratum labels of the cells of a grid of binned covariates.

    Covariate ``j`` is cut at the increasing ``edges[j]`` into ``len(edges[j]) + 1`` bins (``(-∞, e_0), [e_0, e_1),
    …, [e_last, ∞)``); the label is the row-major index of the cell, ``Σ_j b_j Π_{k>j} (len(edges[k]) + 1)``.

    Arguments:
        covariates: ``(n, d)`` (or ``(n,)`` for ``d = 1``).
        edges: one increasing sequence of cut points per covariate (may be empty: one bin).

    Returns:
        ``(labels, n_strata)``: integer labels ``(n,)`` in ``[0, n_strata)``.

    Raises:
        ValueError: ``len(edges) != d`` or edges not strictly increasing.
    """
    x = _covariates(covariates, "covariates")
    if len(edges) != x.shape[1]:
        raise ValueError(f"`edges` must give one sequence per covariate ({x.shape[1]}), got {len(edges)}.")
    labels = np.zeros(x.shape[0], np.int64)
    n_strata = 1
    for j, e in enumerate(edges):
        e = np.asarray(e, float)
        if e.ndim != 1 or np.any(np.diff(e) <= 0):
            raise ValueError(f"`edges[{j}]` must be a strictly increasing 1-D sequence, got {e}.")
        labels = labels * (e.size + 1) + np.searchsorted(e, x[:, j], side="right")
        n_strata *= e.size + 1
    return jnp.asarray(labels), n_strata


# ----------------------------------------------------------------------------------------------------------- weights


def transport_weights(
    source: Float[ArrayLike, "n ..."],
    *,
    target: Float[ArrayLike, "m ..."] | None = None,
    key: Key | None = None,
    log_p_source: Callable | None = None,
    log_p_target: Callable | None = None,
    steps: int = 500,
    depth: int = 0,
    width: int = 32,
    learning_rate: float = 0.05,
) -> tuple[ImportanceWeights, ShiftClassifier | None]:
    """Weights ``w(x_i) = p_t(x_i) / p_s(x_i)`` at the source covariates, from known log-densities or a classifier.

    With ``log_p_source`` and ``log_p_target`` the ratio is exact; otherwise a classifier ``c(x) = P(target | x)``
    (:class:`~twinjax.risk.shift.ShiftClassifier`) is fitted on ``source`` vs ``target``
    (:func:`~twinjax.risk.shift.fit_classifier`; logistic regression at ``depth=0``), ``w = (n_s/n_t) c/(1 − c)``.

    Returns:
        ``(weights, classifier)`` (``classifier`` is ``None`` with known densities; pass it to
        :func:`positivity_check`).

    Raises:
        ValueError: neither or both ways given, or a classifier requested without ``target`` or ``key``.
    """
    x = _covariates(source, "source")
    if log_p_source is not None or log_p_target is not None:
        if target is not None:
            raise ValueError("Pass either the log-densities or `target` (for a classifier), not both.")
        return density_ratio_weights(x, log_p_target=log_p_target, log_p_source=log_p_source), None
    if target is None or key is None:
        raise ValueError("Without known log-densities, `target` covariates and a `key` are needed to fit a classifier.")
    tx = _covariates(target, "target")
    if tx.shape[1] != x.shape[1]:
        raise ValueError(f"`target` must have {x.shape[1]} covariates like `source`, got {tx.shape[1]}.")
    clf = fit_classifier(key, x, tx, steps=steps, depth=depth, width=width, learning_rate=learning_rate)
    return density_ratio_weights(x, classifier=clf), clf


# -------------------------------------------------------------------------------------------------------- positivity


class PositivityReport(NamedTuple):
    """Result of :func:`positivity_check`.

    Attributes:
        n_source, n_target: patients per stratum ``(n_strata,)``.
        ess: effective sample size ``(Σ w)² / Σ w²`` of the source weights in each stratum (0 where empty).
        supported: ``n_source ≥ min_count`` and ``ess ≥ min_ess`` per stratum.
        target_flagged: per target point, in an unsupported stratum or (with a classifier) ``c(x) > 1 − ε``.
        unsupported_fraction: fraction of the target in unsupported strata or flagged.
    """

    n_source: Int[Array, " strata"]
    n_target: Int[Array, " strata"]
    ess: Float[Array, " strata"]
    supported: Bool[Array, " strata"]
    target_flagged: Bool[Array, " m"]
    unsupported_fraction: float


def positivity_check(
    source_strata: ArrayLike,
    target_strata: ArrayLike,
    n_strata: int,
    *,
    weights: Float[ArrayLike, " n"] | None = None,
    min_count: int = 20,
    min_ess: float = 10.0,
    target: Float[ArrayLike, "m ..."] | None = None,
    classifier: Callable | None = None,
    eps: float = 1e-3,
) -> PositivityReport:
    """Flag target strata (and points) without source support.

    A stratum is *supported* when it holds at least ``min_count`` source patients and, with ``weights``, the
    effective sample size of the source weights inside it is at least ``min_ess`` (a handful of huge weights is no
    support). With ``target`` covariates and a ``classifier`` (``P(target | x)``), target points where
    ``c(x) > 1 − eps`` are also flagged (:func:`twinjax.risk.shift.support_check`).

    Arguments:
        source_strata, target_strata: integer stratum labels (e.g. from :func:`strata_from_bins`).
        n_strata: number of strata.
        weights: source importance weights (default all 1: only counts are checked).
        min_count: the least number of source patients in a supported stratum.
        min_ess: the least ESS of the weights in a supported stratum.
        target, classifier, eps: the optional point-wise check.

    Raises:
        ValueError: bad labels, thresholds or shapes.
    """
    n_strata = _positive_int(n_strata, "n_strata")
    s = _labels(source_strata, "source_strata", n_strata)
    t = _labels(target_strata, "target_strata", n_strata)
    min_count = _positive_int(min_count, "min_count")
    if not (isinstance(min_ess, (int, float)) and min_ess >= 1):
        raise ValueError(f"`min_ess` must be a number >= 1, got {min_ess!r}.")
    w = np.ones(s.size) if weights is None else np.asarray(as_float_array(weights, "weights", ndim=1), float)
    if w.shape != s.shape:
        raise ValueError(f"`weights` must match `source_strata`' shape {s.shape}, got {w.shape}.")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("`weights` must be finite and non-negative.")
    n_source = np.bincount(s, minlength=n_strata)
    n_target = np.bincount(t, minlength=n_strata)
    sw = np.bincount(s, weights=w, minlength=n_strata)
    sw2 = np.bincount(s, weights=w**2, minlength=n_strata)
    ess = np.where(sw2 > 0, sw**2 / np.where(sw2 > 0, sw2, 1.0), 0.0)
    supported = (n_source >= min_count) & (ess >= min_ess)
    flagged = ~supported[t]
    if classifier is not None:
        if target is None:
            raise ValueError("`target` covariates are needed with `classifier`.")
        tx = _covariates(target, "target")
        if tx.shape[0] != t.size:
            raise ValueError(f"`target` must have {t.size} rows like `target_strata`, got {tx.shape[0]}.")
        flagged = flagged | np.asarray(support_check(tx, classifier=classifier, eps=eps).flagged)
    frac = float(flagged.mean()) if flagged.size else 0.0
    arrays = (jnp.asarray(a) for a in (n_source, n_target, ess, supported, flagged))
    return PositivityReport(*arrays, frac)


# --------------------------------------------------------------------------------------------------------- estimates


class TransportedEffect(NamedTuple):
    """Result of :func:`transported_effect`: the effect ``estimate`` in the (supported part of the) target, its
    delta-method ``standard_error``, the weights' ``ess`` (smaller arm), the fraction of the target ``coverage`` the
    estimate speaks for, and the ``excluded`` (unsupported) strata."""

    estimate: float
    standard_error: float
    ess: float
    coverage: float
    excluded: tuple[int, ...]


def transported_effect(
    outcome: Float[ArrayLike, " n"],
    treated: ArrayLike,
    weights: Float[ArrayLike, " n"],
    *,
    report: PositivityReport | None = None,
    source_strata: ArrayLike | None = None,
    target_strata: ArrayLike | None = None,
    on_unsupported: str = "raise",
    clusters: ArrayLike | None = None,
) -> TransportedEffect:
    """The transported average treatment effect ``τ̂_t`` (module docstring): the difference of the self-normalised
    weighted arm means, with standard error ``√(v_1 + v_0)``, ``v_a = Σ_{i∈a} w̃_i² (Y_i − μ̂_a)²``.

    With a positivity ``report`` and the stratum labels, unsupported strata either raise (``on_unsupported="raise"``)
    or are removed from both the source and the target (``"restrict"``: the estimate is then the effect in the
    supported part of the target, whose share of the target is ``coverage``). Removing source patients of a stratum
    is exact for the restricted target: ``w ∝ p_t/p_s`` and the restriction is a function of ``x``.

    ``clusters`` (integer ids, e.g. the source patient whose covariates a virtual patient shares) makes the standard
    error cluster-robust: contributions are summed per cluster before squaring, so resampled covariates are not
    counted as independent information.

    Raises:
        ValueError: mismatched shapes, bad weights, an empty arm, unsupported strata with ``on_unsupported="raise"``
            (the message names the strata and the share of the target in them), or a ``report`` without labels.
    """
    y = np.asarray(as_float_array(outcome, "outcome", ndim=1), float)
    t = np.asarray(treated)
    w = np.asarray(as_float_array(weights, "weights", ndim=1), float)
    if t.dtype != bool or t.shape != y.shape or w.shape != y.shape:
        raise ValueError(
            f"`treated` must be a boolean array and `weights` floats, both of `outcome`'s shape {y.shape}; got "
            f"{t.dtype} {t.shape} and {w.shape}."
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("`weights` must be finite and non-negative.")
    if on_unsupported not in ("raise", "restrict"):
        raise ValueError(f"`on_unsupported` must be 'raise' or 'restrict', got {on_unsupported!r}.")
    keep = np.ones(y.size, bool)
    coverage, excluded = 1.0, ()
    if report is not None:
        if source_strata is None or target_strata is None:
            raise ValueError("`source_strata` and `target_strata` are needed with `report`.")
        n_strata = int(report.supported.shape[0])
        s = _labels(source_strata, "source_strata", n_strata)
        ts = _labels(target_strata, "target_strata", n_strata)
        if s.shape != y.shape:
            raise ValueError(f"`source_strata` must match `outcome`'s shape {y.shape}, got {s.shape}.")
        supported = np.asarray(report.supported)
        bad = np.nonzero(~supported & (np.bincount(ts, minlength=n_strata) > 0))[0]
        share = float(np.mean(~supported[ts])) if ts.size else 0.0
        if bad.size and on_unsupported == "raise":
            raise ValueError(
                f"transported_effect: target strata {bad.tolist()} ({100 * share:.1f} % of the target) have no or "
                "negligible source support (positivity fails: too few source patients or too small an ESS), so no "
                "reweighting of the source estimates the effect there. Collect data there, restrict the target "
                "(on_unsupported='restrict'), or report those strata as unsupported (subgroup_audit)."
            )
        keep = supported[s]
        coverage, excluded = 1.0 - share, tuple(int(b) for b in bad)
    c = _clusters(clusters, y.size)
    res = _weighted_difference(y[keep], t[keep], w[keep], np.unique(c[keep], return_inverse=True)[1].ravel())
    if res is None:
        raise ValueError("Both arms need source patients with positive weight (in the supported strata).")
    est, var, ess = res
    return TransportedEffect(est, float(np.sqrt(var)), ess, coverage, excluded)


def subgroup_audit(
    outcome: Float[ArrayLike, " n"],
    treated: ArrayLike,
    weights: Float[ArrayLike, " n"],
    report: PositivityReport,
    source_strata: ArrayLike,
    *,
    names: Sequence[str] | None = None,
    truth: Float[ArrayLike, " strata"] | None = None,
    level: float = 0.95,
    clusters: ArrayLike | None = None,
) -> list[dict]:
    """Per-stratum audit of a transported treatment effect.

    Inside stratum ``g`` the target's conditional effect is estimated with the weights restricted to the source
    patients of ``g`` (``E_t[τ(X) | g] = E_s[w τ | g] / E_s[w | g]``), by the same weighted difference of arm means as
    :func:`transported_effect` (cluster-robust with ``clusters``), with a normal ``level`` confidence interval.
    Unsupported strata (``report``) get no estimate (``None``): the table shows *that* the target has patients there
    and the source does not.

    Returns:
        One dict per stratum: ``stratum``, ``name``, ``n_source``, ``n_target``, ``target_share``, ``ess``,
        ``supported``, ``estimate``, ``standard_error``, ``ci_low``, ``ci_high`` and, with ``truth``, ``truth`` and
        ``covered`` (truth inside the interval).

    Raises:
        ValueError: mismatched shapes, bad ``names``/``truth``/``level``.
    """
    z = _z(level)
    n_strata = int(report.supported.shape[0])
    s = _labels(source_strata, "source_strata", n_strata)
    y = np.asarray(as_float_array(outcome, "outcome", ndim=1), float)
    t = np.asarray(treated)
    w = np.asarray(as_float_array(weights, "weights", ndim=1), float)
    if not (s.shape == y.shape == t.shape == w.shape) or t.dtype != bool:
        raise ValueError("`outcome`, `treated` (bool), `weights` and `source_strata` must share one shape (n,).")
    names = [f"stratum {g}" for g in range(n_strata)] if names is None else list(names)
    if len(names) != n_strata:
        raise ValueError(f"`names` must have {n_strata} entries, got {len(names)}.")
    if truth is not None:
        truth = np.asarray(truth, float)
        if truth.shape != (n_strata,):
            raise ValueError(f"`truth` must have shape ({n_strata},), got {truth.shape}.")
    n_target = np.asarray(report.n_target)
    c = _clusters(clusters, y.size)
    rows = []
    for g in range(n_strata):
        row = {
            "stratum": g,
            "name": names[g],
            "n_source": int(report.n_source[g]),
            "n_target": int(n_target[g]),
            "target_share": float(n_target[g] / max(n_target.sum(), 1)),
            "ess": float(report.ess[g]),
            "supported": bool(report.supported[g]),
            "estimate": None,
            "standard_error": None,
            "ci_low": None,
            "ci_high": None,
        }
        m = s == g
        arms = _weighted_difference(y[m], t[m], w[m], np.unique(c[m], return_inverse=True)[1].ravel())
        arms = arms if row["supported"] else None
        if arms is not None:
            est, se = arms[0], float(np.sqrt(arms[1]))
            row.update(estimate=est, standard_error=se, ci_low=est - z * se, ci_high=est + z * se)
        if truth is not None:
            row["truth"] = float(truth[g])
            row["covered"] = None if arms is None else bool(row["ci_low"] <= truth[g] <= row["ci_high"])
        rows.append(row)
    return rows
