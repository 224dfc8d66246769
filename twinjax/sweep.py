"""Sweeps: an experiment's pure ``evaluate`` over a grid of config values × seeds, vmapped and sharded.

A sweep runs ``evaluate(config, key)`` (the experiment convention of the ``experiments`` package) for every member
``(grid point, seed)`` of the Cartesian product of the swept values, with seeds ``config.seed + i`` (``i < seeds``)
and ``key = jax.random.key(seed)``, as ``twinjax run`` does. The engine compiles as few programs as it can:

* **traced fields** — a swept numeric field whose values can stand as tracers: ``evaluate`` is traced with the field
  replaced by a tracer; if that raises (a concretization error: the value sets a shape, a Python branch, a loop
  length, ...), the field is **static**. Strings, bools, tuples and ``None`` are always static.
* **groups** — one compiled call per combination of static values. Within a group the batch axis is
  ``points × seeds``; the members run as ``jit(shard_map(vmap(member)))(values, seeds)``, traced once per group.
* **sharding** — the batch axis is split over a 1-D mesh ``Mesh(devices, ("sweep",))`` with
  ``NamedSharding(mesh, P("sweep"))`` (padded to a multiple of the device count with copies of the first member;
  the padding is dropped). ``shard_map`` keeps the devices independent (no collective between members), so a
  run-time error on one device surfaces as an exception rather than a collective that never completes. Under
  ``jax.distributed`` the mesh spans the devices of every process and the results are gathered to each process.
* **failures** — a member with a non-finite metric (NaN / ±inf) is failed and named with those metrics; the others
  are kept. A group whose compiled call raises at run time (e.g. ``eqx.error_if``) is rerun member by member with a
  one-member compiled function, so only the offending members fail; so is a group whose vmapped program cannot be
  compiled (an experiment that shards its own work). An ``evaluate`` that cannot be traced at all (Python floats of
  results, timing, file I/O) runs as a sequential loop over members in plain Python. In these modes each exception
  is caught and reported with its type and message. Every such decision is printed as a note and recorded in
  ``sweep.json``.

The config's own ``seed`` field keeps its base value in every member; only the key changes. Traced float fields are
arrays of the default float dtype (float64 under x64), strongly typed where a Python float is weakly typed.

Example:
    >>> from twinjax.sweep import sweep
    >>> result = sweep("lotka_volterra", None, {"lr": [1e-3, 1e-2]}, seeds=4)  # doctest: +SKIP
    >>> result.write("runs/lotka_volterra/sweep")  # doctest: +SKIP

References:
    DESIGN.md, "Experiments, runs and the command line"; JAX, "Distributed arrays and automatic parallelization"
    (``jax.sharding``) and "Multi-process environments" (``jax.distributed``).
"""

import contextlib
import copy
import csv
import dataclasses
import importlib
import itertools
import math
import pathlib
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from twinjax import runs

__all__ = ["SweepResult", "load_experiment", "parse_grid", "sweep"]

_AXIS = "sweep"


# --------------------------------------------------------------------------------------------------------------------
# Experiments and grids
# --------------------------------------------------------------------------------------------------------------------


def load_experiment(name: str, package: str = "experiments") -> ModuleType:
    """Import the experiment ``name`` (``-`` and ``_`` alike) of ``package``, checking it has ``evaluate``.

    Raises:
        ValueError: for an unknown experiment (listing the available ones) or one without ``evaluate``.
    """
    from twinjax.cli import discover

    found = discover(package)
    module_name = name.replace("-", "_")
    if module_name not in found:
        available = ", ".join(found) or "(none)"
        raise ValueError(f"unknown experiment {name!r}. Available experiments: {available}")
    module = importlib.import_module(f"{package}.{module_name}")
    _check_module(module)
    return module


def _check_module(module: ModuleType) -> None:
    if not callable(getattr(module, "evaluate", None)):
        raise ValueError(
            f"experiment {module.__name__!r} has no `evaluate(config, key) -> dict`: a sweep needs the pure core"
        )
    if not isinstance(getattr(module, "Config", None), type):
        raise ValueError(f"experiment {module.__name__!r} has no `Config` dataclass")


