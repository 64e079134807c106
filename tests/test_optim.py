"""``lm.optim.lars``: every knob with every preset against a float64 NumPy
reference written here from the conventions' table, ``preset="optax"``
against ``optax.lars``, ``preset="timm"`` against timm's ``Lars``, in-place
steps, the state, errors, half precision, and the step under ``jax.jit`` and
``tf.function``.

The conventions (c trust coefficient, lambda weight decay, eta learning rate,
mu momentum, d dampening, u = g + lambda w where weight decay applies, else g):

=========  =================================  ==========================================
preset     trust ratio r (1 where a norm is 0)  buffer and step
=========  =================================  ==========================================
paper      c|w| / (|g| + lambda|w| + eps)      v <- mu v + (1-d) eta r u; w <- w - v
optax      c|w| / (|u| + eps)                  as paper
timm       as paper; adapted only where        b <- mu b + (1-d) r u (b = r u at first);
           lambda != 0, unless always_adapt    w <- w - eta b
=========  =================================  ==========================================
"""

from __future__ import annotations

import math
import pickle
import re
import warnings

import numpy as np
import pytest
from _timm_lars import load_timm_lars
from conftest import is_installed, native, require_backend, to_numpy, x64

import lars_multi as lm
from lars_multi.schedules import warmup_polynomial

STEPS = 50
TRUST = 0.01  # large enough that the trust ratio matters, small enough that trust_clip clips some layers only
LR = 0.1

# --- trees of nested dicts ---------------------------------------------------------------


def tmap(f, *trees):
    if isinstance(trees[0], dict):
        return {k: tmap(f, *(t[k] for t in trees)) for k in trees[0]}
    return f(*trees)


def tleaves(tree, prefix=()):
    """(path, leaf) pairs, paths as tuples of keys."""
    if isinstance(tree, dict | lm.Container):
        out = []
        for k in tree:
            out.extend(tleaves(tree[k], (*prefix, k)))
        return out
    return [(prefix, tree)]


def tget(tree, path):
    for k in path:
        tree = tree[k]
    return tree


SHAPES = {"dense": {"w": (4, 3), "b": (3,)}, "conv": (2, 3, 3, 3), "zero": (3, 2)}
GRAD_SCALE = {"dense": {"w": 0.3, "b": 0.1}, "conv": 1.0, "zero": 0.5}


def make_problem(steps=STEPS, seed=0):
    """float64 params of order one (one all-zero layer) and ``steps`` gradients of order 0.1-1;
    the conv gradient is zero at step 3 (the r = 1 rule)."""
    rng = np.random.default_rng(seed)
    params = tmap(lambda s: rng.standard_normal(s), SHAPES)
    params["zero"] = np.zeros(SHAPES["zero"])
    grads = []
    for t in range(steps):
        g = tmap(lambda s, a: a * rng.standard_normal(s), SHAPES, GRAD_SCALE)
        if t == 3:
            g["conv"] = np.zeros(SHAPES["conv"])
        grads.append(g)
    return params, grads


# --- the float64 reference ---------------------------------------------------------------


def poly_lr(t, peak=LR, warmup=5, total=60, power=2.0, end=0.0):
    """warmup_polynomial, written out."""
    if t < warmup:
        return peak * t / warmup
    p = min(max((t - warmup) / (total - warmup), 0.0), 1.0)
    return (peak - end) * (1.0 - p) ** power + end


def resolve_mask(mask, preset, params):
    if mask is None:
        return {p: (w.ndim > 1 if preset == "paper" else True) for p, w in tleaves(params)}
    if callable(mask):
        return {p: bool(mask(p, w)) for p, w in tleaves(params)}
    return {p: bool(tget(mask, p)) for p, _ in tleaves(params)}


def reference(preset, kw, params, grads, lr_of=None):
    """Every step of ``lm.optim.lars(**kw, preset=preset)`` in float64: params and buffers."""
    mu = kw.get("momentum", 0.9)
    nesterov = kw.get("nesterov", False)
    d = kw.get("dampening", 0.0)
    lam = kw.get("weight_decay", 0.0)
    c = kw.get("trust_coefficient", 0.001)
    eps = kw.get("eps")
    eps = (1e-8 if preset == "timm" else 0.0) if eps is None else eps
    clip = kw.get("trust_clip", False)
    always = kw.get("always_adapt", False)
    lr_of = lr_of or (lambda t: kw["learning_rate"])
    adapt_mask = resolve_mask(kw.get("adapt_mask"), preset, params)
    decay_mask = resolve_mask(kw.get("weight_decay_mask"), preset, params)
    w = {p: np.array(x, np.float64) for p, x in tleaves(params)}
    buf = {p: np.zeros_like(x) for p, x in w.items()}
    for t, gtree in enumerate(grads):
        eta = lr_of(t)
        for p in w:
            g = np.asarray(tget(gtree, p), np.float64)
            lam_l = lam if decay_mask[p] else 0.0
            u = g + lam_l * w[p]
            adapted = adapt_mask[p] and (preset != "timm" or always or lam_l != 0)
            r = 1.0
            if adapted:
                wn, gn, un = (float(np.sqrt(np.sum(x * x))) for x in (w[p], g, u))
                if preset == "optax":
                    r = 1.0 if wn == 0 or un == 0 else c * wn / (un + eps)
                else:
                    r = 1.0 if wn == 0 or gn == 0 else c * wn / (gn + lam_l * wn + eps)
                if clip:
                    r = 1.0 if eta == 0 else min(r / eta, 1.0)
            if mu == 0:
                w[p] = w[p] - eta * r * u
            elif preset == "timm":
                buf[p] = r * u if t == 0 else mu * buf[p] + (1 - d) * r * u
                step = r * u + mu * buf[p] if nesterov else buf[p]
                w[p] = w[p] - eta * step
            else:
                buf[p] = mu * buf[p] + (1 - d) * eta * r * u
                w[p] = w[p] - ((mu * buf[p] + eta * r * u) if nesterov else buf[p])
    return _rebuild(w), (None if mu == 0 else _rebuild(buf))


def _rebuild(leaves):
    out: dict = {}
    for p, x in leaves.items():
        node = out
        for k in p[:-1]:
            node = node.setdefault(k, {})
        node[p[-1]] = x
    return out


# --- running the library -----------------------------------------------------------------


def to_native(name, tree, dtype):
    return tmap(lambda x: native(name, x, dtype), tree)


def run_lib(name, opt, params, grads, dtype, steps=None):
    p = to_native(name, params, dtype)
    state = opt.init(p)
    for g in grads[:steps]:
        p, state = opt.step(p, to_native(name, g, dtype), state)
    return p, state


def max_diff(got, want):
    return max(
        float(np.max(np.abs(to_numpy(tget(got, path)).astype(np.float64) - x))) for path, x in tleaves(want)
    )


def max_rel_diff(got, want):
    return max(
        float(np.max(np.abs(to_numpy(tget(got, path)).astype(np.float64) - x)))
        / max(1.0, float(np.max(np.abs(x))))
        for path, x in tleaves(want)
    )


LARGEST = {}  # (preset, reference, dtype) -> largest difference seen, printed at the end (pytest -s)


def record(key, value):
    LARGEST[key] = max(LARGEST.get(key, 0.0), value)


def assert_matches(got, want, dtype, key):
    if dtype == "float32":
        diff = max_diff(got, want)
        record((*key, dtype), diff)
        assert diff <= 1e-5, f"max abs difference {diff:.3g} after {STEPS} steps"
    else:
        diff = max_rel_diff(got, want)
        record((*key, dtype), diff)
        assert diff <= 1e-12, f"max relative difference {diff:.3g} after {STEPS} steps"


@pytest.fixture(scope="module", autouse=True)
def _report_largest():
    yield
    if LARGEST:
        print("\nlargest differences:")
        for key in sorted(LARGEST):
            print("  ", *key, f"{LARGEST[key]:.3g}")


# --- 1. every knob, every preset, against the float64 reference --------------------------

ADAPT_TREE = {"dense": {"w": True, "b": False}, "conv": True, "zero": True}
DECAY_TREE = {"dense": {"w": False, "b": True}, "conv": True, "zero": False}


def adapt_fn(path, w):
    return path[0] != "dense" or len(w.shape) == 1


def decay_fn(path, w):
    return path != ("conv",)


CONFIGS = {
    "sgd": dict(momentum=0.0),
    "sgd-decay": dict(momentum=0.0, weight_decay=1e-3),
    "momentum": dict(),
    "decay": dict(weight_decay=1e-3),
    "nesterov": dict(nesterov=True, weight_decay=1e-3),
    "dampening": dict(dampening=0.1, weight_decay=1e-3),
    "trust-clip": dict(trust_clip=True, weight_decay=1e-3),
    "always-adapt": dict(always_adapt=True),
    "always-adapt-clip-decay": dict(always_adapt=True, trust_clip=True, weight_decay=1e-3, nesterov=True),
    "mask-tree": dict(adapt_mask=ADAPT_TREE, weight_decay_mask=DECAY_TREE, weight_decay=1e-3),
    "mask-fn": dict(adapt_mask=adapt_fn, weight_decay_mask=decay_fn, weight_decay=1e-3, always_adapt=True),
    "eps": dict(eps=0.5, weight_decay=1e-3),
    "schedule": dict(schedule=True, weight_decay=1e-3, trust_clip=True),
}
# JAX and TensorFlow compile the step once per configuration: a subset that still turns every knob.
COMPILED_CONFIGS = (
    "sgd-decay",
    "dampening",
    "always-adapt-clip-decay",
    "mask-tree",
    "mask-fn",
    "eps",
    "schedule",
)
PRESET_NAMES = ("paper", "optax", "timm")


def lr_schedule(name, dtype):
    """warmup_polynomial: an array count's rate in float64 where the framework has it
    (it was rounded to float32), so float64 runs hold to 1e-12 too."""
    return warmup_polynomial(LR, 5, 60)


def make_opt(preset, config, name, dtype):
    kw = dict(CONFIGS[config], trust_coefficient=TRUST)
    schedule = kw.pop("schedule", False)
    kw["learning_rate"] = lr_schedule(name, dtype) if schedule else LR
    ref_kw = dict(kw, learning_rate=LR)
    return lm.optim.lars(preset=preset, **kw), ref_kw, (poly_lr if schedule else None)


@pytest.fixture(scope="module")
def problem():
    return make_problem()


