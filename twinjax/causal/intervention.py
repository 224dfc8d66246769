"""Interventions: the ``do`` operator shared by structural causal models and dynamical twins.

An `Intervention` says which mechanisms are replaced and by what. The same object is understood by both kinds of
causal model in twinjax:

* a structural causal model (`twinjax.causal.SCM`) reads ``variables`` — ``do(X=1.0)`` replaces the structural
  equation of ``X`` by the constant ``1.0`` (graph surgery: the arrows into ``X`` are cut);
* a dynamical twin (a `twinjax.StateSpaceModel`) reads ``controls`` — ``do(controls=us)`` replaces the input sequence
  that was applied by ``us`` — and ``params`` — ``do(params={"dynamics.setpoint_C": 21.0})`` replaces physical
  parameters (dotted paths into the twin, as in `twinjax.Params`) for the counterfactual rollout.

``controls`` and ``params`` are therefore reserved names: an SCM variable cannot be called either.
"""

from collections.abc import Mapping
from typing import Any

import equinox as eqx

_RESERVED = ("controls", "params")


class Intervention(eqx.Module):
    """An intervention ``do(...)``: replaced mechanisms and the values that replace them.

    **Fields:**

    - `variables`: SCM variable name → the value it is set to (a scalar, or an array with a leading batch axis for a
      per-unit intervention).
    - `controls`: a replacement control sequence for a dynamical twin, shape ``(T, n_u)``, or ``None``.
    - `params`: dotted parameter path → replacement value for a dynamical twin, or ``None``.
    """

    variables: dict[str, Any]
    controls: Any = None
    params: dict[str, Any] | None = None

    def __check_init__(self):
        for name in self.variables:
            if name in _RESERVED:
                raise ValueError(f"do: {name!r} is reserved (it means a twin's {name}); rename the SCM variable")

    @property
    def targets(self) -> tuple[str, ...]:
        """The names of the SCM variables whose mechanisms are replaced, sorted."""
        return tuple(sorted(self.variables))

    def is_empty(self) -> bool:
        """True when nothing is intervened on (the factual world)."""
        return not self.variables and self.controls is None and not self.params


def do(
    variables: Mapping[str, Any] | None = None,
    /,
    *,
    controls: Any = None,
    params: Mapping[str, Any] | None = None,
    **named: Any,
) -> Intervention:
    """Build an intervention.

    ``do(X=1.0, Z=0.0)`` or ``do({"X": 1.0})`` sets SCM variables; ``do(controls=us)`` replaces a twin's input
    sequence; ``do(params={"dynamics.R_K_per_W": 0.02})`` replaces twin parameters. The forms combine.

    **Arguments:**

    - `variables`: a mapping from SCM variable names to values (for names that are not Python identifiers).
    - `controls`: a twin's replacement control sequence, shape ``(T, n_u)``.
    - `params`: a mapping from dotted twin-parameter paths to replacement values.
    - `**named`: SCM variables given as keywords.

    **Returns:** an `Intervention`.
    """
    if variables is not None and not isinstance(variables, Mapping):
        raise TypeError(
            f"do: the positional argument must map variable names to values, got {type(variables).__name__}"
        )
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"do: params must map dotted parameter paths to values, got {type(params).__name__}")
    values = dict(variables or {})
    for name, value in named.items():
        if name in values:
            raise ValueError(f"do: variable {name!r} is given twice (in the mapping and as a keyword)")
        values[name] = value
    return Intervention(variables=values, controls=controls, params=None if params is None else dict(params))
