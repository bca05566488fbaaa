"""`Callback`: code that runs at fixed points of the loop, with state that travels in checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..module import Module
    from ..trainer import Trainer

__all__ = ["Callback", "StopTraining"]


class StopTraining(Exception):
    """Raise from a hook to end `fit` cleanly after the current step (early stopping)."""


class Callback:
    """Base class of callbacks. Override the hooks you need; each gets the trainer and the module.

    Hooks are called in the order the callbacks were given, once each, in this order per run::

        on_fit_start
          on_train_epoch_start                   (not on a mid-epoch resume)
            on_train_batch_start / on_train_batch_end      per batch
            on_validation_start / on_validation_end        when validation runs
          on_train_epoch_end
        on_fit_end                               (on_exception instead, when training raised)

    State that must survive a restart goes in `state_dict()`/`load_state_dict()`; it is saved
    under `state_key`, which must differ between two callbacks of one trainer.
    """

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint; override when two instances can coexist."""
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (plain data and tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def on_fit_start(self, trainer: Trainer, module: Module) -> None:
        """`fit` began (after restoring a checkpoint, if any)."""

    def on_fit_end(self, trainer: Trainer, module: Module) -> None:
        """`fit` finished without an exception."""

    def on_train_epoch_start(self, trainer: Trainer, module: Module) -> None:
        """A training epoch begins."""

    def on_train_epoch_end(self, trainer: Trainer, module: Module) -> None:
        """A training epoch ended (after its end-of-epoch validation and scheduler steps)."""

    def on_train_batch_start(self, trainer: Trainer, module: Module, batch: Any, batch_idx: int) -> None:
        """A training batch is about to run."""

    def on_train_batch_end(self, trainer: Trainer, module: Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """A training batch ran (and validation, if it was due after this batch)."""

    def on_validation_start(self, trainer: Trainer, module: Module) -> None:
        """Validation begins."""

    def on_validation_end(self, trainer: Trainer, module: Module) -> None:
        """Validation ended; its metrics are in `trainer.callback_metrics`."""

    def on_exception(self, trainer: Trainer, module: Module, exception: BaseException) -> None:
        """Training raised `exception` (it is re-raised after the hooks)."""