@pytest.fixture(scope="module")
def references(problem):
    params, grads = problem
    out = {}
    for preset in PRESET_NAMES:
        for config in CONFIGS:
            _, ref_kw, lr_of = make_opt(preset, config, "numpy", "float32")
            out[preset, config] = reference(preset, ref_kw, params, grads, lr_of)
    return out


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_knob_against_reference_float32(backend, preset, problem, references, request):
    params, grads = problem
    configs = CONFIGS if backend in ("numpy", "torch") else COMPILED_CONFIGS
    failures = []
    for config in configs:
        opt, _, _ = make_opt(preset, config, backend, "float32")
        got, state = run_lib(backend, opt, params, grads, "float32")
        want_w, want_b = references[preset, config]
        try:
            assert_matches(got, want_w, "float32", (preset, "float64 reference"))
            if want_b is not None:
                assert_matches(state.momentum, want_b, "float32", (preset, "float64 reference buffers"))
            assert int(to_numpy(state.count)) == STEPS
        except AssertionError as e:
            failures.append(f"{config}: {e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("name", ["numpy", "torch", "jax", "tensorflow"])
def test_every_knob_against_reference_float64(name, preset, problem, references):
    require_backend(name)
    params, grads = problem
    compiled = ("dampening", "mask-fn", "always-adapt-clip-decay", "schedule")
    configs = CONFIGS if name in ("numpy", "torch") else compiled
    failures = []
    with lm.using_backend(name), x64(name):
        for config in configs:
            opt, _, _ = make_opt(preset, config, name, "float64")
            got, state = run_lib(name, opt, params, grads, "float64")
            want_w, want_b = references[preset, config]
            try:
                assert_matches(got, want_w, "float64", (preset, "float64 reference"))
                if want_b is not None:
                    assert_matches(state.momentum, want_b, "float64", (preset, "float64 reference buffers"))
            except AssertionError as e:
                failures.append(f"{config}: {e}")
    assert not failures, "\n".join(failures)


def test_reference_exercises_the_knobs(problem):
    """The table's knobs change the trajectory (the reference is not trivially insensitive)."""
    params, grads = problem
    base = reference("paper", dict(learning_rate=LR, trust_coefficient=TRUST), params, grads)[0]
    for preset in PRESET_NAMES:
        for config in CONFIGS:
            if config == "momentum" and preset == "paper":
                continue
            if config == "always-adapt" and preset != "timm":
                continue  # always_adapt only matters where adaptation needs weight decay (timm)
            kw = dict(CONFIGS[config], learning_rate=LR, trust_coefficient=TRUST)
            lr_of = poly_lr if kw.pop("schedule", False) else None
            other = reference(preset, kw, params, grads, lr_of)[0]
            assert max_diff(other, base) > 1e-4, (preset, config)
    # trust_clip clips some layers and not others
    w, g = params["conv"], grads[0]["conv"]
    r = TRUST * np.linalg.norm(w) / (np.linalg.norm(g) + 1e-3 * np.linalg.norm(w))
    assert r / LR < 1
    w, g = params["dense"]["b"], grads[0]["dense"]["b"]
    assert TRUST * np.linalg.norm(w) / np.linalg.norm(g) / LR > 1


# --- 2. preset="optax" against optax.lars ------------------------------------------------

OPTAX_TRUST_MASK = {"dense": {"w": True, "b": False}, "conv": True, "zero": True}
OPTAX_DECAY_MASK = {"dense": {"w": True, "b": False}, "conv": False, "zero": True}
OPTAX_CONFIGS = {
    "decay-momentum": dict(weight_decay=1e-3, momentum=0.9),
    "nesterov-masks-eps": dict(weight_decay=1e-2, momentum=0.9, nesterov=True, masks=True, eps=0.3),
    "schedule-no-momentum": dict(weight_decay=1e-3, momentum=0.0, schedule=True),
    "schedule-nesterov-masks": dict(
        weight_decay=1e-3, momentum=0.8, nesterov=True, masks=True, schedule=True
    ),
}


def _optax_kwargs(config):
    kw = dict(OPTAX_CONFIGS[config])
    masks = kw.pop("masks", False)
    schedule = kw.pop("schedule", False)
    return kw, masks, schedule


@pytest.fixture(scope="module")
def optax_runs(problem):
    """optax.lars in float64 (jax x64), every step, per config."""
    optax = pytest.importorskip("optax")
    import jax
    import jax.numpy as jnp

    params, grads = problem
    out = {}
    with jax.enable_x64(True):
        for config in OPTAX_CONFIGS:
            kw, masks, schedule = _optax_kwargs(config)
            # optax.polynomial_schedule computes in float32 even with x64: the same formula in float64
            lr = optax_schedule_f64 if schedule else LR
            if masks:
                kw.update(trust_ratio_mask=OPTAX_TRUST_MASK, weight_decay_mask=OPTAX_DECAY_MASK)
            opt = optax.lars(lr, trust_coefficient=TRUST, **kw)
            p = tmap(lambda x: jnp.asarray(x, jnp.float64), params)
            state = opt.init(p)
            update = jax.jit(opt.update)
            for g in grads:
                updates, state = update(tmap(lambda x: jnp.asarray(x, jnp.float64), g), state, p)
                p = optax.apply_updates(p, updates)
            out[config] = tmap(lambda x: np.asarray(x, np.float64), p)
    return out


def optax_schedule_f64(count):
    import jax.numpy as jnp

    t = jnp.minimum(count, 40).astype(jnp.float64)
    return (LR - 0.01) * (1 - t / 40) ** 2 + 0.01


def test_optax_polynomial_schedule_is_warmup_polynomial():
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    theirs = optax.polynomial_schedule(init_value=LR, end_value=0.01, power=2, transition_steps=40)
    ours = warmup_polynomial(LR, 0, 40, power=2.0, end=0.01)
    import jax

    for n in (0, 1, 7, 39, 40, 55):
        assert abs(float(theirs(jnp.asarray(n))) - float(ours(jnp.asarray(n, jnp.int32)))) <= 1e-8
        with jax.enable_x64(True):
            assert abs(float(optax_schedule_f64(jnp.asarray(n))) - ours(n)) <= 1e-12


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(power=math.nan),
        dict(power=-1.0),
        dict(power="2"),
        dict(power=True),
        dict(peak=True),
        dict(warmup_steps=True),
        dict(peak=1e39),  # (inf as the float32 rate of an array count)
        dict(end=4e38),
    ],
    ids=lambda kw: ",".join(f"{k}={v!r}" for k, v in kw.items()),
)
def test_schedule_arguments_are_checked(kwargs):
    """A negative power made the "decay" rise to inf, NaN gave NaN weights; bools are not numbers."""
    arguments = {"peak": 1.0, "warmup_steps": 2, "total_steps": 10, **kwargs}
    with pytest.raises(lm.LarsMultiValueError, match=next(iter(kwargs))):
        warmup_polynomial(**arguments)


@pytest.mark.parametrize(
    "count",
    [-1, 2.5, "3", True, None, np.float32(2), np.zeros(2, np.int32), np.int64(-3), np.array(-5, np.int32)],
    ids=repr,
)
@pytest.mark.parametrize("kind", ["warmup_polynomial", "warmup_cosine"])
def test_schedule_counts_are_integers_from_zero(kind, count):
    """A count is the step count: a negative one gave a negative rate, 2.5 an odd one."""
    schedule = getattr(lm.schedules, kind)(1.0, 4, 10)
    with pytest.raises(lm.LarsMultiError, match=r"^count: expected an integer >= 0"):
        schedule(count)
    assert schedule(np.int64(2)) == schedule(2) == 0.5


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "int64"])
def test_schedules_take_a_count_of_any_integer_dtype(backend, dtype):
    """As the module says (a 0-d integer array of any backend): only int32 and int64 were taken."""
    count = native(backend, np.array(2, dtype))
    schedule = lm.schedules.warmup_polynomial(1.0, 4, 10)
    assert float(to_numpy(schedule(count))) == 0.5


@pytest.mark.parametrize("preset", ["paper", "optax", "timm"])
def test_a_nan_norm_gives_the_reference_librarys_ratio(backend, preset):
    """A NaN element makes its layer's norm NaN: the paper and optax presets took the
    zero-norm rule (r = 1), so the layer's finite elements took an unadapted step, where
    optax.lars gives NaN for the layer. timm's Lars takes r = 1 unless both norms are > 0."""
    nan = np.float32(np.nan)
    w = {
        "a": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
        "b": np.array([[1.0, -1.0], [2.0, 0.5]], np.float32),
    }
    g = {
        "a": np.array([[0.1, nan], [0.3, 0.4]], np.float32),
        "b": np.array([[0.2, 0.1], [-0.3, 0.4]], np.float32),
    }
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001, preset=preset)
    params = {k: native(backend, v) for k, v in w.items()}
    new, _ = opt.step(params, {k: native(backend, v) for k, v in g.items()}, opt.init(params))
    a, b = to_numpy(new["a"]), to_numpy(new["b"])
    assert np.isfinite(b).all()
    if preset == "timm":  # r = 1: the first step's buffer is u = g + lambda w
        want = w["a"] - np.float32(0.1) * (g["a"] + np.float32(0.01) * w["a"])
        np.testing.assert_allclose(a, want, rtol=1e-6)  # (NaN where g is)
        assert np.isnan(a[0, 1]) and np.isfinite(np.delete(a.ravel(), 1)).all()
    else:
        assert np.isnan(a).all()


@pytest.mark.parametrize("decay", [1e-40, 1e-46])
def test_timm_adapts_with_a_tiny_number_weight_decay_on_every_backend(backend, decay):
    """timm adapts only where lambda != 0: JAX's and TensorFlow's compiled steps traced a
    number weight decay, flushed a float32 subnormal one to 0 and took r = 1 (a step 240
    times LARS's). A number's rule is decided when the step is planned."""
    w = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    g = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32) * 100
    opt = lm.optim.lars(0.1, momentum=0.0, weight_decay=decay, preset="timm")
    params = {"w": native(backend, w)}
    new, _ = opt.step(params, {"w": native(backend, g)}, opt.init(params))
    w64, g64 = w.astype(np.float64), g.astype(np.float64)
    ratio = 0.001 * np.linalg.norm(w64) / (np.linalg.norm(g64) + 1e-8)
    np.testing.assert_allclose(to_numpy(new["w"]), w64 - 0.1 * ratio * g64, rtol=1e-6)


@pytest.mark.parametrize("preset", ["paper", "optax", "timm"])
def test_dampening_at_momentum_0_does_nothing_on_every_backend(backend, preset):
    """Dampening damps the momentum buffer; at momentum 0 there is none, and the step is
    w - eta r u, as in torch.optim.SGD and timm's Lars (the README's equations read as if
    it scaled the step: a probe's reference took half the step)."""
    w = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    g = np.array([[0.1, 0.2], [0.3, -0.4]], np.float32)
    params = {"w": native(backend, w)}
    steps = []
    for dampening in (0.0, 0.5):
        opt = lm.optim.lars(0.1, momentum=0.0, dampening=dampening, trust_coefficient=0.05, preset=preset)
        new, _ = opt.step(params, {"w": native(backend, g)}, opt.init(params))
        steps.append(to_numpy(new["w"]))
    w64, g64 = w.astype(np.float64), g.astype(np.float64)
    ratio = 1.0 if preset == "timm" else 0.05 * np.linalg.norm(w64) / np.linalg.norm(g64)  # (timm: lambda 0)
    np.testing.assert_array_equal(steps[1], steps[0])
    np.testing.assert_allclose(steps[1], w64 - 0.1 * ratio * g64, rtol=1e-6)


def test_torch_in_place_step_with_a_scale_beyond_float32_writes_nothing_or_everything():
    """The in-place step folds lr * weight_decay into the buffers as one multiplier of torch's
    addcmul, which refused a value beyond float32 (lr 1e9, lambda 1e30: 1e39) with
    RuntimeError after the momentum buffers had been written. It steps, as on NumPy."""
    require_backend("torch")
    import torch

    w = np.array([[0.5, -1.0], [0.25, 2.0]], np.float32)
    g = np.array([[0.1, 0.2], [-0.3, 0.4]], np.float32)
    opt = lm.optim.lars(1e9, momentum=0.9, weight_decay=1e30, preset="paper")
    results = []
    for make in (np.array, torch.tensor):
        params = {"w": make(w.copy())}
        params, state = opt.step(params, {"w": make(g)}, opt.init(params), out=params)
        results.append((np.asarray(params["w"]), np.asarray(state.momentum["w"])))
    (numpy_w, numpy_b), (torch_w, torch_b) = results
    np.testing.assert_allclose(torch_w, numpy_w, rtol=1e-6)
    np.testing.assert_allclose(torch_b, numpy_b, rtol=1e-6)
    assert np.isfinite(torch_w).all()


def test_tensorflow_shapes_of_unknown_rank_and_tracked_lists_are_named():
    """The paper preset's default masks go by each layer's rank: a variable of unknown
    rank (TensorShape(None), a reduce_retracing trace) failed with TensorFlow's bare
    "Cannot take the length of shape with unknown rank". A tf.Module's tracked list
    was refused with no hint."""
    require_backend("tensorflow")
    import tensorflow as tf

    params = {"w": tf.Variable(np.ones((4, 3), np.float32), shape=tf.TensorShape(None))}
    grads = {"w": tf.fill((4, 3), 0.5)}
    opt = lm.optim.lars(0.1)
    with pytest.raises(
        lm.LarsMultiValueError,
        match=r"^params\['w'\]: expected a known number of dimensions .* give adapt_mask",
    ):
        opt.step(params, grads, opt.init(params))
    opt = lm.optim.lars(0.1, adapt_mask=True, weight_decay_mask=True)
    new, _ = opt.step(params, grads, opt.init(params))
    assert new["w"].shape == (4, 3)
    module = tf.Module()
    module.layers = [tf.Variable(np.ones(2, np.float32))]
    with pytest.raises(lm.LarsMultiTypeError, match=r"^params: expected .*ListWrapper; pass list\(params\)$"):
        opt.init(module.layers)


