"""Load pretrained vision-encoder and backbone weights from another project's key layout.

A layout is a table of rules (their key pattern -> our param path, transform). Only what maps
is loaded; `LoadReport` lists what loaded, what in the file was unused, what in our tree kept
its init, and every mis-shaped key (never loaded). See docs/pretrained.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import struct
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from wallwm_jax.models import wallwm

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
    """their array -> ours, given our (per-layer) shape; `their_shape` maps our shape to theirs."""

    name: str
    to_ours: Callable[[np.ndarray, Shape], np.ndarray]
    their_shape: Callable[[Shape], Shape]


IDENTITY = Transform("identity", lambda x, s: x, lambda s: s)
# big_vision keeps a leading batch axis on the learned position embedding: [1, N, D].
DROP_LEADING_1 = Transform("drop leading 1", lambda x, s: x.reshape(s), lambda s: (1, *s))
# torch Linear weight [out, in] -> our DenseGeneral kernel [in, *out_dims].
LINEAR_IN_OUT = Transform("transpose [out,in] -> [in,...]", lambda x, s: x.T.reshape(s),
                          lambda s: (int(np.prod(s[1:])), s[0]))
# torch Linear weight [D, heads*head_dim] -> our out-projection kernel [heads, head_dim, D].
LINEAR_OUT_PROJ = Transform("transpose [D,heads*hd] -> [heads,hd,D]", lambda x, s: x.T.reshape(s),
                            lambda s: (s[-1], int(np.prod(s[:-1]))))
# torch Linear bias [heads*hd] -> our per-head bias [heads, hd].
FLAT_TO_HEADS = Transform("reshape [heads*hd] -> [heads,hd]", lambda x, s: x.reshape(s),
                          lambda s: (int(np.prod(s)),))
# torch Conv2d weight [out, in, kh, kw] -> flax Conv kernel [kh, kw, in, out].
CONV_OIHW = Transform("transpose [out,in,kh,kw] -> [kh,kw,in,out]",
                      lambda x, s: x.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1]))
# Gemma's RMSNorm multiplies by (1 + w); ours (flax nn.RMSNorm) multiplies by scale.
GEMMA_RMS_SCALE = Transform("RMSNorm scale = 1 + w", lambda x, s: np.float32(1.0) + x,
                            lambda s: s)


@dataclasses.dataclass(frozen=True)
class Rule:
    """`theirs`/`ours` are templates where `{i}` is a layer index; `stacked`: their array has a
    leading layer axis (big_vision's scanned `encoderblock`), split over our layers."""

    theirs: str
    ours: str
    transform: Transform = IDENTITY
    stacked: bool = False


@dataclasses.dataclass(frozen=True)
class Layout:
    """`prefix`: regex before every rule's key; `skip`: (regex, why) for their keys that are
    known to have no counterpart in our model (reported as skipped, fine under strict).
    `more`: further (prefix, rules) parts of a file holding several towers (PaliGemma).
    `model_fields`: `config.model` fields the weights need to compute their home library's
    function (`model_fields(layout)`; training from `config.model.pretrained` sets them)."""

    prefix: str
    rules: list[Rule]
    skip: tuple[tuple[str, str], ...] = ()
    more: tuple[tuple[str, list[Rule]], ...] = ()
    model_fields: tuple[tuple[str, Any], ...] = ()

    @property
    def parts(self) -> tuple[tuple[str, list[Rule]], ...]:
        return ((self.prefix, self.rules), *self.more)


def _bv_block_rules() -> list[Rule]:
    pairs = [("LayerNorm_0", "ln_attn"), ("LayerNorm_1", "ln_mlp"),
             ("MlpBlock_0/Dense_0", "mlp_in"), ("MlpBlock_0/Dense_1", "mlp_out")]
    pairs += [(f"MultiHeadDotProductAttention_0/{n}", n) for n in ("query", "key", "value", "out")]
    rules = []
    for theirs, ours in pairs:
        for leaf in (("scale", "bias") if "LayerNorm" in theirs else ("kernel", "bias")):
            rules.append(Rule(f"Transformer/encoderblock_{{i}}/{theirs}/{leaf}",
                              f"vit/block_{{i}}/{ours}/{leaf}"))
            rules.append(Rule(f"Transformer/encoderblock/{theirs}/{leaf}",
                              f"vit/block_{{i}}/{ours}/{leaf}", stacked=True))
    return rules


# big_vision SigLIP image tower (`params/img/...` in a SigLIP .npz; plain ViT .npz without the
# prefix). Our vit/to_backbone has no counterpart in SigLIP and keeps its init.
BIG_VISION_SIGLIP = Layout(
    r"^(?:params/)?(?:img/)?",
    [Rule("embedding/kernel", "vit/patch_embed/kernel"),
     Rule("embedding/bias", "vit/patch_embed/bias"),
     Rule("pos_embedding", "vit/pos_embedding", DROP_LEADING_1),
     Rule("Transformer/encoder_norm/scale", "vit/ln_final/scale"),
     Rule("Transformer/encoder_norm/bias", "vit/ln_final/bias"),
     *_bv_block_rules()],
    skip=((r"^(?:params/)?(?:img/)?MAPHead_0/", "SigLIP MAP pooling head; our ViT has none"),
          (r"^(?:params/)?(?:img/)?head/", "classifier/projection head; our ViT has none"),
          (r"^(?:params/)?txt/", "SigLIP text tower"),
          (r"^(?:params/)?[tb]$", "SigLIP logit temperature/bias")),
)

def _hf_siglip_rules() -> list[Rule]:
    """Hugging Face SiglipVisionTransformer keys (after `vision_model.`) -> our ViT."""
    rules = [Rule("embeddings.patch_embedding.weight", "vit/patch_embed/kernel", CONV_OIHW),
             Rule("embeddings.patch_embedding.bias", "vit/patch_embed/bias"),
             Rule("embeddings.position_embedding.weight", "vit/pos_embedding"),
             Rule("post_layernorm.weight", "vit/ln_final/scale"),
             Rule("post_layernorm.bias", "vit/ln_final/bias")]
    theirs, ours = "encoder.layers.{i}.", "vit/block_{i}/"
    for hf, our in (("layer_norm1", "ln_attn"), ("layer_norm2", "ln_mlp")):
        rules += [Rule(f"{theirs}{hf}.weight", f"{ours}{our}/scale"),
                  Rule(f"{theirs}{hf}.bias", f"{ours}{our}/bias")]
    for n in ("query", "key", "value"):
        rules += [Rule(f"{theirs}self_attn.{n[0]}_proj.weight", f"{ours}{n}/kernel", LINEAR_IN_OUT),
                  Rule(f"{theirs}self_attn.{n[0]}_proj.bias", f"{ours}{n}/bias", FLAT_TO_HEADS)]
    rules += [Rule(f"{theirs}self_attn.out_proj.weight", f"{ours}out/kernel", LINEAR_OUT_PROJ),
              Rule(f"{theirs}self_attn.out_proj.bias", f"{ours}out/bias")]
    for hf, our in (("fc1", "mlp_in"), ("fc2", "mlp_out")):
        rules += [Rule(f"{theirs}mlp.{hf}.weight", f"{ours}{our}/kernel", LINEAR_IN_OUT),
                  Rule(f"{theirs}mlp.{hf}.bias", f"{ours}{our}/bias")]
    return rules


def _hf_gemma_rules() -> list[Rule]:
    """Hugging Face GemmaModel keys (after `model.`) -> our backbone."""
    layer, ours = "layers.{i}.", "decoder/layers_{i}/backbone/"
    return [
        Rule("embed_tokens.weight", "embedder/embedding"),
        Rule("norm.weight", "decoder/backbone_norm/scale", GEMMA_RMS_SCALE),
        Rule(layer + "input_layernorm.weight", ours + "attn_norm/scale", GEMMA_RMS_SCALE),
        Rule(layer + "post_attention_layernorm.weight", ours + "mlp_norm/scale",
             GEMMA_RMS_SCALE),
        *[Rule(f"{layer}self_attn.{n[0]}_proj.weight", f"{ours}{n}/kernel", LINEAR_IN_OUT)
          for n in ("query", "key", "value")],
        Rule(layer + "self_attn.o_proj.weight", ours + "out/kernel", LINEAR_OUT_PROJ),
        *[Rule(f"{layer}mlp.{n}_proj.weight", f"{ours}mlp/{n}/kernel", LINEAR_IN_OUT)
          for n in ("gate", "up", "down")]]


_GEMMA_FIELDS = (("backbone_family", "gemma"),)  # token embeddings times sqrt(width)
_ROTARY_SKIP = (r"rotary_emb\.inv_freq$", "rotary buffer; ours computes it")

# Hugging Face Gemma (v1) safetensors: `model.`, or a PaliGemma file's language model
# (`language_model.model.`, or `model.language_model.` as newer transformers name it).
# Gemma 2's extra pre/post-feedforward norms have no rule and are reported unused.
GEMMA_HF = Layout(
    r"^(?:language_model\.model\.|model\.language_model\.|model\.)",
    _hf_gemma_rules(),
    skip=((r"^(?:language_model\.)?lm_head\.weight$", "output head, tied to the embedding"),
          _ROTARY_SKIP),
    model_fields=_GEMMA_FIELDS,
)

# Hugging Face SigLIP: the `vision_model.` keys of a SiglipModel or SiglipVisionModel on the
# Hub (transformers 5 saves a SiglipVisionModel without the prefix). Our vit/to_backbone has
# no counterpart in SigLIP and keeps its init.
SIGLIP_HF = Layout(
    r"^(?:vision_model\.)?",
    _hf_siglip_rules(),
    skip=((r"^(?:vision_model\.)?head\.", "SigLIP MAP pooling head; our ViT has none"),
          (r"^text_model\.", "SigLIP text tower"),
          (r"^logit_(?:scale|bias)$", "SigLIP logit temperature/bias"),
          (r"position_ids$", "position index buffer")),
)

# Hugging Face PaliGemma: SigLIP vision tower, the linear `multi_modal_projector` (our
# vit/to_backbone) and the Gemma language model. Keys as on the Hub
# (`vision_tower.vision_model.`, `language_model.model.`) or as transformers 5 saves them
# (`vision_tower.` without `vision_model.`; `model.` in front of each tower).
PALIGEMMA_HF = Layout(
    r"^(?:model\.)?vision_tower\.(?:vision_model\.)?",
    _hf_siglip_rules(),
    skip=((r"^(?:language_model\.)?lm_head\.weight$", "output head, tied to the embedding"),
          (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?head\.",
           "SigLIP MAP pooling head; our ViT has none"),
          (r"position_ids$", "position index buffer"), _ROTARY_SKIP),
    more=((r"^(?:model\.)?multi_modal_projector\.",
           [Rule("linear.weight", "vit/to_backbone/kernel", LINEAR_IN_OUT),
            Rule("linear.bias", "vit/to_backbone/bias")]),
          (r"^(?:language_model\.model\.|model\.language_model\.)", _hf_gemma_rules())),
    model_fields=_GEMMA_FIELDS,
)

# Our own flattened tree (`save_wallwm`), from either scan_layers setting into either.
WALLWM = Layout(
    r"^",
    [Rule("decoder/layers/{rest}", "decoder/layers_{i}/{rest}", stacked=True),
     Rule("vit/blocks/{rest}", "vit/block_{i}/{rest}", stacked=True),
     Rule("{rest}", "{rest}")],
)

LAYOUTS = {"big_vision_siglip": BIG_VISION_SIGLIP, "siglip": SIGLIP_HF, "gemma": GEMMA_HF,
           "paligemma": PALIGEMMA_HF, "wallwm": WALLWM}


def model_fields(layout: str) -> dict[str, Any]:
    """The `config.model` fields weights of `layout` need (e.g. Gemma's embedding scale)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout '{layout}' is not one of {sorted(LAYOUTS)}")
    return dict(LAYOUTS[layout].model_fields)


@dataclasses.dataclass
class Mismatch:
    their_key: str
    our_path: str
    expected: Shape  # in their layout
    found: Shape


@dataclasses.dataclass
class LoadReport:
    """What `load_pretrained` did; paths of scanned layers read `decoder/layers_{i}/...`."""

    path: str
    layout: str
    loaded: dict[str, str] = dataclasses.field(default_factory=dict)  # their key -> our path
    unused: dict[str, str] = dataclasses.field(default_factory=dict)  # their key -> why
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # known extras -> why
    mismatched: list[Mismatch] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)  # in the layout, not in file
    not_covered: list[str] = dataclasses.field(default_factory=list)  # our leaves kept at init
    model_fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # config they need

    def problems(self) -> list[str]:
        """Every reason `strict=True` refuses, first one first."""
        out = [f"{self.path}: key '{m.their_key}' -> '{m.our_path}' has shape {m.found}, "
               f"expected {m.expected}" for m in self.mismatched]
        out += [f"{self.path}: key '{k}' unused ({why})" for k, why in self.unused.items()]
        out += [f"{self.path}: no key for our '{p}' (layout '{self.layout}')"
                for p in self.missing]
        return out


# -- file I/O ----------------------------------------------------------------------------------
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": jnp.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """{key: array} memory-mapped from one safetensors file (bfloat16 included, which
    `safetensors.numpy` cannot read); arrays are read from disk only when used."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, np.uint8, mode="r", offset=8 + n)
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: key '{key}' has dtype {info['dtype']}, not one of "
                             f"{sorted(_ST_DTYPES)}")
        start, end = info["data_offsets"]
        out[key] = data[start:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def _resolve(path: str) -> str:
    """A Hugging Face model directory -> its `model.safetensors` or sharded index."""
    if os.path.isdir(path):
        for name in ("model.safetensors", "model.safetensors.index.json"):
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    return path


def read_weights(path: str) -> dict[str, np.ndarray]:
    """Flat {key: array} from a `.npz`, a `.safetensors`, a sharded safetensors index
    (`model.safetensors.index.json`: its `weight_map` names each key's shard) or a Hugging
    Face model directory holding one of the last two."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    path = _resolve(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith(".index.json"):
        with open(path) as f:
            weight_map = json.load(f)["weight_map"]
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            tensors = _read_safetensors(os.path.join(os.path.dirname(path), shard))
            out.update({k: v for k, v in tensors.items() if weight_map.get(k) == shard})
        if missing := sorted(set(weight_map) - set(out)):
            raise ValueError(f"{path}: key '{missing[0]}' is in weight_map but not in its "
                             f"shard '{weight_map[missing[0]]}'")
        return out
    raise ValueError(f"{path}: unsupported extension (expected .npz, .safetensors or "
                     f".safetensors.index.json)")


def save_wallwm(params: Any, path: str) -> None:
    """Write our param tree with '/'-joined keys (layout 'wallwm'), `.npz` or `.safetensors`."""
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    if path.endswith(".npz"):
        np.savez(path, **flat)
    elif path.endswith(".safetensors"):
        safetensors.numpy.save_file(flat, path)
    else:
        raise ValueError(f"{path}: unsupported extension (expected .npz or .safetensors)")


# -- mapping -----------------------------------------------------------------------------------
# Scanned stacks (leading layer axis) -> the per-layer prefix of the unscanned layout.
_STACKS = {"decoder/layers/": "decoder/layers_", "vit/blocks/": "vit/block_"}


def _layer_targets(params: Any) -> dict[str, tuple[str, int | None, Shape]]:
    """Our leaves, with scanned layers split: virtual path -> (real path, layer or None, shape)."""
    out = {}
    for path, leaf in traverse_util.flatten_dict(params, sep="/").items():
        stacked = next((s for s in _STACKS if path.startswith(s)), None)
        if stacked is not None:
            rest = path.removeprefix(stacked)
            for i in range(leaf.shape[0]):
                out[f"{_STACKS[stacked]}{i}/{rest}"] = (path, i, tuple(leaf.shape[1:]))
        else:
            out[path] = (path, None, tuple(leaf.shape))
    return out


@functools.cache
def _template_regex(template: str, prefix: str = "^") -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(prefix + pattern.replace(r"\{rest\}", r"(?P<rest>.+)") + "$")


def _match(key: str, layout: Layout) -> tuple[Rule, dict[str, str]] | None:
    for prefix, rules in layout.parts:
        for rule in rules:
            m = _template_regex(rule.theirs, prefix).match(key)
            if m:
                return rule, m.groupdict()
    return None


def _entries(key: str, value: np.ndarray, rule: Rule, groups: dict[str, str]):
    """(display key, our virtual path, array) per layer the key holds."""
    if not rule.stacked:
        yield key, rule.ours.format(**groups), value
        return
    for i in range(value.shape[0]):
        yield f"{key}[{i}]", rule.ours.format(i=i, **groups), value[i]


def load_pretrained(params: Any, path: str, *, layout: str,
                    strict: bool = False) -> tuple[Any, LoadReport]:
    """Copy of `params` with every mappable key of `path` loaded; the rest keep their values."""
    report, updates = _plan(params, path, layout, strict=strict, read=True)
    flat = traverse_util.flatten_dict(params, sep="/")
    for real, parts in updates.items():
        flat[real] = _updated_leaf(flat[real], parts)
    return traverse_util.unflatten_dict(flat, sep="/"), report


def check_pretrained(abstract_params: Any, path: str, *, layout: str,
                     strict: bool = False) -> LoadReport:
    """The report `load_pretrained` would give, from our param shapes alone (e.g.
    `jax.eval_shape` of `init_params`): nothing compiles and no array is read."""
    return _plan(abstract_params, path, layout, strict=strict, read=False)[0]


def _plan(params: Any, path: str, layout: str, *, strict: bool, read: bool
          ) -> tuple[LoadReport, dict[str, list[tuple[int | None, np.ndarray]]]]:
    """Match every key of `path` to our leaves; `read`: also convert the arrays to load."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout '{layout}' is not one of {sorted(LAYOUTS)}")
    spec = LAYOUTS[layout]
    weights = read_weights(path)
    targets = _layer_targets(params)
    flat = traverse_util.flatten_dict(params, sep="/")
    report = LoadReport(path=path, layout=layout, model_fields=dict(spec.model_fields))
    updates: dict[str, list[tuple[int | None, np.ndarray]]] = {}
    loaded_targets: set[str] = set()
    for key in sorted(weights):
        why_skip = next((why for pat, why in spec.skip if re.search(pat, key)), None)
        if why_skip is not None:
            report.skipped[key] = why_skip
            continue
        hit = _match(key, spec)
        if hit is None:
            report.unused[key] = "no rule in this layout"
            continue
        rule, groups = hit
        for shown, virtual, value in _entries(key, weights[key], rule, groups):
            if virtual not in targets:
                report.unused[shown] = f"our model has no '{virtual}'"
                continue
            if virtual in loaded_targets:
                report.unused[shown] = f"'{virtual}' already loaded from another key"
                continue
            real, layer, shape = targets[virtual]
            expected = rule.transform.their_shape(shape)
            if tuple(value.shape) != expected:
                report.mismatched.append(Mismatch(shown, virtual, expected, tuple(value.shape)))
                continue
            if read:
                ours = rule.transform.to_ours(np.asarray(value, np.float32), shape)
                updates.setdefault(real, []).append((layer, ours.astype(flat[real].dtype)))
            loaded_targets.add(virtual)
            report.loaded[shown] = virtual
    ours_patterns = [_template_regex(r.ours) for _, rules in spec.parts for r in rules]
    report.missing = sorted(v for v in targets if v not in loaded_targets
                            and any(p.match(v) for p in ours_patterns))
    partly_init = {real for v, (real, _, _) in targets.items() if v not in loaded_targets}
    report.not_covered = sorted(partly_init)
    if strict and report.problems():
        raise ValueError(report.problems()[0])
    return report, updates


