"""Every physics model passes the same suite: shapes, dtypes (float32 and float64), jit/vmap/grad, no recompilation,
and its twin factory builds a consistent ``twinjax.StateSpaceModel``."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import physics
from twinjax.model.dynamics import AbstractDiscreteDynamics, AbstractSDEDynamics


def _cases():
    """(name, model, state, control) for every model; controls are typical operating inputs."""
    cell = physics.cell_5Ah()
    ecm = physics.pybamm_ecm_example()
    return [
        ("pendulum", physics.Pendulum(), jnp.array([0.3, -0.2]), jnp.array([0.1])),
        ("oscillator", physics.MassSpringDamper(), jnp.array([0.3, -0.2]), jnp.array([0.5])),
        ("battery", cell, cell.initial_state(0.6), jnp.array([5.0])),
        ("battery_ecm", ecm, ecm.initial_state(0.6), jnp.array([50.0])),
        ("building", physics.Building2R2C(), jnp.array([20.0, 12.0]), jnp.array([1500.0, 2.0, 300.0])),
        ("pump", physics.DCMotorPump(), jnp.array([150.0, 2.0]), jnp.array([12.0])),
        ("degradation", physics.Degradation(), jnp.array([0.2]), jnp.zeros(0)),
        ("lorenz63", physics.Lorenz63(), jnp.array([1.0, 2.0, 20.0]), jnp.zeros(0)),
        ("lorenz63_sde", physics.Lorenz63SDE(), jnp.array([1.0, 2.0, 20.0]), jnp.zeros(0)),
        ("lorenz96", physics.Lorenz96(n=6), jnp.arange(6.0), jnp.zeros(0)),
        ("pkpd", physics.TwoCompartmentPKPD(), jnp.array([50.0, 30.0, 10.0, 5.0, 0.4]), jnp.array([20.0])),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


def _step(model, x, u):
    if isinstance(model, AbstractDiscreteDynamics):
        return model.transition(0.0, x, u)
    return model.vector_field(0.0, x, u)


@pytest.mark.strict
@pytest.mark.parametrize("name, model, x, u", CASES, ids=IDS)
def test_shapes_dtypes_and_transforms(name, model, x, u):
    f = eqx.filter_jit(_step)
    out = f(model, x, u)
    assert out.shape == x.shape and out.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(out)))
    batch = jnp.stack([x, x * 1.01, x * 0.99])
    batched = eqx.filter_jit(eqx.filter_vmap(_step, in_axes=(None, 0, None)))(model, batch, u)
    np.testing.assert_allclose(batched[0], out, rtol=1e-12)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(_step(m, x, u) ** 2)))(model)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    if isinstance(model, AbstractSDEDynamics):
        assert model.diffusion(0.0, x, u).shape[0] == x.shape[0]


@pytest.mark.parametrize("name, model, x, u", CASES, ids=IDS)
def test_float32_state_stays_float32(name, model, x, u):
    out = _step(model, x.astype(jnp.float32), u.astype(jnp.float32))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, _step(model, x, u), rtol=2e-4, atol=1e-6 * float(jnp.max(jnp.abs(out))))


def test_new_parameter_values_do_not_recompile():
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(model, x, u):
        return model.vector_field(0.0, x, u)

    cell = physics.cell_5Ah()
    x, u = cell.initial_state(0.5), jnp.array([2.0])
    a = step(cell, x, u)
    b = step(eqx.tree_at(lambda c: c.r0_ohm, cell, jnp.asarray(0.03)), x, u)
    assert not np.allclose(a, b)


TWINS = [
    physics.pendulum_twin,
    physics.oscillator_twin,
    physics.battery_twin,
    lambda: physics.battery_twin(physics.pybamm_ecm_example(), soc0=0.5),
    physics.building_twin,
    physics.pump_twin,
    physics.degradation_twin,
    physics.lorenz63_twin,
    lambda: physics.lorenz63_twin(physics.Lorenz63SDE()),
    physics.lorenz96_twin,
    physics.pkpd_twin,
]


@pytest.mark.parametrize("make", TWINS)
def test_twin_factories(make):
    twin = make()
    x0 = twin.initial.mean
    u = jnp.zeros(twin.control_dim)
    y = twin.observation.mean(0.0, x0, u)
    assert y.ndim == 1 and y.shape[0] == twin.observation.covariance(0.0, x0, u).shape[0]
    assert _step(twin.dynamics, x0, u).shape == x0.shape
