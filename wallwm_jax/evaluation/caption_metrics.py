"""Caption and event-boundary accuracy of unified mode: the arithmetic shared by the offline
val metrics (teacher-forced, against the sample's caption) and the closed-loop records
(against the scripted phase).

Caption slots use the training layout: [BOS, tokens..., EOS, 0...]. A slot's scored positions
are those after BOS where the ground truth holds a token (its EOS included), so a caption
that stops early or runs on past the true EOS loses tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np


def slot_hits(pred: Any, true: Any) -> tuple[Any, Any, Any]:
    """pred, true int [..., L] caption slots -> (exact bool [...], hits int [...], scored
    int [...]): whether every scored position matches, how many do, how many are scored."""
    pred, true = jnp.asarray(pred), jnp.asarray(true)
    scored = true[..., 1:] != 0
    hit = (pred[..., 1:] == true[..., 1:]) & scored
    return (jnp.all(hit | ~scored, axis=-1), jnp.sum(hit, axis=-1), jnp.sum(scored, axis=-1))


def caption_accuracy(pred: Any, true: Any, present: Any) -> dict[str, Any]:
    """Over the `present` bool [...] slots of pred/true int [..., L]: `caption_exact` (share of
    slots decoded exactly) and `caption_token_acc` (share of scored tokens right)."""
    exact, hits, scored = slot_hits(pred, true)
    present = jnp.asarray(present)
    n = jnp.maximum(jnp.sum(present), 1)
    return {"caption_exact": jnp.sum(exact & present) / n,
            "caption_token_acc": jnp.sum(jnp.where(present, hits, 0))
            / jnp.maximum(jnp.sum(jnp.where(present, scored, 0)), 1)}


def teacher_forced_captions(logits: Any, caption: Any) -> Any:
    """Caption logits f32 [..., L, vocab] ([..., i] chooses token i + 1) and the true slots
    int [..., L] -> the argmax caption [BOS, argmax..., ] int32 [..., L]. Its exact match is
    greedy decoding's: if every argmax given the true prefix is right, greedy writes it."""
    caption = jnp.asarray(caption)
    chosen = jnp.argmax(logits[..., :-1, :], axis=-1).astype(jnp.int32)
    return jnp.concatenate([caption[..., :1].astype(jnp.int32), chosen], axis=-1)


def boundary_accuracy(pred_steps: Any, true_steps: Any, horizon: int, present: Any) -> Any:
    """Share of `present` slots where the predicted remaining steps and the true ones agree on
    whether the event ends inside a `horizon`-step chunk (steps < horizon: the decision that
    makes Staircase Decoding decode the next caption)."""
    agree = (jnp.asarray(pred_steps) < horizon) == (jnp.asarray(true_steps) < horizon)
    present = jnp.asarray(present)
    return jnp.sum(agree & present) / jnp.maximum(jnp.sum(present), 1)


def closed_loop_scores(replans: Sequence[dict[str, Any]]) -> dict[str, float | int]:
    """Episode summary of the scored replans of a unified run (`run_episode`'s `replans`):
    each with `hits`/`scored`/`exact` of its first caption against the scripted phase's
    wordings, and `boundary_ok` when its chunk ran to the planned length. Keys absent
    (no scored replan) rather than 0."""
    out: dict[str, float | int] = {}
    scored = [r for r in replans if r.get("scored")]
    if scored:
        out["caption_exact"] = float(np.mean([r["exact"] for r in scored]))
        out["caption_token_acc"] = float(sum(r["hits"] for r in scored)
                                         / sum(r["scored"] for r in scored))
        out["caption_n"] = len(scored)
    bounds = [r["boundary_ok"] for r in replans if r.get("boundary_ok") is not None]
    if bounds:
        out["boundary_acc"] = float(np.mean(bounds))
        out["boundary_n"] = len(bounds)
    return out


def best_match(pred_ids: np.ndarray, candidates: Sequence[np.ndarray]) -> dict[str, Any]:
    """A decoded caption int [L] against the ground truth's wordings (each int [L]): exact if
    it equals any; token hits and scored positions of the wording it matches best."""
    best = {"exact": False, "hits": 0, "scored": 0, "rate": -1.0}
    for true in candidates:
        exact, hits, scored = (int(x) for x in slot_hits(pred_ids, true))
        rate = hits / max(scored, 1)
        if bool(exact) or rate > best["rate"]:
            best = {"exact": bool(exact) or best["exact"], "hits": hits, "scored": scored,
                    "rate": rate}
        if best["exact"]:
            break
    best.pop("rate")
    return best
