"""Causal gene-regulatory networks at steady state: a twin calibrated from knockout screens (Perturb-seq).

The linear network (`LinearGeneNetwork`) is the structural equation model

``x_i = Σ_{j≠i} W_ij x_j + b_i + e_i``,   i.e.  ``x = (I − W)⁻¹ (b + e)``,

with ``W`` the causal interaction matrix (``W_ij``: effect of gene ``j`` on gene ``i``, zero diagonal), ``b`` the
basal expression and ``e ~ N(0, σ² I)`` the cell's intrinsic noise. A knockout of gene ``j`` is the intervention
``do(x_j = 0)``: the mechanism of ``j`` (row ``j`` of the system) is replaced by ``x_j = 0``, so the knocked-out
steady state solves ``(I − D_K W) x = D_K (b + e)`` with ``D_K = diag(1 − k)`` and ``k`` the knockout mask.

`SaturatingGeneNetwork` is a nonlinear truth, ``x = W φ_a(x) + b + e`` with ``φ_a(x) = tanh(a x) / a`` (linear as
``a → 0``), used to test a linear twin under misspecification.

Calibration (`fit_network`): for each gene ``i``, regress ``x_i`` on the other genes' expression, using the cells in
which ``i`` is not knocked out. Ordinary least squares on those cells (``method="ols"``) is biased whenever some other
gene is a descendant of ``i`` (a feedback loop or simply a downstream gene: its expression carries ``e_i``). The
default ``method="iv"`` uses the randomised knockout assignment as instruments: two-stage least squares with the
perturbation labels as instruments, which is a weighted regression of the *perturbation means* ``x̄_i^g`` on
``x̄_{-i}^g``. The knockout of ``j`` moves ``x_j`` exogenously (to 0), independently of ``e_i``, so this is
consistent for cyclic networks too. With controls and all single knockouts it is exactly identified: ``n``
perturbations (control and the ``n − 1`` other single knockouts) for ``n`` unknowns (``n − 1`` weights and ``b_i``).

Prediction of unseen combinations: the calibrated twin solves the knocked-out system (`predict_knockouts`); the
additive baseline (`additive_baseline`) adds the single-knockout shifts. In a linear network, with
``f(v_j, v_k) = c + α v_j + β v_k`` the level of gene ``t`` under ``do(x_j = v_j, x_k = v_k)`` (``α``: effect of ``j``
on ``t`` along paths avoiding ``k``; ``β`` likewise), the additive prediction of the double knockout errs at ``t`` by
``β δ_k + α δ_j``, where ``δ_k`` is the shift of ``k`` caused by knocking out ``j``. So the additive baseline is
*exact* on the genes not knocked out unless one knocked-out gene regulates the other (``δ_k ≠ 0``) and that one
regulates further genes along a path avoiding the first (``β ≠ 0``) — `interacting_pairs`. Shared targets alone do
not break additivity in a linear network (superposition); saturation does.

References: the digital-twin chapter, "Interventional data ... calibrate the parameters of a causal generative model
of the network"; Ahlmann-Eltze, Huber & Anders (Nature Methods 2025) on the additive baseline for double perturbations.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._checks import is_concrete

__all__ = [
    "AbstractGeneNetwork",
    "LinearGeneNetwork",
    "NetworkFit",
    "SaturatingGeneNetwork",
    "Screen",
    "additive_baseline",
    "fit_network",
    "interacting_pairs",
    "knockout_masks",
    "perturbation_means",
    "predict_knockouts",
    "random_interactions",
    "reachability",
    "sample_screen",
]


def _check_weights(weights, name: str = "W") -> jax.Array:
    weights = jnp.asarray(weights, dtype=float)
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"{name}: expected a square (gene, gene) interaction matrix, got shape {weights.shape}")
    if is_concrete(weights):
        w = np.asarray(weights)
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{name}: the interaction matrix has non-finite entries")
        if np.any(np.diag(w) != 0):
            raise ValueError(f"{name}: the interaction matrix must have a zero diagonal (no self-regulation term)")
        radius = float(np.max(np.abs(np.linalg.eigvals(w)))) if w.size else 0.0
        if radius >= 1.0:
            raise ValueError(
                f"{name}: the spectral radius of the interaction matrix W is {radius:.4g} >= 1, so the network has "
                "no stable steady state; scale W down"
            )
    return weights


def _keep(knockouts) -> jax.Array:
    return 1.0 - jnp.asarray(knockouts, dtype=float)


class AbstractGeneNetwork(eqx.Module):
    """A gene network with a steady state for each cell's noise and knockout set.

    **Fields:** `weights` ``(gene, gene)``, `basal` ``(gene,)``, `noise_sd` (scalar, intrinsic noise sd).
    """

    weights: eqx.AbstractVar[Float[Array, "gene gene"]]
    basal: eqx.AbstractVar[Float[Array, " gene"]]
    noise_sd: eqx.AbstractVar[Float[Array, ""]]

    @property
    def n_genes(self) -> int:
        return self.weights.shape[0]

    def steady_state(
        self, noise: Float[Array, "*#batch gene"], knockouts: Bool[ArrayLike, "*#batch gene"]
    ) -> Float[Array, "*batch gene"]:
        """Steady-state expression of cells with intrinsic noise `noise` under the knockout masks `knockouts`."""
        raise NotImplementedError


class LinearGeneNetwork(AbstractGeneNetwork):
    """The linear causal gene network ``x = W x + b + e`` (module docstring), knockouts as ``do(x_j = 0)``.

    **Arguments:**

    - `weights`: ``W``, shape ``(gene, gene)``; ``W_ij`` is the effect of gene ``j`` on gene ``i``. Zero diagonal and
      spectral radius below 1 (checked when concrete).
    - `basal`: ``b``, shape ``(gene,)``.
    - `noise_sd`: sd of the intrinsic noise ``e``.

    **Raises:** `ValueError` naming ``W`` when it is not square, has a nonzero diagonal or spectral radius ``>= 1``.

    Example:

    ```python
    net = LinearGeneNetwork(jnp.array([[0.0, 0.0], [0.5, 0.0]]), jnp.ones(2), 0.1)
    net.steady_state(jnp.zeros(2), jnp.array([False, False]))  # [1.0, 1.5]
    ```
    """

    weights: Float[Array, "gene gene"]
    basal: Float[Array, " gene"]
    noise_sd: Float[Array, ""]

    def __init__(self, weights, basal, noise_sd=1.0):
        self.weights = _check_weights(weights)
        self.basal = jnp.asarray(basal, dtype=float)
        if self.basal.shape != (self.weights.shape[0],):
            raise ValueError(f"basal: expected shape ({self.weights.shape[0]},), got {self.basal.shape}")
        self.noise_sd = jnp.asarray(noise_sd, dtype=float)
        if self.noise_sd.shape != ():
            raise ValueError(f"noise_sd: expected a scalar, got shape {self.noise_sd.shape}")
        if is_concrete(self.noise_sd) and not float(self.noise_sd) >= 0:
            raise ValueError(f"noise_sd: expected a non-negative sd, got {float(self.noise_sd)}")

    def steady_state(
        self, noise: Float[Array, "*#batch gene"], knockouts: Bool[ArrayLike, "*#batch gene"]
    ) -> Float[Array, "*batch gene"]:
        """Solve ``(I − D_K W) x = D_K (b + e)``, ``D_K = diag(1 − k)`` (row ``j`` replaced by ``x_j = 0``).

        **Arguments:**

        - `noise`: the intrinsic noise ``e`` of each cell, shape ``(*batch, gene)``.
        - `knockouts`: boolean masks, broadcastable against `noise`.

        **Returns:** the steady-state expression, shape ``(*batch, gene)``.
        """
        return _linear_solve(self.weights, self.basal + noise, knockouts)


def _linear_solve(weights, rhs, knockouts):
    # one inverse per knockout set, shared by all the cells broadcast against it (cells × genes² work, not × genes³);
    # the systems are well conditioned (cond ≤ (1 + ‖W‖)/(1 − ‖W‖) for a contraction)
    keep = _keep(knockouts)
    inverse = jnp.linalg.inv(jnp.eye(weights.shape[0]) - keep[..., :, None] * weights)
    return jnp.matmul(inverse, (keep * rhs)[..., None])[..., 0]


class SaturatingGeneNetwork(AbstractGeneNetwork):
    """A nonlinear network ``x = W φ_a(x) + b + e``, ``φ_a(x) = tanh(a x)/a``: saturating regulation.

    The steady state is found by Newton's method (a fixed number of iterations from the linear solution). With
    ``‖W‖₂ < 1`` the map is a contraction (``|φ_a'| ≤ 1``), so the steady state is unique.

    **Arguments:** as `LinearGeneNetwork`, plus `saturation` ``a >= 0`` (``a = 0`` is the linear network) and
    `n_newton` (static, iterations).
    """

    weights: Float[Array, "gene gene"]
    basal: Float[Array, " gene"]
    noise_sd: Float[Array, ""]
    saturation: Float[Array, ""]
    n_newton: int = eqx.field(static=True)

    def __init__(self, weights, basal, noise_sd=1.0, saturation=1.0, n_newton: int = 12):
        linear = LinearGeneNetwork(weights, basal, noise_sd)
        self.weights, self.basal, self.noise_sd = linear.weights, linear.basal, linear.noise_sd
        self.saturation = jnp.asarray(saturation, dtype=float)
        if is_concrete(self.saturation) and not float(self.saturation) >= 0:
            raise ValueError(f"saturation: expected a >= 0, got {float(self.saturation)}")
        if n_newton < 1:
            raise ValueError(f"n_newton: expected >= 1, got {n_newton}")
        self.n_newton = n_newton

    def regulation(self, x: Float[Array, "*batch gene"]) -> Float[Array, "*batch gene"]:
        """``φ_a(x) = tanh(a x)/a`` (``x`` at ``a = 0``)."""
        a = self.saturation
        safe = jnp.where(a > 0, a, 1.0)
        return jnp.where(a > 0, jnp.tanh(safe * x) / safe, x)

    def steady_state(
        self, noise: Float[Array, "*#batch gene"], knockouts: Bool[ArrayLike, "*#batch gene"]
    ) -> Float[Array, "*batch gene"]:
        """Solve ``x = D_K (W φ_a(x) + b + e)`` by Newton's method (arguments and returns as `LinearGeneNetwork`)."""
        keep = _keep(knockouts)
        rhs, keep = jnp.broadcast_arrays(self.basal + noise, keep)
        eye = jnp.eye(self.n_genes)

        def newton(_, x):
            phi = self.regulation(x)
            slope = jax.grad(lambda u: jnp.sum(self.regulation(u)))(x)
            residual = x - keep * (phi @ self.weights.T + rhs)
            jac = eye - keep[..., :, None] * self.weights * slope[..., None, :]
            return x - jnp.linalg.solve(jac, residual[..., None])[..., 0]

        x0 = _linear_solve(self.weights, rhs, knockouts)
        return jax.lax.fori_loop(0, self.n_newton, newton, x0)


def random_interactions(
    key: PRNGKeyArray, n_genes: int, density: float | Float[Array, ""], strength: float | Float[Array, ""]
) -> Float[Array, "gene gene"]:
    """A random sparse interaction matrix with zero diagonal and spectral norm ``‖W‖₂ = strength``.

    Each off-diagonal edge is present with probability `density` and has a standard-normal weight; the matrix is then
    scaled to operator norm `strength` (which bounds the spectral radius, so ``strength < 1`` is stable; the spectral
    radius is not used because sparse acyclic matrices have all eigenvalues zero). Jittable in `density`, `strength`.

    **Returns:** ``W``, shape ``(n_genes, n_genes)`` (all zero if no edge was drawn).
    """
    k_edge, k_w = jax.random.split(key)
    edges = jax.random.bernoulli(k_edge, density, (n_genes, n_genes)) & ~jnp.eye(n_genes, dtype=bool)
    raw = jnp.where(edges, jax.random.normal(k_w, (n_genes, n_genes)), 0.0)
    norm = jnp.linalg.norm(raw, ord=2)
    return jnp.where(norm > 0, strength / jnp.where(norm > 0, norm, 1.0), 0.0) * raw


def reachability(weights: Float[Array, "gene gene"]) -> Bool[Array, "gene gene"]:
    """``R[i, j]``: a directed path of nonzero interactions leads from gene ``j`` to gene ``i`` (length >= 1)."""
    n = weights.shape[0]
    step = (weights != 0).astype(float)
    reach = step
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2)))))):  # paths of length <= 2^k after k squarings
        reach = jnp.minimum(reach + reach @ reach, 1.0)
    return reach > 0


