"""Run folders, typed config overrides and result files for experiments.

Generic helpers behind ``twinjax run``; nothing here knows a particular experiment. An experiment's
configuration is a frozen dataclass (see the ``experiments`` package docstring for the convention), and a run
writes into one folder::

    runs/<name>/<YYYYmmdd-HHMMSS[-n]>/
        config.json      the config, experiment name, versions, devices, timestamp, git commit
        results.json     the metrics returned by the experiment
        metrics.csv      per-step training curves, when the experiment trains
        figures/*.png

JSON files are always valid JSON: non-finite floats (NaN, +inf, -inf) are written as ``null``, arrays as
(nested) lists, dataclasses and named tuples as objects.

Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...     n: int = 10
    ...     lr: float = 1e-3
    >>> apply_overrides(Config(), ["n=3", "lr=0.1"])
    Config(n=3, lr=0.1)
"""

import csv
import dataclasses
import datetime
import difflib
import enum
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

import numpy as np

__all__ = [
    "apply_overrides",
    "environment",
    "make_run_dir",
    "parse_value",
    "replace_value",
    "summary_table",
    "to_jsonable",
    "write_config",
    "write_json",
    "write_metrics_csv",
]

ConfigT = TypeVar("ConfigT")
PathLike = str | os.PathLike[str]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NONE = frozenset({"none", "null"})


# --------------------------------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------------------------------


def make_run_dir(name: str, out: PathLike | None = None, root: PathLike = "runs") -> pathlib.Path:
    """Create the folder of one run, with a ``figures/`` subfolder, and return it.

    Arguments:
        name: experiment name; becomes a path component, so it must not contain a path separator.
        out: explicit folder to use instead (created if missing; an existing folder is reused).
        root: parent of the per-experiment folders when ``out`` is not given.

    Returns:
        ``out`` if given, else ``root/name/YYYYmmdd-HHMMSS``, with ``-1``, ``-2``, … appended when a run started
        in the same second already owns that folder (creation is atomic, so concurrent runs never share one).

    Raises:
        ValueError: if ``name`` is empty or contains a path separator.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"make_run_dir: `name` must be a plain folder name, got {name!r}")
    if out is not None:
        run_dir = pathlib.Path(out)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        parent = pathlib.Path(root) / name
        parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        suffix = 0
        while True:
            run_dir = parent / (stamp if suffix == 0 else f"{stamp}-{suffix}")
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                suffix += 1
    (run_dir / "figures").mkdir(exist_ok=True)
    return run_dir


# --------------------------------------------------------------------------------------------------------------------
# JSON / CSV
# --------------------------------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` to plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Handles numpy and JAX arrays and scalars (0-d arrays become scalars), dataclasses (incl. equinox modules),
    named tuples, mappings, sequences, sets, paths, enums and datetimes. Non-finite floats become ``None`` so the
    output is strict JSON.

    Raises:
        TypeError: for an object of another type, naming where it sits in ``obj``.
    """
    return _jsonable(obj, "obj")


def _jsonable(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic) or hasattr(obj, "__array__"):
        array = np.asarray(obj)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"to_jsonable: cannot convert an array of dtype {array.dtype} at {where}")
        return _jsonable(array.item() if array.ndim == 0 else array.tolist(), where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return _jsonable(obj._asdict(), where)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        return [_jsonable(v, f"{where}[...]") for v in sorted(obj, key=repr)]
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, datetime.datetime | datetime.date):
        return obj.isoformat()
    raise TypeError(f"to_jsonable: cannot convert {type(obj).__name__} at {where} to JSON")


