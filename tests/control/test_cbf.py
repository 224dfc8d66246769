"""Robust control barrier functions: the projections against scipy's SLSQP, the known-parameter limit, forward
invariance in closed loop under true parameters drawn from the posterior (robust: none leaves the safe set; the
posterior-mean CBF: some do), the margin's scaling with Σ, the cone case, gradients and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint, minimize

from twinjax.control import cbf

X_AMB = 20.0
X_MAX = 28.0


def h(x):
    return X_MAX - x[0]


def f(x, th):  # thermal zone: θ = (loss rate, heater gain, disturbance)
    return jnp.stack([th[0] * (X_AMB - x[0]) + th[2]])


def g_known(x, th):
    return jnp.array([[1.8]])


def g_uncertain(x, th):
    return th[1].reshape(1, 1)


MEAN = jnp.array([1.8, 1.8, 0.5])
COV = jnp.diag(jnp.array([0.3, 0.3, 0.2]) ** 2)


def reference(u0, cons, lower=None, upper=None):
    """``argmin ‖u − u0‖²`` by scipy's trust-region interior-point solver (an independent implementation, accurate
    to ~1e-5: an interior point stays inside the feasible set)."""
    bounds = None if lower is None else Bounds(lower, upper)
    res = minimize(
        lambda u: np.sum((u - u0) ** 2), u0, jac=lambda u: 2 * (u - u0), hess=lambda u: 2 * np.eye(len(u)),
        method="trust-constr", constraints=cons, bounds=bounds, options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000},
    )  # fmt: skip
    return res.x


def assert_optimal(u, ref, u0):
    """For a feasible ``u`` and feasible ``ref`` of ``min ‖u − u0‖²`` (1-strongly convex), ``u`` is at least as good
    and ``‖u − ref‖² ≤ cost(ref) − cost(u*)``: the closeness follows from the costs."""
    cost_u, cost_ref = float(np.sum((np.asarray(u) - u0) ** 2)), float(np.sum((ref - u0) ** 2))
    assert cost_u <= cost_ref + 1e-10
    np.testing.assert_allclose(u, ref, atol=1e-4)


def test_projections_match_scipy():
    rng = np.random.default_rng(0)
    for _ in range(10):
        u0, a = rng.normal(size=2), rng.normal(size=2)
        b = float(a @ u0 + abs(rng.normal()))  # violated, so the projection is active
        u, ok = cbf.project_halfspace(u0, a, b)
        ref = reference(u0, [LinearConstraint(a[None], b, np.inf)])
        assert bool(ok) and float(a @ u) >= b - 1e-12
        assert_optimal(u, ref, u0)
        # several half-spaces and a box: the enumeration QP
        G, p = rng.normal(size=(3, 2)), rng.uniform(-2.0, 2.0, size=2)
        w = G @ p + rng.uniform(0.0, 0.5, size=3)  # p is feasible: the QP has a solution
        lo, hi = -np.full(2, 3.0), np.full(2, 3.0)
        Gb = np.concatenate([G, np.eye(2), -np.eye(2)])
        wb = np.concatenate([w, hi, -lo])
        u, ok = cbf.project_polyhedron(3 * u0, Gb, wb)
        ref = reference(3 * u0, [LinearConstraint(G, -np.inf, w)], lo, hi)
        assert bool(ok) and np.all(Gb @ np.asarray(u) <= wb + 1e-9)
        assert_optimal(u, ref, 3 * u0)
    # contradictory constraints are reported, not hidden
    _, ok = cbf.project_polyhedron(jnp.zeros(1), jnp.array([[1.0], [-1.0]]), jnp.array([-1.0, -1.0]))
    assert not bool(ok)


@pytest.mark.strict
def test_known_parameters_give_the_nominal_cbf():
    """Σ = 0: no margin, and the filter is the closed-form nominal CBF filter of the mean model."""
    x, u_nom = jnp.array([26.0]), jnp.array([9.0])
    cond = cbf.robust_condition(h, f, g_known, x, MEAN, jnp.zeros((3, 3)), alpha=0.5, kappa=3.0)
    res = cbf.safety_filter(cond, u_nom)
    # nominal CBF: -(θ0(x_a - x) + θ2 + 1.8 u) + α(x_max - x) >= 0  ⇔  u <= (α(x_max - x) - θ0(x_a - x) - θ2) / 1.8
    u_max = (0.5 * (X_MAX - 26.0) - 1.8 * (X_AMB - 26.0) - 0.5) / 1.8
    np.testing.assert_allclose(res.u, [min(9.0, u_max)], rtol=1e-12)
    np.testing.assert_allclose(cond.margin(res.u), 0.0, atol=0)
    assert bool(res.active) and bool(res.feasible)
    # a safe nominal control is left alone
    res = cbf.safety_filter(cond, jnp.array([0.0]))
    assert not bool(res.active) and float(res.u[0]) == 0.0


@pytest.mark.strict
def test_margin_shrinks_with_the_posterior_variance():
    x, u = jnp.array([25.0]), jnp.array([3.0])
    margins, us = [], []
    for scale in (1.0, 0.25, 0.0625):
        cond = cbf.robust_condition(h, f, g_uncertain, x, MEAN, scale * COV, alpha=0.5, kappa=3.0)
        margins.append(float(cond.margin(u)[0]))
        us.append(float(cbf.safety_filter(cond, jnp.array([20.0])).u[0]))
    np.testing.assert_allclose(margins[1:], [margins[0] / 2, margins[0] / 4], rtol=1e-12)
    assert us[0] < us[1] < us[2]  # the filter lets more heating through as the twin learns


def _closed_loop(theta, mean, cov, kappa, g, steps=400, dt=0.02):
    def step(x, _):
        u = cbf.robust_filter(h, f, g, x, jnp.array([12.0]), mean, cov, alpha=0.5, kappa=kappa, lower=0.0).u
        x = x + dt * (f(x, theta) + g(x, theta) @ u)
        return x, x[0]

    return jnp.max(jax.lax.scan(step, jnp.array([22.0]), None, length=steps)[1])


@pytest.mark.parametrize("g", [g_known, g_uncertain], ids=["g-known", "g-uncertain"])
def test_forward_invariance_under_posterior_draws(g):
    """300 true θ drawn from the posterior, full heating filtered by the CBF: with κ = 4 no trajectory leaves
    ``x ≤ x_max`` (explicit Euler keeps h ≥ 0 whenever the true condition holds); the posterior-mean CBF (κ = 0)
    lets a sizeable fraction overshoot."""
    thetas = jax.random.multivariate_normal(jax.random.key(1), MEAN, COV, (300,))
    run = jax.jit(jax.vmap(lambda th, k: _closed_loop(th, MEAN, COV, k, g), (0, None)))
    robust, nominal = run(thetas, 4.0), run(thetas, 0.0)
    assert int(jnp.sum(robust > X_MAX)) == 0
    assert int(jnp.sum(nominal > X_MAX + 1e-6)) > 30
    assert float(jnp.max(robust)) > X_MAX - 3.0  # and the robust filter is not trivially conservative


@pytest.mark.strict
def test_cone_case_converges_to_the_exact_projection():
    """``g`` depends on θ: the sequential linearisation reaches the second-order-cone projection (scipy)."""
    x, u_nom = jnp.array([25.0]), jnp.array([15.0])
    cond = cbf.robust_condition(h, f, g_uncertain, x, MEAN, COV, alpha=0.5, kappa=3.0)
    assert float(jnp.abs(cond.gain_jac).max()) > 0
    res = cbf.safety_filter(cond, u_nom, iterations=6)
    ref = reference(np.asarray(u_nom), [NonlinearConstraint(lambda u: float(cond.value(jnp.asarray(u))[0]), 0, np.inf)])
    assert abs(float(res.value[0])) < 1e-9  # on the cone's boundary
    assert_optimal(res.u, ref, u_nom)
    # two barriers (upper and lower temperature) and bounds go through the QP
    cond2 = cbf.robust_condition(
        lambda x: jnp.stack([X_MAX - x[0], x[0] - 18.0]), f, g_uncertain, x, MEAN, COV, alpha=0.5, kappa=3.0
    )
    res2 = cbf.safety_filter(cond2, u_nom, lower=0.0, upper=10.0)
    np.testing.assert_allclose(res2.u, res.u, atol=1e-9)  # the lower barrier is inactive here
    assert cond2.drift.shape == (2,) and cond2.gain_jac.shape == (2, 3, 1)


def test_vmap_and_gradients():
    xs = jnp.linspace(21.0, 27.5, 5)[:, None]
    filt = jax.vmap(lambda x: cbf.robust_filter(h, f, g_known, x, jnp.array([9.0]), MEAN, COV, alpha=0.5, kappa=2.0).u)
    assert filt(xs).shape == (5, 1)

    def u_star(cov_scale):
        return cbf.robust_filter(
            h, f, g_uncertain, jnp.array([25.0]), jnp.array([9.0]), MEAN, cov_scale * COV, alpha=0.5, kappa=2.0
        ).u[0]

    grad = jax.grad(u_star)(1.0)
    fd = (u_star(1.0 + 1e-6) - u_star(1.0 - 1e-6)) / 2e-6
    assert float(grad) < 0
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_filter_compiles_once_per_shape():
    x = jnp.array([25.5])
    cond = cbf.robust_condition(h, f, g_uncertain, x, MEAN, COV, alpha=0.7, kappa=2.5)
    cbf.safety_filter(cond, jnp.array([3.0]), lower=jnp.zeros(1), upper=jnp.full(1, 9.0))
    before = eqx.debug.get_num_traces(cbf._safety_filter)
    for scale in (0.5, 0.25):
        cond = cbf.robust_condition(h, f, g_uncertain, x + scale, MEAN, scale * COV, alpha=0.7, kappa=2.5 + scale)
        cbf.safety_filter(cond, jnp.array([3.0 + scale]), lower=jnp.zeros(1), upper=jnp.full(1, 9.0 + scale))
    assert eqx.debug.get_num_traces(cbf._safety_filter) == before


def test_bad_input_is_rejected():
    x = jnp.array([25.0])
    with pytest.raises(ValueError, match="cov"):
        cbf.robust_condition(h, f, g_known, x, MEAN, jnp.eye(2), alpha=0.5, kappa=1.0)
    with pytest.raises(ValueError, match="x"):
        cbf.robust_condition(h, f, g_known, jnp.ones((1, 1)), MEAN, COV, alpha=0.5, kappa=1.0)
    with pytest.raises(ValueError, match="kappa"):
        cbf.robust_condition(h, f, g_known, x, MEAN, COV, alpha=0.5, kappa=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        cbf.robust_condition(h, f, g_known, x, MEAN, COV, alpha=jnp.ones(3), kappa=1.0)
    with pytest.raises(ValueError, match="g"):
        cbf.robust_condition(h, f, lambda x, th: jnp.ones(1), x, MEAN, COV, alpha=0.5, kappa=1.0)
    cond = cbf.robust_condition(h, f, g_known, x, MEAN, COV, alpha=0.5, kappa=1.0)
    with pytest.raises(ValueError, match="u"):
        cbf.safety_filter(cond, jnp.ones(2))
    with pytest.raises(ValueError, match="lower"):
        cbf.safety_filter(cond, jnp.ones(1), lower=2.0, upper=1.0)
    with pytest.raises(ValueError, match="upper"):
        cbf.safety_filter(cond, jnp.ones(1), upper=jnp.ones(3))
    with pytest.raises(ValueError, match="active sets"):
        cbf.project_polyhedron(jnp.zeros(8), jnp.ones((40, 8)), jnp.ones(40))
