"""What a twin's physics is: continuous-time (ODE/SDE) or discrete-time dynamics.

A dynamics object is an :class:`equinox.Module`. Its physical parameters are its fields, so ``jax.grad`` with respect
to the module is the sensitivity to the physics and ``eqx.tree_at`` edits a parameter (which is also how an
intervention ``do(φ = …)`` is expressed). Solvers, filters and samplers receive it as an argument; it never knows about
them.
"""

import abc

import equinox as eqx
from jaxtyping import Array

from .._types import Control, Float, State, Time


class AbstractDynamics(eqx.Module):
    """Continuous-time dynamics ``dx/dt = f(t, x, u)`` (an ODE).

    Subclasses implement :meth:`vector_field`. Controls ``u`` are held constant over each sampling interval
    (zero-order hold); a model without inputs should accept ``u`` of shape ``(0,)`` and ignore it.

    Example:
        ```python
        class Decay(tj.AbstractDynamics):
            rate_per_s: float = 1.0

            def vector_field(self, t, x, u):
                return -self.rate_per_s * x
        ```
    """

    @abc.abstractmethod
    def vector_field(self, t: Time, x: State, u: Control) -> State:
        """The time derivative ``dx/dt`` at time ``t`` (s), state ``x`` and control ``u``."""


class AbstractSDEDynamics(AbstractDynamics):
    """Itô SDE dynamics ``dx = f(t, x, u) dt + G(t, x, u) dW``.

    Subclasses implement :meth:`vector_field` (the drift ``f``) and :meth:`diffusion`, which returns the matrix ``G``
    of shape ``(state, noise)``; ``W`` is a standard Brownian motion of dimension ``noise``.
    """

    @abc.abstractmethod
    def diffusion(self, t: Time, x: State, u: Control) -> Float[Array, "state noise"]:
        """The diffusion matrix ``G(t, x, u)`` of shape ``(state, noise)``."""


class AbstractDiscreteDynamics(eqx.Module):
    """Discrete-time dynamics ``x_{k+1} = g(t_k, x_k, u_k)`` (plus additive process noise set on the
    :class:`~twinjax.StateSpaceModel`).

    Subclasses implement :meth:`transition`. The time between ``t_k`` and ``t_{k+1}`` is the model's ``dt``.
    """

    @abc.abstractmethod
    def transition(self, t: Time, x: State, u: Control) -> State:
        """The next state ``x_{k+1}`` given time ``t_k``, state ``x_k`` and control ``u_k``."""


def is_stochastic(dynamics) -> bool:
    """Whether ``dynamics`` has a diffusion term (an SDE)."""
    return isinstance(dynamics, AbstractSDEDynamics)


def is_discrete(dynamics) -> bool:
    """Whether ``dynamics`` is a discrete-time transition."""
    return isinstance(dynamics, AbstractDiscreteDynamics)
