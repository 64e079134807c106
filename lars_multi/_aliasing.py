"""When outputs may be written as the step goes, and when they must wait.

A layer's output may be written as soon as that layer is computed only if no
input read later lives in its memory. Outputs that share memory with another
layer's weights, with any gradient, or with each other (tied weights, views,
``out=g.view()``, a partial overlap) are written only once every layer has
been computed. Identity covers immutable arrays (JAX, TensorFlow); the
backend's ``memory_root`` and ``overlaps`` cover memory (NumPy base buffers,
torch storages), which objects alone do not show.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from types import ModuleType
from typing import Any


def must_write_late(ops: ModuleType, outs: Sequence[Any], ws: Sequence[Any], gs: Sequence[Any]) -> bool:
    """Whether writing ``outs`` one by one could change an input not yet read."""
    position = {id(o): i for i, o in enumerate(outs)}
    if len(position) != len(outs) or any(id(g) in position for g in gs):
        return True
    if any(position.get(id(x), i) != i for i, x in enumerate(ws)):
        return True
    return _shares_memory(ops, outs, ws, gs)


def _shares_memory(ops: ModuleType, outs: Sequence[Any], ws: Sequence[Any], gs: Sequence[Any]) -> bool:
    """Whether an output overlaps the memory of an array other than itself."""
    by_root: dict[Hashable, list[tuple[bool, Any]]] = {}
    for is_out, arrays in ((True, outs), (False, ws), (False, gs)):
        for x in arrays:
            root = ops.memory_root(x)
            if root is not None:
                by_root.setdefault(root, []).append((is_out, x))
    for entries in by_root.values():
        if len(entries) < 2:
            continue
        for is_out, o in entries:
            if is_out and any(x is not o and ops.overlaps(o, x) for _, x in entries):
                return True
    return False
