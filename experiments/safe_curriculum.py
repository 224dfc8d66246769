r"""Safe exploration curriculum: a heated zone learns its gains by CBF-certified, most-informative experiments.

The twin is the air node of ``physics.Building2R2C`` (envelope held at ``T_wall``), in kelvin per hour,

$$ \dot T = k\,(T_{\mathrm{wall}} − T) + b\,Q + d = φ(T, Q)ᵀθ,
   \qquad θ = (k, b, d), \quad φ = (T_{\mathrm{wall}} − T, Q, 1), $$

with unknown envelope coupling ``k = 3600/(R_{in,wall} C_air)`` (1/h), heater gain ``b = 3.6·10⁶ η / C_air``
(K/(kW h)) and internal gains ``d`` (K/h); ``θ ~ N(μ₀, Σ₀)`` a priori and the true ``θ`` is drawn from it, one per seed.
Safety is the control barrier function ``h = T_max − T`` with ``γ(h) = α h``: a state–action pair ``z = (T, Q)`` is
safe when ``ḣ + αh = −φᵀθ + α(T_max − T) ≥ 0`` (:func:`twinjax.control.cbf.barrier_rate`), so the *true safe set* of
operating points depends on the unknown ``θ``. An experiment at ``z`` holds the zone at ``T``, applies ``Q`` and
measures the heating rate ``y = φ(z)ᵀθ + ε``, ``ε ~ N(0, noise_sd²)``; running it at an unsafe ``z`` is a violation.

Each round (``twinjax.control.exploration``): certify the candidate grid under the current posterior with the robust
margin ``κ√(φᵀΣφ)``, ``κ = √χ²₃(1 − δ/R)`` (so that with ``θ`` from the prior the whole curriculum stays safe with
probability ``≥ 1 − δ``), pick the candidate of largest information gain ``½ log(1 + φᵀΣφ/σ²)`` in the certified
set, measure the true system there, update the conjugate posterior. Strategies compared over ``n_seeds`` seeds:

* ``robust``: information gain inside the robustly certified set (the method);
* ``mean``: information gain inside the set certified by the posterior mean alone (``κ = 0``, not robust);
* ``random``: a uniform draw from the robustly certified set (safe, but slower to learn and to grow).

Reported per round: the certified set as a fraction of the true safe set, posterior sds, violations; at the end the
parameter error and the RMS error of the predicted rate over the grid. A closed-loop check follows: heating at full
power from ``T_wall`` through :func:`twinjax.control.cbf.robust_filter` under the prior and under the final posterior
(both never exceed ``T_max`` under the true ``θ``; the learnt twin gets closer to it) and through the non-robust filter
with the prior mean (which overshoots for some seeds).

Measured (``twinjax run safe-curriculum``, seed 0, defaults: 200 seeds × 25 rounds, κ = 4.80; the tables are in
``docs/control_safety.md``):

- violations: robust 0, random-in-certified-set 0, posterior mean 390 (in 140 of 200 seeds); closed loop at full
  heating through the CBF filter: 0 / 200 overshoots with the prior and with the learnt posterior, 83 / 200 with the
  posterior-mean filter (one runs away to 100.8 °C);
- certified ∩ safe / true safe set (mean over seeds), rounds 0 → 1 → 2 → 5 → 10 → 25: robust 0.13 → 0.50 → 0.82 →
  0.92 → 0.95 → 0.97; random 0.13 → 0.44 → 0.61 → 0.825 → 0.905 → 0.95;
- final model error: RMS of the predicted heating rate over the grid 0.091 K/h (random 0.170); parameter errors
  0.019 / 0.030 / 0.23 prior sd for ``k`` / ``b`` / ``d``; the learnt twin lets the closed loop come within 2.1 K of
  ``T_max`` on average (10.1 K with the prior).
"""

import dataclasses
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from physics import Building2R2C
from twinjax.control import cbf, exploration
from twinjax.runs import write_json

SUMMARY_KEYS = ("violations", "seeds_with_violation", "certified_fraction", "final", "closed_loop", "wall_time_s")
STRATEGIES = ("robust", "mean", "random")
C_AIR_J_K = 2.0e6  # the air node's heat capacity (physics.Building2R2C default)


