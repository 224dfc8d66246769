"""Generative benchmark: one compiled training step per family, diffusion sampling, and the fused physics decoder.

``python -m benchmarks generative [--json PATH] [--quick] [--only SECTION ...]``

Sections (float64, the data and every model built from the same seed):

- ``train``: the time of one optimizer step (Adam, minibatch ``batch`` drawn inside the step) of each family, through
  the shared loop's pure step (:func:`twinjax.generative.training.init` / :func:`~twinjax.generative.training.step`,
  jitted once per case; ``times_s[case]`` is one step, ``compile_s[case]`` its compilation):

  - ``flow_affine`` / ``flow_spline``: :class:`~twinjax.generative.CouplingFlow` on two moons, ``flow_layers``
    coupling layers with ``depth`` × ``width`` conditioners (the spline with 8 bins);
  - ``vae_neural``: a :class:`~twinjax.generative.VAE` with a :class:`~twinjax.generative.NeuralDecoder` on pendulum
    angle trajectories ``(times, 1)``;
  - ``gan_ns`` / ``gan_wgan_gp``: :class:`~twinjax.generative.ConditionalGAN` on two moons (a step is
    ``critic_steps`` critic updates and one generator update: 1 for ``ns``, 5 for WGAN-GP);
  - ``diffusion``: :class:`~twinjax.generative.ScoreDiffusion` (VP SDE, denoising score matching) on two moons.

- ``physics``: the :func:`~twinjax.generative.PhysicsVAE` of the pendulum (latent → length, damping and ``x₀``, the
  twin's ODE solved over ``times`` samples of ``dt``) trained on the same trajectories as ``vae_neural``, with the
  decoder's solve by diffrax (``vae_physics_diffrax``: the twin's ``Tsit5`` with a PID controller, ``rtol = 1e-6``,
  ``atol = 1e-9``, vmapped over the batch) and by the fused fixed-step RK4 in one ``lax.scan``
  (``vae_physics_rk4``: ``tableau="rk4"``, 4 steps per sample interval). The two steps are timed round-robin;
  ``speedup["fused_vs_diffrax"] = diffrax_s / fused_s``. Check: the two losses at the same parameters, minibatch and
  noise agree to the RK4 error.

- ``sampling``: ``sample_n`` draws of a ScoreDiffusion (``width`` × ``depth`` score net, trained for
  ``diffusion_train_steps`` steps on two moons so that its flow is representative) by the probability-flow ODE
  (``pf_ode``: Tsit5, adaptive PID steps, ``rtol = atol = ode_tol``) and by the reverse SDE (``reverse_sde``:
  Euler–Maruyama, ``sde_steps`` fixed steps). ``throughput`` holds samples/s of each,
  ``speedup["pf_ode_vs_sde"] = sde_s / ode_s`` (> 1: the ODE sampler is faster at equal sample count); the energy
  distance of each sampler's draws to held-out data is recorded beside the times (information: the two samplers
  are not tuned to equal accuracy). The two samplers are timed round-robin, each public ``sample`` call wrapped in
  one jitted function (the library's own solves are jitted inside it).

Timing: best of ``repeats`` calls after a warm-up (compile) call, every timed JAX function asserted to be traced once
(``benchmarks._harness``); the ``physics`` and ``sampling`` cases are interleaved. ``targets`` holds the single-trace
target of every case and the fused-solver target.
"""

import argparse
import dataclasses
import gc
import math
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from benchmarks import _harness

TARGETS = {"fused_vs_diffrax": (1.0, ">=")}


@dataclasses.dataclass(frozen=True)
class Config:
    n_data: int = 4096
    batch: int = 256
    width: int = 64
    depth: int = 2
    flow_layers: int = 8
    times: int = 50  # samples per trajectory (VAEs)
    dt: float = 0.05  # s between them
    latent_dim: int = 4
    sample_n: int = 4096
    sde_steps: int = 500
    ode_tol: float = 1e-5
    diffusion_train_steps: int = 2000
    learning_rate: float = 1e-3
    repeats: int = 7
    sample_repeats: int = 5
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        """A smoke test: tiny networks, batches and trajectories, an untrained diffusion model."""
        return cls(n_data=64, batch=16, width=8, depth=1, flow_layers=2, times=8, sample_n=16, sde_steps=10,
                   diffusion_train_steps=0, repeats=2, sample_repeats=1)  # fmt: skip


