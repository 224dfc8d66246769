r"""Verification of synthetic data: a runtime filter against a safety invariant, and the Monte-Carlo rates of its
mistakes with exact binomial confidence intervals.

**Invariant.** A safety set is an intersection of sublevel sets,

$$ \mathcal{S} = \{\mathbf{x} : c_j(\mathbf{x}) + m_j \le 0,\ j = 1, \dots, J\}, $$

of constraint functions ``c_j`` (:class:`Box`, :class:`Polytope`, :class:`Ellipsoid`, or any function:
:class:`Sublevel`) and margins ``m_j ≥ 0`` (an :class:`Invariant`). With zero margins it describes the true limits
``S_true``; :meth:`Invariant.tightened` adds margins, e.g. ``m_j = κ σ_j`` from the twin's uncertainty ``σ_j`` on
constraint ``j``, giving the conservative runtime invariant ``S_inv ⊂ S_true`` (every ``c_j + m_j ≤ 0`` implies
``c_j ≤ 0`` when ``m_j ≥ 0``).

**Runtime filter.** :func:`verify` (or :class:`RuntimeFilter`) checks each generated sample against the invariant:
accepted when every constraint holds, with the ``(n, J)`` table of violated constraints and the rejection count per
constraint. :func:`sample_accepted` is the "sample, then filter" rejection sampler returning exactly ``n`` accepted
samples inside one compiled loop.

**Rates.** With samples ``x_1..x_N`` from the generator and the two sets,

- false rejection: ``FRR = P(x ∉ S_inv | x ∈ S_true)``, estimated by ``k / n`` with ``n = #{x_i ∈ S_true}`` and
  ``k = #{x_i ∈ S_true \ S_inv}`` (:func:`false_rejection_rate`): the conservativeness of the filter;
- false acceptance: ``FAR = P(x ∈ S_inv | x ∉ S_true)`` (:func:`false_acceptance_rate`), zero by construction when
  ``S_inv ⊂ S_true`` — the Monte-Carlo estimate checks that construction.

Given ``n``, ``k ~ Binomial(n, p)``; :func:`binomial_ci` gives the Clopper–Pearson interval (exact: coverage
``≥ 1 − α`` for every ``p`` and ``n``),

$$ p_{\mathrm{lo}} = B^{-1}(\tfrac{\alpha}{2};\, k,\, n - k + 1), \qquad
   p_{\mathrm{hi}} = B^{-1}(1 - \tfrac{\alpha}{2};\, k + 1,\, n - k), $$

with ``p_lo = 0`` at ``k = 0`` and ``p_hi = 1`` at ``k = n``, where ``B⁻¹`` is the beta quantile, computed by
bisection on the regularised incomplete beta function ``I_x(a, b)`` (``jax.scipy.special.betainc``; it is monotone in
``x``, so 64 halvings of ``[0, 1]`` reach double precision); or the Wilson score interval
``(p̂ + z²/2n ± z √(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)``.

References:
    Chapter 000, "Applications", "Formal Verification of Synthetic Data".
    C. J. Clopper, E. S. Pearson, "The use of confidence or fiducial limits illustrated in the case of the binomial",
    Biometrika 26(4), 1934. E. B. Wilson, "Probable inference, the law of succession, and statistical inference",
    JASA 22, 1927. L. D. Brown, T. T. Cai, A. DasGupta, "Interval estimation for a binomial proportion", Statistical
    Science 16(2), 2001.
"""

import collections
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_float_array, concrete_probability, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Int, Key

__all__ = [
    "AbstractConstraint",
    "Box",
    "Ellipsoid",
    "FilterReport",
    "Invariant",
    "Polytope",
    "RateEstimate",
    "RuntimeFilter",
    "Sublevel",
    "binomial_ci",
    "false_acceptance_rate",
    "false_rejection_rate",
    "sample_accepted",
    "verify",
]

TRACES: collections.Counter = collections.Counter()  # traces per compiled entry point (no-recompile tests)


# -------------------------------------------------------------------------------------------------------- constraints


class AbstractConstraint(eqx.Module):
    """A vector of constraint functions ``c(x) ∈ R^m`` on ``x ∈ R^dim``; ``x`` satisfies it when ``c(x) ≤ 0``.

    Concrete constraints define ``dim``, ``names`` (one per component, so ``m = len(names)``) and ``__call__`` for a
    single point ``x`` ``(dim,)``.
    """

    dim: eqx.AbstractVar[int]
    names: eqx.AbstractVar[tuple[str, ...]]

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, " m"]:
        raise NotImplementedError


