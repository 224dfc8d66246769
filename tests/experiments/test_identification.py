"""The `identification` experiment: its preset, a two-graph audit (every estimate near the truth, the front-door
families declared non-identified by the back-door criterion and verified by path enumeration), and (slow) the quick
run through the command line."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import identification
from twinjax.cli import discover, main

SIZES = {"n_dags", "sample_sizes", "n_boot", "n_sprinkler"}


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = identification.Config(), identification.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    assert full.n_dags >= 200
    for field, value in (("n_dags", 1), ("n_nodes", 2), ("edge_prob", 0.0), ("n_latent", 6), ("sample_sizes", (10,))):
        with pytest.raises(ValueError, match=field):
            identification.Config(**{field: value})
    assert "identification" in discover()


def test_small_audit_is_accurate_and_declares_frontdoor_families_non_identified():
    config = dataclasses.replace(
        identification.Config.quick(), n_dags=2, n_boot=2, sample_sizes=(500, 2000), n_sprinkler=20_000
    )
    with jax.enable_x64(True):
        out = identification.evaluate(config, jax.random.key(3))
    results = identification.summarise(out, config)
    for fam in ("linear_frontdoor", "binary_frontdoor"):
        assert out["declared"][fam] == {"not_identified": 2, "verified": 2}
        assert results["table"][fam]["n_queries"] == 2
    n2 = config.sample_sizes[1]
    for fam, recs in out["records"].items():
        for rec in recs:
            adj = rec[str(n2)]["adjusted"]
            if adj is not None:  # a gross error would be a wrong formula, not sampling error (sd ≲ 0.06 here)
                assert abs(adj["error"]) < 0.3, (fam, rec)
    for fam in out["declared"]:
        assert out["declared"][fam]["verified"] == out["declared"][fam]["not_identified"]
    sprinkler = results["sprinkler"]
    assert sprinkler["exact_error"] < 1e-12
    assert sprinkler["mc_error_in_se"] < 4


@pytest.mark.slow
def test_identification_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "identification", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["table"]) == set(identification.FAMILIES)
    assert results["identification"]["linear_frontdoor"]["not_identified"] == identification.Config.quick().n_dags
    assert abs(results["sprinkler"]["exact"] - 0.99) < 1e-12
    assert (tmp_path / "figures" / "identification_errors.png").stat().st_size > 10_000
    assert "sprinkler.exact" in capsys.readouterr().out


@pytest.mark.slow
def test_full_claims():
    """At the default sizes: errors shrink like 1/√n (median ratio within 30 % of √16 = 4), most adjusted errors within
    2 bootstrap SE, the naive estimate clearly biased on the front-door (hidden-confounder) families, and every
    non-identified declaration verified."""
    config = identification.Config()
    with jax.enable_x64(True):
        out = identification.evaluate(config, jax.random.key(config.seed))
    results = identification.summarise(out, config)
    n1, n2 = config.sample_sizes
    for fam, rate in results["rate"].items():
        assert abs(rate["median_ratio"] / rate["expected"] - 1) < 0.3, (fam, rate)
    for fam, row in results["table"].items():
        assert row[f"adjusted_n{n2}"]["within_2se"] > 0.8, (fam, row)
    for fam in identification.FAMILIES:  # on the confounded queries the naive contrast is biased
        row = results["table"][fam]["confounded"]
        assert row[f"naive_n{n2}"]["median_abs"] > 3 * row[f"adjusted_n{n2}"]["median_abs"], (fam, row)
    for fam, d in results["identification"].items():
        assert d["verified"] == d["not_identified"]
    assert np.isfinite(results["sprinkler"]["monte_carlo"])
