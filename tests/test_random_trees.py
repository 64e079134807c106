"""Random mixed trees on every backend, against a float64 NumPy reference.

Hypothesis draws a *description* of the weights: a tree of mappings (dict,
OrderedDict, defaultdict, ``lm.Container``) and sequences (list, tuple), up to
three levels deep with 1 to 8 leaves, each leaf with a shape, a dtype and a
memory layout (contiguous, transposed, strided, unaligned). A NumPy generator
seeded by Hypothesis then builds the native arrays for the backend under test,
and every other tree (``dcdw``, per-layer ``lr`` and ``decay_lambda``, ``out``)
with the same keys but each mapping of a random kind and in a shuffled key
order: the library pairs mappings by key, sequences by position.

Every leaf is checked against :func:`conftest.reference_layer` computed from
copies taken before the call, paired by key path. With ``out=`` the result is
also compared with a functional call on fresh copies, across aliasing
patterns: ``out=w``, a separate ``out``, tied weights, a gradient that is
another layer's weights, and ``out`` leaves that are views of the gradients.
"""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from conftest import (
    TOLERANCES,
    assert_layer_close,
    native,
    np_dtype,
    reference_layer,
    reference_scale,
    require_backend,
    run_python,
    to_numpy,
    x64,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import lars_multi as lm

MAP_KINDS = ("dict", "ordered", "default", "container")
SEQ_KINDS = ("list", "tuple")
SHAPES = ((), (1,), (5,), (3, 4), (2, 3, 4))
# float32 first: Hypothesis shrinks towards it, and draws it most of the time.
LEAF_DTYPES = ("float32", "float32", "float32", "float32", "float16", "bfloat16", "float64")
LAYOUTS = ("contiguous", "transposed", "strided", "unaligned")
KEYS = ("a", "b", "c", "d", "e", "f", "g", "h", "l0", "l1", "l2", "l10", "z", "B")
VALUES = ("normal", "normal", "normal", "normal", "zero_w", "zero_g", "none_g")
MODES = {
    "numpy": ("functional", "out_w", "out_sep", "tied", "grad_is_weight", "out_view_g"),
    "torch": ("functional", "out_w", "out_sep", "tied", "grad_is_weight", "out_view_g"),
    "jax": ("functional", "out_w", "out_sep", "tied", "grad_is_weight"),
    "tensorflow": ("functional", "out_w", "out_sep", "tied", "grad_is_weight"),
}
MAX_EXAMPLES = {"numpy": 500, "torch": 300, "jax": 80, "tensorflow": 60}

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")


# --- the description --------------------------------------------------------------------------


@st.composite
def leaf_specs(draw):
    return {
        "shape": draw(st.sampled_from(SHAPES)),
        "dtype": draw(st.sampled_from(LEAF_DTYPES)),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "values": draw(st.sampled_from(VALUES)),
    }


def _node(draw, n: int, depth: int) -> Any:
    """A subtree with ``n`` leaves; containers at depths 0, 1 and 2 only."""
    if n == 1 and (depth == 3 or draw(st.booleans())):
        return ("leaf", draw(leaf_specs()))
    kind = draw(st.sampled_from(MAP_KINDS + SEQ_KINDS))
    if depth == 2:
        parts = [1] * n
    else:
        k = draw(st.integers(1, min(n, 4)))
        cuts = (
            draw(st.lists(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1, unique=True))
            if n > 1
            else []
        )
        cuts.sort()
        bounds = [0, *cuts, n]
        parts = [b - a for a, b in itertools.pairwise(bounds)]
    children = [_node(draw, p, depth + 1) for p in parts]
    if kind in SEQ_KINDS:
        return ("seq", kind, children)
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=len(children), max_size=len(children), unique=True))
    return ("map", kind, list(zip(keys, children)))


@st.composite
def tree_specs(draw):
    return _node(draw, draw(st.integers(1, 8)), 0)