def _updated_leaf(old: Any, parts: list[tuple[int | None, np.ndarray]]) -> jax.Array:
    """`old` with the loaded parts written in (whole leaf, or single layers of a stack)."""
    if len(parts) == 1 and parts[0][0] is None:
        new = parts[0][1]
    else:
        new = np.array(old)
        for layer, value in parts:
            new[layer] = value
    sharding = getattr(old, "sharding", None)
    return jax.device_put(new, sharding) if sharding is not None else jnp.asarray(new)


# -- summary -----------------------------------------------------------------------------------
def _subtree(path: str) -> str:
    parts = path.split("/")
    depth = 3 if len(parts) > 3 and re.fullmatch(r"layers(_\d+)?", parts[1]) else 2
    return "/".join(parts[:min(depth, len(parts) - 1)] or parts)


def describe(report: LoadReport) -> str:
    """Readable multi-line summary of a LoadReport."""
    lines = [f"load_pretrained({report.path!r}, layout={report.layout!r})",
             f"  loaded: {len(report.loaded)} keys"]
    lines += [f"    {k} -> {v}" for k, v in report.loaded.items()]
    lines.append(f"  mis-shaped (not loaded): {len(report.mismatched)}")
    lines += [f"    {m.their_key} -> {m.our_path}: expected {m.expected}, found {m.found}"
              for m in report.mismatched]
    lines.append(f"  skipped (known to have no counterpart here): {len(report.skipped)}")
    lines += [f"    {k}: {why}" for k, why in report.skipped.items()]
    lines.append(f"  unused keys in file: {len(report.unused)}")
    lines += [f"    {k}: {why}" for k, why in report.unused.items()]
    lines.append(f"  missing from file (layout expects them): {len(report.missing)}")
    lines += [f"    {p}" for p in report.missing]
    groups: dict[str, int] = {}
    for p in report.not_covered:
        groups[_subtree(p)] = groups.get(_subtree(p), 0) + 1
    lines.append(f"  our params left at init: {len(report.not_covered)} leaves")
    lines += [f"    {g}: {n} leaves" for g, n in sorted(groups.items())]
    if report.model_fields:
        fields = ", ".join(f"model.{k}={v!r}" for k, v in report.model_fields.items())
        lines.append(f"  needs config: {fields}")
    return "\n".join(lines)


