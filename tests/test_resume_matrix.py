"""Exact resume as a user breaks it: real processes, SIGKILLed, restarted by the same command.

Each case of `resume_cases.py` is killed at randomly chosen optimizer steps (right after that
step's checkpoint is written), restarted each time by rerunning its command, and compared bit
for bit with an uninterrupted run: final weights, optimizer, scheduler and RNG states,
`metrics.csv`, and the files `ModelCheckpoint` keeps (names, and each kept checkpoint's weights
and optimizer state). Four chains die at chosen points around a save instead (before the first
checkpoint, before a save, between a kept file and `last.ckpt`, before evicting an old file), and
one case is killed by the parent at random wall-clock moments, which can land anywhere.

The uninterrupted runs of all cases share one process; the chains run side by side on a small
thread pool, so the whole matrix takes about a minute on two cores.

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
SAVE_KILL_CASE = "shuffle_dropout"  # top-3 retention by train_loss: kept files are written and evicted often
SAVE_KILLS = {  # name: (flag, step; None draws one from the first half of the run)
    "kill_before_the_first_save": ("--kill-before-save", 1),  # step 1's metrics row is written, no checkpoint
    "kill_before_a_save": ("--kill-before-save", None),
    "kill_between_kept_file_and_last": ("--kill-mid-save", None),
    "kill_before_evicting": ("--kill-before-evict", None),
}
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
    cmd = command(root, case, kill_at=kills)
    return run_chain(Outcome(case, kills, root=root), [cmd] * (len(kills) + 1), reference)


def save_kill_chain(name: str, root: Path, reference: Future) -> Outcome:
    """Kill SAVE_KILL_CASE once around a save (see `resume_cases.kill_inside_saves`), then rerun."""
    flag, step = SAVE_KILLS[name]
    step = step or random.Random(f"{SEED}-{name}").randrange(1, CASES[SAVE_KILL_CASE].steps // 2)
    cmd = command(root, SAVE_KILL_CASE) + [flag, str(step)]
    return run_chain(Outcome(name, [f"{flag} {step}"], root=root), [cmd, cmd], reference, SAVE_KILL_CASE)


def run_chain(outcome: Outcome, commands: list[list[str]], reference: Future, case: str | None = None) -> Outcome:
    """Run `commands` in turn; all but the last must die by SIGKILL; then compare with the reference."""
    case = case or outcome.case
    for cmd in commands:
        outcome.codes.append(run_logged(cmd, outcome.root / "log.txt"))
    expected = [-signal.SIGKILL] * (len(commands) - 1) + [0]
    if outcome.codes != expected:
        outcome.problems.append(f"exit codes {outcome.codes}, expected {expected}; log: {tail(outcome.root / 'log.txt')}")
    else:
        outcome.problems += compare_runs(reference.result() / case, outcome.root / case)
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
def matrix(request, tmp_path_factory) -> dict[str, Future]:
    """The kill chains of the selected tests, all started at once on a small pool (the processes
    dominate the time), and the uninterrupted runs of every case in one process."""
    base = tmp_path_factory.mktemp("matrix")
    params = [getattr(getattr(item, "callspec", None), "params", {}) for item in request.session.items
              if item.module is request.module]
    selected = {p["job"] for p in params if "job" in p}
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))

    def straight() -> Path:
        code = run_logged(command(base / "straight", *CASES), base / "straight.log")
        assert code == 0, f"the uninterrupted runs failed: {tail(base / 'straight.log')}"
        return base / "straight"

    for folder in ("straight", *selected):
        (base / folder).mkdir()
    reference = pool.submit(straight)
    jobs = {}
    for job in sorted(selected, key=lambda name: name != WALL_CLOCK_CASE):  # the longest chain first
        if job == WALL_CLOCK_CASE:
            jobs[job] = pool.submit(wall_clock_chain, job, base / job, reference)
        elif job in SAVE_KILLS:
            jobs[job] = pool.submit(save_kill_chain, job, base / job, reference)
        else:
            jobs[job] = pool.submit(step_kill_chain, job, base / job, reference)
    yield jobs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("job", STEP_CASES)
def test_killed_after_random_steps_ends_bit_identical(matrix, job):
    outcome = matrix[job].result()
    assert not outcome.problems, outcome.report()


@pytest.mark.parametrize("job", sorted(SAVE_KILLS))
def test_killed_inside_a_save_ends_bit_identical(matrix, job):
    outcome = matrix[job].result()
    assert not outcome.problems, outcome.report()


@pytest.mark.parametrize("job", [WALL_CLOCK_CASE])
def test_killed_at_random_moments_ends_bit_identical(matrix, job):
    outcome = matrix[job].result()
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
