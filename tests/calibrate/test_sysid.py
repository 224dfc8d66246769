"""System identification (`twinjax.calibrate.sysid`) against truth: exact recovery, scipy's least squares on the same
data, the exact posterior of a linear-Gaussian model, analytic profiles, finite-difference Jacobians, multistart."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats

import twinjax as tj
from physics import Pendulum, pendulum_twin
from twinjax.calibrate import sysid
from twinjax.calibrate.objectives import trajectory_objective
from twinjax.calibrate.sysid import (
    fisher_information,
    fit,
    fit_init,
    fit_step,
    laplace,
    multistart,
    profile_likelihood,
    resolve_optimizer,
)

# ------------------------------------------------------------------------------------------------------ test twins


class Drift(tj.AbstractDiscreteDynamics):
    """``x_{k+1} = x_k + rate · step``: with ``y_k = x_k + v_k`` the data are a linear regression on ``(x₀, rate)``."""

    rate: jax.Array
    step: float

    def transition(self, t, x, u):
        return x + self.rate * self.step


def _identity(t, x, u):
    return x


PRIOR_SD = {"rate": 0.5, "x0": 2.0}
NOISE_SD = 0.3


def drift_problem(T=25, seed=0):
    twin = tj.StateSpaceModel(
        Drift(jnp.array(0.7), 0.1),
        tj.GaussianObservation(_identity, jnp.array([[NOISE_SD**2]])),
        tj.Gaussian(jnp.array([0.4]), jnp.eye(1)),
        dt=0.1,
    )
    spec = tj.Params(
        {
            "dynamics.rate": tj.real(prior=dist.Normal(0.0, PRIOR_SD["rate"])),
            "initial.mean": tj.real(prior=dist.Normal(0.0, PRIOR_SD["x0"])),
        }
    )
    t = 0.1 * np.arange(T)
    ys = 0.4 + 0.7 * t + NOISE_SD * np.random.default_rng(seed).normal(size=T)
    X = np.stack([t, np.ones(T)], axis=1)  # columns: rate, x0 (the spec's order)
    return twin, spec, jnp.asarray(ys[:, None]), X, ys


class PendulumRK4(tj.AbstractDiscreteDynamics):
    """The pendulum advanced by ``n`` RK4 steps per interval (a cheap nonlinear twin: no diffrax compile)."""

    pendulum: Pendulum
    step: float
    n: int = eqx.field(static=True, default=2)

    def transition(self, t, x, u):
        h = self.step / self.n
        f = lambda x: self.pendulum.vector_field(t, x, u)  # noqa: E731
        for _ in range(self.n):
            k1 = f(x)
            k2 = f(x + 0.5 * h * k1)
            k3 = f(x + 0.5 * h * k2)
            k4 = f(x + h * k3)
            x = x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        return x


def _angle(t, x, u):
    return x[:1]


PEND_SPEC = tj.Params({"dynamics.pendulum.length_m": tj.positive(), "dynamics.pendulum.damping_per_s": tj.positive()})
TRUE = np.array([1.0, 0.3])


def rk4_pendulum(length=1.0, damping=0.3, T=80, noise=0.05, seed=0):
    twin = tj.StateSpaceModel(
        PendulumRK4(Pendulum(length_m=length, damping_per_s=damping), 0.1),
        tj.GaussianObservation(_angle, jnp.array([[0.05**2]])),
        tj.Gaussian(jnp.array([1.0, 0.0]), jnp.eye(2) * 0.01),
        dt=0.1,
    )
    truth = PEND_SPEC.with_values(twin, jnp.asarray(TRUE))
    path = tj.simulate(truth, jnp.array([1.0, 0.0]), 0.1 * jnp.arange(T), key=jax.random.key(seed))
    ys = path.xs[:, :1] + noise * jax.random.normal(jax.random.key(seed + 1), (T, 1))
    return twin, ys


# ------------------------------------------------------------------------------------- linear-Gaussian: exact answers


def _exact_posterior(X, ys, prior=True):
    precision = X.T @ X / NOISE_SD**2
    rhs = X.T @ ys / NOISE_SD**2
    if prior:
        precision = precision + np.diag([PRIOR_SD["rate"] ** -2, PRIOR_SD["x0"] ** -2])
    cov = np.linalg.inv(precision)
    return cov @ rhs, cov


def test_laplace_is_the_exact_posterior_of_a_linear_gaussian_model():
    twin, spec, ys, X, y_np = drift_problem()
    mean, cov = _exact_posterior(X, y_np)
    res = fit(twin, spec, ys, prior=True)
    assert bool(res.converged)
    np.testing.assert_allclose(res.params, mean, rtol=1e-7, atol=1e-9)
    post = laplace(twin, spec, ys, at=res, prior=True)
    assert bool(post.ok)
    np.testing.assert_allclose(post.cov, cov, rtol=1e-8)
    np.testing.assert_allclose(post.mean, mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(post.sd, np.sqrt(np.diag(cov)), rtol=1e-7)
    low, high = post.interval(0.9)
    q = scipy.stats.norm.ppf(0.95)
    np.testing.assert_allclose(low, mean - q * np.sqrt(np.diag(cov)), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(high, mean + q * np.sqrt(np.diag(cov)), rtol=1e-6, atol=1e-9)
    # without the prior: the least-squares covariance (XᵀR⁻¹X)⁻¹; the Gauss–Newton Hessian is exact here
    _, cov_ml = _exact_posterior(X, y_np, prior=False)
    gn = laplace(twin, spec, ys, at=res, prior=False, hessian="gauss_newton")
    np.testing.assert_allclose(gn.cov, cov_ml, rtol=1e-8)
    # and the least-squares fit (Levenberg–Marquardt) is the ordinary least-squares estimate
    ml = fit(twin, spec, ys)
    np.testing.assert_allclose(ml.params, np.linalg.lstsq(X, y_np, rcond=None)[0], rtol=1e-7)


def test_laplace_intervals_of_a_positive_parameter_transform_the_normal_quantiles():
    twin, _, ys, _, _ = drift_problem()
    twin = eqx.tree_at(lambda m: m.dynamics.rate, twin, jnp.array(0.9))
    spec = tj.Params({"dynamics.rate": tj.positive(prior=dist.LogNormal(0.0, 1.0))})
    post = laplace(twin, spec, ys, prior=True)
    z, sd_z = float(post.z[0]), float(np.sqrt(post.cov[0, 0]))
    low, high = post.interval(0.8)
    q = scipy.stats.norm.ppf(0.9)
    np.testing.assert_allclose([low[0], high[0]], np.exp([z - q * sd_z, z + q * sd_z]), rtol=1e-10)
    np.testing.assert_allclose(post.sd[0], np.exp(z) * sd_z, rtol=1e-10)  # delta method
    assert low[0] < post.mean[0] < high[0]


def test_profile_likelihood_of_a_linear_model_is_quadratic_with_the_wald_interval():
    twin, spec, ys, X, y_np = drift_problem()
    est, cov = _exact_posterior(X, y_np, prior=False)
    se = np.sqrt(np.diag(cov))
    grid = est[0] + se[0] * np.linspace(-3.0, 3.0, 13)
    prof = profile_likelihood(twin, spec, ys, name="dynamics.rate", grid=grid, level=0.95)
    # PL(θ) − min = ½ (θ − θ̂)² / se²: the deviance is the squared z-score
    np.testing.assert_allclose(prof.deviance, ((grid - est[0]) / se[0]) ** 2, rtol=1e-6, atol=1e-8)
    assert np.all(np.asarray(prof.status) == 0)
    z95 = scipy.stats.norm.ppf(0.975)
    # linear interpolation of a quadratic on a 0.5·se grid: the crossing is within (0.5 se)²/8 / slope of the exact one
    np.testing.assert_allclose(prof.interval, [est[0] - z95 * se[0], est[0] + z95 * se[0]], atol=0.02 * se[0])
    np.testing.assert_allclose(prof.estimate, est[0], rtol=1e-7)
    # the re-optimised x₀ at each rate is the conditional least-squares answer
    x0_given_rate = [np.mean(y_np - r * X[:, 0]) for r in grid]
    np.testing.assert_allclose(prof.others[:, 1], x0_given_rate, rtol=1e-7)


def test_profile_rejects_unknown_names_and_grids_outside_the_support():
    twin, _, ys, _, _ = drift_problem()
    spec = tj.Params({"dynamics.rate": tj.positive()})
    with pytest.raises(ValueError, match="`name`"):
        profile_likelihood(twin, spec, ys, name="dynamics.nope", grid=[0.5, 1.0])
    with pytest.raises(ValueError, match="`grid`"):
        profile_likelihood(twin, spec, ys, name="dynamics.rate", grid=[-1.0, 1.0])


# ------------------------------------------------------------------------------------------------- nonlinear twins


def test_fisher_information_against_a_finite_difference_jacobian():
    twin, ys = rk4_pendulum(1.1, 0.25, T=40)
    info = fisher_information(twin, PEND_SPEC, ys, at=PEND_SPEC.to_unconstrained(twin))
    obj = trajectory_objective(twin, PEND_SPEC, ys)
    z = np.asarray(PEND_SPEC.to_unconstrained(twin))
    h = 1e-6
    J = np.stack(
        [(np.asarray(obj.residuals(z + h * e)) - np.asarray(obj.residuals(z - h * e))) / (2 * h) for e in np.eye(2)], 1
    )
    np.testing.assert_allclose(info, J.T @ J, rtol=1e-6)
    # physical units: I_φ = Gᵀ I_z G with G = ∂z/∂φ = diag(1/φ) for log-transformed parameters
    phys = fisher_information(twin, PEND_SPEC, ys, at=z, space="physical")
    G = np.diag(1.0 / np.array([1.1, 0.25]))
    np.testing.assert_allclose(phys, G @ (J.T @ J) @ G, rtol=1e-6)


def test_levenberg_marquardt_gauss_newton_and_adam_reach_the_same_optimum():
    twin, ys = rk4_pendulum(1.08, 0.26, T=60)
    lm = fit(twin, PEND_SPEC, ys, optimizer="levenberg_marquardt")
    gn = fit(twin, PEND_SPEC, ys, optimizer="gauss_newton")
    sched = optax.exponential_decay(0.05, transition_steps=400, decay_rate=0.1)
    adam = fit(twin, PEND_SPEC, ys, optimizer=optax.adam(sched), steps=1500)
    for res in (lm, gn, adam):
        assert bool(res.converged), res.status
    np.testing.assert_allclose(gn.params, lm.params, rtol=1e-7)
    # Adam has no stopping rule: its 1500 decaying steps reach the optimum to ~1e-5 (loss within 1e-8 relative)
    np.testing.assert_allclose(adam.params, lm.params, rtol=1e-4)
    assert abs(float(adam.loss) - float(lm.loss)) <= 1e-6 * float(lm.loss)
    # the optimum is near the truth (noise 0.05 rad on 60 points)
    np.testing.assert_allclose(lm.params, TRUE, rtol=0.05)
    # the history: finite where steps were taken, NaN after; Adam's loss decreased
    steps = int(lm.steps)
    assert np.all(np.isfinite(lm.losses[:steps])) and np.all(np.isnan(lm.losses[steps:]))
    assert float(adam.losses[-1]) < float(adam.losses[0])


def test_multistart_finds_the_global_optimum_and_reports_failed_starts():
    # an undamped small-amplitude pendulum over ~8 periods: the loss in the length alone has many local minima
    twin = tj.StateSpaceModel(
        PendulumRK4(Pendulum(length_m=1.0, damping_per_s=0.02), 0.1),
        tj.GaussianObservation(_angle, jnp.array([[0.05**2]])),
        tj.Gaussian(jnp.array([0.2, 0.0]), jnp.eye(2) * 0.01),
        dt=0.1,
    )
    path = tj.simulate(twin, jnp.array([0.2, 0.0]), 0.1 * jnp.arange(300), key=jax.random.key(0))
    ys = path.xs[:, :1] + 0.02 * jax.random.normal(jax.random.key(1), (300, 1))
    spec = tj.Params({"dynamics.pendulum.length_m": tj.positive(prior=dist.LogNormal(0.0, 0.1))})
    single = fit(spec.with_values(twin, jnp.array([3.0])), spec, ys)
    assert abs(float(single.params[0]) - 1.0) > 0.5  # trapped in a local minimum
    starts = np.log(np.array([[3.0], [1.3], [1.05], [1e-300]]))  # the last one overflows (g / L = inf)
    ms = multistart(twin, spec, ys, starts=starts)
    np.testing.assert_allclose(ms.best.params, [1.0], rtol=2e-3)
    np.testing.assert_allclose(ms.results.params[0], single.params, rtol=1e-8)  # the same optimiser per start
    assert int(ms.best_index) == 2
    assert float(ms.results.loss[1]) > 10 * float(ms.best.loss)  # start 1.3 ends in another local minimum
    assert bool(ms.failed[3]) and not bool(np.any(ms.failed[:3]))
    assert int(ms.results.status[3]) == int(tj.Status.nonfinite)
    spread = ms.spread()
    assert spread["n_failed"] == 1 and spread["n_starts"] == 4 and spread["best_loss"] == pytest.approx(ms.best.loss)
    # starts drawn from the prior (the same shapes: no new compilation)
    drawn = multistart(twin, spec, ys, starts=4, key=jax.random.key(0))
    assert drawn.results.params.shape == (4, 1)
    np.testing.assert_allclose(drawn.best.params, [1.0], rtol=2e-3)
    with pytest.raises(ValueError, match="`key`"):
        multistart(twin, spec, ys, starts=6)
    with pytest.raises(ValueError, match="`starts`"):
        multistart(twin, spec, ys, starts=np.zeros((3, 5)))


def test_multiple_shooting_recovers_the_parameters_from_a_bad_start():
    twin, ys = rk4_pendulum(1.0, 0.3, T=120, noise=0.0)
    bad = PEND_SPEC.with_values(twin, jnp.array([4.0, 0.05]))
    res = fit(bad, PEND_SPEC, ys, loss="multiple_shooting", segments=12, nodes="rollout", steps=300)
    assert bool(res.converged)
    np.testing.assert_allclose(res.params, TRUE, rtol=1e-6)
    assert res.unknowns.shape == (2 + 11 * 2,)


def test_pure_init_step_pair_matches_the_compiled_driver():
    twin, spec, ys, _, _ = drift_problem()
    opt = optax.adam(0.05)
    res = fit(twin, spec, ys, optimizer=opt, steps=30)
    obj = trajectory_objective(twin, spec, ys)
    optimizer = resolve_optimizer(opt, obj)
    state = fit_init(obj, optimizer)
    for _ in range(30):
        state = fit_step(obj, optimizer, state)
    np.testing.assert_allclose(state.z, res.z, rtol=1e-12)
    assert int(state.step) == 30
    with_bar = fit(twin, spec, ys, optimizer=opt, steps=30, progress=True)
    np.testing.assert_allclose(with_bar.z, res.z, rtol=1e-12)
    np.testing.assert_allclose(with_bar.losses, res.losses, rtol=1e-12)


def test_a_second_fit_with_the_same_shapes_does_not_recompile():
    twin, spec, ys, _, _ = drift_problem()
    fit(twin, spec, ys)
    before = eqx.debug.get_num_traces(sysid._fit_jit)
    other = fit(twin, spec, ys * 1.1 + 0.2)
    start2 = eqx.tree_at(lambda m: m.dynamics.rate, twin, jnp.array(0.1))
    fit(start2, spec, ys)
    assert eqx.debug.get_num_traces(sysid._fit_jit) == before
    assert bool(other.converged)


def test_bad_inputs_raise_clear_errors():
    twin, spec, ys, _, _ = drift_problem()
    with pytest.raises(ValueError, match="`ys`"):
        fit(twin, spec, jnp.ones((25, 3)))
    with pytest.raises(ValueError, match="`loss`"):
        fit(twin, spec, ys, loss="squared")
    with pytest.raises(ValueError, match="`optimizer`"):
        fit(twin, spec, ys, optimizer="newton")
    with pytest.raises(ValueError, match="`optimizer`"):
        fit(twin, spec, ys, optimizer=object())
    with pytest.raises(ValueError, match="dynamics.nope"):
        fit(twin, tj.Params({"dynamics.nope": tj.positive()}), ys)
    with pytest.raises(ValueError, match="prior=True"):
        fit(twin, spec, ys, optimizer="levenberg_marquardt", prior=True)
    with pytest.raises(ValueError, match="needs residuals"):
        fit(twin, spec, ys, loss="filter", optimizer="gauss_newton")
    with pytest.raises(ValueError, match="`adjoint`"):
        fit(twin, spec, ys, adjoint="sideways")
    with pytest.raises(ValueError, match="`z0`"):
        fit(twin, spec, ys, z0=jnp.zeros(5))
    with pytest.raises(ValueError, match="`steps`"):
        fit(twin, spec, ys, steps=0)
    with pytest.raises(ValueError, match="`hessian`"):
        laplace(twin, spec, ys, at=jnp.zeros(2), hessian="bfgs")
    with pytest.raises(ValueError, match="`x0`"):
        fit(twin, spec, ys, x0=jnp.zeros(3))


def _numpy_kalman_nll(a, ys, q, r, m0, p0):
    m, P, nll = m0, p0, 0.0
    for k, y in enumerate(ys):
        if k:
            m, P = a * m, a * a * P + q
        S = P + r
        nll += 0.5 * (np.log(2 * np.pi * S) + (y - m) ** 2 / S)
        K = P / S
        m, P = m + K * (y - m), (1 - K) * P
    return nll


def test_filter_loss_maximises_the_exact_kalman_likelihood():
    q, r, a_true, T = 0.1, 0.2, 0.8, 200
    rng = np.random.default_rng(1)
    x, ys = 0.0, []
    for _ in range(T):
        ys.append(x + np.sqrt(r) * rng.normal())
        x = a_true * x + np.sqrt(q) * rng.normal()
    ys = np.array(ys)
    lgssm = tj.LinearGaussianSSM(A=[[0.3]], B=None, C=[[1.0]], D=None, Q=[[q]], R=[[r]], m0=[0.0], P0=[[1.0]])
    spec = tj.Params({"A": tj.interval(-1.0, 1.0)})
    res = fit(lgssm, spec, ys[:, None], loss="filter", filter="kf")
    best = scipy.optimize.minimize_scalar(
        _numpy_kalman_nll, bounds=(-0.99, 0.99), method="bounded", args=(ys, q, r, 0.0, 1.0), options={"xatol": 1e-10}
    )
    assert bool(res.converged)
    np.testing.assert_allclose(res.params[0], best.x, rtol=1e-6)
    np.testing.assert_allclose(res.loss, best.fun, rtol=1e-10)
    # the observed information of the filter loss is its Hessian: against a finite difference of the numpy NLL
    info = fisher_information(lgssm, spec, ys[:, None], at=res, loss="filter", filter="kf", space="physical")
    h = 1e-4
    a = float(res.params[0])
    fd = _numpy_kalman_nll(a + h, ys, q, r, 0.0, 1.0) - 2 * best.fun + _numpy_kalman_nll(a - h, ys, q, r, 0.0, 1.0)
    np.testing.assert_allclose(info[0, 0], fd / h**2, rtol=1e-4)


# ------------------------------------------------------------------------------------------- through diffrax (ODE)


ODE_SPEC = tj.Params({"dynamics.length_m": tj.positive(), "dynamics.damping_per_s": tj.positive()})
ODE_T = 30


def _ode_pendulum(noise, seed=0):
    """The diffrax pendulum (tight tolerances) with a torque input, its angle measured every 0.1 s."""
    twin = pendulum_twin(Pendulum(length_m=1.0, damping_per_s=0.3), dt=0.1)
    disc = tj.Discretisation(stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-11))
    twin = eqx.tree_at(lambda m: m.discretisation, twin, disc)
    ts = 0.1 * jnp.arange(ODE_T)
    us = 0.5 * jnp.sin(0.7 * ts)[:, None]
    path = tj.simulate(twin, jnp.array([1.0, 0.0]), ts, controls=us, key=jax.random.key(seed))
    ys = path.xs[:, :1] + noise * jax.random.normal(jax.random.key(seed + 1), (ODE_T, 1))
    start = ODE_SPEC.with_values(twin, jnp.array([1.2, 0.2]))
    return start, ts, us, ys


def _scipy_fit(ts, us, ys, start):
    """scipy ``least_squares`` (finite-difference Jacobian) on a ``solve_ivp`` objective: the same model, the same
    zero-order-hold controls and data, an independent implementation."""
    ts, us, y = np.asarray(ts), np.asarray(us)[:, 0], np.asarray(ys)[:, 0]

    def rollout(theta):
        length, damping = np.exp(theta)
        x, out = np.array([1.0, 0.0]), [1.0]
        for k in range(len(ts) - 1):

            def rhs(t, x, u=us[k]):
                return [x[1], -(9.81 / length) * np.sin(x[0]) - damping * x[1] + u / length**2]

            sol = scipy.integrate.solve_ivp(rhs, (ts[k], ts[k + 1]), x, method="DOP853", rtol=1e-11, atol=1e-13)
            x = sol.y[:, -1]
            out.append(x[0])
        return np.array(out)

    res = scipy.optimize.least_squares(lambda th: (rollout(th) - y) / 0.05, np.log(start), xtol=1e-12, ftol=1e-12)
    return np.exp(res.x)


def test_ode_pendulum_exact_recovery_scipy_agreement_and_masked_data():
    """Through diffrax (one test so the compiled fit is shared): noiseless data give the exact parameters; on noisy
    data the optimum equals scipy's; masking measurements with NaN gives the same fit as dropping them."""
    start, ts, us, ys = _ode_pendulum(noise=0.0)
    exact = fit(start, ODE_SPEC, ys, us, ts)
    assert bool(exact.converged)
    np.testing.assert_allclose(exact.params, TRUE, rtol=1e-7)

    _, _, _, noisy = _ode_pendulum(noise=0.05, seed=3)
    ours = fit(start, ODE_SPEC, noisy, us, ts)
    theirs = _scipy_fit(ts, us, noisy, [1.2, 0.2])
    assert bool(ours.converged)
    np.testing.assert_allclose(ours.params, theirs, rtol=1e-6)

    drop = np.array([3, 4, 11, 17, 18, 19, 25])
    keep = np.setdiff1d(np.arange(ODE_T), drop)
    # dropping rows makes irregular intervals, each integrated with the control of its first instant (zero-order
    # hold): hold the control constant over the dropped instants so that both records describe the same inputs
    us_held = np.asarray(us).copy()
    for k in drop:
        us_held[k] = us_held[k - 1]
    masked = fit(start, ODE_SPEC, noisy.at[drop].set(jnp.nan), jnp.asarray(us_held), ts)
    dropped = fit(start, ODE_SPEC, noisy[keep], jnp.asarray(us_held[keep]), ts[keep])
    assert bool(masked.converged) and bool(dropped.converged)
    np.testing.assert_allclose(masked.params, dropped.params, rtol=1e-6)
    np.testing.assert_allclose(masked.loss, dropped.loss, rtol=1e-6)
