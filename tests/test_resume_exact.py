"""Exact resume, in-process: a run resumed from a checkpoint taken at any step ends bit-for-bit
identical to a run that was never stopped (CPU, same seed, shuffle and dropout on)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

import resumable as rs
from resumable.callbacks import ModelCheckpoint
from models import TinyModel, classification_data


def fit(root, version=None, max_steps=-1, max_epochs=3, ckpt_path=None, every_batch=False, model_kwargs=None,
        **trainer_kwargs):
    rs.seed_everything(123)
    model = TinyModel(dropout=0.3, scheduler="step", **(model_kwargs or {}))
    # a time interval of 1 us saves after every batch, inside accumulation windows too
    every = ModelCheckpoint(dirpath=root / "every", train_time_interval=timedelta(microseconds=1), save_top_k=-1,
                            filename="{epoch}-{step}-{batch}")
    callbacks = [every] if every_batch else []
    trainer = rs.Trainer(max_epochs=max_epochs, max_steps=max_steps, seed=7, enable_progress_bar=False,
                         experiment=rs.Experiment(root, version=version), callbacks=callbacks,
                         log_every_n_steps=1, **trainer_kwargs)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def assert_same_run(a, b):
    (ta, ma), (tb, mb) = a, b
    assert (ta.global_step, ta.current_epoch) == (tb.global_step, tb.current_epoch)
    for (name, x), (_, y) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(x, y), name
    for oa, ob in zip(ta.optimizers, tb.optimizers):
        for sa, sb in zip(oa.state_dict()["state"].values(), ob.state_dict()["state"].values()):
            for k in sa:
                assert torch.equal(sa[k], sb[k]), k
    assert ta.experiment.read_metrics() == tb.experiment.read_metrics()


def test_epoch_end_resume_is_bit_exact(tmp_path):
    straight = fit(tmp_path / "a")
    fit(tmp_path / "b", max_epochs=2)
    resumed = fit(tmp_path / "b", version=0)  # the seed's way: same experiment version
    assert resumed[0].resumed_from.endswith("last.ckpt")
    assert_same_run(straight, resumed)


@pytest.mark.parametrize("trainer_kwargs", [
    {},
    {"accumulate_grad_batches": 3},
    {"val_check_interval": 3},
])
def test_resume_from_every_batch_is_bit_exact(tmp_path, trainer_kwargs):
    straight = fit(tmp_path / "a", max_epochs=2, **trainer_kwargs)
    fit(tmp_path / "b", max_epochs=2, every_batch=True, **trainer_kwargs)
    checkpoints = sorted((tmp_path / "b" / "every").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    assert len(checkpoints) == 17  # one per batch, and one at the end of fit (after the epoch end)
    for i, path in enumerate(checkpoints[:: max(1, len(checkpoints) // 5)]):
        resumed = fit(tmp_path / f"r{i}", max_epochs=2, ckpt_path=path, **trainer_kwargs)
        # the resumed run wrote only the rows after the checkpoint: compare weights and counters
        ta, ma = straight
        tb, mb = resumed
        assert (ta.global_step, ta.current_epoch) == (tb.global_step, tb.current_epoch), path
        for (name, x), (_, y) in zip(ma.state_dict().items(), mb.state_dict().items()):
            assert torch.equal(x, y), f"{name} after resuming from {path.name}"


def test_resuming_a_finished_run_adds_nothing(tmp_path):
    trainer, _ = fit(tmp_path, max_epochs=2)
    files = sorted(p.name for p in trainer.experiment.checkpoint_dir.iterdir())
    rows = trainer.experiment.read_metrics()
    again, _ = fit(tmp_path, version=0, max_epochs=2)
    assert again.global_step == trainer.global_step
    assert sorted(p.name for p in again.experiment.checkpoint_dir.iterdir()) == files
    assert again.experiment.read_metrics() == rows


class Stream(torch.utils.data.IterableDataset):
    """A deterministic stream with no state_dict: resumable only by skipping ahead."""

    def __iter__(self):
        data = classification_data(64)
        return iter(data[i] for i in range(len(data)))


class StreamModel(TinyModel):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(Stream(), batch_size=8)


def test_a_stateless_iterable_dataset_resumes_by_skipping_with_a_warning(tmp_path):
    def run(root, ckpt_path=None, every_batch=False):
        rs.seed_everything(3)
        model = StreamModel(dropout=0.3)
        callbacks = [ModelCheckpoint(dirpath=root / "every", every_n_train_steps=1, save_top_k=-1)] if every_batch \
            else []
        trainer = rs.Trainer(max_epochs=2, seed=3, enable_progress_bar=False, callbacks=callbacks,
                             experiment=rs.Experiment(root))
        trainer.fit(model, ckpt_path=ckpt_path)
        return trainer, model

    _, straight = run(tmp_path / "a")
    run(tmp_path / "b", every_batch=True)
    with pytest.warns(RuntimeWarning, match="reads and discards the 3 batches before it"):
        trainer, resumed = run(tmp_path / "c", ckpt_path=tmp_path / "b" / "every" / "epoch=1-step=11.ckpt")
    assert trainer.global_step == 16
    for (name, x), (_, y) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(x, y), name
