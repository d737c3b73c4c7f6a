"""`python -m data_builders.rlds_events --source DIR --data_dir OUT --image_keys image,wrist_image
--state_key state --action_key action --gripper_index 6 --position_slice 0:3
--instruction_key language_instruction [--beam --workers 2]`

Converts an RLDS/TFDS dataset on disk (a version dir holding dataset_info.json) into
event-segmented episodes and prints the build report and the output version dir.
"""

from __future__ import annotations

import logging

from absl import flags

from data_builders.common import EmbodimentFlags, define_embodiment_flags, quiet_tfds
from data_builders.rlds_events.mapping import KeyMapping
from data_builders.rlds_events.rlds_events import build
from wallwm_jax import cli

flags.DEFINE_string("source", None, "Source TFDS version dir.", required=True)
flags.DEFINE_string("data_dir", None, "Root the converted dataset is written under.",
                    required=True)
flags.DEFINE_string("name", None, "Config name prefix (default: the source's name).")
flags.DEFINE_list("image_keys", ["image"], "Camera keys, comma-separated; the first is the "
                  "main camera.")
flags.DEFINE_string("state_key", "state", "Observation key of the robot state.")
flags.DEFINE_string("action_key", "action", "Step key of the action.")
flags.DEFINE_integer("gripper_index", None, "Index of the gripper command in the action.",
                     required=True)
flags.DEFINE_bool("gripper_open_high", False, "A high gripper command means open.")
flags.DEFINE_string("position_slice", "0:3", "START:STOP of the end-effector position in the "
                    "state.")
flags.DEFINE_string("instruction_key", "language_instruction", "Step key of the instruction.")
flags.DEFINE_string("success_key", None, "Episode key of success, if any.")
flags.DEFINE_string("task_key", None, "Episode key of the task name, if any.")
flags.DEFINE_integer("image_size", None, "Square resize (default: keep).")
flags.DEFINE_integer("smooth_steps", None, "Segmenter speed smoothing (raise it for noisy "
                     "teleop data).")
flags.DEFINE_float("val_fraction", 0.1, "Fraction of episodes in the val split.")
flags.DEFINE_integer("seed", 0, "Split seed.")
flags.DEFINE_bool("strict", False, "Fail on an invalid episode.")
flags.DEFINE_bool("beam", False, "Convert with Apache Beam.")
flags.DEFINE_integer("workers", 2, "Beam DirectRunner workers.")
define_embodiment_flags("default: the config name",
                        "Control rate in Hz (recorded in embodiment.json).")
flags.DEFINE_list("state_names", [], "Names of the state dims (default state_0, ...).")
flags.DEFINE_list("action_names", [], "Names of the action dims (default action_0, ...).")
FLAGS = flags.FLAGS


def parse_slice(text: str) -> tuple[int, int]:
    """"0:3" -> (0, 3)."""
    start, sep, stop = text.partition(":")
    if not sep or not start.strip().isdigit() or not stop.strip().isdigit():
        raise cli.UserError(f"--position_slice={text}: expected START:STOP (e.g. 0:3)")
    return int(start), int(stop)


def main(argv: list[str]) -> None:
    """Convert and print the build report and the output version dir."""
    cli.positional(argv)
    quiet_tfds()
    if not cli.verbose():  # Beam's import-time notice (no GCP client libraries) is not ours
        logging.getLogger().addFilter(cli.drop_below(logging.ERROR, "apache_beam"))
    mapping = KeyMapping(
        image_keys=tuple(k for k in FLAGS.image_keys if k),
        state_key=FLAGS.state_key, action_key=FLAGS.action_key,
        gripper_index=FLAGS.gripper_index, position_slice=parse_slice(FLAGS.position_slice),
        instruction_key=FLAGS.instruction_key, success_key=FLAGS.success_key,
        task_key=FLAGS.task_key, image_size=FLAGS.image_size,
        gripper_open_high=FLAGS.gripper_open_high,
        segmenter=(("smooth_steps", FLAGS.smooth_steps),) if FLAGS.smooth_steps else ())
    embodiment = EmbodimentFlags(
        name=FLAGS.embodiment or "", action_space=FLAGS.action_space,
        control_hz=FLAGS.control_hz, position_targets=FLAGS.position_targets,
        state_names=tuple(FLAGS.state_names), action_names=tuple(FLAGS.action_names))
    try:
        print(build(FLAGS.source, FLAGS.data_dir, mapping, name=FLAGS.name,
                    val_fraction=FLAGS.val_fraction, seed=FLAGS.seed, strict=FLAGS.strict,
                    beam=FLAGS.beam, workers=FLAGS.workers, embodiment=embodiment))
    except ValueError as err:
        raise cli.UserError(str(err)) from None


if __name__ == "__main__":
    cli.run(main)
