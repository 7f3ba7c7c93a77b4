#!/usr/bin/env bash
# kdlab's GPU benchmark: every classification method on the cifar preset (FCFD Table 11:
# resnet32x4 -> resnet8x4, 3x32x32, 100 classes, batch 64) with bf16 AMP, in three passes:
#   1. NCHW, eager          2. channels-last, eager          3. channels-last, torch.compile
# each written as CSV (with its metadata) under $OUT, then one Markdown summary (gpu_bench.md)
# with images/s, GFLOP/s and the fraction of the large-matmul rate (bf16 8192^2 torch.mm)
# measured in the same run, i.e. the model-FLOP utilisation against what this GPU reaches.
#
#   benchmarks/gpu/run_gpu_bench.sh          # on a CUDA machine: about 6-9 minutes on one GPU
#   benchmarks/gpu/run_gpu_bench.sh --dry    # a CPU smoke run of the same passes (tiny preset)
#
# Environment: OUT (results folder, default benchmarks/results/gpu), PYTHON (default python),
# METHODS (pass 1 and 2), COMPILE_METHODS (pass 3; compiling costs 20-60 s per method),
# STEPS / WARMUP (timed and untimed steps per method).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-$root/benchmarks/results/gpu}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"

ALL="ce,kd,dkd,dml,fitnet,at,sp,cc,rkd,irg,vid,crd,ofd,reviewkd,simkd,srrl,frskd"
ALL="$ALL,fcfd:num_paths=1,fcfd:num_paths=2,fcfd:num_paths=4,online_fcfd"
if [[ "${1:-}" == "--dry" ]]; then
    # every path of the script on a CPU in well under a minute: tiny pair, one step, the
    # "eager" compile backend (dynamo without a C compiler)
    common=(--preset tiny --device cpu --amp none --steps 1 --warmup 0 --matmul-size 256)
    METHODS="${METHODS:-ce,kd,fcfd}"
    COMPILE_METHODS="${COMPILE_METHODS:-kd}"
    backend=eager
else
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
'no CUDA device: run with --dry for the CPU smoke run')"
    common=(--preset cifar --device cuda --amp bf16 --steps "${STEPS:-30}" --warmup "${WARMUP:-10}")
    METHODS="${METHODS:-$ALL}"
    COMPILE_METHODS="${COMPILE_METHODS:-ce,kd,dkd,fitnet,crd,reviewkd,fcfd:num_paths=2}"
    backend=inductor
fi
mkdir -p "$OUT"
bench() { "$PYTHON" -m kdlab bench "${common[@]}" "$@"; }

echo "== 1/3 NCHW, eager"
bench --methods "$METHODS" --channels-last off --out "$OUT/gpu_nchw_eager.csv"
echo "== 2/3 channels-last, eager"
bench --methods "$METHODS" --channels-last on --out "$OUT/gpu_nhwc_eager.csv"
echo "== 3/3 channels-last, torch.compile ($backend)"
bench --methods "$COMPILE_METHODS" --channels-last on --compile "$backend" \
    --out "$OUT/gpu_nhwc_compile.csv"
"$PYTHON" "$here/summarise.py" "$OUT" --command "$0 $*"
