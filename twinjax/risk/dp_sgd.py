r"""Differentially private stochastic gradient descent (DP-SGD) as an optax gradient transformation, with Poisson
sampling of the batches.

**Algorithm** (Abadi et al. 2016). At each step a batch ``B`` is drawn by *Poisson sampling*: every record of the
``N`` is included independently with probability ``q`` (:func:`poisson_batch`). Each example's gradient
``g_i = ∇_θ ℓ(θ, x_i)`` — the whole parameter pytree taken as one vector — is clipped to L2 norm at most ``C``
(:func:`clip_per_example`), the clipped gradients are summed, Gaussian noise of standard deviation ``σ C`` is added to
every coordinate, and the sum is divided by the *expected* batch size ``q N`` (:func:`dp_aggregate`):

$$ \bar g = \frac{1}{qN}\Big(\sum_{i \in B} g_i \min\big(1, \tfrac{C}{\lVert g_i \rVert_2}\big)
   + \mathcal{N}(0, \sigma^2 C^2 I)\Big). $$

:func:`dp_sgd` wraps this as an ``optax.GradientTransformationExtraArgs`` whose ``update`` takes the per-example
gradients (leading axis = examples, padded to a fixed size, :func:`per_example_grads`) and the padding ``mask`` as an
extra argument; chain it first with any optimiser, ``optax.chain(dp_sgd(C, σ, q N, key), optax.sgd(lr))``
(``optax.chain`` forwards extra arguments to the transformations that accept them). Its state holds the PRNG key,
split at every step: the same key gives the same updates.

**Privacy unit.** Adding or removing one *sampled unit* changes the clipped sum by at most ``C`` in L2 norm, so the
guarantee is for one unit: one record when records are sampled one by one. When records are grouped per operator
(one operator's whole log is one example of ``batch``, its gradient the gradient of the loss over the whole log) and
sampling is per operator, the unit — what the guarantee protects — is one operator's whole log. Records of the same
person spread over several sampled units are *not* protected as one: group them first.

**Why Poisson sampling and the expected batch size.** The Rényi-DP accountant of the sampled Gaussian mechanism
(Mironov, Talwar, Zhang 2019) — and the ``(ε, δ)`` reported from it — assumes that each step's batch is a Poisson
sample with rate ``q`` and that the released quantity is the noisy clipped *sum* (any fixed rescaling is
post-processing). Dividing by the realised batch size ``|B|`` would make the scale depend on the data set's
membership (``|B|`` changes by one when a record is added), a release the analysis does not cover; dividing by the
fixed ``q N`` does not. Shuffled fixed-size batches are a different mechanism, which the Poisson analysis can
under-state (Chua et al. 2024). For ``jit`` the sample is returned as a fixed-size padded index array
plus a mask; ``max_batch`` is chosen by :func:`max_batch_for` so that a draw larger than it has probability below
``tail`` (1e-9 by default: the binomial upper quantile), and :func:`poisson_batch` raises (``eqx.error_if``) on such a
draw rather than truncating it silently, since a truncated sample is no longer Poisson.

**Comparison with optax.** ``optax.contrib.differentially_private_aggregate`` clips and noises the same way but
divides by the realised (padded) batch size ``updates.shape[0]`` and has no mask; with Poisson sampling and padding
use :func:`dp_sgd`. The privacy accounting (``ε`` from ``q``, ``σ``, the number of steps and ``δ``) lives in
:mod:`twinjax.risk.privacy`.

References:
    M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar, L. Zhang, "Deep learning with
    differential privacy", CCS 2016, arXiv:1607.00133.
    I. Mironov, K. Talwar, L. Zhang, "Rényi differential privacy of the sampled Gaussian mechanism",
    arXiv:1908.10530, 2019.
    A. Yousefpour et al., "Opacus: user-friendly differential privacy library in PyTorch", arXiv:2109.12298, 2021
    (``poisson_sampling=True``; the noisy sum is divided by ``expected_batch_size``).
    L. Chua, B. Ghazi, P. Kamath, R. Kumar, P. Manurangsi, A. Sinha, C. Zhang, "How private are DP-SGD
    implementations?", ICML 2024, arXiv:2403.17673.
    optax, ``optax.contrib.differentially_private_aggregate``.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Real

from .._checks import is_concrete
from .._types import Array, ArrayLike, Bool, Float, Int, Key, PyTree

__all__ = [
    "DPSGDState",
    "clip_and_noise",
    "clip_per_example",
    "dp_aggregate",
    "dp_sgd",
    "max_batch_for",
    "per_example_grads",
    "per_example_value_and_grads",
    "poisson_batch",
]


def _check_scalar(value, name: str, *, positive: bool) -> None:
    """Raise a ``ValueError`` naming ``name`` if a concrete ``value`` is not a finite scalar ``> 0`` (or ``≥ 0``)."""
    if not is_concrete(value):
        return
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}.")
    v = float(value)
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ValueError(f"`{name}` must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}.")


def _check_dp_args(l2_norm_clip, noise_multiplier, expected_batch_size) -> None:
    _check_scalar(l2_norm_clip, "l2_norm_clip", positive=True)
    _check_scalar(noise_multiplier, "noise_multiplier", positive=False)
    _check_scalar(expected_batch_size, "expected_batch_size", positive=True)


def _as_key(seed_or_key, name: str) -> Key:
    """A typed PRNG key from an ``int`` seed, a typed key or a raw ``uint32[2]`` key."""
    if isinstance(seed_or_key, (int, np.integer)) and not isinstance(seed_or_key, bool):
        return jax.random.key(int(seed_or_key))
    if isinstance(seed_or_key, jax.Array) and jnp.issubdtype(seed_or_key.dtype, jax.dtypes.prng_key):
        if seed_or_key.ndim != 0:
            raise ValueError(f"`{name}` must be a single PRNG key, got shape {seed_or_key.shape}.")
        return seed_or_key
    if isinstance(seed_or_key, (jax.Array, np.ndarray)) and seed_or_key.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(seed_or_key, jnp.uint32))
    raise ValueError(f"`{name}` must be an int seed or a PRNG key, got {seed_or_key!r}.")


def _batch_size(tree, name: str) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"`{name}` has no array leaves.")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every leaf of `{name}` must share one leading (example) axis, got leading sizes {sizes}.")
    return sizes.pop()


def _as_mask(mask, size: int) -> Bool[Array, " example"]:
    if mask is None:
        return jnp.ones((size,), bool)
    mask = jnp.asarray(mask)
    if mask.shape != (size,):
        raise ValueError(f"`mask` must have shape ({size},) (one flag per example), got {mask.shape}.")
    return mask.astype(bool)


def _where_rows(mask: Bool[Array, " example"], x: Array) -> Array:
    """``x`` with the rows (leading axis) where ``mask`` is False set to 0 — ``where``, not a product, so a NaN in a
    padding row cannot leak into the sum."""
    return jnp.where(_rows(mask, x), x, jnp.zeros((), x.dtype))


def _rows(v: Array, x: Array) -> Array:
    """The ``(B,)`` vector ``v`` shaped to broadcast against the rows (leading axis) of ``x``."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def _norms_and_scale(grads_per_example, l2_norm_clip) -> tuple[Array, Array]:
    """Per-example L2 norms of the whole pytree and the clipping factors ``min(1, C / ‖g_i‖)``."""
    leaves = jax.tree.leaves(grads_per_example)
    norms = jnp.sqrt(sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in leaves))
    # C / ‖g‖ only where the norm exceeds C: no division by a zero norm
    scale = jnp.where(norms > l2_norm_clip, l2_norm_clip / jnp.where(norms > 0, norms, 1), 1)
    return norms, scale


