"""Sweeps: every (batch, prompt, gen) combination of a grid, one tidy row per phase, vectorized.

How the grid is computed: the analytic model's own functions (:func:`~costmodel.analysis.prefill_cost`,
:func:`~costmodel.analysis.decode_step_cost`, :func:`~costmodel.analysis.kv_cache_bytes`,
:func:`~costmodel.analysis.activation_peak_bytes`) are called once with numpy arrays in place of the
batch and prompt integers (``batch`` shaped [B, 1], ``prompt`` [1, P], broadcasting to [B, P]), so
there is no second copy of the formulas to drift. Gen enters only through the exact decode sum: step
costs are polynomials of degree <= 2 in the step number, so the decode total over gen - 1 steps is
``sum_quadratic(step 1, step 2, step 3, gen - 1)`` (the same closed form :func:`~costmodel.analysis.decode_cost`
uses, applied to phase totals instead of op by op: the sum is linear, so the integers are identical).

How counts stay exact: the computation is first run as a float64 *shadow* in which every numpy
operation records the largest magnitude it produced (inputs included). If no intermediate reaches
2**62 the real computation runs in int64, where every step is then exact (float64 is off by at most
~1e-13 relative, far inside the factor of two between 2**62 and int64's 2**63). Otherwise it runs on
numpy object arrays of Python ints, which cannot overflow; columns whose values fit in int64 are
converted back to int64, the others stay Python ints (CSV and JSON write them digit for digit).
A second guard checks the decode sums on exact int64 inputs (see :func:`_check_decode_sums`).
The grid is computed in blocks of batch rows (cache-sized arrays); each block decides for itself.
Routed experts without a KV cache have a few decode steps that are not polynomial in the step;
as :func:`~costmodel.analysis.decode_cost` does, those configurations are summed step by step.
Nothing is ever rounded through float; ``arithmetic_intensity`` and ``seconds`` are the only floats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from math import comb

import numpy as np

from costmodel import analysis
from costmodel import formulas as F
from costmodel.analysis import (Phase, activation_peak_bytes, decode_cost, decode_step_cost,
                                kv_cache_bytes, prefill_cost, weight_bytes)
from costmodel.errors import SpecError
from costmodel.spec import ModelSpec, Workload

PHASES = ("prefill", "decode")
COUNT_COLUMNS = ("steps", "flops", "matmul_flops", "bytes", "kv_cache_bytes", "weights_bytes",
                 "activation_peak_bytes")
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


@dataclass(frozen=True)
class GridWorkload:
    """A :class:`Workload` whose ``batch`` and ``prompt`` are numpy arrays (broadcasting together).

    Everything else (dtypes, logits, kv_cache, causal, beams, gen) is the base workload's, so the
    analysis functions take it in place of a Workload and compute the whole grid at once.
    """

    base: Workload
    batch: object  # integer array, e.g. shape [B, 1]
    prompt: object  # integer array, e.g. shape [1, P]

    def __getattr__(self, name):
        return getattr(self.base, name)


def _peak_magnitude(fn, *args, dtype=np.float64):
    """Run ``fn(*args, dtype)`` on float arrays that record the largest |value| any numpy
    operation takes or produces; return that magnitude.

    float64, not float32: the decode sum multiplies second differences (exactly 0 with a KV
    cache) by C(steps, 3); float32 rounding noise in them would inflate the bound needlessly.
    Rounding can only inflate or shift the bound by ~1e-13 relative, far inside the factor of 2
    between :data:`INT64_SAFE` and int64's limit."""
    peak = [0.0]

    class Shadow(np.ndarray):
        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            raw = []
            for x in inputs:
                if isinstance(x, Shadow):
                    x = x.view(np.ndarray)
                elif isinstance(x, (int, float)) and not isinstance(x, bool):
                    peak[0] = max(peak[0], abs(float(x)))
                raw.append(x)
            out = getattr(ufunc, method)(*raw, **kwargs)
            if isinstance(out, np.ndarray) and out.dtype.kind == "f":
                if out.size:
                    peak[0] = max(peak[0], float(out.max()), -float(out.min()))
                return out.view(Shadow)
            return out

    fn(*[np.asarray(a, dtype=dtype).view(Shadow) for a in args], dtype)
    return peak[0]


