"""Experiment design (twinjax.calibrate.design): the Bayesian linear-regression twin against the dense conjugate
posterior, greedy A-/D-optimal choices against brute force, A-optimal against random over seeds (Monte-Carlo bounds),
and the linearised Fisher information of a pendulum's torque input against finite differences and against the spread
of least-squares estimates over repeated noisy datasets."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import twinjax as tj
from physics import pendulum_twin
from twinjax.calibrate import design
from twinjax.calibrate.design import (
    BayesianLinearRegression,
    a_optimal_choice,
    d_optimal_choice,
    design_criterion,
    design_input,
    fisher_information_of_input,
    output_sensitivity,
    piecewise_constant_input,
    sequential_design,
)

from ..helpers import assert_tree_allclose

# ---------------------------------------------------------------------------------------------------------------------
# the linear-regression twin
# ---------------------------------------------------------------------------------------------------------------------

D = 4
SIGMA = 0.3
STEPS = 15  # one length everywhere: the compiled scans are shared between tests
XS = np.linspace(-1.0, 1.0, 21)
POOL = np.stack([XS**k for k in range(D)], axis=1)  # cubic regression on a grid of design points


def _prior(d=D, noise_var=SIGMA**2, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return BayesianLinearRegression(rng.normal(size=d), a @ a.T / d + 0.5 * np.eye(d), noise_var)


def _dense_posterior(prior, features, ys):
    """The batch conjugate posterior, in NumPy: Σ = (Σ₀⁻¹ + ΦᵀΦ/σ²)⁻¹, m = Σ (Σ₀⁻¹ m₀ + Φᵀy/σ²)."""
    p0 = np.linalg.inv(np.asarray(prior.cov))
    s2 = float(prior.noise_var)
    f = np.asarray(features)
    cov = np.linalg.inv(p0 + f.T @ f / s2)
    mean = cov @ (p0 @ np.asarray(prior.mean) + f.T @ np.asarray(ys) / s2)
    return mean, cov


def test_rank_one_updates_equal_the_dense_conjugate_posterior():
    prior = _prior()
    rng = np.random.default_rng(1)
    features, ys = rng.normal(size=(12, D)), rng.normal(size=12)
    update = jax.jit(lambda belief, f, y: belief.update(f, y))
    belief = prior
    for f, y in zip(features, ys):
        belief = update(belief, f, y)
    mean, cov = _dense_posterior(prior, features, ys)
    assert_tree_allclose(belief.mean, mean, rtol=1e-10, atol=1e-12)
    assert_tree_allclose(belief.cov, cov, rtol=1e-10, atol=1e-12)
    assert float(belief.trace) == pytest.approx(np.trace(cov), rel=1e-12)
    assert float(belief.logdet) == pytest.approx(np.linalg.slogdet(cov)[1], rel=1e-10)
    m, v = belief.predictive(features[0])
    assert float(m) == pytest.approx(features[0] @ mean, rel=1e-10)
    assert float(v) == pytest.approx(features[0] @ cov @ features[0] + SIGMA**2, rel=1e-10)


def test_joseph_update_stays_symmetric_psd_with_near_noiseless_data():
    """Hundreds of nearly noiseless measurements of the same few designs: the covariance collapses by ~12 decades and
    must stay symmetric positive semi-definite and equal to the dense answer."""
    prior = BayesianLinearRegression(np.zeros(3), np.eye(3), 1e-10)
    rng = np.random.default_rng(2)
    features = rng.normal(size=(300, 3))

    def body(belief, f):
        return belief.update(f, 0.0), None

    belief, _ = jax.lax.scan(body, prior, jnp.asarray(features))
    cov = np.asarray(belief.cov)
    np.testing.assert_array_equal(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0
    _, dense = _dense_posterior(prior, features, np.zeros(300))
    # to 1e-6 of the matrix's scale: an entry ~20x smaller than the diagonal carries the diagonal's absolute rounding
    # (XLA -O0 vs -O2 code moved one off-diagonal entry by 2e-6 relative, 1e-7 of the diagonal)
    np.testing.assert_allclose(cov, dense, rtol=1e-6, atol=1e-6 * np.abs(dense).max())


def test_closed_form_scores_and_choices_equal_brute_force():
    """For several posteriors, recompute the posterior for every candidate (dense inverse) and take the argmin of its
    trace / log-determinant: the closed-form scores and the greedy choices agree."""
    for seed in range(5):
        belief = _prior(seed=seed)
        rng = np.random.default_rng(10 + seed)
        pool = rng.normal(size=(30, D)) * rng.uniform(0.2, 2.0, size=(30, 1))
        p0 = np.linalg.inv(np.asarray(belief.cov))
        brute = [np.linalg.inv(p0 + np.outer(f, f) / SIGMA**2) for f in pool]
        traces = np.array([np.trace(c) for c in brute])
        logdets = np.array([np.linalg.slogdet(c)[1] for c in brute])
        np.testing.assert_allclose(belief.next_trace(pool), traces, rtol=1e-10)
        np.testing.assert_allclose(belief.next_logdet(pool), logdets, rtol=1e-10, atol=1e-10)
        assert int(a_optimal_choice(belief, pool)) == int(np.argmin(traces))
        assert int(d_optimal_choice(belief, pool)) == int(np.argmin(logdets))


def test_sequential_design_posterior_equals_the_dense_computation_from_its_choices(key):
    prior = _prior()
    theta = jnp.array([0.5, -1.0, 2.0, 0.3])
    for strategy in ("a", "d", "random"):
        result = sequential_design(prior, POOL, theta, STEPS, key, strategy=strategy)
        np.testing.assert_array_equal(result.features, POOL[np.asarray(result.indices)])
        mean, cov = _dense_posterior(prior, result.features, result.ys)
        assert_tree_allclose(result.posterior.mean, mean, rtol=1e-9, atol=1e-12)
        assert_tree_allclose(result.posterior.cov, cov, rtol=1e-9, atol=1e-14)
        assert result.traces.shape == (STEPS + 1,) and float(result.traces[0]) == pytest.approx(float(prior.trace))
        assert float(result.traces[-1]) == pytest.approx(np.trace(cov), rel=1e-10)
        assert bool(result.finite)
    # the measurements come from the true twin: residuals y − φᵀθ* are N(0, σ²) (one-sample bound on their mean)
    resid = np.asarray(result.ys - result.features @ theta)
    assert abs(resid.mean()) < 4 * SIGMA / np.sqrt(resid.size)


def test_a_optimal_next_trace_is_at_most_d_optimal_from_the_same_posterior(key):
    """Along A-, D- and random trajectories, the A-choice from each posterior gives a next trace ≤ the D-choice's
    (by construction; both recomputed densely in NumPy), and the two choices differ on this problem."""
    prior = _prior()
    strict = 0
    for strategy in ("a", "d", "random"):
        result = sequential_design(prior, POOL, jnp.zeros(D), STEPS, key, strategy=strategy)
        for t in range(STEPS):
            _, cov = _dense_posterior(prior, result.features[:t], result.ys[:t])
            p = np.linalg.inv(cov)
            nxt = np.array([np.trace(np.linalg.inv(p + np.outer(f, f) / SIGMA**2)) for f in POOL])
            gain = np.einsum("ci,ij,cj->c", POOL, cov, POOL)  # D: the largest predictive variance
            a, d = int(np.argmin(nxt)), int(np.argmax(gain))
            if strategy == "a":
                assert int(result.indices[t]) == a
            if strategy == "d":
                assert int(result.indices[t]) == d
            assert nxt[a] <= nxt[d]
            strict += nxt[a] < nxt[d] * (1 - 1e-9)
    assert strict > 0


def _many_seeds(prior, candidates, steps, n_seeds, key, strategy):
    k_theta, k_run = jax.random.split(key)
    thetas = prior.mean + jax.random.normal(k_theta, (n_seeds, prior.dim)) @ jnp.linalg.cholesky(prior.cov).T
    keys = jax.random.split(k_run, n_seeds)
    run = jax.vmap(lambda th, k: sequential_design(prior, candidates, th, steps, k, strategy=strategy))
    return thetas, run(thetas, keys)


class _UniformPolynomialCandidates(eqx.Module):
    """Generator: ``n`` design points ``x ~ U(-1, 1)`` mapped to cubic features (a module, so no recompiles)."""

    n: int = eqx.field(static=True)

    def __call__(self, key):
        x = jax.random.uniform(key, (self.n,), minval=-1.0, maxval=1.0)
        return jnp.stack([x**k for k in range(D)], axis=1)


@pytest.mark.slow  # the fast suite checks the same two claims through the experiment (tests/experiments)
def test_a_optimal_beats_random_in_expectation_and_posterior_is_calibrated(key):
    """Over 200 seeds with candidates drawn by a generator: the final tr Σ of A-optimal is below random's by more than
    4 standard errors of the paired difference, and for every strategy E‖m_T − θ*‖² = E tr Σ_T (θ* drawn from the
    prior) within 4 standard errors."""
    prior = BayesianLinearRegression(jnp.zeros(D), jnp.eye(D), SIGMA**2)
    generator = _UniformPolynomialCandidates(32)
    final = {}
    for strategy in ("a", "d", "random"):
        thetas, res = _many_seeds(prior, generator, 25, 200, key, strategy)
        assert bool(jnp.all(res.finite))
        final[strategy] = np.asarray(res.traces[:, -1])
        err = np.asarray(jnp.sum((res.posterior.mean - thetas) ** 2, axis=1))
        diff = err - final[strategy]
        assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(diff.size), strategy
    gap = final["random"] - final["a"]
    assert gap.mean() > 4 * gap.std(ddof=1) / np.sqrt(gap.size)
    assert np.mean(final["random"]) / np.mean(final["a"]) > 1.5


def test_sequential_design_is_reproducible_and_compiles_once(key):
    prior = _prior()
    theta = jnp.ones(D)
    first = sequential_design(prior, POOL, theta, STEPS, key, strategy="random")
    again = sequential_design(prior, POOL, theta, STEPS, key, strategy="random")
    assert_tree_allclose(first, again, rtol=0, atol=0)
    other = sequential_design(prior, POOL, theta, STEPS, jax.random.key(1), strategy="random")
    assert not np.array_equal(first.indices, other.indices)
    before = eqx.debug.get_num_traces(design._sequential_design)
    sequential_design(_prior(seed=3), POOL + 0.1, theta + 1, STEPS, jax.random.key(2), strategy="random")
    assert eqx.debug.get_num_traces(design._sequential_design) == before


def test_linear_bad_input_raises():
    with pytest.raises(ValueError, match="noise_var"):
        BayesianLinearRegression(np.zeros(2), np.eye(2), 0.0)
    with pytest.raises(ValueError, match="cov"):
        BayesianLinearRegression(np.zeros(2), np.eye(3), 1.0)
    with pytest.raises(ValueError, match="cov"):
        BayesianLinearRegression(np.zeros(2), -np.eye(2), 1.0)
    prior = _prior()
    with pytest.raises(ValueError, match="phi"):
        prior.update(np.ones(D + 1), 1.0)
    with pytest.raises(ValueError, match="candidates"):
        prior.next_trace(np.ones((3, D + 1)))
    with pytest.raises(ValueError, match="strategy"):
        sequential_design(prior, POOL, np.zeros(D), 3, jax.random.key(0), strategy="e")
    with pytest.raises(ValueError, match="steps"):
        sequential_design(prior, POOL, np.zeros(D), 0, jax.random.key(0))
    with pytest.raises(ValueError, match="true_theta"):
        sequential_design(prior, POOL, np.zeros(D + 1), 3, jax.random.key(0))
    with pytest.raises(ValueError, match="candidates"):
        sequential_design(prior, POOL[:, :2], np.zeros(D), 3, jax.random.key(0))
    with pytest.raises(ValueError, match="candidates"):
        sequential_design(prior, lambda k: jnp.ones((5, D + 1)), np.zeros(D), 3, jax.random.key(0))


# ---------------------------------------------------------------------------------------------------------------------
# a discrete twin with an analytic sensitivity: x_{k+1} = a x_k + b u_k, y_k = x_k + v_k (cheap to compile)
# ---------------------------------------------------------------------------------------------------------------------


class _Lag(tj.AbstractDiscreteDynamics):
    a: jax.Array
    b: jax.Array

    def transition(self, t, x, u):
        return self.a * x + self.b * u


LAG_T, LAG_R = 30, 0.1**2
LAG_B_SD = 0.5


@pytest.fixture(scope="module")
def lag():
    twin = tj.StateSpaceModel(
        _Lag(jnp.asarray(0.8), jnp.asarray(0.5)),
        tj.GaussianObservation(lambda t, x, u: x, jnp.array([[LAG_R]])),
        tj.Gaussian(jnp.zeros(1), jnp.eye(1)),
        1.0,
        control_dim=1,
    )
    # a in (0, 1) with a uniform prior (logit transform), b > 0 log-normal
    spec = tj.Params({"dynamics.a": tj.interval(0.0, 1.0), "dynamics.b": tj.positive(dist.LogNormal(0.0, LAG_B_SD))})
    return twin, spec


def _lag_information(u, a=0.8, b=0.5):
    """Analytic: ∂x_{k+1}/∂a = x_k + a ∂x_k/∂a, ∂x_{k+1}/∂b = u_k + a ∂x_k/∂b; chain rule to z = (logit a, log b);
    prior precision −∂² log p(z): 2a(1 − a) for the uniform-through-logit prior, 1/s² for the log-normal."""
    x, dxa, dxb, rows = 0.0, 0.0, 0.0, []
    for uk in u:
        rows.append([dxa * a * (1 - a), dxb * b])
        x, dxa, dxb = a * x + b * uk, x + a * dxa, uk + a * dxb
    j = np.array(rows)
    return j.T @ j / LAG_R, np.diag([2 * a * (1 - a), 1 / LAG_B_SD**2])


def test_fisher_information_of_a_discrete_twin_is_the_analytic_one(lag):
    twin, spec = lag
    u = np.sin(0.7 * np.arange(LAG_T)) + 0.3
    fisher, prior = _lag_information(u)
    info = fisher_information_of_input(twin, spec, u, np.arange(LAG_T, dtype=float))
    np.testing.assert_allclose(info, fisher + prior, rtol=1e-10)
    physical = fisher_information_of_input(twin, spec, u, np.arange(LAG_T, dtype=float), space="physical")
    d = np.diag([1 / (0.8 * 0.2), 1 / 0.5])  # ∂z/∂φ
    np.testing.assert_allclose(physical, d @ (fisher + prior) @ d, rtol=1e-10)
    # a rollout that overflows is reported (status), and its information is NaN rather than a wrong matrix
    huge = np.full(LAG_T, 1e308)
    assert int(output_sensitivity(twin, spec, huge, np.arange(LAG_T, dtype=float)).status) == tj.Status.nonfinite
    assert np.all(np.isnan(fisher_information_of_input(twin, spec, huge, np.arange(LAG_T, dtype=float))))


def test_design_input_generator_refinement_and_failed_candidates(lag, key):
    """The generator path: every candidate's refinement keeps its best point (the history's minimum), ends below its
    draw, and the winner is the best refined candidate with the criterion of its own input. Given candidates
    (``init``), one of them zero (no information without a prior: ``inf``), the others are unaffected. Same shapes
    again: no recompilation."""
    twin, spec = lag
    ts = np.arange(LAG_T, dtype=float)
    kw = dict(u_max=1.0, candidates=4, n_segments=6, refine_steps=15, learning_rate=0.2)
    result = design_input(twin, spec, ts, key, **kw)
    start, refined, history = map(np.asarray, (result.initial_criteria, result.refined_criteria, result.history))
    assert history.shape == (16, 4) and np.all(np.asarray(result.status) == 0)
    np.testing.assert_allclose(history[0], start)
    np.testing.assert_allclose(refined, history.min(0))
    assert np.all(refined < start)
    assert float(result.criterion) == pytest.approx(refined.min()) and np.all(np.abs(np.asarray(result.u)) < 1.0)
    direct = design_criterion(fisher_information_of_input(twin, spec, result.u, ts), "a")
    assert float(direct) == pytest.approx(float(result.criterion), rel=1e-10)
    np.testing.assert_allclose(result.information, fisher_information_of_input(twin, spec, result.u, ts), rtol=1e-10)
    assert result.u.shape == (LAG_T, 1)
    np.testing.assert_allclose(result.u, piecewise_constant_input(result.coefficients, LAG_T, 1.0))

    init = np.concatenate([np.random.default_rng(0).normal(size=(3, 6, 1)), np.zeros((1, 6, 1))])
    zero = np.zeros((2, 2))
    given = design_input(twin, spec, ts, key, init=init, prior_precision=zero, **kw)
    start, refined = np.asarray(given.initial_criteria), np.asarray(given.refined_criteria)
    assert np.isinf(start[3]) and np.isinf(refined[3]) and np.all(refined[:3] < start[:3])
    assert np.isfinite(float(given.criterion))
    before = eqx.debug.get_num_traces(design._design_input)
    again = design_input(twin, spec, ts, jax.random.key(3), init=init * 0.5, prior_precision=zero, **kw)
    assert eqx.debug.get_num_traces(design._design_input) == before
    assert not np.allclose(again.u, given.u)
    d_design = design_input(twin, spec, ts, key, criterion="d", **kw)
    assert np.all(np.asarray(d_design.refined_criteria) < np.asarray(d_design.initial_criteria))
    np.testing.assert_allclose(
        d_design.initial_criteria,
        -np.linalg.slogdet(
            np.stack(
                [
                    _sum_info(twin, spec, piecewise_constant_input(a, LAG_T, 1.0), ts)
                    for a in d_design.initial_coefficients
                ]
            )
        )[1],
        rtol=1e-10,
    )


def _sum_info(twin, spec, u, ts):
    return np.asarray(fisher_information_of_input(twin, spec, u, ts))


# ---------------------------------------------------------------------------------------------------------------------
# the nonlinear twin: a pendulum driven by a torque, from rest
# ---------------------------------------------------------------------------------------------------------------------

T = 60
DT = 0.1
TS = DT * np.arange(T)
X0 = np.zeros(2)  # at rest: without torque the pendulum says nothing about its parameters
LENGTH_SD, DAMPING_SD = 0.3, 0.5
TORQUE = 1.0 * np.sin(2.8 * TS)[:, None]


@pytest.fixture(scope="module")
def twin_and_spec():
    spec = tj.Params(
        {
            "dynamics.length_m": tj.positive(dist.LogNormal(0.0, LENGTH_SD)),
            "dynamics.damping_per_s": tj.positive(dist.LogNormal(np.log(0.1), DAMPING_SD)),
        }
    )
    return pendulum_twin(angle_sd_rad=0.05), spec


def _scipy_angles(z, u):
    """Noise-free angles from an independent implementation: SciPy's DOP853 at tight tolerances, one solve per
    interval with the torque held (the pendulum of physics/pendulum.py, m = 1 kg, g = 9.81 m/s²)."""
    from scipy.integrate import solve_ivp

    length, damping = np.exp(z)
    x, out = X0, [X0[0]]
    for k in range(T - 1):

        def f(t, x, tau=u[k, 0]):
            return [x[1], -(9.81 / length) * np.sin(x[0]) - damping * x[1] + tau / length**2]

        x = solve_ivp(f, (TS[k], TS[k + 1]), x, method="DOP853", rtol=1e-12, atol=1e-14).y[:, -1]
        out.append(x[0])
    return np.array(out)


def test_pendulum_sensitivity_against_scipy_and_fisher_information_from_it(twin_and_spec):
    """The outputs and their Jacobian against SciPy (DOP853) and its central differences; then, from the same
    compiled sensitivity program, ``I = Σ J_kᵀ R⁻¹ J_k + Λ₀`` with ``Λ₀ = diag(1/s²)`` for log-normal priors in log
    space, ``I_φ = Dᵀ I_z D`` (``D = diag(1/φ)``) in physical units, and the A- and D-criteria ``tr I⁻¹`` and
    ``−log det I``."""
    twin, spec = twin_and_spec
    z0 = np.asarray(spec.to_unconstrained(twin))
    sens = output_sensitivity(twin, spec, TORQUE, TS, x0=X0)
    assert sens.ys.shape == (T, 1) and sens.jacobian.shape == (T, 1, 2) and int(sens.status) == 0
    reference = _scipy_angles(z0, TORQUE)
    assert np.abs(reference).max() > 0.3  # the torque really swings it
    np.testing.assert_allclose(sens.ys[:, 0], reference, atol=2e-6)
    h = 1e-5
    for i in range(2):
        e = np.zeros(2)
        e[i] = h
        fd = (_scipy_angles(z0 + e, TORQUE) - _scipy_angles(z0 - e, TORQUE)) / (2 * h)
        np.testing.assert_allclose(sens.jacobian[:, 0, i], fd, atol=1e-5 * np.abs(fd).max())
    j = np.asarray(sens.jacobian[:, 0, :])
    fisher = j.T @ j / 0.05**2
    prior = np.diag([1 / LENGTH_SD**2, 1 / DAMPING_SD**2])
    info = fisher_information_of_input(twin, spec, TORQUE, TS, x0=X0)
    np.testing.assert_allclose(info, fisher + prior, rtol=1e-9)
    traces = (eqx.debug.get_num_traces(design._sensitivity_jit), eqx.debug.get_num_traces(design._assemble_jit))
    bare = fisher_information_of_input(twin, spec, TORQUE[:, 0], TS, x0=X0, prior_precision=np.zeros((2, 2)))
    np.testing.assert_allclose(bare, fisher, rtol=1e-9)
    phi = np.asarray(spec.values(twin))
    physical = fisher_information_of_input(twin, spec, TORQUE, TS, x0=X0, space="physical")
    d = np.diag(1 / phi)
    np.testing.assert_allclose(physical, d @ (fisher + prior) @ d, rtol=1e-9)
    assert float(design_criterion(info, "a")) == pytest.approx(np.trace(np.linalg.inv(fisher + prior)), rel=1e-9)
    assert float(design_criterion(info, "d")) == pytest.approx(-np.linalg.slogdet(fisher + prior)[1], rel=1e-9)
    # no torque from rest: the pendulum never moves, the data carry no information, only the prior remains
    still = fisher_information_of_input(twin, spec, np.zeros((T, 1)), TS, x0=X0, prior_precision=np.zeros((2, 2)))
    np.testing.assert_array_equal(still, np.zeros((2, 2)))
    assert np.isnan(float(design_criterion(still, "a")))
    # every prior and space above shared the two compiled programs
    after = (eqx.debug.get_num_traces(design._sensitivity_jit), eqx.debug.get_num_traces(design._assemble_jit))
    assert after == traces


@pytest.mark.slow
def test_criterion_gradient_through_the_solver_matches_finite_differences(twin_and_spec):
    """The refinement's gradient (forward mode over the forward-mode sensitivities) against central differences."""
    twin, spec = twin_and_spec
    a = jnp.asarray(np.random.default_rng(0).normal(size=(6, 1)))

    def crit(a):
        u = piecewise_constant_input(a, T, 1.0)
        return jnp.log(design_criterion(fisher_information_of_input(twin, spec, u, TS, x0=X0), "a"))

    grad = np.asarray(jax.jacfwd(crit)(a))[:, 0]
    h = 1e-5
    fd = [(crit(a.at[i, 0].add(h)) - crit(a.at[i, 0].add(-h))) / (2 * h) for i in range(6)]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_piecewise_constant_input_is_feasible_and_held():
    a = jnp.array([[0.0, -50.0], [1.0, 50.0], [-3.0, 0.5]])
    u = piecewise_constant_input(a, 7, jnp.array([2.0, 0.5]))
    assert u.shape == (7, 2)
    np.testing.assert_allclose(u[:3, 0], 0.0)
    np.testing.assert_allclose(u[3:5, 0], 2.0 * np.tanh(1.0))
    np.testing.assert_allclose(u[5:, 0], 2.0 * np.tanh(-3.0))
    assert np.all(np.abs(u[:, 0]) <= 2.0) and np.all(np.abs(u[:, 1]) <= 0.5)
    with pytest.raises(ValueError, match="n_times"):
        piecewise_constant_input(a, 2, 1.0)


