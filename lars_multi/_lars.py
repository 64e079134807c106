"""``lars_update``: check the arguments, pick the backend, run the rule.

Everything is checked before anything is computed or written, so bad input
raises a clear error and leaves ``out`` (and every input) as it was.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from functools import partial
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import optree

from . import _algorithm
from ._array import Array
from ._container import Container
from ._errors import (
    LarsMultiTypeError,
    LarsMultiValueError,
    MixedFrameworksError,
    type_name,
)
from ._registry import backend_of, current_backend, get_backend

# Containers are trees to optree, in lars_multi's namespace: their one child is
# their dict, so keys compare as dict keys do (in any order).
_NAMESPACE = "lars_multi"
optree.register_pytree_node(
    Container,
    lambda container: ((container._items,), None, (None,)),
    lambda _, children: Container(children[0]),
    namespace=_NAMESPACE,
)


def lars_update(
    w: Any,
    dcdw: Any,
    lr: Any,
    /,
    *,
    decay_lambda: Any = 0,
    stop_gradients: Any = True,
    out: Any = None,
) -> Any:
    r"""Update weights with Layer-wise Adaptive Rate Scaling (LARS).

    For each layer (an array, or each leaf of a tree of arrays):

    .. math::

        \eta_\ell = \frac{\lVert w \rVert \, \eta}{\lVert dcdw \rVert + 10^{-12}},
        \quad \eta_\ell \leftarrow \frac{\eta_\ell}{\lVert w \rVert \lambda}
        \text{ if } \lambda > 0,
        \quad w' = w - \eta_\ell \, dcdw

    Args:
        w: the weights: a native array, a :class:`lars_multi.Array`, or a tree
            (:class:`lars_multi.Container`, dict, list, tuple) of them.
        dcdw: the gradient of the cost with respect to ``w``: the same
            structure as ``w``, or one array used for every leaf.
        lr: the learning rate :math:`\eta`: a number or a 0-d array, or a tree
            of them matching ``w``.
        decay_lambda: :math:`\lambda \ge 0`, a number or a tree of numbers.
        stop_gradients: whether the result is cut from the autograd graph
            (``detach``, ``jax.lax.stop_gradient``, ``tf.stop_gradient``).
        out: where to write the result, with the structure of ``w``: NumPy
            arrays and torch tensors are written in place, ``tf.Variable`` s
            assigned, ``lars_multi.Array`` s given the new data. ``out=w``
            updates the weights in place.

    Returns:
        The new weights, with the structure and types of ``w`` (or ``out``).

    Examples:
        >>> import lars_multi as lm
        >>> w = lm.array([[3., 1, 5], [7, 2, 9]])
        >>> dcdw = lm.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]])
        >>> lm.lars_update(w, dcdw, lm.array(0.1))
        lars_multi.array([[2.34077978, 0.78025991, 4.5605197 ],
                          [6.78026009, 1.56051981, 8.12103939]])
    """
    if _is_array(w) and _is_array(dcdw) and (out is None or _is_array(out)):
        return _update_one(w, dcdw, lr, decay_lambda, stop_gradients, out)
    return _update_tree(w, dcdw, lr, decay_lambda, stop_gradients, out)


def _is_array(x: Any) -> bool:
    return isinstance(x, Array) or backend_of(x) is not None


def _update_one(w: Any, dcdw: Any, lr: Any, decay_lambda: Any, stop_gradients: Any, out: Any) -> Any:
    """The lean path for one array: no tree machinery at all."""
    wrapped = isinstance(w, Array)
    w_data = w.data if wrapped else w
    name = w.backend if wrapped else backend_of(w)
    chosen = current_backend()
    if chosen is not None and chosen != name:
        _call_backend([w], [()])  # raises the mismatch error
    ops = get_backend(name)
    _check_weights("w", w_data, ops)
    g = _check_gradient(dcdw, w_data, (), name, ops)
    rate = _check_lr("lr", lr, name=name, ops=ops)
    decay = _check_decay("decay_lambda", decay_lambda)
    stop = _check_stop("stop_gradients", stop_gradients)
    if out is None:
        new = _layer_rule(ops)(w_data, g, rate, decay, stop)
        return Array(new, name) if wrapped else new
    (target,) = _check_outs([out], [()], [w_data], name, ops)
    update_into = getattr(ops, "update_into", None)
    if update_into is not None and ops.is_writable(target) and target is not g:
        _algorithm.lars_layer_into(ops, target, w_data, g, rate, decay)
        new = target
    else:
        (new,) = _run(ops, [w_data], [g], rate, decay, stop, [target])
    if isinstance(out, Array):
        out.data = new
    return out


def _update_tree(w: Any, dcdw: Any, lr: Any, decay_lambda: Any, stop_gradients: Any, out: Any) -> Any:
    paths, ws, spec = optree.tree_flatten_with_path(w, namespace=_NAMESPACE)
    if not ws:
        return w
    name = _call_backend(ws, paths)
    ops = get_backend(name)
    w_data = [x.data if isinstance(x, Array) else x for x in ws]
    floats = ops.FLOAT_DTYPES
    for entries, x in zip(paths, w_data):
        if x.dtype not in floats:
            _check_weights(_Path("w", entries), x, ops)
    one_gradient = optree.tree_is_leaf(dcdw, namespace=_NAMESPACE)
    gs = [
        _check_gradient(g, x, entries, name, ops, broadcast=one_gradient)
        for entries, g, x in zip(paths, _leaves_like("dcdw", dcdw, w, spec), w_data)
    ]
    rates = _per_leaf("lr", lr, w, spec, paths, partial(_check_lr, name=name, ops=ops))
    decays = _per_leaf("decay_lambda", decay_lambda, w, spec, paths, _check_decay)
    stops = _per_leaf("stop_gradients", stop_gradients, w, spec, paths, _check_stop)
    out_leaves = None if out is None else _out_leaves(out, w, spec)
    outs = None if out is None else _check_outs(out_leaves, paths, w_data, name, ops)

    groups = _groups(rates, decays, stops)
    if len(groups) == 1:
        results = _run(ops, w_data, gs, rates[0], decays[0], stops[0], outs)
    else:
        results = [None] * len(ws)
        for indices in groups:
            group = _run(
                ops,
                [w_data[i] for i in indices],
                [gs[i] for i in indices],
                rates[indices[0]],
                decays[indices[0]],
                stops[indices[0]],
                None if outs is None else [outs[i] for i in indices],
            )
            for i, new in zip(indices, group):
                results[i] = new

    if out is not None:
        for target, new in zip(out_leaves, results):
            if isinstance(target, Array):
                target.data = new
        return out
    wrapped = [Array(new, name) if isinstance(x, Array) else new for x, new in zip(ws, results)]
    return optree.tree_unflatten(spec, wrapped)


def _leaves_like(arg: str, value: Any, w: Any, spec: Any) -> list[Any]:
    """``value``'s leaves, one per leaf of ``w``: a single value serves them all,
    a Container matches a dict, and a prefix of ``w``'s tree covers its subtrees."""
    leaves, value_spec = optree.tree_flatten(value, namespace=_NAMESPACE)
    if value_spec == spec:
        return leaves
    if optree.treespec_is_leaf(value_spec):
        return leaves * spec.num_leaves
    plain_value, plain_w = _plain(value), _plain(w)
    leaves, value_spec = optree.tree_flatten(plain_value)
    if value_spec == optree.tree_structure(plain_w):  # a dict for a Container
        return leaves
    try:
        return optree.broadcast_prefix(plain_value, plain_w)
    except ValueError:
        errors = optree.prefix_errors(plain_value, plain_w)
        detail = f" {errors[0](arg)}" if errors else ""
        raise LarsMultiValueError(
            f"{arg}: expected the structure of w or a single value, got another structure.{detail}"
        ) from None


