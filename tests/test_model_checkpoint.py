"""ModelCheckpoint: every argument alone and in combination, checked against the files on disk."""

from __future__ import annotations

import math
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import resumable as rs
from resumable.callbacks import ModelCheckpoint
from models import TinyModel


class Scripted(TinyModel):
    """Logs a scripted `val_loss` per validation run, so which checkpoints are best is known."""

    def __init__(self, scores, **kwargs):
        super().__init__(**kwargs)
        self.scores = list(scores)
        self.runs = 0

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.scores[self.runs])

    def on_validation_epoch_end(self):
        self.runs += 1


def fit(callbacks, scores=(5, 3, 4, 1, 2), max_epochs=5, root="runs", model=None, **kwargs):
    model = model or Scripted(scores)
    trainer = rs.Trainer(max_epochs=max_epochs, enable_progress_bar=False, seed=0, callbacks=callbacks,
                         experiment=rs.Experiment(root), **kwargs)
    trainer.fit(model)
    return trainer


def names(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))


def header_step(path) -> int:
    return rs.load_checkpoint(path)["global_step"]


def test_seed_snippet_best_only_with_verbose(tmp_path, capsys):
    checkpoint_callback = ModelCheckpoint(
        filepath=tmp_path / "store" / "weights.ckpt",
        save_best_only=True,
        verbose=True,
        monitor="val_loss",
        mode="min",
    )
    trainer = rs.Trainer(checkpoint_callback=checkpoint_callback, max_epochs=5, enable_progress_bar=False)
    trainer.fit(Scripted([5, 3, 4, 1, 2]))
    assert names(tmp_path / "store") == ["weights.ckpt"]
    assert header_step(tmp_path / "store" / "weights.ckpt") == 32  # epoch 3 (val_loss=1): 4 epochs x 8 steps
    lines = [line for line in capsys.readouterr().out.splitlines() if "val_loss" in line]
    assert lines == [
        f"Epoch 0, step 8: val_loss=5 (best was none, now 5); saved {tmp_path}/store/weights.ckpt",
        f"Epoch 1, step 16: val_loss=3 (best was 5, now 3); saved {tmp_path}/store/weights.ckpt",
        "Epoch 2, step 24: val_loss=4 not better than the worst kept (3) of the top 1; not saved",
        f"Epoch 3, step 32: val_loss=1 (best was 3, now 1); saved {tmp_path}/store/weights.ckpt",
        "Epoch 4, step 40: val_loss=2 not better than the worst kept (1) of the top 1; not saved",
    ]
    assert trainer.checkpoint_callback is checkpoint_callback
    assert checkpoint_callback.best_model_path == str(tmp_path / "store" / "weights.ckpt")
    assert float(checkpoint_callback.best_model_score) == 1.0


@pytest.mark.parametrize("k, mode, expected_epochs", [
    (1, "min", [3]),
    (2, "min", [3, 4]),
    (3, "min", [1, 3, 4]),
    (2, "max", [0, 2]),
    (-1, "min", [0, 1, 2, 3, 4]),
])
def test_top_k_files_are_exactly_the_k_best(tmp_path, k, mode, expected_epochs):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}", monitor="val_loss", mode=mode, save_top_k=k)
    fit([cb])
    assert names(tmp_path / "ck") == [f"epoch={e}.ckpt" for e in expected_epochs]
    assert set(cb.kept) == {str(tmp_path / "ck" / f"epoch={e}.ckpt") for e in expected_epochs}
    best = 3 if mode == "min" else 0
    assert cb.best_model_path == str(tmp_path / "ck" / f"epoch={best}.ckpt")


def test_top_k_zero_saves_nothing_but_last(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=0, save_last=True)
    trainer = fit([cb])
    assert names(tmp_path / "ck") == ["last.ckpt"]
    assert header_step(tmp_path / "ck" / "last.ckpt") == trainer.global_step == 40


def test_without_monitor_the_k_newest_are_kept(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=2)
    fit([cb])
    assert names(tmp_path / "ck") == ["epoch=3-step=32.ckpt", "epoch=4-step=40.ckpt"]


