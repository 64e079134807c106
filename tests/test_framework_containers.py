"""What practitioners hand lars_multi: Keras 3 variables, flax / nnx / equinox
pytrees, ``None`` gradients, sparse gradients and ``tf.function``."""

from __future__ import annotations

import importlib.util
import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import (
    assert_layer_close,
    backends_to_test,
    native,
    reference_layer,
    require_backend,
    run_python,
    to_numpy,
)

import lars_multi as lm

W = np.array([[3.0, 1.0, 5.0], [7.0, 2.0, 9.0]], dtype=np.float32)
G = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]], dtype=np.float32)
W2 = np.array([1.5, -2.0, 0.5], dtype=np.float32)
G2 = np.array([0.05, 0.2, -0.1], dtype=np.float32)


# --- Keras 3: model.trainable_variables, on each Keras backend ------------------------------

# Defines ``check()``: one LARS step on a small model's trainable variables with the
# gradients of the active Keras backend, functional and with out= the variables.
# Run in-process (tensorflow) or in a fresh interpreter with KERAS_BACKEND set.
KERAS_SCRIPT = r"""
import numpy as np
import keras
import lars_multi as lm


def _ref(w, g, lr, decay):
    w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
    wn, gn = np.sqrt((w * w).sum()), np.sqrt((g * g).sum())
    rate = wn * lr / (gn + 1e-12)
    if decay > 0:
        if wn == 0:
            return w.copy()  # a zero layer (a fresh bias) stays zero
        rate /= wn * decay
    return w - rate * g


def _np(x):
    return np.array(keras.ops.convert_to_numpy(x), dtype=np.float64)


def check():
    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    # the last bias starts at zero: a zero-norm layer
    layers = [keras.layers.Dense(3, bias_initializer="random_normal"), keras.layers.Dense(2)]
    model = keras.Sequential([keras.Input((4,)), *layers])
    x = np.random.RandomState(0).randn(6, 4).astype("float32")
    y = np.random.RandomState(1).randn(6, 2).astype("float32")
    variables = model.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        grads = tape.gradient(loss, variables)
        native = tf.Tensor
    elif backend == "jax":
        import jax

        def loss(values):
            pred, _ = model.stateless_call(values, [], x)
            return jax.numpy.mean((pred - y) ** 2)

        grads = jax.grad(loss)([v.value for v in variables])
        native = jax.Array
    else:
        import torch

        pred = model(x)  # on keras's device: the GPU where there is one
        loss = ((pred - torch.as_tensor(y, device=pred.device)) ** 2).mean()
        loss.backward()
        grads = [v.value.grad for v in variables]
        native = torch.Tensor
    before = [_np(v) for v in variables]
    g64 = [_np(g) for g in grads]
    result = {"backend": backend, "n": len(variables), "grad_types": [type(g).__name__ for g in grads]}

    new = lm.lars_update(variables, grads, 0.1)
    result["functional_list"] = type(new) is list
    result["functional_native"] = all(
        isinstance(n, native) and not isinstance(n, keras.Variable) for n in new
    )
    result["functional_err"] = max(
        float(np.abs(_np(n) - _ref(w, g, 0.1, 0.0)).max()) for n, w, g in zip(new, before, g64)
    )
    result["functional_left_vars"] = all(np.array_equal(_np(v), w) for v, w in zip(variables, before))

    ids = [id(v) for v in variables]
    returned = lm.lars_update(variables, grads, 0.1, decay_lambda=0.3, out=variables)
    want = [_ref(w, g, 0.1, 0.3) for w, g in zip(before, g64)]
    result["out_returned"] = returned is variables
    result["out_err"] = max(float(np.abs(_np(v) - r).max()) for v, r in zip(variables, want))
    result["same_objects"] = [id(v) for v in variables] == ids and [
        id(v) for v in model.trainable_variables
    ] == ids
    result["model_err"] = max(
        float(np.abs(_np(model.layers[0].kernel) - want[0]).max()),
        float(np.abs(_np(model.layers[1].bias) - want[3]).max()),
    )
    pred = _np(model(x))
    manual = (x.astype(np.float64) @ want[0] + want[1]) @ want[2] + want[3]
    result["predict_err"] = float(np.abs(pred - manual).max())
    return result
"""


