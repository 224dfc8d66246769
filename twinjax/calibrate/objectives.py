r"""Calibration objectives: functions of the unconstrained parameter vector ``z`` of a :class:`~twinjax.Params` spec.

Every objective is an equinox module holding the twin, the spec and the data; its methods are pure, jittable and
differentiable functions of ``z`` (the model is ``spec.from_unconstrained(model, z)``, so optimisers work in the
unconstrained space and users see physical units).

**Trajectory least squares (single shooting).** The twin's noise-free transition is rolled over the measurement times
``ts`` from ``x₀`` with the controls ``us`` held on each interval (``x_{k+1} = Φ(t_k, t_{k+1}, x_k, u_k)``), the sensor
predicts ``ŷ_k = h(t_k, x_k, u_k)`` and the residuals are whitened by the sensor noise,

$$ r_k = L_k^{-1}(y_k - \hat y_k), \qquad L_k L_k^\top = R_k, \qquad
   \ell(z) = \tfrac12 \lVert r \rVert^2 = -\log p(y \mid z) + \text{const}, $$

so ``ℓ`` is the negative log-likelihood of Gaussian sensor noise without process noise (the constant
``½ Σ_k log det 2πR_k`` depends on ``z`` only when the sensor covariance itself is calibrated). Missing measurements
(``NaN`` channels) give zero residuals — the exact marginal over the observed channels (``R_k``'s missing rows and
columns are replaced by the identity) — and finite gradients. A failed solve (max steps, non-finite state) makes the
residuals ``NaN``: a failure is loud, never a silently wrong loss.

**Initial state.** ``x₀`` is the ``x0`` argument when given (known), else the mean of the *parameterised* model's
``initial`` distribution. To calibrate ``x₀``, put its path in the spec — ``Params({..., "initial.mean":
tj.real(prior=...)})`` — so it is one more unconstrained coordinate (labels ``initial.mean[i]``).

**Multiple shooting.** The record is cut into ``K`` segments of ``L = ⌈(T−1)/K⌉`` intervals (the last one padded with
masked measurements). Segment ``j`` starts from a node state ``s_j`` at ``t_{jL}``: ``s_0 = x₀`` (as above) and the
``K − 1`` interior nodes are extra unknowns appended to ``z`` (``z = [θ, s_1, …, s_{K−1}]``). The residual vector is the
whitened data residuals of every segment followed by the continuity defects ``w · (x_j(t_{(j+1)L}) − s_{j+1})``. The
segments are integrated in parallel (``vmap``), which also keeps each solve short: a bad parameter guess cannot make
the whole trajectory diverge, which is why multiple shooting escapes local minima that trap single shooting on
oscillatory twins. Continuity is a quadratic penalty of weight ``w`` (``continuity_weight``), not a hard constraint:
on noise-free data both reach the exact parameters, on noisy data the optimum tends to the single-shooting optimum as
``w → ∞`` (refit with ``loss="trajectory"`` from the result to remove the relaxation). Nodes start from a
single-shooting rollout at the initial parameters (``nodes="rollout"``), from the data (``nodes="data"``: the sensor
must measure the full state, ``h(x) = x``) or from an array ``(K − 1, state)``.

**Filter negative log marginal likelihood.** For twins with process noise or partial observation, ``ℓ(z) = −log
p(y_{0:T−1} | z)`` from a Kalman (``"kf"``), extended (``"ekf"``) or unscented (``"ukf"``) filter started at
``N(x₀, P₀)`` (``P₀`` the model's initial covariance).

**Prior.** With ``prior=True`` the loss adds ``−log p(T(z)) − log|det ∂T/∂z|`` (the prior density in the
unconstrained space): its minimum is the MAP estimate in ``z``.

**Adjoint.** How gradients flow through the diffrax solves: ``"recursive"`` (``RecursiveCheckpointAdjoint``, reverse
mode with checkpointing, the default), ``"backsolve"`` (``BacksolveAdjoint``: solves the adjoint ODE backwards, O(1)
memory in time), ``"direct"`` (``DirectAdjoint``: differentiates the solver's steps, both modes) or ``"forward"``
(``ForwardMode``: ``∇ℓ`` by ``jax.jacfwd``, one tangent per parameter — the fastest choice for a few parameters). The
choice is written to the model's :class:`~twinjax.Discretisation`. ``objective.loss`` carries a ``custom_jvp`` rule
``t ↦ ∇ℓ(z)·t`` with ``∇ℓ`` computed once in the adjoint's mode, so ``jax.grad``, ``jax.linearize`` (optimistix's
minimisers) and ``jax.jvp`` all cost one gradient; ``objective.loss_raw`` is the plain function (for Hessians).

Example:
    ```python
    obj = trajectory_objective(twin, spec, ys, us, ts)
    z = spec.to_unconstrained(twin)
    obj.loss(z), jax.grad(obj.loss)(z), obj.residuals(z).shape   # (T * obs,)
    ```

References:
    Chapter 001, "The Probabilistic Foundation of the Digital Twin" (the likelihood ``p(y | x, φ)``); H. G. Bock and
    K. J. Plitt, "A multiple shooting algorithm for direct solution of optimal control problems", IFAC 1984 (multiple
    shooting); P. Kidger, *On Neural Differential Equations*, 2021, §5 (adjoints).
"""

