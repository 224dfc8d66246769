"""Tests of `twinjax sweep` (twinjax/sweep.py) on the toy experiments of tests/sweep_pkg and the repository's own.

Truth: every member of a vmapped, sharded sweep equals ``evaluate`` called directly on the concrete config and key
(and, for the toy, the closed form ``x_k = (1 − lr)^k x_0``); tests/conftest.py gives 4 virtual CPU devices.
"""

import csv
import dataclasses
import functools
import importlib.util
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from tests.helpers import assert_tree_allclose
from tests.sweep_pkg import toy, toy_python, toy_static
from twinjax import cli
from twinjax.sweep import parse_grid, sweep

PKG = "tests.sweep_pkg"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _direct(module, config, row, jit=True):
    """``evaluate`` on the member's concrete config (Python values, no tracer; a static argument under ``jit``) and
    key, outside any sweep machinery (no vmap, no sharding)."""
    concrete = dataclasses.replace(config, **row["values"])
    evaluate = _evaluate_static(module.evaluate) if jit else module.evaluate
    return jax.device_get(evaluate(concrete, jax.random.key(row["seed"])))


@functools.cache
def _evaluate_static(evaluate):
    return jax.jit(evaluate, static_argnums=0)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------------------------
# the engine


def test_vmapped_sharded_members_equal_direct_evaluate():
    toy.TRACES = 0
    config = toy.Config()
    result = sweep(toy, config, {"lr": [0.1, 0.2, 0.3], "n": [4, 8]}, 2, verbose=False)
    # evaluate traced once per group (the failed probe with n traced raises before it counts)
    assert toy.TRACES == len(result.groups) == 2

    # grid points × seeds, point-major, seeds config.seed + i
    assert [(r["point"], r["seed"]) for r in result.rows] == [(p, s) for p in range(6) for s in (0, 1)]
    assert result.points[1] == {"lr": 0.1, "n": 8}
    for row in result.rows:
        assert row["ok"] and row["error"] is None
        assert_tree_allclose(row["metrics"], _direct(toy, config, row))
        # the closed form: x_steps = (1 − lr)^steps x_0
        x0 = np.asarray(jax.random.normal(jax.random.key(row["seed"]), (row["values"]["n"],)))
        factor = (1 - row["values"]["lr"]) ** config.steps
        np.testing.assert_allclose(row["metrics"]["x"], factor * x0, rtol=1e-12)
        np.testing.assert_allclose(row["metrics"]["loss"], 0.5 * factor**2 * np.sum(x0**2), rtol=1e-12)

    # n sets a shape, so it is static: two compiled groups; lr is traced and shares one
    assert result.tracing["traced"] == ["lr"]
    assert "Shapes must be" in result.tracing["static"]["n"]
    assert [g["static"] for g in result.groups] == [{"n": 4}, {"n": 8}]
    assert all(g["traced"] == ["lr"] and g["mode"] == "vmap" for g in result.groups)

    # 6 members per group padded to 8 and split over the 4 devices: 2 rows per device
    for group in result.groups:
        assert group["n_devices"] == 4 and group["sharding"] == "P('sweep',)"
        assert group["padded_to"] == 8 and group["shard_sizes"] == [2, 2, 2, 2]
    assert result.devices == [str(d) for d in jax.devices()] and len(result.devices) == 4


def test_int_field_traced_when_it_can_be():
    # steps bounds a fori_loop: it traces, so lr × steps is one compiled call traced once
    toy.TRACES = 0
    config = toy.Config(n=3)
    result = sweep(toy, config, {"lr": [0.1, 0.5], "steps": [1, 4, 7]}, 2, verbose=False)
    assert toy.TRACES == 1
    assert result.tracing == {
        "traced": ["lr", "steps"],
        "static": {},
        "probes": [{"traced": ["lr", "steps"], "error": None}],
    }
    assert len(result.groups) == 1
    assert result.groups[0]["members"] == 12 and result.groups[0]["shard_sizes"] == [3, 3, 3, 3]
    for row in result.rows:
        assert_tree_allclose(row["metrics"], _direct(toy, config, row))


