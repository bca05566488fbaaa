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
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from .checkpoint.api import _newest_first  # the rule auto-resume uses to pick a checkpoint
from .errors import StorageError

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["SignalCatcher", "stop", "save_for_resume", "save_after_exception"]


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


def save_after_exception(trainer: Trainer, exception: BaseException) -> None:
    """The emergency checkpoint for `exception`, raised inside `fit`. Never raises.

    Saves (as `save_for_resume`) only for an `Exception` (not KeyboardInterrupt or SystemExit),
    with `emergency_checkpoint` on, while the trainer is at a step boundary: after a batch's
    `on_train_batch_end` and before the next batch's `on_train_batch_start` (fetching and moving
    the next batch). That checkpoint is exact, like any other. Anywhere else — inside a step, a
    hook, validation or the epoch end — gradients, RNG and metrics are half-updated, so nothing
    is written; the message says which checkpoint a rerun resumes from instead. The outcome is
    printed and added as a note to `exception`.
    """
    if not isinstance(exception, Exception) or not trainer.config.emergency_checkpoint or trainer.model is None:
        return
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
    kind = type(exception).__name__
    if not getattr(trainer, "_at_step_boundary", False):
        message = (f"{kind} at {where}, inside a step or hook, where the state is not a resumable point: "
                   f"no emergency checkpoint; {_newest(trainer)}")
    else:
        try:
            message = (f"{kind} at {where}, between steps: saved an exact emergency checkpoint "
                       f"{', '.join(save_for_resume(trainer))}; rerun the same command to resume from it")
        except Exception as err:  # the original exception must surface, not this one
            message = f"{kind} at {where}: the emergency checkpoint failed ({type(err).__name__}: {err}); " \
                      f"{_newest(trainer)}"
    _say(message)
    if hasattr(exception, "add_note"):  # Python 3.11+
        exception.add_note("resumable: " + message)


def _newest(trainer: Trainer) -> str:
    """Which checkpoint a rerun of this run resumes from, as a phrase."""
    try:
        folders = {os.path.abspath(trainer.experiment.checkpoint_dir)}
        folders |= {os.path.abspath(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath}
        newest = _newest_first(folders, os.path.abspath(trainer.experiment.path))
    except Exception as err:
        return f"the run's checkpoints could not be listed ({err})"
    if not newest:
        return "this run has no checkpoint yet, so a rerun starts from scratch"
    return f"a rerun resumes from the newest checkpoint, {newest[0]}"


def _say(message: str) -> None:
    print(f"resumable: {message}", file=sys.stderr, flush=True)
