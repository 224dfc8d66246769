"""One training loop for every generative family: a pure ``init`` / ``step`` pair and a ``train`` driver.

The state is explicit (:class:`TrainState`: the trainable arrays, the optax state, an optional exponential moving
average of the parameters, the step count and a PRNG key as raw key data). Step ``t`` draws its minibatch and its
noise from ``fold_in(key, t)``, so the result does not depend on how the steps are chunked: a run stopped after a
checkpoint and resumed is bit-identical to an uninterrupted one (tested).

:func:`train` runs the steps in compiled chunks of ``log_every`` (one ``lax.scan`` each, compiled once per chunk
length), shows a tqdm bar, and, given ``out_dir``, writes ``metrics.csv`` (step, loss, the model's aux metrics) and a
checkpoint (``checkpoint.eqx`` by ``eqx.tree_serialise_leaves``, no pickle, plus ``checkpoint.json`` with the step
and the metric history) every ``checkpoint_every`` steps; ``resume=True`` continues from it.

Adversarial models (:class:`~twinjax.generative.AbstractAdversarial`) get two optimizer states, one over the critic's
leaves and one over the generator's; a step makes ``critic_steps`` critic updates then one generator update.
"""

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._types import Array
from ._base import AbstractAdversarial, AbstractGenerativeModel

__all__ = ["TrainResult", "TrainState", "init", "step", "train"]


