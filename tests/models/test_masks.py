"""staircase_mask against a token-by-token reference written from the rules in docs/model.md."""

import numpy as np
import pytest

from wallwm_jax.models.masks import staircase_mask, with_padding


def reference_mask(prefix_len, caption_lens, action_events):
    # One (kind, event, index) label per token, then each rule as stated, pair by pair.
    tokens = [("prefix", -1, i) for i in range(prefix_len)]
    for c, n in enumerate(caption_lens):
        tokens += [("caption", c, i) for i in range(n)]
    tokens += [("action", e, j) for j, e in enumerate(action_events)]
    out = np.zeros((len(tokens), len(tokens)), bool)
    for r, (rk, re, ri) in enumerate(tokens):
        for c, (ck, ce, ci) in enumerate(tokens):
            if rk == "prefix":
                ok = ck == "prefix"
            elif rk == "caption":
                ok = (ck == "prefix" or (ck == "caption" and ce < re)
                      or (ck == "caption" and ce == re and ci <= ri))
            else:
                ok = (ck == "prefix" or (ck == "caption" and ce <= re)
                      or (ck == "action" and ce <= re))
            out[r, c] = ok
    return out


@pytest.mark.parametrize("prefix_len,caption_lens,action_events", [
    (3, (2,), [0, 0, 0]),                      # event mode
    (2, (), [0, 0, 0, 0]),                     # chunk baseline: no captions
    (4, (3, 2), [0, 0, 1, 1, 1]),              # unified, boundary inside the chunk
    (1, (2, 1, 3), [0, 2, 2]),                 # an event with no action step
    (2, (2, 2), [1, 1]),                       # the whole chunk in the later event
    (0, (2,), [0]),
    (3, (0, 2), [0, 1]),                       # an empty caption
    (5, (3,), []),                             # captions only
])
def test_matches_reference(prefix_len, caption_lens, action_events):
    got = staircase_mask(prefix_len, caption_lens, action_events)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, reference_mask(prefix_len, caption_lens, action_events))


def test_random_layouts_match_reference():
    rng = np.random.default_rng(0)
    for _ in range(50):
        caption_lens = tuple(rng.integers(0, 4, rng.integers(0, 4)))
        num_events = max(1, len(caption_lens))
        events = sorted(rng.integers(0, num_events, rng.integers(0, 6)).tolist())
        prefix_len = int(rng.integers(0, 4))
        np.testing.assert_array_equal(staircase_mask(prefix_len, caption_lens, events),
                                      reference_mask(prefix_len, caption_lens, events))


def test_event_mode_structure():
    m = staircase_mask(2, (3,), [0, 0])
    assert not m[:2, 2:].any()            # prefix sees only the prefix
    assert not m[2:5, 5:].any()           # captions never see actions
    assert m[5:].all()                    # actions see everything
    np.testing.assert_array_equal(m[2:5, 2:5], np.tril(np.ones((3, 3), bool)))


@pytest.mark.parametrize("prefix_len,caption_lens,action_events,match", [
    (2, (2, 2), [1, 0], "non-decreasing"),
    (2, (2,), [0, 1], "out of range"),
    (2, (2,), [-1], "out of range"),
    (2, (), [1], "out of range"),
    (2, (2,), [0.0], "not an int"),
    (2, (2,), [True], "not an int"),
    (-1, (2,), [0], "prefix_len"),
    (2, (-1,), [0], "caption_lens"),
])
def test_invalid_inputs_raise(prefix_len, caption_lens, action_events, match):
    with pytest.raises(ValueError, match=match):
        staircase_mask(prefix_len, caption_lens, action_events)


def test_with_padding_masks_padded_keys_only():
    static = staircase_mask(2, (3,), [0, 0])
    key_valid = np.ones((2, 7), bool)
    key_valid[1, 4] = False  # last caption token of example 1 is padding
    m = np.asarray(with_padding(static, key_valid))
    assert m.shape == (2, 7, 7)
    np.testing.assert_array_equal(m[0], static)
    assert not m[1, :, 4].any()
    np.testing.assert_array_equal(np.delete(m[1], 4, axis=1), np.delete(static, 4, axis=1))


def test_batched_mask_equals_stacked_numpy_masks():
    from wallwm_jax.models.masks import batched_staircase_mask

    rng = np.random.default_rng(3)
    for caption_lens in [(3,), (2, 4), (1, 0, 2), ()]:
        num_events = max(1, len(caption_lens))
        events = np.sort(rng.integers(0, num_events, (5, 7)), axis=1).astype(np.int32)
        got = np.asarray(batched_staircase_mask(4, caption_lens, events))
        want = np.stack([staircase_mask(4, caption_lens, [int(e) for e in row])
                         for row in events])
        np.testing.assert_array_equal(got, want)


def test_causal_caption_mask_lets_an_action_step_see_a_later_caption():
    """The ablation switch: with "causal" an event-0 step sees caption 1; Staircase hides it."""
    prefix, lens, events = 2, (2, 3), [0, 0, 1]
    stair = staircase_mask(prefix, lens, events)
    causal = staircase_mask(prefix, lens, events, caption_mask="causal")
    later_caption = slice(prefix + 2, prefix + 5)
    first_step = prefix + 5
    assert not stair[first_step, later_caption].any()
    assert causal[first_step, later_caption].all()
    assert causal[first_step:, first_step:].all()  # every step sees every step
    np.testing.assert_array_equal(causal[:first_step], stair[:first_step])  # same caption rows
    with pytest.raises(ValueError, match="caption_mask"):
        staircase_mask(prefix, lens, events, caption_mask="bidirectional")


def test_batched_causal_caption_mask_matches_unbatched():
    from wallwm_jax.models.masks import batched_staircase_mask

    events = np.array([[0, 0, 1], [0, 1, 1]], np.int32)
    got = np.asarray(batched_staircase_mask(2, (2, 3), events, caption_mask="causal"))
    for b in range(2):
        np.testing.assert_array_equal(
            got[b], staircase_mask(2, (2, 3), events[b].tolist(), caption_mask="causal"))
