"""The generative contract (``twinjax.generative._base``), one suite over every family (STYLE.md §20).

Every family in :data:`FAMILIES` — affine, spline and conditional coupling flows, a VAE with a neural decoder, a
pendulum PhysicsVAE, a conditional non-saturating GAN, VP and VE score diffusion — is built untrained and tiny, and
must:

- ``sample(key, n, cond)``: shape ``(n, *event_shape)``, the model's float type (float64 here; float32 when its arrays
  are float32), finite; the same key gives the same draws, another key other draws;
- ``log_prob(x, cond)``: shape ``(n,)`` and finite where ``has_log_prob``, ``NotImplementedError`` otherwise; a 2-D
  density integrates to one over the plane;
- ``loss(key, batch, cond)``: a finite scalar whose gradient is finite in every leaf (adversarial families: the
  critic's and the generator's losses);
- train through :func:`twinjax.generative.train` with one compilation for all of its steps.

The families' own maths (invertibility, ELBO identities, exact scores, penalties) is tested in their own files.
"""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import twinjax as tj
import twinjax.generative as gen
from physics import pendulum_twin
from twinjax.generative import training
from twinjax.generative.datasets import two_moons

N = 6  # draws per sample call
BATCH = 16


@dataclasses.dataclass(frozen=True)
class Family:
    """A tiny untrained member of one family: ``build() -> model``, ``data(model) -> (x, cond)`` (``BATCH`` rows),
    ``sample_kw`` for a cheap sampler where a family has several, and the quadrature of its 2-D density (``box``:
    half-width of the square grid, ``h``: its spacing, ``tol``: allowed ``|mass − 1|``, see the integration test)."""

    build: Callable
    data: Callable
    cond_dim: int = 0
    sample_kw: dict = dataclasses.field(default_factory=dict)
    box: float = 0.0
    h: float = 0.0
    tol: float = 0.0


def _moons(model):
    return two_moons(jax.random.key(11), BATCH), None


def _moons_cond(model):
    x = two_moons(jax.random.key(11), BATCH)
    return x, x[:, :1] + 0.1 * jax.random.normal(jax.random.key(12), (BATCH, 1))


def _waves(model):
    t = 0.2 * jnp.arange(5)
    phase = jax.random.uniform(jax.random.key(13), (BATCH, 1, 1), maxval=2 * np.pi)
    return jnp.concatenate([jnp.cos(t[:, None] + phase), -jnp.sin(t[:, None] + phase)], -1), None


def _own_samples(model):
    return model.sample(jax.random.key(14), BATCH, noise=True), None


def _flow(kind, cond_dim=0):
    return lambda: gen.CouplingFlow(2, jax.random.key(1), layers=2, hidden=8, depth=1, kind=kind, bins=4, bound=3.0,
                                    cond_dim=cond_dim)  # fmt: skip


def _physics_vae():
    spec = tj.Params({"dynamics.length_m": tj.positive()})
    ts = 0.1 * jnp.arange(5)
    return gen.PhysicsVAE(pendulum_twin(dt=0.1), ts, key=jax.random.key(2), latent=spec, tableau="rk4", substeps=2,
                          map_width=4, width=8, depth=1)  # fmt: skip


class _AroundGaussianScore(eqx.Module):
    """``ε̂(x, t) = σ_t ∇ log p_t(x)`` of standard-normal data, ``−σ_t x / (α_t² + σ_t²)``, plus a tenth of an
    untrained :class:`~twinjax.generative.ScoreNet`. A bare untrained network does not undo the VP SDE's contraction
    by ``α_T ≈ 0.006``: its model density has a standard deviation of ~1/α_T ≈ 160 and no box of the quadrature
    holds it; around the Gaussian score the density stays near the data scale and is still not Gaussian."""

    net: gen.ScoreNet
    sde: gen.AbstractSDE

    def __call__(self, x, t, cond=None):
        alpha, sigma = self.sde.marginal_coeffs(t)
        return -sigma * x / (alpha**2 + sigma**2) + 0.1 * self.net(x, t, cond)


