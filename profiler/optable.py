"""``costmodel calibrate --model MODEL``: measure one model's op table (format: :mod:`costmodel.optable`).

The reference model of MODEL (fp32 weights and activations, eager attention, seeded random weights)
runs over a prefill grid of token counts (batch 1) and a rectangular decode grid of
(batch, context) points; the points are timed by :func:`profiler.model_timing.time_cases`: every
point visited in ``repeat`` rounds spread over the run (3; quick 2), each visit warm-ups, one
unhooked pass and a hooked one for the attention share; a point's time is the geometric mean of
its visits.

The rows' part of a decode step is also timed at every batch 1-16 at the first context
(:data:`DECODE_REST_BATCHES`, stored as ``decode_rest``). The grids are chosen to be *off* the
shapes ``costmodel validate --timing`` checks (so validation interpolates: its decode batches 4 and
8 are timed here at context 24 alone, for the rows' part; their attention, at 64-512 keys, is
interpolated), and are clipped to the model's context length. They take one to two minutes for a
20-50 M-parameter model on one core of a small CPU (see benchmarks/README.md).
"""

from __future__ import annotations

import time

import torch

from costmodel.optable import FORMAT, parse_op_table, spec_key
from costmodel.spec import ModelSpec

from .measure import (PassTimer, clock_name, clock_ns, load_between, load_snapshot, mmap_threshold_bytes,
                      set_threads)
from .model_timing import time_cases

PREFILL_TOKENS = (16, 48, 96, 192, 384, 640, 896, 1280)
DECODE_BATCHES = (1, 2, 6, 16, 48, 96)
DECODE_CONTEXTS = (24, 96, 192, 384, 1536)
QUICK_PREFILL_TOKENS = (8, 24)
LONG_PASS_S = 0.5  # a point whose warm-up pass took longer than this skips it on later visits
QUICK_DECODE_BATCHES = (1, 3)
QUICK_DECODE_CONTEXTS = (12, 40)
# The rows' part of a decode step (projections, MLP, LM head: ``rest_s``) is also timed at every
# batch 1-16, at the grid's first context (``decode_rest``): below 16 rows a CPU's matmuls step every
# 3 rows, which no sparse grid follows (cold 1024 x 4096 fp32 weights, 1 thread, Xeon VM: 0.92-0.99
# ms for 1-3 rows, 2.00-2.10 for 4-6, 2.71-2.85 for 7-9, 3.30-3.42 for 10-12, 3.86-4.01 for 13-15,
# then 2.65 at 16, the blocked kernel).
DECODE_REST_BATCHES = tuple(range(1, 17))
QUICK_DECODE_REST_BATCHES = (1, 2)


def grids(spec: ModelSpec, quick: bool = False):
    """(prefill token counts, decode batches, decode contexts) for ``spec``, clipped to its
    context length (a decode step at context c needs c + 1 positions)."""
    pre, bat, ctx = ((QUICK_PREFILL_TOKENS, QUICK_DECODE_BATCHES, QUICK_DECODE_CONTEXTS) if quick else
                     (PREFILL_TOKENS, DECODE_BATCHES, DECODE_CONTEXTS))
    limit = spec.max_position_embeddings or max(pre + ctx) + 1
    pre = tuple(t for t in pre if t <= limit) or (min(limit, pre[0]),)
    ctx = tuple(c for c in ctx if c + 1 <= limit) or (max(1, min(limit - 1, ctx[0])),)
    return pre, bat, ctx


def measure_op_table(spec: ModelSpec, *, device: str = "cpu", threads: int | None = 1, quick: bool = False,
                     repeat: int | None = None, seed: int = 0, progress=None) -> dict:
    """The op table of ``spec`` on this machine (a dict in :data:`costmodel.optable.FORMAT`)."""
    from .model import build_model, check_device

    dev = check_device(device)
    restore = set_threads(threads)
    nthreads = torch.get_num_threads()
    clock = clock_name(dev.type, nthreads)
    timer = PassTimer(dev.type, nthreads)
    hooks_ns = clock_ns(clock) if clock != "cuda" else "cuda"  # a GPU: CUDA event pairs
    repeat = repeat or (2 if quick else 3)
    pre, bat, ctx = grids(spec, quick)
    t0, before = time.perf_counter(), load_snapshot()
    try:
        model = build_model(spec, dtype="fp32", device=str(dev), seed=seed, attention="eager")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        rest_batches = QUICK_DECODE_REST_BATCHES if quick else DECODE_REST_BATCHES
        cases = ([("prefill", 1, t) for t in pre] + [("decode", b, c) for b in bat for c in ctx] +
                 [("decode", b, ctx[0]) for b in rest_batches if b not in bat])
        rows = [None] * len(cases)
        done = (lambda r, n: progress(f"op table {spec.name}: round {r}/{n} of {len(cases)} points")) if progress else None
        with torch.inference_mode():
            for i, m in time_cases(model, spec, cases, dev, gen, timer, repeat, hooks_ns, LONG_PASS_S, seed, done):
                phase, b, c = cases[i]
                row = {"tokens": c} if phase == "prefill" else {"batch": b, "context": c}
                rows[i] = {**row, "total_s": m["seconds"], "attention_s": m.get("attention_s", 0.0),
                           "floor_pct": m["floor_pct"]}
                if progress:
                    progress(f"op table {spec.name}: {phase} batch {b} context {c} {m['seconds'] * 1e3:.2f} ms")
        n_grid = len(pre) + len(bat) * len(ctx)
        prefill_rows, decode_rows, rest_rows = rows[:len(pre)], rows[len(pre):n_grid], rows[n_grid:]
    finally:
        restore()
    table = {"format": FORMAT, "model": spec.name, "spec_key": spec_key(spec), "dtype": "fp32",
             "attention": "eager", "device": dev.type, "threads": None if dev.type == "cuda" else nthreads,
             "clock": clock, "mmap_threshold_bytes": mmap_threshold_bytes(dev.type), "repeats": repeat,
             "prefill": prefill_rows, "decode": decode_rows, "decode_rest": rest_rows,
             "seconds_taken": time.perf_counter() - t0, "load": load_between(before, load_snapshot()),
             "torch_version": torch.__version__}
    parse_op_table(table, f"op table of {spec.name}")  # what the profile will accept
    return table
