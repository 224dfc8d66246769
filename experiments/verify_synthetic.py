"""Verification of synthetic data: a runtime filter on flow-generated battery operating points, false-rejection rate.

1. **Data.** ``n_trajectories`` runs of the 5 Ah cell (``physics.battery.cell_5Ah``, one RC pair, lumped thermal
   model) for ``steps`` steps of ``dt`` s, driven by piecewise-constant currents ``I ~ N(current_mean, current_sd²)``
   (new value every ``segment`` steps; positive on discharge) at an ambient temperature ``U(ambient_C)`` per run
   (fused RK4, ``twinjax.ensemble``). The operating points ``(T_cell [°C], I [A])`` at every step, subsampled to
   ``n_data``, include some outside the limits (hot cells, large currents).
2. **Generator.** A rational-quadratic spline coupling flow (``twinjax.generative.CouplingFlow``) trained by maximum
   likelihood on the standardised points (``flow_steps`` Adam steps, float32); ``n_samples`` synthetic points are
   drawn from it.
3. **Sets.** The true limits ``S_true = {T ≤ T_max, I_min ≤ I ≤ I_max}``. The runtime invariant adds the twin's
   one-step prediction — the cell temperature after ``horizon_s`` seconds at the sample's current, with the RC pair
   at its steady state ``v = I R_1`` and the worst-case ambient ``ambient_C[1]`` (explicit Euler of the twin's own
   vector field) must stay below ``T_max`` — and tightens every constraint by ``κ σ_j``, ``σ = (σ_T, σ_I, σ_I, σ_T)``
   (the twin's temperature and current uncertainty): ``S_inv = (S_true ∩ {T_pred ≤ T_max}).tightened(κ σ) ⊂ S_true``.
4. **Rates.** The runtime filter (``twinjax.risk.verification.verify``) on the samples: acceptance rate, rejections
   per constraint; false-rejection rate ``P(x ∉ S_inv | x ∈ S_true)`` with its 95 % Clopper–Pearson interval; false
   acceptance ``P(x ∈ S_inv | x ∉ S_true)`` (0 by construction; checked); the same false-rejection rate along a grid
   of margins ``κ``. The rejection sampler ``sample_accepted`` then returns exactly ``n_filtered`` accepted samples.

Measured: see ``docs/verification.md`` (``twinjax run verify-synthetic``, seed 0, defaults).
"""

import dataclasses
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import twinjax as tj
import twinjax.generative as gen
from physics.battery import KELVIN, TheveninBattery, cell_5Ah
from twinjax.risk import verification as ver
from twinjax.runs import write_json

SUMMARY_KEYS = (
    "n_samples",
    "acceptance_rate",
    "false_rejection_rate",
    "false_acceptance_rate",
    "per_constraint_rejections",
    "wall_time_s",
)
LABELS = ("T_C", "I_A")


