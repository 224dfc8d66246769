"""Experiments: one module per study, each reproducing one claim and writing results and figures.

``twinjax list`` shows them; ``twinjax run NAME [--quick] [--set key=value ...] [--seed N] [--out DIR]`` runs one.

The convention
==============

A module ``experiments/<name>.py`` (not starting with ``_``) is an experiment when it defines ``Config`` and
``run`` at top level. Its **first docstring line** is the description ``twinjax list`` prints.

``Config``
    A frozen dataclass whose field defaults are the *full* experiment. Field annotations must be concrete types
    (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``, ``tuple[X, ...]``, nested frozen
    dataclasses, ...), since ``--set key=value`` converts the text by the annotation (see
    `twinjax.runs.apply_overrides`; nested fields use dotted keys, ``--set filter.n_particles=64``). Validation
    of values belongs in ``__post_init__``. Two further rules:

    * **seed** — every ``Config`` has a field ``seed: int = 0``. It is the experiment's only source of
      randomness: ``run`` makes ``key = jax.random.key(config.seed)`` and passes it to ``evaluate``.
      ``twinjax run --seed N`` is the same as ``--set seed=N``, so the seed is recorded in ``config.json``.
    * **quick preset** — a classmethod ``Config.quick()`` returns the small configuration used by
      ``twinjax run NAME --quick`` and by the test-suite (seconds on a CPU). It should differ from the defaults
      only in sizes (steps, samples, members, epochs), not in the method.

``evaluate(config, key) -> dict``
    The pure, jittable core: no file I/O, no printing, returns a dict of metrics (JAX arrays are fine), so that
    sweeps can ``vmap`` it over seeds and shape-preserving settings.

``run(config, run_dir: pathlib.Path) -> dict``
    Calls ``evaluate``, then writes into ``run_dir``: ``results.json`` (via `twinjax.runs.write_json`),
    ``figures/*.png`` (``run_dir / "figures"`` exists already) and, when it trains, ``metrics.csv`` (via
    `twinjax.runs.write_metrics_csv`). It returns the results dict, JSON-serialisable after
    `twinjax.runs.to_jsonable` (numpy/JAX scalars and arrays are converted; NaN and inf become ``null``).
    ``config.json`` is written by the caller before ``run`` starts (``twinjax run`` does it, with the CLI
    overrides, versions, devices and git commit); code calling ``run`` directly uses
    `twinjax.runs.write_config`. Long loops show progress with tqdm (to stderr).

``XLA_FLAGS`` (optional)
    A tuple of XLA flags the experiment needs (e.g. to avoid a runtime defect at its size). XLA reads ``XLA_FLAGS``
    once, when its backend starts — at import time of twinjax's dependencies —, so ``twinjax run`` started from the
    shell restarts itself with the missing flags added to the environment; called in-process it warns instead.

``SUMMARY_KEYS`` (optional)
    A tuple of result keys (flattened with dots; a prefix selects a whole nested group) for the summary table
    ``twinjax run`` prints at the end. Without it every scalar result is shown.

Example
=======

.. code-block:: python

    \"\"\"Pendulum energy drift of RK4 versus the symplectic Euler method.\"\"\"

    import dataclasses
    import pathlib

    import jax

    from twinjax.runs import write_json

    SUMMARY_KEYS = ("drift",)


    @dataclasses.dataclass(frozen=True)
    class Config:
        n_steps: int = 100_000
        dt: float = 1e-3
        seed: int = 0

        @classmethod
        def quick(cls) -> "Config":
            return cls(n_steps=1_000)


    def evaluate(config: Config, key) -> dict:
        ...


    def run(config: Config, run_dir: pathlib.Path) -> dict:
        results = evaluate(config, jax.random.key(config.seed))
        write_json(run_dir / "results.json", results)
        return results
"""
