"""resumable: a PyTorch training loop whose runs never lose progress and resume exactly.

The public API is what `__all__` lists; everything else is internal.
"""

__version__ = "0.1.0"

from .callbacks import Callback, ModelCheckpoint, ProgressBar, StopTraining
from .checkpoint.api import load_checkpoint
from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointVersionError,
    ConfigurationError,
    ResumableError,
    RunLockedError,
    StateMismatchError,
    StorageError,
    UnsupportedStateError,
)
from .experiment import Experiment
from .module import Module
from .rng import seed_everything
from .trainer import Trainer
from .verify import verify_resume

__all__ = [
    "__version__",
    "Callback",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointVersionError",
    "ConfigurationError",
    "Experiment",
    "ModelCheckpoint",
    "Module",
    "ProgressBar",
    "ResumableError",
    "RunLockedError",
    "StateMismatchError",
    "StopTraining",
    "StorageError",
    "Trainer",
    "UnsupportedStateError",
    "load_checkpoint",
    "seed_everything",
    "verify_resume",
]
