#!/usr/bin/env bash
# The MT10 dataset every CPU-scale study trains on (the demo's data recipe on MT10's ten tasks):
# 30 scripted-expert episodes per task, 32-px images, privileged simulator state, DART noise 0.3.
# Usage: mt10_dataset.sh DATA_ROOT. Builds it (or finds it built) and prints its version dir last.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m data_builders.metaworld_events --data_dir "$1" --config mt10 \
  --episodes_per_task 30 --image_size 32 --privileged_state --action_noise 0.3 --workers 2
