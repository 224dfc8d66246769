"""Transported treatment effects, positivity and the subgroup audit against known truths on synthetic trials.

Source covariates ``X ~ N(0, 1)`` (truncated to ``X < 1.5`` where positivity must fail), target ``X ~ N(μ_t, 1)``,
randomised ``T ~ Bernoulli(1/2)`` and ``Y = 1 + T (2 + 3X) + ε``, ``ε ~ N(0, 1)``: the target effect in a region ``R``
is ``2 + 3 E_t[X | R]``, a truncated-normal mean.
"""

import jax
import numpy as np
import pytest
from scipy import stats

from twinjax.causal.trials import (
    positivity_check,
    strata_from_bins,
    subgroup_audit,
    transport_weights,
    transported_effect,
)

K = 4.0  # standard errors allowed between an estimate and its truth
CUT = 1.5
EDGES = [(0.0, CUT)]


def _trial(rng, n, truncate):
    x = rng.standard_normal(4 * n)
    x = x[x < CUT][:n] if truncate else x[:n]
    t = rng.random(n) < 0.5
    y = 1.0 + t * (2.0 + 3.0 * x) + rng.standard_normal(n)
    return x, t, y


def _log_source(truncate):
    return lambda x: stats.norm.logpdf(np.asarray(x)[:, 0]) - (stats.norm.logcdf(CUT) if truncate else 0.0)


def _log_target(mu):
    return lambda x: stats.norm.logpdf(np.asarray(x)[:, 0], loc=mu)


def _truncnorm_mean(mu, lo, hi):
    a, b = lo - mu, hi - mu
    return mu + (stats.norm.pdf(a) - stats.norm.pdf(b)) / (stats.norm.cdf(b) - stats.norm.cdf(a))


def test_strata_from_bins_matches_a_brute_force_grid():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (200, 2))
    labels, n = strata_from_bins(x, [(-1.0, 0.0, 1.0), (0.5,)])
    assert n == 8
    brute = [2 * sum(v >= e for e in (-1.0, 0.0, 1.0)) + int(w >= 0.5) for v, w in x]
    np.testing.assert_array_equal(np.asarray(labels), brute)
    with pytest.raises(ValueError, match="edges"):
        strata_from_bins(x, [(0.0,)])
    with pytest.raises(ValueError, match=r"edges\[0\]"):
        strata_from_bins(x, [(1.0, 0.0), ()])


def test_known_density_weights_recover_the_target_effect():
    rng = np.random.default_rng(1)
    x, t, y = _trial(rng, 20_000, truncate=False)
    w, clf = transport_weights(x, log_p_source=_log_source(False), log_p_target=_log_target(0.5))
    assert clf is None
    res = transported_effect(y, t, w.weights)
    assert abs(res.estimate - (2.0 + 3.0 * 0.5)) < K * res.standard_error
    naive = transported_effect(y, t, np.ones_like(y))
    assert abs(naive.estimate - 2.0) < K * naive.standard_error
    assert abs(naive.estimate - res.estimate) > K * res.standard_error  # the shift matters
    assert res.coverage == 1.0 and res.excluded == ()


def test_classifier_weights_match_the_exact_density_ratio_and_recover_the_effect():
    rng = np.random.default_rng(2)
    x, t, y = _trial(rng, 4000, truncate=False)
    target = rng.normal(0.5, 1.0, 4000)
    w, clf = transport_weights(x, target=target, key=jax.random.key(0), steps=300)
    exact = _log_target(0.5)(x[:, None]) - _log_source(False)(x[:, None])
    central = np.abs(x) < 2
    # the log-ratio is affine, so logistic regression is well specified; its estimate is O(1/√n) off
    assert np.max(np.abs(np.asarray(w.log_weights) - exact)[central]) < 0.15
    res = transported_effect(y, t, w.weights)
    assert abs(res.estimate - 3.5) < K * res.standard_error


