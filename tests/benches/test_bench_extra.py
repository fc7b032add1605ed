"""Plots after ``pip install livecomments``: the ``bench`` extra brings what the benches
need at run time (matplotlib), ``dev`` includes it, and a bench without it says which
extra to install."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from benches.report import write_plots
from benches.viral import write_plot

ROOT = Path(__file__).resolve().parents[2]
HINT = re.escape("pip install 'livecomments[bench]'")


def test_the_bench_extra_brings_matplotlib_and_dev_includes_it() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(r"matplotlib\b", req) for req in extras["bench"])
    assert "livecomments[bench]" in extras["dev"]


def test_without_matplotlib_the_benches_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it raises ImportError
    with pytest.warns(UserWarning, match=HINT):
        assert write_plots(tmp_path, "t", {}, [], []) == []
    with pytest.warns(UserWarning, match=HINT):
        assert write_plot(tmp_path, "t", [{"t": 0.0}], {}) is None
    assert list(tmp_path.iterdir()) == []
