"""The `resumable` command (also `python -m resumable`)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the `resumable` command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="resumable", description="A PyTorch training loop that resumes exactly.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="train the built-in digits classifier (pass --help for its options)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        demo_main(rest)
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
