"""The `traffic-rare` experiment: its presets and config errors, the scenario → delay map against truth (zero delay in
free flow, a point-queue delay of a full closure), and the quick run through the command line: the cross-entropy pilot
reaching the level with bounded weights, importance sampling and brute-force Monte Carlo agreeing within their combined
standard errors along the tail, the weights averaging to 1, the GPD fit equal to scipy's and pyextremes' on the same
exceedances, the figures."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import traffic_rare as tr
from twinjax.cli import discover, main

SIZES = {"n_mc", "n_is", "batch", "n_synthetic", "n_pilot"}
K_SE = 4.0


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = tr.Config(), tr.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    assert full.n_mc >= 200_000
    for field, value in (
        ("n_mc", 1),
        ("incident_prob", 1.5),
        ("ce_rho", 1.0),
        ("ce_smoothing", 0.0),
        ("defensive_weight", 0.0),
        ("n_pilot", 1),
        ("gpd_quantile", 1.0),
        ("return_periods", (0.5,)),
        ("peak_h", 3.0),
        ("delay_threshold", -1.0),
    ):
        with pytest.raises(ValueError, match=field):
            tr.Config(**{field: value})
    assert "traffic_rare" in discover()


def _scenario(**kw):
    base = {"demand_veh_h": 4500.0, "occurs": 0, "cell": 10, "start_h": 0.3, "duration_h": 0.2, "severity": 0.5}
    return {k: jnp.asarray(v) for k, v in (base | kw).items()}


def test_delay_zero_in_free_flow_and_point_queue_of_a_closure():
    """Without an incident, demand below capacity: zero delay (free flow). A near-total closure of the first cell
    (capacity factor 1e-9) during the plateau of demand ``L``, lasting ``τ`` h, queues ``L τ`` vehicles at the
    entrance, then discharges at capacity ``C``: the delay of this point queue is ``½ L τ² · C/(C − L)`` veh·h
    (triangle of height ``L τ``, base ``τ + L τ/(C − L)``) plus ``(L/v_f) Δx τ`` for the vehicles held in the closed
    cell, exact up to the 18 s time step."""
    config = tr.Config.quick()
    with jax.enable_x64(True):
        assert abs(float(tr.scenario_delay(config, _scenario()))) < 1e-6
        L, C, tau = 3000.0, 6000.0, 0.2
        delay = float(
            tr.scenario_delay(config, _scenario(demand_veh_h=L, occurs=1, cell=0, severity=1 - 1e-9, duration_h=tau))
        )
    # plus the vehicles caught in the closed cell itself: density L/v_f over Δx, held for τ
    expected = 0.5 * L * tau**2 * C / (C - L) + L / 100.0 * 0.5 * tau
    # the time step shifts the queue's start and end by at most one step each: L Δt τ-order slack
    assert abs(delay - expected) <= 2 * L * config.dt_h * tau * C / (C - L), (delay, expected)


def test_traffic_rare_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "traffic-rare", "--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    p = r["probability"]
    # IS and MC agree at the rare threshold and along the whole tail where MC sees >= 10 events
    assert abs(p["difference_in_se"]) <= K_SE
    c = r["curves"]
    mc, mc_se, is_, is_se = (np.array(c[k], dtype=float) for k in ("mc", "mc_se", "is", "is_se"))
    seen = mc * tr.Config.quick().n_mc >= 10
    assert seen.sum() >= 10
    assert np.all(np.abs(mc - is_)[seen] <= K_SE * np.sqrt(mc_se**2 + is_se**2)[seen])
    assert abs(p["is_weight_mean"] - 1.0) <= K_SE * p["is_weight_se"]
    assert p["is_events"] > 10 * max(p["mc_events"], 1) * tr.Config.quick().n_is / tr.Config.quick().n_mc
    assert r["vrf"]["per_sample"] > 1.0
    # the cross-entropy pilot reached d through rising levels; the defensive mixture bounds the weights by 1/λ
    prop = r["proposal"]
    assert prop["levels"][-1] == p["threshold_veh_h"] and np.all(np.diff(prop["levels"]) > 0)
    assert prop["pilot_scenarios"] == prop["n_levels"] * tr.Config.quick().n_pilot
    assert prop["max_log_weight"] <= np.log(1.0 / prop["defensive_weight"]) + 1e-9
    assert prop["severity_beta"][0] > tr.Config.quick().severity_a  # the tilt alone would have infinite variance
    assert p["is_event_ess"] <= p["is_events"]
    # GPD: twinjax's maximum likelihood is scipy's and pyextremes' (same exceedances), return levels likewise
    g = r["gpd"]
    assert g["twinjax"]["converged"]
    assert g["twinjax"]["loglik"] >= g["scipy"]["loglik"] - 1e-6
    for other in ("scipy", "pyextremes"):
        np.testing.assert_allclose(
            [g["twinjax"]["shape"], g["twinjax"]["scale"]], [g[other]["shape"], g[other]["scale"]], rtol=1e-3, atol=1e-4
        )
    assert g["pyextremes"]["n"] == g["n_exceedances"]
    levels = g["return_levels"]
    np.testing.assert_allclose(levels["twinjax"], levels["scipy"], rtol=1e-3)
    np.testing.assert_allclose(levels["twinjax"], levels["pyextremes"], rtol=1e-3)
    # the GPD tail probability at d agrees with the IS estimate within their combined SE
    assert abs(p["gpd"] - p["is"]) <= K_SE * np.hypot(p["gpd_se"], p["is_se"])
    assert r["extreme_scenario"]["delay"] > p["threshold_veh_h"]
    for fig in ("traffic_rare_tail.png", "traffic_rare_extreme.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 10_000
    assert "vrf.per_sample" in capsys.readouterr().out
