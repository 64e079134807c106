"""The exceptions lars_multi raises.

Every error derives from :class:`LarsMultiError` and from the built-in that
matches its kind, so ``except TypeError`` and ``except lm.LarsMultiError``
both catch it.
"""

from __future__ import annotations


class LarsMultiError(Exception):
    """Base class of every error raised by lars_multi."""


class LarsMultiTypeError(LarsMultiError, TypeError):
    """An argument has the wrong type or dtype."""


class LarsMultiValueError(LarsMultiError, ValueError):
    """An argument has the wrong value or shape."""


class UnknownBackendError(LarsMultiValueError):
    """A backend name that is not registered."""


class BackendNotInstalledError(LarsMultiError, ImportError):
    """A registered backend whose framework cannot be imported here."""


class MixedFrameworksError(LarsMultiTypeError):
    """Inputs come from two frameworks, or disagree with the active backend."""


def type_name(x: object) -> str:
    """``torch.Tensor``-style name of ``x``'s type, for error messages."""
    cls = type(x)
    module = cls.__module__.split(".")[0]
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
