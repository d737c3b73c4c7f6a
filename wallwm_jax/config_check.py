"""Check a whole training config before anything touches data or devices.

`validate(config)` raises `cli.UserError` naming the first bad field, its value and what was
expected, so a typo in an override costs a second, not a dataset load and a compile.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from wallwm_jax.cli import UserError
from wallwm_jax.data.augment import PLACEMENTS
from wallwm_jax.data.checks import check_dataset_fits

MODES = ("event", "unified", "chunk")
OPTIMIZERS = ("adamw", "muon", "optax_muon")  # wallwm_jax.optim.factory.OPTIMIZERS
ADJUST_LR = ("original", "match_rms_adamw", "none", "", None)
NS_DTYPES = ("bfloat16", "float32")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTION = ("auto", "xla", "cudnn", "splash")
DTYPES = ("auto", "bfloat16", "float32", "float16")
CAPTION_MASKS = ("staircase", "causal")
VISION_READOUTS = ("none", "patch_keypoints", "pixel_keypoints")  # models.vit.READOUTS
VISION_STEMS = ("none", "conv")  # models.vit.STEMS
NORM_MODES = ("mean_std", "quantile")
ON_NONFINITE = ("stop", "skip")
MESH_AXES = ("data", "fsdp", "tensor")
# Where a builder puts a dataset: <builder --data_dir>/<builder name>/<config>/<version>/.
DATASET_LAYOUT = "<data_dir>/<builder>/<config>/<version> (e.g. " \
                 "/tmp/data/metaworld_events/demo-e20-i64-s0/1.0.0)"


def validate(config: ml_collections.ConfigDict, *, check_data: bool = True) -> None:
    """Raise `UserError` for the first field the training code would reject or misread.

    `check_data=False` skips the checks that look at the file system (dataset directories),
    e.g. for a sweep's dry run on a machine without the data.
    """
    _choice(config, "mode", MODES)
    _int(config, "seed", low=0)
    _int(config, "total_steps", low=1)
    _int(config, "batch_size", low=1)
    _int(config, "log_every_steps", low=1)
    _int(config, "eval_every_steps", low=0)
    _choice(config, "on_nonfinite", ON_NONFINITE)
    _data(config)
    _model(config)
    _optimizer(config)
    _mesh(config)
    _checkpoint(config)
    _pretrained(config)
    _eval(config)
    if check_data:  # last: every field is checked before the slower look at the disk
        check_datasets(config)


def check_datasets(config: ml_collections.ConfigDict) -> None:
    """Raise `UserError` unless `data.data_dir` (or every `data.mixture` entry) is a built
    dataset whose metadata fits the config: cameras, image size, privileged state, state and
    action widths (read from features.json, before any episode is read or step compiled)."""
    mixture = _get(config, "data.mixture") or ()
    dirs = [d for d, _ in mixture] or [_get(config, "data.data_dir")]
    for j, path in enumerate(dirs):
        field = f"data.mixture[{j}]" if mixture else "data.data_dir"
        check_dataset_dir(path, field)
        try:
            check_dataset_fits(path, config, field)
        except ValueError as err:
            raise UserError(str(err)) from None
    if len(set(dirs)) > 1:
        check_mixture_embodiments(config, dirs)
    check_tokenizer(config, dirs[0])


def check_mixture_embodiments(config: ml_collections.ConfigDict, dirs: list[str]) -> None:
    """Raise `UserError` when two datasets of a mixture claim one embodiment name (an export
    keeps one set of statistics per name), or `data.action_target_gain` is set and no
    dataset's actions are hand displacements."""
    from wallwm_jax.data.checks import dataset_embodiment

    seen: dict[str, tuple[int, str]] = {}
    targets = False
    for j, path in enumerate(dirs):
        try:
            emb = dataset_embodiment(path)
        except ValueError as err:
            raise UserError(str(err)) from None
        targets = targets or emb.position_targets
        if emb.name in seen and seen[emb.name][1] != path:
            k = seen[emb.name][0]
            raise UserError(f"data.mixture[{j}]={path!r}: its embodiment.json names "
                            f"{emb.name!r}, as data.mixture[{k}]={seen[emb.name][1]!r} does; "
                            f"each robot's statistics travel under its name, so give one a "
                            f"distinct 'name' (or build both into one dataset)")
        seen.setdefault(emb.name, (j, path))
    gain = config.data.get("action_target_gain") or 0.0
    if gain and not targets:
        raise UserError(f"config.data.action_target_gain={gain} but no dataset of "
                        f"data.mixture declares a hand position (embodiment.json field "
                        f"'hand_position', delta_ee actions only); set "
                        f"--config.data.action_target_gain=0")


