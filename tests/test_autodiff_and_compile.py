"""``stop_gradients``, autodiff through the update, and use inside compilers
(``jax.jit``, ``tf.function``, ``torch.compile``)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from conftest import assert_layer_close, native, require_backend, run_python, to_numpy

import lars_multi as lm

W = np.array([[3.0, 1.0, 5.0], [7.0, 2.0, 9.0]], dtype=np.float32)
G = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]], dtype=np.float32)
W2 = np.array([1.5, -2.0, 0.5], dtype=np.float32)
G2 = np.array([0.05, 0.2, -0.1], dtype=np.float32)
C = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], dtype=np.float32)  # a cotangent
C2 = np.array([2.0, 1.0, -1.0], dtype=np.float32)
DECAYS = [pytest.param(0.0, id="no-decay"), pytest.param(0.3, id="decay")]


# --- torch ---------------------------------------------------------------------------


def torch_lars(w, g, lr, decay):
    """LARS written directly in torch, differentiable in w, g and lr."""
    import torch

    w_norm = torch.sqrt(torch.sum(w * w))
    lr_local = w_norm * lr / (torch.sqrt(torch.sum(g * g)) + 1e-12)
    if decay > 0:
        lr_local = lr_local / (w_norm * decay)
    return w - lr_local * g


@pytest.mark.parametrize("decay", DECAYS)
def test_torch_autograd_through_update(decay):
    require_backend("torch")
    import torch

    def grads(fn):
        w = torch.tensor(W, dtype=torch.float64, requires_grad=True)
        g = torch.tensor(G, dtype=torch.float64, requires_grad=True)
        lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        new = fn(w, g, lr)
        assert new.requires_grad and new.grad_fn is not None
        (new * torch.tensor(C, dtype=torch.float64)).sum().backward()
        return to_numpy(new), to_numpy(w.grad), to_numpy(g.grad), to_numpy(lr.grad)

    got = grads(lambda w, g, lr: lm.lars_update(w, g, lr, decay_lambda=decay, stop_gradients=False))
    want = grads(lambda w, g, lr: torch_lars(w, g, lr, decay))
    for a, b in zip(got, want):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_torch_autograd_through_tree():
    require_backend("torch")
    import torch

    def grads(fn):
        ws = [torch.tensor(W, requires_grad=True), torch.tensor(W2, requires_grad=True)]
        gs = [torch.tensor(G), torch.tensor(G2)]
        new = fn(ws, gs)
        loss = (new[0] * torch.tensor(C)).sum() + (new[1] * torch.tensor(C2)).sum()
        loss.backward()
        return [to_numpy(w.grad) for w in ws]

    got = grads(lambda ws, gs: lm.lars_update(ws, gs, 0.1, decay_lambda=0.2, stop_gradients=False))
    want = grads(lambda ws, gs: [torch_lars(w, g, 0.1, 0.2) for w, g in zip(ws, gs)])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_torch_stop_gradients():
    require_backend("torch")
    import torch

    w = torch.tensor(W, requires_grad=True)
    g = torch.tensor(G, requires_grad=True)
    new = lm.lars_update(w, g, 0.1)
    assert not new.requires_grad and new.grad_fn is None
    tree = lm.lars_update({"a": w}, {"a": g}, 0.1, stop_gradients=True)
    assert not tree["a"].requires_grad
    mixed = lm.lars_update([w, w], [g, g], 0.1, stop_gradients=[True, False])
    assert not mixed[0].requires_grad and mixed[1].requires_grad
    assert_layer_close(mixed[1], W, G, 0.1, 0.0, "float32")


def test_stop_gradients_cuts_differentiable_rates_too(backend_name):
    """The result is cut from the graph even where lr and decay_lambda are arrays
    the graph differentiates: no gradient reaches them through the result."""
    if backend_name == "numpy":
        pytest.skip("NumPy has no autodiff")
    w, g = native(backend_name, W), native(backend_name, G)
    if backend_name == "torch":
        import torch

        lr = torch.tensor(0.1, requires_grad=True)
        decay = torch.tensor(0.2, requires_grad=True)
        for tree in (False, True):
            new = lm.lars_update({"a": w} if tree else w, {"a": g} if tree else g, lr, decay_lambda=decay)
            new = new["a"] if tree else new
            assert not new.requires_grad and new.grad_fn is None
        return
    if backend_name == "jax":
        import jax

        def loss(lr, decay):
            return lm.lars_update({"a": w}, {"a": g}, lr, decay_lambda=decay)["a"].sum()

        grads = jax.grad(loss, argnums=(0, 1))(0.1, 0.2)
        assert [float(x) for x in grads] == [0.0, 0.0]
        return
    import tensorflow as tf

    lr, decay = tf.Variable(0.1), tf.Variable(0.2)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(lm.lars_update(w, g, lr, decay_lambda=decay))
    assert all(x is None for x in tape.gradient(total, [lr, decay]))


def _gradients(backend_name, loss_of, w, g):
    """The gradients of ``loss_of(w, g)`` (a scalar) in w and g, by the framework's autodiff."""
    if backend_name == "torch":
        import torch

        w, g = (torch.tensor(x, requires_grad=True) for x in (w, g))
        loss_of(w, g).backward()
        return to_numpy(w.grad), to_numpy(g.grad)
    if backend_name == "jax":
        import jax

        return tuple(map(to_numpy, jax.grad(loss_of, argnums=(0, 1))(native("jax", w), native("jax", g))))
    import tensorflow as tf

    w, g = tf.Variable(w), tf.Variable(g)
    with tf.GradientTape() as tape:
        loss = loss_of(tf.identity(w), tf.identity(g))
    return tuple(x.numpy() for x in tape.gradient(loss, [w, g]))