@pytest.mark.parametrize("kind", ["warmup_polynomial", "warmup_cosine"])
def test_a_negative_count_array_counts_as_zero(backend, kind):
    """A framework's count is not read on the host: one below 0 (a state made by hand)
    gave a negative rate, and lm.optim stepped up the gradient. It counts as 0 there;
    NumPy's is read, and refused."""
    schedule = getattr(lm.schedules, kind)(1.0, 4, 10)
    params = {"w": native(backend, np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))}
    grads = {"w": native(backend, np.full((2, 2), 0.5, np.float32))}
    opt = lm.optim.lars(schedule, momentum=0.9)
    state = opt.init(params)._replace(count=native(backend, np.array(-5, np.int32)))
    if backend == "numpy":
        with pytest.raises(lm.LarsMultiError, match=r"^count: expected an integer >= 0"):
            schedule(np.array(-5, np.int32))
        return
    for dtype in ("int8", "int32", "int64"):
        assert float(to_numpy(schedule(native(backend, np.array(-5, dtype))))) == 0.0
    new, _ = opt.step(params, grads, state)
    np.testing.assert_array_equal(to_numpy(new["w"]), to_numpy(params["w"]))


@pytest.mark.parametrize("kind", ["warmup_polynomial", "warmup_cosine"])
@pytest.mark.parametrize(("warmup", "total"), [(2**31, 2**32), (0, 2**31), (2**33, 2**33 + 10)])
def test_schedules_longer_than_int32_evaluate_on_every_backend(backend, kind, warmup, total):
    """JAX without x64 read warmup_steps, or total_steps - warmup_steps, of 2**31 or
    more as an int32 and failed with its own OverflowError."""
    schedule = getattr(lm.schedules, kind)(1.0, warmup, total)
    got = float(to_numpy(schedule(native(backend, np.array(1000, np.int32)))))
    assert got == pytest.approx(schedule(1000), rel=1e-6)


@pytest.mark.parametrize("kind", ["warmup_polynomial", "warmup_cosine"])
def test_schedules_are_exact_to_their_last_step_in_float32(backend, kind):
    """``(1 + cos(pi p)) / 2`` rounded to exactly 0 in float32 (JAX's default) over the
    last steps before total_steps (7 of 100,000), and ``1 - p`` lost digits there: a
    schedule's end was off, and a weight decay of 0 there stopped timm's adaptation. The
    values left are float64's, to float32's precision, and ``end`` from total_steps on."""
    total = 100_000
    schedule = getattr(lm.schedules, kind)(5e-4, 10, total)

    def exact(n: int) -> float:  # the formula in float64, from the steps left
        left = (total - n) / (total - 10)
        return 5e-4 * (left**2 if kind == "warmup_polynomial" else math.sin(math.pi / 2 * left) ** 2)

    for n in (11, 50_000, total - 7, total - 1):
        got = float(to_numpy(schedule(native(backend, np.array(n, np.int32)))))
        assert got == pytest.approx(exact(n), rel=1e-6), n
        assert schedule(n) == pytest.approx(exact(n), rel=1e-12), n
    for n in (total, total + 1):
        assert float(to_numpy(schedule(native(backend, np.array(n, np.int32))))) == schedule(n) == 0.0


def test_timm_adapts_where_a_scheduled_weight_decay_is_not_zero_before_the_cast(backend):
    """timm adapts a layer where its weight decay is not 0: a schedule's float64 value
    was cast to the layer's float32 first, so 1e-50 (not 0, and adapted when given as a
    number) became 0 and the layer took an unadapted step, 1 / r times larger."""
    w = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    g = (np.random.default_rng(1).normal(size=(8, 8)) * 0.01).astype(np.float32)
    tiny = 1e-50
    steps = []
    with x64(backend):  # (a float64 value: JAX's needs x64)
        for decay in (tiny, lambda count: native(backend, np.asarray(tiny))):
            opt = lm.optim.lars(0.1, momentum=0.0, weight_decay=decay, trust_coefficient=1e-3, preset="timm")
            params = {"w": native(backend, w)}
            new, _ = opt.step(params, {"w": native(backend, g)}, opt.init(params))
            steps.append(to_numpy(new["w"]) - w)
    np.testing.assert_allclose(steps[1], steps[0], rtol=1e-6)
    unadapted = -np.float32(0.1) * g
    assert np.linalg.norm(steps[0]) < 0.5 * np.linalg.norm(unadapted)


def lm_optax(config):
    kw, masks, schedule = _optax_kwargs(config)
    if masks:
        kw.update(adapt_mask=OPTAX_TRUST_MASK, weight_decay_mask=OPTAX_DECAY_MASK)
    lr = warmup_polynomial(LR, 0, 40, power=2.0, end=0.01) if schedule else LR  # (optax's formula)
    return lm.optim.lars(lr, trust_coefficient=TRUST, preset="optax", **kw)


@pytest.mark.parametrize("config", list(OPTAX_CONFIGS))
def test_optax_preset_against_optax_lars(backend, config, problem, optax_runs):
    params, grads = problem
    got, _ = run_lib(backend, lm_optax(config), params, grads, "float32")
    assert_matches(got, optax_runs[config], "float32", ("optax", "optax.lars"))
    if backend in ("numpy", "torch"):  # (eager: every config is quick)
        got, _ = run_lib(backend, lm_optax(config), params, grads, "float64")
        assert_matches(got, optax_runs[config], "float64", ("optax", "optax.lars"))


def test_optax_reference_agrees_with_optax(problem, optax_runs):
    """The table's optax column (the reference above) is optax.lars."""
    params, grads = problem
    for config in OPTAX_CONFIGS:
        kw, masks, schedule = _optax_kwargs(config)
        if masks:
            kw.update(adapt_mask=OPTAX_TRUST_MASK, weight_decay_mask=OPTAX_DECAY_MASK)
        lr_of = (lambda t: (LR - 0.01) * (1 - min(t, 40) / 40) ** 2 + 0.01) if schedule else None
        want, _ = reference(
            "optax", dict(kw, learning_rate=LR, trust_coefficient=TRUST), params, grads, lr_of
        )
        assert max_rel_diff(want, optax_runs[config]) <= 1e-12


# --- 3. preset="timm" against timm's Lars ------------------------------------------------

TIMM_GROUPS = {
    # group name -> (the layers, timm's group settings)
    "single-decay-momentum": [(None, dict(lr=LR, momentum=0.9, weight_decay=1e-3))],
    "single-nesterov": [(None, dict(lr=LR, momentum=0.9, weight_decay=1e-3, nesterov=True))],
    "single-dampening-clip": [
        (None, dict(lr=LR, momentum=0.9, dampening=0.1, weight_decay=1e-3, trust_clip=True))
    ],
    "single-always-no-decay": [(None, dict(lr=LR, momentum=0.9, always_adapt=True))],
    "single-no-momentum": [(None, dict(lr=LR, momentum=0.0, weight_decay=1e-3, trust_clip=True))],
    "two-groups": [
        (("dense",), dict(lr=LR, momentum=0.9, weight_decay=1e-3, nesterov=True, eps=1e-3)),
        (("conv", "zero"), dict(lr=0.05, momentum=0.8, dampening=0.1, trust_clip=True, always_adapt=True)),
    ],
}


def _subtree(tree, keys):
    return tree if keys is None else {k: tree[k] for k in keys}


def _lm_kwargs(settings):
    s = dict(settings)
    return dict(
        learning_rate=s.pop("lr"),
        momentum=s.pop("momentum", 0.0),
        dampening=s.pop("dampening", 0.0),
        weight_decay=s.pop("weight_decay", 0.0),
        nesterov=s.pop("nesterov", False),
        eps=s.pop("eps", None),
        trust_clip=s.pop("trust_clip", False),
        always_adapt=s.pop("always_adapt", False),
    )


@pytest.fixture(scope="module")
def timm_runs(problem):
    """timm's Lars in float64, every step, per config."""
    pytest.importorskip("torch")
    timm_lars = load_timm_lars()
    if timm_lars is None:
        pytest.skip("timm is not installed (pip install --no-deps timm==1.0.31)")
    import torch

    params, grads = problem
    out = {}
    for config, groups in TIMM_GROUPS.items():
        tensors = {
            path: torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for path, x in tleaves(params)
        }
        param_groups = []
        for keys, settings in groups:
            members = [t for path, t in tensors.items() if keys is None or path[0] in keys]
            param_groups.append(dict(params=members, **settings))
        opt = timm_lars.Lars(param_groups, trust_coeff=TRUST)
        for g in grads:
            for path, t in tensors.items():
                t.grad = torch.tensor(
                    tget(g, path), dtype=torch.float64
                ).clone()  # Lars may write into p.grad
            opt.step()
        out[config] = _rebuild({path: to_numpy(t) for path, t in tensors.items()})
    return out


def run_lm_timm(name, config, params, grads, dtype):
    got = {}
    for keys, settings in TIMM_GROUPS[config]:
        opt = lm.optim.lars(preset="timm", trust_coefficient=TRUST, **_lm_kwargs(settings))
        p, _ = run_lib(name, opt, _subtree(params, keys), [_subtree(g, keys) for g in grads], dtype)
        got.update(p)
    return got


@pytest.mark.parametrize("config", list(TIMM_GROUPS))
def test_timm_preset_against_timm_lars(backend, config, problem, timm_runs, request):
    params, grads = problem
    got = run_lm_timm(backend, config, params, grads, "float32")
    assert_matches(got, timm_runs[config], "float32", ("timm", "timm Lars"))
    if backend in ("numpy", "torch"):
        got = run_lm_timm(backend, config, params, grads, "float64")
        assert_matches(got, timm_runs[config], "float64", ("timm", "timm Lars"))


def test_timm_reference_agrees_with_timm(problem, timm_runs):
    """The table's timm column (the reference above) is timm's Lars."""
    params, grads = problem
    for config, groups in TIMM_GROUPS.items():
        got = {}
        for keys, settings in groups:
            kw = dict(_lm_kwargs(settings), trust_coefficient=TRUST)
            p, _ = reference("timm", kw, _subtree(params, keys), [_subtree(g, keys) for g in grads])
            got.update(p)
        assert max_rel_diff(got, timm_runs[config]) <= 1e-12, config


