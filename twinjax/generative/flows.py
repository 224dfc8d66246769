r"""Normalizing flows with coupling layers: affine (RealNVP) and rational-quadratic spline (neural spline flows),
optionally conditional, with an exact log-likelihood.

**Change of variables.** An invertible map ``f: x ↦ z`` pushes the data onto a standard-normal base
``p_Z = N(0, I)``; the model density is

    log p(x | c) = log N(f(x; c); 0, I) + log |det ∂f/∂x|,

and sampling runs the inverse, ``x = f⁻¹(z; c)``, ``z ~ N(0, I)``. Training minimises the mean negative
log-likelihood of a batch. ``f = f_L ∘ … ∘ f_1`` is a composition of coupling layers, so the log-determinant is the
sum of the layers'.

**Coupling.** A layer keeps the coordinates of a binary mask ``m`` (``x_A``) and transforms the others (``x_B``)
elementwise with parameters computed from ``x_A`` (and the conditioning ``c``) by an MLP conditioner ``θ``:

    y_A = x_A,    y_B = τ(x_B; θ(x_A, c)).

The Jacobian is block-triangular, so ``log |det| = Σ_{i∈B} log τ'(x_i)``, and the inverse only needs ``τ⁻¹``
(``θ`` is recomputed from ``y_A = x_A``). The masks alternate between layers (odd/even coordinates, and, for
``dim ≥ 3``, the two halves every other pair of layers) so that every coordinate is transformed and conditions the
others. With ``dim = 1`` the single coordinate is transformed by every layer and the conditioner sees only ``c``.

- ``kind="affine"`` (Dinh, Sohl-Dickstein, Bengio 2017): ``τ(x) = x · exp(s) + t`` with a bounded log-scale
  ``s = a · tanh(ŝ / a)`` (``a = max_log_scale``), so a layer can neither blow up nor collapse a coordinate;
  ``log τ' = s``.
- ``kind="spline"`` (Durkan, Bekasov, Murray, Papamakarios 2019): a monotone rational-quadratic spline on
  ``[−B, B]`` with ``K`` bins, identity (linear tails, slope 1) outside. The conditioner gives ``3K − 1`` numbers per
  coordinate: bin widths and heights by a softmax (each at least ``MIN_BIN`` of the interval, so no bin is
  degenerate), knots ``(x_k, y_k)`` by cumulative sums from ``−B`` to ``B``, and the ``K − 1`` interior knot
  derivatives ``δ_k = MIN_DERIVATIVE + softplus(·)`` (``δ_0 = δ_K = 1``, matching the tails; the softplus is shifted
  so that a zero output gives ``δ = 1``). In bin ``k``, with ``w_k, h_k`` its width and height, ``s_k = h_k / w_k``,
  ``ξ = (x − x_k)/w_k ∈ [0, 1]``:

      τ(x) = y_k + h_k [s_k ξ² + δ_k ξ(1−ξ)] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1−ξ)],

      τ'(x) = s_k² [δ_{k+1} ξ² + 2 s_k ξ(1−ξ) + δ_k (1−ξ)²] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1−ξ)]².

  The inverse solves the quadratic ``a ξ² + b ξ + c = 0`` in ``ξ`` for ``y`` in bin ``k`` (located among the
  ``y_k``), with ``a = h_k (s_k − δ_k) + (y − y_k) Δ``, ``b = h_k δ_k − (y − y_k) Δ``, ``c = −s_k (y − y_k)``,
  ``Δ = δ_{k+1} + δ_k − 2 s_k``, by the cancellation-free root ``ξ = 2c / (−b − √(b² − 4ac))``. Points outside
  ``[−B, B]`` are clipped before the spline is evaluated and then passed through unchanged, so neither branch
  produces NaN values or gradients; everything stays finite in float32.

The layers share one structure, so their conditioners are stacked (a leading ``layers`` axis) and the flow is one
``lax.scan`` over layers (reversed for the inverse): compile time does not grow with depth.

References:
    Dinh, Sohl-Dickstein, Bengio (2017), Density estimation using Real NVP, ICLR.
    Durkan, Bekasov, Murray, Papamakarios (2019), Neural spline flows, NeurIPS.
    Papamakarios, Nalisnick, Rezende, Mohamed, Lakshminarayanan (2021), Normalizing flows for probabilistic
    modeling and inference, JMLR 22(57).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._types import Array, ArrayLike, Bool, Float, Scalar
from ._base import AbstractGenerativeModel, check_cond

__all__ = ["CouplingFlow", "coupling_masks", "rational_quadratic_spline"]

MIN_BIN = 1e-3  # smallest bin width and height, as a fraction of the interval [-B, B]
MIN_DERIVATIVE = 1e-3  # smallest knot derivative of the spline
_DERIVATIVE_SHIFT = float(np.log(np.expm1(1.0 - MIN_DERIVATIVE)))  # softplus(shift) = 1 − MIN_DERIVATIVE: 0 → δ = 1
_KINDS = ("affine", "spline")
TRACES = {"transform": 0}  # how often the compiled transform was traced (tests assert no retracing)


# ---------------------------------------------------------------------------------------------------------- spline
def _bins(raw, bound):
    """Bin sizes (summing to 2B, each ≥ 2B · MIN_BIN) and the knots from −B to B."""
    k = raw.shape[-1]
    sizes = 2.0 * bound * (MIN_BIN + (1.0 - MIN_BIN * k) * jax.nn.softmax(raw))
    knots = jnp.concatenate([jnp.full((1,), -bound, raw.dtype), -bound + jnp.cumsum(sizes)])
    knots = knots.at[-1].set(bound)  # exact end, whatever the rounding of the cumulative sum
    return sizes, knots


def rational_quadratic_spline(
    x: Scalar, raw: Float[Array, " p"], bound: float, inverse: bool = False
) -> tuple[Scalar, Scalar]:
    """The monotone rational-quadratic spline of one scalar and ``log |dτ/dx|`` (module docstring).

    Arguments:
        x: the input (``y`` when ``inverse``).
        raw: ``3K − 1`` unconstrained parameters: ``K`` width logits, ``K`` height logits, ``K − 1`` interior
            derivative pre-activations.
        bound: the half-width ``B`` of the spline's interval; identity outside it.
        inverse: evaluate ``τ⁻¹`` instead.

    Returns:
        ``(τ(x), log τ'(x))``, or ``(τ⁻¹(y), log (τ⁻¹)'(y)) = (x, −log τ'(x))`` when ``inverse``.
    """
    k = (raw.shape[0] + 1) // 3
    widths, xk = _bins(raw[:k], bound)
    heights, yk = _bins(raw[k : 2 * k], bound)
    one = jnp.ones((1,), raw.dtype)
    deriv = jnp.concatenate([one, MIN_DERIVATIVE + jax.nn.softplus(raw[2 * k :] + _DERIVATIVE_SHIFT), one])

    inside = jnp.abs(x) <= bound
    xc = jnp.clip(x, -bound, bound)  # the spline branch is evaluated at a safe point, then discarded outside
    knots_in = yk if inverse else xk
    b = jnp.clip(jnp.sum(xc >= knots_in[1:k]), 0, k - 1)
    w, h, x0, y0 = widths[b], heights[b], xk[b], yk[b]
    s = h / w
    d0, d1 = deriv[b], deriv[b + 1]
    slope_gap = d1 + d0 - 2.0 * s

    if inverse:
        dy = xc - y0
        qa = h * (s - d0) + dy * slope_gap
        qb = h * d0 - dy * slope_gap
        qc = -s * dy
        disc = jnp.maximum(qb**2 - 4.0 * qa * qc, jnp.finfo(raw.dtype).tiny)
        xi = jnp.clip(2.0 * qc / (-qb - jnp.sqrt(disc)), 0.0, 1.0)
    else:
        xi = jnp.clip((xc - x0) / w, 0.0, 1.0)
    t = xi * (1.0 - xi)
    denom = s + slope_gap * t
    out = x0 + xi * w if inverse else y0 + h * (s * xi**2 + d0 * t) / denom
    log_deriv = 2.0 * jnp.log(s) + jnp.log(d1 * xi**2 + 2.0 * s * t + d0 * (1.0 - xi) ** 2) - 2.0 * jnp.log(denom)
    log_deriv = -log_deriv if inverse else log_deriv
    return jnp.where(inside, out, x), jnp.where(inside, log_deriv, 0.0)


# ----------------------------------------------------------------------------------------------------------- masks
def coupling_masks(dim: int, layers: int) -> np.ndarray:
    """``(layers, dim)`` bools, ``True`` on the coordinates a layer keeps (conditions on).

    Odd/even coordinates alternate; for ``dim ≥ 3`` every other pair of layers uses the two halves instead, so
    coordinates far apart in index also meet. With ``dim = 1`` nothing is kept: each layer transforms the coordinate
    with parameters from the conditioning alone.
    """
    i = np.arange(dim)
    rows = []
    for layer in range(layers):
        if dim == 1:
            rows.append(np.zeros(1, bool))
        elif dim >= 3 and (layer // 2) % 2 == 1:
            rows.append((i < dim // 2) ^ (layer % 2 == 1))
        else:
            rows.append((i + layer) % 2 == 0)
    return np.stack(rows)


# ------------------------------------------------------------------------------------------------------------ flow
def _stacked_mlps(key, layers, in_size, out_size, hidden, depth):
    """``layers`` MLPs stacked on a leading axis, with equinox's default initialisation (weights and biases
    ``U(−1/√fan_in, 1/√fan_in)``), drawn in NumPy from the bits of ``key``: initialising with ``jax.random`` compiles a
    generator kernel per parameter shape, seconds per flow configuration on a CPU. A traced ``key`` (a flow built
    under ``jit``/``vmap``) falls back to ``jax.random``."""
    mlp = eqx.filter_eval_shape(eqx.nn.MLP, in_size, out_size, hidden, depth, activation=jax.nn.silu, key=key)
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    dtype = jnp.zeros(()).dtype  # the default float type (float64 under x64)
    parts = [(lin, part) for part in ("weight", "bias") for lin in mlp.layers]
    if isinstance(bits, jax.core.Tracer):
        keys = jax.random.split(key, len(parts))
        draw = [jax.random.uniform(k, (layers, *getattr(lin, part).shape), dtype, -1.0, 1.0)
                for k, (lin, part) in zip(keys, parts)]  # fmt: skip
    else:
        rng = np.random.default_rng(np.asarray(bits).ravel().tolist())
        draw = [jnp.asarray(rng.uniform(-1.0, 1.0, (layers, *getattr(lin, part).shape)), dtype) for lin, part in parts]
    new = [u / np.sqrt(lin.in_features) for u, (lin, _) in zip(draw, parts)]
    return eqx.tree_at(lambda m: [lin.weight for lin in m.layers] + [lin.bias for lin in m.layers], mlp, new)


def _check_int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise ValueError(f"CouplingFlow: `{name}` must be an int >= {lo}, got {v!r}")


class CouplingFlow(AbstractGenerativeModel):
    """A normalizing flow of ``L`` coupling layers on ``R^dim`` with a standard-normal base (module docstring).

    ``forward`` is the normalizing direction ``x ↦ z``; ``inverse`` the generative one ``z ↦ x``.

    Arguments:
        dim: dimension of ``x``.
        key: PRNG key of the conditioners' initialisation.
        layers: number of coupling layers ``L``.
        hidden: width of each conditioner MLP.
        depth: number of hidden layers of each conditioner MLP.
        kind: ``"affine"`` or ``"spline"``.
        bins: number of spline bins ``K`` (``kind="spline"``).
        bound: half-width ``B`` of the spline interval (identity outside; data units).
        cond_dim: dimension of the conditioning input ``c`` fed to every conditioner (0: unconditional).
        max_log_scale: the bound ``a`` of the affine log-scale.

    Raises:
        ValueError: a non-positive size, an unknown ``kind``, ``bins`` too many for the minimum bin size.

    Example:
        >>> x = twinjax.generative.datasets.two_moons(jax.random.key(0), 20_000)
        >>> flow = CouplingFlow(2, jax.random.key(1), layers=8, hidden=64, kind="spline", bins=8, bound=4.0)
        >>> res = twinjax.generative.train(flow, x, optimizer=optax.adam(1e-3), steps=5000, key=jax.random.key(2))
        >>> res.model.log_prob(x[:5]), res.model.sample(jax.random.key(3), 100)
    """

    has_log_prob = True
    conditioners: eqx.nn.MLP  # stacked: every array leaf has a leading `layers` axis
    masks: Bool[Array, "layers dim"]
    dim: int = eqx.field(static=True)
    cond_dim: int = eqx.field(static=True)
    layers: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    bins: int = eqx.field(static=True)
    bound: float = eqx.field(static=True)
    max_log_scale: float = eqx.field(static=True)

    def __init__(self, dim: int, key: jax.Array, layers: int = 8, hidden: int = 64, *, depth: int = 2,
                 kind: str = "affine", bins: int = 8, bound: float = 4.0, cond_dim: int = 0,
                 max_log_scale: float = 3.0):  # fmt: skip
        _check_int(dim, "dim", 1)
        _check_int(layers, "layers", 1)
        _check_int(hidden, "hidden", 1)
        _check_int(depth, "depth", 0)
        _check_int(cond_dim, "cond_dim", 0)
        _check_int(bins, "bins", 1)
        if kind not in _KINDS:
            raise ValueError(f"CouplingFlow: `kind` must be one of {_KINDS}, got {kind!r}")
        if bins * MIN_BIN >= 1.0:
            raise ValueError(f"CouplingFlow: `bins` must be < {int(1 / MIN_BIN)} (minimum bin size), got {bins}")
        if not bound > 0:
            raise ValueError(f"CouplingFlow: `bound` must be positive, got {bound}")
        if not max_log_scale > 0:
            raise ValueError(f"CouplingFlow: `max_log_scale` must be positive, got {max_log_scale}")
        self.dim, self.cond_dim, self.layers, self.kind = int(dim), int(cond_dim), int(layers), kind
        self.bins, self.bound, self.max_log_scale = int(bins), float(bound), float(max_log_scale)
        out = dim * (2 if kind == "affine" else 3 * bins - 1)
        self.conditioners = _stacked_mlps(key, layers, dim + cond_dim, out, hidden, depth)
        self.masks = jnp.asarray(coupling_masks(dim, layers))

    # -- one sample through one layer
    def _layer(self, mlp, mask, x, cond, inverse):
        keep = jnp.where(mask, x, 0.0)  # == the layer's output on the kept coordinates, in either direction
        inp = keep if cond is None else jnp.concatenate([keep, cond.astype(x.dtype)])
        raw = mlp(inp).reshape(self.dim, -1).astype(x.dtype)
        if self.kind == "affine":
            a = self.max_log_scale
            log_s = a * jnp.tanh(raw[:, 0] / a)
            y = (x - raw[:, 1]) * jnp.exp(-log_s) if inverse else x * jnp.exp(log_s) + raw[:, 1]
            log_d = -log_s if inverse else log_s
        else:
            spline = jax.vmap(rational_quadratic_spline, in_axes=(0, 0, None, None))
            y, log_d = spline(x, raw, self.bound, inverse)
        return jnp.where(mask, x, y), jnp.sum(jnp.where(mask, 0.0, log_d))

    def _transform_one(self, x, cond, inverse):
        params, static = eqx.partition(self.conditioners, eqx.is_array)

        def body(carry, layer):
            x, logdet = carry
            p, mask = layer
            y, ld = self._layer(eqx.combine(p, static), mask, x, cond, inverse)
            return (y, logdet + ld), None

        init = (x, jnp.zeros((), x.dtype))
        (y, logdet), _ = jax.lax.scan(body, init, (params, self.masks), reverse=inverse)
        return y, logdet

    # -- argument checks (trace time)
    def _check_x(self, x, name):
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"CouplingFlow: `{name}` must have shape (n, {self.dim}), got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"CouplingFlow: `{name}` must be a floating-point array, got dtype {x.dtype}")
        return x

    def _cond(self, cond, n):
        return check_cond("CouplingFlow", cond, n, self.cond_dim)

    # -- public API
    def forward(self, x: ArrayLike, cond: ArrayLike | None = None) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """The normalizing direction: ``z = f(x; c)`` and ``log |det ∂z/∂x|`` for each row of ``x`` ``(n, dim)``;
        ``cond`` ``(n, cond_dim)`` or ``(cond_dim,)``.

        Raises:
            ValueError: ``x`` or ``cond`` of the wrong shape; ``cond`` missing (conditional) or given (unconditional).
        """
        x = self._check_x(x, "x")
        return _transform(self, x, self._cond(cond, x.shape[0]), False)

    def inverse(self, z: ArrayLike, cond: ArrayLike | None = None) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """The generative direction: ``x = f⁻¹(z; c)`` and ``log |det ∂x/∂z|`` for each row of ``z`` ``(n, dim)``."""
        z = self._check_x(z, "z")
        return _transform(self, z, self._cond(cond, z.shape[0]), True)

    def log_prob(self, x: ArrayLike, cond: ArrayLike | None = None) -> Float[Array, " n"]:
        """Exact ``log p(x | c) = log N(f(x; c); 0, I) + log |det ∂f/∂x|`` of each row of ``x`` ``(n, dim)``."""
        z, logdet = self.forward(x, cond)
        return _std_normal_log_prob(z) + logdet

    def sample(self, key: jax.Array, n: int, cond: ArrayLike | None = None) -> Float[Array, "n d"]:
        """``n`` draws ``x = f⁻¹(z; c)``, ``z ~ N(0, I)``; ``cond`` ``(n, cond_dim)`` or ``(cond_dim,)``."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"CouplingFlow.sample: `n` must be a positive int, got {n!r}")
        dtype = jax.tree.leaves(self.conditioners)[0].dtype
        z = jax.random.normal(key, (int(n), self.dim), dtype)
        return self.inverse(z, cond)[0]

    def loss(self, key: jax.Array, batch: ArrayLike, cond: ArrayLike | None = None) -> tuple[Scalar, dict[str, Any]]:
        """The mean negative log-likelihood of ``batch`` ``(n, dim)`` (``key`` unused: the objective is exact)."""
        nll = -jnp.mean(self.log_prob(batch, cond))
        return nll, {"nll": nll}


def _std_normal_log_prob(z):
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * float(np.log(2.0 * np.pi))


@eqx.filter_jit
def _transform(flow, x, cond, inverse):
    TRACES["transform"] += 1
    return jax.vmap(flow._transform_one, in_axes=(0, None if cond is None else 0, None))(x, cond, inverse)
