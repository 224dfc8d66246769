r"""Rare-event probabilities by importance sampling: exponentially tilted proposals with exact likelihood ratios, the
importance-sampling estimator with its standard error and effective sample size, and the variance-reduction factor
against plain Monte Carlo.

**Importance sampling.** To estimate ``μ = E_p[f(X)]`` (e.g. ``f = 1{delay(X) > d}``, so ``μ = P_p(delay > d)``),
draw ``X_i ~ q`` from a proposal ``q`` that puts more mass where ``f`` matters and weight each draw by the exact
likelihood ratio ``w_i = p(X_i)/q(X_i)``:

$$ \hat\mu_{IS} = \frac1n \sum_i w_i f(X_i), \qquad \widehat{\mathrm{se}} = \frac{s_{wf}}{\sqrt n}, \qquad
   \mathrm{ESS} = \frac{(\sum_i w_i)^2}{\sum_i w_i^2}. $$

The estimator is unbiased whenever ``q > 0`` wherever ``p f ≠ 0``; its per-sample variance is
``E_q[w² f²] − μ²``, zero for the optimal ``q* ∝ p |f|``. For a probability the per-sample variance of plain Monte
Carlo is ``μ(1 − μ)``, so the **variance-reduction factor** ``VRF = μ(1 − μ) / Var_q(w f)`` is the number of
Monte-Carlo draws one IS draw is worth (divide by the cost ratio for the factor per CPU-second).

**Exponential tilting.** The tilt of ``p`` by ``θ`` along a statistic ``T`` is
``q_θ(x) = p(x) exp(θ T(x) − K(θ))`` with ``K(θ) = log E_p[e^{θ T(X)}]`` the cumulant generating function, so the
log-weight ``log p − log q_θ = K(θ) − θ T(x)`` is exact. For the families here the tilt stays in the family:

- Bernoulli(π), ``T = x``: ``K = log(1 − π + π e^θ)``, tilted Bernoulli(π e^θ / (1 − π + π e^θ));
- Poisson(λ), ``T = x``: ``K = λ (e^θ − 1)``, tilted Poisson(λ e^θ);
- Exponential(λ), ``T = x``: ``K = log(λ/(λ − θ))`` for ``θ < λ``, tilted Exponential(λ − θ);
- Gamma(k, λ), ``T = x``: ``K = k log(λ/(λ − θ))`` for ``θ < λ``, tilted Gamma(k, λ − θ);
- Normal(μ, σ), ``T = x``: ``K = μθ + σ²θ²/2``, tilted Normal(μ + σ²θ, σ);
- LogNormal(μ, σ), ``T = log x``: ``K = μθ + σ²θ²/2``, tilted LogNormal(μ + σ²θ, σ);
- Beta(a, b), ``T = log x``: ``K = log B(a + θ, b) − log B(a, b)`` for ``θ > −a``, tilted Beta(a + θ, b)

(for a Beta "severity" ``x`` a positive ``θ`` moves mass towards 1; for a LogNormal duration it multiplies the median
by ``e^{σ²θ}``). A scenario is a dictionary of independent components, :class:`ScenarioDistribution`, whose
:meth:`~ScenarioDistribution.tilt` tilts some of them; any proposal with a tractable density works as well, since
only ``log p − log q`` enters the estimator.

**Choosing the tilt.** :func:`cross_entropy_proposal` picks the tilts by the multi-level cross-entropy method (moment
matching of likelihood-ratio-weighted elite draws, level by level up to the rare level). A tilt's weights have finite
variance only when ``K(−θ) < ∞`` (:func:`tilt_weight_second_moment`; a Beta(a, b) tilt needs ``θ < a``);
:class:`DefensiveMixture` ``λ p + (1 − λ) q`` bounds the weights by ``1/λ`` for any ``q``.

References:
    S. Asmussen, P. W. Glynn, *Stochastic Simulation: Algorithms and Analysis*, Springer, 2007, ch. V (variance
    reduction, exponential change of measure, efficiency per unit of work). A. B. Owen, *Monte Carlo theory, methods
    and examples*, 2013, ch. 9 (importance sampling; effective sample size). J. A. Bucklew, *Introduction to Rare
    Event Simulation*, Springer, 2004. R. Y. Rubinstein, D. P. Kroese, *The Cross-Entropy Method*, Springer, 2004.
    T. Hesterberg, "Weighted average importance sampling and defensive mixture distributions", *Technometrics* 37,
    1995.
"""

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import numpyro.distributions as nd
from jaxtyping import Real

from .._checks import as_float_array, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Key

__all__ = [
    "CrossEntropyResult",
    "DefensiveMixture",
    "ISEstimate",
    "ScenarioDistribution",
    "cross_entropy_proposal",
    "exponential_tilt",
    "importance_sampling_estimate",
    "monte_carlo_estimate",
    "tilt_log_normaliser",
    "tilt_statistic",
    "tilt_weight_second_moment",
    "variance_reduction_factor",
]


