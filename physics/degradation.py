r"""Stochastic degradation: a Wiener process with drift observed at discrete times, with a failure threshold."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import twinjax as tj
from twinjax.model.dynamics import AbstractDiscreteDynamics

from ._utils import param


class Degradation(AbstractDiscreteDynamics):
    r"""Linear-drift Wiener degradation of a health (wear) index, sampled every ``delta``.

    State ``x`` (shape ``(n,)``; usually ``n = 1``: the degradation level, in the units of the failure threshold),
    control ignored (pass shape ``(0,)``).

    $$ x_k = x_{k-1} + \alpha \Delta + \eta_k, \qquad \eta_k \sim N(0, \sigma^2 \Delta) \text{ i.i.d.}, $$

    the exact discretisation of $dX = \alpha\, dt + \sigma\, dW$. The unit fails at the first passage
    $T = \min\{k \Delta : x_k \ge x_{\mathrm{fail}}\}$. In continuous time $T$ is inverse-Gaussian with mean
    $(x_{\mathrm{fail}} - x_0)/\alpha$ and shape $(x_{\mathrm{fail}} - x_0)^2/\sigma^2$ (the basis of Wiener-process
    remaining-useful-life estimates); on the grid it is later by the overshoot.

    :meth:`transition` is the deterministic part; the noise ``η`` is the twin's additive process noise with variance
    :meth:`process_noise_var` (set it on the ``StateSpaceModel``, see :func:`default_twin`).

    Arguments:
        rate: drift ``α`` (index units per unit time). Default 0.01.
        delta: time between samples ``Δ`` (time units). Default 1.
        noise_sd: diffusion ``σ`` (index units per √time). Default 0.05.
        failure_threshold: failure level ``x_fail`` (index units). Default 1.

    Example:
        ```python
        model = Degradation(rate=0.02)
        paths = model.simulate_paths(jax.random.key(0), 0.0, n_steps=200, n_paths=64)
        model.first_passage_time(paths)  # (64,) failure times, inf if no failure within the horizon
        ```

    References:
        X.-S. Si, W. Wang, C.-H. Hu and D.-H. Zhou, "Remaining useful life estimation – a review on the statistical
        data driven approaches", Eur. J. Oper. Res. 213(1), 2011, §4.1 (Wiener-process models).
    """

    rate: Float[ArrayLike, ""] = param(0.01)
    delta: Float[ArrayLike, ""] = param(1.0)
    noise_sd: Float[ArrayLike, ""] = param(0.05)
    failure_threshold: Float[ArrayLike, ""] = param(1.0)

    def transition(
        self, t: Float[ArrayLike, ""], x: Float[Array, " state"], u: Float[Array, " control"]
    ) -> Float[Array, " state"]:
        """Deterministic part ``x + α Δ`` of one step."""
        return (x + self.rate * self.delta).astype(x.dtype)

    def process_noise_var(self) -> Float[Array, ""]:
        """Variance ``σ² Δ`` of the per-step noise ``η_k``."""
        return jnp.asarray(self.noise_sd**2 * self.delta)

    def simulate_paths(
        self, key: PRNGKeyArray, x0: Float[ArrayLike, ""], n_steps: int, n_paths: int
    ) -> Float[Array, "path step"]:
        """Sample ``n_paths`` independent scalar paths ``x_0, ..., x_{n_steps}`` (``n_steps + 1`` values each).

        The noise is drawn in one call and accumulated with ``cumsum`` (the closed form of the recursion).
        ``n_steps`` and ``n_paths`` set shapes, so they are static under ``jit`` (``eqx.filter_jit`` treats Python
        ints as static).
        """
        x0 = jnp.asarray(x0)
        dtype = jnp.result_type(x0, self.rate, float)
        eta = jnp.sqrt(self.process_noise_var()) * jax.random.normal(key, (n_paths, n_steps), dtype)
        increments = self.rate * self.delta + eta
        walk = jnp.cumsum(increments, axis=1)
        start = jnp.broadcast_to(x0.astype(dtype), (n_paths, 1))
        return jnp.concatenate([start, start + walk], axis=1)

    def first_passage_index(self, paths: Float[Array, "*path step"]) -> Float[Array, "*path"]:
        """Index ``k`` of the first sample with ``x_k ≥ failure_threshold`` along the last axis (``inf`` if none)."""
        crossed = paths >= self.failure_threshold
        first = jnp.argmax(crossed, axis=-1)
        return jnp.where(jnp.any(crossed, axis=-1), first.astype(paths.dtype), jnp.inf)

    def first_passage_time(self, paths: Float[Array, "*path step"]) -> Float[Array, "*path"]:
        """Failure time ``k Δ`` of each path (``paths[..., k]`` sampled at ``k Δ``); ``inf`` if it never fails."""
        return self.first_passage_index(paths) * self.delta

    def mean_first_passage_time(self, x0: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Continuous-time mean failure time ``(x_fail − x0)/α`` from level ``x0`` (a lower bound on the grid)."""
        return (self.failure_threshold - jnp.asarray(x0)) / self.rate


def _level(t: Float[ArrayLike, ""], x: Float[Array, " 1"], u: Float[Array, " control"]) -> Float[Array, " 1"]:
    return x


def degradation_twin(
    model: Degradation | None = None, *, measurement_sd: float = 0.02, x0_sd: float = 0.01
) -> tj.StateSpaceModel:
    """A degradation twin: the level measured with Gaussian noise at every step, process noise ``σ² Δ``, ``dt = Δ``,
    no input (``u`` of shape ``(0,)``). Initial belief ``N(0, x0_sd²)``."""
    model = Degradation() if model is None else model
    return tj.StateSpaceModel(
        model,
        tj.GaussianObservation(_level, jnp.array([[measurement_sd**2]])),
        tj.Gaussian(jnp.zeros(1), jnp.array([[x0_sd**2]])),
        model.delta,
        process_noise=jnp.reshape(model.process_noise_var(), (1, 1)),
        control_dim=0,
    )
