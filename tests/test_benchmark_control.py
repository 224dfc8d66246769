"""Smoke test of ``python -m benchmarks control --quick``: the JSON keys and the accuracy figures (the full run is
``python -m benchmarks control --json PATH``; the latency target is measured there, not asserted here)."""

import json

import pytest

from benchmarks.__main__ import available, main


def test_control_quick_json(tmp_path):
    assert "control" in available()
    path = tmp_path / "control.json"
    assert main(["control", "--quick", "--json", str(path)]) == 0
    res = json.loads(path.read_text())

    assert {"times_s", "compile_s", "speedup", "latency_ms", "accuracy", "targets", "env"} <= set(res)
    assert {"twinjax_mpc", "mpc_median_ms", "ipopt", "ipopt_cold"} <= set(res["times_s"])
    assert set(res["speedup"]) == {"ipopt", "ipopt_cold"}
    assert {"median", "p99"} <= set(res["latency_ms"])
    assert 0 < res["latency_ms"]["median"] <= res["latency_ms"]["p99"]
    assert res["times_s"]["mpc_median_ms"] == pytest.approx(res["latency_ms"]["median"], rel=1e-9)
    acc = res["accuracy"]
    assert acc["all_converged"] and res["ipopt_all_succeeded"]
    assert acc["cost_rel_diff_vs_ipopt_max"] < 1e-3 and acc["kkt_residual_max"] < 1e-6
    assert acc["constraint_violation_max"] < 1e-6
    assert res["targets"]["cost_rel_diff_vs_ipopt"]["met"] is True
    assert set(res["targets"]) == {"latency_median_ms", "cost_rel_diff_vs_ipopt"}
