#!/usr/bin/env bash
# The event-vs-chunk-vs-unified study (and, on the same policies, the language study) at CPU
# scale, exactly as run for results.md. Usage: run.sh DATA_ROOT SWEEP_DIR [SWEEP FLAGS...]
# RECIPE (default cpu) picks experiments/pretrain.py's recipe; further arguments go to the
# sweep as they are (run_targets.sh: RECIPE=demo with --only for the event and chunk trials).
set -euo pipefail
DATA_ROOT=${1:-/tmp/study_data}
SWEEP_DIR=${2:-/tmp/sweep_event_vs_chunk}
RECIPE=${RECIPE:-cpu}
cd "$(dirname "$0")/../../.."

# The studies' MT10 dataset (experiments/results/mt10_dataset.sh says what it is).
start=$(date +%s)
DATASET=$(experiments/results/mt10_dataset.sh "$DATA_ROOT" | tail -1)
echo "dataset: $DATASET ($(( $(date +%s) - start )) s)"

# 3 modes x 3 seeds, tiny model, the CPU recipe (recipe=cpu), 1500 steps each; closed loop
# on mt10_seen and mt10_paraphrase, 5 episodes per task, replanning every 8 steps.
start=$(date +%s)
python -m wallwm_jax.sweep --sweep "experiments/sweeps/event_vs_chunk.py:size=tiny,recipe=$RECIPE" \
  --workdir "$SWEEP_DIR" --config.data.data_dir="$DATASET" --config.eval_every_steps=1500 \
  --eval_episodes_per_task 5 --eval_workers 2 --parallel 1 "${@:3}"
echo "sweep: $(( $(date +%s) - start )) s"
