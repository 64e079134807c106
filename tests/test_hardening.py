"""Regression tests for inputs a hostile but realistic user hands lars_multi:
trees whose keys come in another order, memory that is unaligned, swapped or
shared, per-layer hyper-parameters with aliased outputs, outputs that cannot be
written, hyper-parameters out of range, and traced hyper-parameters."""

from __future__ import annotations

import collections
import re
from functools import partial

import numpy as np
import optree
import pytest
from conftest import assert_layer_close, native, reference_layer, require_backend, run_python, to_numpy

import lars_multi as lm

RNG = np.random.default_rng(2026)
W = RNG.normal(size=(4, 3)).astype(np.float32)
G = (RNG.normal(size=(4, 3)) * 0.1).astype(np.float32)
LARGE = 40_000  # above the NumPy backend's block size, where BLAS takes over


def _copies(tree):
    return {k: np.array(to_numpy(v)) for k, v in tree.items()}


# --- trees pair by key ------------------------------------------------------------------------


def _state_dict(backend, layers=12):
    rng = np.random.default_rng(layers)
    keys = [f"layer{i}.weight" for i in range(layers)]
    w = collections.OrderedDict(
        (k, native(backend, rng.normal(size=(i + 2,)).astype(np.float32))) for i, k in enumerate(keys)
    )
    g = {
        k: native(backend, rng.normal(size=(i + 2,)).astype(np.float32))
        for i, k in reversed(list(enumerate(keys)))
    }
    return w, g


def test_mappings_pair_by_key_not_position(backend):
    w, g = _state_dict(backend)
    w0, g0 = _copies(w), _copies(g)
    new = lm.lars_update(w, g, 0.1, decay_lambda=0.2)
    assert type(new) is collections.OrderedDict and list(new) == list(w)
    for key in w:
        assert_layer_close(new[key], w0[key], g0[key], 0.1, 0.2, "float32")


def test_mappings_pair_by_key_with_out(backend):
    if backend == "jax":
        w = collections.OrderedDict((k, lm.Array(v)) for k, v in _state_dict(backend)[0].items())
        g = _state_dict(backend)[1]
    elif backend == "tensorflow":
        import tensorflow as tf

        w0, g = _state_dict(backend)
        w = collections.OrderedDict((k, tf.Variable(v)) for k, v in w0.items())
    else:
        w, g = _state_dict(backend)
    before, grads = _copies(w), _copies(g)
    assert lm.lars_update(w, g, 0.1, out=w) is w
    for key in w:
        assert_layer_close(w[key], before[key], grads[key], 0.1, 0.0, "float32")


def test_mixed_mapping_kinds_pair_by_key(backend):
    a, b = native(backend, W), native(backend, W * 2)
    ga, gb = native(backend, G), native(backend, -G)
    w = {"b": b, "a": a}
    grads = collections.defaultdict(list, {"a": ga, "b": gb})
    lr = lm.Container(b=0.2, a=0.1)
    new = lm.lars_update(w, grads, lr)
    assert_layer_close(new["a"], W, G, 0.1, 0.0, "float32")
    assert_layer_close(new["b"], W * 2, -G, 0.2, 0.0, "float32")


def test_key_mismatch_names_the_key(backend):
    w = collections.OrderedDict(a=native(backend, W), b=native(backend, W[:2]))
    with pytest.raises(lm.LarsMultiValueError, match=r"missing \['b'\]; unexpected \['c'\]"):
        lm.lars_update(w, {"a": native(backend, G), "c": native(backend, G)}, 0.1)
    # Shapes that differ are blamed on the right key: b's gradient has a's shape.
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw\['b'\]: expected shape \(2, 3\)"):
        lm.lars_update(w, {"b": native(backend, G), "a": native(backend, G)}, 0.1)


@pytest.mark.parametrize(
    "w_nothing, value",
    [(None, "array"), ({}, "array"), ({"c": None}, "array"), (None, "number")],
    ids=["none", "empty-dict", "dict-of-none", "rate-for-none"],
)
@pytest.mark.parametrize("entry", ["lars_update", "out", "optim"])
def test_values_where_the_weights_hold_nothing_are_refused(backend, w_nothing, value, entry):
    """optree and JAX read None (and an empty dict) as a tree with no leaf, so a
    gradient, output or rate there meets no weight: refused, never dropped."""
    if entry != "lars_update" and value == "number":
        pytest.skip("a tree of rates is lars_update's alone")
    a = native(backend, W)
    w = {"a": a, "b": w_nothing}
    given = native(backend, G) if value == "array" else 0.5
    g = {"a": native(backend, G), "b": None if entry == "out" or value == "number" else given}
    kwargs = {}
    if entry == "out":
        kwargs["out"] = {"a": native(backend, W), "b": native(backend, W)}
    elif value == "number":
        kwargs["lr"] = {"a": 0.1, "b": given}
    arg = {"out": "out", "optim": "grads"}.get(entry, "lr" if value == "number" else "dcdw")
    weights = "params" if entry == "optim" else "w"
    message = rf"^{arg}: expected the structure of {weights}.*{arg}\['b'\]: expected no value where {weights}"
    with pytest.raises(lm.LarsMultiValueError, match=message):
        if entry == "optim":
            opt = lm.optim.lars(0.1, momentum=0.9)
            opt.step(w, g, opt.init(w))
        else:
            lm.lars_update(w, g, kwargs.pop("lr", 0.1), **kwargs)
    np.testing.assert_array_equal(to_numpy(a), W)
    assert (
        lm.lars_update({"a": a, "b": w_nothing}, {"a": native(backend, G), "b": w_nothing}, 0.1)["b"]
        == w_nothing
    )


def test_dicts_with_remembered_keys_keep_their_own_structure(backend):
    """Plain dicts of arrays are flattened once per sequence of keys; a later dict
    with those keys in another order, or with a subtree, None or a key of another
    type where an array was, gives its own structure and pairing."""
    import enum

    class Key(str, enum.Enum):
        A = "a"

    a, b = native(backend, W), native(backend, W * 2)
    ga, gb = native(backend, G), native(backend, -G)
    for w, g in [
        ({"b": b, "a": a}, {"a": ga, "b": gb}),  # remembered
        ({"b": b, "a": a}, {"a": ga, "b": gb}),  # from what was remembered
        ({"a": a, "b": b}, {"b": gb, "a": ga}),  # the same keys in another order
    ]:
        new = lm.lars_update(w, g, 0.1)
        assert list(new) == list(w)
        assert_layer_close(new["a"], W, G, 0.1, 0.0, "float32")
        assert_layer_close(new["b"], W * 2, -G, 0.1, 0.0, "float32")
    nested = lm.lars_update({"b": {"c": b}, "a": a}, {"a": ga, "b": {"c": gb}}, 0.1)
    assert list(nested) == ["b", "a"] and list(nested["b"]) == ["c"]
    assert_layer_close(nested["b"]["c"], W * 2, -G, 0.1, 0.0, "float32")
    assert lm.lars_update({"b": None, "a": a}, {"a": ga, "b": None}, 0.1)["b"] is None
    enum_keyed = lm.lars_update({Key.A: a}, {"a": ga}, 0.1)
    assert type(next(iter(enum_keyed))) is Key
    plain = lm.lars_update({"a": a}, {"a": ga}, 0.1)
    assert type(next(iter(plain))) is str


# --- NumPy memory: unaligned, swapped, shared ---------------------------------------------------


def _unaligned(values):
    buffer = bytearray(values.nbytes + 1)
    array = np.frombuffer(buffer, values.dtype, values.size, offset=1).reshape(values.shape)
    array[...] = values
    assert not array.flags.aligned
    return array


def test_numpy_unaligned_weights_in_place():
    require_backend("numpy")
    w0 = RNG.normal(size=LARGE).astype(np.float32)
    g = (RNG.normal(size=LARGE) * 0.1).astype(np.float32)
    w = _unaligned(w0)
    lm.lars_update(w, g, 0.1, out=w)
    assert_layer_close(w, w0, g, 0.1, 0.0, "float32")
    out = _unaligned(np.zeros_like(w0))
    lm.lars_update(w0, _unaligned(g), 0.1, out=out)
    assert_layer_close(out, w0, g, 0.1, 0.0, "float32")
    tree = [_unaligned(w0), _unaligned(w0 * 2)]
    lm.lars_update(tree, [g, g], 0.1, out=tree)
    assert_layer_close(tree[1], w0 * 2, g, 0.1, 0.0, "float32")


def test_numpy_memmap_with_odd_offset(tmp_path):
    require_backend("numpy")
    w0 = RNG.normal(size=LARGE).astype(np.float32)
    g = (RNG.normal(size=LARGE) * 0.1).astype(np.float32)
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc" + w0.tobytes())
    w = np.memmap(path, np.float32, "r+", offset=3, shape=(LARGE,))
    lm.lars_update(w, g, 0.1, out=w)
    w.flush()
    assert_layer_close(np.fromfile(path, np.uint8)[3:].view(np.float32), w0, g, 0.1, 0.0, "float32")


@pytest.mark.parametrize("size", [12, LARGE])
def test_numpy_big_endian_weights(size):
    require_backend("numpy")
    w0 = RNG.normal(size=size).astype(np.float32)
    g0 = (RNG.normal(size=size) * 0.1).astype(np.float32)
    w, g = w0.astype(">f4"), g0.astype(">f4")
    assert_layer_close(lm.lars_update(w, g, 0.1, decay_lambda=0.1), w0, g0, 0.1, 0.1, "float32")
    lm.lars_update(w, g, 0.1, out=w)
    assert_layer_close(w, w0, g0, 0.1, 0.0, "float32")
    with pytest.raises(
        lm.LarsMultiTypeError,
        match=r"expected dtype float32 \(big-endian\).*got float32; convert both to one byte order",
    ):
        lm.lars_update(w, g0, 0.1)


def test_numpy_float64_gradient_says_how_to_fix():
    require_backend("numpy")
    with pytest.raises(lm.LarsMultiTypeError, match=r"expected dtype float32 .* got float64; .*astype"):
        lm.lars_update(W, G.astype(np.float64), 0.1)


@pytest.mark.parametrize("size", [12, LARGE])
def test_numpy_out_sharing_memory_with_the_gradient(size):
    require_backend("numpy")
    w = RNG.normal(size=size).astype(np.float32)
    g = (RNG.normal(size=size) * 0.1).astype(np.float32)
    want = reference_layer(w, g, 0.1)
    g_copy = g.copy()
    lm.lars_update(w, g, 0.1, out=g.view())
    assert_layer_close(g, w, g_copy, 0.1, 0.0, "float32")
    np.testing.assert_allclose(g, want, rtol=2e-6, atol=1e-7)
    # The same through a tree, and with the gradient of another layer.
    g = g_copy.copy()
    tree = [w.copy(), w.copy() * 2]
    lm.lars_update(tree, [g, g_copy], 0.1, out=[g.view(), tree[1]])
    assert_layer_close(g, w, g_copy, 0.1, 0.0, "float32")


@pytest.mark.parametrize("size", [12, LARGE])
def test_numpy_out_partly_overlapping_the_weights(size):
    require_backend("numpy")
    buffer = RNG.normal(size=size + 1).astype(np.float32)
    w, out = buffer[:-1], buffer[1:]
    w0 = w.copy()
    g = (RNG.normal(size=size) * 0.1).astype(np.float32)
    lm.lars_update(w, g, 0.1, out=out)
    assert_layer_close(out, w0, g, 0.1, 0.0, "float32")


def test_torch_gradient_views_shared_through_numpy():
    """``out=p.grad.numpy()`` with ``dcdw=p.grad.numpy()``: two objects, one memory
    (CPU tensors, whatever the tests' torch device: only they share memory with NumPy)."""
    require_backend("torch")
    import torch

    p = torch.nn.Parameter(torch.tensor(W, device="cpu"))
    p.grad = torch.tensor(G, device="cpu")
    lm.lars_update(p.detach().numpy(), p.grad.numpy(), 0.1, out=p.grad.numpy())
    assert_layer_close(p.grad, W, G, 0.1, 0.0, "float32")
    g = torch.tensor(G)
    lm.lars_update(torch.tensor(W), g, 0.1, out=g.view_as(g))
    assert_layer_close(g, W, G, 0.1, 0.0, "float32")


def _foreign_view(route, array):
    """A native array over ``array``'s memory (one element on), reached through an
    object that is not a NumPy array: nothing but addresses shows the sharing."""
    rest = array[1:]
    if route == "numpy-memoryview":
        return np.frombuffer(memoryview(rest), dtype=rest.dtype)
    if route == "numpy-ctypes":
        import ctypes

        return np.ctypeslib.as_array((ctypes.c_float * rest.size).from_buffer(rest))
    if route == "numpy-dlpack":
        return np.from_dlpack(rest)
    import torch

    if route == "numpy-torch":
        return torch.from_numpy(rest).numpy()
    return torch.from_numpy(rest)  # "torch-from-numpy": a storage of its own, inside another's


