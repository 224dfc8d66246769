"""Score-based diffusion: SDE marginals, samplers and likelihood against a Gaussian with its exact score, the posterior
score against the analytic one, imputation, DSM training, errors, and the two-moons acceptance run (slow)."""

import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

import twinjax.generative as gen
from twinjax.generative import diffusion as dif
from twinjax.generative.datasets import two_moons, two_moons_entropy

MU = jnp.array([0.5, -0.3])
COV = jnp.array([[0.5, 0.2], [0.2, 0.3]])


class ExactGaussianNet(eqx.Module):
    """``σ_t ∇ log p_t`` of data ``N(μ, Σ)`` diffused by ``sde``: ``p_t = N(α_t μ, α_t² Σ + σ_t² I)``."""

    mu: jax.Array
    cov: jax.Array
    sde: dif.AbstractSDE

    def __call__(self, x, t, cond=None):
        a, s = self.sde.marginal_coeffs(t)
        return -s * jnp.linalg.solve(a**2 * self.cov + s**2 * jnp.eye(x.shape[0]), x - a * self.mu)


def _exact_model(sde=None, eps=1e-5, mu=MU, cov=COV):
    sde = dif.VPSDE() if sde is None else sde
    return dif.ScoreDiffusion(2, jax.random.key(0), sde=sde, eps=eps, net=ExactGaussianNet(mu, cov, sde))


def _check_moments(x, mean, var, k=4.0):
    """Sample mean and variance of each column within ``k`` standard errors of the truth."""
    n = x.shape[0]
    se_mean = np.sqrt(var / n)
    se_var = var * np.sqrt(2.0 / (n - 1))
    np.testing.assert_array_less(np.abs(np.mean(x, 0) - mean), k * se_mean)
    np.testing.assert_array_less(np.abs(np.var(x, 0, ddof=1) - var), k * se_var)


@pytest.mark.parametrize("sde", [dif.VPSDE(), dif.VESDE(sigma_min=0.01, sigma_max=3.0)], ids=["vp", "ve"])
def test_marginals_match_euler_maruyama_simulation_and_closed_form(sde):
    n, steps, x0 = 4000, 400, 1.5
    ts = jnp.array([0.3, sde.T])
    bm = diffrax.UnsafeBrownianPath(shape=(n,), key=jax.random.key(1))
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, a: sde.drift(y, t)),
        diffrax.ControlTerm(lambda t, y, a: lx.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion(t))), bm),
    )
    sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, sde.T, sde.T / steps, jnp.full(n, x0),
                              saveat=diffrax.SaveAt(ts=ts), max_steps=steps + 1,
                              adjoint=diffrax.ForwardMode())  # fmt: skip
    for i, t in enumerate(ts):
        mean, std = sde.marginal(x0, t)
        _check_moments(np.asarray(sol.ys[i])[:, None], float(mean), float(std) ** 2)
    if isinstance(sde, dif.VPSDE):  # the closed form against a quadrature of β
        s = np.linspace(0, 0.3, 10_001)
        big_b = np.trapezoid(sde.beta_min + s * (sde.beta_max - sde.beta_min), s)
        a, sig = sde.marginal_coeffs(0.3)
        np.testing.assert_allclose([a, sig**2], [np.exp(-0.5 * big_b), 1 - np.exp(-big_b)], rtol=1e-8)
    # the prior is the marginal at T of a zero-mean datum
    np.testing.assert_allclose(sde.prior_std(), sde.marginal_coeffs(sde.T)[1])
    xs = jnp.array([[0.3, -1.0]])
    ref = jax.scipy.stats.norm.logpdf(xs, 0.0, sde.prior_std()).sum(-1)
    np.testing.assert_allclose(sde.prior_log_prob(xs), ref, rtol=1e-12)


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_exact_score_samplers_reproduce_the_gaussian(method):
    model = _exact_model(eps=1e-3)
    x = model.sample(jax.random.key(2), 3000, method=method, steps=300)
    assert x.shape == (3000, 2)
    _check_moments(np.asarray(x), np.asarray(MU), np.diag(np.asarray(COV)))
    before = dif.TRACES["reverse"]
    model.sample(jax.random.key(3), 3000, method=method, steps=300)
    assert dif.TRACES["reverse"] == before  # a new key does not retrace


