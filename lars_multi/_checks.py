"""Argument checks, shared by every entry point.

Each check names the argument (with its key path), says what was expected and
what was given, and runs before anything is computed or written. Values that
cannot be read on the host (arrays, traced values under ``jax.jit`` and
``tf.function``) are checked for type, shape and dtype only.
"""

from __future__ import annotations

import math
import numbers
import operator
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _registry
from ._array import Array
from ._container import Container
from ._errors import LarsMultiTypeError, LarsMultiValueError, MixedFrameworksError, type_name
from ._lists import take
from ._protocol import Backend, Layout
from ._registry import all_native, backend_of, current_backend, get_backend
from ._step import StepConfig, no_zero_decay
from ._tree import Attribute, Flat, Path, leaves_like

# --- handles: lars_multi.Array and keras.Variable around a native array ---------------


def keras_variable_type() -> Any:
    """``keras.Variable``, if Keras is imported (it is never imported here)."""
    keras = sys.modules.get("keras")
    return getattr(keras, "Variable", None) if keras is not None else None


def unwrap(x: Any) -> Any:
    """The native array inside a handle (``lm.Array``, ``keras.Variable``), else ``x``."""
    if isinstance(x, Array):
        return x.data
    if backend_of(x) is not None:
        return x
    return x.value if _is_keras_variable(x) else x


def unwrap_all(xs: Sequence[Any]) -> list[Any]:
    return list(xs) if all_native(xs) else [unwrap(x) for x in xs]


def owner(x: Any) -> str | None:
    """The backend of a native array or handle, or None."""
    if isinstance(x, Array):
        return x.backend
    name = backend_of(x)
    if name is None and _is_keras_variable(x):
        return backend_of(x.value)
    return name


def write_back(target: Any, new: Any, ops: Backend) -> None:
    """Give a handle its new native array where its own could not be written in place
    (a native ``out``, and a handle's array that can be written, were written already:
    given ``new`` instead, the handle would leave the array the caller gave it, or hold
    the weights themselves where ``new`` is a copy of them written into it)."""
    data = unwrap(target)
    if data is not target and data is not new and ops.unwritable(data) is None:
        return
    if isinstance(target, Array):
        target.data = new
        return
    if backend_of(target) is not None:
        return
    if _is_keras_variable(target) and new is not target.value:
        target.assign(new)


def _is_keras_variable(x: Any) -> bool:
    """Whether ``x`` is a Keras variable (where Keras is loaded), a handle on a native one."""
    variable = keras_variable_type()
    return variable is not None and isinstance(x, variable)


class Entry(NamedTuple):
    """An entry of an ``lm.Container`` given as ``out`` (or of a list in it) that
    holds an array that cannot be written in place: ``handle`` (an ``lm.Array`` on
    that array) takes the result, then the entry takes the handle's new array
    (:func:`fill_entries`)."""

    container: Any  # an lm.Container (keyed by str), or a list in one (by int)
    key: str | int
    handle: Array


def entry_handles(
    out: Any, out_leaves: list[Any], paths: Sequence[Any], ops: Backend
) -> tuple[list[Any], list[Entry]]:
    """``out``'s leaves with a handle in place of each array that cannot be written
    but sits in an ``lm.Container`` or a list in one (whose entry can be replaced),
    and those entries."""
    if not _holds_container(out):
        return out_leaves, []
    leaves, entries = list(out_leaves), []
    # One handle per entry: a Container or list reached twice (tied sub-blocks) names its
    # entries twice, and two results for one entry are refused, as for one array given twice.
    handles: dict[tuple[int, str | int], Array] = {}
    for i, (leaf, path) in enumerate(zip(out_leaves, paths)):
        if backend_of(leaf) is None or ops.unwritable(leaf) is None:
            continue
        parent = _parent(out, path)
        if isinstance(parent, Container | list):
            place = (id(parent), path[-1])
            if place in handles:
                leaves[i] = handles[place]
                continue
            leaves[i] = handles[place] = Array(leaf)
            entries.append(Entry(parent, path[-1], leaves[i]))
    return leaves, entries