def per_example_grads(
    loss_fn: Callable[[PyTree, PyTree], Float[ArrayLike, ""]],
    params: PyTree,
    batch: PyTree,
    mask: Bool[ArrayLike, " example"] | None = None,
) -> PyTree:
    r"""The gradient of ``loss_fn`` with respect to ``params`` for each example of ``batch``:
    ``g_i = ∇_θ loss_fn(θ, x_i)``, ``eqx.filter_vmap`` of ``eqx.filter_grad`` over the leading axis of ``batch``.

    Arguments:
        loss_fn: ``loss_fn(params, example) -> scalar``, the loss of *one* example (a pytree of ``batch``'s leaves
            without their leading axis).
        params: the parameters, a pytree; gradients are taken with respect to its floating-point array leaves
            (other leaves, e.g. an equinox module's activation functions, get ``None``).
        batch: a pytree whose leaves share a leading example axis of size ``B``.
        mask: optional ``(B,)`` booleans; the gradients of masked-out (padding) examples are set to 0.

    Returns:
        A pytree like ``params`` whose leaves have an extra leading axis of size ``B``.

    Example:
        >>> loss = lambda w, xy: (xy[0] @ w - xy[1]) ** 2
        >>> g = per_example_grads(loss, jnp.ones(3), (jnp.ones((5, 3)), jnp.zeros(5)))  # g.shape == (5, 3)
    """
    size = _batch_size(batch, "batch")
    grads = eqx.filter_vmap(eqx.filter_grad(loss_fn), in_axes=(None, 0))(params, batch)
    if mask is None:
        return grads
    m = _as_mask(mask, size)
    return jax.tree.map(lambda g: _where_rows(m, g), grads)


