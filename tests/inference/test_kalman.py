"""Kalman filter, RTS smoother and their parallel-in-time versions, each against an independent truth.

Truths: the dense joint Gaussian of ``(x_{0:T-1}, y_{0:T-1})`` built explicitly and conditioned with numpy / scipy;
dynamax's ``lgssm_filter`` / ``lgssm_smoother`` side by side; a reduced model without the missing channel; central
finite differences; a float64 run for the float32 one; the matrix exponential for a continuous linear ODE.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import twinjax as tj
from twinjax.inference import (
    GaussianFilterResult,
    kalman as kalman_module,
    kalman_filter,
    kf_init,
    kf_predict,
    kf_step,
    kf_update,
    parallel as parallel_module,
    parallel_kalman_filter,
    parallel_rts_smoother,
    rts_smoother,
)
from twinjax.model.observation import LinearFunction
from twinjax.model.ssm import LinearDynamics

from ..helpers import assert_tree_allclose

# ---------------------------------------------------------------------------------------------------------------------
# random models and the dense joint Gaussian


def _spd(rng, k, scale):
    L = rng.normal(size=(k, k))
    return scale * (L @ L.T / k + 0.2 * np.eye(k))


def random_lgssm(seed, n=3, p=2, m=1, dtype=np.float64):
    """A stable random LG twin with correlated noises (spectral radius of A: 0.95)."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    B = rng.normal(size=(n, m)) if m else None
    D = rng.normal(size=(p, m)) if m else None
    parts = [A, B, rng.normal(size=(p, n)), D, _spd(rng, n, 0.3), _spd(rng, p, 0.2), rng.normal(size=n)]
    parts.append(_spd(rng, n, 1.0))
    parts = [None if x is None else jnp.asarray(x, dtype) for x in parts]
    return tj.LinearGaussianSSM(*parts)


def random_data(seed, model, T, missing=False):
    """Measurements ``(T, p)`` and controls ``(T, m)``; with ``missing``: ~25 % NaN channels and two fully NaN rows."""
    rng = np.random.default_rng(1000 + seed)
    p, m = model.C.shape[0], model.control_dim
    ys = 2.0 * rng.normal(size=(T, p))
    us = rng.normal(size=(T, m))
    if missing:
        ys[rng.random(size=(T, p)) < 0.25] = np.nan
        ys[[2, T - 2]] = np.nan
        ys[0, 0] = np.nan
    return ys, us


def _matrices(model):
    return [np.asarray(getattr(model, k), np.float64) for k in ("A", "B", "C", "D", "Q", "R", "m0", "P0")]


def dense_joint(model, us):
    """Mean and covariance of ``z = (x_0, …, x_{T-1}, y_0, …, y_{T-1})`` (flattened) under the LG twin."""
    A, B, C, D, Q, R, m0, P0 = _matrices(model)
    T, n = us.shape[0], A.shape[0]
    mx, Sig = np.zeros((T, n)), np.zeros((T, n, n))
    mx[0], Sig[0] = m0, P0
    for k in range(1, T):
        mx[k] = A @ mx[k - 1] + B @ us[k - 1]
        Sig[k] = A @ Sig[k - 1] @ A.T + Q
    Sx = np.zeros((T * n, T * n))
    for i in range(T):
        for j in range(i + 1):
            block = np.linalg.matrix_power(A, i - j) @ Sig[j]  # Cov(x_i, x_j), i >= j
            Sx[i * n : (i + 1) * n, j * n : (j + 1) * n] = block
            Sx[j * n : (j + 1) * n, i * n : (i + 1) * n] = block.T
    Cb = np.kron(np.eye(T), C)
    my = mx @ C.T + us @ D.T
    Sxy = Sx @ Cb.T
    Syy = Cb @ Sx @ Cb.T + np.kron(np.eye(T), R)
    mean = np.concatenate([mx.ravel(), my.ravel()])
    cov = np.block([[Sx, Sxy], [Sxy.T, Syy]])
    return mean, cov


