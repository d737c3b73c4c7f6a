"""One MetaWorld expert rollout as a `metaworld_events` example: simulated (or read back from
the build's rollout cache), checked against the episode contract and encoded as TFDS features.
"""

from __future__ import annotations

import io
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from wallwm_jax.data import captions
from wallwm_jax.data.episodes import validate_episode
from wallwm_jax.envs.metaworld import rollout_expert


class RolloutJob(NamedTuple):
    """What one rollout of a build needs (a tuple, so it pickles to spawned workers)."""

    task: str
    index: int
    seed: int
    image_size: int
    max_steps: int
    cameras: tuple[str, ...]
    privileged_state: bool
    action_noise: float
    camera_setup: str
    cache_dir: str | None


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def episode_example(task: str, index: int, rollout: dict,
                    cameras: tuple[str, ...] = ()) -> dict:
    """Feature dict of one rollout (images already PNG-encoded so TFDS needs no TensorFlow)."""
    t = len(rollout["actions"])
    events = rollout["events"]
    observation = {"image": [_png(im) for im in rollout["images"]],
                   "state": rollout["states"].astype(np.float32),
                   **{f"image_{c}": [_png(im) for im in rollout[f"images_{c}"]]
                      for c in cameras}}
    return {
        "steps": {
            "observation": observation,
            "action": rollout["actions"].astype(np.float32),
            "is_first": np.arange(t) == 0,
            "is_last": np.arange(t) == t - 1,
        },
        "episode_metadata": {
            "task": task,
            "instruction": captions.instruction(task, variant=index),
            "success": bool(rollout["success"]),
        },
        "events": {
            "start": np.array([s for s, _, _ in events], np.int32),
            "end": np.array([e for _, e, _ in events], np.int32),
            "caption": [captions.event_caption(task, p, variant=index + k)
                        for k, (_, _, p) in enumerate(events)],
            "phase": [p for _, _, p in events],
        },
    }


def check_rollout(rollout: dict, image_size: int, cameras: tuple[str, ...]) -> None:
    """Raise ValueError naming the field when a rollout breaks the episode contract
    (shapes, NaN/Inf, events that do not tile the episode, wrong-size frames)."""
    t = len(rollout["actions"])
    events = rollout["events"]
    flat = {
        "steps/observation/image": rollout["images"],
        "steps/observation/state": rollout["states"], "steps/action": rollout["actions"],
        "steps/is_first": np.arange(t) == 0, "steps/is_last": np.arange(t) == t - 1,
        "episode_metadata/task": "", "episode_metadata/instruction": "",
        "episode_metadata/success": bool(rollout["success"]),
        "events/start": np.array([s for s, _, _ in events], np.int32),
        "events/end": np.array([e for _, e, _ in events], np.int32),
        "events/caption": [p for _, _, p in events], "events/phase": [p for _, _, p in events],
    }
    validate_episode(flat, image_shape=(image_size, image_size, 3))
    for c in cameras:
        frames = rollout[f"images_{c}"]
        if frames.shape != (t, image_size, image_size, 3):
            raise ValueError(f"field 'steps/observation/image_{c}': shape {frames.shape}, "
                             f"expected {(t, image_size, image_size, 3)}")


def rollout_job(job: RolloutJob) -> tuple[str, int, dict]:
    """One expert rollout, read from / written to the rollout cache (`cache_dir`) so an
    interrupted build restarts from the episodes it already simulated."""
    (task, index, seed, image_size, max_steps, cameras, privileged_state, action_noise,
     camera_setup, cache_dir) = job
    path = os.path.join(cache_dir, f"{task}_{index:06d}.npz") if cache_dir else None
    if path and os.path.exists(path):
        with np.load(path, allow_pickle=False) as f:
            rollout = {k: f[k] for k in f.files}
        rollout["events"] = [(int(s), int(e), str(p)) for s, e, p in zip(
            rollout.pop("event_start"), rollout.pop("event_end"), rollout.pop("event_phase"),
            strict=True)]
        rollout["success"] = bool(rollout["success"])
        rollout["phases"] = list(rollout["phases"])
        return task, index, rollout
    rollout = rollout_expert(task, seed=seed, image_size=image_size, max_steps=max_steps,
                             extra_cameras=cameras, privileged_state=privileged_state,
                             action_noise=action_noise, camera_setup=camera_setup)
    if path:
        arrays = {k: v for k, v in rollout.items() if k not in ("events",)}
        arrays["phases"] = np.asarray(rollout["phases"], str)
        arrays["event_start"] = np.asarray([s for s, _, _ in rollout["events"]], np.int64)
        arrays["event_end"] = np.asarray([e for _, e, _ in rollout["events"]], np.int64)
        arrays["event_phase"] = np.asarray([p for _, _, p in rollout["events"]], str)
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a killed build never leaves a half-written episode
    return task, index, rollout
