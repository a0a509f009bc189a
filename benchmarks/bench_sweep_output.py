"""Whole-process CPU time of `costmodel sweep` writing the same 1 M-row grid as CSV and as Parquet
(issue 15's target: CSV at most 1.5x Parquet).

Run by hand: .venv/bin/python benchmarks/bench_sweep_output.py [--runs 3] [--code DIR ...]
Each run is a fresh process (``costmodel sweep llama-2-7b --batch 1:500 --prompt 64:64000:+64
--gen 128 --out FILE``: 500 x 1000 configurations x 2 phases = 1,000,000 rows); the formats are
interleaved run by run, so that a change in the machine's load hits both alike. The time is the
child's user + system CPU seconds (``resource.getrusage(RUSAGE_CHILDREN)``), which a busy shared
machine inflates far less than wall time; the wall time and the 1-minute load average are printed
beside it. ``--code DIR`` times another checkout (e.g. the code before issue 15) the same way.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

GRID = ["llama-2-7b", "--batch", "1:500", "--prompt", "64:64000:+64", "--gen", "128"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(code: str, fmt: str, out: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from reports.cli import main; main()", "sweep", *GRID,
                    "--format", fmt, "--out", out], env={**os.environ, "PYTHONPATH": code}, cwd=code, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--code", nargs="*", default=[ROOT])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for code in args.code:
            cpu = {"csv": [], "parquet": []}
            wall = {"csv": [], "parquet": []}
            loads = []
            for _ in range(args.runs):
                for fmt in ("csv", "parquet"):
                    loads.append(os.getloadavg()[0])
                    c, w = one(code, fmt, os.path.join(tmp, f"rows.{fmt}"))
                    cpu[fmt].append(c)
                    wall[fmt].append(w)
            size = {f: os.path.getsize(os.path.join(tmp, f"rows.{f}")) for f in cpu}
            print(f"code {code}: {args.runs} runs each, load {min(loads):.1f}-{max(loads):.1f}")
            for fmt in cpu:
                print(f"  {fmt:8s} CPU median {statistics.median(cpu[fmt]):.2f} s (runs "
                      f"{', '.join(f'{x:.2f}' for x in cpu[fmt])}), wall median {statistics.median(wall[fmt]):.2f} s, "
                      f"{size[fmt] / 1e6:.1f} MB")
            print(f"  CSV / Parquet CPU ratio: {statistics.median(cpu['csv']) / statistics.median(cpu['parquet']):.2f}")


if __name__ == "__main__":
    main()
