# Sourced by demo.sh and test.sh: create or reuse .venv and (re)install the package when
# pyproject.toml changed. Needs only python3 (>= 3.11) with pip/venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "prm_jax needs Python >= 3.11 (found $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
STAMP=".venv/.prm_jax-installed"
WANT="$(cat pyproject.toml | sha256sum | cut -d' ' -f1) ${EXTRAS:-dev}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "installing prm_jax[${EXTRAS:-dev}] into .venv (first run takes a few minutes)"
  python -m pip install --quiet --disable-pip-version-check --upgrade pip
  python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS:-dev}]"
  echo "$WANT" > "$STAMP"
fi
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