def check_no_escape(
    ops: Backend, handles: Sequence[Any], values: Sequence[Any], label: Callable[[int], str]
) -> None:
    """Raise where an ``lm.Array`` holding an array with values would take a value of
    a trace (``jax.jit``, ``tf.function``), which outlives the trace and means nothing
    outside it; a handle made inside the trace may (run once all is computed, before
    any handle is given its value)."""
    for k, (handle, value) in enumerate(zip(handles, values)):
        if isinstance(handle, Array) and ops.is_traced(value) and not ops.is_traced(handle.data):
            raise LarsMultiValueError(
                f"{label(k)}: expected a handle made inside this traced function (jax.jit, tf.function), "
                f"got one holding a {type_name(handle.data)} from outside it, which would be left holding "
                "a value of the trace; return the result from the traced function instead"
            )


def fill_entries(entries: Sequence[Entry]) -> None:
    """Each Container entry takes its handle's new array (written by ``write_back``)."""
    for entry in entries:
        entry.container[entry.key] = entry.handle.data


def _holds_container(tree: Any) -> bool:
    """Whether ``tree`` is an ``lm.Container`` or has one among its nodes (walked with a
    stack of nodes, not by recursion: a tree as deep as optree takes is no error)."""
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        if isinstance(node, Container):
            return True
        if isinstance(node, Mapping):
            children = list(node.values())
        elif isinstance(node, list | tuple):
            children = list(node)
        else:
            continue
        if not all_native(children):
            nodes += children
    return False


def _parent(tree: Any, path: Sequence[Any]) -> Any:
    """The node holding the leaf at ``path`` in ``tree`` (None where a step of the
    path is no key or index of a mapping or sequence there)."""
    node = tree
    for entry in path[:-1]:
        is_key = (
            isinstance(node, Mapping)
            and isinstance(entry, str)
            and not isinstance(entry, Attribute)
            and entry in node
        )
        is_index = isinstance(node, list | tuple) and type(entry) is int and -len(node) <= entry < len(node)
        if not (is_key or is_index):
            return None
        node = node[entry]
    return node if path else None


# --- the backend of a call ---------------------------------------------------------------


def call_backend(leaves: Sequence[Any], paths: Sequence[Any], arg: str = "w") -> str:
    """The one backend owning every weight (``arg``: their argument, for messages),
    which must be the chosen one, if any."""
    one_type = all_native(leaves)  # one native type: one framework
    names = [backend_of(leaves[0])] * len(leaves) if one_type else [owner(leaf) for leaf in leaves]
    first = names[0]
    if first is None or names.count(first) != len(names):
        for entries, leaf, name in zip(paths, leaves, names):
            if name is None:
                raise LarsMultiTypeError(f"{Path(arg, entries)}: expected an array, got {type_name(leaf)}")
            if name != first:
                raise MixedFrameworksError(
                    f"{Path(arg, entries)}: expected a {first} array like {Path(arg, paths[0])}, got a "
                    f"{name} array ({type_name(unwrap(leaf))}); pass arrays of one framework"
                )
    assert first is not None
    return check_chosen(first, leaves[0], arg)


def check_chosen(name: str, leaf: Any, arg: str = "w") -> str:
    """The backend to run: the weights' ``name`` (of ``leaf``, one of them; ``arg``:
    their argument, for messages), which must be the chosen one, if any, or arrays the
    chosen one takes too (a backend registered over another framework's arrays:
    inference names the built-in one)."""
    chosen = current_backend()
    if chosen is None or chosen == name:
        return name
    if not get_backend(chosen).is_native(unwrap(leaf)):  # (BackendNotInstalledError where it does not import)
        raise MixedFrameworksError(
            f"{arg}: expected {chosen} arrays (the active backend), got {name} arrays "
            f"({type_name(leaf)}); convert them or change the backend"
        )
    return chosen


# --- weights, gradients, outputs -----------------------------------------------------------


def _dtype(ops: Backend, x: Any) -> str:
    return ops.dtype_name(x.dtype)


