"""LARS on sharded and replicated JAX parameters (8 host CPU devices).

The JAX cases run once, in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the rest of the suite
keeps its single device): the script prints, for every case, the largest
relative difference from the unsharded result and whether every output kept
its input's sharding; the tests below check those numbers.

* ``NamedSharding`` placement (sharded ``P("x")``, replicated ``P()``, mixed),
  eager and under ``jax.jit``: XLA's partitioner computes global norms, so the
  results equal the unsharded ones and keep their sharding.
* Inside ``jax.shard_map`` each device sees its shard: ``axis_name`` sums the
  squared norms over the mesh axis (one name, or a tree of names and None for
  replicated leaves). Without it the norms are per shard (negative control), and
  a replicated leaf summed over the axis is overcounted (second control).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import require_backend, run_python

import lars_multi as lm
from lars_multi._registry import get_backend

TOLERANCE = 1e-6

SCRIPT = r"""
import json
import re
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
import lars_multi as lm
import lars_multi.optax
from lars_multi._registry import get_backend

assert len(jax.devices()) == 8, jax.devices()
mesh = jax.make_mesh((8,), ("x",))
rng = np.random.default_rng(0)


def tree(scale):
    return {
        "dense": {"kernel": scale * rng.standard_normal((16, 8)), "bias": scale * rng.standard_normal(8)},
        "head": scale * rng.standard_normal((8, 24)),
    }


W = jax.tree.map(lambda x: x.astype(np.float32), tree(1.0))
G = jax.tree.map(lambda x: x.astype(np.float32), tree(0.1))
ALL = {"dense": {"kernel": P("x"), "bias": P("x")}, "head": P(None, "x")}
REPLICATED = {"dense": {"kernel": P(), "bias": P()}, "head": P()}
MIXED = {"dense": {"kernel": P("x"), "bias": P()}, "head": P(None, "x")}
MIXED_NAMES = {"dense": {"kernel": "x", "bias": None}, "head": "x"}
is_spec = lambda s: isinstance(s, P)
results = {}


def put(t, specs):
    return jax.tree.map(lambda s, x: jax.device_put(x, NamedSharding(mesh, s)), specs, t, is_leaf=is_spec)


def rel(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def kept(a, like):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(like))
    return all(x.sharding.is_equivalent_to(y.sharding, x.ndim) for x, y in pairs)


def record(case, got, ref, like=None):
    results[case] = {"rel": rel(got, ref), "kept": None if like is None else kept(got, like)}


W0, G0 = jax.tree.map(jnp.asarray, W), jax.tree.map(jnp.asarray, G)
update = lambda w, g, **kw: lm.lars_update(w, g, 0.1, decay_lambda=0.01, **kw)
REF = update(W0, G0)
OPTS = {
    "optim_paper": lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02),
    "optim_optax": lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, preset="optax"),
}


def run_opt(opt, params, steps=5, wrap=lambda f: f):
    step = wrap(lambda p, g, s: opt.step(p, g, s))
    state = opt.init(params)
    for _ in range(steps):
        params, state = step(params, like(G, params), state)
    return params


def like(t, params):  # t placed like params
    return jax.tree.map(lambda x, p: jax.device_put(x, p.sharding), t, params)


def run_optax(tx, params, steps=5, wrap=jax.jit):
    def step(p, g, s):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step, state = wrap(step), tx.init(params)
    for _ in range(steps):
        params, state = step(params, like(G, params), state)
    return params


OPT_REFS = {k: run_opt(opt, W0) for k, opt in OPTS.items()}
TX = lambda **kw: lm.optax.lars(0.1, momentum=0.9, weight_decay=1e-2, preset="optax", **kw)
TX_REF = run_optax(TX(), W0)

# 1. NamedSharding placement: eager and under jax.jit, no axis_name needed.
for place, specs in (("sharded", ALL), ("replicated", REPLICATED), ("mixed", MIXED)):
    w, g = put(W, specs), put(G, specs)
    record(f"{place}/lars_update", update(w, g), REF, w)
    record(f"{place}/lars_update_jit", jax.jit(update)(w, g), REF, w)
    record(f"{place}/lars_update_one_array", update(w["head"], g["head"]), REF["head"], w["head"])
    for k, opt in OPTS.items():
        record(f"{place}/{k}_5_steps", run_opt(opt, w), OPT_REFS[k], w)
        record(f"{place}/{k}_5_steps_jit", run_opt(opt, w, wrap=jax.jit), OPT_REFS[k], w)
    record(f"{place}/optax_5_steps_jit", run_optax(TX(), w), TX_REF, w)

