#!/usr/bin/env bash
# Event vs chunk mode again with position-target actions (recipe=demo), as run for the
# "With position-target actions" section of results.md: run.sh's study with RECIPE=demo and
# only the event and chunk trials. Usage: run_targets.sh DATA_ROOT SWEEP_DIR
set -euo pipefail
RECIPE=demo exec "$(dirname "$0")/run.sh" "${1:-/tmp/study_data}" "${2:-/tmp/sweep_evc_demo}" \
  --only 'mode=(event|chunk),'
