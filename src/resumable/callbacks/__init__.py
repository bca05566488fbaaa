"""Callbacks: code run at fixed points of the loop (`Callback`), checkpointing (`ModelCheckpoint`),
the progress bar (`ProgressBar`)."""

from .base import Callback, StopTraining
from .checkpoint import ModelCheckpoint
from .progress import ProgressBar

__all__ = ["Callback", "ModelCheckpoint", "ProgressBar", "StopTraining"]
