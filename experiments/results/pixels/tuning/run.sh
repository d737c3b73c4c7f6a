#!/usr/bin/env bash
# Tuning recipe=pixels on dev scenes (issue 28 §2), as run for results.md: reach + push, 100
# expert episodes per task built with the fixed reset frame, chunk mode. Each arm trains, then
# the first-action probe (sanity/target_probe.py, 20 dev scenes per task) gates a closed-loop
# run on 10 mt10_seen dev scenes per task.
# Usage: run.sh DATA_ROOT WORK_DIR [ARM...]   (arms: base keypoints_pixel keypoints_patch ...)
set -euo pipefail
DATA_ROOT=${1:-/tmp/pix_data}
WORK=${2:-/tmp/pix_work}
shift 2 || true
cd "$(dirname "$0")/../../../.."
DATASET=$(python -m data_builders.metaworld_events --data_dir "$DATA_ROOT" --config mt10 \
  --tasks reach-v3,push-v3 --episodes_per_task 100 --image_size 48 --cameras gripper \
  --action_noise 0.3 --workers 2 | tail -1)

train() {  # NAME STEPS [CONFIG FLAGS...]
  local name=$1 steps=$2; shift 2
  python -m wallwm_jax.train --config experiments/pretrain.py:size=tiny,mode=chunk,recipe=pixels \
    --workdir "$WORK/$name/run" --config.data.data_dir="$DATASET" --config.total_steps="$steps" \
    --config.eval_every_steps="$steps" "$@"
}
probe() {  # NAME
  python experiments/results/pixels/sanity/target_probe.py "$WORK/$1/run/checkpoints" \
    | tee "$WORK/$1/probe.jsonl"
}
closed_loop() {  # NAME
  python -m wallwm_jax.evaluation --policy "$WORK/$1/run/checkpoints" --suite mt10_seen \
    --tasks reach-v3,push-v3 --episodes_per_task 10 --split dev --workers 2 --execute_steps 8 \
    --workdir "$WORK/$1/eval"
}
arm() {  # NAME STEPS [CONFIG FLAGS...]: train, probe, closed loop
  train "$@"; probe "$1"; closed_loop "$1"
}
for a in "${@:-base keypoints_pixel}"; do
  case $a in
    base) arm base 1500 ;;
    keypoints_pixel) arm keypoints_pixel 1500 --config.model.vision_readout=pixel_keypoints ;;
    keypoints_patch) arm keypoints_patch 1500 --config.model.vision_readout=patch_keypoints ;;
    *) echo "error: unknown arm $a" >&2; exit 2 ;;
  esac
done