@pytest.mark.parametrize(
    "route", ["numpy-memoryview", "numpy-ctypes", "numpy-dlpack", "numpy-torch", "torch-from-numpy"]
)
@pytest.mark.parametrize("entry", ["lars_update", "optim"])
def test_gradient_sharing_memory_through_another_object(route, entry):
    """Layer 1's gradient lies in layer 0's weights, through a memoryview, ctypes,
    DLPack or torch: written in place, the step still reads it as it was."""
    backend = route.split("-")[0]
    require_backend(backend)
    if "torch" in route:
        pytest.importorskip("torch")
    memory = RNG.normal(size=8).astype(np.float32)
    w0 = memory.copy()
    w1 = RNG.normal(size=7).astype(np.float32)
    g0 = (RNG.normal(size=8) * 0.1).astype(np.float32)
    g1_values = memory[1:].copy()
    as_native = (lambda a: __import__("torch").from_numpy(a)) if backend == "torch" else (lambda a: a)
    weights = [as_native(memory), as_native(w1.copy())]
    grads = [as_native(g0.copy()), _foreign_view(route, memory)]
    if entry == "lars_update":
        lm.lars_update(weights, grads, [0.1, 0.3], out=weights)
        assert_layer_close(to_numpy(weights[0]), w0, g0, 0.1, 0.0, "float32")
        assert_layer_close(to_numpy(weights[1]), w1, g1_values, 0.3, 0.0, "float32")
        return
    opt = lm.optim.lars(0.1, momentum=0.0, adapt_mask=True)
    want, _ = opt.step(
        [as_native(w0.copy()), as_native(w1.copy())], [as_native(g0), as_native(g1_values)], opt.init(weights)
    )
    opt.step(weights, grads, opt.init(weights), out=weights)
    for got, expected in zip(weights, want):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(expected))


def _zero_d_view(x):
    """A 0-d array in the memory of ``x``'s first element."""
    return x[0:1].reshape(())


def _copy(backend, x):
    return x.clone() if backend == "torch" else x.copy()


@pytest.mark.parametrize("arg", ["lr", "decay_lambda"])
@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_hyper_parameter_array_in_an_outputs_memory(backend_name, arg):
    """An array learning rate or decay that lies in an output's memory (a 0-d view of
    the first layer's weights) keeps its value for every layer: the later layers,
    in a batch of their own, are computed with it as it was."""
    require_backend(backend_name)
    rng = np.random.default_rng(11)
    values = {"a": np.abs(rng.normal(size=5)) + 1, "b": rng.normal(size=LARGE * 50), "c": rng.normal(size=5)}
    w = {k: native(backend_name, v.astype(np.float32)) for k, v in values.items()}
    g = {k: native(backend_name, rng.normal(size=v.shape).astype(np.float32)) for k, v in values.items()}
    view = _zero_d_view(w["a"])
    value = _copy(backend_name, view)
    args = (value, 0.0) if arg == "lr" else (0.1, value)
    want = lm.lars_update({k: _copy(backend_name, v) for k, v in w.items()}, g, args[0], decay_lambda=args[1])
    args = (view, 0.0) if arg == "lr" else (0.1, view)
    lm.lars_update(w, g, args[0], decay_lambda=args[1], out=w)
    for k in w:
        np.testing.assert_array_equal(to_numpy(w[k]), to_numpy(want[k]), err_msg=k)


@pytest.mark.parametrize("front_door", ["optim", "torch.LARS"])
def test_learning_rate_in_a_parameters_memory(front_door):
    """lm.optim (a schedule giving a 0-d view of a parameter) and lm.torch.LARS (a
    tensor lr that is such a view): every layer steps with the rate as it was."""
    backend_name = "torch" if front_door == "torch.LARS" else "numpy"
    require_backend(backend_name)
    rng = np.random.default_rng(12)
    values = {
        "a": np.abs(rng.normal(size=5)) + 1,
        "b": rng.normal(size=LARGE * 50),
        "c": rng.normal(size=(5, 2)),
    }
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in values.items()}
    w = {k: native(backend_name, v.astype(np.float32)) for k, v in values.items()}
    g = {k: native(backend_name, v) for k, v in grads.items()}
    rate = float(values["a"][0].astype(np.float32))
    functional = lm.optim.lars(rate, momentum=0.9, weight_decay=1e-3)
    fresh = {k: native(backend_name, v.astype(np.float32)) for k, v in values.items()}
    want, _ = functional.step(fresh, g, functional.init(fresh))
    view = _zero_d_view(w["a"])  # (a Parameter of w["a"] shares its memory)
    if front_door == "optim":
        opt = lm.optim.lars(lambda count: view, momentum=0.9, weight_decay=1e-3)
        opt.step(w, g, opt.init(w), out=w)
    else:
        import torch

        params = [torch.nn.Parameter(w[k]) for k in ("a", "b", "c")]
        for p, k in zip(params, ("a", "b", "c")):
            p.grad = g[k]
        lm.torch.LARS(params, lr=view, momentum=0.9, weight_decay=1e-3).step()
        w = dict(zip(("a", "b", "c"), (p.detach() for p in params)))
    for k in w:
        np.testing.assert_allclose(to_numpy(w[k]), to_numpy(want[k]), rtol=1e-6, atol=1e-7, err_msg=k)


def test_numpy_stride_zero_out_is_refused():
    require_backend("numpy")
    base = np.zeros(3, np.float32)
    out = np.lib.stride_tricks.as_strided(base, shape=(4, 3), strides=(0, 4), writeable=True)
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^out: expected an array that can be written.*stride of 0"
    ):
        lm.lars_update(W, G, 0.1, out=out)


# --- per-layer hyper-parameters with aliased outputs -----------------------------------------------


def _writable_leaves(backend, arrays):
    if backend == "jax":
        return [lm.Array(native(backend, a)) for a in arrays]
    if backend == "tensorflow":
        import tensorflow as tf

        return [tf.Variable(a) for a in arrays]
    return [native(backend, a) for a in arrays]


@pytest.mark.parametrize("decay", [0.0, [0.1, 0.3, 0.1]], ids=["one-decay", "per-layer-decay"])
def test_tied_weights_with_per_layer_lr(backend, decay):
    """The same weights at two leaves, out=w: one step each, computed from the weights as given."""
    (a, b) = _writable_leaves(backend, [W, W * 3])
    g = native(backend, G)
    tree = [a, b, a]
    lm.lars_update(tree, [g, g, g], [0.1, 0.2, 0.1], decay_lambda=decay, out=tree)
    d = decay if isinstance(decay, float) else decay[0]
    assert_layer_close(to_numpy(tree[0]), W, G, 0.1, d, "float32")
    assert_layer_close(
        to_numpy(tree[1]), W * 3, G, 0.2, decay if isinstance(decay, float) else decay[1], "float32"
    )


@pytest.mark.parametrize("partial", [False, True], ids=["same-array", "overlapping-views"])
def test_outputs_that_would_receive_two_results_are_refused(backend, partial):
    """One array at two leaves with other rates (or two views that overlap) cannot hold both
    results: refused before anything is written, on every backend."""
    if partial and backend not in ("numpy", "torch"):
        pytest.skip("views: NumPy and torch")
    (a, b) = _writable_leaves(backend, [W, W * 3])
    g = native(backend, G)
    if partial:  # rows 0-2 and 1-3 of one array
        tree = [a[:3], b, a[1:]]
        detail = "overlap in memory"
    else:
        tree = [a, b, a]
        detail = "are the same array, and the step gives them different values"
    with pytest.raises(lm.LarsMultiValueError, match=rf"^out\[0\] and out\[2\] {detail}: each would"):
        lm.lars_update(tree, [g[:3], g, g[1:]] if partial else [g, g, g], [0.1, 0.2, 0.3], out=tree)
    np.testing.assert_array_equal(to_numpy(a), W)
    np.testing.assert_array_equal(to_numpy(b), W * 3)


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
@pytest.mark.parametrize("case", ["shared-buffer", "buffer-is-a-parameter"])
def test_optimizer_buffers_sharing_memory_are_refused(backend_name, case):
    """A momentum buffer given for two parameters, or that is a parameter: in place, refused
    with both names and nothing written (the functional step keeps them apart)."""
    require_backend(backend_name)
    params = {"a": native(backend_name, W), "b": native(backend_name, W * 2)}
    grads = {"a": native(backend_name, G), "b": native(backend_name, G * 3)}
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-3, preset="optax")
    shared = native(backend_name, np.full_like(W, 0.5))
    if case == "shared-buffer":
        momentum, names = {"a": shared, "b": shared}, r"state\.momentum\['a'\] and state\.momentum\['b'\]"
    else:
        momentum, names = {"a": params["a"], "b": shared}, r"out\['a'\] and state\.momentum\['a'\]"
    state = opt.init(params)._replace(momentum=momentum)
    with pytest.raises(lm.LarsMultiValueError, match=rf"^{names} are the same array"):
        opt.step(params, grads, state, out=params)
    np.testing.assert_array_equal(to_numpy(params["a"]), W)
    np.testing.assert_array_equal(to_numpy(params["b"]), W * 2)
    np.testing.assert_array_equal(to_numpy(shared), np.full_like(W, 0.5))


def test_torch_optimizer_buffer_shared_by_two_parameters_is_refused():
    require_backend("torch")
    import torch

    a, b = torch.nn.Parameter(torch.tensor(W)), torch.nn.Parameter(torch.tensor(W * 2))
    a.grad, b.grad = torch.tensor(G), torch.tensor(G * 3)
    opt = lm.torch.LARS([a, b], lr=0.1, momentum=0.9, weight_decay=1e-3)
    shared = torch.full_like(a, 0.5)
    opt.state[a]["momentum_buffer"] = opt.state[b]["momentum_buffer"] = shared
    with pytest.raises(
        lm.LarsMultiValueError,
        match=r"^the momentum buffer of param_groups\[0\]\['params'\]\[0\] and the momentum buffer of "
        r"param_groups\[0\]\['params'\]\[1\] are the same array",
    ):
        opt.step()
    np.testing.assert_array_equal(to_numpy(a), W)
    np.testing.assert_array_equal(to_numpy(b), W * 2)
    np.testing.assert_array_equal(to_numpy(shared), np.full_like(W, 0.5))


def test_gradient_that_is_another_layers_weights(backend):
    """Layer 1's gradient is layer 0's weights; with per-layer lr they are read before written."""
    a, b = _writable_leaves(backend, [W, W * 2])
    grads = [native(backend, G), to_numpy(a) if backend == "numpy" else None]
    grads[1] = a if backend in ("numpy", "torch") else a.data if backend == "jax" else a
    tree = [a, b]
    lm.lars_update(tree, grads, [0.1, 0.3], out=tree)
    assert_layer_close(to_numpy(tree[0]), W, G, 0.1, 0.0, "float32")
    assert_layer_close(to_numpy(tree[1]), W * 2, W, 0.3, 0.0, "float32")


def test_jax_failed_or_aliased_calls_never_delete_inputs():
    require_backend("jax")
    import jax.numpy as jnp

    a = lm.Array(jnp.asarray(W))
    b = lm.Array(jnp.asarray(W * 2))
    g = jnp.asarray(G)
    tree = [a, b, a]
    lm.lars_update(tree, [g, g, g], [0.1, 0.2, 0.1], out=tree)
    assert_layer_close(a, W, G, 0.1, 0.0, "float32")
    kept = [a.data, b.data]
    with pytest.raises(lm.LarsMultiValueError):
        lm.lars_update([a, b], [g, jnp.ones(2)], 0.1, out=[a, b])
    for data in kept:
        np.asarray(data)  # still alive: raises if the buffer was donated


@pytest.mark.parametrize("arg", ["lr", "decay_lambda"])
def test_jax_rate_that_is_the_donated_weights(arg):
    """One array, out=w (its buffer donated), with the rate being that same buffer: the
    rate is read before the weights are replaced, as for a tree."""
    require_backend("jax")
    import jax.numpy as jnp

    x = jnp.asarray(0.5, dtype=jnp.float32)
    handle = lm.Array(x)
    g = jnp.asarray(0.25, dtype=jnp.float32)
    want = lm.lars_update(
        jnp.asarray(0.5), g, 0.5 if arg == "lr" else 0.1, **({arg: 0.5} if arg != "lr" else {})
    )
    kwargs = {"decay_lambda": x} if arg == "decay_lambda" else {}
    lm.lars_update(handle, g, x if arg == "lr" else 0.1, out=handle, **kwargs)
    np.testing.assert_allclose(np.asarray(handle.data), np.asarray(want), rtol=1e-6)


