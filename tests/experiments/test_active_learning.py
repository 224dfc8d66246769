"""The `active-learning` experiment at its quick preset through the command line: A-optimal against random (paired
Monte-Carlo bound), the posterior's calibration, the pendulum input design against the grid and random inputs, and
the linearised error prediction against the empirical least-squares error."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import active_learning
from twinjax.cli import discover, main

SIZES = {
    "steps",
    "n_seeds",
    "n_times",
    "design_candidates",
    "n_segments",
    "refine_steps",
    "grid_frequencies_hz",
    "n_datasets",
    "gauss_newton_steps",
}


def test_active_learning_runs_through_the_cli_and_writes_outputs(tmp_path, capsys):
    assert "active_learning" in discover()
    assert main(["run", "active-learning", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    config = active_learning.Config.quick()

    # part 1: tr Σ_t histories, A-optimal below random by > 4 paired standard errors
    for s in ("a", "d", "random"):
        mean = np.asarray(res["traces"][s]["mean"])
        assert mean.shape == (config.steps + 1,) and np.all(np.diff(mean) < 0)
        assert mean[0] == pytest.approx((config.degree + 1) * config.prior_sd**2)
        assert np.all(np.asarray(res["traces"][s]["q10"]) <= mean + 1e-12)
        # the posterior is calibrated: E‖m_T − θ*‖² = E tr Σ_T (θ* from the prior) within 4 standard errors
        check = res["squared_error_minus_trace"][s]
        assert abs(check["mean"]) < 4 * check["se"], (s, check)
    gap = res["trace_gap_random_minus_a"]
    assert gap["mean"] > 4 * gap["se"]
    assert res["trace_ratio_random_over_a"] > 1.5 and res["regression_finite"]
    assert res["final_trace"]["a"] == pytest.approx(res["traces"]["a"]["mean"][-1])

    # part 2: the designed input beats the generator's draws and the best grid input; the experiment's own
    # assembly of I = JᵀJ/σ² + diag(1/s²) reproduces the design's criterion
    design = res["input_design"]
    assert design["failed_candidates"] == 0
    assert design["criterion_recomputed"] == pytest.approx(design["criterion"], rel=1e-8)
    assert design["criterion"] == pytest.approx(min(design["refined_criteria"]))
    assert np.all(np.asarray(design["refined_criteria"]) < np.asarray(design["random_criteria"]))
    assert design["ratio_grid_over_designed"] > 1.0
    assert design["ratio_random_median_over_designed"] > 2.0
    assert set(design["grid_criteria"]) >= {"step", "sine 0.5 Hz", "square 0.5 Hz"}
    assert np.all(np.abs(design["designed_input"]) < config.u_max)
    # the linearised prediction tr F⁻¹ against the least-squares error over noisy datasets (designed input)
    designed = design["by_input"]["designed"]
    assert designed["failed_fits"] == 0
    assert abs(designed["empirical_mse"] - designed["predicted_mse"]) < 4 * designed["empirical_mse_se"]
    assert design["by_input"]["random_median"]["predicted_mse"] > designed["predicted_mse"]

    for figure in ("trace_vs_steps.png", "input_design.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "run folder:" in out and "trace_ratio_random_over_a" in out

    # sweeps vmap `evaluate` over float fields: it traces with them abstract (shapes only, nothing runs)
    def with_traced(noise, u_max, angle_sd, learning_rate):
        traced = dataclasses.replace(config, noise=noise, u_max=u_max, angle_sd=angle_sd, learning_rate=learning_rate)
        out = active_learning.evaluate(traced, jax.random.key(0))
        return out["trace_ratio_random_over_a"], out["input_design"]["criterion"]

    shapes = jax.eval_shape(with_traced, 0.3, 1.0, 0.05, 0.1)
    assert all(s.shape == () for s in shapes)


def test_quick_preset_differs_only_in_sizes():
    full, quick = active_learning.Config(), active_learning.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    with pytest.raises(ValueError, match="n_segments"):
        active_learning.Config(n_times=10, n_segments=20)
    with pytest.raises(ValueError, match="n_seeds"):
        active_learning.Config(n_seeds=1)