# -- config.model.pretrained (training starts from these) ------------------------------------
def configured(model_cfg: Any) -> list[tuple[str, str]]:
    """(path, layout) of each tower `config.model.pretrained` names, vision first."""
    spec = model_cfg.get("pretrained") or {}
    return [(spec[tower], spec[f"{tower}_layout"]) for tower in ("vision", "backbone")
            if spec.get(tower)]


def configure(model_cfg: Any) -> dict[str, Any]:
    """Set in `model_cfg` (a mutable config.model) the fields the layouts of
    `config.model.pretrained` need (`model_fields`); returns the fields set."""
    fields: dict[str, Any] = {}
    for path, layout in configured(model_cfg):
        for key, value in model_fields(layout).items():
            if fields.get(key, value) != value:
                raise ValueError(f"model.pretrained: {path} (layout '{layout}') needs "
                                 f"model.{key}={value!r}, another file needs {fields[key]!r}")
            fields[key] = value
    model_cfg.update(fields)
    return fields


def load_configured(params: Any, model_cfg: Any) -> tuple[Any, list[LoadReport]]:
    """`params` with every file of `config.model.pretrained` loaded (its `strict`)."""
    strict = bool((model_cfg.get("pretrained") or {}).get("strict", True))
    reports = []
    for path, layout in configured(model_cfg):
        params, report = load_pretrained(params, path, layout=layout, strict=strict)
        reports.append(report)
    return params, reports


