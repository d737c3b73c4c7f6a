"""Params-only export bundle for downstream use: weights + config + norm stats + tokenizer.

Layout of an export directory:
    params/            Orbax (OCDBT) checkpoint of the parameter pytree, float32
    config.json        the full training config (model, data fields the policy needs)
    norm_stats.json    per-dimension action/state statistics
    tokenizer.model    the SentencePiece model
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from wallwm_jax.data import statistics
from wallwm_jax.models import wallwm

_REQUIRED = ("params", "config.json", "norm_stats.json", "tokenizer.model")


def export_bundle(export_dir: str, params: Any, config: ml_collections.ConfigDict,
                  norm_stats: dict[str, Any], tokenizer_path: str) -> str:
    """Write the bundle atomically (tmp dir + rename); returns the export directory."""
    export_dir = os.path.abspath(export_dir)
    tmp = export_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    host_params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(tmp, "params"), host_params)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    statistics.save_norm_stats(os.path.join(tmp, "norm_stats.json"), norm_stats)
    shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.model"))
    shutil.rmtree(export_dir, ignore_errors=True)
    os.replace(tmp, export_dir)
    return export_dir


def load_bundle(export_dir: str) -> tuple[Any, ml_collections.ConfigDict, dict[str, Any], str]:
    """Read (params, config, norm_stats, tokenizer_path) back from an export directory."""
    missing = [n for n in _REQUIRED if not os.path.exists(os.path.join(export_dir, n))]
    if missing:
        raise FileNotFoundError(f"export {export_dir} is incomplete: missing {missing}; "
                                f"expected {list(_REQUIRED)}")
    with open(os.path.join(export_dir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    abstract = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(os.path.abspath(export_dir), "params"),
                                      abstract)
    norm_stats = statistics.load_norm_stats(export_dir)
    return params, config, norm_stats, os.path.join(export_dir, "tokenizer.model")
