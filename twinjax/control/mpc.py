r"""Receding-horizon control (nonlinear MPC) of a twin: SQP with an exact Hessian and a dense interior-point QP.

**Problem.** Over a horizon of ``N`` steps, with ``x_0`` given and ``u_{-1}`` the control applied last,

$$
\begin{aligned}
\min_{u_0, \dots, u_{N-1}} \quad & \sum_{k=0}^{N-1} \ell(x_{k+1}, u_k, u_k - u_{k-1}; \theta) + V_f(x_N; \theta) \\
\text{s.t.} \quad & x_{k+1} = f(x_k, u_k; \theta), \qquad g(x_{k+1}, u_k; \theta) \le 0, \qquad
    u_{\mathrm{lo}} \le u_k \le u_{\mathrm{hi}},
\end{aligned}
$$

where ``θ`` (``params``) is any pytree, e.g. the twin's dynamics module, so every result is a function of the physics.

**Solver and why.** The states are eliminated (single shooting): a twin's horizon is short (tens of steps) and its
state small, so the decision vector ``u ∈ R^{N n_u}`` is small, and every derivative the method needs is one
vectorised JAX pass through the rollout: the cost gradient and the constraint Jacobian come out of one ``jacfwd``
(``N n_u`` tangents), the exact Hessian of the Lagrangian ``∇²(J + yᵀc)`` out of one forward-over-reverse pass.
Each SQP iteration then solves the dense QP

$$ \min_d \tfrac12 d^\top H d + \nabla J^\top d \quad\text{s.t.}\quad c + \nabla c\, d \le 0,\;
   u_{\mathrm{lo}} \le u + d \le u_{\mathrm{hi}} $$

with a Mehrotra predictor–corrector primal–dual interior-point method (one ``N n_u × N n_u`` Cholesky per iteration,
a tolerance-terminated ``while_loop``; ``H`` is made positive definite by clipping its eigenvalues), and takes a
backtracking step on the ℓ₁ merit function ``J + ν Σ max(c, 0)`` (all trial steps evaluated at once, vectorised).
This is the acados/HPIPM recipe (SQP + a structure-exploiting IP QP) in its dense-condensed form, which is the fast
one for small ``N n_u``; unlike an augmented-Lagrangian or a first-order method it converges superlinearly to tight
KKT tolerances (so the optimal cost matches IPOPT's), and unlike a full NLP interior point it warm-starts well: with
the previous solution shifted by one step, a closed-loop step of the battery-charging MPC needs 0–2 SQP iterations
(median 1; ``docs/control.md``). The outer loop stops when the KKT residual is below ``tol`` (reported in
:class:`Solution` with the constraint violation).

**Derivatives.** The SQP loop is not differentiated. At the returned optimum the KKT conditions
``F(z; θ) = [∇_u L; a ∘ C + (1 - a) ∘ λ] = 0`` (``C`` all inequality constraints incl. bounds, ``a`` the active set) are
differentiated implicitly: the outputs are ``z* − K⁻¹ F(z*; θ)`` with ``K = ∂F/∂z`` held constant, whose value is
``z*`` (plus a Newton correction of order ``tol``) and whose derivative with respect to ``θ``, ``x_0`` and ``u_{-1}`` is
the implicit-function-theorem one ``−K⁻¹ ∂F/∂θ``, in forward and reverse mode. The optimal cost is then differentiable
too and its gradient equals the envelope theorem's ``∂L/∂θ`` (tested against finite differences of re-solved problems).

References:
    J. Nocedal and S. J. Wright, *Numerical Optimization*, 2nd ed. (2006), §16.6 (primal–dual IP for QPs, Mehrotra),
    §18 (SQP, ℓ₁ merit line search).
    R. Verschueren et al., "acados — a modular open-source framework for fast embedded optimal control",
    *Math. Prog. Comp.* 14 (2022).
    J. B. Rawlings, D. Q. Mayne, M. Diehl, *Model Predictive Control: Theory, Computation, and Design*, 2nd ed.
    (2017), ch. 8 (warm-started shifting, real-time iterations).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from twinjax._checks import as_float_array, is_concrete


class OCP(eqx.Module):
    """A finite-horizon optimal control problem (see the module docstring for the maths).

    Arguments:
        dynamics: ``f(x, u, params) -> x_next``, the discrete-time model (e.g. one RK4 step of a twin's vector field).
        stage_cost: ``ℓ(x_next, u, du, params) -> scalar`` for step ``k`` with ``x_next = x_{k+1}``, ``u = u_k`` and
            ``du = u_k - u_{k-1}``.
        horizon: ``N`` ≥ 1, the number of control steps.
        state_dim: length of the state ``x``.
        u_lo, u_hi: input bounds, shape ``(n_u,)`` (``±inf`` is not allowed: use a large number).
        terminal_cost: ``V_f(x_N, params) -> scalar``, or ``None``.
        constraint: ``g(x_next, u, params) -> (n_c,)``, required ``≤ 0`` at every step, or ``None``.
        unroll: unroll the horizon loop inside the solver (a Python bool; default ``False``: unrolling a 25-step
            RK4 horizon made compilation minutes long on a 2-core CPU).

    Raises:
        ValueError: ``horizon < 1``, ``state_dim < 1``, bounds of different shapes or with ``u_lo > u_hi``.

    Example:
        ```python
        ocp = OCP(lambda x, u, p: p @ x + u, lambda x, u, du, p: x @ x + u @ u, horizon=10, state_dim=2,
                  u_lo=-jnp.ones(2), u_hi=jnp.ones(2))
        sol = solve(ocp, jnp.array([1.0, 0.0]), 0.9 * jnp.eye(2))
        ```
    """

    dynamics: Callable
    stage_cost: Callable
    terminal_cost: Callable | None
    constraint: Callable | None
    u_lo: Float[Array, " control"]
    u_hi: Float[Array, " control"]
    horizon: int = eqx.field(static=True)
    state_dim: int = eqx.field(static=True)
    unroll: bool = eqx.field(static=True)

    def __init__(
        self,
        dynamics: Callable,
        stage_cost: Callable,
        *,
        horizon: int,
        state_dim: int,
        u_lo: ArrayLike,
        u_hi: ArrayLike,
        terminal_cost: Callable | None = None,
        constraint: Callable | None = None,
        unroll: bool = False,
    ):
        if not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"`horizon` must be an integer >= 1, got {horizon!r}.")
        if not isinstance(state_dim, (int, np.integer)) or state_dim < 1:
            raise ValueError(f"`state_dim` must be an integer >= 1, got {state_dim!r}.")
        lo = as_float_array(u_lo, "u_lo", ndim=1)
        hi = as_float_array(u_hi, "u_hi", ndim=1)
        if lo.shape != hi.shape or lo.shape[0] < 1:
            raise ValueError(f"`u_lo` and `u_hi` must have the same shape (n_u,), got {lo.shape} and {hi.shape}.")
        if is_concrete(lo) and is_concrete(hi):
            lo_, hi_ = np.asarray(lo), np.asarray(hi)
            if not (np.all(np.isfinite(lo_)) and np.all(np.isfinite(hi_))):
                raise ValueError(f"`u_lo` and `u_hi` must be finite, got u_lo={lo_} and u_hi={hi_}.")
            if np.any(lo_ > hi_):
                raise ValueError(f"`u_lo` must be <= `u_hi` elementwise, got u_lo={lo_} and u_hi={hi_}.")
        self.dynamics = dynamics
        self.stage_cost = stage_cost
        self.terminal_cost = terminal_cost
        self.constraint = constraint
        self.u_lo, self.u_hi = lo, hi
        self.horizon = int(horizon)
        self.state_dim = int(state_dim)
        self.unroll = bool(unroll)

    @property
    def control_dim(self) -> int:
        """``n_u``, the length of one control vector."""
        return self.u_lo.shape[0]


class Solution(eqx.Module):
    """The result of :func:`solve`.

    Attributes:
        us: optimal controls ``u_0 … u_{N-1}``, shape ``(N, n_u)``.
        xs: predicted states ``x_1 … x_N``, shape ``(N, n_x)``.
        cost: optimal cost ``J``.
        multipliers: Lagrange multipliers ``y ≥ 0`` of ``g``, shape ``(N, n_c)``.
        bound_multipliers: multipliers of ``u ≤ u_hi`` and ``u ≥ u_lo``, shape ``(2, N, n_u)``.
        kkt_residual: max of the stationarity (``‖∇J + ∇Cᵀλ‖∞``), complementarity and primal-violation residuals.
        constraint_violation: ``max(0, max g, max(u - u_hi), max(u_lo - u))``.
        iterations: SQP iterations taken.
        qp_iterations: interior-point iterations, summed over the SQP iterations.
        converged: whether ``kkt_residual ≤ tol`` within ``max_iter`` iterations.
    """

    us: Float[Array, "horizon control"]
    xs: Float[Array, "horizon state"]
    cost: Float[Array, ""]
    multipliers: Float[Array, "horizon constraints"]
    bound_multipliers: Float[Array, "2 horizon control"]
    kkt_residual: Float[Array, ""]
    constraint_violation: Float[Array, ""]
    iterations: Int[Array, ""]
    qp_iterations: Int[Array, ""]
    converged: Bool[Array, ""]


# --- problem functions of the flat control vector ---------------------------------------------------------------------


def _num_constraints(ocp: OCP, x0, params) -> int:
    if ocp.constraint is None:
        return 0
    u = ocp.u_lo
    out = jax.eval_shape(lambda: ocp.constraint(x0, u, params))
    if len(out.shape) != 1:
        raise ValueError(f"`constraint` must return a 1-D array (n_c,), got shape {out.shape}.")
    return out.shape[0]


def _rollout(ocp: OCP, x0, us, params):
    def step(x, u):
        x_next = ocp.dynamics(x, u, params)
        return x_next, x_next

    _, xs = lax.scan(step, x0, us, unroll=ocp.horizon if ocp.unroll else 1)
    return xs


def _cost_and_constraints(ocp: OCP, uf, x0, u_prev, params):
    """``J(u)`` and ``g(u)`` (flattened, ``(N n_c,)``) for the flat control vector ``uf``."""
    us = uf.reshape(ocp.horizon, ocp.control_dim)
    xs = _rollout(ocp, x0, us, params)
    dus = us - jnp.concatenate([u_prev[None], us[:-1]])
    cost = jnp.sum(jax.vmap(lambda x, u, du: ocp.stage_cost(x, u, du, params))(xs, us, dus))
    if ocp.terminal_cost is not None:
        cost = cost + ocp.terminal_cost(xs[-1], params)
    if ocp.constraint is None:
        g = jnp.zeros((0,), uf.dtype)
    else:
        g = jax.vmap(lambda x, u: ocp.constraint(x, u, params))(xs, us).reshape(-1)
    return cost, g


def _all_constraints(ocp: OCP, uf, x0, u_prev, params):
    """``C(u) = [g(u); u - u_hi; u_lo - u] ≤ 0`` and the cost."""
    cost, g = _cost_and_constraints(ocp, uf, x0, u_prev, params)
    lo = jnp.tile(ocp.u_lo, ocp.horizon)
    hi = jnp.tile(ocp.u_hi, ocp.horizon)
    return cost, jnp.concatenate([g, uf - hi, lo - uf])


def _first_order(ocp: OCP, uf, x0, u_prev, params):
    """Cost, constraints ``g``, cost gradient and constraint Jacobian (no Hessian), in one jacfwd pass."""

    def stacked(v):
        cost, g = _cost_and_constraints(ocp, v, x0, u_prev, params)
        return jnp.concatenate([cost[None], g]), (cost, g)

    jac, (cost, g) = jax.jacfwd(stacked, has_aux=True)(uf)
    return cost, g, jac[0], jac[1:]


# --- the QP: primal-dual interior point (Mehrotra predictor-corrector) ------------------------------------------------


def _qp_solve(hess, grad, a_mat, b, tol, max_iter):
    """``min ½dᵀHd + gᵀd  s.t.  A d ≤ b`` (``H`` positive definite); returns ``d``, multipliers, iterations."""
    n, m = grad.shape[0], b.shape[0]
    dtype = grad.dtype
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(grad)))

    def residuals(d, s, z):
        r_d = hess @ d + grad + a_mat.T @ z
        r_p = a_mat @ d + s - b
        return r_d, r_p

    def newton(s, z, factor, r_d, r_p, r_c):
        # Eliminate ds, dz: (H + Aᵀ S⁻¹Z A) dd = -r_d - Aᵀ S⁻¹ (Z r_p - r_c) (Nocedal & Wright §16.6, for A d ≤ b).
        chol, scale_d = factor
        rhs = -r_d - a_mat.T @ ((z * r_p - r_c) / s)
        dd = scale_d * jsl.cho_solve((chol, True), scale_d * rhs)
        ds = -r_p - a_mat @ dd
        dz = (-r_c - z * ds) / s
        return dd, ds, dz

    def max_step(v, dv):
        ratio = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
        return jnp.minimum(1.0, jnp.min(ratio, initial=jnp.inf))

    def cond(state):
        d, s, z, it, err = state
        return (it < max_iter) & (err > tol)

    def body(state):
        d, s, z, it, _ = state
        r_d, r_p = residuals(d, s, z)
        mu = jnp.dot(s, z) / m
        mat = hess + a_mat.T @ ((z / s)[:, None] * a_mat)
        # Symmetric Jacobi scaling and a tiny relative ridge: near a degenerate optimum (e.g. a bound and a state
        # constraint both active on the same control) the barrier terms z/s of dependent rows blow up together and an
        # unscaled Cholesky can meet a rounding-negative pivot.
        scale_d = 1.0 / jnp.sqrt(jnp.diagonal(mat))
        chol = jnp.linalg.cholesky(scale_d[:, None] * mat * scale_d[None, :] + 1e-13 * jnp.eye(n, dtype=dtype))
        factor = (chol, scale_d)
        # predictor (affine scaling)
        dd_a, ds_a, dz_a = newton(s, z, factor, r_d, r_p, s * z)
        alpha_a = jnp.minimum(max_step(s, ds_a), max_step(z, dz_a))
        mu_a = jnp.dot(s + alpha_a * ds_a, z + alpha_a * dz_a) / m
        sigma = jnp.clip((mu_a / jnp.maximum(mu, jnp.finfo(dtype).tiny)) ** 3, 0.0, 1.0)
        # corrector
        # The centring target never falls below a tenth of the tolerance: pushing μ further only inflates z/s of the
        # active rows (and the condition number) without improving the answer.
        target = jnp.maximum(sigma * mu, 0.1 * tol * scale)
        dd, ds, dz = newton(s, z, factor, r_d, r_p, s * z + ds_a * dz_a - target)
        alpha = 0.995 * jnp.minimum(max_step(s, ds), max_step(z, dz))
        alpha = jnp.minimum(alpha, 1.0)
        d, s, z = d + alpha * dd, s + alpha * ds, z + alpha * dz
        r_d, r_p = residuals(d, s, z)
        err = jnp.maximum(
            jnp.max(jnp.abs(r_d)) / scale,
            jnp.maximum(jnp.max(jnp.abs(r_p), initial=0.0), jnp.max(s * z, initial=0.0) / scale),
        )
        return d, s, z, it + 1, err

    s0 = jnp.maximum(b, 1.0)
    z0 = jnp.ones((m,), dtype)
    init = (jnp.zeros((n,), dtype), s0, z0, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, dtype))
    d, s, z, it, _ = lax.while_loop(cond, body, init)
    return d, z, it


def _make_pd(hess):
    hess = 0.5 * (hess + hess.T)
    w, v = jnp.linalg.eigh(hess)
    floor = 1e-10 * jnp.maximum(1.0, jnp.max(jnp.abs(w)))
    return (v * jnp.maximum(w, floor)[None, :]) @ v.T


def _kkt(grad, jac, cons, lam):
    """KKT residual ``max(‖∇J + ∇Cᵀλ‖∞, max|λ∘C|, max(C, 0))`` and the constraint violation ``max(C, 0)``."""
    stationarity = jnp.max(jnp.abs(grad + jac.T @ lam))
    complementarity = jnp.max(jnp.abs(lam * cons), initial=0.0)
    violation = jnp.maximum(jnp.max(cons, initial=0.0), 0.0)
    return jnp.maximum(stationarity, jnp.maximum(complementarity, violation)), violation


_ALPHAS = 0.5 ** np.arange(10)
_MERIT_RTOL = 1e-9


def _sqp(ocp: OCP, x0, u_prev, params, uf0, lam0, tol, max_iter, qp_tol, qp_iter):
    n = uf0.shape[0]
    m_g = lam0.shape[0] - 2 * n
    eye = jnp.eye(n, dtype=uf0.dtype)
    lo, hi = jnp.tile(ocp.u_lo, ocp.horizon), jnp.tile(ocp.u_hi, ocp.horizon)

    def first(uf):
        cost, g, grad, jac_g = _first_order(ocp, uf, x0, u_prev, params)
        return cost, jnp.concatenate([g, uf - hi, lo - uf]), grad, jnp.concatenate([jac_g, eye, -eye])

    def lagrangian(uf, y):
        cost, g = _cost_and_constraints(ocp, uf, x0, u_prev, params)
        return cost + jnp.dot(y, g)

    def merit(uf, nu):
        cost, cons = _all_constraints(ocp, uf, x0, u_prev, params)
        return cost + nu * jnp.sum(jnp.maximum(cons, 0.0))

    def cond(state):
        _, _, _, it, _, _, err = state
        return (err > tol) & (it < max_iter)

    def body(state):
        uf, lam, nu, it, qp_its, (cost, cons, grad, jac), _ = state
        # The exact Hessian is needed only when a step is taken: the convergence test uses first derivatives only.
        hess = jax.hessian(lagrangian)(uf, lam[:m_g])
        d, lam_qp, k = _qp_solve(_make_pd(hess), grad, jac, -cons, qp_tol, qp_iter)
        nu = jnp.maximum(nu, 1.1 * jnp.max(lam_qp, initial=0.0))
        infeas = jnp.sum(jnp.maximum(cons, 0.0))
        phi0 = cost + nu * infeas
        slope = jnp.minimum(jnp.dot(grad, d) - nu * infeas, 0.0)
        alphas = jnp.asarray(_ALPHAS, uf.dtype)
        phis = jax.vmap(lambda a: merit(uf + a * d, nu))(alphas)
        # Armijo on the merit, with a relative allowance at the level of roundoff in J: near a curved active
        # constraint the full step raises the ℓ₁ merit by O(|d|²) (the Maratos effect), which would otherwise force
        # tiny steps and linear convergence just where SQP should converge quadratically.
        ok = phis <= phi0 + 1e-4 * alphas * slope + _MERIT_RTOL * (jnp.abs(phi0) + 1.0)
        alpha = jnp.where(jnp.any(ok), alphas[jnp.argmax(ok)], alphas[-1])
        uf, lam = uf + alpha * d, lam + alpha * (lam_qp - lam)
        fo = first(uf)
        err, _ = _kkt(fo[2], fo[3], fo[1], lam)
        return uf, lam, nu, it + 1, qp_its + k, fo, err

    dtype = uf0.dtype
    zero_i = jnp.zeros((), jnp.int32)
    fo0 = first(uf0)
    err0, _ = _kkt(fo0[2], fo0[3], fo0[1], lam0)
    init = (uf0, lam0, jnp.ones((), dtype), zero_i, zero_i, fo0, err0)
    uf, lam, _, it, qp_its, fo, err = lax.while_loop(cond, body, init)
    return uf, lam, it, qp_its, fo, err


def _implicit(ocp: OCP, uf, lam, x0, u_prev, params):
    """Outputs ``z* − K⁻¹F(z*; θ)`` whose derivative w.r.t. ``(x0, u_prev, params)`` is the implicit one."""
    uf, lam = lax.stop_gradient(uf), lax.stop_gradient(lam)
    n = uf.shape[0]

    def kkt_map(z, x0_, u_prev_, params_, active):
        v, lam_ = z[:n], z[n:]

        def lagrangian(w):
            cost, cons = _all_constraints(ocp, w, x0_, u_prev_, params_)
            return cost + jnp.dot(lam_, cons)

        _, cons = _all_constraints(ocp, v, x0_, u_prev_, params_)
        return jnp.concatenate([jax.grad(lagrangian)(v), jnp.where(active, cons, lam_)])

    _, cons = _all_constraints(ocp, uf, lax.stop_gradient(x0), lax.stop_gradient(u_prev), lax.stop_gradient(params))
    active = lam > -cons
    z = jnp.concatenate([uf, lam])
    k_mat = jax.jacfwd(kkt_map)(z, *lax.stop_gradient((x0, u_prev, params)), active)
    lu = lax.stop_gradient(jsl.lu_factor(k_mat))
    z_out = z - jsl.lu_solve(lu, kkt_map(z, x0, u_prev, params, active))
    return z_out[:n], z_out[n:]


def _initial_guess(ocp: OCP, warm_start, n_c: int, dtype):
    shape = (ocp.horizon, ocp.control_dim)
    n_lam = ocp.horizon * (n_c + 2 * ocp.control_dim)
    if isinstance(warm_start, Solution):
        us0 = warm_start.us
        lam0 = jnp.concatenate([warm_start.multipliers.reshape(-1), warm_start.bound_multipliers.reshape(-1)])
        if us0.shape != shape or lam0.shape != (n_lam,):
            raise ValueError(
                f"`warm_start` is a Solution of another problem: controls {us0.shape} and {lam0.shape[0]} "
                f"multipliers, expected {shape} and {n_lam}."
            )
        return us0.astype(dtype), lam0.astype(dtype)
    lam0 = jnp.zeros((n_lam,), dtype)
    if warm_start is None:
        return jnp.zeros(shape, dtype), lam0
    us0 = as_float_array(warm_start, "warm_start")
    if us0.shape != shape:
        raise ValueError(f"`warm_start` must have shape {shape} (horizon, n_u), got {tuple(us0.shape)}.")
    return us0.astype(dtype), lam0


def _solve_core(ocp, x0, params, us0, lam0, u_prev, tol, max_iter, qp_tol, qp_iter, implicit_diff):
    n = ocp.horizon * ocp.control_dim
    dtype = x0.dtype
    n_c = lam0.shape[0] // ocp.horizon - 2 * ocp.control_dim
    lo, hi = jnp.tile(ocp.u_lo, ocp.horizon), jnp.tile(ocp.u_hi, ocp.horizon)
    uf0 = jnp.clip(us0.reshape(-1), lo, hi)
    sg = lax.stop_gradient
    uf, lam, it, qp_its, (_, cons, grad, jac), err = _sqp(
        ocp, sg(x0), sg(u_prev), sg(params), sg(uf0), sg(lam0), tol, max_iter, qp_tol, qp_iter
    )
    if implicit_diff:
        uf, lam = _implicit(ocp, uf, lam, x0, u_prev, params)
        # the KKT residual at the corrected point: one more first-order pass
        _, g, grad, jac_g = _first_order(ocp, sg(uf), sg(x0), sg(u_prev), sg(params))
        eye = jnp.eye(n, dtype=dtype)
        lo, hi = jnp.tile(ocp.u_lo, ocp.horizon), jnp.tile(ocp.u_hi, ocp.horizon)
        cons = jnp.concatenate([g, sg(uf) - hi, lo - sg(uf)])
        err, _ = _kkt(grad, jnp.concatenate([jac_g, eye, -eye]), cons, sg(lam))
    violation = jnp.maximum(jnp.max(cons, initial=0.0), 0.0)
    us = uf.reshape(ocp.horizon, ocp.control_dim)
    cost, _ = _cost_and_constraints(ocp, uf, x0, u_prev, params)
    return Solution(
        us=us,
        xs=_rollout(ocp, x0, us, params),
        cost=cost,
        multipliers=lam[: ocp.horizon * n_c].reshape(ocp.horizon, n_c),
        bound_multipliers=lam[ocp.horizon * n_c :].reshape(2, ocp.horizon, ocp.control_dim),
        kkt_residual=err,
        constraint_violation=violation,
        iterations=it,
        qp_iterations=qp_its,
        converged=err <= tol,
    )


def _prepare(ocp, x0, params, warm_start, u_prev):
    dtype = jnp.result_type(x0.dtype, ocp.u_lo.dtype)
    u_prev = jnp.zeros((ocp.control_dim,), dtype) if u_prev is None else u_prev.astype(dtype)
    n_c = _num_constraints(ocp, x0, params)
    us0, lam0 = _initial_guess(ocp, warm_start, n_c, dtype)
    return x0.astype(dtype), us0, lam0, u_prev


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _solve_jit(ocp, x0, params, warm_start, u_prev, tol, max_iter, qp_tol, qp_iter, implicit_diff):
    x0, us0, lam0, u_prev = _prepare(ocp, x0, params, warm_start, u_prev)
    return _solve_core(ocp, x0, params, us0, lam0, u_prev, tol, max_iter, qp_tol, qp_iter, implicit_diff)


def solve(
    ocp: OCP,
    x0: Float[ArrayLike, " state"],
    params: Any = None,
    warm_start: Solution | ArrayLike | None = None,
    u_prev: Float[ArrayLike, " control"] | None = None,
    *,
    tol: float = 1e-8,
    max_iter: int = 50,
    qp_tol: float = 1e-10,
    qp_iter: int = 40,
    implicit_diff: bool = True,
) -> Solution:
    """Solve the OCP from ``x0`` by SQP (module docstring); compiled once per problem structure and shapes.

    Arguments:
        ocp: the problem.
        x0: initial state, shape ``(state_dim,)``.
        params: the pytree passed to ``dynamics``/costs/``constraint`` (e.g. the twin); differentiable.
        warm_start: a previous :class:`Solution` (controls and multipliers; use :func:`shift` in closed loop), an
            initial control sequence ``(N, n_u)``, or ``None`` (zeros clipped to the bounds).
        u_prev: the control applied before ``u_0`` (for ``du``), default zeros.
        tol: KKT tolerance of the SQP loop; max_iter: its iteration cap.
        qp_tol, qp_iter: tolerance and iteration cap of each interior-point QP solve.
        implicit_diff: make the outputs differentiable w.r.t. ``x0``, ``u_prev`` and ``params`` by implicit
            differentiation of the KKT conditions (a Python bool; ``False`` saves one dense solve for pure control).

    The four tolerances/caps are traced when given as JAX arrays (vary them without recompiling) and compiled in as
    constants when given as Python numbers (the fastest per-call path). The default tolerances assume float64
    (``jax_enable_x64``); in float32 loosen them to ~1e-4 / 1e-5.

    Returns:
        A :class:`Solution`; check ``converged`` (or ``kkt_residual``) — no exception is raised on non-convergence so
        that vmapped and closed-loop solves can be inspected per member.

    Raises:
        ValueError: ``x0`` not of shape ``(state_dim,)``, a warm start or ``u_prev`` of the wrong shape.

    Example:
        ```python
        sol = solve(ocp, x0, twin)
        sol = solve(ocp, x1, twin, warm_start=shift(sol), u_prev=sol.us[0])  # the next MPC step
        ```
    """
    if np.shape(x0) != (ocp.state_dim,):
        raise ValueError(f"`x0` must have shape ({ocp.state_dim},) (the OCP's state_dim), got {np.shape(x0)}.")
    x0 = as_float_array(x0, "x0")
    if u_prev is not None:
        if np.shape(u_prev) != (ocp.control_dim,):
            raise ValueError(f"`u_prev` must have shape ({ocp.control_dim},), got {np.shape(u_prev)}.")
        u_prev = as_float_array(u_prev, "u_prev")
    if warm_start is not None and not isinstance(warm_start, Solution):
        if np.shape(warm_start) != (ocp.horizon, ocp.control_dim):
            raise ValueError(
                f"`warm_start` must have shape ({ocp.horizon}, {ocp.control_dim}) (horizon, n_u), "
                f"got {np.shape(warm_start)}."
            )
        warm_start = as_float_array(warm_start, "warm_start")
    return _solve_jit(ocp, x0, params, warm_start, u_prev, tol, max_iter, qp_tol, qp_iter, bool(implicit_diff))


def shift(solution: Solution) -> Solution:
    """The warm start for the next MPC step: controls and multipliers shifted by one step, the last one repeated."""

    def roll(a, axis=0):
        a = jnp.moveaxis(a, axis, 0)
        return jnp.moveaxis(jnp.concatenate([a[1:], a[-1:]]), 0, axis)

    return eqx.tree_at(
        lambda s: (s.us, s.xs, s.multipliers, s.bound_multipliers),
        solution,
        (roll(solution.us), roll(solution.xs), roll(solution.multipliers), roll(solution.bound_multipliers, 1)),
    )


def cold_solution(ocp: OCP, constraints: int, dtype=float) -> Solution:
    """A "previous solution" of zeros for :func:`step`: stepping from it is a cold start (controls 0 clipped to the
    bounds, ``u_prev = 0``). Use it to initialise a closed loop's carry and to reset it after a failed solve.

    Arguments:
        ocp: the problem.
        constraints: ``n_c``, the length of ``ocp.constraint``'s output (0 without one).
        dtype: the floating dtype of the loop.
    """
    n, n_u = ocp.horizon, ocp.control_dim
    z = jnp.zeros((), dtype)
    i = jnp.zeros((), jnp.int32)
    return Solution(
        us=jnp.zeros((n, n_u), dtype),
        xs=jnp.zeros((n, ocp.state_dim), dtype),
        cost=z,
        multipliers=jnp.zeros((n, constraints), dtype),
        bound_multipliers=jnp.zeros((2, n, n_u), dtype),
        kkt_residual=z,
        constraint_violation=z,
        iterations=i,
        qp_iterations=i,
        converged=jnp.ones((), bool),
    )


class ClosedLoop(eqx.Module):
    """A closed-loop run of the MPC (:func:`closed_loop`).

    Attributes:
        xs: plant states ``x_0 … x_T``, shape ``(T + 1, n_x)``.
        us: applied controls ``u_0 … u_{T-1}``, shape ``(T, n_u)``.
        cost: optimal cost of each step's OCP, shape ``(T,)``.
        kkt_residual, constraint_violation, iterations, converged: per step, as in :class:`Solution`.
    """

    xs: Float[Array, "steps_plus_one state"]
    us: Float[Array, "steps control"]
    cost: Float[Array, " steps"]
    kkt_residual: Float[Array, " steps"]
    constraint_violation: Float[Array, " steps"]
    iterations: Int[Array, " steps"]
    converged: Bool[Array, " steps"]


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _closed_loop_jit(ocp, plant_step, x0, params, steps, key, u_prev, tol, max_iter, qp_tol, qp_iter, implicit_diff):
    x0, us0, lam0, u_prev = _prepare(ocp, x0, params, None, u_prev)

    def step(carry, key_k):
        x, us_w, lam_w, u_last = carry
        sol = _solve_core(ocp, x, params, us_w, lam_w, u_last, tol, max_iter, qp_tol, qp_iter, implicit_diff)
        u = sol.us[0]
        x_next = plant_step(x, u, key_k)
        warm = shift(sol)
        lam_next = jnp.concatenate([warm.multipliers.reshape(-1), warm.bound_multipliers.reshape(-1)])
        info = (sol.cost, sol.kkt_residual, sol.constraint_violation, sol.iterations, sol.converged)
        return (x_next, warm.us, lam_next, u), (x_next, u, info)

    keys = jax.random.split(key, steps)
    _, (xs, us, info) = lax.scan(step, (x0, us0, lam0, u_prev), keys)
    cost, kkt, violation, iterations, converged = info
    return ClosedLoop(jnp.concatenate([x0[None], xs]), us, cost, kkt, violation, iterations, converged)


def closed_loop(
    ocp: OCP,
    plant_step: Callable,
    x0: Float[ArrayLike, " state"],
    params: Any,
    steps: int,
    key: PRNGKeyArray,
    u_prev: Float[ArrayLike, " control"] | None = None,
    *,
    tol: float = 1e-8,
    max_iter: int = 50,
    qp_tol: float = 1e-10,
    qp_iter: int = 40,
    implicit_diff: bool = False,
) -> ClosedLoop:
    """Run the receding-horizon controller against a plant for ``steps`` steps, as one compiled ``lax.scan``.

    At each step the OCP is solved from the plant's state, warm-started with the previous solution shifted by one
    step (:func:`shift`; the first step starts cold), the first control is applied, and the plant advances:
    ``x_{k+1} = plant_step(x_k, u_k, key_k)`` (a nominal plant ignores ``key_k``; a noisy or mismatched one may use it).

    Arguments:
        ocp, params: the problem and its parameters (the controller's model of the plant).
        plant_step: ``(x, u, key) -> x_next``.
        x0: the plant's initial state.
        steps: number of closed-loop steps (a Python int: the scan length).
        key: PRNG key, split once per step for the plant.
        u_prev: the control applied before the first step (default zeros).
        tol, max_iter, qp_tol, qp_iter: as in :func:`solve`.
        implicit_diff: differentiate each step's solution implicitly (for gradients of the closed loop w.r.t.
            ``params``); off by default.

    Returns:
        A :class:`ClosedLoop` with the trajectory and per-step solver diagnostics.

    Raises:
        ValueError: ``x0`` of the wrong shape or ``steps < 1``.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    if np.shape(x0) != (ocp.state_dim,):
        raise ValueError(f"`x0` must have shape ({ocp.state_dim},) (the OCP's state_dim), got {np.shape(x0)}.")
    if u_prev is not None and np.shape(u_prev) != (ocp.control_dim,):
        raise ValueError(f"`u_prev` must have shape ({ocp.control_dim},), got {np.shape(u_prev)}.")
    x0 = as_float_array(x0, "x0")
    u_prev = None if u_prev is None else as_float_array(u_prev, "u_prev")
    return _closed_loop_jit(
        ocp, plant_step, x0, params, int(steps), key, u_prev, tol, max_iter, qp_tol, qp_iter, bool(implicit_diff)
    )


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _step_jit(ocp, x, params, previous, tol, max_iter, qp_tol, qp_iter):
    warm = shift(previous)
    x, us0, lam0, u_prev = _prepare(ocp, x, params, warm, previous.us[0])
    return _solve_core(ocp, x, params, us0, lam0, u_prev, tol, max_iter, qp_tol, qp_iter, False)


def step(
    ocp: OCP,
    x: Float[ArrayLike, " state"],
    params: Any,
    previous: Solution,
    *,
    tol: float = 1e-8,
    max_iter: int = 50,
    qp_tol: float = 1e-10,
    qp_iter: int = 40,
) -> Solution:
    """One receding-horizon step: solve from the measured state ``x``, warm-started with ``previous`` shifted by one
    step and with ``u_prev = previous.us[0]`` (the control just applied); one compiled call (the online path).

    Equivalent to ``solve(ocp, x, params, warm_start=shift(previous), u_prev=previous.us[0], implicit_diff=False)``.
    Apply ``result.us[0]`` to the plant.

    Raises:
        ValueError: ``x`` not of shape ``(state_dim,)``.
    """
    if np.shape(x) != (ocp.state_dim,):
        raise ValueError(f"`x` must have shape ({ocp.state_dim},) (the OCP's state_dim), got {np.shape(x)}.")
    return _step_jit(ocp, as_float_array(x, "x"), params, previous, tol, max_iter, qp_tol, qp_iter)
