"""The fused masked-weight function keeps only the fp32 softmax probabilities for backward."""
import pytest
import torch

from megatron_masklm.masking import gumbel_noise, masked_weight, nm_candidates


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_for_backward_is_the_probabilities_only(n, m, dtype):
    candidates = nm_candidates(n, m)
    weight = torch.randn(32, 64).to(dtype)
    logits = torch.randn(32, 64 // m, candidates.shape[0], requires_grad=True)
    noise = gumbel_noise(logits.shape)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        masked_weight(weight, logits, candidates, temperature=1.0, logit_scale=100.0,
                      noise_RGC=noise, reg_weight=1e-5)
    inputs = (weight, candidates)
    extra = [t for t in saved if all(t.data_ptr() != i.data_ptr() for i in inputs)]
    extra_bytes = sum(t.numel() * t.element_size() for t in extra)
    # C/M fp32 values per weight: 6 bytes for 2:4, far below a mask (4 B) plus probabilities
    assert extra_bytes == weight.numel() * candidates.shape[0] // m * 4
    assert all(t.dtype == torch.float32 for t in extra)
