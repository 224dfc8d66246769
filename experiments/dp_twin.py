"""A generative twin of sensitive operator logs trained with DP-SGD: ε per setting, synthetic data, utility against ε.

**Data: pump operators' daily logs.** Each of ``n_train_operators + n_test_operators`` operators runs a DC-motor
circulation pump (:class:`physics.pump.DCMotorPump`) at their own site and keeps a log of
``records_per_operator`` days. Operator habits and site: a preferred supply voltage ``v_o ~ U(8.5, 12.5)`` V, a
typical daily run time ``log h_o ~ N(log 6 h, 0.35²)`` and the site's hydraulic load ``k_load = 2·10⁻⁶ e^{0.3 ζ_o}``.
Day ``d``: voltage ``V = v_o + 0.4 ε₁`` V, run time ``h = h_o e^{0.25 ε₂}`` h, and the steady state of the pump at
``V`` (:meth:`~physics.pump.DCMotorPump.steady_state`) gives the current ``i`` (A) and the flow ``Q`` (L/s), each
read with 2 % sensor noise. A record is ``(V, h, i, Q)``; the daily energy ``E = V i h`` (Wh) is what a planner
needs from it.

**Privacy unit: one operator's whole log.** Each example of DP-SGD is one operator's log (``records_per_operator``
records); its loss is the mean negative log-likelihood of the log's records, so the per-example clipping bounds one
operator's total influence on a step, and batches are Poisson samples of *operators*
(:func:`twinjax.risk.dp_sgd.poisson_batch`, rate ``q = expected_batch / n_train_operators``). The accountant
(:func:`twinjax.risk.privacy.epsilon`, RDP of the sampled Gaussian mechanism) then gives ``(ε, δ)`` for adding or
removing one operator with all their records. The features are standardised by fixed, public constants (the pump's
datasheet operating range, :data:`PUBLIC_CENTER`, :data:`PUBLIC_SCALE`), not by statistics of the private data —
data-dependent standardisation would be a release the accountant does not cover.

**Twin.** A rational-quadratic spline :class:`~twinjax.generative.flows.CouplingFlow` (``kind="spline"``) over the
record features, by default the *log*-features ``(log x − log c) / (s / c)`` (:func:`encode`, again only public
constants): every feature is positive and the run time is log-normal, so the log makes the marginals nearly Gaussian
and keeps synthetic records positive (``features="linear"`` and ``kind="affine"`` give the original affine twin on
the standardised features). Trained by ``optax.chain(dp_sgd(C, σ, q N, key), optax.adam(schedule))`` — a linear
warm-up over 5 % of the steps, then cosine decay to 2 % of the peak ``lr`` — for ``steps`` steps. Settings: the
non-private reference (``σ = 0``, the same clipping; ``ε = ∞``) and, for each target in ``target_epsilons``, the
smallest noise multiplier whose accounted ``ε`` at ``delta`` is at most the target (bisection on the accountant).
Every setting is trained ``n_seeds`` times (initialisation, Poisson batches and noise from the seed; the data fixed),
all models in one ``lax.scan`` ``vmap``-ped over (setting, seed). The default batch is large (``q = 0.2``, 300
steps): at a fixed ``ε`` the calibrated ``σ`` grows more slowly than ``q``, so the noise on the mean gradient,
``σ C / (q N)``, falls (at ``ε = 1``: ``σ = 6.5``, ``q = 0.05``, 1000 steps, noise 0.13 per step; ``σ = 14.1``,
``q = 0.2``, 300 steps, noise 0.07). Synthetic data drawn from a trained twin is post-processing: it carries the same
``(ε, δ)``, recorded next to it.

**Utility, per setting** (mean and standard deviation over the seeds; each seed's value in ``per_seed``). Held-out
NLL per record (nats, in the public standardised units whatever the feature space: the log-Jacobian of the encoding
is added); MMD² and energy distance (:mod:`twinjax.generative.metrics`) of ``n_synthetic`` synthetic records against
held-out real records, in the standardised units, with the real-vs-real value (train against held-out records) as
the floor, and MMD² against the training records (``mmd_vs_train``: below ``mmd`` when the twin reproduces its
training operators rather than the population); and the downstream statistics — mean and 95th percentile of daily
energy — from the synthetic records against the population value (a fresh draw of ``n_population`` operators), with
the error of the same statistics computed from the real training logs for scale.

**Membership inference.** A likelihood attack (Yeom et al. 2018) calibrated for difficulty (Watson et al. 2022):
the score of an operator is the mean log-likelihood of their log under the twin minus that under a reference twin
the attacker trained without noise on another fleet's logs (``n_train_operators`` fresh operators, the same
architecture and steps), which removes most of the operator-to-operator spread of typicality; AUC of members
(``n_test_operators`` training operators) against the held-out operators (``mia_auc``; the uncalibrated
loss-threshold attack's AUC is ``mia_auc_uncalibrated``). An ``(ε, δ)``-DP training run bounds every such test,
``TPR ≤ min(e^ε FPR + δ, 1 − e^{−ε}(1 − δ − FPR))`` (Kairouz, Oh, Viswanath 2015); reported: the AUC, its bound
(the area under that curve; ``e^ε / (1 + e^ε)`` at ``δ = 0``), and the largest excess of the empirical ROC over the
bound (with its binomial standard error: an excess of more than a few standard errors would contradict the
guarantee). Each seed's twin is attacked separately; the AUCs are averaged over the seeds and the largest excess is
the worst seed's.

References:
    M. Abadi et al., "Deep learning with differential privacy", CCS 2016.
    H. B. McMahan, D. Ramage, K. Talwar, L. Zhang, "Learning differentially private recurrent language models",
    ICLR 2018 (user-level DP: the unit is a user's data).
    S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha, "Privacy risk in machine learning: analyzing the connection to
    overfitting", CSF 2018.
    L. Watson, C. Guo, G. Cormode, A. Sablayrolles, "On the importance of difficulty calibration in membership
    inference attacks", ICLR 2022.
    P. Kairouz, S. Oh, P. Viswanath, "The composition theorem for differential privacy", ICML 2015.
"""

