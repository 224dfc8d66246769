"""Pendulum: small-angle limit against the analytic damped oscillator, energy conservation, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from physics import Pendulum

from ._solve import solve


def _damped_oscillator(t, theta0, omega0_sq, c):
    """Analytic θ(t) of θ'' + c θ' + ω0² θ = 0, θ(0) = θ0, θ'(0) = 0 (under-damped)."""
    wd = np.sqrt(omega0_sq - c**2 / 4)
    return theta0 * np.exp(-c * t / 2) * (np.cos(wd * t) + c / (2 * wd) * np.sin(wd * t))


def test_small_angle_matches_damped_oscillator():
    pendulum = Pendulum(length_m=0.8, damping_per_s=0.3)
    theta0 = 1e-3
    ts = jnp.linspace(0.0, 10.0, 201)
    xs = solve(lambda t, x: pendulum.vector_field(t, x, jnp.zeros(0)), jnp.array([theta0, 0.0]), ts)
    expected = _damped_oscillator(np.asarray(ts), theta0, 9.81 / 0.8, 0.3)
    # The neglected sin θ − θ term is O(θ0³), i.e. a relative error O(θ0²) = 1e-6.
    np.testing.assert_allclose(xs[:, 0], expected, rtol=0, atol=1e-5 * theta0)
    a, _ = pendulum.linearised_matrices()
    via_expm = np.stack([scipy.linalg.expm(np.asarray(a) * t) @ np.array([theta0, 0.0]) for t in np.asarray(ts)])
    np.testing.assert_allclose(via_expm[:, 0], expected, rtol=0, atol=1e-12)


def test_undamped_energy_is_conserved_over_long_rollout():
    pendulum = Pendulum(length_m=1.3, mass_kg=0.7, damping_per_s=0.0)
    ts = jnp.linspace(0.0, 200.0, 2001)  # ~ 90 periods at a large amplitude
    x0 = jnp.array([2.5, 0.0])
    xs = solve(lambda t, x: pendulum.vector_field(t, x, jnp.zeros(0)), x0, ts, rtol=1e-12, atol=1e-12)
    energy = jax.vmap(pendulum.energy)(xs)
    e0 = pendulum.energy(x0)
    assert float(e0) == pytest.approx(0.7 * 9.81 * 1.3 * (1 - np.cos(2.5)), rel=1e-14)
    assert float(jnp.max(jnp.abs(energy - e0)) / e0) < 1e-8


def test_torque_input_and_energy_balance():
    pendulum = Pendulum(damping_per_s=0.2)
    x = jnp.array([0.4, -1.1])
    tau = 0.3
    f = pendulum.vector_field(0.0, x, jnp.array([tau]))
    # dE/dt = ∇E · f = −c m L² ω² + τ ω
    de_dt = jnp.dot(jax.grad(pendulum.energy)(x), f)
    np.testing.assert_allclose(de_dt, -0.2 * x[1] ** 2 + tau * x[1], rtol=1e-12)
    np.testing.assert_allclose(pendulum.vector_field(0.0, x, jnp.zeros(0)), pendulum.vector_field(0.0, x, jnp.zeros(1)))


def test_gradient_wrt_parameters_is_finite_and_correct():
    x = jnp.array([0.4, -1.1])
    grads = eqx.filter_grad(lambda p: p.vector_field(0.0, x, jnp.array([0.5]))[1])(Pendulum())
    np.testing.assert_allclose(grads.length_m, 9.81 / 1.0**2 * np.sin(0.4) - 2 * 0.5 / 1.0**3, rtol=1e-12)
    np.testing.assert_allclose(grads.damping_per_s, 1.1, rtol=1e-12)


def test_bad_control_shape_is_rejected():
    with pytest.raises(ValueError, match="torque_Nm"):
        Pendulum().vector_field(0.0, jnp.zeros(2), jnp.zeros(2))
