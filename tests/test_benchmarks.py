"""Smoke tests of ``python -m benchmarks``: the registry, the timing harness, and the ensemble benchmark's JSON at its
``--quick`` size (the full run is ``python -m benchmarks ensemble --json PATH``; it takes minutes, not a test)."""

import json
import math

import jax
import jax.numpy as jnp
import pytest

from benchmarks import _harness, ensemble
from benchmarks.__main__ import available, main

ENSEMBLE_BASELINES = {"numpy", "diffrax_vmap", "scipy", "floor", "ou_raw_scan"}
FILTER_BASELINES = {"dynamax_ekf", "dynamax_ukf", "filterpy_ekf", "filterpy_ukf"}


def test_registry_discovers_benchmarks(capsys):
    assert "ensemble" in available()
    assert not any(name.startswith("_") for name in available())
    assert main([]) == 0
    assert "ensemble" in capsys.readouterr().out
    assert main(["no_such_benchmark"]) == 2


def test_time_calls_counts_runs_and_traces():
    counter = _harness.TraceCounter()
    f = jax.jit(counter(lambda x: x * 2.0))
    x = jnp.ones(3)
    timing, out = _harness.time_calls(lambda: f(x), 3, traces=lambda: counter.count)
    assert len(timing.runs_s) == 3 and timing.best_s == min(timing.runs_s) and timing.compile_s >= 0
    assert timing.traces == counter.count == 1
    assert float(out[0]) == 2.0


def test_timed_retrace_is_an_error():
    counter = _harness.TraceCounter()
    f = jax.jit(counter(lambda x: x + 1.0))
    sizes = iter(range(1, 100))
    with pytest.raises(AssertionError, match="retraced"):
        _harness.time_calls(lambda: f(jnp.ones(next(sizes))), 2, traces=lambda: counter.count)
    with pytest.raises(AssertionError, match="retraced"):
        _harness.time_interleaved({"f": (lambda: f(jnp.ones(next(sizes))), lambda: counter.count)}, 2)


def test_check_targets():
    assert _harness.check(5.0, 4.0, ">=") == {"value": 5.0, "target": 4.0, "op": ">=", "met": True}
    assert _harness.check(5.0, 4.0, "<=")["met"] is False
    assert _harness.check(None, 4.0, "<=")["met"] is None
    with pytest.raises(ValueError, match="op"):
        _harness.check(1.0, 1.0, ">")


def test_ensemble_quick_json(tmp_path):
    path = tmp_path / "ensemble.json"
    assert main(["ensemble", "--quick", "--json", str(path)]) == 0
    res = json.loads(path.read_text())

    assert {"times_s", "compile_s", "speedup", "peak_memory_gb", "targets", "env"} <= set(res)
    times, compile_s = res["times_s"], res["compile_s"]
    lorenz = {"scipy", "scipy_measured", "numpy", "diffrax_vmap", "twinjax", "floor", "floor_aos"}
    assert lorenz | {"twinjax_ou", "ou_raw_scan", "ou_raw_scan_predrawn"} <= set(times)
    assert {"diffrax_vmap", "twinjax", "floor", "twinjax_ou", "ou_raw_scan"} <= set(compile_s) <= set(times)
    assert all(v > 0 and math.isfinite(v) for v in times.values())
    assert all(v >= 0 for v in compile_s.values())

    speedup = res["speedup"]
    assert set(speedup) == ENSEMBLE_BASELINES
    for baseline in ("numpy", "diffrax_vmap", "scipy", "floor"):
        assert speedup[baseline] == pytest.approx(times[baseline] / times["twinjax"])
    assert speedup["ou_raw_scan"] == pytest.approx(times["ou_raw_scan"] / times["twinjax_ou"])
    cfg = res["config"]
    assert times["scipy"] == pytest.approx(times["scipy_measured"] * cfg["members"] / cfg["scipy_members"])

    # --quick skips the 10^6-member memory run; every speedup has a target entry.
    assert res["peak_memory_gb"] is None
    assert set(res["targets"]) == ENSEMBLE_BASELINES
    for name, entry in res["targets"].items():
        assert set(entry) == {"value", "target", "op", "met"}
        assert entry["value"] == pytest.approx(speedup[name]) and isinstance(entry["met"], bool)

    # Each timed JAX case was traced once; twinjax agrees with its floor (same RK4); every member succeeded.
    assert res["traces"] and all(n == 1 for n in res["traces"].values())
    checks = res["checks"]
    assert (
        checks["twinjax_vs_floor"]["ok"] and checks["twinjax_all_successful"] and checks["diffrax_vmap_all_successful"]
    )
    assert abs(checks["ou_moments"]["z_mean"]) < 5 and abs(checks["ou_moments"]["z_var"]) < 5
    assert {"jax", "device", "device_count", "cpu_count"} <= set(res["env"]) and res["env"]["x64"] is True


def test_memory_child_reports_peak_memory():
    out = ensemble.memory_child(members=256, steps=5, dt=0.01, seed=0)
    assert out["successful_members"] == 256
    assert 0 < out["peak_memory_gb"] < 64 and out["run_s"] > 0 and out["first_s"] > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning:tensorflow_probability.*")
def test_filters_quick_json(tmp_path):
    path = tmp_path / "filters.json"
    assert main(["filters", "--quick", "--only", "pendulum", "--json", str(path)]) == 0
    res = json.loads(path.read_text())

    assert {"times_s", "compile_s", "speedup", "targets", "checks", "traces", "env"} <= set(res)
    assert res["sections"] == ["pendulum"]
    times, cfg = res["times_s"], res["config"]
    cases = {f"{lib}_{kind}" for lib in ("twinjax", "dynamax", "filterpy") for kind in ("ekf", "ukf")}
    assert cases <= set(times) and all(v > 0 and math.isfinite(v) for v in times.values())
    assert set(res["compile_s"]) == {f"{lib}_{kind}" for lib in ("twinjax", "dynamax") for kind in ("ekf", "ukf")}
    assert all(len(runs) == cfg["repeats"] for runs in res["runs_s"].values())

    # speedup = baseline / twinjax of the same filter; filterpy is timed on a few sequences and extrapolated
    speedup = res["speedup"]
    assert set(speedup) == FILTER_BASELINES
    for name in FILTER_BASELINES:
        kind = name.split("_")[1]
        assert speedup[name] == pytest.approx(times[name] / times[f"twinjax_{kind}"])
    for kind in ("ekf", "ukf"):
        scale = cfg["sequences"] / cfg["filterpy_sequences"]
        assert times[f"filterpy_{kind}"] == pytest.approx(times[f"filterpy_{kind}_measured"] * scale)
    assert set(res["targets"]) == FILTER_BASELINES
    assert all(isinstance(entry["met"], bool) for entry in res["targets"].values())

    # the same filter in every library: means agree (filterpy to rounding), each JAX case traced once
    checks = res["checks"]
    assert all(v["ok"] if isinstance(v, dict) else v for v in checks.values())
    assert checks["filterpy_ekf_max_abs_diff_means"]["value"] < 1e-10
    assert checks["filterpy_ukf_max_abs_diff_means"]["value"] < 1e-10
    assert res["traces"] and all(n == 1 for n in res["traces"].values())
