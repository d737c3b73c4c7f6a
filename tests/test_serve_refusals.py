"""The policy server refuses what it cannot serve and keeps serving: flags checked before the
model loads, bad values and malformed frames answered in one line naming the key, a size and a
time limit, a vanished client logged in one line, and a request's reading and checking not
queued behind the model. A real server (`wallwm_jax.serve.serve`, a thread of this process, on
127.0.0.1) on the trained event export, real websocket clients, bounded waits."""

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



# One worker runs the module: its policy fixture compiles the policy once.
pytestmark = pytest.mark.xdist_group("serve_refusals")

@pytest.fixture(scope="module")
def policy(trained_policies):
    """The trained event-mode export, loaded and compiled once for this module's servers."""
    from wallwm_jax.policy import load_policy
    from wallwm_jax.serve import warm_up

    policy = load_policy(trained_policies["event"].export)
    warm_up(policy, "event")
    return policy


@contextlib.contextmanager
def running(policy, mode="event", **limits):
    """`serve` on 127.0.0.1, a free port, in a thread; yields the port; always stopped."""
    from wallwm_jax.serve import serve

    loop, listening, ports = asyncio.new_event_loop(), threading.Event(), []

    async def until_cancelled():
        with contextlib.suppress(asyncio.CancelledError):  # how the test stops it
            await serve(policy, mode, "127.0.0.1", 0, on_listen=lambda p: (
                ports.append(p), listening.set()), **limits)

    task = loop.create_task(until_cancelled())
    thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
    thread.start()
    try:
        assert listening.wait(60), "server did not start"
        yield ports[0]
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
        assert not thread.is_alive(), "server did not stop"
        loop.close()