@pytest.mark.parametrize("zero", ["weights", "gradient"])
@pytest.mark.parametrize("tree", [False, True], ids=["one", "tree"])
@pytest.mark.parametrize("size", [3, 3 * 5462], ids=["small", "large"])
def test_gradient_at_a_zero_norm_is_the_subgradient_not_nan(backend_name, zero, tree, size):
    """Differentiated at zero weights or a zero gradient, a norm contributes its
    subgradient 0 (as torch's does), on every autodiff backend: before, JAX's and
    TensorFlow's square root gave NaN there, and so did torch's norm of a CPU layer of
    2**14 elements or more (a BLAS dot's square root)."""
    if backend_name == "numpy":
        pytest.skip("NumPy has no autodiff")
    lr = 0.1
    tiles = size // 3
    w = np.zeros(size) if zero == "weights" else np.tile(W2.astype(np.float64), tiles)
    g = np.zeros(size) if zero == "gradient" else np.tile(G2.astype(np.float64), tiles)
    w, g = w.astype(np.float32), g.astype(np.float32)
    cotangent = np.tile(C2, tiles)

    def loss_of(w, g):
        args = ({"a": w, "b": w * 2}, {"a": g, "b": g * 2}) if tree else (w, g)
        new = lm.lars_update(*args, lr, stop_gradients=False)
        layers = [new["a"], new["b"]] if tree else [new]
        weighted = [layer * native(backend_name, cotangent) for layer in layers]
        if backend_name == "tensorflow":
            import tensorflow as tf

            return sum(tf.reduce_sum(x) for x in weighted)
        return sum(x.sum() for x in weighted)

    w_grad, g_grad = _gradients(backend_name, loss_of, w, g)
    # The reference's r = ||w|| / (||g|| + 1e-12), out = w - lr r g, in float64 by
    # hand: the ratio's derivative vanishes (a zero norm's subgradient, or a zero
    # factor g), leaving d/dw = c and d/dg = -lr r c, summed over the layers' scales.
    c = cotangent.astype(np.float64)
    want_w, want_g = np.zeros_like(c), np.zeros_like(c)
    for scale in (1.0, 2.0) if tree else (1.0,):  # layer "b" is (2 w, 2 g)
        w_norm, g_norm = (np.linalg.norm(scale * x.astype(np.float64)) for x in (w, g))
        want_w += scale * c
        want_g -= lr * w_norm / (g_norm + 1e-12) * scale * c
    np.testing.assert_allclose(w_grad, want_w, rtol=1e-6)
    np.testing.assert_allclose(g_grad, want_g, rtol=1e-6)


# --- jax -----------------------------------------------------------------------------


def jax_lars(w, g, lr, decay):
    import jax.numpy as jnp

    w_norm = jnp.sqrt(jnp.sum(w * w))
    lr_local = w_norm * lr / (jnp.sqrt(jnp.sum(g * g)) + 1e-12)
    if decay > 0:
        lr_local = lr_local / (w_norm * decay)
    return w - lr_local * g


@pytest.mark.parametrize("decay", DECAYS)
def test_jax_grad_through_update(decay):
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    c = jnp.asarray(C)

    def loss(fn):
        return lambda w, g, lr: jnp.sum(fn(w, g, lr) * c)

    ours = loss(lambda w, g, lr: lm.lars_update(w, g, lr, decay_lambda=decay, stop_gradients=False))
    theirs = loss(lambda w, g, lr: jax_lars(w, g, lr, decay))
    args = (jnp.asarray(W), jnp.asarray(G), jnp.float32(0.1))
    got = jax.grad(ours, argnums=(0, 1, 2))(*args)
    want = jax.grad(theirs, argnums=(0, 1, 2))(*args)
    for a, b in zip(got, want):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)