def test_last_is_the_newest_state_from_the_first_save_on_and_a_real_file(tmp_path):
    seen = []

    class Watch(rs.Callback):
        def on_train_epoch_end(self, trainer, module):
            last = tmp_path / "ck" / "last.ckpt"
            seen.append(header_step(last) if last.exists() else None)

    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_last=True)
    fit([Watch(), cb])
    last = tmp_path / "ck" / "last.ckpt"
    assert not last.is_symlink() and last.is_file()
    # Watch runs before the checkpoint callback: it sees the previous epoch's save
    assert seen == [None, 8, 16, 24, 32]
    assert header_step(last) == 40


def test_filename_template_with_metric(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{step}-{val_loss:.4f}", monitor="val_loss", save_top_k=1)
    fit([cb], root=tmp_path / "runs")
    assert [n for n in names(tmp_path) if n.endswith(".ckpt")] == ["epoch=3-step=32-val_loss=1.0000.ckpt"]


@pytest.mark.parametrize("kwargs, expected_steps", [
    ({"every_n_train_steps": 12}, [12, 24, 36]),
    ({"every_n_epochs": 2}, [16, 32]),
    ({"every_n_train_steps": 12, "every_n_epochs": 2}, [12, 16, 24, 32, 36]),
])
def test_when_to_save(tmp_path, kwargs, expected_steps):
    saved = []

    class Spy(ModelCheckpoint):
        def _save(self, trainer, at_epoch_end):
            saved.append(trainer.global_step)
            super()._save(trainer, at_epoch_end)

    cb = Spy(dirpath=tmp_path / "ck", save_top_k=-1, **kwargs)
    fit([cb])
    # and one more at the end of fit, because the state moved on after the last scheduled save
    assert saved == expected_steps + ([40] if expected_steps[-1] != 40 else [])
    assert len(names(tmp_path / "ck")) == len(saved)


def test_train_time_interval(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("resumable.callbacks.checkpoint.time.monotonic", lambda: clock[0])

    class Tick(rs.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            clock[0] += 10.0  # each batch takes "10 seconds"

    cb = ModelCheckpoint(dirpath=tmp_path / "ck", train_time_interval=timedelta(seconds=25), save_top_k=-1,
                         filename="{step}")
    fit([Tick(), cb], max_epochs=1)
    assert names(tmp_path / "ck") == ["step=3.ckpt", "step=6.ckpt", "step=8.ckpt"]


def test_save_weights_only(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", save_weights_only=True, save_top_k=1)
    trainer = fit([cb], max_epochs=1)
    checkpoint = rs.load_checkpoint(cb.best_model_path)
    assert "optimizer_states" not in checkpoint and "trainer" not in checkpoint
    assert set(checkpoint["state_dict"]) == {"layer.weight", "layer.bias"}
    model = TinyModel()
    with pytest.raises(rs.CheckpointError, match="weights only.*load_from_checkpoint"):
        rs.Trainer(max_epochs=2, enable_progress_bar=False).fit(model, ckpt_path=cb.best_model_path)
    assert trainer.global_step == 8


def test_two_callbacks_keep_separate_state_and_files(tmp_path):
    best = ModelCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor="val_loss", save_top_k=1)
    periodic = ModelCheckpoint(dirpath=tmp_path, filename="periodic-{step}", every_n_train_steps=10, save_top_k=2)
    fit([best, periodic], root=tmp_path / "runs")
    assert [n for n in names(tmp_path) if n.endswith(".ckpt")] == [
        "best-epoch=3.ckpt", "periodic-step=30.ckpt", "periodic-step=40.ckpt"]
    checkpoint = rs.load_checkpoint(tmp_path / "periodic-step=40.ckpt")
    assert set(checkpoint["callbacks"]) == {best.state_key, periodic.state_key}
    assert checkpoint["callbacks"][best.state_key]["best_model_path"] == str(tmp_path / "best-epoch=3.ckpt")


def test_identical_callbacks_are_refused():
    with pytest.raises(rs.ConfigurationError, match="share the state key"):
        rs.Trainer(callbacks=[ModelCheckpoint(monitor="val_loss"), ModelCheckpoint(monitor="val_loss")])


def test_nan_or_inf_is_never_best(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}", monitor="val_loss", save_top_k=2)
    fit([cb], scores=[float("nan"), 3, float("inf"), float("-inf"), 2])
    assert names(tmp_path / "ck") == ["epoch=1.ckpt", "epoch=4.ckpt"]
    assert float(cb.best_model_score) == 2.0


def test_monitor_never_logged_is_a_clear_error(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_acc")
    with pytest.raises(rs.ConfigurationError, match="'val_acc' was never logged; logged metrics: .*'val_loss'"):
        fit([cb])


def test_a_file_this_run_did_not_write_is_never_overwritten_or_deleted(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "weights.ckpt").write_bytes(b"someone else's file")
    (folder / "other.ckpt").write_bytes(b"unrelated")
    cb = ModelCheckpoint(filepath=folder / "weights.ckpt", monitor="val_loss", save_best_only=True)
    fit([cb])
    assert (folder / "weights.ckpt").read_bytes() == b"someone else's file"
    assert (folder / "other.ckpt").read_bytes() == b"unrelated"
    assert names(folder) == ["other.ckpt", "weights-v1.ckpt", "weights.ckpt"]
    assert cb.best_model_path == str(folder / "weights-v1.ckpt")


def test_trainer_save_checkpoint_and_plain_safetensors(tmp_path):
    from safetensors.torch import load_file

    model = TinyModel()
    trainer = rs.Trainer(max_epochs=1, enable_progress_bar=False, checkpoint_callback=False)
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    checkpoint = rs.load_checkpoint(tmp_path / "manual.ckpt")
    assert checkpoint["global_step"] == 8 and checkpoint["epoch"] == 1
    weights = {k: v for k, v in load_file(tmp_path / "manual.ckpt").items() if not k.startswith("#")}
    assert set(weights) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v)


def test_default_is_one_last_checkpoint_per_epoch_in_the_run_folder():
    trainer = rs.Trainer(max_epochs=2, enable_progress_bar=False)
    trainer.fit(TinyModel())
    assert names(trainer.experiment.checkpoint_dir) == ["last.ckpt"]
    assert header_step(trainer.experiment.checkpoint_dir / "last.ckpt") == 16
    assert os.path.isabs(trainer.checkpoint_callback.last_model_path) or trainer.checkpoint_callback.last_model_path


def test_best_is_still_right_after_a_resume(tmp_path):
    scores = [5, 3, 4, 1, 2, 6]

    def run(max_epochs, version=None):
        cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}", monitor="val_loss", save_top_k=2,
                             save_last=True)
        model = Scripted(scores)
        model.runs = 0

        class Skip(rs.Callback):  # the scripted scores continue where the first run stopped
            def on_fit_start(self, trainer, module):
                module.runs = trainer.current_epoch

        trainer = rs.Trainer(max_epochs=max_epochs, enable_progress_bar=False, callbacks=[Skip(), cb],
                             experiment=rs.Experiment(tmp_path / "runs", version=version))
        trainer.fit(model)
        return cb

    run(3)
    cb = run(6, version=0)
    assert names(tmp_path / "ck") == ["epoch=3.ckpt", "epoch=4.ckpt", "last.ckpt"]
    assert cb.best_model_path == str(tmp_path / "ck" / "epoch=3.ckpt") and float(cb.best_model_score) == 1
    assert math.isclose(cb.kept[str(tmp_path / "ck" / "epoch=4.ckpt")], 2)


def test_the_checkpoint_a_run_resumed_from_is_never_deleted(tmp_path):
    def run(max_epochs, scores, ckpt_path=None, version=None):
        cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}", monitor="val_loss", save_top_k=1)
        trainer = rs.Trainer(max_epochs=max_epochs, enable_progress_bar=False, callbacks=[cb],
                             experiment=rs.Experiment(tmp_path / "runs", version=version))
        trainer.fit(Scripted(scores), ckpt_path=ckpt_path)
        return cb

    run(2, [5, 3])
    resumed_from = tmp_path / "ck" / "epoch=1.ckpt"
    cb = run(4, [1, 0.5], ckpt_path=resumed_from, version=0)  # both later epochs beat it
    assert resumed_from.exists()
    assert cb.best_model_path == str(tmp_path / "ck" / "epoch=3.ckpt")
    assert names(tmp_path / "ck") == ["epoch=1.ckpt", "epoch=3.ckpt"]


