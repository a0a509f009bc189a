"""Wall time of the serving simulator: ``costmodel.simulate`` on N Poisson requests.

    python benchmarks/bench_simulate.py [--requests 10000] [--model llama-3-8b] [--gpu h100-sxm] [--rps 20]
                                        [--engine eager|vllm]

Prints the setup time (IterationCost coefficients and the KV budget), the simulation time, the
iterations simulated, and the summary's headline figures. Timing claims go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import time

from costmodel.hardware import get_hardware
from costmodel.parallel import Layout
from costmodel.models import get_model
from costmodel.simulate import IterationCost, engine_defaults, kv_budget, poisson_requests, simulate
from costmodel.spec import Workload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--rps", type=float, default=20.0)
    ap.add_argument("--prompt", default="512")
    ap.add_argument("--gen", default="128")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engine", default="eager", help="eager (the default of earlier runs) or vllm")
    a = ap.parse_args()
    spec, hw = get_model(a.model), get_hardware(a.gpu, None)
    reqs = poisson_requests(a.requests, a.rps, a.prompt, a.gen, seed=0)
    sched, util = engine_defaults(a.engine)
    wl = Workload(batch=1, prompt=1, gen=1)
    for run in range(a.runs):
        t0 = time.perf_counter()
        cost = IterationCost.from_model(spec, wl, hw, engine=a.engine)
        budget = kv_budget(spec, wl, hw, Layout(), cost, sched.block_size, util, sched.max_num_batched_tokens,
                           max_num_seqs=sched.max_num_seqs)
        t1, c1 = time.perf_counter(), time.process_time()
        res = simulate(reqs, cost, budget.blocks, sched)
        t2, c2 = time.perf_counter(), time.process_time()
        s = res.summary()
        print(f"{a.engine} run {run + 1}: setup {t1 - t0:.3f} s, simulate {t2 - t1:.2f} s (CPU {c2 - c1:.2f} s) for {a.requests} requests, "
              f"{res.iterations} iterations ({(t2 - t1) / res.iterations * 1e6:.0f} us each); "
              f"p99 TTFT {s['ttft_s']['p99'] * 1e3:.1f} ms, p99 TPOT {s['tpot_s']['p99'] * 1e3:.2f} ms, "
              f"{s['output_tokens_per_s']:.0f} output tokens/s, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
