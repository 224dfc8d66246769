"""``python -m benchmarks NAME [args …]``: run the benchmark module ``benchmarks.NAME``.

Benchmarks are discovered, not listed: every public module of this package (a name not starting with ``_``) that
defines ``main(argv)`` is one. JAX is configured here (float64 on), never at import time of the library.
"""

import importlib
import pkgutil
import sys

import benchmarks
from benchmarks import _harness


def available() -> list[str]:
    """The names of the benchmark modules in this package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def _usage() -> str:
    names = ", ".join(available()) or "(none)"
    return f"usage: python -m benchmarks NAME [--json PATH] [--quick] [...]\navailable benchmarks: {names}"


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to ``benchmarks.<argv[0]>.main(argv[1:])`` and return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in available():
        print(f"unknown benchmark {name!r}.\n{_usage()}", file=sys.stderr)
        return 2
    _harness.configure_jax()  # before the benchmark imports twinjax and creates arrays
    module = importlib.import_module(f"benchmarks.{name}")
    if not callable(getattr(module, "main", None)):
        print(f"benchmarks.{name} has no main(argv).", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
