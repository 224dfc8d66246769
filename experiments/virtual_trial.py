"""Virtual trial: a flow over PK/PD patient parameters, a virtual cohort, and a transported, positivity-audited effect.

**Populations.** Covariates are weight ``WT`` (kg), age (years) and creatinine clearance ``CrCL`` (mL/min, by
Cockcroft–Gault from a serum creatinine ``SCr``: ``CrCL = (140 − age) WT / (72 SCr)``). All laws have exact densities
(:func:`source_log_density`, :func:`target_log_density`):

- *Source* (the trial that was run): age ``N(55, 14²)`` truncated to [18, 95], ``log WT ~ N(log 78, 0.18²)``,
  ``log SCr ~ N(log 0.95, 0.3²)``, and the exclusion criterion ``CrCL ≥ 30`` (no severe renal impairment) —
  younger patients with mostly normal renal function.
- *Target* (where the drug will be used): age ``N(72, 8²)`` truncated to [40, 95], ``log WT ~ N(log 72, 0.2²)``,
  ``log SCr ~ N(log 1.4, 0.35²)``, no exclusion — older, with moderate and severe renal impairment.

The target's spreads are below twice the source's variances in every coordinate (``2/σ_t² > 1/σ_s²``), so the exact
ratio ``p_t/p_s`` has a finite second moment under the source: importance weighting has a finite variance.

**Patients.** The true generative model is :func:`physics.pharmacology.covariate_model` plus log-normal
between-subject variability (:func:`physics.pharmacology.sample_log_parameters`) over the six log-parameters
``(k_a, CL, V_1, Q, V_2, EC_50)`` of :class:`physics.pharmacology.TwoCompartmentPKPD`.

**Method.** (1) A least-squares quadratic model of the log-parameters on the (standardised) covariates ``[log WT, age,
log CrCL]``, and a conditional affine :class:`~twinjax.generative.CouplingFlow` on its residuals, learn
``p(log θ | covariates)`` from the source cohort (:func:`twinjax.generative.train`); its fidelity is checked on
held-out source patients (marginal means and standard deviations, MMD two-sample test against the held-out
parameters). (2) A *virtual cohort*: ``virtual_per_patient`` virtual patients at each source patient's covariates,
parameters drawn from the flow (standard errors are cluster-robust by source patient: the copies share one patient's
covariates). (3) A simulated randomised trial: 1:1 to ``dose_mg`` once daily for ``n_doses`` days or placebo;
endpoint: the effect (% inhibition, plus measurement noise) at trough after the last dose. (4) The effect in the
*target*: (a) naive — the virtual trial's difference of arm means; (b) transported — reweighted by ``w = p_t / p_s``
of the covariates, either *exact* (the known densities) or from a *classifier* (logistic regression on ``[log WT,
age, log SCr]``, their squares and products — well specified for these laws — fitted on the source cohort against the
target covariates in strata that hold source patients, :func:`twinjax.causal.trials.transport_weights`), with
positivity checked per stratum of renal function × age on the *real* source patients
(:func:`~twinjax.causal.trials.positivity_check`, classifier weights): strata with fewer than ``min_count`` patients or
an ESS below ``min_ess`` are unsupported, the all-target estimate is refused, and the estimate is restricted to the
supported part of the target; (c) for comparison the same estimates from the real source trial, and the flow
*extrapolated* to the target covariates (a model-based estimate that reaches into unsupported strata on trust alone).
Standard errors: the delta method (cluster-robust), and a bootstrap of ``bootstrap`` replicates over source patients
and target covariates that refits the classifier each time (the flow is *not* refitted: no SE includes the flow's
error). The truth is the true generative model simulated on a large target sample. (5)
:func:`~twinjax.causal.trials.subgroup_audit` lists every stratum: counts, ESS, transported effect with its 95 %
intervals, the truth, and whether it is supported.
"""

import dataclasses
import functools
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import twinjax.generative as gen
from physics.pharmacology import EFFECT, PARAMETER_NAMES, pkpd_from_log_parameters, sample_log_parameters
from twinjax.causal.trials import (
    positivity_check,
    strata_from_bins,
    subgroup_audit,
    transport_weights,
    transported_effect,
)
from twinjax.risk.shift import fit_classifier, mmd_test
from twinjax.runs import write_json, write_metrics_csv

