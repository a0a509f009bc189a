"""How steady is this machine? The same passes timed again and again in one process.

    PYTHONPATH=. python benchmarks/bench_timing_drift.py [--seconds 150] [--repeat 3]

The floor that ``validate --timing`` prints beside its errors is the spread of a case's repeats
timed back to back (a few hundred milliseconds). A prediction made from a table calibrated minutes
earlier is held to a wider one: how much the machine's speed moves over minutes. This script times
four passes of the built-in timing model (prefill 1 x 384 and 4 x 256, decode batch 2 over 24 keys
and batch 32 over 128: two op-table grid points and two cases) round after round for ``--seconds``,
each the median of ``--repeat`` passes after a warm-up, on the clock ``calibrate`` and ``validate``
use (1 thread, per-thread CPU time), and prints every round and, per pass, the standard deviation
of log(time) over the rounds and the range (max / min - 1). The first round is left out (cold).
If the standard deviation is above a few percent, no op table can be shown to predict within 5 %
on this machine at this time: the calibration and the validation see different machines.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

CASES = (("prefill", 1, 384), ("decode", 2, 24), ("prefill", 4, 256), ("decode", 32, 128))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    import torch

    from profiler.measure import PassTimer, load_snapshot, set_threads
    from profiler.model import build_model, check_device
    from profiler.model_timing import time_case
    from profiler.timing_validation import TIMING_SPEC as spec

    set_threads(1)
    dev = check_device("cpu")
    model = build_model(spec, dtype="fp32", device="cpu", seed=0, attention="eager")
    gen = torch.Generator().manual_seed(0)
    timer = PassTimer("cpu", 1)
    load0, t0 = load_snapshot(), time.time()
    print("   t/s  " + "  ".join(f"{p[0][:3]} {p[1]}x{p[2]:<4}" for p in CASES) + "  (ms)")
    rounds = []
    with torch.inference_mode():
        while time.time() - t0 < a.seconds:
            row = [time_case(model, spec, c, dev, gen, timer, a.repeat)["seconds"] for c in CASES]
            rounds.append(row)
            print(f"{time.time() - t0:6.1f}  " + "  ".join(f"{s * 1e3:12.2f}" for s in row), flush=True)
    steady = rounds[1:]
    if len(steady) < 3:
        print("too few rounds: give more --seconds")
        return
    print(f"\n{len(steady)} rounds after the first; load average {load0['loadavg'][0]:.2f} -> "
          f"{os.getloadavg()[0]:.2f} on {load0['cpus']} CPUs")
    for j, c in enumerate(CASES):
        xs = [r[j] for r in steady]
        sd = statistics.pstdev([math.log(x) for x in xs]) * 100
        print(f"{c[0]} {c[1]} x {c[2]}: median {statistics.median(xs) * 1e3:.2f} ms, sd {sd:.1f} %, "
              f"range {(max(xs) / min(xs) - 1) * 100:.0f} %")


if __name__ == "__main__":
    main()
