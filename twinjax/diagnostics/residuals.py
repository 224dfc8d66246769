r"""Residual diagnostics on filter innovations: the χ² (NIS) test, CUSUM tuned for an in-control average run length,
and parameter-drift detection from an online parameter estimate.

A Gaussian filter on a correct twin produces innovations ``e_k = y_k - ŷ_k`` that are independent with
``e_k ~ N(0, S_k)`` (the predictive of the sensor reading; exactly so for a linear-Gaussian twin and the Kalman
filter, approximately for EKF/UKF). Every filter result of :mod:`twinjax.inference` stores them per step
(``result.innovations``: residual, covariance ``S`` with the identity in place of missing channels, observed mask).

**NIS (χ² test).** The normalised innovation squared over the ``d_k`` observed channels,

$$ \epsilon_k = e_k^\top S_k^{-1} e_k \sim \chi^2_{d_k}, \qquad
   \bar\epsilon_k^{(w)} = \sum_{j=k-w+1}^{k} \epsilon_j \sim \chi^2_{\sum_j d_j}, $$

is tested at level ``α`` against the χ² ``(1 - α)`` quantile (:func:`chi2_quantile`, bisection on the regularised
incomplete gamma function, so any per-step ``d_k`` works).

**CUSUM.** Page's one-sided CUSUM on increments ``s_k``, ``g_k = max(0, g_{k-1} + s_k)``, raises an alarm when
``g_k > h`` and restarts from 0. :func:`mean_cusum` runs it on the whitened innovations ``z_k = L_k^{-1} e_k``
(``S_k = L_k L_kᵀ``, i.i.d. ``N(0, I)`` in control) with ``s = ±z - δ/2``, per channel and side, for a mean shift of
``δ`` standard deviations; :func:`nis_cusum` runs it on ``s_k = ε_k - κ d_k`` with ``κ = λ ln λ / (λ - 1)``, the
log-likelihood ratio (up to a factor) of ``S → λ S`` (a variance increase). Missing channels contribute nothing.

**ARL calibration.** The threshold ``h`` is set for an in-control average run length ``ARL₀`` (the mean number of
steps between false alarms). For the Gaussian mean-shift CUSUM, Siegmund's approximation of the one-sided ARL with
reference ``k`` and true mean ``μ`` (``Δ = μ - k``, ``b = h + 1.166``),

$$ \mathrm{ARL}(h) \approx \frac{e^{-2\Delta b} + 2\Delta b - 1}{2\Delta^2}, $$

is inverted by :func:`siegmund_threshold`; ``m`` one-sided CUSUMs raced against each other (two sides, several
channels) have ``1/ARL ≈ Σ 1/ARL_i``, so each is tuned to ``m · ARL₀``. For any other statistic,
:func:`calibrate_cusum` bisects on ``h`` so that simulated in-control increments (many long runs, one vmapped
``lax.scan``) give ``ARL₀`` by the renewal estimate ``steps / alarms``; :func:`run_lengths` measures ARL with its
standard error.

**Parameter drift.** :func:`augment_parameter` turns a twin into one whose state carries a parameter ``θ`` as a
random walk (``θ_{k+1} = θ_k + η_k``); any Gaussian filter (e.g. the EKF) on it gives an online estimate
``N(θ̂_k, P_k)``. :func:`drift_test` flags ``|θ̂_k - θ₀| / √P_k > z*``; with ``z* = Φ⁻¹(1 - α / (2 T))``
(:func:`drift_threshold`) the probability of any false alarm over ``T`` steps is at most ``α`` by the union bound,
whatever the autocorrelation of the estimates.

References:
    Chapter ``000_…``, "Diagnostics and Anomaly Detection" (thresholds with a controlled false-alarm rate).
    Y. Bar-Shalom, X. R. Li, T. Kirubarajan, *Estimation with Applications to Tracking and Navigation* (2001), §5.4
    (NIS consistency tests).
    E. S. Page, "Continuous inspection schemes", *Biometrika* 41 (1954).
    D. Siegmund, *Sequential Analysis* (1985), §X.2 (the ARL approximation).
    M. Basseville, I. Nikiforov, *Detection of Abrupt Changes* (1993), §2.2, §8.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import gammaincc, ndtri
from jaxtyping import Real

from .._checks import as_float_array, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Int
from ..inference._base import GaussianFilterResult
from ..model.distributions import Gaussian
from ..model.dynamics import AbstractDiscreteDynamics, AbstractDynamics, AbstractSDEDynamics
from ..model.observation import GaussianObservation
from ..model.ssm import StateSpaceModel

SIEGMUND_OFFSET = 1.166  # ≈ 2 × 0.583, the overshoot correction of Siegmund's approximation


# ---------------------------------------------------------------------------------------------------------------------
# argument checks


def _probability(alpha, name: str) -> None:
    if is_concrete(alpha) and not np.all((np.asarray(alpha) > 0) & (np.asarray(alpha) < 1)):
        raise ValueError(f"`{name}` must lie in (0, 1), got {alpha!r}.")


def _positive(value, name: str) -> None:
    if is_concrete(value) and not np.all(np.asarray(value) > 0):
        raise ValueError(f"`{name}` must be positive, got {value!r}.")


def _innovation_arrays(innovations, covariances, mask):
    e = as_float_array(innovations, "innovations")
    if e.ndim == 1:
        e = e[:, None]
    if e.ndim != 2:
        raise ValueError(f"`innovations` must have shape (time, obs), got {tuple(e.shape)}.")
    S = as_float_array(covariances, "covariances")
    if S.ndim == 1 and e.shape[1] == 1:
        S = S[:, None, None]
    if S.shape != (*e.shape, e.shape[1]):
        raise ValueError(f"`covariances` must have shape {(*e.shape, e.shape[1])} (time, obs, obs), got {S.shape}.")
    if mask is None:
        mask = ~jnp.isnan(e)
    else:
        mask = jnp.asarray(mask)
        if mask.ndim == 1 and e.shape[1] == 1:
            mask = mask[:, None]
        if mask.shape != e.shape or mask.dtype != jnp.bool_:
            raise ValueError(f"`mask` must be a boolean array of shape {e.shape}, got {mask.dtype}{mask.shape}.")
        mask = mask & ~jnp.isnan(e)
    return e, S, mask


# ---------------------------------------------------------------------------------------------------------------------
# NIS and the χ² test


@jax.jit
def _whiten(e, S, mask):
    def one(e, S, m):
        both = m[:, None] & m[None, :]
        S_m = jnp.where(both, S, jnp.eye(S.shape[0], dtype=S.dtype))
        chol = jnp.linalg.cholesky(0.5 * (S_m + S_m.T))
        r = jnp.where(m, e, 0.0)
        # missing channels are identity blocks of S_m, so their whitened entries stay exactly 0
        return jax.scipy.linalg.solve_triangular(chol, r, lower=True)

    return jax.vmap(one)(e, S, mask)


def whiten(
    innovations: Float[ArrayLike, "..."],
    covariances: Float[ArrayLike, "..."],
    mask: ArrayLike | None = None,
) -> tuple[Float[Array, "time obs"], Bool[Array, "time obs"]]:
    """Standardised innovations ``z_k = L_k⁻¹ e_k`` (``S_k = L_k L_kᵀ`` over the observed channels).

    In control ``z_k ~ N(0, I)`` i.i.d. over time and observed channels; missing channels are 0.

    Arguments:
        innovations: ``e_k = y_k - ŷ_k``, ``(time, obs)`` (``NaN`` marks a missing channel).
        covariances: their predictive covariances ``S_k``, ``(time, obs, obs)``.
        mask: observed channels, ``(time, obs)`` boolean (default: the non-``NaN`` entries of ``innovations``).

    Returns:
        ``(z, mask)``.

    Raises:
        ValueError: naming ``innovations``, ``covariances`` or ``mask`` for a wrong shape or type.

    Example:
        ```python
        z, mask = whiten(result.innovations.residual, result.innovations.covariance, result.innovations.mask)
        ```
    """
    e, S, mask = _innovation_arrays(innovations, covariances, mask)
    return _whiten(e, S, mask), mask


def nis(
    innovations: Float[ArrayLike, "..."],
    covariances: Float[ArrayLike, "..."],
    mask: ArrayLike | None = None,
) -> tuple[Float[Array, " time"], Int[Array, " time"]]:
    """Normalised innovation squared ``ε_k = e_kᵀ S_k⁻¹ e_k`` over the observed channels, and its degrees of freedom.

    Arguments:
        innovations, covariances, mask: as :func:`whiten`.

    Returns:
        ``(nis, dof)``, both ``(time,)``: ``nis ~ χ²_dof`` in control; ``dof`` is the number of observed channels
        (0 and ``nis = 0`` for a fully missing step).

    Raises:
        ValueError: as :func:`whiten`.

    Example:
        ```python
        eps, dof = nis(result.innovations.residual, result.innovations.covariance, result.innovations.mask)
        alarms = nis_test(eps, dof, alpha=0.01)
        ```
    """
    z, mask = whiten(innovations, covariances, mask)
    return jnp.sum(z**2, axis=-1), jnp.sum(mask, axis=-1).astype(jnp.int32)


def filter_nis(result) -> tuple[Float[Array, " time"], Int[Array, " time"]]:
    """:func:`nis` of the innovations stored in a KF / EKF / UKF result.

    Raises:
        ValueError: if ``result`` is not a :class:`~twinjax.inference.GaussianFilterResult`.

    Example:
        ```python
        eps, dof = filter_nis(kalman_filter(lgssm, ys))
        ```
    """
    if not isinstance(result, GaussianFilterResult):
        raise ValueError(f"`result` must be a GaussianFilterResult (KF, EKF, UKF), got {type(result).__name__}.")
    inn = result.innovations
    return nis(inn.residual, inn.covariance, inn.mask)


def windowed_nis(
    nis: Float[ArrayLike, "..."], dof: Real[ArrayLike, "..."], window: int
) -> tuple[Float[Array, " window_end"], Int[Array, " window_end"]]:
    """Sums of ``nis`` and ``dof`` over the trailing windows of ``window`` steps (``time - window + 1`` of them).

    The sum of independent ``χ²_{d_j}`` is ``χ²_{Σ d_j}``: test it with :func:`nis_test` on the summed ``dof``.

    Raises:
        ValueError: for a ``window`` that is not an integer in ``[1, time]`` or mismatched ``nis`` / ``dof``.

    Example:
        ```python
        eps_w, dof_w = windowed_nis(eps, dof, window=20)
        ```
    """
    nis = as_float_array(nis, "nis", ndim=1)
    dof = jnp.asarray(dof)
    if dof.shape != nis.shape:
        raise ValueError(f"`dof` must have the shape of `nis` {nis.shape}, got {dof.shape}.")
    if not isinstance(window, (int, np.integer)) or not 1 <= window <= nis.shape[0]:
        raise ValueError(f"`window` must be an integer in [1, {nis.shape[0]}], got {window!r}.")

    def sums(x):
        c = jnp.concatenate([jnp.zeros((1,), x.dtype), jnp.cumsum(x)])
        return c[window:] - c[:-window]

    return sums(nis), sums(dof.astype(jnp.int32))


@jax.jit
def _chi2_quantile(q, dof):
    dof = jnp.asarray(dof, q.dtype)
    alpha = 1.0 - q
    ell = -jnp.log(alpha)
    # Laurent & Massart (2000): P(χ²_d ≥ d + 2√(d ℓ) + 2ℓ) ≤ e^{-ℓ}, a guaranteed upper bracket
    hi = dof + 2.0 * jnp.sqrt(dof * ell) + 2.0 * ell + 1.0
    lo = jnp.zeros_like(hi)
    half = jnp.maximum(dof, 1.0) / 2.0

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        # sf(mid) > α: mid is below the quantile. The survival function keeps its precision for small α.
        below = gammaincc(half, mid / 2.0) > alpha
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = lax.fori_loop(0, 200, body, (lo, hi))
    return jnp.where(dof > 0, 0.5 * (lo + hi), 0.0)


def chi2_quantile(q: Real[ArrayLike, "..."], dof: Real[ArrayLike, "..."]) -> Float[Array, "..."]:
    """The ``q``-quantile of ``χ²_dof`` (broadcast), 0 where ``dof = 0``.

    Bisection on the survival function ``Q(dof/2, x/2)`` inside the Laurent–Massart bracket ``[0, d + 2√(dℓ) + 2ℓ]``
    (``ℓ = -ln(1 - q)``); accurate to rounding (checked against ``scipy.stats.chi2.ppf``).

    Raises:
        ValueError: for ``q`` outside ``(0, 1)`` or a negative ``dof``.

    Example:
        ```python
        chi2_quantile(0.99, 3)  # 11.3449
        ```
    """
    _probability(q, "q")
    if is_concrete(dof) and np.any(np.asarray(dof) < 0):
        raise ValueError(f"`dof` must be non-negative, got {dof!r}.")
    q = as_float_array(q, "q")
    dof = jnp.asarray(dof, q.dtype)
    q, dof = jnp.broadcast_arrays(q, dof)
    return _chi2_quantile(q, dof)


def chi2_threshold(alpha: Real[ArrayLike, "..."], dof: Real[ArrayLike, "..."]) -> Float[Array, "..."]:
    """The level-``alpha`` threshold of the χ² test: the ``(1 - alpha)`` quantile of ``χ²_dof``.

    Example:
        ```python
        chi2_threshold(0.05, 2)  # 5.9915
        ```
    """
    _probability(alpha, "alpha")
    return chi2_quantile(1.0 - jnp.asarray(alpha, float), dof)


def nis_test(
    nis: Real[ArrayLike, "..."], dof: Real[ArrayLike, "..."], alpha: Real[ArrayLike, "..."]
) -> Bool[Array, "*batch"]:
    """The χ² test: ``nis > χ²_{dof, 1-α}`` where ``dof > 0``. In control each step alarms with probability ``α``.

    Raises:
        ValueError: for ``alpha`` outside ``(0, 1)`` or mismatched ``nis`` / ``dof``.

    Example:
        ```python
        alarms = nis_test(*filter_nis(result), alpha=0.01)
        ```
    """
    _probability(alpha, "alpha")
    nis = as_float_array(nis, "nis")
    dof = jnp.asarray(dof)
    if dof.shape != nis.shape:
        raise ValueError(f"`dof` must have the shape of `nis` {nis.shape}, got {dof.shape}.")
    if is_concrete(dof) and dof.size:
        # a table over 0..max(dof), looked up per step: compiled once per number of channels, not per length
        size = 1 << max(5, int(np.max(np.asarray(dof))).bit_length())  # padded: one compile for any dof < 32
        table = chi2_threshold(alpha, jnp.arange(size))
        return (dof > 0) & (nis > table[dof.astype(jnp.int32)])
    return (dof > 0) & (nis > chi2_threshold(alpha, dof))


# ---------------------------------------------------------------------------------------------------------------------
# CUSUM


class CusumResult(eqx.Module):
    """A CUSUM run: the statistic ``max_i g_{k,i}`` before any restart ``(time,)``, the alarms ``(time,)`` and the
    first alarm's index (``-1`` when none)."""

    statistic: Float[Array, " time"]
    alarms: Bool[Array, " time"]
    first_alarm: Int[Array, ""]


