"""What one GPU of a pipeline stage holds in MaskLLM mask training, laid out the way the
project's builders lay it out: each parameter in Megatron's order, DDP's buffers and buckets,
the distributed optimizer's shards, and what one transformer layer keeps for the backward.

The pieces :func:`megatron_masklm.training.memory.estimate` adds up (the formulas, what is exact
and what is an estimate, and worked examples are that module's docstring); pure arithmetic on a
:class:`ModelShape` and a :class:`~megatron_masklm.training.memory.Setup`, no megatron import.
"""
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

from ..architecture import ModelShape, padded_vocab_size

if TYPE_CHECKING:  # memory.py defines Setup and imports this module
    from .memory import Setup


@dataclass(frozen=True)
class Param:
    """One parameter of a pipeline stage, as Megatron registers it (local spec order)."""

    name: str
    numel: int
    bytes_per_element: int
    trainable: bool
    shared_embedding: bool = False

    @property
    def is_logits(self) -> bool:
        return self.name.endswith("mask_logits")


@dataclass(frozen=True)
class MaskedLinear:
    """One masked linear's weight shard on a TP rank: ``rows`` x ``inputs``."""

    name: str
    rows: int
    inputs: int

    @property
    def numel(self) -> int:
        return self.rows * self.inputs


# --- what each stage holds ----------------------------------------------------------------------

def stage_layers(arch: ModelShape, setup: "Setup", stage: int) -> range:
    """The global indices of the transformer layers on pipeline stage ``stage``."""
    per_stage = arch.num_layers // setup.pipeline_model_parallel_size
    return range(stage * per_stage, (stage + 1) * per_stage)


