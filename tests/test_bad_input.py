"""Bad input gets a clear error naming the problem and the fix, before training starts where possible."""

from __future__ import annotations

import os

import pytest
import torch

import resumable as rs
from models import TinyModel


def trainer(**kwargs):
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("max_epochs", 1)
    return rs.Trainer(**kwargs)


class Returns(TinyModel):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def configure_optimizers(self):
        return self.value(self) if callable(self.value) else self.value


@pytest.mark.parametrize("returned, match", [
    (None, "configure_optimizers must return one of.*got NoneType"),
    ("adam", "got str 'adam'"),
    ([], "got a list of \\[\\]"),
    (lambda m: [torch.optim.SGD(m.parameters(), lr=1), "x"], "optimizer 1 is str"),
    (lambda m: {"opt": torch.optim.SGD(m.parameters(), lr=1)}, "needs the key 'optimizer'"),
    (lambda m: {"optimizer": (o := torch.optim.SGD(m.parameters(), lr=1)),
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(o, 1), "interval": "batch"}},
     "interval must be 'epoch' or 'step'"),
    (lambda m: ([torch.optim.SGD(m.parameters(), lr=1)], [object()]), "must be a torch.optim.lr_scheduler"),
])
def test_configure_optimizers_returning_something_else(returned, match):
    with pytest.raises(rs.ConfigurationError, match=match):
        trainer().fit(Returns(returned))


class Step(TinyModel):
    def __init__(self, make_loss):
        super().__init__()
        self.make_loss = make_loss

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.make_loss(self(x), y)


@pytest.mark.parametrize("make_loss, match", [
    (lambda out, y: out.sum(dim=1), "scalar loss; got a tensor of shape \\(8,\\)"),
    (lambda out, y: out.sum().detach(), "does not require grad"),
    (lambda out, y: out.sum().item(), "must return a scalar loss tensor.*got float"),
    (lambda out, y: {"logits": out}, "dict without a 'loss' key"),
])
def test_training_step_returning_the_wrong_thing(make_loss, match):
    model = Step(make_loss)
    before = model.layer.weight.detach().clone()
    with pytest.raises(rs.ConfigurationError, match=match):
        trainer().fit(model)
    assert torch.equal(before, model.layer.weight)  # nothing trained


def test_training_step_returning_none_everywhere_is_an_error():
    # None skips a batch on purpose (documented); None for a whole epoch means a forgotten `return`.
    with pytest.warns(UserWarning, match="skipped"), \
            pytest.raises(rs.ConfigurationError, match="returned None for all 8 batches"):
        trainer().fit(Step(lambda out, y: None))


def test_a_plain_nn_module_is_refused():
    with pytest.raises(rs.ConfigurationError, match="needs a resumable.Module.*Linear.*subclass resumable.Module"):
        trainer().fit(torch.nn.Linear(2, 2))


def test_no_training_data():
    class NoData(TinyModel):
        def train_dataloader(self):
            return None

    with pytest.raises(rs.ConfigurationError, match="no training data: pass fit\\(model, train_dataloaders=...\\)"):
        trainer().fit(NoData())


def test_unbounded_training_is_refused():
    with pytest.raises(rs.ConfigurationError, match="train forever"):
        rs.Trainer(max_epochs=-1, max_steps=-1)
    rs.Trainer()  # neither given: a default bound applies
    rs.Trainer(max_epochs=-1, max_steps=10)


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"accelerator": "tpu"}, "unknown accelerator 'tpu'"),
    ({"max_epochs": 1.5}, "max_epochs must be an int"),
    ({"limit_train_batches": 1.5}, "limit_train_batches must be"),
    ({"val_check_interval": 0}, "val_check_interval must be"),
    ({"accumulate_grad_batches": 0}, "accumulate_grad_batches must be an int >= 1"),
    ({"gradient_clip_algorithm": "l1"}, "'norm' or 'value'"),
    ({"seed": -1}, "seed must be an int"),
    ({"max_epoch": 3}, "unexpected keyword argument 'max_epoch'"),
    ({"callbacks": [object()]}, "callbacks must be resumable.Callback"),
])
def test_bad_trainer_arguments(kwargs, match):
    with pytest.raises(rs.ConfigurationError, match=match):
        rs.Trainer(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu():
    with pytest.raises(rs.ConfigurationError, match="no CUDA GPU is available.*accelerator='cpu'"):
        rs.Trainer(accelerator="cuda")


def test_experiment_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(rs.ConfigurationError, match="cannot create the run folder.*a folder you can write"):
        rs.Experiment(save_dir=blocker / "runs")
    if os.geteuid() != 0:  # root can write anywhere; the case above covers it
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(rs.ConfigurationError, match="cannot create the run folder"):
            rs.Experiment(save_dir=locked)


def test_log_needs_a_scalar():
    class Model(TinyModel):
        def training_step(self, batch, batch_idx):
            self.log("vec", torch.ones(3))
            return super().training_step(batch, batch_idx)

    with pytest.raises(rs.ConfigurationError, match="needs a scalar; got a tensor of shape \\(3,\\)"):
        trainer().fit(Model())
