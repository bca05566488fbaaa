"""Saving, loading and finding checkpoints: the calls the trainer and callbacks make.

Loading never unpickles; every load verifies checksums; saves are atomic (see `storage`).
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigurationError
from .format import read_checkpoint, read_header, write_checkpoint
from .storage import LocalStorage

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["save_checkpoint", "copy_checkpoint", "load_checkpoint", "delete_checkpoint", "find_resume_checkpoint",
           "list_checkpoints", "run_folders", "clean_temporaries", "newest_first"]

_storage = LocalStorage()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write `state` to `path` atomically: the file appears complete and durable, or not at all."""
    path = os.fspath(path)
    _storage.makedirs(os.path.dirname(path) or ".")
    _storage.write_atomic(path, lambda f: write_checkpoint(f, state))


def copy_checkpoint(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Make `path` a committed copy of the committed checkpoint `source`, atomically (locally a
    hard link: a `last` saved with a top-k file costs no second write)."""
    _storage.copy_atomic(os.fspath(source), os.fspath(path))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint into a dict (seed keys: `global_step`, `epoch`, `state_dict`,
    `optimizer_states`, `lr_schedulers`; plus `callbacks`, `hyper_parameters`, `trainer`, `rng`, ...).

    Verifies the checksums; raises `CheckpointError` (naming the file) on anything damaged.
    Tensors are CPU tensors backed by a memory map of the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))
    return read_checkpoint(path)


def delete_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete a checkpoint file (no error if it is already gone)."""
    _storage.delete(os.fspath(path))


def list_checkpoints(folder: str | os.PathLike[str]) -> list[str]:
    """Committed checkpoint files (`*.ckpt`) in `folder`, never temporaries."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, name) for name in _storage.list(folder) if name.endswith(".ckpt")]


def find_resume_checkpoint(trainer: Trainer, ckpt_path: str | os.PathLike[str] | None
                           ) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint `fit` resumes from, and its path; `(None, None)` for a fresh start.

    `ckpt_path` is a file, `"last"` (the newest valid checkpoint of this run) or `"best"` (the
    best one of the first `ModelCheckpoint`). Without it, the run's newest valid checkpoint
    is used when the experiment folder has one (the seed's `Experiment(version=N)` restore).
    A damaged candidate is skipped with a warning naming it; the next newest is used.
    """
    if ckpt_path is not None and ckpt_path not in ("last", "best"):
        checkpoint = load_checkpoint(ckpt_path)
        if "trainer" not in checkpoint:
            raise CheckpointError(
                f"{ckpt_path} holds weights only (save_weights_only=True), so training cannot resume from it; "
                "use Module.load_from_checkpoint(path) to get the model, or resume from a full checkpoint"
            )
        return checkpoint, os.fspath(ckpt_path)
    run_dir = os.path.abspath(trainer.experiment.path)
    for path in newest_first(run_folders(trainer), run_dir):
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"skipping damaged checkpoint {path}: {err}", stacklevel=3)
            continue
        if ckpt_path == "best":
            return _best_of(checkpoint, trainer)
        return checkpoint, path
    if ckpt_path is not None:
        warnings.warn(f"ckpt_path={ckpt_path!r} but this run ({run_dir}) has no valid checkpoint yet; "
                      "starting from scratch", stacklevel=3)
    return None, None


def run_folders(trainer: Trainer) -> set[str]:
    """Every folder where this trainer's run keeps checkpoints (absolute paths)."""
    folders = {os.path.abspath(trainer.experiment.checkpoint_dir)}
    return folders | {os.path.abspath(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath is not None}


def clean_temporaries(trainer: Trainer) -> None:
    """Remove what killed saves left in the run folder and its checkpoint folders. Call only while
    no save of this run is in flight (at the start of `fit`, under the run lock)."""
    for folder in sorted(run_folders(trainer) | {os.path.abspath(trainer.experiment.path)}):
        if os.path.isdir(folder):
            _storage.cleanup_temporaries(folder)


def newest_first(folders: set[str], run_dir: str) -> list[str]:
    """Resumable checkpoints of `run_dir` in `folders`, newest training position first."""
    found = []
    for folder in folders:
        for path in list_checkpoints(folder):
            try:
                summary = read_header(path).get("summary") or {}
            except CheckpointError as err:
                warnings.warn(f"skipping damaged checkpoint {path}: {err}", stacklevel=4)
                continue
            if summary.get("run_dir") != run_dir or summary.get("weights_only"):
                continue
            found.append((tuple(summary.get("position") or ()), os.path.getmtime(path), path))
    return [path for *_, path in sorted(found, reverse=True)]


def _best_of(newest: dict[str, Any], trainer: Trainer) -> tuple[dict[str, Any], str]:
    callback = trainer.checkpoint_callback
    state = newest["callbacks"].get(callback.state_key) if callback else None
    best = state and state.get("best_model_path")
    if not best:
        raise ConfigurationError("ckpt_path='best' but no best checkpoint was recorded; pass 'last' or a path")
    return load_checkpoint(best), best
