"""VAEs with neural, physics and hybrid decoders: the ELBO against closed forms, the physics decoder against a direct
simulation of the twin, the invariant of physics samples, the penalty, gradients, training and argument errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from jax.scipy.stats import multivariate_normal

import twinjax as tj
import twinjax.generative as gen
from physics import MassSpringDamper
from tests.helpers import assert_tree_allclose
from twinjax.generative import training as train_mod
from twinjax.generative.vae import (
    VAE,
    AbstractDecoder,
    HybridDecoder,
    NeuralDecoder,
    PhysicsDecoder,
    PhysicsVAE,
    gaussian_kl,
)

TS = 0.2 * jnp.arange(20)
STIFFNESS = tj.Params({"dynamics.stiffness_N_m": tj.positive()})


def energy_residual(y):
    """Energy per unit mass minus its time mean, at the least-squares ω² (zero on any undamped oscillator)."""
    q2, v2 = y[:, 0] ** 2, y[:, 1] ** 2
    dq, dv = q2 - jnp.mean(q2), v2 - jnp.mean(v2)
    return 0.5 * (dv - jnp.sum(dv * dq) / (jnp.sum(dq * dq) + 1e-12) * dq)


def _full_state(t, x, u):
    return x


def _position(t, x, u):
    return x[:1]


def oscillator(damping=0.0, sensor=_full_state):
    return tj.StateSpaceModel(
        MassSpringDamper(mass_kg=1.0, damping_Ns_m=damping, stiffness_N_m=1.0),
        tj.GaussianObservation(sensor, 0.05**2 * jnp.eye(2 if sensor is _full_state else 1)),
        tj.Gaussian(jnp.array([1.0, 0.0]), jnp.eye(2)),
        0.2,
    )


def oscillator_data(key, n):
    k_a, k_p, k_w, k_e = jax.random.split(key, 4)
    amp = jax.random.uniform(k_a, (n, 1), minval=0.5, maxval=1.5)
    phase = jax.random.uniform(k_p, (n, 1), maxval=2 * np.pi)
    omega = jax.random.uniform(k_w, (n, 1), minval=0.8, maxval=1.6)
    arg = omega * TS + phase
    clean = jnp.stack([amp * jnp.cos(arg), -amp * omega * jnp.sin(arg)], -1)
    return clean + 0.05 * jax.random.normal(k_e, clean.shape)


# ----------------------------------------------------------------------------------------- ELBO vs closed forms
def test_gaussian_kl_matches_numpyro(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    mq, lq, mp, lp = (jax.random.normal(k, (5, 3)) for k in (k1, k2, k3, k4))
    expect = dist.kl_divergence(dist.Normal(mq, jnp.exp(lq)), dist.Normal(mp, jnp.exp(lp))).sum(-1)
    assert_tree_allclose(gaussian_kl(mq, lq, mp, lp), expect)
    to_prior = dist.kl_divergence(dist.Normal(mq, jnp.exp(lq)), dist.Normal(0.0, 1.0)).sum(-1)
    assert_tree_allclose(gaussian_kl(mq, lq), to_prior)
    assert_tree_allclose(gaussian_kl(mq, lq, mq, lq), jnp.zeros(5), atol=1e-12)


class LinearDecoder(AbstractDecoder):
    W: jax.Array
    b: jax.Array
    latent_dim: int = eqx.field(static=True)
    event_shape: tuple[int, int] = eqx.field(static=True)

    def decode(self, z):
        return (self.W @ z + self.b).reshape(self.event_shape), None


class LinearEncoder(eqx.Module):
    A: jax.Array
    c: jax.Array

    def __call__(self, y):
        return self.A @ y + self.c


def test_elbo_at_the_exact_posterior_is_the_log_marginal_likelihood(key):
    # y = W z + b + σ ε, z ~ N(0, I): p(y) = N(b, W Wᵀ + σ² I). W has orthogonal columns, so the exact posterior
    # N(S Wᵀ (y − b)/σ², S), S = (I + WᵀW/σ²)⁻¹, is diagonal and a (linear) diagonal-Gaussian encoder can equal it.
    event, d, sigma = (3, 2), 2, 0.3
    k_q, k_b, k_y, k_e = jax.random.split(key, 4)
    q, _ = jnp.linalg.qr(jax.random.normal(k_q, (6, d)))
    W = q * jnp.array([2.0, 0.5])
    b = jax.random.normal(k_b, (6,))
    S = 1.0 / (1.0 + jnp.diag(W.T @ W) / sigma**2)
    gain = S[:, None] * W.T / sigma**2
    enc = LinearEncoder(jnp.concatenate([gain, jnp.zeros((d, 6))]), jnp.concatenate([-gain @ b, 0.5 * jnp.log(S)]))
    vae = VAE(LinearDecoder(W, b, d, event), key, encoder=enc, obs_sd=sigma)
    y = jax.random.normal(k_y, (4, *event)) * 2.0 + b.reshape(event)
    exact = multivariate_normal.logpdf(y.reshape(4, 6), b, W @ W.T + sigma**2 * jnp.eye(6))
    draws = jax.jit(jax.vmap(lambda k: vae.elbo(k, y)))(jax.random.split(k_e, 4000))  # (4000, 4)
    se = jnp.std(draws, 0) / jnp.sqrt(draws.shape[0])
    assert np.all(np.abs(np.mean(draws, 0) - exact) < 4 * se + 1e-12)
    # any other encoder gives a lower bound: shift the posterior mean
    worse = eqx.tree_at(lambda v: v.encoder.c, vae, enc.c + jnp.array([0.5, -0.5, 0.0, 0.0]))
    assert np.all(np.asarray(worse.elbo(k_e, y, samples=4000)) < np.asarray(exact))


# ------------------------------------------------------------------------------------------- physics decoder
@pytest.mark.parametrize("tableau", [None, "rk4"])
def test_physics_decoder_equals_a_direct_simulation_at_the_decoded_values(key, tableau):
    twin = oscillator(damping=0.3, sensor=_position)
    spec = tj.Params({"dynamics.stiffness_N_m": tj.positive(), "dynamics.damping_Ns_m": tj.positive()})
    dec = PhysicsDecoder(twin, TS, key, params=spec, tableau=tableau, substeps=8)
    assert dec.latent_dim == 4 and dec.event_shape == (20, 1)
    z = jax.random.normal(jax.random.fold_in(key, 1), (4,))
    phi, x0 = dec.physical(z)
    assert phi.shape == (2,) and bool(jnp.all(phi > 0))
    direct = tj.simulate(spec.with_values(twin, phi), x0, TS, key=key)
    assert_tree_allclose(dec.states(z), direct.xs, rtol=0, atol=1e-6)
    assert_tree_allclose(dec.decode(z)[0], direct.xs[:, :1], rtol=0, atol=1e-6)
    # an untrained decoder reproduces the twin's own values at the map's bias
    bias = eqx.tree_at(lambda d: d.latent_map.layers[-1].weight, dec, jnp.zeros_like(dec.latent_map.layers[-1].weight))
    phi0, x00 = bias.physical(z)
    assert_tree_allclose(phi0, jnp.array([1.0, 0.3]))
    assert_tree_allclose(x00, twin.initial.mean)


@pytest.mark.parametrize("tableau", ["rk4", pytest.param(None, marks=pytest.mark.slow)])
def test_physics_vae_samples_conserve_energy_to_solver_accuracy(key, tableau):
    vae = PhysicsVAE(oscillator(), TS, key=key, latent=STIFFNESS, invariant=energy_residual, tableau=tableau)
    samples = vae.sample(jax.random.fold_in(key, 1), 16)
    assert samples.shape == (16, 20, 2) and vae.latent_dim == 3
    assert float(jnp.std(samples[:, 0, 0])) > 0.05  # the samples differ
    assert float(jnp.max(vae.residual(samples))) < 1e-10
    neural = VAE(NeuralDecoder(3, (20, 2), key), key, invariant=energy_residual)
    assert float(jnp.min(neural.residual(neural.sample(key, 16)))) > 1e-6  # a generic decoder does not


# ------------------------------------------------------------------------------------------------ the penalty
def test_penalty_enters_the_loss_as_lambda_times_the_residual_with_a_finite_gradient(key):
    data = oscillator_data(key, 32)
    vae = VAE(NeuralDecoder(3, (20, 2), key), key, invariant=energy_residual)
    k = jax.random.fold_in(key, 2)
    loss = eqx.filter_jit(lambda v, w: v.loss(k, data, physics_weight=w))
    l0, aux0 = loss(vae, 0.0)
    l5, aux5 = loss(vae, 5.0)
    np.testing.assert_allclose(l5 - l0, 5.0 * aux5["residual"], rtol=1e-10)
    assert set(aux0) == {"recon", "kl", "mse", "residual"} and float(aux0["residual"]) > 0

    def penalty(v):
        return v.loss(k, data, physics_weight=1.0)[0] - v.loss(k, data)[0]

    grads = eqx.filter_jit(eqx.filter_grad(penalty))(vae)
    leaves = jax.tree.leaves(grads.decoder)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves) and any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_larger_penalty_gives_smaller_sample_residual_after_training(key):
    data = oscillator_data(key, 256)
    loc, scale = data.mean((0, 1)), data.std((0, 1))
    vae = VAE(NeuralDecoder(3, (20, 2), key, loc=loc, scale=scale), key, invariant=energy_residual, loc=loc,
              scale=scale)  # fmt: skip
    kw = dict(optimizer=optax.adam(3e-3), steps=200, batch_size=64, key=key, log_every=200, progress=False)
    residuals = []
    for lam in (0.0, 1000.0):
        before = train_mod.TRACES["chunk"]
        res = gen.train(vae, data, physics_weight=jnp.asarray(lam), **kw)
        if lam > 0:
            assert train_mod.TRACES["chunk"] == before  # the weight is traced: the sweep compiles once
        assert np.mean(res.history["loss"][-20:]) < np.mean(res.history["loss"][:20])
        residuals.append(float(jnp.mean(res.model.residual(res.model.sample(key, 256)))))
    assert residuals[1] < 0.5 * residuals[0]


# ------------------------------------------------------------------------------------- gradients and training
def _hybrid(key, tableau="rk4"):
    return PhysicsVAE(oscillator(), TS, key=key, latent=STIFFNESS, invariant=energy_residual, tableau=tableau,
                      hybrid=True)  # fmt: skip


@pytest.mark.parametrize("which", ["neural", "hybrid-rk4", pytest.param("physics-diffrax", marks=pytest.mark.slow)])
def test_gradients_are_finite_and_the_twin_is_not_trained(key, which):
    data = oscillator_data(key, 8)
    if which == "neural":
        vae = VAE(NeuralDecoder(3, (20, 2), key), key, invariant=energy_residual)
    elif which == "physics-diffrax":
        vae = PhysicsVAE(oscillator(), TS, key=key, latent=STIFFNESS, invariant=energy_residual)
    else:
        vae = _hybrid(key)
    grads = eqx.filter_jit(eqx.filter_grad(lambda v: v.loss(key, data, physics_weight=1.0, correction_weight=1.0)[0]))(
        vae
    )
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads.encoder))
    if which != "neural":
        physics = getattr(grads.decoder, "physics", grads.decoder)
        assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(physics.twin))
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(physics.latent_map))


def test_hybrid_starts_at_the_physics_decoder_and_trains_through_the_shared_loop(key):
    hybrid = _hybrid(key)
    z = jax.random.normal(key, (4, 3))
    assert_tree_allclose(hybrid.decode(z), jax.vmap(lambda zz: hybrid.decoder.physics.decode(zz)[0])(z))
    _, aux = hybrid.loss(key, oscillator_data(key, 8), correction_weight=1.0)
    assert float(aux["correction"]) == 0.0
    data = oscillator_data(key, 64)
    res = gen.train(hybrid, data, optimizer=optax.adam(1e-2), steps=60, batch_size=32, key=key, log_every=60,
                    progress=False, physics_weight=jnp.asarray(10.0), correction_weight=jnp.asarray(1.0))  # fmt: skip
    assert np.mean(res.history["loss"][-10:]) < np.mean(res.history["loss"][:10])
    assert {"recon", "kl", "residual", "correction"} <= set(res.history)


# ------------------------------------------------------------------------------------------------ bad arguments
def test_bad_arguments_are_named(key):
    twin = oscillator()
    with pytest.raises(ValueError, match="twin"):
        PhysicsDecoder(MassSpringDamper(), TS, key, params=STIFFNESS)
    with pytest.raises(ValueError, match="nothing to decode"):
        PhysicsDecoder(twin, TS, key, initial_state=False)
    with pytest.raises(ValueError, match="no 'spring'"):
        PhysicsDecoder(twin, TS, key, params=tj.Params({"dynamics.spring": tj.positive()}))
    with pytest.raises(ValueError, match="tableau"):
        PhysicsDecoder(twin, TS, key, tableau="rk7")
    with pytest.raises(ValueError, match="ts"):
        PhysicsDecoder(twin, TS[::-1], key)
    with pytest.raises(ValueError, match="PhysicsDecoder"):
        HybridDecoder(NeuralDecoder(3, (20, 2), key), key)
    with pytest.raises(ValueError, match="decoder"):
        VAE(object(), key)
    with pytest.raises(ValueError, match="event_shape"):
        NeuralDecoder(3, (20,), key)
    vae = VAE(NeuralDecoder(3, (20, 2), key), key)
    data = oscillator_data(key, 4)
    with pytest.raises(ValueError, match="invariant"):
        vae.loss(key, data, physics_weight=1.0)
    with pytest.raises(ValueError, match="invariant"):
        vae.residual(data)
    with pytest.raises(ValueError, match=r"batch.*\(n, 20, 2\)"):
        vae.loss(key, data[:, :10])
    with pytest.raises(ValueError, match="cond"):
        vae.sample(key, 3, cond=jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="`n`"):
        vae.sample(key, 0)
    with pytest.raises(NotImplementedError):
        vae.log_prob(data)
    assert not vae.has_log_prob
