"""EKF, UKF and the extended RTS smoother against truth: a dense reference Kalman filter / RTS smoother on random
linear-Gaussian models (as LinearGaussianSSM and as a StateSpaceModel), dynamax side by side on a nonlinear
pendulum, finite-difference gradients through diffrax, irregular times, masked channels, solve status, recompilation
and bad input."""

import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
import twinjax.inference as ti
from physics import Lorenz96, Pendulum
from twinjax.inference import nonlinear
from twinjax.model.ssm import LinearDynamics
from twinjax.model.status import Status

from ..helpers import assert_tree_allclose

# dynamax imports tensorflow_probability, which touches deprecated jax attributes at import time
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:tensorflow_probability.*")

FILTERS = {
    "ekf": ti.extended_kalman_filter,
    "ukf": ti.unscented_kalman_filter,
    "ukf_dynamax_params": lambda *a, **k: ti.unscented_kalman_filter(*a, alpha=3**0.5, beta=2.0, kappa=1.0, **k),
}


def _dynamax():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import dynamax.nonlinear_gaussian_ssm as dnl
    return dnl


# --------------------------------------------------------------------------------------------- reference filters


def reference_kf(A, B, C, D, Q, R, m0, P0, ys, us):
    """Dense NumPy Kalman filter with twinjax's time convention; missing channels are deleted rows."""
    ms, Ps, pms, pPs, lls = [], [], [], [], []
    m, P = np.asarray(m0, float), np.asarray(P0, float)
    for k in range(len(ys)):
        if k > 0:
            m = A @ m + B @ us[k - 1]
            P = A @ P @ A.T + Q
        pms.append(m)
        pPs.append(P)
        obs = ~np.isnan(ys[k])
        ll = 0.0
        if obs.any():
            Co, Ro = C[obs], R[np.ix_(obs, obs)]
            r = ys[k][obs] - Co @ m - D[obs] @ us[k]
            S = Co @ P @ Co.T + Ro
            K = P @ Co.T @ np.linalg.inv(S)
            m = m + K @ r
            P = P - K @ S @ K.T
            ll = -0.5 * (r @ np.linalg.solve(S, r) + np.linalg.slogdet(2 * np.pi * S)[1])
        ms.append(m)
        Ps.append(P)
        lls.append(ll)
    return tuple(np.array(a) for a in (ms, Ps, pms, pPs, lls))


def reference_rts(A, ms, Ps, pms, pPs):
    """Dense RTS smoother on the reference filter's output; returns smoothed means, covariances, cross-covs."""
    T = len(ms)
    sm, sP, cross = [None] * T, [None] * T, [None] * (T - 1)
    sm[-1], sP[-1] = ms[-1], Ps[-1]
    for k in range(T - 2, -1, -1):
        G = Ps[k] @ A.T @ np.linalg.inv(pPs[k + 1])
        sm[k] = ms[k] + G @ (sm[k + 1] - pms[k + 1])
        sP[k] = Ps[k] + G @ (sP[k + 1] - pPs[k + 1]) @ G.T
        cross[k] = sP[k + 1] @ G.T
    return np.array(sm), np.array(sP), np.array(cross)


def random_lgssm(seed, n=3, p=2, m=1, T=12):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    A = 0.95 * A / np.max(np.abs(np.linalg.eigvals(A)))
    B = rng.normal(size=(n, m))
    C = rng.normal(size=(p, n))
    D = rng.normal(size=(p, m))
    LQ = rng.normal(size=(n, n)) * 0.3
    LR = rng.normal(size=(p, p)) * 0.3
    Q = LQ @ LQ.T + 0.05 * np.eye(n)
    R = LR @ LR.T + 0.1 * np.eye(p)
    m0 = rng.normal(size=n)
    L0 = rng.normal(size=(n, n))
    P0 = L0 @ L0.T + np.eye(n)
    ys = rng.normal(size=(T, p)) * 2.0
    us = rng.normal(size=(T, m))
    ys[3, 0] = np.nan  # one masked channel
    ys[5] = np.nan  # a fully missing observation: predict only
    return dict(A=A, B=B, C=C, D=D, Q=Q, R=R, m0=m0, P0=P0), ys, us


