"""Distribution matching: calibrate a simulator's parameters when no paired trajectories exist.

Chapter 001 ("generative synchronisation", the distribution-matching view): when the sensor records cannot be paired
with simulated runs (unknown initial conditions, unrecorded noise), the twin is calibrated by making the
*distribution* of its simulated sensor readings match the observed one. :func:`distribution_matching` minimises, over
the unconstrained parameters ``z`` of a :class:`~twinjax.Params` spec, a sample distance between ``n_sim`` simulated
sensor trajectories (fresh initial states and noise each step, reparameterised so the gradient flows through the
solver) and the observed ones:

- ``distance="mmd"`` — the unbiased MMD² with the multi-scale Gaussian kernel of :func:`~twinjax.generative.mmd`;
- ``distance="energy"`` — the energy distance;
- ``distance="critic"`` — a Wasserstein critic: an MLP ``D`` trained with a gradient penalty (WGAN-GP) to maximise
  ``E D(y_obs) − E D(y_sim)``, alternating ``critic_steps`` critic updates with one parameter update that minimises
  ``−E D(y_sim(φ))``.

Each step is stochastic (new simulations), so the optimiser is optax (Adam by default) in one compiled ``lax.scan``.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._types import Array
from ..model.params import Params
from ..simulate.simulate import simulate
from .metrics import energy_distance, mmd

__all__ = ["MatchingResult", "distribution_matching"]


@dataclasses.dataclass(frozen=True)
class MatchingResult:
    """Result of :func:`distribution_matching`.

    Attributes:
        model: the twin at the final parameters.
        params: the final physical parameter values, ``(param,)``.
        history: ``(steps, param)`` physical parameters before each step.
        losses: ``(steps,)`` the distance (for ``"critic"``: the critic's Wasserstein estimate) at each step.
    """

    model: object
    params: Array
    history: Array
    losses: Array


class _Critic(eqx.Module):
    mlp: eqx.nn.MLP
    mean: Array
    scale: Array

    def __call__(self, y):
        return self.mlp((y.ravel() - self.mean) / self.scale)


def _simulator(twin, spec, ts, controls, n_sim):
    def sim(z, key):
        model = spec.from_unconstrained(twin, z)
        keys = jax.random.split(key, n_sim)
        return jax.vmap(lambda k: simulate(model, None, ts, controls=controls, key=k).ys)(keys)

    return sim


def distribution_matching(
    twin,
    spec: Params,
    observed,
    ts,
    *,
    key: jax.Array,
    controls=None,
    n_sim: int | None = None,
    steps: int = 300,
    optimizer=None,
    distance: str = "mmd",
    critic_width: int = 64,
    critic_steps: int = 5,
    critic_lr: float = 1e-3,
    gradient_penalty: float = 10.0,
) -> MatchingResult:
    """Fit ``spec``'s parameters of ``twin`` so that its simulated sensor trajectories match ``observed`` in law.

    Args:
        twin: the twin (its current parameter values are the start).
        spec: which parameters are fitted (:class:`~twinjax.Params`).
        observed: observed sensor trajectories ``(n, time, obs)``, unpaired with any simulation; no NaN.
        ts: the sampling times ``(time,)``.
        key: PRNG key (simulations each step; the critic's initialisation).
        controls: the inputs, as for :func:`~twinjax.simulate` (shared by all trajectories).
        n_sim: simulated trajectories per step (default: as many as observed).
        steps: optimiser steps.
        optimizer: optax transformation over ``z`` (default ``optax.adam(0.05)``).
        distance: ``"mmd"``, ``"energy"`` or ``"critic"`` (see the module docstring).
        critic_width, critic_steps, critic_lr, gradient_penalty: the Wasserstein critic's settings.

    Returns:
        A :class:`MatchingResult`.
    """
    observed = jnp.asarray(observed)
    if observed.ndim != 3:
        raise ValueError(f"distribution_matching: `observed` must be (n, time, obs), got shape {observed.shape}")
    if not bool(jnp.all(jnp.isfinite(observed))):
        raise ValueError("distribution_matching: `observed` contains NaN or inf (missing values are not supported)")
    ts = jnp.asarray(ts)
    if ts.shape != observed.shape[1:2]:
        raise ValueError(f"distribution_matching: `ts` must have shape ({observed.shape[1]},), got {ts.shape}")
    if distance not in ("mmd", "energy", "critic"):
        raise ValueError(f"distribution_matching: `distance` must be 'mmd', 'energy' or 'critic', got {distance!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"distribution_matching: `steps` must be a positive int, got {steps!r}")
    n_sim = observed.shape[0] if n_sim is None else n_sim
    if n_sim < 2:
        raise ValueError(f"distribution_matching: `n_sim` must be at least 2, got {n_sim}")
    optimizer = optax.adam(0.05) if optimizer is None else optimizer
    sim = _simulator(twin, spec, ts, controls, n_sim)
    z0 = spec.to_unconstrained(twin).astype(observed.dtype)
    k_critic, k_run = jax.random.split(key)
    if distance == "critic":
        flat = observed.reshape(observed.shape[0], -1)
        mlp = eqx.nn.MLP(flat.shape[1], "scalar", critic_width, 2, activation=jax.nn.silu, key=k_critic)
        critic = _Critic(mlp, jnp.mean(flat, 0), jnp.std(flat, 0) + 1e-6)
        result = _run_critic(
            sim, z0, observed, critic, optimizer, k_run, steps, critic_steps, critic_lr, gradient_penalty
        )
    else:
        dist = mmd if distance == "mmd" else energy_distance
        result = _run_distance(sim, z0, observed, dist, optimizer, k_run, steps)
    z, zs, losses = result
    physical = jax.vmap(lambda zz: spec.constrain(twin, zz))
    model = spec.from_unconstrained(twin, z)
    return MatchingResult(model, spec.values(model), physical(zs), losses)


@eqx.filter_jit
def _run_distance(sim, z0, observed, dist, optimizer, key, steps):
    def loss(z, k):
        return dist(sim(z, k), observed)

    def body(carry, k):
        z, state = carry
        value, grad = jax.value_and_grad(loss)(z, k)
        updates, state = optimizer.update(grad, state, z)
        return (optax.apply_updates(z, updates), state), (z, value)

    (z, _), (zs, losses) = jax.lax.scan(body, (z0, optimizer.init(z0)), jax.random.split(key, steps))
    return z, zs, losses


@eqx.filter_jit
def _run_critic(sim, z0, observed, critic, optimizer, key, steps, critic_steps, critic_lr, penalty):
    critic_opt = optax.adam(critic_lr, b1=0.5, b2=0.9)
    mlp_params, mlp_static = eqx.partition(critic.mlp, eqx.is_inexact_array)

    def d_of(mp, y):
        return eqx.tree_at(lambda c: c.mlp, critic, eqx.combine(mp, mlp_static))(y)

    def critic_loss(mp, y_sim, k):
        n = min(y_sim.shape[0], observed.shape[0])
        a, b = observed[:n], y_sim[:n]
        eps = jax.random.uniform(k, (n, 1, 1))
        mid = eps * a + (1 - eps) * b
        grads = jax.vmap(jax.grad(lambda y: d_of(mp, y)))(mid)
        gp = jnp.mean((jnp.sqrt(jnp.sum(grads**2, axis=(1, 2)) + 1e-12) - 1.0) ** 2)
        w = jnp.mean(jax.vmap(lambda y: d_of(mp, y))(observed)) - jnp.mean(jax.vmap(lambda y: d_of(mp, y))(y_sim))
        return -w + penalty * gp, w

    def body(carry, k):
        z, state, mp, cstate = carry
        k_sims, k_gp, k_gen = jax.random.split(k, 3)

        def critic_update(c, kk):
            mp, cstate = c
            k1, k2 = jax.random.split(kk)
            y_sim = jax.lax.stop_gradient(sim(z, k1))
            (_, w), g = jax.value_and_grad(critic_loss, has_aux=True)(mp, y_sim, k2)
            updates, cstate = critic_opt.update(g, cstate, mp)
            return (optax.apply_updates(mp, updates), cstate), w

        (mp, cstate), ws = jax.lax.scan(critic_update, (mp, cstate), jax.random.split(k_sims, critic_steps))

        def gen_loss(zz):
            return -jnp.mean(jax.vmap(lambda y: d_of(mp, y))(sim(zz, k_gen)))

        grad = jax.grad(gen_loss)(z)
        updates, state = optimizer.update(grad, state, z)
        return (optax.apply_updates(z, updates), state, mp, cstate), (z, ws[-1])

    init = (z0, optimizer.init(z0), mlp_params, critic_opt.init(mlp_params))
    (z, *_), (zs, losses) = jax.lax.scan(body, init, jax.random.split(key, steps))
    return z, zs, losses
