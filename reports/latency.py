"""Roofline seconds over a whole sweep grid: an adapter over :mod:`costmodel.roofline`, vectorized.

:mod:`costmodel.roofline` times one configuration at a time (per op ``max(flops / F, bytes / B)
+ overhead``, decode summed exactly over its steps). A sweep needs the same numbers for every
(batch, prompt, gen) at once, so this module applies the same per-op model to numpy arrays:

- encode and prefill: ``sum over ops of max(flops / F, bytes / B) + overhead`` on the [B, P] grid;
- decode: for each op, FLOPs and bytes are polynomials of degree <= 2 in the step (from steps 1, 2
  and 3, as ``roofline.summed_op_time`` does), and ``sum_i max(flops / F, bytes / B)`` is
  :func:`costmodel.stepsum.sum_max`, the same code that sums one configuration, run element-wise on
  float64 arrays: the same vertex split and binary search for the steps where compute wins, the
  same prefix sums. The tests check against ``roofline.predict`` to 1e-9. With a sliding window
  the steps split where the window fills (a step that depends on the prompt), so those models are
  summed one prompt at a time (:func:`costmodel.stepsum.split_sum_max`), vectorized over batch.

The rates (achievable FLOP/s and bandwidth, per-op overhead) are ``roofline.rates(hw, act_dtype)``,
each op at its kind's rates as in ``roofline.op_time``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from costmodel import stepsum
from costmodel.analysis import decode_step_cost, encode_cost, prefill_cost, slides, window_split
from costmodel.roofline import predict, rates

from .grid import grid_workload, irregular_pairs, phases_of


def _ops(cost):
    """(multiplicity, op) for every op of a pass: block ops count once per block of their group."""
    return list(cost.weighted())


def _f(x):
    return np.asarray(x, dtype=np.float64)


def _newton(v1, v2, v3):
    """:func:`costmodel.stepsum.newton` exactly in integers (Python ints where int64 could
    overflow), then as float64."""
    a = [np.asarray(v) for v in (v1, v2, v3)]
    if any(x.dtype != object and x.size and int(np.abs(x).max()) >= 2**60 for x in a):
        a = [x.astype(object) for x in a]
    return tuple(_f(x) for x in stepsum.newton(*a))


def _pass_seconds(cost, r):
    """One pass on the grid: sum over ops of max(flops / F, bytes / B) + overhead, with each op's
    rates (``Rates.flops_rate``, ``Rates.bytes_rate``: a calibrated CPU has its own element-wise
    peak and matmul bandwidth)."""
    total = 0.0
    for mult, o in _ops(cost):
        F, Bw = r.flops_rate(o.kind, o.op), r.bytes_rate(o.kind)
        total = total + mult * (np.maximum(_f(o.flops) / F, _f(o.bytes) / Bw) + r.op_overhead_s)
    return total


def phase_seconds(spec, wl, hw, batches, prompts, gens, exact_ints: bool = False):
    """Roofline seconds [B, P, G, F] for every grid point on ``hw``; the last axis is the phases of
    :func:`reports.grid.phases_of` (encode, prefill, decode total: those that apply).

    ``exact_ints``: compute the op counts in Python ints (when int64 could overflow; see
    :func:`reports.sweep.grid_counts`), else int64.
    """
    r = rates(hw, wl.act_dtype, wl.quant)
    B, P, G = len(batches), len(prompts), len(gens)
    phases = phases_of(spec)
    dt = object if exact_ints else np.int64
    b = np.array([int(x) for x in batches], dtype=dt).reshape(B, 1)
    p = np.array([int(x) for x in prompts], dtype=dt).reshape(1, P)
    gw = grid_workload(wl, b, p)
    out = np.zeros((B, P, G, len(phases)))
    for name, cost_of in (("encode", encode_cost), ("prefill", prefill_cost)):
        if name in phases:
            out[..., phases.index(name)] = np.broadcast_to(_pass_seconds(cost_of(spec, gw), r),
                                                          (B, P))[..., None]
    if "decode" not in phases:
        return out
    j = phases.index("decode")

    def coeffs(gw, keys):
        steps = [_ops(decode_step_cost(spec, gw, i, keys)) for i in (1, 2, 3)]
        return [(mult, _newton(o1.flops, o2.flops, o3.flops), _newton(o1.bytes, o2.bytes, o3.bytes),
                 r.flops_rate(o1.kind, o1.op), r.bytes_rate(o1.kind))
                for (mult, o1), (_, o2), (_, o3) in zip(*steps)]

    if slides(spec, wl):  # the window fills at a step that depends on the prompt: one prompt at a time
        for ip in range(P):
            gp = grid_workload(wl, b, p[:, ip:ip + 1])
            grow, full = coeffs(gp, "growing"), coeffs(gp, "full")
            for k, g in enumerate(gens):
                n = int(g) - 1
                m = window_split(spec, replace(wl, prompt=int(prompts[ip])), n)
                dec = 0.0
                for (mult, pf, pb, F, Bw), (_, qf, qb, _, _) in zip(grow, full):
                    dec = dec + mult * (stepsum.split_sum_max(pf, qf, pb, qb, m, n, F, Bw)[0] + n * r.op_overhead_s)
                out[:, ip, k, j] = np.broadcast_to(dec, (B, 1))[:, 0]
        return out
    coeffs = coeffs(gw, "actual")
    for k, g in enumerate(gens):
        n = int(g) - 1
        dec = 0.0
        for mult, pf, pb, F, Bw in coeffs:
            dec = dec + mult * (stepsum.sum_max(pf, pb, n, F, Bw)[0] + n * r.op_overhead_s)
        out[:, :, k, j] = np.broadcast_to(dec, (B, P))
    for ib, ip in irregular_pairs(spec, wl, batches, prompts):
        for k, g in enumerate(gens):
            t = predict(spec, replace(wl, batch=int(batches[ib]), prompt=int(prompts[ip]), gen=int(g)), hw)
            out[ib, ip, k, j] = t.decode.seconds
    return out
