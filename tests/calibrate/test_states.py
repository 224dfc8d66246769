"""The joint posterior over parameters and states (``twinjax.calibrate.states``) against exact Kalman answers.

On linear-Gaussian twins the Markov-Gaussian guide family contains the exact posterior and the cubature ELBO is the
exact ELBO, so the optimum *is* the posterior: the state marginals equal the RTS smoother's, the ELBO equals the
Kalman filter's log marginal likelihood, and an unknown input gain gets the exact posterior of the state-augmented
Kalman smoother (and of a dense grid of the KF likelihood × prior) — to the optimiser's tolerance, not Monte Carlo.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

import twinjax as tj
from twinjax.calibrate import states
from twinjax.inference import kalman_filter, rts_smoother

from ..helpers import assert_tree_allclose


def test_state_guide_is_the_rts_smoother_with_known_parameters():
    """Parameters known, started far away (every state at the prior, no coupling): after 300 L-BFGS iterations the
    guide's marginal means, covariances and lag-one cross-covariances equal the RTS smoother's (gradient norm ~1e-7,
    errors ~1e-9), and the ELBO equals log p(y) of the Kalman filter (the KL to the posterior is zero)."""
    T = 30
    model = tj.LinearGaussianSSM(
        A=jnp.array([[0.95, 0.1], [-0.1, 0.9]]), B=None, C=jnp.array([[1.0, 0.0]]), D=None,
        Q=jnp.array([[0.05, 0.01], [0.01, 0.03]]), R=jnp.array([[0.1]]), m0=jnp.array([1.0, 0.0]),
        P0=0.5 * jnp.eye(2),
    )  # fmt: skip
    ys = np.array(tj.simulate(model, None, jnp.arange(T), key=jax.random.key(0)).ys)
    ys[5] = np.nan  # a missing measurement: a predict-only step for the smoother
    smoothed = rts_smoother(model, ys)
    post = states.structured_vi(model, ys, init="prior", steps=300)
    assert float(post.grad_norm) < 1e-5
    assert_tree_allclose(post.means, smoothed.means, rtol=0, atol=1e-7)
    assert_tree_allclose(post.covariances, smoothed.covariances, rtol=0, atol=1e-7)
    assert_tree_allclose(post.cross_covariances, smoothed.cross_covariances, rtol=0, atol=1e-7)
    assert_tree_allclose(post.elbo, smoothed.log_likelihood, rtol=1e-10)
    # the ELBO rose from the starting guide to log p(y), never above it
    elbos = np.asarray(post.elbos)
    assert elbos[0] < elbos[-1] and np.all(elbos <= float(smoothed.log_likelihood) + 1e-9)
    assert post.z_mean.shape == (0,) and post.z_cov.shape == (0, 0)


@pytest.fixture(scope="module")
def gain_problem():
    """``x_{t+1} = 0.8 x_t + φ u_t + w``, ``u = 1``, ``y = x + v``, ``φ ~ N(0, 1)`` unknown."""
    T = 40
    model = tj.LinearGaussianSSM(A=[[0.8]], B=[[0.3]], C=[[1.0]], D=None, Q=[[0.05]], R=[[0.1]], m0=[0.0], P0=[[0.5]])
    us = np.ones((T, 1))
    ys = np.array(tj.simulate(model, None, jnp.arange(T), controls=us, key=jax.random.key(1)).ys)
    ys[[5, 17]] = np.nan
    spec = tj.Params({"B": tj.real(dist.Normal(0.0, 1.0))})
    post = states.structured_vi(model, ys, us, spec=spec, init="prior", steps=600)
    # exact: φ as a constant second state, x_{t+1} = 0.8 x_t + φ (u = 1)
    augmented = tj.LinearGaussianSSM(
        A=[[0.8, 1.0], [0.0, 1.0]], B=None, C=[[1.0, 0.0]], D=None, Q=jnp.diag(jnp.array([0.05, 0.0])), R=[[0.1]],
        m0=[0.0, 0.0], P0=jnp.diag(jnp.array([0.5, 1.0])),
    )  # fmt: skip
    return model, ys, us, post, rts_smoother(augmented, ys)


def test_unknown_gain_posterior_is_exact(gain_problem):
    """φ unknown: ``q(φ)`` equals the exact posterior — the state-augmented Kalman smoother's marginal of φ, and the
    dense grid of ``exp(KF log-likelihood(φ)) × prior`` — and the state marginals of ``q`` (φ integrated out) and its
    ELBO equal the augmented smoother's and ``log p(y)`` (φ marginalised)."""
    model, ys, us, post, exact = gain_problem
    assert float(post.grad_norm) < 1e-4
    assert_tree_allclose(post.z_mean[0], exact.means[0, 1], rtol=1e-6)
    assert_tree_allclose(post.z_cov[0, 0], exact.covariances[0, 1, 1], rtol=1e-5)
    assert_tree_allclose(post.means[:, 0], exact.means[:, 0], rtol=0, atol=1e-6)
    assert_tree_allclose(post.covariances[:, 0, 0], exact.covariances[:, 0, 0], rtol=0, atol=1e-6)
    assert_tree_allclose(post.elbo, exact.log_likelihood, rtol=1e-9)

    grid = np.linspace(0.0, 0.7, 4001)

    @jax.jit
    def loglik(phi):
        twin = tj.LinearGaussianSSM(
            A=model.A, B=phi.reshape(1, 1), C=model.C, D=None, Q=model.Q, R=model.R, m0=model.m0, P0=model.P0
        )
        return kalman_filter(twin, ys, us).log_likelihood

    logp = np.asarray(jax.vmap(loglik)(jnp.asarray(grid))) + stats.norm.logpdf(grid)
    w = np.exp(logp - logp.max())
    w /= np.trapezoid(w, grid)
    mean = np.trapezoid(w * grid, grid)
    var = np.trapezoid(w * (grid - mean) ** 2, grid)
    assert abs(float(post.z_mean[0]) - mean) < 1e-6
    assert abs(float(post.z_cov[0, 0]) - var) / var < 1e-4


