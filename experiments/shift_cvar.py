"""Shift and CVaR: a reserve sized on normal-regime history is blind to heatwaves; twin-augmented data fix it.

**Twin.** A district of ``n_buildings`` houses (``physics.Building2R2C``, its steady state) held at ``T_set`` by
electric chillers: on a day with outdoor peak temperature ``T`` (°C), solar irradiance ``I`` (W/m²) and occupancy gain
``Q_occ`` (W) a house's free-running indoor temperature is ``T_free = T + (f_occ Q_occ + A_sol I)(R_1 + R_2)``
(``Building2R2C.steady_state`` with no heating), the cooling it needs ``Q = (T_free − T_set)_+ / (R_1 + R_2)`` and the
chillers draw ``Q / COP(T)``, ``COP(T) = cop_25 − cop_slope (T − 25)`` (chillers lose efficiency in the heat). Peak
electric demand ``D`` (MW) is the district's draw times a lognormal behaviour factor. Scenario ``ξ = (T, I, Q_occ)``.

**Decision.** A reserve capacity ``x`` (MW) bought ahead at ``cost`` per MW; demand above it costs ``penalty`` per MW
(emergency imports / load shedding): ``L(x, ξ) = cost·x + penalty·(D(ξ) − x)_+``. The CVaR_α-optimal reserve
(``α`` the tail fraction) is the demand quantile ``F⁻¹(1 − α·cost/penalty)`` (Gotoh & Takano 2007), so with
``α = 0.05`` and ``cost/penalty = 1/20`` it sits at the 99.75 % demand quantile — inside the heatwave regime when
heatwaves have probability ``π_true = 1.5 %``.

**Laws.** Source (history, ``n_source`` days): the normal summer regime only. Target (deployment): the normal regime
warmed by ``warming_C`` (a covariate shift inside the history's support) mixed with heatwave days with probability
``π_true`` (outside it). The twin's synthetic heatwaves carry parameter uncertainty: each scenario draws its
heatwave's mean temperature from ``N(twin_heatwave_C, twin_heatwave_sd_C²)`` — a prior that is deliberately not the
truth.

**Steps.** (1) MMD and classifier two-sample tests of the history against ``n_target_test`` target days, and the
absolute-continuity check (:func:`twinjax.risk.shift.support_check`, source density below the floor — the least
likely history day's density divided by ``support_margin``) that makes
:func:`twinjax.risk.shift.importance_weighted_mean` refuse; (2) the CVaR-optimal reserve on the history alone, and
on the history importance-weighted to the warmed normal regime (known weather densities); (3) the history weighted to
the warmed regime plus ``n_synthetic`` twin heatwaves with mixture weight ``pi_aug``
(:func:`twinjax.risk.augment.augment_with_rare_events`); (4) every decision's **true** target CVaR and expected loss
by ``n_mc`` Monte-Carlo days from the true target (delta-method SE; differences paired on the same days), the oracle
reserve (optimised on a separate true-target sample), and the sensitivity to ``pi_aug`` and ``n_synthetic``.

Measured (``twinjax run shift-cvar``, seed 0, defaults; details in ``docs/risk_shift.md``): true target CVaR_0.05
of the history-only reserve (2.758 MW) 9.327 ± 0.054, importance-weighted history (2.952 MW) 8.095 ± 0.045, augmented
(4.065 MW) 4.455 ± 0.008, oracle (4.183 MW) 4.430 ± 0.007: ratio 2.09, 98 paired SE; expected loss 3.086 → 4.085.
MMD p = 0.002, classifier p = 0.077; the support check flags 13 of 1000 target days (all heatwaves) and the
importance-weighted mean refuses.
"""

import dataclasses
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from physics import Building2R2C
from twinjax.risk.augment import augment_with_rare_events, cvar_decision
from twinjax.risk.shift import (
    classifier_test,
    cvar,
    density_ratio_weights,
    fit_classifier,
    importance_weighted_mean,
    mmd_test,
    support_check,
    var,
)
from twinjax.runs import write_json

SUMMARY_KEYS = (
    "true_target_cvar",
    "improvement_ratio",
    "improvement_in_se",
    "decisions",
    "shift_tests",
    "support.flagged_target_points",
    "support.flagged_heatwave_points",
    "support.heatwave_days_in_target_test",
    "support.importance_weighted_refused",
    "support.heatwave_fraction_above_max_source_demand",
    "wall_time_s",
)
SIZES = ("n_source", "n_target_test", "n_synthetic", "n_mc", "n_oracle", "permutations", "classifier_steps")