def leaf_paths(spec: Any, prefix: tuple = ()) -> list[tuple[tuple, dict]]:
    """(path, leaf spec) for every leaf of the description, depth first."""
    if spec[0] == "leaf":
        return [(prefix, spec[1])]
    items = enumerate(spec[2]) if spec[0] == "seq" else ((k, c) for k, c in spec[2])
    return [p for key, child in items for p in leaf_paths(child, (*prefix, key))]


def make_mapping(kind: str, items: list[tuple[str, Any]]) -> Mapping:
    if kind == "dict":
        return dict(items)
    if kind == "ordered":
        return collections.OrderedDict(items)
    if kind == "default":
        d = collections.defaultdict(list)
        d.update(items)
        return d
    return lm.Container(dict(items))


def assemble(
    spec: Any, by_path: dict[tuple, Any], rng: np.random.Generator | None, prefix: tuple = ()
) -> Any:
    """The tree of the description with ``by_path``'s leaves; with ``rng``, each
    mapping of a random kind and with its keys in a random order."""
    if spec[0] == "leaf":
        return by_path[prefix]
    if spec[0] == "seq":
        children = [assemble(c, by_path, rng, (*prefix, i)) for i, c in enumerate(spec[2])]
        return list(children) if spec[1] == "list" else tuple(children)
    items = list(spec[2])
    kind = spec[1]
    if rng is not None:
        kind = MAP_KINDS[rng.integers(len(MAP_KINDS))]
        items = [items[i] for i in rng.permutation(len(items))]
    return make_mapping(kind, [(k, assemble(c, by_path, rng, (*prefix, k))) for k, c in items])


def get(tree: Any, path: tuple) -> Any:
    for entry in path:
        tree = tree[entry]
    return tree


# --- native arrays in several layouts ---------------------------------------------------------


def make_array(backend: str, values: np.ndarray, dtype: str, layout: str) -> Any:
    """A native array of ``backend`` holding ``values`` (rounded to ``dtype``) in ``layout``."""
    values = np.asarray(values, np.float64)
    shape = values.shape
    if backend == "numpy":
        dt = np_dtype(dtype)
        if layout == "transposed" and values.ndim >= 2:
            return np.ascontiguousarray(values.T.astype(dt)).T
        if layout == "transposed" and values.ndim == 1:
            return np.ascontiguousarray(values[::-1].astype(dt))[::-1]
        if layout == "strided" and values.ndim >= 1:
            big = np.zeros((2 * shape[0], *shape[1:]), dt)
            big[::2] = values.astype(dt)
            return big[::2]
        if layout == "unaligned":
            n = values.size
            buf = bytearray(n * dt.itemsize + 1)
            arr = np.frombuffer(buf, dt, n, offset=1).reshape(shape)
            arr[...] = values.astype(dt)
            return arr
        return values.astype(dt)
    if backend == "torch":
        if layout == "transposed" and values.ndim >= 2:
            return native(backend, np.ascontiguousarray(values.T), dtype).permute(
                *reversed(range(values.ndim))
            )
        if layout in ("strided", "transposed", "unaligned") and values.ndim >= 1:
            big = native(backend, np.zeros((2 * shape[0], *shape[1:])), dtype)
            big[::2] = native(backend, values, dtype)
            return big[::2]
        return native(backend, values, dtype)
    return native(backend, values, dtype)


def handle(backend: str, x: Any) -> Any:
    """A writable handle on ``x``: the array itself (numpy, torch), an
    ``lm.Array`` (jax) or a ``tf.Variable`` (tensorflow)."""
    if backend == "jax":
        return lm.Array(x)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.Variable(x)
    return x


