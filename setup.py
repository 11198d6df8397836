"""Packaging for megatron_masklm: learnable N:M sparsity (MaskLLM) on Megatron-Core."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="megatron_masklm",
    version="0.1.0",
    description="MaskLLM: learnable N:M semi-structured sparsity as a Megatron-Core extension",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_masklm", "megatron_masklm.*"]),
    # torch is not pinned: clusters bring their own CUDA build. On a CPU machine install
    # torch first (see README) so pip does not pull a CUDA wheel. Transformer Engine and apex
    # are optional GPU paths that come with NGC containers; they are never dependencies.
    install_requires=[
        "torch>=2.6",
        "megatron-core>=0.16.1,<0.20",  # the range CI tests (.ci/run: 0.16.1 and 0.19.2)
        "numpy",
        "packaging>=24.2",
        "psutil",  # megatron's dist_checkpointing save needs it at run time
        "sentencepiece",
        "tokenizers",  # Hugging Face tokenizer.json files (LLaMA-3, SmolLM2) without transformers
        "safetensors",  # HF checkpoints in and out, mask tools
        "pyyaml",  # --config files for training
        "tqdm",  # progress bars in the tools
    ],
    extras_require={
        "hf": ["transformers", "safetensors", "gguf", "accelerate"],
        "plot": ["matplotlib"],
        "test": ["pytest>=8", "pytest-timeout", "matplotlib", "transformers",
                 "gguf", "accelerate"],  # the GGUF tests: transformers needs both
    },
    entry_points={"console_scripts": ["megatron-masklm-train = megatron_masklm.train:main"]},
    license="Apache-2.0",
)
