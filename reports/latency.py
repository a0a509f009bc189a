"""Roofline seconds over a whole sweep grid: an adapter over :mod:`costmodel.roofline`, vectorized.

:mod:`costmodel.roofline` times one configuration at a time (per op ``max(flops / F, bytes / B)
+ overhead``, decode summed exactly over its steps). A sweep needs the same numbers for every
(batch, prompt, gen) at once, so this module applies the same per-op model to numpy arrays:

- encode and prefill: ``sum over ops of max(flops / F, bytes / B) + overhead`` on the [B, P] grid;
- decode: for each op, FLOPs and bytes are polynomials of degree <= 2 in the step (from steps 1, 2
  and 3, as ``roofline.summed_op_time`` does), so ``g(i) = flops(i) / F - bytes(i) / B`` is a
  quadratic with at most two real roots. Between roots the sign of g is constant, so
  ``sum_i max(flops / F, bytes / B) = sum_i bytes(i) / B + sum over the pieces where g > 0 of g``,
  each piece a closed-form prefix sum. Float roots can only misplace a step where g is ~0, which
  changes the sum by ~0; the tests check against ``roofline.predict`` to 1e-9.

The rates (achievable FLOP/s and bandwidth, per-op overhead) are ``roofline.rates(hw, act_dtype)``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from costmodel.analysis import decode_step_cost, encode_cost, prefill_cost
from costmodel.roofline import predict, rates

from .sweep import _irregular_pairs, grid_workload, phases_of


def _ops(cost):
    """(multiplicity, op) for every op of a pass: block ops count num_layers times."""
    return ([(1, o) for o in cost.before + cost.after]
            + [(cost.num_layers, o) for o in cost.layer])


def _f(x):
    return np.asarray(x, dtype=np.float64)


def _prefix(v1, d1, d2, m):
    """sum_{x < m} (v1 + d1 x + d2 x (x - 1) / 2) = m v1 + d1 C(m, 2) + d2 C(m, 3), in float."""
    return m * v1 + d1 * (m * (m - 1) / 2) + d2 * (m * (m - 1) * (m - 2) / 6)


def _sum_max(pf, pb, n, F, B):
    """sum_{i=1..n} max(f(i) / F, b(i) / B), element-wise; pf, pb: (v1, d1, d2) float arrays."""
    if n <= 0:
        return 0.0
    g1, gd1, gd2 = (f / F - b / B for f, b in zip(pf, pb))
    total = _prefix(*(b / B for b in pb), n)
    # g(x) = A x^2 + Bq x + C with x = i - 1 in [0, n)
    A, Bq, C = gd2 / 2, gd1 - gd2 / 2, g1
    A, Bq, C = np.broadcast_arrays(_f(A), _f(Bq), _f(C))
    r1 = np.full(A.shape, float(n))
    r2 = np.full(A.shape, float(n))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lin = (A == 0) & (Bq != 0)
        r1 = np.where(lin, -C / np.where(Bq == 0, 1, Bq), r1)
        disc = Bq * Bq - 4 * A * C
        quad = (A != 0) & (disc >= 0)
        sq = np.sqrt(np.where(quad, disc, 0))
        a2 = np.where(A == 0, 1, 2 * A)
        lo, hi = (-Bq - sq) / a2, (-Bq + sq) / a2
        r1 = np.where(quad, np.minimum(lo, hi), r1)
        r2 = np.where(quad, np.maximum(lo, hi), r2)
        k1 = np.clip(np.ceil(np.nan_to_num(r1, nan=n, posinf=n, neginf=0)), 0, n)
        k2 = np.clip(np.ceil(np.nan_to_num(r2, nan=n, posinf=n, neginf=0)), 0, n)
    k1, k2 = np.minimum(k1, k2), np.maximum(k1, k2)
    for a, b in ((np.zeros_like(k1), k1), (k1, k2), (k2, np.full_like(k1, n))):
        mid = a + np.floor((b - a - 1) / 2)
        positive = (b > a) & (A * mid * mid + Bq * mid + C > 0)
        total = total + np.where(positive, _prefix(g1, gd1, gd2, b) - _prefix(g1, gd1, gd2, a), 0.0)
    return total


def _newton(v1, v2, v3):
    """(v1, v2 - v1, v3 - 2 v2 + v1) exactly in integers, then as floats."""
    a = [np.asarray(v) for v in (v1, v2, v3)]
    if any(x.dtype != object and x.size and int(np.abs(x).max()) >= 2**60 for x in a):
        a = [x.astype(object) for x in a]
    return _f(a[0]), _f(a[1] - a[0]), _f(a[2] - 2 * a[1] + a[0])


def _pass_seconds(cost, F, Bw, ovh):
    """One pass on the grid: sum over ops of max(flops / F, bytes / B) + overhead."""
    total = 0.0
    for mult, o in _ops(cost):
        total = total + mult * (np.maximum(_f(o.flops) / F, _f(o.bytes) / Bw) + ovh)
    return total


def phase_seconds(spec, wl, hw, batches, prompts, gens, exact_ints: bool = False):
    """Roofline seconds [B, P, G, F] for every grid point on ``hw``; the last axis is the phases of
    :func:`reports.sweep.phases_of` (encode, prefill, decode total: those that apply).

    ``exact_ints``: compute the op counts in Python ints (when int64 could overflow; see
    :func:`reports.sweep.grid_counts`), else int64.
    """
    r = rates(hw, wl.act_dtype)
    F, Bw, ovh = r.flops_per_s, r.bytes_per_s, r.op_overhead_s
    B, P, G = len(batches), len(prompts), len(gens)
    phases = phases_of(spec)
    dt = object if exact_ints else np.int64
    b = np.array([int(x) for x in batches], dtype=dt).reshape(B, 1)
    p = np.array([int(x) for x in prompts], dtype=dt).reshape(1, P)
    gw = grid_workload(wl, b, p)
    out = np.zeros((B, P, G, len(phases)))
    for name, cost_of in (("encode", encode_cost), ("prefill", prefill_cost)):
        if name in phases:
            out[..., phases.index(name)] = np.broadcast_to(_pass_seconds(cost_of(spec, gw), F, Bw, ovh),
                                                          (B, P))[..., None]
    if "decode" not in phases:
        return out
    j = phases.index("decode")
    steps = [_ops(decode_step_cost(spec, gw, i)) for i in (1, 2, 3)]
    coeffs = [(mult, _newton(o1.flops, o2.flops, o3.flops), _newton(o1.bytes, o2.bytes, o3.bytes))
              for (mult, o1), (_, o2), (_, o3) in zip(*steps)]
    for k, g in enumerate(gens):
        n = int(g) - 1
        dec = 0.0
        for mult, pf, pb in coeffs:
            dec = dec + mult * (_sum_max(pf, pb, n, F, Bw) + n * ovh)
        out[:, :, k, j] = np.broadcast_to(dec, (B, P))
    for ib, ip in _irregular_pairs(spec, wl, batches, prompts):
        for k, g in enumerate(gens):
            t = predict(spec, replace(wl, batch=int(batches[ib]), prompt=int(prompts[ip]), gen=int(g)), hw)
            out[ib, ip, k, j] = t.decode.seconds
    return out
