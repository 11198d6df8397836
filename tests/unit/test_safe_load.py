"""Opening a Megatron checkpoint runs no code from its files (megatron_masklm.safe_pickle and
mcore.safe_load): crafted ``.metadata``, byte entries and common state are refused before they
run, and the same files do run their command when opened with ``trust`` (the stock way), so
each refusal is shown to matter."""
import os
import pickle

import pytest
import torch

from conftest import TINY_LLAMA
from crafted import RunsCommand, craft_metadata
from megatron_masklm.safe_pickle import (UnsafeCheckpointError, check_metadata, read_metadata,
                                         weights_only_loads)


@pytest.fixture
def checkpoint(mcore, tmp_path):
    """A tiny dense GPTModel saved by dist_checkpointing: (model, directory)."""
    from megatron.core import dist_checkpointing

    shape = mcore.ModelShape(**TINY_LLAMA)
    config = mcore.build_transformer_config(shape, use_cpu_initialization=True)
    model = mcore.build_dense_gpt_model(shape, config=config)
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    dist_checkpointing.save(model.sharded_state_dict(), directory)
    return model, directory


def _fresh_state(mcore):
    shape = mcore.ModelShape(**TINY_LLAMA)
    config = mcore.build_transformer_config(shape, use_cpu_initialization=True)
    model = mcore.build_dense_gpt_model(shape, config=config)
    return model, mcore.without_te_extra_state(model.sharded_state_dict())


def test_a_real_checkpoint_passes_and_loads_the_same_tensors(mcore, checkpoint):
    from megatron_masklm.mcore import safe_load

    model, directory = checkpoint
    check_metadata(directory)
    assert "embedding.word_embeddings.weight" in safe_load.load_tensors_metadata(directory)
    fresh, state = _fresh_state(mcore)
    loaded = safe_load.load(state, directory)
    for name, tensor in model.state_dict().items():
        if "_extra_state" not in name:
            assert torch.equal(loaded[name], tensor), name


def test_crafted_metadata_is_refused_and_runs_nothing(mcore, checkpoint, tmp_path):
    from megatron_masklm.mcore import safe_load

    _, directory = checkpoint
    marker = str(tmp_path / "ran")
    craft_metadata(directory, marker)
    for call in (lambda: safe_load.load_tensors_metadata(directory),
                 lambda: safe_load.load(_fresh_state(mcore)[1], directory)):
        with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval.*--trust-checkpoint"):
            call()
        assert not os.path.exists(marker)
    # the same file, opened the stock way, does run the command (and still loads)
    assert "embedding.word_embeddings.weight" in safe_load.load_tensors_metadata(directory,
                                                                                trust=True)
    assert os.path.exists(marker)


@pytest.mark.parametrize("where", ["sharded object", "common state"])
def test_byte_entries_and_common_state_holding_code_are_refused(mcore, tmp_path, where):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    from megatron_masklm.mcore import safe_load

    marker = str(tmp_path / "ran")
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    weight = torch.arange(6.0)
    tensor = ShardedTensor.from_rank_offsets("w", weight, replica_id=0)
    evil = RunsCommand(marker, value=7)
    if where == "sharded object":
        saved = {"w": tensor, "obj": ShardedObject("obj", evil, (1,), (0,), replica_id=0)}
        request = {"w": ShardedTensor.from_rank_offsets("w", torch.zeros(6),
                                                                      replica_id=0),
                   "obj": ShardedObject("obj", None, (1,), (0,), replica_id=0)}
    else:
        saved = {"w": tensor, "extra": evil}
        request = {"w": ShardedTensor.from_rank_offsets("w", torch.zeros(6),
                                                                      replica_id=0)}
    dist_checkpointing.save(saved, directory)
    check_metadata(directory)  # the metadata itself is clean: the code is in the entry
    with pytest.raises(UnsafeCheckpointError, match="weights-only.*--trust-checkpoint"):
        safe_load.load(request, directory)
    assert not os.path.exists(marker)
    loaded = safe_load.load(request, directory, trust=True)
    assert os.path.exists(marker) and torch.equal(loaded["w"], weight)


def test_plain_python_values_in_entries_still_load(mcore, tmp_path):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from megatron_masklm.mcore import safe_load

    value = {"random": (3, tuple(range(5)), None), "torch": torch.arange(4), "name": "MT19937"}
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    dist_checkpointing.save({"obj": ShardedObject("obj", value, (1,), (0,), replica_id=0),
                             "note": {"step": 3}}, directory)
    loaded = safe_load.load({"obj": ShardedObject("obj", None, (1,), (0,), replica_id=0)},
                            directory)
    assert loaded["obj"]["random"] == value["random"] and loaded["note"] == {"step": 3}
    assert torch.equal(loaded["obj"]["torch"], value["torch"])


def test_damaged_or_missing_metadata_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="no .metadata file"):
        check_metadata(str(tmp_path))
    path = tmp_path / ".metadata"
    path.write_bytes(pickle.dumps({"a": 1})[:5])
    with pytest.raises(ValueError, match=r"cannot read checkpoint metadata .*\.metadata.*damaged"):
        read_metadata(str(path))


def test_metadata_unpickler_refuses_dotted_names_and_other_torch_attributes(tmp_path):
    """Only exact allow-listed names: no attribute paths through an allowed module, and from
    ``torch`` itself only dtypes and layouts (memory formats are stored as an enum)."""
    for module, name in (("torch.distributed.checkpoint.metadata", "Metadata.__init__"),
                         ("torch", "load"), ("torch", "save"), ("os", "system")):
        data = f"c{module}\n{name}\n.".encode()  # protocol 0 GLOBAL
        path = tmp_path / "m.metadata"
        path.write_bytes(data)
        with pytest.raises(UnsafeCheckpointError, match=name.split(".")[0]):
            read_metadata(str(path))
    path.write_bytes(pickle.dumps([torch.float16, torch.bfloat16, torch.strided,
                                   torch.Size([2, 3])]))
    assert read_metadata(str(path)) == [torch.float16, torch.bfloat16, torch.strided,
                                        torch.Size([2, 3])]


def test_weights_only_switch_is_restored(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    with weights_only_loads():
        assert os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
