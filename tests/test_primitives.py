"""The list primitives every backend gives the one LARS step (``lars_multi._step``):
``axpbys`` (``a x + b y`` for many arrays, into outputs), ``norms``, ``stack`` /
``unstack`` and ``batches``, each against a float64 NumPy computation; and
``memory_roots``, and the step's own ``take`` / ``put`` of layers."""

from __future__ import annotations

import contextlib
import importlib
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import native, require_backend, to_numpy, x64
from hypothesis import given, settings
from hypothesis import strategies as st

import lars_multi as lm
from lars_multi import _batching
from lars_multi._registry import get_backend

SHAPES = [(3, 4), (5,), (2, 3, 2), (7,)]


def _immutable(backend):
    return get_backend(backend).unwritable(native(backend, np.zeros(2, np.float32))) is not None


def _skip_if_immutable(backend):
    if _immutable(backend):
        pytest.skip(f"{backend} arrays are immutable")


def _arrays(name, rng, dtype="float32"):
    return [native(name, rng.standard_normal(s).astype(dtype)) for s in SHAPES]


@pytest.mark.parametrize("kind", ["number", "array", "per-layer numbers", "per-layer arrays", "mixed"])
@pytest.mark.parametrize("in_place", [False, True], ids=["new", "in-place"])
@pytest.mark.parametrize("a", [1.0, 0.9, 0.0])
def test_axpbys_is_a_x_plus_b_y(backend, kind, in_place, a):
    ops = get_backend(backend)
    if in_place:
        _skip_if_immutable(backend)
    rng = np.random.default_rng(0)
    xs, ys = _arrays(backend, rng), _arrays(backend, rng)
    want_x, want_y = (
        [to_numpy(x).astype(np.float64) for x in xs],
        [to_numpy(y).astype(np.float64) for y in ys],
    )
    numbers = [0.5, -1.25, 2.0, 1e-3]
    arrays = [ops.asarray(np.float32(b)) for b in numbers]
    bs = {
        "number": 0.5,
        "array": arrays[0],
        "per-layer numbers": numbers,
        "per-layer arrays": arrays,
        "mixed": [numbers[0], arrays[1], numbers[2], arrays[3]],
    }[kind]
    coefficients = [0.5] * 4 if kind in ("number", "array") else numbers
    got = ops.axpbys(a, xs, bs, ys, xs if in_place else None)
    if in_place:
        assert all(g is x for g, x in zip(got, xs))
    for g, x, b, y in zip(got, want_x, coefficients, want_y):
        np.testing.assert_allclose(to_numpy(g), a * x + b * y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["number", "array", "per-layer numbers", "per-layer arrays"])
