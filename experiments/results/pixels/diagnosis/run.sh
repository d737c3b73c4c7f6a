#!/usr/bin/env bash
# Why the pixel policy cannot see (issue 28 §2), as run for results.md. Dev-only: frames of
# the builder's training scenes (seed 0) and held-out scenes (seed 1), never mt10_seen's test.
# 1. Can the vision tower localise? Tower + linear head regress the privileged object/goal
#    positions (diagnostic target only) or the expert's action offset from the images.
# 2. The lever: a policy whose tower starts from the offset-regression tower.
# Usage: run.sh FRAMES_DIR RUNS_DIR WORK_DIR [DATASET]   (DATASET: tuning/run.sh's reach+push,
#   100 episodes per task, 48 px, scene + gripper camera, 4-D state)
set -euo pipefail
FRAMES=${1:-/tmp/see_frames}
RUNS=${2:-/tmp/see_runs}
WORK=${3:-/tmp/see_work}
DATASET=${4:-/tmp/pix_data/metaworld_events/mt10-e100-i48-s0-t337a5002-cgripper-dart0.3/1.0.0}
BASE_POLICY=${BASE_POLICY:-/tmp/pix_work/base/run/checkpoints}  # tuning/run.sh's `base` arm
cd "$(dirname "$0")/../../../.."
mkdir -p "$RUNS" "$WORK"
PROBE="python -m experiments.pixel_localisation probe --frames $FRAMES"

# Frames: reach + push, 80 train + 40 val scenes per task, every 2nd step, DART noise 0.3,
# scene + gripper camera, at 48 and 96 px (two renders), with the 10-D privileged state.
[ -f "$FRAMES/frames_96.npz" ] || python -m experiments.pixel_localisation frames \
  --out "$FRAMES" --sizes 48,96

# Probes (1,500 steps, batch 64, AdamW 1e-3; the head also sees the 4-D state).
$PROBE --size 48 --out "$RUNS/p48_both.jsonl"                         # recipe=pixels' tower
$PROBE --size 48 --target offset --out "$RUNS/p48_both_offset.jsonl" \
  --save_tower "$RUNS/tower_offset.npz"                               # the action labels
$PROBE --size 48 --init_tower "$BASE_POLICY" --freeze 1 \
  --out "$RUNS/p48_both_frozen_base_policy.jsonl"                     # the policy's own tower