def write_json(path: PathLike, obj: Any) -> pathlib.Path:
    """Write ``obj`` to ``path`` as indented, strict JSON (see `to_jsonable` for the conversions).

    The file is written to a temporary name and renamed, so a crash never leaves half a file.

    Returns:
        The path written.
    """
    path = pathlib.Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_metrics_csv(path: PathLike, columns: Mapping[str, Any]) -> pathlib.Path:
    """Write equal-length 1-D columns (e.g. ``{"step": ..., "loss": ...}``) to a CSV file with a header row.

    Floats are written in shortest round-trip form (``nan``/``inf`` as such, which numpy and pandas read back).

    Raises:
        ValueError: if there are no columns, a column is not 1-D, or the lengths differ.
    """
    if not columns:
        raise ValueError("write_metrics_csv: `columns` is empty")
    arrays = {}
    for name, values in columns.items():
        array = np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"write_metrics_csv: column {name!r} must be 1-D, got shape {array.shape}")
        arrays[str(name)] = array
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"write_metrics_csv: columns must have equal lengths, got {lengths}")
    path = pathlib.Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(arrays)
        for row in zip(*(a.tolist() for a in arrays.values()), strict=True):
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return path


# --------------------------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------------------------


def _twinjax_version() -> str | None:
    try:
        return importlib.metadata.version("twinjax")
    except importlib.metadata.PackageNotFoundError:
        return getattr(sys.modules.get("twinjax"), "__version__", None)


def _git_commit() -> str | None:
    # Best effort and bounded: no shell, a short timeout, and any failure (no git, not a checkout, no commit yet,
    # "dubious ownership") just means the commit is unknown.
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=pathlib.Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def environment() -> dict[str, Any]:
    """What identifies the software and hardware of a run: ``timestamp`` (local ISO 8601), ``twinjax_version``,
    ``jax_version``, ``python_version``, ``platform``, ``devices`` (``str`` of each JAX device) and ``git_commit``
    (``None`` when unavailable)."""
    import jax  # deferred: `twinjax list` and the help text should not pay for importing JAX

    return {
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "twinjax_version": _twinjax_version(),
        "jax_version": jax.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "git_commit": _git_commit(),
    }


