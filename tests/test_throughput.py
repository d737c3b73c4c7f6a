"""Throughput accounting: device peaks by kind, tokens per example, MFU arithmetic, and
Muon's Newton–Schulz FLOPs (analytic, checked against the compiled update)."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments.pretrain import get_config
from wallwm_jax.hlo_stats import compiled_stats
from wallwm_jax.models.flops import train_step_flops
from wallwm_jax.throughput import (
    device_peak,
    newton_schulz_crossing_batch,
    newton_schulz_flops,
    newton_schulz_share,
    step_flops,
    throughput,
    tokens_per_example,
)
from wallwm_jax.train_step import make_train_step


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


def _muon_update_flops(config, mesh):
    """Matmul FLOPs per device of Muon's update compiled as the train step builds it."""
    step = make_train_step(config, mesh)
    update = jax.jit(lambda g, s, p, n: step.tx.update(g, s, p, total_steps=n)[0],
                     out_shardings=step.param_sharding)
    compiled = update.lower(step.abstract_params, step.abstract_state.opt_state,
                            step.abstract_params,
                            step.abstract_run_inputs.total_steps).compile()
    return compiled_stats(compiled).matmul_flops


def test_newton_schulz_flops_match_compiled_update():
    """The analytic Newton–Schulz count is what the compiled Muon update (its only matmuls)
    runs per device, spread over fsdp=8 (depth 8: stacks to share, small ones done whole)."""
    num_devices = 8
    config = get_config("size=tiny,mode=event")
    config.model.depth, config.batch_size, config.optimizer.name = 8, 8, "muon"
    mesh = Mesh(np.array(jax.devices()[:num_devices]).reshape(1, num_devices, 1),
                ("data", "fsdp", "tensor"))
    assert _muon_update_flops(config, mesh) == newton_schulz_flops(config, num_devices) > 0


def test_newton_schulz_share_and_crossing():
    config = get_config("size=small")
    ns = {n: newton_schulz_flops(config, n) for n in (1, 8, 64)}
    share = {b: newton_schulz_share(config, b, ns_flops=ns[1]) for b in (8, 64, 256)}
    assert share[8] == pytest.approx(8 * share[64]) and share[8] > 1.0  # NS dwarfs batch 8
    for n in (1, 8, 64):
        b = newton_schulz_crossing_batch(config, n, ns_flops=ns[n])
        assert b % n == 0
        assert (newton_schulz_share(config, b, n, ns_flops=ns[n]) < 0.02
                <= newton_schulz_share(config, b - n, n, ns_flops=ns[n]))
    # Spreading cuts per-device NS work (not below one matrix per shape per device).
    assert ns[64] < ns[8] < ns[1]
