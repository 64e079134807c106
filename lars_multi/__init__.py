"""lars_multi: Layer-wise Adaptive Rate Scaling for NumPy, PyTorch, JAX and TensorFlow.

>>> import lars_multi as lm
>>> lm.set_backend("numpy")
>>> w = lm.array([3., 1, 5])
>>> lm.lars_update(w, lm.array([0.3, 0.1, 0.2]), 0.1)
lars_multi.array([2.52565837, 0.8418861 , 4.68377209])
>>> lm.unset_backend()

Importing lars_multi imports no framework; a backend imports its framework
the first time it is used.
"""

from . import optim, schedules
from ._array import Array, array, zeros_like
from ._container import Container
from ._errors import (
    BackendNotInstalledError,
    LarsMultiError,
    LarsMultiTypeError,
    LarsMultiValueError,
    MixedFrameworksError,
    UnknownBackendError,
    UnknownPresetError,
)
from ._lars import lars_update
from ._registry import (
    available_backends,
    current_backend,
    installed_backends,
    register_backend,
    set_backend,
    unset_backend,
    using_backend,
)

__version__ = "0.3.24"

__all__ = [
    "Array",
    "BackendNotInstalledError",
    "Container",
    "LarsMultiError",
    "LarsMultiTypeError",
    "LarsMultiValueError",
    "MixedFrameworksError",
    "UnknownBackendError",
    "UnknownPresetError",
    "array",
    "available_backends",
    "current_backend",
    "installed_backends",
    "lars_update",
    "optim",
    "register_backend",
    "schedules",
    "set_backend",
    "unset_backend",
    "using_backend",
    "zeros_like",
]

# Framework front doors, imported on first access so that importing lars_multi imports no framework.
_FRONT_DOORS = frozenset({"torch", "optax", "keras"})


def __getattr__(name: str) -> object:
    if name in _FRONT_DOORS:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