def test_devices_argument_and_padding():
    devices = jax.devices()[:2]
    result = sweep(toy, toy.Config(), {"lr": [0.1, 0.2, 0.3]}, 1, devices=devices, verbose=False)
    (group,) = result.groups
    assert group["n_devices"] == 2 and group["padded_to"] == 4 and group["shard_sizes"] == [2, 2]
    assert len(result.rows) == 3  # the padding member is dropped
    assert result.devices == [str(d) for d in devices]


def test_static_floats_split_groups():
    config = toy_static.Config()
    grid = {"decay": [1.0, 2.0], "dt": [0.1, 0.25], "threshold": [0.0, 0.9]}
    result = sweep(toy_static, config, grid, 2, verbose=False)
    assert result.tracing["traced"] == ["decay"]
    assert "ConcretizationTypeError" in result.tracing["static"]["dt"]
    assert "TracerBoolConversionError" in result.tracing["static"]["threshold"]
    assert [g["static"] for g in result.groups] == [
        {"dt": 0.1, "threshold": 0.0},
        {"dt": 0.1, "threshold": 0.9},
        {"dt": 0.25, "threshold": 0.0},
        {"dt": 0.25, "threshold": 0.9},
    ]
    for row in result.rows:
        assert row["ok"]
        assert_tree_allclose(row["metrics"], _direct(toy_static, config, row))


def test_nan_member_is_failed_and_the_others_intact():
    config = toy.Config()
    result = sweep(toy, config, {"lr": [0.5, 1.5, 0.25]}, 2, verbose=False)
    failed = [(f["values"]["lr"], f["seed"], f["error"]) for f in result.failures]
    assert failed == [(1.5, 0, "non-finite metrics: rate"), (1.5, 1, "non-finite metrics: rate")]
    assert result.n_failed == 2
    for row in result.rows:
        assert_tree_allclose(row["metrics"], _direct(toy, config, row))  # NaN where evaluate gives NaN, only there
    summary = result.summary()
    assert [s["n_ok"] for s in summary] == [2, 0, 2]
    assert math.isnan(summary[1]["loss.mean"])
    losses = [float(r["metrics"]["loss"]) for r in result.rows if r["point"] == 2]
    assert summary[2]["loss.mean"] == pytest.approx(np.mean(losses), rel=1e-14)
    assert summary[2]["loss.sd"] == pytest.approx(np.std(losses, ddof=1), rel=1e-12)


def test_runtime_error_of_one_member_is_isolated(capsys):
    # eqx.error_if raises inside the compiled, sharded call: the group is rerun member by member
    config = toy.Config(limit=1.0)
    result = sweep(toy, config, {"lr": [0.1, 5.0]}, 2)
    (group,) = result.groups
    assert group["mode"] == "vmap, then one by one" and "lr exceeds limit" in group["note"]
    assert [(f["values"]["lr"], f["seed"]) for f in result.failures] == [(5.0, 0), (5.0, 1)]
    assert all("lr exceeds limit" in f["error"] for f in result.failures)
    for row in result.rows[:2]:
        assert row["ok"]
        assert_tree_allclose(row["metrics"], _direct(toy, config, row))
    assert "rerunning its members one by one" in capsys.readouterr().err


def test_untraceable_experiment_runs_sequentially(capsys):
    config = toy_python.Config()
    result = sweep(toy_python, config, {"lr": [0.5, 2.0, 0.25]}, 2)
    assert result.tracing["traced"] == [] and "ConcretizationTypeError" in result.tracing["static"]["lr"]
    assert [g["mode"] for g in result.groups] == ["sequential"]
    assert "cannot be traced (ConcretizationTypeError" in result.notes[0]
    assert "cannot be traced" in capsys.readouterr().err
    assert [(f["values"]["lr"], f["seed"], f["error"]) for f in result.failures] == [
        (2.0, 0, "FloatingPointError: lr=2.0 diverges"),
        (2.0, 1, "FloatingPointError: lr=2.0 diverges"),
    ]
    for row in result.rows:
        if row["ok"]:
            assert row["metrics"] == _direct(toy_python, config, row, jit=False)
    assert result.scalar_metrics() == ["label", "mean", "scaled"]  # the text metric goes to results.csv only


