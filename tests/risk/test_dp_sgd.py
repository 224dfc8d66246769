"""DP-SGD (``twinjax.risk.dp_sgd``) against truth: per-example gradients against a loop of ``jax.grad``, clipping
and the masked clipped sum against hand computation, the noise's standard deviation against ``σ C / B̄`` within its
Monte-Carlo error, Poisson sampling frequencies against ``q``, optax's own DP aggregate at ``σ = 0``, bad arguments,
and a smoke run of ``python -m benchmarks privacy --quick``."""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from twinjax.risk.dp_sgd import (
    DPSGDState,
    clip_and_noise,
    clip_per_example,
    dp_aggregate,
    dp_sgd,
    max_batch_for,
    per_example_grads,
    poisson_batch,
)


def _loss(params, example):
    x, y = example
    pred = jnp.tanh(x @ params["w"]) @ params["v"] + params["b"]
    return (pred - y) ** 2


def _problem(n=7, d=4, h=3, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.normal(size=(d, h))),
        "v": jnp.asarray(rng.normal(size=h)),
        "b": jnp.asarray(rng.normal()),
    }
    batch = (jnp.asarray(rng.normal(size=(n, d))), jnp.asarray(rng.normal(size=n)))
    return params, batch


def _flat(tree, i=None):
    leaves = jax.tree.leaves(tree)
    if i is None:
        return np.concatenate([np.ravel(leaf) for leaf in leaves])
    return np.concatenate([np.ravel(leaf[i]) for leaf in leaves])


def test_per_example_grads_match_loop():
    params, batch = _problem()
    grads = per_example_grads(_loss, params, batch)
    for i in range(batch[0].shape[0]):
        ref = jax.grad(_loss)(params, (batch[0][i], batch[1][i]))
        np.testing.assert_allclose(_flat(grads, i), _flat(ref), rtol=1e-12, atol=1e-12)
    mask = jnp.array([True, False, True, True, False, True, True])
    masked = per_example_grads(_loss, params, batch, mask)
    for i in range(7):
        expected = _flat(grads, i) if mask[i] else 0.0
        np.testing.assert_array_equal(_flat(masked, i), expected)


def test_clipping_norms_exact():
    params, batch = _problem(n=9)
    grads = per_example_grads(_loss, params, batch)
    norms_before = np.array([np.linalg.norm(_flat(grads, i)) for i in range(9)])
    clip = float(np.median(norms_before))  # about half clipped, half not
    clipped, norms = clip_per_example(grads, clip)
    np.testing.assert_allclose(norms, norms_before, rtol=1e-13)
    after = np.array([np.linalg.norm(_flat(clipped, i)) for i in range(9)])
    np.testing.assert_allclose(after, np.minimum(norms_before, clip), rtol=1e-13)
    for i in range(9):  # direction unchanged
        np.testing.assert_allclose(_flat(clipped, i), _flat(grads, i) * min(1.0, clip / norms_before[i]), rtol=1e-13)
    zero, _ = clip_per_example({"a": jnp.zeros((3, 2))}, 1.0)  # no 0/0
    np.testing.assert_array_equal(zero["a"], 0.0)


def test_sigma_zero_is_clipped_sum_over_expected_batch_and_mask_has_no_influence(key):
    params, batch = _problem(n=8)
    grads = per_example_grads(_loss, params, batch)
    mask = np.array([True, True, False, True, False, True, True, False])
    clip, ebs = 0.7, 5.5
    out = dp_aggregate(grads, jnp.asarray(mask), clip, 0.0, ebs, key)
    hand = sum(_flat(grads, i) * min(1.0, clip / np.linalg.norm(_flat(grads, i))) for i in range(8) if mask[i]) / ebs
    np.testing.assert_allclose(_flat(out), hand, rtol=1e-13, atol=1e-15)
    # masked-out rows may hold anything (even NaN): the result does not change
    poisoned = jax.tree.map(lambda g: g.at[~mask].set(jnp.nan), grads)
    np.testing.assert_array_equal(_flat(dp_aggregate(poisoned, jnp.asarray(mask), clip, 0.0, ebs, key)), _flat(out))
    poisoned = jax.tree.map(lambda g: g.at[~mask].multiply(1e6), grads)
    np.testing.assert_array_equal(_flat(clip_and_noise(poisoned, jnp.asarray(mask), clip, 0.0, ebs, key)), _flat(out))
    # with noise too, the same key: masked rows still have no influence
    a = dp_aggregate(grads, jnp.asarray(mask), clip, 1.3, ebs, key)
    b = dp_aggregate(poisoned, jnp.asarray(mask), clip, 1.3, ebs, key)
    np.testing.assert_array_equal(_flat(a), _flat(b))