def _per_leaf(
    arg: str, value: Any, w: Any, spec: Any, paths: list[Any], check: Callable[[Any, Any], Any]
) -> list[Any]:
    """``check``-ed values, one per leaf of ``w``; a single value is checked once."""
    if optree.tree_is_leaf(value, namespace=_NAMESPACE):
        return [check(arg, value)] * len(paths)
    return [check(_Path(arg, p), v) for p, v in zip(paths, _leaves_like(arg, value, w, spec))]


def _out_leaves(out: Any, w: Any, spec: Any) -> list[Any]:
    """``out``'s leaves, which must have ``w``'s structure (a Container may match a dict)."""
    leaves, out_spec = optree.tree_flatten(out, namespace=_NAMESPACE)
    if out_spec != spec and optree.tree_structure(_plain(out)) != optree.tree_structure(_plain(w)):
        raise LarsMultiValueError(f"out: expected the structure of w, {spec}, got {out_spec}")
    return leaves


def _plain(tree: Any) -> Any:
    """``tree`` with every Container turned into a dict (to compare structures)."""
    kind = type(tree)
    if kind is dict or isinstance(tree, Container):
        return {key: _plain(value) for key, value in tree.items()}
    if kind is list or kind is tuple:
        return kind(_plain(value) for value in tree)
    return tree


