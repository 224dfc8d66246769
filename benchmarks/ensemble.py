"""Ensemble benchmark: ``tj.ensemble``'s fused fixed-step path against the ways people solve ensembles today.

``python -m benchmarks ensemble [--json PATH] [--quick]``

Lorenz-63, ``members`` trajectories × ``steps`` fixed steps of ``dt`` (full: 4096 × 1000 × 0.01), float64, the same
random initial states for every case:

- ``scipy``: ``scipy.integrate.solve_ivp`` (RK45, rtol 1e-6, default atol 1e-6), one member at a time; ``scipy_members``
  are timed once and the time extrapolated to ``members`` (both figures are recorded);
- ``numpy``: vectorised RK4 on the batched state (state-major ``(3, members)``), a Python loop over the steps;
- ``diffrax_vmap``: ``jax.vmap`` of ``diffrax.diffeqsolve(Tsit5, ConstantStepSize, SaveAt(t1=True))``, jitted;
- ``twinjax``: ``tj.ensemble(lorenz, ts=[0, T], x0=…, substeps=steps, tableau="rk4", observe=False)``, the public
  call exactly as a user makes it (Python-side checks included);
- ``floor``: a hand-fused ``lax.scan`` RK4 on the batched state, jitted — the arithmetic floor of the approach. It
  takes and returns ``(members, 3)`` like twinjax and runs the scan state-major (``(3, members)``: one transpose in,
  one out), the fastest layout on CPU; ``floor_aos`` (information only) is the same scan member-major.

Ornstein–Uhlenbeck ``dx = -θ x dt + σ dW`` (θ = 1, σ = 0.5), Euler–Maruyama, ``ou_members`` × ``ou_steps``:

- ``twinjax_ou``: ``tj.ensemble`` of an ``AbstractSDEDynamics`` (increments drawn inside, per step, for all members);
- ``ou_raw_scan``: a raw ``lax.scan`` whose ``(steps, members)`` normal increments are drawn in bulk *inside* the
  timed jitted function (the same random-number work as twinjax); ``ou_raw_scan_predrawn`` (information) draws them
  outside the timed region; ``diffrax_vbt_ou`` (information): vmapped diffrax Euler with a ``VirtualBrownianTree``
  on ``vbt_members`` members, extrapolated.

Memory: a ``memory_members`` (10⁶) Lorenz ensemble over ``steps`` keeping final states only, run in a subprocess so
that its peak resident set (``ru_maxrss``) is its own; reported as ``peak_memory_gb`` (10⁹ bytes) with its run time.

Run time is the best of N calls after a warm-up; compile time is the first call minus the best. Every timed JAX
function is asserted to be traced once (``eqx.debug.get_num_traces`` for twinjax, a counter for the others).
Correctness: twinjax's final states equal the floor's to 1e-9 relative over ``agree_steps`` steps (chaos amplifies
rounding differences over the full horizon; the full-horizon difference is reported for information), and the OU
ensemble's mean and variance at the end match the Euler–Maruyama and continuous-time values.
"""

import argparse
import dataclasses
import importlib
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import twinjax as tj
from benchmarks import _harness

# `twinjax.simulate.ensemble` is shadowed by the re-exported function; the module holds the jitted kernel.
_ENSEMBLE_MODULE = importlib.import_module("twinjax.simulate.ensemble")

