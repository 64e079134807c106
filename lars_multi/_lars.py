"""``lars_update``: check the arguments, pick the backend, run the rule.

Everything is checked before anything is computed or written, so bad input
raises a clear error and leaves ``out`` (and every input) as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from . import _checks, _registry
from ._aliasing import (
    array_values,
    check_handles,
    check_untouched,
    checked_writes,
    late_outputs,
    must_write_late,
    run_checked,
    write_all,
)
from ._array import Array
from ._checks import owner, unwrap, write_back
from ._errors import LarsMultiTypeError, LarsMultiValueError, no_autograph, type_name
from ._lists import concat, now_and_later, put, take
from ._presets import REFERENCE
from ._protocol import Backend
from ._registry import current_backend, get_backend
from ._step import LayerFlags, StepConfig, batch_step, decay_kind, lars_step
from ._tree import Flat, Path, flatten_optree, is_leaf, is_single, leaves_like, present

# The reference's rule: the one LARS step with the REFERENCE preset and no momentum.
_RULE = StepConfig(REFERENCE, eps=REFERENCE.eps)
# Every layer adapted and decayed, by (number of layers, mesh axis names).
_FLAGS: dict[tuple[int, Any], LayerFlags] = {}
_ONE_LAYER = LayerFlags.every(1)  # one array without out=: the step is called directly
_W = _checks.named("w")  # how messages name the one array


@no_autograph
def lars_update(
    w: Any,
    dcdw: Any,
    lr: Any,
    /,
    *,
    decay_lambda: Any = 0,
    stop_gradients: Any = True,
    out: Any = None,
    axis_name: Any = None,
) -> Any:
    r"""Update weights with Layer-wise Adaptive Rate Scaling (LARS).

    For each layer (an array, or each leaf of a tree of arrays):

    .. math::

        \eta_\ell = \frac{\lVert w \rVert \, \eta}{\lVert dcdw \rVert + 10^{-12}},
        \quad \eta_\ell \leftarrow \frac{\eta_\ell}{\lVert w \rVert \lambda}
        \text{ if } \lambda > 0,
        \quad w' = w - \eta_\ell \, dcdw

    Args:
        w: the weights: a native array, a :class:`lars_multi.Array`, a
            ``keras.Variable``, or a tree of them (dicts, OrderedDicts, defaultdicts,
            lists, tuples, :class:`lars_multi.Container`; on JAX every registered pytree).
        dcdw: the gradient of the cost with respect to ``w``: a tree paired with
            ``w`` by key (by position for sequences), or one array used for every
            leaf. A ``None`` gradient leaves its parameters unchanged.
        lr: the learning rate :math:`\eta`: a number or a 0-d array (traced
            under ``jax.jit`` and ``tf.function`` too), or a tree of them.
        decay_lambda: :math:`\lambda \ge 0`: a number or a 0-d array, or a tree of them.
        stop_gradients: whether the result is cut from the autograd graph
            (``detach``, ``jax.lax.stop_gradient``, ``tf.stop_gradient``).
        out: where to write the result, with the structure of ``w``: NumPy
            arrays and torch tensors are written in place, ``tf.Variable`` s
            and ``keras.Variable`` s assigned, ``lars_multi.Array`` s given the
            new data. ``out=w`` updates the weights in place.
        axis_name: JAX only, inside ``jax.shard_map``: the mesh axis the layers
            are sharded over (a name, or a tuple of names for several axes), so
            that their norms are summed across devices (``jax.lax.psum``) and
            are those of the whole layers. For a tree mixing sharded and
            replicated layers, a tree of names and ``None`` paired with ``w``
            by key (``None``: the layer is whole on every device, not summed);
            per-layer names for tuple-shaped weights go in a list, since a
            tuple of strings is one name. Without it, **inside
            jax.shard_map every norm is the norm of the device's own shard**,
            and the update differs from the unsharded one. Not needed under
            ``jax.jit`` with sharded arrays (``NamedSharding``): there the norms
            are already global and the result keeps the input's sharding.

    Returns:
        The new weights, with the structure and types of ``w`` (a variable's as
        its framework's array), or ``out``.

    Examples:
        >>> import lars_multi as lm
        >>> w = lm.array([[3., 1, 5], [7, 2, 9]])
        >>> dcdw = lm.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]])
        >>> lm.lars_update(w, dcdw, lm.array(0.1))
        lars_multi.array([[2.34077978, 0.78025991, 4.5605197 ],
                          [6.78026009, 1.56051981, 8.12103939]])
    """
    name = owner(w) if axis_name is None else None
    if name is not None and owner(dcdw) is not None and (out is None or owner(out) is not None):
        return _update_one(name, w, dcdw, lr, decay_lambda, stop_gradients, out)
    return _update_tree(w, dcdw, lr, decay_lambda, stop_gradients, out, axis_name)


def _update_one(
    name: str, w: Any, dcdw: Any, lr: Any, decay_lambda: Any, stop_gradients: Any, out: Any
) -> Any:
    """The lean path for one array (of the backend ``name``): no tree machinery,
    the step on a one-element list."""
    name = _checks.check_chosen(name, w)
    ops = get_backend(name)
    w_data = unwrap(w)
    _checks.check_weights("w", w_data, ops)
    g = _checks.check_gradient(dcdw, w_data, ("dcdw", "w", None, False), name, ops)
    rate = _checks.check_lr("lr", lr, name=name, ops=ops)
    decay = _checks.check_decay("decay_lambda", decay_lambda, name=name, ops=ops)
    _checks.check_usable("lr", rate, [w_data], _W, ops)
    _checks.check_usable("decay_lambda", decay, [w_data], _W, ops)
    stop = _checks.check_stop("stop_gradients", stop_gradients)
    if out is None:  # one layer is one batch: its step, straight
        step = batch_step(ops, _RULE, _ONE_LAYER, decay_kind(decay), stop, False, False)
        (new,), _ = step([w_data], [g], None, rate, decay, False, None, None)
        return Array(new, name) if isinstance(w, Array) else new
    target = _checks.check_out(out, w_data, ("out", "w", None, False), name, ops)
    late = must_write_late(ops, [target], [w_data], [g, *array_values(ops, [rate, decay])])
    writable = ops.unwritable(target) is None
    (new,) = _run(
        ops,
        [w_data],
        [g],
        rate,
        decay,
        stop,
        [target],
        write_late=late,
        writable=writable,
        handed_over=out is w,
    )
    _checks.check_no_escape(ops, [out], [new], lambda i: "out")
    write_all(ops, [target], [new], lambda i: "out")
    write_back(out, new, ops)
    return out


def flatten(w: Any) -> Flat:
    """``w`` flattened by optree, or by its backend's own tree library (JAX's
    ``jax.tree_util``) when it holds nodes that only that library knows."""
    flat = flatten_optree(w)
    if not flat.leaves or _checks.all_native(flat.leaves):
        return flat
    names = [owner(x) for x in flat.leaves]
    if all(names):
        return flat
    name = current_backend() or next((n for n in names if n is not None), None)
    if name is None and "jax" in sys.modules:
        name = "jax"  # a pytree that only JAX knows (flax, equinox)
    flatten = None if name is None else get_backend(name).flatten
    return flat if flatten is None else flatten(w)


def _update_tree(
    w: Any, dcdw: Any, lr: Any, decay_lambda: Any, stop_gradients: Any, out: Any, axis_name: Any = None
) -> Any:
    flat = flatten(w)
    _checks.check_tree("w", w, flat)
    if not flat.leaves:  # an empty tree: itself (as a tree map gives), once the others agree
        _check_empty(w, dcdw, out)
        _check_settings(lr, decay_lambda, stop_gradients)
        return w if out is None else out
    grads = leaves_like("dcdw", dcdw, flat)
    active = present(grads)
    out_leaves = None if out is None else leaves_like("out", out, flat, broadcast=False)
    if not active:  # no gradient anywhere: w as it is, or copied into out
        _check_settings(lr, decay_lambda, stop_gradients)
        return flat.rebuild(flat.leaves) if out_leaves is None else copy_unchanged(flat, out, out_leaves)
    layers = _checks.checked_layers(flat, grads, active, ("dcdw", "w", is_leaf(dcdw)))
    leaves, name, ops, ws, gs = layers.leaves, layers.name, layers.ops, layers.ws, layers.gs
    rates = _per_leaf("lr", lr, flat, active, ws, ops, partial(_checks.check_lr, name=name, ops=ops))
    decays = _per_leaf(
        "decay_lambda", decay_lambda, flat, active, ws, ops, partial(_checks.check_decay, name=name, ops=ops)
    )
    stops = _per_leaf("stop_gradients", stop_gradients, flat, active, ws, ops, _checks.check_stop)
    checked = None
    if out_leaves is not None:
        checked = _checks.check_out_tree(out, out_leaves, flat, active, ws, ("out", "w"), name, ops)
        if len(active) < len(flat.leaves):
            _check_kept_in_place(flat, active, checked, ops)
    outs = None if checked is None else checked.arrays
    kept = _checks.KeptOuts.none() if checked is None else checked.kept
    axes = _checks.axis_names("axis_name", axis_name, flat, active, ops)

    # Outputs written as the step goes, but for the layers whose outputs share memory
    # with another array of the call: written once every layer is computed. (Array
    # learning rates and decays are read as the step goes, like the gradients.)
    places: set[int] = set()
    if outs is not None:
        reads = [*gs, *array_values(ops, [*rates, *decays])]
        places = late_outputs(ops, concat(outs, kept.datas), concat(ws, kept.weights), reads)
    writable = checked is not None and checked.writable
    late = {i for i in places if i < len(ws)} if writable else set()
    results: list[Any] = [None] * len(ws)
    groups = _groups(rates, decays, stops)
    handed_over = checked is not None and _handed_over(out, w, checked.given, leaves)
    parts = [part for indices in groups for part in now_and_later(indices, late, len(ws))]

    def run(part: list[int]) -> None:
        new = _run(
            ops,
            [ws[i] for i in part],
            [gs[i] for i in part],
            rates[part[0]],
            decays[part[0]],
            stops[part[0]],
            None if outs is None else [outs[i] for i in part],
            write_late=part[0] in late if writable else bool(places),
            writable=writable,
            handed_over=handed_over,
            alone=len(groups) == 1 and len(part) == len(ws),
            axis_names=None if axes is None else tuple(axes[i] for i in part),
        )
        put(results, part, new)

    if checked is None:
        for part in parts:
            run(part)
        return _finish(flat, None, None, name, dict(zip(active, results)))
    # Written as they go: each layer where every output can be, but the late ones.
    written_now = [writable and part[0] not in late for part in parts]
    new_values: dict[int, Any] = {}

    def checks() -> list[tuple[Any, Any]]:  # (once the layers computed aside are)
        for part, now in zip(parts, written_now):
            if now:  # (their results: their outputs, written as they go)
                put(results, part, take(checked.arrays, part))
        writes, values = _late_writes(flat, checked, ops, (active, results), bool(places))
        new_values.update(values)
        return writes

    run_checked(ops, [(now, partial(run, part)) for part, now in zip(parts, written_now)], checks)
    return _given(flat, out, checked, name, new_values)


def _check_kept_in_place(flat: Flat, active: list[int], checked: _checks.Outputs, ops: Backend) -> None:
    """The layers without a gradient that are their own outputs keep their weights as
    they are: no other output may share their memory (it was written into them)."""
    taken = {*active, *checked.kept.indices}
    kept = [i for i, x in enumerate(flat.leaves) if i not in taken and owner(x) is not None]
    if not kept:
        return
    places = [*active, *checked.kept.indices, *kept]

    def label(k: int) -> str:
        return str(Path("out" if k < len(places) - len(kept) else "w", flat.paths[places[k]]))

    targets = [*checked.arrays, *checked.kept.datas]
    check_untouched(ops, targets, [unwrap(flat.leaves[i]) for i in kept], label)


def _given(flat: Flat, out: Any, checked: _checks.Outputs, name: str, new: dict[int, Any]) -> Any:
    """The ``new`` values (by leaf) given to ``out``'s handles and Container entries,
    their arrays written already; ``out``."""
    given = _finish(flat, out, checked.leaves, name, new)
    _checks.fill_entries(checked.entries)
    return given


def _late_writes(
    flat: Flat,
    checked: _checks.Outputs,
    ops: Backend,
    stepped: tuple[list[int], list[Any]],
    late: bool,
) -> tuple[list[tuple[Any, Any]], dict[int, Any]]:
    """The writes, checked, of the results of the ``stepped`` layers (their indices,
    results) and of the copies of the kept layers' weights into their outputs, where
    not written as the step goes; and every leaf's new value, by index. The kept
    weights are copied where anything is written ``late`` (they are read as they were
    before anything was written). A handle whose array cannot be written takes a copy
    of weights that can (a ``tf.Variable``): given them, its next update would write them."""
    active, results = stepped
    kept, active_outs, outs = checked.kept, checked.given, checked.arrays
    copies = [
        ops.snapshot(x) if o is not x and (late or _takes_the_weights(ops, o, x)) else x
        for x, o in zip(kept.weights, kept.datas)
    ]
    indices, values = concat(active, kept.indices), concat(results, copies)

    def label(k: int) -> str:
        return str(Path("out", flat.paths[indices[k]]))

    if kept.indices or not _checks.all_native(active_outs):
        handles = concat(active_outs, kept.targets)
        check_handles(ops, handles, values, label)
        _checks.check_no_escape(ops, handles, values, label)
    return checked_writes(ops, concat(outs, kept.datas), values, label), dict(zip(indices, values))


def _handed_over(out: Any, w: Any, outs: list[Any], leaves: list[Any]) -> bool:
    """Whether ``out`` hands ``w``'s arrays over to be replaced: it is ``w``, or each output
    is the weights' own handle, which takes the new array. (Another Container or handle on
    the same arrays would leave ``w`` holding buffers donated, deleted.)"""
    return out is w or all(o is x and unwrap(o) is not o for o, x in zip(outs, leaves))


def _takes_the_weights(ops: Backend, target: Any, weights: Any) -> bool:
    """Whether an output handle would take the ``weights`` array itself (its own array
    cannot be written) where the weights can be written."""
    return ops.unwritable(target) is not None and ops.unwritable(weights) is None


def _finish(flat: Flat, out: Any, out_leaves: list[Any] | None, name: str, new: dict[int, Any]) -> Any:
    """Results given to ``out``'s handles (and ``out`` returned), or a new tree like ``w``."""
    if out_leaves is not None:
        if not _checks.all_native(out_leaves):  # native outputs were written already
            ops = get_backend(name)
            for i, target in enumerate(out_leaves):
                if i in new:
                    write_back(target, new[i], ops)
        return out
    leaves = [
        x if i not in new else Array(new[i], name) if isinstance(x, Array) else new[i]
        for i, x in enumerate(flat.leaves)
    ]
    return flat.rebuild(leaves)


