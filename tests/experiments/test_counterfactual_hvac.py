"""The `counterfactual-hvac` experiment: presets and config errors, the closed-loop thermostat building against its
analytic steady state, and (slow) the quick run through the command line with the issue's claims (the twin's unit-level
energy error under 2 % and below the naive regression's)."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from experiments import counterfactual_hvac as ch
from twinjax.causal.dynamic import rollout_with_noise
from twinjax.cli import discover, main

SIZES = {"n_days", "n_hist_days", "n_samples", "n_interventional"}


def test_quick_preset_differs_only_in_sizes():
    full, quick = ch.Config(), ch.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    assert "counterfactual_hvac" in discover()
    with pytest.raises(ValueError, match="n_hist_days"):
        ch.Config(n_hist_days=2)
    with pytest.raises(ValueError, match="dt_s"):
        ch.Config(dt_s=700.0)
    with pytest.raises(ValueError, match="setpoints_C"):
        ch.Config(setpoints_C=())
    with pytest.raises(ValueError, match="process_sd_C"):
        ch.Config(process_sd_C=(0.1, 0.0))
    with pytest.raises(ValueError, match="gain_W_K"):
        ch.Config(gain_W_K=-1.0)


def test_closed_loop_reaches_the_analytic_steady_state():
    """Constant setpoint, weather and gains, zero noise: the thermostat loop settles where the series-resistor
    steady state and the proportional law agree, ``T = (T_out + (K T_set + Q_occ) R) / (1 + K R)``."""
    config = ch.Config()
    twin = ch.make_twin(config)
    ts = jnp.arange(0.0, 20 * 86400.0, 3600.0)
    us = jnp.broadcast_to(jnp.array([21.0, 2.0, 300.0]), (ts.shape[0], 3))
    xs, status = rollout_with_noise(twin, jnp.array([15.0, 10.0]), ts, us, jnp.zeros((ts.shape[0] - 1, 2)))
    assert int(status) == 0
    R = 1.0e-3 + 4.0e-3
    expected = (2.0 + (config.gain_W_K * 21.0 + 300.0) * R) / (1.0 + config.gain_W_K * R)
    np.testing.assert_allclose(xs[-1, 0], expected, atol=1e-6)
    power = twin.dynamics.power_W(0.0, xs[-1], us[-1])
    np.testing.assert_allclose(power, config.gain_W_K * (21.0 - expected), rtol=1e-6)
    assert isinstance(twin, tj.StateSpaceModel)


@pytest.mark.slow
def test_counterfactual_hvac_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "counterfactual-hvac", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    errors = results["max_rel_error"]
    assert errors["twin"] < 0.02
    assert errors["twin"] < 0.2 * errors["regression"]
    for row in results["energy_kwh"].values():
        assert row["twin_rel_error"] < 0.02
        assert row["twin_posterior_sd_kwh"] > 0
    grad = results["gradient"]
    assert grad["autodiff_kwh_per_C"] == pytest.approx(grad["finite_difference_kwh_per_C"], rel=1e-5)
    assert (tmp_path / "figures" / "counterfactual_hvac.png").stat().st_size > 10_000
    assert "max_rel_error" in capsys.readouterr().out
