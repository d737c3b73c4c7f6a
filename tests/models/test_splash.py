"""Splash attention (Pallas TPU kernel, interpreted on CPU) against XLA attention under the
decoder's masks; the whole model with model.attention="splash"; and (marker `tpu_aot`, needs
libtpu) the train step compiled for a TPU v5p topology carrying the kernel."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wallwm_jax.models import wallwm
from wallwm_jax.models.layers import activation_sharding, attention, resolve_attention
from wallwm_jax.models.masks import AttentionMask, batched_staircase_mask, staircase_mask
from wallwm_jax.models.splash import splash_attention

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = 2e-5  # f32 on CPU: the kernel's online softmax vs XLA's, measured ~1e-6


def _qkv(b, t, s, n, k, h=32, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32),
            jnp.asarray(rng.normal(size=(b, s, k, h)), jnp.float32),
            jnp.asarray(rng.normal(size=(b, s, k, h)), jnp.float32))


def _key_valid(b, s, seed=1):
    """Scattered invalid keys (not a contiguous tail); key 0 (an image token) always valid."""
    valid = np.random.default_rng(seed).random((b, s)) < 0.7
    valid[:, 0] = True
    return jnp.asarray(valid)


# (name, T, S, N, K, mask builder (b) -> AttentionMask). Each case compiles three interpreted
# kernels (forward, dq, dkv): the cases are the kernel paths the model takes, no more.
CASES = [
    # Static structure + scattered key validity (segment ids), GQA, two blocks (T=S=140).
    ("causal_padded_gqa", 140, 140, 4, 2,
     lambda b: AttentionMask.of(np.tril(np.ones((140, 140), bool)), _key_valid(b, 140))),
    # Per-example stairs (dense mask per example) + key validity.
    ("per_example_stairs_padded", 100, 100, 4, 2,
     lambda b: AttentionMask.of(
         batched_staircase_mask(30, (20, 20), jnp.asarray([[0] * 10 + [1] * 20,
                                                           [0] * 25 + [1] * 5])),
         _key_valid(b, 100))),
    # Action rows of a cached pass (30 queries, 100 keys, cache first), MQA.
    ("cached_action_rows_mqa", 30, 100, 2, 1,
     lambda b: AttentionMask.of(staircase_mask(40, (30,), [0] * 30), _key_valid(b, 100))
     .query_rows(70)),
]


@pytest.mark.parametrize("name, t, s, n, k, make_mask", CASES, ids=[c[0] for c in CASES])
def test_splash_matches_xla_forward_and_gradient(name, t, s, n, k, make_mask):
    b = 2
    q, kk, v = _qkv(b, t, s, n, k)
    mask = make_mask(b)
    # Every query sees some key (else both sides are meaningless).
    assert bool(jnp.all(jnp.any(jnp.broadcast_to(mask.dense(), (b, t, s)), -1)))
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=(b, t, n, 32)), jnp.float32)
    results = {}
    for impl in ("splash", "xla"):
        # The primal out of vjp is the forward the gradient saves: one kernel set per case.
        out, vjp = jax.vjp(lambda q, kk, v, impl=impl: attention(
            q, kk, v, mask, implementation=impl), q, kk, v)
        results[impl] = (out, *vjp(cotangent))
    assert results["splash"][0].shape == (b, t, n, 32)
    for got, want in zip(results["splash"], results["xla"], strict=True):
        np.testing.assert_allclose(got, want, atol=TOL)
        assert float(jnp.max(jnp.abs(want))) > 1e-2  # a value that could be wrong


def test_masked_keys_do_not_leak():
    """Changing a key/value that the mask hides leaves splash's output alone; changing a
    visible one moves it (the comparison above could pass on a mask ignored by both)."""
    b, t = 2, 100
    q, k, v = _qkv(b, t, t, 2, 1)
    valid = _key_valid(b, t)
    mask = AttentionMask.of(np.tril(np.ones((t, t), bool)), valid)
    hidden = int(np.flatnonzero(~np.asarray(valid[0]))[0])
    last = int(np.flatnonzero(np.asarray(valid[0]))[-1])
    run = jax.jit(lambda v: splash_attention(q, k, v, mask, interpret=True))
    out = run(v)
    np.testing.assert_array_equal(run(v.at[0, hidden].add(5.0)), out)
    out_last = run(v.at[0, last].add(5.0))
    np.testing.assert_array_equal(out_last[0, :last], out[0, :last])  # causal
    assert float(jnp.max(jnp.abs(out_last[0, last:] - out[0, last:]))) > 0.1


def test_splash_under_the_activation_mesh_runs_per_device():
    """Inside the train step's mesh the kernel runs per batch shard (shard_map over
    data x fsdp, 8 fake CPU devices) and still matches XLA on the whole batch."""
    from jax.sharding import Mesh

    devices = np.array(jax.devices()[:8]).reshape(2, 4, 1)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    b, t = 8, 100
    q, k, v = _qkv(b, t, t, 2, 1)
    mask = AttentionMask.of(np.tril(np.ones((t, t), bool)), _key_valid(b, t))
    with activation_sharding(mesh, (("activation_batch", ("data", "fsdp")),)):
        out = jax.jit(lambda q, k, v, m: attention(q, k, v, m, implementation="splash"))(
            q, k, v, mask)
    assert out.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    np.testing.assert_allclose(out, attention(q, k, v, mask, implementation="xla"), atol=TOL)


def test_auto_picks_splash_only_when_lowering_for_tpu_and_lengths_fill_a_block():
    bf16 = jnp.bfloat16
    assert resolve_attention("auto", bf16, 128, "tpu", lowering="tpu",
                             q_len=300, kv_len=300) == "splash"
    assert resolve_attention("auto", bf16, 128, "tpu", lowering="tpu",
                             q_len=1, kv_len=300) == "xla"  # a decode step
    assert resolve_attention("auto", bf16, 128, "tpu", lowering="cpu",
                             q_len=300, kv_len=300) == "xla"  # TPU target on fake CPU devices
    assert resolve_attention("auto", bf16, 128, "gpu", "NVIDIA H100", lowering="tpu",
                             q_len=300, kv_len=300) == "cudnn"
    assert resolve_attention("splash", jnp.float32, 32, "cpu") == "splash"  # explicit: kept


@pytest.fixture(scope="module")
def unified_model():
    """Tiny unified-mode model (2 caption slots: per-example stairs), params and a batch."""
    from experiments.pretrain import get_config
    from tests.models.conftest import make_batch

    cfg = get_config("size=tiny,mode=unified").model
    cfg.image_size = 16  # 4 image tokens: keep the interpreted kernel cheap
    batch = make_batch(cfg, batch_size=2)
    return cfg, wallwm.init_params(cfg, jax.random.key(0)), batch


def _with_attention(cfg, impl):
    cfg = cfg.copy_and_resolve_references()
    cfg.attention = impl
    return ml_collections.FrozenConfigDict(cfg)


def test_whole_model_with_splash_matches_xla(unified_model):
    """Training forward (ViT, per-example stairs, padding) and the cached action pass."""
    cfg, params, batch = unified_model
    x_t = jnp.asarray(batch.actions)
    t = jnp.full((2,), 0.5)
    outs = {}
    for impl in ("xla", "splash"):
        model = wallwm.WallWM(_with_attention(cfg, impl))
        joint = model.apply({"params": params}, batch.obs, x_t, t, batch.action_events)
        cache, _ = model.apply({"params": params}, batch.obs, method=wallwm.WallWM.encode)
        cached = model.apply({"params": params}, batch.obs, cache, x_t, t, batch.action_events,
                             method=wallwm.WallWM.velocity)
        outs[impl] = (joint["velocity"], joint["caption_logits"], cached)
    for got, want in zip(outs["splash"], outs["xla"], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert float(jnp.max(jnp.abs(outs["xla"][0]))) > 0.1


_AOT_SCRIPT = """
import json, sys
from experiments.pretrain import get_config
from wallwm_jax import aot, sharding
from wallwm_jax.models.layers import Target, target_devices

