"""The `simulate` experiment at a tiny size, through the command line, as a user runs it."""

import dataclasses
import json

from experiments import simulate
from twinjax.cli import main


def test_simulate_experiment_runs_and_writes_outputs(tmp_path, capsys):
    code = main(["run", "simulate", "--quick", "--set", "members=32", "duration_s=240", "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["members"] == 32
    assert (tmp_path / "figures" / "ensemble_bands.png").stat().st_size > 10_000
    assert results["failed_members"] == 0
    # float64 coulomb counting: SOC follows ∫ I dt / (3600 Q) to rounding for every member
    assert results["coulomb_counting_max_error"] < 1e-10
    assert results["soc_final"]["p05"] < results["soc_final"]["median"] < results["soc_final"]["p95"] < 0.95
    out = capsys.readouterr().out
    assert "run folder:" in out and "soc_final.median" in out


def test_quick_preset_differs_only_in_sizes():
    full, quick = simulate.Config(), simulate.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= {"members", "duration_s"}
