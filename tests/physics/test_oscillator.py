"""Mass–spring–damper: exact discretisation (matrix exponential) against a diffrax solve, energy balance."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from physics import MassSpringDamper

from ._solve import solve


def test_matrices_match_vector_field():
    osc = MassSpringDamper(mass_kg=2.0, damping_Ns_m=0.5, stiffness_N_m=3.0)
    a, b = osc.matrices()
    x, u = jnp.array([0.3, -0.7]), jnp.array([1.2])
    np.testing.assert_allclose(a @ x + b @ u, osc.vector_field(0.0, x, u), rtol=1e-14)


def test_exact_discretisation_matches_expm_and_diffrax():
    osc = MassSpringDamper(mass_kg=2.0, damping_Ns_m=0.5, stiffness_N_m=3.0)
    dt, force = 0.25, 0.8
    a, b = (np.asarray(m) for m in osc.matrices())
    block = np.zeros((3, 3))
    block[:2, :2], block[:2, 2:] = a, b
    e = scipy.linalg.expm(block * dt)
    ad, bd = osc.discretise(dt)
    np.testing.assert_allclose(ad, e[:2, :2], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bd, e[:2, 2:], rtol=1e-12, atol=1e-14)

    x0 = jnp.array([1.0, 0.0])
    n = 40
    ts = jnp.arange(n + 1) * dt
    xs = solve(lambda t, x: osc.vector_field(t, x, jnp.array([force])), x0, ts, rtol=1e-12, atol=1e-12)

    def step(x, _):
        x = ad @ x + bd[:, 0] * force
        return x, x

    _, exact = jax.lax.scan(step, x0, None, length=n)
    np.testing.assert_allclose(xs[1:], exact, rtol=0, atol=1e-9)


def test_energy_balance():
    osc = MassSpringDamper(damping_Ns_m=0.7)
    x, force = jnp.array([0.4, -1.3]), 0.6
    f = osc.vector_field(0.0, x, jnp.array([force]))
    de_dt = jnp.dot(jax.grad(osc.energy)(x), f)
    np.testing.assert_allclose(de_dt, -0.7 * x[1] ** 2 + force * x[1], rtol=1e-12)
