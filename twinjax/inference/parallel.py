"""Parallel-in-time Kalman filter and RTS smoother (associative scan) for a :class:`~twinjax.LinearGaussianSSM`.

Särkkä & García-Fernández write filtering as the prefix "sum" of ``T`` elements under an associative operator, so
``lax.associative_scan`` computes every filtered marginal in ``O(log T)`` parallel depth (``O(T)`` work) instead of a
``T``-step sequential loop; the smoother is a reverse scan of the same kind.

Filtering element ``k`` is the pair of Gaussian potentials ``p(x_k | x_{k-1}, y_k) = N(A_k x_{k-1} + b_k, C_k)`` and
``p(y_k | x_{k-1}) ∝ N_I(x_{k-1}; η_k, J_k)`` (information form). With ``F = A``, the transition bias
``c = B u_{k-1}``, the observed rows ``H`` of ``C`` (the rows of missing channels are zero and ``R`` is masked, as in
the sequential filter), the residual ``r = y_k - D u_k - H c``, ``S = H Q Hᵀ + R``, ``K = Q Hᵀ S⁻¹``:

    ``A_k = (I - K H) F``, ``b_k = c + K r``, ``C_k = (I - K H) Q (I - K H)ᵀ + K R Kᵀ``,
    ``η_k = Fᵀ Hᵀ S⁻¹ r``, ``J_k = Fᵀ Hᵀ S⁻¹ H F``;

element 0 is the same with ``F = 0``, ``c = m_0``, ``Q = P_0`` (the prior is updated by ``y_0`` without a
prediction). The combination ``(A, b, C, η, J)_{ij} = e_i ⊗ e_j`` is

    ``M = A_j (I + C_i J_j)⁻¹``, ``A = M A_i``, ``b = M (b_i + C_i η_j) + b_j``, ``C = M C_i A_jᵀ + C_j``,
    ``N = A_iᵀ (I + J_j C_i)⁻¹``, ``η = N (η_j - J_j b_i) + η_i``, ``J = N J_j A_i + J_i``.

After the scan ``b_k, C_k`` are the filtered moments; the predicted moments, innovations and the log-likelihood
``Σ log N(y_k; C m⁻_k + D u_k, C P⁻_k Cᵀ + R)`` follow in one vectorised pass. Smoothing element ``k < T-1`` is
``p(x_k | x_{k+1}, y_{0:k}) = N(E_k x_{k+1} + g_k, L_k)`` with ``E_k = P_k Aᵀ (P⁻_{k+1})⁻¹``,
``g_k = m_k - E_k m⁻_{k+1}``, ``L_k = (I - E_k A) P_k (I - E_k A)ᵀ + E_k Q E_kᵀ`` (element ``T-1``:
``E = 0, g = m_{T-1}, L = P_{T-1}``); combined by ``E = E_i E_j``, ``g = E_i g_j + g_i``, ``L = E_i L_j E_iᵀ + L_i``
in a reverse scan.

References:
    S. Särkkä, Á. F. García-Fernández, "Temporal parallelization of Bayesian smoothers", IEEE Transactions on
    Automatic Control 66(1), 299–306 (2021), arXiv:1905.13002, Lemmas 7–10.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._types import Array, Float, Obs, State
from ..model.ssm import LinearGaussianSSM
from ..model.status import Status
from ._base import (
    GaussianFilterResult,
    Innovation,
    SmootherResult,
    _log_normal,
    check_model,
    mask_covariance,
    masked_residual,
    symmetrise,
)
from .kalman import _check_filter_result, _prepare


def _check_linear_gaussian(model) -> None:
    check_model(model)
    if not isinstance(model, LinearGaussianSSM):
        raise ValueError(
            "`model` must be a tj.LinearGaussianSSM for the parallel (associative-scan) Kalman filter/smoother, got "
            f"{type(model).__name__}; use the sequential kalman_filter / rts_smoother for other twins."
        )


# _no_concurrent_lapack: jaxlib 0.10's CPU LAPACK kernels split a batch over XLA's intra-op thread pool and block until
# the chunks are done, so two independent batched LAPACK calls that XLA runs concurrently can occupy every pool thread
# and deadlock (reproduced with two batched triangular solves of 1e5 4x4 systems on 2 cores; fixed upstream in later
# jaxlib). Every batched factorisation or solve in this module therefore depends on the previous one: one vmapped
# element computation, one solve per element, one inverse per combination, one solve per innovation.


class _FilterElement(eqx.Module):
    A: Float[Array, "*t n n"]
    b: Float[Array, "*t n"]
    C: Float[Array, "*t n n"]
    eta: Float[Array, "*t n"]
    J: Float[Array, "*t n n"]


class _SmootherElement(eqx.Module):
    E: Float[Array, "*t n n"]
    g: Float[Array, "*t n"]
    L: Float[Array, "*t n n"]


def _symmetrise_batch(P: Float[Array, "*t n n"]) -> Float[Array, "*t n n"]:
    return 0.5 * (P + jnp.swapaxes(P, -1, -2))


def _filter_element(
    model: LinearGaussianSSM,
    F: Float[Array, "n n"],
    c: State,
    Q: Float[Array, "n n"],
    y: Obs,
    u: Float[Array, " control"],
) -> _FilterElement:
    """The element of one step: transition ``x ↦ F x + c`` with noise ``Q``, then the (masked) measurement ``y``."""
    n = F.shape[0]
    mask = ~jnp.isnan(y)
    both = mask[:, None] & mask[None, :]
    H = jnp.where(mask[:, None], model.C, 0.0)
    r = jnp.where(mask, jnp.where(mask, y, 0.0) - model.D @ u - H @ c, 0.0)
    S = mask_covariance(symmetrise(H @ Q @ H.T + model.R), mask)
    chol = jnp.linalg.cholesky(S)
    HF = H @ F
    # one solve for all right-hand sides: S⁻¹ [H Q, r, H F] (see _no_concurrent_lapack)
    sol = jax.scipy.linalg.cho_solve((chol, True), jnp.concatenate([H @ Q, r[:, None], HF], axis=1))
    K = sol[:, :n].T  # Q Hᵀ S⁻¹
    I_KH = jnp.eye(n, dtype=Q.dtype) - K @ H
    R_obs = jnp.where(both, model.R, 0.0)
    return _FilterElement(
        A=I_KH @ F,
        b=c + K @ r,
        C=symmetrise(I_KH @ Q @ I_KH.T + K @ R_obs @ K.T),
        eta=HF.T @ sol[:, n],
        J=symmetrise(HF.T @ sol[:, n + 1 :]),
    )


def _combine_filter(e1: _FilterElement, e2: _FilterElement) -> _FilterElement:
    """``e1 ⊗ e2`` with ``e1`` the earlier block (Lemma 8)."""
    eye = jnp.eye(e1.A.shape[-1], dtype=e1.A.dtype)
    # C and J are symmetric, so I + J_j C_i = Wᵀ with W = I + C_i J_j, whose eigenvalues (those of I + C^½ J C^½) are
    # >= 1: W is never singular. One inverse serves both products (see _no_concurrent_lapack).
    W_inv = jnp.linalg.inv(eye + e1.C @ e2.J)
    M = e2.A @ W_inv
    N = e1.A.T @ W_inv.T
    return _FilterElement(
        A=M @ e1.A,
        b=M @ (e1.b + e1.C @ e2.eta) + e2.b,
        C=symmetrise(M @ e1.C @ e2.A.T + e2.C),
        eta=N @ (e2.eta - e2.J @ e1.b) + e1.eta,
        J=symmetrise(N @ e2.J @ e1.A + e1.J),
    )


def _innovation(
    model: LinearGaussianSSM, m: State, P: Float[Array, "n n"], y: Obs, u: Float[Array, " control"]
) -> Innovation:
    """``log N(y; C m + D u, C P Cᵀ + R)`` over the observed channels (the sequential filter's :class:`Innovation`)."""
    r, mask = masked_residual(y, model.C @ m + model.D @ u)
    H = jnp.where(mask[:, None], model.C, 0.0)
    S = mask_covariance(symmetrise(H @ P @ H.T + model.R), mask)
    chol = jnp.linalg.cholesky(S)
    z = jax.scipy.linalg.solve_triangular(chol, r, lower=True)
    return Innovation(r, S, mask, _log_normal(z, chol, mask))


@eqx.filter_jit
def _parallel_filter(model: LinearGaussianSSM, ys, us, ts, mean, cov) -> GaussianFilterResult:
    A, B, Q = model.A, model.B, model.Q
    first = jnp.arange(ys.shape[0]) == 0
    u_prev = jnp.concatenate([us[:1], us[:-1]], axis=0)

    def element(is_first, y, u_prev, u):
        # element 0 updates the prior directly: F = 0, c = m0, Q = P0 (one vmapped call: _no_concurrent_lapack)
        F = jnp.where(is_first, jnp.zeros_like(A), A)
        c = jnp.where(is_first, mean, B @ u_prev)
        return _filter_element(model, F, c, jnp.where(is_first, cov, Q), y, u)

    elements = jax.vmap(element)(first, ys, u_prev, us)
    scanned = lax.associative_scan(jax.vmap(_combine_filter), elements)
    ms, Ps = scanned.b, scanned.C

    m_preds = jnp.concatenate([mean[None], ms[:-1] @ A.T + us[:-1] @ B.T], axis=0)
    P_preds = jnp.concatenate([cov[None], _symmetrise_batch(A @ Ps[:-1] @ A.T + Q)], axis=0)
    innovations = jax.vmap(lambda m, P, y, u: _innovation(model, m, P, y, u))(m_preds, P_preds, ys, us)
    status = jnp.where(jnp.all(jnp.isfinite(m_preds), axis=1), Status.successful, Status.nonfinite)
    status = jnp.where(first, Status.successful, status).astype(jnp.int32)
    return GaussianFilterResult(
        ts=ts,
        means=ms,
        covariances=Ps,
        predicted_means=m_preds,
        predicted_covariances=P_preds,
        log_likelihood=jnp.sum(innovations.log_likelihood),
        log_likelihoods=innovations.log_likelihood,
        innovations=innovations,
        status=status,
    )


def _smoother_element(
    model: LinearGaussianSSM, m: State, P: Float[Array, "n n"], m_pred_next: State, P_pred_next: Float[Array, "n n"]
) -> _SmootherElement:
    A = model.A
    chol = jnp.linalg.cholesky(P_pred_next)
    E = jax.scipy.linalg.cho_solve((chol, True), A @ P).T
    I_EA = jnp.eye(A.shape[0], dtype=P.dtype) - E @ A
    return _SmootherElement(E=E, g=m - E @ m_pred_next, L=symmetrise(I_EA @ P @ I_EA.T + E @ model.Q @ E.T))


def _combine_smoother(later: _SmootherElement, earlier: _SmootherElement) -> _SmootherElement:
    """``x_i | x_{j+1}`` from ``x_i | x_{k+1}`` (earlier) and ``x_{k+1} | x_{j+1}`` (later) (Lemma 10).

    ``lax.associative_scan(..., reverse=True)`` passes the later block first."""
    return _SmootherElement(
        E=earlier.E @ later.E,
        g=earlier.E @ later.g + earlier.g,
        L=symmetrise(earlier.E @ later.L @ earlier.E.T + earlier.L),
    )


@eqx.filter_jit
def _parallel_smoother(model: LinearGaussianSSM, filtered: GaussianFilterResult) -> SmootherResult:
    ms, Ps = filtered.means, filtered.covariances
    rest = jax.vmap(lambda *a: _smoother_element(model, *a))(
        ms[:-1], Ps[:-1], filtered.predicted_means[1:], filtered.predicted_covariances[1:]
    )
    last = _SmootherElement(E=jnp.zeros_like(Ps[-1]), g=ms[-1], L=Ps[-1])
    elements = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]], axis=0), rest, last)
    scanned = lax.associative_scan(jax.vmap(_combine_smoother), elements, reverse=True)
    cross = scanned.L[1:] @ jnp.swapaxes(rest.E, -1, -2)
    return SmootherResult(
        ts=filtered.ts,
        means=scanned.g,
        covariances=scanned.L,
        cross_covariances=cross,
        log_likelihood=filtered.log_likelihood,
    )


