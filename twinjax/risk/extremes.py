r"""Extreme-value tails by peaks over threshold (POT): the generalised Pareto distribution (GPD) fitted by maximum
likelihood to the excesses over a high threshold, return levels with delta-method standard errors, and sampling from
the fitted tail for synthetic extreme scenarios.

**Peaks over threshold.** For a random variable ``X`` in the maximum domain of attraction of an extreme-value
distribution, the excess ``Y = X − u`` over a threshold ``u``, conditional on ``X > u``, tends to a generalised Pareto
distribution as ``u`` approaches the upper endpoint (Pickands 1975; Balkema & de Haan 1974):

$$ G(y) = 1 - \Bigl(1 + \xi \frac{y}{\sigma}\Bigr)_+^{-1/\xi}, \qquad y > 0, $$

with shape ``ξ`` (heavy tail for ``ξ > 0``, exponential for ``ξ → 0``: ``G(y) = 1 − e^{−y/σ}``, a finite upper
endpoint ``−σ/ξ`` for ``ξ < 0``) and scale ``σ > 0``. :func:`exceedances` extracts the excesses ``x_i − u`` of the
observations above ``u``; the mean-residual-life plot (:func:`mean_excess`) helps choose ``u``: above a valid
threshold the mean excess ``E[X − u | X > u] = (σ_{u_0} + ξ u)/(1 − ξ)`` is linear in ``u`` (Coles 2001, §4.3.1).

**Likelihood.** For excesses ``y_1..y_n`` and ``z_i = y_i / σ``, the log-likelihood is

$$ \ell(\xi, \sigma) = -n \log\sigma - \Bigl(1 + \frac{1}{\xi}\Bigr) \sum_i \log(1 + \xi z_i)
   = -n \log\sigma - (1 + \xi) \sum_i z_i\, g(\xi z_i), \qquad g(w) = \frac{\log(1 + w)}{w}, $$

where ``g`` is evaluated by ``log1p`` and, for ``|w| < 10^{-2}``, by its Taylor series
``Σ_k (−w)^k / (k + 1)``, so that ``ℓ`` and its derivatives are smooth through ``ξ = 0`` (the exponential limit
``ℓ = −n log σ − Σ z_i``). Outside the support, ``1 + ξ z_i ≤ 0`` for some ``i`` (possible for ``ξ < 0``),
``ℓ = −∞``. :func:`fit_gpd` maximises ``ℓ`` in the unconstrained parameters ``(ξ, log σ)`` by a damped Newton method
(Hessian shifted to be positive definite, backtracking Armijo line search that rejects infeasible steps) inside
one ``lax.while_loop``, so it is jittable and vmappable. The covariance of ``(ξ̂, σ̂)`` is the inverse observed
information ``[−∇²ℓ(ξ̂, σ̂)]^{−1}`` (``jax.hessian`` in ``(ξ, log σ)``, then the chain rule); for ``ξ > −1/2`` the
usual asymptotics hold (Smith 1985), with expected information giving ``Var ξ̂ ≈ (1 + ξ)²/n``,
``Var σ̂ ≈ 2σ²(1 + ξ)/n``, ``Cov(ξ̂, σ̂) ≈ −σ(1 + ξ)/n``.

**Return levels.** With ``ζ_u = P(X > u)``, the level exceeded on average once every ``m`` observations is

$$ x_m = u + \frac{\sigma}{\xi}\bigl[(m \zeta_u)^{\xi} - 1\bigr] \quad (\xi \ne 0), \qquad
   x_m = u + \sigma \log(m \zeta_u) \quad (\xi = 0), $$

computed as ``u + σ L h(ξ L)`` with ``L = log(m ζ_u)`` and ``h(a) = expm1(a)/a`` (smooth through ``ξ = 0``). With
``n_b`` observations per block (e.g. per year), ``m ζ_u = T λ`` for a return period of ``T`` blocks and
``λ = n_b ζ_u`` exceedances per block (:func:`return_level`). Its standard error is the delta method
``∇x_m^T V ∇x_m`` with ``V`` the covariance of ``(ξ̂, σ̂)`` (and, optionally, the variance of ``λ̂``; Coles 2001,
§4.3.3).

**Sampling.** :func:`gpd_sample` draws ``y = σ/ξ (U^{−ξ} − 1) = σ E h(ξ E)``, ``E = −log U`` exponential, by
inversion; :func:`gpd_logpdf` and :func:`gpd_sf` evaluate the fitted tail.

References:
    S. Coles, *An Introduction to Statistical Modeling of Extreme Values*, Springer, 2001, ch. 4 (threshold models).
    J. Pickands, "Statistical inference using extreme order statistics", Annals of Statistics 3(1), 1975.
    A. A. Balkema, L. de Haan, "Residual life time at great age", Annals of Probability 2(5), 1974.
    R. L. Smith, "Maximum likelihood estimation in a class of nonregular cases", Biometrika 72(1), 1985.
    A. C. Davison, R. L. Smith, "Models for exceedances over high thresholds", JRSS B 52(3), 1990.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Real

from .._checks import as_float_array, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Int, Key

__all__ = [
    "GPDFit",
    "MeanExcess",
    "ReturnLevel",
    "exceedances",
    "fit_gpd",
    "gpd_logpdf",
    "gpd_sample",
    "gpd_sf",
    "mean_excess",
    "return_level",
]

_SERIES_CUTOFF = 1e-2  # |w| below which log1p(w)/w and expm1(w)/w use their Taylor series (error < 1e-17)
_SERIES_TERMS = 8


def _log1p_over(w: Array) -> Array:
    """``log1p(w) / w``, smooth (with all derivatives) through ``w = 0``; requires ``w > −1``."""
    small = jnp.abs(w) < _SERIES_CUTOFF
    w_big = jnp.where(small, 1.0, w)
    w_small = jnp.where(small, w, 0.0)
    series = sum((-w_small) ** k / (k + 1) for k in range(_SERIES_TERMS))
    return jnp.where(small, series, jnp.log1p(w_big) / w_big)


def _expm1_over(a: Array) -> Array:
    """``expm1(a) / a``, smooth (with all derivatives) through ``a = 0``."""
    small = jnp.abs(a) < _SERIES_CUTOFF
    a_big = jnp.where(small, 1.0, a)
    a_small = jnp.where(small, a, 0.0)
    series = sum(a_small**k / float(np.prod(np.arange(1, k + 2))) for k in range(_SERIES_TERMS))
    return jnp.where(small, series, jnp.expm1(a_big) / a_big)


def _check_shape_scale(shape, scale) -> tuple[Array, Array]:
    shape = as_float_array(shape, "shape")
    scale = as_float_array(scale, "scale")
    if is_concrete(scale) and np.any(np.asarray(scale) <= 0):
        raise ValueError(f"`scale` must be positive, got {np.asarray(scale)}.")
    return shape, scale


# -------------------------------------------------------------------------------------------------------- exceedances


def exceedances(x: Float[ArrayLike, "..."], threshold: Real[ArrayLike, ""]) -> Float[Array, " m"]:
    """The excesses ``x_i − u`` of the observations strictly above the threshold ``u`` (module docstring).

    NaN observations (missing data) are dropped. The output length depends on the data, so this is a data-preparation
    step outside ``jit``; pad with NaN for a fixed shape (:func:`fit_gpd` ignores NaN excesses).

    Arguments:
        x: the observations (any shape; flattened).
        threshold: the threshold ``u`` (a finite scalar).

    Returns:
        The 1-D array of excesses, in the order of ``x``.

    Raises:
        ValueError: ``x`` traced, empty or all NaN; ``threshold`` not a finite scalar; no observation above it.
    """
    x = as_float_array(x, "x")
    if not is_concrete(x):
        raise ValueError("`x` must be concrete (exceedances has a data-dependent length; call it outside jit).")
    xn = np.asarray(x).ravel()
    if xn.size == 0:
        raise ValueError("`x` is empty.")
    finite = ~np.isnan(xn)
    if not finite.any():
        raise ValueError("`x` is all NaN: no observations to threshold.")
    if not is_concrete(threshold) or np.ndim(threshold) != 0 or not np.isfinite(float(threshold)):
        raise ValueError(f"`threshold` must be a concrete finite scalar, got {threshold!r}.")
    u = float(threshold)
    above = finite & (xn > u)
    if not above.any():
        raise ValueError(f"no observation of `x` exceeds `threshold`={u} (max {np.nanmax(xn)}).")
    return jnp.asarray(xn[above] - u, dtype=x.dtype)


class MeanExcess(NamedTuple):
    """The empirical mean excess (mean residual life) at each threshold.

    Attributes:
        mean: ``ē(u) = mean(x_i − u | x_i > u)`` (NaN with no exceedance).
        stderr: its standard error ``s_u / √n_u`` (sample standard deviation of the excesses; NaN when ``n_u < 2``).
        count: ``n_u``, the number of exceedances.
    """

    mean: Float[Array, " k"]
    stderr: Float[Array, " k"]
    count: Int[Array, " k"]


def mean_excess(x: Float[ArrayLike, " n"], thresholds: Float[ArrayLike, " k"]) -> MeanExcess:
    """The mean-residual-life function at several thresholds, for threshold choice (Coles 2001, §4.3.1).

    Above a threshold where the GPD holds, ``E[X − u | X > u] = (σ_{u_0} + ξ u)/(1 − ξ)`` is linear in ``u`` (for
    ``ξ < 1``); pick the lowest ``u`` above which the plot of ``mean ± 1.96 stderr`` against ``u`` is linear. NaN
    observations are ignored. Jittable.

    Arguments:
        x: the observations, shape ``(n,)``.
        thresholds: the candidate thresholds, shape ``(k,)``.

    Returns:
        A :class:`MeanExcess` of shape ``(k,)`` arrays.

    Raises:
        ValueError: ``x`` empty or (concrete and) all NaN.
    """
    x = as_float_array(x, "x", ndim=1)
    u = as_float_array(thresholds, "thresholds", ndim=1)
    if x.shape[0] == 0:
        raise ValueError("`x` is empty.")
    if is_concrete(x) and np.all(np.isnan(np.asarray(x))):
        raise ValueError("`x` is all NaN.")
    dtype = jnp.result_type(x, u)
    x, u = x.astype(dtype), u.astype(dtype)
    above = (x[None, :] > u[:, None]) & ~jnp.isnan(x)[None, :]
    excess = jnp.where(above, x[None, :] - u[:, None], 0.0)
    count = above.sum(axis=1)
    n = count.astype(dtype)
    mean = excess.sum(axis=1) / jnp.where(count > 0, n, 1.0)
    sq = jnp.where(above, (excess - mean[:, None]) ** 2, 0.0).sum(axis=1)
    var = sq / jnp.where(count > 1, n - 1.0, 1.0)
    mean = jnp.where(count > 0, mean, jnp.nan)
    stderr = jnp.where(count > 1, jnp.sqrt(var / jnp.where(count > 0, n, 1.0)), jnp.nan)
    return MeanExcess(mean, stderr, count)


# ---------------------------------------------------------------------------------------------------- the GPD itself


def gpd_logpdf(
    y: Float[ArrayLike, "*batch"], shape: Float[ArrayLike, "*#batch"], scale: Float[ArrayLike, "*#batch"]
) -> Float[Array, "*batch"]:
    """The GPD log-density ``−log σ − (1 + 1/ξ) log(1 + ξ y/σ)`` (``−log σ − y/σ`` at ``ξ = 0``); ``−∞`` outside the
    support ``y ≥ 0, 1 + ξ y/σ > 0``. Matches ``scipy.stats.genpareto.logpdf(y, ξ, 0, σ)``.

    Raises:
        ValueError: a concrete non-positive ``scale``.
    """
    y = as_float_array(y, "y")
    shape, scale = _check_shape_scale(shape, scale)
    z = y / scale
    w = shape * z
    inside = (z >= 0) & (1.0 + w > 0)
    w_safe = jnp.where(inside, w, 0.0)
    z_safe = jnp.where(inside, z, 0.0)
    value = -jnp.log(scale) - (1.0 + shape) * z_safe * _log1p_over(w_safe)
    return jnp.where(inside, value, -jnp.inf)


def gpd_sf(
    y: Float[ArrayLike, "*batch"], shape: Float[ArrayLike, "*#batch"], scale: Float[ArrayLike, "*#batch"]
) -> Float[Array, "*batch"]:
    """The GPD survival function ``1 − G(y) = (1 + ξ y/σ)_+^{−1/ξ}`` (``e^{−y/σ}`` at ``ξ = 0``): ``1`` for ``y ≤ 0``,
    ``0`` beyond the upper endpoint ``−σ/ξ`` when ``ξ < 0``. Matches ``scipy.stats.genpareto.sf(y, ξ, 0, σ)``.

    Raises:
        ValueError: a concrete non-positive ``scale``.
    """
    y = as_float_array(y, "y")
    shape, scale = _check_shape_scale(shape, scale)
    z = jnp.maximum(y / scale, 0.0)
    w = shape * z
    inside = 1.0 + w > 0
    w_safe = jnp.where(inside, w, 0.0)
    z_safe = jnp.where(inside, z, 0.0)
    return jnp.where(inside, jnp.exp(-z_safe * _log1p_over(w_safe)), 0.0)


# ------------------------------------------------------------------------------------------------------------ fitting


class GPDFit(NamedTuple):
    """A maximum-likelihood GPD fit to excesses over a threshold.

    Attributes:
        shape: ``ξ̂``.
        scale: ``σ̂``.
        n: the number of (non-NaN) excesses.
        loglik: the maximised log-likelihood ``ℓ(ξ̂, σ̂)``.
        cov: the ``2 × 2`` covariance of ``(ξ̂, σ̂)``, the inverse observed information (NaN if it is singular).
        converged: whether the Newton iteration met its tolerance within its step budget.
    """

    shape: Float[Array, ""]
    scale: Float[Array, ""]
    n: Int[Array, ""]
    loglik: Float[Array, ""]
    cov: Float[Array, "2 2"]
    converged: Bool[Array, ""]

    @property
    def stderr(self) -> Float[Array, " 2"]:
        """The standard errors ``(se ξ̂, se σ̂)``, square roots of the diagonal of :attr:`cov`."""
        return jnp.sqrt(jnp.diagonal(self.cov, axis1=-2, axis2=-1))


def _negloglik(shape: Array, scale: Array, y: Array, valid: Array) -> Array:
    """``−ℓ(ξ, σ)`` over the ``valid`` excesses; ``+∞`` outside the support (or for ``σ ≤ 0``)."""
    z = jnp.where(valid, y, 0.0) / scale
    w = shape * z
    ok = (1.0 + w > 0) | ~valid
    feasible = jnp.all(ok) & (scale > 0)
    w_safe = jnp.where(ok & valid, w, 0.0)
    n = valid.sum().astype(y.dtype)
    terms = jnp.where(valid, z * _log1p_over(w_safe), 0.0)
    value = n * jnp.log(jnp.abs(scale)) + (1.0 + shape) * terms.sum()
    return jnp.where(feasible, value, jnp.inf)


def _newton_direction(grad: Array, hess: Array) -> Array:
    """``−H₊⁻¹ g``: the Newton direction with the ``2 × 2`` Hessian shifted, ``H₊ = H + μ I``, so that its smallest
    eigenvalue is at least ``10⁻⁸`` of its largest magnitude (closed-form eigenvalues and inverse: no LAPACK call)."""
    a, b, c = hess[0, 0], hess[0, 1], hess[1, 1]
    mid, rad = 0.5 * (a + c), jnp.sqrt((0.5 * (a - c)) ** 2 + b**2)
    lo, big = mid - rad, jnp.maximum(jnp.abs(mid) + rad, 1.0)
    mu = jnp.where(lo < 1e-8 * big, 1e-8 * big - lo + jnp.abs(lo), 0.0)
    a, c = a + mu, c + mu
    det = a * c - b * b
    return -jnp.stack([c * grad[0] - b * grad[1], a * grad[1] - b * grad[0]]) / det


@functools.partial(jax.jit, static_argnames=("max_steps", "rtol"))
def _fit_gpd_mle(y: Float[Array, " n"], max_steps: int, rtol: float) -> GPDFit:
    valid = ~jnp.isnan(y)
    n = valid.sum()
    nf = n.astype(y.dtype)
    yv = jnp.where(valid, y, 0.0)
    mean = yv.sum() / nf
    var = jnp.where(valid, (yv - mean) ** 2, 0.0).sum() / jnp.maximum(nf - 1.0, 1.0)
    ratio = mean**2 / jnp.where(var > 0, var, mean**2)
    xi0 = jnp.clip(0.5 * (1.0 - ratio), -0.45, 0.45)
    sigma0 = 0.5 * mean * (ratio + 1.0)
    mom_ok = jnp.isfinite(_negloglik(xi0, sigma0, y, valid)) & (sigma0 > 0)
    theta0 = jnp.where(mom_ok, jnp.stack([xi0, jnp.log(sigma0)]), jnp.stack([0.0 * mean, jnp.log(mean)]))

    def f(theta):
        return _negloglik(theta[0], jnp.exp(theta[1]), y, valid)

    def value_grad_hess(theta):
        return f(theta), jax.grad(f)(theta), jax.hessian(f)(theta)

    def line_search(theta, value, grad, direction):
        slope = grad @ direction

        def sufficient(t, new_value):  # Armijo, with a strict decrease (so a stagnating iteration stops)
            return (new_value <= value + 1e-4 * t * slope) & (new_value < value)

        def cond(carry):
            t, new_value, k = carry
            return ~sufficient(t, new_value) & (k < 60)

        def body(carry):
            t, _, k = carry
            t = 0.5 * t
            return t, f(theta + t * direction), k + 1

        t, new_value, k = jax.lax.while_loop(cond, body, (1.0, f(theta + direction), 0))
        accepted = sufficient(t, new_value)
        return jnp.where(accepted, t, 0.0), accepted

    def cond(state):
        _, _, _, _, step, done = state
        return (~done) & (step < max_steps)

    def body(state):
        theta, _, _, _, step, _ = state
        value, grad, hess = value_grad_hess(theta)  # the only Hessian site (compile time)
        direction = _newton_direction(grad, hess)
        small = -(grad @ direction) <= rtol * (1.0 + jnp.abs(value))  # the Newton decrement
        t, accepted = line_search(theta, value, grad, direction)
        # done: a negligible decrement (|Δθ| ~ √(decrement / n)), or a failed line search (no decrease left in
        # floating point); the state then holds the value, gradient and Hessian at the returned θ
        tiny = jnp.max(jnp.abs(t * direction) / (1.0 + jnp.abs(theta))) <= 1e-15
        done = small | ~accepted | tiny
        theta = jnp.where(done, theta, theta + t * direction)
        return theta, value, grad, hess, step + 1, done

    zero = jnp.zeros((), y.dtype)
    state = (theta0, zero, jnp.zeros(2, y.dtype), jnp.zeros((2, 2), y.dtype), jnp.asarray(0), jnp.asarray(False))
    theta, value, grad, hess, _, done = jax.lax.while_loop(cond, body, state)
    converged = done & jnp.isfinite(value) & (-(grad @ _newton_direction(grad, hess)) <= 1e-8 * (1.0 + jnp.abs(value)))

    # the observed information in (ξ, σ) from the Hessian in (ξ, s = log σ): ∂_σ = ∂_s / σ, ∂²_σ = (∂²_s − ∂_s) / σ²
    shape, scale = theta[0], jnp.exp(theta[1])
    i_xx, i_xs, i_ss = hess[0, 0], hess[0, 1] / scale, (hess[1, 1] - grad[1]) / scale**2
    det = i_xx * i_ss - i_xs**2
    cov = jnp.stack([jnp.stack([i_ss, -i_xs]), jnp.stack([-i_xs, i_xx])]) / det
    cov = jnp.where((i_xx > 0) & (det > 0), cov, jnp.nan)  # the observed information is positive definite
    return GPDFit(shape, scale, n, -value, cov, converged)


def fit_gpd(
    excesses: Float[ArrayLike, " n"], *, method: str = "mle", max_steps: int = 100, rtol: float = 1e-18
) -> GPDFit:
    """Fit the generalised Pareto distribution to excesses over a threshold by maximum likelihood (module docstring).

    Damped Newton on ``−ℓ`` in ``θ = (ξ, log σ)`` from the method-of-moments start (or the exponential fit
    ``ξ = 0, σ = ȳ`` if that start is outside the support), with an Armijo backtracking line search that rejects
    infeasible steps and those without a strict decrease, until the Newton decrement ``−g·d`` falls below
    ``rtol (1 + |ℓ|)`` (or the iteration stagnates in floating point). The covariance is the inverse of ``−∇²ℓ`` in
    ``(ξ, σ)``. Jittable and vmappable (the data sizes are static); NaN excesses are ignored, so a ragged batch can be
    NaN-padded.

    For ``ξ < −1`` the likelihood is unbounded (it grows without limit as ``σ → −ξ max y``) and for ``ξ ≤ −1/2`` the
    MLE is non-regular (Smith 1985): the fit returns a local maximum and the standard errors are not meaningful there.

    Arguments:
        excesses: the excesses ``y_i = x_i − u ≥ 0`` (:func:`exceedances`), shape ``(n,)``; NaN entries are ignored.
        method: ``"mle"`` (maximum likelihood; the only method).
        max_steps: the Newton step budget.
        rtol: the relative tolerance on the Newton decrement.

    Returns:
        A :class:`GPDFit`.

    Raises:
        ValueError: an unknown ``method``; ``excesses`` empty, (concrete and) all NaN, or with negative entries.

    Example:
        ```python
        fit = fit_gpd(exceedances(x, u))
        fit.shape, fit.scale, fit.stderr   # as scipy.stats.genpareto.fit(y, floc=0), plus standard errors
        ```
    """
    if method != "mle":
        raise ValueError(f"`method` must be 'mle', got {method!r}.")
    y = as_float_array(excesses, "excesses", ndim=1)
    if y.shape[0] == 0:
        raise ValueError("`excesses` is empty.")
    if is_concrete(y):
        yn = np.asarray(y)
        if np.all(np.isnan(yn)):
            raise ValueError("`excesses` is all NaN.")
        if np.any(yn[~np.isnan(yn)] < 0):
            raise ValueError(f"`excesses` must be non-negative (values above the threshold), min {np.nanmin(yn)}.")
        if not np.all(np.isfinite(yn[~np.isnan(yn)])):
            raise ValueError("`excesses` must be finite (or NaN for missing).")
    return _fit_gpd_mle(y, max_steps=int(max_steps), rtol=float(rtol))


# ------------------------------------------------------------------------------------------------------ return levels


class ReturnLevel(NamedTuple):
    """A return level with its delta-method standard error.

    Attributes:
        level: ``x_m``.
        stderr: its standard error.
    """

    level: Float[Array, "*batch"]
    stderr: Float[Array, "*batch"]


def _level(shape: Array, scale: Array, rate: Array, period: Array, threshold: Array) -> Array:
    log_m = jnp.log(period * rate)  # log(m ζ_u)
    return threshold + scale * log_m * _expm1_over(shape * log_m)


@jax.jit
def _return_level(shape, scale, cov, threshold, rate, rate_var, periods) -> tuple[Array, Array]:
    def one(t):
        x = _level(shape, scale, rate, t, threshold)
        g = jnp.stack(jax.grad(_level, argnums=(0, 1))(shape, scale, rate, t, threshold))
        d_rate = jax.grad(_level, argnums=2)(shape, scale, rate, t, threshold)
        return x, jnp.sqrt(g @ cov @ g + d_rate**2 * rate_var)

    return jax.vmap(one)(periods)


def return_level(
    fit: GPDFit,
    threshold: Real[ArrayLike, ""],
    rate_per_block: Real[ArrayLike, ""],
    return_period: Real[ArrayLike, "*batch"],
    *,
    rate_variance: Real[ArrayLike, ""] = 0.0,
) -> ReturnLevel:
    r"""The return level exceeded on average once per ``return_period`` blocks (module docstring; Coles 2001, §4.3.3).

    $$ x_T = u + \frac{\sigma}{\xi}\bigl[(T \lambda)^{\xi} - 1\bigr] \quad(\xi \to 0:\ u + \sigma \log(T\lambda)), $$

    with ``λ`` the mean number of exceedances per block (``n_b ζ_u``: observations per block times the exceedance
    probability; e.g. exceedances per year, with ``T`` in years). In observations, ``m = T n_b`` and
    ``T λ = m ζ_u``. Equivalently ``x_T = u + G⁻¹(1 − 1/(T λ))``, the GPD quantile (for ``T λ ≥ 1``). The standard
    error is the delta method with the fit's covariance and, if given, ``rate_variance`` = ``Var λ̂`` (e.g.
    ``n_b² ζ̂_u (1 − ζ̂_u)/N`` from ``N`` observations), treated as independent of ``(ξ̂, σ̂)``.

    Arguments:
        fit: a :class:`GPDFit` (unbatched).
        threshold: ``u``, the threshold the fit's excesses were taken over.
        rate_per_block: ``λ > 0``.
        return_period: ``T > 0`` in blocks (any shape).
        rate_variance: ``Var λ̂`` (default 0: the rate treated as known).

    Returns:
        A :class:`ReturnLevel` with the shape of ``return_period``.

    Raises:
        ValueError: a concrete non-positive ``return_period`` or ``rate_per_block``, or negative ``rate_variance``.
    """
    period = as_float_array(return_period, "return_period")
    rate = as_float_array(rate_per_block, "rate_per_block")
    rate_var = as_float_array(rate_variance, "rate_variance")
    if is_concrete(period) and np.any(np.asarray(period) <= 0):
        raise ValueError(f"`return_period` must be positive, got {np.asarray(period)}.")
    if is_concrete(rate) and np.any(np.asarray(rate) <= 0):
        raise ValueError(f"`rate_per_block` must be positive, got {np.asarray(rate)}.")
    if is_concrete(rate_var) and np.any(np.asarray(rate_var) < 0):
        raise ValueError(f"`rate_variance` must be non-negative, got {np.asarray(rate_var)}.")
    u = as_float_array(threshold, "threshold")
    x, se = _return_level(fit.shape, fit.scale, fit.cov, u, rate, rate_var, period.reshape(-1))
    return ReturnLevel(x.reshape(period.shape), se.reshape(period.shape))


# ----------------------------------------------------------------------------------------------------------- sampling


def gpd_sample(key: Key, fit: GPDFit, n: int, *, threshold: Real[ArrayLike, ""] = 0.0) -> Float[Array, " n"]:
    """``n`` draws from the fitted GPD tail by inversion, ``y = σ/ξ (U^{−ξ} − 1)`` (module docstring), plus
    ``threshold``: synthetic exceedances (``threshold = 0``: excesses) for extreme scenarios.

    Arguments:
        key: a PRNG key.
        fit: a :class:`GPDFit` (or any object with ``shape`` and ``scale``).
        n: the number of draws (static).
        threshold: added to every draw (``u``, to return observations rather than excesses).

    Raises:
        ValueError: ``n`` not a non-negative integer.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"`n` must be a non-negative Python int, got {n!r}.")
    shape, scale = _check_shape_scale(fit.shape, fit.scale)
    dtype = jnp.result_type(shape, scale, float)
    e = jax.random.exponential(key, (int(n),), dtype=dtype)  # E = −log U
    return threshold + scale * e * _expm1_over(shape * e)
