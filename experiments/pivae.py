"""Physics-informed VAEs of oscillator trajectories: a penalised neural decoder, the twin's solver, and a hybrid.

Data: trajectories of an undamped harmonic oscillator ``q̈ = −ω² q`` (unit mass), ``q(t) = A cos(ωt + φ)``, with
``A ~ U(0.5, 1.5)`` m, ``φ ~ U(0, 2π)``, ``ω ~ U(0.8, 1.6)`` rad/s varying across samples; position and velocity are
observed at ``t_k = k dt`` with Gaussian noise of sd ``noise_sd`` (the clean trajectories are exact, not solved).

The invariant is energy conservation. The frequency differs per trajectory and is not observed, so ``C`` compares
the energy per unit mass ``E_ω(t) = ½ v² + ½ ω² q²`` with its time mean, at the ``ω²`` that makes it most constant
(least squares, closed form): ``C(y) = E_ω̂(t) − mean_t E_ω̂`` (J/kg). It is zero exactly on a trajectory of some
undamped oscillator.

Three decoders are trained with :func:`twinjax.generative.train` (Adam, the same steps, batch and learning rate):

(a) a neural decoder with the penalty ``λ E‖C(f(z))‖²``, for each ``λ`` in ``lambdas`` — the sample residual falls as
    ``λ`` grows while the reconstruction degrades;
(b) :func:`~twinjax.generative.vae.PhysicsVAE`: the latent decodes to the twin's stiffness (unit mass, so ``ω² = k``)
    and initial state, and the twin's ODE (``physics.MassSpringDamper``, no damping) is solved by fixed-step RK4 —
    the residual is zero up to the solver's error and the latents are physical;
(c) the hybrid: (b) plus a neural correction, with ``hybrid_weight`` on ``C`` of the corrected output and
    ``correction_weight`` on ``‖g‖²``.

Reported per model: reconstruction RMSE of held-out trajectories (decoded posterior mean against the *clean*
trajectory), the sample residual ``E‖C‖²`` of noise-free samples, MMD² and energy distance of noisy samples to the
held-out data (:mod:`twinjax.generative.metrics`; the reference is the same distance between two held-out halves),
and the held-out ELBO. For (b) and (c) also the RMSE of the frequency decoded from each held-out trajectory.
"""

import dataclasses
import math
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import twinjax as tj
import twinjax.generative as gen
from physics import MassSpringDamper
from twinjax.generative.vae import VAE, NeuralDecoder, PhysicsVAE, gaussian_kl
from twinjax.runs import write_json, write_metrics_csv

SUMMARY_KEYS = ("lambda_sweep", "strategies", "reference", "wall_time_s")

AMPLITUDE_M = (0.5, 1.5)
OMEGA_RAD_S = (0.8, 1.6)
SPEC = tj.Params({"dynamics.stiffness_N_m": tj.positive()})


