"""``out=``: written in place (NumPy, torch), assigned (``tf.Variable``), or
given new data (``lm.Array`` on JAX and TensorFlow); never touched on error."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    assert_layer_close,
    dtype_name,
    native,
    np_dtype,
    require_backend,
    to_numpy,
)

import lars_multi as lm

W = np.array([[3.0, 1.0, 5.0], [7.0, 2.0, 9.0]], dtype=np.float32)
G = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]], dtype=np.float32)
W2 = np.array([1.5, -2.0, 0.5], dtype=np.float32)
G2 = np.array([0.05, 0.2, -0.1], dtype=np.float32)

MUTABLE = [pytest.param("numpy", id="numpy"), pytest.param("torch", id="torch")]


@pytest.fixture(params=MUTABLE)
def mutable_backend(request):
    """Backends whose native arrays are written in place."""
    require_backend(request.param)
    with lm.using_backend(request.param):
        yield request.param


def data_ptr(x):
    """An address for the buffer of a NumPy array or torch tensor."""
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0]
    return x.data_ptr()


# --- NumPy and torch: in place -----------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_native_out_written_in_place(mutable_backend, dtype):
    w = native(mutable_backend, W, dtype)
    g = native(mutable_backend, G, dtype)
    w_np, g_np = to_numpy(w), to_numpy(g)
    out = native(mutable_backend, np.zeros_like(W), dtype)
    ptr = data_ptr(out)
    returned = lm.lars_update(w, g, 0.1, decay_lambda=0.5, out=out)
    assert returned is out
    assert data_ptr(out) == ptr
    assert_layer_close(out, w_np, g_np, 0.1, 0.5, dtype)
    np.testing.assert_array_equal(to_numpy(w), w_np)
    np.testing.assert_array_equal(to_numpy(g), g_np)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_out_is_w_single_array(mutable_backend, dtype):
    w = native(mutable_backend, W, dtype)
    g = native(mutable_backend, G, dtype)
    w_np, g_np = to_numpy(w), to_numpy(g)
    ptr = data_ptr(w)
    returned = lm.lars_update(w, g, 0.1, out=w)
    assert returned is w
    assert data_ptr(w) == ptr
    assert dtype_name(w) == dtype
    assert_layer_close(w, w_np, g_np, 0.1, 0.0, dtype)
    np.testing.assert_array_equal(to_numpy(g), g_np)


@pytest.mark.parametrize("empty", [[], {}, ()], ids=["list", "dict", "tuple"])
def test_out_with_an_empty_subtree(mutable_backend, empty):
    """An empty node beside the layers (a module without parameters) is no leaf:
    ``out=`` raised IndexError on it, where the functional step went through."""
    w = [empty, native(mutable_backend, W), {"b": native(mutable_backend, W2), "none": empty}]
    g = [empty, native(mutable_backend, G), {"b": native(mutable_backend, G2), "none": empty}]
    want = lm.lars_update(w, g, 0.1)
    assert lm.lars_update(w, g, 0.1, out=w) is w
    np.testing.assert_array_equal(to_numpy(w[1]), to_numpy(want[1]))
    np.testing.assert_array_equal(to_numpy(w[2]["b"]), to_numpy(want[2]["b"]))
    opt = lm.optim.lars(0.1, momentum=0.9)
    state = opt.init(w)
    new, _ = opt.step(w, g, state)
    assert opt.step(w, g, state, out=w)[0] is w
    np.testing.assert_array_equal(to_numpy(w[1]), to_numpy(new[1]))


def test_out_is_w_dict_of_native(mutable_backend):
    w = {"a": native(mutable_backend, W), "b": [native(mutable_backend, W2)]}
    g = {"a": native(mutable_backend, G), "b": [native(mutable_backend, G2)]}
    leaves = (w["a"], w["b"][0])
    returned = lm.lars_update(w, g, {"a": 0.1, "b": [0.2]}, decay_lambda=0.1, out=w)
    assert returned is w
    assert w["a"] is leaves[0] and w["b"][0] is leaves[1]
    assert_layer_close(w["a"], W, G, 0.1, 0.1, "float32")
    assert_layer_close(w["b"][0], W2, G2, 0.2, 0.1, "float32")


def test_out_is_w_container_of_arrays(backend):
    """Every backend: a Container of lm.Arrays updated with out=w."""
    w = lm.Container(a=lm.Array(native(backend, W)), b={"c": lm.Array(native(backend, W2))})
    g = lm.Container(a=lm.Array(native(backend, G)), b={"c": lm.Array(native(backend, G2))})
    arrays = (w.a, w.b.c)
    old_data = (w.a.data, w.b.c.data)
    returned = w.lars_update(g, 0.1, out=w)
    assert returned is w
    assert w.a is arrays[0] and w.b.c is arrays[1]  # the Array objects stay, their data changes
    assert_layer_close(w.a, W, G, 0.1, 0.0, "float32")
    assert_layer_close(w.b.c, W2, G2, 0.1, 0.0, "float32")
    if backend in ("numpy", "torch"):
        assert w.a.data is old_data[0] and w.b.c.data is old_data[1]
    # The gradients are untouched.
    np.testing.assert_array_equal(to_numpy(g.a), G)
    np.testing.assert_array_equal(to_numpy(g.b.c), G2)


def test_separate_container_out(backend):
    w = lm.Container(a=lm.Array(native(backend, W)), b=lm.Array(native(backend, W2)))
    g = lm.Container(a=lm.Array(native(backend, G)), b=lm.Array(native(backend, G2)))
    out = lm.Container(a=lm.zeros_like(w.a), b=lm.zeros_like(w.b))
    returned = lm.lars_update(w, g, 0.1, decay_lambda=0.2, out=out)
    assert returned is out
    assert_layer_close(out.a, W, G, 0.1, 0.2, "float32")
    assert_layer_close(out.b, W2, G2, 0.1, 0.2, "float32")
    np.testing.assert_array_equal(to_numpy(w.a), W)
    np.testing.assert_array_equal(to_numpy(w.b), W2)


@pytest.mark.parametrize("via", ["lars_update", "method", "optimizer"])
def test_container_out_of_native_arrays_takes_the_results(backend, via):
    """A Container (and a list in it) of native arrays as ``out``: NumPy arrays and
    torch tensors are written in place; JAX arrays and TensorFlow tensors, which
    cannot be, are replaced in their entries (as the README promises). Before, the
    immutable ones were refused with a message asking for a Container."""
    w = lm.Container(a=native(backend, W), b={"c": [native(backend, W2)]})
    g = lm.Container(a=native(backend, G), b={"c": [native(backend, G2)]})
    out = lm.Container(a=native(backend, np.zeros_like(W)), b={"c": [native(backend, np.zeros_like(W2))]})
    leaves = (out.a, out.b.c[0])
    if via == "optimizer":
        opt = lm.optim.lars(0.1, momentum=0.0, trust_coefficient=1.0, preset="optax")
        returned, _ = opt.step(w, g, opt.init(w), out=out)
        want = [
            wl - 0.1 * np.linalg.norm(wl) / np.linalg.norm(gl) * gl for wl, gl in ((W, G), (W2, G2))
        ]  # r = ||w|| / ||g||, c = 1
        np.testing.assert_allclose(to_numpy(out.a), want[0], rtol=1e-6)
        np.testing.assert_allclose(to_numpy(out.b.c[0]), want[1], rtol=1e-6)
    else:
        call = w.lars_update if via == "method" else lambda *a, **k: lm.lars_update(w, *a, **k)
        returned = call(g, 0.1, decay_lambda=0.2, out=out)
        assert_layer_close(out.a, W, G, 0.1, 0.2, "float32")
        assert_layer_close(out.b.c[0], W2, G2, 0.1, 0.2, "float32")
    assert returned is out
    in_place = backend in ("numpy", "torch")
    assert (out.a is leaves[0] and out.b.c[0] is leaves[1]) == in_place
    for old in leaves if not in_place else ():
        np.testing.assert_array_equal(to_numpy(old), 0.0)  # the arrays replaced are untouched
    np.testing.assert_array_equal(to_numpy(w.a), W)
    np.testing.assert_array_equal(to_numpy(g.b.c[0]), G2)


def test_single_lm_array_out(backend):
    w, g = lm.Array(native(backend, W)), lm.Array(native(backend, G))
    out = lm.zeros_like(w)
    assert lm.lars_update(w, g, 0.1, out=out) is out
    assert out.backend == backend and out.dtype == "float32"
    assert_layer_close(out, W, G, 0.1, 0.0, "float32")
    # out=w with an lm.Array.
    assert lm.lars_update(w, g, 0.1, out=w) is w
    assert_layer_close(w, W, G, 0.1, 0.0, "float32")


def test_out_aliasing_the_gradient(backend):
    """out=dcdw: the gradient is read before it is overwritten."""
    if backend in ("numpy", "torch"):
        w, g = native(backend, W), native(backend, G)
        assert lm.lars_update(w, g, 0.1, out=g) is g
        assert_layer_close(g, W, G, 0.1, 0.0, "float32")
        np.testing.assert_array_equal(to_numpy(w), W)
    w, g = lm.Array(native(backend, W)), lm.Array(native(backend, G))
    assert lm.lars_update(w, g, 0.1, out=g) is g
    assert_layer_close(g, W, G, 0.1, 0.0, "float32")
    np.testing.assert_array_equal(to_numpy(w), W)


def test_gradient_is_the_weights_with_out_w(backend):
    """dcdw is w itself and out=w: w - ||w|| lr / (||w|| + eps) w."""
    w = lm.Array(native(backend, W))
    assert lm.lars_update(w, w, 0.1, out=w) is w
    assert_layer_close(w, W, W, 0.1, 0.0, "float32")


def test_out_w_with_gradients_aliasing_other_weights(backend):
    """Layer x's gradient is layer y's weights and vice versa, with out=w:
    every layer must see the other's weights as they were before the call."""
    a, b = lm.Array(native(backend, W2)), lm.Array(native(backend, G2 * 10))
    if backend == "tensorflow":
        import tensorflow as tf

        a, b = lm.Array(tf.Variable(a.data)), lm.Array(tf.Variable(b.data))
    w = lm.Container(x=a, y=b)
    lm.lars_update(w, lm.Container(x=b, y=a), 0.1, out=w)
    assert_layer_close(w.x, W2, G2 * 10, 0.1, 0.0, "float32")
    assert_layer_close(w.y, G2 * 10, W2, 0.1, 0.0, "float32")


