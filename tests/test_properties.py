"""Property tests: ``lars_update`` against a float64 NumPy reference.

Hypothesis draws the structure (shapes, dtypes, rates, decay, trees); the
values come from a NumPy generator seeded by Hypothesis, kept in a range where
no float16 element over- or underflows (the float16 overflow of the *norm*
is tested separately). Shapes come from a small fixed set, so that JAX (which
compiles once per shape, dtype and tree structure) stays fast.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    DTYPES,
    assert_layer_close,
    dtype_name,
    native,
    native_type,
    np_dtype,
    reference_layer,
    to_numpy,
    x64,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import lars_multi as lm

SHAPES = [(), (0,), (1,), (3,), (2, 3), (4, 1, 2), (2, 0, 3), (17,)]
SCALES = [1e-2, 1.0, 30.0]


@st.composite
def layers(draw, dtype=None, shape=None):
    """(w, g) as NumPy arrays already rounded to ``dtype``, plus the dtype name."""
    dtype = dtype or draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from(SHAPES)) if shape is None else shape
    seed = draw(st.integers(0, 2**32 - 1))
    w_scale, g_scale = draw(st.sampled_from(SCALES)), draw(st.sampled_from(SCALES))
    zeros = draw(st.sampled_from(["none", "some", "w", "g"]))
    rng = np.random.default_rng(seed)
    w = rng.uniform(-w_scale, w_scale, size=shape)
    g = rng.uniform(-g_scale, g_scale, size=shape)
    if zeros == "some":
        w[rng.random(shape) < 0.3] = 0
        g[rng.random(shape) < 0.3] = 0
    elif zeros == "w":
        w[...] = 0
    elif zeros == "g":
        g[...] = 0
    dt = np_dtype(dtype)
    return w.astype(dt), g.astype(dt), dtype


rates = st.floats(1e-4, 1.0)
decays = st.one_of(st.just(0.0), st.just(0), st.floats(0.01, 10.0))


def make_lr(backend, draw_lr, kind, dtype):
    """``lr`` as passed (Python float or 0-d native array) and its exact value."""
    if kind == "float":
        return draw_lr, draw_lr
    lr_dtype = dtype if kind == "same-dtype-array" else "float32"
    value = np.array(draw_lr, dtype=np_dtype(lr_dtype))
    return native(backend, value), float(value.astype(np.float64))


lr_kinds = st.sampled_from(["float", "float32-array", "same-dtype-array"])


def snapshot(*arrays):
    return [to_numpy(a) for a in arrays]


def assert_unchanged(before, arrays):
    for b, a in zip(before, arrays):
        np.testing.assert_array_equal(to_numpy(a), b)


@settings(max_examples=40)
@given(layer=layers(), lr=rates, lr_kind=lr_kinds, decay=decays)
def test_single_layer(backend, layer, lr, lr_kind, decay):
    w_np, g_np, dtype = layer
    with x64(backend, dtype):
        w, g = native(backend, w_np), native(backend, g_np)
        rate, lr_value = make_lr(backend, lr, lr_kind, dtype)
        before = snapshot(w, g)
        new = lm.lars_update(w, g, rate, decay_lambda=decay)
        assert isinstance(new, native_type(backend))
        assert dtype_name(new) == dtype
        assert tuple(new.shape) == w_np.shape
        assert_layer_close(new, w_np, g_np, lr_value, decay, dtype)
        assert_unchanged(before, [w, g])


TREE_KINDS = ["dict", "list", "tuple", "nested"]


def build_tree(kind, leaves):
    if kind == "dict":
        return {f"layer{i}": leaf for i, leaf in enumerate(leaves)}
    if kind == "list":
        return list(leaves)
    if kind == "tuple":
        return tuple(leaves)
    # nested: {"x": [l0, l1, ...], "y": {"z": last}}
    return {"x": list(leaves[:-1]), "y": {"z": leaves[-1]}}


def flatten(kind, tree):
    if kind == "dict":
        return list(tree.values())
    if kind in ("list", "tuple"):
        return list(tree)
    return [*tree["x"], tree["y"]["z"]]


@st.composite
def trees(draw):
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(TREE_KINDS))
    count = draw(st.integers(1, 4)) if kind != "nested" else draw(st.integers(2, 4))
    one_gradient = draw(st.booleans())
    if one_gradient:
        shape = draw(st.sampled_from(SHAPES))
        pairs = [draw(layers(dtype=dtype, shape=shape)) for _ in range(count)]
    else:
        pairs = [draw(layers(dtype=dtype)) for _ in range(count)]
    per_leaf_lr = draw(st.booleans())
    lrs = [draw(rates) for _ in range(count)] if per_leaf_lr else [draw(rates)] * count
    per_leaf_decay = draw(st.booleans())
    ds = [draw(decays) for _ in range(count)] if per_leaf_decay else [draw(decays)] * count
    return dtype, kind, pairs, one_gradient, per_leaf_lr, lrs, per_leaf_decay, ds


@settings(max_examples=30)
@given(case=trees(), lr_kind=lr_kinds)
def test_tree(backend, case, lr_kind):
    dtype, kind, pairs, one_gradient, per_leaf_lr, lrs, per_leaf_decay, ds = case
    with x64(backend, dtype):
        ws = [native(backend, w) for w, _, _ in pairs]
        if one_gradient:
            g_np = pairs[0][1]
            pairs = [(w, g_np, d) for w, _, d in pairs]
            dcdw = native(backend, g_np)
            gs = [dcdw]
        else:
            gs = [native(backend, g) for _, g, _ in pairs]
            dcdw = build_tree(kind, gs)
        made = [make_lr(backend, lr, lr_kind, dtype) for lr in lrs]
        lr_values = [v for _, v in made]
        lr_arg = build_tree(kind, [r for r, _ in made]) if per_leaf_lr else made[0][0]
        decay_arg = build_tree(kind, ds) if per_leaf_decay else ds[0]
        w_tree = build_tree(kind, ws)
        before = snapshot(*ws, *gs)

        new = lm.lars_update(w_tree, dcdw, lr_arg, decay_lambda=decay_arg)

        assert type(new) is type(w_tree)
        leaves = flatten(kind, new)
        assert len(leaves) == len(pairs)
        for leaf, (w_np, g_np, _), lr_value, decay in zip(leaves, pairs, lr_values, ds):
            assert isinstance(leaf, native_type(backend))
            assert dtype_name(leaf) == dtype
            assert_layer_close(leaf, w_np, g_np, lr_value, decay, dtype)
        assert_unchanged(before, [*ws, *gs])


@settings(max_examples=15)
@given(layer=layers(), lr=rates, decay=decays)
def test_lm_array_and_container(backend, layer, lr, decay):
    """lm.Array in, lm.Array out; a Container of two layers gives a Container."""
    w_np, g_np, dtype = layer
    with x64(backend, dtype):
        w = lm.Array(native(backend, w_np))
        g = lm.Array(native(backend, g_np))
        new = w.lars_update(g, lr, decay_lambda=decay)
        assert isinstance(new, lm.Array)
        assert new.backend == backend and new.dtype == dtype and new.shape == w_np.shape
        assert_layer_close(new, w_np, g_np, lr, decay, dtype)

        c = lm.Container(first=w, second={"inner": lm.Array(native(backend, g_np))})
        new_c = c.lars_update(lm.Container(first=g, second={"inner": w}), lr, decay_lambda=decay)
        assert isinstance(new_c, lm.Container) and isinstance(new_c.second, lm.Container)
        assert isinstance(new_c.second.inner, lm.Array)
        assert_layer_close(new_c.first, w_np, g_np, lr, decay, dtype)
        assert_layer_close(new_c["second"]["inner"], g_np, w_np, lr, decay, dtype)
        np.testing.assert_array_equal(to_numpy(w), w_np.astype(to_numpy(w).dtype))


# --- deterministic edge cases ---------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)], ids=["0d", "1d", "2d"])
def test_zero_weights_with_decay_stay_zero(backend, dtype, shape):
    with x64(backend, dtype):
        w = native(backend, np.zeros(shape), dtype)
        g = native(backend, np.full(shape, 0.5), dtype)
        new = lm.lars_update(w, g, 0.1, decay_lambda=0.01)
        values = to_numpy(new)
        assert np.all(np.isfinite(values))
        np.testing.assert_array_equal(values, np.zeros(shape))
        assert dtype_name(new) == dtype
        # The same inside a tree, next to a layer that does change.
        other = native(backend, np.full(shape, 2.0), dtype)
        tree = lm.lars_update({"zero": w, "other": other}, g, 0.1, decay_lambda=0.01)
        np.testing.assert_array_equal(to_numpy(tree["zero"]), np.zeros(shape))
        assert np.all(np.isfinite(to_numpy(tree["other"])))
        assert_layer_close(tree["other"], np.full(shape, 2.0), np.full(shape, 0.5), 0.1, 0.01, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_zero_gradient_leaves_weights_unchanged(backend, dtype, decay):
    w_np = np.array([[3.0, -1.5, 0.25], [7.0, 0.0, -9.0]], dtype=np_dtype(dtype))
    with x64(backend, dtype):
        w = native(backend, w_np)
        g = native(backend, np.zeros((2, 3)), dtype)
        new = lm.lars_update(w, g, 0.1, decay_lambda=decay)
        np.testing.assert_array_equal(to_numpy(new), w_np.astype(np.float64))
        tree = lm.lars_update([w, w], [g, g], [0.1, 1.0], decay_lambda=decay)
        for leaf in tree:
            np.testing.assert_array_equal(to_numpy(leaf), w_np.astype(np.float64))


@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_float16_norm_overflow_is_avoided(backend, decay):
    """Squares of 300 overflow float16 (max 65504); the norms must not."""
    w_np = np.array([300.0, -300.0, 300.0, 200.0], dtype=np.float16)
    g_np = np.array([300.0, 250.0, -300.0, 1.0], dtype=np.float16)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.sum(w_np * w_np))  # float16 arithmetic overflows
    w, g = native(backend, w_np), native(backend, g_np)
    for new in (
        lm.lars_update(w, g, 0.1, decay_lambda=decay),
        lm.lars_update({"a": w, "b": w}, {"a": g, "b": g}, 0.1, decay_lambda=decay)["b"],
        lm.lars_update(lm.Array(w), lm.Array(g), 0.1, decay_lambda=decay),
    ):
        assert dtype_name(new) == "float16"
        assert np.all(np.isfinite(to_numpy(new)))
        assert_layer_close(new, w_np, g_np, 0.1, decay, "float16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtype_matches_input_with_other_lr_dtypes(backend, dtype):
    """An lr array of another floating dtype never changes the result's dtype."""
    w_np = np.array([1.0, 2.0, 3.0], dtype=np_dtype(dtype))
    g_np = np.array([0.5, -0.25, 0.125], dtype=np_dtype(dtype))
    for lr_dtype in ("float16", "float32", "bfloat16"):
        with x64(backend, dtype):
            lr = native(backend, np.array(0.5), lr_dtype)
            new = lm.lars_update(native(backend, w_np), native(backend, g_np), lr)
            assert dtype_name(new) == dtype
            assert_layer_close(new, w_np, g_np, 0.5, 0.0, dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("layout", ["contiguous", "fortran", "strided"])
def test_large_and_non_contiguous_layers(backend, dtype, layout):
    """Layers larger than any internal block, in every memory layout, with and without out=w."""
    rng = np.random.default_rng(5)
    base_w = rng.normal(size=(300, 260)).astype(np_dtype(dtype))
    base_g = (rng.normal(size=(300, 260)) * 0.01).astype(np_dtype(dtype))
    if layout == "fortran":
        w_np, g_np = np.asfortranarray(base_w), np.asfortranarray(base_g)
    elif layout == "strided":
        w_np, g_np = base_w[:, ::2], base_g[:, 1::2]
    else:
        w_np, g_np = base_w, base_g
    w_ref, g_ref = np.array(w_np), np.array(g_np)
    with x64(backend, dtype):
        if backend == "numpy":
            w, g = w_np, g_np  # the views themselves
        else:
            w, g = native(backend, w_ref), native(backend, g_ref)
        new = lm.lars_update(w, g, 0.05, decay_lambda=0.01)
        assert_layer_close(new, w_ref, g_ref, 0.05, 0.01, dtype)
        np.testing.assert_array_equal(to_numpy(w), w_ref)
        if backend == "numpy":
            assert lm.lars_update(w, g, 0.05, decay_lambda=0.01, out=w) is w
            assert_layer_close(w, w_ref, g_ref, 0.05, 0.01, dtype)
            np.testing.assert_array_equal(g, g_ref)
            # The tree path, into the gradient's own buffer.
            tree = lm.lars_update({"a": w_ref.copy()}, {"a": g}, 0.05, out={"a": g})
            assert_layer_close(tree["a"], w_ref, g_ref, 0.05, 0.0, dtype)


def test_reference_sanity():
    """The float64 reference of conftest against a hand computation."""
    w, g = np.array([3.0, 4.0]), np.array([0.6, 0.8])
    np.testing.assert_allclose(reference_layer(w, g, 0.1), w - 0.5 / (1 + 1e-12) * g)
    np.testing.assert_allclose(reference_layer(w, g, 0.1, 2.0), w - 0.05 / (1 + 1e-12) * g)
    np.testing.assert_array_equal(reference_layer(np.zeros(2), g, 0.1, 2.0), np.zeros(2))
