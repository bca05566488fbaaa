"""Storage: atomic commits, listings without temporaries, cleanup, and refusals as StorageError.

The shared tests run over both `LocalStorage` and `MemoryStorage`, so the in-memory one the other
tests rely on is held to the same behaviour.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import stat
import subprocess
import sys

import pytest
import torch

from resumable.checkpoint.format import read_checkpoint, verify_checkpoint, write_checkpoint
from resumable.checkpoint.storage import (
    LocalStorage,
    MemoryStorage,
    is_temporary,
    map_file,
    temporary_name,
)
from resumable.errors import StorageError


class Backend:
    """A storage under test, a folder in it, and a raw view of everything it holds."""

    def __init__(self, kind: str, tmp_path) -> None:
        self.kind = kind
        if kind == "local":
            self.storage, self.folder = LocalStorage(), str(tmp_path / "run")
        else:
            self.storage, self.folder = MemoryStorage(), "/mem/run"
        self.storage.makedirs(self.folder)

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def raw_names(self) -> list[str]:
        """Everything in the folder, temporaries included."""
        if self.kind == "local":
            return sorted(os.listdir(self.folder))
        prefix = self.folder + "/"
        return sorted(p[len(prefix):] for p in self.storage.files if p.startswith(prefix))

    def plant(self, name: str, data: bytes) -> None:
        """Put a file in place the way a killed writer would have left it."""
        if self.kind == "local":
            with open(self.path(name), "wb") as file:
                file.write(data)
        else:
            self.storage.files[self.path(name)] = data


@pytest.fixture(params=["local", "memory"])
def backend(request, tmp_path) -> Backend:
    return Backend(request.param, tmp_path)


def read(backend: Backend, name: str) -> bytes:
    return bytes(backend.storage.read_buffer(backend.path(name)))


def test_a_write_is_committed_and_read_back(backend):
    backend.storage.write_atomic(backend.path("a.ckpt"), lambda f: f.write(b"hello"))
    assert read(backend, "a.ckpt") == b"hello"
    assert backend.storage.exists(backend.path("a.ckpt"))
    assert backend.raw_names() == backend.storage.list(backend.folder) == ["a.ckpt"]


def test_a_write_replaces_the_old_file(backend):
    for content in (b"old", b"new!"):
        backend.storage.write_atomic(backend.path("a.ckpt"), lambda f, c=content: f.write(c))
    assert read(backend, "a.ckpt") == b"new!"


class Boom(Exception):
    pass


def _fail_midway(error: BaseException):
    def write(file) -> None:
        file.write(b"partial")
        raise error
    return write


@pytest.mark.parametrize("error", [Boom("bug"), KeyboardInterrupt()], ids=["exception", "Ctrl-C"])
def test_a_failed_write_leaves_nothing_behind(backend, error):
    with pytest.raises(type(error)):
        backend.storage.write_atomic(backend.path("a.ckpt"), _fail_midway(error))
    assert backend.raw_names() == []
    assert not backend.storage.exists(backend.path("a.ckpt"))


@pytest.mark.parametrize("error", [Boom("bug"), KeyboardInterrupt(), OSError(errno.ENOSPC, "full")],
                         ids=["exception", "Ctrl-C", "disk full"])
def test_a_failed_overwrite_keeps_the_old_file_intact(backend, error):
    backend.storage.write_atomic(backend.path("a.ckpt"), lambda f: f.write(b"precious"))
    with pytest.raises((type(error), StorageError)):
        backend.storage.write_atomic(backend.path("a.ckpt"), _fail_midway(error))
    assert read(backend, "a.ckpt") == b"precious"
    assert backend.raw_names() == ["a.ckpt"]


def test_listing_is_sorted_and_never_shows_temporaries(backend):
    for name in ("b.ckpt", "a.ckpt", temporary_name("c.ckpt")):
        backend.plant(name, b"x")
    assert backend.storage.list(backend.folder) == ["a.ckpt", "b.ckpt"]
    assert backend.storage.list(backend.folder + "/missing") == []


def test_delete_removes_and_tolerates_missing_files(backend):
    backend.storage.write_atomic(backend.path("a.ckpt"), lambda f: f.write(b"x"))
    backend.storage.delete(backend.path("a.ckpt"))
    backend.storage.delete(backend.path("a.ckpt"))
    assert backend.storage.list(backend.folder) == []


def test_cleanup_removes_only_stale_temporaries_of_ours(backend):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
        names = {
            "dead": f".a.ckpt.tmp-{dead}-0123abcd",
            "mine": temporary_name("b.ckpt"),
            "live": f".c.ckpt.tmp-{sleeper.pid}-89abcdef",
            "not ours": ".d.ckpt.tmp-notapid",
            "committed": "e.ckpt",
        }
        for name in names.values():
            backend.plant(name, b"x")
        removed = backend.storage.cleanup_temporaries(backend.folder)
        assert sorted(removed) == sorted([names["dead"], names["mine"]])
        assert backend.raw_names() == sorted([names["live"], names["not ours"], names["committed"]])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert backend.storage.cleanup_temporaries(backend.folder) == [names["live"]]


def test_temporary_names_are_recognised_and_unique():
    first, second = temporary_name("step-1.ckpt"), temporary_name("step-1.ckpt")
    assert first != second and is_temporary(first) and not is_temporary("step-1.ckpt")
    assert first.startswith(".step-1.ckpt.tmp-")


def test_writing_into_a_missing_folder_is_a_storage_error(backend):
    with pytest.raises(StorageError, match="does not exist") as caught:
        backend.storage.write_atomic(backend.folder + "/nope/a.ckpt", lambda f: f.write(b"x"))
    assert caught.value.errno == errno.ENOENT


def test_reading_a_missing_file_is_a_storage_error(backend):
    with pytest.raises(StorageError, match="does not exist"):
        backend.storage.read_buffer(backend.path("nope.ckpt"))


@pytest.mark.parametrize(("code", "says"), [(errno.ENOSPC, "disk is full"), (errno.EDQUOT, "quota"),
                                            (errno.EACCES, "permission denied"),
                                            (errno.EROFS, "read-only")])
def test_os_errors_inside_the_write_become_storage_errors(backend, code, says):
    original = OSError(code, os.strerror(code))
    with pytest.raises(StorageError, match=says) as caught:
        backend.storage.write_atomic(backend.path("a.ckpt"), _fail_midway(original))
    assert caught.value.__cause__ is original and caught.value.errno == code
    assert backend.path("a.ckpt") in str(caught.value)
    assert backend.raw_names() == []


def test_a_full_memory_disk_fails_at_the_write_call_and_keeps_earlier_checkpoints():
    storage = MemoryStorage(capacity=150)
    storage.write_atomic("a.ckpt", lambda f: f.write(b"x" * 100))
    with pytest.raises(StorageError, match="disk is full.*b.ckpt after 0 bytes; 50 bytes are free"
                                           ".*intact") as caught:
        storage.write_atomic("b.ckpt", lambda f: f.write(b"y" * 100))
    assert caught.value.errno == errno.ENOSPC
    assert storage.list(".") == ["a.ckpt"] and storage.read_buffer("a.ckpt") == b"x" * 100


def test_a_read_only_memory_storage_refuses_writes():
    with pytest.raises(StorageError, match="read-only"):
        MemoryStorage(read_only=True).write_atomic("a.ckpt", lambda f: f.write(b"x"))


def test_a_read_only_folder_refuses_writes(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        with pytest.raises(StorageError, match="permission denied"):
            LocalStorage().write_atomic(folder / "a.ckpt", lambda f: f.write(b"x"))
    finally:
        folder.chmod(0o755)


def test_the_file_and_then_the_folder_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    LocalStorage().write_atomic(tmp_path / "a.ckpt", lambda f: f.write(b"x"))
    assert events == ["fsync file", "rename", "fsync folder"]


def test_map_file_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="not a regular file"):
        map_file(fifo)  # opening a FIFO for reading would block forever


def test_checkpoints_round_trip_through_memory_storage():
    storage = MemoryStorage()
    storage.makedirs("/runs/x")
    storage.write_atomic("/runs/x/a.ckpt", lambda f: write_checkpoint(f, {"t": torch.ones(2)}))
    state = read_checkpoint(storage.read_buffer("/runs/x/a.ckpt"), name="/runs/x/a.ckpt")
    assert state["t"].tolist() == [1.0, 1.0]


@contextlib.contextmanager
def mounted_tmpfs(folder, options: str):
    """A real, small file system at `folder`; skips the test where mounting is not allowed."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        gc.collect()  # a failing test's traceback may still hold a mapped file
        if subprocess.run(["umount", str(folder)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)
            pytest.fail("the tmpfs was still busy: something kept a checkpoint file open")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs: a real file system that runs out of space."""
    with mounted_tmpfs(tmp_path / "tiny", "size=2M") as folder:
        yield folder


def test_a_read_only_file_system_refuses_writes(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1M") as folder:
        with pytest.raises(StorageError, match="read-only") as caught:
            LocalStorage().write_atomic(folder / "a.ckpt", lambda f: f.write(b"x"))
        assert caught.value.errno == errno.EROFS and str(folder / "a.ckpt") in str(caught.value)


def test_a_real_full_disk_fails_cleanly_and_keeps_the_first_checkpoint(tiny_disk):
    storage = LocalStorage()
    state = {"weights": torch.zeros(300_000)}  # 1.2 MB: fits once in 2 MiB, not twice
    storage.write_atomic(tiny_disk / "step-1.ckpt", lambda f: write_checkpoint(f, state))
    with pytest.raises(StorageError, match="disk is full") as caught:
        storage.write_atomic(tiny_disk / "step-2.ckpt", lambda f: write_checkpoint(f, state))
    assert caught.value.errno == errno.ENOSPC and "step-2.ckpt" in str(caught.value)
    assert sorted(os.listdir(tiny_disk)) == ["step-1.ckpt"]
    verify_checkpoint(tiny_disk / "step-1.ckpt")


# --- copy_atomic: `last` written as a copy of a checkpoint saved in the same step ---------------
def test_a_copy_is_committed_replaces_the_old_file_and_outlives_its_source(backend):
    backend.storage.write_atomic(backend.path("best.ckpt"), lambda f: f.write(b"state"))
    backend.storage.write_atomic(backend.path("last.ckpt"), lambda f: f.write(b"older state"))
    backend.storage.copy_atomic(backend.path("best.ckpt"), backend.path("last.ckpt"))
    assert read(backend, "last.ckpt") == b"state"
    assert backend.raw_names() == ["best.ckpt", "last.ckpt"]  # no temporary left
    backend.storage.delete(backend.path("best.ckpt"))  # retention evicts the source later
    assert read(backend, "last.ckpt") == b"state"


def test_copying_a_missing_source_is_a_storage_error_and_keeps_the_target(backend):
    backend.storage.write_atomic(backend.path("last.ckpt"), lambda f: f.write(b"kept"))
    with pytest.raises(StorageError):
        backend.storage.copy_atomic(backend.path("gone.ckpt"), backend.path("last.ckpt"))
    assert read(backend, "last.ckpt") == b"kept"
    assert backend.raw_names() == ["last.ckpt"]


def test_a_local_copy_is_a_hard_link_and_falls_back_to_copying(tmp_path, monkeypatch):
    storage = LocalStorage()
    source, target = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    storage.write_atomic(source, lambda f: f.write(b"x" * 10_000))
    storage.copy_atomic(source, target)
    assert os.stat(target).st_ino == os.stat(source).st_ino and not target.is_symlink()

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links
    storage.write_atomic(source, lambda f: f.write(b"y" * 10_000))  # a new inode under the old name
    storage.copy_atomic(source, target)
    assert target.read_bytes() == b"y" * 10_000 and os.stat(target).st_ino != os.stat(source).st_ino
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt", "last.ckpt"]