# --- 4. out=params: in place -------------------------------------------------------------


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_out_params_in_place(name, preset, problem):
    require_backend(name)
    params, grads = problem
    opt = lm.optim.lars(LR, weight_decay=1e-3, trust_coefficient=TRUST, preset=preset, nesterov=True)
    want, want_state = run_lib(name, opt, params, grads, "float32", steps=10)
    p = to_native(name, params, "float32")
    state = opt.init(p)
    leaves = [x for _, x in tleaves(p)]
    buffers = [x for _, x in tleaves(state.momentum)]
    ptrs = [x.data_ptr() if name == "torch" else x.ctypes.data for x in leaves + buffers]
    for g in grads[:10]:
        out, state = opt.step(p, to_native(name, g, "float32"), state, out=p)
        assert out is p
    assert all(a is b for a, b in zip(leaves, [x for _, x in tleaves(p)]))
    assert all(a is b for a, b in zip(buffers, [x for _, x in tleaves(state.momentum)]))
    assert ptrs == [x.data_ptr() if name == "torch" else x.ctypes.data for x in leaves + buffers]
    for path, x in tleaves(want):
        np.testing.assert_array_equal(to_numpy(tget(p, path)), to_numpy(x))
        np.testing.assert_array_equal(
            to_numpy(tget(state.momentum, path)), to_numpy(tget(want_state.momentum, path))
        )
    assert int(to_numpy(state.count)) == 10


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_out_of_another_tree_leaves_params_and_state_as_they_were(backend, preset, problem):
    """``out=`` a tree other than ``params`` (a look-ahead, a trial step) takes the new
    parameters, and the state given is left as it was, as ``params`` are: before, the
    momentum buffers of the state given were written in place (NumPy, torch), so the
    next step from that state went elsewhere. The new state is returned, as ever."""
    params, grads = problem
    opt = lm.optim.lars(LR, weight_decay=1e-3, trust_coefficient=TRUST, preset=preset)
    p = to_native(backend, params, "float32")
    g = to_native(backend, grads[0], "float32")
    state = opt.init(p)
    _, state = opt.step(p, g, state)  # (buffers that are not zero; params as they were)
    momentum = {path: to_numpy(x).copy() for path, x in tleaves(state.momentum)}
    want, want_state = opt.step(p, g, state)
    out = lm.Container(tmap(lambda x: native(backend, np.zeros(x.shape, np.float32)), params))
    returned, new_state = opt.step(p, g, state, out=out)
    assert returned is out
    for path, x in tleaves(state.momentum):
        np.testing.assert_array_equal(to_numpy(x), momentum[path], err_msg=str(path))
    for path, x in tleaves(want):
        np.testing.assert_array_equal(to_numpy(tget(out, path)), to_numpy(x), err_msg=str(path))
        np.testing.assert_array_equal(to_numpy(tget(p, path)), np.float32(tget(params, path)))
    for path, x in tleaves(want_state.momentum):
        np.testing.assert_array_equal(
            to_numpy(tget(new_state.momentum, path)), to_numpy(x), err_msg=str(path)
        )
    again, _ = opt.step(p, g, state)  # (from the state as it was: the same step)
    for path, x in tleaves(want):
        np.testing.assert_array_equal(to_numpy(tget(again, path)), to_numpy(x), err_msg=str(path))


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_out_tf_variables(preset, problem, request):
    require_backend("tensorflow")
    import tensorflow as tf

    params, grads = problem
    opt = lm.optim.lars(LR, weight_decay=1e-3, trust_coefficient=TRUST, preset=preset)
    want, _ = run_lib("tensorflow", opt, params, grads, "float32", steps=5)
    variables = tmap(lambda x: tf.Variable(x.astype(np.float32)), params)
    handles = [v for _, v in tleaves(variables)]
    state = opt.init(variables)
    for g in grads[:5]:
        out, state = opt.step(variables, to_native("tensorflow", g, "float32"), state, out=variables)
        assert out is variables
    assert all(a is b for a, b in zip(handles, [v for _, v in tleaves(variables)]))
    assert all(isinstance(v, tf.Variable) for v in handles)
    for path, x in tleaves(want):
        np.testing.assert_allclose(tget(variables, path).numpy(), to_numpy(x), rtol=0, atol=1e-6)


# --- 5. the state ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_init_state(backend, dtype, problem):
    params, _ = problem
    with x64(backend, dtype):
        p = to_native(backend, params, dtype)
        state = lm.optim.lars(LR).init(p)
        assert int(to_numpy(state.count)) == 0
        assert "int32" in str(state.count.dtype)
        for path, x in tleaves(p):
            b = tget(state.momentum, path)
            assert type(b) is type(x)
            assert str(b.dtype) == str(x.dtype)
            assert tuple(b.shape) == tuple(x.shape)
            assert not np.any(to_numpy(b))
        assert lm.optim.lars(LR, momentum=0.0).init(p).momentum is None


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int64"])
def test_a_count_of_another_integer_dtype_advances_without_wrapping(backend, dtype):
    """A count of a narrow dtype, as NumPy or as the framework's array, was advanced in
    its own dtype: uint8 255 became 0 (a schedule then started again). It advances as
    int32, whatever dtype it came in, and the schedule reads its value."""
    last = {"uint8": 255, "int16": 32767, "uint16": 65535, "int64": 2**31 - 2}[dtype]
    p = native(backend, np.ones((2, 2)), "float32")
    g = native(backend, np.full((2, 2), 0.5), "float32")
    rate = lm.schedules.warmup_polynomial(0.1, warmup_steps=1, total_steps=2**32)
    paper = lm.optim.lars(rate, momentum=0.9, weight_decay=1e-2)
    buffers = {"w": native(backend, np.full((2, 2), 5.0), "float32")}
    want = paper.step({"w": p}, {"w": g}, lm.optim.LarsState(native(backend, last, "int32"), buffers, None))
    counts = [np.array(last, dtype)]
    if backend != "tensorflow" or dtype != "uint16":  # (TensorFlow has no uint16 arithmetic on CPU)
        counts.append(native(backend, np.array(last, dtype), dtype) if backend != "numpy" else counts[0])
    for count in counts:
        new, state = paper.step({"w": p}, {"w": g}, lm.optim.LarsState(count, buffers, None))
        assert int(to_numpy(state.count)) == last + 1
        assert "int32" in str(state.count.dtype)
        np.testing.assert_array_equal(to_numpy(new["w"]), to_numpy(want[0]["w"]))


@pytest.mark.parametrize("tree", [dict, lm.Container])
def test_a_state_saved_by_torch_loads_with_torch_load_defaults(tmp_path, tree):
    """torch.load (weights only, its default) refused the state's class, and then the
    Container of the buffers and flags of Container parameters."""
    require_backend("torch")
    import torch

    opt = lm.optim.lars(LR, weight_decay=1e-3, preset="timm")
    p = tree({"w": torch.ones(2, 2), "b": torch.ones(2)})
    _, state = opt.step(p, tree({"w": torch.full((2, 2), 0.5), "b": torch.ones(2)}), opt.init(p))
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt")
    assert isinstance(loaded, lm.optim.LarsState)
    assert type(loaded.momentum) is type(state.momentum) and type(loaded.started) is type(state.started)
    for a, b in zip(loaded, state):
        for (_, x), (_, y) in zip(tleaves(a), tleaves(b)):
            assert torch.equal(x, y)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_tensorflow_checkpoint_of_a_state_held_in_variables_resumes_the_run(tmp_path, preset):
    """tf.train.Checkpoint saves variables only: the state's tensors were silently left
    out, and a restored run started again from count 0. The README's recipe (the state
    held in tf.Variables, assigned the state each step returns) resumes exactly."""
    require_backend("tensorflow")
    import tensorflow as tf

    def as_variables(state):
        return tf.nest.map_structure(lambda x: None if x is None else tf.Variable(x), state)

    def keep(saved, state):
        tf.nest.map_structure(lambda v, x: None if v is None else v.assign(x), saved, state)

    schedule = lm.schedules.warmup_cosine(peak=0.5, warmup_steps=3, total_steps=10)
    opt = lm.optim.lars(schedule, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02, preset=preset)
    rng = np.random.default_rng(0)
    start = rng.standard_normal((4, 3)).astype(np.float32)
    grads = [{"w": tf.constant(rng.standard_normal((4, 3)).astype(np.float32))} for _ in range(8)]
    params = {"w": tf.Variable(start)}
    saved = as_variables(opt.init(params))
    for g in grads[:4]:
        keep(saved, opt.step(params, g, saved, out=params)[1])
    path = tf.train.Checkpoint(params=params, state=saved).save(str(tmp_path / "ckpt"))
    resumed = {"w": tf.Variable(tf.zeros((4, 3)))}
    resumed_state = as_variables(opt.init(resumed))
    tf.train.Checkpoint(params=resumed, state=resumed_state).restore(path).assert_consumed()
    assert int(resumed_state.count) == 4
    for g in grads[4:]:
        keep(saved, opt.step(params, g, saved, out=params)[1])
        keep(resumed_state, opt.step(resumed, g, resumed_state, out=resumed)[1])
    np.testing.assert_array_equal(resumed["w"].numpy(), params["w"].numpy())
    assert int(resumed_state.count) == 8


@pytest.mark.parametrize("name", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_pickle_state_and_resume(name, preset, problem):
    require_backend(name)
    params, grads = problem
    opt = lm.optim.lars(
        warmup_polynomial(LR, 3, 30), weight_decay=1e-3, trust_coefficient=TRUST, preset=preset, dampening=0.1
    )
    want, want_state = run_lib(name, opt, params, grads, "float32", steps=20)
    p, state = run_lib(name, opt, params, grads, "float32", steps=10)
    p, state = pickle.loads(pickle.dumps((p, state)))
    assert isinstance(state, lm.optim.LarsState)
    assert int(to_numpy(state.count)) == 10
    opt2 = pickle.loads(pickle.dumps(opt))
    for g in grads[10:20]:
        p, state = opt2.step(p, to_native(name, g, "float32"), state)
    for path, x in tleaves(want):
        np.testing.assert_array_equal(to_numpy(tget(p, path)), to_numpy(x))
        np.testing.assert_array_equal(
            to_numpy(tget(state.momentum, path)), to_numpy(tget(want_state.momentum, path))
        )
    assert int(to_numpy(state.count)) == 20


# --- 6. errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["learning_rate", "weight_decay"])
@pytest.mark.parametrize(
    "schedule",
    [lambda: 0.1, lambda step, extra: 0.1, lambda *, step: 0.1],
    ids=["no-argument", "two-arguments", "keyword-only"],
)
def test_a_schedule_that_cannot_take_the_step_count_is_refused_when_made(arg, schedule):
    """It was taken, and the first step raised Python's TypeError, naming neither argument."""
    arguments = {"learning_rate": LR, arg: schedule}
    with pytest.raises(lm.LarsMultiTypeError, match=rf"^{arg}: expected .*a callable of the step count"):
        lm.optim.lars(**arguments)
    lm.optim.lars(**{**arguments, arg: lambda step, extra=1: 0.1})


def test_unknown_preset_lists_known_ones():
    with pytest.raises(lm.UnknownPresetError) as info:  # (public, as the README's table of errors)
        lm.optim.lars(0.1, preset="sgd")
    assert isinstance(info.value, lm.LarsMultiValueError)
    for known in PRESET_NAMES:
        assert known in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=-0.1),
        dict(weight_decay=-1e-4),
        dict(trust_coefficient=-0.001),
        dict(eps=-1e-8),
        dict(momentum=-0.1),
        dict(momentum=1.0),
        dict(momentum=1.5),
        dict(nesterov=True, momentum=0.0),
        dict(nesterov=True, momentum=0.9, dampening=0.1),
        dict(learning_rate=math.nan),
        dict(weight_decay=math.inf),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_bad_hyperparameters(kwargs):
    kw = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(lm.LarsMultiError):
        lm.optim.lars(**kw)


