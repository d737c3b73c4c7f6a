#!/usr/bin/env bash
# recipe=pixels chunk policy + the auxiliary action head (model.aux_action_weight), 1,500 steps,
# then closed loop on 20 mt10_seen **dev** scenes per task and the first-action probe. Dev only.
#   go.sh ARM WEIGHT FLOW_BETA_A [SEED]   e.g. go.sh w1_beta4 1.0 4.0
set -euo pipefail
ARM=$1 WEIGHT=$2 BETA=$3 SEED=${4:-0}
ROOT=$(cd "$(dirname "$0")/../../../../.." && pwd)
cd "$ROOT"
export PYTHONPATH=$ROOT
DATASET=/work/pix_data/metaworld_events/mt10-e100-i48-s0-t337a5002-cgripper-dart0.3/1.0.0
PY=${PY:-/work/main/.venv-test/bin/python}
W=${WORK:-/work/aux_work}/$ARM
mkdir -p "$W"
nice -n 19 $PY -m wallwm_jax.train --config experiments/pretrain.py:size=tiny,mode=chunk,recipe=pixels \
  --workdir "$W/run" --config.data.data_dir="$DATASET" --config.total_steps=1500 \
  --config.eval_every_steps=1500 --config.seed="$SEED" --config.model.flow_beta_a="$BETA" \
  --config.model.aux_action_weight="$WEIGHT" > "$W/train.log" 2>&1
nice -n 19 $PY -m wallwm_jax.evaluation --policy "$W/run/checkpoints" --suite mt10_seen \
  --tasks reach-v3,push-v3 --episodes_per_task 20 --split dev --workers 2 --execute_steps 8 \
  --workdir "$W/eval" > "$W/eval.log" 2>&1
nice -n 19 $PY experiments/results/pixels/sanity/target_probe.py "$W/run/checkpoints" --samples 8 \
  > "$W/probe.jsonl" 2> "$W/probe.err"
echo done > "$W/DONE"
