r"""Control barrier functions (CBF) whose margin grows with the twin's parameter uncertainty, and the minimal-change
safety filter of a nominal control.

**Robust condition.** For control-affine dynamics ``ẋ = f(x; θ) + g(x; θ) u`` and barriers ``h_i(x)`` (the safe set
is ``{x : h_i(x) ≥ 0 ∀ i}``), the CBF condition with a linear class-K function ``γ(h) = α h`` is

$$ c_i(x, u; θ) = L_f h_i(x; θ) + L_g h_i(x; θ)\, u + α_i h_i(x) ≥ 0,
   \qquad L_f h = ∇h\,f,\; L_g h = ∇h\,g . $$

The twin knows ``θ`` only through its posterior ``θ ~ N(μ, Σ)``. Linearised in ``θ`` around ``μ`` (exact when ``f``
and ``g`` are linear in ``θ``, the common case of unknown gains, rates and disturbances),

$$ c_i(x, u; θ) ≈ \bar c_i(u) + j_i(u)ᵀ(θ − μ), \qquad j_i(u) = a_i + B_i u = ∂c_i/∂θ\big|_{μ}, $$

so ``c_i`` is Gaussian with mean ``c̄_i(u) = c_i(x, u; μ)`` and standard deviation ``σ_i(u) = √(j_iᵀ Σ j_i)``. The
robust condition is

$$ \bar c_i(u) − κ\, σ_i(u) ≥ 0 . $$

It holds for the true ``θ`` whenever ``|j_iᵀ(θ − μ)| ≤ κ σ_i``: with probability ``≥ 1 − Φ(−κ)`` per state and
barrier, and for *every* state simultaneously when ``θ`` lies in the credible ellipsoid
``(θ − μ)ᵀ Σ⁻¹ (θ − μ) ≤ κ²`` (Cauchy–Schwarz; :func:`twinjax.control.exploration.confidence_multiplier`). The
margin ``κ σ_i`` shrinks with ``Σ``: the more the twin knows, the more of the state–action space it may use.

**Minimal-change filter.** ``u* = argmin ‖u − u_nom‖²`` subject to every robust condition and the input bounds
``lower ≤ u ≤ upper``:

* ``σ_i`` does not depend on ``u`` when ``g`` does not depend on ``θ`` (``B_i = 0``): each condition is a half-space
  ``A_i u ≥ b_i``. One barrier without bounds has the closed form (half-space projection)
  ``u* = u_nom + max(0, b − A u_nom) Aᵀ / ‖A‖²``; otherwise :func:`project_polyhedron` solves the small QP exactly
  by enumerating the active sets of at most ``control`` constraints (a fixed, jit-friendly program).
* when ``g`` depends on ``θ``, ``σ_i(u) = ‖Σ^{1/2}(a_i + B_i u)‖`` makes each condition a second-order cone (convex).
  The filter linearises ``σ_i`` at the current iterate and re-projects ``u_nom``, ``iterations`` times (sequential
  linearisation). A fixed point is the exact cone projection (the tangent half-space of a convex set at ``u*`` with
  ``u_nom − u*`` along its normal are the KKT conditions); before convergence an iterate may violate the cone
  slightly (``σ`` is convex, so its tangent under-estimates it). :class:`FilterResult` reports the *exact* robust
  value at the returned control, so callers can check it.

All functions are pure, ``jit``/``vmap``-able and differentiable (almost everywhere) in the state, the nominal control
and the posterior.

References:
    Chapter ``000_…``, "Safety-Certified Learning and Exploration" (a robust CBF condition whose margin is the twin's
    posterior uncertainty). A. D. Ames et al., "Control barrier functions: theory and applications", ECC 2019;
    A. J. Taylor, V. D. Dorobantu et al., "Towards robust data-driven control synthesis for nonlinear systems with
    actuation uncertainty", CDC 2021 (the second-order-cone form when ``g`` is uncertain).
"""

import functools
import itertools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_float_array, as_gaussian, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Scalar