def _labels(labels, dim):
    if labels is None:
        return tuple(f"x{i}" for i in range(dim))
    labels = tuple(str(s) for s in labels)
    if len(labels) != dim:
        raise ValueError(f"`labels` must name each of the {dim} coordinates, got {labels!r}.")
    return labels


def _concrete_vector(x, name):
    if not is_concrete(x):
        raise ValueError(f"`{name}` must be concrete (not traced): it fixes the constraint's structure.")
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty vector, got shape {arr.shape}.")
    return arr


class Box(AbstractConstraint):
    """``lower ≤ x ≤ upper`` componentwise: ``c = [x_i − upper_i …, lower_i − x_i …]`` over the finite bounds only.

    Arguments:
        lower, upper: ``(dim,)`` bounds (``±inf`` drops that side), ``lower ≤ upper``.
        labels: names of the coordinates (for the constraint names, e.g. ``"T_K <= 318.15"``).

    Raises:
        ValueError: mismatched shapes, ``lower > upper``, NaN bounds, or no finite bound at all.
    """

    dim: int = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    upper_index: tuple[int, ...] = eqx.field(static=True)
    lower_index: tuple[int, ...] = eqx.field(static=True)
    upper: Float[Array, " n_upper"]
    lower: Float[Array, " n_lower"]

    def __init__(
        self,
        lower: Float[ArrayLike, " dim"] | Sequence[float],
        upper: Float[ArrayLike, " dim"] | Sequence[float],
        labels: Sequence[str] | None = None,
    ):
        lo, hi = _concrete_vector(lower, "lower"), _concrete_vector(upper, "upper")
        if lo.shape != hi.shape:
            raise ValueError(f"`lower` and `upper` must have the same shape, got {lo.shape} and {hi.shape}.")
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
            raise ValueError(f"Box bounds must not be NaN, got lower={lo}, upper={hi}.")
        if np.any(lo > hi):
            raise ValueError(f"Box needs lower <= upper componentwise, got lower={lo}, upper={hi}.")
        self.dim = int(lo.shape[0])
        labels = _labels(labels, self.dim)
        self.upper_index = tuple(int(i) for i in np.nonzero(np.isfinite(hi))[0])
        self.lower_index = tuple(int(i) for i in np.nonzero(np.isfinite(lo))[0])
        if not self.upper_index and not self.lower_index:
            raise ValueError("Box needs at least one finite bound, got all infinite.")
        self.upper = jnp.asarray(hi[list(self.upper_index)])
        self.lower = jnp.asarray(lo[list(self.lower_index)])
        self.names = tuple(f"{labels[i]} <= {hi[i]:g}" for i in self.upper_index) + tuple(
            f"{labels[i]} >= {lo[i]:g}" for i in self.lower_index
        )

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, " m"]:
        up = x[jnp.asarray(self.upper_index, int)] - self.upper.astype(x.dtype)
        lo = self.lower.astype(x.dtype) - x[jnp.asarray(self.lower_index, int)]
        return jnp.concatenate([up, lo])


class Polytope(AbstractConstraint):
    """``A x ≤ b``: ``c = A x − b``, one constraint per row.

    Arguments:
        A: ``(m, dim)`` matrix; b: ``(m,)`` vector.
        names: one name per row (default ``"row j"``).

    Raises:
        ValueError: if the shapes do not match.
    """

    dim: int = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    A: Float[Array, "m dim"]
    b: Float[Array, " m"]

    def __init__(
        self, A: Float[ArrayLike, "m dim"] | Sequence, b: Float[ArrayLike, " m"] | Sequence[float], names=None
    ):
        A, b = as_float_array(A, "A"), as_float_array(b, "b")
        if A.ndim != 2 or b.ndim != 1 or A.shape[0] != b.shape[0] or A.shape[0] == 0:
            raise ValueError(f"Polytope needs A (m, dim) and b (m,), got shapes {tuple(A.shape)} and {tuple(b.shape)}.")
        self.dim = int(A.shape[1])
        m = int(A.shape[0])
        self.names = tuple(f"row {j}" for j in range(m)) if names is None else tuple(str(s) for s in names)
        if len(self.names) != m:
            raise ValueError(f"`names` must have one entry per row of A ({m}), got {len(self.names)}.")
        self.A, self.b = A, b

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, " m"]:
        return self.A.astype(x.dtype) @ x - self.b.astype(x.dtype)


