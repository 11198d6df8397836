"""parse_data_path and build_gpt_datasets on small indexed datasets with known token ids.

Reference: every document holds a run of consecutive ids that no other document uses, so a
sample's origin is recoverable by hand: it must be a chain of document pieces (the end of one
document, whole documents, the start of another), each from the split's own document range.
Sample counts follow Megatron's documented rule (epochs * tokens - 1) // seq_length.
"""
import json
import os

import numpy
import pytest

from megatron_masklm.data import (
    build_gpt_datasets, build_indexed_dataset, build_tokenizer, parse_data_path,
)

VOCAB = 60000
SEQ = 16


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("NullTokenizer", vocab_size=VOCAB)


def make_prefix(directory, name, tokenizer, *, first_id, lengths):
    """Documents of the given lengths holding consecutive ids from first_id; returns them too."""
    docs, start = [], first_id
    for length in lengths:
        docs.append(list(range(start, start + length)))
        start += length
    source = directory / f"{name}.jsonl"
    source.write_text("".join(json.dumps({"text": " ".join(map(str, d))}) + "\n" for d in docs))
    prefix = build_indexed_dataset(str(source), str(directory / name), tokenizer,
                                   progress=False)["text"]
    return prefix, docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("corpus")
    rng = numpy.random.default_rng(0)
    lengths = rng.integers(3, 30, size=40).tolist()
    return make_prefix(directory, "a", tokenizer, first_id=0, lengths=lengths)


def doc_of(docs):
    return {token: (index, position) for index, doc in enumerate(docs)
            for position, token in enumerate(doc)}


def pieces(text, where):
    """Split a token list into (doc, first position, last position) runs."""
    runs = []
    for token in text:
        index, position = where[token]
        if runs and runs[-1][0] == index and runs[-1][2] + 1 == position:
            runs[-1][2] = position
        else:
            runs.append([index, position, position])
    return runs


def check_sample(sample, where, docs, allowed_docs):
    tokens, labels = sample["tokens"].tolist(), sample["labels"].tolist()
    assert len(tokens) == len(labels) == SEQ
    assert labels[:-1] == tokens[1:]
    assert sample["loss_mask"].tolist() == [1.0] * SEQ
    assert sample["position_ids"].tolist() == list(range(SEQ))
    runs = pieces(tokens + labels[-1:], where)
    for number, (index, first, last) in enumerate(runs):
        assert index in allowed_docs
        if number > 0:
            assert first == 0  # a later piece starts its document
        if number < len(runs) - 1:
            assert last == len(docs[index]) - 1  # an earlier piece ends its document
    return runs


def expected_count(num_samples, split_tokens):
    epochs = 1
    while epochs * split_tokens < num_samples * SEQ + 1:
        epochs += 1
    return (epochs * split_tokens - 1) // SEQ


def test_parse_data_path_unweighted_and_weighted(corpus, tmp_path, tokenizer):
    prefix, _ = corpus
    other, _ = make_prefix(tmp_path, "b", tokenizer, first_id=5000, lengths=[4, 5])
    assert parse_data_path([prefix]) == ([prefix], None)
    assert parse_data_path([prefix, other]) == ([prefix, other], None)
    assert parse_data_path(["0.3", prefix, "7", other]) == ([prefix, other], [0.3, 7.0])


@pytest.mark.parametrize("words,message", [
    ([], "data_path is empty"),
    (["1", "{p}", "2"], "weight/prefix pairs, got 3 words"),
    (["0", "{p}"], "blend weight '0'.*positive"),
    (["-1", "{p}", "1", "{p}"], "blend weight '-1'"),
    (["1", "{p}", "x", "{p}"], "blend weight 'x'"),
    (["{p}.bin"], r"ends in \.bin; pass it without the extension"),
    (["{p}_missing"], "_missing.bin file.*tools/preprocess_data.py"),
], ids=["empty", "odd", "zero", "negative", "not_a_number", "suffix", "missing"])
def test_parse_data_path_errors(corpus, words, message):
    prefix, _ = corpus
    with pytest.raises(ValueError, match=message):
        parse_data_path([word.format(p=prefix) for word in words])


def test_parse_data_path_names_a_missing_idx(corpus, tmp_path):
    prefix, _ = corpus
    orphan = tmp_path / "orphan"
    (tmp_path / "orphan.bin").write_bytes(open(prefix + ".bin", "rb").read())
    with pytest.raises(ValueError, match=r"orphan\.idx"):
        parse_data_path([str(orphan)])


