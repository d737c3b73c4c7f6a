"""Privileged simulator state (object and goal positions in the state vector), end to end:
the layout, the environment's observation, the builder's dataset and its record, the
pipeline's check, the model/policy shapes, the export and the evaluator."""

import json
import os

import jax
import numpy as np
import pytest

from wallwm_jax.data import tasks

pytestmark = pytest.mark.xdist_group("privileged_state")


def test_layout_is_defined_once_and_slices_the_simulator_observation():
    assert tasks.state_dim(False) == 4 and tasks.state_dim(True) == 10
    obs = np.arange(39, dtype=np.float64)
    np.testing.assert_array_equal(tasks.state_vector(obs, False), [0, 1, 2, 3])
    np.testing.assert_array_equal(tasks.state_vector(obs, True),
                                  [0, 1, 2, 3, 4, 5, 6, 36, 37, 38])
    assert tasks.state_vector(obs, True).dtype == np.float32
    names = tasks.state_names(True)
    assert len(names) == 10 and names[4] == "object_xyz[0]" and names[-1] == "goal_xyz[2]"
    record = tasks.state_record(True)
    assert record["privileged_state"] is True and record["state_dim"] == 10


def test_env_observation_carries_object_and_goal_only_when_asked():
    from wallwm_jax.envs.metaworld import MetaWorldTask

    plain = MetaWorldTask("push-v3", seed=3, image_size=16)
    priv = MetaWorldTask("push-v3", seed=3, image_size=16, privileged_state=True)
    try:
        a, b = plain.reset(), priv.reset()
        assert a["state"].shape == (4,) and b["state"].shape == (10,)
        assert plain.state_dim == 4 and priv.state_dim == 10
        np.testing.assert_allclose(b["state"][:4], a["state"])
        full = priv._obs
        np.testing.assert_allclose(b["state"][4:7], full[4:7].astype(np.float32))  # puck
        np.testing.assert_allclose(b["state"][7:], full[-3:].astype(np.float32))  # goal
        step, _ = priv.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
        assert step["state"].shape == (10,)
        np.testing.assert_allclose(step["state"][7:], b["state"][7:])  # the goal stays put
        other = MetaWorldTask("push-v3", seed=4, image_size=16, privileged_state=True)
        try:
            assert not np.allclose(other.reset()["state"][7:], b["state"][7:])
        finally:
            other.close()
    finally:
        plain.close()
        priv.close()


@pytest.fixture(scope="module")
def priv_dataset(tmp_path_factory):
    from data_builders.metaworld_events import build

    root = str(tmp_path_factory.mktemp("priv"))
    return build(root, config="demo", tasks=("reach-v3",), episodes_per_task=3, image_size=16,
                 seed=0, privileged_state=True)


def _config(dataset_dir, mode="event", privileged=True):
    from experiments.pretrain import get_config

    config = get_config(f"size=tiny,mode={mode}")
    config.data.data_dir = dataset_dir
    config.data.image_size = 16
    config.model.patch_size = 8
    config.data.privileged_state = privileged
    config.model.state_dim = tasks.state_dim(privileged)
    config.batch_size = 4
    config.data.augment.enabled = False
    return config


def test_builder_writes_privileged_state_and_records_it(priv_dataset):
    from data_builders.metaworld_events import make_config
    from wallwm_jax.data.episodes import open_dataset
    from wallwm_jax.data.statistics import load_norm_stats

    assert "-privstate" in priv_dataset
    assert "privstate" not in make_config("demo").name
    with open(os.path.join(priv_dataset, tasks.STATE_LAYOUT_FILE)) as f:
        assert json.load(f) == tasks.state_record(True)
    ep = open_dataset(priv_dataset, "train")[0]
    states = np.asarray(ep["steps/observation/state"])
    assert states.shape[1] == 10
    # reach: the goal does not move during an episode, the hand does
    np.testing.assert_allclose(states[:, 7:], np.broadcast_to(states[0, 7:], states[:, 7:].shape))
    assert np.ptp(states[:, :3], axis=0).max() > 0.01
    stats = load_norm_stats(priv_dataset)
    assert np.asarray(stats["state"]["mean"]).shape == (10,)


