"""KL(teacher || student) on vocabulary-parallel logits, never gathering the vocabulary.

Under tensor parallelism each rank holds the logits of its slice of the (padded) vocabulary,
[..., V / TP]. As in Megatron's vocab-parallel cross-entropy, the softmax is formed from an
all-reduced max and sum over the TP group, and the per-token KL is an all-reduced sum; only
[...]-shaped statistics cross ranks. Columns past the tokenizer's vocabulary (Megatron's
padding rows) are left out of both distributions.

With temperature T both distributions are softmax(logits / T) and the KL is multiplied by T^2
(Hinton et al.), so the gradient's size does not shrink as T grows:
d(T^2 KL)/d(student logits) = T (p_student - p_teacher).

Pure torch.distributed: no Megatron import, ``group=None`` (or a group of one) needs no
process group at all.
"""
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _group_size(group) -> int:
    if group is None:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return group.size()


def _all_reduce(tensor: torch.Tensor, op, group) -> torch.Tensor:
    if _group_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def _log_softmax(scores: torch.Tensor, group) -> torch.Tensor:
    """log softmax over the last dim spread over ``group``'s ranks (in place on ``scores``
    when the vocabulary is split; torch's fused kernel when one rank holds all of it)."""
    if _group_size(group) == 1:
        return torch.log_softmax(scores, dim=-1)
    if scores.shape[-1]:
        local_max = scores.amax(-1)
    else:  # this rank holds only padding columns
        local_max = torch.full(scores.shape[:-1], float("-inf"), device=scores.device)
    scores -= _all_reduce(local_max, dist.ReduceOp.MAX, group).unsqueeze(-1)
    total = _all_reduce(scores.exp().sum(-1), dist.ReduceOp.SUM, group)
    scores -= total.log().unsqueeze(-1)
    return scores


CHUNK_ELEMENTS = 1 << 24
"""Logits per chunk of tokens (16M: 64 MiB per fp32 temporary). The KL is formed a chunk of
tokens at a time, so its fp32 temporaries (two log-softmaxes and the KL terms) are one chunk's,
not [tokens x V]'s: with Gemma 3's 262,144-token vocabulary, 2 x 512 tokens' logits are 1 GiB
per fp32 copy."""


class _VocabParallelKL(torch.autograd.Function):
    """Forward: the per-token KL, a chunk of tokens at a time; it keeps only the gradient's
    direction p_student - p_teacher (fp32, one [tokens x V] tensor, where a whole-tensor KL
    kept both log-softmaxes). Backward scales it by each token's incoming gradient and T."""

    @staticmethod
    def forward(ctx, student, teacher, temperature, valid_columns, group, chunk_elements):
        shape, local = student.shape, student.shape[-1]
        flat_student, flat_teacher = student.reshape(-1, local), teacher.reshape(-1, local)
        tokens = flat_student.shape[0]
        rows = max(1, chunk_elements // max(local, 1))  # ``local``: equal on every TP rank
        kl = torch.empty(tokens, dtype=torch.float32, device=student.device)
        diff = torch.empty(tokens, valid_columns, dtype=torch.float32, device=student.device)
        for begin in range(0, tokens, rows):  # every rank: the same chunks (same token count)
            end = min(begin + rows, tokens)
            log_student = _log_softmax(
                flat_student[begin:end, :valid_columns].float() / temperature, group)
            log_teacher = _log_softmax(
                flat_teacher[begin:end, :valid_columns].float() / temperature, group)
            # exp(t) (t - s) summed, one fused elementwise pass
            kl[begin:end] = F.kl_div(log_student, log_teacher, reduction="none",
                                     log_target=True).sum(-1)
            torch.sub(log_student.exp_(), log_teacher.exp_(), out=diff[begin:end])
        kl = _all_reduce(kl, dist.ReduceOp.SUM, group) * temperature ** 2
        ctx.save_for_backward(diff)
        ctx.temperature, ctx.shape, ctx.dtype = temperature, shape, student.dtype
        return kl.reshape(shape[:-1])

    @staticmethod
    def backward(ctx, grad_kl):
        (diff,) = ctx.saved_tensors
        scale = grad_kl.float().reshape(-1, 1) * ctx.temperature
        valid, local = diff.shape[-1], ctx.shape[-1]
        if valid == local:
            grad = (diff * scale).to(ctx.dtype)
        else:
            grad = diff.new_zeros(diff.shape[0], local, dtype=ctx.dtype)
            grad[:, :valid] = diff * scale
        return grad.reshape(ctx.shape), None, None, None, None, None


def sequence_major_grad(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` ([b, s, ...], what Megatron's GPTModel returns: its [s, b, ...] output
    transposed and copied), with the gradient that flows back laid out [s, b, ...]-contiguous.

    Without it the output layer's input gradient is a transposed, non-contiguous [s, b, V]
    tensor. torch's CPU matmul then takes its batched path, whose oneDNN bf16 kernel tries to
    copy the broadcast weight (b x V x h elements: 29 GB for SmolLM2 at 2 x 512 tokens), fails,
    and falls back to a reference kernel for every bf16 matmul of the process after it: a bf16
    distilled step of 2 x 512 tokens took 210-220 s (the test suite sharing the cores), ~10 s
    with this hook. In fp32 that one matmul still took 2-3x longer. Converting the layout here
    costs one copy of the logits' gradient.
    """
    if logits.requires_grad and logits.dim() >= 2:
        logits.register_hook(lambda grad: grad.transpose(0, 1).contiguous().transpose(0, 1))
    return logits


def vocab_parallel_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                      temperature: float = 1.0, vocab_start: int = 0,
                      vocab_size: Optional[int] = None, group=None,
                      chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) per token, shape ``[...]``.

    ``student_logits`` and ``teacher_logits`` are this rank's ``[..., V_local]`` slice of the
    vocabulary, which starts at global column ``vocab_start``; columns at or past
    ``vocab_size`` (the tokenizer's vocabulary; None: no padding) are excluded. ``group`` is
    the tensor-parallel group the vocabulary is split over (None: the default group if one is
    initialised). The gradient flows to the student only. The KL is formed over chunks of
    about ``chunk_elements`` logits (whole tokens; the result does not depend on it).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    local = student_logits.shape[-1]
    valid = local if vocab_size is None else min(max(vocab_size - vocab_start, 0), local)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    return _VocabParallelKL.apply(student_logits, teacher_logits.detach(), float(temperature),
                                  valid, group, int(chunk_elements))