def view_of(backend: str, g: Any, rng: np.random.Generator) -> Any:
    """A view of ``g``'s memory: the framework's own, or (for a contiguous CPU array of
    a plain float dtype) one reached through another object, which only addresses show."""
    plain = str(g.dtype).removeprefix("torch.") in ("float16", "float32", "float64")
    if backend == "numpy":
        if plain and g.flags.c_contiguous and g.dtype.isnative and rng.random() < 0.5:
            return np.frombuffer(memoryview(g), dtype=g.dtype).reshape(g.shape)
        return g.view()
    if plain and g.device.type == "cpu" and g.is_contiguous() and rng.random() < 0.5:
        import torch

        return torch.from_numpy(g.numpy())
    return g.view_as(g)


# --- one example ------------------------------------------------------------------------------


def ulp_close(got: Any, want: Any, w: np.ndarray, g: np.ndarray, lr: float, decay: float, dtype: str) -> None:
    """Two results of the library agree to a few units in the last place (of the terms' size)."""
    got, want = to_numpy(got).astype(np.float64), to_numpy(want).astype(np.float64)
    eps = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}[dtype]
    bound = 4 * eps * reference_scale(w, g, lr, decay) + TOLERANCES[dtype][1]
    assert np.all(np.abs(got - want) <= bound), (got, want)


