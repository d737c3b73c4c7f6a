"""Names of pytree leaves: one spelling ("vit/embedding/kernel") for every place that turns a
parameter path into a string (export tensor names, optimizer routing, logs, error messages)."""

from __future__ import annotations

from typing import Any

import jax


def path_name(path: Any, separator: str = "/") -> str:
    """A key path (from `jax.tree_util.tree_*_with_path`) as "a/b/c": dict keys, attribute
    names and sequence indices joined by `separator`."""
    return separator.join(_key_name(k) for k in path)


def _key_name(key: Any) -> str:
    for field in ("key", "name", "idx"):
        if hasattr(key, field):
            return str(getattr(key, field))
    return str(key)


def flat_names(tree: Any) -> dict[str, Any]:
    """{"a/b/kernel": leaf} in tree order."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a/b/kernel": leaf} -> nested dicts (the inverse of `flat_names` for dict trees)."""
    tree: dict[str, Any] = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree
