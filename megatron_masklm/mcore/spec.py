"""Turn a Megatron-Core GPT layer spec into a masked one by swapping layer classes."""
import dataclasses
import functools

from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.spec_utils import ModuleSpec

from ..masking import MaskConfig
from . import compat
from .layers import MaskedColumnParallelLinear, MaskedRowParallelLinear
from .te_layers import TE_MASKED_CLASSES

MASKED_LINEAR_CLASSES = {
    ColumnParallelLinear: MaskedColumnParallelLinear,
    RowParallelLinear: MaskedRowParallelLinear,
    **TE_MASKED_CLASSES,
}


def apply_masking_to_spec(spec: ModuleSpec, mask_config: MaskConfig) -> ModuleSpec:
    """A copy of ``spec`` in which every Megatron parallel linear is a masked one.

    Works on the local and the Transformer Engine specs alike; an MLP's fc1 is told that its
    rows are fused [gate; up] halves, so its logits get the weight's GLU checkpoint layout.
    Raises if the spec holds no linear to mask.
    """
    count = [0]

    def masked(module, params, *, fc1=False):
        count[0] += 1
        params = {**params, "mask_config": mask_config}
        if fc1:
            params["glu_fc1"] = True
        return ModuleSpec(module=MASKED_LINEAR_CLASSES[module], params=params)

    def convert(node, *, fc1=False):
        if isinstance(node, type) and node in MASKED_LINEAR_CLASSES:
            return masked(node, {}, fc1=fc1)
        if isinstance(node, ModuleSpec):
            if node.module in MASKED_LINEAR_CLASSES:
                return dataclasses.replace(masked(node.module, node.params, fc1=fc1),
                                           submodules=node.submodules, metainfo=node.metainfo)
            is_mlp = isinstance(node.module, type) and issubclass(node.module, MLP)
            return dataclasses.replace(node, submodules=convert(node.submodules, fc1=is_mlp))
        if isinstance(node, functools.partial):  # 0.19+: mlp=partial(MLP.as_mlp_submodule, ...)
            owner = getattr(node.func, "__self__", node.func)
            is_mlp = isinstance(owner, type) and issubclass(owner, MLP)
            return functools.partial(node.func, *(convert(a) for a in node.args),
                                     **{k: convert(v, fc1=is_mlp) for k, v in node.keywords.items()})
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            changes = {f.name: convert(getattr(node, f.name), fc1=fc1 and f.name == "linear_fc1")
                       for f in dataclasses.fields(node)}
            return dataclasses.replace(node, **changes)
        return node

    masked_spec = convert(spec)
    if count[0] == 0:
        raise ValueError(
            "no Megatron parallel linear found in the layer spec; masked classes exist for "
            f"{sorted(cls.__name__ for cls in MASKED_LINEAR_CLASSES)}"
        )
    return masked_spec


def get_masked_gpt_layer_spec(mask_config: MaskConfig, *, use_te: bool = False,
                              normalization: str = "RMSNorm", qk_layernorm: bool = False) -> ModuleSpec:
    """Megatron's GPT layer spec (local torch modules, or TE on GPU) with masked linears."""
    spec = compat.gpt_layer_spec(use_te=use_te, normalization=normalization, qk_layernorm=qk_layernorm)
    return apply_masking_to_spec(spec, mask_config)