def test_torch_parameter_updated_in_place():
    """The optimizer use: a leaf requiring grad, updated in place with its .grad."""
    require_backend("torch")
    import torch

    p = torch.nn.Parameter(torch.tensor(W))
    (p * torch.tensor(G)).sum().backward()
    ptr, version = p.data_ptr(), p._version
    returned = lm.lars_update(p, p.grad, 0.1, out=p)
    assert returned is p
    assert p.data_ptr() == ptr and p._version > version
    assert p.requires_grad and p.grad_fn is None
    assert_layer_close(p, W, G, 0.1, 0.0, "float32")
    model = torch.nn.Linear(3, 2)
    params = dict(model.named_parameters())
    before = {k: to_numpy(v) for k, v in params.items()}
    model(torch.ones(4, 3)).sum().backward()
    grads = {k: to_numpy(v.grad) for k, v in params.items()}
    lm.lars_update(params, {k: v.grad for k, v in params.items()}, 0.01, decay_lambda=1e-3, out=params)
    for k in params:
        assert_layer_close(params[k], before[k], grads[k], 0.01, 1e-3, "float32")


# --- TensorFlow: variables are assigned -------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_tf_variable_out_is_w(dtype):
    require_backend("tensorflow")
    import tensorflow as tf

    w = tf.Variable(native("tensorflow", W, dtype))
    g = native("tensorflow", G, dtype)
    w_np, g_np = to_numpy(w), to_numpy(g)
    returned = lm.lars_update(w, g, 0.1, out=w)
    assert returned is w
    assert isinstance(w, tf.Variable) and dtype_name(w) == dtype
    assert_layer_close(w, w_np, g_np, 0.1, 0.0, dtype)


