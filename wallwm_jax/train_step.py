"""The train step, built in one place: abstract sharded state, `init_fn` and `update_fn`.

`train.py` runs it, `aot.py` compiles it for a topology without the hardware and
`benchmarks/train_step.py` times it, so all three see exactly the same jitted step.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from wallwm_jax import sharding
from wallwm_jax.data import device_augment
from wallwm_jax.data.augment import placement
from wallwm_jax.data.batches import abstract_batch
from wallwm_jax.models import wallwm
from wallwm_jax.models.layers import activation_sharding, compute_dtype, resolve_attention
from wallwm_jax.optim.factory import learning_rate_schedule, make_optimizer
from wallwm_jax.tree_names import path_name


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, besides the params and the data iterator."""

    step: jax.Array  # int32 []
    opt_state: Any


@flax.struct.dataclass
class RunInputs:
    """Inputs of the compiled step that differ between runs of one program: runs that differ
    only in seed or length share one executable (and one persistent-cache entry)."""

    rng: jax.Array  # uint32 [2], PRNGKey(seed); each step folds its step number in
    total_steps: jax.Array  # int32 [], the learning-rate schedule's length

    FIELDS = ("seed", "total_steps")  # the config fields they come from

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, mesh: Mesh) -> RunInputs:
        """`config.seed` and `config.total_steps`, replicated over `mesh`."""
        return cls(rng=_replicated_input(jax.random.PRNGKey(config.seed), mesh),
                   total_steps=_replicated_input(np.int32(config.total_steps), mesh))


# Parameter groups for per-group gradient/update norms: (regex over 'a/b/c' paths, group),
# first match wins; an unmatched parameter is grouped under its top-level name.
PARAM_GROUPS = (
    (r"^vit/", "vit"),
    (r"^(embedder|decoder/layers/backbone|decoder/backbone_norm)(/|$)", "backbone"),
    (r"^(decoder/layers/action_expert|decoder/action_expert_norm)(/|$)", "action_expert"),
    (r"^(action_in|state_in|time_in|time_out|action_out)/", "action_expert"),
    (r"^(duration_head|world_hidden|world_out)/", "heads"),
)


def param_groups(params: Any) -> Any:
    """Same tree as `params` with each leaf replaced by its group name (see PARAM_GROUPS)."""

    def one(path: Any, _: Any) -> str:
        name = path_name(path)
        for pattern, group in PARAM_GROUPS:
            if re.search(pattern, name):
                return group
        return name.split("/")[0]

    return jax.tree_util.tree_map_with_path(one, params)


def group_norms(tree: Any, groups: Any) -> dict[str, jax.Array]:
    """L2 norm of the leaves of each group: {group: norm}; squares sum to the global norm²."""
    sums: dict[str, jax.Array] = {}
    for leaf, group in zip(jax.tree.leaves(tree), jax.tree.leaves(groups), strict=True):
        sq = jnp.sum(jnp.square(leaf.astype(jnp.float32)))
        sums[group] = sums[group] + sq if group in sums else sq
    return {g: jnp.sqrt(s) for g, s in sums.items()}


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The jitted step functions, the optimizer and the abstract (ShapeDtypeStruct + sharding)
    trees.

    `init_fn(rng) -> (params, state)`; `update_fn(params, state, batch, run_inputs) ->
    (params, state, metrics)`, donating params and state; `run_inputs` is the `RunInputs` of
    the config the step was made for. `update_fn.lower(*step.abstract_inputs)` lowers it ahead
    of time (the compiled step takes the same four arguments).
    """

    mesh: Mesh
    rules: sharding.ShardingRules
    abstract_params: Any
    abstract_state: TrainState
    abstract_batch: Any
    abstract_run_inputs: RunInputs
    param_sharding: Any
    state_sharding: TrainState
    batch_sharding: jax.sharding.NamedSharding
    init_fn: Callable[[jax.Array], tuple[Any, TrainState]]
    update_fn: Any  # jax.jit(update): (params, state, batch, RunInputs) -> (params, state, metrics)
    tx: optax.GradientTransformationExtraArgs  # its update takes total_steps=
    lr_schedule: Callable[[Any, Any], jax.Array]  # (count, total_steps) -> learning rate
    run_inputs: RunInputs | None = None
    precision: dict = dataclasses.field(default_factory=dict)  # resolved dtype/attention

    @property
    def abstract_inputs(self) -> tuple[Any, TrainState, Any, RunInputs]:
        """What `update_fn.lower` takes: (params, state, batch, run inputs), all abstract."""
        return (self.abstract_params, self.abstract_state, self.abstract_batch,
                self.abstract_run_inputs)


def _replicated_input(value: Any, mesh: Mesh) -> jax.Array:
    """A small host value as a global array replicated over `mesh` (works multi-process)."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding.replicated(mesh),
                                        lambda index: value[index])