def _diffusion(sde):
    def build():
        net = gen.ScoreNet(2, jax.random.key(3), width=8, depth=1, n_freqs=2)
        return gen.ScoreDiffusion(2, jax.random.key(3), sde=sde, net=_AroundGaussianScore(net, sde))

    return build


def _vae_neural():
    decoder = gen.NeuralDecoder(2, (5, 2), jax.random.key(4), width=8, depth=1)
    return gen.VAE(decoder, jax.random.key(5), width=8, depth=1)


def _gan():
    return gen.ConditionalGAN((2,), key=jax.random.key(6), latent_dim=2, cond_dim=1, width=8, depth=1, variant="ns")


# Quadrature of the 2-D densities: the midpoint rule on [−box, box]², |mass − 1| measured (h; h/2; box + 3):
# - affine flow 4e-8 (4e-8; 8e-14): the mass outside the box; the midpoint rule converges spectrally on a smooth
#   density, so the grid adds nothing visible;
# - spline flow 1.2e-4 (5e-6; 1.2e-4): the grid; the spline density is only piecewise smooth (C¹ knots), so the rule
#   is O(h²) there;
# - conditional affine flow 7e-5 (7e-5; 1e-8): the mass outside the box;
# - VP diffusion 9e-8, VE diffusion 9e-6, unchanged by h or the box: the error of the log-density's ODE solve
#   (Tsit5, rtol = atol = 1e-5).
# The tolerances are ~10× those figures (1e-5 at the least).
SDE = {"method": "sde", "steps": 8}  # the cheaper sampler of a diffusion model
FAMILIES = {
    "flow_affine": Family(_flow("affine"), _moons, box=7.0, h=0.1, tol=1e-5),
    "flow_spline": Family(_flow("spline"), _moons, box=7.0, h=0.1, tol=1e-3),
    "flow_conditional": Family(_flow("affine", 1), _moons_cond, cond_dim=1, box=7.0, h=0.1, tol=1e-3),
    "vae_neural": Family(_vae_neural, _waves),
    "vae_physics": Family(_physics_vae, _own_samples),
    "gan_ns": Family(_gan, _moons_cond, cond_dim=1),
    "diffusion_vp": Family(_diffusion(gen.VPSDE()), _moons, sample_kw=SDE, box=7.0, h=0.25, tol=1e-5),
    "diffusion_ve": Family(
        _diffusion(gen.VESDE(sigma_min=0.01, sigma_max=3.0)), _moons, sample_kw=SDE, box=16.0, h=0.4, tol=1e-4
    ),
}
IDS = list(FAMILIES)
DIFFUSION = ("diffusion_vp", "diffusion_ve")


def _params(*, slow=(), xfail=(), reason=""):
    """The family names as pytest parameters, ``slow`` ones marked slow, ``xfail`` ones expected to fail (strictly:
    a fix makes the test fail until the mark is removed)."""
    params = []
    for n in IDS:
        marks = [pytest.mark.slow] if n in slow else []
        if n in xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(n, marks=marks))
    return params


# ScoreDiffusion draws its prior with jax.random.normal's default float type, so a float32 model samples float64


def _cond(family, n, dtype=jnp.float64):
    return None if family.cond_dim == 0 else jnp.linspace(-1.0, 1.0, n, dtype=dtype)[:, None]


def _float32(model):
    return jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model)


@pytest.mark.parametrize("name", IDS)
def test_sample_shape_dtype_and_key_determinism(name):
    family = FAMILIES[name]
    model = family.build()
    cond = _cond(family, N)
    draw = lambda k: model.sample(jax.random.key(k), N, cond, **family.sample_kw)  # noqa: E731
    x = draw(0)
    data, _ = family.data(model)
    assert x.shape == (N, *data.shape[1:])  # draws look like the training data
    assert x.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_array_equal(draw(0), x)  # same key, same draws
    other = draw(1)
    assert float(jnp.min(jnp.max(jnp.abs(other - x).reshape(N, -1), axis=1))) > 0  # every draw differs


