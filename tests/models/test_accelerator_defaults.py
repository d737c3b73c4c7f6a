"""dtype/attention 'auto' resolve per platform: bf16 + cuDNN flash on GPU where it applies,
bf16 + XLA on TPU, float32 + XLA on CPU (decided without the hardware)."""

import jax.numpy as jnp
import pytest

from experiments.pretrain import get_config
from wallwm_jax.models.layers import compute_dtype, resolve_attention
from wallwm_jax.train_step import resolved_precision

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


@pytest.mark.parametrize("platform, dtype", [("gpu", BF16), ("cuda", BF16), ("tpu", BF16),
                                             ("cpu", F32)])
def test_auto_dtype(platform, dtype):
    assert compute_dtype("auto", platform) == dtype
    assert compute_dtype("float32", platform) == F32  # an explicit dtype is kept


@pytest.mark.parametrize("platform, dtype, head_dim, want", [
    ("gpu", BF16, 64, "cudnn"), ("gpu", jnp.float16, 128, "cudnn"),
    ("gpu", F32, 64, "xla"),  # cuDNN flash needs half precision
    ("gpu", BF16, 256, "xla"), ("gpu", BF16, 36, "xla"),  # head_dim it does not take
    ("tpu", BF16, 64, "xla"), ("cpu", F32, 64, "xla")])
def test_auto_attention(platform, dtype, head_dim, want):
    assert resolve_attention("auto", dtype, head_dim, platform) == want


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
