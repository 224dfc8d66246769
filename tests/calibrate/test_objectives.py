"""Calibration objectives (`twinjax.calibrate.objectives`) against dense NumPy computations, the Kalman filter's
likelihood and finite differences; the four adjoints give the same gradient through diffrax."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import twinjax as tj
from physics import Pendulum, pendulum_twin
from twinjax.calibrate.objectives import (
    filter_objective,
    make_objective,
    multiple_shooting_objective,
    trajectory_objective,
)
from twinjax.inference import kalman_filter


class Rotation(tj.AbstractDiscreteDynamics):
    """``x_{k+1} = ρ R(ω) x_k``: a damped rotation, nonlinear in ``(ρ, ω)``."""

    rho: jax.Array
    omega: jax.Array

    def transition(self, t, x, u):
        c, s = jnp.cos(self.omega), jnp.sin(self.omega)
        return self.rho * jnp.stack([c * x[0] - s * x[1], s * x[0] + c * x[1]])


def _sensor(t, x, u):
    return jnp.stack([x[0], x[0] + x[1]])


@eqx.filter_jit
def call(obj, method: str, z):
    """``obj.method(z)`` compiled once per objective structure (eager ``lax.scan`` would recompile every call)."""
    return getattr(obj, method)(z)


def grad(obj, z):
    return call(obj, "gradient", z)


R = np.array([[0.04, 0.015], [0.015, 0.09]])  # correlated channels
SPEC = tj.Params({"dynamics.rho": tj.interval(0.0, 1.5), "dynamics.omega": tj.real()})


def rotation_twin(rho=0.97, omega=0.3):
    return tj.StateSpaceModel(
        Rotation(jnp.array(rho), jnp.array(omega)),
        tj.GaussianObservation(_sensor, jnp.asarray(R)),
        tj.Gaussian(jnp.array([1.0, 0.0]), 0.1 * jnp.eye(2)),
        dt=1.0,
    )


def _numpy_states(rho, omega, T, x0=(1.0, 0.0)):
    A = rho * np.array([[np.cos(omega), -np.sin(omega)], [np.sin(omega), np.cos(omega)]])
    xs = [np.asarray(x0, float)]
    for _ in range(T - 1):
        xs.append(A @ xs[-1])
    return np.array(xs)


def _data(T=12, seed=0):
    rng = np.random.default_rng(seed)
    xs = _numpy_states(0.97, 0.3, T)
    H = np.array([[1.0, 0.0], [1.0, 1.0]])
    ys = xs @ H.T + rng.multivariate_normal(np.zeros(2), R, size=T)
    ys[2, 1] = np.nan
    ys[5, 0] = np.nan
    ys[7] = np.nan
    return ys, H


def test_trajectory_loss_is_the_gaussian_negative_log_likelihood_over_observed_channels():
    ys, H = _data()
    twin = rotation_twin(0.9, 0.35)
    obj = trajectory_objective(twin, SPEC, ys)
    z = SPEC.to_unconstrained(twin)
    r = call(obj, "residuals", z)
    assert r.shape == (ys.size,)
    xs = _numpy_states(0.9, 0.35, len(ys))
    expected = 0.0
    for y, x in zip(ys, xs):
        o = ~np.isnan(y)
        d = (y - H @ x)[o]
        expected += 0.5 * d @ np.linalg.solve(R[np.ix_(o, o)], d)
    np.testing.assert_allclose(call(obj, "loss", z), expected, rtol=1e-12)
    np.testing.assert_allclose(0.5 * jnp.sum(r**2), expected, rtol=1e-12)
    assert np.all(np.asarray(r).reshape(ys.shape)[7] == 0.0)
    # masked measurements: finite gradients, equal to central finite differences
    g = grad(obj, z)
    assert np.all(np.isfinite(g))
    h = 1e-6
    fd = [(call(obj, "loss", z + h * e) - call(obj, "loss", z - h * e)) / (2 * h) for e in jnp.eye(2)]
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_prior_term_and_calibrated_initial_state():
    ys, _ = _data()
    spec = tj.Params(
        {
            "dynamics.rho": tj.interval(0.0, 1.5),
            "dynamics.omega": tj.real(prior=dist.Normal(0.0, 1.0)),
            "initial.mean": tj.real(prior=dist.Normal(0.0, 3.0)),
        }
    )
    twin = rotation_twin()
    z = spec.to_unconstrained(twin)
    assert spec.labels(twin)[2:] == ["initial.mean[0]", "initial.mean[1]"]
    plain = trajectory_objective(twin, spec, ys)
    map_ = trajectory_objective(twin, spec, ys, prior=True)
    np.testing.assert_allclose(
        call(map_, "loss", z) - call(plain, "loss", z), -spec.log_prior_unconstrained(twin, z), rtol=1e-12
    )
    # the initial state is read from the parameterised model: moving it moves the rollout
    z2 = z.at[2:].set(jnp.array([0.5, -0.2]))
    xs, _, _ = call(plain, "predict", z2)
    np.testing.assert_allclose(xs, _numpy_states(0.97, 0.3, len(ys), x0=(0.5, -0.2)), rtol=1e-12)
    # a known x0 overrides the initial mean
    known = trajectory_objective(twin, spec, ys, x0=jnp.array([0.5, -0.2]))
    np.testing.assert_allclose(call(known, "loss", z), call(plain, "loss", z2), rtol=1e-12)


def test_a_failed_transition_makes_the_residuals_nan():
    ys, _ = _data()
    twin = rotation_twin()
    obj = trajectory_objective(twin, tj.Params({"dynamics.rho": tj.positive()}), ys)
    assert np.all(np.isfinite(obj.residuals(jnp.log(jnp.array([0.9])))))
    assert np.all(np.isnan(call(obj, "residuals", jnp.array([1e3]))))  # ρ = e¹⁰⁰⁰ overflows: reported, not hidden


def test_multiple_shooting_at_the_true_nodes_equals_single_shooting_with_zero_defects():
    ys, _ = _data(T=14)
    twin = rotation_twin(0.9, 0.35)
    z = SPEC.to_unconstrained(twin)
    single = trajectory_objective(twin, SPEC, ys)
    for segments in (1, 4):  # 13 intervals in 4 segments of 4: the end is padded
        ms = multiple_shooting_objective(twin, SPEC, ys, segments=segments, continuity_weight=10.0)
        zf = call(ms, "initial_z", z)  # nodes from a rollout at z: the exact states
        assert zf.shape == (2 + 2 * (segments - 1),)
        r = call(ms, "residuals", zf)
        n_data = (ms.segments * ms.length + 1) * 2
        np.testing.assert_allclose(jnp.sum(r[:n_data] ** 2), jnp.sum(call(single, "residuals", z) ** 2), rtol=1e-12)
        np.testing.assert_allclose(r[n_data:], 0.0, atol=1e-12)
        np.testing.assert_allclose(call(ms, "loss", zf), call(single, "loss", z), rtol=1e-12)
        np.testing.assert_allclose(call(ms, "trajectory", zf), _numpy_states(0.9, 0.35, 14), rtol=1e-12)
    # a displaced node shows up as a weighted defect
    zf = call(ms, "initial_z", z).at[-1].add(0.01)
    np.testing.assert_allclose(call(ms, "residuals", zf)[-1], -10.0 * 0.01, rtol=1e-9)
    with pytest.raises(ValueError, match="full state"):
        multiple_shooting_objective(
            tj.StateSpaceModel(
                Rotation(jnp.array(0.9), jnp.array(0.3)),
                tj.GaussianObservation(lambda t, x, u: x[:1], jnp.eye(1)),
                tj.Gaussian(jnp.zeros(2), jnp.eye(2)),
                dt=1.0,
            ),
            SPEC,
            ys[:, :1],
            segments=2,
            nodes="data",
        )
    with pytest.raises(ValueError, match="`segments`"):
        multiple_shooting_objective(twin, SPEC, ys, segments=20)
    with pytest.raises(ValueError, match="`nodes`"):
        multiple_shooting_objective(twin, SPEC, ys, segments=3, nodes=jnp.zeros((3, 2)))


def test_filter_objective_is_minus_the_kalman_log_likelihood():
    lgssm = tj.LinearGaussianSSM(
        A=[[0.9, 0.1], [0.0, 0.8]],
        B=None,
        C=[[1.0, 0.0]],
        D=None,
        Q=0.05 * np.eye(2),
        R=[[0.1]],
        m0=[0.0, 0.0],
        P0=np.eye(2),
    )
    ys = np.sin(0.3 * np.arange(30))[:, None]
    ys[4] = np.nan
    spec = tj.Params({"A": tj.real()})
    obj = filter_objective(lgssm, spec, ys, filter="kf")
    z = spec.to_unconstrained(lgssm).at[1].set(0.2)
    moved = spec.from_unconstrained(lgssm, z)
    np.testing.assert_allclose(call(obj, "loss", z), -kalman_filter(moved, ys).log_likelihood, rtol=1e-12)
    g = grad(obj, z)
    h = 1e-6
    fd = [(call(obj, "loss", z + h * e) - call(obj, "loss", z - h * e)) / (2 * h) for e in jnp.eye(4)]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="`filter`"):
        filter_objective(lgssm, spec, ys, filter="enkf")


def test_bad_objective_inputs_raise():
    ys, _ = _data()
    twin = rotation_twin()
    with pytest.raises(ValueError, match="`loss`"):
        make_objective("l1", twin, SPEC, ys)
    with pytest.raises(ValueError, match="`adjoint`"):
        trajectory_objective(twin, SPEC, ys, adjoint="reverse")
    with pytest.raises(ValueError, match="`ys`"):
        trajectory_objective(twin, SPEC, ys[:, :1])
    with pytest.raises(ValueError, match="`spec`"):
        trajectory_objective(twin, {"dynamics.rho": tj.positive()}, ys)
    with pytest.raises(ValueError, match="`model`"):
        trajectory_objective(twin.dynamics, SPEC, ys)


@pytest.mark.parametrize(
    "adjoints", [("recursive", "backsolve", "forward"), pytest.param(("recursive", "direct"), marks=pytest.mark.slow)]
)
def test_the_adjoints_give_the_finite_difference_gradient_through_diffrax(adjoints):
    twin = pendulum_twin(Pendulum(length_m=1.1, damping_per_s=0.25), dt=0.1)
    disc = tj.Discretisation(stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12))
    twin = eqx.tree_at(lambda m: m.discretisation, twin, disc)
    ts = 0.1 * jnp.arange(15)
    us = 0.3 * jnp.cos(ts)[:, None]
    ys = jnp.cos(2.9 * ts)[:, None]
    spec = tj.Params({"dynamics.length_m": tj.positive(), "dynamics.damping_per_s": tj.positive()})
    z = spec.to_unconstrained(twin)
    grads = {}
    for adjoint in adjoints:
        obj = trajectory_objective(twin, spec, ys, us, ts, adjoint=adjoint)
        grads[adjoint] = grad(obj, z)
    h = 1e-5
    fd = np.array([(call(obj, "loss_raw", z + h * e) - call(obj, "loss_raw", z - h * e)) / (2 * h) for e in jnp.eye(2)])
    for adjoint in set(adjoints) - {"backsolve"}:
        np.testing.assert_allclose(grads[adjoint], grads["recursive"], rtol=1e-10)
    if "backsolve" in grads:
        # backsolve integrates the adjoint ODE backwards with the solver's tolerance: equal to that accuracy
        np.testing.assert_allclose(grads["backsolve"], grads["recursive"], rtol=1e-6)
    np.testing.assert_allclose(grads["recursive"], fd, rtol=1e-6)
