"""Self-contained export bundle for downstream use: safetensors weights, config, norm stats,
tokenizer and a model card, loadable without Orbax (docs/deploy.md).

Layout of an export directory:
    model.safetensors  the parameters, flat names "vit/embedding/kernel" (pytree path joined
                       with "/"), float32 or bfloat16; metadata {"format": "wallwm_jax"}
    config.json        the full training config (model, data fields the policy needs)
    norm_stats.json    per-dimension action/state statistics (the first embodiment's)
    tokenizer.model    the SentencePiece model
    embodiments.json   every robot trained on: {name: {embodiment, norm_stats}}
    README.md          model card: data, steps, modes, cameras, sizes, evaluation results
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np

from wallwm_jax import bundle
from wallwm_jax import checkpoint as ckpt
from wallwm_jax.bundle import (  # noqa: F401  (re-exported: what users import from export)
    REQUIRED,
    WEIGHTS_FILE,
    load_bundle,
    load_params,
    read_config,
)
from wallwm_jax.tree_names import flat_names, unflatten  # noqa: F401  (re-exported)

DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}


# -- modes ------------------------------------------------------------------------------------
def trained_mode(config: ml_collections.ConfigDict) -> str:
    """The mode a config trains: caption slots 0 -> chunk, 1 -> event, >= 2 -> unified."""
    slots = int(config.model.max_captions)
    return "chunk" if slots == 0 else "event" if slots == 1 else "unified"


def runnable_modes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Modes a policy trained with `config` can run: its own, and event mode for a unified
    policy (one given caption, the degenerate case of Staircase Decoding)."""
    mode = trained_mode(config)
    return ("unified", "event") if mode == "unified" else (mode,)


# -- writing ----------------------------------------------------------------------------------
def export_bundle(export_dir: str, params: Any, config: ml_collections.ConfigDict,
                  norm_stats: dict[str, Any], tokenizer_path: str, *,
                  dtype: str = "float32", step: int | None = None,
                  evaluations: list[dict[str, Any]] | None = None,
                  embodiments: list[tuple[Any, dict[str, Any]]] | None = None) -> str:
    """Write the bundle atomically (tmp dir + rename); returns the export directory.

    `dtype` (float32 | bfloat16) is the stored weight type; `step` and `evaluations`
    (summaries of results.json files) go into the model card; `embodiments` [(embodiment,
    its norm stats)] (a run's `pipeline.embodiments`) into embodiments.json.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    from safetensors import serialize_file

    export_dir = os.path.abspath(export_dir)
    tmp = export_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np_dtype = DTYPES[dtype]
    tensors = {}
    for name, leaf in flat_names(params).items():
        array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)).astype(np_dtype))
        tensors[name] = {"dtype": dtype, "shape": list(array.shape), "data": array.tobytes()}
    serialize_file(tensors, os.path.join(tmp, WEIGHTS_FILE),
                   metadata={"format": "wallwm_jax", "dtype": dtype})
    bundle.write_files(tmp, bundle.asset_files(config, norm_stats, tokenizer_path,
                                               embodiments))
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(model_card(config, flat_names(params), dtype, step, evaluations or [],
                           [e for e, _ in embodiments or ()]))
    old = export_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(export_dir):
        os.replace(export_dir, old)
    os.replace(tmp, export_dir)
    shutil.rmtree(old, ignore_errors=True)
    return export_dir


def model_card(config: ml_collections.ConfigDict, flat: dict[str, Any], dtype: str,
               step: int | None, evaluations: list[dict[str, Any]],
               embodiments: list[Any] = ()) -> str:
    """The export's README.md: what the weights were trained on and how to run them."""
    d, m = config.data, config.model
    data = [str(p) for p, _ in (d.get("mixture") or ())] or [str(d.get("data_dir", ""))]
    n_params = sum(int(np.prod(x.shape)) for x in flat.values())
    lines = [
        "# WALL-WM export", "",
        f"- Model: size `{config.get('size', '?')}`, {n_params:,} parameters, stored as {dtype} "
        f"in `{WEIGHTS_FILE}` ({len(flat)} tensors, names like `{next(iter(flat))}`).",
        f"- Training data: {', '.join(data)}; "
        f"{'step ' + str(step) if step is not None else 'final params'} of "
        f"{config.get('total_steps', '?')} steps, batch {config.get('batch_size', '?')}.",
        f"- Modes: trained in {trained_mode(config)} mode; runs "
        f"{', '.join(runnable_modes(config))}.",
        f"- Cameras: {', '.join(d.get('cameras', ('image',)))} "
        f"({d.image_size}x{d.image_size} RGB uint8; the first is `observation/image`).",
        f"- State size {m.state_dim}, action size {m.action_dim}, chunk {d.max_event_len} "
        f"steps, normalisation `{d.norm_mode}` (stats in norm_stats.json).",
        "- State: " + ("privileged simulator state (hand xyz, gripper, object xyz, goal xyz: "
                       "positions only a simulator knows; `data.privileged_state`)"
                       if d.get("privileged_state", False) else "agent state") + ".", "",
        *(["- Embodiments (embodiments.json; pick one with `embodiment=NAME` / "
           "`--embodiment NAME`): " + "; ".join(
               f"`{e.name}` ({e.state_dim}-D state, {e.action_dim}-D {e.action_space} actions, "
               f"cameras {', '.join(e.cameras)})" for e in embodiments) + "."]
          if embodiments else []),
        "Load: `wallwm_jax.policy.load_policy(DIR)`; serve: "
        "`python -m wallwm_jax.serve --policy DIR --port 8000`.", "",
        "## Evaluation", "",
    ]
    if not evaluations:
        lines.append("No evaluation results were found next to the checkpoint.")
    for ev in evaluations:
        lines.append(f"- {ev['file']}: suite {ev['suite']}, mode {ev['mode']}, success "
                     f"{ev['success']:.0%} ({ev['successes']}/{ev['n']} episodes)")
    return "\n".join(lines) + "\n"