__all__ = [
    "CBFCondition",
    "FilterResult",
    "barrier_rate",
    "project_halfspace",
    "project_polyhedron",
    "robust_condition",
    "robust_filter",
    "safety_filter",
]

MAX_ACTIVE_SETS = 4096  # the enumeration QP is for small problems (a few controls and constraints)


# ---------------------------------------------------------------------------------------------------------------------
# argument checks


def _nonnegative(value, name: str) -> None:
    if is_concrete(value) and not np.all(np.asarray(value) >= 0):
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")


def _barriers(h, x):
    value = jnp.asarray(h(x))
    if value.ndim > 1:
        raise ValueError(f"`h(x)` must return a scalar or a vector of barriers, got shape {tuple(value.shape)}.")
    return value


def _check_dynamics(f, g, x, theta, n_control=None):
    fx = jnp.asarray(f(x, theta))
    if fx.shape != x.shape:
        raise ValueError(f"`f(x, theta)` must return shape {x.shape} (one rate per state), got {fx.shape}.")
    gx = jnp.asarray(g(x, theta))
    if gx.ndim != 2 or gx.shape[0] != x.shape[0]:
        raise ValueError(f"`g(x, theta)` must return shape ({x.shape[0]}, control), got {gx.shape}.")
    if n_control is not None and gx.shape[1] != n_control:
        raise ValueError(f"`u` must have shape ({gx.shape[1]},) to match `g(x, theta)` {gx.shape}, got ({n_control},).")
    return gx.shape[1]


# ---------------------------------------------------------------------------------------------------------------------
# the condition


def barrier_rate(
    h: Callable,
    f: Callable,
    g: Callable,
    x: Float[ArrayLike, "..."],
    u: Float[ArrayLike, "..."],
    theta: Float[ArrayLike, "..."],
    alpha: Float[ArrayLike, "..."],
) -> Float[Array, " barrier"]:
    """The CBF condition ``c(x, u; θ) = ∇h(x)(f(x; θ) + g(x; θ) u) + α h(x)`` (``≥ 0`` where ``u`` is admissible).

    Arguments:
        h: barrier(s), ``h(x) -> ()`` or ``(barrier,)``; the safe set is where all are ``≥ 0``.
        f: drift ``f(x, θ) -> (state,)``.
        g: input matrix ``g(x, θ) -> (state, control)``.
        x: state ``(state,)``; u: control ``(control,)``; theta: parameters ``(param,)``.
        alpha: class-K gain ``α ≥ 0`` (1/time), scalar or one per barrier.

    Returns:
        ``(barrier,)`` values of the condition under ``θ``.

    Example:
        ```python
        c = barrier_rate(lambda x: 1.0 - x[0], lambda x, th: -th[:1] * x, lambda x, th: jnp.ones((1, 1)),
                         jnp.array([0.5]), jnp.array([0.2]), jnp.array([1.0]), 1.0)
        ```
    """
    x = as_float_array(x, "x", ndim=1)
    u = as_float_array(u, "u", ndim=1)
    theta = as_float_array(theta, "theta", ndim=1)
    _check_dynamics(f, g, x, theta, u.shape[0])
    hx = jnp.atleast_1d(_barriers(h, x))
    dh = jnp.atleast_2d(jax.jacfwd(h)(x))
    return dh @ (f(x, theta) + g(x, theta) @ u) + jnp.asarray(alpha) * hx


