"""Small building blocks shared by the ViT and the decoder, all with logical axis names.

Params are float32; `dtype` is the compute dtype. Logical names used here: embed, mlp,
heads, kv_heads, head_dim, vocab, patch, layers (added by nn.scan), expert_embed, expert_mlp.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from wallwm_jax.models import splash
from wallwm_jax.models.masks import AttentionMask

Dtype = Any
Axes = tuple[str | None, ...]


def partitioned(init: Any, axes: Axes) -> Any:
    """Initializer whose params carry logical axis names (one per dim)."""
    return nn.with_logical_partitioning(init, axes)


def dense(features: int | Sequence[int], axes: Axes, *, dtype: Dtype,
          axis: int | Sequence[int] = -1, use_bias: bool = False, name: str | None = None,
          init: Any = None) -> nn.DenseGeneral:
    """DenseGeneral with kernel axes `axes` (inputs then outputs); the bias gets the outputs.

    `init` defaults to lecun_normal."""
    init = nn.initializers.lecun_normal() if init is None else init
    n_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features, axis=axis, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=partitioned(init, axes),
        bias_init=partitioned(nn.initializers.zeros_init(), axes[-n_out:]), name=name)


def rms_norm(axis_name: str, dtype: Dtype, name: str | None = None) -> nn.RMSNorm:
    return nn.RMSNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, name=name,
                      scale_init=partitioned(nn.initializers.ones_init(), (axis_name,)))


def layer_norm(axis_name: str, dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, name=name,
                        scale_init=partitioned(nn.initializers.ones_init(), (axis_name,)),
                        bias_init=partitioned(nn.initializers.zeros_init(), (axis_name,)))


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotary position embedding. x: [B, T, N, H] (H even), positions: int [B, T]."""
    half = x.shape[-1] // 2
    freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None, None] * freq  # [B, T, 1, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# Logical axes of residual-stream activations [B, T, width]; `config.sharding_rules` maps
# them (batch over data x fsdp) inside the jitted train step.
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")
_ACTIVATION_MESH: contextvars.ContextVar = contextvars.ContextVar("activation_mesh",
                                                                  default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Any, rules: Any):
    """While tracing under this context, `constrain_activation` pins residual streams to
    `mesh` by the logical `rules` (outside it, e.g. single-device inference, it is a no-op),
    and 'auto' dtype/attention resolve for the mesh's devices unless an enclosing
    `target_devices` names the target (an AOT compile for TPU on fake CPU devices)."""
    token = _ACTIVATION_MESH.set(mesh)
    target = _TARGET.get() or Target.of(mesh.devices.flat[0])
    try:
        with nn.logical_axis_rules(rules), target_devices(target):
            yield
    finally:
        _ACTIVATION_MESH.reset(token)


def constrain_activation(x: jax.Array) -> jax.Array:
    """Sharding constraint on a [B, T, width] activation (see `activation_sharding`)."""
    mesh = _ACTIVATION_MESH.get()
    if mesh is None:
        return x
    return nn.with_logical_constraint(x, ACTIVATION_AXES, mesh=mesh)

ATTENTION_IMPLS = {"auto": None, "xla": "xla", "cudnn": "cudnn", "splash": "splash"}

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str):
    """`config.model.remat_policy` (other than "none") -> a jax.checkpoint policy."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat_policy='{name}' is not one of "
                         f"{['none', *REMAT_POLICIES]}")
    return REMAT_POLICIES[name]


ACCELERATORS = ("gpu", "cuda", "tpu")  # platforms where bf16 compute is native


@dataclasses.dataclass(frozen=True)
class Target:
    """The devices a program is compiled for: platform ('cpu' | 'gpu' | 'tpu') and device
    kind ('NVIDIA H100 80GB HBM3', 'TPU v5'); the model's compute dtype and attention kernel
    follow it, not the host that traces the program (an AOT compile for TPU from a CPU host)."""

    platform: str
    device_kind: str = ""

    @classmethod
    def of(cls, device: Any) -> Target:
        return cls(str(device.platform).lower(), str(getattr(device, "device_kind", "")))


_TARGET: contextvars.ContextVar = contextvars.ContextVar("target", default=None)


@contextlib.contextmanager
def target_devices(target: Target | None):
    """While tracing under this context, 'auto' dtype/attention resolve for `target`. jit's
    trace cache does not see it: enter it before a function's first trace."""
    token = _TARGET.set(target)
    try:
        yield
    finally:
        _TARGET.reset(token)


