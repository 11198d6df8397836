"""Shared by the benchmark scripts: run a tool as its own process and read its JSON summary."""
import json
import os
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def benchmark_env(threads: int = 2) -> dict:
    """The environment every tool of a benchmark runs in: fixed threads, offline HF, this
    checkout first on the path."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))


def run_json(cmd, log_path: str, env) -> dict:
    """Run ``cmd`` from the repository root; return the JSON object on its last stdout line
    starting with ``{`` plus ``wall_s``. stderr (and then stdout) go to ``log_path``; a failure
    exits with the log's tail."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=log, text=True)
    wall = time.perf_counter() - start
    with open(log_path, "a") as log:
        log.write(proc.stdout)
    if proc.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-4000:]
        raise SystemExit(f"failed (rc {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return {**(json.loads(lines[-1]) if lines else {}), "wall_s": round(wall, 1)}


def results_table(rows, linears: int = 210) -> str:
    """The benchmarks' results table (BENCHMARK.md's layout): method, EVAL PPL, where it was
    measured (only when a row says), exact 2:4, wall time, training tokens. ``linears``: the
    model's decoder linears, all masked (SmolLM2-135M's 210 by default)."""
    where = any("where" in row for row in rows)
    head = [f"method (2:4, all {linears} decoder linears)", "EVAL PPL"] + (["measured"] if where else [])
    head += ["exact 2:4", "wall time s", "training tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], f"{row['ppl']:.2f}"] + ([row.get("where", "-")] if where else [])
        cells += ["-" if row.get("exact") is None else ("yes" if row["exact"] else "NO"),
                  f"{row['wall_s']:.0f}" if row.get("wall_s") is not None else "-",
                  f"{row.get('tokens') or 0:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