TARGETS = {  # name: (target, op) — speedups are baseline_s / twinjax_s, so >= means twinjax is that much faster
    "numpy": (4.0, ">="),
    "diffrax_vmap": (5.0, ">="),
    "scipy": (1000.0, ">="),
    "floor": (0.8, ">="),
    "ou_raw_scan": (0.5, ">="),
    "peak_memory_gb": (4.0, "<="),
}
AGREEMENT_RTOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of the benchmark (the default is the full run; :meth:`quick` is a smoke test)."""

    members: int = 4096
    steps: int = 1000
    dt: float = 0.01
    scipy_members: int = 50
    repeats: int = 15  # best-of for twinjax and its floors (cheap: ~30 ms a call)
    ou_repeats: int = 7  # best-of for the OU cases (random-number generation dominates: ~0.2 s a call)
    slow_repeats: int = 3  # best-of for numpy and diffrax_vmap
    agree_steps: int = 100
    ou_members: int = 4096
    ou_steps: int = 1000
    vbt_members: int = 32
    memory_members: int | None = 1_000_000
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            members=64,
            steps=50,
            scipy_members=4,
            repeats=3,
            ou_repeats=3,
            slow_repeats=3,
            agree_steps=20,
            ou_members=64,
            ou_steps=50,
            vbt_members=0,
            memory_members=None,
        )


# ----------------------------------------------------------------------------------------------------------- systems


def lorenz_rhs(x, sigma, rho, beta, xp=jnp):
    """Lorenz-63 with the state on axis 0: ``x`` of shape ``(3,)`` or state-major ``(3, members)``."""
    return xp.stack([sigma * (x[1] - x[0]), x[0] * (rho - x[2]) - x[1], x[0] * x[1] - beta * x[2]])


class Lorenz63(tj.AbstractDynamics):
    """Lorenz-63 (the benchmark's own, so it does not depend on ``physics``)."""

    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0

    def vector_field(self, t, x, u):
        return lorenz_rhs(x, self.sigma, self.rho, self.beta)


class OrnsteinUhlenbeck(tj.AbstractSDEDynamics):
    """``dx = -θ x dt + σ dW``."""

    theta: float = 1.0
    sigma: float = 0.5

    def vector_field(self, t, x, u):
        return -self.theta * x

    def diffusion(self, t, x, u):
        return self.sigma * jnp.eye(x.shape[0], dtype=x.dtype)


LORENZ = Lorenz63()
OU = OrnsteinUhlenbeck()
OU_X0 = 1.0


def initial_states(members: int, seed: int) -> np.ndarray:
    """The shared random initial states ``(members, 3)`` around the attractor."""
    rng = np.random.default_rng(seed)
    return rng.normal(scale=5.0, size=(members, 3)) + np.array([0.0, 0.0, 25.0])


# ------------------------------------------------------------------------------------------------------- Lorenz cases


def scipy_solve(x0s: np.ndarray, t1: float) -> np.ndarray:
    """``solve_ivp`` RK45 (rtol 1e-6) one member at a time; final states ``(n, 3)``."""
    from scipy.integrate import solve_ivp

    p = (LORENZ.sigma, LORENZ.rho, LORENZ.beta)
    out = np.empty_like(x0s)
    for i, x0 in enumerate(x0s):
        sol = solve_ivp(lambda t, x: lorenz_rhs(x, *p, xp=np), (0.0, t1), x0, method="RK45", rtol=1e-6)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed for member {i}: {sol.message}")
        out[i] = sol.y[:, -1]
    return out


def numpy_rk4(x0s: np.ndarray, dt: float, steps: int) -> np.ndarray:
    """Vectorised NumPy RK4 on the state-major batch, a Python loop over the steps; final states ``(members, 3)``."""
    p = (LORENZ.sigma, LORENZ.rho, LORENZ.beta)
    x = np.ascontiguousarray(x0s.T)
    for _ in range(steps):
        k1 = lorenz_rhs(x, *p, xp=np)
        k2 = lorenz_rhs(x + (0.5 * dt) * k1, *p, xp=np)
        k3 = lorenz_rhs(x + (0.5 * dt) * k2, *p, xp=np)
        k4 = lorenz_rhs(x + dt * k3, *p, xp=np)
        x = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x.T


def _rk4_scan(f, x, dt, steps):
    def step(x, _):
        k1 = f(x)
        k2 = f(x + (0.5 * dt) * k1)
        k3 = f(x + (0.5 * dt) * k2)
        k4 = f(x + dt * k3)
        return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4), None

    return jax.lax.scan(step, x, None, length=steps)[0]


def floor_rk4(x0s, dt, steps: int):
    """The hand-fused floor: one ``lax.scan`` of RK4 over the state-major batch; ``(members, 3)`` in and out."""
    p = (LORENZ.sigma, LORENZ.rho, LORENZ.beta)
    return _rk4_scan(lambda x: lorenz_rhs(x, *p), x0s.T, dt, steps).T


def floor_rk4_aos(x0s, dt, steps: int):
    """The same scan on the member-major ``(members, 3)`` batch (columns sliced, derivatives stacked on axis 1)."""
    p = (LORENZ.sigma, LORENZ.rho, LORENZ.beta)
    return _rk4_scan(lambda x: lorenz_rhs(x.T, *p).T, x0s, dt, steps)


