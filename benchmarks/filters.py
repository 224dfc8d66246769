"""Filters benchmark: twinjax's nonlinear Gaussian filters against dynamax and filterpy on the same data.

``python -m benchmarks filters [--json PATH] [--quick] [--only SECTION ...]``

Sections (the :data:`SECTIONS` registry; each fills the shared result dictionary):

- ``pendulum``: batched EKF and UKF on a damped pendulum, ``sequences`` × ``steps`` (full: 64 × 2000), float64.
  The discrete-time transition is one RK4 step of ``dt = 0.01`` s, :func:`pendulum_rk4` — the *same* function for
  every library (written once against an array namespace: ``jax.numpy`` for twinjax and dynamax, NumPy for filterpy);
  2 states ``[θ, ω]``, one sensor ``sin θ``. The same data for every case.

  - ``twinjax_ekf`` / ``twinjax_ukf``: ``jax.vmap`` of the public ``extended_kalman_filter`` /
    ``unscented_kalman_filter`` over the sequences, jitted; returns filtered means, covariances, log-likelihoods.
  - ``dynamax_ekf`` / ``dynamax_ukf``: ``jax.vmap`` of dynamax's ``extended_kalman_filter`` /
    ``unscented_kalman_filter`` (filtered means and covariances and the marginal log-likelihood), jitted; the UKF with
    the same sigma-point parameters (dynamax's defaults ``α = √3, β = 2, κ = 1``, passed to every library).
  - ``filterpy_ekf`` / ``filterpy_ukf``: ``ExtendedKalmanFilter`` (transition Jacobian by the RK4 tangent recursion,
    exact) and ``UnscentedKalmanFilter`` (``MerweScaledSigmaPoints``), one sequence at a time in Python.
    ``filterpy_sequences`` sequences are timed per repeat and the time is extrapolated to all ``sequences`` (both
    figures are recorded). filterpy's UKF update reuses the propagated sigma points; here they are redrawn from the
    predicted moments before each update, as dynamax and twinjax do, so all three compute the same filter. filterpy
    computes its log-likelihood lazily through scipy; it is not requested (conservative for filterpy).

Timing: every case is run once (compilation for the JAX cases), then ``repeats`` (≥ 7) rounds that alternate the
JAX cases (then, separately, the two filterpy cases); the reported time is the median of the rounds; compile time is
the first call minus the median. Every timed JAX function is asserted to be traced once.

Agreement: the maximum absolute difference of the filtered means between twinjax and each baseline. twinjax equals
filterpy to rounding; dynamax adds ``1e-9`` to the innovation covariance before its gain solve (``psd_solve``'s
``diagonal_boost``), which moves its means by ~1e-7 here, so its tolerance is 1e-5.

Other sections (the Lorenz-96 ETKF against DAPPER, the sequential against the parallel Kalman filter) register
themselves in :data:`SECTIONS` below.
"""

import argparse
import dataclasses
import math
import pathlib
import statistics
import time
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import twinjax as tj
import twinjax.inference as ti
from benchmarks import _harness

