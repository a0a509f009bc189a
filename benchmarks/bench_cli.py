"""Whole-process time of the analytic CLI and of `import costmodel` (run by hand).

    .venv/bin/python benchmarks/bench_cli.py [--runs 20] [--against OTHER/bin/costmodel]

Each command runs as a fresh process, as a user runs it; the median and spread of --runs are
printed, plus which heavy modules `import costmodel` pulled in (must be none). With --against, the
CLI commands only, this venv's `costmodel` and the other one taking turns (old/new interleaved),
and the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)


def costmodel_cmd() -> list[str]:
    exe = os.path.join(BIN, "costmodel")
    return [exe] if os.path.exists(exe) else [shutil.which("costmodel") or "costmodel"]


def time_process(cmd: list[str], runs: int, warm: bool = True) -> list[float]:
    if warm:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # warm the file cache
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def compare(other: str, runs: int) -> None:
    """This venv's CLI against ``other``'s, run by run in turn, so that load changes hit both."""
    mine = costmodel_cmd()
    print(f"load average before: {os.getloadavg()[0]:.2f}; {runs} interleaved runs each")
    print(f"A: {other}\nB: {mine[0]}")
    print(f"{'command':32s} {'A: median [min-max]':>24s} {'B: median [min-max]':>24s}")
    for args in (["--help"], ["report", "llama-2-70b"]):
        times = {other: [], mine[0]: []}
        for exe in times:
            subprocess.run([exe, *args], check=True, stdout=subprocess.DEVNULL)  # warm the file cache
        for _ in range(runs):
            for exe in times:
                times[exe] += time_process([exe, *args], 1, warm=False)
        cells = [f"{statistics.median(t) * 1e3:.1f} ms [{min(t) * 1e3:.0f}-{max(t) * 1e3:.0f}]"
                 for t in times.values()]
        print(f"{'costmodel ' + ' '.join(args):32s} {cells[0]:>24s} {cells[1]:>24s}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--against", metavar="EXE", default=None,
                    help="Another install's costmodel script: compare the two, interleaved.")
    args = ap.parse_args()
    if args.against:
        return compare(args.against, args.runs)
    cases = {
        "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
        "python -c 'import costmodel'": [sys.executable, "-c", "import costmodel"],
        "costmodel --help": costmodel_cmd() + ["--help"],
        "costmodel report llama-2-70b": costmodel_cmd() + ["report", "llama-2-70b"],
        "costmodel report llama-2-70b --format json": costmodel_cmd() + ["report", "llama-2-70b", "--format", "json"],
    }
    print(f"{'command':48s} {'median':>9s} {'min':>9s} {'max':>9s}   ({args.runs} runs each)")
    for name, cmd in cases.items():
        t = time_process(cmd, args.runs)
        print(f"{name:48s} {statistics.median(t) * 1e3:7.1f}ms {min(t) * 1e3:7.1f}ms {max(t) * 1e3:7.1f}ms")
    probe = ("import sys, costmodel; heavy = [m for m in ('torch', 'matplotlib', 'pandas', 'numpy') "
             "if m in sys.modules]; print(heavy)")
    heavy = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    print(f"heavy modules imported by 'import costmodel': {heavy}")


if __name__ == "__main__":
    main()