devices = aot._devices(sys.argv[1])
assert devices[0].platform == "tpu", devices
out = {}
for mode in ("event", "unified"):
    config = get_config(f"size=tiny,mode={mode}")
    config.batch_size = 2 * len(devices)
    mesh = sharding.make_mesh(config.mesh, devices)
    step = aot._train_step(config, mesh)
    with target_devices(Target.of(devices[0])):
        hlo = step.update_fn.lower(*step.abstract_inputs).compile().as_text()
    out[mode] = hlo
print(json.dumps({"kind": devices[0].device_kind, "n": len(devices), "hlo": out}))
"""


@pytest.mark.tpu_aot
def test_train_step_compiled_for_tpu_v5p_calls_the_splash_kernel():
    """Needs libtpu (`pip install -e .[tpu]`); run with `pytest -m tpu_aot`. The tiny train
    step (model.attention="auto") compiled for a v5p:2x2x1 topology, no TPU attached."""
    import importlib.util

    assert importlib.util.find_spec("libtpu") is not None, (
        "libtpu is not installed: `pip install -e .[tpu]` (the tpu_aot tests need it)")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, "v5p:2x2x1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kind"].startswith("TPU v5") and report["n"] == 4
    for mode, hlo in report["hlo"].items():
        assert 'custom_call_target="tpu_custom_call"' in hlo, mode
        # Forward and both backward kernels; event mode's static stairs take the key
        # validity as segment ids, unified mode's per-example stairs a dense (dynamic) mask.
        segmented = "_segmented" if mode == "event" else ""
        for phase in ("fwd", "dq", "dkv"):
            assert f"splash_mha_{phase}{segmented}_" in hlo, (mode, phase)
        sparsity = "static_sparsity_splash" if mode == "event" else "dynamic_sparsity_splash"
        assert sparsity in hlo, mode