def test_noise_standard_deviation(key):
    sigma, clip, ebs, n_keys = 1.7, 0.6, 12.5, 2000
    grads = {"a": jnp.zeros((4, 3)), "b": jnp.zeros((4, 2, 2))}  # 7 coordinates per draw
    draws = jax.vmap(lambda k: _flat_jax(dp_aggregate(grads, None, clip, sigma, ebs, k)))(jax.random.split(key, n_keys))
    x = np.asarray(draws).ravel()
    n, target = x.size, sigma * clip / ebs
    assert abs(x.mean()) <= 4 * target / math.sqrt(n)
    # (n - 1) s² / τ² ~ χ²(n - 1): sd of s/τ ≈ 1/√(2(n-1))
    assert abs(x.std(ddof=1) / target - 1) <= 4 / math.sqrt(2 * (n - 1))
    # independent leaves and coordinates: correlation between the two leaves' first coordinates ≈ 0
    r = np.corrcoef(np.asarray(draws)[:, 0], np.asarray(draws)[:, 3])[0, 1]
    assert abs(r) <= 4 / math.sqrt(n_keys)


def _flat_jax(tree):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def test_transformation_keys_and_state():
    params, batch = _problem()
    grads = per_example_grads(_loss, params, batch)
    mask = jnp.ones(7, bool).at[2].set(False)
    opt = dp_sgd(1.0, 1.1, 6.0, 3)
    state = opt.init(params)
    assert isinstance(state, DPSGDState)
    u1, s1 = opt.update(grads, state, mask=mask)
    u1b, _ = dp_sgd(1.0, 1.1, 6.0, jax.random.key(3)).update(grads, state, mask=mask)
    np.testing.assert_array_equal(_flat(u1), _flat(u1b))  # same key → same update
    u2, _ = opt.update(grads, s1, mask=mask)  # the key was split: the next step's noise differs
    assert not np.allclose(_flat(u1), _flat(u2))
    u3, _ = opt.update(grads, dp_sgd(1.0, 1.1, 6.0, 4).init(params), mask=mask)
    assert not np.allclose(_flat(u1), _flat(u3))
    # with σ = 0 the transformation is exactly dp_aggregate, and jit changes nothing
    opt0 = dp_sgd(1.0, 0.0, 6.0, 0)
    u0, _ = jax.jit(lambda g, s, m: opt0.update(g, s, mask=m))(grads, opt0.init(params), mask)
    ref = dp_aggregate(grads, mask, 1.0, 0.0, 6.0, jax.random.key(0))
    np.testing.assert_allclose(_flat(u0), _flat(ref), rtol=1e-12)  # jit may fuse and reorder the sums


