"""Anomaly detection: conformal false-alarm rate on the battery and pendulum twins, AUC and delay for five faults.

The score of a window of sensor readings ``y_{0:L-1}`` is its negative log marginal likelihood under the twin,
``S = −Σ_k log p(y_k | y_{0:k-1})``, the one-step predictive densities of an extended Kalman filter started from the
twin's initial belief (:func:`twinjax.diagnostics.anomaly.filter_score`). For each twin:

1. **Calibration.** ``n_calibration`` (``M``) synthetic windows are drawn from the twin itself (fresh initial state,
   fresh sensor noise each) and scored; ``τ_α`` is the conformal quantile, the ``⌈(M + 1)(1 − α)⌉``-th smallest
   score (:func:`~twinjax.diagnostics.anomaly.conformal_threshold`).
2. **False-alarm rate.** ``n_test`` fresh nominal windows, drawn the same way with independent keys (exchangeable with
   the calibration windows), are scored; the false-alarm rate ``FAR = #{S > τ_α} / n_test`` and its binomial standard
   error ``SE = √(FAR (1 − FAR)/n_test)`` are checked against ``α − 2 SE − 1/(M + 1) ≤ FAR ≤ α + 2 SE``
   (``within_bounds``). With ``M = 5·10⁵`` the calibration's own spread, ``√(α(1 − α)/M)``, is about half the test SE.
3. **Faults** from step ``onset`` (the middle of the window) on, in units of the sensor's noise SD ``σ`` of the faulted
   channel (the angle for the pendulum, the terminal voltage for the battery): a ``bias`` of ``bias_sd·σ``, a
   ``drift`` ramping to ``drift_sd·σ`` at the window's end, a ``stuck`` sensor repeating its reading at the onset, a
   ``variance`` increase (SD × ``noise_factor``) and a ``parameter`` change (the plant's ``length_m`` of the pendulum,
   ``r0_ohm`` of the battery, × ``1 + parameter_change``). ``auc`` is the ROC AUC of faulty against nominal window
   scores (``n_faulty`` windows per fault).
4. **Detection delay** (streaming): the score at step ``t`` is the sliding sum of the last ``stream_width`` per-step
   scores; its threshold ``τ_t`` is the conformal quantile at level ``stream_alpha`` of the calibration windows'
   scores *at the same step* (exchangeable at each step). The delay is the number of steps from the onset to the first
   alarm at or after it, within the window's remaining ``L − onset`` steps (``detected`` = the fraction of faulty
   streams with an alarm in that horizon; ``median_steps`` is ``null`` when fewer than half are detected). The
   ``nominal`` row applies the same rule to fault-free streams: the false-alarm baseline any delay is compared to.

Twins (``physics``): the pendulum (``pendulum_twin``: angle every 0.05 s, σ = 0.05 rad, no torque, initial swing
``N([1, 0], 0.1² I)``) and the 5 Ah battery (``battery_twin``: voltage σ = 5 mV and temperature σ = 0.5 K every
1 s, a 5 A discharge pulse train of period 10 s, initial ``soc ~ N(0.8, 0.05²)``), both integrated by Tsit5 with one
fixed step per interval (the same twin generates and scores, so the claim is about the detector, not the solver).

``evaluate`` is one ``eqx.filter_jit``-compiled program per twin (``_twin_scores``: windows in chunks of ``chunk`` by
``lax.map``, each chunk a ``vmap`` of simulate → inject → EKF score), followed by the statistics.

Measured (``twinjax run anomaly``, seed 0, M = 5·10⁵, n_test = 10⁵, L = 40, onset 20, 2-core CPU):

false-alarm rate (FAR ± binomial SE; bounds ``[α − 2 SE − 1/(M + 1), α + 2 SE]``; all four within):

=========  ======  ===================  ===================
twin       α       FAR ± SE             bounds
=========  ======  ===================  ===================
battery    0.01    0.01031 ± 0.00032    [0.00936, 0.01064]
battery    0.05    0.05003 ± 0.00069    [0.04862, 0.05138]
pendulum   0.01    0.01026 ± 0.00032    [0.00936, 0.01064]
pendulum   0.05    0.05032 ± 0.00069    [0.04862, 0.05138]
=========  ======  ===================  ===================

AUC / detected within 20 steps / median delay in steps (``—``: under half detected); nominal streams: 9.6 %
(battery) and 8.7 % (pendulum) false alarms in the same 20 steps:

========  ================  =================  =================  ================  =================
twin      bias 1σ           drift → 2σ         stuck              variance ×4       parameter +10 %
========  ================  =================  =================  ================  =================
battery   0.698 / 33 % / —  0.793 / 54 % / 19  1.000 / 100 % / 5  0.970 / 96 % / 5  0.768 / 47 % / —
pendulum  0.778 / 39 % / —  0.878 / 69 % / 18  1.000 / 100 % / 6  0.994 / 98 % / 4  0.904 / 76 % / 14
========  ================  =================  =================  ================  =================

Wall time 10–13 min on the shared 2-core machine (float64). See ``docs/diagnostics.md`` for the figures and a
reading of the table.
"""