@contextlib.contextmanager
def client(port, **kwargs):
    """A websocket client (metadata read) with bounded waits."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=30,
                 **kwargs) as ws:
        ws.recv(timeout=30)
        yield ws


def observation(**overrides):
    obs = {"observation/image": np.random.default_rng(0).integers(0, 256, (48, 40, 3),
                                                                  dtype=np.uint8),
           "observation/state": np.array([0.0, 0.6, 0.2, 1.0], np.float32),
           "prompt": "reach the goal", "caption": "move the gripper to the goal"}
    return dict(obs, **overrides)


def ask(ws, message):
    """Send one message, return the reply: decoded actions dict or the error text."""
    from wallwm_jax.serve import packb, unpackb

    ws.send(message if isinstance(message, (bytes, str)) else packb(message))
    reply = ws.recv(timeout=60)
    return reply if isinstance(reply, str) else unpackb(reply)


def assert_serves(ws):
    reply = ask(ws, observation())
    assert isinstance(reply, dict), reply
    assert reply["actions"].shape[1] == 4 and np.all(np.isfinite(reply["actions"]))


def raw_array(dtype, shape, data):
    """An openpi msgpack-numpy array written by hand (what no numpy packer would send)."""
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


# -- flags -------------------------------------------------------------------------------------
def test_flags_refused_before_the_model_loads(trained_policies, tmp_path):
    """`python -m wallwm_jax.serve` with a port out of range, or one in use, stops with one
    `error:` line naming the flag, exit 2: on an export whose weights are unreadable, so the
    refusal came before the model was loaded (let alone compiled)."""
    export = tmp_path / "export"
    shutil.copytree(trained_policies["event"].export, export)
    (export / "model.safetensors").write_bytes(b"not a safetensors file")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = {"--port=99999": "error: --port 99999: expected 0-65535",
             f"--port={port}": f"error: --host 127.0.0.1 --port {port}: cannot listen there "
                               f"(Address already in use)"}
    try:
        runs = {flag: subprocess.Popen(
            [sys.executable, "-m", "wallwm_jax.serve", "--policy", str(export),
             "--host=127.0.0.1", flag], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True) for flag in cases}
        for flag, run in runs.items():
            try:
                out, err = run.communicate(timeout=120)
            finally:
                run.kill()
                run.wait()
            assert run.returncode == 2, (flag, out, err)
            assert err.splitlines() == [err.strip()] and err.startswith(cases[flag]), (flag, err)
    finally:
        taken.close()


def test_check_flags_names_each_bad_flag(trained_policies, tmp_path):
    from wallwm_jax.cli import UserError
    from wallwm_jax.serve import bind, check_flags

    export = trained_policies["event"].export
    good = {"policy_dir": export, "port": 8000, "mode": None, "max_message_mb": 16,
            "request_timeout_s": 60}
    check_flags(**good)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(os.path.join(export, "config.json"), partial)
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / "config.json").write_text("{")
    bad = [({"port": -1}, "--port -1: expected 0-65535"),
           ({"policy_dir": str(broken)}, "config.json is not a training config"),
           ({"max_message_mb": 0}, "--max_message_mb 0: expected a size > 0"),
           ({"request_timeout_s": -5}, "--request_timeout_s -5: expected seconds > 0"),
           ({"max_batch": 0}, "--max_batch 0: expected requests per model call >= 1"),
           ({"batch_wait_ms": -1}, "--batch_wait_ms -1: expected milliseconds >= 0"),
           ({"max_caption_tokens": -1}, "--max_caption_tokens -1: expected tokens"),
           ({"max_caption_tokens": 99}, "--max_caption_tokens 99: this export decodes at most"),
           ({"policy_dir": str(tmp_path / "nowhere")}, "no such directory"),
           ({"policy_dir": str(partial)}, "is missing model.safetensors"),
           ({"mode": "chunk"}, "--mode chunk: this export can run event")]
    for change, message in bad:
        with pytest.raises(UserError, match=message):
            check_flags(**dict(good, **change))
    with pytest.raises(UserError, match="--host no-such-host.invalid: cannot resolve"):
        bind("no-such-host.invalid", 0)
    sock = bind("127.0.0.1", 0)  # bound, not listening: connections are refused
    try:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(
                sock.getsockname()[:2], timeout=10):
            pass
    finally:
        sock.close()


# -- refused values and frames -----------------------------------------------------------------
def test_bad_values_refused_naming_the_key(policy):
    from wallwm_jax.serve import packb

    nan_state = np.array([0.0, np.nan, 0.2, 1.0], np.float32)
    inf_state = np.array([0.0, 0.6, -np.inf, 1.0])
    cases = [
        (observation(**{"observation/state": nan_state}),
         "bad observation: 'observation/state' has non-finite values (nan at index 1"),
        (observation(**{"observation/state": inf_state}),
         "bad observation: 'observation/state' has non-finite values (-inf at index 2"),
        (observation(**{"observation/state": "abcd"}),
         "bad observation: 'observation/state' is a str ('abcd'), expected finite float [4]"),
        (observation(**{"observation/state": np.array(list("abcd"))}),
         "bad observation: 'observation/state' is not an array of real numbers (dtype <U1"),
        (observation(**{"observation/state": np.ones(4, bool)}),
         "bad observation: 'observation/state' is not an array of real numbers (dtype bool"),
        (observation(**{"observation/state": [0.0, "a", 0.2, 1.0]}),
         "bad observation: 'observation/state' is not an array of real numbers"),
        (observation(**{"observation/image": np.zeros((0, 0, 3), np.uint8)}),
         "bad observation: 'observation/image' is empty (shape [0, 0, 3])"),
        (observation(**{"observation/image": np.zeros((0, 40, 3), np.uint8)}),
         "bad observation: 'observation/image' is empty (shape [0, 40, 3])"),
        (observation(**{"observation/image": "pixels"}),
         "bad observation: 'observation/image' is a str ('pixels'), expected uint8 [H, W, 3]"),
        (observation(**{"observation/image": np.zeros((32, 32, 3), np.float32)}),
         "bad observation: 'observation/image' is dtype float32 shape [32, 32, 3]"),
        (observation(prompt=7), "bad observation: bad 'prompt': expected the task instruction"),
    ]
    with running(policy) as port, client(port) as ws:
        for obs, expected in cases:
            reply = ask(ws, packb(obs))
            assert isinstance(reply, str) and reply.startswith(expected), (expected, reply)
            assert "\n" not in reply
        assert_serves(ws)  # the same connection, after every refusal


def test_malformed_frames_get_one_line(policy):
    from wallwm_jax.serve import packb

    good = packb(observation())
    short = dict(observation(), **{"observation/image": raw_array("|u1", [48, 40, 3], b"\0")})
    objects = dict(observation(), **{"observation/state": raw_array("|O", [4], b"\1" * 32)})
    cases = [(b"\xc1\xc1\xc1", "bad message: not a msgpack-numpy observation"),
             (good[:-7], "bad message: not a msgpack-numpy observation"),
             (good + b"\x00", "bad message: not a msgpack-numpy observation (ExtraData"),
             (packb(short), "bad message: not a msgpack-numpy observation (TypeError"),
             (packb(objects), "bad message: array of dtype object (Python objects)"),
             (packb(dict(observation(), **{"observation/image": raw_array(
                 "|u1", [-1, 2, 3], b"")})), "bad message: not a msgpack-numpy observation"),
             ("hello", "bad message: expected a binary msgpack observation, got a text frame"),
             (msgpack.packb(5), "bad observation: observation must be a dict, got int"),
             (msgpack.packb({"image": 2}), "bad observation: missing key 'observation/image'")]
    with running(policy) as port, client(port) as ws:
        for message, expected in cases:
            reply = ask(ws, message)
            assert isinstance(reply, str) and reply.startswith(expected), (expected, reply)
            assert "\n" not in reply and "Traceback" not in reply
        assert_serves(ws)


# -- limits ------------------------------------------------------------------------------------
def test_frame_over_the_size_limit_closes_with_1009(policy):
    from websockets.exceptions import ConnectionClosedError

    from wallwm_jax.serve import packb

    limit = 64 << 10
    big = packb(observation(**{"observation/image": np.zeros((150, 150, 3), np.uint8)}))
    assert len(big) > limit
    fits = packb(observation(**{"observation/image": np.zeros((140, 140, 3), np.uint8)}))
    assert len(fits) <= limit
    with running(policy, max_message_bytes=limit) as port, client(port) as other:
        with client(port) as ws:
            with pytest.raises(ConnectionClosedError) as closed:
                ask(ws, big)
        assert closed.value.rcvd.code == 1009
        assert f"exceeds limit of {limit} bytes" in closed.value.rcvd.reason
        assert isinstance(ask(other, fits), dict)  # other clients are served as before


@contextlib.contextmanager
def model_held(policy, monkeypatch):
    """Hold the model's turn: `policy.act_batch` (the server's model call) waits until the
    yielded event is set."""
    gate, entered, calls, act = threading.Event(), threading.Event(), [], policy.act_batch

    def held(*args, **kwargs):
        calls.append(args)
        entered.set()
        assert gate.wait(60)
        return act(*args, **kwargs)

    monkeypatch.setattr(policy, "act_batch", held)
    try:
        yield gate, entered, calls
    finally:
        gate.set()


def test_checks_do_not_wait_for_the_model(policy, monkeypatch):
    """While the model is busy, another client's bad observation is answered at once and a
    large frame is read; a request's checking is not queued behind the model."""
    from wallwm_jax.serve import packb

    with running(policy) as port, client(port) as busy, client(port) as ws, \
            model_held(policy, monkeypatch) as (gate, entered, calls):
        busy.send(packb(observation()))
        assert entered.wait(30)
        nan = observation(**{"observation/state": np.full(4, np.nan, np.float32)})
        assert ask(ws, nan).startswith("bad observation: 'observation/state' has non-finite")
        ws.send(packb(observation(**{"observation/image": np.zeros((2000, 2000, 3),
                                                                   np.uint8)})))
        gate.set()
        assert isinstance(busy.recv(timeout=60), bytes)
        assert isinstance(ws.recv(timeout=60), bytes)
        assert len(calls) == 2


