#!/usr/bin/env bash
# Mutation testing: bash scripts/mutation.sh MODULE[:FUNC,FUNC...]...
#   e.g. bash scripts/mutation.sh prm_jax/evaluation.py prm_jax/scoring.py:aggregate_step_scores
# For each module, mutmut 3 mutates that module alone (or only the named top-level functions) in a
# scratch copy under mutants/<module>/ and runs, for each mutant, the tests below that cover the
# mutated function; then prints `MODULE: killed K of N` and lists the survivors (their diffs in
# mutants/<module>/survivors.diff). Timeouts count as killed. Settings shared by every module are
# pyproject.toml's [tool.mutmut]; MUTATION_TESTS="tests/test_x.py ..." overrides the test table,
# MUTATION_WORKERS (default 2) sets mutmut's --max-children. Each run starts from scratch.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"  # cd to the repository root, activate .venv
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export PYTHONUNBUFFERED=1
# Every mutant's tests start a fresh process and would compile every program again; with JAX's
# persistent cache only the programs the mutant changed are compiled (scoring's tests: 13 s -> 8 s).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/mutants/.jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

tests_for() {  # the tests (files or node ids) that cover a module
  local P=tests/test_properties.py S=tests/test_scoring.py
  case "$1" in
    prm_jax/evaluation.py|prm_jax/process_metrics.py) echo "tests/test_evaluation.py
      tests/test_benchmarks.py::test_processbench_table_is_the_papers_with_a_fixed_threshold
      tests/test_benchmarks.py::test_prmbench_score_closed_form" ;;
    prm_jax/train/losses.py) echo "tests/test_losses.py" ;;
    prm_jax/data/prm800k.py) echo "tests/test_prm800k.py $P::test_jsonl_readers_never_crash_on_arbitrary_bytes
      $P::test_jsonl_readers_name_the_line_json_itself_refuses" ;;
    prm_jax/scoring.py) echo "$S::test_aggregation_matches_numpy_on_random_ragged_inputs
      $S::test_aggregation_edge_cases $S::test_contiguous_layouts_equal_the_segment_path_and_numpy
      $S::test_contiguous_layouts_edge_cases $S::test_the_sorted_layout_runs_the_scatter_free_start
      $S::test_exclusive_cumsum_equals_numpy_across_block_sizes
      $S::test_contiguous_layouts_at_many_solutions_and_runs_one_step_past_a_window
      $S::test_ragged_values_and_lengths_score_as_the_sorted_layout
      $P::test_aggregate_step_scores_equals_a_numpy_reference
      $P::test_aggregate_ragged_equals_the_sorted_layout" ;;
    prm_jax/grading.py|prm_jax/answer_text.py|prm_jax/safe_math.py) echo "tests/test_grading.py $P::test_grading_never_raises_stays_bounded_and_is_symmetric
      $P::test_an_answer_equals_itself_unless_empty
      $P::test_normalisation_and_extraction_never_raise_and_stay_bounded
      $P::test_extraction_reads_the_last_answer_line_and_the_last_box
      $P::test_group_answers_is_an_equivalence_numbered_by_first_appearance" ;;
    *) echo "scripts/mutation.sh: no tests listed for $1; set MUTATION_TESTS" >&2; return 1 ;;
  esac
}

[ "$#" -gt 0 ] || { echo "usage: scripts/mutation.sh MODULE[:FUNC,...]..." >&2; exit 2; }
status=0
for arg in "$@"; do
  module="${arg%%:*}"
  funcs=""; [ "$arg" != "$module" ] && funcs="${arg#*:}"
  [ -f "$module" ] || { echo "scripts/mutation.sh: no such module $module" >&2; exit 2; }
  tests="${MUTATION_TESTS:-$(tests_for "$module")}"
  slug="$(echo "${module%.py}" | tr '/' '.')"
  work="mutants/$slug"
  rm -rf "$work"
  mkdir -p "$work"
  cp -a prm_jax configs tests "$work/"
  find "$work" -name __pycache__ -prune -exec rm -rf {} +
  # The scratch project's pyproject.toml: the repository's, with [tool.mutmut] narrowed to this
  # module and its tests.
  python - "$module" "$tests" "$work" <<'EOF'
import json, re, sys, tomllib
module, tests, work = sys.argv[1:]
text = open("pyproject.toml").read()
shared = tomllib.loads(text).get("tool", {}).get("mutmut", {})
args = tests.split()
cfg = dict(shared, only_mutate=[module],
           pytest_add_cli_args_test_selection=shared.get("pytest_add_cli_args_test_selection", [])
           + args)
text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
text += "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(v)}\n" for key, v in cfg.items())
open(f"{work}/pyproject.toml", "w").write(text)
EOF
  names=()
  if [ -n "$funcs" ]; then
    dotted="${slug}"
    IFS=',' read -ra fs <<< "$funcs"
    for f in "${fs[@]}"; do names+=("${dotted}.x_${f}__mutmut_*"); done
  fi
  echo "== $arg: tests $tests"
  start=$(date +%s)
  set +e
  (cd "$work" && mutmut run --max-children "${MUTATION_WORKERS:-2}" "${names[@]}") \
      > "$work/run.log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    tail -40 "$work/run.log"
    echo "scripts/mutation.sh: mutmut exited $rc on $module (log: $work/run.log)" >&2
    status=1
    continue
  fi
  python - "$module" "$funcs" "$work" "$(( $(date +%s) - start ))" <<'EOF'
import ast, collections, difflib, fnmatch, json, sys
module, funcs, work, seconds = sys.argv[1:]
codes = json.load(open(f"{work}/mutants/{module}.meta"))["exit_code_by_key"]
prefix = module[:-3].replace("/", ".")
if funcs:
  codes = {k: v for k, v in codes.items()
           if any(fnmatch.fnmatch(k, f"{prefix}.x_{f}__mutmut_*") for f in funcs.split(","))}
status = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", None: "not run",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
by = collections.Counter(status.get(v, "suspicious") for v in codes.values())
killed = by["killed"] + by["timeout"]
left = sorted(k for k, v in codes.items() if status.get(v, "suspicious") not in ("killed", "timeout"))
# Each survivor's diff against its function's original, from the mutated source mutmut wrote
# (`mutmut show` per mutant takes about a second each: 20 minutes for a thousand).
src = open(f"{work}/mutants/{module}").read()
lines = src.splitlines()
defs = {n.name: lines[n.lineno - 1:n.end_lineno] for n in ast.parse(src).body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
with open(f"{work}/survivors.diff", "w") as out:
  for k in left:
    name = k.rsplit(".", 1)[1]
    orig, mut = defs.get(name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"), defs.get(name)
    diff = "\n".join(difflib.unified_diff(orig or [], mut or [], "orig", name, lineterm="", n=1))
    out.write(f"### {k} ({status.get(codes[k], 'suspicious')})\n{diff}\n\n")
detail = ", ".join(f"{n} {s}" for s, n in sorted(by.items()) if s != "killed")
print(f"{module}{':' + funcs if funcs else ''}: killed {killed} of {len(codes)}"
      f"{' (' + detail + ')' if detail else ''} in {seconds}s")
for k in left:
  print(f"  {status.get(codes[k], 'suspicious')}: {k}")
EOF
done
exit "$status"
