"""Newton–Schulz: singular values land in the quintic's band and the result is close to U·Vᵀ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wallwm_jax.optim.newton_schulz import NS_PRESETS, ns_schedule, orthogonalize


def _random(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("shape", [(256, 1024), (1024, 256)])
def test_quintic_band_and_polar_factor(shape, dtype):
    x = _random(shape)
    o = orthogonalize(x, ns_schedule("quintic", 5), dtype=dtype)
    assert o.shape == shape and o.dtype == jnp.float32
    s = np.linalg.svd(np.asarray(o, np.float64), compute_uv=False)
    slack = 0.02 if dtype == "bfloat16" else 0.0  # the band is about 0.68–1.134 in exact math
    assert 0.67 - slack <= s.min() and s.max() <= 1.14 + slack, (s.min(), s.max())
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    assert _cosine(o, u @ vt) > 0.98


def test_polar_express_is_closer_to_polar_factor():
    x = _random((128, 384), seed=1)
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    pe = orthogonalize(x, ns_schedule("polar_express", 5), dtype="float32")
    s = np.linalg.svd(np.asarray(pe, np.float64), compute_uv=False)
    assert 0.85 < s.min() and s.max() < 1.15, (s.min(), s.max())
    quintic = orthogonalize(x, ns_schedule("quintic", 5), dtype="float32")
    assert _cosine(pe, u @ vt) > _cosine(quintic, u @ vt)


def test_batch_axes_and_transpose_symmetry():
    x = _random((3, 48, 16), seed=2)
    sched = ns_schedule(NS_PRESETS["quintic"], 5)
    batched = orthogonalize(x, sched, dtype="float32")
    for i in range(3):
        np.testing.assert_allclose(batched[i], orthogonalize(x[i], sched, dtype="float32"),
                                   atol=1e-6)
        np.testing.assert_allclose(batched[i].T, orthogonalize(x[i].T, sched, dtype="float32"),
                                   atol=1e-6)


def test_zero_matrix_stays_zero():
    o = orthogonalize(jnp.zeros((8, 16)), ns_schedule("quintic", 5))
    assert np.all(np.asarray(o) == 0)


def test_schedule_repeats_last_and_rejects_unknown_preset():
    assert ns_schedule((1.0, 2.0, 3.0), 3) == ((1.0, 2.0, 3.0),) * 3
    assert len(ns_schedule("polar_express", 10)) == 10
    with pytest.raises(ValueError, match="ns_coeffs='cubic'"):
        ns_schedule("cubic", 5)