@dataclasses.dataclass(frozen=True)
class Config:
    n_source: int = 1000  # history: normal-regime summer days
    n_target_test: int = 1000  # target days for the shift tests
    n_synthetic: int = 1000  # twin heatwave scenarios
    n_mc: int = 1_000_000  # true-target days for the evaluation
    n_oracle: int = 200_000  # true-target days for the oracle reserve
    permutations: int = 500
    classifier_steps: int = 500
    alpha: float = 0.05  # CVaR tail fraction ("CVaR_95")
    cost: float = 1.0  # per MW of reserve
    penalty: float = 20.0  # per MW of shortfall
    pi_true: float = 0.015  # heatwave probability in the target
    pi_aug: float = 0.015  # mixture weight given to the twin's heatwaves
    pi_grid: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05)
    n_synthetic_grid: tuple[int, ...] = (10, 30, 100, 300, 1000, 3000)
    warming_C: float = 1.0
    normal_T_C: float = 27.0
    normal_T_sd_C: float = 3.0
    heatwave_T_C: float = 39.0
    heatwave_T_sd_C: float = 1.5
    twin_heatwave_C: float = 38.0  # the twin's prior mean of a heatwave's temperature
    twin_heatwave_sd_C: float = 1.5  # its epistemic sd
    support_margin: float = 10.0
    n_buildings: int = 2000
    seed: int = 0

    def __post_init__(self):
        for name in SIZES + ("n_buildings",):
            if getattr(self, name) < 2:
                raise ValueError(f"`{name}` must be >= 2, got {getattr(self, name)}.")
        if not 0 < self.alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1), got {self.alpha}.")
        for name in ("pi_true", "pi_aug"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in (0, 1), got {getattr(self, name)}.")
        if not self.pi_grid or not all(0 < p < 1 for p in self.pi_grid):
            raise ValueError(f"`pi_grid` must be non-empty with values in (0, 1), got {self.pi_grid}.")
        if not self.n_synthetic_grid or not all(m >= 1 for m in self.n_synthetic_grid):
            raise ValueError(f"`n_synthetic_grid` must be non-empty with values >= 1, got {self.n_synthetic_grid}.")
        if not 0 < self.cost < self.penalty:
            raise ValueError(f"`cost` and `penalty` must satisfy 0 < cost < penalty, got {self.cost}, {self.penalty}.")
        for name in ("normal_T_sd_C", "heatwave_T_sd_C", "twin_heatwave_sd_C", "support_margin"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            n_source=300,
            n_target_test=300,
            n_synthetic=300,
            n_mc=50_000,
            n_oracle=20_000,
            permutations=100,
            classifier_steps=200,
            n_synthetic_grid=(10, 100, 300),
        )


# ----------------------------------------------------------------------------------------------------------- twin

T_SET_C = 24.0
COP_25, COP_SLOPE = 3.5, 0.06
SOLAR = (600.0, 100.0)  # normal-day irradiance mean, sd (W/m²)
SOLAR_HEATWAVE = (850.0, 60.0)
OCCUPANCY = (300.0, 50.0)  # W
BEHAVIOUR_SD = 0.05  # lognormal demand factor


def demand_MW(xi: jax.Array, n_buildings: int) -> jax.Array:
    """Peak electric demand (MW) of the district for scenarios ``xi = (T_C, I_W_m2, Q_occ_W, behaviour)`` ``(n, 4)``."""
    house = Building2R2C()
    r_total = house.r_in_wall_K_W + house.r_wall_out_K_W

    def one(s):
        t_free = house.steady_state(jnp.stack([jnp.zeros(()), s[0], s[2], s[1]]))[0]
        q_cool = jnp.maximum(t_free - T_SET_C, 0.0) / r_total
        cop = COP_25 - COP_SLOPE * (s[0] - 25.0)
        return n_buildings * q_cool / cop * jnp.exp(BEHAVIOUR_SD * s[3]) / 1e6

    return jax.vmap(one)(xi)


def _days(key, n, t_mean, t_sd, solar):
    kt, ks, ko, kb = jax.random.split(key, 4)
    t = t_mean + t_sd * jax.random.normal(kt, (n,))
    i = jnp.maximum(solar[0] + solar[1] * jax.random.normal(ks, (n,)), 0.0)
    occ = OCCUPANCY[0] + OCCUPANCY[1] * jax.random.normal(ko, (n,))
    return jnp.stack([t, i, occ, jax.random.normal(kb, (n,))], axis=1)


def normal_days(key, n, config: Config, warming: float = 0.0):
    return _days(key, n, config.normal_T_C + warming, config.normal_T_sd_C, SOLAR)


def target_days(key, n, config: Config):
    """The true target: warmed normal days, and heatwave days with probability ``pi_true``."""
    k_flag, k_norm, k_hw = jax.random.split(key, 3)
    hot = jax.random.bernoulli(k_flag, config.pi_true, (n,))
    normal = normal_days(k_norm, n, config, config.warming_C)
    heat = _days(k_hw, n, config.heatwave_T_C, config.heatwave_T_sd_C, SOLAR_HEATWAVE)
    return jnp.where(hot[:, None], heat, normal), hot


def twin_heatwaves(key, n, config: Config):
    """The twin's synthetic heatwave days: each draws its heatwave's mean temperature from the twin's prior."""
    k_mu, k_days = jax.random.split(key)
    mu = config.twin_heatwave_C + config.twin_heatwave_sd_C * jax.random.normal(k_mu, (n,))
    days = _days(k_days, n, 0.0, config.heatwave_T_sd_C, SOLAR_HEATWAVE)
    return days.at[:, 0].add(mu)


def _log_normal_T(mean, sd):
    return lambda xi: jax.scipy.stats.norm.logpdf(xi[:, 0], mean, sd)


def _fitted_gaussian(x):
    mean, cov = jnp.mean(x, 0), jnp.cov(x.T)
    return lambda xi: jax.scipy.stats.multivariate_normal.logpdf(xi[:, : x.shape[1]], mean, cov)


# -------------------------------------------------------------------------------------------------------- evaluate


def _loss(config: Config):
    return lambda x, d: config.cost * x + config.penalty * jnp.maximum(d - x, 0.0)


def _true_risk(losses, alpha):
    """CVaR with its delta-method SE, the expected loss with its SE, and the per-day ``h`` for paired differences."""
    v = var(losses, alpha)
    h = v + jnp.maximum(losses - v, 0.0) / alpha
    n = losses.shape[0]
    return {
        "cvar": cvar(losses, alpha),
        "cvar_se": jnp.std(h, ddof=1) / jnp.sqrt(n),
        "mean": jnp.mean(losses),
        "mean_se": jnp.std(losses, ddof=1) / jnp.sqrt(n),
    }, h


@functools.partial(jax.jit, static_argnames=("alpha",))
def _solve_jit(demand, weights, hi, cost, penalty, alpha):
    def loss(x, d):
        return cost * x + penalty * jnp.maximum(d - x, 0.0)

    return cvar_decision(loss, demand, alpha, weights, bounds=(jnp.zeros_like(hi), hi)).decision


def _solve(config: Config, demand, weights, hi):
    """The CVaR-optimal reserve on (weighted) demand scenarios: one compiled solver per sample size."""
    return _solve_jit(demand, weights, jnp.asarray(hi), config.cost, config.penalty, config.alpha)


def evaluate(config: Config, key: jax.Array) -> dict:
    keys = jax.random.split(key, 9)
    n_b, loss = config.n_buildings, _loss(config)
    source = normal_days(keys[0], config.n_source, config)
    d_source = demand_MW(source, n_b)
    hi = 5.0 * float(jnp.max(d_source))  # search interval for the reserve (MW)

    # (1) shift tests on the weather features (T, I, Q_occ), standardised by the history's mean and sd
    target_test, hot_test = target_days(keys[1], config.n_target_test, config)
    mean, sd = jnp.mean(source[:, :3], 0), jnp.std(source[:, :3], 0)
    feat_s, feat_t = (source[:, :3] - mean) / sd, (target_test[:, :3] - mean) / sd
    mmd_stat, mmd_p = mmd_test(keys[2], feat_s, feat_t, permutations=config.permutations)
    n_eq = min(config.n_source, config.n_target_test)  # the classifier test wants balanced samples
    clf_res = classifier_test(keys[3], feat_s[:n_eq], feat_t[:n_eq], steps=config.classifier_steps, depth=1)
    # the absolute-continuity check: a Gaussian fitted to the history's (T, I); floor = the least likely history day's
    # density / support_margin
    fitted = _fitted_gaussian(source[:, :2])
    floor = float(jnp.exp(jnp.min(fitted(source)))) / config.support_margin
    report = support_check(target_test, log_p_source=fitted, density_floor=floor)
    clf = fit_classifier(keys[4], feat_s, feat_t, steps=config.classifier_steps, depth=1)
    report_clf = support_check(feat_t, classifier=clf, eps=1e-3)
    d_test = demand_MW(target_test, n_b)
    x_naive = _solve(config, d_source, None, hi)
    w_test = density_ratio_weights(  # the warming, by the twin's weather model (known densities of T)
        source,
        log_p_target=_log_normal_T(config.normal_T_C + config.warming_C, config.normal_T_sd_C),
        log_p_source=_log_normal_T(config.normal_T_C, config.normal_T_sd_C),
    )
    try:
        importance_weighted_mean(loss(x_naive, d_source), w_test.weights, support=report)
        refusal = None
    except ValueError as e:
        refusal = str(e)
    iw_mean, iw_se = importance_weighted_mean(loss(x_naive, d_source), w_test.weights, support=report, refuse=False)

    # (2) decisions from the history: as is, and importance-weighted to the warmed normal regime
    x_iw = _solve(config, d_source, w_test.weights, hi)

    # (3) augmented with the twin's heatwaves, mixture weight pi_aug, records carrying the warming weights
    def augmented(k, pi, m):
        aug = augment_with_rare_events(
            k, source, lambda kk, mm: twin_heatwaves(kk, mm, config), m, pi, data_weights=w_test.weights
        )
        return _solve(config, demand_MW(aug.samples, n_b), aug.weights, hi)

    x_aug = augmented(keys[5], config.pi_aug, config.n_synthetic)

    # (4) truth: large Monte Carlo from the true target
    mc, hot_mc = target_days(keys[6], config.n_mc, config)
    d_mc = demand_MW(mc, n_b)
    oracle_days, _ = target_days(keys[7], config.n_oracle, config)
    x_oracle = _solve(config, demand_MW(oracle_days, n_b), None, hi)
    decisions = {"source_only": x_naive, "importance_weighted": x_iw, "augmented": x_aug, "oracle": x_oracle}
    risk, h = {}, {}
    for name, x in decisions.items():
        risk[name], h[name] = _true_risk(loss(x, d_mc), config.alpha)
    diff = h["source_only"] - h["augmented"]
    improvement_se = jnp.std(diff, ddof=1) / jnp.sqrt(config.n_mc)

    pi_x = [augmented(keys[5], p, config.n_synthetic) for p in config.pi_grid]
    pi_risk = [_true_risk(loss(x, d_mc), config.alpha)[0] for x in pi_x]
    m_keys = jax.random.split(keys[8], len(config.n_synthetic_grid))
    m_sweep = [augmented(k, config.pi_aug, m) for k, m in zip(m_keys, config.n_synthetic_grid)]
    m_risk = [_true_risk(loss(x, d_mc), config.alpha)[0] for x in m_sweep]

    return {
        "decisions": decisions,
        "true_target_cvar": {k: v["cvar"] for k, v in risk.items()},
        "true_target_cvar_se": {k: v["cvar_se"] for k, v in risk.items()},
        "true_target_mean_loss": {k: v["mean"] for k, v in risk.items()},
        "true_target_mean_loss_se": {k: v["mean_se"] for k, v in risk.items()},
        "improvement_ratio": risk["source_only"]["cvar"] / risk["augmented"]["cvar"],
        "improvement": risk["source_only"]["cvar"] - risk["augmented"]["cvar"],
        "improvement_se": improvement_se,
        "improvement_in_se": (risk["source_only"]["cvar"] - risk["augmented"]["cvar"]) / improvement_se,
        "price_of_robustness_mean_loss": risk["augmented"]["mean"] - risk["source_only"]["mean"],
        "in_sample_cvar_source_only": cvar(loss(x_naive, d_source), config.alpha),
        "shift_tests": {
            "mmd_statistic": mmd_stat,
            "mmd_p_value": mmd_p,
            "classifier_accuracy": clf_res.accuracy,
            "classifier_p_value": clf_res.p_value,
            "heatwave_days_in_target_test": jnp.sum(hot_test),
        },
        "support": {
            "density_floor": floor,
            "flagged_target_points": report.count,
            "flagged_heatwave_points": jnp.sum(report.flagged & hot_test),
            "heatwave_days_in_target_test": jnp.sum(hot_test),
            "classifier_flagged_points": report_clf.count,
            "importance_weighted_refused": refusal is not None,
            "refusal_message": refusal,
            "iw_ess": w_test.ess,
            "iw_mean_loss_source_only_unrefused": iw_mean,
            "iw_mean_loss_se": iw_se,
            "target_test_mean_loss_source_only": jnp.mean(loss(x_naive, d_test)),
            "max_source_demand_MW": jnp.max(d_source),
            "heatwave_fraction_above_max_source_demand": jnp.mean(d_mc[hot_mc] > jnp.max(d_source)),
        },
        "sensitivity_pi": {
            "pi": list(config.pi_grid),
            "decision": pi_x,
            "true_target_cvar": [r["cvar"] for r in pi_risk],
            "true_target_cvar_se": [r["cvar_se"] for r in pi_risk],
            "true_target_mean_loss": [r["mean"] for r in pi_risk],
        },
        "sensitivity_n_synthetic": {
            "n_synthetic": list(config.n_synthetic_grid),
            "decision": m_sweep,
            "true_target_cvar": [r["cvar"] for r in m_risk],
            "true_target_cvar_se": [r["cvar_se"] for r in m_risk],
        },
        "demand_quantile_99_75_true": jnp.quantile(d_mc, 1 - config.alpha * config.cost / config.penalty),
        "_plot": {"d_mc": d_mc[:200_000], "hot_mc": hot_mc[:200_000]},
    }


# --------------------------------------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(out: dict, config: Config, path: pathlib.Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    d = np.asarray(out["_plot"]["d_mc"])
    loss = _loss(config)
    colors = {"source_only": "C3", "importance_weighted": "C1", "augmented": "C0", "oracle": "k"}
    ax = axes[0]
    for name in ("source_only", "importance_weighted", "augmented", "oracle"):
        x = float(out["decisions"][name])
        l_sorted = np.sort(np.asarray(loss(x, d)))
        surv = 1.0 - np.arange(1, l_sorted.size + 1) / l_sorted.size
        ax.step(l_sorted, surv, where="post", color=colors[name], lw=1.5,
                label=f"{name}: x = {x:.2f} MW, CVaR = {float(out['true_target_cvar'][name]):.2f}")  # fmt: skip
        ax.axvline(float(out["true_target_cvar"][name]), color=colors[name], ls=":", lw=1)
    ax.axhline(config.alpha, color="grey", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(1.0 / d.size, 1.0)
    ax.set_xlabel("loss under the true target (cost units)")
    ax.set_ylabel("P(loss > ℓ)")
    ax.set_title(f"Loss tails (dotted: true CVaR, tail {config.alpha:g})")
    ax.legend(fontsize=7)

    ax = axes[1]
    hot = np.asarray(out["_plot"]["hot_mc"])
    bins = np.linspace(0, np.quantile(d, 0.99999), 120)
    ax.hist(d[~hot], bins=bins, density=False, color="C2", alpha=0.6, label="normal days (target)")
    ax.hist(d[hot], bins=bins, density=False, color="C3", alpha=0.8, label=f"heatwave days ({config.pi_true:.1%})")
    for name in ("source_only", "augmented"):
        ax.axvline(float(out["decisions"][name]), color=colors[name], lw=2, label=f"reserve: {name}")
    ax.axvline(float(out["support"]["max_source_demand_MW"]), color="grey", ls="--", label="largest demand in history")
    ax.set_yscale("log")
    ax.set_xlabel("peak demand D (MW)")
    ax.set_ylabel("days (of 200 000)")
    ax.set_title("Target demand and the reserves")
    ax.legend(fontsize=7)

    ax = axes[2]
    s = out["sensitivity_pi"]
    ax.errorbar(s["pi"], s["true_target_cvar"], yerr=2 * np.asarray(s["true_target_cvar_se"]), fmt="o-", color="C0",
                capsize=3, label=f"augmented, {config.n_synthetic} twin heatwaves (±2 SE)")  # fmt: skip
    for name in ("source_only", "importance_weighted", "oracle"):
        ax.axhline(float(out["true_target_cvar"][name]), color=colors[name], ls="--", lw=1, label=name)
    ax.axvline(config.pi_true, color="grey", ls=":", label="true heatwave probability")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(s["pi"], [f"{100 * p:g} %" for p in s["pi"]], fontsize=8)
    ax.set_xlabel("mixture weight π given to the twin's heatwaves")
    ax.set_ylabel(f"true target CVaR (tail {config.alpha:g})")
    ax.set_title("True target CVaR vs the mixture weight π")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):
        out = jax.device_get(evaluate(config, jax.random.key(config.seed)))
    out["wall_time_s"] = time.perf_counter() - start
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _figure(out, config, fig_dir / "shift_cvar.png")
    results = {k: v for k, v in out.items() if not k.startswith("_")}
    write_json(run_dir / "results.json", results)
    return results