def diffrax_vmap(x0s, dt, steps: int):
    """``vmap`` of one fixed-step Tsit5 ``diffeqsolve`` per member; final states and diffrax results."""
    import diffrax

    p = (LORENZ.sigma, LORENZ.rho, LORENZ.beta)
    term = diffrax.ODETerm(lambda t, y, args: lorenz_rhs(y, *p))

    def one(y0):
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            t0=0.0,
            t1=steps * dt,
            dt0=dt,
            y0=y0,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.ConstantStepSize(),
            max_steps=steps,
            throw=False,
        )
        return sol.ys[-1], sol.result == diffrax.RESULTS.successful

    return jax.vmap(one)(x0s)


# ----------------------------------------------------------------------------------------------------------- OU cases


def ou_raw_scan(x0s, key, dt, steps: int):
    """Euler–Maruyama in a raw ``lax.scan``; the ``(steps, members)`` increments are drawn in bulk inside."""
    dw = jnp.sqrt(dt) * jax.random.normal(key, (steps, x0s.shape[0]), x0s.dtype)
    return _ou_scan(x0s, dw, dt)


def ou_raw_scan_predrawn(x0s, dw, dt):
    """Euler–Maruyama in a raw ``lax.scan`` over increments ``dw`` drawn beforehand."""
    return _ou_scan(x0s, dw, dt)


def _ou_scan(x0s, dw, dt):
    def step(x, dw_k):
        return x + dt * (-OU.theta * x) + OU.sigma * dw_k, None

    return jax.lax.scan(step, x0s[:, 0], dw)[0][:, None]


def diffrax_vbt_ou(x0s, keys, dt, steps: int):
    """``vmap`` of diffrax Euler on the OU SDE driven by a ``VirtualBrownianTree`` per member."""
    import diffrax

    t1 = steps * dt

    def one(y0, key):
        bm = diffrax.VirtualBrownianTree(0.0, t1, tol=dt / 16, shape=(1,), key=key)
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, y, args: -OU.theta * y),
            diffrax.ControlTerm(lambda t, y, args: OU.sigma * jnp.eye(1, dtype=y.dtype), bm),
        )
        sol = diffrax.diffeqsolve(
            terms,
            diffrax.Euler(),
            t0=0.0,
            t1=t1,
            dt0=dt,
            y0=y0,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.ConstantStepSize(),
            max_steps=steps + 1,
            throw=False,
        )
        return sol.ys[-1]

    return jax.vmap(one)(x0s, keys)


def ou_moments(dt: float, steps: int) -> dict:
    """Mean and variance at ``t = steps·dt`` from ``x0 = OU_X0``: continuous-time and exact Euler–Maruyama values."""
    t = steps * dt
    th, s = OU.theta, OU.sigma
    a = 1.0 - th * dt  # the Euler–Maruyama one-step factor
    return {
        "mean_exact": OU_X0 * math.exp(-th * t),
        "var_exact": s**2 / (2 * th) * (1 - math.exp(-2 * th * t)),
        "mean_em": OU_X0 * a**steps,
        "var_em": s**2 * dt * (1 - a ** (2 * steps)) / (1 - a**2),
    }


# ---------------------------------------------------------------------------------------------------------- the runs


def _fused_traces() -> int:
    return eqx.debug.get_num_traces(_ENSEMBLE_MODULE._fused)


def _jit(counter: _harness.TraceCounter, fn, static_argnums=()):
    return jax.jit(counter(fn), static_argnums=static_argnums)


