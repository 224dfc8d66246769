"""jaxtyping aliases shared across twinjax.

Named dimensions: ``state`` (n), ``obs`` (p), ``control`` (m), ``noise`` (Brownian dimension),
``time`` (number of save times), ``member`` (ensemble members), ``param`` (flat parameter vector).
"""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

Scalar: TypeAlias = Float[ArrayLike, ""]
Time: TypeAlias = Float[ArrayLike, ""]
State: TypeAlias = Float[Array, " state"]
Control: TypeAlias = Float[Array, " control"]
Obs: TypeAlias = Float[Array, " obs"]
Mask: TypeAlias = Bool[Array, " obs"]
Cov: TypeAlias = Float[Array, "n n"]
Times: TypeAlias = Float[Array, " time"]
States: TypeAlias = Float[Array, "time state"]
Observations: TypeAlias = Float[Array, "time obs"]
Controls: TypeAlias = Float[Array, "time control"]
Key: TypeAlias = PRNGKeyArray

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Control",
    "Controls",
    "Cov",
    "Float",
    "Int",
    "Key",
    "Mask",
    "Obs",
    "Observations",
    "PyTree",
    "Scalar",
    "State",
    "States",
    "Time",
    "Times",
]