import abc
import dataclasses
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_float_array, check_finite_leaves, is_concrete
from .._types import Array, Float
from ..inference._base import mask_covariance, masked_residual, prepare_inputs
from ..model.dynamics import AbstractDiscreteDynamics, AbstractSDEDynamics
from ..model.observation import GaussianObservation
from ..model.params import Params
from ..model.ssm import AbstractStateSpaceModel, StateSpaceModel
from ..model.status import Status
from ..simulate.rk import Tableau, get_tableau, rk_step
from ..simulate.simulate import with_discretisation

ADJOINTS = ("recursive", "backsolve", "direct", "forward")
FILTERS = ("kf", "ekf", "ukf")
LOSSES = ("trajectory", "multiple_shooting", "filter")
UNROLL = 8  # intervals per loop iteration of the fixed-step rollout


# ------------------------------------------------------------------------------------------------------------ helpers


def diffrax_adjoint(adjoint) -> diffrax.AbstractAdjoint:
    """The diffrax adjoint for a name in :data:`ADJOINTS` (or a diffrax adjoint instance, returned as is)."""
    if isinstance(adjoint, diffrax.AbstractAdjoint):
        return adjoint
    table = {
        "recursive": diffrax.RecursiveCheckpointAdjoint,
        "backsolve": diffrax.BacksolveAdjoint,
        "direct": diffrax.DirectAdjoint,
        "forward": diffrax.ForwardMode,
    }
    if adjoint not in table:
        raise ValueError(f"`adjoint` must be one of {ADJOINTS} or a diffrax adjoint, got {adjoint!r}.")
    return table[adjoint]()


def _adjoint_name(adjoint) -> str:
    if isinstance(adjoint, str):
        diffrax_adjoint(adjoint)
        return adjoint
    if isinstance(adjoint, diffrax.ForwardMode):
        return "forward"
    if isinstance(adjoint, diffrax.AbstractAdjoint):
        return "custom"
    raise ValueError(f"`adjoint` must be one of {ADJOINTS} or a diffrax adjoint, got {adjoint!r}.")


def check_model_and_spec(model, spec) -> tuple[AbstractStateSpaceModel, Params]:
    """Validate the twin (a state-space model with a sensor) and the spec (its paths exist on the model)."""
    if not isinstance(model, AbstractStateSpaceModel):
        raise ValueError(f"`model` must be a tj.StateSpaceModel or tj.LinearGaussianSSM, got {type(model).__name__}.")
    if model.observation is None:
        raise ValueError(
            "`model` has no `observation`: calibration needs a sensor model (e.g. tj.GaussianObservation)."
        )
    if not isinstance(spec, Params):
        raise ValueError(f"`spec` must be a tj.Params spec, got {type(spec).__name__}.")
    spec.size(model)  # raises a ValueError naming a path that does not exist on the model
    check_finite_leaves(spec.values(model), "spec.values(model)")
    return model, spec


def unconstrain(spec, model, phi: Float[Array, "*batch param"]) -> Float[Array, "*batch param"]:
    """``z = T⁻¹(φ)`` for physical flat vectors ``φ`` (one or a batch), the inverse of ``spec.constrain``."""
    phi = jnp.asarray(phi)
    if phi.ndim > 1:
        return jax.vmap(lambda p: unconstrain(spec, model, p))(phi)
    pieces = spec._split(model, phi)
    return jnp.concatenate([jnp.ravel(spec.specs[n].transform.inv(v)) for n, v in pieces.items()])


