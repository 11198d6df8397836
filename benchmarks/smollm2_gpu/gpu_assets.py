"""Carry the SmolLM2-135M benchmark's assets to the lent GPU machine, which reaches no network.

    # here (CPU), after benchmarks/smollm2_cpu/run.py has built WORKDIR:
    python benchmarks/smollm2_gpu/gpu_assets.py pack --workdir /tmp/smollm2_cpu [--out .gpu_assets]
    # there: benchmarks/smollm2_gpu/run.py unpacks (or: gpu_assets.py unpack --assets .gpu_assets --into DIR)

Why parts. A device call carries at most 64 MiB of working tree (repository, ``.whl`` and
the paths named in ``carry``). The model is a 98.4 MB GGUF: 66.4 MB of Q4_1 linears and a
30.1 MB Q8_0 embedding whose codes are already close to their entropy (3.85 of 4 bits, 7.46 of
8), so no lossless packing fits it in one call, and a bf16 copy would be 270 MB. The files are
therefore split into parts of at most ``--part-mib`` (56 MiB: room is left for the repository and
``.whl``), and each part travels in its own call. A part carried by one call stays on the
machine (an ignored path already there) while the machine is warm, 30 s after a call, so the
next call, made at once, carries the other part. With tools/gpu_check.sh, each call under its
10-minute limit (the first ~60 MiB, the second ~56 MiB with the repository and .whl), each
sending its logs and results back through $OUT:

    run(command='bash tools/gpu_check.sh --skip smollm2 --report "$OUT"', carry=[".whl", ".gpu_assets/a"])
    run(command='bash tools/gpu_check.sh --only smollm2 --report "$OUT"', carry=[".whl", ".gpu_assets/b"])

If the machine went back in between, the second call reports part a missing and the pair
must be repeated.

What travels (TRAIN/EVAL already tokenized, and the prior, so the GPU run needs no calibration):
  the GGUF (split), ``data/{train,eval}_text_document.{bin,idx}``, ``eval.txt`` (EVAL perplexity
  under ../shared/BENCHMARK.md's protocol), ``tokenizer/`` (the one the data was tokenized with),
  ``prior.npz`` (the SparseGPT 2:4 prior of the CPU run), ``wheels/`` (gguf: the GPU image lacks
  it). Every part holds MANIFEST.json: each file's size, SHA-256 and pieces, and the CPU run's
  EVAL perplexities to print beside the GPU run's. ``unpack`` refuses a missing part, a piece of
  another pack or a file whose checksum differs.
"""
import argparse
import glob
import hashlib
import json
import os
import string
import subprocess
import sys
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

MIB = 2 ** 20
DEFAULT_PART_MIB = 56
MANIFEST = "MANIFEST.json"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE_STEPS = {  # the CPU run's cached results (benchmarks/smollm2_cpu/run.py steps/*.json)
    "dense": "eval_dense.json",
    "sparsegpt_mask_only": "eval_sparsegpt.json",
    "sparsegpt_updated": "eval_sparsegpt_updated.json",
    "maskllm_cpu": "eval_maskllm.json",
}


class AssetError(RuntimeError):
    """Assets missing, incomplete or inconsistent; the message says what to do."""


def sha256_file(path: str, chunk: int = 4 * MIB) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def plan_parts(files: Sequence[Tuple[str, int, bool]], capacity: int) -> Dict[str, List[dict]]:
    """Pieces of each file, in order, filling parts "a", "b", ... of at most ``capacity`` bytes.

    ``files`` are (path, bytes, splittable). A splittable file fills the current part and goes
    on in the next; any other file goes whole into the current part if it has room, else into
    a new one. Raises if a whole file is larger than a part or there are over 26 parts.
    """
    if capacity < 1:
        raise ValueError(f"part capacity {capacity} must be >= 1 byte")
    plan: Dict[str, List[dict]] = {}
    part, used = 0, 0

    def name(index: int) -> str:
        if index >= len(string.ascii_lowercase):
            raise ValueError(f"more than {len(string.ascii_lowercase)} parts of {capacity} bytes")
        return string.ascii_lowercase[index]

    for path, size, splittable in files:
        pieces = plan.setdefault(path, [])
        if not splittable:
            if size > capacity:
                raise ValueError(f"{path} ({size} bytes) is larger than a part ({capacity} bytes) "
                                 "and cannot be split")
            if used + size > capacity:
                part, used = part + 1, 0
            pieces.append({"part": name(part), "file": path, "offset": 0, "bytes": size})
            used += size
            continue
        offset = 0
        while offset < size or (size == 0 and not pieces):
            if used == capacity:
                part, used = part + 1, 0
            take = min(size - offset, capacity - used)
            pieces.append({"part": name(part), "file": f"{path}.{len(pieces):03d}",
                           "offset": offset, "bytes": take})
            offset, used = offset + take, used + take
            if size == 0:
                break
    return plan


