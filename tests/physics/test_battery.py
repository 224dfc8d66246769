"""Thevenin battery: Coulomb counting, OCV shape, RC and thermal steady states, parameter sets, gradients, and the
PyBaMM reference solution of ``pybamm.equivalent_circuit.Thevenin`` with its ``ECM_Example`` parameters."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.interpolate

from physics import TheveninBattery, cell_5Ah, pybamm_ecm_example
from physics.battery import _CELL_5AH_OCV, _CELL_5AH_SOC

from ._solve import rk4, solve

REFERENCE = pathlib.Path(__file__).parent / "data" / "pybamm_thevenin_reference.csv"


def _profile(t):
    """A varying current (A) with both discharge and charge, and its integral ∫_0^t I dt (A s)."""
    current = 2.0 + 4.0 * jnp.sin(2 * jnp.pi * t / 300.0)
    charge = 2.0 * t + 4.0 * 300.0 / (2 * jnp.pi) * (1.0 - jnp.cos(2 * jnp.pi * t / 300.0))
    return current, charge


@pytest.mark.parametrize("make", [cell_5Ah, pybamm_ecm_example], ids=["cell_5Ah", "pybamm_ecm_example"])
def test_coulomb_counting(make):
    cell = make()
    scale = cell.capacity_Ah / 5.0  # same C-rate profile for both cells
    ts = jnp.linspace(0.0, 1200.0, 13)
    xs = solve(lambda t, x: cell.vector_field(t, x, scale * _profile(t)[0][None]), cell.initial_state(0.7), ts)
    expected = 0.7 - scale * _profile(ts)[1] / (3600.0 * cell.capacity_Ah)
    np.testing.assert_allclose(xs[:, 0], expected, rtol=0, atol=1e-10)


def test_ocv_monotone_smooth_and_pchip():
    cell = cell_5Ah()
    soc = jnp.linspace(0.0, 1.0, 2001)
    ocv = jax.jit(jax.vmap(lambda s: cell.open_circuit_voltage(s)))(soc)
    slope = jax.jit(jax.vmap(jax.grad(lambda s: cell.open_circuit_voltage(s))))(soc)
    assert jnp.all(jnp.diff(ocv) > 0) and jnp.all(slope > 0)
    assert float(ocv[0]) == pytest.approx(3.0) and float(ocv[-1]) == pytest.approx(4.2)
    # C¹: the slope moves by little between neighbouring points (no jumps at the knots).
    assert float(jnp.max(jnp.abs(jnp.diff(slope)))) < 0.05 * float(jnp.max(slope))
    # Independent reference: SciPy's monotone cubic (PCHIP) interpolant through the same table.
    reference = scipy.interpolate.PchipInterpolator(_CELL_5AH_SOC, _CELL_5AH_OCV)
    np.testing.assert_allclose(ocv, reference(np.asarray(soc)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(slope, reference.derivative()(np.asarray(soc)), rtol=1e-9, atol=1e-9)
    other = pybamm_ecm_example()
    pybamm_ocv = jax.jit(jax.vmap(lambda s: other.open_circuit_voltage(s)))(soc)
    assert jnp.all(jnp.diff(pybamm_ocv) > 0)


def test_lookup_matches_scipy_regular_grid_with_extrapolation():
    cell = pybamm_ecm_example()
    table = cell.r0_ohm
    reference = scipy.interpolate.RegularGridInterpolator(
        [np.asarray(g) for g in table.grids], np.asarray(table.values), bounds_error=False, fill_value=None
    )
    rng = np.random.default_rng(0)
    points = np.column_stack(
        [rng.uniform(240.0, 335.0, 50), rng.uniform(-450.0, 750.0, 50), rng.uniform(-0.05, 1.05, 50)]
    )
    ours = eqx.filter_jit(jax.vmap(lambda p: table(p[2], p[0], p[1])))(jnp.asarray(points))
    np.testing.assert_allclose(ours, reference(points), rtol=1e-12)


def test_rc_voltage_relaxes_to_i_r1_under_constant_current():
    cell = cell_5Ah(n_rc=2)
    current = 3.0
    tau = np.array([0.010 * 3000.0, 0.008 * 75000.0])
    ts = jnp.array([0.0, 30.0, 600.0, 20 * 600.0])
    xs = solve(lambda t, x: cell.vector_field(t, x, jnp.array([current])), cell.initial_state(0.9), ts)
    resistances = np.array([0.010, 0.008])
    expected = current * resistances * (1.0 - np.exp(-np.asarray(ts)[:, None] / tau))
    np.testing.assert_allclose(xs[:, 1:3], expected, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(xs[-1, 1:3], current * resistances, rtol=1e-8)


def _with_jig(cell):
    """The 5 Ah cell mounted on a jig (PyBaMM's cell–jig–air thermal network)."""
    return TheveninBattery(
        capacity_Ah=cell.capacity_Ah,
        ocv_V=cell.ocv_V,
        r0_ohm=cell.r0_ohm,
        r_rc_ohm=cell.r_rc_ohm,
        c_rc_F=cell.c_rc_F,
        cell_heat_capacity_J_K=cell.cell_heat_capacity_J_K,
        cell_heat_transfer_W_K=0.5,
        jig_heat_capacity_J_K=40.0,
        jig_heat_transfer_W_K=0.4,
    )


@pytest.mark.parametrize("jig", [False, True], ids=["cell", "cell+jig"])
def test_thermal_steady_state(jig):
    cell = _with_jig(cell_5Ah()) if jig else cell_5Ah()
    # A huge capacity keeps the state of charge in range over the long run; heat does not depend on it here.
    cell = eqx.tree_at(lambda c: c.capacity_Ah, cell, jnp.asarray(1e6))
    current, ambient = 6.0, 290.0
    u = jnp.array([current, ambient])
    xs = solve(lambda t, x: cell.vector_field(t, x, u), cell.initial_state(0.5, ambient), jnp.array([0.0, 2e4]))
    heat = current**2 * (0.015 + 0.010)
    if jig:
        expected = [ambient + heat * (1 / 0.5 + 1 / 0.4), ambient + heat / 0.4]
        np.testing.assert_allclose(xs[-1, 2:], expected, rtol=1e-9)
    else:
        np.testing.assert_allclose(xs[-1, 2], ambient + heat / 0.25, rtol=1e-9)
    q_irr, q_rev = cell.heat_sources_W(0.0, xs[-1], u)
    np.testing.assert_allclose(q_irr, heat, rtol=1e-9)
    assert float(q_rev) == 0.0


@pytest.mark.parametrize("make", [cell_5Ah, pybamm_ecm_example], ids=["cell_5Ah", "pybamm_ecm_example"])
def test_parameter_sets_give_voltages_within_limits(make):
    cell = make()
    soc = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9])
    currents = cell.capacity_Ah * jnp.array([-0.5, 0.0, 0.5, 1.0])  # C/2 charge … 1C discharge

    def voltage(s, i):
        return cell.terminal_voltage(0.0, cell.initial_state(s), jnp.array([i]))

    v = jax.jit(jax.vmap(lambda s: jax.vmap(lambda i: voltage(s, i))(currents)))(soc)
    assert v.shape == (5, 4) and jnp.all(jnp.isfinite(v))
    assert jnp.all(v > cell.voltage_min_V) and jnp.all(v < cell.voltage_max_V)
    assert jnp.all(jnp.diff(v, axis=1) < 0)  # more discharge current, lower voltage
    assert cell.observe(0.0, cell.initial_state(0.5), jnp.array([0.0])).shape == (2,)


