"""Per-model op tables: a device's own measured times of one model's passes, interpolated.

``costmodel calibrate --model MODEL`` times the reference model of MODEL in place (forward hooks
around each block's attention and its projections) over a prefill grid of token counts and a
decode grid of (batch, context) points, and stores the table in the profile, under
``calibration.op_tables`` (a list: one table per model). Predictions for that model then
interpolate the table; the roofline (:mod:`costmodel.roofline`) stays the fallback for every other
model and the explanation of where the time goes. This is the approach of Vidur's profiled
operators (Agrawal et al., "Vidur: A Large-Scale Simulation Framework for LLM Inference",
MLSys 2024, section 4: operators profiled on the device and interpolated), reduced to two groups.

Each grid point holds two measured times on the per-thread CPU clock (or CUDA events), each the
mean over the point's visits (rounds spread over the calibration; ``total_s`` geometric)::

    total_s      one unhooked pass
    attention_s  the part that grows with the context: each block's attention module minus its
                 q/k/v/o projections (rotary, the cache write and slice, GQA's repeat, scores,
                 mask, softmax, values), summed over blocks, from a hooked pass
    rest_s       = total_s - attention_s: every op that depends only on the rows (projections,
                 MLP, norms, embedding, LM head) *and* the measured glue between them

Interpolation is piecewise linear in log-log (:func:`loglog`; beyond the grid the end segment
is extended, its slope clamped at >= 0). For a prefill pass of ``batch`` sequences of ``s``
tokens (grid: batch 1, ``tokens`` T)::

    rest(rows = batch * s)            from the points (T, rest_s)
    attention(x = batch * s * s)      from the points (T * T, attention_s): score elements per head

For a decode step of ``batch`` rows over ``context`` cached keys (attending over context + 1)::

    rest(batch)                       from (b, median over the grid's contexts of rest_s)
    attention(batch, context + 1)     bilinear in (log batch, log keys) over the rectangular grid

No numpy: the table is small and this module is imported by the analytic side.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass

from .errors import SpecError

FORMAT = "costmodel-op-table/1"


def spec_key(spec) -> str:
    """A fingerprint of every field of a :class:`~costmodel.spec.ModelSpec` (its repr): a table
    measured on one spec is never used for another that merely shares its name."""
    return hashlib.sha256(repr(spec).encode("utf-8")).hexdigest()[:16]


def loglog(xs, ys, x: float) -> float:
    """Piecewise-linear interpolation of ``ys`` over ``xs`` in (log x, log y); ``xs`` ascending,
    all values > 0. Exact at the grid points; beyond the ends the end segment continues, its
    slope clamped at >= 0 (a time never shrinks as the work grows). One point: a constant."""
    if len(xs) == 1:
        return ys[0]
    if x <= 0:
        raise SpecError(f"op table: cannot interpolate at {x} (must be > 0)")
    lx = math.log(x)
    i = 0
    while i < len(xs) - 2 and x > xs[i + 1]:
        i += 1
    x0, x1, y0, y1 = math.log(xs[i]), math.log(xs[i + 1]), math.log(ys[i]), math.log(ys[i + 1])
    slope = (y1 - y0) / (x1 - x0)
    if x > xs[-1]:  # beyond the last point: from it, never falling
        return math.exp(y1 + max(slope, 0.0) * (lx - x1))
    if x < xs[0]:
        slope = max(slope, 0.0)
    return math.exp(y0 + slope * (lx - x0))


def bilinear_loglog(xs, ys, grid, x: float, y: float) -> float:
    """``grid[i][j]`` at (xs[i], ys[j]): :func:`loglog` along y in the two bracketing rows, then
    along x between them (exact at grid points)."""
    col = [loglog(ys, row, y) for row in grid]
    return loglog(xs, col, x)


def _floor_s(v: float) -> float:
    return max(v, 1e-9)  # a difference of medians can come out <= 0 on a tiny pass: keep logs finite


@dataclass(frozen=True)
class OpTable:
    """One model's measured pass times on one device (see the module docstring)."""

    model: str
    spec_key: str
    dtype: str
    attention: str
    device: str
    threads: int | None
    clock: str
    prefill_tokens: tuple
    prefill_total_s: tuple
    prefill_attention_s: tuple
    decode_batches: tuple
    decode_contexts: tuple
    decode_total_s: tuple  # [batch][context]
    decode_attention_s: tuple

    # --- the curves -----------------------------------------------------------------------------
    def prefill_parts(self, batch: int, seq: int) -> dict:
        rest = [_floor_s(t - a) for t, a in zip(self.prefill_total_s, self.prefill_attention_s)]
        r = loglog(self.prefill_tokens, rest, batch * seq)
        a = loglog([t * t for t in self.prefill_tokens], [_floor_s(v) for v in self.prefill_attention_s],
                   batch * seq * seq)
        return {"rest_s": r, "attention_s": a, "seconds": r + a}

    def decode_parts(self, batch: int, context: int) -> dict:
        rest_by_batch = [_floor_s(statistics.median(t - a for t, a in zip(ts, as_)))
                         for ts, as_ in zip(self.decode_total_s, self.decode_attention_s)]
        r = loglog(self.decode_batches, rest_by_batch, batch)
        keys = [c + 1 for c in self.decode_contexts]
        att = [[_floor_s(v) for v in row] for row in self.decode_attention_s]
        a = bilinear_loglog(self.decode_batches, keys, att, batch, context + 1)
        return {"rest_s": r, "attention_s": a, "seconds": r + a}

    def parts(self, batch: int, q_len: int, kv_len: int) -> dict:
        """Interpolated rest, attention and total seconds of one pass (prefill: q_len == kv_len;
        a cached decode step: q_len 1 over kv_len = context + 1 keys)."""
        if q_len == kv_len:
            return self.prefill_parts(batch, q_len)
        if q_len == 1 and kv_len >= 2:
            return self.decode_parts(batch, kv_len - 1)
        raise SpecError(f"op table of {self.model}: covers prefill passes (q_len == kv_len) and one-token "
                        f"decode steps (q_len 1), not q_len {q_len} over {kv_len} keys")

    def pass_seconds(self, batch: int, q_len: int, kv_len: int) -> float:
        return self.parts(batch, q_len, kv_len)["seconds"]

    def is_grid_point(self, phase: str, batch: int, context: int) -> bool:
        if phase == "prefill":
            return batch == 1 and context in self.prefill_tokens
        return batch in self.decode_batches and context in self.decode_contexts


