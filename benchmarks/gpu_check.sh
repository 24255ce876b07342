#!/usr/bin/env bash
# GPU proof run (benchmarks/gpu_check.py): writes ${OUT:-./gpu_check_out}/gpu_check.json. Needs no network.
#   bash benchmarks/gpu_check.sh [--dry-run] [--budget-s 420] [--only SECTION ...]
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
if ! "$PY" -c "import model, assistant" >/dev/null 2>&1; then
    echo "gpu_check: installing the project (pip install -e . --no-deps)" >&2
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >&2 || echo "gpu_check: install failed; running from the tree" >&2
fi
exec "$PY" benchmarks/gpu_check.py "$@"
