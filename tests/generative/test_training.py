"""The shared training loop, checkpoints, metrics, datasets and the flax adapter."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import twinjax.generative as gen
from twinjax.generative import training as train_mod
from twinjax.generative.datasets import two_moons, two_moons_entropy, two_moons_log_prob


class Gaussian(gen.AbstractGenerativeModel):
    """A diagonal Gaussian with learnable mean and log-sd: its MLE is the sample mean and (biased) sd."""

    has_log_prob = True
    mean: jax.Array
    log_sd: jax.Array

    def sample(self, key, n, cond=None):
        return self.mean + jnp.exp(self.log_sd) * jax.random.normal(key, (n, self.mean.shape[0]))

    def log_prob(self, x, cond=None):
        z = (x - self.mean) * jnp.exp(-self.log_sd)
        return jnp.sum(-0.5 * z**2 - self.log_sd - 0.5 * jnp.log(2 * jnp.pi), -1)

    def loss(self, key, batch, cond=None, scale=1.0):
        nll = -jnp.mean(self.log_prob(batch))
        return scale * nll, {"nll": nll}


def _data():
    return 3.0 + 0.5 * jax.random.normal(jax.random.key(1), (512, 2))


def test_gaussian_mle_is_reached_and_history_is_logged(tmp_path):
    data = _data()
    model = Gaussian(jnp.zeros(2), jnp.zeros(2))
    res = gen.train(
        model, data, optimizer=optax.adam(0.05), steps=600, batch_size=512, key=jax.random.key(0),
        log_every=200, out_dir=tmp_path, progress=False,
    )  # fmt: skip
    # full-batch with replacement: the optimum of each step's loss scatters around the MLE by ~sd/sqrt(512)
    np.testing.assert_allclose(res.model.mean, jnp.mean(data, 0), atol=4 * 0.5 / np.sqrt(512))
    np.testing.assert_allclose(jnp.exp(res.model.log_sd), jnp.std(data, 0), rtol=0.1)
    assert res.history["loss"].shape == (600,) and res.history["step"][-1] == 600
    assert res.history["loss"][-1] < res.history["loss"][0]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,loss,nll"


def test_resumed_run_is_bit_identical_and_no_retracing(tmp_path):
    data = _data()
    model = Gaussian(jnp.zeros(2), jnp.zeros(2))
    kw = dict(optimizer=optax.adam(0.05), batch_size=32, key=jax.random.key(3), log_every=10, progress=False)
    full = gen.train(model, data, steps=40, ema_decay=0.9, **kw)
    # stop after 20 steps (a checkpoint), then resume to 40 from the folder
    gen.train(model, data, steps=20, out_dir=tmp_path, ema_decay=0.9, **kw)
    before = train_mod.TRACES["chunk"]
    resumed = gen.train(model, data, steps=40, out_dir=tmp_path, ema_decay=0.9, **kw)
    assert train_mod.TRACES["chunk"] == before  # same chunk length and shapes: no new trace
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(full.history["loss"], resumed.history["loss"])
    assert resumed.history["step"].tolist() == list(range(1, 41))


def test_loss_kwargs_reach_the_loss_and_bad_input_is_named():
    data = _data()
    model = Gaussian(jnp.zeros(2), jnp.zeros(2))
    kw = dict(optimizer=optax.sgd(0.0), steps=1, batch_size=512, key=jax.random.key(0), progress=False)
    one = gen.train(model, data, **kw).history["loss"][0]
    two = gen.train(model, data, scale=2.0, **kw).history["loss"][0]
    np.testing.assert_allclose(two, 2 * one, rtol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        gen.train(model, data, **{**kw, "batch_size": 0})
    with pytest.raises(ValueError, match="NaN"):
        gen.train(model, data.at[0, 0].set(jnp.nan), **kw)
    with pytest.raises(TypeError, match="AbstractGenerativeModel"):
        gen.train(object(), data, **kw)
    with pytest.raises(FloatingPointError, match="non-finite"):
        gen.train(model, data, scale=float("nan"), **kw)


def test_mmd_and_energy_distance_against_numpy():
    x = jax.random.normal(jax.random.key(0), (50, 3))
    y = 0.5 + jax.random.normal(jax.random.key(1), (60, 3))
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def d(a, b):
        return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))

    dxx, dyy, dxy = d(xn, xn), d(yn, yn), d(xn, yn)
    ed = 2 * dxy.mean() - dxx.sum() / (50 * 49) - dyy.sum() / (60 * 59)
    np.testing.assert_allclose(gen.energy_distance(x, y), ed, rtol=1e-4)
    h = np.array([0.7, 1.3])
    k = lambda dd: np.exp(-(dd[..., None] ** 2) / (2 * h**2)).sum(-1)  # noqa: E731
    kxx, kyy = k(dxx), k(dyy)
    ref = (kxx.sum() - np.trace(kxx)) / (50 * 49) + (kyy.sum() - np.trace(kyy)) / (60 * 59) - 2 * k(dxy).mean()
    np.testing.assert_allclose(gen.mmd(x, y, bandwidths=jnp.asarray(h)), ref, rtol=1e-4)
    # unbiased: two samples of one distribution give MMD² ≈ 0 (within its MC error), a shifted one does not
    same = [float(gen.mmd(jax.random.normal(jax.random.key(i), (200, 2)),
                          jax.random.normal(jax.random.key(100 + i), (200, 2)))) for i in range(20)]  # fmt: skip
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(20)
    assert float(gen.mmd(x, y)) > 5 * np.std(same)


def test_two_moons_density_integrates_to_one_and_entropy_matches_reference():
    g = jnp.linspace(-2.0, 3.0, 201)
    xx, yy = jnp.meshgrid(g, g)
    pts = jnp.stack([xx.ravel(), yy.ravel()], 1)
    total = jnp.sum(jnp.exp(two_moons_log_prob(pts, quadrature=512))) * (g[1] - g[0]) ** 2
    np.testing.assert_allclose(total, 1.0, atol=2e-3)
    h, se = two_moons_entropy(jax.random.key(0), 0.1, n=20_000)
    assert abs(float(h) - 1.00) < 0.02 + 3 * float(se)  # REFERENCES.md: about 1.00 nats at noise 0.1
    x = two_moons(jax.random.key(1), 1000)
    assert x.shape == (1000, 2) and x.dtype == jnp.zeros(()).dtype


def test_nnx_module_serves_as_a_network_and_trains():
    nnx = pytest.importorskip("flax.nnx")

    class Shift(gen.AbstractGenerativeModel):
        net: eqx.Module  # a flax network through the adapter: maps a constant to the mean

        def sample(self, key, n, cond=None):
            return self.net(jnp.ones((1, 1)))[0] + jax.random.normal(key, (n, 2))

        def loss(self, key, batch, cond=None):
            return jnp.mean(jnp.sum((batch - self.net(jnp.ones((1, 1)))[0]) ** 2, -1)), {}

    net = gen.from_nnx(nnx.Linear(1, 2, rngs=nnx.Rngs(0)))
    np.testing.assert_allclose(net(jnp.ones((1, 1))), net.to_nnx()(jnp.ones((1, 1))))
    res = gen.train(Shift(net), _data(), optimizer=optax.adam(0.05), steps=300, batch_size=512,
                    key=jax.random.key(0), progress=False)  # fmt: skip
    np.testing.assert_allclose(res.model.net(jnp.ones((1, 1)))[0], jnp.mean(_data(), 0), atol=0.05)
    g = jax.grad(lambda m: m.loss(None, _data())[0])(res.model)
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array)))
    with pytest.raises(TypeError, match="nnx.Module"):
        gen.from_nnx(lambda x: x)
