"""What a twin does forward: single rollouts, ensembles, feedback loops, ancestral sampling."""

from .ensemble import ensemble, member_sharding
from .policy import AbstractPolicy, FunctionPolicy
from .rk import EULER, HEUN, MIDPOINT, RK3, RK4, Tableau, rk_step
from .simulate import raise_if_failed, simulate
from .trajectory import Trajectory

__all__ = [
    "AbstractPolicy",
    "EULER",
    "FunctionPolicy",
    "HEUN",
    "MIDPOINT",
    "RK3",
    "RK4",
    "Tableau",
    "Trajectory",
    "ensemble",
    "member_sharding",
    "raise_if_failed",
    "rk_step",
    "simulate",
]