def test_tf_variables_tree_out_is_w():
    require_backend("tensorflow")
    import tensorflow as tf

    w = {"a": tf.Variable(W), "b": [tf.Variable(W2), tf.Variable(W2.astype(np.float16))]}
    g = {"a": tf.constant(G), "b": [tf.constant(G2), tf.constant(G2.astype(np.float16))]}
    variables = [w["a"], *w["b"]]
    returned = lm.lars_update(w, g, 0.1, decay_lambda={"a": 0.0, "b": [0.5, 0.5]}, out=w)
    assert returned is w
    assert all(x is y for x, y in zip([w["a"], *w["b"]], variables))
    assert_layer_close(w["a"], W, G, 0.1, 0.0, "float32")
    assert_layer_close(w["b"][0], W2, G2, 0.1, 0.5, "float32")
    assert_layer_close(w["b"][1], W2.astype(np.float16), G2.astype(np.float16), 0.1, 0.5, "float16")


def test_tf_separate_variable_out_and_keras_weights():
    require_backend("tensorflow")
    import tensorflow as tf

    w, g = tf.constant(W), tf.constant(G)
    out = tf.Variable(tf.zeros_like(w))
    assert lm.lars_update(w, g, 0.1, out=out) is out
    assert_layer_close(out, W, G, 0.1, 0.0, "float32")
    v = tf.Variable(W)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(v * G)
    grad = tape.gradient(loss, v)
    lm.lars_update([v], [grad], 0.1, out=[v])
    assert_layer_close(v, W, G, 0.1, 0.0, "float32")