def test_jax_grad_through_tree_and_stop_gradients():
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    g = {"a": jnp.asarray(G), "b": jnp.asarray(G2)}
    c = {"a": jnp.asarray(C), "b": jnp.asarray(C2)}

    def loss(fn):
        return lambda w: sum(jnp.sum(fn(w)[k] * c[k]) for k in c)

    w = {"a": jnp.asarray(W), "b": jnp.asarray(W2)}
    got = jax.grad(loss(lambda w: lm.lars_update(w, g, 0.1, decay_lambda=0.2, stop_gradients=False)))(w)
    want = jax.grad(loss(lambda w: {k: jax_lars(w[k], g[k], 0.1, 0.2) for k in w}))(w)
    for k in w:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=2e-5, atol=1e-6)

    stopped = jax.grad(loss(lambda w: lm.lars_update(w, g, 0.1)))(w)
    for k in w:
        np.testing.assert_array_equal(np.asarray(stopped[k]), 0)
    single = jax.grad(lambda w: jnp.sum(lm.lars_update(w, g["a"], 0.1) * c["a"]))(w["a"])
    np.testing.assert_array_equal(np.asarray(single), 0)


def test_jax_jit_on_a_first_call_loads_the_backend_outside_the_trace():
    """The JAX backend, first loaded inside a ``jax.jit`` trace, took a tracer's type for
    the concrete arrays' (its module made an array to learn it, and made a tracer): every
    later jitted call failed with JAX's ConcretizationTypeError, for the whole process."""
    require_backend("jax")
    script = """
import json
import jax, jax.numpy as jnp
import lars_multi as lm

f = jax.jit(lambda w, g: lm.lars_update(w, g, 0.1))
w, g = jnp.asarray([3.0, 1.0, 5.0]), jnp.asarray([0.3, 0.1, 0.2])
results = [f(w, g).tolist(), f(w, g).tolist(), lm.lars_update(w, g, 0.1).tolist()]
print(json.dumps(results))
"""
    for got in json.loads(run_python(script).splitlines()[-1]):
        np.testing.assert_allclose(got, [2.5256584, 0.8418861, 4.683772], rtol=1e-6)  # (the seed's example)


def test_jax_jit():
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    @jax.jit
    def step(w, g, lr):
        return lm.lars_update(w, g, lr, decay_lambda=0.3)

    for scale in (1.0, 2.0):
        new = step(jnp.asarray(W * scale), jnp.asarray(G), jnp.float32(0.1))
        assert_layer_close(new, W * scale, G, 0.1, 0.3, "float32")

    @jax.jit
    def tree_step(w, g):
        return lm.lars_update(w, g, 0.05)

    w = {"a": jnp.asarray(W), "b": [jnp.asarray(W2)]}
    g = {"a": jnp.asarray(G), "b": [jnp.asarray(G2)]}
    new = tree_step(w, g)
    assert_layer_close(new["a"], W, G, 0.05, 0.0, "float32")
    assert_layer_close(new["b"][0], W2, G2, 0.05, 0.0, "float32")

    # Also inside vmap: one LARS step per row.
    rows = jax.vmap(lambda w, g: lm.lars_update(w, g, 0.1))(jnp.asarray(W), jnp.asarray(G))
    for i in range(W.shape[0]):
        assert_layer_close(to_numpy(rows)[i], W[i], G[i], 0.1, 0.0, "float32")


def test_torch_vmap_steps_each_row_and_differentiates():
    """Inside torch.vmap (whose tensors have no batching rule for the _foreach kernels),
    for one array, a tree and lm.optim, and under torch.func.grad of it."""
    require_backend("torch")
    import torch

    w, g = torch.tensor(W, dtype=torch.float64), torch.tensor(G, dtype=torch.float64)
    rows = torch.vmap(lambda a, b: lm.lars_update(a, b, 0.1))(w, g)
    trees = torch.vmap(lambda a, b: lm.lars_update({"x": a, "y": b}, {"x": b, "y": a}, 0.1))(w, g)
    for i in range(W.shape[0]):
        assert_layer_close(to_numpy(rows)[i], W[i], G[i], 0.1, 0.0, "float64")
        assert_layer_close(to_numpy(trees["x"])[i], W[i], G[i], 0.1, 0.0, "float64")
        assert_layer_close(to_numpy(trees["y"])[i], G[i], W[i], 0.1, 0.0, "float64")
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=0.01, adapt_mask=lambda path, x: True)

    def optimizer_step(a, b):
        return opt.step({"p": a}, {"p": b}, opt.init({"p": a}))[0]["p"]

    stepped = torch.vmap(optimizer_step)(w, g)
    for i in range(W.shape[0]):
        alone = opt.step({"p": w[i]}, {"p": g[i]}, opt.init({"p": w[i]}))[0]["p"]
        torch.testing.assert_close(stepped[i], alone, rtol=1e-14, atol=0)

    def loss(a):
        return torch.vmap(lambda x, y: lm.lars_update(x, y, 0.1, stop_gradients=False))(a, g).sum()

    grad = torch.func.grad(loss)(w)
    leaf = w.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(leaf), [leaf])
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)


