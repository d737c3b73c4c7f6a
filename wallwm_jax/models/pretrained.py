"""Load pretrained vision-encoder and backbone weights from another project's key layout.

A layout is a table of rules (their key pattern -> our param path, transform). Only what maps
is loaded; `LoadReport` lists what loaded, what in the file was unused, what in our tree kept
its init, and every mis-shaped key (never loaded). See docs/pretrained.md.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

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
    known to have no counterpart in our model (reported as skipped, fine under strict)."""

    prefix: str
    rules: list[Rule]
    skip: tuple[tuple[str, str], ...] = ()


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

# Hugging Face Gemma (v1) safetensors, `model.` or PaliGemma's `language_model.model.` prefix.
# Gemma 2's extra pre/post-feedforward norms have no rule and are reported unused.
_HF_LAYER = "layers.{i}."
_OUR_LAYER = "decoder/layers_{i}/backbone/"
GEMMA_HF = Layout(
    r"^(?:language_model\.)?model\.",
    [Rule("embed_tokens.weight", "embedder/embedding"),
     Rule("norm.weight", "decoder/backbone_norm/scale", GEMMA_RMS_SCALE),
     Rule(_HF_LAYER + "input_layernorm.weight", _OUR_LAYER + "attn_norm/scale", GEMMA_RMS_SCALE),
     Rule(_HF_LAYER + "post_attention_layernorm.weight", _OUR_LAYER + "mlp_norm/scale",
          GEMMA_RMS_SCALE),
     *[Rule(f"{_HF_LAYER}self_attn.{n[0]}_proj.weight", f"{_OUR_LAYER}{n}/kernel", LINEAR_IN_OUT)
       for n in ("query", "key", "value")],
     Rule(_HF_LAYER + "self_attn.o_proj.weight", _OUR_LAYER + "out/kernel", LINEAR_OUT_PROJ),
     *[Rule(f"{_HF_LAYER}mlp.{n}_proj.weight", f"{_OUR_LAYER}mlp/{n}/kernel", LINEAR_IN_OUT)
       for n in ("gate", "up", "down")]],
    skip=((r"^(?:language_model\.)?lm_head\.weight$", "output head, tied to the embedding"),
          (r"rotary_emb\.inv_freq$", "rotary buffer; ours computes it")),
)

# Our own flattened tree (`save_wallwm`), from either scan_layers setting into either.
WALLWM = Layout(
    r"^",
    [Rule("decoder/layers/{rest}", "decoder/layers_{i}/{rest}", stacked=True),
     Rule("vit/blocks/{rest}", "vit/block_{i}/{rest}", stacked=True),
     Rule("{rest}", "{rest}")],
)

LAYOUTS = {"big_vision_siglip": BIG_VISION_SIGLIP, "gemma": GEMMA_HF, "wallwm": WALLWM}


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

    def problems(self) -> list[str]:
        """Every reason `strict=True` refuses, first one first."""
        out = [f"{self.path}: key '{m.their_key}' -> '{m.our_path}' has shape {m.found}, "
               f"expected {m.expected}" for m in self.mismatched]
        out += [f"{self.path}: key '{k}' unused ({why})" for k, why in self.unused.items()]
        out += [f"{self.path}: no key for our '{p}' (layout '{self.layout}')"
                for p in self.missing]
        return out


# -- file I/O ----------------------------------------------------------------------------------
def read_weights(path: str) -> dict[str, np.ndarray]:
    """Flat {key: array} from a `.npz` or `.safetensors` file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if path.endswith(".safetensors"):
        return safetensors.numpy.load_file(path)
    raise ValueError(f"{path}: unsupported extension (expected .npz or .safetensors)")


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


def _match(key: str, prefix: str, rules: list[Rule]) -> tuple[Rule, dict[str, str]] | None:
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
    if layout not in LAYOUTS:
        raise ValueError(f"layout '{layout}' is not one of {sorted(LAYOUTS)}")
    prefix, rules = LAYOUTS[layout].prefix, LAYOUTS[layout].rules
    weights = read_weights(path)
    targets = _layer_targets(params)
    flat = traverse_util.flatten_dict(params, sep="/")
    report = LoadReport(path=path, layout=layout)
    updates: dict[str, list[tuple[int | None, np.ndarray]]] = {}
    loaded_targets: set[str] = set()
    for key in sorted(weights):
        why_skip = next((why for pat, why in LAYOUTS[layout].skip if re.search(pat, key)), None)
        if why_skip is not None:
            report.skipped[key] = why_skip
            continue
        hit = _match(key, prefix, rules)
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
            ours = rule.transform.to_ours(np.asarray(value, np.float32), shape)
            updates.setdefault(real, []).append((layer, ours.astype(flat[real].dtype)))
            loaded_targets.add(virtual)
            report.loaded[shown] = virtual
    ours_patterns = [_template_regex(r.ours) for r in rules]
    report.missing = sorted(v for v in targets if v not in loaded_targets
                            and any(p.match(v) for p in ours_patterns))
    partly_init = {real for v, (real, _, _) in targets.items() if v not in loaded_targets}
    report.not_covered = sorted(partly_init)
    if strict and report.problems():
        raise ValueError(report.problems()[0])
    for real, parts in updates.items():
        flat[real] = _updated_leaf(flat[real], parts)
    return traverse_util.unflatten_dict(flat, sep="/"), report


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
    return "\n".join(lines)
