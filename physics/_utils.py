"""Small helpers shared by the physics modules."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .lookup import as_parameter


def param(default):
    """A differentiable parameter field: numbers become JAX arrays (see :func:`physics.lookup.as_parameter`)."""
    return eqx.field(default=default, converter=as_parameter)


def single_input(u: Float[Array, " control"], name: str) -> Float[Array, ""]:
    """The single input ``u[0]``, or 0 for an empty control ``u`` of shape ``(0,)`` (an unforced system)."""
    if u.shape not in ((0,), (1,)):
        raise ValueError(f"control must be [{name}] or empty (shape (0,)); got shape {u.shape}.")
    return u[0] if u.shape[0] == 1 else jnp.zeros((), u.dtype)


def no_input(u: Float[Array, " control"]) -> None:
    """Check that an autonomous model received an empty control (shape ``(0,)``)."""
    if u.ndim != 1:
        raise ValueError(f"control must be a 1-D array (shape (0,) for this autonomous model); got shape {u.shape}.")
