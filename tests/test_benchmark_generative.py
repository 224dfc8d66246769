"""Smoke test of ``python -m benchmarks generative`` at its ``--quick`` size: the JSON convention (times, compile
times, speedups, throughput, targets, env), one trace per timed case, and the checks (the full run is
``python -m benchmarks generative --json PATH``; it takes minutes, not a test)."""

import json
import math

import pytest

from benchmarks.__main__ import available, main

TRAIN = {"flow_affine", "flow_spline", "vae_neural", "gan_ns", "gan_wgan_gp", "diffusion"}
PHYSICS = {"vae_physics_diffrax", "vae_physics_rk4"}
SAMPLING = {"pf_ode", "reverse_sde"}


def _check_common(res, cases):
    assert {"times_s", "compile_s", "speedup", "throughput", "targets", "checks", "traces", "env"} <= set(res)
    times, compile_s = res["times_s"], res["compile_s"]
    assert set(times) == set(compile_s) == set(res["traces"]) == cases
    assert all(v > 0 and math.isfinite(v) for v in times.values())
    assert all(v >= 0 and math.isfinite(v) for v in compile_s.values())
    assert all(n == 1 for n in res["traces"].values())  # every timed function compiled once
    assert all(v["ok"] for v in res["checks"].values())
    for case in cases:
        assert res["targets"][f"{case}_traces"] == {"value": 1, "target": 1, "op": "<=", "met": True}
    assert {"jax", "device", "device_count", "cpu_count"} <= set(res["env"]) and res["env"]["x64"] is True


def test_generative_is_registered():
    assert "generative" in available()


def test_generative_quick_sampling_json(tmp_path):
    path = tmp_path / "generative.json"
    assert main(["generative", "--quick", "--only", "sampling", "--json", str(path)]) == 0
    res = json.loads(path.read_text())
    assert res["sections"] == ["sampling"]
    _check_common(res, SAMPLING)
    times, n = res["times_s"], res["config"]["sample_n"]
    assert res["speedup"] == {"pf_ode_vs_sde": pytest.approx(times["reverse_sde"] / times["pf_ode"])}
    assert res["throughput"] == {f"{c}_samples_per_s": pytest.approx(n / times[c]) for c in SAMPLING}


@pytest.mark.slow  # ~2 min on a 2-core CPU: a dozen compilations, the diffrax PhysicsVAE step alone ~25 s
def test_generative_quick_json(tmp_path):
    path = tmp_path / "generative.json"
    assert main(["generative", "--quick", "--json", str(path)]) == 0
    res = json.loads(path.read_text())
    assert res["sections"] == ["train", "physics", "sampling"]
    _check_common(res, TRAIN | PHYSICS | SAMPLING)
    times = res["times_s"]
    assert set(res["speedup"]) == {"fused_vs_diffrax", "pf_ode_vs_sde"}
    assert res["speedup"]["fused_vs_diffrax"] == pytest.approx(times["vae_physics_diffrax"] / times["vae_physics_rk4"])
    target = res["targets"]["fused_vs_diffrax"]
    assert target["value"] == pytest.approx(res["speedup"]["fused_vs_diffrax"]) and isinstance(target["met"], bool)
    assert res["checks"]["fused_loss_matches_diffrax"]["value"] <= 1e-4
