#!/usr/bin/env bash
# The task study at CPU scale, exactly as run for results.md: event_vs_chunk.py's event and chunk
# trials (trained on MT10) evaluated on mt50_heldout, the 40 MT50 tasks outside MT10.
# Usage: run.sh DATA_ROOT SWEEP_DIR [--only REGEX]
# With the SWEEP_DIR of experiments/results/event_vs_chunk/run.sh, trained trials are reused
# (only the mt50_heldout evaluation runs); otherwise they are trained first.
set -euo pipefail
DATA_ROOT=${1:-/tmp/study_data}
SWEEP_DIR=${2:-/tmp/sweep_event_vs_chunk}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/../../.."

# The MT10 dataset of the event-vs-chunk study (skipped when already built).
DATASET=$(experiments/results/mt10_dataset.sh "$DATA_ROOT" | tail -1)

# Seed 2 was run with --only 'seed=2,' in the event-vs-chunk study's sweep directory, seeds 0-1
# with --only 'seed=[01],' in a new one; 3 episodes per task, replanning every 8 steps.
start=$(date +%s)
python -m wallwm_jax.sweep --sweep experiments/sweeps/tasks.py:size=tiny,recipe=cpu \
  --workdir "$SWEEP_DIR" --config.data.data_dir="$DATASET" --config.eval_every_steps=1500 \
  --eval_workers 2 --parallel 1 "$@"
echo "sweep: $(( $(date +%s) - start )) s"
