r"""Chance constraints from a twin's predictive distribution: Gaussian (second-order cone), Cantelli and sub-Gaussian
tightenings, and the propagation of the predictive mean and covariance over a horizon.

A chance constraint asks that a constraint function of the (uncertain) future state hold with probability ``1 - α``,

$$ \Pr\big(g(x_k, u_k) \le 0\big) \ge 1 - \alpha . $$

With ``μ = E g`` and ``σ² = Var g`` taken from the twin's predictive distribution, each reformulation replaces it by
the deterministic *tightened* constraint ``μ + κ(α) σ ≤ 0``; they differ in the margin ``κ`` and in what they assume
about the law of ``g``:

| method | margin ``κ(α)`` | valid when |
|---|---|---|
| ``"gaussian"`` | ``z_{1-α} = Φ⁻¹(1 - α)`` | ``g`` is Gaussian (exact; a linear ``g`` of a Gaussian state) |
| ``"cantelli"`` | ``√((1 - α)/α)`` | any law with finite variance (one-sided Chebyshev) |
| ``"subgaussian"`` | ``√(2 ln(1/α))`` | ``g - μ`` is sub-Gaussian with variance proxy ``σ²`` |

Cantelli's inequality ``Pr(g - μ ≥ κσ) ≤ 1/(1 + κ²)`` makes the distribution-free margin; the sub-Gaussian bound
``Pr(g - μ ≥ t) ≤ exp(-t²/(2σ²))`` makes the third (it covers bounded and Gaussian-like noise, not heavy tails: a
Student-t is not sub-Gaussian). For a linear ``g = aᵀx + b`` with ``x ~ (m, P)`` the tightened constraint is
``aᵀm + b + κ √(aᵀPa) ≤ 0`` — a second-order cone in ``(m, P^{1/2})`` (:func:`linear_moments` then :func:`tighten`).

**Propagation** (:func:`propagate`). For a discrete twin ``x_{k+1} = f(x_k, u_k) + w_k``, ``w_k ~ (0, Q)``, the
predictive moments under a control sequence are carried forward by one of

- ``"linearize"`` (EKF prediction): ``m⁺ = f(m, u)``, ``P⁺ = F P Fᵀ + Q`` with ``F = ∂f/∂x(m, u)`` (``jax.jacfwd``);
- ``"unscented"`` (UKF prediction, the scaled unscented transform of :mod:`twinjax.inference.nonlinear`; the
  default cubature weights ``α = 1, β = 0, κ = 0`` are all positive);
- ``"ensemble"``: ``members`` samples of ``N(m₀, P₀)`` pushed through ``f`` with Gaussian process noise; sample
  moments (reparameterised, so differentiable for a fixed key).

All three are exact on a linear-Gaussian twin (the ensemble up to Monte-Carlo error). :func:`constraint_moments`
gives the mean and variance of a nonlinear ``g`` by the same three rules.

Everything is differentiable (``jax.grad`` through :func:`margin`, :func:`tighten` and :func:`propagate`), so a
tightened constraint can sit inside a gradient-based MPC solver.

**Chance-constrained MPC** (:func:`moment_dynamics`, :func:`chance_constraint`). The linearised propagation is a
deterministic recursion on the augmented state ``z = (m, vec P)`` (row-major ``vec``),

$$ m^+ = f(m, u), \qquad P^+ = A P A^\top + Q, \qquad A = \partial f / \partial x\,(m, u), $$

so the chance-constrained problem is an ordinary :class:`twinjax.control.mpc.OCP` on ``z``: ``A`` depends on ``u``
and the SQP of :func:`twinjax.control.mpc.solve` differentiates through it (the variance a plan causes is part of
its constraint Jacobian). Each step's constraints are ``g(m) + κ(α) √(diag(J P Jᵀ)) ≤ 0`` with ``J = ∂g/∂x(m)``
(the ``"linearize"`` rule of :func:`constraint_moments`). Start from ``z₀ = augment(m₀, P₀)``, ``P₀ = 0`` for a
measured state.

References:
    Chapter 000, "Applications and Interdisciplinary Connections", "Safe and Robust Control Synthesis".
    F. P. Cantelli, "Intorno ad un teorema fondamentale della teoria del rischio", 1910; A. W. Marshall, I. Olkin,
    "A one-sided inequality of the Chebyshev type", Ann. Math. Statist. 31 (1960).
    A. Mesbah, "Stochastic model predictive control: an overview and perspectives", IEEE CSM 36(6), 2016, §III.
    R. Vershynin, *High-Dimensional Probability* (2018), §2.5 (sub-Gaussian tails).
    S. Särkkä, *Bayesian Filtering and Smoothing* (2013), §5.2, §5.6 (linearised and unscented predictions).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from .._checks import as_float_array, check_covariance, is_concrete
from .._types import Array, ArrayLike, Float, Key
from ..inference._base import symmetrise
from ..inference.nonlinear import _sigma_points, _ukf_weights, _weighted_cov

__all__ = [
    "METHODS",
    "PROPAGATIONS",
    "ChanceConstraint",
    "MomentDynamics",
    "Predictive",
    "augment",
    "chance_constraint",
    "constraint_moments",
    "linear_moments",
    "margin",
    "moment_dynamics",
    "propagate",
    "split",
    "tighten",
]

#: the reformulations of a chance constraint
METHODS = ("gaussian", "cantelli", "subgaussian")
#: the ways of propagating the predictive mean and covariance
PROPAGATIONS = ("linearize", "unscented", "ensemble")


def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    return method


def _check_propagation(method) -> str:
    if method not in PROPAGATIONS:
        raise ValueError(f"`method` must be one of {PROPAGATIONS}, got {method!r}.")
    return method


def _check_alpha(alpha):
    if is_concrete(alpha):
        a = np.asarray(alpha, dtype=np.float64)
        if not np.all((a > 0) & (a < 1)):
            raise ValueError(f"`alpha` must lie in the open interval (0, 1), got {alpha!r}.")
    a = as_float_array(alpha, "alpha")
    return eqx.error_if(a, (a <= 0) | (a >= 1), "`alpha` must lie in the open interval (0, 1).")


# ------------------------------------------------------------------------------------------------------ tightening


def margin(alpha: float | Float[ArrayLike, "..."], method: str = "gaussian") -> Float[Array, "..."]:
    r"""The tightening margin ``κ(α)`` of a chance constraint ``Pr(g ≤ 0) ≥ 1 - α``.

    ``gaussian``: ``Φ⁻¹(1 - α)``; ``cantelli``: ``√((1 - α)/α)``; ``subgaussian``: ``√(2 ln(1/α))``.

    Arguments:
        alpha: the allowed violation probability, in ``(0, 1)`` (any shape; differentiable).
        method: one of :data:`METHODS`.

    Returns:
        ``κ`` with the shape of ``alpha``.

    Raises:
        ValueError: naming ``alpha`` outside ``(0, 1)`` or an unknown ``method`` (listing the options).

    Example:
        ```python
        margin(0.05, "cantelli")  # 4.3589
        ```
    """
    _check_method(method)
    a = _check_alpha(alpha)
    if method == "gaussian":
        return ndtri(1.0 - a)
    if method == "cantelli":
        return jnp.sqrt((1.0 - a) / a)
    return jnp.sqrt(-2.0 * jnp.log(a))


def _check_variance(var):
    if is_concrete(var) and np.any(np.asarray(var) < 0):
        raise ValueError(f"`var` must be >= 0 (a variance), got {var!r}.")
    return eqx.error_if(var, jnp.any(var < 0), "`var` must be >= 0 (a variance).")


def _safe_sqrt(v):
    # √ with a finite gradient at a zero variance (a constraint known exactly): the derivative there is set to 0
    positive = v > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1.0)), 0.0)


def tighten(
    mean: float | Float[ArrayLike, "..."],
    var: float | Float[ArrayLike, "..."],
    alpha: float | Float[ArrayLike, "..."],
    method: str = "gaussian",
) -> Float[Array, "..."]:
    r"""The tightened constraint value ``μ + κ(α) σ``: ``Pr(g ≤ 0) ≥ 1 - α`` is enforced by requiring it ``≤ 0``.

    Arguments:
        mean: ``μ = E g`` (any shape).
        var: ``σ² = Var g``, broadcastable with ``mean``, ``≥ 0``. A full covariance of a vector ``g`` is passed as
            its diagonal (each constraint is tightened on its own: per-constraint chance constraints).
        alpha: the risk per constraint, in ``(0, 1)`` (broadcastable).
        method: one of :data:`METHODS`.

    Returns:
        ``μ + κ σ`` (broadcast shape).

    Raises:
        ValueError: for ``alpha`` outside ``(0, 1)``, a negative ``var`` or an unknown ``method``.

    Example:
        ```python
        mu, var = linear_moments(a, b, m, P)  # aᵀm + b, aᵀPa
        ok = tighten(mu, var, 0.05, "gaussian") <= 0  # the SOC constraint aᵀm + b + z √(aᵀPa) ≤ 0
        ```
    """
    kappa = margin(alpha, method)
    mu = as_float_array(mean, "mean")
    v = _check_variance(as_float_array(var, "var"))
    return mu + kappa * _safe_sqrt(v)


def linear_moments(
    a: Float[ArrayLike, "..."],
    b: Float[ArrayLike, "..."],
    mean: Float[ArrayLike, "..."],
    cov: Float[ArrayLike, "..."],
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """Mean ``aᵀm + b`` and variance ``aᵀPa`` of linear constraints ``g = a x + b`` under ``x ~ (m, P)``.

    ``a`` is one row ``(state,)`` or a stack ``(constraint, state)``; ``mean``/``cov`` one belief or a horizon
    ``(time, state)`` / ``(time, state, state)`` (as returned by :func:`propagate`).
    """
    a, b = as_float_array(a, "a"), as_float_array(b, "b")
    m, P = as_float_array(mean, "mean"), as_float_array(cov, "cov")
    mu = jnp.einsum("...i,ci->...c", m, jnp.atleast_2d(a)) + jnp.atleast_1d(b)
    var = jnp.einsum("ci,...ij,cj->...c", jnp.atleast_2d(a), P, jnp.atleast_2d(a))
    if a.ndim == 1:
        mu, var = mu[..., 0], var[..., 0]
    return mu, jnp.clip(var, 0.0)


# ----------------------------------------------------------------------------------------------------- propagation


class Predictive(eqx.Module):
    """Predictive moments over a horizon: ``mean[k]``, ``cov[k]`` of ``x_k`` for ``k = 0 … horizon``."""

    mean: Float[Array, "time state"]
    cov: Float[Array, "time state state"]


def _jittered_cholesky(P):
    n = P.shape[0]
    info = jnp.finfo(P.dtype)
    jitter = (n * info.eps) * jnp.max(jnp.diag(P)) + info.tiny
    return jnp.linalg.cholesky(symmetrise(P) + jitter * jnp.eye(n, dtype=P.dtype))


def _check_inputs(x0_mean, x0_cov, us, Q):
    m0 = as_float_array(x0_mean, "x0_mean", ndim=1)
    n = m0.shape[0]
    P0 = as_float_array(x0_cov, "x0_cov")
    if P0.shape != (n, n):
        raise ValueError(f"`x0_cov` must have shape {(n, n)}, got {tuple(P0.shape)}.")
    check_covariance(P0, "x0_cov")
    us = as_float_array(us, "us")
    if us.ndim == 1:
        us = us[:, None]
    if us.ndim != 2 or us.shape[0] < 1:
        raise ValueError(f"`us` must have shape (horizon, control) with horizon >= 1, got {tuple(us.shape)}.")
    Q = as_float_array(Q, "Q")
    if Q.shape not in ((n, n), (us.shape[0], n, n)):
        raise ValueError(f"`Q` must have shape {(n, n)} or {(us.shape[0], n, n)}, got {tuple(Q.shape)}.")
    if Q.ndim == 2:
        check_covariance(Q, "Q")
        Q = jnp.broadcast_to(Q, (us.shape[0], n, n))
    dtype = jnp.result_type(m0, P0, Q)
    return m0.astype(dtype), P0.astype(dtype), us, Q.astype(dtype)


def propagate(
    step_fn: Callable[[Float[Array, " state"], Float[Array, " control"]], Float[Array, " state"]],
    x0_mean: Float[ArrayLike, " state"],
    x0_cov: Float[ArrayLike, "..."],
    us: Float[ArrayLike, "..."],
    Q: Float[ArrayLike, "..."],
    method: str = "unscented",
    *,
    key: Key | None = None,
    members: int = 1000,
    ut_alpha: float = 1.0,
    ut_beta: float = 0.0,
    ut_kappa: float = 0.0,
) -> Predictive:
    r"""Predictive mean and covariance of ``x_{k+1} = f(x_k, u_k) + w_k`` over the horizon of ``us``.

    Arguments:
        step_fn: the twin's one-step mean transition ``f(x, u) -> x⁺`` (a pure JAX function; for a continuous twin,
            e.g. ``lambda x, u: model.transition(t, t + dt, x, u)``). It is a static argument of the compiled
            propagation: reuse one function object across calls (a new lambda per call recompiles).
        x0_mean, x0_cov: the current belief ``N(m₀, P₀)`` (a filter's output; ``P₀ = 0`` for a measured state).
        us: the control sequence, ``(horizon, control)`` (a 1-D array is one control channel).
        Q: the process-noise covariance per step, ``(state, state)`` or ``(horizon, state, state)``.
        method: ``"linearize"``, ``"unscented"`` or ``"ensemble"``.
        key: PRNG key, required by ``"ensemble"``.
        members: ensemble size for ``"ensemble"``.
        ut_alpha, ut_beta, ut_kappa: unscented-transform parameters (default: the cubature rule).

    Returns:
        :class:`Predictive` with ``mean (horizon + 1, state)`` and ``cov (horizon + 1, state, state)``; index 0 is the
        initial belief.

    Raises:
        ValueError: for an unknown ``method`` (listing the options), a missing ``key`` for ``"ensemble"``, wrong
            shapes, or a concrete ``x0_cov``/``Q`` that is not a covariance.

    Example:
        ```python
        pred = propagate(lambda x, u: A @ x + B @ u, m0, P0, us, Q, "linearize")
        mu, var = linear_moments(a, b, pred.mean, pred.cov)
        safe = jnp.all(tighten(mu, var, 0.05, "cantelli") <= 0)
        ```
    """
    _check_propagation(method)
    m0, P0, us, Q = _check_inputs(x0_mean, x0_cov, us, Q)
    if method == "ensemble":
        if key is None:
            raise ValueError('`key` is required for method="ensemble".')
        if int(members) < 2:
            raise ValueError(f"`members` must be >= 2, got {members}.")
    ut = jnp.asarray([ut_alpha, ut_beta, ut_kappa], m0.dtype)  # traced: changing them does not recompile
    return _propagate_jit(step_fn, m0, P0, us, Q, method, key, int(members), ut)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _propagate_jit(step_fn, m0, P0, us, Q, method: str, key, members: int, ut) -> Predictive:
    n = m0.shape[0]
    if method == "ensemble":
        return _propagate_ensemble(step_fn, m0, P0, us, Q, key, members)
    if method == "linearize":

        def body(carry, inputs):
            m, P = carry
            u, Qk = inputs
            m1, F = _value_and_jacobian(step_fn, m, u)
            P1 = symmetrise(F @ P @ F.T + Qk)
            return (m1, P1), (m1, P1)

    else:
        c, wm, wc = _ukf_weights(n, ut[0], ut[1], ut[2], m0.dtype)

        def body(carry, inputs):
            m, P = carry
            u, Qk = inputs
            X1 = jax.vmap(lambda x: step_fn(x, u))(_sigma_points(m, P, c))
            m1 = wm @ X1
            dX = X1 - m1
            P1 = symmetrise(_weighted_cov(wc, dX, dX) + Qk)
            return (m1, P1), (m1, P1)

    _, (ms, Ps) = jax.lax.scan(body, (m0, P0), (us, Q))
    return Predictive(jnp.concatenate([m0[None], ms]), jnp.concatenate([P0[None], Ps]))


def _value_and_jacobian(f, m, u):
    def fx(x):
        y = f(x, u)
        return y, y

    F, y = jax.jacfwd(fx, has_aux=True)(m)
    return y, F


def _propagate_ensemble(step_fn, m0, P0, us, Q, key, members):
    n = m0.shape[0]
    k0, kw = jax.random.split(key)
    X0 = m0 + jax.random.normal(k0, (members, n), m0.dtype) @ _jittered_cholesky(P0).T
    Z = jax.random.normal(kw, (us.shape[0], members, n), m0.dtype)

    def moments(X):
        m = jnp.mean(X, axis=0)
        dX = X - m
        return m, symmetrise(dX.T @ dX / (members - 1))

    def body(X, inputs):
        u, Qk, z = inputs
        X1 = jax.vmap(lambda x: step_fn(x, u))(X) + z @ _jittered_cholesky(Qk).T
        return X1, moments(X1)

    _, (ms, Ps) = jax.lax.scan(body, X0, (us, Q, Z))
    mean0, cov0 = moments(X0)
    return Predictive(jnp.concatenate([mean0[None], ms]), jnp.concatenate([cov0[None], Ps]))


def constraint_moments(
    g: Callable[[Float[Array, " state"]], Float[Array, " constraint"]],
    mean: Float[ArrayLike, " state"],
    cov: Float[ArrayLike, "state state"],
    method: str = "unscented",
    *,
    key: Key | None = None,
    members: int = 1000,
    ut_alpha: float = 1.0,
    ut_beta: float = 0.0,
    ut_kappa: float = 0.0,
) -> tuple[Float[Array, " constraint"], Float[Array, " constraint"]]:
    """Mean and variance of a nonlinear constraint ``g(x)`` (vector-valued) under ``x ~ N(m, P)``.

    ``"linearize"``: ``g(m)`` and ``diag(J P Jᵀ)``; ``"unscented"``: sigma-point moments; ``"ensemble"``: sample
    moments of ``members`` draws (needs ``key``). Feed the result to :func:`tighten`; for a horizon, ``jax.vmap`` over
    the rows of a :class:`Predictive`.
    """
    _check_propagation(method)
    m = as_float_array(mean, "mean", ndim=1)
    P = as_float_array(cov, "cov")
    n = m.shape[0]
    if P.shape != (n, n):
        raise ValueError(f"`cov` must have shape {(n, n)}, got {tuple(P.shape)}.")
    check_covariance(P, "cov")

    def gv(x):
        return jnp.atleast_1d(g(x))

    if method == "linearize":
        J = jax.jacfwd(gv)(m)
        return gv(m), jnp.clip(jnp.einsum("ci,ij,cj->c", J, P, J), 0.0)
    if method == "unscented":
        c, wm, wc = _ukf_weights(n, ut_alpha, ut_beta, ut_kappa, m.dtype)
        G = jax.vmap(gv)(_sigma_points(m, P, c))
        mu = wm @ G
        return mu, jnp.clip(wc @ (G - mu) ** 2, 0.0)
    if key is None:
        raise ValueError('`key` is required for method="ensemble".')
    X = m + jax.random.normal(key, (int(members), n), m.dtype) @ _jittered_cholesky(P).T
    G = jax.vmap(gv)(X)
    return jnp.mean(G, axis=0), jnp.var(G, axis=0, ddof=1)


# ------------------------------------------------------------------------------------- chance-constrained MPC (OCP)


def augment(mean: Float[ArrayLike, " state"], cov: Float[ArrayLike, "..."]) -> Float[Array, " augmented"]:
    """The augmented state ``z = (m, vec P)`` (length ``n + n²``, row-major ``vec``) of :class:`MomentDynamics`."""
    m = as_float_array(mean, "mean", ndim=1)
    P = as_float_array(cov, "cov")
    n = m.shape[0]
    if P.shape != (n, n):
        raise ValueError(f"`cov` must have shape {(n, n)}, got {tuple(P.shape)}.")
    return jnp.concatenate([m, P.reshape(-1)]).astype(jnp.result_type(m, P))


def _state_dim(augmented_dim: int) -> int:
    n = int(round((np.sqrt(1 + 4 * augmented_dim) - 1) / 2))
    if n < 1 or n + n * n != augmented_dim:
        raise ValueError(f"an augmented state has length n + n² for some n >= 1, got length {augmented_dim}.")
    return n


def split(
    z: Float[Array, "*batch augmented"],
) -> tuple[Float[Array, "*batch state"], Float[Array, "*batch state state"]]:
    """Inverse of :func:`augment`: ``(m, P)`` from ``z = (m, vec P)`` (leading batch axes allowed)."""
    n = _state_dim(z.shape[-1])
    return z[..., :n], z[..., n:].reshape(*z.shape[:-1], n, n)


class MomentDynamics(eqx.Module):
    r"""OCP dynamics on the augmented state ``z = (m, vec P)``: ``m⁺ = f(m, u)``, ``P⁺ = A P Aᵀ + Q``,
    ``A = ∂f/∂x(m, u)`` (the EKF prediction of :func:`propagate` with ``method="linearize"``).

    Called as ``dynamics(z, u, params) -> z⁺`` (the :class:`twinjax.control.mpc.OCP` signature); ``params`` is
    passed on to ``step_fn``. Build it with :func:`moment_dynamics`.
    """

    step_fn: Callable
    Q: Float[Array, "state state"]

    def __call__(self, z, u, params=None):
        m, P = split(z)
        m1, A = _value_and_jacobian(lambda x, v: self.step_fn(x, v, params), m, u)
        if m1.shape != m.shape:
            raise ValueError(f"`step_fn` must return a state of shape {m.shape}, got {m1.shape}.")
        P1 = symmetrise(A @ P @ A.T + self.Q)
        return jnp.concatenate([m1, P1.reshape(-1)])

    @property
    def state_dim(self) -> int:
        """``n + n²``, the ``state_dim`` of the OCP on the augmented state."""
        n = self.Q.shape[0]
        return n + n * n


def moment_dynamics(step_fn: Callable, Q: Float[ArrayLike, "..."]) -> MomentDynamics:
    r"""Turn a twin's one-step mean transition into OCP dynamics that also carry the predictive covariance.

    $$ z = (m, \mathrm{vec}\,P), \qquad m^+ = f(m, u; \theta), \qquad P^+ = A P A^\top + Q,
       \qquad A = \partial f/\partial x\,(m, u; \theta). $$

    ``A`` is a ``jax.jacfwd`` inside the dynamics, so it is differentiable with respect to ``u`` and ``θ``: the SQP
    of :func:`twinjax.control.mpc.solve` sees how a plan changes the predicted spread (for the battery twin, a hotter
    core has a smaller Joule gain and so a smaller ``∂T_c⁺/∂T_c``).

    Arguments:
        step_fn: ``f(x, u, params) -> x⁺``, the twin's one-step mean transition (the OCP's dynamics signature; ignore
            ``params`` if there are none). Reuse one function object: it is static in the compiled solver.
        Q: the process-noise covariance per step, ``(n, n)`` (an array field: changing it does not recompile).

    Returns:
        A :class:`MomentDynamics` ``(z, u, params) -> z⁺``; use ``ocp = OCP(dyn, cost, state_dim=dyn.state_dim,
        ...)`` and ``x0 = augment(m₀, P₀)``.

    Raises:
        ValueError: ``step_fn`` not callable, or a concrete ``Q`` that is not a square covariance.

    Example:
        ```python
        dyn = moment_dynamics(lambda x, u, p: A @ x + B @ u, Q)
        con = chance_constraint(lambda x: x[:1] - 1.0, 0.05, "gaussian")
        ocp = OCP(dyn, cost, horizon=10, state_dim=dyn.state_dim, u_lo=-ones, u_hi=ones, constraint=con)
        sol = solve(ocp, augment(x0, jnp.zeros((2, 2))))
        ```

    References:
        S. Särkkä, *Bayesian Filtering and Smoothing* (2013), §5.2; A. Mesbah, IEEE CSM 36(6), 2016, §III.
    """
    if not callable(step_fn):
        raise ValueError(f"`step_fn` must be callable f(x, u, params) -> x_next, got {step_fn!r}.")
    Q = as_float_array(Q, "Q")
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1] or Q.shape[0] < 1:
        raise ValueError(f"`Q` must be a square (n, n) covariance, got shape {tuple(Q.shape)}.")
    check_covariance(Q, "Q")
    return MomentDynamics(step_fn, Q)


class ChanceConstraint(eqx.Module):
    r"""OCP constraint ``(z⁺, u, params) -> g(m) + κ √(diag(J P Jᵀ))`` (``≤ 0``) on the augmented state
    ``z⁺ = (m, vec P)``, ``J = ∂g/∂x(m)``. Build it with :func:`chance_constraint`.

    ``kappa`` is an array field (a risk or method change does not recompile; vmap over it to sweep α).
    """

    g: Callable
    kappa: Float[Array, " constraint"]
    method: str = eqx.field(static=True)

    def __call__(self, z, u, params=None):
        m, P = split(z)

        def gv(x):
            return jnp.atleast_1d(self.g(x, u, params))

        mu, J = _value_and_jacobian(lambda x, _: gv(x), m, None)
        if mu.ndim != 1:
            raise ValueError(f"`g` must return a scalar or a 1-D array, got shape {mu.shape}.")
        var = jnp.einsum("ci,ij,cj->c", J, P, J)
        # a covariance propagated in floating point can have a rounding-negative quadratic form: clip before the root
        return mu + self.kappa * _safe_sqrt(jnp.clip(var, 0.0))


def chance_constraint(
    g: Callable, alpha: float | Float[ArrayLike, "..."], method: str = "gaussian"
) -> ChanceConstraint:
    r"""The tightened, OCP-compatible form of the chance constraints ``Pr(g_c(x_{k+1}) ≤ 0) ≥ 1 − α`` at every step.

    $$ c(z^+, u) = g(m) + \kappa(\alpha)\sqrt{\operatorname{diag}(J P J^\top)}, \quad J = \partial g/\partial x\,(m) $$

    with ``(m, P)`` read from the augmented state of :func:`moment_dynamics` (linearised moments, as
    :func:`constraint_moments` with ``"linearize"``; exact for a linear ``g`` of a Gaussian state). The square root
    has a finite (zero) derivative at zero variance.

    Arguments:
        g: ``g(x, u, params) -> (n_c,)`` (or a scalar), required ``≤ 0`` with probability ``≥ 1 − α`` each.
        alpha: risk per constraint, in ``(0, 1)``: a scalar or one per constraint ``(n_c,)``.
        method: the margin ``κ``, one of :data:`METHODS`.

    Returns:
        A :class:`ChanceConstraint`, to be passed as ``OCP(..., constraint=...)``.

    Raises:
        ValueError: ``g`` not callable, ``alpha`` outside ``(0, 1)`` or of rank > 1, an unknown ``method``.

    Example:
        ```python
        con = chance_constraint(lambda x, u, p: x - x_max, 0.05, "cantelli")
        ```
    """
    if not callable(g):
        raise ValueError(f"`g` must be callable g(x, u, params) -> (n_c,), got {g!r}.")
    _check_method(method)
    kappa = margin(alpha, method)
    if kappa.ndim > 1:
        raise ValueError(f"`alpha` must be a scalar or one value per constraint (n_c,), got shape {kappa.shape}.")
    return ChanceConstraint(g, jnp.atleast_1d(kappa), method)
