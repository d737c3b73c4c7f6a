"""How many pixels do the manipulated object and the goal marker cover, per task, camera and
image size? Decides what a policy acting from pixels can see at CPU cost (docs/pixels.md).

    python -m experiments.pixel_visibility [--tasks reach-v3,push-v3] [--sizes 32,64] \
        [--scenes 3] [--out experiments/results/pixels/visibility.md]

At the first frame of `--scenes` `mt10_seen` dev scenes per task, MuJoCo's segmentation
rendering labels every pixel with the geom or site drawn there (occlusion included); the
object's geoms and the goal's site are found by name in the task's model (`TARGETS`). Counts
are pixels whose centre the object covers in a render at that size; `area` is the projected
visible area in pixels of that size, from one render at `--hi_res` (sub-pixel objects show as
fractions there and as 0 or 1 pixel in the count). Prints JSON, then one summary line.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags

from wallwm_jax import cli
from wallwm_jax.data.tasks import MT10_TASKS
from wallwm_jax.envs.metaworld import MetaWorldTask  # sets MUJOCO_GL before mujoco loads

# camera key -> (MuJoCo camera, corner2 position override): what the builder renders with
# --camera_setup ours (corner2), --camera_setup lerobot, and --cameras gripper / top.
CAMERAS: dict[str, tuple[str, tuple[float, float, float] | None]] = {
    "corner2": ("corner2", None),
    "lerobot": ("corner2", (0.75, 0.075, 0.7)),  # envs.metaworld.LEROBOT_CORNER2_POS
    "gripper": ("gripperPOV", None),
    "top": ("topview", None),
}
# task -> (object: ("geom" | "body", names), goal site). The object is the part the gripper
# acts on (a handle where the model names one; a body's geoms include its child bodies').
# Reach has no object (its red puck is a distractor the task ignores).
TARGETS: dict[str, tuple[tuple[str, tuple[str, ...]] | None, str]] = {
    "reach-v3": (None, "goal"),
    "push-v3": (("body", ("obj",)), "goal"),
    "pick-place-v3": (("body", ("obj",)), "goal"),
    "door-open-v3": (("geom", ("handle",)), "goal"),
    "drawer-open-v3": (("geom", ("objGeom",)), "goal"),
    "drawer-close-v3": (("geom", ("objGeom",)), "goal"),
    "button-press-topdown-v3": (("body", ("button",)), "hole"),
    "peg-insert-side-v3": (("geom", ("peg",)), "goal"),
    "window-open-v3": (("body", ("windowb_a",)), "goal"),  # the sliding pane with its handle
    "window-close-v3": (("body", ("windowb_a",)), "goal"),
}


def object_geoms(model, spec: tuple[str, tuple[str, ...]] | None) -> np.ndarray:
    """Geom ids of the object `spec` names in `model` (int[G]; empty for none)."""
    if spec is None:
        return np.zeros(0, np.int64)
    kind, names = spec
    if kind == "geom":
        return np.array([model.geom(n).id for n in names], np.int64)
    roots = {model.body(n).id for n in names}
    inside = []
    for b in range(model.nbody):  # a body is inside if one of its ancestors is a root
        a = b
        while a not in roots and a != 0:
            a = int(model.body_parentid[a])
        inside.append(a in roots)
    return np.flatnonzero(np.asarray(inside)[model.geom_bodyid]).astype(np.int64)


def covered_pixels(segmentation: np.ndarray, geoms: np.ndarray, site: int) -> tuple[int, int]:
    """(object pixels, goal pixels) of an int32[H, W, 2] (object id, object type) render."""
    import mujoco

    ids, types = segmentation[..., 0], segmentation[..., 1]
    obj = (types == int(mujoco.mjtObj.mjOBJ_GEOM)) & np.isin(ids, geoms)
    goal = (types == int(mujoco.mjtObj.mjOBJ_SITE)) & (ids == site)
    return int(obj.sum()), int(goal.sum())


def measure_task(task: str, seeds: list[int], sizes: list[int], cameras: list[str],
                 hi_res: int) -> list[dict]:
    """One row per (camera, size): object and goal pixels and areas at each scene's first
    frame (lists over `seeds`)."""
    env = MetaWorldTask(task, seed=seeds[0], image_size=max(sizes))
    env.render_images = False  # our own renderers below
    import mujoco  # after MetaWorldTask picked the GL backend (EGL, else OSMesa)

    model, data = env._env.model, env._env.data
    spec, site_name = TARGETS[task]
    geoms, site = object_geoms(model, spec), model.site(site_name).id
    side = max(hi_res, *sizes)
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, side)
    model.vis.global_.offheight = max(model.vis.global_.offheight, side)
    renderers = {s: mujoco.Renderer(model, s, s) for s in {*sizes, hi_res}}
    for r in renderers.values():
        r.enable_segmentation_rendering()
    counts = {(c, s): [] for c in cameras for s in {*sizes, hi_res}}
    try:
        for seed in seeds:
            env.reset(seed)
            # MetaWorld's reset moves the goal site in the model but not in the data: the
            # first frame draws it where it was. Kinematics put it where the scene has it.
            mujoco.mj_forward(model, data)
            for cam_key in cameras:
                cam_name, pos = CAMERAS[cam_key]
                cam = model.camera(cam_name).id
                saved = model.cam_pos[cam].copy()
                if pos is not None:
                    model.cam_pos[cam] = pos
                    mujoco.mj_forward(model, data)
                for s, r in renderers.items():
                    r.update_scene(data, camera=cam)
                    counts[cam_key, s].append(covered_pixels(r.render(), geoms, site))
                model.cam_pos[cam] = saved
                mujoco.mj_forward(model, data)
    finally:
        for r in renderers.values():
            r.close()
        env.close()
    rows = []
    for cam_key in cameras:
        hi = np.asarray(counts[cam_key, hi_res], np.float64)
        for s in sizes:
            px = np.asarray(counts[cam_key, s])
            area = hi * (s / hi_res) ** 2
            rows.append({
                "task": task, "camera": cam_key, "size": s, "has_object": spec is not None,
                "object_px": px[:, 0].tolist(), "goal_px": px[:, 1].tolist(),
                "object_area": area[:, 0].round(2).tolist(),
                "goal_area": area[:, 1].round(2).tolist()})
    return rows


def _cell(values: list[float], has: bool = True) -> str:
    if not has:
        return "–"
    mean = float(np.mean(values))
    return f"{mean:.0f}" if mean >= 10 else f"{mean:.1f}"


def markdown(rows: list[dict], sizes: list[int], cameras: list[str], seeds: int) -> str:
    """One table per camera: mean object and goal pixels (area in pixels) per task and size."""
    lines = ["# Object and goal visibility by camera and image size", "",
             f"Written by `python -m experiments.pixel_visibility` (docs/pixels.md says how it "
             f"measures). Mean over the first frames of {seeds} `mt10_seen` dev scenes per "
             "task: pixels covered (segmentation at that size), and in brackets the projected "
             "visible area in pixels of that size. `–`: no object (reach).", ""]
    for cam in cameras:
        lines += [f"## {cam}", "",
                  "| task | " + " | ".join(f"object @{s}" for s in sizes) + " | "
                  + " | ".join(f"goal @{s}" for s in sizes) + " |",
                  "|---|" + "---|" * (2 * len(sizes))]
        for task in dict.fromkeys(r["task"] for r in rows):
            by = {r["size"]: r for r in rows if r["task"] == task and r["camera"] == cam}
            obj = [f"{_cell(by[s]['object_px'], by[s]['has_object'])} "
                   f"({_cell(by[s]['object_area'], by[s]['has_object'])})"
                   if by[s]["has_object"] else "–" for s in sizes]
            goal = [f"{_cell(by[s]['goal_px'])} ({_cell(by[s]['goal_area'])})" for s in sizes]
            lines.append(f"| {task} | " + " | ".join(obj + goal) + " |")
        lines.append("")
    return "\n".join(lines)


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (importing the module,
    as the tests do, must not clash with other commands' flags of the same name)."""
    flags.DEFINE_list("tasks", list(MT10_TASKS), "MetaWorld tasks to measure.")
    flags.DEFINE_list("sizes", ["32", "48", "64", "96", "128"], "Image sides in pixels.")
    flags.DEFINE_list("cameras", ["corner2", "lerobot", "gripper", "top"],
                      "Cameras (keys of CAMERAS).")
    flags.DEFINE_integer("scenes", 3, "mt10_seen dev scenes per task (first frames).")
    flags.DEFINE_integer("hi_res", 512, "Side of the render the areas come from.")
    flags.DEFINE_string("out", "", "Markdown table to write (empty: none).")


