r"""Experiment design (active learning): choose the next experiment that most reduces the twin's uncertainty.

Chapter 000, "Active Learning for Efficient Model Building": a twin that learns its parameters by Bayesian regression
holds their uncertainty in the posterior covariance ``Σ``; at each step a generator proposes candidate designs, the
twin *hypothetically* updates ``Σ`` for each, and the candidate giving the smallest next ``tr(Σ)`` (A-optimality) is
run. Two settings are implemented.

**Bayesian linear-regression twin** ``y = φ(x)ᵀθ + ε``, ``ε ~ N(0, σ²)``, ``θ ~ N(m₀, Σ₀)``. One measurement at a
design with features ``φ`` is a rank-one conjugate update

$$ s = σ² + φᵀΣφ,\quad k = Σφ / s,\quad m⁺ = m + k (y − φᵀm),\quad
   Σ⁺ = (I − kφᵀ) Σ (I − kφᵀ)ᵀ + σ² k kᵀ \;(\text{Joseph form}) = Σ − Σφφᵀ Σ / s, $$

so the A-optimal (trace) and D-optimal (log-determinant) scores of every candidate are closed-form and do not need
the outcome ``y``:

$$ \operatorname{tr}Σ⁺ = \operatorname{tr}Σ − \frac{‖Σφ‖²}{σ² + φᵀΣφ}, \qquad
   \log\det Σ⁺ = \log\det Σ − \log(1 + φᵀΣφ / σ²). $$

A-optimal picks the argmin of the first, D-optimal the argmax of ``φᵀΣφ`` (the largest predictive variance, i.e. the
largest gain in ``log det`` of the information ``Σ⁻¹``), random picks a candidate uniformly.
:func:`sequential_design` runs the loop — choose, measure the true twin, update — as one compiled ``lax.scan``.

**Nonlinear twin, input design.** For a twin ``y_k = h(x_k(φ, u)) + v_k``, ``v_k ~ N(0, R_k)``, driven by an input
sequence ``u``, the linearised (Fisher) information of the parameters is

$$ I(u) = \sum_k J_k(u)ᵀ R_k^{-1} J_k(u) + Λ₀, \qquad J_k = ∂ y_k / ∂ z, $$

with ``J`` the sensitivity of the noise-free outputs to the parameters, computed by forward-mode differentiation
(``jax.jacfwd``) through the diffrax solve (diffrax's ``ForwardMode``: discretise, then differentiate), and ``Λ₀`` the
prior precision. ``I(u)⁻¹`` is the Laplace (linearised) posterior covariance, and without prior the asymptotic
covariance of the least-squares estimate. The A-criterion is ``tr I(u)⁻¹``, the D-criterion ``−log det I(u)``.
:func:`design_input` proposes candidate inputs from a generator — a distribution over feasible piecewise-constant
inputs ``u = u_max tanh(a)``, ``a ~ N(0, s² I)``, so ``|u| < u_max`` always — and refines every candidate by Adam on
the criterion (the tanh reparameterisation keeps them feasible), vmapped over candidates, and returns the best. The
gradient is forward mode too (over the ``segment × control`` coefficients), so nothing runs in reverse through the
solver.

The design is *local*: ``I`` is evaluated at the model's current parameter values (the current estimate). By default
parameters are measured in the unconstrained space of the :class:`~twinjax.Params` spec (``z = log φ`` for positive
parameters), where ``tr I⁻¹`` is a sum of squared *relative* errors and so adds up parameters of different units;
``space="physical"`` reports ``I_φ = Dᵀ I_z D`` with ``D = ∂z/∂φ`` (the same information in physical units).

References:
    Chapter 000, "Active Learning for Efficient Model Building". F. Pukelsheim, *Optimal Design of Experiments*,
    SIAM 2006, ch. 6 (A- and D-optimality). L. Ljung, *System Identification*, 2nd ed., 1999, §9.4 and ch. 13 (the
    Fisher information of a prediction-error estimate and input design).
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import as_float_array, check_covariance, check_square, check_times, is_concrete
from .._types import Array, ArrayLike, Float, Int, Key, Scalar
from ..model.dynamics import AbstractDiscreteDynamics
from ..model.params import Params
from ..model.ssm import AbstractStateSpaceModel, StateSpaceModel
from ..model.status import Status, combine

__all__ = [
    "BayesianLinearRegression",
    "DesignResult",
    "InputDesign",
    "OutputSensitivity",
    "a_optimal_choice",
    "d_optimal_choice",
    "design_criterion",
    "design_input",
    "fisher_information_of_input",
    "output_sensitivity",
    "piecewise_constant_input",
    "sequential_design",
]

STRATEGIES = ("a", "d", "random")
CRITERIA = ("a", "d")
SPACES = ("unconstrained", "physical")


# ---------------------------------------------------------------------------------------------------------------------
# Bayesian linear regression
# ---------------------------------------------------------------------------------------------------------------------


class BayesianLinearRegression(eqx.Module):
    r"""The Gaussian belief ``θ ~ N(mean, cov)`` of a linear-regression twin ``y = φᵀθ + ε``, ``ε ~ N(0, noise_var)``.

    A pure state: :meth:`update` returns the conjugate posterior after one measurement (Joseph form, so ``cov`` stays
    symmetric positive semi-definite in floating point), :meth:`next_trace` / :meth:`next_logdet` the A- and D-scores
    of candidate designs without measuring them.

    Arguments:
        mean: prior (or current posterior) mean ``m``, shape ``(param,)``.
        cov: its covariance ``Σ``, shape ``(param, param)``, symmetric positive definite.
        noise_var: the measurement-noise variance ``σ² > 0`` (units of ``y`` squared).

    Raises:
        ValueError: if ``cov`` is not a square PSD matrix matching ``mean``, or ``noise_var`` is not a positive scalar.

    Example:
        ```python
        belief = BayesianLinearRegression(jnp.zeros(3), jnp.eye(3), 0.1**2)
        belief = belief.update(jnp.array([1.0, 0.5, 0.25]), 0.7)
        belief.trace, belief.logdet
        ```

    References:
        Chapter 000, "Active Learning for Efficient Model Building"; C. M. Bishop, *Pattern Recognition and Machine
        Learning*, 2006, §3.3.
    """

    mean: Float[Array, " param"]
    cov: Float[Array, "param param"]
    noise_var: Float[Array, ""]

    def __init__(self, mean: Float[ArrayLike, " param"], cov: Float[ArrayLike, "..."], noise_var: Scalar):
        mean = as_float_array(mean, "mean", ndim=1)
        cov = as_float_array(cov, "cov")
        check_square(cov, "cov", mean.shape[0])
        check_covariance(cov, "cov")
        noise_var = as_float_array(noise_var, "noise_var")
        if noise_var.ndim != 0:
            raise ValueError(f"`noise_var` must be a scalar variance, got shape {tuple(noise_var.shape)}.")
        if is_concrete(noise_var) and not float(noise_var) > 0:
            raise ValueError(f"`noise_var` must be > 0, got {float(noise_var)!r}.")
        dtype = jnp.result_type(mean, cov, noise_var)
        self.mean = mean.astype(dtype)
        self.cov = cov.astype(dtype)
        self.noise_var = noise_var.astype(dtype)

    @property
    def dim(self) -> int:
        """The number of regression coefficients."""
        return self.mean.shape[0]

    @property
    def trace(self) -> Float[Array, ""]:
        """``tr Σ``: the A-optimality criterion (the expected squared error of the posterior mean)."""
        return jnp.trace(self.cov)

    @property
    def logdet(self) -> Float[Array, ""]:
        """``log det Σ`` (Cholesky), the D-optimality criterion."""
        return 2.0 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(self.cov))))

    def _check_features(self, phi, name: str, ndim: int):
        phi = as_float_array(phi, name)
        if phi.ndim != ndim or phi.shape[-1] != self.dim:
            want = f"({self.dim},)" if ndim == 1 else f"(candidate, {self.dim})"
            raise ValueError(f"`{name}` must have shape {want} (one feature per coefficient), got {phi.shape}.")
        return phi.astype(self.cov.dtype)

    def predictive(self, phi: Float[ArrayLike, " param"]) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """The predictive mean ``φᵀm`` and variance ``φᵀΣφ + σ²`` of a measurement at features ``phi``."""
        phi = self._check_features(phi, "phi", 1)
        return phi @ self.mean, phi @ self.cov @ phi + self.noise_var

    def update(self, phi: Float[ArrayLike, " param"], y: Scalar) -> "BayesianLinearRegression":
        """The posterior after measuring ``y`` at features ``phi`` (rank-one conjugate update, Joseph form)."""
        phi = self._check_features(phi, "phi", 1)
        y = jnp.asarray(y, self.cov.dtype)
        if y.ndim != 0:
            raise ValueError(f"`y` must be one scalar measurement, got shape {tuple(y.shape)}.")
        s_phi = self.cov @ phi
        s = self.noise_var + phi @ s_phi
        k = s_phi / s
        mean = self.mean + k * (y - phi @ self.mean)
        a = jnp.eye(self.dim, dtype=self.cov.dtype) - jnp.outer(k, phi)
        cov = a @ self.cov @ a.T + self.noise_var * jnp.outer(k, k)
        return BayesianLinearRegression(mean, 0.5 * (cov + cov.T), self.noise_var)

    def _quad(self, candidates):
        s_phi = candidates @ self.cov  # rows: (Σφ)ᵀ, Σ symmetric
        return s_phi, jnp.sum(candidates * s_phi, axis=-1)

    def next_trace(self, candidates: Float[ArrayLike, "candidate param"]) -> Float[Array, " candidate"]:
        """``tr Σ⁺`` after one measurement at each candidate: ``tr Σ − ‖Σφ‖² / (σ² + φᵀΣφ)``."""
        candidates = self._check_features(candidates, "candidates", 2)
        s_phi, q = self._quad(candidates)
        return self.trace - jnp.sum(s_phi**2, axis=-1) / (self.noise_var + q)

    def next_logdet(self, candidates: Float[ArrayLike, "candidate param"]) -> Float[Array, " candidate"]:
        """``log det Σ⁺`` after one measurement at each candidate: ``log det Σ − log(1 + φᵀΣφ / σ²)``."""
        candidates = self._check_features(candidates, "candidates", 2)
        _, q = self._quad(candidates)
        return self.logdet - jnp.log1p(q / self.noise_var)


def a_optimal_choice(
    state: BayesianLinearRegression, candidates: Float[ArrayLike, "candidate param"]
) -> Int[Array, ""]:
    """The index of the A-optimal candidate: ``argmin_φ tr Σ⁺(φ)`` (ties: the first).

    Example:
        ```python
        i = a_optimal_choice(belief, jnp.stack([jnp.ones(3), jnp.arange(3.0)]))
        ```
    """
    return jnp.argmin(state.next_trace(candidates))


def d_optimal_choice(
    state: BayesianLinearRegression, candidates: Float[ArrayLike, "candidate param"]
) -> Int[Array, ""]:
    """The index of the D-optimal candidate: ``argmax_φ φᵀΣφ`` = ``argmin_φ log det Σ⁺(φ)`` (ties: the first)."""
    candidates = state._check_features(candidates, "candidates", 2)
    return jnp.argmax(state._quad(candidates)[1])


class DesignResult(eqx.Module):
    """What :func:`sequential_design` did.

    Fields:
        posterior: the final :class:`BayesianLinearRegression` belief.
        traces: ``tr Σ_t`` for ``t = 0 … steps`` (``traces[0]`` is the prior's), shape ``(steps + 1,)``.
        logdets: ``log det Σ_t``, shape ``(steps + 1,)``.
        indices: the chosen candidate at each step, shape ``(steps,)``.
        features: the chosen feature vectors, shape ``(steps, param)``.
        ys: the measurements drawn from the true twin, shape ``(steps,)``.
        finite: whether every posterior stayed finite (a failed member of a vmapped batch shows ``False``).
    """

    posterior: BayesianLinearRegression
    traces: Float[Array, " step1"]
    logdets: Float[Array, " step1"]
    indices: Int[Array, " step"]
    features: Float[Array, "step param"]
    ys: Float[Array, " step"]
    finite: Array


def _candidate_pool(candidates, key):
    return candidates(key) if callable(candidates) else candidates


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _sequential_design(state, candidates, true_theta, key, steps, strategy):
    noise_sd = jnp.sqrt(state.noise_var)

    def body(carry, k):
        belief, logdet = carry
        k_cand, k_pick, k_noise = jax.random.split(jax.random.fold_in(key, k), 3)
        pool = _candidate_pool(candidates, k_cand).astype(belief.cov.dtype)
        # the strategy is a traced code: all three strategies share one compilation (the scores are cheap)
        choices = jnp.stack(
            [
                a_optimal_choice(belief, pool),
                d_optimal_choice(belief, pool),
                jax.random.randint(k_pick, (), 0, pool.shape[0]),
            ]
        )
        index = choices[strategy]
        phi = pool[index]
        y = phi @ true_theta + noise_sd * jax.random.normal(k_noise, (), belief.cov.dtype)
        # log det Σ⁺ = log det Σ − log(1 + φᵀΣφ/σ²): no factorisation inside the loop
        logdet = logdet - jnp.log1p(phi @ belief.cov @ phi / belief.noise_var)
        belief = belief.update(phi, y)
        return (belief, logdet), (index, phi, y, belief.trace, logdet)

    logdet0 = state.logdet
    (posterior, _), (indices, features, ys, traces, logdets) = jax.lax.scan(body, (state, logdet0), jnp.arange(steps))
    traces = jnp.concatenate([state.trace[None], traces])
    logdets = jnp.concatenate([logdet0[None], logdets])
    finite = jnp.all(jnp.isfinite(posterior.cov)) & jnp.all(jnp.isfinite(posterior.mean)) & jnp.all(jnp.isfinite(ys))
    return DesignResult(posterior, traces, logdets, indices, features, ys, finite)


def sequential_design(
    state: BayesianLinearRegression,
    candidates: Float[ArrayLike, "candidate _param"] | Callable,
    true_theta: Float[ArrayLike, " _param"],
    steps: int,
    key: Key,
    strategy: str = "a",
) -> DesignResult:
    r"""Greedy sequential design: at each step choose a candidate, measure the true twin there, update the belief.

    At step ``t`` the candidates ``φ_1 … φ_n`` (a fixed pool, or fresh draws from a generator) are scored in closed
    form from the current posterior ``N(m_t, Σ_t)``:

    - ``"a"`` (A-optimal): ``argmin tr Σ_{t+1} = tr Σ_t − ‖Σ_tφ‖² / (σ² + φᵀΣ_tφ)``;
    - ``"d"`` (D-optimal): ``argmax φᵀΣ_tφ``, i.e. ``argmin log det Σ_{t+1}``;
    - ``"random"``: uniformly among the candidates (passive sampling from the design distribution).

    The chosen design is measured on the true twin, ``y = φᵀθ* + ε`` with ``ε ~ N(0, σ²)`` (``σ²`` the belief's
    ``noise_var``), and the belief updated by the rank-one conjugate update. Candidates may be chosen again (repeated
    measurements). One compiled ``lax.scan`` over the steps; the same ``key`` gives the same sequence, and the
    candidate draws and noise of step ``t`` depend only on ``(key, t)``, so strategies run with one key see the same
    candidates (paired comparison).

    Arguments:
        state: the prior belief :class:`BayesianLinearRegression`.
        candidates: a pool of feature vectors ``(candidate, param)``, or a generator ``key -> (candidate, param)``
            called at every step (pass the same function object each call to avoid recompiling).
        true_theta: the coefficients ``θ*`` of the true twin that produces the measurements, shape ``(param,)``.
        steps: the number of measurements (≥ 1, static).
        key: PRNG key.
        strategy: ``"a"``, ``"d"`` or ``"random"``.

    Returns:
        A :class:`DesignResult` (posterior, ``tr Σ_t`` and ``log det Σ_t`` histories, choices, measurements).

    Raises:
        ValueError: unknown ``strategy``, ``steps < 1``, or candidates / ``true_theta`` not matching the belief.

    Example:
        ```python
        xs = jnp.linspace(-1.0, 1.0, 41)
        pool = jnp.stack([jnp.ones_like(xs), xs, xs**2], axis=1)
        prior = BayesianLinearRegression(jnp.zeros(3), jnp.eye(3), 0.1**2)
        result = sequential_design(prior, pool, jnp.array([0.5, -1.0, 2.0]), 20, jax.random.key(0))
        result.traces[-1]
        ```

    References:
        Chapter 000, "Active Learning for Efficient Model Building"; Pukelsheim (2006), ch. 6.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {strategy!r}.")
    if not isinstance(state, BayesianLinearRegression):
        raise ValueError(f"`state` must be a BayesianLinearRegression, got {type(state).__name__}.")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    true_theta = as_float_array(true_theta, "true_theta")
    if true_theta.shape != (state.dim,):
        raise ValueError(f"`true_theta` must have shape ({state.dim},), got {tuple(true_theta.shape)}.")
    if callable(candidates):
        pool = jax.eval_shape(candidates, key)
        if len(pool.shape) != 2 or pool.shape[1] != state.dim or pool.shape[0] < 1:
            raise ValueError(f"`candidates(key)` must return shape (candidate, {state.dim}), got {pool.shape}.")
    else:
        candidates = state._check_features(candidates, "candidates", 2)
        if candidates.shape[0] < 1:
            raise ValueError("`candidates` must hold at least one candidate, got none.")
    code = jnp.asarray(STRATEGIES.index(strategy), jnp.int32)
    return _sequential_design(state, candidates, true_theta.astype(state.cov.dtype), key, int(steps), code)


# ---------------------------------------------------------------------------------------------------------------------
# Nonlinear twins: linearised Fisher information of an input sequence
# ---------------------------------------------------------------------------------------------------------------------


def _forward_mode(model):
    """``model`` with diffrax's ``ForwardMode`` instead of the default recursive checkpointing (a ``custom_vjp``, which
    ``jax.jacfwd`` cannot go through); other adjoints are kept."""
    if (
        isinstance(model, StateSpaceModel)
        and not isinstance(model.dynamics, AbstractDiscreteDynamics)
        and isinstance(model.discretisation.adjoint, diffrax.RecursiveCheckpointAdjoint)
    ):
        return eqx.tree_at(lambda m: m.discretisation.adjoint, model, diffrax.ForwardMode())
    return model


def _outputs(model, x0, ts, us):
    """Noise-free outputs ``h(t_k, x_k, u_k)`` of one rollout (the convention of ``tj.simulate``), the states and the
    combined solver status."""

    def body(carry, k):
        x, status = carry
        x1, st = model.transition_with_status(ts[k], ts[k + 1], x, us[k])
        return (x1, combine(status, st)), x1

    carry0 = (x0, jnp.asarray(Status.successful, jnp.int32))
    (_, status), xs = jax.lax.scan(body, carry0, jnp.arange(ts.shape[0] - 1))
    xs = jnp.concatenate([x0[None], xs])
    ys = jax.vmap(model.observation.mean)(ts, xs, us)
    return ys, xs, status


def _sensitivity_z(model, spec, x0, ts, us):
    """``(ys, J, xs, status)`` with ``J[k] = ∂y_k/∂z`` (forward mode), at the model's parameters."""
    model = _forward_mode(model)
    z0 = spec.to_unconstrained(model)

    def f(z):
        ys, xs, status = _outputs(spec.from_unconstrained(model, z), x0, ts, us)
        return ys, (ys, xs, status)

    jac, (ys, xs, status) = jax.jacfwd(f, has_aux=True)(z0)
    return ys, jac, xs, status


def _dz_dphi(model, spec):
    phi = spec.values(model)
    return jax.jacfwd(lambda p: spec.to_unconstrained(spec.with_values(model, p)))(phi)


def _default_prior_precision(model, spec):
    """``−∇² log p(z)`` at the nominal parameters (the Laplace precision of the spec's prior, unconstrained space)."""
    z0 = spec.to_unconstrained(model)
    prior = -jax.hessian(lambda z: spec.log_prior_unconstrained(model, z))(z0)
    return 0.5 * (prior + prior.T)


def _information_from_sensitivity(model, ts, us, xs, jac):
    """``Σ_k J_kᵀ R_k⁻¹ J_k`` (``R_k`` the sensor covariance at the nominal state)."""
    covs = jax.vmap(model.observation.covariance)(ts, xs, us)
    # R_k^{-1/2} J_k: one batched Cholesky, then one (dependent) batched triangular solve
    chol = jnp.linalg.cholesky(covs)
    w = jax.vmap(lambda c, j: jax.scipy.linalg.solve_triangular(c, j, lower=True))(chol, jac)
    info = jnp.einsum("tpi,tpj->ij", w, w)
    return 0.5 * (info + info.T)


def _data_information(model, spec, x0, ts, us):
    """``Σ_k J_kᵀ R_k⁻¹ J_k`` in the unconstrained space, the outputs and the solver status."""
    ys, jac, xs, status = _sensitivity_z(model, spec, x0, ts, us)
    return _information_from_sensitivity(model, ts, us, xs, jac), ys, status


def design_criterion(information: Float[ArrayLike, "param param"], criterion: str = "a") -> Float[Array, ""]:
    r"""The design criterion of an information matrix: ``"a"`` → ``tr I⁻¹``, ``"d"`` → ``−log det I`` (smaller is
    better for both). Computed by Cholesky; ``NaN`` when ``I`` is not positive definite (a non-identifying design).

    Example:
        ```python
        design_criterion(jnp.diag(jnp.array([4.0, 1.0])), "a")   # 1.25
        ```
    """
    if criterion not in CRITERIA:
        raise ValueError(f"`criterion` must be one of {CRITERIA}, got {criterion!r}.")
    information = as_float_array(information, "information")
    check_square(information, "information")
    a_value, d_value = _criteria(information)
    return d_value if criterion == "d" else a_value


def _check_twin(model, spec):
    if not isinstance(model, AbstractStateSpaceModel):
        raise ValueError(f"`model` must be a tj.StateSpaceModel, got {type(model).__name__}.")
    if model.observation is None:
        raise ValueError("`model` has no `observation`: the Fisher information needs a sensor model.")
    if not isinstance(spec, Params):
        raise ValueError(f"`spec` must be a tj.Params spec, got {type(spec).__name__}.")


def _check_x0(model, x0):
    if x0 is None:
        if model.initial is None:
            raise ValueError("`x0` is required: the model has no `initial` distribution whose mean could be used.")
        return model.initial.mean
    x0 = as_float_array(x0, "x0", ndim=1)
    if model.initial is not None and x0.shape != model.initial.mean.shape:
        raise ValueError(f"`x0` must have shape {tuple(model.initial.mean.shape)}, got {tuple(x0.shape)}.")
    return x0


def _check_inputs(model, u, n_times):
    u = as_float_array(u, "u")
    if u.ndim == 1 and model.control_dim == 1:
        u = u[:, None]
    if u.shape != (n_times, model.control_dim):
        raise ValueError(
            f"`u` must have shape ({n_times}, {model.control_dim}) (one input per time, model.control_dim), "
            f"got {tuple(u.shape)}."
        )
    return u


def _check_prior_precision(prior_precision, spec, model):
    size = spec.size(model)
    if prior_precision is None:
        missing = [n for n, s in spec.specs.items() if s.prior is None]
        if missing:
            raise ValueError(
                f"`prior_precision` is None, so the spec's priors are used, but {missing} have none: give them priors "
                f"or pass prior_precision=jnp.zeros(({size}, {size})) for the Fisher information alone."
            )
        return None
    prior_precision = as_float_array(prior_precision, "prior_precision")
    check_square(prior_precision, "prior_precision", size)
    check_covariance(prior_precision, "prior_precision")
    return prior_precision


def _check_space(space):
    if space not in SPACES:
        raise ValueError(f"`space` must be one of {SPACES}, got {space!r}.")


class OutputSensitivity(eqx.Module):
    """Noise-free outputs of a twin and their parameter sensitivities (see :func:`output_sensitivity`).

    Fields:
        ys: outputs ``h(t_k, x_k, u_k)``, shape ``(time, obs)``.
        jacobian: ``∂y_k/∂z`` in the spec's unconstrained space, shape ``(time, obs, param)``.
        status: the combined solver :class:`~twinjax.Status` of the rollout (``int32``).
    """

    ys: Float[Array, "time obs"]
    jacobian: Float[Array, "time obs param"]
    status: Int[Array, ""]


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _sensitivity_jit(model, spec, x0, ts, us):
    # the expensive program (forward mode through the solver); shared by output_sensitivity and the Fisher information
    return _sensitivity_z(model, spec, x0, ts, us)


def output_sensitivity(
    model: AbstractStateSpaceModel,
    spec: Params,
    u: Float[ArrayLike, "_time ..."],
    ts: Float[ArrayLike, " time"],
    *,
    x0: Float[ArrayLike, " state"] | None = None,
) -> OutputSensitivity:
    r"""The noise-free outputs of a rollout and their Jacobian with respect to the unconstrained parameters.

    ``x_{k+1} = Φ(t_k, t_{k+1}, x_k, u_k; φ)``, ``y_k = h(t_k, x_k, u_k)`` (the convention of :func:`twinjax.simulate`),
    ``J_k = ∂y_k/∂z`` with ``φ = T(z)`` the spec's bijection, by ``jax.jacfwd`` through the diffrax solve (the
    default recursive-checkpoint adjoint is swapped for diffrax's ``ForwardMode``, which forward mode can go through;
    the solver's steps are the same). This is what a Gauss–Newton step or the Fisher information needs.

    Arguments:
        model: the twin, at the parameter values of interest (with a sensor).
        spec: the calibrated parameters.
        u: the inputs, shape ``(time, control)`` (``(time,)`` for one input), ``u_k`` held on ``[t_k, t_{k+1})``.
        ts: measurement times, strictly increasing, shape ``(time,)`` (s).
        x0: the known initial state; default the mean of ``model.initial``.

    Returns:
        An :class:`OutputSensitivity` ``(ys, jacobian, status)``.

    Raises:
        ValueError: wrong model / spec type, shapes of ``u``, ``ts`` or ``x0``, or unsorted ``ts``.

    Example:
        ```python
        sens = output_sensitivity(twin, spec, jnp.zeros((200, 1)), 0.05 * jnp.arange(200.0))
        sens.jacobian.shape   # (200, 1, 2)
        ```

    References:
        Ljung (1999), §9.4 (the prediction-error gradient).
    """
    _check_twin(model, spec)
    ts = check_times(ts, "ts")
    u = _check_inputs(model, u, ts.shape[0])
    x0 = _check_x0(model, x0)
    dtype = jnp.result_type(ts, u, x0)
    ys, jac, _, status = _sensitivity_jit(model, spec, x0.astype(dtype), ts.astype(dtype), u.astype(dtype))
    return OutputSensitivity(ys, jac, status)


@eqx.filter_jit
def _prior_jit(model, spec):
    return _default_prior_precision(model, spec)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _assemble_jit(model, spec, ts, us, xs, jac, status, prior_z, prior_space, physical):
    # `physical` is a traced flag, so both spaces (and every prior) share one compilation
    info = _information_from_sensitivity(model, ts, us, xs, jac)
    d = jnp.where(physical, _dz_dphi(model, spec), jnp.eye(info.shape[0], dtype=info.dtype))
    info = d.T @ (info + prior_z) @ d + prior_space
    # a failed rollout gives NaN (so its criterion is NaN), never a silently wrong matrix
    return jnp.where(status == Status.successful, 0.5 * (info + info.T), jnp.nan)


def fisher_information_of_input(
    model: AbstractStateSpaceModel,
    spec: Params,
    u: Float[ArrayLike, "_time ..."],
    ts: Float[ArrayLike, " time"],
    *,
    x0: Float[ArrayLike, " state"] | None = None,
    prior_precision: Float[ArrayLike, "param param"] | None = None,
    space: str = "unconstrained",
) -> Float[Array, "param param"]:
    r"""The linearised information ``I(u) = Σ_k J_kᵀ R_k⁻¹ J_k + Λ₀`` that an input sequence gives about the parameters.

    ``J_k = ∂y_k/∂z`` (:func:`output_sensitivity`), ``R_k`` the sensor covariance at the nominal state, ``Λ₀`` the
    prior precision. ``I⁻¹`` is the Laplace approximation of the posterior covariance after measuring the twin's
    response to ``u``; with ``Λ₀ = 0`` it is the asymptotic covariance of the least-squares (maximum-likelihood)
    estimate. The twin is treated as an output-error model: known ``x0``, no process noise, ``R`` independent of the
    parameters.

    Arguments:
        model: the twin at the nominal parameter values (the current estimate; the design is local).
        spec: the calibrated parameters.
        u: the inputs, shape ``(time, control)`` (``(time,)`` for one input).
        ts: measurement times, shape ``(time,)`` (s).
        x0: the known initial state; default the mean of ``model.initial``.
        prior_precision: ``Λ₀`` in the chosen ``space``, shape ``(param, param)``; default (``None``) the negative
            Hessian of the spec's log prior in the unconstrained space at the nominal values (exact for log-normal
            priors on positive parameters), transformed to ``space``. Pass zeros for the Fisher information alone.
        space: ``"unconstrained"`` (default; ``z = T⁻¹(φ)``, e.g. ``log φ``) or ``"physical"`` (``I_φ = Dᵀ I_z D``,
            ``D = ∂z/∂φ``).

    Returns:
        The symmetric information matrix, shape ``(param, param)``; all ``NaN`` if a solve of the rollout failed
        (inspect :func:`output_sensitivity`'s ``status``).

    Raises:
        ValueError: bad shapes or types, an unknown ``space``, or ``prior_precision=None`` with a parameter that has
            no prior.

    Example:
        ```python
        spec = tj.Params({"dynamics.length_m": tj.positive(dist.LogNormal(0.0, 0.3)),
                          "dynamics.damping_per_s": tj.positive(dist.LogNormal(-2.3, 0.5))})
        info = fisher_information_of_input(pendulum_twin(), spec, torque, ts, x0=jnp.zeros(2))
        design_criterion(info, "a")
        ```

    References:
        Ljung (1999), §9.4 and ch. 13; chapter 000, "Active Learning for Efficient Model Building".
    """
    _check_twin(model, spec)
    _check_space(space)
    ts = check_times(ts, "ts")
    u = _check_inputs(model, u, ts.shape[0])
    x0 = _check_x0(model, x0)
    prior_precision = _check_prior_precision(prior_precision, spec, model)
    dtype = jnp.result_type(ts, u, x0)
    size = spec.size(model)
    zeros = jnp.zeros((size, size), dtype)
    if prior_precision is None:
        prior_z, prior_space = _prior_jit(model, spec).astype(dtype), zeros
    elif space == "physical":
        prior_z, prior_space = zeros, prior_precision.astype(dtype)
    else:
        prior_z, prior_space = prior_precision.astype(dtype), zeros
    ts, u = ts.astype(dtype), u.astype(dtype)
    _, jac, xs, status = _sensitivity_jit(model, spec, x0.astype(dtype), ts, u)
    physical = jnp.asarray(space == "physical")
    return _assemble_jit(model, spec, ts, u, xs, jac, status, prior_z, prior_space, physical)


# ---------------------------------------------------------------------------------------------------------------------
# Input design: generator + gradient refinement
# ---------------------------------------------------------------------------------------------------------------------


def piecewise_constant_input(
    coefficients: Float[ArrayLike, "segment control"], n_times: int, u_max: Float[ArrayLike, "..."]
) -> Float[Array, "time control"]:
    r"""A feasible piecewise-constant input ``u_k = u_max · tanh(a_{⌊kK/T⌋})`` from unconstrained coefficients.

    ``K`` segments of (nearly) equal length cover the ``T = n_times`` samples; ``|u_k| < u_max`` for every ``a``, so
    gradient steps on ``a`` never leave the feasible set (the tanh reparameterisation).

    Arguments:
        coefficients: ``a``, shape ``(segment, control)``.
        n_times: the number of samples ``T`` (≥ the number of segments).
        u_max: the bound, a scalar or one per control channel.

    Returns:
        The input sequence, shape ``(n_times, control)``.

    Example:
        ```python
        piecewise_constant_input(jnp.array([[0.0], [10.0]]), 4, 2.0)   # [[0], [0], [2], [2]] (approximately)
        ```
    """
    coefficients = jnp.asarray(coefficients)
    n_seg = coefficients.shape[0]
    if n_times < n_seg:
        raise ValueError(f"`n_times` must be >= the number of segments ({n_seg}), got {n_times}.")
    segment = (np.arange(n_times) * n_seg) // n_times
    return jnp.asarray(u_max) * jnp.tanh(coefficients)[segment]


class InputDesign(eqx.Module):
    """What :func:`design_input` found.

    Fields:
        u: the designed input, shape ``(time, control)``.
        coefficients: its unconstrained coefficients ``a``, shape ``(segment, control)``.
        criterion: its criterion value (``tr I⁻¹`` or ``−log det I``).
        information: its information matrix ``I``, shape ``(param, param)``.
        initial_coefficients: the generator's draws (or ``init``), shape ``(candidate, segment, control)``.
        initial_criteria: the criterion of each generated candidate before refinement, shape ``(candidate,)``
            (``inf`` where the rollout failed or ``I`` is singular).
        refined_criteria: the best criterion of each candidate during refinement, shape ``(candidate,)``.
        history: the criterion of every candidate at every refinement step, shape ``(refine_steps + 1, candidate)``.
        status: per candidate, the first solver failure met (``Status.successful`` if none), shape ``(candidate,)``.
    """

    u: Float[Array, "time control"]
    coefficients: Float[Array, "segment control"]
    criterion: Float[Array, ""]
    information: Float[Array, "param param"]
    initial_coefficients: Float[Array, "candidate segment control"]
    initial_criteria: Float[Array, " candidate"]
    refined_criteria: Float[Array, " candidate"]
    history: Float[Array, "step1 candidate"]
    status: Int[Array, " candidate"]


def _criteria(information):
    """``(tr I⁻¹, −log det I)`` from one Cholesky factor (``NaN`` unless ``I`` is positive definite)."""
    chol = jnp.linalg.cholesky(information)
    inv_chol = jax.scipy.linalg.solve_triangular(chol, jnp.eye(chol.shape[0], dtype=chol.dtype), lower=True)
    return jnp.sum(inv_chol**2), -2.0 * jnp.sum(jnp.log(jnp.diag(chol)))


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _design_input(model, spec, x0, ts, a0, u_max, learning_rate, prior, use_d, refine_steps):
    # the criterion is a traced flag and the draws and the prior arrive as arrays: one compilation per shape
    n_times = ts.shape[0]
    dtype = ts.dtype

    def evaluate(a):
        us = piecewise_constant_input(a, n_times, u_max).astype(dtype)
        info, _, status = _data_information(model, spec, x0, ts, us)
        info = info + prior
        a_value, d_value = _criteria(info)
        value = jnp.where(use_d, d_value, a_value)
        value = jnp.where(jnp.isfinite(value) & (status == Status.successful), value, jnp.inf)
        return value, (info, status)

    def objective(a):
        value, (info, status) = evaluate(a)
        # tr I⁻¹ spans decades over the input space: descend on its log (same minimiser, better scaled)
        return jnp.where(use_d, value, jnp.log(value)), (value, info, status)

    # forward mode over the forward-mode sensitivities: `segment × control` tangents, no reverse pass through diffrax
    grad_fn = jax.jacfwd(objective, has_aux=True)
    optimiser = optax.adam(learning_rate)

    def refine(a0):
        # refine_steps + 1 evaluations (the last update is not used): every value, and the information of the best
        # point, come out of the one traced gradient evaluation
        def step(carry, _):
            a, opt_state, best_a, best_v, best_info, status = carry
            g, (value, info, st) = grad_fn(a)
            better = value < best_v
            best_a = jnp.where(better, a, best_a)
            best_v = jnp.where(better, value, best_v)
            best_info = jnp.where(better, info, best_info)
            status = combine(status, st)
            g = jnp.where(jnp.all(jnp.isfinite(g)) & jnp.isfinite(value), g, jnp.zeros_like(g))
            updates, opt_state = optimiser.update(g, opt_state, a)
            carry = (optax.apply_updates(a, updates), opt_state, best_a, best_v, best_info, status)
            return carry, value

        ok = jnp.asarray(Status.successful, jnp.int32)
        inf = jnp.asarray(jnp.inf, dtype)
        nan_info = jnp.full(prior.shape, jnp.nan, dtype)
        carry0 = (a0, optimiser.init(a0), a0, inf, nan_info, ok)
        carry, history = jax.lax.scan(step, carry0, None, length=refine_steps + 1)
        return carry[2:], history

    (best_a, best_v, best_info, status), history = jax.vmap(refine)(a0)
    history = history.T
    winner = jnp.argmin(best_v)
    a_star = best_a[winner]
    u_star = piecewise_constant_input(a_star, n_times, u_max).astype(dtype)
    return InputDesign(u_star, a_star, best_v[winner], best_info[winner], a0, history[0], best_v, history, status)


def design_input(
    model: AbstractStateSpaceModel,
    spec: Params,
    ts: Float[ArrayLike, " time"],
    key: Key,
    *,
    u_max: Float[ArrayLike, "..."],
    candidates: int = 16,
    n_segments: int = 10,
    refine_steps: int = 50,
    learning_rate: Float[ArrayLike, ""] = 0.1,
    generator_scale: Float[ArrayLike, ""] = 1.0,
    criterion: str = "a",
    x0: Float[ArrayLike, " state"] | None = None,
    prior_precision: Float[ArrayLike, "param param"] | None = None,
    init: Float[ArrayLike, "candidate segment control"] | None = None,
) -> InputDesign:
    r"""Design the input sequence of a nonlinear twin that minimises the A- (or D-) criterion of its information.

    1. **Generator**: ``candidates`` piecewise-constant inputs ``u = u_max tanh(a)`` (``n_segments`` levels per
       channel), ``a ~ N(0, generator_scale² I)`` — a distribution over feasible inputs ``|u| < u_max``.
    2. **Refinement**: every candidate takes ``refine_steps`` Adam steps on ``log tr I(u(a))⁻¹`` (``"a"``) or
       ``−log det I(u(a))`` (``"d"``), vmapped over candidates; the gradient is forward mode through the forward-mode
       sensitivities (``segment × control`` tangents), so nothing is differentiated in reverse through the solver.
       Each candidate keeps the best point it visited.
    3. The best refined candidate is returned, with every candidate's criterion before and after refinement (the
       unrefined draws are the *random-input* baseline).

    The information is ``I(u) = Σ_k J_kᵀ R_k⁻¹ J_k + Λ₀`` in the spec's unconstrained space at the model's current
    parameters (see :func:`fisher_information_of_input`). A candidate whose rollout fails or whose ``I`` is singular
    scores ``inf`` and is reported in ``status`` / ``initial_criteria``; the others are unaffected.

    Arguments:
        model: the twin at the nominal parameters, with ``control_dim ≥ 1``.
        spec: the calibrated parameters.
        ts: measurement times, shape ``(time,)`` (s); the input is held between them.
        key: PRNG key of the generator.
        u_max: the input bound (scalar or one per channel), > 0.
        candidates: how many inputs the generator draws (static).
        n_segments: piecewise-constant levels per channel (static, ≤ ``time``).
        refine_steps: Adam steps per candidate (static, ≥ 0; 0 returns the best generated draw).
        learning_rate: Adam's step size on ``a``.
        generator_scale: the standard deviation ``s`` of the generator's ``a``.
        criterion: ``"a"`` (``tr I⁻¹``) or ``"d"`` (``−log det I``).
        x0: the known initial state; default the mean of ``model.initial``.
        prior_precision: ``Λ₀`` (unconstrained space); default from the spec's priors (see
            :func:`fisher_information_of_input`).
        init: start the refinement from these coefficients ``a`` instead of the generator's draws (e.g. a previous
            design, or hand-made candidates), shape ``(candidate, segment, control)``; it sets ``candidates`` and
            ``n_segments``.

    Returns:
        An :class:`InputDesign`.

    Raises:
        ValueError: bad sizes, ``u_max ≤ 0``, an autonomous model, unknown ``criterion``, or a missing prior.

    Example:
        ```python
        twin = pendulum_twin()
        ts = 0.05 * jnp.arange(200.0)
        design = design_input(twin, spec, ts, jax.random.key(0), u_max=2.0, x0=jnp.zeros(2))
        design.criterion, design.initial_criteria.min()
        ```

    References:
        Chapter 000, "Active Learning for Efficient Model Building" (a generator proposes the experiments);
        Ljung (1999), ch. 13 (input design).
    """
    _check_twin(model, spec)
    if criterion not in CRITERIA:
        raise ValueError(f"`criterion` must be one of {CRITERIA}, got {criterion!r}.")
    if model.control_dim < 1:
        raise ValueError("`model` has control_dim=0: there is no input to design.")
    ts = check_times(ts, "ts")
    if init is not None:
        init = as_float_array(init, "init")
        if init.ndim != 3 or init.shape[2] != model.control_dim:
            raise ValueError(
                f"`init` must have shape (candidate, segment, {model.control_dim}) (model.control_dim), "
                f"got {tuple(init.shape)}."
            )
        candidates, n_segments = init.shape[0], init.shape[1]
    checks = (("candidates", candidates, 1), ("n_segments", n_segments, 1), ("refine_steps", refine_steps, 0))
    for name, value, low in checks:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    if n_segments > ts.shape[0]:
        raise ValueError(f"`n_segments` must be <= the number of times ({ts.shape[0]}), got {n_segments}.")
    u_max = as_float_array(u_max, "u_max")
    if u_max.ndim > 1 or (u_max.ndim == 1 and u_max.shape[0] != model.control_dim):
        raise ValueError(f"`u_max` must be a scalar or have shape ({model.control_dim},), got {tuple(u_max.shape)}.")
    if is_concrete(u_max) and not np.all(np.asarray(u_max) > 0):
        raise ValueError(f"`u_max` must be > 0, got {np.asarray(u_max)}.")
    x0 = _check_x0(model, x0)
    prior_precision = _check_prior_precision(prior_precision, spec, model)
    dtype = jnp.result_type(ts, x0, float)
    if init is None:
        shape = (int(candidates), int(n_segments), model.control_dim)
        init = jnp.asarray(generator_scale, dtype) * jax.random.normal(key, shape, dtype)
    prior = _prior_jit(model, spec) if prior_precision is None else prior_precision
    return _design_input(
        model,
        spec,
        x0.astype(dtype),
        ts.astype(dtype),
        init.astype(dtype),
        u_max.astype(dtype),
        jnp.asarray(learning_rate, dtype),
        prior.astype(dtype),
        jnp.asarray(criterion == "d"),
        int(refine_steps),
    )
