"""When to save and what to keep: small policies with one method each, and no file access.

`ModelCheckpoint` composes them: a `SaveSchedule` says whether an event is a save point, and a
retention policy (`KeepBest` by a metric, or `KeepNewest`) says whether the new checkpoint
enters the kept set and which old ones leave it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from ..errors import ConfigurationError

__all__ = ["SaveSchedule", "KeepBest", "KeepNewest", "Decision"]


@dataclass(frozen=True)
class Decision:
    """What to do with a new checkpoint: write it or not, which kept paths to delete, and why."""

    save: bool
    evict: tuple[str, ...] = ()
    reason: str = ""


@dataclass
class SaveSchedule:
    """Save every `every_n_train_steps` optimizer steps, every `every_n_epochs` epochs, and/or every
    `train_time_interval` of training time. 0/None switch a trigger off."""

    every_n_train_steps: int = 0
    every_n_epochs: int = 1
    train_time_interval: timedelta | None = None

    def __post_init__(self) -> None:
        for name in ("every_n_train_steps", "every_n_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be an int >= 0, got {value!r}")
        if self.train_time_interval is not None and (
            not isinstance(self.train_time_interval, timedelta) or self.train_time_interval <= timedelta(0)
        ):
            raise ConfigurationError(
                f"train_time_interval must be a positive datetime.timedelta, got {self.train_time_interval!r}"
            )

    def step_due(self, global_step: int, last_saved_step: int | None, seconds_since_save: float) -> bool:
        """Is the end of this batch a save point? Step saves come once per optimizer step (not on
        every batch of an accumulation window); the time trigger fires on any batch."""
        if (self.every_n_train_steps and global_step > 0 and global_step != last_saved_step
                and global_step % self.every_n_train_steps == 0):
            return True
        interval = self.train_time_interval
        return interval is not None and seconds_since_save >= interval.total_seconds()

    def epoch_due(self, epoch: int) -> bool:
        """Is the end of `epoch` (counted from 0) a save point?"""
        return bool(self.every_n_epochs) and (epoch + 1) % self.every_n_epochs == 0


@dataclass
class KeepBest:
    """Keep the `k` best checkpoints by a metric (`k=-1`: all). NaN and inf are never best."""

    k: int
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigurationError(f"mode must be 'min' or 'max', got {self.mode!r}")

    def better(self, a: float, b: float) -> bool:
        """Is score `a` strictly better than `b`?"""
        return a < b if self.mode == "min" else a > b

    def decide(self, kept: dict[str, float], score: float, new_path: str) -> Decision:
        """Whether `score` (for `new_path`) enters the kept set, and which paths it pushes out."""
        if self.k == 0:
            return Decision(False, reason="save_top_k=0")
        if not math.isfinite(score):
            return Decision(False, reason=f"{score} is not finite, so it is never a best")
        # `new_path` may already be kept (a fixed file name such as `weights.ckpt`): it then competes
        # with its own previous content, and is overwritten rather than evicted.
        if self.k == -1 or (len(kept) < self.k and new_path not in kept):
            return Decision(True, reason=f"top {self.k} not full" if self.k != -1 else "save_top_k=-1 keeps all")
        ranked = sorted(kept, key=lambda p: kept[p], reverse=self.mode == "max")
        worst = kept[ranked[-1]]
        if not self.better(score, worst):
            return Decision(False, reason=f"not better than the worst kept ({worst:.6g}) of the top {self.k}")
        evict = tuple(p for p in ranked[self.k - 1:] if p != new_path)
        return Decision(True, evict=evict, reason=f"better than {worst:.6g}")

    def best(self, kept: dict[str, float]) -> str | None:
        """The path of the best kept checkpoint."""
        if not kept:
            return None
        return (min if self.mode == "min" else max)(kept, key=lambda p: kept[p])


@dataclass
class KeepNewest:
    """Keep the `k` newest checkpoints (`k=-1`: all) — retention when nothing is monitored."""

    k: int

    def decide(self, kept: list[str], new_path: str) -> Decision:
        """The new checkpoint is always saved; the oldest beyond `k` leave."""
        if self.k == 0:
            return Decision(False, reason="save_top_k=0")
        others = [p for p in kept if p != new_path]
        if self.k == -1:
            return Decision(True, reason="save_top_k=-1 keeps all")
        return Decision(True, evict=tuple(others[: max(0, len(others) - (self.k - 1))]), reason="newest")