def _check_keras_result(result, backend):
    assert result["backend"] == backend
    assert result["n"] == 4
    assert result["functional_list"] and result["functional_native"], result
    assert result["functional_err"] < 1e-5, result
    assert result["functional_left_vars"], result
    assert result["out_returned"] and result["same_objects"], result
    assert result["out_err"] < 1e-5, result
    assert result["model_err"] < 1e-5, result
    assert result["predict_err"] < 1e-4, result


KERAS_SUBPROCESS_BACKENDS = ("jax", "torch")


@pytest.fixture(scope="module")
def keras_runs():
    """One fresh interpreter per other Keras backend, started at once in threads so
    that they run while the in-process tests do; ``{backend: future of its stdout}``."""
    if importlib.util.find_spec("keras") is None:
        yield {}
        return
    script = KERAS_SCRIPT + "\nimport json\nprint('RESULT ' + json.dumps(check()))\n"
    names = [n for n in KERAS_SUBPROCESS_BACKENDS if n in backends_to_test()]
    with ThreadPoolExecutor(max(1, len(names))) as pool:
        yield {n: pool.submit(run_python, script, KERAS_BACKEND=n, TF_CPP_MIN_LOG_LEVEL="3") for n in names}


def test_keras_tensorflow_backend_trainable_variables(keras_runs):
    require_backend("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"keras runs on {keras.backend.backend()} in this process")
    namespace: dict = {}
    exec(KERAS_SCRIPT, namespace)
    _check_keras_result(namespace["check"](), "tensorflow")


# --- JAX pytrees: flax FrozenDict, nnx.State, equinox modules ------------------------------


def _flax_params():
    import jax.numpy as jnp
    from flax.core import freeze

    rng = np.random.RandomState(0)
    params = {
        "dense": {"kernel": rng.randn(3, 2), "bias": rng.randn(2)},
        "out": {"kernel": rng.randn(2, 1)},
    }
    grads = {
        "dense": {"kernel": 0.1 * rng.randn(3, 2), "bias": 0.1 * rng.randn(2)},
        "out": {"kernel": 0.1 * rng.randn(2, 1)},
    }
    to_jax = lambda tree: {k: {n: jnp.asarray(v, jnp.float32) for n, v in d.items()} for k, d in tree.items()}  # noqa: E731
    return freeze(to_jax(params)), freeze(to_jax(grads))


def _assert_flax_result(new, params, grads, decay=0.0):
    from flax.core import FrozenDict

    assert type(new) is FrozenDict
    # (jax rebuilds a FrozenDict with its keys sorted, as jax.tree_util.tree_map does)
    assert set(new) == set(params) and all(set(new[k]) == set(params[k]) for k in params)
    for layer in params:
        for name in params[layer]:
            w, g = to_numpy(params[layer][name]), to_numpy(grads[layer][name])
            assert_layer_close(new[layer][name], w, g, 0.1, decay, "float32")


def test_flax_frozendict_params_and_grads():
    require_backend("jax")
    pytest.importorskip("flax")
    params, grads = _flax_params()
    _assert_flax_result(lm.lars_update(params, grads, 0.1), params, grads)
    # grads as a plain dict, keys in another order: paired by key
    reordered = {
        "out": {"kernel": grads["out"]["kernel"]},
        "dense": {"bias": grads["dense"]["bias"], "kernel": grads["dense"]["kernel"]},
    }
    _assert_flax_result(lm.lars_update(params, reordered, 0.1), params, grads)


def test_flax_frozendict_under_jit():
    require_backend("jax")
    pytest.importorskip("flax")
    import jax

    params, grads = _flax_params()
    new = jax.jit(lambda p, g: lm.lars_update(p, g, 0.1))(params, grads)
    _assert_flax_result(new, params, grads)
    step = jax.jit(lambda p, g, lr, d: lm.lars_update(p, g, lr, decay_lambda=d))
    for decay in (0.0, 0.5):
        eager = lm.lars_update(params, grads, 0.1, decay_lambda=decay)
        traced = step(params, grads, 0.1, decay)
        _assert_flax_result(traced, params, grads, decay)
        for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(traced)):
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-7)


