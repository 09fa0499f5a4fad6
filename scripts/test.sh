#!/usr/bin/env bash
# The README's test command: bash scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
# Eight virtual CPU devices, so sharding tests run real multi-device meshes.
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export PYTHONUNBUFFERED=1
# JAX's persistent compilation cache, empty at the start of each run (as CI's is): the many `prm-jax`
# subprocesses and the tests that train the same tiny shapes then compile each program once a run.
# Set JAX_COMPILATION_CACHE_DIR to keep one between runs.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/prm_jax_compile_cache.XXXXXX")"
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
# One pytest-xdist worker per core (at most 4), each given whole modules (--dist loadfile), so a
# module's fixtures are built and its programs compiled once. PRM_JAX_TEST_WORKERS=1: one process.
workers="${PRM_JAX_TEST_WORKERS:-$(n=$(nproc); echo $(( n < 4 ? n : 4 )))}"
xdist=()
if [ "$workers" -gt 1 ]; then xdist=(-n "$workers" --dist loadfile); fi
start=$(date +%s)
set +e
python -m pytest -q --durations=15 "${xdist[@]}" "$@"
rc=$?
set -e
echo "test.sh: pytest exited $rc after $(( $(date +%s) - start ))s"
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