def write_config(
    run_dir: PathLike,
    config: Any,
    *,
    name: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``run_dir/config.json``: the config plus what is needed to reproduce and compare the run.

    The file holds ``experiment`` (``name``), ``config`` (the dataclass as a dict), ``timestamp`` (local ISO 8601),
    ``twinjax_version``, ``jax_version``, ``python_version``, ``platform``, ``devices`` (``str`` of each JAX
    device), ``git_commit`` (``None`` when unavailable), and the entries of ``extra`` (e.g. the CLI overrides).

    Arguments:
        run_dir: the run folder (see `make_run_dir`).
        config: a dataclass instance.
        name: experiment name.
        extra: further JSON-able entries.

    Returns:
        The path of ``config.json``.

    Raises:
        ValueError: if ``config`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"write_config: `config` must be a dataclass instance, got {type(config).__name__}")
    record: dict[str, Any] = {"experiment": name, "config": config, **environment()}
    record.update(extra or {})
    return write_json(pathlib.Path(run_dir) / "config.json", record)


# --------------------------------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------------------------------


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _field_types(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        # Unresolvable string annotations (e.g. a class defined inside a function): fall back per field.
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _valid_keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if _is_dataclass_instance(value):
            keys.extend(_valid_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def _convert(text: str, tp: Any) -> Any:
    """Convert the text of an override to type ``tp``; raise ValueError with the reason on failure."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is str or isinstance(tp, str):
        return text
    if origin is Union or origin is types.UnionType:
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        reasons = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(text, arg)
            except ValueError as e:
                reasons.append(str(e))
        raise ValueError("; ".join(reasons))
    if origin is Literal:
        for allowed in args:
            if isinstance(allowed, bool):
                if text.strip().lower() in (_TRUE if allowed else _FALSE):
                    return allowed
            elif str(allowed) == text.strip():
                return allowed
        raise ValueError(f"must be one of {', '.join(repr(a) for a in args)}")
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("must be one of true/false, 1/0, yes/no, on/off")
    if tp is int:
        try:
            return int(text.strip(), 0)
        except ValueError:
            pass
        try:
            as_float = float(text)
        except ValueError:
            raise ValueError("must be an integer") from None
        if not as_float.is_integer():
            raise ValueError("must be an integer")
        return int(as_float)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("must be a number") from None
    if tp is tuple or tp is list or origin in (tuple, list):
        stripped = text.strip()
        if stripped[:1] + stripped[-1:] in ("()", "[]"):
            stripped = stripped[1:-1].strip()
        items = [s.strip() for s in stripped.split(",")] if stripped else []
        if items and items[-1] == "":  # allow a trailing comma: "1," is the 1-tuple
            items = items[:-1]
        if not args:
            item_types = [str] * len(items)
        elif origin is list:
            item_types = [args[0]] * len(items)
        elif len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(items)
        else:
            if len(items) != len(args):
                raise ValueError(f"must have exactly {len(args)} comma-separated items, got {len(items)}")
            item_types = list(args)
        values = []
        for i, (item, item_type) in enumerate(zip(items, item_types, strict=True)):
            try:
                values.append(_convert(item, item_type))
            except ValueError as e:
                raise ValueError(f"item {i} ({item!r}) {e}") from None
        return list(values) if (tp is list or origin is list) else tuple(values)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        names = [m.name for m in tp]
        if text.strip() in names:
            return tp[text.strip()]
        raise ValueError(f"must be one of {', '.join(names)}")
    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        return tp(text)
    raise ValueError(f"fields of type {_type_name(tp)} cannot be set from the command line")


def _resolve(config: Any, path: list[str], full_key: str, root: Any) -> tuple[Any, str]:
    """The dataclass owning the leaf field named by ``path`` and that field's name (errors name ``full_key``)."""
    names = {f.name for f in dataclasses.fields(config)}
    head = path[0]
    if head not in names:
        valid = _valid_keys(root)
        close = difflib.get_close_matches(full_key, valid, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown config key {full_key!r} for {type(root).__name__}.{hint} Valid keys: {', '.join(valid)}"
        )
    current = getattr(config, head)
    if len(path) > 1:
        if not _is_dataclass_instance(current):
            raise ValueError(
                f"config key {full_key!r}: {head!r} is a {type(current).__name__}, not a nested config, "
                f"so it has no field {path[1]!r}"
            )
        return _resolve(current, path[1:], full_key, root)
    if _is_dataclass_instance(current):
        fields = ", ".join(f"{full_key}.{k}" for k in _valid_keys(current))
        raise ValueError(f"config key {full_key!r} is a nested config; set its fields instead: {fields}")
    return config, head


def _replace(config: Any, path: list[str], value: Any) -> Any:
    if len(path) > 1:
        value = _replace(getattr(config, path[0]), path[1:], value)
    return dataclasses.replace(config, **{path[0]: value})


def _set(config: Any, path: list[str], text: str, full_key: str, root: Any) -> Any:
    return _replace(config, path, parse_value(config, full_key, text))


def parse_value(config: Any, key: str, text: str) -> Any:
    """The value that the override ``key=text`` would give the field ``key`` of ``config``, converted by its type.

    No config is built, so the dataclass's ``__post_init__`` checks do not run (see `replace_value`).

    Raises:
        ValueError: for an unknown key (listing the valid keys) or a value that does not convert to the type.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     n: int = 10
        >>> parse_value(Config(), "n", "1e3")
        1000
    """
    owner, head = _resolve(config, key.split("."), key, config)
    tp = _field_types(type(owner))[head]
    try:
        return _convert(text, tp)
    except ValueError as e:
        raise ValueError(f"cannot set {key}={text!r}: expected {_type_name(tp)}, {e}") from None


def replace_value(config: ConfigT, key: str, value: Any) -> ConfigT:
    """A copy of ``config`` with the (dotted) field ``key`` set to ``value``; ``__post_init__`` runs at each level.

    Raises:
        ValueError: for an unknown key, or whatever the dataclass's own checks raise for ``value``.
    """
    path = key.split(".")
    _resolve(config, path, key, config)
    return _replace(config, path, value)


def apply_overrides(config: ConfigT, overrides: Sequence[str]) -> ConfigT:
    """Return a copy of the dataclass ``config`` with ``key=value`` overrides applied, in order.

    Each value is converted according to the field's annotation: ``int`` (also ``1e3``, ``0x10``), ``float``,
    ``bool`` (``true/false``, ``1/0``, ``yes/no``, ``on/off``), ``str``, ``Literal[...]`` (validated),
    ``X | None`` (``none``/``null`` gives ``None``), ``tuple[X, ...]`` / ``tuple[X, Y]`` / ``list[X]``
    (comma-separated, optional brackets, ``""`` is empty), ``Enum`` (by member name) and ``pathlib.Path``.
    Nested dataclass fields are reached with dotted keys (``model.dt=0.1``). The dataclass's own
    ``__post_init__`` checks run on the new value.

    Arguments:
        config: a dataclass instance (usually frozen).
        overrides: strings of the form ``key=value``; the value may itself contain ``=``.

    Returns:
        A new config of the same type.

    Raises:
        ValueError: for an override without ``=``, an unknown key (listing the valid keys and suggesting close
            matches), or a value that does not convert to the field's type (naming the expected type).

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     sizes: tuple[int, ...] = (8, 8)
        ...     method: Literal["ekf", "ukf"] = "ekf"
        >>> apply_overrides(Config(), ["sizes=16,16,4", "method=ukf"])
        Config(sizes=(16, 16, 4), method='ukf')
    """
    if not _is_dataclass_instance(config):
        raise ValueError(f"apply_overrides: `config` must be a dataclass instance, got {type(config).__name__}")
    if isinstance(overrides, str):
        raise ValueError(f"apply_overrides: `overrides` must be a sequence of 'key=value' strings, got {overrides!r}")
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {override!r} is not of the form key=value")
        config = _set(config, key.split("."), text, key, config)
    return config


# --------------------------------------------------------------------------------------------------------------------
# Summary table
# --------------------------------------------------------------------------------------------------------------------


def _flatten(results: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _format_scalar(value: Any) -> str | None:
    """Text of a scalar result, or None when ``value`` is not a scalar (arrays, lists, ...)."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    if hasattr(value, "__array__") and np.ndim(value) == 0:
        return _format_scalar(np.asarray(value).item())
    return None


def summary_table(results: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """Format the scalar entries of ``results`` as a two-column, aligned text table.

    Nested dicts are flattened with dotted names; floats show 4 significant digits; arrays and lists are left
    out. ``keys`` selects and orders rows: a key names a flattened entry or a prefix of nested ones (``"filter"``
    selects ``filter.rmse`` and ``filter.nll``); a key with nothing behind it shows ``(missing)``.

    Example:
        >>> print(summary_table({"rmse": 0.012345, "fit": {"steps": 200}}))
        metric       value
        ---------  -------
        rmse       0.01235
        fit.steps      200
    """
    flat = _flatten(results)
    if keys is None:
        selected = list(flat)
    else:
        selected = []
        for key in keys:
            matches = [k for k in flat if k == key or k.startswith(key + ".")]
            selected.extend(matches or [key])
    rows = []
    for key in selected:
        text = _format_scalar(flat[key]) if key in flat else "(missing)"
        if text is not None:
            rows.append((key, text))
    if not rows:
        return "(no scalar results)"
    width_key = max(len("metric"), *(len(k) for k, _ in rows))
    width_value = max(len("value"), *(len(v) for _, v in rows))
    lines = [f"{'metric':<{width_key}}  {'value':>{width_value}}", f"{'-' * width_key}  {'-' * width_value}"]
    lines += [f"{k:<{width_key}}  {v:>{width_value}}" for k, v in rows]
    return "\n".join(lines)