def test_torch_vmap_with_an_lm_array_as_out():
    """Under torch.vmap tensors cannot be written in place, and the refusal advises an
    lm.Array as out: lars_update then failed reading the wrapped tensors' storage (torch's
    NotImplementedError). The handle takes each row's result."""
    require_backend("torch")
    import torch

    w, g = torch.tensor(W, dtype=torch.float64), torch.tensor(G, dtype=torch.float64)

    def step(a, b):
        handle = lm.array(a)
        lm.lars_update(handle, b, 0.1, out=handle)
        return handle.data

    rows = torch.vmap(step)(w, g)
    for i in range(W.shape[0]):
        assert_layer_close(to_numpy(rows)[i], W[i], G[i], 0.1, 0.0, "float64")


def test_torch_vmap_with_unbatched_weights_batched_rates_and_large_layers():
    """vmap where the first tensor is not batched (shared weights, one gradient per row;
    a learning rate per row), and large float32 layers, whose norms are as accurate as
    the per-row loop's (torch.dot under vmap sums in one running float32 sum)."""
    require_backend("torch")
    import torch

    rng = np.random.default_rng(5)
    w = torch.tensor(rng.standard_normal((4, 3)))
    g = torch.tensor(rng.standard_normal((5, 4, 3)))
    rows = torch.vmap(lambda b: lm.lars_update({"a": w, "b": w * 2}, {"a": b, "b": -b}, 0.1))(g)
    lrs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    swept = torch.vmap(lambda b, lr: lm.lars_update({"a": w, "b": b}, {"a": b, "b": b}, lr))(g, lrs)
    for i in range(5):
        want = lm.lars_update({"a": w, "b": w * 2}, {"a": g[i], "b": -g[i]}, 0.1)
        torch.testing.assert_close(rows["a"][i], want["a"], rtol=1e-14, atol=0)
        torch.testing.assert_close(rows["b"][i], want["b"], rtol=1e-14, atol=0)
        want = lm.lars_update({"a": w, "b": g[i]}, {"a": g[i], "b": g[i]}, float(lrs[i]))
        torch.testing.assert_close(swept["b"][i], want["b"], rtol=1e-14, atol=0)
    big_w = torch.tensor(rng.random((2, 1 << 20)), dtype=torch.float32)
    big_g = torch.zeros_like(big_w)
    big_g[:, :1000] = 1.0  # the step is then set by the weights' norm alone
    new = torch.vmap(lambda a, b: lm.lars_update(a, b, 0.1))(big_w, big_g)
    want_norm = np.linalg.norm(to_numpy(big_w.double()), axis=1)
    got_norm = to_numpy((big_w - new)[:, 0].double()) * np.sqrt(1000) / 0.1
    assert np.max(np.abs(got_norm - want_norm) / want_norm) < 3e-6


def test_torch_func_transforms_refuse_out_and_carry_batched_optimizer_state():
    """Inside torch.func nothing is written in place (out= is refused, clearly), and
    lm.optim steps an ensemble whose state (count, timm's flags) is batched too."""
    require_backend("torch")
    import torch

    from lars_multi.optim import LarsState

    w, g = torch.tensor(W, dtype=torch.float64), torch.tensor(G, dtype=torch.float64)
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^out: expected an array that can be written.*torch\.func"
    ):
        torch.vmap(lambda a, b: lm.lars_update(a, b, 0.1, out=a))(w, g)
    np.testing.assert_array_equal(to_numpy(w), W.astype(np.float64))
    rng = np.random.default_rng(6)
    params = torch.tensor(rng.standard_normal((3, 4, 5)))
    grads = [torch.tensor(rng.standard_normal((3, 4, 5))) for _ in range(3)]
    for preset in ("paper", "optax", "timm"):
        opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=0.01, preset=preset)

        def step(p, g, count, buffer, started, opt=opt):
            new, state = opt.step({"p": p}, {"p": g}, LarsState(count, {"p": buffer}, started))
            return new["p"], state.count, state.momentum["p"], state.started

        count = torch.zeros(3, dtype=torch.int32)
        buffer = torch.zeros_like(params)
        started = {"p": torch.zeros(3, dtype=torch.bool)} if preset == "timm" else None
        batched = params
        dims = 0 if preset == "timm" else None  # (no flags kept but timm's)
        vmapped = torch.vmap(step, in_dims=(0, 0, 0, 0, dims), out_dims=(0, 0, 0, dims))
        for grad in grads:
            batched, count, buffer, started = vmapped(batched, grad, count, buffer, started)
        for i in range(3):
            alone, state = {"p": params[i]}, opt.init({"p": params[i]})
            for grad in grads:
                alone, state = opt.step(alone, {"p": grad[i]}, state)
            torch.testing.assert_close(batched[i], alone["p"], rtol=1e-13, atol=1e-15)


