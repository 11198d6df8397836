"""Run the trainer, but SIGKILL the process in the middle of the save at iteration K: after the
shard files are written, before the checkpoint is completed. Usage:

    python crash_during_save.py K [megatron_masklm.train options]
"""
import os
import signal
import sys


def main():
    kill_at = int(sys.argv[1])
    from megatron_masklm.training import checkpointing

    write_shards = checkpointing._write_shards

    def write_then_die(state, directory):
        write_shards(state, directory)
        if directory.endswith(f"iter_{kill_at:07d}.partial"):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpointing._write_shards = write_then_die
    from megatron_masklm.train import main as train_main

    sys.exit(train_main(sys.argv[2:]))


if __name__ == "__main__":  # required: dist_checkpointing's writer re-imports __main__
    main()
