"""`Module`: the user's model, its training hooks, and its hyperparameters."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["Module", "AttributeDict"]


class AttributeDict(dict):
    """A dict whose keys are also attributes: `hparams.lr` and `hparams["lr"]`."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"no hyperparameter {key!r}; known: {sorted(self)}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class Module(nn.Module):
    """A `torch.nn.Module` that knows how to train itself under a `Trainer`.

    Override `training_step` and `configure_optimizers` (required), and as needed
    `validation_step`, `train_dataloader`, `val_dataloader` and the `on_*` hooks.
    Inside any hook, `self.trainer`, `self.global_step` and `self.current_epoch` (the epoch
    being run, counted from 0) describe where the run is.
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: Trainer | None = None
        self.hparams = AttributeDict()

    # --- where the run is -------------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        """The `Trainer` running this module; an error outside `fit`/`validate`."""
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer; call trainer.fit(model) first")
        return self._trainer

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (0 outside a run)."""
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def current_epoch(self) -> int:
        """The epoch being run, counted from 0 (0 outside a run)."""
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (CPU for a module without parameters)."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # --- hyperparameters --------------------------------------------------------------------
    def save_hyperparameters(self, *names: str, ignore: list[str] | str | None = None) -> None:
        """Record the arguments of the `__init__`s that built `self` into `self.hparams`.

        The arguments of a subclass's `__init__` and of its parents' (as far as they are running
        on `self`) are merged, the subclass's winning.

        With `names`, only those arguments are kept; `ignore` drops some (e.g. a large tensor).
        The trainer writes them into the run folder and every checkpoint, and
        `load_from_checkpoint` rebuilds the model from them. Values must be plain data
        (numbers, strings, lists, dicts, tuples, Paths, enums, dataclasses).
        """
        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None
        # Every __init__ running on self, parent's first: a subclass's arguments override its parent's.
        caller, inits = frame.f_back, []
        while caller is not None and caller.f_code.co_name == "__init__" and caller.f_locals.get("self") is self:
            inits.append(caller)
            caller = caller.f_back
        init_args: dict[str, Any] = {}
        try:
            for init in inits:
                init_args.update(_frame_arguments(init))
        finally:
            del frame, caller, inits
        if names:
            unknown = [n for n in names if n not in init_args]
            if unknown:
                raise ConfigurationError(
                    f"save_hyperparameters({', '.join(map(repr, names))}): {unknown} are not arguments of "
                    f"__init__ (its arguments are {sorted(init_args)})"
                )
            init_args = {n: init_args[n] for n in names}
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        self.hparams.update({k: v for k, v in init_args.items() if k not in ignored})

    # --- logging ----------------------------------------------------------------------------
    def log(
        self,
        name: str,
        value: torch.Tensor | float | int,
        *,
        prog_bar: bool = False,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Log a scalar metric.

        Cheap: a tensor is kept on its device (no synchronisation); values are reduced only when
        they are written. In `training_step` the default is per step (`on_step=True`); in
        `validation_step` the value is averaged over the validation epoch (weighted by
        `batch_size` when given). `on_epoch=True` in training also averages over the epoch and
        logs it as `<name>_epoch`. Logged values appear in `trainer.callback_metrics`.
        """
        self.trainer.metrics.log(name, value, prog_bar=prog_bar, on_step=on_step, on_epoch=on_epoch,
                                 batch_size=batch_size)

    def log_dict(self, metrics: Mapping[str, torch.Tensor | float | int], **kwargs: Any) -> None:
        """`log` every item of `metrics` with the same options."""
        for name, value in metrics.items():
            self.log(name, value, **kwargs)

    # --- hooks the user overrides -----------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int, *args: Any) -> torch.Tensor | Mapping[str, Any] | None:
        """Compute the loss of one batch: a scalar tensor, or a dict with a `"loss"` tensor.

        Return `None` to skip the batch (no backward, no optimizer step for it). With several
        optimizers it is called once per optimizer as `training_step(batch, batch_idx, optimizer_idx)`.
        """
        raise ConfigurationError(f"{type(self).__name__} must define training_step(self, batch, batch_idx)")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        """Evaluate one validation batch; `self.log(...)` what you measure."""
        return None

    def configure_optimizers(self) -> Any:
        """Return the optimizer(s) and learning-rate scheduler(s); see `resumable.optim`."""
        raise ConfigurationError(f"{type(self).__name__} must define configure_optimizers(self)")

    def train_dataloader(self) -> Any:
        """The training batches (a `DataLoader`), unless they are passed to `fit`."""
        return None

    def val_dataloader(self) -> Any:
        """The validation batches (a `DataLoader`), unless they are passed to `fit`."""
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add entries to a checkpoint about to be saved (plain data and tensors only)."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read back what `on_save_checkpoint` added, before the trainer restores the rest."""

    def on_fit_start(self) -> None:
        """Called once when `fit` starts, after a checkpoint (if any) was restored."""

    def on_fit_end(self) -> None:
        """Called once when `fit` ends normally."""

    def on_train_epoch_start(self) -> None:
        """Called at the start of each training epoch (not again when resuming mid-epoch)."""

    def on_train_epoch_end(self) -> None:
        """Called at the end of each training epoch, after its validation."""

    def on_validation_epoch_end(self) -> None:
        """Called after all validation batches of one validation run."""

    # --- rebuilding from a checkpoint -------------------------------------------------------
    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike[str],
        *,
        map_location: str | torch.device | None = None,
        strict: bool = True,
        **overrides: Any,
    ) -> "Module":
        """Build a model from a checkpoint's saved hyperparameters (with `overrides`) and load its weights.

        The model is returned in eval mode, on `map_location` (default: CPU). With `strict=False`
        the weights that fit are loaded and the rest reported in a warning.
        """
        from .checkpoint.session import load_model_weights
        from .checkpoint.api import load_checkpoint

        checkpoint = load_checkpoint(checkpoint_path)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.update(overrides)
        accepted = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
            hparams = {k: v for k, v in hparams.items() if k in accepted}  # a parent's, not cls's
        try:
            model = cls(**hparams)
        except TypeError as err:
            raise ConfigurationError(
                f"cannot build {cls.__name__} from the hyperparameters saved in {checkpoint_path} "
                f"({sorted(hparams)}): {err}. Pass the missing ones as keyword arguments to load_from_checkpoint"
            ) from err
        model.on_load_checkpoint(checkpoint)
        load_model_weights(model, checkpoint["state_dict"], strict=strict, source=str(checkpoint_path))
        if map_location is not None:
            model.to(map_location)
        return model.eval()


def _frame_arguments(frame: Any) -> dict[str, Any]:
    """The named arguments (and **kwargs) of the function running in `frame`, minus `self`/`__class__`."""
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:count])
    local = frame.f_locals
    args = {n: local[n] for n in names if n in local and n not in ("self", "__class__")}
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kwargs_name = code.co_varnames[count + (1 if code.co_flags & inspect.CO_VARARGS else 0)]
        args.update(local.get(kwargs_name) or {})
    return args
