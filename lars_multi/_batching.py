"""Batches of layers for the step: grouped by a key, cut by bytes.

Backends choose the batches the step runs over (``batches(ws)``): each of one
dtype and device, and, where it pays, of a bounded size, so that a batch stays
in cache from its norms to its last pass (CPUs) or its float32 copies of half
layers stay small (every device). This is the one place that cuts them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

Key = TypeVar("Key", bound=Hashable)


def batches(
    ws: Sequence[Any],
    key: Callable[[Any], Key],
    nbytes: Callable[[Any], int],
    budget: Callable[[Key], int | None],
) -> list[list[int]]:
    """The indices of ``ws`` grouped by ``key(w)`` (in order of first appearance),
    each group cut into consecutive batches of at most ``budget(key)`` bytes
    (``nbytes(w)`` each; a larger layer is a batch of its own; None: uncut)."""
    if len(ws) == 1:
        return [[0]]
    keys = list(map(key, ws))
    if keys.count(keys[0]) == len(keys):  # one group (the common case)
        groups = {keys[0]: list(range(len(ws)))}
    else:
        groups = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
    cut: list[list[int]] = []
    for group_key, indices in groups.items():
        limit = budget(group_key)
        if limit is None:
            cut.append(indices)
            continue
        members = ws if len(indices) == len(ws) else [ws[i] for i in indices]
        batch: list[int] = []
        total = 0
        for i, size in zip(indices, map(nbytes, members)):
            if batch and total + size > limit:
                cut.append(batch)
                batch, total = [], 0
            batch.append(i)
            total += size
        cut.append(batch)
    return cut
