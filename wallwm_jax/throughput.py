"""Throughput accounting shared by the loop, `aot.py` and the benchmarks: tokens per example,
analytic FLOPs per step, and per-device peak FLOP/s and HBM by `device.device_kind`."""

from __future__ import annotations

import math
from collections import Counter

import jax
import ml_collections
from jax.sharding import PartitionSpec

from wallwm_jax.models import wallwm
from wallwm_jax.models.flops import train_step_flops
from wallwm_jax.optim import routing
from wallwm_jax.optim.factory import muon_settings
from wallwm_jax.sharding import ShardingRules

# device_kind substring (lower case, first match wins) -> (dense bf16 peak FLOP/s, HBM GiB).
# Vendor datasheet numbers per chip (TPU) or per GPU (SXM variants, dense, no sparsity).
DEVICE_PEAKS = (
    ("h200", 989e12, 141.0),
    ("h100", 989e12, 80.0),
    ("a100", 312e12, 80.0),
    ("tpu v6", 918e12, 32.0),  # v6e ("TPU v6 lite")
    ("tpu v5 lite", 197e12, 16.0),  # v5e
    ("tpu v5e", 197e12, 16.0),
    ("tpu v5", 459e12, 95.0),  # v5p reports "TPU v5"
    ("tpu v4", 275e12, 32.0),
)


def device_peak(device_kind: str) -> tuple[float | None, float | None]:
    """(peak bf16 FLOP/s, HBM GiB) of one device of `device_kind`; (None, None) if unknown
    (e.g. CPU), in which case MFU is not reported."""
    kind = device_kind.lower()
    for key, flops, hbm in DEVICE_PEAKS:
        if key in kind:
            return flops, hbm
    return None, None


def tokens_per_example(config: ml_collections.ConfigDict) -> int:
    """Sequence positions one training example puts through the model.

    tokens = image patches ((image_size / patch_size)² per camera) + instruction_len
    + max_captions x caption_len + max_event_len action steps, i.e. the length of the joint
    [image | instruction | captions | actions] sequence the decoder attends over (padding
    included, as it is computed).
    """
    m, d = config.model, config.data
    patches = (int(m.image_size) // int(m.patch_size)) ** 2 * int(m.get("cameras", 1))
    return (patches + int(d.instruction_len) + int(m.max_captions) * int(d.caption_len)
            + int(d.max_event_len))


def step_flops(config: ml_collections.ConfigDict, batch_size: int | None = None) -> float:
    """Analytic matmul FLOPs of one train step (forward + backward) for the global batch."""
    return train_step_flops(config.model, int(batch_size or config.batch_size),
                            instruction_len=int(config.data.instruction_len),
                            caption_len=int(config.data.caption_len),
                            num_captions=int(config.model.max_captions))


def throughput(config: ml_collections.ConfigDict, step_time: float, *, num_devices: int,
               device_kind: str, flops: float | None = None,
               batch_size: int | None = None) -> dict[str, float]:
    """examples/s, tokens/s, model FLOP/s and (when the device's peak is known) MFU =
    analytic FLOPs / (step time x devices x peak FLOP/s per device)."""
    batch_size = int(batch_size or config.batch_size)
    flops = step_flops(config, batch_size) if flops is None else flops
    out = {"examples_per_s": batch_size / step_time,
           "tokens_per_s": batch_size * tokens_per_example(config) / step_time,
           "model_flops_per_s": flops / step_time}
    peak, _ = device_peak(device_kind)
    if peak is not None:
        out["mfu"] = flops / (step_time * num_devices * peak)
    return out


def newton_schulz_flops(config: ml_collections.ConfigDict, num_devices: int = 1) -> float:
    """Newton–Schulz FLOPs per device of one Muon step, as the spread path splits them
    (`optim/spread.py`) on a mesh with `fsdp` = `num_devices`: matrices sharded over fsdp (by
    `config.sharding_rules`) are stacked by shape [m, n] (m <= n) and each device takes
    ceil(count / N) of a stack unless that is half of it or more (then every device does the
    whole stack); unsharded ones are done whole on every device. One matrix costs
    ns_steps x (4 m² n + 2 m³) (X Xᵀ, its square, and that times X). Independent of the batch."""
    settings = muon_settings(config.optimizer)
    rules = ShardingRules.from_config(config.sharding_rules)
    shapes = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    logical = wallwm.param_logical_axes(config.model)
    plans = routing.plan_params(shapes, settings["rules"], logical_axes=logical)
    specs = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, PartitionSpec))
    stacks: Counter = Counter()
    for plan, leaf, spec in zip(jax.tree.leaves(plans), jax.tree.leaves(shapes), specs,
                                strict=True):
        if plan.group == "muon":
            m, n = sorted(plan.fans(leaf.shape))
            spread = num_devices > 1 and any(
                "fsdp" in (rules.mesh_axes(name) or ()) and dim % num_devices == 0
                for name, dim in zip(spec, leaf.shape, strict=True))
            stacks[(m, n, spread)] += math.prod(leaf.shape[a] for a in plan.batch_axes)
    total = 0.0
    for (m, n, spread), count in stacks.items():
        per_device = -(-count // num_devices) if spread else count
        if 2 * per_device >= count:
            per_device = count
        total += per_device * settings["ns_steps"] * (4.0 * m * m * n + 2.0 * m ** 3)
    return total


def newton_schulz_share(config: ml_collections.ConfigDict, batch_size: int,
                        num_devices: int = 1, ns_flops: float | None = None) -> float:
    """Newton–Schulz FLOPs per device over the model's train-step FLOPs per device (the
    global `batch_size` split over `num_devices`): what Muon adds to a step's compute.
    `ns_flops`: `newton_schulz_flops(config, num_devices)` when already known."""
    ns = newton_schulz_flops(config, num_devices) if ns_flops is None else ns_flops
    return ns / (step_flops(config, batch_size) / num_devices)


def newton_schulz_crossing_batch(config: ml_collections.ConfigDict, num_devices: int = 1,
                                 share: float = 0.02, ns_flops: float | None = None) -> int:
    """Smallest global batch (a multiple of `num_devices`) at which `newton_schulz_share`
    falls under `share`: model FLOPs grow with the batch, Newton–Schulz's do not."""
    per_example = step_flops(config, 1)
    ns = newton_schulz_flops(config, num_devices) if ns_flops is None else ns_flops
    batch = int(ns * num_devices / (share * per_example)) + 1
    return -(-batch // num_devices) * num_devices
