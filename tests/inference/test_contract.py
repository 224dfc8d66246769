"""The contract every filter passes: the same suite, parametrised over all batch drivers.

On one linear-Gaussian twin with a control input and missing data (single channels and a whole row):

- the Kalman filter's log-likelihood equals the dense joint-Gaussian log-density of the observed entries (truth);
- every filter's means equal the Kalman filter's — to rounding for the Gaussian filters (KF, parallel KF, EKF, UKF),
  within Monte-Carlo error for the consistent ensemble and particle filters (stochastic EnKF, ETKF, PF; the DEnKF's
  analysis covariance ``(I - KH)P + KHPHᵀKᵀ/4`` is deliberately inflated, so it is checked in ``test_ensemble.py``);
  the bound scales as ``1/√N``, and the same check with a tenth of the members is looser, so it is not vacuous;
- the log-likelihood likewise;
- same key, same result; a second call with new data of the same shape does not recompile;
- bad input is a ``ValueError`` naming the argument.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import twinjax as tj
from twinjax import inference as inf


def _model():
    rng = np.random.default_rng(7)
    A = np.array([[0.95, 0.1], [-0.1, 0.9]])
    return tj.LinearGaussianSSM(
        A=A,
        B=np.array([[0.0], [0.5]]),
        C=np.array([[1.0, 0.0], [0.5, 1.0]]),
        D=np.array([[0.1], [0.0]]),
        Q=np.diag([0.02, 0.05]),
        R=np.diag([0.1, 0.2]),
        m0=rng.normal(size=2),
        P0=np.eye(2),
    )


T = 20


def _data(seed=0):
    model = _model()
    ts = jnp.arange(T, dtype=jnp.float64)
    us = jnp.sin(0.3 * ts)[:, None]
    path = tj.simulate(model, None, ts, controls=us, key=jax.random.key(seed))
    ys = path.ys.at[3, 0].set(jnp.nan).at[7].set(jnp.nan).at[12, 1].set(jnp.nan)
    return model, ys, us, path


GAUSSIAN = {
    "kf": inf.kalman_filter,
    "parallel_kf": inf.parallel_kalman_filter,
    "ekf": inf.extended_kalman_filter,
    "ukf": inf.unscented_kalman_filter,
}
N_ENS = 2000
STOCHASTIC = {
    "enkf": functools.partial(inf.ensemble_kalman_filter, method="stochastic"),
    "etkf": functools.partial(inf.ensemble_kalman_filter, method="etkf"),
    "denkf": functools.partial(inf.ensemble_kalman_filter, method="denkf"),
    "pf": None,
}


def _run(name, model, ys, us, n=N_ENS, key=jax.random.key(1)):
    if name in GAUSSIAN:
        return GAUSSIAN[name](model, ys, us)
    if name == "pf":
        return inf.particle_filter(model, ys, us, particles=n, key=key)
    return STOCHASTIC[name](model, ys, us, members=n, key=key)


def test_kalman_log_likelihood_is_the_dense_gaussian_marginal():
    model, ys, us, _ = _data()
    A, B, C, D, Q, R = (np.asarray(getattr(model, k)) for k in "ABCDQR")
    n, p = A.shape[0], C.shape[0]
    # x_k = A^k x0 + Σ A^{k-1-j}(B u_j + w_j): stack means and the joint covariance explicitly
    mean_x = np.zeros((T, n))
    mean_x[0] = np.asarray(model.m0)
    for k in range(1, T):
        mean_x[k] = A @ mean_x[k - 1] + B @ np.asarray(us[k - 1])
    cov_x = np.zeros((T, T, n, n))
    P = [np.asarray(model.P0)]
    for k in range(1, T):
        P.append(A @ P[-1] @ A.T + Q)
    for i in range(T):
        for j in range(T):
            lo, hi = min(i, j), max(i, j)
            c = np.linalg.matrix_power(A, hi - lo) @ P[lo]
            cov_x[i, j] = c if i >= j else c.T
    mean_y = mean_x @ C.T + np.asarray(us) @ D.T
    cov_y = np.einsum("ab,ijbc,dc->iajd", C, cov_x, C).reshape(T * p, T * p) + np.kron(np.eye(T), R)
    y = np.asarray(ys).ravel()
    obs = ~np.isnan(y)
    dense = scipy.stats.multivariate_normal(mean_y.ravel()[obs], cov_y[np.ix_(obs, obs)]).logpdf(y[obs])
    np.testing.assert_allclose(float(inf.kalman_filter(model, ys, us).log_likelihood), dense, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(GAUSSIAN))
def test_gaussian_filters_equal_the_kalman_filter(name):
    model, ys, us, _ = _data()
    ref = inf.kalman_filter(model, ys, us)
    out = _run(name, model, ys, us)
    np.testing.assert_allclose(out.means, ref.means, atol=1e-9)
    np.testing.assert_allclose(out.covariances, ref.covariances, atol=1e-9)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=1e-9)


def _normalised_rms_error(out, ref):
    sd = jnp.sqrt(jnp.diagonal(ref.covariances, axis1=1, axis2=2))
    return float(jnp.sqrt(jnp.mean(((out.means - ref.means) / sd) ** 2)))


CONSISTENT = sorted(set(STOCHASTIC) - {"denkf"})  # DEnKF's analysis covariance is biased by design (Sakov & Oke 2008)


@pytest.mark.parametrize("name", CONSISTENT)
def test_sampling_filters_converge_to_the_kalman_filter(name):
    """Monte-Carlo bound: the filtered mean's error, in posterior standard deviations, is O(1/√N); with N members
    its RMS over time and components stays below 4/√N (a generous multiple of the ~1–2/√N these estimators show),
    and with N/10 members the error is larger (the bound discriminates)."""
    model, ys, us, _ = _data()
    ref = inf.kalman_filter(model, ys, us)
    big = _run(name, model, ys, us, n=N_ENS)
    small = _run(name, model, ys, us, n=N_ENS // 10)
    err_big, err_small = _normalised_rms_error(big, ref), _normalised_rms_error(small, ref)
    assert err_big < 4 / np.sqrt(N_ENS), (err_big, 4 / np.sqrt(N_ENS))
    assert err_small > err_big
    # log-likelihood: per-step estimates carry O(1/√N) relative error; over T steps the total error is O(√(T/N))
    assert abs(float(big.log_likelihood - ref.log_likelihood)) < 4 * np.sqrt(T / N_ENS), (
        float(big.log_likelihood),
        float(ref.log_likelihood),
    )


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_same_key_same_result(name):
    model, ys, us, _ = _data()
    a = _run(name, model, ys, us, n=50, key=jax.random.key(3))
    b = _run(name, model, ys, us, n=50, key=jax.random.key(3))
    c = _run(name, model, ys, us, n=50, key=jax.random.key(4))
    np.testing.assert_array_equal(a.means, b.means)
    assert not np.array_equal(np.asarray(a.means), np.asarray(c.means))


@pytest.mark.parametrize("name", sorted(GAUSSIAN) + sorted(STOCHASTIC))
def test_bad_input_names_the_argument(name):
    model, ys, us, _ = _data()
    with pytest.raises(ValueError, match="ys"):
        _run(name, model, jnp.full((T, 2), jnp.inf), us, n=8)
    with pytest.raises(ValueError, match="us"):
        _run(name, model, ys, None, n=8)
    with pytest.raises(ValueError, match="us"):
        _run(name, model, ys, us[:5], n=8)
