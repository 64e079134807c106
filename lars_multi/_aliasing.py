"""When outputs may be written as the step goes, and when they must wait.

A layer's output may be written as soon as that layer is computed only if no
input read later lives in its memory. Outputs that share memory with another
layer's weights, with any gradient, or with each other (tied weights, views,
``out=g.view()``, a partial overlap) are written only once every layer has
been computed. Identity covers immutable arrays (JAX, TensorFlow); the
backend's ``memory_roots`` and ``overlaps`` cover memory (NumPy base buffers,
torch storages), which objects alone do not show.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from . import _registry
from ._errors import LarsMultiValueError
from ._protocol import Backend

Key = TypeVar("Key", bound=Hashable)


def late_outputs(ops: Backend, outs: Sequence[Any], ws: Sequence[Any], gs: Sequence[Any]) -> set[int]:
    """The places of the ``outs`` that must be written once every layer is computed:
    each output that is another output, a gradient or another layer's weights, or
    that shares memory with an array other than itself (the others may be written
    as their layers go: no input read later lies in their memory)."""
    if not must_write_late(ops, outs, ws, gs):  # (the common case, asked of the lists at once)
        return set()
    if _registry.is_compiling():
        return {i for i in range(len(outs)) if _is_another(i, outs, ws, gs)}
    places: dict[int, list[int]] = {}
    for i, o in enumerate(outs):
        places.setdefault(id(o), []).append(i)
    late = {i for same in places.values() if len(same) > 1 for i in same}
    late.update(i for g in gs for i in places.get(id(g), ()))
    late.update(i for k, x in enumerate(ws) for i in places.get(id(x), ()) if i != k)
    in_place = all(map(operator.is_, outs, ws))
    for arrays, outputs in _sharing_buffers(ops, outs, ws, gs, in_place):
        for pair in _overlapping_pairs(ops, arrays, outputs):
            late.update(i for k in pair if outputs[k] for i in places[id(arrays[k])])
    return late


def must_write_late(ops: Backend, outs: Sequence[Any], ws: Sequence[Any], gs: Sequence[Any]) -> bool:
    """Whether writing ``outs`` one by one could change an input not yet read."""
    if _registry.is_compiling():  # (id() would make torch.compile guard on each input object: a new
        return _same_objects(outs, ws, gs)  # gradient each step would recompile)
    out_ids = set(map(id, outs))
    if len(out_ids) != len(outs) or not out_ids.isdisjoint(map(id, gs)):
        return True
    # A weight may be its own output (out=w), not another layer's.
    in_place = all(map(operator.is_, outs, ws))
    if not in_place:
        position = dict(zip(map(id, outs), range(len(outs))))
        if any(position.get(id(x), i) != i for i, x in enumerate(ws)):
            return True
    return _shares_memory(ops, outs, ws, gs, in_place)


def _same_objects(outs: Sequence[Any], ws: Sequence[Any], gs: Sequence[Any]) -> bool:
    """Whether an output is another output, a gradient, or another layer's weights, by
    ``is`` (which a tracer answers from the inputs' aliasing, not their identities)."""
    return any(_is_another(i, outs, ws, gs) for i in range(len(outs)))


def _is_another(i: int, outs: Sequence[Any], ws: Sequence[Any], gs: Sequence[Any]) -> bool:
    """Whether output ``i`` is another output, a gradient, or another layer's weights."""
    o = outs[i]
    return any(o is x for x in (*outs[:i], *outs[i + 1 :], *gs, *ws[:i], *ws[i + 1 :]))


def write_all(
    ops: Backend, targets: Sequence[Any], values: Sequence[Any], label: Callable[[int], str]
) -> None:
    """:func:`checked_writes`, written."""
    for target, value in checked_writes(ops, targets, values, label):
        ops.write(target, value)


def run_checked(
    ops: Backend,
    steps: Sequence[tuple[bool, Callable[[], None]]],
    checks: Callable[[], list[tuple[Any, Any]]],
) -> None:
    """Run ``steps`` (whether a step writes its outputs as it goes, the step) so that no
    check follows a write: the steps computed aside first, then ``checks()`` (which may
    raise, and gives the late writes, checked: :func:`checked_writes`), then the steps
    that write as they go, then the late writes."""
    for writes_now, step in steps:
        if not writes_now:
            step()
    late = checks()
    for writes_now, step in steps:
        if writes_now:
            step()
    for target, value in late:
        ops.write(target, value)


def checked_writes(
    ops: Backend, targets: Sequence[Any], values: Sequence[Any], label: Callable[[int], str]
) -> list[tuple[Any, Any]]:
    """Each value with its target (None: no target), where the target can be written
    and is not the value itself: what was not written as the step went (late, or
    computed as new arrays). Raises where two targets share memory but would receive
    different values (``label(i)`` names target ``i`` in the error): no order of
    writes gives both their result. Nothing is written: asked before any write."""
    pending = [
        i
        for i, (target, value) in enumerate(zip(targets, values))
        if target is not None and value is not target and ops.unwritable(target) is None
    ]
    if len(pending) > 1:
        _check_no_conflict(ops, [targets[i] for i in pending], [values[i] for i in pending], pending, label)
    return [(targets[i], values[i]) for i in pending]


def _check_no_conflict(
    ops: Backend, targets: list[Any], values: list[Any], indices: list[int], label: Callable[[int], str]
) -> None:
    """Raise where two targets share memory and their values differ: the same
    array given twice (tied weights with other gradients or rates, a momentum
    buffer that is a parameter or another parameter's buffer), or overlapping views."""
    roots = ops.memory_roots(targets)
    groups: dict[Hashable, list[int]] = {}
    for k, (target, root) in enumerate(zip(targets, roots)):
        # Arrays that own their memory share it only with themselves.
        groups.setdefault(("own", id(target)) if root is None else root, []).append(k)
    for members in groups.values():
        if len(members) < 2:
            continue

        def member_label(i: int, members: list[int] = members) -> str:
            return label(indices[members[i]])

        def elements(x: Any) -> Hashable:  # (two objects over the same elements: one array)
            view = ops.view_of(x)
            return id(x) if view is None else view

        places = check_handles(
            ops, [targets[k] for k in members], [values[k] for k in members], member_label, elements
        )
        distinct = [members[i] for i in places]
        pair = _overlapping(ops, [targets[k] for k in distinct], [True] * len(distinct))
        if pair is not None:
            j, k = sorted(distinct[i] for i in pair)
            raise _conflict(label(indices[j]), label(indices[k]), "overlap in memory")


def check_untouched(
    ops: Backend, targets: Sequence[Any], keep: Sequence[Any], label: Callable[[int], str]
) -> None:
    """Raise where one of ``targets`` (to be written in place) shares memory with one of
    ``keep``: arrays that must keep their values (the parameters and momentum buffers
    of layers not stepped). ``label(i)`` names item ``i`` of ``targets`` followed by ``keep``."""
    places = [i for i, t in enumerate(targets) if ops.unwritable(t) is None]
    if not places or not keep:
        return
    xs = [*(targets[i] for i in places), *keep]
    names = [*places, *range(len(targets), len(targets) + len(keep))]
    n = len(places)
    groups: dict[Hashable, list[int]] = {}
    for k, (x, root) in enumerate(zip(xs, ops.memory_roots(xs))):
        groups.setdefault(("own", id(x)) if root is None else root, []).append(k)
    for members in groups.values():
        if not members[0] < n <= members[-1]:  # (nothing written, or nothing kept, in this buffer)
            continue
        # (one array both written and kept overlaps itself: its spans meet)
        pair = _overlapping(ops, [xs[k] for k in members], [k < n for k in members])
        if pair is not None:
            j, k = sorted(members[i] for i in pair)
            raise LarsMultiValueError(
                f"{label(names[j])} and {label(names[k])} share memory: writing the one would change "
                "the other, which this step keeps as it is (a layer without a gradient keeps its "
                "parameters and momentum buffer); pass arrays that share no memory"
            )


def check_handles(
    ops: Backend,
    handles: Sequence[Any],
    values: Sequence[Any],
    label: Callable[[int], str],
    key: Callable[[Any], Hashable] = id,
) -> list[int]:
    """Raise where one handle (``lm.Array``, ``keras.Variable``, an array; ``key``
    says which are one) is given for two layers whose new values differ: it can hold
    only one. (Arrays written in place are also checked by :func:`checked_writes`, by
    memory.) The first place of each distinct handle."""
    first: dict[Hashable, int] = {}
    for i, handle in enumerate(handles):
        j = first.setdefault(key(handle), i)
        if j != i:
            same = _same_values(ops, values[j], values[i])
            if not same:
                raise _conflict(label(j), label(i), _DIFFERENT if same is False else _TRACED)
    return list(first.values())


_DIFFERENT = "are the same array, and the step gives them different values"
_TRACED = (
    "are the same array, whose two new values cannot be compared while the step is traced "
    "(tf.function, jax.jit)"
)


def _conflict(first: str, second: str, detail: str) -> LarsMultiValueError:
    if "momentum" in first or "momentum" in second:  # (an optimizer's buffer is one of them)
        advice = "give each parameter a momentum buffer of its own, as init makes them"
    else:
        advice = "pass arrays that share no memory (tied weights once, with their gradients summed)"
    return LarsMultiValueError(
        f"{first} and {second} {detail}: each would overwrite the other's result; {advice}"
    )


def _same_values(ops: Backend, a: Any, b: Any) -> bool | None:
    """Whether two new values are equal; None where they cannot be read (traced)."""
    if a is b:
        return True
    try:
        left, right = ops.to_numpy(a), ops.to_numpy(b)
    except Exception:  # (symbolic tensors and tracers have no values to read)
        return None
    return bool(np.array_equal(left, right, equal_nan=True))


def array_values(ops: Backend, values: Sequence[Any]) -> list[Any]:
    """The arrays among hyper-parameter values (learning rates, weight decays):
    inputs like the gradients, which may lie in an output's memory (a float or
    None is a value of its own)."""
    types = list(map(type, values))
    if types.count(float) + types.count(type(None)) == len(values):
        return []
    return [v for v in values if v is not None and ops.is_native(v)]


def _shares_memory(
    ops: Backend, outs: Sequence[Any], ws: Sequence[Any], gs: Sequence[Any], in_place: bool
) -> bool:
    """Whether an output overlaps the memory of an array other than itself."""
    return any(
        _overlapping(ops, arrays, outputs) is not None
        for arrays, outputs in _sharing_buffers(ops, outs, ws, gs, in_place)
    )


def _sharing_buffers(
    ops: Backend, outs: Sequence[Any], ws: Sequence[Any], gs: Sequence[Any], in_place: bool
) -> list[tuple[list[Any], list[bool]]]:
    """Per buffer that holds an output and another array: its distinct arrays, and
    whether each is an output (arrays in different buffers never overlap: only these
    are compared, byte range against byte range)."""
    # Weights that are their own outputs (in place) are among the outputs.
    inputs = gs if in_place else (*ws, *gs)
    roots = ops.memory_roots([*outs, *inputs])
    out_roots, input_roots = roots[: len(outs)], roots[len(outs) :]
    if out_roots.count(None) == len(out_roots):
        return []
    alone = set(out_roots)
    if len(alone) == len(outs) and None not in alone and alone.isdisjoint(input_roots):
        return []  # each output alone in its buffer, and no input in one
    by_root: dict[Hashable, dict[int, tuple[Any, bool]]] = {}
    for o, root in zip(outs, out_roots):
        if root is not None:
            by_root.setdefault(root, {})[id(o)] = (o, True)
    for x, root in zip(inputs, input_roots):
        sharing = by_root.get(root)
        if sharing is not None:
            sharing.setdefault(id(x), (x, False))
    found = []
    for sharing in by_root.values():
        if len(sharing) > 1:
            arrays, outputs = zip(*sharing.values())
            found.append((list(arrays), list(outputs)))
    return found


def _overlapping(ops: Backend, xs: list[Any], outputs: list[bool]) -> tuple[int, int] | None:
    """Two of the distinct arrays ``xs`` of one buffer that overlap, one of them an
    output (``outputs``), or None."""
    return next(_overlapping_pairs(ops, xs, outputs), None)


def _overlapping_pairs(ops: Backend, xs: list[Any], outputs: list[bool]) -> Iterator[tuple[int, int]]:
    """The pairs of the distinct arrays ``xs`` of one buffer that overlap, one of them
    an output (``outputs``). Pairs whose byte spans meet (found in address order) are
    asked of the backend (``overlaps``: NumPy tells interleaved views, such as a
    matrix's columns, apart), every pair where it gives no spans."""
    spans = ops.byte_spans(xs)
    if spans is None:
        for i, j in itertools.combinations(range(len(xs)), 2):
            if (outputs[i] or outputs[j]) and ops.overlaps(xs[i], xs[j]):
                yield i, j
        return
    reaching: list[tuple[int, int]] = []  # (end, index) of the arrays a later span may meet
    for i in sorted(range(len(xs)), key=lambda i: spans[i][0]):
        low, high = spans[i]
        if low == high:  # empty: reaches nothing
            continue
        reaching = [(end, j) for end, j in reaching if end > low]
        for _, j in reaching:
            if (outputs[i] or outputs[j]) and ops.overlaps(xs[j], xs[i]):
                yield j, i
        reaching.append((high, i))


def overlap_groups(spans: Mapping[Key, tuple[int, int]]) -> dict[Key, int]:
    """A group number for each key of ``spans`` (byte ranges ``[low, high)`` in one
    address space): keys whose ranges meet, directly or through others, share one.
    For memory that several objects may hold (NumPy arrays over another library's
    buffer, torch storages made from NumPy arrays), where identity shows nothing."""
    groups: dict[Key, int] = {}
    number, reach = -1, 0
    # In address order, a range starts a group where it begins at or after every earlier end.
    for key, (low, high) in sorted(spans.items(), key=operator.itemgetter(1)):
        if number < 0 or low >= reach:
            number, reach = number + 1, high
        elif high > reach:
            reach = high
        groups[key] = number
    return groups


# The most elements whose offsets are compared one by one (8 MiB of them).
_MOST_COMPARED = 1 << 20


def elements_overlap(shape: Sequence[int], strides: Sequence[int], itemsize: int) -> bool:
    """Whether two elements of a strided array share memory (``strides`` in bytes):
    a stride of 0, or strides that make blocks overlap (``as_strided``). Decided by
    the strides where, in increasing order, each steps past the block the smaller ones
    span (as every array NumPy or torch makes does); else by every element's offset,
    up to ``_MOST_COMPARED`` elements (more, in such an unusual layout: taken as shared,
    which refuses such an output rather than risk a wrong result)."""
    dims = sorted((abs(stride), n) for n, stride in zip(shape, strides) if n > 1)
    if 0 in shape or not dims:
        return False
    reach = itemsize  # the bytes the block of the dimensions so far spans
    for stride, n in dims:
        if stride < reach:
            break
        reach += stride * (n - 1)
    else:
        return False
    if math.prod(n for _, n in dims) > _MOST_COMPARED:  # (too many to compare: taken as shared)
        return True
    offsets = np.zeros(1, np.int64)
    for stride, n in dims:
        offsets = (offsets[:, None] + np.arange(n, dtype=np.int64) * stride).ravel()
    offsets.sort()
    return bool((np.diff(offsets) < itemsize).any())
