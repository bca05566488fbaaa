"""`ModelCheckpoint`: save checkpoints on a schedule, keep the best (or newest) ones and `last`.

Takes the seed page's arguments (`filepath`, `save_best_only`, `verbose`, `monitor`, `mode`)
and today's (`dirpath`, `filename`, `save_top_k`, `save_last`, `every_n_train_steps`,
`every_n_epochs`, `train_time_interval`, `save_weights_only`).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import api as ckpt_api
from ..checkpoint import session
from ..checkpoint.policy import KeepBest, KeepNewest, SaveSchedule
from ..errors import ConfigurationError, StorageError
from .base import Callback

if TYPE_CHECKING:
    from ..module import Module
    from ..trainer import Trainer

__all__ = ["ModelCheckpoint"]

_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".bin")
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][\w./-]*)(:[^{}]*)?\}")


class ModelCheckpoint(Callback):
    """Save checkpoints during `fit`; keep the `save_top_k` best by `monitor` and a `last` one.

    * `filepath` (seed style): a file name (e.g. `weights.ckpt`) holds the best checkpoint, or a
      folder receives the files. `dirpath` + `filename` (a template such as
      `"{epoch}-{step}-{val_loss:.4f}"`) is the modern spelling.
    * `save_top_k`: keep the k best (`-1` all, `0` none); `save_best_only=True` means 1. Without
      `monitor`, the k newest are kept. A NaN or inf metric is never best.
    * `save_last`: also keep `last.ckpt`, always the newest saved state (a real file, never a
      symlink), present from the first save on.
    * When: `every_n_train_steps`, `every_n_epochs` (default 1 when no other trigger is given),
      `train_time_interval` (a `timedelta`), and at the end of `fit` if the state moved on.
    * Files are deleted only after the new checkpoint is durable, only if this run wrote them,
      and never a checkpoint the run was resumed from by name (`fit(ckpt_path=file or "best")`).
      A deletion a crash interrupted is finished when the run resumes. Resumed from another
      run's checkpoint, the files that run kept still rank, but are never deleted or
      overwritten. A file of the same name that this run did not write gets a `-vN` suffix.
    """

    def __init__(self, filepath: str | os.PathLike[str] | None = None, monitor: str | None = None,
                 verbose: bool = False, save_top_k: int | None = None, save_best_only: bool = False,
                 mode: str = "min", *, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None,
                 save_last: bool | None = None, every_n_train_steps: int | None = None,
                 every_n_epochs: int | None = None, train_time_interval: timedelta | None = None,
                 save_weights_only: bool = False) -> None:
        if filepath is not None and dirpath is not None:
            raise ConfigurationError("give ModelCheckpoint either filepath= (seed style) or dirpath=, not both")
        self.fixed_name: str | None = None
        if filepath is not None:
            path = Path(filepath)
            if path.suffix in _FILE_SUFFIXES and not path.is_dir():
                dirpath, self.fixed_name = path.parent, path.name
            else:
                dirpath = path
        if save_best_only:
            if save_top_k not in (None, 1):
                raise ConfigurationError(f"save_best_only=True means save_top_k=1; got save_top_k={save_top_k}")
            save_top_k = 1
        save_top_k = 1 if save_top_k is None else save_top_k
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise ConfigurationError(f"save_top_k must be an int >= -1, got {save_top_k!r}")
        if mode == "auto":
            mode = "max" if monitor and ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
        if save_best_only and monitor is None:
            raise ConfigurationError("save_best_only=True needs monitor= (the metric that decides what is best)")
        self.monitor = monitor
        self.mode = mode
        self.verbose = verbose
        self.save_top_k = save_top_k
        self.save_last = bool(save_last)
        self.save_weights_only = save_weights_only
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self._dirpath_given = self.dirpath  # state_key must not change when the default folder is filled in
        self.filename = filename
        triggered = bool(every_n_train_steps) or train_time_interval is not None
        self.schedule = SaveSchedule(every_n_train_steps=every_n_train_steps or 0,
                                     every_n_epochs=(0 if triggered else 1) if every_n_epochs is None else every_n_epochs,
                                     train_time_interval=train_time_interval)
        self.retention: KeepBest | KeepNewest = KeepBest(save_top_k, mode) if monitor else KeepNewest(save_top_k)
        self.kept: dict[str, float] = {}  # path -> score (score is the save order without a monitor)
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.last_model_path = ""
        self._last_position: tuple[int, ...] | None = None
        self._saves = 0
        self._clock_offset = 0.0
        self._clock_start = time.monotonic()
        self._evicting: list[str] = []
        self._foreign: set[str] = set()  # kept files another run wrote (resumed from its checkpoint)

    @property
    def state_key(self) -> str:
        fields = {"monitor": self.monitor, "mode": self.mode, "every_n_train_steps": self.schedule.every_n_train_steps,
                  "every_n_epochs": self.schedule.every_n_epochs,
                  "train_time_interval": str(self.schedule.train_time_interval),
                  "dirpath": str(self._dirpath_given) if self._dirpath_given else None,
                  "filename": self.fixed_name or self.filename}
        return "ModelCheckpoint{" + ",".join(f"{k}={v}" for k, v in fields.items()) + "}"

    # --- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, module: Module) -> None:
        if self.dirpath is None:
            self.dirpath = trainer.experiment.checkpoint_dir
        self._clock_start = time.monotonic()
        run = os.path.abspath(trainer.experiment.path)
        if trainer.resumed_from_run is not None and trainer.resumed_from_run != run:
            # Resumed from another run's checkpoint: its files still rank, but they are not this
            # run's to delete or overwrite, and this run's `last` goes in this run's folder.
            self._foreign |= set(self.kept) | set(self._evicting) | ({self.last_model_path} - {""})
            self.last_model_path, self._evicting = "", []
        for path in self._evicting:  # retention had dropped them when the checkpoint resumed from was saved
            ckpt_api.delete_checkpoint(path)
        self._evicting = []

    def on_train_batch_end(self, trainer: Trainer, module: Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        last_step = self._last_position[0] if self._last_position else None
        if self.schedule.step_due(trainer.global_step, last_step, self._seconds_since_save()):
            self._save(trainer, at_epoch_end=False)

    def on_train_epoch_end(self, trainer: Trainer, module: Module) -> None:
        if self.schedule.epoch_due(trainer.current_epoch):
            self._save(trainer, at_epoch_end=True)

    def on_fit_end(self, trainer: Trainer, module: Module) -> None:
        if self._last_position != session.position(trainer) and trainer.global_step > 0:
            self._save(trainer, at_epoch_end=False)

    # --- saving --------------------------------------------------------------------------------
    def _save(self, trainer: Trainer, at_epoch_end: bool) -> None:
        position = session.position(trainer)
        if position == self._last_position:
            return
        score = self._score(trainer, at_epoch_end)
        target = self._target_path(trainer)
        if isinstance(self.retention, KeepBest):
            decision = self.retention.decide(self.kept, score, str(target)) if score is not None else None
        else:
            decision = self.retention.decide(list(self.kept), str(target))
        keep = decision is not None and decision.save
        if not keep and not self.save_last:
            self._say(trainer, self._skip_message(score, decision))
            self._last_position = position
            return
        previous = self.state_dict()
        # The newest checkpoint, found by a restart after a crash, is just the latest save: retention
        # deletes it when an uninterrupted run would. A file the user named is theirs to keep.
        chosen = trainer.resumed_from if trainer._resume_chosen else None
        resumed_from = os.path.abspath(chosen) if chosen else None
        evict = [p for p in (decision.evict if keep else ()) if os.path.abspath(p) != resumed_from]
        if keep:
            self.kept[str(target)] = score if score is not None else float(self._saves)
            for path in evict:
                self.kept.pop(path, None)
            self._update_best()
        last = self._last_path() if self.save_last else None
        if last is not None:
            self.last_model_path = str(last)
        elif keep and self.last_model_path:
            evict.append(self.last_model_path)  # a stop's last.ckpt (see save_now): obsolete once this is durable
            self.last_model_path = ""
        self._last_position = position
        self._saves += 1
        self._clock_offset, self._clock_start = 0.0, time.monotonic()
        # saved with the state: a resume finishes deletions a crash cut short
        self._evicting = [p for p in evict if p not in self._foreign]
        if not self._write(trainer, target if keep else None, last, previous):
            return
        for path in self._evicting:
            ckpt_api.delete_checkpoint(path)
        self._evicting = []
        self._say(trainer, self._saved_message(score, decision, target if keep else None, last, previous))

    def _write(self, trainer: Trainer, target: Path | None, last: Path | None, previous: dict[str, Any]) -> bool:
        """Write the state to `target` and `last`. On failure roll this callback back to `previous`,
        remove a file this save created, and raise; for a `StorageError` with on_save_error="warn",
        warn instead and return False."""
        try:
            state = session.capture(trainer, weights_only=self.save_weights_only)
            if target is not None:
                ckpt_api.save_checkpoint(state, target)
            if last is not None and target is not None:
                ckpt_api.copy_checkpoint(target, last)  # the same state: written once
            elif last is not None:
                ckpt_api.save_checkpoint(state, last)
        except BaseException as err:
            self.load_state_dict(previous)
            if target is not None and str(target) not in {*previous["kept"], previous["last_model_path"]}:
                _delete_quietly(target)  # `last` failed after it: the rolled-back state does not know this file
            if isinstance(err, StorageError) and trainer.config.on_save_error == "warn":
                warnings.warn(f"checkpoint not saved at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                              f"{err}. Training goes on (on_save_error='warn'); the next save tries again",
                              stacklevel=4)
                return False
            raise
        return True

    def save_now(self, trainer: Trainer) -> Path:
        """Write the full current state to this callback's `last` file now; return its path.

        The trainer calls it on a stop signal and for an emergency checkpoint (see
        `resumable.preemption`), only on callbacks that save full state. It writes `last.ckpt` even
        with `save_last=False`: the stop's exact position must be on disk where auto-resume looks,
        and a top-k file would go through retention (refused as worse than the best, or evicting a
        better one). Without `save_last`, the next save of this callback deletes that file once the
        newer checkpoint is durable. Nothing is written when `last` already holds this position.
        On failure this callback's state is unchanged and the error (e.g. `StorageError`) propagates.
        """
        position = session.position(trainer)
        if self.save_last and self.last_model_path and position == self._last_position:
            return Path(self.last_model_path)
        previous = self.state_dict()
        last = self._last_path()
        self.last_model_path, self._last_position = str(last), position
        try:
            ckpt_api.save_checkpoint(session.capture(trainer), last)
        except BaseException:
            self.load_state_dict(previous)
            raise
        self._say(trainer, f"saved {last}")
        return last

    def _score(self, trainer: Trainer, at_epoch_end: bool) -> float | None:
        if self.monitor is None:
            return None
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if at_epoch_end and (trainer.val_loader is None or trainer.validation_runs > 0):
                raise ConfigurationError(
                    f"ModelCheckpoint(monitor={self.monitor!r}): {self.monitor!r} was never logged; logged metrics: "
                    f"{sorted(trainer.callback_metrics)}. Log it with self.log({self.monitor!r}, ...) or fix monitor="
                )
            return None
        return float(value)

    def _target_path(self, trainer: Trainer) -> Path:
        assert self.dirpath is not None
        if self.fixed_name and self.save_top_k == 1:
            name = self.fixed_name
        else:
            stem = Path(self.fixed_name).stem + "-" if self.fixed_name else ""
            name = stem + self._format_name(self.filename or "{epoch}-{step}", trainer) + ".ckpt"
        return self._unclaimed(self.dirpath / name)

    def _format_name(self, template: str, trainer: Trainer) -> str:
        values: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                                  "batch": trainer.batch_in_epoch}
        values.update({k: float(v) for k, v in trainer.callback_metrics.items()})

        def field(match: re.Match[str]) -> str:
            name, spec = match.group(1), (match.group(2) or ":")[1:]
            if name not in values:
                raise ConfigurationError(f"checkpoint filename {template!r} uses {{{name}}}, which is not a logged "
                                         f"metric (logged: {sorted(values)})")
            return f"{name}={format(values[name], spec)}"

        return _TEMPLATE_FIELD.sub(field, template).replace(os.sep, "_")

    def _unclaimed(self, path: Path) -> Path:
        """`path`, or `path-vN` when a file of that name exists that this callback did not write."""
        ours = (set(self.kept) | {self.last_model_path}) - self._foreign
        candidate, n = path, 0
        while candidate.exists() and str(candidate) not in ours:
            n += 1
            candidate = path.with_name(f"{path.stem}-v{n}{path.suffix}")
        return candidate

    def _last_path(self) -> Path:
        assert self.dirpath is not None
        if self.last_model_path:
            return Path(self.last_model_path)
        return self._unclaimed(self.dirpath / "last.ckpt")

    def _update_best(self) -> None:
        if isinstance(self.retention, KeepBest):
            best = self.retention.best(self.kept)
        else:
            best = max(self.kept, key=self.kept.__getitem__) if self.kept else None
        self.best_model_path = best or ""
        self.best_model_score = torch.tensor(self.kept[best]) if best and self.monitor else None

    def _seconds_since_save(self) -> float:
        return self._clock_offset + time.monotonic() - self._clock_start

    # --- messages --------------------------------------------------------------------------------
    def _say(self, trainer: Trainer, message: str) -> None:
        if self.verbose:
            print(f"Epoch {trainer.current_epoch}, step {trainer.global_step}: {message}", flush=True)

    def _skip_message(self, score: float | None, decision: Any) -> str:
        if score is None and self.monitor:
            return f"{self.monitor} not logged yet; not saved"
        return f"{self.monitor}={score:.6g} {decision.reason}; not saved" if self.monitor else "not saved"

    def _saved_message(self, score: float | None, decision: Any, target: Path | None, last: Path | None,
                       previous: dict[str, Any]) -> str:
        parts = []
        if self.monitor and score is not None:
            old = previous.get("best_model_score")
            if target is not None:
                was = "none" if old is None else f"{old:.6g}"
                parts.append(f"{self.monitor}={score:.6g} (best was {was}, now {float(self.best_model_score):.6g}); "
                             f"saved {target}")
            else:
                parts.append(f"{self.monitor}={score:.6g} {decision.reason}; not kept as a best")
        elif target is not None:
            parts.append(f"saved {target}")
        if last is not None:
            parts.append(f"saved {last}")
        return "; ".join(parts)

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor, "mode": self.mode,
            "kept": dict(self.kept),
            "best_model_path": self.best_model_path,
            "best_model_score": None if self.best_model_score is None else float(self.best_model_score),
            "last_model_path": self.last_model_path,
            "dirpath": str(self.dirpath) if self.dirpath else None,
            "last_position": list(self._last_position) if self._last_position else None,
            "saves": self._saves,
            "seconds_since_save": self._seconds_since_save(),
            "evicting": list(self._evicting),
            "foreign": sorted(self._foreign),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("monitor") != self.monitor or state.get("mode") != self.mode:
            raise ConfigurationError(
                f"this checkpoint's ModelCheckpoint monitored {state.get('monitor')!r} ({state.get('mode')}); "
                f"this one monitors {self.monitor!r} ({self.mode}): best scores would be compared wrongly"
            )
        self.kept = {str(k): float(v) for k, v in state["kept"].items()}
        self.best_model_path = state["best_model_path"]
        score = state["best_model_score"]
        self.best_model_score = None if score is None or (isinstance(score, float) and math.isnan(score)) \
            else torch.tensor(score)
        self.last_model_path = state["last_model_path"]
        self._last_position = tuple(state["last_position"]) if state["last_position"] else None
        self._saves = int(state["saves"])
        self._clock_offset, self._clock_start = float(state["seconds_since_save"]), time.monotonic()
        self._evicting = [str(p) for p in state.get("evicting", [])]  # absent from checkpoints of 0.1.0
        self._foreign = {str(p) for p in state.get("foreign", [])}


def _delete_quietly(path: Path) -> None:
    """Best effort: the caller is already raising or warning about a failed save."""
    try:
        ckpt_api.delete_checkpoint(path)
    except StorageError:
        pass