class _Pair:
    """A node of its own kind, registered with optree (lars_multi's namespace) as two children."""

    def __init__(self, a, b):
        self.a, self.b = a, b


optree.register_pytree_node(
    _Pair,
    lambda n: ((n.a, n.b), None, ("a", "b")),
    lambda _, children: _Pair(*children),
    namespace="lars_multi",
)


def test_a_registered_node_against_another_structure_is_a_value_error():
    w, g = _Pair(W, W * 2), _Pair(G, G)
    for arg, call in [
        ("dcdw", lambda: lm.lars_update(w, {"a": G, "b": G}, 0.1)),
        ("lr", lambda: lm.lars_update(w, g, {"a": 0.1, "b": 0.2})),
        ("decay_lambda", lambda: lm.lars_update(w, g, 0.1, decay_lambda=[0.1, 0.2])),
    ]:
        with pytest.raises(lm.LarsMultiValueError, match=f"^{arg}: expected the structure of w"):
            call()


class _Slots:
    """A node of its own kind (optree, lars_multi's namespace) that leaves its None slots
    out of its children and keeps which slots are None, and a tag, as its metadata:
    its children's places are not its own indices."""

    def __init__(self, layers, tag):
        self.layers, self.tag = list(layers), tag

    def __getitem__(self, i):
        return self.layers[i]


def _unflatten_slots(meta, children):
    children = iter(children)
    return _Slots([None if none else next(children) for none in meta[1]], meta[0])


optree.register_pytree_node(
    _Slots,
    lambda n: ([x for x in n.layers if x is not None], (n.tag, tuple(x is None for x in n.layers))),
    _unflatten_slots,
    namespace="lars_multi",
)


def test_a_registered_node_of_other_metadata_is_refused_not_indexed():
    """Where a tree's registered node has other metadata than the weights', its children
    were looked up by ``node[i]``, ``i`` their place among the node's children: the
    gradient of ``w[1]`` (slot 2) was the node's slot 1, None, so that layer stayed
    unchanged, silently. Of the same metadata, such a node pairs by place (here inside
    a mapping of another key order, which pairs by key)."""
    w = _Slots([W, None, W * 2], "train")
    for arg, call in [
        ("dcdw", lambda: lm.lars_update(w, _Slots([G, None, -G], "eval"), 0.1)),
        ("lr", lambda: lm.lars_update(w, _Slots([G, None, -G], "train"), _Slots([0.1, None, 0.3], "x"))),
    ]:
        with pytest.raises(lm.LarsMultiValueError, match=rf"^{arg}: .*a _Slots of the metadata of w"):
            call()
    opt = lm.optim.lars(0.1, momentum=0.9)
    with pytest.raises(lm.LarsMultiValueError, match=r"^grads: .*of other metadata"):
        opt.step(w, _Slots([G, None, -G], "eval"), opt.init(w))
    weights = collections.OrderedDict(s=w, x=W)
    grads = collections.OrderedDict(x=G, s=_Slots([G, None, -G], "train"))
    new = lm.lars_update(weights, grads, {"x": 0.2, "s": _Slots([0.1, None, 0.3], "train")})
    assert_layer_close(new["s"][0], W, G, 0.1, 0.0, "float32")
    assert_layer_close(new["s"][2], W * 2, -G, 0.3, 0.0, "float32")
    assert_layer_close(new["x"], W, G, 0.2, 0.0, "float32")


def test_a_deque_pairs_by_index_whatever_its_maxlen_and_metadata_that_cannot_compare_is_refused():
    """A deque's children are its items by index, as the weights' (its ``maxlen``, optree's
    metadata for it, does not move them): it pairs however its ``maxlen`` differs. A
    registered node whose metadata is a NumPy array (``==`` of it raises) is refused as
    another structure, not with NumPy's "truth value of an array" error."""

    class WithArray:
        def __init__(self, w, meta):
            self.w, self.meta = w, meta

    optree.register_pytree_node(
        WithArray,
        lambda n: ((n.w,), n.meta),
        lambda meta, children: WithArray(children[0], meta),
        namespace="lars_multi",
    )
    w = [collections.deque([W, W * 2])]
    new = lm.lars_update(w, (collections.deque([G, -G], maxlen=2),), 0.1)
    assert_layer_close(new[0][1], W * 2, -G, 0.1, 0.0, "float32")
    params = {"a": WithArray(W, np.arange(3))}
    opt = lm.optim.lars(0.1, momentum=0.0)
    with pytest.raises(
        lm.LarsMultiValueError, match=r"^grads: .*a WithArray of the metadata of params\['a'\]"
    ):
        opt.step(params, {"a": WithArray(G, np.arange(3))}, opt.init(params))


def test_a_registered_nodes_none_slot_takes_no_gradient_and_its_keys_index_it():
    """A gradient where the weights' registered node holds None (a field, a slot) met no
    weight and was dropped unseen, its layer left unchanged (refused in a dict); a node
    keyed by names (not places) pairs by them whatever the order its metadata keeps."""
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw: .*no value where w\['b'\] is None"):
        lm.lars_update(_Pair(W, None), _Pair(None, G), 0.1)

    class Named:
        def __init__(self, layers):
            self.layers = dict(layers)

        def __getitem__(self, key):
            return self.layers[key]

    optree.register_pytree_node(
        Named,
        lambda n: (list(n.layers.values()), tuple(n.layers), tuple(n.layers)),
        lambda keys, children: Named(zip(keys, children)),
        namespace="lars_multi",
    )
    w = collections.OrderedDict(n=Named([("a", W), ("b", W * 2)]), x=W)
    g = collections.OrderedDict(x=G, n=Named([("b", -G), ("a", G)]))
    new = lm.lars_update(w, g, 0.1)
    assert_layer_close(new["n"]["b"], W * 2, -G, 0.1, 0.0, "float32")
    assert_layer_close(new["n"]["a"], W, G, 0.1, 0.0, "float32")


def test_jax_entries_equal_in_python_but_of_other_kinds_are_told_apart():
    """An attribute ``w`` and a key ``"w"`` of one node are equal strings, and were taken
    for one entry: the second child stepped with the first's gradient. A key is looked up
    in the object (here it has none: refused), and entries that cannot be told apart at
    all (a sequence key 0 and a dict key 0, both 0) are refused."""
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    key = jax.tree_util

    class Both:
        def __init__(self, first, second, tag):
            self.first, self.second, self.tag = first, second, tag

    def flatten(n):
        return [(key.GetAttrKey("w"), n.first), (key.DictKey("w"), n.second)], n.tag

    key.register_pytree_with_keys(Both, flatten, lambda tag, children: Both(*children, tag))
    w = collections.OrderedDict(m=Both(jnp.asarray(W), jnp.asarray(W * 2), "t"), z=jnp.asarray(W[0]))
    g = collections.OrderedDict(z=jnp.asarray(G[0]), m=Both(jnp.asarray(G), jnp.asarray(-G), "t"))
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw: .*dcdw\['m'\]: expected the structure of w"):
        lm.lars_update(w, g, 0.1)  # (neither entry names the object's own attribute or key)

    class Twice:
        def __init__(self, first, second, tag):
            self.first, self.second, self.tag = first, second, tag

    def flatten_twice(n):
        return [(key.SequenceKey(0), n.first), (key.DictKey(0), n.second)], n.tag

    key.register_pytree_with_keys(Twice, flatten_twice, lambda tag, children: Twice(*children, tag))
    w = collections.OrderedDict(m=Twice(jnp.asarray(W), jnp.asarray(W * 2), "t"), z=jnp.asarray(W[0]))
    g = collections.OrderedDict(z=jnp.asarray(G[0]), m=Twice(jnp.asarray(G), jnp.asarray(-G), "t"))
    with pytest.raises(lm.LarsMultiValueError, match="that can be told apart, got 0 twice"):
        lm.lars_update(w, g, 0.1)


def test_jax_a_node_keyed_by_place_among_its_children_is_refused_with_other_metadata():
    """JAX's SequenceKey of a registered node is its child's place among the node's
    children (here, not its index in the object): with other metadata it was indexed."""
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    class Slots:
        def __init__(self, layers, tag):
            self.layers, self.tag = list(layers), tag

        def __getitem__(self, i):
            return self.layers[i]

    def flatten(n):
        kept = [x for x in n.layers if x is not None]
        return [(jax.tree_util.SequenceKey(i), x) for i, x in enumerate(kept)], (
            n.tag,
            tuple(x is None for x in n.layers),
        )

    def unflatten(meta, children):
        children = iter(children)
        return Slots([None if none else next(children) for none in meta[1]], meta[0])

    jax.tree_util.register_pytree_with_keys(Slots, flatten, unflatten)
    w = Slots([jnp.asarray(W), None, jnp.asarray(W * 2)], "train")
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw: .*a Slots of the metadata of w"):
        lm.lars_update(w, Slots([jnp.asarray(G), None, jnp.asarray(-G)], "eval"), 0.1)
    new = lm.lars_update({"s": w}, {"s": Slots([jnp.asarray(G), None, jnp.asarray(-G)], "train")}, {"s": 0.3})
    assert_layer_close(np.asarray(new["s"][2]), W * 2, -G, 0.3, 0.0, "float32")


def test_jax_a_value_at_a_module_whose_fields_are_named_like_number_attributes():
    """A number or array has ``real`` and ``imag``: one given for a module whose field
    is named so was taken for such a module, and refused, instead of serving every
    layer below it (as it does for a module of other field names)."""
    require_backend("jax")
    import dataclasses
    import functools

    import jax
    import jax.numpy as jnp

    @functools.partial(jax.tree_util.register_dataclass, data_fields=["real", "imag"], meta_fields=[])
    @dataclasses.dataclass
    class Complex:
        real: object
        imag: object

    w = {"c": Complex(jnp.asarray(W), jnp.asarray(W * 2)), "d": jnp.asarray(W[0])}
    g = {"c": Complex(jnp.asarray(G), jnp.asarray(-G)), "d": jnp.asarray(G[0])}
    for rate in (0.3, jnp.asarray(0.3)):
        new = lm.lars_update(w, g, {"c": rate, "d": 0.2})
        assert_layer_close(np.asarray(new["c"].imag), W * 2, -G, 0.3, 0.0, "float32")
        assert_layer_close(np.asarray(new["d"]), W[0], G[0], 0.2, 0.0, "float32")
    opt = lm.optim.lars(0.1, adapt_mask={"c": True, "d": False})
    opt.step(w, g, opt.init(w))


def test_namedtuples_with_other_field_names_are_refused(backend):
    """Sequences pair by position, but two namedtuples whose fields are named
    differently (or in another order) would pair a layer with another's gradient."""
    first, second = collections.namedtuple("First", "x y"), collections.namedtuple("Second", "y x")
    same_names = collections.namedtuple("Same", "x y")
    w = first(native(backend, W), native(backend, W * 2))
    with pytest.raises(
        lm.LarsMultiValueError, match=r"expected the fields of w, \('x', 'y'\), got \('y', 'x'\)"
    ):
        lm.lars_update(w, second(y=native(backend, G), x=native(backend, -G)), 0.1)
    new = lm.lars_update(w, same_names(native(backend, G), native(backend, -G)), 0.1)
    assert_layer_close(new.y, W * 2, -G, 0.1, 0.0, "float32")
    assert_layer_close(
        lm.lars_update(w, (native(backend, G), native(backend, -G)), 0.1).x, W, G, 0.1, 0.0, "float32"
    )


def test_jax_values_at_a_registered_nodes_none_fields_are_refused():
    """A flax struct whose field is None has no layer there: a gradient or rate at that
    field would meet no weight (it was dropped unseen)."""
    require_backend("jax")
    flax_struct = pytest.importorskip("flax.struct")
    import jax.numpy as jnp

    @flax_struct.dataclass
    class Params:
        x: object
        y: object

    w = Params(None, jnp.asarray(W))
    g = Params(jnp.asarray(G), jnp.asarray(G))
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw: expected the structure of w.*no more leaves"):
        lm.lars_update(w, g, 0.1)
    with pytest.raises(lm.LarsMultiValueError, match=r"^lr: expected the structure of w.*no more leaves"):
        lm.lars_update(w, Params(None, jnp.asarray(G)), Params(0.5, 0.1))
    opt = lm.optim.lars(0.1, momentum=0.9)
    with pytest.raises(lm.LarsMultiValueError, match=r"^grads: expected the structure of params"):
        opt.step(w, g, opt.init(w))
    assert_layer_close(lm.lars_update(w, Params(None, jnp.asarray(G)), 0.1).y, W, G, 0.1, 0.0, "float32")


