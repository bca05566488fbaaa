"""Small models and data used across the tests (importable by subprocess scripts too)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import resumable as rs


def classification_data(n: int = 64, features: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """A fixed random classification set (the same for the same arguments)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y)


class TinyModel(rs.Module):
    """A linear classifier with dropout; records what the trainer did to it."""

    def __init__(self, features: int = 8, classes: int = 3, lr: float = 0.1, batch_size: int = 8,
                 n_train: int = 64, n_val: int = 32, shuffle: bool = True, dropout: float = 0.0,
                 scheduler: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(features, classes)
        self.dropout = torch.nn.Dropout(dropout)
        self.calls: list[tuple] = []

    def forward(self, x):
        return self.layer(self.dropout(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.calls.append(("train", self.current_epoch, batch_idx, self.global_step))
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        if self.hparams.scheduler == "step":
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]
        return opt

    def train_dataloader(self):
        data = classification_data(self.hparams.n_train, self.hparams.features, self.hparams.classes, seed=0)
        return DataLoader(data, batch_size=self.hparams.batch_size, shuffle=self.hparams.shuffle)

    def val_dataloader(self):
        data = classification_data(self.hparams.n_val, self.hparams.features, self.hparams.classes, seed=1)
        return DataLoader(data, batch_size=self.hparams.batch_size)
