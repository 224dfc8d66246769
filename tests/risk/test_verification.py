"""``twinjax.risk.verification``: set membership against NumPy, binomial intervals against scipy and by simulated
coverage, the false-rejection / false-acceptance rates on sets with known areas, the rejection sampler, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import binomtest

from twinjax.risk import verification as ver


def _points(key, n=500, dim=2, scale=2.0):
    return scale * jax.random.normal(key, (n, dim))


def test_box_polytope_ellipsoid_contains_match_numpy(key):
    x = _points(key)
    xn = np.asarray(x)
    box = ver.Invariant.box([-1.0, -np.inf], [0.5, 1.5], labels=("a", "b"))
    assert box.names == ("a <= 0.5", "b <= 1.5", "a >= -1")
    expect = (xn[:, 0] <= 0.5) & (xn[:, 1] <= 1.5) & (xn[:, 0] >= -1.0)
    np.testing.assert_array_equal(box.contains(x), expect)
    viol = np.asarray(box.violations(x))
    np.testing.assert_array_equal(viol, np.stack([xn[:, 0] > 0.5, xn[:, 1] > 1.5, xn[:, 0] < -1.0], axis=1))

    shape = np.array([[2.0, 0.6], [0.6, 1.0]])
    center = np.array([0.3, -0.2])
    ell = ver.Invariant.ellipsoid(center, shape)
    d = xn - center
    quad = np.einsum("ni,ij,nj->n", d, np.linalg.inv(shape), d)
    np.testing.assert_array_equal(ell.contains(x), quad <= 1.0)
    np.testing.assert_allclose(ell.values(x)[:, 0], quad - 1.0, rtol=1e-10, atol=1e-12)

    A, b = np.array([[1.0, 1.0], [-1.0, 2.0], [0.0, -1.0]]), np.array([1.0, 2.0, 1.5])
    poly = ver.Invariant.polytope(A, b)
    np.testing.assert_array_equal(poly.contains(x), np.all(xn @ A.T <= b, axis=1))

    both = box & ell & ver.Invariant.sublevel(lambda p: p[0] ** 2 - p[1], 2, "parabola")
    assert len(both.names) == 5 and both.margins.shape == (5,)
    expect_all = expect & (quad <= 1.0) & (xn[:, 0] ** 2 - xn[:, 1] <= 0)
    np.testing.assert_array_equal(both.contains(x), expect_all)


def test_verify_report_and_tightening(key):
    x = _points(key, n=400)
    box = ver.Invariant.box([-1.0, -1.0], [1.0, 1.0])
    inner = box.tightened(jnp.array([0.1, 0.2, 0.3, 0.4]))
    report = ver.RuntimeFilter(inner)(x)
    xn = np.asarray(x)
    expect = (xn[:, 0] <= 0.9) & (xn[:, 1] <= 0.8) & (xn[:, 0] >= -0.7) & (xn[:, 1] >= -0.6)
    np.testing.assert_array_equal(report.accepted, expect)
    np.testing.assert_array_equal(report.rejections_per_constraint, np.asarray(report.violations).sum(0))
    assert float(report.acceptance_rate) == pytest.approx(expect.mean())
    # tightening with non-negative margins never accepts more
    assert not np.any(np.asarray(inner.contains(x)) & ~np.asarray(box.contains(x)))
    # a NaN sample is rejected, not accepted
    assert not bool(ver.verify(jnp.array([[jnp.nan, 0.0]]), box).accepted[0])


@pytest.mark.parametrize("k,n", [(0, 1), (0, 20), (1, 20), (7, 20), (20, 20), (3, 1000), (517, 100_000), (99, 100)])
@pytest.mark.parametrize("method", ["clopper-pearson", "wilson"])
def test_binomial_ci_matches_scipy(k, n, method):
    lo, hi = ver.binomial_ci(k, n, 0.9 if n == 100 else 0.95, method)
    ref = binomtest(k, n).proportion_ci(0.9 if n == 100 else 0.95, "exact" if method == "clopper-pearson" else "wilson")
    np.testing.assert_allclose([float(lo), float(hi)], [ref.low, ref.high], rtol=1e-8, atol=1e-12)


def test_binomial_ci_vectorised_and_empty():
    k = jnp.array([0, 3, 10])
    lo, hi = ver.binomial_ci(k, jnp.array([10, 10, 10]))
    for i, ki in enumerate([0, 3, 10]):
        ref = binomtest(ki, 10).proportion_ci(0.95, "exact")
        np.testing.assert_allclose([lo[i], hi[i]], [ref.low, ref.high], rtol=1e-8, atol=1e-12)
    lo, hi = ver.binomial_ci(0, 0)
    assert (float(lo), float(hi)) == (0.0, 1.0)


@pytest.mark.parametrize("p,n", [(0.02, 60), (0.3, 25)])
def test_clopper_pearson_coverage_by_simulation(p, n):
    """2000 binomial draws: the 95 % exact interval covers p at a rate >= 0.95 − 2 SE (it is conservative)."""
    draws = 2000
    k = np.random.default_rng(1).binomial(n, p, draws)
    lo, hi = ver.binomial_ci(k, np.full(draws, n))
    covered = np.mean((np.asarray(lo) <= p) & (p <= np.asarray(hi)))
    se = np.sqrt(0.95 * 0.05 / draws)
    assert covered >= 0.95 - 2 * se, covered


def test_rates_on_sets_with_known_areas(key):
    """Uniform samples on [-1, 2]²: S_true the unit square, S_inv the square shrunk by 0.1 on every side. The
    false-rejection probability is 1 − 0.8² = 0.36 exactly; the false acceptance is zero; a shifted square that
    leaves S_true has false acceptances."""
    n = 20_000
    x = jax.random.uniform(key, (n, 2), minval=-1.0, maxval=2.0)
    true_set = ver.Invariant.box([0.0, 0.0], [1.0, 1.0])
    inv = true_set.tightened(0.1)
    frr = ver.false_rejection_rate(x, inv, true_set)
    n_true = int(frr.total)
    assert abs(n_true / n - 1 / 9) <= 4 * np.sqrt((1 / 9) * (8 / 9) / n)
    assert int(frr.count) == int(jnp.sum(true_set.contains(x) & ~inv.contains(x)))
    se = np.sqrt(0.36 * 0.64 / n_true)
    assert abs(float(frr.estimate) - 0.36) <= 3 * se
    assert float(frr.ci_low) <= float(frr.estimate) <= float(frr.ci_high)
    assert float(frr.ci_high) - float(frr.ci_low) == pytest.approx(2 * 1.96 * se, rel=0.1)
    far = ver.false_acceptance_rate(x, inv, true_set)
    assert int(far.count) == 0 and float(far.estimate) == 0.0
    assert float(far.ci_high) == pytest.approx(1 - 0.025 ** (1 / int(far.total)), rel=1e-6)  # exact upper at k = 0
    shifted = ver.Invariant.box([0.5, 0.0], [1.5, 1.0])
    far = ver.false_acceptance_rate(x, shifted, true_set, method="wilson")
    assert int(far.count) > 0 and float(far.ci_low) > 0


def test_rate_with_no_reference_samples_is_undefined():
    x = jnp.array([[5.0, 5.0]])
    true_set = ver.Invariant.box([0.0, 0.0], [1.0, 1.0])
    frr = ver.false_rejection_rate(x, true_set, true_set)
    assert int(frr.total) == 0 and np.isnan(float(frr.estimate))
    assert (float(frr.ci_low), float(frr.ci_high)) == (0.0, 1.0)


def _normal(k, m):
    return jax.random.normal(k, (m, 2))


def test_sample_accepted_exact_count_deterministic_and_rate(key):
    disc = ver.Invariant.ellipsoid(jnp.zeros(2), jnp.eye(2))
    x, rate = ver.sample_accepted(_normal, key, 2000, disc, oversample=3.0)
    assert x.shape == (2000, 2)
    assert bool(jnp.all(disc.contains(x)))
    assert len(np.unique(np.asarray(x), axis=0)) == 2000  # no slot left empty or filled twice
    p = 1 - np.exp(-0.5)  # P(‖z‖² ≤ 1), z ~ N(0, I_2)
    drawn = 6000  # one round of 3 × 2000 suffices at p ≈ 0.39 (≈ 2360 accepted)
    assert abs(float(rate) - p) <= 4 * np.sqrt(p * (1 - p) / drawn)
    x2, rate2 = ver.sample_accepted(_normal, key, 2000, disc, oversample=3.0)
    np.testing.assert_array_equal(x, x2)
    assert float(rate) == float(rate2)
    x3, _ = ver.sample_accepted(_normal, jax.random.key(5), 2000, disc, oversample=3.0)
    assert not np.array_equal(np.asarray(x), np.asarray(x3))
    # several rounds when one is not enough: still exactly n, all inside
    x4, _ = ver.sample_accepted(_normal, key, 500, disc, oversample=1.0, max_rounds=10)
    assert bool(jnp.all(disc.contains(x4)))


def test_sample_accepted_fails_clearly_when_acceptance_too_low(key):
    tiny = ver.Invariant.box([10.0, 10.0], [10.1, 10.1])
    with pytest.raises(eqx.EquinoxRuntimeError, match="acceptance rate is too low"):
        jax.block_until_ready(ver.sample_accepted(_normal, key, 10, tiny, max_rounds=2))


def test_bad_input():
    box = ver.Invariant.box([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"samples.*\(n, 2\)"):
        box.contains(jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="samples"):
        ver.verify(jnp.ones((2, 1)), box)
    with pytest.raises(ValueError, match="same shape"):
        ver.Invariant.box([0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="lower <= upper"):
        ver.Invariant.box([1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="same dimension"):
        box & ver.Invariant.box([0.0], [1.0])
    with pytest.raises(ValueError, match="different dimensions"):
        ver.false_rejection_rate(jnp.ones((3, 2)), box, ver.Invariant.ellipsoid(jnp.zeros(3), jnp.eye(3)))
    with pytest.raises(ValueError, match="positive definite"):
        ver.Invariant.ellipsoid(jnp.zeros(2), jnp.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="margins"):
        box.tightened(-0.1)
    with pytest.raises(ValueError, match="margins"):
        ver.Invariant(box.constraints, margins=jnp.zeros(3))
    for level in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="level"):
            ver.binomial_ci(1, 10, level)
        with pytest.raises(ValueError, match="level"):
            ver.false_rejection_rate(jnp.ones((3, 2)), box, box, level=level)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        ver.binomial_ci(11, 10)
    with pytest.raises(ValueError, match="method"):
        ver.binomial_ci(1, 10, method="jeffreys")
    with pytest.raises(ValueError, match="`n`"):
        ver.sample_accepted(_normal, jax.random.key(0), 0, box)
    with pytest.raises(ValueError, match="oversample"):
        ver.sample_accepted(_normal, jax.random.key(0), 5, box, oversample=0.5)
    with pytest.raises(ValueError, match="shape"):
        ver.sample_accepted(lambda k, m: jnp.zeros((m, 3)), jax.random.key(0), 5, box)


def test_no_recompilation_across_margins_and_keys(key):
    """Margins are arrays and keys are traced: new values reuse the compiled filter and sampler."""
    box = ver.Invariant.box([-1.0, -1.0], [1.0, 1.0])
    x = _points(key, n=64)
    ver.verify(x, box)
    before = ver.TRACES["verify"]
    for m in (0.1, 0.2, 0.3):
        ver.verify(x + m, box.tightened(m))
    assert ver.TRACES["verify"] == before
    ver.sample_accepted(_normal, key, 50, box, oversample=2.0)
    before = ver.TRACES["sample_accepted"]
    ver.sample_accepted(_normal, jax.random.key(9), 50, box.tightened(0.05), oversample=2.0)
    assert ver.TRACES["sample_accepted"] == before
