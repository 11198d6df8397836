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
