r"""Prognostics: the posterior of a degradation rate and the remaining useful life (RUL) it implies.

The degradation twin is a Wiener process with drift sampled at times ``t_k``:

$$ x_k = x_{k-1} + \alpha \Delta_k + \eta_k, \qquad \eta_k \sim N(0, \sigma^2 \Delta_k), $$

so the increments ``d_k = x_k - x_{k-1}`` are independent and the likelihood depends on them only through the
sufficient statistics (:class:`IncrementStats`) ``n``, ``T = Σ Δ_k``, ``S = Σ d_k`` and ``Q = Σ d_k² / Δ_k``:

$$ \log p(d \mid \alpha, \sigma) = -\tfrac{n}{2} \log(2\pi\sigma^2) - \tfrac12 \textstyle\sum_k \log \Delta_k
   - \frac{Q - 2 \alpha S + \alpha^2 T}{2 \sigma^2}. $$

Two conjugate priors give the posterior in closed form (``prior.posterior(stats)`` is again a prior of the same
family, so an online twin updates it at each new measurement for the cost of four additions):

- :class:`RateNormal` — ``σ`` known, ``α ~ N(m, s²)``: ``α | d ~ N(m', s'²)`` with ``1/s'² = 1/s² + T/σ²`` and
  ``m' = s'² (m/s² + S/σ²)``;
- :class:`NormalInverseGamma` — ``σ² ~ InvGamma(a, b)``, ``α | σ² ~ N(m, σ²/κ)``: ``κ' = κ + T``,
  ``m' = (κ m + S)/κ'``, ``a' = a + n/2``, ``b' = b + (Q + κ m² − κ' m'²)/2``; the marginal of ``α`` is Student-t
  with ``2a'`` degrees of freedom, location ``m'`` and scale ``√(b'/(a' κ'))``.

The same prior and likelihood are a numpyro model (:func:`degradation_model`), fitted by :func:`svi_posterior`
(numpyro SVI with an autoguide) and :func:`nuts_posterior` (blackjax NUTS on numpyro's potential), so the two
approximate methods can be checked against the exact posterior (:class:`PosteriorMoments`).

The remaining useful life from level ``x`` at time ``t`` is the first passage of the threshold ``x_fail``, predicted
by Monte-Carlo rollouts of the twin with ``(α, σ)`` drawn from the posterior (:func:`first_passage_times`,
:func:`predict_rul`). The failure time of a sampled path is where its piecewise-linear interpolation reaches
``x_fail`` (:func:`failure_time`): a continuous quantity, so that predictive intervals are not inflated by ties on the
sampling grid. :func:`prognostic_init` / :func:`prognostic_step` are the online pair (conjugate update, then
rollouts) and :func:`rul_online` scans them over a unit's measurements. In continuous time the first passage from
``x`` for fixed ``(α, σ)`` is inverse-Gaussian with mean ``(x_fail − x)/α`` and shape ``(x_fail − x)²/σ²``
(:func:`inverse_gaussian_cdf`), a check on the rollouts.

References:
    Chapter ``000_…``, "Prognostics and Health Management" (the drift model, a variational posterior over ``α``, RUL).
    X.-S. Si, W. Wang, C.-H. Hu, D.-H. Zhou, "Remaining useful life estimation – a review on the statistical data
    driven approaches", Eur. J. Oper. Res. 213(1), 2011, §4.1. K. P. Murphy, "Conjugate Bayesian analysis of the
    Gaussian distribution", 2007, §6 (Normal–inverse-gamma). M. Broadie, P. Glasserman, S. Kou, "A continuity
    correction for discrete barrier options", Math. Finance 7(4), 1997 (the overshoot of a sampled barrier crossing).
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import constrain_fn, potential_energy

from .._checks import as_float_array, is_concrete
from .._types import Array, ArrayLike, Float, Key, Scalar
from ..calibrate.bayes import rhat, run_nuts

GUIDES = {"normal": AutoNormal, "mvn": AutoMultivariateNormal}


def _positive(value, name: str) -> None:
    if is_concrete(value) and not np.all(np.asarray(value) > 0):  # numpy: a jnp op would be staged under jit
        raise ValueError(f"`{name}` must be > 0, got {value!r}.")


def _gamma(key: Key, shape: Scalar, n: int, proposals: int = 8) -> Float[Array, " n"]:
    """``n`` draws of ``Gamma(shape, 1)`` by Marsaglia–Tsang with ``proposals`` candidates per draw, all evaluated at
    once (the first accepted one is kept), and Stuart's boost ``G(a) = G(a + 1) U^{1/a}`` for ``a < 1``.

    Why not ``jax.random.gamma``: its per-element rejection loop costs seconds of compilation on a CPU, in every
    program that samples a posterior. Each candidate is accepted with probability ≥ 0.95 (≥ 0.99 for ``a ≥ 2``), so
    all ``proposals = 8`` are rejected with probability < 4e-11 (the last candidate is then kept).

    References:
        G. Marsaglia, W. W. Tsang, "A simple method for generating gamma variables", ACM TOMS 26(3), 2000.
    """
    k_x, k_u, k_boost = jax.random.split(key, 3)
    a = jnp.asarray(shape, float)
    boosted = a < 1
    d = jnp.where(boosted, a + 1, a) - 1 / 3
    c = 1 / jnp.sqrt(9 * d)
    x = jax.random.normal(k_x, (proposals, n), a.dtype)
    v = (1 + c * x) ** 3
    log_u = jnp.log(jax.random.uniform(k_u, (proposals, n), a.dtype))
    ok = (v > 0) & (log_u < 0.5 * x**2 + d - d * v + d * jnp.log(jnp.where(v > 0, v, 1.0)))
    first = jnp.argmax(ok.at[-1].set(True), axis=0)
    g = d * jnp.take_along_axis(v, first[None], 0)[0]
    boost = jax.random.uniform(k_boost, (n,), a.dtype) ** (1 / a)
    return jnp.where(boosted, g * boost, g)


# ---------------------------------------------------------------------------------------------------------------------
# sufficient statistics


class IncrementStats(eqx.Module):
    """Sufficient statistics of degradation increments: ``count`` ``n``, ``duration`` ``T = Σ Δ_k``, ``total``
    ``S = Σ d_k`` and ``sum_sq`` ``Q = Σ d_k²/Δ_k`` (scalars). :meth:`add` is the online update."""

    count: Scalar
    duration: Scalar
    total: Scalar
    sum_sq: Scalar

    @classmethod
    def empty(cls) -> "IncrementStats":
        zero = jnp.zeros(())
        return cls(zero, zero, zero, zero)

    @classmethod
    def from_increments(cls, increments: Float[ArrayLike, "..."], dt: Float[ArrayLike, "..."]) -> "IncrementStats":
        """Statistics of the increments ``d_k`` over intervals ``Δ_k`` (a scalar ``dt`` is shared).

        Raises:
            ValueError: naming ``increments`` (not 1-D) or ``dt`` (not positive, or of another length).
        """
        d = as_float_array(increments, "increments", ndim=1)
        dt = as_float_array(dt, "dt")
        if dt.ndim > 1 or (dt.ndim == 1 and dt.shape != d.shape):
            raise ValueError(f"`dt` must be a scalar or have shape {d.shape}, got {tuple(dt.shape)}.")
        _positive(dt, "dt")
        dt = jnp.broadcast_to(dt, d.shape)
        return cls(jnp.asarray(d.shape[0], d.dtype), jnp.sum(dt), jnp.sum(d), jnp.sum(d**2 / dt))

    @classmethod
    def from_path(cls, levels: Float[ArrayLike, "..."], times: Float[ArrayLike, "..."]) -> "IncrementStats":
        """Statistics of a measured path ``x_0, …, x_K`` at times ``t_0 < … < t_K``."""
        x = as_float_array(levels, "levels", ndim=1)
        t = as_float_array(times, "times", ndim=1)
        if t.shape != x.shape:
            raise ValueError(f"`times` must have the shape of `levels` {x.shape}, got {tuple(t.shape)}.")
        return cls.from_increments(jnp.diff(x), jnp.diff(t))

    def add(self, increment: Scalar, dt: Scalar) -> "IncrementStats":
        """The statistics with one more increment ``d`` over ``Δ`` (pure; jittable)."""
        return IncrementStats(
            self.count + 1, self.duration + dt, self.total + increment, self.sum_sq + increment**2 / dt
        )


# ---------------------------------------------------------------------------------------------------------------------
# conjugate priors (each also a numpyro prior)


class PosteriorMoments(eqx.Module):
    """Mean and standard deviation of the rate ``α`` and the noise scale ``σ`` (per unit time / per √time)."""

    alpha_mean: Scalar
    alpha_sd: Scalar
    sigma_mean: Scalar
    sigma_sd: Scalar

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("alpha_mean", "alpha_sd", "sigma_mean", "sigma_sd")}


class RateNormal(eqx.Module):
    """Known noise scale ``σ = noise_sd``, Normal prior ``α ~ N(mean, sd²)`` on the degradation rate.

    numpyro sites: ``alpha_unit ~ N(0, 1)`` (the rate in prior-standard units, so that optimisers see an O(1)
    parameter), deterministic ``alpha = mean + sd · alpha_unit`` and ``sigma``.

    Example:
        ```python
        prior = RateNormal(0.01, 0.003, noise_sd=0.02)
        post = prior.posterior(IncrementStats.from_path(xs, ts))
        post.moments().alpha_mean
        ```
    """

    mean: Scalar
    sd: Scalar
    noise_sd: Scalar

    def __check_init__(self):
        _positive(self.sd, "sd")
        _positive(self.noise_sd, "noise_sd")

    def posterior(self, stats: IncrementStats) -> "RateNormal":
        """The exact posterior given the increments' statistics (a ``RateNormal``)."""
        precision = 1 / self.sd**2 + stats.duration / self.noise_sd**2
        mean = (self.mean / self.sd**2 + stats.total / self.noise_sd**2) / precision
        return RateNormal(mean, 1 / jnp.sqrt(precision), self.noise_sd)

    def moments(self) -> PosteriorMoments:
        return PosteriorMoments(jnp.asarray(self.mean), jnp.asarray(self.sd), jnp.asarray(self.noise_sd), jnp.zeros(()))

    def sample(self, key: Key, n: int) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
        """``n`` draws of ``(α, σ)``."""
        alpha = self.mean + self.sd * jax.random.normal(key, (n,))
        return alpha, jnp.broadcast_to(jnp.asarray(self.noise_sd, alpha.dtype), (n,))

    def sample_sites(self) -> tuple[Scalar, Scalar]:
        """Inside a numpyro model: the prior's sample sites; returns ``(α, σ)``."""
        unit = numpyro.sample("alpha_unit", dist.Normal(0.0, 1.0))
        alpha = numpyro.deterministic("alpha", self.mean + self.sd * unit)
        return alpha, numpyro.deterministic("sigma", jnp.asarray(self.noise_sd))

    def unconstrained(self, alpha: Float[ArrayLike, "*batch"], sigma: Float[ArrayLike, "*batch"]) -> dict:
        """numpyro's unconstrained site values for ``(α, σ)`` (NUTS starting points)."""
        return {"alpha_unit": (alpha - self.mean) / self.sd}

    def init_values(self) -> dict:
        """Site values at the prior mean (where SVI starts)."""
        return {"alpha_unit": jnp.zeros(())}


