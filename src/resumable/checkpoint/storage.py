"""Where checkpoint bytes live. The only module of resumable that touches files.

`Storage` is the seam: a handful of methods that retention, "find the newest checkpoint" and the
checkpoint reader/writer use without knowing the backend. `LocalStorage` is the real one;
`MemoryStorage` is a complete in-memory one for tests, able to run out of space on demand.

A file exists under its final name only once it is complete: writes go to a temporary name in the
same folder (``.{name}.tmp-{pid}-{8 hex}``), are flushed and fsynced, then renamed. Listings never
show temporaries. A remote (fsspec) backend or folder checkpoints committed by a manifest written
last fit the same methods: callers never see how a commit happens.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import posixpath
import re
import secrets
import stat
from io import BytesIO
from typing import BinaryIO, Callable, Protocol, Union

from resumable.errors import StorageError

__all__ = ["Storage", "LocalStorage", "MemoryStorage", "map_file", "temporary_name", "is_temporary"]

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]
PathLike = Union[str, "os.PathLike[str]"]

_TEMPORARY = re.compile(r"\.(?P<final>.+)\.tmp-(?P<pid>\d{1,10})-[0-9a-f]{8}")


class Storage(Protocol):
    """What the checkpoint layer needs from a place that keeps files.

    Paths are strings (or path-likes) in the backend's own syntax; folders are created explicitly.
    Every failure of the backend is raised as `StorageError`, with the original as ``__cause__``.
    """

    def write_atomic(self, path: PathLike, write: Callable[[BinaryIO], None]) -> None:
        """Create or replace `path` with what `write` writes to the binary file it is given.

        Either the whole new file is committed under `path`, or — if `write` or the backend fails,
        or the process is interrupted — nothing changes: the old file at `path`, if any, is intact
        and no temporary is left (a killed process may leave one; see `cleanup_temporaries`).
        Exceptions of `write` propagate; backend errors become `StorageError`.
        """

    def copy_atomic(self, source: PathLike, path: PathLike) -> None:
        """Create or replace `path` with the content of the committed file `source`, with the
        guarantees of `write_atomic`. A backend may share the bytes (a hard link) instead of
        copying them: files are never modified in place, so the two stay independent."""

    def read_buffer(self, path: PathLike) -> Buffer:
        """The bytes of `path`, lazily mapped where the backend allows; `StorageError` if absent."""

    def exists(self, path: PathLike) -> bool:
        """Whether `path` is committed."""

    def delete(self, path: PathLike) -> None:
        """Remove `path`; a path that is already gone is not an error."""

    def list(self, folder: PathLike) -> list[str]:
        """Sorted names of the committed files in `folder`, never temporaries; [] if no folder."""

    def makedirs(self, folder: PathLike) -> None:
        """Create `folder` and its parents if missing."""

    def cleanup_temporaries(self, folder: PathLike) -> list[str]:
        """Remove temporaries left in `folder` by killed writers; return their names.

        Skips temporaries whose writer process is still alive, except this process's own (a
        restarted container often reuses the pid): call it when this process has no write in
        flight, e.g. at startup.
        """


def temporary_name(final_name: str) -> str:
    """A fresh temporary name for a file that will be renamed to `final_name` in the same folder."""
    return f".{final_name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def is_temporary(name: str) -> bool:
    """Whether `name` (a file name, not a path) is one of our temporaries."""
    return _TEMPORARY.fullmatch(name) is not None


def map_file(path: PathLike) -> Buffer:
    """Map the regular file at `path` copy-on-write (writable, lazily paged, never written back).

    Falls back to reading the file into memory where mapping is not supported; an empty file gives
    ``b""``. Raises `StorageError` if the path is missing, unreadable or not a regular file.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open below
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return b""
            try:
                return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
            except OSError:  # e.g. ENODEV on a file system without mmap
                return bytearray(file.read())
    except OSError as err:
        raise _storage_error(err, path, "reading") from err


