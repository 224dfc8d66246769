r"""Safe exploration: pick the most informative next data point inside the set certified safe by the twin's posterior.

A twin whose parameters enter linearly, ``y = φ(z)ᵀθ + ε``, ``ε ~ N(0, σ²)``, ``θ ~ N(μ, Σ)``, learns most from a
measurement at a candidate ``z`` (a state, an operating point, a state–action pair) where

* the **information gain** ``I(z) = ½ log(1 + φᵀΣφ / σ²)`` (the mutual information between ``y`` and ``θ``; the
  D-optimal criterion) is largest, or
* the **leverage** ``ℓ(z) = φᵀ(ΦᵀΦ + λI)⁻¹φ`` with respect to the design ``Φ`` collected so far is largest (the
  ridge hat-matrix diagonal of the candidate; with ``λI ↔ σ²Σ₀⁻¹`` it is ``φᵀΣφ / σ²``, the same ranking).

Both reduce the worst-case prediction variance fastest. Exploration must itself be safe: the safety of a candidate is
a condition ``s(z; θ) ≥ 0`` (for a control barrier function, ``s = ḣ + α h`` at the state–action pair, see
:func:`twinjax.control.cbf.barrier_rate`). Linearised in ``θ`` (exact when ``s`` is affine in ``θ``),
``s(z; θ) ~ N(s̄(z), ψ(z)ᵀΣψ(z))``, and the **certified safe set** is

$$ \mathcal C_κ(μ, Σ) = \{ z : \bar s(z) − κ \sqrt{ψ(z)ᵀ Σ ψ(z)} ≥ 0 \}. $$

Every ``z ∈ 𝒞_κ`` is safe for every ``θ`` in the ellipsoid ``(θ − μ)ᵀΣ⁻¹(θ − μ) ≤ κ²`` (Cauchy–Schwarz); with
``κ² = χ²_d(1 − δ/R)`` (:func:`confidence_multiplier`) and ``θ`` drawn from the prior, a curriculum of ``R``
Bayesian updates picks an unsafe point with probability at most ``δ`` (union bound over rounds; the posterior is
exact at every round however the points were chosen). :func:`next_point` is the argmax of a score over ``𝒞_κ``. As
data arrive (:func:`bayes_linear_update`) ``Σ`` shrinks, the margin ``κ√(ψᵀΣψ)`` slackens and ``𝒞_κ`` grows: an
easy-to-hard curriculum.

References:
    Chapter ``000_…``, "Safety-Certified Learning and Exploration"; Y. Sui et al., "Safe exploration for optimization
    with Gaussian processes", ICML 2015 (SafeOpt); F. Berkenkamp et al., "Safe model-based reinforcement learning with
    stability guarantees", NeurIPS 2017; C. M. Bishop, *Pattern Recognition and Machine Learning* (2006), §3.3.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammainc

from .._checks import as_float_array, as_gaussian, check_square, is_concrete
from .._types import Array, ArrayLike, Bool, Float, Int, Key, Scalar

__all__ = [
    "SafetyCertificate",
    "bayes_linear_update",
    "certify",
    "confidence_multiplier",
    "information_gain",
    "leverage",
    "next_point",
    "random_safe_point",
]


def _features(features, dim, name):
    features = as_float_array(features, name)
    if features.ndim != 2 or (dim is not None and features.shape[1] != dim):
        want = "(n, param)" if dim is None else f"(n, {dim})"
        raise ValueError(f"`{name}` must have shape {want}, got {tuple(features.shape)}.")
    return features


def _positive(value, name):
    if is_concrete(value) and not np.all(np.asarray(value) > 0):
        raise ValueError(f"`{name}` must be > 0, got {value!r}.")


# ---------------------------------------------------------------------------------------------------------------------
# scores


def information_gain(
    features: Float[ArrayLike, "..."], cov: Float[ArrayLike, "..."], noise_var: Scalar
) -> Float[Array, " candidate"]:
    r"""``½ log(1 + φᵀΣφ / σ²)`` per candidate: the mutual information (nats) of one measurement and ``θ``.

    Example:
        ```python
        scores = information_gain(phi(candidates), belief_cov, 0.1**2)
        ```
    """
    cov = as_float_array(cov, "cov")
    check_square(cov, "cov")
    features = _features(features, cov.shape[0], "features")
    _positive(noise_var, "noise_var")
    quad = jnp.einsum("cp,pq,cq->c", features, cov, features)
    return 0.5 * jnp.log1p(jnp.maximum(quad, 0.0) / noise_var)


def leverage(
    features: Float[ArrayLike, "..."], design: Float[ArrayLike, "..."], reg: Scalar = 1.0
) -> Float[Array, " candidate"]:
    r"""Ridge leverage ``φᵀ(ΦᵀΦ + λI)⁻¹φ`` of each candidate with respect to the design ``Φ`` (``n`` may be 0).

    Example:
        ```python
        scores = leverage(phi(candidates), phi(measured), reg=1e-2)
        ```
    """
    features = _features(features, None, "features")
    design = _features(design, features.shape[1], "design")
    _positive(reg, "reg")
    gram = design.T @ design + reg * jnp.eye(features.shape[1], dtype=features.dtype)
    chol = jnp.linalg.cholesky(gram)
    half = jax.scipy.linalg.solve_triangular(chol, features.T, lower=True)
    return jnp.sum(half**2, axis=0)


def confidence_multiplier(delta: float, dim: int, rounds: int = 1) -> float:
    r"""``κ = √χ²_dim(1 − δ / rounds)``: the radius of the posterior credible ellipsoid holding ``θ`` with probability
    ``1 − δ/rounds``, so that certification at ``rounds`` posteriors fails with probability at most ``δ``.

    Raises:
        ValueError: unless ``0 < delta < 1`` and ``dim, rounds ≥ 1``.
    """
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must lie in (0, 1), got {delta!r}.")
    if int(dim) < 1 or int(rounds) < 1:
        raise ValueError(f"`dim` and `rounds` must be >= 1, got {dim!r} and {rounds!r}.")
    target = 1.0 - delta / rounds
    lo, hi = 0.0, 1.0
    while float(gammainc(dim / 2, hi / 2)) < target:
        hi *= 2.0
    for _ in range(200):  # bisection on the χ² CDF (regularised lower incomplete gamma)
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(gammainc(dim / 2, mid / 2)) < target else (lo, mid)
    return float(np.sqrt(0.5 * (lo + hi)))


# ---------------------------------------------------------------------------------------------------------------------
# posterior


def bayes_linear_update(
    mean: Float[ArrayLike, "..."],
    cov: Float[ArrayLike, "..."],
    features: Float[ArrayLike, "..."],
    ys: Float[ArrayLike, "..."],
    noise_var: Scalar,
) -> tuple[Float[Array, " param"], Float[Array, "param param"]]:
    r"""The exact conjugate posterior of ``θ ~ N(μ, Σ)`` after ``y = Φθ + ε``, ``ε ~ N(0, σ² I)``:

    $$ S = ΦΣΦᵀ + σ²I,\quad K = ΣΦᵀS⁻¹,\quad μ⁺ = μ + K(y − Φμ),\quad Σ⁺ = (I − KΦ)Σ(I − KΦ)ᵀ + σ²KKᵀ $$

    (Joseph form: symmetric PSD in floating point). ``n = 1`` is the rank-one update of
    :class:`twinjax.calibrate.BayesianLinearRegression`.

    Raises:
        ValueError: for inconsistent shapes, a non-PSD ``cov`` or ``noise_var ≤ 0``.

    Example:
        ```python
        mean, cov = bayes_linear_update(mean, cov, phi[None], jnp.array([y]), 0.1**2)
        ```
    """
    mean, cov = as_gaussian(mean, cov)
    features = _features(features, mean.shape[0], "features")
    ys = as_float_array(ys, "ys", ndim=1)
    if ys.shape[0] != features.shape[0]:
        raise ValueError(f"`ys` must have shape ({features.shape[0]},) (one per row of `features`), got {ys.shape}.")
    _positive(noise_var, "noise_var")
    n = features.shape[0]
    s = features @ cov @ features.T + noise_var * jnp.eye(n, dtype=cov.dtype)
    chol = jnp.linalg.cholesky(s)
    gain = jax.scipy.linalg.cho_solve((chol, True), features @ cov).T  # ΣΦᵀS⁻¹, (param, n)
    mean = mean + gain @ (ys - features @ mean)
    a = jnp.eye(cov.shape[0], dtype=cov.dtype) - gain @ features
    cov = a @ cov @ a.T + noise_var * gain @ gain.T
    return mean, 0.5 * (cov + cov.T)


# ---------------------------------------------------------------------------------------------------------------------
# the certified set and the choice


class SafetyCertificate(eqx.Module):
    """The safety condition per candidate under the posterior, linearised in ``θ``.

    Fields:
        mean: ``s̄(z)`` under the posterior mean, ``(candidate, constraint)``.
        sd: its posterior standard deviation ``√(ψᵀΣψ)``, same shape.
        robust: ``s̄ − κ sd`` (``≥ 0``: certified).
        certified: all constraints certified, ``(candidate,)``.
    """

    mean: Float[Array, "candidate constraint"]
    sd: Float[Array, "candidate constraint"]
    robust: Float[Array, "candidate constraint"]
    certified: Bool[Array, " candidate"]


def certify(
    safety_fn: Callable,
    candidates: Float[ArrayLike, "..."],
    mean: Float[ArrayLike, "..."],
    cov: Float[ArrayLike, "..."],
    kappa: Scalar,
) -> SafetyCertificate:
    r"""The certified safe set ``{z : s̄(z) − κ√(ψᵀΣψ) ≥ 0}`` over candidates (``ψ = ∂s/∂θ`` at the mean).

    Arguments:
        safety_fn: ``s(z, θ) -> ()`` or ``(constraint,)``, safe where all ``≥ 0`` (e.g. a CBF condition
            :func:`twinjax.control.cbf.barrier_rate` at the state–action pair ``z``).
        candidates: ``(candidate, dim)``.
        mean, cov: the posterior of ``θ``.
        kappa: confidence multiplier ``κ ≥ 0`` (``0``: trust the posterior mean, not robust).

    Returns:
        A :class:`SafetyCertificate`.

    Example:
        ```python
        cert = certify(lambda z, th: limit - z @ th, grid, mean, cov, kappa=3.0)
        grid[cert.certified]
        ```
    """
    mean, cov = as_gaussian(mean, cov)
    candidates = as_float_array(candidates, "candidates", ndim=2)
    if is_concrete(kappa) and not float(kappa) >= 0:
        raise ValueError(f"`kappa` must be >= 0, got {kappa!r}.")

    def one(z):
        def s(theta):
            return jnp.atleast_1d(safety_fn(z, theta))

        psi = jax.jacfwd(s)(mean)  # (constraint, param)
        var = jnp.maximum(jnp.einsum("kp,pq,kq->k", psi, cov, psi), 0.0)
        return s(mean), jnp.sqrt(var)

    s_mean, s_sd = jax.vmap(one)(candidates)
    robust = s_mean - kappa * s_sd
    return SafetyCertificate(s_mean, s_sd, robust, jnp.all(robust >= 0, axis=1))


def next_point(
    scores: Float[ArrayLike, "..."], certified: Bool[ArrayLike, "..."]
) -> tuple[Int[Array, ""], Bool[Array, ""]]:
    """The candidate of highest score inside the certified set: ``(index, found)`` (``found = False``: set empty).

    Example:
        ```python
        i, found = next_point(information_gain(phi, cov, noise_var), certify(s, grid, mean, cov, kappa).certified)
        ```
    """
    scores = as_float_array(scores, "scores", ndim=1)
    certified = jnp.asarray(certified)
    if certified.shape != scores.shape or certified.dtype != jnp.bool_:
        raise ValueError(
            f"`certified` must be a boolean array of shape {scores.shape}, got {certified.dtype}{certified.shape}."
        )
    masked = jnp.where(certified, scores, -jnp.inf)
    return jnp.argmax(masked), jnp.any(certified)


def random_safe_point(key: Key, certified: Bool[ArrayLike, "..."]) -> tuple[Int[Array, ""], Bool[Array, ""]]:
    """A candidate drawn uniformly from the certified set (the baseline of :func:`next_point`): ``(index, found)``."""
    certified = jnp.asarray(certified)
    if certified.ndim != 1 or certified.dtype != jnp.bool_:
        raise ValueError(f"`certified` must be a 1-D boolean array, got {certified.dtype}{certified.shape}.")
    logits = jnp.where(certified, 0.0, -jnp.inf)
    found = jnp.any(certified)
    index = jax.random.categorical(key, jnp.where(found, logits, 0.0))
    return jnp.where(found, index, 0), found