def _cusum_scan(increments, h, reset):
    def body(g, s):
        g = jnp.maximum(0.0, g + s)
        alarm = jnp.any(g > h)
        stat = jnp.max(g)
        g = jnp.where(alarm & reset, 0.0, g)
        return g, (stat, alarm)

    g0 = jnp.zeros(increments.shape[1:], increments.dtype)
    _, (stat, alarms) = lax.scan(body, g0, increments)
    return stat, alarms


@eqx.filter_jit
def _cusum(increments, h, reset):
    stat, alarms = _cusum_scan(increments, h, reset)
    first = jnp.where(jnp.any(alarms), jnp.argmax(alarms), -1).astype(jnp.int32)
    return CusumResult(stat, alarms, first)


def _increments(increments) -> Float[Array, "time cusum"]:
    s = as_float_array(increments, "increments")
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"`increments` must have shape (time,) or (time, cusum) with time > 0, got {s.shape}.")
    if is_concrete(s) and not np.all(np.isfinite(np.asarray(s))):
        raise ValueError("`increments` must be finite (mask missing steps with a zero increment).")
    return s


def cusum(increments: Float[ArrayLike, "..."], h: Real[ArrayLike, "..."], *, reset: bool = True) -> CusumResult:
    """Page's one-sided CUSUM(s) ``g_k = max(0, g_{k-1} + s_k)``, alarm when any ``g_k > h``.

    Arguments:
        increments: ``s_k``, ``(time,)`` or ``(time, cusum)`` for several CUSUMs raced together (any alarms).
        h: the threshold (> 0).
        reset: restart every CUSUM from 0 after an alarm (a renewal process: consecutive run lengths are i.i.d.
            for i.i.d. increments), else keep accumulating.

    Returns:
        A :class:`CusumResult`.

    Raises:
        ValueError: naming ``increments`` (shape, non-finite) or ``h`` (not positive).

    Example:
        ```python
        result = cusum(z - 0.5, siegmund_threshold(500.0, 0.5))
        ```
    """
    _positive(h, "h")
    s = _increments(increments)
    return _cusum(s, jnp.asarray(h, s.dtype), bool(reset))


