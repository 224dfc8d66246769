"""simulate / ensemble against truth: analytic solutions, convergence order, scipy, Monte-Carlo bounds."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.integrate

import twinjax as tj
from twinjax.simulate.ensemble import _fused
from twinjax.simulate.simulate import _simulate_jit

from ..helpers import assert_tree_allclose


class Pendulum(tj.AbstractDynamics):
    length_m: jax.Array = eqx.field(converter=jnp.asarray, default=1.0)
    damping_per_s: jax.Array = eqx.field(converter=jnp.asarray, default=0.1)

    def vector_field(self, t, x, u):
        torque = u[0] if u.shape[0] else 0.0
        return jnp.stack([x[1], -9.81 / self.length_m * jnp.sin(x[0]) - self.damping_per_s * x[1] + torque])


class OU(tj.AbstractSDEDynamics):
    theta: float = 1.0
    sigma: float = 0.5

    def vector_field(self, t, x, u):
        return -self.theta * x

    def diffusion(self, t, x, u):
        return self.sigma * jnp.eye(x.shape[0])


class Robertson(tj.AbstractDynamics):
    def vector_field(self, t, y, u):
        k1, k2, k3 = 0.04, 3e7, 1e4
        return jnp.stack(
            [
                -k1 * y[0] + k3 * y[1] * y[2],
                k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
                k2 * y[1] ** 2,
            ]
        )


def test_simulate_pendulum_matches_scipy():
    twin = tj.StateSpaceModel(Pendulum(), dt=0.05, control_dim=1)
    ts = jnp.linspace(0.0, 10.0, 201)
    torque = 0.3 * jnp.sin(ts)[:, None]
    path = tj.simulate(twin, jnp.array([1.0, 0.0]), ts, controls=torque, key=jax.random.key(0))
    ref = np.zeros((201, 2))
    ref[0] = [1.0, 0.0]

    def f(u):  # the same equations in plain NumPy
        return lambda t, x: [x[1], -9.81 * np.sin(x[0]) - 0.1 * x[1] + u]

    for k in range(200):  # zero-order hold: one scipy solve per interval, like the twin
        sol = scipy.integrate.solve_ivp(
            f(float(torque[k, 0])), (ts[k], ts[k + 1]), ref[k], rtol=1e-11, atol=1e-12, method="DOP853"
        )
        ref[k + 1] = sol.y[:, -1]
    np.testing.assert_allclose(path.xs, ref, atol=2e-6)
    assert path.status == tj.Status.successful
    assert_tree_allclose(path.us[:-1], torque[:-1])


def test_stiff_robertson_matches_reference_and_scipy():
    """REFERENCES.md: y(100) = (0.617235, 6.1536e-6, 0.382759) for k = (0.04, 3e7, 1e4)."""
    ts = jnp.array([0.0, 100.0])
    path = tj.simulate(
        Robertson(),
        jnp.array([1.0, 0.0, 0.0]),
        ts,
        solver=diffrax.Kvaerno5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-12),
        substeps=10_000,
        max_steps=100_000,
    )
    y100 = np.asarray(path.xs[-1])
    np.testing.assert_allclose(y100, [0.617235, 6.1536e-6, 0.382759], rtol=2e-5)
    ref = scipy.integrate.solve_ivp(
        lambda t, y: [
            -0.04 * y[0] + 1e4 * y[1] * y[2],
            0.04 * y[0] - 3e7 * y[1] ** 2 - 1e4 * y[1] * y[2],
            3e7 * y[1] ** 2,
        ],
        (0, 100),
        [1.0, 0, 0],
        method="Radau",
        rtol=1e-10,
        atol=1e-14,
    ).y[:, -1]
    np.testing.assert_allclose(y100, ref, rtol=1e-5)


class Logistic(tj.AbstractDynamics):
    def vector_field(self, t, x, u):
        return x * (1 - x) + 0.5 * jnp.sin(x)


@pytest.fixture(scope="module")
def logistic_reference():
    path = tj.simulate(
        Logistic(),
        jnp.array([0.1]),
        jnp.linspace(0.0, 4.0, 5),
        stepsize_controller=diffrax.PIDController(rtol=1e-13, atol=1e-14),
    )
    return float(path.xs[-1, 0])


def _slope(hs, errors):
    return np.polyfit(np.log(hs), np.log(errors), 1)[0]


@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk3", 3), ("rk4", 4)])
def test_fused_kernel_convergence_order(name, order, logistic_reference):
    """Slope of log-error vs log-dt equals the method's order (as diffrax's test_ode_order), on a nonlinear ODE."""
    subs = np.array([20, 40, 80, 160])
    errors = []
    for substeps in subs:
        traj = tj.ensemble(
            Logistic(),
            jnp.array([0.0, 4.0]),
            x0=jnp.array([[0.1]]),
            substeps=int(substeps),
            tableau=name,
            key=jax.random.key(0),
            observe=False,
        )
        errors.append(abs(float(traj.xs[0, -1, 0]) - logistic_reference))
    assert abs(_slope(4.0 / subs, errors) - order) < 0.15


@pytest.mark.parametrize(
    "solver, order, subs",
    [
        (diffrax.Euler(), 1, (8, 16, 32, 64)),
        (diffrax.Heun(), 2, (8, 16, 32, 64)),
        (diffrax.Tsit5(), 5, (8, 12, 16, 24)),
    ],
)
def test_simulate_diffrax_convergence_order(solver, order, subs, logistic_reference):
    errors = []
    for substeps in subs:
        path = tj.simulate(
            Logistic(),
            jnp.array([0.1]),
            jnp.linspace(0.0, 4.0, 5),
            solver=solver,
            stepsize_controller=diffrax.ConstantStepSize(),
            substeps=substeps,
        )
        errors.append(abs(float(path.xs[-1, 0]) - logistic_reference))
    assert abs(_slope(1.0 / np.array(subs), errors) - order) < 0.3


@pytest.mark.parametrize("method", ["fused", "diffrax"])
def test_ou_moments_match_analytic_within_monte_carlo_error(method):
    """E x_t = x0 e^{-θt}, Var x_t = σ²(1 - e^{-2θt}) / 2θ; checked at 4 standard errors."""
    members = 20_000 if method == "fused" else 2_000
    t1, x0 = 1.0, 1.0
    twin = tj.StateSpaceModel(OU(), discretisation=tj.Discretisation(substeps=200))
    traj = tj.ensemble(
        twin,
        jnp.array([0.0, t1]),
        x0=jnp.full((members, 1), x0),
        substeps=1000,
        key=jax.random.key(3),
        method=method,
        observe=False,
    )
    assert np.all(traj.status == 0)
    x = np.asarray(traj.xs[:, -1, 0])
    mean, var = x0 * np.exp(-t1), 0.25 * (1 - np.exp(-2 * t1)) / 2
    se_mean = np.sqrt(var / members)
    se_var = var * np.sqrt(2 / (members - 1))
    assert abs(x.mean() - mean) < 4 * se_mean
    assert abs(x.var(ddof=1) - var) < 4 * se_var


def test_sde_simulate_reproducible_and_key_dependent():
    twin = tj.StateSpaceModel(OU(), tj.GaussianObservation(lambda t, x, u: x, 0.01 * jnp.eye(1)))
    ts = jnp.linspace(0, 1, 11)
    a = tj.simulate(twin, jnp.ones(1), ts, key=jax.random.key(1))
    b = tj.simulate(twin, jnp.ones(1), ts, key=jax.random.key(1))
    c = tj.simulate(twin, jnp.ones(1), ts, key=jax.random.key(2))
    assert_tree_allclose(a, b)
    assert not np.allclose(a.xs, c.xs)


def test_gradient_of_trajectory_loss_matches_finite_differences():
    twin = tj.StateSpaceModel(Pendulum(), dt=0.1)
    ts = jnp.linspace(0.0, 3.0, 31)
    x0 = jnp.array([0.8, 0.0])

    def loss(m):
        return jnp.sum(tj.simulate(m, x0, ts).xs[:, 0] ** 2)

    grads = eqx.filter_grad(loss)(twin)
    for field in ("length_m", "damping_per_s"):
        get = lambda m, f=field: getattr(m.dynamics, f)
        h = 1e-6
        plus = eqx.tree_at(get, twin, get(twin) + h)
        minus = eqx.tree_at(get, twin, get(twin) - h)
        fd = (loss(plus) - loss(minus)) / (2 * h)
        np.testing.assert_allclose(getattr(grads.dynamics, field), fd, rtol=1e-5)


def test_undamped_pendulum_conserves_energy_over_long_rollout():
    twin = tj.StateSpaceModel(Pendulum(damping_per_s=0.0))
    ts = jnp.linspace(0.0, 200.0, 2001)
    path = tj.simulate(
        twin, jnp.array([2.0, 0.0]), ts, stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12)
    )
    energy = 0.5 * path.xs[:, 1] ** 2 - 9.81 * jnp.cos(path.xs[:, 0])
    assert float(jnp.max(jnp.abs(energy - energy[0]))) < 1e-6


def test_feedback_policy_closed_loop_equals_closed_form(key):
    """x_{k+1} = a x_k + b u_k, y_k = x_k exactly, u_k = -g y_k  =>  x_k = (a - b g)^k x_0."""
    a, b, g = 1.1, 0.5, 0.8
    lg = tj.LinearGaussianSSM(
        jnp.array([[a]]),
        jnp.array([[b]]),
        jnp.eye(1),
        None,
        jnp.zeros((1, 1)),
        jnp.zeros((1, 1)),
        jnp.zeros(1),
        jnp.eye(1),
    )
    ts = jnp.arange(12.0)
    path = tj.simulate(lg, jnp.array([2.0]), ts, controls=lambda t, y: -g * y, key=key)
    want = 2.0 * (a - b * g) ** np.arange(12)
    np.testing.assert_allclose(path.xs[:, 0], want, rtol=1e-12)
    np.testing.assert_allclose(path.us[:, 0], -g * want, rtol=1e-12)


def test_ancestral_sampling_draws_parameters_from_prior():
    twin = tj.StateSpaceModel(
        Pendulum(),
        tj.GaussianObservation(lambda t, x, u: x[:1], 0.01 * jnp.eye(1)),
        tj.Gaussian(jnp.array([1.0, 0.0]), 0.01 * jnp.eye(2)),
        dt=0.1,
    )
    spec = tj.Params({"dynamics.length_m": tj.positive(prior=dist.LogNormal(0.0, 0.3))})
    ts = jnp.linspace(0.0, 2.0, 21)
    a = tj.simulate(twin, None, ts, params=spec, key=jax.random.key(4))
    b = tj.simulate(twin, None, ts, params=spec, key=jax.random.key(5))
    assert a.params.shape == (1,) and not np.allclose(a.params, b.params)
    # the path is the twin with that φ: re-simulating deterministically at φ and x0 reproduces xs
    again = tj.simulate(spec.with_values(twin, a.params), a.xs[0], ts, key=jax.random.key(0))
    np.testing.assert_allclose(again.xs, a.xs, rtol=1e-9, atol=1e-12)
    cloud = tj.ensemble(twin, ts, members=4000, params=spec, key=jax.random.key(6), substeps=4)
    lengths = np.log(np.asarray(cloud.params[:, 0]))
    assert abs(lengths.mean()) < 4 * 0.3 / np.sqrt(4000)


def test_linear_gaussian_ensemble_moments_match_exact_propagation(key):
    A = jnp.array([[0.9, 0.2], [-0.1, 0.8]])
    Q = jnp.array([[0.05, 0.01], [0.01, 0.02]])
    lg = tj.LinearGaussianSSM(A, None, jnp.eye(2), None, Q, 0.1 * jnp.eye(2), jnp.array([1.0, -1.0]), 0.2 * jnp.eye(2))
    members, T = 20_000, 6
    cloud = tj.ensemble(lg, jnp.arange(float(T)), members=members, key=key)
    m, P = np.array([1.0, -1.0]), 0.2 * np.eye(2)
    for k in range(T):
        xk = np.asarray(cloud.xs[:, k])
        se = np.sqrt(np.diag(P) / members)
        assert np.all(np.abs(xk.mean(0) - m) < 4 * se), k
        se_cov = np.sqrt((P**2 + np.outer(np.diag(P), np.diag(P))) / members)
        assert np.all(np.abs(np.cov(xk.T) - P) < 4 * se_cov), k
        m, P = np.asarray(A) @ m, np.asarray(A) @ P @ np.asarray(A).T + np.asarray(Q)


def test_failed_member_is_reported_and_others_survive():
    class Blowup(tj.AbstractDynamics):
        def vector_field(self, t, x, u):
            return x**2  # x(t) = x0 / (1 - x0 t): blows up at t = 1/x0

    x0 = jnp.array([[0.1], [5.0], [0.2]])
    for method in ("fused", "diffrax"):
        traj = tj.ensemble(
            Blowup(),
            jnp.array([0.0, 1.0]),
            x0=x0,
            substeps=200,
            key=jax.random.key(0),
            method=method,
            max_steps=1000 if method == "diffrax" else None,
        )
        assert traj.status[1] != tj.Status.successful, method
        assert np.all(np.asarray(traj.status)[[0, 2]] == tj.Status.successful), method
        np.testing.assert_allclose(traj.xs[[0, 2], -1, 0], [0.1 / 0.9, 0.2 / 0.8], rtol=1e-6)
    with pytest.raises(RuntimeError, match="1 nonfinite|1 max_steps_reached|1 solver_failed"):
        tj.raise_if_failed(traj)


def test_max_steps_reported_without_throw():
    path = tj.simulate(Robertson(), jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 100.0]), max_steps=5, throw=False)
    assert path.status == tj.Status.max_steps_reached
    with pytest.raises(Exception, match="a solve failed"):
        tj.simulate(Robertson(), jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 100.0]), max_steps=5)


def test_sharded_ensemble_equals_unsharded():
    assert len(jax.devices()) == 4, "tests/conftest.py sets 4 virtual CPU devices"
    twin = tj.StateSpaceModel(
        OU(), tj.GaussianObservation(lambda t, x, u: x, 0.01 * jnp.eye(1)), tj.Gaussian(jnp.zeros(1), jnp.eye(1))
    )
    ts = jnp.linspace(0.0, 1.0, 6)
    sharded = tj.ensemble(twin, ts, members=10, key=jax.random.key(0), substeps=5)  # 10 -> padded to 12
    plain = tj.ensemble(twin, ts, members=10, key=jax.random.key(0), substeps=5, shard=False)
    assert sharded.xs.shape == (10, 6, 1)
    assert_tree_allclose(sharded, plain)
    big = tj.ensemble(twin, ts, members=8, key=jax.random.key(0), substeps=5)
    assert len(big.xs.sharding.device_set) == 4


def test_no_recompilation_on_repeated_calls():
    twin = tj.StateSpaceModel(Pendulum(), dt=0.1)
    ts = jnp.linspace(0.0, 1.0, 11)
    tj.simulate(twin, jnp.array([0.5, 0.0]), ts)
    before = eqx.debug.get_num_traces(_simulate_jit)
    tj.simulate(twin, jnp.array([0.3, 0.1]), ts + 1.0)
    tj.simulate(eqx.tree_at(lambda m: m.dynamics.length_m, twin, jnp.asarray(2.0)), jnp.array([0.3, 0.1]), ts)
    assert eqx.debug.get_num_traces(_simulate_jit) == before
    x0 = jnp.zeros((4, 2)) + 0.3
    tj.ensemble(twin, ts, x0=x0, key=jax.random.key(0), shard=False)
    before = eqx.debug.get_num_traces(_fused)
    tj.ensemble(twin, ts, x0=x0 * 2, key=jax.random.key(1), shard=False)
    assert eqx.debug.get_num_traces(_fused) == before


def test_discrete_twin_and_progress_bar(capsys):
    class Walk(tj.AbstractDiscreteDynamics):
        drift: float = 0.5

        def transition(self, t, x, u):
            return x + self.drift

    twin = tj.StateSpaceModel(Walk(), dt=1.0, initial=jnp.zeros(1))
    path = tj.simulate(twin, None, jnp.arange(5.0), key=jax.random.key(0), progress=True)
    np.testing.assert_allclose(path.xs[:, 0], 0.5 * np.arange(5))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda tw: tj.simulate(tw, jnp.zeros(3), jnp.linspace(0, 1, 5)), r"`x0` must have 2 state entries"),
        (lambda tw: tj.simulate(tw, jnp.zeros((1, 2)), jnp.linspace(0, 1, 5)), r"`x0` must have shape \(state,\)"),
        (lambda tw: tj.simulate(tw, jnp.zeros(2), jnp.array([0.0, 0.2, 0.1])), r"`ts` must be strictly increasing"),
        (
            lambda tw: tj.simulate(
                eqx.tree_at(lambda m: m.dynamics.length_m, tw, jnp.asarray(jnp.nan)),
                jnp.zeros(2),
                jnp.linspace(0, 1, 5),
            ),
            r"`model.*length_m` must be finite",
        ),
        (
            lambda tw: tj.simulate(tw, jnp.zeros(2), jnp.linspace(0, 1, 5), controls=jnp.zeros((2, 1))),
            r"`controls` must have shape",
        ),
        (lambda tw: tj.simulate(tw, None, jnp.linspace(0, 1, 5)), r"`key` is required"),
        (lambda tw: tj.ensemble(tw, jnp.array([0.0, 0.1, 0.3]), members=2, key=jax.random.key(0)), "evenly spaced"),
        (
            lambda tw: tj.ensemble(tw, jnp.linspace(0, 1, 3), x0=jnp.zeros((3, 2)), members=2, key=jax.random.key(0)),
            "Inconsistent ensemble sizes",
        ),
        (
            lambda tw: tj.ensemble(tw, jnp.linspace(0, 1, 3), members=2, key=jax.random.key(0), tableau="rk9"),
            "`tableau` must be one of",
        ),
    ],
)
def test_bad_simulation_input_raises_clear_error(call, match):
    twin = tj.StateSpaceModel(
        Pendulum(),
        tj.GaussianObservation(lambda t, x, u: x[:1], 0.01 * jnp.eye(1)),
        tj.Gaussian(jnp.zeros(2), jnp.eye(2)),
        dt=0.1,
        control_dim=1,
    )
    with pytest.raises(ValueError, match=match):
        call(twin)
