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
from wallwm_jax.data.batches import abstract_batch
from wallwm_jax.models import wallwm
from wallwm_jax.models.layers import activation_sharding, compute_dtype, resolve_attention
from wallwm_jax.optim.factory import learning_rate_schedule, make_optimizer


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, besides the params and the data iterator."""

    step: jax.Array  # int32 []
    opt_state: Any


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
        name = "/".join(str(getattr(k, "key", k)) for k in path)
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
    """The jitted step functions and the abstract (ShapeDtypeStruct + sharding) trees.

    `init_fn(rng) -> (params, state)`; `update_fn(params, state, batch) ->
    (params, state, metrics)`, donating params and state. The abstract trees are what
    `update_fn.lower(...)` needs for ahead-of-time compilation.
    """

    mesh: Mesh
    abstract_params: Any
    abstract_state: TrainState
    abstract_batch: Any
    param_sharding: Any
    state_sharding: TrainState
    batch_sharding: jax.sharding.NamedSharding
    init_fn: Callable[[jax.Array], tuple[Any, TrainState]]
    update_fn: BoundStep
    lr_schedule: optax.Schedule
    precision: dict = dataclasses.field(default_factory=dict)  # resolved dtype/attention


class BoundStep:
    """`update(params, state, batch)`: the jitted step with the run's seed and length bound.

    The seed's key and `total_steps` (the LR schedule's length) are inputs of the compiled step,
    not constants folded into it, so runs that differ only in those share one executable (and
    one persistent-cache entry). `lower` takes the same three arguments as the call.
    """

    def __init__(self, jitted: Any, run_inputs: dict[str, jax.Array]):
        self.jitted = jitted
        self.run_inputs = run_inputs

    def __call__(self, params: Any, state: TrainState, batch: Any
                 ) -> tuple[Any, TrainState, dict[str, jax.Array]]:
        return self.jitted(params, state, batch, self.run_inputs)

    def lower(self, params: Any, state: TrainState, batch: Any) -> _Bound:
        """Lower for these abstract trees; `.compile()` gives a three-argument callable too."""
        return _Bound(self.jitted.lower(params, state, batch, self.run_inputs), self.run_inputs)


class _Bound:
    """A lowered or compiled step with the run inputs bound: `compile()` and `(p, s, b)` take
    what `BoundStep` takes; everything else (memory_analysis, as_text, ...) is the wrapped one's.
    """

    def __init__(self, stage: Any, run_inputs: dict[str, jax.Array]):
        self._stage = stage
        self._run_inputs = run_inputs

    def compile(self, *args: Any, **kwargs: Any) -> _Bound:
        return _Bound(self._stage.compile(*args, **kwargs), self._run_inputs)

    def __call__(self, params: Any, state: TrainState, batch: Any
                 ) -> tuple[Any, TrainState, dict[str, jax.Array]]:
        return self._stage(params, state, batch, self._run_inputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stage, name)


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


def activation_rules(sharding_rules: Any) -> tuple[tuple[str, Any], ...]:
    """The `activation_*` entries of `config.sharding_rules`, as flax logical-axis rules (the
    model constrains its residual streams with them; parameters use `logical_to_sharding`)."""
    return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                 for name, axes in sharding_rules if name.startswith("activation_"))


# Steps built in this process, by what their program depends on (`_program_key`): a second
# run of the same model in one process (a test, a resumed or in-process sweep trial, the
# fine-tuning baseline) reuses the traced step instead of tracing it again.
_BUILT: collections.OrderedDict[str, TrainStep] = collections.OrderedDict()
_BUILT_MAX = 4
RUN_INPUTS = ("seed", "total_steps")  # inputs of the compiled step, not part of its program


def _program_key(config: ml_collections.ConfigDict, mesh: Mesh, batch_size: int) -> str:
    """Everything the step's program depends on: the config without `RUN_INPUTS`, the mesh
    (devices, axis names and sizes) and the global batch."""
    fields = json.loads(config.to_json_best_effort(sort_keys=True))
    for name in RUN_INPUTS:
        fields.pop(name, None)
    devices = [d.id for d in mesh.devices.flat]
    return json.dumps([fields, devices, list(mesh.shape.items()), batch_size], sort_keys=True)


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, *,
                    batch_size: int | None = None) -> TrainStep:
    """Build the sharded train step of `config` on `mesh` (no weights are allocated).

    `batch_size` (default `config.batch_size`) is the global batch; it must divide over the
    data-parallel axes ('data', 'fsdp'). The seed and `total_steps` are bound as inputs of
    the compiled step (`BoundStep`); the rest is built once per process and program.
    """
    batch_size = int(batch_size or config.batch_size)
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % dp:
        raise ValueError(f"batch_size={batch_size} is not divisible by the data-parallel "
                         f"mesh size {dp} (mesh.data x mesh.fsdp)")
    check_model_data(config)
    key = _program_key(config, mesh, batch_size)
    built = _BUILT.get(key)
    if built is None:
        # A private copy: later edits of the caller's config cannot reach a cached program.
        built = _build_train_step(config.copy_and_resolve_references(), mesh, batch_size)
        _BUILT[key] = built
        while len(_BUILT) > _BUILT_MAX:
            _BUILT.popitem(last=False)
    else:
        _BUILT.move_to_end(key)
        resolved_precision(config.model, mesh.devices.flat[0].platform)  # says it again
    run_inputs = {"rng": _replicated_input(jax.random.PRNGKey(config.seed), mesh),
                  "total_steps": _replicated_input(np.int32(config.total_steps), mesh)}
    return dataclasses.replace(
        built, update_fn=BoundStep(built.update_fn.jitted, run_inputs),
        lr_schedule=learning_rate_schedule(config.optimizer, config.total_steps))


def _build_train_step(config: ml_collections.ConfigDict, mesh: Mesh,
                      batch_size: int) -> TrainStep:
    """`make_train_step` without the per-process reuse (seed/total_steps bound later)."""
    model_cfg = config.model
    precision = resolved_precision(model_cfg, mesh.devices.flat[0].platform)
    logical_axes = wallwm.param_logical_axes(model_cfg)
    lr_schedule = learning_rate_schedule(config.optimizer, config.total_steps)

    shapes = jax.eval_shape(lambda: wallwm.init_params(model_cfg, jax.random.PRNGKey(0)))
    param_sharding = sharding.logical_to_sharding(logical_axes, mesh, config.sharding_rules,
                                                  shapes)
    # Muon spreads its Newton-Schulz work over the mesh when it knows the params' shardings.
    tx = make_optimizer(config.optimizer, config.total_steps, logical_axes, param_sharding)
    abstract_params = _with_sharding(shapes, param_sharding)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sharding = sharding.opt_state_sharding(abstract_opt, abstract_params, param_sharding,
                                               mesh)
    state_sharding = TrainState(step=sharding.replicated(mesh), opt_state=opt_sharding)
    abstract_state = _with_sharding(
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), opt_state=abstract_opt),
        state_sharding)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch_sharding),
                         abstract_batch(config, batch_size))
    groups = param_groups(shapes)

    def init(rng: jax.Array) -> tuple[Any, TrainState]:
        params = wallwm.init_params(model_cfg, rng)
        return params, TrainState(step=jnp.zeros((), jnp.int32), opt_state=tx.init(params))

    init_fn = jax.jit(init, out_shardings=(param_sharding, state_sharding))

    rules = activation_rules(config.sharding_rules)
    on_nonfinite = config.get("on_nonfinite", "stop")
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite='{on_nonfinite}' must be 'stop' or 'skip'")
    skip_nonfinite = on_nonfinite == "skip"

    def update(params: Any, state: TrainState, batch: Any, run: dict[str, jax.Array]
               ) -> tuple[Any, TrainState, dict]:
        rng = jax.random.fold_in(run["rng"], state.step)
        # The same optimizer as `tx` (same state), its schedule reading the run's length.
        run_tx = make_optimizer(config.optimizer, run["total_steps"], logical_axes,
                                param_sharding)
        grad_fn = jax.value_and_grad(
            lambda p: wallwm.compute_loss(model_cfg, p, batch, rng, train=True), has_aux=True)
        with activation_sharding(mesh, rules):  # the model's activation constraints apply
            (_, metrics), grads = grad_fn(params)
        updates, opt_state = run_tx.update(grads, state.opt_state, params)
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
                       lr=learning_rate_schedule(config.optimizer, run["total_steps"])(state.step))
        metrics.update({f"grad_norm/{g}": n for g, n in group_norms(grads, groups).items()})
        metrics.update({f"update_norm/{g}": n for g, n in group_norms(updates, groups).items()})
        return params, TrainState(step=state.step + 1, opt_state=opt_state), metrics

    update_fn = BoundStep(jax.jit(
        update, donate_argnums=(0, 1),
        in_shardings=(param_sharding, state_sharding, batch_sharding,
                      sharding.replicated(mesh)),
        out_shardings=(param_sharding, state_sharding, sharding.replicated(mesh))), {})
    return TrainStep(mesh=mesh, abstract_params=abstract_params, abstract_state=abstract_state,
                     abstract_batch=batch, param_sharding=param_sharding,
                     state_sharding=state_sharding, batch_sharding=batch_sharding,
                     init_fn=init_fn, update_fn=update_fn, lr_schedule=lr_schedule,
                     precision=precision)


def resolved_precision(model_cfg: ml_collections.ConfigDict, platform: str) -> dict[str, str]:
    """What `model.dtype` and `model.attention` mean on `platform` (e.g. 'auto' -> bfloat16
    and cudnn on 'gpu'), as the model resolves them; printed once when the step is built."""
    dtype = compute_dtype(model_cfg.dtype, platform)
    out = {"platform": platform, "dtype": str(dtype), "attention": resolve_attention(
        model_cfg.get("attention", "auto"), dtype, int(model_cfg.head_dim), platform)}
    if jax.process_index() == 0 and (model_cfg.dtype == "auto"
                                     or model_cfg.get("attention", "auto") == "auto"):
        print(f"precision on {platform}: compute dtype {out['dtype']} "
              f"(model.dtype={model_cfg.dtype}), decoder attention {out['attention']} "
              f"(model.attention={model_cfg.get('attention', 'auto')}), params float32")
    return out