def layer_masked_linears(arch: ModelShape, setup: "Setup") -> List[MaskedLinear]:
    """One layer's masked linears as shards of one TP rank: column-parallel qkv and fc1 split
    rows, row-parallel proj and fc2 split inputs."""
    tp, h, d = setup.tensor_model_parallel_size, arch.hidden_size, arch.head_dim
    fc1_rows = arch.ffn_hidden_size * (2 if arch.gated_linear_unit else 1)
    return [
        MaskedLinear("self_attention.linear_proj", h, arch.num_attention_heads * d // tp),
        MaskedLinear("self_attention.linear_qkv",
                     (arch.num_attention_heads + 2 * arch.groups) * d // tp, h),
        MaskedLinear("mlp.linear_fc1", fc1_rows // tp, h),
        MaskedLinear("mlp.linear_fc2", h, arch.ffn_hidden_size // tp),
    ]


def stage_parameters(arch: ModelShape, setup: "Setup", stage: int) -> List[Param]:
    """Every parameter of one rank of ``stage``, in Megatron's order (local layer spec)."""
    tp, pp = setup.tensor_model_parallel_size, setup.pipeline_model_parallel_size
    h = arch.hidden_size
    w, bias = setup.weight_bytes, arch.add_bias_linear
    vocab = padded_vocab_size(arch.vocab_size, setup.make_vocab_size_divisible_by * tp)
    norm_bias = arch.normalization == "LayerNorm"
    train = setup.trains_weights
    first, last = stage == 0, stage == pp - 1
    params: List[Param] = []

    def weight(name, numel, shared=False):
        params.append(Param(name, numel, w, train, shared))

    def norm(name, width=h):
        weight(f"{name}.weight", width)
        if norm_bias:
            weight(f"{name}.bias", width)

    if first:
        weight("embedding.word_embeddings.weight", vocab // tp * h,
               shared=arch.tied_embeddings and pp > 1)
        if arch.position_embedding_type == "learned_absolute":
            weight("embedding.position_embeddings.weight", arch.max_position_embeddings * h)
    linears = {linear.name: linear for linear in layer_masked_linears(arch, setup)}
    biases = {"self_attention.linear_proj": h, "mlp.linear_fc2": h,  # row-parallel: not split
              "self_attention.linear_qkv": linears["self_attention.linear_qkv"].rows,
              "mlp.linear_fc1": linears["mlp.linear_fc1"].rows}
    for local in range(len(stage_layers(arch, setup, stage))):  # a stage numbers its layers from 0
        prefix = f"decoder.layers.{local}"
        for block, names in (("input_layernorm", ("self_attention.linear_proj",
                                                  "self_attention.linear_qkv")),
                             ("pre_mlp_layernorm", ("mlp.linear_fc1", "mlp.linear_fc2"))):
            norm(f"{prefix}.{block}")
            for name in names:
                linear = linears[name]
                weight(f"{prefix}.{name}.weight", linear.numel)
                if bias or (arch.add_qkv_bias and name == "self_attention.linear_qkv"):
                    weight(f"{prefix}.{name}.bias", biases[name])
                params.append(Param(f"{prefix}.{name}.mask_logits",
                                    linear.numel // setup.m * setup.candidates, 4,
                                    not setup.fixed_mask))
                if arch.post_sublayer_norms and name in ("self_attention.linear_proj",
                                                         "mlp.linear_fc2"):
                    norm(f"{prefix}.{name}.post_norm")  # Gemma: the sublayer output's norm
                if arch.qk_layernorm and name == "self_attention.linear_qkv":
                    for qk in "qk":  # one norm over a head's width, replicated over TP
                        norm(f"{prefix}.self_attention.{qk}_layernorm", arch.kv_channels)
    if last:
        norm("decoder.final_layernorm")
        if not arch.tied_embeddings or pp > 1:
            weight("output_layer.weight", vocab // tp * h, shared=arch.tied_embeddings)
    return params


# --- DDP buffers and the optimizer ----------------------------------------------------------------

@dataclass
class Bucket:
    """A contiguous range of a DDP buffer and the parameters laid out in it."""

    start: int
    end: int
    params: List[Tuple[Param, int, int]]  # (param, start, end) in buffer elements


@dataclass
class Buffer:
    """One DDP param-and-grad buffer: the trainable parameters of one dtype."""

    bytes_per_element: int
    numel: int
    buckets: List[Bucket]

    @property
    def param_numel(self) -> int:
        return sum(p.numel for bucket in self.buckets for p, _, _ in bucket.params)


def ddp_buffers(params: Sequence[Param], setup: "Setup") -> List[Buffer]:
    """Lay the trainable parameters out as Megatron's DistributedDataParallel does.

    One buffer per parameter dtype (gradients fp32: the builders reduce in fp32), filled in
    reverse registration order. The builders leave overlap_grad_reduce off, so there is one
    bucket per buffer, except that with the distributed optimizer a shared (tied, PP > 1)
    embedding gets a bucket of its own. With the distributed optimizer each parameter starts at
    a multiple of 64 elements and each bucket ends at a multiple of lcm(DP, 128).
    """
    distributed = setup.use_distributed_optimizer
    divisor = math.lcm(setup.data_parallel_size, 128)

    def pad(value, multiple):
        return -(-value // multiple) * multiple if distributed else value

    by_dtype: Dict[int, List[Param]] = {}
    for param in params:
        if param.trainable:
            by_dtype.setdefault(param.bytes_per_element, []).append(param)
    buffers = []
    for element_bytes, group in by_dtype.items():
        buckets: List[Bucket] = []
        bucket_start, position, current = 0, 0, []

        def close(end):
            nonlocal bucket_start, current
            end = pad(end, divisor)
            buckets.append(Bucket(bucket_start, end, current))
            bucket_start, current = end, []
            return end

        for param in reversed(group):
            position = pad(position, 64)
            own_bucket = param.shared_embedding and distributed
            if own_bucket and current:
                position = close(position)
            current.append((param, position, position + param.numel))
            position += param.numel
            if own_bucket:
                position = close(position)
        if current:
            close(position)
        buffers.append(Buffer(element_bytes, buckets[-1].end, buckets))
    return buffers


def optimizer_state_bytes(buffers: Sequence[Buffer], setup: "Setup", dp_rank: int) -> int:
    """Adam state of one DP rank: exp_avg and exp_avg_sq (fp32) for every element it updates,
    plus an fp32 main copy of those that are not fp32."""
    total = 0
    for buffer in buffers:
        per_element = 8 + (4 if buffer.bytes_per_element != 4 else 0)
        for bucket in buffer.buckets:
            if setup.use_distributed_optimizer:
                share = (bucket.end - bucket.start) // setup.data_parallel_size
                lo = bucket.start + dp_rank * share
                hi = lo + share
            else:
                lo, hi = bucket.start, bucket.end
            owned = sum(max(0, min(end, hi) - max(start, lo)) for _, start, end in bucket.params)
            total += owned * per_element
    return total


# --- activations ----------------------------------------------------------------------------------

def activation_bytes_per_layer(arch: ModelShape, setup: "Setup") -> int:
    """Estimate: what one transformer layer keeps for the backward, one micro-batch, no
    recomputation beyond ``setup.recompute_granularity == "selective"`` (module docstring)."""
    t, e = setup.tensor_model_parallel_size, setup.weight_bytes
    sb = setup.seq_length * setup.micro_batch_size
    h, f, a = arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads
    q, kv = a * arch.kv_channels, arch.groups * arch.kv_channels
    u = t if setup.uses_sequence_parallel else 1
    norms = 4 * e * sb * h // u  # each norm's input and its linear's input, twice
    if setup.trains_weights and arch.normalization == "RMSNorm":
        norms += 2 * 4 * sb * h // u  # torch's RMSNorm keeps its fp32 output for the weight grad
    if arch.post_sublayer_norms:  # the attention and MLP outputs before their norms
        norms += 2 * e * sb * h // u
    if arch.qk_layernorm:  # the query and key heads before their norms
        norms += e * sb * (q + kv) // t
    if setup.recompute_granularity == "selective":
        attention = e * sb * (2 * q + 2 * kv) // t
    elif setup.attention == "flash":
        attention = e * sb * (2 * q + 2 * kv) // t + 4 * a * sb // t
    else:
        softmax = 4 + (e if e != 4 else 0)
        attention = 4 * e * sb * q // t + softmax * a * setup.seq_length * sb // t
    mlp = (4 if arch.gated_linear_unit else 2) * e * sb * f // t
    return norms + attention + mlp


def microbatches_in_flight(setup: "Setup", stage: int) -> int:
    """Micro-batches whose activations stage ``stage`` holds at once under 1F1B."""
    in_flight = setup.pipeline_model_parallel_size - stage
    if setup.global_batch_size is not None:
        per_rank = setup.global_batch_size // (setup.micro_batch_size * setup.data_parallel_size)
        in_flight = min(in_flight, per_rank)
    return in_flight

