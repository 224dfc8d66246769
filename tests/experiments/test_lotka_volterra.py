"""The `lotka-volterra` experiment at its quick size through the command line, and its `evaluate` compiled with
traced float settings (what `twinjax sweep` relies on)."""

import dataclasses
import json

import jax
import numpy as np

from experiments import lotka_volterra
from twinjax.cli import main


def test_lotka_volterra_runs_through_the_cli_and_evaluate_compiles_with_traced_settings(tmp_path, capsys):
    assert main(["run", "lotka-volterra", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    quick = lotka_volterra.Config.quick()
    losses = np.array(results["losses"])
    assert losses.shape == (quick.steps + 1,) and np.all(np.isfinite(losses))
    assert results["loss_ratio"] == np.float64(losses[0] / losses[-1]) and results["loss_ratio"] > 3.0
    assert results["status"] == 0
    for name in lotka_volterra.PARAM_NAMES:
        # the fit moved every rate from its perturbed start towards the truth
        true, start, fitted = (results["params"][k][name] for k in ("true", "start", "fitted"))
        assert abs(fitted - true) < abs(start - true)
    assert (tmp_path / "figures" / "lotka_volterra_fit.png").stat().st_size > 10_000
    assert (tmp_path / "metrics.csv").read_text().startswith("step,loss")
    assert "loss_ratio" in capsys.readouterr().out

    # `run` compiled `evaluate` with its float settings traced: another learning rate reuses that compilation
    before = lotka_volterra._evaluate_jit._cache_size()
    other = lotka_volterra.evaluate_compiled(dataclasses.replace(quick, lr=3 * quick.lr), jax.random.key(quick.seed))
    assert lotka_volterra._evaluate_jit._cache_size() == before
    assert np.all(np.isfinite(other["losses"])) and not np.allclose(other["losses"], losses)
    np.testing.assert_allclose(other["losses"][0], losses[0], rtol=1e-12)  # same data, same start


def test_quick_preset_differs_only_in_sizes():
    full, quick = lotka_volterra.Config(), lotka_volterra.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= {"n_times", "steps", "n_dense"}