# --- tensorflow ------------------------------------------------------------------------


def tf_lars(w, g, lr, decay):
    import tensorflow as tf

    w_norm = tf.sqrt(tf.reduce_sum(w * w))
    lr_local = w_norm * lr / (tf.sqrt(tf.reduce_sum(g * g)) + 1e-12)
    if decay > 0:
        lr_local = lr_local / (w_norm * decay)
    return w - lr_local * g


@pytest.mark.parametrize("decay", DECAYS)
def test_tf_gradient_tape(decay):
    require_backend("tensorflow")
    import tensorflow as tf

    def grads(fn):
        w = tf.Variable(W.astype(np.float64))
        g = tf.constant(G.astype(np.float64))
        with tf.GradientTape() as tape:
            tape.watch(g)
            loss = tf.reduce_sum(fn(w, g) * C.astype(np.float64))
        return [x.numpy() for x in tape.gradient(loss, [w, g])]

    got = grads(lambda w, g: lm.lars_update(w, g, 0.1, decay_lambda=decay, stop_gradients=False))
    want = grads(lambda w, g: tf_lars(w, g, 0.1, decay))
    for a, b in zip(got, want):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_tf_gradient_tape_tree_and_stop_gradients():
    require_backend("tensorflow")
    import tensorflow as tf

    ws = [tf.Variable(W), tf.Variable(W2)]
    gs = [tf.constant(G), tf.constant(G2)]
    with tf.GradientTape(persistent=True) as tape:
        new = lm.lars_update(ws, gs, 0.1, decay_lambda=0.2, stop_gradients=False)
        loss = tf.reduce_sum(new[0] * C) + tf.reduce_sum(new[1] * C2)
        ref = [tf_lars(w, g, 0.1, 0.2) for w, g in zip(ws, gs)]
        ref_loss = tf.reduce_sum(ref[0] * C) + tf.reduce_sum(ref[1] * C2)
        stopped = lm.lars_update(ws, gs, 0.1)
        stopped_loss = tf.reduce_sum(stopped[0] * C) + tf.reduce_sum(stopped[1] * C2)
        single = tf.reduce_sum(lm.lars_update(ws[0], gs[0], 0.1) * C)
    got = tape.gradient(loss, ws)
    want = tape.gradient(ref_loss, ws)
    for a, b in zip(got, want):
        assert a is not None
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=1e-6)
    assert tape.gradient(stopped_loss, ws) == [None, None]
    assert tape.gradient(single, ws[0]) is None
    del tape


def test_tf_second_derivatives_of_an_eager_step_of_several_layers():
    """A Hessian-vector product (forward over reverse) through an eager step of two
    layers equals the one of the README's rule written in TensorFlow: the step runs in
    lars_multi's own tf.function, where the norm's second derivative was NaN."""
    require_backend("tensorflow")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w1, w2, g1, g2, v = (tf.constant(rng.standard_normal(s)) for s in [(3, 4), (4,), (3, 4), (4,), (3, 4)])

    def loss(w1, rule):
        a, b = rule([w1, w2], [g1, g2])
        return tf.reduce_sum(a**2) + tf.reduce_sum(b**2)

    def hvp(rule):
        with tf.autodiff.ForwardAccumulator(w1, v) as acc:
            with tf.GradientTape() as tape:
                tape.watch(w1)
                y = loss(w1, rule)
            first = tape.gradient(y, w1)
        return acc.jvp(first).numpy()

    def ours(ws, gs):
        return lm.lars_update(ws, gs, 0.1, decay_lambda=0.3, stop_gradients=False)

    def by_hand(ws, gs):
        return [tf_lars(w, g, 0.1, 0.3) for w, g in zip(ws, gs)]

    np.testing.assert_allclose(hvp(ours), hvp(by_hand), rtol=1e-10, atol=1e-12)


