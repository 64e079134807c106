r"""LARS as a ``torch.optim.Optimizer``: ``opt = lm.torch.LARS(model.parameters(), lr=0.1)``.

A thin front door over the one LARS step of :mod:`lars_multi._step`
(the step :func:`lars_multi.optim.lars` runs): each parameter group's
hyper-parameters are checked by :func:`lars_multi.optim.lars` and become its
:class:`~lars_multi._step.StepConfig`; the group's ``adapt`` and
``decay`` (None: the preset's default, per parameter) become its
:class:`~lars_multi._step.LayerFlags`. The momentum buffer of a
parameter is ``opt.state[p]["momentum_buffer"]`` (in the parameter's dtype),
made at its first step; every layer is written in place as soon as it is
computed, so no temporary outlives its layer, unless a gradient, a tensor
learning rate or a parameter shares memory with another parameter (of any
group): then every layer is computed first, and written after, as the
functional step would (not checked while ``torch.compile`` traces the step:
storages cannot be).

It works with ``state_dict``/``load_state_dict``, ``zero_grad``,
``torch.optim.lr_scheduler``, ``torch.amp.GradScaler`` and
``torch.compile(opt.step, fullgraph=True)`` (give ``lr`` as a tensor so that
a scheduler changing it does not recompile; with a scheduler made, torch wraps
``opt.step`` in a function Dynamo does not trace, as for its own optimizers:
compile the training step with ``fullgraph=False`` there).

>>> import torch, lars_multi as lm
>>> model = torch.nn.Linear(2, 1)
>>> opt = lm.torch.LARS(lm.torch.param_groups(model), lr=0.1, weight_decay=1e-4)
>>> [len(g["params"]) for g in opt.param_groups], opt.param_groups[1]["adapt"]
([1, 1], False)
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ._registry import get_backend

try:
    import torch
except ImportError:
    get_backend("torch")  # (raises BackendNotInstalledError, with the pip command that fixes it)
    raise

from . import _checks, _registry
from ._aliasing import array_values, checked_writes, late_outputs, run_checked
from ._errors import LarsMultiError, LarsMultiTypeError, LarsMultiValueError, type_name
from ._lists import now_and_later
from ._step import LayerFlags, StepConfig, lars_step
from .backends.torch import PLAIN_TYPES, is_flat_param, shares_elements, tensor_kind
from .optim import lars

__all__ = ["LARS", "param_groups"]

_OPS = get_backend("torch")
# The hyper-parameters that make a group's StepConfig, in the order of its key.
_CONFIG_KEYS = (
    "preset",
    "momentum",
    "nesterov",
    "dampening",
    "trust_coefficient",
    "eps",
    "trust_clip",
    "always_adapt",
)
# The most StepConfigs an optimizer keeps, or twice its groups (one per distinct group
# settings; more only where a group's trust coefficient, eps, preset... change at every step).
_MOST_CONFIGS = 256
# torch.optim's flags for steps this optimizer does not have; a group may carry them false
# (a state saved by torch.optim.SGD does).
_UNSUPPORTED = ("differentiable", "capturable", "fused")


# The settings that may be numbers.
_NUMBERS = ("lr", "momentum", "dampening", "weight_decay", "trust_coefficient", "eps")
# Other libraries' names for settings, which a group migrated from them may carry: taken for a
# user's own entry, each was silently ignored.
_FOREIGN_NAMES = {"trust_coeff": ("trust_coefficient", "timm")}
# Settings a group saved by an older release may lack, with their defaults.
_LATER_SETTINGS = {"adapt": None, "decay": None, "foreach": None, "maximize": False}
# What a buffer of another dtype or device than its parameter's most likely means.
_CAST_SINCE = (
    "; if the parameter was cast or moved after its buffer was made (model.half(), .to()), "
    "opt.load_state_dict(opt.state_dict()) casts and moves the buffers to their parameters, as "
    "torch.optim's loading does"
)
# Every setting of a group.
_SETTINGS = ("lr", "weight_decay", *_CONFIG_KEYS, *_LATER_SETTINGS)


def _check_names(group: dict[str, Any], where: str, required: tuple[str, ...] = _SETTINGS) -> None:
    """The group holds this optimizer's settings by their names (asked at every step: a
    group may be changed at any time): another library's name for one (taken for an entry
    of the user's own, it was ignored) is refused, and so is a group without one (a state
    of another optimizer, loaded as ``torch.optim.Optimizer.load_state_dict`` loads it,
    unchecked)."""
    missing = [name for name in required if name not in group]
    if missing:
        raise LarsMultiValueError(
            f"{where}: expected the settings of a group of lm.torch.LARS, missing "
            f"{', '.join(map(repr, missing))} (saved by another optimizer?)"
        )
    for name, (ours, library) in _FOREIGN_NAMES.items():
        if name in group:
            raise LarsMultiValueError(
                f"{where}: expected {ours}, got {name!r} ({library}'s name for it, which this "
                "optimizer would ignore); rename it"
            )


def _check_group(group: dict[str, Any], stepping: bool = False) -> StepConfig:
    """The group's StepConfig, after :func:`lars_multi.optim.lars` has checked its
    values (a tensor ``lr``'s value too: read here, never in a step). ``stepping``:
    for a step, where a momentum set to 0 later (a scheduler's) steps without Nesterov's
    look-ahead, which has no buffer to look ahead with, as torch.optim.SGD and timm's
    Lars step (they check Nesterov's momentum when a group is made, as this does then)."""
    _check_names(group, "param_groups")
    _check_rates(group)
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):  # (its value, named as this optimizer names it)
        lr = _checks.check_rate("lr", lr.item(), name="torch", ops=_OPS)
    settings = {name: group[name] for name in _CONFIG_KEYS}
    if stepping and settings["momentum"] == 0:
        settings["nesterov"] = False
    return lars(lr, weight_decay=group["weight_decay"], **settings).config


@contextlib.contextmanager
def _in_group(group: Callable[[], str]) -> Iterator[None]:
    """Errors about a group's settings name the group (``param_groups[i]``) first."""
    try:
        yield
    except LarsMultiError as error:
        where, message = group(), str(error)
        if message.startswith(where):
            raise
        raise type(error)(f"{where}: {message.removeprefix('param_groups: ')}") from None


def _config_key(group: dict[str, Any]) -> tuple[Any, ...]:
    """The group's hyper-parameters with their types (``1`` is not ``True``); of the
    momentum, only whether it is 0 (its value is the step's argument, as the rates':
    a scheduler cycling it would otherwise make a configuration, and under
    ``torch.compile`` a program, per value)."""
    settings = tuple(
        (bool, bool(group[name] != 0)) if name == "momentum" else (type(group[name]), group[name])
        for name in _CONFIG_KEYS
    )
    # (and which foreign names the group holds: under torch.compile, a guard on them, so that a
    # name written into the group later traces the step anew, whose checks refuse it)
    return (*settings, tuple(name in group for name in _FOREIGN_NAMES))


def _gradient(p: torch.Tensor) -> torch.Tensor:
    """``p.grad`` in ``p``'s dtype (torch's ``grad_dtype`` lets it differ: a float32
    gradient stepped a float64 parameter in float32, silently); a half parameter's
    gradient of another dtype in float32, the dtype its step computes in (cast to the
    half first, a float64 or bfloat16 gradient beyond 65504 became inf)."""
    grad = p.grad
    assert grad is not None
    if grad.dtype is p.dtype:
        return grad
    if p.dtype.itemsize == 2:  # (halves)
        return grad if grad.dtype is torch.float32 else grad.to(torch.float32)
    return grad.to(p.dtype)


def _plain_numbers(group: dict[str, Any]) -> None:
    """The group's NumPy-number settings as the Python numbers of their values, as a
    group is added or loaded (the step's traced part reads them: Dynamo takes a NumPy
    number for a tensor, and a comparison of one for a value it cannot know while tracing)."""
    for name in _NUMBERS:
        value = group.get(name)
        if isinstance(value, np.floating):  # (float(): a longdouble's item() is one still)
            group[name] = float(value)
        elif isinstance(value, np.generic):
            group[name] = value.item()


def _check_rates(group: dict[str, Any]) -> None:
    """The group's learning rate and weight decay, checked as far as they can be
    without reading a tensor (asked at every step: a group's values may be changed
    at any time): numbers finite and >= 0, a tensor ``lr`` floating with one
    element; and its flags."""
    lr, weight_decay = group["lr"], group["weight_decay"]
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if callable(value):  # lars() takes schedules; here torch.optim.lr_scheduler does that
            raise LarsMultiTypeError(
                f"{name}: expected a number, got {type_name(value)} (use torch.optim.lr_scheduler)"
            )
    if isinstance(lr, torch.Tensor):
        if not lr.is_floating_point():
            raise LarsMultiTypeError(f"lr: expected a number or a floating tensor, got a {lr.dtype} tensor")
        if lr.numel() != 1:
            raise LarsMultiValueError(
                f"lr: expected a number or a tensor of one element, got one of shape {tuple(lr.shape)}"
            )
        if lr.is_meta:  # (its value is read when the group is checked)
            raise LarsMultiValueError("lr: expected a tensor with a value, got one on the meta device")
    elif not _checks.is_number(lr):  # (an lm.Array of a tensor too: a torch.optim group holds tensors)
        raise LarsMultiTypeError(f"lr: expected a number or a torch.Tensor, got {type_name(lr)}")
    else:
        _checks.check_rate("lr", lr, name="torch", ops=_OPS)
    if not _checks.is_number(weight_decay):  # (a tensor, an lm.Array: float() of it failed in the step)
        raise LarsMultiTypeError(f"weight_decay: expected a number, got {type_name(weight_decay)}")
    _checks.check_rate("weight_decay", weight_decay, name="torch", ops=_OPS)
    for name in ("adapt", "decay", "foreach"):
        if group[name] is not None and not isinstance(group[name], bool):
            raise LarsMultiTypeError(f"{name}: expected None or a bool, got {type_name(group[name])}")
    if not isinstance(group["maximize"], bool):
        raise LarsMultiTypeError(f"maximize: expected a bool, got {type_name(group['maximize'])}")
    for name in _UNSUPPORTED:
        if group.get(name):
            raise LarsMultiValueError(
                f"param_groups: expected {name} false or absent (lm.torch.LARS has no {name} step), "
                f"got {name}={group[name]!r}"
            )


def _rates(group: dict[str, Any]) -> tuple[Any, float, float]:
    """The group's (checked) learning rate, weight decay and momentum as the step
    takes them: a tensor ``lr`` as a 0-d view, numbers as floats (an int or NumPy
    number is not taken for an array)."""
    lr, weight_decay, momentum = group["lr"], float(group["weight_decay"]), float(group["momentum"])
    if not isinstance(lr, torch.Tensor):
        return float(lr), weight_decay, momentum
    return (lr.reshape(()) if lr.ndim else lr), weight_decay, momentum


class LARS(torch.optim.Optimizer):
    r"""LARS (You, Gitman and Ginsburg 2017) in the convention of ``preset``.

    Args:
        params: parameters or parameter groups (dicts), as for any ``torch.optim`` optimizer;
            see :func:`param_groups`.
        lr: :math:`\eta`, a number or a 1-element tensor (a tensor keeps a compiled
            step from recompiling when a scheduler changes it).
        momentum, nesterov, dampening, weight_decay, trust_coefficient, eps, trust_clip,
        always_adapt, preset: as for :func:`lars_multi.optim.lars`, per group.
        adapt, decay: whether the group's parameters are adapted (trust ratio) and
            weight-decayed; None takes the preset's default per parameter
            (``"paper"``: parameters with more than one dimension; else all).
        foreach: True steps a group's layers in one call of the rule, False one
            layer at a time, None as True (faster on the CPU too); both give the same values.
        maximize: step along the gradient instead of against it.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor,
        momentum: float = 0.9,
        nesterov: bool = False,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float | None = None,
        trust_clip: bool = False,
        always_adapt: bool = False,
        preset: str = "paper",
        foreach: bool | None = None,
        *,
        adapt: bool | None = None,
        decay: bool | None = None,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "trust_clip": trust_clip,
            "always_adapt": always_adapt,
            "preset": preset,
            "adapt": adapt,
            "decay": decay,
            "foreach": foreach,
            "maximize": maximize,
        }
        _check_group(defaults)
        _plain_numbers(defaults)
        # StepConfigs by group settings (_config_key): made and checked by the step's
        # eager part, looked up by its traced part. The optimizer's own, and never
        # reordered: torch.compile guards on the dict, which changes only with its settings.
        self._configs: dict[tuple[Any, ...], StepConfig] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its hyper-parameters (the defaults' where not given) are checked first."""
        if isinstance(param_group, dict):
            with _in_group(lambda: f"param_groups[{len(self.param_groups)}]"):
                _check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)
        _plain_numbers(self.param_groups[-1])
        for i, p in enumerate(self.param_groups[-1]["params"]):
            if is_flat_param(p):
                self.param_groups.pop()
                raise LarsMultiValueError(
                    f"params[{i}]: expected one tensor per layer, got a flattened FSDP parameter of "
                    f"{p.numel()} values (FullyShardedDataParallel with use_orig_params=False), whose "
                    "layer boundaries LARS cannot see; shard with torch.distributed.fsdp.fully_shard (FSDP2)"
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state as torch does (its load pre-hooks first: they may change or
        replace it); what they leave is checked before anything is loaded, by a hook
        registered now, so that it runs after theirs."""
        handle = self.register_load_state_dict_pre_hook(lambda _, state: self._check_state_dict(state))
        try:
            super().load_state_dict(state_dict)
        finally:
            handle.remove()
        for group in self.param_groups:
            _plain_numbers(group)

    def _check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A state's groups' hyper-parameters and its momentum buffers (paired with the
        parameters by position, as torch does)."""
        groups = state_dict.get("param_groups", []) if isinstance(state_dict, dict) else []
        for i, saved in enumerate(groups):
            if isinstance(saved, dict):
                required = tuple(name for name in _SETTINGS if name not in _LATER_SETTINGS)
                where = f"state_dict['param_groups'][{i}]"
                _check_names(saved, where, required)
                with _in_group(lambda: where):  # noqa: B023 (called at once)
                    _check_group({**_LATER_SETTINGS, **saved})
        self._check_saved_names(groups)
        self._check_saved_buffers(state_dict, groups)

    def _check_saved_names(self, groups: list[Any]) -> None:
        """Where both the saved groups and this optimizer's name their parameters
        (``param_names``: an optimizer made with ``named_parameters()``), the names must
        agree place by place: torch pairs the saved state with the parameters by position,
        so groups given in another order would swap the parameters' buffers and settings
        wherever their shapes agree."""
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            names = saved.get("param_names") if isinstance(saved, dict) else None
            ours = group.get("param_names")
            if names is not None and ours is not None and list(names) != list(ours):
                raise LarsMultiValueError(
                    f"state_dict['param_groups'][{i}]['param_names']: expected the names of this "
                    f"optimizer's group {i}, {list(ours)}, got {list(names)} (torch pairs a saved state "
                    "with the parameters by position: give the groups in the saved order, or pair them "
                    "by name in a load_state_dict pre-hook)"
                )

    def _check_saved_buffers(self, state_dict: dict[str, Any], groups: list[Any]) -> None:
        """Each saved momentum buffer must have its parameter's shape (the pairing is
        by position: a state saved with the parameters in another order fails here)."""
        saved_ids = [i for group in groups for i in group.get("params", ())]
        params = [p for group in self.param_groups for p in group["params"]]
        if len(saved_ids) != len(params):
            return  # torch says so
        states = state_dict.get("state", {})
        for place, (saved_id, p) in enumerate(zip(saved_ids, params)):
            entry = states.get(saved_id, {})
            if not isinstance(entry, dict):  # (ZeroRedundancyOptimizer's load leaves None for other ranks')
                raise LarsMultiTypeError(
                    f"state_dict['state'][{saved_id!r}]: expected the state of {self._label(p, False)} "
                    f"(a dict), got {type_name(entry)}"
                )
            buffer = entry.get("momentum_buffer")
            where = f"state_dict['state'][{saved_id!r}]['momentum_buffer']"
            if buffer is not None and (not isinstance(buffer, torch.Tensor) or buffer.shape != p.shape):
                got = (
                    f"shape {tuple(buffer.shape)}" if isinstance(buffer, torch.Tensor) else type_name(buffer)
                )
                raise LarsMultiValueError(
                    f"{where}: expected a tensor of shape "
                    f"{tuple(p.shape)} (the shape of {self._label(p, False)}, parameter {place} in order), "
                    f"got {got}"
                )
            if buffer is not None and not _matches(p, buffer):  # (torch casts and moves it, never shards it)
                raise LarsMultiValueError(
                    f"{where}: expected a tensor laid out as {self._label(p, False)} "
                    f"({_placed(p)}), got {_placed(buffer)}; a state saved over parameters sharded "
                    "otherwise (or not at all) loads through torch.distributed.checkpoint "
                    "(get_optimizer_state_dict / set_optimizer_state_dict), which lays it out"
                )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for name, value in _LATER_SETTINGS.items():
                group.setdefault(name, value)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        buffers: list[torch.Tensor | None],
    ) -> bool:
        """The group's parameters with a gradient, their gradients and buffers (None
        where not made yet), checked; whether the group has momentum. (The name and
        the list arguments follow ``torch.optim``: ``torch.compile`` runs this eagerly.)"""
        if any(name in group for name in _FOREIGN_NAMES) or not all(name in group for name in _SETTINGS):
            _check_names(group, self._group_name(group))
        with _in_group(lambda: self._group_name(group)):
            # (a bool: torch.compile runs this eagerly, and takes its result as a constant)
            with_momentum = _checks.check_number("momentum", group["momentum"], high=1.0) != 0
        members = group["params"]
        if len(set(map(id, members))) < len(members):  # listed twice (torch.optim allows it): stepped once
            members = list({id(p): p for p in members}.values())
        for p in members:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise LarsMultiTypeError(
                    f"{self._label(p, False)}.grad: expected a dense gradient, got a sparse one"
                )
            params.append(p)
            grads.append(_gradient(p))
            # .get: the state of a parameter is made by the traced step, not here (torch.compile
            # runs this eagerly, and a restarted analysis must find the state as it was)
            state = self.state.get(p)
            buffers.append(state.get("momentum_buffer") if with_momentum and state else None)
        if params:  # (eagerly under torch.compile: lr.item() and messages stay out of the graph)
            with _in_group(lambda: self._group_name(group)):
                config = self._config(group)
                _check_rates(group)
                lr, weight_decay, _ = _rates(group)
                rates = (("lr", lr), ("weight_decay", weight_decay))
                _checks.check_settings_usable(rates, config, params, self._labels_of(params), _OPS)
            self._check_tensors(params, grads, buffers)
        return with_momentum

    def _group_name(self, group: dict[str, Any]) -> str:
        """``param_groups[i]``, where ``group`` is."""
        return f"param_groups[{next(i for i, other in enumerate(self.param_groups) if other is group)}]"

    def _config(self, group: dict[str, Any]) -> StepConfig:
        """The group's StepConfig, made and checked where its settings are new."""
        configs = self.__dict__.setdefault("_configs", {})  # (none in one unpickled by torch's __setstate__)
        key = _config_key(group)
        try:
            config = configs.get(key)
        except TypeError:  # (a setting written into the group later that is no number: its check names it)
            return _check_group(group, stepping=True)
        if config is None:
            if len(configs) >= max(_MOST_CONFIGS, 2 * len(self.param_groups)):  # (a setting per group
                configs.clear()  # kept over the step: more than 256 groups emptied it at every group)
            config = configs[key] = _check_group(group, stepping=True)
        return config

    def _made_config(self, group: dict[str, Any]) -> StepConfig:
        """The group's StepConfig, made by :meth:`_config` this step (made again where
        more than ``_MOST_CONFIGS`` groups' settings are new at once)."""
        config = self._configs.get(_config_key(group))
        return _check_group(group, stepping=True) if config is None else config

    def _check_tensors(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor | None]
    ) -> None:
        """Floating parameters that can be written in place, and kept momentum buffers
        of their shapes, dtypes and devices (torch keeps each ``.grad`` so, and casts a
        loaded buffer so, but a buffer in ``state`` may be replaced). The
        common case is asked of the lists at once; the others one by one, with messages."""
        if _all_usable(params, grads, buffers):
            return
        labels = {  # (one pass over the groups for every parameter)
            id(p): f"param_groups[{g}]['params'][{k}]"
            for g, group in enumerate(self.param_groups)
            for k, p in enumerate(group["params"])
        }
        for p, g, b in zip(params, grads, buffers):
            _check_one(p, g, b, labels[id(p)])

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One LARS step of every group; the closure's loss, if a closure is given.
        Every group is checked before anything is written."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            ready = []
            for group in self.param_groups:
                params: list[torch.Tensor] = []
                grads: list[torch.Tensor] = []
                buffers: list[torch.Tensor | None] = []
                with_momentum = self._init_group(group, params, grads, buffers)
                if params:  # (checked by _init_group)
                    ready.append((group, params, grads, buffers, with_momentum))
            # Configurations looked up once every group's is made (under torch.compile,
            # _init_group runs eagerly: a lookup between two calls would read the cache
            # as the trace first saw it, without a later group's new configuration).
            work = [
                _GroupStep(
                    group, self._made_config(group), *_rates(group), params, grads, buffers, with_momentum
                )
                for group, params, grads, buffers, with_momentum in ready
            ]
            late = set() if _registry.is_compiling() else _aliased(work)
            made = _step_all(work, late, self._label)
            for p, buffer in made:  # kept once the step is written
                self.state[p]["momentum_buffer"] = buffer
        return loss

    def _labels_of(self, params: list[torch.Tensor]) -> Callable[[int], str]:
        """How messages name ``params[i]``."""
        return lambda i: self._label(params[i], False)

    def _label(self, param: torch.Tensor, buffer: bool) -> str:
        """A parameter by its place in ``param_groups``, or its momentum buffer, for messages."""
        place = next(
            f"param_groups[{g}]['params'][{k}]"
            for g, group in enumerate(self.param_groups)
            for k, p in enumerate(group["params"])
            if p is param
        )
        return f"the momentum buffer of {place}" if buffer else place