class CBFCondition(eqx.Module):
    r"""The robust CBF condition at one state: ``c̄(u) − κ σ(u) ≥ 0`` per barrier (see the module docstring).

    ``c̄(u) = drift + gain u`` is the condition under the posterior mean; ``σ(u) = √(j Σ jᵀ)``,
    ``j(u) = drift_jac + gain_jac u``, its posterior standard deviation (linearised in ``θ``).

    Fields:
        drift: ``L_f h(x; μ) + α h(x)``, ``(barrier,)``.
        gain: ``L_g h(x; μ)``, ``(barrier, control)``.
        drift_jac: ``∂(L_f h)/∂θ``, ``(barrier, param)``.
        gain_jac: ``∂(L_g h)/∂θ``, ``(barrier, param, control)`` (zero when ``g`` does not depend on ``θ``).
        cov: the posterior covariance ``Σ``, ``(param, param)``.
        kappa: the confidence multiplier ``κ ≥ 0``.
    """

    drift: Float[Array, " barrier"]
    gain: Float[Array, "barrier control"]
    drift_jac: Float[Array, "barrier param"]
    gain_jac: Float[Array, "barrier param control"]
    cov: Float[Array, "param param"]
    kappa: Float[Array, ""]

    def _u(self, u):
        u = as_float_array(u, "u", ndim=1)
        if u.shape[0] != self.gain.shape[1]:
            raise ValueError(f"`u` must have shape ({self.gain.shape[1]},), got {u.shape}.")
        return u

    def mean(self, u: Float[ArrayLike, "..."]) -> Float[Array, " barrier"]:
        """``c̄(u)``: the condition under the posterior mean (the nominal, non-robust CBF condition)."""
        return self.drift + self.gain @ self._u(u)

    def _sensitivity(self, u):
        return self.drift_jac + self.gain_jac @ u  # (barrier, param)

    def sd(self, u: Float[ArrayLike, "..."]) -> Float[Array, " barrier"]:
        """``σ(u) = √(j(u)ᵀ Σ j(u))``: the posterior standard deviation of the condition."""
        j = self._sensitivity(self._u(u))
        var = jnp.einsum("bp,pq,bq->b", j, self.cov, j)
        positive = var > 0
        # finite gradient at σ = 0 (exactly known parameters)
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)

    def margin(self, u: Float[ArrayLike, "..."]) -> Float[Array, " barrier"]:
        """``κ σ(u)``: how much the robust condition tightens the nominal one."""
        return self.kappa * self.sd(u)

    def value(self, u: Float[ArrayLike, "..."]) -> Float[Array, " barrier"]:
        """``c̄(u) − κ σ(u)``: ``≥ 0`` for every barrier means ``u`` is certified at this state."""
        return self.mean(u) - self.margin(u)

    def linearise(
        self, u0: Float[ArrayLike, "..."]
    ) -> tuple[Float[Array, "barrier control"], Float[Array, " barrier"]]:
        """``(A, b)``: the tangent half-spaces ``A u ≥ b`` of the robust condition at ``u0`` (exact if ``B = 0``)."""
        u0 = self._u(u0)
        j = self._sensitivity(u0)
        sd = self.sd(u0)
        # ∂σ/∂u = (Σ j)ᵀ B / σ, zero where σ = 0
        dsd = jnp.einsum("bp,pq,bqc->bc", j, self.cov, self.gain_jac) / jnp.where(sd > 0, sd, 1.0)[:, None]
        dsd = jnp.where((sd > 0)[:, None], dsd, 0.0)
        a = self.gain - self.kappa * dsd
        b = a @ u0 - self.value(u0)
        return a, b


