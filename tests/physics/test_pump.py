"""DC motor–pump: steady state solves the torque balance (SciPy's brentq as the reference)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from physics import DCMotorPump

from ._solve import solve


def _brentq_speed(pump, voltage):
    k, r = float(pump.motor_constant_Nm_A), float(pump.resistance_ohm)
    load, b = float(pump.load_coeff), float(pump.friction_coeff)
    tc, wc = float(pump.coulomb_friction_Nm), float(pump.coulomb_speed_rad_s)

    def residual(w):
        return k * (voltage - k * w) / r - (load * w * abs(w) + b * w + tc * np.tanh(w / wc))

    return scipy.optimize.brentq(residual, 0.0, voltage / k, xtol=1e-14, rtol=1e-15)


@pytest.mark.parametrize("coulomb_Nm", [0.0, 0.02])
def test_steady_state_solves_torque_balance(coulomb_Nm):
    pump = DCMotorPump(coulomb_friction_Nm=coulomb_Nm, load_coeff=3e-6)
    voltage = 12.0
    w_ref = _brentq_speed(pump, voltage)
    i_ref = (voltage - 0.05 * w_ref) / 0.5
    np.testing.assert_allclose(pump.steady_state(jnp.array([voltage])), [w_ref, i_ref], rtol=1e-12)
    xs = solve(lambda t, x: pump.vector_field(t, x, jnp.array([voltage])), jnp.zeros(2), jnp.array([0.0, 3.0]))
    np.testing.assert_allclose(xs[-1], [w_ref, i_ref], rtol=1e-8)


def test_outputs_and_factor_sensitivities():
    pump = DCMotorPump()
    x = pump.steady_state(jnp.array([12.0]))
    y = pump.outputs(0.0, x, jnp.array([12.0]))
    np.testing.assert_allclose(y, [x[0], x[1], 1e-6 * x[0]], rtol=1e-14)
    # More pump load or more friction: slower and more current (the two interpretable factors).
    grads = eqx.filter_jacrev(lambda p: p.steady_state(jnp.array([12.0])))(pump)
    assert grads.load_coeff[0] < 0 and grads.load_coeff[1] > 0
    assert grads.friction_coeff[0] < 0 and grads.friction_coeff[1] > 0
    # Implicit-function check: dω/db = −ω / (∂residual/∂ω).
    w = float(x[0])
    dres_dw = -(0.05**2) / 0.5 - 2 * 2e-6 * w - 1e-4
    np.testing.assert_allclose(grads.friction_coeff[0], w / dres_dw, rtol=1e-8)
    with pytest.raises(ValueError, match="voltage_V"):
        pump.vector_field(0.0, x, jnp.zeros(0))
    assert jax.jit(lambda v: pump.steady_state(v))(jnp.array([6.0]))[0] < x[0]