def test_tf_tensor_out_is_rejected():
    require_backend("tensorflow")
    import tensorflow as tf

    w, g = tf.constant(W), tf.constant(G)
    out = tf.zeros_like(w)
    with pytest.raises(lm.LarsMultiError, match=r"^out: .*written in place") as info:
        lm.lars_update(w, g, 0.1, out=out)
    assert isinstance(info.value, TypeError)


# --- JAX: immutable, so lm.Array / Container outs are given new data ------------------------


def test_jax_native_out_is_type_error():
    require_backend("jax")
    import jax.numpy as jnp

    w, g = jnp.asarray(W), jnp.asarray(G)
    for out in (w, jnp.zeros_like(w)):
        with pytest.raises(TypeError, match=r"^out: .*written in place") as info:
            lm.lars_update(w, g, 0.1, out=out)
        assert isinstance(info.value, lm.LarsMultiError)
    with pytest.raises(TypeError, match=r"out\['a'\]"):
        lm.lars_update({"a": w}, {"a": g}, 0.1, out={"a": w})


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_jax_container_out_is_w_donation():
    require_backend("jax")
    import jax.numpy as jnp

    w = lm.Container(a=lm.Array(jnp.asarray(W)), b=lm.Array(jnp.asarray(W2)))
    g = lm.Container(a=lm.Array(jnp.asarray(G)), b=lm.Array(jnp.asarray(G2)))
    for step in range(3):  # repeated steps: each reuses the previous result's buffers
        expected_a, expected_b = to_numpy(w.a), to_numpy(w.b)
        returned = lm.lars_update(w, g, 0.1, out=w)
        assert returned is w
        assert isinstance(w.a.data, type(jnp.asarray(W)))
        assert_layer_close(w.a, expected_a, G, 0.1, 0.0, "float32")
        assert_layer_close(w.b, expected_b, G2, 0.1, 0.0, "float32")
        assert not np.array_equal(to_numpy(w.a), expected_a), step
    np.testing.assert_array_equal(to_numpy(g.a), G)


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
@pytest.mark.parametrize("name", ["jax", "tensorflow"])
def test_immutable_container_out_w_with_shared_buffers(name):
    """Two lm.Arrays holding the same immutable array (tied weights) and out=w:
    each Array gets its own new data; nothing is donated twice."""
    require_backend(name)
    x = native(name, W2)
    w = lm.Container(a=lm.Array(x), b=lm.Array(x))
    g = lm.Container(a=lm.Array(native(name, G2)), b=lm.Array(native(name, G2 * 2)))
    assert lm.lars_update(w, g, 0.1, out=w) is w
    assert_layer_close(w.a, W2, G2, 0.1, 0.0, "float32")
    assert_layer_close(w.b, W2, G2 * 2, 0.1, 0.0, "float32")


# --- a failing call writes nothing --------------------------------------------------------


def _outs(backend):
    """A two-leaf out tree of backend's writable kind, filled with sevens."""
    if backend in ("numpy", "torch"):
        make = lambda a: native(backend, a)  # noqa: E731
    elif backend == "tensorflow":
        import tensorflow as tf

        make = lambda a: tf.Variable(a)  # noqa: E731
    else:
        make = lambda a: lm.Array(native(backend, a))  # noqa: E731
    return {"a": make(np.full_like(W, 7)), "b": make(np.full_like(W2, 7))}


@pytest.mark.parametrize(
    "breakage",
    ["out-shape", "out-dtype", "lr-nan", "lr-tree", "decay", "dcdw-shape", "stop"],
)
def test_failing_call_leaves_out_untouched(backend, breakage):
    w = {"a": native(backend, W), "b": native(backend, W2)}
    g = {"a": native(backend, G), "b": native(backend, G2)}
    out = _outs(backend)
    lr, decay, stop = 0.1, 0.0, True
    if breakage == "out-shape":
        out["b"] = _outs(backend)["a"]
    elif breakage == "out-dtype":
        bad = native(backend, np.full_like(W2, 7), "float16")
        out["b"] = lm.Array(bad) if backend == "jax" else bad
        if backend == "tensorflow":
            import tensorflow as tf

            out["b"] = tf.Variable(bad)
    elif breakage == "lr-nan":
        lr = {"a": 0.1, "b": float("nan")}
    elif breakage == "lr-tree":
        lr = {"a": 0.1}
    elif breakage == "decay":
        decay = {"a": 0.0, "b": -1.0}
    elif breakage == "dcdw-shape":
        g["b"] = native(backend, np.ones(4, np.float32))
    elif breakage == "stop":
        stop = {"a": True, "b": "no"}
    leaves = dict(out)
    datas = {k: (v.data if isinstance(v, lm.Array) else v) for k, v in out.items()}
    with pytest.raises(lm.LarsMultiError):
        lm.lars_update(w, g, lr, decay_lambda=decay, stop_gradients=stop, out=out)
    for key in ("a", "b"):
        assert out[key] is leaves[key]
        if isinstance(out[key], lm.Array):
            assert out[key].data is datas[key]
        values = to_numpy(out[key])
        np.testing.assert_array_equal(values, np.full(values.shape, 7, dtype=values.dtype))
    np.testing.assert_array_equal(to_numpy(w["a"]), W)
    np.testing.assert_array_equal(to_numpy(w["b"]), W2)