def mean_cusum(
    z: Float[ArrayLike, "..."],
    delta: Real[ArrayLike, "..."],
    h: Real[ArrayLike, "..."],
    mask: ArrayLike | None = None,
    *,
    two_sided: bool = True,
    reset: bool = True,
) -> CusumResult:
    """CUSUM for a mean shift of ``delta`` standard deviations in standardised innovations (see :func:`whiten`).

    Increments ``z - δ/2`` (and ``-z - δ/2`` when two-sided) per channel; a missing channel (``mask`` false or ``z``
    ``NaN``) adds 0, i.e. holds its statistic.

    Arguments:
        z: standardised innovations ``(time,)`` or ``(time, obs)``, ``N(0, 1)`` in control.
        delta: the shift to detect fastest (> 0), in standard deviations; the reference value is ``k = δ/2``.
        h: the threshold, e.g. ``siegmund_threshold(arl0, delta / 2, cusums=2 * obs)``.
        mask: the observed entries (default: non-``NaN``).
        two_sided: detect shifts of either sign.
        reset: restart after an alarm.

    Returns:
        A :class:`CusumResult`.

    Raises:
        ValueError: naming ``z``, ``mask``, ``delta`` or ``h``.

    Example:
        ```python
        z, mask = whiten(inn.residual, inn.covariance, inn.mask)
        h = siegmund_threshold(500.0, 0.5, cusums=2 * z.shape[1])
        alarms = mean_cusum(z, 1.0, h, mask).alarms
        ```
    """
    _positive(delta, "delta")
    z = as_float_array(z, "z")
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2:
        raise ValueError(f"`z` must have shape (time,) or (time, obs), got {z.shape}.")
    observed = ~jnp.isnan(z)
    if mask is not None:
        mask = jnp.asarray(mask)
        mask = mask[:, None] if mask.ndim == 1 else mask
        if mask.shape != z.shape or mask.dtype != jnp.bool_:
            raise ValueError(f"`mask` must be a boolean array of shape {z.shape}, got {mask.dtype}{mask.shape}.")
        observed = observed & mask
    k = 0.5 * jnp.asarray(delta, z.dtype)
    zz = jnp.where(observed, z, 0.0)
    sides = [zz - k] + ([-zz - k] if two_sided else [])
    s = jnp.concatenate([jnp.where(observed, side, 0.0) for side in sides], axis=1)
    return cusum(s, h, reset=reset)