def test_torch_forward_mode_ad_through_a_step():
    """Forward-mode AD (dual tensors) through lars_update and a differentiable lm.optim
    step gives the tangent of the README's rule: _foreach_norm has no forward rule for
    them, and failed with torch's "Trying to set a forward gradient that has a different size"."""
    require_backend("torch")
    import torch
    import torch.autograd.forward_ad as fwad

    w, g, tangent = (torch.tensor(x.astype(np.float64)) for x in (W, G, C))
    with fwad.dual_level():
        dual = fwad.make_dual(w, tangent)
        got = fwad.unpack_dual(
            lm.lars_update({"a": dual, "b": dual * 2}, {"a": g, "b": g}, 0.1, stop_gradients=False)["a"]
        ).tangent
        opt = lm.optim.lars(0.1, momentum=0.9, differentiable=True)
        new, _ = opt.step({"a": dual}, {"a": g}, opt.init({"a": w}))
        assert fwad.unpack_dual(new["a"]).tangent is not None
    want = torch.func.jvp(lambda w: torch_lars(w, g, 0.1, 0.0), (w,), (tangent,))[1]
    torch.testing.assert_close(got, want)


def test_tf_function():
    require_backend("tensorflow")
    import tensorflow as tf

    @tf.function
    def step(w, g, lr):
        return lm.lars_update(w, g, lr, decay_lambda=0.3)

    new = step(tf.constant(W), tf.constant(G), tf.constant(0.1))
    assert_layer_close(new, W, G, 0.1, 0.3, "float32")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32)])
    def unknown_shape(w, g):
        return lm.lars_update({"a": w}, {"a": g}, 0.1)["a"]

    assert_layer_close(unknown_shape(tf.constant(W2), tf.constant(G2)), W2, G2, 0.1, 0.0, "float32")
    assert_layer_close(unknown_shape(tf.constant(W[0]), tf.constant(G[0])), W[0], G[0], 0.1, 0.0, "float32")

    v = tf.Variable(W)

    @tf.function
    def train_step(g):
        lm.lars_update(v, g, 0.1, out=v)

    train_step(tf.constant(G))
    assert_layer_close(v, W, G, 0.1, 0.0, "float32")


# --- torch.compile -----------------------------------------------------------------------


def _torch_cases():
    import torch

    def tree():
        return {"b": torch.tensor(W), "a": torch.tensor(W2)}

    def grads():
        return {"a": torch.tensor(G2), "b": torch.tensor(G)}  # keys in another order

    one_w, one_g = torch.tensor(W), torch.tensor(G)
    return {
        "one": ((one_w, one_g), {}),
        "one-out=w": ((one_w, one_g), {"out": one_w}),
        "dict": ((tree(), grads()), {"decay_lambda": 0.3}),
        "list": (([one_w, one_w * 2], [one_g, one_g]), {}),
        "dict-out=w": ((tree(), grads()), {"out": "w"}),
        "per-layer": ((tree(), grads()), {"decay_lambda": {"a": 0.0, "b": 0.2}}),
        "container": ((lm.Container(tree()), lm.Container(grads())), {}),
    }


@pytest.mark.parametrize("case", ["one", "one-out=w", "dict", "list", "dict-out=w", "per-layer", "container"])
def test_torch_compile_fullgraph(case):
    """Dynamo traces the whole call (``fullgraph=True``: a graph break is an
    error) through AOTAutograd (``aot_eager``: the same tracing as the default
    backend without inductor's C++ build), and gives the eager result."""
    require_backend("torch")
    import optree
    import torch

    (w, g), kwargs = _torch_cases()[case]
    expected_w, expected_g = optree.tree_map(lambda x: x.clone(), (w, g), namespace="lars_multi")
    expected_kwargs = dict(kwargs)
    if "out" in kwargs:
        kwargs["out"] = w
        expected_kwargs["out"] = expected_w
    expected = lm.lars_update(expected_w, expected_g, 0.1, **expected_kwargs)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda w, g: lm.lars_update(w, g, 0.1, **kwargs), backend="aot_eager", fullgraph=True
    )
    got = compiled(w, g)
    if "out" in kwargs:
        assert got is w
    got_leaves = optree.tree_leaves(got, namespace="lars_multi")
    for a, b in zip(got_leaves, optree.tree_leaves(expected, namespace="lars_multi")):
        torch.testing.assert_close(a, b)  # within an ulp or two: fused or not
    torch._dynamo.reset()


