"""Attention masks for the joint [prefix | captions | action steps] sequence (docs/model.md).

`staircase_mask` is the static structure (numpy, built once per shape); `with_padding` adds
the per-example padding of prefix/caption tokens on device. True = the row may attend to the
column. `AttentionMask` carries the two halves apart (structure, key validity) to the attention
kernel: XLA/cuDNN take them combined, splash takes a static structure plus segment ids.
`caption_mask="causal"` is the ablation baseline: a plain causal caption stream that every
action step sees whole (no stairs).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

CAPTION_MASKS = ("staircase", "causal")


def staircase_mask(prefix_len: int, caption_lens: Sequence[int],
                   action_events: Sequence[int], caption_mask: str = "staircase"
                   ) -> np.ndarray:
    """Staircase Decoding mask, bool [T, T] with T = prefix_len + sum(caption_lens) + H.

    Order of rows/columns: [prefix | caption 0 | caption 1 | ... | action steps].
    - prefix tokens attend to the whole prefix (bidirectional), nothing else;
    - a caption token attends to the prefix, to every token of earlier captions and causally
      inside its own caption; never to actions;
    - action step j (event e = action_events[j]) attends to the prefix, every token of
      captions 0..e and every action step whose event is <= e (bidirectional inside an event).

    Event mode is one caption with all steps in event 0. The chunk baseline has no captions:
    then every step must be in event 0, a caption-less event, and attends to the prefix and
    to all action steps.

    `caption_mask="causal"` (the ablation baseline) keeps the caption rows as they are (a
    causal text stream) but lets every action step see every caption and every action step,
    as if all steps were in the last event.

    Raises ValueError if the lengths are negative or `action_events` is not a non-decreasing
    sequence of ints in [0, max(1, len(caption_lens))).
    """
    caption_lens = [int(n) for n in caption_lens]
    events = list(action_events)
    if int(prefix_len) != prefix_len or prefix_len < 0:
        raise ValueError(f"prefix_len must be a non-negative int, got {prefix_len!r}")
    if any(n < 0 for n in caption_lens):
        raise ValueError(f"caption_lens must be non-negative, got {caption_lens}")
    num_events = max(1, len(caption_lens))
    for j, e in enumerate(events):
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)):
            raise ValueError(f"action_events[{j}]={e!r} is not an int")
        if not 0 <= e < num_events:
            raise ValueError(
                f"action_events[{j}]={e} is out of range: there are {len(caption_lens)} "
                f"captions, so events must lie in [0, {num_events})")
        if j > 0 and e < events[j - 1]:
            raise ValueError(f"action_events must be non-decreasing, but action_events[{j}]"
                             f"={e} < action_events[{j - 1}]={events[j - 1]}")

    events = _apply_caption_mask(np, np.asarray(events, np.int32), len(caption_lens),
                                 caption_mask)
    return _staircase(np, int(prefix_len), caption_lens, events)


def batched_staircase_mask(prefix_len: int, caption_lens: Sequence[int],
                           action_events: jnp.ndarray, caption_mask: str = "staircase"
                           ) -> jnp.ndarray:
    """`staircase_mask` for a batch of per-example event assignments, on device.

    action_events: int [B, H] (may be traced, so values are not validated: callers keep them
    non-decreasing and in range, as the input pipeline and `events_from_durations` do).
    Returns bool [B, T, T], equal to stacking `staircase_mask` over the batch (tested).
    """
    caption_lens = [int(n) for n in caption_lens]
    events = _apply_caption_mask(jnp, jnp.asarray(action_events, jnp.int32), len(caption_lens),
                                 caption_mask)
    return _staircase(jnp, int(prefix_len), caption_lens, events)


def staircase_structure(prefix_len: int, caption_lens: Sequence[int], action_events: jax.Array,
                        caption_mask: str = "staircase") -> StaticMask | jax.Array:
    """The staircase structure of `batched_staircase_mask`, static where it cannot depend on
    the events: with at most one caption every step is in event 0, `caption_mask="causal"`
    puts every step on the last stair, and without action steps there are no stairs to vary.
    Returns a `StaticMask` [T, T] then, else bool [B, T, T].
    """
    if caption_mask not in CAPTION_MASKS:
        raise ValueError(f"caption_mask={caption_mask!r} must be one of {CAPTION_MASKS}")
    num_captions, horizon = len(caption_lens), action_events.shape[-1]
    if num_captions <= 1 or caption_mask == "causal" or horizon == 0:
        events = [max(num_captions - 1, 0) if caption_mask == "causal" else 0] * horizon
        return StaticMask(staircase_mask(prefix_len, caption_lens, events, caption_mask))
    return batched_staircase_mask(prefix_len, caption_lens, action_events, caption_mask)


def _apply_caption_mask(xp, events, num_captions: int, caption_mask: str):
    """"causal": every action step on the last stair (sees all captions and all steps)."""
    if caption_mask not in CAPTION_MASKS:
        raise ValueError(f"caption_mask={caption_mask!r} must be one of {CAPTION_MASKS}")
    if caption_mask == "causal" and num_captions > 0:
        return xp.full_like(events, num_captions - 1)
    return events


def _staircase(xp, prefix_len: int, caption_lens: list[int], events):
    """The one implementation behind both entry points (xp = numpy or jax.numpy).

    Every token gets a kind (prefix / caption / action) and a stair (its event; -1 for the
    prefix). Queries see: the prefix always; prefix rows nothing else; caption rows captions on
    lower stairs and, on their own stair, themselves and earlier tokens; action rows captions
    and actions on lower-or-equal stairs.
    """
    num_caption_tokens = sum(caption_lens)
    static_stair = np.concatenate(
        [np.full(prefix_len, -1)] + [np.full(n, c) for c, n in enumerate(caption_lens)]
        + [np.zeros(0)]).astype(np.int32)
    kind = np.concatenate([np.zeros(prefix_len), np.ones(num_caption_tokens),
                           np.full(events.shape[-1], 2)]).astype(np.int32)
    batch_shape = events.shape[:-1]
    stair = xp.concatenate(
        [xp.broadcast_to(xp.asarray(static_stair), batch_shape + static_stair.shape), events],
        axis=-1)
    total = kind.shape[0]
    idx = np.arange(total)
    row_kind, col_kind = kind[:, None], kind[None, :]
    row_stair, col_stair = stair[..., :, None], stair[..., None, :]
    same_caption_causal = (row_stair == col_stair) & (idx[None, :] <= idx[:, None])
    caption_rows = (row_kind == 1) & (col_kind == 1) & (
        (col_stair < row_stair) | same_caption_causal)
    action_rows = (row_kind == 2) & (col_kind >= 1) & (col_stair <= row_stair)
    return (col_kind == 0) | caption_rows | action_rows


def with_padding(mask: np.ndarray | jnp.ndarray, key_valid: jnp.ndarray) -> jnp.ndarray:
    """Combine a static [T, T] mask with per-example key padding.

    Args:
      mask: bool [T, T] (e.g. from `staircase_mask`) or per example [B, T, T]
        (`batched_staircase_mask`).
      key_valid: bool [B, T], False on padding tokens (token id 0); those are never attended.
    Returns:
      bool [B, T, T]. Padded *query* rows still see the real prefix, so no row is empty as
      long as the prefix has one real token (the image tokens always are).
    """
    mask = jnp.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None]
    return mask & key_valid[:, None, :]


class StaticMask:
    """A bool [T, S] numpy mask that is part of the program, not of its inputs: hashable, so
    it can ride through jit/scan/remat as static data and a fused kernel can skip its empty
    blocks at compile time."""

    def __init__(self, array: np.ndarray) -> None:
        array = np.array(array, dtype=bool)
        if array.ndim != 2:
            raise ValueError(f"a static mask is [T, S], got shape {array.shape}")
        array.setflags(write=False)
        self.array = array
        self._key = (array.shape, np.packbits(array).tobytes())

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticMask) and self._key == other._key

    def __getitem__(self, index) -> StaticMask:
        return StaticMask(self.array[index])


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query may attend to, in two halves the kernels want apart.

    The model's structure (causal, staircase) is either `static`, a `StaticMask` [T, S]
    shared by the batch, or `fixed`, bool [B, T, S] when it depends on the example
    (per-example event stairs); exactly one is set (`AttentionMask.of`).
    key_valid: bool [B, S] or None: False on keys nobody may attend to (padding tokens, a
    missing camera's image tokens). The attended set is structure & key_valid (`dense`).
    """

    fixed: jax.Array | None = None
    key_valid: jax.Array | None = None
    static: StaticMask | None = flax.struct.field(pytree_node=False, default=None)

    @classmethod
    def of(cls, fixed: StaticMask | np.ndarray | jax.Array,
           key_valid: jax.Array | None = None) -> AttentionMask:
        """From a structure (static numpy/`StaticMask` [T, S] or per-example [B, T, S])."""
        if isinstance(fixed, np.ndarray) and fixed.ndim == 2:
            fixed = StaticMask(fixed)
        if isinstance(fixed, StaticMask):
            return cls(key_valid=key_valid, static=fixed)
        return cls(fixed=jnp.asarray(fixed, bool), key_valid=key_valid)

    @property
    def shape(self) -> tuple[int, int]:
        """(T, S): queries and keys."""
        return self.static.shape if self.static is not None else self.fixed.shape[-2:]

    def dense(self) -> jax.Array:
        """bool [B, T, S] (B = 1 when neither half has a batch): `with_padding`'s mask."""
        fixed = self.static.array if self.static is not None else self.fixed
        if self.key_valid is None:
            return jnp.asarray(fixed)[None] if fixed.ndim == 2 else fixed
        return with_padding(fixed, self.key_valid)

    def query_rows(self, start: int, stop: int | None = None) -> AttentionMask:
        """The mask of queries start:stop (e.g. the action rows a cached pass runs)."""
        if self.static is not None:
            return self.replace(static=self.static[start:stop])
        return self.replace(fixed=self.fixed[:, start:stop])
