r"""Gradient-based system identification: fit a twin's parameters through the ODE solver.

The unknowns are the unconstrained vector ``z`` of a :class:`~twinjax.Params` spec (plus nuisance unknowns such as
multiple-shooting nodes); the loss is one of :mod:`twinjax.calibrate.objectives`. Three kinds of optimiser run in the
same compiled loop:

- an **optimistix least-squares solver** (``optx.LevenbergMarquardt``, ``optx.GaussNewton``; strings
  ``"levenberg_marquardt"`` / ``"gauss_newton"``) on the whitened residual vector — the default for the trajectory
  losses: quadratic convergence near the optimum, the Jacobian by forward mode through diffrax;
- an **optimistix minimiser** (``optx.BFGS``; ``"bfgs"``) on the scalar loss — the default for the filter loss and
  for MAP fits (``prior=True``);
- any **optax** ``GradientTransformation`` (``optax.adam(1e-2)``; ``"adam"``) for a fixed budget of steps.

The algorithm is a pure pair, as optax and blackjax: :func:`fit_init` makes a :class:`FitState`, :func:`fit_step`
advances it by one iteration. :func:`fit` runs them in one compiled ``lax.while_loop`` (or chunks of it with a tqdm bar
when ``progress=True``) and returns a :class:`FitResult` in physical units. :func:`multistart` vmaps the same loop over
many starting points in one compiled call; a failed start (non-finite loss, solver failure) is reported in its status
and does not affect the others.

Identifiability at the optimum: :func:`fisher_information` (``JᵀJ`` of the whitened residuals, or the Hessian of the
filter's negative log-likelihood), :func:`laplace` (the Gaussian approximation of the posterior in ``z``, with
physical standard deviations by the delta method and intervals by transforming normal quantiles) and
:func:`profile_likelihood` (the other parameters re-optimised along a grid; the likelihood-ratio interval).

References:
    Chapter 001, "The Probabilistic Foundation of the Digital Twin" (the posterior ``p(φ | y, u)``; its Laplace
    approximation); L. Ljung, *System Identification*, 2nd ed., 1999, ch. 7 and 9 (prediction-error methods,
    asymptotic covariance ``(JᵀJ)⁻¹``); A. Raue et al., "Structural and practical identifiability analysis of
    partially observed dynamical models by exploiting the profile likelihood", *Bioinformatics* 25, 2009.
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
from jax.scipy.stats import norm as _normal

from .._types import Array, Bool, Float, Int, Key
from ..model.discretisation import Discretisation
from ..model.params import Params
from ..model.status import Status, describe
from . import objectives as _obj
from .objectives import AbstractObjective, make_objective, unconstrain

OPTIMIZER_NAMES = ("levenberg_marquardt", "gauss_newton", "bfgs", "adam")


# -------------------------------------------------------------------------------------------------- the optimisers


def resolve_optimizer(optimizer, objective: AbstractObjective, *, rtol=1e-8, atol=1e-8, learning_rate=1e-2):
    """The optimiser object for ``optimizer`` (a name, an optax transformation, an optimistix solver, or ``None``:
    Levenberg–Marquardt for least-squares objectives without a prior, BFGS otherwise).

    Raises:
        ValueError: for an unknown name or type, or a least-squares solver on an objective without residuals (the
            filter loss) or with a prior.
    """
    if optimizer is None:
        optimizer = "levenberg_marquardt" if objective.is_least_squares and not objective.prior else "bfgs"
    if isinstance(optimizer, str):
        table = {
            "levenberg_marquardt": lambda: optx.LevenbergMarquardt(rtol=rtol, atol=atol),
            "gauss_newton": lambda: optx.GaussNewton(rtol=rtol, atol=atol),
            "bfgs": lambda: optx.BFGS(rtol=rtol, atol=atol),
            "adam": lambda: optax.adam(learning_rate),
        }
        if optimizer not in table:
            raise ValueError(
                f"`optimizer` must be one of {OPTIMIZER_NAMES}, an optax GradientTransformation or an optimistix "
                f"least-squares solver / minimiser, got {optimizer!r}."
            )
        optimizer = table[optimizer]()
    if isinstance(optimizer, optx.AbstractLeastSquaresSolver):
        if not objective.is_least_squares:
            raise ValueError(
                f"`optimizer` {type(optimizer).__name__} needs residuals, but the {type(objective).__name__} has none "
                "(the filter loss): use a minimiser (optx.BFGS, 'bfgs') or an optax optimiser."
            )
        if objective.prior:
            raise ValueError(
                f"`optimizer` {type(optimizer).__name__} minimises a sum of squares and cannot add the prior term: "
                "with prior=True use a minimiser ('bfgs') or an optax optimiser."
            )
        return optimizer
    if isinstance(optimizer, (optx.AbstractMinimiser, optax.GradientTransformation)):
        return optimizer
    raise ValueError(
        f"`optimizer` must be one of {OPTIMIZER_NAMES}, an optax GradientTransformation or an optimistix "
        f"least-squares solver / minimiser, got {type(optimizer).__name__}."
    )


def _is_optax(optimizer) -> bool:
    return isinstance(optimizer, optax.GradientTransformation)


def _forward(objective) -> bool:
    return objective.adjoint in ("forward", "direct")


class _OptxProblem(eqx.Module):
    """What an optimistix solver needs: the closure-converted ``fn(z, objective)``, its output structures, options."""

    fn: object
    f_struct: object
    aux_struct: object
    options: dict = eqx.field(static=True)


def _optx_problem(objective, optimizer, z):
    if isinstance(optimizer, optx.AbstractLeastSquaresSolver):

        def fn(y, obj):
            return obj.residuals(y), None

        options = {"jac": "fwd" if _forward(objective) else "bwd"}
    else:

        def fn(y, obj):
            return obj.loss(y), None  # its custom_jvp rule gives the gradient in the objective's adjoint mode

        options = {"autodiff_mode": "bwd"}
    fn = eqx.filter_closure_convert(fn, z, objective)
    f_struct, aux_struct = fn.out_struct
    return _OptxProblem(fn, f_struct, aux_struct, options)


_TAGS = frozenset()


def _optx_init(problem, objective, optimizer, z):
    return optimizer.init(problem.fn, z, objective, problem.options, problem.f_struct, problem.aux_struct, _TAGS)


# ----------------------------------------------------------------------------------------------- the pure init / step


class FitState(eqx.Module):
    """The state of a fit between iterations.

    Attributes:
        z: the current (last accepted) unknowns ``(unknowns,)``.
        opt_state: the optimiser's state (its array part; optimistix states are rebuilt around it).
        step: iterations done.
        loss: the loss at ``z`` (``NaN`` before the first optimistix step).
        done: the optimiser has terminated (converged, failed, or ``‖∇ℓ‖∞ ≤ gtol`` for optax).
        result: a :class:`~twinjax.Status` code (``successful`` while running normally).
    """

    z: Float[Array, " unknowns"]
    opt_state: object
    step: Int[Array, ""]
    loss: Float[Array, ""]
    done: Bool[Array, ""]
    result: Int[Array, ""]


def _init(objective, optimizer, z0) -> FitState:
    z0 = jnp.asarray(z0)
    if _is_optax(optimizer):
        opt_state = optimizer.init(z0)
    else:
        problem = _optx_problem(objective, optimizer, z0)
        opt_state = _optx_init(problem, objective, optimizer, z0)
    dynamic, _ = eqx.partition(opt_state, eqx.is_array)
    return FitState(
        z=z0,
        opt_state=dynamic,
        step=jnp.zeros((), jnp.int32),
        loss=jnp.full((), jnp.nan, z0.dtype),
        done=jnp.zeros((), bool),
        result=jnp.asarray(Status.successful, jnp.int32),
    )


def _step(objective, optimizer, state: FitState, gtol, problem=None) -> FitState:
    if _is_optax(optimizer):
        static = eqx.partition(optimizer.init(state.z), eqx.is_array)[1]
        opt_state = eqx.combine(state.opt_state, static)
        loss, grad = jax.value_and_grad(objective.loss)(state.z)
        if isinstance(optimizer, optax.GradientTransformationExtraArgs):
            # e.g. optax.lbfgs: its line search needs the value and the function
            updates, opt_state = optimizer.update(
                grad, opt_state, state.z, value=loss, grad=grad, value_fn=objective.loss
            )
        else:
            updates, opt_state = optimizer.update(grad, opt_state, state.z)
        z = optax.apply_updates(state.z, updates)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad))
        small = jnp.max(jnp.abs(grad)) <= gtol
        # on a non-finite loss keep the last finite iterate: the failure is reported, not propagated
        z = jnp.where(finite & ~small, z, state.z)
        result = jnp.where(finite, Status.successful, Status.nonfinite).astype(jnp.int32)
        dynamic = eqx.partition(opt_state, eqx.is_array)[0]
        return FitState(z, dynamic, state.step + 1, loss, ~finite | small, result)
    problem = _optx_problem(objective, optimizer, state.z) if problem is None else problem
    static = eqx.partition(_optx_init(problem, objective, optimizer, state.z), eqx.is_array)[1]
    opt_state = eqx.combine(state.opt_state, static)
    z, opt_state, _ = optimizer.step(problem.fn, state.z, objective, problem.options, opt_state, _TAGS)
    terminate, result = optimizer.terminate(problem.fn, z, objective, problem.options, opt_state, _TAGS)
    f_info = getattr(opt_state, "f_info", None)
    loss = f_info.as_min() if f_info is not None and hasattr(f_info, "as_min") else objective.loss(z)
    finite = jnp.all(jnp.isfinite(z))
    ok = (result == optx.RESULTS.successful) & finite
    code = jnp.where(ok, Status.successful, jnp.where(finite, Status.solver_failed, Status.nonfinite))
    dynamic = eqx.partition(opt_state, eqx.is_array)[0]
    return FitState(z, dynamic, state.step + 1, loss, terminate | ~ok, code.astype(jnp.int32))


@eqx.filter_jit
def fit_init(objective: AbstractObjective, optimizer, z0=None) -> FitState:
    """The initial :class:`FitState` at ``z0`` (default ``objective.initial_z()``).

    Arguments:
        objective: a calibration objective (:func:`~twinjax.calibrate.objectives.make_objective`).
        optimizer: a resolved optimiser (:func:`resolve_optimizer`).
        z0: the starting unknowns ``(unknowns,)``.

    Returns:
        A :class:`FitState`.

    :func:`fit` runs the same iteration; for optimistix solvers it first rescales the unknowns by the curvature at
    the start (``z = z₀ + u / d``, ``d² = diag JᵀJ`` for least squares — Marquardt's scaling — or
    ``|diag ∇²ℓ(z₀)|`` for minimisers), which this pure pair leaves to the caller.

    Example:
        ```python
        obj = trajectory_objective(twin, spec, ys, us)
        opt = resolve_optimizer(optax.adam(1e-2), obj)
        state = fit_init(obj, opt)
        for _ in range(100):
            state = fit_step(obj, opt, state)
        ```
    """
    z0 = objective.spec.to_unconstrained(objective.model) if z0 is None else jnp.asarray(z0)
    return _init(objective, optimizer, _full_z(objective, z0))


@eqx.filter_jit
def fit_step(objective: AbstractObjective, optimizer, state: FitState, gtol=0.0) -> FitState:
    """One iteration of the optimiser: ``state.z`` moves to the next accepted iterate; ``state.loss`` is the loss
    where the step started (optax) or at the returned iterate (optimistix). ``gtol``: optax stops when
    ``‖∇ℓ‖∞ ≤ gtol``. A state that is ``done`` is returned unchanged."""
    new = _step(objective, optimizer, state, gtol)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(state.done, a, b), state, new)


def _advance(objective, optimizer, state: FitState, losses, stop, gtol):
    """Iterate while ``step < stop`` and not done, recording the loss of every step in ``losses``."""
    problem = None if _is_optax(optimizer) else _optx_problem(objective, optimizer, state.z)

    def cond(carry):
        s, _ = carry
        return (s.step < stop) & ~s.done

    def body(carry):
        s, buf = carry
        new = _step(objective, optimizer, s, gtol, problem)
        return new, buf.at[s.step].set(new.loss)

    return jax.lax.while_loop(cond, body, (state, losses))


# --------------------------------------------------------------------------------------------------------- results


class FitResult(eqx.Module):
    """The outcome of :func:`fit`.

    Attributes:
        model: the fitted twin (the caller's model with the fitted parameters).
        params: the fitted physical parameters, flat ``(param,)`` (order: ``labels``).
        z: the fitted unconstrained parameters ``(param,)``.
        unknowns: every unknown (``z`` and nuisance ones, e.g. multiple-shooting nodes).
        loss: the loss at the optimum.
        losses: the loss at every iteration ``(steps,)`` (``NaN`` after the last one).
        steps: the number of iterations taken.
        status: a :class:`~twinjax.Status` code: ``successful`` (converged; for optax: a finite loss after the budget
            or ``‖∇ℓ‖∞ ≤ gtol``), ``max_steps_reached``, ``nonfinite`` or ``solver_failed``.
        labels: one label per parameter.
    """

    model: object
    params: Float[Array, "*batch param"]
    z: Float[Array, "*batch param"]
    unknowns: Float[Array, "*batch unknowns"]
    loss: Float[Array, "*batch"]
    losses: Float[Array, "*batch steps"]
    steps: Int[Array, "*batch"]
    status: Int[Array, "*batch"]
    labels: tuple[str, ...] = eqx.field(static=True)

    @property
    def converged(self) -> Bool[Array, "*batch"]:
        """Whether the optimiser terminated successfully (see ``status``)."""
        return self.status == Status.successful

    def summary(self) -> dict:
        """``{label: value}`` of the fitted physical parameters (host floats), plus loss and status."""
        out = {lab: float(v) for lab, v in zip(self.labels, np.asarray(self.params))}
        out["loss"] = float(self.loss)
        out["status"] = describe(self.status)
        return out


def _finish(model, objective, state: FitState, losses, gtol, optax_like: bool) -> FitResult:
    n = objective.num_params
    z_all = state.z
    loss = objective.loss(z_all)
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(z_all))
    if optax_like:
        budget_ok = state.done | (gtol <= 0)
        code = jnp.where(budget_ok, Status.successful, Status.max_steps_reached)
    else:
        code = jnp.where(state.done, Status.successful, Status.max_steps_reached)
    code = jnp.where(state.result != Status.successful, state.result, code)
    code = jnp.where(finite, code, Status.nonfinite).astype(jnp.int32)
    z = z_all[:n]
    spec = objective.spec
    return FitResult(
        model=spec.from_unconstrained(model, z),
        params=spec.constrain(model, z),
        z=z,
        unknowns=z_all,
        loss=loss,
        losses=losses,
        steps=state.step,
        status=code,
        labels=tuple(spec.labels(model)),
    )


def _full_z(objective, z0):
    """Append the nuisance unknowns' starting values to parameters-only ``z0`` (``None``: the model's values)."""
    if z0 is None:
        z0 = objective.spec.to_unconstrained(objective.model).astype(objective.ys.dtype)
    if objective.num_extra and z0.shape[0] == objective.num_params:
        return objective.initial_z(z0)
    return z0


class _Preconditioned(eqx.Module):
    """The objective in the scaled unknowns ``u``, ``z = z₀ + u / d`` with ``d² = |diag ∇²ℓ(z₀)|`` (the Gauss–Newton
    ``diag JᵀJ`` for least squares: Marquardt's scaling). A quasi-Newton minimiser starting from the identity Hessian
    then takes its first step at the right scale, and Levenberg–Marquardt's damping ``λ I`` is relative to the
    curvature of each unknown (without it, a large ``JᵀJ`` makes the initial damping negligible and the first
    steps overshoot and get rejected one after another)."""

    inner: AbstractObjective
    z0: Float[Array, " unknowns"]
    scale: Float[Array, " unknowns"]
    least_squares: bool = eqx.field(static=True)

    @property
    def adjoint(self):
        return self.inner.adjoint

    @property
    def prior(self):
        return self.inner.prior

    @property
    def is_least_squares(self):
        return self.least_squares

    def to_z(self, u):
        return self.z0 + u / self.scale

    def residuals(self, u):
        return self.inner.residuals(self.to_z(u))

    def loss(self, u):
        return self.inner.loss(self.to_z(u))

    def loss_raw(self, u):
        return self.inner.loss_raw(self.to_z(u))


def forward_objective(objective):
    """A copy of ``objective`` differentiated in forward mode (diffrax ``ForwardMode``): any-order ``jacfwd``."""
    if objective.adjoint == "forward":
        return objective
    model = objective.model
    if isinstance(getattr(model, "discretisation", None), Discretisation):
        model = eqx.tree_at(lambda m: m.discretisation.adjoint, model, _obj.diffrax_adjoint("forward"))
    return dataclasses.replace(objective, model=model, adjoint="forward")


def _curvature_scale(objective, z0, least_squares: bool):
    """``d = sqrt|diag ∇²ℓ(z₀)|`` (``‖∂r/∂z_i‖`` for least squares), floored: the diagonal preconditioner."""
    forward = forward_objective(objective)
    if least_squares:
        d = jnp.sum(jax.jacfwd(forward.residuals)(z0) ** 2, axis=0)
    else:
        d = jnp.abs(jnp.diag(jax.jacfwd(jax.jacfwd(forward.loss_raw))(z0)))
    floor = 1e-8 * jnp.max(jnp.where(jnp.isfinite(d), d, 0.0)) + jnp.finfo(z0.dtype).tiny
    d = jnp.where(jnp.isfinite(d) & (d > floor), d, jnp.where(jnp.isfinite(d), floor, 1.0))
    return jnp.sqrt(d)


def _run(model, objective, optimizer, z0, steps: int, gtol) -> FitResult:
    z0 = _full_z(objective, z0)
    losses = jnp.full((steps,), jnp.nan, z0.dtype)
    if not _is_optax(optimizer):
        least_squares = isinstance(optimizer, optx.AbstractLeastSquaresSolver)
        pre = _Preconditioned(objective, z0, _curvature_scale(objective, z0, least_squares), least_squares)
        state = _init(pre, optimizer, jnp.zeros_like(z0))
        state, losses = _advance(pre, optimizer, state, losses, steps, gtol)
        state = eqx.tree_at(lambda s: s.z, state, pre.to_z(state.z))
    else:
        state = _init(objective, optimizer, z0)
        state, losses = _advance(objective, optimizer, state, losses, steps, gtol)
    return _finish(model, objective, state, losses, gtol, _is_optax(optimizer))


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _fit_jit(model, objective, optimizer, z0, steps: int, gtol):
    return _run(model, objective, optimizer, z0, steps, gtol)


@eqx.filter_jit
def _init_jit(objective, optimizer, z0, steps: int):
    state = _init(objective, optimizer, _full_z(objective, z0))
    return state, jnp.full((steps,), jnp.nan, state.z.dtype)


@eqx.filter_jit
def _advance_jit(objective, optimizer, state, losses, stop, gtol):
    return _advance(objective, optimizer, state, losses, stop, gtol)


@eqx.filter_jit
def _finish_jit(model, objective, state, losses, gtol, optax_like: bool):
    return _finish(model, objective, state, losses, gtol, optax_like)


def _run_with_progress(model, objective, optimizer, z0, steps: int, gtol, chunks: int = 50) -> FitResult:
    from tqdm.auto import tqdm

    state, losses = _init_jit(objective, optimizer, z0, steps)
    size = max(1, math.ceil(steps / chunks))
    with tqdm(total=steps, desc="fit", leave=False) as bar:
        done = 0
        while done < steps:
            stop = min(done + size, steps)
            state, losses = _advance_jit(objective, optimizer, state, losses, jnp.asarray(stop, jnp.int32), gtol)
            taken = int(state.step)
            bar.update(taken - done)
            bar.set_postfix(loss=f"{float(state.loss):.4g}")
            if bool(state.done) or taken < stop:
                break
            done = taken
    return _finish_jit(model, objective, state, losses, gtol, _is_optax(optimizer))


# ------------------------------------------------------------------------------------------------------------- fit


def _default_adjoint(adjoint, optimizer):
    """``"forward"`` for optimistix solvers (few parameters: Jacobians / gradients by forward mode are cheapest and
    optimistix linearises the loss), ``"recursive"`` for optax."""
    if adjoint is not None:
        return adjoint
    return "recursive" if isinstance(optimizer, optax.GradientTransformation) or optimizer == "adam" else "forward"


def _check_steps(steps, optimizer) -> int:
    if steps is None:
        return 1000 if _is_optax(optimizer) else 200
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    return int(steps)


def _check_z0(objective, z0, name="z0"):
    n, extra = objective.num_params, objective.num_extra
    if z0 is None:
        return None  # the model's current values, read inside the compiled call
    z0 = jnp.asarray(z0, dtype=objective.ys.dtype)
    if z0.shape == (n,):
        return z0
    if z0.shape == (n + extra,) and extra:
        return z0
    expect = f"({n},)" + (f" or ({n + extra},) (with the nuisance unknowns)" if extra else "")
    raise ValueError(f"`{name}` must have shape {expect} (unconstrained parameters), got {tuple(z0.shape)}.")


def _objective(model, spec, ys, us, ts, loss, optimizer, adjoint, prior, x0, loss_options):
    adjoint = _default_adjoint(adjoint, optimizer)
    return make_objective(loss, model, spec, ys, us, ts, x0=x0, prior=prior, adjoint=adjoint, **loss_options)


def fit(
    model,
    spec,
    ys,
    us=None,
    ts=None,
    *,
    loss="trajectory",
    optimizer=None,
    steps: int | None = None,
    adjoint=None,
    prior: bool = False,
    x0=None,
    z0=None,
    filter: str = "ekf",
    segments: int = 4,
    continuity_weight: float = 1e3,
    nodes="rollout",
    integrator=None,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    learning_rate: float = 1e-2,
    gtol: float = 0.0,
    progress: bool = False,
) -> FitResult:
    r"""Fit a twin's parameters to data by gradients through the solver.

    Minimises ``ℓ(z)`` (see :mod:`twinjax.calibrate.objectives`) over the unconstrained parameters ``z`` of ``spec``,
    starting from the model's current parameter values (or ``z0``):

    - ``loss="trajectory"``: ``½ Σ_k ‖R_k^{-1/2}(y_k − h(x_k(φ)))‖²`` along a single-shooting rollout;
    - ``loss="multiple_shooting"``: the same over ``segments`` segments with continuity penalties;
    - ``loss="filter"``: ``−log p(y | φ)`` from a Kalman-type filter (twins with process noise / partial sensing);

    plus ``−log p(z)`` when ``prior=True`` (the MAP estimate in the unconstrained space).

    Arguments:
        model: the twin with a sensor; its current parameter values are the start.
        spec: the calibrated parameters (:class:`~twinjax.Params`).
        ys: measurements ``(T, obs)`` (``NaN``: missing); us: controls ``(T, control)``; ts: times ``(T,)`` (s).
        loss: ``"trajectory"``, ``"multiple_shooting"``, ``"filter"`` or an objective object.
        optimizer: ``None`` (Levenberg–Marquardt for least squares, BFGS with a prior or the filter loss), a name in
            :data:`OPTIMIZER_NAMES`, an optax ``GradientTransformation`` or an optimistix least-squares solver /
            minimiser.
        steps: the iteration budget (default 200 for optimistix, 1000 for optax).
        adjoint: ``"recursive"``, ``"backsolve"``, ``"direct"``, ``"forward"`` or a diffrax adjoint; default
            ``"forward"`` for optimistix solvers (Jacobian columns / gradients by forward mode: cheapest for a few
            parameters) and ``"recursive"`` for optax.
        prior: add the spec's prior (MAP).
        x0: the known initial state ``(state,)``; default the (parameterised) initial mean.
        z0: the starting unconstrained parameters ``(param,)`` (default: the model's values).
        filter: ``"kf"``, ``"ekf"`` or ``"ukf"`` for ``loss="filter"``.
        segments, continuity_weight, nodes: multiple-shooting options (see
            :func:`~twinjax.calibrate.objectives.multiple_shooting_objective`).
        integrator: ``None`` (the twin's diffrax solve) or a fixed-step Runge–Kutta rollout (``"rk4"``, ...; see
            :func:`~twinjax.calibrate.objectives.trajectory_objective`).
        rtol, atol: termination tolerances of optimistix solvers built from a name.
        learning_rate: for ``optimizer="adam"``.
        gtol: optax stops early when ``‖∇ℓ‖∞ ≤ gtol`` (0: run the whole budget).
        progress: show a tqdm bar (the loop runs in compiled chunks).

    Returns:
        A :class:`FitResult`: ``.model``, ``.params`` (physical), ``.z``, ``.loss``, ``.losses``, ``.status``.

    Raises:
        ValueError: naming ``ys``/``us``/``ts``/``x0`` (shapes), ``spec`` (a path missing on the model), ``loss``,
            ``optimizer``, ``adjoint``, ``steps`` or ``z0``.

    Example:
        ```python
        spec = tj.Params({"dynamics.length_m": tj.positive(), "dynamics.damping_per_s": tj.positive()})
        result = fit(start_twin, spec, path.ys, path.us)
        result.params, result.converged
        ```

    References:
        Chapter 001, "The Probabilistic Foundation of the Digital Twin"; L. Ljung, *System Identification*, 1999.
    """
    loss_options = dict(
        filter=filter, segments=segments, continuity_weight=continuity_weight, nodes=nodes, integrator=integrator
    )
    objective = _objective(model, spec, ys, us, ts, loss, optimizer, adjoint, prior, x0, loss_options)
    optimizer = resolve_optimizer(optimizer, objective, rtol=rtol, atol=atol, learning_rate=learning_rate)
    steps = _check_steps(steps, optimizer)
    z_start = _check_z0(objective, z0)
    gtol = jnp.asarray(gtol, objective.ys.dtype)
    traced = isinstance(objective.ys, jax.core.Tracer) or isinstance(z_start, jax.core.Tracer)
    if progress and not traced:
        return _run_with_progress(model, objective, optimizer, z_start, steps, gtol)
    return _fit_jit(model, objective, optimizer, z_start, steps, gtol)


# ------------------------------------------------------------------------------------------------------ multistart


class MultiStartResult(eqx.Module):
    """The outcome of :func:`multistart`.

    Attributes:
        best: the :class:`FitResult` of the best successful start (lowest final loss).
        results: every start's :class:`FitResult`, stacked (leading axis: start).
        best_index: the index of the best start.
        failed: ``(starts,)``, ``True`` where a start failed (non-finite loss or a solver failure; a start that ran
            out of steps is not failed, see ``results.status``).
    """

    best: FitResult
    results: FitResult
    best_index: Int[Array, ""]
    failed: Bool[Array, " starts"]

    @property
    def losses(self) -> Float[Array, " starts"]:
        """The final loss of each start."""
        return self.results.loss

    @property
    def params(self) -> Float[Array, "starts param"]:
        """The final physical parameters of each start."""
        return self.results.params

    def spread(self, rtol: float = 1e-3) -> dict:
        """Summary of the spread: final-loss quantiles, the share of successful starts that reached the best loss
        (within ``rtol`` relative), and the standard deviation of the parameters over the successful starts."""
        loss = np.asarray(self.losses)
        ok = ~np.asarray(self.failed)
        good = loss[ok]
        best = float(np.min(good)) if good.size else math.nan
        params = np.asarray(self.params)[ok]
        return {
            "n_starts": int(loss.size),
            "n_failed": int(np.sum(~ok)),
            "best_loss": best,
            "loss_quantiles": {q: float(np.quantile(good, q)) if good.size else math.nan for q in (0.0, 0.5, 1.0)},
            "share_at_best": float(np.mean(np.abs(good - best) <= rtol * max(abs(best), 1.0))) if good.size else 0.0,
            "params_sd": dict(zip(self.best.labels, params.std(axis=0).tolist())) if params.size else {},
        }


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _multistart_jit(model, objective, optimizer, z0s, steps: int, gtol):
    results = eqx.filter_vmap(lambda z: _run(model, objective, optimizer, z, steps, gtol))(z0s)
    failed = (results.status == Status.nonfinite) | (results.status == Status.solver_failed)
    score = jnp.where(failed | ~jnp.isfinite(results.loss), jnp.inf, results.loss)
    best_index = jnp.argmin(score)
    best = jax.tree_util.tree_map(lambda a: a[best_index] if eqx.is_array(a) else a, results)
    return MultiStartResult(best, results, best_index, failed)


def multistart(
    model,
    spec,
    ys,
    us=None,
    ts=None,
    *,
    starts=16,
    key: Key | None = None,
    loss="trajectory",
    optimizer=None,
    steps: int | None = None,
    adjoint=None,
    prior: bool = False,
    x0=None,
    filter: str = "ekf",
    segments: int = 4,
    continuity_weight: float = 1e3,
    nodes="rollout",
    integrator=None,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    learning_rate: float = 1e-2,
    gtol: float = 0.0,
) -> MultiStartResult:
    """Fit from many starting points in one compiled, vmapped call.

    Each start runs the same optimiser as :func:`fit` (the arguments are the same). Starts are drawn from the spec's
    prior (``starts=N`` and a ``key``) or given as an array of unconstrained parameters ``(N, param)``. A start whose
    loss becomes non-finite (a diverging solve) or whose solver fails is flagged in ``failed``; the others complete.
    Multiple-shooting nodes are initialised per start (from its own rollout).

    Returns:
        A :class:`MultiStartResult`: ``.best`` (a :class:`FitResult`), ``.results`` (all starts), ``.failed``,
        ``.spread()``.

    Raises:
        ValueError: as :func:`fit`, and naming ``starts`` (not a positive integer or an ``(N, param)`` array) or
            ``key`` (missing when starts are drawn).

    Example:
        ```python
        ms = multistart(twin, spec, ys, us, starts=32, key=jax.random.key(0))
        ms.best.params, ms.failed.sum(), ms.spread()
        ```
    """
    loss_options = dict(
        filter=filter, segments=segments, continuity_weight=continuity_weight, nodes=nodes, integrator=integrator
    )
    objective = _objective(model, spec, ys, us, ts, loss, optimizer, adjoint, prior, x0, loss_options)
    optimizer = resolve_optimizer(optimizer, objective, rtol=rtol, atol=atol, learning_rate=learning_rate)
    steps = _check_steps(steps, optimizer)
    n = objective.num_params
    if isinstance(starts, (int, np.integer)) and not isinstance(starts, bool):
        if starts < 1:
            raise ValueError(f"`starts` must be a positive integer or an array (N, {n}), got {starts!r}.")
        if key is None:
            raise ValueError("`key` is required to draw the starts from the prior: pass key=jax.random.key(seed).")
        z0s = unconstrain(spec, model, spec.sample(key, model, int(starts)))
    else:
        z0s = jnp.asarray(starts, objective.ys.dtype)
        if z0s.ndim != 2 or z0s.shape[1] != n or z0s.shape[0] < 1:
            raise ValueError(f"`starts` must be a positive integer or an array (N, {n}), got shape {z0s.shape}.")
    return _multistart_jit(model, objective, optimizer, z0s, steps, jnp.asarray(gtol, z0s.dtype))


# ---------------------------------------------------------------------------------------------- identifiability


def _at_z(at, objective, name="at"):
    if isinstance(at, FitResult):
        z = at.z
    elif isinstance(at, MultiStartResult):
        z = at.best.z
    else:
        z = jnp.asarray(at, objective.ys.dtype)
    n = objective.num_params
    if z.shape != (n,):
        raise ValueError(f"`{name}` must be a FitResult or unconstrained parameters of shape ({n},), got {z.shape}.")
    return z


def _no_multiple_shooting(objective, what: str):
    if objective.num_extra:
        raise ValueError(
            f"{what} is defined for loss='trajectory' or 'filter' (the multiple-shooting nodes are nuisance "
            "unknowns): refit with loss='trajectory' from the multiple-shooting result."
        )


@eqx.filter_jit
def _hessian_jit(objective, z):
    return jax.jacfwd(jax.jacfwd(objective.loss_raw))(z)


@eqx.filter_jit
def _jacobian_jit(objective, z):
    return jax.jacfwd(objective.residuals)(z)


@eqx.filter_jit
def _prior_hessian_jit(objective, z):
    return -jax.hessian(objective.log_prior)(z)


@eqx.filter_jit
def _constrain_jacobian(spec_model, spec, z):
    return jax.jacfwd(lambda v: spec.constrain(spec_model, v))(z)


def fisher_information(
    model,
    spec,
    ys,
    us=None,
    ts=None,
    *,
    at,
    loss="trajectory",
    x0=None,
    filter: str = "ekf",
    integrator=None,
    space: str = "unconstrained",
) -> Float[Array, "param param"]:
    r"""The (observed) Fisher information of the parameters at ``at``.

    For the trajectory loss ``I = JᵀJ`` with ``J = ∂r/∂z`` the Jacobian of the whitened residuals (the Gauss–Newton
    approximation of the Hessian of ``−log p(y | z)``, exact in expectation for Gaussian noise); for the filter loss the
    Hessian of ``−log p(y | z)``. In physical units (``space="physical"``) ``I_φ = Gᵀ I_z G`` with ``G = ∂z/∂φ``.
    Derivatives by forward mode through diffrax.

    Arguments:
        model, spec, ys, us, ts, x0, filter, integrator: as :func:`fit`.
        at: a :class:`FitResult` or unconstrained parameters ``(param,)``.
        loss: ``"trajectory"`` or ``"filter"``.
        space: ``"unconstrained"`` (``z``) or ``"physical"`` (``φ``).

    Returns:
        The information matrix ``(param, param)``.

    Raises:
        ValueError: as :func:`fit`; naming ``space``, ``at``, or ``loss="multiple_shooting"``.

    Example:
        ```python
        info = fisher_information(twin, spec, ys, us, at=result, space="physical")
        se = jnp.sqrt(jnp.diag(jnp.linalg.inv(info)))
        ```

    References:
        L. Ljung, *System Identification*, 2nd ed., 1999, §9.2.
    """
    if space not in ("unconstrained", "physical"):
        raise ValueError(f"`space` must be 'unconstrained' or 'physical', got {space!r}.")
    objective = make_objective(
        loss, model, spec, ys, us, ts, x0=x0, prior=False, adjoint="forward", filter=filter, integrator=integrator
    )
    _no_multiple_shooting(objective, "the Fisher information")
    z = _at_z(at, objective)
    if objective.is_least_squares:
        J = _jacobian_jit(objective, z)
        info = J.T @ J
    else:
        info = _hessian_jit(objective, z)
    info = 0.5 * (info + info.T)
    if space == "physical":
        G = jnp.linalg.inv(_constrain_jacobian(model, spec, z))
        info = G.T @ info @ G
    return info


class Laplace(eqx.Module):
    r"""A Laplace (Gaussian) approximation of the posterior in the unconstrained space: ``z ~ N(z*, Σ)``.

    Attributes:
        z: the mode ``z*`` ``(param,)``; cov: ``Σ`` ``(param, param)`` (unconstrained).
        mean: the physical parameters at the mode, ``T(z*)`` (the median of each transformed marginal).
        sd: physical standard deviations by the delta method, ``sqrt(diag(G Σ Gᵀ))``, ``G = ∂φ/∂z``.
        ok: whether the Hessian was positive definite (otherwise ``cov`` and ``sd`` are ``NaN``).
        labels: one label per parameter.
    """

    z: Float[Array, " param"]
    cov: Float[Array, "param param"]
    mean: Float[Array, " param"]
    sd: Float[Array, " param"]
    ok: Bool[Array, ""]
    model: object
    spec: Params = eqx.field(static=True)
    labels: tuple[str, ...] = eqx.field(static=True)

    def interval(self, level: float = 0.9) -> tuple[Float[Array, " param"], Float[Array, " param"]]:
        """The central credible interval of each physical parameter at ``level``: the normal quantiles
        ``z*_i ± q σ_i`` mapped through the (elementwise, monotone) constraint transform."""
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
        q = _normal.ppf(0.5 + 0.5 * level)
        half = q * jnp.sqrt(jnp.diag(self.cov))
        a = self.spec.constrain(self.model, self.z - half)
        b = self.spec.constrain(self.model, self.z + half)
        return jnp.minimum(a, b), jnp.maximum(a, b)

    def sample(self, key: Key, n: int) -> Float[Array, "n param"]:
        """``n`` physical draws ``T(z)``, ``z ~ N(z*, Σ)``."""
        zs = jax.random.multivariate_normal(key, self.z, self.cov, (n,))
        return jax.vmap(lambda v: self.spec.constrain(self.model, v))(zs)


def laplace(
    model,
    spec,
    ys,
    us=None,
    ts=None,
    *,
    at=None,
    loss="trajectory",
    prior: bool = True,
    x0=None,
    hessian: str = "exact",
    filter: str = "ekf",
    integrator=None,
    **fit_kwargs,
) -> Laplace:
    r"""The Laplace approximation of the posterior of the parameters in the unconstrained space.

    ``Σ = H⁻¹``, ``H = ∇²_z [−log p(y | z) − log p_z(z)]`` at the mode (the prior term only with ``prior=True``; without
    it ``Σ`` is the asymptotic covariance of the maximum-likelihood estimate). ``hessian="exact"`` differentiates twice
    by forward mode through the solver; ``"gauss_newton"`` uses ``JᵀJ`` for the data term (least-squares losses).
    For a linear-Gaussian model with a Gaussian prior on ``z`` the result is the exact posterior.

    Arguments:
        model, spec, ys, us, ts, x0, filter, integrator: as :func:`fit`.
        at: a :class:`FitResult` (or unconstrained parameters ``(param,)``) at the mode; ``None`` runs :func:`fit`
            first (with ``prior`` and ``fit_kwargs``).
        loss: ``"trajectory"`` or ``"filter"``.
        prior: include the spec's prior (needs a prior for every parameter).
        hessian: ``"exact"`` or ``"gauss_newton"``.

    Returns:
        A :class:`Laplace`: ``.mean`` and ``.sd`` (physical), ``.cov`` (unconstrained), ``.interval(level)``.

    Raises:
        ValueError: as :func:`fit`; naming ``hessian``, ``at``, or ``loss="multiple_shooting"``.

    Example:
        ```python
        post = laplace(twin, spec, ys, us, at=fit(twin, spec, ys, us, prior=True), prior=True)
        low, high = post.interval(0.9)
        ```

    References:
        C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, §4.4; chapter 001 (the posterior).
    """
    if hessian not in ("exact", "gauss_newton"):
        raise ValueError(f"`hessian` must be 'exact' or 'gauss_newton', got {hessian!r}.")
    if at is None:
        at = fit(
            model, spec, ys, us, ts, loss=loss, prior=prior, x0=x0, filter=filter, integrator=integrator, **fit_kwargs
        )
    objective = make_objective(
        loss, model, spec, ys, us, ts, x0=x0, prior=prior, adjoint="forward", filter=filter, integrator=integrator
    )
    _no_multiple_shooting(objective, "the Laplace approximation")
    z = _at_z(at, objective)
    if hessian == "gauss_newton":
        if not objective.is_least_squares:
            raise ValueError("`hessian='gauss_newton'` needs a least-squares loss; use hessian='exact'.")
        J = _jacobian_jit(objective, z)
        H = J.T @ J
        if prior:
            H = H + _prior_hessian_jit(objective, z)
    else:
        H = _hessian_jit(objective, z)
    H = 0.5 * (H + H.T)
    chol = jnp.linalg.cholesky(H)
    ok = jnp.all(jnp.isfinite(chol))
    eye = jnp.eye(H.shape[0], dtype=H.dtype)
    cov = jax.scipy.linalg.cho_solve((chol, True), eye)
    cov = 0.5 * (cov + cov.T)
    G = _constrain_jacobian(model, spec, z)
    sd = jnp.sqrt(jnp.diag(G @ cov @ G.T))
    return Laplace(z, cov, spec.constrain(model, z), sd, ok, model, spec, tuple(spec.labels(model)))


# --------------------------------------------------------------------------------------------- profile likelihood


class _Restricted(eqx.Module):
    """An objective of the other unknowns with ``z[index]`` fixed to ``value``."""

    inner: AbstractObjective
    value: Float[Array, ""]
    index: int = eqx.field(static=True)

    @property
    def adjoint(self):
        return self.inner.adjoint

    @property
    def prior(self):
        return self.inner.prior

    @property
    def is_least_squares(self):
        return self.inner.is_least_squares

    def full(self, w):
        return jnp.concatenate([w[: self.index], self.value[None], w[self.index :]])

    def residuals(self, w):
        return self.inner.residuals(self.full(w))

    def loss(self, w):
        return self.inner.loss(self.full(w))

    def loss_raw(self, w):
        return self.inner.loss_raw(self.full(w))


class ProfileLikelihood(eqx.Module):
    """The profile of one parameter.

    Attributes:
        name: the parameter's label; grid: the physical values ``(grid,)``.
        loss: the minimised loss at each grid value (``½‖r‖²`` or the filter's NLL), ``(grid,)``.
        deviance: ``2 (loss − loss_min)`` ``(grid,)``, asymptotically ``χ²₁`` at the true value.
        estimate: the parameter at the optimum; loss_min: the optimal loss.
        interval: ``(low, high)`` where the deviance crosses ``χ²₁(level)`` (linear interpolation on the grid; ``NaN``
            on a side where the grid does not reach the crossing).
        level: the confidence level; status: the inner fits' :class:`~twinjax.Status` ``(grid,)``.
        others: the re-optimised physical values of all parameters at each grid value ``(grid, param)``.
    """

    name: str = eqx.field(static=True)
    grid: Float[Array, " grid"]
    loss: Float[Array, " grid"]
    deviance: Float[Array, " grid"]
    estimate: float
    loss_min: float
    interval: tuple[float, float]
    level: float
    status: Int[Array, " grid"]
    others: Float[Array, "grid param"]


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _profile_jit(objective, optimizer, index: int, z_hat, z_grid, steps: int):
    w0 = jnp.concatenate([z_hat[:index], z_hat[index + 1 :]])
    gtol = jnp.zeros((), z_hat.dtype)

    def body(w, zi):
        restricted = _Restricted(objective, zi, index)
        state = _init(restricted, optimizer, w)
        losses = jnp.full((steps,), jnp.nan, w.dtype)
        state, _ = _advance(restricted, optimizer, state, losses, steps, gtol)
        value = restricted.loss_raw(state.z)
        ok = jnp.isfinite(value) & (state.result == Status.successful)
        code = jnp.where(state.done, Status.successful, Status.max_steps_reached)
        code = jnp.where(state.result != Status.successful, state.result, code)
        code = jnp.where(jnp.isfinite(value), code, Status.nonfinite).astype(jnp.int32)
        w_next = jnp.where(ok, state.z, w)  # warm start from the last good optimum
        return w_next, (value, code, restricted.full(state.z))

    _, (values, codes, zs) = jax.lax.scan(body, w0, z_grid)
    return values, codes, zs


def _crossing(grid, dev, threshold, i_min, side):
    idx = range(i_min, -1, -1) if side < 0 else range(i_min, len(grid))
    prev = i_min
    for i in idx:
        if not np.isfinite(dev[i]):
            return math.nan
        if dev[i] > threshold:
            # linear interpolation between prev (below) and i (above)
            d0, d1 = dev[prev], dev[i]
            return float(grid[prev] + (threshold - d0) / (d1 - d0) * (grid[i] - grid[prev]))
        prev = i
    return math.nan


def profile_likelihood(
    model,
    spec,
    ys,
    us=None,
    ts=None,
    *,
    name: str,
    grid,
    at=None,
    loss="trajectory",
    optimizer=None,
    steps: int | None = None,
    adjoint=None,
    x0=None,
    level: float = 0.95,
    filter: str = "ekf",
    integrator=None,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    **fit_kwargs,
) -> ProfileLikelihood:
    r"""The profile likelihood of one parameter and its likelihood-ratio confidence interval.

    ``PL(θ_i) = min_{θ_{−i}} ℓ(θ_i, θ_{−i})``, computed on ``grid`` by re-optimising the other parameters at each value
    (one compiled ``lax.scan``; each inner fit warm-starts from the previous optimum, the first from ``at``). The
    interval is ``{θ_i : 2 (PL(θ_i) − ℓ̂) ≤ χ²₁(level)}``; for a model linear in its parameters it is ``θ̂_i ± z·se_i``.

    Arguments:
        model, spec, ys, us, ts, x0, filter, adjoint, integrator: as :func:`fit`.
        name: the parameter's label (one of ``spec.labels(model)``, e.g. ``"dynamics.length_m"``).
        grid: physical values of the parameter ``(grid,)`` (sorted ascending is best for the warm starts).
        at: the optimum (:class:`FitResult` or ``z``); ``None`` runs :func:`fit` first.
        loss: ``"trajectory"`` or ``"filter"``.
        optimizer, steps, rtol, atol: the inner optimiser (default Levenberg–Marquardt / BFGS).
        level: the confidence level of the interval.

    Returns:
        A :class:`ProfileLikelihood`.

    Raises:
        ValueError: as :func:`fit`; naming ``name`` (not a label), ``grid`` (not a 1-D array of values inside the
            parameter's support), ``level``, or ``loss="multiple_shooting"``.

    Example:
        ```python
        prof = profile_likelihood(twin, spec, ys, us, name="dynamics.damping_per_s", grid=jnp.linspace(0.2, 0.4, 21))
        prof.interval
        ```

    References:
        A. Raue et al., *Bioinformatics* 25, 2009; D. J. Venzon and S. H. Moolgavkar, *Appl. Statist.* 37, 1988.
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    labels = spec.labels(model)
    if name not in labels and f"{name}[0]" in labels and f"{name}[1]" not in labels:
        name = f"{name}[0]"  # a one-element array parameter
    if name not in labels:
        raise ValueError(f"`name` must be one of the spec's labels {labels}, got {name!r}.")
    index = labels.index(name)
    grid = jnp.asarray(grid, jnp.result_type(float))
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"`grid` must be a 1-D array of at least 2 values, got shape {grid.shape}.")
    path = name.split("[")[0]
    if not bool(jnp.all(spec.specs[path].constraint.check(grid))):
        raise ValueError(f"`grid` has values outside the support of {name!r}: {np.asarray(grid)}.")
    objective = _objective(
        model, spec, ys, us, ts, loss, optimizer, adjoint, False, x0, dict(filter=filter, segments=1)
    )
    _no_multiple_shooting(objective, "the profile likelihood")
    if at is None:
        at = fit(
            model, spec, ys, us, ts, loss=loss, optimizer=optimizer, adjoint=adjoint, x0=x0, filter=filter, **fit_kwargs
        )
    z_hat = _at_z(at, objective)
    grid = grid.astype(z_hat.dtype)
    phi_hat = spec.constrain(model, z_hat)
    phis = jnp.tile(phi_hat, (grid.shape[0], 1)).at[:, index].set(grid)
    z_grid = unconstrain(spec, model, phis)[:, index]
    if not bool(jnp.all(jnp.isfinite(z_grid))):
        raise ValueError(f"`grid` has values outside the support of {name!r}: {np.asarray(grid)}.")
    inner = resolve_optimizer(optimizer, objective, rtol=rtol, atol=atol)
    steps = _check_steps(steps, inner)
    values, codes, zs = _profile_jit(objective, inner, index, z_hat, z_grid, steps)
    loss_hat = float(objective.loss_raw(z_hat))
    v = np.asarray(values)
    loss_min = min(loss_hat, float(np.nanmin(v))) if np.any(np.isfinite(v)) else loss_hat
    dev = 2.0 * (v - loss_min)
    threshold = float(_normal.ppf(0.5 + 0.5 * level) ** 2)
    g = np.asarray(grid)
    order = np.argsort(g)
    g_sorted, d_sorted = g[order], dev[order]
    estimate = float(phi_hat[index])
    i_min = int(np.nanargmin(d_sorted)) if np.any(np.isfinite(d_sorted)) else 0
    low = _crossing(g_sorted, d_sorted, threshold, i_min, -1)
    high = _crossing(g_sorted, d_sorted, threshold, i_min, +1)
    others = jax.vmap(lambda z: spec.constrain(model, z))(zs)
    return ProfileLikelihood(
        name, grid, values, jnp.asarray(dev), estimate, loss_min, (low, high), float(level), codes, others
    )


__all__ = [
    "FitResult",
    "FitState",
    "Laplace",
    "MultiStartResult",
    "ProfileLikelihood",
    "fisher_information",
    "fit",
    "fit_init",
    "fit_step",
    "laplace",
    "multistart",
    "profile_likelihood",
    "resolve_optimizer",
]

_ = _obj  # the objectives module is part of this API (``twinjax.calibrate.objectives``)
