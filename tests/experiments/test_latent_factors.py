"""The `latent-factors` experiment: its data, its preset, the quick run through the CLI and (slow) the full claim."""

import dataclasses
import json

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import latent_factors
from twinjax.cli import main


def test_data_are_interventional_and_solved_accurately(key):
    config = latent_factors.Config.quick()
    twin = latent_factors.make_twin(config)
    ts = config.dt * jnp.arange(config.n_times, dtype=float)
    log_nominal = np.log(latent_factors.nominal())
    for j, vary in enumerate(latent_factors.FACTORS):
        log_f = np.asarray(latent_factors.draw_factors(key, 16, vary))
        np.testing.assert_allclose(log_f[:, 1 - j], log_nominal[1 - j])  # do(other factor = nominal)
        assert np.ptp(log_f[:, j]) > 0.5
    with pytest.raises(ValueError, match="vary"):
        latent_factors.draw_factors(key, 4, "both")

    # the data's RK4 against diffrax's adaptive Tsit5 (an independent solver)
    dyn = twin.dynamics
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, x, args: dyn.vector_field(t, x, None)), diffrax.Tsit5(), ts[0], ts[-1], 1e-4,
        jnp.zeros(2), saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        max_steps=100_000,
    )  # fmt: skip
    clean = latent_factors._solve(dyn, ts)
    np.testing.assert_allclose(clean, sol.ys, atol=1e-4)  # rad/s and A; speeds reach 215 rad/s
    # more load or more friction: slower at both voltage levels (both factors act on the data)
    mid, end = config.n_times // 2 - 1, config.n_times - 1
    base, _ = latent_factors.simulate(key, twin, ts, jnp.asarray(log_nominal)[None])
    for j in range(2):
        more, _ = latent_factors.simulate(key, twin, ts, jnp.asarray(log_nominal + 0.7 * np.eye(2)[j])[None])
        assert more[0, mid, 0] < base[0, mid, 0] - 0.5 and more[0, end, 0] < base[0, end, 0] - 1.0


def test_latent_factors_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "latent-factors", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    # measured on the quick preset (seed 0, float32 CLI run): physics r = 0.996 (load), 0.989 (friction); black box
    # best |r| 0.989 / 0.973, both through the same coordinate; recon RMSE physics 0.45 rad/s, 0.045 A
    for factor in latent_factors.FACTORS:
        assert results["pearson_r"][factor] > 0.9, factor
        assert results["pearson_r_latent"][factor] > 0.9, factor
        assert 0.0 <= results["blackbox_best_abs_r"][factor] <= 1.0
        assert 0.0 <= results["blackbox_matched_abs_r"][factor] <= results["blackbox_best_abs_r"][factor] + 1e-6
        for group in ("physics_r", "blackbox_best_abs_r"):
            assert np.isfinite(results["joint"][group][factor])
    # the physics decoder reconstructs to about the sensor noise (1 rad/s, 0.05 A)
    assert results["recon_rmse"]["physics"]["speed_rad_s"] < 1.0
    assert results["recon_rmse"]["physics"]["current_A"] < 0.08
    assert set(results["train_s"]) == {"physics", "blackbox"}
    assert (tmp_path / "figures" / "latent_factors.png").stat().st_size > 10_000
    assert (tmp_path / "metrics.csv").read_text().startswith("model,step,loss")
    assert "pearson_r.load" in capsys.readouterr().out


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = latent_factors.Config(), latent_factors.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= {"n_train", "n_test", "steps", "batch_size"}
    with pytest.raises(ValueError, match="steps"):
        latent_factors.Config(steps=1)
    with pytest.raises(ValueError, match="low_V"):
        latent_factors.Config(low_V=12.0, high_V=6.0)
    with pytest.raises(ValueError, match="dt"):
        latent_factors.Config(dt=0.0)


@pytest.mark.slow
def test_full_run_recovers_both_factors():
    """The claim: |r| >= 0.95 between each factor and its latent on held-out interventional data."""
    config = latent_factors.Config()
    out = jax.device_get(latent_factors.evaluate(config, jax.random.key(config.seed)))
    for factor in latent_factors.FACTORS:
        assert abs(out["pearson_r"][factor]) >= 0.95, (factor, out["pearson_r"])
        assert abs(out["pearson_r_latent"][factor]) >= 0.95, (factor, out["pearson_r_latent"])
