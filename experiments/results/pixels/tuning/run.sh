#!/usr/bin/env bash
# Tuning recipe=pixels on dev scenes (issue 28 §2), as run for results.md: reach + push, 100
# expert episodes per task built with the fixed reset frame, chunk mode. Each arm trains, then
# the first-action probe (sanity/target_probe.py, 20 dev scenes per task, one sample and the
# mean of 8) gates a closed-loop run on 10 mt10_seen dev scenes per task: only an arm with an
# R² > 0 runs it. Arms in the order run (keypoints_pixel_3000 continues keypoints_pixel).
# Usage: run.sh DATA_ROOT WORK_DIR [ARM...]
#   (arms: base keypoints_pixel keypoints_pixel_3000 keypoints_patch; default the first three)
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
  for k in 1 8; do
    python experiments/results/pixels/sanity/target_probe.py "$WORK/$1/run/checkpoints" \
      --samples "$k"
  done | tee "$WORK/$1/probe.jsonl"
}
closed_loop() {  # NAME: only when some R² of the probe is > 0
  python -c 'import json, sys; sys.exit(not any(v is not None and v > 0 for l in open(sys.argv[1])
                                               for v in json.loads(l)["r2_xy"]))' \
    "$WORK/$1/probe.jsonl" || { echo "$1: probe R² <= 0, no closed loop"; return 0; }
  python -m wallwm_jax.evaluation --policy "$WORK/$1/run/checkpoints" --suite mt10_seen \
    --tasks reach-v3,push-v3 --episodes_per_task 10 --split dev --workers 2 --execute_steps 8 \
    --workdir "$WORK/$1/eval"
}
arm() {  # NAME STEPS [CONFIG FLAGS...]: train, probe, closed loop
  train "$@"; probe "$1"; closed_loop "$1"
}
KEYPOINTS=--config.model.vision_readout=pixel_keypoints
for a in ${@:-base keypoints_pixel keypoints_pixel_3000}; do
  case $a in
    base) arm base 1500 ;;
    keypoints_pixel) arm keypoints_pixel 1500 "$KEYPOINTS" ;;
    # 1,500 more steps from keypoints_pixel's last checkpoint (the LR schedule starts again)
    keypoints_pixel_3000) arm keypoints_pixel_3000 1500 "$KEYPOINTS" \
      --config.init_from="$WORK/keypoints_pixel/run/checkpoints" ;;
    keypoints_patch) arm keypoints_patch 1500 --config.model.vision_readout=patch_keypoints ;;
    *) echo "error: unknown arm $a" >&2; exit 2 ;;
  esac
done