class NormalInverseGamma(eqx.Module):
    """Unknown noise: ``σ² ~ InvGamma(shape, scale)`` and ``α | σ² ~ N(mean, σ²/kappa)`` (``kappa`` in time units:
    the prior is worth ``kappa`` time units of data on ``α`` and ``2 · shape`` increments on ``σ²``).

    numpyro sites: ``sigma2``, ``alpha_unit ~ N(0, σ²/(kappa c²))`` with the fixed scale ``c = √(scale/(shape κ))``,
    deterministic ``alpha = mean + c · alpha_unit`` and ``sigma = √sigma2``.
    """

    mean: Scalar
    kappa: Scalar
    shape: Scalar
    scale: Scalar

    def __check_init__(self):
        for name in ("kappa", "shape", "scale"):
            _positive(getattr(self, name), name)

    def posterior(self, stats: IncrementStats) -> "NormalInverseGamma":
        """The exact posterior given the increments' statistics (a ``NormalInverseGamma``)."""
        kappa = self.kappa + stats.duration
        mean = (self.kappa * self.mean + stats.total) / kappa
        shape = self.shape + stats.count / 2
        scale = self.scale + 0.5 * (stats.sum_sq + self.kappa * self.mean**2 - kappa * mean**2)
        return NormalInverseGamma(mean, kappa, shape, scale)

    def moments(self) -> PosteriorMoments:
        """Exact moments (need ``shape > 1``): ``α`` is Student-t, ``σ`` the root of an inverse-gamma variable,
        ``E σ = √b Γ(a − ½)/Γ(a)``."""
        a, b = jnp.asarray(self.shape), jnp.asarray(self.scale)
        alpha_sd = jnp.sqrt(b / (self.kappa * (a - 1)))
        sigma_mean = jnp.sqrt(b) * jnp.exp(jsp.gammaln(a - 0.5) - jsp.gammaln(a))
        return PosteriorMoments(jnp.asarray(self.mean), alpha_sd, sigma_mean, jnp.sqrt(b / (a - 1) - sigma_mean**2))

    def sample(self, key: Key, n: int) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
        """``n`` draws of ``(α, σ)``."""
        k1, k2 = jax.random.split(key)
        sigma2 = self.scale / _gamma(k1, self.shape, n)
        alpha = self.mean + jnp.sqrt(sigma2 / self.kappa) * jax.random.normal(k2, (n,))
        return alpha, jnp.sqrt(sigma2)

    def _unit(self):
        return jnp.sqrt(self.scale / (self.shape * self.kappa))

    def sample_sites(self) -> tuple[Scalar, Scalar]:
        """Inside a numpyro model: the prior's sample sites; returns ``(α, σ)``."""
        sigma2 = numpyro.sample("sigma2", dist.InverseGamma(self.shape, self.scale))
        c = self._unit()
        unit = numpyro.sample("alpha_unit", dist.Normal(0.0, jnp.sqrt(sigma2 / self.kappa) / c))
        return numpyro.deterministic("alpha", self.mean + c * unit), numpyro.deterministic("sigma", jnp.sqrt(sigma2))

    def unconstrained(self, alpha: Float[ArrayLike, "*batch"], sigma: Float[ArrayLike, "*batch"]) -> dict:
        """numpyro's unconstrained site values for ``(α, σ)`` (NUTS starting points)."""
        return {"alpha_unit": (alpha - self.mean) / self._unit(), "sigma2": 2 * jnp.log(sigma)}

    def init_values(self) -> dict:
        """Site values at the prior mean of ``α`` and the prior mode of ``σ²`` (where SVI starts)."""
        return {"alpha_unit": jnp.zeros(()), "sigma2": jnp.asarray(self.scale / (self.shape + 1))}


