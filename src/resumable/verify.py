"""`verify_resume`: does *this* run resume exactly? Train it straight through, train it again with a
stop and a resume, and report the first thing that differs, with what to do about it.

Each batch of each run is fingerprinted (`resumable.fingerprints`): at its start the batch and
every global random generator, at its end the generators again and every weight and optimizer
tensor. The records are compared in training order, so the report names the first cause, not its
echoes.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .callbacks.checkpoint import ModelCheckpoint
from .errors import ConfigurationError
from .experiment import Experiment
from .fingerprints import BatchRecord, Recorder, digest, max_abs_diff, optimizer_values
from .module import Module
from .rng import seed_everything
from .trainer import Trainer

__all__ = ["verify_resume", "ResumeReport", "Divergence"]

_RESERVED = ("max_steps", "experiment", "default_root_dir")


@dataclass(frozen=True)
class Divergence:
    """The first difference between the uninterrupted run and the stopped-and-resumed one.

    `kind` is one of "data", "random stream", "weights", "optimizer", "scheduler", "metrics",
    "progress". `epoch`, `batch_idx` and `step` (optimizer steps done before that batch) say
    where, when the difference belongs to a batch; `after_resume` is False when the two runs
    already differed before the stop (the run does not even repeat itself from its seed). `cause`
    is the diagnosis the report's advice is chosen by ("order", "content", "state", ...).
    """

    kind: str
    detail: str
    cause: str = field(default="", repr=False, compare=False)  # the key of the advice
    epoch: int | None = None
    batch_idx: int | None = None
    step: int | None = None
    after_resume: bool = True

    @property
    def where(self) -> str:
        """The position in words, e.g. "epoch 0, batch 5 (after 5 optimizer steps)"."""
        if self.batch_idx is None:
            return "at the end of training"
        return f"epoch {self.epoch}, batch {self.batch_idx} (after {self.step} optimizer steps)"


@dataclass(frozen=True)
class ResumeReport:
    """What `verify_resume` found: `exact`, or the `first_divergence` and `advice` on fixing it."""

    exact: bool
    stop_at_step: int
    total_steps: int
    first_divergence: Divergence | None = None
    advice: str = ""
    workdir: str | None = None

    def __str__(self) -> str:
        if self.exact:
            return (f"resume check: EXACT. A run stopped after step {self.stop_at_step} and resumed from its "
                    f"checkpoint matched an uninterrupted run of {self.total_steps} steps bit for bit: every "
                    "batch, every random generator, weights, optimizer and scheduler state, logged metrics.")
        d = self.first_divergence
        assert d is not None
        when = "after the resume" if d.after_resume else "BEFORE the stop (two runs from one seed already differ)"
        lines = [f"resume check: NOT EXACT (stopped after step {self.stop_at_step} of {self.total_steps}).",
                 f"first divergence: {d.kind}, {d.where}, {when}", f"  {d.detail}", f"what to do: {self.advice}"]
        if self.workdir:
            lines.append(f"run folders: {self.workdir}")
        return "\n".join(lines)


def verify_resume(model_factory: Callable[[], Module], *, stop_at_step: int, total_steps: int,
                  trainer_kwargs: dict[str, Any] | None = None, train_dataloaders: Any = None,
                  val_dataloaders: Any = None, workdir: str | Path | None = None, seed: int = 0) -> ResumeReport:
    """Train `total_steps` optimizer steps straight through; train again, stop right after step
    `stop_at_step` (its checkpoint written, the trainer and model discarded), build a fresh model and
    trainer, resume from that checkpoint; compare the two runs.

    Each run starts with `seed_everything(seed)` and then calls `model_factory()`, as a restarted
    script would. `trainer_kwargs` go to every `Trainer` (`seed` defaults to `seed`,
    `log_every_n_steps` to 1, `enable_progress_bar` to False; `max_steps`, `experiment` and
    `default_root_dir` are set here). Data comes from the model's `train_dataloader()` /
    `val_dataloader()`, or from `train_dataloaders` / `val_dataloaders`: a zero-argument function
    building the loader, called once per run, or a loader, deep-copied for each run so that no run
    sees another's state. Callbacks in `trainer_kwargs` are deep-copied per run too.

    Runs on the current device, in this process; run folders go to a new folder inside `workdir`
    (kept), or to a temporary folder (deleted). Raises ConfigurationError for bad arguments or when
    the run ends before `stop_at_step`. Never raises because the runs differ: that is the report.
    """
    if not (isinstance(stop_at_step, int) and isinstance(total_steps, int) and 0 < stop_at_step < total_steps):
        raise ConfigurationError(f"verify_resume needs 0 < stop_at_step < total_steps, got stop_at_step="
                                 f"{stop_at_step!r}, total_steps={total_steps!r}")
    kwargs = dict(trainer_kwargs or {})
    reserved = sorted(set(kwargs) & set(_RESERVED))
    if reserved:
        raise ConfigurationError(f"verify_resume sets {reserved} itself; leave them out of trainer_kwargs "
                                 "(total_steps is the run's length)")
    kwargs.setdefault("seed", seed)
    kwargs.setdefault("log_every_n_steps", 1)
    kwargs.setdefault("enable_progress_bar", False)
    plan = _Plan(model_factory, kwargs, train_dataloaders, val_dataloaders, seed, stop_at_step, total_steps)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return _verify(plan, Path(tempfile.mkdtemp(prefix="verify-resume-", dir=workdir)), keep=True)
    with tempfile.TemporaryDirectory(prefix="resumable-verify-") as tmp:
        return _verify(plan, Path(tmp), keep=False)


# --- the runs --------------------------------------------------------------------------------------
@dataclass
class _Plan:
    model_factory: Callable[[], Module]
    trainer_kwargs: dict[str, Any]
    train: Any
    val: Any
    seed: int
    stop: int
    total: int


@dataclass
class _Run:
    trainer: Trainer
    model: Module
    batches: list[BatchRecord]
    checkpoint: str = ""  # the `last.ckpt` written after step `stop_at_step`
    resumed_at: int | None = None  # index in `batches` of the first batch after the resume
    rng_at_resume: dict[str, str] | None = None


def _verify(plan: _Plan, folder: Path, keep: bool) -> ResumeReport:
    straight = _run(plan, Experiment(folder, name="straight", version=0), Recorder(keep_from_step=plan.stop),
                    interrupt=False)
    if straight.trainer.global_step <= plan.stop:
        raise ConfigurationError(f"the run ended after {straight.trainer.global_step} steps, before stop_at_step="
                                 f"{plan.stop}: give a smaller stop_at_step, or more data/epochs")
    stopped = _run(plan, Experiment(folder, name="resumed", version=0), Recorder(), interrupt=True)
    if stopped.trainer.global_step != plan.stop or not stopped.checkpoint:
        divergence = Divergence("progress", f"the second run ended after {stopped.trainer.global_step} steps "
                                f"without reaching stop_at_step={plan.stop}", "progress", after_resume=False)
        return _report(plan, divergence, folder, keep)
    recorder = Recorder(reference=straight.batches[len(stopped.batches):])
    resumed = _run(plan, Experiment(folder, name="resumed", version=0), recorder, interrupt=False,
                   ckpt_path=stopped.checkpoint)
    resumed.resumed_at = len(stopped.batches)
    resumed.batches = stopped.batches + resumed.batches
    return _report(plan, _first_divergence(straight, resumed), folder, keep)


def _run(plan: _Plan, experiment: Experiment, recorder: Recorder, interrupt: bool,
         ckpt_path: str | None = None) -> _Run:
    seed_everything(plan.seed)
    model = plan.model_factory()
    if not isinstance(model, Module):
        raise ConfigurationError(f"model_factory must return a resumable.Module, got {type(model).__name__}")
    train, val = _fresh(plan.train, "train_dataloaders"), _fresh(plan.val, "val_dataloaders")
    kwargs = {k: copy.deepcopy(v) if k in ("callbacks", "checkpoint_callback") else v
              for k, v in plan.trainer_kwargs.items()}
    stopper = _StopAfter(plan.stop, interrupt)
    kwargs["callbacks"] = [*kwargs.get("callbacks", ()), recorder, stopper]
    trainer = Trainer(max_steps=plan.total, experiment=experiment, **kwargs)
    try:
        trainer.fit(model, train, val, ckpt_path=ckpt_path)
    except _Interrupted:
        pass
    return _Run(trainer, model, recorder.batches, stopper.last_model_path, rng_at_resume=recorder.rng_at_resume)


def _fresh(loaders: Any, name: str) -> Any:
    if loaders is None:
        return None
    if callable(loaders):
        return loaders()
    try:
        return copy.deepcopy(loaders)
    except Exception as err:
        raise ConfigurationError(f"verify_resume could not copy {name} for a fresh run ({err}); pass a "
                                 "zero-argument function that builds the loader instead") from err


class _Interrupted(BaseException):
    """Ends the first part of the stopped run, as a crash would (no on_fit_end, no emergency save)."""


class _StopAfter(ModelCheckpoint):
    """Saves `last.ckpt` after step `stop`; with `interrupt`, ends `fit` right after that save."""

    def __init__(self, stop: int, interrupt: bool) -> None:
        super().__init__(every_n_train_steps=stop, save_top_k=0, save_last=True)
        self.stop, self.interrupt = stop, interrupt
        self._step_at_batch_start = -1

    def on_train_batch_start(self, trainer: Trainer, module: Module, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, module: Module, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if self.interrupt and trainer.global_step == self.stop != self._step_at_batch_start:
            raise _Interrupted


# --- comparing -------------------------------------------------------------------------------------
def _first_divergence(straight: _Run, resumed: _Run) -> Divergence | None:
    assert resumed.resumed_at is not None
    for index, (a, b) in enumerate(zip(straight.batches, resumed.batches)):
        after = index >= resumed.resumed_at
        if index == resumed.resumed_at and resumed.rng_at_resume != straight.batches[index - 1].rng_after:
            names = _differing(straight.batches[index - 1].rng_after, resumed.rng_at_resume or {})
            return Divergence("random stream", f"right after the restore, the {names} generator state is not the "
                              "one saved in the checkpoint", "random stream", a.epoch, a.batch_idx, a.step)
        found = _batch_divergence(a, b, straight.batches, after)
        if found is not None:
            return found
    if len(straight.batches) != len(resumed.batches):
        return Divergence("progress", f"the uninterrupted run trained {len(straight.batches)} batches, the resumed "
                          f"one {len(resumed.batches)} (stop and resume included)", "progress")
    return _final_divergence(straight, resumed)


def _batch_divergence(a: BatchRecord, b: BatchRecord, all_straight: list[BatchRecord], after: bool) -> Divergence | None:
    def found(kind: str, detail: str, cause: str) -> Divergence:
        cause = cause if after or cause == "progress" else "not reproducible"
        return Divergence(kind, detail, cause, a.epoch, a.batch_idx, a.step, after)

    if (a.epoch, a.batch_idx, a.step) != (b.epoch, b.batch_idx, b.step):
        return found("progress", f"the resumed run is at epoch {b.epoch}, batch {b.batch_idx} after {b.step} steps "
                     "here", "progress")
    if a.data != b.data:
        twin = next((s for s in all_straight if s.data == b.data), None)
        if twin is not None:
            return found("data", f"the batch is the uninterrupted run's batch of epoch {twin.epoch}, batch "
                         f"{twin.batch_idx}: samples are replayed or skipped (order)", "order")
        return found("data", "the batch holds different values (content), with the same random state before it: "
                     + ("the data draws from a random state the checkpoint does not hold" if after
                        else "the data is not a function of the seed"), "content")
    if a.rng_fetched != b.rng_fetched:
        return found("random stream", f"the same batch was loaded, but the {_differing(a.rng_fetched, b.rng_fetched)}"
                     " generator state after loading it differs", "random stream")
    for kind, x, y in (("weights", a.weights, b.weights), ("optimizer", a.optimizer, b.optimizer)):
        if x != y:
            named = [f"{k} (max abs difference {b.max_diffs[k]:.3g})" if k in b.max_diffs else k
                     for k in sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))]
            more = f" and {len(named) - 4} more" if len(named) > 4 else ""
            return found(kind, f"after this batch's step these differ: {', '.join(named[:4])}{more}; same batch "
                         "and random state before it", "state")
    if a.rng_after != b.rng_after:
        return found("random stream", f"the step drew differently from the {_differing(a.rng_after, b.rng_after)} "
                     "generator", "random stream")
    return None


def _final_divergence(straight: _Run, resumed: _Run) -> Divergence | None:
    ta, tb = straight.trainer, resumed.trainer
    weights = _tensor_differences(straight.model.state_dict(), resumed.model.state_dict())
    if weights:
        return Divergence("weights", f"final weights differ: {weights}", "end")
    optimizer = _tensor_differences(optimizer_values(ta, straight.model), optimizer_values(tb, resumed.model))
    if optimizer:
        return Divergence("optimizer", f"final optimizer state differs: {optimizer}", "end")
    for i, (sa, sb) in enumerate(zip(ta.lr_schedulers, tb.lr_schedulers)):
        if digest(sa.state_dict()) != digest(sb.state_dict()):
            return Divergence("scheduler", f"LR scheduler {i} ({type(sa).__name__}) ends in a different state", "end")
    rows_a, rows_b = ta.experiment.read_metrics(), tb.experiment.read_metrics()
    for row, (x, y) in enumerate(zip(rows_a, rows_b)):
        if x != y:
            columns = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            return Divergence("metrics", f"metrics.csv row {row + 1} (step {x.get('step')}) differs in {columns}: "
                              f"{ {k: x.get(k) for k in columns} } vs { {k: y.get(k) for k in columns} }", "end")
    if len(rows_a) != len(rows_b):
        return Divergence("metrics", f"metrics.csv has {len(rows_a)} rows uninterrupted, {len(rows_b)} resumed", "end")
    return None


def _differing(a: dict[str, Any], b: dict[str, Any]) -> str:
    names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _tensor_differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    parts = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if digest(x) == digest(y):
            continue
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
            parts.append(f"{name} (max abs difference {max_abs_diff(x, y):.3g})")
        else:
            parts.append(f"{name} ({x!r:.60} vs {y!r:.60})")
    return "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")


# --- the report ------------------------------------------------------------------------------------
_ADVICE = {
    "order": "The sample order is not restored. Use a DataLoader over a map-style dataset (the trainer then "
             "owns the order), give a custom sampler set_epoch(epoch) or state_dict()/load_state_dict(), and "
             "give an IterableDataset state_dict()/load_state_dict() (see docs/resume.md).",
    "content": "Your dataset or collate_fn draws from a random generator the checkpoint does not capture (a "
               "private np.random.default_rng(), random.Random() or torch.Generator made in __init__), or reads "
               "state that changes as it runs. Draw from the global generators (random, np.random, torch), which "
               "the trainer seeds and restores, or seed a private generator from the sample index and epoch, or "
               "give the dataset state_dict()/load_state_dict() (see docs/resume.md).",
    "not reproducible": "Two runs from the same seed already differ, so no resume can match: something is "
                        "seeded from outside the trainer's seed (an unseeded private generator, the clock, the "
                        "process id, file order). Seed it from the global generators or the sample index.",
    "random stream": "Code draws random numbers where a resumed run does not repeat them, or repeats them: "
                     "on_fit_start / on_load_checkpoint hooks, model or data construction, validation, or a "
                     "callback. Move the draw into training_step, or seed it from the step.",
    "state": "Same batch, same random state, different result: state the checkpoint does not hold changes the "
             "step (a plain attribute of the module that is not a parameter or registered buffer, an optimizer "
             "or scheduler not returned by configure_optimizers), or kernels are not deterministic "
             "(torch.use_deterministic_algorithms(True); on GPU, CUBLAS_WORKSPACE_CONFIG=:4096:8).",
    "end": "Every batch matched but the end state differs: end-of-epoch work (epoch schedulers, epoch-level "
           "metrics, validation) depends on state that is not saved; keep such state in the module's buffers "
           "or a callback's state_dict().",
    "progress": "The runs did not train the same batches; check that the data has the same length every run "
                "and that nothing stops training conditionally on state that is not saved.",
}


def _report(plan: _Plan, divergence: Divergence | None, folder: Path, keep: bool) -> ResumeReport:
    workdir = str(folder) if keep else None
    if divergence is None:
        return ResumeReport(True, plan.stop, plan.total, workdir=workdir)
    return ResumeReport(False, plan.stop, plan.total, divergence, _ADVICE[divergence.cause], workdir)
