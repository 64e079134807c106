"""Batches of layers for the step: grouped by a key, cut by size.

Backends choose the batches the step runs over (``batches(ws)``): each of one
dtype and device, and, where it pays, of a bounded size, so that a batch stays
in cache from its norms to its last pass (CPUs) or its float32 copies of half
layers stay small (every device). This is the one place that cuts them.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import _registry

Key = TypeVar("Key", bound=Hashable)

# Half layers (float16, bfloat16) are computed with float32 copies of w and g: where a
# compiler or a fused call holds every copy of its batch at once (JAX, TensorFlow),
# batches of them are cut at about this many bytes of weights (or one layer, if larger).
HALF_CHUNK_BYTES = 2 << 20

# A CPU batch takes at least this many bytes of weights, and this many where the
# machine's caches are not known.
CPU_BATCH_BYTES = 4 << 20
_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")  # (Linux)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@functools.cache
def cpu_batch_bytes(caches: Path = _CACHES) -> int:
    """How many bytes of weights a batch of layers takes on this CPU: an eighth of
    its largest cache, so that a batch's weights, gradients, momentum buffers and
    outputs fill at most half of it, from the norms to the last pass (a 300 MiB
    cache: 37.5 MiB); at least ``CPU_BATCH_BYTES``, which is also the size where the
    caches' sizes are not known (read from Linux's ``caches`` folder, once)."""
    largest = largest_cache_bytes(caches)
    return CPU_BATCH_BYTES if largest is None else max(CPU_BATCH_BYTES, largest // 8)


def largest_cache_bytes(caches: Path = _CACHES) -> int | None:
    """The size of the largest data (or unified) cache of CPU 0, as Linux lists them
    under ``caches`` (``index*/type`` and ``index*/size``, as ``"2048K"``); None where
    none is listed or a size cannot be read."""
    sizes = []
    try:
        for index in caches.glob("index*"):
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip()
            sizes.append(int(text[:-1]) * _UNITS[text[-1]] if text[-1:] in _UNITS else int(text))
    except (OSError, ValueError):
        return None
    return max(sizes, default=None)


def batches(
    ws: Sequence[Any],
    key: Callable[[Any], Key],
    size: Callable[[Any], int],
    budget: Callable[[Key], int | None],
) -> list[Sequence[int]]:
    """The indices of ``ws`` grouped by ``key(w)`` (in order of first appearance),
    each group cut into consecutive batches of at most ``budget(key)`` (bytes, or
    elements: the unit of ``size(w)``; a larger layer is a batch of its own; None: uncut).
    A run of consecutive indices is a ``range``."""
    if len(ws) == 1:
        return [range(1)]
    keys = list(map(key, ws))
    groups: Mapping[Key, Sequence[int]]
    if keys.count(keys[0]) == len(keys):  # one group (the common case)
        groups = {keys[0]: range(len(ws))}
    else:
        lists: dict[Key, list[int]] = {}
        for i, k in enumerate(keys):
            lists.setdefault(k, []).append(i)
        groups = lists
    cut: list[Sequence[int]] = []
    for group_key, indices in groups.items():
        limit = budget(group_key)
        if limit is None:
            cut.append(indices)
            continue
        members = ws if len(indices) == len(ws) else [ws[i] for i in indices]
        ends = list(itertools.accumulate(map(size, members)))  # the size up to each layer's end
        start = 0
        while start < len(ends):
            stop = _batch_end(ends, start, limit)
            cut.append(indices[start:stop])
            start = stop
    return cut


def _batch_end(ends: list[int], start: int, limit: int) -> int:
    """Where the batch from layer ``start`` ends: after the layers that fit in
    ``limit`` (at least one). ``ends``: the size up to each layer's end."""
    bound = (ends[start - 1] if start else 0) + limit
    if _registry.is_compiling():  # (Dynamo cannot trace bisect: the same search, layer by layer)
        stop = start + 1
        while stop < len(ends) and ends[stop] <= bound:
            stop += 1
        return stop
    return bisect.bisect_right(ends, bound, lo=start + 1)
