"""``twinjax.simulate``: one rollout of a twin — ODE, SDE or discrete — with open-loop or feedback controls.

This is ancestral sampling of the chapter's joint (Principles, "The Probabilistic Foundation of the Digital Twin"):

``p(φ, x_{0:T}, y_{0:T}, u_{0:T-1})``
``= p(φ) p(x_0|φ) p(y_0|x_0,φ) Π_t p(u_t|y_{0:t}) p(x_{t+1}|x_t,u_t,φ) p(y_{t+1}|x_{t+1},φ)``

``φ ~ p(φ)`` when a :class:`~twinjax.Params` spec is given, ``x_0`` from the model's initial distribution when
``x0=None``, each interval integrated by diffrax (with a Brownian path for SDE twins), measurements drawn from the
sensor model, and controls either a zero-order-hold array or a feedback policy evaluated inside the loop.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import as_float_array, check_finite_leaves, check_times
from .._types import ArrayLike, Key
from ..model.discretisation import Discretisation
from ..model.dynamics import AbstractDiscreteDynamics, AbstractDynamics, AbstractSDEDynamics
from ..model.params import Params
from ..model.ssm import AbstractStateSpaceModel, StateSpaceModel
from ..model.status import Status, combine, describe
from . import _progress
from .policy import as_policy
from .trajectory import Trajectory


def as_model(model) -> AbstractStateSpaceModel:
    """Accept a bare dynamics object as a twin without sensors."""
    if isinstance(model, AbstractStateSpaceModel):
        return model
    if isinstance(model, (AbstractDynamics, AbstractDiscreteDynamics)):
        if isinstance(model, AbstractDiscreteDynamics):
            raise ValueError("A bare discrete-time dynamics needs `dt`: wrap it in tj.StateSpaceModel(..., dt=...).")
        return StateSpaceModel(model)
    raise ValueError(f"`model` must be a tj.StateSpaceModel (or a dynamics module), got {type(model).__name__}.")


def with_discretisation(model, solver=None, stepsize_controller=None, substeps=None, max_steps=None, adjoint=None):
    """A copy of ``model`` whose diffrax settings are overridden by the non-``None`` arguments."""
    if all(v is None for v in (solver, stepsize_controller, substeps, max_steps, adjoint)):
        return model
    if not isinstance(model, StateSpaceModel):
        return model
    disc = model.discretisation
    changes = {
        k: v
        for k, v in dict(
            solver=solver,
            stepsize_controller=stepsize_controller,
            substeps=substeps,
            max_steps=max_steps,
            adjoint=adjoint,
        ).items()
        if v is not None
    }
    return eqx.tree_at(lambda m: m.discretisation, model, Discretisation(**{**_fields(disc), **changes}))


def _fields(module):
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)}


def state_dim(model: AbstractStateSpaceModel, x0=None) -> int:
    """The state dimension, from ``x0`` or the initial distribution."""
    if x0 is not None:
        return jnp.shape(x0)[-1]
    if model.initial is None:
        raise ValueError("`x0` is required: the model has no initial distribution to draw it from.")
    return model.initial.mean.shape[0]


def check_x0(model, x0, batch: int | None = None):
    """Validate ``x0`` against the model (shape ``(state,)``, or ``(members, state)`` when ``batch`` is given)."""
    if x0 is None:
        if model.initial is None:
            raise ValueError("`x0` is None but the model has no `initial` distribution to draw it from.")
        return None
    x0 = as_float_array(x0, "x0")
    expect_ndim = 1 if batch is None else 2
    if x0.ndim != expect_ndim:
        shape = "(state,)" if batch is None else f"({batch}, state)"
        raise ValueError(f"`x0` must have shape {shape}, got {tuple(x0.shape)}.")
    if batch is not None and x0.shape[0] != batch:
        raise ValueError(f"`x0` must have one row per member: shape ({batch}, state), got {tuple(x0.shape)}.")
    if model.initial is not None and x0.shape[-1] != model.initial.mean.shape[0]:
        raise ValueError(
            f"`x0` must have {model.initial.mean.shape[0]} state entries (the model's initial distribution has "
            f"that many), got shape {tuple(x0.shape)}."
        )
    check_finite_leaves(x0, "x0")
    return x0


def check_controls(model, controls, n_times: int, batch: int | None = None):
    """Return ``(open_loop_array_or_None, policy_or_None)`` with the array padded to ``(n_times, control)``."""
    policy = as_policy(controls)
    if policy is not None:
        return None, policy
    if controls is None:
        return None, None
    us = as_float_array(controls, "controls")
    lead = () if batch is None else (batch,)
    if us.ndim == len(lead) + 1 and model.control_dim == 1:
        us = us[..., None]
    if us.ndim != len(lead) + 2 or us.shape[: len(lead)] != lead or us.shape[-2] not in (n_times - 1, n_times):
        shape = ", ".join([*map(str, lead), f"{n_times} or {n_times - 1}", "control"])
        raise ValueError(f"`controls` must have shape ({shape}) to match `ts`, got {tuple(us.shape)}.")
    if model.control_dim and us.shape[-1] != model.control_dim:
        raise ValueError(f"`controls` must have {model.control_dim} columns (model.control_dim), got {us.shape[-1]}.")
    if us.shape[-2] == n_times - 1:
        us = jnp.concatenate([us, us[..., -1:, :]], axis=-2)
    return us, None


def _needs_key(model, x0, params, policy) -> bool:
    return x0 is None or params is not None or model.is_stochastic or model.observation is not None


def _rollout(model, x0, ts, us, policy, key, progress: bool):
    """The compiled core: one path (vmappable). Returns ``(xs, ys, us, status)``."""
    k_obs, k_proc, k_pol = jax.random.split(key, 3)
    n = ts.shape[0]
    obs = model.observation
    sde = isinstance(model.dynamics, AbstractSDEDynamics)
    u_dim = model.control_dim if us is None else us.shape[-1]
    u_zero = jnp.zeros((u_dim,), x0.dtype)
    brownian = None
    if sde:
        disc = model.discretisation.resolved(stochastic=True)
        tol = (ts[-1] - ts[0]) / ((n - 1) * disc.substeps * 16)
        brownian = model.brownian_motion(k_proc, ts[0], ts[-1], x0, u_zero, tol=tol)

    def measure(k, t, x, u):
        if obs is None:
            return None
        return obs.sample(jax.random.fold_in(k_obs, k), t, x, u)

    def decide(k, t, x, u_prev, pstate):
        if policy is None:
            u = u_zero if us is None else us[k]
            return measure(k, t, x, u), u, pstate
        y = measure(k, t, x, u_prev)
        u, pstate = policy(t, y, pstate, jax.random.fold_in(k_pol, k))
        return y, jnp.asarray(u, x0.dtype).reshape(u_dim), pstate

    def body(carry, k):
        x, u_prev, pstate, status = carry
        t0, t1 = ts[k], ts[k + 1]
        y, u, pstate = decide(k, t0, x, u_prev, pstate)
        x1, st = model.sample_transition_with_status(jax.random.fold_in(k_proc, k), t0, t1, x, u, brownian=brownian)
        if progress:
            _progress.tick(k, n - 1)
        return (x1, u, pstate, combine(status, st)), (x, y, u)

    pstate0 = None if policy is None else policy.init()
    carry0 = (x0, u_zero, pstate0, jnp.asarray(Status.successful, jnp.int32))
    (x_last, u_prev, pstate, status), (xs, ys, used) = jax.lax.scan(body, carry0, jnp.arange(n - 1))
    y_last, u_last, _ = decide(n - 1, ts[-1], x_last, u_prev, pstate)
    xs = jnp.concatenate([xs, x_last[None]])
    used = jnp.concatenate([used, u_last[None]])
    ys = None if obs is None else jnp.concatenate([ys, y_last[None]])
    return xs, ys, used, status


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _simulate_jit(model, x0, ts, us, policy, key, params, progress, throw):
    k_x0, k_phi, k_roll = jax.random.split(key, 3)
    phi = None
    if params is not None:
        phi = params.sample(k_phi, model)
        model = params.with_values(model, phi)
    if x0 is None:
        x0 = model.initial.sample(k_x0)
    xs, ys, used, status = _rollout(model, x0, ts, us, policy, k_roll, progress)
    if throw:
        xs = eqx.error_if(
            xs,
            status != Status.successful,
            "simulate: a solve failed (max_steps reached or non-finite state). "
            "Pass throw=False to inspect `Trajectory.status`, or change the solver / `max_steps`.",
        )
    return Trajectory(ts, xs, ys, used, status, phi)


def simulate(
    model,
    x0: ArrayLike | None,
    ts: ArrayLike,
    *,
    controls=None,
    key: Key | None = None,
    params: Params | None = None,
    solver=None,
    stepsize_controller=None,
    substeps: int | None = None,
    max_steps: int | None = None,
    adjoint=None,
    throw: bool = True,
    progress: bool = False,
) -> Trajectory:
    """Simulate one trajectory of a twin: ODE or SDE (diffrax) or discrete, open-loop or in feedback.

    Each interval ``[t_k, t_{k+1}]`` is its own solve with the control ``u_k`` held (zero-order hold). SDE twins are
    driven by one Brownian path over ``[ts[0], ts[-1]]`` drawn from ``key``; ODE/discrete twins with
    ``process_noise`` get additive Gaussian noise per interval. Measurements are drawn from the twin's sensor model.

    With a feedback policy, the measurement ``y_k`` is read *before* the new command ``u_k = π(t_k, y_{0:k})`` is
    applied (the sensor sees ``u_{k-1}``, zero at ``k = 0``); for sensors that do not depend on ``u`` this is the
    chapter's factorisation exactly. With an open-loop array, ``y_k = h(t_k, x_k, u_k)``.

    Arguments:
        model: a :class:`~twinjax.StateSpaceModel` or :class:`~twinjax.LinearGaussianSSM` (or a bare ODE dynamics).
        x0: the initial state, shape ``(state,)``; ``None`` draws it from ``model.initial`` with ``key``.
        ts: strictly increasing save / sampling times, shape ``(time,)`` (s).
        controls: ``None``; an array ``(time, control)`` or ``(time - 1, control)`` held over each interval; or a
            feedback policy — a :class:`~twinjax.AbstractPolicy` or a callable ``fn(t, y) -> u``.
        key: PRNG key; required for noise, ``x0=None`` or ``params``.
        params: draw ``φ`` from this spec's prior first (ancestral sampling); the draw is in ``Trajectory.params``.
        solver, stepsize_controller, substeps, max_steps, adjoint: override the model's
            :class:`~twinjax.Discretisation` for this call.
        throw: raise if any interval fails; ``False`` reports it in ``Trajectory.status`` instead.
        progress: show a progress bar over the intervals.

    Returns:
        A :class:`~twinjax.Trajectory` ``(ts, xs, ys, us, status, params)``.

    Raises:
        ValueError: wrong ``x0`` / ``controls`` shape, unsorted ``ts``, a non-finite parameter, or a missing ``key``.

    Example:
        ```python
        path = tj.simulate(twin, None, jnp.arange(0.0, 20.0, twin.dt), key=jax.random.key(0))
        path.xs.shape  # (400, 2)
        ```

    References:
        Chapter 001, "The Probabilistic Foundation of the Digital Twin" (the joint factorisation and ancestral
        sampling).
    """
    model = as_model(model)
    model = with_discretisation(model, solver, stepsize_controller, substeps, max_steps, adjoint)
    ts = check_times(ts, "ts")
    x0 = check_x0(model, x0)
    us, policy = check_controls(model, controls, ts.shape[0])
    if policy is not None and model.observation is None:
        raise ValueError("A feedback policy needs measurements: the model has no `observation`.")
    check_finite_leaves(model, "model")
    if params is not None and not isinstance(params, Params):
        raise ValueError(f"`params` must be a tj.Params spec, got {type(params).__name__}.")
    if key is None:
        if _needs_key(model, x0, params, policy):
            raise ValueError(
                "`key` is required: this simulation draws random numbers (initial state, parameters, process or "
                "measurement noise). Pass key=jax.random.key(seed)."
            )
        key = jax.random.key(0)
    return _simulate_jit(model, x0, ts, us, policy, key, params, progress, throw)


def raise_if_failed(traj: Trajectory) -> Trajectory:
    """Raise a ``RuntimeError`` summarising failed members (e.g. ``"2 nonfinite"``) if any solve failed."""
    if bool(jnp.any(traj.status != Status.successful)):
        raise RuntimeError(f"Simulation failed for some members: {describe(traj.status)}.")
    return traj