def _with_sharding(shapes: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        shapes, shardings)


def check_model_data(config: ml_collections.ConfigDict) -> None:
    """Fields that must agree between config.model and config.data, named when they do not."""
    pairs = [("model.cameras", config.model.get("cameras", 1), "len(data.cameras)",
              len(config.data.cameras)),
             ("model.max_captions", config.model.max_captions, "data.max_captions",
              config.data.max_captions)]
    for a, va, b, vb in pairs:
        if va != vb:
            raise ValueError(f"{a}={va} disagrees with {b}={vb}; set them together")


class StepCache:
    """Train steps already built, by everything their program depends on (`program_key`).

    The caller owns one and passes it to every `make_train_step` of a process that builds the
    same model more than once (tests, in-process sweep trials, fine-tuning beside its baseline),
    so later runs reuse the traced step instead of tracing it again. Without one nothing is
    kept. The least recently used of more than `max_size` steps are dropped.
    """

    def __init__(self, max_size: int = 4) -> None:
        self.max_size = max_size
        self._steps: collections.OrderedDict[str, TrainStep] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._steps)

    def get(self, key: str) -> TrainStep | None:
        step = self._steps.get(key)
        if step is not None:
            self._steps.move_to_end(key)
        return step

    def put(self, key: str, step: TrainStep) -> None:
        self._steps[key] = step
        self._steps.move_to_end(key)
        while len(self._steps) > self.max_size:
            self._steps.popitem(last=False)


# Config fields only the training loop reads (where the weights start from, checkpointing,
# logging, evaluation): runs that differ in them alone run the same step.
LOOP_FIELDS = ("init_from", "checkpoint", "log_every_steps", "eval_every_steps", "eval")


def program_key(config: ml_collections.ConfigDict, mesh: Mesh, batch_size: int) -> str:
    """Everything the step's program depends on: the config without `RunInputs.FIELDS`,
    `LOOP_FIELDS` and `data.data_dir` (where batches are read from; their shapes are in the
    other fields), the mesh (devices, axis names and sizes) and the global batch."""
    fields = json.loads(config.to_json_best_effort(sort_keys=True))
    for name in RunInputs.FIELDS + LOOP_FIELDS:
        fields.pop(name, None)
    fields.get("data", {}).pop("data_dir", None)
    devices = [d.id for d in mesh.devices.flat]
    return json.dumps([fields, devices, list(mesh.shape.items()), batch_size], sort_keys=True)


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, *,
                    batch_size: int | None = None, cache: StepCache | None = None) -> TrainStep:
    """Build the sharded train step of `config` on `mesh` (no weights are allocated).

    `batch_size` (default `config.batch_size`) is the global batch; it must divide over the
    batch axes of `config.sharding_rules`. The step's `run_inputs` are `config`'s seed and
    `total_steps`; with a `cache`, a step already built for the same program is reused.
    """
    batch_size = int(batch_size or config.batch_size)
    rules = sharding.ShardingRules.from_config(config.sharding_rules)
    ways = rules.batch_divisor(mesh)
    if batch_size % ways:
        raise ValueError(f"batch_size={batch_size} is not divisible by the data-parallel "
                         f"mesh size {ways} (mesh axes {rules.batch_axes} of the 'batch' "
                         "sharding rule)")
    check_model_data(config)
    key = None if cache is None else program_key(config, mesh, batch_size)
    built = None if cache is None else cache.get(key)
    if built is None:
        # A private copy: later edits of the caller's config cannot reach the traced program.
        built = _build_train_step(config.copy_and_resolve_references(), mesh, rules,
                                  batch_size)
        if cache is not None:
            cache.put(key, built)
    else:
        resolved_precision(config.model, mesh.devices.flat[0].platform)  # says it again
    return dataclasses.replace(built, run_inputs=RunInputs.from_config(config, mesh))