def _split_values(text: str, item: str) -> list[str]:
    """Split ``v1,v2,...`` at commas outside brackets, so tuple values can be given as ``(1,2),(3,4)``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"malformed --set {item!r}: unbalanced {char!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"malformed --set {item!r}: unbalanced brackets")
    parts.append(text[start:])
    parts = [p.strip() for p in parts]
    if any(not p for p in parts):
        raise ValueError(f"malformed --set {item!r}: an empty value in the list (expected key=v1,v2,...)")
    return parts


def parse_grid(config: Any, items: Sequence[str]) -> dict[str, list[Any]]:
    """Parse ``--set key=v1,v2,...`` texts into ``{key: [values]}``, each value converted by the field's type.

    Values are separated by commas outside brackets: a tuple field is swept as ``sizes=(8,8),(16,16)``. Dotted keys
    reach nested configs. No config is built here; `sweep` validates every grid point.

    Raises:
        ValueError: for a text without ``=``, an empty value, unbalanced brackets, a key given twice, an unknown key
            (listing the valid keys) or a value that does not convert (naming the expected type).

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     lr: float = 0.1
        ...     n: int = 4
        >>> parse_grid(Config(), ["lr=0.1,0.2", "n=8"])
        {'lr': [0.1, 0.2], 'n': [8]}
    """
    if isinstance(items, str):
        raise ValueError(f"parse_grid: `items` must be a sequence of 'key=v1,v2' strings, got {items!r}")
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"malformed --set {item!r}: expected key=v1,v2,...")
        if key in grid:
            raise ValueError(f"--set {key!r} is given twice; list all its values in one --set {key}=v1,v2,...")
        grid[key] = [runs.parse_value(config, key, text) for text in _split_values(text, item)]
    return grid


def _field_type(config: Any, key: str) -> Any:
    owner, name = runs._resolve(config, key.split("."), key, config)
    return runs._field_types(type(owner))[name]


def _normalise_values(config: Any, key: str, values: Any) -> list[Any]:
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"sweep: grid[{key!r}] must be a non-empty sequence of values, got {values!r}")
    tp = _field_type(config, key)
    out = []
    for value in values:
        if isinstance(value, np.generic):
            value = value.item()
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out.append(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def _describe(error: BaseException, limit: int = 300) -> str:
    """``Type: first line``; for an error raised inside a compiled call (its message is a Python traceback: a
    callback such as ``eqx.error_if`` raised), the exception line at the end of that traceback."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if "Traceback" in message:
        raised = [m.group(0) for m in map(_RAISED.match, lines) if m]
        message = raised[-1] if raised else message
    text = f"{type(error).__name__}: {message}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt_point(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items()) or "(base config)"


def _with_values(config: Any, values: Mapping[str, Any]) -> Any:
    """A copy of ``config`` with (dotted) fields set to ``values`` *without* ``__init__`` / ``__post_init__``.

    Used with tracers: the experiment's checks ran on every concrete grid point already, and a check such as
    ``if self.lr < 0`` cannot run on a tracer.
    """
    config = copy.copy(config)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        owner = config
        for name in parents:
            child = copy.copy(getattr(owner, name))
            object.__setattr__(owner, name, child)
            owner = child
        object.__setattr__(owner, leaf, value)
    return config


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------


def _path_name(path: tuple) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts)


