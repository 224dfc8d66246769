"""Residual diagnostics: NIS of a correct Kalman filter is χ² (mean, KS), χ² thresholds against scipy, masked channels
against a dense computation, CUSUM ARL₀ (Siegmund and Monte-Carlo calibration) within Monte-Carlo error, detection of
a bias and of a variance increase, parameter-drift detection on an augmented-state EKF, and input errors.

Slow tests measure ARL₀ over long nominal runs of real twins with their filters (KF; pendulum EKF/UKF) and the
pendulum drift detector. ``python tests/diagnostics/test_residuals.py`` prints the figures of
``docs/diagnostics_residuals.md`` and draws its figure.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import twinjax as tj
from tests.helpers import assert_tree_allclose
from twinjax.diagnostics import residuals as rd
from twinjax.inference import extended_kalman_filter, kalman_filter
from twinjax.model.dynamics import AbstractDiscreteDynamics

K_SE = 4.0  # stochastic assertions: within 4 Monte-Carlo standard errors
T = 2000  # one length for every fast Kalman-filter run: simulate and filter compile once


def _lgssm():
    """A damped rotation observed on both coordinates."""
    A = jnp.array([[0.9, 0.2], [-0.2, 0.9]])
    C = jnp.array([[1.0, 0.0], [0.5, 1.0]])
    return tj.LinearGaussianSSM(
        A, jnp.zeros((2, 0)), C, jnp.zeros((2, 0)), 0.1 * jnp.eye(2), 0.2 * jnp.eye(2), jnp.zeros(2), jnp.eye(2)
    )


def _kf_innovations(model, key, T=T, bias=None, onset=0, var_ratio=1.0):
    """Simulate ``T`` steps of the twin, optionally corrupt the sensor from ``onset``, run the KF."""
    path = tj.simulate(model, None, jnp.arange(T, dtype=float), key=key)
    ys = path.ys
    after = (jnp.arange(T) >= onset)[:, None]
    if bias is not None:
        ys = ys + jnp.where(after, jnp.asarray(bias), 0.0)
    if var_ratio != 1.0:
        noise = ys - jax.vmap(lambda x: model.C @ x)(path.xs)
        ys = jnp.where(after, ys + (math.sqrt(var_ratio) - 1.0) * noise, ys)
    return kalman_filter(model, ys).innovations


# ------------------------------------------------------------------------------------------------ χ² and NIS


def test_chi2_quantile_matches_scipy():
    q = np.array([0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1 - 1e-6])
    for d in [1, 2, 3, 7, 30, 200]:
        assert_tree_allclose(rd.chi2_quantile(q, d), jnp.asarray(scipy.stats.chi2.ppf(q, d)), rtol=1e-9, atol=1e-9)
    alphas = np.array([0.1, 0.05, 0.01])
    dofs = np.array([1, 4, 12])
    assert_tree_allclose(rd.chi2_threshold(alphas[0], dofs), jnp.asarray(scipy.stats.chi2.ppf(0.9, dofs)), rtol=1e-9)
    assert float(rd.chi2_quantile(0.9, 0)) == 0.0


def test_nis_of_correct_kalman_filter_is_chi2(key):
    inn = _kf_innovations(_lgssm(), key)
    eps, dof = rd.nis(inn.residual, inn.covariance, inn.mask)
    assert np.all(np.asarray(dof) == 2)
    # mean = dof within MC error (Var χ²_2 = 4)
    assert abs(float(eps.mean()) - 2.0) < K_SE * math.sqrt(4.0 / T)
    # the whole distribution: Kolmogorov–Smirnov against χ²_2 (fixed seed; a p-value this small would be a bug)
    assert scipy.stats.kstest(np.asarray(eps), scipy.stats.chi2(2).cdf).pvalue > 1e-3
    # the per-step test alarms with probability α
    alpha = 0.05
    rate = float(rd.nis_test(eps, dof, alpha).mean())
    assert abs(rate - alpha) < K_SE * math.sqrt(alpha * (1 - alpha) / T)
    # windowed NIS ~ χ²_{2w}: its level-α test also alarms a fraction α of the (overlapping) windows
    eps_w, dof_w = rd.windowed_nis(eps, dof, 10)
    assert eps_w.shape == (T - 9,) and np.all(np.asarray(dof_w) == 20)
    assert_tree_allclose(eps_w[0], eps[:10].sum())
    rate_w = float(rd.nis_test(eps_w, dof_w, alpha).mean())
    # overlapping windows are correlated: the effective sample is ~T / w windows
    assert abs(rate_w - alpha) < K_SE * math.sqrt(alpha * (1 - alpha) / (T / 10))
    # filter_nis reads the same from the result
    result = kalman_filter(_lgssm(), tj.simulate(_lgssm(), None, jnp.arange(float(T)), key=key).ys)
    assert_tree_allclose(rd.filter_nis(result), (eps, dof))


def test_masked_channels_match_dense_computation(key):
    model = _lgssm()
    path = tj.simulate(model, None, jnp.arange(T, dtype=float), key=key)
    drop = jax.random.uniform(jax.random.fold_in(key, 1), path.ys.shape) < 0.3
    ys = jnp.where(drop, jnp.nan, path.ys)
    inn = kalman_filter(model, ys).innovations
    eps, dof = rd.nis(inn.residual, inn.covariance, inn.mask)
    assert_tree_allclose(dof, jnp.sum(~drop, axis=1).astype(jnp.int32))
    # dense: the observed sub-block of S, step by step (a few steps, incl. fully missing ones)
    e, S, m = (np.asarray(a) for a in (inn.residual, inn.covariance, inn.mask))
    for k in range(40):
        o = m[k]
        expected = e[k, o] @ np.linalg.solve(S[k][np.ix_(o, o)], e[k, o]) if o.any() else 0.0
        assert abs(float(eps[k]) - expected) < 1e-9 * (1 + abs(expected))
    # with NaN innovations and no mask, the NaN channels are the missing ones
    e_nan = jnp.where(inn.mask, inn.residual, jnp.nan)
    assert_tree_allclose(rd.nis(e_nan, inn.covariance)[0], eps)
    # χ² with a varying dof: E[ε] = E[d], and the level-α test is exact per step
    assert abs(float(eps.mean() - dof.mean())) < K_SE * math.sqrt(2 * float(dof.mean()) / T)
    rate = float(rd.nis_test(eps, dof, 0.05).sum() / (dof > 0).sum())
    assert abs(rate - 0.05) < K_SE * math.sqrt(0.05 * 0.95 / T)
    # standardised innovations are N(0, 1) on observed channels and exactly 0 on missing ones
    z, mask = rd.whiten(inn.residual, inn.covariance, inn.mask)
    assert np.all(np.asarray(z)[~np.asarray(mask)] == 0.0)
    zo = np.asarray(z)[np.asarray(mask)]
    assert abs(zo.mean()) < K_SE / math.sqrt(zo.size) and abs(zo.var() - 1) < K_SE * math.sqrt(2 / zo.size)


# ------------------------------------------------------------------------------------------------ CUSUM and ARL


def test_siegmund_formula_known_values():
    # Siegmund's approximation for k = 0.5, h = 4 is 338 (exact ARL₀ 336, Page 1954 / Brook & Evans 1972)
    assert abs(float(rd.siegmund_arl(4.0, 0.5)) - 338.1) < 0.1
    h = rd.siegmund_threshold(500.0, 0.5)
    assert_tree_allclose(rd.siegmund_arl(h, 0.5), jnp.asarray(500.0), rtol=1e-9)
    h2 = rd.siegmund_threshold(500.0, 0.5, cusums=2)
    assert_tree_allclose(rd.siegmund_arl(h2, 0.5), jnp.asarray(1000.0), rtol=1e-9)
    assert float(rd.siegmund_arl(h, 0.5, 1.0)) < 15.0  # ARL₁ for a one-sigma shift


def test_siegmund_arl0_matches_monte_carlo(key):
    """The Siegmund-calibrated h gives the stated ARL₀ on i.i.d. N(0, 1) input, within MC error (+ 3 % for the
    approximation itself, which is ~1 % at these ARLs)."""
    arl0 = 100.0
    z = jax.random.normal(key, (16, 20_000))
    h1 = rd.siegmund_threshold(arl0, 0.5)
    one = rd.run_lengths(jax.vmap(lambda s: rd.cusum(s - 0.5, h1).alarms)(z))
    assert abs(one.arl - arl0) < K_SE * one.se + 0.03 * arl0, one
    # two-sided, two channels: 4 CUSUMs raced, each tuned to 4 · ARL₀
    z2 = z.reshape(8, 20_000, 2)
    h4 = rd.siegmund_threshold(arl0, 0.5, cusums=4)
    four = rd.run_lengths(jax.vmap(lambda s: rd.mean_cusum(s, 1.0, h4).alarms)(z2))
    assert abs(four.arl - arl0) < K_SE * four.se + 0.05 * arl0, four


def test_monte_carlo_calibration_of_variance_cusum(key):
    """h calibrated on one set of χ² draws gives ARL₀ on independent draws within their joint MC error."""
    arl0, lam, d = 50.0, 2.0, 2
    kappa = float(rd.variance_reference(lam))
    assert abs(kappa - 2 * math.log(2)) < 1e-12
    k1, k2 = jax.random.split(key)
    h = rd.calibrate_cusum(jax.random.chisquare(k1, d, (8, 10_000)) - kappa * d, arl0, iters=30)
    eps = jax.random.chisquare(k2, d, (8, 10_000))
    measured = rd.run_lengths(jax.vmap(lambda e: rd.nis_cusum(e, jnp.full(e.shape, d), lam, h).alarms)(eps))
    se_cal = arl0 / math.sqrt(8 * 10_000 / arl0)  # the calibration sample's own error
    assert abs(measured.arl - arl0) < K_SE * math.hypot(measured.se, se_cal), measured


def test_cusum_detects_bias_and_variance_increase(key):
    model = _lgssm()
    onset = 1000
    h = rd.siegmund_threshold(1e5, 0.5, cusums=4)  # no false alarm in the 1000 steps before the onset
    inn = _kf_innovations(model, key, bias=jnp.array([1.5, 0.0]), onset=onset)
    z, mask = rd.whiten(inn.residual, inn.covariance, inn.mask)
    res = rd.mean_cusum(z, 1.0, h, mask, reset=False)
    first = int(res.first_alarm)
    assert onset <= first < onset + 60, first
    assert res.statistic.shape == (T,) and bool(res.alarms[first])
    # a variance increase ×3 in the sensor noise, NIS CUSUM tuned for λ = 2
    inn = _kf_innovations(model, jax.random.fold_in(key, 1), onset=onset, var_ratio=3.0)
    eps, dof = rd.nis(inn.residual, inn.covariance, inn.mask)
    hv = rd.calibrate_cusum(jax.random.chisquare(key, 2, (8, 10_000)) - 2 * rd.variance_reference(2.0), 2000.0)
    alarms = np.asarray(rd.nis_cusum(eps, dof, 2.0, hv).alarms)
    assert alarms[:onset].sum() <= 3  # ARL₀ = 2000: about 0.5 expected false alarms before the onset
    first = onset + int(np.argmax(alarms[onset:]))
    assert alarms[onset:].any() and first < onset + 60, first


def test_masked_channels_hold_the_cusum():
    z = jnp.array([[3.0, 0.0], [jnp.nan, 0.0], [3.0, 0.0]])
    res = rd.mean_cusum(z, 1.0, 100.0, two_sided=False)
    assert_tree_allclose(res.statistic, jnp.array([2.5, 2.5, 5.0]))
    mask = jnp.array([[True, True], [True, True], [False, True]])
    res = rd.mean_cusum(jnp.nan_to_num(z, nan=3.0), 1.0, 100.0, mask, two_sided=False)
    assert_tree_allclose(res.statistic, jnp.array([2.5, 5.0, 5.0]))
    # a fully missing NIS step (dof 0) holds the variance CUSUM
    res = rd.nis_cusum(jnp.array([5.0, 0.0, 5.0]), jnp.array([1, 0, 1]), 2.0, 100.0)
    k = float(rd.variance_reference(2.0))
    assert_tree_allclose(res.statistic, jnp.array([5 - k, 5 - k, 10 - 2 * k]))


def test_run_lengths_and_reset():
    alarms = np.zeros((2, 100), bool)
    alarms[0, [9, 19, 29]] = True
    alarms[1, 49] = True
    rl = rd.run_lengths(alarms)
    assert rl.alarms == 4 and rl.arl == 50.0 and rl.se > 0
    assert rd.run_lengths(np.zeros(10, bool)).arl == math.inf
    res = rd.cusum(jnp.ones(10), 2.5)
    assert_tree_allclose(res.alarms, jnp.array([False, False, True] * 3 + [False]))
    assert int(res.first_alarm) == 2
    assert int(rd.cusum(-jnp.ones(10), 2.5).first_alarm) == -1


def test_entry_points_compile_once(key, monkeypatch):
    """Changing values (data, h) never retraces the compiled CUSUM; the bisections are traced once per shape."""
    traces = []
    inner = rd._cusum_scan
    monkeypatch.setattr(rd, "_cusum_scan", lambda *a: (traces.append(1), inner(*a))[1])
    z = jax.random.normal(key, (57, 3))
    for shift, h in ((0.0, 3.0), (1.0, 4.0), (2.0, 5.0)):
        rd.cusum(z + shift, h)
    assert len(traces) <= 1
    traces.clear()
    for arl0 in (20.0, 30.0):
        rd.calibrate_cusum(z[None] - 0.5, arl0, iters=5)
    assert len(traces) <= 3  # one trace of each call site inside the single compiled calibration


# ------------------------------------------------------------------------------------------------ parameter drift


class _AR1(AbstractDiscreteDynamics):
    a: float

    def transition(self, t, x, u):
        return self.a * x


def _ar1_twin(a=0.8):
    return tj.StateSpaceModel(
        _AR1(a),
        tj.GaussianObservation(lambda t, x, u: x, jnp.array([[0.1**2]])),
        tj.Gaussian(jnp.zeros(1), jnp.eye(1)),
        1.0,
        process_noise=jnp.array([[1.0]]),
    )


def _ar1_data(key, T, onset, a0=0.8, a1=0.4):
    a = jnp.where(jnp.arange(T) >= onset, a1, a0)
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k1, (T,))
    xs = jax.lax.scan(lambda x, inp: (inp[0] * x + inp[1],) * 2, 0.0, (a, w))[1]
    return (xs + 0.1 * jax.random.normal(k2, (T,)))[:, None]


def test_drift_detector_on_augmented_ekf(key):
    twin = _ar1_twin()
    aug = rd.augment_parameter(twin, lambda d: d.a, prior_sd=0.1, random_walk_sd=0.01)
    assert aug.initial.mean.shape == (2,)
    onset = 1000
    result = extended_kalman_filter(aug, _ar1_data(key, T, onset))
    z, alarms = rd.drift_test(result.means[:, -1], result.covariances[:, -1, -1], 0.8, alpha=0.01)
    alarms = np.asarray(alarms)
    assert not alarms[:onset].any()
    first = int(np.argmax(alarms))
    assert alarms.any() and onset <= first < onset + 300, first
    assert abs(float(result.means[-1, -1]) - 0.4) < 0.15
    assert float(rd.drift_threshold(0.01, 1000)) == pytest.approx(scipy.stats.norm.isf(0.01 / 2000), rel=1e-10)


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: rd.nis(jnp.zeros((5, 2)), jnp.zeros((5, 3, 3))), "covariances"),
        (lambda: rd.nis(jnp.zeros((5, 2, 2, 2)), jnp.zeros((5, 2, 2))), "innovations"),
        (lambda: rd.nis(jnp.zeros((5, 2)), jnp.tile(jnp.eye(2), (5, 1, 1)), jnp.ones((5, 2))), "mask"),
        (lambda: rd.filter_nis(jnp.zeros(3)), "result"),
        (lambda: rd.windowed_nis(jnp.zeros(5), jnp.ones(5, int), 6), "window"),
        (lambda: rd.windowed_nis(jnp.zeros(5), jnp.ones(4, int), 2), "dof"),
        (lambda: rd.chi2_quantile(1.5, 2), "q"),
        (lambda: rd.chi2_quantile(0.5, -1), "dof"),
        (lambda: rd.chi2_threshold(0.0, 2), "alpha"),
        (lambda: rd.nis_test(jnp.zeros(3), jnp.ones(3, int), 2.0), "alpha"),
        (lambda: rd.cusum(jnp.zeros(3), -1.0), "h"),
        (lambda: rd.cusum(jnp.array([0.0, jnp.nan]), 1.0), "increments"),
        (lambda: rd.mean_cusum(jnp.zeros(3), 0.0, 1.0), "delta"),
        (lambda: rd.mean_cusum(jnp.zeros((3, 2)), 1.0, 1.0, jnp.ones((3, 1), bool)), "mask"),
        (lambda: rd.nis_cusum(jnp.zeros(3), jnp.ones(3, int), 0.5, 1.0), "ratio"),
        (lambda: rd.siegmund_threshold(0.5, 0.5), "arl0"),
        (lambda: rd.siegmund_threshold(100.0, 0.5, cusums=0), "cusums"),
        (lambda: rd.calibrate_cusum(jnp.zeros((2, 10)), 100.0), "arl0"),
        (lambda: rd.calibrate_cusum(jnp.zeros(10), 2.0), "increments"),
        (lambda: rd.run_lengths(np.zeros(4)), "alarms"),
        (lambda: rd.drift_test(jnp.zeros(3), jnp.zeros(3), 0.0), "variances"),
        (lambda: rd.drift_threshold(0.01, 0), "horizon"),
        (lambda: rd.augment_parameter(_lgssm(), lambda d: d.A, prior_sd=1.0, random_walk_sd=1.0), "model"),
        (lambda: rd.augment_parameter(_ar1_twin(), lambda d: d.b, prior_sd=1.0, random_walk_sd=1.0), "where"),
        (lambda: rd.augment_parameter(_ar1_twin(), lambda d: d.a, prior_sd=0.0, random_walk_sd=1.0), "prior_sd"),
    ],
)
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


# ------------------------------------------------------------------------------------------------ long nominal runs
# The measurements behind docs/diagnostics_residuals.md; each returns its figures so `__main__` can print them.

ARL0 = 200.0  # the stated in-control ARL of every long-run check (steps)


def _chi2_increments(key, d, lam, runs=16, steps=50_000):
    return jax.random.chisquare(key, d, (runs, steps)) - d * rd.variance_reference(lam)


def measure_kf(key, T_long=200_000):
    """KF on the linear-Gaussian twin: ARL₀ of the mean CUSUM (Siegmund h) and the NIS CUSUM (MC h), the χ² test's
    false-alarm rate, and ARL₁ for a sensor bias and a variance increase present throughout."""
    model = _lgssm()
    k_nom, k_bias, k_var, k_cal = jax.random.split(key, 4)
    h_mean = rd.siegmund_threshold(ARL0, 0.5, cusums=4)
    h_var = rd.calibrate_cusum(_chi2_increments(k_cal, 2, 2.0), ARL0)

    def stats(inn):
        z, mask = rd.whiten(inn.residual, inn.covariance, inn.mask)
        eps, dof = rd.nis(inn.residual, inn.covariance, inn.mask)
        mean = rd.run_lengths(rd.mean_cusum(z, 1.0, h_mean, mask).alarms)
        var = rd.run_lengths(rd.nis_cusum(eps, dof, 2.0, h_var).alarms)
        return mean, var, float(rd.nis_test(eps, dof, 0.01).mean())

    nominal = stats(_kf_innovations(model, k_nom, T_long))
    bias = stats(_kf_innovations(model, k_bias, T_long, bias=jnp.array([1.5, 0.0])))
    var = stats(_kf_innovations(model, k_var, T_long, var_ratio=2.0))
    return {
        "h_mean": float(h_mean),
        "h_var": float(h_var),
        "arl0_mean": nominal[0],
        "arl0_var": nominal[1],
        "chi2_rate_0.01": nominal[2],
        "arl1_mean_bias": bias[0],
        "arl1_var_bias": bias[1],
        "arl1_mean_var2": var[0],
        "arl1_var_var2": var[1],
        "steps": T_long,
    }


def _pendulum(process_noise=(1e-5, 1e-3)):
    from physics.pendulum import pendulum_twin

    return pendulum_twin(process_noise=jnp.array(process_noise))


def measure_pendulum(key, filter_fn, T_long=40_000):
    """ARL₀ of the mean CUSUM (Siegmund h) and NIS CUSUM (MC h) on a nominal pendulum run with an EKF or UKF."""
    twin = _pendulum()
    k_sim, k_cal = jax.random.split(key)
    path = tj.simulate(twin, None, jnp.arange(T_long) * twin.dt, controls=jnp.zeros((T_long, 1)), key=k_sim)
    inn = filter_fn(twin, path.ys, path.us).innovations
    z, mask = rd.whiten(inn.residual, inn.covariance, inn.mask)
    eps, dof = rd.nis(inn.residual, inn.covariance, inn.mask)
    h_mean = rd.siegmund_threshold(ARL0, 0.5, cusums=2)
    h_var = rd.calibrate_cusum(_chi2_increments(k_cal, 1, 2.0), ARL0)
    return {
        "arl0_mean": rd.run_lengths(rd.mean_cusum(z, 1.0, h_mean, mask).alarms),
        "arl0_var": rd.run_lengths(rd.nis_cusum(eps, dof, 2.0, h_var).alarms),
        "nis_mean": float(eps.mean()),
        "steps": T_long,
    }


def _pendulum_with_length_step(key, T, onset, length1):
    """The pendulum with its length stepped from 1 m to ``length1`` at step ``onset`` (the plant changes)."""
    from physics.pendulum import Pendulum

    twin = _pendulum()
    changed = eqx.tree_at(lambda m: m.dynamics, twin, Pendulum(length_m=length1))
    k1, k2 = jax.random.split(key)
    ts = jnp.arange(T) * twin.dt
    first = tj.simulate(twin, None, ts[: onset + 1], controls=jnp.zeros((onset + 1, 1)), key=k1)
    second = tj.simulate(changed, first.xs[-1], ts[onset:], controls=jnp.zeros((T - onset, 1)), key=k2)
    ys = jnp.concatenate([first.ys[:onset], second.ys])
    return twin, ys


def measure_drift(key, T=4000, onset=2000, length1=1.2):
    """Augmented-state EKF on the pendulum length; z-test (α = 0.01 over the run) before and after a length step, and
    on a fully nominal run."""
    out = {}
    for name, l1 in (("drift", length1), ("nominal", 1.0)):
        twin, ys = _pendulum_with_length_step(jax.random.fold_in(key, int(l1 * 100)), T, onset, l1)
        aug = rd.augment_parameter(twin, lambda d: d.length_m, prior_sd=0.05, random_walk_sd=1e-3)
        result = extended_kalman_filter(aug, ys, jnp.zeros((T, 1)))
        z, alarms = rd.drift_test(result.means[:, -1], result.covariances[:, -1, -1], 1.0, alpha=0.01)
        alarms = np.asarray(alarms)
        after = alarms[onset:]
        out[name] = {
            "false_alarms_before": int(alarms[:onset].sum()),
            "delay": int(np.argmax(after)) if after.any() else None,
            "alarms": int(alarms.sum()),
            "final_estimate": float(result.means[-1, -1]),
            "final_sd": float(jnp.sqrt(result.covariances[-1, -1, -1])),
            "z": np.asarray(z),
            "estimate": np.asarray(result.means[:, -1]),
        }
    out["threshold"] = float(rd.drift_threshold(0.01, T))
    return out


def _within(measured: rd.RunLengths, target, rel=0.05):
    """|ARL - target| ≤ 4 SE + ``rel`` · target (``rel``: the approximation error of the calibration itself)."""
    return abs(measured.arl - target) <= K_SE * measured.se + rel * target


@pytest.mark.slow
def test_kf_long_run_arl0_matches_target(key):
    m = measure_kf(key)
    assert _within(m["arl0_mean"], ARL0), m["arl0_mean"]
    # the MC calibration has its own error (~16 · 50 000 / 200 = 4000 alarms: 1.6 %)
    assert _within(m["arl0_var"], ARL0, rel=0.05), m["arl0_var"]
    assert abs(m["chi2_rate_0.01"] - 0.01) < K_SE * math.sqrt(0.01 * 0.99 / m["steps"])
    assert m["arl1_mean_bias"].arl < 30 and m["arl1_var_var2"].arl < 30


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ekf", "ukf"])
def test_pendulum_long_run_arl0_matches_target(key, name):
    from twinjax.inference import unscented_kalman_filter

    fn = {"ekf": extended_kalman_filter, "ukf": unscented_kalman_filter}[name]
    m = measure_pendulum(key, fn)
    assert _within(m["arl0_mean"], ARL0), m["arl0_mean"]
    assert _within(m["arl0_var"], ARL0), m["arl0_var"]


@pytest.mark.slow
def test_pendulum_length_drift_detected_without_false_alarms(key):
    m = measure_drift(key)
    assert m["drift"]["false_alarms_before"] == 0
    assert m["drift"]["delay"] is not None and m["drift"]["delay"] < 1000
    assert m["nominal"]["alarms"] == 0
    assert abs(m["drift"]["final_estimate"] - 1.2) < 4 * m["drift"]["final_sd"] + 0.01


# ------------------------------------------------------------------------------------------------ figures for the docs


def _main():  # pragma: no cover - writes the figures and prints the numbers of docs/diagnostics_residuals.md
    import pathlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jax.config.update("jax_enable_x64", True)
    key = jax.random.key(0)
    kf = measure_kf(key)
    print("KF", {k: v for k, v in kf.items()})
    from twinjax.inference import unscented_kalman_filter

    for name, fn in (("EKF", extended_kalman_filter), ("UKF", unscented_kalman_filter)):
        print("pendulum", name, measure_pendulum(key, fn))
    drift = measure_drift(key)
    print(
        "drift",
        {
            k: {kk: vv for kk, vv in v.items() if kk not in ("z", "estimate")}
            for k, v in drift.items()
            if isinstance(v, dict)
        },
        "threshold",
        drift["threshold"],
    )

    # delays after an onset (one run each), for the figure
    model, onset = _lgssm(), 1000
    h = rd.siegmund_threshold(ARL0, 0.5, cusums=4)
    inn = _kf_innovations(model, jax.random.fold_in(key, 7), bias=jnp.array([1.5, 0.0]), onset=onset)
    z, mask = rd.whiten(inn.residual, inn.covariance, inn.mask)
    res = rd.mean_cusum(z, 1.0, h, mask)
    hv = rd.calibrate_cusum(_chi2_increments(key, 2, 2.0), ARL0)
    inn_v = _kf_innovations(model, jax.random.fold_in(key, 8), onset=onset, var_ratio=2.0)
    res_v = rd.nis_cusum(*rd.nis(inn_v.residual, inn_v.covariance, inn_v.mask), 2.0, hv)
    for label, r in (("bias", res), ("variance", res_v)):
        a = np.asarray(r.alarms)
        print(label, "alarms before onset", int(a[:onset].sum()), "delay", int(np.argmax(a[onset:])))

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), constrained_layout=True)
    for ax, r, thr, title in (
        (axes[0], res, h, "KF, sensor bias of 1.5 on channel 0 from step 1000: two-sided mean CUSUM (δ = 1)"),
        (axes[1], res_v, hv, "KF, sensor noise variance ×2 from step 1000: NIS CUSUM (λ = 2)"),
    ):
        ax.plot(np.asarray(r.statistic), lw=0.8, label="CUSUM statistic")
        ax.axhline(float(thr), color="k", ls="--", lw=0.8, label=f"h (ARL₀ = {ARL0:.0f})")
        idx = np.flatnonzero(np.asarray(r.alarms))
        ax.plot(idx, np.full(idx.shape, float(thr)), "rv", ms=4, label="alarms")
        ax.axvline(onset, color="g", lw=0.8, label="fault onset")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, loc="upper left")
    ax = axes[2]
    ax.plot(np.abs(drift["drift"]["z"]), lw=0.8, label="|z| drift run (L: 1 → 1.2 m at step 2000)")
    ax.plot(np.abs(drift["nominal"]["z"]), lw=0.8, alpha=0.7, label="|z| nominal run")
    ax.axhline(drift["threshold"], color="k", ls="--", lw=0.8, label="z* (α = 0.01 over the run)")
    ax.axvline(2000, color="g", lw=0.8)
    ax.set_title("Pendulum, augmented-state EKF: z-test of the length estimate", fontsize=9)
    ax.set_xlabel("step (dt = 0.05 s)")
    ax.legend(fontsize=7, loc="upper left")
    out = pathlib.Path(__file__).resolve().parents[2] / "docs" / "residuals_cusum.png"
    fig.savefig(out, dpi=110)
    print("wrote", out)


if __name__ == "__main__":  # pragma: no cover
    _main()
