#!/usr/bin/env bash
# The balance study at CPU scale, exactly as run for results.md. Usage: run.sh DATA_ROOT SWEEP_DIR
set -euo pipefail
DATA_ROOT=${1:-/tmp/study_data}
SWEEP_DIR=${2:-/tmp/sweep_balance}
cd "$(dirname "$0")/../../.."

# The MT10 dataset of the event-vs-chunk study (skipped when already built).
DATASET=$(experiments/results/mt10_dataset.sh "$DATA_ROOT" | tail -1)

# alpha 0.5 vs no balancing x 3 seeds, event mode, tiny, recipe=cpu, 1500 steps; the val action
# error by train cluster at the end; closed loop on mt10_seen, 5 episodes per task.
start=$(date +%s)
python -m wallwm_jax.sweep --sweep experiments/sweeps/balance.py:size=tiny,recipe=cpu \
  --workdir "$SWEEP_DIR" --config.data.data_dir="$DATASET" --eval_workers 2 --parallel 1
echo "sweep: $(( $(date +%s) - start )) s"