def test_nnx_state_with_nnx_grad():
    require_backend("jax")
    pytest.importorskip("flax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(3, 4, rngs=rngs)
            self.l2 = nnx.Linear(4, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    model = Model(nnx.Rngs(0))
    x = jnp.asarray(np.random.RandomState(0).randn(5, 3), jnp.float32)
    _, state = nnx.split(model, nnx.Param)
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    before = {k: {n: to_numpy(state[k][n][...]) for n in ("kernel", "bias")} for k in ("l1", "l2")}
    gs = {k: {n: to_numpy(grads[k][n][...]) for n in ("kernel", "bias")} for k in ("l1", "l2")}

    new = lm.lars_update(state, grads, 0.1)
    assert type(new) is nnx.State
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)
    nnx.update(model, new)
    for k in ("l1", "l2"):
        for n in ("kernel", "bias"):
            assert_layer_close(new[k][n][...], before[k][n], gs[k][n], 0.1, 0.0, "float32")
            assert_layer_close(
                getattr(getattr(model, k), n)[...], before[k][n], gs[k][n], 0.1, 0.0, "float32"
            )


def test_equinox_mlp_with_filter_grad():
    require_backend("jax")
    eqx = pytest.importorskip("equinox")
    import jax
    import jax.numpy as jnp

    mlp = eqx.nn.MLP(3, 2, 4, 2, key=jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.RandomState(0).randn(5, 3), jnp.float32)
    grads = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2))(mlp)
    assert grads.activation is None
    new = lm.lars_update(mlp, grads, 0.1)
    assert type(new) is type(mlp)
    assert new.activation is mlp.activation and new.final_activation is mlp.final_activation
    for layer, old, g in zip(new.layers, mlp.layers, grads.layers):
        assert_layer_close(layer.weight, to_numpy(old.weight), to_numpy(g.weight), 0.1, 0.0, "float32")
        assert_layer_close(layer.bias, to_numpy(old.bias), to_numpy(g.bias), 0.1, 0.0, "float32")


def test_a_path_mask_compares_an_equinox_modules_attribute_names_as_strings():
    """A mask ``(path, array) -> bool`` testing ``path[-1] != "bias"`` matched nothing on an
    equinox module, whose entries were attribute objects, never equal to a name: its biases
    were decayed, silently. Attribute entries are strings equal to their names now."""
    require_backend("jax")
    eqx = pytest.importorskip("equinox")
    import jax
    import jax.numpy as jnp

    mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.RandomState(0).randn(5, 3), jnp.float32)
    params = eqx.filter(mlp, eqx.is_array)
    grads = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2))(mlp)
    grads = eqx.filter(grads, eqx.is_array)
    seen = []

    def not_bias(path, array):
        seen.append(path)
        return path[-1] != "bias"

    def by_tree(tree):  # (the same choice, as a tree of bools: optax's kind of mask)
        return jax.tree.map(lambda p: p.ndim > 1, tree)

    results = []
    for mask in (not_bias, by_tree, None):
        opt = lm.optim.lars(0.5, momentum=0.9, weight_decay=0.5, weight_decay_mask=mask, preset="optax")
        new, _ = opt.step(params, grads, opt.init(params))
        results.append(new)
    assert seen[1] == ("layers", 0, "bias") and seen[1][0] == "layers"
    for by_path, by_bools in zip(*(jax.tree.leaves(r) for r in results[:2])):
        np.testing.assert_array_equal(by_path, by_bools)
    assert not np.array_equal(results[0].layers[0].bias, results[2].layers[0].bias)
    assert repr(seen[0][0]) == "Attribute('layers')"


# --- a None gradient leaves its parameter unchanged, on every backend ----------------------


def _writable(backend, values):
    """An ``out`` target of ``backend`` holding ``values``."""
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.Variable(values)
    if backend == "jax":
        return lm.Array(native("jax", values), "jax")
    return native(backend, values)


