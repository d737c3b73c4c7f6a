"""MetaWorld tasks with scripted experts and ground-truth phases: the embedded data source.

`MetaWorldTask` wraps one MuJoCo task (seeded object/goal positions, upright camera images);
`rollout_expert` runs the scripted expert and labels every step with the expert's phase.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    # Headless machine: MuJoCo must pick an offscreen GL backend before it is imported.
    os.environ["MUJOCO_GL"] = "egl"

# The task vocabulary lives in data/tasks.py (no simulator import); re-exported here.
from wallwm_jax.data.tasks import (  # noqa: E402, F401
    DEMO_TASKS,
    MT10_TASKS,
    MT50_EXTRA,
    MT50_TASKS,
    TASK_OBJECTS,
    state_dim,
    state_vector,
)

# Extra camera feature name -> MuJoCo camera (the scene camera is `image`, from `camera`).
EXTRA_CAMERAS = {"gripper": "gripperPOV", "behind": "behindGripper", "top": "topview"}
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)  # lerobot.envs.metaworld's corner2 position
# Tasks MetaWorld scores by the tool centre point (between the fingertips, ~4.5 cm below the
# hand position the observation reports) whose MetaWorld expert drives the *hand* onto the goal,
# finishing ~0.5 cm inside the 5 cm success ball. Our expert aims the tool centre point at the
# goal instead, so its demonstrations end in the middle of the ball (docs/demo.md).
TCP_AIMED_TASKS = ("reach-v3", "reach-wall-v3")
HOLD = "hold"  # phase of the steps the rollout keeps after the task has succeeded
SETTLE_STEPS = 5  # steps kept after success so the last event shows the finished task
MIN_EVENT_STEPS = 2


def _xy(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a[:2] - b[:2]))


# Phase functions mirror the `_desired_pos` branches of metaworld.policies (same thresholds).
# Arguments: hand xyz, gripper opening, object xyz, goal xyz from the full observation.
PhaseFn = Callable[[np.ndarray, float, np.ndarray, np.ndarray], str]


def _phase_reach(hand, grip, obj, goal):
    return "reach"


def _phase_push(hand, grip, obj, goal):
    puck = obj + np.array([-0.005, 0.0, 0.0])
    if _xy(hand, puck) > 0.02:
        return "reach"
    if abs(hand[2] - puck[2]) > 0.04:
        return "grasp"  # drops onto the puck while closing the gripper
    return "push"


def _phase_pick_place(hand, grip, obj, goal):
    puck = obj + np.array([-0.005, 0.0, 0.0])
    if _xy(hand, puck) > 0.02:
        return "reach"
    if (abs(hand[2] - puck[2]) > 0.05 and puck[2] < 0.04) or grip > 0.73:
        return "grasp"
    return "transport"


def _phase_door_open(hand, grip, obj, goal):
    door = obj - np.array([0.05, 0.0, 0.0])
    if _xy(hand, door) > 0.12:
        return "reach"
    if abs(hand[2] - door[2]) > 0.04:
        return "lower"
    return "pull"


def _phase_drawer_open(hand, grip, obj, goal):
    drawer = obj + np.array([0.0, 0.0, -0.02])
    if _xy(hand, drawer) > 0.06:
        return "reach"
    if abs(hand[2] - drawer[2]) > 0.04:
        return "lower"
    return "pull"


def _phase_drawer_close(hand, grip, obj, goal):
    drawer = obj + np.array([0.0, 0.0, -0.02])
    if hand[1] > drawer[1]:
        return "reach"  # rises, then moves above the front of the drawer
    if abs(hand[2] - drawer[2]) > 0.04:
        return "lower"
    return "push"


def _phase_button_topdown(hand, grip, obj, goal):
    return "reach" if _xy(hand, obj) > 0.04 else "press"


def _phase_peg_insert_side(hand, grip, obj, goal):
    hole = np.array([-0.35, goal[1], 0.16])
    if _xy(hand, obj) > 0.04:
        return "reach"
    if abs(hand[2] - obj[2]) > 0.025:
        return "grasp"
    if np.linalg.norm(obj[1:] - hole[1:]) > 0.03:
        return "transport"
    return "insert"


def _phase_window(dx: float) -> PhaseFn:
    def phase(hand, grip, obj, goal):
        window = obj + np.array([dx, -0.03, -0.08])
        if _xy(hand, window) > 0.04:
            return "reach"
        if abs(hand[2] - window[2]) > 0.02:
            return "lower"
        return "slide"
    return phase


class GenericPhases:
    """Privileged phases for the MT50 tasks without a hand-written rule, from the object's
    motion since reset (sticky): reach until the object first moves (a grasping task is in
    "grasp" while the hand is at the still object), then the task's own verb."""

    def __init__(self, grasps: bool, verb: str):
        self.grasps, self.verb = grasps, verb
        self._start: np.ndarray | None = None
        self._moved = False

    def reset(self, obj: np.ndarray) -> None:
        self._start, self._moved = obj.copy(), False

    def __call__(self, hand, grip, obj, goal) -> str:
        if self.verb == "reach":
            return "reach"
        self._moved |= bool(np.linalg.norm(obj - self._start) > 0.01)
        if self._moved:
            return self.verb
        if self.grasps and np.linalg.norm(hand - obj) < 0.05:
            return "grasp"
        return "reach"


