"""`twinjax.causal.scm`: sampling and ``do`` against the linear-Gaussian closed form (k SE), graph surgery, exact
counterfactuals for additive noise, weighted abduction against Gaussian conditioning, and the sprinkler network
(``P(W=1 | do(S=1), R=1) = 0.99`` exactly by enumeration, within MC error by sampling)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax.causal.intervention import do
from twinjax.causal.scm import SCM, discrete_scm, exact_query, linear_gaussian_moments, linear_gaussian_scm

K = 4.0  # standard errors allowed in Monte-Carlo checks

NAMES = ("Z", "X", "M", "Y")
W = np.zeros((4, 4))
W[0, 1], W[0, 3], W[1, 2], W[2, 3], W[1, 3] = 0.8, -0.6, 1.5, 0.7, 0.3
SD = np.array([1.0, 0.5, 0.8, 0.3])
C = np.array([0.2, -0.1, 0.4, 1.0])


def sprinkler():
    return discrete_scm(
        {
            "C": ((), [0.5, 0.5]),
            "S": (("C",), [[0.5, 0.5], [0.9, 0.1]]),
            "R": (("C",), [[0.8, 0.2], [0.2, 0.8]]),
            "W": (("S", "R"), [[[1.0, 0.0], [0.1, 0.9]], [[0.1, 0.9], [0.01, 0.99]]]),
        }
    )


def weighted_mean_se(values, weights):
    mean = jnp.sum(weights * values)
    ess = 1.0 / jnp.sum(weights**2)
    return float(mean), float(jnp.sqrt(jnp.sum(weights * (values - mean) ** 2) / ess))


@pytest.mark.parametrize("intervention", [None, {"X": 1.5}, {"M": -2.0, "Z": 0.5}])
def test_linear_gaussian_sampling_matches_closed_form(intervention):
    scm = linear_gaussian_scm(W, SD, NAMES, C)
    n = 20_000
    data = scm.sample(jax.random.key(1), n, intervention)
    x = np.stack([np.asarray(data[v]) for v in NAMES], axis=1)
    mean, cov = map(np.asarray, linear_gaussian_moments(W, SD, NAMES, C, intervention))
    diag = np.diag(cov)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), K * np.sqrt(diag / n) + 1e-12)
    emp = np.cov(x.T)
    se = np.sqrt((np.outer(diag, diag) + cov**2) / n)
    np.testing.assert_array_less(np.abs(emp - cov), K * se + 1e-12)


def test_do_cuts_incoming_arrows():
    scm = linear_gaussian_scm(W, SD, NAMES, C)
    cut = scm.do(do(X=2.0))
    assert cut.graph.parents("X") == () and scm.graph.parents("X") == ("Z",)
    # changing the parent's mechanism no longer changes X, but still changes Y through the back-door
    w2 = W.copy()
    w2[0, 1] = -5.0
    a = cut.sample(jax.random.key(0), 100)
    b = linear_gaussian_scm(w2, SD, NAMES, C).do(X=2.0).sample(jax.random.key(0), 100)
    np.testing.assert_array_equal(np.asarray(a["X"]), 2.0)
    np.testing.assert_array_equal(np.asarray(a["Z"]), np.asarray(b["Z"]))
    np.testing.assert_array_equal(np.asarray(a["Y"]), np.asarray(b["Y"]))
    # a per-unit intervention
    vals = jnp.arange(5.0)
    np.testing.assert_array_equal(np.asarray(scm.sample(jax.random.key(0), 5, {"X": vals})["X"]), np.asarray(vals))


def test_sample_is_deterministic_and_jittable():
    scm = linear_gaussian_scm(W, SD, NAMES, C)
    a = scm.sample(jax.random.key(3), 50)
    b = eqx.filter_jit(lambda m, k: m.sample(k, 50))(scm, jax.random.key(3))
    for v in NAMES:
        np.testing.assert_allclose(np.asarray(a[v]), np.asarray(b[v]), rtol=1e-12)
    keys = jax.random.split(jax.random.key(3), 3)
    batched = jax.vmap(lambda k: scm.sample(k, 10)["Y"])(keys)
    assert batched.shape == (3, 10)


def test_additive_counterfactual_is_exact():
    """All parents observed: U is solved exactly, weights are uniform and Y_{do(x')} = y + (total effect)(x' − x)
    with M observed at m: Y' = y + 0.7 (m' − m) + 0.3 (x' − x), m' = m + 1.5 (x' − x)."""
    scm = linear_gaussian_scm(W, SD, NAMES, C)
    ev = {"Z": 0.3, "X": 0.9, "M": 1.1, "Y": -0.4}
    vals, w = scm.counterfactual(jax.random.key(0), ev, do(X=-1.0), n=64)
    dx = -1.0 - 0.9
    np.testing.assert_allclose(np.asarray(w), 1 / 64, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(vals["M"]), 1.1 + 1.5 * dx, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(vals["Y"]), -0.4 + 0.7 * 1.5 * dx + 0.3 * dx, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(vals["Z"]), 0.3, rtol=1e-12)


def test_counterfactual_with_unobserved_parent_matches_gaussian_conditioning():
    """Only Y observed: the counterfactual mean E[Y_{do(X=x')} | Y = y] follows from jointly Gaussian (Y, Y')."""
    scm = linear_gaussian_scm(W, SD, NAMES, C)
    y_obs, x_new = 2.0, -0.5
    vals, w = scm.counterfactual(jax.random.key(5), {"Y": y_obs}, do(X=x_new), n=200_000)
    got, se = weighted_mean_se(vals["Y"], w)
    # truth: V = A (c + U); Y' = A' (c' + U) with the same U
    a = np.linalg.inv(np.eye(4) - W.T)
    w_do = W.copy()
    w_do[:, 1] = 0.0
    a_do = np.linalg.inv(np.eye(4) - w_do.T)
    c_do = C.copy()
    c_do[1] = x_new
    keep = np.ones(4)
    keep[1] = 0.0  # X's own noise is cut by do
    g_y, g_cf = a[3], a_do[3] * keep
    cov_u = np.diag(SD**2)
    mean_y, mean_cf = g_y @ C, a_do[3] @ c_do
    truth = mean_cf + (g_cf @ cov_u @ g_y) / (g_y @ cov_u @ g_y) * (y_obs - mean_y)
    assert abs(got - truth) < K * se, (got, truth, se)


def test_sprinkler_exact_and_sampled():
    scm = sprinkler()
    assert abs(exact_query(scm, {"W": 1}, {"R": 1}, do(S=1)) - 0.99) < 1e-12
    # enumeration agrees with a hand computation: P(W=1) = Σ_c P(c) Σ_{s,r} P(s|c) P(r|c) P(W=1|s,r)
    pw = sum(
        0.5 * ps * pr * [[0.0, 0.9], [0.9, 0.99]][s][r]
        for ps_c, pr_c in (([0.5, 0.5], [0.8, 0.2]), ([0.9, 0.1], [0.2, 0.8]))
        for s, ps in enumerate(ps_c)
        for r, pr in enumerate(pr_c)
    )
    assert abs(exact_query(scm, {"W": 1}) - pw) < 1e-12
    # conditioning is not intervening: P(W=1 | S=1, R=1) is also 0.99, but P(R=1 | S=1) ≠ P(R=1 | do(S=1))
    assert abs(exact_query(scm, {"R": 1}, {"S": 1}) - 0.09 / 0.3) < 1e-12
    assert abs(exact_query(scm, {"R": 1}, None, {"S": 1}) - 0.5) < 1e-12
    data = scm.sample(jax.random.key(2), 200_000, do(S=1))
    w = np.asarray(data["W"])[np.asarray(data["R"]) == 1]
    se = np.sqrt(0.99 * 0.01 / w.size)
    assert abs(w.mean() - 0.99) < K * se


def test_sprinkler_counterfactual_by_rejection():
    """Grass wet with the sprinkler on; had it been off? With inverse-CDF mechanisms W' = 1 iff u_W < p(0, r), so
    P(W'=1 | S=1, W=1) = P(R=1 | S=1, W=1) · 0.9 / 0.99 (p(0, 0) = 0)."""
    scm = sprinkler()
    truth = exact_query(scm, {"R": 1}, {"S": 1, "W": 1}) * 0.9 / 0.99
    vals, w = scm.counterfactual(jax.random.key(4), {"S": 1, "W": 1}, do(S=0), n=100_000)
    got, se = weighted_mean_se(vals["W"], w)
    assert abs(got - truth) < K * se, (got, truth, se)
    assert 0.25 < truth < 0.35


def test_errors():
    scm = sprinkler()
    with pytest.raises(ValueError, match="unknown variable 'Q'"):
        scm.do(Q=1)
    with pytest.raises(ValueError, match="takes values 0..1"):
        scm.do(S=2)
    with pytest.raises(ValueError, match="rows sum to 1"):
        discrete_scm({"A": ((), [0.5, 0.6])})
    with pytest.raises(ValueError, match="probability zero"):
        exact_query(scm, {"W": 1}, {"W": 1, "S": 0, "R": 0})
    with pytest.raises(ValueError, match="no probability tables"):
        exact_query(linear_gaussian_scm(W, SD), {"V0": 1})
    with pytest.raises(ValueError, match="noise_sd"):
        linear_gaussian_scm(W, -SD)
    with pytest.raises(ValueError, match="cycle"):
        linear_gaussian_scm(W + W.T, SD)
    with pytest.raises(ValueError, match="n must be a positive int"):
        scm.sample(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="mechanisms must have one entry"):
        SCM(("A",), [()], [], [])
    with pytest.raises(Exception, match="no noise draw reproduces"):
        scm.abduct(jax.random.key(0), {"W": 1, "S": 0, "R": 0}, 100)
