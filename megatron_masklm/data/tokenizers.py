"""Tokenizers for data preprocessing and Megatron's GPT datasets, built by name.

Megatron's datasets duck-type the tokenizer: they read ``vocab_size``, ``eod``, ``pad`` and
``unique_identifiers`` (hashed into the dataset cache names). ``pad`` is -1 (Megatron's own
"no pad token" value) unless the tokenizer has a dedicated pad token distinct from ``eod``:
GPTDataset zeroes and loss-masks every token equal to ``pad``, so a real id there would corrupt
data. No class here imports megatron.
"""
import functools
import hashlib
import json
import numbers
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

NO_PAD = -1
"""The pad id when a tokenizer has no dedicated pad token (megatron's _PAD_TOKEN_ID)."""

HF_EOS_FALLBACKS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>")
"""End-of-sequence token names tried when no config file names one."""

_HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json",
                    "generation_config.json", "config.json")


class _TokenizerBase:
    """Shared id-range checks, detokenize and pickling (workers rebuild from the spec)."""

    def __init__(self, name: str, spec: Dict[str, Any]) -> None:
        self._spec = (name, spec)

    def __reduce__(self):
        name, spec = self._spec
        return functools.partial(build_tokenizer, name, **spec), ()

    def _check_ids(self, ids: Sequence[int]) -> List[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for {type(self).__name__} "
                             f"with vocab_size {self.vocab_size}; valid ids are "
                             f"0..{self.vocab_size - 1}")
        return ids


class SentencePieceTokenizer(_TokenizerBase):
    """A SentencePiece ``.model`` file; ``eod`` is its eos id."""

    def __init__(self, tokenizer_model: str) -> None:
        import sentencepiece

        super().__init__("SentencePieceTokenizer", {"tokenizer_model": tokenizer_model})
        path = _readable_file(tokenizer_model, "SentencePieceTokenizer", "a SentencePiece .model")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as error:
            raise ValueError(f"tokenizer model {path!r} is not a SentencePiece model ({error}); "
                             "pass the tokenizer's .model file") from error
        self.vocab_size = int(self._sp.get_piece_size())
        self.eod = int(self._sp.eos_id())
        if self.eod < 0:
            raise ValueError(f"SentencePiece model {path!r} has no eos token; GPT data needs one "
                             "to separate documents (retrain with eos_id >= 0)")
        self.bos = int(self._sp.bos_id()) if self._sp.bos_id() >= 0 else None
        pad = int(self._sp.pad_id())
        self.pad = pad if pad >= 0 and pad != self.eod else NO_PAD
        self.unique_identifiers = _identifiers("SentencePieceTokenizer", path)

    def tokenize(self, text: str) -> List[int]:
        """Ids of ``text`` with no bos/eos added."""
        return list(self._sp.encode(text))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; raises ValueError for ids outside the vocabulary."""
        return self._sp.decode(self._check_ids(ids))


class HuggingFaceTokenizer(_TokenizerBase):
    """A Hugging Face ``tokenizer.json`` (or its directory); ``eod`` is the eos token."""

    def __init__(self, tokenizer_model: str) -> None:
        super().__init__("HuggingFaceTokenizer", {"tokenizer_model": tokenizer_model})
        self._backend, directory, source = _load_hf_backend(tokenizer_model)
        self.vocab_size = int(self._backend.vocab_size)
        self.eod = _hf_special_id(self._backend, directory, "eos", required=True)
        self.bos = _hf_special_id(self._backend, directory, "bos", required=False)
        pad = _hf_special_id(self._backend, directory, "pad", required=False)
        self.pad = pad if pad is not None and pad != self.eod else NO_PAD
        self.unique_identifiers = _identifiers("HuggingFaceTokenizer", source)

    def tokenize(self, text: str) -> List[int]:
        """Ids of ``text`` with no special tokens added."""
        return self._backend.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens kept); raises ValueError for ids out of range."""
        return self._backend.decode(self._check_ids(ids))


