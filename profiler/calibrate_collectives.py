"""``costmodel calibrate --collectives``: all-reduce time vs message size on this machine's
backend (gloo on CPU, nccl on CUDA), fitted to the plan's ring model.

The plan times an all-reduce of ``m`` bytes over ``tp`` ranks as (:func:`costmodel.plan.allreduce_seconds`)::

    t(m) = 2 (tp - 1) / tp * m / (bandwidth * efficiency) + 2 (tp - 1) * latency

Measured at ``tp`` = 2 ranks this is a line in ``m``; a least-squares fit of the *relative*
residuals (each size weighs the same, small messages included) gives its slope and intercept,
hence ``interconnect_bandwidth_bytes_per_s`` (with ``interconnect_efficiency`` = 1: the fitted
bandwidth is what the ring reached) and ``link_latency_s``. The fit's error is reported like the
roofline's: per message size the predicted and measured seconds, then the median and 90th
percentile of the absolute error in percent.
"""

from __future__ import annotations

import statistics
import time

import torch

from costmodel.errors import SpecError

SIZES = tuple(4 ** k * 1024 for k in range(0, 8))  # 1 KiB .. 16 MiB
# quick: small messages, where gloo's time is nearly flat, plus 1 and 4 MiB so the slope shows
QUICK_SIZES = (1024, 16384, 262144, 1 << 20, 1 << 22)


def allreduce_rank(rank: int, comm, sizes, min_time_s: float, batches: int) -> list[dict]:
    """Time fp32 all-reduces of each size in bytes: ``batches`` timed loops of at least
    ``min_time_s``; seconds per call of the median loop (rank 0's clock)."""
    import torch.distributed as dist

    out = []
    for nbytes in sizes:
        t = torch.ones(nbytes // 4, dtype=torch.float32, device=comm.device)
        for _ in range(3):  # warm-up: connections, buffers
            dist.all_reduce(t)
        reps, per_call = 1, []
        while True:  # ranks agree on reps: rank 0's choice is broadcast
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                dist.all_reduce(t)
            comm._sync()
            dt = time.perf_counter() - t0
            flag = torch.tensor([dt >= min_time_s or reps >= 4096], dtype=torch.int32)
            dist.broadcast(flag, 0)
            if flag.item():
                break
            reps *= 4
        per_call.append(dt / reps)
        for _ in range(batches - 1):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                dist.all_reduce(t)
            comm._sync()
            per_call.append((time.perf_counter() - t0) / reps)
        out.append({"bytes": nbytes, "seconds": statistics.median(per_call), "calls": reps * batches})
    return out


def fit_ring(points: list[tuple[int, float]], tp: int) -> tuple[float, float]:
    """(bandwidth bytes/s, latency s per ring step) of t = 2(tp-1)/tp m / bw + 2(tp-1) lat,
    least squares on relative residuals (weights 1 / t^2)."""
    # minimise sum ((a m + b - t) / t)^2: normal equations of x = (m / t, 1 / t), y = 1
    sxx = sum((m / t) ** 2 for m, t in points)
    sxy = sum((m / t) * (1 / t) for m, t in points)
    syy = sum((1 / t) ** 2 for m, t in points)
    sx1 = sum(m / t for m, t in points)
    sy1 = sum(1 / t for m, t in points)
    det = sxx * syy - sxy * sxy
    a = (sx1 * syy - sy1 * sxy) / det  # seconds per byte
    b = (sxx * sy1 - sxy * sx1) / det  # seconds
    if a <= 0:
        raise SpecError("all-reduce time did not grow with the message size; calibrate again on a quieter "
                        "machine (or without --quick)")
    bw = 2 * (tp - 1) / tp / a
    lat = max(b, 0.0) / (2 * (tp - 1))
    return bw, lat


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of ``xs``."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def calibrate_collectives(device: str = "cpu", quick: bool = False, world: int = 2) -> dict:
    """Measure and fit; returns the profile fields and a ``collectives`` calibration block."""
    from costmodel.hardware import hardware_from_dict
    from costmodel.plan import allreduce_seconds

    from .distributed import backend_for, launch

    sizes = QUICK_SIZES if quick else SIZES
    t0 = time.perf_counter()
    rows = launch(allreduce_rank, world, (sizes, 0.01 if quick else 0.2, 3 if quick else 5),
                  device=device, timeout_s=120 if quick else 600)[0]
    bw, lat = fit_ring([(r["bytes"], r["seconds"]) for r in rows], world)
    backend = backend_for(device)
    fields = {"interconnect": f"{backend} all-reduce ({'localhost' if device == 'cpu' else 'CUDA'})",
              "interconnect_bandwidth_bytes_per_s": bw, "interconnect_gpus": world,
              "interconnect_efficiency": 1.0, "link_latency_s": lat}
    # predicted by the plan's own formula, through a profile holding the fitted fields
    hw = hardware_from_dict({"id": "fit", "name": "fit", "memory_bytes": 1, "memory_bandwidth_bytes_per_s": 1,
                             "peak_flops_per_s": {"fp32": 1}, **fields}, "collective fit")
    for r in rows:
        r["predicted_seconds"] = allreduce_seconds(hw, world, r["bytes"])
        r["abs_error_pct"] = abs(r["predicted_seconds"] - r["seconds"]) / r["seconds"] * 100
    errs = [r["abs_error_pct"] for r in rows]
    return {"fields": fields, "collectives": {
        "backend": backend, "ranks": world, "dtype": "fp32", "points": rows,
        "median_abs_error_pct": statistics.median(errs), "p90_abs_error_pct": percentile(errs, 90),
        "seconds_taken": time.perf_counter() - t0,
        "model": "t = 2(tp-1)/tp x bytes / bandwidth + 2(tp-1) x latency, fitted on relative residuals"}}
