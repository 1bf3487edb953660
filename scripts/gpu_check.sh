#!/usr/bin/env bash
# The GPU checks of the compiled kernel (issue 5) in one run, for a machine with a CUDA GPU and PyTorch:
#
#   bash scripts/gpu_check.sh                  # from the repository root; logs to $OUT (default outputs/gpu_check)
#   PYTHON=.venv/bin/python bash scripts/gpu_check.sh
#
# It needs only torch, numpy, scikit-learn and pytest (no Hydra, OmegaConf or MLflow: the package is
# imported from this checkout, not installed), so it runs on a bare GPU image too. Steps, each logged:
#   1. env.txt          nvidia-smi, the Python/torch/CUDA versions, the GPU torch sees
#   2. build.log        the CPU and CUDA kernels built once (cpp_extension, cached under /tmp/analogtrain_ext)
#   3. cuda_tests.log   every test marked `cuda` (CPU/GPU/reference parity), from the test files that hold one
#   4. bench_gpu.log    scripts/bench_gpu.py: the 4096×4096, batch-1024 update against the copy bandwidth,
#                       sparse pulses in both update modes, dense pulses in the aggregated mode (the
#                       pulsed mode's ~4e11 dense pulses take minutes per call)
# Exit status: 0 when the build and the tests pass, else the first failing step's status (the benchmark
# runs whatever the tests gave). Without torch it stops with status 2, without a CUDA GPU (after
# env.txt) with status 3.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-outputs/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/analogtrain_ext}" MAX_JOBS="${MAX_JOBS:-8}"
status=0

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch (set PYTHON to an interpreter that has it)" >&2
  exit 2
fi
{ command -v nvidia-smi >/dev/null && nvidia-smi
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'; } 2>&1 | tee "$OUT/env.txt"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA GPU visible to torch ($PY); nothing to check" >&2
  exit 3
fi

echo "== build" | tee "$OUT/build.log"
SECONDS=0
"$PY" -c 'from analogtrain.ops import build; print(build.build_cpu()); print(build.build_cuda())' 2>&1 \
  | tee -a "$OUT/build.log" || status=$?
echo "build: ${SECONDS} s (status $status)" | tee -a "$OUT/build.log"
[[ $status -eq 0 ]] || exit $status

mapfile -t files < <(grep -l 'pytest.mark.cuda' tests/test_*.py)
echo "== cuda tests: ${files[*]}" | tee "$OUT/cuda_tests.log"
timeout 480 "$PY" -m pytest -q -m cuda -p no:cacheprovider -rs "${files[@]}" 2>&1 | tee -a "$OUT/cuda_tests.log"
status=${PIPESTATUS[0]}  # (the build passed: the tests' status is the first failure, if any)

echo "== bench_gpu" | tee "$OUT/bench_gpu.log"
timeout 150 "$PY" scripts/bench_gpu.py 2>&1 | tee -a "$OUT/bench_gpu.log"
timeout 90 "$PY" scripts/bench_gpu.py --lrs 0.5 --modes aggregated 2>&1 | tee -a "$OUT/bench_gpu.log"
echo "gpu_check: done, status $status (logs in $OUT)"
exit $status
