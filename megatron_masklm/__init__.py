"""MaskLLM (learnable N:M semi-structured sparsity) as an extension of Megatron-Core.

Layers, lowest first; each imports only from its own layer and those below it, late (in-function)
imports included, with no cycle (tests/unit/test_layers.py):

1. leaf modules: ``architecture``, ``checkpoints`` (the directory layout), ``cli_errors``, ``cpu``,
   ``families`` (one module per model family, and their registry), ``fileio``, ``safe_pickle``,
   ``yamlfile``;
2. ``masking``: N:M maths and the mask file formats, no megatron import;
3. ``mcore``: Megatron-Core glue (masked layers, model building, checkpoint loading, sharding);
   ``hf``: mask tools for Hugging Face checkpoints, no megatron;
4. ``convert`` (HF <-> Megatron, mask files onto a model) and ``data`` (tokenizers, datasets);
5. the jobs: ``oneshot``, ``evaluation``, ``training``;
6. ``train`` (the training entry point) and the thin scripts in tools/.

Importing this package imports neither megatron.core nor Transformer Engine.
"""

__version__ = "0.1.0"
