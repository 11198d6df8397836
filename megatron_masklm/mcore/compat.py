"""Every Megatron-Core call whose signature moves between releases (0.16 here, 0.19+ on clusters).

Other modules import these wrappers instead of reaching into megatron.core directly, so an
upgrade touches this file only.
"""
import inspect
from typing import Dict, Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import gpt_layer_specs
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer import mlp as mcore_mlp
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

try:  # Transformer Engine is optional; a broken install (the thin meta package) is not fatal.
    from megatron.core.extensions import transformer_engine as mcore_te

    HAVE_TE = bool(getattr(mcore_te, "HAVE_TE", True))
except (ImportError, RuntimeError):  # pragma: no cover - depends on the machine
    mcore_te = None
    HAVE_TE = False

for _cls in (ColumnParallelLinear, RowParallelLinear):
    if not hasattr(_cls, "_forward_impl"):  # pragma: no cover - guards future releases
        raise ImportError(
            f"megatron-core {_cls.__name__} has no _forward_impl seam; megatron_masklm needs a "
            "release that has it (0.16.1 through 0.19 do)"
        )


def _supported_kwargs(fn, kwargs: dict, *, may_drop: tuple = ()) -> dict:
    """``kwargs`` less those ``fn`` does not take. Only the names in ``may_drop`` (settings
    whose absence changes nothing the model computes) may be dropped; any other is a feature
    this megatron-core release cannot build, and an error rather than a silently different
    model."""
    params = inspect.signature(fn).parameters
    missing = [key for key in kwargs if key not in params and key not in may_drop]
    if missing:
        import megatron.core

        raise ValueError(
            f"megatron-core {getattr(megatron.core, '__version__', '?')}'s {fn.__qualname__} takes "
            f"no {missing} (asked for {', '.join(f'{k}={kwargs[k]!r}' for k in missing)}): this "
            "release cannot build that model; use a megatron-core that has it (setup.py's range)")
    return {key: value for key, value in kwargs.items() if key in params}


def initialize_model_parallel(*, tensor_model_parallel_size: int, pipeline_model_parallel_size: int,
                              distributed_timeout_minutes: int = 30) -> None:
    """parallel_state.initialize_model_parallel with only the arguments this release knows."""
    parallel_state.initialize_model_parallel(**_supported_kwargs(
        parallel_state.initialize_model_parallel,
        dict(
            tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
            distributed_timeout_minutes=distributed_timeout_minutes,
        ),
        may_drop=("distributed_timeout_minutes",),
    ))


def dp_cp_group(metadata: Optional[dict]):
    """The data-parallel (with context-parallel) group a sharded_state_dict call should use."""
    if metadata and metadata.get("dp_cp_group") is not None:
        return metadata["dp_cp_group"]
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def sharded_tensors(tensors: Dict[str, torch.Tensor], prefix: str, axis_map: Dict[str, int],
                    sharded_offsets, *, tp_group, metadata: Optional[dict]) -> dict:
    """ShardedTensors for ``tensors`` split over ``tp_group`` along ``axis_map``'s dims.

    Both groups are always passed: a dp_cp_group without tp_group would treat TP as size 1.
    """
    return make_sharded_tensors_for_checkpoint(
        tensors, prefix, axis_map, sharded_offsets,
        tp_group=tp_group, dp_cp_group=dp_cp_group(metadata),
    )


def swiglu_sharded(sharded_tensor, sharded_offsets, metadata: Optional[dict]):
    """Megatron's gate/up re-layout for a fused GLU fc1 tensor (rows chunked per TP rank)."""
    singleton = (metadata or {}).get("singleton_local_shards", False)
    fn = mcore_mlp.apply_swiglu_sharded_factory
    if "singleton_local_shards" in inspect.signature(fn).parameters:
        return fn(sharded_tensor, sharded_offsets, singleton)
    return fn(sharded_tensor, sharded_offsets)  # pragma: no cover - older releases


def gpt_layer_spec(*, use_te: bool, normalization: str, qk_layernorm: bool = False):
    """Megatron's dense GPT layer spec: local (torch) modules, or Transformer Engine ones."""
    if use_te:
        if not HAVE_TE:
            raise RuntimeError(
                "use_te=True needs Transformer Engine (NGC PyTorch containers ship it); "
                "on CPU use the local spec (use_te=False)"
            )
        fn = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec
        return fn(**_supported_kwargs(fn, dict(qk_layernorm=qk_layernorm)))
    fn = gpt_layer_specs.get_gpt_layer_local_spec
    return fn(**_supported_kwargs(fn, dict(qk_layernorm=qk_layernorm, normalization=normalization)))


def grad_accum_fusion_available() -> bool:
    """Whether Megatron's local linears can fuse weight-gradient accumulation (apex's
    fused_weight_gradient_mlp_cuda imports); they refuse the setting otherwise."""
    from megatron.core.tensor_parallel import layers

    return bool(getattr(layers, "_grad_accum_fusion_available", False))