def test_resuming_another_runs_checkpoint_never_touches_that_runs_files(tmp_path):
    def run(root, max_epochs, scores, ckpt_path=None):
        cb = ModelCheckpoint(dirpath=tmp_path / "shared", filename="{epoch}", monitor="val_loss", save_top_k=1,
                             save_last=True)
        trainer = rs.Trainer(max_epochs=max_epochs, enable_progress_bar=False, callbacks=[cb],
                             experiment=rs.Experiment(root))
        trainer.fit(Scripted(scores), ckpt_path=ckpt_path)
        return trainer, cb

    first, cb_a = run(tmp_path / "a", 2, [5, 3])
    before = {p.name: p.read_bytes() for p in (tmp_path / "shared").iterdir()}
    assert sorted(before) == ["epoch=1.ckpt", "last.ckpt"]
    second, cb_b = run(tmp_path / "b", 4, [2, 1, 9], ckpt_path=cb_a.last_model_path)  # a new run, from a's state
    assert second.global_step == 32
    after = {p.name: p.read_bytes() for p in (tmp_path / "shared").iterdir()}
    for name, content in before.items():  # run a's best and last: neither deleted nor overwritten
        assert after[name] == content, name
    assert cb_b.best_model_path == str(tmp_path / "shared" / "epoch=3.ckpt")
    assert cb_b.last_model_path == str(tmp_path / "shared" / "last-v1.ckpt")
    assert sorted(after) == ["epoch=1.ckpt", "epoch=3.ckpt", "last-v1.ckpt", "last.ckpt"]