# 2. Inside jax.shard_map: axis_name sums the norms over the mesh axis.
def smap(f, specs, n_in=2, out=None):
    return jax.shard_map(f, mesh=mesh, in_specs=(specs,) * n_in, out_specs=specs if out is None else out)


w, g = put(W, ALL), put(G, ALL)
f = smap(lambda w, g: update(w, g, axis_name="x"), ALL)
record("shard_map/one_name", f(w, g), REF, w)
record("shard_map/one_name_jit", jax.jit(f)(w, g), REF, w)
f = jax.jit(smap(lambda w, g: update(w, g, axis_name=("x",)), ALL))
record("shard_map/tuple_name_jit", f(w, g), REF, w)
record("control/shard_map_no_axis_name", jax.jit(smap(update, ALL))(w, g), REF)
head = P(None, "x")
f = jax.shard_map(lambda w, g: update(w, g, axis_name="x"), mesh=mesh, in_specs=(head, head), out_specs=head)
record("shard_map/one_array_jit", jax.jit(f)(w["head"], g["head"]), REF["head"], w["head"])

w, g = put(W, MIXED), put(G, MIXED)
f = smap(lambda w, g: update(w, g, axis_name=MIXED_NAMES), MIXED)
record("shard_map/mixed_tree_of_names", f(w, g), REF, w)
record("shard_map/mixed_tree_of_names_jit", jax.jit(f)(w, g), REF, w)
# A replicated leaf summed over the axis counts 8 times: bias differs.
over = jax.jit(smap(lambda w, g: update(w, g, axis_name="x"), MIXED))(w, g)
record("control/replicated_leaf_summed", over["dense"]["bias"], REF["dense"]["bias"])
rep_norm = jax.jit(jax.shard_map(
    lambda x: (get_backend("jax").norm(x, "x") ** 2, get_backend("jax").norms([x], [None])[0] ** 2),
    mesh=mesh, in_specs=P(), out_specs=(P(), P()),
))(jax.device_put(jnp.array([1.0, 2.0]), NamedSharding(mesh, P())))
results["control/replicated_sq_norm_summed_vs_not"] = [float(v) for v in rep_norm]
# A one-element layer (replicated: no axis) beside a sharded one: its norm is its magnitude.
one = jax.shard_map(
    lambda x, s: tuple(get_backend("jax").norms([x, s], ["x", None])),
    mesh=mesh, in_specs=(P("x"), P()), out_specs=(P(), P()),
)(
    jax.device_put(jnp.ones(8), NamedSharding(mesh, P("x"))),
    jax.device_put(jnp.float32(3e19), NamedSharding(mesh, P())),
)
results["norm/one_element_beside_a_shard"] = [float(v) for v in one]

def in_shard_map(specs):
    state = lm.optim.LarsState(P(), specs)
    return lambda f: jax.jit(
        jax.shard_map(f, mesh=mesh, in_specs=(specs, specs, state), out_specs=(specs, state))
    )


wa = put(W, ALL)
for k, opt in OPTS.items():
    c = opt.config
    named = lambda names: lm.optim.lars(
        0.1, momentum=0.9, weight_decay=1e-2, trust_coefficient=c.trust_coefficient,
        preset=c.preset.name, axis_name=names,
    )
    got = run_opt(named(MIXED_NAMES), w, wrap=in_shard_map(MIXED))
    record(f"shard_map/{k}_mixed_5_steps", got, OPT_REFS[k], w)
    record(f"control/{k}_no_axis_name", run_opt(opt, w, wrap=in_shard_map(MIXED)), OPT_REFS[k])
    got = run_opt(named("x"), wa, wrap=in_shard_map(ALL))
    record(f"shard_map/{k}_one_name_5_steps", got, OPT_REFS[k], wa)

got = run_optax(TX(axis_name=MIXED_NAMES), w, wrap=in_shard_map(MIXED))
record("shard_map/optax_mixed_5_steps", got, TX_REF, w)

