"""Perturb-seq twin: a causal gene network fitted on single knockouts predicts double and triple knockouts.

Truth: a random sparse network of ``n_genes`` genes (`twinjax.causal.networks.random_interactions`: each edge present
with probability ``density``, Gaussian weights scaled to operator norm ``strength``), basal expression
``b ~ U(0.5, 1.5)``, intrinsic noise sd ``noise_sd``; linear (``x = (I − W)⁻¹(b + e)``) or, in the nonlinearity sweep,
saturating (``x = W tanh(a x)/a + b + e``). A knockout is ``do(x_j = 0)``.

Training data: a screen of control cells and every single knockout, ``cells`` cells each. Test: ``n_doubles`` random
double and ``n_triples`` random triple knockouts, never seen. Predictors of the mean expression under a combination:

- ``twin``: ``W``, ``b`` fitted by instrumental-variable regression (knockouts as instruments; exactly identified by
  the singles) and the knocked-out linear system solved;
- ``twin_ols``: the same twin fitted by naive per-gene least squares on the cells (biased by downstream genes);
- ``additive``: control mean plus the sum of the measured single-knockout shifts (Ahlmann-Eltze et al. 2025);
- ``no_change``: the control mean.

Metric: RMSE of predicted versus true mean expression over the genes that are not knocked out (the targets are known
to be 0), averaged over the test combinations and ``n_networks`` random networks; also the Pearson correlation of the
predicted and true change from control ("Pearson delta"). The true mean is exact for a linear truth; for the
saturating truth it is a Monte-Carlo mean over ``n_truth_cells`` cells, and the RMSE is corrected for that Monte-Carlo
variance (``E(p − t̂)² − Var t̂``). Doubles are also split into *interacting* pairs
(`twinjax.causal.networks.interacting_pairs`: one knocked-out gene regulates the other, which regulates further genes)
— the only pairs on which the additive baseline is wrong in a linear network, even with perfect single-knockout data —
and the others (``rmse_interacting`` / ``rmse_additive``).

Sweeps (one setting varied at a time around the defaults): cells per perturbation, interaction strength, edge
density, noise sd, and saturation ``a``. ``results["who_wins"]`` names the best of the two twins and the additive
baseline in each (lowest mean RMSE over the networks).
"""

import dataclasses
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from twinjax.causal.networks import (
    LinearGeneNetwork,
    SaturatingGeneNetwork,
    Screen,
    additive_baseline,
    fit_network,
    interacting_pairs,
    perturbation_means,
    predict_knockouts,
    random_interactions,
    sample_screen,
)
from twinjax.runs import write_json

SUMMARY_KEYS = ("default", "who_wins", "wall_time_s")
# XLA's concurrency-optimised CPU scheduler deadlocked this program at the full size on a 2-core machine (every thread
# parked, the main one in block_until_ready; reproduced 5 times, with vmap and with lax.map over networks; single-
# threaded Eigen did not help); with the scheduler off the full run completes. `twinjax run` applies these flags.
XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)
METHODS = ("twin", "twin_ols", "additive", "no_change")
SWEEPS = ("cells", "strength", "density", "noise_sd", "saturation")


