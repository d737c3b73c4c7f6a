"""`python -m data_builders.rlds_events --source DIR --data_dir OUT --image_keys image,wrist_image
--state_key state --action_key action --gripper_index 6 --position_slice 0:3
--instruction_key language_instruction [--beam --workers 2]`

Converts an RLDS/TFDS dataset on disk (a version dir holding dataset_info.json) into
event-segmented episodes and prints the build report and the output version dir.
"""

from __future__ import annotations

import argparse

from data_builders.rlds_events.mapping import KeyMapping
from data_builders.rlds_events.rlds_events import build


def parse_slice(text: str) -> tuple[int, int]:
    """"0:3" -> (0, 3)."""
    start, sep, stop = text.partition(":")
    if not sep or not start or not stop:
        raise argparse.ArgumentTypeError(f"expected START:STOP (e.g. 0:3), got {text!r}")
    return int(start), int(stop)


def main(argv: list[str] | None = None) -> None:
    """Parse flags and convert."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, help="source TFDS version dir")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--name", default=None, help="config name prefix (default: source name)")
    p.add_argument("--image_keys", default="image", help="comma-separated; the first is main")
    p.add_argument("--state_key", default="state")
    p.add_argument("--action_key", default="action")
    p.add_argument("--gripper_index", type=int, required=True)
    p.add_argument("--gripper_open_high", action="store_true",
                   help="a high gripper command means open")
    p.add_argument("--position_slice", type=parse_slice, default=(0, 3))
    p.add_argument("--instruction_key", default="language_instruction")
    p.add_argument("--success_key", default=None)
    p.add_argument("--task_key", default=None)
    p.add_argument("--image_size", type=int, default=None, help="square resize (default: keep)")
    p.add_argument("--smooth_steps", type=int, default=None,
                   help="segmenter speed smoothing (raise it for noisy teleop data)")
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail on an invalid episode")
    p.add_argument("--beam", action="store_true", help="convert with Apache Beam")
    p.add_argument("--workers", type=int, default=2, help="Beam DirectRunner workers")
    a = p.parse_args(argv)
    mapping = KeyMapping(
        image_keys=tuple(k for k in a.image_keys.split(",") if k), state_key=a.state_key,
        action_key=a.action_key, gripper_index=a.gripper_index,
        position_slice=a.position_slice, instruction_key=a.instruction_key,
        success_key=a.success_key, task_key=a.task_key, image_size=a.image_size,
        gripper_open_high=a.gripper_open_high,
        segmenter=(("smooth_steps", a.smooth_steps),) if a.smooth_steps else ())
    print(build(a.source, a.data_dir, mapping, name=a.name, val_fraction=a.val_fraction,
                seed=a.seed, strict=a.strict, beam=a.beam, workers=a.workers))


if __name__ == "__main__":
    main()
