"""The same inputs give the same numbers on every installed backend.

Backends may differ by an ulp or so (torch and XLA fuse ``w - r g`` into one
FMA, the norms are summed in different orders), so agreement is checked in
units of float32 epsilon relative to the size of the terms of the update.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    assert_layer_close,
    backends_to_test,
    dtype_name,
    native,
    np_dtype,
    reference_scale,
    require_backend,
    to_numpy,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import lars_multi as lm

EPS32 = float(np.finfo(np.float32).eps)
ULPS = 8  # of |w| + |lr_local g|, elementwise


@pytest.fixture
def backends():
    names = backends_to_test()
    if len(names) < 2:
        pytest.skip(f"needs two installed backends, have {names}")
    for name in names:
        require_backend(name)
    return names


def run_everywhere(names, w_tree_np, g_tree_np, lr, decay):
    """``lars_update`` of the same NumPy tree on each backend, as NumPy trees."""
    results = {}
    for name in names:
        with lm.using_backend(name):
            w = _map(lambda a, n=name: native(n, a), w_tree_np)
            g = _map(lambda a, n=name: native(n, a), g_tree_np)
            new = lm.lars_update(w, g, lr, decay_lambda=decay)
            assert type(new) is type(w)
            results[name] = _map(to_numpy, new, dtypes=True)
    return results


def _map(fn, tree, dtypes=False):
    if isinstance(tree, dict):
        return {k: _map(fn, v, dtypes) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_map(fn, v, dtypes) for v in tree)
    if dtypes:
        return _Leaf(fn(tree), dtype_name(tree))
    return fn(tree)


class _Leaf:
    """A result leaf (a tuple would be taken for a tree node)."""

    def __init__(self, values, dtype):
        self.values, self.dtype = values, dtype


def _leaves(tree):
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v)]
    if isinstance(tree, list | tuple):
        return [x for v in tree for x in _leaves(v)]
    return [tree]


def assert_backends_agree(names, w_tree, g_tree, lr, decay, ulps=ULPS):
    results = run_everywhere(names, w_tree, g_tree, lr, decay)
    w_leaves, g_leaves = _leaves(w_tree), _leaves(g_tree)
    if len(g_leaves) == 1:
        g_leaves = g_leaves * len(w_leaves)
    per_backend = {name: _leaves(results[name]) for name in names}
    for i, (w, g) in enumerate(zip(w_leaves, g_leaves)):
        dtype = str(w.dtype) if w.dtype != np_dtype("bfloat16") else "bfloat16"
        eps = float(np.finfo(np.float16).eps) if dtype == "float16" else EPS32
        if dtype == "bfloat16":
            eps = 2.0**-7
        if dtype == "float64":
            eps = float(np.finfo(np.float64).eps)
        bound = ulps * eps * reference_scale(w, g, lr, decay) + 1e-30
        first = names[0]
        for name in names:
            values, got_dtype = per_backend[name][i].values, per_backend[name][i].dtype
            assert got_dtype == dtype, (name, got_dtype, dtype)
            assert_layer_close(values, w, g, lr, decay, dtype)
            diff = np.abs(values.astype(np.float64) - per_backend[first][i].values.astype(np.float64))
            assert np.all(diff <= bound), (
                f"leaf {i}: {name} and {first} differ by {diff.max()} (> {ulps} eps of the terms)"
            )


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from([(), (1,), (5,), (3, 4), (2, 3, 4), (64,)]),
    lr=st.floats(1e-4, 1.0),
    decay=st.one_of(st.just(0.0), st.floats(0.01, 10.0)),
)
def test_float32_layers_agree(backends, seed, shape, lr, decay):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    g = (rng.normal(size=shape) * 1e-2).astype(np.float32)
    assert_backends_agree(backends, w, g, lr, decay)


def test_large_float32_layer_agrees(backends):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(256, 129)).astype(np.float32)
    g = (rng.normal(size=(256, 129)) * 1e-3).astype(np.float32)
    # Summation order over 33k elements differs across backends: allow more ulps.
    assert_backends_agree(backends, w, g, 0.01, 0.0, ulps=64)
    assert_backends_agree(backends, {"w": w}, {"w": g}, 0.01, 5e-4, ulps=64)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), decay=st.sampled_from([0.0, 0.1]))
def test_trees_of_mixed_shapes_agree(backends, seed, decay):
    rng = np.random.default_rng(seed)
    shapes = {"conv": (4, 3, 2, 2), "bias": (4,), "dense": [(8, 4), (8,)], "scalar": ()}

    def make(scale):
        return {
            "conv": (rng.normal(size=shapes["conv"]) * scale).astype(np.float32),
            "bias": (rng.normal(size=shapes["bias"]) * scale).astype(np.float32),
            "dense": [(rng.normal(size=s) * scale).astype(np.float32) for s in shapes["dense"]],
            "scalar": np.float32(rng.normal() * scale) * np.ones((), np.float32),
        }

    w, g = make(1.0), make(1e-2)
    assert_backends_agree(backends, w, g, 0.05, decay)


def test_mixed_dtypes_in_one_tree_agree(backends):
    rng = np.random.default_rng(7)
    dtypes = ["float16", "bfloat16", "float32", "float32", "float16"]
    w = [rng.normal(size=(3, 5)).astype(np_dtype(d)) for d in dtypes]
    g = [(rng.normal(size=(3, 5)) * 0.1).astype(np_dtype(d)) for d in dtypes]
    # One rounding of the half result may go either way: 1 ulp of the half dtype, plus slack.
    assert_backends_agree(backends, w, g, 0.1, 0.0, ulps=2)
    assert_backends_agree(backends, tuple(w), tuple(g), 0.1, 0.3, ulps=2)


def test_float64_agrees_where_supported(backends):
    """float64 on every backend (JAX under ``jax.enable_x64``)."""
    from conftest import x64

    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 7))
    g = rng.normal(size=(6, 7)) * 0.01
    results = []
    for name in backends:
        with x64(name), lm.using_backend(name):
            new = lm.lars_update(native(name, w), native(name, g), 0.1, decay_lambda=0.2)
            assert dtype_name(new) == "float64"
            results.append(to_numpy(new))
    for values in results:
        assert_layer_close(values, w, g, 0.1, 0.2, "float64")
        np.testing.assert_allclose(values, results[0], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_a_one_element_layers_norm_is_its_magnitude_on_every_backend(backends, dtype):
    """A one-element layer (a 0-d scale, a temperature) whose square overflows or
    underflows: torch and XLA took its norm as its magnitude, NumPy and TensorFlow as
    the root of its square (NaN, or the layer left as it was). Every backend takes
    the magnitude now, which the float64 reference gives."""
    from conftest import x64

    big = 1e160 if dtype == "float64" else 1e20
    cases = [([big], [2 * big], 0.0), (big, 3 * big, 0.0), ([1.0], [big], 0.0), ([1e-25], [1.0], 0.5)]
    if dtype == "bfloat16":  # (float32's range: a one-element bfloat16 layer computes in float32)
        cases = cases[:3]
    for w, g, decay in cases:
        w64, g64 = np.asarray(w, np.float64), np.asarray(g, np.float64)
        wn, gn = float(np.abs(w64).max()), float(np.abs(g64).max())
        ratio = wn * 0.1 / (gn + 1e-12) / (wn * decay if decay else 1.0)
        want = w64 - ratio * g64
        for name in backends:
            with x64(name):  # (JAX's float64 needs it)
                got = lm.lars_update(
                    native(name, w64, dtype), native(name, g64, dtype), 0.1, decay_lambda=decay
                )
            np.testing.assert_allclose(
                to_numpy(got).astype(np.float64), want, rtol=1e-2 if dtype == "bfloat16" else 1e-6
            )
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.01, preset="optax")
    for name in backends:
        p = {"s": native(name, np.array([1e-25]), "float32")}
        new, _ = opt.step(p, {"s": native(name, np.array([1.0]), "float32")}, opt.init(p))
        np.testing.assert_allclose(
            to_numpy(new["s"]), [1e-25 - 0.1 * 0.01 * 1e-25 / (1.0 + 1e-4 * 1e-25)], rtol=1e-6
        )


def test_a_one_element_layers_norm_has_the_derivative_sign_at_every_point():
    """The derivative of a one-element layer's norm is sign(w): 0 at 0, as a zero norm's
    subgradient is everywhere (JAX's magnitude took +1 there). Through lars_update with
    stop_gradients=False, d(sum of the new weights)/dw at w = 0, g = 0.5 is 1 on each
    autodiff backend, and (1 - 0.1 * 0.5 / 0.5 * sign) elsewhere."""
    found = []
    for w0, want in ((0.0, 1.0), (2.0, 0.9), (-2.0, 1.1)):
        w, g = np.full((1,), w0, np.float32), np.full((1,), 0.5, np.float32)
        if "jax" in backends_to_test():
            import jax
            import jax.numpy as jnp

            grad = jax.grad(lambda x, g=g: lm.lars_update(x, jnp.asarray(g), 0.1, stop_gradients=False).sum())
            found.append(("jax", w0, float(grad(jnp.asarray(w))[0]), want))
        if "torch" in backends_to_test():
            import torch

            tw = torch.tensor(w, requires_grad=True)
            lm.lars_update(tw, torch.tensor(g), 0.1, stop_gradients=False).sum().backward()
            found.append(("torch", w0, float(tw.grad[0]), want))
        if "tensorflow" in backends_to_test():
            import tensorflow as tf

            fw = tf.Variable(w)
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(lm.lars_update(fw, tf.constant(g), 0.1, stop_gradients=False))
            found.append(("tensorflow", w0, float(tape.gradient(loss, fw)[0]), want))
    for name, w0, got, want in found:
        assert got == pytest.approx(want, rel=1e-6), (name, w0, got)


def test_tensorflow_one_element_layer_of_a_shape_known_only_when_the_graph_runs():
    """tf.function with an input_signature of shape [None]: the static shape does not say
    the layer has one element, and its norm was the root of its square (-inf here)."""
    require_backend("tensorflow")
    import tensorflow as tf

    spec = tf.TensorSpec([None], tf.float32)
    step = tf.function(lambda w, g: lm.lars_update(w, g, 0.1), input_signature=[spec, spec])
    got = step(tf.constant([3e19]), tf.constant([3e18]))
    np.testing.assert_allclose(got.numpy(), [3e19 - 0.1 * 10 * 3e18], rtol=1e-6)
    got = step(tf.constant([3.0, 4.0]), tf.constant([0.3, 0.4]))  # (two elements: the root of the squares)
    np.testing.assert_allclose(got.numpy(), [3.0 - 0.3, 4.0 - 0.4], rtol=1e-6)
