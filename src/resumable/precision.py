"""Where the model runs and in which precision: device choice, autocast, gradient scaling."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from .errors import ConfigurationError

__all__ = ["resolve_device", "Precision"]


def resolve_device(accelerator: str) -> torch.device:
    """`"cpu"`, `"cuda"`/`"gpu"` or `"auto"` (CUDA when available) as a `torch.device`.

    Asking for CUDA on a machine without a usable GPU is a `ConfigurationError`.
    """
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"accelerator={accelerator!r} but no CUDA GPU is available here (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'no'}); use accelerator='cpu' or 'auto'"
            )
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class Precision:
    """Autocast and (for float16) a `GradScaler`, chosen once for a run."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.scaler: Any = None
        if name == "16-mixed":
            self.scaler = torch.amp.GradScaler(device.type)

    def autocast(self) -> ContextManager[Any]:
        """The context the forward pass (training_step/validation_step) runs in."""
        if self.name == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.name == "16-mixed":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()
