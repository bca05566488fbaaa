"""Stopping a run early without losing it: stop signals, and the checkpoint a stop or a crash writes.

`SignalCatcher` replaces the handlers of the `preemption_signals` while `fit` runs. A handler
only records the request (saving inside a handler could deadlock on a lock the interrupted code
holds); the loop sees it at the next step boundary, right after `on_train_batch_end`, and calls
`stop`: write a checkpoint auto-resume finds, then `SystemExit(128 + signum)` — 143 for SIGTERM,
so a scheduler sees that the run did not finish. A SIGINT while a stop is already pending (the
second Ctrl-C) raises `KeyboardInterrupt` at once.

`save_after_exception` is the emergency checkpoint: on an exception it saves only when the
trainer is at a step boundary, where the state is exactly resumable; see docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from torch.utils.data import DataLoader

from .checkpoint.api import newest_first, run_folders  # the rule auto-resume uses to pick a checkpoint
from .errors import StorageError
from .rng import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["SignalCatcher", "stop", "save_for_resume", "BoundaryRecorder", "save_after_exception"]


class SignalCatcher:
    """Records the first of `signals` that arrives, while installed; a context manager.

    Installs only in the main thread (elsewhere Python cannot set handlers: then it catches
    nothing, silently). A handler installed before is called after the request is recorded,
    unless it is Python's default SIGINT handler (raising KeyboardInterrupt is what a first
    Ctrl-C must not do). The previous handlers are put back on exit.
    """

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalCatcher:
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            # None: a handler set outside Python, which cannot be put back; the default is closest
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        if self.requested is None:
            self.requested = signum
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)


def stop(trainer: Trainer, signum: int) -> NoReturn:
    """Save the state (a step boundary) where auto-resume finds it, say so, and exit 128 + signum.

    A failed save raises its `StorageError` with `on_save_error="raise"`; with "warn" the exit
    still happens, after saying which older checkpoint a rerun resumes from.
    """
    code, name = 128 + signum, signal.Signals(signum).name
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
    try:
        saved = "saved " + ", ".join(save_for_resume(trainer))
    except StorageError as err:
        if trainer.config.on_save_error == "raise":
            _say(f"stopped by {name} at {where}, but the checkpoint could not be written: {err}")
            raise
        saved = f"nothing saved ({err}); {_newest(trainer)}"
    _say(f"stopped by {name} at {where}; {saved}; exiting with code {code} (rerun the same command to resume)")
    raise SystemExit(code)


def save_for_resume(trainer: Trainer) -> list[str]:
    """Write the current state where auto-resume looks; return the path(s) holding it.

    The first `ModelCheckpoint` that saves full state writes its `last` file (`save_now`). With
    none, the trainer writes `<checkpoint_dir>/last.ckpt` (`resume.ckpt` if a weights-only
    callback already owns that name: a weights-only file must never replace a resumable one).
    """
    full = [cb for cb in trainer.checkpoint_callbacks if not cb.save_weights_only]
    if full:
        return [str(full[0].save_now(trainer))]
    path = Path(trainer.experiment.checkpoint_dir) / "last.ckpt"
    owned = {os.path.abspath(cb.last_model_path) for cb in trainer.checkpoint_callbacks if cb.last_model_path}
    if os.path.abspath(path) in owned:
        path = path.with_name("resume.ckpt")
    trainer.save_checkpoint(path)
    return [str(path)]


# Snapshotting every RNG costs ~80 us (NumPy's and Python's states are copied into new objects):
# taken only when a batch lasts at least this long, so that it stays under 1% of the time.
SNAPSHOT_MIN_BATCH_SECONDS = 0.01


class BoundaryRecorder:
    """What an emergency checkpoint needs from the last step boundary (after a batch's hooks,
    before the next fetch): the data loader's state, and — when the next fetch runs in this
    process (a `DataLoader` with `num_workers=0`), where it may draw augmentation noise from the
    global generators — a snapshot of every RNG, so that those draws can be undone. The snapshot
    is skipped for batches shorter than `SNAPSHOT_MIN_BATCH_SECONDS`; a fetch in worker processes
    never touches this process's generators and needs none."""

    def __init__(self) -> None:
        self.armed = False  # True between a step boundary and the next batch's start
        self.data: Any = None  # an iterable dataset's own state at the boundary
        self.rng: dict[str, Any] | None = None  # every RNG at the boundary, when snapshotted
        self.in_process = False  # the next fetch runs user code in this process
        self._marked = time.perf_counter()
        self._loader: Any = None
        self._iterable = False

    def record(self, trainer: Trainer) -> None:
        """Called at every step boundary; about a microsecond unless it snapshots (see above)."""
        now = time.perf_counter()
        batch_seconds, self._marked = now - self._marked, now
        loader = trainer.train_loader
        if not trainer.config.emergency_checkpoint or loader is None:
            self.armed = False
            return
        if loader is not self._loader:
            self._loader, self.in_process = loader, _fetches_in_process(loader)
            self._iterable = loader.kind == "iterable"
        self.data = loader.state_dict() if self._iterable else None
        self.rng = capture_rng_state() if self.in_process and batch_seconds >= SNAPSHOT_MIN_BATCH_SECONDS else None
        self.armed = True

    def clear(self) -> None:
        """Leave the boundary: a step or an epoch end is running."""
        self.armed = False


