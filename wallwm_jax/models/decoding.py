"""Caption decoding on the backbone: KV-cached (what inference runs) and an uncached reference.

A caption slot uses the training layout (`Observation.caption[:, k]`): [BOS, tokens..., EOS]
then 0 padding; token i predicts token i + 1. Decoding caption slot k prefills [image |
instruction | captions 0..k-1] once (`WallWM.encode`), then feeds one caption token per step
through `WallWM.decode_step` against a fixed-size cache [L, B, prefix + max_len, K, H]. A row
stops at EOS (later tokens are 0) once it has fed it too (its K/V, and the slot's duration read
there); the loop ends when every row has stopped or `max_len` is reached.

Positions and masks equal those of the training forward (`WallWM._layout`): slot k's token i
sits at P + k * Lc + i, padding is never attended, so the cached logits equal the uncached
ones. `staircase_decode` is unified-mode inference (docs/model.md): caption k, then caption
k+1 while the predicted remaining duration is shorter than the chunk, then one denoising pass.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from wallwm_jax.data.batches import Observation
from wallwm_jax.models.layers import compute_dtype
from wallwm_jax.models.wallwm import (
    WallWM,
    _frozen,
    _vlm_valid,
    denoise,
    duration_steps,
    prefix_key_valid,
    sample_actions,
)

BOS_ID, EOS_ID = 1, 2


def unrolled_layers(model_cfg: Any, params: Any) -> tuple[ml_collections.FrozenConfigDict, Any]:
    """The same model with its layer stacks (`model.scan_layers`) as separate layers: config
    and params (stacked `decoder/layers`, `vit/blocks` split into `layers_i`, `block_i`).

    Token-by-token decoding runs the backbone once per token; under `nn.scan` every step
    dynamic-slices each layer's weights out of the stack, which XLA copies, so a batch-1 step
    moves the weights twice more than it reads them. Split (static slices, outside the token
    loop), the steps read the weights in place. Same values: only the loop over layers
    changes. Inside a jitted call the split is a copy of every weight per call (~110 ms at
    `small` on CPU), so `Policy` splits once when it loads; already split params pass
    through unchanged."""
    cfg = _frozen(model_cfg)
    if not cfg.get("scan_layers", False):
        return cfg, params
    config = cfg.as_configdict()
    config.scan_layers = False
    params = dict(params)
    for module, stack, name in (("decoder", "layers", "layers_{}"), ("vit", "blocks", "block_{}")):
        tree = dict(params[module])
        layers = tree.pop(stack)
        depth = jax.tree.leaves(layers)[0].shape[0]
        tree.update({name.format(i): jax.tree.map(lambda x, i=i: x[i], layers)
                     for i in range(depth)})
        params[module] = tree
    return ml_collections.FrozenConfigDict(config), params


def cast_for_inference(model_cfg: Any, params: Any, platform: str | None = None) -> Any:
    """`params` with the decoder layers' matmul weights and the token embedding stored in the
    compute dtype (`model.dtype` on `platform`) when that is not float32; unchanged otherwise.

    Those weights are only read in the compute dtype (each layer casts its fp32 kernel before
    the matmul), so the outputs are the same bit for bit; but inside the token loop XLA casts
    them again at every token step (the casts sit in the loop body, fused with the dots), so a
    batch-1 token step read the fp32 weights and wrote bf16 copies of them. Cast once here,
    a step reads half the bytes and casts nothing. Norm scales and the fp32 heads stay fp32."""
    dtype = compute_dtype(_frozen(model_cfg).dtype, platform)
    if dtype == jnp.float32:
        return params

    def cast(path: tuple, leaf: Any) -> Any:
        names = [getattr(k, "key", str(k)) for k in path]
        in_layers = names[0] == "decoder" and names[1].startswith("layers")
        matmul = in_layers and names[-1] == "kernel" or names[:2] == ["embedder", "embedding"]
        return leaf.astype(dtype) if matmul and jnp.issubdtype(leaf.dtype, jnp.floating) \
            else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


def per_row(rng: jax.Array) -> bool:
    """Whether `rng` holds one key per batch row ([B] typed keys or uint32 [B, 2] raw ones)
    rather than one key for the batch."""
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    return rng.ndim == (1 if typed else 2)


def fold_in(rng: jax.Array, data: int | jax.Array) -> jax.Array:
    """`jax.random.fold_in` of one key, or of each row's key (`per_row`)."""
    if per_row(rng):
        return jax.vmap(lambda key: jax.random.fold_in(key, data))(rng)
    return jax.random.fold_in(rng, data)


