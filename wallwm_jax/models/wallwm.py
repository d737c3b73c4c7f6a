"""WALL-WM network and its functional API: init, logical axes, training loss, sampling.

Sequence layout: [image tokens | instruction | caption | action steps]; the first three are
VLM tokens (backbone weights), the action steps use the action expert. Flow matching follows
pi0: t = 1 is noise, x_t = t * noise + (1 - t) * actions, target velocity u = noise - actions.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wallwm_jax.data.batches import EventBatch, Observation
from wallwm_jax.models.layers import (
    compute_dtype,
    constrain_activation,
    dense,
    layer_norm,
    partitioned,
    sinusoidal_embedding,
)
from wallwm_jax.models.masks import AttentionMask, staircase_structure
from wallwm_jax.models.transformer import KVCache, MoTDecoder
from wallwm_jax.models.vit import ViT

# `config.model.backbone_family` -> how token embeddings enter the backbone. "wallwm" (from
# scratch): as looked up. "gemma": times sqrt(width), rounded to the compute dtype, as
# Hugging Face's GemmaModel does (set by the layouts that load Gemma weights).
BACKBONE_FAMILIES = ("wallwm", "gemma")


def embed_scale(model_cfg: Any, dtype: Any) -> jax.Array | None:
    """The factor token embeddings are multiplied by, in `dtype`; None for no scaling."""
    family = model_cfg.get("backbone_family", "wallwm")
    if family not in BACKBONE_FAMILIES:
        raise ValueError(f"model.backbone_family='{family}' is not one of "
                         f"{list(BACKBONE_FAMILIES)}")
    if family == "gemma":
        return jnp.asarray(model_cfg.width ** 0.5, dtype)
    return None


def _frozen(model_cfg: Any) -> ml_collections.FrozenConfigDict:
    """Module attributes must be hashable/immutable: freeze config.model once per entry."""
    if isinstance(model_cfg, ml_collections.FrozenConfigDict):
        return model_cfg
    return ml_collections.FrozenConfigDict(model_cfg)


def duration_steps(model_cfg: Any, bins: jax.Array) -> jax.Array:
    """Duration bin -> number of steps (the bin's inclusive upper edge), int32, any shape."""
    edges = jnp.asarray(tuple(model_cfg.duration_bins), jnp.int32)
    return edges[jnp.clip(bins, 0, edges.shape[0] - 1)]


def events_from_durations(steps: jax.Array, present: jax.Array, horizon: int) -> jax.Array:
    """Assign each of `horizon` action steps to a caption slot from predicted durations.

    steps: int [B, K] steps of each slot's event (slot 0: steps left in the current event);
    present: bool [B, K] slots holding a caption. Step j belongs to the first present slot
    whose cumulative duration exceeds j, and to the last present slot beyond that.
    Returns int32 [B, horizon], non-decreasing (zeros when K == 0 or nothing is present).
    """
    if steps.shape[-1] == 0:
        return jnp.zeros(steps.shape[:-1] + (horizon,), jnp.int32)
    ends = jnp.cumsum(jnp.where(present, steps, 0), axis=-1)  # [B, K]
    j = jnp.arange(horizon)
    passed = jnp.sum((ends[:, None, :] <= j[None, :, None]) & present[:, None, :], axis=-1)
    last = jnp.maximum(jnp.sum(present, axis=-1, keepdims=True) - 1, 0)
    return jnp.minimum(passed, last).astype(jnp.int32)


def aux_action_enabled(model_cfg: Any) -> bool:
    """Whether the model has the auxiliary action head (`model.aux_action_weight` > 0)."""
    return model_cfg.get("aux_action_weight", 0.0) > 0


class AuxActionHead(nn.Module):
    """A deterministic read-out of the first action(s) straight from the image tokens: a
    training aid whose MSE gives the vision tower a direct signal (the flow loss gives it
    ~1/13 of the action expert's gradient, experiments/results/pixels/diagnosis/results.md).

    LayerNorm per token, then one linear map over all the image tokens (flattened: where a
    token is matters, and a linear head over all of them is the probe that learnt push's first
    action from these pixels) plus one over the state. Inference never calls it."""

    steps: int
    action_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, state: jax.Array, token_mask: jax.Array | None = None,
                 state_mask: jax.Array | None = None) -> jax.Array:
        """tokens [B, N, D], state [B, S]; token_mask bool [B, N] (False: a missing camera's
        tokens, read as 0), state_mask bool [B, S] -> f32 [B, steps, action_dim]."""
        h = layer_norm("embed", self.dtype, name="norm")(tokens)
        if token_mask is not None:
            h = jnp.where(token_mask[:, :, None], h, 0.0)
        if state_mask is not None:
            state = jnp.where(state_mask, state, 0.0)
        out = self.steps * self.action_dim
        y = dense(out, (None, "embed", None), axis=(-2, -1), dtype=jnp.float32,
                  use_bias=True, name="from_tokens")(h)
        y = y + dense(out, (None, None), dtype=jnp.float32, name="from_state")(state)
        return y.reshape(-1, self.steps, self.action_dim)


