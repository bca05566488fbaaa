"""`Trainer`: the fit loop, its counters, and the calls to callbacks.

From the loop to bytes on disk: `Trainer.save_checkpoint` → `checkpoint.session.capture`
→ `checkpoint.api.save_checkpoint` → `Storage.write_atomic`.
"""

from __future__ import annotations

import itertools
import os
import secrets
from typing import Any, Iterable, Iterator

import torch

from . import preemption
from .callbacks.base import Callback, StopTraining
from .callbacks.checkpoint import ModelCheckpoint
from .callbacks.progress import ProgressBar
from .checkpoint import api as ckpt_api
from .checkpoint import session
from .config import TrainerConfig, limited_batches
from .data import ResumableLoader
from .errors import ConfigurationError
from .experiment import Experiment
from .lock import RunLock
from .metrics import MetricStore, infer_batch_size
from .module import Module
from .optim import SchedulerConfig, parse_optimizers
from .precision import Precision, resolve_device
from .rng import seed_everything
from .steps import StepRunner, move_to_device

__all__ = ["Trainer"]


class Trainer:
    """Runs a `Module`'s training: epochs, steps, validation, callbacks and checkpoints.

    Arguments (all keyword): `max_epochs`, `max_steps`, `limit_train_batches`,
    `limit_val_batches`, `check_val_every_n_epoch`, `val_check_interval`,
    `accumulate_grad_batches`, `gradient_clip_val`, `gradient_clip_algorithm`, `precision`
    ("32", "bf16-mixed", "16-mixed"), `accelerator` ("cpu", "cuda", "auto"), `seed`,
    `enable_progress_bar`, `enable_checkpointing`, `log_every_n_steps`, `default_root_dir`
    (see `TrainerConfig`), plus `callbacks`, `experiment` (an `Experiment`; by default a new
    version under `default_root_dir`) and `checkpoint_callback` (a `ModelCheckpoint`, or
    `False` for none; by default one that keeps the last state in the run's `checkpoints/`).

    Reliability (docs/reliability.md): `preemption_signals` (default SIGTERM, SIGUSR1, SIGINT;
    `()` for none) make `fit` finish the current step, save, and exit with 128 + the signal
    number; a second Ctrl-C raises KeyboardInterrupt at once. `emergency_checkpoint` (default
    True) saves when training raises between two steps. `on_save_error` ("raise" or "warn")
    says whether a checkpoint the disk refused stops training. While `fit` runs, the run folder
    is locked: a second trainer on it gets `RunLockedError`.
    """

    def __init__(self, *, callbacks: Iterable[Callback] | None = None, experiment: Experiment | None = None,
                 checkpoint_callback: ModelCheckpoint | bool = True, **config: Any) -> None:
        try:
            self.config = TrainerConfig(**config)
        except TypeError as err:
            raise ConfigurationError(f"Trainer: {err}; see help(resumable.Trainer) for the arguments") from err
        if experiment is not None and not isinstance(experiment, Experiment):
            raise ConfigurationError(f"experiment must be a resumable.Experiment, got {type(experiment).__name__}")
        self.device = resolve_device(self.config.accelerator)
        self.precision = Precision(self.config.precision, self.device)
        self._experiment = experiment
        self.callbacks = _arrange_callbacks(list(callbacks or []), checkpoint_callback, self.config)
        self.global_step = 0
        self.current_epoch = 0
        self.batch_in_epoch = 0
        self.seed: int | None = self.config.seed
        self.should_stop = False
        self.epoch_finished = False  # True while on_train_epoch_end runs: a save then resumes at the next epoch
        self.validation_runs = 0
        self.metrics = MetricStore()
        self.model: Module | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.train_loader: ResumableLoader | None = None
        self.val_loader: ResumableLoader | None = None
        self.resumed_from: str | None = None
        self._resume_chosen = False  # resumed from a file the user named, not the run's newest (see ModelCheckpoint)
        self.resumed_from_run: str | None = None  # the run folder that wrote the checkpoint resumed from
        self._steps: StepRunner | None = None
        self._signals = preemption.SignalCatcher(self.config.preemption_signals)
        self._boundary = preemption.BoundaryRecorder()  # the last step boundary, for an emergency checkpoint

    # --- public views ------------------------------------------------------------------------
    @property
    def experiment(self) -> Experiment:
        """The run folder; created on first use (`default_root_dir/default/version_N`)."""
        if self._experiment is None:
            self._experiment = Experiment(save_dir=self.config.default_root_dir)
        return self._experiment

    @property
    def lr_schedulers(self) -> list[Any]:
        """The LR schedulers, in the order `configure_optimizers` gave them."""
        return [c.scheduler for c in self.lr_scheduler_configs]

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """The latest value of every logged metric, as 0-d tensors."""
        return self.metrics.callback_metrics

    @property
    def checkpoint_callbacks(self) -> list[ModelCheckpoint]:
        """Every `ModelCheckpoint` of this trainer, in order."""
        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> ModelCheckpoint | None:
        """The first `ModelCheckpoint` (the seed's `checkpoint_callback`), or None."""
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def num_training_batches(self) -> int | float:
        """Training batches per epoch after `limit_train_batches` (`inf` for an unsized iterable)."""
        assert self.train_loader is not None
        return limited_batches(self.train_loader.num_batches, self.config.limit_train_batches)

    def last_loss_value(self) -> float | None:
        """The last training loss as a float (synchronises the device: call rarely)."""
        return self._steps.last_loss_value() if self._steps else None

    def state_dict(self) -> dict[str, Any]:
        """The loop's own position and counters: a checkpoint's `"trainer"` entry (the rest comes
        from the model, optimizers, callbacks, loader, metrics and RNGs: see `checkpoint.session`)."""
        return {"seed": self.seed, "global_step": self.global_step, "current_epoch": self.current_epoch,
                "batch_in_epoch": self.batch_in_epoch, "epoch_finished": self.epoch_finished,
                "validation_runs": self.validation_runs, "metric_rows": self.experiment.metric_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`: a finished epoch resumes at the start of the next one, and rows
        logged to `metrics.csv` after the save (by a run that then died) are dropped."""
        self.seed = int(state["seed"])
        self.global_step = int(state["global_step"])
        self.current_epoch = int(state["current_epoch"]) + (1 if state["epoch_finished"] else 0)
        self.batch_in_epoch = 0 if state["epoch_finished"] else int(state["batch_in_epoch"])
        self.validation_runs = int(state["validation_runs"])
        self.experiment.truncate_metrics(int(state["metric_rows"]))

    # --- fit ---------------------------------------------------------------------------------
    def fit(self, model: Module, train_dataloaders: Any = None, val_dataloaders: Any = None,
            ckpt_path: str | os.PathLike[str] | None = None) -> None:
        """Train `model`, resuming from `ckpt_path` ("last", "best" or a path) or, when not given,
        from the newest valid checkpoint of this trainer's experiment, if it has one.

        Holds the run folder's lock throughout (`RunLockedError` if another process has it). On a
        stop signal it saves at the next step boundary, calls the `on_exception` hooks with the
        `SystemExit(128 + signum)` it then raises (a signal after the last step: once `fit` is done).
        """
        train_data, val_data = self._attach(model, train_dataloaders, val_dataloaders)
        with RunLock(self.experiment.path), self._signals:
            self._fit(train_data, val_data, ckpt_path)

    def _fit(self, train_data: Any, val_data: Any, ckpt_path: str | os.PathLike[str] | None) -> None:
        ckpt_api.clean_temporaries(self)  # no writer of this run is alive now: its temporaries are debris
        checkpoint, where = ckpt_api.find_resume_checkpoint(self, ckpt_path)
        self.seed = int(checkpoint["trainer"]["seed"]) if checkpoint else (
            self.config.seed if self.config.seed is not None else secrets.randbits(63))
        if checkpoint is None and self.config.seed is not None:
            seed_everything(self.seed)
        self.train_loader = ResumableLoader(train_data, seed=self.seed)
        self.val_loader = ResumableLoader(val_data, seed=self.seed) if val_data is not None else None
        self._check_val_interval()
        if checkpoint is not None:
            session.restore(self, checkpoint)
            self.resumed_from = where
            self._resume_chosen = ckpt_path not in (None, "last")
            self.resumed_from_run = (checkpoint.get("summary") or {}).get("run_dir")
        else:
            if self.global_step == 0 and self.experiment.metric_rows:
                self.experiment.truncate_metrics(0)  # logged by an attempt killed before its first checkpoint
            self.experiment.tag(self.model.hparams)
        try:
            self._call("on_fit_start")
            while not self._finished():
                self._run_epoch()
            self._call("on_fit_end")
        except StopTraining:
            self._call("on_fit_end")
        except BaseException as exception:
            preemption.save_after_exception(self, exception)
            self._call("on_exception", exception)
            raise
        finally:
            self._boundary.clear()
            self.experiment.close()
        if self._signals.requested is not None:
            preemption.stop(self, self._signals.requested)  # asked after the last step's check

    def _run_epoch(self) -> None:
        model, loader, steps = self.model, self.train_loader, self._steps
        assert model is not None and loader is not None and steps is not None
        if self.batch_in_epoch == 0:
            self._call("on_train_epoch_start")
        model.train()
        self.metrics.stage = "train"
        last = self.num_training_batches
        for batch_idx, batch in _first(loader.iter_epoch(self.current_epoch, start_batch=self.batch_in_epoch),
                                       last - self.batch_in_epoch):
            if self.device.type != "cpu":  # on the CPU, batches are where they belong
                batch = move_to_device(batch, self.device)
            self._boundary.clear()
            self._call("on_train_batch_start", batch, batch_idx)
            outputs = steps.run_batch(batch, batch_idx, window_end=_window_end(batch_idx, last, self.config))
            self.batch_in_epoch = batch_idx + 1
            if self._validation_due(batch_idx):
                self._run_validation()
            self._call("on_train_batch_end", outputs, batch, batch_idx)
            outputs = None  # not kept alive through the next forward (think of an LLM's logits)
            self._boundary.record(self)
            if self._signals.requested is not None:
                preemption.stop(self, self._signals.requested)
            if self._max_steps_reached() or self.should_stop:
                if self.batch_in_epoch < last:
                    return  # stopped mid-epoch: no end-of-epoch work
                break
        self._boundary.clear()
        steps.finish_epoch()
        if self._epoch_validation_due():
            self._run_validation()
        self._log_row(self.metrics.pop_epoch_row("train"))
        steps.step_schedulers("epoch")
        self.epoch_finished = True
        self._call("on_train_epoch_end")
        self.current_epoch += 1
        self.batch_in_epoch = 0
        self.epoch_finished = False

    # --- validation --------------------------------------------------------------------------
    def validate(self, model: Module, dataloaders: Any = None) -> dict[str, float]:
        """Run validation alone and return its averaged metrics."""
        _, val_data = self._attach(model, None, dataloaders, need_train=False)
        if val_data is None:
            raise ConfigurationError("validate() needs validation data: pass dataloaders= or define val_dataloader()")
        self.val_loader = ResumableLoader(val_data, seed=self.seed or 0)
        try:
            return self._run_validation()
        finally:
            self.experiment.close()

    def _run_validation(self) -> dict[str, float]:
        model, loader = self.model, self.val_loader
        assert model is not None
        if loader is None:
            return {}
        self._call("on_validation_start")
        was_training = model.training
        model.eval()
        self.metrics.stage = "val"
        limit = limited_batches(loader.num_batches, self.config.limit_val_batches)
        with torch.no_grad():
            for batch_idx, batch in _first(loader.iter_epoch(0), limit):
                batch = move_to_device(batch, self.device)
                self.metrics.batch_size = infer_batch_size(batch)
                with self.precision.autocast():
                    model.validation_step(batch, batch_idx)
        self.metrics.batch_size = None
        model.on_validation_epoch_end()
        row = self.metrics.pop_epoch_row("val")
        self.validation_runs += 1
        self._log_row(row)
        self.metrics.stage = "train"
        model.train(was_training)
        self._call("on_validation_end")
        return row

    def _validation_due(self, batch_idx: int) -> bool:
        interval = self.config.val_check_interval
        if self.val_loader is None or interval is None or not self._epoch_has_validation():
            return False
        every = interval if isinstance(interval, int) else max(1, int(self.num_training_batches * interval))
        return (batch_idx + 1) % every == 0

    def _epoch_validation_due(self) -> bool:
        if self.val_loader is None or not self._epoch_has_validation():
            return False
        return not self._validation_due(self.batch_in_epoch - 1) if self.batch_in_epoch else True

    def _epoch_has_validation(self) -> bool:
        every = self.config.check_val_every_n_epoch
        if every is None:
            return self.config.val_check_interval is not None
        return (self.current_epoch + 1) % every == 0

    def _check_val_interval(self) -> None:
        interval = self.config.val_check_interval
        if isinstance(interval, float) and self.num_training_batches == float("inf"):
            raise ConfigurationError(
                "val_check_interval as a fraction needs a training loader with a length; "
                "give an int (validate every n batches) instead"
            )

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False) -> None:
        """Write a checkpoint of the current state to `filepath`, atomically."""
        ckpt_api.save_checkpoint(session.capture(self, weights_only=weights_only), filepath)

    # --- plumbing ----------------------------------------------------------------------------
    def _attach(self, model: Module, train: Any, val: Any, need_train: bool = True) -> tuple[Any, Any]:
        if not isinstance(model, Module):
            raise ConfigurationError(
                f"Trainer needs a resumable.Module, got {type(model).__module__}.{type(model).__qualname__}; "
                "subclass resumable.Module instead of torch.nn.Module"
            )
        self.model = model
        model._trainer = self
        model.to(self.device)
        train = train if train is not None else model.train_dataloader()
        val = val if val is not None else model.val_dataloader()
        if need_train and train is None:
            raise ConfigurationError(
                "no training data: pass fit(model, train_dataloaders=...) or define train_dataloader() in "
                f"{type(model).__name__}"
            )
        if need_train:
            self.optimizers, self.lr_scheduler_configs = parse_optimizers(model.configure_optimizers())
            self._steps = StepRunner(self)
        return train, val

    def _finished(self) -> bool:
        epochs = self.config.max_epochs
        return self.should_stop or self._max_steps_reached() or (epochs != -1 and self.current_epoch >= epochs)

    def _max_steps_reached(self) -> bool:
        return self.config.max_steps != -1 and self.global_step >= self.config.max_steps

    def _log_row(self, row: dict[str, float]) -> None:
        if row:
            self.experiment.log(row, step=self.global_step, epoch=self.current_epoch)

    def _call(self, hook: str, *args: Any) -> None:
        if hook in _MODULE_HOOKS:
            getattr(self.model, hook)()
        for callback in self.callbacks:
            getattr(callback, hook)(self, self.model, *args)


_MODULE_HOOKS = {"on_fit_start", "on_fit_end", "on_train_epoch_start", "on_train_epoch_end"}


def _arrange_callbacks(callbacks: list[Callback], checkpoint_callback: ModelCheckpoint | bool,
                       config: TrainerConfig) -> list[Callback]:
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise ConfigurationError(f"callbacks must be resumable.Callback instances, got {type(cb).__name__}")
    if isinstance(checkpoint_callback, ModelCheckpoint) and checkpoint_callback not in callbacks:
        callbacks.append(checkpoint_callback)
    elif not isinstance(checkpoint_callback, bool):
        raise ConfigurationError(
            f"checkpoint_callback must be a ModelCheckpoint, True or False, got {type(checkpoint_callback).__name__}"
        )
    checkpoints = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    if not checkpoints and checkpoint_callback is not False and config.enable_checkpointing:
        checkpoints = [ModelCheckpoint(save_last=True, save_top_k=0)]  # one `last.ckpt` in the run folder
    keys = [cb.state_key for cb in callbacks if not isinstance(cb, ModelCheckpoint)] + [c.state_key for c in checkpoints]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigurationError(
            f"two callbacks share the state key(s) {duplicates}: their checkpoint state would collide; "
            "give them different settings or override state_key"
        )
    others = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
    if config.enable_progress_bar and not any(isinstance(cb, ProgressBar) for cb in others):
        others.append(ProgressBar())
    return others + checkpoints  # checkpoints last: they save the state the other callbacks just updated


def _first(batches: Iterator[tuple[int, Any]], count: int | float) -> Iterator[tuple[int, Any]]:
    """The first `count` items, without fetching one more (a fetch can load data or move a stream on)."""
    return batches if count == float("inf") else itertools.islice(batches, max(0, int(count)))


def _window_end(batch_idx: int, last: int | float, config: TrainerConfig) -> bool:
    return (batch_idx + 1) % config.accumulate_grad_batches == 0 or batch_idx + 1 == last