def _jax_node(with_keys):
    """A JAX pytree node class of two fields, ``x`` and ``y``, registered with their key
    paths (``GetAttrKey``) or without keys (children known by position)."""
    import jax

    class Node:
        def __init__(self, x, y):
            self.x, self.y = x, y

    def unflatten(aux, children):
        return Node(*children)

    if with_keys:
        key = jax.tree_util.GetAttrKey
        jax.tree_util.register_pytree_with_keys(
            Node, lambda n: (((key("x"), n.x), (key("y"), n.y)), None), unflatten
        )
    else:
        jax.tree_util.register_pytree_node(Node, lambda n: ((n.x, n.y), None), unflatten)
    return Node


def test_jax_pytrees_registered_without_keys_are_named_as_jax_names_them():
    """A pytree node registered without keys has children known by position: messages
    name them as JAX does (``w[<flat index 1>]``; they named a ``FlattenedIndexKey``),
    and a gradient node of the weights' type with a subtree where the weights have a
    layer is a structure mismatch at that node (it was taken as one gradient for
    every layer, and refused as "an array like w[...]" at the first)."""
    require_backend("jax")
    import jax.numpy as jnp

    Pair = _jax_node(with_keys=False)
    w = Pair(jnp.asarray(W), jnp.asarray(W[0]))
    with pytest.raises(
        lm.LarsMultiValueError, match=r"^dcdw: expected shape \(3,\) \(the shape of w\[<flat index 1>\]\)"
    ):
        lm.lars_update(w, Pair(jnp.asarray(G), jnp.asarray(G[:2, 0])), 0.1)
    nested = Pair(jnp.asarray(G), (jnp.asarray(G[0]), jnp.asarray(G[0])))
    with pytest.raises(
        lm.LarsMultiValueError, match=r"^dcdw: expected the structure of w.*no more leaves than w \(2"
    ):
        lm.lars_update(w, nested, 0.1)
    new = lm.lars_update(w, Pair(jnp.asarray(G), jnp.asarray(G[0])), Pair(0.1, 0.2))
    assert_layer_close(new.y, W[0], G[0], 0.2, 0.0, "float32")


def test_rates_as_a_tree_of_the_weights_registered_node():
    w, g = _Pair(W, W * 2), _Pair(G, G)
    new = lm.lars_update(w, g, _Pair(0.1, 0.3), decay_lambda=_Pair(0.0, 0.5))
    assert_layer_close(new.a, W, G, 0.1, 0.0, "float32")
    assert_layer_close(new.b, W * 2, G, 0.3, 0.5, "float32")


def test_jax_rates_as_a_tree_of_a_registered_pytree():
    """On JAX every registered pytree is a tree: per-layer rates shaped like the weights' module."""
    require_backend("jax")
    import jax.numpy as jnp

    Module = _jax_node(with_keys=True)
    w, g = Module(jnp.asarray(W), jnp.asarray(W * 2)), Module(jnp.asarray(G), jnp.asarray(G))
    new = lm.lars_update(w, g, Module(0.1, 0.3))
    assert_layer_close(np.asarray(new.x), W, G, 0.1, 0.0, "float32")
    assert_layer_close(np.asarray(new.y), W * 2, G, 0.3, 0.0, "float32")
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw: expected the structure of w"):
        lm.lars_update(w, {"x": jnp.asarray(G), "y": jnp.asarray(G)}, 0.1)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tf_variables_of_unknown_static_shape_are_checked_by_their_values(dtype):
    """A variable made with shape [None, 4] (or no known rank) has its value's shape in
    eager mode: a gradient of another shape passed the static check and TensorFlow
    raised after the other layer was assigned; half layers failed a bare TypeError in
    batching, and an unknown rank one in the shape check."""
    require_backend("tensorflow")
    import tensorflow as tf

    other = tf.Variable(W.astype(dtype))
    partial = tf.Variable(W.astype(dtype), shape=tf.TensorShape([None, 3]))
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw\[1\]: expected shape \(4, 3\) .*got \(2, 3\)"):
        lm.lars_update(
            [other, partial],
            [tf.constant(G.astype(dtype)), tf.constant(G[:2].astype(dtype))],
            0.1,
            out=[other, partial],
        )
    np.testing.assert_array_equal(other.numpy(), W.astype(dtype))
    unknown = tf.Variable(W.astype(dtype), shape=tf.TensorShape(None))
    grads = [tf.constant(G.astype(dtype))] * 3
    lm.lars_update([other, partial, unknown], grads, 0.1, decay_lambda=0.01, out=[other, partial, unknown])
    expected = to_numpy(lm.lars_update(tf.constant(W.astype(dtype)), grads[0], 0.1, decay_lambda=0.01))
    for v in (other, partial, unknown):
        np.testing.assert_array_equal(v.numpy(), expected)


def test_tf_tied_outputs_inside_tf_function_are_refused_clearly():
    """Inside tf.function the two new values of one variable cannot be compared: a
    LarsMultiValueError says so (it was an AttributeError of the symbolic tensor)."""
    require_backend("tensorflow")
    import tensorflow as tf

    v = tf.Variable(W)
    g = tf.constant(G)

    @tf.function
    def tied():
        return lm.lars_update([v, v], [g, g], 0.1, out=[v, v])

    with pytest.raises(lm.LarsMultiValueError, match="cannot be compared while the step is traced"):
        tied()
    np.testing.assert_array_equal(v.numpy(), W)


def _torch_tree():
    import torch

    return [torch.tensor(W), torch.tensor(W * 2)], [torch.tensor(G)] * 2


def _strided(backend, shape, strides):
    """A zeroed float32 array of ``shape`` over a buffer of 64 elements, with ``strides``
    in elements (as_strided: NumPy and torch only)."""
    if backend == "numpy":
        buffer = np.zeros(64, np.float32)
        return np.lib.stride_tricks.as_strided(buffer, shape, [4 * s for s in strides])
    require_backend("torch")
    import torch

    return torch.zeros(64).as_strided(shape, strides)


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_outputs_whose_elements_overlap_are_refused_and_nothing_is_written(backend_name):
    """An output (or momentum buffer) whose elements share memory through overlapping
    strides (element [i, j] at i + j: NumPy's stride check saw no 0, torch answered
    "cannot tell") was written in place, each shared element holding one of its results."""
    require_backend(backend_name)
    ws, gs = [native(backend_name, W), native(backend_name, W * 2)], [native(backend_name, G)] * 2
    outs = [native(backend_name, np.zeros_like(W)), _strided(backend_name, (4, 3), (1, 1))]
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^out\[1\]: expected an array that can be written.*share memory"
    ):
        lm.lars_update(ws, gs, 0.1, out=outs)
    assert not to_numpy(outs[0]).any()
    # Such a momentum buffer is not written: the step returns a new one (a buffer that
    # cannot be written in place is replaced, as a JAX one is).
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=0.01)
    plain = opt.init(ws)
    _, want = opt.step(ws, gs, plain)
    shared = _strided(backend_name, (4, 3), (1, 1))
    _, got = opt.step(ws, gs, plain._replace(momentum=[plain.momentum[0], shared]))
    np.testing.assert_array_equal(to_numpy(got.momentum[1]), to_numpy(want.momentum[1]))
    assert not to_numpy(shared).any()


def test_overlap_of_a_large_unusual_layout_is_decided_without_comparing_every_element():
    """Strides out of the usual order are decided by every element's offset, which on a
    huge array took seconds and gigabytes: past a million elements, such an output is
    taken as shared (refused), the safe answer."""
    from lars_multi._aliasing import elements_overlap

    assert not elements_overlap((4, 3), (8, 36), 4)  # (2 i + 9 j, in elements: apart)
    assert elements_overlap((4, 3), (4, 4), 4)  # (i + j)
    assert elements_overlap((2048, 1024), (8, 36), 4)  # (apart, but too many to compare)
    assert not elements_overlap((2048, 1024), (4096, 4), 4)  # (the usual order: by the strides)


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_outputs_with_unusual_strides_that_do_not_overlap_are_written(backend_name):
    """Strides that are not in the nesting order (element [i, j] at 2 i + 3 j, all
    distinct) are a valid output, written in place with the plain result."""
    require_backend(backend_name)
    out = _strided(backend_name, (4, 3), (2, 9))
    lm.lars_update(native(backend_name, W), native(backend_name, G), 0.1, out=out)
    assert_layer_close(out, W, G, 0.1, 0.0, "float32")


@pytest.mark.parametrize(
    "kind",
    [
        "inference",
        "expanded",
        "meta-device-out",
        "meta-device-grad",
        "neg-view-out",
        "sparse-csr-out",
        "sparse-coo-out",
        "sparse-weights",
        "nested-weights",
    ],
)
def test_torch_unwritable_or_misplaced_later_layer_writes_nothing(kind):
    require_backend("torch")
    import torch

    ws, gs = _torch_tree()
    device = re.escape(str(ws[0].device))  # cpu, or cuda:0 where the tests run there
    outs = [torch.zeros(4, 3), torch.zeros(4, 3)]
    if kind == "inference":
        with torch.inference_mode():
            outs[1] = torch.zeros(4, 3)
        error, match = lm.LarsMultiTypeError, r"^out\[1\]: expected an array that can be written.*inference"
    elif kind == "expanded":
        outs[1] = torch.zeros(1, 3).expand(4, 3)
        error, match = (
            lm.LarsMultiTypeError,
            r"^out\[1\]: expected an array that can be written.*share memory",
        )
    elif kind == "meta-device-out":
        outs[1] = torch.zeros(4, 3, device="meta")
        error, match = lm.LarsMultiValueError, rf"^out\[1\]: expected an array on {device} .*got one on meta"
    elif kind == "meta-device-grad":
        gs = [gs[0], torch.zeros(4, 3, device="meta")]
        error, match = lm.LarsMultiValueError, rf"^dcdw\[1\]: expected an array on {device} .*got one on meta"
    elif kind == "neg-view-out":  # (torch: "mutable TensorLists with negation inputs", after layer 0)
        outs[1] = torch._neg_view(torch.zeros(4, 3))
        error, match = lm.LarsMultiTypeError, r"^out\[1\]: expected an array that can be written.*negative"
    elif kind.startswith("sparse") and kind.endswith("out"):
        layout = kind.split("-")[1]
        outs[1] = torch.zeros(4, 3).to_sparse_csr() if layout == "csr" else torch.zeros(4, 3).to_sparse()
        error, match = (
            lm.LarsMultiTypeError,
            rf"^out\[1\]: expected an array that can be written.*sparse_{layout}",
        )
    else:  # weights of another layout (a sparse one failed its norm after layer 0 was written)
        sparse = kind == "sparse-weights"
        ws = [ws[0], ws[1].to_sparse() if sparse else torch.nested.nested_tensor([ws[1][0], ws[1][1]])]
        error, match = (
            lm.LarsMultiTypeError,
            rf"^w\[1\]: expected dense weights, got a {'sparse_coo' if sparse else 'nested'}",
        )
    with pytest.raises(error, match=match):
        lm.lars_update(ws, gs, 0.1, out=outs)
    assert not outs[0].any()
    np.testing.assert_array_equal(to_numpy(ws[0]), W)


