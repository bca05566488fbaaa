"""What the loader, its sources and its orders share: seed purposes, a sentinel, two checks."""

from __future__ import annotations

from typing import Any

from resumable.errors import StateMismatchError


# Purposes mixed into derive_seed so that the streams never coincide.
_ORDER, _SAMPLE, _WORKERS, _CUSTOM = 0, 1, 2, 3


_END = object()


def _len_or_none(obj: Any) -> int | None:
    try:
        return len(obj)
    except (TypeError, NotImplementedError):
        return None


def _check_same(what: str, saved: Any, found: Any) -> None:
    if saved != found:
        raise StateMismatchError(
            f"ResumableLoader {what}: the checkpoint has {saved!r:.200}, this loader has "
            f"{found!r:.200}; build the loader as the original run did, or start a fresh run."
        )
