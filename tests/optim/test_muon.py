"""Muon against an independent NumPy reference, AdamW group against optax, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wallwm_jax.optim import muon

QUINTIC = (3.4445, -4.775, 2.0315)


# --- Reference, written from the published algorithm: W has shape (out, in). -----------------
def ref_newton_schulz(g, steps=5, eps=1e-7):
    x = g.astype(np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / max(np.linalg.norm(x), eps)
    a, b, c = QUINTIC
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def ref_muon_step(w, g, m, *, lr, beta, wd, adjust_lr):
    m = beta * m + (1 - beta) * g
    u = (1 - beta) * g + beta * m
    out_dim, in_dim = w.shape
    scale = {"original": max(1, out_dim / in_dim) ** 0.5,
             "match_rms_adamw": 0.2 * max(out_dim, in_dim) ** 0.5, None: 1.0}[adjust_lr]
    w = w * (1 - lr * wd) - lr * scale * ref_newton_schulz(u)
    return w, m


SHAPES = {"tall": (48, 16), "wide": (16, 40), "square": (24, 24)}  # Flax (in, out)


@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw", None])
def test_matches_numpy_reference_for_30_steps(adjust_lr):
    rng = np.random.default_rng(0)
    params = {name: {"kernel": rng.normal(size=s).astype(np.float32) * 0.1}
              for name, s in SHAPES.items()}
    grads = [{n: {"kernel": rng.normal(size=s).astype(np.float32)} for n, s in SHAPES.items()}
             for _ in range(30)]
    schedule = optax.linear_schedule(0.02, 0.005, 30)
    tx = muon(schedule, momentum=0.9, weight_decay=0.1, adjust_lr=adjust_lr, ns_dtype="float32")
    step = jax.jit(tx.update)
    p, state = jax.tree.map(jnp.asarray, params), tx.init(params)
    for g in grads:
        updates, state = step(g, state, p)
        p = optax.apply_updates(p, updates)

    for name in SHAPES:  # the reference sees W = kernelᵀ, (out, in)
        w = params[name]["kernel"].T.astype(np.float64)
        m = np.zeros_like(w)
        for t, g in enumerate(grads):
            w, m = ref_muon_step(w, g[name]["kernel"].T, m, lr=float(schedule(t)), beta=0.9,
                                 wd=0.1, adjust_lr=adjust_lr)
        got = np.asarray(p[name]["kernel"], np.float64).T
        rel = np.linalg.norm(got - w) / np.linalg.norm(w)
        assert rel <= 1e-5, (name, rel)


def test_adamw_group_matches_optax_adamw():
    rng = np.random.default_rng(1)
    params = {"norm": {"scale": rng.normal(size=(8,)).astype(np.float32)},
              "token_embed": {"embedding": rng.normal(size=(10, 8)).astype(np.float32)}}
    kw = dict(b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05)
    ours = muon(1e-2, **{f"adam_{k}": v for k, v in kw.items()})
    ref = optax.adamw(1e-2, **kw)
    p1, s1 = params, ours.init(params)
    p2, s2 = params, ref.init(params)
    for _ in range(5):
        g = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = ref.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p1, p2)


def test_state_is_params_shaped():
    params = {"a": {"kernel": jnp.ones((4, 6))}, "b": {"bias": jnp.ones((6,))}}
    state = muon(0.01).init(params)
    assert jax.tree.map(jnp.shape, state.mu) == jax.tree.map(jnp.shape, params)
    assert state.nu["b"]["bias"].shape == (6,)
    assert isinstance(state.nu["a"]["kernel"], optax.MaskedNode)


@pytest.mark.parametrize("kwargs, match", [
    (dict(adjust_lr="spectral"), "adjust_lr='spectral'"),
    (dict(learning_rate=-1e-3), "learning_rate=-0.001"),
    (dict(learning_rate=optax.constant_schedule(-1.0)), "learning_rate=-1.0"),
    (dict(momentum=-0.1), "momentum=-0.1"),
    (dict(momentum=1.0), "momentum=1.0"),
    (dict(weight_decay=-0.01), "weight_decay=-0.01"),
    (dict(adam_weight_decay=-1.0), "adam_weight_decay=-1.0"),
    (dict(ns_dtype="float16"), "ns_dtype='float16'"),
    (dict(ns_coeffs="cubic"), "ns_coeffs='cubic'"),
    (dict(rules=((r"kernel$", "sgd"),)), "group 'sgd'"),
])
def test_bad_config_fails_at_construction(kwargs, match):
    kwargs = {"learning_rate": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=match):
        muon(**kwargs)


def test_muon_rule_on_a_vector_fails_naming_the_parameter():
    logical = {"encoder": {"norm": {"scale": ("embed",)},
                           "mlp": {"kernel": ("embed", "mlp")}}}
    rules = ((r"norm/scale$", "muon"), (r"kernel$", "muon"), (r".*", "adamw"))
    with pytest.raises(ValueError, match="'encoder/norm/scale'"):
        muon(1e-3, rules=rules, logical_axes=logical)
    with pytest.raises(ValueError, match="'encoder/norm/scale'"):  # no logical axes: at init
        muon(1e-3, rules=rules).init({"encoder": {"norm": {"scale": jnp.ones(4)},
                                                  "mlp": {"kernel": jnp.ones((4, 4))}}})


def test_orbax_saves_and_restores_the_state(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    params = {"a": {"kernel": jnp.ones((4, 6))}, "b": {"bias": jnp.ones((6,))}}
    tx = muon(0.01)
    _, state = tx.update(params, tx.init(params), params)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "state", jax.eval_shape(tx.init, params))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    jax.tree.map(np.testing.assert_array_equal, restored, state)
