"""Generative state estimation against the exact Gaussian-conditioning (Kalman) posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax.generative as gen
from twinjax.generative.posterior import gaussian_log_likelihood, posterior_sample

MU = jnp.array([0.5, -1.0, 2.0])
L = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.4, 0.5, 0.7]])
SIGMA = L @ L.T
R = jnp.diag(jnp.array([0.3, 0.5, 0.4]) ** 2)


class GaussianPrior(gen.AbstractGenerativeModel):
    has_log_prob = True
    mu: jax.Array
    chol: jax.Array

    def sample(self, key, n, cond=None):
        return self.mu + jax.random.normal(key, (n, self.mu.shape[0])) @ self.chol.T

    def log_prob(self, x, cond=None):
        return jax.vmap(lambda xx: jax.scipy.stats.multivariate_normal.logpdf(xx, self.mu, self.chol @ self.chol.T))(x)

    def loss(self, key, batch, cond=None):
        return -jnp.mean(self.log_prob(batch)), {}


def _kalman(y):
    mask = np.isfinite(np.asarray(y))
    h = np.eye(3)[mask]
    s = h @ SIGMA @ h.T + np.asarray(R)[np.ix_(mask, mask)]
    gain = SIGMA @ h.T @ np.linalg.inv(s)
    mean = MU + gain @ (np.asarray(y)[mask] - h @ MU)
    return mean, np.diag(SIGMA - gain @ h @ SIGMA)


@pytest.mark.parametrize(
    "y, latent",
    [(jnp.array([1.2, jnp.nan, 1.5]), False), (jnp.array([1.2, -0.3, 1.5]), True)],
    ids=["imputation-data-space", "denoising-latent-space"],
)
def test_denoising_and_imputation_equal_the_kalman_posterior(y, latent):
    kw = dict(key=jax.random.key(0), obs_cov=R, chains=4, warmup=300, samples=500)
    if latent:
        post = posterior_sample(None, y, decode=lambda z: MU + L @ z, latent_dim=3, **kw)
    else:
        post = posterior_sample(GaussianPrior(MU, L), y, **kw)
    mean, var = _kalman(y)
    n_eff = float(jnp.min(post.ess))
    assert n_eff > 200 and float(jnp.max(post.rhat)) < 1.02 and int(post.divergences) == 0
    # Monte-Carlo error of the mean is sd / sqrt(ESS); of the variance about var * sqrt(2 / ESS)
    np.testing.assert_array_less(np.abs(post.mean - mean), 4 * np.sqrt(var / n_eff))
    np.testing.assert_array_less(np.abs(post.var / var - 1), 4 * np.sqrt(2 / n_eff))
    assert post.samples.shape == (4, 500, 3)


def test_masked_likelihood_equals_the_likelihood_of_the_observed_channels():
    x = jnp.array([0.1, 0.2, 0.3])
    y = jnp.array([1.0, jnp.nan, -1.0])
    keep = jnp.array([0, 2])
    ref = jax.scipy.stats.multivariate_normal.logpdf(y[keep], x[keep], R[jnp.ix_(keep, keep)])
    np.testing.assert_allclose(gaussian_log_likelihood(y, x, jnp.eye(3), R), ref, rtol=1e-6)
    g = jax.grad(lambda xx: gaussian_log_likelihood(y, xx, jnp.eye(3), R))(x)
    assert np.all(np.isfinite(g)) and g[1] == 0.0


def test_bad_arguments_are_named():
    prior = GaussianPrior(MU, L)
    with pytest.raises(ValueError, match="every channel"):
        posterior_sample(prior, jnp.full(3, jnp.nan), key=jax.random.key(0), obs_cov=R)
    with pytest.raises(ValueError, match="obs_cov"):
        posterior_sample(prior, jnp.ones(3), key=jax.random.key(0), obs_cov=jnp.eye(2))
    with pytest.raises(ValueError, match="log_prob"):
        posterior_sample(None, jnp.ones(3), key=jax.random.key(0), obs_cov=R)
    with pytest.raises(ValueError, match="`y`"):
        posterior_sample(prior, jnp.ones((2, 3)), key=jax.random.key(0), obs_cov=R)