PHASE_FNS: dict[str, PhaseFn] = {
    "reach-v3": _phase_reach,
    "push-v3": _phase_push,
    "pick-place-v3": _phase_pick_place,
    "door-open-v3": _phase_door_open,
    "drawer-open-v3": _phase_drawer_open,
    "drawer-close-v3": _phase_drawer_close,
    "button-press-topdown-v3": _phase_button_topdown,
    "peg-insert-side-v3": _phase_peg_insert_side,
    "window-open-v3": _phase_window(-0.03),
    "window-close-v3": _phase_window(+0.03),
}


def _policy_class_name(task: str) -> str:
    words = task.replace("-v3", "").replace("peg-insert", "peg-insertion").split("-")
    return "Sawyer" + "".join(w.capitalize() for w in words) + "V3Policy"


@functools.cache
def _import_mujoco_envs():
    """Import MetaWorld, falling back from EGL to OSMesa when EGL cannot start."""
    # The scripted policies warn on every call that their gains exceed the action range
    # (the env clips); it says nothing about a rollout.
    warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
    try:
        import mujoco
        from metaworld import env_dict, policies

        if os.environ.get("MUJOCO_GL") == "egl":  # probe: EGL can import yet fail to start
            mujoco.GLContext(8, 8).free()
    except Exception as err:  # any EGL start-up failure means: try OSMesa
        if os.environ.get("MUJOCO_GL") != "egl":
            raise
        print(f"[metaworld] EGL rendering failed ({err}); falling back to MUJOCO_GL=osmesa",
              file=sys.stderr)
        os.environ["MUJOCO_GL"] = "osmesa"
        for name in [m for m in sys.modules if m.startswith(("mujoco", "metaworld"))]:
            del sys.modules[name]
        from metaworld import env_dict, policies
    return env_dict, policies


