"""Small helpers shared by the benchmark scripts: timing, percentiles, peak memory, environment line."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import corpus` from any working directory
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def ms(seconds) -> np.ndarray:
    return np.asarray(seconds, dtype=np.float64) * 1e3


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> str:
    import faiss

    return (f"python {platform.python_version()}, faiss {faiss.__version__}, {os.cpu_count()} CPUs, "
            f"faiss omp threads {faiss.omp_get_max_threads()}, {platform.machine()}")


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def in_fresh_process(script: str, args: list[str]) -> dict:
    """Run `script --child ARGS` in a new interpreter; the last line it prints is its JSON result."""
    proc = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "args": args}
    return json.loads(proc.stdout.strip().splitlines()[-1])