def _bad_steps(name, grads):
    """(description, optimizer, gradients or a state marker, words the message must hold)."""
    missing_b = {"dense": {"w": True}, "conv": True, "zero": True}
    g_missing = {k: v for k, v in grads.items() if k != "conv"}
    g_extra = dict(grads, extra=grads["zero"])
    other_name = "numpy" if name != "numpy" else ("torch" if is_installed("torch") else None)
    g_other_framework = other_name and dict(
        grads, conv=native(other_name, np.zeros(SHAPES["conv"], np.float32))
    )
    g_float16 = dict(grads, conv=native(name, np.zeros(SHAPES["conv"]), "float16"))
    g_bad_shape = dict(grads, conv=native(name, np.zeros((2, 3, 3)), "float32"))
    opt = lm.optim.lars(LR, weight_decay=1e-3)
    return [
        (
            "adapt mask of another structure",
            lm.optim.lars(LR, adapt_mask=missing_b),
            None,
            ["adapt_mask['dense']"],
        ),
        (
            "decay mask of another structure",
            lm.optim.lars(LR, weight_decay_mask=missing_b),
            None,
            ["weight_decay_mask['dense']"],
        ),
        ("mask of non-bools", lm.optim.lars(LR, adapt_mask=lambda p, w: 1), None, ["adapt_mask"]),
        (
            "a params mask of another structure",
            lm.optim.lars(LR, adapt_mask=lambda params: {"dense": True}),
            None,
            ["adapt_mask"],
        ),
        (
            "a scheduled learning rate of shape (3,)",
            lm.optim.lars(lambda count: native(name, np.full(3, LR), "float32"), weight_decay=1e-3),
            None,
            ["learning_rate(state.count)", "(3,)"],
        ),
        (
            "a negative scheduled learning rate",
            lm.optim.lars(lambda count: -LR),
            None,
            ["learning_rate(state.count)", "-0.1"],
        ),
        (
            "a NaN scheduled weight decay",
            lm.optim.lars(LR, weight_decay=lambda count: math.nan),
            None,
            ["weight_decay(state.count)", "nan"],
        ),
        (
            "a scheduled weight decay that is a string",
            lm.optim.lars(LR, weight_decay=lambda count: "1e-3"),
            None,
            ["weight_decay(state.count)", "str"],
        ),
        ("a learning rate that overflows float32", lm.optim.lars(1e39), None, ["learning_rate", "float32"]),
        # (both silently gave inf weights or no adaptation)
        (
            "a trust coefficient that overflows float32",
            lm.optim.lars(LR, trust_coefficient=1e39),
            None,
            ["trust_coefficient", "float32"],
        ),
        ("an eps that overflows float32", lm.optim.lars(LR, eps=1e39), None, ["eps", "float32"]),
        ("grads missing a key", opt, g_missing, ["grads"]),
        ("grads with an extra key", opt, g_extra, ["grads"]),
        *([("grads of another framework", opt, g_other_framework, [])] if other_name else []),
        ("grads of another dtype", opt, g_float16, ["conv"]),
        ("grads of another shape", opt, g_bad_shape, ["conv"]),
        ("state for another tree", opt, "other-state", ["state"]),
        ("not a state", opt, "not-a-state", ["state"]),
        ("a buffer of another dtype", opt, "buffer-float16", ["state.momentum['conv']", "float16"]),
        ("a buffer that is a number", opt, "buffer-number", ["state.momentum['conv']", "float"]),
        # (a float count was floored, a negative one skipped timm's first step, the last int32
        # one wrapped to a negative count)
        ("a float count", opt, "count-0.5", ["state.count", "float"]),
        ("a negative count", opt, "count--1", ["state.count", "-1"]),
        ("a count beyond int32", opt, f"count-{2**31}", ["state.count", "2147483648"]),
    ]


@pytest.mark.parametrize("name", ["numpy", "torch", "jax", "tensorflow"])
def test_step_errors_write_nothing(name, problem):
    """Every error is a LarsMultiError raised before anything is written (out=params where in place)."""
    require_backend(name)
    params, grads = problem
    g = to_native(name, grads[0], "float32")
    good = lm.optim.lars(LR, weight_decay=1e-3)
    failures = []
    for what, opt, bad_g, needles in _bad_steps(name, g):
        p = to_native(name, params, "float32")
        p, state = good.step(p, g, good.init(p))  # nonzero buffers and count 1
        before_p, before_b = tmap(to_numpy, p), tmap(to_numpy, state.momentum)
        the_state = state
        if bad_g == "other-state":
            the_state, bad_g = opt.init(to_native(name, {"a": np.ones((2, 2))}, "float32")), g
        elif bad_g == "not-a-state":
            the_state, bad_g = (state.count, state.momentum), g
        elif bad_g in ("buffer-float16", "buffer-number"):
            bad_buffer = (
                native(name, np.zeros(SHAPES["conv"]), "float16") if bad_g == "buffer-float16" else 1.0
            )
            the_state, bad_g = state._replace(momentum=dict(state.momentum, conv=bad_buffer)), g
        elif isinstance(bad_g, str) and bad_g.startswith("count-"):
            count = float(bad_g.removeprefix("count-"))
            count = np.float32(count) if count % 1 else np.int64(count)
            the_state, bad_g = state._replace(count=count), g
        elif bad_g is None:
            bad_g = g
        try:
            opt.step(p, bad_g, the_state, out=p if name in ("numpy", "torch") else None)
        except lm.LarsMultiError as e:
            failures.extend(f"{what}: message does not name {n!r}: {e}" for n in needles if n not in str(e))
        except Exception as e:
            failures.append(f"{what}: {type(e).__name__} is not a LarsMultiError: {e}")
        else:
            failures.append(f"{what}: no error")
        for path, x in tleaves(before_p):
            if not np.array_equal(to_numpy(tget(p, path)), x):
                failures.append(f"{what}: params{list(path)} written")
            if not np.array_equal(to_numpy(tget(state.momentum, path)), tget(before_b, path)):
                failures.append(f"{what}: state.momentum{list(path)} written")
        if int(to_numpy(state.count)) != 1:
            failures.append(f"{what}: count changed")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("preset", ["paper", "timm"])
@pytest.mark.parametrize("grads_given", ["none", "one"])
def test_a_bad_state_is_refused_where_layers_have_no_gradient(backend, preset, grads_given):
    """A state made for another tree, without buffers, with a buffer of another dtype,
    or with start flags that are no bool arrays is refused where the layer it is wrong
    for has no gradient: before, a step with no gradient at all accepted each of them
    (and advanced the count), and a step with some checked only the stepped layers'."""
    p = {"a": native(backend, np.ones((2, 2), np.float32)), "b": native(backend, np.ones(3, np.float32))}
    grads = {"a": None, "b": None}
    if grads_given == "one":
        grads["a"] = native(backend, np.full((2, 2), 0.5, np.float32))
    opt = lm.optim.lars(0.1, momentum=0.9, preset=preset)
    good = opt.init(p)
    bads = {
        r"state.momentum: expected the structure of params": opt.init(
            {"zz": native(backend, np.ones(2, np.float32))}
        ),
        r"state: expected momentum buffers": good._replace(momentum=None),
        r"state.momentum\['b'\]: expected dtype float32": good._replace(
            momentum={"a": good.momentum["a"], "b": native(backend, np.zeros(3, np.float16))}
        ),
    }
    if preset == "timm":
        bads[r"state.started\['b'\]: expected a 0-d bool array"] = good._replace(
            started={"a": good.started["a"], "b": 1}
        )
    for message, bad in bads.items():
        with pytest.raises(lm.LarsMultiError, match=message):
            opt.step(p, grads, bad)
        if backend in ("numpy", "torch"):  # (written in place)
            with pytest.raises(lm.LarsMultiError, match=message):
                opt.step(p, grads, bad, out=p)
            np.testing.assert_array_equal(to_numpy(p["a"]), 1.0)
    _, state = opt.step(p, grads, good)
    assert int(to_numpy(state.count)) == 1


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_an_integer_leaf_without_a_gradient_is_left_as_it_is(backend, preset):
    """A model's tree may hold an integer array (a counter) with a None gradient, which
    lars_update leaves as it is: init gave it an integer buffer and every step refused
    the tree ("expected a floating dtype"). It has no buffer, and is left as it is; with a
    gradient it is refused."""
    w = native(backend, np.arange(4, dtype=np.float32).reshape(2, 2) + 1)
    g = native(backend, np.full((2, 2), 0.5, np.float32))
    params = {"w": w, "count": native(backend, np.asarray(3, np.int32))}
    opt = lm.optim.lars(0.1, weight_decay=1e-2, preset=preset)
    state = opt.init(params)
    assert state.momentum["count"] is None
    alone = lm.optim.lars(0.1, weight_decay=1e-2, preset=preset)
    want, want_state = {"w": w}, alone.init({"w": w})
    for _ in range(2):
        new, state = opt.step(params, {"w": g, "count": None}, state)
        want, want_state = alone.step(want, {"w": g}, want_state)
        np.testing.assert_array_equal(to_numpy(new["w"]), to_numpy(want["w"]))
        assert new["count"] is params["count"]
        params = new
    if backend in ("numpy", "torch"):  # (in place)
        params = {"w": native(backend, to_numpy(w)), "count": native(backend, np.asarray(3, np.int32))}
        state = opt.init(params)
        opt.step(params, {"w": g, "count": None}, state, out=params)
        np.testing.assert_array_equal(to_numpy(params["count"]), 3)
    with pytest.raises(lm.LarsMultiTypeError, match=r"^params\['count'\]: expected a floating dtype"):
        opt.step(params, {"w": g, "count": native(backend, np.asarray(1, np.int32))}, state)
    other = "torch" if backend != "torch" else "numpy"
    if is_installed(other):  # (another framework's floating array, without a gradient: refused)
        params = {"w": w, "t": native(other, np.ones(2, np.float32))}
        state = opt.init({"w": w, "t": native(backend, np.ones(2, np.float32))})
        with pytest.raises(lm.MixedFrameworksError, match=rf"^params\['t'\]: expected a {backend} array"):
            opt.step(params, {"w": g, "t": None}, state)
        # The arrays are named where no layer steps and in init too (not "params"; sorted keys).
        mixed = rf"^params\['w'\]: expected a {other} array like params\['t'\], got a {backend} array"
        with pytest.raises(lm.MixedFrameworksError, match=mixed):
            opt.step(params, {"w": None, "t": None}, state)
        with pytest.raises(lm.MixedFrameworksError, match=mixed):
            opt.init(params)


def test_an_optimizer_made_by_dataclasses_replace_is_checked_as_lars_checks():
    """The optimizer is a frozen dataclass, and dataclasses.replace makes another: a Python
    number given so was never checked (a negative rate stepped uphill, NaN made NaN
    weights), and a callable mask was taken for a tree. Each is taken as lars takes it."""
    import dataclasses

    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    grads = {"w": np.full((2, 2), 0.5), "b": np.full(2, 0.25)}
    opt = lm.optim.lars(0.1, weight_decay=1e-2)
    bad = {
        r"^learning_rate: expected a number in \[0.0, inf\), got -0.1$": {"learning_rate": -0.1},
        r"^learning_rate: expected a number in \[0.0, inf\), got nan$": {"learning_rate": math.nan},
        r"^weight_decay: expected a number in \[0.0, inf\), got -1.0$": {"weight_decay": -1.0},
        r"^trust_coefficient: expected a number in \(0.0, inf\), got -1.0$": {
            "config": dataclasses.replace(opt.config, trust_coefficient=-1.0)
        },
        r"^trust_coefficient: expected a number in \(0.0, inf\), got 0.0$": {
            "config": dataclasses.replace(opt.config, trust_coefficient=0.0)
        },
        r"^momentum: expected a number in \[0.0, 1.0\), got 1.5$": {
            "config": dataclasses.replace(opt.config, momentum=1.5)
        },
        r"^differentiable: expected a bool, got str$": {"differentiable": "yes"},
    }
    for message, changes in bad.items():
        with pytest.raises(lm.LarsMultiError, match=message):
            dataclasses.replace(opt, **changes)
    per_leaf = lambda path, array: path == ("w",)  # noqa: E731
    for mask in (per_leaf, lambda p: {"w": True, "b": False}):
        want = lm.optim.lars(0.1, weight_decay=1e-2, adapt_mask=mask, weight_decay_mask=mask)
        got = dataclasses.replace(opt, adapt_mask=mask, weight_decay_mask=mask)
        new, _ = got.step(params, grads, got.init(params))
        expected, _ = want.step(params, grads, want.init(params))
        for k in params:
            np.testing.assert_array_equal(new[k], expected[k])
    lower = dataclasses.replace(opt, learning_rate=np.float32(0.05))
    assert type(lower.learning_rate) is float and lower.learning_rate == float(np.float32(0.05))


def test_numpy_bool_masks_are_bools():
    """optax.lars takes a mask tree of np.bool_ (as jax.tree.map over ndim > 1 gives
    with NumPy comparisons); lm.optim refused it, against the migration table."""
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    grads = {"w": np.full((2, 2), 0.5), "b": np.full(2, 0.25)}
    masks = {"w": np.bool_(True), "b": np.bool_(False)}
    want = lm.optim.lars(0.1, weight_decay=1e-2, adapt_mask={"w": True, "b": False}, preset="optax")
    for mask in (masks, lambda p: {k: np.bool_(v.ndim > 1) for k, v in p.items()}):
        got = lm.optim.lars(0.1, weight_decay=1e-2, adapt_mask=mask, preset="optax")
        new, _ = got.step(params, grads, got.init(params))
        expected, _ = want.step(params, grads, want.init(params))
        for k in params:
            np.testing.assert_array_equal(new[k], expected[k])
    with pytest.raises(lm.LarsMultiTypeError, match=r"^adapt_mask\['b'\]: expected a bool, got int"):
        bad = lm.optim.lars(0.1, adapt_mask={"w": True, "b": 0}, preset="optax")
        bad.step(params, grads, bad.init(params))