import dataclasses
import fractions
import math
import pathlib
import time
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import twinjax as tj
from physics.battery import battery_twin
from physics.pendulum import pendulum_twin
from twinjax.diagnostics.anomaly import (
    conformal_threshold,
    detection_delay,
    false_alarm_rate,
    filter_score,
    inject_bias,
    inject_drift,
    inject_noise,
    inject_stuck,
    roc_auc,
    roc_curve,
    simulate_parameter_change,
    sliding_sum,
)
from twinjax.runs import write_json

SUMMARY_KEYS = ("false_alarm_rate", "auc", "detection_delay", "wall_time_s")

FAULTS = ("bias", "drift", "stuck", "variance", "parameter")
_FAULT_INDEX = {"nominal": 0, **{f: i + 1 for i, f in enumerate(FAULTS)}}

TwinName = Literal["battery", "pendulum"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes, fault magnitudes (in units of the faulted channel's sensor SD) and detector settings."""

    alphas: tuple[float, ...] = (0.01, 0.05)
    twins: tuple[TwinName, ...] = ("battery", "pendulum")
    n_calibration: int = 500_000
    n_test: int = 100_000
    n_faulty: int = 20_000
    window: int = 40
    onset: int = 20
    stream_width: int = 5
    stream_alpha: float = 0.01
    bias_sd: float = 1.0
    drift_sd: float = 2.0
    noise_factor: float = 2.0
    parameter_change: float = 0.1
    chunk: int = 5_000
    seed: int = 0

    def __post_init__(self):
        if not self.alphas or not all(0.0 < a < 1.0 for a in self.alphas):
            raise ValueError(f"`alphas` must be rates in (0, 1), got {self.alphas!r}.")
        if not self.twins or any(t not in ("battery", "pendulum") for t in self.twins):
            raise ValueError(f"`twins` must name 'battery' and/or 'pendulum', got {self.twins!r}.")
        chunk = min(self.chunk, self.n_calibration, self.n_test, self.n_faulty)
        sizes = (self.n_calibration, self.n_test, self.n_faulty)
        if chunk < 1 or any(v % chunk for v in sizes):
            raise ValueError(
                f"`n_calibration`, `n_test`, `n_faulty` = {sizes} must be positive multiples of the chunk size "
                f"min(`chunk`, sizes) = {chunk}."
            )
        if min(self.alphas + (self.stream_alpha,)) < 1.0 / (self.n_calibration + 1):
            raise ValueError(f"`n_calibration`={self.n_calibration} is too small for alpha={min(self.alphas)}.")
        if not 2 <= self.window:
            raise ValueError(f"`window` must be at least 2 steps, got {self.window}.")
        if not 1 <= self.onset < self.window:
            raise ValueError(f"`onset` must lie in [1, window), got {self.onset}.")
        if not 1 <= self.stream_width <= self.window:
            raise ValueError(f"`stream_width` must lie in [1, window], got {self.stream_width}.")
        if self.noise_factor < 1.0:
            raise ValueError(f"`noise_factor` must be ≥ 1 (a variance increase), got {self.noise_factor}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_calibration=2_000, n_test=2_000, n_faulty=1_000, chunk=1_000)


# ---------------------------------------------------------------------------------------------------------------------
# the twins and their faults

_FIXED_STEP = tj.Discretisation(solver=diffrax.Tsit5(), stepsize_controller=diffrax.ConstantStepSize(), substeps=1)


def _pendulum(config: Config):
    twin = eqx.tree_at(lambda m: m.discretisation, pendulum_twin(), _FIXED_STEP)
    twin = eqx.tree_at(lambda m: m.dynamics.length_m, twin, jnp.asarray(1.0))  # an array leaf: blended when traced
    changed = eqx.tree_at(lambda m: m.dynamics.length_m, twin, jnp.asarray(1.0 + config.parameter_change))
    controls = jnp.zeros((config.window, 1))
    return twin, changed, controls, 0


def _battery(config: Config):
    twin = eqx.tree_at(lambda m: m.discretisation, battery_twin(), _FIXED_STEP)
    r0 = jnp.asarray(twin.dynamics.r0_ohm)
    twin = eqx.tree_at(lambda m: m.dynamics.r0_ohm, twin, r0)
    changed = eqx.tree_at(lambda m: m.dynamics.r0_ohm, twin, r0 * (1.0 + config.parameter_change))
    t = twin.dt * jnp.arange(config.window)
    controls = jnp.where((t // 5.0) % 2 == 0, 5.0, 0.0)[:, None]  # 5 A for 5 s, rest for 5 s
    return twin, changed, controls, 0


TWINS = {"pendulum": _pendulum, "battery": _battery}


def _window_scores(twin, changed, controls, keys, fault, channel, magnitudes, onset: int):
    """Per-step scores ``(chunk, window)`` of windows with fault ``fault`` (0 = nominal; traced, one compilation)."""
    ts = twin.dt * jnp.arange(controls.shape[0], dtype=controls.dtype)
    sd = jnp.sqrt(twin.observation.cov[channel, channel])
    unit = jnp.zeros((twin.observation.cov.shape[0],)).at[channel].set(1.0)
    bias_sd, drift_sd, noise_factor = magnitudes
    n_after = controls.shape[0] - 1 - onset
    plant = jax.tree.map(
        lambda a, b: jnp.where(fault == _FAULT_INDEX["parameter"], b, a) if eqx.is_inexact_array(a) else a,
        twin,
        changed,
    )

    def one(key):
        k_sim, k_noise = jax.random.split(key)
        ys = simulate_parameter_change(twin, plant, ts, onset, key=k_sim, controls=controls)
        ys = jax.lax.switch(
            fault,
            [
                lambda y: y,
                lambda y: inject_bias(y, onset, bias_sd * sd * unit),
                lambda y: inject_drift(y, onset, drift_sd * sd * unit / max(n_after, 1)),
                lambda y: inject_stuck(y, onset, unit > 0),
                lambda y: inject_noise(k_noise, y, onset, jnp.sqrt(noise_factor**2 - 1.0) * sd * unit),
                lambda y: y,
            ],
            ys,
        )
        return filter_score(twin, ys, controls, ts, method="ekf")

    return jax.vmap(one)(keys)


@eqx.filter_jit
def _twin_scores(twin, changed, controls, key, sizes, channel, magnitudes, onset, chunk):
    """Per-step scores of the calibration, test and faulty windows of one twin (one compiled program)."""
    n_cal, n_test, n_faulty = sizes
    jobs = [(0, n_cal), (0, n_test)] + [(_FAULT_INDEX[f], n_faulty) for f in FAULTS]
    fault_of_chunk = jnp.concatenate([jnp.full((n // chunk,), f, jnp.int32) for f, n in jobs])
    keys = jax.random.split(key, fault_of_chunk.shape[0] * chunk).reshape(fault_of_chunk.shape[0], chunk)

    def body(args):
        k, f = args
        return _window_scores(twin, changed, controls, k, f, channel, magnitudes, onset)

    per_step = jax.lax.map(body, (keys, fault_of_chunk)).reshape(-1, controls.shape[0])
    out, start = {}, 0
    for name, (_, n) in zip(("calibration", "nominal", *FAULTS), jobs):
        out[name] = per_step[start : start + n]
        start += n
    return out


def _scores(config: Config, key) -> dict:
    """Per-step window scores ``{twin: {"calibration" | "nominal" | fault: (n, window)}}``."""
    chunk = min(config.chunk, config.n_calibration, config.n_test, config.n_faulty)
    sizes = (config.n_calibration, config.n_test, config.n_faulty)
    magnitudes = (config.bias_sd, config.drift_sd, config.noise_factor)
    out = {}
    for name, k in zip(config.twins, jax.random.split(key, len(config.twins))):
        twin, changed, controls, channel = TWINS[name](config)
        out[name] = _twin_scores(twin, changed, controls, k, sizes, channel, magnitudes, config.onset, chunk)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# statistics


def _median_or_none(delays) -> float | None:
    med = float(np.median(np.asarray(delays)))
    return med if np.isfinite(med) else None


def _statistics(config: Config, scores: dict) -> dict:
    m, n = config.n_calibration, config.n_test
    results = {"false_alarm_rate": {}, "auc": {}, "detection_delay": {}, "thresholds": {}}
    for name, s in scores.items():
        window = {k: jnp.sum(v, axis=1) for k, v in s.items()}
        far, taus = {}, {}
        for alpha in config.alphas:
            tau = conformal_threshold(window["calibration"], alpha)
            rate, se = false_alarm_rate(window["nominal"], tau)
            rate, se = float(rate), float(se)
            lower, upper = alpha - 2 * se - 1.0 / (m + 1), alpha + 2 * se
            k = math.ceil((m + 1) * (1 - fractions.Fraction(repr(alpha))))
            far[f"alpha={alpha}"] = {
                "rate": rate,
                "se": se,
                "lower": lower,
                "upper": upper,
                "within_bounds": bool(lower <= rate <= upper),
                "marginal_rate": (m + 1 - k) / (m + 1),
                "calibration_sd": float(np.sqrt(alpha * (1 - alpha) / m)),
            }
            taus[f"alpha={alpha}"] = float(tau)
        results["false_alarm_rate"][name] = far
        results["thresholds"][name] = taus
        results["auc"][name] = {f: float(roc_auc(window["nominal"], window[f])) for f in FAULTS}
        stream_tau = conformal_threshold(sliding_sum(s["calibration"], config.stream_width), config.stream_alpha)
        delays = {}
        for f in ("nominal", *FAULTS):
            d = np.asarray(detection_delay(sliding_sum(s[f], config.stream_width), stream_tau, config.onset))
            det = np.isfinite(d)
            delays[f] = {
                "median_steps": _median_or_none(d),
                "mean_steps_detected": float(d[det].mean()) if det.any() else None,
                "detected": float(det.mean()),
            }
        results["detection_delay"][name] = delays
    results["all_within_bounds"] = all(
        v["within_bounds"] for per_twin in results["false_alarm_rate"].values() for v in per_twin.values()
    )
    results["sizes"] = {"n_calibration": m, "n_test": n, "n_faulty": config.n_faulty, "window": config.window}
    return results


def evaluate(config: Config, key) -> dict:
    """False-alarm rates per twin and α (with SE and bounds), AUC and detection delay per fault.

    Pure; each twin's windows are one compiled program (``_twin_scores``), the statistics are computed after it.
    """
    return _statistics(config, _scores(config, key))


# ---------------------------------------------------------------------------------------------------------------------
# run: results and figures


def _plot(config: Config, scores: dict, results: dict, run_dir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    # 1. histogram of window scores with the thresholds
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        window = {k: np.asarray(jnp.sum(v, axis=1)) for k, v in scores[name].items()}
        # the stuck sensor's scores are far off to the right: clipped into the last bin, not setting the scale
        lo = np.quantile(window["nominal"], 0.0005)
        hi = max(np.quantile(window[f], 0.99) for f in FAULTS if f != "stuck")
        bins = np.linspace(lo, hi, 80)
        heights, _, _ = ax.hist(window["nominal"], bins, density=True, color="0.6", label="nominal (test)")
        for f in FAULTS:
            label = f"{f} (clipped; median {np.median(window[f]):.0f})" if f == "stuck" else f
            ax.hist(np.clip(window[f], lo, hi), bins, density=True, histtype="step", lw=1.2, label=label)
        for alpha, ls in zip(config.alphas, ("-", "--", ":", "-.")):
            tau = results["thresholds"][name][f"alpha={alpha}"]
            far = results["false_alarm_rate"][name][f"alpha={alpha}"]["rate"]
            ax.axvline(tau, color="k", ls=ls, lw=1, label=f"τ (α = {alpha}), FAR = {far:.4f}")
        ax.set_ylim(0.0, 1.6 * heights.max())  # the stuck sensor's clipped bin goes off the top
        ax.set_xlabel("window score S = −log p(y_{0:L−1})  (nats)")
        ax.set_ylabel("density")
        ax.set_title(f"{name}: window scores (faults from step {config.onset}, clipped)")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(run_dir / "figures" / "anomaly_histogram.png", dpi=110)
    plt.close(fig)

    # 2. streaming score over time with the per-step threshold and alarms (first faulty stream of each fault)
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 3.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        twin = TWINS[name](config)[0]
        t = twin.dt * np.arange(config.window)
        tau = np.asarray(
            conformal_threshold(sliding_sum(scores[name]["calibration"], config.stream_width), config.stream_alpha)
        )
        ax.plot(t, tau, "k--", lw=1.2, label=f"τ_t (α = {config.stream_alpha} per step)")
        top = -np.inf
        for f, color in zip(("nominal", *FAULTS), ("0.4", "C0", "C1", "C2", "C3", "C4")):
            s = np.asarray(sliding_sum(scores[name][f][0], config.stream_width))
            if f != "stuck":
                top = max(top, s.max())
            ax.plot(t, s, lw=1, color=color, label=f)
            alarm = s > tau
            ax.plot(t[alarm], s[alarm], "o", ms=4, color=color)
        ax.axvline(t[config.onset], color="k", ls=":", lw=1, label="fault onset")
        bottom = min(tau.min(), np.asarray(sliding_sum(scores[name]["nominal"][0], config.stream_width)).min())
        ax.set_ylim(bottom - 0.1 * (top - bottom), top + 0.3 * (top - bottom))  # the stuck sensor leaves the plot
        ax.set_xlabel("time (s)")
        ax.set_ylabel(f"sliding score (last {config.stream_width} steps)")
        ax.set_title(f"{name}: streaming score of one stream per fault (stuck: off the top); dots = alarms")
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(run_dir / "figures" / "anomaly_stream.png", dpi=110)
    plt.close(fig)

    # 3. ROC curves per fault
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        window = {k: jnp.sum(v, axis=1) for k, v in scores[name].items()}
        for f in FAULTS:
            fpr, tpr = roc_curve(window["nominal"][:20_000], window[f][:20_000])
            ax.plot(np.asarray(fpr), np.asarray(tpr), label=f"{f} (AUC {results['auc'][name][f]:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false-alarm rate")
        ax.set_ylabel("detection rate")
        ax.set_title(f"{name}: ROC of the window score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "figures" / "anomaly_roc.png", dpi=110)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):  # scores of 10⁵–10⁶ windows are summed and ranked: float64, scoped, not global
        scores = _scores(config, jax.random.key(config.seed))
        results = _statistics(config, scores)
        results["wall_time_s"] = time.perf_counter() - start
        _plot(config, scores, results, run_dir)
    write_json(run_dir / "results.json", results)
    return results
