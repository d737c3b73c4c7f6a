"""tree_names: the one parameter-path spelling, and its inverse."""

import flax.struct
import jax
import numpy as np

from wallwm_jax.tree_names import flat_names, path_name, unflatten


@flax.struct.dataclass
class _Pair:
    first: np.ndarray
    second: np.ndarray


def test_flat_names_round_trip_nested_dicts():
    tree = {"vit": {"embedding": {"kernel": np.zeros(2)}}, "head": {"bias": np.ones(3)}}
    flat = flat_names(tree)
    assert list(flat) == ["head/bias", "vit/embedding/kernel"]
    assert jax.tree.structure(unflatten(flat)) == jax.tree.structure(tree)


def test_path_name_spells_attributes_and_indices():
    tree = {"obs": _Pair(first=np.zeros(1), second=[np.zeros(1), np.zeros(1)])}
    names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    assert names == ["obs/first", "obs/second/0", "obs/second/1"]
    assert path_name(jax.tree_util.tree_leaves_with_path(tree)[0][0], ".") == "obs.first"
