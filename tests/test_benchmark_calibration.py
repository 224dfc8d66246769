"""Smoke test of ``python -m benchmarks calibration --quick``: the JSON convention (DESIGN.md) and positive ratios.
The full run (``python -m benchmarks calibration --json PATH``, minutes) is reported in docs/sysid.md."""

import json
import math

import pytest

from benchmarks.__main__ import available, main


@pytest.mark.slow  # 77 s in CI; `python -m benchmarks calibration` is run for every closing note
def test_calibration_quick_json(tmp_path):
    assert "calibration" in available()
    path = tmp_path / "calibration.json"
    assert main(["calibration", "--quick", "--json", str(path)]) == 0  # 0: every check passed, one trace per case
    res = json.loads(path.read_text())
    assert {"times_s", "compile_s", "speedup", "targets", "checks", "adjoints", "env"} <= set(res)
    assert {"least_squares", "grad_over_forward"} == set(res["speedup"])
    assert all(v > 0 and math.isfinite(v) for v in res["speedup"].values())
    assert {"forward_rk4", "gradient_rk4_reverse", "twinjax_lm_rk4", "scipy"} <= set(res["times_s"])
    assert all(v > 0 for v in res["times_s"].values())
    for name, row in res["adjoints"].items():
        assert row["gradient_s"] > 0 and row["grad_over_forward"] > 0, name
        assert row["peak_memory_mb"] is None or row["peak_memory_mb"] > 0
    assert all(err <= 1e-4 for err in res["info"]["calibrate"]["relative_error"].values())
    assert all(n == 1 for n in res["traces"].values())
