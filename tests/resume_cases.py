"""The training runs of the kill matrix (`test_resume_matrix.py`), one process per run.

    python tests/resume_cases.py ROOT CASE [CASE ...] [--kill-at-steps 3,9]

trains each CASE in the run folder `ROOT/CASE/run/version_0`, resuming from that folder's newest
checkpoint when it has one, so rerunning the same command after a crash continues the run. With
`--kill-at-steps`, the process SIGKILLs itself right after the checkpoint of each listed step is
written (a step this process itself completed: a process resumed at step 3 does not die at 3
again). `--kill-before-save S` dies right before writing the first checkpoint file of a step >= S
(its metrics row already logged); `--kill-mid-save S` right after writing a kept checkpoint file
of a step >= S, before `last.ckpt` is written; `--kill-before-evict S` right before deleting a
checkpoint that retention pushed out, at a step >= S; each of those once per run folder (a
marker file records it). A finished run writes `ROOT/CASE/result.pt`: final weights, optimizer and scheduler states,
counters and the global RNG states, which the test compares with an uninterrupted run's.

Each case is a tiny model, a few optimizer steps, a checkpoint after every step plus `last`.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset

import resumable as rs
from resumable.callbacks import ModelCheckpoint
from resumable.checkpoint import api as checkpoint_api

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import classification_data  # noqa: E402

FEATURES, CLASSES, SAMPLES, BATCH = 8, 3, 48, 6  # 8 batches an epoch


class Net(rs.Module):
    """An MLP with dropout; `scheduler="step"` adds a per-step StepLR."""

    def __init__(self, data: Callable[[], Any], scheduler: bool = False, val: bool = False):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                        torch.nn.Linear(16, CLASSES))
        self.data, self.scheduler, self.val = data, scheduler, val

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.body(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.body(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        if not self.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        return self.data()

    def val_dataloader(self):
        if not self.val:
            return None
        return DataLoader(Augmented(classification_data(12, FEATURES, CLASSES, seed=1)), batch_size=BATCH)


class Augmented(Dataset):
    """Random augmentation in `__getitem__` from all three global generators."""

    def __init__(self, base: Any):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        jitter = torch.rand(FEATURES) * 0.1 + random.random() * 0.01 + float(np.random.rand()) * 0.01
        return x + jitter, y


class Stream(IterableDataset):
    """A stream whose position is its state: an epoch-dependent order, noise from torch's RNG."""

    def __init__(self, n: int = SAMPLES):
        self.base, self.n, self.epoch, self.pos = classification_data(n, FEATURES, CLASSES), n, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.pos = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        while self.pos < self.n:
            x, y = self.base[order[self.pos]]
            self.pos += 1
            yield x + 0.05 * torch.randn(FEATURES), y


class Gan(rs.Module):
    """Two optimizers, the GAN pattern: `training_step(batch, batch_idx, optimizer_idx)`."""

    def __init__(self, data: Callable[[], Any]):
        super().__init__()
        self.gen = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, FEATURES))
        self.disc = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
        self.data = data

    def training_step(self, batch, batch_idx, optimizer_idx):
        real, _ = batch
        fake = self.gen(torch.randn(real.shape[0], 4))
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
        if optimizer_idx == 0:
            loss = F.binary_cross_entropy_with_logits(self.disc(fake), ones)
            self.log("g_loss", loss)
        else:
            loss = (F.binary_cross_entropy_with_logits(self.disc(real), ones)
                    + F.binary_cross_entropy_with_logits(self.disc(fake.detach()), zeros))
            self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return [torch.optim.Adam(self.gen.parameters(), lr=0.01), torch.optim.SGD(self.disc.parameters(), lr=0.05,
                                                                                 momentum=0.9)]

    def train_dataloader(self):
        return self.data()


def shuffled(workers: int = 0, augment: bool = False) -> Callable[[], DataLoader]:
    def build() -> DataLoader:
        data = classification_data(SAMPLES, FEATURES, CLASSES)
        return DataLoader(Augmented(data) if augment else data, batch_size=BATCH, shuffle=True, num_workers=workers)
    return build


@dataclass(frozen=True)
class Case:
    """One row of the matrix: how to build the model and trainer, and how many steps the run has."""

    steps: int
    model: Callable[[], rs.Module]
    trainer: dict[str, Any] = field(default_factory=dict)
    monitor: str = "train_loss"


