"""The `resumable` command (also `python -m resumable`)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["main"]

_CHECK_RESUME_HELP = """\
Train the model that FACTORY returns for M optimizer steps straight through; train it again,
stop after step N, resume from that checkpoint with a fresh model and trainer; report whether the
two runs match bit for bit (batches, random generators, weights, optimizer state, metrics) or the
first thing that differed and what to do about it. Exit status: 0 exact, 1 not exact, 2 usage.

SCRIPT_OR_MODULE is a Python file (path/to/train.py) or an importable module (mypkg.train).
FACTORY (default: make_model) is a function in it that takes no arguments and returns a
resumable.Module whose train_dataloader() (and val_dataloader(), if any) build the data. The
file is imported, not run: code under `if __name__ == "__main__":` does not run.

example: resumable check-resume train.py:build --stop-at 5 --steps 12 --trainer-kwargs '{"accumulate_grad_batches": 2}'
"""


def main(argv: list[str] | None = None) -> int:
    """Run the `resumable` command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="resumable", description="A PyTorch training loop that resumes exactly.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="train the built-in digits classifier (pass --help for its options)",
                   add_help=False)
    check = sub.add_parser("check-resume", help="check that a model's run resumes exactly (pass --help for more)",
                           description=_CHECK_RESUME_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("target", metavar="SCRIPT_OR_MODULE[:FACTORY]")
    check.add_argument("--stop-at", type=int, required=True, metavar="N", help="stop after this optimizer step")
    check.add_argument("--steps", type=int, required=True, metavar="M", help="optimizer steps in all")
    check.add_argument("--seed", type=int, default=0, help="the runs' seed (default 0)")
    check.add_argument("--trainer-kwargs", type=json.loads, default={}, metavar="JSON",
                       help="a JSON object of Trainer arguments, e.g. '{\"accumulate_grad_batches\": 3}'")
    check.add_argument("--workdir", help="keep the run folders in a new folder here (default: a temporary one)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        demo_main(rest)
        return 0
    if args.command == "check-resume":
        if rest:
            check.error(f"unrecognized arguments: {' '.join(rest)}")
        return _check_resume(args)
    parser.print_help()
    return 2


def _check_resume(args: argparse.Namespace) -> int:
    from .errors import ResumableError
    from .verify import verify_resume

    try:
        factory = _load_factory(args.target)
        if not isinstance(args.trainer_kwargs, dict):
            raise ValueError(f"--trainer-kwargs must be a JSON object, got {args.trainer_kwargs!r}")
        report = verify_resume(factory, stop_at_step=args.stop_at, total_steps=args.steps,
                               trainer_kwargs=args.trainer_kwargs, workdir=args.workdir, seed=args.seed)
    except (ResumableError, ImportError, OSError, ValueError, AttributeError) as err:
        print(f"resumable check-resume: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.exact else 1


def _load_factory(target: str) -> Callable[[], Any]:
    """The FACTORY of `SCRIPT_OR_MODULE[:FACTORY]`; a file is imported under its own name, with its
    folder on sys.path, so its siblings import and DataLoader workers can unpickle its classes."""
    source, _, name = target.rpartition(":") if ":" in target else (target, "", "make_model")
    name = name or "make_model"
    path = Path(source)
    if source.endswith(".py") or path.is_file():
        if not path.is_file():
            raise OSError(f"no such file: {source}")
        sys.path.insert(0, os.path.abspath(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(source)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise AttributeError(f"{source} has no function {name!r}; name one with {source}:FUNCTION (it takes no "
                             "arguments and returns a resumable.Module)")
    return factory


if __name__ == "__main__":
    sys.exit(main())