def rollout(model, x0, ts, us, integrator=None):
    """The noise-free states ``(T, state)`` at ``ts`` from ``x0``, controls held per interval, and the worst status.

    ``integrator=None`` uses the twin's own transition (diffrax with its :class:`~twinjax.Discretisation`, or the
    discrete map); a tableau name (``"rk4"``, ``"rk3"``, ``"heun"``, ``"midpoint"``, ``"euler"``) or a
    :class:`~twinjax.Tableau` takes ``model.discretisation.substeps`` fixed explicit Runge–Kutta steps per interval in
    one ``lax.scan`` (differentiated by plain autodiff: discretise-then-optimise, no diffrax adjoint).
    """
    if integrator is not None:
        return _rollout_fixed(model, x0, ts, us, get_tableau(integrator))

    def body(carry, k):
        x, status = carry
        x1, st = model.transition_with_status(ts[k], ts[k + 1], x, us[k])
        status = jnp.where(status == Status.successful, st, status)
        return (x1, status), x1

    status0 = jnp.asarray(Status.successful, jnp.int32)
    (_, status), xs = jax.lax.scan(body, (x0, status0), jnp.arange(ts.shape[0] - 1))
    return jnp.concatenate([x0[None], xs]), status


def _rollout_fixed(model, x0, ts, us, tableau):
    substeps = model.discretisation.substeps
    dynamics = model.dynamics

    def interval(x, inputs):
        t0, t1, u = inputs
        h = (t1 - t0) / substeps

        def f(t, x):
            return dynamics.vector_field(t, x, u)

        for j in range(substeps):  # static and small: unrolled
            x = rk_step(f, t0 + j * h, x, h, tableau)
        return x, x

    # a tiny state makes per-iteration loop overhead the cost: unrolling a few intervals per iteration halves it
    _, xs = jax.lax.scan(interval, x0, (ts[:-1], ts[1:], us[:-1]), unroll=UNROLL)
    xs = jnp.concatenate([x0[None], xs])
    status = jnp.where(jnp.all(jnp.isfinite(xs)), Status.successful, Status.nonfinite).astype(jnp.int32)
    return xs, status


def whitened_residuals(model, ts, xs, us, ys, complete: bool = False) -> Float[Array, "time obs"]:
    """``L_k⁻¹(y_k − h(t_k, x_k, u_k))`` per time (zero on missing channels), ``L_k L_kᵀ = R_k`` (masked).

    ``complete=True`` (no missing value and a sensor with one fixed covariance, :class:`~twinjax.GaussianObservation`)
    factorises ``R`` once and whitens all times in one triangular solve.
    """
    obs = model.observation
    if complete:
        yhat = jax.vmap(obs.mean)(ts, xs, us)
        chol = jnp.linalg.cholesky(obs.cov)
        return jax.scipy.linalg.solve_triangular(chol, (ys - yhat).T, lower=True).T

    def one(t, x, u, y):
        r, mask = masked_residual(y, obs.mean(t, x, u))
        R = mask_covariance(obs.covariance(t, x, u), mask)
        return jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(R), r, lower=True)

    return jax.vmap(one)(ts, xs, us, ys)


def _fail_nan(r, status):
    return jnp.where(status == Status.successful, r, jnp.nan)


def _with_gradient_rule(objective, z, forward: bool):
    """``objective.loss_raw(z)`` whose derivative in ``z`` is ``∇ℓ`` computed once, by forward (``jacfwd``) or
    reverse mode.

    A ``custom_jvp`` with the linear rule ``t ↦ ∇ℓ(z)·t``: ``jax.grad``, ``jax.linearize`` (optimistix) and
    ``jax.jvp`` all cost one gradient evaluation in the chosen mode, whatever the caller's mode is. The objective's
    arrays (data, model) are passed as arguments, not closed over (JAX hashes the rule); the rule treats them as
    constants: the loss is differentiated in ``z`` only.
    """
    dynamic, static = eqx.partition(objective, eqx.is_array)

    def f(z, dyn):
        return eqx.combine(dyn, static).loss_raw(z)

    @jax.custom_jvp
    def wrapped(z, dyn):
        return f(z, dyn)

    @wrapped.defjvp
    def rule(primals, tangents):
        z, dyn = primals
        t = tangents[0]
        if forward:
            value, grad = f(z, dyn), jax.jacfwd(f)(z, dyn)
        else:
            value, grad = jax.value_and_grad(f)(z, dyn)
        return value, jnp.dot(grad, t)

    return wrapped(z, dynamic)


# --------------------------------------------------------------------------------------------------------- objectives


