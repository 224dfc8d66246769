"""Privacy benchmark: the cost of one DP-SGD step against one plain SGD step on the same model and batch.

``python -m benchmarks privacy [--json PATH] [--quick]``

Model: an equinox MLP regression ``R^8 → R`` (tanh, ``depth`` hidden layers of ``width``), squared loss, at several
widths spanning a few hundred to ~50 000 parameters. Batch: ``batch`` rows (full: 256) drawn from ``n_records``
synthetic records by :func:`twinjax.risk.dp_sgd.poisson_batch` at rate ``q = batch / n_records`` and padded to
``max_batch_for(n_records, q)`` rows; both cases see the same padded batch and mask.

- ``plain_<P>``: ``jax.grad`` of the masked mean loss (divided by the expected batch size), ``optax.sgd``, one
  ``optax.apply_updates`` — one jitted step on a model of ``P`` parameters;
- ``dp_<P>``: per-example gradients (``jax.vmap`` of ``jax.grad``), per-example clipping, Gaussian noise, division by
  the expected batch size (``optax.chain(dp_sgd(...), optax.sgd(lr))``), the same update — one jitted step.

``speedup["nonprivate"] = plain_s / dp_s`` at the largest model (below 1: DP is slower); the ratio at every size is
in ``ratios``. Timing: median of ``repeats`` interleaved calls after a warm-up (compile) call; compile time = first
call − median, reported separately; every jitted step is asserted to be traced once (``benchmarks._harness``).
Check: at ``σ = 0`` and a clip norm no gradient reaches, the DP step's update equals the plain step's (a wrong
per-example gradient, mask or denominator would show), for the smallest model.
"""

import argparse
import dataclasses
import gc
import pathlib
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from benchmarks import _harness


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (16, 64, 220)  # 2 hidden layers: 433, 4 801, 50 821 parameters
    depth: int = 2
    in_size: int = 8
    batch: int = 256  # expected batch size q N
    n_records: int = 25_600
    l2_norm_clip: float = 1.0
    noise_multiplier: float = 1.1
    learning_rate: float = 0.05
    repeats: int = 21
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        """A smoke test: two small models, a few repeats."""
        return cls(widths=(8, 32), repeats=5)


def _model(cfg: Config, width: int, key):
    return eqx.nn.MLP(cfg.in_size, "scalar", width, cfg.depth, activation=jnp.tanh, key=key)


def _n_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


def _data(cfg: Config, key):
    kx, kw, kn = jax.random.split(key, 3)
    x = jax.random.normal(kx, (cfg.n_records, cfg.in_size))
    y = jnp.sin(x @ jax.random.normal(kw, (cfg.in_size,))) + 0.1 * jax.random.normal(kn, (cfg.n_records,))
    return x, y


def _steps(cfg: Config, l2_norm_clip: float, noise_multiplier: float):
    from twinjax.risk.dp_sgd import dp_sgd, per_example_grads

    q_n = float(cfg.batch)

    def example_loss(model, example):
        x, y = example
        return (model(x) - y) ** 2

    plain_opt = optax.sgd(cfg.learning_rate)
    dp_opt = optax.chain(dp_sgd(l2_norm_clip, noise_multiplier, q_n, cfg.seed), optax.sgd(cfg.learning_rate))

    def plain_step(model, state, x, y, mask):
        def loss(m):
            per = jax.vmap(m)(x) - y
            return jnp.sum(jnp.where(mask, per**2, 0.0)) / q_n

        grads = eqx.filter_grad(loss)(model)
        updates, state = plain_opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state

    def dp_step(model, state, x, y, mask):
        grads = per_example_grads(example_loss, model, (x, y), mask)
        updates, state = dp_opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array), mask=mask)
        return eqx.apply_updates(model, updates), state

    return (plain_opt, plain_step), (dp_opt, dp_step)


def _jit_case(counter, step, opt, model, x, y, mask):
    jitted = eqx.filter_jit(counter(step))
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    return jitted, state, (lambda: jitted(model, state, x, y, mask), lambda: counter.count)