@dataclasses.dataclass(frozen=True)
class Config:
    n_seeds: int = 200
    rounds: int = 25
    grid_T: int = 49  # candidate temperatures in [T_low, T_max]
    grid_Q: int = 49  # candidate heating powers in [0, Q_max]
    T_low: float = 14.0  # °C
    T_max: float = 28.0  # °C, the barrier h = T_max − T
    T_wall: float = 16.0  # °C, envelope temperature (held)
    Q_max: float = 12.0  # kW
    alpha: float = 0.5  # 1/h, class-K gain of the CBF
    prior_mean: tuple[float, float, float] = (1.8, 1.8, 0.54)  # (k 1/h, b K/(kW h), d K/h)
    prior_sd: tuple[float, float, float] = (0.4, 0.4, 0.3)
    noise_sd: float = 0.3  # K/h, the measured heating rate
    delta: float = 1e-3  # probability that any round certifies an unsafe point
    closed_loop_hours: float = 6.0
    closed_loop_dt: float = 0.01  # h
    seed: int = 0

    def __post_init__(self):
        for name in ("n_seeds", "rounds", "grid_T", "grid_Q"):
            if getattr(self, name) < 2:
                raise ValueError(f"`{name}` must be >= 2, got {getattr(self, name)}.")
        for name in ("Q_max", "alpha", "noise_sd", "closed_loop_hours", "closed_loop_dt"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        if not self.T_low < self.T_wall < self.T_max:
            raise ValueError(f"need T_low < T_wall < T_max, got {self.T_low}, {self.T_wall}, {self.T_max}.")
        if len(self.prior_mean) != 3 or len(self.prior_sd) != 3 or min(self.prior_sd) <= 0:
            raise ValueError(
                f"`prior_mean`/`prior_sd` must hold 3 values (sd > 0), got {self.prior_mean}, {self.prior_sd}."
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"`delta` must lie in (0, 1), got {self.delta}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_seeds=32, rounds=10, grid_T=21, grid_Q=21, closed_loop_hours=3.0)


# ---------------------------------------------------------------------------------------------------------------------
# the twin (control-affine, linear in θ) and the true system (physics.Building2R2C)


def make_model(config: Config):
    """``(h, f, g, φ)`` of the twin: barrier, drift ``f(x; θ)``, input matrix ``g(x; θ)`` (K/h), features."""

    def h(x):
        return config.T_max - x[0]

    def f(x, theta):
        return jnp.stack([theta[0] * (config.T_wall - x[0]) + theta[2]])

    def g(x, theta):
        return theta[1].reshape(1, 1)

    def phi(z):
        return jnp.stack([config.T_wall - z[0], z[1], jnp.ones_like(z[0])])

    return h, f, g, phi


def true_rate(config: Config, theta, z):
    """The heating rate (K/h) of ``physics.Building2R2C`` at ``z = (T °C, Q kW)`` with the twin's ``θ`` mapped to its
    resistance, efficiency and occupancy gain."""
    house = Building2R2C(
        r_in_wall_K_W=3600.0 / (theta[0] * C_AIR_J_K),
        c_air_J_K=C_AIR_J_K,
        heating_efficiency=theta[1] * C_AIR_J_K / 3.6e6,
    )
    x = jnp.stack([z[0], jnp.asarray(config.T_wall, z.dtype)])
    u = jnp.stack([1000.0 * z[1], jnp.asarray(0.0, z.dtype), theta[2] * C_AIR_J_K / 3600.0])
    return 3600.0 * house.vector_field(0.0, x, u)[0]


def grid(config: Config):
    T = jnp.linspace(config.T_low, config.T_max, config.grid_T)
    Q = jnp.linspace(0.0, config.Q_max, config.grid_Q)
    TT, QQ = jnp.meshgrid(T, Q, indexing="ij")
    return jnp.stack([TT.ravel(), QQ.ravel()], axis=1)


@functools.lru_cache(maxsize=16)
def kappa_of(config: Config) -> float:
    return exploration.confidence_multiplier(config.delta, 3, config.rounds)


# ---------------------------------------------------------------------------------------------------------------------
# the curriculum


def curriculum(config: Config, strategy: str, theta_true, key, kappa):
    """``rounds`` of certify → choose → measure → update for one true ``θ``; per-round records."""
    h, f, g, phi = make_model(config)
    cands = grid(config)
    feats = jax.vmap(phi)(cands)
    noise_var = config.noise_sd**2

    def safety(z, theta):
        return cbf.barrier_rate(h, f, g, z[:1], z[1:], theta, config.alpha)

    true_s = config.alpha * (config.T_max - cands[:, 0]) - jax.vmap(lambda z: true_rate(config, theta_true, z))(cands)
    safe = true_s >= 0
    mean0 = jnp.asarray(config.prior_mean)
    cov0 = jnp.diag(jnp.asarray(config.prior_sd) ** 2)

    def step(carry, k):
        mean, cov = carry
        k_pick, k_noise = jax.random.split(k)
        cert = exploration.certify(safety, cands, mean, cov, kappa).certified
        if strategy == "random":
            i, found = exploration.random_safe_point(k_pick, cert)
        else:
            i, found = exploration.next_point(exploration.information_gain(feats, cov, noise_var), cert)
        z = cands[i]
        y = true_rate(config, theta_true, z) + config.noise_sd * jax.random.normal(k_noise, (), z.dtype)
        new_mean, new_cov = exploration.bayes_linear_update(mean, cov, feats[i][None], y[None], noise_var)
        mean = jnp.where(found, new_mean, mean)
        cov = jnp.where(found, new_cov, cov)
        record = {
            "fraction": jnp.sum(cert & safe) / jnp.sum(safe),
            "unsafe_certified": jnp.sum(cert & ~safe),
            "violation": found & ~safe[i],
            "found": found,
            "point": z,
            "sd": jnp.sqrt(jnp.diag(cov)),
            "certified": cert,
        }
        return (mean, cov), record

    (mean, cov), rec = jax.lax.scan(step, (mean0, cov0), jax.random.split(key, config.rounds))
    final_cert = exploration.certify(safety, cands, mean, cov, kappa).certified
    sd0 = jnp.sqrt(jnp.diag(cov0))
    pred_err = feats @ (mean - theta_true)
    return {
        "fraction": jnp.concatenate([rec["fraction"], (jnp.sum(final_cert & safe) / jnp.sum(safe))[None]]),
        "sd": jnp.concatenate([sd0[None], rec["sd"]]),
        "violations": jnp.sum(rec["violation"]),
        "unsafe_certified": jnp.sum(rec["unsafe_certified"]),
        "empty_rounds": jnp.sum(~rec["found"]),
        "points": rec["point"],
        "mean": mean,
        "cov": cov,
        "param_error": jnp.abs(mean - theta_true),
        "rate_rmse": jnp.sqrt(jnp.mean(pred_err**2)),
        "safe": safe,
        "certified": jnp.concatenate([rec["certified"], final_cert[None]]),
    }


@functools.partial(jax.jit, static_argnums=(0, 1))
def _curricula(config: Config, choice: str, thetas, keys, kappa):
    return jax.vmap(lambda th, k: curriculum(config, choice, th, k, kappa))(thetas, keys)


@functools.partial(jax.jit, static_argnums=(0,))
def _closed_loops(config: Config, thetas, means, covs, kappas):
    return jax.vmap(lambda th, m, c, k: closed_loop(config, th, m, c, k))(thetas, means, covs, kappas)


def closed_loop(config: Config, theta_true, mean, cov, kappa):
    """Full-power heating from ``T_wall`` through the CBF filter with posterior ``(mean, cov)``, true ``θ``: the
    largest temperature reached and the final one (after ``closed_loop_hours``)."""
    h, f, g, _ = make_model(config)
    n = int(round(config.closed_loop_hours / config.closed_loop_dt))

    def step(x, _):
        res = cbf.robust_filter(
            h, f, g, x, jnp.array([config.Q_max]), mean, cov, alpha=config.alpha, kappa=kappa, lower=0.0,
            upper=config.Q_max,
        )  # fmt: skip
        rate = true_rate(config, theta_true, jnp.stack([x[0], res.u[0]]))
        x = x + config.closed_loop_dt * rate  # explicit Euler: h stays ≥ 0 when the true condition holds, αdt < 1
        return x, x[0]

    _, temps = jax.lax.scan(step, jnp.array([config.T_wall]), None, length=n)
    return jnp.max(temps), temps[-1]


# ---------------------------------------------------------------------------------------------------------------------
# evaluate / run


def _summary(per_seed, key):
    v = per_seed[key]
    return {"mean": jnp.mean(v, 0), "q10": jnp.quantile(v, 0.1, axis=0), "q90": jnp.quantile(v, 0.9, axis=0)}


def evaluate(config: Config, key: jax.Array) -> dict:
    """All strategies over ``n_seeds`` true ``θ`` drawn from the prior, and the closed-loop check (pure; no I/O)."""
    k_theta, k_run = jax.random.split(key)
    mean0 = jnp.asarray(config.prior_mean)
    sd0 = jnp.asarray(config.prior_sd)
    thetas = mean0 + sd0 * jax.random.normal(k_theta, (config.n_seeds, 3))
    keys = jax.random.split(k_run, config.n_seeds)
    kappa = kappa_of(config)
    out = {"kappa": kappa, "violations": {}, "seeds_with_violation": {}, "certified_fraction": {}, "final": {}}
    per = {}
    for s in STRATEGIES:
        # same keys for every strategy: paired comparison of the same true θ and noise stream
        # robust and mean share one compiled program (κ is an argument)
        r = _curricula(
            config, "random" if s == "random" else "information", thetas, keys, 0.0 if s == "mean" else kappa
        )
        per[s] = r
        out["violations"][s] = jnp.sum(r["violations"])
        out["seeds_with_violation"][s] = jnp.sum(r["violations"] > 0)
        out["certified_fraction"][s] = _summary(r, "fraction")
        out["final"][s] = {
            "fraction": jnp.mean(r["fraction"][:, -1]),
            "param_abs_error": jnp.mean(r["param_error"], 0),
            "param_error_over_prior_sd": jnp.mean(r["param_error"], 0) / sd0,
            "rate_rmse": jnp.mean(r["rate_rmse"]),
            "sd": jnp.mean(r["sd"][:, -1], 0),
        }
        out[f"rounds_{s}"] = {
            "sd_mean": jnp.mean(r["sd"], 0),
            "unsafe_certified": jnp.sum(r["unsafe_certified"]),
            "empty_rounds": jnp.sum(r["empty_rounds"]),
        }
    # closed loop: prior (robust), learnt posterior (robust), prior mean (non-robust)
    cov0 = jnp.diag(sd0**2)
    n = config.n_seeds
    means = jnp.concatenate([jnp.broadcast_to(mean0, (n, 3)), per["robust"]["mean"], jnp.broadcast_to(mean0, (n, 3))])
    covs = jnp.concatenate([jnp.broadcast_to(cov0, (n, 3, 3)), per["robust"]["cov"], jnp.broadcast_to(cov0, (n, 3, 3))])
    kappas = jnp.concatenate([jnp.full(n, kappa), jnp.full(n, kappa), jnp.zeros(n)])
    peak, last = _closed_loops(config, jnp.concatenate([thetas] * 3), means, covs, kappas)
    prior, learnt, nominal = ((peak[i * n : (i + 1) * n], last[i * n : (i + 1) * n]) for i in range(3))
    out["closed_loop"] = {}
    for name, (t_max, _) in (("prior_robust", prior), ("learnt_robust", learnt), ("prior_mean", nominal)):
        out["closed_loop"][name] = {
            "overshoots": jnp.sum(t_max > config.T_max + 1e-9),
            "max_T": jnp.max(t_max),
            "mean_peak_gap_K": jnp.mean(config.T_max - t_max),
        }
    out["example"] = {s: {k: per[s][k][0] for k in ("points", "fraction", "safe", "certified")} for s in STRATEGIES}
    out["example"]["theta"] = thetas[0]
    out["example"]["grid"] = grid(config)
    out["example"]["rounds_shown"] = [0, 1, max(2, config.rounds // 4), config.rounds]
    loops = out["closed_loop"]
    out["total_violations_robust"] = (
        out["violations"]["robust"] + loops["prior_robust"]["overshoots"] + loops["learnt_robust"]["overshoots"]
    )
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(out: dict, config: Config, path: pathlib.Path) -> None:
    plt = _pyplot()
    ex = out["example"]
    cands = np.asarray(ex["grid"])
    T = cands[:, 0].reshape(config.grid_T, config.grid_Q)
    Q = cands[:, 1].reshape(config.grid_T, config.grid_Q)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    sets = np.asarray(ex["robust"]["certified"])
    shown = ex["rounds_shown"]
    final = sets[-1].reshape(T.shape).astype(float)
    ax.contourf(T, Q, final, levels=[0.5, 1.5], colors=["C0"], alpha=0.18)
    for r, c in zip(shown, ("C0", "C1", "C2", "C4")):
        ax.contour(T, Q, sets[r].reshape(T.shape).astype(float), levels=[0.5], colors=[c], linewidths=1.6)
        ax.plot([], [], "-", color=c, label=f"certified set, round {r}")
    ax.contour(T, Q, np.asarray(ex["robust"]["safe"]).reshape(T.shape).astype(float), levels=[0.5], colors="k",
               linestyles="--")  # fmt: skip
    ax.plot([], [], "k--", label="true safe-set boundary")
    pts = np.asarray(ex["robust"]["points"])
    sc = ax.scatter(pts[:, 0], pts[:, 1], c=np.arange(len(pts)), cmap="autumn", s=40, edgecolor="k", zorder=5,
                    clip_on=False, label="robust explorer's points")  # fmt: skip
    fig.colorbar(sc, ax=ax, label="round of the experiment")
    bad = np.asarray(ex["mean"]["points"])
    ax.scatter(bad[:, 0], bad[:, 1], marker="x", color="m", s=40, zorder=6, clip_on=False,
               label="non-robust explorer's points")  # fmt: skip
    ax.set_xlabel("zone temperature T (°C)")
    ax.set_ylabel("heating power Q (kW)")
    ax.set_title("state–action space (seed 0): certified set grows")
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[1]
    rounds = np.arange(config.rounds + 1)
    for s, c in zip(STRATEGIES, ("C0", "C3", "C2")):
        cf = out["certified_fraction"][s]
        lab = {"robust": "robust, info gain", "mean": "posterior mean (κ=0), info gain", "random": "robust, random"}[s]
        lab += f" — {int(out['violations'][s])} violations"
        ax.plot(rounds, np.asarray(cf["mean"]), color=c, label=lab)
        ax.fill_between(rounds, np.asarray(cf["q10"]), np.asarray(cf["q90"]), color=c, alpha=0.15)
    ax.set_xlabel("round")
    ax.set_ylabel("certified ∩ safe / true safe set")
    ax.set_title(f"explorable set over {config.n_seeds} seeds (10–90 %)")
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[2]
    names = ("k (1/h)", "b (K/(kW h))", "d (K/h)")
    for s, ls in zip(("robust", "random"), ("-", "--")):
        sd = np.asarray(out[f"rounds_{s}"]["sd_mean"])
        for j, (n, c) in enumerate(zip(names, ("C0", "C1", "C2"))):
            ax.semilogy(rounds, sd[:, j] / sd[0, j], ls, color=c, label=f"{n}, {s}")
    ax.set_xlabel("round")
    ax.set_ylabel("posterior sd / prior sd (mean over seeds)")
    ax.set_title("posterior uncertainty")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):
        out = jax.device_get(evaluate(config, jax.random.key(config.seed)))
    out["wall_time_s"] = time.perf_counter() - start
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _figure(out, config, fig_dir / "safe_curriculum.png")
    results = {k: v for k, v in out.items() if k != "example"}
    write_json(run_dir / "results.json", results)
    return results
