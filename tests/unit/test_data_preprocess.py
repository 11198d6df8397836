"""build_indexed_dataset and tools/preprocess_data.py, read back with Megatron's IndexedDataset.

References: NullTokenizer documents are integer lists written by the test, so the expected ids
are known without tokenizing; the WordLevel tokenizer.json has a hand-written vocabulary.
"""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import tokenizers
from megatron.core.datasets.indexed_dataset import IndexedDataset
from tokenizers import models, pre_tokenizers

from megatron_masklm.data import build_indexed_dataset, build_tokenizer

REPO = Path(__file__).resolve().parents[2]
VOCAB = {"<unk>": 0, "the": 1, "mask": 2, "is": 3, "sparse": 4, "</s>": 5}


def read_back(prefix):
    dataset = IndexedDataset(str(prefix))
    return [dataset[i].tolist() for i in range(len(dataset))]


def random_docs(count, *, vocab=100, seed=0, max_len=12):
    rng = random.Random(seed)
    return [[rng.randrange(vocab - 1) for _ in range(rng.randint(1, max_len))]
            for _ in range(count)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def ints(doc):
    return " ".join(map(str, doc))


def listing(directory):
    return sorted(os.listdir(directory))


@pytest.fixture
def null():
    return build_tokenizer("NullTokenizer", vocab_size=100)


@pytest.mark.parametrize("append_eod", [False, True])
def test_jsonl_roundtrip(tmp_path, null, append_eod):
    docs = random_docs(30)
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": ints(d), "id": i}
                                                 for i, d in enumerate(docs)])
    prefixes = build_indexed_dataset([str(source)], str(tmp_path / "out" / "c"), null,
                                     append_eod=append_eod, progress=False)
    assert prefixes == {"text": str(tmp_path / "out" / "c_text_document")}
    expected = [d + [99] if append_eod else d for d in docs]
    assert read_back(prefixes["text"]) == expected
    dataset = IndexedDataset(prefixes["text"])
    assert dataset.index.dtype == numpy.uint16  # vocab < 65500, as Megatron-LM picks
    assert list(dataset.document_indices) == list(range(len(docs) + 1))


def test_multi_key_jsonl_and_empty_documents(tmp_path, null, capsys):
    rows = [{"a": "1 2", "b": "3"}, {"a": "", "b": "4 5 6"}, {"a": "  ", "b": "7"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    (tmp_path / "in.jsonl").write_text(source.read_text() + "\n\n", encoding="utf-8")
    prefixes = build_indexed_dataset(str(source), str(tmp_path / "m"), null, json_keys=["a", "b"])
    assert set(prefixes) == {"a", "b"}
    assert read_back(prefixes["a"]) == [[1, 2]]
    assert read_back(prefixes["b"]) == [[3], [4, 5, 6], [7]]
    assert "2 empty documents skipped" in capsys.readouterr().err


def test_text_file_and_paragraph_modes(tmp_path):
    directory = word_level(tmp_path / "tok")
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(directory))
    text = "\n\nthe mask\nis sparse\n \t\nthe the\n\n\n\nmask\n\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    (tmp_path / "b.md").write_text("sparse mask", encoding="utf-8")
    inputs = [str(tmp_path / "a.txt"), str(tmp_path / "b.md")]
    whole = build_indexed_dataset(inputs, str(tmp_path / "f"), tok, append_eod=True,
                                  progress=False)
    assert read_back(whole["text"]) == [[1, 2, 3, 4, 1, 1, 2, 5], [4, 2, 5]]
    paragraphs = build_indexed_dataset(inputs, str(tmp_path / "p"), tok, text_mode="paragraphs",
                                       progress=False)
    assert read_back(paragraphs["text"]) == [[1, 2, 3, 4], [1, 1], [2], [4, 2]]


def word_level(directory):
    directory.mkdir()
    tok = tokenizers.Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"eos_token": "</s>"}', encoding="utf-8")
    return directory


def test_json_and_text_inputs_together(tmp_path, null):
    source = write_jsonl(tmp_path / "a.jsonl", [{"text": "1 2"}, {"text": "3"}])
    (tmp_path / "b.txt").write_text("4 5 6", encoding="utf-8")
    prefixes = build_indexed_dataset([str(source), str(tmp_path / "b.txt")], str(tmp_path / "o"),
                                     null, progress=False)
    assert read_back(prefixes["text"]) == [[1, 2], [3], [4, 5, 6]]


def test_large_vocab_uses_int32(tmp_path):
    tok = build_tokenizer("NullTokenizer", vocab_size=70000)
    source = write_jsonl(tmp_path / "a.jsonl", [{"text": "69998 0 65536"}])
    prefix = build_indexed_dataset(str(source), str(tmp_path / "o"), tok, progress=False)["text"]
    assert IndexedDataset(prefix).index.dtype == numpy.int32
    assert read_back(prefix) == [[69998, 0, 65536]]


