"""Can the vision tower localise? A supervised diagnostic for policies that act from pixels.

Trains the policy's own vision tower (`wallwm_jax.models.vit.ViT`, the tiny size's shape)
plus one linear head to regress the object and goal positions from the camera images (and
the 4-D agent state the policy also has), and reports the validation R² per coordinate
against training steps. The positions are **privileged** simulator state, used here only as
the diagnostic's target: no policy reads them.

    # 1. frames + privileged positions of scripted-expert rollouts (DART noise 0.3, as the
    #    pixels datasets): train scenes are the builder's (seed 0), val scenes another seed
    python -m experiments.pixel_localisation frames --out FRAMES --sizes 48,96
    # 2. one probe run per arm: prints one JSON line per evaluation, then a summary line
    python -m experiments.pixel_localisation probe --frames FRAMES --size 48 \
        --cameras image,image_gripper [--patch 8] [--readout none] [--stem none] \
        [--steps 1500] [--target positions|offset] --out RUN.jsonl \
        [--init_tower CKPT --freeze 1]   (a trained policy's tower, only the head trains)
        [--save_tower T.npz]   (the trained tower, for config.init_pretrained=((T, "wallwm"),))
    # 3. frame-0 val R² tables of probe runs
    python -m experiments.pixel_localisation table RUN.jsonl...

R² is over held-out scenes: all kept frames, and frame 0 alone (the hand at its start pose,
so the state says nothing there and only the images can). `--cameras none` trains the head
on the state alone: the floor an image arm must beat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from wallwm_jax.models.vit import READOUTS, STEMS

TASKS = ("reach-v3", "push-v3")
# Target columns: privileged state slices (object xyz, goal xyz) of the 10-D state vector.
POSITION_NAMES = ("obj_x", "obj_y", "obj_z", "goal_x", "goal_y", "goal_z")
TRAIN_SEED, VAL_SEED = 0, 1  # builder seeds: 0 = the pixels datasets' scenes; 1 = held out
KEEP_EVERY = 2  # frames kept per rollout: t = 0, 2, 4, ...


def _rollout(job: tuple[str, int, int, int]) -> tuple[str, int, int, dict]:
    """One DART-noised expert rollout at one image size, scene + gripper camera, 10-D state."""
    from data_builders.metaworld_events.metaworld_events import episode_seed
    from wallwm_jax.envs.metaworld import rollout_expert

    task, seed, index, size = job
    r = rollout_expert(task, seed=episode_seed(seed, task, index), image_size=size,
                       extra_cameras=("gripper",), privileged_state=True, action_noise=0.3)
    keep = slice(0, None, KEEP_EVERY)
    return task, seed, index, {
        "image": r["images"][keep], "image_gripper": r["images_gripper"][keep],
        "state": r["states"][keep], "action": r["actions"][keep],
        "t": np.arange(len(r["actions"]))[keep]}


def make_frames(out: str, sizes: list[int], train: int, val: int, workers: int) -> None:
    """Write OUT/frames_<size>.npz: images per camera, 10-D states, clean expert actions,
    task / split / episode / step per kept frame."""
    os.makedirs(out, exist_ok=True)
    for size in sizes:
        jobs = [(task, seed, i, size) for task in TASKS
                for seed, n in ((TRAIN_SEED, train), (VAL_SEED, val)) for i in range(n)]
        t0 = time.time()
        cols: dict[str, list] = {k: [] for k in ("image", "image_gripper", "state", "action",
                                                 "t", "task", "split", "episode")}
        with ProcessPoolExecutor(workers) as pool:
            for task, seed, index, r in pool.map(_rollout, jobs, chunksize=4):
                n = len(r["t"])
                for k in ("image", "image_gripper", "state", "action", "t"):
                    cols[k].append(r[k])
                cols["task"].append(np.full(n, TASKS.index(task)))
                cols["split"].append(np.full(n, seed))
                cols["episode"].append(np.full(n, index))
        arrays = {k: np.concatenate(v) for k, v in cols.items()}
        np.savez(os.path.join(out, f"frames_{size}.npz"), **arrays)
        print(f"frames_{size}: {len(arrays['t'])} frames of {len(jobs)} rollouts in "
              f"{time.time() - t0:.0f} s", flush=True)


def r2(pred: np.ndarray, true: np.ndarray) -> list[float | None]:
    """Per-column R² of pred [N, D] against true [N, D]; None where true spreads less than
    1 mm (std): reach's object z, push's goal z are fixed up to simulator noise."""
    ss = ((true - true.mean(0)) ** 2).sum(0)
    res = ((pred - true) ** 2).sum(0)
    return [None if sd < 1e-3 else round(float(1 - r / s), 3)
            for r, s, sd in zip(res, ss, true.std(0), strict=True)]


def targets(frames: dict, kind: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Regression targets [N, D] and their names: privileged positions, or the expert's
    position-target offset (clean action xyz / 10, what recipe=pixels predicts minus the hand)."""
    if kind == "positions":
        return frames["state"][:, 4:10].astype(np.float32), POSITION_NAMES
    if kind == "offset":
        return (np.clip(frames["action"][:, :3], -1, 1) / 10).astype(np.float32), (
            "dx", "dy", "dz")
    raise ValueError(f"--target {kind!r}: expected positions or offset")


