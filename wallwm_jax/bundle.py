"""The files that travel with a model's weights, in one format for export bundles and checkpoint
assets alike: `config.json`, `norm_stats.json`, `tokenizer.model`, `embodiments.json` (every
robot the model was trained on: its metadata and statistics; absent in bundles from before it)
(+ `model.safetensors` in an export). One writer and one reader, so a checkpoint step's
assets directory and an export directory are read the same way
(docs/deploy.md, docs/checkpoints.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from wallwm_jax.data import statistics
from wallwm_jax.data.embodiment import (
    EMBODIMENTS_FILE,
    Embodiment,
    embodiments_record,
    read_embodiments,
)
from wallwm_jax.models import wallwm
from wallwm_jax.tree_names import flat_names

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
WEIGHTS_FILE = "model.safetensors"
ASSET_FILES = (CONFIG_FILE, statistics.NORM_STATS_FILE, TOKENIZER_FILE)
REQUIRED = (WEIGHTS_FILE, *ASSET_FILES)  # an export bundle


@dataclasses.dataclass(frozen=True)
class Assets:
    """What must travel with the weights: the training config, per-dimension norm stats and
    the SentencePiece model (a file: the tokenizer is loaded from its path)."""

    config: ml_collections.ConfigDict
    norm_stats: dict[str, dict[str, np.ndarray]]
    tokenizer_path: str
    # {name: (embodiment, its norm stats)} in training order; {} for older bundles
    embodiments: dict[str, tuple[Embodiment, dict[str, dict[str, np.ndarray]]]] = \
        dataclasses.field(default_factory=dict)

    def embodiment_list(self) -> list[tuple[Embodiment, dict[str, dict[str, np.ndarray]]]]:
        return list(self.embodiments.values())


def asset_files(config: ml_collections.ConfigDict, norm_stats: dict[str, Any],
                tokenizer_path: str,
                embodiments: list[tuple[Embodiment, dict[str, Any]]] | None = None
                ) -> dict[str, bytes]:
    """{file name: contents} of the asset files, as `write_files` stores them; `embodiments`
    [(embodiment, its norm stats)], the first the primary (`norm_stats`), adds
    embodiments.json."""
    with open(tokenizer_path, "rb") as f:
        tokenizer = f.read()
    stats = {key: {name: np.asarray(v).tolist() for name, v in group.items()}
             for key, group in norm_stats.items()}
    return {CONFIG_FILE: config.to_json_best_effort(indent=2).encode(),
            statistics.NORM_STATS_FILE: json.dumps(stats, indent=1).encode(),
            TOKENIZER_FILE: tokenizer,
            **({EMBODIMENTS_FILE: json.dumps(embodiments_record(embodiments), indent=1).encode()}
               if embodiments else {})}


def write_files(directory: str, files: dict[str, bytes]) -> None:
    """Write `files` into `directory` (which exists); each file atomically (tmp + rename)."""
    for name, data in files.items():
        path = os.path.join(directory, name)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)


def read_assets(directory: str) -> Assets:
    """The assets stored in `directory`: an export bundle or a checkpoint step's `assets`.
    FileNotFoundError names every missing file."""
    missing = [n for n in ASSET_FILES if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise FileNotFoundError(f"{directory} is missing {', '.join(missing)} (the assets of "
                                f"an export or a checkpoint: {', '.join(ASSET_FILES)})")
    return Assets(config=read_config(directory),
                  norm_stats=statistics.load_norm_stats(directory),
                  tokenizer_path=os.path.join(directory, TOKENIZER_FILE),
                  embodiments=read_embodiments(directory))


def read_config(directory: str) -> ml_collections.ConfigDict:
    """The training config stored in `directory` (config.json)."""
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        return config_from_json(json.load(f))


def config_from_json(data: dict[str, Any]) -> ml_collections.ConfigDict:
    """Rebuild a config saved as JSON: JSON arrays become tuples again, as the configs in
    experiments/ write them, so a loaded config equals the saved one."""

    def tuples(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(tuples(v) for v in x)
        return x

    return ml_collections.ConfigDict(tuples(data))


def is_export_bundle(directory: str) -> bool:
    """Whether `directory` is an export bundle (weights and config; `load_bundle` names any
    other missing file)."""
    return all(os.path.isfile(os.path.join(directory, n)) for n in (WEIGHTS_FILE, CONFIG_FILE))


def load_params(export_dir: str, abstract_params: Any) -> Any:
    """Read model.safetensors into the tree (and dtypes) of `abstract_params`, leaves placed
    on `abstract_params`' shardings when they have one. ValueError names a missing, extra
    or mis-shaped tensor with both shapes."""
    from safetensors import safe_open

    path = os.path.join(export_dir, WEIGHTS_FILE)
    want = flat_names(abstract_params)
    out = {}
    with safe_open(path, framework="flax") as f:
        stored = set(f.keys())
        for name, spec in want.items():
            if name not in stored:
                raise ValueError(f"{path}: tensor {name!r} is missing (the model expects "
                                 f"shape {tuple(spec.shape)}); it was exported from a "
                                 f"different model")
            got = tuple(f.get_slice(name).get_shape())
            if got != tuple(spec.shape):
                raise ValueError(f"{path}: tensor {name!r} has shape {got}, the model "
                                 f"expects {tuple(spec.shape)}")
        extra = sorted(stored - set(want))
        if extra:
            raise ValueError(f"{path}: tensor {extra[0]!r} is not a parameter of this model "
                             f"({len(extra)} extra tensors)")
        for name, spec in want.items():
            value = f.get_tensor(name).astype(spec.dtype)
            sharding = getattr(spec, "sharding", None)
            out[name] = jax.device_put(value, sharding) if sharding is not None else value
    return jax.tree.unflatten(jax.tree.structure(abstract_params), list(out.values()))


def abstract_params(config: ml_collections.ConfigDict) -> Any:
    """Shapes and dtypes of the params of `config.model` (nothing is allocated)."""
    return wallwm.abstract_params(config.model)


def load_bundle(export_dir: str) -> tuple[Any, ml_collections.ConfigDict, dict[str, Any], str]:
    """Read (params, config, norm_stats, tokenizer_path) back from an export directory
    (params float32 on the default device, whatever dtype they were stored in)."""
    missing = [n for n in REQUIRED if not os.path.exists(os.path.join(export_dir, n))]
    if missing:
        raise FileNotFoundError(f"export {export_dir} is missing {', '.join(missing)} (an "
                                f"export holds {', '.join(REQUIRED)})")
    assets = read_assets(export_dir)
    params = load_params(export_dir, abstract_params(assets.config))
    return params, assets.config, assets.norm_stats, assets.tokenizer_path
