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
every decoded caption), `server_timing` {infer_ms}. A request the server refuses (a bad
observation naming the key, an undecodable frame, a request over the time limit) gets a
one-line text reply (openpi clients raise it) and the connection stays open; a frame over
the size limit closes the connection with code 1009. Flags are checked and the port bound
before the model loads; the model is compiled before the port accepts connections.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import logging
import os
import signal
import socket
import time
from typing import Any

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
    check the observation and resize its frames to the model's size, as `Policy.act` would."""
    frames, state, prompt, caption = parse_observation(policy, obs, mode)
    size = policy.io.image_size
    return {k: resize_frame(f, size) for k, f in frames.items()}, state, prompt, caption


def respond(policy: Policy, request: tuple, mode: str) -> dict[str, Any]:
    """A prepared request -> openpi-style reply dict (the model's turn: one at a time)."""
    frames, state, prompt, caption = request
    t0 = time.perf_counter()
    out = policy.act(frames, state, prompt, caption, mode=mode)
    reply: dict[str, Any] = {"actions": np.asarray(out["actions"], np.float32),
                             "duration": int(out["actions"].shape[0])}
    if mode == "unified":
        reply["captions"] = list(out["captions"])
        reply["caption"] = out["captions"][0] if out["captions"] else ""
    elif caption is not None:
        reply["caption"] = caption
    reply["server_timing"] = {"infer_ms": 1000 * (time.perf_counter() - t0)}
    return reply


def infer(policy: Policy, obs: Any, mode: str) -> dict[str, Any]:
    """One request in the caller's thread: observation dict -> openpi-style reply dict."""
    return respond(policy, prepare(policy, obs, mode), mode)


def warm_up(policy: Policy, mode: str) -> float:
    """Compile the model for `mode` on a blank observation; returns the seconds it took."""
    size = policy.io.image_size
    blank = {camera_key(c): np.zeros((size, size, 3), np.uint8) for c in policy.cameras}
    blank.update({"observation/state": np.zeros(policy.state_dim, np.float32),
                  "prompt": "warm up", "caption": "warm up"})
    t0 = time.perf_counter()
    infer(policy, blank, mode)
    return time.perf_counter() - t0


# -- server -------------------------------------------------------------------------------------
async def serve(policy: Policy, mode: str, host: str = "127.0.0.1", port: int = 0, *,
                sock: socket.socket | None = None,
                max_message_bytes: int = DEFAULT_MAX_MESSAGE_MB << 20,
                request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                on_listen: Any = None) -> None:
    """Serve until SIGTERM (then return) or cancelled, on `sock` (bound, not listening) or
    host:port; `on_listen(port)` once connections are accepted. Each connection's frames are
    received, decoded and checked on its own (event loop, worker threads); only the model call
    is serialised, on one model thread, so a large or slow request does not hold up the others'
    reading and checking."""
    from websockets.asyncio.server import serve as ws_serve
    from websockets.exceptions import ConnectionClosed

    meta = packb(metadata(policy, mode))
    model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
    loop = asyncio.get_running_loop()
    # SIGTERM (a scheduler, `kill`) closes the server and returns, through the event loop, so
    # the process never stops inside a request or a thread; only the main thread can hook it.
    stop = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        hooked = True
    except (RuntimeError, ValueError, NotImplementedError):
        hooked = False

    async def answer(message: bytes | str) -> bytes | str:
        try:
            async with asyncio.timeout(request_timeout_s):
                request = await asyncio.to_thread(
                    lambda: prepare(policy, decode(message), mode))
                # The model's turn; a request still queued when its time is up never runs.
                reply = await loop.run_in_executor(model_thread, respond, policy, request, mode)
            return packb(reply)
        except ObservationError as err:  # the client's mistake: say so, keep serving
            return f"bad observation: {err}"
        except MessageError as err:
            return f"bad message: {err}"
        except TimeoutError:
            return (f"request timed out: no reply within {request_timeout_s:g} s "
                    f"(--request_timeout_s); requests wait for the model one at a time")
        except Exception as err:  # noqa: BLE001 -- a server bug: one line out, traceback logged
            log.exception("request failed")
            return f"server error: {type(err).__name__}: {' '.join(str(err).split())[:200]}"

    async def handler(ws: Any) -> None:
        peer, pending = ":".join(map(str, ws.remote_address[:2])), False
        try:
            await ws.send(meta)
            async for message in ws:
                pending = True
                await ws.send(await answer(message))
                pending = False
        except ConnectionClosed as closed:  # gone mid-frame or mid-request: one line, no trace
            log.warning("client %s disconnected%s (%s)", peer,
                        " before its reply" if pending else "", closed)

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
        model_thread.shutdown(wait=False, cancel_futures=True)


# -- command line -------------------------------------------------------------------------------
def check_flags(policy_dir: str, port: int, mode: str | None, max_message_mb: float,
                request_timeout_s: float, embodiment: str | None = None) -> None:
    """Refuse flags the server cannot run with (UserError naming the flag), before the model
    loads: a port outside 0-65535, non-positive limits, an export directory that is missing or
    incomplete, a --mode the export cannot run."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: expected 0-65535 (0: any free port)")
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
                fl.embodiment)
    sock = bind(fl.host, fl.port)
    try:
        policy = load_policy(fl.policy, mode=fl.mode, seed=fl.seed, embodiment=fl.embodiment)
        mode = policy.mode
        seconds = warm_up(policy, mode)
        asyncio.run(serve(
            policy, mode, sock=sock, max_message_bytes=int(fl.max_message_mb * (1 << 20)),
            request_timeout_s=fl.request_timeout_s, on_listen=lambda port: print(
                f"wallwm_jax.serve: {fl.policy} in {mode} mode (compiled in {seconds:.1f}s), "
                f"listening on ws://{fl.host}:{port}", flush=True)))
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
    flags.mark_flags_as_required(["policy"])
    cli.run(main)
