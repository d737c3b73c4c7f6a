"""WALL-WM on MetaWorld MT50 under the LeRobot protocol's observation, on 8 GPUs.

    experiments/mt50.py:size=small          (default; mode=unified)
    experiments/mt50.py:size=base
    experiments/mt50.py:size=small,mode=chunk   (the chunk-centric baseline, same budget)

The policy sees what the `mt50_lerobot` evaluation suite gives it and nothing else: one
224x224 `corner2` image, the 4-D agent state (hand xyz + gripper) and LeRobot's task
description as the instruction. No privileged simulator state: `mode=unified` decodes its own
event captions (Staircase Decoding), `mode=chunk` uses none; `mode=event` is refused because
its `oracle` planner reads the scripted expert's phase. Model sizes are experiments/pretrain.py's
(`small`: ~100M parameters, data parallel; `base`: pi0-scale, FSDP over the 8 GPUs); this file
only sets what MT50 on GPUs changes. Everything is in docs/mt50.md; the commands:

1. Data: all 50 tasks, 59 scripted-expert episodes per task (the builder keeps ~15% per task
   for val: 50 train + 9 val, as many training demonstrations as LeRobot's metaworld_mt50),
   224 px (= data.image_size, the size mt50_lerobot renders for this policy):

       python -m data_builders.metaworld_events --data_dir /data --config mt50 \\
           --episodes_per_task 59 --image_size 224 --camera_setup lerobot --workers 16
       # -> /data/metaworld_events/mt50-e59-i224-s0-viewlerobot/1.0.0

   `--camera_setup lerobot` renders corner2 as mt50_lerobot does (moved to LeRobot's
   (0.75, 0.075, 0.7) and flipped), so the policy trains on the view it is evaluated on.

2. Train (one host, 8 GPUs; re-running resumes):

       python -m wallwm_jax.train --config experiments/mt50.py:size=small \\
           --workdir /runs/mt50_small \\
           --config.data.data_dir=/data/metaworld_events/mt50-e59-i224-s0-viewlerobot/1.0.0

3. Evaluate (LeRobot's protocol, 10 episodes per task, per-group success):

       python -m wallwm_jax.evaluation --policy /runs/mt50_small/checkpoints --suite mt50_lerobot \\
           --workdir /runs/mt50_small/eval --workers 16

Compute (analytic FLOPs of `wallwm_jax.models.flops`, i.e. `throughput.step_flops`, x steps)
and per-device memory (`python -m wallwm_jax.aot`) are tabulated in docs/mt50.md.
"""

from __future__ import annotations

import ml_collections

from wallwm_jax.config_args import parse_config_arg

# What changes with the model size on 8 GPUs. Global batch = 8 GPUs x 32. `base` (~2.7B
# parameters; fp32 params, grads and AdamW moments ~43 GB) is sharded FSDP over the 8 GPUs and keeps
# only matmul outputs for the backward pass (AOT, 8 x H100: 174 GiB/device without remat,
# 59 GiB with dots_saveable, 14 GiB with full; docs/mt50.md); `small` fits replicated.
# `tiny` takes small's recipe: it exists for CPU smoke tests of this file.
_RECIPES = {
    "small": dict(batch_size=256, total_steps=30_000, learning_rate=3e-4, warmup_steps=1_000,
                  mesh=dict(data=-1, fsdp=1, tensor=1), remat_policy="none"),
    "base": dict(batch_size=256, total_steps=30_000, learning_rate=1e-4, warmup_steps=1_000,
                 mesh=dict(data=1, fsdp=-1, tensor=1), remat_policy="dots_saveable"),
}
_RECIPES["tiny"] = _RECIPES["small"]

IMAGE_SIZE = 224  # the policy's input; mt50_lerobot renders at it (LeRobot's own is 480)
SUITE = "mt50_lerobot"
MODES = ("unified", "chunk")  # no privileged state: event mode's oracle planner reads it


def _parse_arg(arg: str | None) -> dict[str, str]:
    """The `size`/`mode` switches, refused with why where MT50 on GPUs has no recipe."""
    out = parse_config_arg(arg, {"size": "small", "mode": "unified"})
    if out["size"] not in _RECIPES:
        raise ValueError(f"size={out['size']!r}: experiments/mt50.py has recipes for "
                         f"{sorted(_RECIPES)}")
    if out["mode"] not in MODES:
        raise ValueError(f"mode={out['mode']!r}: the LeRobot protocol allows no privileged "
                         f"simulator state, so mode is one of {MODES} (event mode's oracle "
                         f"planner reads the expert's phase)")
    return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """experiments/pretrain.py's config for `size`/`mode`, set up for MT50 on 8 GPUs."""
    from experiments.pretrain import get_config as pretrain_config

    args = _parse_arg(arg)
    recipe = _RECIPES[args["size"]]
    config = pretrain_config(f"size={args['size']},mode={args['mode']}")

    config.total_steps = recipe["total_steps"]
    config.batch_size = recipe["batch_size"]
    config.log_every_steps = 50
    config.eval_every_steps = 2_000  # offline eval on the val split (action error, duration)

    # The observation mt50_lerobot provides: one corner2 image, 4-D agent state.
    config.data.builder_config = "mt50"
    # On the command line: <builder --data_dir>/metaworld_events/mt50-e59-i224-s0-viewlerobot/1.0.0
    config.data.data_dir = ""
    config.data.image_size = IMAGE_SIZE  # model.image_size follows (a reference)
    config.data.cameras = ("image",)
    config.model.cameras = 1
    config.model.state_dim = 4
    config.model.action_dim = 4
    config.data.num_workers = 8  # Grain worker processes decoding PNGs and augmenting

    # bf16 compute (params stay fp32); cuDNN flash attention where the head size allows it
    # (small's 64; base's backbone head_dim 256 falls back to XLA's attention).
    config.model.dtype = "bfloat16"
    config.model.attention = "auto"
    config.model.remat_policy = recipe["remat_policy"]

    # Linear warmup, cosine decay to 10% (wallwm_jax.optim.factory), AdamW.
    config.optimizer.learning_rate = recipe["learning_rate"]
    config.optimizer.warmup_steps = recipe["warmup_steps"]
    config.optimizer.weight_decay = 1e-4

    config.mesh = ml_collections.ConfigDict(recipe["mesh"])

    config.checkpoint.every_steps = 1_000
    config.checkpoint.keep = 3
    config.checkpoint.keep_period = 10_000  # keeps steps 10k, 20k, 30k for later evaluation
    config.checkpoint.async_save = True

    # Closed loop in training: the whole MT50 protocol at 2 episodes per task every 10k steps
    # (and at the end); the reported figure is the separate 10-episode run (docstring, 3.).
    config.eval.closed_loop = ml_collections.ConfigDict(dict(
        suite=SUITE, tasks=(), episodes_per_task=2, every_steps=10_000))
    return config