def _run(
    ops: ModuleType,
    group_w: list[Any],
    group_g: list[Any],
    lr: Any,
    decay: float | None,
    stop: bool,
    group_out: list[Any] | None,
) -> list[Any]:
    """One group of layers that share their hyperparameters."""
    writable = group_out is not None and all(ops.is_writable(o) for o in group_out)
    # Outputs that are read as inputs elsewhere (a gradient that is another
    # layer's output, one array twice) are written only once all is computed.
    write_late = group_out is not None and _overlapping(group_out, group_g, group_w)
    # Immutable arrays (jax) are replaced instead: donate the weights' buffers
    # when the caller hands them over (out=w) and nothing else reads them.
    donate = (
        group_out is not None
        and not writable
        and not write_late
        and all(o is x for o, x in zip(group_out, group_w))
    )
    fused = getattr(ops, "lars_tree", None)
    if fused is not None and not (writable and write_late):
        return fused(group_w, group_g, lr, decay, stop, group_out if writable else None, donate)
    if fused is not None:
        new = fused(group_w, group_g, lr, decay, stop, None, False)
    else:
        rule = _layer_rule(ops)
        new = [rule(x, g, lr, decay, stop) for x, g in zip(group_w, group_g)]
    if writable:
        for target, value in zip(group_out, new):
            ops.write(target, value)
        return group_out
    return new


def _overlapping(outs: list[Any], gs: list[Any], ws: list[Any]) -> bool:
    """Whether writing ``outs`` one by one could change an input not yet read:
    an output twice, an output that is a gradient, or another layer's weights."""
    position = {id(o): i for i, o in enumerate(outs)}
    if len(position) != len(outs) or not position.keys().isdisjoint(map(id, gs)):
        return True
    return any(position.get(id(x), i) != i for i, x in enumerate(ws))


def _groups(rates: list[Any], decays: list[Any], stops: list[bool]) -> list[Sequence[int]]:
    """Indices of the layers sharing (lr, decay_lambda, stop_gradients)."""
    if len(set(map(id, rates))) == 1 and len(set(decays)) == 1 and len(set(stops)) == 1:
        return [range(len(rates))]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (rate, decay, stop) in enumerate(zip(rates, decays, stops)):
        key = (rate if isinstance(rate, float) else id(rate), decay, stop)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


_RULES: dict[str, Callable[..., Any]] = {}


def _layer_rule(ops: ModuleType) -> Callable[..., Any]:
    """The backend's own one-layer path (jax: compiled), else the generic rule."""
    rule = _RULES.get(ops.__name__)
    if rule is None:
        rule = getattr(ops, "lars_layer", None) or partial(_algorithm.lars_layer, ops)
        _RULES[ops.__name__] = rule
    return rule


# --- checks -----------------------------------------------------------------


class _Path(NamedTuple):
    """``dcdw['a'][0]``, formatted only when an error message needs it."""

    arg: str
    entries: Sequence[Any]

    def __str__(self) -> str:
        return self.arg + "".join(f"[{e!r}]" for e in self.entries if e is not None)


def _call_backend(leaves: list[Any], paths: list[Any]) -> str:
    """The one backend owning every weight, which must be the chosen one, if any."""
    if len(set(map(type, leaves))) == 1 and not isinstance(leaves[0], Array):
        names = [backend_of(leaves[0])]  # one native type: one framework
    else:
        names = [leaf.backend if isinstance(leaf, Array) else backend_of(leaf) for leaf in leaves]
    first = names[0]
    if first is None or names.count(first) != len(names):
        for entries, leaf, name in zip(paths, leaves, names):
            if name is None:
                raise LarsMultiTypeError(f"{_Path('w', entries)}: expected an array, got {type_name(leaf)}")
            if name != first:
                raise MixedFrameworksError(
                    f"{_Path('w', entries)} is a {name} array but {_Path('w', paths[0])} is a {first} "
                    "array; pass arrays of one framework"
                )
    chosen = current_backend()
    if chosen is not None and chosen != first:
        raise MixedFrameworksError(
            f"w: expected {chosen} arrays (the active backend), got {first} arrays "
            f"({type_name(leaves[0])}); convert them or change the backend"
        )
    return first


def _dtype(ops: ModuleType, x: Any) -> str:
    return ops.dtype_name(x.dtype)


def _check_weights(path: Any, w: Any, ops: ModuleType) -> None:
    if w.dtype not in ops.FLOAT_DTYPES:
        raise LarsMultiTypeError(
            f"{path}: expected a floating dtype (float16, bfloat16, float32 or float64), got {_dtype(ops, w)}"
        )


