"""WALL-WM pretraining config: `experiments/pretrain.py:size=tiny,mode=event[,recipe=cpu]`.

`arg` only switches things that change several fields at once (model size, training mode,
recipe); single fields are overridden on the command line (`--config.total_steps=100`).
`recipe=cpu` is the CPU-scale studies' recipe (experiments/results/): 32-px images, privileged
simulator state (10-D state), an action expert of width 64, Tmax 16, peak learning rate 2e-3,
1,500 steps. `recipe=demo` is the demo's: `cpu` with position-target actions
(`data.action_target_gain` 10), Tmax 8 and no image augmentation (docs/demo.md says why).
`recipe=pixels` acts from pixels: `demo` without privileged state (4-D agent state), with
48-px images from the scene camera and the gripper camera (docs/pixels.md says why).
"""

from __future__ import annotations

import ml_collections

from wallwm_jax.config_args import parse_config_arg
from wallwm_jax.data.tasks import state_dim

# Model sizes. `base` is about pi0's scale (So400m-class ViT, ~2B backbone, ~300M expert);
# `large` has a ~7B backbone and exists for pod-scale (AOT) checks.
_SIZES = {
    "tiny": dict(patch=8, vit_width=64, vit_depth=2, vit_heads=2, vit_mlp=128,
                 width=64, depth=2, heads=2, kv_heads=1, head_dim=32, mlp=128,
                 expert_width=32, expert_mlp=64),
    "small": dict(patch=16, vit_width=384, vit_depth=6, vit_heads=6, vit_mlp=1536,
                  width=768, depth=8, heads=12, kv_heads=4, head_dim=64, mlp=3072,
                  expert_width=384, expert_mlp=1536),
    "base": dict(patch=14, vit_width=1152, vit_depth=27, vit_heads=16, vit_mlp=4304,
                 width=2048, depth=18, heads=8, kv_heads=1, head_dim=256, mlp=16384,
                 expert_width=1024, expert_mlp=4096),
    # PaliGemma 3B (224 px): SigLIP So400m/14 + Gemma 2B with its 257,216-token vocabulary;
    # the sizes Hugging Face's paligemma-3b-pt-224 loads into (docs/pretrained.md).
    "paligemma": dict(patch=14, vit_width=1152, vit_depth=27, vit_heads=16, vit_mlp=4304,
                      width=2048, depth=18, heads=8, kv_heads=1, head_dim=256, mlp=16384,
                      expert_width=1024, expert_mlp=4096, vocab=257_216, image_size=224),
    "large": dict(patch=14, vit_width=1152, vit_depth=27, vit_heads=16, vit_mlp=4304,
                  width=4096, depth=32, heads=32, kv_heads=8, head_dim=128, mlp=14336,
                  expert_width=2048, expert_mlp=8192),
}


# Caption slots per sample by mode: event mode conditions on one given caption; unified mode
# decodes the current event's caption and the next one (Staircase); chunk has none.
_MAX_CAPTIONS = {"event": 1, "unified": 2, "chunk": 0}


# The `arg` switches, their defaults and the values each takes.
_ARG_DEFAULTS = {"size": "tiny", "mode": "event", "recipe": "default"}
_ARG_CHOICES = {"size": tuple(_SIZES), "mode": tuple(_MAX_CAPTIONS),
                "recipe": ("default", "cpu", "demo", "pixels")}


def apply_cpu_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The demo's recipe: what a tiny model needs to act in MetaWorld after minutes on a CPU
    (docs/demo.md says why each field is set so). Mutates and returns `config`."""
    config.total_steps = 1500
    config.batch_size = 32
    config.optimizer.learning_rate = 2e-3
    config.data.image_size = 32
    config.data.privileged_state = True
    config.model.state_dim = state_dim(True)
    config.model.expert_width = 64
    config.model.expert_mlp_dim = 128
    config.data.max_event_len = 16  # model.max_event_len follows (a reference)
    config.checkpoint.every_steps = config.total_steps // 4
    return config


def apply_demo_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The demo's recipe: `recipe=cpu` plus what made push succeed at unseen positions on the
    demo's budget (docs/demo.md): the model predicts the expert controller's position targets
    (gain 10, MetaWorld's), chunks of at most 8 steps and no image augmentation (both make a
    step cheaper, which pays for computing the targets' statistics). Mutates and returns
    `config`."""
    apply_cpu_recipe(config)
    config.data.action_target_gain = 10.0
    config.data.max_event_len = 8
    config.data.augment.enabled = False
    return config