def _rate_call(arg, ws, gs, away):
    """A call given the rate ``away`` as ``arg``, and the message it must raise."""
    import torch

    device = away.device.type
    if arg == "lr":
        call = partial(
            lm.lars_update, ws, gs, {"a": torch.tensor(0.1, device=ws["a"].device), "b": away}, out=ws
        )
        return call, r"^lr\['b'\]: expected a 0-d array on \S+ \(like w\['b'\]\), got one on " + device
    if arg == "decay_lambda":
        call = partial(lm.lars_update, ws, gs, 0.1, decay_lambda=away, out=ws)
        return call, r"^decay_lambda: expected a 0-d array on \S+ \(like w\['a'\]\), got one on " + device
    if arg in ("learning_rate", "weight_decay"):
        opt = lm.optim.lars(**{"learning_rate": 0.1, arg: away})
        call = partial(opt.step, ws, gs, opt.init(ws), out=ws)
        return call, rf"^{arg}: expected a 0-d array on \S+ \(like params\['a'\]\), got one on {device}"
    # lm.torch.LARS, a group's lr set to such a tensor after the optimizer was made
    ps = [torch.nn.Parameter(ws["a"]), torch.nn.Parameter(ws["b"])]
    ps[0].grad, ps[1].grad = gs["a"], gs["b"]
    opt = lm.torch.LARS([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1)
    opt.param_groups[1]["lr"] = away
    if device == "meta":
        return opt.step, r"^param_groups\[1\]: lr: expected a tensor with a value, got one on the meta device"
    return opt.step, r"^param_groups\[1\]: lr: expected a 0-d array on cpu \(like param_groups\[1\]"


@pytest.mark.parametrize("device", ["meta", "cuda"])
@pytest.mark.parametrize("arg", ["lr", "decay_lambda", "learning_rate", "weight_decay", "LARS lr"])
def test_torch_rate_on_another_device_is_refused_before_anything_is_written(arg, device):
    """A 0-d rate tensor on a device the weights' kernels cannot read (meta, or CUDA for
    CPU weights) raised torch's RuntimeError from a kernel, with a per-layer rate tree
    after the earlier layers were written; it is refused first, naming it."""
    require_backend("torch")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    weights = "cpu" if device == "cuda" else None  # None: the tests' device
    ws = {"a": torch.tensor(W, device=weights), "b": torch.tensor(W * 2, device=weights)}
    gs = {"a": torch.tensor(G, device=weights), "b": torch.tensor(G, device=weights)}
    call, match = _rate_call(arg, ws, gs, torch.tensor(0.1, device=device))
    with pytest.raises(lm.LarsMultiValueError, match=match):
        call()
    np.testing.assert_array_equal(to_numpy(ws["a"]), W)
    np.testing.assert_array_equal(to_numpy(ws["b"]), W * 2)


def test_torch_rate_on_the_cpu_is_taken_with_weights_anywhere():
    """A 0-d CPU rate goes with weights on any device (torch passes it to kernels as a
    number), and gives what the number gives; lm.torch.LARS refuses a meta lr, whose
    value it cannot read."""
    require_backend("torch")
    import torch

    w, g = torch.tensor(W), torch.tensor(G)  # the tests' device
    expected = lm.lars_update(w, g, 0.25, decay_lambda=0.5)
    got = lm.lars_update(w, g, torch.tensor(0.25, device="cpu"), decay_lambda=torch.tensor(0.5, device="cpu"))
    np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-6)
    meta = r"^lr: expected a tensor with a value, got one on the meta"
    with pytest.raises(lm.LarsMultiValueError, match=meta):
        lm.torch.LARS([torch.nn.Parameter(w)], lr=torch.tensor(0.1, device="meta"))


def test_torch_sparse_gradient_is_refused():
    require_backend("torch")
    import torch

    w = {"emb": torch.tensor(W)}
    sparse = torch.tensor(G).to_sparse()
    with pytest.raises(lm.LarsMultiTypeError, match=r"^dcdw\['emb'\]: expected a dense array.*sparse"):
        lm.lars_update(w, {"emb": sparse}, 0.1, out=w)
    np.testing.assert_array_equal(to_numpy(w["emb"]), W)


# --- hyper-parameters out of range ---------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["lr", "decay_lambda"])
@pytest.mark.parametrize("value", [10**400, 1e39, -(10**400)])
def test_huge_hyper_parameters_are_refused(backend, arg, value):
    w, g = native(backend, W), native(backend, G)
    kwargs = {"lr": 0.1, "decay_lambda": 0.0, arg: value}
    with pytest.raises(lm.LarsMultiValueError, match=rf"^{arg}: expected"):
        lm.lars_update(w, g, kwargs["lr"], decay_lambda=kwargs["decay_lambda"])
    with pytest.raises(lm.LarsMultiValueError, match=rf"^{arg}(\[1\])?: expected"):
        lm.lars_update([w, w], g, [0.1, kwargs["lr"]], decay_lambda=[0.0, kwargs["decay_lambda"]])


def test_float16_weights_compute_the_rate_in_float32(backend):
    """1e5 overflows float16 but not the float32 the rate of a half layer is computed in."""
    w, g = native(backend, W, "float16"), native(backend, G * 1e-3, "float16")
    new = lm.lars_update(w, g, 1e-6, decay_lambda=1e5)
    assert np.all(np.isfinite(to_numpy(new)))


# --- traced hyper-parameters --------------------------------------------------------------------------


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_jax_traced_lr_and_decay(decay):
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    w = {"a": jnp.asarray(W), "b": jnp.asarray(W * 2)}
    g = {"a": jnp.asarray(G), "b": jnp.asarray(G)}
    step = jax.jit(lambda w, g, lr, d: lm.lars_update(w, g, lr, decay_lambda=d))
    got = step(w, g, 0.1, decay)
    for key, scale in (("a", 1), ("b", 2)):
        assert_layer_close(got[key], W * scale, G, 0.1, decay, "float32")
    one = jax.jit(lambda w, g, lr, d: lm.lars_update(w, g, lr, decay_lambda=d))(w["a"], g["a"], 0.1, decay)
    assert_layer_close(one, W, G, 0.1, decay, "float32")


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_tensorflow_traced_lr_and_decay(decay):
    require_backend("tensorflow")
    import tensorflow as tf

    @tf.function
    def step(w, g, lr, d):
        return lm.lars_update(w, g, lr, decay_lambda=d)

    got = step([tf.constant(W)], [tf.constant(G)], tf.constant(0.1), tf.constant(decay))
    assert_layer_close(got[0], W, G, 0.1, decay, "float32")


def test_errors_keep_their_type_inside_tf_function():
    require_backend("tensorflow")
    import tensorflow as tf

    @tf.function
    def step(w):
        return lm.lars_update(w, tf.ones((5,)), 0.1)

    with pytest.raises(lm.LarsMultiValueError) as info:
        step(tf.ones((3,)))
    assert type(info.value) is lm.LarsMultiValueError
    assert str(info.value).startswith("dcdw: expected shape (3,)")


# A one-rank gloo process group on 127.0.0.1 and its 1-D CPU mesh; shard(t) makes a DTensor.
ONE_RANK_MESH = """
import os, socket, torch, torch.distributed as dist
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
import lars_multi as lm
mesh = init_device_mesh("cpu", (1,))
torch.manual_seed(0)
shard = lambda t: distribute_tensor(t.clone(), mesh, [Shard(0)])
"""


def _on_one_rank_mesh(body):
    """What ``body`` prints, run after ONE_RANK_MESH in a fresh interpreter (skipped
    without torch.distributed)."""
    require_backend("torch")
    pytest.importorskip("torch.distributed")
    return run_python(ONE_RANK_MESH + body)


def _assert_lines_match(lines, patterns):
    """Each printed line matches its pattern, and there are as many."""
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns):
        assert re.match(pattern, line), (line, pattern)


def test_torch_dtensor_memory_checks_use_the_local_shard():
    """DTensors (data_ptr() 0, no storage of their own) are compared through their local
    tensors: in place and an out that is a view of the gradient give the plain result."""
    script = """
w0, g0 = torch.randn(6, 4), torch.randn(6, 4) * 0.1
want = lm.lars_update(w0, g0, 0.1)
errors = [(lm.lars_update(shard(w0), shard(g0), 0.1).full_tensor() - want).abs().max().item()]
w, g = shard(w0), shard(g0)
lm.lars_update({"a": w}, {"a": g}, 0.1, out={"a": w})
errors.append((w.full_tensor() - want).abs().max().item())
g = shard(g0)
out = g.view_as(g)
lm.lars_update(shard(w0), g, 0.1, out=out)
errors.append((out.full_tensor() - want).abs().max().item())
dist.destroy_process_group()
print(max(errors))
"""
    assert float(_on_one_rank_mesh(script)) < 1e-6


def test_torch_plain_tensors_paired_with_dtensors_are_refused_before_anything_is_written():
    """A plain tensor where a DTensor is expected (or the other way round), as a gradient,
    an output or a momentum buffer, is refused naming the argument (torch raised "got mixed
    torch.Tensor and DTensor" from a kernel); lm.torch.LARS on FSDP2 with a plain buffer
    (a state saved unsharded) refuses it before stepping any group."""
    script = """
from torch.distributed.fsdp import fully_shard
w0, g0 = torch.randn(5, 3), torch.randn(5, 3)
w = {"a": shard(w0)}
cases = {
    "grad": lambda: lm.lars_update(w, {"a": g0.clone()}, 0.1, out=w),
    "dtensor grad": lambda: lm.lars_update({"a": w0.clone()}, {"a": shard(g0)}, 0.1),
    "out": lambda: lm.lars_update(w, {"a": shard(g0)}, 0.1, out={"a": torch.zeros(5, 3)}),
    "buffer": lambda: lm.optim.lars(0.1, momentum=0.9).step(
        w, {"a": shard(g0)}, lm.optim.LarsState(torch.tensor(0), {"a": torch.zeros(5, 3)}), out=w
    ),
}
for name, call in cases.items():
    try:
        call()
        print(name, "not refused")
    except lm.LarsMultiValueError as e:
        print(name, str(e))
print("w unchanged", torch.equal(w["a"].full_tensor(), w0))
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
fully_shard(model)
groups = [{"params": model[0].parameters()}, {"params": model[1].parameters()}]
opt = lm.torch.LARS(groups, lr=0.1, momentum=0.9)
model(torch.randn(2, 3)).sum().backward()
before = [p.detach().full_tensor().clone() for p in model.parameters()]
for p in model[1].parameters():
    opt.state[p]["momentum_buffer"] = torch.zeros(p.shape)  # as a plain state_dict loads them
try:
    opt.step()
    print("LARS not refused")
except lm.LarsMultiValueError as e:
    print("LARS", str(e))
after = [p.detach().full_tensor() for p in model.parameters()]
print("params unchanged", all(torch.equal(b, a) for b, a in zip(before, after)))
dist.destroy_process_group()
"""
    lines = _on_one_rank_mesh(script).splitlines()
    mesh = r"a DTensor's DeviceMesh\(.*\)"
    expected = [
        rf"grad dcdw\['a'\]: expected an array on {mesh} \(like w\['a'\]\), got one on cpu",
        rf"dtensor grad dcdw\['a'\]: expected an array on cpu \(like w\['a'\]\), got one on {mesh}",
        rf"out out\['a'\]: expected an array on {mesh} \(like w\['a'\]\), got one on cpu",
        rf"buffer state.momentum\['a'\]: expected an array on {mesh} \(like params\['a'\]\), got one on cpu",
        "w unchanged True",
        rf"LARS the momentum buffer of param_groups\[1\]\['params'\]\[0\]: expected an array on {mesh}",
        "params unchanged True",
    ]
    _assert_lines_match(lines, expected)


def test_torch_dtensors_of_other_placements_or_meshes_are_refused_before_anything_is_written():
    """A gradient DTensor with other placements than its parameter (torch: "in-place
    operations that require placement changes are not supported"), or on another
    mesh, was not caught by the fast check (both on cpu) and raised from a kernel
    after the earlier batches or parameter groups had been written."""
    script = """
from torch.distributed.tensor import Replicate
other = init_device_mesh("cpu", (1, 1))
a0, z0 = torch.randn(6, 3, dtype=torch.float64), torch.randn(2, 4)  # two dtypes: two batches
grads = {
    "placements": distribute_tensor(torch.randn(2, 4), mesh, [Replicate()]),
    "mesh": distribute_tensor(torch.randn(2, 4), other, [Shard(0), Replicate()]),
}
for name, gz in grads.items():
    w = {"a": shard(a0), "z": shard(z0)}
    try:
        lm.lars_update(w, {"a": shard(torch.randn(6, 3, dtype=torch.float64)), "z": gz}, 0.1, out=w)
        print(name, "not refused")
    except lm.LarsMultiValueError as e:
        print(name, str(e))
    print("w unchanged", torch.equal(w["a"].full_tensor(), a0))
    pa, pz = torch.nn.Parameter(shard(a0)), torch.nn.Parameter(shard(z0))
    pa.grad, pz.grad = shard(torch.randn(6, 3, dtype=torch.float64)), gz
    opt = lm.torch.LARS([{"params": [pa]}, {"params": [pz]}], lr=0.1, momentum=0.9)
    try:
        opt.step()
        print("LARS not refused")
    except lm.LarsMultiValueError as e:
        print("LARS", str(e))
    print("params unchanged", torch.equal(pa.detach().full_tensor(), a0), len(opt.state))
dist.destroy_process_group()
"""
    lines = _on_one_rank_mesh(script).splitlines()
    mine = r"a DTensor's DeviceMesh\(.*\) with placements \(Shard\(dim=0\),\)"
    expected = [
        rf"placements dcdw\['z'\]: expected an array on {mine} \(like w\['z'\]\), got one on .*Replicate",
        "w unchanged True",
        rf"LARS param_groups\[1\]\['params'\]\[0\]\.grad: expected an array on {mine}",
        "params unchanged True 0",
        rf"mesh dcdw\['z'\]: expected an array on {mine} \(like w\['z'\]\), got one on .*Shard",
        "w unchanged True",
        rf"LARS param_groups\[1\]\['params'\]\[0\]\.grad: expected an array on {mine}",
        "params unchanged True 0",
    ]
    _assert_lines_match(lines, expected)


