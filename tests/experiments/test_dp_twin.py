"""The `dp-twin` experiment: its helpers against independent truths, and its quick preset through the command line."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from experiments import dp_twin
from physics.pump import DCMotorPump
from twinjax.cli import main
from twinjax.risk.privacy import epsilon


@pytest.mark.parametrize("volts,load", [(8.5, 1.5e-6), (10.5, 2e-6), (12.5, 3e-6)])
def test_closed_form_steady_state_matches_the_pump_model(volts, load):
    omega, current = dp_twin.pump_steady_state(jnp.asarray(volts), load)
    expected = DCMotorPump(load_coeff=load).steady_state(jnp.array([volts]))
    np.testing.assert_allclose([float(omega), float(current)], np.asarray(expected), rtol=1e-9)


def test_logs_have_the_expected_shape_and_physical_ranges(key):
    logs = np.asarray(dp_twin.make_logs(key, 30, 5))
    assert logs.shape == (30, 5, 4)
    volts, hours, current, flow = logs.reshape(-1, 4).T
    assert 6 < volts.min() and volts.max() < 15 and hours.min() > 0 and current.min() > 0
    # the flow is q_ω ω with ω below the no-load speed V / k
    assert np.all(flow < 1.05 * 1e3 * 1e-6 * volts / 0.05)


@pytest.mark.parametrize("features", ["log", "linear"])
def test_feature_encoding_round_trips_and_its_jacobian_matches_autodiff(key, features):
    x = dp_twin.make_logs(key, 6, 3).reshape(-1, 4)
    np.testing.assert_allclose(dp_twin.decode(dp_twin.encode(x, features), features), x, rtol=1e-12)
    # log |det ∂u/∂z| with u = encode(x), z = standardise(x): autodiff of u ∘ unstandardise (diagonal map)
    jac = jax.vmap(jax.jacfwd(lambda z: dp_twin.encode(dp_twin.unstandardise(z), features)))(dp_twin.standardise(x))
    expected = np.linalg.slogdet(np.asarray(jac))[1]
    np.testing.assert_allclose(dp_twin.log_jacobian_to_standardised(x, features), expected, rtol=1e-12, atol=1e-12)
    if features == "log":  # the log-features of a record near the public nominal point are near 0
        np.testing.assert_allclose(dp_twin.encode(jnp.asarray(dp_twin.PUBLIC_CENTER), "log"), 0.0, atol=1e-12)


@pytest.mark.parametrize("target", [8.0, 0.5])
def test_calibrated_noise_reaches_the_target_epsilon_tightly(target):
    q, steps, delta = 0.25, 100, 1e-5
    sigma = dp_twin.calibrate_noise(target, q, steps, delta, "improved")
    eps = epsilon(sigma, q, steps, delta)
    assert target * (1 - 1e-3) <= eps <= target
    assert epsilon(0.99 * sigma, q, steps, delta) > target  # not much more noise than needed


def test_dp_auc_bound_is_the_logistic_of_epsilon_for_pure_dp():
    # δ = 0: the ROC bound min(e^ε x, 1 − e^{−ε}(1 − x)) has area e^ε / (1 + e^ε)
    for eps in (0.1, 0.5, 1.0, 3.0):
        assert dp_twin.dp_auc_bound(eps, 0.0) == pytest.approx(1 / (1 + math.exp(-eps)), abs=1e-8)
    assert dp_twin.dp_auc_bound(1.0, 1e-3) > dp_twin.dp_auc_bound(1.0, 0.0)
    assert dp_twin.dp_auc_bound(math.inf, 1e-5) == pytest.approx(1.0)


def test_roc_auc_matches_the_mann_whitney_statistic():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, 40), np.concatenate([rng.normal(0, 1, 30), [0.5, 0.5]])
    a[:3] = 0.5  # ties
    auc, fpr, tpr = dp_twin.roc_auc(a, b)
    u = scipy.stats.mannwhitneyu(a, b).statistic
    assert auc == pytest.approx(u / (len(a) * len(b)), rel=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc, rel=1e-12)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)


def test_dp_twin_runs_through_the_cli(tmp_path, capsys):
    assert main(["run", "dp_twin", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    quick = dp_twin.Config.quick()
    st = results["settings"]
    sigma = np.array(st["noise_multiplier"])
    eps = st["epsilon"]
    assert sigma[0] == 0 and eps[0] is None  # non-private: ε = ∞ (null in JSON)
    eps = np.array(eps[1:], float)
    assert np.all(np.isfinite(eps)) and np.all(np.diff(sigma) > 0) and np.all(np.diff(eps) < 0)
    q = quick.expected_batch / quick.n_train_operators
    for s, e, target in zip(sigma[1:], eps, quick.target_epsilons):
        assert e == pytest.approx(epsilon(s, q, quick.steps, quick.delta, quick.conversion), rel=1e-12)
        assert target * (1 - 1e-3) <= e <= target
    assert st["sampling_rate"] == [q] * len(sigma) and st["steps"] == [quick.steps] * len(sigma)
    # seeds: the reported value is the mean over the training seeds, with their sd; the seeds do differ
    ps = results["per_seed"]
    for k in ("heldout_nll", "mmd", "energy_mean_rel_error", "mia_auc"):
        assert np.array(ps[k]).shape == (len(sigma), quick.n_seeds)
        np.testing.assert_allclose(st[k], np.mean(ps[k], axis=1), rtol=1e-12)
        np.testing.assert_allclose(st[k + "_sd"], np.std(ps[k], axis=1, ddof=1), rtol=1e-12)
    assert np.all(np.std(ps["heldout_nll"], axis=1) > 0) and st["n_seeds"] == [quick.n_seeds] * len(sigma)
    # utility: the non-private twin beats the most private one
    assert st["heldout_nll"][0] < st["heldout_nll"][-1]
    assert st["mmd"][0] < st["mmd"][-1]
    # membership inference consistent with the guarantee: no ROC point above the (ε, δ) bound by > 4 SE
    for excess, se in zip(st["mia_max_roc_excess_over_dp_bound"], st["mia_roc_excess_se"]):
        assert excess <= 4 * se
    assert all(0 <= a <= 1 for a in st["mia_auc"])
    for name, e in zip(st["setting"], st["epsilon"]):
        meta = json.loads((tmp_path / "synthetic" / f"{name}.json").read_text())
        assert meta["epsilon"] == e and meta["delta"] == quick.delta and "operator" in meta["privacy_unit"]
        records = np.load(tmp_path / "synthetic" / f"{name}.npz")["records"]
        assert records.shape == (quick.n_synthetic, 4)
    for fig in ("utility_vs_epsilon.png", "samples.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 10_000
    assert (tmp_path / "metrics.csv").read_text().startswith("setting,step,loss")
    assert "summary.eps_0.5.heldout_nll" in capsys.readouterr().out


def test_quick_preset_differs_only_in_sizes_and_bad_configs_are_named():
    full, quick = dp_twin.Config(), dp_twin.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= {"n_train_operators", "n_test_operators", "records_per_operator", "n_population", "steps",
                       "n_synthetic", "n_seeds", "expected_batch"}  # fmt: skip
    for kwargs, field in [
        ({"target_epsilons": (1.0, -1.0)}, "target_epsilons"),
        ({"target_epsilons": ()}, "target_epsilons"),
        ({"delta": 0.01}, "delta"),
        ({"steps": 1}, "steps"),
        ({"expected_batch": 5000.0}, "expected_batch"),
        ({"n_test_operators": 2000}, "n_test_operators"),
        ({"l2_norm_clip": 0.0}, "l2_norm_clip"),
        ({"conversion": "exact"}, "conversion"),
        ({"n_seeds": 0}, "n_seeds"),
        ({"features": "sqrt"}, "features"),
        ({"kind": "maf"}, "kind"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"bins": 1}, "bins"),
    ]:
        with pytest.raises(ValueError, match=field):
            dp_twin.Config(**kwargs)
    with pytest.raises(ValueError, match="target_epsilons"):
        dp_twin.calibrate_noise(1e-4, 1.0, 1, 1e-5, "improved")  # one full-batch Gaussian step: σ ≈ 5 · 10⁴ needed