def test_torch_compile_in_place_takes_new_gradients_and_rates_without_recompiling():
    """A training loop gives new gradient tensors at each step (zero_grad(set_to_none=True))
    and maybe a new 0-d rate: the in-place step was compiled again at every call (its
    aliasing check took id() of each input, which Dynamo guards), and failed at the
    recompile limit. It compiles once or twice, and equals the eager step."""
    require_backend("torch")
    import torch
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    step = torch.compile(
        lambda w, g, lr: lm.lars_update(w, g, lr, decay_lambda=0.01, out=w), backend=counter, fullgraph=True
    )
    w = {"a": torch.tensor(W), "b": torch.tensor(W2)}
    eager = {k: v.clone() for k, v in w.items()}
    for i in range(12):
        g = {"a": torch.tensor(G) * (i + 1), "b": torch.tensor(G2)}
        lr = torch.tensor(0.1 / (i + 1))
        step(w, g, lr)
        lm.lars_update(eager, {k: v.clone() for k, v in g.items()}, lr.clone(), decay_lambda=0.01, out=eager)
    assert counter.frame_count <= 2, counter.frame_count  # (the second call may mark a size dynamic)
    for k in w:
        torch.testing.assert_close(w[k], eager[k])
    torch._dynamo.reset()


@pytest.mark.parametrize("in_place", [False, True], ids=["functional", "out=w"])
def test_eager_calls_elsewhere_do_not_recompile_a_compiled_lars_update(in_place):
    """Dynamo guarded on process-wide caches (the backend of each type met, the flags of
    each number of layers): every eager call elsewhere in the program that met a new
    type (a NumPy array, a list, a Parameter, an lm.Container...) or tree size made a
    compiled lars_update recompile, and fullgraph=True failed at the recompile limit."""
    require_backend("torch")
    import collections

    import torch
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    out = {"out": None}

    def update(w, g, lr):
        return lm.lars_update(w, g, lr, **({"out": w} if in_place else out))

    step = torch.compile(update, backend=counter, fullgraph=True)
    w = {"a": torch.tensor(W), "b": torch.tensor(W2)}
    g = {"a": torch.tensor(G), "b": torch.tensor(G2)}
    eager = {k: v.clone() for k, v in w.items()}
    ones = torch.ones(2)
    elsewhere = [
        lambda: lm.lars_update(np.ones(3, np.float32), np.ones(3, np.float32), 0.1),
        lambda: lm.lars_update([ones], [ones], 0.1),
        lambda: lm.lars_update((ones,), (ones,), 0.1),
        lambda: lm.lars_update(collections.OrderedDict(a=ones), {"a": ones}, 0.1),
        lambda: lm.lars_update(torch.nn.Parameter(ones.clone()), ones, 0.1),
        lambda: lm.lars_update(lm.Container(a=ones), ones, 0.1),
        lambda: lm.lars_update(lm.array(ones), lm.array(ones), 0.1),
        lambda: lm.lars_update(ones, ones, np.float32(0.1)),
        lambda: lm.lars_update({"x": ones, "y": ones, "z": ones}, {"x": ones, "y": None, "z": ones}, 0.1),
    ]
    for call in [None, None, *elsewhere]:  # (twice first: the second call may mark a size dynamic)
        if call is not None:
            call()
        new = step(w, g, 0.1)
        expected = lm.lars_update(eager, g, 0.1, **({"out": eager} if in_place else out))
        for k in w:
            torch.testing.assert_close(new[k], expected[k])
        if not in_place:
            w, eager = new, expected
    assert counter.frame_count <= 2, counter.frame_count
    torch._dynamo.reset()


@pytest.mark.parametrize("out", [False, True], ids=["functional", "out=params"])
@pytest.mark.parametrize("preset", ["paper", "timm"])
@pytest.mark.parametrize("scheduled", [False, True], ids=["number", "schedule"])
def test_torch_compile_of_the_optimizer_step_equals_eager(preset, out, scheduled):
    """lm.optim's step under torch.compile(fullgraph=True): the default masks' attrgetter
    and timm's first-step flags (read on the host) broke the graph; the flags are traced
    values while compiling, as under jax.jit. A schedule's check of a host count took
    isinstance of a union of NumPy types, which Dynamo cannot trace ("Observed exception")."""
    require_backend("torch")
    import torch

    torch._dynamo.reset()
    lr = lm.schedules.warmup_cosine(peak=0.1, warmup_steps=1, total_steps=5) if scheduled else 0.1
    opt = lm.optim.lars(lr, momentum=0.9, weight_decay=1e-3, preset=preset)
    step = torch.compile(
        lambda p, g, s: opt.step(p, g, s, out=p if out else None), backend="aot_eager", fullgraph=True
    )
    compiled = {"a": torch.tensor(W2), "b": torch.tensor(W[0])}
    eager = {k: v.clone() for k, v in compiled.items()}
    compiled_state, eager_state = opt.init(compiled), opt.init(eager)
    for i in range(3):
        g = {"a": torch.tensor(G2) * (i + 1), "b": torch.tensor(G[0])}
        compiled, compiled_state = step(compiled, g, compiled_state)
        eager, eager_state = opt.step(
            eager, {k: v.clone() for k, v in g.items()}, eager_state, out=eager if out else None
        )
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k])
        torch.testing.assert_close(compiled_state.momentum[k], eager_state.momentum[k])
    assert int(compiled_state.count) == 3
    torch._dynamo.reset()


