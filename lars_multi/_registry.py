"""Which backend runs a call: the registry, the user's choice and inference.

A backend is resolved, in this order, from

1. :func:`using_backend` (a context override, per thread and asyncio task),
2. :func:`set_backend` (the process-wide choice),
3. the ``LARS_MULTI_BACKEND`` environment variable (read when lars_multi is imported),
4. the type of the inputs.

Inference never imports a framework: a tensor of a framework can only exist
once that framework is imported, so only frameworks already in
``sys.modules`` are asked whether they own an object.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ._errors import (
    BackendNotInstalledError,
    LarsMultiError,
    LarsMultiTypeError,
    LarsMultiValueError,
    UnknownBackendError,
)
from ._protocol import Backend, complete

ENV_VAR = "LARS_MULTI_BACKEND"


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and what it needs."""

    name: str
    module_path: str
    framework: str
    pip_extra: str | None = None


_SPECS: dict[str, BackendSpec] = {}
_MODULES: dict[str, Backend] = {}
_NATIVE_TYPES: dict[type, str | None] = {}
# Modules whose types no backend owns: trees, numbers and lars_multi's own handles (an
# lm.Array holds an array and is none), remembered as such at once.
_NEVER_NATIVE = frozenset({"builtins", "collections", "lars_multi._container", "lars_multi._array"})
_LOCK = threading.Lock()
_global_choice: str | None = None
_env_choice: str | None = os.environ.get(ENV_VAR) or None  # read once, at import
_context_choice: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lars_multi_backend", default=None
)
_contexts_used = False  # whether any using_backend block was ever opened


def register_backend(
    name: str, module_path: str, *, framework: str | None = None, pip_extra: str | None = None
) -> None:
    """Register a backend module under ``name``.

    ``module_path`` is imported on first use and must satisfy the protocol in
    :mod:`lars_multi.backends`. ``framework`` is the top-level module of the
    framework whose arrays the backend owns (default: ``name``); it is used to
    infer the backend from inputs without importing anything.
    """
    if not isinstance(name, str) or not name:
        raise LarsMultiTypeError(f"name: expected a non-empty str, got {name!r}")
    if not isinstance(module_path, str) or not module_path:
        raise LarsMultiTypeError(f"module_path: expected a module's dotted path (a str), got {module_path!r}")
    if framework is not None and (not isinstance(framework, str) or not framework):
        raise LarsMultiTypeError(f"framework: expected a top-level module's name (a str), got {framework!r}")
    if pip_extra is not None and (not isinstance(pip_extra, str) or not pip_extra):
        raise LarsMultiTypeError(
            f"pip_extra: expected None or the name of an extra of lars-multi (a str), got {pip_extra!r}"
        )
    builtin = f"lars_multi.backends.{name}"
    spec = BackendSpec(name, module_path, framework or name, pip_extra)
    if name in _BUILT_IN and (module_path != builtin or _SPECS.get(name, spec) != spec):
        raise LarsMultiValueError(
            f"name: {name!r} is a built-in backend ({builtin}); register yours under another name"
        )
    with _LOCK:
        _SPECS[name] = spec
        _MODULES.pop(name, None)
        _NATIVE_TYPES.clear()


_BUILT_IN = ("numpy", "torch", "jax", "tensorflow")
for _name in _BUILT_IN:
    register_backend(_name, f"lars_multi.backends.{_name}", pip_extra=None if _name == "numpy" else _name)
del _name


def available_backends() -> list[str]:
    """Names of all registered backends, installed or not."""
    return list(_SPECS)


def installed_backends() -> list[str]:
    """Names of the registered backends whose framework imports here (and whose
    module defines the required primitives)."""
    names = []
    for name in tuple(_SPECS):  # (a snapshot: another thread may register meanwhile)
        try:
            get_backend(name)
        except (ImportError, LarsMultiTypeError):
            continue
        names.append(name)
    return names


def get_backend(name: str) -> Backend:
    """The backend module registered as ``name``, imported on first use."""
    try:
        module = _MODULES.get(name)
    except TypeError:  # unhashable: not a name
        module = None
    if module is not None:
        return module
    spec = _SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UnknownBackendError(f"backend: expected one of {sorted(_SPECS)}, got {name!r}")
    try:
        module = _import(spec.module_path, spec.framework)
    except Exception as error:  # (a module that fails to import for any reason is not installed)
        raise BackendNotInstalledError(_not_installed(spec, error)) from error
    backend = _MODULES[name] = complete(module)
    return backend


def _not_installed(spec: BackendSpec, error: Exception) -> str:
    """Why the backend ``spec`` cannot be used: its own module missing, or its framework."""
    cause = f"({type(error).__name__}: {error})"
    missing = error.name if isinstance(error, ModuleNotFoundError) else None
    hint = f'; install it with: pip install "lars-multi[{spec.pip_extra}]"' if spec.pip_extra else ""
    if missing and missing != spec.framework and f"{spec.module_path}.".startswith(f"{missing}."):
        return f"backend {spec.name!r}: its module {spec.module_path!r} cannot be imported here {cause}{hint}"
    if sys.modules.get(spec.framework) is not None:  # (the framework imported: the backend's module failed)
        return f"backend {spec.name!r}: its module {spec.module_path!r} failed to import {cause}"
    needs = f"backend {spec.name!r} needs the {spec.framework!r} package"
    return f"{needs}, which cannot be imported here {cause}{hint}"