def _check_empty(w: Any, dcdw: Any, out: Any) -> None:
    """``w`` holds no array: it must be an empty tree (None is not one), and ``dcdw``
    (unless one array for every leaf) and ``out`` must hold none either."""
    if w is None:
        raise LarsMultiTypeError("w: expected an array or a tree of arrays, got None")
    for arg, value in (("dcdw", dcdw), ("out", out)):
        if value is None or (arg == "dcdw" and is_leaf(value)):
            continue
        if is_leaf(value) and owner(value) is None:
            raise LarsMultiTypeError(
                f"{arg}: expected the structure of w, an empty {type_name(w)}, got {type_name(value)}"
            )
        if flatten_optree(value).leaves:
            raise LarsMultiValueError(
                f"{arg}: expected the structure of w, an empty {type_name(w)}, got a {type_name(value)} "
                "holding arrays"
            )


def _check_settings(lr: Any, decay_lambda: Any, stop_gradients: Any) -> None:
    """The settings, where no layer steps, as far as they can be checked with no
    array to go by: one value for every layer (a tree of them pairs with layers,
    none of which steps) that is no array must be a valid number or bool."""
    numpy = get_backend("numpy")  # (no array: only checks of numbers apply)
    for arg, value, check in (
        ("lr", lr, _checks.check_lr),
        ("decay_lambda", decay_lambda, _checks.check_decay),
    ):
        if is_leaf(value) and owner(value) is None:
            check(arg, value, name="numpy", ops=numpy)
    if is_leaf(stop_gradients):
        _checks.check_stop("stop_gradients", stop_gradients)