def as_state_space_model(mats, dt=1.0):
    """The same linear-Gaussian system as a generic StateSpaceModel (discrete dynamics, a sensor function)."""
    return tj.StateSpaceModel(
        LinearDynamics(jnp.asarray(mats["A"]), jnp.asarray(mats["B"])),
        tj.GaussianObservation(lambda t, x, u: jnp.asarray(mats["C"]) @ x + jnp.asarray(mats["D"]) @ u, mats["R"]),
        tj.Gaussian(mats["m0"], mats["P0"]),
        dt,
        process_noise=mats["Q"],
        control_dim=mats["B"].shape[1],
    )


def _compare_to_reference(res, ref, rtol=1e-9, atol=1e-10):
    ms, Ps, pms, pPs, lls = ref
    for got, want in (
        (res.means, ms),
        (res.covariances, Ps),
        (res.predicted_means, pms),
        (res.predicted_covariances, pPs),
        (res.log_likelihoods, lls),
    ):
        np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=atol)
    np.testing.assert_allclose(float(res.log_likelihood), lls.sum(), rtol=rtol)


# ------------------------------------------------------------------------------------------- linear-Gaussian truth


@pytest.mark.parametrize("wrap", ["lgssm", "state_space_model"])
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_equals_reference_kalman_filter_on_linear_gaussian_models(name, wrap):
    mats, ys, us = random_lgssm(seed=1)
    model = tj.LinearGaussianSSM(**mats) if wrap == "lgssm" else as_state_space_model(mats)
    res = FILTERS[name](model, ys, us)
    _compare_to_reference(res, reference_kf(**mats, ys=ys, us=us))
    assert res.ok and res.status.shape == (len(ys),)
    # the fully missing observation is a predict-only step
    assert float(res.log_likelihoods[5]) == 0.0
    assert_tree_allclose(res.means[5], res.predicted_means[5])


def test_equals_twinjax_kalman_filter_when_available():
    if not hasattr(ti, "kalman_filter"):
        pytest.skip("twinjax.inference.kalman_filter is not available yet")
    mats, ys, us = random_lgssm(seed=2)
    model = tj.LinearGaussianSSM(**mats)
    kf = ti.kalman_filter(model, ys, us)
    for name in FILTERS:
        res = FILTERS[name](model, ys, us)
        for field in ("means", "covariances", "log_likelihood"):
            np.testing.assert_allclose(getattr(res, field), getattr(kf, field), rtol=1e-9, atol=1e-10)


def test_ukf_default_weights_are_exact_and_sane_at_n40():
    """The cubature default keeps every weight positive: at n = 40 the UKF still equals the KF to rounding, and its
    covariances are symmetric positive definite (the textbook alpha = 1e-3 has W0 ≈ -1e6 here)."""
    mats, ys, us = random_lgssm(seed=3, n=40, p=3, m=1, T=6)
    model = tj.LinearGaussianSSM(**mats)
    res = ti.unscented_kalman_filter(model, ys, us)
    _compare_to_reference(res, reference_kf(**mats, ys=ys, us=us), rtol=1e-8, atol=1e-9)
    assert np.linalg.eigvalsh(np.asarray(res.covariances)).min() > 0
    c, wm, wc = nonlinear._ukf_weights(40, 1.0, 0.0, 0.0, jnp.float64)
    assert float(c) == 40.0 and float(wm[0]) == 0.0 and np.all(np.asarray(wc[1:]) > 0)
    np.testing.assert_allclose(float(jnp.sum(wm)), 1.0, rtol=1e-14)


class RK4(tj.AbstractDiscreteDynamics):
    """One RK4 step of an ODE's vector field (a cheap-to-compile discrete twin)."""

    ode: tj.AbstractDynamics
    dt: float = eqx.field(static=True)

    def transition(self, t, x, u):
        f = lambda x: self.ode.vector_field(t, x, u)
        k1 = f(x)
        k2 = f(x + 0.5 * self.dt * k1)
        k3 = f(x + 0.5 * self.dt * k2)
        k4 = f(x + self.dt * k3)
        return x + self.dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.mark.parametrize("n", [1, 2, 3, 5, nonlinear.UNROLLED_CHOLESKY_MAX, nonlinear.UNROLLED_CHOLESKY_MAX + 1])
