"""Lotka–Volterra: the conserved quantity along a tight-tolerance solve, the equilibrium, the twin's sensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physics import LotkaVolterra, lotka_volterra_twin

from ._solve import solve


def test_invariant_is_conserved_and_the_equilibrium_is_fixed():
    lv = LotkaVolterra(alpha=1.1, beta=0.4, gamma=0.4, delta=0.1)
    ts = jnp.linspace(0.0, 60.0, 601)  # several predator–prey cycles
    x0 = jnp.array([10.0, 5.0])
    xs = solve(lambda t, x: lv.vector_field(t, x, jnp.zeros(0)), x0, ts, rtol=1e-12, atol=1e-12)
    v = jax.vmap(lv.invariant)(xs)
    assert float(jnp.max(xs[:, 0]) - jnp.min(xs[:, 0])) > 10.0  # the orbit really cycles
    np.testing.assert_allclose(v, lv.invariant(x0), rtol=1e-9)
    np.testing.assert_allclose(lv.vector_field(0.0, lv.equilibrium(), jnp.zeros(0)), 0.0, atol=1e-14)


def test_twin_sensors():
    x = jnp.array([10.0, 5.0])
    log_twin = lotka_volterra_twin(noise_sd=0.2)
    np.testing.assert_allclose(log_twin.observation.mean(0.0, x, jnp.zeros(0)), np.log([10.0, 5.0]), rtol=1e-14)
    np.testing.assert_allclose(log_twin.observation.cov, 0.04 * np.eye(2))
    lin_twin = lotka_volterra_twin(sensor="gaussian", noise_sd=0.5)
    np.testing.assert_allclose(lin_twin.observation.mean(0.0, x, jnp.zeros(0)), x)
    with pytest.raises(ValueError, match="`sensor`"):
        lotka_volterra_twin(sensor="poisson")
    with pytest.raises(ValueError, match="`noise_sd`"):
        lotka_volterra_twin(noise_sd=0.0)
