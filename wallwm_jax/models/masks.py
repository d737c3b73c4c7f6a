"""Attention masks for the joint [prefix | captions | action steps] sequence (DESIGN.md §4).

`staircase_mask` is the static structure (numpy, built once per shape); `with_padding` adds
the per-example padding of prefix/caption tokens on device. True = the row may attend to the
column.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def staircase_mask(prefix_len: int, caption_lens: Sequence[int],
                   action_events: Sequence[int]) -> np.ndarray:
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

    num_captions = len(caption_lens)
    caption_starts = prefix_len + np.concatenate([[0], np.cumsum(caption_lens)]).astype(int)
    action_start = int(caption_starts[-1])
    total = action_start + len(events)

    # Each token gets an event id ("stair"); prefix = -1. Captions and actions of event e sit
    # on stair e; a token sees everything on lower-or-equal stairs except actions of its own
    # stair for captions, and later tokens of its own caption.
    mask = np.zeros((total, total), dtype=bool)
    mask[:, :prefix_len] = True
    for c in range(num_captions):
        lo, hi = caption_starts[c], caption_starts[c + 1]
        mask[lo:hi, prefix_len:lo] = True  # all earlier captions
        mask[lo:hi, lo:hi] = np.tril(np.ones((hi - lo, hi - lo), dtype=bool))
    if events:
        ev = np.asarray(events)
        rows = slice(action_start, total)
        for c in range(num_captions):
            lo, hi = caption_starts[c], caption_starts[c + 1]
            mask[rows, lo:hi] = (ev >= c)[:, None]
        mask[rows, action_start:] = ev[None, :] <= ev[:, None]
    return mask


def with_padding(mask: np.ndarray | jnp.ndarray, key_valid: jnp.ndarray) -> jnp.ndarray:
    """Combine a static [T, T] mask with per-example key padding.

    Args:
      mask: bool [T, T] (e.g. from `staircase_mask`).
      key_valid: bool [B, T], False on padding tokens (token id 0); those are never attended.
    Returns:
      bool [B, T, T]. Padded *query* rows still see the real prefix, so no row is empty as
      long as the prefix has one real token (the image tokens always are).
    """
    return jnp.asarray(mask)[None, :, :] & key_valid[:, None, :]