def test_failing_out_w_leaves_weights_untouched(backend):
    """out=w where a later leaf's gradient is wrong: no leaf of w is written."""
    w = _outs(backend)  # writable, sevens
    g = {"a": native(backend, G), "b": native(backend, np.ones(5, np.float32))}
    with pytest.raises(ValueError, match=r"dcdw\['b'\]"):
        lm.lars_update(w, g, 0.1, out=w)
    np.testing.assert_array_equal(to_numpy(w["a"]), np.full_like(W, 7))
    np.testing.assert_array_equal(to_numpy(w["b"]), np.full_like(W2, 7))


def test_half_out_dtype_kept(backend):
    w16 = native(backend, W, "float16")
    g16 = native(backend, G, "float16")
    out = lm.Container(a=lm.zeros_like(lm.Array(w16)))
    lm.lars_update(lm.Container(a=lm.Array(w16)), lm.Array(g16), 0.1, out=out)
    assert out.a.dtype == "float16"
    assert_layer_close(out.a, W.astype(np.float16), G.astype(np.float16), 0.1, 0.0, "float16")
    assert np_dtype("float16") == np.float16


# --- One array and a tree: the same step ------------------------------------------


@pytest.mark.parametrize("decay", [0.0, 0.5])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_array_steps_as_a_layer_of_a_tree(mutable_backend, decay, dtype):
    """The one-array path (its own kernels, its scale given to them) and a tree of many
    layers (one vector of ratios, list kernels) give a layer the same bits."""
    rng = np.random.default_rng(11)
    w, g = W.astype(dtype), G.astype(dtype)
    others = {f"x{i}": rng.standard_normal((3, 4)).astype(dtype) for i in range(3)}
    alone = lm.lars_update(native(mutable_backend, w), native(mutable_backend, g), 0.1, decay_lambda=decay)
    tree = {"w": native(mutable_backend, w), **{k: native(mutable_backend, v) for k, v in others.items()}}
    grads = {"w": native(mutable_backend, g), **{k: native(mutable_backend, -v) for k, v in others.items()}}
    in_tree = lm.lars_update(tree, grads, 0.1, decay_lambda=decay)["w"]
    np.testing.assert_array_equal(to_numpy(alone), to_numpy(in_tree))
    written = native(mutable_backend, w)
    lm.lars_update(written, native(mutable_backend, g), 0.1, decay_lambda=decay, out=written)
    np.testing.assert_array_equal(to_numpy(written), to_numpy(alone))


# --- Layers without a gradient: their out receives a copy of their weights ---------------------


def _step(entry, w, g, out):
    """``lars_update`` or ``lm.optim``'s step of ``w`` into ``out``; the new ``w``."""
    if entry == "lars_update":
        return lm.lars_update(w, g, 0.1, out=out)
    opt = lm.optim.lars(0.1, momentum=0.9)
    return opt.step(w, g, opt.init(w), out=out)[0]


def _expected(entry, backend):
    """The step of ``W`` by ``G`` alone: what layer "b" must receive."""
    return to_numpy(_step(entry, {"b": native(backend, W)}, {"b": native(backend, G)}, None)["b"])


def _writable(backend, values):
    """An output every backend writes: its native array where it can be written, else a handle."""
    if backend in ("numpy", "torch"):
        return native(backend, values)
    return lm.Array(native(backend, values))


