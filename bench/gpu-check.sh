#!/usr/bin/env bash
# Every GPU measurement of the project in one prepared run (docs/performance.md):
#   - the study's loop against this pipeline (bench.study_vs_pipeline) for AlexNet and VGG11 on a
#     CLASSES x PER_CLASS stand-in, with JPEG decoding on the CPU (PIL loader) and, pipeline only,
#     on the GPU (nvJPEG), each with the compute-only forward images/s of the same backbone;
#   - the extract stage as one process and under torchrun (one process per GPU of this node),
#     rows, labels, meta.json and features compared (bench.distributed_extract).
# Each step runs even when an earlier one failed; the exit status says whether all passed.
#
#   OUT=bench/results/gpu bash bench/gpu-check.sh        # EPOCHS, CLASSES, PER_CLASS, DEVICE to change
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
EPOCHS=${EPOCHS:-3}  # the study's loop costs ~20 s per epoch on one H100/H200; 3 keep the run short
CLASSES=${CLASSES:-17}
PER_CLASS=${PER_CLASS:-1000}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
CACHE=${CACHE:-${TMPDIR:-/tmp}/plankton-bench}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, note a failure, go on
    local name=$1 limit=$2
    shift 2
    echo "== $(date +%T) $name"
    timeout "$limit" "$@" || { echo "!! $name failed with status $?"; failed=1; }
}

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    echo "cpus: $(nproc)"
    "$PYTHON" -c 'import sys, torch, torchvision; print("python", sys.version.split()[0], "torch", torch.__version__,
"torchvision", torchvision.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
} | tee "$OUT/env.txt"

size=(--classes "$CLASSES" --per-class "$PER_CLASS" --cache-dir "$CACHE")
for model in alexnet vgg11; do
    step "$model: study loop and pipeline, CPU decoding" 300 "$PYTHON" -m bench.study_vs_pipeline --model "$model" \
        "${size[@]}" --epochs "$EPOCHS" --device "$DEVICE" --decode cpu --out "$OUT/$model-cpu-decode.json"
    step "$model: pipeline, GPU decoding" 120 "$PYTHON" -m bench.study_vs_pipeline --model "$model" \
        "${size[@]}" --epochs "$EPOCHS" --device "$DEVICE" --decode device --skip-study --out "$OUT/$model-gpu-decode.json"
    if [ "$model" = alexnet ]; then
        step "alexnet: extract stage, one process against torchrun" 180 "$PYTHON" -m bench.distributed_extract \
            --model alexnet "${size[@]}" --nproc 0 --out "$OUT/distributed-alexnet.json"
    fi
done
echo "== $(date +%T) done; results in $OUT"
exit "$failed"