def copy_unchanged(
    flat: Flat,
    out: Any,
    out_leaves: list[Any],
    w_arg: str = "w",
    check: Callable[[_checks.KeptOuts, Backend], None] | None = None,
) -> Any:
    """The weights (``w_arg``) copied into ``out`` (every output checked first, by
    ``check`` too where given)."""
    arrays = [i for i, x in enumerate(flat.leaves) if owner(x) is not None]
    if not arrays:
        return out
    name = _checks.call_backend(take(flat.leaves, arrays), take(flat.paths, arrays), w_arg)
    ops = get_backend(name)
    checked = _checks.check_out_tree(out, out_leaves, flat, [], [], ("out", w_arg), name, ops)
    kept = checked.kept
    if not kept.indices:  # (every layer its own output)
        return out
    if check is not None:
        check(kept, ops)
    late = must_write_late(ops, kept.datas, kept.weights, [])
    writes, new = _late_writes(flat, checked, ops, ([], []), late)  # (checked: no layer steps)
    for target, value in writes:
        ops.write(target, value)
    return _given(flat, out, checked, name, new)


def _per_leaf(
    arg: str,
    value: Any,
    flat: Flat,
    active: list[int],
    ws: list[Any],
    ops: Backend,
    check: Callable[[Any, Any], Any],
) -> list[Any]:
    """``check``-ed values, one per active leaf of ``w``; a single value is checked once."""
    if is_single(value, flat):
        checked = check(arg, value)
        _checks.check_usable(arg, checked, ws, lambda k: Path("w", flat.paths[active[k]]), ops)
        return [checked] * len(active)
    leaves = leaves_like(arg, value, flat)
    values = []
    for i, x in zip(active, ws):
        path = Path(arg, flat.paths[i])
        checked = check(path, leaves[i])
        _checks.check_usable(path, checked, [x], _checks.named(Path("w", flat.paths[i])), ops)
        values.append(checked)
    return values


