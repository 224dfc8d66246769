"""``twinjax.risk.privacy``: the RDP accountant of the Poisson-subsampled Gaussian mechanism side by side with
dp-accounting's ``RdpAccountant``, the published DP-SGD table (REFERENCES.md), analytic cases, invariants, bad input."""

import math

import numpy as np
import pytest

from twinjax.risk import privacy as dp

DELTA = 1e-5
N_MNIST, BATCH = 60_000, 256

# REFERENCES.md, "Differential privacy — DP-SGD accounting at δ = 1e-5":
# (q, σ, steps, ε classic (published, 2 decimals), ε improved (dp-accounting, as printed there))
PUBLISHED = [
    (0.01, 4.0, 10_000, 1.26, 1.035),  # Abadi et al. 2016
    (BATCH / N_MNIST, 1.1, int(60 * N_MNIST / BATCH), 3.01, 2.60),  # TF-Privacy MNIST tutorial
    (BATCH / N_MNIST, 1.3, int(15 * N_MNIST / BATCH), 1.19, 0.955),
    (BATCH / N_MNIST, 0.7, int(45 * N_MNIST / BATCH), 7.10, 6.32),
]

# a grid beyond the published settings: tiny to large q, small to large σ, one step to many, several δ; (0.5, 4.0) has
# fractional orders whose series does not converge (∞ in both implementations)
GRID = [
    (1e-4, 0.8, 100_000, 1e-6),
    (1e-3, 1.0, 1, 1e-5),
    (0.05, 2.0, 500, 1e-3),
    (0.1, 0.5, 50, 1e-5),
    (0.5, 4.0, 20, 1e-5),
    (0.9, 10.0, 3, 1e-2),
    (1.0, 3.0, 10, 1e-5),
    (0.02, 50.0, 1_000, 1e-5),
]


