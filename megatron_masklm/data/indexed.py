"""Tokenize JSON Lines or plain-text files into Megatron indexed datasets (.bin/.idx pairs).

Input formats, chosen by suffix:

* ``.jsonl`` / ``.json``: JSON Lines, one object per line (blank lines are ignored). Each key in
  ``json_keys`` is one document and goes to ``{output_prefix}_{key}_document`` (Megatron-LM's
  naming).
* anything else: UTF-8 plain text, written to ``{output_prefix}_text_document``. With
  ``text_mode="file"`` the whole file, exactly as read, is one document; with
  ``"paragraphs"`` every run of non-blank lines is one document (separated by one or more blank
  or whitespace-only lines, surrounding whitespace stripped).

Each document is one sequence (``add_item`` + ``end_document``), as GPTDataset expects. Documents
with no tokens are skipped and counted. Outputs are written under hidden temporary names next to
the destination and renamed only after every input was read and tokenized, so a failed run
leaves no partial ``.bin``/``.idx`` behind.
"""
import json
import os
import secrets
import sys
from multiprocessing import Pool
from typing import Dict, Iterator, List, NamedTuple, Sequence, Tuple, Union

import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
from tqdm import tqdm

TEXT_MODES = ("file", "paragraphs")
JSON_SUFFIXES = (".jsonl", ".json")
TEXT_KEY = "text"
_CHUNKSIZE = 64


class _Record(NamedTuple):
    """One unit of work: a JSON line, a text document, or a read error to raise in order."""

    source: str  # "file:line" for messages
    kind: str  # "json", "text", "blank" (bytes without a document) or "error"
    payload: str
    nbytes: int


class _Encoder:
    """Turns a record into [(output key, token ids)]; picklable for Pool workers."""

    def __init__(self, tokenizer, json_keys: Sequence[str], append_eod: bool) -> None:
        self.tokenizer = tokenizer
        self.json_keys = tuple(json_keys)
        self.append_eod = append_eod

    def __call__(self, record: _Record) -> Tuple[List[Tuple[str, List[int]]], int]:
        if record.kind == "error":
            raise ValueError(record.payload)
        if record.kind == "blank":
            return [], record.nbytes
        if record.kind == "text":
            return [(TEXT_KEY, self._ids(record.payload, record.source))], record.nbytes
        texts = _json_texts(record, self.json_keys)
        return [(key, self._ids(text, record.source)) for key, text in texts], record.nbytes

    def _ids(self, text: str, source: str) -> List[int]:
        try:
            ids = list(self.tokenizer.tokenize(text))
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        if ids and self.append_eod:
            ids.append(self.tokenizer.eod)
        return ids


# Set once per Pool worker process by its initializer; the parent never touches it.
_WORKER_ENCODER: List[_Encoder] = []


def _init_worker(encoder: _Encoder) -> None:
    _WORKER_ENCODER[:] = [encoder]


def _encode_in_worker(record: _Record):
    return _WORKER_ENCODER[0](record)


def _json_texts(record: _Record, json_keys: Sequence[str]) -> List[Tuple[str, str]]:
    try:
        obj = json.loads(record.payload)
    except ValueError as error:
        raise ValueError(f"{record.source}: bad JSON ({error}); each line must be one JSON "
                         "object (JSON Lines)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{record.source}: expected a JSON object, got {type(obj).__name__}; "
                         "each line must be one JSON object (JSON Lines)")
    texts = []
    for key in json_keys:
        if key not in obj:
            raise ValueError(f"{record.source}: key {key!r} is missing (keys present: "
                             f"{', '.join(map(repr, obj)) or 'none'}); pass the right --json-keys")
        if not isinstance(obj[key], str):
            raise ValueError(f"{record.source}: key {key!r} holds a {type(obj[key]).__name__}, "
                             "not a string")
        texts.append((key, obj[key]))
    return texts


def _read_records(path: str, text_mode: str) -> Iterator[_Record]:
    """The file's records; a read or decode error becomes a final "error" record."""
    kind = "json" if path.lower().endswith(JSON_SUFFIXES) else "text"
    try:
        if kind == "text" and text_mode == "file":
            with open(path, "rb") as handle:
                data = handle.read()
            yield _Record(path, "text", _decode(data, f"{path}"), len(data))
            return
        lines = _numbered_lines(path)
        yield from (_json_lines(lines, path) if kind == "json" else _paragraphs(lines, path))
    except (OSError, ValueError) as error:
        yield _Record(path, "error", str(error) if isinstance(error, ValueError) else
                      f"cannot read {path!r} ({error}); check the path and its permissions", 0)


