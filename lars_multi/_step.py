r"""The LARS step, written once, over lists of layers, for every backend and every rule.

You, Gitman and Ginsburg (2017), "Large Batch Training of Convolutional
Networks" (arXiv:1708.03888). With :math:`c` the trust coefficient,
:math:`\lambda` the weight decay, :math:`\eta` the learning rate, :math:`\mu`
the momentum, :math:`d` the dampening and :math:`u = g + \lambda w`, each
layer takes a trust ratio :math:`r` and steps by it:

.. math::

    r = \frac{c \lVert w \rVert}{\lVert g \rVert + \lambda \lVert w \rVert + \epsilon},
    \qquad v \leftarrow \mu v + (1 - d)\, \eta\, r\, u,
    \qquad w \leftarrow w - v

in the paper's convention; :mod:`lars_multi._presets` gives optax's and
timm's as data. :func:`lars_multi.lars_update` is the same step with the
reference's rule (the ``"reference"`` preset: no momentum,
:math:`r = \lVert w \rVert / (\lVert g \rVert + 10^{-12})` divided by
:math:`\lambda \lVert w \rVert` where that is positive, and :math:`u = g`).

The step runs over the layers in the batches the backend chooses
(``ops.batches``: cache-sized on CPUs, one per dtype where a compiler fuses
the step), each batch with the backend's list primitives: the norms of many
arrays, ``a x + b y`` into an output for many arrays, ``where`` and casts.
The trust ratios of a batch are one vector, computed once. Half-precision
layers compute in float32 and are rounded once. On JAX and TensorFlow each
batch is one compiled program of this same code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _registry
from ._lists import each_is, is_run, put, take
from ._presets import Preset
from ._protocol import Backend


class _Key:
    """A frozen dataclass used as a cache key: its hash is computed once, when it is
    made (the generated one hashes every field on every lookup). Subclasses say
    ``__hash__ = _Key.__hash__`` in their body, so that dataclass keeps it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(tuple(vars(self).values())))  # (the fields, in order)

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __getstate__(self) -> dict[str, Any]:
        """The fields, without the hash: another process hashes strings otherwise."""
        return {name: value for name, value in vars(self).items() if name != "_hash"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self.__post_init__()


@dataclass(frozen=True)
class StepConfig(_Key):
    """The hyper-parameters that shape the step (everything but the rates)."""

    __hash__ = _Key.__hash__

    preset: Preset
    momentum: float = 0.0
    nesterov: bool = False
    dampening: float = 0.0
    trust_coefficient: float = 1.0
    eps: float = 0.0
    trust_clip: bool = False
    always_adapt: bool = False
    # The step's result: w' - w, each in w's dtype (optax's updates, with the precision
    # of the step itself, not of w'; finite where w is not), instead of w'. Not in place.
    increments: bool = False

    @property
    def adapts_only_decayed(self) -> bool:
        """timm's rule: a layer is adapted only where its weight decay is not 0."""
        return self.preset.adapt_needs_decay and not self.always_adapt

    @property
    def tracks_start(self) -> bool:
        """Whether each layer's buffer starts apart from the rule, so that its start is
        tracked (timm: at r u on its first step, not at mu 0 + (1 - d) r u)."""
        return self.momentum != 0 and not self.preset.lr_in_buffer


@dataclass(frozen=True)
class LayerFlags(_Key):
    """Which layers are adapted and decayed (static: they shape the program)."""

    __hash__ = _Key.__hash__

    adapt: tuple[bool, ...]
    decay: tuple[bool, ...]
    # One mesh axis name (or None) per layer whose norms are summed across
    # devices (inside jax.shard_map); None: every norm is local.
    axis_names: tuple[Any, ...] | None = None

    @classmethod
    def every(cls, n: int, axis_names: tuple[Any, ...] | None = None) -> LayerFlags:
        """Every one of ``n`` layers adapted and decayed."""
        return cls((True,) * n, (True,) * n, axis_names)

    def select(self, indices: Sequence[int]) -> LayerFlags:
        if len(indices) == len(self.adapt):
            return self
        axes = self.axis_names
        if is_run(indices):  # a slice
            run = slice(indices[0], indices[-1] + 1)
            return LayerFlags(self.adapt[run], self.decay[run], None if axes is None else axes[run])
        return LayerFlags(
            tuple(self.adapt[i] for i in indices),
            tuple(self.decay[i] for i in indices),
            None if axes is None else tuple(axes[i] for i in indices),
        )


def trust_ratio(
    ops: Backend,
    config: StepConfig,
    w_norm: Any,
    g_norm: Any,
    u_norm: Any,
    lr: Any,
    decay: Any,
    decay_nonzero: Any = None,
) -> Any:
    """:math:`r` of layers from their norms (0-d arrays or vectors); ``decay`` is
    None where no weight decay applies; ``decay_nonzero``: where the weight decay is an
    array (read only as the step runs), whether it is not 0, asked of it as given;
    None where it is a number, which the plan has read."""
    preset = config.preset
    if preset.decay_divides_ratio:  # the reference: no fallback, lambda divides r
        ratio = w_norm / (g_norm + ops.constant(config.eps, g_norm))
        if decay is None:
            return ratio
        scale = w_norm * decay  # a zero-norm layer keeps rate 0
        return ratio / ops.where(scale > 0, scale, 1.0)
    if preset.ratio_of_update:
        denominator = u_norm
    elif decay is None:
        denominator = g_norm
    else:
        denominator = g_norm + decay * w_norm
    norm = u_norm if preset.ratio_of_update else g_norm
    # r = 1 where a norm is 0 (a NaN norm: a NaN ratio, as optax's), or unless both are > 0 (timm's)
    usable = (w_norm > 0) & (norm > 0) if preset.one_unless_positive else (w_norm != 0) & (norm != 0)
    # Divide only where the ratio is used (no 0/0 computed, no warning raised). eps is
    # added after the select: TensorFlow's graph optimizer regrouped the chain of sums
    # ||g|| + lambda ||w|| + eps differently from run to run (1 ulp apart).
    denominator = ops.where(usable, denominator, 1.0)
    if config.eps:
        denominator = denominator + ops.constant(config.eps, denominator)
    ratio = ops.where(usable, config.trust_coefficient * w_norm / denominator, 1.0)
    if config.trust_clip:  # min(r / lr, 1): 1 where r >= lr, else r / lr (so lr > 0, or r is NaN)
        # (selected on r >= lr itself, False for a NaN ratio, which stays NaN as timm's clamp
        # keeps it: TensorFlow's graph optimizer rewrites not(r >= lr) as r < lr, True for NaN)
        above = ratio >= lr
        zeros = ops.zeros_like(ratio)  # (tensors in the ratio's dtype, whatever lr is)
        ones, lr_like = zeros + 1.0, zeros + lr
        ratio = ops.where(above, ones, ratio / ops.where(above, ones, lr_like))
    if config.adapts_only_decayed and decay is not None and decay_nonzero is not None:
        # timm adapts only where lambda != 0: an array (a schedule's) is not read on the
        # host, so a layer planned as adapted keeps r = 1 where it is 0.
        ratio = ops.where(decay_nonzero, ratio, 1.0)
    return ratio


def lars_step(
    ops: Backend,
    config: StepConfig,
    flags: LayerFlags,
    ws: Sequence[Any],
    gs: Sequence[Any],
    buffers: Sequence[Any],
    lr: Any,
    weight_decay: Any,
    first: Any,
    outs: Sequence[Any] | None = None,
    *,
    momentum: float | None = None,
    stop_gradients: bool = True,
    donate: bool = False,
) -> tuple[list[Any], list[Any]]:
    r"""New weights and momentum buffers of every layer.

    ``buffers`` holds None for every layer when ``config.momentum`` is 0;
    ``momentum``: :math:`\mu` where it changes from step to step (a front door's
    group, cycled by a scheduler; under ``torch.compile`` a traced number, so a new
    value does not make a new program), nonzero where ``config.momentum`` is; None
    takes ``config.momentum``, which shapes the step either way.
    ``first`` says the buffers are empty (timm starts them at :math:`r u`): one
    value for all layers, or a list with one (traced) value per layer.
    With ``outs`` (writable, aliasing no input but the weights they replace),
    the new weights are written into ``outs`` and the new buffers into
    ``buffers``, batch by batch, with no temporary beyond a batch.
    ``donate``: the weights' buffers may be reused (JAX, with ``outs`` None), where
    every layer is in one batch (a later batch failing would find earlier ones gone).
    """
    weight_decay = no_zero_decay(weight_decay)
    with ops.arithmetic():  # (NumPy: the caller's np.seterr must not stop it halfway)
        # Outputs that are the weights are not passed twice (each argument costs a tf.function call).
        in_place = outs is not None and each_is(outs, ws)
        cut = ops.batches(ws) if len(ws) > 1 else [range(1)]
        if len(cut) == 1:  # every layer in one batch (one layer; a compiled step): nothing to cut
            return _run_batch(
                ops,
                config,
                flags,
                lr,
                weight_decay,
                momentum,
                stop_gradients,
                donate,
                in_place,
                ws,
                gs,
                buffers,
                first,
                outs,
            )
        new_ws, new_buffers = list(ws), list(buffers)
        for batch in cut:
            part_ws, part_buffers = _run_batch(
                ops,
                config,
                flags.select(batch),
                lr,
                weight_decay,
                momentum,
                stop_gradients,
                False,
                in_place,
                take(ws, batch),
                take(gs, batch),
                take(buffers, batch),
                take(first, batch) if isinstance(first, list) else first,
                None if outs is None else take(outs, batch),
            )
            put(new_ws, batch, part_ws)
            put(new_buffers, batch, part_buffers)
        return new_ws, new_buffers


def _run_batch(
    ops: Backend,
    config: StepConfig,
    flags: LayerFlags,
    lr: Any,
    weight_decay: Any,
    momentum: float | None,
    stop: bool,
    donate: bool,
    in_place: bool,
    ws: Sequence[Any],
    gs: Sequence[Any],
    buffers: Sequence[Any],
    first: Any,
    outs: Sequence[Any] | None,
) -> tuple[list[Any], list[Any]]:
    """:func:`lars_step` of one batch: its new weights and buffers (the outputs and
    the buffers themselves, where they were written)."""
    run = batch_step(ops, config, flags, decay_kind(weight_decay), stop, donate, in_place)
    new_ws, new_buffers = run(
        list(ws),
        list(gs),
        None if config.momentum == 0 else list(buffers),  # no list of Nones to trace
        lr,
        weight_decay,
        first,
        None if outs is None or in_place else list(outs),
        momentum,
    )
    if outs is None:
        return new_ws, new_buffers
    return list(outs), list(buffers)


_STEPS: dict[tuple[Any, ...], Any] = {}


def batch_step(
    ops: Backend,
    config: StepConfig,
    flags: LayerFlags,
    decay: str,
    stop: bool,
    donate: bool,
    in_place: bool,
) -> Any:
    """:func:`_step` for one configuration and pattern of flags, compiled where the
    backend compiles (one program per batch structure); kept for the next call.
    It takes ``(ws, gs, buffers, lr, weight_decay, first, outs, momentum)``
    (``buffers`` None without momentum; ``outs`` None, or when ``in_place``;
    ``momentum`` None, or the value that replaces the configuration's); ``decay``:
    the weight decay's :func:`decay_kind`."""
    if _registry.is_compiling():  # torch.compile traces the step itself (and not the cache's keys)
        return functools.partial(_step, ops, config, _plan(ops, config, flags, decay), stop, in_place)
    key = (ops, config, flags, decay, stop, donate, in_place)
    step = _STEPS.get(key)
    if step is None:
        if len(_STEPS) >= 256:
            _STEPS.clear()
        plan = _plan(ops, config, flags, decay)
        function = functools.partial(_step, ops, config, plan, stop, in_place)
        step = _STEPS[key] = ops.compile(function, donate=donate)
    return step


@dataclass(frozen=True)
class _Plan:
    r"""What the flags make of a batch, decided once: the layers whose update is
    :math:`u = g + \lambda w`, and the groups of adapted layers whose trust
    ratios are one vector, each with whether it is decayed and its mesh axes."""

    decayed: tuple[int, ...]
    groups: tuple[tuple[bool, tuple[int, ...], tuple[Any, ...] | None], ...]
    decay_known: bool  # the weight decay is a number, known now (timm's rule decided by the plan)


def no_zero_decay(weight_decay: Any) -> Any:
    """The weight decay as the step takes it: None for a Python 0, which the rule then
    skips (no ``0 w`` added, which an infinite weight would make NaN)."""
    return None if type(weight_decay) in (int, float) and weight_decay == 0 else weight_decay


def decay_kind(weight_decay: Any) -> str:
    """What a step's weight decay is: ``"none"`` (0: skipped), ``"number"`` (a Python
    float, known when the step is planned, even where a compiler traces it) or
    ``"array"`` (read only as the step runs)."""
    if weight_decay is None:
        return "none"
    return "number" if type(weight_decay) is float else "array"


def _plan(ops: Backend, config: StepConfig, flags: LayerFlags, decay: str) -> _Plan:
    """One vector for the decayed adapted layers and one for the others; where the
    backend compiles the step, each layer's ratio alone: the compiler fuses them
    anyway, and inside ``jax.shard_map`` a replicated layer's ratio then stays
    replicated."""
    preset, n = config.preset, len(flags.adapt)
    decayed = [decay != "none" and flags.decay[i] for i in range(n)]
    adapted = [flags.adapt[i] and (not config.adapts_only_decayed or decayed[i]) for i in range(n)]
    alone = ops.COMPILES
    groups: dict[tuple[bool, int], list[int]] = {}
    for i in range(n):
        if adapted[i]:
            groups.setdefault((decayed[i], i if alone else -1), []).append(i)
    axes = flags.axis_names
    return _Plan(
        tuple(i for i in range(n) if decayed[i] and not preset.decay_divides_ratio),
        tuple(
            (is_decayed, tuple(indices), None if axes is None else tuple(axes[i] for i in indices))
            for (is_decayed, _), indices in groups.items()
        ),
        decay == "number",
    )


def _step(
    ops: Backend,
    config: StepConfig,
    plan: _Plan,
    stop: bool,
    in_place: bool,
    ws: list[Any],
    gs: list[Any],
    buffers: list[Any] | None,
    lr: Any,
    weight_decay: Any,
    first: Any,
    outs: list[Any] | None,
    momentum: float | None,
) -> tuple[list[Any], list[Any]]:
    """One batch: the trust ratios as vectors, then the update in multiply-add passes;
    ``in_place``: the outputs are the weights."""
    n = len(ws)
    if in_place:
        outs = ws
    if buffers is None:  # no momentum
        buffers = [None] * n
    if stop and outs is None:  # the result cut from the graph: nothing it is made of is traced
        ws, gs = ops.stop_gradients(ws), ops.stop_gradients(gs)
        if config.momentum != 0:  # (a state made by a differentiated step holds a graph)
            buffers = ops.stop_gradients(buffers)
        if type(lr) is not float:
            lr = ops.stop_gradient(lr)
        if weight_decay is not None and type(weight_decay) is not float:
            weight_decay = ops.stop_gradient(weight_decay)
    wcs = _computed(ops, ws)
    gcs = gs if wcs is ws else [ops.to_compute(g) for g in gs]  # (of the weights' dtypes)
    # A batch is of one dtype: rates in its compute dtype (a number stays a number).
    if type(lr) is not float:
        lr = ops.cast_like(lr, wcs[0])
    decay_nonzero = None
    if weight_decay is not None and type(weight_decay) is not float:
        # (a number's rule is the plan's: a compiler traces it, and may flush a float32
        # subnormal to 0; an array's is asked before the cast: float64's 1e-50 is float32's 0)
        if config.adapts_only_decayed and not plan.decay_known:
            decay_nonzero = weight_decay != 0
        weight_decay = ops.cast_like(weight_decay, wcs[0])
    # In place: written straight into the outputs, unless computed aside in float32 (halves).
    direct = outs is not None and each_is(wcs, ws)
    # Written in place, a buffer takes c u as c g + (c lambda) w: two passes, no u stored.
    split = direct and _u_used_once(config, first)
    us = gcs
    if plan.decayed and not split:  # u = g + lambda w
        us = list(gcs)
        chosen = plan.decayed
        decayed_us = ops.axpbys(1.0, [gcs[i] for i in chosen], weight_decay, [wcs[i] for i in chosen])
        for i, u in zip(chosen, decayed_us):
            us[i] = u
    ratios = _ratio_vectors(ops, config, plan, wcs, gcs, us, lr, (weight_decay, decay_nonzero))
    targets = outs if direct else None
    decay_terms = (plan.decayed, weight_decay) if split and plan.decayed else None
    mu = config.momentum if momentum is None else momentum
    new_ws, new_buffers = _update(
        ops, config, ratios, wcs, us, decay_terms, buffers, lr, mu, first, targets, direct
    )
    if outs is None:
        if wcs is not ws:  # (computed in their own dtype: nothing to round)
            new_ws = [_rounded(ops, new, w) for new, w in zip(new_ws, ws)]
        if config.momentum != 0:
            new_buffers = [_rounded(ops, new, b) for new, b in zip(new_buffers, buffers)]
        return new_ws, new_buffers
    if not direct:
        for i in range(n):  # computed aside: rounded once, then written
            ops.write(outs[i], _rounded(ops, new_ws[i], ws[i]))
            if buffers[i] is not None:
                ops.write(buffers[i], _rounded(ops, new_buffers[i], buffers[i]))
    return [], []  # written (a compiled step returns no variables: each would be read back)


def _computed(ops: Backend, xs: list[Any]) -> list[Any]:
    """``xs`` in their compute dtype: the list itself where they compute in their
    own (a batch is of one dtype, and ``to_compute`` goes by the dtype)."""
    return xs if ops.to_compute(xs[0]) is xs[0] else [ops.to_compute(x) for x in xs]


def _rounded(ops: Backend, value: Any, like: Any) -> Any:
    """``value`` (computed in float32 for halves) in ``like``'s dtype."""
    return value if value.dtype == like.dtype else ops.cast_like(value, like)


_Ratios = list[tuple[Sequence[int], Any]]  # (layers, their trust ratios as one vector)


def _ratio_vectors(
    ops: Backend,
    config: StepConfig,
    plan: _Plan,
    wcs: list[Any],
    gcs: list[Any],
    us: list[Any],
    lr: Any,
    weight_decay: tuple[Any, Any],
) -> _Ratios:
    """The trust ratios of the plan's groups of adapted layers, each group's from
    its norms taken all at once (summed over mesh axes, where it has them);
    ``weight_decay``: it and whether it is not 0 (see :func:`trust_ratio`)."""
    vectors: _Ratios = []
    for is_decayed, indices, picked in plan.groups:
        k = len(indices)
        axes = None if picked is None else picked + picked
        norms = ops.norms(take(wcs, indices) + take(gcs, indices), axes)
        w_norm, g_norm = _vector(ops, norms[:k]), _vector(ops, norms[k:])
        decay = weight_decay[0] if is_decayed else None
        u_norm = g_norm
        if config.preset.ratio_of_update and is_decayed:
            u_norm = _vector(ops, ops.norms([us[i] for i in indices], picked))
        ratio = trust_ratio(ops, config, w_norm, g_norm, u_norm, lr, decay, weight_decay[1])
        vectors.append((indices, ratio))
    return vectors


def _vector(ops: Backend, norms: list[Any]) -> Any:
    """Norms as one vector; one layer's norm as it is (no stacking to undo)."""
    return norms[0] if len(norms) == 1 else ops.stack(norms)


def _per_layer(ops: Backend, n: int, ratios: _Ratios, scale: Any) -> tuple[list[Any], Any]:
    """Coefficients ``b_i`` and a common factor ``s`` with ``s b_i = scale r_i`` for
    every layer (``r_i = 1`` where it is not adapted), for ``axpbys(..., scale=s)``.
    A number ``scale`` is left to the multiply-add kernels (torch's ``addcmul``
    takes it for free: no operation on the ratios); an array multiplies each ratio
    vector, once."""
    if not ratios:
        return [scale] * n, 1.0
    fold = type(scale) is float
    if len(ratios[0][0]) == n:  # one vector for every layer
        value = ratios[0][1] if fold else scale * ratios[0][1]
        return ([value] if n == 1 else list(ops.unstack(value))), scale if fold else 1.0
    values: list[Any] = [None] * n
    covered = 0  # (the groups are disjoint)
    for indices, ratio in ratios:
        value = ratio if fold else scale * ratio
        put(values, indices, [value] if len(indices) == 1 else ops.unstack(value))
        covered += len(indices)
    if covered < n:  # layers not adapted
        plain = 1.0 if fold else scale
        values = [plain if v is None else v for v in values]
    return values, scale if fold else 1.0


def _u_used_once(config: StepConfig, first: Any) -> bool:
    """Whether u enters the step once, through the momentum buffer (not through the
    ratio, Nesterov's step, the weights directly, or a traced choice of timm's first step)."""
    return (
        config.momentum != 0
        and not config.nesterov
        and not config.preset.ratio_of_update
        and (config.preset.lr_in_buffer or first is True or first is False)
    )


def _update(
    ops: Backend,
    config: StepConfig,
    ratios: _Ratios,
    wcs: list[Any],
    us: list[Any],
    decay_terms: tuple[tuple[int, ...], Any] | None,
    buffers: list[Any],
    lr: Any,
    mu: float,
    first: Any,
    targets: list[Any] | None,
    in_place: bool,
) -> tuple[list[Any], list[Any]]:
    r"""The new weights and buffers in ``axpby`` passes (``a x + b y``), written into
    ``targets`` and the buffers when ``in_place``; :math:`r u` is never stored.
    ``decay_terms`` (the decayed layers, :math:`\lambda`): ``us`` holds only
    :math:`g` there, and the buffers add :math:`\lambda w` in a second pass."""
    n = len(wcs)
    damp = 1.0 - config.dampening
    # w' = w - step; increments: 0 - step (not 0 w - step: 0 inf is NaN). Compiled, the zeros fold away.
    base = [ops.zeros_like(w) for w in wcs] if config.increments else wcs
    if config.momentum == 0:
        rates, s = _per_layer(ops, n, ratios, -lr)
        return ops.axpbys(1.0, base, rates, us, targets, scale=s), list(buffers)
    bcs = _computed(ops, buffers)
    into = buffers if in_place else None
    factor: Any  # the buffer takes (factor r) u
    if config.preset.lr_in_buffer:  # v = mu v + (1 - d) eta r u; w - v
        factor = lr if damp == 1 else damp * lr
        rates, s = _per_layer(ops, n, ratios, factor)
        new_buffers = ops.axpbys(mu, bcs, rates, us, into, scale=s)
        step: Any = 1.0
    else:  # b = mu b + (1 - d) r u, r u at first; w - eta b
        new_buffers, factor = _timm_buffers(ops, n, ratios, damp, mu, bcs, us, first, into)
        step = lr
    if decay_terms is not None:  # + (factor lambda r) w, into the buffers
        chosen, decay = decay_terms
        coefficients, s = _per_layer(ops, n, ratios, factor * decay)
        ops.axpbys(
            1.0,
            [new_buffers[i] for i in chosen],
            [coefficients[i] for i in chosen],
            [wcs[i] for i in chosen],
            [new_buffers[i] for i in chosen],
            scale=s,
        )
    if config.nesterov:  # w - (mu step b + eta r u), the step summed first
        rates, s = _per_layer(ops, n, ratios, lr)
        steps = ops.axpbys(mu * step, new_buffers, rates, us, scale=s)
        return ops.axpbys(1.0, base, -1.0, steps, targets), new_buffers
    return ops.axpbys(1.0, base, -step, new_buffers, targets), new_buffers


def _timm_buffers(
    ops: Backend,
    n: int,
    ratios: _Ratios,
    damp: float,
    mu: float,
    bcs: list[Any],
    us: list[Any],
    first: Any,
    into: list[Any] | None,
) -> tuple[list[Any], Any]:
    r"""timm's buffers: :math:`r u` on the first step, else :math:`\mu b + (1-d) r u`;
    and the factor of :math:`r u` (when ``first`` is known)."""
    if first is True:
        rates, s = _per_layer(ops, n, ratios, 1.0)
        return ops.axpbys(0.0, bcs, rates, us, into, scale=s), 1.0
    later, s_later = _per_layer(ops, n, ratios, damp)
    if first is False:
        return ops.axpbys(mu, bcs, later, us, into, scale=s_later), damp
    at_first, s_first = _per_layer(ops, n, ratios, 1.0)
    # Traced (jit), for all layers or per layer: both, then chosen.
    begun = ops.axpbys(0.0, bcs, at_first, us, scale=s_first)
    continued = ops.axpbys(mu, bcs, later, us, scale=s_later)
    firsts = first if isinstance(first, list) else [first] * n
    new = [ops.where(f, a, b) for f, a, b in zip(firsts, begun, continued)]
    if into is None:
        return new, damp
    for target, value in zip(into, new):
        ops.write(target, value)
    return list(into), damp
