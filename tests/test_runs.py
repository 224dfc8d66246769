"""Tests of twinjax.runs: overrides, run folders, JSON/CSV writers, summary table."""

import csv
import dataclasses
import enum
import json
import math
import pathlib
from typing import Literal

import jax.numpy as jnp
import numpy as np
import pytest

from twinjax.runs import (
    apply_overrides,
    make_run_dir,
    summary_table,
    to_jsonable,
    write_config,
    write_json,
    write_metrics_csv,
)


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass(frozen=True)
class Inner:
    dt: float = 0.1
    n_particles: int = 32


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 10
    lr: float = 1e-3
    verbose: bool = False
    name: str = "x"
    method: Literal["ekf", "ukf", "enkf"] = "ekf"
    sizes: tuple[int, ...] = (8, 8)
    pair: tuple[float, float] = (0.0, 1.0)
    horizon: int | None = None
    colour: Colour = Colour.RED
    path: pathlib.Path = pathlib.Path("data")
    inner: Inner = Inner()
    seed: int = 0

    def __post_init__(self):
        if self.n < 0:
            raise ValueError(f"n must be non-negative, got {self.n}")


# --- overrides ------------------------------------------------------------------------------------------------------


def test_overrides_scalars():
    config = apply_overrides(Config(), ["n=3", "lr=0.5", "name=hello world", "lr=1e-2"])
    assert config == Config(n=3, lr=1e-2, name="hello world")
    assert type(config.n) is int and type(config.lr) is float
    assert apply_overrides(Config(), ["n=1e3"]).n == 1000
    assert apply_overrides(Config(), ["name=a=b"]).name == "a=b"
    assert Config().n == 10  # the original is untouched


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("True", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("OFF", False)],
)
def test_overrides_bool(text, expected):
    assert apply_overrides(Config(), [f"verbose={text}"]).verbose is expected


def test_overrides_bool_invalid():
    with pytest.raises(ValueError, match=r"verbose.*expected bool.*true/false"):
        apply_overrides(Config(), ["verbose=maybe"])


def test_overrides_tuple():
    assert apply_overrides(Config(), ["sizes=16,16,4"]).sizes == (16, 16, 4)
    assert apply_overrides(Config(), ["sizes=(1, 2)"]).sizes == (1, 2)
    assert apply_overrides(Config(), ["sizes=5"]).sizes == (5,)
    assert apply_overrides(Config(), ["sizes="]).sizes == ()
    assert apply_overrides(Config(), ["pair=1,2.5"]).pair == (1.0, 2.5)
    with pytest.raises(ValueError, match=r"pair.*exactly 2"):
        apply_overrides(Config(), ["pair=1,2,3"])
    with pytest.raises(ValueError, match=r"sizes.*item 1 \('x'\).*integer"):
        apply_overrides(Config(), ["sizes=1,x"])


def test_overrides_literal():
    assert apply_overrides(Config(), ["method=ukf"]).method == "ukf"
    with pytest.raises(ValueError, match=r"method.*'ekf', 'ukf', 'enkf'"):
        apply_overrides(Config(), ["method=pf"])


def test_overrides_optional_enum_path():
    assert apply_overrides(Config(), ["horizon=5"]).horizon == 5
    assert apply_overrides(Config(horizon=5), ["horizon=none"]).horizon is None
    assert apply_overrides(Config(), ["colour=BLUE"]).colour is Colour.BLUE
    assert apply_overrides(Config(), ["path=/tmp/x"]).path == pathlib.Path("/tmp/x")
    with pytest.raises(ValueError, match=r"colour.*RED, BLUE"):
        apply_overrides(Config(), ["colour=GREEN"])


def test_overrides_nested():
    config = apply_overrides(Config(), ["inner.dt=0.5", "inner.n_particles=64"])
    assert config.inner == Inner(dt=0.5, n_particles=64)
    with pytest.raises(ValueError, match=r"'inner' is a nested config.*inner\.dt, inner\.n_particles"):
        apply_overrides(Config(), ["inner=3"])
    with pytest.raises(ValueError, match=r"'n' is a int, not a nested config"):
        apply_overrides(Config(), ["n.x=3"])
    with pytest.raises(ValueError, match=r"unknown config key 'inner\.dtt'.*Did you mean 'inner\.dt'"):
        apply_overrides(Config(), ["inner.dtt=1"])


def test_overrides_bad_int_names_key_and_type():
    with pytest.raises(ValueError, match=r"cannot set n='abc': expected int, must be an integer"):
        apply_overrides(Config(), ["n=abc"])
    with pytest.raises(ValueError, match=r"expected int"):
        apply_overrides(Config(), ["n=1.5"])
    with pytest.raises(ValueError, match=r"expected float"):
        apply_overrides(Config(), ["lr=fast"])


def test_overrides_unknown_key_suggests_and_lists():
    with pytest.raises(ValueError) as info:
        apply_overrides(Config(), ["methd=ukf"])
    message = str(info.value)
    assert "unknown config key 'methd'" in message
    assert "Did you mean 'method'?" in message
    assert "Valid keys: n, lr, verbose" in message and "inner.dt" in message