# -- the towers alone (checking an import against its home library) ---------------------------
def text_hidden_states(model_cfg: Any, params: Any, tokens: jax.Array) -> jax.Array:
    """The backbone as a causal language model: int token ids [B, T] -> final-norm hidden
    states [B, T, width] (positions 0..T-1, embedding as `model.backbone_family`'s home
    library does it, all layers; no image, no action expert). Logits: `WallWM.lm_logits`."""
    return _text_hidden_states(wallwm._frozen(model_cfg), params,
                               jnp.asarray(tokens, jnp.int32))


def image_embeddings(model_cfg: Any, params: Any, images: jax.Array) -> jax.Array:
    """The vision tower's output tokens [B, N, vit_width] for uint8 images [B, H, W, 3] (as
    `Observation.image`, scaled to [-1, 1] as SigLIP's processor does), before
    `vit/to_backbone` projects them into the backbone."""
    return _image_embeddings(wallwm._frozen(model_cfg), params, jnp.asarray(images))


@functools.partial(jax.jit, static_argnums=0)
def _text_hidden_states(cfg: Any, params: Any, tokens: jax.Array) -> jax.Array:
    return wallwm.WallWM(cfg).apply({"params": params}, tokens,
                                    method=wallwm.WallWM.text_hidden_states)