def variance_reference(ratio: Real[ArrayLike, "..."]) -> Float[Array, ""]:
    """``κ = λ ln λ / (λ - 1)``: the per-degree-of-freedom reference of the NIS CUSUM for ``S → λ S``."""
    _positive(ratio, "ratio")
    lam = jnp.asarray(ratio, float)
    return jnp.where(lam == 1.0, 1.0, lam * jnp.log(lam) / jnp.where(lam == 1.0, 2.0, lam - 1.0))


def nis_cusum(
    nis: Float[ArrayLike, "..."],
    dof: Real[ArrayLike, "..."],
    ratio: Real[ArrayLike, "..."],
    h: Real[ArrayLike, "..."],
    *,
    reset: bool = True,
) -> CusumResult:
    """Variance CUSUM on the NIS: increments ``ε_k - κ d_k``, ``κ = λ ln λ / (λ - 1)`` (:func:`variance_reference`).

    ``(1 - 1/λ) / 2 · (ε - κ d)`` is the log-likelihood ratio of ``N(0, λ S)`` against ``N(0, S)``, so this is Page's
    optimal CUSUM for a variance increase by ``λ`` (> 1); a missing step (``d = 0``) adds 0. Calibrate ``h`` with
    :func:`calibrate_cusum` on χ² draws.

    Raises:
        ValueError: naming ``nis``, ``dof``, ``ratio`` or ``h``.

    Example:
        ```python
        eps, dof = filter_nis(result)
        alarms = nis_cusum(eps, dof, 2.0, h).alarms
        ```
    """
    if is_concrete(ratio) and not float(ratio) > 1.0:
        raise ValueError(f"`ratio` must be > 1 (a variance increase), got {ratio!r}.")
    nis = as_float_array(nis, "nis", ndim=1)
    dof = jnp.asarray(dof)
    if dof.shape != nis.shape:
        raise ValueError(f"`dof` must have the shape of `nis` {nis.shape}, got {dof.shape}.")
    return cusum(nis - variance_reference(ratio).astype(nis.dtype) * dof, h, reset=reset)