def test_a_buffer_that_is_a_parameter_is_told_to_take_its_own():
    """The refusal gave the tied-weights advice, which does not fit a momentum buffer."""
    params = {"a": np.ones((2, 2)), "b": np.ones((2, 2))}
    grads = {"a": np.full((2, 2), 0.5), "b": np.full((2, 2), 0.25)}
    opt = lm.optim.lars(0.1, momentum=0.9)
    state = opt.init(params)
    bad = state._replace(momentum={"a": params["a"], "b": state.momentum["b"]})
    with pytest.raises(
        lm.LarsMultiValueError, match="give each parameter a momentum buffer of its own"
    ) as info:
        opt.step(params, grads, bad, out=params)
    assert "tied weights" not in str(info.value)
    with pytest.raises(lm.LarsMultiTypeError, match=r"0-d integer array of NumPy, got"):
        opt.step(params, grads, state._replace(count=np.float64(1)))


def test_mask_callables_by_signature():
    """A one-argument mask is called with the parameters (optax's convention), a
    two-argument one per leaf; any other signature is refused when the optimizer is made."""
    params = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    grads = {"w": np.full((2, 2), 0.5, np.float32), "b": np.full(2, 0.5, np.float32)}
    seen = []

    def of_params(tree):
        seen.append(sorted(tree))
        return {"w": True, "b": False}

    runs = {}
    for label, mask in [
        ("tree", {"w": True, "b": False}),
        ("params", of_params),
        ("per leaf", lambda path, array: array.ndim > 1),
    ]:
        opt = lm.optim.lars(LR, weight_decay=1e-2, adapt_mask=mask, weight_decay_mask=mask, preset="optax")
        runs[label], _ = opt.step(params, grads, opt.init(params))
    assert seen == [["b", "w"]]  # (one mask given as both is asked once)
    for label in ("params", "per leaf"):
        for key in params:
            np.testing.assert_array_equal(runs[label][key], runs["tree"][key])
    for bad in (lambda: True, lambda a, b, c: True):
        with pytest.raises(lm.LarsMultiTypeError, match="adapt_mask: expected a callable"):
            lm.optim.lars(LR, adapt_mask=bad)


def test_timm_adapts_only_where_a_scheduled_weight_decay_is_nonzero(backend, problem):
    """timm adapts a layer only where lambda != 0 (without always_adapt): a schedule's
    value, an array that is not read on the host, counts as timm's check does."""
    params, grads = problem

    def opt(weight_decay):
        return lm.optim.lars(LR, weight_decay=weight_decay, trust_coefficient=TRUST, preset="timm")

    zero = native(backend, 0.0, "float32")
    want, _ = run_lib(backend, opt(0.0), params, grads, "float32", steps=3)
    got, _ = run_lib(backend, opt(lambda count: zero), params, grads, "float32", steps=3)
    assert max_diff(got, tmap(to_numpy, want)) == 0.0
    decay = native(backend, 1e-3, "float32")
    want, _ = run_lib(backend, opt(1e-3), params, grads, "float32", steps=3)
    got, _ = run_lib(backend, opt(lambda count: decay), params, grads, "float32", steps=3)
    assert max_diff(got, tmap(to_numpy, want)) < 1e-6


def test_differentiable_steps_on_jax():
    """differentiable=True keeps the step in the graph (d new w / d w near 1); the
    default cuts it, as torch.optim's steps are."""
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    w, g = jnp.linspace(0.5, 3.0, 6).reshape(2, 3), jnp.linspace(-0.3, 0.4, 6).reshape(2, 3)

    def total(opt, w):
        new, _ = opt.step({"w": w}, {"w": g}, opt.init({"w": w}))
        return jnp.sum(new["w"])

    kept = jax.grad(lambda w: total(lm.optim.lars(0.1, weight_decay=1e-2, differentiable=True), w))(w)
    cut = jax.grad(lambda w: total(lm.optim.lars(0.1, weight_decay=1e-2), w))(w)
    assert np.all(np.abs(np.asarray(kept) - 1) < 0.05) and not np.any(np.asarray(cut))
    with pytest.raises(lm.LarsMultiTypeError, match="differentiable"):
        lm.optim.lars(0.1, differentiable=1)


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_a_step_not_differentiable_cuts_the_buffers_it_is_given(preset):
    """By default the new parameters and state are cut from the graph: the momentum
    buffers given too (a state made by a differentiable step carries its graph). The
    buffers were not cut: d new w / d state.momentum was -mu on JAX, and on torch
    every later default step kept the first one's graph."""
    require_backend("jax")
    require_backend("torch")
    import jax
    import jax.numpy as jnp
    import torch

    w, g = jnp.linspace(0.5, 3.0, 6).reshape(2, 3), jnp.linspace(-0.3, 0.4, 6).reshape(2, 3)
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, preset=preset)
    _, state = opt.step({"w": w}, {"w": g}, opt.init({"w": w}))

    def total(buffer):
        new, after = opt.step({"w": w}, {"w": g}, state._replace(momentum={"w": buffer}))
        return jnp.sum(new["w"]) + jnp.sum(after.momentum["w"])

    assert not np.any(np.asarray(jax.grad(total)(state.momentum["w"])))
    p = torch.linspace(0.5, 3.0, 6, dtype=torch.float64).reshape(2, 3).requires_grad_()
    q = torch.linspace(-0.3, 0.4, 6, dtype=torch.float64).reshape(2, 3)
    kept = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, preset=preset, differentiable=True)
    p1, s1 = kept.step([p], [q], kept.init([p.detach()]))
    assert p1[0].requires_grad and s1.momentum[0].requires_grad
    cut = lm.optim.lars(0.1, momentum=0.9, preset=preset)
    p2, s2 = cut.step([p1[0].detach()], [q], s1)
    assert not p2[0].requires_grad and not s2.momentum[0].requires_grad


def test_tf_function_jit_compile_step_equals_eager(problem):
    """XLA compiles the step (tf.norm; reduce_euclidean_norm has no XLA CPU kernel)."""
    require_backend("tensorflow")
    import tensorflow as tf

    params, grads = problem
    opt = lm.optim.lars(LR, weight_decay=1e-3, trust_coefficient=TRUST, preset="optax")
    want, want_state = run_lib("tensorflow", opt, params, grads, "float32", steps=5)
    compiled = tf.function(opt.step, jit_compile=True)
    _assert_compiled_step_matches("tensorflow", compiled, opt, params, grads, want, want_state)


def test_momentum_0_checks_the_buffers_a_state_holds(backend):
    """At momentum 0 a state's buffers are not used, but a state made for another tree (of
    other keys, shapes or dtypes) is refused as at momentum 0.9: it was taken, its count
    set the schedule's position, and its buffers were dropped from the state returned.
    A state with buffers of this tree (made with momentum, as ``optax.inject_hyperparams``
    may then set it to 0) steps as before, as does one without."""
    p = {"w": native(backend, np.ones((2, 2), np.float32)), "b": native(backend, np.ones(3, np.float32))}
    g = {
        "w": native(backend, np.full((2, 2), 0.5, np.float32)),
        "b": native(backend, np.full(3, 0.5, np.float32)),
    }
    opt = lm.optim.lars(0.1, momentum=0.0, weight_decay=1e-2)
    with_momentum = lm.optim.lars(0.1, momentum=0.9, preset="timm")
    foreign = with_momentum.init({"conv": native(backend, np.ones((3, 3), np.float32))})
    reshaped = with_momentum.init({"w": native(backend, np.ones(4, np.float32)), "b": p["b"]})
    for bad, message in (
        (foreign, r"^state.momentum: expected the structure of params"),
        (reshaped, r"^state.momentum\['w'\]: expected shape \(2, 2\)"),
    ):
        with pytest.raises(lm.LarsMultiError, match=message):
            opt.step(p, g, bad)
    want, _ = opt.step(p, g, opt.init(p))
    for state in (opt.init(p), with_momentum.init(p)):
        got, _ = opt.step(p, g, state)
        for k in p:
            np.testing.assert_array_equal(to_numpy(got[k]), to_numpy(want[k]))


def test_timm_start_flags_are_each_layers_own_after_a_step(backend):
    """After a step, each layer's start flag is an array of its own where arrays can be
    written in place (one array served every layer: clearing one layer's flag in place,
    to restart its momentum, restarted every layer's). A new state's flags are new, as
    its buffers are; in place (out=params) a flag already set is kept, unless another
    layer's, stepped or not, is the same array (as a checkpoint of 0.3.16 may hold)."""
    mutable = backend in ("numpy", "torch")
    names = ("w", "b", "c")
    p = {k: native(backend, np.ones((2, 2), np.float32)) for k in names}
    g = {k: native(backend, np.full((2, 2), 0.5, np.float32)) for k in names}
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, preset="timm")
    p1, s1 = opt.step(p, g, opt.init(p))
    _, s2 = opt.step(p1, g, s1)
    for state in (s1, s2):
        assert all(bool(to_numpy(flag)) for flag in state.started.values())
    if not mutable:
        return
    assert len({id(flag) for flag in s2.started.values()}) == 3
    assert not {id(flag) for flag in s1.started.values()} & {id(flag) for flag in s2.started.values()}
    _, s3 = opt.step(p1, g, s2, out=p1)
    assert all(s3.started[k] is s2.started[k] for k in names)  # (kept: no array made at every step)
    one = s3.started["w"]
    shared = s3._replace(started=dict.fromkeys(names, one))
    _, s4 = opt.step(p1, {"w": g["w"], "b": g["b"], "c": None}, shared, out=p1)  # ("c" idle)
    assert s4.started["w"] is not one and s4.started["b"] is not one and s4.started["c"] is one


def test_outputs_are_checked_after_the_masks_and_schedules_run():
    """The caller's code (a mask, a schedule) runs before the outputs are checked: a
    mask that made the last parameter read-only as it was asked about it got NumPy's
    error after every other parameter and buffer had been written."""
    rng = np.random.default_rng(0)
    names = [f"l{i:02d}" for i in range(8)]
    p = {k: rng.standard_normal((4, 3)).astype(np.float32) for k in names}
    g = {k: rng.standard_normal((4, 3)).astype(np.float32) for k in names}

    def mask(path, array):
        if path[-1] == names[-1]:
            p[names[-1]].flags.writeable = False
        return True

    opt = lm.optim.lars(0.1, momentum=0.9, adapt_mask=mask, weight_decay_mask=mask, weight_decay=1e-2)
    state = opt.init(p)
    before = {k: v.copy() for k, v in p.items()}
    with pytest.raises(lm.LarsMultiTypeError, match=r"^out\['l07'\]: expected an array that can be written"):
        opt.step(p, g, state, out=p)
    for k in names:
        np.testing.assert_array_equal(p[k], before[k])
        assert not np.any(state.momentum[k])


def test_momentum_state_missing_buffers():
    p = {"w": np.ones((2, 2), np.float32)}
    state = lm.optim.lars(LR, momentum=0.0).init(p)
    with pytest.raises(lm.LarsMultiError):
        lm.optim.lars(LR).step(p, p, state)


# --- rates given as arrays ---------------------------------------------------------------


def test_array_rates_step_as_numbers(backend):
    """A learning rate and weight decay given as 0-d arrays of the parameters' framework
    (as optax.inject_hyperparams passes them) step as the same numbers; an array of
    another framework, or of another shape, is refused when stepping, naming it."""
    rng = np.random.default_rng(3)
    values = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    grads = [
        {k: native(backend, rng.standard_normal(v.shape), "float64") for k, v in values.items()}
        for _ in range(3)
    ]
    results = []
    for lr, decay in ((0.1, 1e-2), (native(backend, 0.1, "float64"), native(backend, 1e-2, "float64"))):
        params = {k: native(backend, v, "float64") for k, v in values.items()}
        opt = lm.optim.lars(lr, momentum=0.9, weight_decay=decay, weight_decay_mask=True, adapt_mask=True)
        state = opt.init(params)
        for g in grads:
            params, state = opt.step(params, g, state)
        results.append({k: to_numpy(v) for k, v in params.items()})
    for k in values:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-14, atol=0)
    other = "torch" if backend != "torch" else "numpy"
    if is_installed(other):
        params = {k: native(backend, v, "float64") for k, v in values.items()}
        opt = lm.optim.lars(native(other, 0.1, "float64"))
        with pytest.raises(
            lm.MixedFrameworksError, match=rf"^learning_rate: expected .*, got a {other} array"
        ):
            opt.step(params, grads[0], opt.init(params))
    opt = lm.optim.lars(0.1, weight_decay=native(backend, [1e-2, 1e-2], "float64"))
    with pytest.raises(
        lm.LarsMultiValueError, match=r"^weight_decay: expected a 0-d array, got shape \(2,\)"
    ):
        opt.step(params, grads[0], opt.init(params))
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^learning_rate: expected a number, a 0-d array or a schedule"
    ):
        lm.optim.lars("0.1")


