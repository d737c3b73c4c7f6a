"""Serving latency: p50/p99 per request of event and unified mode, in the same run, through
the websocket server (openpi protocol, msgpack-numpy) and in-process (`Policy.act`); also
unified mode with the old re-encoding decoder, to show what the KV-cache reuse buys.

    python benchmarks/serve.py                    # tiny model on CPU
    python benchmarks/serve.py --size small --requests 50

Weights are random (latency does not depend on them). Prints one JSON object and a one-line
summary.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import tempfile
import threading
import time

import jax
import numpy as np
from absl import flags

from experiments.pretrain import get_config
from wallwm_jax import cli
from wallwm_jax.data.statistics import compute_norm_stats
from wallwm_jax.data.tokenizer import train_tokenizer
from wallwm_jax.models import wallwm
from wallwm_jax.models.decoding import staircase_decode_reference
from wallwm_jax.policy import Policy
from wallwm_jax.serve import packb, serve, unpackb, warm_up

TEXTS = ["reach the goal", "push the puck to the goal", "move the gripper to the puck",
         "close the gripper", "lift the puck", "open the gripper", "move the gripper up"]


def make_policy(size: str, mode: str, scratch: str) -> Policy:
    """A policy with random weights of `size`, trained in `mode` (dataset-free)."""
    config = get_config(f"size={size},mode={mode}")
    tokenizer = train_tokenizer(TEXTS * 20, os.path.join(scratch, "tokenizer.model"),
                                vocab_size=64)
    rng = np.random.default_rng(0)
    stats = compute_norm_stats({"state": rng.normal(size=(64, config.model.state_dim)),
                                "action": rng.normal(size=(64, config.model.action_dim))})
    params = wallwm.init_params(config.model, jax.random.PRNGKey(0))
    return Policy(params, config, stats, tokenizer, mode=mode)


def observation(policy: Policy, rng: np.random.Generator) -> dict:
    size = policy.io.image_size
    obs = {f"observation/{c}": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
           for c in policy.cameras}
    obs.update({"observation/state": rng.normal(size=policy.state_dim).astype(np.float32),
                "prompt": "push the puck to the goal", "caption": "move the gripper to the puck"})
    return obs


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "n": len(ms)}


def time_server(policy: Policy, mode: str, requests: int) -> dict[str, float]:
    """Round trips through a local server (a thread of this process) and a sync client."""
    from websockets.sync.client import connect

    listening = threading.Event()
    loop = asyncio.new_event_loop()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async def until_cancelled() -> None:
        try:
            await serve(policy, mode, "127.0.0.1", port, on_listen=listening.set)
        except asyncio.CancelledError:
            pass  # the benchmark is done with this server

    task = loop.create_task(until_cancelled())
    thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
    thread.start()
    listening.wait(60)
    rng, times = np.random.default_rng(1), []
    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        unpackb(ws.recv())  # metadata
        for _ in range(requests + 2):
            message = packb(observation(policy, rng))
            t0 = time.perf_counter()
            ws.send(message)
            reply = unpackb(ws.recv())
            times.append(time.perf_counter() - t0)
            assert np.all(np.isfinite(reply["actions"]))
    loop.call_soon_threadsafe(task.cancel)
    thread.join(10)
    return percentiles(times[2:])


def time_act(fn, requests: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def time_decoders(policy: Policy, obs, requests: int) -> dict[str, dict[str, float]]:
    """Unified inference alone (no pre/post-processing): the KV-cached `staircase_decode`
    the policy runs vs `staircase_decode_reference`, which re-encodes the prefix."""
    cfg, key = policy.config, jax.random.PRNGKey(0)
    ref = jax.jit(lambda p, o, r: staircase_decode_reference(
        cfg.model, p, o, r, max_len=cfg.data.caption_len))
    return {name: time_act(lambda f=fn: jax.block_until_ready(f(policy.params, obs, key)),
                           requests)
            for name, fn in (("decode_cached", policy._decode), ("decode_reencoding", ref))}


def main(argv: list[str]) -> None:
    del argv
    args = flags.FLAGS
    report = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
              "size": args.size, "requests": args.requests}
    with tempfile.TemporaryDirectory() as scratch:
        for mode in ("event", "unified"):
            policy = make_policy(args.size, mode, scratch)
            on_device = all(isinstance(x, jax.Array) for x in jax.tree.leaves(policy.params))
            compile_s = warm_up(policy, mode)
            obs = observation(policy, np.random.default_rng(2))
            frames = {c: obs[f"observation/{c}"] for c in policy.cameras}
            act = functools.partial(policy.act, frames, obs["observation/state"],
                                    obs["prompt"], obs["caption"])
            row = {"params_on_device": on_device, "compile_s": round(compile_s, 2),
                   "server": time_server(policy, mode, args.requests),
                   "act": time_act(act, args.requests)}
            if mode == "unified":  # the jitted decoder alone, vs the re-encoding one
                row.update(time_decoders(policy, policy.observation(
                    frames, obs["observation/state"], obs["prompt"]), args.requests))
            report[mode] = row
    print(json.dumps(report, indent=1))
    e, u = report["event"], report["unified"]
    print(f"serve {args.size} on {report['backend']}: event p50 {e['server']['p50_ms']} ms "
          f"p99 {e['server']['p99_ms']} ms; unified p50 {u['server']['p50_ms']} ms p99 "
          f"{u['server']['p99_ms']} ms (unified decode p50 {u['decode_cached']['p50_ms']} ms "
          f"vs {u['decode_reencoding']['p50_ms']} ms re-encoding the prefix)")


if __name__ == "__main__":
    flags.DEFINE_string("size", "tiny", "Model size (experiments/pretrain.py sizes).")
    flags.DEFINE_integer("requests", 30, "Timed requests per mode.")
    cli.run(main)