TARGETS = {  # speedup = baseline_s / twinjax_s: >= target means twinjax is at least that much faster
    "dynamax_ekf": (0.9, ">="),
    "dynamax_ukf": (1.0, ">="),
    "filterpy_ekf": (100.0, ">="),
    "filterpy_ukf": (100.0, ">="),
    "dapper_etkf": (30.0, ">="),
}
AGREEMENT_ATOL = {"dynamax": 1e-5, "filterpy": 1e-8}


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of the benchmark (the default is the full run; :meth:`quick` is a smoke test)."""

    sequences: int = 64
    steps: int = 2000
    dt: float = 0.01
    filterpy_sequences: int = 2
    repeats: int = 7
    seed: int = 0
    parallel_steps: int = 100_000

    @classmethod
    def quick(cls) -> "Config":
        return cls(sequences=4, steps=50, filterpy_sequences=1, repeats=3, parallel_steps=200)


# ------------------------------------------------------------------------------------------------ the pendulum

GRAVITY_M_S2, LENGTH_M, DAMPING_PER_S = 9.81, 1.0, 0.1
PROCESS_NOISE = np.diag([1e-6, 1e-4])  # per step
SENSOR_VAR = np.array([[0.05**2]])
PRIOR_MEAN, PRIOR_COV = np.array([1.0, 0.0]), np.diag([0.2**2, 0.2**2])
SIGMA = {"alpha": math.sqrt(3.0), "beta": 2.0, "kappa": 1.0}  # dynamax's UKFHyperParams defaults


def pendulum_rhs(x, xp=jnp):
    """``[dθ/dt, dω/dt]`` of the damped pendulum."""
    return xp.stack([x[1], -(GRAVITY_M_S2 / LENGTH_M) * xp.sin(x[0]) - DAMPING_PER_S * x[1]])


def pendulum_rk4(x, dt, xp=jnp):
    """One RK4 step: the discrete-time transition every library filters with."""
    k1 = pendulum_rhs(x, xp)
    k2 = pendulum_rhs(x + (0.5 * dt) * k1, xp)
    k3 = pendulum_rhs(x + (0.5 * dt) * k2, xp)
    k4 = pendulum_rhs(x + dt * k3, xp)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def pendulum_rk4_jacobian_np(x, dt):
    """``∂ pendulum_rk4 / ∂x`` in NumPy by the RK4 tangent recursion (exact: filterpy needs the Jacobian by hand)."""
    eye = np.eye(2)

    def jac(z):
        return np.array([[0.0, 1.0], [-(GRAVITY_M_S2 / LENGTH_M) * np.cos(z[0]), -DAMPING_PER_S]])

    k1 = pendulum_rhs(x, np)
    K1 = jac(x)
    x2 = x + (0.5 * dt) * k1
    k2, K2 = pendulum_rhs(x2, np), jac(x2) @ (eye + (0.5 * dt) * K1)
    x3 = x + (0.5 * dt) * k2
    k3, K3 = pendulum_rhs(x3, np), jac(x3) @ (eye + (0.5 * dt) * K2)
    x4 = x + dt * k3
    K4 = jac(x4) @ (eye + dt * K3)
    return eye + (dt / 6.0) * (K1 + 2.0 * K2 + 2.0 * K3 + K4)


def sensor(x, xp=jnp):
    """The angle sensor ``sin θ``."""
    return xp.sin(x[:1])


class PendulumRK4(tj.AbstractDiscreteDynamics):
    """The benchmark's pendulum as a twinjax discrete-time dynamics (its own, so it does not depend on ``physics``)."""

    dt: float = eqx.field(static=True)

    def transition(self, t, x, u):
        return pendulum_rk4(x, self.dt)


def pendulum_twin(dt: float) -> tj.StateSpaceModel:
    return tj.StateSpaceModel(
        PendulumRK4(dt),
        tj.GaussianObservation(lambda t, x, u: sensor(x), SENSOR_VAR),
        tj.Gaussian(PRIOR_MEAN, PRIOR_COV),
        dt,
        process_noise=PROCESS_NOISE,
    )


def simulate_data(cfg: Config) -> np.ndarray:
    """``(sequences, steps, 1)`` measurements from the twin, each sequence from its own initial state and noise."""
    twin = pendulum_twin(cfg.dt)
    ts = jnp.arange(cfg.steps) * cfg.dt
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.sequences)
    ys = jax.jit(jax.vmap(lambda k: tj.simulate(twin, None, ts, key=k).ys))(keys)
    return np.asarray(ys)


# ---------------------------------------------------------------------------------------------------- the cases


def twinjax_cases(cfg: Config, counters: dict) -> dict[str, Callable]:
    twin = pendulum_twin(cfg.dt)

    def ekf(ys):
        r = ti.extended_kalman_filter(twin, ys)
        return r.means, r.covariances, r.log_likelihood

    def ukf(ys):
        r = ti.unscented_kalman_filter(twin, ys, **SIGMA)
        return r.means, r.covariances, r.log_likelihood

    return {name: jax.jit(jax.vmap(counters[name](fn))) for name, fn in (("twinjax_ekf", ekf), ("twinjax_ukf", ukf))}