def _build_train_step(config: ml_collections.ConfigDict, mesh: Mesh,
                      rules: sharding.ShardingRules, batch_size: int) -> TrainStep:
    """`make_train_step` without the cache and the run inputs."""
    model_cfg = config.model
    precision = resolved_precision(model_cfg, mesh.devices.flat[0].platform)
    logical_axes = wallwm.param_logical_axes(model_cfg)

    shapes = wallwm.abstract_params(model_cfg)
    param_sharding = rules.params(logical_axes, mesh, shapes)
    # One schedule and one optimizer; the update passes the run's length to both. Muon spreads
    # its Newton-Schulz work over the mesh when it knows the params' shardings.
    lr_schedule = learning_rate_schedule(config.optimizer)
    tx = make_optimizer(config.optimizer, lr_schedule, logical_axes, param_sharding)
    abstract_params = _with_sharding(shapes, param_sharding)
    state_sharding = TrainState(step=sharding.replicated(mesh),
                                opt_state=sharding.opt_state_sharding(tx, shapes, param_sharding))
    abstract_state = _with_sharding(
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                   opt_state=jax.eval_shape(tx.init, shapes)), state_sharding)
    batch_sharding = rules.batch(mesh)
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch_sharding),
                         abstract_batch(config, batch_size))
    run_sharding = sharding.replicated(mesh)
    abstract_run = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=run_sharding),
        jax.eval_shape(lambda: RunInputs(jax.random.PRNGKey(0), jnp.int32(0))))
    groups = param_groups(shapes)

    def init(rng: jax.Array) -> tuple[Any, TrainState]:
        params = wallwm.init_params(model_cfg, rng)
        return params, TrainState(step=jnp.zeros((), jnp.int32), opt_state=tx.init(params))

    init_fn = jax.jit(init, out_shardings=(param_sharding, state_sharding))

    activation_rules = rules.activations()
    on_nonfinite = config.get("on_nonfinite", "stop")
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite='{on_nonfinite}' must be 'stop' or 'skip'")
    skip_nonfinite = on_nonfinite == "skip"
    # data.augment.placement=device: the pipeline ships frames un-augmented; this step crops
    # and jitters them with its own key (a resumed run draws the same)
    augment = config.data.get("augment")
    augment = augment if placement(augment) == "device" else None

    def update(params: Any, state: TrainState, batch: Any, run: RunInputs
               ) -> tuple[Any, TrainState, dict]:
        rng = jax.random.fold_in(run.rng, state.step)
        if augment is not None:
            batch = device_augment.augment_batch(batch, rng, augment)
        grad_fn = jax.value_and_grad(
            lambda p: wallwm.compute_loss(model_cfg, p, batch, rng, train=True), has_aux=True)
        with activation_sharding(mesh, activation_rules):  # the model's constraints apply
            (_, metrics), grads = grad_fn(params)
        updates, opt_state = tx.update(grads, state.opt_state, params,
                                       total_steps=run.total_steps)
        new_params = optax.apply_updates(params, updates)
        if skip_nonfinite:  # a NaN/Inf loss leaves params and optimizer state as they were
            finite = jnp.isfinite(metrics["loss"])
            new_params, opt_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (new_params, opt_state), (params, state.opt_state))
            metrics["skipped"] = (~finite).astype(jnp.float32)
        params = new_params
        metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                       update_norm=optax.global_norm(updates),
                       # the LR this update used: schedule(step - 1)
                       lr=lr_schedule(state.step, run.total_steps))
        metrics.update({f"grad_norm/{g}": n for g, n in group_norms(grads, groups).items()})
        metrics.update({f"update_norm/{g}": n for g, n in group_norms(updates, groups).items()})
        return params, TrainState(step=state.step + 1, opt_state=opt_state), metrics

    update_fn = jax.jit(
        update, donate_argnums=(0, 1),
        in_shardings=(param_sharding, state_sharding, batch_sharding, run_sharding),
        out_shardings=(param_sharding, state_sharding, sharding.replicated(mesh)))
    return TrainStep(mesh=mesh, rules=rules, abstract_params=abstract_params,
                     abstract_state=abstract_state, abstract_batch=batch,
                     abstract_run_inputs=abstract_run, param_sharding=param_sharding,
                     state_sharding=state_sharding, batch_sharding=batch_sharding,
                     init_fn=init_fn, update_fn=update_fn, tx=tx, lr_schedule=lr_schedule,
                     precision=precision)


def resolved_precision(model_cfg: ml_collections.ConfigDict, platform: str) -> dict[str, str]:
    """What `model.dtype` and `model.attention` mean on `platform` (e.g. 'auto' -> bfloat16
    and cudnn on 'gpu'), as the model resolves them; printed once when the step is built."""
    dtype = compute_dtype(model_cfg.dtype, platform)
    out = {"platform": platform, "dtype": str(dtype), "attention": resolve_attention(
        model_cfg.get("attention", "auto"), dtype, int(model_cfg.head_dim), platform,
        lowering=platform)}
    if jax.process_index() == 0 and (model_cfg.dtype == "auto"
                                     or model_cfg.get("attention", "auto") == "auto"):
        print(f"precision on {platform}: compute dtype {out['dtype']} "
              f"(model.dtype={model_cfg.dtype}), decoder attention {out['attention']} "
              f"(model.attention={model_cfg.get('attention', 'auto')}), params float32")
    return out
