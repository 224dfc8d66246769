"""The `chance-mpc` experiment: presets, the controller's bisection, the quick run through the command line and
(slow) the full claims (REFERENCES.md, "Chance-constraint tightening constants": under Gaussian noise every violation
rate ≤ α + 2 SE; under Student-t ν = 3 at α = 0.01 Cantelli ≤ α + 2 SE while the Gaussian tightening exceeds it)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import chance_mpc
from twinjax.cli import discover, main
from twinjax.control import chance, mpc

SIZES = {"n_paths", "n_steps", "horizon", "alphas", "bisect_iters", "mpc_paths", "mpc_alphas"}


def test_quick_preset_differs_only_in_sizes():
    full, quick = chance_mpc.Config(), chance_mpc.Config.quick()
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(quick, f.name)}
    assert changed <= SIZES
    assert full.n_paths * full.n_steps >= 100_000 and 0.01 in full.alphas and 0.01 in quick.alphas
    with pytest.raises(ValueError, match="alphas"):
        chance_mpc.Config(alphas=(0.0,))
    with pytest.raises(ValueError, match="propagation"):
        chance_mpc.Config(propagation="ensemble")
    with pytest.raises(ValueError, match="nu"):
        chance_mpc.Config(nu=2.0)
    with pytest.raises(ValueError, match="mpc_alphas"):
        chance_mpc.Config(mpc_alphas=(0.03,))
    assert full.mpc_paths * full.n_steps >= 100_000 and {0.01, 0.05} <= set(full.mpc_alphas)
    assert "chance_mpc" in discover()


@pytest.mark.parametrize("method", chance.METHODS)
def test_controller_applies_the_largest_admissible_current(method):
    """From a hot state the bisection's current satisfies every tightened constraint and a slightly larger one does
    not (the boundary is found to u_max / 2^iters); the slack is increasing in u."""
    config = chance_mpc.Config.quick()
    x = jnp.array([44.5, 40.0])
    with jax.enable_x64(True):
        u, _, _, _ = jax.jit(lambda x: chance_mpc.control(config, x, 0.05, method))(x)
        slack = jax.vmap(lambda v: jnp.max(chance_mpc.tightened_slack(config, x, v, 0.05, method)[0]))
        grid = jnp.linspace(0.0, config.u_max_C, 7)
        assert np.all(np.diff(np.asarray(slack(grid))) > 0)
        step = 2 * config.u_max_C / 2**config.bisect_iters
        at, above = slack(jnp.array([u, u + step]))
    assert 0 < float(u) < config.u_max_C
    assert float(at) <= 0 < float(above)


def test_mpc_controller_plans_all_currents_within_the_tightened_constraints():
    """From a hot state the full-horizon MPC (mpc.solve on the augmented moment state) converges, meets every
    tightened constraint (one is active: the plan charges as hard as the risk allows) and its predicted covariance at
    the first step is Q (a measured state)."""
    config = chance_mpc.Config.quick()
    with jax.enable_x64(True):
        ocp = chance_mpc.mpc_problem(config, 0.05, "gaussian")
        sol = mpc.solve(ocp, chance.augment(jnp.array([43.0, 39.0]), jnp.zeros((2, 2))), implicit_diff=False)
        slack = jax.vmap(lambda z, u: ocp.constraint(z, u, None))(sol.xs, sol.us)
    assert bool(sol.converged)
    assert float(jnp.max(slack)) == pytest.approx(0.0, abs=1e-6)
    assert 0 < float(sol.us[0, 0]) < config.u_max_C
    np.testing.assert_allclose(chance.split(sol.xs[0])[1], chance_mpc.process_noise(config), rtol=1e-12)


def test_quick_run_through_the_cli(tmp_path, capsys):
    """``twinjax run chance-mpc --quick``: the table for every noise × method × α, rates as fractions with their SE,
    Cantelli never less safe nor faster than the Gaussian tightening (common random numbers), the binding-step rates
    within 4 SE of their closed forms, the figure."""
    assert main(["run", "chance-mpc", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    config = chance_mpc.Config.quick()
    table = results["table"]
    for noise in chance_mpc.NOISES:
        for a in config.alphas:
            rows = {m: table[noise][m][f"{a:g}"] for m in chance.METHODS}
            for row in rows.values():
                assert row["core"]["n"] == config.n_paths * config.n_steps
                assert 0 <= row["core"]["rate"] <= 1 and row["core"]["se"] >= 0
                b = row["core_when_binding"]
                assert (
                    abs(b["rate"] - b["expected"]) <= 4 * np.sqrt(b["expected"] * (1 - b["expected"]) / b["n"]) + 1e-9
                )
            assert (
                rows["cantelli"]["core"]["rate"]
                <= rows["subgaussian"]["core"]["rate"]
                <= rows["gaussian"]["core"]["rate"]
            )
            assert rows["cantelli"]["time_to_target_min"] >= rows["gaussian"]["time_to_target_min"]
    assert results["claims"]["cantelli_slowest"] is True
    mpc_table = results["mpc"]["table"]
    for noise in chance_mpc.NOISES:
        for a in config.mpc_alphas:
            rows = {m: mpc_table[noise][m][f"{a:g}"] for m in chance.METHODS}
            for row in rows.values():
                assert row["core"]["n"] == config.mpc_paths * config.n_steps
                assert 0 <= row["core"]["rate"] <= 1 and row["solver"]["converged_fraction"] > 0.99
                b = row["core_when_binding"]
                sd = np.sqrt(b["expected"] * (1 - b["expected"]) / max(b["n"], 1))
                assert abs(b["rate"] - b["expected"]) <= 4 * sd + 1e-9
            assert rows["cantelli"]["time_to_target_min"] >= rows["gaussian"]["time_to_target_min"]
    assert results["mpc_claims"]["cantelli_slowest"] is True
    assert (tmp_path / "figures" / "chance_mpc.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "claims" in out and "run folder:" in out


@pytest.mark.slow
def test_full_claims():
    """The default sizes (500 closed loops × 200 steps per noise × method × α, 10⁵ evaluations of each constraint):
    every claim of the issue holds, and the binding-step rates match their closed forms within 3 SE."""
    config = chance_mpc.Config()
    with jax.enable_x64(True):
        out = chance_mpc._to_python(jax.device_get(chance_mpc._evaluate_jit(config, jax.random.key(config.seed))))
    table = {n: {m: out[n][m] for m in chance.METHODS} for n in chance_mpc.NOISES}
    for noise in chance_mpc.NOISES:
        for method in chance.METHODS:
            for a in config.alphas:
                row = table[noise][method][f"{a:g}"]
                row["core_when_binding"]["expected"] = chance_mpc.expected_rate(row["kappa"], noise, config.nu)
    claims = chance_mpc.claims(config, table)
    assert all(claims.values()), claims
