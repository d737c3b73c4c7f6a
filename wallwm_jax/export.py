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

from wallwm_jax import checkpoint as ckpt
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
        config = ckpt.config_from_json(json.load(f))
    abstract = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    params = ckpt.restore_params(export_dir, abstract)  # checks shapes, names a mismatch
    norm_stats = statistics.load_norm_stats(export_dir)
    return params, config, norm_stats, os.path.join(export_dir, "tokenizer.model")


def read_checkpoint(checkpoint_dir: str, step: int | None = None
                    ) -> tuple[Any, ml_collections.ConfigDict, dict[str, Any], bytes]:
    """(params, config, norm_stats, tokenizer model bytes) of a training checkpoint step
    (latest finished when `step` is None), params on this process's device."""
    import base64

    assets = ckpt.read_assets(checkpoint_dir, step)
    config = ckpt.config_from_json(assets["config"])
    abstract = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    params = ckpt.restore_params(checkpoint_dir, abstract, step)
    return params, config, assets["norm_stats"], base64.b64decode(assets["tokenizer_model_b64"])


def export_from_checkpoint(checkpoint_dir: str, export_dir: str, step: int | None = None) -> str:
    """Turn a training checkpoint (params + assets items) into an export bundle."""
    import tempfile

    params, config, norm_stats, tokenizer = read_checkpoint(checkpoint_dir, step)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_path = os.path.join(tmp, "tokenizer.model")
        with open(tokenizer_path, "wb") as f:
            f.write(tokenizer)
        return export_bundle(export_dir, params, config, norm_stats, tokenizer_path)


def main() -> None:
    """`python -m wallwm_jax.export --checkpoint_dir RUN/checkpoints --out EXPORT_DIR`."""
    import argparse

    from absl import logging

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--checkpoint_dir", required=True)
    parser.add_argument("--out", required=True, help="export directory to write")
    parser.add_argument("--step", type=int, default=None, help="default: latest finished")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    print(export_from_checkpoint(args.checkpoint_dir, args.out, args.step))


if __name__ == "__main__":
    main()