@dataclasses.dataclass(frozen=True)
class Config:
    n_train: int = 1024
    n_test: int = 512
    n_times: int = 40
    dt: float = 0.2
    noise_sd: float = 0.05
    latent_dim: int = 3  # of the neural VAE; the physics VAE's latent is (stiffness, q₀, v₀)
    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-3
    lambdas: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    hybrid_weight: float = 1000.0
    correction_weight: float = 100.0
    substeps: int = 4
    n_samples: int = 512
    seed: int = 0

    def __post_init__(self):
        for name in ("n_train", "n_test", "n_times", "latent_dim", "steps", "batch_size", "substeps", "n_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"`{name}` must be >= 2, got {getattr(self, name)}.")
        if not self.lambdas or any(lam < 0 for lam in self.lambdas):
            raise ValueError(f"`lambdas` must be non-negative weights, got {self.lambdas}.")
        if self.dt <= 0 or self.noise_sd <= 0 or self.lr <= 0:
            raise ValueError("`dt`, `noise_sd` and `lr` must be positive.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_train=256, n_test=128, steps=300, n_samples=128)


def energy_residual(y: jax.Array) -> jax.Array:
    """``C(y) = E_ω̂(t) − mean_t E_ω̂`` (module docstring) of ``y = (q, v)``, shape ``(time, 2)`` → ``(time,)``."""
    q2, v2 = y[:, 0] ** 2, y[:, 1] ** 2
    dq, dv = q2 - jnp.mean(q2), v2 - jnp.mean(v2)
    w2 = -jnp.sum(dv * dq) / (jnp.sum(dq * dq) + 1e-12)
    return 0.5 * (dv + w2 * dq)


def make_data(key: jax.Array, n: int, ts: jax.Array, noise_sd: float):
    """``(clean, noisy, omega)``: ``n`` exact trajectories ``(n, time, 2)``, their noisy observations and ``ω``."""
    k_a, k_p, k_w, k_e = jax.random.split(key, 4)
    amp = jax.random.uniform(k_a, (n, 1), minval=AMPLITUDE_M[0], maxval=AMPLITUDE_M[1])
    phase = jax.random.uniform(k_p, (n, 1), maxval=2 * math.pi)
    omega = jax.random.uniform(k_w, (n, 1), minval=OMEGA_RAD_S[0], maxval=OMEGA_RAD_S[1])
    arg = omega * ts[None, :] + phase
    clean = jnp.stack([amp * jnp.cos(arg), -amp * omega * jnp.sin(arg)], axis=-1)
    return clean, clean + noise_sd * jax.random.normal(k_e, clean.shape), omega[:, 0]


def _full_state(t, x, u):
    return x


def make_twin(noise_sd: float, dt: float) -> tj.StateSpaceModel:
    """The undamped unit-mass oscillator twin, both states observed with noise ``noise_sd``."""
    return tj.StateSpaceModel(
        MassSpringDamper(mass_kg=1.0, damping_Ns_m=0.0, stiffness_N_m=1.0),
        tj.GaussianObservation(_full_state, noise_sd**2 * jnp.eye(2)),
        tj.Gaussian(jnp.array([1.0, 0.0]), jnp.eye(2)),
        dt,
    )


@eqx.filter_jit
def _metrics(model: VAE, key, test_clean, test_noisy, omega_test, n_samples):
    k_z, k_y, k_e = jax.random.split(key, 3)
    n_test = test_noisy.shape[0]
    z_prior = jax.random.normal(k_z, (n_samples, model.latent_dim))
    mean, log_sd = model.encode(test_noisy)
    z_post = mean + jnp.exp(log_sd) * jax.random.normal(k_e, mean.shape)
    # one batched decode (one solver trace to compile): prior draws, posterior means, posterior draws
    decoded = model.decode(jnp.concatenate([z_prior, mean, z_post]))
    samples, rec, dec_post = decoded[:n_samples], decoded[n_samples:-n_test], decoded[-n_test:]
    sd = jnp.exp(model.log_obs_sd)
    noisy_samples = samples + sd * jax.random.normal(k_y, samples.shape)
    log_lik = jnp.sum(-0.5 * ((test_noisy - dec_post) / sd) ** 2 - jnp.log(sd) - 0.5 * jnp.log(2 * jnp.pi), (1, 2))
    out = {
        "recon_rmse": jnp.sqrt(jnp.mean((rec - test_clean) ** 2)),
        "sample_residual": jnp.mean(jax.vmap(lambda y: jnp.sum(energy_residual(y) ** 2))(samples)),
        "mmd": gen.mmd(noisy_samples, test_noisy),
        "energy_distance": gen.energy_distance(noisy_samples, test_noisy),
        "elbo": jnp.mean(log_lik - gaussian_kl(mean, log_sd)),  # one reparameterised draw per trajectory
        "obs_sd": sd,
    }
    decoder = getattr(model.decoder, "physics", model.decoder)
    if hasattr(decoder, "physical"):
        omega = lambda zz: jnp.sqrt(jax.vmap(decoder.physical)(zz)[0][:, 0])  # noqa: E731  (unit mass: ω² = k)
        out["omega_rmse"] = jnp.sqrt(jnp.mean((omega(mean) - omega_test) ** 2))
        out["sample_omega_mean"], out["sample_omega_sd"] = jnp.mean(omega(z_prior)), jnp.std(omega(z_prior))
    return out, samples[:8]


def evaluate(config: Config, key: jax.Array) -> dict:
    """Make the data, train (a) for each λ, (b) and (c), and compare them (module docstring).

    Pure (no I/O) but not jittable: training runs through :func:`twinjax.generative.train`, a host-side loop of
    compiled chunks. The penalty weights reach the loss as arrays, so the λ sweep compiles once.
    """
    k_train, k_test, k_models, k_fit, k_eval = jax.random.split(key, 5)
    ts = config.dt * jnp.arange(config.n_times)
    _, train_noisy, _ = make_data(k_train, config.n_train, ts, config.noise_sd)
    test_clean, test_noisy, omega_test = make_data(k_test, config.n_test, ts, config.noise_sd)
    loc, scale = jnp.mean(train_noisy, (0, 1)), jnp.std(train_noisy, (0, 1))
    event = (config.n_times, 2)
    k_neural, k_enc, k_phys, k_hyb = jax.random.split(k_models, 4)
    neural = VAE(NeuralDecoder(config.latent_dim, event, k_neural, loc=loc, scale=scale), k_enc,
                 invariant=energy_residual, loc=loc, scale=scale)  # fmt: skip
    twin = make_twin(config.noise_sd, config.dt)
    common = dict(latent=SPEC, initial_state=True, invariant=energy_residual, tableau="rk4",
                  substeps=config.substeps, loc=loc, scale=scale)  # fmt: skip
    physics = PhysicsVAE(twin, ts, key=k_phys, **common)
    hybrid = PhysicsVAE(twin, ts, key=k_hyb, hybrid=True, **common)
    optimizer = optax.adam(config.lr)
    fit_kw = dict(optimizer=optimizer, steps=config.steps, batch_size=config.batch_size, key=k_fit,
                  log_every=min(config.steps, 500), progress=False)  # fmt: skip

    def fit(model, **weights):
        weights = {k: jnp.asarray(v, float) for k, v in weights.items()}
        t0 = time.perf_counter()
        res = gen.train(model, train_noisy, **fit_kw, **weights)
        return res.model, res.history, time.perf_counter() - t0

    histories, sweep, curves, train_s = {}, [], {}, {}
    for lam in config.lambdas:
        model, hist, secs = fit(neural, physics_weight=lam)
        metrics, samples = _metrics(model, k_eval, test_clean, test_noisy, omega_test, config.n_samples)
        sweep.append(metrics)
        histories[f"neural_lambda_{lam:g}"] = hist
        curves[f"neural λ={lam:g}"] = samples
        train_s[f"neural_lambda_{lam:g}"] = secs
    strategies = {"neural_lambda_0": sweep[0], "neural_lambda_max": sweep[-1]} if config.lambdas[0] == 0 else {
        "neural_lambda_min": sweep[0], "neural_lambda_max": sweep[-1]}  # fmt: skip
    for name, model, weights in (
        ("physics", physics, {}),
        ("hybrid", hybrid, dict(physics_weight=config.hybrid_weight, correction_weight=config.correction_weight)),
    ):
        fitted, hist, secs = fit(model, **weights)
        strategies[name], curves[name] = _metrics(fitted, k_eval, test_clean, test_noisy, omega_test, config.n_samples)
        histories[name], train_s[name] = hist, secs
    half = config.n_test // 2
    reference = {
        "mmd_data_vs_data": gen.mmd(test_noisy[:half], test_noisy[half:]),
        "energy_distance_data_vs_data": gen.energy_distance(test_noisy[:half], test_noisy[half:]),
        "residual_clean_data": jnp.mean(jax.vmap(lambda y: jnp.sum(energy_residual(y) ** 2))(test_clean)),
        "residual_noisy_data": jnp.mean(jax.vmap(lambda y: jnp.sum(energy_residual(y) ** 2))(test_noisy)),
    }
    lambda_sweep = {"lambda": list(config.lambdas)}
    for name in ("sample_residual", "recon_rmse", "mmd", "energy_distance", "elbo"):
        lambda_sweep[name] = jnp.stack([m[name] for m in sweep])
    return {
        "lambda_sweep": lambda_sweep,
        "strategies": strategies,
        "reference": reference,
        "train_s": train_s,
        "histories": histories,
        "curves": {"ts": ts, "data": test_clean[:8], **curves},
    }


def _figures(out: dict, fig_dir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = out["lambda_sweep"]
    lam = np.asarray(sweep["lambda"], float)
    floor = lam[lam > 0].min() / 10 if np.any(lam > 0) else 1.0
    x = np.where(lam > 0, lam, floor)  # λ = 0 drawn one decade left of the smallest positive λ
    fig, ax = plt.subplots(figsize=(6, 4))
    physics = float(out["strategies"]["physics"]["sample_residual"])
    ax.loglog(x, np.asarray(sweep["sample_residual"]), "o-", color="C3", label="sample residual E‖C‖²")
    ax.plot([], [], " ", label=f"physics decoder: {physics:.1e}")  # off this scale: stated, not drawn
    ax.set_xlabel("penalty weight λ  (λ = 0 drawn at the left end)")
    ax.set_ylabel("sample residual E‖C(f(z))‖²  (J²/kg²)", color="C3")
    ax2 = ax.twinx()
    ax2.semilogx(x, np.asarray(sweep["recon_rmse"]), "s--", color="C0", label="reconstruction RMSE")
    ax2.set_ylabel("held-out reconstruction RMSE", color="C0")
    ax.set_title("neural decoder: physics penalty vs reconstruction")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(fig_dir / "residual_vs_lambda.png", dpi=120)
    plt.close(fig)

    curves = out["curves"]
    ts = np.asarray(curves["ts"])
    lams = out["lambda_sweep"]["lambda"]  # (device_get sorts dict keys: name the columns explicitly)
    names = ["data", f"neural λ={float(lams[0]):g}", f"neural λ={float(lams[-1]):g}", "physics", "hybrid"]
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6), sharex="row", sharey="row")
    for j, name in enumerate(names):
        ys = np.asarray(curves[name])
        for i in range(ys.shape[0]):
            axes[0, j].plot(ts, ys[i, :, 0], lw=1, color=f"C{i}")
            axes[1, j].plot(ys[i, :, 0], ys[i, :, 1], lw=1, color=f"C{i}")
        axes[0, j].set_title(name if name != "data" else "held-out data (clean)")
        axes[0, j].set_xlabel("t (s)")
        axes[1, j].set_xlabel("position q (m)")
        axes[1, j].set_aspect("equal", adjustable="box")
    axes[0, 0].set_ylabel("position q (m)")
    axes[1, 0].set_ylabel("velocity v (m/s)")
    fig.suptitle("samples (decoder means of prior draws) vs data: undamped oscillators are closed orbits")
    fig.tight_layout()
    fig.savefig(fig_dir / "samples.png", dpi=110)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):  # solver-error-level residuals need float64; scoped, not global
        out = jax.device_get(evaluate(config, jax.random.key(config.seed)))
    out["wall_time_s"] = time.perf_counter() - start
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _figures(out, fig_dir)
    rows: dict[str, list] = {}
    for name, hist in out["histories"].items():
        for i, s in enumerate(hist["step"]):
            rows.setdefault("model", []).append(name)
            rows.setdefault("step", []).append(int(s))
            for k in ("loss", "recon", "kl", "residual", "correction"):
                rows.setdefault(k, []).append(float(hist[k][i]) if k in hist else float("nan"))
    write_metrics_csv(run_dir / "metrics.csv", rows)
    results = {k: v for k, v in out.items() if k not in ("curves", "histories")}
    write_json(run_dir / "results.json", results)
    return results
