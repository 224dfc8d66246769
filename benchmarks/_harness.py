"""Timing helpers shared by the benchmarks (STYLE.md §24).

- run time is the best of ``repeats`` calls after one warm-up call, each blocked with ``jax.block_until_ready``;
- compile time is reported separately: the first call's time minus the best steady-state call (trace + lower +
  compile of a jitted function, i.e. what a user waits for once per shape);
- every timed JAX function must be traced exactly once: a trace counter (a Python counter incremented inside the
  traced function, or ``eqx.debug.get_num_traces`` of a twinjax entry point) must not move during the timed calls.
"""

import dataclasses
import json
import math
import os
import pathlib
import platform
import resource
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def configure_jax() -> None:
    """Benchmark-wide JAX configuration: float64 on (done by the entry point, never by the library)."""
    import jax

    jax.config.update("jax_enable_x64", True)


class TraceCounter:
    """Counts how often the functions it wraps are traced (call it on the Python function *inside* ``jax.jit``)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fn: Callable) -> Callable:
        def counted(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)

        counted.__name__ = getattr(fn, "__name__", "counted")
        return counted


@dataclasses.dataclass(frozen=True)
class Timing:
    """One timed case: the first call (includes compilation), the steady-state calls, and how many times the case's
    calls traced its jitted function (1: compiled once, on the warm-up call)."""

    first_s: float
    runs_s: tuple[float, ...]
    traces: int | None = None

    @property
    def best_s(self) -> float:
        return min(self.runs_s)

    @property
    def compile_s(self) -> float:
        return max(self.first_s - self.best_s, 0.0)


def block(out: Any) -> Any:
    """Wait for every JAX array in ``out`` (a pytree; NumPy leaves are already done)."""
    import jax

    return jax.block_until_ready(out)


def time_calls(
    fn: Callable[[], Any], repeats: int, *, traces: Callable[[], int] | None = None, warmup: bool = True
) -> tuple[Timing, Any]:
    """Time ``fn()``: one warm-up call, then ``repeats`` calls; return the timing and the last output.

    ``traces`` returns the current trace count of the jitted function behind ``fn``; it must not change over the
    timed calls (an ``AssertionError`` otherwise: a benchmark that recompiles inside its timed loop measures nothing).
    """
    first = math.nan
    start_traces = None if traces is None else traces()
    if warmup:
        start = time.perf_counter()
        out = block(fn())
        first = time.perf_counter() - start
    before = None if traces is None else traces()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = block(fn())
        runs.append(time.perf_counter() - start)
    after = None if traces is None else traces()
    if before != after:
        raise AssertionError(f"the timed function was retraced during the timed calls ({before} -> {after} traces).")
    n_traces = None if traces is None else after - start_traces
    return Timing(first if warmup else min(runs), tuple(runs), n_traces), out


def time_interleaved(
    cases: dict[str, tuple[Callable[[], Any], Callable[[], int] | None]], repeats: int
) -> dict[str, tuple[Timing, Any]]:
    """Time several cases round-robin (``{name: (fn, traces)}``): one warm-up call each, then ``repeats`` rounds.

    Interleaving gives every case the same share of a noisy machine's good and bad moments, so their ratio (e.g.
    twinjax against its floor) is fairer than timing one case's block after another's. Trace counts are checked as in
    :func:`time_calls`.
    """
    first, out, before, runs = {}, {}, {}, {name: [] for name in cases}
    start_traces = {name: None if traces is None else traces() for name, (_, traces) in cases.items()}
    for name, (fn, _) in cases.items():
        start = time.perf_counter()
        out[name] = block(fn())
        first[name] = time.perf_counter() - start
    for name, (_, traces) in cases.items():
        before[name] = None if traces is None else traces()
    for _ in range(repeats):
        for name, (fn, _) in cases.items():
            start = time.perf_counter()
            out[name] = block(fn())
            runs[name].append(time.perf_counter() - start)
    result = {}
    for name, (_, traces) in cases.items():
        after = None if traces is None else traces()
        if before[name] != after:
            raise AssertionError(f"{name} was retraced during the timed calls ({before[name]} -> {after} traces).")
        n_traces = None if traces is None else after - start_traces[name]
        result[name] = (Timing(first[name], tuple(runs[name]), n_traces), out[name])
    return result


def check(value: float | None, target: float, op: str) -> dict:
    """A target entry ``{"value", "target", "op", "met"}`` (``op`` is ``">="`` or ``"<="``)."""
    if op not in (">=", "<="):
        raise ValueError(f"`op` must be '>=' or '<=', got {op!r}.")
    met = None if value is None else bool(value >= target if op == ">=" else value <= target)
    return {"value": value, "target": target, "op": op, "met": met}


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB (10⁹ bytes); Linux reports ``ru_maxrss`` in KiB, macOS in bytes."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def env_info() -> dict:
    """Where the numbers were measured: library versions, JAX backend and devices, CPU count."""
    import jax

    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        **{name: _version(name) for name in ("equinox", "diffrax", "numpy", "scipy")},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device": f"{devices[0].platform}:{devices[0].device_kind}",
        "device_count": len(devices),
        "cpu_count": os.cpu_count(),
        "x64": bool(jax.config.jax_enable_x64),
    }


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as indented JSON (NaN/inf become ``null``), creating the parent folder."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(data), indent=2, sort_keys=False) + "\n")


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(x, spec: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def print_table(rows: list[dict], title: str = "") -> None:
    """Print rows with keys ``case, compile_s, run_s, ratio, target, met`` as an aligned text table."""
    header = ("case", "compile s", "run s", "ratio vs twinjax", "target", "met")
    body = [
        (
            r["case"],
            _fmt(r.get("compile_s"), ".3f"),
            _fmt(r.get("run_s"), ".4g"),
            _fmt(r.get("ratio"), ".3g"),
            _fmt(r.get("target"), ""),
            {True: "yes", False: "NO", None: "-"}[r.get("met")],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    if title:
        print(title)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(line)
    for b in body:
        print("  ".join([b[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(b[1:], widths[1:]))]))
