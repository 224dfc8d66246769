"""Input validation shared by the public entry points.

Checks run at trace time when the value is concrete (a NumPy array, a Python number or a JAX array outside a trace),
so a user's mistake raises a ``ValueError`` naming the argument before anything compiles. Values that only exist
inside a trace are checked with ``eqx.error_if`` by the caller where it matters.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """Whether ``x`` has a value now (not an abstract tracer inside ``jit``/``vmap``/``grad``)."""
    if isinstance(x, jax.core.Tracer):
        return False
    return True


def as_float_array(x, name: str, ndim: int | None = None) -> jax.Array:
    """Convert ``x`` to a floating JAX array (keeping its dtype if already floating), checking its rank."""
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"`{name}` must be an array of numbers, got {type(x).__name__}.") from e
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(jnp.result_type(float))
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {tuple(arr.shape)}.")
    return arr


def check_square(x, name: str, size: int | None = None) -> None:
    """Raise unless ``x`` is a square matrix (of side ``size`` when given)."""
    shape = tuple(jnp.shape(x))
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"`{name}` must be a square matrix, got shape {shape}.")
    if size is not None and shape[0] != size:
        raise ValueError(f"`{name}` must have shape ({size}, {size}), got {shape}.")


def check_covariance(cov, name: str) -> None:
    """Raise if a concrete covariance matrix is non-finite, asymmetric or has a negative variance / eigenvalue."""
    if not is_concrete(cov):
        return
    c = np.asarray(cov, dtype=np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"`{name}` must be finite, got {c}.")
    d = np.diag(c)
    if np.any(d < 0):
        raise ValueError(f"`{name}` has a negative variance on its diagonal: {d}. Variances must be >= 0.")
    scale = max(1.0, float(np.max(np.abs(c))))
    if not np.allclose(c, c.T, rtol=1e-6, atol=1e-9 * scale):
        raise ValueError(f"`{name}` must be symmetric; got {c}.")
    eig = np.linalg.eigvalsh(0.5 * (c + c.T))
    if eig.min() < -1e-8 * scale:
        raise ValueError(f"`{name}` must be positive semi-definite; its smallest eigenvalue is {eig.min():.3g}.")


def as_gaussian(mean, cov, mean_name: str = "mean", cov_name: str = "cov") -> tuple[jax.Array, jax.Array]:
    """A Gaussian's ``(mean (n,), cov (n, n))`` as float arrays, checked: shapes agree and ``cov`` is a covariance."""
    mean = as_float_array(mean, mean_name, ndim=1)
    cov = as_float_array(cov, cov_name)
    check_square(cov, cov_name, mean.shape[0])
    check_covariance(cov, cov_name)
    return mean, cov


def concrete_probability(value, name: str) -> float:
    """``value`` as a Python float in the open interval (0, 1); it must be concrete (it sets a threshold or a shape)."""
    if not is_concrete(value) or np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a concrete scalar in (0, 1) (a Python float), got {value!r}.")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` must lie in (0, 1), got {value!r}.")
    return value


def check_times(ts, name: str = "ts") -> jax.Array:
    """Convert and check a strictly increasing 1-D time grid; return it as an array."""
    ts = as_float_array(ts, name, ndim=1)
    if ts.shape[0] < 1:
        raise ValueError(f"`{name}` must hold at least one time, got shape {tuple(ts.shape)}.")
    if is_concrete(ts):
        t = np.asarray(ts)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"`{name}` must be finite; got non-finite entries at {np.nonzero(~np.isfinite(t))[0]}.")
        bad = np.nonzero(np.diff(t) <= 0)[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"`{name}` must be strictly increasing; got {name}[{i}] = {t[i]} followed by {name}[{i + 1}] = "
                f"{t[i + 1]}."
            )
    else:
        ts = eqx.error_if(ts, jnp.any(jnp.diff(ts) <= 0), f"`{name}` must be strictly increasing.")
    return ts


def check_finite_leaves(tree, name: str) -> None:
    """Raise naming the first non-finite concrete floating leaf of ``tree`` (e.g. a NaN parameter)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, float) or (isinstance(leaf, (jax.Array, np.ndarray)) and is_concrete(leaf)):
            arr = np.asarray(leaf)
            if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
                raise ValueError(f"`{name}{jax.tree_util.keystr(path)}` must be finite, got {arr}.")