class Ellipsoid(AbstractConstraint):
    """``(x − center)ᵀ shape⁻¹ (x − center) ≤ 1``: ``c = ‖L⁻¹(x − center)‖² − 1`` with ``shape = L Lᵀ``.

    Arguments:
        center: ``(dim,)``; shape: ``(dim, dim)`` symmetric positive definite (the squared semi-axes on its
            diagonal when axis-aligned).
        name: the constraint's name.

    Raises:
        ValueError: mismatched shapes or a ``shape`` matrix that is not symmetric positive definite.
    """

    dim: int = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    center: Float[Array, " dim"]
    chol: Float[Array, "dim dim"]

    def __init__(
        self,
        center: Float[ArrayLike, " dim"] | Sequence[float],
        shape: Float[ArrayLike, "dim dim"] | Sequence,
        name: str = "ellipsoid",
    ):
        center, shape = as_float_array(center, "center"), as_float_array(shape, "shape")
        d = center.shape[0] if center.ndim == 1 else -1
        if center.ndim != 1 or shape.shape != (d, d):
            raise ValueError(
                f"Ellipsoid needs center (dim,) and shape (dim, dim), got {tuple(center.shape)} and "
                f"{tuple(shape.shape)}."
            )
        if is_concrete(shape):
            s = np.asarray(shape, np.float64)
            if not np.allclose(s, s.T) or np.linalg.eigvalsh(0.5 * (s + s.T)).min() <= 0:
                raise ValueError(f"`shape` must be symmetric positive definite, got {s}.")
        self.dim, self.names = int(d), (str(name),)
        self.center, self.chol = center, jnp.linalg.cholesky(shape)

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, "1"]:
        w = jax.scipy.linalg.solve_triangular(self.chol.astype(x.dtype), x - self.center.astype(x.dtype), lower=True)
        return (jnp.sum(w**2) - 1.0)[None]


class Sublevel(AbstractConstraint):
    """``fn(x) ≤ 0`` for any JAX function ``fn: (dim,) → ()`` or ``(m,)`` (e.g. a twin's one-step prediction of a
    temperature minus its limit).

    Arguments:
        fn: the constraint function of one point (an equinox module or a plain function).
        dim: the dimension of ``x``.
        names: one name per output component.
    """

    dim: int = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    fn: Callable

    def __init__(self, fn: Callable, dim: int, names: str | Sequence[str] = "sublevel"):
        if not callable(fn):
            raise ValueError(f"`fn` must be callable, got {type(fn).__name__}.")
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"`dim` must be a positive int, got {dim!r}.")
        self.dim, self.fn = int(dim), fn
        self.names = (names,) if isinstance(names, str) else tuple(str(s) for s in names)

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, " m"]:
        out = jnp.atleast_1d(jnp.asarray(self.fn(x)))
        if out.shape != (len(self.names),):
            raise ValueError(f"Sublevel `fn` returned shape {out.shape}; `names` declares {len(self.names)} outputs.")
        return out.astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------- invariant


