"""``lm.optax.lars``: the functional optimizer behind optax's interface.

It equals :func:`lars_multi.optim.lars` in every preset, equals
:func:`optax.lars` with ``preset="optax"``, and behaves as an optax
transformation: under ``jax.jit``, in ``optax.chain``, with
``optax.apply_updates`` and optax schedules.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_backend, run_python, to_numpy

import lars_multi as lm

STEPS = 50


@pytest.fixture(autouse=True)
def _jax_and_optax():
    require_backend("jax")
    pytest.importorskip("optax")


def _params_and_grads(seed=0):
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    shapes = {"w": (4, 3), "b": (3,), "deep": [(2, 5), (5,)]}

    def tree(scale):
        return {
            "w": jnp.asarray(rng.normal(size=shapes["w"]) * scale, jnp.float32),
            "b": jnp.asarray(rng.normal(size=shapes["b"]) * scale, jnp.float32),
            "deep": [jnp.asarray(rng.normal(size=s) * scale, jnp.float32) for s in shapes["deep"]],
        }

    params = tree(1.0)
    return params, [tree(0.5) for _ in range(STEPS)]


def _assert_trees_close(got, want, atol):
    import jax

    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for a, b in zip(got_leaves, want_leaves):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=0, atol=atol)


def _scan(step, params, state, grads):
    """``step(params, g, state) -> (params, state)`` over every gradient, in one compiled loop."""
    import jax

    stacked = jax.tree.map(lambda *g: jax.numpy.stack(g), *grads)

    def body(carry, g):
        return step(*carry[:1], g, carry[1]), None

    (params, state), _ = jax.jit(lambda p, s, gs: jax.lax.scan(body, (p, s), gs))(params, state, stacked)
    return params, state


def _run_optax(tx, params, grads, jit=True):
    import optax

    def step(params, g, state):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    if jit:
        return _scan(step, params, tx.init(params), grads)
    state = tx.init(params)
    for g in grads:
        params, state = step(params, g, state)
    return params, state


def _run_functional(opt, params, grads, transform=None):
    def step(params, g, state):
        return opt.step(params, g if transform is None else transform(g), state)

    return _scan(step, params, opt.init(params), grads)


def test_both_spellings_import():
    import lars_multi.optax

    assert lm.optax is lars_multi.optax
    assert callable(lm.optax.lars)


@pytest.mark.parametrize("preset", ["paper", "optax", "timm"])
def test_equals_functional_optimizer(preset):
    import jax

    kwargs = dict(momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02, preset=preset)
    params, grads = _params_and_grads()
    got, state = _run_optax(lm.optax.lars(0.5, **kwargs), params, grads)
    want, want_state = _run_functional(lm.optim.lars(0.5, **kwargs), params, grads)
    _assert_trees_close(got, want, atol=2e-6)
    _assert_trees_close(state.momentum, want_state.momentum, atol=2e-6)
    assert int(state.count) == STEPS
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def _optax_cases():
    import optax

    decay_mask = {"w": True, "b": False, "deep": [True, False]}
    adapt_mask = {"w": True, "b": True, "deep": [False, True]}
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, STEPS)
    decay_schedule = optax.linear_schedule(1e-2, 1e-4, STEPS)
    return {
        "decay_momentum": (dict(learning_rate=0.5, weight_decay=1e-3, momentum=0.9), {}),
        "nesterov": (dict(learning_rate=0.5, weight_decay=1e-3, momentum=0.9, nesterov=True), {}),
        "no_decay": (dict(learning_rate=0.5, momentum=0.8), {}),
        "masks": (
            dict(
                learning_rate=0.5,
                weight_decay=1e-2,
                weight_decay_mask=decay_mask,
                trust_ratio_mask=adapt_mask,
            ),
            dict(weight_decay_mask=decay_mask, adapt_mask=adapt_mask),
        ),
        "callable_masks": (  # optax's masks: callables of the parameters, passed as they are
            dict(
                learning_rate=0.5,
                weight_decay=1e-2,
                weight_decay_mask=lambda params: decay_mask,
                trust_ratio_mask=lambda params: adapt_mask,
            ),
            dict(weight_decay_mask=lambda params: decay_mask, adapt_mask=lambda params: adapt_mask),
        ),
        "eps": (dict(learning_rate=0.5, weight_decay=1e-3, eps=1e-3), {}),
        "schedules": (dict(learning_rate=schedule, weight_decay=decay_schedule), {}),
    }


@pytest.mark.parametrize(
    "case", ["decay_momentum", "nesterov", "no_decay", "masks", "callable_masks", "eps", "schedules"]
)
def test_optax_preset_equals_optax_lars(case):
    import optax

    theirs, ours = _optax_cases()[case]
    theirs = {"trust_coefficient": 0.02, **theirs}
    params, grads = _params_and_grads(1)
    want, _ = _run_optax(optax.lars(**theirs), params, grads)
    kwargs = {k: v for k, v in theirs.items() if k not in ("weight_decay_mask", "trust_ratio_mask")}
    kwargs.setdefault("momentum", 0.9)  # optax.lars' default
    learning_rate = kwargs.pop("learning_rate")
    got, _ = _run_optax(lm.optax.lars(learning_rate, preset="optax", **kwargs, **ours), params, grads)
    _assert_trees_close(got, want, atol=1e-6)


def test_inject_hyperparams_equals_optax_lars_with_the_same_rates():
    """optax.inject_hyperparams passes numbers as 0-d arrays: the rates may be changed
    between jitted updates (the same trajectory as optax.lars wrapped alike); the step's
    configuration (momentum, ...) is named in static_args, else refused when traced."""
    import jax
    import jax.numpy as jnp
    import optax

    params, grads = _params_and_grads(2)
    kwargs = dict(learning_rate=0.1, weight_decay=1e-3, momentum=0.9, trust_coefficient=0.02)
    static = ("momentum", "dampening", "trust_coefficient")
    ours = optax.inject_hyperparams(lm.optax.lars, static_args=static)(**kwargs, preset="optax")
    theirs = optax.inject_hyperparams(optax.lars)(**kwargs)
    results = []
    for tx in (ours, theirs):
        p, state, update = params, tx.init(params), jax.jit(tx.update)
        for t, g in enumerate(grads[:8]):
            state.hyperparams["learning_rate"] = jnp.asarray(0.1 / (t + 1), jnp.float32)
            state.hyperparams["weight_decay"] = jnp.asarray(1e-3 * (t % 3), jnp.float32)
            u, state = update(g, state, p)
            p = optax.apply_updates(p, u)
        results.append(p)
    _assert_trees_close(results[0], results[1], atol=1e-6)
    eager = optax.inject_hyperparams(lm.optax.lars)(**kwargs)  # (concrete arrays: read as numbers)
    eager.update(grads[0], eager.init(params), params)
    traced = r"^momentum: expected a number .* name it in static_args(\n|$)"
    with pytest.raises(lm.LarsMultiTypeError, match=traced):
        jax.jit(eager.update)(grads[0], eager.init(params), params)


def test_timm_zero_weight_decay_schedule_adapts_nothing():
    """timm adapts only where lambda != 0: a schedule at 0, traced under jit, as 0."""
    import optax

    params, grads = _params_and_grads(2)
    common = dict(momentum=0.9, trust_coefficient=0.02, preset="timm")
    want, _ = _run_optax(lm.optax.lars(0.5, weight_decay=0.0, **common), params, grads)
    zero = optax.constant_schedule(0.0)
    got, _ = _run_optax(lm.optax.lars(0.5, weight_decay=zero, **common), params, grads)
    _assert_trees_close(got, want, atol=0.0)


def test_gradients_flow_through_an_update_as_through_optax_lars():
    """Updates are differentiable, as optax's are (meta-learning, hyper-gradients):
    d loss / d params and d loss / d lr after one update equal optax.lars' (they were 0)."""
    import jax
    import jax.numpy as jnp
    import optax

    params = {"w": jnp.linspace(0.5, 3.0, 6).reshape(2, 3)}
    grads = {"w": jnp.linspace(-0.3, 0.4, 6).reshape(2, 3)}

    def loss_after(make, p, lr):
        tx = make(lambda count: lr, weight_decay=1e-2, trust_coefficient=0.02, momentum=0.9)
        updates, _ = tx.update(grads, tx.init(p), p)
        new = optax.apply_updates(p, updates)
        return jnp.sum(new["w"] ** 2)

    def ours(schedule, **kw):
        return lm.optax.lars(schedule, preset="optax", **kw)

    for wrt in (0, 1):
        want = jax.grad(lambda p, lr: loss_after(optax.lars, p, lr), argnums=wrt)(params, 0.5)
        got = jax.grad(lambda p, lr: loss_after(ours, p, lr), argnums=wrt)(params, 0.5)
        _assert_trees_close(got, want, atol=1e-6)
        assert float(jnp.max(jnp.abs(jnp.asarray(jax.tree.leaves(got)[0])))) > 0.1