def test_two_workers_write_identical_bytes(tmp_path, null):
    docs = random_docs(500, seed=3)
    rows = [{"text": ints(d), "other": ints(d[::-1])} for d in docs]
    rows[7]["text"] = ""
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    outputs = {}
    for workers in (1, 2):
        prefixes = build_indexed_dataset(str(source), str(tmp_path / f"w{workers}"), null,
                                         json_keys=["text", "other"], append_eod=True,
                                         workers=workers, progress=False)
        outputs[workers] = {key: (Path(p + ".bin").read_bytes(), Path(p + ".idx").read_bytes())
                            for key, p in prefixes.items()}
    assert outputs[1] == outputs[2]
    assert len(read_back(str(tmp_path / "w2_text_document"))) == 499


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("content,message", [
    ('{"text": "1"}\n{"text": "2"}\n{"text": "3"\n', r"bad\.jsonl:3: bad JSON"),
    ('{"text": "1"}\n{"body": "2", "id": 1}\n', r"bad\.jsonl:2: key 'text' is missing .*'body'"),
    ('{"text": "1"}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object"),
    ('{"text": 5}\n', r"bad\.jsonl:1: key 'text' holds a int"),
    ('{"text": "1 2 100"}\n', r"bad\.jsonl:1: token id 100 is out of range"),
], ids=["bad_json", "missing_key", "not_object", "not_string", "id_out_of_range"])
def test_bad_input_leaves_no_files(tmp_path, null, workers, content, message):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": ints(d)} for d in random_docs(200)])
    (tmp_path / "bad.jsonl").write_text(content, encoding="utf-8")
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=message):
        build_indexed_dataset([str(good), str(tmp_path / "bad.jsonl")], str(tmp_path / "o"), null,
                              workers=workers, progress=False)
    assert listing(tmp_path) == before


def test_only_empty_documents_is_an_error(tmp_path, null):
    write_jsonl(tmp_path / "a.jsonl", [{"text": ""}, {"text": " "}])
    with pytest.raises(ValueError, match="no non-empty documents for key 'text' \\(2 empty"):
        build_indexed_dataset(str(tmp_path / "a.jsonl"), str(tmp_path / "o"), null,
                              progress=False)
    assert listing(tmp_path) == ["a.jsonl"]


def test_failed_run_keeps_previous_output(tmp_path, null):
    source = write_jsonl(tmp_path / "a.jsonl", [{"text": "1 2 3"}])
    prefix = build_indexed_dataset(str(source), str(tmp_path / "o"), null, progress=False)["text"]
    old = Path(prefix + ".bin").read_bytes(), Path(prefix + ".idx").read_bytes()
    bad = write_jsonl(tmp_path / "b.jsonl", [{"text": "4"}, {"nope": "5"}])
    with pytest.raises(ValueError, match="b.jsonl:2"):
        build_indexed_dataset(str(bad), str(tmp_path / "o"), null, progress=False)
    assert (Path(prefix + ".bin").read_bytes(), Path(prefix + ".idx").read_bytes()) == old
    assert listing(tmp_path) == ["a.jsonl", "b.jsonl", "o_text_document.bin",
                                 "o_text_document.idx"]


def test_unreadable_inputs_and_bad_arguments(tmp_path, null):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    good = write_jsonl(tmp_path / "g.jsonl", [{"text": "1"}])
    cases = [
        ([str(tmp_path / "missing.jsonl")], {}, "missing.jsonl.*does not exist"),
        ([str(tmp_path)], {}, "not a readable file"),
        ([str(tmp_path / "latin1.txt")], {}, "latin1.txt: not UTF-8"),
        ([], {}, "no input files"),
        ([str(good)], {"text_mode": "lines"}, "'lines'.*file, paragraphs"),
        ([str(good)], {"workers": 0}, "workers must be a positive int, got 0"),
        ([str(good)], {"json_keys": []}, "json_keys"),
    ]
    before = listing(tmp_path)
    for inputs, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            build_indexed_dataset(inputs, str(tmp_path / "o"), null, progress=False, **kwargs)
    with pytest.raises(ValueError, match="cannot write the output .*g.jsonl/sub/o"):
        build_indexed_dataset(str(good), str(good / "sub" / "o"), null, progress=False)
    assert listing(tmp_path) == before


def test_cli_success_and_failure(tmp_path):
    docs = random_docs(20, seed=5)
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": ints(d)} for d in docs])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "1"}, {"txt": "2"}])
    script = str(REPO / "tools" / "preprocess_data.py")
    common = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--workers", "2"]
    runs = [subprocess.Popen([sys.executable, script, "--input", str(path), "--output-prefix",
                              str(tmp_path / name), *common, *extra],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for path, name, extra in [(good, "ok", ["--append-eod"]), (bad, "ko", [])]]
    (ok_out, ok_err), (ko_out, ko_err) = (run.communicate(timeout=120) for run in runs)
    assert runs[0].returncode == 0, ok_err
    prefix = str(tmp_path / "ok_text_document")
    assert ok_out.split() == [prefix]
    assert read_back(prefix) == [d + [99] for d in docs]
    assert runs[1].returncode == 1
    assert ko_err.strip().splitlines()[-1].startswith("error: ")
    assert "bad.jsonl:2: key 'text' is missing" in ko_err and "Traceback" not in ko_err
    assert not any(name.startswith(("ko", ".ko")) for name in listing(tmp_path))
