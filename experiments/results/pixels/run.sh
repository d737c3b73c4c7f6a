#!/usr/bin/env bash
# Policies that act from pixels (issue 28 §2): chunk vs event (oracle planner) vs unified mode,
# 3 seeds each, recipe=pixels (4-D agent state, scene + gripper camera at 48 px, position-target
# actions), closed loop on mt10_seen's test scenes. Resumable: run it again to finish.
# Usage: run.sh DATA_ROOT SWEEP_DIR [SWEEP FLAGS...] (further arguments go to the sweep, e.g.
# --eval_split dev while tuning, or --only 'seed=0,' to run one seed).
set -euo pipefail
DATA_ROOT=${1:-/tmp/pixels_data}
SWEEP_DIR=${2:-/tmp/sweep_pixels}
cd "$(dirname "$0")/../../.."

# MT10, 30 scripted-expert episodes per task, DART noise 0.3 (as the privileged studies'
# experiments/results/mt10_dataset.sh), but 48-px frames, the gripper camera as well, and no
# privileged simulator state. Builds it once (or finds it built); prints its version dir last.
start=$(date +%s)
DATASET=$(python -m data_builders.metaworld_events --data_dir "$DATA_ROOT" --config mt10 \
  --episodes_per_task 30 --image_size 48 --cameras gripper --action_noise 0.3 --workers 2 \
  | tail -1)
echo "dataset: $DATASET ($(( $(date +%s) - start )) s)"

# 3 modes x 3 seeds, tiny model, recipe=pixels, 1500 steps each; closed loop on mt10_seen's
# test scenes (experiments/sweeps/pixels.py's get_eval), replanning every 8 steps.
start=$(date +%s)
python -m wallwm_jax.sweep --sweep experiments/sweeps/pixels.py:size=tiny,recipe=pixels \
  --workdir "$SWEEP_DIR" --config.data.data_dir="$DATASET" --config.eval_every_steps=1500 \
  --eval_workers 2 --parallel 1 "${@:3}"
echo "sweep: $(( $(date +%s) - start )) s"
