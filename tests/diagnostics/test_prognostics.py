"""Prognostics: the conjugate posteriors against grid quadrature, numpyro's model against them, the first passage
against the inverse-Gaussian law, the online RUL against the batch one, and (slow) SVI and NUTS against the exact
posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st
from numpyro.infer.util import potential_energy

from tests.helpers import assert_tree_allclose
from twinjax.diagnostics.prognostics import (
    IncrementStats,
    NormalInverseGamma,
    RateNormal,
    _gamma,
    degradation_model,
    failure_time,
    first_passage_times,
    inverse_gaussian_cdf,
    nuts_posterior,
    predict_rul,
    rul_online,
    svi_posterior,
)

NIG = NormalInverseGamma(0.01, 50.0, 10.0, 0.0036)
KNOWN = RateNormal(0.01, 0.0028, 0.02)


def _data(n=40, seed=0, irregular=True):
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.5, 2.0, n) if irregular else np.ones(n)
    d = 0.012 * dt + 0.02 * np.sqrt(dt) * rng.standard_normal(n)
    return d, dt


def _grid_moments(logp, *axes):
    """Mean and sd of each axis under the normalised density ``exp(logp)`` on a tensor grid (trapezoid rule)."""
    w = np.exp(logp - logp.max())
    grids = np.meshgrid(*axes, indexing="ij")

    def integrate(f):
        out = f * w
        for i in reversed(range(len(axes))):
            out = np.trapezoid(out, axes[i], axis=i)
        return out

    z = integrate(1.0)
    means = [integrate(g) / z for g in grids]
    sds = [np.sqrt(integrate((g - m) ** 2) / z) for g, m in zip(grids, means)]
    return means, sds


def test_increment_stats_online_equals_batch():
    d, dt = _data()
    stats = IncrementStats.empty()
    for di, ti in zip(d, dt):
        stats = stats.add(di, ti)
    batch = IncrementStats.from_increments(d, dt)
    assert_tree_allclose(stats, batch, rtol=1e-12, atol=1e-15)
    xs, ts = np.concatenate([[0.3], 0.3 + np.cumsum(d)]), np.concatenate([[2.0], 2.0 + np.cumsum(dt)])
    assert_tree_allclose(IncrementStats.from_path(xs, ts), batch, rtol=1e-10, atol=1e-13)
    # the posterior is the same whether the data come at once or one by one (conjugacy)
    half = NIG.posterior(IncrementStats.from_increments(d[:17], dt[:17]))
    assert_tree_allclose(half.posterior(IncrementStats.from_increments(d[17:], dt[17:])), NIG.posterior(batch))


def test_known_noise_posterior_matches_grid_quadrature():
    d, dt = _data()
    post = KNOWN.posterior(IncrementStats.from_increments(d, dt)).moments()
    alpha = np.linspace(-0.01, 0.04, 20001)
    logp = st.norm.logpdf(alpha, KNOWN.mean, KNOWN.sd)
    logp = logp + st.norm.logpdf(d[None], alpha[:, None] * dt, KNOWN.noise_sd * np.sqrt(dt)).sum(1)
    (mean,), (sd,) = _grid_moments(logp, alpha)
    np.testing.assert_allclose(post.alpha_mean, mean, rtol=1e-8)
    np.testing.assert_allclose(post.alpha_sd, sd, rtol=1e-6)
    assert float(post.sigma_mean) == KNOWN.noise_sd and float(post.sigma_sd) == 0.0


def test_nig_posterior_matches_grid_quadrature():
    """The closed-form moments of ``α`` (Student-t) and ``σ`` against a dense 2-D quadrature of prior × likelihood."""
    d, dt = _data(n=30)
    post = NIG.posterior(IncrementStats.from_increments(d, dt))
    m = post.moments()
    alpha = np.linspace(float(m.alpha_mean) - 12 * float(m.alpha_sd), float(m.alpha_mean) + 12 * float(m.alpha_sd), 401)
    sigma = np.linspace(0.4 * float(m.sigma_mean), 2.5 * float(m.sigma_mean), 601)
    a, s = np.meshgrid(alpha, sigma, indexing="ij")
    # prior density of (α, σ): InvGamma(σ²) · N(α | m, σ²/κ) · |dσ²/dσ|
    logp = st.invgamma.logpdf(s**2, NIG.shape, scale=NIG.scale) + np.log(2 * s)
    logp = logp + st.norm.logpdf(a, NIG.mean, s / np.sqrt(NIG.kappa))
    lik = st.norm.logpdf(d[None, None], a[..., None] * dt, s[..., None] * np.sqrt(dt)).sum(-1)
    (ma, ms), (sa, ss) = _grid_moments(logp + lik, alpha, sigma)
    np.testing.assert_allclose([m.alpha_mean, m.sigma_mean], [ma, ms], rtol=1e-6)
    np.testing.assert_allclose([m.alpha_sd, m.sigma_sd], [sa, ss], rtol=1e-4)
    # the marginal of α is Student-t with 2a' degrees of freedom
    t = st.t(
        2 * float(post.shape), float(post.mean), np.sqrt(float(post.scale) / (float(post.shape) * float(post.kappa)))
    )
    np.testing.assert_allclose(t.std(), sa, rtol=1e-4)


def test_numpyro_model_is_the_conjugate_posterior():
    """numpyro's potential of :func:`degradation_model` differs from the exact log posterior density (in the
    unconstrained sites, with their Jacobian) by a constant: same prior, same likelihood."""
    d, dt = _data(n=25)
    for prior in (KNOWN, NIG):
        post = prior.posterior(IncrementStats.from_increments(d, dt))
        alpha, sigma = post.sample(jax.random.key(1), 3)
        diffs = []
        for a, s in zip(np.asarray(alpha), np.asarray(sigma)):
            u = prior.unconstrained(a, s)
            pe = float(potential_energy(degradation_model, (prior, jnp.asarray(d), jnp.asarray(dt)), {}, u))
            if isinstance(prior, RateNormal):
                logq = st.norm.logpdf(a, float(post.mean), float(post.sd)) + np.log(prior.sd)  # dα/du = sd
            else:
                c = np.sqrt(prior.scale / (prior.shape * prior.kappa))
                logq = st.invgamma.logpdf(s**2, float(post.shape), scale=float(post.scale)) + np.log(s**2)
                logq = logq + st.norm.logpdf(a, float(post.mean), s / np.sqrt(float(post.kappa))) + np.log(c)
            diffs.append(-pe - logq)
        np.testing.assert_allclose(diffs, diffs[0], atol=1e-8)


@pytest.mark.parametrize("shape", [0.4, 1.0, 7.5, 60.0])
def test_gamma_sampler_against_scipy(shape):
    g = np.asarray(_gamma(jax.random.key(2), shape, 20_000))
    assert st.kstest(g, st.gamma(shape).cdf).pvalue > 1e-3


def test_prior_draws_have_the_exact_moments():
    n = 40_000
    for prior in (KNOWN, NIG):
        alpha, sigma = prior.sample(jax.random.key(3), n)
        m = prior.moments()
        assert abs(np.mean(alpha) - m.alpha_mean) < 4 * m.alpha_sd / np.sqrt(n)
        assert abs(np.std(alpha) / m.alpha_sd - 1) < 4 / np.sqrt(2 * n) * 2  # heavier-tailed t: a wider SE
        if isinstance(prior, NormalInverseGamma):
            assert abs(np.mean(sigma) - m.sigma_mean) < 4 * m.sigma_sd / np.sqrt(n)


def test_failure_time_interpolates():
    ts = jnp.arange(5.0)
    paths = jnp.array([[0.0, 0.4, 0.8, 1.2, 1.6], [0.0, 0.1, 0.2, 0.3, 0.4], [1.5, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(failure_time(paths, ts, 1.0), [2.5, np.inf, 0.0])


def test_first_passage_matches_inverse_gaussian():
    """Rollouts on a fine grid against the continuous-time law: the mean within 4 SE of ``d/α`` plus the
    discrete-monitoring delay (at most the Broadie–Glasserman–Kou shift ``0.5826 σ√Δ/α``), and the empirical cdf
    within 0.03 of the inverse-Gaussian cdf."""
    n, alpha, sigma, dt = 10_000, 1.0, 0.5, 0.0025
    t = np.asarray(first_passage_times(jax.random.key(4), jnp.full(n, alpha), jnp.full(n, sigma), 0.2, 1.2, dt, 10**5))
    assert np.all(np.isfinite(t))
    se = t.std() / np.sqrt(n)
    assert -4 * se < t.mean() - 1.0 / alpha < 0.5826 * sigma * np.sqrt(dt) / alpha + 4 * se
    grid = np.quantile(t, np.linspace(0.02, 0.98, 49))
    ecdf = np.searchsorted(np.sort(t), grid, side="right") / n
    assert np.max(np.abs(ecdf - np.asarray(inverse_gaussian_cdf(grid, alpha, sigma, 1.0)))) < 0.03
    # a draw that cannot fail stays unresolved; a unit at the threshold has no life left
    t = first_passage_times(jax.random.key(5), jnp.array([-1.0, 1.0]), jnp.array([1e-3, 0.1]), 0.0, 1.0, 1.0, 50)
    assert np.isinf(t[0]) and np.isfinite(t[1])
    assert float(first_passage_times(jax.random.key(5), jnp.ones(3), jnp.ones(3), 1.0, 1.0, 1.0, 50).max()) == 0.0


def test_rul_online_equals_batch_predictions():
    """The online scan gives, at each measurement, the prediction made from scratch with the batch conjugate
    posterior of the path so far (same key); intervals are ordered and shrink as the unit approaches failure."""
    rng = np.random.default_rng(6)
    xs = np.concatenate([[0.0], np.cumsum(0.01 + 0.02 * rng.standard_normal(80))])
    ts = np.arange(81.0)
    key = jax.random.key(7)
    pred = rul_online(key, NIG, xs, ts, threshold=1.0, n_draws=300, max_steps=3000)
    assert pred.median.shape == (81,)
    assert np.all(pred.lower <= pred.median) and np.all(pred.median <= pred.upper)
    assert float(pred.upper[-1] - pred.lower[-1]) < 0.5 * float(pred.upper[0] - pred.lower[0])
    keys = jax.random.split(key, 81)
    for k in (0, 1, 40, 80):
        post = NIG.posterior(IncrementStats.from_path(xs[: k + 1], ts[: k + 1]))
        one = predict_rul(keys[k], post, xs[k], ts[k], threshold=1.0, dt=1.0, n_draws=300, max_steps=3000)
        assert_tree_allclose(jax.tree.map(lambda a: a[k], pred), one, rtol=1e-9, atol=1e-9)


def test_bad_input_names_the_argument():
    d, dt = _data(n=5)
    with pytest.raises(ValueError, match="dt"):
        IncrementStats.from_increments(d, -1.0)
    with pytest.raises(ValueError, match="dt"):
        IncrementStats.from_increments(d, np.ones(3))
    with pytest.raises(ValueError, match="increments"):
        IncrementStats.from_increments(np.ones((2, 2)), 1.0)
    with pytest.raises(ValueError, match="times"):
        IncrementStats.from_path(np.ones(4), np.arange(3.0))
    with pytest.raises(ValueError, match="sd"):
        RateNormal(0.01, -1.0, 0.02)
    with pytest.raises(ValueError, match="shape"):
        NormalInverseGamma(0.01, 1.0, 0.0, 1.0)
    with pytest.raises((ValueError, TypeError), match="prior"):  # the test run's type checker, or the ValueError
        svi_posterior("nig", d, 1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="guide"):
        svi_posterior(NIG, d, 1.0, key=jax.random.key(0), guide="flow")
    with pytest.raises(ValueError, match="samples"):
        nuts_posterior(NIG, d, 1.0, key=jax.random.key(0), samples=1)
    with pytest.raises(ValueError, match="times"):
        rul_online(jax.random.key(0), NIG, np.zeros(3), np.array([0.0, 2.0, 1.0]), threshold=1.0)
    with pytest.raises(ValueError, match="coverage"):
        rul_online(jax.random.key(0), NIG, np.zeros(3), np.arange(3.0), threshold=1.0, coverage=1.5)


@pytest.mark.slow
@pytest.mark.parametrize(("prior", "guide"), [(KNOWN, "normal"), (NIG, "mvn")])
def test_svi_and_nuts_match_the_exact_posterior(prior, guide):
    """The issue's tolerances on 100 increments: means within 0.1 exact posterior sd, sds within 10 %."""
    d, dt = _data(n=100, irregular=False)
    exact = prior.posterior(IncrementStats.from_increments(d, dt)).moments()
    svi = svi_posterior(prior, d, dt, key=jax.random.key(8), guide=guide)
    nuts = nuts_posterior(prior, d, dt, key=jax.random.key(9))
    assert float(nuts.rhat) < 1.01 and int(nuts.divergences) == 0
    params = ("alpha",) if isinstance(prior, RateNormal) else ("alpha", "sigma")
    for fit in (svi, nuts):
        for p in params:
            sd = getattr(exact, f"{p}_sd")
            assert abs(getattr(fit.moments, f"{p}_mean") - getattr(exact, f"{p}_mean")) <= 0.1 * sd, (p, fit.moments)
            assert abs(getattr(fit.moments, f"{p}_sd") / sd - 1) <= 0.1, (p, fit.moments)
    assert svi.losses[-100:].mean() < svi.losses[:100].mean()