def collect_sources(workdir: str, *, wheels: Iterable[str] = ()) -> Dict[str, str]:
    """Asset path (as it travels) -> file here, from a benchmarks/smollm2_cpu/run.py WORKDIR."""
    workdir = os.path.abspath(workdir)
    found = sorted(glob.glob(os.path.join(workdir, "assets", "**", "*.gguf"), recursive=True))
    if not found:
        raise AssetError(f"no .gguf under {workdir}/assets: run benchmarks/smollm2_cpu/run.py "
                         f"--workdir {workdir} first (it fetches the model)")
    sources = {GGUF_NAME: next((f for f in found if f.endswith(GGUF_NAME)), found[0])}
    for split in ("train", "eval"):
        for ext in ("bin", "idx"):
            sources[f"data/{split}_text_document.{ext}"] = os.path.join(
                workdir, "data", f"{split}_text_document.{ext}")
    sources["eval.txt"] = os.path.join(workdir, "eval.txt")
    sources["prior.npz"] = os.path.join(workdir, "oneshot", "sparsegpt", "prior.npz")
    tokenizer = os.path.join(workdir, "megatron", "tokenizer")
    if os.path.isdir(tokenizer):
        for name in sorted(os.listdir(tokenizer)):
            if os.path.isfile(os.path.join(tokenizer, name)):
                sources[f"tokenizer/{name}"] = os.path.join(tokenizer, name)
    else:
        sources["tokenizer/tokenizer.json"] = os.path.join(tokenizer, "tokenizer.json")
    for wheel in wheels:
        sources[f"wheels/{os.path.basename(wheel)}"] = wheel
    missing = sorted(path for path in sources.values() if not os.path.isfile(path))
    if missing:
        raise AssetError(f"missing in {workdir}: {missing}; the CPU benchmark "
                         "(benchmarks/smollm2_cpu/run.py --stop-after oneshot) writes them")
    return sources


def read_references(workdir: str) -> Dict[str, dict]:
    """The CPU run's EVAL perplexities that exist (dense, SparseGPT, its MaskLLM)."""
    references = {}
    for key, name in REFERENCE_STEPS.items():
        path = os.path.join(workdir, "steps", name)
        if os.path.isfile(path):
            with open(path) as handle:
                step = json.load(handle)
            references[key] = {"ppl": step["ppl"], "windows": step.get("windows")}
    train = os.path.join(workdir, "steps", "train.json")
    if "maskllm_cpu" in references and os.path.isfile(train):
        with open(train) as handle:
            references["maskllm_cpu"]["tokens"] = json.load(handle).get("tokens")
    return references


def pack(sources: Dict[str, str], out: str, *, part_mib: float = DEFAULT_PART_MIB,
         references: Optional[dict] = None, overwrite: bool = False) -> dict:
    """Write ``sources`` (asset path -> file) as parts under ``out``; returns the manifest."""
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise AssetError(f"{out} exists: pass --overwrite to replace it")
    capacity = int(part_mib * MIB)
    order = sorted(sources, key=lambda p: (not p.endswith(".gguf"), p))  # the model first
    entries = [(p, os.path.getsize(sources[p]), p.endswith(".gguf")) for p in order]
    plan = plan_parts(entries, capacity)
    files = [{"path": p, "bytes": size, "sha256": sha256_file(sources[p]), "pieces": plan[p]}
             for p, size, _ in entries]
    pack_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    parts = sorted({piece["part"] for f in files for piece in f["pieces"]})
    manifest = {"format": 1, "pack_id": pack_id, "part_bytes": capacity,
                "parts": {p: sum(piece["bytes"] for f in files for piece in f["pieces"]
                                 if piece["part"] == p) for p in parts},
                "files": files, "references": references or {}}
    from megatron_masklm.fileio import atomic_output_dir  # the packing side has the package

    with atomic_output_dir(out, overwrite=True) as tmp:  # refused above unless --overwrite
        for f in files:
            with open(sources[f["path"]], "rb") as source:
                for piece in f["pieces"]:
                    target = os.path.join(tmp, piece["part"], piece["file"])
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    source.seek(piece["offset"])
                    with open(target, "wb") as handle:
                        _copy(source, handle, piece["bytes"])
        for part in parts:
            with open(os.path.join(tmp, part, MANIFEST), "w") as handle:
                json.dump(manifest, handle, indent=1)
    return manifest


def _copy(source, target, size: int, chunk: int = 4 * MIB) -> None:
    left = size
    while left:
        block = source.read(min(chunk, left))
        if not block:
            raise AssetError(f"{source.name} ended {left} bytes early")
        target.write(block)
        left -= len(block)


