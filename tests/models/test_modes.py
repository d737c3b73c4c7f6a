"""Unified (Staircase) and chunk modes end to end at the model level, and bf16 compute.

The Staircase property is tested on the real network, not just the mask: changing caption
k+1 leaves the velocities of every step in events <= k bit-identical, and changes those of
event k+1 (docs/model.md).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.pretrain import get_config
from wallwm_jax.models import wallwm
from wallwm_jax.models.decoding import staircase_decode
from wallwm_jax.models.wallwm import WallWM, events_from_durations


def _three_caption_cfg():
    cfg = get_config("size=tiny,mode=unified").model
    cfg.max_captions = 3
    return cfg


def test_changing_a_later_caption_never_reaches_earlier_events(batch_factory):
    cfg = _three_caption_cfg()
    params = {"params": wallwm.init_params(cfg, jax.random.key(0))}
    batch = batch_factory(cfg, batch_size=2, seed=1)
    tmax = cfg.max_event_len
    # Every example has all three captions; steps 0-9 event 0, 10-19 event 1, rest event 2.
    caption = np.asarray(batch.obs.caption).copy()
    caption[:, :, 0] = 1
    caption[:, :, 1:3] = 7
    events = np.repeat(np.minimum(np.arange(tmax) // 10, 2)[None], 2, axis=0).astype(np.int32)
    obs = batch.obs.replace(caption=caption)
    x_t = jax.random.normal(jax.random.key(1), batch.actions.shape)
    t = jnp.asarray([0.3, 0.8])
    forward = jax.jit(lambda o: WallWM(ml_collections.FrozenConfigDict(cfg)).apply(
        params, o, x_t, t, events)["velocity"])
    base = np.asarray(forward(obs))
    for k in (0, 1):  # perturb caption k + 1: different tokens and a different length
        changed = caption.copy()
        changed[:, k + 1, 1:] = (changed[:, k + 1, 1:] + 11) % cfg.vocab_size
        changed[:, k + 1, 4:] = 0
        out = np.asarray(forward(obs.replace(caption=changed)))
        earlier, later = events[0] <= k, events[0] == k + 1
        np.testing.assert_array_equal(out[:, earlier], base[:, earlier])
        assert np.abs(out[:, later] - base[:, later]).min(axis=-1).max() > 1e-6, k
        assert np.all(np.abs(out[:, later] - base[:, later]).max(axis=-1) > 1e-6), k


def test_unified_loss_trains_every_term_and_gradient_reaches_backbone(unified_cfg,
                                                                      batch_factory):
    batch = batch_factory(unified_cfg, batch_size=4, seed=2)
    assert np.any(np.asarray(batch.action_events) > 0)  # steps of a second event
    params = wallwm.init_params(unified_cfg, jax.random.key(0))
    only_action = unified_cfg.copy_and_resolve_references()
    only_action.loss_weights = ml_collections.ConfigDict(
        dict(action=1.0, caption=0.0, duration=0.0, world=0.0))
    loss_fn = jax.jit(lambda p: wallwm.compute_loss(only_action, p, batch,
                                                    jax.random.key(1))[0])
    grads = jax.grad(loss_fn)(params)
    # The action loss reaches the backbone through the caption tokens' keys and values.
    key_grad = grads["decoder"]["layers"]["backbone"]["key"]["kernel"]
    assert float(jnp.abs(key_grad).max()) > 0
    kernel = params["decoder"]["layers"]["backbone"]["key"]["kernel"]
    direction = jax.random.normal(jax.random.key(3), kernel.shape)
    eps = 1e-3

    def at(delta):
        tree = jax.tree.map(lambda x: x, params)
        tree["decoder"]["layers"]["backbone"]["key"]["kernel"] = kernel + delta
        return float(loss_fn(tree))

    fd = (at(eps * direction) - at(-eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(key_grad, direction)), fd, rtol=2e-2, atol=2e-4)
    loss, metrics = jax.jit(functools.partial(wallwm.compute_loss, unified_cfg))(
        params, batch, jax.random.key(1))
    for term in ("action", "caption", "duration", "world"):
        assert float(metrics[f"loss/{term}"]) > 0, term


def _force_duration(params, bin_index):
    """Make the duration head predict `bin_index` for every caption slot."""
    head = dict(params["duration_head"])
    head["bias"] = jnp.full_like(head["bias"], -100.0).at[bin_index].set(100.0)
    return dict(params, duration_head=head)


@pytest.fixture(scope="module")
def unified_decode():
    """The tiny unified config with its jitted Staircase decode and `sample_actions` (2
    denoising steps), traced once for the module's parametrized cases."""
    cfg = get_config("size=tiny,mode=unified").model
    return (cfg, jax.jit(functools.partial(staircase_decode, cfg, max_len=6, num_steps=2)),
            jax.jit(functools.partial(wallwm.sample_actions, cfg, num_steps=2)))


