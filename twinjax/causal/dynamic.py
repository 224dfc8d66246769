r"""Counterfactuals for dynamical twins: abduction by smoothing, action by ``do``, prediction by the same noise.

A state-space twin with additive process noise is a structural causal model unrolled in time:

$$ x_{k+1} = f_\varphi(t_k, t_{k+1}, x_k, u_k) + w_k, \qquad y_k = h(t_k, x_k, u_k) + v_k, $$

whose exogenous variables — the unit's "U" — are the initial state ``x_0`` and the process-noise realisation
``w_{0:T-2}`` (the measurement noise ``v`` only affects what was seen). Pearl's three steps become:

1. **Abduction**: smooth the recorded measurements under the factual controls, ``p(x_{0:T-1} | y_{0:T-1}, u)``, and
   read off the noise ``w_k = x_{k+1} - f(t_k, t_{k+1}, x_k, u_k)`` — at the smoothed means (a point estimate) and,
   optionally, for joint posterior draws of the path (forward-filtering backward-sampling on the filter's Gaussian).
   Parameters ``φ`` are abducted beforehand by calibration (:mod:`twinjax.calibrate`); pass the calibrated twin, or
   its values as ``params``.
2. **Action**: replace the controls (``do(controls=u')``) and/or parameters (``do(params={"dynamics.gain": g})``).
3. **Prediction**: roll the modified transition forward from the abducted ``x_0`` adding the *same* ``w_k``
   (``lax.scan``; the twin's own ``transition`` — the diffrax solve for an ODE twin).

For a linear-Gaussian twin the point counterfactual is exact: it equals the smoothed factual mean plus the
deterministic response to the change, ``x'_k = m^s_k + \sum_{j<k} A^{k-1-j} B (u'_j - u_j)``. Under the identity
intervention it reproduces the smoothed path.

References:
    J. Pearl, *Causality*, 2nd ed., 2009, §7.1 (abduction–action–prediction). Chapter 000, "Causal reasoning"
    (the HVAC setpoint counterfactual). S. Särkkä, *Bayesian Filtering and Smoothing*, 2013, §8.2 and §9.1 (RTS
    smoothers); C. K. Carter and R. Kohn, Biometrika 81(3), 1994 (forward-filtering backward-sampling).
"""

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array, Float, Int, Key
from ..inference._base import forward_differentiable, symmetrise
from ..inference.kalman import kalman_filter
from ..inference.nonlinear import extended_kalman_filter
from ..model.distributions import _psd_sqrt
from ..model.params import get_path, set_path
from ..model.ssm import AbstractStateSpaceModel
from ..model.status import Status, combine
from ..simulate.trajectory import Trajectory
from .intervention import Intervention

_SMOOTHERS = ("kalman", "ekf")


class CounterfactualResult(eqx.Module):
    """The outcome of :func:`twin_counterfactual`.

    **Fields:**

    - `ts`: the times ``(T,)``.
    - `factual_states`: smoothed means ``E[x_k | y]`` under the factual controls, ``(T, n)``.
    - `factual_covariances`: smoothed covariances, ``(T, n, n)``.
    - `factual_outputs`: the sensor's noise-free output ``h(t_k, x_k, u_k)`` on the smoothed path, ``(T, p)``, or
      ``None`` for a twin without sensor.
    - `noise`: the abducted process noise ``w_k = m^s_{k+1} - f(m^s_k, u_k)``, ``(T-1, n)``.
    - `controls`: the counterfactual controls ``u'``, ``(T, m)``.
    - `states`: the point counterfactual ``x'`` (abducted ``x_0`` and ``w``), ``(T, n)``.
    - `outputs`: ``h(t_k, x'_k, u'_k)`` of the counterfactual, ``(T, p)``, or ``None``.
    - `status`: worst :class:`~twinjax.Status` of the counterfactual solves (0: all succeeded).
    - `sample_states`, `sample_outputs`, `sample_noise`: counterfactuals of ``S`` joint posterior draws of
      ``(x_0, w)``, ``(S, T, n)``, ``(S, T, p)``, ``(S, T-1, n)``; ``None`` unless ``n_samples`` was given.
    """

    ts: Float[Array, " time"]
    factual_states: Float[Array, "time state"]
    factual_covariances: Float[Array, "time state state"]
    factual_outputs: Float[Array, "time obs"] | None
    noise: Float[Array, "time_1 state"]
    controls: Float[Array, "time control"]
    states: Float[Array, "time state"]
    outputs: Float[Array, "time obs"] | None
    status: Int[Array, ""]
    sample_states: Float[Array, "sample time state"] | None = None
    sample_outputs: Float[Array, "sample time obs"] | None = None
    sample_noise: Float[Array, "sample time_1 state"] | None = None


