"""Real sensor logs: a CSV or Parquet table of timestamps, channels and blanks as ``ts``, ``ys``, a mask and ``us``.

A log as it comes off a plant is a table with one time column, one column per sensor channel, maybe some control
columns, and holes. :func:`read_sensor_log` turns it into exactly what the filters take — strictly increasing times
in seconds, observations with ``NaN`` for missing cells (and the matching mask), controls — and refuses, with an error
naming the row and column, anything a filter would silently get wrong: unsorted or duplicated timestamps, cells that
are not numbers, blank controls, channels the model expects but the file lacks (and, with ``strict=True``, columns
the model does not know).

Times may be irregular: the filters integrate the continuous dynamics over each actual interval.
"""

import csv
import datetime as _dt
import gzip
import math
import pathlib
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._types import Array, Bool, Float

#: Cell contents read as a missing measurement (compared after stripping blanks, case-insensitive).
MISSING_TOKENS = frozenset({"", "nan", "-nan", "na", "n/a", "null", "none"})

#: Seconds per unit of a numeric time column.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0, "d": 86400.0}

_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")


class SensorLog(eqx.Module):
    """A sensor log ready for a filter: times, observations with a missing-data mask, and controls.

    The arrays are float64 NumPy arrays exactly as read (timestamps of a long log keep their resolution whatever JAX's
    default precision); :meth:`to_arrays` converts them to JAX arrays for a filter.

    Arguments:
        ts: strictly increasing observation times (s), shape ``(time,)``.
        ys: observations, shape ``(time, obs)`` (or ``(time,)`` for one channel); ``NaN`` marks a missing cell.
        channels: the channel names in observation order (default ``y0, y1, …``).
        us: controls, shape ``(time, control)``; ``us[k]`` is applied from ``ts[k]`` until ``ts[k+1]``. ``None`` for
            an autonomous twin.
        controls: the control column names (default ``u0, u1, …``).
        mask: ``True`` where a measurement is present; default ``~isnan(ys)``. Cells outside the mask are set to NaN.
        time_origin: the ISO-8601 instant that ``ts = 0`` stands for, when the file had calendar timestamps.

    Attributes:
        ts, ys, mask, us, channels, controls, time_origin: as above (``channels`` and ``controls`` are tuples).

    Raises:
        ValueError: naming the argument whose shape disagrees, non-finite or non-increasing ``ts``, infinite ``ys`` or
            non-finite ``us``, or a wrong number of names.

    Example:
        ```python
        log = SensorLog(ts=[0.0, 0.1, 0.25], ys=[[1.0], [np.nan], [0.9]], channels=["angle_rad"])
        ts, ys, us = log.to_arrays()
        result = tj.inference.extended_kalman_filter(twin, ys, us, ts)
        ```
    """

    ts: Float[np.ndarray, " time"]
    ys: Float[np.ndarray, "time obs"]
    mask: Bool[np.ndarray, "time obs"]
    us: Float[np.ndarray, "time control"] | None
    channels: tuple[str, ...] = eqx.field(static=True)
    controls: tuple[str, ...] = eqx.field(static=True)
    time_origin: str | None = eqx.field(static=True)

    def __init__(self, ts, ys, *, channels=None, us=None, controls=None, mask=None, time_origin=None):
        ts = np.array(ts, dtype=np.float64)
        if ts.ndim != 1 or ts.shape[0] < 1:
            raise ValueError(f"`ts` must have shape (time,) with at least one time, got {ts.shape}.")
        if not np.all(np.isfinite(ts)):
            raise ValueError(f"`ts` must be finite; got non-finite times at rows {np.nonzero(~np.isfinite(ts))[0]}.")
        _check_increasing(ts, lambda i: f"row {i}", "`ts`")
        T = ts.shape[0]
        ys = np.array(ys, dtype=np.float64)
        if ys.ndim == 1:
            ys = ys[:, None]
        if ys.ndim != 2 or ys.shape[0] != T:
            raise ValueError(f"`ys` must have shape ({T}, obs) to match `ts`, got {ys.shape}.")
        if np.any(np.isinf(ys)):
            raise ValueError(f"`ys` has infinite entries at (row, channel) {np.argwhere(np.isinf(ys))[:5].tolist()}.")
        if mask is None:
            mask = ~np.isnan(ys)
        else:
            mask = np.array(mask, dtype=bool)
            if mask.shape != ys.shape:
                raise ValueError(f"`mask` must have the shape of `ys` {ys.shape}, got {mask.shape}.")
            mask = mask & ~np.isnan(ys)
        ys = np.where(mask, ys, np.nan)
        channels = _names(channels, ys.shape[1], "y", "channels")
        if us is None:
            if controls:
                raise ValueError(f"`controls` names {list(controls)} but `us` is None.")
            controls = ()
        else:
            us = np.array(us, dtype=np.float64)
            if us.ndim == 1:
                us = us[:, None]
            if us.ndim != 2 or us.shape[0] != T:
                raise ValueError(f"`us` must have shape ({T}, control) to match `ts`, got {us.shape}.")
            if not np.all(np.isfinite(us)):
                bad = np.argwhere(~np.isfinite(us))[:5].tolist()
                raise ValueError(f"`us` must be finite (controls cannot be missing); got non-finite at {bad}.")
            controls = _names(controls, us.shape[1], "u", "controls")
        clash = set(channels) & set(controls)
        if clash:
            raise ValueError(f"names {sorted(clash)} are both in `channels` and in `controls`.")
        self.ts, self.ys, self.mask, self.us = ts, ys, mask, us
        self.channels, self.controls = channels, controls
        self.time_origin = None if time_origin is None else str(time_origin)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def obs_dim(self) -> int:
        """The number of channels."""
        return int(self.ys.shape[1])

    @property
    def control_dim(self) -> int:
        """The number of control columns (0 without controls)."""
        return 0 if self.us is None else int(self.us.shape[1])

    def to_arrays(self) -> tuple[Float[Array, " time"], Float[Array, "time obs"], Float[Array, "time control"] | None]:
        """``(ts, ys, us)`` as JAX arrays (JAX's default float dtype), ready for ``filter(model, ys, us, ts)``;
        ``us`` is ``None`` without controls."""
        us = None if self.us is None else jnp.asarray(self.us, dtype=float)
        return jnp.asarray(self.ts, dtype=float), jnp.asarray(self.ys, dtype=float), us


