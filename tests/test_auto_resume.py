"""Auto-resume picks the newest VALID checkpoint: damaged ones are skipped with a warning naming them."""

from __future__ import annotations

import warnings

import pytest
import torch

import resumable as rs
from resumable.callbacks import ModelCheckpoint
from models import TinyModel


def run(root, max_epochs, version=None, ckpt_path=None):
    rs.seed_everything(5)
    model = TinyModel(dropout=0.3)
    callback = ModelCheckpoint(dirpath=root / "ck", every_n_train_steps=1, save_top_k=3, filename="{step}",
                               save_last=True)
    trainer = rs.Trainer(max_epochs=max_epochs, seed=5, enable_progress_bar=False, callbacks=[callback],
                         experiment=rs.Experiment(root, version=version))
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def flip_a_bit(path, offset_from_end=10):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("ckpt_path", [None, "last"])
def test_damaged_newest_checkpoints_are_skipped(tmp_path, ckpt_path):
    _, straight = run(tmp_path / "straight", max_epochs=2)
    root = tmp_path / "run"
    run(root, max_epochs=1)  # ends at step 8: step=6, step=7, step=8 and last are on disk
    flip_a_bit(root / "ck" / "last.ckpt")
    (root / "ck" / "step=8.ckpt").write_bytes((root / "ck" / "step=8.ckpt").read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning) as caught:
        trainer, resumed = run(root, max_epochs=2, version=0, ckpt_path=ckpt_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "skipping damaged checkpoint" in messages
    assert "last.ckpt" in messages and "step=8.ckpt" in messages
    assert trainer.resumed_from == str(root / "ck" / "step=7.ckpt")
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_an_explicit_damaged_checkpoint_is_an_error_not_a_fallback(tmp_path):
    run(tmp_path, max_epochs=1)
    flip_a_bit(tmp_path / "ck" / "last.ckpt")
    with pytest.raises(rs.CheckpointCorruptError, match="last.ckpt"):
        run(tmp_path, max_epochs=2, version=0, ckpt_path=tmp_path / "ck" / "last.ckpt")


def test_with_every_checkpoint_damaged_the_run_starts_fresh_and_says_so(tmp_path):
    run(tmp_path, max_epochs=1)
    # different bytes per file: `last` and the newest step file can share one inode (a hard link)
    for offset, path in enumerate(sorted((tmp_path / "ck").glob("*.ckpt")), start=10):
        flip_a_bit(path, offset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = run(tmp_path, max_epochs=1, version=0, ckpt_path="last")
    messages = " ".join(str(w.message) for w in caught)
    assert messages.count("skipping damaged checkpoint") == 4
    assert "has no valid checkpoint yet; starting from scratch" in messages
    assert trainer.resumed_from is None and trainer.global_step == 8
