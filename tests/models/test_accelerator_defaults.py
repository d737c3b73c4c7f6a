"""dtype/attention 'auto' resolve per target platform: bf16 + cuDNN flash on GPU where it
applies (head_dim limit by GPU generation, as the installed JAX checks it), bf16 + XLA on TPU,
float32 + XLA on CPU, decided without the hardware; the train step traced for a TPU target on
CPU devices (an AOT compile) runs its matmuls in bf16."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments.pretrain import get_config
from wallwm_jax.models.layers import (
    Target,
    compute_dtype,
    cudnn_max_head_dim,
    resolve_attention,
    target_devices,
)
from wallwm_jax.train_step import make_train_step, resolved_precision

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


@pytest.mark.parametrize("platform, dtype", [("gpu", BF16), ("cuda", BF16), ("tpu", BF16),
                                             ("cpu", F32)])
def test_auto_dtype(platform, dtype):
    assert compute_dtype("auto", platform) == dtype
    assert compute_dtype("float32", platform) == F32  # an explicit dtype is kept


@pytest.mark.parametrize("platform, dtype, head_dim, want", [
    ("gpu", BF16, 64, "cudnn"), ("gpu", jnp.float16, 128, "cudnn"),
    ("gpu", F32, 64, "xla"),  # cuDNN flash needs half precision
    ("gpu", BF16, 256, "xla"), ("gpu", BF16, 36, "xla"),  # unknown GPU: <= 128, 8 | H
    ("tpu", BF16, 64, "xla"), ("cpu", F32, 64, "xla")])
def test_auto_attention(platform, dtype, head_dim, want):
    assert resolve_attention("auto", dtype, head_dim, platform) == want


# (device_kind as JAX reports it, head_dim, expected): cuDNN flash takes head_dim <= 256 from
# Hopper (sm90) on and <= 128 on Ampere/Ada; nothing before Ampere.
@pytest.mark.parametrize("kind, head_dim, want", [
    ("NVIDIA H100 80GB HBM3", 256, "cudnn"), ("NVIDIA H200", 256, "cudnn"),
    ("NVIDIA GH200 480GB", 256, "cudnn"), ("NVIDIA B200", 256, "cudnn"),
    ("NVIDIA H100 80GB HBM3", 264, "xla"), ("NVIDIA H100 80GB HBM3", 72, "cudnn"),
    ("NVIDIA H100 80GB HBM3", 36, "xla"),
    ("NVIDIA A100-SXM4-80GB", 128, "cudnn"), ("NVIDIA A100-SXM4-80GB", 256, "xla"),
    ("NVIDIA L4", 128, "cudnn"), ("NVIDIA L4", 256, "xla"), ("NVIDIA A10G", 256, "xla"),
    ("Tesla V100-SXM2-16GB", 64, "xla"), ("Tesla T4", 64, "xla")])
def test_cudnn_head_dim_by_gpu(kind, head_dim, want):
    assert resolve_attention("auto", BF16, head_dim, "gpu", kind) == want
    # Outside a mesh the target is set by `target_devices` (or the first JAX device).
    with target_devices(Target("gpu", kind)):
        assert resolve_attention("auto", BF16, head_dim) == want
        assert compute_dtype("auto") == BF16


def test_cudnn_limits_follow_installed_jax():
    """The table's 256/128 are the limits in the installed JAX's cuDNN check."""
    import inspect

    from jax._src.cudnn import fused_attention_stablehlo as fa

    src = inspect.getsource(fa.check_is_flash_attention)
    assert "H_max = 256 if is_hopper_or_later else 128" in src
    assert cudnn_max_head_dim("NVIDIA H100 80GB HBM3") == 256
    assert cudnn_max_head_dim("NVIDIA A100-SXM4-40GB") == 128


def _dot_operand_dtypes(stablehlo: str) -> list[str]:
    """Element types of the lhs of every dot_general in a lowered module's text."""
    return re.findall(r"stablehlo\.dot_general .*?: \(tensor<(?:\d+x)*(\w+)>", stablehlo)


def test_tpu_target_traces_bf16_on_cpu_devices():
    """What an AOT compile for TPU lowers (train step on 8 CPU devices, target TPU): the
    layers' matmuls take bf16 operands; the same step for CPU is all float32."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(8, 1, 1), ("data", "fsdp", "tensor"))
    lowered = {}
    for platform, batch in (("tpu", 8), ("cpu", 16)):  # jit's trace cache ignores the target
        config = get_config("size=tiny,mode=event")
        config.batch_size = batch
        step = make_train_step(config, mesh)
        with target_devices(Target(platform, "TPU v5" if platform == "tpu" else "cpu")):
            lowered[platform] = step.update_fn.lower(*step.abstract_inputs).as_text()
    tpu, cpu = _dot_operand_dtypes(lowered["tpu"]), _dot_operand_dtypes(lowered["cpu"])
    assert len(tpu) == len(cpu) > 20
    assert set(cpu) == {"f32"}
    # Only the float32 heads (action/duration/world outputs and their gradients) stay f32.
    assert tpu.count("bf16") > 0.8 * len(tpu), tpu


def test_explicit_and_unknown_attention():
    assert resolve_attention("xla", BF16, 64, "gpu") == "xla"
    assert resolve_attention("cudnn", F32, 64, "cpu") == "cudnn"  # forced: jax raises later
    with pytest.raises(ValueError, match="model.attention='flash'"):
        resolve_attention("flash", BF16, 64, "gpu")


def test_default_config_resolution():
    model = get_config("size=small").model
    assert model.dtype == "auto" and model.attention == "auto"
    assert resolved_precision(model, "gpu") == {"platform": "gpu", "dtype": "bfloat16",
                                                "attention": "cudnn"}
    assert resolved_precision(model, "cpu")["dtype"] == "float32"