def _floats(ops: Backend) -> str:
    """The floating dtypes the backend computes in, as a message names them."""
    unique = {ops.dtype_name(dtype).split(" (")[0] for dtype in ops.FLOAT_DTYPES}  # (byte orders: one)
    names = sorted(unique, key=lambda n: (int("0" + "".join(filter(str.isdigit, n))), n))
    listed = ", ".join(names[:-1]) + " or " if len(names) > 1 else ""
    return f"a floating dtype ({listed}{names[-1]})"


def check_weights(path: Any, w: Any, ops: Backend) -> None:
    if w.dtype not in ops.FLOAT_DTYPES:
        raise LarsMultiTypeError(f"{path}: expected {_floats(ops)}, got {_dtype(ops, w)}")
    if not ops.is_dense(w):
        raise LarsMultiTypeError(f"{path}: expected dense weights, got a {ops.layout_name(w)} {type_name(w)}")


def check_tree(arg: str, tree: Any, flat: Flat) -> None:
    """``tree`` must be an array or a tree of arrays: an object that is neither (a
    framework's module or parameter container, which optree does not open) is one
    leaf that is no array, and is named as such (not as a mismatch of the others)."""
    if len(flat.leaves) == 1 and flat.leaves[0] is tree and tree is not None and owner(tree) is None:
        hint = "; pass dict(m.named_parameters())" if hasattr(tree, "named_parameters") else ""
        if isinstance(tree, Mapping):  # (optree opens dict, OrderedDict, defaultdict, not subclasses)
            hint = f"; pass dict({arg})"
        elif isinstance(tree, list | tuple):  # (a tf.Module's ListWrapper)
            hint = f"; pass list({arg})"
        raise LarsMultiTypeError(
            f"{arg}: expected an array or a tree of arrays (dicts, lists, tuples), got {type_name(tree)}"
            + hint
        )


def check_some_leaves(arg: str, tree: Any, flat: Flat) -> None:
    """``tree`` must hold a leaf: None or an empty tree is not weights to update (a call
    on one returned it, every other argument unchecked)."""
    if not flat.leaves:
        got = "None" if tree is None else f"a {type_name(tree)} with no arrays"
        raise LarsMultiValueError(f"{arg}: expected an array or a tree with at least one array, got {got}")


def check_all_weights(arg: str, ws: Layout, paths: Sequence[Any], ops: Backend) -> None:
    """:func:`check_weights` of every layer (``paths``: their key paths in ``arg``)."""
    floats = ops.FLOAT_DTYPES
    if all(map(floats.__contains__, ws.dtypes)) and ops.all_dense(ws.arrays):  # (no call per layer)
        return
    for entries, w in zip(paths, ws.arrays):
        check_weights(Path(arg, entries), w, ops)


Where = tuple[str, str, Any, bool]


def message_paths(where: Where) -> tuple[Any, Any]:
    """``(arg, w_arg, key path, broadcast)`` as the two paths an error message
    names (``broadcast``: one value for every leaf, named alone); a key path
    of None names the arguments alone. Built only when a message needs them."""
    arg, w_arg, entries, broadcast = where
    if entries is None:
        return arg, w_arg
    return (arg if broadcast else Path(arg, entries)), Path(w_arg, entries)


def _foreign(owner_name: str | None, name: str, data: Any, ops: Backend) -> bool:
    """Whether ``data``, an array of the backend ``owner_name``, is not one the backend
    ``name`` runs on (a backend registered over another framework's arrays takes
    them: its ``is_native`` says)."""
    return owner_name != name and not ops.is_native(data)


