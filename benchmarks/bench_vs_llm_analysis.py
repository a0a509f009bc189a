"""Sweep throughput against llm-analysis computing the same configurations (run by hand).

llm-analysis is NOT a dependency: install it in a separate environment and point --llma-python at it:

    python3 -m venv /tmp/llmaenv && /tmp/llmaenv/bin/pip install llm-analysis
    .venv/bin/python benchmarks/bench_vs_llm_analysis.py --llma-python /tmp/llmaenv/bin/python

Both tools get the same grid for Llama-2-7B on an A100-SXM-80GB in fp16 (batch x prompt x new
tokens, KV cache on). costmodel computes the grid with `reports.sweep.sweep` (exact counts and roofline
seconds, one tidy row per phase); llm-analysis calls `LLMAnalysis.inference` once per configuration,
its only interface. Figures: configurations per second, wall time, and how the two tools' prefill
FLOPs compare (their conventions differ: see the printed note), plus costmodel's exactness against
`analyze` one configuration at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time

LLMA_SCRIPT = textwrap.dedent("""
    import json, logging, sys, time
    logging.disable(logging.CRITICAL)
    from llm_analysis.analysis import LLMAnalysis
    from llm_analysis.config import get_model_config_by_name, get_gpu_config_by_name, get_dtype_config_by_name
    batches, prompts, gens = json.loads(sys.argv[1])
    m = get_model_config_by_name("NousResearch_Llama-2-7b-hf")
    g = get_gpu_config_by_name("a100-sxm-80gb")
    d = get_dtype_config_by_name("w16a16e16")
    t0 = time.perf_counter()
    out = []
    for b in batches:
        for s in prompts:
            for gen in gens:
                a = LLMAnalysis(m, g, d, flops_efficiency=0.7, hbm_memory_efficiency=0.8)
                r = a.inference(batch_size_per_gpu=b, seq_len=s, num_tokens_to_generate=gen)
                out.append([b, s, r["prefill_latency"], r["total_decode_latency"],
                            a.get_num_flops_fwd_total(b, s)])
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows": out}))
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llma-python", default="/tmp/llmaenv/bin/python")
    # llm-analysis raises an AssertionError when a configuration does not fit in memory, so the
    # grid stays where every configuration fits on one 80 GB GPU (costmodel answers fits=False).
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--prompts", default=",".join(str(s) for s in range(64, 4033, 64)))
    ap.add_argument("--gens", default="16,32,64")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    prompts = [int(x) for x in args.prompts.split(",")]
    gens = [int(x) for x in args.gens.split(",")]
    configs = len(batches) * len(prompts) * len(gens)

    from costmodel import Workload, analyze, get_hardware, get_model
    from reports.sweep import sweep

    spec, hw = get_model("llama-2-7b"), get_hardware("a100-sxm-80gb")
    wl = Workload(weight_dtype="fp16", act_dtype="fp16")
    sweep(spec, wl, batches, prompts, gens, hardware=hw)  # warm-up (imports, caches)
    ours = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        df = sweep(spec, wl, batches, prompts, gens, hardware=hw)
        ours.append(time.perf_counter() - t0)
    theirs = []
    llma = None
    for _ in range(args.runs):
        p = subprocess.run([args.llma_python, "-c", LLMA_SCRIPT, json.dumps([batches, prompts, gens])],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"llm-analysis failed: {p.stderr.strip().splitlines()[-1]}")
        llma = json.loads(p.stdout.strip().splitlines()[-1])
        theirs.append(llma["seconds"])
    mismatches = 0
    for r in df.itertuples():
        a = analyze(spec, Workload(batch=r.batch, prompt=r.prompt, gen=r.gen, weight_dtype="fp16", act_dtype="fp16"))
        mismatches += a.phases[r.phase].flops != r.flops or a.phases[r.phase].bytes != r.bytes
    best_ours, best_theirs = min(ours), min(theirs)
    print(f"grid: llama-2-7b, fp16, {len(batches)} batches x {len(prompts)} prompts x {len(gens)} gens = {configs} configs")
    print(f"costmodel sweep (with roofline seconds): {best_ours * 1e3:.1f} ms best of {args.runs}, "
          f"{configs / best_ours:,.0f} configs/s ({len(df) / best_ours:,.0f} rows/s, {len(df)} rows)")
    print(f"llm-analysis inference() per config:     {best_theirs * 1e3:.1f} ms best of {args.runs}, "
          f"{configs / best_theirs:,.0f} configs/s")
    print(f"speed-up: {best_theirs / best_ours:.0f}x")
    print(f"costmodel rows equal to analyze() one at a time: {len(df) - mismatches} of {len(df)}")
    pre = df[(df.phase == "prefill") & (df.gen == gens[0])].set_index(["batch", "prompt"])
    ratios = [pre.loc[(b, s), "matmul_flops"] / f for b, s, _, _, f in llma["rows"]]
    print(f"prefill FLOPs, costmodel matmul_flops / llm-analysis get_num_flops_fwd_total: "
          f"{min(ratios):.3f} .. {max(ratios):.3f} (llm-analysis counts the forward over every position "
          f"with the LM head and its own attention convention; costmodel's prefill takes the LM head at the "
          f"last position)")


if __name__ == "__main__":
    sys.exit(main())
