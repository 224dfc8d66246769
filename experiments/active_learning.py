"""Active learning: A-optimal sequential design against D-optimal and random, and input design for a pendulum.

Chapter 000, "Active Learning for Efficient Model Building": the twin learns its parameters by Bayesian regression,
and a generator proposes candidate experiments; the one that minimises the next trace of the posterior covariance
``tr Σ_t`` is run.

**Part 1 — Bayesian linear-regression twin.** Polynomial regression ``y = Σ_j θ_j x^j + ε`` (``degree`` 3),
``ε ~ N(0, noise²)``, prior ``θ ~ N(0, prior_sd² I)``; the truth ``θ*`` is drawn from the prior for each seed. At
each of ``steps`` steps the generator draws ``n_candidates`` design points ``x ~ U(−1, 1)``; A-optimal picks the
smallest next ``tr Σ``, D-optimal the largest predictive variance (the largest gain in ``log det Σ⁻¹``), random a
uniformly chosen candidate (itself a ``U(−1, 1)`` point: passive sampling). The three strategies see the same
candidate draws (paired). Results: ``tr Σ_t`` against ``t`` (mean and 10–90 % band over ``n_seeds`` seeds), the final
ratios random / A and D / A, and the calibration check ``E‖m_T − θ*‖² = E tr Σ_T`` per strategy.

**Part 2 — input design for a nonlinear twin.** The pendulum of ``physics/pendulum.py`` (``pendulum_twin``, torque
input ``|τ| ≤ u_max``, angle measured with noise ``angle_sd`` every ``dt``), starting at rest, calibrating
``(length_m, damping_per_s)`` in log space (log-normal priors). The pendulum rather than the battery ECM: its input
enters through a nonlinear ODE (``sin θ``), its response to the input is strongly frequency-selective (resonance near
``√(g/L)``), so the input matters — from rest, no torque means no information at all — and the linearisation is
genuinely tested. ``twinjax.calibrate.design.design_input`` draws piecewise-constant inputs from the generator and
refines them by Adam on ``log tr I(u)⁻¹``; the result is compared with the best of a grid of full-amplitude sinusoids,
square waves and a step, and with the generator's unrefined draws (random inputs). For the designed input, the best
grid input and the median random input, ``n_datasets`` noisy datasets are fitted by Gauss–Newton least squares
(started at the truth: the local spread is measured), and the empirical mean squared error of ``log φ̂`` is compared
with the linearised prediction ``tr F⁻¹`` (``F`` the Fisher information without the prior).
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
from physics import Pendulum, pendulum_twin
from twinjax.calibrate.design import (
    BayesianLinearRegression,
    design_criterion,
    design_input,
    output_sensitivity,
    piecewise_constant_input,
    sequential_design,
)
from twinjax.runs import write_json

SUMMARY_KEYS = (
    "final_trace",
    "trace_ratio_random_over_a",
    "trace_ratio_d_over_a",
    "squared_error_over_trace",
    "input_design.criterion",
    "input_design.ratio_grid_over_designed",
    "input_design.ratio_random_median_over_designed",
    "input_design.empirical_over_predicted",
    "wall_time_s",
)
STRATEGIES = ("a", "d", "random")
INPUTS = ("designed", "grid_best", "random_median")


@dataclasses.dataclass(frozen=True)
class Config:
    # part 1: Bayesian polynomial regression
    degree: int = 3
    n_candidates: int = 32  # generator draws per step
    steps: int = 40
    n_seeds: int = 200
    noise: float = 0.3  # measurement sd σ
    prior_sd: float = 1.0
    # part 2: pendulum input design
    n_times: int = 200
    dt: float = 0.05  # s
    u_max: float = 1.0  # N m
    angle_sd: float = 0.05  # rad
    length_m: float = 1.0
    damping_per_s: float = 0.1
    length_prior_sd: float = 0.3  # log-normal scale (log space)
    damping_prior_sd: float = 0.5
    design_candidates: int = 16
    n_segments: int = 20
    refine_steps: int = 60
    learning_rate: float = 0.1
    grid_frequencies_hz: tuple[float, ...] = (0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.8, 1.0, 1.5)
    n_datasets: int = 200
    gauss_newton_steps: int = 6
    seed: int = 0

    def __post_init__(self):
        for name in ("degree", "n_candidates", "steps", "n_seeds", "design_candidates", "n_segments", "n_datasets"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.n_seeds < 2 or self.n_datasets < 2:
            raise ValueError(f"`n_seeds` and `n_datasets` must be >= 2, got {self.n_seeds}, {self.n_datasets}.")
        if self.n_segments > self.n_times:
            raise ValueError(f"`n_segments` must be <= n_times ({self.n_times}), got {self.n_segments}.")
        if not self.grid_frequencies_hz:
            raise ValueError("`grid_frequencies_hz` must hold at least one frequency.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            steps=20,
            n_seeds=50,
            n_times=100,
            design_candidates=4,
            n_segments=10,
            refine_steps=15,
            grid_frequencies_hz=(0.3, 0.5, 0.8),
            n_datasets=50,
            gauss_newton_steps=4,
        )


# ---------------------------------------------------------------------------------------------------------------------
# part 1: sequential design for the linear-regression twin
# ---------------------------------------------------------------------------------------------------------------------


class PolynomialCandidates(eqx.Module):
    """The generator of part 1: ``n`` design points ``x ~ U(−1, 1)`` as polynomial features ``[1, x, …, x^degree]``.
    A module with static sizes, so repeated calls do not recompile."""

    n: int = eqx.field(static=True)
    degree: int = eqx.field(static=True)

    def __call__(self, key):
        x = jax.random.uniform(key, (self.n,), minval=-1.0, maxval=1.0)
        return x[:, None] ** jnp.arange(self.degree + 1)


def _after(first, second):
    """``second``, computed only once ``first`` is: keeps independent batched LAPACK calls of a jitted ``evaluate``
    from running concurrently (jaxlib 0.10 can deadlock its CPU thread pool on two at once)."""
    return jax.lax.optimization_barrier((first, second))[1]


def _regression_study(config: Config, key):
    d = config.degree + 1
    prior = BayesianLinearRegression(
        jnp.zeros(d), config.prior_sd**2 * jnp.eye(d), jnp.asarray(config.noise, float) ** 2
    )
    generator = PolynomialCandidates(config.n_candidates, config.degree)
    k_theta, k_run = jax.random.split(key)
    thetas = config.prior_sd * jax.random.normal(k_theta, (config.n_seeds, d))
    keys = jax.random.split(k_run, config.n_seeds)
    out, previous = {}, None
    for strategy in STRATEGIES:
        run = jax.vmap(lambda th, k: sequential_design(prior, generator, th, config.steps, k, strategy=strategy))
        thetas_s = thetas if previous is None else _after(previous, thetas)
        result = run(thetas_s, keys)
        previous = result.traces
        traces = result.traces  # (seed, step + 1)
        sq_err = jnp.sum((result.posterior.mean - thetas) ** 2, axis=1)
        final = traces[:, -1]
        diff = sq_err - final
        out[strategy] = {
            "mean": traces.mean(0),
            "q10": jnp.quantile(traces, 0.1, axis=0),
            "q90": jnp.quantile(traces, 0.9, axis=0),
            "final": final,
            "squared_error_mean": sq_err.mean(),
            "squared_error_minus_trace_se": diff.std(ddof=1) / jnp.sqrt(config.n_seeds),
            "squared_error_minus_trace_mean": diff.mean(),
            "chosen_x": result.features[:, :, 1],
            "finite": jnp.all(result.finite),
        }
    return out


# ---------------------------------------------------------------------------------------------------------------------
# part 2: input design for the pendulum
# ---------------------------------------------------------------------------------------------------------------------


def make_twin(config: Config):
    """The pendulum twin (at the true parameters), its parameter spec, the time grid and the initial state (rest)."""
    pendulum = Pendulum(length_m=config.length_m, damping_per_s=config.damping_per_s)
    twin = pendulum_twin(pendulum, dt=config.dt)
    # the sensor variance set as an array leaf, so that a sweep may trace `angle_sd`
    variance = jnp.reshape(jnp.asarray(config.angle_sd, float) ** 2, (1, 1))
    twin = eqx.tree_at(lambda m: m.observation.cov, twin, variance)
    spec = tj.Params(
        {
            "dynamics.length_m": tj.positive(dist.LogNormal(jnp.log(config.length_m), config.length_prior_sd)),
            "dynamics.damping_per_s": tj.positive(
                dist.LogNormal(jnp.log(config.damping_per_s), config.damping_prior_sd)
            ),
        }
    )
    ts = config.dt * jnp.arange(config.n_times, dtype=float)
    return twin, spec, ts, jnp.zeros(2)


def grid_labels(config: Config) -> list[str]:
    """Names of the grid inputs, in the order of :func:`grid_inputs`."""
    freqs = config.grid_frequencies_hz
    return [f"sine {f:g} Hz" for f in freqs] + [f"square {f:g} Hz" for f in freqs] + ["step"]


def grid_inputs(config: Config, ts):
    """The fixed grid, shape ``(grid, time, 1)``: full-amplitude sinusoids and square waves at each grid frequency,
    and a constant step (names: :func:`grid_labels`)."""
    freqs = jnp.asarray(config.grid_frequencies_hz, float)
    phase = 2 * jnp.pi * freqs[:, None] * ts[None, :]
    sines = config.u_max * jnp.sin(phase)
    squares = config.u_max * jnp.where(jnp.sin(phase) >= 0, 1.0, -1.0)
    step = config.u_max * jnp.ones((1, ts.shape[0]))
    return jnp.concatenate([sines, squares, step])[:, :, None]


def _gauss_newton(twin, spec, x0, ts, u, ys, z, steps):
    """Least squares ``min_z Σ_k (y_k − h_k(z))²`` by Gauss–Newton steps (no prior)."""

    def body(z, _):
        sens = output_sensitivity(spec.from_unconstrained(twin, z), spec, u, ts, x0=x0)
        j = sens.jacobian[:, 0, :]
        return z + jnp.linalg.solve(j.T @ j, j.T @ (ys - sens.ys[:, 0])), None

    return jax.lax.scan(body, z, None, length=steps)[0]


def _input_design_study(config: Config, key):
    twin, spec, ts, x0 = make_twin(config)
    k_design, k_data = jax.random.split(key)
    found = design_input(
        twin,
        spec,
        ts,
        k_design,
        u_max=config.u_max,
        candidates=config.design_candidates,
        n_segments=config.n_segments,
        refine_steps=config.refine_steps,
        learning_rate=config.learning_rate,
        x0=x0,
    )
    grid = grid_inputs(config, _after(found.criterion, ts))
    random_criteria = found.initial_criteria
    median = jnp.argsort(random_criteria)[config.design_candidates // 2]
    random_u = piecewise_constant_input(found.initial_coefficients[median], config.n_times, config.u_max)
    # one batch of sensitivities for the grid and the two other inputs: I = JᵀJ/σ² + Λ₀, with Λ₀ = diag(1/s²) the
    # exact prior precision of the log-normal priors in log space (what design_input used)
    candidates = jnp.concatenate([grid, found.u[None], random_u[None]])
    sens = jax.vmap(lambda u: output_sensitivity(twin, spec, u, ts, x0=x0))(candidates)
    jac = sens.jacobian[:, :, 0, :]
    fisher = jnp.einsum("gti,gtj->gij", jac, jac) / config.angle_sd**2
    prior = jnp.diag(jnp.array([config.length_prior_sd, config.damping_prior_sd]) ** -2.0)
    criteria_all = jax.vmap(lambda f: design_criterion(f + prior, "a"))(fisher)
    grid_criteria = criteria_all[: grid.shape[0]]
    best = jnp.argmin(jnp.where(jnp.isfinite(grid_criteria), grid_criteria, jnp.inf))
    chosen = jnp.stack([grid.shape[0], best, grid.shape[0] + 1])  # designed, best grid, median random
    inputs = candidates[chosen]
    clean = sens.ys[chosen, :, 0]
    predicted = jax.vmap(lambda f: design_criterion(f, "a"))(_after(criteria_all, fisher[chosen]))

    # the linearisation on repeated noisy datasets: least squares from the truth, spread of log φ̂
    z_true = spec.to_unconstrained(twin)
    noise = config.angle_sd * jax.random.normal(k_data, (len(INPUTS), config.n_datasets, config.n_times))
    noisy = _after(predicted, clean[:, None, :] + noise)
    fit = jax.vmap(
        lambda u, ys_set: jax.vmap(
            lambda ys: _gauss_newton(twin, spec, x0, ts, u, ys, z_true, config.gauss_newton_steps)
        )(ys_set)
    )
    z_hat = fit(inputs, noisy)
    sq_err = jnp.sum((z_hat - z_true) ** 2, axis=-1)  # (input, dataset)
    ok = jnp.all(jnp.isfinite(z_hat), axis=-1)
    sq_err_ok = jnp.where(ok, sq_err, 0.0)
    n_ok = jnp.sum(ok, axis=1)
    mse = jnp.sum(sq_err_ok, axis=1) / n_ok
    mse_se = jnp.sqrt(jnp.sum(jnp.where(ok, (sq_err - mse[:, None]) ** 2, 0.0), axis=1) / (n_ok - 1) / n_ok)
    criteria = criteria_all[chosen]
    return {
        "criterion": found.criterion,
        "criterion_recomputed": criteria[0],
        "criterion_grid_best": grid_criteria[best],
        "grid_best_index": best,
        "criterion_random_median": random_criteria[median],
        "criterion_random_best": jnp.min(random_criteria),
        "ratio_grid_over_designed": grid_criteria[best] / found.criterion,
        "ratio_random_median_over_designed": random_criteria[median] / found.criterion,
        "grid_criteria": grid_criteria,
        "random_criteria": random_criteria,
        "refined_criteria": found.refined_criteria,
        "history": found.history,
        "status": found.status,
        "information": found.information,
        "by_input": {
            name: {
                "criterion": criteria[i],
                "predicted_mse": predicted[i],
                "empirical_mse": mse[i],
                "empirical_mse_se": mse_se[i],
                "empirical_over_predicted": mse[i] / predicted[i],
                "failed_fits": config.n_datasets - n_ok[i],
            }
            for i, name in enumerate(INPUTS)
        },
        "empirical_over_predicted": mse[0] / predicted[0],
        "ts": ts,
        "inputs": inputs[:, :, 0],
        "responses": clean,
    }


def evaluate(config: Config, key: jax.Array) -> dict:
    """Both studies (pure: no file I/O; float fields may be traced, e.g. by a sweep over ``noise``)."""
    k_reg, k_input = jax.random.split(key)
    regression = _regression_study(config, k_reg)
    input_design = _input_design_study(config, _after(regression["a"]["mean"], k_input))
    final = {s: regression[s]["final"].mean() for s in STRATEGIES}
    return {
        "regression": regression,
        "final_trace": final,
        "trace_ratio_random_over_a": final["random"] / final["a"],
        "trace_ratio_d_over_a": final["d"] / final["a"],
        "squared_error_over_trace": {s: regression[s]["squared_error_mean"] / final[s] for s in STRATEGIES},
        "input_design": input_design,
    }


# ---------------------------------------------------------------------------------------------------------------------
# figures and files
# ---------------------------------------------------------------------------------------------------------------------

_COLOURS = {"a": "C0", "d": "C1", "random": "C7"}
_NAMES = {"a": "A-optimal", "d": "D-optimal", "random": "random"}


def _figure_traces(out: dict, config: Config, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_x) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    steps = np.arange(config.steps + 1)
    for s in STRATEGIES:
        r = out["regression"][s]
        ax.fill_between(steps, r["q10"], r["q90"], color=_COLOURS[s], alpha=0.2)
        ax.plot(steps, r["mean"], color=_COLOURS[s], lw=1.8, label=f"{_NAMES[s]} (final {r['mean'][-1]:.3g})")
    ax.set_yscale("log")
    ax.set_xlabel("measurements t")
    ax.set_ylabel("tr Σ_t  (posterior covariance trace)")
    ax.set_title(
        f"cubic regression, σ = {config.noise:g}: mean and 10–90 % band over {config.n_seeds} seeds\n"
        f"final ratio random / A = {out['trace_ratio_random_over_a']:.2f}, D / A = {out['trace_ratio_d_over_a']:.2f}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    bins = np.linspace(-1, 1, 21)
    for s in STRATEGIES:
        ax_x.hist(
            np.ravel(out["regression"][s]["chosen_x"]),
            bins=bins,
            density=True,
            histtype="step",
            lw=1.6,
            color=_COLOURS[s],
            label=_NAMES[s],
        )
    ax_x.set_xlabel("chosen design point x")
    ax_x.set_ylabel("density (all seeds and steps)")
    ax_x.set_title("where each strategy measures", fontsize=9)
    ax_x.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _figure_input_design(out: dict, config: Config, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = out["input_design"]
    ts = res["ts"]
    labels = grid_labels(config)
    names = {
        "designed": "designed (generator + gradient)",
        "grid_best": f"best grid: {labels[int(res['grid_best_index'])]}",
        "random_median": "median random draw",
    }
    colours = {"designed": "C3", "grid_best": "C0", "random_median": "C7"}
    fig = plt.figure(figsize=(12, 7))
    gs = fig.add_gridspec(2, 2, width_ratios=[1.7, 1])
    ax_u, ax_y = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[1, 0])
    ax_c, ax_h = fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 1])
    for i, name in enumerate(INPUTS):
        crit = res["by_input"][name]["criterion"]
        ax_u.step(ts, res["inputs"][i], where="post", color=colours[name], lw=1.3, label=f"{names[name]}")
        ax_y.plot(ts, res["responses"][i], color=colours[name], lw=1.3, label=f"tr I⁻¹ = {crit:.3g}")
    ax_u.set_ylabel("torque τ (N m)")
    ax_u.set_title(f"pendulum from rest, |τ| ≤ {config.u_max:g} N m: inputs", fontsize=9)
    ax_u.legend(fontsize=7, loc="upper right")
    ax_y.set_ylabel("angle θ (rad), noise-free")
    ax_y.set_xlabel("time (s)")
    ax_y.legend(fontsize=7, loc="upper right")
    groups = [
        ("random draws", res["random_criteria"], "C7"),
        ("refined", res["refined_criteria"], "C3"),
        ("grid", res["grid_criteria"], "C0"),
    ]
    for k, (label, values, colour) in enumerate(groups):
        values = np.asarray(values, float)
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        ax_c.scatter(k + jitter, values, s=14, color=colour, alpha=0.8)
    ax_c.axhline(res["criterion"], color="C3", ls="--", lw=1, label="designed")
    ax_c.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax_c.set_yscale("log")
    ax_c.set_ylabel("tr I(u)⁻¹  (log-space parameters)")
    ax_c.set_title("A-criterion of every candidate", fontsize=9)
    ax_c.legend(fontsize=7)
    ax_h.plot(np.asarray(res["history"]), color="C3", alpha=0.6, lw=1)
    ax_h.set_yscale("log")
    ax_h.set_xlabel("Adam step")
    ax_h.set_ylabel("tr I⁻¹ of each candidate")
    ax_h.set_title("gradient refinement of the generator's draws", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):  # posterior covariances over decades and Fisher information need float64; scoped
        out = jax.tree_util.tree_map(np.asarray, evaluate(config, jax.random.key(config.seed)))
    labels = grid_labels(config)
    out["wall_time_s"] = time.perf_counter() - start
    figures = run_dir / "figures"
    _figure_traces(out, config, figures / "trace_vs_steps.png")
    _figure_input_design(out, config, figures / "input_design.png")

    reg = out["regression"]
    res = out["input_design"]
    gap = reg["random"]["final"] - reg["a"]["final"]  # paired: the strategies saw the same candidate draws
    results = {
        "traces": {s: {k: reg[s][k] for k in ("mean", "q10", "q90")} for s in STRATEGIES},
        "final_trace": out["final_trace"],
        "final_trace_se": {s: reg[s]["final"].std(ddof=1) / np.sqrt(config.n_seeds) for s in STRATEGIES},
        "trace_ratio_random_over_a": out["trace_ratio_random_over_a"],
        "trace_ratio_d_over_a": out["trace_ratio_d_over_a"],
        "trace_gap_random_minus_a": {"mean": gap.mean(), "se": gap.std(ddof=1) / np.sqrt(config.n_seeds)},
        "squared_error_over_trace": out["squared_error_over_trace"],
        "squared_error_minus_trace": {
            s: {"mean": reg[s]["squared_error_minus_trace_mean"], "se": reg[s]["squared_error_minus_trace_se"]}
            for s in STRATEGIES
        },
        "regression_finite": all(bool(reg[s]["finite"]) for s in STRATEGIES),
        "input_design": {
            "criterion": res["criterion"],
            "criterion_recomputed": res["criterion_recomputed"],
            "criterion_grid_best": res["criterion_grid_best"],
            "grid_best": labels[int(res["grid_best_index"])],
            "criterion_random_median": res["criterion_random_median"],
            "criterion_random_best": res["criterion_random_best"],
            "ratio_grid_over_designed": res["ratio_grid_over_designed"],
            "ratio_random_median_over_designed": res["ratio_random_median_over_designed"],
            "grid_criteria": dict(zip(labels, res["grid_criteria"].tolist())),
            "random_criteria": res["random_criteria"],
            "refined_criteria": res["refined_criteria"],
            "failed_candidates": int(np.sum(res["status"] != 0)),
            "by_input": res["by_input"],
            "empirical_over_predicted": res["empirical_over_predicted"],
            "designed_input": res["inputs"][0],
            "space": "log length_m, log damping_per_s",
        },
        "figures": ["figures/trace_vs_steps.png", "figures/input_design.png"],
        "wall_time_s": out["wall_time_s"],
    }
    write_json(run_dir / "results.json", results)
    return results