# 3. A tuple of two layers on a 2 x 4 mesh: one name per layer as a list, and both axes
# on every layer as a tuple per layer (a tuple of two strings would read both ways: refused).
mesh2 = jax.make_mesh((2, 4), ("a", "b"))
pair_w, pair_g = (W["dense"]["kernel"], W["head"]), (G["dense"]["kernel"], G["head"])
pair_ref = update(*jax.tree.map(jnp.asarray, (pair_w, pair_g)))
for label, specs, names in (
    ("list_of_names", (P("a"), P(None, "b")), ["a", "b"]),
    ("tuple_of_two_axis_names", (P(("a", "b")), P(None, ("a", "b"))), (("a", "b"), ("a", "b"))),
):
    put2 = lambda t: tuple(jax.device_put(x, NamedSharding(mesh2, s)) for x, s in zip(t, specs))
    f = jax.jit(jax.shard_map(
        lambda w, g: update(w, g, axis_name=names), mesh=mesh2, in_specs=(specs, specs), out_specs=specs
    ))
    pw = put2(pair_w)
    record(f"shard_map/pair_{label}", f(pw, put2(pair_g)), pair_ref, pw)

# 3b. Gradients of another layout over the weights' devices (XLA laid the result out as it
# chose: replicated on a 4 x 2 mesh), or over the same devices in another order (a raw
# "incompatible devices" error): each gradient is laid out as its weights first.
mesh42 = jax.make_mesh((4, 2), ("a", "b"))
flipped = jax.sharding.Mesh(np.array(jax.devices()[::-1]), ("x",))
kernel, kernel_g = W["dense"]["kernel"], G["dense"]["kernel"]
grid_w = jax.device_put(kernel, NamedSharding(mesh42, P("a", "b")))
grid_ref = update(jnp.asarray(kernel), jnp.asarray(kernel_g))
for label, g in (
    ("transposed_layout", jax.device_put(kernel_g, NamedSharding(mesh42, P("b", "a")))),
    ("devices_in_another_order", jax.device_put(kernel_g, NamedSharding(flipped, P("x")))),
):
    record(f"layout/{label}", update(grid_w, g), grid_ref, grid_w)

# A gradient sharing one shard's buffer (not the first) with the weights, out=w: that
# buffer must not be donated (only first shards were compared: XLA read a donated
# buffer, and the process crashed).
shared_w = put({"v": jnp.arange(1.0, 17.0)}, {"v": P("x")})["v"]
other = put({"v": jnp.full(16, 0.5)}, {"v": P("x")})["v"]
pieces = [s.data for s in other.addressable_shards]
pieces[3] = shared_w.addressable_shards[3].data
shared_g = jax.make_array_from_single_device_arrays((16,), shared_w.sharding, pieces)
shared_ref = update(jnp.asarray(np.asarray(shared_w)), jnp.asarray(np.asarray(shared_g)))
holder = lm.Container(v=shared_w)
update(holder, lm.Container(v=shared_g), out=holder)
record("donation/gradient_sharing_a_later_shard", holder["v"], shared_ref, shared_w)

# 4. A name that no enclosing shard_map binds: lax.psum fails a bare assertion there.
try:
    jax.jit(smap(lambda w, g: update(w, g, axis_name="zz"), ALL))(wa, put(G, ALL))
    results["error/unbound_axis_name_in_shard_map"] = "no error"
