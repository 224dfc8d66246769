"""``twinjax.risk.extremes``: the GPD maximum-likelihood fit against scipy's ``genpareto.fit``, its covariance against a
finite-difference Hessian of scipy's log-likelihood and the analytic Fisher information, Wald coverage over vmapped
replicate fits, return levels against scipy's quantile, the density / survival / sampler against scipy, the mean excess
against a NumPy loop, pyextremes' POT analysis side by side, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from scipy.stats import genpareto, kstest

from twinjax.risk import extremes as ex

SHAPES = (-0.2, 0.0, 0.1, 0.3)
SCALE = 2.0


def _gpd(xi, size, seed):
    return genpareto.rvs(xi, loc=0.0, scale=SCALE, size=size, random_state=np.random.default_rng(seed))


def _tight_fmin(func, x0, args=(), disp=0):
    return scipy.optimize.fmin(func, x0, args=args, xtol=1e-12, ftol=1e-13, maxiter=20_000, maxfun=40_000, disp=0)


@pytest.mark.parametrize("xi", SHAPES)
def test_fit_matches_scipy_mle(xi):
    y = _gpd(xi, 2000, seed=10)
    fit = ex.fit_gpd(y)
    assert bool(fit.converged) and int(fit.n) == y.size
    ours = np.array([float(fit.shape), float(fit.scale)])

    # scipy's default fit: equal to its optimiser's tolerance, or we found a likelihood at least as high
    c, loc, s = genpareto.fit(y, floc=0)
    assert loc == 0.0
    ll_scipy = genpareto.logpdf(y, c, 0.0, s).sum()
    close = np.allclose(ours, [c, s], rtol=1e-4, atol=0.0)
    assert close or float(fit.loglik) >= ll_scipy - 1e-6, (ours, (c, s), float(fit.loglik), ll_scipy)
    assert float(fit.loglik) >= ll_scipy - 1e-6

    # scipy with a tight Nelder–Mead: the same maximiser
    c_t, _, s_t = genpareto.fit(y, floc=0, optimizer=_tight_fmin)
    np.testing.assert_allclose(ours, [c_t, s_t], rtol=1e-5)  # measured ≤ 6e-7

    # our log-likelihood is scipy's at our estimate
    np.testing.assert_allclose(float(fit.loglik), genpareto.logpdf(y, *ours[:1], 0.0, ours[1]).sum(), rtol=0, atol=1e-8)


def test_covariance_is_inverse_finite_difference_hessian_of_scipy_loglik():
    y = _gpd(0.1, 2000, seed=11)
    fit = ex.fit_gpd(y)
    p = np.array([float(fit.shape), float(fit.scale)])

    def nll(q):
        return -genpareto.logpdf(y, q[0], 0.0, q[1]).sum()

    h = 1e-4 * np.maximum(np.abs(p), 1.0)
    hess = np.empty((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h[i], np.eye(2)[j] * h[j]
            hess[i, j] = (nll(p + ei + ej) - nll(p + ei - ej) - nll(p - ei + ej) + nll(p - ei - ej)) / (4 * h[i] * h[j])
    np.testing.assert_allclose(np.asarray(fit.cov), np.linalg.inv(hess), rtol=1e-4)


def test_stderr_vs_fisher_information_and_wald_coverage_vmapped():
    """200 replicate fits per shape in one jit(vmap(fit_gpd)). Expected (Fisher) information (Smith 1985; Coles 2001,
    §4.3.2): ``n Cov(ξ̂, σ̂) ≈ (1 + ξ) [[1 + ξ, −σ], [−σ, 2σ²]]``. The mean observed-information standard errors match
    it within 10 %; the mean covariance term within 20 % (at ``ξ = −0.2``, ``n = 500`` it is 15 % above, as is the
    empirical covariance of the replicates: a finite-sample effect). The 95 % Wald interval for ξ covers the truth at a
    rate within 3.5 Monte-Carlo standard deviations of 0.95."""
    reps, n = 200, 500
    y = np.concatenate([_gpd(xi, (reps, n), seed=20 + k) for k, xi in enumerate(SHAPES)])
    fits = jax.jit(jax.vmap(ex.fit_gpd))(jnp.asarray(y))
    assert bool(jnp.all(fits.converged))
    for k, xi in enumerate(SHAPES):
        sl = slice(k * reps, (k + 1) * reps)
        cov = np.asarray(fits.cov[sl])
        var_xi, var_sigma, cov_xs = (1 + xi) ** 2 / n, 2 * SCALE**2 * (1 + xi) / n, -SCALE * (1 + xi) / n
        np.testing.assert_allclose(np.sqrt(cov[:, 0, 0]).mean(), np.sqrt(var_xi), rtol=0.1)
        np.testing.assert_allclose(np.sqrt(cov[:, 1, 1]).mean(), np.sqrt(var_sigma), rtol=0.1)
        np.testing.assert_allclose(cov[:, 0, 1].mean(), cov_xs, rtol=0.2)
        se_xi = np.sqrt(cov[:, 0, 0])
        covered = np.abs(np.asarray(fits.shape[sl]) - xi) <= 1.959964 * se_xi
        mc_sd = np.sqrt(0.95 * 0.05 / reps)
        assert abs(covered.mean() - 0.95) <= 3.5 * mc_sd, (xi, covered.mean())
    # a vmapped fit equals the one-at-a-time fit
    one = ex.fit_gpd(y[3])
    np.testing.assert_allclose(float(fits.shape[3]), float(one.shape), rtol=1e-10)


def test_nan_padding_is_ignored():
    y = _gpd(0.1, 300, seed=12)
    fit = ex.fit_gpd(y)
    padded = ex.fit_gpd(np.concatenate([y[:150], np.full(50, np.nan), y[150:]]))
    assert int(padded.n) == 300
    np.testing.assert_allclose(
        [padded.shape, padded.scale, padded.loglik], [fit.shape, fit.scale, fit.loglik], rtol=1e-10
    )


def test_exponential_limit_is_smooth():
    """Around ξ = 0 the likelihood, density and survival function are continuous and match scipy (which switches
    to the exponential formulas itself)."""
    y = np.linspace(0.0, 15.0, 31)
    for xi in (-1e-9, 0.0, 1e-9, 1e-3, -1e-3, 0.02):
        np.testing.assert_allclose(ex.gpd_logpdf(y, xi, SCALE), genpareto.logpdf(y, xi, 0.0, SCALE), rtol=1e-12)
        np.testing.assert_allclose(ex.gpd_sf(y, xi, SCALE), genpareto.sf(y, xi, 0.0, SCALE), rtol=1e-12)
    grad = jax.grad(lambda c: ex.gpd_logpdf(jnp.asarray(y), c, SCALE).sum())
    fd = (genpareto.logpdf(y, 1e-5, 0, SCALE).sum() - genpareto.logpdf(y, -1e-5, 0, SCALE).sum()) / 2e-5
    np.testing.assert_allclose(float(grad(0.0)), fd, rtol=1e-6)


def test_logpdf_sf_support_match_scipy():
    y = np.array([-1.0, 0.0, 0.5, 3.0, 9.9, 10.0, 12.0])
    for xi in (-0.2, 0.3):
        np.testing.assert_allclose(ex.gpd_logpdf(y, xi, SCALE), genpareto.logpdf(y, xi, 0.0, SCALE), rtol=1e-12)
        np.testing.assert_allclose(ex.gpd_sf(y, xi, SCALE), genpareto.sf(y, xi, 0.0, SCALE), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("xi", SHAPES)
def test_return_level_matches_scipy_quantile(xi):
    y = _gpd(xi, 2000, seed=13)
    fit = ex.fit_gpd(y)
    u, rate = 5.0, 7.3  # exceedances per block
    periods = np.array([1.0, 2.0, 10.0, 100.0, 1000.0])
    rl = ex.return_level(fit, u, rate, periods)
    m_zeta = periods * rate
    expect = u + genpareto.ppf(1.0 - 1.0 / m_zeta, float(fit.shape), 0.0, float(fit.scale))
    np.testing.assert_allclose(rl.level, expect, rtol=0, atol=1e-8)
    # delta method against a finite-difference gradient of scipy's quantile
    p = np.array([float(fit.shape), float(fit.scale)])
    h = 1e-6
    grads = np.stack(
        [
            (genpareto.ppf(1 - 1 / m_zeta, p[0] + h, 0, p[1]) - genpareto.ppf(1 - 1 / m_zeta, p[0] - h, 0, p[1]))
            / (2 * h),
            (genpareto.ppf(1 - 1 / m_zeta, p[0], 0, p[1] + h) - genpareto.ppf(1 - 1 / m_zeta, p[0], 0, p[1] - h))
            / (2 * h),
        ],
        axis=1,
    )
    se = np.sqrt(np.einsum("ki,ij,kj->k", grads, np.asarray(fit.cov), grads))
    np.testing.assert_allclose(rl.stderr, se, rtol=1e-5)
    # the rate's variance adds (dx/dλ)² Var λ
    var_rate = 0.04
    d_rate = (
        genpareto.ppf(1 - 1 / (periods * (rate + h)), *p[:1], 0, p[1])
        - genpareto.ppf(1 - 1 / (periods * (rate - h)), *p[:1], 0, p[1])
    ) / (2 * h)
    rl2 = ex.return_level(fit, u, rate, periods, rate_variance=var_rate)
    np.testing.assert_allclose(rl2.stderr, np.sqrt(se**2 + d_rate**2 * var_rate), rtol=1e-5)


def test_return_level_exponential_limit():
    fit = ex.GPDFit(
        jnp.asarray(0.0), jnp.asarray(SCALE), jnp.asarray(100), jnp.asarray(0.0), jnp.eye(2), jnp.asarray(True)
    )
    rl = ex.return_level(fit, 1.0, 3.0, jnp.array([10.0, 100.0]))
    np.testing.assert_allclose(rl.level, 1.0 + SCALE * np.log(np.array([30.0, 300.0])), rtol=1e-14)
    near = fit._replace(shape=jnp.asarray(1e-8))
    np.testing.assert_allclose(ex.return_level(near, 1.0, 3.0, 100.0).level, rl.level[1], rtol=1e-7)


def test_sample_matches_fitted_distribution(key):
    for xi in SHAPES:
        fit = ex.GPDFit(
            jnp.asarray(xi), jnp.asarray(SCALE), jnp.asarray(0), jnp.asarray(0.0), jnp.eye(2), jnp.asarray(True)
        )
        draws = np.asarray(ex.gpd_sample(jax.random.fold_in(key, int(100 * xi) + 50), fit, 4000))
        assert draws.shape == (4000,) and np.all(draws >= 0)
        assert kstest(draws, genpareto(xi, 0.0, SCALE).cdf).pvalue > 1e-3
    shifted = ex.gpd_sample(key, fit, 10, threshold=3.0)
    np.testing.assert_allclose(shifted - 3.0, ex.gpd_sample(key, fit, 10), rtol=1e-12)


def test_exceedances_and_mean_excess_match_numpy():
    rng = np.random.default_rng(14)
    x = rng.gumbel(size=3000)
    x[::97] = np.nan
    u = 1.5
    y = np.asarray(ex.exceedances(x, u))
    finite = x[~np.isnan(x)]
    np.testing.assert_array_equal(y, finite[finite > u] - u)

    thresholds = np.array([-1.0, 0.0, 1.0, 2.0, 3.0, 100.0])
    me = ex.mean_excess(x, thresholds)
    for k, t in enumerate(thresholds):
        e = finite[finite > t] - t
        assert int(me.count[k]) == e.size
        if e.size:
            np.testing.assert_allclose(me.mean[k], e.mean(), rtol=1e-12)
        else:
            assert np.isnan(me.mean[k])
        if e.size > 1:
            np.testing.assert_allclose(me.stderr[k], e.std(ddof=1) / np.sqrt(e.size), rtol=1e-12)
    jitted = jax.jit(ex.mean_excess)(jnp.asarray(x), jnp.asarray(thresholds))
    np.testing.assert_allclose(jitted.mean, me.mean, rtol=1e-12)


def test_pyextremes_side_by_side():
    """pyextremes' POT analysis (declustered peaks over ``u``, scipy MLE with ``floc = u``) against ours on the same
    extremes: the rate is pyextremes' extremes per year, ``len(extremes) / ((t_last − t_first) / 365.2425 days)``."""
    pd = pytest.importorskip("pandas")
    pyextremes = pytest.importorskip("pyextremes")
    rng = np.random.default_rng(15)
    index = pd.date_range("1990-01-01", periods=30 * 365, freq="D")
    series = pd.Series(genpareto.rvs(0.2, loc=0.0, scale=1.0, size=index.size, random_state=rng), index=index)
    u = float(series.quantile(0.98))

    eva = pyextremes.EVA(series)
    eva.get_extremes(method="POT", extremes_type="high", threshold=u, r="24h")
    eva.fit_model(model="MLE", distribution="genpareto")
    params = eva.model.fit_parameters
    assert eva.model.distribution.fixed_parameters == {"floc": u}

    extremes = eva.extremes.to_numpy()
    fit = ex.fit_gpd(extremes - u)
    np.testing.assert_allclose([fit.shape, fit.scale], [params["c"], params["scale"]], rtol=1e-3)
    assert float(fit.loglik) >= genpareto.logpdf(extremes - u, params["c"], 0.0, params["scale"]).sum() - 1e-6

    years = (series.index[-1] - series.index[0]) / pd.to_timedelta("365.2425D")
    rate = len(extremes) / years
    periods = np.array([10.0, 100.0])
    theirs = np.array(
        [eva.get_return_value(return_period=t, return_period_size="365.2425D", alpha=None)[0] for t in periods]
    )
    ours = ex.return_level(fit, u, rate, periods).level
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)
    # and exactly the closed form at pyextremes' own parameters
    ours_at_theirs = ex.return_level(
        fit._replace(shape=jnp.asarray(params["c"]), scale=jnp.asarray(params["scale"])), u, rate, periods
    )
    np.testing.assert_allclose(ours_at_theirs.level, theirs, rtol=1e-10)


