"""One tree-aware ``allclose`` with dtype-dependent default tolerances (STYLE.md §15)."""

import jax
import jax.numpy as jnp
import numpy as np

_TOL = {np.dtype("float64"): (1e-10, 1e-12), np.dtype("float32"): (1e-5, 1e-6), np.dtype("float16"): (1e-2, 1e-3)}


def tree_allclose(a, b, *, rtol=None, atol=None) -> bool:
    """``True`` when every pair of leaves has the same shape and is close (NaNs in the same places count as equal)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        dtype = np.result_type(x.dtype, y.dtype)
        r, t = _TOL.get(np.dtype(dtype), (0.0, 0.0))
        if not np.allclose(x, y, rtol=r if rtol is None else rtol, atol=t if atol is None else atol, equal_nan=True):
            return False
    return True


def assert_tree_allclose(a, b, **kw):
    assert tree_allclose(a, b, **kw), f"not close:\n{a}\n{b}"


__all__ = ["assert_tree_allclose", "jnp", "tree_allclose"]
