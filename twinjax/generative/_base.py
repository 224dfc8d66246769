"""The contract every generative family follows, so that one training loop, one set of metrics and one set of
contract tests serve all of them.

A generative model is an ``eqx.Module`` (its arrays are the trainable parameters) with

- ``sample(key, n, cond=None) -> (n, *event_shape)`` — draws from the model;
- ``log_prob(x, cond=None) -> (n,)`` — where the density is explicit (flows, diffusion through the probability-flow
  ODE); families without one leave :attr:`has_log_prob` ``False`` and the base method raises;
- ``loss(key, batch, cond=None) -> (scalar, aux)`` — the training objective on a batch (negative log-likelihood,
  negative ELBO, denoising score matching, ...), ``aux`` a dict of scalar metrics logged beside it.

Adversarial families (GANs, CycleGAN) implement :class:`AbstractAdversarial` instead of ``loss``: a critic loss and a
generator loss, and a ``critic`` filter saying which leaves belong to the critic; :func:`twinjax.generative.train`
then alternates ``critic_steps`` critic updates with one generator update.
"""

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax

from .._types import Array, Float, Scalar

__all__ = ["AbstractAdversarial", "AbstractGenerativeModel", "check_cond"]


def check_cond(owner: str, cond, n: int, cond_dim: int):
    """Validate a model's conditioning input: ``None`` for an unconditional model (``cond_dim == 0``), else an
    ``(n, cond_dim)`` array (a single ``(cond_dim,)`` row is broadcast). Errors name ``owner`` and ``cond``."""
    if cond_dim == 0:
        if cond is not None:
            raise ValueError(f"{owner}: `cond` was given but the model is unconditional (cond_dim=0)")
        return None
    if cond is None:
        raise ValueError(f"{owner}: `cond` is required: the model is conditional (cond_dim={cond_dim})")
    cond = jax.numpy.asarray(cond)
    if cond.ndim == 1:
        cond = jax.numpy.broadcast_to(cond, (n, cond.shape[0]))
    if cond.shape != (n, cond_dim):
        raise ValueError(f"{owner}: `cond` must have shape ({n}, {cond_dim}) or ({cond_dim},), got {cond.shape}")
    return cond


class AbstractGenerativeModel(eqx.Module):
    """Base class of the generative families. See the module docstring for the contract."""

    has_log_prob: ClassVar[bool] = False

    @abc.abstractmethod
    def sample(self, key: jax.Array, n: int, cond: Array | None = None) -> Array:
        """``n`` draws, shape ``(n, *event_shape)``; ``cond`` is ``(n, cond_dim)`` (or ``(cond_dim,)``, broadcast)."""

    def log_prob(self, x: Array, cond: Array | None = None) -> Float[Array, " n"]:
        """Log-density of each row of ``x`` (``(n, *event_shape)``) under the model."""
        raise NotImplementedError(f"{type(self).__name__} has no explicit density (has_log_prob is False)")

    @abc.abstractmethod
    def loss(self, key: jax.Array, batch: Array, cond: Array | None = None) -> tuple[Scalar, dict[str, Any]]:
        """The training objective on ``batch`` and a dict of scalar metrics to log."""


class AbstractAdversarial(AbstractGenerativeModel):
    """A two-player model: ``critic_loss`` is minimised over the critic's leaves, ``generator_loss`` over the rest."""

    critic_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def critic_filter(self) -> Any:
        """A pytree of bools with the structure of ``self``: ``True`` on the critic's (discriminator's) leaves."""

    @abc.abstractmethod
    def critic_loss(self, key: jax.Array, batch: Array, cond: Array | None = None) -> tuple[Scalar, dict[str, Any]]:
        """The critic's objective (minimised over the critic's leaves)."""

    @abc.abstractmethod
    def generator_loss(self, key: jax.Array, batch: Array, cond: Array | None = None) -> tuple[Scalar, dict[str, Any]]:
        """The generator's objective (minimised over the generator's leaves)."""

    def loss(self, key, batch, cond=None):
        """The generator loss (what a validation curve of an adversarial model tracks)."""
        return self.generator_loss(key, batch, cond)
