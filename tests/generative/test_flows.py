"""Coupling flows: invertibility and exact log-determinants (against ``jax.jacfwd``) for the affine and spline
couplings, conditional included; a density that integrates to one; shapes, dtypes, gradients, errors, no retracing;
training on two moons and a conditional Gaussian; the two-moons acceptance run against the entropy (slow)."""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import twinjax.generative as gen
from twinjax.generative import flows
from twinjax.generative.datasets import two_moons, two_moons_entropy
from twinjax.generative.flows import CouplingFlow

KINDS = ["affine", "spline"]


def _flow(kind, dim=2, cond_dim=0, layers=4, hidden=16, key=0, noise=0.3):
    """A small untrained flow whose conditioners are perturbed, so that every layer is far from the identity."""
    f = CouplingFlow(dim, jax.random.key(key), layers=layers, hidden=hidden, kind=kind, bins=5, bound=3.0,
                     cond_dim=cond_dim)  # fmt: skip
    rng = np.random.default_rng(key)  # NumPy: a jax.random draw would compile a kernel per parameter shape
    return jax.tree.map(lambda a: a + noise * rng.standard_normal(a.shape) if eqx.is_inexact_array(a) else a, f)


def _inputs(n=9, dim=2, cond_dim=0, scale=2.0):
    # scale 2 with bound 3: some points lie in the spline's linear tails
    x = scale * jax.random.normal(jax.random.key(1), (n, dim))
    c = None if cond_dim == 0 else jax.random.normal(jax.random.key(2), (n, cond_dim))
    return x, c


@pytest.mark.parametrize("cond_dim", [0, 2], ids=["uncond", "cond"])
@pytest.mark.parametrize("kind", KINDS)
def test_inverse_undoes_forward_and_log_dets_cancel(kind, cond_dim):
    f = _flow(kind, dim=3, cond_dim=cond_dim)
    x, c = _inputs(dim=3, cond_dim=cond_dim)
    assert bool(jnp.any(jnp.abs(x) > f.bound))  # the tails are exercised
    z, ld = f.forward(x, c)
    xr, ld_inv = f.inverse(z, c)
    np.testing.assert_allclose(xr, x, atol=1e-5)
    np.testing.assert_allclose(ld + ld_inv, 0.0, atol=1e-5)
    assert float(jnp.max(jnp.abs(z - x))) > 0.1 and float(jnp.std(ld)) > 0.05  # a non-trivial map


@pytest.mark.parametrize("cond_dim", [0, 2], ids=["uncond", "cond"])
@pytest.mark.parametrize("kind", KINDS)
def test_log_det_is_the_log_abs_det_of_the_jacobian(kind, cond_dim):
    f = _flow(kind, dim=3, cond_dim=cond_dim)
    x, c = _inputs(n=5, dim=3, cond_dim=cond_dim)

    def jac(xi, ci):
        return jax.jacfwd(lambda v: f.forward(v[None], None if ci is None else ci[None])[0][0])(xi)

    J = jax.vmap(jac, in_axes=(0, None if c is None else 0))(x, c)
    _, ld = f.forward(x, c)
    np.testing.assert_allclose(ld, jnp.linalg.slogdet(J)[1], atol=1e-4)
    # (the inverse's log-det is then exact too: it is minus this one, test_inverse_undoes_forward_...)


@pytest.mark.parametrize("kind", KINDS)
def test_density_integrates_to_one_on_a_grid(kind):
    f = _flow(kind, noise=0.1)
    h = 0.05
    g = jnp.arange(-8.0 + h / 2, 8.0, h)  # midpoint rule: error O(h²), measured ≈ 3e-5 here; tail mass ≈ 4e-5
    xx, yy = jnp.meshgrid(g, g)
    pts = jnp.stack([xx.ravel(), yy.ravel()], 1)
    lp = f.log_prob(pts)
    mass = float(jnp.sum(jnp.exp(lp)) * h**2)
    assert abs(mass - 1.0) < 1e-3, mass
    base = -0.5 * jnp.sum(pts**2, 1) - jnp.log(2 * jnp.pi)
    assert float(jnp.max(jnp.abs(lp - base)[jnp.sum(pts**2, 1) < 4.0])) > 0.5  # not the base density itself


