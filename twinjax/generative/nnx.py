"""An adapter that lets a user's flax ``nnx.Module`` serve wherever twinjax expects a network (an equinox callable).

twinjax's own networks are equinox modules; flax is supported only through this adapter, not as a second internal
module system. :func:`from_nnx` splits the module into its graph definition (static, hashable) and its state (a pytree
of arrays, the trainable leaves), and the adapter merges them back on each call::

    from flax import nnx
    net = tj.generative.from_nnx(MyMLP(rngs=nnx.Rngs(0)))  # now an eqx.Module
    class MyModel(tj.generative.AbstractGenerativeModel):   # a field of any model; trained by train()
        net: eqx.Module
        ...

flax is an optional dependency (``pip install twinjax[flax]``); it is imported only when the adapter is used.
"""

from typing import Any

import equinox as eqx

__all__ = ["NNXAdapter", "from_nnx"]


class NNXAdapter(eqx.Module):
    """An ``nnx.Module`` as an equinox module: ``graphdef`` static, ``state`` the array leaves."""

    graphdef: Any = eqx.field(static=True)
    state: Any

    def __call__(self, *args, **kwargs):
        from flax import nnx

        return nnx.merge(self.graphdef, self.state)(*args, **kwargs)

    def to_nnx(self):
        """The flax module with the adapter's (e.g. trained) parameters."""
        from flax import nnx

        return nnx.merge(self.graphdef, self.state)


def from_nnx(module) -> NNXAdapter:
    """Wrap a flax ``nnx.Module`` (stateless at call time: no batch-norm statistics or RNG state are updated)."""
    try:
        from flax import nnx
    except ImportError as e:  # pragma: no cover - exercised only without flax
        raise ImportError("from_nnx needs flax: pip install 'twinjax[flax]'") from e
    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx: `module` must be a flax nnx.Module, got {type(module).__name__}")
    graphdef, state = nnx.split(module)
    return NNXAdapter(graphdef, state)
