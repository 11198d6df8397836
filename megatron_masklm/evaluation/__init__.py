"""Evaluation: perplexity of a Megatron checkpoint (any TP) or a Hugging Face directory with an
optional mask file, under one window plan (``perplexity``; tools/eval_ppl.py is its CLI)."""