def check_tokenizer(config: ml_collections.ConfigDict, dataset_dir: str) -> None:
    """Raise `UserError` unless the tokenizer the run reads with (`data.tokenizer`, else the
    dataset's) loads and its vocabulary fits `model.vocab_size`."""
    from wallwm_jax.data.sampler import model_tokenizer_path
    from wallwm_jax.data.tokenizer import Tokenizer

    mixture = {d for d, _ in (_get(config, "data.mixture") or ())}
    if len(mixture) > 1 and not config.data.get("tokenizer"):
        return  # the run builds one tokenizer over the mixture and checks it (train.py)
    path = model_tokenizer_path(config.data, dataset_dir)
    field = "config.data.tokenizer" if config.data.get("tokenizer") else "the dataset's tokenizer"
    try:
        tokenizer = Tokenizer(path)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"{field}: {err}") from None
    vocab = _int(config, "model.vocab_size", low=1)
    if tokenizer.vocab_size > vocab:
        raise UserError(f"config.model.vocab_size={vocab} is smaller than {field} "
                        f"({path}: {tokenizer.vocab_size} pieces); set "
                        f"--config.model.vocab_size={tokenizer.vocab_size} or larger")


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise UserError(f"config.{path} is missing (the config has no field '{part}')")
        node = node[part]
    return node


def _bad(path: str, value: Any, expected: str) -> UserError:
    return UserError(f"config.{path}={value!r}: expected {expected}")


def _choice(config: ml_collections.ConfigDict, path: str, choices: Sequence[Any]) -> Any:
    value = _get(config, path)
    if value not in choices:
        raise _bad(path, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def _int(config: ml_collections.ConfigDict, path: str, low: int | None = None) -> int:
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, value, "an integer")
    if low is not None and value < low:
        raise _bad(path, value, f"an integer >= {low}")
    return value


def _number(config: ml_collections.ConfigDict, path: str, low: float | None = None,
            high: float | None = None, *, open_low: bool = False) -> float:
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(path, value, "a finite number")
    if low is not None and (value <= low if open_low else value < low):
        raise _bad(path, value, f"a number {'>' if open_low else '>='} {low}")
    if high is not None and value > high:
        raise _bad(path, value, f"a number <= {high}")
    return float(value)