class Invariant(eqx.Module):
    """The intersection ``{x : c_j(x) + m_j ≤ 0 ∀ j}`` of constraints, with margins ``m`` (zero by default).

    Arguments:
        constraints: one :class:`AbstractConstraint` or a sequence of them, all on the same ``dim``.
        margins: ``()`` or ``(J,)`` margins added to the ``J`` stacked constraint values (default 0). Arrays, so a sweep
            over margins can ``vmap`` without rebuilding.

    Raises:
        ValueError: no constraint, mismatched dimensions, margins of the wrong shape.

    Example:
        ```python
        true_set = Invariant.box([-jnp.inf, -10.0], [318.15, 20.0], labels=("T_K", "I_A"))
        inv = true_set.tightened(jnp.array([2.0, 0.5, 0.5]))     # 2 K and 0.5 A inside the true limits
        report = verify(samples, inv)
        ```
    """

    constraints: tuple[AbstractConstraint, ...]
    margins: Float[Array, " J"]

    def __init__(self, constraints: AbstractConstraint | Sequence[AbstractConstraint], margins=0.0):
        cons = (constraints,) if isinstance(constraints, AbstractConstraint) else tuple(constraints)
        if not cons or not all(isinstance(c, AbstractConstraint) for c in cons):
            raise ValueError(f"`constraints` must be one or more AbstractConstraint, got {constraints!r}.")
        dims = {c.dim for c in cons}
        if len(dims) != 1:
            raise ValueError(f"All constraints must act on the same dimension, got dims {[c.dim for c in cons]}.")
        self.constraints = cons
        n = sum(len(c.names) for c in cons)
        margins = jnp.asarray(margins, dtype=jnp.result_type(float))
        if margins.ndim == 0:
            margins = jnp.full((n,), margins)
        if margins.shape != (n,):
            raise ValueError(
                f"`margins` must be a scalar or have shape ({n},) (one per constraint), got {margins.shape}."
            )
        self.margins = margins

    # -- constructors
    @classmethod
    def box(cls, lower, upper, labels=None) -> "Invariant":
        """``lower ≤ x ≤ upper`` (see :class:`Box`)."""
        return cls(Box(lower, upper, labels))

    @classmethod
    def polytope(cls, A, b, names=None) -> "Invariant":
        """``A x ≤ b`` (see :class:`Polytope`)."""
        return cls(Polytope(A, b, names))

    @classmethod
    def ellipsoid(cls, center, shape, name="ellipsoid") -> "Invariant":
        """``(x − center)ᵀ shape⁻¹ (x − center) ≤ 1`` (see :class:`Ellipsoid`)."""
        return cls(Ellipsoid(center, shape, name))

    @classmethod
    def sublevel(cls, fn, dim, names="sublevel") -> "Invariant":
        """``fn(x) ≤ 0`` (see :class:`Sublevel`)."""
        return cls(Sublevel(fn, dim, names))

    def __and__(self, other: "Invariant") -> "Invariant":
        """The intersection: constraints and margins concatenated."""
        if not isinstance(other, Invariant):
            return NotImplemented
        return Invariant(self.constraints + other.constraints, jnp.concatenate([self.margins, other.margins]))

    def tightened(self, margins: Float[ArrayLike, "*J"]) -> "Invariant":
        """The same constraints with ``margins`` added to the current ones (``c_j + m_j + δ_j ≤ 0``).

        Non-negative ``margins`` give a subset of ``self``; a concrete negative margin raises ``ValueError``.
        """
        m = jnp.broadcast_to(jnp.asarray(margins, self.margins.dtype), self.margins.shape)
        if is_concrete(m) and np.any(np.asarray(m) < 0):
            raise ValueError(f"`margins` must be >= 0 to tighten the invariant, got {np.asarray(m)}.")
        return Invariant(self.constraints, self.margins + m)

    # -- evaluation
    @property
    def dim(self) -> int:
        return self.constraints[0].dim

    @property
    def names(self) -> tuple[str, ...]:
        """One name per stacked constraint (``J``)."""
        return tuple(n for c in self.constraints for n in c.names)

    def _check(self, x):
        x = as_float_array(x, "samples")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"`samples` must have shape (n, {self.dim}) for this invariant, got {tuple(x.shape)}.")
        return x

    def values(self, samples: Float[ArrayLike, "n dim"]) -> Float[Array, "n J"]:
        """``c_j(x_i) + m_j`` for every sample and constraint (``≤ 0``: satisfied)."""
        return _values(self, self._check(samples))

    def violations(self, samples: Float[ArrayLike, "n dim"]) -> Bool[Array, "n J"]:
        """Which constraints each sample violates (``c_j + m_j > 0``; a NaN value counts as a violation)."""
        return ~(self.values(samples) <= 0)

    def contains(self, samples: Float[ArrayLike, "n dim"]) -> Bool[Array, " n"]:
        """Whether each sample lies in the set (every constraint satisfied)."""
        return ~jnp.any(self.violations(samples), axis=1)


@eqx.filter_jit
def _values(invariant, x):
    def one(xi):
        return jnp.concatenate([c(xi) for c in invariant.constraints])

    return jax.vmap(one)(x) + invariant.margins.astype(x.dtype)


# ------------------------------------------------------------------------------------------------------------- filter