def _record(res: dict, case: str, timing: _harness.Timing) -> None:
    res["times_s"][case] = timing.best_s
    res["compile_s"][case] = timing.compile_s
    res["runs_s"][case] = list(timing.runs_s)
    if timing.traces is not None:
        res["traces"][case] = timing.traces


def _step_case(model, data, cfg: Config):
    """``(call, traces)`` of one jitted training step of ``model`` from a fixed initial state."""
    from twinjax.generative import training

    optimizer = optax.adam(cfg.learning_rate)
    state = training.init(model, optimizer, jax.random.key(cfg.seed + 1))
    counter = _harness.TraceCounter()

    def one_step(state, model, data):
        return training.step(state, model, optimizer, data, batch_size=cfg.batch)

    jitted = eqx.filter_jit(counter(one_step))
    return (lambda: jitted(state, model, data)), (lambda: counter.count)


def _moons(cfg: Config, seed: int = 0):
    from twinjax.generative.datasets import two_moons

    return two_moons(jax.random.key(cfg.seed + seed), cfg.n_data)


def _pendulum_vaes(cfg: Config):
    """The pendulum PhysicsVAE with a diffrax and with a fused RK4 decoder (same weights), and trajectory data drawn
    from the twin at parameters and initial states scattered by the untrained latent map."""
    import twinjax as tj
    import twinjax.generative as gen
    from physics import pendulum_twin

    twin = pendulum_twin(dt=cfg.dt)
    ts = cfg.dt * jnp.arange(cfg.times)
    spec = tj.Params({"dynamics.length_m": tj.positive(), "dynamics.damping_per_s": tj.positive()})
    kw = dict(key=jax.random.key(cfg.seed + 2), latent=spec, map_width=cfg.width, width=cfg.width, depth=cfg.depth)
    diffrax_vae = gen.PhysicsVAE(twin, ts, **kw)
    fused_vae = gen.PhysicsVAE(twin, ts, tableau="rk4", **kw)
    data = fused_vae.sample(jax.random.key(cfg.seed + 3), cfg.n_data, noise=True)
    return diffrax_vae, fused_vae, data


def section_train(cfg: Config, res: dict) -> None:
    import twinjax.generative as gen

    moons = _moons(cfg)
    _, _, trajectories = _pendulum_vaes(cfg)
    key = jax.random.key(cfg.seed + 4)
    flow = dict(layers=cfg.flow_layers, hidden=cfg.width, depth=cfg.depth)
    net = dict(width=cfg.width, depth=cfg.depth)
    loc, scale = jnp.mean(trajectories, (0, 1)), jnp.std(trajectories, (0, 1))
    decoder = gen.NeuralDecoder(cfg.latent_dim, trajectories.shape[1:], key, loc=loc, scale=scale, **net)
    families = {
        "flow_affine": (gen.CouplingFlow(2, key, kind="affine", **flow), moons),
        "flow_spline": (gen.CouplingFlow(2, key, kind="spline", bins=8, **flow), moons),
        "vae_neural": (gen.VAE(decoder, key, loc=loc, scale=scale, **net), trajectories),
        "gan_ns": (gen.ConditionalGAN((2,), key=key, variant="ns", data=moons, **net), moons),
        "gan_wgan_gp": (gen.ConditionalGAN((2,), key=key, variant="wgan-gp", data=moons, **net), moons),
        "diffusion": (gen.ScoreDiffusion(2, key, loc=moons.mean(0), scale=moons.std(0), **net), moons),
    }
    for case, (model, data) in families.items():
        call, traces = _step_case(model, data, cfg)
        timing, (_, metrics) = _harness.time_calls(call, cfg.repeats, traces=traces)
        _record(res, case, timing)
        loss = float(metrics["loss"])
        res["checks"][f"{case}_finite_loss"] = {"value": loss, "ok": math.isfinite(loss)}
    res["info"]["train"] = {"critic_steps": {k: families[k][0].critic_steps for k in ("gan_ns", "gan_wgan_gp")}}


