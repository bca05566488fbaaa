"""Stop signals and the emergency checkpoint.

Signals are real: a training script (`tests/chaos/train_script.py`) runs in a subprocess, gets
the signal mid-epoch, must exit with 128 + signum after saving the step it reached, and the same
command rerun must resume there and end bit-identical to a run never stopped. In-process tests
cover handler bookkeeping and the emergency checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import resumable as rs
from resumable import preemption
from models import TinyModel, classification_data

SCRIPT = Path(__file__).parent / "chaos" / "train_script.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 120


# --- real processes, real signals ------------------------------------------------------------------
def command(root: Path, *flags: str) -> list[str]:
    return [sys.executable, str(SCRIPT), str(root), "--epochs", "2", *flags]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final weights of an uninterrupted run (started at once, awaited when first needed)."""
    root = tmp_path_factory.mktemp("reference")
    proc = subprocess.Popen(command(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    done = []

    def weights() -> dict[str, torch.Tensor]:
        if not done:
            out, _ = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, out
            done.append(torch.load(root / "final.pt"))
        return done[0]

    yield weights
    proc.kill()
    proc.wait()


def signal_after(cmd: list[str], wait_for: str, signals: list[int], gap_s: float = 0.0) -> tuple[int, str]:
    """Run `cmd`, send `signals` once a line matching `wait_for` is printed; return (code, output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if re.fullmatch(wait_for, line.strip()):
                for i, sig in enumerate(signals):
                    if i:
                        threading.Event().wait(gap_s)
                    proc.send_signal(sig)
                break
        rest, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, "".join(lines) + rest


def checkpoints(root: Path) -> Path:
    return root / "run" / "default" / "version_0" / "checkpoints"


def last_step_printed(output: str) -> int:
    return int(re.findall(r"^STEP step=(\d+)$", output, re.M)[-1])


@pytest.mark.parametrize("sig, saves", [
    (signal.SIGTERM, "default"),     # the trainer's own checkpoint saves at epoch ends only
    (signal.SIGUSR1, "best"),        # top-1 by train_loss, save_last=False: last.ckpt is still written
    (signal.SIGINT, "every-step"),   # the step was saved already: nothing written twice
], ids=["SIGTERM", "SIGUSR1", "SIGINT"])
def test_signal_mid_epoch_saves_exits_128_plus_signum_and_rerun_is_exact(tmp_path, reference, sig, saves):
    cmd = command(tmp_path, "--sleep", "0.02", "--saves", saves)
    code, output = signal_after(cmd, r"STEP step=3", [sig])
    assert code == 128 + sig, output
    step = last_step_printed(output)
    assert 3 <= step < 8, output  # mid-epoch 0: the signal landed while batches remained
    stop = re.search(rf"stopped by {sig.name} at epoch 0, step {step}; saved (\S+); exiting with code {128 + sig}",
                     output)
    assert stop, output
    saved = rs.load_checkpoint(stop[1].rstrip(";"))
    assert Path(stop[1].rstrip(";")).parent == checkpoints(tmp_path)
    assert (saved["global_step"], saved["summary"]["position"]) == (step, [step, 0, step])

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"START resumed_from={stop[1].rstrip(';')} step={step}" in rerun.stdout
    final = torch.load(tmp_path / "final.pt")
    for name, tensor in reference().items():
        assert torch.equal(final[name], tensor), name


def test_a_second_ctrl_c_raises_keyboard_interrupt_at_once(tmp_path):
    # steps of 0.5 s: both SIGINTs land inside one step, before any step boundary
    code, output = signal_after(command(tmp_path, "--sleep", "0.5"), r"BEGIN step=1",
                                [signal.SIGINT, signal.SIGINT], gap_s=0.1)
    assert code != 0 and "KeyboardInterrupt" in output, output
    assert "stopped by" not in output and "STEP step=2" not in output, output


def test_a_handler_installed_before_fit_is_still_called(tmp_path):
    code, output = signal_after(command(tmp_path, "--sleep", "0.02", "--user-sigterm-handler"), r"STEP step=2",
                                [signal.SIGTERM])
    assert code == 143, output
    assert f"USER-HANDLER {int(signal.SIGTERM)}" in output
    assert (checkpoints(tmp_path) / "last.ckpt").exists()


# --- in-process: handler bookkeeping -----------------------------------------------------------
class SignalAt(rs.Callback):
    """Sends `sig` to this process at the end of batch `at` (global step) and records hooks."""

    def __init__(self, sig: int, at: int, hook: str = "batch"):
        self.sig, self.at, self.hook = sig, at, hook
        self.exceptions: list[BaseException] = []
        self.handlers_during_fit = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.handlers_during_fit = signal.getsignal(signal.SIGTERM)
        if self.hook == "batch" and trainer.global_step == self.at:
            os.kill(os.getpid(), self.sig)

    def on_fit_end(self, trainer, module):
        if self.hook == "fit_end":
            os.kill(os.getpid(), self.sig)

    def on_exception(self, trainer, module, exception):
        self.exceptions.append(exception)


def quiet_trainer(tmp_path, **kwargs):
    kwargs.setdefault("max_epochs", 2)
    return rs.Trainer(seed=0, enable_progress_bar=False, experiment=rs.Experiment(tmp_path, version=0), **kwargs)


def test_in_process_signal_saves_exits_and_restores_handlers(tmp_path, capsys):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    spy = SignalAt(signal.SIGUSR1, at=5)
    trainer = quiet_trainer(tmp_path, callbacks=[spy])
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(TinyModel())
    assert stopped.value.code == 138
    assert spy.exceptions == [stopped.value]  # on_exception hears of the stop
    assert spy.handlers_during_fit not in (before[signal.SIGTERM], None)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert rs.load_checkpoint(trainer.experiment.checkpoint_dir / "last.ckpt")["global_step"] == 5
    assert "stopped by SIGUSR1 at epoch 0, step 5" in capsys.readouterr().err


@pytest.mark.parametrize("on_save_error", ["raise", "warn"])
def test_a_stop_whose_save_fails(tmp_path, capsys, on_save_error):
    (tmp_path / "a-file").write_text("")  # the checkpoint folder cannot be created under a file
    callback = rs.ModelCheckpoint(dirpath=tmp_path / "a-file" / "checkpoints")
    trainer = quiet_trainer(tmp_path, callbacks=[SignalAt(signal.SIGTERM, at=3)], checkpoint_callback=callback,
                            on_save_error=on_save_error)
    if on_save_error == "raise":
        with pytest.raises(rs.StorageError):
            trainer.fit(TinyModel())
        err = capsys.readouterr().err
        assert "stopped by SIGTERM at epoch 0, step 3, but the checkpoint could not be written" in err
    else:
        with pytest.raises(SystemExit) as stopped:
            trainer.fit(TinyModel())
        assert stopped.value.code == 143
        err = capsys.readouterr().err
        assert "stopped by SIGTERM at epoch 0, step 3; nothing saved" in err and "starts from scratch" in err


def test_a_signal_after_the_last_step_exits_once_fit_is_done(tmp_path):
    trainer = quiet_trainer(tmp_path, callbacks=[SignalAt(signal.SIGTERM, at=-1, hook="fit_end")])
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(TinyModel())
    assert stopped.value.code == 143 and trainer.global_step == 16
    assert rs.load_checkpoint(trainer.experiment.checkpoint_dir / "last.ckpt")["global_step"] == 16


def test_no_preemption_signals_installs_nothing(tmp_path):
    spy = SignalAt(signal.SIGTERM, at=-1)
    before = signal.getsignal(signal.SIGTERM)
    quiet_trainer(tmp_path, callbacks=[spy], preemption_signals=()).fit(TinyModel())
    assert spy.handlers_during_fit == before


def test_fit_outside_the_main_thread_installs_nothing_and_trains(tmp_path):
    spy = SignalAt(signal.SIGTERM, at=-1)
    before = signal.getsignal(signal.SIGTERM)
    errors = []
    thread = threading.Thread(target=lambda: _capture(errors, quiet_trainer(tmp_path, callbacks=[spy]).fit,
                                                      TinyModel()))
    thread.start()
    thread.join()
    assert errors == [] and spy.handlers_during_fit == before


def _capture(errors, fn, *args):
    try:
        fn(*args)
    except BaseException as err:  # noqa: BLE001 - reported to the main thread
        errors.append(err)


@pytest.mark.parametrize("kwargs", [
    {"preemption_signals": (signal.SIGKILL,)},
    {"preemption_signals": ("SIGTERM",)},
    {"preemption_signals": signal.SIGTERM},
    {"emergency_checkpoint": "yes"},
    {"on_save_error": "ignore"},
])
def test_bad_reliability_arguments_are_refused(kwargs):
    with pytest.raises(rs.ConfigurationError):
        rs.Trainer(**kwargs)


# --- in-process: the emergency checkpoint --------------------------------------------------------
class Flaky(Dataset):
    """The classification set with noise drawn from the global torch RNG (augmentation, in the main
    process: num_workers=0); raises OSError on the `fail_at`-th sample fetched (from 0)."""

    def __init__(self, fail_at: int | None):
        self.data, self.fail_at, self.fetched = classification_data(64, 8, 3, seed=0), fail_at, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.fetched += 1
        if self.fetched - 1 == self.fail_at:
            raise OSError("input/output error reading a sample")
        x, y = self.data[index]
        return x + 0.01 * torch.randn_like(x), y


class FlakyModel(TinyModel):
    def __init__(self, fail_at=None, fail_in_step=None):
        super().__init__(dropout=0.3, scheduler="step")
        self.fail_at, self.fail_in_step = fail_at, fail_in_step

    def train_dataloader(self):
        return DataLoader(Flaky(self.fail_at), batch_size=8, shuffle=True)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_in_step:
            raise RuntimeError("CUDA out of memory (pretend)")
        return super().training_step(batch, batch_idx)


def fit_flaky(tmp_path, **model_kwargs):
    torch.manual_seed(1)
    model = FlakyModel(**model_kwargs)
    trainer = quiet_trainer(tmp_path, log_every_n_steps=1)
    trainer.fit(model)
    return trainer, model


@pytest.fixture
def snapshot_every_batch(monkeypatch):
    """As if every batch were long enough for the per-boundary RNG snapshot (see preemption.py)."""
    monkeypatch.setattr(preemption, "SNAPSHOT_MIN_BATCH_SECONDS", 0.0)


@pytest.fixture
def snapshot_no_batch(monkeypatch):
    """As if every batch were too short for the per-boundary RNG snapshot."""
    monkeypatch.setattr(preemption, "SNAPSHOT_MIN_BATCH_SECONDS", float("inf"))


def test_an_exception_between_steps_saves_an_exact_emergency_checkpoint(tmp_path, capsys, snapshot_every_batch):
    _, straight = fit_flaky(tmp_path / "straight")
    with pytest.raises(OSError, match="input/output error") as raised:
        fit_flaky(tmp_path / "run", fail_at=8 * 11 + 3)  # batch 3 of epoch 1, after 3 samples drew noise
    note = " ".join(getattr(raised.value, "__notes__", []))
    last = tmp_path / "run" / "default" / "version_0" / "checkpoints" / "last.ckpt"
    assert "saved an exact emergency checkpoint" in note and str(last) in note
    assert "saved an exact emergency checkpoint" in capsys.readouterr().err
    assert rs.load_checkpoint(last)["summary"]["position"] == [11, 1, 3]
    trainer, resumed = fit_flaky(tmp_path / "run")  # the data is fixed; the same command carries on
    assert trainer.resumed_from == str(last)
    for (name, x), (_, y) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(x, y), name


def test_a_failed_fetch_in_process_with_short_batches_writes_nothing_and_says_why(tmp_path, snapshot_no_batch):
    with pytest.raises(OSError, match="input/output error") as raised:
        fit_flaky(tmp_path, fail_at=8 * 11 + 3)
    note = " ".join(raised.value.__notes__)
    assert "no emergency checkpoint" in note and "random draws cannot be undone" in note
    folder = tmp_path / "default" / "version_0" / "checkpoints"
    assert rs.load_checkpoint(folder / "last.ckpt")["global_step"] == 8  # the epoch-0 checkpoint


def test_a_failed_fetch_from_ready_batches_saves_without_a_snapshot(tmp_path, snapshot_no_batch):
    batches = list(DataLoader(classification_data(64, 8, 3, seed=0), batch_size=8))

    class Broken(list):
        def __getitem__(self, index):
            if index == 5:
                raise OSError("input/output error reading a batch")
            return super().__getitem__(index)

    model = TinyModel()
    with pytest.raises(OSError, match="reading a batch") as raised:
        quiet_trainer(tmp_path).fit(model, train_dataloaders=Broken(batches))
    assert "saved an exact emergency checkpoint" in " ".join(raised.value.__notes__)
    checkpoint = rs.load_checkpoint(tmp_path / "default" / "version_0" / "checkpoints" / "last.ckpt")
    assert checkpoint["summary"]["position"] == [5, 0, 5]


def test_an_exception_inside_a_step_writes_nothing_and_says_what_a_rerun_uses(tmp_path):
    with pytest.raises(RuntimeError, match="pretend") as raised:
        fit_flaky(tmp_path, fail_in_step=11)  # epoch 1: the epoch-0 checkpoint exists
    folder = tmp_path / "default" / "version_0" / "checkpoints"
    assert rs.load_checkpoint(folder / "last.ckpt")["global_step"] == 8
    note = " ".join(raised.value.__notes__)
    assert "no emergency checkpoint" in note and str(folder / "last.ckpt") in note


def test_a_failing_emergency_save_never_hides_the_original_exception(tmp_path, snapshot_every_batch):
    (tmp_path / "a-file").write_text("")  # the checkpoint folder cannot be created under a file
    callback = rs.ModelCheckpoint(dirpath=tmp_path / "a-file" / "checkpoints")
    torch.manual_seed(1)
    with pytest.raises(OSError, match="input/output error") as raised:
        quiet_trainer(tmp_path, checkpoint_callback=callback).fit(FlakyModel(fail_at=8 * 3 + 1))
    assert not isinstance(raised.value, rs.StorageError)
    assert "the emergency checkpoint failed (StorageError" in " ".join(raised.value.__notes__)


def test_emergency_checkpoint_false_writes_nothing(tmp_path):
    torch.manual_seed(1)
    trainer = quiet_trainer(tmp_path, emergency_checkpoint=False, checkpoint_callback=False)
    with pytest.raises(OSError):
        trainer.fit(FlakyModel(fail_at=8 * 3 + 1))
    assert not list(trainer.experiment.checkpoint_dir.glob("*.ckpt"))