def per_example_value_and_grads(
    loss_fn: Callable[[PyTree, PyTree], Float[ArrayLike, ""]],
    params: PyTree,
    batch: PyTree,
    mask: Bool[ArrayLike, " example"] | None = None,
) -> tuple[Float[Array, " example"], PyTree]:
    r"""Each example's loss and gradient in one pass: ``(loss_fn(θ, x_i), ∇_θ loss_fn(θ, x_i))``, as
    :func:`per_example_grads` but from ``eqx.filter_value_and_grad``, so that a training loop that logs the batch
    loss does not run the forward pass twice.

    Arguments:
        loss_fn: ``loss_fn(params, example) -> scalar``, the loss of *one* example.
        params: the parameters, a pytree (gradients with respect to its floating-point array leaves).
        batch: a pytree whose leaves share a leading example axis of size ``B``.
        mask: optional ``(B,)`` booleans; masked-out (padding) examples get loss 0 and gradient 0.

    Returns:
        ``(losses, grads)``: the ``(B,)`` losses and a pytree like ``params`` with a leading axis of size ``B``.

    Example:
        >>> loss = lambda w, xy: (xy[0] @ w - xy[1]) ** 2
        >>> values, g = per_example_value_and_grads(loss, jnp.ones(3), (jnp.ones((5, 3)), jnp.zeros(5)))
    """
    size = _batch_size(batch, "batch")
    values, grads = eqx.filter_vmap(eqx.filter_value_and_grad(loss_fn), in_axes=(None, 0))(params, batch)
    if mask is None:
        return values, grads
    m = _as_mask(mask, size)
    return _where_rows(m, values), jax.tree.map(lambda g: _where_rows(m, g), grads)


def clip_per_example(
    grads_per_example: PyTree, l2_norm_clip: Real[ArrayLike, ""]
) -> tuple[PyTree, Float[Array, " example"]]:
    r"""Clip each example's gradient, the whole pytree as one vector, to L2 norm at most ``C``:
    ``g_i · min(1, C / ‖g_i‖₂)`` (a zero gradient stays zero).

    Arguments:
        grads_per_example: a pytree whose leaves share a leading example axis ``B``.
        l2_norm_clip: the clipping norm ``C > 0``.

    Returns:
        ``(clipped, norms)``: the clipped gradients (same structure) and the ``(B,)`` norms ``‖g_i‖₂`` before clipping.

    Raises:
        ValueError: if ``l2_norm_clip`` is not a finite number > 0.
    """
    _check_scalar(l2_norm_clip, "l2_norm_clip", positive=True)
    _batch_size(grads_per_example, "grads_per_example")
    norms, scale = _norms_and_scale(grads_per_example, l2_norm_clip)
    clipped = jax.tree.map(lambda g: g * _rows(scale, g).astype(g.dtype), grads_per_example)
    return clipped, norms