@pytest.mark.parametrize("bin_index,expect_second", [(0, True), (-1, False)])
def test_staircase_decode_adds_the_next_caption_only_when_the_event_ends_in_the_chunk(
        unified_decode, batch_factory, bin_index, expect_second):
    unified_cfg, decode, sample_actions = unified_decode
    params = wallwm.init_params(unified_cfg, jax.random.key(0))
    params = _force_duration(params, bin_index)  # bin 0 = 1 step; last bin = 32 >= Tmax
    obs = batch_factory(unified_cfg, batch_size=3, seed=4).obs
    out = decode(params, obs, jax.random.key(0))
    b, tmax = 3, unified_cfg.max_event_len
    chex.assert_shape(out["captions"], (b, unified_cfg.max_captions, 6))
    chex.assert_shape(out["actions"], (b, tmax, unified_cfg.action_dim))
    assert np.all(np.asarray(out["captions"][:, 0, 0]) == 1)  # caption 0 always decoded
    second = np.asarray(out["captions"][:, 1, 0]) != 0
    assert np.all(second == expect_second)
    events = np.asarray(out["action_events"])
    if expect_second:  # event 0 lasts 1 step, the rest of the chunk is event 1
        np.testing.assert_array_equal(events, np.minimum(np.arange(tmax), 1)[None].repeat(b, 0))
    else:
        assert not events.any()
    # Denoising ran over exactly these captions and events.
    again = sample_actions(
        params, obs.replace(caption=out["captions"]), jax.random.fold_in(jax.random.key(0), 2),
        action_events=out["action_events"])
    np.testing.assert_allclose(again["actions"], out["actions"], atol=1e-5)


def test_events_from_durations():
    steps = jnp.asarray([[3, 4], [3, 4], [40, 2]])
    present = jnp.asarray([[True, True], [True, False], [True, True]])
    got = np.asarray(events_from_durations(steps, present, 8))
    np.testing.assert_array_equal(got, [[0, 0, 0, 1, 1, 1, 1, 1], [0] * 8, [0] * 8])
    assert events_from_durations(jnp.zeros((2, 0), int), jnp.zeros((2, 0), bool), 5).shape == (
        2, 5)


def test_chunk_mode_has_no_language_terms(batch_factory):
    cfg = get_config("size=tiny,mode=chunk").model
    batch = batch_factory(cfg, batch_size=2)
    assert batch.obs.caption.shape[1] == 0
    params = wallwm.init_params(cfg, jax.random.key(0))
    loss, metrics = jax.jit(functools.partial(wallwm.compute_loss, cfg))(
        params, batch, jax.random.key(1))
    assert float(metrics["loss/caption"]) == 0.0 and float(metrics["loss/duration"]) == 0.0
    assert float(metrics["loss/action"]) > 0 and np.isfinite(float(loss))
    out = jax.jit(functools.partial(wallwm.sample_actions, cfg, num_steps=2))(
        params, batch.obs, jax.random.key(2))
    chex.assert_shape(out["actions"], (2, cfg.max_event_len, cfg.action_dim))
    chex.assert_shape(out["duration_bin"], (2, 0))


def test_bf16_compute_keeps_fp32_params_and_matches_fp32_loss(tiny_cfg, tiny_batch):
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    bf16 = tiny_cfg.copy_and_resolve_references()
    bf16.dtype = "bfloat16"
    assert jax.tree.structure(wallwm.init_params(bf16, jax.random.key(0))) == jax.tree.structure(
        params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(
        wallwm.init_params(bf16, jax.random.key(0))))

    def loss_and_grad(cfg):
        fn = functools.partial(wallwm.compute_loss, cfg)
        return jax.jit(jax.value_and_grad(lambda p: fn(p, tiny_batch, jax.random.key(1))[0]))(
            params)

    loss32, grad32 = loss_and_grad(tiny_cfg)
    loss16, grad16 = loss_and_grad(bf16)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grad16))
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=3e-2)
    assert float(loss16) != float(loss32)  # bf16 really ran
    g16, g32 = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in (grad16,
                                                                                 grad32))
    cosine = float(jnp.vdot(g16, g32) / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32)))
    assert cosine > 0.98, cosine


@pytest.mark.parametrize("caption_mask", ["staircase", "causal"])
def test_caption_mask_switch_on_the_network(batch_factory, caption_mask):
    """model.caption_mask="causal": an event-0 step's velocity changes with caption 1."""
    cfg = get_config("size=tiny,mode=unified").model
    cfg.caption_mask = caption_mask
    params = {"params": wallwm.init_params(cfg, jax.random.key(0))}
    batch = batch_factory(cfg, batch_size=1, seed=2)
    caption = np.asarray(batch.obs.caption).copy()
    caption[:, :, 0], caption[:, :, 1:3] = 1, 7
    events = (np.arange(cfg.max_event_len) >= 10).astype(np.int32)[None]
    x_t = jax.random.normal(jax.random.key(1), batch.actions.shape)
    forward = jax.jit(lambda o: WallWM(ml_collections.FrozenConfigDict(cfg)).apply(
        params, o, x_t, jnp.asarray([0.5]), events)["velocity"])
    changed = caption.copy()
    changed[:, 1, 1:3] = 9
    base = np.asarray(forward(batch.obs.replace(caption=caption)))
    out = np.asarray(forward(batch.obs.replace(caption=changed)))
    moved = np.abs(out[0, :10] - base[0, :10]).max()
    if caption_mask == "staircase":
        assert moved == 0.0
    else:
        assert moved > 1e-6
