"""The `virtual-trial` experiment at its quick size through the command line, its populations, and its preset."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from scipy import stats

from experiments import virtual_trial as vt
from twinjax.causal.trials import transported_effect
from twinjax.cli import main
from twinjax.risk.shift import fit_classifier

K = 4.0  # standard errors allowed between a Monte-Carlo estimate and its truth


def test_populations_meet_their_definitions(key):
    src = np.asarray(vt.source_covariates(key, 2000))
    tgt = np.asarray(vt.target_covariates(key, 2000))
    assert src.shape == tgt.shape == (2000, 3)
    assert src[:, 2].min() >= 30.0  # the exclusion criterion
    assert (tgt[:, 2] < 30).mean() > 0.05 and np.median(tgt[:, 1]) > np.median(src[:, 1]) + 10


def test_ages_are_the_stated_truncated_normals(key):
    for draw, (mean, sd, lo, hi) in ((vt.source_covariates, vt.SOURCE[:4]), (vt.target_covariates, vt.TARGET[:4])):
        if draw is vt.source_covariates:  # the exclusion CrCL >= 30 also shapes the source's ages: test the generator
            age = np.asarray(vt._draw(key, 4000, vt.SOURCE)[:, 1])
        else:
            age = np.asarray(draw(key, 4000)[:, 1])
        assert lo <= age.min() and age.max() <= hi
        law = stats.truncnorm((lo - mean) / sd, (hi - mean) / sd, loc=mean, scale=sd)
        assert stats.kstest(age, law.cdf).pvalue > 1e-3


def test_exact_density_ratio_reweights_the_source_to_the_target(key):
    """``E_s[w f] / E_s[w] = E_t[f | CrCL ≥ 30]`` with the exact ``w = p_t / p_s``: against a direct target sample."""
    k_s, k_t = jax.random.split(key)
    src, tgt = np.asarray(vt.source_covariates(k_s, 8000)), np.asarray(vt.target_covariates(k_t, 8000))
    log_w = np.asarray(vt.target_log_density(src) - vt.source_log_density(src))
    assert np.all(np.isfinite(vt.source_log_density(src))) and not np.any(np.isnan(log_w))
    assert np.all(np.isneginf(np.asarray(vt.source_log_density(tgt[tgt[:, 2] < 30]))))  # outside the source support
    w = np.exp(log_w - log_w.max())
    eligible = tgt[tgt[:, 2] >= 30]
    for f in (lambda x: x[:, 1], lambda x: np.log(x[:, 2]), lambda x: np.log(x[:, 0]), lambda x: x[:, 1] > 75):
        fs, ft = f(src).astype(float), f(eligible).astype(float)
        est = np.sum(w * fs) / w.sum()
        se_w = np.sqrt(np.sum((w / w.sum()) ** 2 * (fs - est) ** 2))
        se = np.hypot(se_w, ft.std() / np.sqrt(ft.size))
        assert abs(est - ft.mean()) < K * se, (est, ft.mean(), se)


def test_bootstrap_replicates_are_resampled_fits_and_estimates():
    rng = np.random.default_rng(0)
    n, m = 300, 200
    f_src, f_tgt = rng.standard_normal((n, 2)), rng.standard_normal((m, 2)) + 0.5
    logits, counts = vt._bootstrap_classifier(jax.random.key(1), f_src, f_tgt, 3, 50)
    assert logits.shape == counts.shape == (3, n) and np.all(counts.sum(1) == n)
    again, _ = vt._bootstrap_classifier(jax.random.key(1), f_src, f_tgt, 3, 50)
    np.testing.assert_array_equal(logits, again)
    # logistic regression starts at zero, so a replicate is the direct fit on its resampled source (counts as weights:
    # a fit depends on the resampled data only through the multiset, and the target resample is reproduced)
    k_i, k_j, k_fit = jax.random.split(jax.random.key(1), 3)
    idx = np.asarray(jax.random.randint(k_i, (3, n), 0, n))
    jdx = np.asarray(jax.random.randint(k_j, (3, m), 0, m))
    np.testing.assert_array_equal(counts[0], np.bincount(idx[0], minlength=n))
    direct = fit_classifier(jax.random.split(k_fit, 3)[0], f_src[idx[0]], f_tgt[jdx[0]], steps=50).logit(f_src)
    np.testing.assert_allclose(logits[0], np.asarray(direct), rtol=1e-9, atol=1e-9)
    # a replicate's weighted estimate (weights × counts) is the estimate on the resampled patients
    y, t, w = rng.standard_normal(n), rng.random(n) < 0.5, np.exp(logits[0])
    masks = np.stack([np.ones(n, bool), rng.random(n) < 0.5])
    est = vt._weighted_effects(y, t, w * counts[:1], masks)
    for k, mk in enumerate(masks):
        keep = mk[idx[0]]
        ref = transported_effect(y[idx[0]][keep], t[idx[0]][keep], w[idx[0]][keep]).estimate
        assert est[0, k] == pytest.approx(ref, rel=1e-12)


def test_virtual_trial_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "virtual_trial", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    eff, pos = res["effects"], res["positivity"]
    # the target is older and renally impaired: a larger effect than the source, which the naive estimate misses
    assert eff["true_target"] > eff["true_source"] + 10
    naive = res["estimates"]["naive_virtual"]
    assert abs(naive["estimate"] - eff["true_source"]) < 4 * naive["standard_error"]
    assert abs(res["errors_in_se"]["naive_virtual_vs_target"]) > 4
    # severe renal impairment is excluded from the source: flagged, the all-target estimate refused
    assert {"CrCL<30, age<65", "CrCL<30, age 65-75", "CrCL<30, age>=75"} <= set(pos["unsupported_strata"])
    assert pos["refused_all_target_estimate"] and "positivity" in pos["refusal_message"]
    rows = {r["name"]: r for r in res["audit"]}
    assert len(rows) == 9 and all(rows[n]["estimate"] is None for n in pos["unsupported_strata"])
    assert all(r["n_source"] == 0 for n, r in rows.items() if n.startswith("CrCL<30"))
    for name in ("exact", "classifier"):
        est = res["estimates"][f"transported_virtual_{name}"]
        assert est["coverage"] == pytest.approx(1 - pos["unsupported_fraction"])
        assert est["bootstrap_se"] > 0
        for row in res["audits"][f"virtual_{name}"]:
            assert (row["estimate"] is None) == (not row["supported"]) == (row["bootstrap_se"] is None)
    assert np.isfinite(res["flow"]["mmd_p_value"]) and set(res["flow"]["marginal_mean_z"]) == set(vt.PARAMETER_NAMES)
    assert (tmp_path / "figures" / "virtual_trial.png").stat().st_size > 10_000
    assert (tmp_path / "metrics.csv").read_text().startswith("step,loss")
    assert "effects.true_target" in capsys.readouterr().out


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = vt.Config(), vt.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= {
        "n_source", "n_holdout", "n_target_covariates", "n_target_truth", "steps", "classifier_steps", "permutations",
        "virtual_per_patient", "bootstrap",
    }  # fmt: skip
    with pytest.raises(ValueError, match="n_source"):
        vt.Config(n_source=10)
    with pytest.raises(ValueError, match="noise_sd"):
        vt.Config(noise_sd=0.0)
    with pytest.raises(ValueError, match="min_ess"):
        vt.Config(min_ess=0.5)
    with pytest.raises(ValueError, match="bootstrap"):
        vt.Config(bootstrap=1)


def test_same_seed_same_populations():
    a = vt.source_covariates(jax.random.key(3), 100)
    b = vt.source_covariates(jax.random.key(3), 100)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_full_run_transports_to_the_truth(tmp_path):
    """The default config (about 2 minutes): with the exact density ratio, the transported virtual trial and the
    transported real source trial match the true effect in the supported part of the target within 3 of their
    bootstrap standard errors, and so does the classifier ratio; most supported subgroups' intervals cover."""
    res = vt.run(vt.Config(), tmp_path)
    err = res["errors_in_se"]
    for name in ("virtual_exact", "source_trial_exact", "virtual_classifier", "source_trial_classifier"):
        assert abs(err[f"transported_{name}_vs_target_supported_bootstrap_se"]) < 3.0, name
        cov = res["subgroup_coverage"][f"{name}_bootstrap_se"]
        assert cov["of"] >= 5 and cov["covered"] >= cov["of"] - 2, (name, cov)
    assert res["positivity"]["refused_all_target_estimate"]
    assert all(n.startswith("CrCL<30") for n in res["positivity"]["unsupported_strata"])
