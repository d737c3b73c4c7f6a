"""Policy over an export, in the export's mode (config.model.max_captions decides) or, for a
unified policy, in event mode:

- event (1 slot): (image, state, instruction, next-event caption) -> the rest of that event;
  the chunk length comes from the duration head;
- unified (>= 2 slots): (image, state, instruction) -> Staircase Decoding writes the captions
  itself, the chunk runs until the predicted end of the last decoded event (at most Tmax);
- chunk (0 slots): (image, state, instruction) -> `eval.chunk_execute_steps` (default Tmax).
Actions are un-normalised with the dataset statistics carried in the export, so a caller gets
raw simulator actions.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from wallwm_jax.data import statistics
from wallwm_jax.data.batches import Observation
from wallwm_jax.data.pipeline import bin_to_steps
from wallwm_jax.data.tokenizer import Tokenizer
from wallwm_jax.export import load_bundle
from wallwm_jax.models import wallwm
from wallwm_jax.models.decoding import staircase_decode

MODES = ("event", "unified", "chunk")


def trained_mode(config: ml_collections.ConfigDict) -> str:
    """The mode a config trains: caption slots 0 -> chunk, 1 -> event, >= 2 -> unified."""
    slots = int(config.model.max_captions)
    return "chunk" if slots == 0 else "event" if slots == 1 else "unified"


def runnable_modes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Modes a policy trained with `config` can run: its own, and event mode for a unified
    policy (one given caption, the degenerate case of Staircase Decoding)."""
    mode = trained_mode(config)
    return ("unified", "event") if mode == "unified" else (mode,)


