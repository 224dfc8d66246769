"""``twinjax.risk``: risk and trust — the runtime verification of synthetic data against a safety invariant
(:mod:`.verification`), differentially private training (:mod:`.dp_sgd`: DP-SGD as an optax transformation with
Poisson sampling) and its privacy accounting (:mod:`.privacy`: the RDP accountant of the Poisson-subsampled Gaussian
mechanism, checked against dp-accounting), distribution shift and tail risk (:mod:`.shift`: MMD and classifier
two-sample tests, importance weights with an absolute-continuity check, VaR/CVaR), augmentation with synthetic rare
events and CVaR-optimal decisions (:mod:`.augment`), rare-event probabilities by importance sampling with exactly
tilted proposals (:mod:`.rare`) and extreme-value tails (:mod:`.extremes`: peaks over threshold, the generalised
Pareto fit, return levels)."""

from . import (
    augment as augment,
    dp_sgd as dp_sgd,
    extremes as extremes,
    privacy as privacy,
    rare as rare,
    shift as shift,
    verification as verification,
)
from .augment import (
    AugmentedData as AugmentedData,
    CVaRDecision as CVaRDecision,
    augment_with_rare_events as augment_with_rare_events,
    cvar_decision as cvar_decision,
    cvar_objective as cvar_objective,
    mixture_weights as mixture_weights,
)
from .dp_sgd import (
    DPSGDState as DPSGDState,
    clip_per_example as clip_per_example,
    dp_aggregate as dp_aggregate,
    max_batch_for as max_batch_for,
    per_example_grads as per_example_grads,
    per_example_value_and_grads as per_example_value_and_grads,
    poisson_batch as poisson_batch,
)
from .extremes import (
    GPDFit as GPDFit,
    ReturnLevel as ReturnLevel,
    exceedances as exceedances,
    fit_gpd as fit_gpd,
    gpd_sample as gpd_sample,
    mean_excess as mean_excess,
    return_level as return_level,
)
from .privacy import (
    DEFAULT_RDP_ORDERS as DEFAULT_RDP_ORDERS,
    epsilon as epsilon,
    rdp_subsampled_gaussian as rdp_subsampled_gaussian,
    rdp_to_epsilon as rdp_to_epsilon,
)
from .rare import (
    CrossEntropyResult as CrossEntropyResult,
    DefensiveMixture as DefensiveMixture,
    ISEstimate as ISEstimate,
    ScenarioDistribution as ScenarioDistribution,
    cross_entropy_proposal as cross_entropy_proposal,
    exponential_tilt as exponential_tilt,
    importance_sampling_estimate as importance_sampling_estimate,
    monte_carlo_estimate as monte_carlo_estimate,
    tilt_log_normaliser as tilt_log_normaliser,
    tilt_statistic as tilt_statistic,
    tilt_weight_second_moment as tilt_weight_second_moment,
    variance_reduction_factor as variance_reduction_factor,
)
from .shift import (
    classifier_test as classifier_test,
    cvar as cvar,
    density_ratio_weights as density_ratio_weights,
    importance_weighted_mean as importance_weighted_mean,
    mmd_test as mmd_test,
    support_check as support_check,
    twin_cvar as twin_cvar,
)
from .verification import (
    AbstractConstraint as AbstractConstraint,
    Box as Box,
    Ellipsoid as Ellipsoid,
    FilterReport as FilterReport,
    Invariant as Invariant,
    Polytope as Polytope,
    RateEstimate as RateEstimate,
    RuntimeFilter as RuntimeFilter,
    Sublevel as Sublevel,
    binomial_ci as binomial_ci,
    false_acceptance_rate as false_acceptance_rate,
    false_rejection_rate as false_rejection_rate,
    sample_accepted as sample_accepted,
    verify as verify,
)
