"""The exceptions resumable raises, in one tree.

::

    ResumableError                      base of everything raised on purpose
    ├── ConfigurationError (ValueError) bad arguments, bad hooks, bad user code; raised before training
    ├── CheckpointError                 a checkpoint cannot be written, read, verified or applied
    │   ├── CheckpointCorruptError      the bytes are damaged: truncated, bit-flipped, not our format
    │   ├── CheckpointVersionError      written by a newer resumable than this one
    │   ├── StateMismatchError          the checkpoint does not fit the model/optimizer being restored
    │   └── UnsupportedStateError       state handed to a save that has no safe on-disk form
    ├── StorageError                    the disk refused: full, read-only, missing folder
    └── RunLockedError                  another process holds the run folder

Every message says what was expected, what was found, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ResumableError",
    "ConfigurationError",
    "CheckpointError",
    "CheckpointCorruptError",
    "CheckpointVersionError",
    "StateMismatchError",
    "UnsupportedStateError",
    "StorageError",
    "RunLockedError",
]


class ResumableError(Exception):
    """Base class of every error resumable raises on purpose."""


class ConfigurationError(ResumableError, ValueError):
    """A Trainer, Module, callback or Experiment was given something it cannot use."""


class CheckpointError(ResumableError):
    """A checkpoint could not be written, read, verified or applied."""


class CheckpointCorruptError(CheckpointError):
    """The checkpoint's bytes are damaged or are not a resumable checkpoint at all."""


class CheckpointVersionError(CheckpointError):
    """The checkpoint was written in a format newer than this resumable can read."""


class StateMismatchError(CheckpointError):
    """The checkpoint's state does not fit the objects it is being loaded into."""


class UnsupportedStateError(CheckpointError, TypeError):
    """A value handed to a save has no safe (non-pickle) on-disk form."""


class StorageError(ResumableError, OSError):
    """The storage refused a write, read or delete (disk full, permission denied, ...)."""


class RunLockedError(ResumableError):
    """Another live process is writing the same run folder."""
