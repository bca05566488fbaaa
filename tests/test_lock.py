"""The run lock: one writer per run folder; released however the writer ends."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import resumable as rs
from models import TinyModel
from resumable.lock import LOCK_NAME, RunLock

SCRIPT = Path(__file__).parent / "chaos" / "train_script.py"


def trainer_for(folder: Path, **kwargs) -> rs.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return rs.Trainer(seed=0, enable_progress_bar=False, experiment=rs.Experiment(folder, version=0), **kwargs)


def test_a_second_trainer_on_a_run_in_progress_gets_run_locked_error(tmp_path):
    errors = []

    class SecondTrainer(rs.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 2 and not errors:
                with pytest.raises(rs.RunLockedError) as raised:
                    trainer_for(tmp_path).fit(TinyModel())
                errors.append(str(raised.value))

    trainer_for(tmp_path, callbacks=[SecondTrainer()]).fit(TinyModel())
    assert len(errors) == 1
    message = errors[0]
    assert str(tmp_path / "default" / "version_0") in message
    assert f"process {os.getpid()} on host {socket.gethostname()}" in message
    assert "another folder" in message


def test_the_lock_is_released_when_fit_ends_or_raises(tmp_path):
    trainer_for(tmp_path).fit(TinyModel())
    trainer_for(tmp_path, max_epochs=2).fit(TinyModel())  # the same process, sequentially: resumes

    class Boom(rs.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            raise ValueError("boom")

    with pytest.raises(ValueError):
        trainer_for(tmp_path, max_epochs=3, callbacks=[Boom()]).fit(TinyModel())
    with RunLock(tmp_path / "default" / "version_0") as lock:
        assert lock.held


def test_a_sigkilled_holder_never_blocks_the_rerun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), "--sleep", "0.05", "--epochs", "50"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith("STEP"):
                break
        folder = tmp_path / "run" / "default" / "version_0"
        with pytest.raises(rs.RunLockedError, match=f"process {proc.pid} on host"):
            RunLock(folder).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stdout.close()
        proc.wait()
    lock = RunLock(folder, orphan_wait_s=0)
    lock.acquire()  # at once: the kernel dropped the dead holder's lock
    lock.release()


def test_two_locks_on_one_folder_conflict_even_in_one_process(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(rs.RunLockedError):
        RunLock(tmp_path).acquire()
    first.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # no holder is named once released
    with RunLock(tmp_path):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()


def test_a_lock_left_to_children_of_a_dead_holder_is_waited_for(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)  # stands for a forked child's inherited copy
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": dead.pid, "host": socket.gethostname()}).encode())
    threading.Timer(0.3, os.close, [fd]).start()
    started = time.monotonic()
    with RunLock(tmp_path, orphan_wait_s=10):
        assert 0.2 < time.monotonic() - started < 5


def test_a_live_holder_is_not_waited_for(tmp_path):
    with RunLock(tmp_path):
        started = time.monotonic()
        with pytest.raises(rs.RunLockedError):
            RunLock(tmp_path, orphan_wait_s=10).acquire()
        assert time.monotonic() - started < 1


def test_a_lock_file_that_cannot_be_created_is_a_storage_error(tmp_path):
    with pytest.raises(rs.StorageError, match="run lock"):
        RunLock(tmp_path / "missing").acquire()