@functools.partial(jax.jit, static_argnums=0)
def _image_embeddings(cfg: Any, params: Any, images: jax.Array) -> jax.Array:
    return wallwm.WallWM(cfg).apply({"params": params}, images,
                                    method=wallwm.WallWM.image_embeddings)


# -- the model config a Hugging Face checkpoint needs -----------------------------------------
_GEMMA_TYPES, _SIGLIP_TYPES = ("gemma",), ("siglip_vision_model", "siglip")
# transformers' defaults (GemmaConfig, SiglipVisionConfig): a Hub config.json leaves out
# what equals them (PaliGemma's text_config has no head_dim, its vision_config no image_size).
_GEMMA_DEFAULTS = {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
                   "num_hidden_layers": 28, "num_attention_heads": 16, "head_dim": 256}
_SIGLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "image_size": 224, "patch_size": 16}


def _check_hf(cfg: dict[str, Any], where: str, key: str, allowed: tuple[Any, ...]) -> None:
    value = cfg.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(f"{where}: {key}={value!r} is not supported here (expected one of "
                         f"{list(allowed)})")


def _gemma_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    if cfg.get("model_type", "gemma") not in _GEMMA_TYPES:
        raise ValueError(f"{where}: model_type={cfg.get('model_type')!r}; only Gemma (v1) "
                         f"backbones have a layout (expected one of {list(_GEMMA_TYPES)})")
    _check_hf(cfg, where, "hidden_act", ("gelu_pytorch_tanh", "gelu"))
    _check_hf(cfg, where, "hidden_activation", (None, "gelu_pytorch_tanh"))
    _check_hf(cfg, where, "rms_norm_eps", (1e-6,))
    rope = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    _check_hf({"rope_theta": rope}, where, "rope_theta", (10000.0,))
    cfg = {**_GEMMA_DEFAULTS, **cfg}
    return {"vocab_size": cfg["vocab_size"], "width": cfg["hidden_size"],
            "depth": cfg["num_hidden_layers"], "num_heads": cfg["num_attention_heads"],
            "num_kv_heads": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            "head_dim": cfg["head_dim"],
            "mlp_dim": cfg["intermediate_size"], "tie_embeddings": True,
            "backbone_family": "gemma"}


