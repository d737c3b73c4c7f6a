"""What the policy server reads off the wire: msgpack-numpy frames (byte-compatible with
openpi_client's) and the checks an observation passes before the model sees it (each refusal
one line naming the key)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from wallwm_jax.data.transforms import camera_key

if TYPE_CHECKING:
    from wallwm_jax.policy import Policy


class ObservationError(ValueError):
    """An observation the policy cannot act on; the message names the key."""


class MessageError(ValueError):
    """A frame that is not a msgpack-numpy observation."""


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
    if b"__ndarray__" in obj or b"__npgeneric__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.hasobject:  # an object array read from bytes would hold raw pointers
            raise MessageError(f"array of dtype {dtype} (Python objects) refused")
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return dtype.type(obj[b"data"])
    return obj


packb = functools.partial(msgpack.packb, default=_pack_array)
unpackb = functools.partial(msgpack.unpackb, object_hook=_unpack_array)


def decode(message: bytes | str) -> Any:
    """One websocket message -> the decoded object; MessageError (one line) when it is text
    or not msgpack-numpy (truncated, garbage, an array whose data does not fit its shape)."""
    if isinstance(message, str):
        raise MessageError("expected a binary msgpack observation, got a text frame")
    try:
        return unpackb(message)
    except MessageError:
        raise
    except Exception as err:  # noqa: BLE001 -- msgpack and numpy raise many kinds for bad bytes
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise MessageError(f"not a msgpack-numpy observation ({detail})") from err



# -- observation checks ---------------------------------------------------------------------------
def _described(value: Any) -> str:
    """How a refused value reads in an error: its type, or an array's dtype and shape."""
    if isinstance(value, (str, bytes)):
        return f"a {type(value).__name__} ({value[:24]!r})"
    if isinstance(value, np.ndarray):
        return f"dtype {value.dtype} shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def _frame(obs: dict, key: str, size: int) -> np.ndarray:
    """The uint8 [H, W, 3] frame at `key`, H, W >= 1; ObservationError names the key."""
    want = f"expected uint8 [H, W, 3] (the model's size is {size})"
    if key not in obs:
        raise ObservationError(f"missing key '{key}': {want}; got keys {sorted(map(str, obs))}")
    value = obs[key]
    frame = value if isinstance(value, np.ndarray) else None
    if frame is None or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ObservationError(f"'{key}' is {_described(value)}, {want}")
    if frame.size == 0:
        raise ObservationError(f"'{key}' is empty (shape {list(frame.shape)}), {want}")
    return frame


def _state(obs: dict, dim: int) -> np.ndarray:
    """The finite real [dim] vector at 'observation/state'; ObservationError says what is
    wrong with it (missing, a string, not real numbers, mis-shaped, NaN or inf)."""
    key, want = "observation/state", f"expected finite float [{dim}]"
    if key not in obs:
        raise ObservationError(f"missing key '{key}': {want}; got keys {sorted(map(str, obs))}")
    value = obs[key]
    if isinstance(value, (str, bytes)):
        raise ObservationError(f"'{key}' is {_described(value)}, {want}")
    try:
        state = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
    except ValueError:  # a ragged list
        state = None
    if state is None or state.dtype.kind not in "iuf":  # bool, complex, text, objects
        raise ObservationError(f"'{key}' is not an array of real numbers "
                               f"({_described(value if state is None else state)}), {want}")
    if state.shape != (dim,):
        raise ObservationError(f"'{key}' has shape {list(state.shape)}, expected [{dim}]")
    bad = np.flatnonzero(~np.isfinite(state))
    if bad.size:
        raise ObservationError(f"'{key}' has non-finite values ({state[bad[0]]} at index "
                               f"{int(bad[0])}; {bad.size} in all), {want}")
    return state


def parse_observation(policy: Policy, obs: Any, mode: str
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, str, str | None]:
    """openpi observation dict -> (frames by camera, state, prompt, caption); an
    ObservationError names the missing or refused key and what was expected."""
    if not isinstance(obs, dict):
        raise ObservationError(f"observation must be a dict, got {type(obs).__name__}")
    frames = {name: _frame(obs, camera_key(name), policy.io.image_size)
              for name in policy.cameras}
    state = _state(obs, policy.state_dim)
    prompt = obs.get("prompt")
    if not isinstance(prompt, str):
        raise ObservationError(f"{'missing key' if prompt is None else 'bad'} 'prompt': "
                               f"expected the task instruction (str)")
    caption = obs.get("caption")
    if mode == "event" and not isinstance(caption, str):
        raise ObservationError(f"{'missing key' if caption is None else 'bad'} 'caption': "
                               f"event mode expects the next event's description (str)")
    return frames, state, prompt, caption