# ------------------------------------------------------------------------------------------------- exponential tilts


def _family(distribution) -> str:
    families = {
        nd.BernoulliProbs: "bernoulli",
        nd.BernoulliLogits: "bernoulli",
        nd.Poisson: "poisson",
        nd.Exponential: "exponential",
        nd.Gamma: "gamma",
        nd.Normal: "normal",
        nd.LogNormal: "lognormal",
        nd.Beta: "beta",
    }
    family = families.get(type(distribution))
    if family is None:
        raise TypeError(
            "`distribution` must be a numpyro Bernoulli, Poisson, Exponential, Gamma, Normal, LogNormal or Beta "
            f"distribution (a family closed under exponential tilting), got {type(distribution).__name__}."
        )
    return family


def _check_theta(distribution, family: str, theta) -> Array:
    theta = as_float_array(theta, "theta")
    if not is_concrete(theta):
        return theta
    t = np.asarray(theta)
    if family in ("exponential", "gamma") and np.any(t >= np.asarray(distribution.rate)):
        raise ValueError(f"`theta` must be below the rate {np.asarray(distribution.rate)} of the {family}, got {t}.")
    if family == "beta" and np.any(t <= -np.asarray(distribution.concentration1)):
        raise ValueError(
            f"`theta` must exceed −a = {-np.asarray(distribution.concentration1)} for a Beta(a, b), got {t}."
        )
    return theta


def tilt_statistic(distribution: nd.Distribution, x: Real[ArrayLike, "*batch"]) -> Float[Array, "*batch"]:
    """The statistic ``T(x)`` the tilt of ``distribution`` acts on: ``x``, or ``log x`` for LogNormal and Beta.

    Raises:
        TypeError: a family without a closed-form tilt (module docstring table).
    """
    family = _family(distribution)
    x = as_float_array(x, "x")
    return jnp.log(x) if family in ("lognormal", "beta") else x


def tilt_log_normaliser(distribution: nd.Distribution, theta: Float[ArrayLike, ""]) -> Float[Array, "*batch"]:
    """The cumulant generating function ``K(θ) = log E_p[exp(θ T(X))]`` of ``distribution`` (module docstring table).

    Raises:
        TypeError: a family without a closed-form tilt.
        ValueError: ``θ`` outside the domain of ``K`` (``θ ≥ λ`` for Exponential/Gamma, ``θ ≤ −a`` for Beta).
    """
    family = _family(distribution)
    theta = _check_theta(distribution, family, theta)
    return _log_normaliser(distribution, family, theta)


def _log_normaliser(d, family: str, theta):
    if family == "bernoulli":
        return jnp.log1p(d.probs * jnp.expm1(theta))
    if family == "poisson":
        return d.rate * jnp.expm1(theta)
    if family == "exponential":
        return jnp.log(d.rate) - jnp.log(d.rate - theta)
    if family == "gamma":
        return d.concentration * (jnp.log(d.rate) - jnp.log(d.rate - theta))
    if family in ("normal", "lognormal"):
        return d.loc * theta + 0.5 * d.scale**2 * theta**2
    a, b = d.concentration1, d.concentration0  # beta
    return jsp.betaln(a + theta, b) - jsp.betaln(a, b)


def exponential_tilt(distribution: nd.Distribution, theta: Float[ArrayLike, ""]) -> nd.Distribution:
    r"""The exponential tilt ``q_θ(x) = p(x) exp(θ T(x) − K(θ))`` of a numpyro distribution, in the same family.

    Then ``log p(x) − log q_θ(x) = K(θ) − θ T(x)`` exactly (:func:`tilt_log_normaliser`, :func:`tilt_statistic`),
    and ``E_{q_θ}[T] = K'(θ)``. ``θ = 0`` returns ``p`` itself; ``θ > 0`` moves mass up (more likely incidents,
    longer durations, more severe capacity losses). The weight ``w = p/q_θ`` has
    ``E_{q_θ}[w²] = exp(K(θ) + K(−θ))``, finite only when ``−θ`` is in the domain of ``K`` too: for a Beta(a, b)
    that is ``θ < a`` (the weight ``∝ x^{−θ}`` near 0), so a stronger severity tilt leaves the weights with
    infinite variance (the estimator stays unbiased, but its standard error is no longer trustworthy).

    Arguments:
        distribution: ``p``, a numpyro ``Bernoulli``, ``Poisson``, ``Exponential``, ``Gamma``, ``Normal``,
            ``LogNormal`` or ``Beta`` (any batch shape).
        theta: the tilt ``θ`` (a scalar or broadcastable to the batch shape).

    Returns:
        The tilted numpyro distribution ``q_θ``.

    Raises:
        TypeError: a family without a closed-form tilt.
        ValueError: ``θ`` outside the domain of ``K`` (``θ ≥ λ`` for Exponential/Gamma, ``θ ≤ −a`` for Beta).

    Example:
        ```python
        p = numpyro.distributions.Exponential(4.0)   # incident duration, mean 15 min
        q = exponential_tilt(p, 2.0)                 # Exponential(2.0): mean 30 min
        ```
    """
    family = _family(distribution)
    theta = _check_theta(distribution, family, theta)
    d = distribution
    if family == "bernoulli":
        return nd.Bernoulli(logits=d.logits + theta)
    if family == "poisson":
        return nd.Poisson(d.rate * jnp.exp(theta))
    if family == "exponential":
        return nd.Exponential(d.rate - theta)
    if family == "gamma":
        return nd.Gamma(d.concentration, d.rate - theta)
    if family == "normal":
        return nd.Normal(d.loc + d.scale**2 * theta, d.scale)
    if family == "lognormal":
        return nd.LogNormal(d.loc + d.scale**2 * theta, d.scale)
    return nd.Beta(d.concentration1 + theta, d.concentration0)