def _reference(q, sigma, steps, delta):
    accounting = pytest.importorskip("dp_accounting")
    accountant = accounting.rdp.RdpAccountant()  # dp-accounting's default orders
    event = accounting.PoissonSampledDpEvent(q, accounting.GaussianDpEvent(sigma))
    accountant.compose(accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon_and_optimal_order(delta), accountant.rdp, accountant.orders


def test_default_orders_are_dp_accountings():
    rdp_module = pytest.importorskip("dp_accounting.rdp.rdp_privacy_accountant")
    assert list(dp.DEFAULT_RDP_ORDERS) == list(rdp_module.DEFAULT_RDP_ORDERS)


@pytest.mark.parametrize("q, sigma, steps, delta", [(q, s, t, DELTA) for q, s, t, _, _ in PUBLISHED])
def test_published_settings_match_dp_accounting(q, sigma, steps, delta):
    (eps_ref, order_ref), rdp_ref, orders = _reference(q, sigma, steps, delta)
    eps = dp.epsilon(sigma, q, steps, delta)
    assert eps == pytest.approx(eps_ref, rel=1e-9)
    rdp = steps * dp.rdp_subsampled_gaussian(q, sigma, orders)
    np.testing.assert_allclose(rdp, rdp_ref, rtol=1e-9)
    assert dp.rdp_to_epsilon(orders, rdp, delta) == pytest.approx((eps_ref, order_ref), rel=1e-9)


@pytest.mark.parametrize("q, sigma, steps, delta", GRID)
def test_grid_matches_dp_accounting(q, sigma, steps, delta):
    (eps_ref, order_ref), rdp_ref, orders = _reference(q, sigma, steps, delta)
    rdp_one = dp.rdp_subsampled_gaussian(q, sigma, orders)
    # the same orders are infinite (fractional series not converged); finite ones agree to rounding: where the RDP is
    # tiny, log A_α ≈ 1e-12 is the log of a sum ≈ 1 and both implementations carry ~1e-16 absolute error in it
    np.testing.assert_array_equal(np.isfinite(steps * rdp_one), np.isfinite(rdp_ref))
    finite = np.isfinite(rdp_ref)
    np.testing.assert_allclose(steps * rdp_one[finite], rdp_ref[finite], rtol=1e-9, atol=steps * 1e-14)
    eps, order = dp.rdp_to_epsilon(orders, steps * rdp_one, delta)
    assert eps == pytest.approx(eps_ref, rel=1e-9, abs=1e-12)
    assert order == order_ref
    assert dp.epsilon(sigma, q, steps, delta, conversion="improved") == pytest.approx(eps_ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("q, sigma, steps, classic, improved", PUBLISHED)
def test_published_table(q, sigma, steps, classic, improved):
    eps_classic = dp.epsilon(sigma, q, steps, DELTA, conversion="classic")
    assert round(eps_classic, 2) == classic
    eps_improved = dp.epsilon(sigma, q, steps, DELTA)
    # the improved column is printed to 3–4 significant digits
    assert eps_improved == pytest.approx(improved, abs=6e-3)
    assert eps_improved < eps_classic


def test_steps_convention_of_tf_privacy():
    # steps = int(epochs · N / batch): 60 epochs of MNIST at batch 256 is 14 062 steps (not 14 063)
    assert [t for _, _, t, _, _ in PUBLISHED[1:]] == [14_062, 3_515, 10_546]


def test_full_batch_is_the_gaussian_mechanism():
    orders = [1.5, 2, 2.5, 3, 10, 32.7, 256]
    for sigma in (0.5, 1.0, 3.7):
        rdp = dp.rdp_subsampled_gaussian(1.0, sigma, orders)
        np.testing.assert_array_equal(rdp, np.asarray(orders) / (2 * sigma**2))


def test_no_sampling_is_private_for_free():
    rdp = dp.rdp_subsampled_gaussian(0.0, 0.3, dp.DEFAULT_RDP_ORDERS)
    np.testing.assert_array_equal(rdp, 0.0)
    assert dp.epsilon(0.3, 0.0, 1_000, DELTA) == 0.0
    assert dp.epsilon(1.0, 0.01, 0, DELTA) == 0.0  # no steps


def test_integer_order_matches_the_binomial_sum_directly():
    # A_α = Σ_i C(α, i) (1 − q)^{α−i} q^i exp((i² − i)/2σ²), evaluated plainly for a small order
    q, sigma, alpha = 0.03, 0.9, 6
    a = sum(
        math.comb(alpha, i) * (1 - q) ** (alpha - i) * q**i * math.exp((i * i - i) / (2 * sigma**2))
        for i in range(alpha + 1)
    )
    assert dp.rdp_subsampled_gaussian(q, sigma, alpha)[0] == pytest.approx(math.log(a) / (alpha - 1), rel=1e-13)


def test_monotone_in_sampling_rate_and_noise():
    orders = [2, 3.5, 8, 20, 64]  # (orders near 1 at large q are ∞: their fractional series does not converge)
    by_q = np.stack([dp.rdp_subsampled_gaussian(q, 1.1, orders) for q in (1e-3, 1e-2, 0.1, 0.5, 1.0)])
    assert np.all(np.diff(by_q, axis=0) > 0)
    by_sigma = np.stack([dp.rdp_subsampled_gaussian(0.01, s, orders) for s in (0.7, 1.0, 2.0, 5.0)])
    assert np.all(np.diff(by_sigma, axis=0) < 0)
    # and increasing in the order (RDP is non-decreasing in α)
    assert np.all(np.diff(by_q, axis=1) > 0)


def test_integer_and_fractional_orders_are_continuous():
    for q, sigma in [(0.01, 1.1), (256 / 60_000, 0.7), (0.2, 2.0)]:
        for alpha in (2, 3, 10):
            at, below, above = dp.rdp_subsampled_gaussian(q, sigma, [alpha, alpha - 1e-6, alpha + 1e-6])
            # the fractional series sums |C(α, i)|, so near an integer it exceeds the exact binomial sum by O(|α − k|)
            # relative (an upper bound, as in dp-accounting); the jump across the integer is that small
            assert below == pytest.approx(at, rel=1e-5) and above == pytest.approx(at, rel=1e-5)
            assert above > at


def test_epsilon_increases_with_steps_and_classic_dominates_improved():
    for conversion in ("classic", "improved"):
        eps = [dp.epsilon(1.1, 0.01, t, DELTA, conversion) for t in (1, 10, 100, 1_000, 10_000)]
        assert np.all(np.diff(eps) > 0)
    orders = np.array(dp.DEFAULT_RDP_ORDERS)
    rdp = 1_000 * dp.rdp_subsampled_gaussian(0.01, 1.1, orders)
    classic, _ = dp.rdp_to_epsilon(orders, rdp, DELTA, "classic")
    improved, _ = dp.rdp_to_epsilon(orders, rdp, DELTA, "improved")
    assert improved < classic
    # classic: the formula, minimised over the grid
    assert classic == pytest.approx(np.min(rdp + math.log(1 / DELTA) / (orders - 1)), rel=1e-15)


def test_explicit_orders_and_scalar_order():
    orders = [2, 4, 8, 16, 32]
    coarse = dp.epsilon(1.1, 0.01, 1_000, DELTA, orders=orders)
    fine = dp.epsilon(1.1, 0.01, 1_000, DELTA)
    assert fine <= coarse  # a finer grid can only lower the minimum (the default grid contains these orders)
    assert dp.rdp_subsampled_gaussian(0.01, 1.1, 2.0).shape == (1,)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: dp.rdp_subsampled_gaussian(-0.1, 1.0, [2]), "sampling_rate"),
        (lambda: dp.rdp_subsampled_gaussian(1.5, 1.0, [2]), "sampling_rate"),
        (lambda: dp.rdp_subsampled_gaussian(0.1, 0.0, [2]), "noise_multiplier"),
        (lambda: dp.rdp_subsampled_gaussian(0.1, -1.0, [2]), "noise_multiplier"),
        (lambda: dp.rdp_subsampled_gaussian(0.1, math.inf, [2]), "noise_multiplier"),
        (lambda: dp.rdp_subsampled_gaussian(0.1, 1.0, [1.0, 2.0]), "orders"),
        (lambda: dp.rdp_subsampled_gaussian(0.1, 1.0, [0.5]), "orders"),
        (lambda: dp.rdp_subsampled_gaussian(0.1, 1.0, [math.nan]), "orders"),
        (lambda: dp.rdp_subsampled_gaussian(0.1, 1.0, []), "orders"),
        (lambda: dp.epsilon(1.0, 0.1, -1, DELTA), "steps"),
        (lambda: dp.epsilon(1.0, 0.1, 2.5, DELTA), "steps"),
        (lambda: dp.epsilon(1.0, 0.1, 10, 0.0), "delta"),
        (lambda: dp.epsilon(1.0, 0.1, 10, 1.0), "delta"),
        (lambda: dp.epsilon(1.0, 0.1, 10, DELTA, conversion="tight"), "conversion"),
        (lambda: dp.rdp_to_epsilon([2, 3], [0.1], DELTA), "rdp"),
        (lambda: dp.rdp_to_epsilon([2, 3], [0.1, 0.2], DELTA, "bogus"), "conversion"),
        (lambda: dp.rdp_to_epsilon([2, 0.9], [0.1, 0.2], DELTA), "orders"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()
