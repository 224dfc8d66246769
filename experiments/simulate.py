"""Uncertain ensemble of a 5 Ah battery twin under a drive cycle, with credible bands (the first main job).

The twin is ``physics.battery_twin()`` (a Thevenin cell with a lumped thermal model, voltage and temperature
sensors). Its parameters are uncertain — capacity and series resistance drawn from log-normal priors, the initial state
of charge from the twin's initial belief — and the ensemble is ancestral sampling of the chapter's joint
``p(φ) p(x_0) Π p(x_{t+1} | x_t, u_t, φ) p(y_t | x_t, φ)`` under a fixed drive-cycle current. Results: credible bands
of state of charge, terminal voltage and temperature, the spread they imply at the end of the cycle, and a check of
the coulomb-counting invariant on every member.
"""

import dataclasses
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import twinjax as tj
from physics import battery_twin
from twinjax.runs import write_json

SUMMARY_KEYS = (
    "members",
    "failed_members",
    "soc_final",
    "voltage_min_v",
    "temperature_max_c",
    "coulomb_counting_max_error",
    "wall_time_s",
)


@dataclasses.dataclass(frozen=True)
class Config:
    members: int = 4096
    duration_s: float = 1800.0
    dt_s: float = 1.0
    substeps: int = 2
    soc0: float = 0.9
    soc0_sd: float = 0.03
    capacity_Ah: float = 5.0
    capacity_cv: float = 0.05
    r0_ohm: float = 0.015
    r0_cv: float = 0.2
    peak_c_rate: float = 2.5
    ambient_c: float = 25.0
    seed: int = 0

    def __post_init__(self):
        for name in ("members", "substeps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not self.duration_s > self.dt_s > 0:
            raise ValueError(f"need duration_s > dt_s > 0, got {self.duration_s}, {self.dt_s}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(members=256, duration_s=600.0)


def drive_cycle_current_A(ts_s: jax.Array, capacity_Ah: float, peak_c_rate: float) -> jax.Array:
    """A synthetic urban drive-cycle current (A, positive = discharge), repeating every 120 s.

    One period: 10 s idle; 15 s acceleration ramping to ``peak_c_rate`` C; 40 s cruise at 0.6 C; 10 s hard
    acceleration at 0.8 × peak; 15 s regenerative braking at −0.8 C (charging); 30 s idle with a 0.05 C auxiliary load.
    The shape follows the usual phases of urban cycles (e.g. the ECE-15 part of NEDC); the numbers are illustrative,
    not a standard.
    """
    one_c = capacity_Ah
    phase = jnp.mod(ts_s, 120.0)
    ramp = jnp.clip((phase - 10.0) / 15.0, 0.0, 1.0) * peak_c_rate
    c_rate = jnp.select(
        [phase < 10.0, phase < 25.0, phase < 65.0, phase < 75.0, phase < 90.0],
        [0.05, ramp, 0.6, 0.8 * peak_c_rate, -0.8],
        default=0.05,
    )
    return c_rate * one_c


def make_twin(config: Config):
    """The battery twin and the parameter spec of its uncertain physics."""
    twin = battery_twin(soc0=config.soc0, soc0_sd=config.soc0_sd, dt=config.dt_s)
    ambient_K = config.ambient_c + 273.15
    twin = eqx.tree_at(lambda m: m.dynamics.ambient_temperature_K, twin, jnp.asarray(ambient_K))
    x0_mean = twin.initial.mean.at[-1].set(ambient_K)
    twin = eqx.tree_at(lambda m: m.initial, twin, tj.Gaussian(x0_mean, twin.initial.cov))
    spec = tj.Params(
        {
            "dynamics.capacity_Ah": tj.positive(prior=dist.LogNormal(np.log(config.capacity_Ah), config.capacity_cv)),
            "dynamics.r0_ohm": tj.positive(prior=dist.LogNormal(np.log(config.r0_ohm), config.r0_cv)),
        }
    )
    return twin, spec


def evaluate(config: Config, key: jax.Array) -> dict:
    """Simulate the ensemble and summarise it (pure: no I/O)."""
    twin, spec = make_twin(config)
    ts = jnp.arange(0.0, config.duration_s + config.dt_s / 2, config.dt_s)
    current = drive_cycle_current_A(ts, config.capacity_Ah, config.peak_c_rate)[:, None]
    cloud = tj.ensemble(
        twin, ts, members=config.members, params=spec, controls=current, key=key, substeps=config.substeps
    )
    soc = cloud.xs[:, :, 0]
    volts = cloud.ys[:, :, 0]
    temp_c = cloud.xs[:, :, -1] - 273.15
    # coulomb counting: ∫ I dt / (3600 Q) = -Δsoc for every member (the held current is exact on the grid)
    charge_Ah = jnp.cumsum(current[:-1, 0]) * config.dt_s / 3600.0
    capacity = cloud.params[:, 0]
    predicted = soc[:, :1] - charge_Ah[None, :] / capacity[:, None]
    cc_error = jnp.max(jnp.abs(predicted - soc[:, 1:]))
    q = jnp.array([0.05, 0.5, 0.95])
    return {
        "ts": ts,
        "current_A": current[:, 0],
        "bands": {
            "soc": jnp.quantile(soc, q, axis=0),
            "voltage_v": jnp.quantile(volts, q, axis=0),
            "temperature_c": jnp.quantile(temp_c, q, axis=0),
        },
        "members": config.members,
        "failed_members": jnp.sum(cloud.status != 0),
        "soc_final": {
            "p05": jnp.quantile(soc[:, -1], 0.05),
            "median": jnp.median(soc[:, -1]),
            "p95": jnp.quantile(soc[:, -1], 0.95),
        },
        "voltage_min_v": {"p05": jnp.quantile(volts.min(1), 0.05), "median": jnp.median(volts.min(1))},
        "temperature_max_c": {"median": jnp.median(temp_c.max(1)), "p95": jnp.quantile(temp_c.max(1), 0.95)},
        "coulomb_counting_max_error": cc_error,
    }


def _figure(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = np.asarray(results["ts"]) / 60.0
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(ts, results["current_A"], color="k", lw=0.8)
    axes[0].set_ylabel("current (A)\n+ = discharge")
    for ax, name, label, colour in (
        (axes[1], "soc", "state of charge", "C0"),
        (axes[2], "voltage_v", "terminal voltage (V)", "C1"),
        (axes[3], "temperature_c", "cell temperature (°C)", "C3"),
    ):
        lo, mid, hi = np.asarray(results["bands"][name])
        ax.fill_between(ts, lo, hi, color=colour, alpha=0.3, label="90 % credible band")
        ax.plot(ts, mid, color=colour, lw=1.2, label="median")
        ax.set_ylabel(label)
    axes[1].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (min)")
    fig.suptitle(f"Battery twin ensemble: {results['members']} members, uncertain capacity, R0 and initial SOC")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):  # battery states (SOC to 1e-6 over hours) need float64; scoped, not global
        out = evaluate(config, jax.random.key(config.seed))
        out = jax.tree_util.tree_map(np.asarray, out)
    out["wall_time_s"] = time.perf_counter() - start
    _figure(out, run_dir / "figures" / "ensemble_bands.png")
    results = {k: v for k, v in out.items() if k not in ("ts", "current_A", "bands")}
    write_json(run_dir / "results.json", results)
    return results