def _numbered_lines(path: str) -> Iterator[Tuple[int, str, int]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            yield number, _decode(raw, f"{path}:{number}"), len(raw)


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{source}: not UTF-8 text ({error}); convert the file to UTF-8") \
            from None


def _json_lines(lines, path: str) -> Iterator[_Record]:
    pending = 0  # bytes of blank lines, counted with the next record
    for number, line, nbytes in lines:
        if line.strip():
            yield _Record(f"{path}:{number}", "json", line, pending + nbytes)
            pending = 0
        else:
            pending += nbytes
    if pending:
        yield _Record(path, "blank", "", pending)


def _paragraphs(lines, path: str) -> Iterator[_Record]:
    block: List[str] = []
    start, nbytes = 0, 0
    for number, line, size in lines:
        nbytes += size
        if line.strip():
            start = start or number
            block.append(line)
        elif block:
            yield _Record(f"{path}:{start}", "text", "".join(block).strip(), nbytes)
            block, start, nbytes = [], 0, 0
    if block:
        yield _Record(f"{path}:{start}", "text", "".join(block).strip(), nbytes)
    elif nbytes:  # trailing blank lines: progress only, no document
        yield _Record(path, "blank", "", nbytes)


class _PendingOutput:
    """An IndexedDatasetBuilder writing to temporary names, renamed into place on commit."""

    def __init__(self, prefix: str, dtype: type) -> None:
        self.prefix = prefix
        directory, base = os.path.split(os.path.abspath(prefix))
        tag = f"{os.getpid()}.{secrets.token_hex(4)}"  # unique; the builder creates the files
        self.temps = [os.path.join(directory, f".{base}.{tag}.{ext}.tmp") for ext in ("bin", "idx")]
        self.builder = IndexedDatasetBuilder(self.temps[0], dtype=dtype)
        self.documents = self.tokens = self.skipped = 0

    def add(self, ids: List[int]) -> None:
        if not ids:
            self.skipped += 1
            return
        self.builder.add_item(torch.tensor(ids, dtype=torch.int64))
        self.builder.end_document()
        self.documents += 1
        self.tokens += len(ids)

    def finalize(self) -> None:
        self.builder.finalize(self.temps[1])

    def commit(self) -> None:
        os.replace(self.temps[0], self.prefix + ".bin")
        os.replace(self.temps[1], self.prefix + ".idx")

    def discard(self) -> None:
        self.builder.data_file.close()
        for path in self.temps:
            if os.path.exists(path):
                os.remove(path)


def build_indexed_dataset(input_paths: Union[str, Sequence[str]], output_prefix: str, tokenizer,
                          *, json_keys: Sequence[str] = ("text",), append_eod: bool = False,
                          text_mode: str = "file", workers: int = 1,
                          progress: bool = True) -> Dict[str, str]:
    """Tokenize the inputs into one .bin/.idx pair per key; return {key: prefix for --data-path}."""
    paths = [input_paths] if isinstance(input_paths, (str, os.PathLike)) else list(input_paths)
    paths = [os.fspath(path) for path in paths]
    _check_arguments(paths, json_keys, text_mode, workers)
    prefixes = {key: f"{output_prefix}_{key}_document" for key in _output_keys(paths, json_keys)}
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    outputs: Dict[str, _PendingOutput] = {}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
        for key, prefix in prefixes.items():
            outputs[key] = _PendingOutput(prefix, dtype)
        _write_documents(paths, _Encoder(tokenizer, json_keys, append_eod), outputs,
                         text_mode=text_mode, workers=workers, progress=progress)
        _check_not_empty(outputs)
        for output in outputs.values():
            output.finalize()
        for output in outputs.values():
            output.commit()
    except BaseException as error:
        for output in outputs.values():
            output.discard()
        if isinstance(error, OSError):
            raise ValueError(f"cannot write the output {output_prefix!r} ({error}); check that "
                             "its directory is writable and has space") from error
        raise
    if progress:
        for output in outputs.values():
            print(f"{output.prefix}: {output.documents} documents, {output.tokens} tokens, "
                  f"{output.skipped} empty documents skipped", file=sys.stderr)
    return prefixes


def _check_arguments(paths: List[str], json_keys: Sequence[str], text_mode: str,
                     workers: int) -> None:
    if not paths:
        raise ValueError("no input files given; pass at least one --input")
    for path in paths:
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ValueError(f"input {path!r} does not exist or is not a readable file")
    if isinstance(json_keys, str) or not json_keys or len(set(json_keys)) != len(json_keys):
        raise ValueError(f"json_keys must be a non-empty list of distinct keys, got {json_keys!r}")
    if text_mode not in TEXT_MODES:
        raise ValueError(f"unknown text_mode {text_mode!r}; choose one of {', '.join(TEXT_MODES)}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")


def _output_keys(paths: List[str], json_keys: Sequence[str]) -> List[str]:
    keys: List[str] = []
    for path in paths:
        for key in json_keys if path.lower().endswith(JSON_SUFFIXES) else [TEXT_KEY]:
            if key not in keys:
                keys.append(key)
    return keys


def _all_records(paths: List[str], text_mode: str) -> Iterator[_Record]:
    for path in paths:
        for record in _read_records(path, text_mode):
            yield record
            if record.kind == "error":
                return


def _write_documents(paths: List[str], encoder: _Encoder, outputs: Dict[str, _PendingOutput],
                     *, text_mode: str, workers: int, progress: bool) -> None:
    total = sum(os.path.getsize(path) for path in paths)
    records = _all_records(paths, text_mode)
    with tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, disable=not progress,
              desc="tokenizing") as bar:
        if workers == 1:
            _consume(map(encoder, records), outputs, bar)
            return
        with Pool(workers, initializer=_init_worker, initargs=(encoder,)) as pool:
            _consume(pool.imap(_encode_in_worker, records, chunksize=_CHUNKSIZE), outputs, bar)


def _consume(results, outputs: Dict[str, _PendingOutput], bar) -> None:
    documents = 0
    for docs, nbytes in results:
        for key, ids in docs:
            outputs[key].add(ids)
        documents += len(docs)
        bar.update(nbytes)
        if documents % 1000 < len(docs):
            bar.set_postfix_str(f"{documents} docs", refresh=False)


def _check_not_empty(outputs: Dict[str, _PendingOutput]) -> None:
    for key, output in outputs.items():
        if output.documents == 0:
            raise ValueError(f"no non-empty documents for key {key!r} ({output.skipped} empty "
                             "ones skipped); check the inputs and --json-keys")