class AbstractObjective(eqx.Module):
    """A calibration objective of the unconstrained vector ``z = [θ, extra]`` (``θ``: the spec's parameters,
    ``extra``: nuisance unknowns such as multiple-shooting nodes)."""

    model: eqx.AbstractVar[AbstractStateSpaceModel]
    spec: eqx.AbstractVar[Params]
    prior: eqx.AbstractVar[bool]
    adjoint: eqx.AbstractVar[str]

    @property
    def num_params(self) -> int:
        """The number of spec parameters ``θ`` (the leading entries of ``z``)."""
        return self.spec.size(self.model)

    @property
    @abc.abstractmethod
    def num_extra(self) -> int:
        """The number of nuisance unknowns appended to ``θ`` in ``z``."""

    @property
    @abc.abstractmethod
    def is_least_squares(self) -> bool:
        """Whether :meth:`residuals` exists (``loss = ½‖residuals‖²``, plus the prior term when ``prior``)."""

    @abc.abstractmethod
    def initial_extra(self, theta) -> Float[Array, " extra"]:
        """Starting values of the nuisance unknowns at parameters ``θ`` (empty when there are none)."""

    def labels(self) -> list[str]:
        """One label per entry of ``θ``."""
        return self.spec.labels(self.model)

    def model_at(self, z):
        """The twin with the parameters ``T(z[:num_params])``."""
        return self.spec.from_unconstrained(self.model, jnp.asarray(z)[: self.num_params])

    def initial_z(self, theta=None) -> Float[Array, " unknowns"]:
        """The starting ``z``: ``θ`` (default: the model's current values, unconstrained) and its nuisance part."""
        theta = self.spec.to_unconstrained(self.model) if theta is None else jnp.asarray(theta)
        return jnp.concatenate([theta, self.initial_extra(theta).astype(theta.dtype)])

    @abc.abstractmethod
    def negative_log_likelihood(self, z) -> Float[Array, ""]:
        """The data term of the loss (no prior), without the adjoint wrapper (any-order differentiable)."""

    def log_prior(self, z) -> Float[Array, ""]:
        """``log p(T(θ)) + log|det ∂T/∂θ|``: the prior density of ``θ`` in the unconstrained space."""
        return self.spec.log_prior_unconstrained(self.model, z[: self.num_params])

    def loss_raw(self, z) -> Float[Array, ""]:
        """The loss without the forward-mode gradient wrapper (for Hessians by ``jacfwd(jacfwd)``)."""
        nll = self.negative_log_likelihood(z)
        return nll - self.log_prior(z) if self.prior else nll

    def loss(self, z) -> Float[Array, ""]:
        """The scalar loss ``ℓ(z)`` (``−log`` posterior up to a constant when ``prior``); ``jax.grad`` of it uses the
        objective's adjoint."""
        return _with_gradient_rule(self, z, self.adjoint == "forward")

    def gradient(self, z) -> Float[Array, " unknowns"]:
        """``∇ℓ(z)`` in the objective's adjoint mode."""
        return jax.grad(self.loss)(z)


class AbstractLeastSquaresObjective(AbstractObjective):
    """An objective with whitened residuals: ``negative_log_likelihood = ½‖residuals‖²``."""

    @property
    def is_least_squares(self) -> bool:
        return True

    @abc.abstractmethod
    def residuals(self, z) -> Float[Array, " residuals"]:
        """The whitened residual vector (``NaN`` when a solve failed)."""

    def negative_log_likelihood(self, z) -> Float[Array, ""]:
        r = self.residuals(z)
        return 0.5 * jnp.sum(r**2)


class TrajectoryObjective(AbstractLeastSquaresObjective):
    """Single-shooting trajectory least squares (see the module docstring).

    Attributes:
        model, spec: the twin (its adjoint set) and its parameter spec.
        ys, us, ts: the data ``(T, obs)``, controls ``(T, control)`` and times ``(T,)``.
        x0: the known initial state ``(state,)``, or ``None`` for the parameterised model's initial mean.
        prior: add the prior term to the loss.
        adjoint: the adjoint's name.
    """

    model: AbstractStateSpaceModel
    spec: Params = eqx.field(static=True)
    ys: Float[Array, "time obs"]
    us: Float[Array, "time control"]
    ts: Float[Array, " time"]
    x0: Float[Array, " state"] | None
    prior: bool = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    integrator: Tableau | None = eqx.field(static=True, default=None)
    complete: bool = eqx.field(static=True, default=False)

    @property
    def num_extra(self) -> int:
        return 0

    def initial_extra(self, theta):
        return jnp.zeros((0,), self.ys.dtype)

    def initial_state(self, model):
        """``x₀``: the given one, or the mean of ``model.initial``."""
        return model.initial.mean if self.x0 is None else self.x0

    def predict(self, z) -> tuple[Float[Array, "time state"], Float[Array, "time obs"], Array]:
        """The rollout ``xs``, the noise-free predictions ``ŷ`` and the solve status at ``z``."""
        model = self.model_at(z)
        xs, status = rollout(model, self.initial_state(model).astype(self.ys.dtype), self.ts, self.us, self.integrator)
        yhat = jax.vmap(model.observation.mean)(self.ts, xs, self.us)
        return xs, yhat, status

    def residuals(self, z) -> Float[Array, " residuals"]:
        model = self.model_at(z)
        xs, status = rollout(model, self.initial_state(model).astype(self.ys.dtype), self.ts, self.us, self.integrator)
        r = whitened_residuals(model, self.ts, xs, self.us, self.ys, self.complete).ravel()
        return _fail_nan(r, status)