class MetaWorldTask:
    """One MetaWorld task; object and goal positions are drawn from `seed` at each reset.

    Observations carry `state`: the 4-D agent state (hand xyz, gripper), or with
    `privileged_state=True` the 10-D vector that adds the object and goal positions only the
    simulator knows (layout: `wallwm_jax.data.tasks.state_layout`).
    """

    def __init__(self, task: str, *, seed: int, image_size: int = 64, camera: str = "corner2",
                 fast_render: bool = True, extra_cameras: tuple[str, ...] = (),
                 camera_setup: str = "ours", privileged_state: bool = False):
        if task not in TASK_OBJECTS:
            raise ValueError(f"unknown MetaWorld task {task!r}; known: {sorted(TASK_OBJECTS)}")
        env_dict, policies = _import_mujoco_envs()
        self.task = task
        self.image_size = image_size
        unknown = [c for c in extra_cameras if c not in EXTRA_CAMERAS]
        if unknown:
            raise ValueError(f"unknown extra camera(s) {unknown}; known: {sorted(EXTRA_CAMERAS)}")
        self.extra_cameras = tuple(extra_cameras)
        self._env = env_dict.ALL_V3_ENVIRONMENTS[task](
            render_mode="rgb_array", camera_name=camera, width=image_size, height=image_size)
        # What MetaWorld's benchmarks do in set_task, minus the fixed list of 50 goals:
        # goals visible to the expert, and a fresh position vector from the env's seeded RNG.
        self._env._partially_observable = False
        del self._env.sawyer_observation_space  # cached with zero goal bounds; recompute
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._env._set_task_called = True
        if camera_setup not in ("ours", "lerobot"):
            raise ValueError(f"camera_setup must be 'ours' or 'lerobot', got {camera_setup!r}")
        # "lerobot": corner2 moved as LeRobot's MetaWorld env does, image flipped on both axes.
        self._flip_both = camera_setup == "lerobot" and camera == "corner2"
        if self._flip_both:
            import mujoco

            cam = mujoco.mj_name2id(self._env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            self._env.model.cam_pos[cam] = LEROBOT_CORNER2_POS
        self._env.max_path_length = 10_000  # the rollout, not MetaWorld, decides the horizon
        self._fast_render_pending = fast_render
        self._policy = getattr(policies, _policy_class_name(task))()
        if task in PHASE_FNS:
            self._phase_fn = PHASE_FNS[task]
        else:
            _, _, grasps, verb, _ = MT50_EXTRA[task]
            self._phase_fn = GenericPhases(grasps, verb)
        self.privileged_state = bool(privileged_state)
        self.state_dim = state_dim(self.privileged_state)
        self._discarded = False  # set by discard(): episode_env closes it instead of keeping it
        self._start_episode_state(seed)

    def _obs_dict(self) -> dict[str, np.ndarray]:
        if self._fast_render_pending and self.render_images:
            # Shadows and reflections cost ~4x render time under software GL (Mesa llvmpipe)
            # and carry little information at 64x64. The viewer must be created after the
            # first reset (creating it earlier renders black frames in later envs).
            import mujoco

            self._env.render()
            viewer = self._env.mujoco_renderer.viewer
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._fast_render_pending = False
        out = {"state": state_vector(self._obs, self.privileged_state)}
        if not self.render_images:
            return out
        viewer = self._env.mujoco_renderer.viewer
        if viewer is not None:  # another environment's GL context may be current (episode_env)
            viewer.make_context_current()
        frame = self._env.render()
        # MuJoCo renders upside down; LeRobot's corner2 convention flips both axes.
        frame = frame[::-1, ::-1] if self._flip_both else frame[::-1]
        out["image"] = np.ascontiguousarray(frame).astype(np.uint8)
        for name in self.extra_cameras:
            import mujoco

            cam = mujoco.mj_name2id(self._env.model, mujoco.mjtObj.mjOBJ_CAMERA,
                                    EXTRA_CAMERAS[name])
            frame = self._env.mujoco_renderer.viewer.render(render_mode="rgb_array",
                                                            camera_id=cam)
            out[f"image_{name}"] = np.ascontiguousarray(frame[::-1]).astype(np.uint8)
        return out

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Reset with new positions; returns {'image': uint8[H,W,3], 'state': float32[S]}
        (S = 4, or 10 with privileged simulator state)."""
        import mujoco

        self._env.seed(self._seed if seed is None else seed)
        self._obs, _ = self._env.reset()
        # MetaWorld's reset moves the goal site in the model but leaves its world position as
        # it was: without a forward pass the first frame draws the goal where the previous
        # scene had it (e.g. 15 pixels of a 128-px reach frame). It moves nothing physical.
        mujoco.mj_forward(self._env.model, self._env.data)
        self._succeeded = False
        if isinstance(self._phase_fn, GenericPhases):
            self._phase_fn.reset(self._obs[4:7])
        return self._obs_dict()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Apply a float[4] action (xyz delta, gripper); returns (observation, success)."""
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        self._obs, _, _, _, info = self._env.step(action)
        success = bool(info["success"])
        self._succeeded |= success
        return self._obs_dict(), success

    def observe(self) -> dict[str, np.ndarray]:
        """The observation of the current state, rendered now: what `step` would have returned
        with `render_images` on (a policy that acts every few steps needs only the frame it
        acts on; a frame costs ~22 ms under software GL, the physics step far less)."""
        rendering, self.render_images = self.render_images, True
        try:
            return self._obs_dict()
        finally:
            self.render_images = rendering

    def expert_action(self) -> np.ndarray:
        """The scripted expert's float32[4] action for the current full observation (for
        `TCP_AIMED_TASKS`, MetaWorld's expert given the hand target that puts the tool centre
        point on the goal)."""
        obs = self._obs.copy()
        if self.task in TCP_AIMED_TASKS:
            obs[-3:] += obs[:3] - self._env.tcp_center
        return np.asarray(self._policy.get_action(obs), np.float32)

    def phase(self) -> str:
        """The expert's current phase from privileged positions (hand, gripper, object, goal)."""
        if self._succeeded:
            return HOLD
        obs = self._obs
        return self._phase_fn(obs[:3].copy(), float(obs[3]), obs[4:7].copy(), obs[-3:].copy())

    def close(self) -> None:
        self._env.close()

    def discard(self) -> None:
        """Not to be reused by `episode_env` (an episode failed in it): closed when it ends."""
        self._discarded = True

    def _start_episode_state(self, seed: int) -> None:
        """The per-episode state a new instance starts with (and `episode_env` gives a reused
        one): `reset` rebuilds the simulation (MuJoCo data, positions, phase tracker)."""
        self._seed = seed
        self.render_images = True  # False: observations carry state only (no GL work)
        self._obs: np.ndarray | None = None
        self._succeeded = False


# Idle environments kept between episodes, one per configuration: making one compiles the
# task's MuJoCo model (~0.14 s) and, at its first frame, a GL context that uploads the scene
# (~0.5 s on software GL), against ~22 ms a frame after that. An episode takes one out and
# returns it when it ends normally. Only the main thread keeps them: a GL context is current
# in the thread that made it (episodes run in the main thread of each process today).
_IDLE: dict[tuple, MetaWorldTask] = {}  # least recently returned first
MAX_IDLE = 4  # an MT50 run visits 50 tasks: keep the last few, not 50 GL contexts
_IDLE_LOCK = threading.Lock()
_close_at_exit_registered = False


@contextlib.contextmanager
def episode_env(task: str, *, seed: int, **options) -> Iterator[MetaWorldTask]:
    """A `MetaWorldTask(task, seed=seed, **options)` for one episode: this process's idle one
    of the same configuration if there is one (what it computes is a new one's: tests/envs),
    else a new one. Kept for the next episode when the block ends; closed if it raised or
    was discarded (and always, outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        env = MetaWorldTask(task, seed=seed, **options)
        try:
            yield env
        finally:
            env.close()
        return
    key = (task, tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                              for k, v in options.items())))
    with _IDLE_LOCK:
        env = _IDLE.pop(key, None)
    if env is None:
        env = MetaWorldTask(task, seed=seed, **options)
    else:
        env._start_episode_state(seed)
    try:
        yield env
    except BaseException:
        env.close()
        raise
    if env._discarded:
        env.close()
        return
    global _close_at_exit_registered
    with _IDLE_LOCK:
        if not _close_at_exit_registered:
            # Registered after MuJoCo's EGL module registered its exit handler (which ends
            # the EGL display, at the first GL context: the probe in _import_mujoco_envs), so
            # it runs before that one: atexit runs handlers last-in first-out.
            atexit.register(close_idle_envs)
            _close_at_exit_registered = True
        spare = [_IDLE.pop(key)] if key in _IDLE else []
        _IDLE[key] = env
        while len(_IDLE) > MAX_IDLE:
            spare.append(_IDLE.pop(next(iter(_IDLE))))
    for old in spare:
        old.close()


def close_idle_envs() -> None:
    """Close every environment `episode_env` keeps (their GL contexts and MuJoCo models)."""
    with _IDLE_LOCK:
        envs = list(_IDLE.values())
        _IDLE.clear()
    for env in envs:
        env.close()


def segment_phases(phases: list[str], min_len: int = MIN_EVENT_STEPS) -> list[tuple[int, int, str]]:
    """Maximal runs of equal phase as (start, end_exclusive, phase), tiling [0, T).

    Runs shorter than `min_len` are merged into the previous run (into the next one at the
    start of the episode), so chattering at a branch threshold does not make tiny events.
    """
    runs: list[list] = []
    for t, name in enumerate(phases):
        if runs and runs[-1][2] == name:
            runs[-1][1] = t + 1
        else:
            runs.append([t, t + 1, name])
    merged: list[list] = []
    for run in runs:
        if merged and (run[1] - run[0] < min_len or merged[-1][2] == run[2]):
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    if len(merged) > 1 and merged[0][1] - merged[0][0] < min_len:
        merged[1][0] = 0
        merged.pop(0)
    return [(s, e, p) for s, e, p in merged]


def rollout_expert(task: str, *, seed: int, image_size: int = 64,
                   max_steps: int = 200, extra_cameras: tuple[str, ...] = (),
                   privileged_state: bool = False, action_noise: float = 0.0,
                   camera_setup: str = "ours") -> dict:
    """Run the scripted expert once; T = steps taken (stops SETTLE_STEPS after success).

    `camera_setup` places the scene camera as `MetaWorldTask` does ("lerobot": the view the
    `mt50_lerobot` evaluation suite renders).

    Returns images uint8[T,H,W,3], states float32[T,S] (S = 4, or 10 with
    `privileged_state`: object and goal positions appended), actions float32[T,4] in [-1, 1],
    phases (T names), events [(start, end_exclusive, phase)], success (bool), and
    `images_<name>` uint8[T,H,W,3] per extra camera.
    """
    with episode_env(task, seed=seed, image_size=image_size, extra_cameras=extra_cameras,
                     privileged_state=privileged_state, camera_setup=camera_setup) as env:
        return _rollout(env, seed=seed, max_steps=max_steps, action_noise=action_noise,
                        extra_cameras=extra_cameras)


def _rollout(env: MetaWorldTask, *, seed: int, max_steps: int, action_noise: float,
             extra_cameras: tuple[str, ...]) -> dict:
    # DART-style noise injection: with action_noise > 0 the executed action is the expert's
    # plus N(0, action_noise^2) (seeded by `seed`), while the recorded action stays the
    # expert's clean one, so the data shows how the expert recovers from small deviations.
    noise_rng = np.random.default_rng(seed)
    obs = env.reset()
    images, states, actions, phases = [], [], [], []
    extra = {name: [] for name in extra_cameras}
    success_at = None
    for t in range(max_steps):
        action = np.clip(env.expert_action(), -1.0, 1.0)
        images.append(obs["image"])
        for name, frames in extra.items():
            frames.append(obs[f"image_{name}"])
        states.append(obs["state"])
        actions.append(action)
        phases.append(env.phase())
        executed = action
        if action_noise > 0:
            executed = np.clip(action + noise_rng.normal(0.0, action_noise, action.shape),
                               -1.0, 1.0).astype(np.float32)
        obs, success = env.step(executed)
        if success and success_at is None:
            success_at = t
        if success_at is not None and t >= success_at + SETTLE_STEPS:
            break
    return {
        "images": np.stack(images), "states": np.stack(states),
        "actions": np.stack(actions).astype(np.float32), "phases": phases,
        "events": segment_phases(phases), "success": success_at is not None,
        **{f"images_{name}": np.stack(frames) for name, frames in extra.items()},
    }


if __name__ == "__main__":
    import time

    for name in DEMO_TASKS:
        t0 = time.perf_counter()
        ep = rollout_expert(name, seed=0, max_steps=100)
        dt = time.perf_counter() - t0
        print(f"{name}: {len(ep['actions'])} steps in {dt:.2f}s "
              f"({100 * dt / len(ep['actions']):.2f}s/100 steps), success={ep['success']}, "
              f"events={[(s, e, p) for s, e, p in ep['events']]}")
