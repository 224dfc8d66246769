"""The ``twinjax`` command: list and run experiments.

Usage::

    twinjax list
    twinjax run NAME [--quick] [--set key=value ...] [--seed N] [--out DIR]
    twinjax sweep NAME --set key=v1,v2,... [--set key2=a,b ...] --seeds N [--quick] [--x64] [--out DIR] [--distributed]

Experiments are the modules of the ``experiments`` package that define ``Config`` and ``run`` (the convention is
in that package's docstring); ``--package`` points the command at another package with the same convention.
Listing reads the modules' source without importing them, so it stays fast; ``run`` imports only the chosen one.
``sweep`` runs the experiment's pure ``evaluate`` over a grid (see `twinjax.sweep` and docs/sweeps.md).
Each subcommand is a ``_cmd_<name>(args) -> int`` function registered in `_build_parser`.
"""

import argparse
import ast
import importlib
import importlib.util
import itertools
import os
import pathlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["discover", "main", "run_experiment"]

DEFAULT_PACKAGE = "experiments"


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def discover(package: str = DEFAULT_PACKAGE) -> dict[str, str]:
    """Find the experiments of ``package`` without importing them.

    A public submodule (name not starting with ``_``; a subpackage's ``__init__.py`` counts) is an experiment
    when its source defines or imports ``Config`` and ``run`` at top level.

    Returns:
        ``{name: first line of the module docstring}``, sorted by name. A module whose source does not parse is
        listed with the syntax error as its description, so that ``run`` then shows the full error.

    Raises:
        ValueError: if ``package`` cannot be found or is not a package.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.submodule_search_locations is None:
        raise ValueError(f"experiment package {package!r} not found (or not a package) on sys.path")
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(spec.submodule_search_locations):
        if info.name.startswith("_"):
            continue
        base = pathlib.Path(getattr(info.module_finder, "path", "")) / info.name
        source_path = base / "__init__.py" if info.ispkg else base.with_suffix(".py")
        if not source_path.is_file():
            continue
        try:
            tree = ast.parse(source_path.read_text(encoding="utf-8"), filename=str(source_path))
        except (SyntaxError, ValueError) as e:
            found[info.name] = f"(cannot be parsed: {e})"
            continue
        if {"Config", "run"} <= _top_level_names(tree):
            doc = ast.get_docstring(tree) or ""
            found[info.name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return dict(sorted(found.items()))


def _file_stamp(path: pathlib.Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def run_experiment(
    module: ModuleType,
    config: Any,
    run_dir: pathlib.Path,
    *,
    name: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one experiment into ``run_dir``: write ``config.json``, call ``module.run``, ensure ``results.json``.

    ``results.json`` is written from the returned dict unless ``module.run`` wrote it itself.

    Returns:
        The results returned by ``module.run``, converted to plain JSON types.

    Raises:
        TypeError: if ``module.run`` returns something other than a dict.
    """
    from twinjax import runs

    results_path = run_dir / "results.json"
    runs.write_config(run_dir, config, name=name, extra=extra)
    # A reused --out folder may hold a previous run's results.json: only one written during this run counts.
    stamp_before = _file_stamp(results_path)
    results = module.run(config, run_dir)
    if not isinstance(results, dict):
        raise TypeError(f"{module.__name__}.run must return a dict of results, got {type(results).__name__}")
    stamp_after = _file_stamp(results_path)
    if stamp_after is None or stamp_after == stamp_before:
        runs.write_json(results_path, results)
    return runs.to_jsonable(results)


def _error(message: str) -> int:
    print(f"twinjax: error: {message}", file=sys.stderr)
    return 2


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        found = discover(args.package)
    except ValueError as e:
        return _error(str(e))
    if not found:
        print(f"no experiments found in package {args.package!r}")
        return 0
    width = max(len(name) for name in found)
    for name, description in found.items():
        print(f"{name:<{width}}  {description}".rstrip())
    return 0


_REEXEC_MARKER = "TWINJAX_XLA_FLAGS_APPLIED"


