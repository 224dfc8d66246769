"""The `lorenz96-da` experiment (Sakov–Oke Lorenz-96 twin, ../shared/REFERENCES.md) at a tiny size through the command
line, its twin against DAPPER's model, the EKF inflation it emulates, and the Lorenz-96 filter benchmark's JSON."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import lorenz96_da
from twinjax.cli import discover, main
from twinjax.inference import ekf_init, ekf_predict

from ..helpers import assert_tree_allclose

SIZES = {
    "cycles",
    "burn_in",
    "pf_particles",
    "hovmoller_cycles",
    "extra_seeds",
    "tradeoff_sizes",
    "tradeoff_size_cycles",
    "tradeoff_members",
    "tradeoff_intervals",
    "tradeoff_interval_inflation",  # one factor per interval: it follows `tradeoff_intervals`
    "tradeoff_cycles",
    "tradeoff_burn_in",
    "spinup",
}


def test_lorenz96_da_runs_through_the_cli_and_writes_outputs(tmp_path, capsys):
    """A few hundred cycles: every Kalman-type method is far below climatology (≈ 3.6) and below the observation
    noise (1); climatology itself is near 3.6; every figure and the trade-off table are written."""
    assert "lorenz96_da" in discover()
    # the trade-off runs reuse the shapes (and so the compilations) of the main runs: 300 cycles, Nx = 40
    overrides = [
        "cycles=200",
        "burn_in=100",
        "hovmoller_cycles=50",
        "tradeoff_sizes=40",
        "tradeoff_size_cycles=300",
        "tradeoff_members=24",
        "tradeoff_intervals=1",
        "tradeoff_interval_inflation=1.013",
        "tradeoff_cycles=300",
        "tradeoff_burn_in=100",
        "spinup=100",
    ]
    code = main(["run", "lorenz96-da", "--quick", "--set", *overrides, "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["cycles"] == 200
    rmse = results["rmse"]
    assert set(rmse) == {"enkf", "etkf", "denkf", "letkf", "ekf", "pf", "climatology"}
    for name in ("enkf", "etkf", "denkf", "letkf", "ekf"):
        assert rmse[name] < 0.4, (name, rmse[name])
    assert 3.0 < rmse["climatology"] < 4.2
    assert rmse["pf"] is not None and np.isfinite(rmse["pf"])
    assert all(v > 0 for v in results["ms_per_cycle"].values())
    seeds = results["seeds"]
    assert set(seeds) == {"enkf", "etkf", "denkf", "letkf"} and all(len(v["rmse"]) == 2 for v in seeds.values())
    assert all(seeds[name]["median"] < 0.4 for name in ("enkf", "denkf", "letkf"))
    trade = results["tradeoff"]
    assert {"state_size", "ensemble_size", "interval"} == set(trade)
    assert all(row["ms_per_cycle"] > 0 and row["rmse"] > 0 for group in trade.values() for row in group.values())
    for figure in ("rmse_over_time.png", "hovmoller.png", "tradeoff.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "run folder:" in out and "rmse.etkf" in out and "trade-off" in out


def test_quick_preset_differs_only_in_sizes():
    full, quick = lorenz96_da.Config(), lorenz96_da.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    with pytest.raises(ValueError, match="tradeoff_interval_inflation"):
        lorenz96_da.Config(tradeoff_intervals=(1, 2))


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_twin_is_dappers_lorenz96_step():
    """One transition of the experiment's twin is DAPPER's ``mods.Lorenz96.step`` (RK4, dt = 0.05, F = 8), and an
    interval of ``steps`` model steps is that many of them."""
    pytest.importorskip("dapper")
    from dapper.mods.Lorenz96 import step

    x = np.asarray(jax.random.normal(jax.random.key(0), (40,))) * 3 + 2
    one = lorenz96_da.make_twin(lorenz96_da.Config())
    assert_tree_allclose(one.dynamics.transition(0.0, jnp.asarray(x), jnp.zeros(0)), step(x, 0.0, 0.05), rtol=1e-12)
    three = lorenz96_da.make_twin(lorenz96_da.Config(), steps=3)
    assert three.dt == pytest.approx(0.15)
    expected = step(step(step(x, 0.0, 0.05), 0.0, 0.05), 0.0, 0.05)
    assert_tree_allclose(three.dynamics.transition(0.0, jnp.asarray(x), jnp.zeros(0)), expected, rtol=1e-12)


def test_jacobian_scaled_transition_is_dappers_ekf_inflation():
    """The EKF on the Jacobian-scaled transition forecasts the same mean and ``infl**dt`` times the covariance
    ``F P Fᵀ`` (DAPPER's ``ExtKF(infl)``), the scale being √(infl**dt)."""
    config = lorenz96_da.Config()
    model = lorenz96_da.make_twin(config)
    scale = float(np.sqrt(config.ekf_inflation**model.dt))
    scaled = lorenz96_da.JacobianScaled(model.dynamics, scale)
    model_scaled = eqx.tree_at(lambda m: m.dynamics, model, scaled)
    mean = jax.random.normal(jax.random.key(1), (40,)) + 2.0
    state = ekf_init(model, mean=mean, cov=0.3 * jnp.eye(40))
    plain = ekf_predict(model, state, 0.05)
    inflated = ekf_predict(model_scaled, ekf_init(model_scaled, mean=mean, cov=0.3 * jnp.eye(40)), 0.05)
    assert_tree_allclose(inflated.mean, plain.mean)
    assert_tree_allclose(inflated.cov, config.ekf_inflation**0.05 * plain.cov, rtol=1e-10, atol=1e-12)
    assert config.ekf_inflation**0.05 == pytest.approx(1.122, abs=1e-3)


@pytest.mark.slow  # a benchmark smoke run (23 s in CI); the benchmark itself is run for the closing note
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_filters_l96_benchmark_quick_json(tmp_path):
    """``python -m benchmarks filters_l96 --quick --json PATH``: the keys of the benchmark contract, a single trace of
    twinjax's filter, and both filters accurate on the same observations (the 0.02 RMSE agreement and the 30×
    speed target are measured by the full run, not asserted on a smoke-test size)."""
    pytest.importorskip("dapper")
    from benchmarks.__main__ import main as bench_main

    path = tmp_path / "filters_l96.json"
    assert bench_main(["filters_l96", "--quick", "--json", str(path)]) == 0
    res = json.loads(path.read_text())
    assert {"times_s", "compile_s", "speedup", "rmse", "targets", "env"} <= set(res)
    assert set(res["times_s"]) == {"twinjax_etkf", "dapper_etkf"}
    assert res["speedup"]["dapper_etkf"] == pytest.approx(
        res["times_s"]["dapper_etkf"] / res["times_s"]["twinjax_etkf"]
    )
    assert res["speedup"]["dapper_etkf"] > 1.0
    assert res["traces"]["twinjax_etkf"] == 1 and all(res["checks"].values())
    assert res["rmse"]["twinjax_etkf"] < 0.3 and res["rmse"]["dapper_etkf"] < 0.3
    assert set(res["targets"]) == {"dapper_etkf", "rmse_difference"}