class WallWM(nn.Module):
    """ViT + mixture-of-transformers decoder + caption/duration/world/velocity heads."""

    cfg: Any  # FrozenConfigDict of config.model

    def setup(self) -> None:
        cfg, dtype = self.cfg, compute_dtype(self.cfg.dtype)
        self.vit = ViT(cfg.patch_size, cfg.vit_width, cfg.vit_depth, cfg.vit_heads,
                       cfg.vit_mlp_dim, cfg.width, dtype, scan=cfg.scan_layers,
                       remat_policy=cfg.remat_policy,
                       attention_impl=cfg.get("attention", "auto"),
                       cameras=cfg.get("cameras", 1),
                       readout=cfg.get("vision_readout", "none"),
                       keypoints=cfg.get("vision_keypoints", 16),
                       stem=cfg.get("vision_stem", "none"))
        self.embedder = nn.Embed(cfg.vocab_size, cfg.width, dtype=dtype, param_dtype=jnp.float32,
                                 embedding_init=partitioned(nn.initializers.normal(0.02),
                                                            ("vocab", "embed")))
        self.decoder = MoTDecoder(cfg)
        e = cfg.expert_width
        self.action_in = dense(e, (None, "expert_embed"), dtype=dtype, use_bias=True)
        self.state_in = dense(e, (None, "expert_embed"), dtype=dtype, use_bias=True)
        self.time_in = dense(e, (None, "expert_mlp"), dtype=dtype, use_bias=True)
        self.time_out = dense(e, ("expert_mlp", "expert_embed"), dtype=dtype, use_bias=True)
        self.action_out = dense(cfg.action_dim, ("expert_embed", None), dtype=jnp.float32,
                                use_bias=True)
        if not cfg.get("tie_embeddings", True):  # else the caption head is embedder.attend
            self.caption_head = dense(cfg.vocab_size, ("embed", "vocab"), dtype=dtype)
        self.duration_head = dense(cfg.num_duration_bins, ("embed", None), dtype=jnp.float32,
                                   use_bias=True)
        self.world_hidden = dense(cfg.width, ("embed", "mlp"), dtype=dtype, use_bias=True)
        self.world_out = dense(cfg.world_size * cfg.world_size * 3, ("mlp", None),
                               dtype=jnp.float32, use_bias=True)
        if aux_action_enabled(cfg):  # else no parameters: the model is as without the field
            self.aux_action_head = AuxActionHead(cfg.get("aux_action_steps", 1), cfg.action_dim,
                                                 dtype)

    # -- inputs -----------------------------------------------------------------------------
    def embed_vlm(self, obs: Observation) -> tuple[jax.Array, jax.Array, int]:
        """-> tokens [B, Nv, width], valid bool [B, Nv] (False on padding), #image tokens.

        Nv = image tokens + Li instruction tokens + K * Lc caption tokens (slots in order)."""
        image = self.vit(obs.image)
        captions = _flat_captions(obs)
        text = self.embed_tokens(jnp.concatenate([obs.instruction, captions], axis=1))
        return (jnp.concatenate([image, text.astype(image.dtype)], axis=1),
                _vlm_valid(obs, image.shape[1]), image.shape[1])

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """int [B, T] -> [B, T, width] in the compute dtype, scaled as the backbone family's
        home library does (`model.backbone_family`; every token path goes through here)."""
        dtype = compute_dtype(self.cfg.dtype)
        x = self.embedder(tokens).astype(dtype)
        scale = embed_scale(self.cfg, dtype)
        return x if scale is None else x * scale

    def embed_actions(self, x_t: jax.Array, state: jax.Array, t: jax.Array,
                      state_mask: jax.Array | None = None) -> jax.Array:
        """x_t [B, T, A], state [B, S], t [B] -> action tokens [B, T, expert_width]; padded
        state dims (`state_mask` bool [B, S] False) read as 0 whatever they hold."""
        if state_mask is not None:
            state = jnp.where(state_mask, state, 0.0)
        time = sinusoidal_embedding(t, self.cfg.expert_width)
        time = self.time_out(nn.swish(self.time_in(time)))
        return self.action_in(x_t) + (self.state_in(state) + time)[:, None, :]

    def _layout(self, obs: Observation, valid: jax.Array, n_img: int,
                action_events: jax.Array):
        """Staircase mask with padding over [Nv+Na, Nv+Na] (an `AttentionMask`: the stairs,
        static unless they depend on the example's events, and the key validity apart) and
        rotary positions (`cfg.caption_mask="causal"`: the causal caption mask of the ablation).

        Positions: the prefix counts only its real tokens; caption slot c then starts at
        P + c * Lc (P = real prefix tokens) and the action steps at P + K * Lc, whatever the
        captions hold, so no caption's content or length can move another token's position.
        """
        b, n_prefix = valid.shape[0], n_img + obs.instruction.shape[1]
        k, lc = obs.caption.shape[1], obs.caption.shape[2]
        num_actions = action_events.shape[1]
        stairs = staircase_structure(n_prefix, (lc,) * k, action_events,
                                     self.cfg.get("caption_mask", "staircase"))
        # A masked camera's tokens keep their positions (so no other token moves) but are
        # never attended.
        key_valid = jnp.concatenate([prefix_key_valid(obs, valid, n_img),
                                     jnp.ones((b, num_actions), bool)], 1)
        prefix_real = jnp.sum(valid[:, :n_prefix], axis=1, keepdims=True)
        pos_prefix = jnp.cumsum(valid[:, :n_prefix], axis=1) - 1
        pos_captions = prefix_real + jnp.arange(k * lc)[None]
        pos_act = prefix_real + k * lc + jnp.arange(num_actions)[None]
        pos_vlm = jnp.concatenate([pos_prefix, jnp.broadcast_to(pos_captions, (b, k * lc))], 1)
        return AttentionMask.of(stairs, key_valid), (pos_vlm, pos_act)

    # -- heads ------------------------------------------------------------------------------
    def vlm_heads(self, h_vlm: jax.Array, obs: Observation, n_img: int
                  ) -> dict[str, jax.Array]:
        """Duration logits [B, K, bins], one per caption slot, read at the slot's last real
        token (its EOS); world frame [B, w, w, 3] in [-1, 1] from the pooled image tokens."""
        k, lc = obs.caption.shape[1], obs.caption.shape[2]
        start = n_img + obs.instruction.shape[1] + lc * jnp.arange(k)  # [K]
        length = jnp.sum(obs.caption != 0, axis=-1)  # [B, K]
        last = start[None] + jnp.maximum(length - 1, 0)
        h_last = jnp.take_along_axis(h_vlm, last[:, :, None], axis=1)  # [B, K, width]
        if obs.camera_mask is None:
            pooled = jnp.mean(h_vlm[:, :n_img], axis=1)
        else:  # over the robot's own cameras only
            w = _image_token_mask(obs, n_img).astype(h_vlm.dtype)[:, :, None]
            pooled = jnp.sum(h_vlm[:, :n_img] * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1)
        world = jnp.tanh(self.world_out(nn.gelu(self.world_hidden(pooled))))
        w = self.cfg.world_size
        return {"duration_logits": self.duration_head(h_last),
                "world": world.reshape(-1, w, w, 3)}

    def lm_logits(self, h: jax.Array) -> jax.Array:
        """Token logits from backbone states: the tied embedding or a separate head
        (`model.tie_embeddings`)."""
        if self.cfg.get("tie_embeddings", True):
            return self.embedder.attend(h)
        return self.caption_head(h)

    def caption_logits(self, h_vlm: jax.Array, obs: Observation) -> jax.Array:
        """Next-token logits f32 [B, K, Lc, vocab] of the caption slots (tied embedding)."""
        b, k, lc = obs.caption.shape
        logits = self.lm_logits(h_vlm[:, h_vlm.shape[1] - k * lc:])
        return logits.astype(jnp.float32).reshape(b, k, lc, logits.shape[-1])

    def aux_actions(self, image_tokens: jax.Array, obs: Observation) -> jax.Array:
        """The auxiliary action head (`model.aux_action_weight` > 0, a training aid): the image
        tokens as they enter the backbone [B, N, width] and the state -> the chunk's first
        `model.aux_action_steps` actions f32 [B, steps, A], normalised as the flow target."""
        return self.aux_action_head(image_tokens, obs.state,
                                    None if obs.camera_mask is None
                                    else _image_token_mask(obs, image_tokens.shape[1]),
                                    obs.state_mask)

    # -- passes -----------------------------------------------------------------------------
    def __call__(self, obs: Observation, x_t: jax.Array, t: jax.Array,
                 action_events: jax.Array | None = None) -> dict[str, jax.Array]:
        """Joint training forward. x_t [B, T, A], t [B], action_events int [B, T] (caption slot
        of each step; default all 0) -> velocity [B, T, A], caption_logits [B, K, Lc, vocab]
        (f32), duration_logits [B, K, bins], world [B, w, w, 3]."""
        action_events = _default_events(action_events, x_t)
        x_vlm, valid, n_img = self.embed_vlm(obs)
        x_act = self.embed_actions(x_t, obs.state, t, obs.state_mask)
        x_vlm = constrain_activation(x_vlm)
        x_act = constrain_activation(x_act)
        mask, positions = self._layout(obs, valid, n_img, action_events)
        h_vlm, h_act, _ = self.decoder(x_vlm, x_act, positions, mask)
        out = {"velocity": self.action_out(h_act),
               "caption_logits": self.caption_logits(h_vlm, obs),
               **self.vlm_heads(h_vlm, obs, n_img)}
        if aux_action_enabled(self.cfg):
            out["aux_actions"] = self.aux_actions(x_vlm[:, :n_img], obs)
        return out

    def encode(self, obs: Observation) -> tuple[KVCache, dict[str, jax.Array]]:
        """VLM tokens alone -> per-layer K/V cache [L, B, Nv, K, H] and the VLM heads."""
        h_vlm, cache = self._vlm_forward(obs)
        return cache, self.vlm_heads(h_vlm, obs, h_vlm.shape[1] - _num_text(obs))

    def velocity(self, obs: Observation, cache: KVCache, x_t: jax.Array, t: jax.Array,
                 action_events: jax.Array | None = None) -> jax.Array:
        """Action tokens against the cached VLM tokens. x_t [B, T, A], t [B] -> [B, T, A]."""
        # Recomputing the (cheap) padding layout keeps the cache a plain K/V pytree.
        action_events = _default_events(action_events, x_t)
        n_img = cache[0].shape[2] - _num_text(obs)
        valid = _vlm_valid(obs, n_img)
        mask, (_, pos_act) = self._layout(obs, valid, n_img, action_events)
        x_act = self.embed_actions(x_t, obs.state, t, obs.state_mask)
        _, h_act, _ = self.decoder(None, x_act, (None, pos_act),
                                   mask.query_rows(valid.shape[1]), cache)
        return self.action_out(h_act)

    def _vlm_forward(self, obs: Observation) -> tuple[jax.Array, KVCache]:
        """Backbone-only pass over [image | instruction | captions] -> hidden, K/V cache."""
        x_vlm, valid, n_img = self.embed_vlm(obs)
        no_actions = jnp.zeros((valid.shape[0], 0), jnp.int32)
        mask, positions = self._layout(obs, valid, n_img, no_actions)
        h_vlm, _, cache = self.decoder(x_vlm, None, (positions[0], None), mask)
        return h_vlm, cache

    # -- caption decoding (backbone only; see models/decoding.py) ----------------------------
    def text_hidden_states(self, tokens: jax.Array) -> jax.Array:
        """The backbone alone as a causal language model: int [B, T] -> final-norm states
        [B, T, width] at positions 0..T-1 (no image, no action expert, no padding mask)."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
        mask = AttentionMask.of(np.tril(np.ones((t, t), bool)))
        h, _, _ = self.decoder(self.embed_tokens(tokens), None, (positions, None), mask)
        return h

    def image_embeddings(self, image: jax.Array) -> jax.Array:
        """The vision tower's own output tokens [B, N, vit_width] for uint8 images (as
        `Observation.image`), before `vit/to_backbone` projects them into the backbone."""
        return self.vit(image, project=False)

    def vlm_caption_logits(self, obs: Observation) -> jax.Array:
        """Uncached backbone-only forward: caption logits f32 [B, K, Lc, vocab], the same
        values as `__call__`'s (VLM tokens never see actions)."""
        h_vlm, _ = self._vlm_forward(obs)
        return self.caption_logits(h_vlm, obs)

    def decode_step(self, cache: KVCache, tokens: jax.Array, positions: jax.Array,
                    cache_mask: jax.Array) -> tuple[jax.Array, jax.Array, KVCache]:
        """One incremental backbone step over a fixed-size K/V cache.

        cache: [L, B, S, K, H]; tokens, positions: int [B, 1]; cache_mask: bool [B, S] (the
        cache slots this token may attend to). The token also attends to itself unless it is
        padding (id 0), as in `_layout`. Returns logits f32 [B, vocab] for the next token, the
        duration logits [B, bins] read at this token (a caption's, when it is its EOS, as
        `vlm_heads` reads them) and this token's (k, v), each [L, B, 1, K, H], for the caller
        to write into the cache.
        """
        x = self.embed_tokens(tokens)
        mask = AttentionMask.of(np.ones((1, cache_mask.shape[1] + 1), bool),
                                jnp.concatenate([cache_mask, tokens != 0], axis=1))
        h, _, new_cache = self.decoder(x, None, (positions, None), mask, cache)
        logits = self.lm_logits(h[:, 0]).astype(jnp.float32)
        return (logits, self.duration_head(h[:, 0]),
                jax.tree.map(lambda c: c[:, :, -1:], new_cache))

    def extend_slot(self, cache: KVCache, tokens: jax.Array, positions: jax.Array,
                    cache_mask: jax.Array) -> tuple[jax.Array, KVCache]:
        """One whole caption slot against a K/V cache (the prefix and earlier slots).

        cache: [L, B, S, K, H]; tokens, positions: int [B, Lc] (the slot, 0 = padding);
        cache_mask: bool [B, S]. Each token attends to the valid cache entries and causally to
        the slot's real tokens, as in `_layout`. Returns the slot's duration logits [B, bins]
        (at its last real token, as `vlm_heads` reads them) and its (k, v), [L, B, Lc, K, H].
        """
        x = self.embed_tokens(tokens)
        n = tokens.shape[1]
        mask = AttentionMask.of(
            np.concatenate([np.ones((n, cache_mask.shape[1]), bool),
                            np.tril(np.ones((n, n), bool))], axis=1),
            jnp.concatenate([cache_mask, tokens != 0], axis=1))
        h, _, new_cache = self.decoder(x, None, (positions, None), mask, cache)
        last = jnp.maximum(jnp.sum(tokens != 0, axis=1) - 1, 0)
        h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        return self.duration_head(h_last), jax.tree.map(lambda c: c[:, :, -n:], new_cache)