Prior = RateNormal | NormalInverseGamma


def _check_prior(prior) -> None:
    if not isinstance(prior, RateNormal | NormalInverseGamma):
        raise ValueError(f"`prior` must be a RateNormal or NormalInverseGamma, got {type(prior).__name__}.")


# ---------------------------------------------------------------------------------------------------------------------
# SVI and NUTS on the same model


def degradation_model(prior: Prior, increments: Float[Array, " n"], dt: Float[Array, " n"]) -> None:
    """The numpyro model: ``(α, σ) ~ prior`` (:meth:`sample_sites`), ``d_k ~ N(α Δ_k, σ² Δ_k)`` observed."""
    alpha, sigma = prior.sample_sites()
    numpyro.sample("increments", dist.Normal(alpha * dt, sigma * jnp.sqrt(dt)), obs=increments)


def _data(prior, increments, dt):
    _check_prior(prior)
    stats = IncrementStats.from_increments(increments, dt)  # validates
    d = jnp.asarray(increments, float)
    return d, jnp.broadcast_to(jnp.asarray(dt, d.dtype), d.shape), stats


def _moments(alpha, sigma) -> PosteriorMoments:
    return PosteriorMoments(jnp.mean(alpha), jnp.std(alpha, ddof=1), jnp.mean(sigma), jnp.std(sigma, ddof=1))


