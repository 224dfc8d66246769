"""Pieces every filter shares: input checking, the masked Gaussian update, and the result containers.

Time convention (the same as :func:`twinjax.simulate`): observation ``ys[k]`` is taken at ``ts[k]`` with the control
``us[k]`` in the sensor, and ``us[k]`` is held on ``[ts[k], ts[k+1])``. The prior (``model.initial`` or the ``init``
arguments) describes the state at ``ts[0]``; the first observation *updates* it without a prediction, every later one
is preceded by a prediction over the actual interval ``[ts[k-1], ts[k]]`` — irregular intervals are integrated as they
are (continuous–discrete filtering).

Every filter is a pure ``init`` / ``predict`` / ``update`` / ``step`` family (``step`` = predict to ``t`` with the
control held since the last step, then update with ``y``) plus a ``lax.scan`` driver. The filter state remembers the
time ``t`` and the control ``u`` applied since ``t``, so an online twin only passes what it has now: ``y`` and ``u``.

Missing measurements are ``NaN`` (a whole vector or single channels). The update uses only the observed channels:
rows of the gain for missing channels are zero, the innovation covariance has the identity in their place and the
log-likelihood is the exact marginal over the observed channels. A fully missing ``y`` is a predict-only step.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_float_array, check_finite_leaves, check_times, is_concrete
from .._types import Array, Bool, Float, Int, Obs, Scalar, State
from ..model.dynamics import AbstractDiscreteDynamics
from ..model.ssm import AbstractStateSpaceModel, StateSpaceModel

LOG_2PI = float(np.log(2 * np.pi))


def symmetrise(P: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """``(P + Pᵀ) / 2``."""
    return 0.5 * (P + P.T)


def check_model(model, name: str = "model") -> AbstractStateSpaceModel:
    """A filter needs a state-space twin with a sensor."""
    if not isinstance(model, AbstractStateSpaceModel):
        raise ValueError(f"`{name}` must be a tj.StateSpaceModel or tj.LinearGaussianSSM, got {type(model).__name__}.")
    if model.observation is None:
        raise ValueError(f"`{name}` has no `observation`: a filter needs a sensor model (e.g. tj.GaussianObservation).")
    return model


def forward_differentiable(model):
    """``model`` with a diffrax adjoint that supports ``jax.jacfwd`` (and reverse mode on top of it).

    ``RecursiveCheckpointAdjoint`` (the default) is a ``custom_vjp``: forward mode cannot go through it.
    ``DirectAdjoint`` takes the same steps and supports both modes. Any other adjoint the user chose is kept.
    """
    if (
        isinstance(model, StateSpaceModel)
        and not isinstance(model.dynamics, AbstractDiscreteDynamics)
        and isinstance(model.discretisation.adjoint, diffrax.RecursiveCheckpointAdjoint)
    ):
        return eqx.tree_at(lambda m: m.discretisation.adjoint, model, diffrax.DirectAdjoint())
    return model


def prepare_inputs(model, ys, us=None, ts=None, t0=None):
    """Validate and normalise the data of a batch filter.

    Returns ``(ys, us, ts)`` with shapes ``(T, obs)``, ``(T, control)`` (zeros for an autonomous twin) and ``(T,)``.
    ``ts`` defaults to ``t0 + dt * arange(T)`` (``t0`` default 0) and must then have ``model.dt``.

    Raises:
        ValueError: naming ``ys``, ``us`` or ``ts`` when a shape disagrees, times are unsorted, duplicated or missing,
            or an observation is ``±inf`` (missing values must be ``NaN``).
    """
    ys = as_float_array(ys, "ys")
    if ys.ndim == 1:
        ys = ys[:, None]
    if ys.ndim != 2:
        raise ValueError(f"`ys` must have shape (time, obs), got {tuple(ys.shape)}.")
    T = ys.shape[0]
    if T == 0:
        raise ValueError("`ys` must hold at least one observation, got an empty array.")
    if is_concrete(ys) and np.any(np.isinf(np.asarray(ys))):
        bad = np.argwhere(np.isinf(np.asarray(ys)))[:5].tolist()
        raise ValueError(f"`ys` has infinite entries at (time, channel) {bad}; mark missing measurements with NaN.")
    if ts is None:
        if model.dt is None:
            raise ValueError("`ts` is required: the model has no `dt` to build a regular time grid from.")
        start = 0.0 if t0 is None else t0
        ts = start + model.dt * jnp.arange(T, dtype=ys.dtype)
    else:
        ts = check_times(ts, "ts")
        if ts.shape[0] != T:
            raise ValueError(f"`ts` must have one time per observation: shape ({T},), got {tuple(ts.shape)}.")
        ts = ts.astype(ys.dtype)
    m = model.control_dim
    if us is None:
        if m:
            raise ValueError(f"`us` is required: the model has control_dim={m}.")
        us = jnp.zeros((T, 0), ys.dtype)
    else:
        us = as_float_array(us, "us")
        if us.ndim == 1 and m == 1:
            us = us[:, None]
        if us.ndim != 2 or us.shape[1] != m or us.shape[0] not in (T, T - 1):
            raise ValueError(f"`us` must have shape ({T}, {m}) (time, control) to match `ys`, got {tuple(us.shape)}.")
        if us.shape[0] == T - 1:
            us = jnp.concatenate([us, us[-1:]], axis=0)
        check_finite_leaves(us, "us")
        us = us.astype(ys.dtype)
    return ys, us, ts


def default_control(model, u, dtype=None) -> Float[Array, " control"]:
    """``u`` as a ``(control,)`` array (zeros of the right size when ``None``)."""
    if u is None:
        return jnp.zeros((model.control_dim,), dtype or jnp.result_type(float))
    u = jnp.asarray(u, dtype)
    if u.ndim == 0:
        u = u[None]
    if u.shape != (model.control_dim,):
        raise ValueError(f"`u` must have shape ({model.control_dim},) (model.control_dim), got {tuple(u.shape)}.")
    return u


def masked_residual(y: Obs, y_pred: Obs) -> tuple[Obs, Bool[Array, " obs"]]:
    """``(y - y_pred)`` with zeros on missing (NaN) channels, and the observed mask. NaNs never reach arithmetic."""
    mask = ~jnp.isnan(y)
    return jnp.where(mask, jnp.where(mask, y, 0.0) - y_pred, 0.0), mask


def mask_covariance(S: Float[Array, "p p"], mask: Bool[Array, " p"]) -> Float[Array, "p p"]:
    """``S`` with the rows and columns of missing channels replaced by those of the identity."""
    both = mask[:, None] & mask[None, :]
    return jnp.where(both, S, jnp.eye(S.shape[0], dtype=S.dtype))


class Innovation(eqx.Module):
    """What one update saw: the innovation ``r = y - ŷ`` (0 on missing channels), its covariance ``S`` (masked),
    the observed mask and the log-likelihood increment ``log p(y_k | y_{<k})``."""

    residual: Float[Array, " obs"]
    covariance: Float[Array, "obs obs"]
    mask: Bool[Array, " obs"]
    log_likelihood: Scalar


def gaussian_update(
    m: State, P: Float[Array, "n n"], y: Obs, y_pred: Obs, S: Float[Array, "p p"], C: Float[Array, "n p"]
) -> tuple[State, Float[Array, "n n"], Innovation]:
    """Moment-form Gaussian update (UKF, ensemble means): ``K = C S⁻¹``, ``m⁺ = m + K r``, ``P⁺ = P - K S Kᵀ``.

    ``S = Cov(y)`` (noise included) and ``C = Cov(x, y)`` of the predictive; missing channels of ``y`` are masked.
    """
    r, mask = masked_residual(y, y_pred)
    S_m = mask_covariance(symmetrise(S), mask)
    C_m = jnp.where(mask[None, :], C, 0.0)
    chol = jnp.linalg.cholesky(S_m)
    K, z = _gain_and_whitened(chol, C_m, r)
    m_new = m + K @ r
    P_new = symmetrise(P - K @ S_m @ K.T)
    return m_new, P_new, Innovation(r, S_m, mask, _log_normal(z, chol, mask))


def joseph_update(
    m: State, P: Float[Array, "n n"], y: Obs, y_pred: Obs, H: Float[Array, "p n"], R: Float[Array, "p p"]
) -> tuple[State, Float[Array, "n n"], Innovation]:
    """Linear(ised) Gaussian update in Joseph form: ``P⁺ = (I - K H) P (I - K H)ᵀ + K R Kᵀ``.

    The Joseph form keeps ``P⁺`` symmetric positive semi-definite under rounding (float32 over long runs) and is
    exact for any gain. Missing channels of ``y`` get zero rows in ``H`` and zero columns in ``K``.
    """
    r, mask = masked_residual(y, y_pred)
    H_m = jnp.where(mask[:, None], H, 0.0)
    R_m = mask_covariance(R, mask)
    PHt = P @ H_m.T
    S_m = mask_covariance(symmetrise(H_m @ PHt + R_m), mask)
    chol = jnp.linalg.cholesky(S_m)
    K, z = _gain_and_whitened(chol, PHt, r)
    K = jnp.where(mask[None, :], K, 0.0)
    m_new = m + K @ r
    I_KH = jnp.eye(m.shape[0], dtype=P.dtype) - K @ H_m
    R_obs = jnp.where(mask[:, None] & mask[None, :], R_m, 0.0)
    P_new = symmetrise(I_KH @ P @ I_KH.T + K @ R_obs @ K.T)
    return m_new, P_new, Innovation(r, S_m, mask, _log_normal(z, chol, mask))


def _gain_and_whitened(chol, C, r):
    """``K = C S⁻¹`` and ``z = L⁻¹ r`` (``S = L Lᵀ``) from ONE chain of triangular solves.

    One forward solve on the stacked right-hand side ``[Cᵀ | r]`` then one backward solve: the two solves depend on
    each other, so XLA never runs two batched triangular solves concurrently — with jaxlib 0.10 on a 2-core CPU two
    independent batched solves in one program can deadlock the intra-op thread pool (observed under ``vmap``).
    """
    rhs = jnp.concatenate([C.T, r[:, None]], axis=1)
    w = jax.scipy.linalg.solve_triangular(chol, rhs, lower=True)
    Kt = jax.scipy.linalg.solve_triangular(chol.T, w[:, :-1], lower=False)
    return Kt.T, w[:, -1]


def _log_normal(z, chol, mask) -> Scalar:
    """``log N`` of a whitened residual ``z = L⁻¹ r`` over the observed channels."""
    n_obs = jnp.sum(mask).astype(z.dtype)
    return -0.5 * (z @ z) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * n_obs * LOG_2PI


class GaussianFilterState(eqx.Module):
    """A Gaussian belief ``N(mean, cov)`` at time ``t``; ``u`` is the control held since ``t``.

    ``log_likelihood`` accumulates ``log p(y_{0:k})``; ``status`` is the worst :class:`~twinjax.Status` of the
    transitions so far (a failed solve is reported, not hidden).
    """

    mean: State
    cov: Float[Array, "n n"]
    t: Scalar
    u: Float[Array, " control"]
    log_likelihood: Scalar
    status: Int[Array, ""]


class GaussianFilterResult(eqx.Module):
    """Output of the Gaussian filters (KF, EKF, UKF, parallel KF).

    Attributes:
        ts: the observation times ``(T,)``.
        means, covariances: the filtered ``p(x_k | y_{0:k})``, ``(T, n)`` and ``(T, n, n)``.
        predicted_means, predicted_covariances: ``p(x_k | y_{0:k-1})`` (the prior at ``k = 0``).
        log_likelihood: ``log p(y_{0:T-1})`` (missing channels marginalised out).
        log_likelihoods: the per-step increments ``log p(y_k | y_{0:k-1})``, ``(T,)``.
        innovations: :class:`Innovation` stacked over time (residuals, their covariances, masks).
        status: per-step :class:`~twinjax.Status` of the transition solve, ``(T,)``.
    """

    ts: Float[Array, " time"]
    means: Float[Array, "time state"]
    covariances: Float[Array, "time state state"]
    predicted_means: Float[Array, "time state"]
    predicted_covariances: Float[Array, "time state state"]
    log_likelihood: Scalar
    log_likelihoods: Float[Array, " time"]
    innovations: Innovation
    status: Int[Array, " time"]

    @property
    def ok(self) -> Bool[Array, ""]:
        """Whether every transition solve succeeded."""
        return jnp.all(self.status == 0)


class SmootherResult(eqx.Module):
    """Output of a smoother: ``p(x_k | y_{0:T-1})`` means ``(T, n)``, covariances ``(T, n, n)``, the cross-covariances
    ``Cov(x_{k+1}, x_k | y)`` ``(T-1, n, n)`` (for EM and structured VI), and the filter's log-likelihood."""

    ts: Float[Array, " time"]
    means: Float[Array, "time state"]
    covariances: Float[Array, "time state state"]
    cross_covariances: Float[Array, "time_1 state state"]
    log_likelihood: Scalar