def test_single_values_are_overrides():
    result = sweep(toy, toy.Config(), {"lr": [0.2], "n": [3, 5]}, 1, verbose=False)
    assert result.grid == {"n": [3, 5]} and result.overrides == {"lr": 0.2}
    assert result.config.lr == 0.2 and [r["values"] for r in result.rows] == [{"n": 3}, {"n": 5}]
    base = sweep(toy, toy.Config(seed=7), {}, 2, verbose=False)  # no grid: the base config over seeds
    assert [r["seed"] for r in base.rows] == [7, 8] and base.points == [{}]


def test_string_field_is_static():
    config = toy.Config()
    result = sweep(toy, config, {"mode": ["sum", "mean"], "lr": [0.1, 0.2]}, 1, verbose=False)
    assert result.tracing["traced"] == ["lr"] and "not a number (str values)" in result.tracing["static"]["mode"]
    assert [g["static"] for g in result.groups] == [{"mode": "sum"}, {"mode": "mean"}]
    for row in result.rows:
        assert_tree_allclose(row["metrics"], _direct(toy, config, row))


@dataclasses.dataclass(frozen=True)
class _Inner:
    rate: float = 1.0
    size: int = 3


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner = _Inner()
    offset: float = 0.0
    seed: int = 0


def _nested_evaluate(config, key):
    x = jax.random.normal(key, (config.inner.size,))
    return {"y": jax.numpy.sum(config.inner.rate * x) + config.offset}


def test_nested_fields_and_array_values():
    module = types.ModuleType("nested_experiment")
    module.Config, module.evaluate = _Outer, _nested_evaluate
    config = _Outer()
    grid = {"inner.rate": np.array([0.5, 2.0]), "inner.size": [2, 5], "offset": [1]}  # 1 → 1.0 (float field)
    result = sweep(module, config, grid, 2, verbose=False)
    assert result.tracing["traced"] == ["inner.rate"] and list(result.tracing["static"]) == ["inner.size"]
    assert result.overrides == {"offset": 1.0} and config.inner == _Inner()  # the base config is not mutated
    for row in result.rows:
        inner = _Inner(**{k.split(".")[1]: v for k, v in row["values"].items()})
        x = jax.random.normal(jax.random.key(row["seed"]), (inner.size,))
        assert float(row["metrics"]["y"]) == pytest.approx(float(inner.rate * x.sum() + 1.0), rel=1e-12)


def test_bad_input():
    config = toy.Config()
    with pytest.raises(ValueError, match=r"unknown config key 'nn'.*Valid keys: lr, n, steps, mode, limit, seed"):
        sweep(toy, config, {"nn": [1, 2]}, 1)
    with pytest.raises(ValueError, match=r"grid point \(n=0\) is rejected by toy.Config: `n` must be >= 1"):
        sweep(toy, config, {"lr": [0.1], "n": [4, 0]}, 1)  # the single lr is an override: the point lists n
    with pytest.raises(ValueError, match=r"`seeds` must be an integer >= 1, got 0"):
        sweep(toy, config, {"lr": [0.1]}, 0)
    with pytest.raises(ValueError, match=r"grid\['lr'\] must be a non-empty sequence"):
        sweep(toy, config, {"lr": []}, 1)
    with pytest.raises(ValueError, match=r"grid\['lr'\] must be a non-empty sequence"):
        sweep(toy, config, {"lr": "0.1,0.2"}, 1)
    with pytest.raises(ValueError, match="`seed` takes a single value"):
        sweep(toy, config, {"seed": [1, 2]}, 1)
    with pytest.raises(ValueError, match="must be a toy.Config instance"):
        sweep(toy, toy_static.Config(), {}, 1)
    with pytest.raises(ValueError, match="unknown experiment 'nope'. Available experiments: toy, toy_python"):
        sweep("nope", None, {}, 1, package=PKG)
    with pytest.raises(ValueError, match="`devices` is empty"):
        sweep(toy, config, {}, 1, devices=[])


