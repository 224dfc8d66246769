"""Every notebook (jupytext py:percent) executes, at a tiny size."""

import pathlib
import runpy

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[2] / "notebooks").glob("*.py"))
SLOW: set[str] = {"04_bms"}  # too long for the default run (run with -m slow); tests/experiments/test_bms runs its loop


@pytest.mark.parametrize(
    "path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in NOTEBOOKS], ids=lambda p: p.stem
)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("TWINJAX_NOTEBOOK_MEMBERS", "16")
    runpy.run_path(str(path), run_name="__main__")


def test_there_are_notebooks():
    assert NOTEBOOKS