def test_joint_draws_have_the_guides_moments(gain_problem):
    """``sample`` draws ``(φ, x_{0:T})`` ancestrally from ``q``: their means and variances agree with the analytic
    marginals within 4 standard errors (mean: σ/√n; variance: σ²√(2/(n-1)))."""
    _, _, _, post, _ = gain_problem
    n = 4000
    phi, xs = post.sample(jax.random.key(2), n)
    assert phi.shape == (n, 1) and xs.shape == (n, 40, 1)
    sd_phi = np.sqrt(float(post.z_cov[0, 0]))
    assert abs(float(phi.mean()) - float(post.z_mean[0])) < 4 * sd_phi / np.sqrt(n)
    sd_x = np.sqrt(np.asarray(post.covariances[:, 0, 0]))
    assert np.all(np.abs(np.asarray(xs[:, :, 0].mean(0)) - np.asarray(post.means[:, 0])) < 4 * sd_x / np.sqrt(n))
    var_x = np.asarray(xs[:, :, 0].var(0, ddof=1))
    assert np.all(np.abs(var_x - sd_x**2) < 4 * sd_x**2 * np.sqrt(2 / (n - 1)))


def test_bad_input_raises():
    model = tj.LinearGaussianSSM(A=[[0.8]], B=None, C=[[1.0]], D=None, Q=[[0.0]], R=[[0.1]], m0=[0.0], P0=[[0.5]])
    ys = np.zeros((5, 1))
    with pytest.raises(ValueError, match="needs process noise"):
        states.structured_vi(model, ys)
    noisy = tj.LinearGaussianSSM(A=[[0.8]], B=None, C=[[1.0]], D=None, Q=[[0.1]], R=[[0.1]], m0=[0.0], P0=[[0.5]])
    with pytest.raises(ValueError, match="`init` must be"):
        states.structured_vi(noisy, ys, init="zeros")
    with pytest.raises(ValueError, match="`steps` must be"):
        states.structured_vi(noisy, ys, steps=0)
    with pytest.raises(ValueError, match="`ys` must have shape"):
        states.structured_vi(noisy, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="no prior"):
        states.structured_vi(noisy, ys, spec=tj.Params({"A": tj.real()}))
