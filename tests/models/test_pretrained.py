"""load_pretrained: files in foreign layouts (written here from known params) load exactly."""

import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from experiments.pretrain import get_config
from wallwm_jax.models import pretrained, wallwm

_BV_BLOCK = {"LayerNorm_0": "ln_attn", "LayerNorm_1": "ln_mlp",
             "MlpBlock_0/Dense_0": "mlp_in", "MlpBlock_0/Dense_1": "mlp_out",
             **{f"MultiHeadDotProductAttention_0/{n}": n for n in ("query", "key", "value", "out")}}
_PARAMS: dict = {}


def _cfg(scan_layers: bool) -> ml_collections.FrozenConfigDict:
    cfg = get_config("size=tiny").model
    cfg.scan_layers = scan_layers
    return ml_collections.FrozenConfigDict(cfg)


def _params(scan_layers: bool, seed: int):
    """Seed 0: init plus noise on every leaf (scales kept in [0.5, 2] so 1 + (s - 1) == s
    exactly in float32). Other seeds: plain init, the tree we load into."""
    key = (scan_layers, seed)
    if key not in _PARAMS:
        params = wallwm.init_params(_cfg(scan_layers), jax.random.PRNGKey(seed))
        if seed == 0:
            rng = np.random.default_rng(0)
            flat = traverse_util.flatten_dict(params, sep="/")
            for path, x in flat.items():
                x = np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(np.float32)
                flat[path] = np.clip(x, 0.5, 2.0) if path.endswith("scale") else x
            params = traverse_util.unflatten_dict(flat, sep="/")
        _PARAMS[key] = jax.tree.map(np.asarray, params)
    return _PARAMS[key]


def _backbone_layers(params):
    """Per-layer backbone dicts of either scan layout."""
    dec = params["decoder"]
    if "layers" in dec:
        stack = dec["layers"]["backbone"]
        depth = jax.tree.leaves(stack)[0].shape[0]
        return [jax.tree.map(lambda x, i=i: x[i], stack) for i in range(depth)]
    depth = sum(k.startswith("layers_") for k in dec)
    return [dec[f"layers_{i}"]["backbone"] for i in range(depth)]


def _vit_blocks(params):
    """Per-block ViT dicts of either scan layout."""
    vit = params["vit"]
    if "blocks" in vit:
        depth = jax.tree.leaves(vit["blocks"])[0].shape[0]
        return [jax.tree.map(lambda x, i=i: x[i], vit["blocks"]) for i in range(depth)]
    return [vit[f"block_{i}"] for i in range(sum(k.startswith("block_") for k in vit))]


def _write_big_vision(params, path, *, stacked: bool) -> None:
    """The ViT in big_vision SigLIP's npz layout, plus a MAP head and a text tower."""
    vit, pre = params["vit"], "params/img/"
    out = {pre + "embedding/kernel": vit["patch_embed"]["kernel"],
           pre + "embedding/bias": vit["patch_embed"]["bias"],
           pre + "pos_embedding": vit["pos_embedding"][None],
           pre + "Transformer/encoder_norm/scale": vit["ln_final"]["scale"],
           pre + "Transformer/encoder_norm/bias": vit["ln_final"]["bias"],
           pre + "MAPHead_0/probe": np.ones((1, 1, 64), np.float32),
           "params/txt/Embedding_0/embedding": np.ones((10, 64), np.float32),
           "params/t": np.ones((1,), np.float32)}
    blocks = _vit_blocks(params)
    for theirs, ours in _BV_BLOCK.items():
        for leaf in blocks[0][ours]:
            if stacked:
                out[f"{pre}Transformer/encoderblock/{theirs}/{leaf}"] = np.stack(
                    [b[ours][leaf] for b in blocks])
            else:
                for i, b in enumerate(blocks):
                    out[f"{pre}Transformer/encoderblock_{i}/{theirs}/{leaf}"] = b[ours][leaf]
    np.savez(path, **out)


def _write_gemma_hf(params, path) -> dict:
    """The backbone in Hugging Face Gemma's safetensors layout (torch Linear [out, in];
    RMSNorm stores w with scale = 1 + w), plus a tied lm_head."""
    out = {"model.embed_tokens.weight": params["embedder"]["embedding"],
           "model.norm.weight": params["decoder"]["backbone_norm"]["scale"] - 1,
           "lm_head.weight": params["embedder"]["embedding"]}
    for i, bb in enumerate(_backbone_layers(params)):
        pre = f"model.layers.{i}."
        width = bb["attn_norm"]["scale"].shape[0]
        for n in ("query", "key", "value"):
            out[f"{pre}self_attn.{n[0]}_proj.weight"] = bb[n]["kernel"].reshape(width, -1).T
        out[pre + "self_attn.o_proj.weight"] = bb["out"]["kernel"].reshape(-1, width).T
        for n in ("gate", "up", "down"):
            out[f"{pre}mlp.{n}_proj.weight"] = bb["mlp"][n]["kernel"].T
        out[pre + "input_layernorm.weight"] = bb["attn_norm"]["scale"] - 1
        out[pre + "post_attention_layernorm.weight"] = bb["mlp_norm"]["scale"] - 1
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    safetensors.numpy.save_file(out, path)
    return out


