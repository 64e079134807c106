r"""The LARS optimizer, functional: ``opt = lars(...)``, ``state = opt.init(params)``,
``params, state = opt.step(params, grads, state)``.

One step for every backend and every convention (``preset="paper"``,
``"optax"``, ``"timm"``; see :mod:`lars_multi._presets`), written once in
:mod:`lars_multi._step`. ``params`` is any tree of native arrays of
one backend, paired by key with ``grads``, masks and state as in
:func:`lars_multi.lars_update`; the state is a :class:`LarsState` of native
arrays that the framework's own tools save (pickle, ``torch.save``, orbax; on
TensorFlow, whose ``tf.train.Checkpoint`` saves variables only, held in
``tf.Variable``\ s: see the README's recipe). ``out=params`` updates the
parameters in place (NumPy arrays, torch tensors, ``tf.Variable``\ s,
``lm.Array``\ s) and the momentum buffers that can be written; on JAX
the step is one compiled program, on TensorFlow one ``tf.function``.

>>> import numpy as np, lars_multi as lm
>>> opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.02)
>>> params = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}
>>> state = opt.init(params)
>>> grads = {"w": np.full((2, 2), 0.5, np.float32), "b": np.ones(2, np.float32)}
>>> params, state = opt.step(params, grads, state)
>>> params["w"].round(6).tolist(), params["b"].tolist(), int(state.count)
([[0.998, 0.998], [0.998, 0.998]], [-0.1, -0.1], 1)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import numpy as np

from . import _checks, _registry
from ._aliasing import (
    array_values,
    check_handles,
    check_untouched,
    checked_writes,
    late_outputs,
    run_checked,
)
from ._array import Array
from ._errors import LarsMultiTypeError, LarsMultiValueError, MixedFrameworksError, no_autograph, type_name
from ._lars import copy_unchanged, flatten
from ._lists import concat, each_is, now_and_later, put, take
from ._presets import PRESETS, Preset, RankMask, get_preset
from ._protocol import Backend, Layout
from ._registry import get_backend
from ._step import LayerFlags, StepConfig, lars_step
from ._tree import Flat, Path, leaves_like, present
from .schedules import warmup_cosine, warmup_polynomial

__all__ = ["PRESETS", "LarsOptimizer", "LarsState", "lars", "warmup_cosine", "warmup_polynomial"]

Schedule = Callable[[Any], Any]
Mask = Any  # a tree of bools like params, a callable (path, array) -> bool, or params -> tree of bools


@dataclass(frozen=True)
class ParamsMask:
    """A mask in optax's convention: a callable of the whole parameter tree that
    returns a tree of bools like it (a one-argument callable given as a mask)."""

    function: Callable[[Any], Any]


@dataclass(frozen=True)
class LeafMask:
    """A mask asked per layer: a callable ``(path, array) -> bool``."""

    function: Callable[[Any, Any], Any]


def _mask_arg(name: str, mask: Mask, default: RankMask) -> Mask:
    """A mask as given (None: the preset's ``default``; a tree of bools); a function
    by its signature: one that takes one argument is called with the parameters
    (optax's convention), one that takes two per leaf with ``(path, array)``."""
    if mask is None:
        return default
    if not callable(mask) or isinstance(mask, RankMask) or not _is_function(mask):
        return mask
    try:
        signature = inspect.signature(mask)
    except (TypeError, ValueError):  # no signature to read (some builtins): per leaf
        return LeafMask(mask)
    for arguments, takes_params in (((None, None), False), ((None,), True)):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return ParamsMask(mask) if takes_params else LeafMask(mask)
    raise LarsMultiTypeError(
        f"{name}: expected a callable (path, array) -> bool or params -> tree of bools, "
        f"got {type_name(mask)} with signature {signature}"
    )


def _arrays_and_backend(flat: Flat) -> tuple[list[Any], str]:
    """The parameters' arrays (handles unwrapped; other leaves are refused later) and the
    one backend owning them (another framework's is named by its path)."""
    places = [i for i, x in enumerate(flat.leaves) if _checks.owner(x) is not None]
    if not places:
        raise LarsMultiValueError("params: expected a tree with at least one array, got none")
    leaves = [_checks.unwrap(flat.leaves[i]) for i in places]
    return leaves, _checks.call_backend(leaves, take(flat.paths, places), "params")


def _steps(leaf: Any, ops: Backend) -> bool:
    """Whether a leaf of the parameters is an array that steps where it has a gradient
    (checked as such): all but the backend's own arrays of other dtypes (an integer one,
    a counter in a model's tree, is left as it is where it has no gradient, as
    ``lars_update`` leaves it, and refused where it has one)."""
    if _checks.owner(leaf) is None:
        return False
    data = _checks.unwrap(leaf)
    return not ops.is_native(data) or data.dtype in ops.FLOAT_DTYPES


def _is_function(mask: Any) -> bool:
    """Whether a callable mask is a function, not a mask tree that can be called (an
    equinox module of bools, as ``jax.tree.map`` over a module gives): a tree whose
    leaves are all bools is a mask tree; a callable that flattens to anything else (itself,
    or fields that are no bools: a module's method, a ``jax.tree_util.Partial``) a function."""
    leaves = flatten(mask).leaves
    return not leaves or leaves == [mask] or not all(map(_is_bool_value, leaves))


def _is_bool_value(value: Any) -> bool:
    """A bool, or a 0-d bool array of any framework (a mask's value)."""
    return isinstance(value, bool | np.bool_) or (
        "bool" in str(getattr(value, "dtype", "")) and tuple(getattr(value, "shape", (1,))) == ()
    )


class LarsState(NamedTuple):
    r"""The optimizer's state: the step count (a 0-d int32 array), the momentum
    buffers (a tree like the parameters, in their dtypes; None without momentum)
    and, in timm's convention with momentum only (else None), ``started``: per
    parameter, whether its buffer has been started (a 0-d bool array), so that a
    parameter's first step starts its buffer at :math:`r u` as timm's does,
    whenever its first gradient comes. The flags also say what the buffers hold:
    a timm optimizer refuses a state with buffers but no flags (another preset's,
    holding the step :math:`\eta r u`), and the others a state with flags."""

    count: Any
    momentum: Any
    started: Any = None


def _rate(name: str, value: Any) -> Any:
    """A number >= 0 (checked now), or a schedule or an array (checked at each step,
    the array against the parameters' backend; its value is not read)."""
    if _checks.is_number(value):  # (NumPy scalars too: checked now, as Python floats)
        return _checks.check_number(name, value)
    if callable(value):
        _check_schedule(name, value)
        return value
    if _checks.owner(value) is not None:
        return value
    raise LarsMultiTypeError(f"{name}: expected a number, a 0-d array or a schedule, got {type_name(value)}")


def _check_schedule(name: str, schedule: Any) -> None:
    """A schedule is called with the step count: one that cannot take it failed at the
    first step, with Python's own error naming neither argument."""
    try:
        inspect.signature(schedule).bind(0)
    except TypeError:
        raise LarsMultiTypeError(
            f"{name}: expected a number, a 0-d array or a schedule (a callable of the step count), "
            "got a callable that cannot be called with one argument"
        ) from None
    except ValueError:  # (no signature to read: called as it is)
        pass


@dataclass(frozen=True)
class LarsOptimizer:
    """A configured LARS optimizer; make one with :func:`lars`."""

    learning_rate: Any
    weight_decay: Any
    config: StepConfig
    adapt_mask: Mask
    weight_decay_mask: Mask
    axis_name: Any = None
    differentiable: bool = False

    def __post_init__(self) -> None:
        """Every setting checked and taken as :func:`lars` takes it, however the optimizer
        is made (``dataclasses.replace(opt, learning_rate=-0.1)`` stepped uphill: a Python
        number is checked once, here)."""
        if not isinstance(self.differentiable, bool):
            raise LarsMultiTypeError(f"differentiable: expected a bool, got {type_name(self.differentiable)}")
        config = self.config
        settings = _step_config(**{field.name: getattr(config, field.name) for field in fields(config)})
        default = config.preset.default_mask
        adapt = _mask_arg("adapt_mask", self.adapt_mask, default)
        decay = adapt
        if self.weight_decay_mask is not self.adapt_mask:
            decay = _mask_arg("weight_decay_mask", self.weight_decay_mask, default)
        taken = {
            "learning_rate": _rate("learning_rate", self.learning_rate),
            "weight_decay": _rate("weight_decay", self.weight_decay),
            "config": settings,
            "adapt_mask": adapt,
            "weight_decay_mask": decay,
        }
        for name, value in taken.items():
            object.__setattr__(self, name, value)

    def init(self, params: Any) -> LarsState:
        """Step count 0 and zero momentum buffers like ``params`` (None for a leaf that is
        no floating array: an integer counter in a model's tree never steps)."""
        flat = _flatten_params(params)
        _checks.check_tree("params", params, flat)
        leaves, name = _arrays_and_backend(flat)
        ops = get_backend(name)
        count = ops.scalar_for(0, "int32", leaves)
        if self.config.momentum == 0:
            return LarsState(count, None)
        stepping = [_steps(x, ops) for x in flat.leaves]
        buffers = [ops.zeros_like(_checks.unwrap(x)) if s else None for x, s in zip(flat.leaves, stepping)]
        started = None
        if self.config.tracks_start:
            started = flat.rebuild([ops.scalar_for(False, "bool", leaves) if s else None for s in stepping])
        return LarsState(count, flat.rebuild(buffers), started)

    @no_autograph
    def step(self, params: Any, grads: Any, state: LarsState, *, out: Any = None) -> tuple[Any, LarsState]:
        """One LARS step: the new parameters and state.

        With ``out=params`` (NumPy arrays, torch tensors, ``tf.Variable`` s,
        ``lm.Array`` s), the parameters are written in place and returned, and so are
        the momentum buffers that can be written (NumPy arrays, torch tensors,
        ``tf.Variable`` s; TensorFlow buffers made by :meth:`init` are tensors, new
        in the state returned). Go on with the state returned: its count advances.
        Everything is checked before anything is written.
        """
        flat = _flatten_params(params)
        _checks.check_tree("params", params, flat)
        _checks.check_some_leaves("params", params, flat)
        all_grads = leaves_like("grads", grads, flat)
        active = present(all_grads)
        if not active:
            return self._without_gradients(params, flat, state, out)
        leaves, paths, name, ops, ws, layout, gs = _checks.checked_layers(
            flat, all_grads, active, ("grads", "params", False)
        )
        self._check_state(state)
        step_count = _step_count(state.count, ws, name, ops)
        _checks.check_usable("state.count", step_count, ws, lambda k: Path("params", paths[k]), ops)
        all_buffers = self._buffers(state, flat, active, layout, name, ops)
        buffers = take(all_buffers, active)
        adapt, decay_flags = self._masks(params, flat, active, layout)
        flags = LayerFlags(
            adapt=adapt,
            decay=decay_flags,
            axis_names=_checks.axis_names("axis_name", self.axis_name, flat, active, ops),
        )
        lr = _rate_now("learning_rate", self.learning_rate, step_count, name, ops)
        decay = _rate_now("weight_decay", self.weight_decay, step_count, name, ops)
        rates = (("learning_rate", lr), ("weight_decay", decay))
        _checks.check_settings_usable(rates, self.config, ws, lambda i: Path("params", paths[i]), ops)
        # The outputs are checked once the masks and schedules (the caller's code) have run.
        checked = None
        if out is not None:  # out=params: its leaves are the parameters'
            out_leaves = flat.leaves if out is params else leaves_like("out", out, flat, broadcast=False)
            checked = _checks.check_out_tree(out, out_leaves, flat, active, ws, ("out", "params"), name, ops)
            self._check_idle_buffers(all_buffers, active, flat, checked.kept, ops)
        outs = None if checked is None else checked.arrays
        kept = _checks.KeptOuts.none() if checked is None else checked.kept
        all_started = self._started(state, flat, active, ws, ops)
        if len(active) < len(flat.leaves):
            self._check_idle_state(state, flat, set(active), name, ops)
        first = _first(ops, step_count, all_started, active)
        # The buffers are written in place only by a step in place (out=params): with
        # another out, the state given stays as it was, as params do.
        in_place = outs is not None and each_is(outs, ws)
        buffers_writable = in_place and (self.config.momentum == 0 or ops.all_writable(buffers))
        writable = checked is not None and checked.writable and buffers_writable
        if outs is not None and len(active) < len(flat.leaves):  # (outputs, then buffers in place)
            written = outs + buffers if in_place and self.config.momentum else outs

            def written_label(k: int) -> str:
                where = "out" if k < len(active) else "state.momentum"
                return str(Path(where, flat.paths[active[k % len(active)]]))

            self._check_idle_kept(written, written_label, all_buffers, active, flat, ops, params=True)
        count = _next_count(step_count, ops)  # (before anything is written)
        handles = None
        if checked is not None and (kept.indices or not _checks.all_native(checked.given)):
            handles = [*kept.targets, *checked.given]
            indices = [*kept.indices, *active]

            def label(k: int) -> str:
                return str(Path("out", flat.paths[indices[k]]))

            def check(values: list[Any]) -> None:  # (the handles' new values: checked before any write)
                check_handles(ops, handles, values, label)
                _checks.check_no_escape(ops, handles, values, label)

        new_ws, new_buffers, copies = self._run(
            ops,
            flags,
            ws,
            gs,
            buffers,
            lr,
            decay,
            first,
            (outs, writable, in_place),
            (paths, flat.paths),
            kept,
            None if handles is None else check,
        )
        started = None
        if all_started is not None:
            now_started = _now_started(ops, ws, all_started, active, first, in_place)
            started = self._rebuild(flat, all_started, active, now_started)
        if checked is None:
            if not _checks.all_native(leaves):  # (handles among them: lm.Array in, lm.Array out)
                new_ws = [Array(n, name) if isinstance(x, Array) else n for x, n in zip(leaves, new_ws)]
            return self._rebuild(flat, flat.leaves, active, new_ws), self._new_state(
                count, flat, all_buffers, active, new_buffers, started
            )
        if handles is not None:  # (native outputs were written already)
            for target, new in zip(handles, [*copies, *new_ws]):
                if target is not new:
                    _checks.write_back(target, new, ops)
            _checks.fill_entries(checked.entries)
        momentum = (
            state.momentum
            if buffers_writable
            else self._new_state(count, flat, all_buffers, active, new_buffers, started).momentum
        )
        return out, LarsState(count, momentum, started)

    def _run(
        self,
        ops: Backend,
        flags: LayerFlags,
        ws: list[Any],
        gs: list[Any],
        buffers: list[Any],
        lr: Any,
        decay: Any,
        first: Any,
        written: tuple[list[Any] | None, bool, bool],
        paths: tuple[list[Any], list[Any]],
        kept: _checks.KeptOuts,
        check: Callable[[list[Any]], None] | None = None,
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """The step (compiled per batch on JAX and TensorFlow); ``written``: the outputs,
        whether they and the buffers are all writable, and whether the step is in place
        (out=params: the buffers are written too). Where everything is writable, each
        layer is written as it goes, but for those whose outputs or buffers share memory
        with another array of the step: they are computed, then written once every
        layer is computed (with the functional arithmetic: see :func:`lars_step`). Else
        every layer is computed, then written. ``first``: one value, or one per layer
        (eager: one step for the layers whose buffers start now, one for the others);
        ``paths``: the layers' key paths and all of the tree's, for messages. The
        ``kept`` layers' outputs receive copies of their weights (returned), once
        every layer is computed. ``check`` is given the kept layers' copies and every
        layer's new weights (its outputs, where written as it goes) before anything
        is written."""
        outs, writable, in_place = written
        n = len(ws)
        if outs is None or not writable:  # every layer computed, then written
            late, kept_late = set(range(n)), True  # (kept_late: the kept layers' weights copied first)
        else:  # the layers written once every layer is computed
            targets = outs + buffers if self.config.momentum else outs  # (every buffer checked: none is None)
            reads = concat(kept.weights, ws)
            k = len(kept.indices)
            places = late_outputs(
                ops, concat(kept.datas, targets), reads, [*gs, *array_values(ops, [lr, decay])]
            )
            late = {(i - k) % n for i in places if i >= k}
            kept_late = bool(places)
        new_ws, new_buffers = list(ws), list(buffers)
        # One step per value of first, split into the layers written as they go and the others.
        parts = [
            (part, value) for layers, value in _by_first(first, n) for part in now_and_later(layers, late, n)
        ]

        def run(part: list[int], value: Any) -> None:
            direct = part[0] not in late
            part_ws, part_buffers = lars_step(
                ops,
                self.config,
                flags.select(part),
                take(ws, part),
                take(gs, part),
                take(buffers, part),
                lr,
                decay,
                value,
                take(outs, part) if direct and outs is not None else None,
                stop_gradients=not self.differentiable,
            )
            put(new_ws, part, part_ws)
            put(new_buffers, part, part_buffers)

        # (nothing is written before the checks: the copies may be taken first)
        copies = [x if not kept_late or o is x else ops.snapshot(x) for x, o in zip(kept.weights, kept.datas)]

        def checks() -> list[tuple[Any, Any]]:  # (once the layers computed aside are)
            if outs is None:
                return []
            if check is not None:
                for part, _ in parts:
                    if part[0] not in late:  # (their outputs: written as they go)
                        put(new_ws, part, take(outs, part))
                check([*copies, *new_ws])
            into = (outs, buffers if in_place else None)
            return self._late_writes(ops, into, (new_ws, new_buffers), late, kept, copies, paths)

        steps = [(part[0] not in late, functools.partial(run, part, value)) for part, value in parts]
        run_checked(ops, steps, checks)
        return new_ws, new_buffers, copies

    def _late_writes(
        self,
        ops: Backend,
        targets: tuple[list[Any], list[Any] | None],
        new: tuple[list[Any], list[Any]],
        late: set[int],
        kept: _checks.KeptOuts,
        copies: list[Any],
        paths: tuple[list[Any], list[Any]],
    ) -> list[tuple[Any, Any]]:
        """The writes, checked, of the ``late`` layers' new weights into their outputs
        and, where ``targets`` has buffers (in place), of their new buffers into them;
        and of the ``copies`` of the kept layers' weights into their outputs."""
        layers = sorted(late)
        (outs, buffers), (new_ws, new_buffers) = targets, new
        changed = [None] * len(layers) if buffers is None else take(buffers, layers)  # (None: not written)
        into = concat(kept.datas, take(outs, layers), changed)
        values = concat(copies, take(new_ws, layers), take(new_buffers, layers))
        active_paths, all_paths = paths
        k, n = len(kept.indices), len(layers)

        def label(i: int) -> str:
            if i < k:
                return str(Path("out", all_paths[kept.indices[i]]))
            i -= k
            if i < n:
                return str(Path("out", active_paths[layers[i]]))
            return str(Path("state.momentum", active_paths[layers[i - n]]))

        if kept.indices and layers:  # (tied weights: one array for a layer stepped and one kept)
            check_handles(ops, into[: k + n], values[: k + n], label)
        return checked_writes(ops, into, values, label)  # (no buffer: None)

    def _without_gradients(self, params: Any, flat: Flat, state: Any, out: Any) -> tuple[Any, LarsState]:
        """A step where no parameter has a gradient: the parameters as they are
        (copied into ``out``), the buffers as they are, the step count advanced."""
        self._check_state(state)
        leaves, name = _arrays_and_backend(flat)
        ops = get_backend(name)
        self._check_idle_state(state, flat, set(), name, ops)
        count = _step_count(state.count, leaves, name, ops)
        new_state = state._replace(count=_next_count(count, ops))
        if out is None or out is params:
            return params, new_state
        out_leaves = leaves_like("out", out, flat, broadcast=False)
        buffers = None
        if self.config.momentum and state.momentum is not None:
            buffers = leaves_like("state.momentum", state.momentum, flat, broadcast=False)

        def check(kept: _checks.KeptOuts, ops: Backend) -> None:
            self._check_idle_buffers(buffers, [], flat, kept, ops)

        return copy_unchanged(flat, out, out_leaves, "params", check), new_state

    def _check_state(self, state: Any) -> None:
        """A LarsState whose buffers hold what this optimizer's do: timm's start flags
        mark a state of buffers holding r u (timm), which a preset whose buffers hold the
        step eta r u would read as a step about 1/eta too large; a state with buffers but
        no flags was made by such a preset, which timm would read as a step eta times too
        small."""
        if not isinstance(state, LarsState):
            raise LarsMultiTypeError(f"state: expected a LarsState from init(params), got {type_name(state)}")
        if state.started is not None and not self.config.tracks_start and self.config.momentum != 0:
            raise LarsMultiValueError(
                f"state: expected no start flags (state.started): preset {self.config.preset.name!r} keeps "
                "the step eta r u in its momentum buffers, got a state with them, made by a preset whose "
                "buffers hold r u without the learning rate ('timm'); init a new state"
            )
        if state.started is None and self.config.tracks_start and state.momentum is not None:
            raise LarsMultiValueError(
                f"state: expected start flags (state.started), as init makes them: preset "
                f"{self.config.preset.name!r} keeps r u without the learning rate in its momentum buffers, "
                "got a state without them, made by a preset whose buffers hold the step eta r u ('paper', "
                "'optax'); init a new state"
            )

    def _check_idle_state(
        self, state: LarsState, flat: Flat, active: set[int], name: str, ops: Backend
    ) -> None:
        """The buffers and start flags of the floating layers without a gradient (kept
        as they are), checked as the stepped layers' are: a state made for another tree,
        or of another dtype, is refused even where no layer steps."""
        idle = [i for i, leaf in enumerate(flat.leaves) if i not in active and _steps(leaf, ops)]
        if not idle:
            return
        for i in idle:  # (another framework's array, as the stepped layers' would be, is refused)
            data, leaf_name = _checks.unwrap(flat.leaves[i]), _checks.owner(flat.leaves[i])
            if leaf_name != name and not ops.is_native(data):
                raise MixedFrameworksError(
                    f"{Path('params', flat.paths[i])}: expected a {name} array, as the other parameters "
                    f"are, got a {leaf_name} array ({type_name(data)}); pass arrays of one framework"
                )
        ws = _checks.unwrap_all(take(flat.leaves, idle))
        layout = Layout(ws)
        _checks.check_all_weights("params", layout, take(flat.paths, idle), ops)
        self._buffers(state, flat, idle, layout, name, ops)
        self._started(state, flat, idle, ws, ops)

    def _check_idle_kept(
        self,
        targets: list[Any],
        label: Callable[[int], str],
        buffers: list[Any] | None,
        active: list[int],
        flat: Flat,
        ops: Backend,
        *,
        params: bool,
    ) -> None:
        """``targets`` (written in place; ``label(k)`` names target ``k``) must share no
        memory with what the layers without a gradient keep: their momentum buffers and,
        with ``params``, their parameters (a stepped layer's buffer that is such a
        parameter, or an output that is such a buffer, was written silently)."""
        stepped = set(active)
        keep, names = [], []
        for i, leaf in enumerate(flat.leaves):
            if i in stepped:
                continue
            if params and _checks.owner(leaf) is not None:
                keep.append(_checks.unwrap(leaf))
                names.append(str(Path("params", flat.paths[i])))
            if self.config.momentum and buffers is not None and buffers[i] is not None:
                keep.append(_checks.unwrap(buffers[i]))
                names.append(str(Path("state.momentum", flat.paths[i])))
        n = len(targets)
        check_untouched(ops, targets, keep, lambda k: label(k) if k < n else names[k - n])

    def _check_idle_buffers(
        self, buffers: list[Any] | None, active: list[int], flat: Flat, kept: _checks.KeptOuts, ops: Backend
    ) -> None:
        """The outputs of the layers without a gradient must share no memory with the
        momentum buffers of the layers not stepped (kept as they are in the state)."""
        if kept.indices:
            self._check_idle_kept(
                kept.datas,
                lambda k: str(Path("out", flat.paths[kept.indices[k]])),
                buffers,
                active,
                flat,
                ops,
                params=False,
            )

    @staticmethod
    def _rebuild(flat: Flat, leaves: Sequence[Any], active: list[int], new: list[Any]) -> Any:
        merged = list(leaves)
        for i, value in zip(active, new):
            merged[i] = value
        return flat.rebuild(merged)

    def _new_state(
        self, count: Any, flat: Flat, buffers: list[Any], active: list[int], new: list[Any], started: Any
    ) -> LarsState:
        if self.config.momentum == 0:
            return LarsState(count, None)
        return LarsState(count, self._rebuild(flat, buffers, active, new), started)

    def _started(
        self, state: LarsState, flat: Flat, active: list[int], ws: list[Any], ops: Backend
    ) -> list[Any] | None:
        """``state.started`` as one 0-d bool array per leaf (None where it is not kept),
        each where its parameter's arithmetic can read it."""
        if not self.config.tracks_start or state.started is None:
            return None
        started = leaves_like("state.started", state.started, flat, broadcast=False)
        for i, w in zip(active, ws):
            started[i] = _checks.unwrap(started[i])
            flag = started[i]
            if not ops.is_native(flag) or tuple(flag.shape) != () or ops.dtype_name(flag.dtype) != "bool":
                got = (
                    f"a {ops.dtype_name(flag.dtype)} array of shape {tuple(flag.shape)}"
                    if ops.is_native(flag)
                    else type_name(flag)
                )
                raise LarsMultiTypeError(
                    f"{Path('state.started', flat.paths[i])}: expected a 0-d bool array of "
                    f"{ops.FRAMEWORK}, got {got}"
                )
            label = _checks.named(Path("params", flat.paths[i]))
            _checks.check_usable(str(Path("state.started", flat.paths[i])), flag, [w], label, ops)
        return started

    def _buffers(
        self, state: Any, flat: Flat, active: list[int], ws: Layout, name: str, ops: Backend
    ) -> list[Any]:
        """The momentum buffers of every leaf, those of the ``active`` layers checked
        against their weights ``ws``. At momentum 0 there are none, but a state's
        buffers (a state made with momentum, as ``optax.inject_hyperparams`` may then
        set it to 0) are checked all the same: a state made for another tree is refused."""
        if self.config.momentum == 0:
            if state.momentum is not None:
                self._checked_buffers(state, flat, active, ws, name, ops)
            return [None] * len(flat.leaves)
        return self._checked_buffers(state, flat, active, ws, name, ops)

    @staticmethod
    def _checked_buffers(
        state: Any, flat: Flat, active: list[int], ws: Layout, name: str, ops: Backend
    ) -> list[Any]:
        if state.momentum is None:
            raise LarsMultiValueError(
                "state: expected momentum buffers (momentum > 0), got a state without them (made with "
                "momentum 0, or by a step at momentum 0, which keeps none: a state cannot take momentum "
                "back from 0; init a new one)"
            )
        buffers = leaves_like("state.momentum", state.momentum, flat, broadcast=False)
        if ops.alike(take(buffers, active), ws):
            return buffers
        for i, w in zip(active, ws.arrays):
            where = ("state.momentum", "params", flat.paths[i], False)
            buffers[i] = _checks.check_gradient(buffers[i], w, where, name, ops)  # (a dense array like w)
        return buffers

    def _masks(
        self, params: Any, flat: Flat, active: list[int], ws: Layout
    ) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """Which active layers are adapted, and which decayed (one mask read once
        where both are the same, as the preset's default is)."""
        adapt = tuple(self._mask("adapt_mask", self.adapt_mask, params, flat, active, ws))
        if self.weight_decay_mask is self.adapt_mask:
            return adapt, adapt
        decay = self._mask("weight_decay_mask", self.weight_decay_mask, params, flat, active, ws)
        return adapt, tuple(decay)

    @staticmethod
    def _mask(arg: str, mask: Mask, params: Any, flat: Flat, active: list[int], ws: Layout) -> list[bool]:
        """One bool per active layer, from a tree, a callable, or the preset's default."""
        if isinstance(mask, RankMask):
            return _of_known_ranks(arg, mask, ws.shapes, lambda k: flat.paths[active[k]])
        if isinstance(mask, ParamsMask):  # optax's convention: a tree of bools
            mask = mask.function(params)
        if isinstance(mask, LeafMask):
            values = [mask.function(flat.paths[i], w) for i, w in zip(active, ws.arrays)]
        elif isinstance(mask, bool):
            values = [mask] * len(active)
        else:
            leaves = leaves_like(arg, mask, flat, over_empty=True)  # (as optax reads a mask: a prefix tree)
            values = [leaves[i] for i in active]
        if list(map(type, values)).count(bool) != len(values):
            values = [_as_bool(v) for v in values]  # (as optax takes them)
            odd = next(((i, v) for i, v in zip(active, values) if type(v) is not bool), None)
            if odd is not None:
                hint = (
                    "; a callable of two parameters is asked per leaf, (path, array) -> bool: give a "
                    "mask of the whole params as lambda params: mask(params)"
                    if isinstance(mask, LeafMask)
                    else ""
                )
                raise LarsMultiTypeError(
                    f"{Path(arg, flat.paths[odd[0]])}: expected a bool, got {type_name(odd[1])}{hint}"
                )
        return values


def _as_bool(value: Any) -> Any:
    """A mask's value as a bool where it is one: a NumPy bool, or a concrete 0-d bool
    array of any framework (``jnp.asarray(True)``), as optax takes them; else as it is
    (a traced one cannot be read, and is refused by name)."""
    if not _is_bool_value(value):
        return value
    try:
        return bool(value)
    except TypeError:  # (traced: JAX's, TensorFlow's errors for it are TypeErrors)
        return value


def _of_known_ranks(arg: str, mask: RankMask, shapes: list[Any], path_of: Callable[[int], Any]) -> list[bool]:
    """A preset's default mask, which goes by each layer's number of dimensions: a
    shape of unknown rank (TensorFlow's ``TensorShape(None)``, a trace widened by
    ``reduce_retracing``) cannot say it, and is refused by name (``path_of(k)``:
    layer ``k``'s key path, asked only then)."""
    try:
        return mask.of_shapes(shapes)
    except ValueError:
        unknown = next(i for i, shape in enumerate(shapes) if getattr(shape, "rank", 0) is None)
        raise LarsMultiValueError(
            f"{Path('params', path_of(unknown))}: expected a known number of dimensions (the preset's "
            f"default {arg} goes by it), got a shape of unknown rank; give {arg} (a tree of bools or a "
            "callable)"
        ) from None


def _now_started(
    ops: Backend, ws: list[Any], started: list[Any], active: list[int], first: Any, in_place: bool
) -> list[Any]:
    """The start flags of the ``active`` layers after their step: True, each an array of
    its own (one flag for two layers would restart both where one is reset in place, and
    JAX cannot donate one buffer twice). A flag that was True already is kept where the
    state given is updated in place (``out=params``) or its arrays are immutable, unless
    another layer's flag, stepped or not, is the same array; else a new state's flags
    are new, as its buffers are. ``first``: per layer, whether its buffer started now
    (a host bool where known). Inside a traced program the flags are one value."""
    true = ops.scalar_for(True, "bool", ws)
    immutable = ops.unwritable(true) is not None
    known = isinstance(first, list) and all(type(f) is bool for f in first)
    if immutable and not known:  # (traced: values of the program, one for every layer)
        return (
            [true] * len(active)
            if ops.is_traced(ws[0])
            else [true] + [ops.scalar_for(True, "bool", ws) for _ in active[1:]]
        )
    kept = [False] * len(active)
    if known and (in_place or immutable):
        stepped = set(active)
        seen = {id(flag) for i, flag in enumerate(started) if i not in stepped and flag is not None}
        for k, (i, starts) in enumerate(zip(active, first)):
            kept[k] = not starts and id(started[i]) not in seen
            seen.add(id(started[i]))
    flags = []
    spare: Any = true  # (the first new flag: the one made above)
    for i, keep in zip(active, kept):
        if keep:
            flags.append(started[i])
        else:
            flags.append(ops.scalar_for(True, "bool", ws) if spare is None else spare)
            spare = None
    return flags


def _first(ops: Backend, count: Any, started: list[Any] | None, active: list[int]) -> Any:
    """Whether the buffers start now: at step 0, or (``started``) per layer, for
    each layer whose buffer has not started; values are read on the host only
    where the step is not compiled and they can be (not inside ``torch.vmap``)."""
    traced = ops.COMPILES or not ops.readable()
    if started is None:
        first = count == 0
        return first if traced else bool(first)
    if traced:
        return [~started[i] for i in active]
    return [not bool(started[i]) for i in active]


def _by_first(first: Any, n: int) -> list[tuple[list[int], Any]]:
    """The layers in groups with one ``first`` each: (layers, value). Host bools
    split into the layers whose buffers start now and the others."""
    if not isinstance(first, list) or not all(type(f) is bool for f in first):
        return [(list(range(n)), first)]
    groups: dict[bool, list[int]] = {}
    for i, value in enumerate(first):
        groups.setdefault(value, []).append(i)
    return [(indices, value) for value, indices in groups.items()]


def _rate_now(arg: str, rate: Any, count: Any, name: str, ops: Backend) -> Any:
    """A rate's value at step ``count``: a number (checked when the optimizer was
    made), or a schedule's value, checked now as far as it can be without reading
    an array (a number finite and >= 0; an array 0-d and floating, of the
    parameters' backend)."""
    if callable(rate):
        return _checks.check_rate(f"{arg}(state.count)", rate(count), name=name, ops=ops)
    if type(rate) is not float:  # an array
        return _checks.check_rate(arg, rate, name=name, ops=ops)
    return rate


# The step count is an int32 array, which saturates: the last count that advances.
_LAST_COUNT = 2**31 - 2


def _step_count(count: Any, ws: Sequence[Any], name: str, ops: Backend) -> Any:
    """``state.count``, checked; a Python int or a NumPy one (read back from a file) as
    the framework's array beside ``ws``, as ``init`` makes it (so that a schedule's rate
    is the same array, rounded the same); an array as int32."""
    if _registry.is_compiling() and isinstance(count, (np.ndarray, np.generic)):
        count = ops.scalar_for(count, "int32", ws)  # (Dynamo cannot trace NumPy's dtype: a tensor, not read)
    _check_count(count, name, ops)
    data = _checks.unwrap(count)
    # On the host (checked): the framework's int32 array, as init makes it (a schedule's rate is
    # then the same array). (A tuple, not a union: torch.compile cannot trace a union of NumPy types.)
    if isinstance(count, (int, np.ndarray, np.integer)) and not ops.is_native(count):
        return ops.scalar_for(data, "int32", ws)
    # As int32 before one is added to it: a count of a narrower dtype wrapped (uint8 255 + 1 = 0).
    dtype = ops.dtype_name(data.dtype)
    if dtype in ("int64", "uint32", "uint64"):  # (clamped, not wrapped to a negative count: not read)
        unsigned = dtype != "int64"
        if unsigned:  # (torch compares neither: as int64, where one beyond its range is < 0)
            data = ops.asarray(data, "int64")  # (JAX without x64: int32)
        beyond = data > _LAST_COUNT + 1
        data = ops.where(beyond | (data < 0) if unsigned else beyond, _LAST_COUNT + 1, data)
    if dtype != "int32":
        return ops.asarray(data, "int32")
    return count


def _next_count(count: Any, ops: Backend) -> Any:
    """The count after ``count`` (an int32 array that stays where it is and, not read,
    saturates at int32's largest value rather than wrap)."""
    return ops.asarray(ops.where(count > _LAST_COUNT, count, count + 1), "int32")


def _check_count(count: Any, name: str, ops: Backend) -> None:
    """``state.count``: an integer >= 0, as a Python int or a 0-d integer array of
    NumPy or of the parameters' framework. A value on the host (Python, NumPy) is
    checked too; an array of the framework is not read (it may be on a device)."""
    data = _checks.unwrap(count)
    if isinstance(data, np.ndarray) and data.shape == () and data.dtype.kind in "iu":
        data = data[()]
    if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
        if not 0 <= data <= _LAST_COUNT + 1:  # (int32's: the last one stays, saturated, as an array's does)
            raise LarsMultiValueError(
                f"state.count: expected an integer in [0, {_LAST_COUNT + 1}], got {data}"
            )
        return
    if (
        _checks.owner(data) != name
        or len(data.shape)
        or not ops.dtype_name(data.dtype).startswith(("int", "uint"))
    ):
        got = type_name(count) + (
            f" of dtype {data.dtype} and shape {tuple(data.shape)}" if hasattr(data, "dtype") else ""
        )
        frameworks = "NumPy" if name == "numpy" else f"NumPy or {name}"
        raise LarsMultiTypeError(
            f"state.count: expected an integer >= 0, or a 0-d integer array of {frameworks}, got {got}"
        )


def _step_config(
    preset: Preset,
    momentum: Any,
    nesterov: Any,
    dampening: Any,
    trust_coefficient: Any,
    eps: Any,
    trust_clip: Any,
    always_adapt: Any,
    increments: bool = False,
) -> StepConfig:
    """The step's settings, checked, as numbers and bools (``eps`` None: the preset's)."""
    if not isinstance(preset, Preset):
        raise LarsMultiTypeError(f"preset: expected a Preset, got {type_name(preset)}")
    momentum = _checks.check_number("momentum", momentum, high=1.0)
    dampening = _checks.check_number("dampening", dampening, high=1.0)
    # (0 would make every ratio 0: nothing adapted would move)
    trust_coefficient = _checks.check_number("trust_coefficient", trust_coefficient, positive=True)
    eps = preset.eps if eps is None else _checks.check_number("eps", eps)
    for name, flag in (("nesterov", nesterov), ("trust_clip", trust_clip), ("always_adapt", always_adapt)):
        if not isinstance(flag, bool):
            raise LarsMultiTypeError(f"{name}: expected a bool, got {type_name(flag)}")
    if nesterov and (momentum == 0 or dampening != 0):
        raise LarsMultiValueError(
            "nesterov: expected momentum > 0 and dampening 0, "
            f"got momentum {momentum!r}, dampening {dampening!r}"
        )
    return StepConfig(
        preset=preset,
        momentum=momentum,
        nesterov=nesterov,
        dampening=dampening,
        trust_coefficient=trust_coefficient,
        eps=eps,
        trust_clip=trust_clip,
        always_adapt=always_adapt,
        increments=increments,
    )


def _flatten_params(params: Any) -> Flat:
    """``params`` flattened as ``lars_update`` flattens its weights, named in messages."""
    return replace(flatten(params), arg="params")


def lars(
    learning_rate: float | Schedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float | Schedule = 0.0,
    trust_coefficient: float = 0.001,
    eps: float | None = None,
    trust_clip: bool = False,
    always_adapt: bool = False,
    adapt_mask: Mask = None,
    weight_decay_mask: Mask = None,
    preset: str = "paper",
    axis_name: Any = None,
    differentiable: bool = False,
) -> LarsOptimizer:
    r"""The LARS optimizer of You, Gitman and Ginsburg (2017), in one library's convention.

    Args:
        learning_rate: :math:`\eta`, a number, a 0-d array of the parameters'
            framework, or a schedule (a callable of the step count, e.g.
            :class:`lars_multi.schedules.warmup_polynomial`). An array, and a
            schedule's value, are checked at each step without waiting on a device:
            a number must be finite and >= 0, an array 0-d and floating (a NumPy
            array's value, on the host, is read and checked as a number's; another
            framework's is not read).
        momentum: :math:`\mu \in [0, 1)`; 0 keeps no buffers.
        nesterov: Nesterov momentum (needs momentum > 0 and no dampening).
        dampening: :math:`d \in [0, 1)`, the part of each update the buffer drops (none
            at momentum 0, where there is no buffer: as in torch.optim).
        weight_decay: :math:`\lambda \ge 0`, a number, a 0-d array or a schedule.
        trust_coefficient: :math:`c > 0`.
        eps: added to the ratio's denominator; None takes the preset's (timm 1e-8, else 0).
        trust_clip: :math:`r \leftarrow \min(r / \eta, 1)` (apex LARC).
        always_adapt: timm's flag: adapt layers without weight decay too.
        adapt_mask, weight_decay_mask: which layers are adapted, and decayed: a
            tree of bools like the parameters, a callable ``(path, array) -> bool``
            called per leaf, or a callable of one argument called with the
            parameters that returns such a tree (optax's masks); None takes the
            preset's default (``"paper"``: every parameter with more than one
            dimension; ``"optax"`` and ``"timm"``: every parameter).
        preset: ``"paper"``, ``"optax"`` or ``"timm"``.
        axis_name: JAX only, for a step inside ``jax.shard_map``: the mesh axis
            the parameters are sharded over (a name, or a tuple of names), or a
            tree of names and ``None`` paired with the parameters by key
            (``None``: a replicated parameter, whose norms are not summed). The
            norms of the weights, the gradients and (``preset="optax"``) the
            updates are then summed across devices (``jax.lax.psum``).
            Without it, **inside jax.shard_map every norm is the norm of the
            device's own shard**, and the step differs from the unsharded one.
            Not needed under ``jax.jit`` with sharded arrays (``NamedSharding``),
            where norms are global and the results keep their sharding.
        differentiable: whether the functional step stays in the autograd graph
            (``jax.grad`` through an update, hyper-gradients), as optax's
            transformations do; by default the new parameters and state are cut
            from it, as ``torch.optim``'s steps are (a training loop then keeps
            no graph from one step to the next). In-place steps are never
            differentiable.
    """
    config = _step_config(
        preset=get_preset(preset),
        momentum=momentum,
        nesterov=nesterov,
        dampening=dampening,
        trust_coefficient=trust_coefficient,
        eps=eps,
        trust_clip=trust_clip,
        always_adapt=always_adapt,
    )
    return LarsOptimizer(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        config=config,
        adapt_mask=adapt_mask,
        weight_decay_mask=weight_decay_mask,
        axis_name=axis_name,
        differentiable=differentiable,
    )