def current_target() -> Target:
    """The target set by `target_devices` / `activation_sharding` (the train step's mesh);
    outside them a program runs on JAX's first device, so that is the target."""
    return _TARGET.get() or Target.of(jax.devices()[0])


def _platform(platform: str | None) -> str:
    return (platform or current_target().platform).lower()


def lowering_platform() -> str:
    """The platform the program being traced is compiled by: the activation mesh's devices
    (libtpu's compile-only TPU devices in an AOT compile), else JAX's default backend. It can
    differ from the target: a TPU target traced onto fake CPU devices lowers for CPU."""
    mesh = _ACTIVATION_MESH.get()
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return str(platform).lower()


def compute_dtype(name: str, platform: str | None = None) -> jnp.dtype:
    """`config.model.dtype` -> the compute dtype; "auto" is bfloat16 on GPU/TPU (fp32
    params, bf16 matmuls: the peak MFU is quoted against) and float32 on CPU, where bf16 is
    emulated and slower. `platform` defaults to the target's (`current_target`)."""
    if name == "auto":
        return jnp.dtype(jnp.bfloat16 if _platform(platform) in ACCELERATORS else jnp.float32)
    return jnp.dtype(name)


# NVIDIA device_kind substring (lower case, first match wins) -> CUDA compute capability.
CUDA_CAPABILITIES = (
    ("gb300", (10, 3)), ("b300", (10, 3)), ("gb200", (10, 0)), ("b200", (10, 0)),
    ("gh200", (9, 0)), ("h200", (9, 0)), ("h100", (9, 0)), ("h800", (9, 0)), ("h20", (9, 0)),
    ("a100", (8, 0)), ("a800", (8, 0)), ("a30", (8, 0)), ("a40", (8, 6)), ("a10", (8, 6)),
    ("l40", (8, 9)), ("l4", (8, 9)), ("rtx 6000 ada", (8, 9)), ("rtx 40", (8, 9)),
    ("rtx 30", (8, 6)), ("rtx a", (8, 6)), ("t4", (7, 5)), ("v100", (7, 0)), ("p100", (6, 0)))


def cuda_capability(device_kind: str) -> tuple[int, int] | None:
    """Compute capability of an NVIDIA GPU from its device kind; None when not in the table."""
    kind = device_kind.lower()
    return next((cap for key, cap in CUDA_CAPABILITIES if key in kind), None)


def cudnn_max_head_dim(device_kind: str) -> int:
    """Largest head_dim cuDNN flash attention takes (bf16/fp16) in the installed JAX
    (`jax/_src/cudnn/fused_attention_stablehlo.py`): 256 from Hopper (sm90) on, 128 on
    Ampere/Ada (sm80/86/89), 0 before Ampere (no flash kernel); 128 for an unknown GPU."""
    cap = cuda_capability(device_kind)
    if cap is None:
        return 128
    return 256 if cap >= (9, 0) else 128 if cap >= (8, 0) else 0