def _data(config: ml_collections.ConfigDict) -> None:
    layout = _choice(config, "data.layout", MODES)
    if layout != config.mode:
        raise UserError(f"config.mode={config.mode!r} but config.data.layout={layout!r}; "
                        f"choose the mode in the config argument "
                        f"(experiments/pretrain.py:mode={config.mode}) so both agree")
    slots = _int(config, "data.max_captions", low=0)
    want = {"event": slots == 1, "unified": slots >= 2, "chunk": slots == 0}
    if not want[layout]:
        raise _bad("data.max_captions", slots, {"event": "1", "unified": ">= 2",
                                                "chunk": "0"}[layout]
                   + f" for data.layout={layout!r}")
    size = _int(config, "data.image_size", low=1)
    patch = _int(config, "model.patch_size", low=1)
    if size < patch:
        raise UserError(f"config.data.image_size={size} is smaller than one patch "
                        f"(config.model.patch_size={patch})")
    for path in ("data.max_event_len", "data.instruction_len", "data.caption_len",
                 "data.world_size"):
        _int(config, path, low=1)
    _int(config, "data.num_workers", low=0)
    if "read_threads" in config.data:  # configs saved before the field read with the defaults
        _int(config, "data.read_threads", low=0)
        _int(config, "data.read_ahead", low=0)
    _choice(config, "data.norm_mode", NORM_MODES)
    masks = config.data.get("embodiment_masks", False)
    if not isinstance(masks, bool):
        raise _bad("data.embodiment_masks", masks, "True or False")
    if config.data.get("action_target_gain"):
        _number(config, "data.action_target_gain", low=0.0)
        for path in ("model.state_dim", "model.action_dim"):
            if _int(config, path, low=1) < 3:
                raise _bad(path, _get(config, path), ">= 3 with data.action_target_gain > 0 "
                           "(xyz actions and the hand's xyz at state dims 0-2)")
    bins = _get(config, "data.duration_bins")
    if not bins or list(bins) != sorted(set(bins)) or not all(isinstance(b, int) for b in bins):
        raise _bad("data.duration_bins", bins, "increasing integers")
    cameras = _get(config, "data.cameras")
    if not cameras or not all(isinstance(c, str) and c.startswith("image") for c in cameras):
        raise _bad("data.cameras", cameras, "camera features named 'image' or 'image_<name>'")
    alpha = _get(config, "data.balance_alpha")
    if alpha is not None:
        _number(config, "data.balance_alpha", low=0.0)
        _int(config, "data.num_clusters", low=1)
    mixture = _get(config, "data.mixture") or ()
    for j, entry in enumerate(mixture):
        if len(entry) != 2 or not isinstance(entry[0], str) or isinstance(entry[1], bool) \
                or not isinstance(entry[1], int | float) or entry[1] < 0:
            raise _bad(f"data.mixture[{j}]", entry, "(dataset dir, weight >= 0)")
    if mixture and not any(w > 0 for _, w in mixture):
        raise _bad("data.mixture", mixture, "at least one weight > 0")
    privileged = config.data.get("privileged_state", False)
    if not isinstance(privileged, bool):
        raise _bad("data.privileged_state", privileged, "True or False")
    augment = _get(config, "data.augment")
    if augment.get("enabled"):
        _number(config, "data.augment.crop_scale", low=0.0, high=1.0, open_low=True)
        _number(config, "data.augment.jitter", low=0.0)
        if "placement" in augment:  # configs saved before the field run on the host
            _choice(config, "data.augment.placement", PLACEMENTS)


def check_dataset_dir(path: str, field: str = "data.data_dir") -> None:
    """Raise `UserError` unless `path` is a built dataset version (holds dataset_info.json),
    saying what the path holds instead and where a dataset might be."""
    if not path:
        raise UserError(f"config.{field} is not set: pass --config.{field}=DIR, a built "
                        f"dataset's version directory {DATASET_LAYOUT}")
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return
    if not os.path.exists(path):
        raise UserError(f"config.{field}={path!r} does not exist; expected a built dataset's "
                        f"version directory {DATASET_LAYOUT}")
    if not os.path.isdir(path):
        raise UserError(f"config.{field}={path!r} is a file; expected a built dataset's "
                        f"version directory {DATASET_LAYOUT}")
    found = _datasets_below(path)
    hint = (f"; datasets below it: {', '.join(found)}" if found
            else f"; it holds: {', '.join(sorted(os.listdir(path))[:10]) or 'nothing'}")
    raise UserError(f"config.{field}={path!r} holds no built dataset (no dataset_info.json); "
                    f"expected {DATASET_LAYOUT}{hint}")


def _datasets_below(root: str, depth: int = 3) -> list[str]:
    """Version directories (holding dataset_info.json) up to `depth` levels below `root`."""
    found = []
    for here, dirs, files in os.walk(root):
        level = os.path.relpath(here, root).count(os.sep) + (here != root)
        if "dataset_info.json" in files:
            found.append(here)
        if level >= depth:
            dirs.clear()
        dirs.sort()
    return found[:5]