def interacting_pairs(weights: Float[Array, "gene gene"]) -> Bool[Array, "gene gene"]:
    """``I[j, k]``: the double knockout of ``j`` and ``k`` is (generically) not additive on the other genes.

    True when ``j`` reaches ``k`` and ``k`` reaches some gene ``t ∉ {j, k}`` along a path avoiding ``j``, or the same
    with ``j`` and ``k`` swapped (module docstring; the exception is an exact cancellation of path weights).
    """
    n = weights.shape[0]
    reach = reachability(weights)
    # reach_without[j][t, k]: k reaches t with every edge out of j removed (paths avoiding j)
    reach_without = jax.vmap(lambda j: reachability(weights * (jnp.arange(n) != j)[None, :]))(jnp.arange(n))
    others = ~jnp.eye(n, dtype=bool)

    def one_way(j, k):  # j regulates k, and k regulates some t outside {j, k} avoiding j
        outside = others[j] & others[k]
        return reach[k, j] & jnp.any(reach_without[j][:, k] & outside) & (j != k)

    idx = jnp.arange(n)
    directed = jax.vmap(lambda j: jax.vmap(lambda k: one_way(j, k))(idx))(idx)
    return directed | directed.T


def knockout_masks(sets, n_genes: int) -> Bool[Array, "perturbation gene"]:
    """Boolean knockout masks from a sequence of gene-index sets (``()`` is the control).

    **Raises:** `ValueError` for an index outside ``[0, n_genes)`` or repeated inside a set.
    """
    masks = np.zeros((len(sets), n_genes), dtype=bool)
    for p, genes in enumerate(sets):
        genes = [int(g) for g in genes]
        if len(set(genes)) != len(genes) or any(g < 0 or g >= n_genes for g in genes):
            raise ValueError(f"sets: entry {p} = {tuple(genes)} must hold distinct gene indices in [0, {n_genes})")
        masks[p, genes] = True
    return jnp.asarray(masks)