def _check_gradient(
    g: Any, w: Any, entries: Sequence[Any], name: str, ops: ModuleType, *, broadcast: bool = False
) -> Any:
    """The gradient of the weights ``w`` at ``entries``, as a native array.

    ``broadcast``: one ``dcdw`` serves every leaf (so messages name ``dcdw`` alone).
    """
    if type(g) is type(w) and g.dtype == w.dtype and g.shape == w.shape:
        return g  # the common case, with no message built: a native gradient like the weights
    path = "dcdw" if broadcast else _Path("dcdw", entries)
    w_path = _Path("w", entries)
    data = g.data if isinstance(g, Array) else g
    g_name = g.backend if isinstance(g, Array) else backend_of(g)
    if g_name is None:
        raise LarsMultiTypeError(f"{path}: expected an array like {w_path}, got {type_name(g)}")
    if g_name != name:
        raise MixedFrameworksError(
            f"{path}: expected a {name} array like {w_path}, got a {g_name} array "
            f"({type_name(data)}); pass arrays of one framework"
        )
    _check_like(path, data, w_path, w, ops)
    return data


def _check_like(path: Any, data: Any, w_path: Any, w: Any, ops: ModuleType) -> None:
    """``data`` must have the dtype and shape of the weights ``w``."""
    if data.dtype != w.dtype:
        raise LarsMultiTypeError(
            f"{path}: expected dtype {_dtype(ops, w)} (the dtype of {w_path}), got {_dtype(ops, data)}"
        )
    if data.shape != w.shape and _shapes_conflict(data.shape, w.shape):
        raise LarsMultiValueError(
            f"{path}: expected shape {tuple(w.shape)} (the shape of {w_path}), got {tuple(data.shape)}"
        )


def _shapes_conflict(a: Any, b: Any) -> bool:
    """True unless the shapes agree where both are known (traced shapes may hold None)."""
    a, b = tuple(a), tuple(b)
    return len(a) != len(b) or any(x is not None and y is not None and x != y for x, y in zip(a, b))


def _check_lr(path: Any, lr: Any, *, name: str, ops: ModuleType) -> Any:
    if type(lr) is float or (isinstance(lr, numbers.Real) and not isinstance(lr, bool | np.bool_)):
        value = float(lr)
        if not math.isfinite(value):
            raise LarsMultiValueError(f"{path}: expected a finite number, got {lr!r}")
        return value
    data = lr.data if isinstance(lr, Array) else lr
    lr_name = lr.backend if isinstance(lr, Array) else backend_of(lr)
    if lr_name is None or isinstance(lr, bool):
        raise LarsMultiTypeError(f"{path}: expected a float or a 0-d array, got {type_name(lr)}")
    if lr_name != name:
        raise MixedFrameworksError(
            f"{path}: expected a float or a 0-d {name} array, got a {lr_name} array ({type_name(data)})"
        )
    if len(data.shape) != 0:
        raise LarsMultiValueError(f"{path}: expected a 0-d array, got shape {tuple(data.shape)}")
    if data.dtype not in ops.FLOAT_DTYPES:
        raise LarsMultiTypeError(f"{path}: expected a floating dtype, got {_dtype(ops, data)}")
    return data


def _check_decay(path: Any, decay_lambda: Any) -> float | None:
    """``None`` for no decay, so that the rule can skip it entirely."""
    if decay_lambda == 0 and type(decay_lambda) in (int, float):
        return None
    if isinstance(decay_lambda, bool) or not isinstance(decay_lambda, numbers.Real):
        raise LarsMultiTypeError(f"{path}: expected a number >= 0, got {type_name(decay_lambda)}")
    value = float(decay_lambda)
    if not value >= 0 or not math.isfinite(value):
        raise LarsMultiValueError(f"{path}: expected a finite number >= 0, got {decay_lambda!r}")
    return value or None


def _check_stop(path: Any, stop_gradients: Any) -> bool:
    if stop_gradients is True or stop_gradients is False:
        return stop_gradients
    if not isinstance(stop_gradients, bool | np.bool_):
        raise LarsMultiTypeError(f"{path}: expected a bool, got {type_name(stop_gradients)}")
    return bool(stop_gradients)


def _check_outs(
    leaves: list[Any],
    paths: list[Any],
    w_data: list[Any],
    name: str,
    ops: ModuleType,
) -> list[Any]:
    outs = []
    for entries, o, w in zip(paths, leaves, w_data):
        data = o.data if isinstance(o, Array) else o
        if data is w and (data is not o or ops.is_writable(o)):  # out=w: already checked
            outs.append(w)
            continue
        path, w_path = _Path("out", entries), _Path("w", entries)
        wrapped = isinstance(o, Array)
        o_name = o.backend if wrapped else backend_of(o)
        if o_name != name:
            got = f"a {o_name} array" if o_name else type_name(o)
            raise MixedFrameworksError(f"{path}: expected a {name} array like {w_path}, got {got}")
        if not wrapped and not ops.is_writable(data):
            raise LarsMultiTypeError(
                f"{path}: expected an array that can be written in place, got an immutable "
                f"{type_name(data)}; pass a lars_multi.Array or Container as out, or use the result"
            )
        _check_like(path, data, w_path, w, ops)
        outs.append(data)
    return outs
