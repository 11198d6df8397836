#!/usr/bin/env bash
# Every GPU check in one run (a lent GPU machine or a cluster node; about 5 minutes on one H200):
#   1. the GPU test tier plus the single-process unit tests on CUDA (NCCL world of one);
#   2. the training CLI on one GPU in bf16: a tiny run that stops, resumes and finishes;
#   3. mask-only vs dense fine-tuning step time, side by side (benchmarks/step_time.py);
#   4. mask-training throughput and peak memory of a SmolLM2-135M-shaped model (mock data);
#   5. one-shot SparseGPT and Wanda time on a random SmolLM2-135M-shaped model, 128 x 512 tokens.
# Without network access, carry megatron-core as a wheel in .whl/ (see README, "GPU check").
# Usage: bash tools/gpu_check.sh [output-dir]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1 PYTHONWARNINGS=ignore
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
if ! python3 -c "import megatron.core" 2>/dev/null && ls .whl/megatron_core-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/masklm-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/masklm-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the package from this checkout, no install
python3 -c "import megatron.core as m; print('megatron-core', m.__version__)" || exit 1
status=0
step() {  # step TITLE LOG COMMAND...: run, append to LOG, remember a failure
  local title=$1 log=$2; shift 2
  echo "=== $title" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "FAILED: $title" | tee -a "$log"; status=1; }
}

step "GPU and unit tests on CUDA" "$out/tests.log" python3 -m pytest -q -p no:cacheprovider \
  tests/gpu tests/unit

tiny=(--config examples/configs/tiny_cpu.yaml --tensor-model-parallel-size 1 --bf16
      --train-iters 20 --eval-interval 10 --log-interval 5 --save "$out/tiny_run" --load "$out/tiny_run")
run_train() { python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m megatron_masklm.train "$@"; }
step "tiny bf16 run, stopped at 10" "$out/train.log" run_train "${tiny[@]}" --exit-interval 10
step "tiny bf16 run, resumed to 20" "$out/train.log" run_train "${tiny[@]}"
grep -q "iteration       20/20" "$out/train.log" || { echo "FAILED: resumed run did not reach 20"; status=1; }

step "step time: mask-only vs dense (SmolLM2 width, 30 layers, bf16)" "$out/step_time.log" \
  python3 benchmarks/step_time.py --layers 30 --hidden 576 --ffn 1536 --heads 9 --groups 3 \
  --vocab 49152 --seq 2048 --batch 4 --bf16 --repeats 10

step "SmolLM2-135M-shaped mask training, bf16, mock data" "$out/smollm.log" run_train --num-layers 30 \
  --hidden-size 576 --ffn-hidden-size 1536 --num-attention-heads 9 --num-query-groups 3 \
  --vocab-size 49152 --tied-embeddings --rotary-base 100000 --max-position-embeddings 2048 \
  --seq-length 2048 --micro-batch-size 8 --global-batch-size 32 --train-iters 30 --mock-data \
  --bf16 --log-interval 10 --eval-iters 0 --log-dir "$out/smollm_run"

for method in sparsegpt wanda; do
  step "one-shot $method, SmolLM2-135M shape, 128 x 512 calibration tokens" "$out/oneshot.log" \
    python3 benchmarks/oneshot_speed.py --method $method
done

echo "gpu_check status: $status"
exit $status
