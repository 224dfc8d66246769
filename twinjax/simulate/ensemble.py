"""``twinjax.ensemble``: many rollouts of one twin over initial states, parameters and noise, in one compiled call.

Two engines:

- ``method="fused"`` (default for open-loop controls): one batched state ``(members, state)`` advanced by a lean
  explicit Runge–Kutta step (Euler–Maruyama for SDE twins) inside ``lax.scan``. This is the fast path: a vmapped
  adaptive ``diffeqsolve`` is several times slower on CPU (``benchmarks/ensemble.py`` measures it). Only the save
  times ``ts`` are stored, so memory is ``O(members × len(ts))``: pass ``ts=[t0, t1]`` and ``substeps=N`` to keep
  final states only.
- ``method="diffrax"``: every member is its own diffrax solve (any solver, adaptive steps, feedback policies),
  vmapped.

Either way every member has a status code; a failing member (non-finite state, ``max_steps``) is reported in
``Trajectory.status`` and the others are unaffected. The member axis is sharded across all local devices with
``jax.sharding`` (members are padded to a multiple of the device count and the padding dropped afterwards).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._checks import check_finite_leaves, check_times, is_concrete
from .._types import ArrayLike, Key
from ..model.distributions import _psd_sqrt
from ..model.dynamics import AbstractDiscreteDynamics, AbstractSDEDynamics
from ..model.params import Params
from ..model.ssm import LinearGaussianSSM
from ..model.status import Status
from . import _progress
from .rk import Tableau, get_tableau, rk_step
from .simulate import _rollout, as_model, check_controls, check_x0, with_discretisation
from .trajectory import Trajectory


def member_sharding(n_devices: int | None = None) -> NamedSharding | None:
    """A sharding that splits a leading ``member`` axis across the local devices (``None`` with one device)."""
    devices = jax.local_devices()[: n_devices or None]
    if len(devices) < 2:
        return None
    return NamedSharding(Mesh(np.asarray(devices), ("member",)), PartitionSpec("member"))


def _pad_and_shard(tree, members: int, sharding):
    """Pad every leading-``members`` leaf to a multiple of the device count, then place it sharded."""
    if sharding is None:
        return tree, members
    nd = sharding.mesh.devices.size
    padded = -(-members // nd) * nd

    def place(x):
        if not eqx.is_array(x) or x.ndim == 0 or x.shape[0] != members:
            return x
        if padded != members:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], padded - members, axis=0)])
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map(place, tree), padded


def _member_dynamics(model, spec, phi):
    return model.dynamics if spec is None else spec.with_values(model, phi).dynamics


# Sizes that keep the fused kernel's working set in cache (CPU): a block of members advances through all its steps
# before the next block starts, and SDE increments are drawn for several substeps at once.
_BLOCK_BYTES = 96 * 1024  # one (state, block) float64 array
_NOISE_CHUNK_BYTES = 1 << 20  # one chunk of Brownian increments (chunk, noise, block)


def _block_size(members: int, state: int) -> int:
    """Members per block: a power of two with ``state × block × 8 B ≈ _BLOCK_BYTES`` (all members when few)."""
    block = max(256, 1 << (int(_BLOCK_BYTES // (8 * max(state, 1))).bit_length() - 1))
    return members if members <= 2 * block else block


def _noise_chunk(substeps: int, members: int, noise: int) -> int:
    """The largest divisor of ``substeps`` whose increments fit in ``_NOISE_CHUNK_BYTES`` (1: one draw per step)."""
    cap = max(1, _NOISE_CHUNK_BYTES // (8 * members * max(noise, 1)))
    return max(c for c in range(1, min(cap, substeps) + 1) if substeps % c == 0)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _fused(model, x0s, phis, spec, us, ts, substeps, tableau, key, observe, progress, n_shards=1):
    members, n_state = x0s.shape
    n_save = ts.shape[0]
    h = (ts[-1] - ts[0]) / (n_save - 1) if n_save > 1 else jnp.zeros((), ts.dtype)
    dt = h / substeps
    k_noise, k_proc, k_obs = jax.random.split(key, 3)
    dyn = model.dynamics
    sde = isinstance(dyn, AbstractSDEDynamics)
    discrete = isinstance(dyn, AbstractDiscreteDynamics)
    shared_u = us is None or us.ndim == 2
    u_dim = model.control_dim if us is None else us.shape[-1]
    # blocks are cut inside every shard: each lax.map iteration advances one block per device, in parallel
    per_shard = -(-members // n_shards)
    block = _block_size(per_shard, n_state)
    n_blocks = -(-per_shard // block)

    q_root = None
    if getattr(model, "process_noise", None) is not None:
        frac = h / model.dt if model.dt is not None else 1.0
        q_root = _psd_sqrt(model.process_noise * frac)

    def run_block(x0b, phib, ub, b):
        """Advance one block of members through every save interval; returns ``(time - 1, state, block)``."""
        nm = x0b.shape[0]
        kb_noise = k_noise if n_blocks == 1 else jax.random.fold_in(k_noise, b)
        kb_proc = k_proc if n_blocks == 1 else jax.random.fold_in(k_proc, b)
        n_noise = 0
        if sde:
            u0 = jnp.zeros((u_dim,), x0s.dtype)
            n_noise = jax.eval_shape(lambda x: dyn.diffusion(ts[0], x, u0), x0b[0]).shape[1]
        chunk = _noise_chunk(substeps, nm, n_noise) if sde else 1

        def controls_at(k):
            if us is None:
                return jnp.zeros((nm, u_dim), x0s.dtype)
            return jnp.broadcast_to(us[k], (nm, u_dim)) if shared_u else ub[:, k]

        # The batch is state-major, (state, members): per-member functions are vmapped over its last axis, so each
        # elementwise op of a vector field runs on a contiguous row of members and no transposes enter the loop.
        def member_map(fn, t, X, U):
            if phib is None:
                return jax.vmap(lambda x, u: fn(dyn, t, x, u), in_axes=(-1, 0), out_axes=-1)(X, U)
            return jax.vmap(
                lambda p, x, u: fn(_member_dynamics(model, spec, p), t, x, u), in_axes=(0, -1, 0), out_axes=-1
            )(phib, X, U)

        def drift(t, X, U):
            return member_map(lambda d, t, x, u: d.vector_field(t, x, u), t, X, U)

        def em_step(t, X, U, dW):
            G = member_map(lambda d, t, x, u: d.diffusion(t, x, u), t, X, U)  # (state, noise, members)
            return X + dt * drift(t, X, U) + jnp.einsum("ijm,jm->im", G, dW)

        def interval(X, k):
            U = controls_at(k)
            t_start = ts[0] + k * h
            if discrete:
                X = member_map(lambda d, t, x, u: d.transition(t, x, u), t_start, X, U)
            elif sde:

                def chunk_step(c, Y):
                    kc = jax.random.fold_in(kb_noise, k * (substeps // chunk) + c)
                    # drawn member-major: with partitionable threefry a member's increments do not depend on the
                    # number of members (padding for sharding leaves them unchanged)
                    dW = jnp.sqrt(dt) * jax.random.normal(kc, (nm, chunk, n_noise), Y.dtype).transpose(1, 2, 0)
                    step = lambda j, Z: em_step(t_start + (c * chunk + j) * dt, Z, U, dW[j])
                    return step(0, Y) if chunk == 1 else jax.lax.fori_loop(0, chunk, step, Y)

                n_chunks = substeps // chunk
                X = chunk_step(0, X) if n_chunks == 1 else jax.lax.fori_loop(0, n_chunks, chunk_step, X)
            else:
                step = lambda j, Y: rk_step(lambda s, Z: drift(s, Z, U), t_start + j * dt, Y, dt, tableau)
                X = step(0, X) if substeps == 1 else jax.lax.fori_loop(0, substeps, step, X)
            if q_root is not None:
                Z = jax.random.normal(jax.random.fold_in(kb_proc, k), (nm, n_state), X.dtype)  # member-major, as dW
                X = X + q_root @ Z.T
            if progress:
                _progress.tick(k, n_save - 1, desc="ensemble")
            return X, X

        return jax.lax.scan(interval, x0b.T, jnp.arange(n_save - 1))[1]

    us_m = None if shared_u else us
    if n_blocks == 1:
        saved = run_block(x0s, phis, us_m, 0)
    else:
        pad = n_shards * n_blocks * block - members

        def blocks(a):  # (members, ...) -> (n_blocks, n_shards * block, ...): iteration j holds block j of each shard
            if a is None:
                return None
            if pad:
                a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
            rest = a.shape[1:]
            a = a.reshape(n_shards, n_blocks, block, *rest).swapaxes(0, 1)
            return a.reshape(n_blocks, n_shards * block, *rest)

        saved = jax.lax.map(lambda a: run_block(*a), (blocks(x0s), blocks(phis), blocks(us_m), jnp.arange(n_blocks)))
        saved = saved.reshape(n_blocks, n_save - 1, n_state, n_shards, block).transpose(1, 2, 3, 0, 4)
        saved = saved.reshape(n_save - 1, n_state, n_shards * n_blocks * block)[..., :members]
    xs = jnp.concatenate([x0s.T[None], saved]).transpose(2, 0, 1)
    status = jnp.where(jnp.all(jnp.isfinite(xs), axis=(1, 2)), Status.successful, Status.nonfinite).astype(jnp.int32)
    ys = None
    obs = model.observation
    used = jnp.zeros((n_save, u_dim), x0s.dtype) if us is None else us
    if observe and obs is not None:
        member_ids = jnp.arange(members)
        u_m = jnp.broadcast_to(used, (members, n_save, u_dim)) if shared_u else used

        def observe_member(i, p, x_t, u_t):
            m = obs if phis is None else spec.with_values(model, p).observation
            keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k_obs, i), k))(jnp.arange(n_save))
            return jax.vmap(m.sample)(keys, ts, x_t, u_t)

        p_in = jnp.zeros((members, 0)) if phis is None else phis
        ys = jax.vmap(observe_member)(member_ids, p_in, xs, u_m)
    return Trajectory(ts, xs, ys, used, status, phis)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _per_member(model, x0s, phis, spec, us, policy, ts, keys):
    def one(x0, phi, u, key):
        m = model if phis is None else spec.with_values(model, phi)
        return _rollout(m, x0, ts, u, policy, key, False)

    in_u = None if (us is None or us.ndim == 2) else 0
    p_in = jnp.zeros((x0s.shape[0], 0)) if phis is None else phis
    xs, ys, used, status = jax.vmap(
        lambda x0, p, u, k: one(x0, None if phis is None else p, u, k), in_axes=(0, 0, in_u, 0)
    )(x0s, p_in, us, keys)
    return Trajectory(ts, xs, ys, used, status, phis)


def ensemble(
    model,
    ts: ArrayLike,
    *,
    members: int | None = None,
    x0: ArrayLike | None = None,
    params: Params | None = None,
    param_values: ArrayLike | None = None,
    controls=None,
    key: Key | None = None,
    method: str | None = None,
    substeps: int = 1,
    tableau: "str | Tableau" = "rk4",
    observe: bool = True,
    shard: bool = True,
    progress: bool = False,
    **discretisation,
) -> Trajectory:
    """Simulate an ensemble of a twin over initial states, parameters and noise in one compiled call.

    Arguments:
        model: the twin (a :class:`~twinjax.StateSpaceModel`, :class:`~twinjax.LinearGaussianSSM` or bare dynamics).
        ts: save times, shape ``(time,)``. The fused path needs them evenly spaced; it takes ``substeps`` fixed steps
            per interval (``dt = (ts[1] - ts[0]) / substeps``).
        members: the ensemble size (inferred from ``x0`` or ``param_values`` when given).
        x0: initial states ``(members, state)``; ``None`` draws them from ``model.initial``.
        params: a :class:`~twinjax.Params` spec. With ``param_values`` ``(members, param)`` (physical units) those
            values are used; without, each member's ``φ`` is drawn from the spec's prior.
        controls: ``None``, a shared array ``(time[-1], control)``, per-member ``(members, time[-1], control)``, or a
            feedback policy (then ``method="diffrax"``).
        key: PRNG key (initial states, parameters, noise, measurements).
        method: ``"fused"`` (lean fixed-step kernel; default for open-loop) or ``"diffrax"`` (per-member diffrax
            solves with the model's discretisation, or the overrides in ``**discretisation``).
        tableau: the fused path's explicit RK method: ``euler``, ``heun``, ``midpoint``, ``rk3``, ``rk4``. SDE twins
            use Euler–Maruyama; discrete twins their transition.
        observe: also draw measurements (``Trajectory.ys``).
        shard: split the member axis across all local devices.
        progress: show a progress bar (fused path).

    Returns:
        A :class:`~twinjax.Trajectory` with a leading member axis (``ts`` and shared ``us`` are not repeated) and a
        per-member ``status``; failed members are reported there, never raised.

    Raises:
        ValueError: for inconsistent sizes, uneven ``ts`` on the fused path, an unknown method, or a missing ``key``.

    Example:
        ```python
        cloud = tj.ensemble(twin, ts=jnp.linspace(0, 10, 101), members=4096, params=spec, key=jax.random.key(1))
        cloud.xs.shape  # (4096, 101, state)
        ```
    """
    model = as_model(model)
    model = with_discretisation(model, **discretisation)
    ts = check_times(ts, "ts")
    n_times = ts.shape[0]
    if params is not None and not isinstance(params, Params):
        raise ValueError(f"`params` must be a tj.Params spec, got {type(params).__name__}.")
    if param_values is not None and params is None:
        raise ValueError("`param_values` needs `params`: the spec saying which fields the columns are.")
    sizes = {name: int(jnp.shape(v)[0]) for name, v in (("x0", x0), ("param_values", param_values)) if v is not None}
    if members is not None:
        sizes["members"] = members
    if not sizes:
        raise ValueError("Give `members` (or `x0` / `param_values` with a leading member axis).")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"Inconsistent ensemble sizes: {sizes}.")
    members = next(iter(sizes.values()))
    if members < 1:
        raise ValueError(f"`members` must be >= 1, got {members}.")
    x0 = check_x0(model, x0, batch=members)
    check_finite_leaves(model, "model")
    per_member_u = controls is not None and not callable(controls) and jnp.ndim(controls) == 3
    us, policy = check_controls(model, controls, n_times, batch=members if per_member_u else None)
    if method is None:
        method = "diffrax" if policy is not None else "fused"
    if method not in ("fused", "diffrax"):
        raise ValueError(f"`method` must be 'fused' or 'diffrax', got {method!r}.")
    if method == "fused" and policy is not None:
        raise ValueError("Feedback policies run with method='diffrax' (the fused kernel is open-loop).")
    if not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"`substeps` must be a positive integer, got {substeps!r}.")
    tableau = get_tableau(tableau)
    if key is None:
        raise ValueError("`key` is required (ensembles draw initial states, parameters or noise).")
    k_x0, k_phi, k_run = jax.random.split(key, 3)
    phis = None
    if params is not None:
        phis = params.sample(k_phi, model, members) if param_values is None else jnp.asarray(param_values)
        if phis.shape != (members, params.size(model)):
            raise ValueError(f"`param_values` must have shape ({members}, {params.size(model)}), got {phis.shape}.")
        check_finite_leaves(phis, "param_values")
    if x0 is None:
        if params is None:
            x0 = jax.vmap(model.initial.sample)(jax.random.split(k_x0, members))
        else:
            x0 = jax.vmap(lambda k, p: params.with_values(model, p).initial.sample(k))(
                jax.random.split(k_x0, members), phis
            )
    if method == "fused":
        if isinstance(model.dynamics, AbstractDiscreteDynamics) or isinstance(model, LinearGaussianSSM):
            if substeps != 1:
                raise ValueError("Discrete-time twins take one transition per interval: use substeps=1.")
        if n_times > 1 and is_concrete(ts):
            t = np.asarray(ts)
            gaps = np.diff(t)
            # evenly spaced up to the rounding of the times themselves (a float32 arange is not exactly even)
            if not np.allclose(gaps, gaps.mean(), rtol=1e-9, atol=16 * np.finfo(t.dtype).eps * np.abs(t).max()):
                raise ValueError("method='fused' needs evenly spaced `ts`; use method='diffrax' for irregular times.")
    sharding = member_sharding() if shard else None
    batched = {"x0": x0, "phis": phis, "us": us if per_member_u else None}
    batched, padded = _pad_and_shard(batched, members, sharding)
    x0s, phis_p = batched["x0"], batched["phis"]
    us_in = batched["us"] if per_member_u else us
    if method == "fused":
        n_shards = 1 if sharding is None else sharding.mesh.devices.size
        traj = _fused(model, x0s, phis_p, params, us_in, ts, substeps, tableau, k_run, observe, progress, n_shards)
    else:
        keys = jax.random.split(k_run, padded)
        if sharding is not None:
            keys = jax.device_put(keys, sharding)
        traj = _per_member(model, x0s, phis_p, params, us_in, policy, ts, keys)
        if not observe:
            traj = eqx.tree_at(lambda t: t.ys, traj, None, is_leaf=lambda x: x is None)
    if padded != members:
        traj = Trajectory(
            traj.ts,
            traj.xs[:members],
            None if traj.ys is None else traj.ys[:members],
            traj.us if traj.us.ndim == 2 else traj.us[:members],
            traj.status[:members],
            None if traj.params is None else traj.params[:members],
        )
    return traj