@dataclasses.dataclass(frozen=True)
class Config:
    n_genes: int = 30
    n_networks: int = 6
    n_doubles: int = 60
    n_triples: int = 60
    cells: int = 100  # per perturbation, at the defaults
    strength: float = 0.8  # operator norm of W
    density: float = 0.1
    noise_sd: float = 0.5
    cells_sweep: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500)
    strength_sweep: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.95)
    density_sweep: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4)
    noise_sweep: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    saturation_sweep: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    n_truth_cells: int = 100  # Monte-Carlo cells per test combination for the saturating truth
    seed: int = 0

    def __post_init__(self):
        for name in ("n_genes", "n_networks", "n_doubles", "n_triples", "cells", "n_truth_cells"):
            if getattr(self, name) < 2:
                raise ValueError(f"`{name}` must be >= 2, got {getattr(self, name)}.")
        if self.n_genes < 4:
            raise ValueError(f"`n_genes` must be >= 4 for triple knockouts, got {self.n_genes}.")
        if not 0 < self.strength < 1 or any(not 0 < s < 1 for s in self.strength_sweep):
            raise ValueError("`strength` and `strength_sweep` must lie in (0, 1) (a stable network).")
        if not 0 <= self.density <= 1 or any(not 0 <= d <= 1 for d in self.density_sweep):
            raise ValueError("`density` and `density_sweep` must be probabilities in [0, 1].")
        if self.noise_sd <= 0 or any(s <= 0 for s in self.noise_sweep):
            raise ValueError("`noise_sd` and `noise_sweep` must be positive.")
        if not self.cells_sweep or any(c < 2 for c in self.cells_sweep):
            raise ValueError(f"`cells_sweep` must hold cell counts >= 2, got {self.cells_sweep}.")
        if any(a < 0 for a in self.saturation_sweep):
            raise ValueError(f"`saturation_sweep` must be non-negative, got {self.saturation_sweep}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_genes=10, n_networks=2, n_doubles=8, n_triples=8, cells_sweep=(100,), n_truth_cells=50)


def _random_combos(key, n_combos: int, size: int, n_genes: int):
    def one(k):
        chosen = jnp.argsort(jax.random.uniform(k, (n_genes,)))[:size]
        return jnp.zeros(n_genes, dtype=bool).at[chosen].set(True)

    return jax.vmap(one)(jax.random.split(key, n_combos))


def _scores(pred, truth, truth_var, control_pred, control_true, masks):
    """Per-combination squared error (MC-corrected) over non-targets and Pearson delta."""
    free = 1.0 - masks
    n_free = jnp.sum(free, axis=1)
    mse = jnp.sum(free * ((pred - truth) ** 2 - truth_var), axis=1) / n_free
    d_pred, d_true = pred - control_pred, truth - control_true

    def corr(a, b, w):
        a = a - jnp.sum(w * a) / jnp.sum(w)
        b = b - jnp.sum(w * b) / jnp.sum(w)
        return jnp.sum(w * a * b) / jnp.sqrt(jnp.sum(w * a * a) * jnp.sum(w * b * b) + 1e-300)

    return mse, jax.vmap(corr)(d_pred, d_true, free)


def _trial(key, cells: int, n_genes: int, n_doubles: int, n_triples: int, n_truth: int, nonlinear: bool, params):
    """One random network: simulate the screen, fit, predict the held-out combinations, score every method."""
    density, strength, noise_sd, saturation = params
    k_w, k_b, k_screen, k_d, k_t, k_truth = jax.random.split(key, 6)
    weights = random_interactions(k_w, n_genes, density, strength)
    basal = jax.random.uniform(k_b, (n_genes,), minval=0.5, maxval=1.5)
    control_mask = jnp.zeros((1, n_genes), bool)
    singles = jnp.concatenate([control_mask, jnp.eye(n_genes, dtype=bool)])
    # row 0: the control (for the true change); then the doubles, then the triples
    test = jnp.concatenate([control_mask, _random_combos(k_d, n_doubles, 2, n_genes)])
    test = jnp.concatenate([test, _random_combos(k_t, n_triples, 3, n_genes)])
    if nonlinear:
        truth_net = SaturatingGeneNetwork(weights, basal, noise_sd, saturation, n_newton=6)
        # the screen's cells and the Monte-Carlo cells of the truth in one steady-state solve (one Newton loop)
        k_e, k_m = jax.random.split(k_truth)
        screen_noise = noise_sd * jax.random.normal(k_screen, (singles.shape[0] * cells, n_genes))
        mc_noise = noise_sd * jax.random.normal(k_e, (n_truth, n_genes))  # common to all test combinations
        noise = jnp.concatenate([screen_noise, jnp.tile(mc_noise, (test.shape[0], 1))])
        masks = jnp.concatenate([jnp.repeat(singles, cells, axis=0), jnp.repeat(test, n_truth, axis=0)])
        x = truth_net.steady_state(noise, masks)
        screen_x, mc_x = x[: screen_noise.shape[0]], x[screen_noise.shape[0] :].reshape(test.shape[0], n_truth, -1)
        screen = Screen(screen_x, jnp.repeat(jnp.arange(singles.shape[0]), cells), singles)
        truth_all, truth_var = jnp.mean(mc_x, axis=1), jnp.var(mc_x, axis=1, ddof=1) / n_truth
    else:
        screen = sample_screen(LinearGeneNetwork(weights, basal, noise_sd), k_screen, singles, cells)
        truth_all = predict_knockouts(weights, basal, test)
        truth_var = jnp.zeros_like(truth_all)
    means, _ = perturbation_means(screen)
    control = means[0]
    preds = {name: predict_knockouts(f.weights, f.basal, test) for name, f in
             (("twin", fit_network(screen, "iv")), ("twin_ols", fit_network(screen, "ols")))}  # fmt: skip
    preds["additive"] = additive_baseline(control, means[1:] - control, test)
    preds["no_change"] = jnp.broadcast_to(control, test.shape)
    inter = interacting_pairs(weights).astype(float)
    connected = (jnp.einsum("cj,jk,ck->c", test.astype(float), inter, test.astype(float)) > 0).astype(float)[1:]
    scores = {
        name: _scores(p[1:], truth_all[1:], truth_var[1:], p[0], truth_all[0], test[1:]) for name, p in preds.items()
    }
    out = {}
    for label, sl in (("doubles", slice(0, n_doubles)), ("triples", slice(n_doubles, None))):
        res = {"interacting_fraction": jnp.mean(connected[sl])}
        for name, (mse, corr) in scores.items():
            mse, corr = mse[sl], corr[sl]
            res[name] = {"rmse": jnp.sqrt(jnp.maximum(jnp.mean(mse), 0.0)), "pearson_delta": jnp.mean(corr)}
            if label == "doubles":
                for part, w in (("interacting", connected[sl]), ("additive", 1 - connected[sl])):
                    msw = jnp.sum(w * mse) / jnp.where(jnp.sum(w) > 0, jnp.sum(w), jnp.nan)
                    res[name][f"rmse_{part}"] = jnp.sqrt(jnp.maximum(msw, 0.0))
        out[label] = res
    return out


@eqx.filter_jit
def _network_batch(keys, params, cells, n_genes, n_doubles, n_triples, n_truth, nonlinear):
    """``_trial`` vmapped over networks (keys) at one setting ``params``."""
    one = lambda k: _trial(k, cells, n_genes, n_doubles, n_triples, n_truth, nonlinear, params)  # noqa: E731
    return jax.vmap(one)(keys)


def _trials(keys, params, cells, n_genes, n_doubles, n_triples, n_truth, nonlinear):
    """``_trial`` over settings (rows of ``params``, a host loop over one compiled program) and networks (keys).

    Not ``lax.map`` over settings: one compiled program per cell count, called once per setting, each call waited for
    before the next (one program in flight at a time). See ``XLA_FLAGS`` for the runtime defect this experiment met."""
    outs = [
        jax.block_until_ready(_network_batch(keys, p, cells, n_genes, n_doubles, n_triples, n_truth, nonlinear))
        for p in params
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def _summarise(raw):
    """Mean and standard error over networks (axis 1) of every metric, per setting (axis 0)."""
    n = jax.tree.leaves(raw)[0].shape[1]

    def stats(x):
        x = np.asarray(x, dtype=float)
        ok = np.isfinite(x)  # a split (e.g. connected pairs) can be empty for some networks
        count = ok.sum(axis=1)
        mean = np.where(ok, x, 0.0).sum(axis=1) / np.maximum(count, 1)
        var = np.where(ok, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(count - 1, 1)
        return {"mean": np.where(count > 0, mean, np.nan), "se": np.where(count > 1, np.sqrt(var / n), np.nan)}

    summary = jax.tree.map(stats, raw)
    for label in ("doubles", "triples"):
        wins = np.asarray(raw[label]["twin"]["rmse"]) < np.asarray(raw[label]["additive"]["rmse"])
        summary[label]["twin_beats_additive_fraction"] = wins.mean(axis=1)
    return summary


def evaluate(config: Config, key: jax.Array) -> dict:
    """Run every sweep (module docstring) and tabulate who wins. Pure; one compilation per cell count."""
    keys = jax.random.split(key, config.n_networks)  # the same networks (given the setting) in every sweep
    sizes = (config.n_genes, config.n_doubles, config.n_triples, config.n_truth_cells)
    base = (config.density, config.strength, config.noise_sd, 0.0)

    def settings(index, values):
        rows = [list(base) for _ in values]
        for row, v in zip(rows, values, strict=True):
            row[index] = v
        return jnp.asarray(rows, dtype=float)

    sweeps = {}
    # the linear sweeps at the default cell count share one compilation: stack their settings (row 0: the defaults)
    groups = (("strength", 1, config.strength_sweep), ("density", 0, config.density_sweep))
    groups += (("noise_sd", 2, config.noise_sweep),)
    stacked = jnp.concatenate([jnp.asarray([base], dtype=float)] + [settings(i, v) for _, i, v in groups])
    raw = _trials(keys, stacked, config.cells, *sizes, False)
    start = 1
    for name, _, values in groups:
        sweeps[name] = (list(values), jax.tree.map(lambda x, s=start, n=len(values): x[s : s + n], raw))
        start += len(values)
    at_default = jax.tree.map(lambda x: x[:1], raw)
    raw_cells = [
        at_default if c == config.cells else _trials(keys, jnp.asarray([base], dtype=float), c, *sizes, False)
        for c in config.cells_sweep
    ]
    sweeps["cells"] = (list(config.cells_sweep), jax.tree.map(lambda *xs: jnp.concatenate(xs), *raw_cells))
    raw_sat = _trials(keys, settings(3, config.saturation_sweep), config.cells, *sizes, True)
    sweeps["saturation"] = (list(config.saturation_sweep), raw_sat)

    results = {"sweeps": {}, "who_wins": {}}
    for name, (values, r) in sweeps.items():
        s = _summarise(r)
        results["sweeps"][name] = {"values": values, **s}
        table = []
        for i, v in enumerate(values):
            row = {"value": v}
            for label in ("doubles", "triples"):
                rmse = {m: float(s[label][m]["rmse"]["mean"][i]) for m in ("twin", "twin_ols", "additive")}
                row[label] = {
                    "winner": min(rmse, key=rmse.get),
                    **{f"{m}_rmse": v for m, v in rmse.items()},
                    "twin_beats_additive_fraction": s[label]["twin_beats_additive_fraction"][i],
                }
            table.append(row)
        results["who_wins"][name] = table
    cells_index = list(config.cells_sweep).index(config.cells) if config.cells in config.cells_sweep else None
    if cells_index is not None:
        d = results["sweeps"]["cells"]
        results["default"] = {
            label: {m: float(d[label][m]["rmse"]["mean"][cells_index]) for m in METHODS}
            for label in ("doubles", "triples")
        }
    return results


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STYLE = {"twin": ("C0", "twin (IV fit)"), "twin_ols": ("C2", "twin (naive OLS fit)"),
         "additive": ("C3", "additive baseline"), "no_change": ("0.5", "no change")}  # fmt: skip
XLABEL = {"cells": "cells per perturbation", "strength": "interaction strength ‖W‖₂", "density": "edge density",
          "noise_sd": "intrinsic noise sd", "saturation": "saturation a (0 = linear truth)"}  # fmt: skip


def _figure(results: dict, config: Config, path: pathlib.Path) -> None:
    """RMSE of held-out doubles (solid) and triples (dashed) along each sweep; connected vs unconnected doubles."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for ax, name in zip(axes.flat, SWEEPS, strict=False):
        sw = results["sweeps"][name]
        x = np.asarray(sw["values"], dtype=float)
        for m in METHODS:
            color, label = STYLE[m]
            for combo, ls in (("doubles", "-"), ("triples", "--")):
                r = sw[combo][m]["rmse"]
                ax.errorbar(x, r["mean"], yerr=2 * np.asarray(r["se"]), color=color, ls=ls, marker="o", ms=3,
                            capsize=2, label=label if combo == "doubles" else None)  # fmt: skip
        if name in ("cells", "noise_sd", "density"):
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(XLABEL[name])
        ax.set_ylabel("RMSE of mean expression (held-out)")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8, title="solid: doubles, dashed: triples", title_fontsize=8)
    ax = axes.flat[-1]
    sw = results["sweeps"]["cells"]
    x = np.asarray(sw["values"], dtype=float)
    for m, ls in (("twin", "-"), ("additive", "-")):
        color, label = STYLE[m]
        for part, marker, lsp in (("interacting", "o", "-"), ("additive", "s", ":")):
            ax.plot(x, sw["doubles"][m][f"rmse_{part}"]["mean"], color=color, ls=lsp, marker=marker, ms=4,
                    label=f"{label}, {part} pairs")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cells per perturbation")
    ax.set_ylabel("RMSE, doubles")
    ax.set_title("doubles split: interacting pairs (solid) vs additive pairs (dotted)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Knockout-combination prediction, {config.n_genes} genes, {config.n_networks} random networks per point "
        f"(defaults: {config.cells} cells, ‖W‖₂ = {config.strength}, density {config.density}, noise {config.noise_sd})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):  # regression normal equations in float64; scoped, not global
        results = jax.device_get(evaluate(config, jax.random.key(config.seed)))
    results["wall_time_s"] = time.perf_counter() - start
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _figure(results, config, fig_dir / "perturbseq.png")
    write_json(run_dir / "results.json", results)
    return results