def section_physics(cfg: Config, res: dict) -> None:
    diffrax_vae, fused_vae, data = _pendulum_vaes(cfg)
    cases = {
        "vae_physics_diffrax": _step_case(diffrax_vae, data, cfg),
        "vae_physics_rk4": _step_case(fused_vae, data, cfg),
    }
    timings = _harness.time_interleaved(cases, cfg.repeats)
    for case, (timing, _) in timings.items():
        _record(res, case, timing)
    t = res["times_s"]
    res["speedup"]["fused_vs_diffrax"] = t["vae_physics_diffrax"] / t["vae_physics_rk4"]
    losses = {case: float(out[1]["loss"]) for case, (_, out) in timings.items()}
    diff = abs(losses["vae_physics_rk4"] / losses["vae_physics_diffrax"] - 1)
    res["checks"]["fused_loss_matches_diffrax"] = {"value": diff, "rtol": 1e-4, "ok": diff <= 1e-4}
    res["info"]["physics"] = {"losses": losses, "trajectory": [cfg.times, 1], "dt": cfg.dt}


def section_sampling(cfg: Config, res: dict) -> None:
    import twinjax.generative as gen

    moons = _moons(cfg)
    held_out = _moons(cfg, seed=5)[: cfg.sample_n]
    model = gen.ScoreDiffusion(2, jax.random.key(cfg.seed + 6), loc=moons.mean(0), scale=moons.std(0),
                               width=cfg.width, depth=cfg.depth)  # fmt: skip
    train_s = 0.0
    if cfg.diffusion_train_steps:
        start = time.perf_counter()
        model = gen.train(
            model, moons, optimizer=optax.adam(cfg.learning_rate), steps=cfg.diffusion_train_steps,
            batch_size=cfg.batch, key=jax.random.key(cfg.seed + 7), log_every=cfg.diffusion_train_steps,
            progress=False,
        ).model  # fmt: skip
        train_s = time.perf_counter() - start
    key = jax.random.key(cfg.seed + 8)
    methods = {
        "pf_ode": dict(method="ode", rtol=cfg.ode_tol, atol=cfg.ode_tol),
        "reverse_sde": dict(method="sde", steps=cfg.sde_steps),
    }
    cases = {}
    for case, kw in methods.items():
        counter = _harness.TraceCounter()
        jitted = eqx.filter_jit(counter(lambda model, key, kw=kw: model.sample(key, cfg.sample_n, **kw)))
        cases[case] = (lambda j=jitted: j(model, key), lambda c=counter: c.count)
    distances = {}
    for case, (timing, out) in _harness.time_interleaved(cases, cfg.sample_repeats).items():
        _record(res, case, timing)
        res["throughput"][f"{case}_samples_per_s"] = cfg.sample_n / timing.best_s
        finite = bool(jnp.all(jnp.isfinite(out)))
        res["checks"][f"{case}_finite"] = {"value": float(jnp.max(jnp.abs(out))), "ok": finite}
        distances[case] = float(gen.energy_distance(out, held_out))
    t = res["times_s"]
    res["speedup"]["pf_ode_vs_sde"] = t["reverse_sde"] / t["pf_ode"]
    res["info"]["sampling"] = {
        "n": cfg.sample_n,
        "sde_steps": cfg.sde_steps,
        "ode_tol": cfg.ode_tol,
        "train_steps": cfg.diffusion_train_steps,
        "train_s": train_s,
        "energy_distance_to_held_out": distances,
    }