class FilterReport(NamedTuple):
    """The outcome of the runtime filter on ``n`` samples against ``J`` constraints.

    Attributes:
        accepted: ``(n,)`` inside the invariant.
        violations: ``(n, J)`` which constraints each sample violates (a sample may violate several).
        rejections_per_constraint: ``(J,)`` number of samples violating each constraint.
        acceptance_rate: the fraction accepted.
    """

    accepted: Bool[Array, " n"]
    violations: Bool[Array, "n J"]
    rejections_per_constraint: Int[Array, " J"]
    acceptance_rate: Float[Array, ""]


@eqx.filter_jit
def _verify(samples, invariant):
    TRACES["verify"] += 1
    viol = invariant.violations(samples)
    accepted = ~jnp.any(viol, axis=1)
    return FilterReport(accepted, viol, jnp.sum(viol, axis=0), jnp.mean(accepted.astype(samples.dtype)))


def verify(samples: Float[ArrayLike, "n dim"], invariant: Invariant) -> FilterReport:
    """Check each sample against the invariant: accept it when every ``c_j(x) + m_j ≤ 0``.

    Arguments:
        samples: ``(n, dim)`` generated samples (e.g. ``(T, I)`` operating points).
        invariant: the safety invariant ``S_inv``.

    Returns:
        A :class:`FilterReport` (accepted mask, per-sample violations, per-constraint rejection counts, acceptance
        rate). The accepted samples are ``samples[report.accepted]`` (outside ``jit``).

    Raises:
        ValueError: if ``invariant`` is not an :class:`Invariant` or ``samples`` is not ``(n, invariant.dim)``.

    Example:
        ```python
        report = verify(flow.sample(key, 100_000), inv)
        dict(zip(inv.names, report.rejections_per_constraint))
        ```
    """
    if not isinstance(invariant, Invariant):
        raise ValueError(f"`invariant` must be an Invariant, got {type(invariant).__name__}.")
    return _verify(invariant._check(samples), invariant)


class RuntimeFilter(eqx.Module):
    """A runtime monitor wrapping an invariant: ``RuntimeFilter(inv)(samples)`` is :func:`verify` ``(samples, inv)``."""

    invariant: Invariant

    def __init__(self, invariant: Invariant):
        if not isinstance(invariant, Invariant):
            raise ValueError(f"`invariant` must be an Invariant, got {type(invariant).__name__}.")
        self.invariant = invariant

    def __call__(self, samples: Float[ArrayLike, "n dim"]) -> FilterReport:
        return verify(samples, self.invariant)


def _check_count(n, name):
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`{name}` must be a positive int, got {n!r}.")
    return int(n)


def sample_accepted(
    sample_fn: Callable[[Key, int], Float[Array, "batch dim"]],
    key: Key,
    n: int,
    invariant: Invariant,
    *,
    oversample: float = 1.5,
    max_rounds: int = 20,
) -> tuple[Float[Array, "n dim"], Float[Array, ""]]:
    """Sample, then filter: exactly ``n`` samples of the generator conditioned on the invariant.

    Round ``r`` draws ``m = ⌈oversample · n⌉`` samples with ``sample_fn(fold_in(key, r), m)`` and appends the accepted
    ones, in order, to an ``(n, dim)`` buffer; the loop (``lax.while_loop``, one compiled program: ``n``, ``m`` are
    static) stops when the buffer is full or after ``max_rounds`` rounds. The accepted samples are draws from the
    generator's law restricted to ``S_inv`` (rejection sampling with the indicator as the acceptance probability).

    Arguments:
        sample_fn: ``(key, m) -> (m, dim)`` draws (e.g. ``lambda k, m: flow.sample(k, m)``).
        key: PRNG key.
        n: the number of accepted samples wanted (static).
        invariant: the safety invariant.
        oversample: draws per round as a multiple of ``n`` (set it near ``1 / acceptance rate``).
        max_rounds: the cap on rounds.

    Returns:
        ``(samples (n, dim), acceptance_rate)``: the accepted samples and the fraction of all draws accepted.

    Raises:
        ValueError: bad sizes or invariant; at run time (``eqx.error_if``) when fewer than ``n`` samples were accepted
        in ``max_rounds`` rounds — the acceptance rate is too low for the budget.

    Example:
        ```python
        safe, rate = sample_accepted(lambda k, m: flow.sample(k, m), key, 10_000, inv, oversample=1.2)
        ```
    """
    n = _check_count(n, "n")
    max_rounds = _check_count(max_rounds, "max_rounds")
    if not isinstance(invariant, Invariant):
        raise ValueError(f"`invariant` must be an Invariant, got {type(invariant).__name__}.")
    if not (isinstance(oversample, int | float) and oversample >= 1.0):
        raise ValueError(f"`oversample` must be a number >= 1, got {oversample!r}.")
    return _sample_accepted(sample_fn, key, n, invariant, math.ceil(oversample * n), max_rounds)