def check_gradient(g: Any, w: Any, where: Where, name: str, ops: Backend) -> Any:
    """The gradient of the weights ``w`` (or another array paired with them, a
    momentum buffer) as a dense native array like them; ``where`` is ``(arg,
    w_arg, key path, broadcast)`` for messages."""
    if ops.alike([g], Layout([w])):
        return g  # the common case, with no message built: a native gradient like the weights
    path, w_path = message_paths(where)
    g_name = owner(g)
    if g_name is None:
        try:
            dense = ops.densify(g, w)
        except ValueError as error:  # (the backend's reason; the path is ours)
            raise LarsMultiValueError(f"{path}: {error}") from None
        if dense is None:
            raise LarsMultiTypeError(f"{path}: expected an array like {w_path}, got {type_name(g)}")
        g, g_name = dense, name
    if _foreign(g_name, name, unwrap(g), ops):
        raise MixedFrameworksError(
            f"{path}: expected a {name} array like {w_path}, got a {g_name} array "
            f"({type_name(unwrap(g))}); pass arrays of one framework"
        )
    data = unwrap(g)
    if not ops.is_dense(data):
        raise LarsMultiTypeError(
            f"{path}: expected a dense array like {w_path}, got a {ops.layout_name(data)} {type_name(data)}; "
            "LARS needs the whole gradient's norm: densify it first"
        )
    data = check_like(path, data, w_path, w, ops)
    check_device(path, data, w_path, w, ops)
    return ops.conform(data, w)


def check_like(path: Any, data: Any, w_path: Any, w: Any, ops: Backend, *, read: bool = True) -> Any:
    """``data`` must have the dtype and shape of the weights ``w``; a mismatched
    dtype of an array the step ``read`` s gets the backend's advice. The array to use
    (a shape known only when a traced program runs is checked in it)."""
    if data.dtype != w.dtype:
        hint = ops.dtype_hint(data.dtype, w.dtype) if read else ""
        raise LarsMultiTypeError(
            f"{path}: expected dtype {_dtype(ops, w)} (the dtype of {w_path}), got {_dtype(ops, data)}{hint}"
        )
    check_shape(path, ops.shape(data), w_path, ops.shape(w))
    return ops.assert_same_shape(data, w, f"{path}: expected the shape of {w_path}")


def check_shape(path: Any, shape: Any, w_path: Any, w_shape: Any) -> None:
    """``shape`` must be the weights' ``w_shape`` where both are known."""
    if shape != w_shape and _shapes_conflict(shape, w_shape):
        raise LarsMultiValueError(
            f"{path}: expected shape {tuple(w_shape)} (the shape of {w_path}), got {tuple(shape)}"
        )


class Layers(NamedTuple):
    """The layers of a step that have a gradient, checked: their leaves as given (handles
    too) and paths, their backend, their native weights (and a :class:`Layout` of them)
    and gradients."""

    leaves: list[Any]
    paths: list[Any]
    name: str
    ops: Backend
    ws: list[Any]
    layout: Layout
    gs: list[Any]


def checked_layers(flat: Flat, grads: list[Any], active: list[int], where: tuple[str, str, bool]) -> Layers:
    """The layers ``active`` of the weights ``flat`` with their gradients (``grads``, one per
    leaf), checked; ``where``: ``(gradients' arg, weights' arg, one gradient for every leaf)``."""
    w_arg = where[1]
    leaves, paths = take(flat.leaves, active), take(flat.paths, active)
    name = call_backend(leaves, paths, w_arg)
    ops = get_backend(name)
    ws = unwrap_all(leaves)
    layout = Layout(ws)
    check_all_weights(w_arg, layout, paths, ops)
    gs = check_gradients(take(grads, active), layout, paths, where, name, ops)
    return Layers(leaves, paths, name, ops, ws, layout, gs)


def check_gradients(
    gs: Sequence[Any],
    ws: Layout,
    paths: Sequence[Any],
    where: tuple[str, str, bool],
    name: str,
    ops: Backend,
) -> list[Any]:
    """:func:`check_gradient` of every layer (``where``: ``(arg, w_arg, broadcast)``),
    at once where every gradient is a native array like its weights."""
    if ops.alike(gs, ws):
        return list(gs)
    if not all_native(gs):  # handles (lm.Array, keras.Variable): their arrays, if they are alike
        data = [unwrap(g) for g in gs]
        if ops.alike(data, ws):
            return data
    arg, w_arg, broadcast = where
    return [
        check_gradient(g, w, (arg, w_arg, p, broadcast), name, ops) for g, w, p in zip(gs, ws.arrays, paths)
    ]