@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("in_place", [False, True], ids=["new", "in-place"])
def test_axpbys_scale_multiplies_every_coefficient(backend, kind, n, in_place):
    """``scale`` (a number, which torch's ``addcmul`` takes as its ``value``): ``a x + s b y``,
    for one array (the one-array kernels) and for many."""
    ops = get_backend(backend)
    if in_place:
        _skip_if_immutable(backend)
    rng = np.random.default_rng(3)
    xs, ys = _arrays(backend, rng)[:n], _arrays(backend, rng)[:n]
    want_x = [to_numpy(x).astype(np.float64) for x in xs]
    want_y = [to_numpy(y).astype(np.float64) for y in ys]
    numbers = [0.5, -1.25, 2.0, 0.75][:n]
    bs = {
        "number": 0.5,
        "array": ops.asarray(np.float32(0.5)),
        "per-layer numbers": numbers,
        "per-layer arrays": [ops.asarray(np.float32(b)) for b in numbers],
    }[kind]
    coefficients = [0.5] * n if kind in ("number", "array") else numbers
    got = ops.axpbys(0.9, xs, bs, ys, xs if in_place else None, scale=-1e-2)
    for g, x, b, y in zip(got, want_x, coefficients, want_y):
        np.testing.assert_allclose(to_numpy(g), 0.9 * x - 1e-2 * b * y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_place", [False, True], ids=["new", "in-place"])
def test_axpbys_one_number_per_layer_is_that_number(backend, in_place):
    """A list repeating one number (the step gives layers not adapted f(1.0)) rounds
    as that number given once: a layer's result does not depend on how its
    coefficient came."""
    ops = get_backend(backend)
    if in_place:
        _skip_if_immutable(backend)
    rng = np.random.default_rng(3)
    xs, ys = _arrays(backend, rng), _arrays(backend, rng)
    copies = [native(backend, to_numpy(x)) for x in xs]
    once = ops.axpbys(0.9, copies, 1e-3 / 3, ys, copies if in_place else None)
    listed = ops.axpbys(0.9, xs, [1e-3 / 3] * len(xs), ys, xs if in_place else None)
    for a, b in zip(once, listed):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_numpy_blocked_axpby_in_threads(dtype):
    """Layers above the block size (and 4-D, so not BLAS vectors) take the cache-blocked
    path, whose scratch blocks each thread keeps: four threads at once, a x + b y each."""
    ops = get_backend("numpy")
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((5, 4, 60, 60)).astype(dtype) for _ in range(4)]
    ys = [rng.standard_normal((5, 4, 60, 60)).astype(dtype) for _ in range(4)]
    coefficients = [0.25, -1.5, 3.0, 0.125]
    expected = [
        0.9 * x.astype(np.float64) + b * y.astype(np.float64) for x, b, y in zip(xs, coefficients, ys)
    ]
    targets = [x.copy() for x in xs]

    def run(i):
        for _ in range(20):
            np.copyto(targets[i], xs[i])
            ops.axpbys(0.9, [targets[i]], [coefficients[i]], [ys[i]], [targets[i]])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, range(4)))
    rtol = {"float16": 2e-3, "float32": 1e-6, "float64": 1e-14}[dtype]
    for target, want in zip(targets, expected):
        np.testing.assert_allclose(target.astype(np.float64), want, rtol=rtol, atol=rtol * 10)


def test_norms_stack_unstack(backend):
    ops = get_backend(backend)
    rng = np.random.default_rng(1)
    xs = _arrays(backend, rng)
    norms = ops.norms(xs)
    vector = ops.stack(norms)
    want = [np.linalg.norm(to_numpy(x).astype(np.float64)) for x in xs]
    np.testing.assert_allclose(to_numpy(vector), want, rtol=1e-6)
    np.testing.assert_allclose([float(to_numpy(v)) for v in ops.unstack(vector)], want, rtol=1e-6)


def test_batches_cover_every_layer_once_by_dtype(backend):
    ops = get_backend(backend)
    rng = np.random.default_rng(2)
    ws = [
        native(backend, rng.standard_normal(s).astype(dtype))
        for s, dtype in zip([(600, 600), (3,), (700, 700), (5, 5), (800, 800)], ["float32"] * 5)
    ] + [native(backend, rng.standard_normal((4, 4)).astype(np.float16))]
    batches = ops.batches(ws)
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(len(ws)))
    for batch in batches:
        assert len({str(ws[i].dtype) for i in batch}) == 1
        assert list(batch) == sorted(batch)  # consecutive order within a dtype


def _caches(root, listed):
    """A folder laid out as Linux lists CPU 0's caches: ``index<i>/type`` and ``/size``."""
    for i, (kind, size) in enumerate(listed):
        (root / f"index{i}").mkdir()
        (root / f"index{i}" / "type").write_text(kind + "\n")
        (root / f"index{i}" / "size").write_text(size + "\n")
    return root


