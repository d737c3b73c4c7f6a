"""Every builder writes embodiment.json: MetaWorld knows its own, the LeRobot converter reads
names and rate from info.json, the RLDS converter takes them from its flags."""

import json
import os
import subprocess
import sys

from data_builders.lerobot_events.lerobot_events import build as build_lerobot
from data_builders.rlds_events import KeyMapping
from wallwm_jax.data.embodiment import read_embodiment

HERE = os.path.dirname(os.path.abspath(__file__))
TFRECORD_SOURCE = os.path.join(HERE, "testdata", "rlds_tfrecord_tiny", "1.0.0")


def test_metaworld_builder_knows_its_robot(tiny_dataset):
    emb = read_embodiment(tiny_dataset)
    assert (emb.name, emb.action_space, emb.control_hz) == ("metaworld_sawyer", "delta_ee", 80.0)
    assert emb.state_names == ("hand_xyz[0]", "hand_xyz[1]", "hand_xyz[2]", "gripper")
    assert emb.action_names == ("hand_dx", "hand_dy", "hand_dz", "gripper")
    assert emb.cameras == {"image": (32, 32)} and emb.hand_position == (0, 3)
    assert (emb.gripper_index, emb.gripper_convention) == (3, "close_high")


def test_lerobot_converter_reads_names_and_rate_from_info_json(tmp_path):
    mapping = KeyMapping(image_keys=("observation.images.top",), state_key="observation.state",
                         action_key="action", gripper_index=3, instruction_key="task")
    out = build_lerobot(os.path.join(HERE, "testdata", "lerobot_tiny"), str(tmp_path), mapping)
    emb = read_embodiment(out)
    assert emb.name == "scripted_arm" and emb.control_hz == 10.0  # robot_type, fps
    assert emb.state_names == ("x", "y", "z", "gripper")
    assert emb.action_names == ("dx", "dy", "dz", "gripper")
    assert emb.action_space == "delta_ee" and emb.hand_position is None  # not asked for
    assert emb.cameras == {"image": (32, 32)}


def test_rlds_converter_takes_the_embodiment_from_flags(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "data_builders.rlds_events", "--source", TFRECORD_SOURCE,
         "--data_dir", str(tmp_path), "--image_keys", "image", "--state_key", "state",
         "--action_key", "action", "--gripper_index", "6", "--position_slice", "0:3",
         "--instruction_key", "language_instruction", "--embodiment", "oxe_arm",
         "--control_hz", "5", "--position_targets"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert run.returncode == 0, run.stderr
    record = json.load(open(os.path.join(run.stdout.strip().splitlines()[-1],
                                         "embodiment.json")))
    assert record["name"] == "oxe_arm" and record["control_hz"] == 5.0
    assert record["action_space"] == "delta_ee" and record["hand_position"] == [0, 3]
    assert record["gripper_index"] == 6 and list(record["cameras"]) == ["image"]
    refused = subprocess.run(
        [sys.executable, "-m", "data_builders.rlds_events", "--source", TFRECORD_SOURCE,
         "--data_dir", str(tmp_path / "b"), "--image_keys", "image", "--gripper_index", "6",
         "--instruction_key", "language_instruction", "--action_space", "joint_velocity",
         "--position_targets"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: --position_targets: position targets need action_space 'delta_ee' (actions "
        "0-2 move the hand), not 'joint_velocity'; leave the hand position unset for this "
        "dataset"]