def check_example(backend: str, spec: Any, seed: int, mode: str, lr_kind: str, decay_kind: str) -> None:
    rng = np.random.default_rng(seed)
    leaves = leaf_paths(spec)
    paths = [p for p, _ in leaves]
    specs = [dict(s) for _, s in leaves]
    n = len(paths)
    if backend == "tensorflow" and mode != "functional":
        # tf.Variables of several ranks through the same tf.function give wrong
        # results (see test_tf_variables_of_three_ranks): variables stay rank 1 here.
        for s in specs:
            s["shape"] = (5,) if len(s["shape"]) > 1 else (1,) if s["shape"] == () else s["shape"]
    pair = None
    if mode in ("tied", "grad_is_weight"):
        if n < 2:
            mode = "out_w"
        else:
            i, j = (int(k) for k in rng.choice(n, 2, replace=False))
            pair = (i, j)
            specs[j].update(shape=specs[i]["shape"], dtype=specs[i]["dtype"])
            for k in pair:
                if specs[k]["values"] == "none_g":
                    specs[k]["values"] = "normal"
    if mode == "out_view_g":
        view_at = int(rng.integers(n))
        if specs[view_at]["values"] == "none_g":
            specs[view_at]["values"] = "normal"

    # The values, rounded to each leaf's dtype.
    w_vals, g_vals = [], []
    for s in specs:
        w = np.asarray(rng.standard_normal(s["shape"]) * rng.choice([0.05, 1.0, 20.0]))
        g = np.asarray(rng.standard_normal(s["shape"]) * rng.choice([0.01, 1.0, 5.0]))
        if s["values"] == "zero_w":
            w[...] = 0
        if s["values"] == "zero_g":
            g[...] = 0
        dt = np_dtype(s["dtype"])
        w_vals.append(w.astype(dt).astype(np.float64))
        g_vals.append(None if s["values"] == "none_g" else g.astype(dt).astype(np.float64))

    lrs = [float(x) for x in rng.uniform(1e-3, 1.0, n)]
    if lr_kind == "single":
        lrs = [lrs[0]] * n
    decays = [float(x) for x in rng.uniform(0.01, 10.0, n)]
    if decay_kind == "zero":
        decays = [0.0] * n
    elif decay_kind == "single":
        decays = [decays[0]] * n
    else:
        decays = [d if rng.random() < 0.7 else 0.0 for d in decays]
    if pair is not None and mode == "tied" and rng.random() < 0.5:
        lrs[pair[1]], decays[pair[1]] = lrs[pair[0]], decays[pair[0]]

    # The native trees.
    ws = [make_array(backend, v, s["dtype"], s["layout"]) for v, s in zip(w_vals, specs)]
    gs = [
        None if v is None else make_array(backend, v, s["dtype"], s["layout"]) for v, s in zip(g_vals, specs)
    ]
    writes_w = mode in ("out_w", "tied", "grad_is_weight")
    if writes_w:
        ws = [handle(backend, x) for x in ws]
    if mode == "tied":
        i, j = pair
        ws[j], w_vals[j] = ws[i], w_vals[i]
        gs[j] = (
            gs[i] if rng.random() < 0.7 else make_array(backend, g_vals[i], specs[i]["dtype"], "contiguous")
        )
        g_vals[j] = g_vals[i]
    if mode == "grad_is_weight":
        i, j = pair
        gs[i] = ws[j]
        g_vals[i] = w_vals[j]
    w_tree = assemble(spec, dict(zip(paths, ws)), None)
    g_tree = assemble(spec, dict(zip(paths, gs)), rng)
    lr = lrs[0] if lr_kind == "single" else assemble(spec, dict(zip(paths, lrs)), rng)
    decay = decays[0] if decay_kind != "per_leaf" else assemble(spec, dict(zip(paths, decays)), rng)
    if decay_kind == "zero" and rng.random() < 0.5:
        decay = 0

    outs = None
    if writes_w:
        out = w_tree
    elif mode in ("out_sep", "out_view_g"):
        outs = [
            handle(backend, make_array(backend, np.zeros(s["shape"]), s["dtype"], s["layout"])) for s in specs
        ]
        if mode == "out_view_g":
            outs[view_at] = view_of(backend, gs[view_at], rng)
        out = assemble(spec, dict(zip(paths, outs)), rng)
    else:
        out = None

    before_w = [to_numpy(x) for x in ws]
    before_g = [None if x is None else to_numpy(x) for x in gs]
    for k in range(n):  # the builder's values are the arrays' values
        np.testing.assert_array_equal(before_w[k].astype(np.float64), w_vals[k])

    # Tied leaves: one array cannot hold two results. They agree with the same gradient and
    # rates; with other rates, or an equal gradient in another array (another layout may
    # round its norm otherwise), they may differ, and the step refuses them.
    conflict = mode == "tied" and (
        lrs[pair[0]] != lrs[pair[1]] or decays[pair[0]] != decays[pair[1]] or gs[pair[0]] is not gs[pair[1]]
    )
    try:
        result = lm.lars_update(w_tree, g_tree, lr, decay_lambda=decay, out=out)
    except lm.LarsMultiValueError as error:
        assert conflict and "are the same array, and the step gives them different values" in str(error)
        for k in range(n):  # nothing written
            np.testing.assert_array_equal(to_numpy(ws[k]), before_w[k])
        return

    if out is not None:
        assert result is out
    got = [get(result, p) for p in paths]
    tied_values = None
    if mode == "tied":
        tied_values = {k: reference_layer(w_vals[k], g_vals[k], lrs[k], decays[k]) for k in pair}
    for k in range(n):
        if g_vals[k] is None:
            np.testing.assert_array_equal(to_numpy(got[k]).astype(np.float64), w_vals[k])
        elif tied_values is not None and k in pair:
            # One array holds both layers: it ends with one of their results,
            # both computed from the original values (never a double update).
            value = to_numpy(got[k]).astype(np.float64)
            rtol, atol = TOLERANCES[specs[k]["dtype"]]
            bounds = {t: rtol * reference_scale(w_vals[t], g_vals[t], lrs[t], decays[t]) + atol for t in pair}
            assert any(np.all(np.abs(value - tied_values[t]) <= bounds[t]) for t in pair), (
                paths[k],
                value,
                tied_values,
            )
        else:
            assert_layer_close(got[k], w_vals[k], g_vals[k], lrs[k], decays[k], specs[k]["dtype"])

    # Inputs not named by out= are untouched.
    for k in range(n):
        if not writes_w:
            np.testing.assert_array_equal(to_numpy(ws[k]), before_w[k])
        if (
            gs[k] is not None
            and not (mode == "out_view_g" and k == view_at)
            and not (mode == "grad_is_weight" and k == pair[0])
        ):
            np.testing.assert_array_equal(to_numpy(gs[k]), before_g[k])
    if mode == "functional":
        for k in range(n):
            assert type(got[k]) is type(ws[k])
        check_types(spec, w_tree, result)
        return

    # out= against the functional result on fresh copies.
    fresh_w = [make_array(backend, v, s["dtype"], "contiguous") for v, s in zip(w_vals, specs)]
    fresh_g = [
        None if v is None else make_array(backend, v, s["dtype"], "contiguous") for v, s in zip(g_vals, specs)
    ]
    functional = lm.lars_update(
        assemble(spec, dict(zip(paths, fresh_w)), None),
        assemble(spec, dict(zip(paths, fresh_g)), rng),
        lr,
        decay_lambda=decay,
    )
    for k in range(n):
        want = get(functional, paths[k])
        if g_vals[k] is None:
            np.testing.assert_array_equal(to_numpy(want).astype(np.float64), w_vals[k])
        elif tied_values is None:
            ulp_close(got[k], want, w_vals[k], g_vals[k], lrs[k], decays[k], specs[k]["dtype"])