def test_small_matrix_cholesky_equals_lapack(n):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(4, n, n))
    A = jnp.asarray(X @ np.swapaxes(X, 1, 2) + 0.1 * np.eye(n))
    L = jax.jit(jax.vmap(nonlinear._cholesky))(A)
    assert_tree_allclose(L, jnp.linalg.cholesky(A), rtol=1e-12, atol=1e-14)
    assert np.all(np.triu(np.asarray(L), 1) == 0.0)
    if n > 1:  # not positive definite: NaN, as LAPACK's
        assert np.isnan(np.asarray(nonlinear._cholesky(jnp.diag(jnp.arange(n, dtype=float) - 1.0)))).any()


def test_ukf_on_lorenz96_n40_stays_positive_definite():
    twin = tj.StateSpaceModel(
        RK4(Lorenz96(), 0.05),
        tj.GaussianObservation(lambda t, x, u: x, jnp.eye(40)),
        tj.Gaussian(jnp.full(40, 8.0).at[0].add(0.01), jnp.eye(40)),
        0.05,
        process_noise=1e-2 * jnp.eye(40),
    )
    ts = jnp.arange(20) * 0.05
    path = tj.simulate(twin, None, ts, key=jax.random.key(1))
    res = ti.unscented_kalman_filter(twin, path.ys, ts=ts)
    assert res.ok
    assert np.linalg.eigvalsh(np.asarray(res.covariances)).min() > 0
    assert float(jnp.sqrt(jnp.mean((res.means - path.xs) ** 2))) < 1.0  # the unit-noise measurements, averaged