def _check_one(p: torch.Tensor, g: torch.Tensor, b: torch.Tensor | None, label: str) -> None:
    """A parameter (named ``label``), its gradient and its buffer (None: not made yet),
    with messages."""
    _checks.check_weights(label, p, _OPS)
    reason = _OPS.unwritable(p)
    if reason is not None:
        raise LarsMultiTypeError(f"{label}: expected a parameter that can be written in place, got {reason}")
    _checks.check_gradient(g, p, (f"{label}.grad", label, (), False), "torch", _OPS)
    if b is None:
        return
    where = (f"the momentum buffer of {label}", label, (), False)
    try:
        _checks.check_gradient(b, p, where, "torch", _OPS)
    except LarsMultiError as error:
        if b.is_floating_point() and b.shape == p.shape:  # (a parameter cast or moved since)
            raise type(error)(f"{error}{_CAST_SINCE}") from None
        raise
    reason = _OPS.unwritable(b)
    if reason is not None:
        raise LarsMultiTypeError(f"{where[0]}: expected a tensor that can be written in place, got {reason}")


def _all_usable(
    params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor | None]
) -> bool:
    """The common case, asked of the lists at once: floating parameters that can be
    written in place, and buffers (None: not made yet) of their shapes, dtypes and
    devices that can be too (a contiguous tensor's elements share no memory: the
    call is made for the others; no _foreach kernel writes a tensor with its
    negative bit)."""
    floats = _OPS.FLOAT_DTYPES
    return (
        all(
            [
                p.dtype in floats
                and (p.is_contiguous() or not shares_elements(p))
                and not p.is_inference()
                and not p.is_neg()
                for p in params
            ]
        )
        and all(
            [
                b is None
                or (
                    b.shape == p.shape
                    and b.dtype is p.dtype
                    and b.device == p.device
                    and (b.is_contiguous() or not shares_elements(b))
                    and not b.is_inference()
                    and not b.is_neg()
                )
                for p, b in zip(params, buffers)
            ]
        )
        and (_all_plain(params, grads, buffers) or _kinds_match(params, grads, buffers))
    )


