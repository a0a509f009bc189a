"""Sweeps: every (batch, prompt, gen) combination of a grid, one tidy row per phase, vectorized.

Phases are those of the model's architecture (:data:`ARCH_PHASES`): ``prefill`` and ``decode``
(decoder-only, MoE included), ``encode`` (encoder-only: one pass over the input; nothing is
generated, so the gen axis is collapsed to gen = 1), ``encode``, ``prefill`` and ``decode``
(encoder-decoder: ``prompt`` is the source the encoder reads, the decoder starts from the
workload's ``decoder_prompt`` tokens, and prefill projects the cross-attention keys and values once).

How the grid is computed: the analytic model's own functions (:func:`~costmodel.analysis.encode_cost`,
:func:`~costmodel.analysis.prefill_cost`, :func:`~costmodel.analysis.decode_step_cost`,
:func:`~costmodel.analysis.kv_cache_bytes`, :func:`~costmodel.analysis.cross_kv_cache_bytes`,
:func:`~costmodel.analysis.activation_peak_bytes`) are called once with numpy arrays in place of the
batch and prompt integers (``batch`` shaped [B, 1], ``prompt`` [1, P], broadcasting to [B, P]), so
there is no second copy of the formulas to drift. Where a formula branches on a size (``if
cross_len:``), the arrays (:class:`GridArray`) insist that the branch is the same at every grid
point. Gen enters only through the exact decode sum: step costs are polynomials of degree <= 2 in
the step number, so the decode total over gen - 1 steps is the exact prefix sum of
:mod:`costmodel.stepsum` from steps 1, 2 and 3 (with a sliding window, two polynomials split at
the step where the window fills, which depends on the prompt: :func:`~costmodel.stepsum.split_sum`
with the split an array over the prompts) (the same closed form
:func:`~costmodel.analysis.decode_cost` uses, applied to phase totals instead of op by op: the sum is
linear, so the integers are identical).

How counts stay exact: before a block runs in int64, its *corner* (largest batch, largest prompt,
every gen) is run as a float64 *shadow* in which every numpy operation records the largest
magnitude it produced (inputs included). Every quantity the formulas build is a sum and product of
sizes with non-negative coefficients, a min or max of such, or a difference of two such, so its
magnitude anywhere in the block is at most the largest magnitude at the corner (the one exception,
the Newton differences of the decode sum, is checked exactly on the int64 block, see
:func:`_check_decode_sums`, which also covers a sliding window's split sum: its split step falls
as the prompt grows, so its partial sums are bounded by the whole block's n-step bound, not the corner's; ``tests/test_sweep.py`` checks the corner bound against the element-wise
shadow of whole grids for every kind of model). If the corner stays below 2**62 the block runs in
int64, where every step is then exact (float64 is off by at most ~1e-13 relative, far inside the
factor of two between 2**62 and int64's 2**63). Otherwise it runs on numpy object arrays of Python
ints, which cannot overflow; columns whose values fit in int64 are converted back to int64, the
others stay Python ints (CSV and JSON write them digit for digit).
The grid is computed in blocks of batch rows (cache-sized arrays); each block decides for itself.
Routed experts without a KV cache have a few decode steps that are not polynomial in the step;
as :func:`~costmodel.analysis.decode_cost` does, those configurations are summed step by step.
Nothing is ever rounded through float; ``arithmetic_intensity`` and ``seconds`` are the only floats.
"""

from __future__ import annotations

import io
import re
from dataclasses import replace

import numpy as np

from costmodel import stepsum
from costmodel.analysis import (Phase, activation_peak_bytes, cross_kv_cache_bytes, decode_cost,
                                decode_step_cost, encode_cost, kv_cache_bytes, prefill_cost, slides,
                                weight_bytes, window_split)
from costmodel.dtypes import nbytes
from costmodel.errors import SpecError
from costmodel.spec import ModelSpec, Workload

from . import latency
from .grid import ARCH_PHASES, GridArray, grid_workload, irregular_pairs, phases_of

PHASES = ARCH_PHASES["decoder"]
COUNT_COLUMNS = ("steps", "flops", "matmul_flops", "bytes", "kv_cache_bytes", "weights_bytes",
                 "activation_peak_bytes", "cross_kv_cache_bytes")