def _evidence(evidence):
    if isinstance(evidence, Trajectory):
        if evidence.ys is None:
            raise ValueError("twin_counterfactual: `evidence` is a Trajectory without measurements (ys is None).")
        if evidence.xs.ndim != 2:
            raise ValueError("twin_counterfactual: `evidence` must be one trajectory, not an ensemble.")
        return evidence.ts, evidence.ys, evidence.us
    if isinstance(evidence, tuple) and len(evidence) == 3:
        return tuple(jnp.asarray(a) for a in evidence)
    raise TypeError(
        "twin_counterfactual: `evidence` must be a tj.Trajectory or a tuple (ts, ys, us), "
        f"got {type(evidence).__name__}."
    )


def _controls(name, us, T, m, dtype):
    us = jnp.asarray(us, dtype)
    if us.ndim == 1 and m == 1:
        us = us[:, None]
    if us.ndim != 2 or us.shape[1] != m or us.shape[0] not in (T, T - 1):
        raise ValueError(f"twin_counterfactual: {name} must have shape ({T}, {m}) (time, control), got {us.shape}.")
    if us.shape[0] == T - 1:
        us = jnp.concatenate([us, us[-1:]], axis=0)
    return us


def _with_params(model, params: Mapping[str, Any] | None, name: str):
    if params is None:
        return model
    if not isinstance(params, Mapping):
        raise TypeError(f"twin_counterfactual: {name} must map dotted parameter paths to values.")
    for path, value in params.items():
        old = get_path(model, path)  # raises ValueError naming the path
        value = jnp.asarray(value, jnp.result_type(old, float))
        if jnp.shape(old) != value.shape:
            raise ValueError(
                f"twin_counterfactual: {name}[{path!r}] must have shape {jnp.shape(old)}, got {value.shape}."
            )
        model = set_path(model, path, value)
    return model


def _backward(model, filtered, us, key, n_samples):
    """RTS means/covariances and (optionally) FFBS draws from the filter's Gaussian, with ``F_k`` linearised at the
    filtered means (exact for a linear-Gaussian twin; the extended smoother's linearisation otherwise)."""
    ms, Ps, ts = filtered.means, filtered.covariances, filtered.ts
    mp, Pp = filtered.predicted_means[1:], filtered.predicted_covariances[1:]
    fwd = forward_differentiable(model)  # jacfwd cannot go through diffrax's default checkpointed adjoint
    Fs = jax.vmap(lambda m, t0, t1, u: jax.jacfwd(lambda x: fwd.transition(t0, t1, x, u))(m))(
        ms[:-1], ts[:-1], ts[1:], us[:-1]
    )

    def gain(P, F, P_pred):
        chol = jnp.linalg.cholesky(P_pred)
        return jax.scipy.linalg.cho_solve((chol, True), F @ P).T

    Gs = jax.vmap(gain)(Ps[:-1], Fs, Pp)

    def body(carry, inputs):
        m_next, P_next = carry
        m, P, m_pred, P_pred, G = inputs
        m_s = m + G @ (m_next - m_pred)
        P_s = symmetrise(P + G @ (P_next - P_pred) @ G.T)
        return (m_s, P_s), (m_s, P_s)

    _, (m_s, P_s) = jax.lax.scan(body, (ms[-1], Ps[-1]), (ms[:-1], Ps[:-1], mp, Pp, Gs), reverse=True)
    means = jnp.concatenate([m_s, ms[-1:]])
    covs = jnp.concatenate([P_s, Ps[-1:]])
    if n_samples is None:
        return means, covs, None
    T, n = ms.shape
    z = jax.random.normal(key, (T, n_samples, n), ms.dtype)
    x_last = ms[-1] + z[-1] @ _psd_sqrt(Ps[-1]).T

    def sample_body(x_next, inputs):
        m, P, m_pred, P_pred, G, zk = inputs
        cond_cov = symmetrise(P - G @ P_pred @ G.T)
        x = m + (x_next - m_pred) @ G.T + zk @ _psd_sqrt(cond_cov).T
        return x, x

    _, xs = jax.lax.scan(sample_body, x_last, (ms[:-1], Ps[:-1], mp, Pp, Gs, z[:-1]), reverse=True)
    samples = jnp.concatenate([xs, x_last[None]])  # (T, S, n)
    return means, covs, jnp.swapaxes(samples, 0, 1)