@dataclasses.dataclass(frozen=True)
class Config:
    n_trajectories: int = 512
    steps: int = 360
    dt: float = 10.0  # s
    segment: int = 12  # steps per constant-current segment
    current_mean: float = 4.0  # A, positive on discharge
    current_sd: float = 7.0  # A
    ambient_C: tuple[float, float] = (10.0, 35.0)
    n_data: int = 40_000
    flow_layers: int = 6
    flow_hidden: int = 64
    flow_bins: int = 8
    flow_steps: int = 3000
    batch_size: int = 512
    learning_rate: float = 2e-3
    n_samples: int = 200_000
    t_max_C: float = 45.0
    i_min_A: float = -10.0
    i_max_A: float = 20.0
    horizon_s: float = 30.0
    sigma_T_K: float = 1.0  # the twin's temperature uncertainty (sd)
    sigma_I_A: float = 0.25  # the current measurement uncertainty (sd)
    kappa: float = 3.0
    kappa_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    level: float = 0.95
    n_filtered: int = 10_000
    seed: int = 0

    def __post_init__(self):
        for name in ("n_trajectories", "steps", "segment", "n_data", "flow_layers", "flow_hidden", "flow_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("flow_steps", "batch_size", "n_samples", "n_filtered"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.n_data > self.n_trajectories * self.steps:
            raise ValueError(
                f"`n_data` ({self.n_data}) must be <= n_trajectories * steps ({self.n_trajectories * self.steps})."
            )
        for name in ("dt", "current_sd", "horizon_s", "sigma_T_K", "sigma_I_A", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        if not self.i_min_A < self.i_max_A:
            raise ValueError(f"need i_min_A < i_max_A, got {self.i_min_A}, {self.i_max_A}.")
        if len(self.ambient_C) != 2 or not self.ambient_C[0] <= self.ambient_C[1] < self.t_max_C:
            raise ValueError(f"`ambient_C` must be (low, high) with high < t_max_C, got {self.ambient_C}.")
        if self.kappa < 0 or not self.kappa_grid or min(self.kappa_grid) < 0:
            raise ValueError(f"margins must be >= 0, got kappa={self.kappa}, kappa_grid={self.kappa_grid}.")
        if not 0 < self.level < 1:
            raise ValueError(f"`level` must be in (0, 1), got {self.level}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            n_trajectories=32,
            steps=120,
            n_data=3000,
            flow_layers=4,
            flow_hidden=32,
            flow_steps=300,
            batch_size=256,
            n_samples=20_000,
            n_filtered=1000,
        )


# ------------------------------------------------------------------------------------------------------------ physics


def simulate_operating_points(config: Config, key: jax.Array) -> jax.Array:
    """``(n_data, 2)`` operating points ``(T_cell [°C], I [A])`` of the cell under random currents and ambients."""
    cell = cell_5Ah()
    m, s = config.n_trajectories, config.steps
    k_i, k_amb, k_soc, k_pick = jax.random.split(key, 4)
    n_seg = -(-s // config.segment)
    current = config.current_mean + config.current_sd * jax.random.normal(k_i, (m, n_seg))
    current = jnp.repeat(current, config.segment, axis=1)[:, :s]
    lo, hi = config.ambient_C
    ambient_K = jax.random.uniform(k_amb, (m,), minval=lo, maxval=hi) + KELVIN
    soc = jax.random.uniform(k_soc, (m,), minval=0.3, maxval=0.9)
    x0 = jax.vmap(cell.initial_state)(soc, ambient_K)
    controls = jnp.stack([current, jnp.broadcast_to(ambient_K[:, None], current.shape)], axis=-1)
    ts = config.dt * jnp.arange(s + 1)
    path = tj.ensemble(cell, ts, x0=x0, controls=controls, observe=False, shard=False, key=key)
    temp_C = path.xs[:, :-1, -1] - KELVIN  # the temperature at which each current is applied
    points = jnp.stack([temp_C.ravel(), current.ravel()], axis=-1)
    pick = jax.random.choice(k_pick, m * s, (config.n_data,), replace=False)
    return points[pick]


class PredictedTemperature(eqx.Module):
    """``T(t + h) − T_max`` (K) for an operating point ``x = (T [°C], I [A])``: one explicit-Euler step of the cell's
    vector field over the horizon ``h``, RC pair at steady state ``v = I R_1``, ambient ``ambient_K``."""

    cell: TheveninBattery
    horizon_s: float
    ambient_K: float
    t_max_C: float

    def __call__(self, x):
        temp_K, current = x[0] + KELVIN, x[1]
        r1 = self.cell.r_rc_ohm[0]
        state = jnp.stack([jnp.asarray(0.5, x.dtype), current * r1, temp_K]).astype(x.dtype)
        u = jnp.stack([current, jnp.asarray(self.ambient_K, x.dtype)])
        rate = self.cell.vector_field(0.0, state, u)[-1]
        return temp_K + self.horizon_s * rate - (self.t_max_C + KELVIN)


def safety_sets(config: Config) -> tuple[ver.Invariant, ver.Invariant, jax.Array]:
    """``(S_true, S_inv at κ = 0, σ)``: the true box, the box ∩ the one-step prediction, the per-constraint sd."""
    true_set = ver.Invariant.box([-jnp.inf, config.i_min_A], [config.t_max_C, config.i_max_A], labels=LABELS)
    predicted = PredictedTemperature(cell_5Ah(), config.horizon_s, config.ambient_C[1] + KELVIN, config.t_max_C)
    name = f"T_C(t+{config.horizon_s:g} s) <= {config.t_max_C:g}"
    invariant = true_set & ver.Invariant.sublevel(predicted, 2, name)
    sigma = jnp.array([config.sigma_T_K, config.sigma_I_A, config.sigma_I_A, config.sigma_T_K])
    return true_set, invariant, sigma


# ----------------------------------------------------------------------------------------------------------- generator


def train_flow(config: Config, data: jax.Array, key: jax.Array):
    """A spline coupling flow fitted to the standardised data (float32); returns ``(sample_fn, history)``."""
    mean, sd = jnp.mean(data, 0), jnp.std(data, 0)
    z = ((data - mean) / sd).astype(jnp.float32)
    k_init, k_train = jax.random.split(key)
    flow = gen.CouplingFlow(2, k_init, layers=config.flow_layers, hidden=config.flow_hidden, kind="spline",
                            bins=config.flow_bins, bound=5.0)  # fmt: skip
    flow = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, flow)
    schedule = optax.cosine_decay_schedule(config.learning_rate, config.flow_steps)
    result = gen.train(flow, z, optimizer=optax.adam(schedule), steps=config.flow_steps, key=k_train,
                       batch_size=config.batch_size, log_every=min(100, config.flow_steps), progress=False)  # fmt: skip
    trained = result.model

    def sample_fn(k, n):
        return trained.sample(k, n).astype(data.dtype) * sd + mean

    return sample_fn, result.history


# ---------------------------------------------------------------------------------------------------------- evaluate


def _rate_dict(rate: ver.RateEstimate) -> dict:
    return {f: getattr(rate, f) for f in rate._fields}


def evaluate(config: Config, key: jax.Array) -> dict:
    """Simulate, train the flow, sample, filter, estimate the rates (no I/O)."""
    k_data, k_flow, k_sample, k_filtered = jax.random.split(key, 4)
    data = simulate_operating_points(config, k_data)
    sample_fn, history = train_flow(config, data, k_flow)
    samples = sample_fn(k_sample, config.n_samples)
    true_set, inv0, sigma = safety_sets(config)
    inv = inv0.tightened(config.kappa * sigma)

    report = ver.verify(samples, inv)
    frr = ver.false_rejection_rate(samples, inv, true_set, level=config.level)
    far = ver.false_acceptance_rate(samples, inv, true_set, level=config.level)
    inside_true = true_set.contains(samples)

    kappas = jnp.asarray(config.kappa_grid, samples.dtype)
    inside_by_kappa = jax.vmap(lambda k: inv0.tightened(k * sigma).contains(samples))(kappas)
    n_true = jnp.sum(inside_true)
    false_rej = jnp.sum(inside_true & ~inside_by_kappa, axis=1)
    lo, hi = ver.binomial_ci(false_rej, jnp.broadcast_to(n_true, false_rej.shape), config.level)
    curve = {
        "kappa": kappas,
        "false_rejection_rate": false_rej / n_true,
        "ci_low": lo,
        "ci_high": hi,
        "rejection_rate": 1.0 - jnp.mean(inside_by_kappa, axis=1),
        "false_acceptances": jnp.sum(~inside_true & inside_by_kappa, axis=1),
    }

    acc = float(report.acceptance_rate)
    filtered, filtered_rate = ver.sample_accepted(
        sample_fn, k_filtered, config.n_filtered, inv, oversample=min(1.2 / max(acc, 1e-3), 50.0), max_rounds=10
    )
    return {
        "n_samples": config.n_samples,
        "acceptance_rate": report.acceptance_rate,
        "false_rejection_rate": _rate_dict(frr),
        "false_acceptance_rate": _rate_dict(far),
        "per_constraint_rejections": dict(zip(inv.names, report.rejections_per_constraint)),
        "kappa": config.kappa,
        "margins": dict(zip(inv.names, inv.margins)),
        "truly_unsafe_fraction": {"data": jnp.mean(~true_set.contains(data)), "samples": 1.0 - jnp.mean(inside_true)},
        "inv_subset_of_true": jnp.all(curve["false_acceptances"] == 0),
        "kappa_curve": curve,
        "flow_final_nll": history["loss"][-1],
        "rejection_sampler": {
            "n": config.n_filtered,
            "acceptance_rate": filtered_rate,
            "all_accepted": jnp.all(inv.contains(filtered)),
        },
        "_samples": samples,
        "_accepted": report.accepted,
        "_inside_true": inside_true,
    }


# ------------------------------------------------------------------------------------------------------------ figure


def _figure(out: dict, config: Config, path: pathlib.Path, n_plot: int = 20_000) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(out["_samples"])[:n_plot]
    acc = np.asarray(out["_accepted"])[:n_plot]
    safe = np.asarray(out["_inside_true"])[:n_plot]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5))
    groups = [
        (acc & safe, "C2", "accepted", "."),
        (~acc & safe, "C1", "false rejection (safe, rejected)", "."),
        (~safe & ~acc, "C3", "truly unsafe (rejected)", "x"),
        (~safe & acc, "k", "false acceptance", "*"),
    ]
    for mask, color, label, marker in groups:
        if mask.any():
            ax.scatter(x[mask, 1], x[mask, 0], s=3 if marker == "." else 8, c=color, marker=marker, lw=0.6,
                       label=f"{label} ({mask.sum()})", alpha=0.6, rasterized=True)  # fmt: skip
    true_set, inv0, sigma = safety_sets(config)
    inv = inv0.tightened(config.kappa * sigma)
    i_grid = np.linspace(x[:, 1].min() - 1, x[:, 1].max() + 1, 300)
    t_grid = np.linspace(x[:, 0].min() - 1, x[:, 0].max() + 1, 300)
    ii, tt = np.meshgrid(i_grid, t_grid)
    pts = jnp.asarray(np.stack([tt.ravel(), ii.ravel()], -1))
    for s, color, label, style in ((true_set, "k", "S_true", "-"), (inv, "C0", f"S_inv (κ = {config.kappa:g})", "--")):
        level = np.asarray(jnp.max(s.values(pts), axis=1)).reshape(tt.shape)
        ax.contour(ii, tt, level, levels=[0.0], colors=color, linestyles=style, linewidths=1.5)
        ax.plot([], [], color=color, ls=style, label=label)
    ax.set_xlabel("current I (A, + discharge)")
    ax.set_ylabel("cell temperature T (°C)")
    ax.set_title(f"{len(x)} of {config.n_samples} flow samples, runtime filter")
    ax.legend(fontsize=7, loc="upper left", markerscale=2)

    c = {k: np.asarray(v) for k, v in out["kappa_curve"].items()}
    bx.fill_between(c["kappa"], c["ci_low"], c["ci_high"], color="C1", alpha=0.3,
                    label=f"{int(100 * config.level)} % Clopper–Pearson CI")  # fmt: skip
    bx.plot(c["kappa"], c["false_rejection_rate"], "o-", color="C1", ms=4, label="false-rejection rate")
    bx.plot(c["kappa"], c["rejection_rate"], "s--", color="C0", ms=3, label="rejection rate (all samples)")
    bx.axvline(config.kappa, color="gray", lw=0.8, ls=":")
    bx.set_xlabel("margin κ (S_inv = constraints tightened by κσ)")
    bx.set_ylabel("rate")
    bx.set_title(
        f"false rejection vs margin (n = {config.n_samples}); false acceptances: {int(c['false_acceptances'].sum())}"
    )
    bx.legend(fontsize=8)
    bx.set_ylim(0, None)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):  # constraint values and interval bisection in float64; the flow trains in float32
        out = jax.device_get(evaluate(config, jax.random.key(config.seed)))
        out["wall_time_s"] = time.perf_counter() - start
        fig_dir = run_dir / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        _figure(out, config, fig_dir / "verify_synthetic.png")
    results = {k: v for k, v in out.items() if not k.startswith("_")}
    write_json(run_dir / "results.json", results)
    return results
