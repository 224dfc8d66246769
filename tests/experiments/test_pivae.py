"""The `pivae` experiment at its quick size through the command line, its invariant, and its preset."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pivae
from twinjax.cli import main


def test_energy_residual_is_zero_on_undamped_oscillators_and_not_on_damped_ones(key):
    ts = 0.2 * jnp.arange(40)
    clean, noisy, _ = pivae.make_data(key, 8, ts, 0.05)
    res = jax.jit(jax.vmap(lambda y: jnp.sum(pivae.energy_residual(y) ** 2)))
    assert float(jnp.max(res(clean))) < 1e-20
    damped = clean * jnp.exp(-0.1 * ts)[None, :, None]
    assert float(jnp.min(res(damped))) > 1e-4 and float(jnp.min(res(noisy))) > 1e-4


def test_pivae_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "pivae", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    quick = pivae.Config.quick()
    sweep, strategies = results["lambda_sweep"], results["strategies"]
    assert sweep["lambda"] == list(quick.lambdas)
    residual = np.array(sweep["sample_residual"])
    assert residual.shape == (len(quick.lambdas),) and np.all(np.isfinite(residual))
    assert residual[-1] < 0.5 * residual[0]  # the penalty pulls samples onto the invariant manifold
    assert strategies["physics"]["sample_residual"] < 1e-8  # zero by construction, up to RK4's error
    assert strategies["physics"]["mmd"] < strategies["neural_lambda_0"]["mmd"]
    for name in ("neural_lambda_0", "neural_lambda_max", "physics", "hybrid"):
        for metric in ("recon_rmse", "sample_residual", "mmd", "energy_distance", "elbo"):
            assert np.isfinite(strategies[name][metric]), (name, metric)
    assert {"mmd_data_vs_data", "residual_noisy_data"} <= set(results["reference"])
    for fig in ("residual_vs_lambda.png", "samples.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 10_000
    assert (tmp_path / "metrics.csv").read_text().startswith("model,step,loss")
    assert "strategies.physics.sample_residual" in capsys.readouterr().out


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = pivae.Config(), pivae.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= {"n_train", "n_test", "steps", "n_samples"}
    with pytest.raises(ValueError, match="lambdas"):
        pivae.Config(lambdas=(-1.0,))
    with pytest.raises(ValueError, match="steps"):
        pivae.Config(steps=1)