def test_samples_are_document_chains_from_their_own_split(corpus, tokenizer, tmp_path):
    prefix, docs = corpus
    where = doc_of(docs)
    train, valid, test = build_gpt_datasets(
        data_path=[prefix], split="80,15,5", seq_length=SEQ, seed=1, tokenizer=tokenizer,
        num_samples=(200, 10, 3), cache_dir=str(tmp_path / "cache"))
    # Megatron's document ranges: round(share * 40) at each boundary.
    ranges = {"train": range(0, 32), "valid": range(32, 38), "test": range(38, 40)}
    for dataset, name, asked in [(train, "train", 200), (valid, "valid", 10), (test, "test", 3)]:
        split_tokens = sum(len(docs[i]) for i in ranges[name])
        assert len(dataset) == expected_count(asked, split_tokens) >= asked
        seen = set()
        for index in range(len(dataset)):
            runs = check_sample(dataset[index], where, docs, set(ranges[name]))
            seen.update(run[0] for run in runs)
        assert seen == set(ranges[name])  # every document of the split is used
    assert os.listdir(tmp_path / "cache")
    assert not os.path.exists(prefix)  # nothing written next to the data with a cache_dir


def test_same_seed_same_samples_and_cache_reuse(corpus, tokenizer, tmp_path):
    prefix, _ = corpus
    kwargs = dict(data_path=[prefix], split="90,10,0", seq_length=SEQ, tokenizer=tokenizer,
                  num_samples=(50, 0, 0), cache_dir=str(tmp_path / "c"))
    first = build_gpt_datasets(seed=3, **kwargs)[0]
    files = sorted(os.listdir(tmp_path / "c"))
    again = build_gpt_datasets(seed=3, **kwargs)[0]
    assert sorted(os.listdir(tmp_path / "c")) == files  # a cache hit writes nothing
    other = build_gpt_datasets(seed=4, **kwargs)[0]
    assert set(os.listdir(tmp_path / "c")) > set(files)  # another seed, its own indices
    samples = [[d[i]["tokens"].tolist() for i in range(len(d))] for d in (first, again, other)]
    assert samples[0] == samples[1] and samples[0] != samples[2]


@pytest.mark.timeout(60)  # megatron-core alone would loop forever on the empty test split
def test_zero_sample_splits_are_none(corpus, tokenizer, tmp_path):
    prefix, _ = corpus
    train, valid, test = build_gpt_datasets(
        data_path=[prefix], split="969,30,1", seq_length=SEQ, seed=1, tokenizer=tokenizer,
        num_samples=(10, 0, 0), cache_dir=str(tmp_path))
    assert valid is None and test is None and len(train) >= 10


def test_weighted_blend_draws_in_proportion(tmp_path, tokenizer):
    lengths = [20] * 30
    a, docs_a = make_prefix(tmp_path, "a", tokenizer, first_id=0, lengths=lengths)
    b, docs_b = make_prefix(tmp_path, "b", tokenizer, first_id=10000, lengths=lengths)
    where = doc_of(docs_a + docs_b)
    train, _, _ = build_gpt_datasets(
        data_path=["3", a, "1", b], split="1", seq_length=SEQ, seed=2, tokenizer=tokenizer,
        num_samples=(400, 0, 0), cache_dir=str(tmp_path / "cache"))
    assert len(train) >= 400
    from_a = 0
    for index in range(len(train)):
        runs = check_sample(train[index], where, docs_a + docs_b, set(range(60)))
        sources = {run[0] < 30 for run in runs}
        assert len(sources) == 1  # a sample never mixes prefixes
        from_a += sources.pop()
    assert abs(from_a / len(train) - 0.75) < 0.02


def test_unweighted_blend_beyond_one_epoch_is_an_error(tmp_path, tokenizer):
    a, _ = make_prefix(tmp_path, "a", tokenizer, first_id=0, lengths=[20] * 5)
    b, _ = make_prefix(tmp_path, "b", tokenizer, first_id=1000, lengths=[20] * 5)
    train, _, _ = build_gpt_datasets(data_path=[a, b], split="1", seq_length=SEQ, seed=0,
                                     tokenizer=tokenizer, num_samples=(10, 0, 0))
    assert len(train) == 10
    with pytest.raises(ValueError, match="fewer than the 100 asked for.*give weights"):
        build_gpt_datasets(data_path=[a, b], split="1", seq_length=SEQ, seed=0,
                           tokenizer=tokenizer, num_samples=(100, 0, 0))


