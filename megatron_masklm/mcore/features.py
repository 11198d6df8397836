"""Architecture features Megatron-Core's GPT model has no switch for (Gemma 3's), added without
copying Megatron code.

Through the layer spec:

* :class:`ZeroCenteredRMSNorm`: RMSNorm scaling by ``1 + weight`` in fp32, as Gemma computes it
  (Megatron's ``layernorm_zero_centered_gamma`` exists only in Transformer Engine's norm);
  every norm of the layer, the QK-norms and the final norm.
* post-sublayer norms: the attention output projection and the MLP's fc2 normalise their own
  output (:func:`post_normed`), so ``residual + norm(sublayer(x))`` comes out of Megatron's
  unchanged bias-dropout-add.

Through module hooks, where the spec has no seat:

* the embedding output scaled by ``sqrt(hidden_size)`` (GPTModel's embedding has no scale);
* a RoPE base of its own for the sliding-window layers (GPTModel computes one rotary embedding
  and hands it to every layer; a pre-hook on those layers' attention swaps in theirs).

Sliding windows themselves are Megatron's (``window_size``, ``window_attn_skip_freq``).
"""
import dataclasses
import functools
import math

import torch
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

NORM_FIELDS = ("input_layernorm", "pre_mlp_layernorm", "q_layernorm", "k_layernorm")
POST_NORMED_FIELDS = ("linear_proj", "linear_fc2")


class ZeroCenteredRMSNorm(torch.nn.Module):
    """``x / rms(x) * (1 + weight)``, computed in fp32 and cast back (Gemma's RMSNorm)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


@functools.lru_cache(maxsize=None)
def post_normed(linear_cls: type, norm_cls: type) -> type:
    """``linear_cls`` whose output goes through a norm of its own (``post_norm``)."""

    class PostNormed(linear_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            config = kwargs["config"]
            self.post_norm = norm_cls(config, self.output_size, eps=config.layernorm_epsilon)

        def forward(self, *args, **kwargs):
            output, bias = super().forward(*args, **kwargs)
            if bias is not None:  # pragma: no cover - ModelShape refuses biases with post-norms
                raise RuntimeError("a post-normed linear cannot return a separate bias")
            return self.post_norm(output), None

    PostNormed.__name__ = PostNormed.__qualname__ = f"PostNormed{linear_cls.__name__}"
    return PostNormed


def _module_of(node):
    return node.module if isinstance(node, ModuleSpec) else node


def _with_module(node, module):
    return dataclasses.replace(node, module=module) if isinstance(node, ModuleSpec) else module


def with_architecture_features(spec, shape):
    """A copy of a local layer spec with ``shape``'s norm kind and post-sublayer norms."""
    if not (shape.layernorm_zero_centered_gamma or shape.post_sublayer_norms):
        return spec
    norm_cls = ZeroCenteredRMSNorm if shape.layernorm_zero_centered_gamma else None

    def convert(node, field=None):
        if field in NORM_FIELDS and norm_cls is not None and _module_of(node) is not IdentityOp:
            return _with_module(node, norm_cls)
        if field in POST_NORMED_FIELDS and shape.post_sublayer_norms:
            return _with_module(node, post_normed(_module_of(node), norm_cls or _torch_rms_norm))
        if isinstance(node, ModuleSpec):
            return dataclasses.replace(node, submodules=convert(node.submodules))
        if isinstance(node, functools.partial):  # 0.19+: mlp=partial(MLP.as_mlp_submodule, ...)
            return functools.partial(node.func, *(convert(a) for a in node.args),
                                     **{k: convert(v, k) for k, v in node.keywords.items()})
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            return dataclasses.replace(node, **{f.name: convert(getattr(node, f.name), f.name)
                                                for f in dataclasses.fields(node)})
        return node

    return convert(spec)


def _torch_rms_norm(config, hidden_size, eps=1e-6, **_):
    return torch.nn.RMSNorm(hidden_size, eps=eps, dtype=config.params_dtype)


def final_norm_class(shape):
    """The final norm's class when it is not Megatron's default, else None."""
    return ZeroCenteredRMSNorm if shape.layernorm_zero_centered_gamma else None


def install_hooks(model, shape) -> None:
    """The embedding scale and the sliding-window layers' own RoPE base, on a built GPTModel."""
    if shape.scale_embeddings and getattr(model, "pre_process", True) and hasattr(model, "embedding"):
        scale = math.sqrt(shape.hidden_size)
        model.embedding.register_forward_hook(
            lambda module, inputs, output: output * torch.tensor(scale, dtype=output.dtype))
    if shape.window_size and shape.rotary_base_local not in (None, shape.rotary_base):
        from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

        local = RotaryEmbedding(kv_channels=shape.kv_channels, rotary_percent=1.0,
                                rotary_base=shape.rotary_base_local)
        cache = {}

        def local_rope(module, args, kwargs):
            rope = kwargs.get("rotary_pos_emb")
            if rope is None:
                return None
            length = rope.shape[0]
            if length not in cache:
                cache[length] = local(length).to(rope.device)
            return args, {**kwargs, "rotary_pos_emb": cache[length]}

        for layer in model.decoder.layers:
            if shape.is_window_layer(layer.layer_number):
                layer.self_attention.register_forward_pre_hook(local_rope, with_kwargs=True)
