"""Conditional GAN (non-saturating and WGAN-GP) and CycleGAN: shapes, gradients, the gradient penalty against a hand
computation, a training run through the shared loop, exact cycle consistency, argument errors; and (slow) the
acceptance check of generated samples against held-out data on two moons and on pendulum trajectories."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import twinjax as tj
import twinjax.generative as gen
from tests.helpers import assert_tree_allclose
from twinjax.generative.gan import ConditionalGAN, CycleGAN, TranslatedSensor, gradient_penalty
from twinjax.generative.metrics import pairwise_distances


@eqx.filter_jit
def _loss_and_grads(model, name, key, batch, cond=None):
    """``(loss, aux, all gradients finite)`` of ``model.<name>`` (one compiled call instead of many eager ops)."""
    fn = lambda m: getattr(m, name)(key, batch, cond)  # noqa: E731
    (loss, aux), grads = eqx.filter_value_and_grad(fn, has_aux=True)(model)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    return loss, aux, jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a)) for a in leaves]))


@pytest.mark.parametrize("variant", ["ns", "wgan-gp"])
def test_conditional_gan_shapes_and_finite_gradients(variant):
    event, cond_dim, n = (5, 2), 3, 7  # a trajectory-shaped event (time, obs)
    gan = ConditionalGAN(event, key=jax.random.key(0), latent_dim=4, cond_dim=cond_dim, width=8, depth=1,
                         variant=variant)  # fmt: skip
    assert gan.critic_steps == (5 if variant == "wgan-gp" else 1)
    u = jax.random.normal(jax.random.key(1), (n, cond_dim))
    x = gan.sample(jax.random.key(2), n, u)
    assert x.shape == (n, *event) and x.dtype == jnp.zeros(()).dtype
    assert gan.sample(jax.random.key(2), n, u[0]).shape == (n, *event)  # one condition, broadcast
    assert gan.discriminate(x, u).shape == (n,)
    batch = 1.0 + x
    for name in ("critic_loss", "generator_loss"):
        loss, aux, finite = _loss_and_grads(gan, name, jax.random.key(3), batch, u)
        assert loss.shape == () and np.isfinite(float(loss)) and bool(finite)
        assert all(np.isfinite(float(v)) for v in aux.values())
    # the critic filter marks the critic's arrays and nothing else
    mask = gan.critic_filter()
    assert all(jax.tree.leaves(eqx.filter(mask.critic, eqx.is_array_like)))
    assert not any(jax.tree.leaves(eqx.tree_at(lambda m: m.critic, mask, None)))


def test_gradient_penalty_of_a_linear_critic_is_known_analytically():
    d, c, n = 3, 2, 16
    w = jnp.array([0.3, -1.2, 2.0, 5.0, -7.0])  # the last c weights act on the condition: not in the gradient norm
    norm_x = float(jnp.linalg.norm(w[:d]))
    real = jax.random.normal(jax.random.key(0), (n, d))
    fake = 2.0 + jax.random.normal(jax.random.key(1), (n, d))
    u = jax.random.normal(jax.random.key(2), (n, c))
    linear = lambda x, uu: w @ jnp.concatenate([x, uu]) + 0.7  # noqa: E731
    gp = gradient_penalty(linear, real, fake, u, jax.random.key(3))
    assert_tree_allclose(gp, jnp.asarray((norm_x - 1.0) ** 2))

    # the same inside the WGAN-GP critic loss: a linear critic D(x, u) = w·[x, u] + b, standardisation 0 / 1
    gan = ConditionalGAN((d,), key=jax.random.key(4), latent_dim=2, cond_dim=c, width=8, depth=1)
    lin = eqx.nn.Linear(d + c, "scalar", key=jax.random.key(5))
    lin = eqx.tree_at(lambda m: (m.weight, m.bias), lin, (w[None], jnp.asarray([0.7])))
    gan = eqx.tree_at(lambda m: m.critic, gan, lin)
    key = jax.random.key(6)
    loss, aux = gan.critic_loss(key, real, u)
    assert_tree_allclose(aux["gradient_penalty"], jnp.asarray((norm_x - 1.0) ** 2))
    fake_gan = gan.sample(jax.random.split(key)[0], n, u)
    expected = jnp.mean(fake_gan @ w[:d]) - jnp.mean(real @ w[:d]) + 10.0 * (norm_x - 1.0) ** 2
    assert_tree_allclose(loss, expected)


def test_training_moves_the_generated_mean_to_the_data():
    """1-D target N(3, 0.5²); the generator starts near N(0, ·) (no standardisation) and moves to 3."""
    data = 3.0 + 0.5 * jax.random.normal(jax.random.key(0), (512, 1))
    gan = ConditionalGAN((1,), key=jax.random.key(1), latent_dim=1, width=16, depth=1, variant="ns")
    before = float(jnp.mean(gan.sample(jax.random.key(2), 2000)))
    res = gen.train(gan, data, optimizer=optax.adam(3e-3, b1=0.5), steps=300, batch_size=64,
                    key=jax.random.key(3), log_every=300, progress=False)  # fmt: skip
    after = float(jnp.mean(res.model.sample(jax.random.key(2), 2000)))
    assert abs(after - 3.0) < 0.25 * abs(before - 3.0), (before, after)
    assert {"loss", "critic_loss", "d_real", "d_fake"} <= set(res.history)


def test_wgan_gp_critic_alone_estimates_the_wasserstein_distance():
    """With the generator frozen (a ``(critic, generator)`` optimizer pair whose second member is zero), the WGAN-GP
    critic's ``E D(x) − E D(G(z))`` on fresh samples converges to (a known multiple of) W₁ between the data and the
    generator's law; in 1-D
    W₁ is exact by the quantile coupling (sorted samples). Checks the critic loss, the penalty and the two-optimizer
    path of the training loop together."""
    data = 2.0 + jax.random.normal(jax.random.key(0), (4096, 1))
    gan = ConditionalGAN((1,), key=jax.random.key(1), latent_dim=1, width=16, depth=1)  # standardisation 0 / 1
    optimizer = (optax.adam(3e-3, b1=0.5, b2=0.9), optax.set_to_zero())
    res = gen.train(gan, data, optimizer=optimizer, steps=300, batch_size=256, key=jax.random.key(2), log_every=300,
                    progress=False)  # fmt: skip
    model = res.model
    assert_tree_allclose(
        eqx.filter(model.generator, eqx.is_inexact_array), eqx.filter(gan.generator, eqx.is_inexact_array)
    )
    m = 4096
    fake = model.sample(jax.random.key(3), m)
    real = 2.0 + jax.random.normal(jax.random.key(4), (m, 1))
    w1 = float(jnp.mean(jnp.abs(jnp.sort(real[:, 0]) - jnp.sort(fake[:, 0]))))
    estimate = float(jnp.mean(model.discriminate(real)) - jnp.mean(model.discriminate(fake)))
    # the soft penalty lets the slope exceed 1: maximising s W₁ − λ (s − 1)² gives s = 1 + W₁ / (2λ)
    expected = w1 * (1.0 + w1 / (2 * gan.gradient_penalty))
    assert abs(estimate - expected) < 0.03 * expected, (estimate, expected, w1)


def _cyclegan_with_maps(a, b):
    """A CycleGAN whose G is ``y = a x + b`` and F its exact inverse (standardisation 0 / 1)."""
    cg = CycleGAN((1,), (1,), key=jax.random.key(0), width=8, depth=1, residual=False)
    g = eqx.tree_at(lambda m: (m.weight, m.bias), eqx.nn.Linear(1, 1, key=jax.random.key(1)),
                    (jnp.array([[a]]), jnp.array([b])))  # fmt: skip
    f = eqx.tree_at(lambda m: (m.weight, m.bias), eqx.nn.Linear(1, 1, key=jax.random.key(2)),
                    (jnp.array([[1.0 / a]]), jnp.array([-b / a])))  # fmt: skip
    return eqx.tree_at(lambda m: (m.g, m.f), cg, (g, f))


def test_cycle_loss_is_zero_for_exact_inverse_maps_and_the_learned_sensor_composes():
    cg = _cyclegan_with_maps(2.0, 0.5)
    x = jax.random.normal(jax.random.key(0), (20, 1))
    y = jax.random.normal(jax.random.key(1), (20, 1))
    assert_tree_allclose(cg.cycle_loss(x, y), jnp.asarray(0.0), atol=1e-12)
    assert_tree_allclose(cg.to_real(x), 2.0 * x + 0.5)
    assert_tree_allclose(cg.to_sim(cg.to_real(x)), x)
    assert cg.to_real(x[0]).shape == (1,)  # one event
    assert float(cg.cycle_loss(x, y)) == float(cg.generator_loss(jax.random.key(2), (x, y))[1]["cycle"])
    # a non-inverse pair has a positive cycle loss
    off = eqx.tree_at(lambda m: m.f.bias, cg, jnp.array([0.1]))
    assert float(off.cycle_loss(x, y)) > 0.1
    # G ∘ h as the sensor function of a Gaussian observation model
    sensor = tj.GaussianObservation(TranslatedSensor(cg, lambda t, s, u: s[:1]), cov=jnp.eye(1) * 0.01)
    state = jnp.array([0.3, -1.0])
    assert_tree_allclose(sensor.mean(0.0, state, jnp.zeros(1)), jnp.array([2.0 * 0.3 + 0.5]))


@pytest.mark.parametrize("variant", ["ns", "wgan-gp"])
def test_cyclegan_losses_gradients_and_a_short_training_run(variant):
    x = jax.random.normal(jax.random.key(0), (64, 1))
    y = 1.0 + 0.5 * jnp.tanh(jax.random.normal(jax.random.key(1), (64, 1)))
    cg = CycleGAN((1,), (1,), key=jax.random.key(2), width=8, depth=1, variant=variant, identity_weight=0.5,
                  x_data=x, y_data=y)  # fmt: skip
    for name in ("critic_loss", "generator_loss"):
        loss, aux, finite = _loss_and_grads(cg, name, jax.random.key(3), (x, y))
        assert loss.shape == () and bool(finite) and all(np.isfinite(float(v)) for v in aux.values())
    mask = cg.critic_filter()
    assert all(jax.tree.leaves(eqx.filter((mask.critic_x, mask.critic_y), eqx.is_array_like)))
    assert not any(jax.tree.leaves(eqx.filter((mask.g, mask.f), eqx.is_array_like)))
    if variant == "ns":  # one training run (the wgan-gp one) is enough for the plumbing
        return
    res = gen.train(cg, (x, y), optimizer=optax.adam(1e-3), steps=4, batch_size=16, key=jax.random.key(4),
                    log_every=4, progress=False)  # fmt: skip
    assert res.history["cycle"].shape == (4,) and np.all(np.isfinite(res.history["loss"]))
    assert res.model.sample(jax.random.key(5), 64, x).shape == (64, 1)


def test_bad_arguments_are_named():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="variant"):
        ConditionalGAN((2,), key=key, variant="lsgan")
    with pytest.raises(ValueError, match="critic_steps"):
        ConditionalGAN((2,), key=key, critic_steps=0)
    with pytest.raises(ValueError, match="gradient_penalty"):
        ConditionalGAN((2,), key=key, gradient_penalty=-1.0)
    with pytest.raises(ValueError, match="event_shape"):
        ConditionalGAN((0,), key=key)
    with pytest.raises(ValueError, match="latent_dim"):
        ConditionalGAN((2,), key=key, latent_dim=0)
    with pytest.raises(ValueError, match="data"):
        ConditionalGAN((2,), key=key, data=jnp.zeros((10, 3)))
    gan = ConditionalGAN((2,), key=key, cond_dim=1, width=4, depth=1)
    with pytest.raises(ValueError, match="cond"):
        gan.sample(key, 3)
    with pytest.raises(ValueError, match="cond"):
        gan.sample(key, 3, jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="unconditional"):
        ConditionalGAN((2,), key=key, width=4, depth=1).sample(key, 3, jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="shape"):
        gan.critic_loss(key, jnp.zeros((3, 5)), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="identity_weight"):
        CycleGAN((1,), (2,), key=key, identity_weight=1.0)
    with pytest.raises(ValueError, match="cycle_weight"):
        CycleGAN((1,), (1,), key=key, cycle_weight=-1.0)
    cg = CycleGAN((1,), (1,), key=key, width=4, depth=1)
    with pytest.raises(ValueError, match="pair"):
        cg.critic_loss(key, jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="cond"):
        cg.generator_loss(key, (jnp.zeros((3, 1)), jnp.zeros((3, 1))), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="cond"):
        cg.sample(key, 3)
    with pytest.raises(ValueError, match="x"):
        cg.to_real(jnp.zeros((3, 2)))


# ---------------------------------------------------------------------------------------------------------------------
# acceptance (slow): generated samples against held-out data, judged by two independent data samples


def v_statistics(x, y, bandwidths):
    """Biased (V-statistic) MMD² and energy distance. The unbiased forms of :mod:`twinjax.generative.metrics` have
    mean 0 for two samples of one distribution, so "within 2× of the data-vs-data figure" needs the V-statistics,
    whose data-vs-data value is the positive finite-sample floor ``O(1/n)``."""
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    dxx, dyy, dxy = pairwise_distances(x, x), pairwise_distances(y, y), pairwise_distances(x, y)
    k = lambda d: jnp.sum(jnp.exp(-(d[..., None] ** 2) / (2 * bandwidths**2)), -1)  # noqa: E731
    mmd2 = jnp.mean(k(dxx)) + jnp.mean(k(dyy)) - 2 * jnp.mean(k(dxy))
    energy = 2 * jnp.mean(dxy) - jnp.mean(dxx) - jnp.mean(dyy)
    return float(mmd2), float(energy)


def ratios(samples, reference, held_out):
    flat = held_out.reshape(held_out.shape[0], -1)
    d = pairwise_distances(flat, flat)
    bandwidths = jnp.median(d[d > 0]) * jnp.asarray([0.25, 0.5, 1.0, 2.0, 4.0])
    model, data = v_statistics(samples, held_out, bandwidths), v_statistics(reference, held_out, bandwidths)
    return {"mmd": model[0] / data[0], "energy": model[1] / data[1], "model": model, "data": data}


def _pendulum_trajectories(key, n, n_times=20, dt=0.1):
    """Angle trajectories ``(n, time, 1)`` of the pendulum twin from random initial states, each under a constant
    torque ``u ~ U[-2, 2]`` N m (the condition)."""
    from physics.pendulum import Pendulum, pendulum_twin

    k0, ku = jax.random.split(key)
    x0 = jax.random.normal(k0, (n, 2)) * jnp.array([0.5, 1.0])
    u = jax.random.uniform(ku, (n, 1), minval=-2.0, maxval=2.0)
    us = jnp.broadcast_to(u[:, None, :], (n, n_times - 1, 1))
    ts = dt * jnp.arange(n_times)
    path = tj.ensemble(pendulum_twin(Pendulum()), ts, x0=x0, controls=us, key=key, observe=False, substeps=2,
                       shard=False)  # fmt: skip
    return path.xs[..., :1], u


# (critic, generator) optimizers, steps and ConditionalGAN keyword arguments of each variant. WGAN-GP: Gulrajani et
# al.'s Adam(β1 = 0.5, β2 = 0.9) and 5 critic steps, the critic at 10× the generator's learning rate (two time-scale
# update rule: at one learning rate for both, 1e-4 or 1e-3, the critic trails the generator, its Wasserstein estimate
# turns negative and the generated cloud stays diffuse, MMD ratio 20–400 after 3000 steps), and the penalty weight of
# their toy-data code (gan_toy.py), λ = 0.1. With λ = 10 this test passes (two moons 1.79 / 1.51, pendulum
# 0.91 / 0.97), but the critic's estimate sits near 0 while the two-moons ratios wander from seed to seed and
# checkpoint to checkpoint (float32 runs, seeds 1–3 at 20 000 steps, MMD / energy: 1.52 / 1.76, 2.35 / 2.20,
# 2.91 / 2.97; 2.2–4.2 at 30 000–40 000 steps); λ = 0.1 (float32, seeds 0–3): 1.26 / 1.19, 1.32 / 1.56,
# 1.58 / 1.77, 1.66 / 2.13, so the margin on two moons still depends on the seed.
RECIPES = {
    "ns": (optax.adam(1e-3, b1=0.5, b2=0.9), 20000, {}),
    "wgan-gp": ((optax.adam(1e-3, b1=0.5, b2=0.9), optax.adam(1e-4, b1=0.5, b2=0.9)), 20000, {"gradient_penalty": 0.1}),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    ["ns", "wgan-gp"],
)
@pytest.mark.parametrize("dataset", ["two_moons", "pendulum"])
def test_generated_samples_match_held_out_data_within_twice_the_data_floor(dataset, variant):
    """MMD² and energy distance (V-statistics, bandwidths from the held-out set) of ``n`` generated samples to ``n``
    held-out ones are within 2× those of ``n`` independent data samples to the same held-out set. Pendulum: a GAN
    conditioned on the torque, sampled at the held-out torques. Measured (n = 1000), MMD / energy: non-saturating,
    two moons 1.25 / 1.27, pendulum 0.80 / 0.83 (about 1–2 minutes each on a 2-core CPU); WGAN-GP (recipe
    above: λ = 0.1, 20 000 steps) two moons 1.58 / 1.29, pendulum 1.07 / 1.11 (about 1 and 4 minutes; 2.5 and
    7 minutes when the 2 cores are shared). The two-moons margin depends on the seed (see the note above RECIPES)."""
    n = 1000
    if dataset == "two_moons":
        train, held_out, reference = (
            gen.datasets.two_moons(jax.random.key(i), m) for i, m in ((1, 20000), (2, n), (3, n))
        )
        cond = held_cond = None
        shape, cond_dim = (2,), 0
    else:
        (train, cond), (held_out, held_cond), (reference, _) = (
            _pendulum_trajectories(jax.random.key(i), m) for i, m in ((1, 20000), (2, n), (3, n))
        )
        shape, cond_dim = train.shape[1:], 1
    width = 64 if dataset == "two_moons" else 128  # 64 gave an energy ratio of 2.3 on the 20-step trajectories (ns)
    optimizer, steps, kwargs = RECIPES[variant]
    gan = ConditionalGAN(shape, key=jax.random.key(0), data=train, latent_dim=4, cond_dim=cond_dim, width=width,
                         depth=2, variant=variant, **kwargs)  # fmt: skip
    res = gen.train(gan, train, cond=cond, optimizer=optimizer, steps=steps, batch_size=128, key=jax.random.key(4),
                    log_every=2000, ema_decay=0.999, progress=False)  # fmt: skip
    samples = res.model.sample(jax.random.key(5), n, held_cond)
    r = ratios(samples, reference, held_out)
    print(dataset, variant, r, f"compile {res.compile_s:.0f} s, run {res.run_s:.0f} s")
    assert r["mmd"] <= 2.0 and r["energy"] <= 2.0, r
