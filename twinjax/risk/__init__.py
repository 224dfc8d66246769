"""``twinjax.risk``: risk and trust — for now the runtime verification of synthetic data against a safety invariant
(:mod:`.verification`); distribution shift, rare events and differential privacy come with their own issue."""

from . import verification as verification
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
