"""Initial-state distributions: where a twin's belief about ``x_0`` starts."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import as_float_array, check_covariance, check_square
from .._types import Array, Float, Key, Scalar


class AbstractInitial(eqx.Module):
    """A distribution over the initial state with a mean and a covariance (filters start from these)."""

    @property
    @abc.abstractmethod
    def mean(self) -> Float[Array, " state"]:
        """The mean of ``x_0``."""

    @property
    @abc.abstractmethod
    def cov(self) -> Float[Array, "state state"]:
        """The covariance of ``x_0``."""

    @abc.abstractmethod
    def sample(self, key: Key) -> Float[Array, " state"]:
        """One draw of ``x_0``."""

    @abc.abstractmethod
    def log_prob(self, x: Float[Array, " state"]) -> Scalar:
        """The log-density of ``x`` (``-inf`` outside the support)."""


def _psd_sqrt(cov: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """A matrix ``L`` with ``L Lᵀ = cov`` that also works for singular (semi-definite) covariances."""
    w, v = jnp.linalg.eigh(0.5 * (cov + cov.T))
    return v * jnp.sqrt(jnp.clip(w, 0.0))


class Gaussian(AbstractInitial):
    """A multivariate normal ``N(mean, cov)``.

    Arguments:
        mean: the mean, shape ``(n,)``.
        cov: the covariance, shape ``(n, n)``, symmetric positive semi-definite. A singular covariance (a state known
            exactly) is allowed for sampling; ``log_prob`` then needs a positive-definite one.

    Raises:
        ValueError: if shapes disagree, or a concrete ``cov`` has a negative variance or is not PSD.

    Example:
        ```python
        x0 = tj.Gaussian(mean=jnp.array([1.0, 0.0]), cov=0.1 * jnp.eye(2))
        x = x0.sample(jax.random.key(0))
        ```
    """

    _mean: Float[Array, " state"]
    _cov: Float[Array, "state state"]

    def __init__(self, mean, cov):
        mean = as_float_array(mean, "mean", ndim=1)
        cov = as_float_array(cov, "cov")
        if cov.ndim == 1:
            cov = jnp.diag(cov)
        check_square(cov, "cov", mean.shape[0])
        check_covariance(cov, "cov")
        self._mean = mean
        self._cov = cov

    @property
    def mean(self):
        return self._mean

    @property
    def cov(self):
        return self._cov

    def sample(self, key: Key) -> Float[Array, " state"]:
        z = jax.random.normal(key, self._mean.shape, self._mean.dtype)
        return self._mean + _psd_sqrt(self._cov) @ z

    def log_prob(self, x: Float[Array, " state"]) -> Scalar:
        return gaussian_log_prob(x, self._mean, self._cov)


class PointMass(AbstractInitial):
    """A state known exactly: ``x_0 = value`` (covariance zero)."""

    value: Float[Array, " state"]

    def __init__(self, value):
        self.value = as_float_array(value, "value", ndim=1)

    @property
    def mean(self):
        return self.value

    @property
    def cov(self):
        return jnp.zeros((self.value.shape[0],) * 2, self.value.dtype)

    def sample(self, key: Key) -> Float[Array, " state"]:
        del key
        return self.value

    def log_prob(self, x: Float[Array, " state"]) -> Scalar:
        return jnp.where(jnp.all(x == self.value), 0.0, -jnp.inf)


def gaussian_log_prob(x: Float[Array, " n"], mean: Float[Array, " n"], cov: Float[Array, "n n"]) -> Scalar:
    """``log N(x; mean, cov)`` through a Cholesky factor."""
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, x - mean, lower=True)
    n = x.shape[0]
    return -0.5 * (z @ z) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * n * jnp.log(2 * jnp.pi)
