"""Sample-based distances between a model's samples and data: MMD and the energy distance, plus the reference
figure they are judged against (the same distance between two independent data samples of the same size).

Both take ``x (n, ...)`` and ``y (m, ...)``; trailing axes are flattened, so trajectories ``(n, time, obs)`` work.

- :func:`mmd` — the unbiased estimate of MMD² with a sum of Gaussian kernels whose bandwidths are the median
  pairwise distance of the pooled sample times ``(0.25, 0.5, 1, 2, 4)`` (Gretton et al. 2012; the multi-scale sum is
  what makes one number meaningful across datasets).
- :func:`energy_distance` — ``2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (Székely & Rizzo), U-statistic form.
"""

import jax
import jax.numpy as jnp

from .._types import Array, Float

__all__ = ["energy_distance", "mmd", "pairwise_distances"]

BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _flat(a, name):
    a = jnp.asarray(a)
    if a.ndim < 1 or a.shape[0] < 2:
        raise ValueError(f"`{name}` must have a leading sample axis of at least 2 samples, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def pairwise_distances(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, "n m"]:
    """Euclidean distances ``‖x_i − y_j‖`` (with a safe gradient at zero)."""
    d2 = jnp.sum(x**2, 1)[:, None] + jnp.sum(y**2, 1)[None, :] - 2.0 * x @ y.T
    d2 = jnp.maximum(d2, 0.0)
    safe = jnp.where(d2 > 0, d2, 1.0)
    return jnp.where(d2 > 0, jnp.sqrt(safe), 0.0)


def _offdiag_mean(k):
    n = k.shape[0]
    return (jnp.sum(k) - jnp.trace(k)) / (n * (n - 1))


def _within_mean(k, unbiased):
    return _offdiag_mean(k) if unbiased else jnp.mean(k)


def mmd(x, y, bandwidths: Float[Array, " k"] | None = None, *, unbiased: bool = True) -> Float[Array, ""]:
    """Unbiased MMD² between samples ``x`` and ``y`` (Gaussian kernels; see the module docstring).

    Args:
        x, y: samples ``(n, ...)`` and ``(m, ...)``, same trailing shape.
        bandwidths: kernel length scales; default the median heuristic times ``(0.25, 0.5, 1, 2, 4)``, with the
            median taken over the pooled sample (not differentiated through).
        unbiased: the U-statistic (default; averages 0 for two samples of one law) or the biased V-statistic
            (always ≥ 0: what a "within k× of an independent data sample" comparison needs).
    """
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd: `x` and `y` must have the same event shape, got {x.shape[1:]} and {y.shape[1:]}")
    dxx, dyy, dxy = pairwise_distances(x, x), pairwise_distances(y, y), pairwise_distances(x, y)
    if bandwidths is None:
        pooled = jnp.concatenate([dxx.ravel(), dyy.ravel(), dxy.ravel()])
        median = jax.lax.stop_gradient(jnp.nanmedian(jnp.where(pooled > 0, pooled, jnp.nan)))
        bandwidths = median * jnp.asarray(BANDWIDTH_FACTORS, x.dtype)
    bandwidths = jnp.atleast_1d(jnp.asarray(bandwidths, x.dtype))

    def kern(d):
        return jnp.sum(jnp.exp(-(d[..., None] ** 2) / (2.0 * bandwidths**2)), axis=-1)

    return _within_mean(kern(dxx), unbiased) + _within_mean(kern(dyy), unbiased) - 2.0 * jnp.mean(kern(dxy))


def energy_distance(x, y, *, unbiased: bool = True) -> Float[Array, ""]:
    """The energy distance ``2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (U-statistics within samples, or the biased
    V-statistics with ``unbiased=False``)."""
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"energy_distance: `x` and `y` must have the same event shape, got {x.shape[1:]} and {y.shape[1:]}"
        )
    return (
        2.0 * jnp.mean(pairwise_distances(x, y))
        - _within_mean(pairwise_distances(x, x), unbiased)
        - _within_mean(pairwise_distances(y, y), unbiased)
    )
