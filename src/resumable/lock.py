"""`RunLock`: one writer per run folder at a time.

The lock is an exclusive `fcntl.flock` on `<run folder>/.lock`, held while `Trainer.fit` runs.
The kernel drops a flock when the last descriptor of its open file is closed, so a process that
dies any way at all — SIGKILL and out-of-memory kills included — never leaves a stale lock that
blocks the rerun. The file itself stays (deleting a lock file races with a process opening it)
and holds who has the lock, for the message a second writer gets.

Limits: flock is advisory (it stops other resumable trainers, not other programs); on NFS it
works where the kernel maps it to byte-range locks (Linux does); processes forked by the holder
without `exec` (DataLoader workers) share the lock until they exit, so `acquire` waits a few
seconds when the recorded holder is already dead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from .errors import RunLockedError, StorageError

__all__ = ["RunLock", "LOCK_NAME"]

LOCK_NAME = ".lock"


class RunLock:
    """An exclusive lock on a run folder; a context manager. Not reentrant: a second `RunLock` on
    the same folder conflicts even in the same process (flock locks belong to open files)."""

    def __init__(self, folder: str | os.PathLike[str], *, orphan_wait_s: float = 10.0) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.orphan_wait_s = orphan_wait_s
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `RunLockedError` naming the holder's pid and host.

        When the recorded holder is a dead process of this host, children it forked may still hold
        the lock for a moment: retry for up to `orphan_wait_s` seconds before giving up.
        Raises `StorageError` when the lock file cannot be created.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's record stays
        except OSError as err:
            raise StorageError(err.errno, f"cannot create the run lock {self.path}: {err.strerror}; "
                                          "the run folder must be writable") from err
        deadline = time.monotonic() + self.orphan_wait_s
        while not _try_flock(fd):
            holder = _read_holder(fd)
            if not _dead_here(holder) or time.monotonic() > deadline:
                os.close(fd)
                raise RunLockedError(_locked_message(self.path.parent, holder))
            time.sleep(0.1)
        self._fd = fd
        _write_holder(fd)

    def release(self) -> None:
        """Drop the lock (no error if not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # the record names a holder only while one exists
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: forked children (DataLoader workers) may share fd
        except OSError:
            pass
        os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise StorageError(err.errno, f"cannot lock the run folder: {err.strerror}") from err
    return True


def _write_holder(fd: int) -> None:
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record + b"\n", 0)


def _read_holder(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):  # being written right now, or damaged: the holder is unknown
        return {}
    return record if isinstance(record, dict) else {}


def _dead_here(holder: dict) -> bool:
    """The holder is a process of this host that no longer exists."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _locked_message(folder: Path, holder: dict) -> str:
    who = (f"process {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"
           if holder.get("pid") else "another process (its pid is not recorded yet)")
    return (f"the run folder {folder} is being written by {who}: two trainers writing one run would "
            "interleave its checkpoints and metrics. Wait for that run to finish or stop it, or give this "
            "one another folder (Experiment(version=None) takes a new version)")