def _model(config: ml_collections.ConfigDict) -> None:
    for path in ("model.vocab_size", "model.state_dim", "model.action_dim", "model.cameras",
                 "model.vit_width", "model.vit_depth", "model.vit_heads", "model.vit_mlp_dim",
                 "model.width", "model.depth", "model.num_heads", "model.num_kv_heads",
                 "model.head_dim", "model.mlp_dim", "model.expert_width",
                 "model.expert_mlp_dim", "model.num_flow_steps"):
        _int(config, path, low=1)
    if config.data.get("privileged_state", False):
        from wallwm_jax.data.tasks import state_dim

        if config.model.state_dim != state_dim(True):
            raise UserError(f"config.data.privileged_state=True gives a {state_dim(True)}-D "
                            f"state (agent state + object and goal positions) but "
                            f"config.model.state_dim={config.model.state_dim}; set "
                            f"--config.model.state_dim={state_dim(True)}")
    model_size, data_size = _get(config, "model.image_size"), config.data.image_size
    if model_size != data_size:
        raise UserError(f"config.model.image_size={model_size!r} but config.data.image_size="
                        f"{data_size}; the model reads the frames the data gives: set "
                        f"--config.data.image_size (model.image_size follows it)")
    cameras = len(config.data.cameras)
    if config.model.cameras != cameras:
        raise UserError(f"config.model.cameras={config.model.cameras} but config.data.cameras "
                        f"has {cameras} ({tuple(config.data.cameras)}); set both")
    if config.model.num_heads % config.model.num_kv_heads:
        raise UserError(f"config.model.num_heads={config.model.num_heads} is not a multiple "
                        f"of config.model.num_kv_heads={config.model.num_kv_heads}")
    _choice(config, "model.remat_policy", REMAT_POLICIES)
    _choice(config, "model.attention", ATTENTION)
    _choice(config, "model.dtype", DTYPES)
    _choice(config, "model.caption_mask", CAPTION_MASKS)
    if "vision_readout" in config.model:
        _choice(config, "model.vision_readout", VISION_READOUTS)
        _int(config, "model.vision_keypoints", low=1)
    if "vision_stem" in config.model:
        _choice(config, "model.vision_stem", VISION_STEMS)
    _number(config, "model.flow_beta_a", low=0.0, open_low=True)
    _number(config, "model.flow_beta_b", low=0.0, open_low=True)
    if "aux_action_weight" in config.model:  # configs saved before the field: no head
        if _number(config, "model.aux_action_weight", low=0.0) > 0:
            steps = _int(config, "model.aux_action_steps", low=1)
            if steps > config.model.max_event_len:
                raise _bad("model.aux_action_steps", steps,
                           f"an integer <= model.max_event_len ({config.model.max_event_len})")
    for name in ("action", "caption", "duration", "world"):
        # Not required finite: a NaN weight is how the on_nonfinite handling is exercised.
        weight = _get(config, f"model.loss_weights.{name}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise _bad(f"model.loss_weights.{name}", weight, "a number >= 0")


def _optimizer(config: ml_collections.ConfigDict) -> None:
    name = _choice(config, "optimizer.name", OPTIMIZERS)
    _number(config, "optimizer.learning_rate", low=0.0, open_low=True)
    _int(config, "optimizer.warmup_steps", low=0)  # clamped to total_steps - 1 by the schedule
    _number(config, "optimizer.weight_decay", low=0.0)
    _number(config, "optimizer.grad_clip", low=0.0)
    _number(config, "optimizer.b1", low=0.0, high=1.0)
    _number(config, "optimizer.b2", low=0.0, high=1.0)
    _number(config, "optimizer.eps", low=0.0)
    if name in ("muon", "optax_muon"):
        _number(config, "optimizer.muon.momentum", low=0.0, high=1.0)
        _int(config, "optimizer.muon.ns_steps", low=1)
        _choice(config, "optimizer.muon.ns_dtype", NS_DTYPES)
        _choice(config, "optimizer.muon.adjust_lr", ADJUST_LR)


def _mesh(config: ml_collections.ConfigDict) -> None:
    mesh = _get(config, "mesh")
    unknown = sorted(set(mesh.keys()) - set(MESH_AXES))
    if unknown:
        raise UserError(f"config.mesh has unknown axes {unknown}; expected {list(MESH_AXES)}")
    sizes = {axis: _int(config, f"mesh.{axis}", low=-1) for axis in MESH_AXES}
    if 0 in sizes.values():
        raise _bad("mesh", sizes, "axis sizes >= 1, or -1 for 'the remaining devices'")
    if sum(v == -1 for v in sizes.values()) > 1:
        raise _bad("mesh", sizes, "at most one axis of size -1")
    for j, rule in enumerate(_get(config, "sharding_rules")):
        axes = rule[1] if len(rule) == 2 else None
        axes = (axes,) if isinstance(axes, str) else axes
        if axes is None or not all(a in MESH_AXES for a in axes):
            raise _bad(f"sharding_rules[{j}]", rule, f"(logical axis, mesh axes from "
                       f"{list(MESH_AXES)})")


def _checkpoint(config: ml_collections.ConfigDict) -> None:
    _int(config, "checkpoint.every_steps", low=1)
    _int(config, "checkpoint.keep", low=1)
    _int(config, "checkpoint.keep_period", low=0)
    if not isinstance(_get(config, "checkpoint.async_save"), bool):
        raise _bad("checkpoint.async_save", config.checkpoint.async_save, "True or False")
    init_from = config.get("init_from") or ""
    if init_from and not os.path.exists(init_from):
        raise UserError(f"config.init_from={init_from!r} does not exist; expected a checkpoint "
                        f"directory or an export bundle")
    for j, entry in enumerate(config.get("init_pretrained") or ()):
        if len(entry) != 2:
            raise _bad(f"init_pretrained[{j}]", entry, "(weights file, layout)")


def _pretrained(config: ml_collections.ConfigDict) -> None:
    """`model.backbone_family` and `model.pretrained` (files exist, layouts known)."""
    spec = config.model.get("pretrained") or {}
    if config.model.get("backbone_family", "wallwm") == "wallwm" and not any(
            spec.get(tower) for tower in ("vision", "backbone")):
        return  # the defaults: nothing to check, and no model import
    from wallwm_jax.models.pretrained import LAYOUTS, read_weights
    from wallwm_jax.models.wallwm import BACKBONE_FAMILIES

    _choice(config, "model.backbone_family", BACKBONE_FAMILIES)
    for tower in ("vision", "backbone"):
        path = spec.get(tower) or ""
        if not path:
            continue
        _choice(config, f"model.pretrained.{tower}_layout", tuple(LAYOUTS))
        if not os.path.exists(path):
            raise UserError(f"model.pretrained.{tower}={path!r} does not exist; expected a "
                            f"weights file (.safetensors, .npz, model.safetensors.index.json) "
                            f"or a Hugging Face model directory")
        try:
            read_weights(path)  # headers only (memory-mapped): a wrong kind of file is named
        except (ValueError, OSError, KeyError) as err:
            raise UserError(f"model.pretrained.{tower}: {err}") from None
    if not isinstance(spec.get("strict", True), bool):
        raise _bad("model.pretrained.strict", spec.strict, "True or False")


def _eval(config: ml_collections.ConfigDict) -> None:
    _int(config, "eval.episodes_per_task", low=1)
    _int(config, "eval.max_steps", low=1)
    _int(config, "eval.num_batches", low=1)
    closed = _get(config, "eval.closed_loop")
    every = _int(config, "eval.closed_loop.every_steps", low=0)
    if every:
        _int(config, "eval.closed_loop.episodes_per_task", low=1)
        from wallwm_jax.evaluation import suites

        if closed.suite not in suites.names():
            raise _bad("eval.closed_loop.suite", closed.suite,
                       "one of " + ", ".join(suites.names()))
        if closed.get("split", "dev") not in suites.SPLITS:
            raise _bad("eval.closed_loop.split", closed.split, " or ".join(suites.SPLITS))