class Screen(NamedTuple):
    """Perturb-seq-like data: one row per cell.

    - `expression`: measured expression, shape ``(cell, gene)``.
    - `perturbation`: index of each cell's perturbation into `masks`, shape ``(cell,)``.
    - `masks`: the knockout mask of each perturbation, shape ``(perturbation, gene)``.
    """

    expression: Float[Array, "cell gene"]
    perturbation: Int[Array, " cell"]
    masks: Bool[Array, "perturbation gene"]


def sample_screen(
    network: AbstractGeneNetwork,
    key: PRNGKeyArray,
    masks: Bool[Array, "perturbation gene"],
    cells_per_perturbation: int,
    measurement_sd: float | Float[Array, ""] = 0.0,
) -> Screen:
    """Simulate a pooled knockout screen: `cells_per_perturbation` cells per mask, each its own noise ``e``.

    **Arguments:**

    - `network`: the true network.
    - `key`: PRNG key.
    - `masks`: knockout masks, shape ``(perturbation, gene)`` (see `knockout_masks`).
    - `cells_per_perturbation`: cells per perturbation (static).
    - `measurement_sd`: sd of Gaussian measurement noise added to every measured value.

    **Returns:** a `Screen` with cells ordered by perturbation.
    """
    if cells_per_perturbation < 1:
        raise ValueError(f"cells_per_perturbation: expected >= 1, got {cells_per_perturbation}")
    n_pert, n_genes = masks.shape
    if n_genes != network.n_genes:
        raise ValueError(f"masks: expected {network.n_genes} genes, got shape {masks.shape}")
    k_e, k_m = jax.random.split(key)
    shape = (n_pert, cells_per_perturbation, n_genes)
    noise = network.noise_sd * jax.random.normal(k_e, shape)
    x = network.steady_state(noise, masks[:, None, :]).reshape(-1, n_genes)
    x = x + measurement_sd * jax.random.normal(k_m, x.shape)
    perturbation = jnp.repeat(jnp.arange(n_pert), cells_per_perturbation)
    return Screen(x, perturbation, masks)


