"""What ``focus pull`` costs on this machine, without the Hub: wall time and peak memory.

    python benchmarks/pull.py [--sizes large] [--work DIR] [--threads 2]

For each size: a released-layout checkpoint (our network's random initialisation in the
reference's names and shapes, tests/hub_testing.py; 2.1 GB for large) is laid into an offline
Hugging Face cache, and ``focus pull camouflage --size SIZE`` runs as a subprocess with
``HF_HUB_OFFLINE=1``: resolve, verify (sha256 of the whole file), strict import, ONNX export with
its parity check, publish. Prints the step times the pull reported, its wall time and its peak
resident memory (the child's ``ru_maxrss``), the CPU, and the load average before and after.
The download itself is not measured (our machines cannot reach the Hub).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hub_testing import lay_out_cache, official_checkpoint, pull_env  # noqa: E402
from machine import cpu_model  # noqa: E402

from models.zoo import SERVED_BYTES, release  # noqa: E402


def run(size: str, work: Path, threads: int) -> dict[str, object]:
    source = release("camouflage", size)
    pth = official_checkpoint(work / source.filename, size, seed=0)
    lay_out_cache(work / "hf" / "hub", source.repo_id, source.filename, pth)
    env = pull_env(work / "hf", HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "focus_cli", "pull", "camouflage", "--size", size,
         "--repository", str(work / "repo")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        raise SystemExit(f"focus pull failed:\n{result.stdout}\n{result.stderr}")
    steps = dict(re.findall(r"^\[\s*\w+\] (\w+)\s+([\d.]+) s", result.stdout, re.MULTILINE))
    return {
        "size": size,
        "file_gb": pth.stat().st_size / 1e9,
        "wall_s": wall,
        "peak_gb": max(peak_kib, before) * 1024 / 1e9,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["large"], choices=["large", "giant"])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load before: {os.getloadavg()}")
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.work) as scratch:
            rows.append(run(size, Path(scratch), args.threads))
    print("| size | checkpoint | resolve | verify | import | onnx + parity | wall | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["steps"]
        print(
            f"| {r['size']} | {r['file_gb']:.2f} GB | {s.get('resolve')} s | {s.get('verify')} s "
            f"| {s.get('import')} s | {s.get('onnx')} s | {r['wall_s']:.0f} s | "
            f"{r['peak_gb']:.1f} GB |"
        )
    print(f"load after: {os.getloadavg()}")
    last = rows[-1]
    served = SERVED_BYTES[str(last["size"])] / 1e9
    print(f"peak RSS / served fp32 weights ({last['size']}): {last['peak_gb'] / served:.1f}x")


if __name__ == "__main__":
    main()