def _in_domain(d, family: str, theta):
    """Whether ``θ`` lies in the domain of ``K`` (elementwise)."""
    if family in ("exponential", "gamma"):
        return theta < d.rate
    if family == "beta":
        return theta > -d.concentration1
    return jnp.full(jnp.shape(theta), True)


def tilt_weight_second_moment(distribution: nd.Distribution, theta: Float[ArrayLike, "*b"]) -> Float[Array, "*batch"]:
    r"""The second moment ``E_{q_θ}[w²]`` of the weight ``w = p/q_θ`` of an exponential tilt: ``exp(K(θ) + K(−θ))``,
    and ``inf`` where ``−θ`` is outside the domain of ``K`` (the weight then has infinite variance).

    Since ``E_{q_θ}[w²] = E_p[w] = E_p[e^{K(θ) − θ T}]``, the variance ``E_q[w²] − 1`` is finite iff ``K(−θ) < ∞``:
    always for Bernoulli, Poisson, Normal and LogNormal tilts; for Exponential(λ) / Gamma(k, λ) iff ``θ > −λ``; for
    Beta(a, b) iff ``θ < a`` (the weight ``∝ x^{−θ}`` near 0). With infinite-variance weights an importance-sampling
    estimate is still unbiased but converges slower than ``1/√n`` and its sample standard error cannot be trusted;
    :class:`DefensiveMixture` bounds the weights instead. (A trustworthy *standard error* needs a finite fourth
    moment, ``K(−3θ) < ∞``, e.g. ``θ < a/3`` for a Beta.)

    Arguments:
        distribution: ``p`` (a family of :func:`exponential_tilt`).
        theta: the tilt ``θ``, in the domain of ``K``.

    Returns:
        ``E_q[w²]`` per batch element of ``distribution`` (``1`` at ``θ = 0``).

    Raises:
        TypeError: a family without a closed-form tilt.
        ValueError: ``θ`` outside the domain of ``K``.
    """
    family = _family(distribution)
    theta = jnp.broadcast_to(_check_theta(distribution, family, theta), distribution.batch_shape or jnp.shape(theta))
    ok = _in_domain(distribution, family, -theta)
    safe = jnp.where(ok, -theta, 0.0)
    total = _log_normaliser(distribution, family, theta) + _log_normaliser(distribution, family, safe)
    return jnp.where(ok, jnp.exp(total), jnp.inf)


def _tilted_mean(d, family: str, theta) -> Array:
    """``E_{q_θ}[T] = K'(θ)`` elementwise over the batch."""
    theta = jnp.broadcast_to(jnp.asarray(theta, float), d.batch_shape or jnp.shape(theta))
    return jax.jvp(lambda t: _log_normaliser(d, family, t), (theta,), (jnp.ones_like(theta),))[1]


def _tilt_for_mean(d, family: str, m) -> Array:
    """The tilt ``θ`` with ``K'(θ) = m`` (the maximum-likelihood / moment-matching tilt of a weighted sample)."""
    if family == "bernoulli":
        m = jnp.clip(m, 1e-12, 1 - 1e-12)
        return jnp.log(m) - jnp.log1p(-m) - d.logits
    if family == "poisson":
        return jnp.log(m) - jnp.log(d.rate)
    if family == "exponential":
        return d.rate - 1.0 / m
    if family == "gamma":
        return d.rate - d.concentration / m
    if family in ("normal", "lognormal"):
        return (m - d.loc) / d.scale**2
    # beta: ψ(a') − ψ(a' + b) = m is increasing in a' (from −∞ to 0); bisection in log a'
    a, b = d.concentration1, d.concentration0
    m, b = jnp.broadcast_arrays(jnp.asarray(m, float), jnp.asarray(b, float))

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = jsp.digamma(jnp.exp(mid)) - jsp.digamma(jnp.exp(mid) + b) < m
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 200, body, (jnp.full(m.shape, -30.0), jnp.full(m.shape, 30.0)))
    return jnp.exp(0.5 * (lo + hi)) - a


# ------------------------------------------------------------------------------------------------------- scenarios


