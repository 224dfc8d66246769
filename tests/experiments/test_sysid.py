"""The `sysid` experiment: its fixed-step twins against diffrax, its presets, and a quick run through the command line
(slow: the NUTS programs of the two twins take minutes to compile on a 2-core CPU)."""

import dataclasses
import json

import diffrax
import equinox as eqx
import jax
import numpy as np
import pytest

import twinjax as tj
from experiments import sysid
from twinjax.cli import discover, main

SIZES = {"n_datasets", "warmup", "samples", "pendulum_times", "battery_cycles", "laplace_coverage"}


def test_quick_preset_differs_only_in_sizes():
    full, quick = sysid.Config(), sysid.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    assert full.n_datasets >= 100
    with pytest.raises(ValueError, match="battery_dt"):
        sysid.Config(battery_dt=7.0)
    with pytest.raises(ValueError, match="samples"):
        sysid.Config(samples=2)
    assert "sysid" in discover()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pendulum", "battery"])
def test_fixed_step_twins_match_diffrax(name):
    """The experiment's fixed-step RK4 twins follow the physics of the diffrax twins (adaptive, tight tolerances):
    the error of the measured output is below 1 % of the sensor noise, and halving the step divides it by 2⁴ (RK4's
    order, within [12, 20])."""
    config = sysid.Config.quick()
    twin, spec, ts, us, x0 = sysid.PROBLEMS[name](config)
    reference = eqx.tree_at(lambda m: m.dynamics, twin, twin.dynamics.inner)
    reference = eqx.tree_at(
        lambda m: m.discretisation,
        reference,
        tj.Discretisation(stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-13)),
    )

    def output(model):
        path = tj.simulate(model, x0, ts, controls=us, key=jax.random.key(0))
        return np.asarray(jax.vmap(model.observation.mean)(ts, path.xs, path.us)[:, 0]), path

    exact, _ = output(reference)
    coarse, path = output(twin)
    fine_stepper = sysid.FixedStepRK(twin.dynamics.inner, twin.dynamics.interval_s, 2 * twin.dynamics.substeps)
    fine, _ = output(eqx.tree_at(lambda m: m.dynamics, twin, fine_stepper))
    err_coarse, err_fine = np.max(np.abs(coarse - exact)), np.max(np.abs(fine - exact))
    noise_sd = float(np.sqrt(twin.observation.cov[0, 0]))
    assert err_coarse < 0.01 * noise_sd, (err_coarse, noise_sd)
    assert 12.0 < err_coarse / err_fine < 20.0, (err_coarse, err_fine)
    if name == "battery":  # a wide state-of-charge swing, for the capacity
        assert float(path.xs[0, 0] - path.xs[-1, 0]) > 0.1


@pytest.mark.slow
def test_sysid_runs_through_the_cli(tmp_path, capsys):
    """Quick preset through ``twinjax run sysid --quick``: every output, the six coverages as fractions of the 8
    datasets, and on the fixed-truth dataset of each system NUTS and the MAP fit within 4 posterior sds of the truth
    and the Laplace sd within a factor 2 of the NUTS sd."""
    assert main(["run", "sysid", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n_datasets"] == 8
    coverage = results["coverage_90"]
    assert set(coverage) == {
        "pendulum.length_m",
        "pendulum.damping_per_s",
        "battery.r0_ohm",
        "battery.r1_ohm",
        "battery.c1_F",
        "battery.capacity_Ah",
    }
    assert all(v * 8 == round(v * 8) and 0.0 <= v <= 1.0 for v in coverage.values())
    for system, table in results["tables"].items():
        for name, row in table.items():
            sd = row["nuts_sd"]
            assert abs(row["nuts_mean"] - row["true"]) < 4 * sd, (system, name, row)
            assert abs(row["fit"] - row["true"]) < 4 * sd, (system, name, row)
            assert 0.5 < row["laplace_sd"] / sd < 2.0, (system, name, row)
    for figure in ("predictive_pendulum.png", "predictive_battery.png", "coverage.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "coverage_90" in out and "run folder:" in out
    assert np.isfinite(results["wall_time_s"])