def main(argv: list[str]) -> None:
    """Measure, print JSON and a summary line, and write the markdown table."""
    from wallwm_jax.evaluation.suites import scene_seeds

    cli.positional(argv)
    fl = flags.FLAGS
    tasks, cameras, scenes, hi_res, out = fl.tasks, fl.cameras, fl.scenes, fl.hi_res, fl.out
    try:
        sizes = [int(s) for s in fl.sizes]
    except ValueError:
        cli.fail(f"--sizes={','.join(fl.sizes)}: expected comma-separated integers")
    if not sizes or min(sizes) < 8 or max(sizes) > 1024:
        cli.fail(f"--sizes={','.join(fl.sizes)}: expected sides between 8 and 1024")
    if not 8 <= hi_res <= 1024:
        cli.fail(f"--hi_res={hi_res}: expected 8..1024")
    bad = [t for t in tasks if t not in TARGETS]
    if bad or not tasks:
        cli.fail(f"--tasks: unknown {bad}; expected some of {', '.join(TARGETS)}")
    bad = [c for c in cameras if c not in CAMERAS]
    if bad or not cameras:
        cli.fail(f"--cameras: unknown {bad}; expected some of {', '.join(CAMERAS)}")
    if scenes < 1:
        cli.fail(f"--scenes={scenes}: expected >= 1")
    rows = []
    for task in tasks:
        seeds = scene_seeds("mt10_seen", task, "dev", scenes)
        rows += measure_task(task, seeds, sizes, cameras, hi_res)
    print(json.dumps({"scenes": scenes, "hi_res": hi_res, "rows": rows}))
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(markdown(rows, sizes, cameras, scenes))
    small = min(sizes)
    at_small = [r for r in rows if r["size"] == small]
    parts = []
    for cam in cameras:
        objs = [np.mean(r["object_px"]) for r in at_small if r["camera"] == cam
                and r["has_object"]]
        goals = [np.mean(r["goal_px"]) for r in at_small if r["camera"] == cam]
        parts.append(f"{cam} object {np.mean(objs) if objs else 0:.1f} px, "
                     f"goal {np.mean(goals):.1f} px")
    print(f"pixel_visibility: {len(tasks)} tasks, {scenes} scenes, at {small} px "
          f"(mean over tasks): " + "; ".join(parts))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