def _pushforward_log_prob(x, sde, eps, mu, cov):
    """The density the PF-ODE model defines: the exact linear flow map of Gaussian data pulls the prior back to x."""
    lam, u = np.linalg.eigh(np.asarray(cov))
    (a0, s0), (a1, s1) = sde.marginal_coeffs(eps), sde.marginal_coeffs(sde.T)
    v0, v1 = a0**2 * lam + s0**2, a1**2 * lam + s1**2
    zt = a1 * mu + ((x - a0 * mu) @ u * np.sqrt(v1 / v0)) @ u.T
    return sde.prior_log_prob(zt) + 0.5 * np.sum(np.log(v1 / v0))


def test_log_prob_is_exact_for_a_gaussian_and_hutchinson_is_unbiased():
    sde, eps = dif.VPSDE(), 1e-5
    model = _exact_model(sde, eps)
    x = jnp.array([[0.1, 0.2], [1.0, -1.0], [0.5, -0.3]])
    lp = model.log_prob(x, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(lp, _pushforward_log_prob(x, sde, eps, MU, COV), atol=1e-4)
    before = dif.TRACES["log_prob"]
    model.log_prob(x + 1.0, rtol=1e-7, atol=1e-7)
    assert dif.TRACES["log_prob"] == before  # new data of the same shape does not retrace
    # against the data density itself: the only gap is the prior N(0, σ_T²) vs the true p_T (α_T μ ≈ 0.003 here)
    np.testing.assert_allclose(lp, jax.scipy.stats.multivariate_normal.logpdf(x, MU, COV), atol=1e-2)
    centred = _exact_model(sde, eps, mu=jnp.zeros(2))  # zero mean: the prior is exact up to e^{-B(T)} ≈ 4e-5
    lp0 = centred.log_prob(x, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(lp0, jax.scipy.stats.multivariate_normal.logpdf(x, jnp.zeros(2), COV), atol=1e-3)
    # Hutchinson: one probe per row, 400 rows of the same point -> mean within 4 SE of the exact trace
    n = 400
    lh = model.log_prob(jnp.repeat(x[1:2], n, 0), hutchinson=True, key=jax.random.key(4))
    assert abs(float(jnp.mean(lh) - lp[1])) < 4 * float(jnp.std(lh)) / np.sqrt(n)
    assert float(jnp.std(lh)) > 0  # the estimate really is random


@pytest.mark.parametrize("sde", [dif.VPSDE(), dif.VESDE(sigma_min=0.01, sigma_max=10.0)], ids=["vp", "ve"])
def test_standardisation_changes_the_density_by_the_jacobian(sde):
    loc, scale = jnp.array([1.0, -2.0]), jnp.array([2.0, 0.5])
    net = ExactGaussianNet(MU, COV, sde)  # the latent density N(μ, Σ)
    model = dif.ScoreDiffusion(2, jax.random.key(0), sde=sde, net=net, loc=loc, scale=scale)
    x = loc + scale * jnp.array([[0.1, 0.2], [1.0, -1.0]])
    ref = _pushforward_log_prob((x - loc) / scale, sde, model.eps, MU, COV) - jnp.sum(jnp.log(scale))
    np.testing.assert_allclose(model.log_prob(x, rtol=1e-7, atol=1e-7), ref, atol=1e-4)


def _gaussian_posterior(mu, cov, H, R, y):
    gain = cov @ H.T @ np.linalg.inv(H @ cov @ H.T + R)
    return mu + gain @ (y - H @ mu), cov - gain @ H @ cov


def test_posterior_score_is_the_exact_diffused_posterior_score_for_gaussian_data():
    loc, scale = jnp.array([0.2, -0.1]), jnp.array([1.5, 0.8])
    sde = dif.VPSDE()
    model = dif.ScoreDiffusion(2, jax.random.key(0), sde=sde, net=ExactGaussianNet(MU, COV, sde), loc=loc,
                               scale=scale)  # fmt: skip
    H, R, y = jnp.array([[1.0, 0.5]]), jnp.array([[0.04]]), jnp.array([0.7])
    # in data space the prior is N(loc + scale μ, diag(scale) Σ diag(scale))
    mu_x, cov_x = loc + scale * MU, COV * jnp.outer(scale, scale)
    m_post, c_post = _gaussian_posterior(mu_x, cov_x, H, R, y)
    score = dif.posterior_score(model, y, H, R)
    x = jnp.array([0.3, 0.4])
    for t in (1e-3, 0.1, 0.5, 0.9):
        a, s = sde.marginal_coeffs(t)
        # data space: x_t = loc + scale z_t, z_t | y ~ N(α m_z, α² C_z + σ² I) → x_t | y in closed form
        m_z, c_z = (m_post - loc) / scale, c_post / jnp.outer(scale, scale)
        cz_t = a**2 * c_z + s**2 * jnp.eye(2)
        z = (x - loc) / scale
        exact = -jnp.linalg.solve(cz_t, z - a * m_z) / scale
        np.testing.assert_allclose(score.data_score(x, t), exact, rtol=1e-8, atol=1e-10)
    dps = dif.posterior_score(model, y, H, R, guidance="dps")
    assert np.all(np.isfinite(dps(jnp.zeros(2), 0.5)))


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_imputation_recovers_the_exact_conditional(method):
    model = _exact_model(eps=1e-3)
    obs_std = 0.1
    mask = jnp.array([True, False])
    x = dif.impute(model, jax.random.key(5), 2000, jnp.array([1.0, jnp.nan]), mask, obs_std=obs_std,
                   method=method, steps=200)  # fmt: skip
    H, R = np.array([[1.0, 0.0]]), np.array([[obs_std**2]])
    m, c = _gaussian_posterior(np.asarray(MU), np.asarray(COV), H, R, np.array([1.0]))
    _check_moments(np.asarray(x), m, np.diag(c))


def test_dsm_loss_and_gradients_are_finite_with_and_without_conditioning():
    x = two_moons(jax.random.key(0), 64)
    for cond_dim, cond in ((0, None), (3, jnp.ones((64, 3)))):
        model = dif.ScoreDiffusion(2, jax.random.key(1), cond_dim=cond_dim, width=16, depth=2)
        loss_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(lambda m, c: m.loss(jax.random.key(2), x, c),
                                                                 has_aux=True))  # fmt: skip
        (loss, aux), grads = loss_and_grad(model, cond)
        assert np.isfinite(loss) and set(aux) == {"dsm_low_t", "dsm_high_t"}
        leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
        assert all(np.all(np.isfinite(g)) for g in leaves)
        # loc/scale are not trained
        np.testing.assert_array_equal(grads.loc, 0.0)
        np.testing.assert_array_equal(grads.scale, 0.0)
    # a conditional model samples with a broadcast condition
    assert model.sample(jax.random.key(3), 5, jnp.ones(3), method="sde", steps=5).shape == (5, 2)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_loss_of_the_exact_score_matches_its_quadrature(weighting):
    """With the exact score, E‖σ s + z‖² = d − σ² tr P_t⁻¹ (P_t = α²Σ + σ²I), so the loss is a 1-D integral in t:
    checks the time sampling (uniform, or importance sampled uniform in log σ²/α²) and its normalisation."""
    sde, eps = dif.VPSDE(), 1e-3
    model = _exact_model(sde, eps)
    lam = np.linalg.eigvalsh(np.asarray(COV))
    t = np.geomspace(eps, 1.0, 200_001)
    a, s = (np.asarray(v) for v in jax.vmap(sde.marginal_coeffs)(jnp.asarray(t)))
    inner = 2 - s**2 * np.sum(1.0 / (a[:, None] ** 2 * lam + s[:, None] ** 2), 1)
    if weighting == "sigma2":
        ref = np.trapezoid(inner, t) / (1.0 - eps)
    else:
        g2 = np.asarray(jax.vmap(sde.diffusion)(jnp.asarray(t))) ** 2
        ref = 0.5 * np.trapezoid(g2 / s**2 * inner, t)
    chol = jnp.linalg.cholesky(COV)
    losses = []
    for i in range(20):
        x = MU + jax.random.normal(jax.random.key(100 + i), (1000, 2)) @ chol.T
        losses.append(float(model.loss(jax.random.key(i), x, weighting=weighting)[0]))
    assert abs(np.mean(losses) - ref) < 4 * np.std(losses, ddof=1) / np.sqrt(20)
    # a wrong score costs more
    wrong = _exact_model(sde, eps, mu=MU + 1.0).loss(jax.random.key(19), x, weighting=weighting)[0]
    assert float(wrong) > losses[-1] + 4 * np.std(losses)


def test_training_lowers_the_loss():
    x = two_moons(jax.random.key(0), 512)
    model = dif.ScoreDiffusion(2, jax.random.key(1), width=32, depth=2, loc=x.mean(0), scale=x.std(0))
    res = gen.train(model, x, optimizer=optax.adam(3e-3), steps=200, batch_size=64, key=jax.random.key(2),
                    log_every=100, ema_decay=0.9, progress=False)  # fmt: skip
    loss = res.history["loss"]
    assert loss[-50:].mean() < 0.8 * loss[:20].mean()
    assert np.all(np.isfinite(res.model.log_prob(x[:4])))


def test_bad_arguments_are_named():
    model = _exact_model()
    with pytest.raises(ValueError, match="method"):
        model.sample(jax.random.key(0), 4, method="euler")
    with pytest.raises(ValueError, match="`n`"):
        model.sample(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="steps"):
        model.sample(jax.random.key(0), 4, method="sde", steps=0)
    with pytest.raises(ValueError, match=r"`x` must have shape \(n, 2\)"):
        model.log_prob(jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="key"):
        model.log_prob(jnp.zeros((3, 2)), hutchinson=True)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(jax.random.key(0), 4, jnp.ones(2))
    with pytest.raises(ValueError, match="mask"):
        dif.impute(model, jax.random.key(0), 4, jnp.zeros(2), jnp.array([1, 0]))
    with pytest.raises(ValueError, match="`H`"):
        dif.posterior_score(model, jnp.zeros(1), jnp.zeros((1, 3)), jnp.eye(1))
    with pytest.raises(ValueError, match="guidance"):
        dif.posterior_score(model, jnp.zeros(1), jnp.zeros((1, 2)), jnp.eye(1), guidance="replace")
    with pytest.raises(ValueError, match="beta_min"):
        dif.VPSDE(beta_min=30.0)
    with pytest.raises(ValueError, match="sigma_min"):
        dif.VESDE(sigma_min=0.0)
    with pytest.raises(ValueError, match="eps"):
        dif.ScoreDiffusion(2, jax.random.key(0), eps=1.0)
    with pytest.raises(ValueError, match="weighting"):
        model.loss(jax.random.key(0), jnp.zeros((3, 2)), weighting="uniform")
    with pytest.raises(ValueError, match="cond"):
        dif.ScoreDiffusion(2, jax.random.key(0), cond_dim=2, width=4, depth=1).loss(
            jax.random.key(0), jnp.zeros((3, 2))
        )


@pytest.mark.slow
def test_two_moons_nll_through_the_probability_flow_ode_is_near_the_entropy():
    steps = 10_000
    x = two_moons(jax.random.key(0), 20_000)
    model = dif.ScoreDiffusion(2, jax.random.key(1), loc=x.mean(0), scale=x.std(0))
    t0 = time.perf_counter()
    res = gen.train(model, x, optimizer=optax.adam(optax.cosine_decay_schedule(2e-3, steps, 0.05)), steps=steps,
                    batch_size=512, key=jax.random.key(2), ema_decay=0.999, log_every=1000, progress=False,
                    weighting="likelihood")  # fmt: skip
    train_s = time.perf_counter() - t0
    x_test = two_moons(jax.random.key(5), 2000)
    lp = res.model.log_prob(x_test)
    nll, se = -float(jnp.mean(lp)), float(jnp.std(lp)) / np.sqrt(2000)
    h, h_se = (float(v) for v in two_moons_entropy(jax.random.key(7), 0.1, n=100_000))
    rates = {}
    for method in ("ode", "sde"):
        res.model.sample(jax.random.key(8), 2000, method=method).block_until_ready()  # compile
        t0 = time.perf_counter()
        s = res.model.sample(jax.random.key(9), 2000, method=method).block_until_ready()
        rates[method] = 2000 / (time.perf_counter() - t0)
        assert float(gen.mmd(s, x_test)) < 0.01
    print(f"two moons: NLL {nll:.3f} ± {se:.3f}, H {h:.3f} ± {h_se:.3f}, {steps} steps in {train_s:.0f} s; "
          f"samples/s ODE {rates['ode']:.0f}, SDE {rates['sde']:.0f}")  # fmt: skip
    assert nll - h < 0.15