def test_torch_rates_with_dtensors_go_where_torch_takes_them():
    """A CPU 0-d rate goes with DTensor weights, and a replicated DTensor rate with
    sharded ones, giving the plain result; a DTensor rate with plain weights (torch:
    "got mixed torch.Tensor and DTensor", after the earlier layers were written) is
    refused first, naming its mesh."""
    script = """
from torch.distributed.tensor import Replicate
w0, g0 = torch.randn(6, 4), torch.randn(6, 4) * 0.1
want = lm.lars_update(w0, g0, 0.1, decay_lambda=0.01)
replicated = distribute_tensor(torch.tensor(0.1), mesh, [Replicate()])
for name, lr in (("cpu", torch.tensor(0.1)), ("replicated", replicated)):
    got = lm.lars_update(shard(w0), shard(g0), lr, decay_lambda=torch.tensor(0.01))
    print(name, (got.full_tensor() - want).abs().max().item() < 1e-6)
w = {"a": w0.clone(), "b": w0.clone()}
try:
    lm.lars_update(w, {"a": g0, "b": g0}, {"a": torch.tensor(0.1), "b": replicated}, out=w)
    print("not refused")
except lm.LarsMultiValueError as e:
    print(str(e))
print("w unchanged", torch.equal(w["a"], w0))
dist.destroy_process_group()
"""
    expected = [
        "cpu True",
        "replicated True",
        r"lr\['b'\]: expected a 0-d array on cpu \(like w\['b'\]\), got one on a DTensor's DeviceMesh",
        "w unchanged True",
    ]
    _assert_lines_match(_on_one_rank_mesh(script).splitlines(), expected)


def test_numpy_views_that_interleave_without_sharing_elements_are_updated_in_place():
    """A matrix's columns reach across each other's bounds but share no element: each
    is its own output (they were refused as overlapping); views that share elements
    still are, and nothing is written then."""
    require_backend("numpy")
    x = np.arange(1.0, 9.0, dtype=np.float32).reshape(4, 2)
    w = {"a": x[:, 0], "b": x[:, 1]}
    g = {"a": np.full(4, 0.5, np.float32), "b": np.linspace(0.1, 0.4, 4, dtype=np.float32)}
    want = lm.lars_update({k: v.copy() for k, v in w.items()}, g, 0.1, decay_lambda=0.01)
    lm.lars_update(w, g, 0.1, decay_lambda=0.01, out=w)
    for k in w:
        np.testing.assert_array_equal(w[k], want[k])
    y = np.arange(1.0, 9.0, dtype=np.float32)
    before = y.copy()
    shared = {"a": y[0:6:2], "b": y[2:8:2]}  # y[2] and y[4] in both
    with pytest.raises(lm.LarsMultiValueError, match=r"out\['a'\] and out\['b'\] overlap in memory"):
        lm.lars_update(shared, {"a": g["a"][:3], "b": g["b"][:3]}, 0.1, out=shared)
    np.testing.assert_array_equal(y, before)


def test_jax_gradient_over_the_weights_buffer_is_not_donated():
    """A second jax.Array over the weights' device buffer (jax.device_put(x, x.sharding))
    as the gradient: updating the weights' lm.Array in place gives the functional result
    (the buffer was donated while it was read: XLA raised)."""
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(W)
    g = jax.device_put(x, x.sharding)
    assert g is not x
    handle = lm.Array(x, "jax")
    lm.lars_update(handle, g, 0.1, out=handle)
    assert_layer_close(handle.data, W, W, 0.1, 0.0, "float32")
    a, b = jnp.asarray(W), jnp.asarray(G)
    tree = lm.Container(a=lm.Array(a, "jax"), b=lm.Array(b, "jax"))
    lm.lars_update(tree, lm.Container(a=jnp.asarray(G), b=jax.device_put(a, a.sharding)), 0.1, out=tree)
    assert_layer_close(tree["a"].data, W, G, 0.1, 0.0, "float32")
    assert_layer_close(tree["b"].data, G, W, 0.1, 0.0, "float32")


def test_numpy_big_endian_float64_keeps_float64_precision():
    """Byte-swapped float64 is computed in float64 (its norms too), not rounded to float32."""
    require_backend("numpy")
    w = RNG.normal(size=257) * 1e3 + 1
    g = RNG.normal(size=257)
    native_result = lm.lars_update(w, g, 0.1, decay_lambda=0.3)
    swapped = lm.lars_update(w.astype(">f8"), g.astype(">f8"), 0.1, decay_lambda=0.3)
    np.testing.assert_array_equal(swapped.astype(np.float64), native_result)
    assert_layer_close(swapped, w, g, 0.1, 0.3, "float64")


def test_torch_constant_made_in_inference_mode_serves_autograd_later():
    """torch adds eps as a cached 0-d tensor: one first made under inference_mode
    must not turn a later differentiable update into an inference-tensor error."""
    require_backend("torch")
    import torch

    dtype = torch.float64  # (a dtype of its own: a fresh cache entry)
    with torch.inference_mode():
        lm.lars_update(torch.tensor(W, dtype=dtype), torch.tensor(G, dtype=dtype), 0.1)
    w = torch.tensor(W, dtype=dtype, requires_grad=True)
    g = torch.tensor(G, dtype=dtype, requires_grad=True)
    new = lm.lars_update(w, g, 0.1, stop_gradients=False)
    new.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    assert g.grad is not None and torch.isfinite(g.grad).all()
    np.testing.assert_allclose(to_numpy(new), reference_layer(W, G, 0.1), rtol=1e-12)


@pytest.mark.parametrize("kind", ["masked", "matrix"])
def test_numpy_subclasses_with_other_operators_are_refused(kind):
    """A masked array's norm counts its masked entries while its update skips them
    in some layouts; a matrix's ``*`` is a product: both are refused as arrays, with
    nothing written (a tree with out= was half-written)."""
    make = (
        (lambda a: np.ma.masked_array(a, mask=np.eye(*a.shape, dtype=bool)))
        if kind == "masked"
        else np.matrix
    )
    large = np.random.default_rng(0).standard_normal(LARGE).astype(np.float32)
    before = large.copy()
    params = [large, make(W.copy())]
    with pytest.raises(lm.LarsMultiTypeError, match=r"^w\[1\]: expected an array, got numpy\."):
        lm.lars_update(params, [large.copy(), make(G)], 0.1, out=params)
    np.testing.assert_array_equal(large, before)
    with pytest.raises(lm.LarsMultiTypeError, match=r"^dcdw: expected an array like w, got numpy\."):
        lm.lars_update(W.copy(), make(G), 0.1)


def test_numpy_subclasses_with_operations_of_their_own_are_refused():
    """An array subclass overriding NumPy's ufuncs (a units array) computes the step its
    own way: this one refuses out=, and failed after the earlier outputs had been
    written. Refused as an array, with nothing written."""

    class Refusing(np.ndarray):
        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            if "out" in kwargs:
                raise RuntimeError("no in-place ufuncs here")
            inputs = tuple(np.asarray(x) if isinstance(x, Refusing) else x for x in inputs)
            return getattr(ufunc, method)(*inputs, **kwargs)

    rng = np.random.default_rng(0)
    w = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(5)]
    g = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(5)]
    out = [x.copy() for x in w]
    out[-1] = out[-1].view(Refusing)
    before = [x.copy() for x in out]
    with pytest.raises(lm.LarsMultiTypeError, match=r"^out\[4\]: expected a numpy array like w\[4\]"):
        lm.lars_update(w, g, 0.1, out=out)
    for a, b in zip(before, out):
        np.testing.assert_array_equal(a, b)
    w[-1] = w[-1].view(Refusing)
    with pytest.raises(lm.LarsMultiTypeError, match=r"^w\[4\]: expected an array"):
        lm.lars_update(w, g, 0.1)


def test_numpy_empty_layers_can_be_written_in_place():
    """NumPy gives an empty array zero strides: nothing is shared, so out= is a no-op."""
    w = np.zeros((0, 3), np.float32)
    assert lm.lars_update(w, np.zeros((0, 3), np.float32), 0.1, out=w) is w
    other = np.zeros((0, 3), np.float32)
    assert lm.lars_update(w, np.zeros((0, 3), np.float32), 0.1, out=other) is other


