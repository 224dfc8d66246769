"""Table-valued parameters: a look-up table that can stand in for a float field of a physical model.

Battery parameters (resistances, capacitances, the open-circuit voltage, the entropic coefficient) are usually measured
on a grid of state of charge, temperature and current. :class:`Lookup` holds such a table as a pytree (grid and values
are arrays, so ``jax.grad`` reaches the tabulated values) and evaluates it inside ``jit``/``vmap``/``grad``.
"""

from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

# Canonical axis order of a table: PyBaMM's ECM tables use (temperature, current, SoC) and (OCV, temperature), both of
# which are sub-sequences of this order, so PyBaMM data reshape without transposition.
AXES = ("ocv_V", "temperature_K", "current_A", "soc")
_METHODS = ("linear", "pchip")


def _interval(grid: Float[Array, " n"], q: Float[ArrayLike, ""]):
    """Index ``i`` of the grid interval used for ``q`` (end intervals for points outside) and the local coordinate."""
    # Counting knots <= q (one vectorised comparison) is cheaper to compile than a binary search for short grids.
    i = jnp.clip(jnp.sum(grid <= q) - 1, 0, grid.shape[0] - 2)
    lo, hi = grid[i], grid[i + 1]
    return i, lo, hi - lo


def _pchip_slopes(x: Float[Array, " n"], y: Float[Array, " n"]) -> Float[Array, " n"]:
    """Fritsch–Carlson (monotone) derivatives at the knots, with SciPy's ``PchipInterpolator`` end conditions."""
    h = jnp.diff(x)
    delta = jnp.diff(y) / h
    if x.shape[0] == 2:
        return jnp.stack([delta[0], delta[0]])
    d0, d1 = delta[:-1], delta[1:]
    w1 = 2.0 * h[1:] + h[:-1]
    w2 = h[1:] + 2.0 * h[:-1]
    same_sign = d0 * d1 > 0
    # Double-where so the harmonic mean's gradient stays finite where a secant slope is zero.
    s0 = jnp.where(same_sign, d0, 1.0)
    s1 = jnp.where(same_sign, d1, 1.0)
    interior = jnp.where(same_sign, (w1 + w2) / (w1 / s0 + w2 / s1), 0.0)

    def end(h0, h1, m0, m1):
        d = ((2.0 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        d = jnp.where(jnp.sign(d) != jnp.sign(m0), 0.0, d)
        return jnp.where((jnp.sign(m0) != jnp.sign(m1)) & (jnp.abs(d) > 3.0 * jnp.abs(m0)), 3.0 * m0, d)

    first = end(h[0], h[1], delta[0], delta[1])
    last = end(h[-1], h[-2], delta[-1], delta[-2])
    return jnp.concatenate([first[None], interior, last[None]])


class Lookup(eqx.Module):
    r"""A parameter tabulated on a regular grid, evaluated as ``lookup(soc, temperature_K, current_A)``.

    A table over ``d`` of the inputs ``ocv_V``, ``temperature_K``, ``current_A`` and ``soc`` (in that axis order) is
    interpolated multilinearly, and extrapolated linearly outside the grid — the behaviour of PyBaMM's ``Interpolant``
    (``interpolator="linear"``, ``extrapolate=True``) and of ``scipy.interpolate.RegularGridInterpolator(...,
    fill_value=None)``. One-dimensional tables may instead use ``method="pchip"``: the monotone piecewise-cubic Hermite
    interpolant of Fritsch and Carlson (continuously differentiable, no overshoot, so a monotone open-circuit-voltage
    table stays monotone), extrapolated linearly with the end slopes.

    Along one axis with knots $g_0 < \dots < g_{n-1}$ and $q \in [g_i, g_{i+1}]$ the linear rule is

    $$ f(q) = (1 - w) f_i + w f_{i+1}, \qquad w = \frac{q - g_i}{g_{i+1} - g_i}, $$

    applied axis by axis; $w < 0$ or $w > 1$ in the end intervals gives linear extrapolation.

    Arguments:
        values: tabulated values, shape ``(n_1, ..., n_d)``, one axis per given grid in the order of ``AXES``.
        ocv_V: knots of the open-circuit-voltage axis (V), strictly increasing, or ``None`` if the table does not
            depend on it.
        temperature_K: knots of the temperature axis (K), or ``None``.
        current_A: knots of the current axis (A, positive = discharge), or ``None``.
        soc: knots of the state-of-charge axis (dimensionless, 0–1), or ``None``.
        method: ``"linear"`` (any number of axes) or ``"pchip"`` (one axis only).

    Example:
        ```python
        r0 = Lookup(jnp.array([0.012, 0.010, 0.011]), soc=jnp.array([0.0, 0.5, 1.0]))
        r0(0.25, 298.15, 5.0)  # 0.011
        ```

    References:
        F. N. Fritsch and R. E. Carlson, "Monotone piecewise cubic interpolation", SIAM J. Numer. Anal. 17(2), 1980.
        PyBaMM ``pybamm.Interpolant`` (https://github.com/pybamm-team/PyBaMM).
    """

    values: Float[Array, "..."]
    grids: tuple[Float[Array, " _"], ...]
    inputs: tuple[str, ...] = eqx.field(static=True)
    method: str = eqx.field(static=True)

    def __init__(
        self,
        values: Float[ArrayLike, "..."],
        *,
        ocv_V: Float[ArrayLike, " _"] | None = None,
        temperature_K: Float[ArrayLike, " _"] | None = None,
        current_A: Float[ArrayLike, " _"] | None = None,
        soc: Float[ArrayLike, " _"] | None = None,
        method: str = "linear",
    ):
        given = dict(ocv_V=ocv_V, temperature_K=temperature_K, current_A=current_A, soc=soc)
        self.inputs = tuple(name for name in AXES if given[name] is not None)
        self.grids = tuple(jnp.asarray(given[name], dtype=float) for name in self.inputs)
        self.values = jnp.asarray(values, dtype=float)
        self.method = method
        if not self.inputs:
            raise ValueError("Lookup needs at least one grid (ocv_V, temperature_K, current_A or soc); got none.")
        if method not in _METHODS:
            raise ValueError(f"Lookup method must be one of {_METHODS}; got method={method!r}.")
        if method == "pchip" and len(self.inputs) != 1:
            raise ValueError(f"method='pchip' needs a one-dimensional table; got axes {self.inputs}.")
        expected = tuple(g.shape[0] for g in self.grids)
        if self.values.shape != expected:
            raise ValueError(
                f"Lookup values must have shape {expected} (grid lengths of {self.inputs}); got {self.values.shape}."
            )
        for name, g in zip(self.inputs, self.grids):
            if g.ndim != 1 or g.shape[0] < 2:
                raise ValueError(f"Lookup grid {name} must be 1-D with at least 2 knots; got shape {g.shape}.")

    def evaluate(self, inputs: Mapping[str, Float[ArrayLike, ""]]) -> Float[Array, ""]:
        """Interpolate at the scalar point ``inputs`` (a mapping from axis name to value; extra names are ignored)."""
        missing = [name for name in self.inputs if name not in inputs]
        if missing:
            raise ValueError(f"Lookup over {self.inputs} needs inputs {missing}; got {sorted(inputs)}.")
        if self.method == "pchip":
            return self._pchip(jnp.asarray(inputs[self.inputs[0]]))
        values = self.values
        for name, grid in zip(self.inputs, self.grids):
            q = jnp.asarray(inputs[name])
            i, lo, width = _interval(grid, q)
            w = (q - lo) / width
            # Hat-function weights contracted by a broadcast multiply-and-sum instead of gathering the two neighbouring
            # slabs: the reverse pass is then dense (no scatter-add), which compiles much faster inside solver loops.
            knots = jnp.arange(grid.shape[0])
            hat = jnp.where(knots == i, 1.0 - w, 0.0) + jnp.where(knots == i + 1, w, 0.0)
            # Contract the leading axis; later axes move forward, so the next grid again indexes axis 0.
            values = jnp.sum(hat.reshape((-1,) + (1,) * (values.ndim - 1)) * values, axis=0)
        return values

    def _pchip(self, q: Float[Array, ""]) -> Float[Array, ""]:
        x, y = self.grids[0], self.values
        d = _pchip_slopes(x, y)
        i, lo, h = _interval(x, q)
        # Unclipped: outside the grid the cubic is discarded below; clipping would halve the slope at the end knots.
        t = (q - lo) / h
        t2, t3 = t * t, t * t * t
        cubic = (
            (2 * t3 - 3 * t2 + 1) * y[i]
            + (t3 - 2 * t2 + t) * h * d[i]
            + (-2 * t3 + 3 * t2) * y[i + 1]
            + (t3 - t2) * h * d[i + 1]
        )
        below = y[0] + d[0] * (q - x[0])
        above = y[-1] + d[-1] * (q - x[-1])
        return jnp.where(q < x[0], below, jnp.where(q > x[-1], above, cubic))

    def __call__(
        self,
        soc: Float[ArrayLike, ""],
        temperature_K: Float[ArrayLike, ""],
        current_A: Float[ArrayLike, ""],
        ocv_V: Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, ""]:
        """The tabulated value at state of charge ``soc``, temperature ``temperature_K`` (K), current ``current_A``
        (A, positive = discharge) and, for tables over it, open-circuit voltage ``ocv_V`` (V)."""
        inputs = dict(soc=soc, temperature_K=temperature_K, current_A=current_A)
        if ocv_V is not None:
            inputs["ocv_V"] = ocv_V
        return self.evaluate(inputs)


def evaluate_parameter(
    parameter,
    soc: Float[ArrayLike, ""],
    temperature_K: Float[ArrayLike, ""],
    current_A: Float[ArrayLike, ""],
    ocv_V: Float[ArrayLike, ""] | None = None,
) -> Float[Array, ""]:
    """Value of a model parameter that is either a constant (float or scalar array) or a :class:`Lookup`."""
    if isinstance(parameter, Lookup):
        return parameter(soc, temperature_K, current_A, ocv_V)
    return jnp.asarray(parameter)


def as_parameter(value):
    """Field converter: a :class:`Lookup` (or ``None``) passes through; a number becomes a JAX array so that
    ``eqx.filter_grad`` sees it. Python floats become weakly-typed arrays, which adopt the state's precision."""
    if value is None or isinstance(value, eqx.Module):
        return value
    arr = jnp.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(float)
    return arr


Parameter = Float[ArrayLike, ""] | Lookup
"""A model parameter: a constant (float or scalar array) or a :class:`Lookup` table."""
