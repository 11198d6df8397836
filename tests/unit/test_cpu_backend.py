"""The CPU backend's torch-function mode is entered by initialize_distributed and left by
destroy_distributed, so a tool run in-process does not hook every later torch call."""
import pytest
import torch


def test_destroy_distributed_leaves_no_cuda_to_cpu_mode_behind(tmp_path):
    """A tool run in-process (train enters CudaToCpuMode) must not hook every later torch call."""
    from megatron_masklm import mcore
    from megatron_masklm.mcore.cpu_backend import CudaToCpuMode

    def active_modes():
        return [type(torch._C._get_function_stack_at(i))
                for i in range(torch._C._len_torch_function_stack())]

    before = active_modes()
    mcore.initialize_distributed(init_method=f"file://{tmp_path / 'store'}", seed=1,
                                 cuda_to_cpu_mode=True)
    try:
        if not torch.cuda.is_available():
            assert active_modes() == before + [CudaToCpuMode]
            assert torch.zeros(2, device="cuda").device.type == "cpu"
    finally:
        mcore.destroy_distributed()
    assert active_modes() == before
    with pytest.raises((RuntimeError, AssertionError), match="(?i)cuda|torch not compiled"):
        torch.zeros(2, device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU backend only acts without CUDA")
def test_the_cpu_patches_are_undone_and_a_tool_called_from_code_leaves_none():
    """disable_cpu_backend puts back every function enable_cpu_backend replaced (the same
    objects), and a converter run in-process leaves torch.cuda and megatron.core as it found
    them."""
    from megatron.core.fusions import fused_softmax
    from megatron.core.tensor_parallel import random as mcore_random

    from megatron_masklm.convert.output import megatron_world_of_one
    from megatron_masklm.mcore import cpu_backend

    def functions():
        return ([getattr(torch.cuda, name) for name in ("current_device", "synchronize",
                                                          "current_stream", "stream",
                                                          "get_rng_state", "manual_seed")]
                + [mcore_random._get_cuda_rng_state, mcore_random._set_cuda_rng_state,
                   fused_softmax.get_default_causal_mask])

    if cpu_backend.cpu_backend_enabled():  # an earlier test of this process left it on
        cpu_backend.disable_cpu_backend()
    original = functions()
    assert cpu_backend.enable_cpu_backend() is True
    patched = functions()
    assert all(a is not b for a, b in zip(original, patched))
    assert torch.cuda.current_device() == "cpu"
    cpu_backend.disable_cpu_backend()
    assert all(a is b for a, b in zip(original, functions()))
    assert not cpu_backend.cpu_backend_enabled()

    with megatron_world_of_one() as (mcore, _):
        assert torch.cuda.current_device() == "cpu"  # patched inside
    assert all(a is b for a, b in zip(original, functions()))
