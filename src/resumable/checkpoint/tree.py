"""A checkpoint's state as a JSON tree plus named tensors, and back. Never pickle.

The encoding (``docs/format.md`` has the full list): ``None``, bools, strings, ints and finite
floats are themselves; lists are JSON arrays; a dict whose keys are all strings, none starting with
``$``, is a JSON object. Everything else is a *marker*, a JSON object with exactly one key, which
starts with ``$`` (``{"$tensor": name}``, ``{"$tuple": [...]}``, ...). Plain objects never have
a ``$`` key — a user dict with one is itself stored through the ``$dict`` marker — so markers and
user data cannot be confused.

Loading never imports anything: an enum or dataclass comes back as its class only when the class's
module is already in ``sys.modules``; otherwise as plain data (the enum's value, a dict of fields).

`tree_encode` writes this encoding (`flatten_state`) and `tree_decode` reads it back
(`unflatten_state`); this module re-exports both and the limits.
"""

from __future__ import annotations

from resumable.checkpoint.tree_decode import unflatten_state
from resumable.checkpoint.tree_encode import MAX_DEPTH, MAX_JSON_DEPTH, flatten_state
from resumable.checkpoint.tree_encode import TENSOR_DTYPES as TENSOR_DTYPES  # for format.py

__all__ = ["flatten_state", "unflatten_state", "MAX_DEPTH", "MAX_JSON_DEPTH"]
