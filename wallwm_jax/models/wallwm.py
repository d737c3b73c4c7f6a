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
from wallwm_jax.models.layers import dense, partitioned, sinusoidal_embedding
from wallwm_jax.models.masks import staircase_mask, with_padding
from wallwm_jax.models.transformer import KVCache, MoTDecoder
from wallwm_jax.models.vit import ViT


def _frozen(model_cfg: Any) -> ml_collections.FrozenConfigDict:
    """Module attributes must be hashable/immutable: freeze config.model once per entry."""
    if isinstance(model_cfg, ml_collections.FrozenConfigDict):
        return model_cfg
    return ml_collections.FrozenConfigDict(model_cfg)


def event_mask(num_prefix: int, caption_len: int, num_actions: int) -> np.ndarray:
    """Event-mode staircase: one caption, every action step in event 0. bool [T, T]."""
    return staircase_mask(num_prefix, (caption_len,), [0] * num_actions)


class WallWM(nn.Module):
    """ViT + mixture-of-transformers decoder + caption/duration/world/velocity heads."""

    cfg: Any  # FrozenConfigDict of config.model

    def setup(self) -> None:
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        self.vit = ViT(cfg.patch_size, cfg.vit_width, cfg.vit_depth, cfg.vit_heads,
                       cfg.vit_mlp_dim, cfg.width, dtype)
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
        self.duration_head = dense(cfg.num_duration_bins, ("embed", None), dtype=jnp.float32,
                                   use_bias=True)
        self.world_hidden = dense(cfg.width, ("embed", "mlp"), dtype=dtype, use_bias=True)
        self.world_out = dense(cfg.world_size * cfg.world_size * 3, ("mlp", None),
                               dtype=jnp.float32, use_bias=True)

    # -- inputs -----------------------------------------------------------------------------
    def embed_vlm(self, obs: Observation) -> tuple[jax.Array, jax.Array, int]:
        """-> tokens [B, Nv, width], valid bool [B, Nv] (False on padding), #image tokens."""
        image = self.vit(obs.image)
        text = self.embedder(jnp.concatenate([obs.instruction, obs.caption], axis=1))
        b, n_img = image.shape[:2]
        valid = jnp.concatenate([jnp.ones((b, n_img), bool), obs.instruction != 0,
                                 obs.caption != 0], axis=1)
        return jnp.concatenate([image, text.astype(image.dtype)], axis=1), valid, n_img

    def embed_actions(self, x_t: jax.Array, state: jax.Array, t: jax.Array) -> jax.Array:
        """x_t [B, T, A], state [B, S], t [B] -> action tokens [B, T, expert_width]."""
        time = sinusoidal_embedding(t, self.cfg.expert_width)
        time = self.time_out(nn.swish(self.time_in(time)))
        return self.action_in(x_t) + (self.state_in(state) + time)[:, None, :]

    def _layout(self, obs: Observation, valid: jax.Array, n_img: int, num_actions: int):
        """Padding-aware mask bool [B, Nv+Na, Nv+Na] and rotary positions (vlm, act)."""
        n_prefix = n_img + obs.instruction.shape[1]
        static = event_mask(n_prefix, obs.caption.shape[1], num_actions)
        key_valid = jnp.concatenate([valid, jnp.ones((valid.shape[0], num_actions), bool)], 1)
        pos_vlm = jnp.cumsum(valid, axis=1) - 1  # padding does not consume positions
        pos_act = jnp.sum(valid, axis=1, keepdims=True) + jnp.arange(num_actions)[None]
        return with_padding(static, key_valid), (pos_vlm, pos_act)

    # -- heads ------------------------------------------------------------------------------
    def vlm_heads(self, h_vlm: jax.Array, valid: jax.Array, n_img: int) -> dict[str, jax.Array]:
        """Duration logits [B, bins] from the last real VLM token (the caption's end when a
        caption is present); world frame [B, w, w, 3] in [-1, 1] from pooled image tokens."""
        last = jnp.max(jnp.where(valid, jnp.arange(valid.shape[1])[None], 0), axis=1)
        h_last = jnp.take_along_axis(h_vlm, last[:, None, None], axis=1)[:, 0]
        pooled = jnp.mean(h_vlm[:, :n_img], axis=1)
        world = jnp.tanh(self.world_out(nn.gelu(self.world_hidden(pooled))))
        w = self.cfg.world_size
        return {"duration_logits": self.duration_head(h_last),
                "world": world.reshape(-1, w, w, 3)}

    # -- passes -----------------------------------------------------------------------------
    def __call__(self, obs: Observation, x_t: jax.Array, t: jax.Array) -> dict[str, jax.Array]:
        """Joint training forward. x_t [B, T, A], t [B] -> velocity [B, T, A],
        caption_logits [B, Lc, vocab] (f32), duration_logits [B, bins], world [B, w, w, 3]."""
        x_vlm, valid, n_img = self.embed_vlm(obs)
        x_act = self.embed_actions(x_t, obs.state, t)
        mask, positions = self._layout(obs, valid, n_img, x_t.shape[1])
        h_vlm, h_act, _ = self.decoder(x_vlm, x_act, positions, mask)
        caption_len = obs.caption.shape[1]
        caption_logits = self.embedder.attend(h_vlm[:, h_vlm.shape[1] - caption_len:])
        return {"velocity": self.action_out(h_act),
                "caption_logits": caption_logits.astype(jnp.float32),
                **self.vlm_heads(h_vlm, valid, n_img)}

    def encode(self, obs: Observation) -> tuple[KVCache, dict[str, jax.Array]]:
        """VLM tokens alone -> per-layer K/V cache [L, B, Nv, K, H] and the VLM heads."""
        x_vlm, valid, n_img = self.embed_vlm(obs)
        mask, positions = self._layout(obs, valid, n_img, 0)
        h_vlm, _, cache = self.decoder(x_vlm, None, (positions[0], None), mask)
        return cache, self.vlm_heads(h_vlm, valid, n_img)

    def velocity(self, obs: Observation, cache: KVCache, x_t: jax.Array,
                 t: jax.Array) -> jax.Array:
        """Action tokens against the cached prefix. x_t [B, T, A], t [B] -> [B, T, A]."""
        # Recomputing the (cheap) padding layout keeps the cache a plain K/V pytree.
        n_img = cache[0].shape[2] - obs.instruction.shape[1] - obs.caption.shape[1]
        valid = jnp.concatenate([jnp.ones((x_t.shape[0], n_img), bool), obs.instruction != 0,
                                 obs.caption != 0], axis=1)
        mask, (_, pos_act) = self._layout(obs, valid, n_img, x_t.shape[1])
        x_act = self.embed_actions(x_t, obs.state, t)
        _, h_act, _ = self.decoder(None, x_act, (None, pos_act), mask[:, valid.shape[1]:],
                                   cache)
        return self.action_out(h_act)

    # -- caption decoding (backbone only; see models/decoding.py) ----------------------------
    def vlm_caption_logits(self, obs: Observation) -> jax.Array:
        """Uncached backbone-only forward over [image | instruction | caption]: caption
        logits f32 [B, Lc, vocab], the same values as `__call__`'s (VLM never sees actions)."""
        x_vlm, valid, n_img = self.embed_vlm(obs)
        mask, positions = self._layout(obs, valid, n_img, 0)
        h_vlm, _, _ = self.decoder(x_vlm, None, (positions[0], None), mask)
        caption_len = obs.caption.shape[1]
        return self.embedder.attend(h_vlm[:, h_vlm.shape[1] - caption_len:]).astype(jnp.float32)

    def decode_step(self, cache: KVCache, tokens: jax.Array, positions: jax.Array,
                    cache_mask: jax.Array) -> tuple[jax.Array, KVCache]:
        """One incremental backbone step over a fixed-size K/V cache.

        cache: [L, B, S, K, H]; tokens, positions: int [B, 1]; cache_mask: bool [B, S] (the
        cache slots this token may attend to). The token also attends to itself unless it is
        padding (id 0), as in `_layout`. Returns logits f32 [B, vocab] for the next token and
        this token's (k, v), each [L, B, 1, K, H], for the caller to write into the cache.
        """
        x = self.embedder(tokens).astype(jnp.dtype(self.cfg.dtype))
        mask = jnp.concatenate([cache_mask, tokens != 0], axis=1)[:, None, :]
        h, _, new_cache = self.decoder(x, None, (positions, None), mask, cache)
        logits = self.embedder.attend(h[:, 0]).astype(jnp.float32)
        return logits, jax.tree.map(lambda c: c[:, :, -1:], new_cache)


