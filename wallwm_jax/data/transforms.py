"""The one preprocessing path between robot data and the model, shared by training and serving.

Inputs (one step): camera frames in `data.cameras` order, resized to `data.image_size`; the
state normalised with the dataset statistics; the instruction and caption slots tokenised and
padded. Outputs: normalised action chunks back to raw units, duration bins to steps; with
`data.action_target_gain` the model's actions are position targets, turned into the robot's
actions step by step (`position_targets`, `controller_actions`). The Grain
pipeline (`pipeline.EventSampler`) and the policy (`wallwm_jax.policy`) both call `ModelIO`,
so a step seen in training and the same step seen by a deployed policy give identical inputs.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from wallwm_jax.data import statistics
from wallwm_jax.data.embodiment import Embodiment, dims_mask, pad
from wallwm_jax.data.tokenizer import Tokenizer

HAND = (0, 3)  # state columns of the hand when a dataset does not say (embodiment.json)
_MAX_MEMO_TEXTS = 65_536  # memoised tokenisations per ModelIO before the memo starts over


def duration_bin(remaining: int, edges: tuple[int, ...]) -> int:
    """Index of the first bin whose upper edge is >= `remaining` (the last bin catches all)."""
    for b, edge in enumerate(edges):
        if remaining <= edge:
            return b
    return len(edges) - 1


def bin_to_steps(bin_index: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Number of steps a predicted duration bin stands for (its upper edge)."""
    return np.asarray(edges)[np.asarray(bin_index)]


def position_targets(actions: np.ndarray, states: np.ndarray, gain: float,
                     hand: tuple[int, int] = HAND) -> np.ndarray:
    """Recorded actions [..., A] whose xyz (dims 0-2) are a proportional controller's output,
    a = gain * (target - hand), with the hand at state columns `hand` of the same steps -> the
    targets the controller aimed at: xyz = hand + a / gain; the other dims unchanged."""
    out = np.array(actions, np.float32, copy=True)
    lo, hi = hand
    out[..., :3] = np.asarray(states, np.float32)[..., lo:hi] + out[..., :3] / np.float32(gain)
    return out


