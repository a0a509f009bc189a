"""Generic shape-aware curves: a calibrated device's op times as functions of the op's shape.

``costmodel calibrate`` stores, under ``calibration.curves`` (see :mod:`profiler.calibrate`):

- ``matmul_rows``: FLOP/s of ``[m, k] x [k, n]`` by row count m, at two matrix sizes, each over
  pools of weights cycled so a call finds its weights as a pass through a model of that many
  weight bytes does (``pool_bytes``: 64, 128 and 256 MiB): one CPU core streams weights fast for one
  row and far slower for 2-64 rows, which neither the compute nor the bandwidth bound describes,
  and faster the fewer weights there are between one use of a matrix and the next (the Xeon VM,
  1 row over 1024 x 4096 matrices: 27.8 GB/s over 64 MiB, 23.6 over 128, 16.2 over 256);
- ``elementwise_bytes``: seconds of an allocating element-wise op by bytes moved (large fresh
  outputs page-fault);
- ``attention_slice``: seconds of a decode step's score matmul over a strided cache slice, by bytes
  (cold: cycled over 256 MiB of caches, as the other layers' caches and the weights evict it in a pass);
- ``score_chain``: seconds of the eager attention core minus its two matmuls (scale, causal mask,
  softmax: three fresh scores tensors) by bytes of scores, 8 heads over T x T, split at the
  allocator's mmap threshold where the profile records one (``mmap_threshold_bytes``): the
  analytic ``attn_softmax`` op is priced on it, a pass of eager torch running it as those kernels;
- ``kv_repeat``: seconds of GQA's ``repeat_kv`` of a cache slice by bytes written, split at the
  mmap threshold like the chain: the eager reference repeats K and V for every query head before
  its score and value matmuls (:attr:`costmodel.analysis.OpCost.kv_repeat`), which then read the
  repeated tensor, not the cache;
- ``kernel_in_pass``: seconds per costed op inside a pass of a small model (dispatch and the
  kernels costmodel does not count one by one: RMSNorm is 8 kernels in eager torch, rotary 12).

:func:`curve_pass_seconds` prices each op of :func:`costmodel.analysis.step_cost` with them::

    weight matmul   flops / rate(rows = flops / (2 x weight elements), nearest matrix size,
                                 pool = the pass's weight bytes, held within the pools measured)
    other matmul    max(flops / peak, attention_slice(bytes)); GQA's scores and values (group g
                    > 1, cache bytes c) where the profile has kv_repeat:
                    max(flops / peak, attention_slice(bytes - c + g c) + kv_repeat(g c))
    element-wise    max(flops / elementwise peak, elementwise_bytes(bytes)); attn_softmax:
                    score_chain(bytes / 2, the scores it reads) where the profile has it
    every op        + kernel_in_pass.seconds_per_op

Interpolation in log-log (:func:`costmodel.optable.loglog`); a rate is held flat beyond its grid.
Where the profile has no curves the function returns None and the roofline applies. The roofline
itself uses them (:func:`costmodel.roofline.rates`, flat model, fp32 passes): ``report``, ``plan``
and ``simulate`` on a calibrated profile price every op on its curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .dtypes import DTYPE_BITS, canonical_dtype
from .errors import SpecError
from .optable import loglog


def _clamped(xs, ys, x):
    return loglog(xs, ys, min(max(x, xs[0]), xs[-1]))


def _series(rows, x: str, y: str, where: str):
    pts = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise SpecError(f"{where}[{i}] must be an object")
        vx, vy = r.get(x), r.get(y)
        for name, v in ((x, vx), (y, vy)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == math.inf:
                raise SpecError(f"{where}[{i}]: {name} must be a number > 0, got {v!r}")
        pts[vx] = vy
    if not pts:
        raise SpecError(f"{where} must be a non-empty list")
    xs = sorted(pts)
    return tuple(xs), tuple(pts[v] for v in xs)


@dataclass(frozen=True)
class Curves:
    # ((weight_bytes, ((pool_bytes, rows, flops_per_s), ...)), ...): per matrix size, its pools
    # ascending (pool_bytes None: a profile from before the pools, one pool)
    matmul: tuple
    elementwise: tuple  # (bytes, seconds)
    attention: tuple  # (bytes, seconds)
    seconds_per_op: float
    score_chain: tuple | None = None  # (score bytes, seconds); None: a profile from before it
    mmap_threshold_bytes: int | None = None  # the score chain's regimes (costmodel.optable.loglog)
    kv_repeat: tuple | None = None  # (bytes written, seconds); None: a profile from before it

    def _in_regime(self, curve: tuple, nbytes: float) -> float:
        """``curve`` at ``nbytes`` within the regime of the mmap threshold (a tensor past it is
        fresh, page-faulted memory every pass)."""
        xs, ys = curve
        t = self.mmap_threshold_bytes
        if t is None:
            return loglog(xs, ys, nbytes)
        return loglog(xs, ys, nbytes, [int(x >= t) for x in xs], int(nbytes >= t))

    def score_chain_seconds(self, score_bytes: float) -> float:
        """The eager scale, mask and softmax over ``score_bytes`` of scores."""
        return self._in_regime(self.score_chain, score_bytes)

    def kv_repeat_seconds(self, out_bytes: float) -> float:
        """GQA's eager repeat of K or V writing ``out_bytes``."""
        return self._in_regime(self.kv_repeat, out_bytes)

    def matmul_rate(self, rows: float, weight_bytes: float, pass_weight_bytes: float | None = None) -> float:
        """FLOP/s of a weight matmul of ``rows`` rows over a matrix of ``weight_bytes``, in a pass
        reading ``pass_weight_bytes`` of weights (None: the largest pool, the coldest)."""
        _, pools = min(self.matmul, key=lambda m: abs(math.log(m[0]) - math.log(max(weight_bytes, 1))))
        if pass_weight_bytes is None or len(pools) == 1:
            return _clamped(*pools[-1][1:], rows)
        return _clamped([p for p, _, _ in pools], [_clamped(xs, ys, rows) for _, xs, ys in pools],
                        max(pass_weight_bytes, 1))


