"""Every option of a mask-training run, defined once.

The dataclasses here are the command line (:mod:`.arguments` derives the flags from them), the
keys of a ``--config`` YAML file, and what a checkpoint records. Defaults are the paper's
recipe (SPEC section 3) except for the hardware-dependent settings (parallel sizes, bf16), which
the launch configs in ``examples/`` set.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..architecture import ModelShape
from ..masking import MaskConfig
from ..mcore.model import TRANSFORMER_IMPLS

LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")
RECOMPUTE_CHOICES = ("full", "selective")


@dataclass(kw_only=True)
class ParallelConfig:
    """How the model and the data are split over ranks."""

    tensor_model_parallel_size: int = 1
    """Tensor-parallel size (the paper: 8)."""
    pipeline_model_parallel_size: int = 1
    """Pipeline-parallel size; must divide the number of layers."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs TP > 1; with the local spec it needs Transformer Engine norms)."""
    use_distributed_optimizer: bool = True
    """Shard the optimizer state over data-parallel ranks (Megatron's distributed optimizer)."""
    bf16: bool = False
    """bf16 weights and activations; the mask logits and all mask maths stay fp32."""
    recompute_granularity: Optional[str] = None
    """Activation recomputation: "full" or "selective" (None: keep activations)."""
    distributed_timeout_minutes: int = 30
    """Timeout of collective operations."""
    transformer_impl: str = "local"
    """Layer implementation: "local" (Megatron's torch modules, the tested default),
    "transformer_engine" (TE's fused linears and norms, CUDA) or "auto" (TE where it imports and
    a GPU is present). This release has not verified the TE layers on a GPU: a run that uses them
    says so at start. Checkpoints load across them."""
    gradient_accumulation_fusion: bool = False
    """Accumulate weight gradients into main_grad inside the GEMM (GPU, apex's
    fused_weight_gradient_mlp_cuda). Masked linears take their weight gradient through autograd
    regardless, so it acts on the trained layers outside the masks (with --train-weights)."""

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                     "distributed_timeout_minutes"):
            _positive(name, getattr(self, name))
        if self.recompute_granularity not in (None, *RECOMPUTE_CHOICES):
            raise ValueError(f"recompute_granularity {self.recompute_granularity!r} is not one of "
                             f"{RECOMPUTE_CHOICES}")
        if self.transformer_impl not in TRANSFORMER_IMPLS:
            raise ValueError(f"transformer_impl {self.transformer_impl!r} is not one of "
                             f"{TRANSFORMER_IMPLS}")


