"""Write tests/data_builders/testdata/rlds_tfrecord_tiny with real TFDS, as Open X-Embodiment
ships it (TFRecord), then convert it in place with the real `tfds convert_format`.

    python3 -m venv /work/venv-tf
    /work/venv-tf/bin/pip install tensorflow==2.21.0 tensorflow-datasets==4.9.10 \\
        apache-beam==2.78.0 mlcroissant==1.1.1
    /work/venv-tf/bin/python tests/data_builders/testdata/make_rlds_tfrecord_tiny.py

Four episodes of an OXE-style arm (state = xyz, 4 joints, gripper; action = vxyz, 3 rotation,
gripper command): move right, stop and close the gripper, lift. One 16x16 PNG camera. The
steps as written go to rlds_tfrecord_tiny_expected.npz (TFDS shuffles on write, so they are
keyed by `episode_metadata/episode_index`). The dataset_info.json TFDS wrote before the
conversion must equal the converted one less `alternativeFileFormats` (checked here), which is
why the tests derive the TFRecord-only state from the converted one instead of a second copy.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow_datasets as tfds

HERE = os.path.dirname(os.path.abspath(__file__))
NAME, VERSION_DIR = "rlds_tfrecord_tiny", "1.0.0"
OUT = os.path.join(HERE, NAME, VERSION_DIR)
EXPECTED = os.path.join(HERE, f"{NAME}_expected.npz")
N_EPISODES, T, STOP_AT, CLOSE_AT, LIFT_AT, SIZE = 4, 30, 10, 15, 20, 16


def episode(i: int) -> dict:
    """+x motion [0, 10), still [10, 20) with the gripper closing at 15, +z motion [20, 30)."""
    rng = np.random.default_rng(i)
    action = np.zeros((T, 7), np.float32)
    action[:STOP_AT, 0] = 0.02 * (1 + 0.1 * i)
    action[LIFT_AT:, 2] = 0.03
    action[:, 3:6] = rng.normal(0, 1e-4, (T, 3))
    action[CLOSE_AT:, 6] = 1.0
    state = np.zeros((T, 8), np.float32)
    state[:, :3] = np.cumsum(np.r_[rng.normal(0, 0.1, (1, 3)), action[:-1, :3]], 0)
    state[:, 3:7] = rng.normal(0, 1, (T, 4))
    state[:, 7] = action[:, 6]
    image = (np.arange(T)[:, None, None, None] * 8
             + rng.integers(0, 9, (1, SIZE, SIZE, 3))).astype(np.uint8)
    return {"episode_metadata": {"episode_index": i}, "steps": {
        "observation": {"image": image, "state": state},
        "action": action, "language_instruction": [f"pick up block {i % 3}"] * T,
        "is_first": np.arange(T) == 0, "is_last": np.arange(T) == T - 1,
        "is_terminal": np.arange(T) == T - 1}}


class RldsTfrecordTiny(tfds.core.GeneratorBasedBuilder):
    """A tiny Open X-Embodiment style RLDS dataset (train split only)."""

    VERSION = tfds.core.Version(VERSION_DIR)
    RELEASE_NOTES = {VERSION_DIR: "Test data for data_builders.rlds_events."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "steps": tfds.features.Dataset({
                "observation": {
                    "image": tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="png"),
                    "state": tfds.features.Tensor(shape=(8,), dtype=np.float32)},
                "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                "language_instruction": tfds.features.Text(),
                "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_}),
            "episode_metadata": {"episode_index": np.int32}}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N_EPISODES):
            yield f"episode_{i}", episode(i)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        builder = RldsTfrecordTiny(data_dir=tmp)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
        version_dir = os.fspath(builder.data_dir)
        assert builder.info.file_format.value == "tfrecord", builder.info.file_format
        before = json.load(open(os.path.join(version_dir, "dataset_info.json")))
        # The conversion exactly as docs/rlds.md writes it (in place).
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "tfds"),
                        "convert_format", f"--dataset_version_dir={version_dir}",
                        "--out_file_format=array_record"], check=True)
        after = json.load(open(os.path.join(version_dir, "dataset_info.json")))
        assert after["fileFormat"] == "tfrecord", after["fileFormat"]
        assert after.pop("alternativeFileFormats") == ["array_record"]
        assert after == before, (before, after)
        shutil.rmtree(os.path.dirname(OUT), ignore_errors=True)
        shutil.copytree(version_dir, OUT)
    steps = {}
    for i in range(N_EPISODES):
        ep = episode(i)["steps"]
        steps.update({f"{i}/action": ep["action"], f"{i}/state": ep["observation"]["state"],
                      f"{i}/image": ep["observation"]["image"],
                      f"{i}/instruction": np.array(ep["language_instruction"][0])})
    np.savez_compressed(EXPECTED, **steps)
    for name in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(os.path.join(OUT, name)):8d}  {name}")


if __name__ == "__main__":
    main()