# --- learning rate 0 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "lr",
    [0.0, lambda n: 0.0, lambda n: np.float64(0.0)],
    ids=["zero", "schedule-float", "schedule-np-float64"],
)
def test_zero_learning_rate_leaves_params(lr):
    p = {"w": np.ones((2, 2), np.float32)}
    opt = lm.optim.lars(lr)
    new, _ = opt.step(p, {"w": np.full((2, 2), 0.5, np.float32)}, opt.init(p))
    np.testing.assert_array_equal(new["w"], p["w"])


def test_zero_weight_layer_no_numpy_warnings(problem):
    """The r = 1 rule (a zero weight or gradient norm) is taken without 0/0 warnings."""
    p = {"w": np.zeros((2, 2), np.float32), "v": np.ones((2, 2), np.float32)}
    g = {"w": np.zeros((2, 2), np.float32), "v": np.zeros((2, 2), np.float32)}
    for preset in PRESET_NAMES:
        opt = lm.optim.lars(LR, preset=preset, eps=0.0, always_adapt=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            new, _ = opt.step(p, g, opt.init(p))
        np.testing.assert_array_equal(new["v"], p["v"])


# --- 7. half precision -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(backend, dtype, problem):
    """Finite and close to the float32 run; buffers in the param dtype. Norms are taken in
    float32: "big"'s sum of squares overflows float16, "tiny"'s gradient squares underflow it."""
    params, grads = problem
    params = dict(params, big=np.full((16, 16), 30.0), tiny=np.ones((4, 4)))
    grads = [
        dict(g, big=np.full((16, 16), 0.3), tiny=np.full((4, 4), 1e-4) * (1 + 0.1 * t))
        for t, g in enumerate(grads)
    ]
    steps = 10
    opt = lm.optim.lars(
        LR,
        weight_decay=1e-3,
        trust_coefficient=TRUST,
        nesterov=True,
        preset="paper",
        weight_decay_mask=lambda path, w: path[0] != "tiny" and len(w.shape) > 1,
    )
    want, _ = run_lib(backend, opt, params, grads, "float32", steps=steps)
    got, state = run_lib(backend, opt, params, grads, dtype, steps=steps)
    rtol = {"float16": 2e-3, "bfloat16": 2e-2}[dtype]
    for path, x in tleaves(want):
        w, h = to_numpy(x).astype(np.float64), to_numpy(tget(got, path)).astype(np.float64)
        assert np.all(np.isfinite(h)), path
        err = np.max(np.abs(h - w))
        assert err <= rtol * max(1.0, np.max(np.abs(w))), (path, err)
        assert dtype in str(tget(got, path).dtype)
        assert dtype in str(tget(state.momentum, path).dtype)
    # "tiny" moved by its adapted step (r = c|w|/|g| = 100), not by the r = 1 step of an underflowed norm
    moved = 1.0 - to_numpy(got["tiny"]).astype(np.float64)
    assert np.all(moved > 0.5 * (1.0 - to_numpy(want["tiny"]).astype(np.float64))), moved


# --- 8. compiled: jax.jit and tf.function --------------------------------------------------


def _compiled(name, function):
    """``function`` compiled as the framework ``name`` compiles a step (``jax.jit``,
    ``tf.function``, ``torch.compile``); NumPy's as it is."""
    if name == "jax":
        import jax

        return jax.jit(function)
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    if name == "torch":
        import torch

        return torch.compile(function, backend="eager", fullgraph=True)
    return function


def _assert_compiled_step_matches(name, step, opt, params, grads, want, want_state):
    """Five steps of ``step`` (``opt.step`` compiled by framework ``name``) give
    ``want`` and ``want_state``, the eager run's."""
    p = to_native(name, params, "float32")
    state = opt.init(p)
    for g in grads[:5]:
        p, state = step(p, to_native(name, g, "float32"), state)
    assert max_diff(p, tmap(to_numpy, want)) <= 1e-6
    assert max_diff(state.momentum, tmap(to_numpy, want_state.momentum)) <= 1e-6
    assert int(state.count) == 5


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_jax_jit_step_equals_eager(preset, problem):
    require_backend("jax")
    import jax

    params, grads = problem
    opt = lm.optim.lars(
        warmup_polynomial(LR, 2, 20),
        weight_decay=1e-3,
        trust_coefficient=TRUST,
        preset=preset,
        trust_clip=True,
    )
    want, want_state = run_lib("jax", opt, params, grads, "float32", steps=5)
    _assert_compiled_step_matches("jax", jax.jit(opt.step), opt, params, grads, want, want_state)


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("schedule", [False, True], ids=["constant-lr", "schedule"])
def test_tf_function_step_equals_eager(preset, schedule, problem, request):
    require_backend("tensorflow")
    import tensorflow as tf

    params, grads = problem
    lr = warmup_polynomial(LR, 2, 20) if schedule else LR
    opt = lm.optim.lars(lr, weight_decay=1e-3, trust_coefficient=TRUST, preset=preset, nesterov=True)
    if preset == "timm":  # (the eager run also fails: its step is a tf.function)
        want, want_state = run_lib("numpy", opt, params, grads, "float32", steps=5)
    else:
        want, want_state = run_lib("tensorflow", opt, params, grads, "float32", steps=5)
    _assert_compiled_step_matches("tensorflow", tf.function(opt.step), opt, params, grads, want, want_state)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_trust_clip_keeps_a_nan_ratio(backend, compiled):
    """trust_clip's min(r / lr, 1) of a NaN ratio is NaN, as timm's clamp keeps it: a NaN
    gradient element gives the paper and optax presets a NaN layer with the clip too,
    eagerly and in the framework's compiled step (jax.jit, tf.function, whose graph
    optimizer rewrites not(r >= lr) as r < lr), on one layer and on two (an eager step of
    several TensorFlow layers runs in a tf.function). The clip took NaN for 1: the
    layer's other elements took a plain step."""
    w = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    nan_grad = np.array([[0.1, np.nan], [0.2, -0.3]], np.float32)
    settings = dict(momentum=0.9, weight_decay=1e-3, trust_coefficient=1e-3, trust_clip=True)
    for preset in ("paper", "optax"):
        opt = lm.optim.lars(0.1, preset=preset, adapt_mask=True, weight_decay_mask=True, **settings)
        step = _compiled(backend, opt.step) if compiled else opt.step
        for names in (["w"], ["w", "v"]):
            p = {k: native(backend, w) for k in names}
            new, _ = step(p, {k: native(backend, nan_grad) for k in names}, opt.init(p))
            for k in names:
                assert np.all(np.isnan(to_numpy(new[k]))), (preset, names, to_numpy(new[k]))


def test_trust_clip_keeps_timms_nan_ratio_of_overflowing_norms(backend):
    """timm's ratio inf / inf (weights whose squares overflow float32) is NaN, and the
    clip keeps it: the layer is NaN, as with timm's Lars (it stepped finitely)."""
    timm_lars = load_timm_lars()
    if timm_lars is None:
        pytest.skip("timm is not installed (pip install --no-deps timm==1.0.31)")
    import torch

    huge = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32) * np.float32(1e20)
    grad = np.full((2, 2), 0.5, np.float32)
    tensor = torch.nn.Parameter(torch.tensor(huge))
    tensor.grad = torch.tensor(grad)
    timm_lars.Lars(
        [tensor], lr=0.1, trust_clip=True, momentum=0.9, weight_decay=1e-3, trust_coeff=1e-3
    ).step()
    assert torch.isnan(tensor).all()
    opt = lm.optim.lars(
        0.1, preset="timm", momentum=0.9, weight_decay=1e-3, trust_coefficient=1e-3, trust_clip=True
    )
    p = {"w": native(backend, huge)}
    new, _ = opt.step(p, {"w": native(backend, grad)}, opt.init(p))
    assert np.all(np.isnan(to_numpy(new["w"])))


def test_timm_buffer_starts_at_each_parameters_first_gradient(backend):
    """timm starts a parameter's buffer at r u on that parameter's first step, not
    the optimizer's: "b" gets no gradient at step 0, so its buffer starts at step 1
    (with dampening 0.5, mu 0 + (1 - d) r u would be half of it)."""
    timm_lars = load_timm_lars()
    if timm_lars is None:
        pytest.skip("timm is not installed (pip install --no-deps timm==1.0.31)")
    import torch

    rng = np.random.default_rng(3)
    params = {"a": rng.standard_normal((2, 3)), "b": rng.standard_normal((3, 2))}
    grads = [{k: 0.1 * rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    grads[0]["b"] = None
    settings = dict(momentum=0.9, dampening=0.5, weight_decay=0.01)

    tensors = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in params.items()}
    opt = timm_lars.Lars(list(tensors.values()), lr=0.1, trust_coeff=TRUST, **settings)
    for g in grads:
        for k, t in tensors.items():
            t.grad = None if g[k] is None else torch.tensor(g[k], dtype=torch.float64)
        opt.step()
    want = {k: to_numpy(t) for k, t in tensors.items()}

    dtype = "float64" if backend in ("numpy", "torch") else "float32"
    lm_opt = lm.optim.lars(0.1, preset="timm", trust_coefficient=TRUST, **settings)
    bound = 1e-12 if dtype == "float64" else 1e-5
    # out=params writes in place where the backend can (NumPy, torch): one step per kind of buffer
    for in_place in (False, True) if backend in ("numpy", "torch") else (False,):
        with x64(backend, dtype):
            p = {k: native(backend, v, dtype) for k, v in params.items()}
            state = lm_opt.init(p)
            for g in grads:
                native_g = {k: None if v is None else native(backend, v, dtype) for k, v in g.items()}
                p, state = lm_opt.step(p, native_g, state, out=p if in_place else None)
            got = {k: to_numpy(v) for k, v in p.items()}
        assert max_rel_diff(got, want) <= bound, in_place


@pytest.mark.parametrize("preset", ["paper", "optax", "timm"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_learning_rate_gradient_matches_finite_differences(preset, nesterov):
    """differentiable=True with a tensor learning rate that requires grad, two steps on
    several layers: d(loss)/d(lr) as a central difference gives it (timm's Nesterov
    step scaled the buffers by the rate in a _foreach_mul that torch cannot differentiate)."""
    require_backend("torch")
    import torch

    rng = np.random.default_rng(8)
    params = [torch.tensor(rng.standard_normal(s)) for s in [(3, 2), (4,), (2, 2)]]
    grads = [[torch.tensor(rng.standard_normal(p.shape)) for p in params] for _ in range(2)]

    def loss(lr):
        opt = lm.optim.lars(
            lambda count: lr,
            momentum=0.9,
            nesterov=nesterov,
            weight_decay=0.05,
            preset=preset,
            differentiable=True,
        )
        ws, state = params, opt.init(params)
        for step_grads in grads:
            ws, state = opt.step(ws, step_grads, state)
        return sum((w * w).sum() for w in ws)

    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    (got,) = torch.autograd.grad(loss(lr), [lr])
    h = 1e-6
    with torch.no_grad():
        want = (
            loss(torch.tensor(0.3 + h, dtype=torch.float64))
            - loss(torch.tensor(0.3 - h, dtype=torch.float64))
        ) / (2 * h)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


W_SMALL = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)


@pytest.mark.parametrize("count", [np.int64(3), np.array(3, np.int32)], ids=["scalar", "0-d"])
def test_a_numpy_step_count_steps_on_every_backend(backend, count):
    """A count read back from a NumPy checkpoint: a torch or JAX step raised a raw
    AttributeError (its device was asked), and a schedule refused the NumPy value it
    was given; the count is taken as the framework's own."""
    params = {"w": native(backend, W_SMALL), "b": native(backend, W_SMALL[0])}
    grads = {"w": native(backend, W_SMALL * 0.1), "b": native(backend, W_SMALL[0] * 0.1)}
    for lr in (LR, lm.schedules.warmup_cosine(peak=LR, warmup_steps=2, total_steps=10)):
        opt = lm.optim.lars(lr, momentum=0.9, weight_decay=1e-3)
        state = opt.init(params)
        _, want = opt.step(params, grads, state._replace(count=native(backend, np.array(3, np.int32))))
        _, got = opt.step(params, grads, state._replace(count=count))
        assert int(to_numpy(got.count)) == 4
        for k in params:
            np.testing.assert_array_equal(to_numpy(got.momentum[k]), to_numpy(want.momentum[k]))


@pytest.mark.parametrize("preset", ["paper", "optax"])
def test_a_state_of_timm_buffers_is_refused_by_a_preset_whose_buffers_hold_the_step(backend, preset):
    """timm's buffers hold r u, the paper's and optax's the step eta r u: a timm state
    (its start flags tell it) given to a paper optimizer stepped about 1/eta too far,
    silently. It is refused, in place too, with nothing written."""
    p = {"w": native(backend, np.ones((2, 2), np.float32))}
    g = {"w": native(backend, np.full((2, 2), 0.5, np.float32))}
    timm = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, preset="timm")
    _, state = timm.step(p, g, timm.init(p))
    other = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, preset=preset)
    for out in (None, p) if backend in ("numpy", "torch") else (None,):
        with pytest.raises(lm.LarsMultiValueError, match=r"^state: expected no start flags .*'timm'"):
            other.step(p, g, state, out=out)
        with pytest.raises(lm.LarsMultiValueError, match=r"^state: expected no start flags"):
            other.step(p, {"w": None}, state, out=out)
    np.testing.assert_array_equal(to_numpy(p["w"]), 1.0)
    other.step(p, g, state._replace(started=None))  # (the buffers as the user says they are)