@pytest.mark.parametrize(
    "listed, largest",
    [
        ([("Data", "48K"), ("Instruction", "32K"), ("Unified", "2048K"), ("Unified", "307200K")], 300 << 20),
        ([("Data", "32K"), ("Instruction", "4096K"), ("Unified", "1M")], 1 << 20),  # (no instructions)
        ([("Data", "65536")], 65536),  # a size in bytes
        ([("Unified", "2G")], 2 << 30),
        ([("Data", "32K"), ("Unified", "many")], None),  # unreadable: not known
        ([], None),
    ],
)
def test_cpu_batches_are_an_eighth_of_the_largest_cache(tmp_path, listed, largest):
    """CPU batches (NumPy, torch) take an eighth of the largest data cache Linux lists,
    at least 4 MiB; 4 MiB where no cache size can be read."""
    caches = _caches(tmp_path, listed)
    assert _batching.largest_cache_bytes(caches) == largest
    want = 4 << 20 if largest is None else max(4 << 20, largest // 8)
    assert _batching.cpu_batch_bytes(caches) == want
    assert _batching.cpu_batch_bytes(tmp_path / "missing") == 4 << 20


def _set_cpu_batch_bytes(monkeypatch, backend_name, value):
    """The CPU batch size of the NumPy or torch backend set to ``value`` bytes, for this test."""
    module = importlib.import_module(f"lars_multi.backends.{backend_name}")
    monkeypatch.setattr(module, "_BATCH_BYTES" if backend_name == "numpy" else "_CPU_BATCH_BYTES", value)


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_cpu_batches_are_cut_at_the_machines_batch_size(backend_name, monkeypatch):
    """A tree larger than a batch is cut where the batch size says, whatever it is
    on this machine (halves, on float32 copies, always at 4 MiB)."""
    require_backend(backend_name)
    ops = get_backend(backend_name)
    _set_cpu_batch_bytes(monkeypatch, backend_name, 1 << 20)
    ws = [native(backend_name, np.zeros(n, np.float32)) for n in (100_000, 100_000, 100_000, 300_000)]
    assert [list(b) for b in ops.batches(ws)] == [[0, 1], [2], [3]]  # 1 MiB: 262,144 float32 elements
    halves = [native(backend_name, np.zeros(600_000, np.float16)) for _ in range(3)]
    assert [list(b) for b in ops.batches(halves)] == [[0], [1], [2]]  # 600,000 float32 copies: 2.4 MB each
    _set_cpu_batch_bytes(monkeypatch, backend_name, 1 << 30)
    assert [list(b) for b in ops.batches(ws)] == [[0, 1, 2, 3]]
    assert [list(b) for b in ops.batches(halves)] == [[0], [1], [2]]


@pytest.mark.parametrize("in_place", [False, True], ids=["new", "in-place"])
def test_axpbys_keeps_each_dtype_in_a_mixed_list(backend, in_place):
    """Coefficients converted once for a list's first dtype must not round another's
    (a float64 layer after float32 ones, a large layer, a 0-d one)."""
    ops = get_backend(backend)
    if in_place:
        _skip_if_immutable(backend)
    rng = np.random.default_rng(3)
    shapes_and_dtypes = [((5,), "float32"), ((4,), "float64"), ((40_000,), "float64"), ((), "float64")]
    want_x = [rng.standard_normal(s).astype(d) for s, d in shapes_and_dtypes]
    want_y = [rng.standard_normal(s).astype(d) for s, d in shapes_and_dtypes]
    with x64(backend):
        xs = [native(backend, x.copy()) for x in want_x]
        ys = [native(backend, y) for y in want_y]
        got = [to_numpy(g) for g in ops.axpbys(0.9, xs, 0.1, ys, xs if in_place else None)]
    for g, x, y in zip(got[1:], want_x[1:], want_y[1:]):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, 0.9 * x + 0.1 * y, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("a", [1.0, 0.9, 0.0])
def test_axpbys_on_large_layers_in_place(backend, dtype, a):
    """Layers larger than a cache block, of several dimensions, written in place
    (NumPy: BLAS ``scal`` and ``axpy`` on a contiguous layer, ufuncs on a strided one),
    each against the float64 result."""
    ops = get_backend(backend)
    _skip_if_immutable(backend)
    rng = np.random.default_rng(7)
    shapes = [(128, 64, 3, 3), (300, 200), (40_001,)]
    want_x = [rng.standard_normal(s).astype(dtype) for s in shapes]
    want_y = [rng.standard_normal(s).astype(dtype) for s in shapes]
    with x64(backend):
        xs = [native(backend, x.copy()) for x in want_x]
        xs[1] = native(backend, want_x[1].T.copy()).T  # a transposed (strided) layer
        ys = [native(backend, y) for y in want_y]
        bs = [0.5, -1.25, 1e-3]
        got = ops.axpbys(a, xs, bs, ys, xs)
        assert all(g is x for g, x in zip(got, xs))
        results = [to_numpy(x) for x in xs]
    tolerance = 1e-6 if dtype == "float32" else 1e-14
    for value, x, b, y in zip(results, want_x, bs, want_y):
        assert value.dtype == np.dtype(dtype)
        want = a * x.astype(np.float64) + b * y.astype(np.float64)
        np.testing.assert_allclose(value, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("a", [1.0, 0.9])
def test_numpy_layers_beyond_what_blas_counts_take_ufuncs(monkeypatch, a):
    """SciPy's BLAS counts elements in a C int: on a layer of 2**31 elements or more,
    scal took the count cut to 32 bits and axpy raised OverflowError after scal had
    written. Such layers take the blocked ufuncs (here with the limit lowered, as no
    test allocates 8 GiB), with the same results as the others."""
    require_backend("numpy")
    import lars_multi.backends.numpy as numpy_backend

    monkeypatch.setattr(numpy_backend, "_BLAS_MOST", 40_000)
    rng = np.random.default_rng(8)
    shapes = [(40_001,), (201, 200), (39_999,), (64,)]
    want_x = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want_y = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for layers in (range(4), (0, 2)):  # (every kind; only vectors, which BLAS takes as a list)
        xs = [want_x[i].copy() for i in layers]
        bs = [0.5, -1.25, 2.0, 1e-3][: len(xs)]
        got = numpy_backend.axpbys(a, xs, bs, [want_y[i] for i in layers], xs)
        assert all(g is x for g, x in zip(got, xs))
        for x, i, b in zip(xs, layers, bs):
            want = a * want_x[i].astype(np.float64) + b * want_y[i].astype(np.float64)
            np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)


def test_norms_of_large_and_strided_layers(backend):
    """Large layers (BLAS dot on torch CPUs), a transposed view, and small ones, in one call."""
    ops = get_backend(backend)
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(300, 200), (7,), (256, 256), (1,)]]
    xs = [native(backend, a) for a in arrays]
    if backend in ("numpy", "torch"):
        xs[2] = xs[2].T  # a strided view
    want = [np.linalg.norm(a.astype(np.float64)) for a in arrays]
    got = [float(to_numpy(v)) for v in ops.norms(xs)]
    np.testing.assert_allclose(got, want, rtol=2e-6)


