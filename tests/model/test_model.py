"""Model layer: sensors with missing data, initial distributions, linear-Gaussian twin, parameter specs, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.stats

import twinjax as tj
from twinjax.model.observation import masked_gaussian_log_prob

from ..helpers import assert_tree_allclose


class Decay(tj.AbstractDynamics):
    rate_per_s: jax.Array
    gain: jax.Array

    def vector_field(self, t, x, u):
        return -self.rate_per_s * x + self.gain * u[0]


def _random_cov(key, n):
    a = jax.random.normal(key, (n, n))
    return a @ a.T + n * jnp.eye(n)


@pytest.mark.strict
def test_masked_log_prob_equals_marginal_of_observed_channels(key):
    k1, k2, k3 = jax.random.split(key, 3)
    cov = _random_cov(k1, 4)
    mean = jax.random.normal(k2, (4,))
    y = jax.random.normal(k3, (4,))
    mask = np.array([True, False, True, True])
    y_missing = jnp.where(jnp.asarray(mask), y, jnp.nan)
    got = masked_gaussian_log_prob(y_missing, mean, cov)
    keep = np.nonzero(mask)[0]
    want = scipy.stats.multivariate_normal(np.asarray(mean)[keep], np.asarray(cov)[np.ix_(keep, keep)]).logpdf(
        np.asarray(y)[keep]
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert masked_gaussian_log_prob(jnp.full(4, jnp.nan), mean, cov) == 0.0


def test_masked_log_prob_has_finite_gradients_with_nan_data(key):
    cov = _random_cov(key, 3)
    y = jnp.array([0.3, jnp.nan, -1.0])
    g = jax.grad(lambda m: masked_gaussian_log_prob(y, m, cov))(jnp.zeros(3))
    assert np.all(np.isfinite(g))
    assert g[1] == 0.0  # a missing channel carries no information


def test_gaussian_observation_sample_statistics(key):
    cov = jnp.array([[0.5, 0.2], [0.2, 0.3]])
    sensor = tj.GaussianObservation(lambda t, x, u: x * 2.0, cov)
    x = jnp.array([1.0, -1.0])
    n = 20_000
    ys = jax.vmap(lambda k: sensor.sample(k, 0.0, x, jnp.zeros(0)))(jax.random.split(key, n))
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(ys.mean(0) - np.array([2.0, -2.0])) < 4 * se)
    emp = np.cov(np.asarray(ys).T)
    # standard error of a sample covariance entry: sqrt((s_ij^2 + s_ii s_jj) / n)
    se_cov = np.sqrt((np.asarray(cov) ** 2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.all(np.abs(emp - np.asarray(cov)) < 4 * se_cov)


def test_linear_gaussian_ssm_exact_transition_and_noise(key):
    A = jnp.array([[1.0, 0.1], [0.0, 0.9]])
    B = jnp.array([[0.0], [0.1]])
    lg = tj.LinearGaussianSSM(A, B, jnp.eye(1, 2), None, 0.01 * jnp.eye(2), 0.1 * jnp.eye(1), jnp.zeros(2), jnp.eye(2))
    x = jnp.array([1.0, 2.0])
    u = jnp.array([3.0])
    assert_tree_allclose(lg.transition(0.0, 1.0, x, u), A @ x + B @ u)
    assert_tree_allclose(lg.process_noise_cov(0.0, 1.0, x, u), 0.01 * jnp.eye(2))
    assert lg.control_dim == 1
    assert lg.observation.mean(0.0, x, u).shape == (1,)


def test_continuous_transition_integrates_actual_interval():
    """The one-interval map solves the ODE over t1 - t0 (irregular intervals allowed): exact exp decay."""
    dyn = Decay(jnp.asarray(0.7), jnp.asarray(0.0))
    twin = tj.StateSpaceModel(dyn, dt=0.1, control_dim=1)
    x = jnp.array([2.0])
    for h in (0.1, 0.37):
        got = twin.transition(1.0, 1.0 + h, x, jnp.zeros(1))
        np.testing.assert_allclose(got, 2.0 * np.exp(-0.7 * h), rtol=1e-7)


def test_process_noise_scales_with_interval_and_sde_covariance():
    dyn = Decay(jnp.asarray(0.7), jnp.asarray(0.0))
    twin = tj.StateSpaceModel(dyn, dt=0.1, process_noise=jnp.eye(1) * 0.04, control_dim=1)
    np.testing.assert_allclose(twin.process_noise_cov(0.0, 0.2, jnp.zeros(1), jnp.zeros(1)), [[0.08]])

    class OU(tj.AbstractSDEDynamics):
        def vector_field(self, t, x, u):
            return -x

        def diffusion(self, t, x, u):
            return 0.5 * jnp.eye(1)

    sde = tj.StateSpaceModel(OU(), dt=0.1)
    np.testing.assert_allclose(sde.process_noise_cov(0.0, 0.2, jnp.zeros(1), jnp.zeros(0)), [[0.25 * 0.2]])


def test_params_roundtrip_and_priors(key):
    twin = tj.StateSpaceModel(Decay(jnp.asarray(0.7), jnp.asarray(2.0)), dt=0.1, control_dim=1)
    spec = tj.Params(
        {
            "dynamics.rate_per_s": tj.positive(prior=dist.LogNormal(0.0, 0.5)),
            "dynamics.gain": tj.interval(0.0, 5.0),
        }
    )
    assert spec.size(twin) == 2 and spec.labels(twin) == ["dynamics.rate_per_s", "dynamics.gain"]
    np.testing.assert_allclose(spec.values(twin), [0.7, 2.0])
    z = spec.to_unconstrained(twin)
    np.testing.assert_allclose(z, [np.log(0.7), np.log(2.0 / 3.0)], rtol=1e-12)  # logit(2/5)
    back = spec.from_unconstrained(twin, z)
    assert_tree_allclose(spec.values(back), spec.values(twin))
    draws = spec.sample(key, twin, 4000)
    assert draws.shape == (4000, 2)
    assert np.all(draws[:, 0] > 0) and np.all((draws[:, 1] > 0) & (draws[:, 1] < 5))
    # The unconstrained density is the prior pushed through the bijection: compare with numpyro's own.
    z = jnp.array([0.3, -0.2])
    phi = spec.constrain(twin, z)
    want = (
        dist.LogNormal(0.0, 0.5).log_prob(phi[0])
        + z[0]
        + dist.Uniform(0.0, 5.0).log_prob(phi[1])
        + jnp.log(5.0 * jax.nn.sigmoid(z[1]) * (1 - jax.nn.sigmoid(z[1])))
    )
    np.testing.assert_allclose(spec.log_prior_unconstrained(twin, z), want, rtol=1e-12)
    assert spec.log_prior(twin, jnp.array([-1.0, 1.0])) == -np.inf


def test_params_errors_name_the_problem():
    twin = tj.StateSpaceModel(Decay(jnp.asarray(0.7), jnp.asarray(2.0)), dt=0.1, control_dim=1)
    with pytest.raises(ValueError, match="no 'rate'"):
        tj.Params({"dynamics.rate": tj.positive()}).values(twin)
    with pytest.raises(ValueError, match="no prior"):
        tj.Params({"dynamics.rate_per_s": tj.positive()}).sample(jax.random.key(0), twin)
    with pytest.raises(ValueError, match="high > low"):
        tj.interval(1.0, 0.0)


def test_grad_through_parameters_as_arrays():
    class Spring(tj.AbstractDynamics):
        k: float = 2.0

        def vector_field(self, t, x, u):
            return jnp.stack([x[1], -self.k * x[0]])

    m = tj.parameters_as_arrays(Spring())
    g = eqx.filter_grad(lambda d: d.vector_field(0.0, jnp.array([1.0, 0.0]), None)[1])(m)
    assert g.k == -1.0


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: tj.Gaussian(jnp.zeros(2), jnp.diag(jnp.array([1.0, -0.1]))), "negative variance"),
        (lambda: tj.Gaussian(jnp.zeros(2), jnp.eye(3)), r"cov.*shape \(2, 2\)"),
        (lambda: tj.GaussianObservation(lambda t, x, u: x, jnp.array([[1.0, 2.0], [2.0, 1.0]])), "semi-definite"),
        (lambda: tj.GaussianObservation(lambda t, x, u: x, jnp.array([[1.0, 0.5], [0.0, 1.0]])), "symmetric"),
        (lambda: tj.StateSpaceModel(Decay(jnp.asarray(1.0), jnp.asarray(1.0)), dt=-0.1), "`dt` must be a positive"),
        (lambda: tj.StateSpaceModel("not a model"), "`dynamics` must be"),
        (
            lambda: tj.LinearGaussianSSM(
                jnp.eye(2), None, jnp.eye(3), None, jnp.eye(2), jnp.eye(3), jnp.zeros(2), jnp.eye(2)
            ),
            r"`C` must have shape",
        ),
        (lambda: tj.Discretisation(substeps=0), "`substeps` must be a positive integer"),
    ],
)
def test_bad_model_input_raises_clear_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_sensor_method_of_dynamics_sees_edited_parameters(key):
    """A sensor that is a method of the dynamics (battery: V depends on R0) must follow parameter edits and draws."""

    class Cell(tj.AbstractDynamics):
        r0_ohm: jax.Array

        def vector_field(self, t, x, u):
            return -u

        def observe(self, t, x, u):
            return x - self.r0_ohm * u

    cell = Cell(jnp.asarray(0.01))
    twin = tj.StateSpaceModel(cell, tj.GaussianObservation(cell.observe, 1e-6 * jnp.eye(1)), dt=1.0, control_dim=1)
    edited = eqx.tree_at(lambda m: m.dynamics.r0_ohm, twin, jnp.asarray(0.5))
    x, u = jnp.array([4.0]), jnp.array([2.0])
    np.testing.assert_allclose(edited.observation.mean(0.0, x, u), [3.0])
    spec = tj.Params({"dynamics.r0_ohm": tj.positive(prior=dist.LogNormal(-3.0, 0.5))})
    phi = spec.sample(key, twin)
    drawn = spec.with_values(twin, phi)
    np.testing.assert_allclose(drawn.observation.mean(0.0, x, u), 4.0 - 2.0 * phi, rtol=1e-12)
    # editing the noise covariance through the property still works
    noisier = eqx.tree_at(lambda m: m.observation.cov, twin, jnp.eye(1))
    np.testing.assert_allclose(noisier.observation.cov, jnp.eye(1))