@pytest.mark.slow
def test_design_input_refines_beyond_its_candidates_and_the_best_sinusoid(twin_and_spec, key):
    """Gradient refinement of four candidates, one of them the zero input (no information without prior: reported
    as ``inf``, the others unaffected): every other candidate improves on its start, the winner beats the best start by
    a wide margin and the best of a grid of sinusoids at full amplitude; the input stays feasible; a second call
    with the same shapes does not recompile."""
    twin, spec = twin_and_spec
    zero = np.zeros((2, 2))
    init = np.concatenate([np.random.default_rng(0).normal(size=(3, 12, 1)), np.zeros((1, 12, 1))])
    kw = dict(u_max=1.0, x0=X0, refine_steps=25, prior_precision=zero)
    result = design_input(twin, spec, TS, key, init=init, **kw)
    assert result.u.shape == (T, 1) and np.all(np.abs(np.asarray(result.u)) < 1.0)
    assert np.all(np.asarray(result.status) == 0) and result.history.shape == (26, 4)
    np.testing.assert_array_equal(result.initial_coefficients, init)
    start, refined = np.asarray(result.initial_criteria), np.asarray(result.refined_criteria)
    assert np.isinf(start[3]) and np.isinf(refined[3]) and np.all(np.isfinite(refined[:3]))
    assert np.all(refined[:3] < start[:3])
    assert float(result.criterion) == pytest.approx(float(np.min(refined)), rel=1e-12)
    assert float(result.criterion) < 0.8 * float(np.min(start))
    direct = design_criterion(fisher_information_of_input(twin, spec, result.u, TS, x0=X0, prior_precision=zero))
    assert float(direct) == pytest.approx(float(result.criterion), rel=1e-9)
    grid = [
        design_criterion(fisher_information_of_input(twin, spec, np.sin(w * TS), TS, x0=X0, prior_precision=zero))
        for w in np.linspace(1.0, 5.0, 9)
    ]
    assert float(result.criterion) < min(float(g) for g in grid)
    before = eqx.debug.get_num_traces(design._design_input)
    design_input(twin, spec, TS, jax.random.key(5), init=init[::-1] * 0.5, **{**kw, "u_max": 0.8})
    assert eqx.debug.get_num_traces(design._design_input) == before