def _choose(logits: jax.Array, rng: jax.Array, step: int | jax.Array,
            temperature: float) -> jax.Array:
    """Next token int32 [B] from logits [B, V]: greedy at temperature 0, else sampled with
    the key fold_in(rng, step) (the same key in cached and uncached decoding; with a key per
    row, each row samples with its own)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    key = fold_in(rng, step)
    if per_row(rng):
        return jax.vmap(lambda k, x: jax.random.categorical(k, x / temperature))(
            key, logits).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def denoise_rows(cfg: ml_collections.FrozenConfigDict, params: Any, obs: Observation,
                 cache: Any, duration_bin: jax.Array, world: jax.Array, rng: jax.Array, *,
                 num_steps: int | None = None) -> dict[str, jax.Array]:
    """`wallwm.denoise` where `rng` may hold a key per row (`per_row`): each row then draws
    its noise as a batch of one with its own key, so a request's actions do not depend on
    the batch it was run in (the policy server stacks concurrent requests)."""
    if not per_row(rng):
        return denoise(cfg, params, obs, cache, duration_bin, world, rng, num_steps=num_steps)
    if rng.shape[0] == 1:  # the batch-of-one program, as with a single key
        return denoise(cfg, params, obs, cache, duration_bin, world, rng[0],
                       num_steps=num_steps)

    def one(obs, cache, duration_bin, world, key):
        row = functools.partial(jax.tree.map, lambda x: x[None])
        out = denoise(cfg, params, row(obs), jax.tree.map(lambda c: c[:, None], cache),
                      row(duration_bin), row(world), key, num_steps=num_steps)
        return jax.tree.map(lambda x: x[0], out)

    cache_axes = jax.tree.map(lambda _: 1, cache)  # [L, B, N, K, H]
    return jax.vmap(one, in_axes=(0, cache_axes, 0, 0, 0))(obs, cache, duration_bin, world,
                                                           rng)


def sample_rows(model_cfg: Any, params: Any, obs: Observation, rng: jax.Array, *,
                num_steps: int | None = None) -> dict[str, jax.Array]:
    """`wallwm.sample_actions` (event and chunk mode) with `rng` one key or a key per row
    (`denoise_rows`): the prefix is encoded for the whole batch at once."""
    cfg = _frozen(model_cfg)
    cache, heads = WallWM(cfg).apply({"params": params}, obs, method=WallWM.encode)
    duration_bin = jnp.argmax(heads["duration_logits"], -1).astype(jnp.int32)
    return denoise_rows(cfg, params, obs, cache, duration_bin, heads["world"], rng,
                        num_steps=num_steps)


def _check(max_len: int, temperature: float) -> None:
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def decode_caption(model_cfg: Any, params: Any, obs: Observation, rng: jax.Array, *,
                   max_len: int, temperature: float = 0.0, bos_id: int = BOS_ID,
                   eos_id: int = EOS_ID, return_logits: bool = False,
                   ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """KV-cached decoding of caption slot k = `obs.caption.shape[1]`, given captions 0..k-1
    in `obs.caption` [B, k, max_len] (pass [B, 0, max_len] for the first caption).

    Returns int32 [B, max_len] captions ([BOS, ..., EOS, 0, ...]); with `return_logits`, also
    f32 [B, max_len - 1, vocab] where [:, i] are the logits that chose token i + 1 (zero for
    steps after every row stopped; meaningful where token i != 0). Traceable under jit
    (`max_len`, `temperature`, ids static).
    """
    _check(max_len, temperature)
    cfg = _frozen(model_cfg)
    model, variables = WallWM(cfg), {"params": params}
    batch = obs.state.shape[0]
    obs = _context(obs, max_len)
    k = obs.caption.shape[1]
    cache, _ = model.apply(variables, obs, method=WallWM.encode)  # [L, B, Np, K, H]
    n_prefix = cache[0].shape[2]
    n_img = n_prefix - obs.instruction.shape[1] - k * max_len
    # A camera the batch marks missing (a mixture's robot without it) is never attended.
    prefix_valid = prefix_key_valid(obs, _vlm_valid(obs, n_img), n_img)
    pad = [(0, 0), (0, 0), (0, max_len), (0, 0), (0, 0)]
    cache = jax.tree.map(lambda c: jnp.pad(c, pad), cache)
    cache_mask = jnp.concatenate([prefix_valid, jnp.zeros((batch, max_len), bool)], 1)
    # Slot k starts at P + k * max_len (P = real image + instruction tokens), as in training.
    real_prefix = n_img + jnp.sum(obs.instruction != 0, axis=1).astype(jnp.int32)
    slot_start = real_prefix + k * max_len

    tokens, logits_out, *_ = _decode_slot(
        model, variables, cache, cache_mask, n_prefix, slot_start, rng, max_len=max_len,
        temperature=temperature, bos_id=bos_id, eos_id=eos_id)
    return (tokens, logits_out) if return_logits else tokens


def _decode_slot(model: WallWM, variables: Any, cache: Any, cache_mask: jax.Array,
                 offset: int, slot_start: jax.Array, rng: jax.Array, *, max_len: int,
                 temperature: float, bos_id: int, eos_id: int,
                 skip: jax.Array | None = None, with_logits: bool = True,
                 max_steps: int | jax.Array | None = None):
    """Decode one caption slot token by token into a fixed-size cache whose entries
    [offset, offset + max_len) hold the slot; the token at i sits at position slot_start + i.

    Every token a row decodes goes through the backbone, its last one too (EOS, or the token
    at the step limit: max_len - 1 decoded tokens, or `max_steps`, which may be traced), so
    the cache ends up holding the whole slot and the slot's duration is read at its last
    token, as `WallWM.extend_slot` reads it, without a second pass over the slot. Rows where
    `skip` bool [B] is set are not decoded (all-0 tokens, their slot entries stay invalid).
    Returns (tokens int32 [B, max_len], logits f32 [B, max_len - 1, vocab] (zeros unless
    `with_logits`; [:, i] chose token i + 1), duration logits f32 [B, bins], cache,
    cache_mask)."""
    batch = cache_mask.shape[0]
    active = jnp.ones((batch,), bool) if skip is None else ~skip
    tokens = jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(jnp.where(active, bos_id, 0))
    # Carried through the loop only when asked for: [B, max_len - 1, vocab] per step is the
    # loop's largest update for a real vocabulary.
    logits_len = max(max_len - 1, 0) if with_logits else 0
    logits_out = jnp.zeros((batch, logits_len, model.cfg.vocab_size), jnp.float32)
    duration = jnp.zeros((batch, model.cfg.num_duration_bins), jnp.float32)
    limit = jnp.int32(max_len - 1)
    if max_steps is not None:
        limit = jnp.minimum(limit, jnp.asarray(max_steps, jnp.int32))
    state = (jnp.int32(0), active, cache, cache_mask, tokens, logits_out, duration)

    def cond(state):
        i, active, *_ = state
        return (i <= limit) & jnp.any(active)

    def body(state):
        i, active, cache, cache_mask, tokens, logits_out, duration = state
        token = jnp.where(active, jax.lax.dynamic_index_in_dim(tokens, i, 1, False), 0)
        logits, step_duration, kv = model.apply(
            variables, cache, token[:, None], (slot_start + i)[:, None], cache_mask,
            method=WallWM.decode_step)
        slot = offset + i
        cache = jax.tree.map(
            lambda c, new: jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), slot, 2),
            cache, kv)
        cache_mask = jax.lax.dynamic_update_slice_in_dim(cache_mask, (token != 0)[:, None],
                                                         slot, 1)
        last = active & ((token == eos_id) | (i == limit))
        duration = jnp.where(last[:, None], step_duration.astype(jnp.float32), duration)
        active = active & ~last
        chosen = _choose(logits, rng, i, temperature)
        # Masked writes, not dynamic_update_slice: at i = max_len - 1 that would clamp onto
        # the last token.
        at = (jnp.arange(max_len) == i + 1)[None] & active[:, None]
        tokens = jnp.where(at, chosen[:, None], tokens)
        if with_logits:  # a step's logits count while it chooses a token for some row
            at = (jnp.arange(logits_len) == i)[None, :, None] & jnp.any(active)
            logits_out = jnp.where(at, logits[:, None], logits_out)
        return i + 1, active, cache, cache_mask, tokens, logits_out, duration

    _, _, cache, cache_mask, tokens, logits_out, duration = jax.lax.while_loop(cond, body, state)
    return tokens, logits_out, duration, cache, cache_mask


def _keep_given(model: WallWM, variables: Any, cache: Any, cache_mask: jax.Array,
                offset: int, slot_start: jax.Array, tokens: jax.Array, duration: jax.Array,
                given: jax.Array) -> tuple[jax.Array, jax.Array, Any, jax.Array]:
    """Put the captions of `given` int32 [B, max_len] (rows whose token 0 != 0; the decoder
    skipped them) into the slot at `offset`: one `extend_slot` pass for their K/V and
    duration, run only when some row has one. Returns (tokens, duration, cache, cache_mask)."""
    has = given[:, 0] != 0
    tokens = jnp.where(has[:, None], given.astype(jnp.int32), tokens)
    max_len = tokens.shape[1]

    def extend(args):
        cache, duration = args
        seen = jax.tree.map(lambda c: c[:, :, :offset], cache)  # prefix + earlier slots
        logits, kv = model.apply(variables, seen, tokens,
                                 slot_start[:, None] + jnp.arange(max_len)[None],
                                 cache_mask[:, :offset], method=WallWM.extend_slot)
        cache = jax.tree.map(lambda c, new: jax.lax.dynamic_update_slice_in_dim(
            c, jnp.where(has[None, :, None, None, None], new.astype(c.dtype),
                         c[:, :, offset:offset + max_len]), offset, 2), cache, kv)
        return cache, jnp.where(has[:, None], logits.astype(jnp.float32), duration)

    cache, duration = jax.lax.cond(jnp.any(has), extend, lambda args: args, (cache, duration))
    slot_mask = jnp.where(has[:, None], tokens != 0,
                          jax.lax.dynamic_slice_in_dim(cache_mask, offset, max_len, 1))
    cache_mask = jax.lax.dynamic_update_slice_in_dim(cache_mask, slot_mask, offset, 1)
    return tokens, duration, cache, cache_mask


def _context(obs: Observation, max_len: int) -> Observation:
    """The captions decoded so far, checked: [B, k, max_len] (the slot length the positions
    assume); an empty [B, 0, *] context is reshaped to [B, 0, max_len]."""
    caption = obs.caption
    if caption.ndim == 3 and caption.shape[1] == 0:
        return obs.replace(caption=jnp.zeros((caption.shape[0], 0, max_len), jnp.int32))
    if caption.ndim != 3 or caption.shape[2] != max_len:
        raise ValueError(f"obs.caption holds the captions decoded so far and must be "
                         f"[B, k, max_len={max_len}], got shape {tuple(caption.shape)}")
    return obs


@functools.partial(jax.jit, static_argnums=0)
def _full_caption_logits(cfg: ml_collections.FrozenConfigDict, params: Any,
                         obs: Observation) -> jax.Array:
    return WallWM(cfg).apply({"params": params}, obs, method=WallWM.vlm_caption_logits)


def decode_caption_uncached(model_cfg: Any, params: Any, obs: Observation, rng: jax.Array, *,
                            max_len: int, temperature: float = 0.0, bos_id: int = BOS_ID,
                            eos_id: int = EOS_ID, return_logits: bool = False,
                            ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Reference for `decode_caption` (same arguments and outputs): every step runs the full
    backbone forward over [image | instruction | earlier captions | caption so far (zero
    padded to max_len)]. Python loop, not jittable."""
    _check(max_len, temperature)
    cfg = _frozen(model_cfg)
    batch = obs.state.shape[0]
    obs = _context(obs, max_len)
    k = obs.caption.shape[1]
    tokens = jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(bos_id)
    logits_out = jnp.zeros((batch, max(max_len - 1, 0), cfg.vocab_size), jnp.float32)
    done = jnp.zeros((batch,), bool)
    for i in range(max_len - 1):
        if bool(jnp.all(done)):
            break
        so_far = jnp.where(jnp.arange(max_len)[None] <= i, tokens, 0)
        captions = jnp.concatenate([obs.caption, so_far[:, None]], axis=1)
        logits = _full_caption_logits(cfg, params, obs.replace(caption=captions))
        logits = logits[:, k, i]
        nxt = jnp.where(done, 0, _choose(logits, rng, i, temperature))
        done = done | (nxt == eos_id)
        tokens = tokens.at[:, i + 1].set(nxt)
        logits_out = logits_out.at[:, i].set(logits)
    return (tokens, logits_out) if return_logits else tokens


