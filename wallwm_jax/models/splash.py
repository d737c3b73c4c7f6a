"""TPU splash attention (Pallas) under the decoder's masks: the static structure goes to the
kernel as a block-sparse mask, per-example key validity as segment ids (docs/performance.md).

`interpret=True` runs the same kernel on CPU (tests); it is slow, a check and not a path.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wallwm_jax.models.masks import AttentionMask

# q and kv tile of every splash pass (forward, dq, dkv). Sequence lengths are padded up to a
# multiple of it; the kernel's lane width (128) is the smallest tile the TPU takes.
BLOCK = 128


@functools.cache
def _sa() -> Any:
    """The Pallas splash module, imported on first use: every process imports this module,
    only TPU runs (and interpret-mode tests) need the kernel's few hundred ms of imports."""
    from jax.experimental.pallas.ops.tpu import splash_attention

    return splash_attention


def _block_sizes() -> Any:
    return _sa().BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK,
                            block_q_dkv=BLOCK, block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK,
                            block_q_dq=BLOCK, block_kv_dq=BLOCK)


def splash_fits(q_len: int, kv_len: int) -> bool:
    """Whether splash is worth it for these lengths: at least one full block each way, so
    padding to `BLOCK` at most doubles the work (a one-token decode step is not)."""
    return q_len >= BLOCK and kv_len >= BLOCK


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _pad_to(x: jax.Array, axis: int, size: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def _static_kernel_mask(static: np.ndarray, tp: int, sp: int) -> np.ndarray:
    """[T, S] -> [Tp, Sp], pad keys never attended. A row with no key at all (padded queries)
    sees key 0: a row the kernel skips entirely would divide by zero (NaN) instead."""
    out = np.zeros((tp, sp), bool)
    out[:static.shape[0], :static.shape[1]] = static
    out[~out.any(axis=1), 0] = True
    return out


def _dynamic_kernel(mask: jax.Array, interpret: bool) -> Any:
    """Splash over one example's dense mask bool [1, Tp, Sp] (traced). JAX 0.10's factory
    stores `is_dynamic_mask` as an array, which the kernel then tests with `if`: keep it a
    Python bool."""
    kernel = _sa().make_splash_mha(mask, block_sizes=_block_sizes(), head_shards=1, q_seq_shards=1,
                                interpret=interpret)
    fix = (lambda info: None if info is None else info._replace(is_dynamic_mask=True))
    return type(kernel)(fix(kernel.fwd_mask_info), fix(kernel.dq_mask_info),
                        fix(kernel.dkv_mask_info), **kernel.kwargs)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask | None,
                     *, interpret: bool = False) -> jax.Array:
    """Softmax attention (scale 1/sqrt(H)) with the splash kernel, on one device's shard.

    q: [B, T, N, H]; k, v: [B, S, K, H] with N % K == 0 (GQA/MQA); mask: `AttentionMask` over
    [T, S] or None (all keys). Returns [B, T, N, H] in q's dtype. A static structure is
    compiled into the kernel (empty blocks skipped) and key validity becomes kv segment ids
    (valid 0, invalid 1; every query 0): any set of valid keys, contiguous or not. A
    per-example structure (staircase events) is a dense mask per example instead, run one
    example after another (a batched kernel cannot take per-example block tables). A query
    row that sees no key averages over some keys (XLA: over all); both are meaningless.
    """
    b, t, n, h = q.shape
    s = k.shape[1]
    tp, sp = _round_up(t), _round_up(s)
    scale = jnp.asarray(h ** -0.5, jnp.float32)
    qh = _pad_to((q.astype(jnp.float32) * scale).astype(q.dtype).transpose(0, 2, 1, 3), 2, tp)
    kh = _pad_to(k.transpose(0, 2, 1, 3), 2, sp)
    vh = _pad_to(v.transpose(0, 2, 1, 3), 2, sp)
    key_valid = None if mask is None else mask.key_valid
    if mask is None or mask.static is not None:
        static = np.ones((t, s), bool) if mask is None else mask.static.array
        kernel_mask = _static_kernel_mask(static, tp, sp)
        sa = _sa()
        kernel = sa.make_splash_mha(sa.MultiHeadMask([sa.NumpyMask(kernel_mask)] * n),
                                    block_sizes=_block_sizes(), head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
        if key_valid is None and sp == s:
            out = jax.vmap(kernel)(qh, kh, vh)
        else:
            valid = jnp.ones((b, s), bool) if key_valid is None else key_valid
            valid = jnp.broadcast_to(valid, (b, s))
            segments = sa.SegmentIds(q=jnp.zeros((b, tp), jnp.int32),
                                     kv=_pad_to((~valid).astype(jnp.int32), 1, sp)
                                     .at[:, s:].set(1))
            out = jax.vmap(kernel)(qh, kh, vh, segments)
    else:
        dense = jnp.broadcast_to(mask.dense(), (b, t, s))
        dense = _pad_to(_pad_to(dense, 1, tp), 2, sp)
        empty = ~jnp.any(dense, axis=2, keepdims=True)
        dense = dense | (empty & (jnp.arange(sp) == 0))
        out = jax.vmap(lambda q, k, v, m: _dynamic_kernel(m[None], interpret)(q, k, v))(
            qh, kh, vh, dense)
    return out[:, :, :t].transpose(0, 2, 1, 3)
