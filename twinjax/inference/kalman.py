"""Kalman filter and Rauch–Tung–Striebel smoother for twins with linear dynamics and sensors.

Model (the conventions of ``_base.py``): ``x_{k+1} = F_k x_k + (B u_k) + w_k``, ``w_k ~ N(0, Q_k)`` over the interval
``[t_k, t_{k+1}]``; ``y_k = H_k x_k + (D u_k) + v_k``, ``v_k ~ N(0, R)``; ``x_0 ~ N(m_0, P_0)`` at ``t_0``.

- predict: ``m⁻ = transition(t_k, t_{k+1}, m, u_k)``, ``P⁻ = F P Fᵀ + Q``;
- update (Joseph form, exact for any gain and PSD under rounding): ``S = H P⁻ Hᵀ + R``, ``K = P⁻ Hᵀ S⁻¹``,
  ``m = m⁻ + K (y - ŷ)``, ``P = (I - K H) P⁻ (I - K H)ᵀ + K R Kᵀ``; ``log p(y_k | y_{<k}) = log N(y; ŷ, S)``;
- smoother (RTS, backwards): ``G_k = P_k F_kᵀ (P⁻_{k+1})⁻¹``, ``mˢ_k = m_k + G_k (mˢ_{k+1} - m⁻_{k+1})``,
  ``Pˢ_k = (I - G_k F_k) P_k (I - G_k F_k)ᵀ + G_k Q_k G_kᵀ + G_k Pˢ_{k+1} G_kᵀ`` (a sum of PSD terms, equal to the
  textbook ``P_k + G_k (Pˢ_{k+1} - P⁻_{k+1}) G_kᵀ``) and ``Cov(x_{k+1}, x_k | y) = Pˢ_{k+1} G_kᵀ``.

For a :class:`~twinjax.LinearGaussianSSM` the matrices ``A, B, C, D, Q, R`` are used directly. Any other
:class:`~twinjax.StateSpaceModel` is linearised exactly — the Jacobians of ``model.transition`` and of the sensor mean
at the current mean, by autodiff — which is the Kalman filter when they are linear (a continuous linear ODE integrated
over irregular intervals included: continuous–discrete filtering). For a nonlinear twin this is the extended Kalman
filter; prefer ``extended_kalman_filter`` there.

References:
    S. Särkkä, *Bayesian Filtering and Smoothing* (2013), §4.3 (Kalman filter), §8.2 (RTS smoother).
    R. S. Bucy, P. D. Joseph, *Filtering for Stochastic Processes* (1968) (the Joseph-form update).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import as_float_array, check_covariance, check_square, is_concrete
from .._types import Array, Float, Int, Obs, Scalar, State
from ..model.ssm import LinearGaussianSSM
from ..model.status import Status
from ._base import (
    GaussianFilterResult,
    GaussianFilterState,
    Innovation,
    SmootherResult,
    check_model,
    default_control,
    forward_differentiable,
    joseph_update,
    prepare_inputs,
    symmetrise,
)

# ---------------------------------------------------------------------------------------------------------------------
# the model's linear(ised) pieces


def _transition(model, m: State, t0: Scalar, t1: Scalar, u: Float[Array, " control"]):
    """``(m⁻, F, status)``: the transition of the mean and its Jacobian."""
    if isinstance(model, LinearGaussianSSM):
        m1, status = model.transition_with_status(t0, t1, m, u)
        return m1, model.A, status

    # forward mode through diffrax: DirectAdjoint (same steps) keeps reverse mode working on top (log-lik gradients)
    model = forward_differentiable(model)

    def f(x):
        x1, status = model.transition_with_status(t0, t1, x, u)
        return x1, (x1, status)

    F, (m1, status) = jax.jacfwd(f, has_aux=True)(m)
    return m1, F, status


def _predict_moments(
    model, m: State, P: Float[Array, "state state"], t0: Scalar, t1: Scalar, u: Float[Array, " control"]
) -> tuple[State, Float[Array, "state state"], Int[Array, ""]]:
    m1, F, status = _transition(model, m, t0, t1, u)
    Q = model.process_noise_cov(t0, t1, m, u)
    return m1, symmetrise(F @ P @ F.T + Q), jnp.asarray(status, jnp.int32)


def _update_moments(
    model, m: State, P: Float[Array, "state state"], t: Scalar, y: Obs, u: Float[Array, " control"]
) -> tuple[State, Float[Array, "state state"], Innovation]:
    if isinstance(model, LinearGaussianSSM):
        H, R = model.C, model.R
        y_pred = H @ m + model.D @ u
    else:
        obs = model.observation

        def h(x):
            yx = jnp.asarray(obs.mean(t, x, u))
            return yx, yx

        H, y_pred = jax.jacfwd(h, has_aux=True)(m)
        R = obs.covariance(t, m, u)
    return joseph_update(m, P, y, y_pred, H, R)


# ---------------------------------------------------------------------------------------------------------------------
# input checking shared with the parallel filter


def _float_dtype(model, *arrays):
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return jnp.result_type(*[x.dtype for x in leaves], *[a.dtype for a in arrays])


def _initial_moments(model, mean, cov) -> tuple[State, Float[Array, "state state"]]:
    """The prior at ``ts[0]``: ``mean`` / ``cov`` when given, else ``model.initial``'s."""
    if mean is None or cov is None:
        if model.initial is None:
            raise ValueError("`mean` and `cov` are required: the model has no `initial` distribution to default to.")
        mean = model.initial.mean if mean is None else mean
        cov = model.initial.cov if cov is None else cov
    mean = as_float_array(mean, "mean", ndim=1)
    cov = as_float_array(cov, "cov")
    if cov.ndim == 1:
        cov = jnp.diag(cov)
    n = mean.shape[0]
    if isinstance(model, LinearGaussianSSM) and n != model.A.shape[0]:
        raise ValueError(f"`mean` must have shape ({model.A.shape[0]},) (the model's state size), got ({n},).")
    check_square(cov, "cov", n)
    check_covariance(cov, "cov")
    return mean, cov