class SVIFit(NamedTuple):
    """SVI result: draws' ``moments``, ``alpha`` and ``sigma`` draws from the guide, per-step ``losses``."""

    moments: PosteriorMoments
    alpha: Float[Array, " draws"]
    sigma: Float[Array, " draws"]
    losses: Float[Array, " steps"]


@eqx.filter_jit
def _svi(prior, d, dt, key, guide, steps, learning_rate, num_particles, n_draws):
    # a fixed start: init_to_median would draw prior samples, and compile a gamma sampler, for a point known here
    g = GUIDES[guide](degradation_model, init_loc_fn=init_to_value(values=prior.init_values()))
    # Adam with an exponentially decaying step (to 1/100 of it): the end point sits at the optimum, not in its noise
    opt = optax.adam(optax.exponential_decay(learning_rate, steps, 0.01))
    engine = SVI(degradation_model, g, opt, Trace_ELBO(num_particles=num_particles))
    k_init, k_draw = jax.random.split(key)
    state = engine.init(k_init, prior, d, dt)
    state, losses = jax.lax.scan(lambda s, _: engine.update(s, prior, d, dt), state, None, length=steps)
    params = engine.get_params(state)
    sites = Predictive(degradation_model, guide=g, params=params, num_samples=n_draws, return_sites=["alpha", "sigma"])
    draws = sites(k_draw, prior, d, dt)
    alpha, sigma = jnp.broadcast_to(draws["alpha"], (n_draws,)), jnp.broadcast_to(draws["sigma"], (n_draws,))
    return SVIFit(_moments(alpha, sigma), alpha, sigma, losses)