def _reordered_views(backend, values):
    """Views of ``values`` (a C-contiguous float32 array, reshaped) whose elements fill
    their memory in another order than their own: transposed, permuted and (NumPy,
    which has negative strides) reversed, each with the values it holds."""
    square = values.reshape(1024, -1)
    views = {"transposed": square.T, "permuted": values.reshape(16, 64, 32, -1).transpose(0, 2, 3, 1)}
    if backend == "numpy":
        views |= {
            "reversed": values[::-1],
            "reversed-2d": square[::-1, ::-1],
            "fortran": np.asfortranarray(square),
        }
        return {k: (v, v) for k, v in views.items()}
    tensor = native(backend, values)
    square_t = tensor.reshape(1024, -1)
    natives = {"transposed": square_t.T, "permuted": tensor.reshape(16, 64, 32, -1).permute(0, 2, 3, 1)}
    return {k: (natives[k], views[k]) for k in views}


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_norms_of_large_reordered_layers_are_as_accurate_as_contiguous_ones(backend_name):
    """A million float32 elements read in memory order (BLAS): a reduction in the layer's
    own order (NumPy's vdot on a reversed array, torch's on a transposed one) erred by 1e-4."""
    require_backend(backend_name)
    ops = get_backend(backend_name)
    values = np.random.default_rng(5).random(1 << 20).astype(np.float32)
    for name, (x, view) in _reordered_views(backend_name, values).items():
        want = np.linalg.norm(view.astype(np.float64))
        for got in (ops.norms([x, x])[0], ops.norm(x)):
            assert abs(float(to_numpy(got)) - want) / want < 3e-6, name


