"""The battery-management case study's pieces (``physics.battery_bms``): the drive profile against the micro-trip table,
the fault schedule of the plant (resistance ramp, capacity step, loose-connection bursts), the sensors (stuck
temperature, contact-resistance drop, current bias), the estimator's augmented twin against the cell it wraps, and the
EKF's consistency on data drawn from that twin (NIS and SOC coverage within Monte-Carlo bounds)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bms
from physics.battery import cell_5Ah
from physics.battery_bms import (
    MICRO_TRIP,
    TRIP_S,
    AugmentedBattery,
    Faults,
    Plant,
    drive_current,
    sense,
    twin_sensor,
)
from physics.battery_charging import rk4_step
from twinjax.inference import extended_kalman_filter

# ------------------------------------------------------------------------------------------------ drive profile


def test_micro_trip_mean_and_rms_c_rate_match_the_table_and_the_docstring():
    """Sampled at 1 s (segments last whole seconds, so the sample average is the time average), one unscaled trip's
    mean and RMS C-rate equal the duration-weighted values of MICRO_TRIP: ≈ 0.78C and ≈ 1.3C."""
    durations = np.array([d for d, _ in MICRO_TRIP], float)
    rates = np.array([c for _, c in MICRO_TRIP], float)
    mean_ref = float(np.sum(durations * rates) / np.sum(durations))
    rms_ref = math.sqrt(float(np.sum(durations * rates**2) / np.sum(durations)))
    assert TRIP_S == 120 == np.sum(durations)
    ts = jnp.arange(TRIP_S, dtype=float)
    c = np.asarray(jax.vmap(lambda t: drive_current(t, jnp.ones(1), 1.0))(ts))
    assert np.mean(c) == pytest.approx(mean_ref, abs=1e-12)
    assert math.sqrt(np.mean(c**2)) == pytest.approx(rms_ref, abs=1e-12)
    assert round(mean_ref, 2) == 0.78
    assert round(rms_ref, 1) == 1.3 and abs(rms_ref - 1.3) < 0.015


def test_drive_current_segments_and_per_trip_scaling():
    """Hand-picked times: the segment boundaries (left-closed), trip j scaled by scales[j] times the capacity, and
    times past the last trip use the last scale."""
    scales = jnp.array([0.8, 1.2, 1.0])
    q = 5.0
    cases = [  # (t, C-rate of the segment, trip)
        (0.0, 2.5, 0), (9.999, 2.5, 0), (10.0, 1.0, 0), (59.5, 1.0, 0), (60.0, -1.5, 0), (69.9, -1.5, 0),
        (70.0, 0.0, 0), (90.0, 2.0, 0), (100.0, 1.2, 0), (114.9, 1.2, 0), (115.0, -0.8, 0), (119.9, -0.8, 0),
        (120.0, 2.5, 1), (130.0, 1.0, 1), (240.0 + 61.0, -1.5, 2), (360.0 + 100.0, 1.2, 2), (1200.0 + 5.0, 2.5, 2),
    ]  # fmt: skip
    for t, rate, trip in cases:
        got = float(drive_current(jnp.asarray(t), scales, q))
        assert got == pytest.approx(rate * float(scales[trip]) * q, abs=1e-12), t


# ------------------------------------------------------------------------------------------------ plant faults


def _plant(**faults) -> Plant:
    cell = cell_5Ah(n_rc=1, ambient_temperature_K=308.15)
    cell = eqx.tree_at(lambda c: (c.r0_ohm, c.capacity_Ah), cell, (jnp.asarray(0.018), jnp.asarray(4.8)))
    return Plant(cell, jnp.asarray(0.1), jnp.asarray(0.002), jnp.asarray(0.3), jnp.asarray(0.05), Faults(**faults))


def test_cell_at_ramps_the_resistance_and_steps_the_capacity():
    """R0(t) = R0 (1 + (f_R − 1) r(t)), r the linear ramp over [6300, 6900]; Q steps to f_Q Q at 7200."""
    plant = _plant()
    r0, q = 0.018, 4.8
    for t, ramp in [(0.0, 0.0), (6299.0, 0.0), (6300.0, 0.0), (6450.0, 0.25), (6600.0, 0.5), (6900.0, 1.0),
                    (9000.0, 1.0)]:  # fmt: skip
        assert float(plant.cell_at(t).r0_ohm) == pytest.approx(r0 * (1 + 0.4 * ramp), rel=1e-14), t
    assert float(plant.cell_at(7199.0).capacity_Ah) == pytest.approx(q, rel=1e-14)
    assert float(plant.cell_at(7199.999).capacity_Ah) == pytest.approx(q, rel=1e-14)
    assert float(plant.cell_at(7200.0).capacity_Ah) == pytest.approx(0.9 * q, rel=1e-14)
    assert float(plant.cell_at(11000.0).capacity_Ah) == pytest.approx(0.9 * q, rel=1e-14)
    # the rest of the cell is untouched
    assert float(plant.cell_at(8000.0).r_rc_ohm[0]) == float(plant.cell.r_rc_ohm[0])


def test_loose_connection_bursts_on_at_duty_inside_the_window_only():
    """Inside the window each 5 s burst is on with probability `duty` (the fraction of 4000 bursts within 4 binomial
    SE), the state is constant within a burst; outside the window it is never on, even at duty 1."""
    n_bursts, duty, burst = 4000, 0.2, 5.0
    plant = _plant(loose_from_s=0.0, loose_to_s=n_bursts * burst, loose_duty=duty, loose_burst_s=burst)
    key = jax.random.key(3)
    starts = burst * jnp.arange(n_bursts, dtype=float)
    on = jax.vmap(lambda t: plant.loose_on(t, key))
    at_start = np.asarray(on(starts))
    se = math.sqrt(duty * (1 - duty) / n_bursts)
    assert abs(at_start.mean() - duty) <= 4 * se
    for offset in (1.0, 2.5, 4.0, 4.999):
        np.testing.assert_array_equal(np.asarray(on(starts + offset)), at_start)
    # another key: other bursts (the hash uses the key)
    assert np.any(np.asarray(jax.vmap(lambda t: plant.loose_on(t, jax.random.key(4)))(starts)) != at_start)
    always = _plant(loose_from_s=100.0, loose_to_s=200.0, loose_duty=1.0)
    ts = jnp.arange(0.0, 400.0, 0.5)
    got = np.asarray(jax.vmap(lambda t: always.loose_on(t, key))(ts))
    np.testing.assert_array_equal(got, (np.asarray(ts) >= 100.0) & (np.asarray(ts) < 200.0))


# ------------------------------------------------------------------------------------------------ sensors


def test_stuck_temperature_sensor_reads_the_stuck_value_after_onset():
    """From the tick whose end passes the onset, the temperature reading is `stuck_T`; before it, the true temperature
    plus noise (the same noise key gives the same reading)."""
    plant = _plant(tsensor_at_s=1000.0)
    x = jnp.array([0.5, 0.01, 310.0])
    kl = jax.random.key(1)
    for t in (1000.0, 1001.0, 5000.0):
        y, _, _ = sense(plant, t, x, 2.0, 303.0, jax.random.key(int(t)), kl)
        assert float(y[1]) == 303.0
    readings = []
    for t in (998.0, 999.0):
        kn = jax.random.key(int(t))
        y, _, _ = sense(plant, t, x, 2.0, 303.0, kn, kl)
        kt = jax.random.split(kn, 3)[1]
        assert float(y[1]) == pytest.approx(310.0 + 0.3 * float(jax.random.normal(kt, ())), abs=1e-12)
        readings.append(float(y[1]))
    assert readings[0] != readings[1]


def test_loose_connection_drops_the_sensed_voltage_by_contact_resistance_times_current():
    """Same noise key, loose window covering t (duty 1) or not: the sensed voltages differ by exactly −R_c I; the
    temperature and current readings are unchanged."""
    x = jnp.array([0.6, 0.02, 312.0])
    kn, kl = jax.random.key(7), jax.random.key(8)
    for current in (12.0, -9.0):
        on = _plant(loose_from_s=0.0, loose_to_s=1e4, loose_duty=1.0, loose_ohm=0.03)
        off = _plant(loose_from_s=2e4, loose_to_s=3e4, loose_duty=1.0, loose_ohm=0.03)
        y_on, i_on, loose_on = sense(on, 500.0, x, current, 300.0, kn, kl)
        y_off, i_off, loose_off = sense(off, 500.0, x, current, 300.0, kn, kl)
        assert bool(loose_on) and not bool(loose_off)
        assert float(y_on[0] - y_off[0]) == pytest.approx(-0.03 * current, abs=1e-12)
        assert float(y_on[1]) == float(y_off[1]) and float(i_on) == float(i_off)
        # without noise the clean reading is the plant's terminal voltage
        assert float(y_off[0]) == pytest.approx(
            float(off.voltage(500.0, x, current)) + 0.002 * float(jax.random.normal(jax.random.split(kn, 3)[0], ())),
            abs=1e-12,
        )


def test_current_sensor_bias_and_noise_over_many_keys():
    """I_meas = I + b + ε: over 4000 keys its mean is I + b within 4 SE (SE = σ_I/√n) and its sd ≈ σ_I."""
    plant = _plant()
    x = jnp.array([0.5, 0.0, 308.15])
    keys = jax.random.split(jax.random.key(11), 4000)
    _, i_meas, _ = jax.vmap(lambda k: sense(plant, 10.0, x, 7.0, 300.0, k, jax.random.key(0)))(keys)
    i_meas = np.asarray(i_meas)
    se = 0.05 / math.sqrt(len(i_meas))
    assert abs(i_meas.mean() - 7.1) <= 4 * se
    assert abs(i_meas.mean() - 7.0) > 50 * se  # the bias is seen
    assert i_meas.std(ddof=1) == pytest.approx(0.05, rel=0.1)


# ------------------------------------------------------------------------------------------------ the twin


def test_augmented_transition_is_rk4_of_the_cell_with_the_state_parameters():
    """transition(z, u) = [rk4_step(cell(R0 = z3, Q = 1/z4), z[:3], u − z5), z[3:]]; the SOC row is exact in closed
    form (its rate is constant over the tick): soc − (u − b) z4 dt / 3600."""
    cell = cell_5Ah(n_rc=1, ambient_temperature_K=308.15)
    twin = AugmentedBattery(cell)
    z = jnp.array([0.62, 0.013, 311.0, 0.021, 0.23, 0.07, 0.9, 0.012, 2600.0, 1.08])
    u = jnp.array([4.5])
    got = twin.transition(0.0, z, u)
    ref_cell = cell_5Ah(n_rc=1, ambient_temperature_K=308.15)
    ref_cell = eqx.tree_at(
        lambda c: (c.r0_ohm, c.capacity_Ah, c.cell_heat_transfer_W_K, c.r_rc_ohm, c.c_rc_F, c.cell_heat_capacity_J_K),
        ref_cell,
        (
            jnp.asarray(0.021),
            jnp.asarray(1 / 0.23),
            jnp.asarray(0.225),
            (jnp.asarray(0.012),),
            (jnp.asarray(2600.0),),
            jnp.asarray(1.08 * 70.0),
        ),  # fmt: skip
    )
    ref = rk4_step(ref_cell, jnp.array([0.62, 0.013, 311.0]), jnp.array([4.5 - 0.07]), 1.0)
    np.testing.assert_allclose(got[:3], ref, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(got[3:], z[3:])
    assert float(got[0]) == pytest.approx(0.62 - (4.5 - 0.07) * 0.23 / 3600.0, abs=1e-14)
    # a different R0 changes the heating, not the SOC
    other = twin.transition(0.0, z.at[3].set(0.03), u)
    assert float(other[0]) == float(got[0]) and float(other[2]) > float(got[2])


def test_twin_sensor_is_the_cells_terminal_voltage_with_the_state_parameters():
    """h(z, u) = [V(z[:3], u − z5) with R0 = z3, T]; V = U_ocv(soc) − R0 (u − b) − v1 by hand."""
    cell = cell_5Ah(n_rc=1, ambient_temperature_K=308.15)
    twin = AugmentedBattery(cell)
    h = twin_sensor(twin)
    z = jnp.array([0.41, -0.02, 305.0, 0.019, 0.21, -0.05, 1.1, 0.011, 3300.0, 0.95])
    for i in (-11.0, 0.0, 6.0):
        u = jnp.array([i])
        got = h(0.0, z, u)
        ref_cell = eqx.tree_at(lambda c: (c.r0_ohm, c.capacity_Ah), cell, (jnp.asarray(0.019), jnp.asarray(1 / 0.21)))
        ref_v = ref_cell.terminal_voltage(0.0, z[:3], jnp.array([i + 0.05]))
        assert float(got[0]) == pytest.approx(float(ref_v), abs=1e-14)
        by_hand = float(cell.open_circuit_voltage(0.41)) - 0.019 * (i + 0.05) + 0.02
        assert float(got[0]) == pytest.approx(by_hand, abs=1e-14)
        assert float(got[1]) == 305.0


def test_ekf_is_consistent_on_data_from_the_matched_twin():
    """Data drawn from the estimator's own model (``bms.make_twin``: a prior draw of the 10-state ``z``,
    process noise Q, sensor noise R, a random piecewise-constant current): after a 100-tick burn-in the time-averaged
    NIS is within 4 SE (SE = 2/√n, χ²₂ innovations being white) of 2, and the SOC error is within 3 posterior sd on
    ≥ 97 % of ticks. The sensor at tick k reads the current held over [k, k + 1), the filter's pairing of us[k] with
    ys[k]."""
    model = bms.make_twin(bms.Config())
    ticks, burn = 600, 100
    k0, kw, kv, ku = jax.random.split(jax.random.key(2024), 4)
    n = model.initial.mean.shape[0]
    z0 = model.initial.mean + jnp.linalg.cholesky(model.initial.cov) @ jax.random.normal(k0, (n,))
    levels = jax.random.uniform(ku, (ticks // 10,), minval=-10.0, maxval=10.0)
    us = jnp.repeat(levels, 10)[:, None]
    h = model.observation.fn
    chol_q = jnp.linalg.cholesky(model.process_noise)
    chol_r = jnp.linalg.cholesky(model.observation.cov)
    ws = jax.random.normal(kw, (ticks, n))
    vs = jax.random.normal(kv, (ticks, 2))

    def body(z, inputs):
        u, w, v = inputs
        y = h(0.0, z, u) + chol_r @ v
        return model.dynamics.transition(0.0, z, u) + chol_q @ w, (z, y)

    _, (zs, ys) = jax.lax.scan(body, z0, (us, ws, vs))
    assert float(jnp.min(zs[:, 0])) > 0.05 and float(jnp.max(zs[:, 0])) < 0.95
    res = extended_kalman_filter(model, ys, us)
    assert bool(res.ok)
    r, S = res.innovations.residual, res.innovations.covariance
    nis = np.asarray(jax.vmap(lambda r, S: r @ jnp.linalg.solve(S, r))(r, S))[burn:]
    n = len(nis)
    assert abs(nis.mean() - 2.0) <= 4 * 2.0 / math.sqrt(n), nis.mean()
    err = np.asarray(res.means[:, 0] - zs[:, 0])
    sd = np.sqrt(np.asarray(res.covariances[:, 0, 0]))
    assert np.mean(np.abs(err) <= 3 * sd) >= 0.97
    # the filter did learn: its SOC sd shrank well below the prior's 0.1
    assert sd[-1] < 0.02
