"""Toy sweep experiment: gradient descent on ½|x|² from a random start (pure and jittable).

``x_k = (1 − lr)^k x_0`` with ``x_0 ~ N(0, I_n)``, so ``loss = ½ (1 − lr)^(2·steps) |x_0|²`` (``mode="sum"``) and the
log rate per step is ``log(1 − lr)`` — NaN for ``lr > 1``. ``eqx.error_if`` raises at run time when ``lr > limit``.
``n`` sets a shape (static in a sweep); ``lr`` and ``steps`` (a ``fori_loop`` bound) can be traced.
"""

import dataclasses
import pathlib
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from twinjax.runs import write_json

SUMMARY_KEYS = ("loss", "rate")
TRACES = 0  # completed traces of `evaluate` (a trace that raises part-way is not counted)


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float = 0.1
    n: int = 4
    steps: int = 5
    mode: Literal["sum", "mean"] = "sum"
    limit: float = 100.0
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"`n` must be >= 1, got {self.n}.")
        if self.steps < 0:
            raise ValueError(f"`steps` must be >= 0, got {self.steps}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(steps=3)


def evaluate(config: Config, key) -> dict:
    global TRACES
    x0 = jax.random.normal(key, (config.n,))
    x = jax.lax.fori_loop(0, config.steps, lambda i, x: x - config.lr * x, x0)
    x = eqx.error_if(x, config.lr > config.limit, "lr exceeds limit")
    sq = x**2
    loss = 0.5 * (jnp.sum(sq) if config.mode == "sum" else jnp.mean(sq))
    TRACES += 1
    return {"loss": loss, "rate": jnp.log1p(-config.lr), "x": x, "stats": {"max": jnp.max(jnp.abs(x)), "n": config.n}}


def run(config: Config, run_dir: pathlib.Path) -> dict:
    results = evaluate(config, jax.random.key(config.seed))
    write_json(run_dir / "results.json", results)
    return results