def _dataset_state(loader: Any) -> Any:
    """The part of the loader's state a fetch can move: an iterable dataset's own state."""
    return loader.state_dict() if loader.kind == "iterable" else None


def _fetches_in_process(loader: Any) -> bool:
    """Does fetching a batch run user code in this process? (A list of ready batches does not.)"""
    source = getattr(loader, "dataloader", None)
    if isinstance(source, DataLoader):
        return source.num_workers == 0
    return not isinstance(source, (list, tuple))


def save_after_exception(trainer: Trainer, exception: BaseException) -> None:
    """The emergency checkpoint for `exception`, raised inside `fit`. Never raises.

    Saves (as `save_for_resume`) only for an `Exception` — not KeyboardInterrupt or SystemExit,
    nor a `StorageError` (the save that failed went to the same storage) — raised at a step
    boundary (`trainer._boundary` is armed: between a batch's `on_train_batch_end` and the next
    `on_train_batch_start`, i.e. while the next batch is fetched and moved), with the RNGs put
    back to the boundary's, and only if the data loader's state did not move. That checkpoint is
    exact, like any other. Anywhere else — inside a step, a hook, validation or the
    epoch end — gradients, RNG and metrics are half-updated, so nothing is written and the
    message says which checkpoint a rerun resumes from. The outcome is printed and added as a
    note to `exception`.
    """
    if not isinstance(exception, Exception) or not trainer.config.emergency_checkpoint or trainer.model is None:
        return
    where = f"{type(exception).__name__} at epoch {trainer.current_epoch}, step {trainer.global_step}"
    boundary = trainer._boundary if trainer._boundary.armed else None
    saved, why = None, "inside a step or hook, where the state is not a resumable point"
    try:
        if isinstance(exception, StorageError):
            why = "a save failed, and an emergency save would go to the same storage"
        elif boundary is not None and not _same(boundary.data, _dataset_state(trainer.train_loader)):
            why = "while fetching a batch that had already moved the dataset's own state on"
        elif boundary is not None and boundary.in_process and boundary.rng is None:
            why = (f"while fetching a batch in this process (num_workers=0), whose random draws cannot be undone: "
                   f"batches shorter than {SNAPSHOT_MIN_BATCH_SECONDS * 1e3:g} ms skip the RNG snapshot that allows it")
        elif boundary is not None:
            if boundary.rng is not None:
                restore_rng_state(boundary.rng)  # undo what the failed fetch drew
            saved = ", ".join(save_for_resume(trainer))
    except Exception as err:  # the original exception must surface, not this one
        why = f"the emergency checkpoint failed ({type(err).__name__}: {err})"
    if saved:
        message = f"{where}, between steps: saved an exact emergency checkpoint {saved}; rerun to resume from it"
    else:
        message = f"{where}, {why}: no emergency checkpoint; {_newest(trainer)}"
    _say(message)
    if hasattr(exception, "add_note"):  # Python 3.11+
        exception.add_note("resumable: " + message)


def _same(saved: Any, now: Any) -> bool:
    try:
        return bool(saved == now)
    except Exception:  # e.g. arrays inside a dataset's state: cannot tell, so assume it moved
        return False


def _newest(trainer: Trainer) -> str:
    """Which checkpoint a rerun of this run resumes from, as a phrase."""
    try:
        newest = newest_first(run_folders(trainer), os.path.abspath(trainer.experiment.path))
    except Exception as err:
        return f"the run's checkpoints could not be listed ({err})"
    if not newest:
        return "this run has no checkpoint yet, so a rerun starts from scratch"
    return f"a rerun resumes from the newest checkpoint, {newest[0]}"


def _say(message: str) -> None:
    print(f"resumable: {message}", file=sys.stderr, flush=True)
