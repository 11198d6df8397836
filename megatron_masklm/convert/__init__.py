"""Hugging Face <-> Megatron-Core checkpoint conversion: a declarative name map, streaming
HF -> Megatron, and Megatron (any TP/PP, dense or masked) -> HF plus HF-named masks."""
from .hf_config import hf_config_from_shape, shape_from_hf_config
from .hf_to_megatron import convert_hf_to_megatron
from .megatron_to_hf import convert_megatron_to_hf, load_megatron_checkpoint, write_safetensors
from .name_map import ParamMap, fuse_qkv, masked_hf_names, param_maps, split_qkv

__all__ = [
    "ParamMap", "convert_hf_to_megatron", "convert_megatron_to_hf", "fuse_qkv",
    "hf_config_from_shape", "load_megatron_checkpoint", "masked_hf_names", "param_maps",
    "shape_from_hf_config", "split_qkv", "write_safetensors",
]