class LocalStorage:
    """`Storage` on the local file system; paths are ordinary paths."""

    def write_atomic(self, path: PathLike, write: Callable[[BinaryIO], None]) -> None:
        """See `Storage.write_atomic`. Fsyncs the file before the rename and the folder after it.

        A full disk or quota (ENOSPC, EDQUOT) and a refusal (EACCES, EPERM, EROFS) become a
        `StorageError` saying so, with the path and the bytes written before the failure.
        """
        path = os.fspath(path)
        folder, final = os.path.split(path)
        folder = folder or "."
        temporary = os.path.join(folder, temporary_name(final))
        try:
            with open(temporary, "xb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException as err:  # KeyboardInterrupt too: never leave a temporary behind
            written = _size_or_none(temporary)
            with contextlib.suppress(OSError):  # e.g. EROFS: it was never created; keep `err`
                os.remove(temporary)
            if isinstance(err, OSError) and not isinstance(err, StorageError):
                raise _storage_error(err, path, "writing", written, _free_bytes(folder)) from err
            raise
        _fsync_folder(folder)

    def copy_atomic(self, source: PathLike, path: PathLike) -> None:
        """See `Storage.copy_atomic`: a hard link renamed into place (no bytes written), or, where
        the file system has no hard links, a copy through `write_atomic`."""
        path = os.fspath(path)
        folder = os.path.dirname(path) or "."
        temporary = os.path.join(folder, temporary_name(os.path.basename(path)))
        try:
            os.link(source, temporary)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise _storage_error(err, source, "linking") from err
            with open(source, "rb") as file:
                self.write_atomic(path, lambda out: _copy(file, out))
            return
        try:
            os.replace(temporary, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            if isinstance(err, OSError):
                raise _storage_error(err, path, "writing") from err
            raise
        _fsync_folder(folder)

    def read_buffer(self, path: PathLike) -> Buffer:
        """See `Storage.read_buffer`: a copy-on-write map of the file (`map_file`)."""
        return map_file(path)

    def exists(self, path: PathLike) -> bool:
        """See `Storage.exists`."""
        return os.path.exists(path)

    def delete(self, path: PathLike) -> None:
        """See `Storage.delete`."""
        try:
            _remove_if_present(path)
        except OSError as err:
            raise _storage_error(err, path, "deleting") from err

    def list(self, folder: PathLike) -> list[str]:
        """See `Storage.list`."""
        try:
            with os.scandir(folder) as entries:
                return sorted(e.name for e in entries if e.is_file() and not is_temporary(e.name))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise _storage_error(err, folder, "listing") from err

    def makedirs(self, folder: PathLike) -> None:
        """See `Storage.makedirs`."""
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise _storage_error(err, folder, "creating") from err

    def cleanup_temporaries(self, folder: PathLike) -> list[str]:
        """See `Storage.cleanup_temporaries`."""
        removed = []
        for name in self._stale_temporaries(folder):
            try:
                _remove_if_present(os.path.join(folder, name))
            except OSError as err:
                raise _storage_error(err, os.path.join(folder, name), "deleting") from err
            removed.append(name)
        return removed

    def _stale_temporaries(self, folder: PathLike) -> list[str]:
        try:
            return [name for name in sorted(os.listdir(folder)) if _is_stale(name)]
        except FileNotFoundError:
            return []
        except OSError as err:
            raise _storage_error(err, folder, "listing") from err


class MemoryStorage:
    """`Storage` in a dict of path -> bytes, for tests; it behaves like `LocalStorage`.

    `capacity` (bytes, all files together, temporaries and the file being replaced included)
    makes a write fail with ENOSPC at the write call that would exceed it, as a full disk does;
    `read_only` makes every write fail with EROFS. Both may be changed at any time. `files` is the
    real content: tests may inspect it or plant files (e.g. a leftover temporary) in it.
    """

    def __init__(self, *, capacity: int | None = None, read_only: bool = False) -> None:
        self.files: dict[str, bytes] = {}
        self.folders: set[str] = {".", "/"}
        self.capacity = capacity
        self.read_only = read_only

    def write_atomic(self, path: PathLike, write: Callable[[BinaryIO], None]) -> None:
        """See `Storage.write_atomic`: nothing is stored unless `write` returns."""
        path = _norm(path)
        used = sum(map(len, self.files.values()))
        file = _BoundedFile(None if self.capacity is None else max(0, self.capacity - used))
        try:
            if self.read_only:
                raise OSError(errno.EROFS, "Read-only file system", path)
            if (posixpath.dirname(path) or ".") not in self.folders:
                raise OSError(errno.ENOENT, "No such file or directory", path)
            write(file)
        except OSError as err:
            if isinstance(err, StorageError):
                raise
            raise _storage_error(err, path, "writing", file.size, file.room) from err
        self.files[path] = file.getvalue()

    def copy_atomic(self, source: PathLike, path: PathLike) -> None:
        """See `Storage.copy_atomic`: a copy of the stored bytes, subject to `capacity`."""
        content = self.read_buffer(source)
        self.write_atomic(path, lambda out: out.write(content))

    def read_buffer(self, path: PathLike) -> Buffer:
        """See `Storage.read_buffer`: the stored bytes (read-only)."""
        if _norm(path) not in self.files:
            err = OSError(errno.ENOENT, "No such file or directory", os.fspath(path))
            raise _storage_error(err, path, "reading") from err
        return self.files[_norm(path)]

    def exists(self, path: PathLike) -> bool:
        """See `Storage.exists`."""
        return _norm(path) in self.files or _norm(path) in self.folders

    def delete(self, path: PathLike) -> None:
        """See `Storage.delete`."""
        self.files.pop(_norm(path), None)

    def list(self, folder: PathLike) -> list[str]:
        """See `Storage.list`."""
        return sorted(name for name in self._names(folder) if not is_temporary(name))

    def makedirs(self, folder: PathLike) -> None:
        """See `Storage.makedirs`."""
        folder = _norm(folder)
        while folder not in self.folders:
            self.folders.add(folder)
            folder = posixpath.dirname(folder) or "."

    def cleanup_temporaries(self, folder: PathLike) -> list[str]:
        """See `Storage.cleanup_temporaries`."""
        stale = [name for name in sorted(self._names(folder)) if _is_stale(name)]
        for name in stale:
            del self.files[posixpath.join(_norm(folder), name)]
        return stale

    def _names(self, folder: PathLike) -> list[str]:
        folder = _norm(folder)
        return [posixpath.basename(path) for path in self.files
                if (posixpath.dirname(path) or ".") == folder]


def _copy(source: BinaryIO, target: BinaryIO) -> None:
    while chunk := source.read(1 << 22):
        target.write(chunk)


class _BoundedFile(BytesIO):
    """A BytesIO that raises ENOSPC, like a full disk, when it would grow past `room` bytes."""

    def __init__(self, room: int | None) -> None:
        super().__init__()
        self.room = room
        self.size = 0

    def write(self, data) -> int:  # type: ignore[override]
        end = max(self.size, self.tell() + memoryview(data).nbytes)
        if self.room is not None and end > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.size = end
        return super().write(data)


def _storage_error(err: OSError, path: PathLike, action: str, written: int | None = None,
                   free: int | None = None) -> StorageError:
    """The StorageError for `err`, saying what failed, what is still safe, and what to do."""
    path = os.fspath(path)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        sizes = "".join([f" after {written} bytes" if written is not None else "",
                         f"; {free} bytes are free" if free is not None else ""])
        message = (f"the disk is full (or over quota) {action} {path}{sizes}. The file was not "
                   "committed and checkpoints written before are intact; free space or save "
                   "elsewhere")
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        kind = "the file system is read-only" if err.errno == errno.EROFS else "permission denied"
        message = f"{kind} {action} {path}; choose a writable folder or fix its permissions"
    elif err.errno == errno.ENOENT:
        message = f"{path} does not exist ({action}); create its folder first or check the path"
    else:
        message = f"{action} {path} failed: {err.strerror or err}"
    return StorageError(err.errno, message) if err.errno is not None else StorageError(message)


def _is_stale(name: str) -> bool:
    """A temporary whose writer is gone (or is this process, see `cleanup_temporaries`)."""
    match = _TEMPORARY.fullmatch(name)
    if match is None:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False  # alive under another user, or unknowable: leave it
    return False


def _norm(path: PathLike) -> str:
    return posixpath.normpath(os.fspath(path))


def _remove_if_present(path: PathLike) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _size_or_none(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _free_bytes(folder: str) -> int | None:
    try:
        info = os.statvfs(folder)
    except (OSError, AttributeError):  # statvfs is POSIX only
        return None
    return info.f_bavail * info.f_frsize


def _fsync_folder(folder: str) -> None:
    """Make the rename durable. Folders cannot be opened or fsynced everywhere: then skip."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise _storage_error(err, folder, "syncing") from err
    finally:
        os.close(fd)