def controller_actions(targets: np.ndarray, state: np.ndarray, gain: float,
                       hand: tuple[int, int] = HAND) -> np.ndarray:
    """Position targets [..., A] -> robot actions at the hand of `state` (columns `hand`):
    xyz = gain * (target - hand); the other dims unchanged. Inverse of `position_targets`."""
    out = np.array(targets, np.float32, copy=True)
    lo, hi = hand
    out[..., :3] = np.float32(gain) * (out[..., :3] - np.asarray(state, np.float32)[..., lo:hi])
    return out


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3] (bilinear, as the dataset builders resize); a frame
    already at that size is returned unchanged."""
    frame = np.asarray(frame)
    if frame.shape[:2] == (size, size):
        return frame.astype(np.uint8, copy=False)
    return np.asarray(Image.fromarray(frame.astype(np.uint8)).resize((size, size),
                                                                     Image.BILINEAR))


def camera_key(name: str) -> str:
    """Dataset camera name -> the openpi observation key the server reads for it:
    the first camera "image" is `observation/image`, "image_wrist" `observation/image_wrist`."""
    return f"observation/{name}"


class ModelIO:
    """Raw observation <-> model inputs, and model outputs -> raw actions, for one data config.

    `norm_stats`: {"state"|"action": {stat: float32 [D]}} (the dataset's, carried in exports);
    `tokenizer`: the dataset's SentencePiece model. `data.action_target_gain` g > 0: the model
    predicts position targets instead of the recorded actions (`model_actions`), and each
    predicted target becomes an action at the hand of the step it is executed at
    (`env_action`), closing the loop at gain g inside a chunk (docs/data.md); only for an
    `embodiment` that declares its hand position.

    `widths` (model state_dim, action_dim), for a model trained on a mixture of embodiments
    (`uses_masks`): this embodiment's state and actions are padded into the model's widths,
    a camera of `data.cameras` it lacks is a blank masked slot, and `inputs` carries the masks
    (`state_mask`, `action_dim_mask`, `camera_mask`); `actions` returns the robot's own width.
    """

    def __init__(self, data_cfg: ml_collections.ConfigDict, norm_stats: dict[str, Any],
                 tokenizer: Tokenizer, *, embodiment: Embodiment | None = None,
                 widths: tuple[int, int] | None = None):
        self.cfg = data_cfg
        self.norm_stats = {key: {name: np.asarray(v, np.float32) for name, v in s.items()}
                           for key, s in norm_stats.items()}  # JSON lists (assets) too
        self.tokenizer = tokenizer
        self.cameras = tuple(data_cfg.get("cameras", ("image",)))
        self.image_size = int(data_cfg.image_size)
        self.edges = tuple(int(e) for e in data_cfg.duration_bins)
        # read once: a ConfigDict lookup costs microseconds, and every sample makes several
        self.norm_mode = data_cfg.norm_mode
        self.instruction_len, self.caption_len = data_cfg.instruction_len, data_cfg.caption_len
        self.embodiment = embodiment
        gain = float(data_cfg.get("action_target_gain", 0.0) or 0.0)
        self.target_gain = gain if embodiment is None or embodiment.position_targets else 0.0
        self.hand = HAND if embodiment is None or embodiment.hand_position is None \
            else tuple(embodiment.hand_position)
        self.widths = None if widths is None else (int(widths[0]), int(widths[1]))
        own = (len(self.norm_stats["state"]["mean"]), len(self.norm_stats["action"]["mean"]))
        self.state_dim, self.action_dim = own  # this robot's widths (the statistics')
        # Cameras this robot has: a model trained on one dataset reads every camera it names
        self.present = tuple(embodiment is None or widths is None or c in embodiment.cameras
                             for c in self.cameras)
        # (text, length) -> token ids: a dataset repeats a few hundred texts, so each is
        # tokenised once per process, not once per sample.
        self._tokens: dict[tuple[str, int], np.ndarray] = {}

    def tokens(self, text: str, length: int) -> np.ndarray:
        """`text` -> int32 [length]: BOS pieces EOS, 0-padded (memoised; a fresh array)."""
        key = (text, length)
        ids = self._tokens.get(key)
        if ids is None:
            if len(self._tokens) >= _MAX_MEMO_TEXTS:
                self._tokens.clear()
            ids = self._tokens[key] = self.tokenizer.encode(text, length)
        return ids.copy()

    @property
    def masked(self) -> bool:
        """Whether inputs are padded into the model's widths and carry masks."""
        return self.widths is not None

    def masks(self) -> dict[str, np.ndarray]:
        """state_mask bool [S], action_dim_mask bool [A], camera_mask bool [C] (masked mode)."""
        s, a = self.widths
        return {"state_mask": dims_mask(self.state_dim, s),
                "action_dim_mask": dims_mask(self.action_dim, a),
                "camera_mask": np.asarray(self.present, bool)}

    # -- observation -> model inputs -------------------------------------------------------
    def images(self, frames: dict[str, np.ndarray], *, resize: bool = True) -> np.ndarray:
        """{camera: uint8 [H, W, 3]} -> uint8 [size, size, 3] (one camera) or
        [C, size, size, 3] in `data.cameras` order. ValueError names a missing camera or a
        frame that is not [H, W, 3] (or, with `resize=False`, not at the model's size)."""
        missing = [c for c, here in zip(self.cameras, self.present, strict=True)
                   if here and c not in frames]
        if missing:
            raise ValueError(f"observation lacks camera(s) {missing}; this model reads "
                             f"{list(self.cameras)}")
        out = []
        for name, here in zip(self.cameras, self.present, strict=True):
            if not here:  # a camera this robot lacks: blank, and masked out (`masks`)
                out.append(np.zeros((self.image_size, self.image_size, 3), np.uint8))
                continue
            frame = np.asarray(frames[name])
            want = (self.image_size, self.image_size, 3)
            if frame.ndim != 3 or frame.shape[-1] != 3 or (not resize and frame.shape != want):
                raise ValueError(f"camera {name!r} has shape {frame.shape}, expected "
                                 f"{want if not resize else '(H, W, 3)'}")
            out.append(resize_frame(frame, self.image_size))
        return out[0] if len(out) == 1 else np.stack(out)

    def state(self, state: np.ndarray) -> np.ndarray:
        """Raw state float [S] (or [..., S]) -> normalised float32 (padded with zeros to the
        model's width in masked mode)."""
        x = np.asarray(statistics.normalize(np.asarray(state, np.float32),
                                            self.norm_stats["state"], self.norm_mode),
                       np.float32)
        return pad(x, self.widths[0]) if self.masked else x

    def instruction(self, text: str) -> np.ndarray:
        """Instruction -> int32 [instruction_len]: BOS pieces EOS, 0-padded."""
        return self.tokens(text, self.instruction_len)

    def captions(self, texts: list[str], num_slots: int) -> np.ndarray:
        """Captions of the current and next events -> int32 [num_slots, caption_len]; slots
        past `texts` are absent (all 0)."""
        if len(texts) > num_slots:
            raise ValueError(f"{len(texts)} captions for {num_slots} caption slot(s)")
        out = np.zeros((num_slots, self.caption_len), np.int32)
        for c, text in enumerate(texts):
            out[c] = self.tokens(text, self.caption_len)
        return out

    def inputs(self, frames: dict[str, np.ndarray], state: np.ndarray, instruction: str,
               captions: list[str], num_slots: int) -> dict[str, np.ndarray]:
        """One step's model inputs (unbatched): image, state, instruction, caption (and the
        masks in masked mode)."""
        out = {"image": self.images(frames), "state": self.state(state),
               "instruction": self.instruction(instruction),
               "caption": self.captions(captions, num_slots)}
        return {**out, **self.masks()} if self.masked else out

    # -- targets and outputs ---------------------------------------------------------------
    def model_actions(self, actions: np.ndarray, states: np.ndarray) -> np.ndarray:
        """Recorded actions [n, A] at raw states [n, S] -> what the model learns to predict
        (raw units): the actions themselves, or their position targets when a gain is set."""
        if not self.target_gain:
            return np.asarray(actions, np.float32)
        return position_targets(actions, states, self.target_gain, self.hand)

    def env_action(self, action: np.ndarray, state: np.ndarray) -> np.ndarray:
        """One predicted action (raw units) -> the action to execute at raw `state`: itself,
        or the controller's action toward the predicted target when a gain is set."""
        if not self.target_gain:
            return np.asarray(action, np.float32)
        return controller_actions(action, state, self.target_gain, self.hand)

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Raw actions float [..., A] -> normalised float32 (training targets; padded with
        zeros to the model's width in masked mode)."""
        x = np.asarray(statistics.normalize(np.asarray(actions, np.float32),
                                            self.norm_stats["action"], self.norm_mode),
                       np.float32)
        return pad(x, self.widths[1]) if self.masked else x

    def actions(self, chunk: np.ndarray) -> np.ndarray:
        """Normalised model actions float [..., A] -> raw units, float32, in this robot's own
        width (the model's padded dims are dropped)."""
        chunk = np.asarray(chunk, np.float32)[..., :self.action_dim]
        return np.asarray(statistics.unnormalize(chunk,
                                                 self.norm_stats["action"],
                                                 self.norm_mode), np.float32)

    def duration_bin(self, steps: int) -> int:
        """Steps -> duration bin (the label the duration head learns)."""
        return duration_bin(steps, self.edges)

    def steps(self, bins: np.ndarray) -> np.ndarray:
        """Predicted duration bins int [...] -> steps (each bin's upper edge)."""
        return bin_to_steps(bins, self.edges)
