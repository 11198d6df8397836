#!/usr/bin/env bash
# Every GPU check in one run (a lent GPU machine or a cluster node). On one H200 the first six
# steps take about 5 minutes and smollm2 a few more, so on the lent machine (10 minutes a call)
# run it as a call of its own: --only smollm2. Steps, by the names --only/--skip take:
#   tests       the GPU test tier plus the single-process unit tests on CUDA (NCCL world of one);
#   train       the training CLI on one GPU in bf16: a tiny run that stops, resumes and finishes;
#   step_time   mask-only vs dense fine-tuning step time, side by side (benchmarks/step_time.py);
#   throughput  mask-training throughput and peak memory of a SmolLM2-135M-shaped model (mock data);
#   oneshot     one-shot SparseGPT and Wanda time on a random SmolLM2-135M-shaped model;
#   sparse      dense vs 2:4 semi-structured GEMM time, LLaMA-2 7B/13B linears (tools/bench_sparse.py);
#   smollm2     SmolLM2-135M: MaskLLM learned in bf16 from the SparseGPT prior, EVAL perplexity
#               beside SparseGPT's, and the learned 2:4 model timed dense vs sparse
#               (benchmarks/smollm2_gpu/run.py). Needs the assets packed on a CPU machine by
#               benchmarks/smollm2_gpu/gpu_assets.py under --assets (default .gpu_assets); they are
#               too big for one device call, so its docstring says how the two parts travel.
#               Skipped, with a note, when no part is there (a failure if --only names it).
# Without network access, carry megatron-core as a wheel in .whl/ (see docs/testing.md, "GPU check").
# --report DIR copies the logs and result files (no checkpoints or data) to DIR at the end,
# e.g. the lent machine's $OUT, which is all that comes back from it.
# Usage: bash tools/gpu_check.sh [--only STEP,...] [--skip STEP,...] [--assets DIR] [--report DIR]
#                                [output-dir]
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

all_steps="tests train step_time throughput oneshot sparse smollm2"
only="" skip="" out="" assets=.gpu_assets report=""
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --only|--skip|--assets|--report)
      [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
      case $1 in --only) only=$2 ;; --skip) skip=$2 ;; --assets) assets=$2 ;; --report) report=$2 ;; esac
      shift 2 ;;
    --only=*) only=${1#*=}; shift ;;
    --skip=*) skip=${1#*=}; shift ;;
    --assets=*) assets=${1#*=}; shift ;;
    --report=*) report=${1#*=}; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$out" ] || die "one output directory, got '$out' and '$1'"; out=$1; shift ;;
  esac
done
for name in ${only//,/ } ${skip//,/ }; do
  case " $all_steps " in *" $name "*) ;; *) die "unknown step '$name': steps are $all_steps" ;; esac
done
want() {  # want STEP: asked for by --only (or no --only) and not --skip'ped
  case ",$skip," in *",$1,"*) return 1 ;; esac
  [ -z "$only" ] && return 0
  case ",$only," in *",$1,"*) return 0 ;; esac
  return 1
}
out=${out:-gpu_check_out}
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

if want tests; then
  step "GPU and unit tests on CUDA" "$out/tests.log" python3 -m pytest -q -p no:cacheprovider \
    tests/gpu tests/unit
fi

# shellcheck disable=SC2329  # called through step
run_train() { python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m megatron_masklm.train "$@"; }
if want train; then
  tiny=(--config examples/configs/tiny_cpu.yaml --tensor-model-parallel-size 1 --bf16
        --train-iters 20 --eval-interval 10 --log-interval 5 --save "$out/tiny_run" --load "$out/tiny_run")
  step "tiny bf16 run, stopped at 10" "$out/train.log" run_train "${tiny[@]}" --exit-interval 10
  step "tiny bf16 run, resumed to 20" "$out/train.log" run_train "${tiny[@]}"
  grep -q "iteration       20/20" "$out/train.log" || { echo "FAILED: resumed run did not reach 20"; status=1; }
fi

if want step_time; then
  step "step time: mask-only vs dense (SmolLM2 width, 30 layers, bf16)" "$out/step_time.log" \
    python3 benchmarks/step_time.py --layers 30 --hidden 576 --ffn 1536 --heads 9 --groups 3 \
    --vocab 49152 --seq 2048 --batch 4 --bf16 --repeats 10
fi

if want throughput; then
  step "SmolLM2-135M-shaped mask training, bf16, mock data" "$out/smollm.log" run_train --num-layers 30 \
    --hidden-size 576 --ffn-hidden-size 1536 --num-attention-heads 9 --num-query-groups 3 \
    --vocab-size 49152 --tied-embeddings --rotary-base 100000 --max-position-embeddings 2048 \
    --seq-length 2048 --micro-batch-size 8 --global-batch-size 32 --train-iters 30 --mock-data \
    --bf16 --log-interval 10 --eval-iters 0 --log-dir "$out/smollm_run"
fi

if want oneshot; then
  for method in sparsegpt wanda; do
    step "one-shot $method, SmolLM2-135M shape, 128 x 512 calibration tokens" "$out/oneshot.log" \
      python3 benchmarks/oneshot_speed.py --method $method
  done
fi

if want sparse; then
  step "2:4 semi-structured vs dense GEMMs, LLaMA-2 7B/13B linears, bf16" "$out/sparse.log" \
    python3 tools/bench_sparse.py --warmup 5 --repeats 20 --output "$out/sparse_gemm.json"
fi

if want smollm2; then
  if ls "$assets"/*/MANIFEST.json >/dev/null 2>&1; then
    step "SmolLM2-135M: MaskLLM in bf16 from the SparseGPT prior, EVAL PPL, 2:4 model timing" \
      "$out/smollm2.log" python3 benchmarks/smollm2_gpu/run.py --assets "$assets" --workdir "$out/smollm2"
  else
    echo "=== SmolLM2-135M step skipped: no packed assets under $assets (benchmarks/smollm2_gpu/gpu_assets.py pack)" \
      | tee -a "$out/smollm2.log"
    case ",$only," in *",smollm2,"*) status=1 ;; esac
  fi
fi

echo "gpu_check status: $status"
if [ -n "$report" ]; then  # logs and results only: checkpoints and data stay in $out
  mkdir -p "$report/smollm2" || exit 1
  for f in "$out"/*.log "$out"/*.json; do [ -f "$f" ] && cp "$f" "$report/"; done
  for f in "$out"/smollm2/results.* "$out"/smollm2/logs/*.log; do [ -f "$f" ] && cp "$f" "$report/smollm2/"; done
  echo "gpu_check report: $report"
fi
exit $status
