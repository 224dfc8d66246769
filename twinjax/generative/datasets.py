"""Reference datasets with a known density, so that a test can compute the best achievable NLL itself.

Two moons (the standard construction, as scikit-learn's ``make_moons``): a fair coin picks a moon, ``θ ~ U[0, π]``,
the upper moon is ``(cos θ, sin θ)``, the lower ``(1 − cos θ, 0.5 − sin θ)``, plus isotropic Gaussian noise of standard
deviation ``noise`` on the raw coordinates. Its density is a continuous mixture,

    p(x) = ½ Σ_c (1/π) ∫₀^π N(x; m_c(θ), σ² I) dθ,

evaluated here by the midpoint rule in ``θ`` (``quadrature`` nodes, log-sum-exp), and its entropy
``H = −E log p(X)`` by Monte Carlo with its standard error (REFERENCES.md: ≈ 1.00 nats at σ = 0.1).
"""

import jax
import jax.numpy as jnp

from .._types import Array, Float

__all__ = ["two_moons", "two_moons_entropy", "two_moons_log_prob"]


def _means(theta):
    upper = jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)
    lower = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], -1)
    return upper, lower


def two_moons(key: jax.Array, n: int, noise: float = 0.1, *, labels: bool = False):
    """``n`` samples ``(n, 2)`` of two moons (and the moon index ``(n,)`` when ``labels``)."""
    if n < 1:
        raise ValueError(f"two_moons: `n` must be positive, got {n}")
    if not noise > 0:
        raise ValueError(f"two_moons: `noise` must be positive, got {noise}")
    k_c, k_t, k_e = jax.random.split(key, 3)
    c = jax.random.bernoulli(k_c, 0.5, (n,))
    theta = jax.random.uniform(k_t, (n,), minval=0.0, maxval=jnp.pi)
    upper, lower = _means(theta)
    x = jnp.where(c[:, None], lower, upper) + noise * jax.random.normal(k_e, (n, 2))
    return (x, c.astype(jnp.int32)) if labels else x


def two_moons_log_prob(x: Float[Array, "n 2"], noise: float = 0.1, quadrature: int = 2048) -> Float[Array, " n"]:
    """The exact two-moons log-density (midpoint rule in θ with ``quadrature`` nodes per moon)."""
    theta = (jnp.arange(quadrature) + 0.5) * jnp.pi / quadrature
    upper, lower = _means(theta)
    centres = jnp.concatenate([upper, lower])  # (2Q, 2)
    d2 = jnp.sum((x[:, None, :] - centres[None]) ** 2, -1)
    log_normal = -d2 / (2 * noise**2) - jnp.log(2 * jnp.pi * noise**2)
    # ½ · (1/π) · Σ_q (π/Q) N(...) for each moon = mean over the 2Q nodes
    return jax.nn.logsumexp(log_normal, axis=1) - jnp.log(2 * quadrature)


def two_moons_entropy(key: jax.Array, noise: float = 0.1, n: int = 100_000, chunk: int = 10_000):
    """Monte-Carlo entropy of two moons: ``(H, standard error)`` in nats."""
    x = two_moons(key, n, noise)
    lp = jax.lax.map(lambda b: two_moons_log_prob(b, noise), x.reshape(-1, chunk, 2)).ravel()
    return -jnp.mean(lp), jnp.std(lp) / jnp.sqrt(n)