@pytest.mark.parametrize("make_folder", [True, False])
def test_seed_filepath_naming_a_folder_puts_files_inside_it(tmp_path, make_folder):
    folder = tmp_path / "weights"  # no file suffix: a folder, whether it exists yet or not
    if make_folder:
        folder.mkdir()
    cb = ModelCheckpoint(filepath=folder, monitor="val_loss", mode="min", save_top_k=2, verbose=False)
    fit([cb])
    assert names(folder) == ["epoch=3-step=32.ckpt", "epoch=4-step=40.ckpt"]
    assert cb.best_model_path == str(folder / "epoch=3-step=32.ckpt")


def test_save_best_only_needs_a_monitor_and_filepath_excludes_dirpath(tmp_path):
    with pytest.raises(rs.ConfigurationError, match="save_best_only=True needs monitor="):
        ModelCheckpoint(filepath=tmp_path / "w.ckpt", save_best_only=True)
    with pytest.raises(rs.ConfigurationError, match="either filepath= .* or dirpath="):
        ModelCheckpoint(filepath=tmp_path / "w.ckpt", dirpath=tmp_path)
    with pytest.raises(rs.ConfigurationError, match="save_top_k must be an int >= -1"):
        ModelCheckpoint(save_top_k=-2)
    with pytest.raises(rs.ConfigurationError, match="mode must be 'min' or 'max'"):
        ModelCheckpoint(monitor="val_loss", mode="best")


def test_a_best_and_last_saved_together_are_written_once(tmp_path, monkeypatch):
    writes = []
    real_save = rs.callbacks.checkpoint.ckpt_api.save_checkpoint
    monkeypatch.setattr(rs.callbacks.checkpoint.ckpt_api, "save_checkpoint",
                        lambda state, path: (writes.append(Path(path).name), real_save(state, path)))
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}", monitor="val_loss", save_top_k=1,
                         save_last=True)
    fit([cb], scores=[5, 3, 4], max_epochs=3)
    # epochs 0 and 1 improve (best written, last copied from it); epoch 2 does not (last written)
    assert writes == ["epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"]
    assert (tmp_path / "ck" / "last.ckpt").read_bytes() != (tmp_path / "ck" / "epoch=1.ckpt").read_bytes()
    assert header_step(tmp_path / "ck" / "last.ckpt") == 24 and header_step(cb.best_model_path) == 16
