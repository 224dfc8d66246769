"""Rare traffic delays: importance sampling with tilted incidents against brute-force Monte Carlo, and GPD tails.

The twin is a 20-cell freeway corridor (``physics.CellTransmissionModel``, 0.5 km cells, 6000 veh/h capacity, 18 s
steps) over a 2 h window: a peak-hour demand ``L · profile(t)`` (a 15 min ramp up, a plateau, a 15 min ramp down to
zero at 1.5 h, so queues can clear before 2 h) and, at most, one incident, a capacity drop in one cell. A scenario is

======================  =========================================  ===============================================
component               nominal ``p``                              proposal (exponential tilt chosen by CE)
======================  =========================================  ===============================================
demand level ``L``      Normal(4500, 300) veh/h                    Normal(4500 + 300²θ, 300)
incident occurs         Bernoulli(0.05)                            Bernoulli, logit + θ
cell                    uniform over the 20 cells                  same (no closed-form tilt)
start                   Uniform(0, 1.5 h)                          same (no closed-form tilt)
duration                Exponential(mean 15 min)                   Exponential, rate − θ
severity (capacity      Beta(2, 4) (mean 33 % lost)                Beta(2 + θ, 4)
lost, fraction)
======================  =========================================  ===============================================

and the delay is ``travel_metrics(...)["delay"]``, the vehicle-hours spent beyond free-flow travel (queues included).
The rare event is ``delay > d`` (``delay_threshold``, 800 veh·h; ``P ≈ 5·10⁻⁴``).

The proposal is the defensive mixture ``q = λ p + (1 − λ) p_θ`` (``defensive_weight`` λ, weights ``≤ 1/λ``) of the
tilt ``p_θ`` chosen by the multi-level cross-entropy method (:func:`twinjax.risk.rare.cross_entropy_proposal`) on a
pilot run of ``n_pilot`` scenarios per level with its own key; the moment-matched severity tilt (θ ≈ 4–5) exceeds
``a = 2``, beyond which the tilt alone has infinite-variance weights, hence the mixture.

1. **Brute-force Monte Carlo**: ``n_mc`` scenarios from ``p``, simulated in vmapped batches; ``P̂ = k/n`` with its
   binomial standard error.
2. **Importance sampling**: the cross-entropy pilot (``ce_*``, ``n_pilot``), then ``n_is`` *fresh* scenarios
   from ``q``, exact weights ``p/q`` (:func:`twinjax.risk.rare.importance_sampling_estimate`); the two estimates
   must agree within their combined standard errors; the variance-reduction factor ``P(1 − P)/Var_q(w 1{delay >
   d})`` per sample and per CPU-second (measured, the pilot's CPU time counted in the cost of importance sampling).
3. **Peaks over threshold** on the brute-force delays (one value per peak period): exceedances of the
   ``gpd_quantile`` quantile fitted by ``twinjax.risk.extremes.fit_gpd``, ``scipy.stats.genpareto.fit(floc=0)`` and
   pyextremes (``EVA`` with an hourly index, one peak per hour, ``r`` below the spacing so nothing is declustered);
   return levels for ``return_periods`` peaks from all three, and the GPD tail ``P(delay > d) = ζ_u Ḡ(d − u)``
   beside the IS estimate.
4. **Extreme scenarios**: synthetic exceedances from the fitted tail (``gpd_sample``) against the brute-force ones,
   the incident parameters that produce ``delay > d`` (their conditional means under ``p``, from IS weights and
   from the brute-force events), and the space-time density of one extreme scenario.

Measured (``twinjax run traffic-rare``, seed 0, defaults): see ``docs/traffic_rare.md``.
"""

import dataclasses
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from scipy.stats import beta as beta_dist, genpareto

from physics.traffic import CellTransmissionModel
from twinjax.risk.extremes import exceedances, fit_gpd, gpd_sample, gpd_sf, return_level
from twinjax.risk.rare import (
    ScenarioDistribution,
    cross_entropy_proposal,
    importance_sampling_estimate,
    monte_carlo_estimate,
    variance_reduction_factor,
)
from twinjax.runs import write_json