# ---------------------------------------------------------------------------------------------------------------------
# ARL: Siegmund's approximation, Monte-Carlo calibration, measurement


def siegmund_arl(
    h: Real[ArrayLike, "..."], k: Real[ArrayLike, "..."], shift: Real[ArrayLike, "..."] = 0.0
) -> Float[Array, "..."]:
    """Siegmund's approximation of the ARL of the one-sided CUSUM ``max(0, g + z - k) > h``, ``z ~ N(shift, 1)``.

    ``(e^{-2Δb} + 2Δb - 1) / (2Δ²)`` with ``Δ = shift - k``, ``b = h + 1.166`` (``b²`` when ``Δ = 0``). In control
    (``shift = 0``) it is the ARL₀; with ``shift > 0`` the out-of-control ARL₁ (the detection delay + 1).

    Example:
        ```python
        siegmund_arl(4.0, 0.5)  # ≈ 338 (exact 336)
        ```
    """
    h, k, shift = jnp.broadcast_arrays(*(jnp.asarray(a, float) for a in (h, k, shift)))
    d = shift - k
    b = h + SIEGMUND_OFFSET
    small = jnp.abs(d) < 1e-8
    ds = jnp.where(small, 1.0, d)
    arl = (jnp.exp(-2.0 * ds * b) + 2.0 * ds * b - 1.0) / (2.0 * ds**2)
    return jnp.where(small, b**2, arl)