SUMMARY_KEYS = ("effects", "errors_in_se", "positivity.unsupported_fraction", "flow.mmd_p_value", "wall_time_s")

CRCL_EDGES = (30.0, 60.0)  # severe < 30 ≤ moderate < 60 ≤ mild / normal (mL/min)
AGE_EDGES = (65.0, 75.0)
RENAL_NAMES = ("CrCL<30", "CrCL 30-60", "CrCL>=60")
AGE_NAMES = ("age<65", "age 65-75", "age>=75")
STRATUM_NAMES = tuple(f"{r}, {a}" for r in RENAL_NAMES for a in AGE_NAMES)


@dataclasses.dataclass(frozen=True)
class Config:
    n_source: int = 2000  # patients in the source trial (flow training set)
    n_holdout: int = 1000  # held-out source patients for the flow's fidelity check
    n_target_covariates: int = 2000  # target covariate sample used to fit the density ratio
    n_target_truth: int = 40_000  # target patients simulated with the true model (the truth)
    virtual_per_patient: int = 10  # virtual patients drawn at each source patient's covariates
    flow_layers: int = 6
    flow_hidden: int = 16  # 64 wide conditioners overfit the sparse low-CrCL region (held-out sd ratios up to 60)
    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    dose_mg: float = 100.0
    interval_h: float = 24.0
    n_doses: int = 7
    noise_sd: float = 5.0  # endpoint measurement noise (% inhibition)
    classifier_steps: int = 3000  # full-batch Adam steps of the ratio classifier (1000 leave it unconverged)
    bootstrap: int = 200  # bootstrap replicates (source patients resampled, the classifier refitted)
    min_count: int = 20
    min_ess: float = 10.0
    permutations: int = 200
    seed: int = 0

    def __post_init__(self):
        for name in ("n_source", "n_holdout", "n_target_covariates", "n_target_truth", "steps"):
            if getattr(self, name) < 50:
                raise ValueError(f"`{name}` must be >= 50, got {getattr(self, name)}.")
        for name in (
            "flow_layers",
            "flow_hidden",
            "batch_size",
            "n_doses",
            "classifier_steps",
            "min_count",
            "virtual_per_patient",
            "bootstrap",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("lr", "dose_mg", "interval_h", "noise_sd"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.min_ess < 1:
            raise ValueError(f"`min_ess` must be >= 1, got {self.min_ess}.")
        if self.bootstrap < 2:
            raise ValueError(f"`bootstrap` must be >= 2, got {self.bootstrap}.")
        if self.permutations < 10:
            raise ValueError(f"`permutations` must be >= 10, got {self.permutations}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            n_source=500,
            n_holdout=200,
            n_target_covariates=500,
            n_target_truth=2000,
            steps=200,
            classifier_steps=200,
            permutations=20,
            bootstrap=20,
        )


# ---------------------------------------------------------------------------------------------------- populations

#: ``(age mean, age sd, age low, age high, WT median, log WT sd, SCr median, log SCr sd, CrCL minimum)``
SOURCE = (55.0, 14.0, 18.0, 95.0, 78.0, 0.18, 0.95, 0.3, 30.0)
TARGET = (72.0, 8.0, 40.0, 95.0, 72.0, 0.2, 1.4, 0.35, None)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _truncated_normal(key, n, mean, sd, low, high):
    """``N(mean, sd²)`` truncated to ``[low, high]`` by the inverse CDF."""
    a, b = (jax.scipy.special.ndtr((v - mean) / sd) for v in (low, high))
    u = jax.random.uniform(key, (n,), minval=a, maxval=b)
    return jnp.clip(mean + sd * jax.scipy.special.ndtri(u), low, high)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(key, n, pop):
    age_mean, age_sd, age_lo, age_hi, wt_median, wt_sd, scr_median, scr_sd, _ = pop
    k_age, k_wt, k_scr = jax.random.split(key, 3)
    age = _truncated_normal(k_age, n, age_mean, age_sd, age_lo, age_hi)
    wt = wt_median * jnp.exp(wt_sd * jax.random.normal(k_wt, (n,)))
    scr = scr_median * jnp.exp(scr_sd * jax.random.normal(k_scr, (n,)))
    crcl = (140.0 - age) * wt / (72.0 * scr)
    return jnp.stack([wt, age, crcl], axis=1)


@functools.partial(jax.jit, static_argnums=1)
def source_covariates(key: jax.Array, n: int) -> jax.Array:
    """``(n, 3)`` source covariates ``[WT_kg, age_yr, CrCL_mL_min]`` meeting the exclusion criterion ``CrCL ≥ 30``."""
    x = _draw(key, 4 * n, SOURCE)
    eligible = x[:, 2] >= SOURCE[-1]
    idx = jnp.nonzero(eligible, size=n)[0]  # rejection: the first n eligible candidates (P(eligible) ≈ 0.99)
    return x[idx]


def target_covariates(key: jax.Array, n: int) -> jax.Array:
    """``(n, 3)`` target covariates ``[WT_kg, age_yr, CrCL_mL_min]``."""
    return _draw(key, n, TARGET)


@functools.partial(jax.jit, static_argnums=1)
def _log_density(x, pop):
    """Log-density of ``(log WT, age, log SCr)`` (a bijection of ``x = [WT, age, CrCL]`` whose Jacobian is the same
    for both populations, so differences of these are exact log density ratios), up to the source's constant
    ``−log P(CrCL ≥ 30)``, which self-normalised weights do not need."""
    age_mean, age_sd, age_lo, age_hi, wt_median, wt_sd, scr_median, scr_sd, crcl_min = pop
    norm = jax.scipy.stats.norm
    x = jnp.asarray(x)
    wt, age, crcl = x[:, 0], x[:, 1], x[:, 2]
    log_scr = jnp.log((140.0 - age) * wt / (72.0 * crcl))
    mass = jax.scipy.special.ndtr((age_hi - age_mean) / age_sd) - jax.scipy.special.ndtr((age_lo - age_mean) / age_sd)
    lp = (
        norm.logpdf(age, age_mean, age_sd)
        - jnp.log(mass)
        + norm.logpdf(jnp.log(wt), math.log(wt_median), wt_sd)
        + norm.logpdf(log_scr, math.log(scr_median), scr_sd)
    )
    inside = (age >= age_lo) & (age <= age_hi)
    if crcl_min is not None:
        inside = inside & (crcl >= crcl_min)
    return jnp.where(inside, lp, -jnp.inf)


def source_log_density(x: jax.Array) -> jax.Array:
    """Exact source log-density (:func:`_log_density`) at covariates ``x`` ``(n, 3)``; ``−∞`` outside the support."""
    return _log_density(x, SOURCE)


def target_log_density(x: jax.Array) -> jax.Array:
    """Exact target log-density (:func:`_log_density`) at covariates ``x`` ``(n, 3)``."""
    return _log_density(x, TARGET)


@jax.jit
def _features(x):
    """Covariates as flow conditioning features: ``[log WT, age, log CrCL]``."""
    return jnp.stack([jnp.log(x[:, 0]), x[:, 1], jnp.log(x[:, 2])], axis=1)


@jax.jit
def _ratio_features(x):
    """Features of the density-ratio classifier: ``[log WT, age/10, log SCr]`` with ``SCr = (140 − age) WT / (72 CrCL)``
    (Cockcroft–Gault inverted: the measured creatinine) and all their squares and products. Logistic regression on
    them can represent the log-ratio of two (truncated) Gaussians in these coordinates, a quadratic, exactly."""
    age = x[:, 1]
    log_scr = jnp.log((140.0 - age) * x[:, 0] / (72.0 * x[:, 2]))
    f = jnp.stack([jnp.log(x[:, 0]), 0.1 * age, log_scr], axis=1)
    i, j = np.triu_indices(3)
    return jnp.concatenate([f, f[:, i] * f[:, j]], axis=1)


@jax.jit
def _true_log_params(key, x):
    return sample_log_parameters(key, x[:, 0], x[:, 1], x[:, 2])


def _strata(x):
    labels, n = strata_from_bins(np.asarray(x[:, [2, 1]]), [CRCL_EDGES, AGE_EDGES])
    return np.asarray(labels), n


# ------------------------------------------------------------------------------------------------------- the trial


def _endpoint(config):
    steps = 4

    def one(log_params):
        model = pkpd_from_log_parameters(log_params)
        _, xs = model.regimen(config.dose_mg, config.interval_h, config.n_doses, steps)
        return model.effect(xs[-1, EFFECT]) - model.e0  # drug effect at trough after the last dose

    return jax.jit(jax.vmap(one))


def _trial(key, drug_effect, noise_sd):
    """Randomise 1:1; the measured endpoint is baseline 0 + (drug effect if treated) + noise."""
    k_t, k_e = jax.random.split(key)
    n = drug_effect.shape[0]
    treated = jax.random.permutation(k_t, jnp.arange(n) < n // 2)
    y = jnp.where(treated, drug_effect, 0.0) + noise_sd * jax.random.normal(k_e, (n,))
    return np.asarray(y), np.asarray(treated)


def _effect_dict(res):
    return {
        "estimate": res.estimate,
        "standard_error": res.standard_error,
        "ess": res.ess,
        "coverage": res.coverage,
        "excluded": [STRATUM_NAMES[g] for g in res.excluded],
    }


def _bootstrap_classifier(key, f_src, f_tgt, replicates, steps):
    """``replicates`` refits of the density-ratio classifier on source and target resampled with replacement (one
    ``vmap``): its logits at every original source point ``(B, n)`` and the source resampling counts ``(B, n)``."""
    f_src, f_tgt = jnp.asarray(f_src), jnp.asarray(f_tgt)
    n, m = f_src.shape[0], f_tgt.shape[0]
    k_i, k_j, k_fit = jax.random.split(key, 3)
    idx = jax.random.randint(k_i, (replicates, n), 0, n)
    jdx = jax.random.randint(k_j, (replicates, m), 0, m)

    @jax.jit
    @jax.vmap
    def one(k, i, j):
        return fit_classifier(k, f_src[i], f_tgt[j], steps=steps).logit(f_src)

    counts = jax.vmap(lambda i: jnp.bincount(i, length=n))(idx)
    return np.asarray(one(jax.random.split(k_fit, replicates), idx, jdx)), np.asarray(counts, float)


def _log_weight_error_sd(log_w, log_w_exact, keep):
    """sd of ``log ŵ − log w`` over the source patients in supported strata with a positive exact weight (the
    constant offset between the two does not matter to self-normalised weights)."""
    d = np.asarray(log_w) - np.asarray(log_w_exact)
    keep = keep & np.isfinite(d)
    return float(np.std(d[keep]))


def _column_sd(a):
    """Standard deviation of each column over its finite entries (NaN with fewer than two)."""
    ok = np.isfinite(a)
    return np.array([np.std(col[m], ddof=1) if m.sum() >= 2 else np.nan for col, m in zip(a.T, ok.T)])


def _weighted_effects(y, t, weights, masks):
    """Self-normalised weighted differences of arm means for a batch of weight vectors ``(B, n)`` inside each mask
    ``(K, n)``: ``(B, K)`` (NaN where an arm carries no weight). One replicate with weights ``w_i × count_i`` is
    :func:`~twinjax.causal.trials.transported_effect` on the resampled patients."""
    out = np.empty((weights.shape[0], masks.shape[0]))
    for k, m in enumerate(masks):
        wm = weights * m
        s1, s0 = wm @ t.astype(float), wm @ (~t).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = (wm @ (y * t)) / s1 - (wm @ (y * ~t)) / s0
    return out


def evaluate(config: Config, key: jax.Array) -> dict:
    keys = jax.random.split(key, 13)
    t0 = time.perf_counter()
    # --- populations and the true patients
    src_x = source_covariates(keys[0], config.n_source + config.n_holdout)
    src_theta = _true_log_params(keys[1], src_x)
    train_x, hold_x = src_x[: config.n_source], src_x[config.n_source :]
    train_theta, hold_theta = src_theta[: config.n_source], src_theta[config.n_source :]
    tgt_x = target_covariates(keys[2], config.n_target_covariates)
    truth_x = target_covariates(keys[3], config.n_target_truth)
    truth_theta = _true_log_params(keys[4], truth_x)

    # --- (1) the conditional flow over standardised log-parameters given standardised covariates
    f_mean, f_sd = _features(train_x).mean(0), _features(train_x).std(0)

    @jax.jit
    def cond(x):
        return (_features(x) - f_mean) / f_sd

    # a quadratic covariate model of the log-parameters (least squares; CL's renal fraction is curved in log CrCL),
    # the flow learns the law of its residuals
    @jax.jit
    def design(x):
        c = cond(x)
        i, j = np.triu_indices(3)
        return jnp.concatenate([jnp.ones((x.shape[0], 1)), c, c[:, i] * c[:, j]], axis=1)

    beta = jnp.linalg.lstsq(design(train_x), train_theta)[0]
    p_sd = (train_theta - design(train_x) @ beta).std(0)

    flow = gen.CouplingFlow(
        len(PARAMETER_NAMES),
        keys[5],
        layers=config.flow_layers,
        hidden=config.flow_hidden,
        cond_dim=3,
    )
    fit = gen.train(
        flow,
        (train_theta - design(train_x) @ beta) / p_sd,
        cond=cond(train_x),
        optimizer=optax.adam(config.lr),
        steps=config.steps,
        key=keys[6],
        batch_size=config.batch_size,
        log_every=max(config.steps // 10, 1),
        progress=False,
    )
    flow = fit.model

    @jax.jit
    def sample_theta(k, x):
        return design(x) @ beta + p_sd * flow.sample(k, x.shape[0], cond(x))

    # fidelity on held-out source patients: flow draws at their covariates vs their true parameters
    flow_hold = sample_theta(keys[7], hold_x)
    fresh_hold = _true_log_params(keys[8], hold_x)  # a second true draw: the noise floor of the comparison
    n_h = config.n_holdout
    mean_z = (flow_hold.mean(0) - hold_theta.mean(0)) / jnp.sqrt(
        flow_hold.var(0, ddof=1) / n_h + hold_theta.var(0, ddof=1) / n_h
    )
    sd_ratio = flow_hold.std(0, ddof=1) / hold_theta.std(0, ddof=1)
    joint = lambda theta: jnp.concatenate([cond(hold_x), (theta - design(hold_x) @ beta) / p_sd], axis=1)  # noqa: E731
    mmd_flow, p_flow = mmd_test(keys[9], joint(flow_hold), joint(hold_theta), permutations=config.permutations)
    mmd_true, p_true = mmd_test(keys[9], joint(fresh_hold), joint(hold_theta), permutations=config.permutations)

    # --- (2) the virtual cohort and (3) the virtual trial
    k_flow, k_trial, k_src_trial = jax.random.split(keys[10], 3)
    virt_cluster = np.repeat(np.arange(config.n_source), config.virtual_per_patient)
    virt_x = train_x[virt_cluster]
    virt_theta = sample_theta(k_flow, virt_x)
    endpoint = _endpoint(config)
    virt_y, virt_t = _trial(k_trial, endpoint(virt_theta), config.noise_sd)
    src_y, src_t = _trial(k_src_trial, endpoint(train_theta), config.noise_sd)
    truth_effect = np.asarray(endpoint(truth_theta))
    flow_target_effect = np.asarray(endpoint(sample_theta(keys[11], truth_x)))  # the flow extrapolated

    # --- (4) transport, positivity
    s_src, n_strata = _strata(train_x)
    s_virt = s_src[virt_cluster]
    s_tgt, _ = _strata(tgt_x)
    s_truth, _ = _strata(truth_x)
    # the classifier is fitted against the target points in strata that hold source patients at all (there the true
    # ratio is finite; the trial's eligibility rule leaves CrCL < 30 empty and a logistic fit would bend to chase an
    # infinite log-ratio there). Restricting the target to a union of strata changes p_t/p_s by a constant only.
    count_ok = np.bincount(s_src, minlength=n_strata) >= config.min_count
    f_src, f_tgt = _ratio_features(train_x), _ratio_features(tgt_x[count_ok[s_tgt]])
    w_src, clf = transport_weights(f_src, target=f_tgt, key=keys[11], steps=config.classifier_steps)
    w_exact, _ = transport_weights(train_x, log_p_source=source_log_density, log_p_target=target_log_density)
    report = positivity_check(
        s_src, s_tgt, n_strata, weights=w_src.weights, min_count=config.min_count, min_ess=config.min_ess
    )
    supported = np.asarray(report.supported)
    w_cls, w_ex = np.asarray(w_src.weights), np.asarray(w_exact.weights)
    try:
        transported_effect(
            virt_y, virt_t, w_cls[virt_cluster], report=report, source_strata=s_virt, target_strata=s_tgt
        )
        refusal = None
    except ValueError as err:
        refusal = str(err)
    kw = dict(report=report, target_strata=s_tgt, on_unsupported="restrict")
    estimates = {
        "naive_virtual": transported_effect(virt_y, virt_t, np.ones(virt_y.size), clusters=virt_cluster),
        "naive_source_trial": transported_effect(src_y, src_t, np.ones(config.n_source)),
    }
    for name, w in (("exact", w_ex), ("classifier", w_cls)):
        estimates[f"transported_virtual_{name}"] = transported_effect(
            virt_y, virt_t, w[virt_cluster], source_strata=s_virt, clusters=virt_cluster, **kw
        )
        estimates[f"transported_source_trial_{name}"] = transported_effect(src_y, src_t, w, source_strata=s_src, **kw)

    # bootstrap over source patients (and the target covariate sample), refitting the classifier each time; the flow
    # and the virtual patients drawn at a source patient's covariates stay fixed (the SE excludes the flow's error)
    masks = np.concatenate([supported[s_src][None], s_src[None] == np.arange(n_strata)[:, None]])
    boot_logit, counts = _bootstrap_classifier(keys[12], f_src, f_tgt, config.bootstrap, config.classifier_steps)
    boot_w = {"classifier": np.exp(boot_logit - boot_logit.max(1, keepdims=True)) * counts, "exact": w_ex * counts}
    boot = {}
    for name, wb in boot_w.items():
        boot[f"transported_virtual_{name}"] = _weighted_effects(
            virt_y, virt_t, wb[:, virt_cluster], masks[:, virt_cluster]
        )
        boot[f"transported_source_trial_{name}"] = _weighted_effects(src_y, src_t, wb, masks)
    boot_se = {k: _column_sd(v) for k, v in boot.items()}  # (1 + n_strata,): the supported part, then each stratum

    in_supported = supported[s_truth]
    n_tr = config.n_target_truth
    truth = {
        "target": float(truth_effect.mean()),
        "target_se": float(truth_effect.std() / math.sqrt(n_tr)),
        "target_supported": float(truth_effect[in_supported].mean()),
        "target_supported_se": float(truth_effect[in_supported].std() / math.sqrt(in_supported.sum())),
        "source": float(np.asarray(endpoint(_true_log_params(keys[8], virt_x))).mean()),
    }
    truth_strata = np.array(
        [truth_effect[s_truth == g].mean() if np.any(s_truth == g) else np.nan for g in range(n_strata)]
    )
    truth_strata_se = np.array(
        [truth_effect[s_truth == g].std() / math.sqrt(max((s_truth == g).sum(), 1)) for g in range(n_strata)]
    )
    # the flow queried far outside its training covariates may return non-finite parameters: count, don't average
    flow_finite = np.isfinite(flow_target_effect)
    flow_strata = np.array(
        [
            flow_target_effect[(s_truth == g) & flow_finite].mean() if np.any(s_truth == g) else np.nan
            for g in range(n_strata)
        ]
    )

    # --- (5) the audits (support judged on the real source patients by the classifier weights, for every estimator)
    audits = {}
    for name, w in (("exact", w_ex), ("classifier", w_cls)):
        for trial, (y_, t_, w_, s_, c_) in (
            ("virtual", (virt_y, virt_t, w[virt_cluster], s_virt, virt_cluster)),
            ("source_trial", (src_y, src_t, w, s_src, None)),
        ):
            rows = subgroup_audit(y_, t_, w_, report, s_, names=STRATUM_NAMES, truth=truth_strata, clusters=c_)
            se_b = boot_se[f"transported_{trial}_{name}"][1:]
            for g, row in enumerate(rows):
                row["truth"] = None if np.isnan(truth_strata[g]) else row["truth"]
                row["truth_mc_se"] = float(truth_strata_se[g])
                row["flow_extrapolation"] = None if np.isnan(flow_strata[g]) else float(flow_strata[g])
                row["bootstrap_se"] = row["bootstrap_ci_low"] = row["bootstrap_ci_high"] = None
                row["bootstrap_covered"] = None
                if row["estimate"] is not None:
                    se = float(se_b[g])
                    lo, hi = row["estimate"] - 1.96 * se, row["estimate"] + 1.96 * se
                    row.update(bootstrap_se=se, bootstrap_ci_low=lo, bootstrap_ci_high=hi)
                    if row["truth"] is not None:
                        row["bootstrap_covered"] = bool(lo <= row["truth"] <= hi)
            audits[f"{trial}_{name}"] = rows

    def err(key, ref, use_boot=False):
        est = estimates[key]
        se = float(boot_se[key][0]) if use_boot else est.standard_error
        return (est.estimate - ref) / se

    effects = {
        "true_target": truth["target"],
        "true_target_supported": truth["target_supported"],
        "true_source": truth["source"],
        **{k: v.estimate for k, v in estimates.items()},
        "flow_extrapolated_target": float(flow_target_effect[flow_finite].mean()),
    }
    transported = [k for k in estimates if k.startswith("transported")]
    errors = {
        "naive_virtual_vs_target": err("naive_virtual", truth["target"]),
        "naive_virtual_vs_source": err("naive_virtual", truth["source"]),
        **{f"{k}_vs_target_supported": err(k, truth["target_supported"]) for k in transported},
        **{f"{k}_vs_target_supported_bootstrap_se": err(k, truth["target_supported"], True) for k in transported},
    }

    def coverage(rows, field):
        hits = [r[field] for r in rows if r[field] is not None]
        return {"covered": int(sum(hits)), "of": len(hits)}

    out_estimates = {k: _effect_dict(v) for k, v in estimates.items()}
    for k in transported:
        out_estimates[k]["bootstrap_se"] = float(boot_se[k][0])
    return {
        "effects": effects,
        "errors_in_se": errors,
        "estimates": out_estimates,
        "subgroup_coverage": {
            **{f"{k}_delta_se": coverage(rows, "covered") for k, rows in audits.items()},
            **{f"{k}_bootstrap_se": coverage(rows, "bootstrap_covered") for k, rows in audits.items()},
        },
        "truth": truth,
        "positivity": {
            "unsupported_fraction": report.unsupported_fraction,
            "unsupported_strata": [STRATUM_NAMES[g] for g in range(n_strata) if not supported[g]],
            "refused_all_target_estimate": refusal is not None,
            "refusal_message": refusal,
            "weights_ess_source": float(w_src.ess),
            "weights_ess_source_exact": float(w_exact.ess),
            "max_normalized_weight_source": float(jnp.max(w_src.normalized)),
            "log_weight_error_sd": _log_weight_error_sd(w_src.log_weights, w_exact.log_weights, supported[s_src]),
        },
        "audit": audits["virtual_classifier"],
        "audits": audits,
        "bootstrap_replicates": config.bootstrap,
        "flow": {
            "final_nll": float(np.mean(fit.history["loss"][-max(config.steps // 10, 1) :])),
            "marginal_mean_z": dict(zip(PARAMETER_NAMES, np.asarray(mean_z).tolist())),
            "marginal_sd_ratio": dict(zip(PARAMETER_NAMES, np.asarray(sd_ratio).tolist())),
            "mmd2": float(mmd_flow),
            "mmd_p_value": float(p_flow),
            "mmd2_true_vs_true": float(mmd_true),
            "mmd_p_value_true_vs_true": float(p_true),
            "extrapolation_nonfinite": int((~flow_finite).sum()),
            "virtual_nonfinite": int((~np.isfinite(virt_y)).sum()),
        },
        "history": {"step": fit.history["step"], "loss": fit.history["loss"]},
        "plot": {
            "source_x": np.asarray(train_x),
            "target_x": np.asarray(tgt_x),
            "hold_theta": np.asarray(hold_theta),
            "flow_hold_theta": np.asarray(flow_hold),
        },
        "evaluate_s": time.perf_counter() - t0,
    }


# -------------------------------------------------------------------------------------------------------- figures


def _figure(out: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1, 1.6, 1]})
    ax = axes[0]
    src, tgt = out["plot"]["source_x"], out["plot"]["target_x"]
    ax.scatter(tgt[:, 1], tgt[:, 2], s=4, alpha=0.35, color="tab:orange", label="target")
    ax.scatter(src[:, 1], src[:, 2], s=4, alpha=0.35, color="tab:blue", label="source trial")
    unsupported = {row["name"] for row in out["audit"] if not row["supported"]}
    age_b, crcl_b = (0.0, *AGE_EDGES, 100.0), (0.0, *CRCL_EDGES, 250.0)
    for i, r in enumerate(RENAL_NAMES):
        for j, a in enumerate(AGE_NAMES):
            if f"{r}, {a}" in unsupported:
                ax.fill_between([age_b[j], age_b[j + 1]], crcl_b[i], crcl_b[i + 1], color="red", alpha=0.12, lw=0)
    for e in CRCL_EDGES:
        ax.axhline(e, color="k", lw=0.6, ls="--")
    for e in AGE_EDGES:
        ax.axvline(e, color="k", lw=0.6, ls="--")
    ax.set(xlabel="age (years)", ylabel="CrCL (mL/min)", xlim=(15, 97), ylim=(0, 250))
    ax.set_title("covariates; red: strata without source support", fontsize=10)
    ax.legend(loc="upper right", markerscale=3)

    ax = axes[1]
    rows = out["audit"]
    xs = np.arange(len(rows))
    truth = [np.nan if r["truth"] is None else r["truth"] for r in rows]
    ax.plot(xs, truth, "k_", ms=18, mew=2, label="truth (target stratum)")
    exact = out["audits"]["virtual_exact"]
    for x, r, re in zip(xs, rows, exact):
        if r["supported"]:
            ax.errorbar(x - 0.12, re["estimate"], yerr=1.96 * re["bootstrap_se"], fmt="s", color="tab:red", capsize=3)
            ax.errorbar(x + 0.12, r["estimate"], yerr=1.96 * r["bootstrap_se"], fmt="o", color="tab:green", capsize=3)
        else:
            ax.axvspan(x - 0.45, x + 0.45, color="red", alpha=0.1, lw=0)
            ax.text(x, 2, "no\nsupport", ha="center", fontsize=7, color="red")
    ax.plot([], [], "s", color="tab:red", label="transported virtual trial, exact ratio (95 % bootstrap CI)")
    ax.plot([], [], "o", color="tab:green", label="transported virtual trial, classifier ratio (95 % bootstrap CI)")
    flow_ex = [np.nan if r["flow_extrapolation"] is None else r["flow_extrapolation"] for r in rows]
    ax.plot(xs, flow_ex, "x", color="tab:purple", label="flow extrapolated to target covariates")
    ax.axhline(out["effects"]["naive_virtual"], color="tab:blue", ls=":", label="naive (virtual trial, all)")
    ax.axhline(out["effects"]["true_target"], color="k", ls=":", lw=0.8, label="true target effect (all)")
    ax.set_xticks(xs, [f"{r['name']}\nn_s={r['n_source']}, n_t={r['n_target']}" for r in rows], fontsize=7, rotation=30)
    ax.set(ylabel="effect at trough (% inhibition)", ylim=(0, 100))
    ax.set_title("subgroup audit", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[2]
    hold, flow = out["plot"]["hold_theta"], out["plot"]["flow_hold_theta"]
    i_cl = PARAMETER_NAMES.index("cl_L_h")
    bins = np.linspace(min(hold[:, i_cl].min(), flow[:, i_cl].min()), max(hold[:, i_cl].max(), flow[:, i_cl].max()), 40)
    ax.hist(hold[:, i_cl], bins, density=True, alpha=0.5, label="held-out source (true)")
    ax.hist(flow[:, i_cl], bins, density=True, histtype="step", lw=2, label="flow at the same covariates")
    ax.set(xlabel="log CL (L/h)", ylabel="density")
    ax.set_title(f"flow fidelity: MMD p = {out['flow']['mmd_p_value']:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):
        out = evaluate(config, jax.random.key(config.seed))
    run_dir = pathlib.Path(run_dir)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _figure(out, fig_dir / "virtual_trial.png")
    hist = out.pop("history")
    write_metrics_csv(run_dir / "metrics.csv", {"step": hist["step"], "loss": hist["loss"]})
    out.pop("plot")
    out["wall_time_s"] = time.perf_counter() - start
    write_json(run_dir / "results.json", out)
    return out
