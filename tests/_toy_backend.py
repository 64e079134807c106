"""A third-party backend for the tests: the protocol of ``lars_multi.backends``
implemented with NumPy, with the required primitives only, so that the
protocol's defaults (the list primitives looping over ``axpby`` and ``norm``,
one batch, no compiler) run the step, and ``write`` serves ``out=``.

Its arrays are :class:`ToyTensor`, a small class that is *not* an ndarray
subclass: backend inference asks the registered backends in order, and the
NumPy backend would claim any ndarray subclass first. Registered with
``framework="_toy_backend"`` (this module), inference finds it once this module
is imported, as it is for a real framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FRAMEWORK = "toy"
FLOAT_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})

calls: dict[str, int] = {}


def _count(name: str) -> None:
    calls[name] = calls.get(name, 0) + 1


class ToyTensor:
    """A mutable array of the toy framework: a NumPy array inside."""

    __slots__ = ("values",)

    def __init__(self, values: Any, dtype: Any = None) -> None:
        self.values = np.array(values, dtype=dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"ToyTensor({self.values!r})"


def is_native(x: Any) -> bool:
    return isinstance(x, ToyTensor)


def is_writable(x: Any) -> bool:
    return isinstance(x, ToyTensor)


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def asarray(obj: Any, dtype: Any = None) -> ToyTensor:
    if isinstance(obj, ToyTensor):
        obj = obj.values
    values = np.asarray(obj, dtype=dtype)
    if dtype is None and values.dtype == np.float64 and not isinstance(obj, np.ndarray | np.generic):
        values = values.astype(np.float32)
    return ToyTensor(values)


def zeros_like(x: ToyTensor) -> ToyTensor:
    return ToyTensor(np.zeros_like(x.values))


def to_numpy(x: ToyTensor) -> np.ndarray:
    return x.values.copy()


def norm(x: ToyTensor) -> np.generic:
    _count("norm")
    return np.sqrt(np.sum(np.square(x.values)))


def cast_like(value: Any, like: Any) -> Any:
    if isinstance(value, ToyTensor):
        return value.values.astype(like.dtype)[()]
    return value


def where(cond: Any, x: Any, y: Any) -> Any:
    return np.where(cond, x, y)


def stack(xs: Any) -> np.ndarray:
    return np.array(xs)


def unstack(vector: np.ndarray) -> list[Any]:
    return list(vector)


def axpby(a: Any, x: ToyTensor, b: Any, y: ToyTensor, out: ToyTensor | None = None) -> ToyTensor:
    _count("axpby")
    result = ToyTensor((a * x.values + b * y.values).astype(x.dtype))
    if out is None:
        return result
    write(out, result)
    return out


def stop_gradient(x: Any) -> Any:
    return x


def write(out: ToyTensor, value: ToyTensor) -> None:
    _count("write")
    out.values[...] = value.values


def info() -> dict[str, str]:
    return {"version": "0.0", "devices": "toy"}
