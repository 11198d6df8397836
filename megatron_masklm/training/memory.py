"""Training memory per GPU of MaskLLM mask training on Megatron-Core (pure arithmetic).

    python tools/estimate_memory.py --model llama2-7b --tensor-model-parallel-size 8 \\
        --data-parallel-size 8 --bf16 --sequence-parallel

Nothing here imports megatron.core: the numbers follow from the model shape and the launch
settings alone, laid out the way this project's builders lay them out
(``megatron_masklm.training.builders``: Megatron's DDP with ``grad_reduce_in_fp32``, Adam
through ``get_megatron_optimizer``, the distributed optimizer by default).

What is exact and what is an estimate
-------------------------------------
*Exact* (a test builds the model with the project's builders, takes an optimizer step and
counts the real tensors; ``tests/unit/test_estimate_memory.py``):

* ``weights``: every parameter but the logits (embeddings, output layer, norms, linears), in the
  weight dtype; frozen unless ``--train-weights``. Vocabulary padded as Megatron-LM pads it (a
  multiple of 128 x TP). The first pipeline stage holds the embedding, the last the output
  layer; with tied embeddings and PP > 1 the last stage keeps its own copy (Megatron does).
* ``mask_logits``: fp32, ``[rows, in/M, C(M,N)]`` per masked linear (every decoder linear: qkv,
  proj, fc1, fc2; never embeddings, head or norms): C(M,N)/M values per masked weight (1.5 for
  2:4).
* ``ddp_param_padding``: with the distributed optimizer, DDP moves the trainable parameters into
  one buffer per dtype whose parameters start at multiples of 64 elements and whose buckets end
  at multiples of lcm(DP, 128).
* ``grad_buffers``: DDP's fp32 gradient buffers for the trainable parameters (same layout).
* ``optimizer_states``: Adam's exp_avg and exp_avg_sq in fp32, plus an fp32 main copy of every
  trainable parameter that is not fp32 (bf16 weights with ``--train-weights``; the logits are
  fp32 already). The distributed optimizer keeps only the elements of its 1/DP share of each
  bucket; the figure is the DP rank that holds the most.
* ``mask_softmax_saved``, ``mask_index_saved``, ``masked_weight_saved``: what each masked
  linear's forward keeps for the backward, per micro-batch in flight: the fused masked-weight
  function saves the softmax probabilities (C/M fp32 values per weight) and, with
  ``--hard-sampling``, the sampled candidate index (int64 per group of M); Megatron's GEMM
  keeps the masked weight W * M~ (weight dtype) for the input gradient, as it keeps any weight.
  With full recomputation only the one layer being recomputed holds them.

*Estimates*:

* ``activations``: what autograd keeps for the backward outside the masked weights, counted
  tensor by tensor as Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
  Transformer Models", section 4.1, count them (their eq. 1-2: sbh(34 + 5as/h) bytes per layer
  with 2-byte activations, no TP), redone for this model: no dropout (the project trains with
  dropout 0), RMSNorm and SwiGLU for LLaMA and Qwen (LayerNorm, GeLU and biases for GPT),
  grouped-query attention, fp32 softmax. With s tokens, b sequences, hidden h, FFN f, a heads,
  g key/value groups of width d (kv_channels, h/a unless set), q = a d, TP t, activation bytes e
  (2 for bf16, 4 for fp32), and
  u = 1/t with sequence parallelism, else 1 (the tensors sequence parallelism shards), one
  layer keeps (bytes)::

      norms and their linears' inputs  4 e s b h u
      + RMSNorm, --train-weights       8 s b h u   (torch's RMSNorm keeps its fp32 output for the
                                       weight's gradient; LayerNorm recomputes it)
      QK-norm (Qwen3)                  e s b (q + g d) / t   (the query and key heads' inputs)
      attention, flash (fused)         e s b (2q + 2 g d) / t + 4 a s b / t   (Q, K, V, output, LSE)
      attention, local (unfused)       4 e s b q / t + (4 + e [e = 2]) a s^2 b / t
                                       (Q, K and V repeated to every head, context, fp32 softmax
                                       and its e-byte copy)
      attention, selective recompute   e s b (2q + 2 g d) / t   (the checkpointed Q, K, V, output)
      MLP, SwiGLU                      4 e s b f / t   (gate and up halves, silu(gate), fc2 input)
      MLP, GeLU                        2 e s b f / t   (gelu input, fc2 input)

  Full recomputation (uniform, one layer per checkpoint) keeps only each layer's input
  (e s b h u) plus one layer's activations while it is recomputed. The last stage adds the
  final norm's and output layer's inputs (2 e s b h u) and the cross entropy's fp32 softmax
  (4 s b V / t). Under 1F1B pipelining stage i holds min(PP - i, micro-batches) micro-batches.
  The CPU test measures the saved tensors of a real step and checks them loosely.
* ``transient_workspace``: the largest short-lived peak on top: the backward of the largest
  masked linear (the masked weight's gradient, the recomputed fp32 mask, fp32 copies of weight
  and gradient when they are bf16, the mask gradient, and three C/M-sized fp32 tensors for the
  softmax backward: s (w + 8 + 8 [bf16] + 12 C/M) bytes for s weights of w bytes), or on the
  last stage the logits and their fp32 copy in the loss, (e + 4) s b V / t.

Not included: the CUDA context and NCCL buffers (about 1-2 GiB), allocator fragmentation, and
the optimizer step's temporaries. Keep a few GiB of headroom.

Worked examples (the paper's setup: 64 A100-80GB, TP 8, PP 1, DP 8, bf16, micro-batch 1 of 4,096
tokens, the distributed optimizer, mask-only training, sequence parallelism as the LLaMA configs
in examples/configs set it, Transformer Engine's fused attention)::

    $ python tools/estimate_memory.py --model llama2-7b --tensor-model-parallel-size 8 \\
          --data-parallel-size 8 --bf16 --sequence-parallel
    MaskLLM 2:4 mask training, memory per GPU (mask-only)
    model: llama, 32 layers, hidden 4096, FFN 11008, 32 heads, 32 key/value groups,
           vocabulary 32000 padded to 32768, untied embeddings
    parallel: TP 8 x PP 1 x DP 8 = 64 GPUs, sequence parallel on, distributed optimizer
    batch: micro-batch 1 x 4096 tokens, bf16 weights, recompute none, flash attention

    stage 0: layers 0-31, 809,500,672 masked weights, 1 micro-batch in flight
                                                           bytes       GiB
      weights (frozen, bf16)                       1,686,642,688      1.57
      mask logits (fp32)                           4,857,004,032      4.52
      gradient buffers (fp32)                      4,857,004,032      4.52
      optimizer states (Adam, sharded over DP)     1,214,251,008      1.13
      mask softmax saved for backward (fp32)       4,857,004,032      4.52
      masked weights W*M~ saved by the GEMMs       1,619,001,344      1.51
      activations (estimate)                       2,594,177,024      2.42
      transient workspace (estimate)                 405,798,912      0.38
      total                                       22,090,883,072     20.57

    peak 20.57 GiB per GPU: fits in 80 GiB
    not included: CUDA context and NCCL buffers (~1-2 GiB), allocator fragmentation,
                  optimizer-step temporaries

    $ python tools/estimate_memory.py --model llama2-13b --tensor-model-parallel-size 8 \\
          --data-parallel-size 8 --bf16 --sequence-parallel
    MaskLLM 2:4 mask training, memory per GPU (mask-only)
    model: llama, 40 layers, hidden 5120, FFN 13824, 40 heads, 40 key/value groups,
           vocabulary 32000 padded to 32768, untied embeddings
    parallel: TP 8 x PP 1 x DP 8 = 64 GPUs, sequence parallel on, distributed optimizer
    batch: micro-batch 1 x 4096 tokens, bf16 weights, recompute none, flash attention

    stage 0: layers 0-39, 1,585,971,200 masked weights, 1 micro-batch in flight
                                                           bytes       GiB
      weights (frozen, bf16)                       3,256,657,920      3.03
      mask logits (fp32)                           9,515,827,200      8.86
      gradient buffers (fp32)                      9,515,827,200      8.86
      optimizer states (Adam, sharded over DP)     2,378,956,800      2.22
      mask softmax saved for backward (fp32)       9,515,827,200      8.86
      masked weights W*M~ saved by the GEMMs       3,171,942,400      2.95
      activations (estimate)                       4,023,517,184      3.75
      transient workspace (estimate)                 637,009,920      0.59
      total                                       42,015,565,824     39.13

    peak 39.13 GiB per GPU: fits in 80 GiB
    not included: CUDA context and NCCL buffers (~1-2 GiB), allocator fragmentation,
                  optimizer-step temporaries

Both fit in 80 GB without activation recomputation: about 21 GiB (7B) and 39 GiB (13B) per GPU.
The same runs with Megatron's unfused local attention need about 33 and 58 GiB, without
sequence parallelism 24 and 45 GiB, with full recomputation 13 and 24 GiB, and with the
non-distributed optimizer 28 and 55 GiB.

Against a GPU: tools/gpu_check.sh trained a SmolLM2-135M-shaped model (bf16, micro-batch 8 x
2,048 tokens, TP 1) on one H200, when training still used Megatron's unfused local attention,
and README.md reports a peak of 70.7 GiB allocated; ``--model smollm2-135m --bf16
--micro-batch-size 8 --seq-length 2048 --attention local --global-batch-size 32`` estimates
71.4 GiB, most of it the local attention's scores. Training now computes that attention with
torch's fused kernel (``--attention flash`` here).

The per-stage pieces (parameters in Megatron's order, DDP buffers, optimizer shards, one layer's
activations) are :mod:`megatron_masklm.training.memory_stages`; tools/estimate_memory.py is the
command line over :func:`shape_and_setup` and :func:`estimate`.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .. import families
from ..architecture import ModelShape, padded_vocab_size
from ..masking.candidates import parse_nm, validate_nm
from .memory_stages import (activation_bytes_per_layer, ddp_buffers, layer_masked_linears,
                            microbatches_in_flight, optimizer_state_bytes, stage_layers,
                            stage_parameters)

GIB = 1024 ** 3

RECOMPUTE_CHOICES = ("none", "selective", "full")
ATTENTION_CHOICES = ("flash", "local")


@dataclass(frozen=True, kw_only=True)
class Setup:
    """How the model is trained: parallel sizes, precision, batch, optimizer, masks."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    data_parallel_size: int = 1
    n: int = 2
    m: int = 4
    bf16: bool = False
    """bf16 weights and activations (the logits stay fp32); else fp32."""
    micro_batch_size: int = 1
    seq_length: int = 4096
    global_batch_size: Optional[int] = None
    """Only bounds the micro-batches a pipeline stage holds; None: at least PP of them."""
    use_distributed_optimizer: bool = True
    train_weights: bool = False
    fixed_mask: bool = False
    """Weight recovery (training's --fixed-mask): the logits stay (fp32) but do not train, the
    weights train, and each masked linear saves its fixed mask for the backward."""
    distill_weight: float = 0.0
    """> 0 with ``fixed_mask``: the teacher is a separate frozen copy of the weights (mask
    learning's teacher is the student's own weights with the masks off: nothing to count)."""
    hard_sampling: bool = False
    sequence_parallel: bool = False
    """Takes effect only with TP > 1, as in the builders."""
    recompute_granularity: str = "none"
    attention: str = "flash"
    """"flash": a fused kernel that keeps no score matrix (Transformer Engine's, or torch's
    scaled_dot_product_attention, which training's local spec uses); "local": Megatron's
    unfused attention (what the local spec falls back to where the fused path does not apply)."""
    make_vocab_size_divisible_by: int = 128

    @property
    def candidates(self) -> int:
        return math.comb(self.m, self.n)

    @property
    def weight_bytes(self) -> int:
        return 2 if self.bf16 else 4

    @property
    def trains_weights(self) -> bool:
        return self.train_weights or self.fixed_mask

    @property
    def separate_teacher(self) -> bool:
        return self.fixed_mask and self.distill_weight > 0


    @property
    def uses_sequence_parallel(self) -> bool:
        """Sequence parallelism in effect: asked for and TP > 1 (as the builders have it)."""
        return self.sequence_parallel and self.tensor_model_parallel_size > 1


