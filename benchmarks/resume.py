"""Resume cost: time from process start to the first training step after a resume, for a
checkpoint at 1% and at 99% of a 1,000,000-sample epoch.

The trainer owns the sample order, so reaching batch k of an epoch computes the epoch's order and
slices it: no sample before k is loaded. The cost should not depend on k. Each measurement is a
fresh process; the parent notes `time.monotonic()` just before starting it, the child at the end
of its first training step, and exits there. Three kinds of process alternate, `--runs` times:

* bare: start, imports, the data, the model, `load_checkpoint` + `load_state_dict` of the model
  and optimizer, one hand-written step on the epoch's first batch (no trainer, no fast-forward);
* resume at 1% and at 99%: the same data and model, `Trainer.fit` resuming from the checkpoint.

Prints the medians, their ratio (target: within 10%) and each one's excess over bare (target:
under 2 s); and, less noisy, the in-process part alone: from the `load_checkpoint` call (bare) or
the `fit` call (resume) to the end of the first step (torch's compiler module, which torch imports
when the first optimizer is built, is imported before that clock starts). `torch.set_num_threads(1)` everywhere.

    python benchmarks/resume.py [--runs 7] [--samples 1000000] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import resumable as rs

FRACTIONS = {"1%": 0.01, "99%": 0.99}


def make_data(samples: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(samples, 16, generator=g), torch.randint(0, 10, (samples,), generator=g))


class Net(rs.Module):
    def __init__(self, data: TensorDataset, batch_size: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        self.data, self.batch_size = data, batch_size

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)


class ExitAfterFirstStep(rs.Callback):
    """Reports the end of the first training batch of this process, and exits at once."""

    def __init__(self, started: float):
        self.started = started

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        first_step(self.started)


def first_step(started: float) -> None:
    now = time.monotonic()
    print(f"first-step {now:.6f} in-process {now - started:.6f}", flush=True)
    os._exit(0)


def trainer(root: Path, name: str, max_steps: int, callbacks=()) -> rs.Trainer:
    return rs.Trainer(max_steps=max_steps, seed=0, enable_progress_bar=False, log_every_n_steps=50,
                      experiment=rs.Experiment(root, name=name, version=0), callbacks=list(callbacks))


def prepare(root: Path, samples: int, batch_size: int) -> dict[str, int]:
    """Train to each fraction of the first epoch; each run's `last.ckpt` is the checkpoint to resume."""
    batches = -(-samples // batch_size)
    steps = {label: max(1, round(batches * fraction)) for label, fraction in FRACTIONS.items()}
    data = make_data(samples)
    for label, k in steps.items():
        rs.seed_everything(0)
        trainer(root, label, k).fit(Net(data, batch_size))
    return steps


def child(mode: str, root: Path, samples: int, batch_size: int, steps: int) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    importlib.import_module("torch._dynamo")  # torch imports it at the first optimizer: outside the in-process figure
    data = make_data(samples)
    if mode == "bare":
        model = Net(data, batch_size)
        loader = DataLoader(data, batch_size=batch_size)
        started = time.monotonic()
        checkpoint = rs.load_checkpoint(root / "99%" / "version_0" / "checkpoints" / "last.ckpt")
        model.load_state_dict(checkpoint["state_dict"])
        optimizer = model.configure_optimizers()
        optimizer.load_state_dict(checkpoint["optimizer_states"][0])
        x, y = next(iter(loader))
        F.cross_entropy(model.net(x), y).backward()
        optimizer.step()
        first_step(started)
    model, exit_after = Net(data, batch_size), ExitAfterFirstStep(0.0)
    run = trainer(root, mode, steps + 1, [exit_after])
    exit_after.started = time.monotonic()
    run.fit(model)
    raise SystemExit(f"{mode}: the run finished without taking a step")


def measure(mode: str, args: argparse.Namespace, steps: int) -> tuple[float, float]:
    """(seconds from process start to the end of the first step, seconds of that in-process)"""
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(args.root), "--samples", str(args.samples),
           "--batch-size", str(args.batch_size), "--steps", str(steps)]
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    line = next((l for l in out.stdout.splitlines() if l.startswith("first-step")), None)
    if line is None:
        raise RuntimeError(f"{mode} printed no first step (exit {out.returncode}): {out.stderr[-2000:]}")
    words = line.split()
    return float(words[1]) - start, float(words[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--root", type=Path, help="where the checkpoints go (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.root, args.samples, args.batch_size, args.steps)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="resume-bench-") as tmp:
        args.root = args.root or Path(tmp)
        steps = prepare(args.root, args.samples, args.batch_size)
        modes = ["bare", *steps]
        times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
        for run in range(args.runs):
            for mode in modes[run % 3:] + modes[:run % 3]:  # rotate the order: drift hits all alike
                times[mode].append(measure(mode, args, steps.get(mode, 0)))
    report(args, steps, times)


def report(args: argparse.Namespace, steps: dict[str, int], times: dict[str, list[tuple[float, float]]]) -> None:
    total = {mode: statistics.median(t for t, _ in values) for mode, values in times.items()}
    inner = {mode: statistics.median(t for _, t in values) for mode, values in times.items()}
    batches = -(-args.samples // args.batch_size)
    print(f"resume cost: {args.samples:,} samples, batch size {args.batch_size} ({batches} batches an epoch), "
          f"median of {args.runs} fresh processes each; seconds from process start to the end of the first step")
    print(f"  bare (start, imports, data, model, checkpoint load, 1 step): {total['bare']:.3f} s "
          f"(load + step alone {inner['bare']:.3f} s)")
    for label in FRACTIONS:
        print(f"  resume at {label:>3} (batch {steps[label]:>6}): {total[label]:.3f} s, "
              f"{total[label] - total['bare']:+.3f} s beyond bare (fit call to first step {inner[label]:.3f} s)"
              f"   runs: " + " ".join(f"{t:.2f}" for t, _ in times[label]))
    ratio = total["99%"] / total["1%"]
    beyond = max(total[label] - total["bare"] for label in FRACTIONS)
    print(f"  99% / 1% = {ratio:.3f} (target within 10%: {'met' if abs(ratio - 1) <= 0.10 else 'MISSED'}); "
          f"in-process 99% / 1% = {inner['99%'] / inner['1%']:.3f}; most beyond bare {beyond:.3f} s "
          f"(target under 2 s: {'met' if beyond < 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