def parallel_kalman_filter(model, ys, us=None, ts=None, *, mean=None, cov=None) -> GaussianFilterResult:
    """Parallel-in-time Kalman filter (associative scan) for a :class:`~twinjax.LinearGaussianSSM`.

    Equal to :func:`kalman_filter` (to rounding) with ``O(log T)`` parallel depth: worth it on a GPU/TPU for long
    series; on a CPU the sequential filter does less work. See the module docstring for the elements.

    Arguments:
        model: a :class:`~twinjax.LinearGaussianSSM` (time-invariant ``A, B, C, D, Q, R``; ``ts`` only labels the
            steps).
        ys: measurements ``(T, obs)``; ``NaN`` marks missing channels (a missing channel is a zero row of ``C`` for
            that step).
        us: controls ``(T, control)``, required when the model has inputs; ``us[k]`` is in the sensor at step ``k``
            and drives the transition to ``k + 1``.
        ts: observation times ``(T,)`` (default ``dt * arange(T)``).
        mean, cov: the prior of ``x_0`` (default ``model.m0``, ``model.P0``).

    Returns:
        A :class:`GaussianFilterResult`, as :func:`kalman_filter`.

    Raises:
        ValueError: for a model that is not a ``LinearGaussianSSM``, and as :func:`kalman_filter` for bad data.

    Example:
        ```python
        result = parallel_kalman_filter(lgssm, ys, us)
        ```

    References:
        Särkkä & García-Fernández (2021), "Temporal parallelization of Bayesian smoothers", IEEE TAC.
    """
    _check_linear_gaussian(model)
    ys, us, ts, mean, cov = _prepare(model, ys, us, ts, mean, cov)
    return _parallel_filter(model, ys, us, ts, mean, cov)


