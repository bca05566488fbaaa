"""The `resumable` command and the demo, run as a user runs them: in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_demo_trains_to_95_percent_and_carries_on(tmp_path):
    first = run("-m", "resumable", "demo", "--root", "runs", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    accuracy = float(re.search(r"validation accuracy (\d\.\d+)", first.stdout).group(1))
    assert accuracy >= 0.95, first.stdout
    assert "run folder: runs/digits/version_0" in first.stdout
    assert (tmp_path / "runs/digits/version_0/checkpoints/last.ckpt").is_file()
    steps = int(re.search(r"after 15 epochs, (\d+) steps", first.stdout).group(1))

    again = run("-m", "resumable", "demo", "--root", "runs", "--no-progress", "--version", "0", "--max-epochs", "17",
                cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout
    more = int(re.search(r"after 17 epochs, (\d+) steps", again.stdout).group(1))
    assert more == steps + 2 * steps // 15


def test_example_file_is_the_demo_and_runs(tmp_path):
    example = ROOT / "examples" / "digits.py"
    assert example.read_text() == (ROOT / "src" / "resumable" / "demo.py").read_text()
    out = run(str(example), "--max-epochs", "1", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "validation accuracy" in out.stdout


def test_console_script_and_help(tmp_path):
    script = Path(sys.executable).with_name("resumable")
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    out = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "demo" in out.stdout
