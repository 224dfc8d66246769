"""The `generative-zoo` experiment: its physics residual, its preset, a quick run through the command line and (slow)
the full-size claims of its module docstring."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from experiments import generative_zoo as zoo
from twinjax.cli import main


def test_energy_drift_is_zero_on_clean_pendulum_trajectories_and_the_noise_floor_on_noisy_ones(key):
    config = zoo.Config.quick()
    with jax.enable_x64(False):
        noisy, clean = zoo.pendulum_data(key, 64, config)
        drift_clean, drift_noisy = zoo.specific_energy_drift(clean), zoo.specific_energy_drift(noisy)
    assert noisy.shape == clean.shape == (64, config.n_times, 2)
    assert float(np.max(drift_clean)) < 1e-5  # RK4 error and float32 rounding of e ≈ 1
    # first order in the noise: e = ½ω² + 1 − cos θ moves by ω δω + sin θ δθ, sd ≈ σ · rms √(ω² + sin² θ) (≈ 0.7)
    expected = config.noise_sd * float(np.sqrt(np.mean(clean[..., 1] ** 2 + np.sin(clean[..., 0]) ** 2)))
    assert 0.7 * expected < float(np.sqrt(np.mean(drift_noisy**2))) < 1.3 * expected


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = zoo.Config(), zoo.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    sizes = {"n_train", "n_test", "n_entropy", "n_times", "steps", "diffusion_steps", "gan_steps", "width",
             "flow_layers", "sde_steps", "elbo_samples"}  # fmt: skip
    assert changed <= sizes
    bad = (("n_test", 1), ("steps", 0), ("diffusion_steps", 0), ("width", 0), ("noise_sd", 0.0), ("n_entropy", 15_000))
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            zoo.Config(**{name: value})


def _finite(v):
    return v is not None and math.isfinite(v)


def test_generative_zoo_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "generative-zoo", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    out = capsys.readouterr().out
    for name in zoo.DATASETS:
        families = [f for f in (*zoo.REFERENCES, *zoo.FAMILIES) if f != "physics_vae" or name == "pendulum"]
        assert list(results[name]) == families
        for family in families:
            row = results[name][family]
            assert all(_finite(row[k]) for k in ("mmd", "energy", "mmd_ratio", "energy_ratio")), (name, family)
            if family != "data":
                assert _finite(row["samples_per_s"]) and _finite(row["train_s"]), (name, family)
            assert family in out
        assert results[name]["data"]["mmd_ratio"] == 1.0
        for family in ("gaussian", "flow_affine", "flow_spline", "vae", "diffusion_ode"):
            assert _finite(results[name][family]["nll"]), (name, family)
        assert results[name]["gan"]["nll"] is None and results[name]["vae"]["nll_is_bound"]
    moons, pendulum = results["two_moons"], results["pendulum"]
    # even at the quick size the spline flow's exact NLL beats a Gaussian fit's (measured 1.22 vs 1.98 nats, entropy
    # 1.02) and no model beats the exact density (the data row)
    assert moons["flow_spline"]["nll"] < moons["gaussian"]["nll"] - 0.3
    assert all(moons[f]["nll"] > moons["data"]["nll"] - 0.05 for f in ("flow_affine", "flow_spline", "gaussian"))
    assert abs(results["entropy"] - 1.0) < 0.05  # REFERENCES.md: ≈ 1.00 nats at noise 0.1
    # the physics decoder solves the undamped pendulum: its sample means conserve energy (float32, RK4)
    assert pendulum["physics_vae"]["residual_mean"] < 1e-5 and pendulum["data"]["residual_mean"] < 1e-5
    assert pendulum["vae"]["residual_mean"] > 100 * pendulum["physics_vae"]["residual_mean"]
    assert (tmp_path / "figures" / "zoo.png").stat().st_size > 20_000
    assert (tmp_path / "metrics.csv").read_text().startswith("dataset,family,step,loss")
    assert "wall_time_s" in out


@pytest.mark.slow
def test_full_size_claims(tmp_path):
    """The default configuration (about 5 minutes on an idle 2-core CPU): the measured claims of the module
    docstring, seed 0. Measured: moons NLL data 0.989, flow_spline 1.018, flow_affine 1.056, diffusion 1.057; pendulum
    MMD² / energy ratios flow_spline 0.65 / 0.56, flow_affine 1.31 / 1.46, gan 1.21 / 1.38, diffusion (SDE) 0.77 /
    0.68, diffusion (ODE) 1.97 / 2.05."""
    results = zoo.run(zoo.Config(), tmp_path)
    moons, pendulum = results["two_moons"], results["pendulum"]
    for family in ("flow_affine", "flow_spline"):
        assert moons[family]["nll"] < moons["data"]["nll"] + 0.15, family
    assert moons["diffusion_ode"]["nll"] < moons["data"]["nll"] + 0.15
    assert moons["gaussian"]["nll"] > moons["flow_affine"]["nll"] + 0.5
    for family in ("flow_affine", "flow_spline", "gan", "diffusion_sde"):
        assert pendulum[family]["mmd_ratio"] <= 2.0 and pendulum[family]["energy_ratio"] <= 2.0, family
    # the probability-flow samples no longer diverge (ratios 103 / 221 with likelihood weighting): at the floor's 2x
    assert pendulum["diffusion_ode"]["mmd_ratio"] <= 3.0 and pendulum["diffusion_ode"]["energy_ratio"] <= 3.0
    assert moons["gan"]["mmd_ratio"] <= 4.0  # the issue's ≤ 2 is met by the WGAN-GP of the slow GAN test, not here
    assert pendulum["physics_vae"]["residual_mean"] < 1e-5