def check_device(path: Any, data: Any, w_path: Any, w: Any, ops: Backend) -> None:
    """``data`` must be where the weights ``w`` are, unless either goes anywhere (its
    device None: an uncommitted JAX array)."""
    device, w_device = ops.device(data), ops.device(w)
    if device != w_device and device is not None and w_device is not None:
        raise LarsMultiValueError(
            f"{path}: expected an array on {w_device} (like {w_path}), got one on {device}"
        )


def _shapes_conflict(a: Any, b: Any) -> bool:
    """True unless the shapes agree where both are known (traced shapes may hold None,
    or have no known rank)."""
    if None in (getattr(a, "rank", 0), getattr(b, "rank", 0)):
        return False
    a, b = tuple(a), tuple(b)
    return len(a) != len(b) or any(x is not None and y is not None and x != y for x, y in zip(a, b))


def check_out(o: Any, w: Any, where: Where, name: str, ops: Backend) -> Any:
    """The native array to write the new ``w`` into (a handle's own array)."""
    if o is w and ops.unwritable(o) is None:  # out=w: already checked
        return w
    data = unwrap(o)
    if data is w and data is not o:  # a handle of w
        return w
    path, w_path = message_paths(where)
    o_name = owner(o)
    if o_name is None and not ops.is_native(data):
        raise LarsMultiTypeError(f"{path}: expected a {name} array like {w_path}, got {type_name(o)}")
    if _foreign(o_name, name, data, ops):
        raise MixedFrameworksError(f"{path}: expected a {name} array like {w_path}, got a {o_name} array")
    if data is o:
        reason = ops.unwritable(data)
        if reason is not None:
            raise LarsMultiTypeError(
                f"{path}: expected an array that can be written in place, got {reason}; "
                "pass a lars_multi.Array (or an lm.Container, or a list in one, holding the arrays: a "
                "tuple's entries cannot be replaced) as out, or use the result"
            )
    check_like(path, data, w_path, w, ops, read=False)
    check_device(path, data, w_path, w, ops)
    return data


def check_outs(
    outs: Sequence[Any],
    ws: list[Any],
    paths: Sequence[Any],
    where: tuple[str, str],
    name: str,
    ops: Backend,
) -> list[Any]:
    """:func:`check_out` of every layer (``where``: ``(arg, w_arg)``), at once where
    every output is its own weights and writable (``out=w``)."""
    if all(map(operator.is_, outs, ws)) and ops.all_writable(ws):
        return ws
    arg, w_arg = where
    return [check_out(o, w, (arg, w_arg, p, False), name, ops) for o, w, p in zip(outs, ws, paths)]


class KeptOuts(NamedTuple):
    """The outputs of layers with weights but no gradient (given None): each
    receives a copy of its weights, written with the other layers' results."""

    indices: list[int]  # the layers, among all of the tree's
    targets: list[Any]  # the outputs as given (handles too)
    datas: list[Any]  # their native arrays, checked
    weights: list[Any]  # the native weights to copy

    @classmethod
    def none(cls) -> KeptOuts:
        """No layer kept (lists to fill)."""
        return cls([], [], [], [])


def check_kept_outs(
    leaves: Sequence[Any],
    paths: Sequence[Any],
    active: Sequence[int],
    out_leaves: Sequence[Any],
    where: tuple[str, str],
    name: str,
    ops: Backend,
) -> KeptOuts:
    """:func:`check_out` of every layer not in ``active`` (those with a gradient)
    that has weights, nothing written. A layer that is its own output is left out,
    unless its array is another layer's output too (tied weights: refused where the
    two receive different values)."""
    kept = KeptOuts.none()
    if len(active) == len(leaves):
        return kept
    skipped = set(active)
    active_targets = {id(out_leaves[i]) for i in active}
    arg, w_arg = where
    for i, (x, target) in enumerate(zip(leaves, out_leaves)):
        if i in skipped or owner(x) is None or (target is x and id(x) not in active_targets):
            continue
        w = unwrap(x)
        kept.indices.append(i)
        kept.targets.append(target)
        kept.datas.append(check_out(target, w, (arg, w_arg, paths[i], False), name, ops))
        kept.weights.append(w)
    return kept


