"""Generative state estimation: a learned prior ``p(x)`` and a known sensor likelihood ``p(y | x)`` give the posterior
``p(x | y_obs) ∝ p(y_obs | x) p(x)`` — denoising (every channel observed with noise) and imputation (some channels
missing: NaN in ``y``, masked out of the likelihood).

The likelihood is Gaussian, ``y = H x + v``, ``v ~ N(0, R)`` (``H`` defaults to the identity); missing channels of
``y`` are removed from ``H`` and ``R``, never dropped silently. The posterior is sampled by blackjax NUTS with window
adaptation (chains vmapped; :func:`twinjax.calibrate.bayes.run_nuts`):

- in **data space**, ``log p(x) + log p(y | x)`` with the prior's exact ``log_prob`` (flows, diffusion through the
  probability-flow ODE, or any model with ``has_log_prob``);
- in **latent space** (``decode=`` given): for a generator ``x = g(z)``, ``z ~ N(0, I)`` (a flow's inverse pass, a
  VAE's or GAN's decoder), the chain runs on ``log N(z; 0, I) + log p(y | g(z))`` and the draws are mapped through
  ``g`` — the chapter's latent-space MCMC, well conditioned because the prior is a standard normal there.

On a linear-Gaussian problem the exact answer is the Kalman (Gaussian-conditioning) update, which the tests compare
against; the gap of a *learned* prior is its approximation error and is reported, not hidden.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array, Float
from ..calibrate.bayes import ess, rhat, run_nuts
from ._base import AbstractGenerativeModel

__all__ = ["GenerativePosterior", "gaussian_log_likelihood", "posterior_sample"]


class GenerativePosterior(eqx.Module):
    """Draws of ``p(x | y)``: ``samples`` ``(chains, draws, dim)``; diagnostics per coordinate of the chain's space."""

    samples: Float[Array, "chains draws dim"]
    rhat: Array
    ess: Array
    divergences: Array
    acceptance: Array

    @property
    def mean(self) -> Float[Array, " dim"]:
        return jnp.mean(self.samples, axis=(0, 1))

    @property
    def var(self) -> Float[Array, " dim"]:
        return jnp.var(self.samples, axis=(0, 1), ddof=1)

    @property
    def flat(self) -> Float[Array, "n dim"]:
        return self.samples.reshape(-1, self.samples.shape[-1])


def gaussian_log_likelihood(y: Float[Array, " obs"], x: Float[Array, " dim"], obs_matrix, obs_cov) -> Array:
    """``log N(y; H x, R)`` over the observed (non-NaN) channels of ``y``."""
    mask = jnp.isfinite(y)
    r = jnp.where(mask, y - obs_matrix @ x, 0.0)
    cov = jnp.where(mask[:, None] & mask[None, :], obs_cov, jnp.diag(jnp.where(mask, 0.0, 1.0)))
    chol = jnp.linalg.cholesky(cov)
    w = jax.scipy.linalg.solve_triangular(chol, r, lower=True)
    n_obs = jnp.sum(mask)
    return -0.5 * jnp.sum(w**2) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * n_obs * jnp.log(2 * jnp.pi)


def posterior_sample(
    prior: AbstractGenerativeModel | None,
    y,
    *,
    key: jax.Array,
    obs_cov,
    obs_matrix=None,
    dim: int | None = None,
    decode: Callable | None = None,
    latent_dim: int | None = None,
    chains: int = 4,
    warmup: int = 500,
    samples: int = 500,
    max_tree_depth: int = 8,
) -> GenerativePosterior:
    """Sample ``p(x | y)`` under a learned prior (see the module docstring).

    Args:
        prior: a model with an explicit ``log_prob`` (data-space sampling); ignored when ``decode`` is given.
        y: the measurement ``(obs,)``; NaN marks a missing channel.
        key: PRNG key.
        obs_cov: ``R`` ``(obs, obs)``.
        obs_matrix: ``H`` ``(obs, dim)``; default the identity (``obs == dim``).
        dim: the state dimension (default ``H.shape[1]``, or ``obs``).
        decode: ``g: z -> x`` for latent-space sampling with ``z ~ N(0, I_{latent_dim})``.
        latent_dim: the dimension of ``z`` (default ``dim``).
        chains, warmup, samples, max_tree_depth: NUTS settings.

    Returns:
        A :class:`GenerativePosterior` with draws in data space; diagnostics are of the sampled space.
    """
    y = jnp.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"posterior_sample: `y` must be one measurement (obs,), got shape {y.shape}")
    if not bool(jnp.any(jnp.isfinite(y))):
        raise ValueError("posterior_sample: every channel of `y` is missing (NaN); the posterior is the prior")
    obs_cov = jnp.asarray(obs_cov, y.dtype)
    if obs_cov.shape != (y.shape[0], y.shape[0]):
        raise ValueError(f"posterior_sample: `obs_cov` must be ({y.shape[0]}, {y.shape[0]}), got {obs_cov.shape}")
    dim = dim if dim is not None else (y.shape[0] if obs_matrix is None else jnp.shape(obs_matrix)[1])
    obs_matrix = jnp.eye(y.shape[0], dim, dtype=y.dtype) if obs_matrix is None else jnp.asarray(obs_matrix, y.dtype)
    if obs_matrix.shape != (y.shape[0], dim):
        raise ValueError(f"posterior_sample: `obs_matrix` must be ({y.shape[0]}, {dim}), got {obs_matrix.shape}")
    if decode is None:
        if prior is None or not getattr(prior, "has_log_prob", False):
            raise ValueError("posterior_sample: `prior` needs an explicit log_prob, or pass `decode` (latent space)")
        space = dim

        def logdensity(x):
            return prior.log_prob(x[None])[0] + gaussian_log_likelihood(y, x, obs_matrix, obs_cov)

        to_data = lambda x: x  # noqa: E731
    else:
        space = latent_dim or dim

        def logdensity(z):
            return -0.5 * jnp.sum(z**2) + gaussian_log_likelihood(y, decode(z), obs_matrix, obs_cov)

        to_data = decode
    return _sample(logdensity, to_data, space, key, chains, warmup, samples, max_tree_depth, y.dtype)


@eqx.filter_jit
def _sample(logdensity, to_data, space, key, chains, warmup, samples, max_tree_depth, dtype):
    k_init, k_run = jax.random.split(key)
    z0 = 0.1 * jax.random.normal(k_init, (chains, space), dtype)
    zs, info = run_nuts(logdensity, z0, k_run, warmup=warmup, samples=samples, max_tree_depth=max_tree_depth)
    xs = jax.vmap(jax.vmap(to_data))(zs)
    return GenerativePosterior(xs, rhat(zs), ess(zs), jnp.sum(info.is_divergent), jnp.mean(info.acceptance_rate))
