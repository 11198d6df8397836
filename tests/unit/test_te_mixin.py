"""The masked forward of the TE linears, on CPU: MaskedTEMixin over a stand-in with Transformer
Engine's contract (the forward reads ``self.weight`` itself and asserts every parameter has the
activation dtype) against the local masked linear and a hand-written W * M~. The real TE classes
are compared with the local ones in tests/gpu/test_te_masked_layers.py."""
import pytest
import torch

from megatron_masklm.masking import MaskConfig, MaskState, nm_candidates

IN, OUT = 16, 8


def _config(dtype=torch.float32, **kwargs):
    from megatron.core.model_parallel_config import ModelParallelConfig

    return ModelParallelConfig(use_cpu_initialization=True, params_dtype=dtype, **kwargs)


class StandInTELinear(torch.nn.Module):
    """What the mixin relies on in TE's Linear: the weight comes from getattr at call time, every
    parameter must share the activation dtype (TE's set_activation_dtype), and the module holds a
    fuse_wgrad_accumulation flag; forward returns (output, bias) like Megatron's wrappers."""

    def __init__(self, input_size, output_size, *, config, fail=False):
        super().__init__()
        self.config = config
        self.fuse_wgrad_accumulation = bool(getattr(config, "gradient_accumulation_fusion", False))
        weight = torch.randn(output_size, input_size).to(config.params_dtype)
        self.weight = torch.nn.Parameter(weight)
        self.fail = fail
        self.seen_weights = []

    def forward(self, x, is_first_microbatch=None):
        for name, param in self.named_parameters():
            assert param.dtype == x.dtype, f"TE: {name} is {param.dtype}, activations {x.dtype}"
        weight = getattr(self, "weight")
        self.seen_weights.append(weight)
        if self.fail:
            raise RuntimeError("kernel failed")
        return x @ weight.t(), None


def _masked(config, mask_config=None, **kwargs):
    from megatron_masklm.mcore.te_layers import MaskedTEMixin

    class MaskedStandIn(MaskedTEMixin, StandInTELinear):
        logits_tp_axis = 0

        def __init__(self, *args, mask_config=None, **kw):
            super().__init__(*args, **kw)
            self._init_te_mask(mask_config)

    return MaskedStandIn(IN, OUT, config=config, mask_config=mask_config or MaskConfig(), **kwargs)


def _pair(mcore, dtype=torch.float32):
    torch.manual_seed(0)
    te = _masked(_config(dtype))
    local = mcore.MaskedColumnParallelLinear(
        IN, OUT, config=_config(dtype), init_method=torch.nn.init.normal_, bias=False,
        gather_output=False, mask_config=MaskConfig())
    with torch.no_grad():
        te.mask_logits.normal_(0.0, 0.1)
        local.weight.copy_(te.weight)
        local.mask_logits.copy_(te.mask_logits)
    return te, local


def _hand_masked(weight, logits, *, tau, kappa, noise=None):
    """softmax((kappa * logits + noise) / tau) @ candidates, written out, times W (float64)."""
    scores = logits.double() * kappa + (0 if noise is None else noise.double())
    probs = torch.softmax(scores / tau, dim=-1)
    mask = (probs @ nm_candidates(2, 4).double()).reshape(weight.shape)
    return weight.double() * mask


@pytest.mark.parametrize("training", [True, False])
def test_forward_and_logit_gradient_match_the_local_masked_linear(mcore, training):
    te, local = _pair(mcore)
    x = torch.randn(5, 3, IN)
    grad = torch.randn(5, 3, OUT)
    results = []
    for layer in (te, local):
        layer.mask_config = MaskConfig(gumbel_noise=False)
        layer.set_mask_state(MaskState(temperature=0.5, logit_scale=10.0, reg_weight=0.0))
        layer.train(training)
        x_in = x.clone().requires_grad_(True)
        out, bias = layer(x_in)
        assert bias is None
        out.backward(grad)
        results.append((out.detach(), x_in.grad, layer.mask_logits.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if training:  # and both agree with the soft mask written out by hand
        want = x.double() @ _hand_masked(te.weight.detach(), te.mask_logits.detach(),
                                         tau=0.5, kappa=10.0).t()
        torch.testing.assert_close(results[0][0].double(), want, rtol=1e-5, atol=1e-5)
    assert te.weight.grad is None  # frozen weight: only the logits learn


def test_the_module_sees_the_masked_weight_and_gets_its_parameters_back(mcore):
    te = _masked(_config())
    weight, logits = te.weight, te.mask_logits
    te.eval()
    te(torch.randn(2, IN))
    seen = te.seen_weights[-1]
    assert not isinstance(seen, torch.nn.Parameter)
    torch.testing.assert_close(seen, weight.detach() * te.hard_mask().float())
    assert te._parameters["weight"] is weight and te._parameters["mask_logits"] is logits
    assert [name for name, _ in te.named_parameters()] == ["weight", "mask_logits"]

    te.fail = True  # a failing kernel still leaves the real parameters in place
    with pytest.raises(RuntimeError, match="kernel failed"):
        te(torch.randn(2, IN))
    assert te._parameters["weight"] is weight and te._parameters["mask_logits"] is logits


def test_bf16_weights_with_fp32_logits_pass_the_one_dtype_check(mcore):
    te = _masked(_config(torch.bfloat16))
    assert te.weight.dtype == torch.bfloat16 and te.mask_logits.dtype == torch.float32
    te.train()
    out, _ = te(torch.randn(4, IN, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().pow(2).sum().backward()
    assert te.mask_logits.grad.dtype == torch.float32 and te.mask_logits.grad.abs().sum() > 0
    # the stand-in's check is live: a parameter of another dtype is refused
    te.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(AssertionError, match="extra is torch.float32"):
        te(torch.randn(4, IN, dtype=torch.bfloat16))


def test_fused_wgrad_accumulation_is_switched_off(mcore):
    te = _masked(_config(gradient_accumulation_fusion=True))
    assert te.config.gradient_accumulation_fusion and te.fuse_wgrad_accumulation is False


@pytest.mark.parametrize("option, value, message", [
    ("fp8", "hybrid", "do not support fp8"),
    ("fp4", "nvfp4", "do not support fp4"),
    ("delay_wgrad_compute", True, "delay_wgrad_compute"),
])
def test_settings_that_bypass_autograd_are_refused(mcore, option, value, message):
    config = _config()
    setattr(config, option, value)
    with pytest.raises(ValueError, match=message):
        _masked(config)
