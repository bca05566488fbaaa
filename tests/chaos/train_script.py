"""The training run the preemption and chaos tests kill, as a user would run it.

    python tests/chaos/train_script.py ROOT [--epochs N] [--sleep S] [--saves {default,every-step,best}]
                                       [--user-sigterm-handler]

trains `TinyModel` (dropout, shuffling and an LR scheduler on, so exactness covers every RNG) in
the run folder `ROOT/run/version_0`, resuming from its newest checkpoint: rerunning the same
command after any kill carries on. It prints, flushed, one line per event the tests wait on:

    START resumed_from=<path|None> step=<global step restored>
    BEGIN step=<n>      a batch begins: every save of step n has returned (is durable)
    STEP step=<n>       a batch's hooks ran (before the ModelCheckpoint, which is last)
    USER-HANDLER <signum>   the handler installed before fit ran (--user-sigterm-handler)
    DONE step=<n>       fit returned; the final weights are in ROOT/final.pt

`--saves`: "default" is the trainer's own `last.ckpt` at epoch ends; "every-step" saves after
every step with `save_top_k=2` and `save_last=True`, so saves, renames and deletions never stop;
"best" keeps the best by train_loss without `save_last`.

`python train_script.py --serve` is a fork server for the chaos test: it imports torch once, then
for each request read on stdin — JSON `{"log": path, "argv": [...], "kill_after": seconds|null}` —
forks a child that runs `main(argv)` with its output appended to `log`, SIGKILLs it `kill_after`
seconds after the fork unless it has exited, and prints `EXIT <code>` (a negative code is the
signal that killed it). The server reaps the child only after deciding, so the pid it kills is
always its own child. A forked child is a new process with no open files and no state from earlier
children, but skips the seconds torch takes to import.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for models.py

import resumable as rs  # noqa: E402
from models import TinyModel  # noqa: E402


class SlowModel(TinyModel):
    """A TinyModel whose steps take at least `sleep` seconds, so a signal lands mid-epoch."""

    def __init__(self, sleep: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.sleep = sleep

    def training_step(self, batch, batch_idx):
        if self.sleep:
            time.sleep(self.sleep)
        return super().training_step(batch, batch_idx)


class Report(rs.Callback):
    """Prints the events the tests poll for."""

    def on_fit_start(self, trainer, module):
        say(f"START resumed_from={trainer.resumed_from} step={trainer.global_step}")

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        say(f"BEGIN step={trainer.global_step}")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        say(f"STEP step={trainer.global_step}")


def say(line: str) -> None:
    print(line, flush=True)


def checkpoint_callback(saves: str):
    if saves == "every-step":
        return rs.ModelCheckpoint(every_n_train_steps=1, save_top_k=2, save_last=True)
    if saves == "best":
        return rs.ModelCheckpoint(monitor="train_loss", every_n_train_steps=3, save_top_k=1)
    return True


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--saves", choices=("default", "every-step", "best"), default="default")
    parser.add_argument("--user-sigterm-handler", action="store_true")
    args = parser.parse_args(argv)
    if args.user_sigterm_handler:
        signal.signal(signal.SIGTERM, lambda signum, frame: say(f"USER-HANDLER {signum}"))
    torch.manual_seed(123)  # the model's initial weights
    model = SlowModel(sleep=args.sleep, dropout=0.3, scheduler="step")
    trainer = rs.Trainer(max_epochs=args.epochs, seed=7, enable_progress_bar=False, log_every_n_steps=1,
                         experiment=rs.Experiment(args.root + "/run", version=0), callbacks=[Report()],
                         checkpoint_callback=checkpoint_callback(args.saves))
    trainer.fit(model)
    torch.save(model.state_dict(), os.path.join(args.root, "final.pt"))
    say(f"DONE step={trainer.global_step}")


def serve() -> None:
    import torch._dynamo  # noqa: F401  (the first optimizer imports it: seconds, once, not per child)

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request["log"], request["argv"])
        deadline = None if request["kill_after"] is None else time.monotonic() + request["kill_after"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)  # not reaped yet, so `pid` is still our child
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.0005)
        say(f"EXIT {os.waitstatus_to_exitcode(status)}")


def _child(log: str, argv: list[str]) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:])
