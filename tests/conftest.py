import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/models.py for tests and their subprocesses


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own folder, so default run folders (./runs) never mix."""
    monkeypatch.chdir(tmp_path)