def _missing_xla_flags(module) -> list[str]:
    """The flags of the experiment's optional ``XLA_FLAGS`` tuple that the environment's ``XLA_FLAGS`` lacks."""
    present = os.environ.get("XLA_FLAGS", "").split()
    return [flag for flag in getattr(module, "XLA_FLAGS", ()) if flag not in present]


def _cmd_run(args: argparse.Namespace) -> int:
    from twinjax import runs

    try:
        found = discover(args.package)
    except ValueError as e:
        return _error(str(e))
    name = args.name.replace("-", "_")
    if name not in found:
        available = ", ".join(found) or "(none)"
        return _error(f"unknown experiment {args.name!r}. Available experiments: {available}")

    module = importlib.import_module(f"{args.package}.{name}")
    missing = _missing_xla_flags(module)
    if missing:
        if args.from_command_line and not os.environ.get(_REEXEC_MARKER):
            # XLA reads XLA_FLAGS once, when its backend starts (already done by the imports): restart with them
            os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *missing]).strip()
            os.environ[_REEXEC_MARKER] = "1"
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "twinjax", *args.argv])
        print(
            f"twinjax: experiment {name!r} asks for XLA_FLAGS {' '.join(missing)} (see its XLA_FLAGS); XLA has started "
            "without them in this process — set them in the environment before starting Python",
            file=sys.stderr,
        )
    config_cls = module.Config
    if args.quick:
        if not callable(getattr(config_cls, "quick", None)):
            return _error(f"experiment {name!r} has no quick preset (a classmethod Config.quick())")
        config = config_cls.quick()
    else:
        config = config_cls()
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    try:
        config = runs.apply_overrides(config, overrides)
    except ValueError as e:
        return _error(str(e))

    run_dir = runs.make_run_dir(name, out=args.out, root=args.root)
    extra = {"quick": args.quick, "overrides": overrides, "argv": list(args.argv)}
    results = run_experiment(module, config, run_dir, name=name, extra=extra)

    print(runs.summary_table(results, getattr(module, "SUMMARY_KEYS", None)))
    print(f"\nrun folder: {run_dir}")
    return 0


