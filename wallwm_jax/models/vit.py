"""SigLIP-style vision encoder: uint8 camera image -> image tokens at the backbone width,
optionally followed by keypoint tokens (a spatial-softmax read-out of where things are)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from wallwm_jax.models.layers import (
    Dtype,
    attention,
    constrain_activation,
    dense,
    layer_norm,
    partitioned,
    remat_policy,
    resolve_attention,
)

# `model.vision_readout`: none (patch tokens only) | patch_keypoints (softmax over the ViT's
# output patches) | pixel_keypoints (softmax over the pixels of a small conv on the image).
READOUTS = ("none", "patch_keypoints", "pixel_keypoints")
# `model.vision_stem`: none (one p x p patchify conv) | conv (log2 p stride-2 3x3 convs, GELU,
# then a 1x1 conv to the width: the same patch grid, features built over overlapping windows)
STEMS = ("none", "conv")


def spatial_softmax(logits: jax.Array, scale: jax.Array | float = 1.0) -> jax.Array:
    """Per channel, the expected (x, y) of a softmax over the grid positions.

    logits [N, H, W, K] -> f32 [N, K, 2]; coordinates in [-1, 1] at cell centres (x: column,
    left to right; y: row, top to bottom); `scale` [K] (or a number) multiplies the logits
    (an inverse temperature). Why: it turns "which cells light up" into two numbers per channel
    that a linear map can read, with sub-cell precision (Levine et al. 2016, deep spatial
    autoencoders)."""
    n, h, w, k = logits.shape
    prob = jax.nn.softmax(logits.astype(jnp.float32).reshape(n, h * w, k) * scale, axis=1)
    xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w * 2 - 1
    ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h * 2 - 1
    grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(h * w, 2)
    return jnp.einsum("npk,pc->nkc", prob, grid)


class ViTBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x)). x: [B, N, D]."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    attention_impl: str = "auto"  # config.model.attention, resolved here for the token count
    scanned: bool = False  # return (x, None), the (carry, output) pair nn.scan expects

    @nn.compact
    def __call__(self, x: jax.Array, _: None = None) -> jax.Array | tuple[jax.Array, None]:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        h = layer_norm("embed", self.dtype, name="ln_attn")(x)
        qkv_axes = ("embed", "heads", "head_dim")
        q, k, v = (dense((self.num_heads, head_dim), qkv_axes, dtype=self.dtype, use_bias=True,
                         name=n)(h) for n in ("query", "key", "value"))
        impl = resolve_attention(self.attention_impl, self.dtype, head_dim, q_len=x.shape[1],
                                 kv_len=x.shape[1])
        out = attention(q, k, v, implementation=impl)
        x = x + dense(width, ("heads", "head_dim", "embed"), axis=(-2, -1), dtype=self.dtype,
                      use_bias=True, name="out")(out)
        h = layer_norm("embed", self.dtype, name="ln_mlp")(x)
        h = dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, use_bias=True,
                  name="mlp_in")(h)
        h = dense(width, ("mlp", "embed"), dtype=self.dtype, use_bias=True,
                  name="mlp_out")(nn.gelu(h))
        x = constrain_activation(x + h)
        return (x, None) if self.scanned else x


class ViT(nn.Module):
    """image uint8 [B, H, W, 3] -> tokens [B, (H/p)*(W/p), out_width] in the compute dtype.

    Several cameras: image [B, C, H, W, 3] -> tokens [B, C*(H/p)*(W/p), out_width]; every
    camera goes through the same weights, plus a learned per-camera embedding (C = cameras).
    With a keypoint `readout` each camera's tokens are its patches then `keypoints` tokens
    (still camera-major): (H/p)*(W/p) + keypoints per camera.
    """

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    out_width: int
    dtype: Dtype = jnp.float32
    scan: bool = False  # stack the blocks under `blocks` (leading "layers" axis) and nn.scan
    remat_policy: str = "none"
    attention_impl: str = "auto"  # config.model.attention
    cameras: int = 1
    readout: str = "none"  # READOUTS: keypoint tokens appended to each camera's patch tokens
    keypoints: int = 16  # K keypoint tokens per camera (readout != "none")
    stem: str = "none"  # STEMS: how pixels become patch tokens

    @nn.compact
    def __call__(self, image: jax.Array, project: bool = True) -> jax.Array:
        """uint8 [B, H, W, 3] or [B, C, H, W, 3] -> tokens (see the class docstring);
        `project=False`: the encoder's own output [.., vit_width], before `to_backbone`."""
        if image.ndim == 5:
            if image.shape[1] != self.cameras:
                raise ValueError(f"image has {image.shape[1]} cameras [B, C, H, W, 3], the model "
                                 f"was configured with model.cameras={self.cameras}")
            b, c = image.shape[:2]
            tokens = self._encode(image.reshape(b * c, *image.shape[2:]), project)
            return tokens.reshape(b, c * tokens.shape[1], tokens.shape[2])
        if self.cameras != 1:
            raise ValueError(f"image has shape {image.shape}: expected [B, C={self.cameras}, H, "
                             f"W, 3] for model.cameras={self.cameras}")
        return self._encode(image, project)

    def _encode(self, image: jax.Array, project: bool = True) -> jax.Array:
        """[N, H, W, 3] (N = batch x cameras, camera-major inside an example) -> tokens."""
        x = image.astype(jnp.float32) / 127.5 - 1.0
        p = self.patch_size
        if self.stem not in STEMS:
            raise ValueError(f"model.vision_stem={self.stem!r}: expected one of {STEMS}")
        if self.stem == "conv":
            x, p = self._conv_stem(x), 1
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    param_dtype=jnp.float32, name="patch_embed",
                    kernel_init=partitioned(nn.initializers.lecun_normal(),
                                            (None, None, None, "embed")),
                    bias_init=partitioned(nn.initializers.zeros_init(), ("embed",)))(x)
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        pos = self.param("pos_embedding",
                         partitioned(nn.initializers.normal(0.02), ("patch", "embed")),
                         (gh * gw, d), jnp.float32)
        x = x + pos.astype(self.dtype)[None]
        cam = 0.0
        if self.cameras > 1:  # which camera a patch (and a keypoint token) comes from
            cam = self.param("camera_embedding",
                             partitioned(nn.initializers.normal(0.02), (None, "embed")),
                             (self.cameras, d), jnp.float32)
            cam = jnp.tile(cam.astype(self.dtype), (b // self.cameras, 1))[:, None, :]
            x = x + cam
        block_args = (self.num_heads, self.mlp_dim, self.dtype, self.attention_impl, self.scan)
        if self.scan:
            block = ViTBlock
            if self.remat_policy != "none":
                block = nn.remat(block, policy=remat_policy(self.remat_policy))
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(*block_args, name="blocks")(x, None)
        else:
            block = ViTBlock
            if self.remat_policy != "none":
                block = nn.remat(block, policy=remat_policy(self.remat_policy))
            for i in range(self.depth):
                x = block(*block_args, name=f"block_{i}")(x)
        x = layer_norm("embed", self.dtype, name="ln_final")(x)
        if self.readout != "none":
            x = jnp.concatenate([x, self._keypoint_tokens(image, x, gh, gw) + cam], axis=1)
        if not project:
            return x
        return dense(self.out_width, (None, "embed"), dtype=self.dtype, use_bias=True,
                     name="to_backbone")(x)

    def _conv_stem(self, x: jax.Array) -> jax.Array:
        """[N, H, W, 3] in [-1, 1] -> [N, H/p, W/p, C]: log2(p) 3x3 convs of stride 2 with
        GELU, 16 channels doubling per conv up to the width (Xiao et al. 2021, "Early
        convolutions help transformers see better"). Why: an 8-px patchify sees a one-pixel
        object as one of 64 inputs of a linear map; overlapping 3x3 windows detect it first."""
        p = self.patch_size
        if p < 2 or p & (p - 1):
            raise ValueError(f"model.vision_stem='conv' needs a power-of-2 patch_size, got {p}")
        for i in range(p.bit_length() - 1):
            x = nn.Conv(min(self.width, 16 * 2 ** i), (3, 3), strides=(2, 2), padding="SAME",
                        dtype=self.dtype, param_dtype=jnp.float32, name=f"stem_conv_{i}",
                        kernel_init=partitioned(nn.initializers.lecun_normal(), (None,) * 4),
                        bias_init=partitioned(nn.initializers.zeros_init(), (None,)))(x)
            x = nn.gelu(x)
        return x

    def _keypoint_tokens(self, image: jax.Array, patches: jax.Array, gh: int,
                         gw: int) -> jax.Array:
        """K keypoint tokens [N, K, vit_width]: token k = W (x_k, y_k) + e_k, (x_k, y_k) the
        spatial softmax of channel k over the patches (patch_keypoints) or the pixels
        (pixel_keypoints: a 3x3 conv, GELU, a 1x1 conv on the image, which can place a
        one-pixel goal that a whole 8-px patch blurs)."""
        if self.readout not in READOUTS:
            raise ValueError(f"model.vision_readout={self.readout!r}: expected one of {READOUTS}")
        k, d = self.keypoints, patches.shape[-1]
        if self.readout == "patch_keypoints":
            logits = dense(k, ("embed", None), dtype=self.dtype, use_bias=True,
                           name="keypoint_logits")(patches).reshape(-1, gh, gw, k)
        else:
            x = image.astype(jnp.float32) / 127.5 - 1.0
            conv = functools.partial(
                nn.Conv, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=partitioned(nn.initializers.lecun_normal(), (None,) * 4),
                bias_init=partitioned(nn.initializers.zeros_init(), (None,)))
            x = nn.gelu(conv(16, (3, 3), padding="SAME", name="keypoint_conv")(x))
            logits = conv(k, (1, 1), name="keypoint_logits")(x)
        scale = self.param("keypoint_scale", partitioned(nn.initializers.ones_init(), (None,)),
                           (k,), jnp.float32)
        xy = spatial_softmax(logits, scale)  # [N, K, 2]
        emb = self.param("keypoint_embedding",
                         partitioned(nn.initializers.normal(0.02), (None, "embed")), (k, d),
                         jnp.float32)
        tokens = dense(d, (None, "embed"), dtype=self.dtype, use_bias=True,
                       name="keypoint_in")(xy.astype(self.dtype))
        return tokens + emb.astype(self.dtype)[None]
