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


class _VocabParallelKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, temperature, valid_columns, group):
        log_student = _log_softmax(student[..., :valid_columns].float() / temperature, group)
        log_teacher = _log_softmax(teacher[..., :valid_columns].float() / temperature, group)
        # exp(t) (t - s) summed, one fused elementwise pass
        kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(-1)
        kl = _all_reduce(kl, dist.ReduceOp.SUM, group) * temperature ** 2
        ctx.save_for_backward(log_student, log_teacher)
        ctx.temperature, ctx.local, ctx.dtype = temperature, student.shape[-1], student.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        log_student, log_teacher = ctx.saved_tensors
        valid = log_student.shape[-1]
        diff = log_student.exp().sub_(log_teacher.exp())  # p_student - p_teacher
        diff.mul_(grad_kl.float().unsqueeze(-1) * ctx.temperature)
        if valid == ctx.local:
            return diff.to(ctx.dtype), None, None, None, None
        grad = diff.new_zeros(*diff.shape[:-1], ctx.local)
        grad[..., :valid] = diff
        return grad.to(ctx.dtype), None, None, None, None


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
                      vocab_size: Optional[int] = None, group=None) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) per token, shape ``[...]``.

    ``student_logits`` and ``teacher_logits`` are this rank's ``[..., V_local]`` slice of the
    vocabulary, which starts at global column ``vocab_start``; columns at or past
    ``vocab_size`` (the tokenizer's vocabulary; None: no padding) are excluded. ``group`` is
    the tensor-parallel group the vocabulary is split over (None: the default group if one is
    initialised). The gradient flows to the student only.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    local = student_logits.shape[-1]
    valid = local if vocab_size is None else min(max(vocab_size - vocab_start, 0), local)
    return _VocabParallelKL.apply(student_logits, teacher_logits.detach(), float(temperature),
                                  valid, group)
