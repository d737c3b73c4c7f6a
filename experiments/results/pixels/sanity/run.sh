#!/usr/bin/env bash
# The pixels sanity run on dev scenes, as run for results.md: reach + push, recipe=pixels in
# chunk mode (scene + gripper camera, 800 and 1,500 steps) and the scene camera alone (800
# steps), each evaluated on 10 mt10_seen dev scenes per task, then the first-action probe.
# Usage: run.sh DATA_ROOT WORK_DIR
set -euo pipefail
DATA_ROOT=${1:-/tmp/pix_sanity/data}
WORK=${2:-/tmp/pix_sanity}
cd "$(dirname "$0")/../../../.."
DATASET=$(python -m data_builders.metaworld_events --data_dir "$DATA_ROOT" --config mt10 \
  --tasks reach-v3,push-v3 --episodes_per_task 30 --image_size 48 --cameras gripper \
  --action_noise 0.3 --workers 2 | tail -1)
arm() {  # NAME STEPS [CONFIG FLAGS...]
  local name=$1 steps=$2; shift 2
  python -m wallwm_jax.train --config experiments/pretrain.py:size=tiny,mode=chunk,recipe=pixels \
    --workdir "$WORK/$name/run" --config.data.data_dir="$DATASET" --config.total_steps="$steps" "$@"
  python -m wallwm_jax.evaluation --policy "$WORK/$name/run/checkpoints" --suite mt10_seen \
    --tasks reach-v3,push-v3 --episodes_per_task 10 --split dev --workers 2 --execute_steps 8 \
    --workdir "$WORK/$name/eval"
}
arm gripper_800 800
arm scene_only_800 800 --config.data.cameras='("image",)' --config.model.cameras=1
arm gripper_1500 1500 --config.eval_every_steps=1500
python experiments/results/pixels/sanity/target_probe.py "$WORK"/{gripper_800,scene_only_800,gripper_1500}/run/checkpoints
