"""Synchronisation: Bayesian filters and smoothers on one :class:`~twinjax.StateSpaceModel`.

Each filter is a pure ``init`` / ``predict`` / ``update`` / ``step`` family (what an online twin or an MPC calls each
tick) plus a ``lax.scan`` driver returning filtered means, covariances (or the ensemble / weighted particles) and the
log marginal likelihood. Missing measurements are ``NaN`` and are masked channel by channel. Observation times may be
irregular: the continuous dynamics are integrated over each actual interval. See ``_base.py`` for the conventions.
"""

from ._base import (
    GaussianFilterResult as GaussianFilterResult,
    GaussianFilterState as GaussianFilterState,
    Innovation as Innovation,
    SmootherResult as SmootherResult,
)

# --- kalman (KF, RTS, parallel) ---
# --- nonlinear (EKF, UKF) ---
# --- ensemble (EnKF, ETKF, DEnKF, LETKF) ---
# --- particle ---
# --- online twin, sensor logs ---