# -- functional API (what train/export/policy call) ---------------------------------------------
def _dummy_inputs(cfg: ml_collections.FrozenConfigDict, batch: int = 1):
    """Smallest inputs that create every parameter (text lengths do not change param shapes)."""
    obs = Observation(
        image=jnp.zeros((batch, cfg.image_size, cfg.image_size, 3), jnp.uint8),
        state=jnp.zeros((batch, cfg.state_dim), jnp.float32),
        instruction=jnp.ones((batch, 2), jnp.int32),
        caption=jnp.ones((batch, 2), jnp.int32))
    return obs, jnp.zeros((batch, cfg.max_event_len, cfg.action_dim)), jnp.zeros((batch,))


@functools.partial(jax.jit, static_argnums=0)
def _boxed_init(cfg: ml_collections.FrozenConfigDict, rng: jax.Array) -> Any:
    return WallWM(cfg).init({"params": rng}, *_dummy_inputs(cfg))["params"]


def init_params(model_cfg: Any, rng: jax.Array) -> Any:
    """Float32 parameter pytree (plain arrays, no partitioning boxes)."""
    return nn.meta.unbox(_boxed_init(_frozen(model_cfg), rng))


def param_logical_axes(model_cfg: Any) -> Any:
    """PartitionSpec of logical axis names per parameter, same tree as `init_params`."""
    boxed = jax.eval_shape(lambda: _boxed_init(_frozen(model_cfg), jax.random.key(0)))
    return nn.get_partition_spec(boxed)


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