def robust_condition(
    h: Callable,
    f: Callable,
    g: Callable,
    x: Float[ArrayLike, "..."],
    mean: Float[ArrayLike, "..."],
    cov: Float[ArrayLike, "..."],
    *,
    alpha: Float[ArrayLike, "..."],
    kappa: Scalar,
) -> CBFCondition:
    r"""The robust CBF condition at state ``x`` under the parameter posterior ``N(mean, cov)``.

    The Lie derivatives are taken by forward-mode differentiation of ``h``; their sensitivities to ``θ`` by
    ``jax.jacfwd`` at ``θ = mean`` (exact for dynamics linear in ``θ``).

    Arguments:
        h: barrier(s) ``h(x) -> ()`` or ``(barrier,)``, safe where all ``≥ 0``.
        f: drift ``f(x, θ) -> (state,)``.
        g: input matrix ``g(x, θ) -> (state, control)``.
        x: the state ``(state,)``.
        mean: posterior mean ``μ`` of ``θ``, ``(param,)``.
        cov: posterior covariance ``Σ``, ``(param, param)`` (PSD; ``0`` = exactly known parameters).
        alpha: class-K gain ``α ≥ 0`` of ``γ(h) = α h`` (1/time), scalar or ``(barrier,)``.
        kappa: confidence multiplier ``κ ≥ 0`` (``0``: the non-robust CBF under the posterior mean).

    Returns:
        A :class:`CBFCondition`.

    Raises:
        ValueError: naming ``x``, ``mean``, ``cov``, ``alpha``, ``kappa``, ``f`` or ``g`` for wrong shapes or values.

    Example:
        ```python
        cond = robust_condition(h, f, g, x, mean, cov, alpha=1.0, kappa=3.0)
        cond.value(u_nom) >= 0  # is the nominal control certified?
        ```
    """
    x = as_float_array(x, "x", ndim=1)
    mean, cov = as_gaussian(mean, cov)
    _nonnegative(alpha, "alpha")
    _nonnegative(kappa, "kappa")
    n_control = _check_dynamics(f, g, x, mean)
    hx = jnp.atleast_1d(_barriers(h, x))
    alpha = jnp.asarray(alpha, hx.dtype)
    if alpha.ndim > 1 or (alpha.ndim == 1 and alpha.shape != hx.shape):
        raise ValueError(f"`alpha` must be a scalar or have shape {hx.shape} (one per barrier), got {alpha.shape}.")
    dh = jnp.atleast_2d(jax.jacfwd(h)(x))  # (barrier, state)

    def drift(theta):
        return dh @ f(x, theta) + alpha * hx

    def gain(theta):
        return dh @ g(x, theta)

    dtype = jnp.result_type(x, mean, cov)
    gain_jac = jax.jacfwd(gain)(mean)  # (barrier, control, param)
    return CBFCondition(
        drift=drift(mean).astype(dtype),
        gain=gain(mean).astype(dtype).reshape(hx.shape[0], n_control),
        drift_jac=jax.jacfwd(drift)(mean).astype(dtype),
        gain_jac=jnp.swapaxes(gain_jac, 1, 2).astype(dtype),
        cov=cov.astype(dtype),
        kappa=jnp.asarray(kappa, dtype),
    )


# ---------------------------------------------------------------------------------------------------------------------
# projections


def project_halfspace(
    u0: Float[ArrayLike, "..."], a: Float[ArrayLike, "..."], b: Scalar
) -> tuple[Float[Array, " control"], Bool[Array, ""]]:
    r"""The closed-form minimal change ``argmin ‖u − u0‖²`` s.t. ``aᵀu ≥ b``: ``u0 + max(0, b − aᵀu0) a / ‖a‖²``.

    Returns:
        ``(u, feasible)``; with ``a = 0`` the constraint cannot be influenced: ``u = u0``, feasible iff ``b ≤ 0``.
    """
    u0 = as_float_array(u0, "u0", ndim=1)
    a = as_float_array(a, "a", ndim=1)
    if a.shape != u0.shape:
        raise ValueError(f"`a` must have the shape of `u0` {u0.shape}, got {a.shape}.")
    norm2 = a @ a
    deficit = jnp.maximum(b - a @ u0, 0.0)
    has_gain = norm2 > 0
    u = u0 + jnp.where(has_gain, deficit / jnp.where(has_gain, norm2, 1.0), 0.0) * a
    return u, has_gain | (deficit <= 0)


@functools.lru_cache(maxsize=64)
def _active_sets(n_rows: int, n_control: int) -> np.ndarray:
    subsets = [c for k in range(min(n_rows, n_control) + 1) for c in itertools.combinations(range(n_rows), k)]
    masks = np.zeros((len(subsets), n_rows), dtype=bool)
    for i, s in enumerate(subsets):
        masks[i, list(s)] = True
    return masks


