"""Trainer overhead: one epoch of `resumable.Trainer` against a hand-written PyTorch loop.

Same model (a small MLP: 784-256-10 by default, MNIST-shaped), same data, same seed,
`torch.set_num_threads(1)`, progress bar and checkpointing off. The two contenders alternate,
and the median of each is compared, so machine noise hits both alike. Prints the ratio (target:
Trainer at most 1.03x). A second contest feeds both the same pre-built batches, so only the
loops differ. `--features 32 --hidden 64` is a tiny stress case where the step is ~0.25 ms and
the trainer's fixed cost per batch (~20 us) shows.

    python benchmarks/overhead.py [--runs 21] [--samples 30000] [--features 784 --hidden 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import resumable as rs


SHAPE = {"features": 784, "hidden": 256}  # set from the command line: an MNIST-shaped MLP by default


def make_data(samples: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, SHAPE["features"], generator=g)
    return TensorDataset(x, torch.randint(0, 10, (samples,), generator=g))


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    features, hidden = SHAPE["features"], SHAPE["hidden"]
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def hand_written(data: TensorDataset | list, batch_size: int) -> float:
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loader = data if isinstance(data, list) else DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


class Net(rs.Module):
    def __init__(self, data: TensorDataset, batch_size: int):
        super().__init__()
        self.net = make_net()
        self.data, self.batch_size = data, batch_size

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        if isinstance(self.data, list):
            return self.data
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)


def with_trainer(data: TensorDataset | list, batch_size: int, root: str) -> float:
    model = Net(data, batch_size)
    trainer = rs.Trainer(max_epochs=1, enable_progress_bar=False, checkpoint_callback=False, seed=0,
                         default_root_dir=root, log_every_n_steps=50)
    start = time.perf_counter()
    trainer.fit(model)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--features", type=int, default=784, help="input size (784: MNIST-shaped)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden width (try 32/64 for a tiny stress case)")
    args = parser.parse_args()
    SHAPE.update(features=args.features, hidden=args.hidden)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    data = make_data(args.samples)

    # Second contest: the same batches built once in a list, so only the loops themselves differ.
    prebuilt = list(DataLoader(data, batch_size=args.batch_size, shuffle=True,
                               generator=torch.Generator().manual_seed(0)))
    for title, source in (("with a shuffled DataLoader", data), ("over pre-built batches (loop cost only)", prebuilt)):
        plain, ours = [], []
        with tempfile.TemporaryDirectory() as root:
            hand_written(source, args.batch_size), with_trainer(source, args.batch_size, root)  # warm up
            for _ in range(args.runs):
                plain.append(hand_written(source, args.batch_size))
                ours.append(with_trainer(source, args.batch_size, root))
        report(title, plain, ours, len(prebuilt), args)


def report(title: str, plain: list[float], ours: list[float], batches: int, args: argparse.Namespace) -> None:
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"one epoch {title}: MLP {args.features}-{args.hidden}-10, {batches} batches of {args.batch_size}, "
          f"{args.runs} alternating runs, medians:")
    print(f"  hand-written loop  {p * 1e3:8.1f} ms  ({p / batches * 1e6:6.1f} us/batch)")
    print(f"  resumable.Trainer  {o * 1e3:8.1f} ms  ({o / batches * 1e6:6.1f} us/batch)")
    paired = statistics.median(b / a for a, b in zip(plain, ours))
    print(f"  ratio Trainer / hand-written: {o / p:.3f} (of the medians), {paired:.3f} (median of the "
          f"{len(plain)} side-by-side pairs)")


if __name__ == "__main__":
    main()