def _grid_counts(spec: ModelSpec, wl: Workload, batches, prompts, gens, dtype) -> dict:
    """Count columns shaped [B, P, G, 2] (last axis: prefill, decode) of ``dtype`` arrays.

    ``batches`` and ``prompts`` are 1-d arrays, ``gens`` a list of ints. Values that do not depend
    on gen are computed once on the [B, P] grid and broadcast along G.
    """
    B, P, G = len(batches), len(prompts), len(gens)
    gw = GridWorkload(wl, batches.reshape(B, 1), prompts.reshape(1, P))
    pre = Phase("prefill", 1, prefill_cost(spec, gw))
    steps = [Phase("decode", 1, decode_step_cost(spec, gw, i)) for i in (1, 2, 3)]
    out = {c: np.empty((B, P, G, 2), dtype=dtype) for c in COUNT_COLUMNS}

    def both_phases(col, value):  # value broadcasts to [B, P]; the same for every gen
        a = np.asarray(value)
        a = a[..., None] if a.ndim == 2 else a
        out[col][..., 0] = a
        out[col][..., 1] = a

    for col in ("flops", "matmul_flops", "bytes"):
        a = np.asarray(getattr(pre, col))
        out[col][..., 0] = a[..., None] if a.ndim == 2 else a
    out["steps"][..., 0] = 1
    kv = np.asarray(kv_cache_bytes(spec, gw, positions=gw.prompt))
    out["kv_cache_bytes"][..., 0] = kv[..., None] if kv.ndim == 2 else kv
    both_phases("activation_peak_bytes", activation_peak_bytes(spec, gw, pre.cost))
    both_phases("weights_bytes", weight_bytes(spec, wl.weight_dtype))
    step_totals = {c: [getattr(s, c) for s in steps] for c in ("flops", "matmul_flops", "bytes")}
    if dtype is np.int64:
        _check_decode_sums(step_totals, max(gens) - 1)
    for k, g in enumerate(gens):
        n = g - 1  # decode steps: the exact closed-form sum over steps 1 .. n
        for col, (s1, s2, s3) in step_totals.items():
            out[col][:, :, k, 1] = F.sum_quadratic(s1, s2, s3, n)
        out["steps"][:, :, k, 1] = n
        out["kv_cache_bytes"][:, :, k, 1] = kv_cache_bytes(spec, gw, positions=gw.prompt + n)
    for ib, ip in _irregular_pairs(spec, wl, batches, prompts):
        for k, g in enumerate(gens):
            d = Phase("decode", g - 1, decode_cost(spec, replace(wl, batch=int(batches[ib]),
                                                                  prompt=int(prompts[ip]), gen=g)))
            for col in ("flops", "matmul_flops", "bytes"):
                out[col][ib, ip, k, 1] = getattr(d, col)
    return out


class _NeedsPythonInts(Exception):
    """An int64 decode sum could pass 2**62: recompute the block in Python ints."""


def _check_decode_sums(step_totals: dict, n: int) -> None:
    """Second guard, on exact inputs: the float shadow can lose a small second difference d2 of
    huge step costs to rounding, and d2 * C(n, 3) can still be large. Here d1 and d2 are exact
    int64 (each step cost is below 2**62 by the shadow), so the float64 bound
    n |f1| + |d1| C(n, 2) + |d2| C(n, 3), which covers every partial sum of ``sum_quadratic``
    (and grows with n), is accurate to ~1e-16."""
    c2, c3 = float(comb(n, 2)), float(comb(n, 3))
    for s1, s2, s3 in step_totals.values():
        s1, s2, s3 = (np.asarray(x, dtype=np.int64) for x in (s1, s2, s3))
        d1, d2 = s2 - s1, s3 - 2 * s2 + s1
        bound = n * np.abs(s1.astype(np.float64)) + np.abs(d1.astype(np.float64)) * c2 + np.abs(d2.astype(np.float64)) * c3
        if bound.size and float(bound.max()) >= INT64_SAFE:
            raise _NeedsPythonInts