def check_types(spec: Any, w: Any, result: Any) -> None:
    """The functional result has the node types of ``w``."""
    assert type(result) is type(w), (type(result), type(w))
    if spec[0] == "seq":
        for i, child in enumerate(spec[2]):
            check_types(child, w[i], result[i])
    elif spec[0] == "map":
        assert list(result) == list(w)
        for key, child in spec[2]:
            check_types(child, w[key], result[key])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_random_trees(backend):
    """Random trees, per-layer hyper-parameters and aliasing, against the reference."""

    @settings(max_examples=MAX_EXAMPLES[backend])
    @given(
        spec=tree_specs(),
        seed=st.integers(0, 2**32 - 1),
        mode=st.sampled_from(MODES[backend]),
        lr_kind=st.sampled_from(["single", "per_leaf"]),
        decay_kind=st.sampled_from(["zero", "single", "per_leaf"]),
    )
    def run(spec, seed, mode, lr_kind, decay_kind):
        has64 = any(s["dtype"] == "float64" for _, s in leaf_paths(spec))
        with x64(backend, "float64" if has64 else "float32"):
            check_example(backend, spec, seed, mode, lr_kind, decay_kind)

    run()


# --- regressions --------------------------------------------------------------------------------


def _twelve(backend, writable):
    rng = np.random.default_rng(12)
    keys = [f"l{i}" for i in range(12)]  # insertion order != sorted order (l10 < l2)
    w_vals = {k: rng.standard_normal(5).astype(np.float32) for k in keys}
    g_vals = {k: (rng.standard_normal(5) * (i + 1)).astype(np.float32) for i, k in enumerate(keys)}
    make = (lambda v: handle(backend, native(backend, v))) if writable else (lambda v: native(backend, v))
    w = collections.OrderedDict((k, make(w_vals[k])) for k in keys)
    g = {k: native(backend, g_vals[k]) for k in reversed(keys)}
    return w, g, w_vals, g_vals


@pytest.mark.parametrize("use_out", [False, True], ids=["functional", "out_w"])
def test_ordered_dict_w_with_reversed_dict_dcdw(backend, use_out):
    w, g, w_vals, g_vals = _twelve(backend, writable=use_out)
    lr = {k: 0.01 * (i + 1) for i, k in enumerate(reversed(list(w)))}
    result = lm.lars_update(w, g, lr, decay_lambda=0.5, out=w if use_out else None)
    assert type(result) is collections.OrderedDict
    assert list(result) == list(w)
    if use_out:
        assert result is w
    for k in w:
        assert_layer_close(result[k], w_vals[k], g_vals[k], lr[k], 0.5, "float32")
        np.testing.assert_array_equal(to_numpy(g[k]), g_vals[k])