def test_a_started_flag_of_another_dtype_is_refused():
    """timm's per-parameter flags are bools: an int 1 (~1 == -2, true) restarted the buffer."""
    import jax.numpy as jnp

    params, grads = {"w": jnp.ones((2, 2))}, {"w": jnp.full((2, 2), 0.5)}
    tx = lm.optax.lars(0.1, weight_decay=1e-3, preset="timm")
    state = tx.init(params)
    bad = state._replace(started={"w": jnp.asarray(1, jnp.int32)})
    with pytest.raises(lm.LarsMultiTypeError, match=r"state.started\['w'\]: expected a 0-d bool array"):
        tx.update(grads, bad, params)


def test_chain_with_clipping_equals_clipping_then_functional():
    import jax
    import optax

    params, grads = _params_and_grads(2)
    grads = [jax.tree.map(lambda g: 10 * g, g) for g in grads[:10]]
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), lm.optax.lars(0.3, weight_decay=1e-3, trust_coefficient=0.02)
    )
    got, (_, state) = _run_optax(tx, params, grads)
    clip = optax.clip_by_global_norm(1.0)
    opt = lm.optim.lars(0.3, weight_decay=1e-3, trust_coefficient=0.02)
    want, _ = _run_functional(opt, params, grads, lambda g: clip.update(g, clip.init(g))[0])
    _assert_trees_close(got, want, atol=1e-6)
    assert int(state.count) == len(grads)


