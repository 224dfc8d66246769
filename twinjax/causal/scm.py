"""Structural causal models: sampling, ``do`` by graph surgery, counterfactuals, exact enumeration.

An SCM is a set of structural equations ``V_i := f_i(Pa_i, U_i)`` over a DAG, with independent exogenous noises
``U_i ~ P_i``. Latent variables are sampled like the others but are not observed (they are the hidden confounders of
`twinjax.causal.identification`).

* ``sample`` draws the noises and evaluates the equations once in topological order (one pass over the variables, all
  ``n`` units at once; a mechanism acts elementwise on a batch of units).
* ``do(X=x)`` replaces the equation of ``X`` by the constant ``x`` — the arrows into ``X`` are cut.
* ``counterfactual`` is Pearl's three steps. **Abduction**: the posterior of the noises given the evidence, by
  likelihood weighting — noises drawn from the prior, except that for an additive mechanism ``f(Pa) + U`` the noise of
  an observed variable is solved exactly, ``U = v − f(Pa, 0)``, and weighted by its density; a non-invertible mechanism
  (a discrete one) gets weight 1 when it reproduces the observed value and 0 otherwise (rejection). **Action**: ``do``.
  **Prediction**: the same noises pushed through the intervened model. When every parent of every observed additive
  variable is itself observed the weights are constant and the counterfactual is exact.
* ``exact_query`` enumerates the joint of a discrete SCM built by `discrete_scm` (conditional probability tables):
  exact probabilities, the ground truth of the identification audit.

**References:** Pearl, *Causality* (2009), §1.4 (SCMs), §7.1 (counterfactuals: abduction, action, prediction).
"""

import itertools
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .graph import DAG
from .intervention import Intervention, do as _do

__all__ = [
    "SCM",
    "discrete_scm",
    "exact_query",
    "linear_gaussian_moments",
    "linear_gaussian_scm",
]


class _Linear(eqx.Module):
    """``f(pa, u) = intercept + Σ_k w_k pa_k + u``."""

    parents: tuple[str, ...] = eqx.field(static=True)
    weights: Float[Array, " k"]
    intercept: Float[Array, ""]

    def __call__(self, pa: dict[str, Array], u: Array) -> Array:
        out = self.intercept + u
        for k, p in enumerate(self.parents):
            out = out + self.weights[k] * pa[p]
        return out


class _Table(eqx.Module):
    """A discrete mechanism from a conditional probability table: ``V = #{k : u > F(k | pa)}`` with ``U ~ U(0, 1)``
    and ``F`` the CDF of row ``pa`` (inverse-CDF sampling)."""

    parents: tuple[str, ...] = eqx.field(static=True)
    table: Float[Array, "..."]

    def __call__(self, pa: dict[str, Array], u: Array) -> Array:
        rows = self.table[tuple(jnp.asarray(pa[p]).astype(jnp.int32) for p in self.parents)]
        cdf = jnp.cumsum(rows, axis=-1)[..., :-1]
        return jnp.sum(u[..., None] > cdf, axis=-1).astype(u.dtype)


class _Constant(eqx.Module):
    """The mechanism of an intervened variable: the set value, whatever the noise."""

    value: Array

    def __call__(self, pa: dict[str, Array], u: Array) -> Array:
        return jnp.broadcast_to(jnp.asarray(self.value, u.dtype), u.shape)


def _as_intervention(intervention) -> Intervention:
    if isinstance(intervention, Intervention):
        return intervention
    if isinstance(intervention, Mapping):
        return _do(intervention)
    raise TypeError(f"intervention must be an Intervention or a mapping, got {type(intervention).__name__}")