def _siglip_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    _check_hf(cfg, where, "hidden_act", ("gelu_pytorch_tanh",))
    _check_hf(cfg, where, "layer_norm_eps", (1e-6,))
    cfg = {**_SIGLIP_DEFAULTS, **cfg}
    return {"vit_width": cfg["hidden_size"], "vit_depth": cfg["num_hidden_layers"],
            "vit_heads": cfg["num_attention_heads"], "vit_mlp_dim": cfg["intermediate_size"],
            "patch_size": cfg["patch_size"], "image_size": cfg["image_size"]}


def hf_model_fields(path: str) -> dict[str, Any]:
    """The `config.model` fields that reproduce a Hugging Face Gemma, SigLIP or PaliGemma
    checkpoint: read from the `config.json` in `path` (a model directory) or beside it (a
    weights file). Raises ValueError naming an option our model does not implement."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    where = os.path.join(folder, "config.json")
    if not os.path.exists(where):
        raise FileNotFoundError(f"{where}: no config.json beside the weights")
    with open(where) as f:
        cfg = json.load(f)
    kind = cfg.get("model_type")
    if kind == "paligemma":
        return {**_siglip_fields(cfg["vision_config"], where + " vision_config"),
                **_gemma_fields(cfg["text_config"], where + " text_config")}
    if kind in _SIGLIP_TYPES:
        return _siglip_fields(cfg.get("vision_config", cfg), where)
    return _gemma_fields(cfg, where)
