"""Predict published real-GPU measurements of LLM inference with ``costmodel.plan`` (run by hand).

Reads ``benchmarks/published_measurements.json`` (TTFT, TPOT, end-to-end latency and throughput of
real GPUs, each with its configuration and quoted source), predicts each figure with
:func:`costmodel.plan.capacity_plan` from the catalog alone (no parameter is fitted to these
measurements), and prints measured, predicted and the error per row, then the median and p90 of the
absolute errors, overall and per GPU and per quantity.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_published.py            # table
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_published.py --json     # JSON
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_published.py --engine eager

How each quantity maps onto the plan (the file's ``mapping`` field says the same per entry):

- ``ttft_s``: ``plan.timing.ttft_s`` at the entry's batch, prompt and gen (the prefill pass of
  ``batch`` prompts). TensorRT-LLM's "1st token latency" was benchmarked with one output token, so
  those entries have gen = 1.
- ``tpot_s``: ``plan.timing.tpot_mean_s``, the mean over the gen - 1 decode steps (the sources'
  "ITL" / "TPOT" excludes the first token, as this does).
- ``e2e_s``: ``plan.timing.e2e_s`` (prefill + gen - 1 decode steps of one static batch):
  vLLM's ``benchmark_latency`` and a single request end to end.
- ``output_tokens_per_s``: ``plan.timing.tokens_per_s`` = batch x gen / e2e_s (static batching:
  TensorRT-LLM's ``gptSessionBenchmark`` times one batch through prefill and decode).
- ``output_tokens_per_s_per_gpu``: the same divided by tp x pp.
- Concurrency 1 (one request in flight) is batch 1. The plan is evaluated at exactly the published
  batch (``batch=`` given), so a batch that does not fit the plan's memory model is still timed (its
  warning is kept in the row).

Engine: when ``capacity_plan`` accepts ``engine=`` (the engine profiles of issue 13), the script
passes ``--engine`` (default ``vllm``, the serving-engine profile; TensorRT-LLM and NIM rows are
predicted with it too, as the closest profile) and records it; without that keyword it records
``eager (capacity_plan has no engine keyword)``, today's model.

Error: (predicted - measured) / measured; the summary takes its absolute value. Torch-free; the
whole run takes well under a second per entry.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path

from costmodel.errors import SpecError
from costmodel.hardware import get_hardware
from costmodel.models import get_model
from costmodel.plan import capacity_plan

DATA = Path(__file__).with_name("published_measurements.json")
QUANTITIES = ("ttft_s", "tpot_s", "e2e_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu")


def load(path: Path = DATA) -> list[dict]:
    return json.loads(path.read_text())["measurements"]


def engine_keyword() -> bool:
    return "engine" in inspect.signature(capacity_plan).parameters


def predict(m: dict, engine: str | None) -> tuple[float | None, list[str]]:
    """The plan's figure for measurement ``m`` and the plan's warnings."""
    spec, hw = get_model(m["preset"]), get_hardware(m["hardware"])
    kw = dict(prompt=m["prompt"], gen=m["gen"], batch=m["batch"], tp=m["tp"], pp=m["pp"],
              weight_dtype=m["weight_dtype"], act_dtype=m["act_dtype"], kv_dtype=m["kv_dtype"])
    if engine is not None:
        kw["engine"] = engine
    plan = capacity_plan(spec, hw, **kw)
    t = plan.timing
    q = m["quantity"]
    if t is None:
        return None, list(plan.warnings)
    if q == "ttft_s":
        v = t.ttft_s
    elif q == "tpot_s":
        v = t.tpot_mean_s
    elif q == "e2e_s":
        v = t.e2e_s
    elif q == "output_tokens_per_s":
        v = t.tokens_per_s
    elif q == "output_tokens_per_s_per_gpu":
        v = t.tokens_per_s / (m["tp"] * m["pp"])
    else:
        raise ValueError(f"unknown quantity {q!r}; allowed: {', '.join(QUANTITIES)}")
    return v, list(plan.warnings)


def percentile(xs: list[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default 'linear' method) of a non-empty list."""
    s = sorted(xs)
    k = (len(s) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(rows: list[dict]) -> dict:
    errs = [abs(r["error"]) for r in rows if r["error"] is not None]
    if not errs:
        return {"n": 0, "median_abs_error": None, "p90_abs_error": None, "mean_signed_error": None}
    signed = [r["error"] for r in rows if r["error"] is not None]
    return {"n": len(errs), "median_abs_error": percentile(errs, 0.5), "p90_abs_error": percentile(errs, 0.9),
            "mean_signed_error": sum(signed) / len(signed)}


def run(engine_name: str) -> dict:
    accepts = engine_keyword()
    engine = engine_name if accepts else None
    used = engine_name if accepts else "eager (capacity_plan has no engine keyword)"
    rows = []
    t0 = time.perf_counter()
    for m in load():
        try:
            pred, warnings = predict(m, engine)
        except SpecError as e:  # a configuration the model refuses: reported, left out of the summary
            pred, warnings = None, [f"refused: {e}"]
        err = None if pred is None else (pred - m["value"]) / m["value"]
        rows.append({"id": m["id"], "quantity": m["quantity"], "hardware": m["hardware"], "preset": m["preset"],
                     "tp": m["tp"], "batch": m["batch"], "prompt": m["prompt"], "gen": m["gen"],
                     "source_engine": m["engine"], "measured": m["value"], "predicted": pred, "error": err,
                     "warnings": warnings})
    groups = {}
    for key in ("hardware", "quantity", "source_engine"):
        groups[key] = {v: summary([r for r in rows if r[key] == v]) for v in sorted({r[key] for r in rows})}
    return {"engine": used, "engine_keyword": accepts, "rows": rows, "summary": summary(rows),
            "summary_a100_h100": summary([r for r in rows if r["hardware"].startswith(("a100", "h100"))]),
            "by": groups, "seconds": time.perf_counter() - t0}


def _fmt(q: str, v: float | None) -> str:
    if v is None:
        return "-"
    if q in ("ttft_s", "tpot_s", "e2e_s"):
        return f"{v * 1e3:,.2f} ms"
    return f"{v:,.0f} tok/s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f} %"


def print_table(res: dict) -> None:
    print(f"engine: {res['engine']}")
    print(f"{'id':<48} {'quantity':<28} {'measured':>14} {'predicted':>14} {'error':>9}")
    for r in res["rows"]:
        flag = ("  (" + r["warnings"][0] + ")" if r["predicted"] is None and r["warnings"]
                else "  (does not fit)" if r["warnings"] else "")
        print(f"{r['id']:<48} {r['quantity']:<28} {_fmt(r['quantity'], r['measured']):>14} "
              f"{_fmt(r['quantity'], r['predicted']):>14} {_pct(r['error']):>9}{flag}")

    def line(name, s):
        if not s["n"]:
            return f"{name}: none"
        return (f"{name}: n={s['n']}  median |error| {s['median_abs_error'] * 100:.1f} %  "
                f"p90 |error| {s['p90_abs_error'] * 100:.1f} %  mean signed {s['mean_signed_error'] * 100:+.1f} %")

    print()
    print(line("all", res["summary"]))
    print(line("A100 + H100 only", res["summary_a100_h100"]))
    for key, g in res["by"].items():
        for v, s in g.items():
            print("  " + line(f"{key}={v}", s))
    print(f"({res['seconds']:.2f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the rows and summaries as JSON")
    ap.add_argument("--engine", default="vllm",
                    help="engine profile passed to capacity_plan when it accepts engine= (default: vllm)")
    args = ap.parse_args(argv)
    res = run(args.engine)
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