# --- the stored format --------------------------------------------------------------------------

def _pos_number(where: str, name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (math.inf, -math.inf) or v < 0:
        raise SpecError(f"{where}: {name} must be a number >= 0, got {v!r}")
    return float(v)


def _pos_int(where: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpecError(f"{where}: {name} must be a whole number >= 1, got {v!r}")
    return v


_FIELDS = ("format", "model", "spec_key", "dtype", "attention", "device", "threads", "clock", "prefill", "decode")


def parse_op_table(d: object, where: str) -> OpTable:
    """Validate one stored table; every problem is a one-line :class:`SpecError` naming it."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: an op table must be an object, got {type(d).__name__}")
    for k in _FIELDS:
        if k not in d:
            raise SpecError(f"{where}: missing field {k!r} (required: {', '.join(_FIELDS)})")
    if d["format"] != FORMAT:
        raise SpecError(f"{where}: unknown format {d['format']!r}; allowed: {FORMAT}")
    for k in ("model", "spec_key", "dtype", "attention", "device", "clock"):
        if not isinstance(d[k], str) or not d[k]:
            raise SpecError(f"{where}: {k} must be a non-empty string, got {d[k]!r}")
    if d["threads"] is not None:
        _pos_int(where, "threads", d["threads"])
    pre, dec = d["prefill"], d["decode"]
    if not isinstance(pre, list) or not pre:
        raise SpecError(f"{where}: prefill must be a non-empty list of {{tokens, total_s, attention_s}}")
    if not isinstance(dec, list) or not dec:
        raise SpecError(f"{where}: decode must be a non-empty list of {{batch, context, total_s, attention_s}}")
    rows = []
    for i, p in enumerate(pre):
        w = f"{where}: prefill[{i}]"
        if not isinstance(p, dict):
            raise SpecError(f"{w} must be an object")
        rows.append((_pos_int(w, "tokens", p.get("tokens")), _pos_number(w, "total_s", p.get("total_s")),
                     _pos_number(w, "attention_s", p.get("attention_s"))))
    rows.sort()
    tokens = [r[0] for r in rows]
    if len(set(tokens)) != len(tokens):
        raise SpecError(f"{where}: prefill repeats a token count ({tokens})")
    points = {}
    for i, p in enumerate(dec):
        w = f"{where}: decode[{i}]"
        if not isinstance(p, dict):
            raise SpecError(f"{w} must be an object")
        key = (_pos_int(w, "batch", p.get("batch")), _pos_int(w, "context", p.get("context")))
        if key in points:
            raise SpecError(f"{where}: decode repeats the point batch {key[0]} context {key[1]}")
        points[key] = (_pos_number(w, "total_s", p.get("total_s")), _pos_number(w, "attention_s", p.get("attention_s")))
    batches = sorted({b for b, _ in points})
    contexts = sorted({c for _, c in points})
    missing = [(b, c) for b in batches for c in contexts if (b, c) not in points]
    if missing:
        raise SpecError(f"{where}: the decode grid must be rectangular (every batch at every context); "
                        f"missing batch {missing[0][0]} context {missing[0][1]}")
    return OpTable(d["model"], d["spec_key"], d["dtype"], d["attention"], d["device"], d["threads"], d["clock"],
                   tuple(tokens), tuple(r[1] for r in rows), tuple(r[2] for r in rows),
                   tuple(batches), tuple(contexts),
                   tuple(tuple(points[(b, c)][0] for c in contexts) for b in batches),
                   tuple(tuple(points[(b, c)][1] for c in contexts) for b in batches))


def parse_op_tables(calibration: dict, source: str) -> list[OpTable]:
    """The tables of a profile's ``calibration`` block (none: an empty list)."""
    tables = calibration.get("op_tables") if isinstance(calibration, dict) else None
    if tables is None:
        return []
    if not isinstance(tables, list):
        raise SpecError(f"{source}: calibration.op_tables must be a list of op tables")
    return [parse_op_table(t, f"{source}: op table {i}") for i, t in enumerate(tables)]


def table_for(hw, spec, dtype: str = "fp32", attention: str = "eager") -> OpTable | None:
    """The op table of ``hw`` measured on exactly ``spec`` in ``dtype`` and ``attention``, or None."""
    key = spec_key(spec)
    for t in parse_op_tables(hw.calibration or {}, f"hardware {hw.id!r}"):
        if t.spec_key == key and t.dtype == dtype and t.attention == attention:
            return t
    return None


def workload_seconds(table: OpTable, wl) -> dict | None:
    """TTFT, decode and mean TPOT of ``wl`` interpolated from ``table``: the prefill pass of
    ``batch x prompt`` tokens, then decode step i = 1 .. gen - 1 over prompt + i keys, summed step
    by step. None for what the table does not cover (no KV cache, beam search)."""
    if not wl.kv_cache or wl.beams != 1:
        return None
    ttft = table.pass_seconds(wl.batch, wl.prompt, wl.prompt)
    steps = max(0, wl.gen - 1)
    decode = sum(table.pass_seconds(wl.batch, 1, wl.prompt + i) for i in range(1, steps + 1))
    return {"ttft_s": ttft, "decode_s": decode, "tpot_mean_s": decode / steps if steps else None,
            "e2e_s": ttft + decode, "source": f"op table of {table.model} ({table.device}, {table.clock} clock)"}