ENTRIES = ["lars_update", "optim"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_out_of_a_layer_without_gradient_receives_its_weights(backend, entry):
    out = {"a": _writable(backend, np.zeros_like(W)), "b": _writable(backend, np.zeros_like(W))}
    w = {"a": native(backend, W * 2), "b": native(backend, W)}
    assert _step(entry, w, {"a": None, "b": native(backend, G)}, out) is out
    np.testing.assert_array_equal(to_numpy(out["a"]), W * 2)
    np.testing.assert_array_equal(to_numpy(out["b"]), _expected(entry, backend))
    out["a"] = _writable(backend, np.zeros_like(W))
    assert _step(entry, w, {"a": None, "b": None}, out) is out  # no gradient anywhere: copies alone
    np.testing.assert_array_equal(to_numpy(out["a"]), W * 2)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("alias", ["gradient", "weights", "swapped"])
def test_kept_layers_copied_once_every_layer_is_computed(mutable_backend, entry, alias):
    """A kept layer's output in the memory of another layer's gradient or weights
    (or of another kept layer's weights) is written after they are read."""
    backend = mutable_backend
    wa, wb, gb = native(backend, W * 2), native(backend, W), native(backend, G)
    w = {"a": wa, "b": wb}
    if alias == "swapped":  # no gradient at all: a's copy goes into b, b's into a
        _step(entry, w, {"a": None, "b": None}, {"a": wb, "b": wa})
        np.testing.assert_array_equal(to_numpy(wb), W * 2)
        np.testing.assert_array_equal(to_numpy(wa), W)
        return
    out_b = native(backend, np.zeros_like(W))
    _step(entry, w, {"a": None, "b": gb}, {"a": gb if alias == "gradient" else wb, "b": out_b})
    np.testing.assert_array_equal(to_numpy(out_b), _expected(entry, backend))
    np.testing.assert_array_equal(to_numpy(gb if alias == "gradient" else wb), W * 2)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("tied", [False, True], ids=["one-out", "tied-weights"])
def test_one_output_for_a_stepped_and_a_kept_layer_is_refused(mutable_backend, entry, tied):
    backend = mutable_backend
    x = native(backend, W)
    if tied:  # {"p": x, "q": x} with out=w: x would hold both p's new weights and q's old ones
        w = out = {"p": x, "q": x}
    else:
        w, out = {"p": x, "q": native(backend, W * 2)}, {"p": native(backend, W), "q": None}
        out["q"] = out["p"]
    # (lm.optim names the kept layer's parameter: what it keeps is checked first)
    refused = r"out\['.'\] and (out\['.'\] are the same array|params\['.'\] share memory)"
    with pytest.raises(lm.LarsMultiValueError, match=refused):
        _step(entry, w, {"p": native(backend, G), "q": None}, out)
    np.testing.assert_array_equal(to_numpy(out["p"]), W)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("failure", ["later-out-shape", "axis-name"])
def test_failing_call_writes_no_kept_layer(backend, entry, failure):
    """Kept layers' outputs are checked with the others and written with them."""
    out = {"a": _writable(backend, np.zeros_like(W)), "b": _writable(backend, np.zeros_like(W))}
    if failure == "later-out-shape":
        out["c"] = _writable(backend, np.zeros((3, 3), np.float32))
    w = {"a": native(backend, W), "b": native(backend, W), "c": native(backend, W)}
    g = {"a": None, "b": native(backend, G), "c": None}
    with pytest.raises(lm.LarsMultiError):
        if failure == "axis-name":
            out["c"] = _writable(backend, np.zeros_like(W))
            if entry == "optim":
                opt = lm.optim.lars(0.1, axis_name=["x", "x", "x"])
                opt.step(w, g, opt.init(w), out=out)
            lm.lars_update(w, g, 0.1, out=out, axis_name=["x", "x", "x"])
        else:
            _step(entry, w, g, out)
    for key in "ab":
        assert not to_numpy(out[key]).any(), key


def test_optimizer_step_without_gradients_advances_the_count(backend):
    opt = lm.optim.lars(lm.schedules.warmup_polynomial(1.0, 0, 4), momentum=0.9)
    params = {"a": native(backend, W)}
    state = opt.init(params)
    same, state = opt.step(params, {"a": None}, state)
    assert same is params and int(to_numpy(state.count)) == 1


def test_wrong_out_dtype_gets_no_gradient_advice():
    require_backend("numpy")
    with pytest.raises(lm.LarsMultiTypeError, match=r"^out\['c'\]: expected dtype float32 .* got float64$"):
        lm.lars_update({"c": W}, {"c": G}, 0.1, out={"c": np.zeros((2, 3), np.float64)})


@pytest.mark.parametrize("stepped", [True, False], ids=["one-stepped", "none-stepped"])
def test_kept_output_in_a_momentum_buffer_of_the_state_is_refused(mutable_backend, stepped):
    """A layer without a gradient keeps its momentum buffer: a copy written into it (its
    out given as that buffer) lost the momentum with no error."""
    backend = mutable_backend
    opt = lm.optim.lars(0.1, momentum=0.9)
    params = [native(backend, W), native(backend, W * 2)]
    _, state = opt.step(params, [native(backend, G)] * 2, opt.init(params))
    before = [to_numpy(b).copy() for b in state.momentum]
    grads = [native(backend, G) if stepped else None, None]
    with pytest.raises(lm.LarsMultiValueError, match=r"^out\[1\] and state\.momentum\[1\] share memory"):
        opt.step(params, grads, state, out=[native(backend, np.zeros_like(W)), state.momentum[1]])
    for b, kept in zip(state.momentum, before):
        np.testing.assert_array_equal(to_numpy(b), kept)


# --- handles under tracing: a handle from outside never takes a traced value -------------


def _traced(backend, function):
    """``function`` as the framework traces it (``jax.jit``, ``tf.function``)."""
    if backend == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function, autograph=False)


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
@pytest.mark.parametrize("out_kind", ["array", "array-of-w", "container", "optimizer"])
def test_handle_from_outside_a_trace_is_refused_as_out(backend, out_kind):
    """An lm.Array or Container made outside ``jax.jit`` / ``tf.function`` and given
    as ``out`` inside it is refused, left as it was: before, it took the trace's value
    (a tracer or symbolic tensor), and its weights were lost. One made inside works."""
    require_backend(backend)
    outside = lm.Array(native(backend, W))
    holder = outside if out_kind.startswith("array") else lm.Container(a=native(backend, W))
    before = to_numpy(outside if holder is outside else holder["a"])

    def step(w, g):
        if out_kind == "array":
            lm.lars_update(w, g, 0.1, out=outside)
        elif out_kind == "array-of-w":  # concrete weights, a traced gradient
            outside.lars_update(g, 0.1, out=outside)
        elif out_kind == "container":
            lm.lars_update(lm.Container(a=w), lm.Container(a=g), 0.1, out=holder)
        else:
            opt = lm.optim.lars(0.1, momentum=0.0)
            params = lm.Container(a=w)
            opt.step(params, lm.Container(a=g), opt.init(params), out=holder)
        return w

    with pytest.raises(lm.LarsMultiError, match=r"^out.*made inside this traced function"):
        _traced(backend, step)(native(backend, W), native(backend, G))
    kept = outside if holder is outside else holder["a"]
    np.testing.assert_array_equal(to_numpy(kept), before)  # (a traced value has none to read)

    def inside(w, g):
        handle, container = lm.Array(w), lm.Container(a=w)
        lm.lars_update(w, g, 0.1, out=handle)
        lm.lars_update(lm.Container(a=w), lm.Container(a=g), 0.1, out=container)
        return handle.data, container["a"]

    for got in _traced(backend, inside)(native(backend, W), native(backend, G)):
        assert_layer_close(got, W, G, 0.1, 0.0, "float32")