def layer_tp_group(layer: torch.nn.Module):
    """The tensor-parallel group a Megatron linear (local or TE) was built with."""
    group = getattr(layer, "tp_group", None) or getattr(layer, "_tp_group", None)
    return group if group is not None else parallel_state.get_tensor_model_parallel_group()


def megatron_optimizer(config, model_chunks, *, lr_mult_pattern: Optional[str] = None,
                       lr_mult: float = 1.0):
    """get_megatron_optimizer with Megatron's usual weight-decay skips, plus lr x ``lr_mult``
    (and min_lr x ``lr_mult``) for parameters whose name matches ``lr_mult_pattern``."""
    from megatron.core.optimizer import (ParamKey, get_megatron_optimizer,
                                         get_standard_config_overrides)

    overrides = get_standard_config_overrides(config)
    if lr_mult_pattern and lr_mult != 1.0:
        overrides[ParamKey(name=lr_mult_pattern)] = {
            "max_lr": config.lr * lr_mult, "min_lr": config.min_lr * lr_mult}
    return get_megatron_optimizer(config, model_chunks, config_overrides=overrides)


@torch.no_grad()
def materialize_optimizer_state(optimizer) -> None:
    """Give every parameter Adam state (step included) before a checkpoint load.

    With torch's Adam (no Transformer Engine / apex, e.g. on CPU) the distributed optimizer's
    state_dict needs a 'step' that only exists after a first step; this takes one with lr 0
    and zero gradients, which changes nothing, as Megatron-LM does with dummy values.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(chained, "optimizer", None)
        if inner is None or all(len(inner.state.get(p, {})) > 0
                                for group in inner.param_groups for p in group["params"]):
            continue
        saved = [(group["lr"], group.get("weight_decay")) for group in inner.param_groups]
        grads = {}
        for group in inner.param_groups:
            group["lr"] = 0.0
            for param in group["params"]:
                grads[param] = param.grad
                param.grad = torch.zeros_like(param)
        inner.step()
        for group, (lr, _) in zip(inner.param_groups, saved):
            group["lr"] = lr
        for param, grad in grads.items():
            param.grad = grad


def allow_torch_adam_reshard_load(optimizer) -> None:
    """Let the distributed optimizer load a 'fully_reshardable' checkpoint with torch's Adam.

    megatron-core 0.16-0.19 restore torch Adam's 'step' from the param groups but then copy
    every state key, 'step' included, from a per-parameter dict that has none (KeyError). With
    Transformer Engine / apex Adam (GPU containers) there is no 'step' state and nothing changes;
    otherwise this instance's setter skips the one key the checkpoint does not carry per param.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        setter = getattr(chained, "_set_main_param_and_optimizer_states", None)
        if setter is None or getattr(setter, "_masklm_step_fix", False):
            continue

        def set_states(model_param, tensors, _chained=chained, _setter=setter):
            group_index, group_order = _chained.model_param_group_index_map[model_param]
            main_param = _chained.optimizer.param_groups[group_index]["params"][group_order]
            state = _chained.optimizer.state[main_param]
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"]}  # keep the step restored above
            return _setter(model_param, tensors)

        set_states._masklm_step_fix = True
        chained._set_main_param_and_optimizer_states = set_states


def load_optimizer_state_dict(optimizer, state_dict) -> None:
    """optimizer.load_state_dict, then give every parameter its own torch-Adam 'step' tensor:
    Megatron restores one shared tensor, which torch's Adam would then advance once per
    parameter, so bias correction would go wrong after a resume."""
    allow_torch_adam_reshard_load(optimizer)
    optimizer.load_state_dict(state_dict)
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(chained, "optimizer", None)
        for state in (inner.state.values() if inner is not None else ()):
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()


def sharded_tensor_keys(state) -> set:
    """Checkpoint keys of every ShardedTensor (and tensor factory) in a sharded state dict."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    return {value.key for value in nested_values(state)
            if isinstance(value, (ShardedTensor, ShardedTensorFactory))}


def start_checkpoint_writer_helper() -> None:
    """Create dist_checkpointing's write-results queue now: its first use spawns a Manager
    process, which inherits the signal dispositions of the moment (the trainer starts it with
    the exit signals ignored). 0.16.1 names the getter ``_get_write_results_queue``, 0.19 made it
    public as ``get_write_results_queue``; a release with neither is an error, not a silently
    unprotected helper."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    for name in ("get_write_results_queue", "_get_write_results_queue"):
        getter = getattr(filesystem_async, name, None)
        if getter is not None:
            getter()
            return
    raise ImportError("megatron.core.dist_checkpointing.strategies.filesystem_async has no "
                      "write-results queue getter: update mcore/compat.py for this release")


def common_state_file_required() -> bool:
    """Whether this megatron-core keeps a dist checkpoint's common state only in ``common.pt``
    (0.16.1: a checkpoint without it cannot load). 0.19 saves it inside the torch_dist files and
    reads ``common.pt`` only where an older save left one."""
    from megatron.core.dist_checkpointing import serialization

    return not hasattr(serialization, "_legacy_common_state_exists")
