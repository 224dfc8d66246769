"""Anomaly detection: the conformal threshold (hand computation, numpy, its exact marginal false-alarm rate), a
false-alarm rate within Monte-Carlo bounds for an exact Gaussian likelihood, ROC AUC against Mann–Whitney, delays,
fault injectors, the filter score against a dense Gaussian, the IWAE score, and input errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import twinjax as tj
from tests.helpers import assert_tree_allclose
from twinjax.diagnostics import anomaly as an
from twinjax.generative.vae import VAE, NeuralDecoder


class _StdNormal:
    """An exact explicit-likelihood model: ``N(0, I_d)`` with ``sample`` and ``log_prob``."""

    def __init__(self, d):
        self.d = d

    def sample(self, key, n):
        return jax.random.normal(key, (n, self.d))

    def log_prob(self, x):
        return jnp.sum(jax.scipy.stats.norm.logpdf(x), axis=-1)


# ------------------------------------------------------------------------------------------------ conformal threshold


def test_conformal_threshold_hand_computation():
    scores = jnp.array([3.0, 1.0, 2.0, 5.0, 4.0])  # M = 5
    assert float(an.conformal_threshold(scores, 0.2)) == 5.0  # k = ⌈6 · 0.8⌉ = ⌈4.8⌉ = 5
    assert float(an.conformal_threshold(scores, 0.34)) == 4.0  # k = ⌈6 · 0.66⌉ = ⌈3.96⌉ = 4
    assert float(an.conformal_threshold(scores, 0.5)) == 3.0  # k = ⌈3⌉ = 3 exactly
    # M = 99, α = 0.05: (M + 1)(1 − α) = 95 exactly in rationals (100 · 0.95 rounds to 95.00000000000001 in floats)
    assert float(an.conformal_threshold(jnp.arange(1.0, 100.0), 0.05)) == 95.0


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.37])
def test_conformal_threshold_matches_numpy(alpha):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((999, 3))
    k = math.ceil(1000 * (1 - alpha) - 1e-9)
    expected = np.quantile(scores, k / 999, axis=0, method="inverted_cdf")
    assert_tree_allclose(an.conformal_threshold(scores, alpha), jnp.asarray(expected))
    assert_tree_allclose(an.conformal_threshold(scores[:, 1], alpha), jnp.asarray(np.sort(scores[:, 1])[k - 1]))


@pytest.mark.parametrize(("alpha", "m"), [(0.05, 19), (0.07, 19), (0.2, 9)])
def test_conformal_marginal_false_alarm_rate_is_exact(alpha, m):
    """Over many calibration draws, P(S_new > τ) = (M + 1 − k)/(M + 1) ∈ [α − 1/(M + 1), α] (continuous scores)."""
    reps = 20_000
    model = _StdNormal(2)
    keys = jax.random.split(jax.random.key(1), reps)

    def one(k):
        s = an.log_prob_score(model, model.sample(k, m + 1))  # M calibration scores and one new nominal score
        return an.detect(s[-1], an.conformal_threshold(s[:-1], alpha))

    far = float(jnp.mean(jax.vmap(one)(keys)))
    k = math.ceil((m + 1) * (1 - alpha) - 1e-9)
    exact = (m + 1 - k) / (m + 1)
    assert alpha - 1 / (m + 1) <= exact <= alpha
    se = math.sqrt(exact * (1 - exact) / reps)
    assert abs(far - exact) <= 3 * se


def test_false_alarm_rate_within_monte_carlo_bounds_exact_gaussian():
    """A Gaussian with exact log_prob: τ from M synthetic samples, FAR on N fresh ones within 3 total SE of α (the
    total SE includes the calibration's spread √(α(1 − α)/M)) and inside the one-sided conformal bounds' slack."""
    model = _StdNormal(3)
    m, n = 20_000, 20_000
    k_cal, k_test = jax.random.split(jax.random.key(2))
    cal = an.log_prob_score(model, model.sample(k_cal, m))
    test = an.log_prob_score(model, model.sample(k_test, n))
    for alpha in (0.01, 0.05):
        tau = an.conformal_threshold(cal, alpha)
        far, se = an.false_alarm_rate(test, tau)
        total = math.sqrt(alpha * (1 - alpha) * (1 / n + 1 / m))
        assert abs(float(far) - alpha) <= 3 * total
        assert float(se) == pytest.approx(math.sqrt(float(far) * (1 - float(far)) / n))
        # the exact quantile of −log N(x; 0, I_3): ½ χ²₃ + (3/2) log 2π
        exact = 0.5 * scipy.stats.chi2.ppf(1 - alpha, 3) + 1.5 * math.log(2 * math.pi)
        assert abs(float(tau) - exact) < 0.1


def test_conformal_threshold_errors():
    scores = jnp.arange(10.0)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            an.conformal_threshold(scores, bad)
    with pytest.raises(ValueError, match=r"alpha.*1/\(M \+ 1\).*M=10"):
        an.conformal_threshold(scores, 0.05)
    with pytest.raises(ValueError, match="scores"):
        an.conformal_threshold(jnp.asarray(1.0), 0.5)
    with pytest.raises(ValueError, match="scores"):
        an.conformal_threshold(jnp.zeros((0,)), 0.5)
    with pytest.raises(Exception, match="NaN"):
        an.conformal_threshold(scores.at[3].set(jnp.nan), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        jax.jit(an.conformal_threshold)(scores, 0.5)  # a traced alpha cannot set k


# ------------------------------------------------------------------------------------------------- ROC, alarms, delay


def test_roc_auc_hand_computation_and_ties():
    assert float(an.roc_auc(jnp.array([0.0, 1.0]), jnp.array([1.0, 2.0]))) == 0.875  # (½ + 1 + 1 + 1) / 4
    assert float(an.roc_auc(jnp.array([1.0, 1.0]), jnp.array([1.0]))) == 0.5
    assert float(an.roc_auc(jnp.array([0.0]), jnp.array([1.0, 2.0]))) == 1.0
    assert float(an.roc_auc(jnp.array([3.0]), jnp.array([1.0, 2.0]))) == 0.0


def test_roc_auc_matches_mann_whitney_and_roc_curve_area():
    rng = np.random.default_rng(3)
    nominal = np.round(rng.standard_normal(300), 1)  # rounded: many ties
    faulty = np.round(rng.standard_normal(200) + 0.7, 1)
    u = scipy.stats.mannwhitneyu(faulty, nominal).statistic
    auc = float(an.roc_auc(nominal, faulty))
    assert auc == pytest.approx(u / (300 * 200), abs=1e-12)
    fpr, tpr = an.roc_curve(nominal, faulty)
    assert np.all(np.diff(np.asarray(fpr)) >= 0) and np.all(np.diff(np.asarray(tpr)) >= 0)
    assert (float(fpr[0]), float(tpr[0]), float(fpr[-1]), float(tpr[-1])) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(np.asarray(tpr), np.asarray(fpr)) == pytest.approx(auc, abs=1e-12)


def test_detect_and_false_alarm_rate():
    s = jnp.array([1.0, 2.0, 3.0, 4.0])
    assert np.array_equal(np.asarray(an.detect(s, 2.0)), [False, False, True, True])  # strict: S = τ is no alarm
    far, se = an.false_alarm_rate(s, 2.0)
    assert float(far) == 0.5 and float(se) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="scores"):
        an.false_alarm_rate(jnp.ones((2, 2)), 0.0)


def test_detection_delay():
    s = jnp.array([5.0, 0.0, 0.0, 0.0, 5.0, 5.0])
    assert float(an.detection_delay(s, 1.0, 2)) == 2.0  # the alarm at step 0 is before the onset
    assert float(an.detection_delay(s, 1.0, 4)) == 0.0
    assert float(an.detection_delay(s, 10.0, 1)) == math.inf
    tau = jnp.array([9.0, 9.0, 9.0, 9.0, 9.0, 1.0])  # one threshold per step
    assert float(an.detection_delay(s, tau, 1)) == 4.0
    batch = jnp.stack([s, jnp.zeros(6)])
    assert np.array_equal(np.asarray(an.detection_delay(batch, 1.0, 2)), [2.0, math.inf])
    with pytest.raises(ValueError, match="onset"):
        an.detection_delay(s, 1.0, 6)
    with pytest.raises(ValueError, match="scores"):
        an.detection_delay(jnp.asarray(1.0), 1.0, 0)


def test_sliding_sum_matches_brute_force():
    x = np.random.default_rng(4).standard_normal((3, 9))
    for w in (1, 3, 9, 12):
        expected = np.stack([[x[i, max(0, t - w + 1) : t + 1].sum() for t in range(9)] for i in range(3)])
        assert_tree_allclose(an.sliding_sum(x, w), jnp.asarray(expected))
    with pytest.raises(ValueError, match="width"):
        an.sliding_sum(x, 0)


# ------------------------------------------------------------------------------------------------------------ faults


def test_fault_injectors():
    ys = jnp.arange(12.0).reshape(6, 2)
    b = an.inject_bias(ys, 2, jnp.array([10.0, 0.0]))
    assert_tree_allclose(b[:2], ys[:2])
    assert_tree_allclose(b[2:], ys[2:] + jnp.array([10.0, 0.0]))
    d = an.inject_drift(ys, 3, 0.5)
    assert_tree_allclose(d - ys, jnp.array([0, 0, 0, 0, 0.5, 1.0])[:, None] * jnp.ones((1, 2)))
    s = an.inject_stuck(ys, 2, jnp.array([False, True]))
    assert_tree_allclose(s[:, 0], ys[:, 0])
    assert_tree_allclose(s[:, 1], jnp.array([1.0, 3.0, 5.0, 5.0, 5.0, 5.0]))
    assert_tree_allclose(an.inject_stuck(ys, 4)[4:], jnp.broadcast_to(ys[4], (2, 2)))
    # traced onsets work (vmapped over onset)
    batch = jax.vmap(lambda o: an.inject_bias(ys, o, 1.0))(jnp.array([0, 5]))
    assert_tree_allclose(batch[0], ys + 1.0)
    assert_tree_allclose(batch[1][:5], ys[:5])


def test_inject_noise_variance():
    ys = jnp.zeros((20_000, 2))
    out = an.inject_noise(jax.random.key(5), ys, 10_000, jnp.array([2.0, 0.0]))
    assert np.all(np.asarray(out[:10_000]) == 0.0) and np.all(np.asarray(out[:, 1]) == 0.0)
    var = float(jnp.var(out[10_000:, 0]))
    assert abs(var - 4.0) <= 4 * 4.0 * math.sqrt(2 / 10_000)  # k × SE of a sample variance


def test_fault_injector_errors():
    ys = jnp.zeros((5, 2))
    with pytest.raises(ValueError, match="bias"):
        an.inject_bias(ys, 1, jnp.ones(3))
    with pytest.raises(ValueError, match="rate"):
        an.inject_drift(ys, 1, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="sd"):
        an.inject_noise(jax.random.key(0), ys, 1, jnp.ones(4))
    with pytest.raises(ValueError, match="ys"):
        an.inject_bias(jnp.zeros(5), 1, 1.0)
    with pytest.raises(ValueError, match="onset"):
        an.inject_bias(ys, 5, 1.0)
    with pytest.raises(ValueError, match="channels"):
        an.inject_stuck(ys, 1, jnp.array([1, 0]))


def _scalar_twin(a, obs_sd=1e-6):
    eye = jnp.eye(1)
    return tj.LinearGaussianSSM(a * eye, None, eye, None, 0.0 * eye, obs_sd**2 * eye, jnp.ones(1), 0.0 * eye)


def test_simulate_parameter_change():
    """x_{k+1} = a x_k from x_0 = 1 with a = 0.9 up to the onset, then a = 0.5: y_k ≈ 0.9^min(k, o) 0.5^(k−o)⁺."""
    twin, changed = _scalar_twin(0.9), _scalar_twin(0.5)
    ts = jnp.arange(8.0)
    ys = an.simulate_parameter_change(twin, changed, ts, 3, key=jax.random.key(6), x0=jnp.ones(1))
    k = np.arange(8)
    expected = 0.9 ** np.minimum(k, 3) * 0.5 ** np.maximum(k - 3, 0)
    assert_tree_allclose(ys[:, 0], jnp.asarray(expected), atol=1e-4, rtol=0)
    ys0 = an.simulate_parameter_change(twin, changed, ts, 0, key=jax.random.key(6), x0=jnp.ones(1))
    assert_tree_allclose(ys0[:, 0], jnp.asarray(0.5**k), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="onset"):
        an.simulate_parameter_change(twin, changed, ts, 8, key=jax.random.key(6))
    with pytest.raises(ValueError, match="controls"):
        an.simulate_parameter_change(twin, changed, ts, 2, key=jax.random.key(6), controls=jnp.zeros((3, 1)))


# ------------------------------------------------------------------------------------------------------------ scores


def test_filter_score_matches_dense_gaussian():
    """The sum of one-step predictive NLLs of a linear-Gaussian twin is −log N(y; 0, Σ) of the stacked window."""
    A = jnp.array([[0.9, 0.2], [-0.1, 0.8]])
    C = jnp.array([[1.0, 0.5]])
    Q, R, P0 = 0.05 * jnp.eye(2), jnp.array([[0.2]]), 0.3 * jnp.eye(2)
    twin = tj.LinearGaussianSSM(A, None, C, None, Q, R, jnp.zeros(2), P0)
    T = 6
    ys = tj.simulate(twin, None, jnp.arange(float(T)), key=jax.random.key(7)).ys
    # dense covariance of (x_0..x_{T-1}): Cov(x_i, x_j) = A^{i-j} Cov(x_j) for i ≥ j
    covs = [P0]
    for _ in range(T - 1):
        covs.append(A @ covs[-1] @ A.T + Q)
    Sx = np.zeros((2 * T, 2 * T))
    for i in range(T):
        for j in range(i + 1):
            block = np.linalg.matrix_power(np.asarray(A), i - j) @ np.asarray(covs[j])
            Sx[2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = block
            Sx[2 * j : 2 * j + 2, 2 * i : 2 * i + 2] = block.T
    H = np.kron(np.eye(T), np.asarray(C))
    Sy = H @ Sx @ H.T + np.kron(np.eye(T), np.asarray(R))
    expected = -scipy.stats.multivariate_normal(np.zeros(T), Sy).logpdf(np.asarray(ys[:, 0]))
    for method in ("kf", "ekf", "ukf"):
        per_step = an.filter_score(twin, ys, method=method)
        assert per_step.shape == (T,)
        assert float(an.window_score(twin, ys, method=method)) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="method"):
        an.filter_score(twin, ys, method="pf")


def test_log_prob_score():
    x = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    s = an.log_prob_score(_StdNormal(2), x)
    assert_tree_allclose(s, 0.5 * jnp.sum(x**2, axis=1) + math.log(2 * math.pi))
    with pytest.raises(ValueError, match="model"):
        an.log_prob_score(object(), x)


def test_iwae_score_bounds_elbo():
    """K = 1 is the ELBO in expectation (k × SE); K = 64 gives a smaller score (a tighter bound) on average."""
    key = jax.random.key(8)
    dec = NeuralDecoder(2, (5, 1), key, width=8, depth=1)
    vae = VAE(dec, key, width=8, depth=1)
    y = jax.random.normal(jax.random.key(9), (4, 5, 1))
    draws = jax.vmap(lambda k: an.iwae_score(vae, k, y, samples=1))(jax.random.split(key, 4000))  # (4000, 4)
    elbo = vae.elbo(jax.random.key(10), y, samples=4000)
    se = jnp.std(draws, axis=0) / math.sqrt(4000)
    # both estimates carry Monte-Carlo error of about the same size (the ELBO's analytic KL makes its own smaller)
    assert bool(jnp.all(jnp.abs(jnp.mean(draws, axis=0) + elbo) <= 4 * math.sqrt(2) * se))
    tight = jnp.mean(jax.vmap(lambda k: an.iwae_score(vae, k, y, samples=64))(jax.random.split(key, 200)), axis=0)
    assert bool(jnp.all(tight < jnp.mean(draws, axis=0)))
    with pytest.raises(ValueError, match="samples"):
        an.iwae_score(vae, key, y, samples=0)