COLUMNS = ("batch", "prompt", "gen", "phase") + COUNT_COLUMNS[:4] + ("arithmetic_intensity",) + COUNT_COLUMNS[4:]
INT64_SAFE = 2**62  # every intermediate below this: int64 arithmetic is exact
MAX_RANGE_VALUES = 1_000_000  # values one range may expand to
MAX_GRID_CONFIGS = 50_000_000  # batch x prompt x gen combinations one sweep may hold
BLOCK_PAIRS = 1 << 16  # (batch, prompt) pairs computed at once: the arrays stay in the CPU cache

_INT = r"\s*(\d+)\s*"
_RANGE = re.compile(rf"^{_INT}:{_INT}(?::\s*([x+*])\s*(\d+)\s*)?$")


def parse_range(text: str, name: str = "range") -> list[int]:
    """Positive integers from a range expression, sorted and without duplicates.

    Comma-separated items, each ``N``, ``START:STOP`` (step 1), ``START:STOP:+STEP`` (arithmetic) or
    ``START:STOP:xFACTOR`` (geometric, integer factor >= 2); STOP is included when a step hits it.
    ``128:32768:x2`` is 128, 256, ..., 32768; ``1,2,4,8`` is a list; ``100:400:+100`` is 100..400.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"{name} is empty; give e.g. 1,2,4 or 128:32768:x2 or 100:400:+100")
    values: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if re.fullmatch(r"\d+", item):
            v = int(item)
            if v <= 0:
                raise SpecError(f"{name} values must be positive integers, got {v}")
            values.add(v)
            continue
        m = _RANGE.match(item)
        if not m:
            raise SpecError(f"bad {name} {item!r}; allowed: N, N1,N2,..., START:STOP, START:STOP:+STEP "
                            "or START:STOP:xFACTOR with positive integers (e.g. 128:32768:x2)")
        start, stop = int(m.group(1)), int(m.group(2))
        kind, step = m.group(3) or "+", int(m.group(4) or 1)
        if start <= 0:
            raise SpecError(f"bad {name} {item!r}: START must be a positive integer, got {start}")
        if stop < start:
            raise SpecError(f"bad {name} {item!r}: STOP ({stop}) is below START ({start})")
        if kind in "x*":
            if step < 2:
                raise SpecError(f"bad {name} {item!r}: a geometric FACTOR must be an integer >= 2, got {step}")
            count = 1
            v = start
            while v * step <= stop:
                v *= step
                count += 1
        else:
            if step < 1:
                raise SpecError(f"bad {name} {item!r}: STEP must be a positive integer, got {step}")
            count = (stop - start) // step + 1
        if count > MAX_RANGE_VALUES:
            raise SpecError(f"{name} {item!r} expands to {count:,} values; the limit is {MAX_RANGE_VALUES:,}")
        if kind in "x*":
            v = start
            while v <= stop:
                values.add(v)
                v *= step
        else:
            values.update(range(start, stop + 1, step))
    return sorted(values)




def _peak_magnitude(fn, *args, dtype=np.float64):
    """Run ``fn(*args, dtype)`` on float arrays that record the largest |value| any numpy
    operation takes or produces; return that magnitude.

    float64, not float32: the decode sum multiplies second differences (exactly 0 with a KV
    cache) by C(steps, 3); float32 rounding noise in them would inflate the bound needlessly.
    Rounding can only inflate or shift the bound by ~1e-13 relative, far inside the factor of 2
    between :data:`INT64_SAFE` and int64's limit."""
    peak = [0.0]

    class Shadow(GridArray):
        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            raw = []
            for x in inputs:
                if isinstance(x, np.ndarray):
                    x = x.view(np.ndarray)
                elif isinstance(x, (int, float)) and not isinstance(x, bool):
                    peak[0] = max(peak[0], abs(float(x)))
                raw.append(x)
            out = getattr(ufunc, method)(*raw, **kwargs)
            if isinstance(out, np.ndarray) and out.dtype.kind == "f":
                if out.size:
                    peak[0] = max(peak[0], float(out.max()), -float(out.min()))
                return out.view(Shadow)
            return out.view(GridArray) if isinstance(out, np.ndarray) else out

    fn(*[np.asarray(a, dtype=dtype).view(Shadow) for a in args], dtype)
    return peak[0]