def _flat(params):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _per_layer(params):
    """Flat leaves with scanned stacks `decoder/layers/X`, `vit/blocks/X` [L, ...] split into
    `decoder/layers_{i}/X`, `vit/block_{i}/X`."""
    out = {}
    for path, value in _flat(params).items():
        stack = next((s for s in ("decoder/layers/", "vit/blocks/") if path.startswith(s)), None)
        if stack is None:
            out[path] = value
            continue
        for i, layer in enumerate(value):
            out[path.replace(stack, f"{stack[:-2]}_{i}/" if stack.startswith("vit")
                             else f"decoder/layers_{i}/")] = layer
    return out


def _assert_leaves(loaded, expected, prefixes, *, equal: bool) -> None:
    """Leaves under `prefixes` equal (or all differ from) `expected`, value for value."""
    checked = 0
    for path, value in _flat(loaded).items():
        if path.startswith(prefixes):
            want = _flat(expected)[path]
            if equal:
                np.testing.assert_array_equal(value, want, err_msg=path)
            else:
                assert not np.array_equal(value, want), path
            checked += 1
    assert checked > 0


def _image_tokens(scan_layers, params, image):
    return wallwm.WallWM(_cfg(scan_layers)).apply({"params": params}, image,
                                                  method=lambda m, x: m.vit(x))


