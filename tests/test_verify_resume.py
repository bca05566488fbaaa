"""`verify_resume` and `resumable check-resume`: exact runs are reported exact, and each kind of
inexact run is reported at its first divergence, with the batch named."""

from __future__ import annotations

import os
import re
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

import resumable as rs
from models import classification_data

N, BATCH = 48, 6  # 8 batches an epoch


class Net(rs.Module):
    """A small MLP with dropout over `data()`; `hook` and `drift` plant the bugs some tests need."""

    def __init__(self, data=None, drift: bool = False, draw_on_fit_start: bool = False):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                        torch.nn.Linear(16, 3))
        self.data, self.drift, self.draw_on_fit_start = data, drift, draw_on_fit_start
        self.scale = 1.0  # a plain attribute: not in the checkpoint

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.body(x), y) * self.scale
        if self.drift:
            self.scale *= 0.9
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.body(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def on_fit_start(self):
        if self.draw_on_fit_start:
            self.noise = torch.rand(3)

    def train_dataloader(self):
        return self.data() if self.data else None


class GlobalAugment(Dataset):
    """Augmentation from the global generators: the trainer seeds and restores them."""

    def __init__(self):
        self.base = classification_data(N, 8, 3)

    def __len__(self):
        return N

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + torch.rand(8) * 0.1 + float(np.random.rand()) * 0.01 + random.random() * 0.01, y


class PrivateAugment(GlobalAugment):
    """Augmentation from a private generator made in __init__: no checkpoint holds it."""

    def __init__(self, seeded: bool = False):
        super().__init__()
        self.rng = np.random.default_rng(0 if seeded else None)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + torch.as_tensor(self.rng.random(8), dtype=torch.float32), y


class PrivateOrder(Sampler):
    """A shuffling sampler with its own unsaved `random.Random`."""

    def __init__(self):
        self.rng = random.Random(0)

    def __len__(self):
        return N

    def __iter__(self):
        order = list(range(N))
        self.rng.shuffle(order)
        return iter(order)


def loader(dataset_class=GlobalAugment, **kwargs):
    return lambda: DataLoader(dataset_class(), batch_size=BATCH, shuffle=True, **kwargs)


def test_global_augmentation_with_accumulation_and_validation_is_exact(tmp_path):
    val = DataLoader(GlobalAugment(), batch_size=BATCH)
    report = rs.verify_resume(lambda: Net(loader()), stop_at_step=3, total_steps=7, val_dataloaders=val,
                              trainer_kwargs={"accumulate_grad_batches": 2, "val_check_interval": 3},
                              workdir=tmp_path)
    assert report.exact, str(report)
    assert report.first_divergence is None and report.advice == ""
    assert "EXACT" in str(report)
    assert len(list(tmp_path.iterdir())) == 1  # the runs went to one new folder inside workdir


def test_unseeded_private_generator_is_a_data_divergence_at_the_first_batch():
    report = rs.verify_resume(lambda: Net(loader(PrivateAugment)), stop_at_step=3, total_steps=6)
    assert not report.exact
    d = report.first_divergence
    assert (d.kind, d.epoch, d.batch_idx, d.after_resume) == ("data", 0, 0, False), str(report)
    assert "epoch 0, batch 0" in str(report) and "unseeded private generator" in report.advice


def test_private_generator_copied_into_each_run_diverges_at_the_first_batch_after_the_resume():
    data = DataLoader(PrivateAugment(seeded=True), batch_size=BATCH, shuffle=True)  # deep-copied for each run
    report = rs.verify_resume(lambda: Net(), stop_at_step=5, total_steps=8, train_dataloaders=data)
    d = report.first_divergence
    assert not report.exact and (d.kind, d.epoch, d.batch_idx, d.step, d.after_resume) == ("data", 0, 5, 5, True)
    assert "content" in d.detail and "np.random.default_rng()" in report.advice
    assert "epoch 0, batch 5" in str(report)


def test_a_sampler_with_private_state_is_an_order_divergence_naming_the_replayed_batch():
    def data():  # no augmentation: a replayed batch is recognisable
        return DataLoader(classification_data(N, 8, 3), batch_size=BATCH, sampler=PrivateOrder())

    with pytest.warns(RuntimeWarning, match="different order"):
        report = rs.verify_resume(lambda: Net(data), stop_at_step=10, total_steps=12)
    d = report.first_divergence
    assert (d.kind, d.epoch, d.batch_idx) == ("data", 1, 2), str(report)
    assert "(order)" in d.detail and "uninterrupted run's batch of epoch 0, batch 2" in d.detail
    assert "sampler" in report.advice


def test_state_outside_the_checkpoint_is_a_weights_divergence_naming_the_tensors():
    report = rs.verify_resume(lambda: Net(loader(), drift=True), stop_at_step=4, total_steps=6)
    d = report.first_divergence
    assert (d.kind, d.batch_idx, d.after_resume) == ("weights", 4, True), str(report)
    assert re.search(r"body\.0\.weight \(max abs difference [0-9.e-]+\)", d.detail), d.detail
    assert "not a parameter or registered buffer" in report.advice


def test_a_draw_in_on_fit_start_is_a_random_stream_divergence_at_the_resume():
    report = rs.verify_resume(lambda: Net(loader(), draw_on_fit_start=True), stop_at_step=2, total_steps=4)
    d = report.first_divergence
    assert (d.kind, d.batch_idx) == ("random stream", 2), str(report)
    assert "torch CPU" in d.detail and "on_fit_start" in report.advice


@pytest.mark.parametrize("kwargs, message", [
    ({"stop_at_step": 5, "total_steps": 5}, "0 < stop_at_step < total_steps"),
    ({"stop_at_step": 0, "total_steps": 5}, "0 < stop_at_step < total_steps"),
    ({"stop_at_step": 2, "total_steps": 5, "trainer_kwargs": {"max_steps": 9}}, "max_steps"),
    ({"stop_at_step": 9, "total_steps": 20, "trainer_kwargs": {"max_epochs": 1}}, "before stop_at_step=9"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(rs.ConfigurationError, match=message):
        rs.verify_resume(lambda: Net(loader()), **kwargs)


SCRIPT = '''
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
import resumable as rs

class Data(Dataset):
    def __init__(self, private):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(24, 4, generator=g), torch.randint(0, 2, (24,), generator=g)
        self.rng = np.random.default_rng() if private else None
    def __len__(self):
        return 24
    def __getitem__(self, i):
        noise = self.rng.random(4) if self.rng is not None else np.random.rand(4)
        return self.x[i] + torch.as_tensor(noise, dtype=torch.float32), self.y[i]

class Model(rs.Module):
    def __init__(self, private=False):
        super().__init__()
        self.layer, self.private = torch.nn.Linear(4, 2), private
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.layer(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
    def train_dataloader(self):
        return DataLoader(Data(self.private), batch_size=4, shuffle=True)

def make_model():
    return Model()

def private_model():
    return Model(private=True)

if __name__ == "__main__":
    raise SystemExit("the check imports this file; it must not run it")
'''


def check_resume(tmp_path, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "resumable", "check-resume", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)


def test_check_resume_command_exits_0_when_exact_and_1_with_the_report_when_not(tmp_path):
    (tmp_path / "train_me.py").write_text(textwrap.dedent(SCRIPT))
    good = check_resume(tmp_path, "train_me.py", "--stop-at", "3", "--steps", "7",
                        "--trainer-kwargs", '{"accumulate_grad_batches": 2}')
    assert good.returncode == 0, good.stdout + good.stderr
    assert "resume check: EXACT" in good.stdout

    bad = check_resume(tmp_path, f"{tmp_path / 'train_me.py'}:private_model", "--stop-at", "3", "--steps", "5")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "NOT EXACT" in bad.stdout and "first divergence: data, epoch 0, batch 0" in bad.stdout
    assert "what to do:" in bad.stdout

    missing = check_resume(tmp_path, "train_me.py:nothing_here", "--stop-at", "1", "--steps", "2")
    assert missing.returncode == 2 and "no function 'nothing_here'" in missing.stderr
