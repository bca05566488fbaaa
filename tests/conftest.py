import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/models.py for tests and their subprocesses


def pytest_addoption(parser):
    parser.addoption("--chaos-kills", type=int, default=24, metavar="N",
                     help="SIGKILLs the chaos test (tests/chaos/) deals a training run (default 24)")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own folder, so default run folders (./runs) never mix."""
    monkeypatch.chdir(tmp_path)
