#!/usr/bin/env bash
# The README's test command: bash scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
# Eight virtual CPU devices, so sharding tests run real multi-device meshes.
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export PYTHONUNBUFFERED=1
start=$(date +%s)
set +e
python -m pytest -q --durations=15 "$@"
rc=$?
set -e
echo "test.sh: pytest exited $rc after $(( $(date +%s) - start ))s"
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
