#!/usr/bin/env bash
# The README's main command: bash scripts/demo.sh [--config.FIELD=VALUE ...]
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
export PYTHONUNBUFFERED=1
prm-jax demo "$@"