@dataclass(kw_only=True)
class OptimizerConfig:
    """AdamW on the mask logits, with Megatron's learning-rate scheduler."""

    lr: float = 5e-4
    """Peak learning rate (of the logits, times mask_lr_mult)."""
    min_lr: float = 5e-5
    """Learning rate at the end of the decay."""
    lr_decay_style: str = "cosine"
    """One of constant, linear, cosine, inverse-square-root."""
    lr_warmup_iters: int = 0
    """Linear warm-up iterations (the recipe has none)."""
    weight_decay: float = 0.1
    """Decoupled weight decay; it applies to the logits."""
    clip_grad: float = 1.0
    """Global gradient-norm clipping (0 disables)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    mask_lr_mult: float = 1.0
    """Multiplies lr and min_lr for the mask logits (weights trained jointly keep lr)."""

    def __post_init__(self):
        if self.lr_decay_style not in LR_DECAY_STYLES:
            raise ValueError(f"lr_decay_style {self.lr_decay_style!r} is not one of {LR_DECAY_STYLES}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr ({self.min_lr}) <= lr ({self.lr})")
        for name in ("lr_warmup_iters", "weight_decay", "clip_grad", "adam_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        _positive("mask_lr_mult", self.mask_lr_mult)


@dataclass(kw_only=True)
class TrainingConfig:
    """Batch sizes, sequence length, length of training, seed."""

    micro_batch_size: int = 1
    """Sequences per forward/backward on one data-parallel rank."""
    global_batch_size: int = 256
    """Sequences per optimizer step, over all data-parallel ranks and micro-batches."""
    seq_length: int = 4096
    """Tokens per training sequence."""
    train_iters: int = 2000
    """Optimizer steps; the temperature, logit-scale, regulariser and LR schedules span them."""
    exit_interval: Optional[int] = None
    """Stop (after saving, if --save is set) once the iteration is a multiple of this."""
    exit_signal_handler: bool = False
    """On SIGTERM or SIGUSR1 (a preemption, a Slurm time limit's warning signal) finish the step
    in flight, save a checkpoint to --save and exit 0, all ranks at the same iteration; a
    second signal during that save aborts it (the previous checkpoint stays the latest)."""
    seed: int = 1234
    """Seed of initialisation, data order and (with the iteration) the Gumbel noise."""

    def __post_init__(self):
        for name in ("micro_batch_size", "global_batch_size", "seq_length", "train_iters"):
            _positive(name, getattr(self, name))
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                             f"micro_batch_size {self.micro_batch_size}")
        if self.exit_interval is not None:
            _positive("exit_interval", self.exit_interval)


@dataclass(kw_only=True)
class DataConfig:
    """Where the tokens come from."""

    data_path: Optional[List[str]] = None
    """Indexed-dataset prefixes, optionally weighted: "0.7 a_text_document 0.3 b_text_document"."""
    split: str = "969,30,1"
    """Train, validation, test proportions of each dataset."""
    valid_data_path: Optional[List[str]] = None
    """Validate on these prefixes (all of them) instead of data_path's validation share."""
    mock_data: bool = False
    """Random tokens instead of --data-path (smoke tests, timing)."""
    data_cache_path: Optional[str] = None
    """Where Megatron caches the dataset indices (default: next to the data)."""
    tokenizer_type: Optional[str] = None
    """SentencePieceTokenizer, HuggingFaceTokenizer or NullTokenizer (default: the pretrained checkpoint's)."""
    tokenizer_model: Optional[str] = None
    """Tokenizer file or directory (default: <pretrained checkpoint>/tokenizer)."""
    make_vocab_size_divisible_by: int = 128
    """Pad the tokenizer's vocabulary to a multiple of this times TP when vocab_size is not given."""

    def __post_init__(self):
        _positive("make_vocab_size_divisible_by", self.make_vocab_size_divisible_by)
        if self.mock_data and self.valid_data_path:
            raise ValueError("valid_data_path needs real training data: drop --mock-data or "
                             "--valid-data-path")
        parts = self.split.replace("/", ",").split(",")
        try:
            values = [float(part) for part in parts]
        except ValueError:
            values = []
        if len(values) != 3 or min(values) < 0 or values[0] <= 0:
            raise ValueError(f"split {self.split!r} must be three proportions 'train,valid,test' "
                             "with a positive train share, e.g. 969,30,1")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Saving, resuming and the dense starting point."""

    load: Optional[str] = None
    """Resume from this run directory when it has a checkpoint: the one its
    latest_checkpointed_iteration.txt names or, without that file, its newest complete iter_*."""
    save: Optional[str] = None
    """Run directory to save checkpoints to (often the same as load)."""
    save_interval: Optional[int] = None
    """Save every this many iterations (and at the end) when save is set."""
    pretrained_checkpoint: Optional[str] = None
    """Dense Megatron checkpoint whose weights the masks are learned for (used when nothing to resume)."""
    prior_mask: Optional[str] = None
    """Mask file that shifts the initial logits (SPEC prior): a one-shot mask or one a run learned
    (tools/prune_oneshot.py or tools/export_masks.py output), npz or compact, Megatron or HF names."""
    fixed_mask: Optional[str] = None
    """Weight recovery: train the weights of --pretrained-checkpoint under this fixed mask (a
    file as for --prior-mask: learned, one-shot or exported from a run) instead of learning a
    mask. Its pruned weights start at and stay exactly 0; with --distill-weight the teacher is a
    separate frozen copy of the pretrained weights (or of --teacher-checkpoint)."""
    teacher_checkpoint: Optional[str] = None
    """Weight recovery's teacher when it is not --pretrained-checkpoint: the dense model when the
    starting weights are already pruned (SparseGPT's updated weights, say)."""
    trust_checkpoint: bool = False
    """Open --load and --pretrained-checkpoint even when their files hold pickled objects beyond
    tensors and checkpoint metadata (which could run code): only for checkpoints you created."""

    def __post_init__(self):
        if self.save_interval is not None:
            _positive("save_interval", self.save_interval)


@dataclass(kw_only=True)
class LoggingConfig:
    """What is reported, and how often."""

    log_interval: int = 10
    """Log training metrics every this many iterations."""
    eval_interval: int = 100
    """Validate with the hard (argmax) mask every this many iterations (and at the end)."""
    eval_iters: int = 10
    """Global batches per validation (0 disables validation)."""
    log_dir: Optional[str] = None
    """Directory of the JSONL metrics log (default: <save>/logs when save is set)."""
    tensorboard_dir: Optional[str] = None
    """TensorBoard event directory (needs the tensorboard package)."""

    def __post_init__(self):
        _positive("log_interval", self.log_interval)
        _positive("eval_interval", self.eval_interval)
        if self.eval_iters < 0:
            raise ValueError(f"eval_iters must be >= 0, got {self.eval_iters}")


@dataclass(kw_only=True)
class DistillConfig:
    """Distillation from the frozen dense model: the same weights with the masks off."""

    distill_weight: float = 0.0
    """Weight of KL(teacher || student) on the output logits, added to the LM loss per token
    (0: off). The teacher is this model with its masks off, so no second copy of the weights
    exists; it needs frozen weights. With --fixed-mask (weight recovery) the teacher is a
    separate frozen copy of the pretrained weights."""
    distill_temperature: float = 1.0
    """Softmax temperature T of teacher and student in the KL, which is multiplied by T^2."""

    def __post_init__(self):
        if not (math.isfinite(self.distill_weight) and self.distill_weight >= 0):
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")

    @property
    def enabled(self) -> bool:
        return self.distill_weight > 0


@dataclass(kw_only=True)
class RunConfig:
    """A whole run: the model's shape, its masks, and how to train them."""

    model: ModelShape
    mask: MaskConfig = field(default_factory=MaskConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distillation: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        ckpt = self.checkpoint
        if ckpt.fixed_mask:
            if not ckpt.pretrained_checkpoint:
                raise ValueError("--fixed-mask trains the weights of a checkpoint under a fixed "
                                 "mask: pass --pretrained-checkpoint (the dense weights)")
            if ckpt.prior_mask:
                raise ValueError("--fixed-mask and --prior-mask: a fixed mask does not train, so "
                                 "a prior has nothing to shift; pass one of them")
            self.mask.frozen = self.mask.train_weights = True
        elif ckpt.teacher_checkpoint:
            raise ValueError("--teacher-checkpoint is weight recovery's teacher: pass --fixed-mask "
                             "(mask learning's teacher is its own weights with the masks off)")
        elif self.mask.frozen:
            raise ValueError("a frozen mask needs the mask: pass --fixed-mask FILE")
        if self.distillation.enabled and self.mask.train_weights and not self.mask.frozen:
            raise ValueError("--distill-weight needs frozen weights (the teacher is the dense "
                             "model: these weights with the masks off); drop --train-weights "
                             "or --distill-weight (or keep the mask fixed with --fixed-mask, "
                             "whose teacher is a separate copy)")
        if self.training.seq_length > self.model.max_position_embeddings:
            raise ValueError(f"seq_length {self.training.seq_length} exceeds the model's "
                             f"max_position_embeddings {self.model.max_position_embeddings}")
        if self.training.exit_signal_handler and not self.checkpoint.save:
            raise ValueError("--exit-signal-handler saves a checkpoint when a signal stops the "
                             "run: pass --save DIR")
        if not self.data.mock_data and not self.data.data_path:
            raise ValueError("no training data: pass --data-path PREFIX (see "
                             "tools/preprocess_data.py) or --mock-data")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict (what a checkpoint records)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "RunConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(sections))
        if unknown:
            raise ValueError(f"unknown run-config sections {unknown}")
        built = {}
        for name, section_cls in SECTION_CLASSES.items():
            if name in values:
                section = dict(values[name])
                for key, value in section.items():
                    if isinstance(value, list) and key in TUPLE_FIELDS:
                        section[key] = tuple(value)
                built[name] = section_cls(**section)
        return cls(**built)


SECTION_CLASSES = {
    "model": ModelShape, "mask": MaskConfig, "parallel": ParallelConfig,
    "optimizer": OptimizerConfig, "training": TrainingConfig, "data": DataConfig,
    "checkpoint": CheckpointConfig, "logging": LoggingConfig, "distillation": DistillConfig,
}
"""Run-config section name -> the dataclass that owns its options."""

TUPLE_FIELDS = ("temperature", "logit_scale", "reg_weight")


def _positive(name: str, value) -> None:
    if value is None or value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
