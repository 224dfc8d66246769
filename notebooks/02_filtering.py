# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Synchronising a twin with its sensor: every filter on one noisy pendulum
#
# The pendulum twin measures only its angle, with noise, and some readings are missing. Each of twinjax's filters
# keeps a belief over the full state (angle *and* angular velocity) and updates it from each reading:
# the extended and unscented Kalman filters, the ensemble Kalman filter (square-root, ETKF), and the bootstrap
# particle filter. The same model object goes through all of them; `MEMBERS` is small when the tests execute this.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import twinjax as tj
from physics import oscillator_twin, pendulum_twin

jax.config.update("jax_enable_x64", True)
MEMBERS = int(os.environ.get("TWINJAX_NOTEBOOK_MEMBERS", "2000"))
twin = pendulum_twin(process_noise=jnp.array([1e-5, 1e-3]), angle_sd_rad=0.1)
ts = jnp.arange(0.0, 10.0, twin.dt)
us = jnp.zeros((ts.shape[0], 1))

# %% [markdown]
# A true path of the noisy twin, and its measurements with every fifth reading lost (NaN = missing).

# %%
truth = tj.simulate(twin, jnp.array([1.2, 0.0]), ts, controls=us, key=jax.random.key(0))
ys = truth.ys.at[::5].set(jnp.nan)
print(f"{int(jnp.isnan(ys).sum())} of {ys.size} readings missing")

# %% [markdown]
# Every filter on the same data. The batch drivers are one compiled `lax.scan` each and return filtered means, a
# covariance (or the ensemble's / particles' sample covariance) and the log marginal likelihood.

# %%
inf = tj.inference
posts = {
    "EKF": inf.extended_kalman_filter(twin, ys, us),
    "UKF": inf.unscented_kalman_filter(twin, ys, us),
    "ETKF": inf.ensemble_kalman_filter(
        twin, ys, us, members=max(MEMBERS // 50, 8), method="etkf", key=jax.random.key(1)
    ),
    "PF": inf.particle_filter(twin, ys, us, particles=MEMBERS, key=jax.random.key(2)),
}
print(f"{'filter':6s} {'RMSE angle':>11s} {'RMSE rate':>10s} {'log-lik':>9s}")
for name, post in posts.items():
    err = jnp.sqrt(jnp.mean((post.means - truth.xs) ** 2, axis=0))
    print(f"{name:6s} {float(err[0]):11.4f} {float(err[1]):10.4f} {float(post.log_likelihood):9.1f}")

# %% [markdown]
# 95 % credible bands of the unmeasured angular velocity: each filter infers it from the angle alone.

# %%
fig, axes = plt.subplots(len(posts), 1, figsize=(7, 1.8 * len(posts)), sharex=True)
for ax, (name, post) in zip(axes, posts.items()):
    sd = jnp.sqrt(post.covariances[:, 1, 1])
    ax.fill_between(ts, post.means[:, 1] - 2 * sd, post.means[:, 1] + 2 * sd, alpha=0.3, label=f"{name} ±2 sd")
    ax.plot(ts, truth.xs[:, 1], "k", lw=0.8, label="truth")
    ax.set_ylabel("rate (rad/s)")
    ax.legend(loc="upper right", fontsize=7)
axes[-1].set_xlabel("time (s)")
fig.tight_layout()

# %% [markdown]
# ## A linear twin: Kalman filter and RTS smoother
#
# On a mass–spring–damper (linear), the Kalman filter is exact, and the Rauch–Tung–Striebel smoother uses the whole
# record: its bands are narrower than the filter's. The parallel-in-time (associative-scan) filter gives the same
# answer in O(log T) depth — the choice on a GPU for long records.

# %%
osc = oscillator_twin()
osc = tj.StateSpaceModel(
    osc.dynamics, osc.observation, osc.initial, osc.dt, process_noise=jnp.array([1e-5, 1e-4]), control_dim=1
)
ts2 = jnp.arange(0.0, 20.0, osc.dt)
us2 = jnp.zeros((ts2.shape[0], 1))
path = tj.simulate(osc, jnp.array([1.0, 0.0]), ts2, controls=us2, key=jax.random.key(3))
kf = inf.kalman_filter(osc, path.ys, us2)
sm = inf.rts_smoother(osc, kf, us2)
for name, m in (("KF", kf.means), ("RTS", sm.means)):
    print(f"{name:4s} RMSE velocity {float(jnp.sqrt(jnp.mean((m[:, 1] - path.xs[:, 1]) ** 2))):.4f}")
print(
    "mean sd of velocity, filter vs smoother:",
    float(jnp.sqrt(kf.covariances[:, 1, 1]).mean()),
    float(jnp.sqrt(sm.covariances[:, 1, 1]).mean()),
)
