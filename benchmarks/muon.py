"""Muon benchmarks: collective bytes and step time on a mesh (ours vs optax.contrib.muon),
optimizer share of a train step, and Muon-vs-AdamW steps to the same training loss.

    python benchmarks/muon.py                        # everything (CPU, 8 fake devices)
    python benchmarks/muon.py --parts=hlo --sizes=small,base

Prints one JSON object and a one-line summary. Collective bytes are the result sizes of the
all-gather / all-to-all / collective-permute / reduce-scatter / all-reduce ops in the
per-device compiled HLO of one optimizer step, an op inside a loop once per iteration
(`wallwm_jax.hlo_stats`, the counter the tests and `wallwm_jax.aot` use).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from experiments.pretrain import get_config  # noqa: E402
from wallwm_jax import cli  # noqa: E402
from wallwm_jax.data.batches import EventBatch, Observation  # noqa: E402
from wallwm_jax.hlo_stats import collective_bytes  # noqa: E402
from wallwm_jax.models.wallwm import compute_loss, init_params, param_logical_axes  # noqa: E402
from wallwm_jax.optim import DEFAULT_RULES, muon, plan_params  # noqa: E402
from wallwm_jax.sharding import logical_to_sharding, opt_state_sharding  # noqa: E402


# -- mesh and shardings ---------------------------------------------------------------------
def fsdp_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))


def optax_dimension_numbers(plans):
    dims = optax.contrib.MuonDimensionNumbers
    return jax.tree.map(lambda pl: dims(pl.in_axes, pl.out_axes) if pl.group == "muon" else None,
                        plans)


def make_optimizers(cfg, shapes, shardings, lr=0.02):
    logical = param_logical_axes(cfg.model)
    plans = plan_params(shapes, DEFAULT_RULES, logical_axes=logical)
    return {
        "ours": muon(lr, logical_axes=logical, shardings=shardings, adam_learning_rate=3e-4),
        "optax": optax.contrib.muon(lr, adam_learning_rate=3e-4, eps=1e-7,
                                    muon_weight_dimension_numbers=optax_dimension_numbers(plans)),
    }


def optimizer_step(tx):
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    return step


def compiled_step(tx, shapes, shardings, mesh):
    state_shapes = jax.eval_shape(tx.init, shapes)
    state_sh = opt_state_sharding(tx, shapes, shardings)
    sds = lambda t, s: jax.tree.map(lambda x, y: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                      sharding=y), t, s)
    jitted = jax.jit(optimizer_step(tx), out_shardings=(shardings, state_sh),
                     donate_argnums=(1, 2))
    args = (sds(shapes, shardings), sds(state_shapes, state_sh), sds(shapes, shardings))
    return jitted.lower(*args).compile(), state_sh


def hlo_and_time(size: str, run_time: bool, repeats: int = 3) -> dict:
    cfg = get_config(f"size={size}")
    mesh = fsdp_mesh()
    shapes = jax.eval_shape(lambda: init_params(cfg.model, jax.random.key(0)))
    shardings = logical_to_sharding(param_logical_axes(cfg.model), mesh, cfg.sharding_rules,
                                    shapes)
    result = {"params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))}
    for name, tx in make_optimizers(cfg, shapes, shardings).items():
        compiled, state_sh = compiled_step(tx, shapes, shardings, mesh)
        by_kind = collective_bytes(compiled.as_text())
        entry = {"collective_bytes": sum(by_kind.values()), "by_kind": by_kind}
        if run_time:
            params = jax.device_put(init_params(cfg.model, jax.random.key(0)), shardings)
            grads = jax.tree.map(lambda p: p * 1e-3, params)
            state = jax.device_put(tx.init(params), state_sh)
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                params, state = compiled(grads, state, params)
                jax.block_until_ready(params)
                times.append(time.perf_counter() - start)
            entry["step_s"] = float(np.median(times[1:]))
        result[name] = entry
    return result


# -- optimizer share of a train step, and convergence ---------------------------------------
def synthetic_batch(model_cfg, batch_size: int, seed: int) -> EventBatch:
    rng = np.random.default_rng(seed)
    b, t, li, lc = batch_size, model_cfg.max_event_len, 8, 6
    obs = Observation(
        image=rng.integers(0, 256, (b, model_cfg.image_size, model_cfg.image_size, 3), np.uint8),
        state=rng.normal(size=(b, model_cfg.state_dim)).astype(np.float32),
        instruction=rng.integers(1, model_cfg.vocab_size, (b, li)).astype(np.int32),
        caption=rng.integers(1, model_cfg.vocab_size, (b, lc)).astype(np.int32))
    lengths = rng.integers(1, t + 1, b)
    return EventBatch(
        obs=obs, actions=rng.normal(size=(b, t, model_cfg.action_dim)).astype(np.float32),
        action_mask=np.arange(t)[None] < lengths[:, None],
        duration_bin=rng.integers(0, model_cfg.num_duration_bins, b).astype(np.int32),
        end_image=rng.integers(0, 256, (b, model_cfg.world_size, model_cfg.world_size, 3),
                               np.uint8))


def train_step_fn(model_cfg, tx):
    def step(params, state, batch, rng):
        (loss, _), grads = jax.value_and_grad(
            lambda p: compute_loss(model_cfg, p, batch, rng), has_aux=True)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss
    return jax.jit(step)


def _median_time(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def optimizer_share(size: str, batch_size: int, repeats: int) -> dict:
    """Seconds of the optimizer step alone and of the whole train step, on one CPU device."""
    cfg = get_config(f"size={size}").model
    params = init_params(cfg, jax.random.key(0))
    tx = muon(0.02, logical_axes=param_logical_axes(cfg), adam_learning_rate=3e-4)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: p * 1e-3, params)
    opt = jax.jit(optimizer_step(tx))
    train = train_step_fn(cfg, tx)
    batch = jax.tree.map(jnp.asarray, synthetic_batch(cfg, batch_size, 0))
    t_opt = _median_time(opt, (grads, state, params), repeats)
    t_train = _median_time(train, (params, state, batch, jax.random.key(1)), repeats)
    return {"batch_size": batch_size, "optimizer_s": t_opt, "train_step_s": t_train,
            "fraction": t_opt / t_train}


def train_curve(model_cfg, tx, batches, steps: int) -> list[float]:
    params = init_params(model_cfg, jax.random.key(0))
    state = tx.init(params)
    step = train_step_fn(model_cfg, tx)
    losses = []
    for i in range(steps):
        params, state, loss = step(params, state, batches[i % len(batches)], jax.random.key(i))
        losses.append(float(loss))
    return losses


def steps_to(losses: list[float], target: float, window: int = 10) -> int | None:
    """First step at which the running mean of the last `window` losses is ≤ target."""
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    hit = np.nonzero(smooth <= target)[0]
    return int(hit[0] + window) if hit.size else None


def convergence(size: str, steps: int, adamw_lrs, muon_lrs, batch_size: int) -> dict:
    """AdamW sweep; Muon sweep (its AdamW group at AdamW's best lr); steps to AdamW's best
    final (smoothed) loss."""
    cfg = get_config(f"size={size}").model
    batches = [jax.tree.map(jnp.asarray, synthetic_batch(cfg, batch_size, s)) for s in range(4)]
    final = lambda losses: float(np.mean(losses[-10:]))
    adamw = {lr: train_curve(cfg, optax.adamw(lr), batches, steps) for lr in adamw_lrs}
    best_adam_lr = min(adamw, key=lambda lr: final(adamw[lr]))
    logical = param_logical_axes(cfg)
    muons = {lr: train_curve(cfg, muon(lr, logical_axes=logical, adam_learning_rate=best_adam_lr),
                             batches, steps) for lr in muon_lrs}
    best_muon_lr = min(muons, key=lambda lr: final(muons[lr]))
    target = final(adamw[best_adam_lr])
    s_adam, s_muon = steps_to(adamw[best_adam_lr], target), steps_to(muons[best_muon_lr], target)
    return {
        "size": size, "steps": steps, "batch_size": batch_size, "target_loss": target,
        "adamw_final": {str(k): final(v) for k, v in adamw.items()},
        "muon_final": {str(k): final(v) for k, v in muons.items()},
        "best_adamw_lr": best_adam_lr, "best_muon_lr": best_muon_lr,
        "adamw_steps": s_adam, "muon_steps": s_muon,
        "muon_over_adamw_steps": None if not (s_adam and s_muon) else s_muon / s_adam,
    }


def define_flags() -> None:
    """The benchmark's flags (defined only when run as a program)."""
    flags.DEFINE_list("parts", ["hlo", "share", "convergence"], "Parts to run.")
    flags.DEFINE_list("sizes", ["small", "base"], "Sizes for the HLO byte count.")
    flags.DEFINE_list("time_sizes", ["small"], "Sizes whose step is also run.")
    flags.DEFINE_string("conv_size", "tiny", "Size of the convergence comparison.")
    flags.DEFINE_integer("conv_steps", 150, "Steps of the convergence comparison.")
    flags.DEFINE_list("adamw_lrs", ["3e-4", "1e-3", "3e-3"], "AdamW learning rates tried.")
    flags.DEFINE_list("muon_lrs", ["0.005", "0.01", "0.02", "0.04"], "Muon learning rates tried.")


def main(argv: list[str]) -> None:
    """CLI: collective bytes, optimizer share and convergence of Muon vs optax and AdamW."""
    cli.positional(argv)
    args = flags.FLAGS
    parts, report = args.parts, {"devices": jax.device_count(),
                                 "backend": jax.default_backend()}
    if "hlo" in parts:
        report["hlo"] = {s: hlo_and_time(s, s in args.time_sizes) for s in args.sizes}
    if "share" in parts:
        report["optimizer_share"] = optimizer_share("small", batch_size=8, repeats=3)
    if "convergence" in parts:
        report["convergence"] = convergence(
            args.conv_size, args.conv_steps, [float(x) for x in args.adamw_lrs],
            [float(x) for x in args.muon_lrs], batch_size=16)
    print(json.dumps(report, indent=1))
    summary = []
    for size, r in report.get("hlo", {}).items():
        ours, ref = r["ours"]["collective_bytes"], r["optax"]["collective_bytes"]
        summary.append(f"{size}: collectives {ours / 2**20:.1f} MiB vs optax "
                       f"{ref / 2**20:.1f} MiB ({ref / max(ours, 1):.1f}x less)")
        if "step_s" in r["ours"]:
            summary.append(f"step {r['ours']['step_s']:.3f}s vs {r['optax']['step_s']:.3f}s")
    if "optimizer_share" in report:
        summary.append(f"optimizer {report['optimizer_share']['fraction']:.0%} of a small step")
    if "convergence" in report:
        summary.append(f"muon/adamw steps-to-loss {report['convergence']['muon_over_adamw_steps']}")
    print("; ".join(summary))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
