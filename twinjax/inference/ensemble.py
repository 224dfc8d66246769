r"""Ensemble Kalman filters: stochastic EnKF, square-root ETKF, DEnKF and the local ETKF (LETKF).

The belief is an ensemble ``E`` of ``N`` members (rows, shape ``(N, n)``) with mean ``x̄`` and anomalies ``A = E - x̄``;
the sample covariance is ``P = AᵀA / (N - 1)``. The conventions of ``_base.py`` hold (the first measurement updates the
prior, every later one follows a prediction over the actual interval).

- forecast: every member goes through ``model.transition`` (vmapped); a stochastic twin (process noise or an SDE) adds
  ``w ~ N(0, Q)`` to each member, ``Q = model.process_noise_cov`` evaluated at the ensemble mean;
- analysis, in ensemble space after whitening by ``R^{-1/2}`` (symmetric inverse square root, so a diagonal ``R``
  stays local): ``Y = (h(E) - ȳ) R^{-1/2}``, ``r = (y - ȳ) R^{-1/2}``, ``G = Y Yᵀ + (N-1) I`` and ``w = G⁻¹ Y r``
  (the mean moves by ``wᵀ A``, which is the Kalman gain of the sample covariance applied to the mean innovation):

  * ``"stochastic"`` — perturbed observations (Burgers et al. 1998): each member ``m`` is updated with its own
    innovation ``d_m = r - z_m - Y_m`` whitened, ``z`` standard normal, centred and rescaled by ``√(N/(N-1))``:
    ``E ← E + D Yᵀ G⁻¹ A``;
  * ``"etkf"`` — the symmetric square-root transform (Bishop et al. 2001, Hunt et al. 2007):
    ``E ← x̄ + wᵀA + T A`` with ``T = √(N-1) G^{-1/2}`` (mean preserving, exact Kalman posterior covariance of the
    ensemble);
  * ``"denkf"`` — the deterministic EnKF (Sakov & Oke 2008): anomalies updated with half the gain,
    ``E ← x̄ + wᵀA + ½ (I + (N-1) G⁻¹) A``;
  * ``"letkf"`` — the ETKF done locally (Hunt et al. 2007): state variable ``i`` sees the observations of its
    neighbourhood, their whitened anomalies and innovations multiplied by ``√ρ_ij`` (R-localisation with the
    Gaspari–Cohn taper ``ρ``), one ``N × N`` transform per state variable, all computed at once;
- post-processing as DAPPER's ``post_process``: multiplicative inflation of the analysis anomalies ``A ← λ A`` and, with
  ``rotation=True``, a random mean-preserving orthogonal rotation ``A ← Θ A`` (``Θ = 11ᵀ/N + V Q Vᵀ``, ``Q`` Haar
  on the complement of ``1``). Both are skipped when no channel is observed.

Every method works in the smaller of ensemble space (``N × N``, when ``N <= p``) and observation space (``p × p``),
so a huge ensemble of a few sensors and a small ensemble of thousands of sensors are both cheap. The symmetric
square root ``G^{-1/2}`` comes from a Newton–Schulz iteration (matrix products only: faster than an eigen-decomposition
for these small matrices on a CPU, and batched for the LETKF); ``G⁻¹`` from a Cholesky factor.

Missing data: ``NaN`` channels get zero whitened anomalies and innovation (an infinite variance), so they carry no
weight in any method; a fully missing ``y`` leaves the ensemble unchanged (a predict-only step). The log-likelihood is
the Gaussian approximation ``log N(y_o; ȳ_o, Y_oᵀY_o/(N-1) + R_oo)`` of the forecast ensemble over the observed
channels ``o``, by Woodbury and Sylvester in the smaller space; with a diagonal ``R`` no ``p × p`` matrix is formed.

Localisation follows DAPPER (``dapper/tools/localization.py``): a localisation ``radius`` is the Gaspari–Cohn
half-width divided by ``1.82 ≈ √(10/3)``, so the taper is ``≈ e^{-1/2}`` at ``distance = radius`` and vanishes beyond
``3.64 radius``; coefficients ``≤ 10⁻³`` are dropped. Each state variable keeps only the observations inside the cut-off
(a fixed number of neighbours ``K``, padded with zero weights), so an LETKF cycle costs ``O(n K N² + n N³)``.

Randomness: the key given to :func:`enkf_init` / :func:`ensemble_kalman_filter` draws the initial ensemble and seeds
a counter-based bit generator (Philox, XLA's ``RngBitGenerator``) carried in the filter state; every forecast noise,
observation perturbation and rotation advances it. The same key gives the same result.

References:
    G. Evensen, *Data Assimilation: The Ensemble Kalman Filter*, 2nd ed., Springer (2009).
    G. Burgers, P. J. van Leeuwen, G. Evensen, "Analysis scheme in the ensemble Kalman filter", MWR 126 (1998).
    P. Sakov, P. R. Oke, "A deterministic formulation of the ensemble Kalman filter: an alternative to ensemble
    square root filters", Tellus A 60 (2008); "Implications of the form of the ensemble transformation in the
    ensemble square root filters", MWR 136 (2008).
    B. R. Hunt, E. J. Kostelich, I. Szunyogh, "Efficient data assimilation for spatiotemporal chaos: a local ensemble
    transform Kalman filter", Physica D 230 (2007).
    G. Gaspari, S. E. Cohn, "Construction of correlation functions in two and three dimensions", QJRMS 125 (1999),
    eq. (4.10).
    P. N. Raanes et al., DAPPER (``dapper/da_methods/ensemble.py``, ``dapper/tools/localization.py``).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Real, UInt32

from .._checks import as_float_array, check_covariance, check_square, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Int, Key, Obs, Scalar
from ..model.distributions import _psd_sqrt
from ..model.observation import GaussianObservation
from ..model.ssm import LinearGaussianSSM
from ._base import LOG_2PI, check_model, default_control, prepare_inputs

METHODS = ("stochastic", "etkf", "denkf", "letkf")
GC_SCALE = 1.82  # DAPPER's radius → Gaspari–Cohn half-width factor (≈ √(10/3): taper e^{-1/2} at the radius)
GC_CUTOFF = 1e-3  # DAPPER drops taper coefficients at or below this
_COVARIANCE_STATE_LIMIT = 100  # store_covariances=None stores (T, n, n) sample covariances only up to this n


# ---------------------------------------------------------------------------------------------------------------------
# state, info and result containers


class EnsembleFilterState(eqx.Module):
    """An ensemble belief at time ``t``; ``u`` is the control held since ``t``.

    Attributes:
        ensemble: the members ``(N, n)`` (one per row).
        t: the time of the belief (s).
        u: the control held since ``t``, ``(control,)``.
        rng: the state ``(4,)`` of the counter-based bit generator (Philox, XLA's ``RngBitGenerator``) that the
            forecast noise, perturbed observations and rotations draw from; seeded from the key given to
            :func:`enkf_init` and advanced by every draw (see :func:`_normal`).
        log_likelihood: the accumulated ``log p(y_{0:k})`` (Gaussian approximation of each predictive).
        status: the worst :class:`~twinjax.Status` of the member transitions so far.
    """

    ensemble: Float[Array, "member state"]
    t: Scalar
    u: Float[Array, " control"]
    rng: UInt32[Array, "4"]
    log_likelihood: Scalar
    status: Int[Array, ""]

    @property
    def mean(self) -> Float[Array, " state"]:
        """The ensemble mean ``x̄``."""
        return jnp.mean(self.ensemble, axis=0)

    @property
    def cov(self) -> Float[Array, "state state"]:
        """The sample covariance ``AᵀA / (N - 1)``."""
        return _sample_cov(self.ensemble)

    @property
    def spread(self) -> Float[Array, " state"]:
        """The ensemble standard deviation of each state variable."""
        return jnp.std(self.ensemble, axis=0, ddof=1)


class EnsembleInnovation(eqx.Module):
    """What one ensemble update saw: the mean innovation ``y - ȳ`` (0 on missing channels), the observed mask and the
    log-likelihood increment ``log p(y_k | y_{<k})`` (Gaussian approximation)."""

    residual: Float[Array, " obs"]
    mask: Bool[Array, " obs"]
    log_likelihood: Scalar


class EnsembleFilterResult(eqx.Module):
    """Output of :func:`ensemble_kalman_filter`.

    Attributes:
        ts: the observation times ``(T,)``.
        means: the analysis ensemble means ``(T, n)``.
        spreads: the analysis ensemble standard deviations ``(T, n)``.
        covariances: the analysis sample covariances ``(T, n, n)``, or ``None`` when not stored (large ``n``).
        predicted_means: the forecast ensemble means ``(T, n)`` (the prior ensemble's at ``k = 0``).
        log_likelihood: ``log p(y_{0:T-1})`` under the Gaussian approximation of each forecast.
        log_likelihoods: its per-step increments ``(T,)``.
        status: per-step worst :class:`~twinjax.Status` of the member transitions ``(T,)``.
        ensembles: the analysis ensembles ``(T, N, n)``, or ``None`` unless ``store_ensembles=True``.
        final_state: the :class:`EnsembleFilterState` after the last measurement (to continue online).
    """

    ts: Float[Array, " time"]
    means: Float[Array, "time state"]
    spreads: Float[Array, "time state"]
    covariances: Float[Array, "time state state"] | None
    predicted_means: Float[Array, "time state"]
    log_likelihood: Scalar
    log_likelihoods: Float[Array, " time"]
    status: Int[Array, " time"]
    ensembles: Float[Array, "time member state"] | None
    final_state: EnsembleFilterState

    @property
    def ok(self) -> Bool[Array, ""]:
        """Whether every member transition succeeded."""
        return jnp.all(self.status == 0)


class Localisation(eqx.Module):
    """Which observations each state variable's local analysis uses, and their taper weights.

    Attributes:
        indices: observation indices ``(n, K)`` per state variable (padding entries have weight 0).
        weights: taper coefficients ``ρ ∈ [0, 1]``, ``(n, K)``.

    Build one with :func:`localisation`.
    """

    indices: Int[Array, "state neighbour"]
    weights: Float[Array, "state neighbour"]


def _sample_cov(E: Float[Array, "member state"]) -> Float[Array, "state state"]:
    A = E - jnp.mean(E, axis=0)
    return A.T @ A / (E.shape[0] - 1)


# ---------------------------------------------------------------------------------------------------------------------
# Gaspari–Cohn taper and localisation


def gaspari_cohn(distance: Real[ArrayLike, "*shape"], half_width: Real[ArrayLike, ""]) -> Float[Array, "*shape"]:
    r"""The Gaspari–Cohn (1999, eq. 4.10) fifth-order piecewise-rational taper.

    With ``r = |distance| / c`` (``c`` the half-width):

    $$ \rho = \begin{cases} 1 - \tfrac53 r^2 + \tfrac58 r^3 + \tfrac12 r^4 - \tfrac14 r^5, & r \le 1, \\
    4 - 5r + \tfrac53 r^2 + \tfrac58 r^3 - \tfrac12 r^4 + \tfrac1{12} r^5 - \tfrac{2}{3r}, & 1 < r \le 2, \\
    0, & r > 2, \end{cases} $$

    a compactly supported correlation function (1 at 0, twice continuously differentiable, 0 beyond ``2c``).
    ``c = inf`` gives 1 everywhere (no localisation). DAPPER's localisation radius ``ℓ`` corresponds to
    ``c = 1.82 ℓ`` (see :func:`localisation`).

    Arguments:
        distance: distances (any shape, same units as ``half_width``).
        half_width: ``c > 0``.

    Returns:
        The taper coefficients, the shape of ``distance``.

    Raises:
        ValueError: if a concrete ``half_width`` is not positive.

    Example:
        ```python
        gaspari_cohn(jnp.array([0.0, 1.0, 2.0]), 1.0)   # [1, 0.2083, 0]
        ```

    References:
        G. Gaspari, S. E. Cohn, QJRMS 125 (1999), eq. (4.10).
    """
    if is_concrete(half_width) and not float(np.asarray(half_width)) > 0:
        raise ValueError(f"`half_width` must be positive, got {half_width!r}.")
    d = jnp.abs(jnp.asarray(distance, dtype=jnp.result_type(float)))
    return _gc(d / half_width, jnp)


def _gc(r, xp):
    """The Gaspari–Cohn polynomial pieces at ``r = d / c >= 0`` (``xp``: ``jax.numpy``, or NumPy at trace time)."""
    inner = 1.0 + r**2 * (-(r**3) / 4 + r**2 / 2) + r**3 * (5 / 8) - r**2 * (5 / 3)
    r_safe = xp.where(r > 1.0, r, 1.0)
    outer = r_safe**2 * (r_safe**3 / 12 - r_safe**2 / 2) + r_safe**3 * (5 / 8) + r_safe**2 * (5 / 3)
    outer = outer - 5 * r_safe + 4 - (2 / 3) / r_safe
    return xp.where(r <= 1.0, inner, xp.where(r <= 2.0, outer, 0.0))


def _as_coords(coords, name: str) -> np.ndarray:
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2 or c.shape[0] == 0 or not np.all(np.isfinite(c)):
        raise ValueError(f"`{name}` must be finite coordinates of shape (points,) or (points, dims), got {c.shape}.")
    return c


def localisation(
    state_coords: ArrayLike,
    obs_coords: ArrayLike,
    radius: int | float,
    *,
    domain: int | float | tuple[int | float, ...] | None = None,
    cutoff: int | float = GC_CUTOFF,
) -> Localisation:
    """The observation neighbourhoods of an LETKF with a Gaspari–Cohn taper (DAPPER's conventions).

    The taper between state variable ``i`` and observation ``j`` is ``gaspari_cohn(d_ij, 1.82 · radius)`` with
    ``d_ij`` the Euclidean distance between their coordinates (periodic along each axis of length ``domain``);
    coefficients ``≤ cutoff`` are dropped. Each state variable keeps its ``K`` largest coefficients, ``K`` the largest
    neighbourhood, padded with zero weights. Computed with NumPy (the neighbourhood size fixes array shapes).

    Arguments:
        state_coords: positions of the state variables ``(n,)`` or ``(n, d)``.
        obs_coords: positions of the observations ``(p,)`` or ``(p, d)``.
        radius: the localisation radius in coordinate units (DAPPER's ``loc_rad``); ``inf`` uses every
            observation with weight 1.
        domain: the period of each axis for a periodic domain (e.g. ``40`` for a Lorenz-96 ring), or ``None``.
        cutoff: taper coefficients at or below this are dropped (DAPPER: 1e-3).

    Returns:
        A :class:`Localisation` with ``(n, K)`` indices and weights.

    Raises:
        ValueError: for non-finite or mis-shaped coordinates, dimensions that disagree, a non-positive ``radius`` or a
            ``domain`` of the wrong length.

    Example:
        ```python
        loc = localisation(jnp.arange(40), jnp.arange(40), radius=4.0, domain=40)   # the L96 ring
        ```
    """
    sc = _as_coords(state_coords, "state_coords")
    oc = _as_coords(obs_coords, "obs_coords")
    if sc.shape[1] != oc.shape[1]:
        raise ValueError(
            f"`state_coords` and `obs_coords` must have the same number of dimensions, got {sc.shape[1]} and "
            f"{oc.shape[1]}."
        )
    radius = float(radius)
    if not radius > 0:
        raise ValueError(f"`radius` must be positive (or inf), got {radius}.")
    period = None
    if domain is not None:
        period = np.atleast_1d(np.asarray(domain, dtype=np.float64))
        if period.shape != (sc.shape[1],) or not np.all(period > 0):
            raise ValueError(f"`domain` must give one positive period per dimension ({sc.shape[1]}), got {domain!r}.")
    n, p = sc.shape[0], oc.shape[0]
    half_width = GC_SCALE * radius
    chunks = []
    for start in range(0, n, 512):  # chunked: a 4000 x 4000 problem never holds more than 512 x p distances
        diff = np.abs(sc[start : start + 512, None, :] - oc[None, :, :])
        if period is not None:
            diff = np.minimum(diff, period - diff)
        dist = np.sqrt(np.sum(diff**2, axis=-1))
        w = np.ones_like(dist) if np.isinf(radius) else _gc(dist / half_width, np)
        chunks.append(np.where(w > cutoff, w, 0.0))
    k = max(1, max(int(np.max(np.sum(c > 0, axis=1))) for c in chunks))
    indices, weights = np.empty((n, k), np.int64), np.empty((n, k))
    for start, w in zip(range(0, n, 512), chunks):
        top = np.argpartition(-w, k - 1, axis=1)[:, :k] if k < p else np.tile(np.arange(p), (w.shape[0], 1))
        w_top = np.take_along_axis(w, top, axis=1)
        order = np.lexsort((top, -w_top), axis=1)  # largest taper first, ties by index: a deterministic layout
        top, w_top = np.take_along_axis(top, order, axis=1), np.take_along_axis(w_top, order, axis=1)
        indices[start : start + 512] = np.where(w_top > 0, top, 0)
        weights[start : start + 512] = w_top
    return Localisation(jnp.asarray(indices, dtype=jnp.int32), jnp.asarray(weights))


def _full_localisation(n: int, p: int, dtype) -> Localisation:
    return Localisation(jnp.tile(jnp.arange(p, dtype=jnp.int32), (n, 1)), jnp.ones((n, p), dtype))


# ---------------------------------------------------------------------------------------------------------------------
# the forecast


def _seed(key: Key) -> UInt32[Array, "4"]:
    """The bit generator's state, drawn from a JAX PRNG key."""
    return jax.random.bits(key, (4,), jnp.uint32)


def _normal(rng: UInt32[Array, "4"], shape: tuple[int, ...], dtype) -> tuple[UInt32[Array, "4"], Array]:
    """``(new state, standard normals)`` from XLA's ``RngBitGenerator`` (Philox 4×32-10), one operation per draw.

    Within the compiled assimilation loop this is about twice as fast per cycle as ``jax.random`` (whose threefry
    hash runs as a small loop on CPU, twice per cycle for a split and a draw). Uniforms ``(k + ½) 2^{-b}`` from the
    top ``b`` bits (53 for float64, 24 for float32), then the inverse normal CDF.
    """
    wide = jnp.dtype(dtype) == jnp.float64
    rng, bits = lax.rng_bit_generator(
        rng, shape, dtype=jnp.uint64 if wide else jnp.uint32, algorithm=lax.RandomAlgorithm.RNG_PHILOX
    )
    if wide:
        u = ((bits >> 11).astype(jnp.float64) + 0.5) * 2.0**-53
    else:
        u = ((bits >> 8).astype(jnp.float32) + 0.5) * 2.0**-24
    return rng, jax.scipy.special.ndtri(u).astype(dtype)


def _forecast(model, E: Float[Array, "member state"], t0, t1, u, rng):
    """``(forecast ensemble, new rng, worst member status)``."""
    E1, status = jax.vmap(lambda x: model.transition_with_status(t0, t1, x, u))(E)
    if model.is_stochastic:
        Q = model.process_noise_cov(t0, t1, jnp.mean(E, axis=0), u)
        L = _psd_sqrt(Q)
        rng, z = _normal(rng, E1.shape, E1.dtype)
        E1 = E1 + z @ L.T
    return E1, rng, jnp.max(status).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------------------------
# the analysis


def _sensor(model, t, E, u):
    """``(h(E) (N, p), R (p, p))``."""
    if isinstance(model, LinearGaussianSSM):
        return E @ model.C.T + model.D @ u, model.R
    obs = model.observation
    Eo = jax.vmap(lambda x: jnp.atleast_1d(jnp.asarray(obs.mean(t, x, u))))(E)
    return Eo, obs.covariance(t, jnp.mean(E, axis=0), u)


def _whiten(Y, r, R, mask, diagonal: bool):
    """Whitened anomalies ``Y R^{-1/2}``, innovation ``R^{-1/2} r`` (zero on missing channels) and ``log det R_oo``."""
    Y = jnp.where(mask[None, :], Y, 0.0)
    r = jnp.where(mask, r, 0.0)
    if diagonal:
        var = jnp.where(mask, jnp.diagonal(R), 1.0)
        scale = lax.rsqrt(var)
        return Y * scale, r * scale, jnp.sum(jnp.log(var))
    both = mask[:, None] & mask[None, :]
    R_m = jnp.where(both, 0.5 * (R + R.T), jnp.eye(R.shape[0], dtype=R.dtype))
    lam, V = jnp.linalg.eigh(R_m)
    inv_sqrt = (V * lax.rsqrt(lam)) @ V.T  # symmetric: keeps whitened channels local for a (near-)diagonal R
    return Y @ inv_sqrt, inv_sqrt @ r, jnp.sum(jnp.log(lam))


def _bmm(X: Float[Array, "*batch a b"], Y: Float[Array, "*batch b c"]) -> Float[Array, "*batch a c"]:
    """Matrix products, batched over leading axes. A batch of small matrices (the LETKF's ``N × N`` transforms, one per
    state variable) is multiplied as ``N`` fused broadcast-and-add terms: XLA's CPU backend runs a batched ``dot`` as a
    loop of tiny GEMM calls, several times slower for ``N`` of a few to a few tens."""
    if X.ndim == 2:
        return X @ Y
    if X.shape[-1] > 32:
        return jnp.einsum("...ab,...bc->...ac", X, Y)
    acc = X[..., :, 0:1] * Y[..., 0:1, :]
    for b in range(1, X.shape[-1]):
        acc = acc + X[..., :, b : b + 1] * Y[..., b : b + 1, :]
    return acc


def _inv_sqrt(G: Float[Array, "*batch k k"], lo, hi) -> Float[Array, "*batch k k"]:
    """``G^{-1/2}`` of symmetric positive-definite ``G`` (or a batch) with spectrum in ``[lo, hi]``, by the coupled
    Newton–Schulz iteration (Higham, *Functions of Matrices*, 2008, §6.3): ``T = (3I − Z Y)/2``, ``Y ← Y T``,
    ``Z ← T Z`` from ``Y = G/c``, ``Z = I`` with ``c = (lo + hi)/2`` (the spectrum of ``G/c`` then lies in ``(0, 2)``,
    where it converges).

    Matrix products only: on a CPU about twice as fast as LAPACK's eigen-decomposition for one 24 × 24 ensemble
    transform and about 1.7 times for the LETKF's batch of 4000 local 7 × 7 ones (see :func:`_bmm`). It stops one
    iteration after ``max|T − I| <= √ε`` over the whole batch (quadratic convergence then reaches rounding level);
    ``lo`` and ``hi`` must be true bounds (the spectrum of ``G/c`` in ``(0, 2)``), else it diverges.
    """
    k = G.shape[-1]
    eye = jnp.eye(k, dtype=G.dtype)
    c = 0.5 * (lo + hi)
    c = c[..., None, None] if jnp.ndim(c) else c
    tol = float(np.sqrt(np.finfo(G.dtype).eps))

    def cond(s):
        return (s[2] > tol) & (s[3] < 100)

    def body(s):
        Y, Z, _, it = s
        T = 1.5 * eye - 0.5 * _bmm(Z, Y)
        return _bmm(Y, T), _bmm(T, Z), jnp.max(jnp.abs(T - eye)), it + 1

    init = (G / c, jnp.broadcast_to(eye, G.shape), jnp.asarray(jnp.inf, G.dtype), jnp.asarray(0, jnp.int32))
    _, Z, _, _ = lax.while_loop(cond, body, init)
    return 0.5 * (Z + jnp.swapaxes(Z, -1, -2)) * lax.rsqrt(c)


def _spectral_bounds(G, Yw, N1):
    """``[N-1, hi]`` contains the spectrum of ``G = Yw Ywᵀ + (N-1) I``: ``hi`` the smaller of the trace and Gershgorin
    bounds (batched over leading axes)."""
    trace = N1 + jnp.sum(Yw**2, axis=(-2, -1))
    gershgorin = jnp.max(jnp.sum(jnp.abs(G), axis=-1), axis=-1)
    return N1, jnp.minimum(trace, gershgorin)


def _letkf(Yw, rw, A, xm, loc: Localisation, N1):
    """The local ETKFs of every state variable at once: batch-first ``(n, N, K)`` arrays and matrix products by
    :func:`_bmm` (ensemble space, ``N <= K``); a vmap of the observation-space ETKF when the neighbourhoods are smaller
    than the ensemble."""
    N = Yw.shape[0]
    idx, sq = loc.indices, jnp.sqrt(loc.weights).astype(Yw.dtype)
    if N > idx.shape[1]:

        def local(a_i, idx_i, sq_i):
            Yl = Yw[:, idx_i] * sq_i[None, :]
            return _etkf(_gram(Yl, N1), Yl, rw[idx_i] * sq_i, a_i[:, None], N1)[:, 0]

        return xm + jax.vmap(local, in_axes=(1, 0, 0), out_axes=1)(A, idx, sq)
    Yl = jnp.transpose(Yw[:, idx], (1, 0, 2)) * sq[:, None, :]  # (n, N, K)
    rl = rw[idx] * sq  # (n, K)
    G = _bmm(Yl, jnp.swapaxes(Yl, -1, -2)) + N1 * jnp.eye(N, dtype=Yw.dtype)
    Z = _inv_sqrt(G, *_spectral_bounds(G, Yl, N1))  # (n, N, N)
    b = jnp.sum(Yl * rl[:, None, :], axis=-1)  # (n, N)
    w = jnp.sum(Z * jnp.sum(Z * b[:, None, :], axis=-1)[:, None, :], axis=-1)  # G⁻¹ b = Z (Z b)
    At = A.T  # (n, N): the anomalies of each state variable
    TA = jnp.sqrt(N1) * jnp.sum(Z * At[:, None, :], axis=-1)
    return xm + (jnp.sum(w * At, axis=-1)[:, None] + TA).T


class _Gram(eqx.Module):
    """The factorisation of ``G = Yw Ywᵀ + (N-1) I`` that every update needs (``Yw`` the ``N × p`` whitened anomalies).

    ``N <= p`` (ensemble space): the Cholesky factor of ``G`` (``N × N``). ``N > p`` (observation space): the
    eigen-decomposition ``Ywᵀ Yw = B diag(λ) Bᵀ`` (``p × p``); ``G`` and ``S = Ywᵀ Yw + (N-1) I`` share the nonzero
    spectrum ``λ + (N-1)``. Every update costs ``O(N p min(N, p))`` and never forms the larger of ``G`` and ``S`` (a
    20 000-member ensemble of a 3-channel sensor stays cheap, and so does a 4000-channel sensor with a small ensemble).
    """

    G: Float[Array, "member member"] | None
    chol: Float[Array, "member member"] | None
    lam: Float[Array, " obs"] | None
    basis: Float[Array, "obs obs"] | None


def _gram(Yw: Float[Array, "member obs"], N1) -> _Gram:
    N, p = Yw.shape
    if N <= p:
        G = Yw @ Yw.T + N1 * jnp.eye(N, dtype=Yw.dtype)
        return _Gram(G, jnp.linalg.cholesky(G), None, None)
    lam, B = jnp.linalg.eigh(Yw.T @ Yw)
    return _Gram(None, None, jnp.maximum(lam, 0.0), B)


def _solve(g: _Gram, Yw, V, N1):
    """``G⁻¹ V`` for ``V`` of ``N`` rows (observation space: ``(V − Yw S⁻¹ Ywᵀ V) / (N-1)``)."""
    if g.chol is not None:
        return jax.scipy.linalg.cho_solve((g.chol, True), V)
    W = Yw @ g.basis
    scale = 1.0 / (g.lam + N1)
    return (V - W @ ((W.T @ V) * (scale if V.ndim == 1 else scale[:, None]))) / N1


def _log_likelihood(g: _Gram, Yw, rw, logdet_R, n_obs, N1) -> Scalar:
    """``log N(r; 0, YᵀY/(N-1) + R)`` by Woodbury and Sylvester in the smaller space (exactly 0 without data)."""
    N = Yw.shape[0]
    if g.chol is not None:
        z = jax.scipy.linalg.solve_triangular(g.chol, Yw @ rw, lower=True)
        explained = z @ z
        logdet_G = 2 * jnp.sum(jnp.log(jnp.diagonal(g.chol))) - N * jnp.log(N1)
    else:
        c = g.basis.T @ rw
        explained = jnp.sum(g.lam * c**2 / (g.lam + N1))
        logdet_G = jnp.sum(jnp.log1p(g.lam / N1))
    quad = rw @ rw - explained
    return jnp.where(n_obs > 0, -0.5 * (quad + logdet_R + logdet_G + n_obs * LOG_2PI), 0.0)


def _etkf(g: _Gram, Yw, rw, A, N1):
    """``wᵀA + T A`` with ``w = G⁻¹ Yw rw`` and ``T = √(N-1) G^{-1/2}`` (symmetric square root, mean preserving).

    Ensemble space: ``G^{-1/2}`` by Newton–Schulz and ``G⁻¹ = (G^{-1/2})²`` (matrix products only). Observation space:
    ``T = I + W diag(f(λ)) Wᵀ`` with ``W = Yw B`` and ``f(λ) = (√((N-1)/(λ+N-1)) − 1)/λ``, written without the
    division.
    """
    if g.chol is not None:
        Z = _inv_sqrt(g.G, *_spectral_bounds(g.G, Yw, N1))
        w = Z @ (Z @ (Yw @ rw))
        return w @ A + jnp.sqrt(N1) * (Z @ A)
    w = _solve(g, Yw, Yw @ rw, N1)
    W = Yw @ g.basis
    f = -1.0 / (jnp.sqrt(g.lam + N1) * (jnp.sqrt(N1) + jnp.sqrt(g.lam + N1)))
    return w @ A + A + (W * f) @ (W.T @ A)


def _complement_of_ones(N: int) -> np.ndarray:
    """An orthonormal basis ``(N, N-1)`` of the vectors summing to zero: the Householder reflector that maps ``e₀`` to
    ``1/√N``, without its first column (a trace-time constant)."""
    v = np.full(N, 1.0 / np.sqrt(N))
    v[0] -= 1.0
    H = np.eye(N) - 2.0 * np.outer(v, v) / (v @ v) if v @ v > 0 else np.eye(N)
    return H[:, 1:]


def _random_rotation(z: Float[Array, "k k"], Aa: Float[Array, "member state"]) -> Float[Array, "member state"]:
    """``Θ Aa`` for anomalies ``Aa`` (columns summing to zero) with ``Θ = 11ᵀ/N + V Q Vᵀ`` a Haar-random orthogonal,
    mean-preserving matrix (``Q`` Haar on the complement of ``1``, by QR of a Gaussian matrix with the signs fixed), as
    DAPPER's ``genOG_1``; ``11ᵀ/N`` contributes nothing to anomalies."""
    N = Aa.shape[0]
    V = jnp.asarray(_complement_of_ones(N), Aa.dtype)
    Q, Rq = jnp.linalg.qr(z)  # z: (N-1) × (N-1) standard normals
    Q = Q * jnp.where(jnp.diagonal(Rq) < 0, -1.0, 1.0)[None, :]
    return V @ (Q @ (V.T @ Aa))


def _analysis(
    method: str,
    E: Float[Array, "member state"],
    Eo: Float[Array, "member obs"],
    y: Obs,
    R: Float[Array, "obs obs"],
    rng: UInt32[Array, "4"],
    inflation: Scalar,
    rotation: bool,
    localisation: Localisation | None,
    diagonal: bool,
) -> tuple[Float[Array, "member state"], UInt32[Array, "4"], EnsembleInnovation]:
    N = E.shape[0]
    N1 = jnp.asarray(N - 1, E.dtype)
    mask = ~jnp.isnan(y)
    any_obs = jnp.any(mask)
    xm = jnp.mean(E, axis=0)
    A = E - xm
    ym = jnp.mean(Eo, axis=0)
    Y = Eo - ym
    r = jnp.where(mask, jnp.where(mask, y, 0.0) - ym, 0.0)
    Yw, rw, logdet_R = _whiten(Y, r, R, mask, diagonal)
    n_obs = jnp.sum(mask).astype(E.dtype)
    g = _gram(Yw, N1)
    log_lik = _log_likelihood(g, Yw, rw, logdet_R, n_obs, N1)

    if method == "stochastic":
        rng, Z = _normal(rng, Yw.shape, E.dtype)
        Z = (Z - jnp.mean(Z, axis=0)) * jnp.sqrt(N / N1)  # DAPPER's mean0: centred, variance-preserving
        D = jnp.where(mask[None, :], rw[None, :] - Z - Yw, 0.0)  # whitened innovation of each member
        if g.chol is not None:  # E + D Ywᵀ G⁻¹ A, with G⁻¹ in ensemble space
            Ea = E + jax.scipy.linalg.cho_solve((g.chol, True), Yw @ D.T).T @ A
        else:  # Ywᵀ G⁻¹ = S⁻¹ Ywᵀ: never an N × N matrix for a large ensemble
            Ea = E + ((D @ g.basis) / (g.lam + N1)) @ (g.basis.T @ (Yw.T @ A))
    elif method == "denkf":  # T = (I + (N-1) G⁻¹) / 2
        w = _solve(g, Yw, Yw @ rw, N1)
        Ea = xm + w @ A + 0.5 * (A + N1 * _solve(g, Yw, A, N1))
    elif method == "etkf":
        Ea = xm + _etkf(g, Yw, rw, A, N1)
    else:  # letkf: one ETKF per state variable on its tapered neighbourhood
        Ea = _letkf(Yw, rw, A, xm, localisation, N1)

    # DAPPER's post_process: inflate the analysis anomalies, then rotate them (mean kept); skipped without data
    xa = jnp.mean(Ea, axis=0)
    Aa = (Ea - xa) * jnp.where(any_obs, inflation, 1.0)
    if rotation:
        rng, z = _normal(rng, (N - 1, N - 1), E.dtype)
        Aa = jnp.where(any_obs, _random_rotation(z, Aa), Aa)
    return xa + Aa, rng, EnsembleInnovation(r, mask, log_lik)


# ---------------------------------------------------------------------------------------------------------------------
# checking


def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    return method


def _check_inflation(inflation, dtype) -> Scalar:
    if is_concrete(inflation) and not float(np.asarray(inflation)) > 0:
        raise ValueError(f"`inflation` must be a positive factor (1 = none), got {inflation!r}.")
    inflation = jnp.asarray(inflation, dtype)
    if inflation.shape != ():
        raise ValueError(f"`inflation` must be a scalar, got shape {tuple(inflation.shape)}.")
    return inflation


def _check_rotation(rotation) -> bool:
    if not isinstance(rotation, bool):
        raise ValueError(f"`rotation` must be True or False, got {rotation!r}.")
    return rotation


def _obs_dim(model, t, x, u) -> int:
    if isinstance(model, LinearGaussianSSM):
        return model.C.shape[0]
    out = jax.eval_shape(model.observation.mean, t, x, u)
    return out.shape[0] if out.shape else 1


def _diagonal_noise(model) -> bool:
    """Whether the sensor noise is known (concretely) to be diagonal: then ``R^{-1/2}`` is elementwise."""
    if isinstance(model, LinearGaussianSSM):
        R = model.R
    elif isinstance(model.observation, GaussianObservation):
        R = model.observation.cov
    else:
        return False
    if not is_concrete(R):
        return False
    R = np.asarray(R)
    return bool(np.count_nonzero(R) == np.count_nonzero(np.diagonal(R)))


def _check_localisation(method, loc, n, p):
    if loc is None:
        return None
    if method != "letkf":
        raise ValueError(
            f"`localisation` is used by method='letkf' only (the local ETKF), got method={method!r}; pass "
            "method='letkf' or drop the localisation."
        )
    if not isinstance(loc, Localisation):
        raise ValueError(f"`localisation` must be a Localisation (from `localisation(...)`), got {type(loc).__name__}.")
    if loc.indices.shape[0] != n:
        raise ValueError(f"`localisation` must have one row per state variable ({n}), got {loc.indices.shape[0]} rows.")
    if is_concrete(loc.indices):
        ind = np.asarray(loc.indices)
        if ind.size and (ind.min() < 0 or ind.max() >= p):
            raise ValueError(
                f"`localisation.indices` must index the {p} observations, got range [{ind.min()}, {ind.max()}]."
            )
    return loc


def _check_state(state) -> None:
    if not isinstance(state, EnsembleFilterState):
        raise ValueError(f"`state` must be an EnsembleFilterState (from enkf_init), got {type(state).__name__}.")


def _check_y(model, state, y) -> Obs:
    y = as_float_array(y, "y")
    if y.ndim == 0:
        y = y[None]
    p = _obs_dim(model, state.t, state.ensemble[0], state.u)
    if y.shape != (p,):
        raise ValueError(f"`y` must have shape ({p},) (the model's sensor), got {tuple(y.shape)}.")
    if is_concrete(y) and np.any(np.isinf(np.asarray(y))):
        raise ValueError(f"`y` has infinite entries {np.asarray(y)}; mark missing measurements with NaN.")
    return y.astype(state.ensemble.dtype)


def _as_time(state, t, name="t") -> Scalar:
    t = jnp.asarray(t, state.ensemble.dtype)
    if t.shape != ():
        raise ValueError(f"`{name}` must be a scalar time, got shape {tuple(t.shape)}.")
    if is_concrete(t) and is_concrete(state.t) and float(t) < float(state.t):
        raise ValueError(f"`{name}` = {float(t)} is before the belief's time state.t = {float(state.t)}.")
    return t


def _float_dtype(model, *arrays):
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return jnp.result_type(*[x.dtype for x in leaves], *[a.dtype for a in arrays])


def _state_dim(model) -> int | None:
    if isinstance(model, LinearGaussianSSM):
        return model.A.shape[0]
    return None if model.initial is None else model.initial.mean.shape[0]


def _check_members(members) -> int:
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 2:
        raise ValueError(f"`members` must be an integer >= 2 (an ensemble needs a spread), got {members!r}.")
    return int(members)


def _initial_ensemble(model, members, mean, cov, ensemble):
    """``(ensemble or None, mean, cov, diagonal_cov)`` with everything checked; sampling happens under jit."""
    if ensemble is not None:
        ensemble = as_float_array(ensemble, "ensemble", ndim=2)
        if members is not None and ensemble.shape[0] != _check_members(members):
            raise ValueError(f"`ensemble` must have `members`={members} rows, got shape {tuple(ensemble.shape)}.")
        _check_members(ensemble.shape[0])
        n = _state_dim(model)
        if n is not None and ensemble.shape[1] != n:
            raise ValueError(f"`ensemble` must have shape (members, {n}) (the model's state), got {ensemble.shape}.")
        if is_concrete(ensemble) and not np.all(np.isfinite(np.asarray(ensemble))):
            raise ValueError("`ensemble` must be finite.")
        return ensemble, None, None, False
    members = _check_members(members)
    if mean is None or cov is None:
        if model.initial is None:
            raise ValueError(
                "`mean` and `cov` (or `ensemble`) are required: the model has no `initial` distribution to sample."
            )
        mean = model.initial.mean if mean is None else mean
        cov = model.initial.cov if cov is None else cov
    mean = as_float_array(mean, "mean", ndim=1)
    cov = as_float_array(cov, "cov")
    if cov.ndim == 1:
        cov = jnp.diag(cov)
    check_square(cov, "cov", mean.shape[0])
    diagonal = False
    if is_concrete(cov):
        c = np.asarray(cov)
        diagonal = bool(np.count_nonzero(c) == np.count_nonzero(np.diagonal(c)))
        if diagonal:
            if np.any(np.diagonal(c) < 0):
                raise ValueError(f"`cov` has a negative variance on its diagonal: {np.diagonal(c)}.")
        else:
            check_covariance(cov, "cov")
    return None, mean, cov, diagonal


def _sample_initial(key, members, mean, cov, diagonal) -> Float[Array, "member state"]:
    z = jax.random.normal(key, (members, mean.shape[0]), mean.dtype)
    if diagonal:
        return mean + z * jnp.sqrt(jnp.diagonal(cov))
    return mean + z @ _psd_sqrt(cov).T


# ---------------------------------------------------------------------------------------------------------------------
# one-step family


def enkf_init(
    model,
    key: Key,
    members: int | None = None,
    *,
    mean=None,
    cov=None,
    ensemble=None,
    t0=0.0,
    u0=None,
) -> EnsembleFilterState:
    """The ensemble before the first measurement: ``members`` draws of ``N(mean, cov)`` (or a given ensemble).

    Arguments:
        model: a :class:`~twinjax.StateSpaceModel` or :class:`~twinjax.LinearGaussianSSM` with a sensor.
        key: PRNG key: draws the initial ensemble and seeds the state's bit generator (forecast noise, perturbed
            observations, rotations).
        members: the ensemble size ``N >= 2`` (optional when ``ensemble`` is given).
        mean, cov: the prior at ``t0`` (default ``model.initial``); a diagonal ``cov`` is sampled elementwise.
        ensemble: the initial members ``(N, n)`` instead of sampling.
        t0: the time of the prior (s).
        u0: the control held from ``t0`` (default zeros).

    Returns:
        An :class:`EnsembleFilterState` (log-likelihood 0, status successful).

    Raises:
        ValueError: for a model without a sensor, ``members < 2``, a mis-shaped ``mean`` / ``cov`` / ``ensemble`` or a
            ``cov`` that is not a covariance.

    Example:
        ```python
        state = enkf_init(twin, jax.random.key(0), members=24)
        state, info = enkf_update(twin, state, ys[0], method="etkf")
        state, info = enkf_step(twin, state, ys[1], method="etkf")
        ```
    """
    check_model(model)
    ensemble, mean, cov, diagonal = _initial_ensemble(model, members, mean, cov, ensemble)
    dtype = _float_dtype(model, *(a for a in (ensemble, mean, cov) if a is not None))
    k_init, k_state = jax.random.split(key)
    if ensemble is None:
        ensemble = _sample_initial(k_init, _check_members(members), mean.astype(dtype), cov.astype(dtype), diagonal)
    return _new_state(model, ensemble.astype(dtype), t0, u0, _seed(k_state), dtype)


def _new_state(model, ensemble, t0, u0, rng, dtype) -> EnsembleFilterState:
    return EnsembleFilterState(
        ensemble=ensemble,
        t=jnp.asarray(t0, dtype),
        u=default_control(model, u0, dtype),
        rng=rng,
        log_likelihood=jnp.zeros((), dtype),
        status=jnp.zeros((), jnp.int32),
    )


def _predict(model, state: EnsembleFilterState, t) -> EnsembleFilterState:
    return _predict_with_status(model, state, t)[0]


def _predict_with_status(model, state: EnsembleFilterState, t) -> tuple[EnsembleFilterState, Int[Array, ""]]:
    """The forecast state and this interval's own (worst member) status."""
    E, rng, status = _forecast(model, state.ensemble, state.t, t, state.u, state.rng)
    return EnsembleFilterState(E, t, state.u, rng, state.log_likelihood, jnp.maximum(state.status, status)), status


def _update(model, state, y, u, inflation, rotation, localisation, method, diagonal):
    Eo, R = _sensor(model, state.t, state.ensemble, u)
    E, rng, info = _analysis(method, state.ensemble, Eo, y, R, state.rng, inflation, rotation, localisation, diagonal)
    new = EnsembleFilterState(E, state.t, u, rng, state.log_likelihood + info.log_likelihood, state.status)
    return new, info


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _predict_jit(model, state, t):
    return _predict(model, state, t)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _update_jit(model, state, y, u, inflation, rotation, localisation, method, diagonal):
    return _update(model, state, y, u, inflation, rotation, localisation, method, diagonal)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _step_jit(model, state, y, u, t, inflation, rotation, localisation, method, diagonal):
    return _update(model, _predict(model, state, t), y, u, inflation, rotation, localisation, method, diagonal)


def enkf_predict(model, state: EnsembleFilterState, t) -> EnsembleFilterState:
    """Forecast every member from ``state.t`` to ``t`` with the control held since ``state.t``.

    ``x_m ← transition(state.t, t, x_m, state.u) + w_m`` with ``w_m ~ N(0, Q)`` for a stochastic twin (``Q`` from
    ``model.process_noise_cov`` at the ensemble mean), nothing added for a deterministic one.

    Arguments:
        model: the twin (see :func:`enkf_init`).
        state: the current ensemble.
        t: the time to forecast to (s), ``>= state.t``.

    Returns:
        The forecast :class:`EnsembleFilterState` at ``t`` (its ``status`` keeps the worst member status).

    Raises:
        ValueError: for a ``state`` that is not an EnsembleFilterState, or a ``t`` before ``state.t``.

    Example:
        ```python
        forecast = enkf_predict(twin, state, state.t + 10 * twin.dt)
        forecast.mean, forecast.spread
        ```
    """
    check_model(model)
    _check_state(state)
    return _predict_jit(model, state, _as_time(state, t))


def enkf_update(
    model,
    state: EnsembleFilterState,
    y,
    u=None,
    *,
    method: str = "stochastic",
    inflation=1.0,
    rotation: bool = False,
    localisation: Localisation | None = None,
) -> tuple[EnsembleFilterState, EnsembleInnovation]:
    """Condition the ensemble on the measurement ``y`` taken at ``state.t`` (see the module docstring).

    Arguments:
        model: the twin (see :func:`enkf_init`).
        state: the forecast ensemble at the time of ``y``.
        y: the measurement ``(obs,)``; ``NaN`` marks missing channels (all ``NaN``: no update, no inflation).
        u: the control in the sensor now, which is also held from now on (default zeros).
        method: ``"stochastic"`` (perturbed observations), ``"etkf"`` (symmetric square root), ``"denkf"``
            (Sakov–Oke deterministic EnKF) or ``"letkf"`` (local ETKF; needs ``localisation``, without it every
            observation is used and it equals the ETKF).
        inflation: multiplicative factor applied to the analysis anomalies (DAPPER's ``infl``; 1 = none).
        rotation: apply a random mean-preserving rotation to the analysis anomalies (DAPPER's ``rot=True``).
        localisation: the observation neighbourhoods of the LETKF (:func:`localisation`).

    Returns:
        ``(state, info)``: the analysis ensemble (log-likelihood increased) and an :class:`EnsembleInnovation`.

    Raises:
        ValueError: for a mis-shaped ``y`` / ``u``, an infinite ``y``, an unknown ``method``, a non-positive
            ``inflation`` or a ``localisation`` with a method other than ``"letkf"``.

    Example:
        ```python
        state, info = enkf_update(twin, state, y, method="etkf", inflation=1.02)
        ```
    """
    check_model(model)
    _check_state(state)
    method = _check_method(method)
    y = _check_y(model, state, y)
    n, p = state.ensemble.shape[1], y.shape[0]
    loc = _check_localisation(method, localisation, n, p)
    if method == "letkf" and loc is None:
        loc = _full_localisation(n, p, state.ensemble.dtype)
    u = default_control(model, u, state.ensemble.dtype)
    infl = _check_inflation(inflation, state.ensemble.dtype)
    return _update_jit(model, state, y, u, infl, _check_rotation(rotation), loc, method, _diagonal_noise(model))


def enkf_step(
    model,
    state: EnsembleFilterState,
    y,
    u=None,
    *,
    t=None,
    method: str = "stochastic",
    inflation=1.0,
    rotation: bool = False,
    localisation: Localisation | None = None,
) -> tuple[EnsembleFilterState, EnsembleInnovation]:
    """One assimilation cycle: :func:`enkf_predict` to ``t`` (default ``state.t + model.dt``), then
    :func:`enkf_update` (same keyword arguments).

    Returns:
        ``(state, info)`` as :func:`enkf_update`.

    Raises:
        ValueError: as :func:`enkf_predict` and :func:`enkf_update`, or when ``t`` is omitted and the model has no
            ``dt``.

    Example:
        ```python
        state = enkf_init(twin, key, members=24)
        state, _ = enkf_update(twin, state, ys[0], method="etkf")
        for y in ys[1:]:
            state, info = enkf_step(twin, state, y, method="etkf", inflation=1.013, rotation=True)
        ```
    """
    check_model(model)
    _check_state(state)
    method = _check_method(method)
    if t is None:
        if model.dt is None:
            raise ValueError("`t` is required: the model has no `dt` to step by.")
        t = state.t + model.dt
    t = _as_time(state, t)
    y = _check_y(model, state, y)
    n, p = state.ensemble.shape[1], y.shape[0]
    loc = _check_localisation(method, localisation, n, p)
    if method == "letkf" and loc is None:
        loc = _full_localisation(n, p, state.ensemble.dtype)
    u = default_control(model, u, state.ensemble.dtype)
    infl = _check_inflation(inflation, state.ensemble.dtype)
    return _step_jit(model, state, y, u, t, infl, _check_rotation(rotation), loc, method, _diagonal_noise(model))


# ---------------------------------------------------------------------------------------------------------------------
# batch filter


def _summary(E, store_cov: bool):
    return jnp.mean(E, axis=0), jnp.std(E, axis=0, ddof=1), (_sample_cov(E) if store_cov else None)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _filter(
    model,
    ys,
    us,
    ts,
    key,
    ensemble0,
    mean,
    cov,
    inflation,
    localisation,
    *,
    members,
    diag_cov,
    method,
    rotation,
    diagonal,
    store_cov,
    store_ens,
) -> EnsembleFilterResult:
    k_init, k_state = jax.random.split(key)
    if ensemble0 is None:
        ensemble0 = _sample_initial(k_init, members, mean, cov, diag_cov)
    state0 = _new_state(model, ensemble0, ts[0], us[0], _seed(k_state), ensemble0.dtype)
    prior_mean = jnp.mean(ensemble0, axis=0)
    args = (inflation, rotation, localisation, method, diagonal)
    state, info0 = _update(model, state0, ys[0], us[0], *args)

    def outputs(state, info, m_pred, status):
        m, s, P = _summary(state.ensemble, store_cov)
        return m, s, P, m_pred, info.log_likelihood, status, (state.ensemble if store_ens else None)

    first = outputs(state, info0, prior_mean, jnp.zeros((), jnp.int32))

    def body(state, inputs):
        t, y, u = inputs
        pred, status = _predict_with_status(model, state, t)
        new, info = _update(model, pred, y, u, *args)
        return new, outputs(new, info, jnp.mean(pred.ensemble, axis=0), status)

    last, rest = lax.scan(body, state, (ts[1:], ys[1:], us[1:]))
    m, s, P, m_pred, ll, status, ens = jax.tree_util.tree_map(
        lambda a, b: jnp.concatenate([a[None], b], axis=0), first, rest
    )
    return EnsembleFilterResult(
        ts=ts,
        means=m,
        spreads=s,
        covariances=P,
        predicted_means=m_pred,
        log_likelihood=last.log_likelihood,
        log_likelihoods=ll,
        status=status,
        ensembles=ens,
        final_state=last,
    )


def ensemble_kalman_filter(
    model,
    ys,
    us=None,
    ts=None,
    *,
    members: int | None = None,
    key: Key,
    method: str = "stochastic",
    inflation=1.0,
    rotation: bool = False,
    localisation_radius: int | float | None = None,
    state_coords=None,
    obs_coords=None,
    domain: int | float | tuple[int | float, ...] | None = None,
    localisation: Localisation | None = None,
    mean=None,
    cov=None,
    ensemble=None,
    store_ensembles: bool = False,
    store_covariances: bool | None = None,
) -> EnsembleFilterResult:
    """Ensemble Kalman filter over a batch of measurements (stochastic EnKF, ETKF, DEnKF or LETKF).

    The prior ensemble (``members`` draws of ``model.initial``, or ``ensemble``) describes the state at ``ts[0]``;
    ``ys[0]`` updates it directly and every later ``ys[k]`` follows a forecast of all members over
    ``[ts[k-1], ts[k]]``. The whole run is one compiled ``lax.scan``; calling again with the same shapes and settings
    does not recompile (``inflation`` is traced, so it may change freely).

    Arguments:
        model: a :class:`~twinjax.StateSpaceModel` or :class:`~twinjax.LinearGaussianSSM` with a sensor. For speed
            on chaotic models use a discrete-time (e.g. fixed-step RK4) transition: it is vmapped over members.
        ys: measurements ``(T, obs)``; ``NaN`` marks missing channels (a row of ``NaN``: a forecast-only step).
        us: controls ``(T, control)`` (or ``(T-1, control)``), required when ``model.control_dim > 0``.
        ts: observation times ``(T,)`` (default ``dt * arange(T)``).
        members: the ensemble size ``N >= 2`` (optional when ``ensemble`` is given).
        key: PRNG key: the initial draw, and the seed of the bit generator for process noise, perturbed observations
            and rotations.
        method: ``"stochastic"``, ``"etkf"``, ``"denkf"`` or ``"letkf"`` (see the module docstring).
        inflation: multiplicative inflation of the analysis anomalies (DAPPER's ``infl``).
        rotation: random mean-preserving rotation of the analysis anomalies (DAPPER's ``rot``).
        localisation_radius: the LETKF radius in the units of the coordinates (DAPPER's ``loc_rad``: Gaspari–Cohn
            half-width ``1.82 × radius``); ``None`` with ``"letkf"`` uses every observation (= the ETKF).
        state_coords, obs_coords: positions of the state variables ``(n,)`` / ``(n, d)`` and observations (default
            ``arange(n)``; ``obs_coords`` defaults to ``state_coords`` when ``obs == n``, else it is required).
        domain: periods of a periodic domain (e.g. ``n`` for a ring such as Lorenz-96), default non-periodic.
        localisation: a prebuilt :class:`Localisation` instead of the four arguments above.
        mean, cov: the prior at ``ts[0]`` instead of ``model.initial``; ensemble: the prior members ``(N, n)``.
        store_ensembles: also return every analysis ensemble ``(T, N, n)``.
        store_covariances: return the ``(T, n, n)`` sample covariances; ``None`` (default) stores them when
            ``n <= 100`` and sets ``covariances`` to ``None`` otherwise (means and spreads are always returned).

    Returns:
        An :class:`EnsembleFilterResult`: analysis means, spreads (and covariances), forecast means, the Gaussian
        approximation of ``log p(y_{0:T-1})`` and its increments, the per-step status and the final state.

    Raises:
        ValueError: naming the argument for wrong shapes, unsorted times, infinite measurements, an unknown ``method``,
            ``members < 2``, a non-positive ``inflation`` or ``localisation_radius``, or localisation with a method
            other than ``"letkf"``.

    Example:
        ```python
        result = ensemble_kalman_filter(twin, ys, members=24, key=jax.random.key(0), method="etkf",
                                        inflation=1.013, rotation=True)
        rmse = jnp.sqrt(jnp.mean((result.means - xs) ** 2, axis=1))
        ```

    References:
        Sakov & Oke (2008); Hunt et al. (2007); DAPPER (see the module docstring).
    """
    check_model(model)
    method = _check_method(method)
    ys, us, ts = prepare_inputs(model, ys, us, ts)
    ensemble, mean, cov, diag_cov = _initial_ensemble(model, members, mean, cov, ensemble)
    x_like = ensemble[0] if ensemble is not None else mean
    n = x_like.shape[0]
    p = _obs_dim(model, ts[0], x_like, us[0])
    if ys.shape[1] != p:
        raise ValueError(
            f"`ys` must have shape ({ys.shape[0]}, {p}) (time, obs) to match the model's sensor, got {tuple(ys.shape)}."
        )
    dtype = _float_dtype(model, ys, *(a for a in (ensemble, mean, cov) if a is not None))
    loc = _build_localisation(method, localisation, localisation_radius, state_coords, obs_coords, domain, n, p)
    if loc is not None:
        loc = Localisation(loc.indices, loc.weights.astype(dtype))
    if store_covariances is None:
        store_covariances = n <= _COVARIANCE_STATE_LIMIT
    if not isinstance(store_ensembles, bool) or not isinstance(store_covariances, bool):
        raise ValueError("`store_ensembles` and `store_covariances` must be True or False (or None for the latter).")
    cast = lambda a: None if a is None else a.astype(dtype)
    return _filter(
        model,
        ys.astype(dtype),
        us.astype(dtype),
        ts.astype(dtype),
        key,
        cast(ensemble),
        cast(mean),
        cast(cov),
        _check_inflation(inflation, dtype),
        loc,
        members=None if ensemble is not None else _check_members(members),
        diag_cov=diag_cov,
        method=method,
        rotation=_check_rotation(rotation),
        diagonal=_diagonal_noise(model),
        store_cov=store_covariances,
        store_ens=store_ensembles,
    )


def _build_localisation(method, loc, radius, state_coords, obs_coords, domain, n, p) -> Localisation | None:
    if loc is not None and radius is not None:
        raise ValueError("pass either `localisation` or `localisation_radius`, not both.")
    if radius is not None:
        if method != "letkf":
            raise ValueError(
                f"`localisation_radius` is used by method='letkf' only (the local ETKF), got method={method!r}."
            )
        if not float(radius) > 0:
            raise ValueError(f"`localisation_radius` must be positive (or inf), got {radius!r}.")
        sc = np.arange(n, dtype=np.float64) if state_coords is None else np.asarray(state_coords, np.float64)
        if sc.shape[0] != n:
            raise ValueError(f"`state_coords` must have one row per state variable ({n}), got shape {sc.shape}.")
        if obs_coords is None:
            if p != n:
                raise ValueError(
                    f"`obs_coords` is required: the sensor has {p} channels, not one per state variable ({n})."
                )
            oc = sc
        else:
            oc = np.asarray(obs_coords, np.float64)
            if oc.shape[0] != p:
                raise ValueError(f"`obs_coords` must have one row per observation ({p}), got shape {oc.shape}.")
        loc = localisation(sc, oc, radius, domain=domain)
    loc = _check_localisation(method, loc, n, p)
    if method == "letkf" and loc is None:
        loc = _full_localisation(n, p, jnp.result_type(float))
    return loc