def outs_writable(out_leaves: Sequence[Any], outs: Sequence[Any], ops: Backend) -> bool:
    """Whether every output (``out_leaves``, checked into ``outs`` by :func:`check_outs`)
    can be written in place: native ones can (the check refuses the others), a
    handle if its array can."""
    return not out_leaves or all_native(out_leaves) or ops.all_writable(outs)


class Outputs(NamedTuple):
    """``out`` checked against the weights, nothing written yet."""

    leaves: list[Any]  # out's leaves, a handle in place of each Container entry that takes a new array
    entries: list[Entry]  # those entries, filled once their handles hold the results
    given: list[Any]  # the outputs of the layers with a gradient, as given (handles too)
    arrays: list[Any]  # their native arrays, checked
    kept: KeptOuts  # the outputs of the layers without one
    writable: bool  # whether every output can be written in place


def check_out_tree(
    out: Any,
    out_leaves: list[Any],
    flat: Flat,
    active: list[int],
    ws: list[Any],
    where: tuple[str, str],
    name: str,
    ops: Backend,
) -> Outputs:
    """Every output of ``out`` (its ``out_leaves``, paired with the tree ``flat``),
    checked against the weights ``ws`` of the ``active`` layers (those with a
    gradient) and against the others' (``where``: ``(arg, w_arg)``)."""
    leaves, entries = entry_handles(out, out_leaves, flat.paths, ops)
    given = take(leaves, active)
    arrays = check_outs(given, ws, take(flat.paths, active), where, name, ops)
    kept = check_kept_outs(flat.leaves, flat.paths, active, leaves, where, name, ops)
    return Outputs(leaves, entries, given, arrays, kept, outs_writable(given, arrays, ops))


# --- hyper-parameters -------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A real number (a Python or NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _as_float(path: Any, value: Any, expected: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise LarsMultiValueError(
            f"{path}: expected {expected}, got a number too large for a float"
        ) from None
    if not -math.inf < number < math.inf:  # (math.isfinite cannot be traced by torch.compile)
        raise LarsMultiValueError(f"{path}: expected {expected}, got {value!r}")
    return number


def check_lr(path: Any, lr: Any, *, name: str, ops: Backend) -> Any:
    """A finite float, or a 0-d floating array of the backend (possibly traced; not read,
    but for a NumPy array, whose value is on the host: checked as a number is)."""
    if type(lr) is float or is_number(lr):
        return _as_float(path, lr, "a finite number")
    data = _check_scalar_array(path, lr, name, ops, "a float or a 0-d array")
    if _on_the_host(data):
        _as_float(path, data.item(), "a finite number")
    return data


def check_decay(path: Any, decay_lambda: Any, *, name: str, ops: Backend) -> Any:
    """``None`` for no decay (the rule then skips it), a float >= 0, or a 0-d array."""
    if type(decay_lambda) in (int, float) and decay_lambda == 0:  # (the default, at once)
        return None
    if is_number(decay_lambda):
        return no_zero_decay(check_rate_number(path, decay_lambda))
    if isinstance(decay_lambda, bool | np.bool_) or owner(decay_lambda) is None:
        raise LarsMultiTypeError(
            f"{path}: expected a number >= 0 or a 0-d array, got {type_name(decay_lambda)}"
        )
    return check_rate(path, decay_lambda, name=name, ops=ops)  # (an array, checked as a rate's)


def check_number(name: str, value: Any, *, high: float = math.inf, positive: bool = False) -> float:
    """A real number (Python's, NumPy's, a Fraction; not a bool) in [0, ``high``), or in
    (0, ``high``) where ``positive``, as a float."""
    interval = f"{'(' if positive else '['}0.0, {high})"
    if not is_number(value):
        raise LarsMultiTypeError(f"{name}: expected a number, got {type_name(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise LarsMultiValueError(
            f"{name}: expected a number in {interval}, got one too large for a float"
        ) from None
    if not 0.0 <= number < high or (positive and number == 0):
        raise LarsMultiValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return number


