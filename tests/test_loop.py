"""The fit loop: counters, limits, validation, schedulers, optimizers, accumulation, clipping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import resumable as rs
from models import TinyModel, classification_data


def make_trainer(**kwargs):
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("checkpoint_callback", False)
    return rs.Trainer(**kwargs)


@pytest.mark.parametrize(
    "kwargs, steps, epochs",
    [
        ({"max_epochs": 2}, 16, 2),              # 64 samples / 8 per batch = 8 batches per epoch
        ({"max_steps": 5}, 5, 0),                 # stops mid-epoch 0
        ({"max_steps": 8}, 8, 1),                 # stops at the end of epoch 0
        ({"max_epochs": 3, "max_steps": 12}, 12, 1),
        ({"max_epochs": 2, "limit_train_batches": 3}, 6, 2),
        ({"max_epochs": 2, "limit_train_batches": 0.5}, 8, 2),
        ({"max_epochs": 2, "accumulate_grad_batches": 3}, 6, 2),  # windows 3,3,2 per epoch
    ],
)
def test_steps_and_epochs_are_counted(kwargs, steps, epochs):
    model = TinyModel()
    trainer = make_trainer(**kwargs)
    trainer.fit(model)
    assert trainer.global_step == steps
    assert trainer.current_epoch == epochs


def test_module_sees_epoch_and_step_inside_hooks():
    model = TinyModel()
    make_trainer(max_epochs=2).fit(model)
    train_calls = [c for c in model.calls if c[0] == "train"]
    assert train_calls[0] == ("train", 0, 0, 0)
    assert train_calls[9] == ("train", 1, 1, 9)
    assert [c[2] for c in train_calls[:8]] == list(range(8))


def test_max_steps_stops_mid_epoch_without_epoch_end():
    ends = []

    class Recorder(rs.Callback):
        def on_train_epoch_end(self, trainer, module):
            ends.append(trainer.current_epoch)

    trainer = make_trainer(max_steps=11, callbacks=[Recorder()])
    trainer.fit(TinyModel())
    assert trainer.global_step == 11 and trainer.batch_in_epoch == 3 and ends == [0]


def test_validation_mean_is_weighted_by_batch_size():
    # 30 validation samples in batches of 8: 8, 8, 8, 6 — the mean must be over samples.
    model = TinyModel(n_val=30)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model)
    data = classification_data(30, seed=1)
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(data.tensors[0]), data.tensors[1]).item()
    assert float(trainer.callback_metrics["val_loss"]) == pytest.approx(expected, rel=1e-6)


def test_validation_interval_and_epoch_frequency():
    runs = []

    class Recorder(rs.Callback):
        def on_validation_end(self, trainer, module):
            runs.append((trainer.current_epoch, trainer.batch_in_epoch))

    make_trainer(max_epochs=2, val_check_interval=3, callbacks=[Recorder()]).fit(TinyModel())
    assert runs == [(0, 3), (0, 6), (0, 8), (1, 3), (1, 6), (1, 8)]
    runs.clear()
    make_trainer(max_epochs=4, check_val_every_n_epoch=2, callbacks=[Recorder()]).fit(TinyModel())
    assert runs == [(1, 8), (3, 8)]
    runs.clear()
    make_trainer(max_epochs=1, val_check_interval=0.5, callbacks=[Recorder()]).fit(TinyModel())
    assert runs == [(0, 4), (0, 8)]  # the epoch-end validation is not run twice


def test_limit_val_batches():
    seen = []

    class Model(TinyModel):
        def validation_step(self, batch, batch_idx):
            seen.append(batch_idx)
            super().validation_step(batch, batch_idx)

    make_trainer(max_epochs=1, limit_val_batches=2).fit(Model())
    assert seen == [0, 1]


def test_validate_alone_returns_metrics():
    metrics = make_trainer().validate(TinyModel())
    assert set(metrics) == {"val_loss"} and math.isfinite(metrics["val_loss"])


class SchedModel(TinyModel):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5),
                                                   **self.config}}


@pytest.mark.parametrize("config, expected_steps", [
    ({"interval": "epoch"}, 2),
    ({"interval": "step"}, 16),
    ({"interval": "step", "frequency": 4}, 4),
    ({"interval": "epoch", "frequency": 2}, 1),
])
def test_schedulers_step_per_epoch_or_step(config, expected_steps):
    model = SchedModel(config)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5 ** expected_steps)
    assert trainer.lr_schedulers[0].last_epoch == expected_steps


def test_reduce_lr_on_plateau_gets_the_monitored_value():
    class Model(TinyModel):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.tensor(1.0))  # never improves

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}

    trainer = make_trainer(max_epochs=3)
    trainer.fit(Model())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)


def test_plateau_without_the_metric_is_a_clear_error():
    class Model(TinyModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
                                                       "monitor": "val_acc"}}

    with pytest.raises(rs.ConfigurationError, match="val_acc.*was not logged.*val_loss"):
        make_trainer(max_epochs=1).fit(Model())


class GAN(rs.Module):
    """Two optimizers, each on its own half; every call is recorded."""

    def __init__(self):
        super().__init__()
        self.gen = torch.nn.Linear(4, 4)
        self.disc = torch.nn.Linear(4, 1)
        self.calls = []

    def training_step(self, batch, batch_idx, optimizer_idx):
        (x,) = batch
        self.calls.append((batch_idx, optimizer_idx))
        fake = self.gen(x)
        if optimizer_idx == 0:
            return -self.disc(fake).mean()
        return self.disc(fake.detach()).mean() - self.disc(x).mean()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.gen.parameters(), lr=0.1), torch.optim.SGD(self.disc.parameters(), lr=0.1)]

    def train_dataloader(self):
        return DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)


def test_several_optimizers_each_step_their_own_parameters():
    model = GAN()
    before_disc = model.disc.weight.detach().clone()
    seen_grads = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen_grads.append([p.grad is not None for p in model.parameters()])
            return super().step(closure)

    model.configure_optimizers = lambda: [Spy(model.gen.parameters(), lr=0.1), Spy(model.disc.parameters(), lr=0.1)]
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model)
    assert model.calls == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert trainer.global_step == 2
    # the generator's step sees no gradient on the discriminator's parameters, and vice versa
    assert seen_grads[0] == [True, True, False, False]
    assert seen_grads[1] == [False, False, True, True]
    assert not torch.equal(before_disc, model.disc.weight)
    assert all(p.requires_grad for p in model.parameters())


def _manual_accumulated_sgd(model, batches, accumulate, lr, clip=None):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i, (x, y) in enumerate(batches):
        (F.cross_entropy(model(x), y) / accumulate).backward()
        if (i + 1) % accumulate == 0 or i + 1 == len(batches):
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad()


@pytest.mark.parametrize("accumulate, clip", [(1, None), (3, None), (1, 0.01), (3, 0.01)])
def test_accumulation_and_clipping_match_a_hand_written_loop(accumulate, clip):
    class Model(TinyModel):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    torch.manual_seed(0)
    model = Model(shuffle=False)
    reference = Model(shuffle=False)
    reference.load_state_dict(model.state_dict())
    make_trainer(max_epochs=1, accumulate_grad_batches=accumulate, gradient_clip_val=clip).fit(model)
    batches = list(DataLoader(classification_data(64), batch_size=8))
    _manual_accumulated_sgd(reference, batches, accumulate, 0.5, clip)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_clip_by_value():
    class Model(TinyModel):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1.0)

    model = Model(shuffle=False)
    before = model.layer.weight.detach().clone()
    make_trainer(max_steps=1, gradient_clip_val=1e-4, gradient_clip_algorithm="value").fit(model)
    assert (model.layer.weight - before).abs().max() <= 1e-4 + 1e-7


def test_callbacks_are_called_in_order():
    events = []

    class Recorder(rs.Callback):
        def __init__(self, name):
            self.name = name

        @property
        def state_key(self):
            return f"Recorder{{{self.name}}}"

        def __getattribute__(self, item):
            if item.startswith("on_"):
                events.append((object.__getattribute__(self, "name"), item))
            return object.__getattribute__(self, item)

    make_trainer(max_epochs=1, limit_train_batches=2, callbacks=[Recorder("a"), Recorder("b")]).fit(TinyModel())
    names = [e for who, e in events if who == "a"]
    assert names == [
        "on_fit_start", "on_train_epoch_start",
        "on_train_batch_start", "on_train_batch_end",
        "on_train_batch_start", "on_train_batch_end",
        "on_validation_start", "on_validation_end",
        "on_train_epoch_end", "on_fit_end",
    ]
    # for every hook, a is called before b
    assert [who for who, _ in events] == ["a", "b"] * (len(events) // 2)


def test_on_exception_is_called_and_the_error_reraised():
    seen = []

    class Recorder(rs.Callback):
        def on_exception(self, trainer, module, exception):
            seen.append(type(exception))

    class Model(TinyModel):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(max_epochs=1, callbacks=[Recorder()]).fit(Model())
    assert seen == [RuntimeError]


def test_stop_training_from_a_callback():
    class Stopper(rs.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                raise rs.StopTraining()

    trainer = make_trainer(max_epochs=5, callbacks=[Stopper()])
    trainer.fit(TinyModel())
    assert trainer.global_step == 3


def test_metrics_rows_are_written(tmp_path):
    trainer = make_trainer(max_epochs=2, log_every_n_steps=4, experiment=rs.Experiment(tmp_path / "runs"))
    trainer.fit(TinyModel())
    rows = trainer.experiment.read_metrics()
    train_rows = [r for r in rows if r["train_loss"]]
    val_rows = [r for r in rows if r["val_loss"]]
    assert [int(r["step"]) for r in train_rows] == [4, 8, 12, 16]
    assert [(int(r["step"]), int(r["epoch"])) for r in val_rows] == [(8, 0), (16, 1)]
    assert float(val_rows[-1]["val_loss"]) == pytest.approx(float(trainer.callback_metrics["val_loss"]))


def test_on_epoch_training_metrics_are_averaged():
    class Model(TinyModel):
        def training_step(self, batch, batch_idx):
            self.log("idx", float(batch_idx), on_step=False, on_epoch=True)
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(max_epochs=1)
    trainer.fit(Model())
    assert float(trainer.callback_metrics["idx"]) == pytest.approx(3.5)  # mean of 0..7


def test_skipped_batches_do_not_step():
    class Model(TinyModel):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    trainer = make_trainer(max_epochs=1)
    with pytest.warns(UserWarning, match="returned None for batch 1"):
        trainer.fit(Model())
    assert trainer.global_step == 4


def test_seed_makes_runs_identical():
    def run():
        rs.seed_everything(3)
        model = TinyModel(dropout=0.5)
        make_trainer(max_epochs=2, seed=3).fit(model)
        return model.layer.weight.detach().clone()

    assert torch.equal(run(), run())


def test_bf16_mixed_precision_runs_on_cpu():
    trainer = make_trainer(max_epochs=1, precision="bf16-mixed")
    trainer.fit(TinyModel())
    assert trainer.global_step == 8 and math.isfinite(float(trainer.callback_metrics["val_loss"]))
