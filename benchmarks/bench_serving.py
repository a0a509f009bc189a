"""The reference server against the simulator: measured vs simulated TTFT and TPOT percentiles.

    python benchmarks/bench_serving.py [--model tiny-llama] [--requests 200] [--load 0.5] [--seed 0]

1. ``profiler.serving.calibrate_steps`` times the server's own step over a grid of mixes and fits
   the simulator's per-step terms (the model's calibrated profile);
2. the capacity: ``simulate()`` on the calibrated cost with every request arriving at 0 (requests
   / duration); the Poisson rate is ``--load`` x that;
3. ``profiler.serving.serve`` runs the requests in real time on one torch thread;
4. the profile is calibrated again after the run (this machine's speed drifts by up to 2x over
   seconds: 2 cores shared); ``simulate()`` runs the same requests, kv_blocks and scheduler on the
   mean of the two profiles, and on that profile scaled by one figure, the median ratio of the run's
   measured iterations to it (the drift-corrected column: the scheduler and queueing, with the
   machine's speed during the run).

Prints both p50/p99 TTFT and TPOT and the differences (simulated / measured - 1). Target (issue 16):
within 10 % at p50 and 20 % at p99. Figures go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from costmodel.models import get_model
from costmodel.simulate import Lengths, SchedulerConfig, poisson_requests, simulate
from profiler.serving import StepTimeModel, calibrate_steps, serve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--load", type=float, default=0.5, help="the Poisson rate as a fraction of capacity")
    ap.add_argument("--prompt", default="48:80", help="uniform prompt lengths LO:HI")
    ap.add_argument("--gen", default="16:32", help="uniform output lengths LO:HI")
    ap.add_argument("--kv-blocks", type=int, default=128)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--max-num-batched-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    spec = get_model(a.model)
    sched = SchedulerConfig(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                            block_size=16)
    lo, hi = (int(x) for x in a.prompt.split(":"))
    glo, ghi = (int(x) for x in a.gen.split(":"))
    t = time.perf_counter()
    cost = calibrate_steps(spec, seed=a.seed, block_size=sched.block_size)
    print(f"calibrated in {time.perf_counter() - t:.1f} s: "
          + ", ".join(f"{k} {v:.3g}" for k, v in cost.coefficients.items()))
    worst = max(abs(f / m - 1) for *_, m, f in cost.samples)
    print(f"  fit over {len(cost.samples)} mixes: worst |fitted / measured - 1| {100 * worst:.1f} %")
    shape = poisson_requests(a.requests, 1.0, Lengths("uniform", lo, hi), Lengths("uniform", glo, ghi), a.seed)
    burst = simulate([replace(q, arrival_s=0.0) for q in shape], cost, a.kv_blocks, sched)
    capacity = len(shape) / burst.duration_s
    rps = a.load * capacity
    reqs = [replace(q, arrival_s=q.arrival_s / rps) for q in shape]  # the rate-1 arrivals scaled to rps
    print(f"capacity (simulated, all at once) {capacity:.1f} requests/s; Poisson rate {rps:.1f}/s, "
          f"{len(reqs)} requests, prompt uniform {lo}..{hi}, output uniform {glo}..{ghi}; "
          f"kv_blocks {a.kv_blocks} x {sched.block_size}, {sched.to_dict()}")
    t = time.perf_counter()
    steps = []
    measured = serve(spec, reqs, kv_blocks=a.kv_blocks, scheduler=sched, seed=a.seed, threads=1, steps_out=steps)
    print(f"served in {time.perf_counter() - t:.1f} s")
    # the machine's speed drifts (2 shared cores): calibrate again after the run, use the mean profile
    after = calibrate_steps(spec, seed=a.seed, block_size=sched.block_size)
    mean = StepTimeModel({k: (v + after.coefficients[k]) / 2 for k, v in cost.coefficients.items()})
    for name, c in (("before", cost), ("after", after), ("mean", mean)):
        drift = statistics.median(it / c.seconds(p, d) for p, d, _, it in steps)
        print(f"profile {name:6}: the run's iterations took {drift:.3f} x its fit (median)")
    # the drift-corrected profile: the mean one scaled by that one figure from the run's own iterations
    drift = statistics.median(it / mean.seconds(p, d) for p, d, _, it in steps)
    fixed = StepTimeModel({k: v * drift for k, v in mean.coefficients.items()})
    sims = {"sim (mean profile)": simulate(reqs, mean, a.kv_blocks, sched),
            "sim (drift-corrected)": simulate(reqs, fixed, a.kv_blocks, sched)}
    m = measured.summary()
    ss = {k: v.summary() for k, v in sims.items()}
    print(f"{'':10} {'measured':>10} " + " ".join(f"{k:>30}" for k in ss))
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        for p in ("p50", "p99"):
            mv = m[key][p]
            cells = " ".join(f"{1e3 * s[key][p]:12.2f} ms ({100 * (s[key][p] / mv - 1):+6.1f} %)      " for s in ss.values())
            print(f"{key[:-2]:4} {p:4} {1e3 * mv:8.2f} ms {cells}")
    for key in ("finished", "iterations", "preemptions", "duration_s", "output_tokens_per_s", "busy_s"):
        print(f"{key:20} measured {m[key]:10.4g}   " + "   ".join(f"{s[key]:10.4g}" for s in ss.values()))


if __name__ == "__main__":
    main()