class ScenarioDistribution(eqx.Module):
    """A distribution over scenarios: independent named components, each a numpyro distribution.

    ``sample(key, n)`` returns a dictionary of arrays with leading axis ``n``; ``log_prob(x)`` is the joint
    log-density ``Σ_c log p_c(x_c)`` (summed over each component's batch and event axes), shape ``(n,)``. The nominal
    model ``p`` and a proposal ``q`` are two instances over the same names, so the exact log-weight of a draw is
    ``p.log_prob(x) − q.log_prob(x)``.

    Arguments:
        components: a dictionary ``name → numpyro distribution``.

    Raises:
        ValueError: an empty dictionary.
        TypeError: a value that is not a numpyro distribution.

    Example:
        ```python
        p = ScenarioDistribution({"occurs": nd.Bernoulli(probs=0.01), "duration_h": nd.Exponential(4.0)})
        q = p.tilt({"occurs": 3.0, "duration_h": 2.0})
        x = q.sample(key, 1000)
        log_w = p.log_prob(x) - q.log_prob(x)
        ```
    """

    components: dict

    def __init__(self, components: dict):
        if not isinstance(components, dict) or not components:
            raise ValueError(f"`components` must be a non-empty dict of numpyro distributions, got {components!r}.")
        for name, value in components.items():
            if not isinstance(value, nd.Distribution):
                raise TypeError(f"`components[{name!r}]` must be a numpyro distribution, got {type(value).__name__}.")
        self.components = dict(components)

    def sample(self, key: Key, n: int) -> dict[str, Array]:
        """``n`` independent scenarios: ``{name: array of shape (n, *batch, *event)}``."""
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
            raise ValueError(f"`n` must be a positive Python int, got {n!r}.")
        keys = jax.random.split(key, len(self.components))
        return {name: d.sample(k, (int(n),)) for (name, d), k in zip(self.components.items(), keys)}

    def log_prob(self, x: dict[str, Array]) -> Float[Array, " n"]:
        """The joint log-density of scenarios ``x`` (a dictionary as from :meth:`sample`), shape ``(n,)``."""
        if not isinstance(x, dict) or set(x) != set(self.components):
            got = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise ValueError(f"`x` must be a dict with keys {sorted(self.components)}, got {got}.")
        total = None
        for name, d in self.components.items():
            lp = d.log_prob(x[name])
            lp = lp.reshape(lp.shape[0], -1).sum(axis=1) if lp.ndim > 1 else lp
            total = lp if total is None else total + lp
        return total

    def tilt(self, thetas: dict) -> "ScenarioDistribution":
        """A copy with the named components exponentially tilted (:func:`exponential_tilt`), the others unchanged.

        Raises:
            ValueError: a name that is not a component.
        """
        unknown = set(thetas) - set(self.components)
        if unknown:
            raise ValueError(f"`thetas` names unknown components {sorted(unknown)}; known: {sorted(self.components)}.")
        return ScenarioDistribution(
            {name: exponential_tilt(d, thetas[name]) if name in thetas else d for name, d in self.components.items()}
        )


class DefensiveMixture(eqx.Module):
    r"""The defensive mixture proposal ``q_λ = λ p + (1 − λ) q`` of a nominal model ``p`` and a proposal ``q``.

    Its weights ``p/q_λ ≤ 1/λ`` are bounded whatever ``q`` is, so ``w f`` has finite variance for any bounded ``f``
    (Hesterberg 1995; Owen 2013, §9.11), at the price of spending a fraction ``λ`` of the draws on ``p``. Same
    interface as :class:`ScenarioDistribution`: ``sample(key, n)`` and the exact mixture density ``log_prob(x) =
    logaddexp(log λ + log p(x), log(1 − λ) + log q(x))``.

    Arguments:
        nominal: ``p``, a :class:`ScenarioDistribution`.
        proposal: ``q``, a :class:`ScenarioDistribution` over the same component names (e.g. ``p.tilt(...)``).
        weight: ``λ ∈ (0, 1)``, the share of ``p``.

    Raises:
        TypeError: ``nominal`` or ``proposal`` not a :class:`ScenarioDistribution`.
        ValueError: different component names, or ``weight`` outside ``(0, 1)``.

    Example:
        ```python
        q = DefensiveMixture(p, p.tilt({"severity": 5.0}), 0.1)
        x = q.sample(key, 1000)
        log_w = p.log_prob(x) - q.log_prob(x)     # <= log(1/0.1)
        ```
    """

    nominal: ScenarioDistribution
    proposal: ScenarioDistribution
    weight: float

    def __init__(self, nominal: ScenarioDistribution, proposal: ScenarioDistribution, weight: float):
        for name, value in (("nominal", nominal), ("proposal", proposal)):
            if not isinstance(value, ScenarioDistribution):
                raise TypeError(f"`{name}` must be a ScenarioDistribution, got {type(value).__name__}.")
        if list(nominal.components) != list(proposal.components):
            raise ValueError(
                f"`proposal` must have the components of `nominal` {list(nominal.components)}, "
                f"got {list(proposal.components)}."
            )
        if not (isinstance(weight, int | float) and 0 < weight < 1):
            raise ValueError(f"`weight` must be a number in (0, 1), got {weight!r}.")
        self.nominal = nominal
        self.proposal = proposal
        self.weight = float(weight)

    def sample(self, key: Key, n: int) -> dict[str, Array]:
        """``n`` independent scenarios, each from ``p`` with probability ``λ`` and from ``q`` otherwise."""
        k_pick, k_p, k_q = jax.random.split(key, 3)
        xp, xq = self.nominal.sample(k_p, n), self.proposal.sample(k_q, n)
        pick = jax.random.bernoulli(k_pick, self.weight, (int(n),))
        return {name: jnp.where(pick.reshape((-1,) + (1,) * (xp[name].ndim - 1)), xp[name], xq[name]) for name in xp}

    def log_prob(self, x: dict[str, Array]) -> Float[Array, " n"]:
        """The mixture log-density of scenarios ``x``, shape ``(n,)``."""
        return jnp.logaddexp(
            math.log(self.weight) + self.nominal.log_prob(x), math.log1p(-self.weight) + self.proposal.log_prob(x)
        )