def siegmund_threshold(arl0: Real[ArrayLike, "..."], k: Real[ArrayLike, "..."], *, cusums: int = 1) -> Float[Array, ""]:
    """The threshold ``h`` at which ``cusums`` one-sided Gaussian CUSUMs with reference ``k`` raced together (e.g.
    ``2 · obs`` for :func:`mean_cusum`) have in-control ARL ``arl0``: each gets ``siegmund_arl(h, k) = cusums · arl0``.

    Raises:
        ValueError: for ``arl0 <= 1``, ``k <= 0`` or ``cusums < 1``.

    Example:
        ```python
        h = siegmund_threshold(500.0, 0.5, cusums=2)  # two-sided, ARL₀ = 500
        ```
    """
    if is_concrete(arl0) and not float(arl0) > 1.0:
        raise ValueError(f"`arl0` must be > 1 (steps), got {arl0!r}.")
    _positive(k, "k")
    if not isinstance(cusums, (int, np.integer)) or cusums < 1:
        raise ValueError(f"`cusums` must be a positive integer, got {cusums!r}.")
    return _siegmund_threshold(jnp.asarray(arl0, float) * cusums, jnp.asarray(k, float))


@jax.jit
def _siegmund_threshold(target, k):
    # ARL(h) increases with h; at Δ = -k it behaves like e^{2kb}/(2k²) for large b and like b² for small k, so this
    # hi has ARL(hi) ≥ target in both regimes
    hi = jnp.log(2.0 * k**2 * target + 1.0) / (2.0 * k) + 2.0 * jnp.sqrt(target)

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = siegmund_arl(mid, k) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = lax.fori_loop(0, 100, body, (jnp.zeros_like(hi), hi))
    return 0.5 * (lo + hi)


@eqx.filter_jit
def _alarm_count(increments, h):
    return jnp.sum(jax.vmap(lambda s: _cusum_scan(s, h, True)[1])(increments))


@eqx.filter_jit
def _calibrate(increments, target_alarms, iters):
    def count(h):
        return _alarm_count(increments, h)

    def grow(hi):
        return 2.0 * hi

    hi = lax.while_loop(lambda hi: (count(hi) > target_alarms) & (hi < 1e6), grow, jnp.ones((), increments.dtype))

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        too_many = count(mid) > target_alarms
        return jnp.where(too_many, mid, lo), jnp.where(too_many, hi, mid)

    lo, hi = lax.fori_loop(0, iters, body, (jnp.zeros_like(hi), hi))
    return 0.5 * (lo + hi)


def calibrate_cusum(
    increments: Float[ArrayLike, "..."], arl0: Real[ArrayLike, "..."], *, iters: int = 40
) -> Float[Array, ""]:
    """Monte-Carlo calibration: the ``h`` at which the CUSUM (with restarts) on simulated in-control ``increments``
    raises ``runs · time / arl0`` alarms, i.e. the renewal estimate of ARL₀ equals ``arl0``.

    Bisection on ``h`` with common random numbers (the alarm count is monotone in ``h``), one vmapped ``lax.scan``
    per evaluation. The relative Monte-Carlo error of the resulting ARL₀ is about ``1/√(alarms)``: simulate enough
    steps for a few thousand alarms (``runs · time ≫ arl0``).

    Arguments:
        increments: in-control increments ``(runs, time)`` or ``(runs, time, cusum)`` (e.g. ``chi2 - κ d`` draws).
        arl0: the target in-control ARL (steps, > 1).
        iters: bisection steps.

    Raises:
        ValueError: naming ``increments`` or ``arl0`` (fewer simulated steps than ``arl0``).

    Example:
        ```python
        eps = jax.random.chisquare(key, 2.0, (64, 20_000))
        h = calibrate_cusum(eps - 2 * variance_reference(2.0), 500.0)
        ```
    """
    s = as_float_array(increments, "increments")
    if s.ndim == 2:
        s = s[..., None]
    if s.ndim != 3:
        raise ValueError(f"`increments` must have shape (runs, time) or (runs, time, cusum), got {s.shape}.")
    if not float(arl0) > 1.0 or s.shape[0] * s.shape[1] < arl0:
        raise ValueError(f"`arl0` must be > 1 and below the simulated steps {s.shape[0] * s.shape[1]}, got {arl0!r}.")
    target = jnp.asarray(s.shape[0] * s.shape[1] / float(arl0), s.dtype)
    return _calibrate(s, target, int(iters))


class RunLengths(eqx.Module):
    """Measured run lengths: ``arl`` (steps per alarm, the renewal estimate), its standard error ``se`` and the
    number of alarms. With ``alarms = 0`` the ARL is only known to exceed the steps observed (``arl = inf``)."""

    arl: float
    se: float
    alarms: int


