"""Trees of layers: flattening the weights, pairing every other tree with them.

The weights ``w`` decide the structure: they are flattened once (with optree,
or with ``jax.tree_util`` on JAX so that every registered pytree works), giving
each layer a key path; the structure of a plain dict of arrays is kept from one
call to the next. Every other tree (``dcdw``, ``lr``, ``decay_lambda``,
``stop_gradients``, ``out``) is paired with the weights *by key* along those
paths: mappings (dict, OrderedDict, defaultdict, Container, a framework's own
registered ones; not other Mapping types) match whatever their key order, and only sequences match by
position. A single value (or a value at a prefix of the path) serves every
layer below it; ``None`` in a gradient tree means "no gradient".
"""

from __future__ import annotations

import collections
import contextlib
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import optree

from . import _registry
from ._container import Container
from ._errors import LarsMultiValueError, type_name
from ._registry import all_native, backend_of

NAMESPACE = "lars_multi"


def _flatten_container(container: Container) -> tuple[list[Any], tuple[str, ...], tuple[str, ...]]:
    """A Container's children are its values, keyed by their names, in its own order."""
    keys = tuple(container.keys())
    return [container[k] for k in keys], keys, keys


def _unflatten_container(keys: tuple[str, ...], children: Any) -> Container:
    return Container(dict(zip(keys, children)))


optree.register_pytree_node(
    Container,
    _flatten_container,  # type: ignore[arg-type]
    _unflatten_container,  # type: ignore[arg-type]
    namespace=NAMESPACE,
)


