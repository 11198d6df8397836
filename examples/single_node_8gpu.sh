#!/usr/bin/env bash
# Learn N:M masks on one node with 8 GPUs: torchrun --standalone, the model's recipe config
# (TP 8, so data parallel 1: the 256-sequence global batch is 256 micro-batches, ~8x slower per
# step than the 8-node job; lower --global-batch-size / --train-iters for a quicker run).
#
# Needs the environment that has megatron_masklm installed (CUDA torch, Transformer Engine for
# sequence parallelism: an NGC PyTorch container), and:
#   DATA_PATH        indexed-dataset prefix(es), optionally weighted (required unless --mock-data is passed)
#   RUN_DIR          checkpoints and logs; both --load and --save, so rerunning resumes (required)
#   PRETRAINED_CKPT  the dense Megatron checkpoint (optional here: without it the weights are random)
#   TOKENIZER_MODEL, PRIOR_MASK   optional, as in slurm_8x8_a100.sbatch
#   MODEL_CONFIG     default examples/configs/llama2_7b.yaml; SAVE_INTERVAL default 250
# Arguments go to the training CLI and win over the config.
#
# Examples:
#   DATA_PATH=/data/c4_llama2_text_document PRETRAINED_CKPT=/ckpt/llama2-7b-megatron \
#   TOKENIZER_MODEL=/ckpt/llama2-7b-hf/tokenizer.model RUN_DIR=runs/llama2-7b examples/single_node_8gpu.sh
#   RUN_DIR=/tmp/smoke examples/single_node_8gpu.sh --mock-data --train-iters 20 --global-batch-size 8
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "error: $*" >&2; exit 1; }
MODEL_CONFIG=${MODEL_CONFIG:-examples/configs/llama2_7b.yaml}
[[ -f $MODEL_CONFIG ]] || die "MODEL_CONFIG $MODEL_CONFIG does not exist"
[[ -n ${RUN_DIR:-} ]] || die "RUN_DIR is not set: export RUN_DIR=/path/to/this/run (checkpoints and logs)"

ARGS=()
if [[ -n ${DATA_PATH:-} ]]; then
  read -r -a DATA_ARGS <<< "$DATA_PATH"
  ARGS+=(--data-path "${DATA_ARGS[@]}")
elif [[ " $* " != *" --mock-data "* ]]; then
  die "DATA_PATH is not set: export DATA_PATH=/path/to/corpus_text_document, or pass --mock-data"
fi
[[ -n ${PRETRAINED_CKPT:-} ]] && ARGS+=(--pretrained-checkpoint "$PRETRAINED_CKPT")
[[ -n ${TOKENIZER_MODEL:-} ]] && ARGS+=(--tokenizer-model "$TOKENIZER_MODEL")
[[ -n ${PRIOR_MASK:-} ]] && ARGS+=(--prior-mask "$PRIOR_MASK")

export CUDA_DEVICE_MAX_CONNECTIONS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
torchrun --standalone --nproc_per_node 8 -m megatron_masklm.train --config "$MODEL_CONFIG" \
  ${ARGS[@]+"${ARGS[@]}"} --load "$RUN_DIR" --save "$RUN_DIR" --save-interval "${SAVE_INTERVAL:-250}" \
  "$@"
