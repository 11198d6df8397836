"""Read a Hugging Face checkpoint tensor by tensor: safetensors, PyTorch .bin, or GGUF.

safetensors and .bin files are opened lazily (memory-mapped), so a conversion holds only the
tensors it is working on. .bin files load with ``weights_only=True``: no pickled code runs. GGUF
files go through ``transformers`` (dequantised in memory: GGUF models are small).
"""
import glob
import json
import os
import shutil
from typing import Any, Dict, Iterable, List, Optional

import torch

from ..cli_errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
IGNORED_TENSORS = ("rotary_emb.inv_freq",)


class HFCheckpoint:
    """A HF checkpoint (LLaMA, Mistral, Qwen2, Qwen3): its config, tensor names, tensors on
    demand, tokenizer."""

    def __init__(self, path: str):
        self.path = path
        self._files: Dict[str, str] = {}
        self._open: Dict[str, Any] = {}
        self._tensors: Optional[Dict[str, torch.Tensor]] = None
        self._tokenizer_dir: Optional[str] = None
        if not os.path.exists(path):
            raise ValueError(f"{path!r} does not exist: pass a Hugging Face checkpoint directory "
                             "or a .gguf file")
        if path.endswith(".gguf"):
            self._load_gguf(path)
        elif os.path.isdir(path):
            self.config = _read_json(os.path.join(path, "config.json"), "HF config")
            self._tokenizer_dir = path
            self._index_weights(path)
        else:
            raise ValueError(f"{path!r} is neither a Hugging Face checkpoint directory nor a .gguf "
                             "file")

    def _index_weights(self, path: str) -> None:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if files:
            from safetensors import safe_open

            for file in files:
                handle = guarded_read(file, lambda f=file: safe_open(f, framework="pt"))
                self._open[file] = handle
                for name in handle.keys():
                    self._files[name] = file
            return
        files = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
        if not files:
            raise ValueError(f"no *.safetensors or pytorch_model*.bin weights in {path!r}")
        for file in files:
            state = guarded_read(file, lambda f=file: torch.load(f, map_location="cpu",
                                                           weights_only=True, mmap=True))
            self._open[file] = state
            for name in state:
                self._files[name] = file

    def _load_gguf(self, path: str) -> None:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ValueError("GGUF input needs transformers and gguf: pip install -e .[hf]") from None
        directory, name = os.path.split(os.path.abspath(path))
        model = guarded_read(path, lambda: AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, dtype=torch.float32))
        self.config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
        self.config["architectures"] = self.config.get("architectures") or [type(model).__name__]
        self._tensors = {k: v.detach() for k, v in model.state_dict().items()}
        self._tokenizer = guarded_read(path, lambda: AutoTokenizer.from_pretrained(
            directory, gguf_file=name))

    def names(self) -> List[str]:
        names = self._tensors.keys() if self._tensors is not None else self._files.keys()
        return [n for n in names if not n.endswith(IGNORED_TENSORS)]

    def get(self, name: str) -> torch.Tensor:
        """One tensor (read now, from disk or memory map)."""
        if self._tensors is not None:
            if name not in self._tensors:
                raise ValueError(f"{self.path!r} has no tensor {name!r}")
            return self._tensors[name]
        file = self._files.get(name)
        if file is None:
            raise ValueError(f"{self.path!r} has no tensor {name!r}: the checkpoint is incomplete "
                             "or not of a family this tool converts")
        handle = self._open[file]
        if isinstance(handle, dict):
            return handle[name]
        return guarded_read(file, lambda: handle.get_tensor(name))

    def save_tokenizer(self, directory: str) -> List[str]:
        """Copy (or, for GGUF, write) the tokenizer files into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        if self._tokenizer_dir is None:
            self._tokenizer.save_pretrained(directory)
            return sorted(os.listdir(directory))
        copied = []
        for name in TOKENIZER_FILES:
            source = os.path.join(self._tokenizer_dir, name)
            if os.path.exists(source):
                shutil.copy2(source, os.path.join(directory, name))
                copied.append(name)
        return copied


def guarded_read(file: str, load):
    """``load()``, with any reader's error (safetensors, torch.load, gguf, transformers) turned
    into a CheckpointError (a ValueError) naming ``file``. Readers' own ValueErrors are wrapped
    too: a GGUF cut short mid-tensor is numpy's "cannot reshape array of size ...", which names
    no file. Missing files stay OSErrors (the path and "check the path" say enough)."""
    try:
        return load()
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as error:  # safetensors, torch.load and gguf raise many types
        detail = " ".join(str(error).split())[:300]
        raise CheckpointError(f"cannot read {file!r} ({type(error).__name__}: {detail}): the file "
                              "is truncated, corrupt or not a checkpoint") from error


def _read_json(path: str, what: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"no {what} at {path!r}") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {what} {path!r}: {error}") from error


def copy_files(names: Iterable[str], source: str, target: str) -> None:
    for name in names:
        path = os.path.join(source, name)
        if os.path.exists(path):
            shutil.copy2(path, os.path.join(target, name))
