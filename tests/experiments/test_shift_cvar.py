"""The `shift-cvar` experiment: presets, the twin's demand model against the 2R2C steady state by hand, a small run's
claims (the history is blind to heatwaves, the support check refuses, augmentation lowers the true target CVaR by
many Monte-Carlo standard errors), the CLI run with its figure."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import shift_cvar
from twinjax.cli import discover, main


def test_quick_preset_differs_only_in_sizes_and_bad_configs_raise():
    full, quick = shift_cvar.Config(), shift_cvar.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= set(shift_cvar.SIZES) | {"n_synthetic_grid"}
    assert "shift_cvar" in discover()
    for field, value in [("alpha", 1.5), ("pi_true", 0.0), ("pi_aug", 1.0), ("n_mc", 1), ("penalty", 0.5),
                         ("pi_grid", ()), ("n_synthetic_grid", (0,)), ("support_margin", 0.0)]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            shift_cvar.Config(**{field: value})


def test_demand_model_by_hand():
    """D = N (T_free − T_set)_+ / (R_1 + R_2) / COP(T) exp(0.05 b) / 1e6, T_free = T + (Q_occ + 2 I)(R_1 + R_2)."""
    xi = jnp.asarray([[30.0, 500.0, 300.0, 0.0], [39.0, 850.0, 250.0, 1.0], [10.0, 0.0, 0.0, 0.0]])
    r = 5e-3
    t_free = xi[:, 0] + (xi[:, 2] + 2.0 * xi[:, 1]) * r
    cop = 3.5 - 0.06 * (xi[:, 0] - 25.0)
    expected = 2000 * np.maximum(t_free - 24.0, 0.0) / r / cop * np.exp(0.05 * xi[:, 3]) / 1e6
    np.testing.assert_allclose(shift_cvar.demand_MW(xi, 2000), expected, rtol=1e-6)
    assert float(shift_cvar.demand_MW(xi, 2000)[2]) == 0.0


def test_target_mixture_fraction(key):
    """The target's heatwave fraction is π_true within 4 binomial SE; the twin's heatwaves are hotter than any
    normal day in a history-sized sample on average."""
    config = shift_cvar.Config.quick()
    n = 40_000
    _, hot = shift_cvar.target_days(key, n, config)
    assert abs(float(jnp.mean(hot)) - config.pi_true) <= 4 * np.sqrt(config.pi_true * (1 - config.pi_true) / n)
    twin = shift_cvar.twin_heatwaves(key, 2000, config)
    assert abs(float(jnp.mean(twin[:, 0])) - config.twin_heatwave_C) <= 4 * np.sqrt(2 * 1.5**2 / 2000)


def test_small_run_claims():
    """A small run: the history-only reserve's true target CVaR is worse than the augmented one's by more than 5
    paired Monte-Carlo SE, the augmented reserve lies within 25 % of the oracle's, the support check refuses, and the
    pure evaluate gives the same numbers for the same key."""
    config = dataclasses.replace(
        shift_cvar.Config.quick(),
        n_target_test=200,
        n_synthetic=100,
        n_mc=20_000,
        n_oracle=10_000,
        permutations=50,
        classifier_steps=50,
        pi_grid=(0.015,),
        n_synthetic_grid=(100,),
    )
    with jax.enable_x64(True):
        out = jax.device_get(shift_cvar.evaluate(config, jax.random.key(3)))
    cv, d = out["true_target_cvar"], out["decisions"]
    assert out["improvement_in_se"] > 5, out["improvement_in_se"]
    assert cv["source_only"] > cv["augmented"] and out["improvement_ratio"] > 1.3
    assert abs(d["augmented"] / d["oracle"] - 1) < 0.25, d
    assert d["source_only"] <= out["support"]["max_source_demand_MW"] + 1e-12
    assert out["support"]["heatwave_fraction_above_max_source_demand"] > 0.9
    if out["support"]["flagged_target_points"] > 0:
        assert out["support"]["importance_weighted_refused"]
    assert out["in_sample_cvar_source_only"] < cv["source_only"]  # the history's own estimate is optimistic


@pytest.mark.slow
def test_shift_cvar_runs_through_the_cli(tmp_path):
    assert main(["run", "shift-cvar", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["improvement_in_se"] > 5
    assert set(results["true_target_cvar"]) == {"source_only", "importance_weighted", "augmented", "oracle"}
    assert len(results["sensitivity_pi"]["true_target_cvar"]) == len(shift_cvar.Config.quick().pi_grid)
    assert (tmp_path / "figures" / "shift_cvar.png").stat().st_size > 10_000
