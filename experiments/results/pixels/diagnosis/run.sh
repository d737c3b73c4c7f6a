#!/usr/bin/env bash
# Why the pixel policy cannot see (issue 28 §2), as run for results.md. Dev only: frames of
# the builder's training scenes (seed 0) and held-out scenes (seed 1), the policy probe on
# mt10_seen's dev scenes; never mt10_seen's test.
# 1. Can the vision tower localise? Tower + linear head regress the privileged object/goal
#    positions (the diagnostic's target only) or the expert's action offset from the images.
# 2. The lever tried: a policy whose tower starts from the offset-regression tower.
# Usage: run.sh FRAMES_DIR RUNS_DIR WORK_DIR [DATASET]
#   DATASET: tuning/run.sh's (reach + push, 100 episodes per task, 48 px, scene + gripper
#   camera, 4-D state); BASE_POLICY: tuning/run.sh's `base` arm's checkpoints.
set -euo pipefail
FRAMES=${1:-/tmp/see_frames}
RUNS=${2:-/tmp/see_runs}
WORK=${3:-/tmp/see_work}
DATASET=${4:-/tmp/pix_data/metaworld_events/mt10-e100-i48-s0-t337a5002-cgripper-dart0.3/1.0.0}
BASE_POLICY=${BASE_POLICY:-/tmp/pix_work/base/run/checkpoints}
cd "$(dirname "$0")/../../../.."
mkdir -p "$RUNS" "$WORK"
probe() { python -m experiments.pixel_localisation probe --frames "$FRAMES" "$@"; }

# Frames: reach + push, 80 train + 40 val scenes per task, every 2nd step, DART noise 0.3,
# scene + gripper camera, rendered at 48 and at 96 px, with the 10-D privileged state.
[ -f "$FRAMES/frames_96.npz" ] || python -m experiments.pixel_localisation frames \
  --out "$FRAMES" --sizes 48,96

# Probes: batch 64, AdamW 1e-3, the head sees all output tokens and the 4-D state.
probe --size 48 --cameras none --steps 1000 --out "$RUNS/p48_state_only.jsonl"  # the floor
probe --size 48 --out "$RUNS/p48_both.jsonl"                          # recipe=pixels' tower
probe --size 48 --cameras image --steps 1000 --out "$RUNS/p48_scene.jsonl"
probe --size 48 --cameras image_gripper --steps 1000 --out "$RUNS/p48_gripper.jsonl"
probe --size 48 --stem conv --steps 1000 --out "$RUNS/p48_both_stem.jsonl"
probe --size 96 --patch 16 --steps 1000 --out "$RUNS/p96_both_patch16.jsonl"
probe --size 48 --freeze 1 --out "$RUNS/p48_both_frozen_random.jsonl"
probe --size 48 --init_tower "$BASE_POLICY" --freeze 1 \
  --out "$RUNS/p48_both_frozen_base_policy.jsonl"
probe --size 48 --target offset --out "$RUNS/p48_both_offset.jsonl" \
  --save_tower "$RUNS/tower_offset.npz"                   # the dataset's own action labels

# The lever: recipe=pixels chunk policies whose tower starts from tower_offset.npz (no
# privileged data), then the first-action probe on 20 dev scenes per task (mean of 8).
policy() {  # NAME [CONFIG FLAGS...]
  local name=$1; shift
  python -m wallwm_jax.train --config experiments/pretrain.py:size=tiny,mode=chunk,recipe=pixels \
    --workdir "$WORK/$name/run" --config.data.data_dir="$DATASET" --config.total_steps=1500 \
    --config.eval_every_steps=1500 \
    --config.init_pretrained="((\"$RUNS/tower_offset.npz\",\"wallwm\"),)" "$@"
  python experiments/results/pixels/sanity/target_probe.py "$WORK/$name/run/checkpoints" \
    --samples 8 | tee "$WORK/$name/probe.jsonl"
}
policy tower_offset
probe --size 48 --init_tower "$WORK/tower_offset/run/checkpoints" --freeze 1 \
  --out "$RUNS/p48_both_frozen_tower_offset_policy.jsonl"
policy tower_offset_beta4 --config.model.flow_beta_a=4.0
# Closed loop on 20 mt10_seen dev scenes per task, only for an arm whose probe R² exceeds
# 0.3 (the gate): tower_offset_beta4 (push x 0.56); tower_offset (0.18, 0.15) did not pass.
python -m wallwm_jax.evaluation --policy "$WORK/tower_offset_beta4/run/checkpoints" \
  --suite mt10_seen --tasks reach-v3,push-v3 --episodes_per_task 20 --split dev --workers 2 \
  --execute_steps 8 --workdir "$WORK/tower_offset_beta4/eval"
python -m experiments.pixel_localisation table "$RUNS"/p*.jsonl