def _irregular_pairs(spec: ModelSpec, wl: Workload, batches, prompts) -> list[tuple[int, int]]:
    """(batch, prompt) indices whose decode costs are not polynomial in the step from step 1.

    Only routed experts without a KV cache have such steps (the experts read, min(E, tokens * k),
    grow until the recomputed prefix covers E); :func:`~costmodel.analysis.decode_cost` sums those
    steps one by one, and so does the sweep, for just those configurations.
    """
    first_step = getattr(analysis, "_first_polynomial_step", None)
    if first_step is None or not getattr(spec, "num_experts", 0) or wl.kv_cache:
        return []
    return [(ib, ip) for ib, b in enumerate(batches) for ip, p in enumerate(prompts)
            if first_step(spec, replace(wl, batch=int(b), prompt=int(p))) > 1]


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


def grid_counts(spec: ModelSpec, wl: Workload, batches, prompts, gens) -> tuple[dict, str]:
    """Exact count columns shaped [B, P, G, 2], and how they were computed ("int64" or "python-int")."""
    b = np.asarray(batches, dtype=np.int64)
    p = np.asarray(prompts, dtype=np.int64)
    g = [int(x) for x in gens]
    peak = _peak_magnitude(lambda bb, pp, dt: _grid_counts(spec, wl, bb, pp, g, dt), b, p)
    if peak < INT64_SAFE:
        try:
            return _grid_counts(spec, wl, b, p, g, np.int64), "int64"
        except _NeedsPythonInts:
            pass
    counts = _grid_counts(spec, wl, np.array([int(x) for x in batches], dtype=object),
                          np.array([int(x) for x in prompts], dtype=object), g, object)
    return _as_int_columns(counts), "python-int"


def require_decoder_only(spec: ModelSpec, what: str) -> None:
    """The grid evaluation covers decoder-only models; encoder and encoder-decoder models (an
    encode phase, cross-attention) are analysed one configuration at a time by ``report``."""
    arch = getattr(spec, "arch", "decoder")
    if arch != "decoder":
        raise SpecError(f"{what} covers decoder-only models; {spec.name} is {arch} "
                        "(use `costmodel report` for one configuration at a time)")


def _merge_blocks(blocks) -> tuple[dict, str]:
    """Concatenate per-block count columns along the batch axis: int64 if every block ran in
    int64, else exact Python ints (converted back to int64 column by column where they fit)."""
    if len(blocks) == 1:
        return blocks[0]
    if all(kind == "int64" for _, kind in blocks):
        return {c: np.concatenate([b[c] for b, _ in blocks]) for c in COUNT_COLUMNS}, "int64"
    merged = {c: np.concatenate([b[c].astype(object) for b, _ in blocks]) for c in COUNT_COLUMNS}
    return _as_int_columns(merged), "python-int"


def _check_grid(batches, prompts, gens) -> None:
    for name, vals in (("batch", batches), ("prompt", prompts), ("gen", gens)):
        if len(vals) == 0:
            raise SpecError(f"{name} has no values")
        for v in vals:
            if isinstance(v, bool) or int(v) != v or v <= 0:
                raise SpecError(f"{name} values must be positive integers, got {v!r}")
    n = len(batches) * len(prompts) * len(gens)
    if n > MAX_GRID_CONFIGS:
        raise SpecError(f"the grid has {n:,} (batch, prompt, gen) combinations; the limit is "
                        f"{MAX_GRID_CONFIGS:,}: narrow a range")


