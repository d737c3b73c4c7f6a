"""Analytic train-step FLOPs agree with XLA's cost analysis; table of params/FLOPs per size.

XLA's cost analysis counts a while loop's body once, so the comparison uses the unrolled layer
layout (`scan_layers=False`, the same math as the scanned one). Run with `-s` for the table.
"""

import jax
import numpy as np
import pytest

from experiments.pretrain import get_config
from wallwm_jax.models import wallwm
from wallwm_jax.models.flops import forward_flops, train_step_flops


def _xla_train_step_flops(cfg, batch):
    params = jax.eval_shape(lambda: wallwm.init_params(cfg, jax.random.key(0)))
    grad = jax.grad(lambda p: wallwm.compute_loss(cfg, p, batch, jax.random.key(1))[0])
    cost = jax.jit(grad).lower(params).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


@pytest.mark.parametrize("variant", ["tiny", "tiny_unified", "small_depth2",
                                     "tiny_2cams_keypoints_stem_aux"])
def test_analytic_flops_match_xla(variant, batch_factory):
    arg = {"tiny": "size=tiny", "tiny_unified": "size=tiny,mode=unified",
           "small_depth2": "size=small", "tiny_2cams_keypoints_stem_aux": "size=tiny"}[variant]
    cfg = get_config(arg).model
    if variant == "tiny_2cams_keypoints_stem_aux":  # attention per camera; keypoint tokens
        cfg.cameras, cfg.vision_readout = 2, "pixel_keypoints"  # reach the backbone; the conv
        cfg.vision_stem, cfg.aux_action_weight = "conv", 1.0  # stem (~10% of this step's
        # FLOPs: left out, the ratio falls to ~0.88); the auxiliary head (0.08%, for the sum)
    if variant == "small_depth2":
        cfg.depth, cfg.vit_depth = 2, 2
    cfg.scan_layers = False
    batch = batch_factory(cfg, batch_size=4)
    analytic = train_step_flops(cfg, 4, instruction_len=batch.obs.instruction.shape[1],
                                caption_len=batch.obs.caption.shape[2],
                                num_captions=batch.obs.caption.shape[1])
    xla = _xla_train_step_flops(cfg, batch)
    print(f"\n{variant}: analytic {analytic:.4g} FLOPs, XLA {xla:.4g} "
          f"(ratio {analytic / xla:.3f})")
    assert abs(analytic / xla - 1.0) < 0.10, (analytic, xla)


def test_flops_scale_with_batch_and_sequence(tiny_cfg):
    kw = dict(instruction_len=8, caption_len=6)
    one = train_step_flops(tiny_cfg, 1, **kw)
    np.testing.assert_allclose(train_step_flops(tiny_cfg, 8, **kw), 8 * one, rtol=1e-12)
    longer = forward_flops(tiny_cfg, 1, instruction_len=8, caption_len=60)
    shorter = forward_flops(tiny_cfg, 1, **kw)
    assert longer["vit"] == shorter["vit"]
    for part in ("backbone", "attention", "heads"):
        assert longer[part] > shorter[part], part


def _params_by_part(cfg):
    shapes = jax.eval_shape(lambda: wallwm.init_params(cfg, jax.random.key(0)))
    decoder = shapes["decoder"]
    layers = decoder["layers"]
    parts = {"vit": wallwm.count_params(shapes["vit"]),
             "backbone": wallwm.count_params(layers["backbone"])
             + wallwm.count_params(shapes["embedder"])
             + wallwm.count_params(decoder["backbone_norm"]),
             "expert": wallwm.count_params(layers["action_expert"])
             + wallwm.count_params(decoder["action_expert_norm"])}
    parts["total"] = wallwm.count_params(shapes)
    return parts


def test_print_params_and_flops_table():
    rows = []
    for size in ("tiny", "small", "base", "large"):
        config = get_config(f"size={size}")
        cfg, b = config.model, config.batch_size
        params = _params_by_part(cfg)
        assert params["total"] >= params["vit"] + params["backbone"] + params["expert"]
        step = train_step_flops(cfg, b, instruction_len=config.data.instruction_len,
                                caption_len=config.data.caption_len)
        rows.append((size, params, step, b))
    totals = [r[1]["total"] for r in rows]
    assert totals == sorted(totals) and [r[2] for r in rows] == sorted(r[2] for r in rows)
    print(f"\n{'size':<6} {'ViT':>10} {'backbone':>10} {'expert':>10} {'total':>10} "
          f"{'TFLOP/step':>11} {'GFLOP/example':>14}   (image 64px, Li=Lc=32, Tmax=32)")
    for size, p, step, b in rows:
        print(f"{size:<6} {p['vit'] / 1e6:>9.3f}M {p['backbone'] / 1e6:>9.3f}M "
              f"{p['expert'] / 1e6:>9.3f}M {p['total'] / 1e6:>9.3f}M {step / 1e12:>11.4f} "
              f"{step / b / 1e9:>14.2f}   (batch {b})")
