"""Chance-constraint tightening (twinjax.control.chance): the margins against REFERENCES.md, the propagation of the
predictive moments against a dense Kalman prediction and Monte Carlo, gradients against finite differences, and the
Monte-Carlo validation of the violation rates under Gaussian and Student-t (ν = 3) noise."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from twinjax.control import chance

# REFERENCES.md, "Chance-constraint tightening constants (single linear constraint, risk α)"
TABLE = {
    0.05: {"gaussian": 1.6449, "cantelli": 4.3589, "subgaussian": 2.4477},
    0.01: {"gaussian": 2.3263, "cantelli": 9.9499, "subgaussian": 3.0349},
}
A = np.array([[1.0, 0.1], [-0.2, 0.9]])
B = np.array([[0.0], [0.1]])
Q = np.array([[0.02, 0.005], [0.005, 0.03]])
M0 = np.array([0.5, -0.3])
P0 = np.array([[0.1, 0.02], [0.02, 0.05]])
US = np.array([[1.0], [0.5], [-0.2], [0.0]])
ROWS = np.array([[1.0, 0.0], [0.5, 1.0]])  # two linear constraints a_c x ≤ limit


def linear_step(x, u):
    return jnp.asarray(A) @ x + jnp.asarray(B) @ u


def pendulum_step(x, u, dt=0.1):
    return jnp.stack([x[0] + dt * x[1], x[1] - dt * 9.81 * jnp.sin(x[0]) + dt * u[0]])


def kalman_predict_dense(m0, P0, us, Q):
    means, covs = [m0], [P0]
    for u in us:
        means.append(A @ means[-1] + B @ u)
        covs.append(A @ covs[-1] @ A.T + Q)
    return np.stack(means), np.stack(covs)


@pytest.mark.parametrize("alpha", sorted(TABLE))
@pytest.mark.parametrize("method", chance.METHODS)
def test_margins_match_references_table(alpha, method):
    """REFERENCES.md "Chance-constraint tightening constants": z₁₋α, √((1−α)/α), √(2 ln 1/α) to 1e-4."""
    assert float(chance.margin(alpha, method)) == pytest.approx(TABLE[alpha][method], abs=1e-4)


def test_tighten_is_mean_plus_margin_sd_and_the_soc_form():
    kappa = float(chance.margin(0.05, "cantelli"))
    assert float(chance.tighten(1.0, 4.0, 0.05, "cantelli")) == pytest.approx(1.0 + 2.0 * kappa)
    a, b = np.array([2.0, -1.0]), 0.3
    mu, var = chance.linear_moments(a, b, M0, P0)
    expected = a @ M0 + b + chance.margin(0.05, "gaussian") * np.sqrt(a @ P0 @ a)
    assert float(chance.tighten(mu, var, 0.05)) == pytest.approx(float(expected), rel=1e-12)
    mus, vars_ = chance.linear_moments(ROWS, np.zeros(2), np.stack([M0, M0]), np.stack([P0, P0]))
    assert mus.shape == vars_.shape == (2, 2)
    np.testing.assert_allclose(vars_[1], np.einsum("ci,ij,cj->c", ROWS, P0, ROWS))


def test_errors_name_the_argument():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            chance.margin(bad, "gaussian")
    with pytest.raises(ValueError, match="gaussian.*cantelli.*subgaussian"):
        chance.margin(0.05, "chebyshev")
    with pytest.raises(ValueError, match="var"):
        chance.tighten(0.0, -1.0, 0.05)
    with pytest.raises(ValueError, match="linearize.*unscented.*ensemble"):
        chance.propagate(linear_step, M0, P0, US, Q, "particle")
    with pytest.raises(ValueError, match="key"):
        chance.propagate(linear_step, M0, P0, US, Q, "ensemble")
    with pytest.raises(ValueError, match="x0_cov"):
        chance.propagate(linear_step, M0, -P0, US, Q, "linearize")
    with pytest.raises(ValueError, match="Q"):
        chance.propagate(linear_step, M0, P0, US, np.eye(3), "linearize")
    with pytest.raises(Exception, match="variance"):  # value-dependent: eqx.error_if inside jit
        jax.jit(lambda v: chance.tighten(0.0, v, 0.05))(-1.0)


@pytest.mark.parametrize("method", ["linearize", "unscented"])
def test_propagation_exact_on_linear_gaussian(method):
    """Linearisation and the unscented transform reproduce the dense Kalman prediction of a linear-Gaussian twin."""
    pred = chance.propagate(linear_step, M0, P0, US, Q, method)
    means, covs = kalman_predict_dense(M0, P0, US, Q)
    assert pred.mean.shape == (len(US) + 1, 2) and pred.cov.shape == (len(US) + 1, 2, 2)
    np.testing.assert_allclose(pred.mean, means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pred.cov, covs, rtol=1e-10, atol=1e-12)


def test_propagate_compiles_once_per_shape():
    """New values of the belief, controls, noise and unscented parameters reuse the compiled propagation."""
    from twinjax.control.chance import _propagate_jit

    chance.propagate(linear_step, M0, P0, US, Q, "unscented")
    before = eqx.debug.get_num_traces(_propagate_jit)
    chance.propagate(linear_step, M0 + 1, 2 * P0, US - 1, 0.5 * Q, "unscented", ut_alpha=0.5, ut_kappa=1.0)
    assert eqx.debug.get_num_traces(_propagate_jit) == before


def test_ensemble_propagation_within_monte_carlo_error(key):
    members = 20_000
    pred = chance.propagate(linear_step, M0, P0, US, Q, "ensemble", key=key, members=members)
    means, covs = kalman_predict_dense(M0, P0, US, Q)
    sd = np.sqrt(np.diagonal(covs, axis1=1, axis2=2))
    assert np.all(np.abs(pred.mean - means) <= 4 * sd / np.sqrt(members))
    # sample variance of a Gaussian: SE = σ² √(2/(N-1))
    var = np.diagonal(covs, axis1=1, axis2=2)
    assert np.all(np.abs(np.diagonal(pred.cov, axis1=1, axis2=2) - var) <= 4 * var * np.sqrt(2 / (members - 1)))


def test_nonlinear_propagation_against_large_monte_carlo(key):
    """Pendulum, 10 steps of 0.1 s from N(m, P) with a 0.3 rad spread, against a 2·10⁵-sample Monte Carlo: the
    unscented mean within 4 Monte-Carlo SE and its variances within 5 %; linearisation (first order, biased where
    ``sin`` curves) within 0.15 and 10 %, and less accurate than the unscented transform."""
    m0, P0_, Qp = np.array([0.8, 0.0]), np.diag([0.09, 0.04]), np.diag([1e-4, 1e-3])
    us = np.zeros((10, 1))
    members = 200_000
    mc = chance.propagate(pendulum_step, m0, P0_, us, Qp, "ensemble", key=key, members=members)
    se = np.sqrt(np.diagonal(mc.cov[-1]) / members)
    tolerance = {"unscented": (4 * se, 0.05), "linearize": (0.15, 0.10)}
    errors = {}
    for method, (mean_tol, var_tol) in tolerance.items():
        pred = chance.propagate(pendulum_step, m0, P0_, us, Qp, method)
        errors[method] = np.abs(pred.mean[-1] - mc.mean[-1])
        assert np.all(errors[method] <= mean_tol), (method, pred.mean[-1], mc.mean[-1])
        rel = np.diagonal(pred.cov[-1]) / np.diagonal(mc.cov[-1]) - 1
        assert np.all(np.abs(rel) <= var_tol), (method, rel)
    assert np.all(errors["unscented"] < errors["linearize"])


def test_constraint_moments_of_a_quadratic(key):
    """g(x) = x₀²: E g = m² + P exactly by the unscented rule (and Monte Carlo); linearisation misses the +P."""
    m, P = np.array([1.5, 0.0]), np.diag([0.2, 0.1])

    def g(x):
        return x[0] ** 2

    mu_u, var_u = chance.constraint_moments(g, m, P, "unscented")
    mu_l, var_l = chance.constraint_moments(g, m, P, "linearize")
    mu_e, var_e = chance.constraint_moments(g, m, P, "ensemble", key=key, members=100_000)
    exact_mu, exact_var = 1.5**2 + 0.2, 4 * 1.5**2 * 0.2 + 2 * 0.2**2
    assert float(mu_u[0]) == pytest.approx(exact_mu, rel=1e-12)
    assert float(mu_l[0]) == pytest.approx(1.5**2) and float(var_l[0]) == pytest.approx(4 * 1.5**2 * 0.2)
    assert abs(float(mu_e[0]) - exact_mu) <= 4 * np.sqrt(exact_var / 100_000)
    assert float(var_e[0]) == pytest.approx(exact_var, rel=0.03)
    assert float(var_u[0]) == pytest.approx(exact_var, rel=0.03)  # the cubature rule is not exact on 4th moments


def _fd(f, x, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        grad[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return grad


@pytest.mark.parametrize("method", chance.METHODS)
def test_tighten_gradients_match_finite_differences(method):
    def f(p):
        return float(chance.tighten(p[0], p[1], p[2], method))

    p = np.array([0.3, 0.7, 0.04])
    grad = jax.grad(lambda q: chance.tighten(q[0], q[1], q[2], method))(jnp.asarray(p))
    np.testing.assert_allclose(grad, _fd(f, p, 1e-7), rtol=1e-5)
    # a constraint known exactly (zero variance) keeps a finite gradient
    assert np.all(np.isfinite(jax.grad(lambda v: chance.tighten(0.0, v, 0.05, method))(0.0)))


@pytest.mark.parametrize("method", chance.PROPAGATIONS)
def test_propagate_gradients_match_finite_differences(method, key):
    """∂/∂(u, m₀) of the tightened end-of-horizon constraint of the pendulum, against central differences."""

    def objective(params):
        us, m0 = params[:4, None], params[4:]
        pred = chance.propagate(pendulum_step, m0, P0, us, Q, method, key=key, members=64)
        mu, var = chance.linear_moments(ROWS, np.zeros(2), pred.mean[-1], pred.cov[-1])
        return jnp.sum(chance.tighten(mu, var, 0.05, "gaussian"))

    p = np.concatenate([US[:, 0], M0])
    grad = np.asarray(jax.grad(objective)(jnp.asarray(p)))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, _fd(lambda q: float(objective(jnp.asarray(q))), p), rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------------------- Monte-Carlo validation

N_MC = 100_000
NU = 3


def _rollouts(key, noise: str):
    """``N_MC`` rollouts of the linear twin from ``N(M0, P0)`` under ``US`` with process noise of covariance ``Q``.

    ``noise="student_t"``: every Gaussian draw of one rollout (initial state and all process noise) is divided by
    ``√(χ²_ν / (ν − 2))`` with one χ² per rollout — a jointly elliptical multivariate Student-t with ν = 3 and the same
    covariance (scale ``√((ν−2)/ν)``), so each linear constraint is exactly ``σ √((ν−2)/ν) t_ν`` at every step and
    its violation rate is known in closed form (``scipy.stats.t.sf``)."""
    k0, kw, kc = jax.random.split(key, 3)
    z0 = jax.random.normal(k0, (N_MC, 2)) @ np.linalg.cholesky(P0).T
    zw = jax.random.normal(kw, (len(US), N_MC, 2)) @ np.linalg.cholesky(Q).T
    if noise == "student_t":
        scale = jnp.sqrt((NU - 2) / jax.random.chisquare(kc, NU, (N_MC,)))
        z0, zw = z0 * scale[:, None], zw * scale[None, :, None]

    def body(x, inputs):
        u, w = inputs
        x1 = x @ A.T + u @ B.T + w
        return x1, x1

    _, xs = jax.lax.scan(body, M0 + z0, (jnp.asarray(US), zw))
    return xs  # (horizon, sample, state): steps 1 … H


def _expected_rate(kappa: float, noise: str) -> float:
    if noise == "gaussian":
        return float(stats.norm.sf(kappa))
    return float(stats.t.sf(kappa * np.sqrt(NU / (NU - 2)), NU))


@pytest.mark.parametrize("noise", ["gaussian", "student_t"])
def test_violation_rates_monte_carlo(noise):
    """10⁵ rollouts over 4 steps, 2 linear constraints whose limits are set so that each tightened constraint is
    exactly active (limit = aᵀm_k + κ σ_k): the per-step, per-constraint violation frequency of every reformulation
    agrees with its closed-form rate within 3 SE, and

    - Gaussian noise, α ∈ {0.05, 0.01}: every frequency ≤ α + 2 SE for all three (the Gaussian one is exactly α, so
      its 8 cells are checked at α + 3 SE: a tight bound exceeds α + 2 SE by chance in 2.3 % of cells);
    - Student-t (ν = 3, matched variance), α = 0.01: Cantelli ≤ α + 2 SE while the Gaussian reformulation is
      > α + 2 SE in every cell (closed form P(t₃ > 2.3263·√3) = 0.01374).

    REFERENCES.md, "Chance-constraint tightening constants" (empirical check)."""
    xs = np.asarray(_rollouts(jax.random.key(2026), noise))
    pred = chance.propagate(linear_step, M0, P0, US, Q, "linearize")
    mu, var = (np.asarray(v)[1:] for v in chance.linear_moments(ROWS, np.zeros(2), pred.mean, pred.cov))
    g = np.einsum("ksi,ci->ksc", xs, ROWS)  # (step, sample, constraint)
    alphas = (0.05, 0.01) if noise == "gaussian" else (0.01,)
    for alpha in alphas:
        se_alpha = np.sqrt(alpha * (1 - alpha) / N_MC)
        for method in chance.METHODS:
            kappa = float(chance.margin(alpha, method))
            limit = np.asarray(chance.tighten(mu, var, alpha, method))  # (step, constraint)
            freq = np.mean(g > limit[:, None, :], axis=1)
            expected = _expected_rate(kappa, noise)
            se = np.sqrt(max(expected * (1 - expected), 1e-12) / N_MC)
            assert np.all(np.abs(freq - expected) <= 3 * se + 1e-12), (alpha, method, freq, expected)
            if noise == "gaussian":
                assert expected <= alpha + 1e-6
                k = 3 if method == "gaussian" else 2
                assert np.all(freq <= alpha + k * se_alpha), (alpha, method, freq)
            elif method == "cantelli":
                assert np.all(freq <= alpha + 2 * se_alpha), freq
            elif method == "gaussian":
                assert expected == pytest.approx(0.01374, abs=1e-5)
                assert np.all(freq > alpha + 2 * se_alpha), freq


# ----------------------------------------------------------------------------- chance-constrained MPC (mpc.solve)

TARGET = np.array([2.0, 1.0])
LIMITS = np.array([2.5, 1.0])


def _linear_step3(x, u, params):
    return jnp.asarray(A) @ x + jnp.asarray(B) @ u


def _pendulum_step3(x, u, params):
    return pendulum_step(x, u)


def _lq_chance_ocp(alpha, method, horizon=4):
    from twinjax.control import mpc

    dyn = chance.moment_dynamics(_linear_step3, Q)
    con = chance.chance_constraint(lambda x, u, p: jnp.asarray(ROWS) @ x - jnp.asarray(LIMITS), alpha, method)

    def cost(z, u, du, p):
        m = z[:2]
        return jnp.sum((m - jnp.asarray(TARGET)) ** 2) + 0.1 * jnp.sum(u**2)

    return mpc.OCP(
        dyn, cost, horizon=horizon, state_dim=dyn.state_dim, u_lo=np.array([-5.0]), u_hi=np.array([5.0]), constraint=con
    )


@pytest.mark.parametrize("step_fn", [_linear_step3, _pendulum_step3])
def test_moment_dynamics_equal_linearized_propagation(step_fn):
    """The augmented dynamics, iterated, reproduce ``propagate(..., "linearize")`` step by step (and augment/split
    are inverses)."""
    dyn = chance.moment_dynamics(step_fn, Q)
    us = jnp.asarray(US)

    def body(z, u):
        z1 = dyn(z, u, None)
        return z1, z1

    _, zs = jax.lax.scan(body, chance.augment(M0, P0), us)
    pred = chance.propagate(lambda x, u: step_fn(x, u, None), M0, P0, US, Q, "linearize")
    m, P = chance.split(zs)
    np.testing.assert_allclose(m, pred.mean[1:], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(P, pred.cov[1:], rtol=1e-12, atol=1e-14)
    assert dyn.state_dim == 6


def test_chance_constraint_is_tightened_linearized_moments():
    """``g(m) + κ √diag(J P Jᵀ)`` equals ``constraint_moments("linearize")`` then ``tighten``; finite gradient at
    zero variance."""
    g = lambda x, u, p: jnp.stack([x[0] ** 2 - 1.0, jnp.sin(x[1])])  # noqa: E731
    con = chance.chance_constraint(g, 0.05, "subgaussian")
    mu, var = chance.constraint_moments(lambda x: g(x, None, None), M0, P0, "linearize")
    z = chance.augment(M0, P0)
    np.testing.assert_allclose(con(z, None, None), chance.tighten(mu, var, 0.05, "subgaussian"), rtol=1e-12)
    grad = jax.grad(lambda z: jnp.sum(con(z, None, None)))(chance.augment(M0, jnp.zeros((2, 2))))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("method", ["gaussian", "cantelli"])
def test_chance_mpc_matches_slsqp_on_tightened_linear_gaussian_problem(method):
    """Linear twin, linear constraints: the chance-constrained OCP solved by ``mpc.solve`` on the augmented state
    equals scipy SLSQP on the tightened problem written out densely (means ``A m + B u``, covariances by the Kalman
    recursion, independent of ``u``)."""
    from scipy.optimize import minimize

    from twinjax.control import mpc

    alpha, N = 0.05, 4
    ocp = _lq_chance_ocp(alpha, method, N)
    sol = mpc.solve(ocp, chance.augment(M0, P0))
    kappa = float(chance.margin(alpha, method))
    _, covs = kalman_predict_dense(M0, P0, np.zeros((N, 1)), Q)
    sds = np.sqrt(np.einsum("ci,kij,cj->kc", ROWS, covs[1:], ROWS))

    def means(u):
        ms, m = [], M0
        for k in range(N):
            m = A @ m + B[:, 0] * u[k]
            ms.append(m)
        return np.stack(ms)

    def cost(u):
        return float(np.sum((means(u) - TARGET) ** 2) + 0.1 * np.sum(u**2))

    def cons(u):  # ≥ 0 for SLSQP
        return (LIMITS - means(u) @ ROWS.T - kappa * sds).reshape(-1)

    ref = minimize(cost, np.zeros(N), method="SLSQP", bounds=[(-5, 5)] * N,
                   constraints=[{"type": "ineq", "fun": cons}], options={"ftol": 1e-14, "maxiter": 500})  # fmt: skip
    assert ref.success and bool(sol.converged)
    assert np.max(-cons(ref.x)) > -1e-6  # a chance constraint is active at the optimum
    np.testing.assert_allclose(np.asarray(sol.us[:, 0]), ref.x, atol=1e-6)
    assert float(sol.cost) == pytest.approx(ref.fun, rel=1e-8)


def test_chance_mpc_gradient_matches_finite_differences():
    """d(optimal cost)/d(initial mean) through ``mpc.solve`` (implicit differentiation of the KKT conditions, the
    covariance recursion differentiated inside) against central differences of re-solved problems; finite."""
    from twinjax.control import mpc

    ocp = _lq_chance_ocp(0.05, "gaussian", 4)

    def opt_cost(m0):
        return mpc.solve(ocp, chance.augment(m0, P0)).cost

    grad = np.asarray(jax.grad(opt_cost)(jnp.asarray(M0)))
    h = 1e-5
    fd = [(opt_cost(M0 + h * e) - opt_cost(M0 - h * e)) / (2 * h) for e in np.eye(2)]
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, np.asarray(fd), rtol=1e-5, atol=1e-7)


def test_chance_mpc_errors():
    with pytest.raises(ValueError, match="Q"):
        chance.moment_dynamics(_linear_step3, np.ones(3))
    with pytest.raises(ValueError, match="Q"):
        chance.moment_dynamics(_linear_step3, -np.eye(2))
    with pytest.raises(ValueError, match="alpha"):
        chance.chance_constraint(lambda x, u, p: x, 1.5)
    with pytest.raises(ValueError, match="gaussian.*cantelli"):
        chance.chance_constraint(lambda x, u, p: x, 0.05, "chebyshev")
    with pytest.raises(ValueError, match="length"):
        chance.split(jnp.zeros(5))
    with pytest.raises(ValueError, match="cov"):
        chance.augment(M0, np.eye(3))
