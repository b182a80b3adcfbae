"""``python -m mmvm``: the package runs as the ``mmvm`` console script does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_python_dash_m_mmvm_help_shows_the_commands():
    res = subprocess.run([sys.executable, "-m", "mmvm", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: mmvm")
    assert all(c in res.stdout for c in ("data", "train", "evaluate", "plot"))


def test_python_dash_m_mmvm_reports_errors_as_the_script_does():
    res = subprocess.run([sys.executable, "-m", "mmvm", "plot", "curves",
                          str(ROOT / "no-such-run")], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2
    assert "no such metrics file" in res.stderr and "Traceback" not in res.stderr