def test_none_gradient_leaves_parameter_unchanged(backend):
    w = {"a": native(backend, W), "b": native(backend, W2)}
    g = {"a": native(backend, G), "b": None}
    new = lm.lars_update(w, g, 0.1, decay_lambda=0.5)
    assert list(new) == ["a", "b"]
    assert_layer_close(new["a"], W, G, 0.1, 0.5, "float32")
    np.testing.assert_array_equal(to_numpy(new["b"]), W2)
    np.testing.assert_array_equal(to_numpy(w["a"]), W)

    out = {"a": _writable(backend, np.zeros_like(W)), "b": _writable(backend, np.zeros_like(W2))}
    targets = dict(out)
    assert lm.lars_update(w, g, 0.1, decay_lambda=0.5, out=out) is out
    assert all(out[k] is targets[k] for k in out)
    assert_layer_close(out["a"], W, G, 0.1, 0.5, "float32")
    np.testing.assert_array_equal(to_numpy(out["b"]), W2)

    # out=w: the weights themselves, written in place (jax: lm.Array handles)
    w = {"a": _writable(backend, W), "b": _writable(backend, W2)}
    b_before = w["b"]
    assert lm.lars_update(w, g, 0.1, decay_lambda=0.5, out=w) is w
    assert w["b"] is b_before
    assert_layer_close(w["a"], W, G, 0.1, 0.5, "float32")
    np.testing.assert_array_equal(to_numpy(w["b"]), W2)


# --- sparse gradients: tf.IndexedSlices densified, torch sparse rejected ---------------------


def test_tf_indexed_slices_gradient_is_densified():
    require_backend("tensorflow")
    import tensorflow as tf

    table = tf.Variable(np.arange(15, dtype=np.float32).reshape(5, 3) / 7.0 + 0.5)
    dense_w = tf.Variable(W2)
    with tf.GradientTape() as tape:
        rows = tf.gather(table, [0, 3, 3])
        loss = tf.reduce_sum(rows * rows) + tf.reduce_sum(dense_w * G2)
    g_table, g_dense = tape.gradient(loss, [table, dense_w])
    assert isinstance(g_table, tf.IndexedSlices)
    dense = tf.convert_to_tensor(g_table)
    w = {"emb": tf.constant(table), "w": tf.constant(dense_w)}
    got = lm.lars_update(w, {"emb": g_table, "w": g_dense}, 0.1, decay_lambda=0.2)
    want = lm.lars_update(w, {"emb": dense, "w": g_dense}, 0.1, decay_lambda=0.2)
    np.testing.assert_array_equal(to_numpy(got["emb"]), to_numpy(want["emb"]))
    assert_layer_close(got["emb"], to_numpy(table), to_numpy(dense), 0.1, 0.2, "float32")
    # a single array and the variables as out=
    single = lm.lars_update(w["emb"], g_table, 0.1)
    assert_layer_close(single, to_numpy(table), to_numpy(dense), 0.1, 0.0, "float32")
    before = to_numpy(table)
    lm.lars_update([table, dense_w], [g_table, g_dense], 0.1, out=[table, dense_w])
    assert_layer_close(table, before, to_numpy(dense), 0.1, 0.0, "float32")
    # slices without a dense_shape take their weights' shape, as in Keras' optimizers (they
    # were refused); rows of another shape are refused, named
    shapeless = tf.IndexedSlices(g_table.values, g_table.indices)
    got = lm.lars_update(w, {"emb": shapeless, "w": g_dense}, 0.1, decay_lambda=0.2)
    np.testing.assert_array_equal(to_numpy(got["emb"]), to_numpy(want["emb"]))
    wide = tf.IndexedSlices(tf.ones((2, 4)), tf.constant([0, 2]))
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^dcdw\['emb'\]: expected an array like w\['emb'\], got .*IndexedSlices"
    ):
        lm.lars_update(w, {"emb": wide, "w": g_dense}, 0.1)