def check_name_patterns(arg: str, value: Any) -> list[str]:
    """Name patterns that leave layers out: one string or several (None: none), each
    non-empty (an empty one occurs in every name: every layer would be left out)."""
    if value is None:
        return []
    one = isinstance(value, str | bytes) or not isinstance(value, Iterable)  # (bytes: no pattern, named so)
    patterns = [value] if one else list(value)
    odd = [p for p in patterns if not isinstance(p, str)]
    if odd:
        raise LarsMultiTypeError(f"{arg}: expected name patterns (str), got {type_name(odd[0])} {odd[0]!r}")
    if "" in patterns:
        raise LarsMultiValueError(f"{arg}: expected non-empty name patterns, got an empty one")
    return patterns


def check_rate(path: Any, value: Any, *, name: str, ops: Backend) -> Any:
    """A rate (a learning rate or weight decay, a schedule's value): a finite float
    >= 0, or a 0-d floating array of the backend (possibly traced; not read, but for a
    NumPy array, whose value is on the host: checked as a number is)."""
    if is_number(value):
        return check_rate_number(path, value)
    data = _check_scalar_array(path, value, name, ops, "a number >= 0 or a 0-d array")
    if _on_the_host(data):
        check_rate_number(path, data.item())
    return data


def _host_float(value: Any) -> float | None:
    """The value of a NumPy floating 0-d array, read on the host; else None."""
    return float(value.item()) if _on_the_host(value) and value.dtype.kind == "f" else None


def _on_the_host(data: Any) -> bool:
    """Whether a checked 0-d array's value is on the host, to be read and checked as a
    number: a NumPy array's (but where Dynamo traces, which takes it for a tensor)."""
    return isinstance(data, np.ndarray) and not _registry.is_compiling()


def check_rate_number(path: Any, value: Any) -> float:
    """A rate given as a number: finite and >= 0."""
    number = _as_float(path, value, "a finite number >= 0")
    if number < 0:
        raise LarsMultiValueError(f"{path}: expected a finite number >= 0, got {value!r}")
    return number


def _check_scalar_array(path: Any, value: Any, name: str, ops: Backend, expected: str) -> Any:
    data = unwrap(value)
    value_name = owner(value)
    if value_name is None or isinstance(value, bool):
        raise LarsMultiTypeError(f"{path}: expected {expected}, got {type_name(value)}")
    if _foreign(value_name, name, data, ops):
        expected = expected.replace("0-d array", f"0-d {name} array")
        raise MixedFrameworksError(
            f"{path}: expected {expected}, got a {value_name} array ({type_name(data)})"
        )
    if len(data.shape) != 0:
        raise LarsMultiValueError(f"{path}: expected a 0-d array, got shape {tuple(data.shape)}")
    if data.dtype not in ops.FLOAT_DTYPES:
        raise LarsMultiTypeError(f"{path}: expected {_floats(ops)}, got {_dtype(ops, data)}")
    return data


def check_fits(path: Any, value: Any, w: Any, w_path: Any, ops: Backend) -> None:
    """A Python-number hyper-parameter must be finite in the weights' dtype (1e39 is
    inf in float32), since the rate is computed in that dtype."""
    if type(value) is float and abs(value) > ops.largest(w.dtype):
        raise LarsMultiValueError(
            f"{path}: expected a number that fits {_dtype(ops, w)} (the dtype of {w_path}), got {value!r}, "
            "which overflows it to inf"
        )


# Finite in every compute dtype (float32 at least: halves compute in float32).
_FITS_EVERY_DTYPE = 3.0e38


def check_usable(arg: Any, value: Any, ws: Sequence[Any], label: Callable[[int], Any], ops: Backend) -> None:
    """A hyper-parameter must be usable with every layer (``label(i)``: how a message
    names layer ``i``): a float finite in the dtype each computes in (a NumPy floating
    array's value too: on the host, it is read); an array where the arithmetic of each
    can read it (torch: on its device, or a CPU scalar)."""
    number = value if type(value) is float else _host_float(value)
    if number is not None:
        if not -_FITS_EVERY_DTYPE < number < _FITS_EVERY_DTYPE:
            for dtype in {x.dtype for x in ws}:
                i = next(k for k, x in enumerate(ws) if x.dtype == dtype)
                check_fits(arg, number, ws[i], label(i), ops)
    elif ops.is_native(value) and (k := ops.misplaced(value, ws)) is not None:  # (a NumPy count: no device)
        raise LarsMultiValueError(
            f"{arg}: expected a 0-d array on {ops.device(ws[k])} (like {label(k)}), "
            f"got one on {ops.device(value)}"
        )


