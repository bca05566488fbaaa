"""A disk that refuses a save: full, or not writable.

The rule, checked after every fault: a clear `StorageError` naming the file and the cause; no
partial file under a final name and no temporary left behind; every checkpoint written before is
still there and verifies; the `ModelCheckpoint` state is as before the failed save. With
`on_save_error="raise"` training stops; with "warn" it warns and carries on, and the next save
works once the disk takes writes again.

Faults are simulated at the write calls (the checkpoint writer's file raises after some bytes)
and, as root, produced for real: a tiny tmpfs that fills up, and one remounted read-only.
"""

from __future__ import annotations

import errno
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

import resumable as rs
from models import TinyModel
from resumable.checkpoint import api, storage
from resumable.checkpoint.storage import is_temporary


class Disk:
    """Faults at the checkpoint write calls: while `error` is set, a file whose final name contains
    `only` gets `error` (an errno) from its write call after `room` bytes have gone through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.error: int | None = None
        self.only = ""
        self.room = 100
        real = api.write_checkpoint

        def write_checkpoint(file, state):
            faulty = self.error is not None and self.only in os.path.basename(file.name)
            real(_FailingFile(file, self.error, self.room) if faulty else file, state)

        monkeypatch.setattr(api, "write_checkpoint", write_checkpoint)
        real_copy = api.copy_checkpoint

        def copy_checkpoint(source, path):  # `last` saved with a top-k file is a link to it: fail that too
            if self.error is not None and self.only in os.path.basename(os.fspath(path)):
                err = OSError(self.error, os.strerror(self.error), os.fspath(path))
                raise storage._storage_error(err, path, "writing") from err
            real_copy(source, path)

        monkeypatch.setattr(api, "copy_checkpoint", copy_checkpoint)


class _FailingFile:
    def __init__(self, file, error: int, room: int) -> None:
        self._file, self._error, self._room = file, error, room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self._room:
            self._file.write(data[: self._room])
            self._room = 0
            raise OSError(self._error, os.strerror(self._error))
        self._room -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


def run_with(folder: Path, callback: rs.ModelCheckpoint, **kwargs) -> rs.Trainer:
    kwargs.setdefault("max_epochs", 2)
    return rs.Trainer(seed=0, enable_progress_bar=False, experiment=rs.Experiment(folder, version=0),
                      checkpoint_callback=callback, **kwargs)


class FailFrom(rs.Callback):
    """Turns the disk fault on once `global_step` reaches `step` (and off at `until`)."""

    def __init__(self, disk: Disk, error: int, step: int, until: int | None = None) -> None:
        self.disk, self.error, self.step, self.until = disk, error, step, until

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            self.disk.error = self.error
        if self.until is not None and trainer.global_step + 1 == self.until:
            self.disk.error = None


def assert_the_rule_holds(folder: Path, before: dict[str, bytes]) -> None:
    names = os.listdir(folder)
    assert not [n for n in names if is_temporary(n)], names
    for name, content in before.items():
        assert (folder / name).read_bytes() == content, f"{name} changed"
    for name in names:
        rs.load_checkpoint(folder / name)  # every file under a final name is complete and verifies


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.ckpt")}


@pytest.mark.parametrize("error, says", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only")])
@pytest.mark.parametrize("only", ["step=", "last"])  # the top-k file, or `last` after the top-k file was written
def test_raise_stops_training_with_a_clear_error_and_keeps_every_checkpoint(tmp_path, monkeypatch, error, says,
                                                                            only):
    disk = Disk(monkeypatch)
    disk.only = only
    folder = tmp_path / "ckpts"
    callback = rs.ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=2, save_last=True)
    trainer = run_with(tmp_path, callback, callbacks=[FailFrom(disk, error, step=6)])
    before_state = {}

    class Snapshot(rs.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 5:
                before_state.update(callback.state_dict(), files=snapshot(folder))

    trainer.callbacks.insert(0, Snapshot())
    with pytest.raises(rs.StorageError, match=says) as raised:
        trainer.fit(TinyModel())
    assert str(folder) in str(raised.value) and trainer.global_step == 6
    assert_the_rule_holds(folder, before_state.pop("files"))
    assert sorted(os.listdir(folder)) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    after = callback.state_dict()
    for key in ("kept", "best_model_path", "last_model_path", "last_position", "saves"):
        assert after[key] == before_state[key], key


def test_warn_keeps_training_and_the_next_save_works_when_space_returns(tmp_path, monkeypatch):
    disk = Disk(monkeypatch)
    folder = tmp_path / "ckpts"
    callback = rs.ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=2, save_last=True)
    trainer = run_with(tmp_path / "warned", callback, on_save_error="warn",
                       callbacks=[FailFrom(disk, errno.ENOSPC, step=6, until=10)])
    with pytest.warns(UserWarning) as caught:
        model = trainer.fit(TinyModel()) or trainer.model
    full = [str(w.message) for w in caught if "checkpoint not saved" in str(w.message)]
    assert len(full) == 2, full  # steps 6 and 8; step 10 saved again
    assert "checkpoint not saved at epoch 0, step 6: [Errno 28] the disk is full" in full[0]
    assert str(folder / "epoch=0-step=6.ckpt") in full[0] and str(folder / "epoch=0-step=8.ckpt") in full[1]
    assert trainer.global_step == 16
    assert_the_rule_holds(folder, {})
    assert rs.load_checkpoint(folder / "last.ckpt")["global_step"] == 16

    disk.error = None
    straight = run_with(tmp_path / "straight", rs.ModelCheckpoint(dirpath=tmp_path / "s", every_n_train_steps=2,
                                                                   save_top_k=2, save_last=True))
    straight.fit(TinyModel())
    assert sorted(os.listdir(folder)) == sorted(os.listdir(tmp_path / "s"))  # retention recovered too
    for (name, x), (_, y) in zip(straight.model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(x, y), f"{name}: a failed save changed training"


# --- a real tiny file system ----------------------------------------------------------------
class BigModel(TinyModel):
    """About 1 MiB of weights and 1 MiB of momentum: a checkpoint of ~2 MiB."""

    def __init__(self):
        super().__init__(features=512, classes=512)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MiB tmpfs: one ~2 MiB checkpoint fits, a second (or a replacement's temporary) does not."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


@pytest.mark.parametrize("on_save_error", ["raise", "warn"])
def test_a_full_tmpfs_keeps_the_checkpoint_that_fits(tmp_path, tiny_disk, on_save_error):
    callback = rs.ModelCheckpoint(dirpath=tiny_disk, every_n_train_steps=1, save_top_k=0, save_last=True)
    trainer = run_with(tmp_path, callback, max_steps=3, on_save_error=on_save_error)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if on_save_error == "raise":
            with pytest.raises(rs.StorageError, match="the disk is full") as raised:
                trainer.fit(BigModel())
            assert str(tiny_disk / "last.ckpt") in str(raised.value)
            assert trainer.global_step == 2
        else:
            trainer.fit(BigModel())
            assert trainer.global_step == 3
            assert sum("the disk is full" in str(w.message) for w in caught) >= 2  # steps 2, 3 and fit end
    assert os.listdir(tiny_disk) == ["last.ckpt"]  # no temporary, no partial file
    saved = rs.load_checkpoint(tiny_disk / "last.ckpt")
    assert saved["global_step"] == 1 and callback.last_model_path == str(tiny_disk / "last.ckpt")


def test_a_file_system_turned_read_only_mid_run(tmp_path, tiny_disk):
    callback = rs.ModelCheckpoint(dirpath=tiny_disk, every_n_train_steps=1, save_top_k=0, save_last=True)
    trainer = run_with(tmp_path, callback, max_steps=4)

    class RemountReadOnly(rs.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 2:
                subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True, timeout=30)

    trainer.callbacks.insert(0, RemountReadOnly())
    with pytest.raises(rs.StorageError, match="read-only") as raised:
        trainer.fit(TinyModel())
    assert str(tiny_disk / "last.ckpt") in str(raised.value)
    assert os.listdir(tiny_disk) == ["last.ckpt"]
    assert rs.load_checkpoint(tiny_disk / "last.ckpt")["global_step"] == 2


def test_a_folder_without_write_permission(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop root's writes (simulated above instead)")
    folder = tmp_path / "ckpts"
    callback = rs.ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_last=True)
    trainer = run_with(tmp_path, callback, max_steps=4)

    class LockFolder(rs.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 2:
                folder.chmod(0o500)

    trainer.callbacks.insert(0, LockFolder())
    try:
        with pytest.raises(rs.StorageError, match="permission denied"):
            trainer.fit(TinyModel())
    finally:
        folder.chmod(0o700)
    assert_the_rule_holds(folder, {})
    assert rs.load_checkpoint(folder / "last.ckpt")["global_step"] == 2