def resolve_attention(name: str, dtype: Any, head_dim: int, platform: str | None = None,
                      device_kind: str | None = None, *, q_len: int | None = None,
                      kv_len: int | None = None, lowering: str | None = None) -> str:
    """`config.model.attention` -> "xla" | "cudnn" | "splash". "auto" is cuDNN flash
    attention on an NVIDIA GPU when it applies (bf16/fp16 inputs, head_dim a multiple of 8
    and at most `cudnn_max_head_dim` for the GPU); on TPU it is splash (Pallas) when the
    program lowers for TPU (`lowering`, default `lowering_platform()`) and the lengths fill a
    block (`splash.splash_fits`; unknown lengths are taken to fit); else XLA's. `platform`
    and `device_kind` default to the target's (its kind also when only the same `platform`
    is given). (`jax.nn.dot_product_attention(implementation=None)` is always XLA's.)"""
    if name not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention='{name}' is not one of {sorted(ATTENTION_IMPLS)}")
    if name != "auto":
        return name
    target = current_target()
    if platform is None or (device_kind is None and _platform(platform) == target.platform):
        platform, device_kind = target.platform, target.device_kind
    if _platform(platform) == "tpu":
        on_tpu = (lowering or lowering_platform()).lower() == "tpu"
        fits = q_len is None or kv_len is None or splash.splash_fits(q_len, kv_len)
        return "splash" if on_tpu and fits else "xla"
    fits = (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
            and head_dim % 8 == 0 and head_dim <= cudnn_max_head_dim(device_kind or ""))
    return "cudnn" if _platform(platform) in ("gpu", "cuda") and fits else "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              mask: AttentionMask | jax.Array | None = None, *,
              implementation: str | None = None) -> jax.Array:
    """Softmax attention: implementation "xla" or "cudnn" (GPU only) via
    `jax.nn.dot_product_attention`, "splash" via the Pallas TPU kernel (`splash.py`;
    interpreted when the program does not lower for TPU); None is XLA's.

    q: [B, T, N, H]; k, v: [B, S, K, H] with N % K == 0 (GQA); mask: an `AttentionMask`,
    bool [B, T, S] or None. Returns [B, T, N, H].
    """
    if implementation == "splash":
        if mask is not None and not isinstance(mask, AttentionMask):
            mask = AttentionMask.of(mask)
        return _sharded_splash(q, k, v, mask)
    if isinstance(mask, AttentionMask):
        mask = mask.dense()
    return jax.nn.dot_product_attention(
        q, k, v, mask=None if mask is None else mask[:, None, :, :],
        implementation=implementation)


def _sharded_splash(q: jax.Array, k: jax.Array, v: jax.Array,
                    mask: AttentionMask | None) -> jax.Array:
    """Splash per device under the activation mesh (shard_map over the batch axes of the
    logical rules): the partitioner cannot split a Pallas call, it would gather instead."""
    interpret = lowering_platform() != "tpu"
    run = lambda q, k, v, mask: splash.splash_attention(q, k, v, mask, interpret=interpret)
    mesh = _ACTIVATION_MESH.get()
    if mesh is None or mesh.size == 1:
        return run(q, k, v, mask)
    batch = PartitionSpec(*nn.logical_to_mesh_axes(("activation_batch",)))
    mask_specs = None if mask is None else jax.tree.map(lambda _: batch, mask)
    return jax.shard_map(run, mesh=mesh, in_specs=(batch, batch, batch, mask_specs),
                         out_specs=batch, check_vma=False)(q, k, v, mask)


class GatedMLP(nn.Module):
    """GeGLU MLP: down(gelu(gate(x)) * up(x)). x: [B, T, width] -> [B, T, width]."""

    hidden: int
    embed_axis: str = "embed"
    mlp_axis: str = "mlp"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        axes = (self.embed_axis, self.mlp_axis)
        gate = dense(self.hidden, axes, dtype=self.dtype, name="gate")(x)
        up = dense(self.hidden, axes, dtype=self.dtype, name="up")(x)
        return dense(width, axes[::-1], dtype=self.dtype, name="down")(nn.gelu(gate) * up)


def sinusoidal_embedding(t: jax.Array, dim: int, min_period: float = 4e-3,
                         max_period: float = 4.0) -> jax.Array:
    """Flow time t: [B] in [0, 1] -> [B, dim] sin/cos features over log-spaced periods."""
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    angles = t.astype(jnp.float32)[:, None] * (2 * jnp.pi / period)[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