def check_settings_usable(
    rates: Sequence[tuple[str, Any]],
    config: StepConfig,
    ws: Sequence[Any],
    label: Callable[[int], Any],
    ops: Backend,
) -> None:
    """:func:`check_usable` of the rates (named values: learning rate, weight decay) and
    of the step's other numbers, the trust coefficient and eps (a schedule passes)."""
    for arg, value in (*rates, ("trust_coefficient", config.trust_coefficient), ("eps", config.eps)):
        check_usable(arg, value, ws, label, ops)


def named(label: Any) -> Callable[[int], Any]:
    """A ``label`` argument of :func:`check_usable` for one layer."""
    return lambda _: label


def check_stop(path: Any, stop_gradients: Any) -> bool:
    if stop_gradients is True or stop_gradients is False:
        return stop_gradients
    if not isinstance(stop_gradients, bool | np.bool_):
        raise LarsMultiTypeError(f"{path}: expected a bool, got {type_name(stop_gradients)}")
    return bool(stop_gradients)


# --- mesh axis names ---------------------------------------------------------------------------


class _Name:
    """One mesh axis name, kept whole while a tree of names is paired with ``w``
    (a tuple of strings is one name, not a tree)."""

    __slots__ = ("name",)

    def __init__(self, name: Any) -> None:
        self.name = name


def _is_name(value: Any) -> bool:
    return isinstance(value, str) or (
        type(value) is tuple and len(value) > 0 and all(isinstance(v, str) for v in value)
    )


def _wrap_names(value: Any) -> Any:
    """``value`` with every name (a str, or a tuple of str) a :class:`_Name` leaf."""
    if _is_name(value):
        return _Name(value)
    if isinstance(value, Mapping):
        return {k: _wrap_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wrap_names(v) for v in value]
    if isinstance(value, tuple):
        items = [_wrap_names(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _check_unambiguous(arg: str, name: Any, flat: Flat) -> None:
    """A tuple of strings is one name of several mesh axes for every layer; it is
    refused where it could also be one name per layer (the layers a tuple of as
    many), since either reading gives wrong norms where the other was meant."""
    n = len(flat.leaves)
    if type(name) is not tuple or n != len(name) or n < 2:
        return
    try:
        leaves_like(arg, tuple(map(_Name, name)), flat, broadcast=False)
    except (LarsMultiTypeError, LarsMultiValueError):
        return  # (not the layers' structure: one name, unambiguously)
    raise LarsMultiValueError(
        f"{arg}: expected a name of mesh axes for every layer or one per layer, got {name!r}, which "
        f"reads as both; write {list(name)!r} for one per layer, or {(name,) * n!r} for all {n} "
        "axes on every layer"
    )


def axis_names(arg: str, value: Any, flat: Flat, active: list[int], ops: Backend) -> tuple[Any, ...] | None:
    """One mesh axis name (or None) per active layer of ``flat``, from one name
    or a tree of names and None; None when no layer has one (the default path)."""
    if value is None:
        return None
    if _is_name(value):
        _check_unambiguous(arg, value, flat)
        ops.check_axis_name(arg, value)
        return (value,) * len(active)
    leaves = leaves_like(arg, _wrap_names(value), flat)
    names = []
    for i in active:
        leaf = leaves[i]
        if leaf is not None and not isinstance(leaf, _Name):
            raise LarsMultiTypeError(
                f"{Path(arg, flat.paths[i])}: expected a mesh axis name (a str or a tuple of str) "
                f"or None, got {type_name(leaf)}"
            )
        names.append(None if leaf is None else leaf.name)
    if all(n is None for n in names):
        return None
    ops.check_axis_name(arg, value)
    return tuple(names)
