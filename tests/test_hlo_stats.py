"""Loop-aware counts from the compiled HLO (`wallwm_jax.hlo_stats`): ops inside a while body
count once per iteration, so the tiny train step with `scan_layers` on and off gives the same
collective bytes and matmul FLOPs, and those FLOPs agree with the analytic count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments.pretrain import get_config
from wallwm_jax import throughput
from wallwm_jax.hlo_stats import compiled_stats, hlo_stats
from wallwm_jax.train_step import make_train_step


def test_scan_body_counts_once_per_iteration():
    def layers(x, ws):
        return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0].sum()

    x, ws = jnp.ones((8, 16)), jnp.ones((5, 16, 16))
    stats = compiled_stats(jax.jit(jax.grad(layers, argnums=1)).lower(x, ws).compile())
    # forward c @ w plus two backward matmuls, 5 layers: 3 x 5 x 2·8·16·16.
    assert stats.matmul_flops == 3 * 5 * 2 * 8 * 16 * 16
    assert stats.unknown_trip_loops == ()


def test_collectives_in_a_loop_body_multiply():
    hlo = """
%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %ag = f32[16,8]{1,0} all-gather(%x), dimensions={0}
  %rs = f32[4,8]{1,0} reduce-scatter(%ag), dimensions={0}, to_apply=%add
}
%cond (p.1: (s32[], f32[4,8])) -> pred[] {
  %p.1 = (s32[], f32[4,8]) parameter(0)
}
ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %w = (s32[], f32[4,8]) while(%t), condition=%cond, body=%body, TRIP
  %s = f32[4,8]{1,0} all-reduce-start(%a), to_apply=%add
  %d = f32[4,8]{1,0} all-reduce-done(%s)
}
""".replace("TRIP", 'backend_config={"known_trip_count":{"n":"6"}}')
    stats = hlo_stats(hlo)
    assert stats.collective_bytes == {"all-gather": 6 * 16 * 8 * 4, "reduce-scatter": 6 * 128,
                                      "all-reduce": 128, "total": 6 * 640 + 128}
    # TPU's compiler gives no known_trip_count: the condition `i < 6` says it.
    tpu = hlo.replace('backend_config={"known_trip_count":{"n":"6"}}', "")
    tpu = tpu.replace("  %p.1 = (s32[], f32[4,8]) parameter(0)\n", """\
  %p.1 = (s32[], f32[4,8]) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  %n = s32[]{:T(128)} constant(6)
  ROOT %lt = pred[]{:T(512)} compare(%i, %n), direction=LT
""")
    assert hlo_stats(tpu).collective_bytes == stats.collective_bytes
    assert hlo_stats(tpu.replace("constant(6)", "parameter(1)")).unknown_trip_loops == ("w",)


def test_tpu_batched_matmul_convolution():
    """TPU writes a batched matmul as a convolution with a padded window over the batch
    dims: [2,128,64] x [64,2,32] per head pair is 2·128·64·32·2·2 FLOPs, not the window's."""
    hlo = """
ENTRY %main (x: bf16[2,128,64,1], w: bf16[64,2,32,1]) -> bf16[2,128,2,32] {
  %x = bf16[2,128,64,1]{1,2,3,0:T(8,128)(2,1)} parameter(0)
  %w = bf16[64,2,32,1]{2,0,1,3:T(8,128)(2,1)} parameter(1)
  ROOT %c = bf16[2,128,2,32]{1,3,2,0:T(8,128)(2,1)} convolution(%x, %w), \
window={size=1x2 pad=0_0x1_1 rhs_reversal=0x1}, dim_labels=0bf1_i1o0->0b1f
}
""".replace("\\\n", "")
    assert hlo_stats(hlo).matmul_flops == 2 * 128 * 64 * 32 * 2 * 2


@pytest.fixture(scope="module")
def tiny_steps():
    """Stats of the tiny train step (fsdp=8, so the layers' weights are all-gathered inside
    the layer loop) with the layer stack scanned and unrolled."""
    jax.config.update("jax_threefry_partitionable", True)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
    out = {}
    for scan in (True, False):
        config = get_config("size=tiny,mode=event")
        config.batch_size = 8
        config.model.scan_layers = scan
        step = make_train_step(config, mesh)
        out[scan] = compiled_stats(step.update_fn.lower(*step.abstract_inputs).compile())
    return config, out


@pytest.mark.xdist_group("hlo_tiny_steps")  # one worker compiles them
def test_scan_layers_on_and_off_same_totals(tiny_steps):
    _, stats = tiny_steps
    scanned, unrolled = stats[True], stats[False]
    print({"scanned": scanned, "unrolled": unrolled})
    assert scanned.unknown_trip_loops == ()
    np.testing.assert_allclose(scanned.matmul_flops, unrolled.matmul_flops, rtol=0.03)
    # The gradient all-reduces sit in the backward layer loop when scanned (counted once per
    # layer they match the unrolled step's; counted once they would be ~30% short).
    assert scanned.collective_bytes["all-reduce"] > 0
    np.testing.assert_allclose(scanned.collective_bytes["all-reduce"],
                               unrolled.collective_bytes["all-reduce"], rtol=0.03)
    # The programs differ in one real way: the scanned backward loop all-gathers each layer's
    # weights again (the unrolled step keeps the forward's gathered copies), so it moves more.
    assert (scanned.collective_bytes["all-gather"]
            > 1.3 * unrolled.collective_bytes["all-gather"] > 0)


@pytest.mark.xdist_group("hlo_tiny_steps")  # one worker compiles them
def test_compiled_flops_match_analytic(tiny_steps):
    config, stats = tiny_steps
    analytic_per_device = throughput.step_flops(config) / 8
    for scan, s in stats.items():
        print(f"scan_layers={scan}: HLO {s.matmul_flops:.4g}, analytic "
              f"{analytic_per_device:.4g} FLOPs/device")
        np.testing.assert_allclose(s.matmul_flops, analytic_per_device, rtol=0.10)