import dataclasses
import json
import math
import pathlib
import time
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import twinjax.generative as gen
from physics.pump import DCMotorPump
from twinjax.generative.flows import CouplingFlow
from twinjax.risk.dp_sgd import dp_sgd, max_batch_for, per_example_value_and_grads, poisson_batch
from twinjax.risk.privacy import epsilon
from twinjax.runs import write_json, write_metrics_csv

SUMMARY_KEYS = ("summary", "wall_time_s")

FEATURES = ("voltage_V", "run_time_h", "current_A", "flow_L_s")
PUBLIC_CENTER = np.array([10.5, 6.0, 1.9, 0.19])  # the datasheet's nominal operating point, not data statistics
PUBLIC_SCALE = np.array([1.5, 2.5, 0.6, 0.03])  # its operating range
PUBLIC_LOG_SCALE = PUBLIC_SCALE / PUBLIC_CENTER  # the relative operating range: the scale of the log-features
SENSOR_NOISE = 0.02
PUMP = DCMotorPump()


@dataclasses.dataclass(frozen=True)
class Config:
    n_train_operators: int = 1000
    n_test_operators: int = 500
    records_per_operator: int = 8
    n_population: int = 5000  # operators of the fresh draw giving the population statistics
    target_epsilons: tuple[float, ...] = (8.0, 3.0, 1.0, 0.5)
    delta: float = 1e-5
    conversion: Literal["improved", "classic"] = "improved"
    expected_batch: float = 200.0  # q N, operators per step
    l2_norm_clip: float = 1.0
    steps: int = 300
    lr: float = 5e-3  # peak of the warm-up + cosine schedule
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    features: Literal["log", "linear"] = "log"
    kind: Literal["spline", "affine"] = "spline"
    layers: int = 4
    hidden: int = 32
    bins: int = 8
    n_seeds: int = 3  # training runs per setting (init, batches, noise), vmapped
    n_synthetic: int = 2000
    seed: int = 0

    def __post_init__(self):
        for name in ("n_train_operators", "n_test_operators", "records_per_operator", "n_population", "steps",
                     "layers", "hidden", "bins", "n_synthetic"):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"`{name}` must be an int >= 2, got {v!r}.")
        if isinstance(self.n_seeds, bool) or not isinstance(self.n_seeds, int) or self.n_seeds < 1:
            raise ValueError(f"`n_seeds` must be an int >= 1, got {self.n_seeds!r}.")
        for name, allowed in (("lr_schedule", ("cosine", "constant")), ("features", ("log", "linear")),
                              ("kind", ("spline", "affine"))):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.n_test_operators > self.n_train_operators:
            raise ValueError(
                f"`n_test_operators` ({self.n_test_operators}) must be <= `n_train_operators` "
                f"({self.n_train_operators}): the attack compares as many members as non-members."
            )
        if not self.target_epsilons or any(not (math.isfinite(e) and e > 0) for e in self.target_epsilons):
            raise ValueError(f"`target_epsilons` must be finite numbers > 0, got {self.target_epsilons}.")
        if not 0.0 < self.delta < 1.0 / self.n_train_operators:
            raise ValueError(f"`delta` must lie in (0, 1/n_train_operators), got {self.delta}.")
        if not 0.0 < self.expected_batch < self.n_train_operators:
            raise ValueError(f"`expected_batch` must lie in (0, n_train_operators), got {self.expected_batch}.")
        if self.conversion not in ("improved", "classic"):
            raise ValueError(f"`conversion` must be 'improved' or 'classic', got {self.conversion!r}.")
        for name in ("l2_norm_clip", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")

    @classmethod
    def quick(cls) -> "Config":
        # the same sampling rate q = expected_batch / n_train_operators as the full run
        return cls(n_train_operators=150, n_test_operators=50, records_per_operator=4, n_population=200,
                   expected_batch=30.0, steps=40, n_synthetic=200, n_seeds=2)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------ data
@eqx.filter_jit
def make_logs(key: jax.Array, n_operators: int, n_records: int) -> jax.Array:
    """``(n_operators, n_records, 4)`` daily records ``(V, h, i, Q)`` in physical units (module docstring)."""
    k_v, k_h, k_l, k_dv, k_dh, k_n = jax.random.split(key, 6)
    v_op = jax.random.uniform(k_v, (n_operators, 1), minval=8.5, maxval=12.5)
    log_h_op = math.log(6.0) + 0.35 * jax.random.normal(k_h, (n_operators, 1))
    load = 2e-6 * jnp.exp(0.3 * jax.random.normal(k_l, (n_operators, 1)))
    volts = v_op + 0.4 * jax.random.normal(k_dv, (n_operators, n_records))
    hours = jnp.exp(log_h_op + 0.25 * jax.random.normal(k_dh, (n_operators, n_records)))

    omega, current = pump_steady_state(volts, load)
    noise = 1.0 + SENSOR_NOISE * jax.random.normal(k_n, (2, *volts.shape))
    flow_L_s = 1e3 * PUMP.flow_per_rad_m3 * omega
    return jnp.stack([volts, hours, current * noise[0], flow_L_s * noise[1]], axis=-1)


def pump_steady_state(volts, load_coeff):
    """``(ω, i)`` of :class:`~physics.pump.DCMotorPump` (default parameters, no Coulomb friction) at voltage
    ``volts`` and load ``load_coeff``, in closed form: the torque balance ``k (V − k ω)/R = k_load ω² + b ω`` is a
    quadratic in ``ω ≥ 0``, ``ω = 2 c / (β + √(β² + 4 k_load c))`` with ``β = b + k²/R``, ``c = k V / R``; then
    ``i = (V − k ω) / R``. Broadcasts."""
    k, r, b = PUMP.motor_constant_Nm_A, PUMP.resistance_ohm, PUMP.friction_coeff
    beta, c = b + k**2 / r, k * volts / r
    omega = 2 * c / (beta + jnp.sqrt(beta**2 + 4 * load_coeff * c))
    return omega, (volts - k * omega) / r


def standardise(x):
    """Records in physical units → the public standardised units ``(x − c) / s`` (where MMD² is measured)."""
    return (x - PUBLIC_CENTER) / PUBLIC_SCALE


def unstandardise(z):
    return z * PUBLIC_SCALE + PUBLIC_CENTER


def encode(x, features: str):
    """Records in physical units → the twin's feature space: ``"linear"``, :func:`standardise`; ``"log"``,
    ``(log x − log c) / (s / c)`` (the public constants again: ``s / c`` is the relative operating range, the
    first-order log-equivalent of ``s``). Every feature is positive, so the log is defined and synthetic records
    decoded from it are positive."""
    if features == "linear":
        return standardise(x)
    return (jnp.log(x) - np.log(PUBLIC_CENTER)) / PUBLIC_LOG_SCALE


def decode(u, features: str):
    """The inverse of :func:`encode`."""
    if features == "linear":
        return unstandardise(u)
    return jnp.exp(u * PUBLIC_LOG_SCALE + np.log(PUBLIC_CENTER))


def log_jacobian_to_standardised(x, features: str):
    """``Σ_j log |∂u_j / ∂z_j|`` at records ``x`` (physical units), ``u = encode(x)``, ``z = standardise(x)``: added
    to the twin's ``log p(u)`` it gives the density in the public standardised units, so held-out NLLs of the two
    feature spaces are comparable. ``"log"``: ``∂u/∂z = c / x``."""
    if features == "linear":
        return jnp.zeros(x.shape[:-1], x.dtype)
    return jnp.sum(jnp.log(PUBLIC_CENTER) - jnp.log(x), axis=-1)


def daily_energy_Wh(records) -> np.ndarray:
    """``E = V i h`` (Wh) of records ``(..., 4)`` in physical units."""
    records = np.asarray(records)
    return records[..., 0] * records[..., 2] * records[..., 1]


# ----------------------------------------------------------------------------------------------------- calibration
def calibrate_noise(target: float, sampling_rate: float, steps: int, delta: float, conversion: str,
                    rel_tol: float = 1e-3) -> float:  # fmt: skip
    """A noise multiplier ``σ`` with ``target (1 − rel_tol) ≤ epsilon(σ, q, steps, δ) ≤ target``: ``ε`` decreases
    in ``σ``; a bracket is found by doubling, then the Illinois variant of regula falsi on ``log ε`` against
    ``log σ`` narrows it, always returning the upper (private enough) end.

    Raises:
        ValueError: if no ``σ ≤ 1000`` reaches ``target``.
    """

    def f(log_s):
        return math.log(epsilon(math.exp(log_s), sampling_rate, steps, delta, conversion)) - math.log(target)

    lo, hi = math.log(0.3), math.log(1.0)
    f_lo, f_hi = f(lo), f(hi)
    if f_lo <= 0:
        raise ValueError(f"`target_epsilons`: ε = {target} is reached already with a noise multiplier 0.3.")
    while f_hi > 0:
        lo, f_lo, hi = hi, f_hi, hi + math.log(2.0)
        if hi > math.log(1000.0):
            raise ValueError(f"`target_epsilons`: ε = {target} is not reached with a noise multiplier <= 1000.")
        f_hi = f(hi)
    g_lo, g_hi, side = f_lo, f_hi, 0  # the values the interpolation uses (Illinois-halved); f_* are the true ones
    for _ in range(100):
        if f_hi >= math.log1p(-rel_tol):
            break
        mid = (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
        f_mid = f(mid)
        if f_mid > 0:
            lo, f_lo, g_lo = mid, f_mid, f_mid
            g_hi = g_hi / 2 if side == -1 else g_hi  # the same end kept twice: halve its value
            side = -1
        else:
            hi, f_hi, g_hi = mid, f_mid, f_mid
            g_lo = g_lo / 2 if side == 1 else g_lo
            side = 1
    return math.exp(hi)


# ------------------------------------------------------------------------------------------------------- training
def _flow(config: Config, key) -> CouplingFlow:
    return CouplingFlow(len(FEATURES), key, layers=config.layers, hidden=config.hidden, kind=config.kind,
                        bins=config.bins, bound=4.0)  # fmt: skip


def _learning_rate(config: Config):
    if config.lr_schedule == "constant":
        return config.lr
    # a short linear warm-up (Adam's first steps are noisy), then cosine decay to 2 % of the peak: the late, small
    # steps average the DP noise out instead of following it
    return optax.warmup_cosine_decay_schedule(
        0.0, config.lr, max(1, config.steps // 20), config.steps, 0.02 * config.lr
    )


def _train_all(config: Config, logs: jax.Array, which: jax.Array, sigmas: jax.Array, seeds: jax.Array,
               key: jax.Array):  # fmt: skip
    """DP-SGD of one flow per model ``m``: noise multiplier ``sigmas[m]`` on the logs ``logs[which[m]]``, training
    seed ``seeds[m]`` (initialisation, Poisson batches and noise); all models in one ``vmap``-ped ``lax.scan``.
    Returns the stacked parameters, the static part of the flow and the ``(models, steps)`` loss histories."""
    inits = [_flow(config, jax.random.fold_in(jax.random.fold_in(key, 0), int(s))) for s in range(int(max(seeds)) + 1)]
    static = eqx.partition(inits[0], eqx.is_inexact_array)[1]
    params_by_seed = jax.tree.map(lambda *p: jnp.stack(p), *[eqx.partition(f, eqx.is_inexact_array)[0] for f in inits])
    n = logs.shape[1]
    q = config.expected_batch / n
    max_batch = max_batch_for(n, q)
    k_batches, k_noise = jax.random.split(jax.random.fold_in(key, 1))

    def example_loss(params, log):  # one operator's whole log: the privacy unit
        return -jnp.mean(eqx.combine(params, static).log_prob(log))

    def train_one(sigma, data_index, seed):
        logs_m = logs[data_index]
        params0 = jax.tree.map(lambda p: p[seed], params_by_seed)
        batch_keys = jax.random.split(jax.random.fold_in(k_batches, seed), config.steps)
        noise_key = jax.random.fold_in(k_noise, seed)
        opt = optax.chain(dp_sgd(config.l2_norm_clip, sigma, config.expected_batch, noise_key),
                          optax.adam(_learning_rate(config)))  # fmt: skip

        def step(carry, k):
            params, state = carry
            idx, mask = poisson_batch(k, n, q, max_batch)
            batch = logs_m[idx]
            losses, grads = per_example_value_and_grads(example_loss, params, batch, mask)
            updates, state = opt.update(grads, state, params, mask=mask)
            loss = jnp.sum(losses) / jnp.maximum(jnp.sum(mask), 1)  # padding rows have loss 0
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(step, (params0, opt.init(params0)), batch_keys)
        return params, losses

    params, losses = eqx.filter_jit(jax.vmap(train_one))(sigmas, which, seeds)
    return params, static, losses


# ------------------------------------------------------------------------------------------------------ attack
def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC (Mann–Whitney, ties counted ½) of scores ``members`` above ``nonmembers``, and the empirical ROC
    ``(fpr, tpr)`` over all thresholds "score ≥ t"."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    greater = (members[:, None] > nonmembers[None, :]).mean()
    ties = (members[:, None] == nonmembers[None, :]).mean()
    thresholds = np.concatenate([[np.inf], np.sort(np.concatenate([members, nonmembers]))[::-1]])
    tpr = (members[None, :] >= thresholds[:, None]).mean(1)
    fpr = (nonmembers[None, :] >= thresholds[:, None]).mean(1)
    return float(greater + 0.5 * ties), fpr, tpr


def dp_tpr_bound(fpr, eps: float, delta: float) -> np.ndarray:
    """The largest TPR at false-positive rate ``fpr`` of any membership test against an ``(ε, δ)``-DP mechanism:
    ``min(1, e^ε FPR + δ, 1 − e^{−ε} (1 − δ − FPR))`` (Kairouz, Oh, Viswanath 2015). ``ε = ∞``: 1."""
    fpr = np.asarray(fpr, float)
    if not math.isfinite(eps):
        return np.ones_like(fpr)
    return np.minimum.reduce(
        [np.ones_like(fpr), np.exp(eps) * fpr + delta, 1.0 - np.exp(-eps) * np.maximum(1.0 - delta - fpr, 0.0)]
    )


def dp_auc_bound(eps: float, delta: float, grid: int = 100_001) -> float:
    """Area under :func:`dp_tpr_bound` (trapezoidal rule on a uniform FPR grid)."""
    fpr = np.linspace(0.0, 1.0, grid)
    return float(np.trapezoid(dp_tpr_bound(fpr, eps, delta), fpr))


# ------------------------------------------------------------------------------------------------------ evaluate
@eqx.filter_jit
def _per_operator_loglik(model, logs, jacobian):
    """Mean log-likelihood per record of each operator's log ``logs`` ``(n, r, 4)`` (twin features), in the public
    standardised units (``jacobian``: :func:`log_jacobian_to_standardised` of each record, ``(n, r)``)."""
    n, r, d = logs.shape
    return jnp.mean(model.log_prob(logs.reshape(n * r, d)).reshape(n, r) + jacobian, axis=1)


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else 0.0


def evaluate(config: Config, key: jax.Array) -> dict:
    """Make the logs, calibrate the noise, train every setting ``n_seeds`` times, and measure utility and membership
    leakage.

    Pure (no I/O) but host-side: the calibration runs the accountant in Python. ``settings[k]`` is the mean over the
    seeds of metric ``k``, ``settings[k + "_sd"]`` its standard deviation, ``per_seed[k]`` the values. Returns the
    results dict, plus the synthetic records (physical units) of each setting's first seed under ``"_synthetic"``
    (stripped before writing).
    """
    t0 = time.perf_counter()
    k_train, k_fit, k_syn, k_mia = jax.random.split(key, 4)
    r, n, n_test = config.records_per_operator, config.n_train_operators, config.n_test_operators
    # one draw of independent operators (one compilation of the pump's steady state), split into the private
    # training fleet, the held-out fleet, the attacker's shadow fleet and the population for the true statistics
    logs = make_logs(k_train, 2 * n + n_test + config.n_population, r)
    train_logs, test_logs, shadow_logs = logs[:n], logs[n : n + n_test], logs[n + n_test : 2 * n + n_test]
    population = np.asarray(logs[2 * n + n_test :]).reshape(-1, len(FEATURES))

    q = config.expected_batch / n
    sigmas = [0.0] + [
        calibrate_noise(e, q, config.steps, config.delta, config.conversion) for e in config.target_epsilons
    ]
    eps = [math.inf] + [epsilon(s, q, config.steps, config.delta, config.conversion) for s in sigmas[1:]]
    t_cal = time.perf_counter() - t0

    feats = config.features
    u_train, u_test, u_shadow = (encode(x, feats) for x in (train_logs, test_logs, shadow_logs))
    jac_train, jac_test = (log_jacobian_to_standardised(x, feats) for x in (train_logs, test_logs))
    z_train, z_test = standardise(train_logs), standardise(test_logs)
    # models: every setting × every seed, then the attacker's reference twin, trained without noise on another
    # fleet's logs (public shadow data)
    n_seeds = config.n_seeds
    model_setting = [s for s in range(len(sigmas)) for _ in range(n_seeds)]
    model_seed = [j for _ in sigmas for j in range(n_seeds)]
    params, static, losses = _train_all(
        config, jnp.stack([u_train, u_shadow]), jnp.asarray([0] * len(model_setting) + [1]),
        jnp.asarray([sigmas[s] for s in model_setting] + [0.0]), jnp.asarray(model_seed + [n_seeds]), k_fit,
    )  # fmt: skip
    shadow = eqx.combine(jax.tree.map(lambda p: p[-1], params), static)
    ref_test = np.asarray(_per_operator_loglik(shadow, u_test, jac_test))
    jax.block_until_ready(losses)
    t_train = time.perf_counter() - t0 - t_cal

    test_flat = z_test.reshape(-1, len(FEATURES))
    train_flat = z_train.reshape(-1, len(FEATURES))
    k_ref = jax.random.split(k_syn)[1]
    ref_idx = jax.random.choice(k_ref, train_flat.shape[0], (min(config.n_synthetic, train_flat.shape[0]),), False)
    test_idx = jax.random.choice(k_ref, test_flat.shape[0], (min(config.n_synthetic, test_flat.shape[0]),), False)
    test_sub = test_flat[test_idx]
    # one kernel for every setting: the median heuristic on held-out records (generative.metrics' factors), fixed
    # here since gen.mmd's default takes the median over all pooled pairs (a sort of 3 n² distances per call)
    d = gen.metrics.pairwise_distances(test_sub[:500], test_sub[:500])
    bandwidths = jnp.median(d[jnp.triu_indices(d.shape[0], 1)]) * jnp.asarray(gen.metrics.BANDWIDTH_FACTORS)
    mmd = jax.jit(gen.mmd)
    members = jax.random.choice(k_mia, n, (config.n_test_operators,), replace=False)
    ref_members = np.asarray(_per_operator_loglik(shadow, u_train[members], jac_train[members]))

    pop_energy = daily_energy_Wh(population)
    truth = {"energy_mean_Wh": float(pop_energy.mean()), "energy_p95_Wh": float(np.quantile(pop_energy, 0.95))}
    real_energy = daily_energy_Wh(train_logs)

    def stats(energy):
        mean, p95 = float(np.mean(energy)), float(np.quantile(energy, 0.95))
        return {"energy_mean_Wh": mean, "energy_p95_Wh": p95,
                "energy_mean_rel_error": abs(mean / truth["energy_mean_Wh"] - 1),
                "energy_p95_rel_error": abs(p95 / truth["energy_p95_Wh"] - 1)}  # fmt: skip

    per_model, synthetic = [], []
    for m, (s, j) in enumerate(zip(model_setting, model_seed)):
        model = eqx.combine(jax.tree.map(lambda p: p[m], params), static)
        syn_u = model.sample(jax.random.fold_in(k_syn, m), config.n_synthetic)
        syn = np.asarray(decode(syn_u, feats))
        finite = np.all(np.isfinite(syn), axis=1)
        syn_z = standardise(syn[finite])
        if j == 0:
            synthetic.append(syn)
        ll_test = np.asarray(_per_operator_loglik(model, u_test, jac_test))
        ll_members = np.asarray(_per_operator_loglik(model, u_train[members], jac_train[members]))
        # difficulty-calibrated score (Watson et al. 2022): the twin's log-likelihood minus the reference twin's
        auc, fpr, tpr = roc_auc(ll_members - ref_members, ll_test - ref_test)
        auc_loss = roc_auc(ll_members, ll_test)[0]
        mm, k = len(ll_members), len(ll_test)
        q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
        auc_se = math.sqrt((auc * (1 - auc) + (mm - 1) * (q1 - auc**2) + (k - 1) * (q2 - auc**2)) / (mm * k))
        excess = tpr - dp_tpr_bound(fpr, eps[s], config.delta)
        worst = int(np.argmax(excess))
        per_model.append({
            "heldout_nll": float(-np.mean(ll_test)),
            "train_nll": float(-np.mean(ll_members)),
            "mmd": float(mmd(jnp.asarray(syn_z), test_sub, bandwidths)),
            # against the training records instead: below `mmd` when the twin reproduces its training operators
            "mmd_vs_train": float(mmd(jnp.asarray(syn_z), train_flat[ref_idx], bandwidths)),
            "energy_distance": float(gen.energy_distance(jnp.asarray(syn_z), test_sub)),
            "synthetic_finite_fraction": float(finite.mean()),
            **stats(daily_energy_Wh(syn[finite])),
            "mia_auc": auc, "mia_auc_se": auc_se, "mia_auc_uncalibrated": auc_loss,
            "mia_max_roc_excess_over_dp_bound": float(excess[worst]),
            "mia_roc_excess_se": float(math.sqrt(max(tpr[worst] * (1 - tpr[worst]), 1.0 / mm) / mm)),
        })  # fmt: skip

    metric_keys = list(per_model[0])
    per_seed = {k: [[per_model[m][k] for m in range(len(per_model)) if model_setting[m] == s] for s in
                    range(len(sigmas))] for k in metric_keys}  # fmt: skip
    rows = []
    for s, (sigma, e) in enumerate(zip(sigmas, eps)):
        row = {
            "setting": "non-private" if sigma == 0 else f"eps_{config.target_epsilons[s - 1]:g}",
            "target_epsilon": math.inf if sigma == 0 else config.target_epsilons[s - 1],
            "epsilon": e, "delta": config.delta, "noise_multiplier": sigma, "sampling_rate": q, "steps": config.steps,
            "conversion": config.conversion, "l2_norm_clip": config.l2_norm_clip, "n_seeds": n_seeds,
            "mia_auc_dp_bound": dp_auc_bound(e, config.delta),
        }  # fmt: skip
        for k in metric_keys:
            if k in ("mia_max_roc_excess_over_dp_bound", "mia_roc_excess_se"):
                continue
            row[k], row[k + "_sd"] = _mean_sd(per_seed[k][s])
        worst = int(np.argmax(per_seed["mia_max_roc_excess_over_dp_bound"][s]))  # the worst seed
        row["mia_max_roc_excess_over_dp_bound"] = per_seed["mia_max_roc_excess_over_dp_bound"][s][worst]
        row["mia_roc_excess_se"] = per_seed["mia_roc_excess_se"][s][worst]
        rows.append(row)

    settings = {k: [row[k] for row in rows] for k in rows[0]}
    summary = {f"{row['setting']}.{k}": row[k] for row in rows
               for k in ("epsilon", "heldout_nll", "mmd", "energy_mean_rel_error", "mia_auc")}  # fmt: skip
    history = np.asarray(losses[:-1]).reshape(len(sigmas), n_seeds, -1).mean(axis=1)
    return {
        "settings": settings,
        "per_seed": per_seed,
        "summary": summary,
        "privacy_unit": f"one operator's whole log ({r} daily records), add/remove; Poisson sampling of operators",
        "truth": truth,
        "reference": {
            "real_train": stats(real_energy),
            "mmd_real_vs_real": float(mmd(train_flat[ref_idx], test_sub, bandwidths)),
            "energy_distance_real_vs_real": float(gen.energy_distance(train_flat[ref_idx], test_sub)),
            "shadow_heldout_nll": float(-np.mean(ref_test)),
        },
        "max_batch": max_batch_for(n, q),
        "loss_history": history,
        "timing_s": {"data_and_calibration": t_cal, "training": t_train,
                     "evaluation": time.perf_counter() - t0 - t_cal - t_train},
        "_synthetic": synthetic,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _utility_figure(results: dict, path: pathlib.Path) -> None:
    """Utility and membership leakage against ε (log axis): mean ± 1 sd over the training seeds (each seed a dot),
    the non-private model as a dashed line with a band of ± 1 sd."""
    plt = _pyplot()
    st, per_seed = results["settings"], results["per_seed"]
    eps = np.asarray(st["epsilon"][1:], float)
    ref = results["reference"]
    panels = [
        ("heldout_nll", "held-out NLL per record (nats, standardised)", None),
        ("mmd", "MMD² synthetic vs held-out", ref["mmd_real_vs_real"]),
        ("energy_mean_rel_error", "rel. error of mean daily energy", ref["real_train"]["energy_mean_rel_error"]),
        ("energy_p95_rel_error", "rel. error of p95 daily energy", ref["real_train"]["energy_p95_rel_error"]),
        ("mia_auc", "membership-inference AUC", None),
        ("mmd_vs_train", "MMD² synthetic vs training records", None),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, label, ref) in zip(axes.ravel(), panels):
        vals, sds = np.asarray(st[key], float), np.asarray(st[key + "_sd"], float)
        ax.errorbar(eps, vals[1:], yerr=sds[1:], fmt="o-", color="C0", capsize=3, label="DP-SGD, mean ± sd")
        for e, seeds in zip(eps, per_seed[key][1:]):
            ax.plot([e] * len(seeds), seeds, ".", color="C0", alpha=0.35, ms=4)
        ax.axhline(vals[0], color="C3", ls="--", label="non-private (σ = 0)")
        ax.axhspan(vals[0] - sds[0], vals[0] + sds[0], color="C3", alpha=0.12, lw=0)
        if ref is not None:
            ax.axhline(ref, color="k", ls=":", label="real training data")
        if key == "mia_auc":
            grid = np.geomspace(eps.min() * 0.8, eps.max() * 1.2, 60)
            bound = [dp_auc_bound(e, st["delta"][0], 2001) for e in grid]
            ax.plot(grid, bound, color="0.5", lw=1, label="(ε, δ)-DP bound on AUC")
            ax.axhline(0.5, color="k", lw=0.5)
            ax.set_ylim(0.45, min(1.0, max(bound) + 0.02))
        ax.set_xscale("log")
        ax.set_xticks(eps, [f"{e:.2g}" for e in eps])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel(f"ε (δ = {st['delta'][0]:g}, unit: one operator's log)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"DP-SGD generative twin of pump operators' logs: utility against ε ({st['n_seeds'][0]} seeds each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _samples_figure(results: dict, synthetic: list, test_logs: np.ndarray, path: pathlib.Path) -> None:
    plt = _pyplot()
    names = results["settings"]["setting"]
    picks = [0, len(names) - 1]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    real = test_logs.reshape(-1, len(FEATURES))[: len(synthetic[0])]
    for ax, (title, data) in zip(axes, [("real (fresh draw)", real)] + [(names[i], synthetic[i]) for i in picks]):
        ax.scatter(data[:, 0], data[:, 2], s=3, alpha=0.4)
        ax.set_title(title)
        ax.set_xlabel("voltage (V)")
    axes[0].set_ylabel("current (A)")
    axes[0].set_xlim(6, 15)
    axes[0].set_ylim(0, 4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    """Evaluate, then write ``results.json``, ``metrics.csv`` (training loss per setting), the synthetic data of each
    setting (``synthetic/<setting>.npz`` with its ``(ε, δ)`` in ``synthetic/<setting>.json``) and the figures."""
    t0 = time.perf_counter()
    run_dir = pathlib.Path(run_dir)
    results = evaluate(config, jax.random.key(config.seed))
    synthetic = results.pop("_synthetic")
    history = results.pop("loss_history")
    syn_dir = run_dir / "synthetic"
    syn_dir.mkdir(parents=True, exist_ok=True)
    files = []
    st = results["settings"]
    for s, name in enumerate(st["setting"]):
        np.savez(syn_dir / f"{name}.npz", records=synthetic[s], features=np.array(FEATURES))
        meta = {k: st[k][s] for k in ("epsilon", "delta", "noise_multiplier", "sampling_rate", "steps", "conversion",
                                      "l2_norm_clip")}  # fmt: skip
        meta["epsilon"] = None if not math.isfinite(meta["epsilon"]) else meta["epsilon"]
        meta.update(privacy_unit=results["privacy_unit"], features=list(FEATURES), n_records=len(synthetic[s]),
                    note="sampled from the DP-trained twin: post-processing, the same (ε, δ)")  # fmt: skip
        (syn_dir / f"{name}.json").write_text(json.dumps(meta, indent=2))
        files.append(f"synthetic/{name}.npz")
    results["synthetic_files"] = files
    columns = {"setting": np.repeat(np.array(st["setting"]), history.shape[1]),
               "step": np.tile(np.arange(history.shape[1]), history.shape[0]), "loss": history.ravel()}  # fmt: skip
    write_metrics_csv(run_dir / "metrics.csv", columns)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _utility_figure(results, fig_dir / "utility_vs_epsilon.png")
    fresh = np.asarray(make_logs(jax.random.fold_in(jax.random.key(config.seed), 7), 100, config.records_per_operator))
    _samples_figure(results, synthetic, fresh, fig_dir / "samples.png")
    results["wall_time_s"] = time.perf_counter() - t0
    write_json(run_dir / "results.json", results)
    return results