def _obs_dim(model, t, m, u) -> int:
    if isinstance(model, LinearGaussianSSM):
        return model.C.shape[0]
    out = jax.eval_shape(model.observation.mean, t, m, u)
    return out.shape[0] if out.shape else 1


def _prepare(model, ys, us, ts, mean, cov):
    """Validate a batch filter's arguments; return them as arrays of one floating dtype."""
    check_model(model)
    ys, us, ts = prepare_inputs(model, ys, us, ts)
    mean, cov = _initial_moments(model, mean, cov)
    p = _obs_dim(model, ts[0], mean, us[0])
    if ys.shape[1] != p:
        raise ValueError(
            f"`ys` must have shape ({ys.shape[0]}, {p}) (time, obs) to match the model's sensor, got {tuple(ys.shape)}."
        )
    dtype = _float_dtype(model, ys, mean, cov)
    return ys.astype(dtype), us.astype(dtype), ts.astype(dtype), mean.astype(dtype), cov.astype(dtype)


def _check_state(state) -> None:
    if not isinstance(state, GaussianFilterState):
        raise ValueError(f"`state` must be a GaussianFilterState (from kf_init), got {type(state).__name__}.")


def _check_y(model, state, y) -> Obs:
    y = as_float_array(y, "y")
    if y.ndim == 0:
        y = y[None]
    p = _obs_dim(model, state.t, state.mean, state.u)
    if y.shape != (p,):
        raise ValueError(f"`y` must have shape ({p},) (the model's sensor), got {tuple(y.shape)}.")
    if is_concrete(y) and np.any(np.isinf(np.asarray(y))):
        raise ValueError(f"`y` has infinite entries {np.asarray(y)}; mark missing measurements with NaN.")
    return y.astype(state.mean.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# one-step family


def kf_init(model, *, mean=None, cov=None, t0=0.0, u0=None) -> GaussianFilterState:
    """The Kalman filter's belief before the first measurement.

    Arguments:
        model: a :class:`~twinjax.LinearGaussianSSM` or a :class:`~twinjax.StateSpaceModel` with linear dynamics and
            sensor.
        mean, cov: the prior ``N(mean, cov)`` of the state at ``t0``, ``(n,)`` and ``(n, n)`` (default:
            ``model.initial``).
        t0: the time of the prior (s).
        u0: the control held from ``t0``, ``(control,)`` (default zeros).

    Returns:
        A :class:`GaussianFilterState` (log-likelihood 0, status successful).

    Raises:
        ValueError: for a model without a sensor, missing or mis-shaped ``mean`` / ``cov``, or a ``cov`` that is not
            a covariance.

    Example:
        ```python
        state = kf_init(lgssm)
        state, info = kf_update(lgssm, state, y0)        # the first measurement updates the prior
        state, info = kf_step(lgssm, state, y1)          # later ones: predict over dt, then update
        ```
    """
    check_model(model)
    mean, cov = _initial_moments(model, mean, cov)
    dtype = _float_dtype(model, mean, cov)
    return GaussianFilterState(
        mean=mean.astype(dtype),
        cov=cov.astype(dtype),
        t=jnp.asarray(t0, dtype),
        u=default_control(model, u0, dtype),
        log_likelihood=jnp.zeros((), dtype),
        status=jnp.zeros((), jnp.int32),
    )


@eqx.filter_jit
def _kf_predict(model, state: GaussianFilterState, t: Scalar) -> GaussianFilterState:
    m, P, status = _predict_moments(model, state.mean, state.cov, state.t, t, state.u)
    return GaussianFilterState(m, P, t, state.u, state.log_likelihood, jnp.maximum(state.status, status))


@eqx.filter_jit
def _kf_update(model, state: GaussianFilterState, y: Obs, u) -> tuple[GaussianFilterState, Innovation]:
    m, P, info = _update_moments(model, state.mean, state.cov, state.t, y, u)
    new = GaussianFilterState(m, P, state.t, u, state.log_likelihood + info.log_likelihood, state.status)
    return new, info


@eqx.filter_jit
def _kf_step(model, state: GaussianFilterState, y: Obs, u, t: Scalar) -> tuple[GaussianFilterState, Innovation]:
    return _kf_update(model, _kf_predict(model, state, t), y, u)


def _as_time(state, t, name="t") -> Scalar:
    t = jnp.asarray(t, state.t.dtype)
    if t.shape != ():
        raise ValueError(f"`{name}` must be a scalar time, got shape {tuple(t.shape)}.")
    if is_concrete(t) and is_concrete(state.t) and float(t) < float(state.t):
        raise ValueError(f"`{name}` = {float(t)} is before the belief's time state.t = {float(state.t)}.")
    return t


def kf_predict(model, state, t) -> GaussianFilterState:
    """Predict the belief from ``state.t`` to ``t`` with the control held since ``state.t``.

    ``m⁻ = transition(state.t, t, m, state.u)``, ``P⁻ = F P Fᵀ + Q(state.t, t)`` (a :class:`~twinjax.LinearGaussianSSM`
    applies ``A`` once whatever the interval).

    Arguments:
        model: the twin (see :func:`kf_init`).
        state: the current belief.
        t: the time to predict to (s), ``>= state.t``.

    Returns:
        The predicted :class:`GaussianFilterState` at ``t`` (its ``status`` keeps the worst transition status).

    Raises:
        ValueError: for a ``state`` that is not a GaussianFilterState, or a ``t`` before ``state.t``.

    Example:
        ```python
        forecast = kf_predict(lgssm, state, state.t + 10 * lgssm.dt)
        ```
    """
    check_model(model)
    _check_state(state)
    return _kf_predict(model, state, _as_time(state, t))


def kf_update(model, state, y, u=None) -> tuple[GaussianFilterState, Innovation]:
    """Condition the belief on the measurement ``y`` taken at ``state.t`` (Joseph form).

    Arguments:
        model: the twin (see :func:`kf_init`).
        state: the predicted belief at the time of ``y``.
        y: the measurement ``(obs,)``; ``NaN`` marks missing channels (all ``NaN``: no update).
        u: the control in the sensor now, which is also held from now on, ``(control,)`` (default zeros).

    Returns:
        ``(state, info)``: the filtered belief (its log-likelihood increased by ``log p(y | past)``) and the
        :class:`Innovation`.

    Raises:
        ValueError: for a mis-shaped ``y`` or ``u``, or an infinite entry in ``y``.

    Example:
        ```python
        state, info = kf_update(lgssm, kf_init(lgssm), jnp.array([0.3, jnp.nan]))
        ```
    """
    check_model(model)
    _check_state(state)
    y = _check_y(model, state, y)
    return _kf_update(model, state, y, default_control(model, u, state.mean.dtype))


def kf_step(model, state, y, u=None, *, t=None) -> tuple[GaussianFilterState, Innovation]:
    """One filter cycle: :func:`kf_predict` to ``t`` (default ``state.t + model.dt``), then :func:`kf_update`.

    Arguments:
        model: the twin (see :func:`kf_init`).
        state: the belief after the previous measurement.
        y: the new measurement ``(obs,)`` (``NaN``: missing).
        u: the control in the sensor now and held from now on (default zeros).
        t: the time of ``y`` (s).

    Returns:
        ``(state, info)`` as :func:`kf_update`.

    Raises:
        ValueError: as :func:`kf_predict` and :func:`kf_update`, or when ``t`` is omitted and the model has no ``dt``.

    Example:
        ```python
        state = kf_init(lgssm)
        state, _ = kf_update(lgssm, state, ys[0])
        for y in ys[1:]:
            state, info = kf_step(lgssm, state, y)
        ```
    """
    check_model(model)
    _check_state(state)
    if t is None:
        if model.dt is None:
            raise ValueError("`t` is required: the model has no `dt` to step by.")
        t = state.t + model.dt
    t = _as_time(state, t)
    y = _check_y(model, state, y)
    return _kf_step(model, state, y, default_control(model, u, state.mean.dtype), t)


# ---------------------------------------------------------------------------------------------------------------------
# batch filter and smoother


@eqx.filter_jit
def _filter(model, ys, us, ts, mean, cov) -> GaussianFilterResult:
    m0, P0, info0 = _update_moments(model, mean, cov, ts[0], ys[0], us[0])
    state = GaussianFilterState(m0, P0, ts[0], us[0], info0.log_likelihood, jnp.zeros((), jnp.int32))

    def body(state, inputs):
        t, y, u = inputs
        m_pred, P_pred, status = _predict_moments(model, state.mean, state.cov, state.t, t, state.u)
        m, P, info = _update_moments(model, m_pred, P_pred, t, y, u)
        new = GaussianFilterState(
            m, P, t, u, state.log_likelihood + info.log_likelihood, jnp.maximum(state.status, status)
        )
        return new, (m, P, m_pred, P_pred, info, status)

    last, (ms, Ps, m_preds, P_preds, infos, statuses) = lax.scan(body, state, (ts[1:], ys[1:], us[1:]))

    def cat(first, rest):
        return jnp.concatenate([first[None], rest], axis=0)

    innovations = jax.tree_util.tree_map(cat, info0, infos)
    return GaussianFilterResult(
        ts=ts,
        means=cat(m0, ms),
        covariances=cat(P0, Ps),
        predicted_means=cat(mean, m_preds),
        predicted_covariances=cat(cov, P_preds),
        log_likelihood=last.log_likelihood,
        log_likelihoods=innovations.log_likelihood,
        innovations=innovations,
        status=cat(jnp.asarray(Status.successful, jnp.int32), statuses),
    )


def kalman_filter(model, ys, us=None, ts=None, *, mean=None, cov=None, parallel: bool = False) -> GaussianFilterResult:
    """Kalman filter over a batch of measurements.

    The prior describes the state at ``ts[0]``; ``ys[0]`` updates it directly, every later ``ys[k]`` is preceded by a
    prediction over ``[ts[k-1], ts[k]]`` with ``us[k-1]`` held (see the module docstring for the equations).

    Arguments:
        model: a :class:`~twinjax.LinearGaussianSSM`, or a :class:`~twinjax.StateSpaceModel` whose transition and
            sensor are linear in the state (linearised exactly by autodiff).
        ys: measurements ``(T, obs)``; ``NaN`` marks a missing channel (a row of ``NaN``: a predict-only step).
        us: controls ``(T, control)`` (or ``(T-1, control)``); ``us[k]`` is in the sensor at ``ts[k]`` and held on
            ``[ts[k], ts[k+1])``. Required when ``model.control_dim > 0``.
        ts: observation times ``(T,)``, strictly increasing (default ``dt * arange(T)``). A continuous-time twin is
            integrated over each actual interval; a ``LinearGaussianSSM`` applies ``A`` once per step whatever the
            interval (its ``ts`` only label the steps).
        mean, cov: the prior at ``ts[0]`` (default ``model.initial``).
        parallel: use the parallel-in-time (associative-scan) filter, :func:`parallel_kalman_filter`
            (:class:`~twinjax.LinearGaussianSSM` only): ``O(log T)`` depth on parallel hardware.

    Returns:
        A :class:`GaussianFilterResult`: filtered and predicted moments, ``log p(y_{0:T-1})`` and its increments,
        the innovations and the per-step transition status.

    Raises:
        ValueError: naming ``ys``, ``us``, ``ts``, ``mean`` or ``cov`` for wrong shapes, unsorted times, infinite
            measurements or a missing ``us``; naming ``model`` when ``parallel`` is asked for a nonlinear model type.

    Example:
        ```python
        result = kalman_filter(lgssm, ys, us)
        result.means, result.covariances, result.log_likelihood
        ```
    """
    ys, us, ts, mean, cov = _prepare(model, ys, us, ts, mean, cov)
    return _run_filter(model, ys, us, ts, mean, cov, parallel)


def _run_filter(model, ys, us, ts, mean, cov, parallel: bool) -> GaussianFilterResult:
    if parallel:
        from .parallel import _check_linear_gaussian, _parallel_filter

        _check_linear_gaussian(model)
        return _parallel_filter(model, ys, us, ts, mean, cov)
    return _filter(model, ys, us, ts, mean, cov)


def _smoother_gain(model, m, P, P_pred_next, t0, t1, u):
    """``(G, (I - G F) P (I - G F)ᵀ + G Q Gᵀ)`` for one backward step."""
    if isinstance(model, LinearGaussianSSM):
        F, Q = model.A, model.Q
    else:
        _, F, _ = _transition(model, m, t0, t1, u)
        Q = model.process_noise_cov(t0, t1, m, u)
    chol = jnp.linalg.cholesky(P_pred_next)
    # G = P Fᵀ (P⁻)⁻¹ = ((P⁻)⁻¹ F P)ᵀ since both P and P⁻ are symmetric
    G = jax.scipy.linalg.cho_solve((chol, True), F @ P).T
    I_GF = jnp.eye(m.shape[0], dtype=P.dtype) - G @ F
    return G, I_GF @ P @ I_GF.T + G @ Q @ G.T


@eqx.filter_jit
def _smoother(model, filtered: GaussianFilterResult, us) -> SmootherResult:
    ms, Ps, ts = filtered.means, filtered.covariances, filtered.ts
    m_preds = filtered.predicted_means[1:]
    Gs, bases = jax.vmap(lambda *a: _smoother_gain(model, *a))(
        ms[:-1], Ps[:-1], filtered.predicted_covariances[1:], ts[:-1], ts[1:], us[:-1]
    )

    def body(carry, inputs):
        m_next, P_next = carry
        m, G, base, m_pred = inputs
        m_s = m + G @ (m_next - m_pred)
        P_s = symmetrise(base + G @ P_next @ G.T)
        return (m_s, P_s), (m_s, P_s, P_next @ G.T)

    _, (means, covs, cross) = lax.scan(body, (ms[-1], Ps[-1]), (ms[:-1], Gs, bases, m_preds), reverse=True)
    return SmootherResult(
        ts=ts,
        means=jnp.concatenate([means, ms[-1:]], axis=0),
        covariances=jnp.concatenate([covs, Ps[-1:]], axis=0),
        cross_covariances=cross,
        log_likelihood=filtered.log_likelihood,
    )


def _check_filter_result(filtered: GaussianFilterResult, ts, mean, cov) -> None:
    if ts is not None or mean is not None or cov is not None:
        raise ValueError(
            "`ts`, `mean` and `cov` are for running the filter on measurements; a GaussianFilterResult already holds "
            "its times and its prior."
        )


def _smoother_controls(model, us, T):
    """Controls for a smoother given a filter result: only a nonlinear-type model needs them (its Jacobians)."""
    m = model.control_dim
    if us is None:
        if m and not isinstance(model, LinearGaussianSSM):
            raise ValueError(f"`us` is required: the model has control_dim={m} and its Jacobians depend on it.")
        return jnp.zeros((T, m))
    us = as_float_array(us, "us")
    if us.ndim == 1 and m == 1:
        us = us[:, None]
    if us.ndim != 2 or us.shape[1] != m or us.shape[0] not in (T, T - 1):
        raise ValueError(f"`us` must have shape ({T}, {m}) (time, control), got {tuple(us.shape)}.")
    if us.shape[0] == T - 1:
        us = jnp.concatenate([us, us[-1:]], axis=0)
    return us


def rts_smoother(
    model, filtered_or_ys, us=None, ts=None, *, mean=None, cov=None, parallel: bool = False
) -> SmootherResult:
    """Rauch–Tung–Striebel smoother: ``p(x_k | y_{0:T-1})`` and the lag-one cross-covariances.

    Arguments:
        model: the twin the filter ran on (see :func:`kalman_filter`).
        filtered_or_ys: a :class:`GaussianFilterResult` of :func:`kalman_filter` on ``model``, or measurements
            ``(T, obs)`` to run it on first.
        us: controls ``(T, control)``; with a filter result only needed by a non-``LinearGaussianSSM`` model with
            controls (its Jacobians are re-evaluated at the filtered means).
        ts, mean, cov: as :func:`kalman_filter` (only with measurements).
        parallel: the associative-scan smoother, :func:`parallel_rts_smoother` (``LinearGaussianSSM`` only).

    Returns:
        A :class:`SmootherResult`: smoothed means ``(T, n)``, covariances ``(T, n, n)``, ``Cov(x_{k+1}, x_k | y)``
        ``(T-1, n, n)`` and the filter's log-likelihood.

    Raises:
        ValueError: as :func:`kalman_filter`; for ``ts`` / ``mean`` / ``cov`` given with a filter result.

    Example:
        ```python
        smoothed = rts_smoother(lgssm, kalman_filter(lgssm, ys, us))
        ```
    """
    check_model(model)
    if isinstance(filtered_or_ys, GaussianFilterResult):
        filtered = filtered_or_ys
        _check_filter_result(filtered, ts, mean, cov)
        us = _smoother_controls(model, us, filtered.means.shape[0]).astype(filtered.means.dtype)
    else:
        ys, us, ts, mean, cov = _prepare(model, filtered_or_ys, us, ts, mean, cov)
        filtered = _run_filter(model, ys, us, ts, mean, cov, parallel)
    if parallel:
        from .parallel import _check_linear_gaussian, _parallel_smoother

        _check_linear_gaussian(model)
        return _parallel_smoother(model, filtered)
    return _smoother(model, filtered, us)
