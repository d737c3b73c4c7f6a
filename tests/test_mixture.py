"""Pretraining on a mixture of robots: a 4-D MetaWorld dataset and a 7-D action / 14-D state /
two-camera LeRobot v3 dataset (tests/data_builders/testdata/lerobot_arm7, written by lerobot's
own writer) train together under the 8 fake devices; padded dims are not learnt; one tokenizer;
the export serves each robot in its own width and units; resume is bitwise; mismatches are
refused before training. One mixture run (module fixture) serves every assertion."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_builders.common import EmbodimentFlags
from data_builders.lerobot_events.lerobot_events import build as build_lerobot
from data_builders.rlds_events import KeyMapping
from wallwm_jax.cli import UserError
from wallwm_jax.data.embodiment import read_embodiment
from wallwm_jax.data.pipeline import make_pipeline
from wallwm_jax.data.tokenizer import UNK_ID, Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARM7 = os.path.join(REPO, "tests", "data_builders", "testdata", "lerobot_arm7")
ARM7_MAPPING = KeyMapping(image_keys=("observation.images.top", "observation.images.wrist"),
                          state_key="observation.state", action_key="action",
                          gripper_index=6, gripper_open_high=False, instruction_key="task")
STEPS = 4

pytestmark = pytest.mark.xdist_group("mixture")


@pytest.fixture(scope="module")
def arm7(tmp_path_factory):
    """lerobot_arm7 converted: joint-position actions, no position targets."""
    return build_lerobot(ARM7, str(tmp_path_factory.mktemp("arm7")), ARM7_MAPPING,
                         embodiment=EmbodimentFlags(name="arm7", action_space="joint_position"))


def _mixture_config(tiny_dataset, arm7):
    from tests.configs import tiny_config

    config = tiny_config(tiny_dataset)
    config.data.mixture = ((tiny_dataset, 1.0), (arm7, 1.0))
    config.data.cameras = ("image", "image_wrist")
    config.model.cameras = 2
    config.model.state_dim, config.model.action_dim = 14, 7
    config.data.balance_alpha = None
    config.data.augment.enabled = False
    config.total_steps = STEPS
    config.checkpoint.every_steps = 2
    config.checkpoint.async_save = False
    return config


@pytest.fixture(scope="module")
def mixture(tiny_dataset, arm7, tmp_path_factory):
    """One straight run of the mixture, one stopped at step 2 and resumed, and the export."""
    from wallwm_jax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("mixture")
    config = _mixture_config(tiny_dataset, arm7)
    straight = train_and_evaluate(config, str(root / "straight"))
    first = train_and_evaluate(config, str(root / "stopped"), stop_after=2)
    resumed = train_and_evaluate(config, str(root / "stopped"))
    run = subprocess.run([sys.executable, "-m", "wallwm_jax.export", "--checkpoint_dir",
                          str(root / "straight" / "checkpoints"), "--out", str(root / "export")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    export = run.stdout.strip().splitlines()[-1]
    return {"config": config, "straight": straight, "first": first, "resumed": resumed,
            "export": export, "root": root}


def test_mixture_trains_on_8_devices_and_resume_is_bitwise(mixture):
    assert jax.device_count() == 8
    straight, resumed = mixture["straight"], mixture["resumed"]
    assert mixture["first"]["last_step"] == 2 and resumed["first_step"] == 2
    assert straight["last_step"] == resumed["last_step"] == STEPS
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(straight["params"]),
                                 jax.tree_util.tree_leaves_with_path(resumed["params"]),
                                 strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))
    names = [e.name for e, _ in straight["embodiments"]]
    assert names == ["metaworld_sawyer", "arm7"]
    widths = [(len(s["state"]["mean"]), len(s["action"]["mean"]))
              for _, s in straight["embodiments"]]
    assert widths == [(4, 4), (14, 7)]  # each robot keeps its own statistics


def test_closed_loop_during_training_runs_the_simulators_robot(tiny_dataset, arm7, tmp_path):
    """The in-training closed loop of a mixture acts as the MetaWorld robot: its statistics,
    4-D actions and its one camera (the arm's wrist camera is not asked of the simulator)."""
    from wallwm_jax.train import train_and_evaluate
    from wallwm_jax.train_log import read_metrics

    config = _mixture_config(tiny_dataset, arm7)
    config.total_steps, config.checkpoint.every_steps = 1, 1
    config.eval.closed_loop.update(suite="demo", tasks=("reach-v3",), episodes_per_task=1,
                                   every_steps=1)
    train_and_evaluate(config, str(tmp_path))
    (results,) = [os.path.join(d, "results.json") for d, _, files in os.walk(tmp_path)
                  if "results.json" in files and "closed_loop" in d]
    with open(results) as f:
        episodes = json.load(f)["episodes"]
    assert len(episodes) == 1 and "error" not in episodes[0], episodes
    rows = [r for r in read_metrics(str(tmp_path)) if "closed_loop/demo/overall" in r]
    assert rows and rows[-1]["closed_loop/demo/overall"] == float(episodes[0]["success"])


def test_loss_counts_only_real_dims_and_masked_camera(mixture):
    from wallwm_jax.models import wallwm

    config = mixture["config"]
    pipe = make_pipeline(config.data, global_batch=16, seed=3, widths=(14, 7),
                         tokenizer_path=mixture["straight"]["tokenizer_path"])
    batch = next(pipe)
    obs = batch.obs
    dims = np.asarray(obs.action_dim_mask)
    sawyer = ~dims[:, 4]
    assert sawyer.any() and (~sawyer).any(), "the batch should hold both robots"
    np.testing.assert_array_equal(np.asarray(obs.state_mask)[sawyer].sum(1), 4)
    np.testing.assert_array_equal(np.asarray(obs.camera_mask)[sawyer],
                                  [[True, False]] * int(sawyer.sum()))
    np.testing.assert_array_equal(np.asarray(obs.camera_mask)[~sawyer], True)
    np.testing.assert_array_equal(np.asarray(batch.actions)[sawyer][..., 4:], 0.0)

    params, rng = mixture["straight"]["params"], jax.random.PRNGKey(0)
    loss = jax.jit(lambda p, b: wallwm.compute_loss(config.model, p, b, rng)[0])
    base = np.asarray(loss(params, batch))
    # Padded targets, padded state and the missing camera's pixels: the loss does not move.
    acts, state, image = (np.array(batch.actions), np.array(obs.state), np.array(obs.image))
    acts[sawyer, :, 4:] = 123.0
    state[sawyer, 4:] = -7.0
    image[sawyer, 1] = 255
    changed = batch.replace(actions=acts, obs=obs.replace(state=state, image=image))
    assert np.asarray(loss(params, changed)).tobytes() == base.tobytes()
    # A real dim does move it (the check can fail).
    acts[sawyer, :, 0] += 1.0
    assert np.asarray(loss(params, batch.replace(actions=acts))) != base


def test_one_tokenizer_for_the_mixture(mixture, tiny_dataset, arm7):
    path = mixture["straight"]["tokenizer_path"]
    assert os.path.dirname(path) == str(mixture["root"] / "straight")
    config = mixture["config"]
    pipe = make_pipeline(config.data, global_batch=8, seed=0, tokenizer_path=path,
                         widths=(14, 7))
    assert {s.tokenizer_path for s in pipe.samplers} == {path}
    tok = Tokenizer(path)
    # "goal" is in both datasets' texts: one id, and every text of either encodes without UNK.
    ids = [s.io.instruction("reach the goal point") for s in pipe.samplers]
    np.testing.assert_array_equal(ids[0], ids[1])
    for sampler in pipe.samplers:
        ep = sampler.source[0]
        for text in (ep["episode_metadata/instruction"], *ep["events/caption"]):
            assert UNK_ID not in tok.encode(text, 64), text
    # The dataset's own tokenizers disagree (why one is needed).
    own = [Tokenizer(os.path.join(d, "tokenizer.model")) for d in (tiny_dataset, arm7)]
    assert [t.encode("goal", 4).tolist() for t in own][0] != \
        [t.encode("goal", 4).tolist() for t in own][1]
    # It travels with the checkpoint.
    with open(path, "rb") as a, open(os.path.join(mixture["export"], "tokenizer.model"),
                                     "rb") as b:
        assert a.read() == b.read()


CLIENT = r"""
import json, sys
import numpy as np
from websockets.sync.client import connect
from wallwm_jax.serve_messages import packb, unpackb

port = int(sys.argv[1])
rng = np.random.default_rng(0)
obs = {"observation/image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
       "observation/image_wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
       "observation/state": np.linspace(-1, 1, 14).astype(np.float32),
       "prompt": "reach the goal point", "caption": "move the gripper to the goal"}
with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
    meta = unpackb(ws.recv())
    ws.send(packb(obs))
    reply = unpackb(ws.recv())
print(json.dumps({"metadata": meta, "actions": np.asarray(reply["actions"]).tolist()}))
"""


def test_export_serves_each_embodiment_in_its_own_width(mixture, tmp_path):
    from wallwm_jax.policy import load_policy
    from wallwm_jax.serve import request_key, warm_up

    export = mixture["export"]
    assert set(json.load(open(os.path.join(export, "embodiments.json")))) == {
        "metaworld_sawyer", "arm7"}
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "wallwm_jax.serve", "--policy", export, "--port", str(port),
         "--host", "127.0.0.1", "--embodiment", "arm7", "--max_batch", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "listening" not in line:
            line = server.stdout.readline()
            assert line or server.poll() is None, "server exited before listening"
        run = subprocess.run([sys.executable, "-c", CLIENT, str(port)], capture_output=True,
                             text=True, timeout=300, cwd=REPO)
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=60)
    meta = out["metadata"]
    assert meta["embodiment"] == "arm7" and meta["action_dim"] == 7
    assert meta["embodiments"] == {
        "metaworld_sawyer": {"action_dim": 4, "state_dim": 4, "cameras": ["image"]},
        "arm7": {"action_dim": 7, "state_dim": 14, "cameras": ["image", "image_wrist"]}}
    assert meta["observation_keys"]["observation/state"] == [14]
    actions = np.asarray(out["actions"], np.float32)
    assert actions.ndim == 2 and actions.shape[1] == 7
    policy = load_policy(export, embodiment="arm7")
    warm_up(policy, policy.mode)
    rng = np.random.default_rng(0)
    frames = {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
              "image_wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}
    want = policy.act(frames, np.linspace(-1, 1, 14).astype(np.float32),
                      "reach the goal point", "move the gripper to the goal",
                      rng=request_key(0, 0, 0))["actions"]  # the server's first request's key
    np.testing.assert_allclose(actions, want, atol=1e-6)
    # The other robot, in its own width and with its own statistics.
    sawyer = load_policy(export, embodiment="metaworld_sawyer")
    assert sawyer.cameras == ("image",) and sawyer.action_dim == 4
    out = sawyer.act(frames["image"], np.zeros(4, np.float32), "reach the goal point",
                     "move the gripper to the goal")
    assert out["actions"].shape[1] == 4
    known = {e.name: s for e, s in mixture["straight"]["embodiments"]}
    np.testing.assert_array_equal(sawyer.norm_stats["action"]["mean"], np.asarray(
        known["metaworld_sawyer"]["action"]["mean"], np.float32))
    with pytest.raises(ValueError, match="knows embodiment"):
        load_policy(export, embodiment="nope")
    # The MetaWorld evaluation picks the Sawyer, whatever the mixture's order.
    from wallwm_jax.evaluation.runner import PolicySpec, load_actor

    assert load_actor(PolicySpec(path=export)).embodiment.name == "metaworld_sawyer"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metadata_that_disagrees_with_the_config_is_refused_before_training(
        tiny_dataset, arm7, tmp_path):
    """The CLI users run: one line naming the field, exit 2, before any compile."""
    tampered = tmp_path / "arm7"
    shutil.copytree(arm7, tampered)
    record = json.loads((tampered / "embodiment.json").read_text())
    record["state_names"] = record["state_names"][:13]
    (tampered / "embodiment.json").write_text(json.dumps(record))
    base = [sys.executable, "-m", "wallwm_jax.train", "--workdir", str(tmp_path / "run"),
            "--config", "experiments/pretrain.py:size=tiny,mode=event",
            "--config.data.image_size=32", "--config.model.cameras=2",
            "--config.data.cameras=('image','image_wrist')", "--config.model.state_dim=14"]
    cases = [
        ([f"--config.data.mixture=(('{tiny_dataset}',1.0),('{tampered}',1.0))",
          "--config.model.action_dim=7"],
         f"{tampered}/embodiment.json: field 'state_names' names 13 dims but the dataset "
         f"stores 14"),
        ([f"--config.data.mixture=(('{tiny_dataset}',1.0),('{arm7}',1.0))",
          "--config.model.action_dim=4"],
         "config.model.action_dim=4 but the dataset at data.mixture[1]="),
        ([f"--config.data.data_dir={arm7}", "--config.model.action_dim=7",
          "--config.data.action_target_gain=8.0"],
         "config.data.action_target_gain=8.0 but the dataset at data.data_dir="),
    ]
    for extra, message in cases:
        run = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
            run.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_converter_refuses_position_targets_for_joint_actions(tmp_path):
    with pytest.raises(ValueError, match="--position_targets: position targets need "
                                         "action_space 'delta_ee'"):
        build_lerobot(ARM7, str(tmp_path), ARM7_MAPPING, embodiment=EmbodimentFlags(
            name="arm7", action_space="joint_position", position_targets=True))


def test_init_from_refuses_another_tokenizer_and_finetune_uses_the_exports(
        mixture, tiny_dataset):
    """`init_from` with the pretraining config on one dataset: the run's tokenizer is the
    dataset's, not the export's -> one line saying how; experiments/finetune.py sets it."""
    from experiments.finetune import get_config as finetune_config
    from tests.configs import tiny_config
    from wallwm_jax.train import train_and_evaluate

    export = mixture["export"]
    config = tiny_config(tiny_dataset)
    config.init_from = export
    config.model.state_dim, config.model.action_dim = 14, 7
    config.model.cameras, config.data.cameras = 2, ("image", "image_wrist")
    config.data.embodiment_masks = True
    with pytest.raises(UserError, match=r"set --config.data.tokenizer=.*tokenizer.model"):
        train_and_evaluate(config, str(mixture["root"] / "init_from"))
    ft = finetune_config(f"export={export},data={tiny_dataset}")
    assert ft.data.tokenizer == os.path.join(export, "tokenizer.model")
    assert ft.data.norm_stats == os.path.join(export, "embodiments.json")
    assert ft.data.embodiment_masks and ft.data.mixture == ()
    pipe = make_pipeline(ft.data, global_batch=8, seed=0,
                         widths=(ft.model.state_dim, ft.model.action_dim))
    known = {e.name: s for e, s in mixture["straight"]["embodiments"]}
    np.testing.assert_array_equal(pipe.norm_stats["action"]["mean"],
                                  np.asarray(known["metaworld_sawyer"]["action"]["mean"],
                                             np.float32))
    assert read_embodiment(tiny_dataset).name == "metaworld_sawyer"
    batch = next(pipe)
    assert batch.actions.shape[-1] == 7
    assert not np.asarray(batch.obs.action_dim_mask)[:, 4:].any()


def test_resume_refuses_a_tokenizer_the_checkpoints_did_not_learn(mixture, tiny_dataset,
                                                                  tmp_path):
    from wallwm_jax.train import train_and_evaluate

    workdir = tmp_path / "stopped"
    shutil.copytree(mixture["root"] / "stopped", workdir)
    shutil.copy(os.path.join(tiny_dataset, "tokenizer.model"), workdir / "tokenizer.model")
    with pytest.raises(UserError, match=r"step 4 was trained with the tokenizer in its assets "
                                        r".*; resume with --config.data.tokenizer="):
        train_and_evaluate(mixture["config"], str(workdir))