def _abduct_noise(model, xs, ts, us):
    f = jax.vmap(model.transition)(ts[:-1], ts[1:], xs[:-1], us[:-1])
    return xs[1:] - f


def rollout_with_noise(
    model: AbstractStateSpaceModel,
    x0: Float[Array, " state"],
    ts: Float[Array, " time"],
    us: Float[Array, "time control"],
    noise: Float[Array, "time_1 state"],
) -> tuple[Float[Array, "time state"], Int[Array, ""]]:
    """Prediction step: ``x_{k+1} = f(t_k, t_{k+1}, x_k, u_k) + w_k`` from ``x_0`` with a given noise sequence.

    **Arguments:** `model` (its noise-free ``transition``), `x0` ``(n,)``, `ts` ``(T,)``, `us` ``(T, m)`` (the last row
    unused), `noise` ``(T-1, n)``.

    **Returns:** the states ``(T, n)`` and the worst :class:`~twinjax.Status` of the solves.
    """

    def body(carry, inputs):
        x, status = carry
        t0, t1, u, w = inputs
        x1, st = model.transition_with_status(t0, t1, x, u)
        x1 = x1 + w
        return (x1, combine(status, st)), x1

    carry0 = (x0, jnp.asarray(Status.successful, jnp.int32))
    (_, status), xs = jax.lax.scan(body, carry0, (ts[:-1], ts[1:], us[:-1], noise))
    return jnp.concatenate([x0[None], xs]), status


def _outputs(model, ts, xs, us):
    if model.observation is None:
        return None
    return jax.vmap(model.observation.mean)(ts, xs, us)


@eqx.filter_jit
def _counterfactual(model, cf_model, ts, ys, us, us_cf, smoother, key, n_samples):
    if smoother == "kalman":
        filtered = kalman_filter(model, ys, us, ts)
    else:
        filtered = extended_kalman_filter(model, ys, us, ts)
    means, covs, draws = _backward(model, filtered, us, key, n_samples)
    noise = _abduct_noise(model, means, ts, us)
    states, status = rollout_with_noise(cf_model, means[0], ts, us_cf, noise)
    sample_states = sample_outputs = sample_noise = None
    if draws is not None:
        sample_noise = jax.vmap(lambda xs: _abduct_noise(model, xs, ts, us))(draws)
        sample_states, sample_status = jax.vmap(lambda x0, w: rollout_with_noise(cf_model, x0, ts, us_cf, w))(
            draws[:, 0], sample_noise
        )
        status = jnp.maximum(status, jnp.max(sample_status)).astype(jnp.int32)
        if cf_model.observation is not None:
            sample_outputs = jax.vmap(lambda xs: _outputs(cf_model, ts, xs, us_cf))(sample_states)
    return CounterfactualResult(
        ts=ts,
        factual_states=means,
        factual_covariances=covs,
        factual_outputs=_outputs(model, ts, means, us),
        noise=noise,
        controls=us_cf,
        states=states,
        outputs=_outputs(cf_model, ts, states, us_cf),
        status=status,
        sample_states=sample_states,
        sample_outputs=sample_outputs,
        sample_noise=sample_noise,
    )


