#!/usr/bin/env bash
# Submit the MaskLLM recipe for LLaMA-2 13B (2:4, TP 8, 2,000 steps) to Slurm on 8 nodes x 8 A100:
# sbatch examples/slurm_8x8_a100.sbatch with examples/configs/llama2_13b.yaml.
#
# Needs DATA_PATH, PRETRAINED_CKPT (the dense LLaMA-2 13B Megatron checkpoint) and RUN_DIR, and
# optionally TOKENIZER_MODEL, PRIOR_MASK, CONTAINER_IMAGE (see slurm_8x8_a100.sbatch); they are
# checked here, before the job waits in the queue. sbatch options via SBATCH_* variables
# (SBATCH_ACCOUNT, SBATCH_PARTITION, SBATCH_TIMELIMIT); arguments go to the training CLI.
#
# Example:
#   DATA_PATH=/data/c4_llama2_text_document PRETRAINED_CKPT=/ckpt/llama2-13b-megatron \
#   TOKENIZER_MODEL=/ckpt/llama2-13b-hf/tokenizer.model RUN_DIR=/runs/llama2-13b-2of4 \
#   SBATCH_ACCOUNT=myacct examples/llama2_13b_slurm.sh
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for name in DATA_PATH PRETRAINED_CKPT RUN_DIR; do
  [[ -n ${!name:-} ]] || { echo "error: $name is not set (see examples/slurm_8x8_a100.sbatch)" >&2; exit 1; }
done
export REPO_DIR
cd "$REPO_DIR"
exec sbatch --job-name masklm-llama2-13b examples/slurm_8x8_a100.sbatch examples/configs/llama2_13b.yaml "$@"
