"""Throughput accounting: device peaks by kind, tokens per example, MFU arithmetic."""

import pytest

from experiments.pretrain import get_config
from wallwm_jax.models.flops import train_step_flops
from wallwm_jax.throughput import device_peak, step_flops, throughput, tokens_per_example


@pytest.mark.parametrize("kind,peak,hbm", [
    ("NVIDIA H100 80GB HBM3", 989e12, 80.0), ("NVIDIA H200", 989e12, 141.0),
    ("NVIDIA A100-SXM4-80GB", 312e12, 80.0), ("TPU v4", 275e12, 32.0),
    ("TPU v5 lite", 197e12, 16.0), ("TPU v5e", 197e12, 16.0), ("TPU v5", 459e12, 95.0),
    ("TPU v5p", 459e12, 95.0), ("TPU v6 lite", 918e12, 32.0), ("cpu", None, None)])
def test_device_peak_by_kind(kind, peak, hbm):
    assert device_peak(kind) == (peak, hbm)


def test_tokens_flops_and_mfu():
    config = get_config("size=tiny")
    config.data.image_size = 32  # patch 8: 16 patches
    assert tokens_per_example(config) == 16 + 32 + 32 + 32
    flops = step_flops(config, 8)
    assert flops == train_step_flops(config.model, 8, instruction_len=32, caption_len=32) > 0

    cpu = throughput(config, 0.5, num_devices=8, device_kind="cpu", batch_size=8)
    assert cpu == {"examples_per_s": 16.0, "tokens_per_s": 16.0 * 112,
                   "model_flops_per_s": flops / 0.5}
    tpu = throughput(config, 0.5, num_devices=8, device_kind="TPU v5 lite", batch_size=8)
    assert tpu["mfu"] == pytest.approx(flops / (0.5 * 8 * 197e12))