def _all_plain(*lists: list[Any]) -> bool:
    """Whether every tensor (None: no buffer yet) is a plain tensor or parameter."""
    types = set(map(type, itertools.chain(*lists)))
    types.discard(type(None))
    return types <= PLAIN_TYPES


def _kinds_match(params: list[Any], grads: list[Any], buffers: list[Any]) -> bool:
    """Whether each gradient and buffer is of its parameter's kind, a DTensor on its
    parameter's mesh with its placements (a DTensor paired with a plain tensor, or
    with another mesh or placements, is checked, and refused)."""
    return all([_matches(p, g) for p, g in zip(params, grads)]) and all(
        [b is None or _matches(p, b) for p, b in zip(params, buffers)]
    )


def _placed(t: torch.Tensor) -> str:
    """How a tensor is laid out across processes, for messages."""
    if tensor_kind(t) is torch.Tensor:
        return "a plain torch.Tensor"
    return f"a {type_name(t)} on {_OPS.device(t)}"


def _matches(p: torch.Tensor, t: torch.Tensor) -> bool:
    kind = tensor_kind(p)
    return tensor_kind(t) is kind and (kind is torch.Tensor or _OPS.device(t) == _OPS.device(p))


class _GroupStep(NamedTuple):
    """One group's step: its checked settings, and its parameters with a gradient,
    their gradients and momentum buffers (None where not made yet)."""

    group: dict[str, Any]
    config: StepConfig
    lr: Any
    weight_decay: float
    momentum: float
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    buffers: list[torch.Tensor | None]
    with_momentum: bool