@pytest.mark.parametrize("mixed", [False, True], ids=["one-dtype", "mixed-dtypes"])
def test_norms_of_many_layers(backend, mixed):
    """Many layers at once (NumPy takes one square root for all of one dtype): each
    norm as the float64 one, in the layer's own dtype."""
    ops = get_backend(backend)
    rng = np.random.default_rng(5)
    dtypes = ["float32", "float64"] * 6 if mixed else ["float32"] * 12
    arrays = [rng.standard_normal(3 + i).astype(d) for i, d in enumerate(dtypes)]
    with x64(backend):
        got = [to_numpy(v) for v in ops.norms([native(backend, a) for a in arrays])]
    for value, a in zip(got, arrays):
        assert value.dtype == a.dtype
        want = np.linalg.norm(a.astype(np.float64))
        np.testing.assert_allclose(value, want, rtol=2e-7 if a.dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("layout", ["own-memory", "views-of-one-buffer", "with-an-empty-one", "strided"])
@pytest.mark.parametrize("a", [1.0, 0.9])
def test_axpbys_on_vectors_in_place(backend, layout, a):
    """Vectors written in place (NumPy maps BLAS scal and axpy over the lists where
    each owns its memory, and steps the others one by one)."""
    ops = get_backend(backend)
    _skip_if_immutable(backend)
    rng = np.random.default_rng(6)
    sizes = [5, 0, 7, 300] if layout == "with-an-empty-one" else [5, 9, 7, 300]
    want_x = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    want_y = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    if layout == "views-of-one-buffer":
        buffer = native(backend, np.concatenate(want_x))
        bounds = np.cumsum([0, *sizes])
        xs = [buffer[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    elif layout == "strided":
        xs = [native(backend, np.repeat(x, 2))[::2] for x in want_x]
    else:
        xs = [native(backend, x.copy()) for x in want_x]
    ys = [native(backend, y) for y in want_y]
    bs = [0.5, -1.25, 2.0, 1e-3]
    got = ops.axpbys(a, xs, bs, ys, xs)
    assert all(g is x for g, x in zip(got, xs))
    for x, want, b, y in zip(xs, want_x, bs, want_y):  # the arrays given hold the results
        np.testing.assert_allclose(to_numpy(x), a * want.astype(np.float64) + b * y, rtol=1e-6, atol=1e-6)


def test_memory_roots_tell_which_arrays_share_memory(backend):
    """``memory_roots(xs)``: arrays sharing memory have one root; None only where an
    array shares memory with no other of ``xs`` (except by being the same object)."""
    ops = get_backend(backend)
    rng = np.random.default_rng(7)
    own = [native(backend, rng.standard_normal(n).astype(np.float32)) for n in (4, 6)]
    roots = ops.memory_roots(own + own[:1])
    assert all(root is None for root in roots) or (roots[0] == roots[2] != roots[1])
    if not _immutable(backend):
        roots = ops.memory_roots([own[0], own[1], own[1][2:]])  # a view of the second
        assert roots[1] is not None and roots[0] != roots[1] == roots[2]
    if backend in ("numpy", "torch"):  # memory held by another object than the array's own
        memory = np.arange(6, dtype=np.float32)
        foreign = {
            "numpy": lambda a: np.frombuffer(memoryview(a), dtype=a.dtype),
            "torch": lambda a: __import__("torch").from_numpy(a),
        }[backend]
        roots = ops.memory_roots([foreign(memory[:4]), foreign(memory[4:]), foreign(memory[3:5])])
        assert roots[0] == roots[1] == roots[2] is not None  # one chain of ranges that meet
        roots = ops.memory_roots([foreign(memory[:3]), foreign(memory[3:])])
        assert roots[0] != roots[1]
        # Two storages from one address, the first the longer: a third meets only the first.
        roots = ops.memory_roots([foreign(memory), foreign(memory[:2]), foreign(memory[4:])])
        assert roots[0] == roots[1] == roots[2]


@pytest.mark.parametrize("indices", [[0, 1, 2, 3, 4], [1, 2, 3], [3], [0, 2, 4], [], [1, 4]])
def test_take_and_put_are_inverse(indices):
    """``take`` (a slice for consecutive layers) and ``put`` give back what they took."""
    from lars_multi._lists import put, take

    xs = list("abcde")
    taken = take(xs, indices)
    assert taken == [xs[i] for i in indices]
    ys = list(xs)
    put(ys, indices, [t.upper() for t in taken])
    assert ys == [x.upper() if i in indices else x for i, x in enumerate(xs)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 12), st.sampled_from([1, 2, 3, -1]), st.booleans()),
        min_size=2,
        max_size=8,
    )
)
def test_overlap_search_by_address_agrees_with_pairs(views):
    """Arrays of one buffer, some of them outputs: the search in address order (byte
    spans) finds an overlap involving an output exactly when pair-by-pair does."""
    from types import SimpleNamespace

    from lars_multi._aliasing import _overlapping

    ops = get_backend("numpy")
    pairs_only = SimpleNamespace(byte_spans=lambda xs: None, overlaps=ops.overlaps)
    base = np.zeros(64, np.float32)
    xs, outputs = [], []
    for start, length, step, output in views:
        stop = start + length * step
        xs.append(base[start:stop:step] if step > 0 else base[start : max(stop, 0) or None : step])
        outputs.append(output)
    found = _overlapping(ops, xs, outputs)
    assert (found is None) == (_overlapping(pairs_only, xs, outputs) is None)
    if found is not None:
        i, j = found
        assert (outputs[i] or outputs[j]) and ops.overlaps(xs[i], xs[j])