CASES: dict[str, Case] = {
    "shuffle_dropout": Case(16, lambda: Net(shuffled()), {"max_epochs": 2}),
    "augment_workers0": Case(16, lambda: Net(shuffled(augment=True)), {"max_epochs": 2}),
    "augment_workers2": Case(16, lambda: Net(shuffled(workers=2, augment=True)), {"max_epochs": 2}),
    "accumulate3": Case(9, lambda: Net(shuffled()), {"max_epochs": 3, "accumulate_grad_batches": 3}),
    "step_scheduler": Case(16, lambda: Net(shuffled(), scheduler=True), {"max_epochs": 2}),
    "val_mid_epoch": Case(16, lambda: Net(shuffled(augment=True), val=True), {"max_epochs": 2, "val_check_interval": 3},
                          monitor="val_loss"),
    "two_optimizers": Case(16, lambda: Gan(shuffled()), {"max_epochs": 2}),
    "iterable_stateful": Case(16, lambda: Net(lambda: DataLoader(Stream(), batch_size=BATCH)), {"max_epochs": 2}),
    "max_steps_mid_epoch": Case(13, lambda: Net(shuffled(augment=True)), {"max_steps": 13}),
    "long_for_wall_clock": Case(48, lambda: Net(shuffled(augment=True), scheduler=True),
                                {"max_epochs": 12, "accumulate_grad_batches": 2, "val_check_interval": 5}),
}


class CheckpointThenKill(ModelCheckpoint):
    """A ModelCheckpoint that SIGKILLs its process right after saving the checkpoint of a listed step."""

    def __init__(self, kill_at: set[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.kill_at = kill_at
        self._step_at_batch_start = -1

    def on_fit_start(self, trainer, module):
        super().on_fit_start(trainer, module)
        print(f"fit-start at step {trainer.global_step}", flush=True)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if trainer.global_step != self._step_at_batch_start and trainer.global_step in self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_inside_saves(marker: Path, before_save: int | None, mid_save: int | None, before_evict: int | None) -> None:
    """Make the checkpoint writes of this process SIGKILL it at a chosen point, once per `marker`.

    The seam is the module `ModelCheckpoint` calls for every file it writes or deletes.
    """
    if marker.exists():
        return
    save, delete = checkpoint_api.save_checkpoint, checkpoint_api.delete_checkpoint
    saved_step = [-1]

    def die() -> None:
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)

    def save_then_maybe_die(state: dict[str, Any], path: Any) -> None:
        if before_save is not None and state["global_step"] >= before_save:
            die()
        save(state, path)
        saved_step[0] = state["global_step"]
        if mid_save is not None and Path(path).name != "last.ckpt" and saved_step[0] >= mid_save:
            die()

    def maybe_die_then_delete(path: Any) -> None:
        if before_evict is not None and saved_step[0] >= before_evict:
            die()
        delete(path)

    checkpoint_api.save_checkpoint, checkpoint_api.delete_checkpoint = save_then_maybe_die, maybe_die_then_delete


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("cases", nargs="+", choices=sorted(CASES), metavar="CASE")
    parser.add_argument("--kill-at-steps", default="", help="comma-separated optimizer steps")
    parser.add_argument("--kill-before-save", type=int, metavar="STEP")
    parser.add_argument("--kill-mid-save", type=int, metavar="STEP")
    parser.add_argument("--kill-before-evict", type=int, metavar="STEP")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    points = {"before_save": args.kill_before_save, "mid_save": args.kill_mid_save,
              "before_evict": args.kill_before_evict}
    if any(step is not None for step in points.values()):
        kill_inside_saves(args.root / "killed-inside-save", **points)
    for name in args.cases:
        train(name, args.root / name, {int(s) for s in args.kill_at_steps.split(",") if s})


def train(name: str, root: Path, kill_at: set[int]) -> None:
    """Train case `name` in `root` (resuming from its newest checkpoint) and write `root/result.pt`."""
    case = CASES[name]
    rs.seed_everything(0)  # what a user's script does first; a resumed run overwrites it from the checkpoint
    model = case.model()
    checkpoint = CheckpointThenKill(kill_at, every_n_train_steps=1, save_top_k=3, monitor=case.monitor,
                                    save_last=True)
    trainer = rs.Trainer(seed=7, enable_progress_bar=False, log_every_n_steps=1, callbacks=[checkpoint],
                         experiment=rs.Experiment(root, name="run", version=0), **case.trainer)
    trainer.fit(model)
    torch.save({
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "weights": model.state_dict(),
        "optimizers": [opt.state_dict() for opt in trainer.optimizers],
        "schedulers": [sched.state_dict() for sched in trainer.lr_schedulers],
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
    }, root / "result.pt")


if __name__ == "__main__":
    main()