except lm.LarsMultiError as e:
    results["error/unbound_axis_name_in_shard_map"] = f"{type(e).__name__}: {e}"
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def results() -> dict:
    require_backend("jax")
    pytest.importorskip("optax")
    out = run_python(SCRIPT, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    found = json.loads(out.splitlines()[-1])
    print("\n".join(f"{k}: {v}" for k, v in found.items()))
    return found


def test_a_gradient_sharing_a_later_shard_of_the_weights_is_not_donated(results: dict) -> None:
    found = results["donation/gradient_sharing_a_later_shard"]
    assert found["rel"] < TOLERANCE and found["kept"], found


def test_named_sharding_equals_unsharded_and_keeps_sharding(results: dict) -> None:
    cases = {k: v for k, v in results.items() if k.split("/")[0] in ("sharded", "replicated", "mixed")}
    assert len(cases) == 3 * 8
    for case, v in cases.items():
        assert v["rel"] <= TOLERANCE, (case, v)
        assert v["kept"], (case, v)


def test_gradients_of_another_layout_give_the_weights_layout(results: dict) -> None:
    cases = {k: v for k, v in results.items() if k.startswith("layout/")}
    assert len(cases) == 2
    for case, v in cases.items():
        assert v["rel"] <= TOLERANCE and v["kept"], (case, v)


def test_shard_map_with_axis_name_equals_unsharded(results: dict) -> None:
    cases = {k: v for k, v in results.items() if k.startswith("shard_map/")}
    assert len(cases) == 13
    for case, v in cases.items():
        assert v["rel"] <= TOLERANCE, (case, v)
        assert v["kept"], (case, v)


def test_shard_map_without_axis_name_uses_per_shard_norms(results: dict) -> None:
    # (100 times the tolerance at least: the optax preset's small trust
    # coefficient makes its 5 steps differ least, by about 4e-4.)
    for case in ("shard_map_no_axis_name", "optim_paper_no_axis_name", "optim_optax_no_axis_name"):
        assert results[f"control/{case}"]["rel"] > 100 * TOLERANCE, case


def test_replicated_leaf_is_not_summed_over_the_axis(results: dict) -> None:
    # Summed over 8 devices, the replicated bias's squared norm is 8 times too large ...
    assert results["control/replicated_sq_norm_summed_vs_not"] == [40.0, 5.0]
    assert results["norm/one_element_beside_a_shard"] == pytest.approx(
        [8**0.5, float(np.float32(3e19))], rel=1e-6
    )
    assert results["control/replicated_leaf_summed"]["rel"] > 1e-3
    # ... while None for it (shard_map/mixed_*) gives the unsharded result.
    assert results["shard_map/mixed_tree_of_names"]["rel"] <= TOLERANCE


def test_unbound_axis_name_in_shard_map_is_a_clear_error(results: dict) -> None:
    assert results["error/unbound_axis_name_in_shard_map"] == (
        "LarsMultiValueError: axis_name: expected names of mesh axes bound here (by an enclosing "
        "jax.shard_map, pmap or vmap), got 'zz', which is not"
    )


@pytest.mark.parametrize("name", ["numpy", "torch", "tensorflow"])
def test_axis_name_on_other_backends_is_a_clear_error(name: str) -> None:
    require_backend(name)
    ops = get_backend(name)
    w = ops.asarray(np.ones((2, 2), np.float32))
    with pytest.raises(lm.LarsMultiValueError, match="axis_name: supported on JAX only"):
        lm.lars_update(w, w, 0.1, axis_name="x")
    with pytest.raises(lm.LarsMultiValueError, match="axis_name: supported on JAX only"):
        lm.lars_update({"a": w}, {"a": w}, 0.1, axis_name={"a": "x"})
    opt = lm.optim.lars(0.1, axis_name="x")
    with pytest.raises(lm.LarsMultiValueError, match="axis_name: supported on JAX only"):
        opt.step({"a": w}, {"a": w}, opt.init({"a": w}))
    with pytest.raises(lm.LarsMultiValueError, match="axis_name: supported on JAX only"):
        ops.norm(w, "x")
    # None everywhere is the default path.
    np.testing.assert_allclose(
        ops.to_numpy(lm.lars_update({"a": w}, {"a": w}, 0.1, axis_name={"a": None})["a"]),
        ops.to_numpy(lm.lars_update(w, w, 0.1)),
    )


def test_a_tuple_of_names_that_could_name_each_layer_is_refused() -> None:
    """("x", "y") is one name of two mesh axes; where the layers are a tuple of two it
    could also name each: refused, with both spellings (lars_update and lm.optim)."""
    require_backend("jax")
    import jax.numpy as jnp

    w, g = (jnp.ones((2, 3)), jnp.ones(4)), (jnp.ones((2, 3)), jnp.ones(4))
    message = (
        r"^axis_name: expected a name of mesh axes for every layer or one per layer, got \('x', 'y'\), "
        r"which reads as both; write \['x', 'y'\] for one per layer, or \(\('x', 'y'\), \('x', 'y'\)\) "
        r"for all 2 axes on every layer$"
    )
    with pytest.raises(lm.LarsMultiValueError, match=message):
        lm.lars_update(w, g, 0.1, axis_name=("x", "y"))
    opt = lm.optim.lars(0.1, momentum=0.9, axis_name=("x", "y"))
    with pytest.raises(lm.LarsMultiValueError, match=message):
        opt.step(w, g, opt.init(w))
    # Unambiguous: a dict of layers, three layers, or one layer take it as one name.
    for tree in ({"a": w[0], "b": w[1]}, (*w, w[1])):
        lm.lars_update(tree, tree, 0.1)  # (no axis_name: a check of the trees alone)
        with pytest.raises(
            lm.LarsMultiValueError, match=r"^axis_name: expected names of mesh axes bound here"
        ):
            lm.lars_update(tree, tree, 0.1, axis_name=("x", "y"))


def test_axis_name_of_the_wrong_type() -> None:
    w = np.ones((2, 2), np.float32)
    with pytest.raises(lm.LarsMultiTypeError, match=r"axis_name\['a'\]: expected a mesh axis name"):
        lm.lars_update({"a": w}, {"a": w}, 0.1, axis_name={"a": 3})


DEVICES_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
import lars_multi as lm

d0, d1 = jax.devices()[:2]
rng = np.random.default_rng(0)
a, b, ga, gb = (rng.standard_normal((6, 4)).astype(np.float32) for _ in range(4))
want = lm.lars_update({"a": a, "b": b}, {"a": ga, "b": gb}, 0.1, decay_lambda=0.01)

def on(x, d, dtype=jnp.float32):
    return jax.device_put(jnp.asarray(x, dtype), d)

def mesh_sharding(*devices, spec=("x",)):
    mesh = jax.sharding.Mesh(np.array(devices), ("x",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

# Layers on two devices, each gradient on its layer's: a program per device.
w = {"a": lm.Array(on(a, d0)), "b": lm.Array(on(b, d1))}
lm.lars_update(w, {"a": on(ga, d0), "b": on(gb, d1)}, 0.1, decay_lambda=0.01, out=w)
print("model parallel", max(float(np.abs(w[k].to_numpy() - want[k]).max()) for k in "ab") < 1e-6,
      [next(iter(w[k].data.devices())).id for k in "ab"])
opt = lm.optim.lars(0.1, momentum=0.9)
params = {"a": on(a, d0), "b": on(b, d1)}
new, state = opt.step(params, {"a": on(ga, d0), "b": on(gb, d1)}, opt.init(params))
print("optimizer", [next(iter(new[k].devices())).id for k in "ab"])
# State made beside parameters on one device or one mesh (it was made on the default device):
# a jitted step moves nothing between devices.
for name, place in (("device", d1), ("mesh", mesh_sharding(d0, d1))):
    params = {"a": on(a, place), "b": on(b, place)}
    opt = lm.optim.lars(0.1, momentum=0.9, preset="timm")
    state = opt.init(params)
    with jax.transfer_guard("disallow"):
        new, state = jax.jit(opt.step)(params, {"a": on(ga, place), "b": on(gb, place)}, state)
    placed = (sorted(d.id for d in x.devices()) for x in (state.count, state.started["a"]))
    print("state beside", name, *placed)
# Uncommitted weights with gradients committed to two devices: each gradient is laid out as its
# weights (one program took layers drawn to two devices: "incompatible devices").
new = lm.lars_update(
    {"a": jnp.asarray(a), "b": jnp.asarray(b)}, {"a": on(ga, d1), "b": on(gb, d0)}, 0.1, decay_lambda=0.01
)
print("uncommitted", max(float(np.abs(np.asarray(new[k]) - want[k]).max()) for k in "ab") < 1e-6)
# A gradient or a rate committed elsewhere than its weights, refused by name.
for name, call in {
    "gradient": lambda: lm.lars_update({"a": on(a, d0)}, {"a": on(ga, d1)}, 0.1),
    "rate": lambda: lm.lars_update(on(a, d0), on(ga, d0), jax.device_put(jnp.float32(0.1), d1)),
    "rate order": lambda: lm.lars_update(
        on(a, mesh_sharding(d0, d1)), on(ga, mesh_sharding(d0, d1)), on(0.1, mesh_sharding(d1, d0, spec=()))
    ),
}.items():
    try:
        call()
        print(name, "not refused")
    except lm.LarsMultiValueError as e:
        print(name, e)
# An optimizer state moved to another device: timm's first-step flags raised XLA's error, and
# a count there was blamed on the learning rate (a schedule's value).
timm = lm.optim.lars(0.1, momentum=0.9, preset="timm")
schedule = lm.optim.lars(lm.schedules.warmup_cosine(peak=0.1, warmup_steps=2, total_steps=10))
params, grads = {"a": on(a, d0)}, {"a": on(ga, d0)}
for name, opt, move in (
    ("started", timm, lambda s: s._replace(started=jax.device_put(s.started, d1))),
    ("count", schedule, lambda s: s._replace(count=jax.device_put(s.count, d1))),
):
    try:
        opt.step(params, grads, move(opt.init(params)))
        print(name, "not refused")
    except lm.LarsMultiValueError as e:
        print(name, e)
# Half layers in chunks with out=w: a later chunk failing (a deleted gradient) leaves the
# weights as they were, none donated.
big, small = rng.standard_normal((1024, 1024)), rng.standard_normal((8, 8))
w = [lm.Array(on(big, d0, jnp.bfloat16)), lm.Array(on(small, d0, jnp.bfloat16))]
gone = on(small, d0, jnp.bfloat16)
gone.delete()
try:
    lm.lars_update(w, [on(big, d0, jnp.bfloat16), gone], 0.1, out=w)
except Exception:
    pass
print("donated", [x.data.is_deleted() for x in w])
"""


def test_layers_on_other_devices_step_by_device_and_misplaced_inputs_are_refused() -> None:
    """Layers committed to two devices, each with its gradient there (model
    parallelism), raised XLA's "incompatible devices" (one program took them all); a
    gradient or rate committed elsewhere (a rate: or to the weights' devices in another
    mesh order) raised it too, and with half layers in chunks
    and ``out=w``, a failing later chunk found the earlier chunks' weights donated
    (deleted). Now a program per device; the misplaced inputs refused by name; donation
    only where the whole update is one program."""
    require_backend("jax")
    out = run_python(
        DEVICES_SCRIPT, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    expected = [
        r"model parallel True \[0, 1\]",
        r"optimizer \[0, 1\]",
        r"state beside device \[1\] \[1\]$",
        r"state beside mesh \[0, 1\] \[0, 1\]$",
        r"uncommitted True",
        r"gradient dcdw\['a'\]: expected an array on cpu:0 \(like w\['a'\]\), got one on cpu:1",
        r"rate lr: expected a 0-d array on cpu:0 \(like w\), got one on cpu:1",
        r"rate order lr: expected a 0-d array on cpu:0, cpu:1 \(like w\), got one on cpu:1, cpu:0",
        r"started state.started\['a'\]: expected a 0-d array on cpu:0 \(like params\['a'\]\), got .*cpu:1",
        r"count state.count: expected a 0-d array on cpu:0 \(like params\['a'\]\), got one on cpu:1",
        r"donated \[False, False\]",
    ]
    lines = out.splitlines()
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected):
        assert re.match(pattern, line), (line, pattern)


FIRST_USE_IN_SHARD_MAP = """
import jax, jax.numpy as jnp, numpy as np
import lars_multi as lm
from jax.sharding import NamedSharding, PartitionSpec as P

mesh = jax.make_mesh((2,), ("x",))
specs = {"kernel": P("x"), "bias": P()}
rng = np.random.default_rng(0)
w = {"kernel": rng.standard_normal((4, 3), dtype="float32"), "bias": np.ones(3, np.float32)}
g = {"kernel": rng.standard_normal((4, 3), dtype="float32"), "bias": np.full(3, 0.5, np.float32)}
w = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in w.items()}
g = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in g.items()}
step = jax.shard_map(
    lambda w, g: lm.lars_update(w, g, 0.1, axis_name={"kernel": "x", "bias": None}),
    mesh=mesh, in_specs=(specs, specs), out_specs=specs,
)
first = step(w, g)  # (the backend module is imported inside this trace)
again = step(w, g)
reference = lm.lars_update(w, g, 0.1)
print(all(np.allclose(first[k], reference[k], rtol=1e-6) and np.array_equal(again[k], first[k]) for k in w))
"""


def test_a_first_call_inside_shard_map_steps() -> None:
    """The README's shard_map example as a process's first lars_multi call: the JAX
    backend, imported inside the trace, took the tracer's type for a concrete array's,
    and every shard_map step of the process failed with ConcretizationTypeError."""
    require_backend("jax")
    out = run_python(
        FIRST_USE_IN_SHARD_MAP, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    assert out.strip().splitlines()[-1] == "True", out