class SCM(eqx.Module):
    """A structural causal model ``V_i := f_i(Pa_i, U_i)``, ``U_i ~ P_i`` independent.

    **Arguments:**

    - `names`: the variable names (any order; a DAG through `parents`).
    - `parents`: for each variable, the names of its parents.
    - `mechanisms`: for each variable, ``f(pa, u) -> value`` where ``pa`` maps each parent's name to an array of shape
      ``(n,)`` and ``u`` has shape ``(n,)``; it must act elementwise over the ``n`` units.
    - `noises`: for each variable, a scalar numpyro distribution of ``U_i``.
    - `additive`: for each variable, whether ``f(pa, u) = f(pa, 0) + u`` (enables exact abduction); default all False.
    - `latent`: names of the hidden variables.
    - `tables`: optional conditional probability tables (see `discrete_scm`), for `exact_query`.

    **Raises:** `ValueError` when the lengths differ, a parent is unknown, or the graph has a cycle.

    **Example:**

    ```python
    scm = linear_gaussian_scm(jnp.array([[0.0, 2.0], [0.0, 0.0]]), jnp.ones(2), names=("X", "Y"))
    data = scm.do(X=1.0).sample(jax.random.key(0), 1000)  # data["Y"] ~ N(2, 1)
    ```
    """

    names: tuple[str, ...] = eqx.field(static=True)
    parents: tuple[tuple[str, ...], ...] = eqx.field(static=True)
    mechanisms: tuple[Callable, ...]
    noises: tuple[Any, ...]
    additive: tuple[bool, ...] = eqx.field(static=True)
    latent: tuple[str, ...] = eqx.field(static=True)
    tables: tuple[Any, ...] | None
    order: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        names: Sequence[str],
        parents: Sequence[Sequence[str]],
        mechanisms: Sequence[Callable],
        noises: Sequence[Any],
        additive: Sequence[bool] | None = None,
        latent: Sequence[str] = (),
        tables: Sequence[Any] | None = None,
    ):
        names = tuple(names)
        p = len(names)
        for what, seq in (("parents", parents), ("mechanisms", mechanisms), ("noises", noises)):
            if len(seq) != p:
                raise ValueError(f"SCM: {what} must have one entry per variable ({p}), got {len(seq)}")
        additive = (False,) * p if additive is None else tuple(bool(a) for a in additive)
        if len(additive) != p:
            raise ValueError(f"SCM: additive must have one entry per variable ({p}), got {len(additive)}")
        if tables is not None and len(tables) != p:
            raise ValueError(f"SCM: tables must have one entry per variable ({p}), got {len(tables)}")
        for m in mechanisms:
            if not callable(m):
                raise TypeError(f"SCM: every mechanism must be callable f(pa, u), got {type(m).__name__}")
        for n in noises:
            if not isinstance(n, dist.Distribution):
                raise TypeError(f"SCM: every noise must be a numpyro distribution, got {type(n).__name__}")
        self.names = names
        self.parents = tuple(tuple(pa) for pa in parents)
        self.mechanisms = tuple(mechanisms)
        self.noises = tuple(noises)
        self.additive = additive
        self.latent = tuple(latent)
        self.tables = None if tables is None else tuple(tables)
        graph = DAG([(a, b) for b, pa in zip(names, self.parents) for a in pa], names, self.latent)
        self.order = tuple(names.index(v) for v in graph.topological_order())

    @property
    def graph(self) -> DAG:
        """The causal DAG (latent variables marked)."""
        return DAG([(a, b) for b, pa in zip(self.names, self.parents) for a in pa], self.names, self.latent)

    @property
    def observed(self) -> tuple[str, ...]:
        """The names of the observed variables."""
        return tuple(v for v in self.names if v not in self.latent)

    def _index(self, name: str, what: str) -> int:
        if name not in self.names:
            raise ValueError(f"{what}: unknown variable {name!r}; the SCM has {self.names}")
        return self.names.index(name)

    def do(self, intervention: Intervention | Mapping[str, ArrayLike] | None = None, /, **values: ArrayLike) -> "SCM":
        """The SCM after graph surgery: each intervened variable's equation becomes its set value (its parents are
        dropped). ``scm.do(X=1.0)``, ``scm.do({"X": 1.0})`` or ``scm.do(twinjax.causal.do(X=1.0))``.

        **Raises:** `ValueError` for an unknown variable, or (for a tabled model) a value outside ``0..card-1``.
        """
        iv = {} if intervention is None else dict(_as_intervention(intervention).variables)
        for k, v in values.items():
            if k in iv:
                raise ValueError(f"SCM.do: variable {k!r} is given twice")
            iv[k] = v
        parents, mechs, tables = list(self.parents), list(self.mechanisms), self.tables
        tables = None if tables is None else list(tables)
        for name, value in iv.items():
            i = self._index(name, "SCM.do")
            parents[i] = ()
            mechs[i] = _Constant(jnp.asarray(value))
            if tables is not None:
                card = tables[i].shape[-1]
                value_np = np.asarray(value)
                if value_np.ndim != 0 or value_np != int(value_np) or not 0 <= int(value_np) < card:
                    raise ValueError(f"SCM.do: {name!r} takes values 0..{card - 1}; got {value!r}")
                tables[i] = jax.nn.one_hot(int(value_np), card, dtype=jnp.asarray(tables[i]).dtype)
        return SCM(self.names, parents, mechs, self.noises, self.additive, self.latent, tables)

    def sample_noise(self, key: PRNGKeyArray, n: int) -> dict[str, Array]:
        """``n`` independent draws of every exogenous noise, ``{name: (n,)}``."""
        keys = jax.random.split(key, len(self.names))
        return {v: d.sample(k, (n,)) for v, d, k in zip(self.names, self.noises, keys)}

    def propagate(self, noise: Mapping[str, Array]) -> dict[str, Array]:
        """Evaluate the structural equations at given noises ``{name: (n,)}`` (one pass, topological order)."""
        values: dict[str, Array] = {}
        for i in self.order:
            v = self.names[i]
            values[v] = self.mechanisms[i]({p: values[p] for p in self.parents[i]}, noise[v])
        return {v: values[v] for v in self.names}

    def sample(
        self, key: PRNGKeyArray, n: int, intervention: Intervention | Mapping[str, ArrayLike] | None = None
    ) -> dict[str, Array]:
        """Draw ``n`` units from the (intervened) model.

        **Arguments:**

        - `key`: a PRNG key.
        - `n`: the number of units (a Python int).
        - `intervention`: optional ``do(...)`` applied first.

        **Returns:** ``{name: array of shape (n,)}`` for every variable, latent ones included.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"SCM.sample: n must be a positive int, got {n!r}")
        model = self if intervention is None else self.do(intervention)
        return model.propagate(model.sample_noise(key, n))

    def abduct(self, key: PRNGKeyArray, evidence: Mapping[str, ArrayLike], n: int) -> tuple[dict[str, Array], Array]:
        """Posterior noise draws given `evidence` (likelihood weighting, see the module docstring).

        **Returns:** ``(noise, weights)``: ``{name: (n,)}`` and normalised weights of shape ``(n,)``.

        **Raises:** an `eqx.error_if` error (at run time) when no draw reproduces the evidence.
        """
        for name in evidence:
            self._index(name, "SCM.abduct evidence")
        noise = self.sample_noise(key, n)
        values: dict[str, Array] = {}
        logw = jnp.zeros(n)
        for i in self.order:
            v = self.names[i]
            pa = {p: values[p] for p in self.parents[i]}
            if v in evidence:
                obs = jnp.broadcast_to(jnp.asarray(evidence[v], noise[v].dtype), (n,))
                if self.additive[i]:
                    u = obs - self.mechanisms[i](pa, jnp.zeros(n))
                    noise[v] = u
                    logw = logw + self.noises[i].log_prob(u)
                else:
                    hit = self.mechanisms[i](pa, noise[v]) == obs
                    logw = jnp.where(hit, logw, -jnp.inf)
                values[v] = obs
            else:
                values[v] = self.mechanisms[i](pa, noise[v])
        logw = eqx.error_if(logw, jnp.all(jnp.isneginf(logw)), "SCM.abduct: no noise draw reproduces the evidence")
        return noise, jax.nn.softmax(logw)

    def counterfactual(
        self,
        key: PRNGKeyArray,
        evidence: Mapping[str, ArrayLike],
        intervention: Intervention | Mapping[str, ArrayLike],
        n: int = 1000,
    ) -> tuple[dict[str, Array], Array]:
        """Counterfactual distribution ``P(V_{do(x)} | evidence)``: abduction → action → prediction.

        **Arguments:**

        - `key`: a PRNG key.
        - `evidence`: observed values ``{name: scalar}`` of the factual unit.
        - `intervention`: the hypothetical ``do(...)``.
        - `n`: number of weighted draws.

        **Returns:** ``(values, weights)``: counterfactual values ``{name: (n,)}`` and normalised weights ``(n,)``; a
        counterfactual expectation is ``Σ weights * values[name]``.
        """
        noise, weights = self.abduct(key, evidence, n)
        return self.do(intervention).propagate(noise), weights


def linear_gaussian_scm(
    weights: Float[ArrayLike, "p p"],
    noise_sd: Float[ArrayLike, " p"],
    names: Sequence[str] | None = None,
    intercept: Float[ArrayLike, " p"] | None = None,
    latent: Sequence[str] = (),
) -> SCM:
    """A linear-Gaussian SCM ``V_j := c_j + Σ_i W_ij V_i + U_j``, ``U_j ~ N(0, σ_j²)``.

    **Arguments:**

    - `weights`: ``(p, p)``, ``W[i, j]`` is the weight of the edge ``i → j`` (zero: no edge); must be acyclic.
    - `noise_sd`: ``(p,)`` noise standard deviations (> 0).
    - `names`: variable names; default ``V0, V1, ...``.
    - `intercept`: ``(p,)``; default zero.
    - `latent`: names of hidden variables.
    """
    w = np.asarray(weights, dtype=float)
    p = w.shape[0]
    if w.shape != (p, p):
        raise ValueError(f"linear_gaussian_scm: weights must be square, got shape {w.shape}")
    sd = np.asarray(noise_sd, dtype=float)
    if sd.shape != (p,) or np.any(sd <= 0):
        raise ValueError(f"linear_gaussian_scm: noise_sd must be {p} positive numbers, got {sd}")
    names = tuple(f"V{i}" for i in range(p)) if names is None else tuple(names)
    if len(names) != p:
        raise ValueError(f"linear_gaussian_scm: names must have {p} entries, got {len(names)}")
    c = np.zeros(p) if intercept is None else np.asarray(intercept, dtype=float)
    parents, mechs = [], []
    for j in range(p):
        idx = [i for i in range(p) if w[i, j] != 0]
        parents.append(tuple(names[i] for i in idx))
        mechs.append(_Linear(parents[-1], jnp.asarray(w[idx, j]), jnp.asarray(c[j])))
    noises = [dist.Normal(0.0, float(s)) for s in sd]
    return SCM(names, parents, mechs, noises, (True,) * p, latent)


def linear_gaussian_moments(
    weights: Float[ArrayLike, "p p"],
    noise_sd: Float[ArrayLike, " p"],
    names: Sequence[str] | None = None,
    intercept: Float[ArrayLike, " p"] | None = None,
    intervention: Intervention | Mapping[str, float] | None = None,
) -> tuple[Float[Array, " p"], Float[Array, "p p"]]:
    """Closed-form mean and covariance of a linear-Gaussian SCM, optionally under ``do``.

    ``V = (I − Wᵀ)⁻¹ (c + U)``: mean ``A c``, covariance ``A diag(σ²) Aᵀ`` with ``A = (I − Wᵀ)⁻¹``; ``do(X = x)`` zeroes
    the column of ``X`` in ``W``, its noise, and sets its intercept to ``x``.
    """
    w = jnp.asarray(weights, dtype=float)
    p = w.shape[0]
    names = tuple(f"V{i}" for i in range(p)) if names is None else tuple(names)
    sd = jnp.asarray(noise_sd, dtype=float)
    c = jnp.zeros(p) if intercept is None else jnp.asarray(intercept, dtype=float)
    if intervention is not None:
        for name, value in _as_intervention(intervention).variables.items():
            if name not in names:
                raise ValueError(f"linear_gaussian_moments: unknown variable {name!r}; names are {names}")
            j = names.index(name)
            w, sd, c = w.at[:, j].set(0.0), sd.at[j].set(0.0), c.at[j].set(value)
    a = jnp.linalg.inv(jnp.eye(p) - w.T)
    return a @ c, (a * sd**2) @ a.T


def discrete_scm(cpts: Mapping[str, tuple[Sequence[str], Any]], latent: Sequence[str] = ()) -> SCM:
    """A discrete SCM from conditional probability tables.

    **Arguments:**

    - `cpts`: ``{name: (parents, table)}`` with ``table[pa_1, ..., pa_k, v] = P(V = v | pa)``, shape
      ``(card(pa_1), ..., card(pa_k), card(V))``, rows summing to one.
    - `latent`: names of hidden variables.

    Each mechanism is inverse-CDF sampling with ``U ~ Uniform(0, 1)`` (so ``V`` is monotone in ``U``).

    **Example** (the sprinkler network; ``exact_query`` gives ``P(W=1 | do(S=1), R=1) = 0.99``):

    ```python
    scm = discrete_scm({"C": ((), [0.5, 0.5]), "S": (("C",), [[0.5, 0.5], [0.9, 0.1]]), ...})
    ```
    """
    names = tuple(cpts)
    tables, parents = [], []
    for name in names:
        pa, table = cpts[name]
        pa = tuple(pa)
        t = np.asarray(table, dtype=float)
        if t.ndim != len(pa) + 1:
            raise ValueError(f"discrete_scm: table of {name!r} must have {len(pa) + 1} axes (parents, value)")
        if np.any(t < 0) or not np.allclose(t.sum(-1), 1.0, atol=1e-12):
            raise ValueError(f"discrete_scm: table of {name!r} must hold probabilities whose rows sum to 1")
        for k, q in enumerate(pa):
            if q not in cpts:
                raise ValueError(f"discrete_scm: parent {q!r} of {name!r} has no table")
            if np.asarray(cpts[q][1]).shape[-1] != t.shape[k]:
                raise ValueError(f"discrete_scm: axis {k} of {name!r}'s table must match the cardinality of {q!r}")
        tables.append(jnp.asarray(t))
        parents.append(pa)
    mechs = [_Table(pa, t) for pa, t in zip(parents, tables)]
    noises = [dist.Uniform(0.0, 1.0) for _ in names]
    return SCM(names, parents, mechs, noises, None, latent, tables)


def exact_query(
    scm: SCM,
    query: Mapping[str, int],
    evidence: Mapping[str, int] | None = None,
    intervention: Intervention | Mapping[str, int] | None = None,
) -> float:
    """``P(query | evidence)`` in ``scm.do(intervention)`` by enumerating the joint (float64 NumPy; exact up to
    rounding). Requires a tabled SCM (`discrete_scm`); latent variables are summed out.

    **Raises:** `ValueError` for an untabled SCM, unknown names, or evidence of probability zero.
    """
    if scm.tables is None:
        raise ValueError("exact_query: the SCM has no probability tables; build it with discrete_scm")
    model = scm if intervention is None else scm.do(intervention)
    evidence = dict(evidence or {})
    if len(model.names) > len(string.ascii_letters):
        raise ValueError(f"exact_query: at most {len(string.ascii_letters)} variables, got {len(model.names)}")
    letters = dict(zip(model.names, string.ascii_letters))
    operands, subs = [], []
    for v, pa, t in zip(model.names, model.parents, model.tables):
        operands.append(np.asarray(t, dtype=np.float64))
        subs.append("".join(letters[p] for p in pa) + letters[v])
    joint = np.einsum(",".join(subs) + "->" + "".join(letters[v] for v in model.names), *operands)

    def prob(assign: Mapping[str, int]) -> float:
        index = []
        for v in model.names:
            index.append(int(assign[v]) if v in assign else slice(None))
        return float(np.sum(joint[tuple(index)]))

    for name in itertools.chain(query, evidence):
        model._index(name, "exact_query")
    for name in set(query) & set(evidence):
        if query[name] != evidence[name]:
            return 0.0
    denominator = prob(evidence)
    if denominator <= 0:
        raise ValueError(f"exact_query: the evidence {evidence} has probability zero")
    return prob({**evidence, **query}) / denominator
