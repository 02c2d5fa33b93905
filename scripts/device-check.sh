#!/usr/bin/env bash
# On a lent GPU: correctness of every GPU backend, then a short comparison of all backends per op
# (the kernels suite, gpu-quick preset), in under 6 minutes: the step limits below add up to
# 310 s, and the rest (GPU query, backend list, Python starts, report) takes about 30 s.
# Installs nothing: backends whose packages are absent are listed with their reasons (packages
# carried as files can be put on PYTHONPATH). Writes under $OUT when set, else ./device-out. Each
# step has its own time limit, so a slow or hung step costs its own time only; the benchmark
# keeps every case finished before its limit.
# Settings (environment):
#   STEPS="tests bench"  which steps to run;
#   TEST_LIMIT=100       seconds for the GPU tests;
#   BENCH_PRESET=gpu-quick, BENCH_SLICES="op[,op]:seconds ..." (below), BENCH_BACKENDS=a,b.
# The full kernel tables: STEPS=bench BENCH_PRESET=gpu BENCH_SLICES="selective_scan:100 ssd:300".
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-tests bench}
for s in $STEPS; do
    [[ $s == tests || $s == bench ]] || { echo "device-check: STEPS: unknown step '$s'; expected tests and/or bench" >&2; exit 2; }
done
wants() { [[ " $STEPS " == *" $1 "* ]]; }
python3 -c 'import torch' || { echo "device-check: python3 cannot import torch" >&2; exit 2; }
python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' || {
    echo "device-check: torch sees no CUDA GPU on this machine; this script is for a machine with one" >&2
    exit 2
}
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Build our CUDA extension for this GPU only (faster), in a cache that later calls reuse.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/ssmbench-extensions}
export MAX_JOBS=${MAX_JOBS:-16}
py=python3
cli="$py -m ssmbench.harness.cli --results-dir $OUT/results --reports-dir $OUT/reports"
# The image's hypothesis and pytest-benchmark plugins serve no test here and slow each process.
pytest_args=(-q -p no:cacheprovider -p no:hypothesispytest -p no:benchmark --tb=line -rfE)
$py -c 'import pytest_timeout' 2>/dev/null && pytest_args+=(--timeout "${TEST_TIMEOUT:-90}")
# Compiling the kernels for each new shape takes the CPU most of a test's time: spread the tests
# over processes where pytest-xdist is there.
$py -c 'import xdist' 2>/dev/null && pytest_args+=(-n "${TEST_WORKERS:-16}")
# A step past its limit gets SIGINT, so that pytest and the runner still print what they have.
limit() { timeout -s INT -k 15 "$@"; }

step() { printf '\n== %s (%(%T)T)\n' "$1" -1; }

step "GPU and software"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
$py -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' | tee -a "$OUT/gpu.txt"

# The extension builds while the tests of the other backends run; its own tests wait for the
# build's lock.
( time $py -c 'from ssmbench.kernels.cuda import build; build.extension(); print("built in", build.build_directory())' ) \
    >"$OUT/cuda-build.txt" 2>&1 &
build_job=$!

if wants tests; then
    # Triton kernels run at their fixed config here (one compile per shape instead of one per
    # candidate); the benchmark below checks each autotuned config against the reference before
    # timing it. The extension's own tests wait for the build's lock, in their worker only.
    step "GPU tests: every backend on CUDA (fp32, bf16), our CUDA extension, our Triton kernels"
    SSMBENCH_TRITON_AUTOTUNE=0 limit "${TEST_LIMIT:-100}" $py -m pytest "${pytest_args[@]}" -k "cuda or not test_correctness" \
        tests/test_correctness.py tests/test_cuda_ext.py tests/test_triton.py tests/test_triton_ssd.py \
        2>&1 | tee "$OUT/tests.txt" | tail -n 40
fi

step "build of our CUDA extension"
wait $build_job
tail -n 30 "$OUT/cuda-build.txt"

step "backends"
$cli list --device cuda | tee "$OUT/backends.txt"

# One run per op, each with its own time slice, so that a slow op (first calls of third-party
# kernels autotune for tens of seconds) cannot starve the others.
if wants bench; then
    for slice in ${BENCH_SLICES:-selective_scan:55 ssd:100 selective_state_update,causal_conv1d,causal_conv1d_update:30 attention:25}; do
        ops=${slice%%:*}
        step "benchmark: kernels suite, ${BENCH_PRESET:-gpu-quick} preset, $ops (${slice##*:} s)"
        limit "${slice##*:}" $cli run --suite kernels --preset "${BENCH_PRESET:-gpu-quick}" --ops "$ops" \
            ${BENCH_BACKENDS:+--backends "$BENCH_BACKENDS"} --quiet 2>&1 | tail -n 3
    done
    $cli report $(ls "$OUT/results") 2>&1 | tail -n 1

    step "summary"
    $py - "$OUT/results" <<'PY' | tee "$OUT/summary.md"
import sys
import ssmbench
from pathlib import Path
rows = ssmbench.load_runs(*sorted(Path(sys.argv[1]).iterdir()))
keep = [c for c in ["op", "backend", "dtype", "seqlen", "seqlen_q", "dstate", "status", "median_ms", "gbps", "pct_bw",
                    "tflops", "pct_flops", "x_floor", "rel_error", "first_call_ms", "kernel_configs", "reason"] if c in rows]
table = rows[keep].copy()
table["reason"] = table["reason"].fillna("").str.slice(0, 60)
print(table.to_markdown(index=False, floatfmt=".3g"))
PY
fi
tar -czf "$OUT/results.tgz" -C "$OUT" results reports 2>/dev/null && rm -rf "$OUT/results" "$OUT/reports"
ls -la "$OUT"
