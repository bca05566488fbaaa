"""Restoring a session: every listed item comes back; what does not fit is a clear error."""

from __future__ import annotations

import dataclasses
import enum
import pickle
from pathlib import Path

import pytest
import torch

import resumable as rs
from resumable.callbacks import ModelCheckpoint
from models import TinyModel, classification_data


class Counter(rs.Callback):
    """A callback with state of its own."""

    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.batches += 1

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


class Extra(TinyModel):
    """Adds its own entries to checkpoints."""

    def on_save_checkpoint(self, checkpoint):
        checkpoint["extra"] = {"note": "hello", "seen_step": self.global_step, "buffer": torch.arange(3)}

    def on_load_checkpoint(self, checkpoint):
        self.loaded_extra = checkpoint["extra"]


def run(root, version=None, max_epochs=2, model=None, precision="32", **kwargs):
    model = model or Extra(scheduler="step")
    counter = Counter()
    trainer = rs.Trainer(max_epochs=max_epochs, enable_progress_bar=False, seed=1, precision=precision,
                         experiment=rs.Experiment(root, version=version), callbacks=[counter], log_every_n_steps=2,
                         **kwargs)
    trainer.fit(model)
    return trainer, model, counter


def test_seed_snippet_restores_the_session(tmp_path):
    first, model, _ = run(tmp_path, max_epochs=2)
    exp = rs.Experiment(tmp_path, version=first.experiment.version)
    trainer = rs.Trainer(experiment=exp, max_epochs=2, enable_progress_bar=False, callbacks=[Counter()])
    fresh = Extra(scheduler="step")
    # this fit call loads model weights and trainer state, then has nothing left to do
    trainer.fit(fresh)
    assert trainer.global_step == 16 and trainer.current_epoch == 2
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)


def test_every_listed_item_is_restored(tmp_path):
    first, model, counter = run(tmp_path, max_epochs=2, precision="16-mixed")
    checkpoint = rs.load_checkpoint(first.checkpoint_callback.last_model_path)
    for key in ("global_step", "epoch", "state_dict", "optimizer_states", "lr_schedulers", "callbacks",
                "hyper_parameters", "trainer", "rng", "grad_scaler", "resumable_version"):
        assert key in checkpoint, key

    restored = Extra(scheduler="step")
    trainer = rs.Trainer(max_epochs=2, enable_progress_bar=False, precision="16-mixed", callbacks=[Counter()],
                         experiment=rs.Experiment(tmp_path, version=0))
    trainer.fit(restored)
    assert (trainer.global_step, trainer.current_epoch) == (16, 2)
    assert trainer.optimizers[0].state_dict()["state"][0]["momentum_buffer"].equal(
        first.optimizers[0].state_dict()["state"][0]["momentum_buffer"])
    assert trainer.lr_schedulers[0].state_dict() == first.lr_schedulers[0].state_dict()
    assert trainer.optimizers[0].param_groups[0]["lr"] == first.optimizers[0].param_groups[0]["lr"]
    assert trainer.callbacks[0].batches == counter.batches == 16
    assert trainer.precision.scaler.state_dict() == first.precision.scaler.state_dict()
    assert restored.loaded_extra["note"] == "hello" and restored.loaded_extra["seen_step"] == 16
    assert torch.equal(restored.loaded_extra["buffer"], torch.arange(3))
    assert checkpoint["hyper_parameters"]["scheduler"] == "step"


def test_metrics_rows_are_neither_duplicated_nor_lost(tmp_path):
    straight, _, _ = run(tmp_path / "a", max_epochs=3)
    run(tmp_path / "b", max_epochs=2)
    # rows logged after the checkpoint by a run that then died must go: simulate them
    exp = rs.Experiment(tmp_path / "b", version=0)
    exp.log({"train_loss": 123.0}, step=99)
    resumed, _, _ = run(tmp_path / "b", version=0, max_epochs=3)
    assert resumed.experiment.read_metrics() == straight.experiment.read_metrics()


def test_load_checkpoint_has_the_seed_keys(tmp_path):
    trainer, model, _ = run(tmp_path, max_epochs=1)
    checkpoint = rs.load_checkpoint(trainer.checkpoint_callback.last_model_path)
    assert checkpoint["global_step"] == 8 and checkpoint["epoch"] == 0
    assert isinstance(checkpoint["optimizer_states"], list) and isinstance(checkpoint["lr_schedulers"], list)
    # the seed page's restore code, as written, works on it
    fresh = Extra(scheduler="step")
    optimizers, schedulers = [torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)], []
    schedulers.append(torch.optim.lr_scheduler.StepLR(optimizers[0], 1))
    for optimizer, opt_state in zip(optimizers, checkpoint["optimizer_states"]):
        optimizer.load_state_dict(opt_state)
    for scheduler, lrs_state in zip(schedulers, checkpoint["lr_schedulers"]):
        scheduler.load_state_dict(lrs_state)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(fresh.layer.weight, model.layer.weight)


def test_load_from_checkpoint_rebuilds_with_overrides(tmp_path):
    trainer, model, _ = run(tmp_path, max_epochs=1, model=TinyModel(lr=0.05, classes=3))
    path = trainer.checkpoint_callback.last_model_path
    rebuilt = TinyModel.load_from_checkpoint(path, batch_size=4)
    assert rebuilt.hparams.lr == 0.05 and rebuilt.hparams.batch_size == 4 and not rebuilt.training
    assert torch.equal(rebuilt.layer.weight, model.layer.weight)


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Config:
    width: int = 4
    path: Path = Path("/data")
    sizes: tuple = (1, 2)
    colour: Colour = Colour.RED


