#!/usr/bin/env bash
# The 2-rank test tier N times in a row (default 5) while two busy processes load the cores, as
# issue 14 asked of the harness: a rank's result must reach the parent whatever the timing.
# Usage: benchmarks/dist_under_load.sh [N]   (from anywhere; uses the repository's .venv)
# Prints one line per run and exits non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
python=${PYTHON:-.venv/bin/python}
loaders=()
for _ in 1 2; do python3 -c "while True: pass" & loaders+=($!); done
trap 'kill "${loaders[@]}" 2>/dev/null' EXIT
failed=0
for i in $(seq "$runs"); do
  start=$(date +%s)
  if "$python" -m pytest tests/dist -q -p no:cacheprovider > "${TMPDIR:-/tmp}/dist_run_$i.log" 2>&1
  then status=ok; else status=FAILED; failed=$((failed + 1)); fi
  echo "run $i: $status, $(( $(date +%s) - start )) s: $(tail -1 "${TMPDIR:-/tmp}/dist_run_$i.log")" \
       "(load average $(cut -d' ' -f1 /proc/loadavg))"
done
echo "$failed of $runs runs failed"
[ "$failed" -eq 0 ]
