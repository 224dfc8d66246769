# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Generative twins: learn a distribution, sample it, score it, condition it
#
# Every generative family in `twinjax.generative` has one contract — `sample(key, n, cond=None)`, `log_prob` where the
# density is explicit, and a `loss` — and one training loop, `twinjax.generative.train`. This tour fits a normalizing
# flow and a score-based diffusion model to the two-moons density (whose exact entropy we know), compares them by
# held-out likelihood and sample distances, imputes a missing coordinate by guided diffusion, estimates a state under
# the learned prior by NUTS, and ends with a physics-decoder VAE whose samples are solutions of the twin's ODE.
#
# `STEPS` scales the training; the test-suite runs this notebook with tiny values.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import twinjax as tj
import twinjax.generative as gen
from physics import MassSpringDamper

jax.config.update("jax_enable_x64", True)
SCALE = int(os.environ.get("TWINJAX_NOTEBOOK_MEMBERS", "2000")) / 2000  # 1 here, tiny in the tests
STEPS = max(int(3000 * SCALE), 20)
key = jax.random.key(0)
k_data, k_test, k_flow, k_diff, k_fit, k_eval = jax.random.split(key, 6)

# %% [markdown]
# ## Data with a known density
# Two moons: θ ~ U[0, π] on each half-circle, plus isotropic Gaussian noise 0.1. Its exact density is available by
# quadrature, so the differential entropy (≈ 1.00 nats) is the floor any model's held-out NLL can reach.

# %%
x_train = gen.datasets.two_moons(k_data, max(int(20_000 * SCALE), 512))
x_test = gen.datasets.two_moons(k_test, max(int(4000 * SCALE), 256))
entropy, entropy_se = gen.datasets.two_moons_entropy(jax.random.key(9), n=10_000 * max(int(10 * SCALE), 1))
print(f"entropy of the data: {float(entropy):.3f} ± {float(entropy_se):.3f} nats")

# %% [markdown]
# ## A spline flow and a diffusion model, trained by the same loop
# The flow's likelihood is exact (change of variables); the diffusion model's comes from its probability-flow ODE
# (an exact trace here, 2-D). `train` runs compiled chunks of optimizer steps, keeps an EMA of the weights, and would
# write `metrics.csv` and resumable checkpoints with `out_dir=`.

# %%
flow = gen.CouplingFlow(2, k_flow, layers=6, hidden=32, kind="spline", bins=8, bound=4.0)
flow = gen.train(flow, x_train, optimizer=optax.adam(1e-3), steps=STEPS, key=k_fit, progress=False).model
diff = gen.ScoreDiffusion(2, k_diff, width=64, depth=2, loc=x_train.mean(0), scale=x_train.std(0))
diff = gen.train(diff, x_train, optimizer=optax.adam(1e-3), steps=2 * STEPS, key=k_fit, ema_decay=0.99,
                 progress=False, weighting="likelihood").model  # fmt: skip

n = x_test.shape[0]
reference = gen.datasets.two_moons(jax.random.key(7), n)  # an independent data sample: the distances' floor
samples = {"data (independent)": reference, "flow": flow.sample(k_eval, n), "diffusion": diff.sample(k_eval, n)}
nll = {"flow": -jnp.mean(flow.log_prob(x_test)), "diffusion": -jnp.mean(diff.log_prob(x_test[:256]))}
print(f"{'model':20s} {'NLL':>7s} {'MMD²':>9s} {'energy':>8s}")
for name, xs in samples.items():
    print(f"{name:20s} {float(nll.get(name, entropy)):7.3f} {float(gen.mmd(xs, x_test)):9.2e} "
          f"{float(gen.energy_distance(xs, x_test)):8.4f}")  # fmt: skip

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 3.3), sharex=True, sharey=True)
for ax, (name, xs) in zip(axes, samples.items()):
    ax.scatter(xs[:, 0], xs[:, 1], s=2, alpha=0.5)
    ax.set_title(name)
fig.tight_layout()

# %% [markdown]
# ## Conditioning: imputation by guided diffusion
# Observe only the first coordinate of a point (x₁ = 0.5) and draw the second from the model's conditional: the
# reverse SDE runs with the prior score plus the likelihood score (reconstruction guidance). Two branches appear,
# one per moon — a non-Gaussian conditional that a Kalman-type update would flatten into one bump.

# %%
filled = gen.impute(diff, jax.random.key(3), 500, jnp.array([0.5, jnp.nan]), jnp.array([True, False]), steps=200)
print("imputed x₂: mean", float(filled[:, 1].mean()), "sd", float(filled[:, 1].std()))

# %% [markdown]
# ## State estimation under the learned prior
# The flow is an explicit prior p(x); with a Gaussian sensor y = x + v the posterior p(x | y) is sampled by NUTS
# (blackjax). A NaN channel is masked out of the likelihood, not dropped.

# %%
post = gen.posterior_sample(flow, jnp.array([0.0, jnp.nan]), key=jax.random.key(4), obs_cov=0.05**2 * jnp.eye(2),
                            chains=2, warmup=max(int(300 * SCALE), 20), samples=max(int(500 * SCALE), 20))  # fmt: skip
print("posterior mean", post.mean, "R-hat", post.rhat)

# %% [markdown]
# ## A physics decoder: samples that are solutions of the twin's ODE
# The VAE's decoder maps its latent to the oscillator's stiffness and initial state and solves the twin's ODE (a fused
# RK4 here), so every sample conserves energy by construction and the latents are physical.

# %%
ts = 0.2 * jnp.arange(30)
omega = jax.random.uniform(jax.random.key(5), (256,), minval=0.8, maxval=1.6)
phase = jax.random.uniform(jax.random.key(6), (256,), maxval=2 * jnp.pi)
clean = jnp.stack([jnp.cos(omega[:, None] * ts + phase[:, None]),
                   -omega[:, None] * jnp.sin(omega[:, None] * ts + phase[:, None])], -1)  # fmt: skip
noisy = clean + 0.05 * jax.random.normal(jax.random.key(8), clean.shape)
twin = tj.StateSpaceModel(
    MassSpringDamper(mass_kg=1.0, damping_Ns_m=0.0, stiffness_N_m=1.0),
    tj.GaussianObservation(lambda t, x, u: x, 0.05**2 * jnp.eye(2)),
    tj.Gaussian(jnp.array([1.0, 0.0]), jnp.eye(2)),
    0.2,
)
vae = gen.PhysicsVAE(twin, ts, key=jax.random.key(10), latent=tj.Params({"dynamics.stiffness_N_m": tj.positive()}),
                     initial_state=True, tableau="rk4", substeps=2)  # fmt: skip
vae = gen.train(vae, noisy, optimizer=optax.adam(3e-3), steps=STEPS // 2, key=k_fit, progress=False).model
draws = vae.sample(jax.random.key(11), 6)
fig, ax = plt.subplots(figsize=(4, 4))
for d in draws:
    ax.plot(d[:, 0], d[:, 1])
ax.set_xlabel("position")
ax.set_ylabel("velocity")
ax.set_title("physics-VAE samples: closed orbits")
fig.tight_layout()
