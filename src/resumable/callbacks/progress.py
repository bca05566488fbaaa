"""`ProgressBar`: epoch, step, loss and speed on a terminal; one line per epoch elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from .base import Callback

if TYPE_CHECKING:
    from ..module import Module
    from ..trainer import Trainer

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """A tqdm bar per epoch when `stream` is a terminal; otherwise a single summary line per epoch.

    Reading the loss synchronises the device, so it is read at most every `refresh_seconds`.
    """

    def __init__(self, stream: TextIO | None = None, refresh_seconds: float = 0.25) -> None:
        self.stream = stream
        self.refresh_seconds = refresh_seconds
        self._bar: Any = None
        self._last_refresh = 0.0
        self._epoch_start = 0.0
        self._batches = 0
        self._loss: float | None = None

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def _interactive(self) -> bool:
        return bool(getattr(self._out, "isatty", lambda: False)())

    def on_train_epoch_start(self, trainer: Trainer, module: Module) -> None:
        self._start_epoch(trainer)

    def on_fit_start(self, trainer: Trainer, module: Module) -> None:
        if trainer.batch_in_epoch:  # resumed mid-epoch: on_train_epoch_start is not called again
            self._start_epoch(trainer)

    def _start_epoch(self, trainer: Trainer) -> None:
        self._epoch_start = time.perf_counter()
        self._batches = 0
        if self._interactive():
            from tqdm.auto import tqdm

            total = trainer.num_training_batches
            self._bar = tqdm(total=total, initial=trainer.batch_in_epoch, desc=f"Epoch {trainer.current_epoch}",
                             file=self._out, dynamic_ncols=True, leave=True, unit="batch")

    def on_train_batch_end(self, trainer: Trainer, module: Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batches += 1
        now = time.perf_counter()
        if now - self._last_refresh < self.refresh_seconds:
            if self._bar is not None:
                self._bar.update(1)
            return
        self._last_refresh = now
        self._loss = trainer.last_loss_value()
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(trainer), refresh=False)
            self._bar.update(1)

    def _postfix(self, trainer: Trainer) -> dict[str, Any]:
        postfix: dict[str, Any] = {"step": trainer.global_step}
        if self._loss is not None:
            postfix["loss"] = f"{self._loss:.4g}"
        postfix.update({k: f"{v:.4g}" for k, v in trainer.metrics.progress_bar_values().items()})
        return postfix

    def on_validation_end(self, trainer: Trainer, module: Module) -> None:
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(trainer))

    def on_train_epoch_end(self, trainer: Trainer, module: Module) -> None:
        self._finish(trainer)

    def on_fit_end(self, trainer: Trainer, module: Module) -> None:
        self._finish(trainer)

    def on_exception(self, trainer: Trainer, module: Module, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _finish(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(trainer))
            self._bar.close()
            self._bar = None
            return
        if self._batches == 0:
            return
        self._loss = trainer.last_loss_value()
        seconds = max(time.perf_counter() - self._epoch_start, 1e-9)
        parts = [f"epoch {trainer.current_epoch}", f"step {trainer.global_step}"]
        parts += [f"{k}={v}" for k, v in self._postfix(trainer).items() if k != "step"]
        parts.append(f"{self._batches / seconds:.1f} batch/s")
        print(" | ".join(parts), file=self._out, flush=True)
        self._batches = 0