def project_polyhedron(
    u0: Float[ArrayLike, "..."], G: Float[ArrayLike, "..."], w: Float[ArrayLike, "..."]
) -> tuple[Float[Array, " control"], Bool[Array, ""]]:
    r"""The exact solution of the small QP ``argmin ‖u − u0‖²`` s.t. ``G u ≤ w``, by active-set enumeration.

    The optimum satisfies a linearly independent subset ``S`` of at most ``control`` constraints with equality
    (Carathéodory), where ``u = u0 − G_Sᵀ λ``, ``G_S G_Sᵀ λ = G_S u0 − w_S``. Every subset is solved (one vmapped
    pseudo-inverse each, so rank-deficient subsets are harmless) and the primal-feasible candidate closest to ``u0``
    is returned: the optimum is among them and no feasible point is closer. When no candidate is feasible (the
    constraints contradict each other) the candidate with the smallest worst violation is returned with
    ``feasible = False``. The number of subsets, ``Σ_{k ≤ control} C(row, k)``, is fixed by the shapes.

    Returns:
        ``(u, feasible)``.

    Raises:
        ValueError: for inconsistent shapes or more than 4096 active sets.
    """
    u0 = as_float_array(u0, "u0", ndim=1)
    G = as_float_array(G, "G", ndim=2)
    w = as_float_array(w, "w", ndim=1)
    if G.shape[1] != u0.shape[0] or w.shape[0] != G.shape[0]:
        raise ValueError(f"`G` must have shape (row, {u0.shape[0]}) and `w` (row,); got {G.shape} and {w.shape}.")
    n_rows, n_control = G.shape
    n_sets = sum(math.comb(n_rows, k) for k in range(min(n_rows, n_control) + 1))
    if n_sets > MAX_ACTIVE_SETS:
        raise ValueError(
            f"`G` with {n_rows} constraints on {n_control} controls needs {n_sets} active sets (> {MAX_ACTIVE_SETS}); "
            "the enumeration QP is meant for a few constraints."
        )
    dtype = jnp.result_type(u0, G, w)
    u0, G, w = u0.astype(dtype), G.astype(dtype), w.astype(dtype)
    masks = jnp.asarray(_active_sets(n_rows, n_control))
    residual0 = G @ u0 - w

    def candidate(mask):
        Gs = jnp.where(mask[:, None], G, 0.0)
        lam = jnp.linalg.pinv(Gs @ Gs.T) @ jnp.where(mask, residual0, 0.0)
        return u0 - Gs.T @ lam

    us = jax.vmap(candidate)(masks)
    violation = jnp.max(us @ G.T - w[None, :], axis=1) if n_rows else jnp.zeros(us.shape[0], dtype)
    scale = 1.0 + jnp.max(jnp.abs(w)) if n_rows else jnp.ones((), dtype)
    tol = jnp.sqrt(jnp.finfo(dtype).eps) * scale
    feasible = violation <= tol
    cost = jnp.sum((us - u0[None, :]) ** 2, axis=1)
    any_feasible = jnp.any(feasible)
    best = jnp.where(any_feasible, jnp.argmin(jnp.where(feasible, cost, jnp.inf)), jnp.argmin(violation))
    return us[best], any_feasible


# ---------------------------------------------------------------------------------------------------------------------
# the filter


class FilterResult(eqx.Module):
    """The output of :func:`safety_filter`.

    Fields:
        u: the filtered control ``(control,)``.
        value: the exact robust condition ``c̄(u) − κσ(u)`` at ``u``, ``(barrier,)`` (``≥ 0``: certified).
        feasible: whether the (linearised) constraints and the bounds could all be met.
        active: whether the filter changed the nominal control.
    """

    u: Float[Array, " control"]
    value: Float[Array, " barrier"]
    feasible: Bool[Array, ""]
    active: Bool[Array, ""]


def _bounds(bound, n_control, dtype, name):
    if bound is None:
        return None
    bound = as_float_array(bound, name)
    if bound.ndim == 0:
        bound = jnp.broadcast_to(bound, (n_control,))
    if bound.shape != (n_control,):
        raise ValueError(f"`{name}` must be a scalar or have shape ({n_control},), got {bound.shape}.")
    return bound.astype(dtype)