def test_gradient_through_rollout_matches_analytic():
    cell = cell_5Ah()
    current = jnp.array([5.0])

    def voltage_after_60s(c):
        x = rk4(lambda t, x: c.vector_field(t, x, current), c.initial_state(0.6), 1.0, 60)
        return c.terminal_voltage(60.0, x, current)

    value, grads = eqx.filter_value_and_grad(voltage_after_60s)(cell)
    assert jnp.isfinite(value)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    # V(t) = U(soc(t)) − R0 I − I R1 (1 − e^{−t/τ}) with τ = R1 C1, C1 held fixed.
    tau = 0.010 * 3000.0
    d_r1 = -5.0 * (1 - np.exp(-60 / tau)) + 5.0 * 60 / tau * np.exp(-60 / tau)
    np.testing.assert_allclose(grads.r_rc_ohm[0], d_r1, rtol=1e-6)  # RK4 error O((dt/τ)⁴)
    np.testing.assert_allclose(grads.r0_ohm, -5.0, rtol=1e-12)
    assert float(grads.capacity_Ah) > 0  # a larger cell discharges less in 60 s


def test_gradient_of_lookup_parameters_matches_finite_differences():
    cell = pybamm_ecm_example()
    x = jnp.array([0.4, 0.02, 305.0, 300.0])
    u = jnp.array([150.0])

    def output(c):
        return c.terminal_voltage(0.0, x, u) + jnp.sum(c.vector_field(0.0, x, u) * jnp.array([1.0, 10.0, 100.0, 1.0]))

    output = eqx.filter_jit(output)
    grads = eqx.filter_jit(eqx.filter_grad(output))(cell)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    for get in (lambda c: c.r0_ohm.values, lambda c: c.r_rc_ohm[0].values, lambda c: c.c_rc_F[0].values):
        direction = jax.random.normal(jax.random.key(1), get(cell).shape)
        eps = 1e-6 * float(jnp.max(jnp.abs(get(cell))))
        plus = output(eqx.tree_at(get, cell, get(cell) + eps * direction))
        minus = output(eqx.tree_at(get, cell, get(cell) - eps * direction))
        np.testing.assert_allclose(jnp.sum(get(grads) * direction), (plus - minus) / (2 * eps), rtol=1e-6)