def twin_counterfactual(
    twin: AbstractStateSpaceModel,
    evidence,
    intervention: Intervention,
    *,
    smoother: str = "ekf",
    key: Key | None = None,
    n_samples: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> CounterfactualResult:
    r"""What would this unit have done under ``intervention``, given what it did? (abduction–action–prediction)

    Abduction smooths ``evidence`` under its factual controls and recovers the unit's exogenous noise
    ``w_k = x_{k+1} - f(x_k, u_k)`` (and the initial state); action applies ``do(controls=u')`` and/or
    ``do(params={...})``; prediction rolls the modified twin forward from the abducted ``x_0`` with the same ``w``.
    With ``n_samples``, the same is done for joint posterior draws of the path (forward-filtering backward-sampling),
    giving a distribution of counterfactuals; the point counterfactual uses the smoothed means.

    Parameters are not smoothed: abduct them first by calibration (:mod:`twinjax.calibrate`) and pass the calibrated
    twin, or the calibrated values as ``params`` (they apply to the factual and the counterfactual world alike; a
    ``do(params=...)`` then overrides them in the counterfactual one).

    **Arguments:**

    - `twin`: a :class:`~twinjax.StateSpaceModel` with additive ``process_noise`` (or a
      :class:`~twinjax.LinearGaussianSSM`) and a sensor.
    - `evidence`: the recorded unit — a :class:`~twinjax.Trajectory` (its ``ts``, ``ys``, ``us``) or ``(ts, ys, us)``.
    - `intervention`: from :func:`twinjax.causal.do`; its ``controls`` ``(T, m)`` or ``(T-1, m)`` and ``params``
      (dotted paths, e.g. ``"dynamics.gain_W_K"``) are used; SCM ``variables`` are an error here.
    - `smoother`: ``"ekf"`` (extended RTS; any differentiable twin) or ``"kalman"`` (the Kalman filter + RTS).
    - `key`: PRNG key for the posterior draws (required with ``n_samples``).
    - `n_samples`: number of joint posterior draws of ``(x_0, w)``; ``None`` for the point counterfactual only.
    - `params`: abducted (calibrated) parameter values, dotted path → value, set on the twin before anything else.

    **Returns:** a :class:`CounterfactualResult`.

    **Raises:** `TypeError` for an `intervention` that is not an `Intervention` or a bad `evidence`; `ValueError` for
    SCM variables in the intervention, an unknown `smoother`, control sequences of the wrong shape, unknown
    parameter paths, a twin without process noise or sensor, or ``n_samples`` without ``key``.

    **Example:**

    ```python
    path = tj.simulate(twin, None, ts, controls=us, key=k1)
    cf = twin_counterfactual(twin, path, tj.causal.do(controls=us_alternative))
    cf.states  # what the states would have been under us_alternative, same noise
    ```
    """
    if not isinstance(twin, AbstractStateSpaceModel):
        raise TypeError(f"twin_counterfactual: `twin` must be a twinjax state-space model, got {type(twin).__name__}.")
    if not isinstance(intervention, Intervention):
        raise TypeError(
            f"twin_counterfactual: `intervention` must come from tj.causal.do(...), got {type(intervention).__name__}."
        )
    if intervention.variables:
        raise ValueError(
            f"twin_counterfactual: a twin understands do(controls=..., params=...), not SCM variables "
            f"{intervention.targets}."
        )
    if smoother not in _SMOOTHERS:
        raise ValueError(f"twin_counterfactual: `smoother` must be one of {_SMOOTHERS}, got {smoother!r}.")
    if twin.observation is None:
        raise ValueError("twin_counterfactual: `twin` needs a sensor (observation) to abduct from measurements.")
    if getattr(twin, "process_noise", None) is None:
        raise ValueError(
            "twin_counterfactual: `twin` needs additive `process_noise` (the exogenous noise that is abducted)."
        )
    if n_samples is not None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"twin_counterfactual: `n_samples` must be a positive integer, got {n_samples!r}.")
        if key is None:
            raise ValueError("twin_counterfactual: `key` is required with `n_samples` (posterior draws).")
    if key is None:
        key = jax.random.key(0)
    ts, ys, us = _evidence(evidence)
    dtype = jnp.result_type(ys, float)
    ts, ys = jnp.asarray(ts, dtype), jnp.asarray(ys, dtype)
    if ys.ndim == 1:
        ys = ys[:, None]
    T, m = ys.shape[0], twin.control_dim
    if ts.shape != (T,):
        raise ValueError(f"twin_counterfactual: evidence times must have shape ({T},), got {ts.shape}.")
    if T < 2:
        raise ValueError(f"twin_counterfactual: evidence needs at least 2 time points, got {T}.")
    us = _controls("evidence controls", us, T, m, dtype)
    us_cf = us if intervention.controls is None else _controls("do(controls=...)", intervention.controls, T, m, dtype)
    model = _with_params(twin, params, "params")
    cf_model = _with_params(model, intervention.params, "do(params=...)")
    return _counterfactual(model, cf_model, ts, ys, us, us_cf, smoother, key, n_samples)
