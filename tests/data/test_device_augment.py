"""Augmentation on the accelerator (`data.augment.placement=device`): the device's crops and
jitter are the host's for the same parameters, its parameters follow the host's distributions,
and the train step applies them on the 8-device mesh with the step's key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wallwm_jax.data import augment as host
from wallwm_jax.data import device_augment as device


@pytest.mark.parametrize("size", [32, 57])
def test_a_crop_lands_where_the_host_puts_it(size):
    """For the same (top, left, height, width) box the device's resized crop is PIL's, bit for
    bit: from area fractions of 5% (a large upscale) to 100%, at an even and an odd size."""
    frame = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    boxes = [host.crop_box(size, size, np.random.default_rng(s), scale=(0.05, 1.0))
             for s in range(24)] + [(0, 0, size, size)]
    got = np.asarray(device.resized_crop(jnp.asarray(np.stack([frame] * len(boxes))),
                                         jnp.asarray(boxes)))
    for box, out in zip(boxes, got, strict=True):
        np.testing.assert_array_equal(out, host.resized_crop(frame, box), err_msg=str(box))
    np.testing.assert_array_equal(got[-1], frame)  # the whole frame: unchanged


def test_jitter_is_the_host_formula():
    """Same factors, same frame: equal to within one grey level, on all but a few pixels
    (float32 sums that round a tie apart); saturated pixels clip alike."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 24, 24, 3), dtype=np.uint8)
    frames[:, :4] = 255
    factors = rng.uniform(0.6, 1.4, (12, 3))
    got = np.asarray(device.apply_jitter(jnp.asarray(frames), jnp.asarray(factors, jnp.float32)))
    want = np.stack([host.apply_jitter(f, *k) for f, k in zip(frames, factors, strict=True)])
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3
    assert not np.array_equal(got, frames)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, "right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, "right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def test_parameters_follow_the_host_distributions():
    """8,000 draws each: crop heights, widths, positions and the jitter factors of the device
    have the host's distributions (two-sample KS statistic below 0.035, where a rejection at
    the 0.1% level starts at 0.031 for samples this size and a 0.7 scale instead of 0.6 gives
    about 0.2), within the same bounds."""
    n, size, scale, amount = 8000, 48, 0.6, 0.3
    rng = np.random.default_rng(0)
    host_boxes = np.asarray([host.crop_box(size, size, rng, scale=(scale, 1.0))
                             for _ in range(n)])
    host_jitter = np.asarray([host.jitter_factors(rng, amount, amount, amount)
                              for _ in range(n)])
    k_crop, k_jitter = jax.random.split(jax.random.PRNGKey(0))
    dev_boxes = np.asarray(device.crop_boxes(k_crop, n, size, size, scale))
    dev_jitter = np.asarray(device.jitter_factors(k_jitter, n, amount))
    for j, name in enumerate(("top", "left", "height", "width")):
        assert _ks(host_boxes[:, j], dev_boxes[:, j]) < 0.035, name
        assert dev_boxes[:, j].min() >= host_boxes[:, j].min() - 1, name
        assert dev_boxes[:, j].max() <= host_boxes[:, j].max() + 1, name
    assert np.all(dev_boxes[:, 0] + dev_boxes[:, 2] <= size)
    assert np.all(dev_boxes[:, 1] + dev_boxes[:, 3] <= size)
    for j in range(3):
        assert _ks(host_jitter[:, j], dev_jitter[:, j]) < 0.035
    assert dev_jitter.min() >= 1 - amount and dev_jitter.max() <= 1 + amount
    wider = np.asarray(device.crop_boxes(k_crop, n, size, size, 0.7))
    assert _ks(host_boxes[:, 2], wider[:, 2]) > 0.1  # the statistic sees a wrong scale


def test_every_camera_of_every_sample_gets_its_own_draw():
    """[B, C, H, W, 3] keeps its shape; one key gives one result, another key another; frames
    that were equal come out different; nothing enabled is the identity."""
    frames = np.broadcast_to(np.random.default_rng(0).integers(0, 256, (1, 1, 16, 16, 3),
                                                               dtype=np.uint8), (3, 2, 16, 16, 3))
    key = jax.random.PRNGKey(1)
    out = np.asarray(device.augment_images(jnp.asarray(frames), key, crop_scale=0.7,
                                           jitter=0.2))
    assert out.shape == frames.shape and out.dtype == np.uint8
    flat = out.reshape(6, -1)
    assert len({row.tobytes() for row in flat}) == 6
    np.testing.assert_array_equal(out, device.augment_images(jnp.asarray(frames), key,
                                                             crop_scale=0.7, jitter=0.2))
    assert not np.array_equal(out, device.augment_images(
        jnp.asarray(frames), jax.random.PRNGKey(2), crop_scale=0.7, jitter=0.2))
    np.testing.assert_array_equal(device.augment_images(jnp.asarray(frames), key,
                                                        crop_scale=1.0, jitter=0.0), frames)


def test_placement_is_checked(tiny_config):
    from wallwm_jax import cli, config_check

    tiny_config.data.augment.placement = "gpu"
    with pytest.raises(cli.UserError, match="config.data.augment.placement='gpu': expected one "
                       "of 'host', 'device'"):
        config_check.validate(tiny_config, check_data=False)


def test_train_step_augments_on_the_mesh(tiny_config):
    """placement=device: the pipeline ships the frames as they are, and the train step on the
    8-device mesh crops and jitters them with a key of its step: its loss is the model's loss
    on `augment_batch(batch, fold_in(PRNGKey(seed), step))`, not the loss on the frames as
    shipped (one train step compiled; the references are forward passes on one device)."""
    from wallwm_jax import sharding
    from wallwm_jax.data.pipeline import make_pipeline
    from wallwm_jax.models import wallwm
    from wallwm_jax.train_step import make_train_step

    config = tiny_config
    config.data.augment.placement = "device"
    config.model.depth = config.model.vit_depth = 1  # what is tested is the step's input
    raw = config.copy_and_resolve_references()
    raw.data.augment.enabled = False
    shipped = next(make_pipeline(config.data, global_batch=8, seed=0))
    plain = next(make_pipeline(raw.data, global_batch=8, seed=0))
    np.testing.assert_array_equal(shipped.obs.image, plain.obs.image)  # not augmented

    mesh = sharding.make_mesh(config.mesh)
    assert mesh.devices.size == 8
    step = make_train_step(config, mesh)
    params, state = step.init_fn(jax.random.PRNGKey(0))
    weights = jax.device_get(params)  # the update donates params
    batch = sharding.global_batch(shipped, mesh, config.sharding_rules)
    _, _, metrics = step.update_fn(params, state, batch, step.run_inputs)

    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)  # step 0's key
    loss = jax.jit(lambda p, b: wallwm.compute_loss(config.model, p, b, rng, train=True)[0])
    local = jax.tree.map(jnp.asarray, shipped)
    augmented = device.augment_batch(local, rng, config.data.augment)
    assert not np.array_equal(augmented.obs.image, shipped.obs.image)
    want, unaugmented = float(loss(weights, augmented)), float(loss(weights, local))
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
    assert abs(want - unaugmented) > 1e-3 * abs(want)