def compute_loss(model_cfg: Any, params: Any, batch: EventBatch, rng: jax.Array, *,
                 train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of flow-matching, caption CE, duration CE and world MSE; scalar metrics.

    `train` is reserved for dropout (none yet); the flow noise/time still come from `rng`.
    """
    del train
    cfg = _frozen(model_cfg)
    noise_rng, time_rng = jax.random.split(rng)
    actions = batch.actions.astype(jnp.float32)
    noise = jax.random.normal(noise_rng, actions.shape, jnp.float32)
    t = _sample_flow_time(time_rng, cfg.flow_beta_a, cfg.flow_beta_b, actions.shape[0])
    t = t * 0.999 + 0.001  # keep away from t = 0, where x_t carries no noise
    x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
    out = WallWM(cfg).apply({"params": params}, batch.obs, x_t, t)

    action_err = jnp.mean(jnp.square(out["velocity"].astype(jnp.float32) - (noise - actions)), -1)
    targets = batch.obs.caption[:, 1:]  # teacher forcing: token i predicts token i + 1
    caption_ce = optax.softmax_cross_entropy_with_integer_labels(
        out["caption_logits"][:, :-1], targets)
    duration_ce = optax.softmax_cross_entropy_with_integer_labels(
        out["duration_logits"].astype(jnp.float32), batch.duration_bin)
    end_frame = batch.end_image.astype(jnp.float32) / 127.5 - 1.0
    terms = {
        "action": _masked_mean(action_err, batch.action_mask),
        "caption": _masked_mean(caption_ce, targets != 0),
        "duration": jnp.mean(duration_ce),
        "world": jnp.mean(jnp.square(out["world"].astype(jnp.float32) - end_frame)),
    }
    loss = sum(cfg.loss_weights[k] * v for k, v in terms.items())
    metrics = {f"loss/{k}": v for k, v in terms.items()}
    metrics["loss"] = loss
    return loss, metrics


def sample_actions(model_cfg: Any, params: Any, obs: Observation, rng: jax.Array, *,
                   num_steps: int | None = None) -> dict[str, jax.Array]:
    """Event-mode inference: encode the prefix once (K/V cache), then Euler from t=1 to 0.

    Returns actions f32 [B, Tmax, A] (normalised), duration_bin int32 [B], world [B, w, w, 3].
    """
    cfg = _frozen(model_cfg)
    model, variables = WallWM(cfg), {"params": params}
    num_steps = int(num_steps or cfg.num_flow_steps)
    cache, heads = model.apply(variables, obs, method=WallWM.encode)
    batch = obs.state.shape[0]
    x = jax.random.normal(rng, (batch, cfg.max_event_len, cfg.action_dim), jnp.float32)
    dt = -1.0 / num_steps

    def euler_step(i, x):
        t = jnp.full((batch,), 1.0 + i * dt, jnp.float32)
        v = model.apply(variables, obs, cache, x, t, method=WallWM.velocity)
        return x + dt * v.astype(jnp.float32)

    x = jax.lax.fori_loop(0, num_steps, euler_step, x)
    return {"actions": x,
            "duration_bin": jnp.argmax(heads["duration_logits"], -1).astype(jnp.int32),
            "world": heads["world"].astype(jnp.float32)}
