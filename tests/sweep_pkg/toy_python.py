"""Toy sweep experiment whose `evaluate` is plain Python (``float()`` of a result): it cannot be traced.

``mean`` is the mean of ``n`` standard normals; ``lr >= 1`` raises ``FloatingPointError``.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp

from twinjax.runs import write_json


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float = 0.5
    n: int = 16
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(n=8)


def evaluate(config: Config, key) -> dict:
    mean = float(jnp.mean(jax.random.normal(key, (config.n,))))
    if config.lr >= 1.0:
        raise FloatingPointError(f"lr={config.lr} diverges")
    return {"mean": mean, "scaled": config.lr * mean, "label": "python"}


def run(config: Config, run_dir: pathlib.Path) -> dict:
    results = evaluate(config, jax.random.key(config.seed))
    write_json(run_dir / "results.json", results)
    return results
