#!/usr/bin/env bash
# Set up .venv on first use, then run the test suite (slow tests excluded; add `-m slow` for those).
# The test files are spread over one worker process per core, at most 4 (pytest-xdist; each file's tests stay in
# one worker), each with one PyTorch thread; SMOOTHNESS_TEST_WORKERS=0 runs them in this process.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup-venv.sh"
cd "$root"
workers="${SMOOTHNESS_TEST_WORKERS:-auto}"
if [ "$workers" = 0 ]; then
    exec "$root/.venv/bin/python" -m pytest -q "$@"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
exec "$root/.venv/bin/python" -m pytest -q -n "$workers" --maxprocesses 4 --dist loadfile "$@"