def run_lorenz(cfg: Config, res: dict) -> None:
    m, n, dt = cfg.members, cfg.steps, cfg.dt
    t1 = n * dt
    x0_np = initial_states(m, cfg.seed)
    x0 = jnp.asarray(x0_np)
    ts = jnp.array([0.0, t1])
    key = jax.random.key(cfg.seed)
    dt_arr = jnp.asarray(dt)
    finals = {}

    # scipy: one untimed warm-up solve, then scipy_members timed once; extrapolated to all members.
    scipy_solve(x0_np[:1], t1)
    start = time.perf_counter()
    finals["scipy"] = scipy_solve(x0_np[: cfg.scipy_members], t1)
    measured = time.perf_counter() - start
    res["times_s"]["scipy_measured"] = measured
    res["times_s"]["scipy"] = measured * m / cfg.scipy_members
    res["info"]["scipy_members_measured"] = cfg.scipy_members

    timing, finals["numpy"] = _harness.time_calls(lambda: numpy_rk4(x0_np, dt, n), cfg.slow_repeats, warmup=False)
    _record(res, "numpy", timing, compiled=False)

    counter = _harness.TraceCounter()
    dfx = _jit(counter, diffrax_vmap, static_argnums=2)
    timing, (finals["diffrax_vmap"], results) = _harness.time_calls(
        lambda: dfx(x0, dt_arr, n), cfg.slow_repeats, traces=lambda: counter.count
    )
    _record(res, "diffrax_vmap", timing)
    res["checks"]["diffrax_vmap_all_successful"] = bool(np.all(np.asarray(results)))

    def twinjax_call():
        return tj.ensemble(LORENZ, ts=ts, x0=x0, substeps=n, key=key, tableau="rk4", observe=False)

    # twinjax and its floors are timed round-robin: their ratio is the tightest target, and the machine is noisy.
    cases = {"twinjax": (twinjax_call, _fused_traces)}
    for name, fn in (("floor", floor_rk4), ("floor_aos", floor_rk4_aos)):
        counter = _harness.TraceCounter()
        jitted = _jit(counter, fn, static_argnums=2)
        cases[name] = (lambda jitted=jitted: jitted(x0, dt_arr, n), lambda c=counter: c.count)
        if name == "floor":
            floor_jit = jitted
    for name, (timing, out) in _harness.time_interleaved(cases, cfg.repeats).items():
        _record(res, name, timing)
        finals[name] = out.xs[:, -1] if name == "twinjax" else out
        if name == "twinjax":
            res["checks"]["twinjax_all_successful"] = bool(np.all(np.asarray(out.status) == 0))

    # Agreement over a short horizon (same RK4, so rounding only), and the full-horizon spread for information.
    short = tj.ensemble(
        LORENZ, ts=jnp.array([0.0, cfg.agree_steps * dt]), x0=x0, substeps=cfg.agree_steps, key=key, observe=False
    ).xs[:, -1]
    ref = floor_jit(x0, dt_arr, cfg.agree_steps)
    rel = float(jnp.max(jnp.abs(short - ref)) / jnp.max(jnp.abs(ref)))
    res["checks"]["twinjax_vs_floor"] = {
        "steps": cfg.agree_steps,
        "max_rel_diff": rel,
        "rtol": AGREEMENT_RTOL,
        "ok": bool(rel <= AGREEMENT_RTOL),
    }
    res["checks"]["max_abs_diff_vs_floor_at_t_end"] = {
        name: float(np.max(np.abs(np.asarray(finals[name]) - np.asarray(finals["floor"][: len(finals[name])]))))
        for name in ("twinjax", "numpy", "diffrax_vmap", "scipy", "floor_aos")
    }


def run_ou(cfg: Config, res: dict) -> None:
    m, n, dt = cfg.ou_members, cfg.ou_steps, cfg.dt
    x0 = jnp.full((m, 1), OU_X0)
    ts = jnp.array([0.0, n * dt])
    key = jax.random.key(cfg.seed + 1)
    dt_arr = jnp.asarray(dt)

    def twinjax_call():
        return tj.ensemble(OU, ts=ts, x0=x0, substeps=n, key=key, observe=False)

    counter = _harness.TraceCounter()
    raw = _jit(counter, ou_raw_scan, static_argnums=3)
    timed = _harness.time_interleaved(
        {
            "twinjax_ou": (twinjax_call, _fused_traces),
            "ou_raw_scan": (lambda: raw(x0, key, dt_arr, n), lambda: counter.count),
        },
        cfg.ou_repeats,
    )
    for name, (timing, _) in timed.items():
        _record(res, name, timing)
    final = np.asarray(timed["twinjax_ou"][1].xs[:, -1, 0])

    counter_pre = _harness.TraceCounter()
    pre = _jit(counter_pre, ou_raw_scan_predrawn)
    dw = jax.block_until_ready(jnp.sqrt(dt) * jax.random.normal(key, (n, m)))
    timing, _ = _harness.time_calls(lambda: pre(x0, dw, dt_arr), cfg.ou_repeats, traces=lambda: counter_pre.count)
    _record(res, "ou_raw_scan_predrawn", timing)

    if cfg.vbt_members:  # information only, and slow to compile: the quick preset skips it
        counter_vbt = _harness.TraceCounter()
        vbt = _jit(counter_vbt, diffrax_vbt_ou, static_argnums=3)
        k = cfg.vbt_members
        keys = jax.random.split(key, k)
        timing, _ = _harness.time_calls(
            lambda: vbt(x0[:k], keys, dt_arr, n), cfg.slow_repeats, traces=lambda: counter_vbt.count
        )
        _record(res, "diffrax_vbt_ou", timing, scale=m / k)
        res["info"]["diffrax_vbt_ou_members_measured"] = k

    # Moments at the end against the exact Euler–Maruyama values, in Monte-Carlo standard errors.
    ref = ou_moments(dt, n)
    mean, var = float(final.mean()), float(final.var(ddof=1))
    se_mean = math.sqrt(ref["var_em"] / m)
    se_var = ref["var_em"] * math.sqrt(2.0 / (m - 1))
    z_mean, z_var = (mean - ref["mean_em"]) / se_mean, (var - ref["var_em"]) / se_var
    res["checks"]["ou_moments"] = {
        "mean": mean,
        "var": var,
        **ref,
        "z_mean": z_mean,
        "z_var": z_var,
        "ok": bool(abs(z_mean) < 5 and abs(z_var) < 5),
    }


