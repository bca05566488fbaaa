"""Exact resume as a user breaks it: real processes, SIGKILLed, restarted by the same command.

Each case of `resume_cases.py` is killed at randomly chosen optimizer steps (right after that
step's checkpoint is written), restarted each time by rerunning its command, and compared bit
for bit with an uninterrupted run: final weights, optimizer, scheduler and RNG states,
`metrics.csv`, and the files `ModelCheckpoint` keeps (names, and each kept checkpoint's weights
and optimizer state). One case is killed by the parent at random wall-clock moments instead,
which can land anywhere: inside a checkpoint write, between two files, before the first save.

The random choices come from one seed, printed in every failure; rerun a failure with
`RESUME_MATRIX_SEED=<seed> pytest tests/test_resume_matrix.py -k <case>`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resumable import load_checkpoint
from resume_cases import CASES

SEED = int(os.environ.get("RESUME_MATRIX_SEED") or random.randrange(2**32))
SCRIPT = Path(__file__).with_name("resume_cases.py")
KILLS_PER_CASE = 2
WALL_CLOCK_CASE = "long_for_wall_clock"
STEP_CASES = sorted(set(CASES) - {WALL_CLOCK_CASE})
TIMEOUT = 180


@dataclass
class Outcome:
    """What happened to one case: the kills, the processes' exit codes, and every difference found."""

    case: str
    kills: list[Any]
    codes: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    root: Path | None = None

    def report(self) -> str:
        head = (f"seed {SEED} (rerun: RESUME_MATRIX_SEED={SEED} pytest {Path(__file__).name} -k {self.case}); "
                f"case {self.case}, kills {self.kills}, exit codes {self.codes}, run folder {self.root}")
        return "\n  ".join([head, *self.problems[:12]])


def command(root: Path, *cases: str, kill_at: list[int] = ()) -> list[str]:
    kills = ["--kill-at-steps", ",".join(map(str, kill_at))] if kill_at else []
    return [sys.executable, str(SCRIPT), str(root), *cases, *kills]


def run_logged(cmd: list[str], log: Path) -> int:
    with open(log, "a") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT).returncode


def step_kill_chain(case: str, root: Path, reference: Future) -> Outcome:
    """Kill `case` at KILLS_PER_CASE random steps, rerunning the same command after each death."""
    rng = random.Random(f"{SEED}-{case}")
    kills = sorted(rng.sample(range(1, CASES[case].steps), KILLS_PER_CASE))
    outcome = Outcome(case, kills, root=root)
    cmd = command(root, case, kill_at=kills)
    for _ in range(len(kills) + 1):
        outcome.codes.append(run_logged(cmd, root / "log.txt"))
    expected = [-signal.SIGKILL] * len(kills) + [0]
    if outcome.codes != expected:
        outcome.problems.append(f"exit codes {outcome.codes}, expected {expected}; log: {tail(root / 'log.txt')}")
    else:
        outcome.problems += compare_runs(reference.result() / case, root / case)
    return outcome


def wall_clock_chain(case: str, root: Path, reference: Future) -> Outcome:
    """Kill `case` twice at a random moment after training started, then let it finish."""
    rng = random.Random(f"{SEED}-{case}")
    outcome = Outcome(case, [], root=root)
    cmd = command(root, case)
    for _ in range(2):
        delay = rng.uniform(0.0, 0.4)
        outcome.kills.append(f"{delay:.3f}s after fit start")
        outcome.codes.append(kill_after_start(cmd, delay, root / "log.txt"))
    outcome.codes.append(run_logged(cmd, root / "log.txt"))
    if outcome.codes[-1] != 0 or any(code not in (0, -signal.SIGKILL) for code in outcome.codes):
        outcome.problems.append(f"exit codes {outcome.codes}; log: {tail(root / 'log.txt')}")
    else:
        outcome.problems += compare_runs(reference.result() / case, root / case)
    return outcome


