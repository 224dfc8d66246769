"""Counterfactuals of dynamical twins (abduction by smoothing, action by do, prediction with the same noise) against
closed forms (linear-Gaussian response), the simulated true counterfactual (same noise realisation), the library's RTS
smoother, Monte-Carlo error bounds for the posterior draws and finite differences for gradients."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from physics.hvac import Building2R2C
from twinjax.causal.dynamic import CounterfactualResult, rollout_with_noise, twin_counterfactual
from twinjax.causal.intervention import do
from twinjax.model.params import set_path

A = jnp.array([[0.9, 0.2], [-0.1, 0.8]])
B = jnp.array([[0.5], [1.0]])
T = 40


def _lgssm():
    C, Q, R = jnp.array([[1.0, 0.0]]), 0.1 * jnp.eye(2), 0.2 * jnp.eye(1)
    return tj.LinearGaussianSSM(A=A, B=B, C=C, D=None, Q=Q, R=R, m0=jnp.zeros(2), P0=jnp.eye(2))


@pytest.fixture(scope="module")
def linear_path():
    lg = _lgssm()
    ts = jnp.arange(T, dtype=jnp.float64)
    us = jnp.sin(0.3 * ts)[:, None]
    return lg, tj.simulate(lg, None, ts, controls=us, key=jax.random.key(1))


def _response(du):
    """Deterministic response ``Σ_{j<k} A^{k-1-j} B du_j`` of the linear system from rest."""

    def step(x, d):
        x = A @ x + B @ d
        return x, x

    _, xs = jax.lax.scan(step, jnp.zeros(2), du[:-1])
    return jnp.concatenate([jnp.zeros((1, 2)), xs])


@pytest.mark.parametrize("smoother", ["kalman", "ekf"])
def test_linear_gaussian_counterfactual_is_smoothed_mean_plus_response(linear_path, smoother):
    lg, path = linear_path
    us_cf = path.us + jnp.cos(0.1 * path.ts)[:, None]
    cf = twin_counterfactual(lg, path, do(controls=us_cf), smoother=smoother)
    assert isinstance(cf, CounterfactualResult)
    smoothed = tj.inference.rts_smoother(lg, path.ys, path.us, path.ts)
    np.testing.assert_allclose(cf.factual_states, smoothed.means, atol=1e-12)
    np.testing.assert_allclose(cf.factual_covariances, smoothed.covariances, atol=1e-12)
    np.testing.assert_allclose(cf.states, smoothed.means + _response(us_cf - path.us), atol=1e-12)
    np.testing.assert_allclose(cf.outputs, cf.states[:, :1], atol=1e-12)
    np.testing.assert_allclose(cf.controls, us_cf)
    assert int(cf.status) == 0


def test_identity_intervention_reproduces_the_smoothed_path(linear_path):
    lg, path = linear_path
    cf = twin_counterfactual(lg, (path.ts, path.ys, path.us), do(), smoother="kalman")
    np.testing.assert_allclose(cf.states, cf.factual_states, atol=1e-12)
    np.testing.assert_allclose(cf.outputs, cf.factual_outputs, atol=1e-12)


def _building_twin(R):
    return tj.StateSpaceModel(
        Building2R2C(),
        tj.GaussianObservation(lambda t, x, u: x, R * jnp.eye(2)),
        tj.Gaussian(jnp.array([20.0, 15.0]), jnp.diag(jnp.array([1.0, 4.0]))),
        900.0,
        process_noise=jnp.array([0.1, 0.02]) ** 2,
        control_dim=3,
        discretisation=tj.Discretisation(stepsize_controller=diffrax.ConstantStepSize(), substeps=3),
    )


def _building_inputs(n, heat):
    ts = jnp.arange(n, dtype=jnp.float64) * 900.0
    return ts, jnp.stack([heat, 5.0 + 3.0 * jnp.sin(ts / 86400.0 * 2 * jnp.pi), jnp.full(n, 300.0)], axis=-1)


def test_noise_free_full_state_recovers_the_simulated_counterfactual():
    """Noise-free measurements of the full state: the abducted noise is the true realisation and the counterfactual
    equals the true building re-simulated (``tj.simulate``, same key, hence same noise) under the new heating."""
    twin = _building_twin(R=0.0)
    n = 24
    ts, us = _building_inputs(n, jnp.full(n, 2000.0))
    _, us_cf = _building_inputs(n, 1000.0 + 1000.0 * (jnp.arange(n) % 2))
    key = jax.random.key(3)
    factual = tj.simulate(twin, None, ts, controls=us, key=key)
    truth = tj.simulate(twin, None, ts, controls=us_cf, key=key)
    cf = twin_counterfactual(twin, factual, do(controls=us_cf), smoother="ekf")
    true_noise = factual.xs[1:] - jax.vmap(twin.transition)(ts[:-1], ts[1:], factual.xs[:-1], us[:-1])
    np.testing.assert_allclose(cf.factual_states, factual.xs, atol=1e-9)
    np.testing.assert_allclose(cf.noise, true_noise, atol=1e-9)
    np.testing.assert_allclose(cf.states, truth.xs, atol=1e-9)
    assert float(jnp.max(jnp.abs(truth.xs - factual.xs))) > 0.5  # the intervention does change the path


def test_posterior_draws_match_the_smoother_moments(linear_path):
    """FFBS draws of the path: means within 4.5 SE of the smoothed means, variances and lag-one cross-covariances
    within 5 SE of the RTS smoother's (normal-theory standard errors of sample moments)."""
    lg, path = linear_path
    S = 4000
    cf = twin_counterfactual(lg, path, do(), smoother="kalman", key=jax.random.key(7), n_samples=S)
    smoothed = tj.inference.rts_smoother(lg, path.ys, path.us, path.ts)
    draws = cf.sample_states  # identity intervention: the counterfactual draws are the posterior path draws
    assert draws.shape == (S, T, 2)
    var = jnp.diagonal(smoothed.covariances, axis1=1, axis2=2)
    z_mean = (draws.mean(0) - smoothed.means) / jnp.sqrt(var / S)
    assert float(jnp.max(jnp.abs(z_mean))) < 4.5
    z_var = (draws.var(0, ddof=1) - var) / (var * jnp.sqrt(2.0 / (S - 1)))
    assert float(jnp.max(jnp.abs(z_var))) < 5.0
    d = draws - draws.mean(0)
    cross = jnp.einsum("stn,stm->tnm", d[:, 1:], d[:, :-1]) / (S - 1)
    se = jnp.sqrt((var[1:, :, None] * var[:-1, None, :] + smoothed.cross_covariances**2) / S)
    assert float(jnp.max(jnp.abs(cross - smoothed.cross_covariances) / se)) < 5.0
    # E[w_k | y] = m_{k+1} - A m_k - B u_k (the point abduction); the posterior variance of w_k is at most its prior
    # variance 0.1, so 5 SE of the draws' mean is at most 5 sqrt(0.1 / S)
    np.testing.assert_allclose(cf.sample_noise.mean(0), cf.noise, atol=5 * float(jnp.sqrt(0.1 / S)))