# --- a layer apart from an alias is written as it goes -----------------------------------


def _layers(backend, seed, shapes):
    rng = np.random.default_rng(seed)
    return [native(backend, rng.standard_normal(shape).astype(np.float32)) for shape in shapes]


def _copies(backend, xs):
    return [native(backend, to_numpy(x)) for x in xs]


@pytest.mark.parametrize("entry", ["lars_update", "optim"])
def test_a_layer_apart_from_an_alias_steps_as_it_would_alone(mutable_backend, entry):
    """Layer 0's gradient is layer 1's weights, out=params: layer 1 is computed aside and
    written last. Layers 0 and 2 share memory with nothing else: written as they go, bit for
    bit what they get in a tree without the alias (0.3.23 computed every layer aside, with
    the functional arithmetic, one rounding away: in lm.optim, u = g + lambda w formed
    first; in lars_update on NumPy, a large vector's product rounded before the sum)."""
    backend = mutable_backend
    shapes = [(6, 5), (6, 5), (40_000,) if entry == "lars_update" else (64, 33)]
    params = _layers(backend, 0, shapes)
    free = _copies(backend, params)
    grads = [None, *_layers(backend, 1, shapes[1:])]
    free_grads = [_copies(backend, [params[1]])[0], *_copies(backend, grads[1:])]
    grads[0] = params[1]  # (read as it was before the call)
    if entry == "lars_update":
        lm.lars_update(params, grads, 0.1, decay_lambda=0.01, out=params)
        lm.lars_update(free, free_grads, 0.1, decay_lambda=0.01, out=free)
    else:
        opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=0.01)
        state, free_state = opt.init(params), opt.init(free)
        for _ in range(2):
            free_grads[0] = _copies(backend, [params[1]])[0]  # (layer 1 as the aliased tree has it)
            _, state = opt.step(params, grads, state, out=params)
            _, free_state = opt.step(free, free_grads, free_state, out=free)
    for i in (0, 2):
        np.testing.assert_array_equal(to_numpy(params[i]), to_numpy(free[i]))
    np.testing.assert_allclose(to_numpy(params[1]), to_numpy(free[1]), rtol=1e-6, atol=1e-7)