def parallel_rts_smoother(model, filtered_or_ys, us=None, ts=None, *, mean=None, cov=None) -> SmootherResult:
    """Parallel-in-time RTS smoother (reverse associative scan) for a :class:`~twinjax.LinearGaussianSSM`.

    Arguments:
        model: a :class:`~twinjax.LinearGaussianSSM`.
        filtered_or_ys: a :class:`GaussianFilterResult` (of either Kalman filter on ``model``), or measurements
            ``(T, obs)`` to run :func:`parallel_kalman_filter` on first.
        us, ts, mean, cov: as :func:`parallel_kalman_filter` (only with measurements; the smoother itself needs no
            controls: they are in the filter's predicted means).

    Returns:
        A :class:`SmootherResult` with the cross-covariances ``Cov(x_{k+1}, x_k | y) = Pˢ_{k+1} E_kᵀ``.

    Raises:
        ValueError: for a model that is not a ``LinearGaussianSSM``; as :func:`parallel_kalman_filter`.

    Example:
        ```python
        smoothed = parallel_rts_smoother(lgssm, ys, us)
        ```
    """
    _check_linear_gaussian(model)
    if isinstance(filtered_or_ys, GaussianFilterResult):
        _check_filter_result(filtered_or_ys, ts, mean, cov)
        filtered = filtered_or_ys
    else:
        filtered = parallel_kalman_filter(model, filtered_or_ys, us, ts, mean=mean, cov=cov)
    return _parallel_smoother(model, filtered)
