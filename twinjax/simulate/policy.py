"""Feedback policies ``u_t = π(t, y_{0:t})`` evaluated inside the simulation loop.

A policy's memory of past measurements is an explicit state (a running filter belief, an integrator, …), so that
``π(t, y_{0:t})`` is computed online in a ``lax.scan``: ``(u_t, s_t) = policy(t, y_t, s_{t-1}, key)``.
"""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp

from .._types import Control, Key, Obs, Time


class AbstractPolicy(eqx.Module):
    """A feedback controller with explicit state."""

    @abc.abstractmethod
    def init(self) -> Any:
        """The policy's state before the first measurement."""

    @abc.abstractmethod
    def __call__(self, t: Time, y: Obs, state: Any, key: Key) -> tuple[Control, Any]:
        """Map the newest measurement (and the state summarising earlier ones) to a control and a new state."""


class FunctionPolicy(AbstractPolicy):
    """A memoryless policy ``u = fn(t, y)``.

    Example:
        ```python
        pd = tj.FunctionPolicy(lambda t, y: -2.0 * y[:1])   # torque from the measured angle
        ```
    """

    fn: Callable

    def init(self):
        return jnp.zeros(())

    def __call__(self, t, y, state, key):
        del key
        return jnp.asarray(self.fn(t, y)), state


def as_policy(controls) -> AbstractPolicy | None:
    """Wrap a plain callable as a :class:`FunctionPolicy`; return ``None`` for arrays (open-loop controls)."""
    if isinstance(controls, AbstractPolicy):
        return controls
    if callable(controls):
        return FunctionPolicy(controls)
    return None
