"""The `safe-curriculum` experiment: presets, the physics truth is the twin's linear-in-θ model, the quick run through
the command line (zero violations of the robust curricula, some of the posterior-mean one, the certified set growing)
and (slow) the full claims over 200 seeds."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import safe_curriculum as sc
from twinjax.cli import discover, main

SIZES = {"n_seeds", "rounds", "grid_T", "grid_Q", "closed_loop_hours"}


def test_presets_and_the_physics_truth():
    full, quick = sc.Config(), sc.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES and full.n_seeds >= 200
    with pytest.raises(ValueError, match="T_low"):
        sc.Config(T_wall=40.0)
    with pytest.raises(ValueError, match="delta"):
        sc.Config(delta=0.0)
    assert "safe_curriculum" in discover()
    # physics.Building2R2C's air node is exactly the twin φ(z)ᵀθ (so the posterior is exact)
    _, _, _, phi = sc.make_model(quick)
    thetas = jnp.asarray(quick.prior_mean) + jax.random.normal(jax.random.key(0), (5, 3)) * 0.3
    zs = sc.grid(quick)[::37]
    rates = jax.vmap(lambda th: jax.vmap(lambda z: sc.true_rate(quick, th, z))(zs))(thetas)
    np.testing.assert_allclose(rates, thetas @ jax.vmap(phi)(zs).T, rtol=1e-10, atol=1e-10)


def test_quick_run_through_the_cli(tmp_path, capsys):
    assert main(["run", "safe-curriculum", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    config = sc.Config.quick()
    assert set(res) >= {"kappa", "violations", "seeds_with_violation", "certified_fraction", "final", "closed_loop"}
    assert res["violations"]["robust"] == 0 and res["violations"]["random"] == 0
    assert res["total_violations_robust"] == 0
    assert res["rounds_robust"]["unsafe_certified"] == 0  # not one unsafe candidate was ever certified
    assert res["violations"]["mean"] > 0  # the posterior-mean explorer does run unsafe experiments
    robust = np.asarray(res["certified_fraction"]["robust"]["mean"])
    random = np.asarray(res["certified_fraction"]["random"]["mean"])
    assert robust.shape == (config.rounds + 1,)
    assert robust[0] < 0.5 and robust[-1] > 0.85 and np.all(np.diff(robust) >= -1e-12)
    assert np.all(robust[1:] >= random[1:])  # the informative choice grows the set faster
    assert res["final"]["robust"]["rate_rmse"] < res["final"]["random"]["rate_rmse"]
    loops = res["closed_loop"]
    assert loops["prior_robust"]["overshoots"] == 0 and loops["learnt_robust"]["overshoots"] == 0
    assert loops["learnt_robust"]["mean_peak_gap_K"] < loops["prior_robust"]["mean_peak_gap_K"]
    assert (tmp_path / "figures" / "safe_curriculum.png").stat().st_size > 10_000
    assert "violations" in capsys.readouterr().out


@pytest.mark.slow
def test_full_claims():
    """200 seeds, 25 rounds: zero violations of the robust curricula and filters, many of the posterior-mean ones; the
    certified set grows from ~13 % to > 95 % of the true safe set, faster than random choice; small final error."""
    config = sc.Config()
    with jax.enable_x64(True):
        res = jax.device_get(sc.evaluate(config, jax.random.key(config.seed)))
    assert int(res["total_violations_robust"]) == 0 and int(res["violations"]["random"]) == 0
    assert int(res["seeds_with_violation"]["mean"]) >= 50
    assert int(res["closed_loop"]["prior_mean"]["overshoots"]) >= 20
    robust = np.asarray(res["certified_fraction"]["robust"]["mean"])
    random = np.asarray(res["certified_fraction"]["random"]["mean"])
    assert robust[0] < 0.2 and robust[-1] > 0.95 and np.all(robust[1:] > random[1:])
    assert np.all(np.asarray(res["final"]["robust"]["param_error_over_prior_sd"]) < 0.3)
