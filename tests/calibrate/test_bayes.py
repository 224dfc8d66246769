"""Bayesian calibration (``twinjax.calibrate.bayes``) against exact posteriors.

The test twin has two independent parts with closed-form solutions:

- ``x₁(t) = a t + b t² / 2`` (``dx₁/dt = a + b t``), observed with noise 0.1: the posterior of the real parameters
  ``(a, b)`` under Normal priors is Gaussian (conjugate linear regression), strongly correlated;
- ``x₂(t) = e^{-k t}`` (``dx₂/dt = -k x₂``), observed with noise 0.05: the posterior of ``k > 0`` under a LogNormal
  prior is computed on a dense grid.

The samplers run on the exact discrete flow of this ODE (cheap to compile); the density tests run the ODE through
diffrax (fixed-step Tsit5, whose error on ``e^{-kt}`` is below 1e-7, and an adaptive solver), so the closed forms
are the twin's answers.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.infer.util import potential_energy
from scipy import stats

import twinjax as tj
from twinjax.calibrate import bayes

from ..helpers import assert_tree_allclose

matplotlib.use("Agg")

SD = np.array([0.1, 0.05])
TS = 0.1 * np.arange(20)
X0 = jnp.array([0.0, 1.0])
PRIOR_SD_AB = 2.0


class Toy(tj.AbstractDynamics):
    a: jax.Array
    b: jax.Array
    k: jax.Array

    def vector_field(self, t, x, u):
        return jnp.stack([self.a + self.b * t, -self.k * x[1]])


class ToyExact(tj.AbstractDiscreteDynamics):
    """The exact flow of :class:`Toy` over one interval of 0.1 s (cheap to compile: used where the sampler, not the
    solver, is under test)."""

    a: jax.Array
    b: jax.Array
    k: jax.Array

    def transition(self, t, x, u):
        h = 0.1
        return jnp.stack([x[0] + self.a * h + self.b * (t * h + h**2 / 2), x[1] * jnp.exp(-self.k * h)])


def _identity(t, x, u):
    return x


def toy(a=0.5, b=-1.0, k=1.5, solver="exact"):
    """The test twin: ``"exact"`` (discrete exact flow), ``"rk"`` (fixed-step Tsit5) or ``"adaptive"`` (diffrax)."""
    params = (jnp.asarray(a), jnp.asarray(b), jnp.asarray(k))
    disc = tj.Discretisation(
        solver=diffrax.Tsit5(), stepsize_controller=diffrax.ConstantStepSize(), substeps=1, max_steps=1,
        adjoint=diffrax.DirectAdjoint(),
    )  # fmt: skip
    if solver == "adaptive":
        disc = tj.Discretisation(stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-13))
    return tj.StateSpaceModel(
        ToyExact(*params) if solver == "exact" else Toy(*params),
        tj.GaussianObservation(_identity, jnp.diag(jnp.asarray(SD) ** 2)),
        tj.Gaussian(X0, 1e-4 * jnp.eye(2)),
        0.1,
        discretisation=disc,
    )


SPEC = tj.Params(
    {
        "dynamics.a": tj.real(dist.Normal(0.0, PRIOR_SD_AB)),
        "dynamics.b": tj.real(dist.Normal(0.0, PRIOR_SD_AB)),
        "dynamics.k": tj.positive(dist.LogNormal(0.0, 0.5)),
    }
)
SPEC_AB = tj.Params({n: SPEC.specs[n] for n in ("dynamics.a", "dynamics.b")})


def data(seed=0, twin=None):
    twin = toy() if twin is None else twin
    ys = np.array(tj.simulate(twin, X0, TS, key=jax.random.key(seed)).ys)
    ys[3, 0] = np.nan  # one channel missing
    ys[7, :] = np.nan  # a whole row missing
    ys[11, 1] = np.nan
    return ys


def exact_ab(ys):
    """The Gaussian posterior of (a, b) and the log evidence of channel 0 (its observed entries)."""
    obs = ~np.isnan(ys[:, 0])
    H = np.stack([TS, TS**2 / 2], axis=1)[obs]
    y = ys[obs, 0]
    prec = np.eye(2) / PRIOR_SD_AB**2 + H.T @ H / SD[0] ** 2
    cov = np.linalg.inv(prec)
    mean = cov @ (H.T @ y / SD[0] ** 2)
    marginal = PRIOR_SD_AB**2 * H @ H.T + SD[0] ** 2 * np.eye(len(y))
    log_z = stats.multivariate_normal(np.zeros(len(y)), marginal).logpdf(y)
    return mean, cov, log_z


def exact_k(ys):
    """Posterior mean and sd of k on a dense grid (the closed form e^{-kt})."""
    obs = ~np.isnan(ys[:, 1])
    grid = np.linspace(0.3, 4.0, 20001)
    pred = np.exp(-grid[:, None] * TS[None, obs])
    loglik = stats.norm(pred, SD[1]).logpdf(ys[None, obs, 1]).sum(axis=1)
    logp = loglik + stats.lognorm(s=0.5).logpdf(grid)
    w = np.exp(logp - logp.max())
    w /= np.trapezoid(w, grid)
    mean = np.trapezoid(w * grid, grid)
    sd = np.sqrt(np.trapezoid(w * (grid - mean) ** 2, grid))
    return mean, sd


# ---------------------------------------------------------------------------------------------------------------------
# the model and its density


def test_log_posterior_is_numpyros_potential():
    """``log_posterior`` equals minus numpyro's potential energy of the generated model (same unconstrained space),
    NaN channels included, and its gradient agrees with central finite differences."""
    twin, ys = toy(solver="rk"), data()
    fn = bayes.numpyro_model(twin, SPEC, ys, ts=TS, x0=X0)
    logp = bayes.log_posterior(twin, SPEC, ys, ts=TS, x0=X0)

    @jax.jit
    def both(z):
        named = {"dynamics.a": z[0], "dynamics.b": z[1], "dynamics.k": z[2]}
        eps = 1e-6
        fd = jax.vmap(lambda e: (logp(z + eps * e) - logp(z - eps * e)) / (2 * eps))(jnp.eye(3))
        return logp(z), -potential_energy(fn, (), {}, named), jax.grad(logp)(z), fd

    for z in (jnp.array([0.3, -0.8, 0.2]), jnp.array([-1.0, 1.5, -0.7])):
        value, numpyro_value, grad, fd = both(z)
        assert_tree_allclose(value, numpyro_value, rtol=1e-12)
        assert np.all(np.isfinite(grad))
        assert_tree_allclose(grad, fd, rtol=1e-6, atol=1e-6)


@jax.jit
def _value(ys, ts, z):
    return bayes.log_posterior(toy(solver="adaptive"), SPEC, ys, ts=ts, x0=X0)(z)


def test_masked_nan_equals_removed_points():
    """A row of NaN gives the density of the data with that time removed (irregular grid, adaptive solver); a single
    NaN channel gives the full density less that entry's Gaussian term. (Finite gradients with NaN data: the test
    above.)"""
    twin = toy(solver="adaptive")
    ys = np.array(tj.simulate(twin, X0, TS, key=jax.random.key(3)).ys)
    z = jnp.array([0.1, -0.4, 0.3])
    full = _value(ys, TS, z)

    holes = ys.copy()
    holes[[4, 9, 15]] = np.nan
    keep = np.setdiff1d(np.arange(len(TS)), [4, 9, 15])
    assert_tree_allclose(_value(holes, TS, z), _value(ys[keep], TS[keep], z), rtol=1e-9)

    one = ys.copy()
    one[6, 0] = np.nan
    phi = SPEC.constrain(twin, z)
    a, b = float(phi[0]), float(phi[1])
    term = stats.norm(a * TS[6] + b * TS[6] ** 2 / 2, SD[0]).logpdf(ys[6, 0])
    assert_tree_allclose(_value(one, TS, z), full - term, rtol=1e-9)


def test_filter_likelihood_is_the_dense_gaussian_evidence():
    """The ``"filter"`` likelihood on a linear-Gaussian twin is ``log N(y; mean, cov)`` of the stacked measurements,
    computed densely (x₀ uncertain, process noise), with a NaN entry marginalised out."""
    T = 8
    model = tj.LinearGaussianSSM(
        A=jnp.array([[0.9, 0.2], [-0.1, 0.8]]), B=None, C=jnp.array([[1.0, 0.0]]), D=None,
        Q=0.05 * jnp.eye(2), R=jnp.array([[0.04]]), m0=jnp.array([1.0, 0.0]), P0=0.3 * jnp.eye(2),
    )  # fmt: skip
    spec = tj.Params({"A": tj.real(dist.Normal(0.0, 1.0))})
    ys = np.array(tj.simulate(model, None, jnp.arange(T), key=jax.random.key(1)).ys)
    ys[5, 0] = np.nan
    logp = bayes.log_posterior(model, spec, ys, likelihood="filter", filter="kf")
    z = spec.to_unconstrained(model)
    # dense: x = L (x0, w_0..w_{T-2}) stacked, y = C x + v
    A, C = np.asarray(model.A), np.asarray(model.C)
    n = 2
    G = np.zeros((T * n, T * n))
    for t in range(T):
        for s in range(t + 1):
            G[t * n : (t + 1) * n, s * n : (s + 1) * n] = np.linalg.matrix_power(A, t - s)
    noise_cov = np.kron(np.eye(T), 0.05 * np.eye(n))
    noise_cov[:n, :n] = 0.3 * np.eye(n)
    x_mean = G[:, :n] @ np.array([1.0, 0.0])
    x_cov = G @ noise_cov @ G.T
    Cb = np.kron(np.eye(T), C)
    keep = ~np.isnan(ys[:, 0])
    y_mean = (Cb @ x_mean)[keep]
    y_cov = (Cb @ x_cov @ Cb.T + 0.04 * np.eye(T))[np.ix_(keep, keep)]
    expected = stats.multivariate_normal(y_mean, y_cov).logpdf(ys[keep, 0])
    prior = stats.norm(0.0, 1.0).logpdf(A).sum()
    assert_tree_allclose(jax.jit(logp)(z), expected + prior, rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# NUTS


@pytest.fixture(scope="module")
def nuts_run():
    ys = data()
    post = bayes.nuts(toy(), SPEC, ys, ts=TS, x0=X0, key=jax.random.key(7), chains=4, warmup=300, samples=600)
    return ys, post


def test_nuts_matches_the_exact_posterior(nuts_run):
    """NUTS means and sds of (a, b) (Gaussian, exact) and k (grid) agree within 4 Monte-Carlo standard errors, with
    the standard errors from the measured ESS (mean: sd/√ESS; sd: sd/√(2 ESS))."""
    ys, post = nuts_run
    assert post.samples.shape == (4, 600, 3)
    mean_ab, cov_ab, _ = exact_ab(ys)
    mean_k, sd_k = exact_k(ys)
    exact_mean = np.array([*mean_ab, mean_k])
    exact_sd = np.array([*np.sqrt(np.diag(cov_ab)), sd_k])
    ess = np.asarray(post.ess)
    assert np.all(ess > 200), ess
    se_mean = exact_sd / np.sqrt(ess)
    se_sd = exact_sd / np.sqrt(2 * ess)
    assert np.all(np.abs(np.asarray(post.mean) - exact_mean) < 4 * se_mean), (post.mean, exact_mean, se_mean)
    assert np.all(np.abs(np.asarray(post.sd) - exact_sd) < 4 * se_sd), (post.sd, exact_sd, se_sd)
    # the (a, b) correlation too: Fisher's z has standard error 1/√(ESS − 3)
    rho = np.corrcoef(np.asarray(post.draws[:, :2]).T)[0, 1]
    rho_exact = cov_ab[0, 1] / np.sqrt(cov_ab[0, 0] * cov_ab[1, 1])
    assert abs(np.arctanh(rho) - np.arctanh(rho_exact)) < 4 / np.sqrt(ess[:2].min() - 3)
    assert np.all(np.asarray(post.rhat) < 1.05)
    assert int(np.sum(post.divergences)) == 0
    assert np.all((np.asarray(post.acceptance) > 0.6) & (np.asarray(post.acceptance) < 0.99))
    table = post.summary()
    assert "dynamics.k" in table and "r_hat" in table and "divergences: 0" in table
    lo, hi = np.asarray(post.interval(0.9))
    assert np.all(lo < exact_mean) and np.all(exact_mean < hi)


def test_nuts_chains_in_one_compiled_call(nuts_run):
    """A second call with new data and key (same shapes) reuses the compilation: the chains are one program."""
    traces = eqx.debug.get_num_traces(bayes._nuts_run)  # ty: ignore
    ys2 = data(seed=5)
    post = bayes.nuts(toy(), SPEC, ys2, ts=TS, x0=X0, key=jax.random.key(8), chains=4, warmup=300, samples=600)
    assert eqx.debug.get_num_traces(bayes._nuts_run) == traces  # ty: ignore
    assert not np.allclose(post.samples, nuts_run[1].samples)


def test_rhat_and_ess_match_numpyro():
    """``rhat`` and ``ess`` (JAX) equal numpyro's ``split_gelman_rubin`` / ``effective_sample_size`` on AR(1) chains
    with different means (an even and an odd number of draws)."""
    rng = np.random.default_rng(0)
    for draws in (500, 301):
        x = np.zeros((4, draws, 3))
        e = rng.normal(size=x.shape)
        for t in range(1, draws):
            x[:, t] = np.array([0.2, 0.7, 0.95]) * x[:, t - 1] + e[:, t]
        x += np.array([0.0, 0.1, 0.3])[None, None, :] * np.arange(4)[:, None, None]
        assert_tree_allclose(bayes.rhat(x), split_gelman_rubin(x), rtol=1e-10)
        assert_tree_allclose(bayes.ess(x), effective_sample_size(x), rtol=1e-8)
    one = rng.normal(size=(1, 100, 2))
    assert_tree_allclose(bayes.ess(one), effective_sample_size(one), rtol=1e-8)
    assert_tree_allclose(bayes.rhat(one), split_gelman_rubin(one), rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# SVI


@pytest.fixture(scope="module")
def svi_data():
    ys = data()
    ys[:, 1] = np.nan  # only channel 0: the posterior of (a, b) is exactly Gaussian
    return ys


def _svi(ys, guide, steps, **kw):
    sched = optax.exponential_decay(5e-2, steps, 0.01)
    return bayes.svi(
        toy(), SPEC_AB, ys, ts=TS, x0=X0, guide=guide, steps=steps, optimizer=optax.adam(sched), num_particles=16,
        key=jax.random.key(2), elbo_particles=4000, **kw,
    )  # fmt: skip


def _gauss_kl(m1, S1, m2, S2):
    """KL(N(m1, S1) || N(m2, S2))."""
    S2i = np.linalg.inv(S2)
    d = m2 - m1
    return 0.5 * (np.trace(S2i @ S1) + d @ S2i @ d - len(m1) + np.linalg.slogdet(S2)[1] - np.linalg.slogdet(S1)[1])


def test_svi_mvn_recovers_the_gaussian_posterior(svi_data):
    """AutoMultivariateNormal on a Gaussian posterior: KL(q ‖ p) < 0.01 nats from the guide's own parameters, and its
    ELBO equals the exact log evidence within 4 Monte-Carlo standard errors (ELBO = log p(y) − KL)."""
    mean, cov, log_z = exact_ab(svi_data)
    post = _svi(svi_data, "mvn", 6000)
    loc = np.asarray(post.params["auto_loc"])
    tril = np.asarray(post.params["auto_scale_tril"])
    kl = _gauss_kl(loc, tril @ tril.T, mean, cov)
    assert kl < 0.01, kl
    assert abs(float(post.elbo) - (log_z - kl)) < 4 * float(post.elbo_se) + 1e-3
    assert np.asarray(post.losses).shape == (6000,)
    draws = post.sample(jax.random.key(3), 500)
    assert draws.shape == (500, 2)
    se = np.sqrt(np.diag(cov) / 4000)
    assert np.all(np.abs(np.asarray(post.mean) - mean) < 4 * se + np.sqrt(np.diag(cov)) * 0.02)


@pytest.mark.slow
def test_flow_guides_beat_mean_field_on_a_correlated_posterior(svi_data):
    """On the correlated Gaussian posterior of (a, b): the mean-field optimum has the known gap
    KL = ½ (Σ log Λᵢᵢ − log det Λ) below log p(y) (Λ the posterior precision); AutoNormal's ELBO sits there, and the
    IAF and BNAF guides' ELBOs are above it by more than half that gap."""
    mean, cov, log_z = exact_ab(svi_data)
    prec = np.linalg.inv(cov)
    gap = 0.5 * (np.sum(np.log(np.diag(prec))) - np.linalg.slogdet(prec)[1])
    assert gap > 0.5  # the posterior is strongly correlated
    normal = _svi(svi_data, "normal", 3000)
    se = float(normal.elbo_se)
    assert abs(float(normal.elbo) - (log_z - gap)) < 4 * se + 0.02
    for guide, kw in (("iaf", {"num_flows": 2}), ("bnaf", {})):
        flow = _svi(svi_data, guide, 3000, guide_kwargs=kw)
        assert float(flow.elbo) > float(normal.elbo) + gap / 2, (guide, flow.elbo, normal.elbo, gap)
        assert float(flow.elbo) < log_z + 4 * float(flow.elbo_se)