def run_lengths(alarms: ArrayLike) -> RunLengths:
    """ARL and its standard error from the alarms of CUSUMs with restarts over one or more independent runs.

    ``ARL = steps / alarms``. The run lengths between alarms are i.i.d. (renewal), so by the delta method
    ``se = ARL · cv / √alarms``, ``cv`` the coefficient of variation of the completed run lengths (≈ 1 for the nearly
    geometric in-control ones).

    Raises:
        ValueError: naming ``alarms`` if it is not boolean with a time axis.

    Example:
        ```python
        measured = run_lengths(mean_cusum(z, 1.0, h).alarms)
        measured.arl, measured.se
        ```
    """
    a = np.asarray(alarms)
    if a.dtype != np.bool_ or a.ndim < 1:
        raise ValueError(f"`alarms` must be a boolean array (..., time), got {a.dtype}{a.shape}.")
    a = a.reshape(-1, a.shape[-1])
    n = int(a.sum())
    if n == 0:
        return RunLengths(math.inf, math.inf, 0)
    arl = a.size / n
    lengths = np.concatenate([np.diff(np.flatnonzero(np.r_[True, row])) for row in a if row.any()])
    cv = float(np.std(lengths) / np.mean(lengths)) if lengths.size > 1 else 1.0
    return RunLengths(float(arl), float(arl * cv / math.sqrt(n)), n)


# ---------------------------------------------------------------------------------------------------------------------
# parameter drift


class _AugmentedODE(AbstractDynamics):
    base: AbstractDynamics
    where: Callable = eqx.field(static=True)

    def vector_field(self, t, z, u):
        dyn = eqx.tree_at(self.where, self.base, z[-1])
        dx = jnp.asarray(dyn.vector_field(t, z[:-1], u), z.dtype)
        return jnp.concatenate([dx, jnp.zeros((1,), z.dtype)])


class _AugmentedDiscrete(AbstractDiscreteDynamics):
    base: AbstractDiscreteDynamics
    where: Callable = eqx.field(static=True)

    def transition(self, t, z, u):
        dyn = eqx.tree_at(self.where, self.base, z[-1])
        x1 = jnp.asarray(dyn.transition(t, z[:-1], u), z.dtype)
        return jnp.concatenate([x1, z[-1:]])


class _StateSensor(eqx.Module):
    fn: Callable

    def __call__(self, t, z, u):
        return self.fn(t, z[:-1], u)


def augment_parameter(model, where: Callable, *, prior_sd: float, random_walk_sd: float) -> StateSpaceModel:
    """The twin with one scalar parameter of its dynamics appended to the state as a random walk.

    State ``[x, θ]``: ``x`` follows the dynamics with the parameter set to ``θ``, ``θ_{k+1} = θ_k + η_k``,
    ``η_k ~ N(0, random_walk_sd²)`` per ``model.dt``. A Gaussian filter on it (EKF, UKF) estimates ``θ`` online;
    :func:`drift_test` checks the estimate against the nominal value.

    Arguments:
        model: a :class:`~twinjax.StateSpaceModel` with ODE or discrete dynamics, a Gaussian sensor, an initial
            Gaussian belief and ``dt``.
        where: picks the parameter from ``model.dynamics`` (as for ``eqx.tree_at``), e.g. ``lambda d: d.length_m``.
        prior_sd: the standard deviation of the prior on ``θ`` (centred on its nominal value in ``model``).
        random_walk_sd: the per-``dt`` standard deviation of the random walk: how fast ``θ`` may drift.

    Returns:
        The augmented :class:`~twinjax.StateSpaceModel` (state size ``n + 1``).

    Raises:
        ValueError: naming ``model`` (SDE dynamics, a non-Gaussian sensor, no initial belief or ``dt``), ``where``
            (not a scalar parameter) or a non-positive ``prior_sd`` / ``random_walk_sd``.

    Example:
        ```python
        aug = augment_parameter(twin, lambda d: d.length_m, prior_sd=0.05, random_walk_sd=1e-3)
        result = extended_kalman_filter(aug, ys, us)
        alarms = drift_test(result.means[:, -1], result.covariances[:, -1, -1], 1.0, alpha=0.01)
        ```
    """
    if not isinstance(model, StateSpaceModel):
        raise ValueError(f"`model` must be a tj.StateSpaceModel, got {type(model).__name__}.")
    dyn = model.dynamics
    if isinstance(dyn, AbstractSDEDynamics):
        raise ValueError("`model` has SDE dynamics; augment an ODE or discrete twin (add `process_noise`).")
    obs = model.observation
    if not isinstance(obs, GaussianObservation):
        raise ValueError(f"`model` needs a GaussianObservation sensor, got {type(obs).__name__}.")
    if model.initial is None or getattr(model.initial, "cov", None) is None or model.dt is None:
        raise ValueError("`model` needs a Gaussian `initial` belief and a `dt`.")
    _positive(prior_sd, "prior_sd")
    _positive(random_walk_sd, "random_walk_sd")
    try:
        theta0 = jnp.asarray(where(dyn), float)
    except (AttributeError, TypeError, IndexError, KeyError) as e:
        raise ValueError(f"`where` must select a parameter of `model.dynamics`: {e}") from e
    if theta0.shape != ():
        raise ValueError(f"`where` must select a scalar parameter, got shape {theta0.shape}.")
    aug_dyn = (_AugmentedDiscrete if isinstance(dyn, AbstractDiscreteDynamics) else _AugmentedODE)(dyn, where)
    m0, P0 = model.initial.mean, model.initial.cov
    n = m0.shape[0]
    dtype = jnp.result_type(m0.dtype, theta0.dtype)
    Q = jnp.zeros((n + 1, n + 1), dtype)
    if model.process_noise is not None:
        Q = Q.at[:n, :n].set(model.process_noise)
    Q = Q.at[n, n].set(random_walk_sd**2)
    P = jnp.zeros((n + 1, n + 1), dtype).at[:n, :n].set(P0).at[n, n].set(prior_sd**2)
    return StateSpaceModel(
        aug_dyn,
        GaussianObservation(_StateSensor(obs.fn), obs.cov),
        Gaussian(jnp.concatenate([m0.astype(dtype), theta0[None].astype(dtype)]), P),
        model.dt,
        process_noise=Q,
        control_dim=model.control_dim,
        discretisation=model.discretisation,
    )


