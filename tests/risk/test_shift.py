"""``twinjax.risk.shift``: the two-sample tests' null calibration and power, exact binomial p-values against scipy,
density ratios against analytic Gaussian ratios, the support check's refusal, VaR/CVaR against NumPy and closed forms,
bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from twinjax.generative.metrics import mmd
from twinjax.risk import shift


def _norm_logpdf(mu, sd=1.0):
    return lambda x: jax.scipy.stats.norm.logpdf(x, mu, sd)


# ------------------------------------------------------------------------------------------------------------ MMD test


def test_mmd_test_statistic_is_metrics_mmd_and_detects_shift(key):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (200,))
    y = 0.5 + jax.random.normal(k2, (200,))
    stat, p = shift.mmd_test(k3, x, y, permutations=500, bandwidth=1.3)
    np.testing.assert_allclose(stat, mmd(x[:, None], y[:, None], jnp.asarray([1.3])), rtol=1e-12)
    stat, p = shift.mmd_test(k3, x, y, permutations=500)
    assert p < 0.01
    assert p >= 1.0 / 501


def test_mmd_test_null_pvalues_roughly_uniform(key):
    reps, n = 100, 50
    kx, ky, kp = jax.random.split(key, 3)
    xs = jax.random.normal(kx, (reps, n))
    ys = jax.random.normal(ky, (reps, n))
    ps = jax.vmap(lambda k, a, b: shift.mmd_test(k, a, b, permutations=100)[1])(jax.random.split(kp, reps), xs, ys)
    ps = np.asarray(ps)
    rate, se = np.mean(ps <= 0.05), np.sqrt(0.05 * 0.95 / reps)
    assert abs(rate - 0.05) <= 3 * se, rate
    assert abs(ps.mean() - 0.5) <= 3 * np.sqrt(1 / 12 / reps), ps.mean()


# ---------------------------------------------------------------------------------------------------- classifier test


def test_classifier_test_exact_binomial_pvalue_and_power(key):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (300, 2))
    y = jax.random.normal(k2, (300, 2)) + jnp.asarray([1.5, 0.0])
    res = shift.classifier_test(k3, x, y, steps=200)
    assert res.n_test == 300
    k = int(res.correct)
    np.testing.assert_allclose(res.p_value, stats.binom.sf(k - 1, res.n_test, 0.5), rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(res.accuracy, k / res.n_test)
    assert res.p_value < 1e-6 and res.accuracy > 0.6
    for kk in (0, 1, 70, 150, 151, 200, 299, 300):
        np.testing.assert_allclose(shift._binomial_sf_half(kk, 300), stats.binom.sf(kk - 1, 300, 0.5), rtol=1e-10)


def test_classifier_test_null_rejection_rate(key):
    reps, n = 60, 100
    kx, ky, kp = jax.random.split(key, 3)
    xs, ys = jax.random.normal(kx, (reps, n)), jax.random.normal(ky, (reps, n))

    def one(k, a, b):
        r = shift.classifier_test(k, a, b, steps=30)
        return r.p_value

    ps = np.asarray(jax.vmap(one)(jax.random.split(kp, reps), xs, ys))
    assert np.mean(ps <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps)


# ------------------------------------------------------------------------------------------------ importance weighting


def test_density_ratio_known_gaussians_exact_and_weighted_mean(key):
    x = jax.random.normal(key, (4000,))
    iw = shift.density_ratio_weights(x, log_p_target=_norm_logpdf(0.5), log_p_source=_norm_logpdf(0.0))
    np.testing.assert_allclose(iw.weights, np.exp(0.5 * np.asarray(x) - 0.125), rtol=1e-12)
    w = np.asarray(iw.weights)
    np.testing.assert_allclose(iw.ess, w.sum() ** 2 / (w**2).sum(), rtol=1e-10)
    np.testing.assert_allclose(iw.normalized.sum(), 1.0, rtol=1e-12)
    est, se = shift.importance_weighted_mean(x, iw.weights)
    assert abs(float(est) - 0.5) <= 4 * float(se), (est, se)
    assert 0.0 < float(se) < 0.05


def test_classifier_density_ratio_matches_analytic_log_ratio(key):
    k1, k2, k3 = jax.random.split(key, 3)
    src, tgt = jax.random.normal(k1, (5000,)), 0.5 + jax.random.normal(k2, (5000,))
    clf = shift.fit_classifier(k3, src, tgt, steps=500)
    grid = jnp.linspace(-2.0, 2.0, 41)
    iw = shift.density_ratio_weights(grid, classifier=clf)
    slope, intercept = np.polyfit(np.asarray(grid), np.asarray(iw.log_weights), 1)
    assert abs(slope - 0.5) <= 0.05, slope  # truth: log w = 0.5 x − 0.125
    assert abs(intercept + 0.125) <= 0.06, intercept
    # a plain probability callable with explicit class counts gives the same weights
    iw2 = shift.density_ratio_weights(grid, classifier=lambda g: clf(g), n_source=5000, n_target=5000)
    np.testing.assert_allclose(iw2.log_weights, iw.log_weights, rtol=1e-8, atol=1e-10)


def test_support_check_flags_and_refuses(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    src = jax.random.normal(k1, (1000,))
    far = 5.0 + 0.1 * jax.random.normal(k2, (1000,))
    near = 0.5 + jax.random.normal(k3, (1000,))
    # by the known source density
    rep = shift.support_check(far, log_p_source=_norm_logpdf(0.0), density_floor=1e-5)
    assert rep.count == 1000
    iw = shift.density_ratio_weights(src, log_p_target=_norm_logpdf(5.0, 0.1), log_p_source=_norm_logpdf(0.0))
    with pytest.raises(ValueError, match="1000 of 1000 target points"):
        shift.importance_weighted_mean(src, iw.weights, support=rep)
    assert shift.support_check(near, log_p_source=_norm_logpdf(0.0), density_floor=1e-5).count == 0
    # by a classifier
    clf = shift.fit_classifier(k4, src, far, steps=500, learning_rate=0.2)
    rep = shift.support_check(far, classifier=clf, eps=1e-2)
    assert rep.count == 1000
    clf_near = shift.fit_classifier(k4, src, near, steps=500, learning_rate=0.2)
    rep_near = shift.support_check(near, classifier=clf_near, eps=1e-2)
    assert rep_near.count == 0
    iw = shift.density_ratio_weights(src, classifier=clf_near)
    est, se = shift.importance_weighted_mean(src, iw.weights, support=rep_near)
    assert abs(float(est) - 0.5) <= 4 * float(se) + 0.05
    # by a ratio cap
    rep = shift.support_check(
        far, log_weights=lambda t: _norm_logpdf(5.0, 0.1)(t) - _norm_logpdf(0.0)(t), ratio_cap=1e3
    )
    assert rep.count >= 995  # the far left tail of N(5, 0.1) has a moderate ratio


# ---------------------------------------------------------------------------------------------------------- tail risk


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.37, 1.0])
def test_var_matches_numpy_inverted_cdf(key, alpha):
    x = np.asarray(jax.random.normal(key, (1001,)))
    assert float(shift.var(x, alpha)) == np.quantile(x, 1 - alpha, method="inverted_cdf")
    # cvar is the mean of the worst ceil(alpha n) … exactly Rockafellar–Uryasev's minimum over t
    ts = np.sort(x)
    ru = min(t + np.mean(np.maximum(x - t, 0)) / alpha for t in ts)
    np.testing.assert_allclose(shift.cvar(x, alpha), ru, rtol=1e-10)
    np.testing.assert_allclose(shift.cvar(x, alpha, weights=np.full(x.shape, 3.0)), shift.cvar(x, alpha), rtol=1e-10)


def test_cvar_closed_forms(key):
    k1, k2 = jax.random.split(key)
    alpha, n = 0.05, 200_000
    u = jax.random.uniform(k1, (n,))
    z = jax.random.normal(k2, (n,))
    tr_u = shift.twin_cvar(k1, lambda k, m: jax.random.uniform(k, (m,)), lambda v: v, alpha, n)
    np.testing.assert_allclose(tr_u.cvar, shift.cvar(u, alpha), rtol=1e-12)
    assert abs(float(tr_u.cvar) - (1 - alpha / 2)) <= 4 * float(tr_u.standard_error)
    tr_z = shift.twin_cvar(k2, lambda k, m: jax.random.normal(k, (m,)), lambda v: v, alpha, n)
    truth = stats.norm.pdf(stats.norm.ppf(1 - alpha)) / alpha
    assert abs(float(tr_z.cvar) - truth) <= 4 * float(tr_z.standard_error), (tr_z.cvar, truth, tr_z.standard_error)
    assert abs(float(tr_z.var) - stats.norm.ppf(1 - alpha)) < 0.02
    # importance-weighted CVaR: N(0,1) samples reweighted to N(0.5,1) give the shifted closed form
    w = np.exp(0.5 * np.asarray(z) - 0.125)
    np.testing.assert_allclose(shift.cvar(z, alpha, weights=w), truth + 0.5, atol=0.05)


# ---------------------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_argument(key):
    x = jnp.zeros((10,))
    with pytest.raises(ValueError, match="permutations"):
        shift.mmd_test(key, x, x, permutations=0)
    with pytest.raises(ValueError, match="`y`"):
        shift.mmd_test(key, x, jnp.zeros((1,)))
    with pytest.raises(ValueError, match="bandwidth"):
        shift.mmd_test(key, x, x, bandwidth=-1.0)
    with pytest.raises(ValueError, match="`y` must have as many"):
        shift.classifier_test(key, x, jnp.zeros((12,)), steps=5)
    with pytest.raises(ValueError, match="steps"):
        shift.classifier_test(key, x, x, steps=0)
    with pytest.raises(ValueError, match="exactly one"):
        shift.density_ratio_weights(x)
    with pytest.raises(ValueError, match="both"):
        shift.density_ratio_weights(x, log_p_target=_norm_logpdf(0.0))
    with pytest.raises(ValueError, match="eps"):
        shift.support_check(x, classifier=lambda t: 0.5 * jnp.ones(t.shape[0]), eps=2.0)
    with pytest.raises(ValueError, match="density_floor"):
        shift.support_check(x, log_p_source=_norm_logpdf(0.0))
    with pytest.raises(ValueError, match="weights"):
        shift.importance_weighted_mean(x, -jnp.ones(10))
    with pytest.raises(ValueError, match="alpha"):
        shift.cvar(x, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        shift.var(x, 1.5)
    with pytest.raises(ValueError, match="losses"):
        shift.cvar(jnp.zeros((3, 2)), 0.1)
    with pytest.raises(ValueError, match="weights"):
        shift.cvar(x, 0.1, weights=jnp.ones(3))
    with pytest.raises(ValueError, match="loss_fn"):
        shift.twin_cvar(key, lambda k, m: jnp.zeros((m, 2)), lambda v: v, 0.1, 10)
