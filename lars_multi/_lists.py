"""Lists of layers by index: taking and putting the items of a batch, joining lists,
asking whether two lists hold the same objects, without a copy on the common path
(a batch that is a whole list, or a run of consecutive layers)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from . import _registry


def each_is(xs: Sequence[Any], ys: Sequence[Any]) -> bool:
    """Whether each item of ``xs`` is the item of ``ys`` beside it (the lists of one
    length): at once where they are one list (except while torch.compile traces, as
    Dynamo cannot trace ``is`` between two lists), else item by item."""
    if xs is ys and not _registry.is_compiling():
        return True
    return all(map(operator.is_, xs, ys))


def is_run(indices: Sequence[int]) -> bool:
    """Whether the ascending ``indices`` are consecutive (a slice takes them), and some."""
    return bool(indices) and indices[-1] - indices[0] == len(indices) - 1


def take(xs: Sequence[Any], batch: Sequence[int]) -> list[Any]:
    """The items of ``xs`` at the ascending indices ``batch``, as a list (``xs``
    itself when it is a list and ``batch`` is all of it; a slice of it when
    ``batch`` is a run of consecutive indices)."""
    if type(xs) is list and is_run(batch):
        return xs if len(batch) == len(xs) else xs[batch[0] : batch[-1] + 1]
    return [xs[i] for i in batch]


def put(xs: list[Any], batch: Sequence[int], values: Sequence[Any]) -> None:
    """Set the items of ``xs`` at the ascending indices ``batch`` to ``values`` (the
    inverse of :func:`take`)."""
    if is_run(batch):
        xs[batch[0] : batch[-1] + 1] = values
        return
    for i, value in zip(batch, values):
        xs[i] = value


def concat(*parts: list[Any]) -> list[Any]:
    """The lists one after the other: the one list itself where every other is empty
    (as :func:`take`, no copy on the common path: layers without a gradient are rare)."""
    filled = [part for part in parts if part]
    return filled[0] if len(filled) == 1 else [x for part in parts for x in part]


def now_and_later(indices: list[int], later: set[int], n: int) -> list[list[int]]:
    """``indices`` (of ``n`` items) in two parts, each in its order: those not in
    ``later``, then those in it (an empty part left out; ``indices`` itself where
    one part is all of them)."""
    if not later or len(later) == n:
        return [indices]
    parts = ([i for i in indices if i not in later], [i for i in indices if i in later])
    return [part for part in parts if part]
