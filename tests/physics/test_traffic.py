"""Cell-transmission traffic model: conservation, fundamental diagram, free flow, LWR shock speed, errors, gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physics.traffic import CellTransmissionModel, incident_capacity_factors


def _random_scenario(key, ctm, n_steps):
    """Random demands (some above capacity) and a random incident window, as a control sequence."""
    k1, k2, k3 = jax.random.split(key, 3)
    demand = jax.random.uniform(k1, (n_steps, 1), minval=0.0, maxval=7000.0)
    ramps = jax.random.uniform(k2, (n_steps, ctm.n_on), minval=0.0, maxval=1500.0)
    ts = np.arange(n_steps) * float(ctm.dt_h)
    start, length = np.asarray(jax.random.uniform(k3, (2,), minval=0.1, maxval=0.5))
    factors = incident_capacity_factors(ts, ctm.n_cells, 17, start, start + length, 0.3)
    return jnp.concatenate([demand, ramps, factors], axis=1)


def test_exact_vehicle_conservation(key):
    ctm = CellTransmissionModel(
        25,
        dt_h=0.004,
        on_ramp_cells=(0, 6, 14),
        off_ramp_cells=(9, 20, 24),
        off_ramp_split=(0.2, 0.1, 0.3),
        ramp_priority=0.3,
        downstream_supply_veh_h=5000.0,
    )
    us = _random_scenario(key, ctm, 400)
    x0 = ctm.initial_state(jax.random.uniform(jax.random.key(7), (25,), maxval=300.0), 40.0, jnp.array([5.0, 0, 2]))
    xs = jax.jit(lambda x, u: ctm.simulate(x, u))(x0, us)
    residual = ctm.conservation_residual(xs, x0)
    assert float(jnp.max(jnp.abs(residual))) < 1e-9
    counts = ctm.cumulative_counts(xs[-1])
    assert float(counts[2]) > 0 and float(counts[1]) > 0 and float(jnp.max(ctm.ramp_queues(xs))) > 0
    # densities stay in [0, ρ_jam] and queues non-negative (up to rounding)
    rho = ctm.density(xs)
    assert float(jnp.min(rho)) >= -1e-9 and float(jnp.max(rho)) <= 300.0 + 1e-9
    assert float(jnp.min(ctm.entrance_queue(xs))) >= -1e-9 and float(jnp.min(ctm.ramp_queues(xs))) >= -1e-9
    # no flow exceeds the (incident-reduced) capacity of the cells it leaves or enters
    flows = jax.jit(jax.vmap(ctm.flows))(xs[:-1], us)
    capacity = ctm.capacity_veh_h * us[:, ctm.control_size :]
    on = jnp.zeros((400, 25)).at[:, jnp.array(ctm.on_ramp_cells)].set(flows.on_ramp)
    assert bool(jnp.all(flows.cell_outflow <= capacity + 1e-9))
    assert bool(jnp.all(flows.mainline[:, :-1] + on <= capacity + 1e-9))
    assert bool(jnp.all(flows.mainline[:, -1] <= 5000.0 + 1e-9))


def test_fundamental_diagram_hand_values():
    ctm = CellTransmissionModel(4, capacity_veh_h=jnp.array([6000.0, 6000.0, 3000.0, 6000.0]))
    rho = jnp.array([30.0, 60.0, 100.0, 280.0])
    # v_f = 100, w = 25, ρ_jam = 300: S = min(100 ρ, Q), R = min(Q, 25 (300 − ρ))
    np.testing.assert_allclose(ctm.sending(rho), [3000.0, 6000.0, 3000.0, 6000.0], rtol=1e-15)
    np.testing.assert_allclose(ctm.receiving(rho), [6000.0, 6000.0, 3000.0, 500.0], rtol=1e-15)
    # the exact triangle: v_f ρ_c = w (ρ_jam − ρ_c) = Q at ρ_c = 60
    assert float(ctm.sending(jnp.full(4, 60.0))[0]) == float(ctm.receiving(jnp.full(4, 60.0))[0]) == 6000.0


@pytest.mark.parametrize("demand", [1500.0, 4500.0, 5900.0])
def test_free_flow_steady_state(demand):
    ctm = CellTransmissionModel(30, dt_h=0.004)  # Courant number 0.8: relaxes to the steady state
    us = jnp.full((600, 1), demand)
    xs = ctm.simulate(ctm.initial_state(), us)
    np.testing.assert_allclose(ctm.density(xs[-1]), demand / 100.0, rtol=1e-10)
    assert abs(float(ctm.entrance_queue(xs[-1]))) < 1e-9
    np.testing.assert_allclose(ctm.flows(xs[-1], us[-1]).mainline, demand, rtol=1e-10)


def _queue_tail_km(rho, threshold):
    """Position (km) where the density first rises through ``threshold``, interpolated between cell centres."""
    i = int(np.argmax(rho > threshold))
    lo = (i - 0.5) * 0.5
    return lo + (threshold - rho[i - 1]) / (rho[i] - rho[i - 1]) * 0.5


def test_incident_shock_speed_and_recovery():
    ctm = CellTransmissionModel(40)  # Δx = 0.5 km, Δt = 18 s, v_f = 100, w = 25, ρ_jam = 300, Q = 6000
    n_steps, demand, factor, cell = 500, 4500.0, 0.5, 30
    ts = np.arange(n_steps) * float(ctm.dt_h)
    factors = incident_capacity_factors(ts, 40, cell, 0.0, 1.0, factor)
    us = jnp.concatenate([jnp.full((n_steps, 1), demand), factors], axis=1)
    x0 = ctm.initial_state(demand / 100.0)
    xs = np.asarray(ctm.simulate(x0, us))
    rho = xs[:, :40]
    # LWR: upstream (ρ, q) = (45, 4500); queue at the reduced capacity q = 3000 on the congested branch,
    # ρ = ρ_jam − q/w = 180; Rankine–Hugoniot s = (3000 − 4500)/(180 − 45) = −11.11 km/h
    rho_up, q_down = demand / 100.0, factor * 6000.0
    rho_down = 300.0 - q_down / 25.0
    s_theory = (q_down - demand) / (rho_down - rho_up)
    steps = np.arange(40, 200)
    tails = [_queue_tail_km(rho[k], 0.5 * (rho_up + rho_down)) for k in steps]
    s_measured = np.polyfit(steps * float(ctm.dt_h), tails, 1)[0]
    assert abs(s_measured - s_theory) < 0.5  # < 1 cell (0.5 km) per hour
    np.testing.assert_allclose(rho[150, 20:30], rho_down, rtol=1e-6)  # the queue is at the congested state
    # downstream of the bottleneck the flow is the reduced capacity, in free flow (ρ = 3000/100)
    flows = ctm.flows(jnp.asarray(xs[150]), us[150])
    np.testing.assert_allclose(flows.mainline[cell + 1 :], q_down, rtol=1e-12)
    np.testing.assert_allclose(rho[150, cell + 1 :], q_down / 100.0, rtol=1e-12)
    # one hour after the incident clears (at 200 steps) the queue has gone
    np.testing.assert_allclose(rho[-1], rho_up, rtol=1e-9)
    assert abs(xs[-1, 40]) < 1e-9
    np.testing.assert_allclose(ctm.conservation_residual(jnp.asarray(xs), x0), 0.0, atol=1e-9)


def test_with_incident_is_a_permanent_bottleneck():
    ctm = CellTransmissionModel(20)
    hit = ctm.with_incident(10, 0.5)
    np.testing.assert_allclose(hit.capacity_veh_h[10], 3000.0)
    np.testing.assert_allclose(hit.capacity_veh_h[:10], 6000.0)
    xs = hit.simulate(hit.initial_state(), jnp.full((300, 1), 5000.0))
    np.testing.assert_allclose(hit.flows(xs[-1], jnp.array([5000.0])).mainline[-1], 3000.0, rtol=1e-12)


def test_ramps_merge_and_diverge():
    # mainline priority: a full mainline leaves the ramp only the remaining supply; FIFO diverge splits β
    ctm = CellTransmissionModel(10, on_ramp_cells=(4,), off_ramp_cells=(7,), off_ramp_split=(0.25,))
    x = ctm.initial_state(50.0)
    f = ctm.flows(x, jnp.array([5000.0, 2000.0]))
    np.testing.assert_allclose(f.on_ramp, [6000.0 - 5000.0])
    np.testing.assert_allclose(f.off_ramp, [0.25 * 5000.0])
    np.testing.assert_allclose(f.mainline[8], 0.75 * 5000.0)
    # priority merge with p = 0.5 and both demands above half the supply: each gets half
    merged = eqx.tree_at(lambda m: m.ramp_priority, ctm, jnp.asarray(0.5))
    f = merged.flows(merged.initial_state(60.0), jnp.array([6000.0, 4000.0]))
    np.testing.assert_allclose([f.mainline[4], f.on_ramp[0]], [3000.0, 3000.0])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="dt_h"):
        CellTransmissionModel(10, cell_length_km=0.5, dt_h=0.006)  # v_f Δt = 0.6 km > Δx
    with pytest.raises(ValueError, match="dt_h"):
        CellTransmissionModel(10, free_flow_speed_kmh=20.0, wave_speed_kmh=150.0, dt_h=0.005)  # w Δt > Δx
    with pytest.raises(ValueError, match="capacity_veh_h"):
        CellTransmissionModel(10, capacity_veh_h=jnp.ones(9))
    with pytest.raises(ValueError, match="off_ramp_split"):
        CellTransmissionModel(10, off_ramp_cells=(3,), off_ramp_split=(0.1, 0.2))
    with pytest.raises(ValueError, match="off_ramp_split"):
        CellTransmissionModel(10, off_ramp_cells=(3,), off_ramp_split=(1.0,))
    with pytest.raises(ValueError, match="on_ramp_cells"):
        CellTransmissionModel(10, on_ramp_cells=(10,))
    with pytest.raises(ValueError, match="n_cells"):
        CellTransmissionModel(0)
    ctm = CellTransmissionModel(10, on_ramp_cells=(2,))
    with pytest.raises(ValueError, match="control"):
        ctm.transition(0.0, ctm.initial_state(), jnp.zeros(3))
    with pytest.raises(ValueError, match="state"):
        ctm.transition(0.0, jnp.zeros(5), jnp.zeros(2))
    with pytest.raises(ValueError, match="factor"):
        ctm.with_incident(3, 1.5)


def test_jit_grad_of_travel_metrics_matches_finite_differences():
    ctm = CellTransmissionModel(12, dt_h=0.004, on_ramp_cells=(3,), off_ramp_cells=(8,), off_ramp_split=(0.2,))
    hours = jnp.arange(120) * 0.004

    def metrics(peak):
        demand = 2000.0 + peak * jnp.sin(jnp.pi * hours / 0.48) ** 2  # free flow throughout (< 6000 veh/h)
        us = jnp.stack([demand, jnp.full_like(demand, 500.0)], axis=1)
        out = ctm.travel_metrics(ctm.simulate(ctm.initial_state(10.0), us), us)
        return jnp.stack([out["vehicle_hours"], out["delay"]])

    f = jax.jit(metrics)
    p, h = 1500.0, 1e-2
    grad = jax.jit(jax.jacfwd(metrics))(p)
    fd = (f(p + h) - f(p - h)) / (2 * h)
    assert float(grad[0]) > 0
    np.testing.assert_allclose(grad[0], fd[0], rtol=1e-5)
    # in free flow the delay is zero identically, and so is its gradient
    assert abs(float(f(p)[1])) < 1e-9 and abs(float(grad[1])) < 1e-9 and abs(float(fd[1])) < 1e-6


def test_grad_of_delay_with_a_queue_matches_finite_differences():
    # demand above the entrance capacity: a growing point queue, whose delay is smooth in the demand
    ctm = CellTransmissionModel(10, dt_h=0.004).with_incident(6, 0.6)
    n = 100

    def delay(d):
        us = jnp.full((n, 1), d)
        return ctm.travel_metrics(ctm.simulate(ctm.initial_state(20.0), us), us)["delay"]

    d, h = 4321.0, 1e-2
    grad = jax.jit(jax.jacfwd(delay))(d)
    f = jax.jit(delay)
    fd = (f(d + h) - f(d - h)) / (2 * h)
    assert float(grad) > 0
    np.testing.assert_allclose(grad, fd, rtol=1e-5)
