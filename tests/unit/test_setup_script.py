"""scripts/setup.sh (what ``make run`` runs first): pip runs only when the venv is not up to
date with pyproject.toml, and quietly; an up-to-date venv costs nothing and prints nothing.

Run on a copy of the script with a fake ``.venv/bin/python`` that records its arguments
and makes pip-like noise, so the test never touches the real venv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../../calls.log"
echo "pip noise: Editable installation."
echo "pip noise on stderr" >&2
"""


def make_tree(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def setup(tree: Path) -> tuple[str, list[str]]:
    """Run the script; (its output, the pip commands it ran) — the calls log is reset."""
    done = subprocess.run(
        ["bash", str(tree / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60, check=True
    )
    log = tree / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return done.stdout + done.stderr, calls


def test_setup_installs_once_quietly_and_again_only_when_pyproject_changes(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    out, calls = setup(tree)
    assert any("install" in c and "-e" in c for c in calls), calls
    assert "noise" not in out and len(out.splitlines()) <= 1, out  # pip's output goes to a log

    out, calls = setup(tree)
    assert calls == [] and out == ""  # up to date: nothing to do, nothing to say

    stamp = max((tree / ".venv").glob(".*installed*"), key=lambda p: p.stat().st_mtime)
    later = stamp.stat().st_mtime + 10
    os.utime(tree / "pyproject.toml", (later, later))
    out, calls = setup(tree)
    assert any("install" in c and "-e" in c for c in calls), calls
    assert "noise" not in out