def test_a_node_that_checks_its_children_is_paired_as_before():
    """Pairing a tree of other nodes makes a stand-in of the value's structure holding
    places: a registered node whose constructor checks its children cannot be made so, and
    its own error escaped. It is left to the walk, which pairs it by key."""
    require_backend("jax")
    import jax.numpy as jnp
    from jax.tree_util import register_pytree_node_class

    @register_pytree_node_class
    class Checked:
        def __init__(self, a, b):
            if not hasattr(a, "shape"):
                raise AssertionError("arrays only")
            self.a, self.b = a, b

        def tree_flatten(self):
            return (self.a, self.b), None

        @classmethod
        def tree_unflatten(cls, aux, children):
            return cls(*children)

    w = {"m": Checked(jnp.ones((2, 3)), jnp.ones(3))}
    g = Checked(jnp.full((2, 3), 0.5), jnp.full(3, 0.25))
    want = lm.lars_update(w, {"m": g}, 0.1)
    got = lm.lars_update(w, collections.OrderedDict(m=g), 0.1)  # (another mapping type: paired by key)
    np.testing.assert_array_equal(to_numpy(got["m"].a), to_numpy(want["m"].a))
    np.testing.assert_array_equal(to_numpy(got["m"].b), to_numpy(want["m"].b))


def test_a_key_mismatch_among_many_keys_names_few():
    """A message listed every key of both trees: a megabyte for 50,000 layers. It lists a
    few, how many there are, and every key missing and unexpected (here one of each)."""
    w = {f"k{i}": np.ones(2) for i in range(5000)}
    g = dict(w)
    del g["k4999"]
    g["zz"] = np.ones(2)
    with pytest.raises(lm.LarsMultiValueError) as info:
        lm.lars_update(w, g, 0.1)
    message = str(info.value)
    assert len(message) < 400, message
    assert "... (5,000 keys)]" in message and message.endswith("(missing ['k4999']; unexpected ['zz'])")


def test_a_tree_of_other_nodes_pairs_without_printing_its_leaves(backend):
    """Gradients as a tuple for a list of weights (as torch.autograd.grad gives them), or
    with None for a frozen layer: optree's flatten_up_to refused the tuple with an error
    that printed every array (half a second a step for 161 layers), then the tree was
    paired by place. Paired the same, and no leaf is printed."""
    printed = []

    class Loud:
        def __repr__(self):
            printed.append(self)
            return "Loud()"

    rng = np.random.default_rng(0)
    values = [rng.standard_normal((3, 2)).astype(np.float32) for _ in range(4)]
    grads = [rng.standard_normal((3, 2)).astype(np.float32) for _ in range(4)]
    w = [native(backend, v) for v in values]
    for g in (
        tuple(native(backend, x) for x in grads),
        [native(backend, grads[0]), None, *map(lambda x: native(backend, x), grads[2:])],
    ):
        result = lm.lars_update(w, g, 0.1)
        for i in range(4):
            if g[i] is None:
                assert result[i] is w[i]
            else:
                assert_layer_close(result[i], values[i], grads[i], 0.1, 0.0, "float32")
    with pytest.raises(lm.LarsMultiTypeError, match=r"^dcdw\[0\]: expected an array like w\[0\]"):
        lm.lars_update(w, tuple(Loud() for _ in w), 0.1)
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw: expected the structure of w"):
        lm.lars_update(w, {"a": [Loud()] * 4}, 0.1)
    assert not printed


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize("same_grad_object", [True, False])
def test_tied_weights_per_layer_lr(name, same_grad_object):
    require_backend(name)
    w0 = np.array([[3.0, 1.0, 5.0], [7.0, 2.0, 9.0]], np.float32)
    g0 = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]], np.float32)
    other = np.array([1.5, -2.0, 0.5], np.float32)
    other_g = np.array([0.05, 0.2, -0.1], np.float32)
    with lm.using_backend(name):
        x = native(name, w0)
        gx = native(name, g0)
        y, gy = native(name, other), native(name, other_g)
        w = {"enc": x, "mid": y, "dec": x}
        g = collections.OrderedDict(
            [("dec", gx if same_grad_object else native(name, g0)), ("mid", gy), ("enc", gx)]
        )
        lr = collections.OrderedDict([("mid", 0.3), ("dec", 0.2), ("enc", 0.1)])
        # One array cannot hold both layers' results: refused, nothing written.
        with pytest.raises(
            lm.LarsMultiValueError,
            match=r"^out\['dec'\] and out\['enc'\] are the same array, and the step gives them different",
        ):
            lm.lars_update(w, g, lr, out=w)
        np.testing.assert_array_equal(to_numpy(x), w0)
        np.testing.assert_array_equal(to_numpy(y), other)
        # The same rate for both: one result, computed from the original weights.
        lr["dec"] = 0.1
        assert lm.lars_update(w, g, lr, out=w) is w
        assert w["enc"] is x and w["dec"] is x
        assert_layer_close(y, other, other_g, 0.3, 0.0, "float32")
        np.testing.assert_allclose(to_numpy(x), reference_layer(w0, g0, 0.1), rtol=2e-5, atol=1e-6)
        np.testing.assert_array_equal(to_numpy(gx), g0)


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_gradient_is_other_layers_weight_out_w(name):
    """out=w where one layer's gradient is another layer's weights, under per-layer lr."""
    require_backend(name)
    a0 = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    b0 = np.array([0.25, 0.5, -1.0, 2.0], np.float32)
    gb = np.array([0.1, 0.1, -0.2, 0.3], np.float32)
    with lm.using_backend(name):
        a, b = native(name, a0), native(name, b0)
        w = collections.OrderedDict([("b", b), ("a", a)])
        g = {"a": b, "b": native(name, gb)}
        lr = lm.Container(a=0.2, b=0.1)
        lm.lars_update(w, g, lr, decay_lambda={"b": 0.0, "a": 0.5}, out=w)
        assert_layer_close(a, a0, b0, 0.2, 0.5, "float32")
        assert_layer_close(b, b0, gb, 0.1, 0.0, "float32")


