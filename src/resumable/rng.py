"""Every global random number generator a run draws from: seed, capture, restore.

The global generators are Python's ``random``, NumPy's legacy global ``np.random``, torch's CPU
generator and one generator per CUDA device. An exact resume restores all of them to the values
captured at the checkpoint; a failure to do so raises, never passes with a log line.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from resumable.errors import ConfigurationError, StateMismatchError

__all__ = [
    "MAX_SEED",
    "seed_everything",
    "capture_rng_state",
    "restore_rng_state",
    "derive_seed",
    "isolated_rng",
    "seed_global_generators",
    "validate_seed",
]

#: Largest accepted seed (64 bits, what torch.manual_seed takes).
MAX_SEED = 2**64 - 1
_MAX_32 = 2**32 - 1

_KEYS = ("python", "numpy", "torch", "cuda")


def validate_seed(seed: object, what: str = "seed") -> int:
    """Return ``seed`` as an int if it is one in ``[0, MAX_SEED]``; raise ConfigurationError if not."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigurationError(
            f"{what} must be an int in [0, {MAX_SEED}], found {type(seed).__name__} {seed!r}; "
            f"pass an integer such as {what}=0."
        )
    if not 0 <= int(seed) <= MAX_SEED:
        raise ConfigurationError(
            f"{what} must be in [0, 2**64 - 1], found {seed}; pick a seed in that range."
        )
    return int(seed)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global generator, torch's CPU and every CUDA generator.

    Raises ConfigurationError if ``seed`` is not an int in ``[0, 2**64 - 1]``. A seed below
    ``2**32`` seeds NumPy exactly as ``np.random.seed(seed)``; a larger one seeds it from both
    32-bit halves. CUDA devices are seeded when CUDA is available (``torch.manual_seed`` seeds
    them all, lazily if CUDA is not yet initialised).
    """
    seed = validate_seed(seed)
    random.seed(seed)
    np.random.seed(_numpy_seed(seed))
    torch.manual_seed(seed)


def _numpy_seed(seed: int) -> int | list[int]:
    return seed if seed <= _MAX_32 else [seed & _MAX_32, seed >> 32]


def capture_rng_state() -> dict[str, Any]:
    """Return the state of every global generator, to hand to :func:`restore_rng_state`.

    Layout: ``{"python": random.getstate(), "numpy": np.random.get_state(),
    "torch": torch.get_rng_state(), "cuda": [ByteTensor per CUDA device]}``; ``"cuda"`` is an
    empty list when CUDA is not available. Values are tuples, ints, floats, strings, NumPy
    arrays and tensors; the checkpoint serializer stores those.
    """
    cuda = []
    if torch.cuda.is_available():
        cuda = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put every global generator back to ``state``, the exact inverse of :func:`capture_rng_state`.

    Everything is validated before anything is applied, so a malformed state raises
    StateMismatchError (naming the key and what is wrong) and leaves the generators untouched.
    Lists where tuples were saved are accepted (some serializers turn tuples into lists).
    If the state holds CUDA generators for a different number of devices than are present, one
    warning names both counts and the devices present in both are restored; the CPU generators
    are always restored.
    """
    if not isinstance(state, Mapping):
        raise StateMismatchError(
            f"RNG state must be a dict with keys {list(_KEYS)}, found {type(state).__name__}; "
            "pass the dict capture_rng_state() returned."
        )
    missing = [k for k in _KEYS if k not in state]
    extra = sorted(str(k) for k in state if k not in _KEYS)
    if missing or extra:
        raise StateMismatchError(
            f"RNG state keys: expected {list(_KEYS)}, missing {missing}, unexpected {extra}; "
            "pass the dict capture_rng_state() returned, unchanged."
        )
    python = _checked_python(state["python"])
    numpy_state = _checked_numpy(state["numpy"])
    cpu = _checked_byte_tensor(state["torch"], "torch")
    cuda = _checked_cuda(state["cuda"])

    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu)
    _restore_cuda(cuda)


