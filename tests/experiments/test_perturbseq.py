"""The `perturbseq` experiment: its scoring against exact answers, the quick run through the CLI, and its preset."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import perturbseq
from twinjax.cli import main


def test_noise_free_trials_score_the_exact_twin_at_zero_and_the_additive_baseline_only_on_interacting_pairs():
    # noise sd 1e-9: the fit is exact, so the twin's error is ~0; the additive baseline errs only where a directed
    # the pair interacts (interacting_pairs; superposition holds otherwise)
    q = perturbseq.Config.quick()
    # the shapes of the quick run's stacked linear sweep, so that the CLI test below reuses this compilation
    n_rows = 1 + len(q.strength_sweep) + len(q.density_sweep) + len(q.noise_sweep)
    keys = jax.random.split(jax.random.key(1), q.n_networks)
    params = jnp.tile(jnp.asarray([[0.25, 0.8, 1e-9, 0.0]]), (n_rows, 1))
    out = perturbseq._trials(keys, params, q.cells, q.n_genes, q.n_doubles, q.n_triples, q.n_truth_cells, False)
    doubles = out["doubles"]
    assert float(jnp.max(doubles["twin"]["rmse"])) < 1e-6
    assert float(jnp.max(out["triples"]["twin"]["rmse"])) < 1e-6
    additive = np.asarray(doubles["additive"]["rmse_additive"]).ravel()
    interacting = np.asarray(doubles["additive"]["rmse_interacting"]).ravel()
    additive, interacting = additive[np.isfinite(additive)], interacting[np.isfinite(interacting)]
    assert additive.size > 0 and interacting.size > 0  # both kinds of pair occur (NaN: none in that network)
    assert additive.max() < 1e-6
    assert interacting.min() > 1e-3
    assert float(jnp.min(doubles["no_change"]["rmse"])) > 1e-2


def test_perturbseq_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "perturbseq", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    quick = perturbseq.Config.quick()
    sweeps = results["sweeps"]
    assert set(sweeps) == set(perturbseq.SWEEPS)
    assert sweeps["strength"]["values"] == list(quick.strength_sweep)
    for name, sweep in sweeps.items():
        for combo in ("doubles", "triples"):
            for method in perturbseq.METHODS:
                rmse = np.array(sweep[combo][method]["rmse"]["mean"], dtype=float)
                assert rmse.shape == (len(sweep["values"]),) and np.all(np.isfinite(rmse)), (name, combo, method)
        for row in results["who_wins"][name]:
            for combo in ("doubles", "triples"):
                r = row[combo]
                rmse = {m: r[f"{m}_rmse"] for m in ("twin", "twin_ols", "additive")}
                assert r["winner"] == min(rmse, key=rmse.get)
    default = results["default"]["doubles"]
    assert default["twin"] < default["no_change"] and default["additive"] < default["no_change"]
    assert (tmp_path / "figures" / "perturbseq.png").stat().st_size > 10_000
    assert "default.doubles.twin" in capsys.readouterr().out


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = perturbseq.Config(), perturbseq.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= {"n_genes", "n_networks", "n_doubles", "n_triples", "cells_sweep", "n_truth_cells"}
    with pytest.raises(ValueError, match="strength"):
        perturbseq.Config(strength=1.0)
    with pytest.raises(ValueError, match="density"):
        perturbseq.Config(density_sweep=(1.5,))
    with pytest.raises(ValueError, match="cells_sweep"):
        perturbseq.Config(cells_sweep=(1,))
    with pytest.raises(ValueError, match="n_genes"):
        perturbseq.Config(n_genes=3)
    with pytest.raises(ValueError, match="noise_sd"):
        perturbseq.Config(noise_sd=0.0)