@pytest.fixture(params=["asyncio.timeout", "deadline"])
def timeout_impl(request, monkeypatch):
    """The server's timeouts as Python 3.11+ runs them (`asyncio.timeout`) and as 3.10 runs
    them (`serve.deadline`), both on this interpreter."""
    import wallwm_jax.serve as serve_module

    impl = asyncio.timeout if request.param == "asyncio.timeout" else serve_module.deadline
    monkeypatch.setattr(serve_module, "timeout", impl)
    return request.param


def test_deadline_raises_timeout_and_keeps_other_cancellations():
    """Python 3.10's stand-in for `asyncio.timeout`: the builtin TimeoutError when the time is
    up, nothing when the body finishes in time, and a cancellation from elsewhere stays one."""
    from wallwm_jax.serve import deadline

    async def late():
        async with deadline(0.05):
            await asyncio.sleep(30)

    async def in_time():
        async with deadline(30):
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)  # the cancelled timer never fires afterwards
        return "done"

    async def cancelled_from_outside():
        task = asyncio.ensure_future(late_long())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def late_long():
        async with deadline(30):
            await asyncio.sleep(30)

    with pytest.raises(TimeoutError):
        asyncio.run(late())
    assert asyncio.run(in_time()) == "done"
    asyncio.run(cancelled_from_outside())