class MultipleShootingObjective(AbstractLeastSquaresObjective):
    """Multiple-shooting least squares: ``z = [θ, s_1, …, s_{K−1}]`` (see the module docstring).

    Attributes:
        segments: ``K``; ``length``: ``L`` intervals per segment (static).
        ts, us, ys: the data padded to ``K·L + 1`` times (padding: masked measurements).
        n_time: the number of real measurement times ``T``.
        continuity_weight: ``w``, the weight of the continuity defects.
        nodes: the initial interior nodes ``(K − 1, state)`` or ``None`` (from a rollout or the data at the start).
        node_init: ``"rollout"``, ``"data"`` or ``"array"``.
    """

    model: AbstractStateSpaceModel
    spec: Params = eqx.field(static=True)
    ys: Float[Array, "time obs"]
    us: Float[Array, "time control"]
    ts: Float[Array, " time"]
    x0: Float[Array, " state"] | None
    continuity_weight: Float[Array, ""]
    nodes: Float[Array, "nodes state"] | None
    segments: int = eqx.field(static=True)
    length: int = eqx.field(static=True)
    n_time: int = eqx.field(static=True)
    state_dim: int = eqx.field(static=True)
    node_init: str = eqx.field(static=True)
    prior: bool = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    integrator: Tableau | None = eqx.field(static=True, default=None)

    @property
    def num_extra(self) -> int:
        return (self.segments - 1) * self.state_dim

    def initial_state(self, model):
        return model.initial.mean if self.x0 is None else self.x0

    def initial_extra(self, theta):
        if self.segments == 1:
            return jnp.zeros((0,), self.ys.dtype)
        if self.node_init == "array":
            nodes = self.nodes
        elif self.node_init == "data":
            nodes = self.ys[self.length * jnp.arange(1, self.segments)]
        else:
            model = self.spec.from_unconstrained(self.model, theta)
            xs, _ = rollout(model, self.initial_state(model).astype(self.ys.dtype), self.ts, self.us, self.integrator)
            nodes = xs[self.length * jnp.arange(1, self.segments)]
        return nodes.ravel()

    def split(self, z):
        """``(θ, nodes (K, state))`` with ``nodes[0] = x₀``."""
        theta = z[: self.num_params]
        model = self.spec.from_unconstrained(self.model, theta)
        first = self.initial_state(model).astype(z.dtype)[None]
        interior = z[self.num_params :].reshape(self.segments - 1, self.state_dim)
        return model, jnp.concatenate([first, interior])

    def residuals(self, z) -> Float[Array, " residuals"]:
        model, nodes = self.split(z)
        K, L = self.segments, self.length
        idx = L * jnp.arange(K)[:, None] + jnp.arange(L + 1)[None, :]  # (K, L + 1)
        seg_ts, seg_us = self.ts[idx], self.us[idx]
        xs, status = jax.vmap(lambda x0, t, u: rollout(model, x0, t, u, self.integrator))(nodes, seg_ts, seg_us)
        # every measurement once: the first L points of each segment, and the last segment's end point
        xs_data = jnp.concatenate([xs[:, :L].reshape(K * L, -1), xs[-1, L:]])
        n = K * L + 1
        r = whitened_residuals(model, self.ts[:n], xs_data, self.us[:n], self.ys[:n]).ravel()
        defects = self.continuity_weight * (xs[:-1, L] - nodes[1:]).ravel()
        worst = jnp.max(status)
        return _fail_nan(jnp.concatenate([r, defects]), worst)

    def trajectory(self, z) -> Float[Array, "time state"]:
        """The piecewise state trajectory ``(T, state)`` of the segments at ``z``."""
        model, nodes = self.split(z)
        K, L = self.segments, self.length
        idx = L * jnp.arange(K)[:, None] + jnp.arange(L + 1)[None, :]
        xs, _ = jax.vmap(lambda x0, t, u: rollout(model, x0, t, u, self.integrator))(nodes, self.ts[idx], self.us[idx])
        return jnp.concatenate([xs[:, :L].reshape(K * L, -1), xs[-1, L:]])[: self.n_time]