def test_default_cache_is_megatrons_next_to_the_data(tmp_path, tokenizer):
    prefix, _ = make_prefix(tmp_path, "d", tokenizer, first_id=0, lengths=[20] * 5)
    build_gpt_datasets(data_path=[prefix], split="1", seq_length=SEQ, seed=0,
                       tokenizer=tokenizer, num_samples=(5, 0, 0))
    assert os.listdir(os.path.join(prefix, "cache", "GPTDataset_indices"))


@pytest.mark.timeout(60)  # megatron-core itself would loop forever here
def test_split_without_documents_is_an_error_not_a_hang(tmp_path, tokenizer):
    prefix, _ = make_prefix(tmp_path, "d", tokenizer, first_id=0, lengths=[20] * 10)
    with pytest.raises(ValueError, match="valid split of .*no documents.*5 valid samples"):
        build_gpt_datasets(data_path=[prefix], split="969,30,1", seq_length=SEQ, seed=0,
                           tokenizer=tokenizer, num_samples=(5, 5, 0), cache_dir=str(tmp_path))


def test_mock_datasets_need_no_data(tokenizer):
    train, valid, test = build_gpt_datasets(
        data_path=None, split="969,30,1", seq_length=SEQ, seed=0, tokenizer=tokenizer,
        num_samples=(20, 4, 0), mock=True)
    assert test is None and len(train) >= 20 and len(valid) >= 4
    for index in range(20):
        sample = train[index]
        assert sample["labels"][:-1].tolist() == sample["tokens"][1:].tolist()
        assert int(sample["tokens"].max()) < VOCAB


@pytest.mark.parametrize("kwargs,message", [
    (dict(data_path=None), "either data_path.*or mock=True"),
    (dict(mock=True), "either data_path"),
    (dict(split="90;10"), "split '90;10' must be"),
    (dict(split="1,1,1,1"), "split '1,1,1,1' must be"),
    (dict(split="0,0"), "split '0,0' must be"),
    (dict(split="0,1"), "gives the train split no share, but 5 train samples"),
    (dict(seq_length=0), "seq_length must be a positive int"),
    (dict(num_samples=(5, -1, 0)), "num_samples must be 3 non-negative ints"),
    (dict(num_samples=(5, 1)), "num_samples must be 3"),
], ids=["no_data", "both", "separator", "four", "zero_sum", "no_share", "seq", "negative",
        "two"])
def test_bad_requests(corpus, tokenizer, tmp_path, kwargs, message):
    request = dict(data_path=[corpus[0]], split="1", seq_length=SEQ, seed=0, tokenizer=tokenizer,
                   num_samples=(5, 0, 0), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=message):
        build_gpt_datasets(**{**request, **kwargs})


def test_training_validates_on_a_separate_dataset(tmp_path, tokenizer, corpus):
    """--valid-data-path: validation samples come from that dataset alone, training samples
    from the whole of --data-path."""
    from megatron_masklm.training.arguments import run_config_from_options
    from megatron_masklm.training.builders import build_data

    train_prefix, train_docs = corpus
    valid_prefix, valid_docs = make_prefix(tmp_path, "v", tokenizer, first_id=50000,
                                           lengths=[20] * 10)
    options = dict(num_layers=1, hidden_size=8, ffn_hidden_size=16, num_attention_heads=2,
                   vocab_size=VOCAB, max_position_embeddings=SEQ, seq_length=SEQ,
                   micro_batch_size=2, global_batch_size=2, train_iters=5, eval_iters=3,
                   data_path=[train_prefix], split="100,0,0", valid_data_path=[valid_prefix],
                   tokenizer_type="NullTokenizer")
    train, valid = build_data(run_config_from_options(options))
    valid_ids = {t for d in valid_docs for t in d} | {tokenizer.eod}
    train_ids = {t for d in train_docs for t in d} | {tokenizer.eod}
    assert len(valid) >= 6 and len(train) >= 10
    for index in range(6):
        assert set(valid[index]["tokens"].tolist()) <= valid_ids
    for index in range(10):
        assert set(train[index]["tokens"].tolist()) <= train_ids
    with pytest.raises(ValueError, match="valid_data_path needs real training data"):
        run_config_from_options({**options, "data_path": None, "mock_data": True})