def test_eager_equals_jit_and_state_is_a_pytree_of_arrays():
    import jax

    params, grads = _params_and_grads(3)
    tx = lm.optax.lars(0.2, weight_decay=1e-3, trust_coefficient=0.02, preset="timm")
    eager, _ = _run_optax(tx, params, grads[:5], jit=False)
    jitted, jit_state = _run_optax(tx, params, grads[:5])
    _assert_trees_close(eager, jitted, atol=1e-6)
    leaves = jax.tree.leaves(jit_state)
    # the count, a buffer per parameter and (timm) whether each buffer has started
    assert len(leaves) == 1 + 2 * len(jax.tree.leaves(params))
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert jit_state.count.dtype == np.int32 and jit_state.count.shape == ()
    # the state round-trips through jax.tree (e.g. checkpointing libraries)
    flat, treedef = jax.tree.flatten(jit_state)
    assert jax.tree.unflatten(treedef, flat) == jit_state


def test_a_state_restored_with_numpy_arrays_updates_eagerly_as_optax_lars_does():
    """A state read back from a checkpoint as NumPy arrays (flax.serialization's
    from_bytes, np.asarray of each leaf) was refused eagerly (MixedFrameworksError);
    optax's transformations take it, eager and jitted, as lm.optax now does."""
    import jax

    params, grads = _params_and_grads(4)
    tx = lm.optax.lars(0.2, weight_decay=1e-3, trust_coefficient=0.02, preset="timm")
    state = tx.init(params)
    _, state = tx.update(grads[0], state, params)
    want, want_state = tx.update(grads[1], state, params)
    restored = jax.tree.map(np.asarray, state)
    assert not any(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
    for update in (tx.update, jax.jit(tx.update)):
        got, got_state = update(grads[1], restored, params)
        _assert_trees_close(got, want, atol=0)
        _assert_trees_close(got_state.momentum, want_state.momentum, atol=0)
        assert int(got_state.count) == 2


def test_updates_are_the_step():
    import jax

    params, grads = _params_and_grads(4)
    tx = lm.optax.lars(0.1, weight_decay=1e-4, trust_coefficient=0.02)
    updates, _ = tx.update(grads[0], tx.init(params), params)
    new, _ = lm.optim.lars(0.1, weight_decay=1e-4, trust_coefficient=0.02).step(
        params, grads[0], lm.optim.lars(0.1).init(params)
    )
    _assert_trees_close(jax.tree.map(lambda p, u: p + u, params, updates), new, atol=1e-7)


def test_update_takes_optax_extra_arguments_and_masks_as_optax_lars_does():
    """``update`` takes optax's extra arguments (``value=``: flax's nnx.Optimizer passes
    them), as optax.lars does, and masks of concrete 0-d JAX bools are bools, as
    np.bool_ ones are: both were refused. A mask of the whole params that takes a second,
    optional parameter is asked per leaf, and the message says so."""
    import jax
    import jax.numpy as jnp
    import optax

    params, grads = _params_and_grads(5)
    tx = lm.optax.lars(0.1, weight_decay=1e-3, preset="optax")
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    plain, _ = tx.update(grads[0], tx.init(params), params)
    extra, _ = tx.update(grads[0], tx.init(params), params, value=jnp.float32(1.0))
    _assert_trees_close(plain, extra, atol=0)
    python_bools = jax.tree.map(lambda x: x.ndim > 1, params)
    jax_bools = jax.tree.map(lambda x: jnp.asarray(x.ndim > 1), params)
    want = lm.optax.lars(0.1, weight_decay=1e-3, weight_decay_mask=python_bools, preset="optax")
    got = lm.optax.lars(0.1, weight_decay=1e-3, weight_decay_mask=jax_bools, preset="optax")
    _assert_trees_close(
        got.update(grads[0], got.init(params), params)[0],
        want.update(grads[0], want.init(params), params)[0],
        atol=0,
    )

    def whole(params, min_ndim=2):
        return jax.tree.map(lambda x: jnp.ndim(x) >= min_ndim, params)

    tx = lm.optax.lars(0.1, weight_decay=1e-3, weight_decay_mask=whole, preset="optax")
    with pytest.raises(lm.LarsMultiTypeError, match=r"asked per leaf.*lambda params: mask\(params\)"):
        tx.update(grads[0], tx.init(params), params)


def test_without_momentum_keeps_no_buffers():
    params, grads = _params_and_grads(5)
    tx = lm.optax.lars(0.1, momentum=0.0, trust_coefficient=0.02)
    got, state = _run_optax(tx, params, grads[:3])
    assert state.momentum is None
    want, _ = _run_functional(lm.optim.lars(0.1, momentum=0.0, trust_coefficient=0.02), params, grads[:3])
    _assert_trees_close(got, want, atol=1e-7)


def test_params_are_required():
    params, grads = _params_and_grads(6)
    tx = lm.optax.lars(0.1)
    with pytest.raises(lm.LarsMultiValueError, match="params"):
        tx.update(grads[0], tx.init(params))
    with pytest.raises(lm.LarsMultiValueError, match="params"):
        tx.update(grads[0], tx.init(params), None)


def test_bad_hyper_parameters_are_lars_multi_errors():
    with pytest.raises(lm.LarsMultiValueError, match="momentum"):
        lm.optax.lars(0.1, momentum=1.5)
    with pytest.raises(lm.LarsMultiError, match="preset"):
        lm.optax.lars(0.1, preset="lamb")


def test_without_optax_the_error_names_the_extra_that_installs_it():
    """The Errors table promises the pip command of the extra; it said "pip install optax"."""
    script = (
        "import sys; sys.modules['optax'] = None\n"
        "import lars_multi as lm\n"
        "try:\n    lm.optax.lars(0.1)\nexcept lm.BackendNotInstalledError as e:\n    print(e)\n"
    )
    message = run_python(script)
    assert message.startswith("lars_multi.optax.lars needs optax and JAX"), message
    assert message.endswith('pip install "lars-multi[jax-ecosystem]"'), message


def _optax_and_lm(lr=0.1, **kwargs):
    """optax.lars and lm.optax.lars of the same settings."""
    import optax

    import lars_multi.optax

    return optax.lars(lr, **kwargs), lars_multi.optax.lars(lr, preset="optax", **kwargs)


def test_masks_made_for_the_whole_model_inside_optax_masked_and_multi_transform():
    """optax.masked and multi_transform pass the inner transformation MaskedNodes where a
    parameter is not its own; a weight-decay mask made for the whole model holds a bool
    there, which optax.lars reads as a prefix and lm refused ("expected no value where
    params['sub'] is an empty dict"); a None parameter likewise. Both step as optax.lars."""
    require_backend("jax")
    import jax.numpy as jnp
    import optax

    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2), "sub": {"k": jnp.ones((2, 2))}}
    grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.full(2, 0.25), "sub": {"k": jnp.full((2, 2), 0.5)}}
    mask = {"w": True, "b": False, "sub": {"k": True}}
    got = []
    for inner in _optax_and_lm(weight_decay=1e-2, weight_decay_mask=mask, momentum=0.9):
        tx = optax.masked(inner, {"w": True, "b": True, "sub": {"k": False}})
        got.append(tx.update(grads, tx.init(params), params)[0])
    for k in ("w", "b"):
        np.testing.assert_allclose(to_numpy(got[1][k]), to_numpy(got[0][k]), rtol=1e-5, atol=1e-9)
    some = {"a": jnp.ones((3, 2)), "b": None}
    got = [
        tx.update({"a": jnp.full((3, 2), 0.5), "b": None}, tx.init(some), some)[0]
        for tx in _optax_and_lm(weight_decay=1e-2, weight_decay_mask={"a": True, "b": False})
    ]
    np.testing.assert_allclose(to_numpy(got[1]["a"]), to_numpy(got[0]["a"]), rtol=1e-5, atol=1e-9)


