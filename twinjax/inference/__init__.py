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
from .ensemble import (
    EnsembleFilterResult as EnsembleFilterResult,
    EnsembleFilterState as EnsembleFilterState,
    EnsembleInnovation as EnsembleInnovation,
    Localisation as Localisation,
    enkf_init as enkf_init,
    enkf_predict as enkf_predict,
    enkf_step as enkf_step,
    enkf_update as enkf_update,
    ensemble_kalman_filter as ensemble_kalman_filter,
    gaspari_cohn as gaspari_cohn,
    localisation as localisation,
)
from .kalman import (
    kalman_filter as kalman_filter,
    kf_init as kf_init,
    kf_predict as kf_predict,
    kf_step as kf_step,
    kf_update as kf_update,
    rts_smoother as rts_smoother,
)
from .nonlinear import (
    ekf_init as ekf_init,
    ekf_predict as ekf_predict,
    ekf_step as ekf_step,
    ekf_update as ekf_update,
    extended_kalman_filter as extended_kalman_filter,
    extended_rts_smoother as extended_rts_smoother,
    ukf_init as ukf_init,
    ukf_predict as ukf_predict,
    ukf_step as ukf_step,
    ukf_update as ukf_update,
    unscented_kalman_filter as unscented_kalman_filter,
)
from .online import (
    FilterFamily as FilterFamily,
    Forecast as Forecast,
    OnlineHistory as OnlineHistory,
    OnlineTwin as OnlineTwin,
    filter_names as filter_names,
    register_filter as register_filter,
)
from .parallel import (
    parallel_kalman_filter as parallel_kalman_filter,
    parallel_rts_smoother as parallel_rts_smoother,
)
from .particle import (
    ParticleFilterResult as ParticleFilterResult,
    ParticleFilterState as ParticleFilterState,
    ParticleUpdateInfo as ParticleUpdateInfo,
    particle_filter as particle_filter,
    pf_init as pf_init,
    pf_predict as pf_predict,
    pf_step as pf_step,
    pf_update as pf_update,
    systematic_resample as systematic_resample,
)
from .sensorlog import (
    SensorLog as SensorLog,
    read_sensor_log as read_sensor_log,
    write_sensor_log as write_sensor_log,
)
