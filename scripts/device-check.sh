#!/usr/bin/env bash
# On a lent GPU: correctness of every GPU backend, then a short comparison of all backends per op
# (the kernels suite, gpu preset), in about 5 minutes. Installs nothing: backends whose packages
# are absent are listed with their reasons. Writes under $OUT when set, else ./device-out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Build our CUDA extension for this GPU only (faster), in a cache that later calls reuse.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/ssmbench-extensions}
export MAX_JOBS=${MAX_JOBS:-16}
py=python3

step() { printf '\n== %s (%(%T)T)\n' "$1" -1; }

step "GPU and software"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
$py -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' | tee -a "$OUT/gpu.txt"

step "backends"
$py -m ssmbench.harness.cli list --device cuda | tee "$OUT/backends.txt"

step "correctness of every backend on CUDA (fp32, bf16)"
timeout "${CHECK_TIMEOUT:-200}" $py -m pytest -q -p no:cacheprovider tests/test_correctness.py -k cuda \
    2>&1 | tail -n 60 | tee "$OUT/correctness.txt"
step "GPU tests of our CUDA extension and Triton kernels"
timeout "${KERNEL_TEST_TIMEOUT:-150}" $py -m pytest -q -p no:cacheprovider tests/test_cuda_ext.py tests/test_triton.py \
    tests/test_triton_ssd.py 2>&1 | tail -n 40 | tee "$OUT/kernel-tests.txt"

step "benchmark: kernels suite, gpu preset"
timeout "${BENCH_TIMEOUT:-240}" $py -m ssmbench.harness.cli --results-dir "$OUT/results" --reports-dir "$OUT/reports" \
    run --suite kernels --preset gpu --report --quiet 2>&1 | tail -n 5

step "summary"
$py - "$OUT/results" <<'PY' | tee "$OUT/summary.md"
import sys
import ssmbench
rows = ssmbench.load_runs("latest", results_dir=sys.argv[1])
keep = [c for c in ["op", "backend", "dtype", "seqlen", "seqlen_q", "dstate", "status", "median_ms", "gbps", "pct_bw",
                    "tflops", "pct_flops", "rel_error", "first_call_ms", "reason"] if c in rows]
table = rows[keep].copy()
table["reason"] = table["reason"].str.slice(0, 60)
print(table.to_markdown(index=False, floatfmt=".3g"))
PY
tar -czf "$OUT/results.tgz" -C "$OUT" results reports 2>/dev/null && rm -rf "$OUT/results" "$OUT/reports"
ls -la "$OUT"