def test_torch_optimizer_layer_apart_from_an_alias_steps_as_it_would_alone():
    """lm.torch.LARS, parameter 0's gradient a view of parameter 1: only parameter 1 waits,
    and parameters 0 and 2 get, bit for bit, their steps without the alias."""
    require_backend("torch")
    import torch

    shapes = [(6, 5), (6, 5), (64, 33)]
    runs = [[torch.nn.Parameter(t) for t in _layers("torch", 0, shapes)] for _ in range(2)]
    grads = _layers("torch", 1, shapes)
    opts = [lm.torch.LARS(params, lr=0.1, momentum=0.9, weight_decay=0.01) for params in runs]
    for _ in range(2):
        for params in runs:
            for p, g in zip(params, grads):
                p.grad = g.clone()
        runs[0][0].grad = runs[0][1].detach()
        runs[1][0].grad = runs[0][1].detach().clone()  # (its values, in other memory)
        for opt in opts:
            opt.step()
    aliased, free = ([to_numpy(p.detach()) for p in params] for params in runs)
    for i in (0, 2):
        np.testing.assert_array_equal(aliased[i], free[i])
    np.testing.assert_allclose(aliased[1], free[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("entry", ["lars_update", "optim", "torch.LARS"])
def test_a_conflict_among_late_layers_writes_no_other_layer(mutable_backend, entry):
    """Two outputs overlap (rows 0-2 and 1-3 of one array) beside a layer that shares
    memory with nothing: refused, and that layer, written as it goes where nothing is
    refused, is not written either (the conflict is found before any layer is)."""
    backend = mutable_backend
    if entry == "torch.LARS" and backend != "torch":
        pytest.skip("torch's optimizer")
    whole, apart = _layers(backend, 2, [(4, 3), (5, 7)])
    before = to_numpy(whole), to_numpy(apart)
    g_rows, g_apart = _layers(backend, 3, [(3, 3), (5, 7)])
    tree = [whole[:3], apart, whole[1:]]
    grads = [g_rows, g_apart, g_rows]
    with pytest.raises(lm.LarsMultiValueError, match=r"overlap in memory"):
        if entry == "lars_update":
            lm.lars_update(tree, grads, [0.1, 0.2, 0.3], out=tree)
        elif entry == "optim":
            opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=0.01)
            opt.step(tree, grads, opt.init(tree), out=tree)
        else:
            params = [t.requires_grad_() for t in tree]
            for p, g in zip(params, grads):
                p.grad = g
            lm.torch.LARS(params, lr=0.1).step()
    np.testing.assert_array_equal(to_numpy(whole), before[0])
    np.testing.assert_array_equal(to_numpy(apart), before[1])


@pytest.mark.parametrize("writeable", [False, True], ids=["read-only", "writable"])
def test_one_handle_given_two_results_writes_nothing(writeable):
    """One ``lm.Array`` at two leaves whose gradients give it two results, beside a plain
    layer, with momentum: refused, and neither that layer nor any momentum buffer written
    (0.3.23 wrote them, then refused the handle, where its array was read-only)."""
    rng = np.random.default_rng(4)
    tied = rng.standard_normal((3, 4)).astype(np.float32)
    tied.flags.writeable = writeable
    handle = lm.Array(tied)
    apart = rng.standard_normal((2, 2)).astype(np.float32)
    params = {"a": handle, "b": handle, "c": apart}
    grads = {
        k: rng.standard_normal(s).astype(np.float32) for k, s in (("a", (3, 4)), ("b", (3, 4)), ("c", (2, 2)))
    }
    opt = lm.optim.lars(0.5, momentum=0.9, trust_coefficient=0.02)
    state = opt.init(params)
    for k, buffer in state.momentum.items():
        buffer[...] = {"a": 1.0, "b": 2.0, "c": 3.0}[k]
    before = {k: v.copy() for k, v in state.momentum.items()}, apart.copy(), tied.copy()
    with pytest.raises(lm.LarsMultiValueError, match=r"^out\['a'\] and out\['b'\] are the same array"):
        opt.step(params, grads, state, out=params)
    for k, buffer in state.momentum.items():
        np.testing.assert_array_equal(buffer, before[0][k])
    np.testing.assert_array_equal(apart, before[1])
    np.testing.assert_array_equal(tied, before[2])
    assert handle.data is tied