@eqx.filter_jit
def _sample_accepted(sample_fn, key, n, invariant, m, max_rounds):
    TRACES["sample_accepted"] += 1
    probe = jax.eval_shape(lambda k: sample_fn(k, m), key)
    if probe.shape != (m, invariant.dim):
        raise ValueError(f"`sample_fn(key, {m})` must return shape ({m}, {invariant.dim}), got {probe.shape}.")
    buf = jnp.zeros((n, invariant.dim), probe.dtype)

    def cond(state):
        _, count, r, _ = state
        return (count < n) & (r < max_rounds)

    def body(state):
        buf, count, r, accepted_total = state
        x = sample_fn(jax.random.fold_in(key, r), m)
        ok = invariant.contains(x)
        pos = count + jnp.cumsum(ok) - 1
        # rejected draws and those beyond the buffer go to index n, which mode="drop" discards
        idx = jnp.where(ok & (pos < n), pos, n)
        buf = buf.at[idx].set(x, mode="drop")
        k = jnp.sum(ok)
        return buf, jnp.minimum(count + k, n), r + 1, accepted_total + k

    buf, count, rounds, accepted_total = jax.lax.while_loop(cond, body, (buf, 0, 0, 0))
    rate = accepted_total / (rounds * m)
    buf = eqx.error_if(
        buf,
        count < n,
        f"sample_accepted: fewer than n = {n} samples accepted in max_rounds = {max_rounds} rounds of {m} draws; "
        "the acceptance rate is too low — raise `oversample` or `max_rounds`, or check the invariant.",
    )
    return buf, rate.astype(probe.dtype)


# -------------------------------------------------------------------------------------------------------------- rates


def _beta_quantile(q, a, b, iters=64):
    """``x`` with ``I_x(a, b) = q`` by bisection (``I_x`` increases in ``x``)."""

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        below = jax.scipy.special.betainc(a, b, mid) < q
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(q), jnp.ones_like(q)))
    return 0.5 * (lo + hi)


@eqx.filter_jit
def _clopper_pearson(k, n, alpha):
    # the beta parameters at k = 0 (lower) and k = n (upper) are invalid; those ends are exactly 0 and 1
    safe_k, safe_nk = jnp.maximum(k, 1.0), jnp.maximum(n - k, 1.0)
    lower = _beta_quantile(jnp.full_like(k, alpha / 2), safe_k, n - k + 1)
    upper = _beta_quantile(jnp.full_like(k, 1 - alpha / 2), k + 1, safe_nk)
    return jnp.where(k > 0, lower, 0.0), jnp.where(k < n, upper, 1.0)


