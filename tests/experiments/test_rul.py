"""The `rul` experiment: presets, a small calibrated coverage study, the quick run through the command line and (slow)
the full claims (coverage over >= 200 units within 0.90 ± 2 SE; SVI and NUTS within the posterior tolerances)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import rul
from twinjax.cli import discover, main

SIZES = {"n_units", "n_draws", "horizon", "svi_steps", "nuts_chains", "nuts_warmup", "nuts_samples"}


def test_quick_preset_differs_only_in_sizes():
    full, quick = rul.Config(), rul.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    assert full.n_units >= 200
    with pytest.raises(ValueError, match="level_fractions"):
        rul.Config(level_fractions=(0.5, 1.2))
    with pytest.raises(ValueError, match="shape"):
        rul.Config(shape=0.5)
    assert "rul" in discover()


def test_small_coverage_study_is_calibrated():
    """48 units drawn from the prior: at each stopping time the 90 % intervals cover the true failure time for a
    fraction within 3 binomial SE of 0.9, no unit is lost, and the intervals narrow as the units age."""
    config = dataclasses.replace(rul.Config.quick(), n_draws=150, horizon=800)
    with jax.enable_x64(True):
        out = jax.device_get(rul._coverage_jit(config, jax.random.key(11)))
    widths = []
    for fraction in ("25%", "50%", "75%"):
        row = out[fraction]
        n = int(row["n_valid"])
        assert n == config.n_units
        assert round(float(row["coverage"]) * n) == pytest.approx(float(row["coverage"]) * n)
        assert abs(float(row["coverage"]) - 0.9) <= 3 * float(row["se"]), (fraction, row)
        widths.append(float(row["mean_width"]))
    assert widths[0] > widths[1] > widths[2]
    assert int(out["life"]["censored_units"]) == 0


@pytest.mark.slow
def test_rul_runs_through_the_cli(tmp_path, capsys):
    """Quick preset through ``twinjax run rul --quick``: the table within the issue's tolerances (SVI and NUTS against
    the conjugate posterior), coverages as fractions of the units, the α–λ unit's band covering most of its life, the
    figures and the table file."""
    assert main(["run", "rul", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["table_pass"] is True
    assert results["worst"]["mean_err_in_sd"] <= 0.1 and results["worst"]["sd_rel_err"] <= 0.1
    for prior in ("known_sigma", "nig"):
        assert set(results["table"][prior]) >= {"exact", "svi", "nuts", "errors"}
        assert results["table"][prior]["nuts_rhat"] < 1.05
    n = rul.Config.quick().n_units
    for fraction, value in results["coverage_90"].items():
        assert value * results["n_valid"][fraction] == pytest.approx(round(value * results["n_valid"][fraction]))
        assert abs(value - 0.9) <= 3 * results["coverage_se"][fraction]
        assert results["n_valid"][fraction] == n
    assert results["alpha_lambda"]["band_covers_fraction"] > 0.5
    for figure in ("rul_alpha_lambda.png", "rul_coverage.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 10_000
    assert "nuts" in (tmp_path / "posterior_table.txt").read_text()
    out = capsys.readouterr().out
    assert "coverage_90" in out and "run folder:" in out


@pytest.mark.slow
def test_full_claims():
    """The issue's acceptance criteria at the default sizes: 1000 units, each stopping time's coverage within
    0.90 ± 2 SE; every SVI and NUTS posterior mean within 0.1 exact sd, every sd within 10 %."""
    config = rul.Config()
    key = jax.random.key(config.seed)
    k_table, k_cov, _ = jax.random.split(key, 3)
    with jax.enable_x64(True):
        coverage = jax.device_get(rul._coverage_jit(config, k_cov))
        table = jax.device_get(rul.posterior_table(config, k_table))
    for fraction in ("25%", "50%", "75%"):
        row = coverage[fraction]
        assert int(row["n_valid"]) >= 200
        assert abs(float(row["coverage"]) - 0.9) <= 2 * float(row["se"]), (fraction, row)
    for prior in ("known_sigma", "nig"):
        for name, value in table[prior]["errors"].items():
            assert float(value) <= 0.1, (prior, name, value)
    assert np.isfinite(float(table["nig"]["nuts_rhat"]))