def read_manifest(assets: str) -> dict:
    """The manifest of the parts present under ``assets`` (they must all be of one pack)."""
    found = sorted(glob.glob(os.path.join(assets, "*", MANIFEST)))
    if not found:
        raise AssetError(f"no part with a {MANIFEST} under {assets}: pack the assets with "
                         "benchmarks/smollm2_gpu/gpu_assets.py pack and carry the parts")
    manifests = []
    for path in found:
        with open(path) as handle:
            manifests.append(json.load(handle))
    ids = {m["pack_id"] for m in manifests}
    if len(ids) > 1:
        raise AssetError(f"the parts under {assets} come from different packs ({sorted(ids)}): "
                         "carry parts of one pack")
    return manifests[0]


def missing_parts(assets: str, manifest: dict) -> List[str]:
    return [p for p in sorted(manifest["parts"])
            if not os.path.isfile(os.path.join(assets, p, MANIFEST))]


def unpack(assets: str, into: str) -> dict:
    """Join the pieces into ``into`` (checked against the manifest); returns the manifest.

    Files already in ``into`` with the right size and checksum are kept.
    """
    manifest = read_manifest(assets)
    missing = missing_parts(assets, manifest)
    if missing:
        raise AssetError(
            f"part(s) {missing} of the assets are not under {assets}: each part travels in its own "
            "device call and stays only while the machine is warm (30 s after a call); carry "
            f"{', '.join(os.path.join(os.path.basename(os.path.abspath(assets)), p) for p in missing)}"
            " in a call made right before this one")
    for f in manifest["files"]:
        target = os.path.join(into, f["path"])
        if os.path.isfile(target) and os.path.getsize(target) == f["bytes"] \
                and sha256_file(target) == f["sha256"]:
            continue
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        digest = hashlib.sha256()
        with open(target + ".tmp", "wb") as handle:
            for piece in f["pieces"]:
                path = os.path.join(assets, piece["part"], piece["file"])
                if not os.path.isfile(path) or os.path.getsize(path) != piece["bytes"]:
                    raise AssetError(f"piece {path} is missing or has the wrong size "
                                     f"(want {piece['bytes']} bytes): repack and carry again")
                with open(path, "rb") as source:
                    for block in iter(lambda: source.read(4 * MIB), b""):
                        digest.update(block)
                        handle.write(block)
        if digest.hexdigest() != f["sha256"]:
            os.remove(target + ".tmp")
            raise AssetError(f"{f['path']} does not match its SHA-256 after joining its pieces: "
                             "repack and carry again")
        os.replace(target + ".tmp", target)
    return manifest


def download_wheel(requirement: str, directory: str) -> str:
    """``pip download`` one pure-Python wheel (no dependencies) into ``directory``."""
    before = set(os.listdir(directory))
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "-d", directory, requirement], check=True)
    new = sorted(set(os.listdir(directory)) - before)
    if not new:
        raise AssetError(f"pip download {requirement} wrote no wheel")
    return os.path.join(directory, new[0])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the parts (on the CPU machine)")
    p.add_argument("--workdir", default="/tmp/smollm2_cpu",
                   help="benchmarks/smollm2_cpu/run.py's WORKDIR (default /tmp/smollm2_cpu)")
    p.add_argument("--out", default=".gpu_assets", help="a git-ignored folder in the repository")
    p.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB)
    p.add_argument("--wheel", action="append", default=None,
                   help="a wheel to carry (repeatable); default: pip download gguf==<installed>")
    p.add_argument("--no-wheels", action="store_true", help="carry no wheel")
    p.add_argument("--overwrite", action="store_true")
    u = sub.add_parser("unpack", help="join the parts (on the GPU machine)")
    u.add_argument("--assets", default=".gpu_assets")
    u.add_argument("--into", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "unpack":
            manifest = unpack(args.assets, args.into)
            print(f"unpacked {len(manifest['files'])} files into {args.into}")
            return 0
        with tempfile.TemporaryDirectory() as scratch:
            wheels = args.wheel or []
            if not wheels and not args.no_wheels:
                from importlib.metadata import version

                wheels = [download_wheel(f"gguf=={version('gguf')}", scratch)]
            manifest = pack(collect_sources(args.workdir, wheels=wheels), args.out,
                            part_mib=args.part_mib, references=read_references(args.workdir),
                            overwrite=args.overwrite)
    except (AssetError, ValueError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for part, size in sorted(manifest["parts"].items()):
        print(f"{os.path.join(args.out, part)}: {size / MIB:.1f} MiB")
    print(f"pack {manifest['pack_id']}: carry each part in its own device call, one right after "
          "the other (see this file's docstring)")
    print(json.dumps({"out": args.out, "pack_id": manifest["pack_id"], "parts": manifest["parts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