class TrainState(eqx.Module):
    """The explicit state of :func:`step`.

    Attributes:
        params: the trainable leaves of the model (``eqx.partition(model, eqx.is_inexact_array)[0]``).
        opt_state: the optax state (a ``(critic, generator)`` pair for adversarial models).
        ema: the moving average of ``params`` started at zero (``None`` without ``ema_decay``); the average is
            ``ema / (1 − decay^step)`` (bias-corrected as Adam's moments, so early steps do not keep the random
            initial weights in it).
        step: number of steps taken.
        key: raw PRNG key data (``jax.random.key_data``) from which step ``t`` folds in ``t``.
    """

    params: Any
    opt_state: Any
    ema: Any
    step: Array
    key: Array


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (the EMA parameters when ``ema_decay`` was given; the raw ones in ``raw_model``).
        raw_model: the model with the optimizer's last parameters.
        history: ``{"step": (steps,), "loss": (steps,), <aux name>: (steps,)}`` as numpy arrays.
        state: the final :class:`TrainState`.
        compile_s: seconds of the first call of each chunk length (compilation, or a cache hit, plus that chunk).
        run_s: seconds of the other chunks.
    """

    model: Any
    raw_model: Any
    history: dict[str, np.ndarray]
    state: TrainState
    compile_s: float
    run_s: float


def _split(model):
    return eqx.partition(model, eqx.is_inexact_array)


def _check_model(model):
    if not isinstance(model, AbstractGenerativeModel):
        raise TypeError(
            f"train: `model` must be a twinjax.generative.AbstractGenerativeModel, got {type(model).__name__}"
        )


def _optimizers(model, optimizer):
    """``(critic, generator)`` transforms for adversarial models, else the one transform."""
    single = isinstance(optimizer, optax.GradientTransformation)  # (a NamedTuple itself)
    if isinstance(model, AbstractAdversarial):
        if not single:
            if len(optimizer) != 2:
                raise ValueError("train: an adversarial model takes one optimizer or a (critic, generator) pair")
            return tuple(optimizer)
        return optimizer, optimizer
    if not single:
        raise ValueError(f"train: {type(model).__name__} is not adversarial; pass one optax optimizer")
    return optimizer


def _critic_mask(model, params):
    mask = model.critic_filter()
    return jax.tree.map(lambda m, p: bool(m) and p is not None, mask, params, is_leaf=lambda x: x is None)


def _strong(tree):
    """``tree`` with every array strongly typed. A weakly typed leaf (a Python float in a twin's parameters) turns
    strong after the first update; left weak, it would retrace the compiled step once per chunk, and again when the
    trained model is trained further."""
    return jax.tree.map(lambda a: jnp.asarray(a, a.dtype) if eqx.is_array(a) else a, tree)


def init(model: AbstractGenerativeModel, optimizer, key: jax.Array, *, ema_decay: float | None = None) -> TrainState:
    """The initial :class:`TrainState` of ``model`` under ``optimizer`` (an optax ``GradientTransformation``, or a
    ``(critic, generator)`` pair for adversarial models)."""
    _check_model(model)
    params, _ = _split(model)
    params = _strong(params)
    opts = _optimizers(model, optimizer)
    if isinstance(model, AbstractAdversarial):
        mask = _critic_mask(model, params)
        critic, gen = eqx.partition(params, mask)
        opt_state = (opts[0].init(critic), opts[1].init(gen))
    else:
        opt_state = opts.init(params)
    ema = jax.tree.map(jnp.zeros_like, params) if ema_decay is not None else None
    return TrainState(params, opt_state, ema, jnp.asarray(0, jnp.int32), jax.random.key_data(key))


def _batch(key, data, cond, batch_size):
    n = jax.tree.leaves(data)[0].shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, n)
    take = lambda a: None if a is None else a[idx]  # noqa: E731
    return jax.tree.map(take, data), (None if cond is None else jax.tree.map(take, cond))


def _update(opt, grads, opt_state, params):
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def step(
    state: TrainState,
    model: AbstractGenerativeModel,
    optimizer,
    data,
    cond=None,
    *,
    batch_size: int,
    ema_decay: float | None = None,
    loss_kwargs: dict | None = None,
) -> tuple[TrainState, dict[str, Array]]:
    """One training step. ``model`` supplies the static structure (its arrays are replaced by ``state.params``).

    Returns the new state and ``{"loss": ..., **aux}`` evaluated at the parameters before the update.
    """
    loss_kwargs = loss_kwargs or {}
    _, static = _split(model)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    opts = _optimizers(model, optimizer)

    if isinstance(model, AbstractAdversarial):
        mask = _critic_mask(model, state.params)
        critic, gen = eqx.partition(state.params, mask)
        k_critic, k_gen = jax.random.split(key)

        def critic_loss(c, g, k):
            m = eqx.combine(c, g, static)
            x, y = _batch(jax.random.fold_in(k, 0), data, cond, batch_size)
            return m.critic_loss(jax.random.fold_in(k, 1), x, y, **loss_kwargs)

        def critic_update(carry, k):
            c, s = carry
            (loss, aux), grads = jax.value_and_grad(critic_loss, has_aux=True)(c, gen, k)
            c, s = _update(opts[0], grads, s, c)
            return (c, s), (loss, aux)

        keys = jax.random.split(k_critic, model.critic_steps)
        (critic, c_state), (c_losses, c_aux) = jax.lax.scan(critic_update, (critic, state.opt_state[0]), keys)

        def gen_loss(g):
            m = eqx.combine(critic, g, static)
            x, y = _batch(jax.random.fold_in(k_gen, 0), data, cond, batch_size)
            return m.generator_loss(jax.random.fold_in(k_gen, 1), x, y, **loss_kwargs)

        (loss, aux), grads = jax.value_and_grad(gen_loss, has_aux=True)(gen)
        gen, g_state = _update(opts[1], grads, state.opt_state[1], gen)
        params = eqx.combine(critic, gen)
        opt_state = (c_state, g_state)
        metrics = {"loss": loss, "critic_loss": c_losses[-1], **aux, **{k: v[-1] for k, v in c_aux.items()}}
    else:

        def loss_fn(p):
            m = eqx.combine(p, static)
            x, y = _batch(jax.random.fold_in(key, 0), data, cond, batch_size)
            return m.loss(jax.random.fold_in(key, 1), x, y, **loss_kwargs)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state = _update(opts, grads, state.opt_state, state.params)
        metrics = {"loss": loss, **aux}

    ema = state.ema
    if ema_decay is not None:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    new = TrainState(params, opt_state, ema, state.step + 1, state.key)
    return new, metrics


def ema_average(state: TrainState, ema_decay: float):
    """The bias-corrected moving average of the parameters held in ``state``."""
    correction = 1.0 - ema_decay ** state.step.astype(float)
    return jax.tree.map(lambda e: e / correction, state.ema)


TRACES = {"chunk": 0}  # how many times a training chunk has been traced (tests assert no retracing)


@eqx.filter_jit
def _chunk(state, model, optimizer, data, cond, length, batch_size, ema_decay, loss_kwargs):
    TRACES["chunk"] += 1

    def body(s, _):
        kw = dict(batch_size=batch_size, ema_decay=ema_decay, loss_kwargs=loss_kwargs)
        return step(s, model, optimizer, data, cond, **kw)

    return jax.lax.scan(body, state, None, length=length)


def _check_data(data, cond, batch_size):
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("train: `data` is empty")
    n = leaves[0].shape[0] if leaves[0].ndim else 0
    if n < 1 or any(a.ndim == 0 or a.shape[0] != n for a in leaves):
        raise ValueError(f"train: `data` must be an array (or pytree of arrays) with a leading sample axis, got {data}")
    if cond is not None and any(a.ndim == 0 or a.shape[0] != n for a in jax.tree.leaves(cond)):
        raise ValueError(f"train: `cond` must have the same leading axis as `data` ({n} samples)")
    if not np.all([bool(jnp.all(jnp.isfinite(a))) for a in leaves if jnp.issubdtype(a.dtype, jnp.inexact)]):
        raise ValueError("train: `data` contains NaN or inf; drop or impute those samples first")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"train: `batch_size` must be a positive int, got {batch_size!r}")


def _save(out_dir: pathlib.Path, state: TrainState, history: dict[str, list]) -> None:
    tmp = out_dir / "checkpoint.eqx.tmp"
    eqx.tree_serialise_leaves(tmp, state)
    tmp.replace(out_dir / "checkpoint.eqx")
    header = {"step": int(state.step), "history": {k: [float(v) for v in vals] for k, vals in history.items()}}
    (out_dir / "checkpoint.json").write_text(json.dumps(header))


def _load(out_dir: pathlib.Path, like: TrainState) -> tuple[TrainState, dict[str, list]]:
    state = eqx.tree_deserialise_leaves(out_dir / "checkpoint.eqx", like)
    header = json.loads((out_dir / "checkpoint.json").read_text())
    if int(state.step) != header["step"]:
        raise ValueError(f"train: checkpoint in {out_dir} is inconsistent (step {int(state.step)} vs header)")
    return state, {k: list(v) for k, v in header["history"].items()}


def _write_metrics(out_dir: pathlib.Path, history: dict[str, list]) -> None:
    from ..runs import write_metrics_csv

    write_metrics_csv(out_dir / "metrics.csv", history)


def train(
    model: AbstractGenerativeModel,
    data,
    *,
    optimizer,
    steps: int,
    key: jax.Array,
    batch_size: int = 256,
    cond=None,
    ema_decay: float | None = None,
    log_every: int = 100,
    out_dir: str | pathlib.Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    **loss_kwargs,
) -> TrainResult:
    """Train ``model`` on ``data`` (``(N, *event_shape)``, optionally ``cond`` ``(N, cond_dim)``) for ``steps`` steps.

    Args:
        model: any :class:`~twinjax.generative.AbstractGenerativeModel`.
        data, cond: the training samples (and their conditioning), device arrays; minibatches are drawn with
            replacement by index inside the compiled step.
        optimizer: an optax transformation (or ``(critic, generator)`` for adversarial models).
        steps: total number of steps (a resumed run continues up to it).
        key: the PRNG key of the run (minibatches and the model's noise).
        batch_size: minibatch size.
        ema_decay: keep an exponential moving average of the parameters and return it as ``model``.
        log_every: steps per compiled chunk; one progress-bar update and one metrics row flush per chunk.
        out_dir: where ``metrics.csv`` and checkpoints go (nothing is written without it).
        checkpoint_every: steps between checkpoints (default: ``log_every``); rounded up to whole chunks.
        resume: continue from ``out_dir/checkpoint.eqx`` if it exists.
        progress: show a tqdm bar.
        callback: ``callback(step, metrics_of_last_step)`` after each chunk (host side).
        **loss_kwargs: passed to the model's loss (e.g. ``physics_weight=10.0``).

    Returns:
        A :class:`TrainResult`.
    """
    _check_model(model)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train: `steps` must be a positive int, got {steps!r}")
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"train: `log_every` must be a positive int, got {log_every!r}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"train: `ema_decay` must be in [0, 1), got {ema_decay}")
    _check_data(data, cond, batch_size)
    checkpoint_every = checkpoint_every or log_every
    model = _strong(model)
    state = init(model, optimizer, key, ema_decay=ema_decay)
    history: dict[str, list] = {}
    out = None
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if resume and (out / "checkpoint.eqx").exists():
            state, history = _load(out, state)
    start_step = int(state.step)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=min(start_step, steps), desc=f"train {type(model).__name__}", leave=False)
    compile_s = run_s = 0.0
    seen: set[int] = set()
    last_saved = start_step
    done = start_step
    kwargs = loss_kwargs or None
    while done < steps:
        length = min(log_every, steps - done)
        t0 = time.perf_counter()
        state, metrics = _chunk(state, model, optimizer, data, cond, length, batch_size, ema_decay, kwargs)
        metrics = jax.device_get(metrics)
        if length in seen:
            run_s += time.perf_counter() - t0
        else:  # the first call of a chunk length compiles it (or finds it in the cache of an earlier call)
            seen.add(length)
            compile_s += time.perf_counter() - t0
        history.setdefault("step", []).extend(range(done + 1, done + length + 1))
        for name, values in metrics.items():
            history.setdefault(name, []).extend(np.asarray(values, dtype=float).tolist())
        done += length
        if not np.all(np.isfinite(metrics["loss"])):
            if bar is not None:
                bar.close()
            bad = done - length + int(np.argmin(np.isfinite(metrics["loss"]))) + 1
            raise FloatingPointError(
                f"train: the loss of {type(model).__name__} became non-finite at step {bad}; lower the learning rate"
                " or check the data scaling"
            )
        if bar is not None:
            bar.update(length)
            bar.set_postfix(loss=f"{float(metrics['loss'][-1]):.4g}")
        if callback is not None:
            callback(done, {k: float(np.asarray(v)[-1]) for k, v in metrics.items()})
        if out is not None:
            _write_metrics(out, history)
            if done - last_saved >= checkpoint_every or done == steps:
                _save(out, state, history)
                last_saved = done
    if bar is not None:
        bar.close()
    _, static = _split(model)
    raw = eqx.combine(state.params, static)
    final = eqx.combine(ema_average(state, ema_decay), static) if ema_decay is not None else raw
    hist = {k: np.asarray(v) for k, v in history.items()}
    return TrainResult(final, raw, hist, state, compile_s, run_s)