def safety_filter(
    condition: CBFCondition,
    u_nom: Float[ArrayLike, "..."],
    lower: Float[ArrayLike, "..."] | None = None,
    upper: Float[ArrayLike, "..."] | None = None,
    iterations: int = 5,
) -> FilterResult:
    r"""The minimal-change safety filter ``u* = argmin ‖u − u_nom‖²`` s.t. ``c̄(u) − κσ(u) ≥ 0``, ``lower ≤ u ≤ upper``.

    One barrier and no bounds: the closed-form half-space projection; otherwise the exact small QP
    :func:`project_polyhedron`. Each of the ``iterations`` passes linearises ``σ(u)`` at the previous solution (no
    effect when ``g`` does not depend on ``θ``; the sequential linearisation of the cone otherwise).

    Arguments:
        condition: from :func:`robust_condition`.
        u_nom: the nominal control ``(control,)``.
        lower, upper: optional input bounds, scalars or ``(control,)``.
        iterations: linearisation passes (static, ``≥ 1``).

    Returns:
        A :class:`FilterResult`.

    Raises:
        ValueError: for a ``u_nom`` or bounds of the wrong shape, ``lower > upper`` or ``iterations < 1``.

    Example:
        ```python
        cond = robust_condition(h, f, g, x, mean, cov, alpha=1.0, kappa=3.0)
        u = safety_filter(cond, u_nom, lower=-1.0, upper=1.0).u
        ```
    """
    n_control = condition.gain.shape[1]
    u_nom = condition._u(u_nom)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be an int >= 1, got {iterations!r}.")
    dtype = condition.gain.dtype
    lower = _bounds(lower, n_control, dtype, "lower")
    upper = _bounds(upper, n_control, dtype, "upper")
    if lower is not None and upper is not None and is_concrete(lower) and is_concrete(upper):
        if np.any(np.asarray(lower) > np.asarray(upper)):
            raise ValueError(f"`lower` must be <= `upper`, got {lower} and {upper}.")
    return _safety_filter(condition, u_nom.astype(dtype), lower, upper, iterations)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts traces for the no-recompile test
def _safety_filter(condition, u_nom, lower, upper, iterations):
    n_barrier, n_control = condition.gain.shape
    dtype = condition.gain.dtype
    eye = jnp.eye(n_control, dtype=dtype)
    box_G = [m for m, bnd in ((eye, upper), (-eye, lower)) if bnd is not None]
    box_w = [v for v in (upper, None if lower is None else -lower) if v is not None]

    def solve(u_lin):
        a, b = condition.linearise(u_lin)
        if n_barrier == 1 and not box_G:
            return project_halfspace(u_nom, a[0], b[0])
        G = jnp.concatenate([-a, *box_G], axis=0)
        w = jnp.concatenate([-b, *box_w], axis=0)
        return project_polyhedron(u_nom, G, w)

    u, feasible = solve(u_nom)
    for _ in range(iterations - 1):
        u, feasible = solve(u)
    return FilterResult(u=u, value=condition.value(u), feasible=feasible, active=jnp.any(u != u_nom))


def robust_filter(
    h: Callable,
    f: Callable,
    g: Callable,
    x: Float[ArrayLike, "..."],
    u_nom: Float[ArrayLike, "..."],
    mean: Float[ArrayLike, "..."],
    cov: Float[ArrayLike, "..."],
    *,
    alpha: Float[ArrayLike, "..."],
    kappa: Scalar,
    lower: Float[ArrayLike, "..."] | None = None,
    upper: Float[ArrayLike, "..."] | None = None,
    iterations: int = 5,
) -> FilterResult:
    """:func:`robust_condition` at ``x`` followed by :func:`safety_filter` of ``u_nom`` (the closed-loop call).

    Example:
        ```python
        policy = lambda x: robust_filter(h, f, g, x, k_nom(x), mean, cov, alpha=1.0, kappa=3.0, upper=2.0).u
        ```
    """
    condition = robust_condition(h, f, g, x, mean, cov, alpha=alpha, kappa=kappa)
    return safety_filter(condition, u_nom, lower, upper, iterations)
