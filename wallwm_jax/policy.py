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

from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np

from wallwm_jax.data.batches import Observation, uses_masks
from wallwm_jax.data.embodiment import Embodiment, read_embodiments
from wallwm_jax.data.tokenizer import Tokenizer
from wallwm_jax.data.transforms import ModelIO
from wallwm_jax.export import load_bundle, runnable_modes, trained_mode
from wallwm_jax.models.decoding import (
    cast_for_inference,
    sample_rows,
    staircase_decode,
    unrolled_layers,
)

MODES = ("event", "unified", "chunk")
T = TypeVar("T")
__all__ = ["MODES", "Policy", "load_policy", "runnable_modes", "trained_mode"]


class Policy:
    """A jitted policy over one set of params, any mode: one observation (`act`) or several
    stacked into one call (`act_batch`, what the server runs for concurrent requests).

    Inputs go through `wallwm_jax.data.transforms.ModelIO`, the preprocessing the training
    pipeline uses, so the model sees what it saw in training.
    """

    def __init__(self, params: Any, config: ml_collections.ConfigDict,
                 norm_stats: dict[str, Any], tokenizer_path: str, *, seed: int = 0,
                 mode: str | None = None, embodiment: Embodiment | None = None):
        # Layer stacks split once here, not per call: a batch-1 step then reads each layer's
        # weights in place (`unrolled_layers`); `model_config` is the config they fit.
        self.model_config, params = unrolled_layers(config.model, params)
        # bf16 compute: the decoder's weights stored in bf16 once, not cast per token step.
        params = cast_for_inference(self.model_config, params)
        # On the device once: a numpy tree here would be copied host->device on every act().
        self.params = jax.device_put(params)
        self.config = config
        self.tokenizer = Tokenizer(tokenizer_path)
        # A model trained on a mixture reads this robot's state and cameras padded and masked
        # into its widths and returns actions in the robot's own width (`norm_stats` are the
        # robot's: `load_policy(..., embodiment=NAME)`).
        widths = ((int(config.model.state_dim), int(config.model.action_dim))
                  if uses_masks(config.data) else None)
        self.embodiment = embodiment
        self.embodiments: dict[str, Embodiment] = {}  # every robot of the export (load_policy)
        self.io = ModelIO(config.data, norm_stats, self.tokenizer, embodiment=embodiment,
                          widths=widths)
        self.norm_stats = self.io.norm_stats
        self.seed = seed
        self._rng = jax.random.PRNGKey(seed)
        self.modes = runnable_modes(config)
        self.mode = mode or self.modes[0]
        if self.mode not in self.modes:
            raise ValueError(f"this policy was trained in {trained_mode(config)} mode and can "
                             f"run {', '.join(self.modes)}; {self.mode!r} is not one of them")
        self.cameras = tuple(c for c, here in zip(self.io.cameras, self.io.present, strict=True)
                             if here)  # the ones this robot has
        self.state_dim = self.io.state_dim
        # Reads privileged simulator state (object and goal positions after the agent state,
        # wallwm_jax.data.tasks.state_layout): the environment must be built to provide it.
        self.privileged_state = bool(config.data.get("privileged_state", False))
        self.action_dim = self.io.action_dim
        model_cfg = self.model_config
        self.num_slots = int(model_cfg.max_captions)
        # Unified mode: at most this many tokens decoded per caption (a latency bound; a
        # caption cut short has no EOS). A traced argument: changing it recompiles nothing.
        self.max_caption_tokens = int(config.data.caption_len) - 1
        # `rng`: one key per row (uint32 [B, 2]): a row's noise is its own key's, whatever
        # else is in the batch (`decoding.denoise_rows`).
        self._sample = jax.jit(lambda p, obs, rng: sample_rows(model_cfg, p, obs, rng))
        self._decode = None
        if self.num_slots >= 2:
            bos_id, eos_id = self.tokenizer.bos_id, self.tokenizer.eos_id  # Gemma's: 2, 1
            # Slot 0 of obs.caption: the caption still in effect (all 0: decode a new one).
            self._decode = jax.jit(lambda p, obs, rng, max_steps: staircase_decode(
                model_cfg, p, obs, rng, max_len=config.data.caption_len, bos_id=bos_id,
                eos_id=eos_id, current_caption=obs.caption[:, 0], max_steps=max_steps))

    def reset(self, seed: int) -> None:
        """Restart the sampling noise from `seed` (the evaluator seeds every episode)."""
        self.seed = seed
        self._rng = jax.random.PRNGKey(seed)

    def next_key(self) -> jax.Array:
        """The next sampling key of the policy's own stream (what `act` uses by default)."""
        self._rng, rng = jax.random.split(self._rng)
        return rng

    def frames(self, image: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A single frame (the first camera) or {camera: frame} -> {camera: frame}."""
        return dict(image) if isinstance(image, dict) else {self.cameras[0]: image}

    def observation(self, image: np.ndarray | dict[str, np.ndarray], state: np.ndarray,
                    instruction: str, caption: str | None = None, *,
                    mode: str | None = None,
                    in_effect: str | np.ndarray | None = None) -> Observation:
        """The batch-of-one model input of one step (what `act` feeds the model)."""
        mode = self._check_mode(mode)
        state = np.asarray(state, np.float32)
        if state.shape != (self.state_dim,):
            raise ValueError(f"state has shape {state.shape}, expected ({self.state_dim},)")
        if mode == "event" and caption is None:
            raise ValueError("event mode needs the next event's caption")
        texts = [caption] if mode == "event" else []
        # Unified mode: the current event's caption still in effect goes in slot 0, as text or
        # as the token ids `act` returned (a `caption_ids` row: exact).
        ids = None
        if mode == "unified" and in_effect is not None:
            if isinstance(in_effect, str):
                texts = [in_effect]
            else:
                ids = np.asarray(in_effect, np.int32).ravel()
        x = self.io.inputs(self.frames(image), state, instruction, texts, self.num_slots)
        if ids is not None:
            slots = x["caption"].copy()
            slots[0, :min(len(ids), slots.shape[1])] = ids[:slots.shape[1]]
            x = dict(x, caption=slots)
        return Observation(**{k: v[None] for k, v in x.items()})

    def _check_mode(self, mode: str | None) -> str:
        mode = mode or self.mode
        if mode not in self.modes:
            raise ValueError(f"this policy can run {', '.join(self.modes)}, not {mode!r}")
        return mode

    def act(self, image: np.ndarray | dict[str, np.ndarray], state: np.ndarray,
            instruction: str, caption: str | None = None, *,
            mode: str | None = None, in_effect: str | np.ndarray | None = None,
            rng: jax.Array | None = None) -> dict[str, Any]:
        """image uint8 [H,W,3] (or {camera: image}, any size: resized to the model's),
        state float [S] -> `actions` [n, A] in raw units: the robot's actions, or position
        targets for a model trained with `data.action_target_gain` (run each through
        `env_action` with the state of the step it is executed at).

        `caption` (the next event's description) is required in event mode and ignored
        otherwise. `in_effect` (unified mode, optional): the current event's caption still in
        effect (`caption_in_effect`; text, or a `caption_ids` row), kept as caption 0 instead
        of decoding one. Also returns `chunk` (all Tmax predicted steps, raw units),
        `duration_bin` per caption slot, `world` (uint8 [w,w,3], the predicted event-end
        frame) and, in unified mode, the `captions` (text, and their token ids `caption_ids`;
        the one in effect first when one was given) and `event_steps` per caption (the first:
        the current event's remaining steps). `rng`: the sampling key (default: the next of
        the policy's own stream, `next_key`).
        """
        mode = self._check_mode(mode)
        obs = self.observation(image, state, instruction, caption, mode=mode,
                               in_effect=in_effect)
        return self.act_batch([obs], mode=mode, rngs=None if rng is None else [rng])[0]

    def act_batch(self, observations: Sequence[Observation], *, mode: str | None = None,
                  rngs: Sequence[jax.Array] | None = None,
                  pad_to: int | None = None) -> list[dict[str, Any]]:
        """Batch-of-one observations (`observation`, all of one mode) -> `act`'s result for
        each, from one model call: a row's result equals `act` of it alone with its key
        (`rngs`, one per observation; default the policy's next keys in order). `pad_to`
        rows (>= len(observations)) fills the batch with copies of the last observation, so
        callers compile one program per padded size; the copies' results are dropped."""
        mode = self._check_mode(mode)
        n = len(observations)
        if n == 0:
            return []
        keys = [self.next_key() for _ in range(n)] if rngs is None else list(rngs)
        if len(keys) != n:
            raise ValueError(f"{n} observations but {len(keys)} keys")
        rows = max(n, pad_to or n)
        obs = jax.tree.map(lambda *x: np.concatenate(x + x[-1:] * (rows - n)), *observations)
        key = np.stack([_raw_key(k) for k in keys + keys[-1:] * (rows - n)])  # uint32 [rows, 2]
        if mode == "unified":
            out = self._decode(self.params, obs, key, np.int32(self.max_caption_tokens))
        else:
            out = self._sample(self.params, obs, key)
        out = jax.device_get(out)
        return [self._result({k: v[i] for k, v in out.items()}, mode) for i in range(n)]

    def _result(self, out: dict[str, np.ndarray], mode: str) -> dict[str, Any]:
        """One row of the model's outputs -> `act`'s result (raw units, steps, captions)."""
        chunk = self.io.actions(np.asarray(out["actions"]))
        bins = np.asarray(out["duration_bin"])
        world = np.clip((np.asarray(out["world"]) + 1.0) * 127.5, 0, 255).astype(np.uint8)
        result: dict[str, Any] = {"chunk": chunk, "duration_bin": bins, "world": world}
        steps = self.io.steps(bins)
        if mode == "chunk":
            n = int(self.config.eval.get("chunk_execute_steps") or chunk.shape[0])
        elif mode == "event":
            n = int(steps[0])
        else:
            captions = np.asarray(out["captions"])
            present = captions[:, 0] != 0
            result["captions"] = [self.tokenizer.decode(c) for c in captions[present]]
            result["caption_ids"] = captions[present]  # [n, caption_len], BOS first
            result["event_steps"] = [int(x) for x in steps[:len(present)][present]]
            n = int(np.sum(steps[:len(present)][present]))
        result["actions"] = chunk[:max(1, min(n, chunk.shape[0]))]
        return result

    @property
    def action_space(self) -> str:
        """"actions" (the robot's own) or "position_targets" (see `env_action`)."""
        return "position_targets" if self.io.target_gain else "actions"

    @staticmethod
    def caption_in_effect(captions: Sequence[T], event_steps: Sequence[int],
                          executed: int) -> T | None:
        """The caption still in effect after `executed` steps of a unified chunk whose events
        (`captions` or `caption_ids`, and `event_steps`, from `act`) were predicted to last
        those steps: the event the next step falls in, while the model predicts it goes on;
        None once the last decoded event is predicted to have ended (the next `act` decodes a
        new caption)."""
        end = 0
        for caption, steps in zip(captions, event_steps, strict=True):
            end += steps
            if executed < end:
                return caption
        return None

    def env_action(self, action: np.ndarray, state: np.ndarray) -> np.ndarray:
        """One step of `act()`'s `actions` -> the robot action at raw `state`, the state of
        the step it is executed at: unchanged, or gain * (target - hand) for a policy that
        predicts position targets (hand = state dims 0-2)."""
        return self.io.env_action(action, state)


def _raw_key(key: jax.Array) -> np.ndarray:
    """A PRNG key, typed (`jax.random.key`) or raw (`PRNGKey`) -> its raw uint32 data."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, np.uint32)


METAWORLD_EMBODIMENT = "metaworld_sawyer"  # what data_builders.metaworld_events writes


def suite_embodiment(export_dir: str) -> str | None:
    """The embodiment the MetaWorld evaluation suites run in an export: the MetaWorld
    builder's, when the export knows it (else None: the first, as for older exports)."""
    return METAWORLD_EMBODIMENT if METAWORLD_EMBODIMENT in read_embodiments(export_dir) \
        else None


def load_policy(export_dir: str, *, seed: int = 0, mode: str | None = None,
                embodiment: str | None = None) -> Policy:
    """Load an export bundle (see wallwm_jax.export) as a ready-to-act policy for one robot:
    `embodiment` (a name in its embodiments.json; default the first it was trained on) picks
    the statistics, state/action widths and cameras. ValueError lists the known names."""
    params, config, norm_stats, tokenizer_path = load_bundle(export_dir)
    known = read_embodiments(export_dir)
    if embodiment is not None and embodiment not in known:
        raise ValueError(f"{export_dir} knows embodiment(s) {sorted(known)}, not "
                         f"{embodiment!r}" + ("" if known else " (an export from before "
                                              "embodiments.json: load it without one)"))
    emb = None
    if known:
        emb, norm_stats = known[embodiment or next(iter(known))]
    policy = Policy(params, config, norm_stats, tokenizer_path, seed=seed, mode=mode,
                    embodiment=emb)
    policy.embodiments = {name: e for name, (e, _) in known.items()}
    return policy


def main(argv: list[str]) -> None:
    """`python -m wallwm_jax.policy --export DIR --task reach-v3`: act once, print JSON."""
    import json

    from absl import flags

    from wallwm_jax import cli
    from wallwm_jax.data import captions
    from wallwm_jax.envs.metaworld import MetaWorldTask

    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    fl = flags.FLAGS
    policy = load_policy(fl.export)
    env = MetaWorldTask(fl.task, seed=7, image_size=policy.config.data.image_size,
                        privileged_state=policy.privileged_state)
    try:
        obs = env.reset()
        phase = env.phase()
    finally:
        env.close()
    out = policy.act(obs["image"], obs["state"],
                     captions.instruction(fl.task, variant=0, split="train"),
                     captions.event_caption(fl.task, phase, variant=0, split="train"))
    print(json.dumps({"task": fl.task, "phase": phase,
                      "actions_shape": list(out["actions"].shape),
                      "chunk_shape": list(out["chunk"].shape),
                      "first_action": out["actions"][0].round(4).tolist()}))


if __name__ == "__main__":
    from absl import flags

    from wallwm_jax import cli

    flags.DEFINE_string("export", None, "Export bundle directory.")
    flags.DEFINE_string("task", "reach-v3", "MetaWorld task to observe.")
    flags.mark_flags_as_required(["export"])
    cli.run(main)