def _find_built_in_backends() -> None:
    """Load ``lars_multi.backends`` from a checkout's ``backends/`` folder where lars_multi
    is imported from a checkout (the package's folder has no ``backends`` package inside,
    and a ``pyproject.toml`` and a ``backends/`` beside it). pyproject installs that folder under
    this name; with ``PYTHONPATH=.``, or a checkout's directory ahead of a regular install
    on ``sys.path``, nothing else would find it, and an editable install of another
    checkout would give that one's."""
    package_folder = Path(__file__).resolve().parent
    root = package_folder.parent
    init = root / "backends" / "__init__.py"
    installed = (package_folder / "backends" / "__init__.py").is_file()
    if installed or not (init.is_file() and (root / "pyproject.toml").is_file()):
        return
    spec = importlib.util.spec_from_file_location(
        "lars_multi.backends", init, submodule_search_locations=[str(init.parent)]
    )
    if spec is None or spec.loader is None:
        return
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    sys.modules["lars_multi"].backends = package  # type: ignore[attr-defined]  # (as an import sets it)


_find_built_in_backends()


def _import(module_path: str, framework: str) -> ModuleType:
    """Built-in backends by static imports, which torch.compile traces (a first
    call may be a compiled one), where ``import_module`` breaks the graph; another
    backend with its framework (its module may import without it)."""
    if module_path == "lars_multi.backends.numpy":
        from .backends import numpy as module
    elif module_path == "lars_multi.backends.torch":
        from .backends import torch as module
    elif module_path == "lars_multi.backends.jax":
        from .backends import jax as module
    elif module_path == "lars_multi.backends.tensorflow":
        from .backends import tensorflow as module
    else:
        module = importlib.import_module(module_path)
        importlib.import_module(framework)
    return module


def _not_compiling() -> bool:
    return False


# The torch backend's ``_traced`` once it is loaded (Dynamo, or torch.export, traces
# this call): storage queries, context variables and other untraceable checks are
# skipped while a call is traced.
is_compiling: Callable[[], bool] = _not_compiling
# The backend whose compiler guards on what a traced call reads (torch's Dynamo), and
# whether it traces this call (Dynamo alone, asked at every lookup: a cheaper question).
tracer: str | None = None
guarding: Callable[[], bool] = _not_compiling


def set_tracer(name: str, compiling: Callable[[], bool], guards: Callable[[], bool]) -> None:
    """Backend ``name``'s compiler traces calls where ``compiling()`` says so, and
    guards on what they read where ``guards()`` says so."""
    global is_compiling, tracer, guarding
    is_compiling, tracer, guarding = compiling, name, guards


def set_backend(name: str) -> None:
    """Make ``name`` the backend of every call in this process (until unset)."""
    global _global_choice
    get_backend(name)
    _global_choice = name


def unset_backend() -> None:
    """Forget the :func:`set_backend` choice; inputs decide again."""
    global _global_choice
    _global_choice = None


@contextlib.contextmanager
def using_backend(name: str) -> Iterator[Backend]:
    """Use ``name`` inside a ``with`` block, in this thread or asyncio task only."""
    global _contexts_used
    module = get_backend(name)
    token = _context_choice.set(name)
    _contexts_used = True
    try:
        yield module
    finally:
        _context_choice.reset(token)


def current_backend() -> str | None:
    """The chosen backend's name: context, then set_backend, then environment."""
    # The context variable is read once some with-block was opened (a task it made may run
    # after the block closed), never while torch.compile traces (Dynamo cannot read it: the
    # inputs decide there, as do set_backend and the environment).
    context = _context_choice.get() if _contexts_used and not is_compiling() else None
    choice = context or _global_choice or _env_choice
    if choice is not None and choice not in _SPECS:
        raise UnknownBackendError(f"{ENV_VAR}: expected one of {sorted(_SPECS)}, got {choice!r}")
    return choice


def backend_of(x: object) -> str | None:
    """The name of the backend whose framework owns ``x``, or None.

    Looks only at frameworks already imported; answers are cached by type. Where a
    compiler traces the call, its own backend's arrays are asked of that backend,
    not the cache (Dynamo would guard on it: an eager call meeting a new type made
    every compiled step recompile).
    """
    cls = type(x)
    if guarding():
        return _traced_backend_of(x, cls)
    name = _NATIVE_TYPES.get(cls, "")
    if name != "":
        return name
    if cls.__module__ in _NEVER_NATIVE:  # trees, numbers, handles: remembered as no array at all
        _NATIVE_TYPES[cls] = None
        return None
    for spec in tuple(_SPECS.values()):  # (a snapshot: another thread may register meanwhile)
        if spec.framework not in sys.modules:
            continue
        try:
            module = get_backend(spec.name)
        except ImportError:
            continue
        except LarsMultiError:  # a module that is no backend: its error, for its framework's arrays
            if cls.__module__.partition(".")[0] == spec.framework:
                raise
            continue
        if module.is_native(x):
            _NATIVE_TYPES[cls] = spec.name
            return spec.name
    return None


def _traced_backend_of(x: object, cls: type) -> str | None:
    """:func:`backend_of` while a compiler that guards traces the call: its own arrays
    asked of its backend, trees and numbers of none, with no cache read."""
    assert tracer is not None
    if get_backend(tracer).is_native(x):
        return tracer
    if cls.__module__ in _NEVER_NATIVE:
        return None
    return _NATIVE_TYPES.get(cls) or None  # (another framework's array: as cached, if it is)


def all_native(xs: Sequence[object]) -> bool:
    """Whether ``xs`` are native arrays of one type (no handle to unwrap or write back);
    True for no arrays."""
    if not xs:
        return True
    return backend_of(xs[0]) is not None and list(map(type, xs)).count(type(xs[0])) == len(xs)