def test_sampled_counterfactuals_of_a_linear_twin_shift_by_the_response(linear_path):
    lg, path = linear_path
    us_cf = path.us + 1.0
    key = jax.random.key(2)
    base = twin_counterfactual(lg, path, do(), smoother="kalman", key=key, n_samples=16)
    cf = twin_counterfactual(lg, path, do(controls=us_cf), smoother="kalman", key=key, n_samples=16)
    np.testing.assert_allclose(cf.sample_states, base.sample_states + _response(us_cf - path.us), atol=1e-12)
    again = twin_counterfactual(lg, path, do(controls=us_cf), smoother="kalman", key=key, n_samples=16)
    np.testing.assert_array_equal(again.sample_states, cf.sample_states)


@pytest.mark.slow
def test_parameter_intervention_and_gradient_against_finite_differences():
    """do(params=...) on an ODE twin: the counterfactual equals a rollout of the modified twin with the abducted
    noise, and d(sum of counterfactual indoor temperatures)/d(R_wall_out) matches central differences."""
    twin = _building_twin(R=0.05)
    n = 12
    ts, us = _building_inputs(n, jnp.full(n, 2000.0))
    factual = tj.simulate(twin, None, ts, controls=us, key=jax.random.key(5))

    def total(r):
        cf = twin_counterfactual(twin, factual, do(params={"dynamics.r_wall_out_K_W": r}))
        return jnp.sum(cf.states[:, 0]), cf

    r0 = jnp.asarray(6.0e-3)
    value, cf = total(r0)
    modified = set_path(twin, "dynamics.r_wall_out_K_W", r0)
    expected, status = rollout_with_noise(modified, cf.factual_states[0], ts, us, cf.noise)
    np.testing.assert_allclose(cf.states, expected, atol=1e-12)
    assert int(status) == 0 and float(jnp.max(jnp.abs(cf.states - cf.factual_states))) > 0.01
    grad = jax.grad(lambda r: total(r)[0])(r0)
    h = 1e-7
    fd = (total(r0 + h)[0] - total(r0 - h)[0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_vmap_over_interventions_matches_a_loop(linear_path):
    lg, path = linear_path
    shifts = jnp.array([-1.0, 0.5, 2.0])
    batched = jax.vmap(lambda s: twin_counterfactual(lg, path, do(controls=path.us + s), smoother="kalman").states)(
        shifts
    )
    for i, s in enumerate(shifts):
        single = twin_counterfactual(lg, path, do(controls=path.us + s), smoother="kalman").states
        np.testing.assert_allclose(batched[i], single, atol=1e-12)


def test_bad_inputs_raise_naming_the_argument(linear_path):
    lg, path = linear_path
    with pytest.raises(TypeError, match="intervention"):
        twin_counterfactual(lg, path, {"controls": path.us})
    with pytest.raises(ValueError, match="SCM variables"):
        twin_counterfactual(lg, path, do(X=1.0))
    with pytest.raises(ValueError, match="smoother"):
        twin_counterfactual(lg, path, do(), smoother="particle")
    with pytest.raises(ValueError, match="do\\(controls"):
        twin_counterfactual(lg, path, do(controls=jnp.zeros((T, 3))))
    with pytest.raises(ValueError, match="nope"):
        twin_counterfactual(lg, path, do(params={"nope": 1.0}))
    with pytest.raises(ValueError, match="key"):
        twin_counterfactual(lg, path, do(), n_samples=3)
    with pytest.raises(ValueError, match="n_samples"):
        twin_counterfactual(lg, path, do(), n_samples=0, key=jax.random.key(0))
    with pytest.raises(TypeError, match="evidence"):
        twin_counterfactual(lg, path.ys, do())
    noiseless = tj.StateSpaceModel(Building2R2C(), tj.GaussianObservation(lambda t, x, u: x, jnp.eye(2)), None, 900.0)
    with pytest.raises(ValueError, match="process_noise"):
        twin_counterfactual(noiseless, (jnp.arange(3.0), jnp.zeros((3, 2)), jnp.zeros((3, 3))), do())
