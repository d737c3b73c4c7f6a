"""Self-contained export bundle for downstream use: safetensors weights, config, norm stats,
tokenizer and a model card, loadable without Orbax (docs/deploy.md).

Layout of an export directory:
    model.safetensors  the parameters, flat names "vit/embedding/kernel" (pytree path joined
                       with "/"), float32 or bfloat16; metadata {"format": "wallwm_jax"}
    config.json        the full training config (model, data fields the policy needs)
    norm_stats.json    per-dimension action/state statistics
    tokenizer.model    the SentencePiece model
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

from wallwm_jax import checkpoint as ckpt
from wallwm_jax.data import statistics
from wallwm_jax.models import wallwm

WEIGHTS_FILE = "model.safetensors"
REQUIRED = (WEIGHTS_FILE, "config.json", "norm_stats.json", "tokenizer.model")
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


# -- flat parameter names ---------------------------------------------------------------------
def flat_names(params: Any) -> dict[str, Any]:
    """Parameter pytree (nested dicts) -> {"a/b/kernel": leaf}, in tree order."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        out["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a/b/kernel": leaf} -> nested dicts (inverse of `flat_names`)."""
    tree: dict[str, Any] = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


# -- writing ----------------------------------------------------------------------------------
def export_bundle(export_dir: str, params: Any, config: ml_collections.ConfigDict,
                  norm_stats: dict[str, Any], tokenizer_path: str, *,
                  dtype: str = "float32", step: int | None = None,
                  evaluations: list[dict[str, Any]] | None = None) -> str:
    """Write the bundle atomically (tmp dir + rename); returns the export directory.

    `dtype` (float32 | bfloat16) is the stored weight type; `step` and `evaluations`
    (summaries of results.json files) go into the model card.
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
    with open(os.path.join(tmp, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    statistics.save_norm_stats(os.path.join(tmp, "norm_stats.json"), norm_stats)
    shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.model"))
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(model_card(config, flat_names(params), dtype, step, evaluations or []))
    old = export_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(export_dir):
        os.replace(export_dir, old)
    os.replace(tmp, export_dir)
    shutil.rmtree(old, ignore_errors=True)
    return export_dir


def model_card(config: ml_collections.ConfigDict, flat: dict[str, Any], dtype: str,
               step: int | None, evaluations: list[dict[str, Any]]) -> str:
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


# -- reading ----------------------------------------------------------------------------------
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


def load_bundle(export_dir: str) -> tuple[Any, ml_collections.ConfigDict, dict[str, Any], str]:
    """Read (params, config, norm_stats, tokenizer_path) back from an export directory
    (params float32 on the default device, whatever dtype they were stored in)."""
    missing = [n for n in REQUIRED if not os.path.exists(os.path.join(export_dir, n))]
    if missing:
        raise FileNotFoundError(f"export {export_dir} is incomplete: missing {missing}; "
                                f"expected {list(REQUIRED)}")
    config = read_config(export_dir)
    abstract = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    params = load_params(export_dir, abstract)
    norm_stats = statistics.load_norm_stats(export_dir)
    return params, config, norm_stats, os.path.join(export_dir, "tokenizer.model")


def read_config(export_dir: str) -> ml_collections.ConfigDict:
    """The training config stored in an export (config.json)."""
    with open(os.path.join(export_dir, "config.json")) as f:
        return ckpt.config_from_json(json.load(f))


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


def export_from_checkpoint(checkpoint_dir: str, export_dir: str, step: int | None = None, *,
                           dtype: str = "float32") -> str:
    """Turn a training checkpoint (params + assets items) into an export bundle; the model
    card lists the evaluation results found in the run's workdir (the checkpoint dir's
    parent)."""
    import tempfile

    if step is None:  # finished saves are plain numbered dirs (Orbax renames them at the end)
        steps = [int(n) for n in os.listdir(checkpoint_dir) if n.isdigit()]
        step = max(steps) if steps else None
    params, config, norm_stats, tokenizer = read_checkpoint(checkpoint_dir, step)
    workdir = os.path.dirname(os.path.abspath(checkpoint_dir).rstrip("/"))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_path = os.path.join(tmp, "tokenizer.model")
        with open(tokenizer_path, "wb") as f:
            f.write(tokenizer)
        return export_bundle(export_dir, params, config, norm_stats, tokenizer_path,
                             dtype=dtype, step=step, evaluations=find_evaluations(workdir))


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
