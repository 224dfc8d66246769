"""Toy sweep experiment with float fields that must stay static: one sets a shape, one a Python branch.

``integral`` is the trapezoidal integral of ``exp(−decay·t)`` on ``[0, t_end]`` with step ``dt`` (a grid whose length
depends on ``dt``), plus a ``N(0, noise²)`` draw; ``threshold > 0`` switches a Python branch.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp

from twinjax.runs import write_json


@dataclasses.dataclass(frozen=True)
class Config:
    decay: float = 1.0
    dt: float = 0.1
    t_end: float = 1.0
    threshold: float = 0.0
    noise: float = 0.01
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls()


def evaluate(config: Config, key) -> dict:
    ts = jnp.arange(0.0, config.t_end + config.dt / 2, config.dt)  # the length depends on dt: dt is static
    ys = jnp.exp(-config.decay * ts)
    integral = jnp.sum(0.5 * (ys[1:] + ys[:-1]) * jnp.diff(ts))
    if config.threshold > 0:  # a Python branch on the value: threshold is static
        integral = jnp.maximum(integral, config.threshold)
    return {"integral": integral + config.noise * jax.random.normal(key), "points": ts.shape[0]}


def run(config: Config, run_dir: pathlib.Path) -> dict:
    results = evaluate(config, jax.random.key(config.seed))
    write_json(run_dir / "results.json", results)
    return results