def svi_posterior(
    prior: Prior,
    increments: Float[ArrayLike, "..."],  # checked in the body, so that a wrong shape raises a ValueError
    dt: Float[ArrayLike, "..."],
    *,
    key: Key,
    guide: str = "normal",
    steps: int = 2000,
    learning_rate: float = 0.05,
    num_particles: int = 8,
    n_draws: int = 20_000,
) -> SVIFit:
    """The variational posterior of ``(α, σ)`` by numpyro SVI on :func:`degradation_model`.

    Maximises ``ELBO(λ) = E_q[log p(d | α, σ) + log p(α, σ) − log q_λ]`` over a numpyro autoguide in the unconstrained
    sites (``alpha_unit``, ``log sigma2``): ``"normal"`` (mean field; exact for :class:`RateNormal`, whose posterior
    is Gaussian) or ``"mvn"`` (full-rank Gaussian). Adam with a step decaying exponentially from ``learning_rate`` to
    ``learning_rate/100``, ``steps`` steps in one compiled ``lax.scan``.

    Arguments:
        prior: a :class:`RateNormal` or :class:`NormalInverseGamma`.
        increments: ``d_k`` ``(n,)``; dt: ``Δ_k`` (scalar or ``(n,)``, time units, > 0).
        key: PRNG key; guide: ``"normal"`` or ``"mvn"``; steps, learning_rate, num_particles: the optimisation.
        n_draws: draws from the fitted guide for the moments (Monte-Carlo error ``sd/√n_draws`` on the mean).

    Returns:
        :class:`SVIFit`.

    Raises:
        ValueError: naming ``prior``, ``increments``, ``dt``, ``guide``, ``steps`` or ``n_draws``.

    Example:
        ```python
        fit = svi_posterior(RateNormal(0.01, 0.003, 0.02), jnp.diff(xs), 1.0, key=jax.random.key(0))
        fit.moments.alpha_mean
        ```
    """
    d, dt, _ = _data(prior, increments, dt)
    if guide not in GUIDES:
        raise ValueError(f"`guide` must be one of {sorted(GUIDES)}, got {guide!r}.")
    for name, value in (("steps", steps), ("n_draws", n_draws), ("num_particles", num_particles)):
        if not isinstance(value, int) or value < 2 - (name == "num_particles"):
            raise ValueError(f"`{name}` must be an integer >= {2 - (name == 'num_particles')}, got {value!r}.")
    return _svi(prior, d, dt, key, guide, steps, jnp.asarray(learning_rate, d.dtype), num_particles, n_draws)


class NUTSFit(NamedTuple):
    """NUTS result: ``moments``, pooled ``alpha`` / ``sigma`` draws, split-R-hat of ``α`` and divergent steps."""

    moments: PosteriorMoments
    alpha: Float[Array, " draws"]
    sigma: Float[Array, " draws"]
    rhat: Scalar
    divergences: Scalar


@eqx.filter_jit
def _nuts(prior, d, dt, key, chains, warmup, samples):
    k_init, k_run = jax.random.split(key)
    start = prior.unconstrained(*prior.posterior(IncrementStats.from_increments(d, dt)).sample(k_init, chains))
    z0, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(lambda v: v[0], start))
    z_init = jax.vmap(lambda s: jax.flatten_util.ravel_pytree(s)[0])(start)

    def logdensity(z):
        return -potential_energy(degradation_model, (prior, d, dt), {}, unravel(z))

    zs, info = run_nuts(logdensity, z_init, k_run, warmup=warmup, samples=samples)
    sites = jax.vmap(jax.vmap(lambda z: constrain_fn(degradation_model, (prior, d, dt), {}, unravel(z), True)))(zs)
    alpha = jnp.broadcast_to(sites["alpha"], zs.shape[:2])
    sigma = jnp.broadcast_to(sites["sigma"], zs.shape[:2])
    return NUTSFit(
        _moments(alpha.ravel(), sigma.ravel()),
        alpha.ravel(),
        sigma.ravel(),
        rhat(alpha),
        jnp.sum(info.is_divergent),
    )