def run_memory(cfg: Config, res: dict) -> None:
    """The 10⁶-member run in a fresh interpreter, so ``ru_maxrss`` is that run's alone."""
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "ensemble",
        "--memory-child",
        str(cfg.memory_members),
        str(cfg.steps),
        str(cfg.dt),
        str(cfg.seed),
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    res["peak_memory_gb"] = out["peak_memory_gb"]
    res["times_s"]["memory_1e6"] = out["run_s"]
    res["info"]["memory"] = out


def memory_child(members: int, steps: int, dt: float, seed: int) -> dict:
    """Inside the subprocess: a first call (compiles) and a second, timed call; then the peak resident memory."""
    x0 = jnp.asarray(initial_states(members, seed))
    ts = jnp.array([0.0, steps * dt])
    key = jax.random.key(seed)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        traj = jax.block_until_ready(tj.ensemble(LORENZ, ts=ts, x0=x0, substeps=steps, key=key, observe=False))
        times.append(time.perf_counter() - start)
        ok = int(jnp.sum(traj.status == 0))
        del traj
    return {
        "members": members,
        "steps": steps,
        "first_s": times[0],
        "run_s": times[1],
        "successful_members": ok,
        "peak_memory_gb": _harness.peak_rss_gb(),
        "xs_final_bytes": members * 3 * 8,
    }


def _record(res: dict, case: str, timing: _harness.Timing, compiled: bool = True, scale: float = 1.0) -> None:
    """Store a case's best time (×``scale`` for an extrapolated case), compile time, all runs and trace count."""
    if scale != 1.0:
        res["times_s"][case + "_measured"] = timing.best_s
    res["times_s"][case] = timing.best_s * scale
    if compiled:
        res["compile_s"][case] = timing.compile_s
    res["runs_s"][case] = list(timing.runs_s)
    if timing.traces is not None:
        res["traces"][case] = timing.traces


def summarise(res: dict) -> None:
    """Fill ``speedup`` (baseline / twinjax), ``speedup_info`` and ``targets`` from the times."""
    t = res["times_s"]
    lorenz = {b: t[b] / t["twinjax"] for b in ("numpy", "diffrax_vmap", "scipy", "floor")}
    res["speedup"] = {**lorenz, "ou_raw_scan": t["ou_raw_scan"] / t["twinjax_ou"]}
    res["speedup_info"] = {
        "floor_aos": t["floor_aos"] / t["twinjax"],
        "ou_raw_scan_predrawn": t["ou_raw_scan_predrawn"] / t["twinjax_ou"],
    }
    if "diffrax_vbt_ou" in t:
        res["speedup_info"]["diffrax_vbt_ou"] = t["diffrax_vbt_ou"] / t["twinjax_ou"]
    targets = {name: _harness.check(res["speedup"][name], *TARGETS[name]) for name in res["speedup"]}
    if res.get("peak_memory_gb") is not None:
        targets["peak_memory_gb"] = _harness.check(res["peak_memory_gb"], *TARGETS["peak_memory_gb"])
    res["targets"] = targets