class NullTokenizer(_TokenizerBase):
    """Text is whitespace-separated integer ids; ``eod`` is ``vocab_size - 1`` (for tests, mocks).

    Unlike Megatron-LM's _NullTokenizer (vocab_size + 1 ids, eod = vocab_size), ``vocab_size``
    here is the whole vocabulary, eod included, so it equals the model's embedding size.
    """

    def __init__(self, vocab_size: Optional[int]) -> None:
        super().__init__("NullTokenizer", {"vocab_size": vocab_size})
        if not isinstance(vocab_size, numbers.Integral) or isinstance(vocab_size, bool) \
                or vocab_size < 2:
            raise ValueError(f"NullTokenizer needs vocab_size >= 2 (an int), got {vocab_size!r}; "
                             "pass vocab_size (--vocab-size)")
        self.vocab_size = int(vocab_size)
        self.eod = self.vocab_size - 1
        self.bos = None
        self.pad = NO_PAD
        self.unique_identifiers = OrderedDict(
            [("class", "NullTokenizer"), ("vocab_size", self.vocab_size)])

    def tokenize(self, text: str) -> List[int]:
        """The integers in ``text``; raises ValueError for non-integers or ids out of range."""
        ids = []
        for word in text.split():
            try:
                ids.append(int(word))
            except ValueError:
                raise ValueError(f"NullTokenizer text must be whitespace-separated integer ids, "
                                 f"got {word!r}; use a real tokenizer for text") from None
        return self._check_ids(ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        """The ids joined by spaces."""
        return " ".join(str(i) for i in self._check_ids(ids))


_TOKENIZER_TYPES = {
    "SentencePieceTokenizer": lambda model, vocab: SentencePieceTokenizer(model),
    "HuggingFaceTokenizer": lambda model, vocab: HuggingFaceTokenizer(model),
    "NullTokenizer": lambda model, vocab: NullTokenizer(vocab),
}


def build_tokenizer(tokenizer_type: str, *, tokenizer_model: Optional[str] = None,
                    vocab_size: Optional[int] = None):
    """Build a tokenizer by its Megatron-LM ``--tokenizer-type`` name."""
    if tokenizer_type not in _TOKENIZER_TYPES:
        raise ValueError(f"unknown tokenizer type {tokenizer_type!r}; choose one of "
                         f"{', '.join(_TOKENIZER_TYPES)}")
    if tokenizer_type != "NullTokenizer" and not tokenizer_model:
        raise ValueError(f"{tokenizer_type} needs tokenizer_model (--tokenizer-model), got "
                         f"{tokenizer_model!r}")
    return _TOKENIZER_TYPES[tokenizer_type](tokenizer_model, vocab_size)


def saved_tokenizer(directory: str, *, kind: Optional[str] = None) -> Optional[Tuple[str, str]]:
    """(tokenizer type, model path) of the tokenizer a converted checkpoint keeps in
    ``directory`` (its ``tokenizer/``), preferring ``tokenizer.json``; None if there is none
    (of type ``kind``, when given)."""
    for filename, found in (("tokenizer.json", "HuggingFaceTokenizer"),
                            ("tokenizer.model", "SentencePieceTokenizer")):
        path = os.path.join(directory, filename)
        if os.path.exists(path) and kind in (None, found):
            return found, path
    return None


def checkpoint_tokenizer(tokenizer_type: Optional[str], tokenizer_model: Optional[str], *,
                         saved_dir: Optional[str], vocab_size: int, purpose: str):
    """The tokenizer a tool uses with a checkpoint: the one named by --tokenizer-type /
    --tokenizer-model, else the one the checkpoint keeps in ``saved_dir`` (its tokenizer/).
    ``NullTokenizer`` gets the model's ``vocab_size``. ``purpose`` ends the error message for
    a checkpoint that keeps none."""
    kind, model = tokenizer_type, tokenizer_model
    if kind == "NullTokenizer":
        return build_tokenizer(kind, vocab_size=vocab_size)
    if model is None:
        found = saved_tokenizer(saved_dir, kind=kind) if saved_dir else None
        if found is None:
            raise ValueError(f"the checkpoint keeps no tokenizer ({saved_dir!r}): pass "
                             f"--tokenizer-type and --tokenizer-model {purpose}")
        kind, model = found
    return build_tokenizer(kind or "HuggingFaceTokenizer", tokenizer_model=model)


def _readable_file(path: str, kind: str, what: str) -> str:
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ValueError(f"{kind} model file {path!r} does not exist or is not readable; "
                         f"pass {what} file")
    return path


def _identifiers(kind: str, path: str) -> "OrderedDict[str, Any]":
    """Class, path and content hash, so Megatron's cache names change when the file does."""
    digest = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, name) for name in os.listdir(path)
        if name.endswith((".json", ".model", ".txt")))
    for name in files:
        with open(name, "rb") as handle:
            digest.update(handle.read())
    return OrderedDict([("class", kind), ("tokenizer_model", path),
                        ("sha256", digest.hexdigest())])