def _gauss_newton(twin, spec, u, ys, z, steps):
    """Least-squares fit of ``z`` (no prior) by Gauss–Newton steps on ``Σ (y_k − h_k(z))²``."""
    for _ in range(steps):
        sens = output_sensitivity(spec.from_unconstrained(twin, z), spec, u, TS, x0=X0)
        j = sens.jacobian[:, 0, :]
        z = z + jnp.linalg.solve(j.T @ j, j.T @ (ys - sens.ys[:, 0]))
    return z


@pytest.mark.slow
def test_linearised_covariance_matches_the_spread_of_least_squares_estimates(twin_and_spec, key):
    """For a resonant square-wave torque, least-squares estimates over 1000 noisy datasets (Gauss–Newton from the
    truth) have covariance F⁻¹ (F the Fisher information without prior): the whitened errors ``L⁻¹(ẑ − z*)``
    (``F⁻¹ = L Lᵀ``) have unit variances within 4 × sqrt(2/n), correlation within 4/√n, and mean zero within 4/√n."""
    twin, spec = twin_and_spec
    n = 1000
    torque = np.where(np.sin(3.13 * TS) >= 0, 1.0, -1.0)[:, None]
    fisher = fisher_information_of_input(twin, spec, torque, TS, x0=X0, prior_precision=np.zeros((2, 2)))
    z_true = spec.to_unconstrained(twin)
    clean = output_sensitivity(twin, spec, torque, TS, x0=X0).ys[:, 0]
    noisy = clean + 0.05 * jax.random.normal(key, (n, T))
    z_hat = jax.vmap(lambda y: _gauss_newton(twin, spec, torque, y, z_true, 4))(noisy)
    chol = np.linalg.cholesky(np.linalg.inv(np.asarray(fisher)))
    white = np.linalg.solve(chol, np.asarray(z_hat - z_true).T).T
    cov = np.cov(white.T)
    assert np.all(np.abs(np.diag(cov) - 1) < 4 * np.sqrt(2 / n)), cov
    assert abs(cov[0, 1]) < 4 / np.sqrt(n), cov
    assert np.all(np.abs(white.mean(0)) < 4 / np.sqrt(n))
    # the test has power: an information off by 1.5× in one direction would be caught
    assert abs(np.var(white[:, 0]) * 1.5 - 1) > 4 * np.sqrt(2 / n)


