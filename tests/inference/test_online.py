"""The online twin: streamed = batch for every filter, a sensor log assimilated end to end at irregular times with
calibrated credible bands, continuous–discrete filtering against the exact discretisation, forecasts, no recompiles."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import physics
import twinjax as tj
from twinjax.inference import (
    FilterFamily,
    OnlineTwin,
    SensorLog,
    ekf_predict,
    extended_kalman_filter,
    filter_names,
    kalman_filter,
    online as online_module,
    read_sensor_log,
    register_filter,
    ukf_init,
    ukf_predict,
    ukf_step,
    ukf_update,
    unscented_kalman_filter,
    write_sensor_log,
)
from twinjax.inference.ensemble import ensemble_kalman_filter
from twinjax.inference.particle import particle_filter

from ..helpers import assert_tree_allclose

# ---------------------------------------------------------------------------------------------------------------------
# models


def _angle(t, x, u):
    return x[:1]


@pytest.fixture(scope="module")
def pendulum():
    """The pendulum twin with process noise, integrated with 4 fixed Tsit5 steps over each actual interval."""
    base = physics.pendulum_twin(dt=0.1)
    return tj.StateSpaceModel(
        base.dynamics,
        base.observation,
        base.initial,
        0.1,
        process_noise=jnp.diag(jnp.array([2e-5, 2e-4])),  # per dt = 0.1 s, scaled with the actual interval
        control_dim=1,
        discretisation=tj.Discretisation(
            solver=diffrax.Tsit5(), stepsize_controller=diffrax.ConstantStepSize(), substeps=4
        ),
    )


def _irregular_times(rng, T):
    gaps = 0.02 + rng.exponential(0.1, T - 1)
    return np.round(np.concatenate([[0.0], np.cumsum(gaps)]), 6)  # microseconds: ISO timestamps are exact


def _lgssm():
    return tj.LinearGaussianSSM(
        A=jnp.array([[0.9, 0.2], [-0.1, 0.8]]),
        B=jnp.array([[0.0], [0.5]]),
        C=jnp.array([[1.0, 0.0], [0.5, 1.0]]),
        D=None,
        Q=jnp.array([[0.02, 0.005], [0.005, 0.03]]),
        R=jnp.diag(jnp.array([0.1, 0.2])),
        m0=jnp.array([0.5, -0.5]),
        P0=jnp.eye(2),
        dt=0.5,
    )


# ---------------------------------------------------------------------------------------------------------------------
# contract: every registered filter, streamed one measurement at a time, equals its batch driver


_BATCH = {
    "kf": lambda m, ys, us, key: kalman_filter(m, ys, us),
    "ekf": lambda m, ys, us, key: extended_kalman_filter(m, ys, us),
    "ukf": lambda m, ys, us, key: unscented_kalman_filter(m, ys, us, alpha=0.7),
    "pf": lambda m, ys, us, key: particle_filter(m, ys, us, particles=64, key=key),
    "enkf": lambda m, ys, us, key: ensemble_kalman_filter(m, ys, us, members=16, key=key, inflation=1.05),
    "etkf": lambda m, ys, us, key: ensemble_kalman_filter(m, ys, us, members=16, key=key, method="etkf"),
    "denkf": lambda m, ys, us, key: ensemble_kalman_filter(m, ys, us, members=16, key=key, method="denkf"),
    "letkf": lambda m, ys, us, key: ensemble_kalman_filter(m, ys, us, members=16, key=key, method="letkf"),
}
_OPTIONS = {
    "ukf": {"alpha": 0.7},
    "pf": {"particles": 64},
    "enkf": {"members": 16, "inflation": 1.05},
    "etkf": {"members": 16},
    "denkf": {"members": 16},
    "letkf": {"members": 16},
}


def test_registry_is_covered():
    assert set(filter_names()) == set(_BATCH)
    for method in _SLOW:
        family = online_module._REGISTRY[method]
        assert family.update.keywords == {"method": method} and family.step.keywords == {"method": method}
        assert "method" not in family.update_options
    assert "method" in online_module._REGISTRY["enkf"].update_options


def test_register_filter(monkeypatch, lgssm_data):
    model, ys, us = lgssm_data
    monkeypatch.setattr(online_module, "_REGISTRY", dict(online_module._REGISTRY))
    sigma = dict(alpha=3**0.5, beta=2.0, kappa=1.0)  # dynamax's unscented parameters, fixed
    family = FilterFamily(
        init=lambda model, key, **prior: ukf_init(model, **prior),
        predict=functools.partial(ukf_predict, **sigma),
        update=functools.partial(ukf_update, **sigma),
        step=functools.partial(ukf_step, **sigma),
        summary=lambda state, info: (state.mean, state.cov),
    )
    register_filter("ukf-dynamax", family)
    assert "ukf-dynamax" in filter_names()
    twin = OnlineTwin(model, "ukf-dynamax")
    twin.assimilate(ys[0], us[0])
    expected, _ = ukf_update(model, ukf_init(model), ys[0], us[0], **sigma)
    assert_tree_allclose(twin.mean, expected.mean)
    with pytest.raises(ValueError, match="`family` must be a FilterFamily"):
        register_filter("x", ukf_step)
    with pytest.raises(ValueError, match="`name` must be a non-empty string"):
        register_filter("", family)


# the square-root ensemble variants are the EnKF's code with another `method` (checked cheaply below); their full
# stream-vs-batch run costs ~8 s of compilation each, so it is in the slow suite
_SLOW = ("etkf", "denkf", "letkf")


@pytest.fixture(scope="module")
def lgssm_data():
    model = _lgssm()
    T = 12
    us = np.random.default_rng(0).normal(size=(T, 1))
    ys = np.array(tj.simulate(model, None, model.dt * np.arange(T), controls=us, key=jax.random.key(1)).ys)
    ys[2, 1] = np.nan
    ys[5] = np.nan  # a predict-only step
    return model, ys, us


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in sorted(_BATCH)])
def test_stream_equals_batch_for_every_filter(name, lgssm_data):
    model, ys, us = lgssm_data
    T = ys.shape[0]
    key = jax.random.key(7)
    batch = _BATCH[name](model, jnp.asarray(ys), jnp.asarray(us), key)

    twin = OnlineTwin(model, name, key=key, **_OPTIONS.get(name, {}))
    # the first measurements one at a time (times from model.dt), the rest as a log in one scan; the scan runs the
    # same step function, so the costlier stochastic filters are only streamed in the fast suite
    streamed = T if name in ("pf", "enkf") else 3
    for k in range(streamed):
        twin.assimilate(ys[k], us[k])
    if streamed < T:
        chunk = twin.assimilate_log((model.dt * np.arange(streamed, T), ys[streamed:], us[streamed:]))
        assert len(chunk) == T - streamed
    assert twin.num_assimilated == T
    hist = twin.history
    np.testing.assert_allclose(hist.ts, model.dt * np.arange(T), rtol=1e-12)
    assert_tree_allclose(hist.means, batch.means, rtol=1e-9, atol=1e-10)
    if batch.covariances is not None:
        assert_tree_allclose(hist.covariances, batch.covariances, rtol=1e-9, atol=1e-10)
    assert_tree_allclose(hist.log_likelihoods, batch.log_likelihoods, rtol=1e-9, atol=1e-10)
    assert_tree_allclose(twin.log_likelihood, batch.log_likelihood, rtol=1e-9, atol=1e-10)
    assert bool(jnp.all(hist.status == 0))
    # a forecast leaves the twin untouched and has the state's shape
    before = twin.state
    ahead = twin.forecast(twin.t + np.array([0.5, 1.0]))
    assert ahead.means.shape == (2, 2) and ahead.covariances.shape == (2, 2, 2)
    assert eqx.tree_equal(before, twin.state)


# ---------------------------------------------------------------------------------------------------------------------
# a real sensor log, end to end


@pytest.fixture(scope="module")
def pendulum_runs(pendulum):
    """Independent pendulum runs at random gaps (0.02 s + Exp(0.1 s)), a torque input, 20 % blank measurements."""
    rng = np.random.default_rng(3)
    runs = []
    for r in range(_RUNS):
        ts = _irregular_times(rng, _T)
        us = 0.5 * np.sin(0.7 * ts)[:, None]
        path = tj.simulate(pendulum, None, ts, controls=us, key=jax.random.key(100 + r))
        ys = np.array(path.ys)
        ys[rng.uniform(size=_T) < 0.2] = np.nan
        runs.append((ts, us, np.asarray(path.xs), ys))
    return runs


_RUNS, _T, _STREAMED = 12, 120, 40


def _assimilate(twin, log: SensorLog):
    """The first rows one by one, the rest of the log in one compiled scan (the same shapes in every test)."""
    for k in range(_STREAMED):
        twin.assimilate(log.ys[k], log.us[k], t=log.ts[k])
    rest = SensorLog(log.ts[_STREAMED:], log.ys[_STREAMED:], us=log.us[_STREAMED:], controls=log.controls)
    twin.assimilate_log(rest)
    return twin.history


def test_sensor_log_end_to_end_irregular_pendulum(tmp_path, pendulum, pendulum_runs):
    """Write a pendulum run at random gaps as an ISO-timestamped CSV with blank cells, read it back and assimilate it
    with the online EKF: the result equals the batch EKF on the same times, and the truth lies inside the credible
    bands at the nominal rate (independent runs give the Monte-Carlo error)."""
    coverage, nees = [], []
    for r, (ts, us, xs, ys) in enumerate(pendulum_runs):
        log = SensorLog(ts, ys, channels=["angle_rad"], us=us, controls=["torque_Nm"])
        if r == 0:
            file = write_sensor_log(tmp_path / "pendulum.csv", log, start="2024-05-01T08:00:00Z")
            lines = file.read_text().splitlines()
            assert lines[0] == "time,angle_rad,torque_Nm" and lines[1].startswith("2024-05-01T08:00:00+00:00,")
            assert sum(",," in line for line in lines) == int(np.isnan(ys).sum())  # the blank cells
            log = read_sensor_log(file, channels=["angle_rad"], controls=["torque_Nm"])
            np.testing.assert_allclose(log.ts, ts, rtol=0, atol=1e-9)
            np.testing.assert_array_equal(log.mask[:, 0], ~np.isnan(ys[:, 0]))
            assert log.time_origin == "2024-05-01T08:00:00+00:00" and int((~log.mask).sum()) > 10
        hist = _assimilate(OnlineTwin(pendulum, "ekf"), log)
        if r == 0:
            ts_j, ys_j, us_j = log.to_arrays()
            batch = extended_kalman_filter(pendulum, ys_j, us_j, ts_j)
            assert_tree_allclose(hist.ts, batch.ts)
            assert_tree_allclose(hist.means, batch.means, rtol=1e-9, atol=1e-11)
            assert_tree_allclose(hist.covariances, batch.covariances, rtol=1e-9, atol=1e-12)
            assert_tree_allclose(hist.log_likelihoods, batch.log_likelihoods, rtol=1e-9, atol=1e-10)
            assert_tree_allclose(hist.log_likelihood, batch.log_likelihood, rtol=1e-10)
        m, P = np.asarray(hist.means), np.asarray(hist.covariances)
        err = xs - m
        sd = np.sqrt(np.diagonal(P, axis1=1, axis2=2))
        coverage.append(np.mean(np.abs(err) <= 1.959964 * sd))
        nees.append(np.mean(np.einsum("ti,tij,tj->t", err, np.linalg.inv(P), err)))
    coverage, nees = np.array(coverage), np.array(nees)
    # runs are independent: their spread gives the Monte-Carlo error (floored at the independent-sample value)
    se_cov = max(coverage.std(ddof=1), np.sqrt(0.95 * 0.05 / (2 * _T))) / np.sqrt(_RUNS)
    se_nees = max(nees.std(ddof=1), np.sqrt(4.0 / _T)) / np.sqrt(_RUNS)  # NEES ~ chi²(2): mean 2, variance 4
    assert abs(coverage.mean() - 0.95) < 4 * se_cov, (coverage.mean(), se_cov)
    assert abs(nees.mean() - 2.0) < 4 * se_nees, (nees.mean(), se_nees)


# ---------------------------------------------------------------------------------------------------------------------
# continuous–discrete correctness


class _LinearODE(tj.AbstractDynamics):
    A: jax.Array

    def vector_field(self, t, x, u):
        return self.A @ x


_A = np.array([[0.0, 1.0], [-4.0, -0.4]])  # a lightly damped oscillator, period ≈ 3.1 s
_Q = np.diag([1e-4, 4e-3])  # process noise per dt
_DT = 0.1
_R = np.array([[0.05**2]])


def _reference_kf(ts, ys, m0, P0, regular: bool):
    """A textbook Kalman filter with the exact transition expm(A Δt_k) of each actual interval (or, with
    ``regular=True``, one that pretends every interval is ``dt``)."""
    H = np.array([[1.0, 0.0]])
    m, P = m0.copy(), P0.copy()
    means, covs, ll = [], [], 0.0
    for k, (t, y) in enumerate(zip(ts, ys)):
        if k:
            step = _DT if regular else t - ts[k - 1]
            F = scipy.linalg.expm(_A * step)
            m, P = F @ m, F @ P @ F.T + _Q * step / _DT
        if np.all(np.isfinite(y)):
            S = H @ P @ H.T + _R
            K = P @ H.T @ np.linalg.inv(S)
            r = y - H @ m
            ll += -0.5 * (r @ np.linalg.solve(S, r) + np.log(np.linalg.det(2 * np.pi * S)))
            m, P = m + K @ r, (np.eye(2) - K @ H) @ P
        means.append(m)
        covs.append(P)
    return np.array(means), np.array(covs), ll


def test_continuous_discrete_equals_exact_discretisation():
    m0, P0 = np.array([1.0, 0.0]), np.diag([0.2, 0.3])
    model = tj.StateSpaceModel(
        _LinearODE(jnp.asarray(_A)),
        tj.GaussianObservation(_angle, jnp.asarray(_R)),
        tj.Gaussian(jnp.asarray(m0), jnp.asarray(P0)),
        _DT,
        process_noise=jnp.asarray(_Q),
        discretisation=tj.Discretisation(stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-13)),
    )
    # data from the exact discretisation at irregular times (gaps from 0.02 s to 0.6 s)
    rng = np.random.default_rng(11)
    T = 30
    ts = np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.6, T - 1))])
    x = rng.multivariate_normal(m0, P0)
    ys = np.empty((T, 1))
    for k in range(T):
        if k:
            dt_k = ts[k] - ts[k - 1]
            x = scipy.linalg.expm(_A * dt_k) @ x + rng.multivariate_normal(np.zeros(2), _Q * dt_k / _DT)
        ys[k] = x[0] + 0.05 * rng.normal()
    ys[7] = np.nan

    exact_m, exact_P, exact_ll = _reference_kf(ts, ys, m0, P0, regular=False)
    regular_m, _, regular_ll = _reference_kf(ts, ys, m0, P0, regular=True)

    twin = OnlineTwin(model, "ekf")
    twin.assimilate_log((ts, ys))
    batch = extended_kalman_filter(model, ys, ts=ts)
    for means, covs, ll in (
        (twin.history.means, twin.history.covariances, twin.log_likelihood),
        (batch.means, batch.covariances, batch.log_likelihood),
    ):
        np.testing.assert_allclose(means, exact_m, rtol=0, atol=1e-8)
        np.testing.assert_allclose(covs, exact_P, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ll, exact_ll, rtol=1e-9)
    # the test can fail: a filter that ignores the actual intervals is far off
    assert np.max(np.abs(regular_m - exact_m)) > 0.05
    assert abs(regular_ll - exact_ll) > 1.0


# ---------------------------------------------------------------------------------------------------------------------
# forecasts and compilation


def test_forecast_equals_repeated_predicts_and_predict_only_steps(pendulum, pendulum_runs):
    ts, us, _, ys = pendulum_runs[1]
    twin = OnlineTwin(pendulum, "ekf")
    for k in range(10):
        twin.assimilate(ys[k], us[k], t=ts[k])
    state = twin.state

    ts_ahead = twin.t + np.array([0.05, 0.3, 0.35, 0.9, 1.5])
    us_ahead = np.array([[0.2], [-0.1], [0.4], [0.0], [0.3]])
    ahead = twin.forecast(ts_ahead, us_ahead)
    assert eqx.tree_equal(state, twin.state)  # the belief is unchanged

    # the same, by hand: ekf_predict to each time, switching the held control after each
    predict = eqx.filter_jit(ekf_predict)
    s = state
    for k, t in enumerate(ts_ahead):
        s = predict(pendulum, s, t)
        np.testing.assert_allclose(ahead.means[k], s.mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ahead.covariances[k], s.cov, rtol=1e-12, atol=1e-14)
        s = eqx.tree_at(lambda st: st.u, s, jnp.asarray(us_ahead[k]))
    # and through the twin itself: fully missing measurements are predict-only steps
    for k, t in enumerate(ts_ahead):
        twin.assimilate(np.full(1, np.nan), us_ahead[k], t=t)
    hist = twin.history
    np.testing.assert_allclose(hist.means[-5:], ahead.means, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hist.covariances[-5:], ahead.covariances, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hist.log_likelihoods[-5:], 0.0)
    # the band is mean ± 1.96 sd
    lower, upper = ahead.band(0.95)
    np.testing.assert_allclose(upper - ahead.means, 1.959963984540054 * ahead.stds, rtol=1e-12)
    assert bool(ahead.ok)


def test_assimilate_compiles_once(pendulum, pendulum_runs):
    ts, us, _, ys = pendulum_runs[2]
    log = SensorLog(ts, ys, us=us)
    twin = OnlineTwin(pendulum, "ekf")
    _assimilate(twin, log)  # warm-up: compiles the update, the step and the scan
    twin.forecast(twin.t + np.arange(1.0, 6.0))
    counts = dict(online_module._TRACES)
    _assimilate(OnlineTwin(pendulum, "ekf"), log)
    twin.forecast(twin.t + np.linspace(0.1, 0.2, 5), np.ones((5, 1)))
    later = SensorLog(ts + 100.0, ys, us=0.1 + us)  # new values, new intervals, other missing data
    later.ys[::3] = np.nan
    _assimilate(twin, later)
    other = OnlineTwin(eqx.tree_at(lambda m: m.dynamics.length_m, pendulum, jnp.asarray(1.3)), "ekf", t0=-1.0)
    _assimilate(other, log)  # another twin with other parameters reuses the compilations
    assert dict(online_module._TRACES) == counts


# ---------------------------------------------------------------------------------------------------------------------
# bad input


def test_errors_name_the_problem():
    model = _lgssm()
    with pytest.raises(ValueError, match=r"`filter` must be one of \['denkf', 'ekf'"):
        OnlineTwin(model, "kalman")
    with pytest.raises(ValueError, match=r"filter 'ekf' takes no option\(s\) \['alpha'\]"):
        OnlineTwin(model, "ekf", alpha=1.0)
    with pytest.raises(ValueError, match="`key` is required: the 'pf' filter is stochastic"):
        OnlineTwin(model, "pf")
    twin = OnlineTwin(model, "kf", keep_history=False)
    with pytest.raises(ValueError, match="nothing to forecast from"):
        twin.forecast([1.0])
    with pytest.raises(ValueError, match=r"`y` must have shape \(2,\)"):
        twin.assimilate([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="`y` has infinite entries"):
        twin.assimilate([1.0, np.inf])
    with pytest.raises(ValueError, match=r"`u` must have shape \(1,\)"):
        twin.assimilate([1.0, 2.0], [1.0, 2.0])
    twin.assimilate([1.0, 2.0], t=3.0)
    assert twin.t == 3.0 and twin.num_assimilated == 1
    with pytest.raises(ValueError, match=r"`t` = 3.0 must be after the last measurement's time 3.0"):
        twin.assimilate([1.0, 2.0], t=3.0)
    with pytest.raises(ValueError, match="`ts_ahead` must be after the twin's time t = 3.0"):
        twin.forecast([2.0, 4.0])
    with pytest.raises(ValueError, match="`ts_ahead` must be finite and strictly increasing"):
        twin.forecast([5.0, 4.0])
    with pytest.raises(ValueError, match=r"`us_ahead` must have shape \(2, 1\)"):
        twin.forecast([4.0, 5.0], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="keep_history=False"):
        twin.history
    three = SensorLog([4.0, 5.0], np.zeros((2, 3)), channels=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"the log's channels \['a', 'b', 'c'\] give 3 observations per row"):
        twin.assimilate_log(three)
    with pytest.raises(ValueError, match="`t` = 2.0 must be after the last measurement's time 3.0"):
        twin.assimilate_log(SensorLog([2.0, 5.0], np.zeros((2, 2))))
    with pytest.raises(ValueError, match=r"`us` \(the log's controls\) must have shape \(2, 1\)"):
        twin.assimilate_log(SensorLog([4.0, 5.0], np.zeros((2, 2)), us=np.zeros((2, 2))))
    late = OnlineTwin(model, "kf", t0=1.0)
    with pytest.raises(ValueError, match="before the prior's time t0 = 1.0"):
        late.assimilate([0.0, 0.0], t=0.5)
    nodt = tj.StateSpaceModel(
        _LinearODE(jnp.asarray(_A)),
        tj.GaussianObservation(_angle, jnp.asarray(_R)),
        tj.Gaussian(jnp.zeros(2), jnp.eye(2)),
    )
    twin = OnlineTwin(nodt, "kf")
    twin.assimilate(0.1)  # the first measurement is at t0 (0 by default)
    with pytest.raises(ValueError, match="`t` is required: the model has no `dt`"):
        twin.assimilate(0.2)
