"""Write tests/data_builders/testdata/lerobot_tiny_video with lerobot's own dataset writer.

    python -m venv /tmp/lerobot && /tmp/lerobot/bin/pip install lerobot==0.4.4
    /tmp/lerobot/bin/python tests/data_builders/testdata/make_lerobot_tiny_video.py

The episodes of make_lerobot_tiny.py, but the two 32x32 cameras are video features: lerobot's
defaults (`use_videos=True`, libsvtav1 AV1, yuv420p, crf 30), both episodes concatenated in
one mp4 per camera, as most LeRobot datasets store cameras. AV1 at crf 30 is lossy, so the
frames the writer was given are kept beside the dataset in source_frames.npz
({camera key: [episodes * frames, 32, 32, 3] uint8}) for the decoding test to compare against.
"""

import os
import shutil

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from make_lerobot_tiny import FEATURES, scripted_episode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "lerobot_tiny_video")
SOURCE_FRAMES = os.path.join(HERE, "lerobot_tiny_video_frames.npz")
CAMERAS = {"observation.images.top": 40, "observation.images.wrist": 200}  # key -> shade
VIDEO_FEATURES = {k: {**v, "dtype": "video"} if k in CAMERAS else v
                  for k, v in FEATURES.items()}


def video_frame(state: np.ndarray, t: int, shade: int) -> np.ndarray:
    """A 32x32 picture: an 8x8 block where the gripper is (brighter when closed) and a band
    whose row gives t mod 8, so neighbouring frames differ even while the arm stands still
    (the test checks each decoded frame is nearer its own source frame than the next)."""
    image = np.full((32, 32, 3), shade, np.uint8)
    image[4 * (t % 8):4 * (t % 8) + 4] = 255 - shade
    x, y = (np.clip((state[:2] + 0.3) / 0.6, 0, 1) * 24).astype(int)
    image[y:y + 8, x:x + 8] = (230, int(130 + 90 * state[3]), 60)
    return image


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ds = LeRobotDataset.create(repo_id="wallwm/lerobot_tiny_video", fps=10,
                               features=VIDEO_FEATURES, root=ROOT, robot_type="scripted_arm",
                               use_videos=True)
    rng = np.random.default_rng(0)
    given: dict[str, list[np.ndarray]] = {k: [] for k in CAMERAS}
    for task in ("pick up the red block", "pick up the blue block"):
        states, actions = scripted_episode(rng)
        for t, (s, a) in enumerate(zip(states, actions, strict=True)):
            images = {k: video_frame(s, t, shade) for k, shade in CAMERAS.items()}
            for k, image in images.items():
                given[k].append(image)
            ds.add_frame({**images, "observation.state": s, "action": a, "task": task})
        ds.save_episode()
    ds.finalize()
    np.savez_compressed(SOURCE_FRAMES, **{k: np.stack(v) for k, v in given.items()})
    print(ROOT, SOURCE_FRAMES)


if __name__ == "__main__":
    main()
