# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The battery-management twin: estimate, charge, supervise, diagnose
#
# The project's main job (`twinjax run bms`, `experiments/bms.py`) closes the loop around a faulty lithium-ion cell:
# an EKF keeps a belief over the cell's state *and* its ageing parameters, a chance-constrained MPC plans the fast
# charge on that belief, a safety supervisor checks every command against the twin's one-tick prediction, and four
# detectors watch the estimator's innovations for faults. This walkthrough takes the pieces one at a time, then runs
# the whole loop at the quick preset (the nominal drive and charge, no faults: about half a minute, mostly
# compilation).

# %%
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments import _bms_figures, bms
from physics.battery_bms import MICRO_TRIP, TRIP_S, drive_current
from twinjax.control import chance, mpc

jax.config.update("jax_enable_x64", True)  # the SQP and the filters assume float64
config = bms.Config.quick()
KELVIN = bms.KELVIN

# %% [markdown]
# ## 1. The plant and its twin
# The *plant* is the true cell: a one-RC Thevenin model of a 5 A h NMC | graphite cell with a lumped thermal node,
# integrated by RK4 at 1 s ticks, whose parameters differ from the data sheet (hidden from the twin), whose current
# sensor is biased, and which develops four faults on a schedule. The *twin* is the estimator's model on the
# augmented state $z = [\mathrm{soc}, v_1, T, R_0, 1/Q, b, c, R_1, C_1, m]$: the nominal cell with $R_0$, $1/Q$, the
# current bias $b$, multipliers $c$ and $m$ of the cooling coefficient and thermal mass, and the RC pair as random
# walks, so the EKF learns them from the voltage and temperature readings.

# %%
plant = bms.make_plant(config)
twin = bms.make_twin(config)
true_cell, nominal = plant.cell, twin.dynamics.cell
print(f"{'':18s} {'truth':>9s} {'twin (nominal)':>15s}")
print(f"{'R0 (mΩ)':18s} {1e3 * float(true_cell.r0_ohm):9.2f} {1e3 * float(nominal.r0_ohm):15.2f}")
print(f"{'capacity (A h)':18s} {float(true_cell.capacity_Ah):9.2f} {float(nominal.capacity_Ah):15.2f}")
print(f"{'R1 (mΩ)':18s} {1e3 * float(true_cell.r_rc_ohm[0]):9.2f} {1e3 * float(nominal.r_rc_ohm[0]):15.2f}")
print(f"{'current bias (A)':18s} {float(plant.current_bias_A):9.2f} {float(twin.initial.mean[5]):15.2f}")
print(f"twin prior: SOC {float(twin.initial.mean[0]):.2f} ± {config.twin_soc0_sd} (true start {config.soc_start})")
print("fault onsets (s):", {k: float(v) for k, v in plant.faults.onsets().items()})
print(f"the quick preset ends at {config.t_end_s} s, before any fault; `twinjax run bms` runs all four")

# %% [markdown]
# ## 2. The drive profile
# A synthetic urban micro-trip of 120 s (accelerate, cruise, regenerate, idle, …), repeated with each trip scaled by a
# random factor in [0.8, 1.2]; positive current is discharge. The loop drives from the start SOC until the twin's
# SOC estimate reaches 10 %, then waits for the charge window.

# %%
scales = jax.random.uniform(jax.random.key(1), (5,), minval=0.8, maxval=1.2)
ts = jnp.arange(0.0, 5 * TRIP_S)
current = jax.vmap(lambda t: drive_current(t, scales, bms.CAPACITY_NOMINAL_AH))(ts)
rates = np.array([c for _, c in MICRO_TRIP])
weights = np.array([d for d, _ in MICRO_TRIP]) / TRIP_S
print(f"micro-trip: mean {np.sum(weights * rates):.2f}C, RMS {np.sqrt(np.sum(weights * rates**2)):.2f}C")
fig, ax = plt.subplots(figsize=(8, 2.5))
ax.step(ts, current, where="post")
ax.axhline(0, color="0.5", lw=0.5)
ax.set_xlabel("time (s)")
ax.set_ylabel("current (A), + discharge")
ax.set_title("five micro-trips of the drive profile")
fig.tight_layout()

