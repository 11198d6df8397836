"""Shared pytest set-up: quiet Megatron's import-time warnings, skip GPU tests without CUDA."""
import os
import warnings

import pytest
import torch

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(autouse=True)
def local_layers_in_the_unit_tier(request, monkeypatch):
    """tests/unit tests Megatron's local layers wherever it runs, also on a GPU with Transformer
    Engine (tools/gpu_check.sh runs it on CUDA): the "auto" layer choice says local there, and
    TE asked for by name is refused as without TE. The TE layers are tests/gpu's business."""
    if request.path.parent.name == "unit":
        from megatron_masklm.mcore import compat

        monkeypatch.setattr(compat, "HAVE_TE", False)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run tools/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TINY_LLAMA = dict(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4,
                  num_query_groups=2, vocab_size=64, max_position_embeddings=32)
"""A LLaMA-style shape (GQA, SwiGLU) small enough for single-process tests."""


@pytest.fixture(scope="module")
def mcore(tmp_path_factory):
    """megatron_masklm.mcore with a world of one initialised (gloo on CPU, NCCL on GPU)."""
    from megatron_masklm import mcore as mcore_package

    store = tmp_path_factory.mktemp("pg") / "store"
    mcore_package.initialize_distributed(init_method=f"file://{store}", seed=3)
    yield mcore_package
    mcore_package.destroy_distributed()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """tests/slurm's cluster: one private one-node Slurm for the session (``private_slurm``),
    skipped with the reason where it cannot run (no root, Slurm or munge not installed). Here,
    not in a tests/slurm/conftest.py: a second module named ``conftest`` would shadow this one
    for the tiers that import ``from conftest import ...``."""
    import private_slurm

    why_not = private_slurm.why_not()
    if why_not:
        pytest.skip(why_not)
    try:
        cluster, procs = private_slurm.start(tmp_path_factory.mktemp("slurm"))
    except TimeoutError as error:
        pytest.fail(f"the private Slurm cluster did not start: {error}")
    try:
        yield cluster
    finally:
        private_slurm.shut_down(cluster, procs)