def test_a_group_of_no_parameters_in_multi_transform():
    """multi_transform inits every transformation, one whose label no parameter has too
    (its parameters all MaskedNodes): lm refused "a tree with at least one array"."""
    require_backend("jax")
    import jax.numpy as jnp
    import optax

    import lars_multi.optax

    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    tx = optax.multi_transform(
        {"lars": lars_multi.optax.lars(0.1), "frozen": optax.set_to_zero()}, {"w": "frozen", "b": "frozen"}
    )
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    assert all(float(jnp.abs(u).max()) == 0 for u in updates.values())
    updates, state = tx.update(params, state, params)


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_tree_map_params_maps_the_buffers_as_over_optax_lars_state(preset):
    """optax.tree_utils.tree_map_params (how shardings are mapped over a state) inits the
    transformation with a placeholder of no leaves: lm.optax made no buffers of its
    structure, and the map failed with JAX's pytree structure error."""
    require_backend("jax")
    import jax.numpy as jnp
    import optax

    import lars_multi.optax

    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), lars_multi.optax.lars(0.1, preset=preset))
    state = tx.init(params)
    mapped = optax.tree_utils.tree_map_params(
        tx, lambda _: "param", state, transform_non_params=lambda _: None
    )
    lars_state = mapped[1]
    assert lars_state.momentum == {"w": "param", "b": "param"} and lars_state.count is None
    assert lars_state.started == ({"w": "param", "b": "param"} if preset == "timm" else None)