@pytest.mark.parametrize("row", [-1, 3])
def test_tf_indexed_slices_with_a_row_outside_the_weights_are_refused(row):
    """Densifying slices drops a row at a negative index silently (and fails on one past
    the end with TensorFlow's error): the step was that of the other rows alone. Refused,
    named, eagerly; in a tf.function by an assertion every assignment waits on."""
    require_backend("tensorflow")
    import tensorflow as tf

    table = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
    values, indices = tf.constant([[1.0, 0.0], [0.0, 1.0]]), tf.constant([0, row])
    slices = tf.IndexedSlices(values, indices, tf.constant([3, 2]))
    variables = [tf.Variable(W2), tf.Variable(table)]
    refused = rf"^dcdw\[1\]: expected row indices in \[0, 3\), got {row}$"
    with pytest.raises(lm.LarsMultiValueError, match=refused):
        lm.lars_update(variables, [tf.constant(G2), slices], 0.1, out=variables)

    @tf.function
    def step(values: tf.Tensor, indices: tf.Tensor) -> None:
        g = tf.IndexedSlices(values, indices, tf.constant([3, 2]))
        lm.lars_update(variables, [tf.constant(G2), g], 0.1, out=variables)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a row index outside \[0, rows\)"):
        step(values, indices)
    np.testing.assert_array_equal(variables[0].numpy(), W2)
    np.testing.assert_array_equal(variables[1].numpy(), table)
    step(values, tf.constant([0, 2]))  # (rows inside: the dense gradient's step)
    dense = np.zeros_like(table)
    dense[0, 0], dense[2, 1] = 1, 1
    assert_layer_close(variables[1], table, dense, 0.1, 0.0, "float32")


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
def test_torch_sparse_gradient_is_rejected_with_its_path():
    require_backend("torch")
    import torch

    torch.manual_seed(0)
    emb = torch.nn.Embedding(5, 3, sparse=True)
    lin = torch.nn.Linear(3, 1)
    loss = lin(emb(torch.tensor([0, 3, 3]))).sum()
    loss.backward()
    assert emb.weight.grad.layout == torch.sparse_coo
    w = {"emb": emb.weight, "lin": lin.weight}
    g = {"emb": emb.weight.grad, "lin": lin.weight.grad}
    before = {k: v.detach().clone() for k, v in w.items()}
    for out in (None, w):
        with pytest.raises(lm.LarsMultiTypeError, match=r"dcdw\['emb'\].*sparse") as info:
            lm.lars_update(w, g, 0.1, out=out)
        assert isinstance(info.value, TypeError)
        for k in w:
            assert torch.equal(w[k].detach(), before[k])
    coo = torch.sparse_coo_tensor([[0, 1], [2, 0]], [1.0, 2.0], (2, 3))
    with pytest.raises(lm.LarsMultiTypeError, match=r"^dcdw\b.*sparse"):
        lm.lars_update(torch.tensor(W), coo, 0.1)
    # a nested gradient raised torch's "NestedTensorImpl doesn't support sizes"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's nested tensors are a prototype)
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    for w, g in ((torch.ones(2), nested), ({"a": torch.ones(2)}, {"a": nested})):
        with pytest.raises(lm.LarsMultiTypeError, match=r"^dcdw\S*: expected a dense array .*got a nested"):
            lm.lars_update(w, g, 0.1)


# --- tf.function: typed errors, traced hyper-parameters -----------------------------------


def test_tf_function_shape_mismatch_raises_value_error_itself():
    require_backend("tensorflow")
    import tensorflow as tf

    @tf.function
    def step(w, g):
        return lm.lars_update({"a": w}, {"a": g}, 0.1)

    with pytest.raises(lm.LarsMultiValueError, match=r"dcdw\['a'\].*shape") as info:
        step(tf.constant(W), tf.constant(G[:, :2]))
    assert type(info.value) is lm.LarsMultiValueError


def test_tf_function_traced_lr_and_decay_match_eager():
    require_backend("tensorflow")
    import tensorflow as tf

    w = {"a": tf.constant(W), "b": [tf.constant(W2)]}
    g = {"a": tf.constant(G), "b": [tf.constant(G2)]}
    step = tf.function(lambda w, g, lr, d: lm.lars_update(w, g, lr, decay_lambda=d))
    for decay in (0.0, 0.5):
        eager = lm.lars_update(w, g, 0.1, decay_lambda=decay)
        traced = step(w, g, tf.constant(0.1), tf.constant(decay))
        for a, b in ((eager["a"], traced["a"]), (eager["b"][0], traced["b"][0])):
            np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-6, atol=1e-7)
        assert_layer_close(traced["a"], W, G, 0.1, decay, "float32")
        want = reference_layer(W2, G2, 0.1, decay)
        np.testing.assert_allclose(to_numpy(traced["b"][0]), want, rtol=1e-5, atol=1e-6)