def test_unaligned_and_views_numpy():
    """Unaligned weights, a transposed gradient and out leaves that are views of dcdw."""
    n = 12
    w = np.frombuffer(bytearray(n * 4 + 1), np.float32, n, offset=1).reshape(3, 4)
    w[...] = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    w0 = w.copy()
    g = np.ascontiguousarray(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)).T
    g0 = g.copy()
    out = {"x": g.view()}
    lm.lars_update({"x": w}, collections.defaultdict(list, x=g), 0.1, out=out)
    assert_layer_close(out["x"], w0, g0, 0.1, 0.0, "float32")
    assert_layer_close(g, w0, g0, 0.1, 0.0, "float32")
    np.testing.assert_array_equal(w, w0)


TF_THREE_RANKS = """
import numpy as np, tensorflow as tf, lars_multi as lm

def step(value, grad):
    w = {"a": tf.Variable(np.array(value, np.float32))}
    lm.lars_update(w, {"a": tf.constant(np.array(grad, np.float32))}, 0.1, out=w)
    return w["a"].numpy()

step([1.0, 2.0], [1.0, 1.0])
step([[1.0, 2.0]], [[1.0, 1.0]])
print(step([[[3.0, 4.0], [0.0, 0.0]]], [[[1.0, 0.0], [0.0, 1.0]]]).ravel().tolist())
"""


def test_tf_variables_of_three_ranks():
    """A fresh process: out=w with one tf.Variable per call, of rank 1, then 2, then 3."""
    require_backend("tensorflow")
    got = np.array(json.loads(run_python(TF_THREE_RANKS).splitlines()[-1]))
    w = np.array([3.0, 4.0, 0.0, 0.0])
    g = np.array([1.0, 0.0, 0.0, 1.0])
    want = w - np.linalg.norm(w) * 0.1 / np.linalg.norm(g) * g  # [2.6464, 4, 0, -0.3536]
    np.testing.assert_allclose(got, want, rtol=1e-6)