def _flat_captions(obs: Observation) -> jax.Array:
    """Caption slots [B, K, Lc] -> the token sequence [B, K * Lc] in slot order."""
    b, k, lc = obs.caption.shape
    return obs.caption.reshape(b, k * lc)


def _num_text(obs: Observation) -> int:
    return obs.instruction.shape[1] + obs.caption.shape[1] * obs.caption.shape[2]


def _vlm_valid(obs: Observation, n_img: int) -> jax.Array:
    """bool [B, Nv]: image tokens always, text tokens unless padding (id 0)."""
    b = obs.instruction.shape[0]
    return jnp.concatenate([jnp.ones((b, n_img), bool), obs.instruction != 0,
                            _flat_captions(obs) != 0], axis=1)


def _image_token_mask(obs: Observation, n_img: int) -> jax.Array:
    """bool [B, n_img]: the image tokens of the cameras `obs.camera_mask` marks present
    (tokens are camera-major, n_img / C per camera)."""
    c = obs.camera_mask.shape[1]
    return jnp.repeat(obs.camera_mask.astype(bool), n_img // c, axis=1)


def prefix_key_valid(obs: Observation, valid: jax.Array, n_img: int) -> jax.Array:
    """bool [B, Nv]: the VLM tokens others may attend to: `valid` (`_vlm_valid`) without the
    image tokens of a camera `obs.camera_mask` marks missing (the same as `valid` without a
    camera mask)."""
    if obs.camera_mask is None:
        return valid
    return jnp.concatenate([_image_token_mask(obs, n_img), valid[:, n_img:]], axis=1)


def _default_events(action_events: jax.Array | None, x_t: jax.Array) -> jax.Array:
    if action_events is None:
        return jnp.zeros(x_t.shape[:2], jnp.int32)
    return jnp.asarray(action_events, jnp.int32)


# -- functional API (what train/export/policy call) ---------------------------------------------
def _dummy_inputs(cfg: ml_collections.FrozenConfigDict, batch: int = 1):
    """Smallest inputs that create every parameter (text lengths do not change param shapes)."""
    cameras = cfg.get("cameras", 1)
    image_shape = (cfg.image_size, cfg.image_size, 3)
    obs = Observation(
        image=jnp.zeros((batch, *((cameras,) if cameras > 1 else ()), *image_shape), jnp.uint8),
        state=jnp.zeros((batch, cfg.state_dim), jnp.float32),
        instruction=jnp.ones((batch, 2), jnp.int32),
        caption=jnp.ones((batch, 1, 2), jnp.int32))
    return obs, jnp.zeros((batch, cfg.max_event_len, cfg.action_dim)), jnp.zeros((batch,))


@functools.partial(jax.jit, static_argnums=0)
def _boxed_init(cfg: ml_collections.FrozenConfigDict, rng: jax.Array) -> Any:
    return WallWM(cfg).init({"params": rng}, *_dummy_inputs(cfg))["params"]


def init_params(model_cfg: Any, rng: jax.Array) -> Any:
    """Float32 parameter pytree (plain arrays, no partitioning boxes)."""
    return nn.meta.unbox(_boxed_init(_frozen(model_cfg), rng))


@functools.lru_cache(maxsize=16)
def _abstract_boxed(cfg: ml_collections.FrozenConfigDict) -> Any:
    """The boxed parameter tree's shapes: tracing the model's init costs seconds, so it runs
    once per model config and process (train step, export, policy and restore all ask)."""
    return jax.eval_shape(lambda: _boxed_init(cfg, jax.random.key(0)))


def abstract_params(model_cfg: Any) -> Any:
    """`init_params`'s shapes and dtypes (ShapeDtypeStructs, no arrays, no boxes)."""
    return nn.meta.unbox(_abstract_boxed(_frozen(model_cfg)))


def param_logical_axes(model_cfg: Any) -> Any:
    """PartitionSpec of logical axis names per parameter, same tree as `init_params`."""
    return nn.get_partition_spec(_abstract_boxed(_frozen(model_cfg)))


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    weights = weights.astype(jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _sample_flow_time(rng: jax.Array, a: float, b: float, n: int) -> jax.Array:
    """t ~ Beta(a, b), [n]. Beta(a, 1) is u ** (1 / a) exactly, avoiding the gamma sampler's
    while loops (seconds of compile time on every train step variant)."""
    if b == 1.0:
        return jax.random.uniform(rng, (n,)) ** (1.0 / a)
    return jax.random.beta(rng, a, b, (n,))


def _aux_action_loss(pred: jax.Array, actions: jax.Array, action_mask: jax.Array,
                     dims: jax.Array | None) -> jax.Array:
    """MSE of the auxiliary head's [B, k, A] against the chunk's first k (normalised) actions,
    over the steps `action_mask` keeps and the dims `dims` [B, 1, A] (None: all) keeps."""
    k = pred.shape[1]
    sq_err = jnp.square(pred.astype(jnp.float32) - actions[:, :k])
    if dims is None:
        err = jnp.mean(sq_err, -1)
    else:
        err = jnp.sum(jnp.where(dims, sq_err, 0.0), -1) / jnp.maximum(jnp.sum(dims, -1), 1)
    return _masked_mean(err, action_mask[:, :k])


def compute_loss(model_cfg: Any, params: Any, batch: EventBatch, rng: jax.Array, *,
                 train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of flow-matching, caption CE, duration CE and world MSE (plus the auxiliary
    action MSE with `model.aux_action_weight` > 0, metric loss/aux_action); scalar metrics.

    One path for every mode: the caption slots and `batch.action_events` decide the Staircase
    mask (event mode = one slot, chunk = none; absent terms are 0). `train` is reserved for
    dropout (none yet); the flow noise/time still come from `rng`.
    """
    del train
    cfg = _frozen(model_cfg)
    noise_rng, time_rng = jax.random.split(rng)
    actions = batch.actions.astype(jnp.float32)
    noise = jax.random.normal(noise_rng, actions.shape, jnp.float32)
    t = _sample_flow_time(time_rng, cfg.flow_beta_a, cfg.flow_beta_b, actions.shape[0])
    t = t * 0.999 + 0.001  # keep away from t = 0, where x_t carries no noise
    dims = batch.obs.action_dim_mask
    if dims is not None:  # padded action dims: no target, no noise, not counted
        dims = dims.astype(bool)[:, None, :]
        actions = jnp.where(dims, actions, 0.0)
        noise = jnp.where(dims, noise, 0.0)
    x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
    out = WallWM(cfg).apply({"params": params}, batch.obs, x_t, t, batch.action_events)

    sq_err = jnp.square(out["velocity"].astype(jnp.float32) - (noise - actions))
    if dims is None:
        action_err = jnp.mean(sq_err, -1)
    else:
        action_err = jnp.sum(jnp.where(dims, sq_err, 0.0), -1) / jnp.maximum(
            jnp.sum(dims, -1), 1)
    targets = batch.obs.caption[:, :, 1:]  # teacher forcing: token i predicts token i + 1
    caption_ce = optax.softmax_cross_entropy_with_integer_labels(
        out["caption_logits"][:, :, :-1], targets)
    duration_ce = optax.softmax_cross_entropy_with_integer_labels(
        out["duration_logits"].astype(jnp.float32), batch.duration_bin)
    end_frame = batch.end_image.astype(jnp.float32) / 127.5 - 1.0
    terms = {
        "action": _masked_mean(action_err, batch.action_mask),
        "caption": _masked_mean(caption_ce, targets != 0),
        "duration": _masked_mean(duration_ce, batch.obs.caption[:, :, 0] != 0),
        "world": jnp.mean(jnp.square(out["world"].astype(jnp.float32) - end_frame)),
    }
    loss = sum(cfg.loss_weights[k] * v for k, v in terms.items())
    metrics = {f"loss/{k}": v for k, v in terms.items()}
    if aux_action_enabled(cfg):
        metrics["loss/aux_action"] = aux = _aux_action_loss(out["aux_actions"], actions,
                                                            batch.action_mask, dims)
        loss = loss + cfg.aux_action_weight * aux
    metrics["loss"] = loss
    return loss, metrics


def sample_actions(model_cfg: Any, params: Any, obs: Observation, rng: jax.Array, *,
                   num_steps: int | None = None,
                   action_events: jax.Array | None = None) -> dict[str, jax.Array]:
    """Denoise one action chunk given the observation and its caption slots (any mode).

    Encodes [image | instruction | captions] once (K/V cache), reads the duration of every
    present caption slot, assigns steps to slots (`events_from_durations`, unless
    `action_events` int [B, Tmax] is given), then runs Euler from t=1 to 0 over that cache.
    Returns actions f32 [B, Tmax, A] (normalised), duration_bin int32 [B, K],
    action_events int32 [B, Tmax], world [B, w, w, 3].
    """
    cfg = _frozen(model_cfg)
    cache, heads = WallWM(cfg).apply({"params": params}, obs, method=WallWM.encode)
    duration_bin = jnp.argmax(heads["duration_logits"], -1).astype(jnp.int32)
    return denoise(cfg, params, obs, cache, duration_bin, heads["world"], rng,
                   num_steps=num_steps, action_events=action_events)


def denoise(model_cfg: Any, params: Any, obs: Observation, cache: KVCache,
            duration_bin: jax.Array, world: jax.Array, rng: jax.Array, *,
            num_steps: int | None = None,
            action_events: jax.Array | None = None) -> dict[str, jax.Array]:
    """The action half of `sample_actions` over an encoded cache [L, B, Nv, K, H] of
    [image | instruction | captions] and the slots' duration bins int [B, K]."""
    cfg = _frozen(model_cfg)
    model, variables = WallWM(cfg), {"params": params}
    num_steps = int(num_steps or cfg.num_flow_steps)
    batch = obs.state.shape[0]
    if action_events is None:
        action_events = events_from_durations(duration_steps(cfg, duration_bin),
                                              obs.caption[:, :, 0] != 0, cfg.max_event_len)
    x = jax.random.normal(rng, (batch, cfg.max_event_len, cfg.action_dim), jnp.float32)
    dt = -1.0 / num_steps
    dims = None if obs.action_dim_mask is None else obs.action_dim_mask.astype(bool)[:, None]
    if dims is not None:  # padded dims stay 0, as in training
        x = jnp.where(dims, x, 0.0)

    def euler_step(i, x):
        t = jnp.full((batch,), 1.0 + i * dt, jnp.float32)
        v = model.apply(variables, obs, cache, x, t, action_events, method=WallWM.velocity)
        x = x + dt * v.astype(jnp.float32)
        return x if dims is None else jnp.where(dims, x, 0.0)

    x = jax.lax.fori_loop(0, num_steps, euler_step, x)
    return {"actions": x, "duration_bin": duration_bin, "action_events": action_events,
            "world": world.astype(jnp.float32)}
