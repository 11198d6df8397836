"""Dense vs 2:4 semi-structured sparse inference time on one CUDA GPU, bf16: the benchmark
behind tools/bench_sparse.py (its command line), kept out of the megatron_masklm package, which
trains and exports the masks this measures.

Two measurements, each reported as dense time / sparse time (above 1: the sparse one is faster):

* **GEMMs** ``y = x W^T`` of the LLaMA-2 7B / 13B decoder linears (q/k/v/o, gate/up, down) with
  a 2:4 weight, at prefill (512..8192 tokens) and decode (1..32 tokens) sizes; the "layer" row
  weighs them as one decoder layer has them (4 x q/k/v/o, 2 x gate/up, 1 x down).
* **A model**: a HF LLaMA directory whose decoder linears are 2:4 (``tools/convert_megatron_to_hf.py
  --apply-masks``), prefill of one sequence and one decode step of a batch (over a KV cache of
  ``--context`` tokens), with those linears swapped to semi-structured weights against the same
  model dense. Embeddings and the LM head stay dense.

Kernels: ``torch.sparse.to_sparse_semi_structured``, through cuSPARSELt when torch has it
(``--backend auto``, the default) or through CUTLASS (``--backend cutlass`` sets
``SparseSemiStructuredTensor._FORCE_CUTLASS``). Both need compute capability 8.0 or newer.

Shape rules (torch's ``_DTYPE_SHAPE_CONSTRAINTS``, bf16): the sparse weight, which is the first
operand of the kernel's product (``F.linear(x, W_sparse)`` runs ``(W_sparse @ x^T)^T``), needs
rows x columns in multiples of 16 x 16 (cuSPARSELt) or 32 x 64 (CUTLASS): every LLaMA-2 linear
fits, and a model linear that does not stays dense (reported). The dense operand's token count
is taken in multiples of 8. :class:`SemiStructuredLinear` pads the tokens itself with zero rows
(:func:`padded_tokens`: decode batches 1..8 run as 8, 9..16 as 16, ...) and drops the padded
output rows, so the cost shows in the timing (pad and slice are inside the timed call) and does
not depend on whether the installed torch pads for it.

Timing: CUDA events around each call (per-call set-up such as a fresh KV cache outside them),
warm-up calls first, the median of the repeats.
"""
import contextlib
import inspect
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from megatron_masklm import families
from megatron_masklm.hf.masks import is_masked_weight
from megatron_masklm.masking.nm import nm_violations

MIN_COMPUTE_CAPABILITY = (8, 0)
PREFILL_TOKENS = (512, 1024, 2048, 4096, 8192)
DECODE_TOKENS = (1, 2, 4, 8, 16, 32)
LLAMA2 = {preset[len("llama2-"):]: dict(hidden=shape["hidden_size"], ffn=shape["ffn_hidden_size"])
          for preset, shape in families.preset_options().items()
          if preset.startswith("llama2-")
          and shape["num_query_groups"] == shape["num_attention_heads"]}
"""LLaMA-2 decoder widths, from the presets (:mod:`megatron_masklm.families`): those without
grouped-query attention (7B, 13B), as :func:`llama2_linear_shapes` takes k/v to be hidden x
hidden."""
BACKENDS = ("auto", "cusparselt", "cutlass")
# (sparse rows, sparse cols, dense rows) multiples for bf16, used when torch's table is missing.
_FALLBACK_CONSTRAINTS = {"cusparselt": (16, 16, 8), "cutlass": (32, 64, 8)}


class SparseBenchError(RuntimeError):
    """A condition the user can fix (no suitable GPU, no 2:4 linear, a backend torch lacks)."""


@dataclass(frozen=True)
class LinearShape:
    """One kind of decoder linear: ``count`` of them per layer, weight ``out x in``."""

    model: str
    name: str
    out_features: int
    in_features: int
    count: int


@dataclass(frozen=True)
class Constraints:
    """Multiples the semi-structured kernels need: sparse weight rows/cols, dense token rows."""

    sparse_rows: int
    sparse_cols: int
    token_multiple: int


def llama2_linear_shapes(model: str) -> List[LinearShape]:
    """The distinct decoder-linear shapes of LLaMA-2 ``model`` ("7b" or "13b")."""
    if model not in LLAMA2:
        raise ValueError(f"unknown model {model!r}: choose from {sorted(LLAMA2)}")
    hidden, ffn = LLAMA2[model]["hidden"], LLAMA2[model]["ffn"]
    return [LinearShape(model, "q/k/v/o", hidden, hidden, 4),
            LinearShape(model, "gate/up", ffn, hidden, 2),
            LinearShape(model, "down", hidden, ffn, 1)]


