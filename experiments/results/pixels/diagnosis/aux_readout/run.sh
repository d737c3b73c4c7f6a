#!/usr/bin/env bash
# Is the pixel policy's failure in the flow read-out or in what the tokens carry? (issue 28
# §2, dev scenes only). One aux-head arm (w = 1, flow_beta_a = 4, seed 0, as ../aux_head's
# w1_beta4), acted three ways on the same 40 mt10_seen dev scenes: its flow sampler, its
# auxiliary head's deterministic first action, and its flow sampler shown a fixed frame of
# another scene (the scene-blind control). Then the same arm with the actions themselves
# (data.action_target_gain=0) instead of position targets, at seeds 0 and 1, and with a head
# of 8 actions (executed 8 at a time). Every run writes results.json under WORK/ARM/eval_*.
#   run.sh DATA_ROOT WORK     (about an hour on a quiet 2-core machine)
set -euo pipefail
DATA_ROOT=${1:-/tmp/pix/data}
WORK=${2:-/tmp/pix}
cd "$(dirname "$0")/../../../../.."
export PYTHONPATH=$PWD
HERE=experiments/results/pixels/diagnosis/aux_readout
DATASET=$(python -m data_builders.metaworld_events --data_dir "$DATA_ROOT" --config mt10 \
  --tasks reach-v3,push-v3 --episodes_per_task 100 --image_size 48 --cameras gripper \
  --action_noise 0.3 --workers 2 | tail -1)
# arm: extra training flags (targets: the recipe's position targets; raw: the dataset's actions)
declare -A EXTRA=(
  [w1]="--config.seed=0"
  [raw]="--config.seed=0 --config.data.action_target_gain=0"
  [raw_s1]="--config.seed=1 --config.data.action_target_gain=0"
  [raw_k8]="--config.seed=0 --config.data.action_target_gain=0 --config.model.aux_action_steps=8"
)
for arm in w1 raw raw_s1 raw_k8; do
  mkdir -p "$WORK/$arm"
  python -m wallwm_jax.train --config experiments/pretrain.py:size=tiny,mode=chunk,recipe=pixels \
    --workdir "$WORK/$arm/run" --config.data.data_dir="$DATASET" --config.total_steps=1500 \
    --config.eval_every_steps=1500 --config.model.flow_beta_a=4.0 \
    --config.model.aux_action_weight=1.0 ${EXTRA[$arm]} > "$WORK/$arm/train.log" 2>&1
  python -m wallwm_jax.evaluation --policy "$WORK/$arm/run/checkpoints" --suite mt10_seen \
    --tasks reach-v3,push-v3 --episodes_per_task 20 --split dev --workers 2 --execute_steps 8 \
    --workdir "$WORK/$arm/eval_flow"
  python $HERE/aux_readout.py "$WORK/$arm/run/checkpoints" --workdir "$WORK/$arm/eval_aux"
  python $HERE/aux_readout.py "$WORK/$arm/run/checkpoints" --workdir "$WORK/$arm/eval_blind" \
    --readout blind --execute_steps 8
  python $HERE/aux_readout.py "$WORK/$arm/run/checkpoints" --workdir "$WORK/$arm/eval_aux_blind" \
    --readout aux_blind
done
# the flow read-out replanning every step (raw, seed 0)
python -m wallwm_jax.evaluation --policy "$WORK/raw/run/checkpoints" --suite mt10_seen \
  --tasks reach-v3,push-v3 --episodes_per_task 20 --split dev --workers 2 --execute_steps 1 \
  --workdir "$WORK/raw/eval_flow1"
