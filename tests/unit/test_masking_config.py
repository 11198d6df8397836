"""MaskConfig validation, the linear schedules (SPEC section 2) and shape errors.

References: the paper's schedule end points (tau 4 -> 0.05, kappa 100 -> 500, lambda 1e-5 -> 0)
and their midpoints computed by hand.
"""
import pytest
import torch

from megatron_masklm.masking import (
    MaskConfig, MaskState, check_group_shape, linear_schedule, mask_state_at, masked_weight,
    nm_candidates,
)


def test_default_config_is_the_paper_recipe():
    config = MaskConfig()
    assert (config.n, config.m, config.pattern) == (2, 4, "2:4")
    assert config.temperature == (4.0, 0.05)
    assert config.logit_scale == (100.0, 500.0)
    assert config.reg_weight == (1e-5, 0.0)
    assert config.prior_strength == 3.0 and config.init_std == 0.01
    assert config.hard is False and config.gumbel_noise is True


def test_config_is_keyword_only_and_normalises_pairs():
    with pytest.raises(TypeError):
        MaskConfig(2, 4)
    config = MaskConfig(n=1, m=8, temperature=[2, 1], logit_scale=(10, 20), reg_weight=(0, 0))
    assert config.pattern == "1:8"
    assert config.temperature == (2.0, 1.0) and isinstance(config.temperature[0], float)
    assert config.logit_scale == (10.0, 20.0) and config.reg_weight == (0.0, 0.0)


@pytest.mark.parametrize("steps,expected", [
    (0, (4.0, 100.0, 1e-5)),
    (100, (0.05, 500.0, 0.0)),
    (50, (2.025, 300.0, 5e-6)),        # midpoints: (4 + 0.05) / 2, (100 + 500) / 2, 1e-5 / 2
    (25, (3.0125, 200.0, 7.5e-6)),     # 4 - 0.25 * 3.95, 100 + 0.25 * 400, 0.75e-5
    (150, (0.05, 500.0, 0.0)),         # progress beyond 1 clamps
])
def test_mask_state_at(steps, expected):
    state = mask_state_at(MaskConfig(), steps, 100)
    assert isinstance(state, MaskState)
    assert state.temperature == pytest.approx(expected[0], rel=1e-12, abs=1e-15)
    assert state.logit_scale == pytest.approx(expected[1], rel=1e-12)
    assert state.reg_weight == pytest.approx(expected[2], rel=1e-12, abs=1e-20)
    assert all(isinstance(v, float) for v in (state.temperature, state.logit_scale, state.reg_weight))


def test_mask_state_follows_custom_config():
    config = MaskConfig(temperature=(2.0, 1.0), logit_scale=(10.0, 30.0), reg_weight=(0.0, 1.0))
    state = mask_state_at(config, 3, 4)
    assert (state.temperature, state.logit_scale, state.reg_weight) == (1.25, 25.0, 0.75)


def test_linear_schedule_clamps_both_ends():
    assert linear_schedule(4.0, 0.05, -0.5) == 4.0
    assert linear_schedule(4.0, 0.05, 2.0) == pytest.approx(0.05, rel=1e-12)
    assert linear_schedule(100.0, 500.0, 0.75) == 400.0


@pytest.mark.parametrize("train_steps", [0, -10])
def test_non_positive_train_steps_raise(train_steps):
    with pytest.raises(ValueError, match=f"train_steps must be > 0, got {train_steps}"):
        mask_state_at(MaskConfig(), 0, train_steps)


def test_negative_completed_steps_raise():
    with pytest.raises(ValueError, match="-1"):
        mask_state_at(MaskConfig(), -1, 100)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(n=0), "N=0"),
    (dict(n=4), "N=4"),
    (dict(n=2, m=9), "M=9"),
    (dict(n=1, m=1), "M=1"),
    (dict(n="2"), "'2'"),
    (dict(temperature=(4.0, 0.0)), "temperature"),
    (dict(temperature=(-1.0, 0.05)), "temperature"),
    (dict(temperature=(4.0, 0.05, 0.01)), "temperature"),
    (dict(logit_scale=(0.0, 500.0)), "logit_scale"),
    (dict(reg_weight=(-1e-5, 0.0)), "reg_weight"),
    (dict(reg_weight=(1e-5, -1.0)), "reg_weight"),
    (dict(prior_strength=-1.0), "prior_strength"),
    (dict(init_std=-0.01), "init_std"),
])
def test_bad_config_raises_naming_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MaskConfig(**kwargs)


def test_zero_prior_and_zero_regulariser_are_allowed():
    config = MaskConfig(prior_strength=0.0, reg_weight=(0.0, 0.0), init_std=0.0)
    assert config.prior_strength == 0.0 and config.reg_weight == (0.0, 0.0)


# -- shape errors ------------------------------------------------------------------------


def call_masked_weight(weight, logits, n=2, m=4):
    return masked_weight(weight, logits, nm_candidates(n, m), temperature=4.0, logit_scale=100.0)


@pytest.mark.parametrize("logits_shape", [(4, 2, 5), (4, 3, 6), (3, 2, 6), (4, 2), (4, 2, 6, 1)],
                         ids=str)
def test_masked_weight_rejects_wrong_logits_shape(logits_shape):
    with pytest.raises(ValueError, match=r"expected \(4, 2, 6\)"):
        call_masked_weight(torch.randn(4, 8), torch.zeros(logits_shape))


def test_masked_weight_rejects_input_dim_not_divisible_by_m():
    with pytest.raises(ValueError) as info:
        call_masked_weight(torch.randn(4, 10), torch.zeros(4, 2, 6))
    assert "10" in str(info.value) and "M=4" in str(info.value)
    with pytest.raises(ValueError, match="M=8"):
        call_masked_weight(torch.randn(3, 12), torch.zeros(3, 1, 70), n=4, m=8)


def test_masked_weight_rejects_3d_weight():
    with pytest.raises(ValueError, match="2-D"):
        call_masked_weight(torch.randn(2, 4, 8), torch.zeros(2, 2, 6))


@pytest.mark.parametrize("shape", [(2, 3, 8), (8,), ()], ids=str)
def test_check_group_shape_rejects_non_2d(shape):
    with pytest.raises(ValueError, match=r"2-D .* got shape"):
        check_group_shape(shape, 4)


def test_check_group_shape_counts_groups():
    assert check_group_shape((5, 16), 4) == 4
    assert check_group_shape(torch.Size([3, 24]), 8) == 3
    with pytest.raises(ValueError, match="prior mask input dimension 6"):
        check_group_shape((1, 6), 4, what="prior mask")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(temperature=4.0), "temperature must be a \\(start, end\\) pair"),
    (dict(logit_scale=(100.0,)), "logit_scale must be a \\(start, end\\) pair"),
    (dict(temperature=(float("nan"), 0.05)), "temperature must be finite"),
    (dict(prior_strength=float("inf")), "prior_strength"),
])
def test_malformed_schedules_raise_value_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MaskConfig(**kwargs)
