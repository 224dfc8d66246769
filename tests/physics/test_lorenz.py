"""Lorenz-63/96: vector fields against plain NumPy implementations, fixed points, the SDE variant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physics import Lorenz63, Lorenz63SDE, Lorenz96


def _lorenz96_loop(x, forcing):
    n = len(x)
    return np.array([(x[(i + 1) % n] - x[i - 2]) * x[i - 1] - x[i] + forcing for i in range(n)])


@pytest.mark.parametrize("n", [5, 40])
def test_lorenz96_matches_numpy_loop(n):
    model = Lorenz96(forcing=8.0, n=n)
    xs = jax.random.normal(jax.random.key(0), (3, n)) * 3.0 + 8.0
    for x in xs:
        np.testing.assert_allclose(model.vector_field(0.0, x, jnp.zeros(0)), _lorenz96_loop(np.asarray(x), 8.0))
    x0 = model.initial_state()
    assert x0.shape == (n,) and float(x0[0]) == pytest.approx(8.01)
    np.testing.assert_allclose(model.vector_field(0.0, jnp.full(n, 8.0), jnp.zeros(0)), 0.0, atol=1e-14)


def test_lorenz96_rejects_tiny_rings():
    with pytest.raises(ValueError, match="n >= 4"):
        Lorenz96(n=3)


@pytest.mark.parametrize("rho", [28.0, 14.0])
def test_lorenz63_fixed_points_are_zeros(rho):
    model = Lorenz63(rho=rho)
    points = model.fixed_points()
    field = jax.vmap(lambda x: model.vector_field(0.0, x, jnp.zeros(0)))(points)
    np.testing.assert_allclose(field, 0.0, atol=1e-12)
    c = np.sqrt(8.0 / 3.0 * (rho - 1))
    np.testing.assert_allclose(points[1], [c, c, rho - 1])


def test_lorenz63_matches_numpy_and_sde_variant():
    x = np.array([1.0, -2.0, 20.0])
    s, r, b = 10.0, 28.0, 8.0 / 3.0
    expected = [s * (x[1] - x[0]), x[0] * (r - x[2]) - x[1], x[0] * x[1] - b * x[2]]
    np.testing.assert_allclose(Lorenz63().vector_field(0.0, jnp.asarray(x), jnp.zeros(0)), expected)
    sde = Lorenz63SDE(noise_sd=0.3)
    np.testing.assert_allclose(sde.vector_field(0.0, jnp.asarray(x), jnp.zeros(0)), expected)
    np.testing.assert_allclose(sde.diffusion(0.0, jnp.asarray(x), jnp.zeros(0)), 0.3 * np.eye(3))