def dp_aggregate(
    grads_per_example: PyTree,
    mask: Bool[ArrayLike, " example"] | None,
    l2_norm_clip: Real[ArrayLike, ""],
    noise_multiplier: Real[ArrayLike, ""],
    expected_batch_size: Real[ArrayLike, ""],
    key: Key,
) -> PyTree:
    r"""The privatised mean gradient of one DP-SGD step (Abadi et al. 2016):

    $$ \bar g = \frac{1}{\bar B}\Big(\sum_i m_i\, g_i \min\big(1, \tfrac{C}{\lVert g_i \rVert_2}\big)
       + \mathcal{N}(0, \sigma^2 C^2 I)\Big), $$

    with ``m_i`` the mask (padding contributes nothing), ``C = l2_norm_clip``, ``σ = noise_multiplier`` and
    ``B̄ = expected_batch_size = q N`` — the *expected*, not the realised, batch size (module docstring).
    Independent noise is drawn for every leaf from one split of ``key``.

    Arguments:
        grads_per_example: a pytree whose leaves share a leading example axis ``B`` (:func:`per_example_grads`).
        mask: ``(B,)`` booleans (``None``: every example counts).
        l2_norm_clip: ``C > 0``.
        noise_multiplier: ``σ ≥ 0`` (``σ = 0``: no noise, no privacy).
        expected_batch_size: ``q N > 0``.
        key: a PRNG key.

    Returns:
        A pytree like one example's gradient: the privatised mean gradient.

    Raises:
        ValueError: naming the argument, for ``C ≤ 0``, ``σ < 0``, ``expected_batch_size ≤ 0`` or a mask of the
        wrong shape.
    """
    _check_dp_args(l2_norm_clip, noise_multiplier, expected_batch_size)
    size = _batch_size(grads_per_example, "grads_per_example")
    m = _as_mask(mask, size)
    _, scale = _norms_and_scale(grads_per_example, l2_norm_clip)
    weights = jnp.where(m, scale, 0)
    # Σ_i w_i g_i as a contraction (a matrix-vector product): XLA's CPU reduction over the leading axis of the
    # materialised per-example gradients was 2-3x slower for a 50k-parameter model
    summed = jax.tree.map(
        lambda g: jnp.tensordot(weights.astype(g.dtype), _where_rows(m, g), axes=1), grads_per_example
    )
    leaves, treedef = jax.tree.flatten(summed)
    keys = jax.random.split(key, len(leaves))
    std = noise_multiplier * l2_norm_clip
    noised = [
        ((g + (std * jax.random.normal(k, g.shape, g.dtype)).astype(g.dtype)) / expected_batch_size).astype(g.dtype)
        for g, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, noised)


clip_and_noise = dp_aggregate
"""Alias of :func:`dp_aggregate`."""


class DPSGDState(NamedTuple):
    """The state of :func:`dp_sgd`: the PRNG key of the next step's noise."""

    key: Key