def test_overlap_groups_join_ranges_that_meet():
    """Byte ranges that meet, directly or through a third, share a group; touching ends do not."""
    from lars_multi._aliasing import overlap_groups

    groups = overlap_groups(
        {"a": (0, 10), "b": (30, 40), "c": (8, 20), "d": (20, 25), "e": (19, 21), "f": (50, 50)}
    )
    assert groups["a"] == groups["c"] == groups["e"] == groups["d"]
    assert len({groups["a"], groups["b"], groups["f"]}) == 3
    assert overlap_groups({"x": (0, 4), "y": (4, 8)})["x"] != overlap_groups({"x": (0, 4), "y": (4, 8)})["y"]
    assert overlap_groups({}) == {}


def test_all_writable_agrees_with_unwritable_of_each():
    """NumPy asks a list at once; every list gives what ``unwritable`` of each gives."""
    require_backend("numpy")
    ops = get_backend("numpy")
    frozen = np.ones(3, np.float32)
    frozen.flags.writeable = False
    plain = [np.ones(n, np.float32) for n in (2, 3, 4)]
    cases = [
        plain,
        [*plain, frozen],
        [*plain, np.ones(8, np.float32)[::2]],  # writable, not contiguous
        [*plain, np.lib.stride_tricks.as_strided(np.ones(3, np.float32), (4,), (0,), writeable=True)],
        [*plain, np.float32(1.0)],
        [np.ones((3, 2), np.float32).T, np.ones(2, np.float32).view(np.memmap)],
    ]
    for xs in cases:
        assert ops.all_writable(xs) == all(ops.unwritable(x) is None for x in xs)
    assert ops.all_writable(plain) and not ops.all_writable([*plain, frozen])


@contextlib.contextmanager
def mock_compiling(registry, compiling):
    """Whether torch.compile traces, as the registry is told (the real trace of the
    step, batches included, runs in test_autodiff_and_compile)."""
    saved = registry.is_compiling
    registry.is_compiling = lambda: compiling
    try:
        yield
    finally:
        registry.is_compiling = saved