class FilterObjective(AbstractObjective):
    """The filter's negative log marginal likelihood ``−log p(y_{0:T−1} | z)`` (``"kf"``, ``"ekf"`` or ``"ukf"``).

    The filter starts at ``N(x₀, P₀)`` at ``ts[0]``: ``x₀`` the given one or the parameterised initial mean, ``P₀``
    the parameterised model's initial covariance.
    """

    model: AbstractStateSpaceModel
    spec: Params = eqx.field(static=True)
    ys: Float[Array, "time obs"]
    us: Float[Array, "time control"]
    ts: Float[Array, " time"]
    x0: Float[Array, " state"] | None
    filter: str = eqx.field(static=True)
    prior: bool = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)

    @property
    def num_extra(self) -> int:
        return 0

    @property
    def is_least_squares(self) -> bool:
        return False

    def initial_extra(self, theta):
        return jnp.zeros((0,), self.ys.dtype)

    def filter_result(self, z):
        """The filter's :class:`~twinjax.inference.GaussianFilterResult` at ``z``."""
        from ..inference import extended_kalman_filter, kalman_filter, unscented_kalman_filter

        model = self.model_at(z)
        mean = model.initial.mean if self.x0 is None else self.x0
        run = {"kf": kalman_filter, "ekf": extended_kalman_filter, "ukf": unscented_kalman_filter}[self.filter]
        return run(model, self.ys, self.us, self.ts, mean=mean, cov=model.initial.cov)

    def negative_log_likelihood(self, z):
        res = self.filter_result(z)
        nll = -res.log_likelihood
        return jnp.where(jnp.all(res.status == Status.successful), nll, jnp.nan)


def with_adjoint_name(objective: AbstractObjective, name: str) -> AbstractObjective:
    """``objective`` with its ``adjoint`` name replaced (the model's diffrax adjoint is not touched)."""
    return dataclasses.replace(objective, adjoint=name)


# -------------------------------------------------------------------------------------------------------- constructors


def _prepare(model, spec, ys, us, ts, x0, adjoint):
    model, spec = check_model_and_spec(model, spec)
    ys, us, ts = prepare_inputs(model, ys, us, ts)
    if model.initial is None and x0 is None:
        raise ValueError("`x0` is required: the model has no `initial` distribution to take the initial state from.")
    n = model.initial.mean.shape[0] if model.initial is not None else None
    if x0 is not None:
        x0 = as_float_array(x0, "x0", ndim=1)
        if n is not None and x0.shape != (n,):
            raise ValueError(f"`x0` must have shape ({n},) (the model's state), got {tuple(x0.shape)}.")
        check_finite_leaves(x0, "x0")
        x0 = x0.astype(ys.dtype)
        n = x0.shape[0]
    x_probe = x0 if x0 is not None else model.initial.mean
    p = jax.eval_shape(model.observation.mean, ts[0], x_probe.astype(ys.dtype), us[0]).shape
    if ys.shape[1:] != p:
        raise ValueError(f"`ys` must have shape (time, obs) with obs {p} (the sensor's output), got {tuple(ys.shape)}.")
    name = _adjoint_name(adjoint)
    if not isinstance(model.dynamics, AbstractDiscreteDynamics):
        model = with_discretisation(model, adjoint=diffrax_adjoint(adjoint))
    return model, spec, ys, us, ts, x0, n, name


def _check_integrator(model, integrator):
    if integrator is None:
        return None
    ode = isinstance(model, StateSpaceModel) and not isinstance(
        model.dynamics, (AbstractDiscreteDynamics, AbstractSDEDynamics)
    )
    if not ode:
        raise ValueError("`integrator` (a fixed-step Runge–Kutta rollout) needs a StateSpaceModel with ODE dynamics.")
    try:
        return get_tableau(integrator)
    except ValueError:
        raise ValueError(
            f"`integrator` must be None (the twin's diffrax solve), 'euler', 'heun', 'midpoint', 'rk3', 'rk4' or a "
            f"tj.Tableau, got {integrator!r}."
        ) from None