def test_chain_with_sgd_trains_linear_regression(key):
    n, d = 400, 3
    kx, kn, kp = jax.random.split(key, 3)
    w_true = jnp.array([1.5, -2.0, 0.5])
    x = jax.random.normal(kx, (n, d))
    y = x @ w_true + 0.1 * jax.random.normal(kn, (n,))
    q = 0.25
    max_batch = max_batch_for(n, q)

    def loss(w, ex):
        return (ex[0] @ w - ex[1]) ** 2

    opt = optax.chain(dp_sgd(5.0, 1.0, q * n, 0), optax.sgd(0.05))

    @jax.jit
    def step(w, state, k):
        idx, mask = poisson_batch(k, n, q, max_batch)
        grads = per_example_grads(loss, w, (x[idx], y[idx]), mask)
        updates, state = opt.update(grads, state, w, mask=mask)  # optax.chain forwards `mask`
        return optax.apply_updates(w, updates), state

    def full_loss(w):
        return jnp.mean((x @ w - y) ** 2)

    w = jnp.zeros(d)
    state = opt.init(w)
    start = full_loss(w)
    for k in jax.random.split(kp, 150):
        w, state = step(w, state, k)
    assert np.all(np.isfinite(w))
    assert full_loss(w) < 0.05 * start
    np.testing.assert_allclose(w, w_true, atol=0.3)


def test_poisson_batch_frequencies(key):
    n, q, n_keys = 50, 0.3, 4000
    max_batch = max_batch_for(n, q)
    idx, mask = jax.vmap(lambda k: poisson_batch(k, n, q, max_batch))(jax.random.split(key, n_keys))
    idx, mask = np.asarray(idx), np.asarray(mask)
    counts = np.zeros(n)
    for i, m in zip(idx, mask):
        chosen = i[m]
        assert len(set(chosen.tolist())) == len(chosen)  # distinct
        assert np.all((chosen >= 0) & (chosen < n))
        assert np.all(m[: m.sum()]) and not np.any(m[m.sum() :])  # included slots first
        counts[chosen] += 1
    freq = counts / n_keys
    se = math.sqrt(q * (1 - q) / n_keys)
    assert np.max(np.abs(freq - q)) <= 4.5 * se  # 50 records at 4.5 SE: family-wise false alarm < 4e-4
    sizes = mask.sum(axis=1)
    assert abs(sizes.mean() - n * q) <= 4 * math.sqrt(n * q * (1 - q) / n_keys)
    assert abs(sizes.var(ddof=1) / (n * q * (1 - q)) - 1) <= 0.15  # Binomial variance (4000 draws: ~±0.045 SE)
    # edge rates
    _, m0 = poisson_batch(key, 10, 0.0, 3)
    _, m1 = poisson_batch(key, 10, 1.0, 10)
    assert m0.sum() == 0 and m1.sum() == 10


def test_poisson_batch_overflow_raises(key):
    with pytest.raises(Exception, match="max_batch"):
        jax.block_until_ready(poisson_batch(key, 100, 0.9, 5))


def test_max_batch_for_is_binomial_quantile():
    for n, q, tail in [(60_000, 0.01, 1e-9), (1000, 0.256, 1e-9), (50, 0.3, 1e-6)]:
        m = max_batch_for(n, q, tail)
        assert scipy.stats.binom.sf(m, n, q) <= tail < scipy.stats.binom.sf(m - 1, n, q)
    assert max_batch_for(10, 1.0) == 10 and max_batch_for(10, 0.0) == 1