def test_request_over_the_time_limit_is_answered_and_never_runs(policy, monkeypatch,
                                                                 timeout_impl):
    """A request still waiting for the model when its time is up gets a one-line reply and is
    dropped from the queue; the server serves the next one (with either timeout)."""
    from wallwm_jax.serve import packb

    with running(policy, request_timeout_s=0.5) as port, client(port) as first, \
            client(port) as second, model_held(policy, monkeypatch) as (gate, entered, calls):
        first.send(packb(observation()))
        assert entered.wait(30)
        reply = ask(second, observation())
        assert reply == ("request timed out: no reply within 0.5 s (--request_timeout_s); "
                         "requests wait for the model's turn")
        assert first.recv(timeout=60).startswith("request timed out")
        gate.set()
        assert_serves(second)
        assert len(calls) == 2  # the first request and the last; the timed-out one never ran


# -- clients that go away ----------------------------------------------------------------------
def test_client_gone_mid_request_is_one_log_line(policy, caplog):
    from wallwm_jax.serve import packb

    caplog.set_level(logging.WARNING)
    frame = packb(observation())
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, len(frame)) + b"\0\0\0\0"  # mask 0
    with running(policy) as port:
        with client(port) as ws:  # sends a whole request, then drops the connection
            ws.send(frame)
            ws.socket.shutdown(socket.SHUT_RDWR)
        with client(port) as ws:  # half a frame, then drops the connection
            ws.socket.sendall(header + frame[:len(frame) // 2])
            ws.socket.shutdown(socket.SHUT_RDWR)
        deadline = time.time() + 30
        while len([r for r in caplog.records if r.name == "wallwm_jax.serve"]) < 2:
            assert time.time() < deadline, caplog.text
            time.sleep(0.05)
        with client(port) as ws:
            assert_serves(ws)
    ours = [r for r in caplog.records if r.name == "wallwm_jax.serve"]
    assert len(ours) == 2, caplog.text
    said = sorted(r.getMessage().split(" ", 2)[2] for r in ours)  # either may come first
    assert said == ["disconnected (no close frame received or sent)",
                    "disconnected before its reply (no close frame received or sent)"], said
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in ours)
    assert "\n" not in "".join(r.getMessage() for r in ours)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], \
        caplog.text
