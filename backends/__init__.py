"""Backends: one module per framework, each with the same primitives.

The LARS step lives once, in :mod:`lars_multi._step`, written over lists of
layers with these primitives; a backend only says how its framework computes
each of them, never what LARS is. A module registered with
:func:`lars_multi.register_backend` satisfies the ``typing.Protocol``
:class:`lars_multi._protocol.Backend` once completed with the defaults there:

Required
    ``FRAMEWORK``: the framework's name, for messages.
    ``FLOAT_DTYPES``: the native dtypes accepted as weights (``x.dtype in FLOAT_DTYPES``).
    ``is_native(x)``: whether ``x`` is an array of this framework.
    ``is_writable(x)``: whether ``x`` can be written in place (``out=``), unless
    the module defines ``unwritable`` below.
    ``dtype_name(dtype)``: the dtype's name (``"float32"``).
    ``asarray(obj, dtype=None)``: a native array (Python floats become float32).
    ``zeros_like(x)``, ``to_numpy(x)``.
    ``norm(x, axis_name=None)``: the 2-norm over all elements, a 0-d array; float16
    and bfloat16 accumulate in float32 (``axis_name``: see ``check_axis_name``).
    ``cast_like(value, like)``: an array ``value`` in ``like``'s dtype (numbers pass through).
    ``where(cond, x, y)``: elementwise choice; ``y`` may be a Python float.
    ``stack(xs)``: 0-d arrays as one vector; ``unstack(vector)``: back to a list.
    ``stop_gradient(x)``: ``x`` cut from the autograd graph.
    ``info()``: ``{"version": ..., "devices": ...}`` for ``python -m lars_multi info``.

Optional, with defaults in :mod:`lars_multi._protocol` (one device, dense
arrays, no shared memory, no compiler) given to a module that lacks them:
    ``axpby(a, x, b, y, out=None)``: ``a x + b y``, written into ``out`` (which
    may be ``x``) when given (default: the arrays' operators, then ``write``).
    ``axpbys(a, xs, bs, ys, outs=None, scale=1.0)``: ``a x_i + s b_i y_i`` for
    many arrays, ``bs`` one coefficient or one per array, ``s`` a Python number
    (that a kernel such as ``addcmul`` takes for free); default: a loop over ``axpby``.
    ``norms(xs, axis_names=None)``: the norms of many arrays (default: a loop).
    ``byte_spans(xs)``: the address range each array reaches, where ``overlaps`` is decided
    by them (default: None, and arrays of one buffer are compared pair by pair).
    ``stop_gradients(xs)``: ``stop_gradient`` of many arrays (default: a loop).
    ``batches(ws)``: the groups of layers the step runs over, each of one dtype
    and device (default: one per dtype; NumPy and torch on CPUs use cache-sized batches).
    ``compile(function, donate=False)``: a step compiled by the framework (JAX,
    TensorFlow); ``donate``: the weights' buffers may be reused. ``COMPILES``:
    whether ``compile`` compiles, so that the step traces values rather than
    reading them (default: whether ``compile`` gives another function than it is given).
    ``write(out, value)``: copy ``value`` into ``out`` in place (for ``out=``).
    ``snapshot(x)``: ``x``'s values now, kept whatever is later written into its
    memory (default: ``x`` itself, as nothing can be written).
    ``to_compute(x)``: ``x`` in the dtype updates are computed in (float32 for
    halves), ``x`` itself where that is its own; decided by the dtype alone.
    ``unwritable(x)``: why ``x`` cannot be written in place, or None (default:
    from ``is_writable``); ``all_writable(xs)``: whether every array can be
    (default: ``unwritable`` of each).
    ``alike(xs, ws)``: a fast check that every ``x`` is an array of its
    weight's type, dtype and shape needing no other check (dense, on the
    weight's device); False sends each through every check, with messages
    (default: type, dtype and shape). ``ws`` is a :class:`~lars_multi._protocol.Layout`
    of the weights (``ws.arrays``), which reads their types, dtypes and shapes
    once however many lists are compared with them. ``is_dense(x)``,
    ``layout_name(x)``, ``densify(g, w)`` (a framework's sparse gradient of ``w`` as a
    dense array, or None), ``device(x)``.
    ``conform(x, w)``: ``x`` (a gradient or buffer, checked like the weights
    ``w``) laid out as ``w`` where the framework would lay results out as it
    chose (JAX: another sharding over the same devices); default: ``x``.
    ``shape(x)``: ``x``'s shape as far as known now (default ``x.shape``;
    TensorFlow: a variable of unknown static shape has its value's, eagerly).
    ``is_traced(x)``: whether ``x`` is a value of a program being traced
    (``jax.jit``, ``tf.function``), not an array with values (default: False).
    ``assert_same_shape(x, w, message)``: where shapes are known only when a
    traced program runs (TensorFlow graphs), ``x`` checked in it to have ``w``'s
    shape, as the array to use in its place (default: ``x``, shapes are known).
    ``all_dense(xs)``: whether every array is dense (default: True).
    ``misplaced(value, ws)``: the index of the first of ``ws`` whose arithmetic
    cannot read the 0-d array ``value`` where it lives (a rate on another device),
    or None (default: None).
    ``memory_roots(xs)``: the identity of the buffer holding each array (None:
    it shares memory with no other array of ``xs`` except by being the same
    object); ``overlaps(a, b)`` for two arrays of one buffer; ``view_of(x)``: the
    elements ``x`` reads, as a key, equal for two objects over the same elements in
    the same order (tied weights in a ``state_dict``), which are then one array
    (default: None, arrays known by the object alone).
    ``dtype_hint(got, expected)``: advice for a dtype mismatch message.
    ``largest(dtype)``: the largest finite value of the dtype the rate is
    computed in, to refuse hyper-parameters that overflow it.
    ``readable()``: whether array values can be read on the host now (default:
    True; torch: not inside a ``torch.func`` transform, which batches them).
    ``constant(value, like)``: the number ``value`` as arithmetic with arrays
    like ``like`` takes it fastest (default: the number; torch: a cached 0-d
    tensor, since an operator wraps a Python number in a new tensor at each call).
    ``arithmetic()``: the context the step's arithmetic runs in (default: none;
    NumPy: ``errstate(all="ignore")``, so that the caller's ``np.seterr`` cannot stop it halfway).
    ``check_axis_name(arg, value)``: raise unless the backend sums norms over named
    mesh axes (default: raise; JAX: inside ``jax.shard_map``).
    ``sin(x)``: the sine of a schedule's array (default: ``math.sin``, numbers only).
    ``scalar_for(value, dtype, ws)``: a 0-d array of ``value`` that arithmetic with
    each of ``ws`` can read (a step count, a flag; default: ``asarray``).
    ``widest_float(like)``: the widest floating dtype's name that arrays beside
    ``like`` can have now (a schedule's rate is computed in it; default ``"float64"``).
    ``flatten(tree)``: a :class:`lars_multi._tree.Flat` of the framework's own
    pytrees (JAX), used when optree sees leaves that are not arrays.

A weight decay of 0 reaches the step as None, which then skips it: no primitive
is called with it. The step also uses
the arrays' own Python operators, as NumPy, torch, JAX and TensorFlow arrays
define them: arithmetic (``+ - * / **``) and comparisons (``< > == !=``, ``&``,
``~``) between arrays and with numbers, and ``bool()`` of a 0-d array (an
optimizer's step count and timm's first-step flags, read on the host where the
step is not compiled).
"""
