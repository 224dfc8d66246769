"""What a twin is: dynamics, sensors, initial belief, parameters and their priors, discretisation."""

from .discretisation import Discretisation
from .distributions import AbstractInitial, Gaussian, PointMass, gaussian_log_prob
from .dynamics import AbstractDiscreteDynamics, AbstractDynamics, AbstractSDEDynamics
from .observation import (
    AbstractObservation,
    DynamicsMethod,
    GaussianObservation,
    LinearFunction,
    masked_gaussian_log_prob,
    observed_mask,
)
from .params import Params, ParamSpec, interval, parameters_as_arrays, positive, real
from .ssm import AbstractStateSpaceModel, LinearDynamics, LinearGaussianSSM, StateSpaceModel
from .status import Status

__all__ = [
    "AbstractDiscreteDynamics",
    "AbstractDynamics",
    "AbstractInitial",
    "AbstractObservation",
    "AbstractSDEDynamics",
    "AbstractStateSpaceModel",
    "Discretisation",
    "DynamicsMethod",
    "Gaussian",
    "GaussianObservation",
    "LinearDynamics",
    "LinearFunction",
    "LinearGaussianSSM",
    "ParamSpec",
    "Params",
    "PointMass",
    "StateSpaceModel",
    "Status",
    "gaussian_log_prob",
    "interval",
    "masked_gaussian_log_prob",
    "observed_mask",
    "parameters_as_arrays",
    "positive",
    "real",
]