def trajectory_objective(
    model, spec, ys, us=None, ts=None, *, x0=None, prior: bool = False, adjoint="recursive", integrator=None
) -> TrajectoryObjective:
    """Single-shooting trajectory least squares (module docstring).

    Arguments:
        model: the twin (:class:`~twinjax.StateSpaceModel` or :class:`~twinjax.LinearGaussianSSM`) with a sensor.
        spec: the calibrated parameters (:class:`~twinjax.Params`).
        ys: measurements ``(T, obs)`` (``NaN``: missing); us: controls ``(T, control)``; ts: times ``(T,)`` (default
            ``model.dt * arange(T)``).
        x0: the known initial state ``(state,)``; default the (parameterised) model's initial mean.
        prior: add ``−log p(z)`` (MAP).
        adjoint: ``"recursive"``, ``"backsolve"``, ``"direct"``, ``"forward"`` or a diffrax adjoint.
        integrator: ``None`` (the twin's diffrax solve) or a fixed-step explicit Runge–Kutta method (``"rk4"``, ...)
            taking ``model.discretisation.substeps`` steps per interval in one ``lax.scan``, differentiated by plain
            autodiff — much cheaper in reverse mode than per-interval diffrax adjoints (see ``docs/sysid.md``).

    Returns:
        A :class:`TrajectoryObjective` with ``residuals(z)`` ``(T·obs,)`` and ``loss(z)``.

    Raises:
        ValueError: naming ``ys``, ``us``, ``ts``, ``x0``, ``spec`` (a path missing on the model), ``model`` or
            ``adjoint``.

    Example:
        ```python
        obj = trajectory_objective(twin, spec, ys, us)
        loss, grad = jax.value_and_grad(obj.loss)(spec.to_unconstrained(twin))
        ```
    """
    tableau = _check_integrator(model, integrator)
    model, spec, ys, us, ts, x0, _, name = _prepare(model, spec, ys, us, ts, x0, adjoint)
    complete = isinstance(model.observation, GaussianObservation) and is_concrete(ys) and bool(np.all(np.isfinite(ys)))
    return TrajectoryObjective(model, spec, ys, us, ts, x0, bool(prior), name, tableau, complete)


def multiple_shooting_objective(
    model,
    spec,
    ys,
    us=None,
    ts=None,
    *,
    segments: int = 4,
    continuity_weight: float = 1e3,
    nodes="rollout",
    x0=None,
    prior: bool = False,
    adjoint="recursive",
    integrator=None,
) -> MultipleShootingObjective:
    """Multiple-shooting least squares with ``segments`` segments (module docstring).

    Arguments:
        model, spec, ys, us, ts, x0, prior, adjoint, integrator: as :func:`trajectory_objective`.
        segments: ``K``, the number of shooting segments (``1 ≤ K ≤ T − 1``).
        continuity_weight: ``w``, the weight of the continuity defects (state units⁻¹).
        nodes: ``"rollout"`` (a single-shooting rollout at the start parameters), ``"data"`` (the measurements at the
            node times; needs ``h(x) = x``) or an array ``(K − 1, state)``.

    Returns:
        A :class:`MultipleShootingObjective`; ``initial_z(θ)`` appends the initial nodes to ``θ``.

    Raises:
        ValueError: as :func:`trajectory_objective`, and naming ``segments``, ``continuity_weight`` or ``nodes``.

    Example:
        ```python
        obj = multiple_shooting_objective(twin, spec, ys, us, segments=8)
        z0 = obj.initial_z()     # [θ, s_1, ..., s_7]
        ```
    """
    tableau = _check_integrator(model, integrator)
    model, spec, ys, us, ts, x0, n, name = _prepare(model, spec, ys, us, ts, x0, adjoint)
    T = ys.shape[0]
    if not isinstance(segments, (int, np.integer)) or not 1 <= segments <= max(T - 1, 1):
        raise ValueError(f"`segments` must be an integer in [1, {max(T - 1, 1)}] (T - 1 intervals), got {segments!r}.")
    segments = int(segments)
    if np.ndim(continuity_weight) != 0 or not float(continuity_weight) > 0:
        raise ValueError(f"`continuity_weight` must be a positive number, got {continuity_weight!r}.")
    length = max(math.ceil((T - 1) / segments), 1)
    n_pad = segments * length + 1 - T
    if n_pad > 0:
        step = (ts[-1] - ts[0]) / max(T - 1, 1) if T > 1 else (model.dt or 1.0)
        ts = jnp.concatenate([ts, ts[-1] + step * jnp.arange(1, n_pad + 1, dtype=ts.dtype)])
        us = jnp.concatenate([us, jnp.repeat(us[-1:], n_pad, axis=0)])
        ys = jnp.concatenate([ys, jnp.full((n_pad, ys.shape[1]), jnp.nan, ys.dtype)])
    node_array = None
    if isinstance(nodes, str):
        if nodes not in ("rollout", "data"):
            raise ValueError(f"`nodes` must be 'rollout', 'data' or an array (segments - 1, state), got {nodes!r}.")
        if nodes == "data" and segments > 1:
            at = ys[length * np.arange(1, segments)]
            if ys.shape[1] != n:
                raise ValueError(
                    f"`nodes='data'` needs the sensor to measure the full state (obs = state = {n}), got obs "
                    f"{ys.shape[1]}; use nodes='rollout'."
                )
            if not bool(jnp.all(jnp.isfinite(at))):
                raise ValueError("`nodes='data'`: a measurement at a node time is missing (NaN); use nodes='rollout'.")
        node_init = nodes
    else:
        node_array = as_float_array(nodes, "nodes", ndim=2)
        if node_array.shape != (segments - 1, n):
            raise ValueError(f"`nodes` must have shape ({segments - 1}, {n}), got {tuple(node_array.shape)}.")
        node_init = "array"
    return MultipleShootingObjective(
        model,
        spec,
        ys,
        us,
        ts,
        x0,
        jnp.asarray(continuity_weight, ys.dtype),
        node_array,
        segments,
        length,
        T,
        n,
        node_init,
        bool(prior),
        name,
        tableau,
    )


