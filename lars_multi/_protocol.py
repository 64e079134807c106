"""What a backend module provides, and the defaults for what it may leave out.

The required primitives are listed in :mod:`lars_multi.backends`. The
optional ones below have defaults that fit a framework with one device, dense
arrays and no way to share memory between arrays; :func:`complete` gives a
backend module the defaults it does not define itself.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from types import ModuleType
from typing import Any

from ._errors import type_name


def _defaults(module: ModuleType) -> dict[str, Callable[..., Any]]:
    def unwritable(x: Any) -> str | None:
        """Why ``x`` cannot be written in place, or None when it can."""
        return None if module.is_writable(x) else f"an immutable {type_name(x)}"

    def is_dense(x: Any) -> bool:
        return True

    def matches(g: Any, w: Any) -> bool:
        """A fast check that ``g``, of ``w``'s type, dtype and shape, needs no other check
        (dense, on ``w``'s device); False sends it through every check, with messages."""
        return True

    def densify(x: Any) -> Any:
        """A dense native array for a framework's sparse gradient, or None."""
        return None

    def layout_name(x: Any) -> str:
        return "dense"

    def dtype_hint(got: Any, expected: Any) -> str:
        """Advice appended to a dtype mismatch message."""
        return ""

    def device(x: Any) -> Any:
        return None

    def memory_root(x: Any) -> Hashable | None:
        """The identity of the buffer holding ``x``, or None where arrays never share one."""
        return None

    def overlaps(a: Any, b: Any) -> bool:
        return True

    def norms(xs: Any) -> list[Any]:
        """The 2-norm of each array (halves accumulate in float32)."""
        return [module.norm(x) for x in xs]

    def to_compute(x: Any) -> Any:
        """``x`` in the dtype updates are computed in (float32 for halves)."""
        return x

    def compile(function: Any) -> Any:
        """``function`` (of lists of arrays) compiled by the framework, where it compiles."""
        return function

    def largest(dtype: Any) -> float:
        """The largest finite value of the dtype the rate is computed in."""
        return float("inf")

    return {
        f.__name__: f
        for f in (
            unwritable,
            is_dense,
            matches,
            densify,
            layout_name,
            dtype_hint,
            device,
            memory_root,
            overlaps,
            norms,
            to_compute,
            compile,
            largest,
        )
    }


def complete(module: ModuleType) -> ModuleType:
    """Give ``module`` the optional primitives it does not define."""
    for name, default in _defaults(module).items():
        if not hasattr(module, name):
            setattr(module, name, default)
    return module