def observed_index(ys, n, upto=None):
    """Indices into ``z`` of the observed entries of ``ys[:upto]`` and their values."""
    T, p = ys.shape
    upto = T if upto is None else upto
    ks, cs = np.nonzero(~np.isnan(ys[:upto]))
    return T * n + ks * p + cs, ys[ks, cs]


def condition(mean, cov, idx, vals):
    if len(idx) == 0:
        return mean, cov
    K = np.linalg.solve(cov[np.ix_(idx, idx)], cov[idx, :]).T
    return mean + K @ (vals - mean[idx]), cov - K @ cov[idx, :]


def dense_log_density(mean, cov, idx, vals):
    if len(idx) == 0:
        return 0.0
    return scipy.stats.multivariate_normal(mean[idx], cov[np.ix_(idx, idx)]).logpdf(vals)


# ---------------------------------------------------------------------------------------------------------------------
# exactness against the dense joint Gaussian


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_log_likelihood_equals_dense_joint_gaussian(missing, parallel):
    """``log p(y_{0:T-1})`` and every increment ``log p(y_k | y_{<k})`` equal the dense Gaussian's (observed entries
    only: the exact marginal when channels are missing)."""
    model = random_lgssm(0, n=3, p=2, m=1)
    ys, us = random_data(0, model, T=7, missing=missing)
    mean, cov = dense_joint(model, us)
    result = kalman_filter(model, ys, us, parallel=parallel)
    cumulative = [dense_log_density(mean, cov, *observed_index(ys, 3, k + 1)) for k in range(7)]
    np.testing.assert_allclose(result.log_likelihood, cumulative[-1], rtol=1e-11)
    np.testing.assert_allclose(result.log_likelihoods, np.diff(cumulative, prepend=0.0), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("missing", [False, True])
def test_filter_and_smoother_moments_equal_dense_conditioning(missing):
    """Filtered ``p(x_k | y_{0:k})``, predicted ``p(x_k | y_{<k})``, smoothed ``p(x_k | y_{0:T-1})`` and the lag-one
    smoothed cross-covariance equal conditioning the dense joint Gaussian."""
    n, T = 3, 7
    model = random_lgssm(1)
    ys, us = random_data(1, model, T=T, missing=missing)
    mean, cov = dense_joint(model, us)
    filtered = kalman_filter(model, ys, us)
    smoothed = rts_smoother(model, filtered, us)
    post_m, post_P = condition(mean, cov, *observed_index(ys, n))
    for k in range(T):
        sl = slice(k * n, (k + 1) * n)
        f_m, f_P = condition(mean, cov, *observed_index(ys, n, k + 1))
        p_m, p_P = condition(mean, cov, *observed_index(ys, n, k))
        assert_tree_allclose((filtered.means[k], filtered.covariances[k]), (f_m[sl], f_P[sl, sl]), rtol=1e-9)
        assert_tree_allclose(
            (filtered.predicted_means[k], filtered.predicted_covariances[k]), (p_m[sl], p_P[sl, sl]), rtol=1e-9
        )
        assert_tree_allclose((smoothed.means[k], smoothed.covariances[k]), (post_m[sl], post_P[sl, sl]), rtol=1e-9)
        if k < T - 1:
            nxt = slice((k + 1) * n, (k + 2) * n)
            np.testing.assert_allclose(smoothed.cross_covariances[k], post_P[nxt, sl], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(smoothed.log_likelihood, filtered.log_likelihood)


# ---------------------------------------------------------------------------------------------------------------------
# parallel == sequential, dynamax side by side


@pytest.mark.parametrize("T", [7, pytest.param(203, marks=pytest.mark.slow)])
@pytest.mark.parametrize("missing", [False, True])
def test_parallel_equals_sequential(missing, T):
    """Every field of the filter and smoother results (T = 7 shares its compilation with the other tests; the slow
    case runs an 8-level scan)."""
    model = random_lgssm(2)
    ys, us = random_data(2, model, T=T, missing=missing)
    seq, par = kalman_filter(model, ys, us), parallel_kalman_filter(model, ys, us)
    assert_tree_allclose(par, seq, rtol=1e-8, atol=1e-10)
    s_seq = rts_smoother(model, seq)
    s_par = parallel_rts_smoother(model, ys, us)
    assert_tree_allclose(s_par, s_seq, rtol=1e-8, atol=1e-10)
    # the `parallel=` switch dispatches to the same functions
    assert_tree_allclose(rts_smoother(model, ys, us, parallel=True), s_par)
    assert_tree_allclose(kalman_filter(model, ys, us, parallel=True), par)
    # and the parallel smoother of a sequential filter result is the same again
    assert_tree_allclose(parallel_rts_smoother(model, seq), s_seq, rtol=1e-8, atol=1e-10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamax's TFP substrate imports deprecated jax names
def test_matches_dynamax(monkeypatch):
    """Side by side with dynamax's ``lgssm_smoother`` on three random LG twins with inputs: filtered and smoothed
    moments, ``E[x_k x_{k+1}ᵀ | y]`` and the marginal log-likelihood.

    dynamax's ``initial.mean`` is the prior of the first observation, as ours; its input ``u_t`` drives the transition
    *into* ``t`` and the emission at ``t`` while ours ``us[k]`` drives the transition *out of* ``k``, so dynamax gets
    the inputs ``(us[t-1], us[t])`` with ``B_dx = [B, 0]`` and ``D_dx = [0, D]``. dynamax adds ``1e-9 I`` to every
    innovation covariance it solves with (``psd_solve``'s ``diagonal_boost``), which moves its means by ~1e-8
    relative; the boost is switched off here so that both compute the exact filter and must agree to rounding.
    """
    import functools

    import dynamax.linear_gaussian_ssm.inference as dx_inference
    from dynamax.linear_gaussian_ssm import (
        ParamsLGSSM,
        ParamsLGSSMDynamics,
        ParamsLGSSMEmissions,
        ParamsLGSSMInitial,
        lgssm_smoother,
    )
    from dynamax.utils.utils import psd_solve

    monkeypatch.setattr(dx_inference, "psd_solve", functools.partial(psd_solve, diagonal_boost=0.0))
    n, p, m, T = 3, 2, 1, 40
    models = [random_lgssm(seed) for seed in (3, 4, 5)]
    data = [random_data(seed, model, T=T) for seed, model in zip((3, 4, 5), models)]

    def dynamax_smoother(A, B, C, D, Q, R, m0, P0, ys, us):
        params = ParamsLGSSM(
            initial=ParamsLGSSMInitial(mean=m0, cov=P0),
            dynamics=ParamsLGSSMDynamics(
                weights=A, bias=jnp.zeros(n), input_weights=jnp.hstack([B, jnp.zeros((n, m))]), cov=Q
            ),
            emissions=ParamsLGSSMEmissions(
                weights=C, bias=jnp.zeros(p), input_weights=jnp.hstack([jnp.zeros((p, m)), D]), cov=R
            ),
        )
        inputs = jnp.concatenate([jnp.vstack([jnp.zeros((1, m)), us[:-1]]), us], axis=1)
        return lgssm_smoother(params, ys, inputs)

    stacked = [np.stack(mats) for mats in zip(*[_matrices(model) for model in models])]
    refs = jax.jit(jax.vmap(dynamax_smoother))(*stacked, *(np.stack(d) for d in zip(*data)))
    tol = dict(rtol=1e-9, atol=1e-11)
    for i, (model, (ys, us)) in enumerate(zip(models, data)):
        ref = jax.tree_util.tree_map(lambda x: x[i], refs)
        filtered = kalman_filter(model, ys, us)
        smoothed = rts_smoother(model, filtered)
        np.testing.assert_allclose(filtered.log_likelihood, ref.marginal_loglik, **tol)
        np.testing.assert_allclose(filtered.means, ref.filtered_means, **tol)
        np.testing.assert_allclose(filtered.covariances, ref.filtered_covariances, **tol)
        np.testing.assert_allclose(smoothed.means, ref.smoothed_means, **tol)
        np.testing.assert_allclose(smoothed.covariances, ref.smoothed_covariances, **tol)
        second_moment = np.swapaxes(smoothed.cross_covariances, 1, 2) + np.einsum(
            "ti,tj->tij", smoothed.means[:-1], smoothed.means[1:]
        )
        np.testing.assert_allclose(second_moment, ref.smoothed_cross_covariances, **tol)


# ---------------------------------------------------------------------------------------------------------------------
# missing data and the one-step family


def test_missing_channel_equals_model_without_that_row():
    """An update with channel 1 missing equals the update of the model with row 1 of C, D and row/column 1 of R
    removed (R is correlated, so this is the exact marginal, not merely ignoring a diagonal entry)."""
    model = random_lgssm(5, n=3, p=3, m=1)
    A, B, C, D, Q, R, m0, P0 = _matrices(model)
    keep = [0, 2]
    reduced = tj.LinearGaussianSSM(A, B, C[keep], D[keep], Q, R[np.ix_(keep, keep)], m0, P0)
    u0, u1 = jnp.array([0.3]), jnp.array([-0.7])
    state, _ = kf_update(model, kf_init(model), jnp.array([0.5, 1.0, -1.0]), u0)
    state = kf_predict(model, state, 1.0)
    y = jnp.array([1.2, jnp.nan, -0.4])
    full, info = kf_update(model, state, y, u1)
    red, info_red = kf_update(reduced, state, y[jnp.array(keep)], u1)
    assert_tree_allclose((full.mean, full.cov, full.log_likelihood), (red.mean, red.cov, red.log_likelihood))
    np.testing.assert_allclose(info.log_likelihood, info_red.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(info.residual[jnp.array(keep)], info_red.residual, rtol=1e-12)
    assert info.residual[1] == 0.0 and not info.mask[1] and bool(info.mask[0])


def test_fully_missing_observation_is_a_predict_only_step():
    model = random_lgssm(6)
    state, _ = kf_update(model, kf_init(model), jnp.array([0.1, 0.2]), jnp.array([1.0]))
    stepped, info = kf_step(model, state, jnp.full(2, jnp.nan), jnp.array([0.5]))
    predicted = kf_predict(model, state, state.t + model.dt)
    assert_tree_allclose((stepped.mean, stepped.cov, stepped.t), (predicted.mean, predicted.cov, predicted.t))
    assert info.log_likelihood == 0.0 and stepped.log_likelihood == state.log_likelihood
    # in the batch filter: a NaN row leaves the predicted moments untouched
    ys, us = random_data(6, model, T=7, missing=True)
    result = kalman_filter(model, ys, us)
    for k in (2, 5):
        assert_tree_allclose(
            (result.means[k], result.covariances[k]), (result.predicted_means[k], result.predicted_covariances[k])
        )
        assert result.log_likelihoods[k] == 0.0


def test_online_steps_equal_batch_filter():
    """The one-step family, called tick by tick (as an online twin does), reproduces the batch filter."""
    model = random_lgssm(7)
    ys, us = random_data(7, model, T=7, missing=True)
    batch = kalman_filter(model, ys, us)
    state, _ = kf_update(model, kf_init(model), ys[0], us[0])
    means, covs = [state.mean], [state.cov]
    for k in range(1, 7):
        state, _ = kf_step(model, state, ys[k], us[k])
        means.append(state.mean)
        covs.append(state.cov)
    assert_tree_allclose((jnp.stack(means), jnp.stack(covs)), (batch.means, batch.covariances))
    np.testing.assert_allclose(state.log_likelihood, batch.log_likelihood, rtol=1e-12)
    assert int(state.status) == 0 and bool(batch.ok)


# ---------------------------------------------------------------------------------------------------------------------
# twins that are not LinearGaussianSSM


def test_statespacemodel_with_linear_dynamics_equals_lgssm():
    """The autodiff-linearised path (jacfwd of the transition and sensor) on a discrete linear StateSpaceModel equals
    the direct LinearGaussianSSM path."""
    model = random_lgssm(8)
    A, B, C, D, Q, R, m0, P0 = _matrices(model)
    twin = tj.StateSpaceModel(
        LinearDynamics(jnp.asarray(A), jnp.asarray(B)),
        tj.GaussianObservation(LinearFunction(jnp.asarray(C), jnp.asarray(D)), R),
        tj.Gaussian(m0, P0),
        dt=1.0,
        process_noise=Q,
        control_dim=1,
    )
    ys, us = random_data(8, model, T=7, missing=True)
    assert_tree_allclose(kalman_filter(twin, ys, us), kalman_filter(model, ys, us))
    assert_tree_allclose(rts_smoother(twin, ys, us), rts_smoother(model, ys, us))


class _LinearODE(tj.AbstractDynamics):
    F: jax.Array

    def vector_field(self, t, x, u):
        return self.F @ x


@pytest.mark.parametrize(
    "adjoint",
    [diffrax.ForwardMode(), pytest.param(diffrax.RecursiveCheckpointAdjoint(), marks=pytest.mark.slow)],
    ids=["jacfwd", "jacrev"],
)
def test_continuous_linear_twin_on_irregular_times_is_exact(adjoint):
    """Continuous–discrete filtering: a linear ODE observed at irregular times equals the Kalman filter with the exact
    transition ``expm(F Δ_k)`` and the model's noise ``Q Δ_k / dt`` for each actual interval. The transition Jacobian
    goes through diffrax by forward mode (``ForwardMode`` adjoint) or, with the default adjoint, by reverse mode."""
    F = np.array([[0.0, 1.0], [-2.0, -0.3]])
    Q, R, C = np.diag([0.01, 0.04]), np.array([[0.05]]), np.array([[1.0, 0.0]])
    m0, P0, dt = np.array([1.0, 0.0]), 0.5 * np.eye(2), 0.1
    disc = tj.Discretisation(stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-12), adjoint=adjoint)
    twin = tj.StateSpaceModel(
        _LinearODE(jnp.asarray(F)),
        tj.GaussianObservation(lambda t, x, u: x[:1], R),
        tj.Gaussian(m0, P0),
        dt=dt,
        process_noise=Q,
        discretisation=disc,
    )
    ts = np.array([0.0, 0.1, 0.15, 0.4, 0.45, 1.0])
    ys = np.array([[1.0], [0.9], [np.nan], [0.5], [0.3], [-0.6]])
    result = kalman_filter(twin, ys, ts=ts)
    m, P, ll = m0, P0, 0.0
    for k in range(len(ts)):
        if k:
            Phi = scipy.linalg.expm(F * (ts[k] - ts[k - 1]))
            m, P = Phi @ m, Phi @ P @ Phi.T + Q * (ts[k] - ts[k - 1]) / dt
        if not np.isnan(ys[k, 0]):
            S = C @ P @ C.T + R
            K = P @ C.T @ np.linalg.inv(S)
            ll += scipy.stats.multivariate_normal(C @ m, S).logpdf(ys[k])
            m, P = m + K @ (ys[k] - C @ m), P - K @ S @ K.T
        np.testing.assert_allclose(result.means[k], m, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(result.covariances[k], P, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.log_likelihood, ll, rtol=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# gradients, float32, compilation, bad input


def _loglik_problem():
    """``θ ↦ log p(y | θ)`` with ``θ = (A, L_Q, L_R, m0)`` on a random twin with missing data, and ``θ₀``."""
    base = random_lgssm(9)
    A, B, C, D, Q, R, m0, P0 = _matrices(base)
    ys, us = random_data(9, base, T=7, missing=True)
    theta0 = {"A": A, "LQ": np.linalg.cholesky(Q), "LR": np.linalg.cholesky(R), "m0": m0}

    def loglik(theta, parallel=False):
        model = tj.LinearGaussianSSM(
            theta["A"], B, C, D, theta["LQ"] @ theta["LQ"].T, theta["LR"] @ theta["LR"].T, theta["m0"], P0
        )
        return kalman_filter(model, ys, us, parallel=parallel).log_likelihood

    return loglik, jax.tree_util.tree_map(jnp.asarray, theta0)


def test_log_likelihood_gradients_match_finite_differences():
    """∂ log p(y) / ∂(A, L_Q, L_R, m0) with ``Q = L_Q L_Qᵀ``, ``R = L_R L_Rᵀ`` against central differences along
    random directions (h = 1e-5: truncation O(h²) ≈ 1e-10, rounding ≈ 1e-16 |log p| / h ≈ 1e-9)."""
    loglik, theta0 = _loglik_problem()
    grad = jax.grad(loglik)(theta0)
    rng = np.random.default_rng(0)
    h = 1e-5
    for name in theta0:
        for _ in range(2):
            v = rng.normal(size=theta0[name].shape)
            plus = {**theta0, name: theta0[name] + h * v}
            minus = {**theta0, name: theta0[name] - h * v}
            fd = (loglik(plus) - loglik(minus)) / (2 * h)
            np.testing.assert_allclose(np.sum(grad[name] * v), fd, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.slow
def test_parallel_filter_gradient_equals_sequential():
    """Reverse-mode through the associative scan gives the sequential filter's gradient (slow: compiling the VJP of
    the scan takes a while on CPU)."""
    loglik, theta0 = _loglik_problem()
    assert_tree_allclose(
        jax.grad(lambda th: loglik(th, parallel=True))(theta0), jax.grad(loglik)(theta0), rtol=1e-8, atol=1e-10
    )


def _stiff_case(dtype):
    """A near-unit-root twin (eigenvalues 0.9999, 0.999, 0.99) with two very precise, correlated sensors
    (R ~ 1e-8 against a process noise 1e-2 on the measured states). In float32 the textbook update ``P - K S Kᵀ``
    cancels catastrophically here: measured, it returns a zero or negative posterior variance (standard deviations
    100 % wrong) where the Joseph form stays within 1e-5 of float64."""
    A = np.array([[0.9999, 0.01, 0.0], [0.0, 0.999, 0.01], [0.0, 0.0, 0.99]])
    C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    Q = np.diag([1e-2, 1e-6, 1e-2])
    R = 1e-8 * np.array([[1.0, 0.3], [0.3, 1.0]])
    return A, C, Q, R


def test_float32_covariances_stay_symmetric_psd_over_1e4_steps():
    T = 10_000
    A, C, Q, R = _stiff_case(np.float64)
    rng = np.random.default_rng(42)
    noise = rng.normal(size=(T, 3)) @ np.linalg.cholesky(Q).T
    xs = np.zeros((T, 3))
    for k in range(1, T):
        xs[k] = A @ xs[k - 1] + noise[k]
    ys = xs @ C.T + rng.normal(size=(T, 2)) @ np.linalg.cholesky(R).T

    def model(dtype):
        A_, C_, Q_, R_, m0, P0 = (jnp.asarray(x, dtype) for x in (A, C, Q, R, np.zeros(3), np.eye(3)))
        return tj.LinearGaussianSSM(A_, None, C_, None, Q_, R_, m0, P0)

    r32 = kalman_filter(model(jnp.float32), ys.astype(np.float32))
    r64 = kalman_filter(model(jnp.float64), ys)
    assert r32.means.dtype == jnp.float32 and r32.covariances.dtype == jnp.float32
    for P32, P64 in ((r32.covariances, r64.covariances), (r32.predicted_covariances, r64.predicted_covariances)):
        P32 = np.asarray(P32)
        assert np.all(np.isfinite(P32))
        assert np.array_equal(P32, np.swapaxes(P32, 1, 2))  # exactly symmetric
        eig_min = np.linalg.eigvalsh(P32.astype(np.float64)).min(axis=1)
        scale = np.abs(P32).max(axis=(1, 2))
        assert np.all(eig_min >= -1e-7 * scale), eig_min.min()  # PSD to float32 rounding (eps = 1.2e-7)
        np.testing.assert_allclose(
            np.sqrt(np.diagonal(P32, axis1=1, axis2=2)), np.sqrt(np.diagonal(P64, axis1=1, axis2=2)), rtol=1e-3
        )
    # means agree with float64 to 5 % of the posterior standard deviation, plus the float32 resolution of the state
    # itself (16 ulps of |m|: a float32 mean cannot be more precise than its own representation)
    sd = np.sqrt(np.diagonal(np.asarray(r64.covariances), axis1=1, axis2=2))
    bound = 0.05 * sd + 16 * np.finfo(np.float32).eps * np.abs(np.asarray(r64.means))
    assert np.all(np.abs(np.asarray(r32.means, np.float64) - np.asarray(r64.means)) <= bound)
    np.testing.assert_allclose(r32.log_likelihood, r64.log_likelihood, rtol=1e-4)


def test_no_recompilation_on_a_second_call(monkeypatch):
    """Every public entry point traces once per shape: a second call with new values (data and model parameters)
    does not trace again."""
    model = random_lgssm(10)
    model2 = eqx.tree_at(lambda m: m.A, model, 0.5 * model.A)
    ys, us = random_data(10, model, T=7, missing=True)
    ys2, us2 = random_data(11, model, T=7, missing=True)

    def run_all(model, ys, us):
        f = kalman_filter(model, ys, us)
        rts_smoother(model, f)
        parallel_rts_smoother(model, parallel_kalman_filter(model, ys, us))
        state, _ = kf_update(model, kf_init(model), ys[0], us[0])
        for k in range(1, 3):
            state, _ = kf_step(model, state, ys[k], us[k])
        kf_predict(model, state, state.t + 2.0)

    run_all(model, ys, us)
    traces = []
    for module, name in (
        (kalman_module, "_update_moments"),
        (kalman_module, "_predict_moments"),
        (kalman_module, "_smoother_gain"),
        (parallel_module, "_filter_element"),
        (parallel_module, "_smoother_element"),
    ):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: (traces.append(_n), _f(*a, **k))[1])
    run_all(model2, ys2, us2)
    assert traces == []
    kalman_filter(model, ys[:5], us[:5])  # a new shape does trace (the counter works)
    assert "_update_moments" in traces


class _Decay(tj.AbstractDiscreteDynamics):
    def transition(self, t, x, u):
        return 0.9 * x


def test_bad_input_raises_clear_errors():
    model = random_lgssm(12)
    ys, us = random_data(12, model, T=7)
    with pytest.raises(ValueError, match="`ys`"):
        kalman_filter(model, ys[:, :1], us)
    with pytest.raises(ValueError, match="`ys`"):
        kalman_filter(model, ys[None], us)
    with pytest.raises(ValueError, match="`ys`"):
        kalman_filter(model, np.where(np.arange(7)[:, None] == 3, np.inf, ys), us)
    with pytest.raises(ValueError, match="`ts`"):
        kalman_filter(model, ys, us, ts=np.array([0.0, 1.0, 3.0, 2.0, 4.0, 5.0, 6.0]))
    with pytest.raises(ValueError, match="`us`"):
        kalman_filter(model, ys)
    with pytest.raises(ValueError, match="`us`"):
        rts_smoother(model, ys, np.ones((7, 2)))
    with pytest.raises(ValueError, match="`mean`"):
        kalman_filter(model, ys, us, mean=np.zeros(4), cov=np.eye(4))
    with pytest.raises(ValueError, match="`cov`"):
        kalman_filter(model, ys, us, cov=-np.eye(3))
    with pytest.raises(ValueError, match="`ts`"):
        rts_smoother(model, kalman_filter(model, ys, us), ts=np.arange(7.0))
    state = kf_init(model)
    with pytest.raises(ValueError, match="`y`"):
        kf_update(model, state, np.zeros(3))
    with pytest.raises(ValueError, match="`u`"):
        kf_update(model, state, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="`t`"):
        kf_predict(model, kf_predict(model, state, 2.0), 1.0)
    with pytest.raises(ValueError, match="`state`"):
        kf_step(model, (state.mean, state.cov), np.zeros(2))
    twin = tj.StateSpaceModel(
        _Decay(), tj.GaussianObservation(lambda t, x, u: x, np.eye(1)), tj.Gaussian(np.zeros(1), np.eye(1)), dt=1.0
    )
    with pytest.raises(ValueError, match="`model`"):
        parallel_kalman_filter(twin, np.zeros((4, 1)))
    with pytest.raises(ValueError, match="`model`"):
        kalman_filter(twin, np.zeros((4, 1)), parallel=True)
    with pytest.raises(ValueError, match="`model`"):
        kalman_filter(_Decay(), np.zeros((4, 1)))
    assert isinstance(kalman_filter(twin, np.zeros((4, 1))), GaussianFilterResult)