@pytest.mark.parametrize("name", _params(slow=DIFFUSION))
def test_a_float32_model_samples_float32(name):
    family = FAMILIES[name]
    model = _float32(family.build())
    x = model.sample(jax.random.key(0), N, _cond(family, N, jnp.float32), **family.sample_kw)
    assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))


@pytest.mark.parametrize("name", _params(slow=("diffusion_ve",)))  # its PF-ODE log-density compiles for ~10 s
def test_log_prob_is_a_normalised_density_or_not_implemented(name):
    """``log_prob`` of the grid points of the quadrature: shape ``(n,)``, float64, finite, and the density integrates
    to one (every family with a density here is 2-D); families without one raise ``NotImplementedError``."""
    family = FAMILIES[name]
    model = family.build()
    if not model.has_log_prob:
        x, cond = family.data(model)
        with pytest.raises(NotImplementedError, match="has_log_prob"):
            model.log_prob(x, cond)
        return
    h, box = family.h, family.box
    g = jnp.arange(-box + h / 2, box, h)
    xx, yy = jnp.meshgrid(g, g)
    pts = jnp.stack([xx.ravel(), yy.ravel()], 1)
    cond = None if family.cond_dim == 0 else jnp.array([0.7])  # one condition, broadcast to the grid
    lp = model.log_prob(pts, cond)
    assert lp.shape == (pts.shape[0],) and lp.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(lp)))
    mass = float(jnp.sum(jnp.exp(lp)) * h**2)
    assert abs(mass - 1.0) < family.tol, mass
    base = -0.5 * jnp.sum(pts**2, 1) - jnp.log(2 * jnp.pi)
    assert float(jnp.max(jnp.abs(lp - base))) > 1e-2  # not the standard normal itself


@eqx.filter_jit
def _loss_and_finite_grads(model, name, key, batch, cond):
    (loss, _), grads = eqx.filter_value_and_grad(lambda m: getattr(m, name)(key, batch, cond), has_aux=True)(model)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    return loss, jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in leaves]))


@pytest.mark.parametrize("name", IDS)
def test_loss_is_finite_with_finite_gradients(name):
    family = FAMILIES[name]
    model = family.build()
    x, cond = family.data(model)
    losses = ("critic_loss", "generator_loss") if isinstance(model, gen.AbstractAdversarial) else ("loss",)
    for loss_name in losses:
        loss, finite = _loss_and_finite_grads(model, loss_name, jax.random.key(0), x, cond)
        assert loss.shape == () and bool(jnp.isfinite(loss)) and bool(finite), loss_name


# The pendulum twin inside the PhysicsVAE holds weakly typed float64 arrays (its scalar parameters, `ts`); `train`
# makes them strongly typed up front, or they would turn strong after an Adam update and retrace the chunk.


@pytest.mark.parametrize("name", _params(slow=("vae_physics",)))
def test_training_compiles_once_for_all_steps(name):
    family = FAMILIES[name]
    model = family.build()
    x, cond = family.data(model)
    kw = dict(optimizer=optax.adam(1e-3), batch_size=8, cond=cond, log_every=2, progress=False)
    before = training.TRACES["chunk"]
    res = gen.train(model, x, steps=6, key=jax.random.key(0), **kw)  # three chunks of two steps
    assert training.TRACES["chunk"] - before <= 1
    assert res.history["loss"].shape == (6,) and np.all(np.isfinite(res.history["loss"]))
    traced = training.TRACES["chunk"]
    gen.train(res.model, x, steps=4, key=jax.random.key(1), **kw)  # new parameters, same shapes
    assert training.TRACES["chunk"] == traced