def test_a_none_gradient_gets_a_none_update_as_optax_sgd_gives():
    """A None gradient's update was an array of zeros, so a transformation chained after
    lm.optax.lars took the frozen parameter for a live one: optax.add_decayed_weights moved
    it by 0.33 in 3 steps. Its update is None, as optax.sgd's, and such a chain fails as
    optax.sgd's does, instead of moving the parameter."""
    require_backend("jax")
    import jax.numpy as jnp
    import optax

    import lars_multi.optax

    params = {"w": jnp.ones((4, 3)), "frozen": jnp.ones((3, 2))}
    grads = {"w": jnp.full((4, 3), 0.5), "frozen": None}
    native_sgd = optax.sgd(0.1, momentum=0.9)
    for tx in (lars_multi.optax.lars(0.1, momentum=0.9, preset="optax"), native_sgd):
        updates, _ = tx.update(grads, tx.init(params), params)
        assert updates["frozen"] is None and updates["w"] is not None
    failures = []
    for first in (lars_multi.optax.lars(0.1, momentum=0.9, preset="optax"), native_sgd):
        tx = optax.chain(first, optax.add_decayed_weights(0.1))
        state, p = tx.init(params), params
        try:
            for _ in range(3):
                updates, state = tx.update(grads, state, p)
                p = optax.apply_updates(p, updates)
        except (TypeError, ValueError):
            failures.append(True)
            continue
        failures.append(False)
        np.testing.assert_array_equal(np.asarray(p["frozen"]), 1.0)
    assert failures[0] == failures[1]