def perturbation_means(screen: Screen) -> tuple[Float[Array, "perturbation gene"], Float[Array, " perturbation"]]:
    """Mean expression of each perturbation's cells, ``(perturbation, gene)``, and the cell counts."""
    n_pert = screen.masks.shape[0]
    onehot = (screen.perturbation[:, None] == jnp.arange(n_pert)[None, :]).astype(float)
    counts, sums = jnp.sum(onehot, axis=0), onehot.T @ screen.expression
    return sums / jnp.maximum(counts, 1.0)[:, None], counts


class NetworkFit(NamedTuple):
    """The calibrated linear twin: `weights` ``Ŵ``, `basal` ``b̂``, `noise_sd` ``σ̂_i`` per gene and `weights_se`,
    the standard errors of ``Ŵ`` (zero on the diagonal)."""

    weights: Float[Array, "gene gene"]
    basal: Float[Array, " gene"]
    noise_sd: Float[Array, " gene"]
    weights_se: Float[Array, "gene gene"]


def fit_network(screen: Screen, method: str = "iv", ridge: float | Float[Array, ""] = 0.0) -> NetworkFit:
    """Infer ``W`` and ``b`` from a knockout screen by per-gene regression (module docstring).

    For gene ``i`` only cells where ``i`` is not knocked out are used. ``method="iv"`` (default) regresses the
    perturbation means ``x̄_i^g`` on ``(x̄_{-i}^g, 1)`` weighted by cell counts — two-stage least squares with the
    knockout labels as instruments, consistent for cyclic networks and under measurement noise; it needs at least as
    many perturbations without ``i`` as unknowns (control plus the other single knockouts suffice). ``method="ols"``
    regresses cell-level ``x_i`` on ``x_{-i}``: biased when other genes are downstream of ``i``.

    `ridge` adds ``ridge ‖W_i‖²`` to the mean squared residual (the intercept is not penalised).

    **Returns:** a `NetworkFit`. The standard errors are the usual (2SLS / OLS) homoskedastic ones,
    ``σ̂_i² [(X̂ᵀX̂)⁻¹]_jj`` with ``X̂`` the (fitted) regressors, ``σ̂_i`` from the structural residuals of the cells.
    """
    if method not in ("iv", "ols"):
        raise ValueError(f"method: expected 'iv' or 'ols', got {method!r}")
    if is_concrete(ridge) and not float(ridge) >= 0:
        raise ValueError(f"ridge: expected a non-negative penalty, got {float(ridge)}")
    return _fit(screen, method, jnp.asarray(ridge, dtype=float))


