"""`python -m data_builders.metaworld_events --data_dir DIR --config mt10 --episodes_per_task 20`

Builds (or reuses) a MetaWorld scripted-expert event dataset and prints its build report.
"""

from __future__ import annotations

from absl import flags

from data_builders.common import quiet_tfds
from data_builders.metaworld_events.metaworld_events import build
from wallwm_jax import cli

flags.DEFINE_string("data_dir", None, "Root the dataset is written under: "
                    "<data_dir>/metaworld_events/<config>/<version>.", required=True)
flags.DEFINE_string("config", "demo", "Task set: demo | mt10 | mt50.")
flags.DEFINE_integer("episodes_per_task", 10, "Expert episodes per task.")
flags.DEFINE_integer("image_size", 64, "Square image side in pixels.")
flags.DEFINE_integer("seed", 0, "First rollout seed.")
flags.DEFINE_integer("workers", 1, "Parallel rollout processes.")
flags.DEFINE_list("tasks", [], "Subset of the config's tasks (comma-separated).")
flags.DEFINE_list("cameras", [], "Extra cameras, e.g. gripper (comma-separated).")
flags.DEFINE_bool("keep_failures", False, "Keep failed expert episodes.")
flags.DEFINE_bool("strict", False, "Fail on an invalid episode.")
flags.DEFINE_bool("privileged_state", False, "Store privileged simulator state: object and "
                  "goal positions after the 4-D agent state (10-D steps/observation/state).")
flags.DEFINE_float("action_noise", 0.0, "DART: perturb executed actions by N(0, noise^2); the "
                   "recorded actions stay the expert's.")
flags.DEFINE_enum("camera_setup", "ours", ["ours", "lerobot"], "Scene camera: ours (corner2 "
                  "upright where MetaWorld puts it) or lerobot (the view the mt50_lerobot "
                  "evaluation suite renders).")
flags.DEFINE_bool("step_store", False, "Also write the step store: raw frames readable one "
                  "step at a time (fast reads of a dataset larger than the sampler's cache; "
                  "~1.5x the dataset's bytes more). Adds it to an existing build too.")
flags.DEFINE_integer("end_frame_size", 0, "With --step_store: also store each event's end "
                     "frame resized to this side, the world size of the models that read it "
                     "(data.world_size, 16 in the recipes): the sampler then reads it instead "
                     "of resizing a frame. 0: none.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    """Build and print the dataset's version directory."""
    cli.positional(argv)
    if FLAGS.end_frame_size < 0 or (FLAGS.end_frame_size and not FLAGS.step_store):
        raise cli.UserError("--end_frame_size takes a positive side and needs --step_store")
    quiet_tfds()
    path = build(FLAGS.data_dir, config=FLAGS.config, episodes_per_task=FLAGS.episodes_per_task,
                 image_size=FLAGS.image_size, seed=FLAGS.seed, num_workers=FLAGS.workers,
                 tasks=tuple(FLAGS.tasks) or None,
                 cameras=tuple(c for c in FLAGS.cameras if c),
                 keep_failures=FLAGS.keep_failures, strict=FLAGS.strict,
                 privileged_state=FLAGS.privileged_state, action_noise=FLAGS.action_noise,
                 camera_setup=FLAGS.camera_setup, step_store=FLAGS.step_store,
                 end_frame_size=FLAGS.end_frame_size)
    print(path)


if __name__ == "__main__":
    cli.run(main)
