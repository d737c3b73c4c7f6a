"""The pixel diagnosis's read-outs (experiments/results/pixels/diagnosis/aux_readout): the aux
head's actions are what the model's training forward computes for the same observation, and
the scene-blind control shows the policy one fixed frame per task."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wallwm_jax.data.statistics import load_norm_stats
from wallwm_jax.models import wallwm
from wallwm_jax.policy import Policy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "experiments", "results", "pixels", "diagnosis", "aux_readout",
                      "aux_readout.py")


@pytest.fixture(scope="module")
def readout():
    spec = importlib.util.spec_from_file_location("aux_readout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def policy(tiny_dataset):
    from experiments.pretrain import get_config

    config = get_config("size=tiny,mode=chunk")
    config.data.data_dir = tiny_dataset
    config.data.image_size = 32
    config.model.aux_action_weight = 1.0
    config.model.aux_action_steps = 2
    params = wallwm.init_params(config.model, jax.random.PRNGKey(3))
    return Policy(params, config, load_norm_stats(tiny_dataset),
                  os.path.join(tiny_dataset, "tokenizer.model")), params


def _frame(seed):
    return np.random.default_rng(seed).integers(0, 256, (40, 36, 3), np.uint8)


def test_aux_readout_is_the_training_forwards_aux_head(policy, readout):
    policy, params = policy
    state = np.array([0.1, 0.6, 0.2, 0.5], np.float32)
    got = readout.AuxReadout(policy).act(_frame(0), state, "push the puck", mode="chunk")
    obs = policy.observation(_frame(0), state, "push the puck", mode="chunk")
    cfg = policy.config.model
    x_t = jnp.zeros((1, policy.config.data.max_event_len, cfg.action_dim))
    out = wallwm.WallWM(cfg).apply({"params": params}, obs, x_t, jnp.full((1,), 0.5))
    want = policy.io.actions(np.asarray(out["aux_actions"])[0])
    assert got["actions"].shape == (2, 4)
    np.testing.assert_allclose(got["actions"], want, rtol=1e-5, atol=1e-5)
    other = readout.AuxReadout(policy).act(_frame(1), state, "push the puck", mode="chunk")
    assert np.abs(other["actions"] - got["actions"]).max() > 1e-4  # it reads the image


def test_scene_blind_shows_the_first_frame_per_task(policy, readout):
    policy, _ = policy
    head = readout.AuxReadout(policy)
    blind = readout.SceneBlind(head)
    state = np.array([0.1, 0.6, 0.2, 0.5], np.float32)
    first = blind.act(_frame(0), state, "push the puck", mode="chunk")["actions"]
    later = blind.act(_frame(1), state, "push the puck", mode="chunk")["actions"]
    np.testing.assert_array_equal(later, first)  # frame 1 replaced by push's first frame
    own = blind.act(_frame(1), state, "reach the goal", mode="chunk")["actions"]
    np.testing.assert_array_equal(
        own, head.act(_frame(1), state, "reach the goal", mode="chunk")["actions"])


def test_a_policy_without_the_head_is_refused(tiny_dataset, readout):
    from experiments.pretrain import get_config

    config = get_config("size=tiny,mode=chunk")
    config.data.data_dir = tiny_dataset
    config.data.image_size = 32
    params = wallwm.init_params(config.model, jax.random.PRNGKey(0))
    plain = Policy(params, config, load_norm_stats(tiny_dataset),
                   os.path.join(tiny_dataset, "tokenizer.model"))
    with pytest.raises(ValueError, match="no auxiliary action head"):
        readout.AuxReadout(plain)