def apply_pixels_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The recipe of policies that act from pixels (docs/pixels.md): `recipe=demo` with what
    a real robot reports, the 4-D agent state (hand xyz, gripper), and what makes objects
    visible at CPU cost (experiments/results/pixels/visibility.md): 48-px images from the
    scene camera (corner2, the view `mt10_seen` renders) and the gripper camera, where the
    puck, the push goal, drawer and peg cover 15-90 pixels at the first frame against 1 in the
    scene view. Datasets: the builder's `--image_size 48 --cameras gripper`, no
    `--privileged_state`. Mutates and returns `config`."""
    apply_demo_recipe(config)
    config.data.privileged_state = False
    config.model.state_dim = state_dim(False)
    config.data.image_size = 48  # model.image_size follows (a reference)
    config.data.cameras = ("image", "image_gripper")
    config.model.cameras = len(config.data.cameras)
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Return the full training config for the given `size=...,mode=...` switches."""
    args = parse_config_arg(arg, _ARG_DEFAULTS, _ARG_CHOICES)
    s = _SIZES[args["size"]]
    config = ml_collections.ConfigDict()
    config.size = args["size"]
    config.mode = args["mode"]
    config.seed = 0
    config.total_steps = 300
    config.batch_size = 32
    config.log_every_steps = 10
    config.eval_every_steps = 0  # 0: evaluate only at the end
    config.on_nonfinite = "stop"  # NaN/Inf loss: "stop" (name step and terms) or "skip"
    config.init_from = ""
    # ((weights file, layout), ...) loaded over the init: layouts big_vision_siglip, gemma,
    # wallwm (see wallwm_jax/models/pretrained.py); applied only when starting from scratch.
    config.init_pretrained = ()

    config.data = ml_collections.ConfigDict()
    config.data.data_dir = ""
    config.data.builder_config = "demo"
    config.data.image_size = s.get("image_size", 64)
    # Camera features fed to the model, in order: "image" (scene) and/or "image_<name>"
    # (e.g. "image_gripper" from a builder run with that camera).
    config.data.cameras = ("image",)
    config.data.max_event_len = 32  # Tmax: longest chunk of an event predicted at once
    config.data.instruction_len = 32
    config.data.caption_len = 32
    config.data.world_size = 16  # side of the low-resolution event-end frame
    config.data.duration_bins = (1, 2, 4, 8, 12, 16, 24, 32)  # upper edges (inclusive)
    config.data.norm_mode = "mean_std"  # or "quantile"
    # 0: the model predicts the recorded actions. g > 0: their xyz (dims 0-2) are taken as a
    # gain-g proportional controller's output toward a target, a = g * (target - hand), with
    # the hand at state dims 0-2; the model predicts the targets and every executed step turns
    # its target into g * (target - hand) at the current hand (docs/data.md). MetaWorld's
    # scripted experts use gain 10.
    config.data.action_target_gain = 0.0
    # Sample layout = training mode: "event" (rest of one event, given caption), "unified"
    # (Tmax steps across events, Staircase captions), "chunk" (Tmax steps, no language).
    config.data.layout = args["mode"]
    config.data.max_captions = _MAX_CAPTIONS[args["mode"]]  # caption slots per sample
    # Cluster-balanced event sampling (docs/data.md): cluster c with n_c events gets
    # mass ~ n_c ** alpha (1: events uniform, 0: clusters uniform; None: uniform, no index).
    config.data.balance_alpha = 0.5
    config.data.num_clusters = 16  # k-means clusters of the stored event index
    # Dataset mixture: ((dataset dir, weight), ...); empty = data_dir alone. Datasets may be
    # different robots (embodiment.json): model.state_dim / action_dim are the widest, each
    # dataset is padded into them with masks and keeps its own statistics (docs/data.md).
    config.data.mixture = ()
    # Pad one dataset narrower than the model with masks (a mixture always does): fine-tuning
    # a mixture-pretrained model onto a new robot.
    config.data.embodiment_masks = False
    # SentencePiece model for instructions and captions: "" = the dataset's own
    # tokenizer.model (a mixture: one built over all its datasets' texts, kept with the run);
    # a pretrained backbone's tokenizer (Gemma's 256k tokenizer.model) so token ids mean what
    # the imported embedding learnt. model.vocab_size must cover it.
    config.data.tokenizer = ""
    # Train-split image augmentation, seeded per sample (off for val/eval pipelines); placement
    # "host" (the sampler, numpy/PIL) or "device" (the jitted train step; docs/data.md).
    config.data.augment = ml_collections.ConfigDict(dict(enabled=True, crop_scale=0.85,
                                                         jitter=0.15, placement="host"))
    config.data.num_workers = 0
    # Grain's read-ahead in each reading process: threads computing batches ahead of the
    # consumer, and how many batches they may hold. Grain's own defaults (16 threads, 500
    # batches) compute ~500 batches at start whatever the run needs and hold them in memory
    # (a 224-px batch of 32 is tens of MB); the training loop's device prefetch sits after it.
    config.data.read_threads = 2
    config.data.read_ahead = 4
    # Privileged simulator state: the state vector carries MetaWorld's object and goal
    # positions after the 4-D agent state (wallwm_jax.data.tasks.state_layout), read from a
    # dataset built with --privileged_state and provided by the evaluator's environment.
    # Set model.state_dim to match (10; 4 without). Off: what a real robot reports.
    config.data.privileged_state = False
    config.data.split = "train"

    config.model = ml_collections.ConfigDict()
    config.model.vocab_size = s.get("vocab", 512)
    config.model.state_dim = 4
    config.model.action_dim = 4
    config.model.image_size = config.data.get_ref("image_size")
    config.model.cameras = len(config.data.cameras)  # set both when changing cameras
    config.model.patch_size = s["patch"]
    # Keypoint tokens after each camera's patches (wallwm_jax/models/vit.py READOUTS): none |
    # patch_keypoints | pixel_keypoints (spatial softmax over patches or pixels, docs/pixels.md)
    config.model.vision_readout = "none"
    config.model.vision_keypoints = 16
    # How pixels become patch tokens (models/vit.py STEMS; docs/pixels.md): none (one patchify
    # conv) | conv (stride-2 3x3 convs down to the patch size)
    config.model.vision_stem = "none"
    config.model.vit_width = s["vit_width"]
    config.model.vit_depth = s["vit_depth"]
    config.model.vit_heads = s["vit_heads"]
    config.model.vit_mlp_dim = s["vit_mlp"]
    config.model.width = s["width"]
    config.model.depth = s["depth"]
    config.model.num_heads = s["heads"]
    config.model.num_kv_heads = s["kv_heads"]
    config.model.head_dim = s["head_dim"]
    config.model.mlp_dim = s["mlp"]
    config.model.expert_width = s["expert_width"]
    config.model.expert_mlp_dim = s["expert_mlp"]
    config.model.scan_layers = True
    config.model.remat_policy = "none"  # none | full | dots_saveable (decoder and ViT layers)
    # auto: cuDNN flash attention on an NVIDIA GPU when the compute dtype is bf16/fp16 and
    # head_dim fits (multiple of 8, <= 128), XLA's otherwise | xla | cudnn (GPU only)
    config.model.attention = "auto"
    config.model.tie_embeddings = True  # caption head = token embedding (else its own head)
    # How token embeddings enter the backbone: "wallwm" (as looked up) | "gemma" (times
    # sqrt(width), as Gemma does; set for Gemma/PaliGemma weights, docs/pretrained.md).
    config.model.backbone_family = "wallwm"
    # Pretrained towers loaded over the init when a run starts from scratch (docs/pretrained.md):
    # a weights file or Hugging Face model directory and its layout each ("": none). A
    # PaliGemma file holds both towers: give it as `backbone` with layout "paligemma". The
    # layouts set the model fields they need (backbone_family) before anything compiles.
    # strict: an unused, missing or mis-shaped key stops the run (else it is only reported).
    config.model.pretrained = ml_collections.ConfigDict(dict(
        vision="", vision_layout="siglip", backbone="", backbone_layout="gemma", strict=True))
    config.model.max_event_len = config.data.get_ref("max_event_len")
    config.model.max_captions = config.data.get_ref("max_captions")
    # "staircase": action step j sees captions 0..e(j) only; "causal" (ablation): a plain
    # causal caption stream that every action step sees whole.
    config.model.caption_mask = "staircase"
    config.model.duration_bins = config.data.get_ref("duration_bins")
    config.model.num_duration_bins = len(config.data.duration_bins)
    config.model.world_size = config.data.get_ref("world_size")
    config.model.flow_beta_a = 1.5
    config.model.flow_beta_b = 1.0
    config.model.num_flow_steps = 10
    # Compute dtype; params are always float32. auto: bfloat16 on GPU/TPU, float32 on CPU
    # (where bf16 is emulated); resolved when the train step is built, and logged.
    config.model.dtype = "auto"
    config.model.loss_weights = ml_collections.ConfigDict(
        dict(action=1.0, caption=0.1, duration=0.1, world=0.1))
    # Auxiliary action head (a training aid, docs/model.md): > 0 adds an MSE of a linear
    # read-out of the image tokens + state to the chunk's first `aux_action_steps` actions,
    # times this weight, so the vision tower gets a direct signal. 0: no head, no parameters.
    config.model.aux_action_weight = 0.0
    config.model.aux_action_steps = 1

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-4
    config.optimizer.warmup_steps = 20
    config.optimizer.weight_decay = 1e-4
    config.optimizer.grad_clip = 1.0
    config.optimizer.b1 = 0.9  # AdamW, and the AdamW group of Muon
    config.optimizer.b2 = 0.95
    config.optimizer.eps = 1e-8
    # name=muon: Newton-Schulz on 2-D kernels (spread over the 'fsdp' mesh axis in training),
    # AdamW for the rest. rules: ((regex over the param path, 'muon' | 'adamw'), ...), first
    # match wins; () = wallwm_jax.optim.routing.DEFAULT_RULES. adjust_lr: original |
    # match_rms_adamw | none. name=optax_muon: optax.contrib.muon, the same routing (reference).
    config.optimizer.muon = ml_collections.ConfigDict(dict(
        momentum=0.95, nesterov=True, ns_steps=5, ns_dtype="bfloat16", adjust_lr="original",
        rules=()))

    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # (logical axis, mesh axes) pairs, first match wins; unnamed axes are replicated.
    # Parameters: FSDP over embed dims, tensor parallelism over mlp/heads/vocab. Activations
    # (`activation_*`, constrained inside the model): batch over data x fsdp, the rest whole.
    config.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("activation_batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("expert_embed", "fsdp"),
        ("mlp", "tensor"),
        ("expert_mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("vocab", "tensor"),
    )

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 100
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True
    config.checkpoint.keep_period = 0  # also keep every step divisible by this (0: off)

    config.eval = ml_collections.ConfigDict()
    config.eval.episodes_per_task = 3
    config.eval.max_steps = 200
    config.eval.num_batches = 4  # val batches per offline evaluation during training
    # With eval_every_steps > 0: also the val action error by train event cluster, rare (the
    # smallest third by train event count) vs common (wallwm_jax/evaluation/clusters.py).
    config.eval.by_cluster = False
    # Closed-loop MetaWorld evaluation during training (wallwm_jax.evaluation suites): every
    # `every_steps` steps (0: off) and at the end; success per task/group goes to
    # metrics.jsonl and TensorBoard as closed_loop/<suite>/... On the suite's `dev` scenes: a
    # number watched during training feeds choices (test scenes are for reports).
    config.eval.closed_loop = ml_collections.ConfigDict(dict(
        suite="demo", tasks=(), episodes_per_task=2, every_steps=0, split="dev"))
    if args["recipe"] == "cpu":
        apply_cpu_recipe(config)
    elif args["recipe"] == "demo":
        apply_demo_recipe(config)
    elif args["recipe"] == "pixels":
        apply_pixels_recipe(config)
    return config