def test_parse_grid():
    config = toy.Config()
    assert parse_grid(config, ["lr=0.1, 0.2", "n=4,8", "mode=sum"]) == {"lr": [0.1, 0.2], "n": [4, 8], "mode": ["sum"]}
    for bad, message in [
        ("lr", "malformed --set 'lr': expected key=v1,v2"),
        ("=1", "malformed --set '=1'"),
        ("lr=0.1,,0.2", "an empty value in the list"),
        ("lr=", "an empty value in the list"),
        ("lr=(0.1", "unbalanced brackets"),
        ("n=4,x", "cannot set n='x': expected int, must be an integer"),
        ("mode=sum,max", "must be one of 'sum', 'mean'"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            parse_grid(config, [bad])
    with pytest.raises(ValueError, match="given twice"):
        parse_grid(config, ["lr=0.1", "lr=0.2"])

    @dataclasses.dataclass(frozen=True)
    class WithTuple:
        sizes: tuple[int, ...] = (8,)

    assert parse_grid(WithTuple(), ["sizes=(8,8),(16,),[]"]) == {"sizes": [(8, 8), (16,), ()]}


# --------------------------------------------------------------------------------------------------------------------
# the command line


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--package", PKG, "sweep", "toy", "--set", "lr=0.1,0.2", "--seeds", "3", "--out", str(out)]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out

    record = json.loads((out / "sweep.json").read_text())
    assert record["experiment"] == "toy" and record["config"] == dataclasses.asdict(toy.Config())
    assert record["grid"] == {"lr": [0.1, 0.2]} and record["seeds"] == [0, 1, 2]
    assert record["n_members"] == 6 and record["n_failed"] == 0 and record["failures"] == []
    assert record["x64"] is True  # tests/conftest.py enables float64
    assert record["groups"][0]["n_devices"] == 4 and "compile_s" in record["groups"][0]
    assert record["argv"] == argv and record["jax_version"] == jax.__version__
    assert len(record["members"][0]["metrics"]["x"]) == 4  # array metrics are kept in sweep.json

    rows = _read_csv(out / "results.csv")
    assert list(rows[0]) == ["point", "lr", "seed", "ok", "error", "loss", "rate", "stats.max", "stats.n"]
    assert [(r["lr"], r["seed"], r["ok"]) for r in rows] == [
        (lr, s, "True") for lr in ("0.1", "0.2") for s in ("0", "1", "2")
    ]
    for row in rows:  # the CSV holds the members' metrics to full precision
        expected = _direct(toy, toy.Config(), {"values": {"lr": float(row["lr"])}, "seed": int(row["seed"])})
        assert float(row["loss"]) == pytest.approx(float(expected["loss"]), rel=1e-14)
        assert row["stats.n"] == "4"

    summary = _read_csv(out / "summary.csv")
    assert [s["lr"] for s in summary] == ["0.1", "0.2"]
    assert [s["n_members"] for s in summary] == ["3", "3"] and [s["n_ok"] for s in summary] == ["3", "3"]
    losses = [float(r["loss"]) for r in rows if r["lr"] == "0.2"]
    assert float(summary[1]["loss.mean"]) == pytest.approx(np.mean(losses), rel=1e-14)
    assert float(summary[1]["loss.sd"]) == pytest.approx(np.std(losses, ddof=1), rel=1e-12)

    lines = stdout.splitlines()
    assert lines[0].split() == ["point", "lr", "ok", "loss", "rate"]  # toy's SUMMARY_KEYS
    assert lines[2].split()[:3] == ["0", "0.1", "3/3"] and "±" in lines[2]
    assert lines[-2] == "6 of 6 members succeeded, 0 failed"
    assert lines[-1] == f"sweep folder: {out}"


def test_cli_quick_grid_and_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--package", PKG, "sweep", "toy", "--quick", "--set", "lr=0.1,0.2", "n=3", "--set", "mode=mean"]
    assert cli.main(argv) == 0
    (folder,) = (tmp_path / "runs" / "toy").iterdir()
    assert folder.name.startswith("sweep-")
    record = json.loads((folder / "sweep.json").read_text())
    assert record["config"]["steps"] == 3 and record["config"]["mode"] == "mean" and record["quick"] is True
    assert record["grid"] == {"lr": [0.1, 0.2]} and record["overrides"] == {"n": 3, "mode": "mean"}
    assert len(_read_csv(folder / "results.csv")) == 2 and len(_read_csv(folder / "summary.csv")) == 2
    assert capsys.readouterr().out.splitlines()[-1] == f"sweep folder: {folder.relative_to(tmp_path)}"


def test_cli_failures_and_exit_status(tmp_path, capsys):
    # some members fail: reported, exit 0
    argv = ["--package", PKG, "sweep", "toy", "--set", "lr=0.5,1.5", "--seeds", "2", "--out", str(tmp_path / "a")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "failed: point 1 (lr=1.5), seed 0: non-finite metrics: rate" in out
    assert "2 of 4 members succeeded, 2 failed" in out
    rows = _read_csv(tmp_path / "a" / "results.csv")
    assert [r["ok"] for r in rows] == ["True", "True", "False", "False"]
    assert rows[2]["error"] == "non-finite metrics: rate" and rows[2]["rate"] == "nan"
    assert json.loads((tmp_path / "a" / "sweep.json").read_text())["n_failed"] == 2

    # every member fails: exit 1, and the files are still written
    argv = ["--package", PKG, "sweep", "toy_python", "--set", "lr=1,2", "--out", str(tmp_path / "b")]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "0 of 2 members succeeded, 2 failed" in out and "FloatingPointError: lr=1.0 diverges" in out
    assert [r["error"] for r in _read_csv(tmp_path / "b" / "results.csv")] == [
        "FloatingPointError: lr=1.0 diverges",
        "FloatingPointError: lr=2.0 diverges",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "nn=1,2"], "unknown config key 'nn' for Config. Did you mean 'n'? Valid keys: lr, n, steps"),
        (["--set", "lr"], "malformed --set 'lr': expected key=v1,v2"),
        (["--set", "lr=0.1,,0.2"], "an empty value in the list"),
        (["--set", "lr=0.1", "--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["--set", "n=4,0"], "grid point (n=0) is rejected by toy.Config: `n` must be >= 1, got 0."),
        (["--coordinator", "localhost:1"], "need --distributed"),
    ],
)
def test_cli_bad_input(args, message, tmp_path, capsys):
    out = tmp_path / "x"
    assert cli.main(["--package", PKG, "sweep", "toy", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing is created for a sweep that never starts


def test_cli_unknown_experiment_and_list_still_works(capsys):
    assert cli.main(["--package", PKG, "sweep", "nope"]) == 2
    assert "Available experiments: toy, toy_python, toy_static" in capsys.readouterr().err
    assert cli.main(["--package", PKG, "list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("toy ")


# --------------------------------------------------------------------------------------------------------------------
# the repository's experiments


@pytest.mark.skipif(importlib.util.find_spec("experiments.lotka_volterra") is None, reason="not written yet")
def test_lotka_volterra_sweep(tmp_path, capsys):
    out = tmp_path / "lv"
    argv = ["sweep", "lotka-volterra", "--quick", "--set", "lr=0.01,0.02", "--seeds", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert record["n_failed"] == 0 and "lr" in record["tracing"]["traced"]
    # a diffrax solve differentiated under shard_map(vmap) trips equinox's closure-conversion check (diffrax#765):
    # the group runs as a jit of the vmap with the batch sharded by XLA's partitioner instead, still on 4 devices
    assert [g["mode"] for g in record["groups"]] == ["vmap (sharded jit)"] and record["groups"][0]["n_devices"] == 4
    rows = _read_csv(out / "results.csv")
    assert len(rows) == 4 and len({row["loss_ratio"] for row in rows}) == 4  # lr and seed both reach the members


@pytest.mark.slow
def test_simulate_experiment_sweep():
    # tj.ensemble shards its own members over a "member" mesh: the sweep's shard_map cannot hold it, so each member
    # runs through one compiled (unbatched) function instead; members keep the sweep's key convention
    from experiments import simulate

    config = dataclasses.replace(simulate.Config.quick(), members=8, duration_s=60.0)
    result = sweep(simulate, config, {"peak_c_rate": [2.0, 3.0]}, 2, verbose=False)
    assert result.tracing["traced"] == ["peak_c_rate"]
    assert [g["mode"] for g in result.groups] == ["one by one"] and result.n_failed == 0
    with jax.enable_x64(True):
        for row in result.rows:
            assert_tree_allclose(row["metrics"], _direct(simulate, config, row), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_lorenz96_da_sweep_falls_back_to_sequential():
    from experiments import lorenz96_da

    config = dataclasses.replace(
        lorenz96_da.Config.quick(),
        cycles=20,
        burn_in=5,
        pf_particles=20,
        hovmoller_cycles=5,
        extra_seeds=0,
        tradeoff_sizes=(),
        tradeoff_size_cycles=(),
        tradeoff_members=(),
        tradeoff_intervals=(),
        tradeoff_interval_inflation=(),
        tradeoff_cycles=10,
        tradeoff_burn_in=2,
        spinup=10,
    )
    result = sweep(lorenz96_da, config, {"enkf_inflation": [1.05, 1.06]}, 1, verbose=False)
    assert [g["mode"] for g in result.groups] == ["sequential"] and result.n_failed == 0
    assert "TracerArrayConversionError" in result.notes[0]
    for row in result.rows:
        direct = _direct(lorenz96_da, config, row, jit=False)
        assert row["metrics"]["rmse"] == pytest.approx(direct["rmse"], rel=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# multi-host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_distributed(tmp_path):
    """Two CPU processes with 2 devices each (gloo collectives): one 4-device mesh; process 0 alone writes."""
    port = _free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "JAX_ENABLE_X64": "1",
        "PYTHONPATH": str(REPO),
    }
    procs = []
    for i in range(2):
        argv = [sys.executable, "-m", "twinjax", "--package", PKG, "sweep", "toy", "--set", "lr=0.1,0.2,0.3",
                "n=4,8", "--seeds", "3", "--distributed", "--coordinator", f"localhost:{port}", "--num-processes",
                "2", "--process-id", str(i), "--out", str(tmp_path / f"p{i}")]  # fmt: skip
        procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not (tmp_path / "p1").exists()
    record = json.loads((tmp_path / "p0" / "sweep.json").read_text())
    assert record["process_count"] == 2 and len(record["mesh_devices"]) == 4
    assert all(g["mode"] == "vmap" and g["n_devices"] == 4 and g["shard_sizes"] == [3, 3] for g in record["groups"])
    for member in record["members"]:
        config = dataclasses.replace(toy.Config(), **member["values"])
        expected = jax.device_get(toy.evaluate(config, jax.random.key(member["seed"])))
        assert member["metrics"]["loss"] == pytest.approx(float(expected["loss"]), rel=1e-13)
        np.testing.assert_allclose(member["metrics"]["x"], expected["x"], rtol=1e-13)
