"""build_tokenizer against the libraries' own encoders and hand-made vocabularies.

References: a SentencePiece model and a BPE tokenizer.json trained here, encoded by
``sentencepiece`` / ``tokenizers`` directly; a hand-written WordLevel vocabulary whose ids are
known; NullTokenizer's ids are the integers in the text.
"""
import json
import pickle
import random
import sys

import pytest
import sentencepiece
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from megatron_masklm.data import build_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "mask", "sparse", "token", "layer", "model", "data"]
SAMPLE = "the sparse model masks alpha layer data token"


def corpus(lines=300, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(lines)]


def train_sentencepiece(directory, name, **options):
    prefix = directory / name
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_prefix=str(prefix), vocab_size=70,
        model_type="bpe", character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2, **options)
    return str(prefix) + ".model"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_sentencepiece(tmp_path_factory.mktemp("sp"), "sp", unk_id=0, bos_id=1, eos_id=2,
                               pad_id=3)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bpe")
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>",
                                                                  "<eos2>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", {"eos_token": "</s>", "bos_token": "<s>",
                                                     "pad_token": "<pad>"})
    return directory


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")


def word_level_dir(directory, vocab, **configs):
    """A WordLevel tokenizer.json with a hand-written vocabulary, plus config files."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    for name, obj in configs.items():
        write_json(directory / f"{name}.json", obj)
    return directory


def test_sentencepiece_matches_library_encoding_and_special_ids(sp_model):
    reference = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model)
    for text in [SAMPLE, *corpus(20, seed=1)]:
        ids = tok.tokenize(text)
        assert ids == reference.encode(text)
        assert reference.eos_id() not in ids and reference.bos_id() not in ids
        assert tok.detokenize(ids) == text
    assert (tok.vocab_size, tok.eod, tok.bos, tok.pad) == (reference.get_piece_size(), 2, 1, 3)
    assert tok.unique_identifiers["class"] == "SentencePieceTokenizer"
    json.dumps(tok.unique_identifiers)


def test_sentencepiece_without_pad_uses_megatron_no_pad(tmp_path):
    tok = build_tokenizer("SentencePieceTokenizer",
                          tokenizer_model=train_sentencepiece(tmp_path, "nopad"))
    assert tok.pad == -1 and tok.eod == sentencepiece.SentencePieceProcessor(
        model_file=str(tmp_path / "nopad.model")).eos_id()


def test_sentencepiece_without_eos_is_rejected(tmp_path):
    model = train_sentencepiece(tmp_path, "noeos", eos_id=-1)
    with pytest.raises(ValueError, match="no eos token"):
        build_tokenizer("SentencePieceTokenizer", tokenizer_model=model)


@pytest.mark.parametrize("as_directory", [True, False], ids=["directory", "file"])
def test_huggingface_matches_library_encoding(bpe_dir, as_directory):
    path = bpe_dir if as_directory else bpe_dir / "tokenizer.json"
    reference = tokenizers.Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(path))
    for text in [SAMPLE, " leading space\nand a newline ", *corpus(20, seed=2)]:
        ids = tok.tokenize(text)
        assert ids == reference.encode(text, add_special_tokens=False).ids
        assert tok.detokenize(ids) == text
    assert tok.vocab_size == reference.get_vocab_size(with_added_tokens=True)
    assert (tok.eod, tok.bos, tok.pad) == (reference.token_to_id("</s>"),
                                           reference.token_to_id("<s>"),
                                           reference.token_to_id("<pad>"))


VOCAB = {"<unk>": 0, "hello": 1, "world": 2, "</s>": 3, "<|endoftext|>": 4, "<|im_end|>": 5,
         "<eot>": 6}


@pytest.mark.parametrize("configs,expected_eod", [
    ({"tokenizer_config": {"eos_token": "<eot>"}}, 6),
    ({"tokenizer_config": {"eos_token": {"content": "<|im_end|>", "lstrip": False}}}, 5),
    ({"special_tokens_map": {"eos_token": "<|endoftext|>"}}, 4),
    ({"generation_config": {"eos_token_id": [5, 6]}}, 5),
    ({"config": {"eos_token_id": 4}}, 4),
    ({"tokenizer_config": {"eos_token": "<eot>"}, "config": {"eos_token_id": 4}}, 6),
    ({}, 3),  # no config: the first fallback name in the vocabulary
], ids=["string", "dict", "special_tokens_map", "id_list", "config_id", "priority", "fallback"])
def test_huggingface_eos_from_config_files(tmp_path, configs, expected_eod):
    tok = build_tokenizer("HuggingFaceTokenizer",
                          tokenizer_model=str(word_level_dir(tmp_path / "t", VOCAB, **configs)))
    assert tok.eod == expected_eod
    assert tok.tokenize("hello world hello") == [1, 2, 1]
    assert tok.pad == -1 and tok.bos is None


def test_huggingface_fallback_names_in_order(tmp_path):
    vocab = {"<unk>": 0, "hi": 1, "<|im_end|>": 2, "<|end_of_text|>": 3}
    tok = build_tokenizer("HuggingFaceTokenizer",
                          tokenizer_model=str(word_level_dir(tmp_path / "t", vocab)))
    assert tok.eod == 3


def test_huggingface_pad_equal_to_eos_is_no_pad(tmp_path):
    directory = word_level_dir(tmp_path / "t", VOCAB,
                               tokenizer_config={"eos_token": "</s>", "pad_token": "</s>"})
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(directory))
    assert (tok.eod, tok.pad) == (3, -1)


def test_null_tokenizer_parses_integers_and_puts_eod_last():
    tok = build_tokenizer("NullTokenizer", vocab_size=50)
    assert tok.tokenize(" 3 17\n 0\t49 ") == [3, 17, 0, 49]
    assert tok.tokenize("") == []
    assert tok.detokenize([3, 17, 0]) == "3 17 0"
    assert (tok.vocab_size, tok.eod, tok.pad, tok.bos) == (50, 49, -1, None)


def test_tokenizers_survive_pickling_for_worker_processes(sp_model, bpe_dir):
    for tok in [build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model),
                build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(bpe_dir)),
                build_tokenizer("NullTokenizer", vocab_size=100)]:
        copy = pickle.loads(pickle.dumps(tok))
        text = "1 2 3" if tok.vocab_size == 100 else SAMPLE
        assert copy.tokenize(text) == tok.tokenize(text)
        assert (copy.eod, copy.vocab_size) == (tok.eod, tok.vocab_size)


def test_unique_identifiers_follow_the_file_content(tmp_path):
    first = word_level_dir(tmp_path / "a", VOCAB)
    second = word_level_dir(tmp_path / "b", {**VOCAB, "extra": 7})
    ids_a = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(first)).unique_identifiers
    ids_b = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(second)).unique_identifiers
    assert ids_a["sha256"] != ids_b["sha256"]
    assert build_tokenizer("HuggingFaceTokenizer",
                           tokenizer_model=str(first)).unique_identifiers == ids_a


def test_unknown_type_lists_valid_ones():
    with pytest.raises(ValueError, match="'GPT2BPETokenizer'.*SentencePieceTokenizer.*"
                                         "HuggingFaceTokenizer.*NullTokenizer"):
        build_tokenizer("GPT2BPETokenizer", tokenizer_model="x")


@pytest.mark.parametrize("kind", ["SentencePieceTokenizer", "HuggingFaceTokenizer"])
def test_missing_model_file_is_named(tmp_path, kind):
    missing = tmp_path / "nope.model"
    with pytest.raises(ValueError, match="nope.model.*does not exist"):
        build_tokenizer(kind, tokenizer_model=str(missing))
    with pytest.raises(ValueError, match="--tokenizer-model"):
        build_tokenizer(kind)


@pytest.mark.parametrize("kind", ["SentencePieceTokenizer", "HuggingFaceTokenizer"])
def test_unreadable_model_file_is_named(tmp_path, kind):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 not a tokenizer")
    with pytest.raises(ValueError, match="garbage.bin"):
        build_tokenizer(kind, tokenizer_model=str(garbage))


def test_huggingface_directory_without_tokenizer_json(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ValueError, match="has no tokenizer.json.*install transformers"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path))


def test_huggingface_without_any_eos_is_rejected(tmp_path):
    directory = word_level_dir(tmp_path / "t", {"<unk>": 0, "hello": 1})
    with pytest.raises(ValueError, match="eos token.*tokenizer_config.json"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(directory))


def test_huggingface_broken_config_is_named(tmp_path):
    directory = word_level_dir(tmp_path / "t", VOCAB)
    (directory / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(directory))


@pytest.mark.parametrize("vocab_size", [None, 1, 2.5, "64"])
def test_null_tokenizer_needs_vocab_size(vocab_size):
    with pytest.raises(ValueError, match="vocab_size.*--vocab-size"):
        build_tokenizer("NullTokenizer", vocab_size=vocab_size)


def test_out_of_range_ids_are_rejected(sp_model, bpe_dir):
    null = build_tokenizer("NullTokenizer", vocab_size=10)
    with pytest.raises(ValueError, match="token id 10 .*vocab_size 10"):
        null.tokenize("1 10")
    with pytest.raises(ValueError, match="'x'"):
        null.tokenize("1 x")
    for tok in [null, build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model),
                build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(bpe_dir))]:
        with pytest.raises(ValueError, match=f"token id {tok.vocab_size} "):
            tok.detokenize([0, tok.vocab_size])
        with pytest.raises(ValueError, match="token id -1 "):
            tok.detokenize([-1])
