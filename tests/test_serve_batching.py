"""The policy server batches concurrent requests: clients that send together get one model
call (`server_timing.batch_size`) and exactly the actions (to float rounding) and captions a
one-at-a-time server (`max_batch=1`) gives them; a refused request beside a batch gets its
error and the others their actions. A real server (`wallwm_jax.serve.serve`, a thread of this
process, on 127.0.0.1) on the trained tiny exports, real websocket clients, bounded waits.

The batches are made deterministic without timing: a long `batch_wait_ms` holds the first
request until `max_batch` have arrived, so every reply says which batch size it ran in."""

import concurrent.futures
import contextlib

import numpy as np
import pytest

from tests.test_serve_refusals import (  # noqa: F401 -- timeout_impl is a fixture
    ask,
    client,
    observation,
    running,
    timeout_impl,
)

# One worker runs the module: its policies compile once.
pytestmark = pytest.mark.xdist_group("serve_batching")

HOLD_MS = 600_000  # the batch closes at max_batch requests, never on time


@pytest.fixture(scope="module")
def policies(trained_policies):
    """The trained event and unified exports, loaded once for this module's servers."""
    from wallwm_jax.policy import load_policy

    return {mode: load_policy(trained_policies[mode].export) for mode in ("event", "unified")}


def varied(i):
    """Request i: its own frame and state."""
    rng = np.random.default_rng(10 + i)
    return observation(**{"observation/image": rng.integers(0, 256, (48, 40, 3), np.uint8),
                          "observation/state": rng.normal(size=4).astype(np.float32)})


def drive(port, requests):
    """Each list in `requests` is one client's messages, sent in order; the clients connect
    one after another (connections 0, 1, ...: each request's key is fixed) and then send at
    once, each from its own thread. Returns each client's replies."""
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool, \
            contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(client(port)) for _ in requests]
        jobs = [pool.submit(lambda ws, msgs: [ask(ws, m) for m in msgs], ws, msgs)
                for ws, msgs in zip(sockets, requests, strict=True)]
        return [job.result(timeout=300) for job in jobs]


@pytest.mark.parametrize("mode,clients", [("event", 3), ("unified", 2)])
def test_concurrent_clients_get_the_one_at_a_time_actions(policies, mode, clients):
    policy = policies[mode]
    # Clients 0 and 1 send the same observation: their keys (connections) differ.
    requests = [[varied(0)], [varied(0)], [varied(2)]][:clients]
    with running(policy, mode, max_batch=clients, batch_wait_ms=HOLD_MS) as port:
        batched = [r[0] for r in drive(port, requests)]
    with running(policy, mode, max_batch=1) as port:
        alone = [r[0] for r in drive(port, requests)]
    for got, want in zip(batched, alone, strict=True):
        assert isinstance(got, dict) and isinstance(want, dict), (got, want)
        assert got["server_timing"]["batch_size"] == clients
        assert want["server_timing"]["batch_size"] == 1
        assert got["actions"].shape == want["actions"].shape
        np.testing.assert_allclose(got["actions"], want["actions"], rtol=0, atol=1e-5)
        assert got.get("captions") == want.get("captions")
    # Same observation, other connection: other noise, other actions.
    n = min(len(batched[0]["actions"]), len(batched[1]["actions"]))
    assert np.abs(batched[0]["actions"][:n] - batched[1]["actions"][:n]).max() > 1e-3


@pytest.mark.parametrize("mode", ["event", "unified"])
def test_requests_of_different_shapes_share_a_batch(policies, mode):
    """Frames of three sizes (none the model's), prompts and captions of different lengths,
    sent together: each is resized and tokenised before it queues, so all three stack into
    one model call, and each client gets what a one-at-a-time server gives it."""
    rng = np.random.default_rng(3)
    shapes = [(48, 40), (96, 96), (21, 77)]
    prompts = ["reach", "push the puck to the goal", "press the button from the top, slowly"]
    captions = ["move", "move the gripper to the goal", "close the gripper around the puck"]
    requests = [[observation(**{"observation/image": rng.integers(0, 256, (*hw, 3), np.uint8),
                                "observation/state": rng.normal(size=4).astype(np.float32),
                                "prompt": prompt, "caption": caption})]
                for hw, prompt, caption in zip(shapes, prompts, captions, strict=True)]
    policy = policies[mode]
    with running(policy, mode, max_batch=3, batch_wait_ms=HOLD_MS) as port:
        batched = [r[0] for r in drive(port, requests)]
    with running(policy, mode, max_batch=1) as port:
        alone = [r[0] for r in drive(port, requests)]
    for got, want in zip(batched, alone, strict=True):
        assert isinstance(got, dict) and isinstance(want, dict), (got, want)
        assert got["server_timing"]["batch_size"] == 3
        assert got["actions"].shape == want["actions"].shape
        np.testing.assert_allclose(got["actions"], want["actions"], rtol=0, atol=1e-5)
        assert got.get("captions") == want.get("captions")
        assert got.get("caption") == want.get("caption")


@pytest.mark.usefixtures("timeout_impl")
def test_refused_request_beside_a_batch_gets_its_error_alone(policies):
    """Three clients wait in a batch of four; the fourth sends a NaN state (refused at once,
    while the others wait), then a good request, which completes the batch. With Python
    3.10's timeout too: a batch that closed early (at 3) would fail the batch-size check."""
    policy = policies["event"]
    nan = observation(**{"observation/state": np.array([0.0, np.nan, 0.2, 1.0], np.float32)})
    requests = [[varied(0)], [varied(1)], [varied(2)], [nan, varied(3)]]
    with running(policy, "event", max_batch=4, batch_wait_ms=HOLD_MS) as port:
        replies = drive(port, requests)
    with running(policy, "event", max_batch=1) as port:
        alone = drive(port, requests)
    refusal, fourth = replies[3]
    assert refusal.startswith("bad observation: 'observation/state' has non-finite values")
    good = [r[0] for r in replies[:3]] + [fourth]
    want = [r[0] for r in alone[:3]] + [alone[3][1]]
    for got, expected in zip(good, want, strict=True):
        assert got["server_timing"]["batch_size"] == 4
        np.testing.assert_allclose(got["actions"], expected["actions"], rtol=0, atol=1e-5)


def test_act_batch_padded_equals_act_of_each(policies):
    """`Policy.act_batch` with the batch padded (3 rows to 4) gives each row what `act` gives
    it alone with the same key; the padding rows' results are dropped. `warm_up` compiles
    every padded size a server runs (1, 2, 4 for max_batch 4)."""
    import jax

    from wallwm_jax.serve import warm_up

    policy = policies["event"]
    warm_up(policy, "event", max_batch=4)
    compiled = policy._sample._cache_size()
    assert compiled >= 3
    obs = [varied(i) for i in range(3)]
    args = [({"image": o["observation/image"]}, o["observation/state"], o["prompt"],
             o["caption"]) for o in obs]
    keys = [jax.random.PRNGKey(i) for i in range(3)]
    rows = policy.act_batch([policy.observation(*a) for a in args], rngs=keys, pad_to=4)
    assert len(rows) == 3
    for a, key, row in zip(args, keys, rows, strict=True):
        want = policy.act(*a, rng=key)
        np.testing.assert_allclose(row["actions"], want["actions"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(row["duration_bin"], want["duration_bin"])
    assert policy._sample._cache_size() == compiled  # sizes 1 and 4: nothing new compiled