def nuts_posterior(
    prior: Prior,
    increments: Float[ArrayLike, "..."],  # checked in the body, so that a wrong shape raises a ValueError
    dt: Float[ArrayLike, "..."],
    *,
    key: Key,
    chains: int = 4,
    warmup: int = 500,
    samples: int = 1000,
) -> NUTSFit:
    """The posterior of ``(α, σ)`` by blackjax NUTS (window adaptation; :func:`~twinjax.calibrate.bayes.run_nuts`)
    on numpyro's potential energy of :func:`degradation_model` (the same model and prior as :func:`svi_posterior`),
    ``chains`` chains started at posterior draws.

    Raises:
        ValueError: naming ``prior``, ``increments``, ``dt``, ``chains``, ``warmup`` or ``samples``.
    """
    d, dt, _ = _data(prior, increments, dt)
    for name, value in (("chains", chains), ("warmup", warmup), ("samples", samples)):
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"`{name}` must be an integer >= 2, got {value!r}.")
    return _nuts(prior, d, dt, key, chains, warmup, samples)


# ---------------------------------------------------------------------------------------------------------------------
# first passage and remaining useful life


def failure_time(
    levels: Float[Array, "*batch time"], times: Float[Array, " time"], threshold: Scalar
) -> Float[Array, "*batch"]:
    """Where the piecewise-linear path ``(t_k, x_k)`` first reaches ``threshold`` (``inf`` if it never does;
    ``t_0`` if it starts there). The grid time ``min{t_k : x_k ≥ x_fail}`` is the next sample time after it."""
    crossed = levels >= threshold
    k = jnp.argmax(crossed, axis=-1)
    x1 = jnp.take_along_axis(levels, k[..., None], -1)[..., 0]
    x0 = jnp.take_along_axis(levels, jnp.maximum(k - 1, 0)[..., None], -1)[..., 0]
    t0, t1 = times[jnp.maximum(k - 1, 0)], times[k]
    frac = jnp.where(k > 0, (threshold - x0) / jnp.where(k > 0, x1 - x0, 1.0), 1.0)
    return jnp.where(jnp.any(crossed, axis=-1), t0 + frac * (t1 - t0), jnp.inf)


def first_passage_times(
    key: Key,
    alpha: Float[Array, " n"],
    sigma: Float[Array, " n"],
    level: Scalar,
    threshold: Scalar,
    dt: Scalar,
    max_steps: int,
    stop_count: Scalar | None = None,
) -> Float[Array, " n"]:
    """Monte-Carlo first-passage times: one rollout ``x ← x + α_i Δ + σ_i √Δ ε`` per draw ``(α_i, σ_i)`` from
    ``level``, until every path has reached ``threshold`` or ``max_steps`` steps (a ``lax.while_loop``), or, with
    ``stop_count``, as soon as that many paths have failed. Returns the time from now to each path's (interpolated)
    crossing, ``inf`` where it did not fail within the rollout; 0 where ``level ≥ threshold`` already.

    Stopping early is exact for the smallest ``stop_count`` order statistics: a path still running after ``k`` steps
    crosses after ``k Δ``, later than every recorded time. :func:`predict_rul` stops once its upper quantile is known.
    """
    dtype = jnp.result_type(alpha, sigma, level, float)
    alpha, sigma = alpha.astype(dtype), sigma.astype(dtype)
    x = jnp.broadcast_to(jnp.asarray(level, dtype), alpha.shape)
    t = jnp.where(x >= threshold, jnp.zeros_like(x), jnp.inf)
    step_sd = sigma * jnp.sqrt(dt)

    stop = alpha.shape[0] if stop_count is None else stop_count

    def cond(carry):
        k, _, t, _ = carry
        failed = jnp.sum(jnp.isfinite(t))
        return (k < max_steps) & (failed < alpha.shape[0]) & (failed < stop)

    def body(carry):
        k, x, t, key = carry
        key, sub = jax.random.split(key)
        x_new = x + alpha * dt + step_sd * jax.random.normal(sub, x.shape, dtype)
        fresh = jnp.isinf(t) & (x_new >= threshold)
        frac = (threshold - x) / jnp.where(fresh, x_new - x, 1.0)
        return k + 1, x_new, jnp.where(fresh, (k + frac) * dt, t), key

    _, _, t, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), x, t, key))
    return t


