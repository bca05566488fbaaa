"""The built-in demo: an MLP that learns scikit-learn's handwritten digits (shipped inside that
package, so no download), with checkpointing and resume. `resumable demo` runs it; a copy a user
can start from is `examples/digits.py`.

    python examples/digits.py                 # a new run: runs/digits/version_N
    python examples/digits.py --version 0     # carry version 0 on from its newest checkpoint
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import resumable as rs
from resumable.callbacks import ModelCheckpoint


def digits_datasets(val_fraction: float = 0.2) -> tuple[TensorDataset, TensorDataset]:
    """The 1,797 8x8 digit images as (train, val) tensor datasets, split the same way every time."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit("the demo needs scikit-learn: pip install 'resumable[demo]'") from err
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class DigitsClassifier(rs.Module):
    """A two-layer MLP with dropout over the 64 pixels of a digit."""

    def __init__(self, hidden: int = 256, lr: float = 3e-3, dropout: float = 0.2, batch_size: int = 64):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 10)
        )
        self.train_set, self.val_set = digits_datasets()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=8, gamma=0.5)]

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)


def main(argv: list[str] | None = None) -> float:
    """Train (or carry on) the digits classifier; print the run folder and the accuracy."""
    parser = argparse.ArgumentParser(prog="resumable demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", type=int, default=None, help="carry this run version on")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--root", default="runs", help="folder of the runs (default: ./runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    exp = rs.Experiment(save_dir=args.root, name="digits", version=args.version)
    checkpoint_callback = ModelCheckpoint(
        dirpath=exp.checkpoint_dir, filename="{epoch}-{val_acc:.4f}", save_top_k=1, save_last=True,
        monitor="val_acc", mode="max", verbose=True,
    )
    trainer = rs.Trainer(experiment=exp, checkpoint_callback=checkpoint_callback, max_epochs=args.max_epochs,
                         seed=args.seed, enable_progress_bar=not args.no_progress, log_every_n_steps=10)
    rs.seed_everything(args.seed)
    model = DigitsClassifier()
    print(f"run folder: {exp.path}")
    trainer.fit(model)
    if trainer.resumed_from:
        print(f"resumed from {trainer.resumed_from}")
    accuracy = float(trainer.validate(model)["val_acc"])
    print(f"validation accuracy {accuracy:.4f} after {trainer.current_epoch} epochs, {trainer.global_step} steps")
    print(f"best checkpoint: {checkpoint_callback.best_model_path}")
    print(f"run folder: {exp.path}  (carry it on with: resumable demo --version {exp.version} "
          f"--max-epochs {trainer.current_epoch + 5})")
    return accuracy


if __name__ == "__main__":
    main()