class Configured(TinyModel):
    def __init__(self, config: Config = Config(), root: Path = Path("/tmp"), dims: tuple = (3, 4),
                 colour: Colour = Colour.RED):
        super().__init__()
        self.save_hyperparameters()  # records these arguments, not TinyModel's

    def train_dataloader(self):
        return torch.utils.data.DataLoader(classification_data(16), batch_size=8)

    def val_dataloader(self):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_hyperparameters_of_many_kinds_round_trip(tmp_path):
    trainer, model, _ = run(tmp_path, max_epochs=1, model=Configured())
    assert {"config", "root", "dims", "colour", "lr"} <= set(model.hparams)  # its own and TinyModel's
    rebuilt = Configured.load_from_checkpoint(trainer.checkpoint_callback.last_model_path)
    assert rebuilt.hparams.config == Config()
    assert rebuilt.hparams.root == Path("/tmp") and rebuilt.hparams.dims == (3, 4)
    assert rebuilt.hparams.colour is Colour.RED


def test_unsupported_state_is_refused_at_save_naming_the_key(tmp_path):
    class Odd(TinyModel):
        def on_save_checkpoint(self, checkpoint):
            checkpoint["extra"] = {"fn": lambda x: x}

    with pytest.raises(rs.UnsupportedStateError, match="extra/fn"):
        run(tmp_path, max_epochs=1, model=Odd())
    assert not any(p.suffix == ".ckpt" for p in tmp_path.rglob("*"))


class Wider(TinyModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.layer = torch.nn.Linear(8, 5)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.layer(x))


def test_changed_architecture_names_every_problem(tmp_path):
    trainer, _, _ = run(tmp_path, max_epochs=1, model=TinyModel())
    path = trainer.checkpoint_callback.last_model_path
    with pytest.raises(rs.StateMismatchError) as info:
        Wider.load_from_checkpoint(path)
    message = str(info.value)
    assert "missing from the checkpoint: ['head.bias', 'head.weight']" in message
    assert "layer.weight: checkpoint (3, 8), model (5, 8)" in message and "layer.bias: checkpoint (3,), model (5,)" in message
    with pytest.warns(UserWarning, match="loaded 0 of 4 tensors"):
        Wider.load_from_checkpoint(path, strict=False)

    class Fewer(TinyModel):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(rs.StateMismatchError, match="missing from the checkpoint: \\['extra.bias', 'extra.weight'\\]"):
        rs.Trainer(max_epochs=2, enable_progress_bar=False).fit(Fewer(), ckpt_path=path)


def test_changed_optimizer_is_a_clear_error(tmp_path):
    trainer, _, _ = run(tmp_path, max_epochs=1, model=TinyModel())
    path = trainer.checkpoint_callback.last_model_path

    class TwoGroups(TinyModel):
        def configure_optimizers(self):
            return torch.optim.SGD([{"params": [self.layer.weight]}, {"params": [self.layer.bias]}], lr=0.1)

    with pytest.raises(rs.StateMismatchError, match="param groups of sizes \\[1, 1\\], the checkpoint's has \\[2\\]"):
        rs.Trainer(max_epochs=2, enable_progress_bar=False).fit(TwoGroups(), ckpt_path=path)

    class TwoOptimizers(TinyModel):
        def configure_optimizers(self):
            return [torch.optim.SGD([self.layer.weight], lr=0.1), torch.optim.SGD([self.layer.bias], lr=0.1)]

    with pytest.raises(rs.StateMismatchError, match="has 1 optimizer\\(s\\) but configure_optimizers returned 2"):
        rs.Trainer(max_epochs=2, enable_progress_bar=False).fit(TwoOptimizers(), ckpt_path=path)


class Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('ran')",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_is_refused_without_running_it(tmp_path, writer):
    path = tmp_path / "evil.ckpt"
    if writer == "torch.save":
        torch.save({"state_dict": {}, "x": Payload()}, path)
    else:
        path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(rs.CheckpointError, match="evil.ckpt"):
        rs.load_checkpoint(path)
    with pytest.raises(rs.CheckpointError):
        rs.Trainer(max_epochs=1, enable_progress_bar=False).fit(TinyModel(), ckpt_path=path)
    with pytest.raises(rs.CheckpointError):
        TinyModel.load_from_checkpoint(path)
    assert not Path("PWNED").exists()


def test_ckpt_path_last_and_best(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=1, save_last=True)
    trainer = rs.Trainer(max_epochs=3, enable_progress_bar=False, callbacks=[cb],
                         experiment=rs.Experiment(tmp_path / "runs"))
    trainer.fit(TinyModel())
    best_step = rs.load_checkpoint(cb.best_model_path)["global_step"]

    def resume(which):
        again = rs.Trainer(max_epochs=3, enable_progress_bar=False, experiment=rs.Experiment(tmp_path / "runs", version=0),
                           callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=1,
                                                      save_last=True)])
        again.fit(TinyModel(), ckpt_path=which)
        return again

    assert resume("last").resumed_from == str(tmp_path / "ck" / "last.ckpt")
    best = resume("best")
    assert best.resumed_from == cb.best_model_path
    assert rs.load_checkpoint(best.resumed_from)["global_step"] == best_step
