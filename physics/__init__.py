"""Concrete physical systems implementing twinjax's dynamics interfaces.

Each model is a small equinox module whose physical parameters are its fields (units in the names), so ``jax.grad``
with respect to the model is the sensitivity to the physics. Factory functions ``*_twin`` wrap a model into a
``twinjax.StateSpaceModel`` with a typical sensor.
"""

from .battery import TheveninBattery, battery_twin, cell_5Ah, pybamm_ecm_example
from .degradation import Degradation, degradation_twin
from .hvac import Building2R2C, building_twin, stack_inputs, synthetic_occupancy, synthetic_weather
from .lookup import Lookup
from .lorenz import Lorenz63, Lorenz63SDE, Lorenz96, lorenz63_twin, lorenz96_twin
from .lotka_volterra import LotkaVolterra, lotka_volterra_twin
from .oscillator import MassSpringDamper, oscillator_twin
from .pendulum import Pendulum, pendulum_twin
from .pharmacology import (
    TwoCompartmentPKPD,
    covariate_model,
    oral_central_amount,
    pkpd_from_log_parameters,
    pkpd_twin,
    sample_log_parameters,
)
from .pump import DCMotorPump, pump_twin
from .traffic import CellTransmissionModel, incident_capacity_factors

__all__ = [
    "Building2R2C",
    "CellTransmissionModel",
    "DCMotorPump",
    "Degradation",
    "Lookup",
    "Lorenz63",
    "Lorenz63SDE",
    "Lorenz96",
    "LotkaVolterra",
    "MassSpringDamper",
    "Pendulum",
    "TheveninBattery",
    "TwoCompartmentPKPD",
    "battery_twin",
    "building_twin",
    "cell_5Ah",
    "covariate_model",
    "degradation_twin",
    "incident_capacity_factors",
    "lorenz63_twin",
    "lorenz96_twin",
    "lotka_volterra_twin",
    "oral_central_amount",
    "oscillator_twin",
    "pendulum_twin",
    "pkpd_from_log_parameters",
    "pkpd_twin",
    "pump_twin",
    "pybamm_ecm_example",
    "sample_log_parameters",
    "stack_inputs",
    "synthetic_occupancy",
    "synthetic_weather",
]
