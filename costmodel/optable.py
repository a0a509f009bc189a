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

    rest(batch)                       from (b, median over the grid's contexts of rest_s), with
                                      the batches of ``decode_rest`` (every batch 1-16 at one
                                      context: a CPU's few-row matmuls step every 3 rows)
    attention(batch, context + 1)     bilinear in (log batch, log keys) over the rectangular grid

On a CPU a table (``mmap_threshold_bytes``: glibc's, :data:`MMAP_THRESHOLD_BYTES`) splits each
curve into *regimes*: how many of the part's fresh per-layer tensors (the attention scores, GQA's
repeated keys and values, the rows' activations) are big enough to come from a fresh mmap and
page-fault every pass. A time steps up as a tensor crosses the threshold (the LLaMA-GQA bench
model's decode attention: 2.6-4.4 us per (sequence, key) below it, 6.1-10.7 above; its 1 x 1024
prefill took 23-24 % longer than the line between its grid neighbours said), so a curve
interpolates only among the points of the query's regime (:func:`loglog`'s ``labels``), never
across the step.

No numpy: the table is small and this module is imported by the analytic side.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass, replace

from .dtypes import nbytes
from .errors import SpecError

FORMAT = "costmodel-op-table/1"

# glibc's malloc serves a request of at least its mmap threshold that its free heap space cannot
# hold with a fresh mmap, and frees it back to the kernel; the threshold rises with what is freed,
# up to DEFAULT_MMAP_THRESHOLD_MAX, 4 * 1024 * 1024 * sizeof(long) = 32 MiB on 64-bit
# (malloc/malloc.c). So on a CPU a tensor of 32 MiB or more is, as a rule, fresh memory every
# pass, page-faulted in as it is written, where a smaller one reuses the heap. Measured on the
# LLaMA-GQA bench model's decode attention (1 thread, Xeon VM, 30 points over batch 32-96 x
# context 128-384): 2.6-4.4 us per (sequence, key) while its
# repeat_kv copies stay under 32 MiB (up to 30.2 MiB), 6.1-10.7 us from 35 MiB up. Calibrate
# stores the threshold in a CPU table (``mmap_threshold_bytes``) and the table interpolates
# within a regime, never across the step (:meth:`OpTable.with_spec`).
MMAP_THRESHOLD_BYTES = 32 * 2**20


def spec_key(spec) -> str:
    """A fingerprint of every field of a :class:`~costmodel.spec.ModelSpec` (its repr): a table
    measured on one spec is never used for another that merely shares its name."""
    return hashlib.sha256(repr(spec).encode("utf-8")).hexdigest()[:16]


def loglog(xs, ys, x: float, labels=None, label=None) -> float:
    """Piecewise-linear interpolation of ``ys`` over ``xs`` in (log x, log y); ``xs`` ascending,
    all values > 0. Exact at the grid points; beyond the ends the end segment continues, its
    slope clamped at >= 0 (a time never shrinks as the work grows). One point: a constant.

    ``labels`` (one per point) and ``label`` (the query's): interpolate only among the points of
    the query's label (:func:`same_regime`), never across a step between regimes; a regime of
    one point scales it in proportion to x (the x of every curve of a table is the work: rows,
    score elements, keys), as its time per unit of work does above the step (measured: 235-264
    ns per score element from 32 to 50 MiB of scores, timing-llama-21m's prefill, 1 thread)."""
    if labels is not None:
        return _loglog_regime(xs, ys, x, labels, label)
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


def same_regime(labels, label) -> list[int]:
    """The indices of the points whose label is the query's; none: those of the nearest label
    (a tie: the higher one)."""
    if label in labels:
        return [i for i, l in enumerate(labels) if l == label]
    nearest = min(set(labels), key=lambda l: (abs(l - label), -l))
    return [i for i, l in enumerate(labels) if l == nearest]


def _loglog_regime(xs, ys, x: float, labels, label) -> float:
    keep = same_regime(labels, label)
    if len(keep) >= 2:
        return loglog([xs[i] for i in keep], [ys[i] for i in keep], x)
    if x <= 0:
        raise SpecError(f"op table: cannot interpolate at {x} (must be > 0)")
    (k,) = keep  # the one point of its regime: its time per unit of work (every x here is the work)
    return ys[k] * x / xs[k]


def bilinear_loglog(xs, ys, grid, x: float, y: float, label=None) -> float:
    """``grid[i][j]`` at (xs[i], ys[j]): :func:`loglog` along y in the two bracketing rows, then
    along x between them (exact at grid points). ``label(x, y)``: each point's regime (see
    :func:`loglog`): a row interpolates among its points of the regime of (its x, y), the column
    among the rows of the regime of (x, y)."""
    if label is None:
        col = [loglog(ys, row, y) for row in grid]
        return loglog(xs, col, x)
    col = [loglog(ys, row, y, [label(xi, yj) for yj in ys], label(xi, y)) for xi, row in zip(xs, grid)]
    return loglog(xs, col, x, [label(xi, y) for xi in xs], label(x, y))


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
    mmap_threshold_bytes: int | None = None  # a CPU table's (MMAP_THRESHOLD_BYTES); None: no regimes
    decode_rest: tuple = ()  # ((batch, context, total_s, attention_s), ...): more batches, for the rest only
    # Set by with_spec: (heads, kv heads, head dim, the widths of the row tensors, bytes per element)
    dims: tuple | None = None

    def with_spec(self, spec) -> "OpTable":
        """This table, knowing the tensor sizes of ``spec`` (the model it was measured on), so it
        interpolates each part within its mmap regime (:data:`MMAP_THRESHOLD_BYTES`)."""
        widths = tuple(sorted({spec.hidden_size, spec.q_size, spec.intermediate_size}))
        return replace(self, dims=(spec.num_heads, spec.num_kv_heads, spec.head_dim, widths, nbytes(1, self.dtype)))

    # --- the regimes ----------------------------------------------------------------------------
    @property
    def regimes(self) -> bool:
        """Whether the curves split at the mmap threshold (a CPU table bound to its spec)."""
        return self.mmap_threshold_bytes is not None and self.dims is not None

    def _count_over(self, sizes) -> int:
        return sum(n >= self.mmap_threshold_bytes for n in sizes)

    def attention_regime(self, batch: int, q_len: int, kv_len: int) -> int | None:
        """How many of the eager attention's fresh per-layer tensors reach the mmap threshold:
        the scores (and their scaled, masked and softmaxed copies), ``batch x heads x q_len x
        kv_len``, and with GQA the keys and values repeated for every query head, ``batch x heads
        x kv_len x head_dim``. None: no regimes (no threshold, or not bound to its spec)."""
        if not self.regimes:
            return None
        heads, kv_heads, d, _, e = self.dims
        sizes = [batch * heads * q_len * kv_len * e] + ([batch * heads * kv_len * d * e] if kv_heads != heads else [])
        return self._count_over(sizes)

    def rest_regime(self, rows: int) -> int | None:
        """How many of the row tensors' widths (hidden, q, MLP) reach the threshold at ``rows`` rows."""
        if not self.regimes:
            return None
        return self._count_over(rows * w * self.dims[4] for w in self.dims[3])

    # --- the curves -----------------------------------------------------------------------------

    def prefill_parts(self, batch: int, seq: int) -> dict:
        rest = [_floor_s(t - a) for t, a in zip(self.prefill_total_s, self.prefill_attention_s)]
        att = [_floor_s(v) for v in self.prefill_attention_s]
        tokens, on = self.prefill_tokens, self.regimes
        r = loglog(tokens, rest, batch * seq, [self.rest_regime(t) for t in tokens] if on else None,
                   self.rest_regime(batch * seq))
        a = loglog([t * t for t in tokens], att, batch * seq * seq,
                   [self.attention_regime(1, t, t) for t in tokens] if on else None,
                   self.attention_regime(batch, seq, seq))
        return {"rest_s": r, "attention_s": a, "seconds": r + a}

    def decode_rest_by_batch(self) -> tuple[list, list]:
        """(batches, rest_s): at each batch of the grid and of ``decode_rest``, the median of
        total - attention over the contexts it was timed at."""
        by: dict = {}
        for b, ts, as_ in zip(self.decode_batches, self.decode_total_s, self.decode_attention_s):
            by.setdefault(b, []).extend(t - a for t, a in zip(ts, as_))
        for b, _, t, a in self.decode_rest:
            by.setdefault(b, []).append(t - a)
        batches = sorted(by)
        return batches, [_floor_s(statistics.median(by[b])) for b in batches]

    def decode_parts(self, batch: int, context: int) -> dict:
        rest_batches, rest_by_batch = self.decode_rest_by_batch()
        keys = [c + 1 for c in self.decode_contexts]
        att = [[_floor_s(v) for v in row] for row in self.decode_attention_s]
        on = self.regimes
        r = loglog(rest_batches, rest_by_batch, batch, [self.rest_regime(b) for b in rest_batches] if on else None,
                   self.rest_regime(batch))
        a = bilinear_loglog(self.decode_batches, keys, att, batch, context + 1,
                            (lambda b, k: self.attention_regime(b, 1, k)) if on else None)
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
        return ((batch in self.decode_batches and context in self.decode_contexts)
                or any((batch, context) == (b, c) for b, c, _, _ in self.decode_rest))


# --- the stored format --------------------------------------------------------------------------

def _pos_number(where: str, name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (math.inf, -math.inf) or v < 0:
        raise SpecError(f"{where}: {name} must be a number >= 0, got {v!r}")
    return float(v)


def _pos_int(where: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpecError(f"{where}: {name} must be a whole number >= 1, got {v!r}")
    return v


def _decode_point(where: str, p) -> tuple:
    """(batch, context, total_s, attention_s) of one stored decode point (grid or rest)."""
    if not isinstance(p, dict):
        raise SpecError(f"{where} must be an object")
    return (_pos_int(where, "batch", p.get("batch")), _pos_int(where, "context", p.get("context")),
            _pos_number(where, "total_s", p.get("total_s")), _pos_number(where, "attention_s", p.get("attention_s")))


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
        b, c, total, att = _decode_point(f"{where}: decode[{i}]", p)
        if (b, c) in points:
            raise SpecError(f"{where}: decode repeats the point batch {b} context {c}")
        points[(b, c)] = (total, att)
    batches = sorted({b for b, _ in points})
    contexts = sorted({c for _, c in points})
    missing = [(b, c) for b in batches for c in contexts if (b, c) not in points]
    if missing:
        raise SpecError(f"{where}: the decode grid must be rectangular (every batch at every context); "
                        f"missing batch {missing[0][0]} context {missing[0][1]}")
    rest = d.get("decode_rest") or []
    if not isinstance(rest, list):
        raise SpecError(f"{where}: decode_rest must be a list of {{batch, context, total_s, attention_s}}")
    rest_points = [_decode_point(f"{where}: decode_rest[{i}]", p) for i, p in enumerate(rest)]
    threshold = d.get("mmap_threshold_bytes")
    if threshold is not None:
        _pos_int(where, "mmap_threshold_bytes", threshold)
    return OpTable(d["model"], d["spec_key"], d["dtype"], d["attention"], d["device"], d["threads"], d["clock"],
                   tuple(tokens), tuple(r[1] for r in rows), tuple(r[2] for r in rows),
                   tuple(batches), tuple(contexts),
                   tuple(tuple(points[(b, c)][0] for c in contexts) for b in batches),
                   tuple(tuple(points[(b, c)][1] for c in contexts) for b in batches), threshold,
                   tuple(sorted(rest_points)))


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
            return t.with_spec(spec)
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