# ------------------------------------------------------------------------------------------------------- estimators


class ISEstimate(NamedTuple):
    """An (importance-sampling) Monte-Carlo estimate of ``E_p[f]``, per column of ``f``.

    Attributes:
        estimate: ``μ̂ = mean(w f)``.
        stderr: its standard error ``s_{wf}/√n``.
        variance: the per-sample variance ``s²_{wf}`` (unbiased sample variance of ``w f``).
        relative_error: ``stderr / μ̂`` (``inf`` when ``μ̂ = 0``).
        ess: the effective sample size ``(Σ w)² / Σ w²`` of the weights (for a rare event this is small even for
            a good proposal, which is not meant to represent ``p`` away from the event).
        ess_values: ``(Σ |w f|)² / Σ (w f)²`` per column: the effective number of draws behind ``μ̂`` (for an
            indicator ``f``, the ESS of the weights on the event; ``(1 + relative variance of w f | f ≠ 0)⁻¹`` times
            the number of hits).
        weight_mean: ``mean(w)``, which should be ``1 ± k·weight_stderr`` for a correct ``q``.
        weight_stderr: the standard error of ``weight_mean``.
        n: the number of draws.
    """

    estimate: Float[Array, "*k"]
    stderr: Float[Array, "*k"]
    variance: Float[Array, "*k"]
    relative_error: Float[Array, "*k"]
    ess: Float[Array, ""]
    ess_values: Float[Array, "*k"]
    weight_mean: Float[Array, ""]
    weight_stderr: Float[Array, ""]
    n: int


def importance_sampling_estimate(
    values: Real[ArrayLike, " n_values *k"] | Bool[ArrayLike, " n_values *k"],
    log_p: Float[ArrayLike, " n_p"],
    log_q: Float[ArrayLike, " n_q"],
) -> ISEstimate:
    r"""The importance-sampling estimate of ``E_p[f(X)]`` from draws ``X_i ~ q`` (module docstring).

    $$ w_i = \exp(\log p(X_i) - \log q(X_i)), \quad \hat\mu = \frac1n\sum_i w_i f_i, \quad
       \widehat{\mathrm{se}} = \sqrt{\frac{1}{n(n-1)}\sum_i (w_i f_i - \hat\mu)^2}. $$

    Unbiased (not self-normalised): ``log p`` and ``log q`` must be the *normalised* log-densities. With
    ``log_p = log_q`` it is plain Monte Carlo (:func:`monte_carlo_estimate`). Jittable.

    Arguments:
        values: ``f(X_i)``, shape ``(n,)`` or ``(n, k)`` (e.g. indicators of ``k`` thresholds).
        log_p: ``log p(X_i)`` under the nominal model, shape ``(n,)``.
        log_q: ``log q(X_i)`` under the proposal the draws came from, shape ``(n,)``.

    Returns:
        An :class:`ISEstimate` (fields of shape ``(k,)`` for 2-D ``values``).

    Raises:
        ValueError: mismatched lengths, fewer than 2 draws, or a (concrete) ``log_q = −∞`` (a draw ``q`` cannot make).

    Example:
        ```python
        x = q.sample(key, 10_000)
        est = importance_sampling_estimate(delay(x) > d, p.log_prob(x), q.log_prob(x))
        est.estimate, est.stderr, variance_reduction_factor(est)
        ```
    """
    values = as_float_array(values, "values")
    log_p = as_float_array(log_p, "log_p", ndim=1)
    log_q = as_float_array(log_q, "log_q", ndim=1)
    if values.ndim not in (1, 2):
        raise ValueError(f"`values` must have shape (n,) or (n, k), got shape {tuple(values.shape)}.")
    n = values.shape[0]
    if log_p.shape[0] != n or log_q.shape[0] != n:
        raise ValueError(
            f"`values`, `log_p` and `log_q` must have the same length, got {n}, {log_p.shape[0]}, {log_q.shape[0]}."
        )
    if n < 2:
        raise ValueError(f"need at least 2 draws for a standard error, got {n}.")
    if is_concrete(log_q) and not np.all(np.isfinite(np.asarray(log_q))):
        raise ValueError("`log_q` must be finite at every draw (each draw must be possible under q).")
    w = jnp.exp(log_p - log_q)
    wf = values * (w if values.ndim == 1 else w[:, None])
    mean = wf.mean(axis=0)
    var = jnp.sum((wf - mean) ** 2, axis=0) / (n - 1)
    se = jnp.sqrt(var / n)
    rel = jnp.where(mean != 0, se / jnp.abs(jnp.where(mean != 0, mean, 1.0)), jnp.inf)
    ess = w.sum() ** 2 / jnp.sum(w**2)
    sq = jnp.sum(wf**2, axis=0)
    ess_values = jnp.where(sq > 0, jnp.sum(jnp.abs(wf), axis=0) ** 2 / jnp.where(sq > 0, sq, 1.0), 0.0)
    w_mean = w.mean()
    w_se = jnp.sqrt(jnp.sum((w - w_mean) ** 2) / (n - 1) / n)
    return ISEstimate(mean, se, var, rel, ess, ess_values, w_mean, w_se, int(n))