def test_overrides_malformed_and_post_init():
    with pytest.raises(ValueError, match=r"'n3' is not of the form key=value"):
        apply_overrides(Config(), ["n3"])
    with pytest.raises(ValueError, match="n must be non-negative"):
        apply_overrides(Config(), ["n=-1"])
    with pytest.raises(ValueError, match="dataclass instance"):
        apply_overrides({"n": 1}, ["n=1"])


# --- run folders ----------------------------------------------------------------------------------------------------


def test_make_run_dir_unique(tmp_path):
    first = make_run_dir("exp", root=tmp_path)
    second = make_run_dir("exp", root=tmp_path)
    assert first != second
    for run_dir in (first, second):
        assert run_dir.parent == tmp_path / "exp"
        assert (run_dir / "figures").is_dir()
    assert len(first.name) == len("YYYYmmdd-HHMMSS")
    # Two runs in the same second get suffixed folders rather than sharing one.
    assert second.name.startswith(first.name[:13])


def test_make_run_dir_out(tmp_path):
    out = tmp_path / "a" / "b"
    assert make_run_dir("exp", out=out) == out
    assert (out / "figures").is_dir()
    assert make_run_dir("exp", out=out) == out  # reusing an existing folder is fine
    with pytest.raises(ValueError, match="plain folder name"):
        make_run_dir("a/b", root=tmp_path)


# --- JSON / CSV -----------------------------------------------------------------------------------------------------


def test_write_json_converts(tmp_path):
    obj = {
        "jax_scalar": jnp.float32(1.5),
        "jax_array": jnp.arange(3),
        "np_int": np.int64(7),
        "np_bool": np.bool_(True),
        "matrix": np.array([[1.0, np.nan], [np.inf, -np.inf]]),
        "nan": float("nan"),
        "config": Config(),
        "nested": {1: (1, 2), "set": {3}},
    }
    path = write_json(tmp_path / "r.json", obj)
    loaded = json.loads(path.read_text())
    assert loaded["jax_scalar"] == 1.5
    assert loaded["jax_array"] == [0, 1, 2]
    assert loaded["np_int"] == 7 and loaded["np_bool"] is True
    assert loaded["matrix"] == [[1.0, None], [None, None]]
    assert loaded["nan"] is None
    assert loaded["config"]["inner"] == {"dt": 0.1, "n_particles": 32}
    assert loaded["config"]["colour"] == "RED" and loaded["config"]["path"] == "data"
    assert loaded["nested"] == {"1": [1, 2], "set": [3]}
    assert not (tmp_path / "r.json.tmp").exists()


def test_to_jsonable_rejects_unknown():
    with pytest.raises(TypeError, match=r"object at obj\['a'\]\[1\]"):
        to_jsonable({"a": [1, object()]})


def test_write_config(tmp_path):
    path = write_config(tmp_path, Config(n=3), name="exp", extra={"quick": True})
    record = json.loads(path.read_text())
    assert path == tmp_path / "config.json"
    assert record["experiment"] == "exp"
    assert record["config"]["n"] == 3 and record["config"]["seed"] == 0
    assert record["quick"] is True
    assert isinstance(record["jax_version"], str)
    assert record["devices"] and all(isinstance(d, str) for d in record["devices"])
    assert "timestamp" in record and "git_commit" in record and "twinjax_version" in record
    with pytest.raises(ValueError, match="dataclass instance"):
        write_config(tmp_path, {"n": 3})


def test_write_metrics_csv(tmp_path):
    path = write_metrics_csv(tmp_path / "m.csv", {"step": np.arange(3), "loss": jnp.array([1.0, 0.5, np.nan])})
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "loss"]
    assert rows[1] == ["0", "1.0"] and rows[2] == ["1", "0.5"]
    assert math.isnan(float(rows[3][1]))
    with pytest.raises(ValueError, match="equal lengths"):
        write_metrics_csv(tmp_path / "m.csv", {"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match=r"'a' must be 1-D, got shape \(1, 2\)"):
        write_metrics_csv(tmp_path / "m.csv", {"a": [[1, 2]]})


# --- summary table --------------------------------------------------------------------------------------------------


def test_summary_table_format():
    results = {
        "rmse": 0.0123456,
        "steps": 200,
        "ok": True,
        "filter": {"nll": jnp.float32(12345.678), "n": np.int32(4)},
        "curve": [1.0, 2.0],  # not a scalar: left out
        "traj": jnp.ones(3),
    }
    table = summary_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert set(lines[1]) == {"-", " "}
    assert {line.split()[0]: line.split()[1] for line in lines[2:]} == {
        "rmse": "0.01235",
        "steps": "200",
        "ok": "True",
        "filter.nll": "1.235e+04",
        "filter.n": "4",
    }
    assert len({len(line) for line in lines}) == 1  # aligned


def test_summary_table_keys():
    results = {"a": 1.0, "b": 2.0, "f": {"x": 1, "y": 2}}
    lines = summary_table(results, keys=["f", "a", "zz"]).splitlines()[2:]
    assert [line.split()[0] for line in lines] == ["f.x", "f.y", "a", "zz"]
    assert lines[-1].split()[1] == "(missing)"
    assert summary_table({"traj": [1, 2]}) == "(no scalar results)"
