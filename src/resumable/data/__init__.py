"""The trainer-owned sample order and a resumable position in it.

:class:`ResumableLoader` wraps a user's ``DataLoader`` (or any re-iterable of batches) and
yields ``(batch_idx, batch)`` for an epoch from any batch position. For a map-style dataset the
order of an epoch is a pure function of ``(seed, epoch)``, so a resumed run starts at batch ``k``
by computing the order and slicing it: no earlier sample is loaded. See ``docs/resume.md`` for
the full contract: what is exact, under which conditions, and how a custom dataset or sampler
joins in.

The package, from the top down: ``loader`` (:class:`ResumableLoader`, its state and the checks
on load), ``sources`` (what it wraps: a map-style dataset, an IterableDataset or a list of
batches, and the rebuilt DataLoader), ``orders`` (the sequential, random and custom sample
orders, and the sampler that plays one), ``common`` (seed purposes and checks they share).
"""

from .loader import STATE_VERSION, ResumableLoader
from .sources import SeededDataset

__all__ = ["ResumableLoader", "SeededDataset", "STATE_VERSION"]