def derive_seed(*parts: int) -> int:
    """Mix non-negative ints into one 64-bit seed; equal parts give equal seeds on every machine.

    Used to draw independent streams from ``(seed, purpose, epoch, ...)`` without touching any
    global generator.
    """
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


def seed_global_generators(seed64: int) -> None:
    """Seed Python, NumPy and torch-CPU global generators from a 64-bit seed (no CUDA).

    Cheaper than :func:`seed_everything`: meant for data-loading worker processes, which reseed
    before every sample.
    """
    random.seed(seed64)
    np.random.seed(_numpy_seed(seed64))
    torch.default_generator.manual_seed(seed64)


@contextmanager
def isolated_rng(seed64: int | None = None) -> Iterator[None]:
    """Run a block without moving the global Python, NumPy and torch-CPU generators.

    Inside the block the generators are seeded from ``seed64`` (a 64-bit int), or left as they
    are when it is None; on exit, normal or not, they are put back to their values on entry.
    CUDA generators are neither seeded nor saved: code run here must not draw from them.
    """
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    if seed64 is not None:
        seed_global_generators(seed64)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def _checked_python(value: Any) -> tuple:
    value = _as_tuple(value)
    try:
        random.Random().setstate(value)
    except Exception as exc:  # any refusal means the state is not a getstate() value
        raise StateMismatchError(
            f"RNG state 'python' is not a random.getstate() value ({exc}); found "
            f"{type(value).__name__}. The checkpoint's RNG state is damaged; resume from another "
            "checkpoint."
        ) from exc
    return value


def _checked_numpy(value: Any) -> Any:
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple) and len(value) == 5:
        value = (value[0], np.asarray(value[1], dtype=np.uint32), *value[2:])
    try:
        np.random.RandomState().set_state(value)
    except Exception as exc:  # any refusal means the state is not a get_state() value
        raise StateMismatchError(
            f"RNG state 'numpy' is not an np.random.get_state() value ({exc}); found "
            f"{type(value).__name__}. The checkpoint's RNG state is damaged; resume from another "
            "checkpoint."
        ) from exc
    return value


def _checked_byte_tensor(value: Any, key: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        found = f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(
            value, torch.Tensor
        ) else type(value).__name__
        raise StateMismatchError(
            f"RNG state {key!r} must be a 1-D uint8 tensor (torch.get_rng_state()), found {found}; "
            "the checkpoint's RNG state is damaged; resume from another checkpoint."
        )
    value = value.detach().to("cpu").contiguous()
    if key == "torch":
        try:
            torch.Generator().set_state(value)
        except (RuntimeError, ValueError) as exc:
            raise StateMismatchError(
                f"RNG state 'torch' has {value.numel()} bytes, which torch's CPU generator refuses "
                f"({exc}); resume from a checkpoint written by a compatible torch."
            ) from exc
    return value


def _checked_cuda(value: Any) -> list[torch.Tensor]:
    if not isinstance(value, (list, tuple)):
        raise StateMismatchError(
            f"RNG state 'cuda' must be a list of per-device uint8 tensors, found "
            f"{type(value).__name__}; the checkpoint's RNG state is damaged."
        )
    return [_checked_byte_tensor(v, f"cuda[{i}]") for i, v in enumerate(value)]


def _restore_cuda(states: list[torch.Tensor]) -> None:
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(states) != present:
        warnings.warn(
            f"The checkpoint holds CUDA RNG states for {len(states)} device(s) but "
            f"{present} are present; restoring the first {min(len(states), present)}. "
            "Random draws on the other devices will differ from the original run.",
            RuntimeWarning,
            stacklevel=3,
        )
    for index, state in enumerate(states[:present]):
        try:
            torch.cuda.set_rng_state(state, index)
        except RuntimeError as exc:
            raise StateMismatchError(
                f"Could not restore the CUDA RNG state of device {index} ({exc}); "
                "resume on a machine with a compatible CUDA setup."
            ) from exc