def staircase_decode(model_cfg: Any, params: Any, obs: Observation, rng: jax.Array, *,
                     max_len: int, temperature: float = 0.0,
                     num_steps: int | None = None, bos_id: int = BOS_ID,
                     eos_id: int = EOS_ID,
                     current_caption: jax.Array | None = None,
                     max_steps: int | jax.Array | None = None) -> dict[str, jax.Array]:
    """Unified-mode inference (Staircase Decoding); `obs.caption` is ignored.

    Encodes [image | instruction] once into a cache with room for K caption slots. Decodes
    caption 0 (the current event) token by token into it (rows of `current_caption` int32
    [B, max_len] that hold a caption, [BOS, ..., EOS, 0...], keep it instead: the caption still
    in effect, in slot 0 as in training: one pass through the backbone gives its K/V and
    duration). Decoding feeds each caption's last token too, so its K/V and its duration
    come out of the token loop with no second pass over the slot; caption k+1 follows for
    the rows
    whose predicted steps of events 0..k are fewer than the chunk length Tmax (other rows get
    an absent, all-0 slot), up to `model.max_captions` slots; then denoises the Tmax-step
    chunk once over that cache. Same outputs as `staircase_decode_reference` (which
    re-encodes the prefix per caption): `sample_actions`'s outputs plus `captions` int32
    [B, K, max_len]. Jittable. `bos_id`/`eos_id`: the tokenizer's (`Tokenizer.bos_id`).
    `max_steps` (int or traced int32 scalar; default max_len - 1): at most this many tokens
    decoded per caption, a caption cut there has no EOS (a latency bound, and what
    benchmarks/serve.py uses to time typical caption lengths in the same compiled program).
    `rng`: one key, or one per row (`per_row`: each row's captions and action noise then
    equal those of the row decoded alone with its key).
    """
    _check(max_len, temperature)
    cfg, params = unrolled_layers(model_cfg, params)
    model, variables = WallWM(cfg), {"params": params}
    batch, num_slots = obs.state.shape[0], cfg.max_captions
    prefix_obs = obs.replace(caption=jnp.zeros((batch, 0, max_len), jnp.int32))
    cache, heads = model.apply(variables, prefix_obs, method=WallWM.encode)  # the only encode
    n_prefix = cache[0].shape[2]
    n_img = n_prefix - obs.instruction.shape[1]
    pad = [(0, 0), (0, 0), (0, num_slots * max_len), (0, 0), (0, 0)]
    cache = jax.tree.map(lambda c: jnp.pad(c, pad), cache)
    cache_mask = jnp.concatenate([prefix_key_valid(prefix_obs, _vlm_valid(prefix_obs, n_img),
                                                   n_img),
                                  jnp.zeros((batch, num_slots * max_len), bool)], 1)
    real_prefix = n_img + jnp.sum(obs.instruction != 0, axis=1).astype(jnp.int32)
    captions = jnp.zeros((batch, num_slots, max_len), jnp.int32)
    bins = jnp.zeros((batch, num_slots), jnp.int32)
    need = jnp.ones((batch,), bool)
    for k in range(num_slots):
        offset, slot_start = n_prefix + k * max_len, real_prefix + k * max_len
        skip = ~need if k else (None if current_caption is None else current_caption[:, 0] != 0)
        tokens, _, duration, cache, cache_mask = _decode_slot(
            model, variables, cache, cache_mask, offset, slot_start, fold_in(rng, k),
            max_len=max_len, temperature=temperature, bos_id=bos_id, eos_id=eos_id,
            skip=skip, with_logits=False, max_steps=max_steps)
        if k == 0 and current_caption is not None:
            tokens, duration, cache, cache_mask = _keep_given(
                model, variables, cache, cache_mask, offset, slot_start, tokens, duration,
                current_caption)
        captions = captions.at[:, k].set(tokens)
        bins = bins.at[:, k].set(jnp.argmax(duration, -1).astype(jnp.int32))
        present = captions[:, :k + 1, 0] != 0
        covered = jnp.sum(jnp.where(present, duration_steps(cfg, bins[:, :k + 1]), 0), axis=1)
        need = need & (covered < cfg.max_event_len)
    out = denoise_rows(cfg, params, obs.replace(caption=captions), cache, bins, heads["world"],
                       fold_in(rng, num_slots), num_steps=num_steps)
    return dict(out, captions=captions)


