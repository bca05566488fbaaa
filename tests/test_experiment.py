"""Experiment: versioned run folders, hyperparameters, metrics.csv."""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
from pathlib import Path

import resumable as rs


def test_versions_count_up_and_reopen(tmp_path):
    a = rs.Experiment(tmp_path, name="exp")
    b = rs.Experiment(tmp_path, name="exp")
    assert (a.version, b.version) == (0, 1)
    assert a.path == tmp_path / "exp" / "version_0" and a.path.is_dir()
    again = rs.Experiment(tmp_path, name="exp", version=0)
    assert again.path == a.path
    assert rs.Experiment(tmp_path, name="exp").version == 2


def test_tag_writes_plain_hyperparameters(tmp_path):
    class Color(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Opt:
        lr: float = 0.1

    exp = rs.Experiment(tmp_path)
    exp.tag({"color": Color.RED, "opt": Opt(), "path": Path("/data"), "sizes": (1, 2)})
    saved = json.loads((exp.path / "hparams.json").read_text())
    assert saved == {"color": "red", "opt": {"lr": 0.1}, "path": "/data", "sizes": [1, 2]}
    assert rs.Experiment(tmp_path, version=exp.version).hparams == saved


def test_metrics_csv_grows_columns_and_is_readable_while_written(tmp_path):
    exp = rs.Experiment(tmp_path)
    exp.log({"loss": 1.5}, step=1)
    with open(exp.metrics_path) as f:  # readable between two writes
        assert list(csv.DictReader(f)) == [{"step": "1", "loss": "1.5"}]
    exp.log({"loss": 1.25, "acc": 0.5}, step=2)
    exp.log({"acc": 0.75})
    rows = exp.read_metrics()
    assert rows == [
        {"step": "1", "loss": "1.5", "acc": ""},
        {"step": "2", "loss": "1.25", "acc": "0.5"},
        {"step": "2", "loss": "", "acc": "0.75"},
    ]
    exp.truncate_metrics(1)
    assert rs.Experiment(tmp_path, version=exp.version).metric_rows == 1


def test_trainer_makes_a_default_experiment_under_default_root_dir(tmp_path):
    from models import TinyModel

    trainer = rs.Trainer(max_epochs=1, enable_progress_bar=False, default_root_dir=tmp_path / "out")
    trainer.fit(TinyModel())
    assert trainer.experiment.path == tmp_path / "out" / "default" / "version_0"
    hparams = json.loads((trainer.experiment.path / "hparams.json").read_text())
    assert hparams["lr"] == 0.1 and hparams["batch_size"] == 8
    assert (trainer.experiment.checkpoint_dir / "last.ckpt").is_file()
