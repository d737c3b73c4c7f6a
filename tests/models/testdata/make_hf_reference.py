"""Write tiny random Hugging Face checkpoints and their reference outputs (run once, by hand).

Needs torch and transformers, which the project does not depend on; run it in a separate
environment (docs/pretrained.md):

    python tests/models/testdata/make_hf_reference.py tests/models/testdata/hf

Writes, with transformers' own `save_pretrained` (safetensors, float32):
  gemma_mqa/, gemma_gqa/, gemma_mha/   GemmaForCausalLM (1, 2, 4 key/value heads)
  siglip/                              SiglipVisionModel (`vision_model.*`, with its MAP head)
  paligemma/                           PaliGemmaForConditionalGeneration, sharded (index.json)
and in each a `reference.npz`: the inputs (`tokens` int32 [B, T], `images` uint8
[B, H, W, 3]) and what transformers computes from them in float32 (`hidden`: the language
model's last hidden state after the final norm; `logits`; `image_embeddings`: the vision
tower's last hidden state; `projected`: PaliGemma's multi_modal_projector of it). Every
tensor is re-drawn from a normal distribution (norm weights included) so no layer is near
identity. tests/models/test_pretrained_equivalence.py loads these with our layouts.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)

VOCAB, WIDTH, LAYERS, MLP = 128, 64, 2, 96
PALI_VOCAB = 512  # the test dataset's SentencePiece has up to 512 pieces: PaliGemma trains on it
BATCH, LENGTH = 2, 12
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=32, patch_size=8, layer_norm_eps=1e-6)


def gemma_config(heads: int, kv_heads: int, head_dim: int, vocab: int = VOCAB) -> GemmaConfig:
    return GemmaConfig(vocab_size=vocab, hidden_size=WIDTH, intermediate_size=MLP,
                       num_hidden_layers=LAYERS, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, head_dim=head_dim, rms_norm_eps=1e-6,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2,
                       hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)


def eager(config: transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    """Plain softmax attention under the explicit (causal) mask: PaliGemma's language model
    is built with `use_bidirectional_attention`, which SDPA would honour when the mask is
    skipped; the eager path applies the causal mask a text-only forward asks for."""
    for c in (config, *(getattr(config, n, None) for n in ("text_config", "vision_config"))):
        if c is not None:
            c._attn_implementation = "eager"
    return config


def redraw(model: torch.nn.Module, seed: int) -> None:
    """Every parameter from a normal: weights std 0.1 (patch conv 0.05, embeddings 0.2),
    biases 0.1, Gemma's RMSNorm w 0.2 (scale 1 + w), LayerNorm scale 1 + N(0, 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.1
            if "embed" in name or "position_embedding" in name:
                std = 0.2
            if "patch_embedding.weight" in name:
                std = 0.05
            if "norm" in name and p.ndim == 1:
                std = 0.2
            value = torch.randn(p.shape, generator=gen) * std
            if ("layer_norm" in name or "layernorm" in name) and name.endswith("weight") \
                    and "input_layernorm" not in name and "post_attention_layernorm" not in name:
                value += 1.0  # LayerNorm multiplies by its weight itself
            p.copy_(value)


def tokens(seed: int, vocab: int, avoid: tuple[int, ...] = ()) -> np.ndarray:
    """int32 [B, T] in [3, vocab): no padding (0), BOS or EOS, nor the ids in `avoid`."""
    rng = np.random.default_rng(seed)
    ids = np.setdiff1d(np.arange(3, vocab), np.asarray(avoid, int))
    return rng.choice(ids, (BATCH, LENGTH)).astype(np.int32)


def images(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (BATCH, size, size, 3), np.uint8)


def pixel_values(images_u8: np.ndarray) -> torch.Tensor:
    """SigLIP's processor on uint8: rescale 1/255 then normalise mean 0.5, std 0.5, i.e.
    x / 127.5 - 1 (what our ViT does), NCHW float32."""
    x = torch.from_numpy(images_u8.astype(np.float32) / 127.5 - 1.0)
    return x.permute(0, 3, 1, 2).contiguous()


def save(model: torch.nn.Module, out: str, ref: dict[str, np.ndarray], **kwargs) -> None:
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    for extra in ("generation_config.json",):  # not needed by the tests
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    np.savez(os.path.join(out, "reference.npz"), **ref)
    print(out, {k: v.shape for k, v in ref.items()})


def main(root: str) -> None:
    torch.set_grad_enabled(False)
    for seed, (name, heads, kv, hd) in enumerate([("mqa", 4, 1, 16), ("gqa", 4, 2, 16),
                                                  ("mha", 4, 4, 24)]):
        model = GemmaForCausalLM(eager(gemma_config(heads, kv, hd))).float().eval()
        redraw(model, seed)
        ids = tokens(seed, VOCAB)
        out = model(input_ids=torch.from_numpy(ids).long(), output_hidden_states=True)
        save(model, os.path.join(root, f"gemma_{name}"),
             {"tokens": ids, "hidden": out.hidden_states[-1].numpy(),
              "logits": out.logits.numpy()})

    model = SiglipVisionModel(eager(SiglipVisionConfig(**SIGLIP))).float().eval()
    redraw(model, 10)
    imgs = images(10, SIGLIP["image_size"])
    out = model(pixel_values=pixel_values(imgs))
    save(model, os.path.join(root, "siglip"),
         {"images": imgs, "image_embeddings": out.last_hidden_state.numpy()})

    text = gemma_config(4, 1, 16, PALI_VOCAB).to_dict()
    config = PaliGemmaConfig(vision_config=SIGLIP, text_config=text, projection_dim=WIDTH,
                             hidden_size=WIDTH, vocab_size=PALI_VOCAB,
                             image_token_index=PALI_VOCAB - 1)
    model = PaliGemmaForConditionalGeneration(eager(config)).float().eval()
    redraw(model, 20)
    ids = tokens(20, PALI_VOCAB, avoid=(PALI_VOCAB - 1,))
    imgs = images(20, SIGLIP["image_size"])
    print("attention:", model.model.language_model.config._attn_implementation)
    lm = model.model.language_model(input_ids=torch.from_numpy(ids).long())
    vision = model.model.vision_tower(pixel_values=pixel_values(imgs)).last_hidden_state
    save(model, os.path.join(root, "paligemma"),
         {"tokens": ids, "hidden": lm.last_hidden_state.numpy(),
          "logits": model.lm_head(lm.last_hidden_state).numpy(), "images": imgs,
          "image_embeddings": vision.numpy(),
          "projected": model.model.multi_modal_projector(vision).numpy()},
         max_shard_size="150KB")
    with open(os.path.join(root, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "hf"))