@pytest.mark.parametrize("stacked", [False, True], ids=["encoderblock_i", "scanned"])
def test_big_vision_siglip_loads_vit_exactly(tmp_path, tiny_batch, stacked):
    src, init = _params(True, 0), _params(True, 1)
    path = str(tmp_path / "siglip.npz")
    _write_big_vision(src, path, stacked=stacked)
    params, report = pretrained.load_pretrained(init, path, layout="big_vision_siglip")

    vit_loaded = tuple(f"vit/{n}" for n in ("patch_embed", "pos_embedding", "ln_final", "block"))
    _assert_leaves(params, src, vit_loaded, equal=True)
    others = ("vit/to_backbone", "embedder", "decoder", "action_in", "world_out")
    _assert_leaves(params, init, others, equal=True)
    assert "vit/to_backbone/kernel" in report.not_covered
    assert "decoder/layers/action_expert/query/kernel" in report.not_covered
    assert set(report.skipped) == {"params/img/MAPHead_0/probe",
                                   "params/txt/Embedding_0/embedding", "params/t"}
    assert not report.unused
    assert not report.mismatched and not report.missing
    assert len(report.loaded) == 5 + 2 * 16

    # With the projection to the backbone (not in SigLIP) copied over, image tokens match.
    params["vit"]["to_backbone"] = src["vit"]["to_backbone"]
    want = _image_tokens(True, src, tiny_batch.obs.image)
    np.testing.assert_array_equal(_image_tokens(True, params, tiny_batch.obs.image), want)
    init_tokens = _image_tokens(True, init, tiny_batch.obs.image)
    assert not np.allclose(init_tokens, want)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_gemma_hf_loads_backbone_exactly(tmp_path, tiny_batch, scan_layers):
    src, init = _params(scan_layers, 0), _params(scan_layers, 1)
    path = str(tmp_path / "gemma.safetensors")
    _write_gemma_hf(src, path)
    params, report = pretrained.load_pretrained(init, path, layout="gemma", strict=False)

    layers = "decoder/layers/backbone" if scan_layers else tuple(
        f"decoder/layers_{i}/backbone" for i in range(2))
    backbone = (*np.atleast_1d(layers), "embedder", "decoder/backbone_norm")
    _assert_leaves(params, src, backbone, equal=True)  # exact, RMSNorm (1 + w) included
    expert = "decoder/layers/action_expert" if scan_layers else ("decoder/layers_0/action_exp",)
    _assert_leaves(params, init, ("vit", *np.atleast_1d(expert), "action_in", "time_in"),
                   equal=True)
    assert set(report.skipped) == {"lm_head.weight"} and not report.unused
    assert not report.mismatched and not report.missing
    assert report.loaded["model.layers.1.self_attn.o_proj.weight"] == \
        "decoder/layers_1/backbone/out/kernel"

    # Backbone forward: with the source ViT, caption logits match the source model's.
    params["vit"] = src["vit"]
    model = wallwm.WallWM(_cfg(scan_layers))
    logits = [model.apply({"params": p}, tiny_batch.obs, method=wallwm.WallWM.vlm_caption_logits)
              for p in (params, src)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("src_scan", [True, False])
def test_wallwm_round_trip_across_scan_layouts(tmp_path, src_scan):
    path = str(tmp_path / "ours.safetensors")
    pretrained.save_wallwm(_params(src_scan, 0), path)
    params, report = pretrained.load_pretrained(_params(not src_scan, 1), path,
                                                layout="wallwm", strict=True)
    assert not report.not_covered and not report.unused
    loaded, want = _per_layer(params), _per_layer(_params(src_scan, 0))
    assert loaded.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(loaded[k], want[k], err_msg=k)


def test_unknown_key_is_reported_unused_and_strict_refuses(tmp_path):
    src = _params(True, 0)
    flat = {**_flat(src), "vit/block_0/extra_thing": np.zeros(3, np.float32)}
    path = str(tmp_path / "extra.npz")
    np.savez(path, **flat)
    params, report = pretrained.load_pretrained(_params(True, 1), path, layout="wallwm")
    assert list(report.unused) == ["vit/block_0/extra_thing"]
    np.testing.assert_array_equal(params["vit"]["pos_embedding"], src["vit"]["pos_embedding"])
    with pytest.raises(ValueError, match="vit/block_0/extra_thing"):
        pretrained.load_pretrained(_params(True, 1), path, layout="wallwm", strict=True)


def test_misshaped_key_is_reported_not_loaded_and_strict_names_shapes(tmp_path):
    src, init = _params(True, 0), _params(True, 1)
    path = str(tmp_path / "gemma.safetensors")
    tensors = _write_gemma_hf(src, path)
    bad = "model.layers.1.self_attn.q_proj.weight"  # ours wants [heads * head_dim, D] = (64, 64)
    tensors[bad] = np.ones((48, 64), np.float32)
    safetensors.numpy.save_file(tensors, path)

    params, report = pretrained.load_pretrained(init, path, layout="gemma")
    [m] = report.mismatched
    assert (m.their_key, m.our_path) == (bad, "decoder/layers_1/backbone/query/kernel")
    assert (m.expected, m.found) == ((64, 64), (48, 64))
    assert bad not in report.loaded
    query = params["decoder"]["layers"]["backbone"]["query"]["kernel"]
    np.testing.assert_array_equal(query[0], src["decoder"]["layers"]["backbone"]["query"]
                                  ["kernel"][0])
    np.testing.assert_array_equal(query[1], init["decoder"]["layers"]["backbone"]["query"]
                                  ["kernel"][1])
    assert "decoder/layers/backbone/query/kernel" in report.not_covered
    assert "(48, 64)" in pretrained.describe(report)

    with pytest.raises(ValueError, match=r"q_proj.*\(48, 64\).*expected \(64, 64\)") as err:
        pretrained.load_pretrained(init, path, layout="gemma", strict=True)
    assert path in str(err.value)


def test_missing_layer_is_reported_missing(tmp_path):
    src = _params(False, 0)
    path = str(tmp_path / "gemma.safetensors")
    tensors = _write_gemma_hf(src, path)
    tensors = {k: v for k, v in tensors.items() if "layers.1." not in k}
    safetensors.numpy.save_file(tensors, path)
    _, report = pretrained.load_pretrained(_params(False, 1), path, layout="gemma")
    assert "decoder/layers_1/backbone/mlp/up/kernel" in report.missing
    assert "decoder/layers_0/backbone/mlp/up/kernel" not in report.missing
    with pytest.raises(ValueError, match="no key for our 'decoder/layers_1/backbone"):
        pretrained.load_pretrained(_params(False, 1), path, layout="gemma", strict=True)


def test_missing_file_and_bad_arguments_raise(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        pretrained.load_pretrained(_params(True, 1), missing, layout="gemma")
    with pytest.raises(ValueError, match="layout 'llama'"):
        pretrained.load_pretrained(_params(True, 1), missing, layout="llama")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported extension"):
        pretrained.load_pretrained(_params(True, 1), str(tmp_path / "w.bin"), layout="gemma")


def test_describe_summarises_by_subtree(tmp_path):
    path = str(tmp_path / "siglip.npz")
    _write_big_vision(_params(True, 0), path, stacked=True)
    _, report = pretrained.load_pretrained(_params(True, 1), path, layout="big_vision_siglip")
    text = pretrained.describe(report)
    assert "Transformer/encoderblock/LayerNorm_0/scale[1] -> vit/block_1/ln_attn/scale" in text
    assert "decoder/layers/action_expert: 9 leaves" in text
    assert "vit/to_backbone: 2 leaves" in text
    assert "params/img/MAPHead_0/probe: SigLIP MAP pooling head" in text
