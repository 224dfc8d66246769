"""2R2C building: steady state of the resistor network, synthetic weather and occupancy generators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physics import Building2R2C, stack_inputs, synthetic_occupancy, synthetic_weather

from ._solve import solve


@pytest.mark.parametrize("with_solar", [False, True])
def test_steady_state_equals_resistor_network(with_solar):
    house = Building2R2C(heating_efficiency=0.9, occupancy_gain_factor=0.8)
    u = jnp.array([2500.0, -3.0, 400.0] + ([150.0] if with_solar else []))
    gain = 0.9 * 2500.0 + 0.8 * 400.0 + (2.0 * 150.0 if with_solar else 0.0)
    # Independent reference: the heat flow through series resistors R_in_wall + R_wall_out from a source `gain`.
    t_wall = -3.0 + gain * 4.0e-3
    t_in = t_wall + gain * 1.0e-3
    np.testing.assert_allclose(house.steady_state(u), [t_in, t_wall], rtol=1e-12)
    # ... and the long-time limit of the dynamics (envelope time constant ≈ 42 h; run 40 of them).
    xs = solve(lambda t, x: house.vector_field(t, x, u), jnp.array([18.0, 10.0]), jnp.array([0.0, 6e6]))
    np.testing.assert_allclose(xs[-1], [t_in, t_wall], rtol=1e-8)
    np.testing.assert_allclose(house.vector_field(0.0, house.steady_state(u), u), 0.0, atol=1e-15)


def test_weather_reproducible_and_shaped():
    ts = jnp.arange(0.0, 3 * 86400.0, 1800.0)
    a = synthetic_weather(jax.random.key(0), ts)
    b = synthetic_weather(jax.random.key(0), ts)
    c = synthetic_weather(jax.random.key(1), ts)
    assert a.shape == ts.shape and a.dtype == ts.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    quiet = synthetic_weather(jax.random.key(0), ts, noise_sd_C=0.0, mean_C=10.0, amplitude_C=5.0, peak_hour=15.0)
    hours = (np.asarray(ts) % 86400) / 3600
    np.testing.assert_allclose(quiet, 10.0 + 5.0 * np.cos(2 * np.pi * (hours - 15.0) / 24), atol=1e-12)
    assert float(quiet[30]) == pytest.approx(15.0)  # 15:00 on day one is the daily maximum


def test_weather_noise_has_stationary_variance_and_correlation():
    ts = jnp.array([0.0, 3600.0, 4 * 86400.0])
    tau, sd, n = 6 * 3600.0, 1.5, 20000
    keys = jax.random.split(jax.random.key(2), n)
    draws = jax.jit(jax.vmap(lambda k: synthetic_weather(k, ts, amplitude_C=0.0, mean_C=0.0, noise_timescale_s=tau)))(
        keys
    )
    k_se = 4.0
    # Variance σ² at each time, standard error σ² √(2/(n−1)).
    np.testing.assert_allclose(jnp.var(draws, axis=0), sd**2, atol=k_se * sd**2 * np.sqrt(2 / (n - 1)))
    # Lag-1 h correlation e^{−Δ/τ}; standard error ≈ (1 − ρ²)/√n.
    rho = np.exp(-3600.0 / tau)
    corr = np.corrcoef(np.asarray(draws[:, 0]), np.asarray(draws[:, 1]))[0, 1]
    assert abs(corr - rho) < k_se * (1 - rho**2) / np.sqrt(n)


def test_occupancy_schedule():
    ts = jnp.arange(0.0, 7 * 86400.0, 3600.0)  # Monday 00:00 to Sunday 23:00, hourly
    gains = synthetic_occupancy(jax.random.key(3), ts, peak_W=1000.0, base_W=50.0)
    np.testing.assert_array_equal(gains, synthetic_occupancy(jax.random.key(3), ts, peak_W=1000.0, base_W=50.0))
    assert not np.allclose(gains, synthetic_occupancy(jax.random.key(4), ts, peak_W=1000.0, base_W=50.0))
    g = np.asarray(gains).reshape(7, 24)
    assert np.all(g[5:] == 50.0)  # weekend
    assert np.all(g[:5, :8] == 50.0) and np.all(g[:5, 18:] == 50.0)  # nights
    assert np.all(g[:5, 8:18] >= 50.0) and 700.0 < g[:5, 8:18].mean() < 1400.0
    sunday = synthetic_occupancy(jax.random.key(3), ts, first_weekday=6)
    assert np.all(np.asarray(sunday).reshape(7, 24)[0] == 100.0)


def test_stack_inputs_shapes():
    ts = jnp.linspace(0.0, 86400.0, 25)
    us = stack_inputs(1000.0, synthetic_weather(jax.random.key(0), ts), jnp.zeros(25))
    assert us.shape == (25, 3)
    np.testing.assert_array_equal(us[:, 0], 1000.0)
    assert stack_inputs(0.0, ts, ts, solar_W_m2=ts).shape == (25, 4)
    with pytest.raises(ValueError, match="heating_W"):
        Building2R2C().vector_field(0.0, jnp.zeros(2), jnp.zeros(2))