@pytest.mark.parametrize("shape", [(1, 2), (2,), (300, 200), (LARGE,)])
@pytest.mark.parametrize("in_place", [False, True])
def test_numpy_infinite_gradient_gives_nan_whatever_the_layout(shape, in_place):
    """||g|| = inf gives r = 0, and w - 0 * inf is NaN where g is inf (as torch, and
    NumPy's ufuncs, give): BLAS axpy skips a zero coefficient, and left w as it was
    for vectors and large layers."""
    w = np.ones(shape, np.float32)
    g = np.ones(shape, np.float32)
    g.flat[0] = np.inf
    with np.errstate(invalid="ignore"):
        new = lm.lars_update(w, g, 0.1, out=w if in_place else None)
    assert np.isnan(new.flat[0])
    np.testing.assert_array_equal(new.flat[1:], 1.0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_scalar_weights_come_back_as_scalars(dtype):
    """The result has the types of w: a NumPy scalar gives a NumPy scalar of its dtype
    (it gave a 0-d array), alone and in a tree."""
    new = lm.lars_update(dtype(2.0), dtype(1.0), 0.1)
    assert type(new) is dtype
    tree = lm.lars_update({"a": dtype(2.0)}, {"a": dtype(1.0)}, 0.1)
    assert type(tree["a"]) is dtype
    want = 2.0 - 2.0 * 0.1 / (1.0 + 1e-12)
    np.testing.assert_allclose(float(new), want, rtol={np.float16: 1e-3, np.float32: 1e-7}.get(dtype, 1e-15))
    assert float(tree["a"]) == float(new)


def test_a_gradient_of_another_shape_in_a_tf_function_of_unknown_shapes_is_refused_when_it_runs():
    """Inside a ``tf.function`` whose shapes are partly unknown (``[None, 4]``), a (1, 4)
    gradient for (3, 4) weights was broadcast: the trust ratio took the norm of one row.
    Shapes known only when the graph runs are asserted in it."""
    require_backend("tensorflow")
    import tensorflow as tf

    spec = tf.TensorSpec([None, 4], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def step(w, g):
        return lm.lars_update(w, g, 0.1)

    w = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(step(w, np.full((3, 4), 0.5, np.float32)).numpy(), 0.9, rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"dcdw: expected the shape of w"):
        step(w, np.full((1, 4), 0.5, np.float32))


@pytest.mark.parametrize("out", ["other-variables", "out=w"])
@pytest.mark.parametrize("caller", ["lars_update", "optimizer"])
def test_a_failing_shape_assertion_in_a_tf_function_leaves_every_variable_as_it_was(out, caller):
    """A graph orders an assertion before no assignment of another variable by itself,
    so when the second layer's gradient failed its shape assertion, the first layer's
    output (and with ``out=w``, its weights) had already been written. Every assignment
    now waits on every shape assertion of the graph, whatever Grappler rewrites."""
    require_backend("tensorflow")
    import tensorflow as tf

    w = np.ones((3, 4), np.float32)
    weights = {"a": tf.Variable(w), "b": tf.Variable(w)}
    outs = weights if out == "out=w" else {k: tf.Variable(np.zeros_like(w)) for k in weights}
    opt = lm.optim.lars(0.1, momentum=0.9, trust_coefficient=1.0, preset="optax")
    state = opt.init(weights)
    spec = tf.TensorSpec([None, 4], tf.float32)

    @tf.function(input_signature=[spec, spec], autograph=False)
    def step(ga, gb):
        grads = {"a": ga, "b": gb}
        if caller == "lars_update":
            lm.lars_update(weights, grads, 0.1, out=outs)
        else:
            opt.step(weights, grads, state, out=outs)
        return ga

    before = {k: v.numpy().copy() for k, v in {**weights, **{f"out-{k}": v for k, v in outs.items()}}.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"b\W{0,6}\]: expected the shape of"):
        step(np.full((3, 4), 0.5, np.float32), np.full((1, 4), 0.5, np.float32))
    after = {k: v.numpy() for k, v in {**weights, **{f"out-{k}": v for k, v in outs.items()}}.items()}
    for key, values in before.items():
        np.testing.assert_array_equal(after[key], values, err_msg=key)
    for buffer in tf.nest.flatten(state.momentum):
        np.testing.assert_array_equal(buffer.numpy(), 0.0)
    step(np.full((3, 4), 0.5, np.float32), np.full((3, 4), 0.5, np.float32))  # (then it steps)
    assert not np.array_equal(outs["b"].numpy(), before["out-b"])


def test_torch_meta_and_empty_tensors_are_not_taken_for_shared_memory():
    """Storages holding no memory (a meta tensor's, an empty tensor's) all sit at
    address 0: they were taken as overlapping, and a step over two meta parameters was
    refused as "overlap in memory" (naming a momentum buffer the user never gave)."""
    require_backend("torch")
    import torch

    params = [torch.nn.Parameter(torch.empty(3, 3, device="meta")) for _ in range(2)]
    for p in params:
        p.grad = torch.empty(3, 3, device="meta")
    lm.torch.LARS(params, lr=0.1).step()  # a shape-only dry run, as the functional step is
    assert all(p.device.type == "meta" and p.shape == (3, 3) for p in params)
    ws = [torch.empty(3, device="meta"), torch.empty(4, device="meta")]
    grads = [torch.empty(3, device="meta"), torch.empty(4, device="meta")]
    assert [x.shape for x in lm.lars_update(ws, grads, 0.1, out=ws)] == [(3,), (4,)]
    empty = [torch.zeros(0), torch.zeros(0)]
    assert [x.numel() for x in lm.lars_update(empty, [torch.zeros(0), torch.zeros(0)], 0.1, out=empty)] == [
        0,
        0,
    ]


@pytest.mark.parametrize("caller", ["lars_update", "optimizer"])
def test_a_gradient_of_another_shape_is_refused_where_xla_compiles_a_graph_of_unknown_shapes(caller):
    """XLA (``tf.function(jit_compile=True)``) drops assertions, so a (1, 4) gradient for
    (3, 4) weights was broadcast there, and the outputs written. The check is now an
    ``AddN`` XLA compiles with the shapes known: a refusal before anything runs."""
    require_backend("tensorflow")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    weights = [tf.Variable(w), tf.Variable(w)]
    opt = lm.optim.lars(0.1, momentum=0.9, preset="optax")
    state = opt.init(weights)
    spec = tf.TensorSpec([None, 4], tf.float32)

    @tf.function(input_signature=[spec, spec], jit_compile=True)
    def step(ga, gb):
        if caller == "lars_update":
            return lm.lars_update(weights, [ga, gb], 0.1, out=weights)[0]
        return opt.step(weights, [ga, gb], state, out=weights)[0][0]

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected_the_shape_of_(w|params)_1"):
        step(np.full((3, 4), 0.5, np.float32), np.full((1, 4), 0.5, np.float32))
    for v in weights:
        np.testing.assert_array_equal(v.numpy(), w)
    good = rng.standard_normal((3, 4)).astype(np.float32)
    step(good, good)  # (then it steps, as eagerly)
    if caller == "lars_update":
        want = lm.lars_update([w, w], [good, good], 0.1)
    else:
        want, _ = opt.step([w, w], [good, good], opt.init([w, w]))
    for v, x in zip(weights, want):
        np.testing.assert_allclose(v.numpy(), x, rtol=1e-6, atol=1e-7)


def _state_steps(opt, ws, gs):
    """Three steps: from a fresh state, from a count read back from a file (NumPy),
    and one where no parameter has a gradient."""
    params, state = opt.step(ws, gs, opt.init(ws))
    params, state = opt.step(params, gs, state._replace(count=np.int32(1)))
    return opt.step(params, [None] * len(ws), state)


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_torch_state_is_made_beside_the_parameters_not_on_the_default_device(preset):
    """With ``torch.set_default_device("cuda")`` and parameters on the CPU, the step
    count (and timm's first-step flags) were made on the GPU, and the step refused
    them ("state.count: expected a 0-d array on cpu"). State is made on the
    parameters' device (here the meta device stands in for another default)."""
    require_backend("torch")
    import torch

    def run():
        ws = [torch.tensor(W, device="cpu"), torch.tensor(W[0], device="cpu")]
        gs = [torch.tensor(G, device="cpu"), torch.tensor(G[0], device="cpu")]
        return _state_steps(lm.optim.lars(0.1, weight_decay=1e-4, preset=preset), ws, gs)

    before = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        params, state = run()
    finally:
        torch.set_default_device(before)
    assert {x.device.type for x in optree.tree_leaves([params, state])} == {"cpu"}
    assert int(state.count) == 3
    want_params, want_state = run()
    for got, want in zip(optree.tree_leaves([params, state]), optree.tree_leaves([want_params, want_state])):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


def _underflowing_trees():
    """A float32 and a float16 layer whose steps underflow: float16 results rounded
    from float32, and a momentum product of a tiny gradient."""
    rng = np.random.default_rng(5)
    ws = {
        "a": rng.normal(size=(50, 20)).astype(np.float32),
        "b": rng.normal(size=(300, 300)).astype(np.float16),
    }
    gs = {
        "a": rng.normal(size=(50, 20)).astype(np.float32),
        "b": rng.normal(size=(300, 300)).astype(np.float16),
    }
    gs["a"][0, 0] = 1e-33
    return ws, gs


@pytest.mark.parametrize("entry", ["lars_update", "optim"])
def test_numpy_floating_point_error_settings_do_not_stop_a_step_halfway(entry):
    """Under ``np.seterr(all="raise")`` a step raised FloatingPointError on an
    underflow in a later layer, after earlier layers (and their momentum buffers)
    were written. The step's arithmetic ignores those settings, as the other
    backends have none: the same result as under NumPy's defaults."""

    def run(ws, gs):
        if entry == "lars_update":
            out = {k: np.zeros_like(v) for k, v in ws.items()}
            lm.lars_update(ws, gs, 0.1, out=out)
            return out
        opt = lm.optim.lars(0.01, momentum=0.9, weight_decay=1e-4, adapt_mask=True)
        state = opt.init(ws)
        for _ in range(2):
            ws, state = opt.step(ws, gs, state, out=ws)
        return {**ws, **{f"momentum {k}": v for k, v in state.momentum.items()}}

    want = run(*_underflowing_trees())
    trees = _underflowing_trees()  # (made under NumPy's defaults: float16 rounding underflows)
    with np.errstate(all="raise"):
        got = run(*trees)
        assert np.geterr()["under"] == "raise"  # (the caller's settings are as they were)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_lm_array_wraps_an_array_of_its_backend_without_a_copy(backend_name):
    """As documented (``np.asarray``, not ``np.array``): ``out=`` through the handle
    writes the array the caller gave."""
    require_backend(backend_name)
    given = native(backend_name, W.copy())
    w = lm.array(given)
    assert w.data is given
    w.lars_update(lm.array(native(backend_name, G)), 0.1, out=w)
    assert_layer_close(to_numpy(given), W, G, 0.1, 0.0, "float32")


def test_numpy_scratch_blocks_in_use_are_not_given_to_a_call_made_meanwhile():
    """A call made while a blocked multiply-add runs (a signal handler, a finalizer, in
    the same thread) took the same scratch blocks, and wrote over the outer call's
    values: 49 of 300 functional steps came out wrong with a timer signal."""
    from lars_multi.backends import numpy as backend

    dtype = np.dtype(np.float32)
    outer = backend._take_scratch(dtype)
    inner = backend._take_scratch(dtype)
    assert not np.shares_memory(outer, inner)
    backend._keep_scratch(dtype, inner)
    backend._keep_scratch(dtype, outer)
    assert backend._take_scratch(dtype) is outer  # (kept for the next call)
    backend._keep_scratch(dtype, outer)


def test_the_cache_of_layer_flags_is_bounded():
    """A flags entry per number of layers stepped (trees of changing sizes, layers
    dropped at random) was kept forever: 45 MiB after 2,000 sizes."""
    from lars_multi import _lars

    ws = [np.ones(2, np.float32) for _ in range(200)]
    for n in range(1, 201):
        lm.lars_update(ws[:n], ws[:n], 0.1)
    assert len(_lars._FLAGS) <= 64


def test_torch_dtensor_one_element_layer_norm_is_its_magnitude():
    """A one-element layer sharded as a DTensor (fully_shard shards every parameter on
    dim 0, a (1,) scale too): its norm was the all-reduced square (-inf beyond about
    1.8e19), where a plain tensor's is its magnitude."""
    out = _on_one_rank_mesh(
        "w, g = shard(torch.tensor([3e19])), shard(torch.tensor([3e18]))\n"
        "big, big_g = shard(torch.full((4, 2), 3.0)), shard(torch.full((4, 2), 1.0))\n"
        "new = lm.lars_update([w, big], [g, big_g], 0.1)\n"
        "print(float(new[0].full_tensor()[0]), float(new[1].full_tensor()[0, 0]))\n"
    )
    one, other = map(float, out.split())
    assert one == pytest.approx(3e19 - 0.1 * 10 * 3e18, rel=1e-6)
    assert other == pytest.approx(3.0 - 0.1 * 3.0, rel=1e-6)


def test_jax_arrays_donated_before_a_call_raise_jaxs_error_on_every_call():
    """A donated (deleted) array raised JAX's RuntimeError only where the step was traced
    anew: once a program was compiled for its shapes, XLA's bare ValueError (Invalid
    buffer passed to Execute()). Nothing is written either way."""
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    w, g = jnp.asarray(W), jnp.asarray(G)
    lm.lars_update(w, g, 0.1)  # (the program for these shapes is compiled)
    opt = lm.optim.lars(0.1)
    state = opt.init({"w": w})
    opt.step({"w": w}, {"w": g}, state)
    for donated_arg in ("w", "g", "grads"):
        donated = jnp.asarray(W)
        jax.jit(lambda x: x * 2, donate_argnums=0)(donated)
        assert donated.is_deleted()
        with pytest.raises(RuntimeError, match=r"^Array has been deleted"):
            if donated_arg == "w":
                lm.lars_update(donated, g, 0.1)
            elif donated_arg == "g":
                lm.lars_update(w, donated, 0.1)
            else:
                opt.step({"w": w}, {"w": donated}, state)


def _mutable(backend_name, values):
    """Weights a step could write in place: a tf.Variable on TensorFlow."""
    if backend_name == "tensorflow":
        import tensorflow as tf

        return tf.Variable(values)
    return native(backend_name, values)


@pytest.mark.parametrize("no_gradient_at_all", [False, True])
def test_a_frozen_layers_output_handle_keeps_an_array_of_its_own(backend_name, no_gradient_at_all):
    """A layer without a gradient has its weights copied into its output; an lm.Array output
    was then given the weights' array itself (NumPy, torch, a tf.Variable: the next update
    with out= that handle wrote the weights; JAX: the next one donated them)."""
    wa, wb = np.array([3.0, 1.0, 5.0], np.float32), np.array([1.0, 2.0], np.float32)
    ga, gb = np.array([0.3, 0.1, 0.2], np.float32), np.array([0.5, 0.1], np.float32)
    w = {"a": _mutable(backend_name, wa), "b": _mutable(backend_name, wb)}
    zeros = (native(backend_name, np.zeros(3, np.float32)), native(backend_name, np.zeros(2, np.float32)))
    trial = lm.Container(a=lm.Array(zeros[0]), b=lm.Array(zeros[1]))
    first = {"a": None if no_gradient_at_all else native(backend_name, ga), "b": None}
    lm.lars_update(w, first, 0.1, out=trial)
    np.testing.assert_array_equal(to_numpy(trial.b.data), wb)
    assert trial.b.data is not w["b"] or backend_name == "jax"  # (JAX's arrays cannot change: shared)
    lm.lars_update(w, {"a": native(backend_name, ga), "b": native(backend_name, gb)}, 0.1, out=trial)
    np.testing.assert_array_equal(to_numpy(w["a"]), wa)
    np.testing.assert_array_equal(to_numpy(w["b"]), wb)  # (the weights, never named as out)
    assert_layer_close(trial.b.data, wb, gb, 0.1, 0.0, "float32")


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_an_output_handle_keeps_its_array_where_the_write_waits(backend_name):
    """A handle given as out whose array shares memory with the weights (a view, or
    another tensor on a parameter's storage) is written once every layer is computed;
    the handle was then given the new array, a temporary, so later updates through it
    never reached the caller's array."""
    require_backend(backend_name)
    x = native(backend_name, W.copy())
    view = x[:]
    w, out = lm.Array(x), lm.Array(view)
    expected = W.astype(np.float64)
    for _ in range(3):
        lm.lars_update(w, native(backend_name, G), 0.1, out=out)
        assert out.data is view
        expected = reference_layer(expected, G, 0.1, 0.0)
    np.testing.assert_allclose(to_numpy(x), expected, rtol=1e-5)


def test_jax_outputs_that_only_share_the_weights_arrays_donate_nothing():
    """JAX's arrays are replaced, and the weights' buffers donated where out= hands them
    over. Another Container holding the same arrays (copy.copy), or another handle on the
    same array, had them donated: the weights, never named as out, were deleted."""
    require_backend("jax")
    import copy

    import jax.numpy as jnp

    c = lm.Container(a=jnp.asarray(W), b=jnp.asarray(G))
    g = {"a": jnp.asarray(G), "b": jnp.asarray(W)}
    other = copy.copy(c)
    lm.lars_update(c, g, 0.1, out=other)
    np.testing.assert_array_equal(np.asarray(c.a), W)  # (was deleted)
    assert_layer_close(other.a, W, G, 0.1, 0.0, "float32")
    x = jnp.asarray(W)
    h1, h2 = lm.Array(x), lm.Array(x)
    h1.lars_update(jnp.asarray(G), 0.1, out=h2)
    np.testing.assert_array_equal(np.asarray(h1.data), W)
    lm.lars_update(c, g, 0.1, out=c)  # (out=w: its buffers may be donated, and c takes the new ones)
    assert_layer_close(c.a, W, G, 0.1, 0.0, "float32")


@pytest.mark.parametrize("backend_name", ["jax", "tensorflow"])
def test_one_container_entry_reached_twice_in_out_takes_one_result_or_is_refused(backend_name):
    """An lm.Container (or a list in one) given as out holds JAX's and TensorFlow's arrays,
    which cannot be written: each entry takes its result. A sub-Container or list reached
    at two places (tied blocks) got two handles on one entry, and kept the last result
    silently; it is refused where the two results differ, as one array given twice is."""
    require_backend(backend_name)
    a, b = W, W[::-1].copy()
    for tied in ("container", "list"):
        zero = native(backend_name, np.zeros_like(W))
        inner = lm.Container(k=zero) if tied == "container" else [zero]
        out = lm.Container(x=inner, y=inner)

        def tree(x, y, tied=tied):
            return {"x": {"k": x}, "y": {"k": y}} if tied == "container" else {"x": [x], "y": [y]}

        w = tree(native(backend_name, a), native(backend_name, b))
        with pytest.raises(
            lm.LarsMultiValueError, match=r"are the same array, and the step gives them different"
        ):
            lm.lars_update(w, tree(native(backend_name, G), native(backend_name, G)), 0.1, out=out)
        assert (inner["k"] if tied == "container" else inner[0]) is zero  # (nothing written)
        same = tree(native(backend_name, a), native(backend_name, a))
        lm.lars_update(same, tree(native(backend_name, G), native(backend_name, G)), 0.1, out=out)
        assert_layer_close(inner["k"] if tied == "container" else inner[0], a, G, 0.1, 0.0, "float32")


def test_another_threads_torch_compile_leaves_this_threads_checks_on():
    """torch.compiler.is_compiling() reads one flag for the whole process: while any
    thread compiled, every eager call elsewhere skipped its memory checks, so a
    gradient lying in another layer's weights was read after those were written, and
    tied views with different results were written silently."""
    require_backend("torch")
    import threading

    import torch

    lm.lars_update(torch.ones(2), torch.ones(2), 0.1)  # the torch backend loaded
    inside, finish = threading.Event(), threading.Event()

    def waiting_backend(graph_module, example_inputs):
        inside.set()
        finish.wait(60)
        return graph_module.forward

    compiling = threading.Thread(
        target=lambda: torch.compile(lambda x: x * 2, backend=waiting_backend)(torch.ones(3))
    )
    compiling.start()
    try:
        assert inside.wait(60)
        memory = np.arange(1.0, 9.0).reshape(2, 4)
        w = {"a": memory[0], "b": memory[1]}
        g = {"a": memory[1], "b": memory[0]}  # each gradient is the other layer's weights
        want = lm.lars_update({k: v.copy() for k, v in w.items()}, {k: v.copy() for k, v in g.items()}, 0.1)
        lm.lars_update(w, g, 0.1, out=w)
        for key in w:
            np.testing.assert_array_equal(w[key], want[key])
        tied = np.arange(1.0, 7.0).reshape(2, 3)
        with pytest.raises(lm.LarsMultiValueError, match="overlap in memory"):
            lm.lars_update(
                {"enc": tied, "dec": tied.T},
                {"enc": np.ones((2, 3)), "dec": np.full((3, 2), 5.0)},
                0.1,
                out={"enc": tied, "dec": tied.T},
            )
        with lm.using_backend("torch"):
            assert lm.array([1.0]).backend == "torch"
    finally:
        finish.set()
        compiling.join(60)


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
@pytest.mark.parametrize("layout", ["block-of-a-fused-weight", "slice-with-a-step", "expanded-gradient"])
def test_a_large_layers_step_does_not_depend_on_its_layout(backend_name, layout):
    """A million-element layer with gaps between its elements (a block of a fused weight, a
    slice with a step) or a gradient with a stride of 0 is stepped as its contiguous copy
    is, to a rounding of the norms: before, torch reduced such a view with vector_norm,
    whose float32 sum erred by 8e-5 here (2e-3 on nine million elements)."""
    require_backend(backend_name)
    rng = np.random.default_rng(5)
    n = 1024
    fused = native(backend_name, rng.standard_normal((n, 3 * n)).astype(np.float32))
    row = native(backend_name, rng.standard_normal((1, n)).astype(np.float32))
    g = native(backend_name, rng.standard_normal((n, n)).astype(np.float32))
    w = fused[:, n : 2 * n] if layout == "block-of-a-fused-weight" else fused[:, ::3]
    if layout == "expanded-gradient":
        w = native(backend_name, to_numpy(w))
        g = np.broadcast_to(row, (n, n)) if backend_name == "numpy" else row.expand(n, n)
    w64, g64 = to_numpy(w).astype(np.float64), to_numpy(g).astype(np.float64)
    expected = w64 - (np.linalg.norm(w64) * 0.1 / np.linalg.norm(g64)) * g64
    step = expected - w64
    opt = lm.optim.lars(0.1, momentum=0.0, trust_coefficient=1.0)
    for got in (lm.lars_update(w, g, 0.1), opt.step({"w": w}, {"w": g}, opt.init({"w": w}))[0]["w"]):
        moved = to_numpy(got).astype(np.float64) - w64
        assert np.abs(moved - step).max() <= 1e-5 * np.abs(step).max()


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
@pytest.mark.parametrize("entry", ["lars_update", "optim"])
def test_two_objects_over_the_same_elements_are_one_array(backend_name, entry):
    """Tied weights as ``model.state_dict()`` holds them: two objects over the same elements,
    laid out alike. With one gradient they are one array, stepped once (before, refused as
    two outputs that "overlap in memory"); with two gradients that disagree, refused as the
    same array given two results, nothing written."""
    require_backend(backend_name)
    w = native(backend_name, W)
    twin = w.view() if backend_name == "numpy" else w.detach()
    alone = native(backend_name, W)
    g, other = native(backend_name, G), native(backend_name, G[::-1].copy())
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-3)

    def step(tree, grads, state):
        if entry == "lars_update":
            lm.lars_update(tree, grads, 0.1, decay_lambda=1e-3, out=tree)
            return None
        return opt.step(tree, grads, state, out=tree)[1]

    tied, single = {"emb": w, "out": twin}, {"emb": alone}
    states = (opt.init(tied), opt.init(single)) if entry == "optim" else (None, None)
    for _ in range(2):
        states = (step(tied, {"emb": g, "out": g}, states[0]), step(single, {"emb": g}, states[1]))
        np.testing.assert_array_equal(to_numpy(w), to_numpy(alone))
    before = to_numpy(w)
    with pytest.raises(lm.LarsMultiValueError, match=r"are the same array, and the step gives them"):
        step(tied, {"emb": g, "out": other}, states[0])
    np.testing.assert_array_equal(to_numpy(w), before)


def test_numpy_a_layers_step_does_not_depend_on_its_neighbours_dtype_object():
    """An array restored by pickle has a float32 dtype equal to, but not the same object as,
    a fresh array's: the layers of a batch led by it took another path (ufuncs, not BLAS),
    and a fresh layer beside it stepped up to 13 ulp away from itself alone."""
    import pickle

    rng = np.random.default_rng(0)
    conv, g_conv = (rng.standard_normal((8, 8)).astype(np.float32) for _ in range(2))
    bias, g_bias = (rng.standard_normal(1000).astype(np.float32) for _ in range(2))
    restored = pickle.loads(pickle.dumps(conv))
    assert restored.dtype == conv.dtype and restored.dtype is not conv.dtype
    alone = lm.lars_update([bias], [g_bias], 0.1)[0]
    np.testing.assert_array_equal(lm.lars_update([restored, bias], [g_conv, g_bias], 0.1)[1], alone)
    tree = [restored, bias.copy()]
    lm.lars_update(tree, [g_conv, g_bias], 0.1, out=tree)
    fresh = [conv.copy(), bias.copy()]
    lm.lars_update(fresh, [g_conv, g_bias], 0.1, out=fresh)
    np.testing.assert_array_equal(tree[1], fresh[1])


def test_out_on_a_tree_as_deep_as_optree_takes():
    """A tree 900 lists deep: ``out=`` raised Python's RecursionError from about 490 levels
    (the check for an ``lm.Container`` among the nodes recursed), where the functional call
    and optree take about 1,000."""

    def deep(leaf):
        for _ in range(900):
            leaf = [leaf]
        return leaf

    w, g = deep(np.ones(3, np.float32)), deep(np.full(3, 0.5, np.float32))
    expected = lm.lars_update(w, g, 0.1)
    assert lm.lars_update(w, g, 0.1, out=w) is w
    for _ in range(900):
        expected, w = expected[0], w[0]
    np.testing.assert_array_equal(w, expected)


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_a_layer_without_a_gradient_that_is_its_own_output_is_not_written_through_an_overlap(backend_name):
    """out=w, layer 1 without a gradient (kept as it is) sharing elements with layer 0's
    output: refused with both named and nothing written, as lm.optim refuses it (lars_update
    wrote layer 0's result into the shared elements)."""
    require_backend(backend_name)
    buf = native(backend_name, np.random.default_rng(0).standard_normal(100).astype(np.float32))
    w = [buf[:60].reshape(6, 10), buf[40:].reshape(6, 10)]
    g = [native(backend_name, np.full((6, 10), 0.5, np.float32)), None]
    before = to_numpy(buf)
    with pytest.raises(lm.LarsMultiValueError, match=r"^out\[0\] and w\[1\] share memory"):
        lm.lars_update(w, g, 0.1, out=w)
    np.testing.assert_array_equal(to_numpy(buf), before)


def test_torch_optimizer_state_laid_out_otherwise_is_refused_at_load():
    """A state saved over plain parameters, loaded into an lm.torch.LARS over DTensors: it
    was accepted (torch casts and moves a buffer, never shards it), and every later step
    was refused, pointing at a load that could not fix it. Refused at the load, naming the
    layouts; a state saved over the same DTensors loads and steps on."""
    script = """
w0, g0 = torch.randn(6, 4), torch.randn(6, 4) * 0.1
plain = torch.nn.Parameter(w0.clone())
plain.grad = g0.clone()
saved_plain = lm.torch.LARS([plain], lr=0.1, momentum=0.9)
saved_plain.step()
p = torch.nn.Parameter(shard(w0))
p.grad = shard(g0)
opt = lm.torch.LARS([p], lr=0.1, momentum=0.9)
try:
    opt.load_state_dict(saved_plain.state_dict())
    print("loaded")
except lm.LarsMultiValueError as e:
    print(str(e))
print("no state", len(opt.state) == 0)
opt.step()
other = lm.torch.LARS([p], lr=0.1, momentum=0.9)
other.load_state_dict(opt.state_dict())
other.step()
print("steps on", type(other.state[p]["momentum_buffer"]).__name__)
dist.destroy_process_group()
"""
    expected = [
        r"state_dict\['state'\]\[0\]\['momentum_buffer'\]: expected a tensor laid out as "
        r"param_groups\[0\]\['params'\]\[0\] \(a torch.DTensor on .*\), got a plain torch.Tensor; .*"
        r"set_optimizer_state_dict",
        "no state True",
        "steps on DTensor",
    ]
    _assert_lines_match(_on_one_rank_mesh(script).splitlines(), expected)
