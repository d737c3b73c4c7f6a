"""Serving latency: p50/p99 per request of event and unified mode, in the same run, through
the websocket server (openpi protocol, msgpack-numpy) and in-process (`Policy.act`), timed in
alternating rounds (event, unified, event, ...) so both see the same machine load; the
unified / event ratio per row. Also: unified mode with a caption still in effect (only the
next caption is decoded), the Staircase decoder alone vs the re-encoding reference, a batch
of requests decoded at once, and small event requests with and without another client
sending the largest frame the server accepts (alternating rounds, p99 ratio). Concurrent
clients (`--clients 1,4,8`): each client sends requests back to back to a batching server
(`--max_batch`) and to a one-at-a-time one (`max_batch 1`), alternating rounds; p50/p99 per
request, requests/s and the mean batch size, event and unified (worst case).

    python benchmarks/serve.py                    # tiny model on CPU
    python benchmarks/serve.py --size small --requests 3 --rounds 2 --batch 2 --noconcurrent \
        --client_requests 2
    python benchmarks/serve.py --only_concurrent --requests 100 --rounds 3
    python benchmarks/serve.py --only_clients --client_requests 10   # concurrent clients only

Weights are random. Latency depends on them in unified mode only through the caption
lengths: random weights never emit EOS, so every caption runs to `data.caption_len` tokens
and every chunk decodes both slots: the worst case, the `unified` rows. The `unified_typical`
rows run the same compiled program with decoding capped (`Policy.max_caption_tokens`) at
the median caption length of the dataset builders' captions (every MT50 task, phase and
train paraphrase, tokenized as a built dataset's tokenizer does: `typical_caption_tokens`),
as a trained model stopping at EOS would; still both slots per chunk. Prints one JSON
object and a one-line summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import flags

from experiments.pretrain import get_config
from wallwm_jax import cli
from wallwm_jax.data import captions
from wallwm_jax.data.statistics import compute_norm_stats
from wallwm_jax.data.tasks import MT50_TASKS
from wallwm_jax.data.tokenizer import Tokenizer, train_tokenizer
from wallwm_jax.models import wallwm
from wallwm_jax.models.decoding import staircase_decode_reference
from wallwm_jax.policy import Policy
from wallwm_jax.serve import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_MESSAGE_MB,
    packb,
    serve,
    unpackb,
    warm_up,
)

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


def typical_caption_tokens(caption_len: int, scratch: str) -> dict[str, float]:
    """Token lengths of the captions a dataset builder writes (every MT50 task, phase and
    train paraphrase), under the tokenizer it would train on them: median and p90 of the
    tokens decoding produces (EOS included, BOS not: the decode steps per caption)."""
    tokenizer = Tokenizer(train_tokenizer(captions.train_texts(MT50_TASKS),
                                          os.path.join(scratch, "mt50_tokenizer.model")))
    texts = [captions.template_caption(task, phase, variant=v) for task in MT50_TASKS
             for phase in captions.PHASE_TEMPLATES for v in range(captions.NUM_TRAIN)]
    steps = [int(np.sum(tokenizer.encode(t, caption_len) != 0)) - 1 for t in texts]
    return {"median": float(np.median(steps)), "p90": float(np.percentile(steps, 90)),
            "max": float(max(steps)), "captions": len(texts)}


@contextlib.contextmanager
def capped(policy: Policy, max_tokens: int) -> Iterator[None]:
    """`policy` decoding at most `max_tokens` per caption for the block (same program)."""
    before, policy.max_caption_tokens = policy.max_caption_tokens, max_tokens
    try:
        yield
    finally:
        policy.max_caption_tokens = before


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


def round_trips(policy: Policy, port: int, requests: int, caption: bool = True) -> list[float]:
    """Seconds per request of one sync client sending `requests` small observations (with
    or without a caption)."""
    from websockets.sync.client import connect

    rng, times = np.random.default_rng(1), []
    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        unpackb(ws.recv())  # metadata
        for _ in range(requests):
            obs = observation(policy, rng)
            if not caption:
                del obs["caption"]
            message = packb(obs)
            t0 = time.perf_counter()
            ws.send(message)
            reply = unpackb(ws.recv())
            times.append(time.perf_counter() - t0)
            assert np.all(np.isfinite(reply["actions"]))
    return times


def clients_at_once(policy: Policy, port: int, clients: int, requests: int,
                    caption: bool) -> tuple[list[float], float, list[int]]:
    """`clients` sync clients (threads), each connected first, then all sending `requests`
    observations back to back. Returns (seconds per request, wall seconds from the start to
    the last reply, the batch size each reply ran in)."""
    from websockets.sync.client import connect

    start = threading.Barrier(clients + 1)
    times: list[float] = []
    sizes: list[int] = []
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        messages = []
        for _ in range(requests):
            obs = observation(policy, rng)
            if not caption:
                del obs["caption"]
            messages.append(packb(obs))
        try:
            with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
                unpackb(ws.recv())  # metadata
                start.wait(120)
                for message in messages:
                    t0 = time.perf_counter()
                    ws.send(message)
                    reply = unpackb(ws.recv())
                    times.append(time.perf_counter() - t0)
                    sizes.append(int(reply["server_timing"]["batch_size"]))
                    assert np.all(np.isfinite(reply["actions"]))
        except BaseException as err:  # noqa: BLE001 -- re-raised in the caller's thread
            errors.append(err)
            start.abort()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait(120)
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return times, wall, sizes


def concurrent_clients(policies: dict[str, Policy], counts: list[int], requests: int,
                       rounds: int, max_batch: int) -> dict:
    """Per mode and client count: a batching server (`max_batch`) vs a one-at-a-time one,
    alternating rounds on servers that are both up; p50/p99 per request, requests/s, mean
    batch size; ratios batched / one at a time (p50: lower is better; requests/s: higher)."""
    out: dict = {}
    for mode, policy in policies.items():
        caption = mode == "event"
        with running_server(policy, mode, max_batch=max_batch) as batched, \
                running_server(policy, mode, max_batch=1) as single:
            ports = {"batched": batched, "max_batch_1": single}
            for port in ports.values():
                clients_at_once(policy, port, 1, 1, caption)  # untimed
            rows = {}
            for n in counts:
                times = {name: [] for name in ports}
                walls = {name: 0.0 for name in ports}
                sizes = {name: [] for name in ports}
                for _ in range(rounds):
                    for name, port in ports.items():
                        t, wall, size = clients_at_once(policy, port, n, requests, caption)
                        times[name] += t
                        walls[name] += wall
                        sizes[name] += size
                row = {name: {**percentiles(times[name]),
                              "requests_per_s": round(len(times[name]) / walls[name], 2),
                              "mean_batch": round(float(np.mean(sizes[name])), 2)}
                       for name in ports}
                b, one = row["batched"], row["max_batch_1"]
                row["batched_over_one_at_a_time"] = {
                    **ratio(b, one),
                    "requests_per_s": round(b["requests_per_s"] / one["requests_per_s"], 2)}
                rows[f"{n}_clients"] = row
            out[mode] = rows
    return out


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


def alternating(fns: dict[str, Callable[[], object]], requests: int,
                rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, `requests` calls per round, the functions taking
    turns round by round (each called once untimed first)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(requests):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def ratio(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {"p50": round(a["p50_ms"] / b["p50_ms"], 2), "p99": round(a["p99_ms"] / b["p99_ms"], 2)}


def in_process(policies: dict[str, Policy], requests: int, rounds: int, batch: int,
               typical: int, longest: int) -> dict:
    """`Policy.act` of event and unified mode (worst case, `typical` tokens per caption, and
    with a caption in effect), the jitted decoders alone (cached vs re-encoding) and `batch`
    requests decoded at once, in alternating rounds."""
    event, unified = policies["event"], policies["unified"]
    obs = observation(unified, np.random.default_rng(2))
    frames = {c: obs[f"observation/{c}"] for c in unified.cameras}
    state, prompt, caption = obs["observation/state"], obs["prompt"], obs["caption"]
    cfg, key = unified.config, jax.random.PRNGKey(0)
    worst = np.int32(unified.max_caption_tokens)
    ref = jax.jit(lambda p, o, r: staircase_decode_reference(
        unified.model_config, p, o, r, max_len=cfg.data.caption_len))
    x = unified.observation(frames, state, prompt)
    many = jax.tree.map(lambda a: np.repeat(a, batch, axis=0), x)
    many = many.replace(state=many.state + np.arange(batch, dtype=np.float32)[:, None])
    done = jax.block_until_ready

    def typical_act() -> object:
        with capped(unified, typical):
            return unified.act(frames, state, prompt)

    def longest_act() -> object:  # capped at the builders' longest caption
        with capped(unified, longest):
            return unified.act(frames, state, prompt)

    def one_token_act() -> object:  # the fixed part: prefix, 2 x 2 token steps, denoising
        with capped(unified, 1):
            return unified.act(frames, state, prompt)

    fns = {"event_act": lambda: event.act(frames, state, prompt, caption),
           "unified_act": lambda: unified.act(frames, state, prompt),
           "unified_typical_act": typical_act,
           "unified_1_token_act": one_token_act,
           "unified_longest_caption_act": longest_act,
           "unified_act_caption_in_effect": lambda: unified.act(frames, state, prompt,
                                                                in_effect=caption),
           "decode_cached": lambda: done(unified._decode(unified.params, x, key, worst)),
           "decode_reencoding": lambda: done(ref(unified.params, x, key)),
           f"decode_batch{batch}": lambda: done(unified._decode(unified.params, many, key,
                                                                worst))}
    times = alternating(fns, requests, rounds)
    times[f"decode_batch{batch}_per_request"] = [t / batch for t in times[f"decode_batch{batch}"]]
    out = {name: percentiles(t) for name, t in times.items()}
    out["unified_over_event"] = ratio(out["unified_act"], out["event_act"])
    out["unified_typical_over_event"] = ratio(out["unified_typical_act"], out["event_act"])
    out["unified_longest_caption_over_event"] = ratio(out["unified_longest_caption_act"],
                                                      out["event_act"])
    out["caption_in_effect_over_event"] = ratio(out["unified_act_caption_in_effect"],
                                                out["event_act"])
    # Where the worst case's time goes: `max_caption_tokens` 1 runs 2 token steps per caption
    # (BOS and one token), the worst case max + 1; two captions per chunk either way.
    steps = 2 * (int(worst) - 1)
    per_step = (out["unified_act"]["p50_ms"] - out["unified_1_token_act"]["p50_ms"]) / steps
    fixed = out["unified_1_token_act"]["p50_ms"] - 4 * per_step
    out["worst_case_split"] = {
        "token_step_ms": round(per_step, 2), "token_steps": 2 * (int(worst) + 1),
        "token_steps_ms": round(2 * (int(worst) + 1) * per_step, 1),
        "rest_ms": round(fixed, 1),
        "note": "from p50s: (worst - 1-token cap) / the token steps between them; rest = "
                "prefix encode, denoising and host work"}
    return out


def through_servers(policies: dict[str, Policy], requests: int, rounds: int,
                    typical: int) -> dict:
    """Round trips to an event and a unified server (both up), alternating rounds: event,
    unified (worst case), unified at `typical` tokens per caption (unified requests without
    a caption: the server's unified mode ignores one)."""
    unified = policies["unified"]
    worst = unified.max_caption_tokens
    with running_server(policies["event"], "event") as event_port, \
            running_server(unified, "unified") as unified_port:
        fns = {"event": (policies["event"], event_port, True, None),
               "unified": (unified, unified_port, False, worst),
               "unified_typical": (unified, unified_port, False, typical)}
        times: dict[str, list[float]] = {name: [] for name in fns}
        for policy, port, caption, _ in fns.values():
            round_trips(policy, port, 2, caption)  # untimed
        for _ in range(rounds):
            for name, (policy, port, caption, cap) in fns.items():
                # Set between rounds, while no request is in flight (the client is sync).
                with capped(unified, worst if cap is None else cap):
                    times[name] += round_trips(policy, port, requests, caption)
    out = {name: percentiles(t) for name, t in times.items()}
    out["unified_over_event"] = ratio(out["unified"], out["event"])
    out["unified_typical_over_event"] = ratio(out["unified_typical"], out["event"])
    return out


def main(argv: list[str]) -> None:
    del argv
    args = flags.FLAGS
    report = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
              "size": args.size, "requests": args.requests, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as scratch:
        modes = ("event",) if args.only_concurrent else ("event", "unified")
        policies = {mode: make_policy(args.size, mode, scratch) for mode in modes}
        counts = [int(n) for n in args.clients] if not args.only_concurrent else []
        for mode, policy in policies.items():
            on_device = all(isinstance(x, jax.Array) for x in jax.tree.leaves(policy.params))
            report[mode] = {"params_on_device": on_device,
                            "compile_s": round(warm_up(policy, mode), 2)}
            if counts:
                report[mode]["compile_batches_s"] = round(
                    warm_up(policy, mode, args.max_batch), 2)
        if counts:
            report["clients"] = concurrent_clients(policies, counts, args.client_requests,
                                                   args.rounds, args.max_batch)
            report["clients"]["note"] = (
                f"each client sends {args.client_requests} requests back to back per round; "
                f"batched: max_batch {args.max_batch}, batch_wait_ms "
                f"{DEFAULT_BATCH_WAIT_MS:g}; unified at the worst case")
        if args.only_clients:
            print(json.dumps(report, indent=1))
            print(f"serve {args.size} on {report['backend']}: " + clients_summary(report))
            return
        if args.concurrent:
            report["event_with_large_client"] = time_with_large_client(
                policies["event"], args.requests, args.rounds, args.max_message_mb)
        if not args.only_concurrent:
            lengths = typical_caption_tokens(policies["unified"].config.data.caption_len,
                                             scratch)
            typical = int(lengths["median"])
            report["caption_tokens"] = {
                "worst_case": policies["unified"].max_caption_tokens, "typical": typical,
                "builder_captions": lengths,
                "note": "decoded tokens per caption, EOS included; random weights never emit "
                        "EOS (worst case); typical = decoding capped at the median of the "
                        "builders' captions, same compiled program; 2 captions per chunk"}
            report["server"] = through_servers(policies, args.requests, args.rounds, typical)
            report["act"] = in_process(policies, args.requests, args.rounds, args.batch,
                                       typical, int(lengths["max"]))
    print(json.dumps(report, indent=1))
    c = report.get("event_with_large_client")
    concurrent = (f"small event requests p99 {c['alone']['p99_ms']} ms alone, "
                  f"{c['with_large_client']['p99_ms']} ms beside a client sending "
                  f"{c['large_frame_mb']} MiB frames ({c['p99_ratio']}x)") if c else \
        "large-client rows skipped"
    if args.only_concurrent:
        print(f"serve {args.size} on {report['backend']}: {concurrent}")
        return
    s, a = report["server"], report["act"]
    t = s["unified_typical"]
    print(f"serve {args.size} on {report['backend']}: server event p50 {s['event']['p50_ms']} "
          f"ms p99 {s['event']['p99_ms']} ms, unified p50 {s['unified']['p50_ms']} ms p99 "
          f"{s['unified']['p99_ms']} ms ({s['unified_over_event']['p50']}x / "
          f"{s['unified_over_event']['p99']}x), unified at "
          f"{report['caption_tokens']['typical']} tokens per caption p50 {t['p50_ms']} ms p99 "
          f"{t['p99_ms']} ms ({s['unified_typical_over_event']['p50']}x / "
          f"{s['unified_typical_over_event']['p99']}x); act unified/event "
          f"{a['unified_over_event']['p50']}x p50, {a['unified_over_event']['p99']}x p99, with "
          f"a caption in effect {a['caption_in_effect_over_event']['p50']}x p50, capped at the "
          f"longest builder caption ({int(report['caption_tokens']['builder_captions']['max'])} "
          f"tokens) {a['unified_longest_caption_over_event']['p50']}x p50; worst case: "
          f"{a['worst_case_split']['token_steps']} token steps of "
          f"{a['worst_case_split']['token_step_ms']} ms + {a['worst_case_split']['rest_ms']} ms "
          f"rest; unified decode "
          f"p50 {a['decode_cached']['p50_ms']} ms vs {a['decode_reencoding']['p50_ms']} ms "
          f"re-encoding, {a[f'decode_batch{args.batch}_per_request']['p50_ms']} ms per request "
          f"in a batch of {args.batch}; {concurrent}"
          + (f"; {clients_summary(report)}" if "clients" in report else ""))


def clients_summary(report: dict) -> str:
    """One line of the concurrent-client rows: per mode and count, p50 and requests/s of the
    batching server over the one-at-a-time one."""
    parts = []
    for mode in ("event", "unified"):
        for rows, row in report["clients"].get(mode, {}).items():
            r = row["batched_over_one_at_a_time"]
            parts.append(f"{mode} {rows.replace('_', ' ')}: batched p50 "
                         f"{row['batched']['p50_ms']} ms vs {row['max_batch_1']['p50_ms']} ms "
                         f"({r['p50']}x), {row['batched']['requests_per_s']} vs "
                         f"{row['max_batch_1']['requests_per_s']} req/s ({r['requests_per_s']}x)")
    return "; ".join(parts)


if __name__ == "__main__":
    flags.DEFINE_string("size", "tiny", "Model size (experiments/pretrain.py sizes).")
    flags.DEFINE_integer("requests", 30, "Timed requests per row and round.")
    flags.DEFINE_integer("rounds", 2, "Alternating rounds (event / unified; without / with "
                         "the large client).")
    flags.DEFINE_integer("batch", 4, "Requests decoded at once in the batched unified row.")
    flags.DEFINE_float("max_message_mb", DEFAULT_MAX_MESSAGE_MB,
                       "The server's message limit; the large client's frame fills it.")
    flags.DEFINE_bool("only_concurrent", False, "Only the large-client rows.")
    flags.DEFINE_bool("concurrent", True, "The large-client rows (--noconcurrent: skip them).")
    flags.DEFINE_list("clients", ["1", "4", "8"], "Concurrent-client counts (empty: skip).")
    flags.DEFINE_integer("client_requests", 5, "Requests per concurrent client and round.")
    flags.DEFINE_integer("max_batch", 8, "The batching server's --max_batch.")
    flags.DEFINE_bool("only_clients", False, "Only the concurrent-client rows.")
    cli.run(main)