def kill_after_start(cmd: list[str], delay: float, log: Path) -> int:
    with open(log, "a") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            for line in proc.stdout:
                if line.startswith("fit-start"):
                    break
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            return proc.wait(timeout=TIMEOUT)
        finally:
            proc.kill()
            proc.stdout.close()


def tail(path: Path, chars: int = 1500) -> str:
    return path.read_text()[-chars:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict[str, Future]:
    """Every case's kill chain, started at once on a small pool (the processes dominate the time)."""
    base = tmp_path_factory.mktemp("matrix")
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))

    def straight() -> Path:
        code = run_logged(command(base / "straight", *CASES), base / "straight.log")
        assert code == 0, f"the uninterrupted runs failed: {tail(base / 'straight.log')}"
        return base / "straight"

    for folder in ("straight", *CASES):
        (base / folder).mkdir()
    reference = pool.submit(straight)
    jobs = {case: pool.submit(step_kill_chain, case, base / case, reference) for case in STEP_CASES}
    jobs[WALL_CLOCK_CASE] = pool.submit(wall_clock_chain, WALL_CLOCK_CASE, base / WALL_CLOCK_CASE, reference)
    yield jobs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("case", STEP_CASES)
def test_killed_after_random_steps_ends_bit_identical(matrix, case):
    outcome = matrix[case].result()
    assert not outcome.problems, outcome.report()


def test_killed_at_random_moments_ends_bit_identical(matrix):
    outcome = matrix[WALL_CLOCK_CASE].result()
    assert not outcome.problems, outcome.report()


def test_every_case_of_the_issue_is_in_the_matrix():
    assert {"shuffle_dropout", "augment_workers0", "augment_workers2", "accumulate3", "step_scheduler",
            "val_mid_epoch", "two_optimizers", "iterable_stateful", "max_steps_mid_epoch"} <= set(STEP_CASES)


# --- comparing two runs -------------------------------------------------------------------------
def compare_runs(expected: Path, got: Path) -> list[str]:
    """Every difference between two finished runs of a case, as readable lines (empty: identical)."""
    problems = diff(torch.load(expected / "result.pt", weights_only=False),
                    torch.load(got / "result.pt", weights_only=False), "result")
    run_a, run_b = expected / "run" / "version_0", got / "run" / "version_0"
    for name in ("metrics.csv", "hparams.json"):
        a, b = _read(run_a / name), _read(run_b / name)
        if a != b:
            problems.append(f"{name} differs: {first_difference(a, b)}")
    names_a, names_b = sorted(os.listdir(run_a / "checkpoints")), sorted(os.listdir(run_b / "checkpoints"))
    if names_a != names_b:
        problems.append(f"checkpoint files differ: uninterrupted {names_a}, resumed {names_b}")
    for name in sorted(set(names_a) & set(names_b)):
        a, b = load_checkpoint(run_a / "checkpoints" / name), load_checkpoint(run_b / "checkpoints" / name)
        for key in ("global_step", "state_dict", "optimizer_states"):
            problems += diff(a[key], b[key], f"{name}[{key!r}]")
    return problems


def diff(a: Any, b: Any, where: str) -> list[str]:
    """Differences between two nested values; tensors and arrays must match bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ ({_summary(a, b)})"]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(a, b) else [f"{where}: arrays differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"]
        return [p for k in a for p in diff(a[k], b[k], f"{where}[{k!r}]")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} vs {len(b)}"]
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r:.80} vs {b!r:.80}"]


def _summary(a: Any, b: Any) -> str:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.is_floating_point():
        return f"max abs difference {float((a.double() - b.double()).abs().max()):.3g}"
    return f"{getattr(a, 'shape', type(a).__name__)} vs {getattr(b, 'shape', type(b).__name__)}"


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def first_difference(a: str | None, b: str | None) -> str:
    if a is None or b is None:
        return f"present in uninterrupted run: {a is not None}, in resumed run: {b is not None}"
    lines_a, lines_b = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(lines_a, lines_b)):
        if x != y:
            return f"line {i + 1}: uninterrupted {x!r}, resumed {y!r}"
    return f"{len(lines_a)} lines vs {len(lines_b)} lines"
