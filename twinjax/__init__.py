"""twinjax: generative, differentiable digital twins in JAX.

One equinox pytree — the twin — flows unchanged through simulation, filtering, calibration, generative modelling,
decisions and causal queries. This module only re-exports the public API.
"""

from importlib.metadata import PackageNotFoundError, version

from . import (
    calibrate as calibrate,
    causal as causal,
    control as control,
    diagnostics as diagnostics,
    generative as generative,
    inference as inference,
    risk as risk,
)
from .model import (
    AbstractDiscreteDynamics,
    AbstractDynamics,
    AbstractInitial,
    AbstractObservation,
    AbstractSDEDynamics,
    AbstractStateSpaceModel,
    Discretisation,
    Gaussian,
    GaussianObservation,
    LinearGaussianSSM,
    Params,
    ParamSpec,
    PointMass,
    StateSpaceModel,
    Status,
    interval,
    parameters_as_arrays,
    positive,
    real,
)
from .simulate import (
    AbstractPolicy,
    FunctionPolicy,
    Tableau,
    Trajectory,
    ensemble,
    raise_if_failed,
    simulate,
)

try:
    __version__ = version("twinjax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = [
    "AbstractDiscreteDynamics",
    "AbstractDynamics",
    "AbstractInitial",
    "AbstractObservation",
    "AbstractPolicy",
    "AbstractSDEDynamics",
    "AbstractStateSpaceModel",
    "Discretisation",
    "FunctionPolicy",
    "Gaussian",
    "GaussianObservation",
    "LinearGaussianSSM",
    "ParamSpec",
    "Params",
    "PointMass",
    "StateSpaceModel",
    "Status",
    "Tableau",
    "Trajectory",
    "calibrate",
    "ensemble",
    "generative",
    "inference",
    "interval",
    "parameters_as_arrays",
    "positive",
    "raise_if_failed",
    "real",
    "simulate",
]