# --- TensorFlow's NumPy behaviour: WeakTensors ---------------------------------------------

# With dtype_conversion_mode="all", tensors made from Python values (tf.constant([...]),
# ops on Python numbers) are WeakTensors; the mode is the process's, so a fresh one.
WEAK_SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf
tf.experimental.numpy.experimental_enable_numpy_behavior(dtype_conversion_mode="all")
import lars_multi as lm

W, G = [[3.0, 1.0, 5.0], [7.0, 2.0, 9.0]], [[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]]
weak = {"w": tf.constant(W), "b": tf.constant(W[0]), "lr": tf.math.abs(0.1)}
weak_g = {"w": tf.constant(G), "b": tf.constant(G[1])}
strong = {"w": tf.constant(np.float32(W)), "b": tf.constant(np.float32(W[0]))}
strong_g = {"w": tf.constant(np.float32(G)), "b": tf.constant(np.float32(G[1]))}
kinds = sorted({type(x).__name__ for x in (*weak.values(), *weak_g.values(), *strong.values())})
one = lm.lars_update(weak["w"], weak_g["w"], weak["lr"], decay_lambda=0.01)
tree = lm.lars_update({"w": weak["w"], "b": weak["b"]}, weak_g, 0.1, decay_lambda=0.01)
want = lm.lars_update(strong, strong_g, 0.1, decay_lambda=0.01)
opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-3)
params, state = {"w": weak["w"], "b": weak["b"]}, opt.init({"w": weak["w"], "b": weak["b"]})
strong_params, strong_state = strong, opt.init(strong)
step = tf.function(lambda p, g, s: opt.step(p, g, s))
for _ in range(3):
    params, state = step(params, weak_g, state)
    strong_params, strong_state = opt.step(strong_params, strong_g, strong_state)
print(json.dumps({
    "kinds": kinds,
    "one": np.asarray(one).tolist(), "one_want": np.asarray(want["w"]).tolist(),
    "tree": {k: np.asarray(v).tolist() for k, v in tree.items()},
    "tree_want": {k: np.asarray(v).tolist() for k, v in want.items()},
    "optim": {k: np.asarray(v).tolist() for k, v in params.items()},
    "optim_want": {k: np.asarray(v).tolist() for k, v in strong_params.items()},
    "count": int(state.count),
}))
"""


def test_tensorflow_weak_tensors_step_as_tensors_do():
    """TensorFlow's NumPy behaviour with ``dtype_conversion_mode="all"`` makes every tensor
    built from Python values a ``WeakTensor``, which lars_multi refused as no array at
    all ("expected an array ... got tensorflow.EagerWeakTensor"). They are TensorFlow's
    tensors: ``lars_update`` (one array, a tree, a weak rate) and ``lm.optim`` under
    ``tf.function`` step them as the same values in ordinary tensors."""
    require_backend("tensorflow")
    got = json.loads(run_python(WEAK_SCRIPT, TF_CPP_MIN_LOG_LEVEL="3").splitlines()[-1])
    assert got["kinds"] == ["EagerTensor", "EagerWeakTensor"]
    np.testing.assert_allclose(got["one"], got["one_want"], rtol=1e-6)
    expected_w = reference_layer(W, G, 0.1, 0.01)
    np.testing.assert_allclose(got["one"], expected_w, rtol=1e-5)
    for k in ("w", "b"):
        np.testing.assert_allclose(got["tree"][k], got["tree_want"][k], rtol=1e-6)
        np.testing.assert_allclose(got["optim"][k], got["optim_want"][k], rtol=1e-6)
    assert got["count"] == 3


# --- Keras on its JAX and torch backends (subprocesses started by keras_runs) -------------


@pytest.mark.parametrize("keras_backend", KERAS_SUBPROCESS_BACKENDS)
def test_keras_other_backends_trainable_variables(keras_backend, keras_runs):
    require_backend(keras_backend)
    pytest.importorskip("keras")
    out = keras_runs[keras_backend].result()
    line = next(s for s in out.splitlines() if s.startswith("RESULT "))
    _check_keras_result(json.loads(line.removeprefix("RESULT ")), keras_backend)