def _wilson(k, n, alpha):
    z = jax.scipy.special.ndtri(1 - alpha / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * jnp.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return jnp.clip(centre - half, 0.0, 1.0), jnp.clip(centre + half, 0.0, 1.0)


def binomial_ci(
    k: Int[ArrayLike, "*batch"], n: Int[ArrayLike, "*batch"], level: float = 0.95, method: str = "clopper-pearson"
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"]]:
    """A two-sided ``level`` confidence interval for a binomial proportion from ``k`` successes in ``n`` trials.

    ``"clopper-pearson"`` (exact, conservative; module docstring) or ``"wilson"`` (score interval, coverage close to
    ``level`` on average, occasionally below). With ``n = 0`` the interval is ``[0, 1]``.

    Arguments:
        k, n: counts (broadcast together), ``0 ≤ k ≤ n``.
        level: the confidence level in ``(0, 1)``.
        method: ``"clopper-pearson"`` or ``"wilson"``.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: ``level`` outside ``(0, 1)``, an unknown ``method``, concrete counts with ``k < 0``, ``k > n`` or
        non-integers.

    Example:
        ```python
        binomial_ci(3, 50)    # (0.01255, 0.16548), as scipy.stats.binomtest(3, 50).proportion_ci()
        ```
    """
    level = concrete_probability(level, "level")
    if method not in ("clopper-pearson", "wilson"):
        raise ValueError(f"`method` must be 'clopper-pearson' or 'wilson', got {method!r}.")
    k, n = jnp.broadcast_arrays(jnp.asarray(k), jnp.asarray(n))
    if is_concrete(k) and is_concrete(n):
        kk, nn = np.asarray(k), np.asarray(n)
        if np.any(kk != np.round(kk)) or np.any(nn != np.round(nn)):
            raise ValueError(f"`k` and `n` must be integer counts, got k={kk}, n={nn}.")
        if np.any(kk < 0) or np.any(kk > nn):
            raise ValueError(f"binomial counts need 0 <= k <= n, got k={kk}, n={nn}.")
    dtype = jnp.result_type(float)
    k, n = k.astype(dtype), n.astype(dtype)
    alpha = 1.0 - level
    empty = n == 0
    n1 = jnp.where(empty, 1.0, n)
    k1 = jnp.where(empty, 0.0, k)
    lo, hi = _clopper_pearson(k1, n1, alpha) if method == "clopper-pearson" else _wilson(k1, n1, alpha)
    return jnp.where(empty, 0.0, lo), jnp.where(empty, 1.0, hi)


class RateEstimate(NamedTuple):
    """A Monte-Carlo rate ``k / n`` with its confidence interval.

    Attributes:
        estimate: ``k / n`` (NaN when ``n = 0``: the rate is undefined; the interval is then ``[0, 1]``).
        ci_low, ci_high: the binomial confidence interval (:func:`binomial_ci`).
        count: ``k``; total: ``n``.
    """

    estimate: Float[Array, ""]
    ci_low: Float[Array, ""]
    ci_high: Float[Array, ""]
    count: Int[Array, ""]
    total: Int[Array, ""]


def _rate(k, n, level, method):
    lo, hi = binomial_ci(k, n, level, method)
    dtype = lo.dtype
    est = jnp.where(n > 0, k.astype(dtype) / jnp.maximum(n, 1).astype(dtype), jnp.nan)
    return RateEstimate(est, lo, hi, k, n)


def _check_sets(samples, invariant, true_set):
    for name, s in (("invariant", invariant), ("true_set", true_set)):
        if not isinstance(s, Invariant):
            raise ValueError(f"`{name}` must be an Invariant, got {type(s).__name__}.")
    if invariant.dim != true_set.dim:
        raise ValueError(f"`invariant` and `true_set` act on different dimensions: {invariant.dim} vs {true_set.dim}.")
    return _membership(invariant._check(samples), invariant, true_set)


@eqx.filter_jit
def _membership(x, invariant, true_set):
    return invariant.contains(x), true_set.contains(x)


def false_rejection_rate(
    samples: Float[ArrayLike, "n dim"],
    invariant: Invariant,
    true_set: Invariant,
    *,
    level: float = 0.95,
    method: str = "clopper-pearson",
) -> RateEstimate:
    """``P(x ∉ S_inv | x ∈ S_true)``: how often the filter rejects a sample that is safe by the true limits.

    Estimated as ``#{x_i ∈ S_true \\ S_inv} / #{x_i ∈ S_true}`` over the samples, with a binomial ``level`` interval
    (conditionally on the number of truly safe samples, which is binomial given the generator).

    Raises:
        ValueError: sets that are not :class:`Invariant` or differ in dimension, ``samples`` of the wrong shape,
        ``level`` outside ``(0, 1)``.

    Example:
        ```python
        frr = false_rejection_rate(flow.sample(key, 100_000), inv, true_set)
        frr.estimate, (frr.ci_low, frr.ci_high)
        ```
    """
    level = concrete_probability(level, "level")
    inside_inv, inside_true = _check_sets(samples, invariant, true_set)
    return _rate(jnp.sum(inside_true & ~inside_inv), jnp.sum(inside_true), level, method)


def false_acceptance_rate(
    samples: Float[ArrayLike, "n dim"],
    invariant: Invariant,
    true_set: Invariant,
    *,
    level: float = 0.95,
    method: str = "clopper-pearson",
) -> RateEstimate:
    """``P(x ∈ S_inv | x ∉ S_true)``: how often the filter accepts a truly unsafe sample (``0`` when
    ``S_inv ⊂ S_true``); arguments as :func:`false_rejection_rate`."""
    level = concrete_probability(level, "level")
    inside_inv, inside_true = _check_sets(samples, invariant, true_set)
    return _rate(jnp.sum(~inside_true & inside_inv), jnp.sum(~inside_true), level, method)