def read_sensor_log(
    path,
    *,
    channels: Sequence[str] | None = None,
    time_column: str = "time",
    time_unit: str = "s",
    controls: Sequence[str] | None = None,
    t0=None,
    strict: bool = False,
    format: str | None = None,
    delimiter: str | None = None,
) -> SensorLog:
    """Read a CSV or Parquet sensor log into a :class:`SensorLog`.

    The file has a header (CSV) or a schema (Parquet) naming its columns: one time column, the sensor channels and
    optionally control columns. Rows are counted from 0 over the data rows (the CSV line number is given too).

    - **Times** are numbers in ``time_unit`` (converted to seconds; ``t0``, in the same unit, is subtracted when
      given) or ISO-8601 timestamps (``2024-05-01T12:00:00.25Z``, a Parquet timestamp column), converted to seconds
      since ``t0`` (an ISO string or ``datetime``; default: the first timestamp). Timestamps must all carry a UTC
      offset or none of them. They must be strictly increasing: unsorted and duplicated timestamps are an error
      naming the rows and times (sort or de-duplicate the file explicitly — nothing is reordered silently).
    - **Channels**: blank cells and ``nan``/``NA``/``N/A``/``null`` (any case) are missing: ``NaN`` in ``ys`` and
      ``False`` in ``mask``. Any other cell that is not a finite number is an error naming its row and column.
    - **Controls** must be complete: a blank control is an error naming the row (a control is never forward-filled
      silently).

    Arguments:
        path: a ``.csv``/``.tsv``/``.txt`` (optionally ``.gz``) or ``.parquet``/``.pq`` file.
        channels: the sensor channel columns in the model's observation order. Default: every column that is not the
            time or a control, in file order. A requested channel that is not in the file is an error listing the
            file's columns.
        time_column: the name of the time column.
        time_unit: the unit of numeric times, one of ``s, ms, us, ns, min, h, d``. Ignored for ISO timestamps.
        controls: the control columns, in the model's control order (default: none).
        t0: the time origin (see above).
        strict: reject columns that are neither the time, a requested channel nor a control (by default such columns
            are ignored). Use it to catch a renamed or unexpected sensor.
        format: ``"csv"`` or ``"parquet"``; default from the file suffix.
        delimiter: the CSV delimiter; default ``","`` (``"\\t"`` for ``.tsv``).

    Returns:
        A :class:`SensorLog` with ``ts`` (s), ``ys`` (NaN where missing), ``mask``, ``us`` (or ``None``),
        ``channels``, ``controls`` and ``time_origin`` (ISO string of ``t = 0`` for calendar timestamps).

    Raises:
        ValueError: a missing file, unknown format, missing time column or channel (listing the file's columns),
            an unknown column with ``strict=True``, duplicated column names, a ragged CSV row, an unparsable or
            infinite cell, a blank timestamp or control, unsorted or duplicated timestamps, or an empty log.
        ImportError: reading Parquet without ``pyarrow`` installed.

    Example:
        ```python
        log = read_sensor_log("pendulum.csv", channels=["angle_rad"], controls=["torque_Nm"])
        ts, ys, us = log.to_arrays()
        twin = OnlineTwin(pendulum_twin(), "ekf")
        twin.assimilate_log(log)
        ```
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"`path` {str(path)!r} is not a file.")
    fmt = _format(path, format)
    if time_unit not in TIME_UNITS:
        raise ValueError(f"`time_unit` must be one of {sorted(TIME_UNITS)}, got {time_unit!r}.")
    if fmt == "csv":
        columns, label = _read_csv(path, delimiter)
    else:
        columns, label = _read_parquet(path)
    names = list(columns)
    channels, controls = _select(names, channels, controls, time_column, strict, path)
    ts, origin = _times(columns[time_column], time_column, time_unit, t0, label)
    _check_increasing(ts, label, f"the time column {time_column!r} of {path.name}")
    ys = np.empty((ts.shape[0], len(channels)))
    for j, name in enumerate(channels):
        ys[:, j] = _numbers(columns[name], name, label)
    us = None
    if controls:
        us = np.empty((ts.shape[0], len(controls)))
        for j, name in enumerate(controls):
            us[:, j] = _numbers(columns[name], name, label)
            blank = np.nonzero(np.isnan(us[:, j]))[0]
            if blank.size:
                where = ", ".join(label(int(i)) for i in blank[:5])
                raise ValueError(
                    f"control column {name!r} of {path.name} is blank at {where}: controls must be complete "
                    "(nothing is forward-filled silently — fill the file explicitly)."
                )
    return SensorLog(ts, ys, channels=channels, us=us, controls=controls, time_origin=origin)


def write_sensor_log(path, log, *, time_column: str = "time", start=None, format: str | None = None):
    """Write a :class:`SensorLog` as CSV or Parquet (the inverse of :func:`read_sensor_log`).

    Missing cells are written blank (CSV) or null (Parquet); numbers are written with 17 significant digits, so a
    round trip is exact. With ``start`` (an ISO string or ``datetime``) the times are written as ISO-8601 timestamps
    ``start + ts`` (microsecond resolution; a Parquet timestamp column), otherwise as numbers of seconds.

    Arguments:
        path: the file to write; the format follows the suffix unless ``format`` (``"csv"``/``"parquet"``) is given.
        log: the log to write.
        time_column: the name of the time column.
        start: the calendar instant of ``ts = 0`` for ISO timestamps; default numeric seconds.
        format: ``"csv"`` or ``"parquet"``.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ValueError: an unknown format, ``log`` not a :class:`SensorLog`, or a column name used twice.

    Example:
        ```python
        path = write_sensor_log("run.csv", SensorLog(traj.ts, traj.ys, channels=["angle_rad"]))
        ```
    """
    if not isinstance(log, SensorLog):
        raise ValueError(f"`log` must be a SensorLog, got {type(log).__name__}.")
    path = pathlib.Path(path)
    fmt = _format(path, format)
    header = [time_column, *log.channels, *log.controls]
    if len(set(header)) != len(header):
        raise ValueError(f"`time_column` {time_column!r} is also a channel or control name: {header}.")
    start = None if start is None else _as_datetime(start, "start")
    data = [log.ys[:, j] for j in range(log.obs_dim)] + [log.us[:, j] for j in range(log.control_dim)]
    if fmt == "csv":
        opener = gzip.open if path.name.endswith(".gz") else open
        delim = "\t" if ".tsv" in path.suffixes else ","
        with opener(path, "wt", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=delim)
            writer.writerow(header)
            for k, t in enumerate(log.ts):
                stamp = format_float(t) if start is None else (start + _dt.timedelta(seconds=float(t))).isoformat()
                writer.writerow([stamp, *(format_float(col[k]) for col in data)])
        return path
    pa, pq = _pyarrow()
    if start is None:
        time_arr = pa.array(log.ts, type=pa.float64())
    else:
        micros = np.round(log.ts * 1e6).astype(np.int64) + _epoch_micros(start)
        tz = None if start.tzinfo is None else "UTC"
        time_arr = pa.array(micros, type=pa.timestamp("us", tz=tz))
    arrays = [time_arr] + [pa.array(col, type=pa.float64(), mask=np.isnan(col)) for col in data]
    pq.write_table(pa.table(arrays, names=header), path)
    return path


def format_float(x) -> str:
    """A number as a CSV cell that reads back exactly; NaN as a blank cell."""
    x = float(x)
    return "" if math.isnan(x) else format(x, ".17g")


# ---------------------------------------------------------------------------------------------------------------------
# reading


def _format(path: pathlib.Path, format: str | None) -> str:
    if format is not None:
        if format not in ("csv", "parquet"):
            raise ValueError(f"`format` must be 'csv' or 'parquet', got {format!r}.")
        return format
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    raise ValueError(
        f"cannot tell the format of {path.name!r} from its suffix (expected one of "
        f"{', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)}); pass `format='csv'` or `format='parquet'`."
    )


def _read_csv(path: pathlib.Path, delimiter: str | None):
    """Columns as lists of strings, and a row labeller naming data row and file line."""
    if delimiter is None:
        delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = None
        rows, lines = [], []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            if header is None:
                header = [c.strip() for c in row]
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path.name} line {reader.line_num} has {len(row)} cells but the header has {len(header)} "
                    f"columns {header}."
                )
            rows.append(row)
            lines.append(reader.line_num)
    if header is None:
        raise ValueError(f"{path.name} is empty: expected a header row naming the columns.")
    _check_unique(header, path)
    if not rows:
        raise ValueError(f"{path.name} has a header but no data rows.")
    columns = {name: [r[j] for r in rows] for j, name in enumerate(header)}
    return columns, lambda i: f"row {i} (line {lines[i]})"


def _read_parquet(path: pathlib.Path):
    """Columns as pyarrow ChunkedArrays, and a row labeller."""
    pa, pq = _pyarrow()
    table = pq.read_table(path)
    _check_unique(table.column_names, path)
    if table.num_rows == 0:
        raise ValueError(f"{path.name} has no rows.")
    return {name: table.column(name) for name in table.column_names}, lambda i: f"row {i}"


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # an optional dependency: only Parquet needs it
        raise ImportError(
            "reading or writing Parquet sensor logs needs `pyarrow`: `pip install pyarrow` (or use a CSV log)."
        ) from e
    return pa, pq


def _check_unique(header, path):
    seen, dup = set(), []
    for name in header:
        if name in seen:
            dup.append(name)
        seen.add(name)
    if dup:
        raise ValueError(f"{path.name} has duplicated column names {dup}; columns: {list(header)}.")


def _select(names, channels, controls, time_column, strict, path):
    listing = f"the file's columns are {names}"
    if time_column not in names:
        raise ValueError(f"`time_column` {time_column!r} is not a column of {path.name}; {listing}.")
    controls = () if controls is None else tuple(_as_names(controls, "controls"))
    if channels is None:
        channels = tuple(n for n in names if n != time_column and n not in controls)
    else:
        channels = tuple(_as_names(channels, "channels"))
    for arg, requested in (("channels", channels), ("controls", controls)):
        if len(set(requested)) != len(requested):
            raise ValueError(f"`{arg}` names a column twice: {list(requested)}.")
        if time_column in requested:
            raise ValueError(f"`{arg}` includes the time column {time_column!r}.")
        missing = [n for n in requested if n not in names]
        if missing:
            what = "channel" if arg == "channels" else "control"
            raise ValueError(f"{what}{'s' if len(missing) > 1 else ''} {missing} not in {path.name}; {listing}.")
    clash = set(channels) & set(controls)
    if clash:
        raise ValueError(f"columns {sorted(clash)} are requested both as `channels` and as `controls`.")
    if not channels:
        raise ValueError(f"{path.name} has no channel columns besides the time and controls; {listing}.")
    if strict:
        unknown = [n for n in names if n != time_column and n not in channels and n not in controls]
        if unknown:
            raise ValueError(
                f"unknown channels {unknown} in {path.name} (strict=True): the model expects channels "
                f"{list(channels)} and controls {list(controls)}; pass them in `channels` or use strict=False to "
                "ignore extra columns."
            )
    return channels, controls


def _as_names(names, arg):
    if isinstance(names, str):
        raise ValueError(f"`{arg}` must be a list of column names, got the string {names!r}; use [{names!r}].")
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"`{arg}` must hold column names (strings), got {bad}.")
    return names


def _names(names, size, prefix, arg) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{prefix}{j}" for j in range(size))
    names = tuple(_as_names(names, arg))
    if len(names) != size:
        raise ValueError(f"`{arg}` must name {size} columns, got {len(names)}: {list(names)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`{arg}` names a column twice: {list(names)}.")
    return names


def _is_missing(cell) -> bool:
    if cell is None:
        return True
    if isinstance(cell, float):
        return math.isnan(cell)
    return isinstance(cell, str) and cell.strip().lower() in MISSING_TOKENS


def _numbers(column, name: str, label: Callable[[int], str]) -> Float[np.ndarray, " time"]:
    """A channel column as float64 with NaN for missing cells; an error naming row and column for a bad cell."""
    if not isinstance(column, list):  # a pyarrow column
        pa, _ = _pyarrow()
        typ = column.type
        if (
            pa.types.is_integer(typ)
            or pa.types.is_floating(typ)
            or pa.types.is_boolean(typ)
            or pa.types.is_decimal(typ)
        ):
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
            values = np.where(column.is_null().to_numpy(zero_copy_only=False), np.nan, values)
            bad = np.nonzero(np.isinf(values))[0]
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"{label(i)}, column {name!r}: infinite value {values[i]} (missing cells are NaN).")
            return values
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise ValueError(f"column {name!r} has type {typ}; a channel or control column must hold numbers.")
        column = column.to_pylist()
    out = np.empty(len(column))
    for i, cell in enumerate(column):
        if _is_missing(cell):
            out[i] = np.nan
            continue
        try:
            value = float(cell)
        except (TypeError, ValueError):
            raise ValueError(f"{label(i)}, column {name!r}: cannot read {cell!r} as a number.") from None
        if math.isinf(value):
            raise ValueError(f"{label(i)}, column {name!r}: infinite value {cell!r} (missing cells are blank or NaN).")
        out[i] = value
    return out


def _as_datetime(value, arg: str) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return value
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return _dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"`{arg}` must be an ISO-8601 timestamp, got {value!r}.") from None
    raise ValueError(f"`{arg}` must be an ISO-8601 string or a datetime, got {type(value).__name__}.")


def _epoch_micros(when: _dt.datetime) -> int:
    """Microseconds since 1970-01-01 (UTC for an aware datetime, the same wall clock for a naive one)."""
    epoch = _dt.datetime(1970, 1, 1, tzinfo=None if when.tzinfo is None else _dt.UTC)
    delta = when - epoch
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _times(column, name: str, unit: str, t0, label) -> tuple[Float[np.ndarray, " time"], str | None]:
    """Seconds (since ``t0`` or the first ISO timestamp) and the ISO origin (``None`` for numeric times)."""
    if not isinstance(column, list):
        pa, _ = _pyarrow()
        typ = column.type
        if column.null_count:
            i = int(np.nonzero(column.is_null().to_numpy(zero_copy_only=False))[0][0])
            raise ValueError(f"{label(i)}: the timestamp in column {name!r} is blank.")
        if pa.types.is_timestamp(typ):
            ticks = column.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
            per_us = {"s": 1e-6, "ms": 1e-3, "us": 1.0, "ns": 1e3}[typ.unit]
            origin = _timestamp_origin(t0, typ.tz is not None, name)
            if origin is None:
                origin_ticks = int(ticks[0])
                origin = _dt.datetime(1970, 1, 1, tzinfo=None if typ.tz is None else _dt.UTC)
                origin = origin + _dt.timedelta(microseconds=origin_ticks / per_us)
            else:
                origin_ticks = int(round(_epoch_micros(origin) * per_us))
            seconds = (ticks - origin_ticks).astype(np.float64) * (1e-6 / per_us)
            return seconds, origin.isoformat()
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
            return _numeric_times(values, unit, t0, name, label), None
        column = column.to_pylist()
    cells = column
    for i, cell in enumerate(cells):
        if _is_missing(cell):
            raise ValueError(f"{label(i)}: the timestamp in column {name!r} is blank.")
    first = cells[0]
    numeric = not isinstance(first, (_dt.date, _dt.datetime))
    if numeric and isinstance(first, str):
        try:
            float(first)
        except ValueError:
            numeric = False
    if numeric:
        values = np.empty(len(cells))
        for i, cell in enumerate(cells):
            try:
                values[i] = float(cell)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{label(i)}, column {name!r}: cannot read the timestamp {cell!r} as a number (the first "
                    "timestamp is numeric, so all must be)."
                ) from None
        return _numeric_times(values, unit, t0, name, label), None
    stamps = []
    for i, cell in enumerate(cells):
        if isinstance(cell, (_dt.date, _dt.datetime)):
            stamps.append(_as_datetime(cell, name))
            continue
        try:
            stamps.append(_dt.datetime.fromisoformat(str(cell).strip()))
        except ValueError:
            raise ValueError(
                f"{label(i)}, column {name!r}: cannot read the timestamp {cell!r} as ISO-8601 "
                "(e.g. 2024-05-01T12:00:00.250Z) or as a number."
            ) from None
    aware = stamps[0].tzinfo is not None
    for i, s in enumerate(stamps):
        if (s.tzinfo is not None) != aware:
            raise ValueError(
                f"{label(i)}, column {name!r}: timestamp {cells[i]!r} "
                f"{'lacks' if aware else 'has'} a UTC offset but {cells[0]!r} in row 0 "
                f"{'has' if aware else 'lacks'} one; all timestamps must agree."
            )
    origin = _timestamp_origin(t0, aware, name) or stamps[0]
    seconds = np.array([(s - origin).total_seconds() for s in stamps])
    return seconds, origin.isoformat()


def _timestamp_origin(t0, aware: bool, name: str):
    if t0 is None:
        return None
    if isinstance(t0, (int, float, np.number)):
        raise ValueError(
            f"`t0` must be an ISO-8601 string or a datetime for the calendar timestamps of column {name!r}, got {t0!r}."
        )
    origin = _as_datetime(t0, "t0")
    if (origin.tzinfo is not None) != aware:
        raise ValueError(
            f"`t0` {origin.isoformat()!r} {'has' if origin.tzinfo else 'lacks'} a UTC offset but the timestamps of "
            f"column {name!r} {'have' if aware else 'do not'}; they must agree."
        )
    return origin


def _numeric_times(values, unit, t0, name, label):
    bad = np.nonzero(~np.isfinite(values))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{label(i)}, column {name!r}: the timestamp {values[i]} is not finite.")
    if t0 is not None:
        if not isinstance(t0, (int, float, np.number)):
            raise ValueError(
                f"`t0` must be a number (in `time_unit`) for the numeric times of column {name!r}, got {t0!r}."
            )
        values = values - float(t0)
    return values * TIME_UNITS[unit]


def _check_increasing(ts, label, what: str) -> None:
    """Raise naming the offending rows and times when ``ts`` is not strictly increasing."""
    d = np.diff(ts)
    back = np.nonzero(d < 0)[0]
    if back.size:
        pairs = "; ".join(
            f"{label(int(i) + 1)} at t = {ts[i + 1]:.9g} s comes after {label(int(i))} at t = {ts[i]:.9g} s"
            for i in back[:3]
        )
        more = f" (and {back.size - 3} more)" if back.size > 3 else ""
        raise ValueError(f"{what} is not sorted: {pairs}{more}. Sort the log by time before reading it.")
    same = np.nonzero(d == 0)[0]
    if same.size:
        pairs = "; ".join(f"{label(int(i))} and {label(int(i) + 1)} both at t = {ts[i]:.9g} s" for i in same[:3])
        more = f" (and {same.size - 3} more)" if same.size > 3 else ""
        raise ValueError(f"{what} has duplicated timestamps: {pairs}{more}. Merge or drop the duplicates explicitly.")


__all__ = ["MISSING_TOKENS", "TIME_UNITS", "SensorLog", "format_float", "read_sensor_log", "write_sensor_log"]