def test_torch_compile_fullgraph_on_a_first_call():
    """A compiled call may be the first: the backend is imported inside the trace."""
    require_backend("torch")
    script = """
import torch, lars_multi as lm
w = {"a": torch.ones(3), "b": torch.full((2,), 2.0)}
g = {"b": torch.ones(2), "a": torch.full((3,), 0.5)}
step = torch.compile(lambda w, g: lm.lars_update(w, g, 0.1, out=w), backend="eager", fullgraph=True)
step(w, g)
print(round(float(w["a"][0]), 6), round(float(w["b"][0]), 6))
"""
    assert run_python(script) == "0.9 1.8"


def test_torch_compile_fullgraph_with_a_using_backend_block_open():
    """An open ``using_backend`` block, this thread's or another's, leaves a compiled call
    to the inputs (Dynamo cannot trace the context variable's read: a block open anywhere
    made every fullgraph compile of the process fail)."""
    import threading

    require_backend("torch")
    import torch

    opened, release = threading.Event(), threading.Event()

    def hold_a_block() -> None:
        with lm.using_backend("numpy"):
            opened.set()
            release.wait(60)

    w, g = torch.tensor([3.0, 1.0, 5.0]), torch.tensor([0.3, 0.1, 0.2])
    want = lm.lars_update(w, g, 0.1)
    other = threading.Thread(target=hold_a_block)
    other.start()
    try:
        assert opened.wait(60)
        for block in (contextlib.nullcontext(), lm.using_backend("torch")):
            torch._dynamo.reset()
            with block:
                step = torch.compile(lambda w, g: lm.lars_update(w, g, 0.1), backend="eager", fullgraph=True)
                torch.testing.assert_close(step(w, g), want)
    finally:
        release.set()
        other.join()
        torch._dynamo.reset()


@pytest.mark.parametrize("count", [np.asarray(3, np.int32), np.int32(3)], ids=["0-d array", "scalar"])
def test_torch_compile_of_an_optimizer_step_takes_a_numpy_count(count):
    """A state read back from a file holds a NumPy count: the eager step took it, and
    the compiled one failed (Dynamo cannot trace NumPy's dtype). It is taken as a tensor."""
    require_backend("torch")
    import torch

    torch._dynamo.reset()
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-3, preset="timm")
    p = {"a": torch.tensor(W2), "b": torch.tensor(W[0])}
    g = {"a": torch.tensor(G2), "b": torch.tensor(G[0])}
    state = opt.init(p)._replace(count=count)
    step = torch.compile(lambda p, g, s: opt.step(p, g, s), backend="eager", fullgraph=True)
    (got, got_state), (want, want_state) = step(p, g, state), opt.step(p, g, state)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    assert int(got_state.count) == int(want_state.count) == 4
    torch._dynamo.reset()


def test_torch_export_traces_the_in_place_steps():
    """torch.export's default (non-strict) tracing runs no Dynamo: only its process-wide
    flag says the call is traced, so that storage queries and host reads are skipped
    (they failed on its fake tensors: "Cannot access data pointer")."""
    require_backend("torch")
    import torch

    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-3)

    class Update(torch.nn.Module):
        def forward(self, w, g):
            return lm.lars_update(w, g, 0.1, out=w)

    class Step(torch.nn.Module):
        def forward(self, w, g, buffer):
            params = {"w": w}
            state = lm.optim.LarsState(torch.zeros((), dtype=torch.int32), {"w": buffer})
            out, new = opt.step(params, {"w": g}, state, out=params)
            return out["w"], new.momentum["w"]

    w, g = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    update = torch.export.export(Update(), (w.clone(), g)).module()
    torch.testing.assert_close(update(w.clone(), g), lm.lars_update(w, g, 0.1))
    step = torch.export.export(Step(), (w.clone(), g, torch.zeros_like(w))).module()
    want, state = opt.step({"w": w}, {"w": g}, opt.init({"w": w}))
    got, buffer = step(w.clone(), g, torch.zeros_like(w))
    torch.testing.assert_close(got, want["w"])
    torch.testing.assert_close(buffer, state.momentum["w"])