@eqx.filter_jit
def _fit(screen: Screen, method: str, ridge: Float[Array, ""]) -> NetworkFit:
    # per-perturbation sufficient statistics of z = (x, 1): the cost is independent of the number of cells
    n_pert, n_genes = screen.masks.shape
    z = jnp.concatenate([screen.expression, jnp.ones((screen.expression.shape[0], 1))], axis=1)
    onehot = (screen.perturbation[:, None] == jnp.arange(n_pert)[None, :]).astype(float)
    # Σ_c z zᵀ per group as a dense contraction (a scatter-add of the outer products stalled XLA's CPU thread pool)
    second = jnp.einsum("cg,ca,cb->gab", onehot, z, z)
    counts = second[:, -1, -1]
    mean_z = second[:, :, -1] / jnp.maximum(counts, 1.0)[:, None]
    between = counts[:, None, None] * mean_z[:, :, None] * mean_z[:, None, :]  # n_g z̄ z̄ᵀ: 2SLS's fitted regressors
    regress = between if method == "iv" else second

    def one_gene(i, keep):
        onehot = jnp.arange(n_genes + 1) == i
        drop = jnp.where(onehot, 0.0, 1.0)  # the column of x_i is not a regressor
        gram_all = jnp.einsum("g,gab->ab", keep, regress)
        gram = drop[:, None] * gram_all * drop[None, :]
        rhs = drop * gram_all[:, i]
        total = jnp.sum(keep * counts)
        penalty = jnp.where(onehot, 1.0, ridge).at[-1].set(0.0)  # the 1 pins the zeroed coefficient at 0
        # symmetric positive definite systems: Cholesky (a batched LU solve stalled XLA's CPU runtime under vmap)
        coef = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(gram / total + jnp.diag(penalty)), rhs / total)
        # structural residual x_i − coef·z of every kept cell, through the second moments: u = e_i − coef
        u = jnp.where(onehot, 1.0, 0.0) - coef
        ss = u @ jnp.einsum("g,gab->ab", keep, second) @ u
        sigma2 = ss / jnp.maximum(total - n_genes, 1.0)
        unpenalised = jax.scipy.linalg.cho_factor(gram + jnp.diag(jnp.where(onehot, 1.0, 0.0)))  # ridge = 0
        cov = sigma2 * jax.scipy.linalg.cho_solve(unpenalised, jnp.eye(n_genes + 1, dtype=gram.dtype))
        se = jnp.sqrt(jnp.clip(jnp.diag(cov)[:n_genes], 0.0)) * drop[:n_genes]
        return coef[:n_genes], coef[n_genes], jnp.sqrt(sigma2), se

    keep = (~screen.masks).astype(float)  # (perturbation, gene): the groups in which gene i is not knocked out
    weights, basal, sd, se = jax.vmap(one_gene)(jnp.arange(n_genes), keep.T)
    return NetworkFit(weights, basal, sd, se)


