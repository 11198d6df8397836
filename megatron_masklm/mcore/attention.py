"""Megatron's local core attention computed by torch's scaled_dot_product_attention.

On CPU (no Transformer Engine) Megatron's local DotProductAttention materialises the full
[b, heads, s, s] score matrix, masks it and runs a separate softmax; torch's fused kernel
computes the same causal attention about 2.5x faster on a 2-core CPU (measured: 37 ms vs 96 ms
for 8 x 512 tokens, 9 heads / 3 KV groups) and never builds the matrix. It is a drop-in
subclass (same constructor, state dict and output layout) that takes the fused path only where
the result is the same maths: causal self-attention with no explicit mask, bias, packed
sequences, sliding window, softmax offset or active dropout; anything else goes to Megatron.
"""
import dataclasses
import functools

import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec


class SDPADotProductAttention(DotProductAttention):
    """DotProductAttention through ``F.scaled_dot_product_attention`` when it is equivalent."""

    def _fused_applies(self, query, key, attention_mask, attn_mask_type, attention_bias,
                       packed_seq_params) -> bool:
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        dropout = self.attention_dropout.p if self.training else 0.0
        return (attention_mask is None and attention_bias is None and packed_seq_params is None
                and mask_type == AttnMaskType.causal and query.shape[0] == key.shape[0]
                and self.softmax_offset is None and dropout == 0.0
                and getattr(self.scale_mask_softmax, "window_size", None) is None
                and not self.config.apply_query_key_layer_scaling)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np * hn]."""
        if not self._fused_applies(query, key, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type=attn_mask_type,
                                   attention_bias=attention_bias,
                                   packed_seq_params=packed_seq_params)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                                 enable_gqa=k.shape[1] != q.shape[1])
        sq, b = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)


def with_sdpa_attention(spec):
    """A copy of a layer spec whose local DotProductAttention is :class:`SDPADotProductAttention`
    (Transformer Engine specs, which have their own fused attention, are returned unchanged)."""

    def convert(node):
        if node is DotProductAttention:
            return SDPADotProductAttention
        if isinstance(node, ModuleSpec):
            return dataclasses.replace(node, module=convert(node.module),
                                       submodules=convert(node.submodules))
        if isinstance(node, functools.partial):
            return functools.partial(node.func, *(convert(a) for a in node.args),
                                     **{k: convert(v) for k, v in node.keywords.items()})
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            return dataclasses.replace(node, **{f.name: convert(getattr(node, f.name))
                                                for f in dataclasses.fields(node)})
        return node

    return convert(spec)