def test_bad_input():
    y = _gpd(0.1, 50, seed=16)
    with pytest.raises(ValueError, match="`excesses`"):
        ex.fit_gpd(np.array([1.0, -0.5, 2.0]))
    with pytest.raises(ValueError, match="`excesses`"):
        ex.fit_gpd(np.array([]))
    with pytest.raises(ValueError, match="`excesses`"):
        ex.fit_gpd(np.array([np.nan, np.nan]))
    with pytest.raises(ValueError, match="`method`"):
        ex.fit_gpd(y, method="pwm")
    with pytest.raises(ValueError, match="`x`"):
        ex.exceedances(np.array([]), 0.0)
    with pytest.raises(ValueError, match="`x`"):
        ex.exceedances(np.array([np.nan, np.nan]), 0.0)
    with pytest.raises(ValueError, match="`threshold`"):
        ex.exceedances(y, 1e9)
    with pytest.raises(ValueError, match="`x`"):
        ex.mean_excess(np.array([np.nan]), np.array([0.0]))
    fit = ex.fit_gpd(y)
    for period in (0.0, -1.0, np.array([10.0, 0.0])):
        with pytest.raises(ValueError, match="`return_period`"):
            ex.return_level(fit, 0.0, 1.0, period)
    with pytest.raises(ValueError, match="`rate_per_block`"):
        ex.return_level(fit, 0.0, 0.0, 10.0)
    with pytest.raises(ValueError, match="`scale`"):
        ex.gpd_logpdf(1.0, 0.1, -1.0)
    with pytest.raises(ValueError, match="`n`"):
        ex.gpd_sample(jax.random.key(0), fit, -3)
