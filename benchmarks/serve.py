"""Serving latency: p50/p99 per request of event and unified mode, in the same run, through
the websocket server (openpi protocol, msgpack-numpy) and in-process (`Policy.act`); also
unified mode with the old re-encoding decoder, to show what the KV-cache reuse buys; and
small event requests with and without another client sending the largest frame the server
accepts, over and over (alternating rounds, p99 ratio), to show one large request does not
stall the others.

    python benchmarks/serve.py                    # tiny model on CPU
    python benchmarks/serve.py --size small --requests 50
    python benchmarks/serve.py --only_concurrent --requests 100 --rounds 3

Weights are random (latency does not depend on them). Prints one JSON object and a one-line
summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

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
from wallwm_jax.serve import DEFAULT_MAX_MESSAGE_MB, packb, serve, unpackb, warm_up

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


@contextlib.contextmanager
def running_server(policy: Policy, mode: str, **limits: object) -> Iterator[int]:
    """A local server (a thread of this process) for the block; yields its port."""
    listening, port = threading.Event(), []
    loop = asyncio.new_event_loop()

    async def until_cancelled() -> None:
        try:
            await serve(policy, mode, "127.0.0.1", 0,
                        on_listen=lambda p: (port.append(p), listening.set()), **limits)
        except asyncio.CancelledError:
            pass  # the benchmark is done with this server

    task = loop.create_task(until_cancelled())
    thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
    thread.start()
    listening.wait(60)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


def round_trips(policy: Policy, port: int, requests: int) -> list[float]:
    """Seconds per request of one sync client sending `requests` small observations."""
    from websockets.sync.client import connect

    rng, times = np.random.default_rng(1), []
    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        unpackb(ws.recv())  # metadata
        for _ in range(requests):
            message = packb(observation(policy, rng))
            t0 = time.perf_counter()
            ws.send(message)
            reply = unpackb(ws.recv())
            times.append(time.perf_counter() - t0)
            assert np.all(np.isfinite(reply["actions"]))
    return times


def time_server(policy: Policy, mode: str, requests: int) -> dict[str, float]:
    """Round trips through a local server and a sync client (2 untimed)."""
    with running_server(policy, mode) as port:
        return percentiles(round_trips(policy, port, requests + 2)[2:])


# Its own process, so its packing and sending do not share this process's GIL: sends the
# frame in argv[2] (a file) and waits for each reply until argv[3] exists; prints the round
# trip seconds as JSON.
LARGE_CLIENT = r"""
import json, os, sys, time
from websockets.sync.client import connect
port, frame, stop = int(sys.argv[1]), open(sys.argv[2], "rb").read(), sys.argv[3]
times = []
with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
    ws.recv()
    while not os.path.exists(stop):
        t0 = time.perf_counter()
        ws.send(frame)
        reply = ws.recv()
        times.append(time.perf_counter() - t0)
        assert isinstance(reply, bytes), reply
        if len(times) == 1:
            open(stop + ".started", "w").close()
print(json.dumps(times))
"""


def largest_frame(policy: Policy, max_bytes: int) -> bytes:
    """The largest valid observation under `max_bytes`: one square frame as big as fits."""
    obs = observation(policy, np.random.default_rng(3))
    side = int(np.sqrt((max_bytes - len(packb(obs)) - 1024) / 3))
    obs[f"observation/{policy.cameras[0]}"] = np.random.default_rng(4).integers(
        0, 256, (side, side, 3), dtype=np.uint8)
    frame = packb(obs)
    assert len(frame) <= max_bytes
    return frame


def time_with_large_client(policy: Policy, requests: int, rounds: int,
                           max_mb: float) -> dict:
    """Small event requests alone vs while another client sends the largest frame allowed,
    alternating `rounds` times on one server; p99 ratio of with / alone."""
    max_bytes = int(max_mb * (1 << 20))
    alone, loaded, large = [], [], []
    with tempfile.TemporaryDirectory() as scratch, \
            running_server(policy, "event", max_message_bytes=max_bytes) as port:
        frame_path = os.path.join(scratch, "frame.msgpack")
        frame = largest_frame(policy, max_bytes)
        with open(frame_path, "wb") as f:
            f.write(frame)
        round_trips(policy, port, 2)  # untimed
        for r in range(rounds):
            alone += round_trips(policy, port, requests)
            stop = os.path.join(scratch, f"stop{r}")
            client = subprocess.Popen([sys.executable, "-c", LARGE_CLIENT, str(port),
                                       frame_path, stop], stdout=subprocess.PIPE, text=True)
            try:
                deadline = time.time() + 120
                while not os.path.exists(stop + ".started"):
                    assert client.poll() is None and time.time() < deadline, "large client"
                    time.sleep(0.01)
                loaded += round_trips(policy, port, requests)
                open(stop, "w").close()
                out, _ = client.communicate(timeout=120)
                large += json.loads(out)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
    a, b = percentiles(alone), percentiles(loaded)
    return {"large_frame_mb": round(len(frame) / (1 << 20), 2), "rounds": rounds,
            "alone": a, "with_large_client": b,
            "large_round_trip": percentiles(large),
            "p99_ratio": round(b["p99_ms"] / a["p99_ms"], 2),
            "p50_ratio": round(b["p50_ms"] / a["p50_ms"], 2)}


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
            if args.only_concurrent and mode != "event":
                continue
            policy = make_policy(args.size, mode, scratch)
            on_device = all(isinstance(x, jax.Array) for x in jax.tree.leaves(policy.params))
            compile_s = warm_up(policy, mode)
            if mode == "event":  # small requests with and without a large client
                report["event_with_large_client"] = time_with_large_client(
                    policy, args.requests, args.rounds, args.max_message_mb)
            if args.only_concurrent:
                continue
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
    c = report["event_with_large_client"]
    concurrent = (f"small event requests p99 {c['alone']['p99_ms']} ms alone, "
                  f"{c['with_large_client']['p99_ms']} ms beside a client sending "
                  f"{c['large_frame_mb']} MiB frames ({c['p99_ratio']}x)")
    if args.only_concurrent:
        print(f"serve {args.size} on {report['backend']}: {concurrent}")
        return
    e, u = report["event"], report["unified"]
    print(f"serve {args.size} on {report['backend']}: event p50 {e['server']['p50_ms']} ms "
          f"p99 {e['server']['p99_ms']} ms; unified p50 {u['server']['p50_ms']} ms p99 "
          f"{u['server']['p99_ms']} ms (unified decode p50 {u['decode_cached']['p50_ms']} ms "
          f"vs {u['decode_reencoding']['p50_ms']} ms re-encoding the prefix); {concurrent}")


if __name__ == "__main__":
    flags.DEFINE_string("size", "tiny", "Model size (experiments/pretrain.py sizes).")
    flags.DEFINE_integer("requests", 30, "Timed requests per mode (and per round).")
    flags.DEFINE_integer("rounds", 2, "Alternating rounds without / with the large client.")
    flags.DEFINE_float("max_message_mb", DEFAULT_MAX_MESSAGE_MB,
                       "The server's message limit; the large client's frame fills it.")
    flags.DEFINE_bool("only_concurrent", False, "Only the large-client rows.")
    cli.run(main)
