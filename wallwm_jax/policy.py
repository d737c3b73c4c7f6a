"""Policy over an export, in the export's mode (config.model.max_captions decides):

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


class Policy:
    """A jitted policy over one set of params (batch of one observation), any mode."""

    def __init__(self, params: Any, config: ml_collections.ConfigDict,
                 norm_stats: dict[str, Any], tokenizer_path: str, *, seed: int = 0):
        self.params = params
        self.config = config
        self.norm_stats = norm_stats
        self.tokenizer = Tokenizer(tokenizer_path)
        self._rng = jax.random.PRNGKey(seed)
        model_cfg = config.model
        self.num_slots = int(model_cfg.max_captions)
        if self.num_slots >= 2:
            self._sample = jax.jit(lambda p, obs, rng: staircase_decode(
                model_cfg, p, obs, rng, max_len=config.data.caption_len))
        else:
            self._sample = jax.jit(
                lambda p, obs, rng: wallwm.sample_actions(model_cfg, p, obs, rng))

    def act(self, image: np.ndarray, state: np.ndarray, instruction: str,
            caption: str | None = None) -> dict[str, np.ndarray]:
        """image uint8 [H,W,3], state float [S] -> `actions` float32 [n, A] with n >= 1.

        `caption` (the next event's description) is required in event mode and ignored
        otherwise. Also returns `chunk` (all Tmax predicted steps, raw units), `duration_bin`
        per caption slot and, in unified mode, the decoded `captions` (text).
        """
        dcfg = self.config.data
        if image.shape != (dcfg.image_size, dcfg.image_size, 3):
            raise ValueError(f"image has shape {image.shape}, expected "
                             f"{(dcfg.image_size, dcfg.image_size, 3)}")
        if self.num_slots == 1 and caption is None:
            raise ValueError("this is an event-mode policy: act() needs the event caption")
        slots = np.zeros((1, self.num_slots, dcfg.caption_len), np.int32)
        if self.num_slots == 1:
            slots[0, 0] = self.tokenizer.encode(caption, dcfg.caption_len)
        obs = Observation(
            image=np.asarray(image, np.uint8)[None],
            state=statistics.normalize(np.asarray(state, np.float32), self.norm_stats["state"],
                                       dcfg.norm_mode)[None].astype(np.float32),
            instruction=self.tokenizer.encode(instruction, dcfg.instruction_len)[None],
            caption=slots[:, :min(self.num_slots, 1)],
        )
        self._rng, rng = jax.random.split(self._rng)
        out = jax.device_get(self._sample(self.params, obs, rng))
        chunk = statistics.unnormalize(np.asarray(out["actions"][0]), self.norm_stats["action"],
                                       dcfg.norm_mode).astype(np.float32)
        bins = np.asarray(out["duration_bin"][0])
        result = {"chunk": chunk, "duration_bin": bins}
        if self.num_slots == 0:
            n = int(self.config.eval.get("chunk_execute_steps") or chunk.shape[0])
        else:
            present = np.ones(1, bool)
            if "captions" in out:
                captions = np.asarray(out["captions"][0])
                present = captions[:, 0] != 0
                result["captions"] = [self.tokenizer.decode(c) for c in captions[present]]
            n = int(np.sum(bin_to_steps(bins, tuple(dcfg.duration_bins))[:len(present)][
                present]))
        result["actions"] = chunk[:max(1, min(n, chunk.shape[0]))]
        return result


def load_policy(export_dir: str, *, seed: int = 0) -> Policy:
    """Load an export bundle (see wallwm_jax.export) as a ready-to-act policy."""
    params, config, norm_stats, tokenizer_path = load_bundle(export_dir)
    return Policy(params, config, norm_stats, tokenizer_path, seed=seed)


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
