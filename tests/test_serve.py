"""Policy server: the real `openpi-client` package (unchanged) drives `python -m
wallwm_jax.serve` on a trained export; bad observations get an error naming the key and the
server keeps serving; several clients; the reply equals the in-process policy's."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Runs with PYTHONPATH=<openpi-client>: two clients, a bad observation between good ones.
CLIENT = r"""
import json, sys
import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

port, mode = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
obs = {"observation/image": rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
       "observation/state": np.array([0.0, 0.6, 0.2, 1.0], np.float32),
       "prompt": "reach the goal", "caption": "move the gripper to the goal"}
a, b = WebsocketClientPolicy("127.0.0.1", port), WebsocketClientPolicy("127.0.0.1", port)
first = a.infer(obs)
try:
    a.infer(dict(obs, **{"observation/state": np.zeros(3, np.float32)}))
    error = None
except RuntimeError as err:
    error = str(err)
second = a.infer(obs)
other = b.infer(obs)
print(json.dumps({"metadata": a.get_server_metadata(), "error": error,
                  "actions": first["actions"].tolist(), "dtype": str(first["actions"].dtype),
                  "duration": first["duration"], "caption": first.get("caption"),
                  "captions": first.get("captions"), "timing": first["server_timing"],
                  "second_shape": list(second["actions"].shape),
                  "other_shape": list(other["actions"].shape)}))
"""


@pytest.fixture(scope="session")
def openpi_client(tmp_path_factory):
    """openpi-client 0.1.2 as published, without its numpy<2 pin (its code runs on numpy 2)."""
    target = tmp_path_factory.mktemp("openpi_client")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "openpi-client==0.1.2", "--target", str(target)], check=True,
                   capture_output=True, timeout=300)
    return str(target)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_drive(export: str, mode: str, client_dir: str) -> dict:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "wallwm_jax.serve", "--policy", export,
                               "--port", str(port), "--host", "127.0.0.1", "--mode", mode,
                               # One compiled program (batching: tests/test_serve_batching.py)
                               "--max_batch", "1"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.time() + 300
        line = ""
        while "listening" not in line:  # printed once compiled and bound
            line = server.stdout.readline()
            assert line or server.poll() is None, "server exited before listening"
            assert time.time() < deadline, "server did not start"
        env = dict(os.environ, PYTHONPATH=client_dir)
        run = subprocess.run([sys.executable, "-c", CLIENT, str(port), mode], env=env,
                             capture_output=True, text=True, timeout=300, cwd="/")
        assert run.returncode == 0, run.stderr
        assert server.poll() is None  # still serving after the bad observation
        print(run.stdout)
    finally:
        server.terminate()
        rest = server.communicate(timeout=60)[0]  # reads its output while it stops
    # SIGTERM closes the server through its event loop: a clean exit that says so.
    assert server.returncode == 0 and "wallwm_jax.serve: stopped (SIGTERM)" in rest, \
        (server.returncode, rest[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_openpi_client_drives_event_policy(trained_policies, openpi_client):
    from wallwm_jax.policy import load_policy
    from wallwm_jax.serve import request_key, warm_up

    trained = trained_policies["event"]
    out = _serve_and_drive(trained.export, "event", openpi_client)
    meta = out["metadata"]
    assert meta["mode"] == "event" and meta["needs_caption"]
    assert meta["observation_keys"] == {"observation/image": [32, 32, 3],
                                        "observation/state": [4]}
    assert out["error"].startswith("Error in inference server:\nbad observation: "
                                   "'observation/state' has shape [3], expected [4]")
    actions = np.asarray(out["actions"])
    n = out["duration"]
    assert out["dtype"] == "float32" and actions.shape == (n, 4)
    assert 1 <= n <= trained.config.data.max_event_len and np.all(np.isfinite(actions))
    assert out["caption"] == "move the gripper to the goal"
    assert out["second_shape"][1] == 4 and out["other_shape"][1] == 4
    # The server's first reply is what the in-process policy gives for the same request with
    # that request's key (seed 0, the first connection, its first request).
    policy = load_policy(trained.export)
    warm_up(policy, "event")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    want = policy.act(image, np.array([0.0, 0.6, 0.2, 1.0], np.float32), "reach the goal",
                      "move the gripper to the goal", rng=request_key(0, 0, 0))["actions"]
    np.testing.assert_allclose(actions, want, atol=1e-6)


def test_openpi_client_drives_unified_policy(trained_policies, openpi_client):
    out = _serve_and_drive(trained_policies["unified"].export, "unified", openpi_client)
    assert out["metadata"]["mode"] == "unified" and not out["metadata"]["needs_caption"]
    assert isinstance(out["captions"], list) and len(out["captions"]) >= 1
    assert out["caption"] == out["captions"][0]
    assert np.asarray(out["actions"]).shape == (out["duration"], 4)
    assert out["timing"]["infer_ms"] > 0


def test_unified_policy_max_caption_tokens_cuts_captions_without_recompiling(trained_policies):
    """`Policy.max_caption_tokens` bounds the tokens decoded per caption (the captions it
    returns stop there) and is a traced argument: changing it compiles nothing new. The
    policy holds its layers split once (no stacked `layers`/`blocks`), as the decoder
    reads them."""
    from wallwm_jax.policy import load_policy

    policy = load_policy(trained_policies["unified"].export)
    assert "layers" not in policy.params["decoder"] and "blocks" not in policy.params["vit"]
    assert not policy.model_config.scan_layers
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    state = np.zeros(policy.state_dim, np.float32)
    full = policy.act(image, state, "reach the goal")
    policy.max_caption_tokens = 1
    cut = policy.act(image, state, "reach the goal")
    assert policy._decode._cache_size() == 1
    ids = np.asarray(cut["caption_ids"])
    assert ids.shape[0] >= 1 and (ids[:, 0] != 0).all() and not ids[:, 2:].any()
    # The full run decodes more than one token for some caption (a 3-step model rarely
    # stops at once), so the cut above is the cap's doing.
    assert np.asarray(full["caption_ids"])[:, 2:].any()
