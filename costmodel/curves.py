"""Generic shape-aware curves: a calibrated device's op times as functions of the op's shape.

``costmodel calibrate`` stores, under ``calibration.curves`` (see :mod:`profiler.calibrate`):

- ``matmul_rows``: FLOP/s of ``[m, k] x [k, n]`` on cold weights by row count m, at two matrix
  sizes: one CPU core streams cold weights fast for one row and far slower for 2-64 rows, which
  neither the compute nor the bandwidth bound describes;
- ``elementwise_bytes``: seconds of an allocating element-wise op by bytes moved (large fresh
  outputs page-fault);
- ``attention_slice``: seconds of a decode step's score matmul over a strided cache slice, by bytes
  (cold: cycled over 256 MiB of caches, as the other layers' caches and the weights evict it in a pass);
- ``kernel_in_pass``: seconds per costed op inside a pass of a small model (dispatch and the
  kernels costmodel does not count one by one: RMSNorm is 8 kernels in eager torch, rotary 12).

:func:`curve_pass_seconds` prices each op of :func:`costmodel.analysis.step_cost` with them::

    weight matmul   flops / rate(rows = flops / (2 x weight elements), nearest matrix size)
    other matmul    max(flops / peak, attention_slice(bytes))
    element-wise    max(flops / elementwise peak, elementwise_bytes(bytes))
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
    matmul: tuple  # ((weight_bytes, rows, flops_per_s), ...) one entry per matrix size
    elementwise: tuple  # (bytes, seconds)
    attention: tuple  # (bytes, seconds)
    seconds_per_op: float

    def matmul_rate(self, rows: float, weight_bytes: float) -> float:
        size, xs, ys = min(self.matmul, key=lambda m: abs(math.log(m[0]) - math.log(max(weight_bytes, 1))))
        return _clamped(xs, ys, rows)


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
            by_size.setdefault(r.get("weight_bytes"), []).append(r)
    matmul = []
    for size, rows in by_size.items():
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
            raise SpecError(f"{where}.matmul_rows: weight_bytes must be a number > 0, got {size!r}")
        matmul.append((size, *_series(rows, "rows", "flops_per_s", f"{where}.matmul_rows")))
    if not matmul:
        raise SpecError(f"{where}.matmul_rows must be a non-empty list")
    ew = _series(c.get("elementwise_bytes") or [], "bytes", "seconds", f"{where}.elementwise_bytes")
    att = _series(c.get("attention_slice") or [], "bytes", "seconds", f"{where}.attention_slice")
    k = c.get("kernel_in_pass")
    per = k.get("seconds_per_op") if isinstance(k, dict) else None
    if isinstance(per, bool) or not isinstance(per, (int, float)) or per < 0:
        raise SpecError(f"{where}.kernel_in_pass.seconds_per_op must be a number >= 0, got {per!r}")
    return Curves(tuple(sorted(matmul)), ew, att, float(per))


def op_parts(curves: Curves, kind: str, weight_bytes: float, weight_elements: float, flops: float,
             nbytes: float, peak: float, ew_peak: float) -> tuple[float, float]:
    """(compute, memory) seconds of one op on the curves, its time their max plus the per-op cost:
    a weight matmul ``(flops / rate(rows, weight bytes), 0)``, rows = flops / (2 x weight
    elements); another matmul ``(flops / peak, attention_slice(bytes))``; any other op ``(flops /
    element-wise peak, elementwise_bytes(bytes))``. One formula for :func:`op_seconds` and the
    roofline's rates (:meth:`costmodel.roofline.Rates.curve_parts`)."""
    if kind == "matmul" and weight_bytes:
        rows = flops / (2 * weight_elements)
        return (flops / curves.matmul_rate(rows, weight_bytes) if flops else 0.0), 0.0
    curve, F = (curves.attention, peak) if kind == "matmul" else (curves.elementwise, ew_peak)
    return (flops / F if flops else 0.0), (loglog(*curve, nbytes) if nbytes else 0.0)


def op_seconds(op, curves: Curves, peak: float, ew_peak: float, weight_bits: int) -> float:
    """One op's seconds on the curves (see the module docstring and :func:`op_parts`)."""
    parts = op_parts(curves, op.kind, op.weight_bytes, op.weight_bytes * 8 / weight_bits, op.flops, op.bytes,
                     peak, ew_peak)
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
    return sum(n * op_seconds(o, curves, peak, ew, bits) for n, o in cost.weighted())