def test_matches_optax_differentially_private_aggregate(key):
    agg_fn = getattr(getattr(optax, "contrib", None), "differentially_private_aggregate", None)
    if agg_fn is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            agg_fn = getattr(optax, "differentially_private_aggregate", None)
    if agg_fn is None:
        pytest.skip("this optax has no differentially_private_aggregate")
    params, batch = _problem(n=6)
    grads = per_example_grads(_loss, params, batch)
    agg = agg_fn(0.8, 0.0, key)
    theirs, _ = agg.update(grads, agg.init(params))
    ours = dp_aggregate(grads, None, 0.8, 0.0, 6.0, key)  # optax divides by the realised (padded) size, 6
    np.testing.assert_allclose(_flat(ours), _flat(theirs), rtol=1e-12)
    # the clipped sums agree for any denominator
    ours_sum = dp_aggregate(grads, None, 0.8, 0.0, 1.0, key)
    np.testing.assert_allclose(_flat(ours_sum), 6 * _flat(theirs), rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"l2_norm_clip": -1.0}, "l2_norm_clip"),
        ({"l2_norm_clip": 0.0}, "l2_norm_clip"),
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"expected_batch_size": 0.0}, "expected_batch_size"),
        ({"expected_batch_size": -3.0}, "expected_batch_size"),
        ({"noise_multiplier": math.nan}, "noise_multiplier"),
    ],
)
def test_bad_dp_arguments(kwargs, name, key):
    args = {"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "expected_batch_size": 10.0} | kwargs
    with pytest.raises(ValueError, match=name):
        dp_sgd(**args, seed_or_key=0)
    with pytest.raises(ValueError, match=name):
        dp_aggregate({"a": jnp.ones((2, 3))}, None, **args, key=key)


def test_bad_sampling_arguments(key):
    for q in (-0.1, 1.5):
        with pytest.raises(ValueError, match="sampling_rate"):
            poisson_batch(key, 10, q, 5)
        with pytest.raises(ValueError, match="sampling_rate"):
            max_batch_for(10, q)
    with pytest.raises(ValueError, match="n_records"):
        poisson_batch(key, 0, 0.5, 5)
    with pytest.raises(ValueError, match="max_batch"):
        poisson_batch(key, 10, 0.5, 0)
    with pytest.raises(ValueError, match="mask"):
        dp_aggregate({"a": jnp.ones((2, 3))}, jnp.ones(3, bool), 1.0, 1.0, 2.0, key)
    # ValueError from dp_sgd; the test run's jaxtyping hook rejects the annotation first (a TypeError)
    with pytest.raises((ValueError, TypeError), match="seed_or_key"):
        dp_sgd(1.0, 1.0, 2.0, "zero")


def test_privacy_benchmark_quick_json(tmp_path):
    from benchmarks.__main__ import available, main

    assert "privacy" in available()
    path = tmp_path / "privacy.json"
    assert main(["privacy", "--quick", "--json", str(path)]) == 0  # 0: checks passed, one trace per case
    res = json.loads(path.read_text())
    assert {"times_s", "compile_s", "speedup", "checks", "env"} <= set(res)
    assert set(res["speedup"]) == {"nonprivate"}
    assert 0 < res["speedup"]["nonprivate"] and math.isfinite(res["speedup"]["nonprivate"])
    assert set(res["times_s"]) == set(res["compile_s"])
    assert all(v > 0 for v in res["times_s"].values())
    assert all(n == 1 for n in res["traces"].values())


def test_integer_hyperparameters_accepted(key):
    grads = {"a": jnp.ones((2, 3))}
    out = dp_aggregate(grads, None, 1, 0, 2, key)
    np.testing.assert_allclose(out["a"], np.full(3, 2 / math.sqrt(3) / 2), rtol=1e-14)
    assert isinstance(dp_sgd(1, 1, 256, 0).init(None), DPSGDState)
    assert max_batch_for(10, 1) == 10


def test_per_example_value_and_grads_match_loop_and_per_example_grads():
    from twinjax.risk.dp_sgd import per_example_value_and_grads

    params, batch = _problem()
    mask = jnp.array([True, False, True, True, False, True, True])
    values, grads = per_example_value_and_grads(_loss, params, batch)
    for i in range(batch[0].shape[0]):
        ref_v, ref_g = jax.value_and_grad(_loss)(params, (batch[0][i], batch[1][i]))
        assert float(values[i]) == pytest.approx(float(ref_v), rel=1e-13)
        np.testing.assert_allclose(_flat(grads, i), _flat(ref_g), rtol=1e-12, atol=1e-12)
    m_values, m_grads = per_example_value_and_grads(_loss, params, batch, mask)
    np.testing.assert_array_equal(m_values, np.where(mask, values, 0.0))
    np.testing.assert_array_equal(_flat(m_grads), _flat(per_example_grads(_loss, params, batch, mask)))
    with pytest.raises(ValueError, match="mask"):
        per_example_value_and_grads(_loss, params, batch, jnp.ones(3, bool))
