"""Sensors: what a twin measures, with noise, and how missing measurements are handled.

Missing values are ``NaN`` in the data. Every likelihood turns them into a mask and evaluates the density of the
observed channels only — the exact marginal of the Gaussian over the observed sub-vector — with finite gradients.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import as_float_array, check_covariance, check_square
from .._types import Array, Bool, Control, Float, Key, Obs, Scalar, State, Time
from .distributions import _psd_sqrt


def observed_mask(y: Float[Array, "*batch obs"]) -> Bool[Array, "*batch obs"]:
    """``True`` where a measurement is present (not NaN)."""
    return ~jnp.isnan(y)


def masked_gaussian_log_prob(
    y: Float[Array, " obs"], mean: Float[Array, " obs"], cov: Float[Array, "obs obs"]
) -> Scalar:
    """``log N(y_o; mean_o, cov_oo)`` over the observed (non-NaN) channels ``o`` of ``y``.

    Implemented with fixed shapes: missing rows/columns of ``cov`` are replaced by the identity and their residuals
    by zero, which contributes nothing to the log-determinant or the quadratic form. A fully missing ``y`` gives 0.
    The NaNs never reach an arithmetic operation, so gradients stay finite.
    """
    mask = observed_mask(y)
    resid = jnp.where(mask, jnp.where(mask, y, 0.0) - mean, 0.0)
    both = mask[:, None] & mask[None, :]
    eye = jnp.eye(y.shape[0], dtype=cov.dtype)
    cov_m = jnp.where(both, cov, eye)
    chol = jnp.linalg.cholesky(cov_m)
    z = jax.scipy.linalg.solve_triangular(chol, resid, lower=True)
    n_obs = jnp.sum(mask).astype(cov.dtype)
    return -0.5 * (z @ z) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * n_obs * jnp.log(2 * jnp.pi)


class AbstractObservation(eqx.Module):
    """A sensor model ``y = h(t, x, u) + v``."""

    @abc.abstractmethod
    def mean(self, t: Time, x: State, u: Control) -> Obs:
        """The noise-free measurement ``h(t, x, u)``."""

    @abc.abstractmethod
    def covariance(self, t: Time, x: State, u: Control) -> Float[Array, "obs obs"]:
        """The measurement-noise covariance ``R``."""

    @abc.abstractmethod
    def log_prob(self, y: Obs, t: Time, x: State, u: Control) -> Scalar:
        """``log p(y | x)``; NaN entries of ``y`` are missing and masked out."""

    @abc.abstractmethod
    def sample(self, key: Key, t: Time, x: State, u: Control) -> Obs:
        """One noisy measurement."""


class GaussianObservation(AbstractObservation):
    """Additive Gaussian sensor noise: ``y = h(t, x, u) + v``, ``v ~ N(0, R)``.

    Arguments:
        fn: the measurement function ``h(t, x, u) -> y`` (a function or an equinox module; a module's array fields
            are parameters that gradients and calibration see).
        cov: the noise covariance ``R``, shape ``(obs, obs)`` (or ``(obs,)`` for independent channels: variances).

    Raises:
        ValueError: if ``cov`` is not square, not symmetric, or has a negative variance.

    Example:
        ```python
        sensor = tj.GaussianObservation(lambda t, x, u: x[:1], cov=jnp.eye(1) * 0.05**2)
        logp = sensor.log_prob(jnp.array([jnp.nan]), 0.0, x, u)   # 0.0: a missing reading carries no information
        ```
    """

    fn: Callable
    cov: Float[Array, "obs obs"]

    def __init__(self, fn: Callable, cov):
        if not callable(fn):
            raise ValueError(f"`fn` must be a callable h(t, x, u) -> y, got {type(fn).__name__}.")
        cov = as_float_array(cov, "cov")
        if cov.ndim == 1:
            cov = jnp.diag(cov)
        check_square(cov, "cov")
        check_covariance(cov, "cov")
        self.fn = fn
        self.cov = cov

    def mean(self, t: Time, x: State, u: Control) -> Obs:
        return jnp.asarray(self.fn(t, x, u))

    def covariance(self, t: Time, x: State, u: Control) -> Float[Array, "obs obs"]:
        return self.cov

    def log_prob(self, y: Obs, t: Time, x: State, u: Control) -> Scalar:
        return masked_gaussian_log_prob(y, self.mean(t, x, u), self.cov)

    def sample(self, key: Key, t: Time, x: State, u: Control) -> Obs:
        m = self.mean(t, x, u)
        z = jax.random.normal(key, m.shape, m.dtype)
        return m + _psd_sqrt(self.cov) @ z


class LinearFunction(eqx.Module):
    """``x, u ↦ C x + D u`` (the measurement function of a linear-Gaussian model)."""

    C: Float[Array, "obs state"]
    D: Float[Array, "obs control"]

    def __call__(self, t: Time, x: State, u: Control) -> Obs:
        return self.C @ x + self.D @ u


class DynamicsMethod(eqx.Module):
    """A sensor function that is a method of the twin's dynamics, e.g. ``battery.observe``.

    :class:`~twinjax.StateSpaceModel` stores a bound method of its own dynamics in this form and binds it to the
    *current* dynamics whenever the sensor is used, so a parameter edited on the dynamics (by ``eqx.tree_at``, a
    :class:`~twinjax.Params` draw or an optimiser) is seen by the sensor too — the chapter's ``p(y | x, φ)``.
    """

    name: str = eqx.field(static=True)
    dynamics: eqx.Module | None = None

    def __call__(self, t: Time, x: State, u: Control) -> Obs:
        if self.dynamics is None:
            raise RuntimeError(f"DynamicsMethod({self.name!r}) is not bound to a dynamics object.")
        return getattr(self.dynamics, self.name)(t, x, u)
