"""``twinjax.risk.augment``: the mixture weights exactly, the augmented law's weighted means against the mixture's
truth (k standard errors), CVaR-minimising decisions against scipy's LP (HiGHS) on the same samples and against the
closed-form Gaussian newsvendor optimum, determinism, vmap, bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from twinjax.risk import augment, shift

C, P = 1.0, 10.0  # reserve cost and shortfall penalty per unit


def reserve_loss(x, d):
    return C * x + P * jnp.maximum(d - x, 0.0)


def lp_cvar(slopes, intercepts, alpha, weights, lo, hi):
    """Rockafellar–Uryasev LP for losses max_k (slopes[i, k] · x + intercepts[i, k]): variables (x, t, u)."""
    n, k, d = slopes.shape
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights) / np.sum(weights)
    cost = np.concatenate([np.zeros(d), [1.0], w / alpha])
    rows = []
    for i, j in itertools.product(range(n), range(k)):
        row = np.zeros(d + 1 + n)
        row[:d], row[d], row[d + 1 + i] = slopes[i, j], -1.0, -1.0
        rows.append(row)
    b_ub = -intercepts.reshape(-1)
    bounds = [(lo_i, hi_i) for lo_i, hi_i in zip(np.atleast_1d(lo), np.atleast_1d(hi))] + [(None, None)]
    bounds += [(0.0, None)] * n
    res = optimize.linprog(cost, A_ub=np.array(rows), b_ub=b_ub, bounds=bounds, method="highs")
    assert res.status == 0
    return res.x[:d], res.fun


def reserve_pieces(demand):
    """reserve_loss = max(C x, (C − P) x + P d)."""
    d = np.asarray(demand)
    slopes = np.stack([np.full_like(d, C), np.full_like(d, C - P)], axis=1)[..., None]
    intercepts = np.stack([np.zeros_like(d), P * d], axis=1)
    return slopes, intercepts


# ---------------------------------------------------------------------------------------------------- mixture weights


def test_mixture_weights_exact():
    component = jnp.asarray([0, 0, 0, 1, 1, 0, 1])
    w = augment.mixture_weights(component, 0.02)
    expected = np.where(np.asarray(component) == 1, 0.02 / 3, 0.98 / 4)
    np.testing.assert_allclose(w, expected, rtol=1e-15)
    base = jnp.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 1.0])
    wb = augment.mixture_weights(component, 0.3, base)
    np.testing.assert_allclose(wb, [0.7 / 6, 1.4 / 6, 2.1 / 6, 0.3 * 0.4, 0.3 * 0.5, 0.0, 0.3 * 0.1], rtol=1e-14)
    np.testing.assert_allclose(jnp.sum(wb), 1.0, rtol=1e-15)
    # pi = 0: the records alone, whether or not rare events are present
    np.testing.assert_allclose(augment.mixture_weights(jnp.asarray([0, 0, 1]), 0.0), [0.5, 0.5, 0.0])


def test_augmented_weighted_mean_targets_the_mixture(key):
    """Records N(0, 1), twin rare events N(6, 1) oversampled (m/(n+m) = 1/3 ≫ π): the weighted mean estimates the
    mixture mean π·6 within 4 exact standard errors, the unweighted pool does not."""
    k1, k2 = jax.random.split(key)
    n, m, pi = 4000, 2000, 0.02
    data = jax.random.normal(k1, (n,))
    aug = augment.augment_with_rare_events(k2, data, lambda k, m: 6.0 + jax.random.normal(k, (m,)), m, pi)
    assert aug.samples.shape == (n + m,) and aug.n_synthetic == m and aug.pi == pi
    np.testing.assert_array_equal(aug.samples[:n], data)
    np.testing.assert_allclose(jnp.sum(aug.weights * (aug.component == 1)), pi, rtol=1e-14)
    est = jnp.sum(aug.weights * aug.samples)
    se = np.sqrt((1 - pi) ** 2 / n + pi**2 / m)
    assert abs(float(est) - 6 * pi) <= 4 * se
    assert abs(float(jnp.mean(aug.samples)) - 6 * pi) > 100 * se
    # same key, same result
    again = augment.augment_with_rare_events(k2, data, lambda k, m: 6.0 + jax.random.normal(k, (m,)), m, pi)
    np.testing.assert_array_equal(aug.samples, again.samples)


def test_augmented_cvar_matches_mixture_cvar(key):
    """Weighted empirical CVaR_0.05 of the augmented pool against the exact CVaR of the Gaussian mixture
    (numerical integration) within 4 standard errors of an equally sized target sample bound."""
    k1, k2 = jax.random.split(key)
    n, m, pi, alpha = 20000, 5000, 0.02, 0.05
    data = jax.random.normal(k1, (n,))
    aug = augment.augment_with_rare_events(k2, data, lambda k, m: 5.0 + jax.random.normal(k, (m,)), m, pi)
    est = shift.cvar(aug.samples, alpha, aug.weights)
    sf = lambda x: (1 - pi) * stats.norm.sf(x) + pi * stats.norm.sf(x, 5.0)  # noqa: E731
    q = optimize.brentq(lambda x: sf(x) - alpha, 0.0, 10.0)
    tail = (1 - pi) * stats.norm.pdf(q) + pi * (5.0 * stats.norm.sf(q, 5.0) + stats.norm.pdf(q, 5.0))
    truth = tail / alpha  # E[X 1{X > q}] / α for the mixture (Gaussian partial expectations)
    # delta-method SE of the weighted estimator
    v = shift.var(aug.samples, alpha, aug.weights)
    h = v + jnp.maximum(aug.samples - v, 0.0) / alpha
    se = jnp.sqrt(jnp.sum(aug.weights**2 * (h - jnp.sum(aug.weights * h)) ** 2))
    assert abs(float(est) - truth) <= 4 * float(se), (float(est), truth, float(se))


# ---------------------------------------------------------------------------------------------------- CVaR decisions


@pytest.mark.parametrize("weighted", [False, True])
def test_cvar_decision_matches_linprog(key, weighted):
    k1, k2, k3 = jax.random.split(key, 3)
    demand = 100.0 + 10.0 * jax.random.normal(k1, (300,))
    weights = jax.random.uniform(k2, (300,)) if weighted else None
    alpha = 0.1
    res = augment.cvar_decision(reserve_loss, demand, alpha, weights, bounds=(0.0, 300.0))
    x_lp, f_lp = lp_cvar(*reserve_pieces(demand), alpha, weights, 0.0, 300.0)
    np.testing.assert_allclose(res.cvar, f_lp, rtol=1e-9)
    np.testing.assert_allclose(augment.cvar_objective(reserve_loss, x_lp[0], demand, alpha, weights), f_lp, rtol=1e-9)
    # the weighted empirical CVaR-optimal reserve is the (1 − αC/P) weighted quantile (Gotoh–Takano)
    np.testing.assert_allclose(res.decision, shift.var(demand, alpha * C / P, weights), rtol=1e-6)


def test_cvar_decision_gaussian_closed_form(key):
    """Demand N(μ, σ²): the CVaR_α-optimal reserve is x* = μ + σ Φ⁻¹(1 − αC/P) with
    CVaR* = C x* + (P/α) σ (φ(z) − z(1 − Φ(z))), z = (x* − μ)/σ. The sample optimum lies within 4 quantile standard
    errors of x*, its CVaR within 4 delta-method standard errors of CVaR*."""
    n, mu, sd, alpha = 40000, 100.0, 10.0, 0.05
    demand = mu + sd * jax.random.normal(key, (n,))
    res = augment.cvar_decision(reserve_loss, demand, alpha, bounds=(0.0, 300.0))
    q = 1 - alpha * C / P
    z = stats.norm.ppf(q)
    x_star = mu + sd * z
    cvar_star = C * x_star + P / alpha * sd * (stats.norm.pdf(z) - z * stats.norm.sf(z))
    se_x = np.sqrt(q * (1 - q) / n) / (stats.norm.pdf(z) / sd)
    assert abs(float(res.decision) - x_star) <= 4 * se_x
    losses = reserve_loss(x_star, demand)
    se_c = float(shift.twin_cvar(key, lambda k, n_: demand, lambda d: reserve_loss(x_star, d), alpha, n).standard_error)
    assert abs(float(res.cvar) - cvar_star) <= 4 * se_c, (float(res.cvar), cvar_star, se_c)
    assert float(res.cvar) <= float(shift.cvar(losses, alpha)) + 1e-9  # the sample optimum beats x* in-sample


def two_reserve_loss(x, d):
    shortfall = P * jnp.maximum(d[0] - x[0], 0.0) + 2 * P * jnp.maximum(d[0] + d[1] - x[0] - x[1], 0.0)
    return C * (x[0] + 1.5 * x[1]) + shortfall


def test_cvar_decision_adam_vector_near_linprog(key):
    """A two-dimensional coupled reserve problem: projected Adam on the joint RU objective reaches the LP optimum to
    0.1 % (a first-order method on a piecewise-linear objective is approximate, so this bound is its contract)."""
    n, alpha = 200, 0.1
    k1, k2 = jax.random.split(key)
    d = jnp.stack([50.0 + 5.0 * jax.random.normal(k1, (n,)), 20.0 + 5.0 * jax.random.normal(k2, (n,))], 1)
    dn = np.asarray(d)
    slopes, intercepts = [], []
    for s1, s2 in itertools.product([0, 1], [0, 1]):
        slopes.append(np.broadcast_to([C - s1 * P - s2 * 2 * P, 1.5 * C - s2 * 2 * P], (n, 2)))
        intercepts.append(s1 * P * dn[:, 0] + s2 * 2 * P * (dn[:, 0] + dn[:, 1]))
    slopes, intercepts = np.stack(slopes, 1), np.stack(intercepts, 1)
    x_lp, f_lp = lp_cvar(slopes, intercepts, alpha, None, [0.0, 0.0], [200.0, 200.0])
    res = augment.cvar_decision(two_reserve_loss, d, alpha, bounds=(0.0, 200.0), method="adam", iterations=3000,
                                init=jnp.asarray([50.0, 20.0]), learning_rate=1.0)  # fmt: skip
    assert float(res.cvar) >= f_lp - 1e-7 * abs(f_lp)
    assert float(res.cvar) <= f_lp + 1e-3 * abs(f_lp), (float(res.cvar), f_lp, res.decision, x_lp)


def test_cvar_decision_jit_vmap_deterministic(key):
    demands = 100.0 + 10.0 * jax.random.normal(key, (3, 200))
    solve = lambda d: augment.cvar_decision(reserve_loss, d, 0.1, bounds=(0.0, 300.0)).decision  # noqa: E731
    batched = jax.jit(jax.vmap(solve))(demands)
    for i in range(3):
        np.testing.assert_allclose(batched[i], solve(demands[i]), rtol=1e-12)
        np.testing.assert_allclose(batched[i], shift.var(demands[i], 0.1 * C / P), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------- errors


def test_bad_input(key):
    with pytest.raises(ValueError, match="pi"):
        augment.mixture_weights(jnp.asarray([0, 1]), 1.0)
    with pytest.raises(ValueError, match="component"):
        augment.mixture_weights(jnp.asarray([0, 2]), 0.1)
    with pytest.raises(ValueError, match="component"):
        augment.mixture_weights(jnp.asarray([0.0, 1.0]), 0.1)
    with pytest.raises(ValueError, match="rare event"):
        augment.mixture_weights(jnp.asarray([0, 0]), 0.1)
    with pytest.raises(ValueError, match="base_weights"):
        augment.mixture_weights(jnp.asarray([0, 1]), 0.1, jnp.asarray([-1.0, 1.0]))
    with pytest.raises(ValueError, match="generator"):
        augment.augment_with_rare_events(key, jnp.zeros((5, 2)), lambda k, m: jnp.zeros((m, 3)), 4, 0.1)
    with pytest.raises(ValueError, match="n_synthetic"):
        augment.augment_with_rare_events(key, jnp.zeros(5), lambda k, m: jnp.zeros(m), 0, 0.1)
    d = jnp.arange(10.0)
    with pytest.raises(ValueError, match="method"):
        augment.cvar_decision(reserve_loss, d, 0.1, bounds=(0.0, 1.0), method="lp")
    with pytest.raises(ValueError, match="bounds"):
        augment.cvar_decision(reserve_loss, d, 0.1, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="bounds"):
        augment.cvar_decision(reserve_loss, d, 0.1, bounds=(jnp.zeros(2), jnp.ones(2)))
    with pytest.raises(ValueError, match="alpha"):
        augment.cvar_decision(reserve_loss, d, 1.5, bounds=(0.0, 1.0))
    # a mismatched length: the runtime type checker (TypeError) or the argument check (ValueError) names it
    with pytest.raises((ValueError, TypeError), match="weights"):
        augment.cvar_decision(reserve_loss, d, 0.1, jnp.ones(3), bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="weights"):
        augment.cvar_decision(reserve_loss, d, 0.1, -jnp.ones(10), bounds=(0.0, 1.0))