def test_an_equinox_modules_leaves_that_are_no_arrays_get_no_update():
    """Updates of a whole equinox module (its activation functions are leaves, with None
    gradients): a zeros_like of a function failed, and a Python number's update became an
    array (apply_updates changed the leaf's type); both are None, as optax.sgd gives."""
    require_backend("jax")
    eqx = pytest.importorskip("equinox")
    import jax
    import jax.numpy as jnp

    import lars_multi.optax

    mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.RandomState(0).randn(5, 3), jnp.float32)
    grads = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2))(mlp)
    tx = lars_multi.optax.lars(0.1, momentum=0.9, preset="optax")
    state = tx.init(eqx.filter(mlp, eqx.is_array))
    updates, _ = tx.update(grads, state, mlp)
    assert updates.activation is None and updates.final_activation is None
    new = eqx.apply_updates(mlp, updates)
    assert new.activation is mlp.activation
    params = {"w": jnp.ones((2, 2)), "scale": 2.0}
    updates, _ = tx.update({"w": jnp.full((2, 2), 0.5), "scale": None}, tx.init(params), params)
    assert updates["scale"] is None


@pytest.mark.parametrize("kind", ["MLP", "Sequential"])
def test_an_equinox_module_of_bools_is_a_mask_tree_as_optax_reads_it(kind):
    """optax's usual mask, jax.tree.map(lambda x: x.ndim > 1, params), is a module of bools
    when params are an equinox module, and a module can be called: it was called, as a
    mask of the params (MLP) or per leaf (Sequential), and failed inside the model. A
    callable is a function only where its leaves are all callable, as optax asks."""
    require_backend("jax")
    eqx = pytest.importorskip("equinox")
    optax = pytest.importorskip("optax")
    import jax
    import jax.numpy as jnp

    import lars_multi.optax

    key = jax.random.PRNGKey(0)
    if kind == "MLP":
        model = eqx.nn.MLP(3, 2, 4, 1, key=key)
    else:
        model = eqx.nn.Sequential(
            [eqx.nn.Linear(3, 4, key=key), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Linear(4, 2, key=key)]
        )
    params = eqx.filter(model, eqx.is_array)
    grads = jax.tree.map(jnp.sin, params)
    mask = jax.tree.map(lambda x: x.ndim > 1, params)
    assert callable(mask)
    want = optax.lars(0.5, weight_decay=0.1, weight_decay_mask=mask, trust_ratio_mask=mask)
    got = lars_multi.optax.lars(
        0.5, weight_decay=0.1, weight_decay_mask=mask, adapt_mask=mask, preset="optax"
    )
    w_updates, _ = want.update(grads, want.init(params), params)
    g_updates, _ = got.update(grads, got.init(params), params)
    for a, b in zip(jax.tree.leaves(g_updates), jax.tree.leaves(w_updates), strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-7)
    of_params = lars_multi.optax.lars(
        0.5, weight_decay=0.1, weight_decay_mask=lambda p: mask, adapt_mask=lambda p: mask, preset="optax"
    )
    f_updates, _ = of_params.update(grads, of_params.init(params), params)
    for a, b in zip(jax.tree.leaves(f_updates), jax.tree.leaves(g_updates), strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_a_mask_function_that_is_also_a_pytree_is_called():
    """A mask function may be a pytree with fields that are no bools: an equinox module with
    __call__(path, array), a method of a module, a jax.tree_util.Partial, a NamedTuple with
    __call__. Read as mask trees (their leaves were not all callable), they were refused;
    only a tree whose leaves are all bools is a mask tree."""
    require_backend("jax")
    eqx = pytest.importorskip("equinox")
    from typing import NamedTuple

    import jax
    import jax.numpy as jnp
    from jax.tree_util import Partial

    class ByRank(eqx.Module):
        min_ndim: int = 2

        def __call__(self, path, array):
            return array.ndim >= self.min_ndim

    class Model(eqx.Module):
        w: jax.Array

        def mask(self, path, array):
            return array.ndim > 1

    class ByName(NamedTuple):
        names: tuple

        def __call__(self, path, array):
            return path[-1] in self.names

    def per_leaf(threshold, path, array):
        return array.ndim > threshold

    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.full(2, 0.25)}
    tree = {"w": True, "b": False}
    want = lm.optim.lars(0.1, weight_decay=1e-2, adapt_mask=tree, weight_decay_mask=tree, preset="optax")
    expected, _ = want.step(params, grads, want.init(params))
    for mask in (ByRank(), Model(jnp.ones(3)).mask, Partial(per_leaf, 1), ByName(("w",))):
        opt = lm.optim.lars(0.1, weight_decay=1e-2, adapt_mask=mask, weight_decay_mask=mask, preset="optax")
        new, _ = opt.step(params, grads, opt.init(params))
        for k in params:
            np.testing.assert_array_equal(to_numpy(new[k]), to_numpy(expected[k]))