def predict_knockouts(
    weights: Float[Array, "gene gene"], basal: Float[Array, " gene"], masks: Bool[Array, "perturbation gene"]
) -> Float[Array, "perturbation gene"]:
    """The twin's mean expression under each knockout set: ``(I − D_K Ŵ)⁻¹ D_K b̂`` (the linear twin's mean, since
    ``E e = 0``).

    **Raises:** `ValueError` when `weights` is not square or `basal`/`masks` do not match it.
    """
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"weights: expected a square (gene, gene) matrix, got shape {weights.shape}")
    if basal.shape != weights.shape[:1] or masks.shape[-1] != weights.shape[0]:
        raise ValueError(f"basal/masks: expected {weights.shape[0]} genes, got {basal.shape} and {masks.shape}")
    return _linear_solve(weights, basal, masks)


def additive_baseline(
    control_mean: Float[Array, " gene"],
    single_effects: Float[Array, "gene gene"],
    masks: Bool[Array, "perturbation gene"],
) -> Float[Array, "perturbation gene"]:
    """Additive prediction: ``control + Σ_{j ∈ K} Δ_j`` with ``Δ_j = x̄^{(j)} − x̄^{control}`` (row ``j`` of
    `single_effects`, the measured shift of the single knockout of ``j``).

    **Raises:** `ValueError` on mismatched shapes.
    """
    n = control_mean.shape[0]
    if single_effects.shape != (n, n) or masks.shape[-1] != n:
        raise ValueError(
            f"single_effects/masks: expected ({n}, {n}) and (..., {n}), got {single_effects.shape} and {masks.shape}"
        )
    return control_mean + masks.astype(float) @ single_effects