def staircase_decode_reference(model_cfg: Any, params: Any, obs: Observation, rng: jax.Array, *,
                               max_len: int, temperature: float = 0.0,
                               num_steps: int | None = None, bos_id: int = BOS_ID,
                               eos_id: int = EOS_ID, current_caption: jax.Array | None = None,
                               ) -> dict[str, jax.Array]:
    """Reference for `staircase_decode` (same arguments and outputs) that re-encodes
    [image | instruction | captions so far] for every caption and for the chunk.

    Decodes caption 0 (the current event; rows of `current_caption` that hold one keep it),
    then caption k+1 for the rows whose predicted
    steps of events 0..k are fewer than the chunk length Tmax (other rows get an absent,
    all-0 slot), up to `model.max_captions` slots; then denoises the Tmax-step chunk once over
    the final cache, each step attending to the captions of its own and earlier events.
    Returns `sample_actions`'s outputs plus `captions` int32 [B, K, max_len]. Jittable.
    """
    cfg = _frozen(model_cfg)
    model, variables = WallWM(cfg), {"params": params}
    batch = obs.state.shape[0]
    captions = jnp.zeros((batch, 0, max_len), jnp.int32)
    need = jnp.ones((batch,), bool)
    for k in range(cfg.max_captions):
        caption = decode_caption(cfg, params, obs.replace(caption=captions),
                                 jax.random.fold_in(rng, k), max_len=max_len,
                                 temperature=temperature, bos_id=bos_id, eos_id=eos_id)
        if k == 0 and current_caption is not None:  # the caption still in effect, if any
            caption = jnp.where(current_caption[:, :1] != 0, current_caption, caption)
        caption = jnp.where(need[:, None], caption, 0)
        captions = jnp.concatenate([captions, caption[:, None]], axis=1)
        if k + 1 < cfg.max_captions:
            _, heads = model.apply(variables, obs.replace(caption=captions),
                                   method=WallWM.encode)
            bins = jnp.argmax(heads["duration_logits"], -1)
            covered = jnp.sum(jnp.where(captions[:, :, 0] != 0, duration_steps(cfg, bins), 0),
                              axis=1)
            need = need & (covered < cfg.max_event_len)
    out = sample_actions(cfg, params, obs.replace(caption=captions),
                         jax.random.fold_in(rng, cfg.max_captions), num_steps=num_steps)
    return dict(out, captions=captions)