def test_extended_rts_smoother_equals_reference_rts_on_linear_model():
    mats, ys, us = random_lgssm(seed=4)
    model = as_state_space_model(mats)
    smooth = ti.extended_rts_smoother(model, ys, us)
    ref = reference_kf(**mats, ys=ys, us=us)
    sm, sP, cross = reference_rts(mats["A"], *ref[:4])
    np.testing.assert_allclose(smooth.means, sm, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(smooth.covariances, sP, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(smooth.cross_covariances, cross, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(float(smooth.log_likelihood), ref[4].sum(), rtol=1e-10)


# ----------------------------------------------------------------------------------------- dynamax, side by side

DT = 0.05


class DiscretePendulum(tj.AbstractDiscreteDynamics):
    """One RK4 step of the damped pendulum (the same function is given to dynamax)."""

    length_m: jax.Array = eqx.field(converter=jnp.asarray, default=1.0)
    damping_per_s: jax.Array = eqx.field(converter=jnp.asarray, default=0.3)

    def rhs(self, x):
        return jnp.stack([x[1], -9.81 / self.length_m * jnp.sin(x[0]) - self.damping_per_s * x[1]])

    def transition(self, t, x, u):
        k1 = self.rhs(x)
        k2 = self.rhs(x + 0.5 * DT * k1)
        k3 = self.rhs(x + 0.5 * DT * k2)
        k4 = self.rhs(x + DT * k3)
        return x + DT / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _sin_angle(t, x, u):
    return jnp.sin(x[:1])


Q_PEND = np.array([[1e-5, 0.0], [0.0, 4e-4]])
R_PEND = np.array([[0.1**2]])
M0, P0 = np.array([1.2, 0.0]), np.diag([0.2**2, 0.3**2])


@pytest.fixture(scope="module")
def pendulum_data():
    twin = tj.StateSpaceModel(
        DiscretePendulum(), tj.GaussianObservation(_sin_angle, R_PEND), tj.Gaussian(M0, P0), DT, process_noise=Q_PEND
    )
    ts = jnp.arange(150) * DT
    path = tj.simulate(twin, None, ts, key=jax.random.key(7))
    return twin, np.asarray(path.ys)


@pytest.fixture
def exact_dynamax(monkeypatch):
    """dynamax with its gain solve made exact: its ``psd_solve`` adds ``diagonal_boost = 1e-9`` to ``S``, a relative
    change of 1e-7 for this sensor's ``S ≈ 1e-2`` that shows in the 8th digit; without it the filters agree to
    rounding."""
    dnl = _dynamax()
    from dynamax.utils.utils import psd_solve

    def exact(A, b, diagonal_boost=0.0):
        return psd_solve(A, b, diagonal_boost=0.0)

    for module in (dnl.inference_ekf, dnl.inference_ukf):
        monkeypatch.setattr(module, "psd_solve", exact)
    return dnl


@pytest.mark.parametrize("kind", ["ekf", "ukf"])
def test_matches_dynamax_on_nonlinear_pendulum(exact_dynamax, pendulum_data, kind):
    dnl = exact_dynamax
    twin, ys = pendulum_data
    params = dnl.ParamsNLGSSM(
        initial_mean=jnp.asarray(M0),
        initial_covariance=jnp.asarray(P0),
        dynamics_function=lambda x: twin.dynamics.transition(0.0, x, None),
        dynamics_covariance=jnp.asarray(Q_PEND),
        emission_function=lambda x: _sin_angle(0.0, x, None),
        emission_covariance=jnp.asarray(R_PEND),
    )
    if kind == "ekf":
        ref = dnl.extended_kalman_filter(params, jnp.asarray(ys))
        res = ti.extended_kalman_filter(twin, ys)
    else:
        hyper = dnl.UKFHyperParams(alpha=3**0.5, beta=2, kappa=1)
        ref = dnl.unscented_kalman_filter(params, jnp.asarray(ys), hyper)
        res = ti.unscented_kalman_filter(twin, ys, alpha=hyper.alpha, beta=hyper.beta, kappa=hyper.kappa)
    np.testing.assert_allclose(res.means, ref.filtered_means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.covariances, ref.filtered_covariances, rtol=1e-10, atol=1e-13)
    # dynamax's predicted entry t is the prediction of state t + 1
    np.testing.assert_allclose(res.predicted_means[1:], ref.predicted_means[:-1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.predicted_covariances[1:], ref.predicted_covariances[:-1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(float(res.log_likelihood), float(ref.marginal_loglik), rtol=1e-11)
    assert res.ok


def test_extended_rts_smoother_matches_dynamax(exact_dynamax, pendulum_data):
    dnl = exact_dynamax
    twin, ys = pendulum_data
    params = dnl.ParamsNLGSSM(
        initial_mean=jnp.asarray(M0),
        initial_covariance=jnp.asarray(P0),
        dynamics_function=lambda x: twin.dynamics.transition(0.0, x, None),
        dynamics_covariance=jnp.asarray(Q_PEND),
        emission_function=lambda x: _sin_angle(0.0, x, None),
        emission_covariance=jnp.asarray(R_PEND),
    )
    ref = dnl.extended_kalman_smoother(params, jnp.asarray(ys))
    smooth = ti.extended_rts_smoother(twin, ys)
    np.testing.assert_allclose(smooth.means, ref.smoothed_means, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(smooth.covariances, ref.smoothed_covariances, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------ continuous twins, diffrax


# one fixed Euler step per interval: through diffrax, and far cheaper to compile than the adaptive default
FIXED_STEP = dict(solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize(), substeps=1, max_steps=1)
THETA = np.array([1.0, 0.1])  # the pendulum's length (m) and damping (1/s)


def with_theta(twin, theta):
    return eqx.tree_at(lambda m: (m.dynamics.length_m, m.dynamics.damping_per_s), twin, (theta[0], theta[1]))


def continuous_pendulum(pendulum=None, **disc):
    """The continuous pendulum twin, integrated by diffrax over each interval. Fixed Tsit5 steps by default (cheap to
    compile); ``disc`` overrides the discretisation (``default=True``: the library's adaptive default)."""
    pendulum = (
        Pendulum(length_m=np.float64(THETA[0]), damping_per_s=np.float64(THETA[1])) if pendulum is None else pendulum
    )
    discretisation = None if disc.pop("default", False) else tj.Discretisation(**{**FIXED_STEP, **disc})
    return tj.StateSpaceModel(
        pendulum,
        tj.GaussianObservation(lambda t, x, u: jnp.stack([jnp.sin(x[0]), x[1]]), jnp.diag(jnp.array([0.05, 0.2]) ** 2)),
        tj.Gaussian(jnp.array([1.0, 0.0]), jnp.diag(jnp.array([0.1, 0.2]) ** 2)),
        0.1,
        process_noise=jnp.diag(jnp.array([1e-5, 1e-4])),
        control_dim=1,
        discretisation=discretisation,
    )


@pytest.fixture(scope="module")
def irregular_data():
    twin = continuous_pendulum()
    ts = jnp.array([0.0, 0.1, 0.35, 0.45, 0.8, 0.85, 1.3, 1.5])
    us = 0.5 * jnp.sin(3 * ts)[:, None]
    path = tj.simulate(twin, None, ts, controls=us, key=jax.random.key(3))
    ys = np.array(path.ys)
    ys[2, 1] = np.nan  # one masked channel
    ys[4] = np.nan  # a fully missing observation
    return twin, ts, us, jnp.asarray(ys)


@pytest.mark.parametrize("kind", ["ekf", "ukf"])
def test_irregular_times_equal_step_by_step_filter(irregular_data, kind):
    twin, ts, us, ys = irregular_data
    if kind == "ekf":
        res = ti.extended_kalman_filter(twin, ys, us, ts)
        init, update, step = ti.ekf_init, ti.ekf_update, ti.ekf_step
    else:
        res = ti.unscented_kalman_filter(twin, ys, us, ts)
        init, update, step = ti.ukf_init, ti.ukf_update, ti.ukf_step
    state, info = update(twin, init(twin, t0=ts[0]), ys[0], us[0])
    means, lls = [state.mean], [info.log_likelihood]
    step = eqx.filter_jit(step)  # one compilation for every interval length
    for k in range(1, len(ts)):
        state, info = step(twin, state, ys[k], us[k], t=ts[k])
        means.append(state.mean)
        lls.append(info.log_likelihood)
    assert_tree_allclose(res.means, jnp.stack(means), rtol=1e-9, atol=1e-12)
    assert_tree_allclose(res.log_likelihoods, jnp.stack(lls), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(state.log_likelihood), float(res.log_likelihood), rtol=1e-10)
    assert res.ok and int(state.status) == 0
    # the prediction integrates over the actual interval, with the control held since the last measurement
    for k in (2, 6):
        want = twin.transition(ts[k - 1], ts[k], res.means[k - 1], us[k - 1])
        if kind == "ekf":
            assert_tree_allclose(res.predicted_means[k], want, rtol=1e-8, atol=1e-10)
        else:  # the unscented mean is not the mean's image, but close to it
            np.testing.assert_allclose(res.predicted_means[k], want, atol=5e-3)
    assert float(res.log_likelihoods[4]) == 0.0
    assert_tree_allclose(res.means[4], res.predicted_means[4])
    if kind == "ekf":  # P⁻ = F P Fᵀ + Q (t1 - t0) / dt, F by reverse mode here: interval 0.25 s = 2.5 dt
        k = 2
        F = jax.jit(jax.jacrev(lambda x: twin.transition(ts[k - 1], ts[k], x, us[k - 1])))(res.means[k - 1])
        P = F @ res.covariances[k - 1] @ F.T + twin.process_noise * 2.5
        assert_tree_allclose(res.predicted_covariances[k], P, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("kind", ["ekf", "ukf"])
def test_masked_channel_equals_filter_without_that_row(irregular_data, kind):
    twin, ts, us, ys = irregular_data
    res = FILTERS[kind](twin, ys, us, ts)
    # the same update with a sensor that only has channel 0 (angle), at the step whose channel 1 is missing
    angle_only = tj.StateSpaceModel(
        twin.dynamics,
        tj.GaussianObservation(lambda t, x, u: jnp.sin(x[:1]), twin.observation.cov[:1, :1]),
        twin.initial,
        twin.dt,
        process_noise=twin.process_noise,
        control_dim=1,
    )
    init, update = (ti.ekf_init, ti.ekf_update) if kind == "ekf" else (ti.ukf_init, ti.ukf_update)
    prior = init(angle_only, mean=res.predicted_means[2], cov=res.predicted_covariances[2], t0=ts[2])
    state, info = update(angle_only, prior, ys[2, :1], us[2])
    assert_tree_allclose(res.means[2], state.mean, rtol=1e-10, atol=1e-13)
    assert_tree_allclose(res.covariances[2], state.cov, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(float(res.log_likelihoods[2]), float(info.log_likelihood), rtol=1e-10)
    assert bool(res.innovations.mask[2, 0]) and not bool(res.innovations.mask[2, 1])


@pytest.mark.parametrize("kind", ["ekf", "ukf"])
def test_loglik_gradient_wrt_physical_parameters_matches_finite_differences(irregular_data, kind):
    """d log p(y | φ) / dφ for the pendulum's length and damping, through the diffrax solves over irregular intervals
    (and, for the EKF, through its forward-mode Jacobians), with masked data, against central differences."""
    twin, ts, us, ys = irregular_data
    flt = FILTERS[kind]

    def loglik(theta):
        return flt(with_theta(twin, theta), ys, us, ts).log_likelihood

    theta = jnp.asarray(THETA) * jnp.array([0.9, 2.0])  # away from the data's truth: a non-zero gradient
    grad = jax.jit(jax.grad(loglik))(theta)
    h = 1e-5
    fd = [(loglik(theta.at[i].add(h)) - loglik(theta.at[i].add(-h))) / (2 * h) for i in range(2)]
    np.testing.assert_allclose(grad, jnp.stack(fd), rtol=1e-6)
    assert np.all(np.abs(np.asarray(grad)) > 1e-2)


@pytest.mark.slow
def test_ekf_gradient_through_adaptive_default_solver_is_finite_and_close_to_fd():
    twin = continuous_pendulum(default=True)  # Tsit5 + PID; RecursiveCheckpointAdjoint swapped for DirectAdjoint
    ts = jnp.arange(6) * 0.1
    us = jnp.zeros((6, 1))
    ys = tj.simulate(twin, None, ts, controls=us, key=jax.random.key(6)).ys

    def loglik(length):
        twin_l = eqx.tree_at(lambda m: m.dynamics.length_m, twin, length)
        return ti.extended_kalman_filter(twin_l, ys, us, ts).log_likelihood

    g = jax.grad(loglik)(jnp.asarray(1.1))
    h = 1e-4
    fd = (loglik(jnp.asarray(1.1 + h)) - loglik(jnp.asarray(1.1 - h))) / (2 * h)
    assert np.isfinite(float(g))
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-3)


def test_nonfinite_solve_is_reported_in_status(irregular_data):
    twin, ts, us, ys = irregular_data
    for flt in (ti.extended_kalman_filter, ti.unscented_kalman_filter):
        res = flt(with_theta(twin, np.array([np.nan, 0.1])), ys, us, ts)  # a NaN length: every solve is non-finite
        assert int(res.status[0]) == Status.successful
        assert np.all(np.asarray(res.status[1:]) == Status.nonfinite)
        assert not bool(res.ok)


@pytest.mark.slow
def test_failed_solve_is_reported_in_status():
    twin = continuous_pendulum(substeps=2, max_steps=1)  # 2 fixed steps per interval: every interval hits max_steps
    ts = jnp.arange(4) * 0.1
    ys = jnp.zeros((4, 2))
    for flt in (ti.extended_kalman_filter, ti.unscented_kalman_filter):
        res = flt(twin, ys, jnp.zeros((4, 1)), ts)
        assert int(res.status[0]) == Status.successful
        assert np.all(np.asarray(res.status[1:]) == Status.max_steps_reached)
        assert not bool(res.ok)


# ---------------------------------------------------------------------------------------- compilation, batching


def test_no_recompilation_on_second_call():
    mats, ys, us = random_lgssm(seed=5)
    model = as_state_space_model(mats)
    ti.extended_kalman_filter(model, ys, us)
    ti.unscented_kalman_filter(model, ys, us)
    before = (eqx.debug.get_num_traces(nonlinear._ekf_run), eqx.debug.get_num_traces(nonlinear._ukf_run))
    ys2 = ys + 1.0
    ti.extended_kalman_filter(model, ys2, us)
    ti.unscented_kalman_filter(model, ys2, us, alpha=0.5, kappa=2.0)  # new sigma-point parameters: still no retrace
    model2 = eqx.tree_at(lambda m: m.process_noise, model, 2 * model.process_noise)  # new parameter values
    ti.extended_kalman_filter(model2, ys2, us)
    ti.unscented_kalman_filter(model2, ys2, us)
    after = (eqx.debug.get_num_traces(nonlinear._ekf_run), eqx.debug.get_num_traces(nonlinear._ukf_run))
    assert after == before


def test_known_initial_state_is_allowed(pendulum_data):
    """A zero prior covariance (a known state): the sigma points still exist, the first update cannot move the mean."""
    twin, ys = pendulum_data
    for flt in (ti.unscented_kalman_filter, ti.extended_kalman_filter):
        res = flt(twin, ys, cov=np.zeros((2, 2)))
        assert res.ok and np.all(np.isfinite(np.asarray(res.covariances)))
        assert_tree_allclose(res.means[0], jnp.asarray(M0), rtol=0, atol=1e-150)
        assert float(res.covariances[1, 1, 1]) > 0


def test_vmap_over_sequences_equals_one_at_a_time(pendulum_data):
    twin, ys = pendulum_data
    batch = jnp.stack([ys[:40], ys[40:80] + 0.01, ys[80:120] - 0.02])
    batched = jax.jit(jax.vmap(lambda y: ti.extended_kalman_filter(twin, y).means))(batch)
    for i in range(3):
        assert_tree_allclose(batched[i], ti.extended_kalman_filter(twin, batch[i]).means, rtol=1e-12, atol=1e-14)


def test_online_step_under_jit_matches_driver(pendulum_data):
    twin, ys = pendulum_data
    res = ti.extended_kalman_filter(twin, ys[:10])
    step = eqx.filter_jit(ti.ekf_step)
    state, _ = ti.ekf_update(twin, ti.ekf_init(twin), ys[0])
    for k in range(1, 10):
        state, _ = step(twin, state, ys[k])
    assert_tree_allclose(state.mean, res.means[-1], rtol=1e-10, atol=1e-13)
    assert_tree_allclose(state.t, jnp.asarray(9 * DT), rtol=1e-12)


# -------------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected_with_the_argument_named(pendulum_data):
    twin, ys = pendulum_data
    for flt in (ti.extended_kalman_filter, ti.unscented_kalman_filter, ti.extended_rts_smoother):
        with pytest.raises(ValueError, match="`ys`"):
            flt(twin, np.zeros((5, 2)))
        with pytest.raises(ValueError, match="`ys`"):
            flt(twin, np.array([[0.1], [np.inf]]))
        with pytest.raises(ValueError, match="`ts`"):
            flt(twin, ys[:3], ts=np.array([0.0, 0.2, 0.1]))
        with pytest.raises(ValueError, match="`ts`"):
            flt(twin, ys[:3], ts=np.array([0.0, 0.2]))
        with pytest.raises(ValueError, match="`mean`"):
            flt(twin, ys[:3], mean=np.zeros(3))
        with pytest.raises(ValueError, match="`cov`"):
            flt(twin, ys[:3], cov=np.eye(3))
        with pytest.raises(ValueError, match="`cov`"):
            flt(twin, ys[:3], cov=-np.eye(2))
        with pytest.raises(ValueError, match="`mean`"):
            flt(twin, ys[:3], mean=np.array([np.nan, 0.0]))
        with pytest.raises(ValueError, match="observation"):
            flt(tj.StateSpaceModel(DiscretePendulum(), None, tj.Gaussian(M0, P0), DT), ys[:3])
        with pytest.raises(ValueError, match="`model`"):
            flt(DiscretePendulum(), ys[:3])
    with pytest.raises(ValueError, match="`us`"):
        ti.extended_kalman_filter(continuous_pendulum(), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="`alpha`"):
        ti.unscented_kalman_filter(twin, ys[:3], alpha=0.0)
    with pytest.raises(ValueError, match="`kappa`"):
        ti.unscented_kalman_filter(twin, ys[:3], kappa=-2.0)
    state = ti.ekf_init(twin)
    with pytest.raises(ValueError, match="`y`"):
        ti.ekf_update(twin, state, jnp.zeros(3))
    with pytest.raises(ValueError, match="`y`"):
        ti.ukf_update(twin, state, jnp.array([jnp.inf]))
    with pytest.raises(ValueError, match="`u`"):
        ti.ukf_step(twin, state, jnp.zeros(1), jnp.zeros(2))
    with pytest.raises(ValueError, match="`alpha`"):
        ti.ukf_predict(twin, state, 0.1, alpha=-1.0)
