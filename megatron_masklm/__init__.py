"""MaskLLM (learnable N:M semi-structured sparsity) as an extension of Megatron-Core.

Layers: ``masking`` (pure PyTorch maths) -> ``mcore`` (Megatron-Core glue) -> training/tools.
Importing this package imports neither megatron.core nor Transformer Engine.
"""

__version__ = "0.1.0"