def parse_curves(calibration: dict, source: str) -> Curves | None:
    c = calibration.get("curves") if isinstance(calibration, dict) else None
    if c is None:
        return None
    where = f"{source}: calibration.curves"
    if not isinstance(c, dict):
        raise SpecError(f"{where} must be an object")
    by_size: dict = {}
    for r in c.get("matmul_rows") or []:
        if isinstance(r, dict):
            by_size.setdefault(r.get("weight_bytes"), {}).setdefault(r.get("pool_bytes"), []).append(r)
    matmul = []
    for size, by_pool in by_size.items():
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
            raise SpecError(f"{where}.matmul_rows: weight_bytes must be a number > 0, got {size!r}")
        for pool in by_pool:
            if pool is not None and (isinstance(pool, bool) or not isinstance(pool, (int, float)) or not pool > 0):
                raise SpecError(f"{where}.matmul_rows: pool_bytes must be a number > 0, got {pool!r}")
        if None in by_pool and len(by_pool) > 1:
            raise SpecError(f"{where}.matmul_rows: weight_bytes {size}: every row or none has pool_bytes")
        pools = tuple((pool, *_series(rows, "rows", "flops_per_s", f"{where}.matmul_rows"))
                      for pool, rows in sorted(by_pool.items(), key=lambda kv: kv[0] or 0))
        matmul.append((size, pools))
    if not matmul:
        raise SpecError(f"{where}.matmul_rows must be a non-empty list")
    ew = _series(c.get("elementwise_bytes") or [], "bytes", "seconds", f"{where}.elementwise_bytes")
    att = _series(c.get("attention_slice") or [], "bytes", "seconds", f"{where}.attention_slice")
    chain = c.get("score_chain")
    chain = None if chain is None else _series(chain, "score_bytes", "seconds", f"{where}.score_chain")
    rep = c.get("kv_repeat")
    rep = None if rep is None else _series(rep, "out_bytes", "seconds", f"{where}.kv_repeat")
    threshold = c.get("mmap_threshold_bytes")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1):
        raise SpecError(f"{where}.mmap_threshold_bytes must be a whole number >= 1 or null, got {threshold!r}")
    k = c.get("kernel_in_pass")
    per = k.get("seconds_per_op") if isinstance(k, dict) else None
    if isinstance(per, bool) or not isinstance(per, (int, float)) or per < 0:
        raise SpecError(f"{where}.kernel_in_pass.seconds_per_op must be a number >= 0, got {per!r}")
    return Curves(tuple(sorted(matmul)), ew, att, float(per), chain, threshold, rep)


