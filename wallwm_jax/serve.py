"""Policy server speaking openpi's websocket protocol, so `openpi_client`'s
`WebsocketClientPolicy(host, port).infer(obs)` drives an export (docs/deploy.md).

    python -m wallwm_jax.serve --policy EXPORT --port 8000 [--mode event|unified|chunk]
        [--embodiment NAME]

Protocol (openpi's): on connect the server sends its metadata; then each binary message is a
msgpack-numpy observation and the reply a msgpack-numpy dict. Observation keys:
`observation/image` (uint8 [H, W, 3], any size: resized), `observation/image_<camera>` for
further cameras, `observation/state` (finite float [S], raw units), `prompt` (the
instruction) and, in event mode, `caption` (the next event's description). Reply: `actions`
float32 [n, A] in raw units (for a model trained with `data.action_target_gain` g, position
targets: the metadata says `action_space` "position_targets" and `action_target_gain` g, and
the client executes g * (target - hand) with the hand of each step), `duration` (n),
`caption` (unified: the first decoded caption; event: the one given), `captions` (unified:
every decoded caption), `server_timing` {infer_ms, batch_size}. A request the server refuses (a bad
observation naming the key, an undecodable frame, a request over the time limit) gets a
one-line text reply (openpi clients raise it) and the connection stays open; a frame over
the size limit closes the connection with code 1009. Flags are checked and the port bound
before the model loads; the model is compiled before the port accepts connections.

Requests that arrive together (those that queued while the model was busy, and those that
arrive within --batch_wait_ms of the first while another could still come; up to --max_batch)
run as one batched model call, padded to a power-of-two size (1, 2, 4, ... --max_batch: one compiled
program each, all compiled at start). A request's sampling noise comes from its own key
(`request_key`: the seed, its connection's number and its number on that connection), so a
client gets the same actions whatever else was batched with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import http
import itertools
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import jax
import numpy as np

from wallwm_jax.bundle import REQUIRED, read_config
from wallwm_jax.cli import UserError
from wallwm_jax.data.embodiment import read_embodiments
from wallwm_jax.data.transforms import camera_key, resize_frame
from wallwm_jax.export import runnable_modes
from wallwm_jax.policy import Policy, load_policy
from wallwm_jax.serve_messages import (  # noqa: F401 -- re-exported for clients and tests
    MessageError,
    ObservationError,
    decode,
    packb,
    parse_observation,
    unpackb,
)

DEFAULT_MAX_MESSAGE_MB = 16  # a 2048 x 2048 RGB frame fits, with room for a second camera
DEFAULT_REQUEST_TIMEOUT_S = 60.0  # the small model's unified p99 on a 2-core CPU is ~32 s
DEFAULT_MAX_BATCH = 8
# The longest the first request of a batch waits for others (only while another client could
# still send one: a lone client never waits).
DEFAULT_BATCH_WAIT_MS = 5.0
log = logging.getLogger(__name__)


# -- observation <-> policy ---------------------------------------------------------------------
def metadata(policy: Policy, mode: str) -> dict[str, Any]:
    """What a client needs to build observations (sent on connect)."""
    size = policy.io.image_size
    keys = {camera_key(c): [size, size, 3] for c in policy.cameras}
    keys["observation/state"] = [policy.state_dim]
    return {"server": "wallwm_jax", "mode": mode, "modes": list(policy.modes),
            "observation_keys": keys, "image_size": size, "action_dim": policy.action_dim,
            "max_actions": int(policy.config.data.max_event_len),
            "needs_caption": mode == "event", "action_space": policy.action_space,
            "action_target_gain": policy.io.target_gain,
            "embodiment": None if policy.embodiment is None else policy.embodiment.name,
            "embodiments": {name: {"action_dim": e.action_dim, "state_dim": e.state_dim,
                                   "cameras": list(e.cameras)}
                            for name, e in policy.embodiments.items()}}


def prepare(policy: Policy, obs: Any, mode: str) -> tuple:
    """A request's work that needs no model (the server runs it outside the model's turn):
    check the observation, resize its frames to the model's size and build its batch-of-one
    model input (`Policy.observation`). Returns (model input, caption or None)."""
    frames, state, prompt, caption = parse_observation(policy, obs, mode)
    size = policy.io.image_size
    frames = {k: resize_frame(f, size) for k, f in frames.items()}
    return policy.observation(frames, state, prompt, caption, mode=mode), caption


def request_key(seed: int, connection: int, number: int) -> np.ndarray:
    """The sampling key of request `number` (0, 1, ...) on connection `connection` (in the
    order the server accepted them) of a server started with `seed`: a client's noise does
    not depend on other clients or on how requests were batched."""
    try:  # a few bytes: on the host, not the accelerator (when JAX has its CPU backend)
        host = jax.default_device(jax.devices("cpu")[0])
    except RuntimeError:  # JAX_PLATFORMS without cpu
        host = contextlib.nullcontext()
    with host:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), connection)
        return np.asarray(jax.random.fold_in(key, number))


def batch_sizes(max_batch: int) -> list[int]:
    """The padded batch sizes a server with `max_batch` runs: 1, 2, 4, ... and max_batch."""
    sizes = [1 << i for i in range(max(max_batch, 1).bit_length()) if 1 << i < max_batch]
    return sizes + [max_batch]


def respond_batch(policy: Policy, requests: list[tuple], mode: str, keys: list[Any] | None = None,
                  pad_to: int | None = None) -> list[dict[str, Any]]:
    """Prepared requests -> their openpi-style reply dicts, from one model call (the model's
    turn: one batch at a time); `keys` one per request (default: the policy's next keys),
    the batch padded to `pad_to` rows."""
    t0 = time.perf_counter()
    outs = policy.act_batch([obs for obs, _ in requests], mode=mode, rngs=keys, pad_to=pad_to)
    timing = {"infer_ms": 1000 * (time.perf_counter() - t0), "batch_size": len(requests)}
    replies = []
    for (_, caption), out in zip(requests, outs, strict=True):
        reply: dict[str, Any] = {"actions": np.asarray(out["actions"], np.float32),
                                 "duration": int(out["actions"].shape[0])}
        if mode == "unified":
            reply["captions"] = list(out["captions"])
            reply["caption"] = out["captions"][0] if out["captions"] else ""
        elif caption is not None:
            reply["caption"] = caption
        reply["server_timing"] = dict(timing)
        replies.append(reply)
    return replies


def respond(policy: Policy, request: tuple, mode: str) -> dict[str, Any]:
    """A prepared request -> openpi-style reply dict (a batch of one)."""
    return respond_batch(policy, [request], mode)[0]


def infer(policy: Policy, obs: Any, mode: str) -> dict[str, Any]:
    """One request in the caller's thread: observation dict -> openpi-style reply dict."""
    return respond(policy, prepare(policy, obs, mode), mode)


def warm_up(policy: Policy, mode: str, max_batch: int = 1) -> float:
    """Compile the model for `mode` at every padded batch size up to `max_batch`
    (`batch_sizes`) on a blank observation; returns the seconds it took."""
    size = policy.io.image_size
    blank = {camera_key(c): np.zeros((size, size, 3), np.uint8) for c in policy.cameras}
    blank.update({"observation/state": np.zeros(policy.state_dim, np.float32),
                  "prompt": "warm up", "caption": "warm up"})
    t0 = time.perf_counter()
    request = prepare(policy, blank, mode)
    request_key(policy.seed, 0, 0)  # its own small CPU programs
    for rows in batch_sizes(max_batch):
        respond_batch(policy, [request], mode, pad_to=rows)
    return time.perf_counter() - t0


@dataclasses.dataclass
class _Pending:
    """A checked request waiting for the model: its input, key and the future its answer
    awaits (cancelled when the request's time is up: it is then dropped, never run)."""

    request: tuple
    key: Any
    future: asyncio.Future
    arrived: float

    def signature(self) -> tuple:
        """What must match for requests to stack: the input's structure, shapes, dtypes."""
        leaves, tree = jax.tree.flatten(self.request[0])
        return tree, tuple((np.shape(x), np.asarray(x).dtype.str) for x in leaves)


# -- timeouts ----------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def deadline(seconds: float):
    """`asyncio.timeout(seconds)` for Python 3.10: cancel the running task when the time is up
    and raise the builtin TimeoutError. No task is created (`asyncio.wait_for` would add one,
    and a request in its hand-over would count neither as being checked nor as queued, so the
    batcher would close a batch early); a cancellation from elsewhere stays a cancellation."""
    task = asyncio.current_task()
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(max(seconds, 0.0), fire)
    try:
        yield
    except asyncio.CancelledError:
        if fired:
            raise TimeoutError from None
        raise
    finally:
        handle.cancel()


# Python 3.11+ has it; setup.py allows 3.10.
timeout = asyncio.timeout if sys.version_info >= (3, 11) else deadline


# -- server -------------------------------------------------------------------------------------
async def serve(policy: Policy, mode: str, host: str = "127.0.0.1", port: int = 0, *,
                sock: socket.socket | None = None,
                max_message_bytes: int = DEFAULT_MAX_MESSAGE_MB << 20,
                request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                max_batch: int = DEFAULT_MAX_BATCH,
                batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
                on_listen: Any = None) -> None:
    """Serve until SIGTERM (then return) or cancelled, on `sock` (bound, not listening) or
    host:port; `on_listen(port)` once connections are accepted. Each connection's frames are
    received, decoded and checked on its own (event loop, worker threads); only the model call
    is serialised, on one model thread, so a large or slow request does not hold up the others'
    reading and checking. Checked requests queue for the model; each model call takes those
    that queued while the model was busy and those that arrive within `batch_wait_ms` of the
    first, up to `max_batch`, stacked and padded to a `batch_sizes` size. It waits for more
    only while one could still come: a request being checked, or a connection with none
    outstanding (a connection sends its next request after its reply), so a lone client
    never waits."""
    from websockets.asyncio.server import serve as ws_serve
    from websockets.exceptions import ConnectionClosed

    meta = packb(metadata(policy, mode))
    model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Pending] = asyncio.Queue()
    sizes, connections = batch_sizes(max_batch), itertools.count()
    # Connections open, requests received and not yet answered, requests being checked; the
    # batcher wakes on every change.
    counts, changed = {"open": 0, "outstanding": 0, "preparing": 0}, asyncio.Event()

    def note(name: str, delta: int) -> None:
        counts[name] += delta
        changed.set()

    def more_may_come() -> bool:
        return counts["preparing"] > 0 or counts["open"] > counts["outstanding"]

    async def run(group: list[_Pending]) -> None:
        """One model call for `group` (same signature); each future gets its reply, or the
        call's exception."""
        rows = next(n for n in sizes if n >= len(group))
        try:
            replies = await loop.run_in_executor(
                model_thread, respond_batch, policy, [p.request for p in group], mode,
                [p.key for p in group], rows)
        except Exception as err:  # noqa: BLE001 -- every request of the call says so
            replies = [err] * len(group)
        for pending, reply in zip(group, replies, strict=True):
            if pending.future.done():  # timed out or disconnected meanwhile
                continue
            if isinstance(reply, Exception):
                pending.future.set_exception(reply)
            else:
                pending.future.set_result(reply)

    async def batcher() -> None:
        """Forever: wait for a request, gather the batch, run it (one batch at a time)."""
        while True:
            batch = [await queue.get()]
            window_end = batch[0].arrived + batch_wait_ms / 1000
            while len(batch) < max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = window_end - loop.time()
                if left <= 0 or not more_may_come():
                    break
                changed.clear()
                try:
                    async with timeout(left):
                        await changed.wait()
                except TimeoutError:
                    break
            groups: dict[tuple, list[_Pending]] = {}
            for pending in batch:
                if not pending.future.done():  # a request whose time is up never runs
                    groups.setdefault(pending.signature(), []).append(pending)
            for group in groups.values():
                await run(group)

    batching = loop.create_task(batcher())
    # SIGTERM (a scheduler, `kill`) closes the server and returns, through the event loop, so
    # the process never stops inside a request or a thread; only the main thread can hook it.
    stop = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        hooked = True
    except (RuntimeError, ValueError, NotImplementedError):
        hooked = False

    async def answer(message: bytes | str, connection: int, number: int) -> bytes | str:
        try:
            async with timeout(request_timeout_s):
                note("preparing", 1)
                try:
                    request, key = await asyncio.to_thread(lambda: (
                        prepare(policy, decode(message), mode),
                        request_key(policy.seed, connection, number)))
                finally:
                    note("preparing", -1)
                # The model's turn; a request still queued when its time is up never runs.
                future = loop.create_future()
                queue.put_nowait(_Pending(request, key, future, loop.time()))
                reply = await future
            return packb(reply)
        except ObservationError as err:  # the client's mistake: say so, keep serving
            return f"bad observation: {err}"
        except MessageError as err:
            return f"bad message: {err}"
        except TimeoutError:
            return (f"request timed out: no reply within {request_timeout_s:g} s "
                    f"(--request_timeout_s); requests wait for the model's turn")
        except Exception as err:  # noqa: BLE001 -- a server bug: one line out, traceback logged
            log.exception("request failed")
            return f"server error: {type(err).__name__}: {' '.join(str(err).split())[:200]}"

    async def handler(ws: Any) -> None:
        peer, pending = ":".join(map(str, ws.remote_address[:2])), False
        connection, number = next(connections), 0
        note("open", 1)
        try:
            await ws.send(meta)
            async for message in ws:
                pending = True
                note("outstanding", 1)
                try:
                    reply = await answer(message, connection, number)
                finally:
                    note("outstanding", -1)
                await ws.send(reply)
                number, pending = number + 1, False
        except ConnectionClosed as closed:  # gone mid-frame or mid-request: one line, no trace
            log.warning("client %s disconnected%s (%s)", peer,
                        " before its reply" if pending else "", closed)
        finally:
            note("open", -1)

    def health(connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    where = {"sock": sock} if sock is not None else {"host": host, "port": port}
    try:
        async with ws_serve(handler, compression=None, max_size=max_message_bytes,
                            process_request=health, **where) as server:
            if on_listen is not None:
                on_listen(server.sockets[0].getsockname()[1])
            await stop.wait()  # serving until SIGTERM or cancelled
    finally:
        if hooked:
            loop.remove_signal_handler(signal.SIGTERM)
        batching.cancel()
        model_thread.shutdown(wait=False, cancel_futures=True)



# -- command line -------------------------------------------------------------------------------
def check_flags(policy_dir: str, port: int, mode: str | None, max_message_mb: float,
                request_timeout_s: float, embodiment: str | None = None,
                max_batch: int = DEFAULT_MAX_BATCH,
                batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
                max_caption_tokens: int = 0) -> None:
    """Refuse flags the server cannot run with (UserError naming the flag), before the model
    loads: a port outside 0-65535, non-positive limits, a batch size under 1 or a negative
    batch wait, an export directory that is missing or incomplete, a --mode the export cannot
    run."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: expected 0-65535 (0: any free port)")
    if max_batch < 1:
        raise UserError(f"--max_batch {max_batch}: expected requests per model call >= 1")
    if not batch_wait_ms >= 0:
        raise UserError(f"--batch_wait_ms {batch_wait_ms:g}: expected milliseconds >= 0")
    if max_caption_tokens < 0:
        raise UserError(f"--max_caption_tokens {max_caption_tokens}: expected tokens per "
                        f"caption >= 1 (0: the model's caption length)")
    if not max_message_mb > 0:
        raise UserError(f"--max_message_mb {max_message_mb:g}: expected a size > 0 (MiB)")
    if not request_timeout_s > 0:
        raise UserError(f"--request_timeout_s {request_timeout_s:g}: expected seconds > 0")
    if not os.path.isdir(policy_dir):
        raise UserError(f"--policy {policy_dir}: no such directory (an export bundle from "
                        f"`python -m wallwm_jax.export`)")
    missing = [n for n in REQUIRED if not os.path.isfile(os.path.join(policy_dir, n))]
    if missing:
        raise UserError(f"--policy {policy_dir} is missing {', '.join(missing)} (an export "
                        f"holds {', '.join(REQUIRED)})")
    try:
        modes = runnable_modes(read_config(policy_dir))
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise UserError(f"--policy {policy_dir}: config.json is not a training config "
                        f"({type(err).__name__}: {err})") from None
    if mode is not None and mode not in modes:
        raise UserError(f"--mode {mode}: this export can run {', '.join(modes)}")
    longest = int(read_config(policy_dir).data.caption_len) - 1
    if max_caption_tokens > longest:
        raise UserError(f"--max_caption_tokens {max_caption_tokens}: this export decodes at "
                        f"most {longest} tokens per caption (data.caption_len - 1)")
    if embodiment is not None:
        try:
            known = read_embodiments(policy_dir)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"--policy {policy_dir}: embodiments.json is unreadable "
                            f"({type(err).__name__}: {err})") from None
        if embodiment not in known:
            raise UserError(f"--embodiment {embodiment}: this export knows "
                            + (", ".join(known) if known else "no embodiments (it predates "
                               "embodiments.json; leave --embodiment out)"))


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port but not yet listening (clients are refused until the model
    is compiled); UserError when the address cannot be used."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise UserError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there "
                        f"({err.strerror})") from None
    return sock


def main(argv: list[str]) -> None:
    """Check the flags and bind the port, then load the export, compile, and serve on
    --host:--port until interrupted."""
    from absl import flags

    from wallwm_jax import cli

    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    fl = flags.FLAGS
    check_flags(fl.policy, fl.port, fl.mode, fl.max_message_mb, fl.request_timeout_s,
                fl.embodiment, fl.max_batch, fl.batch_wait_ms, fl.max_caption_tokens)
    sock = bind(fl.host, fl.port)
    try:
        policy = load_policy(fl.policy, mode=fl.mode, seed=fl.seed, embodiment=fl.embodiment)
        mode = policy.mode
        if fl.max_caption_tokens:  # a traced argument: the compiled program is the same
            policy.max_caption_tokens = fl.max_caption_tokens
        seconds = warm_up(policy, mode, fl.max_batch)
        sizes = ", ".join(map(str, batch_sizes(fl.max_batch)))
        asyncio.run(serve(
            policy, mode, sock=sock, max_message_bytes=int(fl.max_message_mb * (1 << 20)),
            request_timeout_s=fl.request_timeout_s, max_batch=fl.max_batch,
            batch_wait_ms=fl.batch_wait_ms, on_listen=lambda port: print(
                f"wallwm_jax.serve: {fl.policy} in {mode} mode (compiled batches of {sizes} "
                f"in {seconds:.1f}s), listening on ws://{fl.host}:{port}", flush=True)))
        print("wallwm_jax.serve: stopped (SIGTERM)", flush=True)
    finally:
        sock.close()


if __name__ == "__main__":
    from absl import flags

    from wallwm_jax import cli

    flags.DEFINE_string("policy", None, "Export bundle directory.")
    flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port, printed).")
    flags.DEFINE_string("host", "0.0.0.0", "Address to listen on.")
    flags.DEFINE_enum("mode", None, ["event", "unified", "chunk"],
                      "Inference mode (default: the mode the export was trained in).")
    flags.DEFINE_integer("seed", 0, "Sampling noise seed.")
    flags.DEFINE_string("embodiment", None, "Robot to serve, a name in the export's "
                        "embodiments.json (default: the first it was trained on).")
    flags.DEFINE_float("max_message_mb", DEFAULT_MAX_MESSAGE_MB,
                       "Largest request accepted, in MiB; a larger frame closes the "
                       "connection with code 1009.")
    flags.DEFINE_float("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S,
                       "Seconds a request may take, waiting for the model included; then the "
                       "client gets an error reply.")
    flags.DEFINE_integer("max_batch", DEFAULT_MAX_BATCH,
                         "Most requests run in one model call (1: one at a time); batches are "
                         "padded to 1, 2, 4, ... max_batch rows, each size compiled at start.")
    flags.DEFINE_float("batch_wait_ms", DEFAULT_BATCH_WAIT_MS,
                       "The longest a request waits for others to batch with it (ms), while "
                       "another client could still send one (a lone client never waits).")
    flags.DEFINE_integer("max_caption_tokens", 0,
                         "Unified mode: at most this many tokens decoded per caption, a "
                         "latency bound (e.g. the training data's longest caption; a caption "
                         "cut there has no EOS). 0: data.caption_len - 1.")
    flags.mark_flags_as_required(["policy"])
    cli.run(main)