def find_evaluations(workdir: str) -> list[dict[str, Any]]:
    """Summaries of the results.json files under a run's workdir (closed-loop evals)."""
    out = []
    for path in sorted(glob.glob(os.path.join(workdir, "**", "results.json"), recursive=True)):
        try:
            with open(path) as f:
                res = json.load(f)
            overall = res["summary"]["overall"]
            out.append({"file": os.path.relpath(path, workdir), "suite": res.get("suite"),
                        "mode": res.get("mode"), "success": float(overall["success"]),
                        "successes": int(overall["successes"]), "n": int(overall["n"])})
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an evaluation results file
    return out


# -- reading a checkpoint ---------------------------------------------------------------------
def read_checkpoint(checkpoint_dir: str, step: int | None = None
                    ) -> tuple[Any, ml_collections.ConfigDict, dict[str, Any], str]:
    """(params, config, norm_stats, tokenizer_path) of a training checkpoint step (latest
    finished when `step` is None), params on this process's device; the tokenizer path is
    the file in the step's assets."""
    step = ckpt.resolve_step(checkpoint_dir, step)
    assets = ckpt.read_assets(checkpoint_dir, step)
    params = ckpt.restore_params(checkpoint_dir, bundle.abstract_params(assets.config), step)
    return params, assets.config, assets.norm_stats, assets.tokenizer_path


def export_from_checkpoint(checkpoint_dir: str, export_dir: str, step: int | None = None, *,
                           dtype: str = "float32") -> str:
    """Turn a training checkpoint (params + assets items) into an export bundle; the model
    card lists the evaluation results found in the run's workdir (the checkpoint dir's
    parent)."""
    step = ckpt.resolve_step(checkpoint_dir, step)
    params, config, norm_stats, tokenizer_path = read_checkpoint(checkpoint_dir, step)
    workdir = os.path.dirname(os.path.abspath(checkpoint_dir).rstrip("/"))
    embodiments = ckpt.read_assets(checkpoint_dir, step).embodiment_list()
    return export_bundle(export_dir, params, config, norm_stats, tokenizer_path,
                         dtype=dtype, step=step, evaluations=find_evaluations(workdir),
                         embodiments=embodiments)


def main(argv: list[str]) -> None:
    """`python -m wallwm_jax.export --checkpoint_dir RUN/checkpoints --out EXPORT
    [--step N] [--dtype bfloat16|float32]`: print the export directory."""
    from absl import flags

    from wallwm_jax import cli

    fl = flags.FLAGS
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    if not os.path.isdir(fl.checkpoint_dir):
        cli.fail(f"--checkpoint_dir {fl.checkpoint_dir}: no such directory")
    print(export_from_checkpoint(fl.checkpoint_dir, fl.out, fl.step, dtype=fl.dtype))


if __name__ == "__main__":
    from absl import flags

    from wallwm_jax import cli

    flags.DEFINE_string("checkpoint_dir", None, "Training checkpoint directory (RUN/checkpoints).")
    flags.DEFINE_string("out", None, "Export directory to write.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest finished).")
    flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Stored weight dtype.")
    flags.mark_flags_as_required(["checkpoint_dir", "out"])
    cli.run(main)
