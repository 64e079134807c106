"""The contenders: native LARS per framework, optax, the floor, and lars_multi.

Each contender is a zero-argument ``step`` that runs one update and returns
only once the result exists (JAX: ``block_until_ready``; TensorFlow: one
small leaf fetched with ``.numpy()``; NumPy and torch on CPU are synchronous).
Contenders that update in place own a private copy of the weights and can
``reset`` it, so repeated updates never drift into overflow.

The native rule is the one of :func:`lars_multi.lars_update` with
``decay_lambda=0``: ``r = ||w|| lr / (||g|| + 1e-12)``, ``w - r g``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import lars_multi as lm

from .workloads import Workload

EPS = 1e-12
LR = 1e-3

NATIVE, FLOOR, LARS_MULTI, OPTAX = "native", "floor", "lars_multi", "optax"
ROLES = (NATIVE, OPTAX, FLOOR, LARS_MULTI)
# Keys of the lars_multi contenders, the same on every backend.
LM, LM_INPLACE = "lars_multi", "lars_multi_inplace"
LM_COMPILED = "lars_multi_compiled"  # torch: the same call under torch.compile(fullgraph=True)


@dataclass
class Contender:
    """One way to run the update, ready to be timed."""

    key: str
    label: str
    role: str
    step: Callable[[], Any]
    read: Callable[[Any, str], np.ndarray]
    expect: str = "lars"  # "lars": the LARS update; "add": the floor's w + g
    reset: Callable[[], None] | None = None

    @property
    def in_place(self) -> bool:
        return self.reset is not None


def reference(workload: Workload, key: str, expect: str) -> np.ndarray:
    """The expected leaf ``key`` after one step, computed in float64."""
    w, g = workload.w[key].astype(np.float64), workload.g[key].astype(np.float64)
    if expect == "add":
        return w + g
    return w - np.linalg.norm(w) * LR / (np.linalg.norm(g) + EPS) * g


def _per_tensor(one: Callable[[Any, Any], Any], single: bool) -> Callable[[Any, Any], Any]:
    """``one`` itself for a single array, else a dict comprehension over the tree."""
    if single:
        return one
    return lambda w, g: {k: one(w[k], g[k]) for k in w}


def _leaf(result: Any, key: str, single: bool) -> Any:
    """The leaf ``key`` of a result (a single array, dict, Container, or lm.Array)."""
    leaf = result if single else result[key]
    return leaf.data if isinstance(leaf, lm.Array) else leaf


def _smallest(workload: Workload) -> str:
    return min(workload.w, key=lambda k: workload.w[k].size)


# --- NumPy ------------------------------------------------------------------


def _lars_multi_mutable(w: Any, g: Any, state: Any, read: Any, reset: Any) -> list[Contender]:
    """lars_multi on a framework with mutable arrays: functional, and in place (``out=w``)."""
    return [
        Contender(LM, "lars_multi", LARS_MULTI, lambda: lm.lars_update(w, g, LR), read),
        Contender(
            LM_INPLACE,
            "lars_multi out=w",
            LARS_MULTI,
            lambda: lm.lars_update(state, g, LR, out=state),
            read,
            reset=reset,
        ),
    ]


def _numpy(wl: Workload) -> list[Contender]:
    single = wl.single
    key0 = next(iter(wl.w))
    w = wl.w[key0] if single else wl.w
    g = wl.g[key0] if single else wl.g

    def one(w: np.ndarray, g: np.ndarray) -> np.ndarray:
        return w - (np.linalg.norm(w) * LR / (np.linalg.norm(g) + EPS)) * g

    def one_in_place(w: np.ndarray, g: np.ndarray) -> np.ndarray:
        w -= (np.linalg.norm(w) * LR / (np.linalg.norm(g) + EPS)) * g
        return w

    def read(result: Any, key: str) -> np.ndarray:
        return np.asarray(_leaf(result, key, single))

    def private() -> tuple[Any, Callable[[], None]]:
        copy = {k: v.copy() for k, v in wl.w.items()}
        state = copy[key0] if single else copy

        def reset() -> None:
            for k, v in wl.w.items():
                np.copyto(copy[k], v)

        return state, reset

    native, native_ip = _per_tensor(one, single), _per_tensor(one_in_place, single)
    ip_state, ip_reset = private()
    fl_state, fl_reset = private()
    lm_state, lm_reset = private()
    floor = _per_tensor(lambda a, b: np.add(a, b, out=a), single)
    shape = "one-liner" if single else "loop"
    return [
        Contender("native", f"native {shape}: w - r*g", NATIVE, lambda: native(w, g), read),
        Contender(
            "native_inplace",
            f"native {shape} in place: w -= r*g",
            NATIVE,
            lambda: native_ip(ip_state, g),
            read,
            reset=ip_reset,
        ),
        Contender(
            "floor", "floor: np.add(w, g, out=w)", FLOOR, lambda: floor(fl_state, g), read, "add", fl_reset
        ),
        *_lars_multi_mutable(w, g, lm_state, read, lm_reset),
    ]


# --- torch ------------------------------------------------------------------


def _torch_foreach(ws: list[Any], gs: list[Any]) -> tuple[Any, ...]:
    """The trust ratios of every layer, as 0-d tensors, in four ``_foreach`` kernels."""
    import torch

    scaled = torch._foreach_mul(torch._foreach_norm(ws), LR)
    return torch._foreach_div(scaled, torch._foreach_add(torch._foreach_norm(gs), EPS))


def _torch(wl: Workload) -> list[Contender]:
    import torch

    single = wl.single
    key0 = next(iter(wl.w))
    # In memory torch allocates, as a model's parameters and autograd's gradients are.
    w_tree = {k: torch.from_numpy(v).clone() for k, v in wl.w.items()}
    g_tree = {k: torch.from_numpy(v).clone() for k, v in wl.g.items()}
    w = w_tree[key0] if single else w_tree
    g = g_tree[key0] if single else g_tree
    vn = torch.linalg.vector_norm

    def one(w: Any, g: Any) -> Any:
        return w - (vn(w) * LR / (vn(g) + EPS)) * g

    def read(result: Any, key: str) -> np.ndarray:
        return _leaf(result, key, single).numpy()

    def private() -> tuple[Any, Callable[[], None]]:
        copy = {k: torch.tensor(v) for k, v in wl.w.items()}
        state = copy[key0] if single else copy

        def reset() -> None:
            for k, v in w_tree.items():
                copy[k].copy_(v)

        return state, reset

    native = _per_tensor(one, single)
    label = "native eager one-liner" if single else "native per-tensor loop"
    contenders = [Contender("native", f"{label}: vector_norm, w - r*g", NATIVE, lambda: native(w, g), read)]
    if not single:
        contenders += _torch_foreach_contenders(w_tree, g_tree, read, private)
    else:
        ip_state, ip_reset = private()

        def native_ip() -> Any:
            ip_state.sub_((vn(ip_state) * LR / (vn(g) + EPS)) * g)
            return ip_state

        contenders.append(
            Contender(
                "native_inplace",
                "native eager in place: w.sub_(r*g)",
                NATIVE,
                native_ip,
                read,
                reset=ip_reset,
            )
        )
    fl_state, fl_reset = private()
    lm_state, lm_reset = private()
    fl_list = [fl_state] if single else list(fl_state.values())
    gs = list(g_tree.values())

    def floor() -> Any:
        torch._foreach_add_(fl_list, gs)
        return fl_state

    contenders += [
        Contender("floor", "floor: _foreach_add_(w, g)", FLOOR, floor, read, "add", fl_reset),
        *_lars_multi_mutable(w, g, lm_state, read, lm_reset),
    ]
    if len(wl.w) <= 200:  # inductor compiles 2,000 leaves for minutes on CPU
        compiled = torch.compile(lambda w, g: lm.lars_update(w, g, LR), fullgraph=True)
        contenders.append(
            Contender(LM_COMPILED, "lars_multi under torch.compile", LARS_MULTI, lambda: compiled(w, g), read)
        )
    return contenders


def _torch_foreach_contenders(
    w_tree: dict[str, Any],
    g_tree: dict[str, Any],
    read: Callable[[Any, str], np.ndarray],
    private: Callable[[], tuple[Any, Callable[[], None]]],
) -> list[Contender]:
    """Native ``torch._foreach_*`` LARS over the tree: functional and two in-place forms."""
    import torch

    keys, ws, gs = list(w_tree), list(w_tree.values()), list(g_tree.values())

    def functional() -> dict[str, Any]:
        rates = _torch_foreach(ws, gs)
        return dict(zip(keys, torch._foreach_sub(ws, torch._foreach_mul(gs, rates))))

    sub_state, sub_reset = private()
    add_state, add_reset = private()
    sub_list, add_list = list(sub_state.values()), list(add_state.values())

    def mul_sub_() -> dict[str, Any]:
        torch._foreach_sub_(sub_list, torch._foreach_mul(gs, _torch_foreach(sub_list, gs)))
        return sub_state

    def addcmul_() -> dict[str, Any]:
        torch._foreach_addcmul_(add_list, gs, _torch_foreach(add_list, gs), value=-1)
        return add_state

    return [
        Contender("native_foreach", "native foreach: _foreach_mul + _foreach_sub", NATIVE, functional, read),
        Contender(
            "native_foreach_inplace",
            "native foreach in place: _foreach_mul + _foreach_sub_",
            NATIVE,
            mul_sub_,
            read,
            reset=sub_reset,
        ),
        Contender(
            "native_foreach_addcmul_",
            "native foreach in place: _foreach_addcmul_",
            NATIVE,
            addcmul_,
            read,
            reset=add_reset,
        ),
    ]


# --- JAX --------------------------------------------------------------------


def _jax_one(w: Any, g: Any) -> Any:
    import jax.numpy as jnp

    return w - (jnp.linalg.norm(w) * LR / (jnp.linalg.norm(g) + EPS)) * g


def _jax(wl: Workload) -> list[Contender]:
    import jax
    import jax.numpy as jnp

    single = wl.single
    key0 = next(iter(wl.w))

    def fresh() -> dict[str, Any]:
        return {k: jnp.array(v, copy=True) for k, v in wl.w.items()}

    w_tree, g_tree = fresh(), {k: jnp.array(v) for k, v in wl.g.items()}
    w = w_tree[key0] if single else w_tree
    g = g_tree[key0] if single else g_tree
    ready = jax.block_until_ready

    def read(result: Any, key: str) -> np.ndarray:
        return np.asarray(_leaf(result, key, single))

    def tree_rule(w: Any, g: Any, lr: Any) -> Any:
        return jax.tree.map(lambda a, b: a - (jnp.linalg.norm(a) * lr / (jnp.linalg.norm(b) + EPS)) * b, w, g)

    jit_native, donated = jax.jit(tree_rule), jax.jit(tree_rule, donate_argnums=0)
    floor_fn = jax.jit(lambda w, g: jax.tree.map(jnp.add, w, g))
    don_state = {"w": fresh()}

    def don_reset() -> None:
        don_state["w"] = fresh()

    def don_step() -> Any:
        don_state["w"] = ready(donated(don_state["w"], g_tree, LR))
        return don_state["w"][key0] if single else don_state["w"]

    contenders = []
    if single:
        eager = _per_tensor(_jax_one, single)
        contenders.append(
            Contender(
                "native_eager", "native eager ops (not jitted)", NATIVE, lambda: ready(eager(w, g)), read
            )
        )
    contenders += [
        Contender(
            "native_jit", "native jax.jit(tree_map)", NATIVE, lambda: ready(jit_native(w, g, LR)), read
        ),
        Contender(
            "native_jit_donate",
            "native jax.jit donate_argnums=0 (in place)",
            NATIVE,
            don_step,
            read,
            reset=don_reset,
        ),
        *_optax_contenders(w, g, read),
        Contender(
            "floor", "floor: jax.jit(tree_map(add))", FLOOR, lambda: ready(floor_fn(w, g)), read, "add"
        ),
        Contender(LM, "lars_multi", LARS_MULTI, lambda: ready(lm.lars_update(w, g, LR)), read),
        _jax_lm_inplace(wl, fresh, g_tree, read),
    ]
    return contenders


def _optax_contenders(w: Any, g: Any, read: Callable[[Any, str], np.ndarray]) -> list[Contender]:
    """``optax.lars`` configured to the same rule: eager as users call it, and jitted."""
    import jax
    import optax

    tx = optax.lars(learning_rate=LR, weight_decay=0.0, trust_coefficient=1.0, momentum=0.0)
    state = tx.init(w)

    def eager() -> Any:
        updates, _ = tx.update(g, state, w)
        return jax.block_until_ready(optax.apply_updates(w, updates))

    @jax.jit
    def jitted(w: Any, g: Any, state: Any) -> Any:
        updates, _ = tx.update(g, state, w)
        return optax.apply_updates(w, updates)

    return [
        Contender("optax_eager", "optax.lars eager: tx.update + apply_updates", OPTAX, eager, read),
        Contender(
            "optax_jit", "optax.lars jitted", OPTAX, lambda: jax.block_until_ready(jitted(w, g, state)), read
        ),
    ]


def _jax_lm_inplace(
    wl: Workload,
    fresh: Callable[[], dict[str, Any]],
    g_tree: dict[str, Any],
    read: Callable[[Any, str], np.ndarray],
) -> Contender:
    """lars_multi in place on JAX: ``lm.Array`` / ``lm.Container`` wrappers, buffers donated."""
    import jax

    key0 = next(iter(wl.w))
    arrays = {k: lm.Array(v) for k, v in fresh().items()}
    target: Any  # one lm.Array, or an lm.Container of them
    g: Any
    if wl.single:
        target, g = arrays[key0], g_tree[key0]
    else:
        target, g = lm.Container(arrays), lm.Container({k: lm.Array(v) for k, v in g_tree.items()})
    leaves = list(arrays.values())

    def reset() -> None:
        for a, v in zip(leaves, fresh().values()):
            a.data = v

    def step() -> Any:
        lm.lars_update(target, g, LR, out=target)
        jax.block_until_ready([a.data for a in leaves])
        return target

    return Contender(
        LM_INPLACE, "lars_multi out=w (lm.Container, donated)", LARS_MULTI, step, read, reset=reset
    )


# --- TensorFlow -------------------------------------------------------------


def _tf_one(w: Any, g: Any, lr: Any) -> Any:
    import tensorflow as tf

    return w - (tf.norm(w) * lr / (tf.norm(g) + EPS)) * g


def _tensorflow(wl: Workload) -> list[Contender]:
    import tensorflow as tf

    single = wl.single
    key0, small = next(iter(wl.w)), _smallest(wl)
    w_tree = {k: tf.constant(v) for k, v in wl.w.items()}
    g_tree = {k: tf.constant(v) for k, v in wl.g.items()}
    w = w_tree[key0] if single else w_tree
    g = g_tree[key0] if single else g_tree
    lr = tf.constant(LR, tf.float32)

    def sync(result: Any) -> Any:
        _leaf(result, small, single).numpy()
        return result

    def read(result: Any, key: str) -> np.ndarray:
        return _leaf(result, key, single).numpy()

    def variables() -> tuple[Any, Callable[[], None]]:
        tree = {k: tf.Variable(v) for k, v in wl.w.items()}

        def reset() -> None:
            for k, v in w_tree.items():
                tree[k].assign(v)

        return (tree[key0] if single else tree), reset

    eager = _per_tensor(lambda a, b: _tf_one(a, b, lr), single)
    graph = tf.function(_per_tensor(lambda a, b: _tf_one(a, b, lr), single))
    ip_vars, ip_reset = variables()
    fl_vars, fl_reset = variables()
    lm_vars, lm_reset = variables()
    assign_sub = tf.function(
        _per_tensor(lambda v, b: v.assign_sub((tf.norm(v) * lr / (tf.norm(b) + EPS)) * b), single)
    )
    assign_add = tf.function(_per_tensor(lambda v, b: v.assign_add(b), single))
    return [
        Contender(
            "native_tf_function", "native tf.function over the tree", NATIVE, lambda: sync(graph(w, g)), read
        ),
        Contender(
            "native_eager",
            "native eager per-tensor: tf.norm, w - r*g",
            NATIVE,
            lambda: sync(eager(w, g)),
            read,
        ),
        Contender(
            "native_inplace",
            "native tf.function assign_sub (in place)",
            NATIVE,
            lambda: sync(_run_and_return(assign_sub, ip_vars, g)),
            read,
            reset=ip_reset,
        ),
        Contender(
            "floor",
            "floor: tf.function assign_add",
            FLOOR,
            lambda: sync(_run_and_return(assign_add, fl_vars, g)),
            read,
            "add",
            fl_reset,
        ),
        Contender(LM, "lars_multi", LARS_MULTI, lambda: sync(lm.lars_update(w, g, LR)), read),
        Contender(
            LM_INPLACE,
            "lars_multi out=w (tf.Variable)",
            LARS_MULTI,
            lambda: sync(lm.lars_update(lm_vars, g, LR, out=lm_vars)),
            read,
            reset=lm_reset,
        ),
    ]


def _run_and_return(fn: Callable[[Any, Any], Any], state: Any, g: Any) -> Any:
    """Run an in-place ``tf.function`` and return the variables it updated."""
    fn(state, g)
    return state


BUILDERS: dict[str, Callable[[Workload], list[Contender]]] = {
    "numpy": _numpy,
    "torch": _torch,
    "jax": _jax,
    "tensorflow": _tensorflow,
}
BACKENDS = tuple(BUILDERS)


def build(backend: str, workload: Workload) -> list[Contender]:
    """Every contender of ``backend`` on ``workload``, all reading the same data."""
    if backend != "numpy":
        importlib.import_module(backend)
    return BUILDERS[backend](workload)
