"""``twinjax.risk``: risk and trust — the runtime verification of synthetic data against a safety invariant
(:mod:`.verification`), differentially private training (:mod:`.dp_sgd`: DP-SGD as an optax transformation with
Poisson sampling) and its privacy accounting (:mod:`.privacy`: the RDP accountant of the Poisson-subsampled Gaussian
mechanism, checked against dp-accounting). Distribution shift and rare events come with their own issue."""

from . import dp_sgd as dp_sgd, privacy as privacy, verification as verification
from .dp_sgd import (
    DPSGDState as DPSGDState,
    clip_per_example as clip_per_example,
    dp_aggregate as dp_aggregate,
    max_batch_for as max_batch_for,
    per_example_grads as per_example_grads,
    poisson_batch as poisson_batch,
)
from .privacy import (
    DEFAULT_RDP_ORDERS as DEFAULT_RDP_ORDERS,
    epsilon as epsilon,
    rdp_subsampled_gaussian as rdp_subsampled_gaussian,
    rdp_to_epsilon as rdp_to_epsilon,
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
