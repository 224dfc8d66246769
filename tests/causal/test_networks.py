"""Linear causal gene networks: steady states against numpy, regression calibration from knockouts, predictions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax.causal.networks import (
    LinearGeneNetwork,
    SaturatingGeneNetwork,
    additive_baseline,
    fit_network,
    interacting_pairs,
    knockout_masks,
    perturbation_means,
    predict_knockouts,
    random_interactions,
    reachability,
    sample_screen,
)

N = 6


def _network(key, noise_sd=0.3, density=0.4, strength=0.7):
    weights = random_interactions(key, N, density, strength)
    return LinearGeneNetwork(weights, jnp.linspace(0.5, 1.5, N), noise_sd)


def _singles(n=N):
    return knockout_masks([()] + [(j,) for j in range(n)], n)


def _cyclic(w) -> bool:
    return bool(np.any(np.diag(np.asarray(reachability(w)))))


def test_steady_state_matches_numpy_solve_of_the_surgered_system(key):
    net = _network(key)
    w, b = np.asarray(net.weights), np.asarray(net.basal)
    assert _cyclic(net.weights)  # the test network has a feedback loop
    masks = knockout_masks([(), (0,), (1, 3), (2, 4, 5)], N)
    noise = 0.3 * jax.random.normal(jax.random.key(1), (4, 5, N))
    x = eqx.filter_jit(net.steady_state)(noise, masks[:, None, :])
    for p in range(4):
        k = np.asarray(masks[p])
        free = ~k
        for c in range(5):
            e = np.asarray(noise[p, c])
            expected = np.zeros(N)
            # do(x_K = 0): the free genes solve x_F = W_FF x_F + b_F + e_F
            expected[free] = np.linalg.solve(np.eye(free.sum()) - w[np.ix_(free, free)], b[free] + e[free])
            np.testing.assert_allclose(np.asarray(x[p, c]), expected, rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(x)[np.broadcast_to(np.asarray(masks)[:, None, :], x.shape)] == 0.0)


def test_saturating_network_solves_its_fixed_point_and_is_linear_at_zero_saturation(key):
    net = _network(key)
    masks = knockout_masks([(), (2,), (0, 5)], N)
    noise = 0.5 * jax.random.normal(jax.random.key(2), (3, N))
    sat = SaturatingGeneNetwork(net.weights, net.basal, net.noise_sd, saturation=2.0)
    x = sat.steady_state(noise, masks)
    keep = 1.0 - masks
    residual = x - keep * (sat.regulation(x) @ net.weights.T + net.basal + noise)
    assert float(jnp.max(jnp.abs(residual))) < 1e-12
    assert float(jnp.max(jnp.abs(x - net.steady_state(noise, masks)))) > 1e-2  # the saturation matters
    lin = SaturatingGeneNetwork(net.weights, net.basal, net.noise_sd, saturation=0.0)
    np.testing.assert_allclose(lin.steady_state(noise, masks), net.steady_state(noise, masks), atol=1e-13)


def test_bad_inputs_raise_errors_naming_the_argument():
    with pytest.raises(ValueError, match="spectral radius of the interaction matrix W"):
        LinearGeneNetwork(jnp.array([[0.0, 2.0], [1.0, 0.0]]), jnp.ones(2))
    with pytest.raises(ValueError, match="zero diagonal"):
        LinearGeneNetwork(jnp.array([[0.1, 0.0], [0.0, 0.0]]), jnp.ones(2))
    with pytest.raises(ValueError, match="square"):
        LinearGeneNetwork(jnp.zeros((2, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match="basal"):
        LinearGeneNetwork(jnp.zeros((2, 2)), jnp.ones(3))
    with pytest.raises(ValueError, match="noise_sd"):
        LinearGeneNetwork(jnp.zeros((2, 2)), jnp.ones(2), -1.0)
    with pytest.raises(ValueError, match="sets"):
        knockout_masks([(0, 0)], 3)
    with pytest.raises(ValueError, match="sets"):
        knockout_masks([(3,)], 3)
    net = LinearGeneNetwork(jnp.zeros((2, 2)), jnp.ones(2))
    with pytest.raises(ValueError, match="cells_per_perturbation"):
        sample_screen(net, jax.random.key(0), knockout_masks([()], 2), 0)
    with pytest.raises(ValueError, match="masks"):
        sample_screen(net, jax.random.key(0), knockout_masks([()], 3), 2)
    screen = sample_screen(net, jax.random.key(0), _singles(2), 3)
    with pytest.raises(ValueError, match="method"):
        fit_network(screen, method="lasso")
    with pytest.raises(ValueError, match="ridge"):
        fit_network(screen, ridge=-1.0)


def test_reachability_matches_breadth_first_search(key):
    w = np.asarray(random_interactions(key, 12, 0.12, 0.5))
    reach = np.asarray(reachability(jnp.asarray(w)))
    for source in range(12):
        seen, frontier = set(), [source]
        while frontier:
            j = frontier.pop()
            for i in np.flatnonzero(w[:, j]):
                if i not in seen:
                    seen.add(int(i))
                    frontier.append(int(i))
        np.testing.assert_array_equal(reach[:, source], [i in seen for i in range(12)])


def test_random_interactions_has_the_requested_norm_and_zero_diagonal(key):
    w = random_interactions(key, 20, 0.1, 0.8)
    assert float(jnp.linalg.norm(w, ord=2)) == pytest.approx(0.8, rel=1e-12)
    assert float(jnp.max(jnp.abs(jnp.diag(w)))) == 0.0
    assert float(jnp.max(jnp.abs(random_interactions(key, 5, 0.0, 0.8)))) == 0.0


def test_sample_screen_is_reproducible_and_cells_follow_their_perturbation(key):
    net = _network(key)
    masks = _singles()
    a = sample_screen(net, jax.random.key(3), masks, 4, 0.1)
    b = sample_screen(net, jax.random.key(3), masks, 4, 0.1)
    np.testing.assert_array_equal(a.expression, b.expression)
    assert a.expression.shape == (4 * (N + 1), N)
    np.testing.assert_array_equal(a.perturbation, np.repeat(np.arange(N + 1), 4))
    clean = sample_screen(net, jax.random.key(3), masks, 4)
    knocked = np.asarray(masks)[np.asarray(clean.perturbation)]
    assert np.all(np.asarray(clean.expression)[knocked] == 0.0)


def test_noise_free_screen_recovers_the_network_exactly(key):
    net = _network(key, noise_sd=0.0)
    fit = fit_network(sample_screen(net, jax.random.key(4), _singles(), 7))
    np.testing.assert_allclose(fit.weights, net.weights, atol=1e-10)
    np.testing.assert_allclose(fit.basal, net.basal, atol=1e-10)


def test_iv_regression_recovers_a_cyclic_network_within_standard_errors_and_ols_does_not(key):
    net = _network(key, noise_sd=0.3)
    assert _cyclic(net.weights)
    screen = sample_screen(net, jax.random.key(5), _singles(), 4000)
    off = ~np.eye(N, dtype=bool)
    iv = fit_network(screen, method="iv")
    z_iv = np.abs(np.asarray(iv.weights - net.weights))[off] / np.asarray(iv.weights_se)[off]
    # 30 coefficients: a two-sided Bonferroni bound at family level 1e-3 is 4.3 standard errors
    assert z_iv.max() < 4.3
    n_cells = 4000 * N  # cells with gene i not knocked out
    assert np.all(np.abs(np.asarray(iv.noise_sd) - 0.3) < 4.3 * 0.3 / np.sqrt(2 * n_cells))
    ols = fit_network(screen, method="ols")
    z_ols = np.abs(np.asarray(ols.weights - net.weights))[off] / np.asarray(ols.weights_se)[off]
    assert z_ols.max() > 20  # naive regression on downstream genes is biased far beyond its standard errors


def test_exactly_identified_twin_reproduces_the_training_means(key):
    net = _network(key)
    screen = sample_screen(net, jax.random.key(6), _singles(), 7)
    fit = fit_network(screen)
    means, counts = perturbation_means(screen)
    np.testing.assert_array_equal(counts, np.full(N + 1, 7.0))
    np.testing.assert_allclose(predict_knockouts(fit.weights, fit.basal, screen.masks), means, atol=1e-10)


def test_ridge_matches_the_closed_form_on_perturbation_means(key):
    net = _network(key)
    screen = sample_screen(net, jax.random.key(7), _singles(), 7)
    lam = 0.05
    fit = fit_network(screen, ridge=lam)
    means, counts = (np.asarray(a) for a in perturbation_means(screen))
    masks = np.asarray(screen.masks)
    for i in range(N):
        rows = ~masks[:, i]
        others = [j for j in range(N) if j != i]
        design = np.column_stack([means[rows][:, others], np.ones(rows.sum())])
        w = counts[rows] / counts[rows].sum()
        penalty = np.diag([lam] * (N - 1) + [0.0])
        coef = np.linalg.solve(design.T @ (w[:, None] * design) + penalty, design.T @ (w * means[rows, i]))
        np.testing.assert_allclose(np.asarray(fit.weights)[i, others], coef[:-1], atol=1e-10)
        np.testing.assert_allclose(float(fit.basal[i]), coef[-1], atol=1e-10)
    assert float(jnp.sum(fit.weights**2)) < float(jnp.sum(fit_network(screen).weights ** 2))


def _double_errors(net, pairs):
    singles = predict_knockouts(net.weights, net.basal, _singles(net.n_genes))
    control, effects = singles[0], singles[1:] - singles[0]
    masks = knockout_masks(pairs, net.n_genes)
    truth = predict_knockouts(net.weights, net.basal, masks)
    error = np.abs(np.asarray(additive_baseline(control, effects, masks) - truth))
    return np.where(np.asarray(masks), 0.0, error).max(axis=1)  # over the genes not knocked out


def test_additive_baseline_is_exact_on_a_chain_unless_the_upstream_gene_acts_through_the_other():
    # chain 0 -> 1 -> 2 -> 5 and 3 -> 4 -> 5: gene 5 is a shared target of separate paths
    w = np.zeros((N, N))
    w[1, 0], w[2, 1], w[4, 3], w[5, 2], w[5, 4] = 0.5, -0.6, 0.7, 0.4, 0.3
    net = LinearGeneNetwork(jnp.asarray(w), jnp.linspace(1.0, 2.0, N), 0.1)
    pairs = [(0, 1), (0, 3), (1, 4), (2, 5), (4, 5), (1, 2)]
    error = dict(zip(pairs, _double_errors(net, pairs), strict=True))
    # 0 -> 1 -> 2: knocking out 0 shifts 1, and 1 acts on 2 and 5, so the shift is counted twice
    assert error[(0, 1)] > 1e-3 and error[(1, 2)] > 1e-3
    # shared target 5 through separate paths, or a regulated gene with no further targets: additive
    assert error[(0, 3)] < 1e-12 and error[(1, 4)] < 1e-12 and error[(2, 5)] < 1e-12 and error[(4, 5)] < 1e-12
    inter = np.asarray(interacting_pairs(net.weights))
    assert [bool(inter[p]) for p in pairs] == [True, False, False, False, False, True]


@pytest.mark.parametrize("density", [0.15, 0.3])
def test_interacting_pairs_predicts_exactly_where_random_cyclic_networks_are_non_additive(density):
    n = 10
    net = LinearGeneNetwork(random_interactions(jax.random.key(11), n, density, 0.8), jnp.linspace(0.5, 1.5, n), 0.1)
    assert _cyclic(net.weights)
    pairs = [(j, k) for j in range(n) for k in range(j + 1, n)]
    error = _double_errors(net, pairs)
    inter = np.asarray(interacting_pairs(net.weights))
    expected = np.array([inter[p] for p in pairs])
    assert 0 < expected.sum() < len(pairs)  # both kinds occur
    assert np.all(error[~expected] < 1e-12) and np.all(error[expected] > 1e-9)
