#!/usr/bin/env bash
# The GPU check, one prepared script: GPU tests (CUDA rasterizer parity with the torch reference
# and nvdiffrast's where it is installed), the benchmarks' CUDA rows, and short GPU training runs
# of the displacement network and ReFit; one table at the end. Each step's log goes to
# $OUT/NAME.log (OUT defaults to /tmp/fitkit_gpu); a failing step does not stop the others.
#
#   bash bench/gpu.sh                       # on a machine with CUDA and fitkit's dependencies
#   BUDGET=540 bash bench/gpu.sh            # seconds for the whole check (default 540)
#
# On a bare machine whose Python lacks smplx or trimesh, carry them as wheels in .whl/
# (pip download --no-deps --only-binary=:all: smplx trimesh ... -d .whl): the script installs
# them into /tmp/site first. It exits 3 without a CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fitkit_gpu}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "bench/gpu.sh: no CUDA device (torch.cuda.is_available() is False)" >&2
    exit 3
fi
"$PY" -c "import torch; print('device', torch.cuda.get_device_name(0), '| torch', torch.__version__)" \
    | tee "$OUT/device.txt"

START=$(date +%s)
ROWS=()
# step NAME SECONDS COMMAND...: run COMMAND with a time limit (never past the budget), log it,
# print its last lines, and keep a row: name, exit code, seconds.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if (( left < 20 )); then ROWS+=("$name|skipped (budget)|0"); return; fi
    (( limit > left )) && limit=$left
    local begin
    begin=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    ROWS+=("$name|$rc|$(( $(date +%s) - begin ))")
    echo "== $name (exit $rc)"
    tail -n 30 "$OUT/$name.log"
}

step gpu_tests 120 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
step bench_smplify 150 "$PY" bench/smplify.py --batch-sizes 64 --priors gmm --terms keypoints flow --parts \
    --iterations 100
step bench_render 60 "$PY" bench/render.py --runs 10
step bench_flownet 60 "$PY" bench/flownet.py --no-cpu --batch-sizes 1 8 64 --train
step bench_refit 60 "$PY" bench/refit.py --configs cpu paper --batch-sizes 1 64
step train_flow 60 "$PY" -m fitkit.train flow --out "$OUT/flow_gpu.pt" --device cuda --steps 40 \
    --checkpoint-every 20
step train_refit 60 "$PY" -m fitkit.train refit --out "$OUT/refit_gpu.pt" --size paper \
    --device cuda --steps 20 --batch-size 16 --checkpoint-every 10

printf '\n| step | exit | seconds |\n|---|---:|---:|\n'
for row in "${ROWS[@]}"; do
    IFS='|' read -r name rc seconds <<< "$row"
    printf '| %s | %s | %s |\n' "$name" "$rc" "$seconds"
done | tee "$OUT/summary.md"
