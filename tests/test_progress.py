"""The progress bar: a tqdm bar on a terminal, one line per epoch elsewhere, nothing when disabled."""

from __future__ import annotations

import io

import resumable as rs
from models import TinyModel


class Terminal(io.StringIO):
    def isatty(self):
        return True


def fit_with(bar=None, **kwargs):
    callbacks = [bar] if bar else []
    rs.Trainer(max_epochs=2, checkpoint_callback=False, callbacks=callbacks, **kwargs).fit(TinyModel())


def test_one_line_per_epoch_when_not_a_terminal():
    out = io.StringIO()
    fit_with(rs.ProgressBar(stream=out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 0 | step 8 | loss=") and "batch/s" in lines[0]
    assert lines[1].startswith("epoch 1 | step 16")


def test_a_bar_on_a_terminal():
    out = Terminal()
    fit_with(rs.ProgressBar(stream=out, refresh_seconds=0))
    text = out.getvalue()
    assert "Epoch 0" in text and "Epoch 1" in text and "8/8" in text and "loss=" in text and "step=16" in text


def test_disabled(capsys):
    fit_with(enable_progress_bar=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