class Policy:
    """A jitted policy over one set of params (batch of one observation), any mode."""

    def __init__(self, params: Any, config: ml_collections.ConfigDict,
                 norm_stats: dict[str, Any], tokenizer_path: str, *, seed: int = 0,
                 mode: str | None = None):
        self.params = jax.device_put(params)  # on the device once, not on every act()
        self.config = config
        self.norm_stats = {key: {name: np.asarray(v, np.float32) for name, v in s.items()}
                           for key, s in norm_stats.items()}  # JSON lists (assets) too
        self.tokenizer = Tokenizer(tokenizer_path)
        self._rng = jax.random.PRNGKey(seed)
        self.modes = runnable_modes(config)
        self.mode = mode or self.modes[0]
        if self.mode not in self.modes:
            raise ValueError(f"this policy was trained in {trained_mode(config)} mode and can "
                             f"run {', '.join(self.modes)}; {self.mode!r} is not one of them")
        self.cameras = tuple(config.data.get("cameras", ("image",)))
        self.state_dim = int(config.model.state_dim)
        model_cfg = config.model
        self.num_slots = int(model_cfg.max_captions)
        self._sample = jax.jit(
            lambda p, obs, rng: wallwm.sample_actions(model_cfg, p, obs, rng))
        self._decode = None
        if self.num_slots >= 2:
            self._decode = jax.jit(lambda p, obs, rng: staircase_decode(
                model_cfg, p, obs, rng, max_len=config.data.caption_len))

    def reset(self, seed: int) -> None:
        """Restart the sampling noise from `seed` (the evaluator seeds every episode)."""
        self._rng = jax.random.PRNGKey(seed)

    def _images(self, image: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        size = self.config.data.image_size
        if not isinstance(image, dict):
            image = {self.cameras[0]: image}
        missing = [c for c in self.cameras if c not in image]
        if missing:
            raise ValueError(f"observation lacks camera(s) {missing}; this policy reads "
                             f"{list(self.cameras)}")
        frames = []
        for name in self.cameras:
            frame = np.asarray(image[name])
            if frame.shape != (size, size, 3):
                raise ValueError(f"camera {name!r} has shape {frame.shape}, expected "
                                 f"{(size, size, 3)}")
            frames.append(frame.astype(np.uint8))
        return np.stack(frames)[None] if len(frames) > 1 else frames[0][None]

    def act(self, image: np.ndarray | dict[str, np.ndarray], state: np.ndarray,
            instruction: str, caption: str | None = None, *,
            mode: str | None = None) -> dict[str, Any]:
        """image uint8 [H,W,3] (or {camera: image}), state float [S] -> `actions` [n, A].

        `caption` (the next event's description) is required in event mode and ignored
        otherwise. Also returns `chunk` (all Tmax predicted steps, raw units), `duration_bin`
        per caption slot, `world` (uint8 [w,w,3], the predicted event-end frame) and, in
        unified mode, the decoded `captions` (text) and `event_steps` per decoded caption.
        """
        dcfg = self.config.data
        mode = mode or self.mode
        if mode not in self.modes:
            raise ValueError(f"this policy can run {', '.join(self.modes)}, not {mode!r}")
        state = np.asarray(state, np.float32)
        if state.shape != (self.state_dim,):
            raise ValueError(f"state has shape {state.shape}, expected ({self.state_dim},)")
        if mode == "event" and caption is None:
            raise ValueError("event mode needs the next event's caption")
        slots = np.zeros((1, self.num_slots, dcfg.caption_len), np.int32)
        if mode == "event":
            slots[0, 0] = self.tokenizer.encode(caption, dcfg.caption_len)
        obs = Observation(
            image=self._images(image),
            state=statistics.normalize(state, self.norm_stats["state"],
                                       dcfg.norm_mode)[None].astype(np.float32),
            instruction=self.tokenizer.encode(instruction, dcfg.instruction_len)[None],
            caption=slots,
        )
        self._rng, rng = jax.random.split(self._rng)
        fn = self._decode if mode == "unified" else self._sample
        out = jax.device_get(fn(self.params, obs, rng))
        chunk = statistics.unnormalize(np.asarray(out["actions"][0]), self.norm_stats["action"],
                                       dcfg.norm_mode).astype(np.float32)
        bins = np.asarray(out["duration_bin"][0])
        world = np.clip((np.asarray(out["world"][0]) + 1.0) * 127.5, 0, 255).astype(np.uint8)
        result: dict[str, Any] = {"chunk": chunk, "duration_bin": bins, "world": world}
        steps = bin_to_steps(bins, tuple(dcfg.duration_bins))
        if mode == "chunk":
            n = int(self.config.eval.get("chunk_execute_steps") or chunk.shape[0])
        elif mode == "event":
            n = int(steps[0])
        else:
            captions = np.asarray(out["captions"][0])
            present = captions[:, 0] != 0
            result["captions"] = [self.tokenizer.decode(c) for c in captions[present]]
            result["event_steps"] = [int(x) for x in steps[:len(present)][present]]
            n = int(np.sum(steps[:len(present)][present]))
        result["actions"] = chunk[:max(1, min(n, chunk.shape[0]))]
        return result


def load_policy(export_dir: str, *, seed: int = 0, mode: str | None = None) -> Policy:
    """Load an export bundle (see wallwm_jax.export) as a ready-to-act policy."""
    params, config, norm_stats, tokenizer_path = load_bundle(export_dir)
    return Policy(params, config, norm_stats, tokenizer_path, seed=seed, mode=mode)


def main() -> None:
    """`python -m wallwm_jax.policy --export DIR --task reach-v3`: act once, print JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--export", required=True, help="export bundle directory")
    parser.add_argument("--task", default="reach-v3", help="MetaWorld task to observe")
    args = parser.parse_args()
    from absl import logging

    logging.set_verbosity(logging.WARNING)

    from wallwm_jax.data import captions
    from wallwm_jax.envs.metaworld import MetaWorldTask

    policy = load_policy(args.export)
    env = MetaWorldTask(args.task, seed=7, image_size=policy.config.data.image_size)
    try:
        obs = env.reset()
        phase = env.phase()
    finally:
        env.close()
    out = policy.act(obs["image"], obs["state"],
                     captions.instruction(args.task, variant=0, split="train"),
                     captions.event_caption(args.task, phase, variant=0, split="train"))
    print(json.dumps({"task": args.task, "phase": phase,
                      "actions_shape": list(out["actions"].shape),
                      "chunk_shape": list(out["chunk"].shape),
                      "first_action": out["actions"][0].round(4).tolist()}))


if __name__ == "__main__":
    main()
