"""KV-cached caption decoding equals the uncached reference, token for token and logit for
logit; the backbone-only forward equals the joint forward's caption logits; EOS stops a row."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wallwm_jax.models import wallwm
from wallwm_jax.models.decoding import decode_caption, decode_caption_uncached
from wallwm_jax.models.wallwm import WallWM

MAX_LEN = 6


@pytest.fixture
def setup(tiny_cfg, tiny_batch):
    """Decoding the first caption: the context holds no caption yet."""
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    obs = jax.tree.map(jnp.asarray, tiny_batch.obs)
    return tiny_cfg, params, obs.replace(caption=obs.caption[:, :0])


def _cached(cfg, temperature, **kw):
    return jax.jit(functools.partial(decode_caption, cfg, max_len=MAX_LEN,
                                     temperature=temperature, return_logits=True, **kw))


def test_vlm_caption_logits_equal_joint_forward(setup, tiny_batch):
    cfg, params, _ = setup
    obs = tiny_batch.obs
    model, variables = WallWM(ml_collections.FrozenConfigDict(cfg)), {"params": params}
    joint = model.apply(variables, obs, tiny_batch.actions, jnp.full((obs.state.shape[0],), .5))
    alone = model.apply(variables, obs, method=WallWM.vlm_caption_logits)
    np.testing.assert_allclose(alone, joint["caption_logits"], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_decode_matches_uncached(setup, temperature):
    cfg, params, obs = setup
    rng = jax.random.key(3)
    tokens, logits = _cached(cfg, temperature)(params, obs, rng)
    ref_tokens, ref_logits = decode_caption_uncached(
        cfg, params, obs, rng, max_len=MAX_LEN, temperature=temperature, return_logits=True)
    assert tokens.shape == (obs.state.shape[0], MAX_LEN) and tokens.dtype == jnp.int32
    assert np.all(np.asarray(tokens[:, 0]) == 1)
    np.testing.assert_array_equal(tokens, ref_tokens)
    live = np.asarray(tokens[:, :-1] != 0)  # steps whose input token is real
    assert live.all() or temperature > 0  # random init: greedy decoding rarely hits EOS
    np.testing.assert_allclose(np.asarray(logits)[live], np.asarray(ref_logits)[live],
                               atol=1e-5, rtol=0)
    assert np.abs(np.asarray(logits)[live]).max() > 1e-3
    if temperature > 0:  # sampling differs from greedy (the rng is used) but is reproducible
        greedy = np.asarray(jnp.argmax(logits, -1))
        assert np.any(greedy[live] != np.asarray(tokens[:, 1:])[live])
        np.testing.assert_array_equal(_cached(cfg, temperature)(params, obs, rng)[0], tokens)


def test_eos_stops_a_row_and_caption_feeds_back(setup):
    cfg, params, obs = setup
    rng = jax.random.key(0)
    free = np.asarray(_cached(cfg, 0.0)(params, obs, rng)[0])
    # Pretend a token that some row emits for the first time at step s >= 2 is EOS.
    row, step = next((r, s) for s in range(2, MAX_LEN - 1) for r in range(free.shape[0])
                     if free[r, s] not in free[r, :s])
    eos = int(free[row, step])
    tokens, logits = _cached(cfg, 0.0, eos_id=eos)(params, obs, rng)
    ref_tokens, ref_logits = decode_caption_uncached(cfg, params, obs, rng, max_len=MAX_LEN,
                                                     eos_id=eos, return_logits=True)
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_array_equal(tokens[row, :step + 1], free[row, :step + 1])
    assert np.all(tokens[row, step + 1:] == 0)
    live = tokens[:, :-1] != 0
    assert not live.all()  # padding fed after EOS is exercised
    # Rows that stopped feed padding; its logits still equal the reference's.
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5, rtol=0)
    # The decoded caption scores as the most likely one under teacher forcing (greedy).
    model = WallWM(ml_collections.FrozenConfigDict(cfg))
    forced = model.apply({"params": params},
                         obs.replace(caption=jnp.asarray(tokens)[:, None]),
                         method=WallWM.vlm_caption_logits)[:, 0]
    chose = live & (tokens[:, :-1] != eos)  # after EOS the row is forced to padding
    np.testing.assert_array_equal(np.asarray(jnp.argmax(forced[:, :-1], -1))[chose],
                                  tokens[:, 1:][chose])


def test_second_caption_decodes_against_the_first(unified_cfg, batch_factory):
    """Unified mode: caption slot 1 decoded with slot 0 in the cache equals the uncached
    reference, and depends on what slot 0 says."""
    params = wallwm.init_params(unified_cfg, jax.random.key(0))
    batch = batch_factory(unified_cfg, batch_size=3, seed=5)
    first = jnp.asarray(batch.obs.caption[:, :1, :MAX_LEN])
    obs = jax.tree.map(jnp.asarray, batch.obs).replace(caption=first)
    rng = jax.random.key(2)
    tokens, logits = _cached(unified_cfg, 0.0)(params, obs, rng)
    ref_tokens, ref_logits = decode_caption_uncached(unified_cfg, params, obs, rng,
                                                     max_len=MAX_LEN, return_logits=True)
    np.testing.assert_array_equal(tokens, ref_tokens)
    live = np.asarray(tokens[:, :-1] != 0)
    np.testing.assert_allclose(np.asarray(logits)[live], np.asarray(ref_logits)[live],
                               atol=1e-5, rtol=0)
    other = obs.replace(caption=jnp.roll(first, 1, axis=0))
    _, other_logits = _cached(unified_cfg, 0.0)(params, other, rng)
    assert float(jnp.abs(other_logits[:, 0] - logits[:, 0]).max()) > 1e-4
    with pytest.raises(ValueError, match="max_len"):
        decode_caption(unified_cfg, params, obs, rng, max_len=MAX_LEN + 1)


def test_staircase_decode_encodes_once_and_matches_reference(unified_cfg, batch_factory):
    """Unified inference with one prefix encode (K/V cache reused by every caption and the
    chunk) gives the reference's captions and present-slot durations exactly, and its
    actions to float32 rounding (the slot K/V come from a [Lc]-token pass instead of the
    full-sequence one: other matmul shapes, other summation order)."""
    from wallwm_jax.models.decoding import staircase_decode, staircase_decode_reference

    params = wallwm.init_params(unified_cfg, jax.random.key(0))
    obs = jax.tree.map(jnp.asarray, batch_factory(unified_cfg, batch_size=3, seed=5).obs)
    rng = jax.random.key(4)
    run = functools.partial(staircase_decode, unified_cfg, max_len=MAX_LEN)
    reference = functools.partial(staircase_decode_reference, unified_cfg, max_len=MAX_LEN)
    out = jax.jit(run)(params, obs, rng)
    ref = jax.jit(reference)(params, obs, rng)
    np.testing.assert_array_equal(out["captions"], ref["captions"])
    present = np.asarray(ref["captions"][:, :, 0] != 0)
    assert present[:, 0].all()
    np.testing.assert_array_equal(np.asarray(out["duration_bin"])[present],
                                  np.asarray(ref["duration_bin"])[present])
    np.testing.assert_array_equal(out["action_events"], ref["action_events"])
    np.testing.assert_allclose(out["actions"], ref["actions"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["world"], ref["world"], atol=1e-5, rtol=0)
    # One encode: the image tower runs once in the cached program, K + 2 times in the
    # reference (one per caption, one per duration read, one for the chunk).
    def vit_calls(fn):
        text = jax.jit(fn).lower(params, obs, rng).as_text()
        return text.count("stablehlo.convolution")
    assert vit_calls(run) == 1  # the functions traced above: their traces are reused
    assert vit_calls(reference) == 2 * unified_cfg.max_captions


def test_staircase_decode_keeps_the_caption_in_effect(unified_cfg, batch_factory):
    """A row given the caption still in effect keeps it as caption 0 (the next caption and
    the chunk follow from it, as in the re-encoding reference); a row given none decodes
    exactly what it decodes with no caption given at all."""
    from wallwm_jax.models.decoding import staircase_decode, staircase_decode_reference

    params = wallwm.init_params(unified_cfg, jax.random.key(0))
    obs = jax.tree.map(jnp.asarray, batch_factory(unified_cfg, batch_size=3, seed=5).obs)
    rng = jax.random.key(4)
    run = jax.jit(functools.partial(staircase_decode, unified_cfg, max_len=MAX_LEN))
    free = run(params, obs, rng, current_caption=jnp.zeros((3, MAX_LEN), jnp.int32))
    given = jnp.zeros((3, MAX_LEN), jnp.int32).at[0].set(jnp.array([1, 7, 9, 11, 2, 0]))
    given = given.at[2].set(jnp.array([1, 5, 2, 0, 0, 0]))
    out = run(params, obs, rng, current_caption=given)
    ref = jax.jit(functools.partial(staircase_decode_reference, unified_cfg, max_len=MAX_LEN))(
        params, obs, rng, current_caption=given)
    np.testing.assert_array_equal(np.asarray(out["captions"])[[0, 2], 0],
                                  np.asarray(given)[[0, 2]])
    np.testing.assert_array_equal(out["captions"][1], free["captions"][1])
    np.testing.assert_array_equal(out["captions"], ref["captions"])
    present = np.asarray(ref["captions"][:, :, 0] != 0)
    np.testing.assert_array_equal(np.asarray(out["duration_bin"])[present],
                                  np.asarray(ref["duration_bin"])[present])
    np.testing.assert_allclose(out["actions"], ref["actions"], atol=1e-5, rtol=0)
    # The given caption changes the chunk (the actions attend to it).
    assert float(jnp.abs(out["actions"][0] - free["actions"][0]).max()) > 1e-4
    # Every row given: nothing is decoded for slot 0, and it still matches the reference.
    both = given.at[1].set(given[0])
    np.testing.assert_array_equal(run(params, obs, rng, current_caption=both)["captions"][:, 0],
                                  both)


def test_unrolled_layers_is_the_unscanned_models_tree(unified_cfg):
    """Split stacks land where an unscanned model keeps its layers, layer i from slice i."""
    from wallwm_jax.models.decoding import unrolled_layers

    assert unified_cfg.scan_layers
    params = wallwm.abstract_params(unified_cfg)
    params = jax.tree.map(lambda s: np.arange(np.prod(s.shape), dtype=np.float32)
                          .reshape(s.shape), params)
    cfg, split = unrolled_layers(unified_cfg, params)
    assert not cfg.scan_layers
    flat = unified_cfg.copy_and_resolve_references()
    flat.scan_layers = False
    want = wallwm.abstract_params(flat)
    assert jax.tree.map(lambda x: x.shape, split) == jax.tree.map(lambda x: x.shape, want)
    stack = params["decoder"]["layers"]
    last = unified_cfg.depth - 1
    np.testing.assert_array_equal(
        jax.tree.leaves(split["decoder"][f"layers_{last}"])[0], jax.tree.leaves(stack)[0][last])
    assert unrolled_layers(cfg, split)[1] is split  # already unrolled: unchanged


def test_staircase_decode_max_steps_cuts_captions_in_one_program(unified_cfg, batch_factory):
    """`max_steps` (traced: one compiled program for every value) cuts each caption after
    that many decoded tokens, the tokens before the cut unchanged; the chunk is denoised over
    K/V and durations equal to a fresh encode of those captions (the loop fed the cut
    caption's last token too)."""
    from wallwm_jax.models.decoding import staircase_decode

    params = wallwm.init_params(unified_cfg, jax.random.key(0))
    obs = jax.tree.map(jnp.asarray, batch_factory(unified_cfg, batch_size=2, seed=5).obs)
    rng = jax.random.key(4)
    run = jax.jit(lambda p, o, r, n: staircase_decode(unified_cfg, p, o, r, max_len=MAX_LEN,
                                                      num_steps=2, max_steps=n))
    full = run(params, obs, rng, jnp.int32(MAX_LEN - 1))
    cut = run(params, obs, rng, jnp.int32(2))
    assert run._cache_size() == 1
    got, want = np.asarray(cut["captions"]), np.asarray(full["captions"])
    assert (want[:, 0] != 0).all()  # random weights: no EOS, every slot-0 caption is full
    np.testing.assert_array_equal(got[:, 0, :3], want[:, 0, :3])
    assert not got[:, :, 3:].any()
    again = wallwm.sample_actions(unified_cfg, params, obs.replace(caption=cut["captions"]),
                                  jax.random.fold_in(rng, unified_cfg.max_captions),
                                  num_steps=2, action_events=cut["action_events"])
    present = got[:, :, 0] != 0
    np.testing.assert_array_equal(np.asarray(again["duration_bin"])[present],
                                  np.asarray(cut["duration_bin"])[present])
    np.testing.assert_allclose(again["actions"], cut["actions"], atol=1e-5, rtol=0)


def test_bf16_policy_casts_decoder_weights_once_with_the_same_outputs(trained_policies,
                                                                      monkeypatch):
    """With bf16 compute (forced here on CPU), `Policy` stores the decoder layers' kernels and
    the embedding in bf16 (`cast_for_inference`): the unified decode (captions, durations,
    actions) is the same bit for bit as with fp32-stored weights, and the compiled program
    casts no weight of that shape to bf16 any more (before: every token step did)."""
    import re

    import wallwm_jax.policy as policy_module
    from wallwm_jax.bundle import load_bundle
    from wallwm_jax.policy import Policy
    from wallwm_jax.tree_names import path_name

    params, config, norm_stats, tokenizer = load_bundle(trained_policies["unified"].export)
    config.model.dtype = "bfloat16"

    def build():
        policy = Policy(params, config, norm_stats, tokenizer, mode="unified")
        obs = policy.observation({"image": np.full((32, 32, 3), 90, np.uint8)},
                                 np.array([0.1, 0.2, 0.3, 0.4], np.float32), "reach the goal", "")
        compiled = policy._decode.lower(policy.params, obs, jax.random.PRNGKey(3)[None],
                                        jnp.int32(MAX_LEN)).compile()
        out = compiled(policy.params, obs, jax.random.PRNGKey(3)[None], jnp.int32(MAX_LEN))
        return policy, compiled.as_text(), jax.tree.map(np.asarray, out)

    cast, cast_hlo, cast_out = build()
    monkeypatch.setattr(policy_module, "cast_for_inference", lambda cfg, p: p)
    kept, kept_hlo, kept_out = build()

    stored = {path_name(k): v.dtype for k, v in jax.tree_util.tree_leaves_with_path(cast.params)}
    assert stored["decoder/layers_0/backbone/mlp/up/kernel"] == jnp.bfloat16
    assert stored["embedder/embedding"] == jnp.bfloat16
    assert stored["decoder/layers_0/backbone/attn_norm/scale"] == jnp.float32
    assert stored["action_out/kernel"] == jnp.float32  # an fp32 head stays fp32
    assert jax.tree.structure(cast_out) == jax.tree.structure(kept_out)
    for a, b in zip(jax.tree.leaves(cast_out), jax.tree.leaves(kept_out), strict=True):
        np.testing.assert_array_equal(a, b)

    kernel = kept.params["decoder"]["layers_0"]["backbone"]["mlp"]["up"]["kernel"]
    shape = ",".join(map(str, kernel.shape))
    # a cast of a decoder weight of that shape to bf16 (the ViT's, once per request, may stay)
    pattern = rf"= bf16\[{shape}\]\S* convert\([^\n]*decoder/layers"
    assert re.search(pattern, kept_hlo), "the fp32-stored policy should cast this weight"
    assert not re.search(pattern, cast_hlo)
