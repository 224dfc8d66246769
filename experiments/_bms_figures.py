"""Figures of the ``bms`` experiment (matplotlib, Agg): the whole run, the nominal charge against its baselines, and
the parameter estimates."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from physics.battery_bms import FAULT_CLASSES  # noqa: E402

KELVIN = 273.15
COLOURS = dict(zip(FAULT_CLASSES, ("tab:purple", "tab:red", "tab:brown", "tab:cyan")))


def _fault_windows(config):
    f = config.faults
    return {
        "loose_connection": (f.loose_from_s, f.loose_to_s),
        "resistance_growth": (f.resistance_at_s, config.t_end_s),
        "capacity_fade": (f.capacity_at_s, config.t_end_s),
        "temperature_sensor": (f.tsensor_at_s, config.t_end_s),
    }


def overview(config, trace, results, path):
    o = {k: np.asarray(v) for k, v in trace["out"].items()}
    t = o["t"] / 3600.0
    fig, ax = plt.subplots(5, 1, figsize=(11, 12), sharex=True, gridspec_kw={"height_ratios": [3, 2, 2, 2, 1.3]})
    soc, m, sd = o["x"][:, 0], o["mean"][:, 0], o["sd"][:, 0]
    ax[0].fill_between(t, 100 * (m - 2 * sd), 100 * (m + 2 * sd), color="tab:blue", alpha=0.25, lw=0,
                       label="twin ±2σ")  # fmt: skip
    ax[0].plot(t, 100 * soc, "k", lw=1.2, label="true")
    ax[0].plot(t, 100 * m, "tab:blue", lw=1, label=f"estimated ({config.estimator.upper()})")
    ax[0].set_ylabel("SOC (%)")
    ax[0].set_title(f"bms: SOC RMSE {100 * results['soc_rmse']:.2f} %, violations {results['violations']}, "
                    f"false alarms {results['false_alarms']}")  # fmt: skip
    ax[0].legend(loc="upper right", fontsize=8)
    ax[1].plot(t, o["demand"], color="0.6", lw=0.6, label="demand / MPC command")
    ax[1].plot(t, o["current"], "tab:green", lw=0.8, label="applied (after supervisor)")
    i_max = config.i_max_c_rate * 5.0
    for s in (-1, 1):
        ax[1].axhline(s * i_max, color="r", ls="--", lw=0.8)
    ax[1].set_ylabel("current (A)\n+ discharge")
    ax[1].legend(loc="upper right", fontsize=8)
    ax[2].plot(t, o["y"][:, 0], color="0.7", lw=0.5, label="measured")
    ax[2].plot(t, o["v_true"], "k", lw=0.8, label="true")
    ax[2].axhline(config.v_max, color="r", ls="--", lw=0.8, label="limits")
    ax[2].axhline(config.v_min, color="r", ls="--", lw=0.8)
    ax[2].set_ylim(max(config.v_min - 0.1, np.min(o["v_true"]) - 0.1), config.v_max + 0.1)
    ax[2].set_ylabel("voltage (V)")
    ax[2].legend(loc="lower right", fontsize=8)
    ax[3].plot(t, o["y"][:, 1] - KELVIN, color="0.7", lw=0.5, label="measured")
    ax[3].plot(t, o["x"][:, 2] - KELVIN, "k", lw=0.8, label="true")
    ax[3].plot(t, o["mean"][:, 2] - KELVIN, "tab:blue", lw=0.8, label="estimated")
    ax[3].axhline(config.t_max_c, color="r", ls="--", lw=0.8, label="T max")
    ax[3].set_ylabel("temperature (°C)")
    ax[3].legend(loc="lower right", fontsize=8)
    windows = _fault_windows(config)
    alarms = o["alarms"]
    for j, name in enumerate(FAULT_CLASSES):
        a, b = windows[name]
        ax[4].barh(j, (b - a) / 3600.0, left=a / 3600.0, color=COLOURS[name], alpha=0.3, height=0.8)
        on = alarms[:, j]
        ax[4].plot(t[on], np.full(on.sum(), j), "|", color=COLOURS[name], ms=10)
        delay = results["detection_delay_s"][name]
        label = f"{name}: delay {delay:.0f} s" if np.isfinite(delay) else f"{name}: not detected"
        ax[4].text(t[-1], j, "  " + label, va="center", fontsize=8)
    ax[4].axvspan(0, config.nominal_end_s / 3600.0, color="g", alpha=0.07)
    ax[4].set_yticks(range(len(FAULT_CLASSES)), FAULT_CLASSES, fontsize=8)
    ax[4].set_xlabel("time (h)   [green: nominal phase; bars: fault active; ticks: alarm raised]")
    for a in ax[:4]:
        a.axvspan(0, config.nominal_end_s / 3600.0, color="g", alpha=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def charge(config, trace, results, path):
    o = {k: np.asarray(v) for k, v in trace["out"].items()}
    c0 = int(config.charges_s[0])
    n = config.optimal_horizon * config.interval_ticks
    sl = slice(c0, c0 + n)
    t = np.arange(1, n + 1)
    plan = np.repeat(np.asarray(trace["optimal_plan"]), config.interval_ticks)
    opt_soc = np.asarray(trace["optimal_socs"])[1:]
    plan = np.where(np.concatenate([[False], opt_soc[:-1] >= config.soc_target]), 0.0, plan)
    series = {
        "MPC twin (closed loop)": (o["x"][sl, 0], -o["current"][sl], o["v_true"][sl], o["x"][sl, 2], "tab:blue"),
        "best safe CC-CV": (np.asarray(trace["cccv_socs"])[1:], -np.asarray(trace["cccv_current"]),
                            np.asarray(trace["cccv_voltage"]), np.asarray(trace["cccv_temperature"]), "tab:orange"),
        "perfect-information optimum": (opt_soc, -plan, np.asarray(trace["optimal_voltage"]),
                                        np.asarray(trace["optimal_temperature"]), "k"),
    }  # fmt: skip
    fig, ax = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for name, (soc, cur, volts, temp, col) in series.items():
        ax[0, 0].plot(t, 100 * soc, color=col, lw=1.2, label=name)
        ax[0, 1].plot(t, cur, color=col, lw=1)
        ax[1, 0].plot(t, volts, color=col, lw=1)
        ax[1, 1].plot(t, temp - KELVIN, color=col, lw=1)
    ax[0, 0].axhline(100 * config.soc_target, color="0.5", ls=":")
    ax[0, 0].set_ylabel("SOC (%)")
    ax[0, 0].legend(fontsize=8)
    ax[0, 0].set_title(
        f"10→80 %: MPC {results['charge_time_s']:.0f} s, CC-CV {results['cccv_charge_time_s']:.0f} s "
        f"({results['cccv_current_a']:.2f} A), optimum {results['optimal_charge_time_s']:.0f} s",
        fontsize=9,
    )
    ax[0, 1].axhline(config.i_max_c_rate * 5.0, color="r", ls="--", lw=0.8)
    ax[0, 1].set_ylabel("charging current (A)")
    ax[1, 0].axhline(config.v_max, color="r", ls="--", lw=0.8)
    ax[1, 0].set_ylim(3.4, config.v_max + 0.05)
    ax[1, 0].set_ylabel("true voltage (V)")
    ax[1, 1].axhline(config.t_max_c, color="r", ls="--", lw=0.8)
    ax[1, 1].set_ylabel("true temperature (°C)")
    for a in ax[1]:
        a.set_xlabel("time from charge start (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parameters(config, trace, path):
    o = {k: np.asarray(v) for k, v in trace["out"].items()}
    t = o["t"] / 3600.0
    m, sd = o["mean"], o["sd"]
    cooling = config.cooling_factor * 0.25  # W/K: the nominal cell's 0.25 W/K times the hidden factor
    rows = (
        (1e3 * m[:, 3], 1e3 * sd[:, 3], 1e3 * o["r0_true"], "R0 (mΩ)"),
        (1 / m[:, 4], sd[:, 4] / m[:, 4] ** 2, o["q_true"], "capacity (A h)"),
        (m[:, 5], sd[:, 5], np.full_like(t, config.current_bias_a), "current-sensor bias (A)"),
        (0.25 * m[:, 6], 0.25 * sd[:, 6], np.full_like(t, cooling), "cooling k (W/K)"),
        (1e3 * m[:, 7], 1e3 * sd[:, 7], np.full_like(t, 10.0 * config.r1_factor), "R1 (mΩ)"),
        (m[:, 8], sd[:, 8], np.full_like(t, 3000.0 * config.c1_factor), "C1 (F)"),
        (70.0 * m[:, 9], 70.0 * sd[:, 9], np.full_like(t, 70.0 * config.heat_capacity_factor), "heat capacity (J/K)"),
    )
    fig, axes = plt.subplots(4, 2, figsize=(12, 10), sharex=True)
    for a, (mean, s, truth, label) in zip(axes.T.ravel(), rows):
        a.fill_between(t, mean - 2 * s, mean + 2 * s, color="tab:blue", alpha=0.25, lw=0)
        a.plot(t, mean, "tab:blue", lw=1, label="estimate ±2σ")
        a.plot(t, truth, "k", lw=1, label="true")
        lo, hi = np.percentile(np.concatenate([mean, truth]), [1, 99])
        pad = 0.15 * (hi - lo) + 1e-9
        a.set_ylim(lo - pad, hi + pad)
        a.set_ylabel(label)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    axes[-1, -1].axis("off")
    for a in axes[-1]:
        a.set_xlabel("time (h)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def all_figures(config, trace, results, fig_dir):
    overview(config, trace, results, fig_dir / "bms_overview.png")
    charge(config, trace, results, fig_dir / "bms_charge.png")
    parameters(config, trace, fig_dir / "bms_parameters.png")


def sweep(config, sweep, path):
    """Per-run charge times against both baselines, and the violating-tick fractions with and without the
    supervisor, over the randomised runs."""
    r = {k: np.asarray(v) for k, v in sweep["runs"].items() if not isinstance(v, dict)}
    b = {k: np.asarray(v) for k, v in sweep["baselines"].items() if not isinstance(v, dict)}
    t = r["charge_time_s"][0]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    ax[0].scatter(b["optimal_charge_time_s"], t, s=14, label="MPC twin", color="tab:blue")
    ax[0].scatter(
        b["optimal_charge_time_s"], b["cccv_charge_time_s"], s=14, label="best safe CC-CV", color="tab:orange"
    )
    lo, hi = np.nanmin(b["optimal_charge_time_s"]), np.nanmax(b["cccv_charge_time_s"])
    xs = np.linspace(lo, hi, 10)
    ax[0].plot(xs, xs, "k", lw=0.8, label="optimum")
    ax[0].plot(xs, 1.05 * xs, "k--", lw=0.8, label="optimum + 5 %")
    ax[0].set_xlabel("perfect-information optimum, 10→80 % (s)")
    ax[0].set_ylabel("charge time, 10→80 % (s)")
    ax[0].legend(fontsize=8)
    ax[0].set_title(f"{t.size} randomised plants", fontsize=9)
    frac = r["violating_charge_fraction"]
    bins = np.linspace(0, max(config.alpha, float(np.max(frac))) * 1.1 + 1e-9, 30)
    ax[1].hist(frac[1], bins=bins, alpha=0.6, label="MPC only (risk α)", color="tab:red")
    ax[1].hist(frac[0], bins=bins, alpha=0.6, label="MPC + supervisor", color="tab:green")
    ax[1].axvline(config.alpha, color="k", ls="--", lw=0.8, label="α")
    ax[1].set_xlabel("fraction of charging ticks violating a hard limit (per run)")
    ax[1].set_ylabel("runs")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