def monte_carlo_estimate(values: Real[ArrayLike, " n *k"] | Bool[ArrayLike, " n *k"]) -> ISEstimate:
    """Plain Monte-Carlo estimate of ``E_p[f]`` from draws of ``p`` (all weights 1), as an :class:`ISEstimate`."""
    values = as_float_array(values, "values")
    if values.ndim not in (1, 2):
        raise ValueError(f"`values` must have shape (n,) or (n, k), got shape {tuple(values.shape)}.")
    zero = jnp.zeros((values.shape[0],), values.dtype)
    return importance_sampling_estimate(values, zero, zero)


def variance_reduction_factor(
    result: ISEstimate,
    mc_variance: Float[ArrayLike, "*k"] | None = None,
    *,
    cost_ratio: float = 1.0,
) -> Float[Array, "*k"]:
    """``VRF = Var_MC / Var_IS`` per sample, divided by ``cost_ratio``: how many plain Monte-Carlo draws one
    importance-sampling draw is worth (per unit of work when ``cost_ratio`` is the cost of an IS draw over that of an
    MC draw; Asmussen & Glynn 2007, §V.1).

    Arguments:
        result: the :class:`ISEstimate` of the importance sampler.
        mc_variance: the per-sample variance of plain Monte Carlo; default ``μ(1 − μ)`` with ``μ`` =
            ``result.estimate`` (the Bernoulli variance, for a probability; pass the true ``p`` or a Monte-Carlo
            estimate's ``variance`` when known).
        cost_ratio: cost of one IS draw / cost of one MC draw (e.g. measured seconds per draw), default 1.

    Returns:
        The variance-reduction factor (``inf`` where the IS variance is zero).

    Raises:
        ValueError: a non-positive ``cost_ratio``.
    """
    if not cost_ratio > 0:
        raise ValueError(f"`cost_ratio` must be positive, got {cost_ratio!r}.")
    if mc_variance is None:
        mc_variance = result.estimate * (1.0 - result.estimate)
    mc_variance = as_float_array(mc_variance, "mc_variance")
    var = result.variance
    return jnp.where(var > 0, mc_variance / jnp.where(var > 0, var, 1.0), jnp.inf) / cost_ratio


# --------------------------------------------------------------------------------------------------- cross-entropy


class CrossEntropyResult(NamedTuple):
    """The proposal chosen by :func:`cross_entropy_proposal`.

    Attributes:
        proposal: the final proposal, ``nominal.tilt(thetas)``, or its :class:`DefensiveMixture` with ``nominal``.
        thetas: the tilts ``{component: θ}`` of the final proposal.
        levels: the level ``γ_t`` of each iteration (the last one equals ``level`` when converged).
        elite_ess: the effective sample size of each iteration's weighted elite sample.
        n_iter: the number of iterations run.
        n_evaluations: the number of ``score_fn`` evaluations (``n_iter · n_per_iter``, the pilot's cost).
        converged: whether the level reached ``level``.
    """

    proposal: "ScenarioDistribution | DefensiveMixture"
    thetas: dict
    levels: list
    elite_ess: list
    n_iter: int
    n_evaluations: int
    converged: bool


def _ce_proposal(nominal, thetas, defensive):
    q = nominal.tilt(thetas)
    return DefensiveMixture(nominal, q, defensive) if defensive > 0 else q


@eqx.filter_jit
def _ce_draw(key, nominal, thetas, n, defensive):
    """Draws of the current cross-entropy proposal and their log-weights ``log p − log q``."""
    sampler = _ce_proposal(nominal, thetas, defensive)
    x = sampler.sample(key, n)
    return x, nominal.log_prob(x) - sampler.log_prob(x)


