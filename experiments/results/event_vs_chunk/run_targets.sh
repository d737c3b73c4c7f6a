#!/usr/bin/env bash
# Event vs chunk mode again with position-target actions (recipe=demo), as run for the
# "With position-target actions" section of results.md. Usage: run_targets.sh DATA_ROOT SWEEP_DIR
set -euo pipefail
DATA_ROOT=${1:-/tmp/study_data}
SWEEP_DIR=${2:-/tmp/sweep_evc_demo}
cd "$(dirname "$0")/../../.."

DATASET=$(experiments/results/mt10_dataset.sh "$DATA_ROOT" | tail -1)
start=$(date +%s)
python -m wallwm_jax.sweep --sweep experiments/sweeps/event_vs_chunk.py:size=tiny,recipe=demo \
  --workdir "$SWEEP_DIR" --config.data.data_dir="$DATASET" --config.eval_every_steps=1500 \
  --eval_episodes_per_task 5 --eval_workers 2 --parallel 1 --only 'mode=(event|chunk),'
echo "sweep: $(( $(date +%s) - start )) s"
