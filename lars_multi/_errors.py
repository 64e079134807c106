"""The exceptions lars_multi raises.

Every error derives from :class:`LarsMultiError` and from the built-in that
matches its kind, so ``except TypeError`` and ``except lm.LarsMultiError``
both catch it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar


class LarsMultiError(Exception):
    """Base class of every error raised by lars_multi."""

    # Inside a tf.function, autograph re-raises errors from the code it traces
    # as its own StagingError unless they carry this mark: ours keep their type.
    ag_pass_through = True


class LarsMultiTypeError(LarsMultiError, TypeError):
    """An argument has the wrong type or dtype."""


class LarsMultiValueError(LarsMultiError, ValueError):
    """An argument has the wrong value or shape."""


class UnknownBackendError(LarsMultiValueError):
    """A backend name that is not registered."""


class UnknownPresetError(LarsMultiValueError):
    """An optimizer preset that does not exist."""


class BackendNotInstalledError(LarsMultiError, ImportError):
    """A registered backend whose framework cannot be imported here."""


class MixedFrameworksError(LarsMultiTypeError):
    """Inputs come from two frameworks, or disagree with the active backend."""


F = TypeVar("F", bound=Callable[..., Any])


def no_autograph(function: F) -> F:
    """Mark ``function`` so that TensorFlow's autograph calls it as it is instead
    of converting it (the mark ``tf.autograph.experimental.do_not_convert``
    sets, set here without importing TensorFlow): its Python checks stay Python."""
    function.autograph_info__ = None  # type: ignore[attr-defined]
    return function


def type_name(x: object) -> str:
    """``torch.Tensor``-style name of ``x``'s type, for error messages."""
    cls = type(x)
    module = cls.__module__.split(".")[0]
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