def drift_threshold(alpha: Real[ArrayLike, "..."], horizon: int) -> Float[Array, ""]:
    """``z* = Φ⁻¹(1 - α / (2 · horizon))``: a two-sided z threshold whose family-wise false-alarm probability over
    ``horizon`` steps is at most ``α`` (union bound; valid for autocorrelated estimates).

    Raises:
        ValueError: for ``alpha`` outside ``(0, 1)`` or a ``horizon`` that is not a positive integer.

    Example:
        ```python
        drift_threshold(0.01, 1000)  # ≈ 4.42
        ```
    """
    _probability(alpha, "alpha")
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"`horizon` must be a positive integer (steps), got {horizon!r}.")
    return -ndtri(jnp.asarray(alpha, float) / (2.0 * horizon))


def drift_test(
    estimates: Float[ArrayLike, "..."],
    variances: Float[ArrayLike, "..."],
    nominal: Real[ArrayLike, "..."],
    *,
    alpha: float = 0.01,
    horizon: int | None = None,
) -> tuple[Float[Array, " time"], Bool[Array, " time"]]:
    """z-test of an online parameter estimate against its nominal value: ``z_k = (θ̂_k - θ₀) / √P_k``.

    Arguments:
        estimates: the posterior means ``θ̂_k`` ``(time,)``, e.g. ``result.means[:, -1]`` of a filter on
            :func:`augment_parameter`'s twin.
        variances: their posterior variances ``P_k`` ``(time,)`` (positive).
        nominal: ``θ₀``.
        alpha: the family-wise false-alarm probability over ``horizon`` steps.
        horizon: the number of steps ``α`` is spread over (default ``time``), see :func:`drift_threshold`.

    Returns:
        ``(z, alarms)``, alarms where ``|z| > drift_threshold(alpha, horizon)``.

    Raises:
        ValueError: naming ``estimates`` / ``variances`` (shapes, non-positive variance), ``alpha`` or ``horizon``.

    Example:
        ```python
        z, alarms = drift_test(result.means[:, -1], result.covariances[:, -1, -1], 1.0)
        ```
    """
    est = as_float_array(estimates, "estimates", ndim=1)
    var = as_float_array(variances, "variances", ndim=1)
    if var.shape != est.shape:
        raise ValueError(f"`variances` must have the shape of `estimates` {est.shape}, got {var.shape}.")
    if is_concrete(var) and not np.all(np.asarray(var) > 0):
        raise ValueError("`variances` must be positive (posterior variances of the estimate).")
    z_star = drift_threshold(alpha, est.shape[0] if horizon is None else horizon)
    z = (est - jnp.asarray(nominal, est.dtype)) / jnp.sqrt(var)
    return z, jnp.abs(z) > z_star


__all__ = [
    "CusumResult",
    "RunLengths",
    "augment_parameter",
    "calibrate_cusum",
    "chi2_quantile",
    "chi2_threshold",
    "cusum",
    "drift_test",
    "drift_threshold",
    "filter_nis",
    "mean_cusum",
    "nis",
    "nis_cusum",
    "nis_test",
    "run_lengths",
    "siegmund_arl",
    "siegmund_threshold",
    "variance_reference",
    "whiten",
    "windowed_nis",
]