def test_matches_pybamm_thevenin_reference():
    data = np.loadtxt(REFERENCE, delimiter=",")
    ts, current = data[:, 0], data[:, 1]
    cell = pybamm_ecm_example()

    def drive(t):
        return jnp.array([100.0 + 80.0 * jnp.sin(2 * jnp.pi * t / 600.0)])

    np.testing.assert_allclose(jax.vmap(drive)(jnp.asarray(ts))[:, 0], current, rtol=1e-12)
    xs = solve(lambda t, x: cell.vector_field(t, x, drive(t)), cell.initial_state(0.5), jnp.asarray(ts))
    voltage = jax.vmap(lambda t, x: cell.terminal_voltage(t, x, drive(t)))(jnp.asarray(ts), xs)
    np.testing.assert_allclose(xs[:, 0], data[:, 2], rtol=0, atol=1e-8)  # SoC
    np.testing.assert_allclose(voltage, data[:, 3], rtol=0, atol=1e-6)  # V
    np.testing.assert_allclose(xs[:, 2], data[:, 4], rtol=0, atol=1e-4)  # T_cell, K
    np.testing.assert_allclose(xs[:, 3], data[:, 5], rtol=0, atol=1e-4)  # T_jig, K


def test_state_layout_and_bad_input():
    assert cell_5Ah().state_names == ("soc", "v_rc1_V", "T_cell_K")
    assert pybamm_ecm_example().state_names == ("soc", "v_rc1_V", "T_cell_K", "T_jig_K")
    assert cell_5Ah(n_rc=2).state_dim == 4
    x32 = cell_5Ah().initial_state(0.5).astype(jnp.float32)
    assert cell_5Ah().vector_field(0.0, x32, jnp.array([1.0], jnp.float32)).dtype == jnp.float32
    with pytest.raises(ValueError, match="current_A"):
        cell_5Ah().vector_field(0.0, cell_5Ah().initial_state(), jnp.zeros(3))
    with pytest.raises(ValueError, match="one entry per RC pair"):
        TheveninBattery(5.0, cell_5Ah().ocv_V, 0.01, (0.01,), (), 70.0, 0.25)
    with pytest.raises(ValueError, match="cell_5Ah"):
        cell_5Ah(n_rc=3)


def test_battery_twin_sensor_follows_parameter_edits():
    """The voltage sensor depends on R0: editing R0 on the twin's dynamics must change the measured voltage."""
    import equinox as eqx

    from physics import battery_twin

    twin = battery_twin()
    x = twin.initial.mean
    u = jnp.array([5.0])
    v0 = twin.observation.mean(0.0, x, u)[0]
    edited = eqx.tree_at(lambda m: m.dynamics.r0_ohm, twin, twin.dynamics.r0_ohm + 0.01)
    np.testing.assert_allclose(edited.observation.mean(0.0, x, u)[0], v0 - 0.01 * 5.0, rtol=1e-12)
