"""The `verify-synthetic` experiment: presets, the twin's one-step temperature constraint against its closed form, the
quick run through the command line and (slow) the full run's claims (≥ 1e5 samples, no false acceptance, a
false-rejection interval that contains its estimate and grows with the margin)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import verify_synthetic as vs
from physics.battery import KELVIN
from twinjax.cli import discover, main

SIZES = {"n_trajectories", "steps", "n_data", "flow_layers", "flow_hidden", "flow_steps", "batch_size", "n_samples",
         "n_filtered"}  # fmt: skip


def test_quick_preset_differs_only_in_sizes():
    full, quick = vs.Config(), vs.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    assert full.n_samples >= 100_000
    with pytest.raises(ValueError, match="level"):
        vs.Config(level=1.0)
    with pytest.raises(ValueError, match="margins"):
        vs.Config(kappa=-1.0)
    with pytest.raises(ValueError, match="n_data"):
        vs.Config(n_trajectories=2, steps=3, n_data=10)
    assert "verify_synthetic" in discover()


def test_safety_sets_closed_form_and_subset():
    """The one-step constraint equals ``T + h (I² (R0 + R1) − k (T − T_amb)) / C − T_max`` for the 5 Ah cell, and the
    tightened invariant never accepts a point outside the true limits."""
    config = vs.Config.quick()
    true_set, inv0, sigma = vs.safety_sets(config)
    assert len(inv0.names) == 4 and sigma.shape == (4,)
    pts = jnp.array([[30.0, 10.0], [44.0, 19.0], [20.0, -9.0], [46.0, 0.0], [25.0, 25.0], [40.0, 18.0]])
    t, i = np.asarray(pts[:, 0]), np.asarray(pts[:, 1])
    ambient = config.ambient_C[1]
    expect = t + config.horizon_s * (i**2 * (0.015 + 0.010) - 0.25 * (t - ambient)) / 70.0 - config.t_max_C
    np.testing.assert_allclose(inv0.values(pts)[:, 3], expect, rtol=1e-10, atol=1e-9)
    inv = inv0.tightened(config.kappa * sigma)
    grid = jnp.stack(jnp.meshgrid(jnp.linspace(0, 60, 61), jnp.linspace(-20, 30, 51)), -1).reshape(-1, 2)
    assert not bool(jnp.any(inv.contains(grid) & ~true_set.contains(grid)))
    assert float(KELVIN) == 273.15


def test_quick_run_through_the_cli(tmp_path, capsys):
    assert main(["run", "verify-synthetic", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("n_samples", "acceptance_rate", "false_rejection_rate", "false_acceptance_rate",
                 "per_constraint_rejections", "wall_time_s"):  # fmt: skip
        assert name in results
    assert results["n_samples"] == vs.Config.quick().n_samples
    frr = results["false_rejection_rate"]
    assert frr["ci_low"] <= frr["estimate"] <= frr["ci_high"]
    assert frr["estimate"] == pytest.approx(frr["count"] / frr["total"])
    assert results["false_acceptance_rate"]["count"] == 0 and results["inv_subset_of_true"] is True
    assert 0.5 < results["acceptance_rate"] < 1.0
    assert set(results["per_constraint_rejections"]) == set(results["margins"])
    assert results["rejection_sampler"]["all_accepted"] is True
    assert (tmp_path / "figures" / "verify_synthetic.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "false_rejection_rate" in out and "run folder:" in out


@pytest.mark.slow
def test_full_run(tmp_path):
    """Default sizes: ≥ 1e5 samples; some generated points violate the true limits (the filter has work to do); no
    false acceptance at any margin; the false-rejection rate's 95 % interval is tight (half-width < 0.005) and the
    rate grows with κ."""
    with jax.enable_x64(True):
        results = vs.run(vs.Config(), tmp_path)
    assert results["n_samples"] >= 100_000
    assert results["truly_unsafe_fraction"]["samples"] > 0.005
    assert results["false_acceptance_rate"]["count"] == 0 and bool(results["inv_subset_of_true"])
    frr = results["false_rejection_rate"]
    assert frr["ci_low"] <= frr["estimate"] <= frr["ci_high"] and frr["ci_high"] - frr["ci_low"] < 0.01
    curve = np.asarray(results["kappa_curve"]["false_rejection_rate"])
    assert np.all(np.diff(curve) >= 0) and curve[-1] > curve[0]
    assert bool(results["rejection_sampler"]["all_accepted"])