def inverse_gaussian_cdf(
    t: Float[ArrayLike, "*t"], alpha: Scalar, sigma: Scalar, distance: Scalar
) -> Float[Array, "*t"]:
    """``P(T ≤ t)`` of the continuous-time first passage over ``distance`` of ``dX = α dt + σ dW`` (``α > 0``): the
    inverse-Gaussian law with mean ``μ = distance/α`` and shape ``λ = distance²/σ²``."""
    t = jnp.asarray(t)
    mu, lam = distance / alpha, distance**2 / sigma**2
    r = jnp.sqrt(lam / t)
    ndtr = jax.scipy.special.ndtr
    return ndtr(r * (t / mu - 1)) + jnp.exp(2 * lam / mu) * ndtr(-r * (t / mu + 1))


class RULPrediction(eqx.Module):
    """A remaining-useful-life prediction made at ``time`` from ``level``: the predictive ``median`` and the central
    interval ``[lower, upper]`` of the remaining life (time units; the failure time is ``time + rul``), and the fraction
    ``unresolved`` of rollouts without a failure time when they stopped (beyond the upper quantile, or the horizon)."""

    time: Scalar
    level: Scalar
    median: Scalar
    lower: Scalar
    upper: Scalar
    unresolved: Scalar


def predict_rul(
    key: Key,
    posterior: Prior,
    level: Scalar,
    time: Scalar,
    *,
    threshold: Scalar,
    dt: Scalar,
    n_draws: int = 1000,
    max_steps: int = 10_000,
    coverage: float = 0.9,
) -> RULPrediction:
    r"""The RUL predictive distribution and its central interval.

    ``(α_i, σ_i)`` drawn from ``posterior``, one rollout each from ``level`` (:func:`first_passage_times`, stopped as
    soon as the upper quantile is determined), then the order statistics at ``(1 ∓ coverage)/2`` and ``½`` of the
    remaining life. Rollouts without a crossing within ``max_steps Δ`` count as ``inf``, so an interval end is
    ``inf`` when more than its tail mass is censored.

    Arguments:
        key: PRNG key; posterior: a :class:`RateNormal` or :class:`NormalInverseGamma` (e.g. ``prior.posterior(s)``).
        level: current degradation ``x``; time: current time ``t``; threshold: ``x_fail``; dt: rollout step ``Δ``.
        n_draws: rollouts; max_steps: horizon in steps; coverage: the interval's level.

    Returns:
        :class:`RULPrediction`.

    Example:
        ```python
        post = NormalInverseGamma(0.01, 50.0, 10.0, 0.0036).posterior(IncrementStats.from_path(xs, ts))
        pred = predict_rul(jax.random.key(0), post, xs[-1], ts[-1], threshold=1.0, dt=1.0)
        ```
    """
    k_par, k_roll = jax.random.split(key)
    alpha, sigma = posterior.sample(k_par, n_draws)
    q_hi = (1 + coverage) / 2
    stop = jnp.ceil(q_hi * (n_draws - 1)) + 1  # sorted index of the "higher" quantile, plus one
    rul = first_passage_times(k_roll, alpha, sigma, level, threshold, dt, max_steps, stop)
    # order statistics, not interpolation, so that an end next to an ``inf`` draw is not ``nan``
    lower = jnp.quantile(rul, (1 - coverage) / 2, method="lower")
    median = jnp.quantile(rul, 0.5, method="nearest")
    upper = jnp.quantile(rul, q_hi, method="higher")
    unresolved = 1 - jnp.mean(jnp.isfinite(rul).astype(rul.dtype))
    return RULPrediction(jnp.asarray(time), jnp.asarray(level), median, lower, upper, unresolved)


class PrognosticState(NamedTuple):
    """The online prognostic state: the increments' statistics so far and the last measured level and time."""

    stats: IncrementStats
    level: Scalar
    time: Scalar


def prognostic_init(level: Scalar, time: Scalar) -> PrognosticState:
    """The state before any increment: the first measurement ``(time, level)``."""
    stats = IncrementStats.empty()
    return PrognosticState(jax.tree.map(lambda s: s.astype(jnp.result_type(level, float)), stats), level, time)