@eqx.filter_jit
def _ce_update(x, w, thetas, nominal, components, smoothing):
    """Moment matching of the weighted elite sample ``w`` (zero off the elite), smoothed in the mean parametrisation."""
    new, m_hats = {}, {}
    for c in components:
        d = nominal.components[c]
        fam = _family(d)
        m_hats[c] = jnp.tensordot(w, tilt_statistic(d, x[c]), axes=(0, 0)) / w.sum()
        m = smoothing * m_hats[c] + (1 - smoothing) * _tilted_mean(d, fam, thetas[c])
        new[c] = _tilt_for_mean(d, fam, m)
    return new, m_hats


def cross_entropy_proposal(
    key: Key,
    nominal: ScenarioDistribution,
    score_fn: Callable,
    level: float,
    n_per_iter: int,
    *,
    rho: float = 0.1,
    max_iter: int = 20,
    components: Sequence[str] | None = None,
    smoothing: float = 0.7,
    defensive: float = 0.0,
) -> CrossEntropyResult:
    r"""Choose exponential tilts of ``nominal`` for estimating ``P_p(S(X) ≥ level)`` by the multi-level
    cross-entropy method.

    The zero-variance proposal is ``g*(x) = p(x) 1{S(x) ≥ level} / P``; within the tilts ``q_θ`` (one ``θ`` per
    tilted component, :func:`exponential_tilt`) the one closest to ``g*`` in Kullback–Leibler divergence solves
    ``max_θ E_p[1{S ≥ γ} log q_θ(X)]``, whose solution for an exponential family is **moment matching**:
    ``E_{q_θ}[T_c] = K_c'(θ_c) = E_p[T_c(X) | S(X) ≥ γ]`` for every component ``c``. The rare event is reached in
    stages: at iteration ``t``, draw ``n_per_iter`` scenarios from the current proposal ``q_t``, set the level
    ``γ_t = min(level, (1 − ρ)-quantile of the scores)``, and match the moments of the *elite* draws
    ``{S ≥ γ_t}`` weighted by the exact likelihood ratio ``w = p/q_t``:

    $$ \hat m_c = \frac{\sum_{i \in E} w_i T_c(X_i)}{\sum_{i \in E} w_i}, \qquad
       m_c^{(t+1)} = α \hat m_c + (1 − α) m_c^{(t)}, \qquad θ_c^{(t+1)} = K_c'^{-1}(m_c^{(t+1)}) $$

    (``α`` = ``smoothing``, in the mean parametrisation; ``K'^{-1}`` in closed form, by bisection for a Beta). It
    stops after the first iteration whose level reaches ``level`` (the update of that iteration uses all draws with
    ``S ≥ level``). When many scores tie at the quantile (e.g. zero delay without an incident) the elite set is the
    top ``⌈ρ n⌉`` draws, ties broken by sample order, so the level still rises.

    The weights of the final tilt must have finite variance (:func:`tilt_weight_second_moment`): a moment-matched
    Beta severity tilt beyond ``θ = a`` does not. Pass ``defensive = λ > 0`` to sample every iteration from, and
    return, the :class:`DefensiveMixture` ``λ p + (1 − λ) q_θ`` (weights ``≤ 1/λ``); otherwise such a tilt raises.

    The pilot draws are spent on choosing ``q``: estimate ``P`` with *fresh* draws from ``result.proposal``
    (:func:`importance_sampling_estimate`) so the estimate stays unbiased, and count ``n_evaluations`` in its cost.

    Arguments:
        key: PRNG key (split once per iteration).
        nominal: ``p``, a :class:`ScenarioDistribution`.
        score_fn: ``x → S(x)``, a dictionary of ``(n, ...)`` arrays (as from ``sample``) to scores of shape ``(n,)``
            (host code is fine, e.g. a batched simulator).
        level: the rare-event level ``d`` (``S ≥ d``).
        n_per_iter: draws per iteration.
        rho: the elite fraction ``ρ ∈ (0, 1)``.
        max_iter: at most this many iterations.
        components: names of the components to tilt; default every component of a tiltable family.
        smoothing: ``α ∈ (0, 1]``; below 1 keeps a Bernoulli's probability off 0 and 1.
        defensive: ``λ ∈ [0, 1)``; ``0`` samples from the tilt alone.

    Returns:
        A :class:`CrossEntropyResult` (``converged`` False when ``max_iter`` iterations did not reach ``level``).

    Raises:
        ValueError: bad arguments, scores of the wrong shape or not finite, or a tilt with infinite-variance weights
            while ``defensive = 0`` (the message names the component).
        TypeError: a named component of a family without a closed-form tilt.

    Example:
        ```python
        p = ScenarioDistribution({f"x{i}": nd.Exponential(1.0) for i in range(5)})
        ce = cross_entropy_proposal(key, p, lambda x: sum(x.values()), 30.0, 2000)
        x = ce.proposal.sample(key2, 10_000)
        est = importance_sampling_estimate(sum(x.values()) >= 30.0, p.log_prob(x), ce.proposal.log_prob(x))
        ```

    References:
        R. Y. Rubinstein, D. P. Kroese, *The Cross-Entropy Method*, Springer, 2004, ch. 3 (multi-level CE for rare
        events, natural exponential families, smoothing). P.-T. de Boer, D. P. Kroese, S. Mannor, R. Y. Rubinstein,
        "A tutorial on the cross-entropy method", *Ann. Oper. Res.* 134, 2005. T. Hesterberg, "Weighted average
        importance sampling and defensive mixture distributions", *Technometrics* 37, 1995.
    """
    if not isinstance(nominal, ScenarioDistribution):
        raise TypeError(f"`nominal` must be a ScenarioDistribution, got {type(nominal).__name__}.")
    if not callable(score_fn):
        raise TypeError(f"`score_fn` must be callable, got {type(score_fn).__name__}.")
    if not (isinstance(level, int | float | np.floating) and math.isfinite(level)):
        raise ValueError(f"`level` must be a finite number, got {level!r}.")
    if not isinstance(n_per_iter, int | np.integer) or isinstance(n_per_iter, bool) or n_per_iter < 2:
        raise ValueError(f"`n_per_iter` must be an integer >= 2, got {n_per_iter!r}.")
    if not 0 < rho < 1:
        raise ValueError(f"`rho` must lie in (0, 1), got {rho!r}.")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive int, got {max_iter!r}.")
    if not 0 < smoothing <= 1:
        raise ValueError(f"`smoothing` must lie in (0, 1], got {smoothing!r}.")
    if not 0 <= defensive < 1:
        raise ValueError(f"`defensive` must lie in [0, 1), got {defensive!r}.")
    if components is None:
        tiltable = []
        for name, d in nominal.components.items():
            try:
                _family(d)
            except TypeError:
                continue
            tiltable.append(name)
        components = tiltable
    components = list(components)
    unknown = set(components) - set(nominal.components)
    if unknown or not components:
        known = sorted(nominal.components)
        raise ValueError(f"`components` must name components of `nominal` {known}, got {components}.")
    for c in components:
        _family(nominal.components[c])  # TypeError for a family without a tilt

    level = float(level)
    thetas = {c: jnp.asarray(np.zeros(nominal.components[c].batch_shape)) for c in components}
    k_elite = math.ceil(rho * n_per_iter)
    levels, ess_list, converged = [], [], False

    def draw(key, th):
        return _ce_draw(key, nominal, th, int(n_per_iter), float(defensive))

    def update(x, w, th):
        return _ce_update(x, w, th, nominal, tuple(components), float(smoothing))

    keys = jax.random.split(key, max_iter)
    for t in range(max_iter):
        x, log_w = draw(keys[t], thetas)
        s = np.asarray(score_fn(x), dtype=float)
        if s.shape != (n_per_iter,) or not np.all(np.isfinite(s)):
            raise ValueError(f"`score_fn` must return {n_per_iter} finite scores, got shape {s.shape}.")
        log_w = np.asarray(log_w, dtype=float)
        order = np.argsort(-s, kind="stable")
        gamma = s[order[k_elite - 1]]
        if gamma >= level:
            elite, converged = s >= level, True
        else:
            elite = np.zeros(n_per_iter, bool)
            elite[order[:k_elite]] = True
        levels.append(min(float(gamma), level))
        w = np.where(elite, np.exp(log_w - log_w[elite].max()), 0.0)
        ess_list.append(float(w.sum() ** 2 / np.sum(w**2)))
        thetas, m_hats = update(x, jnp.asarray(w), thetas)
        thetas = {c: jnp.asarray(np.asarray(v)) for c, v in thetas.items()}  # strong types: no retracing
        for c in components:
            d, theta = nominal.components[c], np.asarray(thetas[c])
            if not np.all(np.isfinite(theta)):
                raise ValueError(
                    f"the cross-entropy tilt of component {c!r} is not finite (elite mean {np.asarray(m_hats[c])}); "
                    "use `smoothing` < 1 or more draws (`n_per_iter`)."
                )
            if defensive == 0 and not np.all(np.isfinite(np.asarray(tilt_weight_second_moment(d, theta)))):
                raise ValueError(
                    f"the cross-entropy tilt θ = {theta} of component {c!r} ({type(d).__name__}) gives "
                    "importance weights with infinite variance (E_q[w²] = ∞, see `tilt_weight_second_moment`); "
                    "pass `defensive` > 0 (a defensive mixture, weights <= 1/defensive) or leave the component out "
                    "of `components`."
                )
        if converged:
            break
    n_iter = t + 1
    n_eval = n_iter * int(n_per_iter)
    proposal = _ce_proposal(nominal, thetas, defensive)
    return CrossEntropyResult(proposal, thetas, levels, ess_list, n_iter, n_eval, converged)
