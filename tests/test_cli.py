"""End-to-end tests of the `twinjax` command on a fake experiment package built in a temporary folder."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from twinjax import cli

FAKE = '''
"""A fake experiment: mean of n standard normals.

More text that `twinjax list` does not show.
"""

import dataclasses
import pathlib
from typing import Literal

import jax
import jax.numpy as jnp

from twinjax.runs import write_json

SUMMARY_KEYS = ("mean", "stats")


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 1000
    scale: float = 1.0
    mode: Literal["a", "b"] = "a"
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(n=10)


def evaluate(config: Config, key) -> dict:
    x = config.scale * jax.random.normal(key, (config.n,))
    return {"mean": jnp.mean(x), "stats": {"n": config.n, "max": jnp.max(x)}, "samples": x}


def run(config: Config, run_dir: pathlib.Path) -> dict:
    results = evaluate(config, jax.random.key(config.seed))
    results["mode"] = config.mode
    (run_dir / "figures" / "plot.png").write_bytes(b"")
    return results
'''

SELF_WRITING = '''
"""Writes its own results.json."""

import dataclasses

from twinjax.runs import write_json


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0


def run(config, run_dir):
    write_json(run_dir / "results.json", {"written_by": "experiment"})
    return {"written_by": "cli"}
'''


@pytest.fixture(scope="session")
def fake_package(tmp_path_factory):
    """A package with one experiment per convention case; its name is unique so sys.modules never clashes."""
    root = tmp_path_factory.mktemp("fake_experiments")
    name = f"fake_experiments_{uuid.uuid4().hex[:8]}"
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text('"""Fake experiments."""\n')
    (package / "fake.py").write_text(FAKE)
    (package / "self_writing.py").write_text(SELF_WRITING)
    (package / "_private.py").write_text("Config = run = None\n")
    (package / "helper.py").write_text('"""Not an experiment: no Config."""\n\ndef run(config, run_dir): ...\n')
    (package / "broken.py").write_text("def run(:\n")
    sys.path.insert(0, str(root))
    yield name
    sys.path.remove(str(root))


@pytest.fixture
def package(fake_package, monkeypatch):
    monkeypatch.setattr(cli, "DEFAULT_PACKAGE", fake_package)
    return fake_package


def test_discover(package):
    found = cli.discover(package)
    assert list(found) == ["broken", "fake", "self_writing"]
    assert found["fake"] == "A fake experiment: mean of n standard normals."
    assert found["broken"].startswith("(cannot be parsed:")
    assert f"{package}.fake" not in sys.modules  # listing never imports the experiments
    with pytest.raises(ValueError, match="'no_such_package_xyz' not found"):
        cli.discover("no_such_package_xyz")


def test_list(package, capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "fake          A fake experiment: mean of n standard normals." in lines
    assert any(line.startswith("self_writing  Writes its own results.json.") for line in lines)
    assert not any(line.startswith(("helper", "_private")) for line in lines)


def test_list_package_option(fake_package, capsys):
    assert cli.main(["--package", fake_package, "list"]) == 0
    assert "fake" in capsys.readouterr().out
    assert cli.main(["--package", "no_such_package_xyz", "list"]) == 2
    assert "not found" in capsys.readouterr().err


def test_run_end_to_end(package, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "fake", "--quick", "--set", "n=3", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    assert results["stats"]["n"] == 3 and len(results["samples"]) == 3
    assert isinstance(results["mean"], float) and results["mode"] == "a"
    assert (out / "figures" / "plot.png").exists()

    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == "fake"
    assert config["config"] == {"n": 3, "scale": 1.0, "mode": "a", "seed": 0}
    assert config["quick"] is True and config["overrides"] == ["n=3"]
    assert config["argv"] == ["run", "fake", "--quick", "--set", "n=3", "--out", str(out)]

    lines = stdout.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert [line.split()[0] for line in lines[2:5]] == ["mean", "stats.n", "stats.max"]
    assert lines[3].split() == ["stats.n", "3"]
    assert lines[-1] == f"run folder: {out}"


def test_run_several_sets_and_seed(package, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "fake", "--set", "n=4", "scale=2", "--set", "mode=b", "--seed", "7", "--out", str(out)]
    assert cli.main(argv) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config == {"n": 4, "scale": 2.0, "mode": "b", "seed": 7}
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "b"

    # The seed changes the samples; the same seed reproduces them.
    for seed in ("7", "8"):
        argv = ["run", "fake", "--set", "n=4", "scale=2", "mode=b", "--seed", seed, "--out", str(tmp_path / seed)]
        assert cli.main(argv) == 0
    samples = {
        name: json.loads((tmp_path / name / "results.json").read_text())["samples"] for name in ("run", "7", "8")
    }
    assert samples["run"] == samples["7"] != samples["8"]


def test_run_default_folder(package, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "fake", "--quick"]) == 0
    (run_dir,) = (tmp_path / "runs" / "fake").iterdir()
    assert (run_dir / "results.json").exists() and (run_dir / "figures").is_dir()
    assert capsys.readouterr().out.splitlines()[-1] == f"run folder: {run_dir.relative_to(tmp_path)}"


def test_run_keeps_results_written_by_experiment(package, tmp_path, capsys):
    assert cli.main(["run", "self-writing", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text()) == {"written_by": "experiment"}
    assert capsys.readouterr().out.splitlines()[2].split() == ["written_by", "cli"]


def test_run_replaces_stale_results(package, tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"stale": true}')
    assert cli.main(["run", "fake", "--quick", "--out", str(tmp_path)]) == 0
    assert "stale" not in json.loads((tmp_path / "results.json").read_text())


def test_run_unknown_experiment(package, capsys):
    assert cli.main(["run", "nope"]) != 0
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err
    assert "Available experiments: broken, fake, self_writing" in err


def test_run_bad_override(package, tmp_path, capsys):
    assert cli.main(["run", "fake", "--set", "nn=3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'nn'" in err and "Did you mean 'n'?" in err
    assert cli.main(["run", "fake", "--set", "mode=c", "--out", str(tmp_path / "x")]) == 2
    assert "'a', 'b'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing is created for a run that never starts


def test_run_without_quick_preset(package, capsys):
    assert cli.main(["run", "self_writing", "--quick"]) == 2
    assert "no quick preset" in capsys.readouterr().err


def test_usage_errors(package, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "fake", "--seed", "x"])
    assert info.value.code == 2


def test_python_dash_m(fake_package):
    package_root = pathlib.Path(importlib.util.find_spec(fake_package).origin).parents[1]
    repo_root = pathlib.Path(cli.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), str(package_root)])}
    proc = subprocess.run(
        [sys.executable, "-m", "twinjax", "--package", fake_package, "list"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "A fake experiment" in proc.stdout


NEEDS_FLAGS = '''
"""Reports the XLA flags its process started with."""

import dataclasses
import os

XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0


def run(config, run_dir):
    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "restarted": os.environ.get("TWINJAX_XLA_FLAGS_APPLIED")}
'''


def test_experiment_xla_flags_restart_the_command_or_warn_in_process(tmp_path, monkeypatch, capsys):
    """From the shell, `twinjax run` restarts itself with an experiment's missing XLA_FLAGS (XLA reads them once, at
    start-up); called in-process it runs on and warns, naming the flags."""
    name = f"flag_experiments_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text('"""Fake experiments."""\n')
    (tmp_path / name / "needs_flags.py").write_text(NEEDS_FLAGS)
    flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TWINJAX_XLA_FLAGS_APPLIED")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = tmp_path / "shell"
    argv = [sys.executable, "-m", "twinjax", "--package", name, "run", "needs_flags", "--out", str(out)]
    subprocess.run(argv, env=env, check=True, capture_output=True, text=True, timeout=300)
    results = json.loads((out / "results.json").read_text())
    assert results["xla_flags"].split() == ["--xla_force_host_platform_device_count=2", flag]
    assert results["restarted"] == "1"

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    monkeypatch.delenv("TWINJAX_XLA_FLAGS_APPLIED", raising=False)
    assert cli.main(["--package", name, "run", "needs_flags", "--out", str(tmp_path / "in_process")]) == 0
    assert flag in capsys.readouterr().err
    results = json.loads((tmp_path / "in_process" / "results.json").read_text())
    assert flag not in results["xla_flags"] and results["restarted"] is None