SUMMARY_KEYS = ("probability", "vrf", "gpd.return_levels", "timing")
PARAMS = ("demand_veh_h", "occurs", "cell", "start_h", "duration_h", "severity")


@dataclasses.dataclass(frozen=True)
class Config:
    n_mc: int = 262_144  # brute-force scenarios
    n_is: int = 16_384  # importance-sampling scenarios
    batch: int = 4096  # scenarios per vmapped simulation call
    n_cells: int = 20
    dt_h: float = 0.005
    horizon_h: float = 2.0
    peak_h: float = 1.5
    ramp_h: float = 0.25
    demand_mean_veh_h: float = 4500.0
    demand_sd_veh_h: float = 300.0
    incident_prob: float = 0.05
    duration_mean_h: float = 0.25
    severity_a: float = 2.0
    severity_b: float = 4.0
    n_pilot: int = 2048  # cross-entropy scenarios per level
    ce_rho: float = 0.1  # elite fraction
    ce_smoothing: float = 0.7
    ce_max_iter: int = 12
    # share of p in the proposal: weights <= 1/λ. The CE severity tilt alone (θ > a = 2) has infinite-variance weights
    defensive_weight: float = 0.1
    delay_threshold: float = 800.0  # veh·h
    gpd_quantile: float = 0.995
    return_periods: tuple[float, ...] = (1000.0, 10_000.0, 100_000.0)
    n_synthetic: int = 2000
    seed: int = 0

    def __post_init__(self):
        for name in ("n_mc", "n_is", "batch", "n_cells", "n_synthetic", "n_pilot", "ce_max_iter"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                raise ValueError(f"`{name}` must be an integer >= 2, got {getattr(self, name)!r}.")
        for name in ("dt_h", "horizon_h", "peak_h", "ramp_h", "demand_mean_veh_h", "demand_sd_veh_h",
                     "duration_mean_h", "severity_a", "severity_b", "delay_threshold"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)!r}.")
        if not 0 < self.incident_prob < 1:
            raise ValueError(f"`incident_prob` must lie in (0, 1), got {self.incident_prob!r}.")
        if not 2 * self.ramp_h <= self.peak_h <= self.horizon_h:
            raise ValueError(f"`peak_h` must lie in [2 ramp_h, horizon_h], got {self.peak_h!r}.")
        if not 0 < self.ce_rho < 1:
            raise ValueError(f"`ce_rho` must lie in (0, 1), got {self.ce_rho!r}.")
        if not 0 < self.ce_smoothing <= 1:
            raise ValueError(f"`ce_smoothing` must lie in (0, 1], got {self.ce_smoothing!r}.")
        if not 0 < self.defensive_weight < 1:
            raise ValueError(f"`defensive_weight` must lie in (0, 1), got {self.defensive_weight!r}.")
        if not 0.5 < self.gpd_quantile < 1:
            raise ValueError(f"`gpd_quantile` must lie in (0.5, 1), got {self.gpd_quantile!r}.")
        if not self.return_periods or not all(t > 1 for t in self.return_periods):
            raise ValueError(f"`return_periods` must be > 1 peaks, got {self.return_periods!r}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_mc=16_384, n_is=2048, batch=2048, n_synthetic=500, n_pilot=512)


# -------------------------------------------------------------------------------------------------------- the model


def scenario_distribution(config: Config) -> ScenarioDistribution:
    """The nominal scenario distribution ``p`` (module docstring table)."""
    p = ScenarioDistribution(
        {
            "demand_veh_h": nd.Normal(config.demand_mean_veh_h, config.demand_sd_veh_h),
            "occurs": nd.Bernoulli(probs=config.incident_prob),
            "cell": nd.Categorical(probs=jnp.full((config.n_cells,), 1.0 / config.n_cells)),
            "start_h": nd.Uniform(0.0, config.peak_h),
            "duration_h": nd.Exponential(1.0 / config.duration_mean_h),
            "severity": nd.Beta(config.severity_a, config.severity_b),
        }
    )
    return p


def corridor(config: Config) -> CellTransmissionModel:
    return CellTransmissionModel(config.n_cells, dt_h=config.dt_h)


def controls(config: Config, scenario: dict) -> jax.Array:
    """The control sequence ``[demand, capacity factors]`` (steps × (1 + n_cells)) of one scenario."""
    n_steps = int(round(config.horizon_h / config.dt_h))
    ts = jnp.arange(n_steps) * config.dt_h
    profile = jnp.clip(jnp.minimum(ts / config.ramp_h, (config.peak_h - ts) / config.ramp_h), 0.0, 1.0)
    demand = scenario["demand_veh_h"] * profile
    active = (
        (scenario["occurs"] > 0) & (ts >= scenario["start_h"]) & (ts < scenario["start_h"] + scenario["duration_h"])
    )
    factor = jnp.where(active, 1.0 - scenario["severity"], 1.0)
    factors = jnp.where(jnp.arange(config.n_cells)[None, :] == scenario["cell"], factor[:, None], 1.0)
    return jnp.concatenate([demand[:, None], factors], axis=1)


def scenario_delay(config: Config, scenario: dict) -> jax.Array:
    """The delay (veh·h) of one scenario: ``travel_metrics`` of the simulated corridor."""
    ctm = corridor(config)
    us = controls(config, scenario)
    xs = ctm.simulate(ctm.initial_state(), us)
    return ctm.travel_metrics(xs, us)["delay"]


def _batched(config: Config):
    """``key → (scenarios, delays)`` from ``p`` (MC), ``q → key → (scenarios, log p, log q, delays)`` from a
    proposal ``q`` (IS) for one batch, and the vmapped delays; the simulation is one jitted function shared by all."""
    p = scenario_distribution(config)
    delays = jax.jit(jax.vmap(lambda s: scenario_delay(config, s)))
    sample_p = jax.jit(lambda key: p.sample(key, config.batch))

    def mc(key):
        x = sample_p(key)
        return x, delays(x)

    def imp(q):
        @jax.jit
        def sample_q(key):
            x = q.sample(key, config.batch)
            return x, p.log_prob(x), q.log_prob(x)

        def fn(key):
            x, log_p, log_q = sample_q(key)
            return x, log_p, log_q, delays(x)

        return fn

    return mc, imp, delays


def _run(fn, key, n: int, batch: int) -> tuple[list, float, float]:
    """Run ``fn`` over ``ceil(n / batch)`` batches (compiled first, outside the timing); returns outputs, wall and
    CPU seconds of the timed batches."""
    n_batches = math.ceil(n / batch)
    keys = jax.random.split(key, n_batches)
    jax.block_until_ready(fn(keys[0]))  # compile
    wall, cpu = time.perf_counter(), time.process_time()
    out = [jax.device_get(fn(k)) for k in keys]
    return out, time.perf_counter() - wall, time.process_time() - cpu


# ------------------------------------------------------------------------------------------------------ evaluation


def _pyextremes_fit(delays: np.ndarray, threshold: float, periods: tuple[float, ...]) -> dict:
    """pyextremes' POT analysis of the delays as an hourly series (one peak period per hour)."""
    import pandas as pd
    import pyextremes

    index = pd.date_range("2000-01-01", periods=delays.size, freq="h")
    eva = pyextremes.EVA(pd.Series(delays, index=index))
    eva.get_extremes(method="POT", extremes_type="high", threshold=threshold, r="30min")
    eva.fit_model(model="MLE", distribution="genpareto")
    params = eva.model.fit_parameters
    levels = [float(eva.get_return_value(return_period=t, return_period_size="1h", alpha=None)[0]) for t in periods]
    return {"shape": params["c"], "scale": params["scale"], "n": len(eva.extremes), "return_levels": levels}


def evaluate(config: Config, key: jax.Array) -> dict:
    """All four parts (module docstring). Host-side: batches are jitted, the fits compared with scipy/pyextremes."""
    k_mc, k_is, k_syn = jax.random.split(key, 3)
    k_ce = jax.random.fold_in(key, 1)  # the pilot's own key: the final IS draws are fresh
    mc_fn, is_fn, delays = _batched(config)
    p_dist = scenario_distribution(config)
    d = config.delay_threshold

    # 1. brute force
    mc_out, mc_wall, mc_cpu = _run(mc_fn, k_mc, config.n_mc, config.batch)
    mc_x = {k: np.concatenate([o[0][k] for o in mc_out])[: config.n_mc] for k in PARAMS}
    mc_delay = np.concatenate([o[1] for o in mc_out])[: config.n_mc]
    n_mc = mc_delay.size
    mc = monte_carlo_estimate(mc_delay > d)

    # 2. importance sampling: cross-entropy pilot (compiled for its batch size first, outside the timing), fresh draws
    jax.block_until_ready(delays(p_dist.sample(k_ce, config.n_pilot)))
    pilot_wall, pilot_cpu = time.perf_counter(), time.process_time()
    ce = cross_entropy_proposal(
        k_ce,
        p_dist,
        lambda x: np.asarray(delays(x)),
        d,
        config.n_pilot,
        rho=config.ce_rho,
        max_iter=config.ce_max_iter,
        components=("demand_veh_h", "occurs", "duration_h", "severity"),
        smoothing=config.ce_smoothing,
        defensive=config.defensive_weight,
    )
    pilot_wall, pilot_cpu = time.perf_counter() - pilot_wall, time.process_time() - pilot_cpu
    if not ce.converged:
        raise RuntimeError(f"the cross-entropy pilot did not reach d = {d} in {ce.n_iter} levels: {ce.levels}")
    is_out, is_wall, is_cpu = _run(is_fn(ce.proposal), k_is, config.n_is, config.batch)
    is_x = {k: np.concatenate([o[0][k] for o in is_out])[: config.n_is] for k in PARAMS}
    log_p = np.concatenate([o[1] for o in is_out])[: config.n_is]
    log_q = np.concatenate([o[2] for o in is_out])[: config.n_is]
    is_delay = np.concatenate([o[3] for o in is_out])[: config.n_is]
    imp = importance_sampling_estimate(is_delay > d, log_p, log_q)
    diff_se = math.sqrt(float(mc.stderr) ** 2 + float(imp.stderr) ** 2)
    cost_ratio = ((is_cpu + pilot_cpu) / config.n_is) / (mc_cpu / n_mc)  # the pilot is part of the IS cost
    cost_ratio_no_pilot = (is_cpu / config.n_is) / (mc_cpu / n_mc)
    # the Monte-Carlo variance P(1 − P) at the IS estimate (the more precise of the two)
    vrf = float(variance_reduction_factor(imp))
    vrf_cpu = float(variance_reduction_factor(imp, cost_ratio=cost_ratio))
    vrf_cpu_no_pilot = float(variance_reduction_factor(imp, cost_ratio=cost_ratio_no_pilot))
    # the pilot at the cost of its simulations alone (its measured CPU time includes one-time compilations)
    cost_ratio_sim = cost_ratio_no_pilot * (config.n_is + ce.n_evaluations) / config.n_is
    vrf_cpu_sim = float(variance_reduction_factor(imp, cost_ratio=cost_ratio_sim))
    tilted = ce.proposal.proposal.components
    proposal = {
        "thetas": {k: float(v) for k, v in ce.thetas.items()},
        "demand_mean_veh_h": float(tilted["demand_veh_h"].loc),
        "incident_prob": float(tilted["occurs"].probs),
        "duration_mean_h": float(tilted["duration_h"].mean),
        "severity_beta": [float(tilted["severity"].concentration1), float(tilted["severity"].concentration0)],
        "defensive_weight": config.defensive_weight,
        "levels": ce.levels,
        "elite_ess": ce.elite_ess,
        "n_levels": ce.n_iter,
        "pilot_scenarios": ce.n_evaluations,
        "max_log_weight": float(np.max(log_p - log_q)),
    }

    # tail survival curve on a grid, both estimators
    grid = np.linspace(0.0, 2.0 * d, 41)[1:]
    mc_curve = monte_carlo_estimate(mc_delay[:, None] > grid)
    is_curve = importance_sampling_estimate(is_delay[:, None] > grid, log_p, log_q)

    # 3. peaks over threshold on the brute-force delays
    u = float(np.quantile(mc_delay, config.gpd_quantile))
    excess = np.asarray(exceedances(mc_delay, u))
    zeta = excess.size / n_mc
    fit = fit_gpd(excess)
    c_sp, _, scale_sp = genpareto.fit(excess, floc=0.0)
    periods = np.asarray(config.return_periods, dtype=float)
    ours = return_level(fit, u, zeta, periods, rate_variance=zeta * (1 - zeta) / n_mc)
    # scipy's return levels by the same closed form at scipy's parameters
    scipy_levels = u + scale_sp / c_sp * ((periods * zeta) ** c_sp - 1.0)
    pyx = _pyextremes_fit(mc_delay, u, config.return_periods)
    empirical = np.quantile(mc_delay, 1.0 - 1.0 / periods)

    def tail_prob_at(theta, x):
        return theta[2] * gpd_sf(x - u, theta[0], theta[1])

    def tail_prob(theta):
        return tail_prob_at(theta, d)

    theta = jnp.array([fit.shape, fit.scale, zeta])
    grad = jax.grad(tail_prob)(theta)
    cov = jnp.zeros((3, 3)).at[:2, :2].set(fit.cov).at[2, 2].set(zeta * (1 - zeta) / n_mc)
    gpd_p, gpd_se = float(tail_prob(theta)), float(jnp.sqrt(grad @ cov @ grad))
    at = jnp.asarray(np.maximum(grid, u))
    gpd_curve = np.asarray(jax.vmap(lambda x: tail_prob_at(theta, x))(at))
    grads = jax.vmap(jax.grad(tail_prob_at), in_axes=(None, 0))(theta, at)
    gpd_curve_se = np.sqrt(np.asarray(jnp.einsum("ki,ij,kj->k", grads, cov, grads)))
    # exact (Clopper–Pearson) 95 % intervals of the brute-force curve: the normal band is useless at a few events
    k_mc = np.round(np.asarray(mc_curve.estimate) * n_mc)
    mc_lo = np.where(k_mc > 0, beta_dist.ppf(0.025, np.maximum(k_mc, 1), n_mc - k_mc + 1), 0.0)
    mc_hi = beta_dist.ppf(0.975, k_mc + 1, np.maximum(n_mc - k_mc, 1))

    # 4. synthetic extremes from the fitted tail; the incident parameters behind delay > d
    synthetic = np.asarray(gpd_sample(k_syn, fit, config.n_synthetic, threshold=u))
    qs = np.array([0.5, 0.9, 0.99])
    w = np.exp(log_p - log_q) * (is_delay > d)
    hit = mc_delay > d
    conditional = {}
    for name in ("demand_veh_h", "occurs", "start_h", "duration_h", "severity", "cell"):
        vi = is_x[name].astype(float)
        is_mean = float(np.sum(w * vi) / np.sum(w)) if w.sum() > 0 else float("nan")
        mc_mean = float(mc_x[name][hit].astype(float).mean()) if hit.any() else float("nan")
        mc_sem = float(mc_x[name][hit].astype(float).std(ddof=1) / math.sqrt(hit.sum())) if hit.sum() > 1 else None
        conditional[name] = {"is": is_mean, "mc": mc_mean, "mc_se": mc_sem}
    ext = int(np.argmin(np.where(is_delay > d, np.abs(is_delay - 1.5 * d), np.inf)))
    extreme = {k: float(is_x[k][ext]) for k in PARAMS} | {"delay": float(is_delay[ext])}

    return {
        "probability": {
            "threshold_veh_h": d,
            "mc": float(mc.estimate),
            "mc_se": float(mc.stderr),
            "mc_events": int(hit.sum()),
            "is": float(imp.estimate),
            "is_se": float(imp.stderr),
            "is_relative_error": float(imp.relative_error),
            "is_events": int((is_delay > d).sum()),
            "is_ess": float(imp.ess),
            "is_ess_fraction": float(imp.ess) / config.n_is,
            "is_event_ess": float(imp.ess_values),
            "is_event_ess_fraction": float(imp.ess_values) / config.n_is,
            "is_weight_mean": float(imp.weight_mean),
            "is_weight_se": float(imp.weight_stderr),
            "difference_in_se": float((imp.estimate - mc.estimate) / diff_se),
            "gpd": gpd_p,
            "gpd_se": gpd_se,
        },
        "vrf": {
            "per_sample": vrf,
            "per_cpu_second": vrf_cpu,
            "per_cpu_second_without_pilot": vrf_cpu_no_pilot,
            "per_cpu_second_pilot_at_simulation_cost": vrf_cpu_sim,
            "cost_ratio_is_over_mc": cost_ratio,
        },
        "proposal": proposal,
        "gpd": {
            "threshold": u,
            "quantile": config.gpd_quantile,
            "n_exceedances": int(excess.size),
            "rate_per_peak": zeta,
            "twinjax": {
                "shape": float(fit.shape),
                "scale": float(fit.scale),
                "shape_se": float(fit.stderr[0]),
                "scale_se": float(fit.stderr[1]),
                "loglik": float(fit.loglik),
                "converged": bool(fit.converged),
            },  # fmt: skip
            "scipy": {
                "shape": float(c_sp),
                "scale": float(scale_sp),
                "loglik": float(genpareto.logpdf(excess, c_sp, 0.0, scale_sp).sum()),
            },  # fmt: skip
            "pyextremes": {"shape": pyx["shape"], "scale": pyx["scale"], "n": pyx["n"]},
            "return_levels": {
                "periods_peaks": list(periods),
                "twinjax": np.asarray(ours.level).tolist(),
                "twinjax_se": np.asarray(ours.stderr).tolist(),
                "scipy": scipy_levels.tolist(),
                "pyextremes": pyx["return_levels"],
                "empirical": empirical.tolist(),
            },
        },
        "synthetic": {
            "quantiles": qs.tolist(),
            "gpd_samples": np.quantile(synthetic, qs).tolist(),
            "mc_exceedances": np.quantile(excess + u, qs).tolist(),
        },
        "conditional_on_event": conditional,
        "extreme_scenario": extreme,
        "timing": {
            "mc_wall_s": mc_wall,
            "mc_cpu_s": mc_cpu,
            "is_wall_s": is_wall,
            "is_cpu_s": is_cpu,
            "pilot_wall_s": pilot_wall,
            "pilot_cpu_s": pilot_cpu,
            "mc_us_per_scenario": 1e6 * mc_wall / n_mc,
            "is_us_per_scenario": 1e6 * is_wall / config.n_is,
            "mc_cpu_us_per_scenario": 1e6 * mc_cpu / n_mc,
            "is_cpu_us_per_scenario": 1e6 * is_cpu / config.n_is,
        },
        "curves": {
            "grid": grid,
            "mc": np.asarray(mc_curve.estimate),
            "mc_se": np.asarray(mc_curve.stderr),
            "is": np.asarray(is_curve.estimate),
            "is_se": np.asarray(is_curve.stderr),
            "mc_ci95": np.stack([mc_lo, mc_hi]),
            "gpd": gpd_curve,
            "gpd_se": gpd_curve_se,
        },
    }


# --------------------------------------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _survival_figure(out: dict, config: Config, path: pathlib.Path) -> None:
    plt = _pyplot()
    c = out["curves"]
    grid = np.asarray(c["grid"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    mc, (lo, hi) = np.asarray(c["mc"]), np.asarray(c["mc_ci95"])
    ok = mc > 0
    ax.plot(grid[ok], mc[ok], "k-", lw=1.5, label=f"brute-force MC (n = {config.n_mc:,}), exact 95 % CI")
    ax.fill_between(grid, np.maximum(lo, 1e-12), hi, color="k", alpha=0.15)
    est, se = np.asarray(c["is"]), np.asarray(c["is_se"])
    ax.plot(grid, est, "C0-", lw=1.5, label=f"cross-entropy + defensive IS (n = {config.n_is:,}) ± 1.96 SE")
    ax.fill_between(grid, np.maximum(est - 1.96 * se, 1e-12), est + 1.96 * se, color="C0", alpha=0.25)
    g = out["gpd"]
    above = grid >= g["threshold"]
    gp, gse = np.asarray(c["gpd"]), np.asarray(c["gpd_se"])
    ax.plot(grid[above], gp[above], "C3--", lw=1.5,
            label=f"GPD tail above u = {g['threshold']:.0f} (ξ = {g['twinjax']['shape']:.2f}) ± 1.96 SE")  # fmt: skip
    ax.fill_between(grid[above], np.maximum(gp - 1.96 * gse, 1e-12)[above], (gp + 1.96 * gse)[above], color="C3",
                    alpha=0.12)  # fmt: skip
    positive = est[est > 0]
    ax.set_ylim(0.3 * (positive.min() if positive.size else 1.0 / config.n_mc), None)
    p = out["probability"]
    ax.errorbar([config.delay_threshold], [p["gpd"]], yerr=[1.96 * p["gpd_se"]], fmt="C3o", ms=4, capsize=3)
    ax.axvline(config.delay_threshold, color="0.5", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("delay d (vehicle-hours)")
    ax.set_ylabel("P(delay > d) per peak period")
    ax.set_title(
        f"Tail of the corridor delay: VRF {out['vrf']['per_sample']:.0f}× per sample at "
        f"d = {config.delay_threshold:.0f}"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spacetime_figure(out: dict, config: Config, path: pathlib.Path) -> None:
    plt = _pyplot()
    s = out["extreme_scenario"]
    scenario = {k: jnp.asarray(s[k]) for k in PARAMS}
    ctm = corridor(config)
    us = controls(config, scenario)
    xs = np.asarray(ctm.simulate(ctm.initial_state(), us))
    ts = np.arange(xs.shape[0]) * config.dt_h
    fig, (ax, axq) = plt.subplots(
        2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, layout="constrained"
    )
    km = (np.arange(config.n_cells) + 0.5) * float(ctm.cell_length_km)  # cell centres
    im = ax.pcolormesh(ts, km, xs[:, : config.n_cells].T, cmap="magma_r", shading="nearest", vmin=0, vmax=300)
    fig.colorbar(im, ax=[ax, axq], label="density (veh/km)")
    cell = int(s["cell"])
    label = f"incident: {100 * s['severity']:.0f} % capacity lost for {60 * s['duration_h']:.0f} min"
    end = min(s["start_h"] + s["duration_h"], config.horizon_h)
    ax.plot([s["start_h"], end], [km[cell]] * 2, "c-", lw=3, label=label)
    ax.set_ylabel("position (km)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(
        f"An extreme scenario from the proposal: delay {s['delay']:.0f} veh·h (d = {config.delay_threshold:.0f})"
    )
    axq.plot(ts, xs[:, config.n_cells], "k-")
    axq.set_ylabel("entrance queue (veh)")
    axq.set_xlabel("time (h)")
    axq.set_xlim(0, config.horizon_h)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):
        out = evaluate(config, jax.random.key(config.seed))
        out["timing"]["total_wall_s"] = time.perf_counter() - start
        fig_dir = run_dir / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        _survival_figure(out, config, fig_dir / "traffic_rare_tail.png")
        _spacetime_figure(out, config, fig_dir / "traffic_rare_extreme.png")
    write_json(run_dir / "results.json", out)
    return out
