#!/usr/bin/env bash
# tower_offset_beta4 with training seeds 1 and 2 (seed 0 is tower_offset_beta4). Dev only.
set -euo pipefail
cd /work/main
DATASET=/work/pix_data/metaworld_events/mt10-e100-i48-s0-t337a5002-cgripper-dart0.3/1.0.0
PY=/work/main/.venv-test/bin/python
for s in 1 2; do
  W=/work/see_work/tower_offset_beta4_seed$s
  mkdir -p $W
  $PY -m wallwm_jax.train --config experiments/pretrain.py:size=tiny,mode=chunk,recipe=pixels \
    --workdir "$W/run" --config.data.data_dir="$DATASET" --config.total_steps=1500 \
    --config.eval_every_steps=1500 --config.seed=$s \
    --config.init_pretrained='(("/work/see_runs/tower_offset.npz","wallwm"),)' \
    --config.model.flow_beta_a=4.0 > "$W/train.log" 2>&1
  $PY -m wallwm_jax.evaluation --policy "$W/run/checkpoints" --suite mt10_seen --tasks reach-v3,push-v3 \
    --episodes_per_task 20 --split dev --workers 2 --execute_steps 8 --workdir "$W/eval" > "$W/eval.log" 2>&1
  echo "seed $s done" >> /work/see_work/seeds.done
done