class _TokenizersBackend:
    """``tokenizers.Tokenizer`` behind the small interface HuggingFaceTokenizer uses."""

    def __init__(self, path: str) -> None:
        import tokenizers

        try:
            self._tok = tokenizers.Tokenizer.from_file(path)
        except Exception as error:  # the Rust side raises a bare Exception
            raise ValueError(f"cannot load {path!r} as a Hugging Face tokenizer.json ({error}); "
                             "pass a tokenizer.json file or its directory") from error
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> List[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: List[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)


class _TransformersBackend:
    """``transformers.AutoTokenizer`` for directories without a tokenizer.json."""

    def __init__(self, directory: str) -> None:
        import transformers

        self._tok = transformers.AutoTokenizer.from_pretrained(directory)
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> List[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: List[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> Optional[int]:
        found = self._tok.convert_tokens_to_ids(token)
        return None if found is None or found == self._tok.unk_token_id else int(found)


def _load_hf_backend(tokenizer_model: str):
    """(backend, directory with the config files, path that identifies it)."""
    path = os.path.abspath(os.path.expanduser(str(tokenizer_model)))
    if os.path.isdir(path):
        json_path = os.path.join(path, "tokenizer.json")
        if os.path.isfile(json_path):
            return _TokenizersBackend(json_path), path, json_path
        try:
            import transformers  # noqa: F401  (optional: only for tokenizer.json-less dirs)
        except ImportError:
            raise ValueError(f"directory {path!r} has no tokenizer.json; pass a directory with "
                             "one, or install transformers to load other formats") from None
        return _TransformersBackend(path), path, path
    path = _readable_file(path, "HuggingFaceTokenizer", "a tokenizer.json (or its directory)")
    return _TokenizersBackend(path), os.path.dirname(path), path


def _hf_special_id(backend, directory: str, role: str, *, required: bool) -> Optional[int]:
    """The id of the ``role`` (eos/bos/pad) token named by the first config file that has one."""
    for name in _HF_CONFIG_FILES:
        config = _read_json(os.path.join(directory, name))
        token_id = _id_from_config(backend, config, role)
        if token_id is not None:
            return token_id
    if role == "eos":
        for token in HF_EOS_FALLBACKS:
            if backend.token_to_id(token) is not None:
                return int(backend.token_to_id(token))
    if required:
        raise ValueError(f"cannot find the eos token of the tokenizer in {directory!r}: no "
                         f"eos_token/eos_token_id in {', '.join(_HF_CONFIG_FILES)} and none of "
                         f"{', '.join(HF_EOS_FALLBACKS)} is in the vocabulary; add "
                         '{"eos_token": "..."} to tokenizer_config.json')
    return None


def _id_from_config(backend, config: Dict[str, Any], role: str) -> Optional[int]:
    token = config.get(f"{role}_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and backend.token_to_id(token) is not None:
        return int(backend.token_to_id(token))
    token_id = config.get(f"{role}_token_id")
    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    if isinstance(token_id, int) and 0 <= token_id < backend.vocab_size:
        return token_id
    return None


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read tokenizer config {path!r} ({error}); fix or remove it") \
            from error
    return config if isinstance(config, dict) else {}