def test_nonlinear_bad_input_raises(twin_and_spec):
    twin, spec = twin_and_spec
    with pytest.raises(ValueError, match="`u`"):
        fisher_information_of_input(twin, spec, np.zeros((T + 1, 1)), TS, x0=X0)
    with pytest.raises(ValueError, match="space"):
        fisher_information_of_input(twin, spec, TORQUE, TS, x0=X0, space="log")
    with pytest.raises(ValueError, match="prior_precision"):
        fisher_information_of_input(twin, spec, TORQUE, TS, x0=X0, prior_precision=np.eye(3))
    no_prior = tj.Params({"dynamics.length_m": tj.positive()})
    with pytest.raises(ValueError, match="prior_precision"):
        fisher_information_of_input(twin, no_prior, TORQUE, TS, x0=X0)
    with pytest.raises(ValueError, match="x0"):
        fisher_information_of_input(twin, spec, TORQUE, TS, x0=np.zeros(3))
    with pytest.raises(ValueError, match="ts"):
        fisher_information_of_input(twin, spec, TORQUE, TS[::-1], x0=X0)
    with pytest.raises(ValueError, match="criterion"):
        design_criterion(np.eye(2), "e")
    kw = dict(x0=X0, candidates=2, n_segments=4, refine_steps=1)
    with pytest.raises(ValueError, match="u_max"):
        design_input(twin, spec, TS, jax.random.key(0), u_max=0.0, **kw)
    with pytest.raises(ValueError, match="n_segments"):
        design_input(twin, spec, TS, jax.random.key(0), u_max=1.0, **{**kw, "n_segments": T + 1})
    with pytest.raises(ValueError, match="candidates"):
        design_input(twin, spec, TS, jax.random.key(0), u_max=1.0, **{**kw, "candidates": 0})
    with pytest.raises(ValueError, match="criterion"):
        design_input(twin, spec, TS, jax.random.key(0), u_max=1.0, criterion="c", **kw)
    autonomous = tj.StateSpaceModel(twin.dynamics, twin.observation, twin.initial, twin.dt)
    with pytest.raises(ValueError, match="control_dim"):
        design_input(autonomous, spec, TS, jax.random.key(0), u_max=1.0, **kw)
