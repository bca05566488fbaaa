"""Chaos: a training run SIGKILLed at random moments, and restarted, until it finishes.

The run (`train_script.py --saves every-step`) saves after every step, keeps 2 checkpoints plus
`last.ckpt`, so kills land during steps, during writes and renames, during deletions and during
startup and resume. After every kill the test checks, from the outside:

* every file under a final `*.ckpt` name loads and verifies (no partial or damaged checkpoint);
* the restart resumed from the newest of them, or started fresh when there was none;
* no progress was lost: the restart resumed at or after the last step whose saves had returned;
* no restart warned about a damaged checkpoint or failed on the run lock.

When a run finishes, its final weights and metrics.csv must equal an uninterrupted run's bit for
bit. `pytest --chaos-kills 300` deals more kills (default 24). The random seed is printed on
failure; `CHAOS_SEED=<seed>` replays the same kill times.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import torch

import resumable as rs

SCRIPT = Path(__file__).with_name("train_script.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two cores: torch's thread pool would only contend
EPOCHS = 16  # 128 steps: several kills a lap; a run that finishes before the kills are dealt starts another
MAX_DELAY_S = 0.3  # kill times are uniform in [0, MAX_DELAY_S] after the fork: startup, resume, steps


def test_random_sigkills_never_lose_progress_and_resume_exactly(tmp_path, request):
    kills_wanted = request.config.getoption("--chaos-kills")
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(2**32)))
    chaos = Chaos(tmp_path, random.Random(seed))
    try:
        chaos.run(kills_wanted)
    except AssertionError as err:
        raise AssertionError(f"chaos seed {seed} (replay: CHAOS_SEED={seed} pytest {__file__}): {err}") from err
    finally:
        chaos.close()
    print(f"chaos seed {seed}: {chaos.summary()}")
    assert chaos.kills >= kills_wanted


class Chaos:
    def __init__(self, tmp_path: Path, rng: random.Random) -> None:
        self.tmp, self.rng = tmp_path, rng
        self.kills = self.laps = 0
        self.landed = {"before resume": 0, "with a write in flight": 0, "elsewhere": 0}
        self.reference = tmp_path / "reference"
        finished = run_command(self.reference)
        assert finished.returncode == 0, finished.stdout + finished.stderr
        self.server = subprocess.Popen([sys.executable, str(SCRIPT), "--serve"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, env=ENV)

    def run(self, kills_wanted: int) -> None:
        root, round_ = self._new_lap(), 0
        while self.kills < kills_wanted:
            code = self._round(root, round_, kill_after=self.rng.uniform(0.0, MAX_DELAY_S))
            round_ += 1
            if code == 0:  # finished before the kills were dealt: check it, then another lap
                self._check_finished(root)
                root, round_ = self._new_lap(), 0
        # the last restart is the real command, in a fresh interpreter, run to the end
        expected = newest_valid(root)
        finished = run_command(root)
        assert finished.returncode == 0, f"the final rerun failed: {finished.stdout[-2000:]}{finished.stderr}"
        check_restart(finished.stdout + finished.stderr, expected, "final rerun")
        self._check_finished(root)

    def _new_lap(self) -> Path:
        self.laps += 1
        return self.tmp / f"lap{self.laps}"

    def _round(self, root: Path, round_: int, kill_after: float) -> int:
        expected = newest_valid(root)
        log = root.parent / f"{root.name}-round{round_}.log"
        request = {"log": str(log), "argv": script_args(root), "kill_after": kill_after}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        code = int(reply.split()[1]) if reply.startswith("EXIT ") else None
        text = log.read_text() if log.exists() else ""
        where = f"round {round_} of {root.name} (killed {kill_after:.3f}s after start)"
        assert code in (0, -9), f"{where}: exit code {code}; log:\n{text[-3000:]}"
        check_restart(text, expected, where)
        if code == -9:
            self.kills += 1
            self._classify(root, text)
        durable = [int(s) for s in re.findall(r"^BEGIN step=(\d+)$", text, re.M) if int(s) > 0]
        if durable:  # the next restart must not go back before the last step whose saves returned
            after = newest_valid(root)
            assert after is not None and after[0] >= max(durable), \
                f"{where}: step {max(durable)} was saved, but the newest valid checkpoint is {after}"
        return code

    def _classify(self, root: Path, text: str) -> None:
        folder = checkpoint_dir(root)
        in_flight = folder.is_dir() and any(".tmp-" in name for name in os.listdir(folder))
        if "START" not in text:
            self.landed["before resume"] += 1
        elif in_flight:
            self.landed["with a write in flight"] += 1
        else:
            self.landed["elsewhere"] += 1

    def _check_finished(self, root: Path) -> None:
        ours = torch.load(root / "final.pt")
        theirs = torch.load(self.reference / "final.pt")
        for name, tensor in theirs.items():
            assert torch.equal(ours[name], tensor), f"{root.name}: weight {name} differs from the uninterrupted run"
        metrics = "run/default/version_0/metrics.csv"
        assert (root / metrics).read_text() == (self.reference / metrics).read_text(), \
            f"{root.name}: metrics.csv differs from the uninterrupted run's"

    def summary(self) -> str:
        return f"{self.kills} kills in {self.laps} lap(s); kills landed {self.landed}"

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


def script_args(root: Path) -> list[str]:
    return [str(root), "--epochs", str(EPOCHS), "--saves", "every-step"]


def run_command(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *script_args(root)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def checkpoint_dir(root: Path) -> Path:
    return root / "run" / "default" / "version_0" / "checkpoints"


def newest_valid(root: Path) -> tuple[int, ...] | None:
    """The newest checkpoint's position; fails if any file under a final name does not verify."""
    positions = []
    for path in sorted(checkpoint_dir(root).glob("*.ckpt")):
        try:
            checkpoint = rs.load_checkpoint(path)
        except rs.CheckpointError as err:
            raise AssertionError(f"a committed checkpoint is damaged: {err}") from err
        positions.append(tuple(checkpoint["summary"]["position"]))
    return max(positions, default=None)


def check_restart(text: str, expected: tuple[int, ...] | None, where: str) -> None:
    """The process resumed from the newest valid checkpoint (or started fresh with none)."""
    assert "skipping damaged" not in text and "RunLockedError" not in text, f"{where}:\n{text[-3000:]}"
    start = re.search(r"^START resumed_from=(\S+) step=(\d+)$", text, re.M)
    if start is None:
        return  # killed before it got that far
    if expected is None:
        assert start[1] == "None", f"{where}: no checkpoint existed, yet it resumed from {start[1]}"
    else:
        assert start[1] != "None" and int(start[2]) == expected[0], \
            f"{where}: the newest valid checkpoint is at {expected}, but it resumed: {start[0]}"
