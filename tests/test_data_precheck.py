"""The dataset is checked against the config before anything compiles: cameras, image size,
privileged state and state/action widths come from the dataset's metadata, and a mismatch is
one line naming the config field and value and the dataset and what it stores, from
`config_check.validate` (what the train CLI and `train_and_evaluate` run first)."""

import os
import subprocess
import sys

import ml_collections
import pytest

from data_builders.lerobot_events import build as build_lerobot
from data_builders.rlds_events.mapping import KeyMapping
from tests.configs import tiny_config
from wallwm_jax import config_check
from wallwm_jax.cli import UserError
from wallwm_jax.data.checks import dataset_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEROBOT_TINY = os.path.join(REPO, "tests", "data_builders", "testdata", "lerobot_tiny")


@pytest.fixture(scope="module")
def two_camera_dataset(tmp_path_factory):
    """The committed LeRobot test data converted with both cameras (image, image_wrist)."""
    mapping = KeyMapping(image_keys=("observation.images.top", "observation.images.wrist"),
                         state_key="observation.state", action_key="action", gripper_index=3,
                         instruction_key="task")
    return build_lerobot(LEROBOT_TINY, str(tmp_path_factory.mktemp("lerobot")), mapping)


def _refused(config) -> str:
    with pytest.raises(UserError) as err:
        config_check.validate(config)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_metadata_says_what_the_dataset_stores(tiny_dataset, two_camera_dataset):
    tiny = dataset_spec(tiny_dataset)
    assert (tiny.cameras, tiny.state_dim, tiny.action_dim, tiny.privileged_state) == (
        {"image": (32, 32, 3)}, 4, 4, False)
    two = dataset_spec(two_camera_dataset)
    assert sorted(two.cameras) == ["image", "image_wrist"] and two.privileged_state is None


@pytest.mark.parametrize("edit,want", [
    (lambda c: c.model.update(state_dim=7),
     "config.model.state_dim=7 but the dataset at data.data_dir='{ds}' stores 4-D states"),
    (lambda c: c.model.update(action_dim=6),
     "config.model.action_dim=6 but the dataset at data.data_dir='{ds}' stores 4-D actions"),
    (lambda c: c.data.update(image_size=48),
     "config.data.image_size=48 (model.image_size=48) but the dataset at "
     "data.data_dir='{ds}' stores 32x32x3 frames in steps/observation/image; "
     "set --config.data.image_size=32"),
    # model.image_size is a reference to data.image_size: setting it sets both
    (lambda c: c.model.update(image_size=64), "config.data.image_size=64 (model.image_size=64)"),
    (lambda c: (c.data.update(cameras=("image", "image_wrist")), c.model.update(cameras=2)),
     "config.data.cameras=('image', 'image_wrist') but the dataset at data.data_dir='{ds}' "
     "has no camera 'image_wrist' (its cameras: ('image',))"),
    (lambda c: (c.data.update(privileged_state=True), c.model.update(state_dim=10)),
     "config.data.privileged_state=True but the dataset at data.data_dir='{ds}' stores no "
     "privileged simulator state"),
], ids=["state_dim", "action_dim", "data.image_size", "model.image_size", "cameras",
        "privileged_state"])
def test_a_mismatch_is_one_line_naming_both_values(tiny_dataset, edit, want):
    config = tiny_config(tiny_dataset)
    config_check.validate(config)  # the unedited config fits
    edit(config)
    assert want.format(ds=tiny_dataset) in _refused(config)


def test_model_image_size_apart_from_the_data_is_refused(tiny_dataset):
    # A config whose references were resolved (e.g. rebuilt from a dict) can disagree.
    config = ml_collections.ConfigDict(tiny_config(tiny_dataset).to_dict())
    config.model.image_size = 64
    assert "config.model.image_size=64 but config.data.image_size=32" in _refused(config)


def test_every_mixture_entry_is_checked(tiny_dataset, two_camera_dataset):
    config = tiny_config(tiny_dataset)
    config.data.mixture = ((two_camera_dataset, 1.0), (tiny_dataset, 1.0))
    config_check.validate(config)  # one camera: both fit
    # A mixture may lack any camera but the first (a masked slot); the first must be in all.
    config.data.cameras = ("image_wrist", "image")
    config.model.cameras = 2
    message = _refused(config)  # the first entry has both cameras; the second does not
    assert f"the dataset at data.mixture[1]='{tiny_dataset}' has no camera 'image_wrist'" \
        in message


def test_train_and_evaluate_refuses_before_making_the_workdir(tiny_dataset, tmp_path):
    from wallwm_jax.train import train_and_evaluate

    config = tiny_config(tiny_dataset)
    config.model.action_dim = 6
    with pytest.raises(UserError, match="config.model.action_dim=6"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written, nothing compiled


def test_train_cli_exits_before_compiling(tiny_dataset, tmp_path):
    workdir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "wallwm_jax.train", "--config",
         "experiments/pretrain.py:size=tiny,mode=event", "--workdir", str(workdir),
         f"--config.data.data_dir={tiny_dataset}", "--config.data.image_size=32",
         "--config.model.state_dim=7"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stderr.splitlines() == [
        f"error: config.model.state_dim=7 but the dataset at data.data_dir='{tiny_dataset}' "
        f"stores 4-D states (steps/observation/state); set --config.model.state_dim=4"]
    assert "compiling" not in out.stdout and not workdir.exists()
