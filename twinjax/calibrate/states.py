r"""The joint posterior over parameters and latent states, ``p(φ, x_{0:T} | y_{0:T}, u)``, by structured VI.

Chapter ``001_…`` names this posterior as the one a digital twin approximates by variational inference. The guide is
a Gaussian over the unconstrained parameters ``z = T⁻¹(φ)`` and the states, with Markov structure given ``z``:

``q(z, x_{0:T}) = N(z; μ, S) · N(x_0; b_0 + K_0 δ, L_0 L_0ᵀ) · Π_{t≥1} N(x_t; A_t x_{t-1} + b_t + K_t δ, L_t L_tᵀ)``,
``δ = z − μ``, ``S = L_z L_zᵀ``

(linear-Gaussian conditionals: a block-bidiagonal precision over the states, coupled to ``z`` through ``K_t``). With
no parameter spec it is the Markov-Gaussian state guide ``q(x_0) Π q(x_t | x_{t-1})`` alone.

The ELBO ``E_q[log p(z) + log p(x_0 | φ) + Σ log p(x_t | x_{t-1}, u, φ) + Σ log p(y_t | x_t, u, φ)] + H[q]`` is
computed deterministically: the entropy in closed form, each term of the log joint by a degree-3 spherical cubature
rule (``2D`` points) over the Gaussian marginal of the few variables it involves — ``(δ, x_{t-1}, x_t)`` for a
transition, ``(δ, x_t)`` for a measurement. The marginals follow from one forward recursion of the guide's means,
covariances and cross-covariances. The ELBO is then maximised by L-BFGS (optax).

**Exactness on linear-Gaussian twins.** When the log joint is a quadratic function of ``(z, x)`` — a linear-Gaussian
twin with known parameters, or with parameters that enter the means linearly (an input gain, a bias) — the cubature
rule integrates it exactly, so the objective *is* the ELBO; the exact posterior is Gaussian, Markov given ``z``,
with conditional means affine in ``z``, so it belongs to the guide family and is the ELBO's maximiser (where
``ELBO = log p(y)``). The optimum therefore reproduces the Kalman smoother's marginals (and, with unknown linear
parameters, the exact parameter posterior) to the optimiser's tolerance. For nonlinear twins the result is the
Gaussian-family VI approximation with cubature expectations (as in sigma-point smoothers).

Requires a twin with process noise (``process_noise`` or an SDE) and a Gaussian initial distribution.

References:
    Chapter ``001_…``, "The Probabilistic Foundation of the Digital Twin" (the joint and its VI approximation).
    E. Archer et al., "Black box variational inference for state space models", 2015 (Markov Gaussian guides);
    S. Särkkä, *Bayesian Filtering and Smoothing* (2013), §6.3 and §9.3 (spherical cubature, Gaussian smoothers).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._types import Array, Float, Key, Scalar
from ..inference import extended_rts_smoother
from ..model.distributions import Gaussian, gaussian_log_prob
from ..model.params import Params
from .bayes import Data, check_spec, prepare_data

LOG_2PI_E = float(np.log(2 * np.pi * np.e))


def _tri(raw: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """Lower-triangular factor with a positive diagonal (``exp`` of the raw diagonal)."""
    return jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diag(raw)))


def _tri_inv(L: Float[Array, "n n"]) -> Float[Array, "n n"]:
    return jnp.tril(L, -1) + jnp.diag(jnp.log(jnp.diag(L)))


class MarkovGaussianGuide(eqx.Module):
    """The guide's parameters (see the module docstring); ``L``, ``Lz`` are raw (diagonal on the log scale).

    Shapes: ``b (T, n)``, ``A (T, n, n)`` (``A[0]`` unused), ``K (T, n, d)``, ``L (T, n, n)``, ``mu (d,)``,
    ``Lz (d, d)``; ``d = 0`` without a parameter spec.
    """

    b: Float[Array, "time state"]
    A: Float[Array, "time state state"]
    K: Float[Array, "time state param"]
    L: Float[Array, "time state state"]
    mu: Float[Array, " param"]
    Lz: Float[Array, "param param"]


class Marginals(eqx.Module):
    """The guide's marginals: ``means (T, n)``, ``covariances (T, n, n)``, ``Cov(x_t, δ)`` ``(T, n, d)`` and the
    lag-one ``Cov(x_{t+1}, x_t)`` ``(T-1, n, n)``."""

    means: Float[Array, "time state"]
    covariances: Float[Array, "time state state"]
    param_cross: Float[Array, "time state param"]
    cross_covariances: Float[Array, "time_1 state state"]


def marginals(guide: MarkovGaussianGuide) -> Marginals:
    """The marginal means and covariances of ``q`` by the forward recursion ``m_t = A_t m_{t-1} + b_t``,
    ``C_t = A_t C_{t-1} + K_t S``, ``P_t = A_t P_{t-1} A_tᵀ + A_t C_{t-1} K_tᵀ + K_t C_{t-1}ᵀ A_tᵀ + K_t S K_tᵀ +
    L_t L_tᵀ``, ``Cov(x_t, x_{t-1}) = A_t P_{t-1} + K_t C_{t-1}ᵀ``."""
    Lz = _tri(guide.Lz)
    S = Lz @ Lz.T
    L0 = _tri(guide.L[0])
    K0 = guide.K[0]
    m0, C0 = guide.b[0], K0 @ S
    P0 = K0 @ S @ K0.T + L0 @ L0.T

    def body(carry, inputs):
        m, P, C = carry
        A, b, K, Lraw = inputs
        L = _tri(Lraw)
        m1 = A @ m + b
        C1 = A @ C + K @ S
        ACK = A @ C @ K.T
        P1 = A @ P @ A.T + ACK + ACK.T + K @ S @ K.T + L @ L.T
        cross = A @ P + K @ C.T
        return (m1, 0.5 * (P1 + P1.T), C1), (m1, 0.5 * (P1 + P1.T), C1, cross)

    _, (ms, Ps, Cs, cross) = jax.lax.scan(body, (m0, P0, C0), (guide.A[1:], guide.b[1:], guide.K[1:], guide.L[1:]))
    cat = lambda first, rest: jnp.concatenate([first[None], rest])  # noqa: E731
    return Marginals(cat(m0, ms), cat(P0, Ps), cat(C0, Cs), cross)


def cubature(fn, mean: Float[Array, " D"], cov: Float[Array, "D D"]) -> Scalar:
    """``E[fn(v)]``, ``v ~ N(mean, cov)``, by the degree-3 spherical-radial rule: ``2D`` points ``mean ± √D L e_i``
    with equal weights (exact for polynomials of degree ≤ 3)."""
    D = mean.shape[0]
    L = jnp.linalg.cholesky(0.5 * (cov + cov.T))
    xi = jnp.sqrt(D) * jnp.concatenate([jnp.eye(D), -jnp.eye(D)])
    return jnp.mean(jax.vmap(fn)(mean + xi @ L.T))


def _block(rows):
    return jnp.concatenate([jnp.concatenate(r, axis=1) for r in rows], axis=0)


def elbo(guide: MarkovGaussianGuide, model, spec: Params | None, data: Data) -> Scalar:
    """The ELBO of ``guide`` (cubature expectations, closed-form entropy); see the module docstring. Pure."""
    ys, us, ts = data.ys, data.us, data.ts
    n, d = guide.b.shape[1], guide.mu.shape[0]
    marg = marginals(guide)
    Lz = _tri(guide.Lz)
    S = Lz @ Lz.T
    zero = jnp.zeros((d,), ys.dtype)

    def twin_at(delta):
        return model if spec is None else spec.from_unconstrained(model, guide.mu + delta)

    total = 0.0
    if spec is not None:
        total = total + cubature(lambda dl: spec.log_prior_unconstrained(model, guide.mu + dl), zero, S)

    def init_term(v):
        twin = twin_at(v[:d])
        init = twin.initial
        return gaussian_log_prob(v[d:], init.mean, init.cov)

    C0 = marg.param_cross[0]
    total = total + cubature(
        init_term, jnp.concatenate([zero, marg.means[0]]), _block([[S, C0.T], [C0, marg.covariances[0]]])
    )

    def obs_term(m, P, C, y, t, u):
        def f(v):
            return twin_at(v[:d]).observation.log_prob(y, t, v[d:], u)

        return cubature(f, jnp.concatenate([zero, m]), _block([[S, C.T], [C, P]]))

    total = total + jnp.sum(jax.vmap(obs_term)(marg.means, marg.covariances, marg.param_cross, ys, ts, us))

    def trans_term(m0, P0, C0, m1, P1, C1, X, t0, t1, u):
        def f(v):
            twin = twin_at(v[:d])
            x0, x1 = v[d : d + n], v[d + n :]
            mean = twin.transition(t0, t1, x0, u)
            Q = twin.process_noise_cov(t0, t1, x0, u)
            return gaussian_log_prob(x1, mean, Q)

        cov = _block([[S, C0.T, C1.T], [C0, P0, X.T], [C1, X, P1]])
        return cubature(f, jnp.concatenate([zero, m0, m1]), cov)

    M, P, C = marg.means, marg.covariances, marg.param_cross
    terms = jax.vmap(trans_term)(
        M[:-1], P[:-1], C[:-1], M[1:], P[1:], C[1:], marg.cross_covariances, ts[:-1], ts[1:], us[:-1]
    )
    total = total + jnp.sum(terms)
    entropy = 0.5 * d * LOG_2PI_E + jnp.sum(jnp.diag(guide.Lz))
    entropy = entropy + ys.shape[0] * 0.5 * n * LOG_2PI_E + jnp.sum(jnp.diagonal(guide.L, axis1=1, axis2=2))
    return total + entropy


class StatePosterior(eqx.Module):
    """The fitted joint posterior ``q(φ, x_{0:T})``.

    Attributes:
        ts: times ``(T,)``.
        means, covariances: the state marginals of ``q`` (parameters integrated out), ``(T, n)``, ``(T, n, n)``.
        cross_covariances: ``Cov(x_{t+1}, x_t)`` under ``q``, ``(T-1, n, n)`` (the smoother's convention).
        z_mean, z_cov: the Gaussian ``q(z)`` of the unconstrained parameters, ``(d,)``, ``(d, d)`` (``d = 0``: none).
        elbo: the final ELBO (nats); elbos: per L-BFGS iteration; grad_norm: the final gradient norm.
        guide: the fitted :class:`MarkovGaussianGuide`.
    """

    ts: Float[Array, " time"]
    means: Float[Array, "time state"]
    covariances: Float[Array, "time state state"]
    cross_covariances: Float[Array, "time_1 state state"]
    z_mean: Float[Array, " param"]
    z_cov: Float[Array, "param param"]
    elbo: Scalar
    elbos: Float[Array, " steps"]
    grad_norm: Scalar
    guide: MarkovGaussianGuide
    _model: eqx.Module
    _spec: Params | None = eqx.field(static=True)

    def sample(self, key: Key, n: int) -> tuple[Float[Array, "n param"], Float[Array, "n time state"]]:
        """``n`` joint draws ``(φ, x_{0:T})`` from ``q``: physical parameters ``(n, d)``, states ``(n, T, state)``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive integer, got {n!r}.")
        return _sample(self.guide, self._model, self._spec, key, n)


@eqx.filter_jit
def _sample(guide, model, spec, key, n):
    def one(k):
        k_z, k_x = jax.random.split(k)
        delta = _tri(guide.Lz) @ jax.random.normal(k_z, guide.mu.shape, guide.mu.dtype)
        eps = jax.random.normal(k_x, guide.b.shape, guide.b.dtype)
        x0 = guide.b[0] + guide.K[0] @ delta + _tri(guide.L[0]) @ eps[0]

        def body(x, inputs):
            A, b, K, Lraw, e = inputs
            x1 = A @ x + b + K @ delta + _tri(Lraw) @ e
            return x1, x1

        _, xs = jax.lax.scan(body, x0, (guide.A[1:], guide.b[1:], guide.K[1:], guide.L[1:], eps[1:]))
        phi = guide.mu + delta if spec is None else spec.constrain(model, guide.mu + delta)
        return phi, jnp.concatenate([x0[None], xs])

    return jax.vmap(one)(jax.random.split(key, n))


def _initial_guide(model, spec, data: Data, init: str, z0) -> MarkovGaussianGuide:
    ys, us, ts = data.ys, data.us, data.ts
    T = ys.shape[0]
    n = model.initial.mean.shape[0]
    d = 0 if spec is None else z0.shape[0]
    twin = model if spec is None else spec.from_unconstrained(model, z0)
    if init == "smoother":
        sm = extended_rts_smoother(twin, ys, us, ts)
        b, covs = sm.means, sm.covariances
    else:  # "prior": every state at the initial belief
        b = jnp.tile(model.initial.mean, (T, 1))
        covs = jnp.tile(model.initial.cov, (T, 1, 1))
    chol = jax.vmap(lambda P: jnp.linalg.cholesky(0.5 * (P + P.T) + 1e-12 * jnp.eye(n)))(covs)
    return MarkovGaussianGuide(
        b=b.astype(ys.dtype),
        A=jnp.zeros((T, n, n), ys.dtype),
        K=jnp.zeros((T, n, d), ys.dtype),
        L=jax.vmap(_tri_inv)(chol).astype(ys.dtype),
        mu=jnp.zeros((d,), ys.dtype) if spec is None else z0.astype(ys.dtype),
        Lz=jnp.log(0.1) * jnp.eye(d, dtype=ys.dtype),
    )


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _fit(model, spec, data, init, z0, steps):
    guide0 = _initial_guide(model, spec, data, init, z0)
    loss = lambda g: -elbo(g, model, spec, data)  # noqa: E731
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        g, state = carry
        value, grad = value_and_grad(g, state=state)
        updates, state = opt.update(grad, state, g, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(g, updates), state), -value

    (guide, _), elbos = jax.lax.scan(step, (guide0, opt.init(guide0)), None, length=steps)
    value, grad = jax.value_and_grad(loss)(guide)
    marg = marginals(guide)
    Lz = _tri(guide.Lz)
    gnorm = optax.tree.norm(grad) if hasattr(optax, "tree") else optax.global_norm(grad)
    return marg, guide, -value, elbos, gnorm, Lz @ Lz.T


def structured_vi(
    model,
    ys,
    us=None,
    ts=None,
    *,
    spec: Params | None = None,
    steps: int = 500,
    init: str = "smoother",
) -> StatePosterior:
    r"""Fit the Markov-Gaussian joint guide ``q(φ, x_{0:T})`` to ``p(φ, x_{0:T} | y_{0:T}, u)`` (module docstring).

    Arguments:
        model: a twin with process noise and a Gaussian ``initial`` (e.g. a :class:`~twinjax.LinearGaussianSSM`);
            its parameter values are where ``q(z)`` starts.
        ys: measurements ``(T, obs)`` (``NaN`` = missing) or a :class:`~twinjax.Trajectory`; us, ts: as the filters.
        spec: the unknown parameters (each with a prior); ``None``: parameters known, states only.
        steps: L-BFGS iterations (one compiled ``lax.scan``).
        init: ``"smoother"`` (state guide started at the extended RTS smoother of the starting parameters) or
            ``"prior"`` (every state at the initial belief, no coupling).

    Returns:
        A :class:`StatePosterior` (state marginals, ``q(z)``, the ELBO and its history, ``sample(key, n)``).

    Raises:
        ValueError: for a model without process noise or without a Gaussian initial distribution, an unknown
            ``init``, non-positive ``steps``, and as :func:`~twinjax.calibrate.bayes.numpyro_model` for the data and
            the spec.

    Example:
        ```python
        post = structured_vi(lgssm, ys, spec=tj.Params({"B": tj.real(dist.Normal(0.0, 1.0))}))
        post.means, post.covariances, post.z_mean, post.z_cov
        ```

    References:
        Chapter ``001_…``, "The Probabilistic Foundation of the Digital Twin".
    """
    if init not in ("smoother", "prior"):
        raise ValueError(f"`init` must be 'smoother' or 'prior', got {init!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    data = prepare_data(model, ys, us, ts)
    if not isinstance(model.initial, Gaussian):
        raise ValueError(f"`model.initial` must be a tj.Gaussian, got {type(model.initial).__name__}.")
    if np.linalg.eigvalsh(np.asarray(model.initial.cov)).min() <= 0:
        raise ValueError("`model.initial.cov` must be positive definite for the state posterior.")
    if data.ys.shape[0] < 2:
        raise ValueError(f"`ys` must hold at least 2 times for a state posterior, got {data.ys.shape[0]}.")
    Q = model.process_noise_cov(data.ts[0], data.ts[1], model.initial.mean, data.us[0])
    if np.linalg.eigvalsh(np.asarray(Q)).min() <= 0:
        raise ValueError(
            "The state posterior needs process noise with a positive-definite covariance (`process_noise` or an SDE "
            f"twin); the model's process-noise covariance has eigenvalues {np.linalg.eigvalsh(np.asarray(Q))}."
        )
    z0 = None
    if spec is not None:
        check_spec(model, spec)
        z0 = spec.to_unconstrained(model)
    marg, guide, value, elbos, gnorm, z_cov = _fit(model, spec, data, init, z0, steps)
    return StatePosterior(
        ts=data.ts,
        means=marg.means,
        covariances=marg.covariances,
        cross_covariances=marg.cross_covariances,
        z_mean=guide.mu,
        z_cov=z_cov,
        elbo=value,
        elbos=elbos,
        grad_norm=gnorm,
        guide=guide,
        _model=model,
        _spec=spec,
    )


__all__ = ["Marginals", "MarkovGaussianGuide", "StatePosterior", "cubature", "elbo", "marginals", "structured_vi"]