def filter_objective(
    model,
    spec,
    ys,
    us=None,
    ts=None,
    *,
    filter: str = "ekf",
    x0=None,
    prior: bool = False,
    adjoint="recursive",
) -> FilterObjective:
    """The filter's negative log marginal likelihood (module docstring).

    Arguments:
        model, spec, ys, us, ts, x0, prior: as :func:`trajectory_objective` (``x0``: the filter's prior mean).
        filter: ``"kf"`` (linear twins), ``"ekf"`` or ``"ukf"``.
        adjoint: as :func:`trajectory_objective`; the EKF differentiates the transition forward-mode internally, so
            use ``"recursive"`` (replaced by ``DirectAdjoint`` inside the filter), ``"direct"`` or ``"forward"``.

    Returns:
        A :class:`FilterObjective` (``loss(z)``; no residuals).

    Raises:
        ValueError: as :func:`trajectory_objective`, and naming ``filter``.

    Example:
        ```python
        obj = filter_objective(twin_with_process_noise, spec, ys, us, filter="ukf")
        ```
    """
    if filter not in FILTERS:
        raise ValueError(f"`filter` must be one of {FILTERS}, got {filter!r}.")
    if filter == "ekf" and _adjoint_name(adjoint) == "backsolve":
        raise ValueError("`adjoint='backsolve'` cannot be used with filter='ekf' (its Jacobians need forward mode).")
    model, spec, ys, us, ts, x0, _, name = _prepare(model, spec, ys, us, ts, x0, adjoint)
    return FilterObjective(model, spec, ys, us, ts, x0, filter, bool(prior), name)


def make_objective(
    loss,
    model,
    spec,
    ys,
    us=None,
    ts=None,
    *,
    x0=None,
    prior: bool = False,
    adjoint="recursive",
    filter: str = "ekf",
    segments: int = 4,
    continuity_weight: float = 1e3,
    nodes="rollout",
    integrator=None,
) -> AbstractObjective:
    """The objective named by ``loss`` (``"trajectory"``, ``"multiple_shooting"``, ``"filter"``), or ``loss`` itself
    when it is already an :class:`AbstractObjective`."""
    if isinstance(loss, AbstractObjective):
        return loss
    if loss == "trajectory":
        return trajectory_objective(model, spec, ys, us, ts, x0=x0, prior=prior, adjoint=adjoint, integrator=integrator)
    if loss == "multiple_shooting":
        return multiple_shooting_objective(
            model,
            spec,
            ys,
            us,
            ts,
            segments=segments,
            continuity_weight=continuity_weight,
            nodes=nodes,
            x0=x0,
            prior=prior,
            adjoint=adjoint,
            integrator=integrator,
        )
    if loss == "filter":
        if integrator is not None:
            raise ValueError("`integrator` applies to the trajectory losses; the filter uses the twin's transition.")
        return filter_objective(model, spec, ys, us, ts, filter=filter, x0=x0, prior=prior, adjoint=adjoint)
    raise ValueError(f"`loss` must be one of {LOSSES} or a calibration objective, got {loss!r}.")
