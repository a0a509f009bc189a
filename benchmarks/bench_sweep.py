"""Sweep throughput and exactness: (config x phase) rows per second of `reports.sweep.sweep`, and a
random sample of its rows checked against `analyze` one configuration at a time.

Run by hand: .venv/bin/python benchmarks/bench_sweep.py [--runs 5] [--sample 300]
Prints a Markdown table for benchmarks/README.md. Timing covers building the DataFrame (the float64
shadow bound, the exact integer computation, the frame), not writing it out.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from costmodel import Workload, analyze, get_model, kv_cache_bytes  # noqa: E402
from costmodel.hardware import get_hardware  # noqa: E402
from costmodel.spec import decoder_start  # noqa: E402
from reports.sweep import parse_range, sweep  # noqa: E402

GRIDS = [
    # (label, model, batch, prompt, gen, workload, with seconds)
    ("gen-heavy: 512 batches x 64 prompts x 16 gens", "llama-2-7b", "1:512", "64:4096:+64", "1:32768:x2",
     Workload(), False),
    ("batch x prompt heavy: 1024 x 512 x 1 gen", "llama-2-7b", "1:1024", "64:32768:+64", "128",
     Workload(), False),
    ("same, no KV cache (quadratic decode)", "llama-2-7b", "1:1024", "64:32768:+64", "128",
     Workload(kv_cache=False), False),
    ("gen-heavy + roofline seconds (h100-sxm)", "llama-2-7b", "1:512", "64:4096:+64", "1:32768:x2",
     Workload(), True),
    ("past int64: llama-2-70b to batch 4096, prompt 1M (Python ints)", "llama-2-70b", "1:4096:x2",
     "1024:1048576:x2", "1:16384:x2", Workload(), False),
    ("encoder-decoder t5-small: 512 x 512 x 2 gens (3 phases)", "t5-small", "1:512", "64:32768:+64", "1,128",
     Workload(), False),
    ("encoder-only bert-base: 1024 x 1024 (1 phase)", "bert-base", "1:1024", "32:32768:+32", "1",
     Workload(), False),
]


def check_rows(spec, wl, df, n, rng) -> tuple[int, int]:
    """(rows checked, mismatches) for ``n`` random rows against analyze."""
    idx = rng.sample(range(len(df)), min(n, len(df)))
    bad = 0
    for i in idx:
        r = df.iloc[i]
        a = analyze(spec, replace(wl, batch=int(r["batch"]), prompt=int(r["prompt"]), gen=int(r["gen"])))
        ph, m = a.phases[r["phase"]], a.memory
        if r["phase"] == "decode":
            kv = m.kv_cache_bytes
        elif r["phase"] == "prefill":
            start = decoder_start(spec, a.workload)
            kv = kv_cache_bytes(spec, a.workload, positions=start) + m.cross_kv_cache_bytes
        else:
            kv = 0
        got = (int(r["flops"]), int(r["matmul_flops"]), int(r["bytes"]), int(r["kv_cache_bytes"]),
               int(r["weights_bytes"]), int(r["activation_peak_bytes"]))
        exp = (ph.flops, ph.matmul_flops, ph.bytes, kv, m.weights_bytes, m.activation_peak_bytes)
        bad += got != exp
    return len(idx), bad


def analyze_loop_rate(spec, wl, configs) -> float:
    t = time.perf_counter()
    for b, p, g in configs:
        analyze(spec, replace(wl, batch=b, prompt=p, gen=g))
    return 2 * len(configs) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sample", type=int, default=300, help="rows per grid checked against analyze")
    ap.add_argument("--only", default="", help="run only the grids whose label contains this text")
    args = ap.parse_args()
    rng = random.Random(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}; "
          f"Python {platform.python_version()}, numpy {np.__version__}; runs {args.runs} (after 1 warm-up)\n")
    print("| grid | rows | arithmetic | median s | rows/s (median) | rows/s (best) | rows checked vs analyze | mismatches |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    only = [g for g in GRIDS if args.only and args.only in g[0]] or GRIDS
    for label, model, b, p, g, wl, seconds in only:
        spec = get_model(model)
        hw = get_hardware("h100-sxm") if seconds else None
        grid = [parse_range(x) for x in (b, p, g)]
        df = sweep(spec, wl, *grid, hardware=hw)  # warm-up
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            df = sweep(spec, wl, *grid, hardware=hw)
            times.append(time.perf_counter() - t)
        checked, bad = check_rows(spec, wl, df, args.sample, rng)
        med = statistics.median(times)
        print(f"| {label} | {len(df):,} | {df.attrs['arithmetic']} | {med:.3f} | {len(df) / med:,.0f} | "
              f"{len(df) / min(times):,.0f} | {checked} | {bad} |")
    spec = get_model("llama-2-7b")
    configs = [(rng.randint(1, 512), rng.randint(64, 4096), rng.choice([1, 128, 1024])) for _ in range(300)]
    print(f"\nbaseline, a Python loop of full `analyze` calls (llama-2-7b, 300 configs): "
          f"{analyze_loop_rate(spec, Workload(), configs):,.0f} rows/s")


if __name__ == "__main__":
    main()