def test_zero_spline_parameters_give_the_identity_and_the_spline_is_monotone():
    raw = jnp.zeros(3 * 6 - 1)
    xs = jnp.linspace(-4.0, 4.0, 101)
    y, ld = jax.vmap(flows.rational_quadratic_spline, in_axes=(0, None, None))(xs, raw, 3.0)
    np.testing.assert_allclose(y, xs, atol=1e-12)
    np.testing.assert_allclose(ld, 0.0, atol=1e-12)
    raw = 2.0 * jax.random.normal(jax.random.key(0), (3 * 6 - 1,))
    y, _ = jax.vmap(flows.rational_quadratic_spline, in_axes=(0, None, None))(xs, raw, 3.0)
    assert bool(jnp.all(jnp.diff(y) > 0))
    np.testing.assert_allclose(y[jnp.abs(xs) >= 3.0], xs[jnp.abs(xs) >= 3.0])  # linear tails, continuous at ±B


@pytest.mark.parametrize("kind", KINDS)
def test_sample_shapes_and_dtypes_float32_included(kind):
    f = _flow(kind, cond_dim=1)
    x = f.sample(jax.random.key(0), 6, cond=jnp.array([0.5]))  # (cond_dim,) is broadcast
    assert x.shape == (6, 2) and x.dtype == jnp.float64
    x = f.sample(jax.random.key(0), 6, cond=jnp.linspace(-1, 1, 6)[:, None])
    assert x.shape == (6, 2) and bool(jnp.all(jnp.isfinite(x)))
    f32 = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, f)
    x32 = f32.sample(jax.random.key(0), 6, cond=jnp.zeros((6, 1), jnp.float32))
    lp = f32.log_prob(x32, jnp.zeros((6, 1), jnp.float32))
    assert x32.dtype == lp.dtype == jnp.float32 and lp.shape == (6,)
    np.testing.assert_allclose(lp, f.log_prob(x32.astype(jnp.float64), jnp.zeros((6, 1))), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_gradients_are_finite_and_nonzero(kind):
    f = _flow(kind, cond_dim=1)
    x, _ = _inputs(n=16, scale=2.5)
    c = jnp.ones((16, 1))
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(lambda m: m.loss(jax.random.key(0), x, c), has_aux=True))
    (loss, aux), grads = value_and_grad(f)
    np.testing.assert_allclose(loss, aux["nll"])
    np.testing.assert_allclose(loss, -jnp.mean(f.log_prob(x, c)))
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(g**2)) for g in leaves) > 0


def test_wrong_inputs_are_named():
    f = _flow("spline", cond_dim=1)
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="`x` must have shape"):
        f.log_prob(jnp.zeros((4, 3)), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="`x` must have shape"):
        f.log_prob(jnp.zeros(2), jnp.zeros(1))
    with pytest.raises(ValueError, match="`z` must have shape"):
        f.inverse(jnp.zeros((4, 1)), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="`cond` is required"):
        f.log_prob(x)
    with pytest.raises(ValueError, match="`cond` must have shape"):
        f.log_prob(x, jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="`n` must be a positive int"):
        f.sample(jax.random.key(0), 0, jnp.zeros(1))
    with pytest.raises(ValueError, match="`cond` was given"):
        _flow("affine").log_prob(x, jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="`kind`"):
        CouplingFlow(2, jax.random.key(0), kind="glow")
    with pytest.raises(ValueError, match="`layers`"):
        CouplingFlow(2, jax.random.key(0), layers=0)
    with pytest.raises(ValueError, match="`bound`"):
        CouplingFlow(2, jax.random.key(0), kind="spline", bound=0.0)


def test_no_retracing_for_the_same_shapes():
    f = _flow("spline")
    x, _ = _inputs()
    f.log_prob(x)
    before = flows.TRACES["transform"]
    f.log_prob(x + 1.0)
    f.log_prob(2.0 * x)
    assert flows.TRACES["transform"] == before


def test_masks_alternate_and_cover_every_coordinate():
    for dim in (2, 3, 5):
        m = flows.coupling_masks(dim, 4)
        assert m.any(1).all() and (~m).any(1).all()  # every layer keeps some and transforms some coordinates
        assert (~m).any(0).all()  # every coordinate is transformed by some layer
    assert not flows.coupling_masks(1, 3).any()  # dim 1: the coordinate is always transformed


