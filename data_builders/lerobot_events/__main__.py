"""`python -m data_builders.lerobot_events --source LEROBOT_ROOT --data_dir OUT
--image_keys observation.images.top,observation.images.wrist --state_key observation.state
--action_key action --gripper_index 3 --position_slice 0:3`

Converts a LeRobot v3 dataset on disk into event-segmented episodes; prints the build report
and the output version dir. TFDS's progress bars and log lines only with `--verbosity=0`.
"""

from __future__ import annotations

from absl import flags

from data_builders.common import EmbodimentFlags, define_embodiment_flags, quiet_tfds
from data_builders.rlds_events import KeyMapping
from wallwm_jax import cli

flags.DEFINE_string("source", None, "LeRobot dataset root (holds meta/info.json).")
flags.DEFINE_string("data_dir", None, "Where lerobot_events/<config>/1.0.0 is written.")
flags.DEFINE_string("name", None, "Config name prefix (default: the source dir name).")
flags.DEFINE_list("image_keys", ["observation.images.top"], "Camera keys; the first is main.")
flags.DEFINE_string("state_key", "observation.state", "State feature.")
flags.DEFINE_string("action_key", "action", "Action feature.")
flags.DEFINE_integer("gripper_index", -1, "Column of the gripper command in the action.")
flags.DEFINE_bool("gripper_open_high", False, "A high gripper command means open.")
flags.DEFINE_string("position_slice", "0:3", "End-effector xyz columns START:STOP of state.")
flags.DEFINE_string("instruction_key", "task", "Instruction: LeRobot's task text by default.")
flags.DEFINE_integer("image_size", None, "Square resize (default: keep the source size).")
flags.DEFINE_float("val_fraction", 0.1, "Episodes carved out as the val split.")
flags.DEFINE_integer("seed", 0, "Seed of the val split.")
flags.DEFINE_bool("strict", False, "Fail on an invalid episode instead of excluding it.")
define_embodiment_flags("default: info.json's robot_type",
                        "Control rate (default: info.json's fps).")


def main(argv: list[str]) -> None:
    """Parse flags and convert."""
    from data_builders.lerobot_events.lerobot_events import build

    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    fl = flags.FLAGS
    quiet_tfds()  # our build report says what happened; TFDS's bars and notices with --verbosity
    start, sep, stop = fl.position_slice.partition(":")
    if not (sep and start.isdigit() and stop.isdigit()):
        cli.fail(f"--position_slice {fl.position_slice!r}: expected START:STOP (e.g. 0:3)")
    mapping = KeyMapping(image_keys=tuple(fl.image_keys), state_key=fl.state_key,
                         action_key=fl.action_key, gripper_index=fl.gripper_index,
                         position_slice=(int(start), int(stop)),
                         instruction_key=fl.instruction_key, image_size=fl.image_size,
                         gripper_open_high=fl.gripper_open_high)
    embodiment = EmbodimentFlags(name=fl.embodiment or "", action_space=fl.action_space,
                                 control_hz=fl.control_hz, position_targets=fl.position_targets)
    try:
        print(build(fl.source, fl.data_dir, mapping, name=fl.name, val_fraction=fl.val_fraction,
                    seed=fl.seed, strict=fl.strict, embodiment=embodiment))
    except ValueError as err:
        cli.fail(str(err))


if __name__ == "__main__":
    flags.mark_flags_as_required(["source", "data_dir"])
    cli.run(main)
