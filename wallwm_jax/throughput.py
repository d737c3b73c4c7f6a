"""Throughput accounting shared by the loop, `aot.py` and the benchmarks: tokens per example,
analytic FLOPs per step, and per-device peak FLOP/s and HBM by `device.device_kind`."""

from __future__ import annotations

import ml_collections

from wallwm_jax.models.flops import train_step_flops

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