SECTIONS = {"train": section_train, "physics": section_physics, "sampling": section_sampling}


def run(cfg: Config, only: list[str] | None = None) -> dict:
    res = {
        "benchmark": "generative",
        "config": dataclasses.asdict(cfg),
        "sections": [],
        "times_s": {},
        "compile_s": {},
        "speedup": {},
        "throughput": {},
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
        gc.collect()
        start = time.perf_counter()
        section(cfg, res)
        res["info"][f"{name}_wall_s"] = time.perf_counter() - start
        res["sections"].append(name)
    res["targets"] = {k: _harness.check(v, *TARGETS[k]) for k, v in res["speedup"].items() if k in TARGETS}
    res["targets"].update({f"{case}_traces": _harness.check(n, 1, "<=") for case, n in res["traces"].items()})
    return res


def checks_ok(res: dict) -> bool:
    ok = all(v["ok"] for v in res["checks"].values())
    return ok and all(n == 1 for n in res["traces"].values())


def print_report(res: dict) -> None:
    t, c, tg, cfg = res["times_s"], res["compile_s"], res["targets"], res["config"]

    def row(case, ref=None, target=None):
        tgt = tg.get(target) if target else None
        return {
            "case": case,
            "compile_s": c.get(case),
            "run_s": t[case],
            "ratio": None if ref is None else t[ref] / t[case],
            "target": None if tgt is None else f"{tgt['op']} {tgt['target']:g}",
            "met": None if tgt is None else tgt["met"],
        }

    where = f"float64; {res['env']['device']}, {res['env']['cpu_count']} CPUs"
    train = [k for k in ("flow_affine", "flow_spline", "vae_neural", "gan_ns", "gan_wgan_gp", "diffusion") if k in t]
    if train:
        title = (
            f"generative: one training step (Adam, batch {cfg['batch']}, {cfg['depth']}x{cfg['width']} MLPs), {where}"
            " (ratio = flow_affine s / case s)"
        )
        _harness.print_table([row(k, "flow_affine") for k in train], title)
    if "vae_physics_rk4" in t:
        title = (
            f"pendulum PhysicsVAE training step, {cfg['times']} samples of {cfg['dt']} s "
            "(ratio = diffrax s / case s: > 1 means the fused solver is faster):"
        )
        rows = [row("vae_physics_diffrax", "vae_physics_diffrax"),
                row("vae_physics_rk4", "vae_physics_diffrax", "fused_vs_diffrax")]  # fmt: skip
        _harness.print_table(rows, title)
    if "pf_ode" in t:
        title = (
            f"diffusion sampling, {cfg['sample_n']} draws (PF-ODE Tsit5 tol {cfg['ode_tol']:g}; reverse SDE "
            f"{cfg['sde_steps']} Euler-Maruyama steps; ratio = reverse_sde s / case s):"
        )
        _harness.print_table([row("reverse_sde", "reverse_sde"), row("pf_ode", "reverse_sde")], title)
        thr = res["throughput"]
        dist = res["info"]["sampling"]["energy_distance_to_held_out"]
        print(
            f"throughput: PF-ODE {thr['pf_ode_samples_per_s']:.4g} samples/s, reverse SDE "
            f"{thr['reverse_sde_samples_per_s']:.4g} samples/s; energy distance to held-out data: "
            + ", ".join(f"{k} {v:.3g}" for k, v in dist.items())
        )
    for name, tgt in tg.items():
        if not name.endswith("_traces"):
            met = "met" if tgt["met"] else "NOT met"
            print(f"target {name}: {tgt['value']:.3g} {tgt['op']} {tgt['target']:g}: {met}")
    print(f"traces per timed case: {sorted(set(res['traces'].values()))} (1 = compiled once)")
    for name, v in res["checks"].items():
        if not v["ok"]:
            print(f"check {name}: {v['value']} FAILED")


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks generative [--json PATH] [--quick] [--only SECTION ...]``; exit 1 if a check fails."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks generative", description=__doc__.splitlines()[0])
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