def section_step(cfg: Config, res: dict) -> None:
    from twinjax.risk.dp_sgd import max_batch_for, poisson_batch

    key = jax.random.key(cfg.seed)
    kdata, kbatch, kmodel = jax.random.split(key, 3)
    x_all, y_all = _data(cfg, kdata)
    q = cfg.batch / cfg.n_records
    max_batch = max_batch_for(cfg.n_records, q)
    idx, mask = poisson_batch(kbatch, cfg.n_records, q, max_batch)
    x, y = x_all[idx], y_all[idx]
    (plain_opt, plain_step), (dp_opt, dp_step) = _steps(cfg, cfg.l2_norm_clip, cfg.noise_multiplier)
    cases, sizes = {}, {}
    for width in cfg.widths:
        model = _model(cfg, width, kmodel)
        p = _n_params(model)
        sizes[width] = p
        for name, opt, step in (("plain", plain_opt, plain_step), ("dp", dp_opt, dp_step)):
            _, _, case = _jit_case(_harness.TraceCounter(), step, opt, model, x, y, mask)
            cases[f"{name}_{p}"] = case
    timings = _harness.time_interleaved(cases, cfg.repeats)
    for case, (timing, out) in timings.items():
        median = statistics.median(timing.runs_s)
        res["times_s"][case] = median
        res["compile_s"][case] = max(timing.first_s - median, 0.0)
        res["runs_s"][case] = list(timing.runs_s)
        res["traces"][case] = timing.traces
        finite = all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(eqx.filter(out, eqx.is_array)))
        res["checks"][f"{case}_finite"] = {"value": float(finite), "ok": finite}
    t = res["times_s"]
    res["ratios"] = {str(p): t[f"plain_{p}"] / t[f"dp_{p}"] for p in sizes.values()}
    res["speedup"]["nonprivate"] = res["ratios"][str(sizes[cfg.widths[-1]])]
    res["info"]["step"] = {
        "n_params": {str(w): p for w, p in sizes.items()},
        "max_batch": max_batch,
        "realised_batch": int(mask.sum()),
        "sampling_rate": q,
    }

    # check: σ = 0 and an unreachable clip norm → the DP update is the plain update (smallest model)
    model = _model(cfg, cfg.widths[0], kmodel)
    (p_opt, p_step), (d_opt, d_step) = _steps(cfg, 1e12, 0.0)
    plain_model, _ = eqx.filter_jit(p_step)(model, p_opt.init(eqx.filter(model, eqx.is_inexact_array)), x, y, mask)
    dp_model, _ = eqx.filter_jit(d_step)(model, d_opt.init(eqx.filter(model, eqx.is_inexact_array)), x, y, mask)
    a = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(eqx.filter(plain_model, eqx.is_inexact_array))])
    b = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(eqx.filter(dp_model, eqx.is_inexact_array))])
    m0 = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))])
    err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a - m0)))
    res["checks"]["dp_equals_plain_at_sigma0"] = {"value": err, "rtol": 1e-10, "ok": err <= 1e-10}


SECTIONS = {"step": section_step}


def run(cfg: Config) -> dict:
    res = {
        "benchmark": "privacy",
        "config": dataclasses.asdict(cfg),
        "sections": [],
        "times_s": {},
        "compile_s": {},
        "speedup": {},
        "ratios": {},
        "checks": {},
        "runs_s": {},
        "traces": {},
        "info": {},
        "env": _harness.env_info(),
    }
    for name, section in SECTIONS.items():
        gc.collect()
        start = time.perf_counter()
        section(cfg, res)
        res["info"][f"{name}_wall_s"] = time.perf_counter() - start
        res["sections"].append(name)
    return res


def checks_ok(res: dict) -> bool:
    return all(v["ok"] for v in res["checks"].values()) and all(n == 1 for n in res["traces"].values())


def print_report(res: dict) -> None:
    t, c, cfg, info = res["times_s"], res["compile_s"], res["config"], res["info"]["step"]
    print(
        f"privacy: one DP-SGD step vs one SGD step, MLP R^{cfg['in_size']}→R (depth {cfg['depth']}), "
        f"expected batch {cfg['batch']} (padded {info['max_batch']}, realised {info['realised_batch']}); "
        f"{res['env']['device']}, {res['env']['cpu_count']} CPUs"
    )
    rows = []
    for p in res["ratios"]:
        for case in (f"plain_{p}", f"dp_{p}"):
            rows.append({"case": case, "compile_s": c[case], "run_s": t[case], "ratio": t[f"plain_{p}"] / t[case]})
    _harness.print_table(rows, "median step time (ratio = plain s / case s; below 1: slower than plain SGD):")
    print("DP step / plain step time: " + ", ".join(f"{p} params {1 / r:.2f}x" for p, r in res["ratios"].items()))
    print(f"speedup nonprivate (largest model): {res['speedup']['nonprivate']:.3g}")
    for name, v in res["checks"].items():
        print(f"check {name}: {v['value']:.2e} {'ok' if v['ok'] else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks privacy [--json PATH] [--quick]``; exit 1 if a check fails."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks privacy", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="two small models, few repeats (a smoke test)")
    args = parser.parse_args(argv)
    _harness.configure_jax()
    res = run(Config.quick() if args.quick else Config())
    print_report(res)
    if args.json:
        _harness.write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0 if checks_ok(res) else 1
