#!/usr/bin/env bash
# On a lent GPU, in one command: build mamba-ssm's and causal-conv1d's CUDA kernels for this GPU
# from the source distributions in .sdist/ (time-boxed; a build that fails or runs out of time
# leaves its reason, which their backends then show), then every claim suite at its gpu-lease
# preset, each within its own time limit, into results/reference/<gpu name>/ (runs/, report/,
# lease.md). A suite stopped at its limit keeps the cases it finished; the next one starts.
#   bash scripts/gpu-lease.sh --dry-run    the plan, on any machine: each suite's cases, the time
#                                          estimate and limits, the build commands
# Options go to python3 -m ssmbench.harness.gpu_lease (--sdists DIR, --budget S, --build-timeout S,
# --suites a,b, --no-build, --out DIR). With $OUT set, the results also go to $OUT/reference.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -m ssmbench.harness.gpu_lease "$@"
code=$?
if [[ -n ${OUT:-} && -d results/reference && " $* " != *" --dry-run "* ]]; then
    tar -czf "$OUT/reference.tgz" results/reference && ls -la "$OUT"
fi
exit $code