@given(
    layers=st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 100)), min_size=1, max_size=40),
    limit=st.integers(1, 150),
)
@settings(max_examples=200, deadline=None)
def test_batches_cut_each_group_greedily_by_bytes(layers, limit):
    """Each key's layers, in order, in batches that fill up to the budget (a layer
    larger than it alone): the same cut as adding layers one by one."""
    from lars_multi._batching import batches

    got = [list(b) for b in batches(layers, key=lambda x: x[0], size=lambda x: x[1], budget=lambda k: limit)]
    want: list[list[int]] = []
    for key in dict.fromkeys(k for k, _ in layers):
        batch: list[int] = []
        total = 0
        for i, (k, size) in enumerate(layers):
            if k != key:
                continue
            if batch and total + size > limit:
                want.append(batch)
                batch, total = [], 0
            batch.append(i)
            total += size
        want.append(batch)
    assert got == want


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_steps_do_not_depend_on_the_machines_batch_size(backend_name, preset, monkeypatch):
    """The batch size follows the machine's cache; the result must not: two optimizer
    steps in place and one functional, with 1 MiB batches (a tree of several) and with
    one batch, give the same bits."""
    require_backend(backend_name)
    rng = np.random.default_rng(11)
    shapes = [(300, 400), (400,), (64,), (500, 300), (7, 3, 3, 3), (2_000,)] * 3
    weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(2)]
    opt = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-3, preset=preset)
    results, cuts = [], []
    for batch_bytes in (1 << 20, 1 << 30):
        _set_cpu_batch_bytes(monkeypatch, backend_name, batch_bytes)
        params = {f"p{i}": native(backend_name, w.copy()) for i, w in enumerate(weights)}
        cuts.append(len(get_backend(backend_name).batches(list(params.values()))))
        state = opt.init(params)
        for step_grads in grads:
            gs = {f"p{i}": native(backend_name, g) for i, g in enumerate(step_grads)}
            _, state = opt.step(params, gs, state, out=params)
        new, _ = opt.step(params, gs, state)
        results.append([to_numpy(x) for x in [*params.values(), *new.values()]])
    assert cuts[0] > 2 and cuts[1] == 1
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


def _unaligned(values):
    """``values`` (float32) in a buffer one byte off alignment."""
    raw = np.zeros(values.nbytes + 1, np.uint8)
    out = np.frombuffer(raw.data, np.float32, values.size, offset=1)
    out[...] = values
    return out


@pytest.mark.parametrize("layout", ["strided gradient", "strided weights", "unaligned weights", "reversed"])
@pytest.mark.parametrize("batch_bytes", [1, 1 << 30])
def test_a_large_vectors_step_does_not_depend_on_the_others(layout, batch_bytes, monkeypatch):
    """A large NumPy vector that BLAS cannot take as it is (strided, unaligned) was
    stepped in place by BLAS on a copy where its batch held vectors alone, and by ufuncs
    (rounding the product before the sum) beside any other layer: its bits, and inf
    against NaN where a step overflows, hung on the layers beside it and on the
    machine's batch size."""
    import lars_multi.backends.numpy as numpy_backend

    monkeypatch.setattr(numpy_backend, "_BATCH_BYTES", batch_bytes)
    rng = np.random.default_rng(12)
    n = 40_000  # (more than a block: axpby's own rules)
    w_values = rng.standard_normal(n).astype(np.float32)
    g_values = (rng.standard_normal(n) * 1e-2).astype(np.float32)

    def step(with_other, overflow=False):
        w = np.full(n, np.inf, np.float32) if overflow else w_values.copy()
        g = np.full(n, 1e28, np.float32) if overflow else g_values
        if layout == "strided gradient":
            g = np.repeat(g, 2)[::2]
        elif layout == "strided weights":
            w = np.repeat(w, 2)[::2]
        elif layout == "unaligned weights":
            w = _unaligned(w)
        else:
            w, g = w[::-1].copy()[::-1], g[::-1].copy()[::-1]
        params, grads = {"v": w}, {"v": g}
        if with_other:
            params["m"], grads["m"] = np.ones((3, 3), np.float32), np.full((3, 3), 0.1, np.float32)
        opt = lm.optim.lars(1e30 if overflow else 0.1, momentum=0.0 if overflow else 0.9, weight_decay=1e-3)
        state = opt.init(params)
        for _ in range(1 if overflow else 3):
            _, state = opt.step(params, grads, state, out=params)
        lm.lars_update(params, grads, 0.1, out=params)
        return params["v"].copy()

    np.testing.assert_array_equal(step(True), step(False))
    alone, beside = step(False, overflow=True), step(True, overflow=True)
    np.testing.assert_array_equal(alone, beside)
