"""Imported Hugging Face weights compute what they compute in transformers.

The checkpoints under testdata/hf were written by transformers' own `save_pretrained` and the
reference outputs by transformers itself (testdata/make_hf_reference.py, run once in a
separate environment; CI needs neither torch nor transformers). Each is loaded with our layout
(strict) into a float32 model and must agree within 1e-4 of the reference's largest value.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.flax

from experiments.pretrain import get_config
from wallwm_jax.data.batches import Observation
from wallwm_jax.models import pretrained, wallwm
from wallwm_jax.models.decoding import decode_caption

HF = os.path.join(os.path.dirname(__file__), "testdata", "hf")
CHECKPOINTS = {"gemma_mqa": "gemma", "gemma_gqa": "gemma", "gemma_mha": "gemma",
               "siglip": "siglip", "paligemma": "paligemma"}
REL_TOL = 1e-4


def _model_cfg(name: str, **overrides) -> ml_collections.ConfigDict:
    cfg = get_config("size=tiny").model
    cfg.update(pretrained.hf_model_fields(os.path.join(HF, name)))
    cfg.dtype = "float32"  # "auto" is float32 on CPU too; fixed so the comparison is fp32
    cfg.update(overrides)
    return cfg


def _random_params(cfg) -> dict:
    """A full param tree of `cfg` (shapes from `init_params` traced, not compiled: fast),
    every leaf N(0, 0.05); the checkpoint overwrites what it holds."""
    shapes = jax.eval_shape(lambda: wallwm.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype), shapes)


@functools.cache
def _loaded(name: str, family: str | None = None):
    """(model config, params with the checkpoint loaded strictly, load report)."""
    cfg = _model_cfg(name, **({} if family is None else {"backbone_family": family}))
    params = _random_params(cfg)
    params, report = pretrained.load_pretrained(params, os.path.join(HF, name),
                                                layout=CHECKPOINTS[name], strict=True)
    return cfg, params, report


def _reference(name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(HF, name, "reference.npz")) as f:
        return dict(f)


def _assert_close(ours, theirs, what: str) -> None:
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    assert ours.shape == theirs.shape, what
    err, scale = float(np.abs(ours - theirs).max()), float(np.abs(theirs).max())
    assert scale > 1.0, what  # a real signal, not an all-zero output
    assert err <= REL_TOL * scale, \
        f"{what}: max |ours - theirs| {err:.3g} > {REL_TOL} x {scale:.3g}"


def _text(cfg, params, tokens):
    hidden = pretrained.text_hidden_states(cfg, params, tokens)
    logits = wallwm.WallWM(wallwm._frozen(cfg)).apply({"params": params}, hidden,
                                                      method=wallwm.WallWM.lm_logits)
    return hidden, logits


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma_gqa", "gemma_mha", "paligemma"])
def test_backbone_matches_transformers(name):
    cfg, params, _ = _loaded(name)
    ref = _reference(name)
    hidden, logits = _text(cfg, params, ref["tokens"])
    assert hidden.shape == (*ref["tokens"].shape, cfg.width)
    _assert_close(hidden, ref["hidden"], f"{name} hidden states")
    _assert_close(logits, ref["logits"], f"{name} logits")


def test_without_gemma_embedding_scale_backbone_differs():
    """The scale is what made the imported Gemma a different function before."""
    cfg, params, _ = _loaded("gemma_gqa", family="wallwm")
    ref = _reference("gemma_gqa")
    hidden, _ = _text(cfg, params, ref["tokens"])
    assert float(np.abs(np.asarray(hidden) - ref["hidden"]).max()) > 0.5


@pytest.mark.parametrize("name", ["siglip", "paligemma"])
def test_vision_tower_matches_transformers(name):
    cfg, params, _ = _loaded(name)
    ref = _reference(name)
    emb = pretrained.image_embeddings(cfg, params, ref["images"])
    assert emb.shape == (ref["images"].shape[0], (cfg.image_size // cfg.patch_size) ** 2,
                         cfg.vit_width)
    _assert_close(emb, ref["image_embeddings"], f"{name} image embeddings")
    if "projected" in ref:  # PaliGemma's multi_modal_projector is our vit/to_backbone
        tokens = wallwm.WallWM(wallwm._frozen(cfg)).apply(
            {"params": params}, jnp.asarray(ref["images"]), method=lambda m, x: m.vit(x))
        _assert_close(tokens, ref["projected"], f"{name} projected image tokens")


def test_reports_say_what_was_not_loaded():
    _, _, siglip = _loaded("siglip")
    assert "vit/to_backbone/kernel" in siglip.not_covered
    assert "head.probe" in siglip.skipped and not siglip.unused and not siglip.missing
    assert "decoder/layers/backbone/query/kernel" in siglip.not_covered
    assert siglip.model_fields == {}

    _, _, pali = _loaded("paligemma")
    assert pali.path.endswith("paligemma")  # the directory: a sharded index over 4 files
    with open(os.path.join(HF, "paligemma", "model.safetensors.index.json")) as f:
        assert len(set(json.load(f)["weight_map"].values())) == 4
    assert pali.loaded["multi_modal_projector.linear.weight"] == "vit/to_backbone/kernel"
    assert pali.loaded["language_model.model.layers.1.self_attn.k_proj.weight"] == \
        "decoder/layers_1/backbone/key/kernel"
    assert pali.loaded["vision_tower.encoder.layers.0.self_attn.q_proj.bias"] == \
        "vit/block_0/query/bias"
    assert any(k.startswith("vision_tower.head.") for k in pali.skipped)
    assert not any(p.startswith(("vit/", "embedder/", "decoder/backbone_norm"))
                   or "/backbone/" in p for p in pali.not_covered)
    assert "decoder/layers/action_expert/query/kernel" in pali.not_covered
    assert pali.model_fields == {"backbone_family": "gemma"}
    text = pretrained.describe(pali)
    assert "needs config: model.backbone_family='gemma'" in text


def test_layout_fields_and_hf_config_fields():
    assert pretrained.model_fields("gemma") == {"backbone_family": "gemma"}
    assert pretrained.model_fields("siglip") == {}
    fields = pretrained.hf_model_fields(os.path.join(HF, "paligemma"))
    assert fields["backbone_family"] == "gemma"
    assert (fields["vit_width"], fields["width"], fields["num_kv_heads"]) == (32, 64, 1)


def test_unsupported_hf_config_is_named(tmp_path):
    cfg = json.load(open(os.path.join(HF, "gemma_mqa", "config.json")))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gemma2"}))
    with pytest.raises(ValueError, match="model_type='gemma2'"):
        pretrained.hf_model_fields(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "rope_parameters":
                                                      {"rope_theta": 1e6}}))
    with pytest.raises(ValueError, match=r"rope_theta=1000000\.0"):
        pretrained.hf_model_fields(str(tmp_path / "model.safetensors"))


def test_bfloat16_safetensors_load(tmp_path):
    """Hub checkpoints are often bfloat16, which safetensors.numpy cannot read."""
    src = os.path.join(HF, "gemma_mqa", "model.safetensors")
    bf16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in pretrained.read_weights(src).items()}
    safetensors.flax.save_file(bf16, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(HF, "gemma_mqa",
                                                            "config.json")).read())
    cfg, params, _ = _loaded("gemma_mqa")
    loaded, _ = pretrained.load_pretrained(params, str(tmp_path), layout="gemma", strict=True)
    np.testing.assert_array_equal(
        loaded["embedder"]["embedding"],
        np.asarray(bf16["model.embed_tokens.weight"], np.float32))
    ref = _reference("gemma_mqa")
    hidden, _ = _text(cfg, loaded, ref["tokens"])
    err = float(np.abs(np.asarray(hidden) - ref["hidden"]).max())
    assert 0 < err < 0.1 * float(np.abs(ref["hidden"]).max())  # bf16 weights: close, not equal


def test_gemma_scale_in_cached_decoding_and_training_forward():
    """The scale lives in the model's token embedding, so KV-cached decoding (`decode_step`)
    and the training forward's caption logits (`embed_vlm`, here through the backbone-only
    `vlm_caption_logits`, which equals the joint forward: test_decoding.py) agree."""
    cfg, params, _ = _loaded("paligemma")
    rng = np.random.default_rng(0)
    b, max_len = 2, 6
    obs = Observation(image=jnp.asarray(rng.integers(0, 256, (b, 32, 32, 3), np.uint8)),
                      state=jnp.zeros((b, cfg.state_dim)),
                      instruction=jnp.asarray(rng.integers(3, 100, (b, 5)), jnp.int32),
                      caption=jnp.zeros((b, 0, max_len), jnp.int32))
    decode = jax.jit(functools.partial(decode_caption, cfg, max_len=max_len,
                                       return_logits=True))
    tokens, logits = decode(params, obs, jax.random.key(1))
    full = obs.replace(caption=tokens[:, None, :])

    def teacher_forced(cfg):
        return jax.jit(lambda p, o: wallwm.WallWM(wallwm._frozen(cfg)).apply(
            {"params": p}, o, method=wallwm.WallWM.vlm_caption_logits))(params, full)[:, 0]

    forced = teacher_forced(cfg)
    live = np.asarray(tokens[:, :-1] != 0)
    np.testing.assert_allclose(np.asarray(logits)[live], np.asarray(forced[:, :-1])[live],
                               atol=1e-4, rtol=0)
    unscaled = teacher_forced(_model_cfg("paligemma", backbone_family="wallwm"))
    assert float(jnp.abs(unscaled - forced).max()) > 1.0


def test_size_paligemma_is_the_hub_paligemma(tmp_path):
    """`size=paligemma` has the sizes of paligemma-3b-pt-224's config.json (as on the Hub:
    fields equal to transformers' defaults left out), so its weights load unchanged."""
    hub = {"model_type": "paligemma", "hidden_size": 2048, "projection_dim": 2048,
           "vocab_size": 257216, "image_token_index": 257152,
           "text_config": {"model_type": "gemma", "hidden_size": 2048,
                           "intermediate_size": 16384, "num_attention_heads": 8,
                           "num_hidden_layers": 18, "num_key_value_heads": 1,
                           "num_image_tokens": 256, "vocab_size": 257216},
           "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                             "intermediate_size": 4304, "num_attention_heads": 16,
                             "num_hidden_layers": 27, "num_image_tokens": 256,
                             "patch_size": 14, "projection_dim": 2048}}
    (tmp_path / "config.json").write_text(json.dumps(hub))
    fields = pretrained.hf_model_fields(str(tmp_path))
    model = get_config("size=paligemma").model
    assert {k: model[k] for k in fields if k != "backbone_family"} == \
        {k: v for k, v in fields.items() if k != "backbone_family"}
    shapes = jax.eval_shape(lambda: wallwm.init_params(model, jax.random.key(0)))
    towers = sum(np.prod(x.shape) for k in ("vit", "embedder")
                 for x in jax.tree.leaves(shapes[k]))
    towers += sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["decoder"]["layers"]
                                                             ["backbone"]))
    assert 2.90e9 < towers < 2.94e9  # PaliGemma 3B: 2.92 B parameters