def _grid_counts(spec: ModelSpec, wl: Workload, batches, prompts, gens, dtype) -> dict:
    """Count columns shaped [B, P, G, F] of ``dtype`` arrays; the last axis is the phases of
    :func:`phases_of` (e.g. prefill, decode).

    ``batches`` and ``prompts`` are 1-d arrays, ``gens`` a list of ints. Values that do not depend
    on gen are computed once on the [B, P] grid and broadcast along G. Per phase, as ``analyze``:
    ``kv_cache_bytes`` is everything cached at the end of the phase (self-attention plus, for an
    encoder-decoder from prefill on, the cross-attention keys and values of the source) and
    ``cross_kv_cache_bytes`` its cross part; ``activation_peak_bytes`` the configuration's peak
    over its first passes (encode, prefill).
    """
    B, P, G = len(batches), len(prompts), len(gens)
    phases = phases_of(spec)
    gw = grid_workload(wl, batches.reshape(B, 1), prompts.reshape(1, P))
    out = {c: np.zeros((B, P, G, len(phases)), dtype=dtype) for c in COUNT_COLUMNS}

    def put(col, phase, value):  # value broadcasts to [B, P]; the same for every gen
        a = np.asarray(value)
        out[col][..., phases.index(phase)] = a[..., None] if a.ndim == 2 else a

    def put_totals(phase: Phase):
        for col in ("flops", "matmul_flops", "bytes"):
            put(col, phase.name, getattr(phase, col))
        put("steps", phase.name, phase.steps)

    peaks = []
    if "encode" in phases:
        enc = Phase("encode", 1, encode_cost(spec, gw))
        put_totals(enc)  # nothing is cached yet: the KV columns stay 0
        peaks.append(activation_peak_bytes(spec, gw, enc.cost))
    if "prefill" in phases:
        pre = Phase("prefill", 1, prefill_cost(spec, gw))
        put_totals(pre)
        if spec.arch == "encoder-decoder":  # the encoder output stays alive through the prefill
            start, cross = wl.decoder_prompt, cross_kv_cache_bytes(spec, gw)
            peaks.append(activation_peak_bytes(
                spec, gw, pre.cost, tokens=gw.batch * start,
                held=nbytes(gw.batch * gw.prompt * spec.hidden_size, wl.act_dtype)))
        else:
            start, cross = gw.prompt, 0
            peaks.append(activation_peak_bytes(spec, gw, pre.cost))
        put("kv_cache_bytes", "prefill", kv_cache_bytes(spec, gw, positions=start) + cross)
        put("cross_kv_cache_bytes", "prefill", cross)
        put("cross_kv_cache_bytes", "decode", cross)
        _decode_sums(spec, wl, gw, gens, out, phases.index("decode"), start, cross, dtype)
    peak = peaks[0]
    for p in peaks[1:]:
        peak = np.maximum(peak, p)
    for phase in phases:
        put("activation_peak_bytes", phase, peak)
        put("weights_bytes", phase, weight_bytes(spec, wl.weight_dtype, wl.quant))
    return out


def _decode_sums(spec, wl, gw, gens, out, j, start, cross, dtype) -> None:
    """Decode totals over gen - 1 steps into ``out[..., k, j]`` for each gen (k), exactly; with a
    sliding window, split where it fills (:func:`~costmodel.analysis.window_split`, per prompt)."""
    grow = [Phase("decode", 1, decode_step_cost(spec, gw, i, "growing")) for i in (1, 2, 3)]
    split = slides(spec, wl)
    full = [Phase("decode", 1, decode_step_cost(spec, gw, i, "full")) for i in (1, 2, 3)] if split else []
    step_totals = {c: [[getattr(s, c) for s in side] for side in (grow, full) if side]
                   for c in ("flops", "matmul_flops", "bytes")}
    if dtype is np.int64:
        for side in range(2 if split else 1):
            _check_decode_sums({c: sides[side] for c, sides in step_totals.items()}, max(gens) - 1)
    for k, g in enumerate(gens):
        n = g - 1  # decode steps: the exact closed-form sum over steps 1 .. n
        m = window_split(spec, gw, n)  # per prompt: the steps before the window is full
        for col, sides in step_totals.items():
            p = [stepsum.newton(*side) for side in sides]
            out[col][:, :, k, j] = stepsum.split_sum(p[0], p[1], m, n) if split else stepsum.prefix_sum(p[0], n)
        out["steps"][:, :, k, j] = n
        out["kv_cache_bytes"][:, :, k, j] = kv_cache_bytes(spec, gw, positions=start + n) + cross
    batches, prompts = gw.batch.ravel(), gw.prompt.ravel()
    for ib, ip in irregular_pairs(spec, wl, batches, prompts):
        for k, g in enumerate(gens):
            d = Phase("decode", g - 1, decode_cost(spec, replace(wl, batch=int(batches[ib]),
                                                                  prompt=int(prompts[ip]), gen=g)))
            for col in ("flops", "matmul_flops", "bytes"):
                try:
                    out[col][ib, ip, k, j] = getattr(d, col)
                except OverflowError:  # past int64: the block is redone in Python ints
                    raise _NeedsPythonInts from None


