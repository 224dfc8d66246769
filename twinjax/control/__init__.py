"""``twinjax.control``: decisions with the twin — receding-horizon control (:mod:`.mpc`: SQP with a dense
interior-point QP, warm start, closed loop in one ``lax.scan``, differentiable), chance constraints from the twin's
predictive distribution (:mod:`.chance`), robust control-barrier safety filters (:mod:`.cbf`) and safe exploration
(:mod:`.exploration`). See docs/control.md, docs/control_chance.md and docs/control_safety.md."""

from . import cbf as cbf, chance as chance, exploration as exploration, mpc as mpc
from .cbf import (
    CBFCondition as CBFCondition,
    FilterResult as FilterResult,
    barrier_rate as barrier_rate,
    project_halfspace as project_halfspace,
    project_polyhedron as project_polyhedron,
    robust_condition as robust_condition,
    robust_filter as robust_filter,
    safety_filter as safety_filter,
)
from .chance import (
    METHODS as METHODS,
    PROPAGATIONS as PROPAGATIONS,
    ChanceConstraint as ChanceConstraint,
    MomentDynamics as MomentDynamics,
    Predictive as Predictive,
    chance_constraint as chance_constraint,
    constraint_moments as constraint_moments,
    linear_moments as linear_moments,
    margin as margin,
    moment_dynamics as moment_dynamics,
    propagate as propagate,
    tighten as tighten,
)
from .exploration import (
    SafetyCertificate as SafetyCertificate,
    bayes_linear_update as bayes_linear_update,
    certify as certify,
    confidence_multiplier as confidence_multiplier,
    information_gain as information_gain,
    leverage as leverage,
    next_point as next_point,
    random_safe_point as random_safe_point,
)
from .mpc import (
    OCP as OCP,
    ClosedLoop as ClosedLoop,
    Solution as Solution,
    closed_loop as closed_loop,
    cold_solution as cold_solution,
    shift as shift,
    solve as solve,
    step as step,
)