def test_positivity_flags_the_stratum_the_source_never_covers_and_estimation_refuses_or_restricts():
    rng = np.random.default_rng(3)
    x, t, y = _trial(rng, 20_000, truncate=True)
    target = rng.normal(1.0, 1.0, 20_000)
    s_lab, n_strata = strata_from_bins(x, EDGES)
    t_lab, _ = strata_from_bins(target, EDGES)
    w, _ = transport_weights(x, log_p_source=_log_source(True), log_p_target=_log_target(1.0))
    rep = positivity_check(s_lab, t_lab, n_strata, weights=w.weights, min_count=20, min_ess=10.0)
    np.testing.assert_array_equal(np.asarray(rep.supported), [True, True, False])
    assert int(rep.n_source[2]) == 0 and int(rep.n_target[2]) > 0
    share = stats.norm.sf(CUT - 1.0)  # P_t(X ≥ 1.5)
    assert abs(rep.unsupported_fraction - share) < K * np.sqrt(share * (1 - share) / target.size)

    with pytest.raises(ValueError, match=r"target strata \[2\]"):
        transported_effect(y, t, w.weights, report=rep, source_strata=s_lab, target_strata=t_lab)
    res = transported_effect(
        y, t, w.weights, report=rep, source_strata=s_lab, target_strata=t_lab, on_unsupported="restrict"
    )
    truth = 2.0 + 3.0 * _truncnorm_mean(1.0, -np.inf, CUT)
    assert abs(res.estimate - truth) < K * res.standard_error
    assert res.excluded == (2,) and abs(res.coverage - (1.0 - rep.unsupported_fraction)) < 1e-12

    rows = subgroup_audit(y, t, w.weights, rep, s_lab, names=["x<0", "0<=x<1.5", "x>=1.5"])
    bounds = [(-np.inf, 0.0), (0.0, CUT)]
    for row, (lo, hi) in zip(rows[:2], bounds):
        true_g = 2.0 + 3.0 * _truncnorm_mean(1.0, lo, hi)
        assert row["supported"] and abs(row["estimate"] - true_g) < K * row["standard_error"], row
        assert row["ci_low"] < row["estimate"] < row["ci_high"]
    assert rows[2]["supported"] is False and rows[2]["estimate"] is None and rows[2]["n_source"] == 0
    assert rows[2]["name"] == "x>=1.5" and rows[2]["n_target"] == int(rep.n_target[2])
    assert abs(sum(r["target_share"] for r in rows) - 1.0) < 1e-12


def test_a_stratum_dominated_by_few_weights_is_unsupported_and_the_classifier_flags_far_points():
    labels = np.array([0] * 50 + [1] * 50)
    w = np.ones(100)
    w[50] = 1e6  # one patient carries stratum 1
    rep = positivity_check(labels, np.array([0, 1]), 2, weights=w, min_count=20, min_ess=5.0)
    np.testing.assert_array_equal(np.asarray(rep.supported), [True, False])
    np.testing.assert_allclose(np.asarray(rep.ess), [50.0, (1e6 + 49) ** 2 / (1e12 + 49)])

    rng = np.random.default_rng(4)
    source, target = rng.normal(0, 1, 2000), np.concatenate([rng.normal(0, 1, 1900), rng.normal(8, 0.3, 100)])
    _, clf = transport_weights(source, target=target, key=jax.random.key(1), steps=500, depth=1, width=16)
    rep = positivity_check(
        np.zeros(2000, int), np.zeros(2000, int), 1, target=target, classifier=clf, eps=1e-2, min_count=20
    )
    flagged = np.asarray(rep.target_flagged)
    assert flagged[1900:].mean() > 0.95 and flagged[:1900].mean() < 0.01


def test_bad_inputs_raise_naming_the_argument():
    y, t, w = np.zeros(4), np.array([True, False, True, False]), np.ones(4)
    with pytest.raises(ValueError, match="treated"):
        transported_effect(y, t.astype(int), w)
    with pytest.raises(ValueError, match="weights"):
        transported_effect(y, t, -w)
    with pytest.raises(ValueError, match="on_unsupported"):
        transported_effect(y, t, w, on_unsupported="ignore")
    with pytest.raises(ValueError, match="source_strata"):
        positivity_check(np.array([0, 3]), np.array([0]), 2)
    with pytest.raises(ValueError, match="min_count"):
        positivity_check(np.array([0, 1]), np.array([0]), 2, min_count=0)
    with pytest.raises(ValueError, match="target"):
        transport_weights(np.zeros(3))
    rep = positivity_check(np.array([0, 0, 1, 1]), np.array([0]), 2, min_count=1, min_ess=1.0)
    with pytest.raises(ValueError, match="names"):
        subgroup_audit(y, t, w, rep, np.array([0, 0, 1, 1]), names=["a"])
    with pytest.raises(ValueError, match="level"):
        subgroup_audit(y, t, w, rep, np.array([0, 0, 1, 1]), level=95.0)


def test_cluster_robust_error_counts_copies_of_a_patient_once():
    rng = np.random.default_rng(5)
    x, t, y = _trial(rng, 500, truncate=False)
    w = np.exp(0.5 * x)
    base = transported_effect(y, t, w)
    copies = 7
    ids = np.repeat(np.arange(500), copies)
    dup = transported_effect(np.repeat(y, copies), np.repeat(t, copies), np.repeat(w, copies), clusters=ids)
    naive = transported_effect(np.repeat(y, copies), np.repeat(t, copies), np.repeat(w, copies))
    np.testing.assert_allclose(dup.estimate, base.estimate, rtol=1e-12)
    np.testing.assert_allclose(dup.standard_error, base.standard_error, rtol=1e-12)
    np.testing.assert_allclose(naive.standard_error, base.standard_error / np.sqrt(copies), rtol=1e-12)
    with pytest.raises(ValueError, match="clusters"):
        transported_effect(y, t, w, clusters=np.zeros(3, int))