# %% [markdown]
# ## 3. The chance-constrained MPC
# Every 20 s of a charge the controller plans `horizon` intervals of current $I_k \in [-I_{max}, 0]$ on the *moment
# dynamics* of $x = [\mathrm{soc}, v_1, T, R_0]$: the mean goes through the twin's RK4 step, the covariance through
# its linearisation, $P^+ = A P A^\top + Q$. The limits must hold with probability $1 - \alpha$,
# $\Pr(V \le V_{max}) \ge 1 - \alpha$ and $\Pr(T \le T_{max}) \ge 1 - \alpha$; for a Gaussian $g(x)$ this is exactly
#
# $$ \mu_g + \kappa(\alpha)\,\sigma_g \le 0, \qquad \kappa(\alpha) = \Phi^{-1}(1 - \alpha), \qquad
#    \sigma_g^2 = J P J^\top,\ J = \partial g / \partial x, $$
#
# so the uncertainty of the belief becomes a back-off from the limits ($\kappa(0.05) \approx 1.645$; `method=
# "cantelli"` gives a distribution-free $\sqrt{(1-\alpha)/\alpha}$). The cost drives SOC to the target
# $\sum_k w\,(\mathrm{soc}^* - \mathrm{soc}_k)^2 + \rho\,(\Delta I_k / I_{max})^2$. One solve from a belief at
# SOC 0.3 and 40 °C, with a settled covariance:

# %%
ocp = bms.mpc_problem(config)
m = twin.initial.mean.at[0].set(0.3).at[2].set(40.0 + KELVIN)
# a belief the EKF would reach after a drive (sd of soc, v1, T, R0, 1/Q, bias, cooling, R1, C1, thermal mass)
P = jnp.diag(jnp.array([0.01, 0.005, 0.5, 1e-3, 0.005, 0.05, 0.02, 5e-4, 100.0, 0.02]) ** 2)
params = twin.dynamics.with_parameters(m)  # the twin's cell at the belief's parameter means
start = time.perf_counter()
sol = mpc.solve(ocp, chance.augment(m[:4], P[:4, :4]), params, tol=config.mpc_tol, max_iter=50, implicit_diff=False)
print(f"SQP: converged {bool(sol.converged)} in {int(sol.iterations)} iterations ({time.perf_counter() - start:.1f} s "
      f"with compilation); κ = {float(ocp.constraint.kappa[0]):.3f} at α = {config.alpha}")  # fmt: skip

# %% [markdown]
# The plan's predicted means and spreads: `chance.split` turns each augmented state back into $(m, P)$, and the
# constraint function $g = [V - V_{max}, T - T_{max}]$ with its Jacobian gives $\mu_g$ and $\sigma_g$. The plan
# charges at the current limit while the thermal margin lasts, then rides the tightened temperature bound
# $\mu_T + \kappa\sigma_T = T_{max}$.

# %%
ms, Ps = chance.split(sol.xs)
g = ocp.constraint.g


def moments(mk, Pk, uk):
    J = jax.jacfwd(lambda x: g(x, uk, params))(mk)
    return g(mk, uk, params), jnp.sqrt(jnp.diagonal(J @ Pk @ J.T))


mu, sd = jax.vmap(moments)(ms, Ps, sol.us)
kappa = float(ocp.constraint.kappa[0])
t_plan = config.interval_ticks * np.arange(1, config.horizon + 1)
limits = (config.v_max, config.t_max_c)
fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
ax[0].step(t_plan - config.interval_ticks, -sol.us[:, 0], where="post")
ax[0].set_ylabel("planned charging current (A)")
for j, (a, label, lim) in enumerate(zip(ax[1:], ("voltage (V)", "temperature (°C)"), limits)):
    mean = mu[:, j] + lim
    a.fill_between(t_plan, mean - kappa * sd[:, j], mean + kappa * sd[:, j], alpha=0.3, label="mean ± κσ")
    a.plot(t_plan, mean, label="predicted mean")
    a.axhline(lim, color="r", ls="--", lw=0.8, label="limit")
    a.set_ylabel(label)
    a.legend(fontsize=8)
for a in ax:
    a.set_xlabel("time ahead (s)")
fig.tight_layout()

# %% [markdown]
# ## 4. The safety supervisor
# The MPC plans every 20 s on a model; the supervisor checks *every tick*, every command (charge, regeneration or the
# drive's demand), against the twin's one-tick prediction at a much smaller risk, $\alpha_s = 10^{-4}$
# ($\kappa \approx 3.7$): $\mu_V \pm \kappa\sigma_V$ must stay within $[V_{min}, V_{max}]$, and the thermal margin
# $h = T_{max} - (\mu_T + \kappa\sigma_T)$ must obey the discrete barrier condition $h_{k+1} \ge (1 - \gamma) h_k$.
# A command that fails is replaced by the largest safe fraction of it (bisection). Near full charge a 3C charging
# demand would push the voltage over 4.2 V, so it is cut:

# %%
supervise = jax.jit(lambda m, P, demand: bms.supervise(config, twin, m, P, demand))
for soc in (0.5, 0.8, 0.9, 0.95):
    belief = m.at[0].set(soc).at[2].set(36.0 + KELVIN)
    applied, overridden = supervise(belief, P, jnp.asarray(-15.0))
    print(f"SOC {soc:.2f}: demand -15.0 A → applied {float(applied):6.2f} A (overridden: {bool(overridden)})")

# %% [markdown]
# ## 5. The whole loop at the quick preset
# `bms.evaluate` is pure: one `lax.scan` over 20 s control intervals (MPC solve under `lax.cond` while charging),
# each a `lax.scan` over 1 s ticks (supervisor, plant, sensors, EKF, detectors), then the two baselines on the true
# plant from the same state: the best safe CC-CV (the largest constant current whose CC-CV charge stays below
# $T_{max}$) and the perfect-information optimum (the charging OCP solved on the true cell). One `jax.jit` compiles
# it all.

# %%
start = time.perf_counter()
out = jax.device_get(jax.jit(bms.evaluate, static_argnums=0)(config, jax.random.key(0)))
print(f"evaluate: {time.perf_counter() - start:.1f} s (with compilation)")
print(f"SOC RMSE          {100 * float(out['soc_rmse']):.2f} %")
print(f"limit violations  {int(out['violations'])} ticks (max V {float(out['max_voltage_v']):.3f} V, "
      f"max T {float(out['max_temperature_c']):.2f} °C)")  # fmt: skip
print(f"10→80 % charge    MPC {float(out['charge_time_s']):.0f} s, CC-CV {float(out['cccv_charge_time_s']):.0f} s "
      f"({float(out['cccv_current_a']):.2f} A), optimum {float(out['optimal_charge_time_s']):.0f} s")  # fmt: skip
print(f"false alarms      {int(out['false_alarms'])} (nominal phase), misclassified {int(out['misclassified_alarms'])}")
print(f"supervisor        overrode {100 * float(out['supervisor_override_fraction']):.1f} % of charging ticks")
print(f"MPC               {int(out['mpc']['solves'])} solves, {100 * float(out['mpc']['converged_fraction']):.0f} % "
      f"converged, {float(out['mpc']['mean_iterations']):.1f} SQP iterations on average")  # fmt: skip

# %% [markdown]
# The experiment's own figures: the whole run (SOC and its estimate, current, voltage, temperature, alarms), the
# charge against its two baselines, and the parameter estimates ($R_0$, capacity, current bias) against the truth.
# They are written as PNG files (the notebook runs with the Agg backend).

# %%
results = {k: v for k, v in out.items() if k != "trace"}
fig_dir = pathlib.Path(tempfile.mkdtemp(prefix="bms_figures_"))
_bms_figures.overview(config, out["trace"], results, fig_dir / "bms_overview.png")
_bms_figures.charge(config, out["trace"], results, fig_dir / "bms_charge.png")
_bms_figures.parameters(config, out["trace"], fig_dir / "bms_parameters.png")
for path in sorted(fig_dir.glob("*.png")):
    print(path)

# %% [markdown]
# ## 6. The full run, the sweep, and the knobs
# The command line runs the default scenario (three drives, two charges, the four faults: loose connection, resistance
# growth, capacity fade, stuck temperature sensor) and writes `results.json` and the figures under `runs/bms/`:
#
# ```
# twinjax run bms                            # the full 12000 s run with the four faults
# twinjax run bms --quick                    # the preset used here
# twinjax run bms --set sweep_runs=50        # plus 50 randomised runs, with and without the supervisor
# ```
#
# Any `Config` field can be set with `--set`: the limits (`t_max_c=45`, `v_max=4.2`, `i_max_c_rate=3`), the risk
# (`alpha=0.01`, `method=cantelli`, `supervisor_alpha`, `supervisor=false`), the estimator (`estimator=ukf`), the
# hidden truth (`r0_factor=1.3`), and the fault schedule with dotted keys (`faults.tsensor_at_s=9000`,
# `faults.resistance_factor=1.6`).
