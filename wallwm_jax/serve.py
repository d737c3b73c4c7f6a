"""Policy server speaking openpi's websocket protocol, so `openpi_client`'s
`WebsocketClientPolicy(host, port).infer(obs)` drives an export (docs/deploy.md).

    python -m wallwm_jax.serve --policy EXPORT --port 8000 [--mode event|unified|chunk]

Protocol (openpi's): on connect the server sends its metadata; then each binary message is a
msgpack-numpy observation and the reply a msgpack-numpy dict. Observation keys:
`observation/image` (uint8 [H, W, 3], any size: resized), `observation/image_<camera>` for
further cameras, `observation/state` (float [S], raw units), `prompt` (the instruction) and,
in event mode, `caption` (the next event's description). Reply: `actions` float32 [n, A] in
raw units (for a model trained with `data.action_target_gain` g, position targets: the
metadata says `action_space` "position_targets" and `action_target_gain` g, and the client
executes g * (target - hand) with the hand of each step), `duration` (n), `caption`
(unified: the first decoded caption; event: the one given), `captions` (unified: every
decoded caption), `server_timing` {infer_ms}. A bad
observation gets a text reply naming the key and the expected shape (openpi clients raise it)
and the connection stays open. The model is compiled before the port opens.
"""

from __future__ import annotations

import asyncio
import functools
import http
import time
import traceback
from typing import Any

import msgpack
import numpy as np

from wallwm_jax.data.transforms import camera_key
from wallwm_jax.policy import Policy, load_policy


class ObservationError(ValueError):
    """An observation the policy cannot act on; the message names the key."""


# -- msgpack with numpy arrays, byte-compatible with openpi_client.msgpack_numpy ---------------
def _pack_array(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"unsupported dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str,
                b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _unpack_array(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]),
                          shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


packb = functools.partial(msgpack.packb, default=_pack_array)
unpackb = functools.partial(msgpack.unpackb, object_hook=_unpack_array)


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
            "action_target_gain": policy.io.target_gain}


def parse_observation(policy: Policy, obs: Any, mode: str
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, str, str | None]:
    """openpi observation dict -> (frames by camera, state, prompt, caption); an
    ObservationError names the missing or mis-shaped key and what was expected."""
    if not isinstance(obs, dict):
        raise ObservationError(f"observation must be a dict, got {type(obs).__name__}")
    frames = {}
    for name in policy.cameras:
        key = camera_key(name)
        if key not in obs:
            raise ObservationError(f"missing key '{key}': expected uint8 [H, W, 3] "
                                   f"(the model's size is {policy.io.image_size}); got keys "
                                   f"{sorted(obs)}")
        frame = np.asarray(obs[key])
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ObservationError(f"'{key}' has shape {list(frame.shape)} dtype {frame.dtype}, "
                                   f"expected uint8 [H, W, 3]")
        frames[name] = frame
    if "observation/state" not in obs:
        raise ObservationError(f"missing key 'observation/state': expected float "
                               f"[{policy.state_dim}]; got keys {sorted(obs)}")
    state = np.asarray(obs["observation/state"])
    if state.shape != (policy.state_dim,) or not np.issubdtype(state.dtype, np.number):
        raise ObservationError(f"'observation/state' has shape {list(state.shape)}, expected "
                               f"[{policy.state_dim}]")
    prompt = obs.get("prompt")
    if not isinstance(prompt, str):
        raise ObservationError("missing key 'prompt': expected the task instruction (str)")
    caption = obs.get("caption")
    if mode == "event" and not isinstance(caption, str):
        raise ObservationError("missing key 'caption': event mode expects the next event's "
                               "description (str)")
    return frames, state, prompt, caption


def infer(policy: Policy, obs: Any, mode: str) -> dict[str, Any]:
    """One request: observation dict -> openpi-style reply dict."""
    frames, state, prompt, caption = parse_observation(policy, obs, mode)
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
async def serve(policy: Policy, mode: str, host: str, port: int, *,
                on_listen: Any = None) -> None:
    """Serve until cancelled. Requests from all clients run one at a time on the model (a
    worker thread, so the event loop keeps accepting and greeting clients meanwhile)."""
    from websockets.asyncio.server import serve as ws_serve

    meta = packb(metadata(policy, mode))
    lock = asyncio.Lock()

    async def handler(ws: Any) -> None:
        await ws.send(meta)
        async for message in ws:
            try:
                if isinstance(message, str):
                    raise ObservationError("expected a binary msgpack observation, got text")
                obs = unpackb(message)
                async with lock:
                    reply = await asyncio.to_thread(infer, policy, obs, mode)
                await ws.send(packb(reply))
            except ObservationError as err:  # the client's mistake: say so, keep serving
                await ws.send(f"bad observation: {err}")
            except Exception:  # noqa: BLE001 -- as openpi's server: the traceback as text
                await ws.send(traceback.format_exc())

    def health(connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async with ws_serve(handler, host, port, compression=None, max_size=None,
                        process_request=health) as server:
        if on_listen is not None:
            on_listen()
        await server.serve_forever()


def main(argv: list[str]) -> None:
    """Load the export, compile, then serve on --host:--port until interrupted."""
    from absl import flags

    from wallwm_jax import cli

    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    fl = flags.FLAGS
    policy = load_policy(fl.policy, mode=fl.mode, seed=fl.seed)
    mode = policy.mode
    seconds = warm_up(policy, mode)
    asyncio.run(serve(policy, mode, fl.host, fl.port, on_listen=lambda: print(
        f"wallwm_jax.serve: {fl.policy} in {mode} mode (compiled in {seconds:.1f}s), "
        f"listening on ws://{fl.host}:{fl.port}", flush=True)))


if __name__ == "__main__":
    from absl import flags

    from wallwm_jax import cli

    flags.DEFINE_string("policy", None, "Export bundle directory.")
    flags.DEFINE_integer("port", 8000, "Port to listen on.")
    flags.DEFINE_string("host", "0.0.0.0", "Address to listen on.")
    flags.DEFINE_enum("mode", None, ["event", "unified", "chunk"],
                      "Inference mode (default: the mode the export was trained in).")
    flags.DEFINE_integer("seed", 0, "Sampling noise seed.")
    flags.mark_flags_as_required(["policy"])
    cli.run(main)
