"""Mixture-of-transformers decoder (pi0 style): backbone + action expert, shared attention.

Each layer has two weight sets: the backbone (width `width`) for VLM tokens and the action
expert (width `expert_width`) for action tokens. Attention runs jointly over
[VLM tokens | action tokens] under a boolean mask. Because VLM tokens never attend to action
tokens, the VLM part can run alone and return its per-layer keys/values; the action tokens can
then run against that cache (exactly the same result), as used for Euler denoising.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wallwm_jax.models.layers import (
    Dtype,
    GatedMLP,
    apply_rope,
    attention,
    compute_dtype,
    constrain_activation,
    dense,
    remat_policy,
    resolve_attention,
    rms_norm,
)
from wallwm_jax.models.masks import AttentionMask

# Per-layer (keys, values), each [B, S, kv_heads, head_dim]; stacked over layers: [L, B, S, K, H].
KVCache = tuple[jax.Array, jax.Array]


class ExpertWeights(nn.Module):
    """One weight set of a layer: RMSNorm -> GQA projections (+rotary); out proj; gated MLP."""

    width: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    embed_axis: str
    mlp_axis: str
    dtype: Dtype

    def setup(self) -> None:
        e = self.embed_axis
        self.attn_norm = rms_norm(e, self.dtype)
        self.query = dense((self.num_heads, self.head_dim), (e, "heads", "head_dim"),
                           dtype=self.dtype)
        self.key = dense((self.num_kv_heads, self.head_dim), (e, "kv_heads", "head_dim"),
                         dtype=self.dtype)
        self.value = dense((self.num_kv_heads, self.head_dim), (e, "kv_heads", "head_dim"),
                           dtype=self.dtype)
        self.out = dense(self.width, ("heads", "head_dim", e), axis=(-2, -1), dtype=self.dtype)
        self.mlp_norm = rms_norm(e, self.dtype)
        self.mlp = GatedMLP(self.mlp_dim, e, self.mlp_axis, self.dtype)

    def qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: [B, T, width], positions: int [B, T] -> q [B,T,N,H], k, v [B,T,K,H]."""
        h = self.attn_norm(x)
        q = apply_rope(self.query(h), positions)
        k = apply_rope(self.key(h), positions)
        return q, k, self.value(h)

    def finish(self, x: jax.Array, attn_out: jax.Array) -> jax.Array:
        """Residual out-projection and MLP. x: [B, T, width], attn_out: [B, T, N, H]."""
        x = x + self.out(attn_out)
        return x + self.mlp(self.mlp_norm(x))


class MoTLayer(nn.Module):
    """One joint layer. Either token group may be None (then its weights are not used)."""

    cfg: Any  # FrozenConfigDict of config.model

    @nn.compact
    def __call__(self, xs: tuple[jax.Array | None, jax.Array | None],
                 cache: KVCache | None,
                 positions: tuple[jax.Array | None, jax.Array | None],
                 mask: AttentionMask | jax.Array
                 ) -> tuple[tuple[jax.Array | None, jax.Array | None], KVCache | None]:
        """xs = (x_vlm [B,Nv,width] | None, x_act [B,Na,expert_width] | None).

        cache: this layer's VLM (k, v) [B, Nc, K, H] computed earlier, or None.
        positions: (int [B, Nv] | None, int [B, Na] | None).
        mask: over [Nv + Na, Nc + Nv + Na] (queries: present tokens; keys: cache first), an
          `AttentionMask` (structure and key validity apart, as splash wants) or dense bool
          [B, Nv + Na, Nc + Nv + Na].
        Returns the new xs and the VLM (k, v) of this layer (cache + new VLM tokens) or None.
        """
        cfg, dtype = self.cfg, compute_dtype(self.cfg.dtype)
        common = dict(num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                      head_dim=cfg.head_dim, dtype=dtype)
        experts = (
            ExpertWeights(cfg.width, cfg.mlp_dim, embed_axis="embed", mlp_axis="mlp",
                          name="backbone", **common),
            ExpertWeights(cfg.expert_width, cfg.expert_mlp_dim, embed_axis="expert_embed",
                          mlp_axis="expert_mlp", name="action_expert", **common),
        )
        qs, ks, vs = [], [], []
        if cache is not None:
            ks.append(cache[0].astype(dtype))
            vs.append(cache[1].astype(dtype))
        for expert, x, pos in zip(experts, xs, positions, strict=True):
            if x is not None:
                q, k, v = expert.qkv(x.astype(dtype), pos)
                qs.append(q), ks.append(k), vs.append(v)
        new_cache = None
        if xs[0] is not None:  # the VLM keys/values seen so far, for later action passes
            n_vlm_keys = (0 if cache is None else cache[0].shape[1]) + xs[0].shape[1]
            new_cache = (jnp.concatenate(ks, 1)[:, :n_vlm_keys],
                         jnp.concatenate(vs, 1)[:, :n_vlm_keys])
        q, k, v = (jnp.concatenate(x, 1) for x in (qs, ks, vs))
        impl = resolve_attention(cfg.get("attention", "auto"), dtype, cfg.head_dim,
                                 q_len=q.shape[1], kv_len=k.shape[1])
        out = attention(q, k, v, mask, implementation=impl)
        new_xs, start = [], 0
        for expert, x in zip(experts, xs, strict=True):
            if x is None:
                new_xs.append(None)
                continue
            x = expert.finish(x.astype(dtype), out[:, start:start + x.shape[1]])
            new_xs.append(constrain_activation(x))
            start += x.shape[1]
        return tuple(new_xs), new_cache


class MoTDecoder(nn.Module):
    """Stack of `depth` MoTLayers (nn.scan or a Python loop), then a final RMSNorm per group."""

    cfg: Any

    @nn.compact
    def __call__(self, x_vlm: jax.Array | None, x_act: jax.Array | None,
                 positions: tuple[jax.Array | None, jax.Array | None],
                 mask: AttentionMask | jax.Array,
                 cache: KVCache | None = None,
                 ) -> tuple[jax.Array | None, jax.Array | None, KVCache | None]:
        """See MoTLayer for shapes; `cache` and the returned cache are stacked over layers."""
        cfg = self.cfg
        layer_cls = MoTLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=remat_policy(cfg.remat_policy),
                                 prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(0, nn.broadcast, nn.broadcast), length=cfg.depth,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            (x_vlm, x_act), new_cache = stack(cfg, name="layers")(
                (x_vlm, x_act), cache, positions, mask)
        else:
            caches = []
            for i in range(cfg.depth):
                layer_cache = jax.tree.map(lambda c, i=i: c[i], cache)
                (x_vlm, x_act), kv = layer_cls(cfg, name=f"layers_{i}")(
                    (x_vlm, x_act), layer_cache, positions, mask)
                caches.append(kv)
            new_cache = None if x_vlm is None else jax.tree.map(
                lambda *c: jnp.stack(c), *caches)
        dtype = compute_dtype(cfg.dtype)
        if x_vlm is not None:
            x_vlm = rms_norm("embed", dtype, name="backbone_norm")(x_vlm)
        if x_act is not None:
            x_act = rms_norm("expert_embed", dtype, name="action_expert_norm")(x_act)
        return x_vlm, x_act, new_cache