def _import_dynamax():
    with warnings.catch_warnings():  # tensorflow_probability touches deprecated jax attributes at import
        warnings.simplefilter("ignore", DeprecationWarning)
        import dynamax.nonlinear_gaussian_ssm as dnl
    return dnl


def dynamax_cases(cfg: Config, counters: dict) -> dict[str, Callable]:
    dnl = _import_dynamax()
    params = dnl.ParamsNLGSSM(
        initial_mean=jnp.asarray(PRIOR_MEAN),
        initial_covariance=jnp.asarray(PRIOR_COV),
        dynamics_function=lambda x: pendulum_rk4(x, cfg.dt),
        dynamics_covariance=jnp.asarray(PROCESS_NOISE),
        emission_function=sensor,
        emission_covariance=jnp.asarray(SENSOR_VAR),
    )
    fields = ["filtered_means", "filtered_covariances"]
    hyper = dnl.UKFHyperParams(**SIGMA)

    def ekf(ys):
        r = dnl.extended_kalman_filter(params, ys, output_fields=fields)
        return r.filtered_means, r.filtered_covariances, r.marginal_loglik

    def ukf(ys):
        r = dnl.unscented_kalman_filter(params, ys, hyper, output_fields=fields)
        return r.filtered_means, r.filtered_covariances, r.marginal_loglik

    return {name: jax.jit(jax.vmap(counters[name](fn))) for name, fn in (("dynamax_ekf", ekf), ("dynamax_ukf", ukf))}