@dataclass
class Item:
    """One line of the breakdown."""

    key: str
    label: str
    bytes: int
    exact: bool


@dataclass
class StageEstimate:
    """The breakdown for one GPU of one pipeline stage."""

    stage: int
    layers: Tuple[int, int]
    microbatches_in_flight: int
    masked_weights: int
    items: List[Item]

    @property
    def total(self) -> int:
        return sum(item.bytes for item in self.items)

    def bytes_of(self, key: str) -> int:
        return next(item.bytes for item in self.items if item.key == key)


@dataclass
class Estimate:
    """The whole estimate: the inputs as resolved, and one breakdown per pipeline stage."""

    architecture: ModelShape
    setup: Setup
    padded_vocab_size: int
    stages: List[StageEstimate]
    gpu_memory_gib: float

    @property
    def peak(self) -> StageEstimate:
        return max(self.stages, key=lambda stage: stage.total)

    @property
    def fits(self) -> bool:
        return self.peak.total <= self.gpu_memory_gib * GIB

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able: every figure in bytes and GiB."""
        setup = self.setup
        return {
            "architecture": dataclasses.asdict(self.architecture),
            "setup": {**dataclasses.asdict(setup), "pattern": f"{setup.n}:{setup.m}",
                      "sequence_parallel": setup.uses_sequence_parallel},
            "padded_vocab_size": self.padded_vocab_size,
            "world_size": (setup.tensor_model_parallel_size * setup.pipeline_model_parallel_size
                           * setup.data_parallel_size),
            "stages": [{
                "stage": stage.stage, "layers": list(stage.layers),
                "microbatches_in_flight": stage.microbatches_in_flight,
                "masked_weights": stage.masked_weights,
                "items": {item.key: {"bytes": item.bytes, "gib": item.bytes / GIB,
                                     "exact": item.exact, "label": item.label}
                          for item in stage.items},
                "total_bytes": stage.total, "total_gib": stage.total / GIB,
            } for stage in self.stages],
            "peak_stage": self.peak.stage, "peak_bytes": self.peak.total,
            "peak_gib": self.peak.total / GIB, "gpu_memory_gib": self.gpu_memory_gib,
            "fits": self.fits,
        }


PRESET_OPTIONS: Dict[str, Dict[str, Any]] = families.preset_options()
"""The options of each preset shape (the HF config.json values; the CLI starts from these, so a
flag such as --hidden-size or --model-family recomputes what depends on it). Each is defined once,
in its family's module (:mod:`megatron_masklm.families`); examples/configs agree with them
(tests/unit/test_family_registry.py)."""
PRESETS: Dict[str, ModelShape] = {name: ModelShape(**options)
                                  for name, options in PRESET_OPTIONS.items()}
"""Model shapes by name (as examples/configs and the SmolLM2 benchmark use them)."""


# --- checks -------------------------------------------------------------------------------------

def check(arch: ModelShape, setup: Setup) -> None:
    """Raise ValueError naming the first setting Megatron or the masked layers would refuse."""
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                 "vocab_size", "max_position_embeddings"):
        _positive(name, getattr(arch, name))
    if arch.num_query_groups is not None:
        _positive("num_query_groups", arch.num_query_groups)
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                 "data_parallel_size", "micro_batch_size", "seq_length",
                 "make_vocab_size_divisible_by"):
        _positive(name, getattr(setup, name))
    if setup.recompute_granularity not in RECOMPUTE_CHOICES:
        raise ValueError(f"recompute_granularity {setup.recompute_granularity!r} is not one of "
                         f"{RECOMPUTE_CHOICES}")
    if setup.attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention {setup.attention!r} is not one of {ATTENTION_CHOICES}")
    validate_nm(setup.n, setup.m)
    tp, pp, m = setup.tensor_model_parallel_size, setup.pipeline_model_parallel_size, setup.m
    h, f, g = arch.hidden_size, arch.ffn_hidden_size, arch.groups
    heads_width = arch.num_attention_heads * arch.kv_channels
    if g % tp:  # heads are a multiple of groups, so they split too
        raise ValueError(f"num_query_groups {g} is not divisible by tensor-parallel size {tp}: "
                         "pick a TP size that divides it")
    if f % tp:
        raise ValueError(f"ffn_hidden_size {f} is not divisible by tensor-parallel size {tp}")
    if arch.num_layers % pp:
        raise ValueError(f"num_layers {arch.num_layers} is not divisible by pipeline-parallel "
                         f"size {pp}")
    inputs = {"linear_qkv and linear_fc1 (hidden_size)": h,
              "linear_proj (num_attention_heads x kv_channels / TP)": heads_width // tp,
              "linear_fc2 (ffn_hidden_size / TP)": f // tp}
    for what, size in inputs.items():
        if size % m:
            raise ValueError(f"the input dimension of {what} is {size}, not divisible by M={m}: "
                             "N:M groups run along each rank's input dimension; choose an M or "
                             "a TP size that divides it")
    if setup.global_batch_size is not None:
        _positive("global_batch_size", setup.global_batch_size)
        per_step = setup.micro_batch_size * setup.data_parallel_size
        if setup.global_batch_size % per_step:
            raise ValueError(f"global_batch_size {setup.global_batch_size} is not a positive "
                             f"multiple of micro_batch_size x data-parallel size ({per_step})")


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --- the estimate ---------------------------------------------------------------------------------

def estimate(arch: ModelShape, setup: Setup, *, gpu_memory_gib: float = 80.0) -> Estimate:
    """The per-GPU breakdown of every pipeline stage."""
    check(arch, setup)
    tp, pp = setup.tensor_model_parallel_size, setup.pipeline_model_parallel_size
    vocab = padded_vocab_size(arch.vocab_size, setup.make_vocab_size_divisible_by * tp)
    w = e = setup.weight_bytes  # weights and activations share the dtype
    per_group = setup.candidates  # fp32 logits (or softmax values) per group of M weights
    sb = setup.seq_length * setup.micro_batch_size
    u = tp if setup.uses_sequence_parallel else 1
    layer = layer_masked_linears(arch, setup)
    layer_numel = sum(linear.numel for linear in layer)
    largest = max(linear.numel for linear in layer)
    full = setup.recompute_granularity == "full"
    stages = []
    for stage in range(pp):
        params = stage_parameters(arch, setup, stage)
        buffers = ddp_buffers(params, setup)
        layers = stage_layers(arch, setup, stage)
        in_flight = microbatches_in_flight(setup, stage)
        masked = layer_numel * len(layers)
        held = layer_numel if full else masked * in_flight  # weights whose mask state is saved
        per_layer = activation_bytes_per_layer(arch, setup)
        if full:
            activations = in_flight * len(layers) * e * sb * arch.hidden_size // u + per_layer
        else:
            activations = in_flight * len(layers) * per_layer
        if stage == pp - 1:  # final norm and output layer inputs, the loss's fp32 softmax
            activations += in_flight * (2 * e * sb * arch.hidden_size // u + 4 * sb * vocab // tp)
        workspace = largest * (w + 8 + (8 if w != 4 else 0)) + 12 * largest // setup.m * per_group
        if stage == pp - 1:
            workspace = max(workspace, (e + 4) * sb * vocab // tp)
        param_padding = sum((buffer.numel - buffer.param_numel) * buffer.bytes_per_element
                            for buffer in buffers) if setup.use_distributed_optimizer else 0
        weights_label = "weights (trained, " if setup.trains_weights else "weights (frozen, "
        weights = sum(p.numel * p.bytes_per_element for p in params if not p.is_logits)
        sampled = not setup.fixed_mask  # a fixed mask draws nothing and keeps no softmax
        items = [
            Item("weights", weights_label + ("bf16)" if setup.bf16 else "fp32)"), weights, True),
            Item("teacher_weights", "teacher: frozen copy of the weights",
                 weights if setup.separate_teacher else 0, True),
            Item("mask_logits", "mask logits (fp32)",
                 sum(p.numel * 4 for p in params if p.is_logits), True),
            Item("ddp_param_padding", "DDP param buffer padding", param_padding, True),
            Item("grad_buffers", "gradient buffers (fp32)",
                 sum(buffer.numel * 4 for buffer in buffers), True),
            Item("optimizer_states", "optimizer states (Adam" +
                 (", sharded over DP)" if setup.use_distributed_optimizer else ")"),
                 max(optimizer_state_bytes(buffers, setup, rank)
                     for rank in range(setup.data_parallel_size if
                                       setup.use_distributed_optimizer else 1)), True),
            Item("mask_softmax_saved", "mask softmax saved for backward (fp32)",
                 held // setup.m * per_group * 4 if sampled else 0, True),
            Item("mask_index_saved", "hard-sample index saved (int64)",
                 held // setup.m * 8 if setup.hard_sampling and sampled else 0, True),
            Item("masked_weight_saved", "masked weights W*M~ saved by the GEMMs" +
                 ("" if sampled else ", and the fixed masks"), held * w * (1 if sampled else 2),
                 True),
            Item("activations", "activations (estimate)", activations, False),
            Item("transient_workspace", "transient workspace (estimate)", workspace, False),
        ]
        stages.append(StageEstimate(stage, (layers.start, layers.stop - 1), in_flight, masked,
                                    items))
    return Estimate(arch, setup, vocab, stages, gpu_memory_gib)


# --- output ---------------------------------------------------------------------------------------

OPTIONAL_ITEMS = ("ddp_param_padding", "mask_index_saved", "teacher_weights",
                  "mask_softmax_saved")
"""Lines the table leaves out when they are zero (the JSON always has them)."""


def format_table(result: Estimate) -> str:
    """A readable report: settings, one block per group of identical stages, the verdict."""
    arch, setup = result.architecture, result.setup
    tp, pp, dp = (setup.tensor_model_parallel_size, setup.pipeline_model_parallel_size,
                  setup.data_parallel_size)
    lines = [
        f"MaskLLM {setup.n}:{setup.m} mask training, memory per GPU "
        f"({_mode(setup)})",
        f"model: {arch.family}, {arch.num_layers} layers, hidden {arch.hidden_size}, "
        f"FFN {arch.ffn_hidden_size}, {arch.num_attention_heads} heads, {arch.groups} "
        "key/value groups,",
        f"       vocabulary {arch.vocab_size} padded to {result.padded_vocab_size}, "
        f"{'tied' if arch.tied_embeddings else 'untied'} embeddings",
        f"parallel: TP {tp} x PP {pp} x DP {dp} = {_plural(tp * pp * dp, 'GPU')}, "
        f"sequence parallel {'on' if setup.uses_sequence_parallel else 'off'}, "
        f"{'distributed' if setup.use_distributed_optimizer else 'non-distributed'} optimizer",
        f"batch: micro-batch {setup.micro_batch_size} x {setup.seq_length} tokens, "
        f"{'bf16' if setup.bf16 else 'fp32'} weights, recompute {setup.recompute_granularity}, "
        f"{setup.attention} attention",
    ]
    groups: List[List[StageEstimate]] = []
    for stage in result.stages:
        if groups and [i.bytes for i in groups[-1][0].items] == [i.bytes for i in stage.items]:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    width = max(len(item.label) for item in result.stages[0].items)
    for group in groups:
        stage = group[0]
        names = (f"stage {stage.stage}" if len(group) == 1
                 else f"stages {group[0].stage}-{group[-1].stage} (each)")
        lines += ["", f"{names}: layers {stage.layers[0]}-{stage.layers[1]}, "
                      f"{stage.masked_weights:,} masked weights, "
                      f"{_plural(stage.microbatches_in_flight, 'micro-batch')} in flight",
                  f"  {'':{width}}  {'bytes':>16}  {'GiB':>8}"]
        for item in stage.items:
            if not item.bytes and item.key in OPTIONAL_ITEMS:
                continue
            lines.append(f"  {item.label:{width}}  {item.bytes:>16,}  {item.bytes / GIB:>8.2f}")
        lines.append(f"  {'total':{width}}  {stage.total:>16,}  {stage.total / GIB:>8.2f}")
    peak = result.peak
    verdict = "fits" if result.fits else "does NOT fit"
    where = f" (stage {peak.stage})" if pp > 1 else ""
    lines += ["", f"peak {peak.total / GIB:.2f} GiB per GPU{where}: {verdict} in "
                  f"{result.gpu_memory_gib:g} GiB",
              "not included: CUDA context and NCCL buffers (~1-2 GiB), allocator fragmentation,",
              "              optimizer-step temporaries"]
    return "\n".join(lines)


def _mode(setup: Setup) -> str:
    if setup.fixed_mask:
        teacher = ", distilled from a frozen copy" if setup.separate_teacher else ""
        return f"weight recovery under a fixed mask{teacher}"
    return "joint weight training" if setup.train_weights else "mask-only"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("h") else "s")


# --- settings from options ------------------------------------------------------------------------

ARCH_KEYS = tuple(f.name for f in dataclasses.fields(ModelShape))
SETUP_KEYS = tuple(f.name for f in dataclasses.fields(Setup))
YAML_ALIASES = {"model_family": "family", "hard": "hard_sampling"}
# The estimator reads training's --config files with training's reader (yamlfile.read_flat_yaml)
# but not through training.arguments.load_yaml_options: that module imports training.config,
# which reaches megatron through mcore, and the estimator imports no megatron
# (tests/unit/test_layers.py); the keys differ too (Setup's hard_sampling is training's hard,
# and "none", not null, is no recomputation here).


def load_yaml(path: str) -> Dict[str, Any]:
    """The estimator's settings from a training --config YAML (same keys; others ignored)."""
    from ..yamlfile import read_flat_yaml

    options = {}
    for key, value in read_flat_yaml(path).items():
        key = YAML_ALIASES.get(key, key)
        if key == "recompute_granularity" and value is None:
            value = "none"
        if key in ARCH_KEYS or key in SETUP_KEYS or key == "pattern":
            options[key] = value
    return options


def shape_and_setup(options: Dict[str, Any]) -> Tuple[ModelShape, Setup]:
    """ModelShape and Setup from flat options (their field names, plus ``pattern`` "N:M" for
    ``n`` and ``m``): a preset's :data:`PRESET_OPTIONS`, a :func:`load_yaml`, flags, merged in
    the caller's order of precedence. Options of neither are ignored."""
    options = dict(options)
    pattern = options.pop("pattern", None)
    if pattern is not None:
        options["n"], options["m"] = parse_nm(str(pattern))
    missing = [name for name in ("num_layers", "hidden_size", "ffn_hidden_size",
                                 "num_attention_heads", "vocab_size") if name not in options]
    if missing:
        raise ValueError("the model shape is incomplete: pass --model PRESET, --config FILE or "
                         + ", ".join("--" + name.replace("_", "-") for name in missing))
    if "fixed_mask" in options:  # training's option is the mask file; here: whether there is one
        options["fixed_mask"] = bool(options["fixed_mask"])
    arch = ModelShape(**{k: v for k, v in options.items() if k in ARCH_KEYS})
    setup = Setup(**{k: v for k, v in options.items() if k in SETUP_KEYS})
    return arch, setup
