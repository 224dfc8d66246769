r"""Lotka–Volterra predator–prey dynamics: the canonical gradient-fit test problem of system identification."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

import twinjax as tj
from twinjax.model.dynamics import AbstractDynamics

from ._utils import no_input, param


class LotkaVolterra(AbstractDynamics):
    r"""Lotka–Volterra predator–prey model.

    State ``x = [prey, predator]`` (population sizes, e.g. thousands of individuals); no input (``u`` of shape
    ``(0,)``). Time in the model's unit (e.g. years).

    $$ \dot x = \alpha x - \beta x y, \qquad \dot y = \delta x y - \gamma y. $$

    Every orbit in the positive quadrant is closed: $V(x, y) = \delta x - \gamma \ln x + \beta y - \alpha \ln y$ is
    conserved (:meth:`invariant`), and the coexistence equilibrium is $(x^*, y^*) = (\gamma/\delta, \alpha/\beta)$.

    Arguments:
        alpha: prey growth rate ``α`` (1/time). Default 1.0.
        beta: predation rate ``β`` (1/(predator · time)). Default 0.1.
        gamma: predator death rate ``γ`` (1/time). Default 1.5.
        delta: predator growth per prey eaten ``δ`` (1/(prey · time)). Default 0.075.

    Example:
        ```python
        lv = LotkaVolterra()
        lv.vector_field(0.0, jnp.array([10.0, 5.0]), jnp.zeros(0))   # [5., -3.75]
        ```

    References:
        A. J. Lotka, *Elements of Physical Biology*, 1925; V. Volterra, "Variazioni e fluttuazioni del numero
        d'individui in specie animali conviventi", 1926; J. D. Murray, *Mathematical Biology I*, 3rd ed., 2002, §3.1.
    """

    alpha: Float[ArrayLike, ""] = param(1.0)
    beta: Float[ArrayLike, ""] = param(0.1)
    gamma: Float[ArrayLike, ""] = param(1.5)
    delta: Float[ArrayLike, ""] = param(0.075)

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]
    ) -> Float[Array, " 2"]:
        """``[d prey/dt, d predator/dt]``."""
        no_input(u)
        prey, predator = x[0], x[1]
        dprey = self.alpha * prey - self.beta * prey * predator
        dpredator = self.delta * prey * predator - self.gamma * predator
        return jnp.stack([dprey, dpredator]).astype(x.dtype)

    def invariant(self, x: Float[Array, " 2"]) -> Float[Array, ""]:
        """The conserved quantity ``V = δ x − γ ln x + β y − α ln y`` (for positive populations)."""
        return self.delta * x[0] - self.gamma * jnp.log(x[0]) + self.beta * x[1] - self.alpha * jnp.log(x[1])

    def equilibrium(self) -> Float[Array, " 2"]:
        """The coexistence equilibrium ``(γ/δ, α/β)``."""
        return jnp.stack([self.gamma / self.delta, self.alpha / self.beta])


def _log_populations(t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]) -> Float[Array, " 2"]:
    # a solve driven far from the data by a bad parameter guess may undershoot zero: floor it, so the loss stays finite
    return jnp.log(jnp.maximum(x, 1e-12))


def _populations(t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]) -> Float[Array, " 2"]:
    return x


def lotka_volterra_twin(
    model: LotkaVolterra | None = None,
    *,
    dt: float = 0.5,
    noise_sd: Float[ArrayLike, ""] = 0.1,
    sensor: str = "lognormal",
    x0: tuple[float, float] = (10.0, 5.0),
    x0_sd: float = 0.5,
) -> tj.StateSpaceModel:
    """A Lotka–Volterra twin: both populations counted every ``dt`` with noise.

    Sensors:

    - ``"lognormal"`` (default): ``y = log x + v``, ``v ~ N(0, noise_sd² I)`` — multiplicative noise of relative size
      ``noise_sd`` on the counts, the usual model for population data. The measurements are *log* populations, so a
      Gaussian likelihood (and trajectory least squares) on ``y`` is the log-normal likelihood of the counts.
    - ``"gaussian"``: ``y = x + v``, ``v ~ N(0, noise_sd² I)`` in population units.

    Initial belief ``N(x0, x0_sd² I)``. Default model: :class:`LotkaVolterra` ``()``.

    Raises:
        ValueError: for an unknown ``sensor`` or a non-positive ``noise_sd``.

    Example:
        ```python
        twin = lotka_volterra_twin(noise_sd=0.1)
        path = tj.simulate(twin, jnp.array([10.0, 5.0]), jnp.arange(0.0, 30.0, twin.dt), key=key)
        counts = jnp.exp(path.ys)
        ```
    """
    if sensor not in ("lognormal", "gaussian"):
        raise ValueError(f"`sensor` must be 'lognormal' or 'gaussian', got {sensor!r}.")
    if not isinstance(noise_sd, jax.core.Tracer) and not noise_sd > 0:
        raise ValueError(f"`noise_sd` must be positive, got {noise_sd!r}.")
    fn = _log_populations if sensor == "lognormal" else _populations
    return tj.StateSpaceModel(
        LotkaVolterra() if model is None else model,
        tj.GaussianObservation(fn, noise_sd**2 * jnp.eye(2)),
        tj.Gaussian(jnp.asarray(x0, dtype=float), x0_sd**2 * jnp.eye(2)),
        dt,
    )
