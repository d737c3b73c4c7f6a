"""Write tests/data_builders/testdata/lerobot_tiny with lerobot's own dataset writer.

    python -m venv /tmp/lerobot && /tmp/lerobot/bin/pip install lerobot==0.4.4
    /tmp/lerobot/bin/python tests/data_builders/testdata/make_lerobot_tiny.py

Two episodes of a scripted 4-D arm (xyz + gripper) reaching, grasping and lifting, two 32x32
cameras stored as images (`use_videos=False`; make_lerobot_tiny_video.py writes the same kind
of episodes with video cameras), LeRobot v3.0 layout on disk.
"""

import os
import shutil

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lerobot_tiny")
FEATURES = {
    "observation.images.top": {"dtype": "image", "shape": (32, 32, 3),
                               "names": ["height", "width", "channels"]},
    "observation.images.wrist": {"dtype": "image", "shape": (32, 32, 3),
                                 "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": (4,),
                          "names": ["x", "y", "z", "gripper"]},
    "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "gripper"]},
}


def scripted_episode(rng: np.random.Generator, n: int = 30):
    """States/actions of reach (to a random target), close the gripper, lift."""
    target = np.r_[rng.uniform(-0.2, 0.2, 2), 0.05]
    pos, gripper, states, actions = np.array([0.0, 0.0, 0.3]), -1.0, [], []
    for t in range(n):
        if t < 12:
            delta, cmd = np.clip(target - pos, -0.05, 0.05), -1.0
        elif t < 18:
            delta, cmd = np.zeros(3), 1.0
        else:
            delta, cmd = np.array([0.0, 0.0, 0.03]), 1.0
        states.append(np.r_[pos, gripper].astype(np.float32))
        actions.append(np.r_[delta / 0.05, cmd].astype(np.float32))
        pos, gripper = pos + delta, gripper + 0.5 * (cmd - gripper)
    return np.stack(states), np.stack(actions)


def frame(state: np.ndarray, shade: int) -> np.ndarray:
    """A 32x32 picture with a square where the gripper is."""
    image = np.full((32, 32, 3), shade, np.uint8)
    x, y = (np.clip((state[:2] + 0.3) / 0.6, 0, 1) * 28).astype(int)
    image[y:y + 4, x:x + 4] = (255, int(127 * (state[3] + 1)), 0)
    return image


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ds = LeRobotDataset.create(repo_id="wallwm/lerobot_tiny", fps=10, features=FEATURES,
                               root=ROOT, robot_type="scripted_arm", use_videos=False)
    rng = np.random.default_rng(0)
    for task in ("pick up the red block", "pick up the blue block"):
        states, actions = scripted_episode(rng)
        for s, a in zip(states, actions, strict=True):
            ds.add_frame({"observation.images.top": frame(s, 40),
                          "observation.images.wrist": frame(s, 200),
                          "observation.state": s, "action": a, "task": task})
        ds.save_episode()
    ds.finalize()
    print(ROOT)


if __name__ == "__main__":
    main()