def _flat_metrics(metrics: Any) -> dict[str, Any]:
    """``{dotted name: leaf}`` of a metrics pytree (nested dicts, lists, named tuples)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(metrics)
    return {_path_name(path): leaf for path, leaf in leaves}


def _nonfinite(metrics: Any) -> list[str]:
    names = []
    for name, leaf in _flat_metrics(metrics).items():
        if isinstance(leaf, str):
            continue
        array = np.asarray(leaf)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            names.append(name)
    return names


def _scalar(leaf: Any) -> Any:
    """The Python scalar of a 0-d numeric or string leaf, else ``None`` (arrays go to sweep.json only)."""
    if isinstance(leaf, str):
        return leaf
    if leaf is None:
        return None
    array = np.asarray(leaf)
    if array.ndim != 0 or array.dtype.kind not in "biuf":
        return None
    return array.item()


def _csv_text(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else value


@dataclasses.dataclass
class SweepResult:
    """The members of a sweep, how they were grouped and compiled, and what failed.

    Attributes:
        experiment: the experiment's name.
        config: the base config (the experiment's config with the single-valued overrides applied).
        grid: the swept fields and their values (fields given a single value are in ``overrides``).
        overrides: the single-valued fields applied to ``config``.
        seeds: the seeds of each grid point, ``config.seed + i``.
        points: the grid points, ``{field: value}`` in Cartesian-product order (last field fastest).
        rows: one dict per member, point-major then seed: ``point`` (index), ``values``, ``seed``, ``ok``,
            ``error`` (``None`` or the reason it failed) and ``metrics`` (the metrics pytree as numpy arrays, ``None``
            when ``evaluate`` raised).
        groups: one dict per compiled group (static values, traced fields, members, devices, compile / run seconds,
            mode: ``"vmap"``, ``"vmap, then one by one"`` or ``"sequential"``).
        tracing: which swept fields were traced, and why each static one is static.
        notes: the notes printed during the sweep (fallbacks and why).
        devices: the devices of the mesh.
        summary_keys: the experiment's ``SUMMARY_KEYS`` (``None`` when it defines none).
        x64: whether the members ran with float64 enabled.
    """

    experiment: str
    config: Any
    grid: dict[str, list[Any]]
    overrides: dict[str, Any]
    seeds: list[int]
    points: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    tracing: dict[str, Any]
    notes: list[str]
    devices: list[str]
    summary_keys: tuple[str, ...] | None = None
    x64: bool = False

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The failed members: ``point``, ``values``, ``seed`` and ``error``."""
        keys = ("point", "values", "seed", "error")
        return [{k: row[k] for k in keys} for row in self.rows if not row["ok"]]

    @property
    def n_failed(self) -> int:
        return sum(not row["ok"] for row in self.rows)

    def _flats(self) -> list[dict[str, Any] | None]:
        return [None if row["metrics"] is None else _flat_metrics(row["metrics"]) for row in self.rows]

    def _scalar_names(self, flats: list[dict[str, Any] | None]) -> dict[str, bool]:
        """``{name: is_text}`` of the scalar metrics, in the order they first appear."""
        names: dict[str, bool] = {}
        for flat in flats:
            for name, leaf in (flat or {}).items():
                if name not in names and (isinstance(leaf, str) or np.ndim(leaf) == 0):
                    names[name] = isinstance(leaf, str)
        return names

    def _column(self, metric: str) -> str:
        """The column of a metric: its dotted name, prefixed ``metrics.`` if it would clash with a fixed column."""
        clash = metric in self.grid or metric in ("point", "seed", "ok", "error", "n_members", "n_ok")
        return f"metrics.{metric}" if clash else metric

    def scalar_metrics(self) -> list[str]:
        """The dotted names of the scalar metrics (numbers, bools and strings), in the order they first appear."""
        return list(self._scalar_names(self._flats()))

    def to_csv(self, path: runs.PathLike) -> pathlib.Path:
        """Write ``results.csv``: one row per member — point, swept values, seed, ok, error, scalar metrics (a metric
        named like a swept field or a fixed column is written as ``metrics.<name>``)."""
        flats = self._flats()
        metrics = list(self._scalar_names(flats))
        header = ["point", *self.grid, "seed", "ok", "error", *(self._column(m) for m in metrics)]
        path = pathlib.Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row, flat in zip(self.rows, flats, strict=True):
                flat = flat or {}
                cells = [row["point"], *(row["values"][k] for k in self.grid), row["seed"], row["ok"]]
                cells.append(row["error"] or "")
                cells += [_scalar(flat[m]) if m in flat else None for m in metrics]
                writer.writerow([_csv_text(c) for c in cells])
        return path

    def summary(self) -> list[dict[str, Any]]:
        """Per grid point: ``point``, the values, ``n_members``, ``n_ok`` and, for each numeric scalar metric, the
        mean and the sample standard deviation (``<metric>.mean``, ``<metric>.sd``; ``ddof = 1``, NaN below two
        members) over the seeds whose members succeeded."""
        flats = self._flats()
        numeric = [m for m, is_text in self._scalar_names(flats).items() if not is_text]
        by_point: dict[int, list[tuple[dict, dict | None]]] = {i: [] for i in range(len(self.points))}
        for row, flat in zip(self.rows, flats, strict=True):
            by_point[row["point"]].append((row, flat))
        out = []
        for i, values in enumerate(self.points):
            ok = [flat for row, flat in by_point[i] if row["ok"]]
            entry: dict[str, Any] = {"point": i, **values, "n_members": len(by_point[i]), "n_ok": len(ok)}
            for m in numeric:
                xs = np.array([float(_scalar(flat[m])) for flat in ok if m in flat], dtype=float)
                entry[f"{self._column(m)}.mean"] = float(xs.mean()) if xs.size else math.nan
                entry[f"{self._column(m)}.sd"] = float(xs.std(ddof=1)) if xs.size > 1 else math.nan
            out.append(entry)
        return out

    def summary_to_csv(self, path: runs.PathLike) -> pathlib.Path:
        """Write ``summary.csv``: `summary` as a table, one row per grid point."""
        rows = self.summary()
        header = list(rows[0]) if rows else ["point"]
        path = pathlib.Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in rows:
                writer.writerow([_csv_text(row[k]) for k in header])
        return path

    def to_json(self) -> dict[str, Any]:
        """Everything ``sweep.json`` holds (before the JSON conversion of `twinjax.runs.to_jsonable`)."""
        return {
            "experiment": self.experiment,
            "config": self.config,
            "grid": self.grid,
            "overrides": self.overrides,
            "seeds": self.seeds,
            "n_points": len(self.points),
            "n_members": len(self.rows),
            "n_failed": self.n_failed,
            "x64": self.x64,
            "tracing": self.tracing,
            "groups": self.groups,
            "notes": self.notes,
            "failures": self.failures,
            "members": self.rows,
            **runs.environment(),
            "mesh_devices": self.devices,
            "process_count": jax.process_count(),
        }

    def write(self, directory: runs.PathLike, extra: Mapping[str, Any] | None = None) -> pathlib.Path:
        """Write ``sweep.json``, ``results.csv`` and ``summary.csv`` into ``directory`` (created if missing).

        Returns:
            The folder.
        """
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        runs.write_json(directory / "sweep.json", {**self.to_json(), **(extra or {})})
        self.to_csv(directory / "results.csv")
        self.summary_to_csv(directory / "summary.csv")
        return directory

    def table(self, keys: Sequence[str] | None = None, max_metrics: int = 6) -> str:
        """A compact text table: one line per grid point with ``n_ok/n`` and ``mean ± sd`` of the metrics selected
        by ``keys`` (default the experiment's ``SUMMARY_KEYS``; a key may be a prefix of nested metrics; without
        any, the first ``max_metrics`` numeric scalar metrics)."""
        numeric = [m for m, is_text in self._scalar_names(self._flats()).items() if not is_text]
        keys = self.summary_keys if keys is None else keys
        if keys is None:
            selected = numeric[:max_metrics]
        else:
            selected = [m for k in keys for m in numeric if m == k or m.startswith(k + ".")]
        header = ["point", *self.grid, "ok", *(self._column(m) for m in selected)]
        lines = []
        for entry in self.summary():
            cells = [str(entry["point"]), *(_short(entry[k]) for k in self.grid)]
            cells.append(f"{entry['n_ok']}/{entry['n_members']}")
            for m in selected:
                mean, sd = entry[f"{self._column(m)}.mean"], entry[f"{self._column(m)}.sd"]
                cells.append("-" if math.isnan(mean) else f"{mean:.4g}" + ("" if math.isnan(sd) else f" ± {sd:.2g}"))
            lines.append(cells)
        widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]
        text = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        text.append("  ".join("-" * w for w in widths))
        text += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in lines]
        return "\n".join(text)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------------------------