def probe(args: argparse.Namespace) -> dict:
    """Train tower + linear head on the train scenes; evaluate R² on the val scenes."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from wallwm_jax.models.vit import ViT

    with np.load(os.path.join(args.frames, f"frames_{args.size}.npz")) as f:
        frames = {k: f[k] for k in f.files}
    keep = np.isin(frames["task"], [TASKS.index(t) for t in args.tasks.split(",")])
    frames = {k: v[keep] for k, v in frames.items()}
    cameras = [] if args.cameras == "none" else args.cameras.split(",")
    images = np.stack([frames[c] for c in cameras], 1) if cameras else None
    y, names = targets(frames, args.target)
    state = frames["state"][:, :4].astype(np.float32)
    task_1hot = np.eye(len(TASKS), dtype=np.float32)[frames["task"]]
    train, val = frames["split"] == TRAIN_SEED, frames["split"] == VAL_SEED
    mu, sd = y[train].mean(0), y[train].std(0) + 1e-6
    s_mu, s_sd = state[train].mean(0), state[train].std(0) + 1e-6
    yn = (y - mu) / sd
    side = (np.concatenate([(state - s_mu) / s_sd, task_1hot], 1) if args.state
            else task_1hot)

    class Probe(nn.Module):
        @nn.compact
        def __call__(self, image, side):
            feats = [side]
            if image is not None:
                tower = ViT(patch_size=args.patch, width=64, depth=2, num_heads=2, mlp_dim=128,
                            out_width=64, cameras=len(cameras), readout=args.readout,
                            stem=args.stem, scan=True, name="vit")  # the policy's layout
                tokens = tower(image, project=False)
                if args.freeze:
                    tokens = jax.lax.stop_gradient(tokens)
                feats.append(tokens.reshape(tokens.shape[0], -1))
            return nn.Dense(len(names), name="head")(jnp.concatenate(feats, -1))

    model = Probe()
    rng = np.random.default_rng(args.seed)
    tr_idx = np.flatnonzero(train)
    sample = images[:2] if images is not None else None
    params = nn.unbox(model.init(jax.random.PRNGKey(args.seed), sample, side[:2]))
    if args.init_tower:  # a trained policy's tower (its checkpoint), without to_backbone
        from wallwm_jax.export import read_checkpoint

        trained = read_checkpoint(args.init_tower, None)[0]["vit"]
        params["params"]["vit"] = jax.tree.map(
            lambda ours, theirs: np.asarray(theirs).reshape(ours.shape),
            params["params"]["vit"], {k: trained[k] for k in params["params"]["vit"]})
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(50, args.steps // 10), args.steps)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-4))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, image, side, target):
        def loss_fn(p):
            return jnp.mean((model.apply(p, image, side) - target) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        if args.freeze and "vit" in params["params"]:  # no weight decay either
            new = {"params": {**new["params"], "vit": params["params"]["vit"]}}
        return new, opt_state, loss

    predict = jax.jit(model.apply)

    def evaluate(params) -> dict:
        idx = np.flatnonzero(val)
        pred = np.concatenate([np.asarray(predict(
            params, images[idx[i:i + 256]] if images is not None else None,
            side[idx[i:i + 256]])) for i in range(0, len(idx), 256)]) * sd + mu
        out = {}
        for t in args.tasks.split(","):
            m = frames["task"][idx] == TASKS.index(t)
            first = m & (frames["t"][idx] == 0)
            out[t] = {"all": dict(zip(names, r2(pred[m], y[idx][m]), strict=True)),
                      "frame0": dict(zip(names, r2(pred[first], y[idx][first]), strict=True)),
                      "frames": int(m.sum()), "scenes": int(first.sum())}
        return out

    arm = {k: getattr(args, k) for k in ("size", "cameras", "patch", "readout", "stem",
                                         "steps", "target", "state", "lr", "seed",
                                         "init_tower", "freeze")}
    t0, cpu0 = time.time(), time.process_time()
    log, losses = [], []
    for i in range(1, args.steps + 1):
        b = rng.choice(tr_idx, args.batch)
        img = None if images is None else images[b]
        params, opt_state, loss = step(params, opt_state, img, side[b], yn[b])
        losses.append(float(loss))
        if i % args.eval_every == 0 or i == args.steps:
            rec = {"arm": arm, "step": i, "train_mse": round(float(np.mean(losses[-100:])), 4),
                   "val_r2": evaluate(params), "wall_s": round(time.time() - t0, 1),
                   "cpu_s": round(time.process_time() - cpu0, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)
    if args.save_tower:  # layout "wallwm": config.init_pretrained=((PATH, "wallwm"),)
        from wallwm_jax.models.pretrained import save_wallwm

        save_wallwm({"vit": params["params"]["vit"]}, args.save_tower)
    if args.out:
        with open(args.out, "a") as f:
            for rec in log:
                f.write(json.dumps(rec) + "\n")
    return log[-1]


COLUMNS = {"positions": (("push-v3", "obj_x"), ("push-v3", "obj_y"), ("push-v3", "goal_x"),
                         ("push-v3", "goal_y"), ("reach-v3", "goal_x"), ("reach-v3", "goal_y"),
                         ("reach-v3", "goal_z")),
           "offset": (("push-v3", "dx"), ("push-v3", "dy"), ("reach-v3", "dx"),
                      ("reach-v3", "dz"))}


def table(paths: list[str], step: int | None = None) -> str:
    """Markdown tables (one per target) of each probe JSONL's record at `step` (None: the
    last): frame-0 val R²."""
    runs = []
    for path in paths:
        with open(path) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        runs.append((path, recs[-1] if step is None else
                     next(r for r in recs if r["step"] == step)))
    out = []
    for target, columns in COLUMNS.items():
        rows = [(p, r) for p, r in runs if r["arm"]["target"] == target]
        if not rows:
            continue
        out += ["| run | steps | " + " | ".join(f"{t[:-3]} {c}" for t, c in columns)
                + " | CPU s |", "|" + "---|" * (len(columns) + 3)]
        for path, rec in rows:
            cells = [rec["val_r2"][t]["frame0"][c] for t, c in columns]
            out.append(f"| {os.path.basename(path).removesuffix('.jsonl')} | {rec['step']} | "
                       + " | ".join("–" if v is None else f"{v:.2f}" for v in cells)
                       + f" | {rec['cpu_s']:.0f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    fr = sub.add_parser("frames", help="render expert rollouts with privileged positions")
    fr.add_argument("--out", required=True)
    fr.add_argument("--sizes", default="48")
    fr.add_argument("--train", type=int, default=80, help="train scenes per task")
    fr.add_argument("--val", type=int, default=40, help="val scenes per task")
    fr.add_argument("--workers", type=int, default=2)
    pr = sub.add_parser("probe", help="train tower + linear head, report val R²")
    pr.add_argument("--frames", required=True)
    pr.add_argument("--size", type=int, default=48)
    pr.add_argument("--tasks", default=",".join(TASKS))
    pr.add_argument("--cameras", default="image,image_gripper",
                    help="comma-separated camera features, or none (state-only floor)")
    pr.add_argument("--patch", type=int, default=8)
    pr.add_argument("--readout", default="none", choices=READOUTS)
    pr.add_argument("--stem", default="none", choices=STEMS)
    pr.add_argument("--target", default="positions", choices=("positions", "offset"))
    pr.add_argument("--state", type=int, default=1, help="1: the head also sees the 4-D state")
    pr.add_argument("--steps", type=int, default=1500)
    pr.add_argument("--batch", type=int, default=64)
    pr.add_argument("--lr", type=float, default=1e-3)
    pr.add_argument("--eval_every", type=int, default=250)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out", default="")
    pr.add_argument("--init_tower", default="",
                    help="a policy's checkpoint directory: start from its trained tower")
    pr.add_argument("--freeze", type=int, default=0,
                    help="1: the tower stays as initialised, only the linear head trains")
    pr.add_argument("--save_tower", default="",
                    help="write the trained tower (.npz, layout wallwm) to init a policy's")
    tb = sub.add_parser("table", help="markdown table of probe runs (frame-0 val R²)")
    tb.add_argument("runs", nargs="+", help="probe JSONL files")
    tb.add_argument("--step", type=int, default=None, help="the records at this step (last)")
    args = parser.parse_args()
    if args.cmd == "table":
        print(table(args.runs, args.step))
        return
    if args.cmd == "frames":
        make_frames(args.out, [int(s) for s in args.sizes.split(",")], args.train, args.val,
                    args.workers)
        return
    if not os.path.exists(os.path.join(args.frames, f"frames_{args.size}.npz")):
        print(f"error: no {args.frames}/frames_{args.size}.npz (run the frames step first)",
              file=sys.stderr)
        sys.exit(2)
    last = probe(args)
    summary = {t: {k: v for k, v in r["frame0"].items() if v is not None}
               for t, r in last["val_r2"].items()}
    print(f"summary: step {last['step']}, frame-0 val R² {json.dumps(summary)}")


if __name__ == "__main__":
    main()
