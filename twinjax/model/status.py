"""Per-solve status codes, so a vmapped ensemble can report each member's failure instead of a silent NaN."""

import enum

import diffrax
import jax.numpy as jnp

from .._types import Array, Int


class Status(enum.IntEnum):
    """Outcome of a solve. Stored as ``int32`` arrays (one per ensemble member) in ``Trajectory.status``."""

    successful = 0
    max_steps_reached = 1
    nonfinite = 2
    solver_failed = 3


def from_diffrax(result) -> Int[Array, ""]:
    """Map a diffrax ``RESULTS`` value to a :class:`Status` code."""
    ok = result == diffrax.RESULTS.successful
    max_steps = result == diffrax.RESULTS.max_steps_reached
    code = jnp.where(max_steps, Status.max_steps_reached, Status.solver_failed)
    return jnp.where(ok, Status.successful, code).astype(jnp.int32)


def combine(first: Int[Array, "*b"], second: Int[Array, "*b"]) -> Int[Array, "*b"]:
    """Keep the first failure: ``second`` only counts while ``first`` is still successful."""
    return jnp.where(first == Status.successful, second, first)


def describe(status) -> str:
    """A human summary of a status array: counts per outcome, e.g. ``"4094 successful, 2 nonfinite"``."""
    import numpy as np

    s = np.asarray(status).ravel()
    parts = [f"{int(np.sum(s == code))} {code.name}" for code in Status if np.any(s == code)]
    return ", ".join(parts) if parts else "empty"