def _member_fn(evaluate: Callable, config: Any) -> Callable:
    """One member: the config with the traced values put in, ``key = jax.random.key(seed)``."""

    def member(values, seed):
        return evaluate(_with_values(config, values), jax.random.key(seed))

    return member


class _Engine:
    """Builds the sharded batches of a group and traces / compiles / runs it (one instance per sweep)."""

    def __init__(self, module, base, points, seeds, devices, dtypes, log):
        self.module, self.base, self.points, self.seeds = module, base, points, seeds
        self.devices = devices
        self.mesh = Mesh(np.array(devices, dtype=object), (_AXIS,))
        self.sharding = NamedSharding(self.mesh, P(_AXIS))
        self.dtypes = dtypes
        self.log = log
        self.shard_map_failed = False  # set once shard_map could not trace a group (see ``trace``)

    def members(self, point_ids: Sequence[int]) -> list[tuple[int, int]]:
        return [(p, s) for p in point_ids for s in self.seeds]

    def config_of(self, point: int) -> Any:
        config = self.base
        for key, value in self.points[point].items():
            config = runs.replace_value(config, key, value)
        return config

    def args(self, members: list[tuple[int, int]], traced: Sequence[str]):
        n_dev = len(self.devices)
        padded = members + [members[0]] * (-len(members) % n_dev)
        host = {k: np.asarray([self.points[p][k] for p, _ in padded], dtype=self.dtypes[k]) for k in traced}
        seeds = np.asarray([s for _, s in padded], dtype=jax.dtypes.canonicalize_dtype(np.int64))
        return self._put(host), self._put(seeds), len(padded)

    def _put(self, tree):
        # make_array_from_callback builds a global array from each process's own copy of the host data: the same
        # call works on one process and under jax.distributed.
        return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, self.sharding, lambda i: a[i]), tree)

    def trace(self, point_ids: Sequence[int], traced: Sequence[str]):
        """Trace the vmapped group whose static values are those of ``point_ids[0]``; returns (traced, args, mode)."""
        config = self.config_of(point_ids[0])
        values, seeds, _ = self.args(self.members(point_ids), traced)
        # shard_map, not a sharded jit of the vmap: each device runs its members alone, with no collective between
        # devices, so a run-time error raised on one device (eqx.error_if, a solver's throw) surfaces as an exception
        # instead of leaving the other devices waiting in an all-reduce (XLA then aborts the process).
        # On one device there is nothing to keep apart and shard_map is skipped. shard_map is also not transparent
        # to everything it wraps: a diffrax solve differentiated under shard_map(vmap(...)) fails equinox's
        # closure-conversion check (diffrax#765, equinox PR #1261, open). Then the group falls back to a jit of
        # the vmap with the batch axis sharded (XLA's partitioner; members on a device may then share its
        # while loops, which only matters when one raises — the run-time fallback below handles that).
        batched = jax.vmap(_member_fn(self.module.evaluate, config))
        if len(self.devices) == 1:
            return jax.jit(batched).trace(values, seeds), (values, seeds), "vmap"
        manual = jax.shard_map(batched, mesh=self.mesh, in_specs=P(_AXIS), out_specs=P(_AXIS), check_vma=False)
        try:
            return jax.jit(manual).trace(values, seeds), (values, seeds), "vmap"
        except Exception as e:  # noqa: BLE001 — the partitioner's sharded jit is tried; its error wins if it fails
            auto = jax.jit(batched, in_shardings=self.sharding, out_shardings=self.sharding).trace(values, seeds)
            if not self.shard_map_failed:
                name = self.module.__name__.rsplit(".", 1)[-1]
                self.log(f"shard_map of {name}.evaluate raised ({_describe(e)}); using a sharded jit of the vmap")
            self.shard_map_failed = True
            return auto, (values, seeds), "vmap (sharded jit)"

    def run_group(self, point_ids, traced, prepared=None) -> tuple[dict[tuple[int, int], dict], dict[str, Any]]:
        members = self.members(point_ids)
        info: dict[str, Any] = {"members": len(members), "traced": list(traced)}
        start = time.perf_counter()
        try:
            traced_fn, args, mode = prepared if prepared is not None else self.trace(point_ids, traced)
            compiled = traced_fn.lower().compile()
        except Exception as e:  # noqa: BLE001 — reported, and the members then run one by one
            note = f"could not trace/compile the vmapped group ({_describe(e)}); running its members one by one"
            self.log(note)
            results, mode, compile_s = self.one_by_one(point_ids, traced, members)
            info.update(mode=mode, note=note, compile_s=compile_s, run_s=time.perf_counter() - start - compile_s)
            return results, info
        info["compile_s"] = time.perf_counter() - start
        start = time.perf_counter()
        try:
            out = jax.block_until_ready(compiled(*args))
        except Exception as e:  # noqa: BLE001 — a run-time error of one member must not sink the others
            info["run_s"] = time.perf_counter() - start
            note = f"the vmapped call raised ({_describe(e)}); rerunning its members one by one to find which"
            self.log(note)
            results, mode, _ = self.one_by_one(point_ids, traced, members)
            info.update(mode=f"vmap, then {mode}", note=note)
            return results, info
        info["run_s"] = time.perf_counter() - start
        leaves = jax.tree.leaves(out)
        if leaves:
            sharding = leaves[0].sharding
            info["n_devices"] = len(sharding.device_set)
            info["sharding"] = str(getattr(sharding, "spec", sharding))
            info["shard_sizes"] = [int(s.data.shape[0]) for s in leaves[0].addressable_shards]
        else:
            info["n_devices"] = len(self.devices)
        info["padded_to"] = args[1].shape[0]
        info["mode"] = mode
        host = _to_host(out)
        results = {m: jax.tree.map(lambda a, j=j: np.asarray(a[j]), host) for j, m in enumerate(members)}
        return results, info

    def one_by_one(self, point_ids, traced, members) -> tuple[dict[tuple[int, int], Any], str, float]:
        """Each member through one compiled, unbatched function (an experiment that shards its own work still
        compiles this way); a member's exception is its own failure. When even one member cannot be compiled, the
        members run as plain Python calls (`sequential`). Returns the results, the mode and the compile seconds."""
        config = self.config_of(point_ids[0])
        int_dtype = jax.dtypes.canonicalize_dtype(np.int64)

        def args(p, s):
            values = {k: np.asarray(self.points[p][k], dtype=self.dtypes[k]) for k in traced}
            return values, np.asarray(s, dtype=int_dtype)

        start = time.perf_counter()
        try:
            compiled = jax.jit(_member_fn(self.module.evaluate, config)).trace(*args(*members[0])).lower().compile()
        except Exception as e:  # noqa: BLE001 — reported, and the members then run in plain Python
            self.log(f"one member cannot be compiled either ({_describe(e)}); calling evaluate in plain Python")
            return self.sequential(members), "sequential", 0.0
        compile_s = time.perf_counter() - start
        out = {}
        for p, s in _progress(members, "members"):
            try:
                out[(p, s)] = jax.tree.map(np.asarray, jax.device_get(compiled(*args(p, s))))
            except Exception as e:  # noqa: BLE001 — recorded as this member's failure
                out[(p, s)] = e
        return out, "one by one", compile_s

    def sequential(self, members) -> dict[tuple[int, int], Any]:
        """Plain Python calls of ``evaluate`` on the concrete config of each member, exceptions caught per member."""
        out = {}
        for p, s in _progress(members, "members"):
            try:
                metrics = self.module.evaluate(self.config_of(p), jax.random.key(s))
                out[(p, s)] = jax.tree.map(lambda a: a if isinstance(a, str) else np.asarray(a), metrics)
            except Exception as e:  # noqa: BLE001 — recorded as this member's failure
                out[(p, s)] = e
        return out


