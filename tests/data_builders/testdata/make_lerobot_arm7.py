"""Write tests/data_builders/testdata/lerobot_arm7 with lerobot's own dataset writer.

    python -m venv /tmp/lerobot && /tmp/lerobot/bin/pip install lerobot==0.4.4
    /tmp/lerobot/bin/python tests/data_builders/testdata/make_lerobot_arm7.py

A second robot for mixture tests (a MetaWorld Sawyer is the first): a scripted 6-joint arm with
a gripper, 14-D state (7 joint positions, 7 joint velocities), 7-D absolute joint-position
actions (6 joints + gripper), two 32x32 cameras stored as images, 15 fps, three episodes,
LeRobot v3.0 layout on disk.
"""

import os
import shutil

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lerobot_arm7")
JOINTS = [f"joint_{i}" for i in range(6)] + ["gripper"]
IMAGE = {"dtype": "image", "shape": (32, 32, 3), "names": ["height", "width", "channels"]}
FEATURES = {
    "observation.images.top": IMAGE,
    "observation.images.wrist": IMAGE,
    "observation.state": {"dtype": "float32", "shape": (14,),
                          "names": [f"{j}.pos" for j in JOINTS] + [f"{j}.vel" for j in JOINTS]},
    "action": {"dtype": "float32", "shape": (7,), "names": [f"{j}.pos" for j in JOINTS]},
}
TASKS = ("reach the goal point", "press the button", "push the puck to the goal")


def scripted_episode(rng: np.random.Generator, n: int = 30):
    """Joints moving toward a random pose, then the gripper closing: states [n, 14] (position,
    velocity) and actions [n, 7] (the next joint positions)."""
    goal = np.r_[rng.uniform(-1.0, 1.0, 6), 0.0]
    q = np.zeros(7)
    states, actions = [], []
    for t in range(n):
        target = goal.copy()
        target[6] = 0.0 if t < 20 else 1.0
        nxt = q + np.clip(target - q, -0.1, 0.1)
        states.append(np.r_[q, (nxt - q) * 15.0].astype(np.float32))
        actions.append(nxt.astype(np.float32))
        q = nxt
    return np.stack(states), np.stack(actions)


def frame(state: np.ndarray, shade: int) -> np.ndarray:
    """A 32x32 picture: a bar per joint whose length is the joint's position."""
    image = np.full((32, 32, 3), shade, np.uint8)
    for j in range(7):
        length = int(np.clip((state[j] + 1.0) / 2.0, 0, 1) * 31) + 1
        image[4 * j:4 * j + 3, :length] = (255 - shade, 40 * j, 128)
    return image


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ds = LeRobotDataset.create(repo_id="wallwm/lerobot_arm7", fps=15, features=FEATURES,
                               root=ROOT, robot_type="arm7", use_videos=False)
    rng = np.random.default_rng(0)
    for task in TASKS:
        states, actions = scripted_episode(rng)
        for s, a in zip(states, actions, strict=True):
            ds.add_frame({"observation.images.top": frame(s, 30),
                          "observation.images.wrist": frame(s, 220),
                          "observation.state": s, "action": a, "task": task})
        ds.save_episode()
    ds.finalize()
    print(ROOT)


if __name__ == "__main__":
    main()
