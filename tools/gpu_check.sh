#!/usr/bin/env bash
# GPU checks in one run (for a lent GPU machine or a cluster node; about 2 minutes):
# the GPU test tier (TE masked layers vs local ones, no host sync, TE-spec model in bf16) and
# the tiny example on one GPU. Usage: bash tools/gpu_check.sh [output-dir]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check_out}
mkdir -p "$out"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
python3 -m pip install -q --no-deps -e . 2>&1 | tail -2
status=0
python3 -m pytest tests/gpu -v -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" || status=1
python3 examples/cpu_tiny_masked_model.py --steps 20 2>&1 | tee "$out/example.log" || status=1
echo "gpu_check status: $status"
exit $status