class _NeedsPythonInts(Exception):
    """An int64 decode sum could pass 2**62: recompute the block in Python ints."""


def _check_decode_sums(step_totals: dict, n: int) -> None:
    """Second guard, on exact inputs: the corner shadow bounds every step cost of the block, but
    the Newton differences d1, d2 of the steps need not be largest at the corner (nor survive float
    rounding of huge step costs), and d2 * C(n, 3) can still be large. Here s1, s2, s3 are exact
    int64 (each below 2**62 by the shadow), so d1 and d2 are exact, and the bound
    n max|s1| + max|d1| C(n, 2) + max|d2| C(n, 3), in Python ints over the whole block, covers
    every partial sum of ``stepsum.prefix_sum`` at every point (and grows with n)."""
    for s1, s2, s3 in step_totals.values():
        p = stepsum.newton(*(np.asarray(x, dtype=np.int64) for x in (s1, s2, s3)))
        bound = tuple(int(np.abs(x).max()) if x.size else 0 for x in p)
        if stepsum.prefix_sum(bound, n) >= INT64_SAFE:  # n m1 + m2 C(n, 2) + m3 C(n, 3)
            raise _NeedsPythonInts


def _as_int_columns(counts: dict) -> dict:
    """Object columns of Python ints back to int64 where every value fits; the rest stay exact."""
    out = {}
    for c, a in counts.items():
        if a.dtype == object:
            lo, hi = min(a.flat), max(a.flat)
            if -2**63 <= lo and hi < 2**63:
                a = a.astype(np.int64)
        out[c] = a
    return out


def corner_peak(spec: ModelSpec, wl: Workload, batches, prompts, gens) -> float:
    """Largest magnitude of any intermediate of the block's corner (largest batch and prompt, every
    gen): by the sizes' monotonicity (module docstring) a bound for the whole block."""
    b = np.asarray(batches, dtype=np.int64)
    p = np.asarray(prompts, dtype=np.int64)
    g = [int(x) for x in gens]
    return _peak_magnitude(lambda bb, pp, dt: _grid_counts(spec, wl, bb, pp, g, dt),
                           b.max(keepdims=True), p.max(keepdims=True))


def grid_counts(spec: ModelSpec, wl: Workload, batches, prompts, gens) -> tuple[dict, str]:
    """Exact count columns shaped [B, P, G, F], and how they were computed ("int64" or "python-int")."""
    b = np.asarray(batches, dtype=np.int64)
    p = np.asarray(prompts, dtype=np.int64)
    g = [int(x) for x in gens]
    if corner_peak(spec, wl, b, p, g) < INT64_SAFE:
        try:
            return _grid_counts(spec, wl, b, p, g, np.int64), "int64"
        except _NeedsPythonInts:
            pass
    counts = _grid_counts(spec, wl, np.array([int(x) for x in batches], dtype=object),
                          np.array([int(x) for x in prompts], dtype=object), g, object)
    return _as_int_columns(counts), "python-int"


def _merge_blocks(blocks) -> tuple[dict, str]:
    """Concatenate per-block count columns along the batch axis: int64 if every block ran in
    int64, else exact Python ints (converted back to int64 column by column where they fit)."""
    if len(blocks) == 1:
        return blocks[0]
    if all(kind == "int64" for _, kind in blocks):
        return {c: np.concatenate([b[c] for b, _ in blocks]) for c in COUNT_COLUMNS}, "int64"
    merged = {c: np.concatenate([b[c].astype(object) for b, _ in blocks]) for c in COUNT_COLUMNS}
    return _as_int_columns(merged), "python-int"


MAX_SWEEP_VALUE = 2**62 - 1  # batch, prompt and gen values index int64 arrays (the counts may pass it)


