# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Simulating a twin: one path, a feedback loop, an uncertain ensemble
#
# One model object — a pendulum twin — goes through `tj.simulate` (diffrax inside), a closed loop with a feedback
# policy, and `tj.ensemble` with parameters drawn from their prior. `MEMBERS` is small when the tests execute this.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpyro.distributions as dist

import twinjax as tj
from physics import pendulum_twin

MEMBERS = int(os.environ.get("TWINJAX_NOTEBOOK_MEMBERS", "2000"))
twin = pendulum_twin()
spec = tj.Params({"dynamics.length_m": tj.positive(prior=dist.LogNormal(0.0, 0.2))})
ts = jnp.arange(0.0, 10.0, 0.05)

# %% [markdown]
# A single noisy path, and the same twin under a proportional feedback torque computed inside the loop from each
# noisy measurement (`u_t = π(t, y_t)`: a stiffer effective spring, so a faster swing).

# %%
path = tj.simulate(twin, jnp.array([1.0, 0.0]), ts, key=jax.random.key(0))
loop = tj.simulate(twin, jnp.array([1.0, 0.0]), ts, controls=lambda t, y: -3.0 * y[:1], key=jax.random.key(0))
print("final angle, open loop:", float(path.xs[-1, 0]), " feedback:", float(loop.xs[-1, 0]))

# %% [markdown]
# An ensemble over the prior of the length: a credible band of the angle.

# %%
cloud = tj.ensemble(twin, ts, members=MEMBERS, params=spec, key=jax.random.key(1), substeps=2)
print(tj.model.status.describe(cloud.status))
lo, mid, hi = jnp.quantile(cloud.xs[:, :, 0], jnp.array([0.05, 0.5, 0.95]), axis=0)
fig, ax = plt.subplots(figsize=(7, 3))
ax.fill_between(ts, lo, hi, alpha=0.3, label="90 % band (length ~ prior)")
ax.plot(ts, mid, label="median")
ax.plot(ts, path.xs[:, 0], "k", lw=0.8, label="one path")
ax.set_xlabel("time (s)")
ax.set_ylabel("angle (rad)")
ax.legend()
fig.tight_layout()