def print_report(res: dict) -> None:
    t, c, tg = res["times_s"], res["compile_s"], res["targets"]
    cfg = res["config"]

    def row(case, ref, target_name=None):
        tgt = tg.get(target_name or case)
        return {
            "case": case,
            "compile_s": c.get(case),
            "run_s": t[case],
            "ratio": t[case] / t[ref],
            "target": None if tgt is None else f"{tgt['op']} {tgt['target']:g}",
            "met": None if tgt is None else tgt["met"],
        }

    rows = [row(k, "twinjax") for k in ("twinjax", "floor", "floor_aos", "numpy", "diffrax_vmap", "scipy")]
    ou_cases = ("twinjax_ou", "ou_raw_scan", "ou_raw_scan_predrawn", "diffrax_vbt_ou")
    rows += [row(k, "twinjax_ou") for k in ou_cases if k in t]
    title = (
        f"ensemble: Lorenz-63 {cfg['members']} members x {cfg['steps']} RK4 steps; OU {cfg['ou_members']} x "
        f"{cfg['ou_steps']} Euler-Maruyama steps; float64; {res['env']['device']} x{res['env']['device_count']}, "
        f"{res['env']['cpu_count']} CPUs (ratio = case s / twinjax s: > 1 means twinjax is faster)"
    )
    _harness.print_table(rows, title)
    print(f"scipy: {cfg['scipy_members']} members measured in {t['scipy_measured']:.3f} s, extrapolated.")
    if "diffrax_vbt_ou" in t:
        print(
            f"diffrax_vbt_ou: {cfg['vbt_members']} members measured in {t['diffrax_vbt_ou_measured']:.4f} s, "
            "extrapolated."
        )
    if "peak_memory_gb" in tg:
        m, mem = res["info"]["memory"], tg["peak_memory_gb"]
        print(
            f"memory: {m['members']:,} members x {m['steps']} steps (final states only): peak RSS "
            f"{mem['value']:.3f} GB (target <= {mem['target']:g}: {'met' if mem['met'] else 'MISSED'}), "
            f"run {m['run_s']:.2f} s, first call {m['first_s']:.2f} s"
        )
    ck = res["checks"]
    a = ck["twinjax_vs_floor"]
    print(
        f"agreement twinjax vs floor over {a['steps']} steps: max rel diff {a['max_rel_diff']:.2e} "
        f"({'ok' if a['ok'] else 'FAILED'}, rtol {a['rtol']:g}); at t_end (info, chaotic): "
        + ", ".join(f"{k} {v:.2e}" for k, v in ck["max_abs_diff_vs_floor_at_t_end"].items())
    )
    o = ck["ou_moments"]
    print(
        f"OU at t_end: mean {o['mean']:.4f} (EM {o['mean_em']:.4f}, exact {o['mean_exact']:.4f}, "
        f"z {o['z_mean']:+.2f}); "
        f"var {o['var']:.4f} (EM {o['var_em']:.4f}, exact {o['var_exact']:.4f}, z {o['z_var']:+.2f})"
    )


def run(cfg: Config) -> dict:
    """Run every case and return the benchmark's result dictionary (the JSON written by ``--json``)."""
    res = {
        "benchmark": "ensemble",
        "config": dataclasses.asdict(cfg),
        "times_s": {},
        "compile_s": {},
        "speedup": {},
        "peak_memory_gb": None,
        "targets": {},
        "speedup_info": {},
        "checks": {},
        "runs_s": {},
        "traces": {},
        "info": {},
        "env": _harness.env_info(),
    }
    run_lorenz(cfg, res)
    run_ou(cfg, res)
    if cfg.memory_members:
        run_memory(cfg, res)
    summarise(res)
    return res


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks ensemble [--json PATH] [--quick]``; exit code 1 if a correctness check fails."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no memory case (a smoke test)")
    parser.add_argument("--memory-child", nargs=4, metavar=("MEMBERS", "STEPS", "DT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _harness.configure_jax()
    if args.memory_child:
        members, steps, dt, seed = args.memory_child
        print(json.dumps(memory_child(int(members), int(steps), float(dt), int(seed))))
        return 0
    res = run(Config.quick() if args.quick else Config())
    print_report(res)
    if args.json:
        _harness.write_json(args.json, res)
        print(f"wrote {args.json}")
    ck = res["checks"]
    ok = ck["twinjax_vs_floor"]["ok"] and ck["twinjax_all_successful"] and ck["diffrax_vmap_all_successful"]
    return 0 if ok else 1