def filterpy_ekf(ys: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """filterpy's ``ExtendedKalmanFilter`` over each sequence of ``ys`` ``(n, steps, 1)``; means and covariances."""
    from filterpy.kalman import ExtendedKalmanFilter

    class PendulumEKF(ExtendedKalmanFilter):
        def predict_x(self, u=0):
            self.x = pendulum_rk4(self.x, dt, np)

    def jacobian_h(x):
        return np.array([[np.cos(x[0]), 0.0]])

    def h(x):
        return sensor(x, np)

    means, covs = np.empty(ys.shape[:2] + (2,)), np.empty(ys.shape[:2] + (2, 2))
    for i, seq in enumerate(ys):
        ekf = PendulumEKF(dim_x=2, dim_z=1)
        ekf.x, ekf.P = PRIOR_MEAN.copy(), PRIOR_COV.copy()
        ekf.Q, ekf.R = PROCESS_NOISE.copy(), SENSOR_VAR.copy()
        for k, y in enumerate(seq):
            if k:
                ekf.F = pendulum_rk4_jacobian_np(ekf.x, dt)
                ekf.predict()
            ekf.update(y, jacobian_h, h)
            means[i, k], covs[i, k] = ekf.x, ekf.P
    return means, covs


def filterpy_ukf(ys: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """filterpy's ``UnscentedKalmanFilter`` (sigma points redrawn before each update); means and covariances."""
    from filterpy.kalman import MerweScaledSigmaPoints, UnscentedKalmanFilter

    points = MerweScaledSigmaPoints(2, **SIGMA)
    means, covs = np.empty(ys.shape[:2] + (2,)), np.empty(ys.shape[:2] + (2, 2))
    for i, seq in enumerate(ys):
        ukf = UnscentedKalmanFilter(2, 1, dt, lambda x: sensor(x, np), lambda x, dt: pendulum_rk4(x, dt, np), points)
        ukf.x, ukf.P = PRIOR_MEAN.copy(), PRIOR_COV.copy()
        ukf.Q, ukf.R = PROCESS_NOISE.copy(), SENSOR_VAR.copy()
        for k, y in enumerate(seq):
            if k:
                ukf.predict()
            ukf.sigmas_f = points.sigma_points(ukf.x, ukf.P)
            ukf.update(y)
            means[i, k], covs[i, k] = ukf.x, ukf.P
    return means, covs


def run_pendulum(cfg: Config, res: dict) -> None:
    """The EKF / UKF section: twinjax, dynamax and filterpy timed round-robin on the same measurements."""
    ys_np = simulate_data(cfg)
    ys = jnp.asarray(ys_np)
    few = ys_np[: cfg.filterpy_sequences]
    scale = cfg.sequences / cfg.filterpy_sequences
    names = ("twinjax_ekf", "twinjax_ukf", "dynamax_ekf", "dynamax_ukf")
    counters = {name: _harness.TraceCounter() for name in names}
    jitted = {**twinjax_cases(cfg, counters), **dynamax_cases(cfg, counters)}
    jax_cases = {name: (lambda f=jitted[name]: f(ys), lambda c=counters[name]: c.count) for name in names}
    python_cases = {
        "filterpy_ekf": (lambda: filterpy_ekf(few, cfg.dt), None),
        "filterpy_ukf": (lambda: filterpy_ukf(few, cfg.dt), None),
    }
    # two round-robins: a long pure-Python case would otherwise always precede the same JAX case (cold caches)
    timed = {
        **_harness.time_interleaved(jax_cases, cfg.repeats),
        **_harness.time_interleaved(python_cases, cfg.repeats),
    }
    outputs = {}
    for name, (timing, out) in timed.items():
        extrapolate = scale if name.startswith("filterpy") else 1.0
        _record(res, name, timing, compiled=not name.startswith("filterpy"), scale=extrapolate)
        outputs[name] = out
    res["info"]["filterpy_sequences_measured"] = cfg.filterpy_sequences

    # agreement of the filtered means (and the log-likelihoods with dynamax), all sequences for dynamax
    checks = res["checks"]
    for kind in ("ekf", "ukf"):
        ours = np.asarray(outputs[f"twinjax_{kind}"][0])
        for lib, n in (("dynamax", cfg.sequences), ("filterpy", cfg.filterpy_sequences)):
            theirs = np.asarray(outputs[f"{lib}_{kind}"][0])
            diff = float(np.max(np.abs(ours[:n] - theirs[:n])))
            checks[f"{lib}_{kind}_max_abs_diff_means"] = {
                "value": diff,
                "atol": AGREEMENT_ATOL[lib],
                "ok": bool(diff <= AGREEMENT_ATOL[lib]),
            }
        loglik = np.asarray(outputs[f"twinjax_{kind}"][2])
        rel = float(np.max(np.abs(loglik - np.asarray(outputs[f"dynamax_{kind}"][2])) / np.abs(loglik)))
        checks[f"dynamax_{kind}_max_rel_diff_loglik"] = {"value": rel, "rtol": 1e-5, "ok": bool(rel <= 1e-5)}
        checks[f"twinjax_{kind}_finite"] = bool(np.all(np.isfinite(ours)))
    for lib in ("dynamax", "filterpy"):
        for kind in ("ekf", "ukf"):
            res["speedup"][f"{lib}_{kind}"] = res["times_s"][f"{lib}_{kind}"] / res["times_s"][f"twinjax_{kind}"]


# --------------------------------------------------------------------------------------------------- sections


#: The benchmark's sections, run in this order: ``name: fn(cfg, res)``. A section times its cases, stores them in
#: ``res["times_s"]`` / ``res["compile_s"]`` (via :func:`_record`), its speedups in ``res["speedup"]`` (the baseline
#: keys of DESIGN.md), correctness in ``res["checks"]`` (entries with an ``"ok"`` flag or booleans), and its targets
#: in :data:`TARGETS`. Add new sections here:
#:
#: - ``"lorenz96_etkf"``: Lorenz-96 ETKF (N = 24) against DAPPER on the same observations — speedup key
#:   ``dapper_etkf`` (cycles per second ratio), RMSE agreement within 0.02 in ``checks``;
#: - ``"parallel_kf"``: the sequential against the parallel (associative-scan) Kalman filter at T = 10⁵.
def run_parallel_kf(cfg: Config, res: dict) -> None:
    """Sequential (``lax.scan``) against parallel-in-time (associative-scan) Kalman filter on one long record.

    A random stable 4-state, 2-sensor linear-Gaussian twin, ``cfg.parallel_steps`` observations, float64. On a CPU
    the parallel filter does O(T log T) work for O(log T) depth, so parity is the expectation; it pays on a GPU.
    Reported under ``times_s`` (``kf_sequential``, ``kf_parallel``) and ``info.parallel_over_sequential``.
    """
    import twinjax as tj
    from twinjax import inference as inf

    rng = np.random.default_rng(cfg.seed)
    A = rng.normal(size=(4, 4))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    model = tj.LinearGaussianSSM(
        A=A,
        B=None,
        C=rng.normal(size=(2, 4)),
        D=None,
        Q=0.1 * np.eye(4),
        R=0.5 * np.eye(2),
        m0=np.zeros(4),
        P0=np.eye(4),
    )
    ts = jnp.arange(cfg.parallel_steps, dtype=jnp.float64)
    ys = tj.simulate(model, None, ts, key=jax.random.key(cfg.seed)).ys
    counters = {name: _harness.TraceCounter() for name in ("kf_sequential", "kf_parallel")}
    seq = jax.jit(counters["kf_sequential"](lambda y: inf.kalman_filter(model, y)))
    par = jax.jit(counters["kf_parallel"](lambda y: inf.parallel_kalman_filter(model, y)))
    cases = {
        "kf_sequential": (lambda: seq(ys).means, lambda: counters["kf_sequential"].count),
        "kf_parallel": (lambda: par(ys).means, lambda: counters["kf_parallel"].count),
    }
    timed = _harness.time_interleaved(cases, cfg.repeats)
    for name, (timing, _) in timed.items():
        _record(res, name, timing)
    diff = float(np.max(np.abs(np.asarray(timed["kf_sequential"][1]) - np.asarray(timed["kf_parallel"][1]))))
    res["checks"]["parallel_kf_max_abs_diff_means"] = {"value": diff, "atol": 1e-8, "ok": bool(diff <= 1e-8)}
    res["info"]["parallel_over_sequential"] = res["times_s"]["kf_sequential"] / res["times_s"]["kf_parallel"]
    res["info"]["parallel_steps"] = cfg.parallel_steps


def run_lorenz96_etkf(cfg: Config, res: dict) -> None:
    """Lorenz-96 ETKF (N = 24) against DAPPER on the same observations (:mod:`benchmarks.filters_l96`)."""
    from benchmarks import filters_l96

    l96_cfg = filters_l96.Config.quick() if cfg.steps < 2000 else filters_l96.Config(single_core=False)
    out = filters_l96.run(l96_cfg)
    for key in ("times_s", "compile_s", "speedup"):
        res[key].update(out[key])
    res["info"]["lorenz96"] = {k: out[k] for k in ("rmse", "ms_per_cycle", "scored_cycles") if k in out}
    diff = abs(out["rmse"]["twinjax_etkf"] - out["rmse"]["dapper_etkf"])
    res["checks"]["lorenz96_rmse_difference"] = {"value": diff, "atol": 0.02, "ok": bool(diff <= 0.02)}


SECTIONS: dict[str, Callable[[Config, dict], None]] = {
    "pendulum": run_pendulum,
    "parallel_kf": run_parallel_kf,
    "lorenz96_etkf": run_lorenz96_etkf,
}


# ------------------------------------------------------------------------------------------------------ running


def _record(res: dict, case: str, timing: _harness.Timing, compiled: bool = True, scale: float = 1.0) -> None:
    """Store a case's median time (×``scale`` for an extrapolated case), compile time, all runs and trace count."""
    median = statistics.median(timing.runs_s)
    if scale != 1.0:
        res["times_s"][case + "_measured"] = median
    res["times_s"][case] = median * scale
    if compiled:
        res["compile_s"][case] = max(timing.first_s - median, 0.0)
    res["runs_s"][case] = list(timing.runs_s)
    if timing.traces is not None:
        res["traces"][case] = timing.traces


def summarise(res: dict) -> None:
    """Fill ``targets`` from the speedups."""
    res["targets"] = {
        name: _harness.check(value, *TARGETS[name]) for name, value in res["speedup"].items() if name in TARGETS
    }


def checks_ok(res: dict) -> bool:
    """Whether every correctness check passed and every timed JAX function was traced once."""
    ok = all(v["ok"] if isinstance(v, dict) else bool(v) for v in res["checks"].values())
    return ok and all(n == 1 for n in res["traces"].values())


def print_report(res: dict) -> None:
    t, c, tg, cfg = res["times_s"], res["compile_s"], res["targets"], res["config"]
    rows = []
    for kind in ("ekf", "ukf"):
        ref = f"twinjax_{kind}"
        if ref not in t:
            continue
        for lib in ("twinjax", "dynamax", "filterpy"):
            case = f"{lib}_{kind}"
            tgt = tg.get(case)
            rows.append(
                {
                    "case": case,
                    "compile_s": c.get(case),
                    "run_s": t[case],
                    "ratio": t[case] / t[ref],
                    "target": None if tgt is None else f"{tgt['op']} {tgt['target']:g}",
                    "met": None if tgt is None else tgt["met"],
                }
            )
    if rows:
        title = (
            f"filters: pendulum EKF / UKF, {cfg['sequences']} sequences x {cfg['steps']} steps (RK4, dt = "
            f"{cfg['dt']}), float64; medians of {cfg['repeats']} alternating repeats; {res['env']['device']}, "
            f"{res['env']['cpu_count']} CPUs (ratio = case s / twinjax s: > 1 means twinjax is faster)"
        )
        _harness.print_table(rows, title)
        n = res["info"]["filterpy_sequences_measured"]
        print(
            f"filterpy: {n} sequence(s) per repeat, one at a time, extrapolated x{cfg['sequences'] / n:g} "
            f"(measured {t['filterpy_ekf_measured']:.3f} s EKF, {t['filterpy_ukf_measured']:.3f} s UKF)."
        )
    if "kf_parallel" in t:
        print(
            f"Kalman filter, T = {res['info']['parallel_steps']}: sequential {t['kf_sequential']:.3f} s, parallel "
            f"{t['kf_parallel']:.3f} s (compile {c['kf_sequential']:.1f} s / {c['kf_parallel']:.1f} s); "
            f"parallel is {res['info']['parallel_over_sequential']:.2f}x the sequential speed on {res['env']['device']}"
        )
    if "twinjax_etkf" in t:
        l96 = res["info"]["lorenz96"]
        print(
            f"Lorenz-96 ETKF N=24: twinjax {t['twinjax_etkf']:.3f} s, DAPPER {t['dapper_etkf']:.3f} s -> "
            f"{res['speedup']['dapper_etkf']:.1f}x; analysis RMSE twinjax {l96['rmse']['twinjax_etkf']:.4f}, DAPPER "
            f"{l96['rmse']['dapper_etkf']:.4f}"
        )
    for name, v in res["checks"].items():
        if isinstance(v, dict):
            tol = v.get("atol", v.get("rtol"))
            print(f"check {name}: {v['value']:.2e} (tolerance {tol:g}) {'ok' if v['ok'] else 'FAILED'}")
        else:
            print(f"check {name}: {'ok' if v else 'FAILED'}")


def run(cfg: Config, only: list[str] | None = None) -> dict:
    """Run the sections (all, or those named in ``only``) and return the result dictionary (the JSON)."""
    res = {
        "benchmark": "filters",
        "config": dataclasses.asdict(cfg),
        "sections": [],
        "times_s": {},
        "compile_s": {},
        "speedup": {},
        "targets": {},
        "checks": {},
        "runs_s": {},
        "traces": {},
        "info": {},
        "env": _harness.env_info(),
    }
    for name, section in SECTIONS.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        section(cfg, res)
        res["info"][f"{name}_wall_s"] = time.perf_counter() - start
        res["sections"].append(name)
    summarise(res)
    return res


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks filters [--json PATH] [--quick] [--only SECTION ...]``; exit 1 if a check fails."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks filters", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    args = parser.parse_args(argv)
    _harness.configure_jax()
    res = run(Config.quick() if args.quick else Config(), args.only)
    print_report(res)
    if args.json:
        _harness.write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0 if checks_ok(res) else 1