def check_grid(batches, prompts, gens) -> None:
    """Refuse, in one line, a grid that is empty, holds a value that is not a positive integer or
    is past :data:`MAX_SWEEP_VALUE`, or has more than :data:`MAX_GRID_CONFIGS` combinations
    (checked on the whole grid before anything is computed; the CLI computes it in chunks)."""
    for name, vals in (("batch", batches), ("prompt", prompts), ("gen", gens)):
        if len(vals) == 0:
            raise SpecError(f"{name} has no values")
        for v in vals:
            if isinstance(v, bool) or int(v) != v or v <= 0:
                raise SpecError(f"{name} values must be positive integers, got {v!r}")
            if v > MAX_SWEEP_VALUE:
                raise SpecError(f"{name} value {v} is past the sweep's limit of 2**62 - 1 (the grid indexes "
                                "int64 arrays; counts past int64 stay exact Python ints)")
    n = len(batches) * len(prompts) * len(gens)
    if n > MAX_GRID_CONFIGS:
        raise SpecError(f"the grid has {n:,} (batch, prompt, gen) combinations; the limit is "
                        f"{MAX_GRID_CONFIGS:,}: narrow a range")


_check_grid = check_grid


def sweep(spec: ModelSpec, workload: Workload | None, batches, prompts, gens, hardware=None):
    """Tidy DataFrame: one row per (batch, prompt, gen, phase), every combination of the grid.

    Phases are those of the architecture (:func:`phases_of`): prefill, decode (decoder-only);
    encode (encoder-only); encode, prefill, decode (encoder-decoder, ``prompt`` = the source).
    An encoder-only model generates nothing: its rows all have gen = 1 whatever ``gens`` says,
    and ``attrs["warnings"]`` says so when ``gens`` held another value.

    ``workload`` supplies everything but batch, prompt and gen (dtypes, logits, KV cache, causal,
    beams, decoder_prompt; its own batch/prompt/gen are ignored). Columns (:data:`COLUMNS`): exact
    integer counts (int64, or Python ints where a value passes int64), ``arithmetic_intensity``
    (FLOP/byte), and ``seconds`` (roofline estimate of the phase) when ``hardware`` is given.
    ``steps`` is 1 for encode and prefill and gen - 1 for decode; decode counts are totals over
    those steps. ``kv_cache_bytes`` is everything cached at the end of the phase (0 after encode;
    prompt, then prompt + gen - 1 self-attention positions, batch * beams sequences; plus, for an
    encoder-decoder, the cross-attention cache of the source, also given alone as
    ``cross_kv_cache_bytes``); ``weights_bytes`` and ``activation_peak_bytes`` (the peak of the
    first passes) are per configuration. Every count equals ``analyze`` of that configuration.
    The frame's ``attrs["arithmetic"]`` says whether the counts ran in int64 or Python ints.
    """
    import pandas as pd

    wl = workload or Workload()
    check_grid(batches, prompts, gens)
    wl.check_against(spec)  # what analyze refuses, the sweep refuses (warnings are the caller's)
    batches, prompts, gens = (sorted({int(v) for v in x}) for x in (batches, prompts, gens))
    warnings = []
    phases = phases_of(spec)
    if phases == ("encode",) and gens != [1]:
        warnings.append(f"{spec.name} is encoder-only: one encode pass, nothing generated; the gen axis "
                        f"({', '.join(map(str, gens[:4]))}{', ...' if len(gens) > 4 else ''}) is ignored "
                        "and every row has gen = 1")
    if phases == ("encode",):
        gens = [1]
    step = max(1, BLOCK_PAIRS // len(prompts))  # blocks of batch rows; each picks its own arithmetic
    blocks, seconds = [], []
    for i in range(0, len(batches), step):
        counts, kind = grid_counts(spec, wl, batches[i:i + step], prompts, gens)
        blocks.append((counts, kind))
        if hardware is not None:
            seconds.append(latency.phase_seconds(spec, wl, hardware, batches[i:i + step], prompts, gens,
                                                 exact_ints=kind == "python-int"))
    counts, arithmetic = _merge_blocks(blocks)
    shape = (len(batches), len(prompts), len(gens), len(phases))
    cols = {
        "batch": np.broadcast_to(np.asarray(batches, dtype=np.int64)[:, None, None, None], shape).ravel(),
        "prompt": np.broadcast_to(np.asarray(prompts, dtype=np.int64)[None, :, None, None], shape).ravel(),
        "gen": np.broadcast_to(np.asarray(gens, dtype=np.int64)[None, None, :, None], shape).ravel(),
        "phase": pd.Categorical.from_codes(np.broadcast_to(np.arange(len(phases), dtype=np.int8), shape).ravel(),
                                           categories=list(phases)),
    }
    flat = {c: a.ravel() for c, a in counts.items()}
    for c in COUNT_COLUMNS[:4]:
        cols[c] = flat[c]
    fl, by = (np.asarray(flat[c], dtype=np.float64) for c in ("flops", "bytes"))
    cols["arithmetic_intensity"] = np.divide(fl, by, out=np.zeros_like(fl), where=by > 0)
    for c in COUNT_COLUMNS[4:]:
        cols[c] = flat[c]
    df = pd.DataFrame(cols, copy=False)
    if hardware is not None:
        df["seconds"] = np.concatenate(seconds).ravel()
    df.attrs["arithmetic"] = arithmetic
    df.attrs["warnings"] = warnings
    return df


def write_frame(df, fmt: str, path: str | None) -> str | None:
    """Write ``df`` as csv, json (a list of records) or parquet to ``path`` atomically, or return
    the text (csv, json) when ``path`` is None. Parquet needs pyarrow and a path."""
    if fmt not in FORMATS:
        raise SpecError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if path is None:
        if fmt == "parquet":
            raise SpecError("--format parquet needs --out FILE (parquet is binary)")
        pieces: list[bytes] = []
        w = FrameWriter(fmt, None, emit=pieces.append)
        w.write(df)
        w.close()
        return b"".join(pieces).decode("utf-8")
    w = FrameWriter(fmt, path)
    try:
        w.write(df)
    except BaseException:
        w.discard()
        raise
    w.close()
    return None


FORMATS = ("csv", "json", "parquet")
SLICE_ROWS = 1 << 17  # rows rendered at once: a chunk's text never sits in memory whole


class FrameWriter:
    """Stream sweep frames (chunks of rows, in order) to one csv, json or parquet file.

    ``path`` None: csv and json bytes go to ``emit`` (e.g. stdout) as they are made. With a path,
    an atomic :class:`~reports.files.OutputFile`: :meth:`close` commits it onto ``path``, or, with
    ``partial=True`` (an interrupted sweep), onto ``<path>.partial``, leaving ``path`` untouched;
    :meth:`discard` removes it. The bytes are those of writing the concatenated frame at once:
    pandas' ``to_csv`` / ``to_json(orient="records", double_precision=15)``; CSV is rendered by
    pyarrow's writer where every column is int64, float64 or the phase (byte-identical, see
    :func:`csv_bytes`), by pandas where a column holds Python ints. Parquet: one row group per
    frame; counts past int64 are decimal128(38, 0), exact; a count of more than 38 digits, or a
    column that passes int64 only in a later chunk (parquet has one type per column), is refused
    in one line (csv and json keep every digit)."""

    def __init__(self, fmt: str, path: str | None, emit=None):
        from .files import OutputFile

        if fmt not in FORMATS:
            raise SpecError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
        self.fmt, self.path, self.rows = fmt, path, 0
        self._out = None if path is None else OutputFile(path, binary=True)
        self._emit = emit if path is None else self._out.file.write
        self._parquet = None
        self._first = True

    def write(self, df) -> None:
        if self.fmt == "parquet":
            self._write_parquet(df)
        else:
            for i in range(0, max(len(df), 1), SLICE_ROWS):
                part = df.iloc[i:i + SLICE_ROWS]
                if self.fmt == "csv":
                    self._emit(csv_bytes(part, header=self._first))
                    self._first = False
                elif len(part):
                    body = part.to_json(orient="records", double_precision=15)[1:-1]
                    self._emit((("[" if self._first else ",") + body).encode("utf-8"))
                    self._first = False
        self.rows += len(df)

    def _write_parquet(self, df) -> None:
        import pyarrow.parquet as pq

        table = _arrow_table(df)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._out.file, table.schema)
            self._schema = table.schema
        elif table.schema != self._schema:
            for name in table.schema.names:
                want, got = self._schema.field(name).type, table.schema.field(name).type
                if want != got and not (str(got) == "int64" and str(want).startswith("decimal")):
                    raise SpecError(f"column {name} passes int64 only from batch {int(df['batch'].iloc[0])} on; "
                                    "parquet takes one type per column: use --format csv or json (exact "
                                    "Python ints), or sweep that range separately")
            table = table.cast(self._schema)
        self._parquet.write_table(table)

    def close(self, partial: bool = False) -> str | None:
        """Finish the output; the path written (``<path>.partial`` when ``partial``), or None."""
        if self.fmt == "json":
            self._emit(b"[]\n" if self._first else b"]\n")
        if self._parquet is not None:
            self._parquet.close()
        if self._out is None:
            return None
        return self._out.commit(self.path + ".partial" if partial else None)

    def discard(self) -> None:
        if self._parquet is not None:
            try:
                self._parquet.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._parquet = None
        if self._out is not None:
            self._out.discard()