@pytest.mark.parametrize("preset", ["paper", "optax"])
def test_a_state_of_buffers_holding_the_step_is_refused_by_timm(backend, preset):
    """The other way round: a paper or optax state (buffers of eta r u, no start flags)
    given to a timm optimizer was taken as timm's own, its buffers read as r u: the
    momentum term eta times too small, silently. It is refused, with nothing written;
    timm's own state at momentum 0 (no buffers, no flags) is taken as before."""
    p = {"w": native(backend, np.ones((2, 2), np.float32))}
    g = {"w": native(backend, np.full((2, 2), 0.5, np.float32))}
    other = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, preset=preset)
    _, state = other.step(p, g, other.init(p))
    timm = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-2, preset="timm")
    for out in (None, p) if backend in ("numpy", "torch") else (None,):
        for grads in (g, {"w": None}):
            with pytest.raises(
                lm.LarsMultiValueError, match=r"^state: expected start flags .*'paper', 'optax'"
            ):
                timm.step(p, grads, state, out=out)
    np.testing.assert_array_equal(to_numpy(p["w"]), 1.0)
    still = lm.optim.lars(0.1, momentum=0.0, preset="timm")
    _, kept = still.step(p, g, still.init(p))
    assert kept.started is None and kept.momentum is None


@pytest.mark.parametrize("preset", ["paper", "optax"])
def test_a_state_resumed_with_a_python_int_count_steps_as_the_uninterrupted_run(backend, preset):
    """A count given as a Python int (a state saved as JSON) made a schedule's rate a
    Python float, which the step folds into its kernels in double precision, where an
    array count's rate (the uninterrupted run's) is an array of the layers' dtype: the
    resumed run left the uninterrupted one by a rounding (6.6e-7 relative after 5 steps).
    An int count is made an array, as init makes it: the runs are equal."""
    schedule = lm.schedules.warmup_polynomial(peak=0.5, warmup_steps=3, total_steps=10, power=1.5)
    opt = lm.optim.lars(schedule, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02, preset=preset)
    rng = np.random.default_rng(0)
    params = {
        "w": native(backend, rng.standard_normal((16, 8)), "float32"),
        "b": native(backend, rng.standard_normal(8), "float32"),
    }
    grads = [
        {k: native(backend, rng.standard_normal(to_numpy(v).shape), "float32") for k, v in params.items()}
        for _ in range(8)
    ]
    p, s = params, opt.init(params)
    for g in grads[:4]:
        p, s = opt.step(p, g, s)
    kept, resumed = (p, s), (p, s._replace(count=int(to_numpy(s.count))))
    for g in grads[4:]:
        kept = opt.step(*kept[:1], g, kept[1])
        resumed = opt.step(*resumed[:1], g, resumed[1])
    for k in params:
        np.testing.assert_array_equal(to_numpy(resumed[0][k]), to_numpy(kept[0][k]))
    assert int(to_numpy(resumed[1].count)) == 8


def test_numpy_array_rates_are_checked_as_numbers():
    """A framework's array rate is not read (that would wait on its device), but a NumPy
    array's value is on the host: a negative one stepped uphill and a NaN one made NaN
    weights, where the same Python number is refused. Checked as a number is, nothing
    written; a schedule's NumPy value too."""
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    grads = {"w": np.full((2, 2), 0.5), "b": np.full(2, 0.25)}

    class Subclass(np.ndarray):
        pass

    for arg, bad in (("learning_rate", -0.1), ("learning_rate", math.nan), ("weight_decay", -1e-3)):
        for value, path in (
            (np.array(bad), arg),
            (np.array(bad).view(Subclass), arg),
            (lambda count, bad=bad: np.array(bad), f"{arg}(state.count)"),
        ):
            opt = lm.optim.lars(**{"learning_rate": 0.1, arg: value})
            state = opt.init(params)
            with pytest.raises(
                lm.LarsMultiValueError, match=rf"^{re.escape(path)}: expected a finite number >= 0"
            ):
                opt.step(params, grads, state, out=params)
            np.testing.assert_array_equal(params["w"], 1.0)
            np.testing.assert_array_equal(state.momentum["w"], 0.0)


def test_a_count_array_at_the_end_of_int32_saturates_instead_of_wrapping(backend):
    """An int32 count of 2**31 - 1 advanced to -2**31, and an int64, uint32 or uint64
    count beyond int32 was cast to a negative one: a schedule then gave a negative
    rate, and the weights went uphill (torch compares neither unsigned dtype). A count
    array is not read: it saturates at 2**31 - 1. A count on the host (NumPy's, a
    Python int) is checked: beyond int32 it is refused; 2**31 - 1, which the step
    itself saturates at, was refused too, so a saturated NumPy run could not go on."""
    schedule = lm.schedules.warmup_polynomial(peak=1.0, warmup_steps=10, total_steps=100, end=0.01)
    opt = lm.optim.lars(schedule, momentum=0.9)
    p = {"a": native(backend, np.array([[1.0, 2.0], [3.0, 4.0]]), "float32")}
    g = {"a": native(backend, np.full((2, 2), 0.1), "float32")}
    want, _ = opt.step(p, g, opt.init(p)._replace(count=2**31 - 2))
    counts = [
        np.array(n, dtype)
        for n, dtype in ((2**31 - 1, np.int32), (2**31 + 5, np.uint32), (2**32 - 1, np.uint32))
    ]
    if backend in ("torch", "tensorflow"):  # (JAX has no 64-bit integers without jax_enable_x64)
        counts += [
            np.array(n, dtype)
            for n, dtype in ((2**31 + 5, np.int64), (2**31 + 5, np.uint64), (2**64 - 3, np.uint64))
        ]
    for count in counts:
        if backend == "numpy" and count > 2**31 - 1:
            with pytest.raises(lm.LarsMultiValueError, match=r"^state.count: expected an integer in"):
                opt.step(p, g, opt.init(p)._replace(count=count))
            continue
        new, state = opt.step(p, g, opt.init(p)._replace(count=native(backend, count, str(count.dtype))))
        assert int(to_numpy(state.count)) == 2**31 - 1
        np.testing.assert_array_equal(to_numpy(new["a"]), to_numpy(want["a"]))
        _, state = opt.step(p, g, state)  # (saturated: it goes on)
        assert int(to_numpy(state.count)) == 2**31 - 1
    _, state = opt.step(p, g, opt.init(p)._replace(count=2**31 - 1))  # (a Python int, saved as JSON)
    assert int(to_numpy(state.count)) == 2**31 - 1


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    "case", ["out_is_an_idle_buffer", "shared_buffer", "buffer_is_a_param", "param_is_a_buffer"]
)
def test_what_a_layer_without_a_gradient_keeps_is_not_written_through_an_alias(backend, case):
    """A layer without a gradient keeps its parameters and momentum buffer. Where the
    stepped layers' outputs or buffers were those arrays (an output that is the idle
    layer's buffer, one buffer for both layers, a buffer that is the other parameter),
    the step wrote them silently; with both layers stepped it was refused. It is refused,
    before anything is written."""
    require_backend(backend)
    opt = lm.optim.lars(0.5, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.02)
    params = {
        "a": native(backend, np.ones((2, 2), np.float32)),
        "c": native(backend, np.full((2, 2), 3.0, np.float32)),
    }
    state = opt.init(params)
    out = params
    if case == "out_is_an_idle_buffer":
        out = {"a": state.momentum["c"], "c": native(backend, np.zeros((2, 2), np.float32))}
    elif case == "shared_buffer":
        state.momentum["c"] = state.momentum["a"]
    elif case == "buffer_is_a_param":
        state.momentum["a"] = params["c"]
    else:
        state.momentum["c"] = params["a"]
    before = {
        k: to_numpy(v).copy()
        for k, v in {**params, **{f"m{k}": v for k, v in state.momentum.items()}}.items()
    }
    grads = {"a": native(backend, np.full((2, 2), 0.5, np.float32)), "c": None}
    with pytest.raises(lm.LarsMultiValueError, match=r"share memory: writing the one would change the other"):
        opt.step(params, grads, state, out=out)
    after = {k: to_numpy(v) for k, v in {**params, **{f"m{k}": v for k, v in state.momentum.items()}}.items()}
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


@pytest.mark.parametrize(
    "settings",
    [
        {"momentum": 0.9, "dampening": 0.1},
        {"momentum": 0.9, "dampening": 0.1, "preset": "optax"},
        {"momentum": 0.9, "nesterov": True, "preset": "timm"},
    ],
    ids=["paper-dampening", "optax-dampening", "timm-nesterov"],
)
def test_tensorflow_layer_steps_alike_alone_in_a_batch_and_traced(settings):
    """TensorFlow ran a layer alone op by op, with Python-float rates, and a batch of
    layers of one dtype as a tf.function, with the rates as tensors: a product of
    two rates, such as (1 - d) lr, was rounded once alone and twice in a batch, and a
    layer's buffer hung on whether another layer of its dtype was stepped with it."""
    require_backend("tensorflow")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = tf.constant(rng.standard_normal((5, 6)), tf.float32)
    g = tf.constant(rng.standard_normal((5, 6)) * 0.01, tf.float32)
    other = tf.constant(rng.standard_normal(4), tf.float32)
    opt = lm.optim.lars(0.1, trust_coefficient=0.02, weight_decay=1e-3, **settings)

    def steps(params, grads):
        state = opt.init(params)
        for _ in range(2):
            params, state = opt.step(params, grads, state)
        return params["t"], state.momentum["t"]

    alone = [x.numpy() for x in steps({"t": w}, {"t": g})]
    beside = [x.numpy() for x in steps({"t": w, "n": other}, {"t": g, "n": other})]
    traced = [x.numpy() for x in tf.function(steps)({"t": w, "n": other}, {"t": g, "n": other})]
    for a, b, c in zip(alone, beside, traced):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