class Attribute(str):
    """A path entry that is an attribute (``module.weight``), not a key or index: a
    string equal to the attribute's name, so that a mask ``(path, array) -> bool``
    may compare entries with names whatever the node (``path[-1] == "bias"`` on an
    equinox module as on a dict), told apart from a key by its type."""

    @property
    def name(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"Attribute({str(self)!r})"


class FlatIndex(NamedTuple):
    """A path entry that is a child of a node known only by its position among the
    node's children (a JAX pytree registered without keys), written as JAX writes it."""

    position: int

    def __repr__(self) -> str:
        return f"<flat index {self.position}>"


class Path(NamedTuple):
    """``dcdw['a'][0]``, formatted only when an error message needs it."""

    arg: str
    entries: Sequence[Any]

    def __str__(self) -> str:
        return self.arg + "".join(
            f".{e.name}" if isinstance(e, Attribute) else f"[{e!r}]" for e in self.entries
        )


@dataclass(frozen=True)
class Flat:
    """A flattened tree of weights: its leaves, their key paths, and how to rebuild it."""

    leaves: list[Any]
    paths: list[tuple[Any, ...]]
    spec: Any
    flatten: Callable[[Any], tuple[list[Any], Any]]
    unflatten: Callable[[Any, list[Any]], Any]
    # A node's path entries, children and structure, one level down.
    children: Callable[[Any], tuple[list[Any], list[Any], Any]]
    arg: str = "w"  # the weights' argument, for error messages

    def rebuild(self, leaves: list[Any]) -> Any:
        return self.unflatten(self.spec, leaves)

    def leaves_of(self, value: Any) -> list[Any] | None:
        """``value``'s leaves, one per layer, where it has exactly the weights'
        nodes (mappings matched by key, whatever their order; None where a layer
        has nothing); else None."""
        leaves = None
        root = _root_type(self.spec)
        if root is None or type(value) is root:  # (else flatten_up_to's refusal prints every leaf)
            with contextlib.suppress(ValueError, TypeError):
                leaves = self.spec.flatten_up_to(value)
        if leaves is None:
            leaves = self._leaves_up_to(*self.flatten(value))
            if leaves is None:
                return None
        # A tree where the weights have a leaf is not their structure.
        if any(issubclass(t, _TREE_TYPES) for t in set(map(type, leaves))):
            return None
        return leaves

    def _leaves_up_to(self, leaves: list[Any], spec: Any) -> list[Any] | None:
        """The leaves of a tree of structure ``spec`` at the weights' leaves (optree's
        and JAX's ``flatten_up_to``: mappings by key, None where a layer has nothing),
        asked of a stand-in holding each leaf's place: where the structures differ at
        the root, their error prints every leaf of the tree (half a second for 161
        arrays: a tuple of gradients for a list of weights, as torch.autograd.grad
        gives them)."""
        try:
            stand_in = self.unflatten(spec, list(range(len(leaves))))
        except Exception:  # (a node that checks its children as it is made: left to the walk)
            return None
        try:
            places = self.spec.flatten_up_to(stand_in)
        except (ValueError, TypeError):
            return None
        if any(type(p) is not int for p in places if p is not None):  # (a subtree where a layer is)
            return None
        return [None if p is None else leaves[p] for p in places]


def _optree_flatten(tree: Any) -> tuple[list[Any], Any]:
    return optree.tree_flatten(tree, namespace=NAMESPACE)


def _optree_children(node: Any) -> tuple[list[Any], list[Any], Any]:
    paths, children, spec = optree.tree_flatten_with_path(
        node, is_leaf=lambda x: x is not node, none_is_leaf=True, namespace=NAMESPACE
    )
    return [path[0] for path in paths], children, spec


def flatten_optree(tree: Any) -> Flat:
    """``tree`` flattened by optree (dict, list, tuple, namedtuple, Container...).

    A plain dict of arrays keyed by strings, the commonest tree, is flattened once
    per sequence of keys: its structure and key paths are kept, and later dicts
    with those keys in that order take their values in optree's order (a fifth of
    the time on 2,000 arrays). Arrays of one framework are leaves to optree, so a
    whole flattening would give the same leaves and structure."""
    if type(tree) is dict and tree:
        keys = tuple(tree)
        if (
            list(map(type, keys)).count(str) == len(keys)  # (a str enum's member equals its string)
            and all_native(list(tree.values()))  # every value a leaf (to optree)
            and not _registry.is_compiling()  # (Dynamo traces optree's own calls)
        ):
            return _flatten_dict_of_arrays(keys, tree)
    return _flatten_anew(tree)


def _flatten_dict_of_arrays(keys: tuple[str, ...], tree: dict[str, Any]) -> Flat:
    """``tree`` (whose values are arrays) by the structure kept for ``keys``, its
    keys in insertion order; flattened by optree and kept, the first time."""
    known = _FLAT_DICTS.get(keys)
    if known is None:
        flat = _flatten_anew(tree)
        if len(_FLAT_DICTS) >= 16:
            _FLAT_DICTS.clear()
        _FLAT_DICTS[keys] = ([p[0] for p in flat.paths], flat.paths, flat.spec)
        return flat
    order, paths, spec = known
    leaves = list(map(tree.__getitem__, order))
    return Flat(leaves, paths, spec, _optree_flatten, optree.tree_unflatten, _optree_children)


def _flatten_anew(tree: Any) -> Flat:
    paths, leaves, spec = optree.tree_flatten_with_path(tree, namespace=NAMESPACE)
    return Flat(leaves, paths, spec, _optree_flatten, optree.tree_unflatten, _optree_children)


# Plain dicts of arrays flattened before, by their keys in insertion order (which
# optree's structure keeps): their keys in optree's order, key paths and structure.
_FLAT_DICTS: dict[tuple[str, ...], tuple[list[str], list[tuple[Any, ...]], Any]] = {}


def is_leaf(value: Any) -> bool:
    """Whether ``value`` ends a path: anything but a mapping, list or tuple."""
    return not _is_tree(value)


def leaves_like(
    arg: str, value: Any, w: Flat, *, broadcast: bool = True, over_empty: bool = False
) -> list[Any]:
    """``value``'s leaves paired with ``w``'s, one per layer.

    The same structure as ``w`` (same node types, same key order) pairs at
    once; any other is walked by key along ``w``'s paths. With ``broadcast``,
    a single value, or a value where ``w`` has a subtree, serves every layer
    below it. With ``over_empty``, values where ``w`` holds no layer (None, an
    empty tree, optax's ``MaskedNode``) are left unread (a mask made for a whole
    model); else they are refused (a gradient there would be dropped unseen).
    """
    if broadcast and is_single(value, w):
        return [value] * len(w.leaves)
    if not _registry.is_compiling():  # (optree cannot be traced on trees of numbers)
        leaves = w.leaves_of(value)
        if leaves is not None:
            return leaves
    walker = _Walker(arg, value, w, broadcast, over_empty)
    return [walker.select(path) for path in w.paths]


def present(leaves: Sequence[Any]) -> list[int]:
    """The indices of the leaves that are not None (gradients given), asked of the
    list at once where none is (types, not values: an array's == is elementwise)."""
    if not list(map(type, leaves)).count(type(None)):
        return list(range(len(leaves)))
    return [i for i, leaf in enumerate(leaves) if leaf is not None]


def is_single(value: Any, w: Flat) -> bool:
    """Whether ``value`` is one value, not a tree (a module is a tree to JAX)."""
    if not is_leaf(value) or isinstance(value, Container):
        return False
    if value is None or type(value) in (float, int, bool) or backend_of(value) is not None:
        return True
    if _registry.is_compiling():
        return True
    leaves, _ = w.flatten(value)
    return len(leaves) == 1 and leaves[0] is value


class _Walker:
    """Looks up ``value`` along the weights' key paths, checking that every
    mapping on the way has exactly the weights' keys and every sequence their length."""

    def __init__(self, arg: str, value: Any, w: Flat, broadcast: bool, over_empty: bool) -> None:
        self.arg, self.value, self.broadcast, self.w_arg = arg, value, broadcast, w.arg
        self.over_empty = over_empty
        self.flatten, self.children = w.flatten, w.children
        self.w_root = w.rebuild(w.leaves)  # the weights' nodes, to compare keys with
        self.checked: set[tuple[Any, ...]] = set()  # the key paths of the nodes checked (typed)
        # A registered node's children (and the weights' node's), by key path (typed), where
        # the two are one structure at that level: flattened once, as the node is checked.
        self.places: dict[tuple[Any, ...], tuple[tuple[Any, ...], list[Any], list[Any]]] = {}

    def select(self, path: tuple[Any, ...]) -> Any:
        node, w_node = self.value, self.w_root
        for depth, entry in enumerate(path):
            if self.broadcast and (node is None or (is_leaf(node) and not _is_node(node, entry, w_node))):
                return node
            self._check_node(node, w_node, path[:depth])
            try:
                node, w_node = self._children_at(node, w_node, entry, path[:depth])
            except (TypeError, AttributeError, LookupError):  # a node of its own kind, not walkable
                self._mismatch(
                    path[:depth], f"the structure of {Path(self.w_arg, path[:depth])}, got another"
                )
        if _is_tree(node) and not _is_tree(w_node):
            self._mismatch(path, f"a single array like {Path(self.w_arg, path)}, got a {type(node).__name__}")
        return node

    def _children_at(self, node: Any, w_node: Any, entry: Any, prefix: tuple[Any, ...]) -> tuple[Any, Any]:
        """The children of ``node`` and of the weights' ``w_node`` at ``entry``: by key,
        index or attribute, but a registered node's child at a position (optree's places,
        JAX's sequence and flattened keys; not a deque's index) by the node's own flattening,
        and only where ``node`` is ``w_node``'s structure at this level: a position need not
        index the object, and with other metadata the children need not pair by place (a
        node that leaves out its None slots: a gradient met another layer, or None, silently)."""
        positional = type(entry) is int or isinstance(entry, FlatIndex)
        if _is_tree(w_node) or not positional or type(w_node) is collections.deque:
            return _child(node, entry), _child(w_node, entry)
        places = self.places.get(_typed(prefix))  # (kept by _check_node, which the walk asked first)
        if places is None:
            self._mismatch(
                prefix,
                f"a {type(w_node).__name__} of the metadata of {Path(self.w_arg, prefix)} (its children "
                "pair by their place in it), got one of other metadata",
            )
        typed_entries, children, w_children = places
        if typed_entries.count((type(entry), entry)) != 1:
            self._mismatch(
                prefix, f"entries of {Path(self.w_arg, prefix)} that can be told apart, got {entry!r} twice"
            )
        place = typed_entries.index((type(entry), entry))
        return children[place], w_children[place]

    def _mismatch(self, prefix: Sequence[Any], detail: str) -> NoReturn:
        here = Path(self.arg, prefix)
        raise LarsMultiValueError(
            f"{self.arg}: expected the structure of {self.w_arg}{' (or a single value)' * self.broadcast}; "
            f"{here}: expected {detail}"
        )

    def _check_node(self, node: Any, w_node: Any, prefix: tuple[Any, ...]) -> None:
        if _typed(prefix) in self.checked:
            return
        w_here = Path(self.w_arg, prefix)
        if isinstance(w_node, Mapping):
            if not isinstance(node, Mapping):
                self._mismatch(prefix, f"a mapping with the keys of {w_here}, got {type(node).__name__}")
            missing = [k for k in w_node if k not in node]
            extra = [k for k in node if k not in w_node]
            if missing or extra:
                parts = [
                    f"{what} {_few(listed)}"
                    for what, listed in (("missing", missing), ("unexpected", extra))
                    if listed
                ]
                keys = f"{_few(list(w_node))}, got {_few(list(node))}"
                self._mismatch(prefix, f"the keys of {w_here}, {keys} ({'; '.join(parts)})")
        elif isinstance(w_node, list | tuple):
            if not isinstance(node, list | tuple) or len(node) != len(w_node):
                got = f"a {type(node).__name__} of {len(node)}" if _is_tree(node) else type(node).__name__
                self._mismatch(prefix, f"a sequence of {len(w_node)} like {w_here}, got {got}")
            fields, w_fields = getattr(node, "_fields", None), getattr(w_node, "_fields", None)
            if None not in (fields, w_fields) and fields != w_fields:  # namedtuples: the same names
                self._mismatch(prefix, f"the fields of {w_here}, {w_fields!r}, got {fields!r}")
        elif not _is_tree(w_node):  # a registered node (a module)
            if type(node) is not type(w_node):
                self._mismatch(prefix, f"a {type(w_node).__name__} like {w_here}, got {type(node).__name__}")
            leaves, w_leaves = len(self.flatten(node)[0]), len(self.flatten(w_node)[0])
            if leaves > w_leaves:
                detail = f"no more leaves than {w_here} ({w_leaves}; its None fields hold none)"
                self._mismatch(prefix, f"{detail}, got {leaves}")
            self._check_children(node, w_node, prefix)
        if not self.over_empty:
            self._check_no_layer(node, w_node, prefix)
        self.checked.add(_typed(prefix))

    def _check_children(self, node: Any, w_node: Any, prefix: tuple[Any, ...]) -> None:
        """A registered node of the weights' type, flattened one level with the weights':
        its children are kept for the walk where the two are one structure at this level
        (children at a position pair by place only then), and, as :meth:`_check_no_layer`
        checks a dict, child by child where they list the same entries, none may hold a
        value where the weights hold None (a gradient there was dropped unseen)."""
        entries, children, spec = self.children(node)
        w_entries, w_children, w_spec = self.children(w_node)
        if _equal(spec, w_spec):
            self.places[_typed(prefix)] = (_typed(w_entries), children, w_children)
        if self.over_empty or _typed(entries) != _typed(w_entries):
            return  # (another structure: the walk through it says so)
        for entry, child, w_child in zip(w_entries, children, w_children):
            if _holds_no_layer(w_child) and not _holds_no_layer(child):
                here = (*prefix, entry)
                self._mismatch(
                    here, f"no value where {Path(self.w_arg, here)} is None, got {type_name(child)}"
                )

    def _check_no_layer(self, node: Any, w_node: Any, prefix: tuple[Any, ...]) -> None:
        """Where ``w`` holds no layer (``None``, an empty dict), ``value`` must hold
        none either: a gradient there would meet no weight and be dropped unseen."""
        if not _is_tree(w_node):
            return
        entries = w_node.keys() if isinstance(w_node, Mapping) else range(len(w_node))
        for entry in entries:
            if _holds_no_layer(w_node[entry]) and not _holds_no_layer(node[entry]):
                here = (*prefix, entry)
                w_child = "None" if w_node[entry] is None else f"an empty {type(w_node[entry]).__name__}"
                self._mismatch(
                    here,
                    f"no value where {Path(self.w_arg, here)} is {w_child}, got {type_name(node[entry])}",
                )


def _holds_no_layer(value: Any) -> bool:
    """Whether ``value`` is None or a tree of nothing but None and empty trees."""
    if value is None:
        return True
    if not _is_tree(value):
        return False
    children = value.values() if isinstance(value, Mapping) else value
    return all(map(_holds_no_layer, children))


def _is_node(node: Any, entry: Any, w_node: Any) -> bool:
    """Whether ``node``, where ``w`` has the registered node ``w_node``, is such a node
    too, not one value for every layer below: it has the attribute ``entry`` (of a
    module; a number's ``real`` or an array's ``T`` does not count), or it is of ``w_node``'s type."""
    if isinstance(entry, Attribute) and not _is_value(node) and hasattr(node, entry.name):
        return True
    return type(node) is type(w_node)


def _typed(entries: Sequence[Any]) -> tuple[tuple[type, Any], ...]:
    """Path entries with their types: ``0`` and ``False``, or an attribute ``"w"`` and a
    key ``"w"``, are equal as Python compares them, but not the same entry."""
    return tuple((type(e), e) for e in entries)


def _root_type(spec: Any) -> type | None:
    """The type of a structure's root node (optree's ``type``, JAX's ``node_data``); None for a leaf."""
    if isinstance(spec, optree.PyTreeSpec):
        return spec.type  # type: ignore[no-any-return]
    data = spec.node_data()
    return None if data is None else data[0]  # type: ignore[no-any-return]


def _few(keys: list[Any], most: int = 12) -> str:
    """``keys`` as a message lists them: the first few of many (a tree of 50,000 layers
    made a message of a megabyte)."""
    if len(keys) <= most:
        return repr(keys)
    return "[" + ", ".join(map(repr, keys[: most - 2])) + f", ... ({len(keys):,} keys)]"


def _equal(spec: Any, w_spec: Any) -> bool:
    """Whether two structures are one (metadata whose ``==`` raises, a NumPy array's: not)."""
    try:
        return bool(spec == w_spec)
    except (ValueError, TypeError):
        return False


def _is_value(x: Any) -> bool:
    """Whether ``x`` is a number or an array: one value, whatever attributes it has."""
    return isinstance(x, numbers.Number) or backend_of(x) is not None


def _child(node: Any, entry: Any) -> Any:
    if isinstance(entry, Attribute):
        return getattr(node, entry.name)
    return node[entry]


_TREE_TYPES = (Mapping, list, tuple)


def _is_tree(value: Any) -> bool:
    return isinstance(value, _TREE_TYPES)