def test_pipeline_gives_10d_state_and_refuses_a_mismatch(priv_dataset, tiny_dataset):
    from wallwm_jax.data.pipeline import make_pipeline

    batch = next(make_pipeline(_config(priv_dataset).data, global_batch=4, seed=0))
    assert batch.obs.state.shape == (4, 10)
    with pytest.raises(ValueError, match="privileged simulator state"):
        make_pipeline(_config(priv_dataset, privileged=False).data, global_batch=4, seed=0)
    plain = _config(tiny_dataset)  # a 4-D dataset asked for privileged state
    plain.data.image_size = 32
    with pytest.raises(ValueError, match="data.privileged_state=True"):
        make_pipeline(plain.data, global_batch=4, seed=0)


def test_config_check_wants_the_state_dim_of_the_layout(priv_dataset):
    from wallwm_jax.config_check import UserError, validate

    config = _config(priv_dataset)
    validate(config, check_data=False)
    config.model.state_dim = 4
    with pytest.raises(UserError, match="state_dim=10"):
        validate(config, check_data=False)


@pytest.fixture(scope="module")
def priv_export(priv_dataset, tmp_path_factory):
    from wallwm_jax.data.statistics import load_norm_stats
    from wallwm_jax.export import export_bundle
    from wallwm_jax.models import wallwm

    config = _config(priv_dataset, mode="chunk")
    params = jax.device_get(wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    out = str(tmp_path_factory.mktemp("export") / "export")
    return export_bundle(out, params, config, load_norm_stats(priv_dataset),
                         os.path.join(priv_dataset, "tokenizer.model"))


def test_export_carries_the_state_size_to_policy_and_server(priv_export):
    from wallwm_jax import serve
    from wallwm_jax.policy import load_policy

    policy = load_policy(priv_export)
    assert policy.state_dim == 10 and policy.privileged_state
    frame = np.zeros((16, 16, 3), np.uint8)
    out = policy.act(frame, np.zeros(10, np.float32), "reach the goal")
    assert out["chunk"].shape == (32, 4)
    with pytest.raises(ValueError, match=r"expected \(10,\)"):
        policy.act(frame, np.zeros(4, np.float32), "reach the goal")
    assert serve.metadata(policy, "chunk")["observation_keys"]["observation/state"] == [10]
    with open(os.path.join(priv_export, "README.md")) as f:
        assert "privileged simulator state" in f.read()


def test_evaluator_provides_privileged_state_and_says_so(priv_export, tmp_path):
    import dataclasses

    from wallwm_jax.evaluation import suites
    from wallwm_jax.evaluation.runner import (
        EvaluationError,
        PolicySpec,
        check_actor,
        evaluate_suite,
    )
    from wallwm_jax.policy import load_policy

    policy = load_policy(priv_export)
    suite = dataclasses.replace(suites.get("demo").subset(("reach-v3",), 1), episode_limit=3)
    res = evaluate_suite(PolicySpec(priv_export), suite, str(tmp_path / "ev"), actor=policy,
                         progress=False)
    episode = res["episodes"][0]
    assert "error" not in episode, episode.get("error")  # a 4-D env state would crash act()
    assert episode["steps"] == 3
    assert res["privileged_state"] is True and res["privileged"] is True
    assert res["protocol"]["state_dims"] == policy.state_dim == 10  # what the policy was given
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert saved["split"] == "test"
    assert saved["privileged_inputs"] == ["object_goal_state"]  # chunk mode: the state only
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "privileged simulator state" in md
    assert "- privileged inputs: object and goal positions in the state vector\n" in md
    with pytest.raises(EvaluationError, match="privileged simulator state"):
        check_actor(policy, suites.get("mt50_lerobot"))
