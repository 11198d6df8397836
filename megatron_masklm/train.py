"""Learn N:M masks: ``torchrun --nproc_per_node N -m megatron_masklm.train [options]``.

``python -m megatron_masklm.train --help`` lists the options (Megatron-LM's flag names); a
``--config`` YAML file takes the same names as keys. Errors a user can cause (bad options, a full
or read-only disk, a non-finite loss, Ctrl-C) end in one line (``cli_errors.run_cli``).
"""
import logging
import sys
import warnings
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, initialise torch.distributed and Megatron, train; 1 on a user error."""
    warnings.filterwarnings("ignore", category=UserWarning, module="megatron")
    from .cli_errors import run_cli
    from .training.run_lock import exit_with_launcher

    exit_with_launcher()  # under torchrun: no rank outlives a killed launcher
    return run_cli(lambda: _run(argv))


def _run(argv: Optional[Sequence[str]]) -> int:
    from .mcore import destroy_distributed, initialize_distributed
    from .training.arguments import run_config_from_args
    from .training.loop import train
    from .training.signals import SaveAborted

    # its writer processes' errors reach us as an exception, and are said once, by run_cli
    logging.getLogger("megatron.core.dist_checkpointing.strategies.filesystem_async").setLevel(
        logging.CRITICAL)
    config = run_config_from_args(argv)
    p = config.parallel
    try:  # a world size the TP x PP split does not divide is a ValueError too
        initialize_distributed(
            tensor_model_parallel_size=p.tensor_model_parallel_size,
            pipeline_model_parallel_size=p.pipeline_model_parallel_size,
            seed=config.training.seed, timeout_minutes=p.distributed_timeout_minutes,
            cuda_to_cpu_mode=True)  # only acts without CUDA: Megatron's optimizer hard-codes it
        train(config)
    except SaveAborted as aborted:  # a second exit signal: exit as that signal would
        print(f"error: {aborted}", file=sys.stderr)
        return 128 + aborted.signum
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":  # required: dist_checkpointing's writer re-imports __main__
    sys.exit(main())