# ---------------------------------------------------------------------------------------------------------------------
# posterior predictive


def test_posterior_predictive_bands_are_the_sensor_quantiles():
    """With every draw at the truth the predictive is the sensor noise: the 90 % band is ``h ± 1.645 σ`` within 4
    standard errors of a sample quantile (√(p(1−p)/n) / density); without noise it collapses onto ``h``."""
    twin = toy()
    n = 4000
    draws = jnp.tile(SPEC.values(twin), (n, 1))
    bands = bayes.posterior_predictive(twin, SPEC, draws, TS, key=jax.random.key(4), x0=X0, max_draws=None)
    h = np.stack([0.5 * TS - 0.5 * TS**2, np.exp(-1.5 * TS)], axis=1)
    z = stats.norm.ppf(0.95)
    se = np.sqrt(0.05 * 0.95 / n) / stats.norm.pdf(z) * SD
    lo, hi = (np.asarray(b) for b in bands.band(0.9))
    assert np.all(np.abs(hi - (h + z * SD)) < 4 * se)
    assert np.all(np.abs(lo - (h - z * SD)) < 4 * se)
    se_med = np.sqrt(0.25 / n) / stats.norm.pdf(0) * SD
    assert np.all(np.abs(np.asarray(bands.median) - h) < 4 * se_med)
    assert np.all(np.asarray(bands.status) == 0) and bands.samples.shape == (n, 20, 2)
    quiet = bayes.posterior_predictive(twin, SPEC, draws[:10], TS, key=jax.random.key(4), x0=X0, noise=False)
    assert_tree_allclose(quiet.band(0.5)[0], jnp.asarray(h), rtol=1e-6, atol=1e-7)

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    bayes.plot_predictive_bands(ax, bands, data(), channel=1)
    assert len(ax.collections) == 2 and len(ax.lines) == 2
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_raises():
    twin, ys = toy(), data()
    no_prior = tj.Params({"dynamics.a": tj.real()})
    with pytest.raises(ValueError, match="no prior"):
        bayes.numpyro_model(twin, no_prior, ys, ts=TS)
    with pytest.raises(ValueError, match="support"):
        bayes.log_posterior(twin, tj.Params({"dynamics.k": tj.positive(dist.Normal(1.0, 1.0))}), ys, ts=TS)
    with pytest.raises(ValueError, match="has no 'c'"):
        bayes.numpyro_model(twin, tj.Params({"dynamics.c": tj.real(dist.Normal())}), ys, ts=TS)
    with pytest.raises(ValueError, match="`ys` must have shape"):
        bayes.numpyro_model(twin, SPEC, ys[:, :1], ts=TS)
    with pytest.raises(ValueError, match="`ts` must have one time per observation"):
        bayes.log_posterior(twin, SPEC, ys, ts=TS[:-1])
    with pytest.raises(ValueError, match="`x0` must have shape"):
        bayes.log_posterior(twin, SPEC, ys, ts=TS, x0=jnp.zeros(3))
    with pytest.raises(ValueError, match="`guide` must be one of"):
        bayes.svi(twin, SPEC, ys, ts=TS, guide="flow", key=jax.random.key(0))
    with pytest.raises(ValueError, match="`likelihood` must be one of"):
        bayes.numpyro_model(twin, SPEC, ys, ts=TS, likelihood="pf")
    with pytest.raises(ValueError, match="`filter` must be one of"):
        bayes.log_posterior(twin, SPEC, ys, ts=TS, likelihood="filter", filter="enkf")
    with pytest.raises(ValueError, match="`samples` must be an integer >= 4"):
        bayes.nuts(twin, SPEC, ys, ts=TS, key=jax.random.key(0), samples=2)
    with pytest.raises(ValueError, match="`init` must have shape"):
        bayes.nuts(twin, SPEC, ys, ts=TS, key=jax.random.key(0), init=jnp.ones(2))
    with pytest.raises(ValueError, match="`spec` must be a tj.Params"):
        bayes.check_spec(twin, {"dynamics.a": 1})
    with pytest.raises(ValueError, match="`samples` needs at least 4 draws"):
        bayes.rhat(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="`draws` must have shape"):
        bayes.posterior_predictive(twin, SPEC, jnp.ones((5, 2)), TS, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`levels` must be probabilities"):
        bayes.posterior_predictive(twin, SPEC, jnp.ones((5, 3)), TS, key=jax.random.key(0), levels=(1.2,))