def test_numpy_parameters_outside_jit():
    """A flax TrainState restored from bytes holds NumPy parameters: optax.lars steps them
    with JAX or NumPy gradients; lm refused them (mixed frameworks, or its own count)."""
    require_backend("jax")
    import jax.numpy as jnp

    params = {"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}
    for grads in (
        {"w": jnp.full((3, 2), 0.5), "b": jnp.full(2, 0.25)},
        {"w": np.full((3, 2), 0.5, np.float32), "b": np.full(2, 0.25, np.float32)},
    ):
        want, got = (tx.update(grads, tx.init(params), params)[0] for tx in _optax_and_lm(weight_decay=1e-3))
        for k in params:
            np.testing.assert_allclose(to_numpy(got[k]), to_numpy(want[k]), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_updates_have_the_steps_precision_not_the_parameters(dtype):
    """The update was w' - w, rounded to w's precision: updates far below w lost digits
    (1e-4 relative in float32 where optax.lars's are exact to rounding), and
    optax.apply_every, which adds 8 updates before applying them, kept 11% of a
    bfloat16 step. The update is the step's increment now, as optax.lars's is."""
    require_backend("jax")
    import jax
    import optax

    k0, k1 = jax.random.split(jax.random.PRNGKey(0))
    params = {"w": (jax.random.normal(k0, (16, 16)) + 4.0).astype(dtype)}
    grads = {"w": jax.random.normal(k1, (16, 16)).astype(dtype)}
    lr = 1.0 if dtype == "bfloat16" else 2e-4
    w, g = np.asarray(params["w"], np.float64), np.asarray(grads["w"], np.float64)
    moved = 8 * lr * 1e-3 * np.linalg.norm(w) / np.linalg.norm(g) * np.abs(g)  # (8 steps, float64)
    got = []
    for base in _optax_and_lm(lr, momentum=0.0):
        tx = optax.chain(base, optax.apply_every(8))
        p, state = params, tx.init(params)
        for _ in range(8):
            update, state = jax.jit(tx.update)(grads, state, p)
            p = optax.apply_updates(p, update)
        got.append(np.abs(np.asarray(p["w"], np.float64) - w).mean())
    assert got[1] == pytest.approx(got[0], rel=0.05), got  # (optax.lars: 97% of the step in bfloat16)
    assert got[1] == pytest.approx(moved.mean(), rel=0.1), (got, moved.mean())
    if dtype == "float32":
        want, mine = (
            tx.update(grads, tx.init(params), params)[0]["w"] for tx in _optax_and_lm(lr, momentum=0.9)
        )
        np.testing.assert_allclose(np.asarray(mine), np.asarray(want), rtol=1e-5)


def test_an_infinite_weight_of_a_layer_not_adapted_has_the_finite_update_optax_gives():
    """A layer neither adapted nor decayed steps by -lr g: optax.lars's update is finite
    where a weight is infinite; the increment was 0 w - lr g, NaN there (0 inf)."""
    require_backend("jax")
    import jax.numpy as jnp

    params = {"a": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([jnp.inf, 1.0, 2.0])}
    grads = {"a": jnp.array([0.1, 0.2, 0.3]), "b": jnp.array([0.1, 0.2, 0.3])}
    import optax

    import lars_multi.optax

    mask = {"a": True, "b": False}
    for tx in (
        optax.lars(0.1, momentum=0.0, trust_ratio_mask=mask, weight_decay_mask=False),
        lars_multi.optax.lars(0.1, preset="optax", momentum=0.0, adapt_mask=mask, weight_decay_mask=False),
    ):
        got = tx.update(grads, tx.init(params), params)[0]["b"]
        np.testing.assert_allclose(np.asarray(got), [-0.01, -0.02, -0.03], rtol=1e-6)


def test_gradients_of_another_mapping_type_or_key_order_meet_their_layers():
    """The step pairs gradients with parameters by key, but the updates were then laid
    out by ``jax.tree.map`` over the gradients and the step's increments, which raised
    JAX's own ValueError (not an lm error) for an OrderedDict against a dict, or two
    key orders: the updates are given in the parameters' structure then."""
    import collections

    import jax
    import optax

    params, (grads, *_) = _params_and_grads()
    ordered = collections.OrderedDict(reversed(list(params.items())))
    shuffled = dict(reversed(list(grads.items())))
    tx = lm.optax.lars(0.1, momentum=0.9, weight_decay=1e-3)
    want, _ = tx.update(grads, tx.init(params), params)
    got, state = jax.jit(tx.update)(shuffled, tx.init(ordered), ordered)
    assert type(got) is collections.OrderedDict and list(got) == list(ordered)
    for key in params:
        jax.tree.map(np.testing.assert_array_equal, got[key], want[key])
    new = optax.apply_updates(ordered, got)
    for key in params:
        jax.tree.map(np.testing.assert_allclose, new[key], optax.apply_updates(params, want)[key])
    assert int(state.count) == 1


@pytest.mark.parametrize("entry", ["optax", "optim"])
def test_an_eager_timm_step_leaves_a_state_jax_can_donate(entry):
    """After one eager step with the timm preset, every layer's start flag is a buffer of
    its own: they were one array, and a jitted step donating the state failed with XLA's
    "Attempt to donate the same buffer twice", after a pickle round trip too."""
    import pickle

    import jax
    import optax

    params, grads = _params_and_grads()
    if entry == "optax":
        tx = lm.optax.lars(0.1, momentum=0.9, weight_decay=1e-4, preset="timm")

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        state = tx.init(params)
    else:
        opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-4, preset="timm")

        def step(params, state, grads):
            return opt.step(params, grads, state)

        state = opt.init(params)
    params, state = step(params, state, grads[0])
    flags = jax.tree.leaves(state.started)
    assert len({id(flag) for flag in flags}) == len(flags) == 4
    state = pickle.loads(pickle.dumps(state))
    donating = jax.jit(step, donate_argnums=(0, 1))
    eager_params, _ = step(params, state, grads[1])
    params, state = donating(params, state, grads[1])
    for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(eager_params)):
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-6)
