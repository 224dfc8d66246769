r"""Augmenting data with a twin's synthetic rare events, and decisions that minimise the CVaR of the augmented law.

Real records miss rare, high-consequence events: a history of ``n`` ordinary days holds, with probability
``(1 − π)^n``, not one day of a regime of probability ``π``, and no reweighting of those days can put mass where they
have none (:func:`twinjax.risk.shift.support_check`). A twin can *generate* the rare regime (a physics model run
under the rare condition, with its parameter uncertainty). :func:`augment_with_rare_events` appends ``m`` synthetic
rare scenarios to ``n`` records and :func:`mixture_weights` gives every point a weight so that the weighted empirical
law is a known mixture

$$ \hat p_\pi = (1 − π) \sum_{i \le n} \tilde w_i\, \delta_{x_i} + π \sum_{j \le m} \tilde v_j\, \delta_{z_j}, \qquad
   \textstyle\sum_i \tilde w_i = \sum_j \tilde v_j = 1, $$

the empirical version of ``p_target = (1 − π) p_source + π p_rare`` (``w̃`` may carry importance weights that move
the records to a shifted normal regime; uniform by default). Weighted estimates — means, :func:`twinjax.risk.shift.cvar`
— then target ``p_target`` whatever the ratio ``m / n``, so the twin can oversample the rare regime (``m/(n+m) ≫ π``)
without biasing the risk.

:func:`cvar_decision` chooses a decision ``x`` minimising the (weighted) empirical CVaR of a loss ``L(x, ξ)`` over
the scenarios ``ξ_i`` by the Rockafellar–Uryasev formulation (tail fraction ``α``, large loss = bad)

$$ \min_{x, t}\; t + \frac{1}{\alpha} \sum_i \tilde w_i \big(L(x, ξ_i) − t\big)_+, $$

jointly convex when ``L`` is convex in ``x``; the inner minimum over ``t`` is
``CVaR_α(L(x, ·))`` (:func:`twinjax.risk.shift.cvar`). For a scalar decision on an interval the outer objective
``x ↦ CVaR_α`` is convex (a convex loss keeps it convex: CVaR is monotone and convex) and a golden-section search
finds its minimiser to the floating-point resolution of the interval; for a vector decision ``method="adam"`` runs
projected Adam on ``(x, t)`` (approximate: a first-order method on a piecewise-linear objective).

References:
    R. T. Rockafellar, S. Uryasev, "Optimization of conditional value-at-risk", Journal of Risk 2(3), 2000.
    J. Gotoh, Y. Takano, "Newsvendor solutions via conditional value-at-risk minimization", EJOR 179(1), 2007.
    *The Rationale for Synthetic Data* (seed chapter 001): synthetic rare events for digital twins.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import as_float_array, is_concrete
from .._types import Array, ArrayLike, Float, Int, Key
from .shift import _alpha, cvar, var

__all__ = [
    "AugmentedData",
    "CVaRDecision",
    "augment_with_rare_events",
    "cvar_decision",
    "cvar_objective",
    "mixture_weights",
]


def _probability(pi, name: str = "pi") -> float:
    if isinstance(pi, bool) or not is_concrete(pi) or np.ndim(pi) != 0:
        raise ValueError(f"`{name}` must be a concrete scalar in [0, 1), got {pi!r}.")
    pi = float(pi)
    if not 0.0 <= pi < 1.0:
        raise ValueError(f"`{name}` must lie in [0, 1), got {pi!r}.")
    return pi


def _check_weights(w, name: str, n: int) -> Array:
    w = as_float_array(w, name, ndim=1)
    if w.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), got {w.shape}.")
    if is_concrete(w):
        wn = np.asarray(w)
        if not np.all(np.isfinite(wn)) or np.any(wn < 0) or not np.any(wn > 0):
            raise ValueError(f"`{name}` must be finite, non-negative and not all zero.")
    return w


# ---------------------------------------------------------------------------------------------------- augmentation


def mixture_weights(
    component: ArrayLike,
    pi: float,
    base_weights: Float[ArrayLike, " n"] | None = None,
) -> Float[Array, " n"]:
    """Per-point weights making a pooled sample the mixture ``(1 − π) p_0 + π p_1``.

    Point ``i`` of component ``c_i ∈ {0, 1}`` gets ``w_i = (1 − π) b_i / Σ_{c_j=0} b_j`` if ``c_i = 0`` and
    ``w_i = π b_i / Σ_{c_j=1} b_j`` if ``c_i = 1``, with base weights ``b`` (default 1: each component's points
    equally likely; importance weights ``p_target/p_source`` move component 0 to a shifted regime). The weights sum to
    one and component 1 holds mass exactly ``π``.

    **Arguments:**

    - `component`: ``(n,)`` integer labels, 0 (records) or 1 (synthetic rare events); both present when ``0 < π``.
    - `pi`: the rare-regime probability ``π ∈ [0, 1)`` (concrete).
    - `base_weights`: optional ``(n,)`` non-negative weights within the components.

    **Returns:**

    ``(n,)`` weights summing to 1.

    **Raises:**

    ``ValueError`` for labels other than 0/1, ``π`` out of range, a component with no positive weight that needs mass.
    """
    pi = _probability(pi)
    c = jnp.asarray(component)
    if c.ndim != 1 or not jnp.issubdtype(c.dtype, jnp.integer):
        raise ValueError(f"`component` must be a vector of integer labels 0/1, got {c.dtype} of shape {c.shape}.")
    n = c.shape[0]
    b = jnp.ones(n) if base_weights is None else _check_weights(base_weights, "base_weights", n)
    if is_concrete(c):
        cn = np.asarray(c)
        if not np.all((cn == 0) | (cn == 1)):
            raise ValueError(f"`component` labels must be 0 or 1, got values {np.unique(cn).tolist()}.")
        if is_concrete(b):
            bn = np.asarray(b)
            if not np.any(bn[cn == 0] > 0):
                raise ValueError("`component` has no record (label 0) with positive weight.")
            if pi > 0 and not np.any(bn[cn == 1] > 0):
                raise ValueError(f"`pi` = {pi} > 0 but `component` has no rare event (label 1) with positive weight.")
    rare = c == 1
    s0 = jnp.sum(jnp.where(rare, 0.0, b))
    s1 = jnp.sum(jnp.where(rare, b, 0.0))
    return jnp.where(rare, pi * b / jnp.where(s1 > 0, s1, 1.0), (1.0 - pi) * b / s0)


class AugmentedData(eqx.Module):
    """Records plus synthetic rare events: ``samples`` ``(n + m, ...)`` (records first), ``component`` (0 record,
    1 synthetic), the mixture ``weights`` of :func:`mixture_weights` and the rare-regime probability ``pi``."""

    samples: Float[Array, "n ..."]
    component: Int[Array, " n"]
    weights: Float[Array, " n"]
    pi: float = eqx.field(static=True)

    @property
    def n_synthetic(self) -> int:
        return int(jnp.sum(self.component))


def augment_with_rare_events(
    key: Key,
    data: Float[ArrayLike, "n ..."],
    generator: Callable,
    n_synthetic: int,
    pi: float,
    *,
    data_weights: Float[ArrayLike, " n"] | None = None,
) -> AugmentedData:
    """Append ``n_synthetic`` rare-regime scenarios from a twin to ``data`` with known mixture weights.

    The pooled weighted sample is the empirical law of ``(1 − π) p_data + π p_rare`` (see :func:`mixture_weights`),
    whatever ``n_synthetic``.

    **Arguments:**

    - `key`: PRNG key passed to the generator.
    - `data`: ``(n, ...)`` records (e.g. the normal-regime history).
    - `generator`: ``generator(key, m) -> (m, ...)`` samples of the rare regime with ``data``'s event shape
      (e.g. a physics model run under the rare condition, with parameter uncertainty).
    - `n_synthetic`: ``m ≥ 1``, the number of synthetic scenarios.
    - `pi`: the rare regime's probability in the target law, in ``[0, 1)``.
    - `data_weights`: optional ``(n,)`` base weights of the records (e.g. importance weights toward a shifted normal
      regime).

    **Returns:**

    An :class:`AugmentedData`.

    **Raises:**

    ``ValueError`` for a bad ``n_synthetic`` / ``pi`` / weights, or a generator returning the wrong shape.
    """
    if isinstance(n_synthetic, bool) or not isinstance(n_synthetic, (int, np.integer)) or n_synthetic < 1:
        raise ValueError(f"`n_synthetic` must be a positive integer, got {n_synthetic!r}.")
    pi = _probability(pi)
    data = as_float_array(data, "data")
    if data.ndim < 1 or data.shape[0] < 1:
        raise ValueError(f"`data` must have a leading sample axis, got shape {data.shape}.")
    synthetic = jnp.asarray(generator(key, int(n_synthetic)))
    expected = (int(n_synthetic), *data.shape[1:])
    if synthetic.shape != expected:
        raise ValueError(f"`generator(key, {n_synthetic})` must return shape {expected}, got {synthetic.shape}.")
    n = data.shape[0]
    component = jnp.concatenate([jnp.zeros(n, jnp.int32), jnp.ones(int(n_synthetic), jnp.int32)])
    base = None
    if data_weights is not None:
        base = jnp.concatenate([_check_weights(data_weights, "data_weights", n), jnp.ones(int(n_synthetic))])
    weights = mixture_weights(component, pi, base)
    return AugmentedData(jnp.concatenate([data, synthetic.astype(data.dtype)]), component, weights, pi)


# ------------------------------------------------------------------------------------------------- CVaR decisions


class CVaRDecision(NamedTuple):
    """Result of :func:`cvar_decision`: the ``decision``, its empirical ``cvar`` and ``var`` (the optimal ``t``)."""

    decision: Float[Array, "..."]
    cvar: Float[Array, ""]
    var: Float[Array, ""]


def _losses(loss_fn, decision, samples):
    return jax.vmap(loss_fn, in_axes=(None, 0))(decision, samples)


def cvar_objective(
    loss_fn: Callable,
    decision: Float[ArrayLike, "..."],
    samples: Float[ArrayLike, "n ..."],
    alpha: float,
    weights: Float[ArrayLike, " n"] | None = None,
) -> Float[Array, ""]:
    """The empirical ``CVaR_α`` of ``loss_fn(decision, ξ_i)`` over the scenarios (tail fraction ``α``; weighted by
    ``weights`` when given), i.e. the Rockafellar–Uryasev objective minimised over ``t``.

    **Raises:**

    ``ValueError`` as :func:`twinjax.risk.shift.cvar`, or when ``loss_fn`` is not scalar per scenario.
    """
    losses = _losses(loss_fn, jnp.asarray(decision), samples)
    if losses.ndim != 1:
        raise ValueError(f"`loss_fn` must return a scalar per scenario, got losses of shape {losses.shape}.")
    return cvar(losses, alpha, weights)


_INVPHI = (math.sqrt(5.0) - 1.0) / 2.0


def _golden(f, lo, hi, iterations):
    def body(_, state):
        a, b, c, d, fc, fd = state
        left = fc <= fd  # keep [a, d]: the minimiser of a convex f is not in (d, b]
        a, b = jnp.where(left, a, c), jnp.where(left, d, b)
        c_new = jnp.where(left, b - _INVPHI * (b - a), d)
        d_new = jnp.where(left, c, a + _INVPHI * (b - a))
        f_new = f(jnp.where(left, c_new, d_new))  # one new evaluation per iteration
        fc_new = jnp.where(left, f_new, fd)
        fd_new = jnp.where(left, fc, f_new)
        return a, b, c_new, d_new, fc_new, fd_new

    c, d = hi - _INVPHI * (hi - lo), lo + _INVPHI * (hi - lo)
    a, b, c, d, fc, fd = jax.lax.fori_loop(0, iterations, body, (lo, hi, c, d, f(c), f(d)))
    candidates = jnp.stack([lo, hi, c, d, 0.5 * (a + b)])
    values = jax.vmap(f)(candidates)
    return candidates[jnp.argmin(values)]


def _adam(objective, x0, lo, hi, steps, learning_rate):
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-3))
    params = (x0, jnp.zeros(()))

    def step(carry, _):
        p, state, best_p, best_v = carry
        v, g = jax.value_and_grad(objective)(p)
        best_p = jax.tree.map(lambda a, b: jnp.where(v < best_v, a, b), p, best_p)
        best_v = jnp.minimum(v, best_v)
        updates, state = opt.update(g, state, p)
        x, t = optax.apply_updates(p, updates)
        return ((jnp.clip(x, lo, hi), t), state, best_p, best_v), None

    init = (params, opt.init(params), params, jnp.asarray(jnp.inf))
    (p, _, best_p, best_v), _ = jax.lax.scan(step, init, None, length=steps)
    v = objective(p)
    return jnp.where(v < best_v, p[0], best_p[0])


def cvar_decision(
    loss_fn: Callable,
    samples: Float[ArrayLike, "n ..."],
    alpha: float,
    weights: Float[ArrayLike, " n"] | None = None,
    *,
    bounds: tuple[Float[ArrayLike, "..."], Float[ArrayLike, "..."]],
    method: str = "golden",
    iterations: int = 100,
    init: Float[ArrayLike, " d"] | None = None,
    learning_rate: float = 0.05,
) -> CVaRDecision:
    """Minimise the empirical (weighted) ``CVaR_α`` of ``loss_fn(x, ξ)`` over a decision ``x`` in a box.

    **Arguments:**

    - `loss_fn`: ``loss_fn(x, ξ) -> scalar``, convex in ``x`` (so the problem is convex; large = bad).
    - `samples`: ``(n, ...)`` scenarios ``ξ_i`` (e.g. :class:`AugmentedData`'s ``samples``).
    - `alpha`: tail fraction ``α ∈ (0, 1]`` (``0.05`` is the "95 % CVaR"; ``1`` the mean), concrete.
    - `weights`: optional ``(n,)`` scenario weights (e.g. :func:`mixture_weights`); uniform otherwise.
    - `bounds`: ``(lower, upper)``, a scalar interval for ``method="golden"``; scalars or ``(d,)`` vectors for
      ``"adam"``.
    - `method`: ``"golden"`` — golden-section search for a scalar decision, exact to ``0.618^iterations`` of the
      interval (convexity makes it correct); ``"adam"`` — projected Adam on the joint Rockafellar–Uryasev objective
      ``t + Σ w̃_i (L_i(x) − t)_+ / α`` for a vector decision, returning the best iterate (approximate).
    - `iterations`: golden-section iterations or Adam steps.
    - `init`: the Adam starting point (default the box's midpoint).
    - `learning_rate`: Adam's initial step size (cosine-decayed).

    **Returns:**

    A :class:`CVaRDecision` with the decision, its empirical CVaR and VaR.

    **Raises:**

    ``ValueError`` for an unknown method, bad bounds, ``alpha`` out of ``(0, 1]``, bad weights or iterations.

    **Example:**

    ```python
    demand = jax.random.normal(key, (1000,)) * 10 + 100
    loss = lambda x, d: 1.0 * x + 10.0 * jnp.maximum(d - x, 0.0)  # reserve cost + shortfall penalty
    res = cvar_decision(loss, demand, 0.05, bounds=(0.0, 200.0))  # ≈ the 99.5 % demand quantile
    ```
    """
    alpha = _alpha(alpha)
    if method not in ("golden", "adam"):
        raise ValueError(f"`method` must be 'golden' or 'adam', got {method!r}.")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"`iterations` must be a positive integer, got {iterations!r}.")
    samples = as_float_array(samples, "samples")
    if samples.ndim < 1 or samples.shape[0] < 1:
        raise ValueError(f"`samples` must have a leading sample axis, got shape {samples.shape}.")
    if weights is not None:
        weights = _check_weights(weights, "weights", samples.shape[0])
    if not isinstance(bounds, tuple) or len(bounds) != 2:
        raise ValueError(f"`bounds` must be a tuple (lower, upper), got {bounds!r}.")
    lo, hi = as_float_array(bounds[0], "bounds[0]"), as_float_array(bounds[1], "bounds[1]")
    if lo.shape != hi.shape:
        raise ValueError(f"`bounds` must have matching shapes, got {lo.shape} and {hi.shape}.")
    if is_concrete(lo) and is_concrete(hi) and not bool(jnp.all(lo < hi)):
        raise ValueError(f"`bounds` must satisfy lower < upper, got {np.asarray(lo)} and {np.asarray(hi)}.")

    def f(x):
        return cvar_objective(loss_fn, x, samples, alpha, weights)

    if method == "golden":
        if lo.ndim != 0:
            raise ValueError(f"method='golden' needs a scalar decision: `bounds` must be scalars, got {lo.shape}.")
        x = _golden(f, lo, hi, int(iterations))
    else:
        x0 = 0.5 * (lo + hi) if init is None else as_float_array(init, "init")
        if x0.ndim != 1:
            raise ValueError(f"method='adam' needs a vector decision: `init` must be (d,), got shape {x0.shape}.")
        lo_b, hi_b = jnp.broadcast_to(lo, x0.shape), jnp.broadcast_to(hi, x0.shape)
        wn = jnp.full(samples.shape[0], 1.0 / samples.shape[0]) if weights is None else weights / jnp.sum(weights)

        def ru(p):
            x, t = p
            return t + jnp.sum(wn * jnp.maximum(_losses(loss_fn, x, samples) - t, 0.0)) / alpha

        x = _adam(ru, jnp.clip(x0, lo_b, hi_b), lo_b, hi_b, int(iterations), learning_rate)
    losses = _losses(loss_fn, x, samples)
    return CVaRDecision(x, cvar(losses, alpha, weights), var(losses, alpha, weights))