def sweep(spec: ModelSpec, workload: Workload | None, batches, prompts, gens, hardware=None):
    """Tidy DataFrame: one row per (batch, prompt, gen, phase), every combination of the grid.

    ``workload`` supplies everything but batch, prompt and gen (dtypes, logits, KV cache, causal,
    beams; its own batch/prompt/gen are ignored). Columns (:data:`COLUMNS`): exact integer counts
    (int64, or Python ints where a value passes int64), ``arithmetic_intensity`` (FLOP/byte), and
    ``seconds`` (roofline estimate of the phase) when ``hardware`` is given. ``steps`` is 1 for prefill
    and gen - 1 for decode; decode counts are totals over those steps. ``kv_cache_bytes`` is the cache
    held at the end of the phase (prompt, then prompt + gen - 1 positions, batch * beams sequences);
    ``weights_bytes`` and ``activation_peak_bytes`` (prefill's peak) are per configuration.
    The frame's ``attrs["arithmetic"]`` says whether the counts ran in int64 or Python ints.
    """
    import pandas as pd

    wl = workload or Workload()
    require_decoder_only(spec, "sweep")
    _check_grid(batches, prompts, gens)
    batches, prompts, gens = (sorted({int(v) for v in x}) for x in (batches, prompts, gens))
    step = max(1, BLOCK_PAIRS // len(prompts))  # blocks of batch rows; each picks its own arithmetic
    blocks, seconds = [], []
    for i in range(0, len(batches), step):
        counts, kind = grid_counts(spec, wl, batches[i:i + step], prompts, gens)
        blocks.append((counts, kind))
        if hardware is not None:
            from . import latency

            seconds.append(latency.phase_seconds(spec, wl, hardware, batches[i:i + step], prompts, gens,
                                                 exact_ints=kind == "python-int"))
    counts, arithmetic = _merge_blocks(blocks)
    shape = (len(batches), len(prompts), len(gens), 2)
    cols = {
        "batch": np.broadcast_to(np.asarray(batches, dtype=np.int64)[:, None, None, None], shape).ravel(),
        "prompt": np.broadcast_to(np.asarray(prompts, dtype=np.int64)[None, :, None, None], shape).ravel(),
        "gen": np.broadcast_to(np.asarray(gens, dtype=np.int64)[None, None, :, None], shape).ravel(),
        "phase": pd.Categorical.from_codes(np.broadcast_to(np.arange(2, dtype=np.int8), shape).ravel(),
                                           categories=list(PHASES)),
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
    return df


def write_frame(df, fmt: str, path: str | None) -> str | None:
    """Write ``df`` as csv, json (a list of records) or parquet to ``path`` atomically, or return
    the text (csv, json) when ``path`` is None. Parquet needs pyarrow and a path."""
    from .files import atomic_write

    if fmt == "parquet":
        table = _arrow_table(df)
        import pyarrow.parquet as pq

        if path is None:
            raise SpecError("--format parquet needs --out FILE (parquet is binary)")
        atomic_write(path, lambda f: pq.write_table(table, f), binary=True)
        return None
    if fmt == "csv":
        text = df.to_csv(index=False, lineterminator="\n")
    elif fmt == "json":
        text = df.to_json(orient="records", double_precision=15) + "\n"
    else:
        raise SpecError(f"unknown format {fmt!r}; allowed: csv, json, parquet")
    if path is None:
        return text
    atomic_write(path, lambda f: f.write(text))
    return None


def _arrow_table(df):
    """Arrow table of the frame; counts past int64 become decimal128(38, 0), still exact."""
    try:
        import pyarrow as pa
    except ImportError:
        raise SpecError("--format parquet needs pyarrow, which is not installed: "
                        "pip install 'costmodel[sweep]' (or pyarrow), or use --format csv/json") from None
    from decimal import Decimal

    arrays, names = [], []
    for c in df.columns:
        col = df[c]
        if col.dtype == object:
            arrays.append(pa.array([Decimal(int(v)) for v in col], type=pa.decimal128(38, 0)))
        else:
            arrays.append(pa.array(col))
        names.append(c)
    return pa.table(arrays, names=names)
