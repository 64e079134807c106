"""``lars_multi.Container``: a nested mapping of arrays, one per layer."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from ._errors import LarsMultiTypeError, no_autograph, type_name


class Container(Mapping):
    """A nested, ordered mapping from names to arrays (or sub-containers).

    Keys are reachable as items (``c["a"]``) and as attributes (``c.a``);
    nested dicts become Containers. A model's parameters are one Container,
    each leaf one layer.
    """

    __slots__ = ("_items",)

    def __init__(self, mapping: Mapping[str, Any] | None = None, /, **entries: Any) -> None:
        _tell_jax_once_imported()
        try:
            items = dict({} if mapping is None else mapping, **entries)
        except (TypeError, ValueError):  # (dict's own: "not iterable", "sequence element #0 has length 1")
            raise LarsMultiTypeError(
                f"mapping: expected a mapping of names to arrays (or (name, array) pairs), "
                f"got {type_name(mapping)}"
            ) from None
        _check_keys(items)
        object.__setattr__(
            self,
            "_items",
            {k: Container(v) if isinstance(v, dict) else v for k, v in items.items()},
        )

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __setitem__(self, key: str, value: Any) -> None:
        _check_keys((key,))
        self._items[key] = Container(value) if isinstance(value, dict) else value

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails. Dunder names (``__deepcopy__``,
        # ``__array__``, ...) are never keys, and while ``_items`` is unset (an
        # instance made by pickle or copy, before ``__setstate__``) there are no
        # keys at all: neither may recurse into ``self._items``.
        if key.startswith("__") and key.endswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        try:
            items = object.__getattribute__(self, "_items")
        except AttributeError:
            raise AttributeError(f"Container has no key {key!r}") from None
        try:
            return items[key]
        except KeyError:
            raise AttributeError(f"Container has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if hasattr(type(self), key):  # (stored as a key, it would read back as the method)
            raise AttributeError(
                f"Container.{key} is a method, not a key: set the key with container[{key!r}] = value"
            )
        self[key] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    # pickle, copy.copy and copy.deepcopy: an empty Container, then its items as
    # the state. copy.copy passes the state as is (the leaves are shared, the
    # mapping is copied by __setstate__); copy.deepcopy and pickle copy the
    # state, leaves and nested Containers included, memo and cycles handled.
    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (), self._items)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise LarsMultiTypeError(f"Container state: expected dict, got {type_name(state)}")
        _check_keys(state)
        _tell_jax_once_imported()  # (unpickled: its JAX arrays imported JAX after __init__ ran)
        object.__setattr__(self, "_items", dict(state))

    # Arrays have no single truth value, so Containers compare by identity.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def to_dict(self) -> dict[str, Any]:
        """The same tree as plain nested dicts (the leaves are not copied)."""
        return {k: v.to_dict() if isinstance(v, Container) else v for k, v in self._items.items()}

    def __repr__(self) -> str:
        if not self._items:
            return "{}"
        lines = []
        for key, value in self._items.items():
            text = repr(value).replace("\n", "\n    ")
            lines.append(f"    {key}: {text}")
        return "{\n" + ",\n".join(lines) + "\n}"

    @no_autograph
    def lars_update(
        self,
        dcdw: Any,
        lr: Any,
        /,
        *,
        decay_lambda: Any = 0,
        stop_gradients: Any = True,
        out: Container | None = None,
    ) -> Container:
        """Leaf-wise :func:`lars_multi.lars_update` with ``w=self``.

        ``dcdw``, ``lr``, ``decay_lambda`` and ``stop_gradients`` may each be a
        Container of the same keys or a single value broadcast to every leaf.
        """
        from ._lars import lars_update

        return lars_update(self, dcdw, lr, decay_lambda=decay_lambda, stop_gradients=stop_gradients, out=out)


def _check_keys(keys: Any) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise LarsMultiTypeError(f"Container keys: expected str, got {type_name(key)} {key!r}")


# Whether JAX has been told that Containers are pytrees (by its backend, as it loads).
_JAX_KNOWS_CONTAINERS = False


def _tell_jax_once_imported() -> None:
    """Register Containers with JAX where it is imported and not told yet."""
    if not _JAX_KNOWS_CONTAINERS and "jax" in sys.modules:
        _tell_jax()


def _tell_jax() -> None:
    """Load the JAX backend, which registers Containers as pytrees: then a Container
    passes through ``jax.jit`` and ``jax.tree_util`` before lars_multi first runs on JAX."""
    global _JAX_KNOWS_CONTAINERS
    _JAX_KNOWS_CONTAINERS = True
    from ._errors import BackendNotInstalledError
    from ._registry import get_backend

    with contextlib.suppress(BackendNotInstalledError):  # (a module named jax that is not JAX)
        get_backend("jax")