def dp_sgd(
    l2_norm_clip: Real[ArrayLike, ""],
    noise_multiplier: Real[ArrayLike, ""],
    expected_batch_size: Real[ArrayLike, ""],
    seed_or_key: int | Key,
) -> optax.GradientTransformationExtraArgs:
    r"""DP-SGD's clip-and-noise aggregation as an optax transformation (Abadi et al. 2016).

    ``update(per_example_updates, state, params=None, *, mask=None)`` takes per-example gradients (leading axis =
    examples, padded to a fixed size) and the padding ``mask`` as an extra argument, and returns the privatised mean
    gradient of :func:`dp_aggregate` with the state's key, split at every step (same key → same updates). Put it first
    in a chain; ``optax.chain`` forwards ``mask`` to it and not to transformations that take no extra arguments.

    Arguments:
        l2_norm_clip: the clipping norm ``C > 0``.
        noise_multiplier: ``σ ≥ 0``; the noise on the clipped sum has standard deviation ``σ C``.
        expected_batch_size: ``q N > 0``, the expected size of a Poisson-sampled batch (not the padded size).
        seed_or_key: an ``int`` seed or a PRNG key for the noise.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; its state is a :class:`DPSGDState`.

    Raises:
        ValueError: naming the argument, for ``C ≤ 0``, ``σ < 0``, ``expected_batch_size ≤ 0`` or a bad key.

    Example:
        >>> opt = optax.chain(dp_sgd(1.0, 1.1, 0.01 * 60_000, 0), optax.sgd(0.1))
        >>> state = opt.init(params)
        >>> grads = per_example_grads(loss, params, batch, mask)
        >>> updates, state = opt.update(grads, state, params, mask=mask)
        >>> params = optax.apply_updates(params, updates)

    References:
        Abadi et al. 2016, Algorithm 1; Opacus' ``DPOptimizer`` with ``expected_batch_size`` and Poisson sampling.
    """
    _check_dp_args(l2_norm_clip, noise_multiplier, expected_batch_size)
    key0 = _as_key(seed_or_key, "seed_or_key")

    def init_fn(params: Any) -> DPSGDState:
        del params
        return DPSGDState(key=key0)

    def update_fn(updates, state: DPSGDState, params=None, *, mask=None, **extra_args):
        del params, extra_args
        key, sub = jax.random.split(state.key)
        out = dp_aggregate(updates, mask, l2_norm_clip, noise_multiplier, expected_batch_size, sub)
        return out, DPSGDState(key=key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def max_batch_for(n_records: int, sampling_rate: float | int, tail: float = 1e-9) -> int:
    r"""The padded size for :func:`poisson_batch`: the smallest ``m`` with ``P(Binomial(N, q) > m) ≤ tail``
    (``scipy.stats.binom.isf``, checked and corrected with ``binom.sf``), at least 1 and at most ``N``.

    With ``m`` from here, a step's draw overflows the padding with probability at most ``tail``; over ``T`` steps at
    most ``T · tail`` (union bound). Example: ``N = 60 000``, ``q = 0.01`` gives ``m ≈ 600 + 6.1 · √594 ≈ 750``.

    Raises:
        ValueError: if ``n_records < 1``, ``sampling_rate ∉ [0, 1]`` or ``tail ∉ (0, 1)``.
    """
    import scipy.stats

    n, q = _check_sampling(n_records, sampling_rate)
    if not 0.0 < float(tail) < 1.0:
        raise ValueError(f"`tail` must lie in (0, 1), got {tail!r}.")
    m = int(scipy.stats.binom.isf(tail, n, q))
    while m > 0 and scipy.stats.binom.sf(m - 1, n, q) <= tail:
        m -= 1
    while scipy.stats.binom.sf(m, n, q) > tail:
        m += 1
    return int(min(max(m, 1), n))


def _check_sampling(n_records, sampling_rate) -> tuple[int, float]:
    if not isinstance(n_records, (int, np.integer)) or isinstance(n_records, bool) or n_records < 1:
        raise ValueError(f"`n_records` must be a positive int, got {n_records!r}.")
    if not is_concrete(sampling_rate) or np.ndim(sampling_rate) != 0:
        raise ValueError(f"`sampling_rate` must be a concrete scalar in [0, 1], got {sampling_rate!r}.")
    q = float(sampling_rate)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"`sampling_rate` must lie in [0, 1], got {sampling_rate!r}.")
    return int(n_records), q


def poisson_batch(
    key: Key, n_records: int, sampling_rate: float | int, max_batch: int
) -> tuple[Int[Array, " max_batch"], Bool[Array, " max_batch"]]:
    r"""A Poisson sample of record indices, padded to a fixed size for ``jit``: each of the ``N`` records is included
    independently with probability ``q``, so the batch size is ``Binomial(N, q)``.

    The included indices (in increasing order) fill the first ``|B|`` slots; the rest are index 0 with mask False.
    Cost ``O(N)`` per draw (one uniform per record).

    Arguments:
        key: a PRNG key.
        n_records: ``N ≥ 1`` (static).
        sampling_rate: ``q ∈ [0, 1]`` (static, a Python float).
        max_batch: the padded size (static); use :func:`max_batch_for` so that overflow is negligible.

    Returns:
        ``(indices, mask)``, both of shape ``(max_batch,)``.

    Raises:
        ValueError: for a bad ``n_records``, ``sampling_rate`` or ``max_batch`` (at trace time).
        An equinox runtime error (``eqx.error_if``) if more than ``max_batch`` records are drawn: a truncated
        sample is not a Poisson sample, so it is never returned silently.
    """
    n, q = _check_sampling(n_records, sampling_rate)
    if not isinstance(max_batch, (int, np.integer)) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"`max_batch` must be a positive int, got {max_batch!r}.")
    include = jax.random.uniform(key, (n,)) < q
    count = jnp.sum(include)
    (indices,) = jnp.nonzero(include, size=int(max_batch), fill_value=0)
    count = eqx.error_if(
        count,
        count > max_batch,
        "poisson_batch: more records were sampled than `max_batch`; raise `max_batch` (see `max_batch_for`).",
    )
    mask = jnp.arange(int(max_batch)) < count
    return indices, mask
