#!/usr/bin/env bash
# Step time with the LM loss only vs with distillation, fp32 and bf16, on the real model: 5 steps
# of 2 x (2 x 512) TRAIN tokens each, one run after another (run nothing else meanwhile).
#   benchmarks/smollm2_cpu/distill_vs_lm/step_times.sh W [PYTHON]
# W: a quick-preset workdir (run.py --preset quick --stop-after oneshot). Prints each run's step
# times in ms; compare medians (the first step includes warm-up).
set -euo pipefail
W=${1:?usage: $0 WORKDIR [PYTHON]}
PY=${2:-python}
out=$(mktemp -d)
echo "logs in $out"
for cfg in "fp32_lm:" "fp32_distill:--distill-weight 1.0" "bf16_lm:--bf16" "bf16_distill:--bf16 --distill-weight 1.0"; do
  name=${cfg%%:*}; flags=${cfg#*:}
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=2 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m megatron_masklm.train \
    --pretrained-checkpoint "$W/megatron" --prior-mask "$W/oneshot/sparsegpt/prior.npz" --pattern 2:4 \
    --data-path "$W/data/train_text_document" --split 100,0,0 --eval-iters 0 --log-interval 1 \
    --micro-batch-size 2 --global-batch-size 4 --seq-length 512 --train-iters 5 --lr 1e-3 --min-lr 1e-4 \
    $flags > "$out/$name.log" 2>&1
  echo "$name $(grep -o 'step [0-9.]* ms' "$out/$name.log" | awk '{print $2}' | tr '\n' ' ')"
done
