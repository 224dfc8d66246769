"""Identification of ``E[Y | do(X = x)]`` from observational data: back-door and front-door adjustment.

`identify` checks (or searches for) an adjustment set on a `DAG` and raises `NotIdentifiedError` naming the failing
condition — an open back-door path, a descendant of the treatment in the set, a directed path the mediators miss —
when the query is not identified by the requested criterion. The estimators then evaluate the identifying formula on
data (a dict of ``(n,)`` arrays, e.g. the observed columns of `SCM.sample`):

* back-door: ``E[Y | do(x)] = Σ_z E[Y | x, z] P(z)``;
* front-door: ``E[Y | do(x)] = Σ_m P(m | x) Σ_x' E[Y | m, x'] P(x')``.

``kind="discrete"`` evaluates these by plug-in frequencies over the observed strata (values must be small
non-negative integers); ``kind="linear"`` assumes linear conditional means (linear-Gaussian SCMs) and uses least
squares: back-door ``b₀ + b_x x + b_zᵀ z̄`` from ``Y ~ 1 + X + Z``; front-door ``c₀ + c_mᵀ(a₀ + a x) + c_x x̄`` from
``M ~ 1 + X`` and ``Y ~ 1 + M + X``.

**References:** Pearl, *Causality* (2009), Thm 3.3.2 (back-door adjustment), Thm 3.3.4 (front-door adjustment).
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .graph import DAG, backdoor_violation, find_backdoor_set, find_frontdoor_set, frontdoor_violation

__all__ = [
    "Identification",
    "NotIdentifiedError",
    "backdoor_adjustment",
    "estimate_effect",
    "frontdoor_adjustment",
    "identify",
]


class NotIdentifiedError(ValueError):
    """The causal query is not identified by the requested criterion (the message says why)."""


class Identification(NamedTuple):
    """An identified query: the criterion used and its adjustment (back-door) or mediator (front-door) set."""

    criterion: str
    x: str
    y: str
    adjustment: tuple[str, ...]


def identify(
    dag: DAG,
    x: str,
    y: str,
    criterion: str = "backdoor",
    adjustment: Sequence[str] | None = None,
) -> Identification:
    """Check that ``E[Y | do(X)]`` is identified by `criterion`, with the given set or a smallest one found.

    **Arguments:**

    - `dag`: the causal graph (latent nodes can be neither adjusted for nor used as mediators).
    - `x`, `y`: treatment and outcome names (observed).
    - `criterion`: ``"backdoor"`` or ``"frontdoor"``.
    - `adjustment`: the candidate set (``Z`` for back-door, ``M`` for front-door); ``None`` searches exhaustively for
      a smallest valid observed set.

    **Returns:** an `Identification`.

    **Raises:** `NotIdentifiedError` (a `ValueError`) naming the failing condition or the open path; `ValueError` for
    an unknown criterion or node, or a latent treatment/outcome.
    """
    if criterion not in ("backdoor", "frontdoor"):
        raise ValueError(f"identify: criterion must be 'backdoor' or 'frontdoor', got {criterion!r}")
    for name, v in (("x", x), ("y", y)):
        if v not in dag.nodes:
            raise ValueError(f"identify: {name}={v!r} is not a node of the graph {dag.nodes}")
        if v in dag.latent:
            raise ValueError(f"identify: {name}={v!r} is latent; the query must be about observed variables")
    violation = backdoor_violation if criterion == "backdoor" else frontdoor_violation
    if adjustment is not None:
        adjustment = (adjustment,) if isinstance(adjustment, str) else tuple(adjustment)
        why = violation(dag, x, y, adjustment)
        if why is not None:
            raise NotIdentifiedError(
                f"E[{y} | do({x})] is not identified by the {criterion} criterion with {list(adjustment)}: {why}"
            )
        return Identification(criterion, x, y, adjustment)
    found = (find_backdoor_set if criterion == "backdoor" else find_frontdoor_set)(dag, x, y)
    if found is None:
        why = violation(dag, x, y, _default_set(dag, x, y, criterion))
        raise NotIdentifiedError(
            f"E[{y} | do({x})] is not identified by the {criterion} criterion: no set of observed nodes satisfies it"
            f" (e.g. {why})"
        )
    return Identification(criterion, x, y, found)


def _default_set(dag: DAG, x: str, y: str, criterion: str) -> tuple[str, ...]:
    """The natural candidate, to illustrate a failure: the observed parents of X (back-door) or the observed
    children of X (front-door)."""
    if criterion == "backdoor":
        return tuple(p for p in dag.parents(x) if p not in dag.latent)
    return tuple(c for c in dag.children(x) if c not in dag.latent and c != y)


def _column(data: Mapping[str, ArrayLike], name: str, what: str) -> Float[Array, " n"]:
    if name not in data:
        raise ValueError(f"{what}: data has no column {name!r}; it has {sorted(data)}")
    col = jnp.asarray(data[name], dtype=float)
    if col.ndim != 1:
        raise ValueError(f"{what}: column {name!r} must have shape (n,), got {col.shape}")
    return col


def _codes(data, names: Sequence[str], what: str) -> tuple[np.ndarray, int]:
    """Joint stratum index of the discrete columns `names` and the number of strata."""
    n = len(np.asarray(data[next(iter(data))]))
    code, size = np.zeros(n, dtype=np.int64), 1
    for name in names:
        col = np.asarray(_column(data, name, what))
        if np.any(col != np.round(col)) or np.any(col < 0):
            raise ValueError(f"{what}: kind='discrete' needs non-negative integer values; column {name!r} has others")
        card = int(col.max()) + 1
        code, size = code * card + col.astype(np.int64), size * card
    return code, size


def _ols(design: Float[Array, "n k"], target: Float[Array, " n"]) -> Float[Array, " k"]:
    return jnp.linalg.lstsq(design, target)[0]


def backdoor_adjustment(
    data: Mapping[str, ArrayLike],
    x: str,
    y: str,
    z: Sequence[str],
    x_value: float | int,
    kind: str = "discrete",
) -> Float[Array, ""]:
    """Back-door estimate of ``E[Y | do(X = x_value)] = Σ_z E[Y | x, z] P(z)``.

    **Arguments:**

    - `data`: ``{name: (n,)}`` observational columns.
    - `x`, `y`: treatment and outcome columns; `z`: the adjustment set (checked by `identify`, not here).
    - `x_value`: the treatment level.
    - `kind`: ``"discrete"`` (plug-in frequencies) or ``"linear"`` (least squares on ``1, X, Z``).

    **Returns:** a scalar estimate.

    **Raises:** `ValueError` for missing columns, non-integer discrete data, or a positivity violation (a stratum
    ``z`` seen in the data but never with ``X = x_value``).
    """
    z = (z,) if isinstance(z, str) else tuple(z)
    xs, ys = _column(data, x, "backdoor_adjustment"), _column(data, y, "backdoor_adjustment")
    if kind == "linear":
        zs = [_column(data, v, "backdoor_adjustment") for v in z]
        design = jnp.stack([jnp.ones_like(xs), xs, *zs], axis=1)
        coef = _ols(design, ys)
        zbar = jnp.array([1.0, x_value] + [jnp.mean(c) for c in zs])
        return coef @ zbar
    if kind != "discrete":
        raise ValueError(f"backdoor_adjustment: kind must be 'discrete' or 'linear', got {kind!r}")
    code, size = _codes(data, z, "backdoor_adjustment")
    code = jnp.asarray(code)
    treated = (xs == x_value).astype(float)
    n_z = jnp.zeros(size).at[code].add(1.0)
    n_xz = jnp.zeros(size).at[code].add(treated)
    sum_y = jnp.zeros(size).at[code].add(treated * ys)
    if bool(jnp.any((n_z > 0) & (n_xz == 0))):
        raise ValueError(
            f"backdoor_adjustment: positivity fails: a stratum of {list(z)} is never seen with {x}={x_value}"
        )
    mean_y = jnp.where(n_xz > 0, sum_y / jnp.maximum(n_xz, 1.0), 0.0)
    return jnp.sum(mean_y * n_z) / xs.shape[0]


def frontdoor_adjustment(
    data: Mapping[str, ArrayLike],
    x: str,
    y: str,
    m: Sequence[str],
    x_value: float | int,
    kind: str = "discrete",
) -> Float[Array, ""]:
    """Front-door estimate of ``E[Y | do(X = x_value)] = Σ_m P(m | x) Σ_x' E[Y | m, x'] P(x')``.

    **Arguments:** as `backdoor_adjustment`, with `m` the front-door (mediator) set.

    **Returns:** a scalar estimate.

    **Raises:** `ValueError` for missing columns, non-integer discrete data, no unit with ``X = x_value``, or a
    positivity violation (a pair ``(m, x')`` never seen while ``m`` occurs under ``X = x_value`` and ``x'`` occurs).
    """
    m = (m,) if isinstance(m, str) else tuple(m)
    xs, ys = _column(data, x, "frontdoor_adjustment"), _column(data, y, "frontdoor_adjustment")
    if kind == "linear":
        ms = [_column(data, v, "frontdoor_adjustment") for v in m]
        design_x = jnp.stack([jnp.ones_like(xs), xs], axis=1)
        m_at_x = jnp.stack([_ols(design_x, c) @ jnp.array([1.0, x_value]) for c in ms])
        coef = _ols(jnp.stack([jnp.ones_like(xs), *ms, xs], axis=1), ys)
        return coef[0] + coef[1:-1] @ m_at_x + coef[-1] * jnp.mean(xs)
    if kind != "discrete":
        raise ValueError(f"frontdoor_adjustment: kind must be 'discrete' or 'linear', got {kind!r}")
    mcode, msize = _codes(data, m, "frontdoor_adjustment")
    xcode, xsize = _codes(data, [x], "frontdoor_adjustment")
    mcode, xcode = jnp.asarray(mcode), jnp.asarray(xcode)
    n = xs.shape[0]
    treated = (xs == x_value).astype(float)
    if not bool(jnp.any(treated > 0)):
        raise ValueError(f"frontdoor_adjustment: no unit has {x}={x_value}")
    p_m_given_x = jnp.zeros(msize).at[mcode].add(treated) / jnp.sum(treated)
    p_x = jnp.zeros(xsize).at[xcode].add(1.0) / n
    cell = mcode * xsize + xcode
    n_mx = jnp.zeros(msize * xsize).at[cell].add(1.0).reshape(msize, xsize)
    sum_y = jnp.zeros(msize * xsize).at[cell].add(ys).reshape(msize, xsize)
    needed = (p_m_given_x[:, None] > 0) & (p_x[None, :] > 0)
    if bool(jnp.any(needed & (n_mx == 0))):
        raise ValueError(f"frontdoor_adjustment: positivity fails: a pair ({list(m)}, {x}) is never seen")
    e_y = jnp.where(n_mx > 0, sum_y / jnp.maximum(n_mx, 1.0), 0.0)
    return p_m_given_x @ (e_y @ p_x)


def estimate_effect(
    data: Mapping[str, ArrayLike],
    dag: DAG,
    x: str,
    y: str,
    x_value: float | int,
    criterion: str = "backdoor",
    adjustment: Sequence[str] | None = None,
    kind: str = "discrete",
) -> Float[Array, ""]:
    """`identify` then estimate ``E[Y | do(X = x_value)]`` with the matching adjustment formula.

    **Raises:** `NotIdentifiedError` when the query is not identified by `criterion` (see `identify`).
    """
    ident = identify(dag, x, y, criterion, adjustment)
    estimator = backdoor_adjustment if criterion == "backdoor" else frontdoor_adjustment
    return estimator(data, x, y, ident.adjustment, x_value, kind)
