#!/usr/bin/env bash
# The CPU demo: learn 2:4 masks for a tiny LLaMA-style model with 2-way tensor parallelism over
# gloo (2 processes, random tokens, ~30 s on 2 cores), then draw its log (needs matplotlib).
#
# Needs: the repository installed in the active Python (pip install -e .[plot]); PYTHON picks
# another interpreter. RUN_DIR (default runs/cpu_tiny, relative to the repository root) gets
# the checkpoints, logs/train_log.jsonl and logs/train_log.png (a rerun starts over and appends
# to the log; the plot keeps the last record of each iteration).
# Arguments go to the training CLI and win over examples/configs/tiny_cpu.yaml.
#
# Examples (from any directory):
#   bash examples/cpu_tp2_tiny.sh
#   RUN_DIR=/tmp/tiny bash examples/cpu_tp2_tiny.sh --train-iters 6 --eval-interval 3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
RUN_DIR=${RUN_DIR:-runs/cpu_tiny}
export OMP_NUM_THREADS=1 CUDA_DEVICE_MAX_CONNECTIONS=1

# "$PYTHON -m torch.distributed.run" is torchrun, run by the same interpreter as the plot below
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 \
  -m megatron_masklm.train --config examples/configs/tiny_cpu.yaml \
  --save "$RUN_DIR" "$@"

if "$PYTHON" -c "import matplotlib" 2>/dev/null; then
  "$PYTHON" tools/plot_training.py "$RUN_DIR"
else
  echo "matplotlib is not installed (pip install -e .[plot]): skipping the plot of $RUN_DIR/logs/train_log.jsonl"
fi