def op_parts(curves: Curves, kind: str, weight_bytes: float, weight_elements: float, flops: float,
             nbytes: float, peak: float, ew_peak: float, pass_weight_bytes: float | None = None,
             op: str | None = None, kv_bytes: float = 0, kv_repeat: int = 1) -> tuple[float, float]:
    """(compute, memory) seconds of one op on the curves, its time their max plus the per-op cost:
    a weight matmul ``(flops / rate(rows, weight bytes, pass weight bytes), 0)``, rows = flops /
    (2 x weight elements); another matmul ``(flops / peak, attention_slice(bytes))``; any other op
    ``(flops / element-wise peak, elementwise_bytes(bytes))``, the attention softmax (``op``
    "attn_softmax") ``(flops / element-wise peak, score_chain(bytes / 2))`` where the profile has
    the chain; a matmul reading ``kv_bytes`` of cache that the eager reference first repeats
    ``kv_repeat`` > 1 times (GQA) ``(flops / peak, attention_slice(bytes - kv_bytes + repeated) +
    kv_repeat(repeated))``, repeated = kv_repeat x kv_bytes, where the profile has the repeat. One
    formula for :func:`op_seconds` and the roofline's rates (:meth:`costmodel.roofline.Rates.curve_parts`)."""
    if kind == "matmul" and weight_bytes:
        rows = flops / (2 * weight_elements)
        return (flops / curves.matmul_rate(rows, weight_bytes, pass_weight_bytes) if flops else 0.0), 0.0
    if op == "attn_softmax" and curves.score_chain is not None:
        return (flops / ew_peak if flops else 0.0), (curves.score_chain_seconds(nbytes / 2) if nbytes else 0.0)
    if kind == "matmul" and kv_repeat > 1 and kv_bytes and curves.kv_repeat is not None:
        repeated = kv_repeat * kv_bytes
        return ((flops / peak if flops else 0.0),
                loglog(*curves.attention, nbytes - kv_bytes + repeated) + curves.kv_repeat_seconds(repeated))
    curve, F = (curves.attention, peak) if kind == "matmul" else (curves.elementwise, ew_peak)
    return (flops / F if flops else 0.0), (loglog(*curve, nbytes) if nbytes else 0.0)


def op_seconds(op, curves: Curves, peak: float, ew_peak: float, weight_bits: int,
               pass_weight_bytes: float | None = None) -> float:
    """One op's seconds on the curves (see the module docstring and :func:`op_parts`)."""
    parts = op_parts(curves, op.kind, op.weight_bytes, op.weight_bytes * 8 / weight_bits, op.flops, op.bytes,
                     peak, ew_peak, pass_weight_bytes, op.op, op.kv_read_bytes, op.kv_repeat)
    return max(parts) + curves.seconds_per_op


def curve_pass_seconds(spec, wl, hw, batch: int, q_len: int, kv_len: int, logits_positions: int = 1
                       ) -> float | None:
    """Predicted seconds of one pass on ``hw``'s curves; None when the profile has none. The sum
    of :func:`op_seconds` over the pass's ops: the time the roofline gives a fp32 pass on the same
    profile (:meth:`costmodel.roofline.Rates.op_rates` prices each op on the curves; tested equal)."""
    from .analysis import step_cost

    curves = parse_curves(hw.calibration or {}, f"hardware {hw.id!r}")
    if curves is None:
        return None
    cost = step_cost(spec, wl, batch, q_len, kv_len, logits_positions)
    peak = hw.achievable_flops_per_s(wl.act_dtype)
    ew = hw.achievable_elementwise_flops_per_s(wl.act_dtype)
    bits = DTYPE_BITS[canonical_dtype(wl.weight_dtype)]
    pool = cost.total("weight_bytes")
    return sum(n * op_seconds(o, curves, peak, ew, bits, pool) for n, o in cost.weighted())
