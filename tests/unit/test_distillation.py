"""Distillation from the dense model: the vocab-parallel KL against a float64 reference and the
option's checks (the TP / PP / resume behaviour is tests/dist/test_distillation.py's)."""
import pytest
import torch

from distill_reference import reference_kl
from megatron_masklm.training.distillation import sequence_major_grad, vocab_parallel_kl


@pytest.mark.parametrize("temperature, chunk_elements", [
    (1.0, 1 << 24), (2.5, 1 << 24), (1.0, 1), (2.5, 3 * 48), (1.0, 4 * 48 + 7)])
def test_kl_and_its_gradient_equal_a_float64_reference_with_padding_left_out(
        temperature, chunk_elements):
    """Whole-vocabulary KL, value and gradient, in one chunk or in chunks of 1, 3 or 4 tokens
    (10 tokens: the last chunk is short)."""
    torch.manual_seed(0)
    student = (3 * torch.randn(2, 5, 48)).requires_grad_()
    teacher = 3 * torch.randn(2, 5, 48)
    weights = torch.rand(2, 5)  # an upstream gradient that differs per token
    kl = vocab_parallel_kl(student, teacher, temperature=temperature, vocab_size=40,
                           chunk_elements=chunk_elements)
    (kl * weights).sum().backward()

    ref_student = student.detach().double().requires_grad_()
    ref = reference_kl(ref_student, teacher, temperature, 40)
    (ref * weights.double()).sum().backward()
    assert kl.dtype == torch.float32 and kl.shape == (2, 5)
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.grad.double(), ref_student.grad, rtol=1e-4, atol=1e-7)
    assert torch.count_nonzero(student.grad[..., 40:]) == 0  # padding gets no gradient
    # padding columns must not count: other values there change nothing
    shifted = student.detach().clone()
    shifted[..., 40:] = 50.0
    torch.testing.assert_close(vocab_parallel_kl(shifted, teacher, temperature=temperature,
                                                 vocab_size=40), kl.detach())


def test_equal_logits_give_zero_loss_and_zero_gradient():
    logits = torch.randn(3, 7, 16)
    student = logits.clone().requires_grad_()
    kl = vocab_parallel_kl(student, logits, temperature=2.0)
    kl.sum().backward()
    assert torch.count_nonzero(kl) == 0
    assert torch.count_nonzero(student.grad) == 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        vocab_parallel_kl(torch.zeros(2, 8), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        vocab_parallel_kl(torch.zeros(2, 8), torch.zeros(2, 8), temperature=0.0)
    with pytest.raises(ValueError, match="chunk_elements must be >= 1"):
        vocab_parallel_kl(torch.zeros(2, 8), torch.zeros(2, 8), chunk_elements=0)


def test_chunks_change_nothing_in_bf16_and_the_gradient_keeps_the_logits_dtype():
    torch.manual_seed(1)
    student = (3 * torch.randn(3, 4, 64)).to(torch.bfloat16)
    teacher = (3 * torch.randn(3, 4, 64)).to(torch.bfloat16)
    results = []
    for chunk in (1 << 24, 64, 5 * 64):
        leaf = student.clone().requires_grad_()
        kl = vocab_parallel_kl(leaf, teacher, temperature=1.5, vocab_size=60, chunk_elements=chunk)
        kl.sum().backward()
        assert leaf.grad.dtype == torch.bfloat16 and leaf.grad.shape == student.shape
        results.append((kl.detach(), leaf.grad))
    for kl, grad in results[1:]:
        assert torch.equal(kl, results[0][0]) and torch.equal(grad, results[0][1])


def test_distill_options_are_checked():
    from megatron_masklm.training.arguments import run_config_from_options

    base = dict(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                vocab_size=64, mock_data=True, seq_length=16)
    config = run_config_from_options(dict(base, distill_weight=1.0, distill_temperature=2.0))
    assert config.distillation.enabled and config.distillation.distill_temperature == 2.0
    assert not run_config_from_options(base).distillation.enabled
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        run_config_from_options(dict(base, distill_weight=-1.0))
    with pytest.raises(ValueError, match="distill_temperature must be > 0"):
        run_config_from_options(dict(base, distill_weight=1.0, distill_temperature=0.0))
    with pytest.raises(ValueError, match="needs frozen weights"):
        run_config_from_options(dict(base, distill_weight=1.0, train_weights=True))


def test_the_logits_gradient_reaches_the_output_layer_sequence_major_and_unchanged():
    """GPTModel hands back its [s, b, V] logits transposed and copied to [b, s, V]; the
    gradient must come back [s, b, V]-contiguous (a transposed one sends torch's CPU bf16
    matmul to a reference kernel for the rest of the process) and with the same values."""
    torch.manual_seed(0)
    s, b, v = 6, 3, 11
    hidden = torch.randn(s, b, v, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(b, s, v, dtype=torch.float64)
    grads = {}
    for wrapped in (False, True):
        seen = []
        output = hidden * 1.0  # the output layer's result, [s, b, V]
        output.register_hook(seen.append)
        logits = output.transpose(0, 1).contiguous()
        if wrapped:
            logits = sequence_major_grad(logits)
        loss = vocab_parallel_kl(logits, teacher).sum() + logits.logsumexp(-1).pow(2).sum()
        loss.backward()
        grads[wrapped] = (seen[0].is_contiguous(), hidden.grad.clone())
        hidden.grad = None
    assert grads[True][0] and not grads[False][0]
    torch.testing.assert_close(grads[True][1], grads[False][1], rtol=0, atol=0)


def test_sequence_major_grad_leaves_tensors_without_gradient_alone():
    frozen = torch.randn(2, 3, 4)
    assert sequence_major_grad(frozen) is frozen and not frozen._backward_hooks