@pytest.mark.parametrize("kind", KINDS)
def test_training_on_two_moons_reduces_the_loss(kind):
    x = two_moons(jax.random.key(0), 2048)
    f = CouplingFlow(2, jax.random.key(1), layers=4, hidden=32, kind=kind, bins=6, bound=4.0)
    res = gen.train(f, x, optimizer=optax.adam(3e-3), steps=200, batch_size=128, key=jax.random.key(2),
                    log_every=100, progress=False)  # fmt: skip
    loss = res.history["loss"]
    assert np.all(np.isfinite(loss))
    # per-batch losses scatter by ~sd(log p)/sqrt(128) ≈ 0.1: compare means over 50 steps
    assert loss[-50:].mean() < loss[:50].mean() - 0.3, (loss[:50].mean(), loss[-50:].mean())


def test_conditional_flow_learns_a_conditional_gaussian():
    # x | c ~ N(2c, 0.5²), c ~ U[-1, 1]: one affine layer with an MLP of c represents it exactly
    n, sd = 2000, 0.5
    kc, kx = jax.random.split(jax.random.key(0))
    c = jax.random.uniform(kc, (n, 1), minval=-1.0, maxval=1.0)
    x = 2.0 * c + sd * jax.random.normal(kx, (n, 1))
    f = CouplingFlow(1, jax.random.key(1), layers=2, hidden=16, kind="affine", cond_dim=1)
    res = gen.train(f, x, cond=c, optimizer=optax.adam(optax.cosine_decay_schedule(2e-2, 600)), steps=600,
                    batch_size=n, key=jax.random.key(2), log_every=300, progress=False)  # fmt: skip
    flow = res.model
    # the learned conditional moments by quadrature of the exact density (no sampling error)
    grid = jnp.linspace(-6.0, 6.0, 2401)
    h = grid[1] - grid[0]
    for ci in (-0.5, 0.0, 0.5):
        p = jnp.exp(flow.log_prob(grid[:, None], jnp.array([ci])))
        mass = float(jnp.sum(p) * h)
        mean = float(jnp.sum(grid * p) * h)
        std = float(jnp.sqrt(jnp.sum((grid - mean) ** 2 * p) * h))
        # an MLE from n points misses the regression line by ~sd·sqrt(1/n + 3c²/n) (c ~ U[-1,1], var 1/3) and the
        # sd by ~sd/sqrt(2n): allow 4 standard errors, and half a standard error for the optimiser's slack
        se_mean = sd * np.sqrt((1.0 + 3.0 * ci**2) / n)
        se_sd = sd / np.sqrt(2 * n)
        assert abs(mass - 1.0) < 1e-3
        assert abs(mean - 2.0 * ci) < 4.5 * se_mean, (ci, mean)
        assert abs(std - sd) < 4.5 * se_sd, (ci, std)
    # and the sampler draws from it: sample mean within 4 standard errors of the learned mean
    m = 4000
    draws = flow.sample(jax.random.key(3), m, jnp.array([0.5]))[:, 0]
    p = jnp.exp(flow.log_prob(grid[:, None], jnp.array([0.5])))
    learned = float(jnp.sum(grid * p) * h)
    assert abs(float(jnp.mean(draws)) - learned) < 4 * sd / np.sqrt(m)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "steps", "layers"), [("spline", 2000, 6), ("affine", 4000, 8)])
def test_two_moons_nll_reaches_the_entropy(kind, steps, layers):
    x = two_moons(jax.random.key(0), 50_000)  # raw coordinates, noise 0.1
    held_out = two_moons(jax.random.key(1), 20_000)
    entropy, se = two_moons_entropy(jax.random.key(2))
    f = CouplingFlow(2, jax.random.key(3), layers=layers, hidden=64, kind=kind, bins=8, bound=4.0)
    t0 = time.perf_counter()
    res = gen.train(f, x, optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, steps)), steps=steps,
                    batch_size=256, key=jax.random.key(4), log_every=500, progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    nll = -float(jnp.mean(res.model.log_prob(held_out)))
    nll_se = float(jnp.std(res.model.log_prob(held_out))) / np.sqrt(held_out.shape[0])
    print(f"\n{kind}: held-out NLL {nll:.4f} ± {nll_se:.4f}, entropy {float(entropy):.4f} ± {float(se):.4f}, "
          f"{steps} steps, {wall:.1f} s (compile {res.compile_s:.1f} s)")  # fmt: skip
    # NLL ≥ H for any model (Gibbs); within 0.1 nats of it is the acceptance criterion
    assert nll - float(entropy) < 0.1