def prognostic_step(
    prior: Prior,
    state: PrognosticState,
    level: Scalar,
    time: Scalar,
    key: Key,
    *,
    threshold: Scalar,
    dt: Scalar,
    n_draws: int = 1000,
    max_steps: int = 10_000,
    coverage: float = 0.9,
) -> tuple[PrognosticState, RULPrediction]:
    """One online update: add the increment to the statistics, form the conjugate posterior, predict the RUL from the
    new level (:func:`predict_rul`). Pure; ``threshold``, ``dt`` and ``coverage`` may be traced."""
    stats = state.stats.add(level - state.level, time - state.time)
    prediction = predict_rul(
        key,
        prior.posterior(stats),
        level,
        time,
        threshold=threshold,
        dt=dt,
        n_draws=n_draws,
        max_steps=max_steps,
        coverage=coverage,
    )
    return PrognosticState(stats, level, time), prediction


@eqx.filter_jit
def _rul_online(prior, levels, times, key, threshold, dt, n_draws, max_steps, coverage):
    def body(state, inputs):
        x, t, k, first = inputs
        added = state.stats.add(x - state.level, t - state.time)
        # the first measurement adds no increment (its 0/0 is discarded): one rollout program serves every step
        stats = jax.tree.map(lambda old, new: jnp.where(first, old, new), state.stats, added)
        prediction = predict_rul(
            k, prior.posterior(stats), x, t, threshold=threshold, dt=dt, n_draws=n_draws, max_steps=max_steps,
            coverage=coverage,
        )  # fmt: skip
        return PrognosticState(stats, x, t), prediction

    first = jnp.arange(levels.shape[0]) == 0
    keys = jax.random.split(key, levels.shape[0])
    _, predictions = jax.lax.scan(body, prognostic_init(levels[0], times[0]), (levels, times, keys, first))
    return predictions


def rul_online(
    key: Key,
    prior: Prior,
    levels: Float[ArrayLike, "..."],  # checked in the body, so that a wrong shape raises a ValueError
    times: Float[ArrayLike, "..."],
    *,
    threshold: Scalar,
    dt: Scalar | None = None,
    n_draws: int = 1000,
    max_steps: int = 10_000,
    coverage: float = 0.9,
) -> RULPrediction:
    """RUL predictions updated online as the measurements ``(t_k, x_k)`` arrive: at ``k = 0`` from the prior, then
    :func:`prognostic_step` scanned over the rest. Returns a :class:`RULPrediction` whose fields have shape
    ``(time,)``.

    Arguments:
        key: PRNG key; prior: the conjugate prior (:class:`RateNormal` or :class:`NormalInverseGamma`).
        levels: measured degradation ``(time,)``; times: strictly increasing measurement times ``(time,)``.
        threshold: failure level ``x_fail``; dt: rollout step (default ``times[1] − times[0]``).
        n_draws: rollouts per prediction; max_steps: rollout horizon in steps; coverage: interval level in (0, 1).

    Raises:
        ValueError: naming ``prior``, ``levels``, ``times``, ``dt``, ``n_draws`` or ``coverage``.

    Example:
        ```python
        prior = NormalInverseGamma(0.01, 50.0, 10.0, 0.0036)
        pred = rul_online(jax.random.key(0), prior, xs, ts, threshold=1.0)
        pred.median, pred.lower, pred.upper  # (time,) each
        ```
    """
    _check_prior(prior)
    levels = as_float_array(levels, "levels", ndim=1)
    times = as_float_array(times, "times", ndim=1)
    if times.shape != levels.shape or levels.shape[0] < 2:
        raise ValueError(
            f"`levels` and `times` must have one shape (time,) with time >= 2, got {levels.shape}, {times.shape}."
        )
    if is_concrete(times) and not np.all(np.diff(np.asarray(times)) > 0):
        raise ValueError("`times` must be strictly increasing.")
    dt = times[1] - times[0] if dt is None else dt
    _positive(dt, "dt")
    if not isinstance(n_draws, int) or n_draws < 2:
        raise ValueError(f"`n_draws` must be an integer >= 2, got {n_draws!r}.")
    if not 0 < coverage < 1:
        raise ValueError(f"`coverage` must be in (0, 1), got {coverage!r}.")
    return _rul_online(prior, levels, times, key, threshold, dt, n_draws, max_steps, coverage)


__all__ = [
    "IncrementStats",
    "NUTSFit",
    "NormalInverseGamma",
    "PosteriorMoments",
    "PrognosticState",
    "RULPrediction",
    "RateNormal",
    "SVIFit",
    "degradation_model",
    "failure_time",
    "first_passage_times",
    "inverse_gaussian_cdf",
    "nuts_posterior",
    "predict_rul",
    "prognostic_init",
    "prognostic_step",
    "rul_online",
    "svi_posterior",
]