def _new_sweep_dir(parent: pathlib.Path) -> pathlib.Path:
    """``parent/sweep-YYYYmmdd-HHMMSS[-n]``, created atomically so concurrent sweeps never share one."""
    import datetime

    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in itertools.count():
        path = parent / (f"sweep-{stamp}" if suffix == 0 else f"sweep-{stamp}-{suffix}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _cmd_sweep(args: argparse.Namespace) -> int:
    import jax

    if args.distributed:
        # before any computation: the coordinator, process count and id come from the options, else from the
        # cluster (SLURM, Open MPI, Kubernetes, Cloud TPU) or JAX_COORDINATOR_ADDRESS
        jax.distributed.initialize(
            coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    elif any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)):
        return _error("--coordinator, --num-processes and --process-id need --distributed")

    from twinjax import sweep

    if args.seeds < 1:
        return _error(f"--seeds must be >= 1, got {args.seeds}")
    try:
        module = sweep.load_experiment(args.name, args.package)
    except ValueError as e:
        return _error(str(e))
    name = module.__name__.rsplit(".", 1)[-1]
    config_cls = module.Config
    if args.quick:
        if not callable(getattr(config_cls, "quick", None)):
            return _error(f"experiment {name!r} has no quick preset (a classmethod Config.quick())")
        config = config_cls.quick()
    else:
        config = config_cls()
    try:
        grid = sweep.parse_grid(config, args.grid)
        result = sweep.sweep(module, config, grid, args.seeds, x64=args.x64)
    except ValueError as e:
        return _error(str(e))

    failed, total = result.n_failed, len(result.rows)
    if jax.process_index() == 0:  # every process computed (and gathered) the same results; one writes them
        sweep_dir = pathlib.Path(args.out) if args.out is not None else _new_sweep_dir(args.root / name)
        extra = {"quick": args.quick, "set": list(args.grid), "argv": list(args.argv)}
        result.write(sweep_dir, extra=extra)
        print(result.table())
        for failure in result.failures:
            values = ", ".join(f"{k}={v!r}" for k, v in failure["values"].items())
            print(
                f"failed: point {failure['point']} ({values or 'base config'}), seed {failure['seed']}: "
                f"{failure['error']}"
            )
        print(f"\n{total - failed} of {total} members succeeded, {failed} failed")
        print(f"sweep folder: {sweep_dir}")
    return 1 if failed == total else 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinjax",
        description="Run twinjax experiments. Results go to runs/<name>/<timestamp>/ unless --out is given.",
    )
    parser.add_argument(
        "--package",
        default=DEFAULT_PACKAGE,
        help=f"package holding the experiment modules (default: {DEFAULT_PACKAGE})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_list = sub.add_parser("list", help="list the experiments with their one-line descriptions")
    p_list.set_defaults(handler=_cmd_list)

    p_run = sub.add_parser(
        "run",
        help="run one experiment",
        description="Run one experiment and print a summary table and the run folder.",
    )
    p_run.add_argument("name", metavar="NAME", help="experiment name (see `twinjax list`)")
    p_run.add_argument("--quick", action="store_true", help="use the experiment's quick preset (Config.quick())")
    p_run.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields, e.g. --set n_steps=100 model.dt=0.01 (repeatable; dotted keys for nested)",
    )
    p_run.add_argument("--seed", type=int, default=None, help="random seed (same as --set seed=N)")
    p_run.add_argument("--out", type=pathlib.Path, default=None, help="run folder to use instead of a new one")
    p_run.add_argument(
        "--root",
        type=pathlib.Path,
        default=pathlib.Path("runs"),
        help="parent folder of the runs/<name>/<timestamp>/ folders (default: runs)",
    )
    p_run.set_defaults(handler=_cmd_run)

    p_sweep = sub.add_parser(
        "sweep",
        help="run one experiment's evaluate over a grid of values and seeds (vmapped, sharded over devices)",
        description=(
            "Run the experiment's pure evaluate(config, key) for every grid point and seed. Values that keep shapes"
            " equal are vmapped into one compiled call, sharded over the devices; see docs/sweeps.md. Writes"
            " sweep.json, results.csv and summary.csv to runs/<name>/sweep-<timestamp>/ unless --out is given."
            " Exit status 1 only when every member failed."
        ),
    )
    p_sweep.add_argument("name", metavar="NAME", help="experiment name (see `twinjax list`)")
    p_sweep.add_argument(
        "--set",
        dest="grid",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values of a config field, e.g. --set lr=1e-3,1e-2 n=4,8 (repeatable; the grid is their Cartesian"
        " product; one value is a plain override; tuple values in brackets: sizes=(8,8),(16,16))",
    )
    p_sweep.add_argument("--seeds", type=int, default=1, help="seeds per grid point: config.seed + i, i < N")
    p_sweep.add_argument("--quick", action="store_true", help="start from the quick preset (Config.quick())")
    p_sweep.add_argument("--out", type=pathlib.Path, default=None, help="sweep folder to use instead of a new one")
    p_sweep.add_argument(
        "--root",
        type=pathlib.Path,
        default=pathlib.Path("runs"),
        help="parent folder of the runs/<name>/sweep-<timestamp>/ folders (default: runs)",
    )
    p_sweep.add_argument(
        "--x64",
        action="store_true",
        help="enable float64 for the sweep (experiments whose `run` scopes jax.enable_x64 around evaluate)",
    )
    p_sweep.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() first and shard over every process's devices",
    )
    p_sweep.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="with --distributed")
    p_sweep.add_argument("--num-processes", type=int, default=None, metavar="N", help="with --distributed")
    p_sweep.add_argument("--process-id", type=int, default=None, metavar="I", help="with --distributed")
    p_sweep.set_defaults(handler=_cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twinjax`` command; returns the exit status (0 on success, 2 for a usage error).

    Example:
        >>> main(["run", "bms", "--quick", "--set", "horizon=20", "--out", "/tmp/bms"])  # doctest: +SKIP
    """
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.from_command_line = from_command_line
    args.argv = argv
    return args.handler(args)
