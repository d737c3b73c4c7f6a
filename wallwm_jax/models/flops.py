"""Analytic matmul FLOPs of one WALL-WM train step (`compute_loss` forward + backward).

A matmul of [m, k] x [k, n] costs 2·m·n·k FLOPs forward; the backward pass needs two of the
same size (input and weight gradients), so a train step counts 3x the forward matmul FLOPs.
Counted: ViT (patch embedding or the conv stem, blocks, projection to the backbone), backbone
and action-expert projections and gated MLPs, the joint attention (QK^T and AV over the full
[image | instruction | captions | actions] square, as the dense kernel computes it), the
flow-time/state/action embeddings and all heads (the auxiliary action head when on). Not
counted: norms, softmax, activations, rotary embeddings, losses (elementwise; a few percent at
the tiny size, less when wider).
"""

from __future__ import annotations

from typing import Any


def forward_flops(model_cfg: Any, batch_size: int, *, instruction_len: int,
                  caption_len: int, num_captions: int = 1) -> dict[str, float]:
    """Forward matmul FLOPs per component of `WallWM.__call__` with `num_captions` caption
    slots of `caption_len` tokens (1 in event mode, `model.max_captions` in unified, 0 chunk)."""
    c, b = model_cfg, float(batch_size)
    cams = c.get("cameras", 1)
    n_patch = (c.image_size // c.patch_size) ** 2 * cams  # what the ViT's blocks see
    readout = c.get("vision_readout", "none")
    k = c.get("vision_keypoints", 16) if readout != "none" else 0
    n_img = n_patch + k * cams  # what reaches the backbone: patches, then keypoint tokens
    n_caption = num_captions * caption_len
    n_vlm = n_img + instruction_len + n_caption
    n_act = c.max_event_len
    seq = n_vlm + n_act

    def mm(m: float, k: float, n: float) -> float:
        return 2.0 * m * k * n

    vw = c.vit_width
    n_cam = n_patch // cams  # the ViT attends within one camera's patches
    if c.get("vision_stem", "none") == "conv":  # log2(p) stride-2 3x3 convs, then 1x1 to vw
        side, c_in, vit = c.image_size, 3, 0.0
        for i in range(c.patch_size.bit_length() - 1):
            side, c_out = side // 2, min(vw, 16 * 2 ** i)
            vit += mm(b * cams * side * side, 9 * c_in, c_out)
            c_in = c_out
        vit += mm(b * n_patch, c_in, vw)
    else:
        vit = mm(b * n_patch, c.patch_size ** 2 * 3, vw)  # patch embedding (a strided conv)
    vit += c.vit_depth * (
        4 * mm(b * n_patch, vw, vw)  # q, k, v, out (heads * head_dim = width)
        + 2 * mm(b * c.vit_heads * n_patch, vw // c.vit_heads, n_cam)  # QK^T and AV
        + 2 * mm(b * n_patch, vw, c.vit_mlp_dim))
    if readout == "patch_keypoints":  # keypoint logits from the output patches
        vit += mm(b * n_patch, vw, k)
    elif readout == "pixel_keypoints":  # 3x3 conv (3 -> 16) and 1x1 conv (16 -> K) per pixel
        pixels = b * cams * c.image_size ** 2
        vit += mm(pixels, 27, 16) + mm(pixels, 16, k)
    vit += mm(b * cams * k, 2, vw)  # keypoint_in: (x, y) -> a token
    vit += mm(b * n_img, vw, c.width)  # to_backbone

    qkv_out = c.num_heads * c.head_dim
    kv = c.num_kv_heads * c.head_dim

    def weights(tokens: float, width: int, mlp: int) -> float:
        return c.depth * (
            mm(tokens, width, qkv_out) + 2 * mm(tokens, width, kv) + mm(tokens, qkv_out, width)
            + 3 * mm(tokens, width, mlp))

    backbone = weights(b * n_vlm, c.width, c.mlp_dim)
    expert = weights(b * n_act, c.expert_width, c.expert_mlp_dim)
    attention = c.depth * 2 * mm(b * c.num_heads * seq, c.head_dim, seq)

    e = c.expert_width
    action_io = (mm(b * n_act, c.action_dim, e) + mm(b, c.state_dim, e) + 2 * mm(b, e, e)
                 + mm(b * n_act, e, c.action_dim))
    heads = (mm(b * n_caption, c.width, c.vocab_size)  # caption logits (tied embedding)
             + mm(b * num_captions, c.width, c.num_duration_bins)
             + mm(b, c.width, c.width) + mm(b, c.width, c.world_size ** 2 * 3))
    if c.get("aux_action_weight", 0.0) > 0:  # the auxiliary action head (a training aid)
        aux_out = c.get("aux_action_steps", 1) * c.action_dim
        heads += mm(b, n_img * c.width, aux_out) + mm(b, c.state_dim, aux_out)
    return {"vit": vit, "backbone": backbone, "expert": expert, "attention": attention,
            "heads": heads + action_io}


def train_step_flops(model_cfg: Any, batch_size: int, *, instruction_len: int,
                     caption_len: int, num_captions: int = 1) -> float:
    """Matmul FLOPs of forward + backward of `compute_loss` for one batch: 3x forward."""
    parts = forward_flops(model_cfg, batch_size, instruction_len=instruction_len,
                          caption_len=caption_len, num_captions=num_captions)
    return 3.0 * sum(parts.values())