def padded_tokens(tokens: int, multiple: int) -> int:
    """``tokens`` rounded up to a multiple of ``multiple`` (the kernels' dense minimum)."""
    if tokens < 1 or multiple < 1:
        raise ValueError(f"tokens ({tokens}) and multiple ({multiple}) must be >= 1")
    return -(-tokens // multiple) * multiple


def shape_problem(out_features: int, in_features: int, constraints: Constraints) -> Optional[str]:
    """Why a weight cannot be semi-structured under ``constraints`` (None when it can)."""
    rows, cols = constraints.sparse_rows, constraints.sparse_cols
    if out_features % rows or in_features % cols:
        return (f"weight {out_features} x {in_features} is not a multiple of {rows} x {cols} "
                "(the kernel's sparse minimum)")
    return None


def resolve_backend(requested: str) -> str:
    """"cusparselt" or "cutlass" for ``requested`` ("auto": cuSPARSELt when torch has it)."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}: choose from {BACKENDS}")
    module = getattr(torch.backends, "cusparselt", None)
    have = bool(module is not None and module.is_available())
    if requested == "auto":
        return "cusparselt" if have else "cutlass"
    if requested == "cusparselt" and not have:
        raise SparseBenchError(f"torch {torch.__version__} was built without cuSPARSELt: use "
                               "--backend cutlass (or auto)")
    return requested


def backend_constraints(backend: str, dtype: torch.dtype = torch.bfloat16) -> Constraints:
    """The shape multiples of ``backend`` for ``dtype``, read from torch's own table."""
    if backend not in _FALLBACK_CONSTRAINTS:
        raise ValueError(f"unknown backend {backend!r}: choose from {sorted(_FALLBACK_CONSTRAINTS)}")
    name = "SparseSemiStructuredTensorCUSPARSELT" if backend == "cusparselt" else \
        "SparseSemiStructuredTensorCUTLASS"
    table = getattr(getattr(torch.sparse, name, None), "_DTYPE_SHAPE_CONSTRAINTS", {})
    if dtype in table:
        c = table[dtype]
        dense_rows = getattr(c, "dense_min_rows", _FALLBACK_CONSTRAINTS[backend][2])
        return Constraints(c.sparse_min_rows, c.sparse_min_cols, dense_rows)
    return Constraints(*_FALLBACK_CONSTRAINTS[backend])


@contextlib.contextmanager
def semi_structured_backend(backend: str):
    """Make ``to_sparse_semi_structured`` build ``backend``'s tensors inside the block."""
    cls = torch.sparse.SparseSemiStructuredTensor
    previous = cls._FORCE_CUTLASS
    cls._FORCE_CUTLASS = backend == "cutlass"
    try:
        yield
    finally:
        cls._FORCE_CUTLASS = previous


def require_sparse_gpu() -> str:
    """The CUDA device's description; raises SparseBenchError without a capable GPU."""
    needed = "a CUDA GPU with compute capability >= {}.{} (the 2:4 semi-structured kernels: " \
             "Ampere or newer)".format(*MIN_COMPUTE_CAPABILITY)
    if not torch.cuda.is_available():
        raise SparseBenchError(f"needs {needed}; torch {torch.__version__} sees no CUDA device")
    capability = torch.cuda.get_device_capability()
    name = torch.cuda.get_device_name()
    if tuple(capability) < MIN_COMPUTE_CAPABILITY:
        raise SparseBenchError(f"needs {needed}; {name} has compute capability "
                               f"{capability[0]}.{capability[1]}")
    return f"{name} (compute capability {capability[0]}.{capability[1]}), torch {torch.__version__}"


def apply_2of4(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with the 2 largest-magnitude of every 4 consecutive inputs kept: a 2:4 weight
    for the GEMM measurements (which 2 does not change the time)."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4)
    keep = groups.abs().float().topk(2, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(rows, cols)


class SemiStructuredLinear(torch.nn.Module):
    """An inference linear whose 2:4 weight is held compressed (torch semi-structured sparse).

    The tokens are padded with zero rows to ``token_multiple`` and the padded outputs dropped,
    so any batch works; the weight must already be 2:4 along its input dimension.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                 token_multiple: int):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.out_features, self.in_features = weight.shape
        self.token_multiple = token_multiple
        self.weight = torch.nn.Parameter(to_sparse_semi_structured(weight.detach()),
                                         requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, *, token_multiple: int) -> "SemiStructuredLinear":
        return cls(linear.weight, linear.bias, token_multiple=token_multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).contiguous()
        tokens = x2.shape[0]
        padded = padded_tokens(tokens, self.token_multiple)
        if padded != tokens:
            x2 = F.pad(x2, (0, 0, 0, padded - tokens))
        y = F.linear(x2, self.weight, self.bias)
        if padded != tokens:
            y = y[:tokens]
        return y.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, token_multiple={self.token_multiple}")


def select_semi_structured_linears(model: torch.nn.Module, *, constraints: Constraints,
                                   n: int = 2, m: int = 4) -> Tuple[List[str], Dict[str, str]]:
    """Which ``nn.Linear`` modules of a HF LLaMA-family (or Qwen) model to swap, and why others are not.

    Swapped: the decoder linears MaskLLM masks (q/k/v/o, gate/up/down) whose weight keeps at
    most N of every M inputs and fits the kernel's shape multiples. Everything else (the LM
    head, a linear that is not N:M or has an odd shape) is returned with the reason it stays
    dense.
    """
    selected, skipped = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if not is_masked_weight(f"{name}.weight"):
            skipped[name] = "not a masked decoder linear (embeddings and the LM head stay dense)"
            continue
        problem = shape_problem(module.out_features, module.in_features, constraints)
        if problem is None and module.in_features % m:
            problem = f"{module.in_features} inputs do not split into groups of {m}"
        if problem is None:
            bad = nm_violations(module.weight.detach(), n, m)
            if bad:
                problem = f"not {n}:{m}: {bad} groups of {m} keep more than {n}"
        if problem:
            skipped[name] = problem
        else:
            selected.append(name)
    return selected, skipped


def apply_semi_structured(model: torch.nn.Module, names: Sequence[str], *,
                          token_multiple: int) -> None:
    """Replace each named ``nn.Linear`` of ``model`` by a :class:`SemiStructuredLinear`, in place."""
    modules = dict(model.named_modules())
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, SemiStructuredLinear.from_linear(modules[name],
                                                                token_multiple=token_multiple))


def time_cuda(fn: Callable, *, warmup: int, repeats: int,
              setup: Optional[Callable] = None) -> float:
    """Median seconds of ``fn(setup())`` (or ``fn()``) over ``repeats`` timed calls, CUDA events
    around each call only, after ``warmup`` untimed calls."""
    pairs = []
    for index in range(warmup + repeats):
        args = (setup(),) if setup is not None else ()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        if index >= warmup:
            pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs) / 1e3


# ----------------------------------------------------------------------------- measurements
@torch.no_grad()
def bench_gemms(models: Sequence[str], tokens: Sequence[int], *, backend: str, warmup: int,
                repeats: int, seed: int = 0) -> List[dict]:
    """Dense vs semi-structured time of every LLaMA-2 linear shape at every token count."""
    constraints = backend_constraints(backend)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rows = []
    for model in models:
        for shape in llama2_linear_shapes(model):
            weight = apply_2of4(torch.randn(shape.out_features, shape.in_features, device="cuda",
                                            dtype=torch.bfloat16, generator=gen))
            with semi_structured_backend(backend):
                sparse = SemiStructuredLinear(weight, token_multiple=constraints.token_multiple)
            for count in tokens:
                x = torch.randn(count, shape.in_features, device="cuda", dtype=torch.bfloat16,
                                generator=gen)
                dense_s = time_cuda(lambda: F.linear(x, weight), warmup=warmup, repeats=repeats)
                sparse_s = time_cuda(lambda: sparse(x), warmup=warmup, repeats=repeats)
                want, got = F.linear(x, weight).float(), sparse(x).float()
                rows.append({"model": model, "linear": shape.name, "count": shape.count,
                             "out_features": shape.out_features, "in_features": shape.in_features,
                             "tokens": count, "padded_tokens":
                             padded_tokens(count, constraints.token_multiple),
                             "dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3,
                             "ratio": dense_s / sparse_s,
                             "max_rel_err": ((got - want).abs().max() / want.abs().max()).item()})
    return rows


def layer_rows(rows: List[dict]) -> List[dict]:
    """Per model and token count: one decoder layer's linears together (count-weighted)."""
    out = []
    keys = sorted({(r["model"], r["tokens"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, tokens in keys:
        part = [r for r in rows if r["model"] == model and r["tokens"] == tokens]
        dense = sum(r["count"] * r["dense_ms"] for r in part)
        sparse = sum(r["count"] * r["sparse_ms"] for r in part)
        out.append({"model": model, "linear": "layer", "tokens": tokens, "dense_ms": dense,
                    "sparse_ms": sparse, "ratio": dense / sparse})
    return out


def _forward_kwargs(model) -> dict:
    """Only the last position's logits, where this transformers supports asking for that."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


@torch.no_grad()
def _time_model(model, *, prefill: Sequence[int], decode: Sequence[int], context: int,
                vocab: int, warmup: int, repeats: int, seed: int) -> List[dict]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    extra = _forward_kwargs(model)
    rows = []
    for tokens in prefill:
        ids = torch.randint(0, vocab, (1, tokens), device="cuda", generator=gen)
        seconds = time_cuda(lambda: model(ids, use_cache=False, **extra), warmup=warmup,
                            repeats=repeats)
        rows.append({"phase": "prefill", "tokens": tokens, "batch": 1, "seconds": seconds})
    for batch in decode:
        ctx = torch.randint(0, vocab, (batch, context), device="cuda", generator=gen)
        step = torch.randint(0, vocab, (batch, 1), device="cuda", generator=gen)

        def fresh_cache():  # a new cache per call: the timed step always sees `context` tokens
            return model(ctx, use_cache=True, **extra).past_key_values

        seconds = time_cuda(lambda cache: model(step, past_key_values=cache, use_cache=True),
                            warmup=warmup, repeats=repeats, setup=fresh_cache)
        rows.append({"phase": "decode", "tokens": batch, "batch": batch, "seconds": seconds})
    return rows


def bench_model(hf_dir: str, *, prefill: Sequence[int], decode: Sequence[int], context: int,
                backend: str, warmup: int, repeats: int, seed: int = 0) -> dict:
    """Prefill / decode time of a 2:4 HF model, dense and with its 2:4 linears semi-structured."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).cuda().eval()
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or max(prefill, default=0)
    too_long = [t for t in prefill if t > limit]
    prefill = [t for t in prefill if t <= limit]
    if decode and context + 1 > limit:
        raise SparseBenchError(f"--context {context} leaves no room for a decode step within "
                               f"{hf_dir}'s {limit} positions")
    constraints = backend_constraints(backend)
    selected, skipped = select_semi_structured_linears(model, constraints=constraints)
    if not selected:
        reasons = sorted(set(skipped.values()))
        raise SparseBenchError(f"no 2:4 decoder linear in {hf_dir} ({'; '.join(reasons)}): export "
                               "the model with tools/convert_megatron_to_hf.py --apply-masks")
    probe = torch.randint(0, config.vocab_size, (1, min(128, limit)), device="cuda",
                          generator=torch.Generator(device="cuda").manual_seed(seed))
    with torch.no_grad():
        dense_logits = model(probe).logits.float()
    timing = dict(prefill=prefill, decode=decode, context=context, vocab=config.vocab_size,
                  warmup=warmup, repeats=repeats, seed=seed)
    dense = _time_model(model, **timing)
    with semi_structured_backend(backend):
        apply_semi_structured(model, selected, token_multiple=constraints.token_multiple)
    torch.cuda.empty_cache()
    with torch.no_grad():
        sparse_logits = model(probe).logits.float()
    sparse = _time_model(model, **timing)
    rows = [{"phase": d["phase"], "tokens": d["tokens"], "batch": d["batch"],
             "dense_ms": d["seconds"] * 1e3, "sparse_ms": s["seconds"] * 1e3,
             "ratio": d["seconds"] / s["seconds"]} for d, s in zip(dense, sparse)]
    diff = (sparse_logits - dense_logits).abs().max().item()
    return {"hf_dir": hf_dir, "swapped": len(selected), "kept_dense": skipped,
            "context": context, "skipped_prefill": too_long, "rows": rows,
            "logits_max_abs_diff": diff, "logits_max_abs": dense_logits.abs().max().item()}


# ----------------------------------------------------------------------------- output
def format_gemm_table(rows: List[dict], *, backend: str) -> str:
    """Ratios (dense / sparse time) with shapes down and token counts across."""
    tokens = sorted({r["tokens"] for r in rows})
    head = f"{'model':<6} {'linear':<8} {'out x in':>13} " + " ".join(f"{t:>6}" for t in tokens)
    lines = [f"GEMM y = x W^T, bf16, 2:4 weight, {backend}: dense time / sparse time "
             "(> 1: sparse faster); columns: tokens", head, "-" * len(head)]
    cells: Dict[Tuple[str, str], Dict[int, dict]] = {}
    layers = layer_rows(rows)
    for model in dict.fromkeys(r["model"] for r in rows):  # in the order measured
        for r in [r for r in rows if r["model"] == model] + [r for r in layers if r["model"] == model]:
            cells.setdefault((model, r["linear"]), {})[r["tokens"]] = r
    for (model, linear), by_tokens in cells.items():
        first = next(iter(by_tokens.values()))
        shape = (f"{first['out_features']} x {first['in_features']}" if linear != "layer"
                 else "4+2+1")
        lines.append(f"{model:<6} {linear:<8} {shape:>13} " + " ".join(
            f"{by_tokens[t]['ratio']:>6.2f}" if t in by_tokens else f"{'-':>6}" for t in tokens))
    return "\n".join(lines)


def format_model_table(result: dict) -> str:
    lines = [f"model {result['hf_dir']}: {result['swapped']} linears 2:4 -> semi-structured, "
             f"{len(result['kept_dense'])} kept dense; logits max |sparse - dense| "
             f"{result['logits_max_abs_diff']:.3g} (max |logit| {result['logits_max_abs']:.3g})",
             f"{'phase':<8} {'tokens':>7} {'dense ms':>9} {'sparse ms':>9} {'ratio':>6}"]
    for r in result["rows"]:
        what = (f"{r['tokens']:>7}" if r["phase"] == "prefill"
                else f"{r['batch']:>4} x1")
        lines.append(f"{r['phase']:<8} {what} {r['dense_ms']:>9.3f} {r['sparse_ms']:>9.3f} "
                     f"{r['ratio']:>6.2f}")
    if result["skipped_prefill"]:
        lines.append(f"(prefill sizes past the model's positions left out: "
                     f"{result['skipped_prefill']})")
    lines.append(f"decode: one step of the batch over a KV cache of {result['context']} tokens")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run
@dataclass(kw_only=True)
class SparseBench:
    """What :func:`run` measures; tools/bench_sparse.py's flags are these fields (same names and
    defaults), less its outputs (--json, --output)."""

    models: List[str] = field(default_factory=lambda: list(LLAMA2))
    """LLaMA-2 shapes for the GEMMs ("7b", "13b")."""
    prefill: List[int] = field(default_factory=lambda: list(PREFILL_TOKENS))
    decode: List[int] = field(default_factory=lambda: list(DECODE_TOKENS))
    """Decode token counts: batch sizes of one step."""
    no_gemm: bool = False
    """Skip the GEMMs (the model only)."""
    hf_dir: Optional[str] = None
    """A HF LLaMA directory with 2:4 decoder linears: also time it dense vs semi-structured."""
    context: int = 128
    """KV-cache length before the timed decode step."""
    backend: str = "auto"
    warmup: int = 10
    repeats: int = 50
    """Timed GEMM calls."""
    model_repeats: int = 10
    """Timed model calls (after up to 3 warm-ups)."""


def run(args: SparseBench) -> dict:
    """Every measurement ``args`` asks for (on the GPU); returns the JSON-able result. Raises
    :class:`SparseBenchError` without a capable GPU (the tool's exit status 2)."""
    device = require_sparse_gpu()
    backend = resolve_backend(args.backend)
    constraints = backend_constraints(backend)
    result = {"device": device, "backend": backend, "dtype": "bfloat16",
              "token_multiple": constraints.token_multiple,
              "sparse_multiple": [constraints.sparse_rows, constraints.sparse_cols],
              "timing": {"warmup": args.warmup, "repeats": args.repeats,
                         "model_repeats": args.model_repeats, "statistic": "median"}}
    if not args.no_gemm:
        gemm = bench_gemms(args.models, sorted(set(args.decode) | set(args.prefill)),
                           backend=backend, warmup=args.warmup, repeats=args.repeats)
        result["gemm"] = gemm
        result["gemm_layer"] = layer_rows(gemm)
    if args.hf_dir:
        result["model"] = bench_model(args.hf_dir, prefill=args.prefill, decode=args.decode,
                                      context=args.context, backend=backend,
                                      warmup=min(args.warmup, 3), repeats=args.model_repeats)
    return result
