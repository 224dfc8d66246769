"""Parameter specifications: which fields of a twin are calibrated, their constraints and their priors.

A :class:`Params` spec sits beside a model. It names fields by dotted path (``"dynamics.length_m"``), gives each a
constraint (``positive``, ``interval``, ``real``) and a numpyro prior. It maps a model to a flat vector of physical
values and back, and to/from the unconstrained space where optimisers and samplers work: ``z = T⁻¹(φ)`` with ``T``
numpyro's bijection onto the constraint's support, so users always see physical units.

Example:
    ```python
    spec = tj.Params({"dynamics.length_m": tj.positive(prior=dist.LogNormal(0.0, 0.3)),
                      "dynamics.damping_per_s": tj.interval(0.0, 1.0)})
    z = spec.to_unconstrained(twin)             # flat, unconstrained
    twin2 = spec.from_unconstrained(twin, z + 0.1)
    phi = spec.sample(jax.random.key(0), twin, 1000)   # (1000, 2) draws from the prior, physical units
    ```
"""

import dataclasses
import math
import re
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from .._types import Array, Float, Key, Scalar


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One calibrated field: its support (a numpyro constraint) and its prior (a numpyro distribution or None)."""

    constraint: Any
    prior: dist.Distribution | None = None

    @property
    def transform(self):
        """The bijection from the unconstrained reals onto the support."""
        return biject_to(self.constraint)


def positive(prior: dist.Distribution | None = None) -> ParamSpec:
    """A parameter > 0 (unconstrained by ``log``). Default prior: none (required for sampling)."""
    return ParamSpec(constraints.positive, prior)


def interval(low: float, high: float, prior: dist.Distribution | None = None) -> ParamSpec:
    """A parameter in ``(low, high)`` (unconstrained by a scaled logit). Default prior: uniform on the interval."""
    if not high > low:
        raise ValueError(f"`interval` needs high > low, got low={low!r}, high={high!r}.")
    return ParamSpec(constraints.interval(low, high), dist.Uniform(low, high) if prior is None else prior)


def real(prior: dist.Distribution | None = None) -> ParamSpec:
    """An unconstrained parameter."""
    return ParamSpec(constraints.real, prior)


_TOKEN = re.compile(r"([A-Za-z_][A-Za-z_0-9]*)|\[(\d+)\]")


def _parse_path(path: str) -> tuple:
    parts = []
    for piece in path.split("."):
        pos = 0
        for m in _TOKEN.finditer(piece):
            if m.start() != pos:
                raise ValueError(f"Cannot parse parameter path {path!r}.")
            parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
            pos = m.end()
        if pos != len(piece) or not piece:
            raise ValueError(f"Cannot parse parameter path {path!r}: use dotted field names like 'dynamics.r0_ohm'.")
    return tuple(parts)


def get_path(model, path: str):
    """The value at a dotted path (``"dynamics.cells[0].r0_ohm"``) of a model."""
    obj = model
    for i, part in enumerate(_parse_path(path)):
        try:
            obj = obj[part] if isinstance(part, int) else getattr(obj, part)
        except (AttributeError, IndexError, KeyError, TypeError) as e:
            where = type(obj).__name__
            fields = [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else []
            hint = f" Its fields: {', '.join(fields)}." if fields else ""
            raise ValueError(f"Parameter path {path!r}: {where} has no {part!r}.{hint}") from e
    return obj


def set_path(model, path: str, value):
    """A copy of ``model`` with the value at ``path`` replaced (``eqx.tree_at``; works for Python-float fields)."""
    parts = _parse_path(path)

    def where(m):
        obj = m
        for part in parts:
            obj = obj[part] if isinstance(part, int) else getattr(obj, part)
        return obj

    return eqx.tree_at(where, model, value, is_leaf=lambda x: x is None)


class Params:
    """A specification of a twin's calibrated parameters (see the module docstring).

    Arguments:
        specs: mapping from dotted field path to :class:`ParamSpec` (``positive``, ``interval``, ``real``).

    Raises:
        ValueError: if a path does not exist on the model, or a constraint is not a numpyro constraint.
    """

    def __init__(self, specs: dict[str, ParamSpec]):
        if not isinstance(specs, dict) or not specs:
            raise ValueError("`specs` must be a non-empty dict {'dynamics.field': tj.positive(...), ...}.")
        for name, s in specs.items():
            _parse_path(name)
            if not isinstance(s, ParamSpec):
                raise ValueError(f"Spec for {name!r} must be tj.positive/interval/real(...), got {type(s).__name__}.")
        self.specs = dict(specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def __repr__(self):
        return f"Params({', '.join(self.names)})"

    def shapes(self, model) -> dict[str, tuple[int, ...]]:
        """The shape of each parameter on ``model``."""
        return {n: tuple(np.shape(get_path(model, n))) for n in self.names}

    def size(self, model) -> int:
        """Length of the flat parameter vector."""
        return sum(math.prod(s) for s in self.shapes(model).values())

    def labels(self, model) -> list[str]:
        """One label per entry of the flat vector (``name`` or ``name[i]``)."""
        out = []
        for n, shape in self.shapes(model).items():
            k = math.prod(shape)
            out.extend([n] if shape == () else [f"{n}[{i}]" for i in range(k)])
        return out

    def _split(self, model, flat):
        pieces, i = {}, 0
        for n, shape in self.shapes(model).items():
            k = math.prod(shape)
            pieces[n] = flat[i : i + k].reshape(shape)
            i += k
        return pieces

    def values(self, model) -> Float[Array, " param"]:
        """The current physical values, flattened."""
        return jnp.concatenate([jnp.ravel(jnp.asarray(get_path(model, n), dtype=float)) for n in self.names])

    def with_values(self, model, flat: Float[Array, " param"]):
        """A copy of ``model`` with the parameters set to the physical values ``flat``."""
        flat = jnp.asarray(flat)
        if flat.shape != (self.size(model),):
            raise ValueError(f"`flat` must have shape ({self.size(model)},) for {self!r}, got {tuple(flat.shape)}.")
        for n, v in self._split(model, flat).items():
            model = set_path(model, n, v)
        return model

    def to_unconstrained(self, model) -> Float[Array, " param"]:
        """``z = T⁻¹(φ)``: the model's parameters in the unconstrained space."""
        pieces = self._split(model, self.values(model))
        return jnp.concatenate([jnp.ravel(self.specs[n].transform.inv(v)) for n, v in pieces.items()])

    def constrain(self, model, z: Float[Array, " param"]) -> Float[Array, " param"]:
        """``φ = T(z)`` as a flat vector of physical values."""
        pieces = self._split(model, jnp.asarray(z))
        return jnp.concatenate([jnp.ravel(self.specs[n].transform(v)) for n, v in pieces.items()])

    def from_unconstrained(self, model, z: Float[Array, " param"]):
        """A copy of ``model`` with parameters ``T(z)``."""
        return self.with_values(model, self.constrain(model, z))

    def _priors(self):
        missing = [n for n, s in self.specs.items() if s.prior is None]
        if missing:
            raise ValueError(f"These parameters have no prior, so they cannot be sampled or scored: {missing}.")
        return {n: s.prior for n, s in self.specs.items()}

    def log_prior(self, model, flat: Float[Array, " param"]) -> Scalar:
        """``log p(φ)`` of physical values ``flat`` (``-inf`` outside the support)."""
        priors = self._priors()
        total = 0.0
        for n, v in self._split(model, jnp.asarray(flat)).items():
            inside = self.specs[n].constraint.check(v)
            # score a point inside the support where v is outside, then mask it: no out-of-support evaluation
            safe = jnp.where(inside, v, self.specs[n].transform(jnp.zeros_like(v)))
            lp = priors[n].log_prob(safe)
            total = total + jnp.sum(jnp.where(inside, lp, -jnp.inf))
        return total

    def log_prior_unconstrained(self, model, z: Float[Array, " param"]) -> Scalar:
        """``log p(T(z)) + log|det ∂T/∂z|``: the prior density in the unconstrained space (what samplers target)."""
        total = 0.0
        for n, zi in self._split(model, jnp.asarray(z)).items():
            t = self.specs[n].transform
            phi = t(zi)
            total = total + jnp.sum(self._priors()[n].log_prob(phi)) + jnp.sum(t.log_abs_det_jacobian(zi, phi))
        return total

    def sample(self, key: Key, model, n: int | None = None) -> Float[Array, "*n param"]:
        """Draws of the flat physical parameter vector from the prior: shape ``(param,)`` or ``(n, param)``."""
        priors = self._priors()
        shapes = self.shapes(model)
        keys = jax.random.split(key, len(priors))
        batch = () if n is None else (n,)
        cols = []
        for k, (name, prior) in zip(keys, priors.items()):
            draw = prior.sample(k, batch + shapes[name] if prior.batch_shape == () else batch)
            draw = jnp.broadcast_to(draw, batch + shapes[name])
            cols.append(draw.reshape(batch + (-1,)))
        return jnp.concatenate(cols, axis=-1).astype(jnp.result_type(float))


def parameters_as_arrays(model):
    """Turn Python-float fields into 0-d JAX arrays so that ``jax.grad`` / ``eqx.filter_grad`` see them."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float) if isinstance(x, float) else x, model)
