"""``lars_multi.Array``: a thin, framework-agnostic handle on a native array."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import LarsMultiTypeError, MixedFrameworksError, no_autograph, type_name
from ._registry import backend_of, current_backend, get_backend


class Array:
    """A native array (``numpy.ndarray``, ``torch.Tensor``, ``jax.Array`` or
    ``tf.Tensor``/``tf.Variable``) tagged with the backend that owns it.

    ``.data`` is the native array itself: no copy is ever made. Functions given
    an ``Array`` return an ``Array``; given a native array, a native array.
    """

    __slots__ = ("backend", "data")
    data: Any
    backend: str

    def __init__(self, data: Any, backend: str | None = None) -> None:
        if isinstance(data, Array):
            data, backend = data.data, backend or data.backend
        known = backend_of(data)
        if backend is None:
            backend = known
        elif backend != known and not get_backend(backend).is_native(data):  # (a registered backend
            if known is not None:  # may take another's arrays: its is_native says)
                raise MixedFrameworksError(
                    f"backend: expected the backend of data, {known!r}, got {backend!r} (a {type_name(data)})"
                )
            backend = None
        if backend is None:
            raise LarsMultiTypeError(
                f"data: expected a native array of an imported framework, got {type_name(data)}"
                " (use lars_multi.array(obj) to build one from Python data)"
            )
        self.data = data
        self.backend = backend

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle, copy.copy and copy.deepcopy rebuild the Array from its native
        # data and backend name: copy.copy shares the data, copy.deepcopy and
        # pickle copy it with the framework's own deepcopy/pickle support.
        return (type(self), (self.data, self.backend))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> str:
        """The dtype's name, the same string on every backend (``"float32"``)."""
        return get_backend(self.backend).dtype_name(self.data.dtype)

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    def to_numpy(self) -> np.ndarray:
        """A NumPy copy (or view, where the framework allows) of the data."""
        return get_backend(self.backend).to_numpy(self.data)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """NumPy's conversion: ``copy=True`` (``np.array``'s default) gives a copy that
        later writes to the weights leave as it is; otherwise a view where the
        framework allows one."""
        values = self.to_numpy()
        if dtype is not None:
            converted = values.astype(dtype, copy=False)
            if converted is not values and copy is False:  # (NumPy 2: copy=False never copies)
                raise ValueError(
                    f"copy=False: converting {self.dtype} to {np.dtype(dtype).name} needs a copy"
                )
            if copy and converted is not values:  # (already a copy)
                return converted
            values = converted
        return values.copy() if copy else values

    def __len__(self) -> int:
        """The length of the first axis (a ``tf.Variable`` has no ``len``); a 0-d array
        has none, as NumPy says."""
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __bool__(self) -> bool:
        """As the data's (a 0-d array's value; more elements: the framework's error)."""
        return bool(self.data)

    def __repr__(self) -> str:
        values = self.to_numpy()
        dtype = self.dtype
        if values.dtype.kind == "f" or dtype == "bfloat16":
            # Print the stored values exactly, to 8 decimals, whatever the width.
            values = values.astype(np.float64)
        prefix = "lars_multi.array("
        body = np.array2string(values, separator=", ", prefix=prefix, precision=8)
        suffix = "" if dtype in ("float32", "int64", "bool") else f", dtype={dtype}"
        return f"{prefix}{body}{suffix})"

    @no_autograph
    def lars_update(
        self,
        dcdw: Any,
        lr: Any,
        /,
        *,
        decay_lambda: Any = 0,
        stop_gradients: Any = True,
        out: Any = None,
    ) -> Any:
        """Method form of :func:`lars_multi.lars_update` with ``w=self``."""
        from ._lars import lars_update

        return lars_update(self, dcdw, lr, decay_lambda=decay_lambda, stop_gradients=stop_gradients, out=out)


def array(obj: Any, dtype: Any = None) -> Array:
    """An :class:`Array` of ``obj`` on the active backend.

    The backend is the chosen one (:func:`lars_multi.set_backend`,
    :func:`lars_multi.using_backend` or ``LARS_MULTI_BACKEND``), else the one
    that owns ``obj``, else NumPy. Python floats (and lists of them) become
    float32 on every backend, so that the same code gives the same numbers
    everywhere; numbers that carry a dtype (another framework's array, a
    ``memoryview``, a list of ``np.float64``) keep it, but for float64 on JAX
    without ``jax_enable_x64``, which JAX makes float32 (warning where ``dtype`` asks for it).
    ``dtype`` is a name (``"float64"``) or a native dtype. A NumPy array, torch tensor or JAX array of
    the backend's own dtype is wrapped, not copied (as ``np.asarray``): an update
    with ``out=`` the handle writes the NumPy array or torch tensor it wraps.
    Another framework's array is copied. A NumPy masked array is refused (its mask
    would be dropped).
    """
    if isinstance(obj, Array):
        obj = obj.data
    if isinstance(obj, np.ma.MaskedArray):
        raise LarsMultiTypeError(
            "obj: expected numbers, got a NumPy masked array (its mask would be dropped); pass "
            "obj.filled(value) or obj.data"
        )
    owner = backend_of(obj)
    name = current_backend() or owner or "numpy"
    ops = get_backend(name)
    try:
        if owner is not None and owner != name:  # a copy, through NumPy (bfloat16 as ml_dtypes')
            obj = np.array(get_backend(owner).to_numpy(obj))
        elif dtype is None and owner is None and _python_numbers(obj) and np.asarray(obj).dtype == np.float64:
            dtype = "float32"  # Python floats, whatever the framework's default
        data = ops.asarray(obj, dtype)
    except Exception as error:  # (each framework raises its own: TypeError, KeyError, RuntimeError...)
        raise LarsMultiTypeError(
            f"obj: expected numbers {name} can hold{'' if dtype is None else f' as {dtype}'}, "
            f"got {type_name(obj)} ({type(error).__name__}: {error})"
        ) from None
    if not ops.dtype_name(data.dtype).startswith(_NUMERIC):  # (NumPy holds strings and objects too)
        raise LarsMultiTypeError(
            f"obj: expected numbers, got {type_name(obj)} (a {ops.dtype_name(data.dtype)} array)"
        )
    return Array(data, name)


def _python_numbers(obj: Any) -> bool:
    """Whether ``obj`` is a Python number, or lists and tuples of them (``np.float64``
    is a ``float`` subclass, but carries its dtype: not one)."""
    if isinstance(obj, list | tuple):
        return all(map(_python_numbers, obj))
    return type(obj) in (float, int, bool)


_NUMERIC = ("float", "bfloat", "int", "uint", "bool", "complex")


def zeros_like(x: Any) -> Any:
    """Zeros with the shape, dtype and backend of ``x`` (an Array gives an Array)."""
    if isinstance(x, Array):
        return Array(get_backend(x.backend).zeros_like(x.data), x.backend)
    name = backend_of(x)
    if name is None:
        raise LarsMultiTypeError(f"x: expected an array, got {type_name(x)}")
    return get_backend(name).zeros_like(x)
