"""Wiener degradation: moments after k steps within Monte-Carlo error, first-passage times."""

import jax
import jax.numpy as jnp
import numpy as np

from physics import Degradation

K_SE = 4.0


def test_moments_after_k_steps():
    model = Degradation(rate=0.03, delta=0.5, noise_sd=0.2)
    n_paths, n_steps = 20000, 40
    paths = jax.jit(lambda k: model.simulate_paths(k, 1.0, n_steps, n_paths))(jax.random.key(0))
    assert paths.shape == (n_paths, n_steps + 1)
    np.testing.assert_array_equal(paths[:, 0], 1.0)
    k = np.array([1, 10, 40])
    mean, var = 0.03 * 0.5 * k, 0.2**2 * 0.5 * k
    increments = paths[:, k] - 1.0
    assert np.all(np.abs(increments.mean(axis=0) - mean) < K_SE * np.sqrt(var / n_paths))
    assert np.all(np.abs(increments.var(axis=0) - var) < K_SE * var * np.sqrt(2 / (n_paths - 1)))
    np.testing.assert_allclose(model.process_noise_var(), 0.2**2 * 0.5)
    np.testing.assert_allclose(model.transition(0.0, jnp.array([1.0]), jnp.zeros(0)), [1.0 + 0.03 * 0.5])


def test_first_passage_time_without_noise_is_exact():
    model = Degradation(rate=0.1, delta=2.0, noise_sd=0.0, failure_threshold=1.0)
    paths = model.simulate_paths(jax.random.key(0), 0.05, 10, 3)
    # Level 0.05 + 0.2 k first reaches 1.0 at k = 5 (0.05 + 1.0 ≥ 1): time 5 Δ = 10.
    np.testing.assert_allclose(model.first_passage_index(paths), 5.0)
    np.testing.assert_allclose(model.first_passage_time(paths), 10.0)
    short = model.simulate_paths(jax.random.key(0), 0.05, 3, 2)
    assert np.all(np.isinf(model.first_passage_time(short)))  # no failure within the horizon
    np.testing.assert_allclose(model.mean_first_passage_time(0.05), 9.5)


def test_first_passage_satisfies_walds_identity():
    model = Degradation(rate=0.01, delta=1.0, noise_sd=0.05, failure_threshold=1.0)
    n_paths = 4000
    paths = jax.jit(lambda k: model.simulate_paths(k, 0.0, 1500, n_paths))(jax.random.key(1))
    index = model.first_passage_index(paths)
    assert np.all(np.isfinite(index))
    level = jnp.take_along_axis(paths, index.astype(int)[:, None], axis=1)[:, 0]
    assert np.all(level >= 1.0)
    # Optional stopping: E[x_N − x_0 − α Δ N] = 0 with variance σ² Δ E[N].
    martingale = level - model.rate * model.delta * index
    se = np.sqrt(model.process_noise_var() * index.mean() / n_paths)
    assert abs(float(martingale.mean())) < K_SE * se
    # The grid only sees the process after it crosses, so failure times are at least the continuous-time mean.
    assert float(model.first_passage_time(paths).mean()) > float(model.mean_first_passage_time(0.0)) - K_SE * float(
        jnp.std(index) / np.sqrt(n_paths)
    )