def csv_bytes(df, header: bool = True) -> bytes:
    """The frame as pandas' ``to_csv(index=False, lineterminator="\\n")`` writes it, in UTF-8.

    With pyarrow and columns that are all int64, float64 or categorical, pyarrow's CSV writer
    renders it (10x faster), with floats fixed to Python's ``repr`` (which pandas writes): pyarrow
    writes the same shortest digits but ``1`` for ``1.0``, ``0.00001`` for ``1e-05``, ``1e-9`` for
    ``1e-09`` and ``1e+10`` for ``10000000000.0``; those values (found with numpy) get ``repr``.
    NaN, which pandas writes as an empty field, and object columns (Python ints past int64) go
    through pandas."""
    head = (",".join(map(str, df.columns)) + "\n").encode("utf-8") if header else b""
    if not len(df):
        return head
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv
    except ImportError:
        pa = None
    import pandas as pd

    kinds = {df[c].dtype.kind for c in df.columns if not isinstance(df[c].dtype, pd.CategoricalDtype)}
    if pa is None or not kinds <= {"i", "u", "f"} or not all(map(str.isidentifier, map(str, df.columns))):
        return head + df.to_csv(index=False, header=False, lineterminator="\n").encode("utf-8")
    arrays = []
    for c in df.columns:
        col = df[c]
        if col.dtype.kind == "f":
            a = col.to_numpy()
            if np.isnan(a).any():
                return head + df.to_csv(index=False, header=False, lineterminator="\n").encode("utf-8")
            text = pa.array(a).cast(pa.string())
            m = np.abs(a)
            # Python's repr differs from pyarrow's: whole numbers (".0"), |x| < 1e-4 (scientific),
            # |x| >= 1e10 (pyarrow turns scientific at 1e10, Python at 1e16); inf is "inf" in both
            fix = ((a == np.floor(a)) | (m < 1e-4) | (m >= 1e10)) & np.isfinite(a)
            if fix.any():
                text = pc.replace_with_mask(text, pa.array(fix), pa.array([repr(float(x)) for x in a[fix]],
                                                                           type=pa.string()))
            arrays.append(text)
        elif isinstance(col.dtype, pd.CategoricalDtype):  # the phase: a dictionary of plain words
            arrays.append(pa.array(col))
        else:
            arrays.append(pa.array(col.to_numpy()))
    table = pa.table(arrays, names=[str(c) for c in df.columns])
    buf = io.BytesIO()
    pcsv.write_csv(table, buf, pcsv.WriteOptions(include_header=False, quoting_style="none"))
    return head + buf.getvalue()


def _arrow_table(df):
    """Arrow table of the frame; counts past int64 become decimal128(38, 0), still exact; a count
    of more than 38 digits is refused in one line."""
    try:
        import pyarrow as pa
    except ImportError:
        raise SpecError("--format parquet needs pyarrow, which is not installed: "
                        "pip install 'llm-costmodel[sweep]' (or pyarrow), or use --format csv/json") from None
    from decimal import Decimal

    arrays, names = [], []
    for c in df.columns:
        col = df[c]
        if col.dtype == object:
            top = max(abs(int(v)) for v in col) if len(col) else 0
            if top >= 10**38:
                raise SpecError(f"column {c} holds a count of {len(str(top))} digits, past parquet's "
                                "decimal128 (38 digits): use --format csv or json (exact Python ints)")
            arrays.append(pa.array([Decimal(int(v)) for v in col], type=pa.decimal128(38, 0)))
        else:
            arrays.append(pa.array(col))
        names.append(c)
    return pa.table(arrays, names=names)