def _progress(items, unit: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items
    return tqdm(items, unit=unit, file=sys.stderr, leave=False, disable=jax.process_index() != 0)


def _to_host(tree):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def _group_by(points: Sequence[Mapping[str, Any]], static: Sequence[str]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, point in enumerate(points):
        groups.setdefault(tuple(repr(point[k]) for k in static), []).append(i)
    return list(groups.values())


def _expand_grid(config: Any, grid: Mapping[str, Any], name: str):
    """``(base config, overrides, axes, points)``; every concrete grid point is built once, so the experiment's
    own ``__post_init__`` checks run on real values before anything is traced."""
    values_of = {}
    for key, values in grid.items():
        if not isinstance(key, str):
            raise ValueError(f"sweep: grid keys must be field names, got {key!r}")
        values_of[key] = _normalise_values(config, key, values)
    if len(values_of.get("seed", [])) > 1:
        raise ValueError("sweep: `seed` takes a single value (the first seed); use `seeds` for the number of seeds")
    overrides = {k: v[0] for k, v in values_of.items() if len(v) == 1}
    axes = {k: v for k, v in values_of.items() if len(v) > 1}
    base = config
    for key, value in overrides.items():
        try:
            base = runs.replace_value(base, key, value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"sweep: {key}={value!r} is rejected by {name}.Config: {e}") from None
    points = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    for point in points:
        try:
            cfg = base
            for key, value in point.items():
                cfg = runs.replace_value(cfg, key, value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"sweep: grid point ({_fmt_point(point)}) is rejected by {name}.Config: {e}") from None
    return base, overrides, axes, points


def _decide_tracing(engine: _Engine, axes: Mapping[str, list], candidates: list[str], reasons: dict[str, str]):
    """Which numeric fields can be traced: all of them if one trace succeeds, else greedily one at a time.

    Each probe traces the vmapped first group (static fields at the first point's values). The last successful
    probe is exactly the first group's trace, so it is returned for reuse. Returns ``(traced, kept probe, probes,
    reason)``; ``reason`` is set when not even the all-static trace works (``evaluate`` cannot be traced at all).
    """
    first = engine.points[0]

    def probe(traced: list[str]):
        static = [k for k in axes if k not in traced]
        ids = [i for i, point in enumerate(engine.points) if all(point[k] == first[k] for k in static)]
        try:
            result, error = engine.trace(ids, traced), None
        except Exception as e:  # noqa: BLE001 — the decision is recorded with the error
            result, error = None, e
        probes.append({"traced": list(traced), "error": None if error is None else _describe(error)})
        return result, error

    probes: list[dict[str, Any]] = []
    traced: list[str] = []
    kept = None
    if candidates:
        kept, error = probe(candidates)
        if error is None:
            return list(candidates), kept, probes, None
        for key in candidates:
            trial = [*traced, key]
            if trial == candidates:  # that is the first probe, which failed
                reasons[key] = f"tracing it raised {_describe(error)}"
                continue
            result, err = probe(trial)
            if err is None:
                traced, kept = trial, result
            else:
                reasons[key] = f"tracing it raised {_describe(err)}"
    if traced:
        return traced, kept, probes, None
    kept, error = probe([])
    return [], kept, probes, None if error is None else _describe(error)


def sweep(
    module_or_name: ModuleType | str,
    config: Any,
    grid: Mapping[str, Sequence[Any] | np.ndarray],
    seeds: int,
    *,
    devices: Sequence[Any] | None = None,
    package: str = "experiments",
    x64: bool = False,
    verbose: bool = True,
) -> SweepResult:
    """Run an experiment's ``evaluate`` over ``grid`` × ``seeds``: vmapped per static group, sharded over devices.

    The members are the Cartesian product of the values of ``grid`` (last field fastest) times the seeds
    ``config.seed + i``, ``i < seeds``; member ``(point, seed)`` computes ``evaluate(config_point, key(seed))``.
    A field given a single value is a plain override of ``config``. See the module docstring for how fields are
    classified (traced / static), grouped, sharded and how failures are handled.

    Arguments:
        module_or_name: the experiment module, or its name in ``package`` (``-`` and ``_`` alike).
        config: the base config (an instance of the module's ``Config``); ``None`` for ``Config()``.
        grid: ``{field: values}``; dotted fields reach nested configs. ``seed`` takes one value only.
        seeds: the number of seeds per grid point, ``>= 1``.
        devices: the devices of the 1-D mesh (default ``jax.devices()``: every local device, or every global device
            under ``jax.distributed``).
        package: where to find the experiment when ``module_or_name`` is a name.
        x64: run under ``jax.enable_x64(True)`` (for experiments whose ``run`` scopes float64 around ``evaluate``;
            the sweep calls ``evaluate`` only).
        verbose: print one line per group and the notes to stderr.

    Returns:
        A `SweepResult`; ``.write(folder)`` writes ``sweep.json``, ``results.csv`` and ``summary.csv``.

    Raises:
        ValueError: for an unknown experiment or field (naming the available ones), an empty or non-sequence list
            of values, several values for ``seed``, ``seeds < 1``, an empty device list, or a grid point that the
            experiment's ``Config`` rejects (its own message, with the grid point).

    Example:
        >>> result = sweep("toy", None, {"lr": [0.1, 0.2], "n": [4, 8]}, seeds=3, package="tests.sweep_pkg")
        ... # doctest: +SKIP
        >>> [(g["static"], g["traced"], g["n_devices"]) for g in result.groups]  # doctest: +SKIP
        [({'n': 4}, ['lr'], 4), ({'n': 8}, ['lr'], 4)]
    """
    module = load_experiment(module_or_name, package) if isinstance(module_or_name, str) else module_or_name
    _check_module(module)
    name = module.__name__.rsplit(".", 1)[-1]
    if config is None:
        config = module.Config()
    if not isinstance(config, module.Config):
        raise ValueError(f"sweep: `config` must be a {name}.Config instance, got {type(config).__name__}")
    if isinstance(seeds, bool) or not isinstance(seeds, int | np.integer) or seeds < 1:
        raise ValueError(f"sweep: `seeds` must be an integer >= 1, got {seeds!r}")
    if not isinstance(grid, Mapping):
        raise ValueError(f"sweep: `grid` must be a mapping {{field: values}}, got {type(grid).__name__}")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("sweep: `devices` is empty")
    base, overrides, axes, points = _expand_grid(config, grid, name)
    with contextlib.ExitStack() as stack:
        if x64:
            stack.enter_context(jax.enable_x64(True))
        return _run(module, name, base, overrides, axes, points, int(seeds), devices, verbose)


def _run(module, name, base, overrides, axes, points, seeds, devices, verbose) -> SweepResult:
    printing = verbose and jax.process_index() == 0
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        if printing:
            print(f"note: {msg}", file=sys.stderr)

    first_seed = int(getattr(base, "seed", 0))
    seed_list = [first_seed + i for i in range(seeds)]
    bounds = np.iinfo(jax.dtypes.canonicalize_dtype(np.int64))
    if seed_list[0] < bounds.min or seed_list[-1] > bounds.max:
        raise ValueError(f"sweep: seeds {seed_list[0]}..{seed_list[-1]} do not fit the default integer dtype")

    dtypes, candidates, reasons = {}, [], {}
    for key, values in axes.items():
        if all(_is_number(v) for v in values):
            candidates.append(key)
            kind = np.float64 if any(isinstance(v, float) for v in values) else np.int64
            dtypes[key] = jax.dtypes.canonicalize_dtype(kind)
        else:
            kinds = sorted({type(v).__name__ for v in values if not _is_number(v)})
            reasons[key] = f"not a number ({', '.join(kinds)} values)"
    engine = _Engine(module, base, points or [{}], seed_list, devices, dtypes, note)
    all_points = list(range(len(engine.points)))
    traced, kept, probes, untraceable = _decide_tracing(engine, axes, candidates, reasons)
    tracing = {"traced": traced, "static": reasons, "probes": probes}

    results: dict[tuple[int, int], Any] = {}
    groups = []
    if untraceable is not None:
        members = engine.members(all_points)
        note(f"{name}.evaluate cannot be traced ({untraceable}); running the {len(members)} members in plain Python")
        start = time.perf_counter()
        results = engine.sequential(members)
        groups.append(
            {
                "static": {},
                "traced": [],
                "points": all_points,
                "members": len(members),
                "mode": "sequential",
                "n_devices": 1,
                "run_s": time.perf_counter() - start,
            }
        )
    else:
        static = [k for k in axes if k not in traced]
        groups_ids = _group_by(engine.points, static)
        for g, ids in enumerate(groups_ids):
            static_values = {k: engine.points[ids[0]][k] for k in static}
            out, info = engine.run_group(ids, traced, kept if g == 0 else None)
            results.update(out)
            groups.append({"static": static_values, "points": ids, **info})
            if printing:
                timing = ", ".join(f"{k[:-2]} {info[k]:.3g} s" for k in ("compile_s", "run_s") if k in info)
                print(
                    f"group {g + 1}/{len(groups_ids)} ({_fmt_point(static_values)}): {info['members']} members,"
                    f" traced {traced or 'nothing'}, {info['mode']} on {info.get('n_devices', 1)} device(s); {timing}",
                    file=sys.stderr,
                )

    rows = []
    for p, s in engine.members(all_points):
        out = results[(p, s)]
        row = {"point": p, "values": dict(engine.points[p]), "seed": s}
        if isinstance(out, BaseException):
            row.update(ok=False, error=_describe(out, limit=1000), metrics=None)
        else:
            bad = _nonfinite(out)
            row.update(ok=not bad, error=f"non-finite metrics: {', '.join(bad)}" if bad else None, metrics=out)
        rows.append(row)
    return SweepResult(
        experiment=name,
        config=base,
        grid=axes,
        overrides=overrides,
        seeds=seed_list,
        points=engine.points,
        rows=rows,
        groups=groups,
        tracing=tracing,
        notes=notes,
        devices=[str(d) for d in devices],
        summary_keys=tuple(module.SUMMARY_KEYS) if hasattr(module, "SUMMARY_KEYS") else None,
        x64=bool(jax.dtypes.canonicalize_dtype(np.float64) == np.float64),
    )
