"""The `anomaly` experiment: its preset and config checks, a quick run through the command line, and (slow) the full
claim — the conformal false-alarm rate within ``[α − 2 SE − 1/(M + 1), α + 2 SE]`` on 10⁵ fresh nominal windows of
both twins for α ∈ {0.01, 0.05}."""

import dataclasses
import json
import math

import jax
import pytest

from experiments import anomaly
from twinjax.cli import discover, main

SIZES = {"n_calibration", "n_test", "n_faulty", "chunk"}


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = anomaly.Config(), anomaly.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    assert full.n_test >= 100_000 and set(full.alphas) == {0.01, 0.05} and set(full.twins) == {"battery", "pendulum"}
    assert "anomaly" in discover()
    for kwargs, name in [
        ({"alphas": (0.0,)}, "alphas"),
        ({"twins": ("lorenz",)}, "twins"),
        ({"n_test": 1_500}, "n_test"),
        ({"onset": 40}, "onset"),
        ({"stream_width": 0}, "stream_width"),
        ({"noise_factor": 0.5}, "noise_factor"),
        ({"n_calibration": 50, "n_test": 50, "n_faulty": 50, "chunk": 50}, "n_calibration"),
    ]:
        with pytest.raises(ValueError, match=name):
            anomaly.Config(**kwargs)


def test_anomaly_runs_through_the_cli(tmp_path, capsys):
    """Quick run of the pendulum twin (one compiled program): false-alarm rates within 4 total SE of α (the quick
    calibration set is small, so its own spread √(α(1 − α)/M) is included), faults ranked above nominal windows, a
    stuck sensor always detected, figures written."""
    argv = ["run", "anomaly", "--quick", "--set", "twins=pendulum", "--out", str(tmp_path)]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    quick = anomaly.Config.quick()
    m, n = quick.n_calibration, quick.n_test
    for alpha in quick.alphas:
        far = results["false_alarm_rate"]["pendulum"][f"alpha={alpha}"]
        total_se = math.sqrt(alpha * (1 - alpha) * (1 / n + 1 / m))
        assert abs(far["rate"] - alpha) <= 4 * total_se
        assert far["marginal_rate"] <= alpha and far["marginal_rate"] >= alpha - 1 / (m + 1)
    auc = results["auc"]["pendulum"]
    assert set(auc) == set(anomaly.FAULTS)
    assert all(v > 0.6 for v in auc.values())
    assert auc["stuck"] > 0.99 and auc["variance"] > 0.95
    delays = results["detection_delay"]["pendulum"]
    assert delays["stuck"]["detected"] == 1.0 and delays["stuck"]["median_steps"] is not None
    assert delays["nominal"]["detected"] < delays["variance"]["detected"]
    for fig in ("anomaly_histogram.png", "anomaly_stream.png", "anomaly_roc.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 10_000
    assert "false_alarm_rate.pendulum" in capsys.readouterr().out


@pytest.mark.slow
def test_full_claim_false_alarm_rate_bounds():
    """≥ 10⁵ fresh nominal windows of the battery and the pendulum twin, M = 5·10⁵ calibration windows: for
    α ∈ {0.01, 0.05} the false-alarm rate lies in [α − 2 SE − 1/(M + 1), α + 2 SE]. The default configuration and
    seed, so it reproduces the numbers in the experiment's docstring (10–13 minutes on 2 cores)."""
    config = anomaly.Config()
    assert config.n_test >= 100_000
    with jax.enable_x64(True):
        results = anomaly.evaluate(config, jax.random.key(config.seed))
    for twin in ("battery", "pendulum"):
        for alpha in (0.01, 0.05):
            far = results["false_alarm_rate"][twin][f"alpha={alpha}"]
            assert far["lower"] <= far["rate"] <= far["upper"], (twin, alpha, far)
    assert results["all_within_bounds"]