def _flags(n: int, axis_names: Any) -> LayerFlags:
    """Every layer adapted and decayed, kept for the next call of ``n`` layers; made anew
    where a compiler that guards traces the call (Dynamo would guard on the store: an
    eager call of another size made every compiled step recompile)."""
    if _registry.guarding():
        return LayerFlags.every(n, axis_names)
    key = (n, axis_names)
    flags = _FLAGS.get(key)
    if flags is None:
        if len(_FLAGS) >= 64:  # (bounded: trees of ever new sizes, layers dropped at random)
            _FLAGS.clear()
        flags = _FLAGS[key] = LayerFlags.every(n, axis_names)
    return flags


def _run(
    ops: Backend,
    group_w: list[Any],
    group_g: list[Any],
    lr: Any,
    decay: Any,
    stop: bool,
    group_out: list[Any] | None,
    *,
    write_late: bool,
    writable: bool,
    handed_over: bool = False,
    alone: bool = True,
    axis_names: tuple[Any, ...] | None = None,
) -> list[Any]:
    """One group of layers that share their hyperparameters (``alone``: every layer).

    Unless ``write_late``, ``writable`` outputs (every one of them) are written
    as the group goes; else the new arrays are returned, for the caller to
    write once every group has been computed. ``handed_over``: the outputs are
    the weights' own handles (see :func:`_handed_over`). ``axis_names``: one mesh
    axis name (or None) per layer.
    """
    writable = writable and group_out is not None
    # Immutable arrays (jax) are replaced instead: donate the weights' buffers
    # when the caller hands them over (out=w) and nothing else reads them, and
    # the group is every layer (a later group failing would find them gone).
    donate = (
        alone
        and handed_over
        and group_out is not None
        and not writable
        and not write_late
        and all(o is x for o, x in zip(group_out, group_w))
    )
    direct = writable and not write_late
    flags = _flags(len(group_w), axis_names)
    new, _ = lars_step(
        ops,
        _RULE,
        flags,
        group_w,
        group_g,
        [None] * len(group_w),
        lr,
        decay,
        False,
        group_out if direct else None,
        stop_gradients=stop,
        donate=donate,
    )
    return new


def _groups(rates: list[Any], decays: list[Any], stops: list[bool]) -> list[list[int]]:
    """Indices of the layers sharing (lr, decay_lambda, stop_gradients): numbers
    by value, arrays by identity (no ``id()``: ``torch.compile`` traces this)."""
    groups: list[tuple[Any, Any, bool, list[int]]] = []
    for i, (rate, decay, stop) in enumerate(zip(rates, decays, stops)):
        for group_rate, group_decay, group_stop, indices in groups:
            if _same(rate, group_rate) and _same(decay, group_decay) and stop == group_stop:
                indices.append(i)
                break
        else:
            groups.append((rate, decay, stop, [i]))
    return [indices for *_, indices in groups]


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is float and type(b) is float and a == b)
