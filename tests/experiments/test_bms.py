"""The `bms` experiment (the project's main job): the quick closed-loop run's results and figures, the charge-time
metric, the baselines (best safe CC-CV, the perfect-information OCP against the greedy plan), the safety supervisor's
bisection, the config checks, one compilation for any seed, and (slow) the UKF estimator."""

import dataclasses
import json
import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bms

KELVIN = 273.15
RESULT_KEYS = (
    "soc_rmse",
    "max_voltage_v",
    "max_temperature_c",
    "violations",
    "charge_time_s",
    "cccv_charge_time_s",
    "optimal_charge_time_s",
    "detection_delay_s",
    "false_alarms",
    "wall_time_s",
)
FIGURES = ("bms_overview.png", "bms_charge.png", "bms_parameters.png")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run (nominal phase only: drive, charge 1), compiled once for the module."""
    config = bms.Config.quick()
    run_dir = tmp_path_factory.mktemp("bms_quick")
    results = bms.run(config, run_dir)
    return config, run_dir, results


def test_quick_run_meets_the_nominal_targets(quick):
    """results.json has the summary keys and the figures exist; on the nominal phase: no limit violated, SOC RMSE
    ≤ 1.5 %, no false alarm, the MPC charge faster than the best CC-CV and within 5 % of the optimum, optimum ≤ CC-CV.
    Then the closed loop compiles once: another seed reuses the program. (One test, so that xdist runs the quick run
    on one worker only.)"""
    config, run_dir, results = quick
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(on_disk)
    assert set(on_disk["detection_delay_s"]) == set(bms.FAULT_CLASSES)
    for fig in FIGURES:
        assert (run_dir / "figures" / fig).stat().st_size > 10_000, fig
    r = results
    assert r["violations"] == 0
    assert 0 < r["soc_rmse"] <= 0.015
    assert r["false_alarms"] == 0
    assert r["max_voltage_v"] <= config.v_max
    assert r["max_temperature_c"] <= config.t_max_c
    assert r["max_temperature_c"] > config.ambient_c  # the charge did heat the cell
    t, t_cc, t_opt = r["charge_time_s"], r["cccv_charge_time_s"], r["optimal_charge_time_s"]
    assert all(math.isfinite(v) and v > 0 for v in (t, t_cc, t_opt))
    assert t < t_cc
    assert t <= 1.05 * t_opt
    assert t_opt <= t_cc
    # no fault is scheduled inside the quick run's window: nothing to detect
    assert all(math.isnan(v) for v in r["detection_delay_s"].values())
    assert r["optimal"]["converged"] and r["optimal"]["kkt_residual"] <= 1e-6
    # the optimum keeps the same limits at every 1 s tick (T is constrained at every tick, V at interval ends)
    assert r["optimal"]["max_temperature_c"] <= config.t_max_c + 1e-6
    assert r["optimal"]["max_voltage_v"] <= config.v_max + 1e-6
    # another seed with the same config reuses the compiled program (the jit cache does not grow): one compilation
    before = bms._evaluate_jit._cache_size()
    with jax.enable_x64(True):
        out = bms._evaluate_jit(config, jax.random.key(config.seed + 1))
    assert bms._evaluate_jit._cache_size() == before
    assert float(out["soc_rmse"]) != r["soc_rmse"] and int(out["violations"]) == 0


def test_crossing_time_on_a_linear_ramp():
    """SOC = s0 + a k at 1 s ticks: the time from lo to hi is (hi − lo)/a (linear interpolation is exact); from an
    SOC already above lo it is (hi − s0)/a; NaN when hi is never reached."""
    a = 7.3e-4
    ramp = lambda s0, n: 0.0 + s0 + a * jnp.arange(n, dtype=float)  # noqa: E731
    assert float(bms.crossing_time(ramp(0.0512, 1500), 0.1, 0.8)) == pytest.approx(0.7 / a, rel=1e-9)
    assert float(bms.crossing_time(ramp(0.3, 1500), 0.1, 0.8)) == pytest.approx(0.5 / a, rel=1e-9)
    assert math.isnan(float(bms.crossing_time(ramp(0.0512, 500), 0.1, 0.8)))
    # a ramp that rises, falls and rises again: the first crossing counts
    socs = jnp.concatenate([ramp(0.05, 200), ramp(0.05, 200)[::-1], ramp(0.05, 1200)])
    assert float(bms.crossing_time(socs, 0.1, 0.8)) == pytest.approx(400 + 0.75 / a - 0.05 / a, rel=1e-9)


@pytest.fixture(scope="module")
def cccv():
    """The best CC-CV on the hidden cell from SOC 0.1 at 35 °C (the quick preset's baseline length)."""
    config = bms.Config.quick()
    cell = bms.hidden_cell(config)
    x0 = jnp.array([0.1, 0.0, config.ambient_c + KELVIN])
    ticks = config.optimal_horizon * config.interval_ticks
    with jax.enable_x64(True):
        i_cc, traj = jax.jit(lambda c, x: bms.best_cccv(config, c, x, ticks))(cell, x0)
    return config, cell, x0, ticks, i_cc, traj


def test_best_cccv_is_the_largest_thermally_safe_constant_current(cccv):
    """The CC-CV current keeps T ≤ T_max, two grid steps (2 I_max/1024) more exceed it; the CV phase holds V ≤ V_max
    (and reaches it); the charge reaches the target."""
    config, cell, x0, ticks, i_cc, (socs, temps, volts, currents) = cccv
    i_max = config.i_max_c_rate * bms.CAPACITY_NOMINAL_AH
    t_max = config.t_max_c + KELVIN
    i_cc = float(i_cc)
    assert 0 < i_cc <= i_max
    assert float(jnp.max(temps)) <= t_max
    assert float(jnp.max(volts)) <= config.v_max
    assert float(jnp.max(volts)) > config.v_max - 5e-3  # the CV phase is reached
    assert float(jnp.min(currents)) >= -i_cc - 1e-12 and float(jnp.max(currents)) <= 0.0
    assert math.isfinite(float(bms.crossing_time(socs, config.drive_stop_soc, config.soc_target)))
    bigger = i_cc + 2 * i_max / 1024
    if bigger < i_max:
        with jax.enable_x64(True):
            _, temps_big, _, _ = jax.jit(bms.cccv_run, static_argnums=(0, 4))(config, cell, x0, bigger, ticks)
        assert float(jnp.max(temps_big)) > t_max


@pytest.mark.slow
def test_optimal_charge_is_converged_and_not_slower_than_greedy_or_cccv(cccv):
    """The perfect-information OCP (horizon 80 from SOC 0.1) converges (KKT ≤ 1e-6), its plan respects
    −I_max ≤ I ≤ 0, and its replayed 10→80 % time is within 20 s of the greedy plan's (or better) and below the best
    CC-CV's."""
    config, cell, x0, _, _, cc = cccv
    i_max = config.i_max_c_rate * bms.CAPACITY_NOMINAL_AH

    @jax.jit
    def go(cell, x0):
        plan, sol = bms.optimal_charge(config, cell, x0)
        greedy = bms.greedy_charge(config, cell, x0)
        return plan, sol, bms.replay(config, cell, x0, plan), bms.replay(config, cell, x0, greedy)[0]

    with jax.enable_x64(True):
        plan, sol, opt, gr_socs = go(cell, x0)
    assert bool(sol.converged) and float(sol.kkt_residual) <= 1e-6
    plan = np.asarray(plan)
    assert plan.min() >= -i_max - 1e-9 and plan.max() <= 1e-9
    lo, hi = config.drive_stop_soc, config.soc_target
    t_ocp = float(bms.crossing_time(opt[0], lo, hi))
    t_greedy = float(bms.crossing_time(gr_socs, lo, hi))
    t_cc = float(bms.crossing_time(cc[0], lo, hi))
    assert math.isfinite(t_ocp) and math.isfinite(t_greedy)
    assert t_ocp <= t_greedy + 20.0
    assert t_ocp < t_cc
    assert float(jnp.max(opt[1])) <= config.v_max + 1e-6
    assert float(jnp.max(opt[2])) <= config.t_max_c + bms.KELVIN + 1e-6


def _belief(soc):
    m = jnp.array(
        [soc, 0.0, 40.0 + KELVIN, bms.R0_NOMINAL_OHM, 0.2, 0.0, 1.0, bms.R1_NOMINAL_OHM, bms.C1_NOMINAL_F, 1.0]
    )
    P = jnp.diag(jnp.array([0.005, 0.002, 0.2, 5e-4, 2e-3, 0.02, 0.02, 5e-4, 100.0, 0.02]) ** 2)
    return m, P


def test_supervisor_cuts_an_unsafe_charge_to_the_voltage_boundary():
    """At SOC 0.79 a 15 A charge is predicted over V_max: the supervised current is smaller, meets μ_V + κσ_V ≤ V_max
    (κ = Φ⁻¹(1 − α_s), σ_V with the sensor floor) and 1.05 times it does not; a small demand passes unchanged."""
    config = bms.Config()
    model = bms.make_twin(config)
    m, P = _belief(0.79)
    kappa = NormalDist().inv_cdf(1 - config.supervisor_alpha)

    @jax.jit
    def upper(current):
        y, sd = bms._predict_outputs(model, m, P, jnp.reshape(current + m[5], (1,)), current)
        return y[0] + kappa * jnp.sqrt(sd[0] ** 2 + config.voltage_sd_v**2)

    with jax.enable_x64(True):
        sup = jax.jit(lambda d: bms.supervise(config, model, m, P, d))
        current, overridden = sup(jnp.asarray(-15.0))
        assert float(upper(jnp.asarray(-15.0))) > config.v_max
        assert bool(overridden)
        assert -15.0 < float(current) < 0.0
        assert float(upper(current)) <= config.v_max
        assert float(upper(1.05 * current)) > config.v_max
        small, small_over = sup(jnp.asarray(-0.5))
        assert float(upper(jnp.asarray(-0.5))) <= config.v_max
        assert float(small) == -0.5 and not bool(small_over)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"estimator": "kf"}, "estimator"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 0.6}, "alpha"),
        ({"supervisor_alpha": 0.5}, "supervisor_alpha"),
        ({"t_end_s": 4810}, "t_end_s"),
        ({"horizon": 0}, "horizon"),
        ({"sweep_runs": -1}, "sweep_runs"),
    ],
)
def test_bad_configs_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        bms.Config(**kwargs)


def test_quick_preset_keeps_the_limits_and_the_truth():
    """The quick preset changes only the schedule and sizes, never the limits, the hidden truth or the noise."""
    full, quick = bms.Config(), bms.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    schedule = {"t_end_s", "nominal_end_s", "drives_s", "charges_s", "drive_max_s", "horizon", "optimal_horizon",
                "soc_start"}  # fmt: skip
    assert changed <= schedule


@pytest.mark.slow
def test_ukf_estimator_quick_run(tmp_path):
    """The UKF option: the quick run's SOC RMSE ≤ 1.5 % and no limit violated."""
    config = dataclasses.replace(bms.Config.quick(), estimator="ukf")
    results = bms.run(config, tmp_path)
    assert results["soc_rmse"] <= 0.015
    assert results["violations"] == 0