def _step_all(
    work: list[_GroupStep], late: set[int], label: Callable[[torch.Tensor, bool], str]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every group's step, written in place as it goes, but for the ``late`` parameters
    (their places in the groups' parameters, one after the other): computed first,
    checked, and written once every group is computed. ``label(p, is_buffer)`` names
    a parameter or its buffer. Returns the buffers made (parameter, buffer)."""
    writes: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, bool]] = []
    made: list[tuple[torch.Tensor, torch.Tensor]] = []
    steps: list[tuple[bool, Callable[[], None]]] = []  # (written as it goes, the step)
    start = 0
    for part in work:
        end = start + len(part.params)
        steps += _group_steps(part, {i - start for i in late if start <= i < end}, writes, made)
        start = end

    def checks() -> list[tuple[Any, Any]]:
        if not writes:
            return []
        targets, values, owners, of_buffer = zip(*writes)
        return checked_writes(_OPS, targets, values, lambda i: label(owners[i], of_buffer[i]))

    run_checked(_OPS, steps, checks)
    return made


def _group_steps(
    part: _GroupStep,
    late: set[int],
    writes: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, bool]],
    made: list[tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[bool, Callable[[], None]]]:
    """A group's steps, one per chunk of its parameters: (whether it is written in place
    as it goes, the step). The ``late`` parameters (their places in the group) are
    computed, and added to ``writes`` (target, value, parameter, whether the target is
    its buffer), to be written once every group is computed. The buffers made go
    into ``made`` (parameter, buffer), to keep once written."""
    group, config, params, buffers = part.group, part.config, part.params, list(part.buffers)
    new = [part.with_momentum and b is None for b in buffers]
    for i, p in enumerate(params):
        if new[i]:
            buffer = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers[i] = buffer
            made.append((p, buffer))
    default = config.preset.default_mask.of_shapes([p.shape for p in params])
    adapt = tuple(default) if group["adapt"] is None else (group["adapt"],) * len(params)
    decay = tuple(default) if group["decay"] is None else (group["decay"],) * len(params)
    # None: lists, which pay on every device here (one _foreach_norm per group; on
    # DTensors one all-reduce of the stacked norms per group instead of one per layer).
    foreach = group["foreach"] is not False
    if group["maximize"] or not foreach:
        chunks: list[list[int]] = [[i] for i in range(len(params))]
    else:  # one call per kind of buffer: new ones (timm starts them at r u) and old ones
        chunks = [
            c
            for c in (
                [i for i in range(len(params)) if new[i]],
                [i for i in range(len(params)) if not new[i]],
            )
            if c
        ]

    def step(chunk: list[int], in_place: bool) -> None:
        ws = [params[i] for i in chunk]
        bs = [buffers[i] for i in chunk]
        gs = [-part.grads[i] if group["maximize"] else part.grads[i] for i in chunk]
        flags = LayerFlags(tuple(adapt[i] for i in chunk), tuple(decay[i] for i in chunk))
        # In place: written batch by batch; else the new weights and buffers.
        new_ws, new_bs = lars_step(
            _OPS,
            config,
            flags,
            ws,
            gs,
            bs,
            part.lr,
            part.weight_decay,
            new[chunk[0]],
            ws if in_place else None,
            momentum=part.momentum,
        )
        if not in_place:
            writes.extend(zip(ws, new_ws, ws, [False] * len(ws)))
            writes.extend(zip(bs, new_bs, ws, [True] * len(ws)))  # (None: no buffer)

    pieces = [piece for whole in chunks for piece in now_and_later(whole, late, len(params))]
    return [(piece[0] not in late, functools.partial(step, piece, piece[0] not in late)) for piece in pieces]


def _aliased(work: list[_GroupStep]) -> set[int]:
    """The parameters (their places in the groups' parameters, one after the other)
    that share memory with a gradient, a tensor learning rate, another parameter or a
    momentum buffer, or whose buffer does (writing them as the step goes could change
    another layer's input)."""
    params = [p for part in work for p in part.params]
    grads = [g for part in work for g in part.grads]
    owners = [i for i, b in enumerate(b for part in work for b in part.buffers) if b is not None]
    buffers = [b for part in work for b in part.buffers if b is not None]
    rates = array_values(_OPS, [part.lr for part in work])
    if not params:
        return set()
    places = late_outputs(_OPS, params + buffers, params, grads + rates)
    n = len(params)
    return {i if i < n else owners[i - n] for i in places}


def param_groups(
    model: torch.nn.Module,
    exclude: str | Iterable[str] | None = (),
    **group_overrides: Any,
) -> list[dict[str, Any]]:
    """``model``'s trainable parameters in two groups, for :class:`LARS`.

    The first group is adapted and decayed; the second holds the parameters
    with at most one dimension (biases, normalization scales: as timm's
    ``param_groups_weight_decay`` and large-batch practice leave out) and those
    whose name contains one of ``exclude`` (case-insensitive substrings, e.g.
    ``("pos_embed",)``; a tied parameter by any of its names), with ``adapt=False,
    decay=False``. No name is excluded by default: a substring such as ``"bn"`` would
    also catch ``"subnet.weight"``.
    ``group_overrides`` (e.g. ``lr=...``, ``adapt=False``) go into both groups, over these
    settings; empty groups are left out.
    """
    if not isinstance(model, torch.nn.Module):
        raise LarsMultiTypeError(
            f"model: expected a torch.nn.Module (its parameters are named), got {type_name(model)}; "
            "LARS(params, ...) takes parameters as they are"
        )
    if "params" in group_overrides:  # (it replaced both groups' parameters, with no word)
        raise LarsMultiValueError(
            "params: expected settings for both groups (lr=..., adapt=False), got 'params', which "
            "param_groups takes from the model; pass the parameters to LARS as they are instead"
        )
    patterns = [pattern.lower() for pattern in _checks.check_name_patterns("exclude", exclude)]
    names: dict[int, tuple[torch.nn.Parameter, list[str]]] = {}  # every name of each (tied: several)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), (parameter, []))[1].append(name.lower())
    adapted: list[torch.Tensor] = []
    excluded: list[torch.Tensor] = []
    for parameter, lowered in names.values():
        if not parameter.requires_grad:
            continue
        if parameter.ndim <= 1 or any(pattern in name for pattern in patterns for name in lowered):
            excluded.append(parameter)
        else:
            adapted.append(parameter)
    groups = [
        {"params": adapted, "adapt": True, "decay": True, **group_overrides},
        {"params": excluded, "adapt": False, "decay": False, **group_overrides},
    ]
    return [group for group in groups if group["params"]]
