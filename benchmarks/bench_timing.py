"""Issue 14's benchmark: calibrate with each model's op table, then validate --timing on that model.

    PYTHONPATH=. python benchmarks/bench_timing.py [--models M ...] [--repeat N] [--out DIR]

For each model (default: the built-in timing-llama-21m the tables were developed against, and the
GPT-2-style and LLaMA-style configs in benchmarks/models/, which they were not): one
``costmodel calibrate --model M --out DIR/M.json`` (timed: the issue asks for <= 2 min), then
``costmodel validate --timing --hardware DIR/M.json --model M --format json`` (the cases are
never grid points). Prints, per model, the calibration's wall time and the median / p90 absolute
error of the op table, of the generic curves (where the profile has them) and of the roofline,
beside the run-to-run floor and the machine's load. About 3 minutes a model on a quiet 2-core
machine, more under load. Both commands run at one thread on the per-thread CPU clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("timing-llama-21m", os.path.join(HERE, "models", "bench-gpt2-18m.json"),
          os.path.join(HERE, "models", "bench-llama-gqa-32m.json"))


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from reports.cli import main; main()", *args],
                          capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="Keep the profiles and validation JSON here.")
    ap.add_argument("--max-load", default="0", help="Passed to both commands (default 0: time anyway).")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="bench_timing_")
    os.makedirs(out, exist_ok=True)
    rows = []
    for m in a.models:
        name = os.path.splitext(os.path.basename(m))[0]
        prof = os.path.join(out, f"{name}.json")
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        r = _cli("calibrate", "--dtype", "fp32", "--model", m, "--max-load", a.max_load, "--out", prof)
        cal_s = time.perf_counter() - t0
        if r.returncode:
            print(f"{name}: calibrate failed: {r.stderr.strip() or r.stdout.strip()}", file=sys.stderr)
            continue
        r = _cli("validate", "--timing", "--hardware", prof, "--model", m, "--max-error", "1e9",
                 "--max-load", a.max_load, "--repeat", str(a.repeat), "--format", "json")
        if r.returncode:
            print(f"{name}: validate failed: {r.stderr.strip()}", file=sys.stderr)
            continue
        with open(os.path.join(out, f"{name}-validate.json"), "w", encoding="utf-8") as f:
            f.write(r.stdout)
        d = json.loads(r.stdout)
        s, load = d["summary"], d["measurement"]["load"]
        with open(prof, encoding="utf-8") as f:
            table_s = json.load(f)["calibration"]["op_tables"][0]["seconds_taken"]
        rows.append((name, cal_s, table_s, s, load0, load))
        print(f"{name}: calibrate {cal_s:.0f} s (op table {table_s:.0f} s); op table median "
              f"{s['median_abs_error_pct']:.1f} % p90 {s['p90_abs_error_pct']:.1f} %; curves "
              f"{_pct(s.get('curves_median_abs_error_pct'))} / {_pct(s.get('curves_p90_abs_error_pct'))}; "
              f"roofline {_pct(s.get('roofline_median_abs_error_pct'))} / {_pct(s.get('roofline_p90_abs_error_pct'))}; "
              f"floor median {s['floor_median_pct']:.1f} % p90 {s['floor_p90_pct']:.1f} %; load "
              f"{load0:.2f} at start, {load['loadavg_1m_start']:.2f} -> {load['loadavg_1m_end']:.2f} in validation",
              flush=True)
    print(f"\nprofiles and validation JSON in {out}")
    print("| model | calibrate (op table) | table median / p90 | curves median / p90 | roofline median / p90 "
          "| floor median / p90 | load 1 min |")
    print("|---|---|---|---|---|---|---|")
    for name, cal_s, table_s, s, load0, load in rows:
        print(f"| {name} | {cal_s:.0f} s ({table_s:.0f} s) | {s['median_abs_error_pct']:.1f} / "
              f"{s['p90_abs_error_pct']:.1f} % | {_pct(s.get('curves_median_abs_error_pct'))} / "
              f"{_pct(s.get('curves_p90_abs_error_pct'))} | {_pct(s.get('roofline_median_abs_error_pct'))} / "
              f"{_pct(s.get('roofline_p90_abs_error_pct'))} | {s['floor_median_pct']:.1f} / {s['floor_p90_pct']:.1f} % "
              f"| {load0:.1f}-{load['loadavg_1m_end']:.1f} |")


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f} %"


if __name__ == "__main__":
    main()
