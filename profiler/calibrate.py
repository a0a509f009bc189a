"""Measure the machine you have: matmul FLOP/s per dtype, memory bandwidth, per-op overhead.

:func:`calibrate` returns a hardware profile (a dict in the format of ``costmodel/data/hardware.json``)
that ``--hardware FILE`` accepts. Its peaks are the best this machine reached, so its efficiencies
are 1; the raw measurements are kept under ``calibration``. Importing this module imports torch.

What is measured, each as the fastest of repeated timed calls after a warm-up (the fastest, not
the median: on a shared machine other processes only ever slow a call down; the median is kept too):

- matmul ``[m, k] @ [k, n]`` at several shapes per dtype (square and decode-like skinny ones):
  FLOP/s = 2 m k n / seconds; the profile's peak for a dtype is the best shape's.
- memory bandwidth: a tensor copy (reads and writes N bytes: 2N moved) and an add (3N) into
  preallocated buffers much larger than the last-level cache; the profile keeps the best. The same
  add allocating its output, as eager ops do, is recorded too but not used: on a CPU a fresh large
  allocation page-faults, slowing the writes of big outputs (not the reads of weights) several
  times, which one bandwidth figure cannot express (see benchmarks/README.md).
- element-wise FLOP/s: softmax (5 FLOP an element) and SiLU (4), the counts of
  :mod:`costmodel.formulas`, over a cache-resident tensor, per floating-point dtype: on a CPU
  exp-heavy element-wise ops run far below the matmul peak (``elementwise_flops_per_s``).
- matmul weight streaming: ``F.linear`` with 1 and 8 rows over weights far larger than the cache,
  as a decode step reads them (``matmul_bandwidth_bytes_per_s``): on a CPU core a GEMV streams a
  matrix well below the copy bandwidth, and memory-bound matmuls are most of a decode step.
- per-op overhead: a one-element add (allocating its output), the time of a kernel launch (cuda) or of an eager op's
  dispatch (cpu) with no work to do; the roofline adds it to every op.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from costmodel.errors import SpecError
from costmodel.formulas import ACTIVATION_FLOPS_PER_ELEMENT, SOFTMAX_FLOPS_PER_ELEMENT

from .measure import clock_name, clock_ns, mmap_threshold_bytes

_TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
                 "fp16": torch.float16, "int8": torch.int8}
CPU_DTYPES = ("fp32", "bf16", "fp16")
CUDA_DTYPES = ("fp32", "tf32", "bf16", "fp16", "int8")
DEFAULT_DTYPES = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "tf32", "bf16", "fp16")}

# (m, k, n): square, then decode-like (few rows, a weight-sized matrix).
MATMUL_SHAPES = ((512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096),
                 (16, 4096, 4096))
QUICK_MATMUL_SHAPES = ((128, 128, 128), (256, 256, 256))
BANDWIDTH_BYTES = 256 * 2**20  # each buffer; well past any last-level cache
QUICK_BANDWIDTH_BYTES = 16 * 2**20
# The coldest weight pool of the matmul-by-rows curve, cycled so each call finds its weights
# cold. 64 MiB was cold on a 32 MiB-L3 EPYC but not on a Xeon VM reporting a 480 MiB L3 (1 row over 1024 x 4096
# matrices: 21.8 GB/s at 64 MiB, 16.1 at 128, 15.6 from 256 MiB up; benchmarks/README.md run I).
CURVE_COLD_BYTES = BANDWIDTH_BYTES
# The matmul-by-rows curve's pools: a pass of a model with fewer weight bytes finds them warmer (the
# same VM, 1 row over 1024 x 4096 matrices: 28.7 GB/s over 16 or 32 MiB, 27.8 over 64, 26.3 over
# 96, 23.6 over 128, 16.2 over 256; 4 rows 14.2, 13.9, 12.1, 9.8, 7.6), and the curves interpolate
# the rate by the pass's weight bytes (costmodel.curves).
CURVE_POOLS = (64 * 2**20, 128 * 2**20, CURVE_COLD_BYTES)
ELEMENTWISE_ELEMENTS = 1 << 18  # 1 MiB of fp32: cache-resident, so the arithmetic is what is timed


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def time_call(fn, device: str, min_time_s: float, min_reps: int = 3, max_reps: int = 1000
              ) -> tuple[float, float]:
    """(fastest, median) seconds of ``fn()`` over repeated calls (at least ``min_reps``, for about
    ``min_time_s``)."""
    sync = _sync(device)
    ns = clock_ns(clock_name(device, torch.get_num_threads()))  # per-thread CPU time at 1 thread
    fn()
    sync()  # warm-up: allocation, kernel selection, caches
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time_s and len(times) < max_reps):
        t0 = ns()
        fn()
        sync()
        times.append((ns() - t0) * 1e-9)
    return min(times), statistics.median(times)


def measure_matmul(dtype: str, shapes, device: str, min_time_s: float) -> list[dict]:
    rows = []
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    for m, k, n in shapes:
        if dtype == "int8":
            a = torch.randint(-8, 8, (m, k), dtype=torch.int8, device=device)
            b = torch.randint(-8, 8, (k, n), dtype=torch.int8, device=device)
            fn = (lambda a=a, b=b: torch._int_mm(a, b))
        else:
            a = torch.randn(m, k, device=device).to(_TORCH_DTYPES[dtype])
            b = torch.randn(k, n, device=device).to(_TORCH_DTYPES[dtype])
            fn = (lambda a=a, b=b: torch.matmul(a, b))
        s, med = time_call(fn, device, min_time_s)
        rows.append({"dtype": dtype, "m": m, "k": k, "n": n, "seconds": s, "median_seconds": med,
                     "flops_per_s": 2 * m * k * n / s})
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return rows


def measure_bandwidth(nbytes: int, device: str, min_time_s: float) -> list[dict]:
    n = nbytes // 4
    a = torch.rand(n, device=device)
    b = torch.rand(n, device=device)
    c = torch.empty(n, device=device)
    rows = []
    for kernel, fn, moved in (("copy", lambda: c.copy_(a), 2 * 4 * n),
                              ("add", lambda: torch.add(a, b, out=c), 3 * 4 * n),
                              ("add (allocating)", lambda: torch.add(a, b), 3 * 4 * n)):
        s, med = time_call(fn, device, min_time_s)
        rows.append({"kernel": kernel, "bytes": moved, "seconds": s, "median_seconds": med,
                     "bytes_per_s": moved / s})
    return rows


def measure_matmul_streaming(nbytes: int, device: str, min_time_s: float, rows=(1, 8)) -> list[dict]:
    """Weight-streaming rate of decode-like matmuls: ``F.linear(x[m, k], W[n, k])`` over a set of
    fp32 weight matrices that together are far larger than the last-level cache, cycled so every
    call reads its weights from memory. bytes_per_s = weight bytes / seconds (x and y are tiny)."""
    k, n = 1024, 4096
    count = max(2, nbytes // (4 * k * n))
    weights = [torch.rand(n, k, device=device) for _ in range(count)]
    out = []
    for m in rows:
        x = torch.rand(m, k, device=device)

        def fn():
            for w in weights:
                torch.nn.functional.linear(x, w)

        s, med = time_call(fn, device, min_time_s)
        moved = count * 4 * k * n
        out.append({"kernel": f"linear [{m}, {k}] x [{n}, {k}]^T, {count} matrices", "rows": m,
                    "bytes": moved, "seconds": s, "median_seconds": med, "bytes_per_s": moved / s})
    return out


def measure_elementwise(dtype: str, device: str, min_time_s: float,
                        elements: int = ELEMENTWISE_ELEMENTS) -> list[dict]:
    """FLOP/s of softmax and SiLU (FLOPs as costmodel.formulas counts them) per dtype."""
    x = torch.randn(elements // 512, 512, device=device).to(_TORCH_DTYPES[dtype])
    rows = []
    for kernel, per_element, fn in (
            ("softmax", SOFTMAX_FLOPS_PER_ELEMENT, lambda: torch.softmax(x, -1)),
            ("silu", ACTIVATION_FLOPS_PER_ELEMENT["silu"], lambda: torch.nn.functional.silu(x))):
        s, med = time_call(fn, device, min_time_s)
        rows.append({"dtype": dtype, "kernel": kernel, "elements": elements, "flops_per_element": per_element,
                     "seconds": s, "median_seconds": med, "flops_per_s": per_element * elements / s})
    return rows


def measure_op_overhead(device: str, calls: int, repeats: int = 5) -> float:
    """Seconds per op for a one-element add that allocates its output, as an eager model's ops do:
    launch (cuda) or dispatch (cpu) cost with no work (the fastest of ``repeats`` loops of
    ``calls`` calls)."""
    x = torch.ones(1, device=device)
    y = torch.ones(1, device=device)
    sync = _sync(device)
    for _ in range(10):
        torch.add(x, y)
    sync()
    per_op = []
    ns = clock_ns(clock_name(device, torch.get_num_threads()))
    for _ in range(repeats):
        t0 = ns()
        for _ in range(calls):
            torch.add(x, y)
        sync()
        per_op.append((ns() - t0) * 1e-9 / calls)
    return min(per_op)


# --- shape-aware curves (costmodel.curves): fp32, the median of the repeated calls -----------------

CURVE_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CURVE_MATRICES = ((512, 2048), (1024, 4096))  # (k, n): 4 and 16 MiB of fp32 weights
CURVE_ELEMENTWISE_ELEMENTS = (1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 22)
CURVE_ATTENTION = ((8, 64), (8, 512), (64, 256), (64, 1024), (256, 1024))  # (batch x heads, keys), d 64
QUICK_CURVE_ROWS = (1, 8, 64)
QUICK_CURVE_MATRICES = ((256, 1024),)
QUICK_CURVE_ELEMENTWISE_ELEMENTS = (1 << 10, 1 << 16)
QUICK_CURVE_ATTENTION = ((8, 64), (16, 256))
# The eager attention's score chain (EagerAttention minus its two matmuls: scale, causal mask,
# softmax, each writing a fresh scores tensor) over T x T scores of 8 heads: 0.1 to 60.5 MiB of
# scores, either side of glibc's 32 MiB mmap threshold (the Xeon VM, 1 thread: 1.9-2.3 ns per
# score element up to 0.5 MiB, 3.9-4.4 at 4.5-18 MiB, 5.5-5.6 at 40.5-60.5 MiB, where the
# analytic softmax op on the element-wise curve was 0.5).
CURVE_SCORE_CHAIN = (64, 128, 384, 768, 1152, 1408)
QUICK_CURVE_SCORE_CHAIN = (16, 48)
# GQA's repeat_kv over a cache slice, (batch, keys) of 2 kv heads x 5, d 64: 0.16 to 160 MiB out,
# three points below glibc's 32 MiB mmap threshold and two above (the Xeon VM, 1 thread: 23-25
# GB/s up to 10 MiB out, 3.0-3.6 GB/s from 40 MiB, the fresh output page-faulting).
CURVE_KV_REPEAT = ((1, 64), (4, 256), (8, 512), (16, 1024), (64, 1024))
QUICK_CURVE_KV_REPEAT = ((1, 16), (2, 64))


def measure_matmul_rows(device: str, min_time_s: float, pools=CURVE_POOLS, rows=CURVE_ROWS,
                        matrices=CURVE_MATRICES) -> list[dict]:
    """``F.linear(x[m, k], W[n, k])`` for each row count m, over a pool of ``pool_bytes`` of weight
    matrices (each of ``pools``), cycled so each call finds its weights as a pass through a model
    with that many weight bytes does. flops_per_s = 2 m k n / (median seconds per matrix)."""
    out = []
    for k, n in matrices:
        for pool in pools:
            count = max(2, pool // (4 * k * n))
            weights = [torch.rand(n, k, device=device) for _ in range(count)]
            for m in rows:
                x = torch.rand(m, k, device=device)

                def fn(x=x):
                    for w in weights:
                        torch.nn.functional.linear(x, w)

                _, med = time_call(fn, device, min_time_s)
                per = med / count
                out.append({"rows": m, "k": k, "n": n, "weight_bytes": 4 * k * n, "pool_bytes": count * 4 * k * n,
                            "matrices": count, "seconds": per, "flops_per_s": 2 * m * k * n / per})
            del weights
    return out


def measure_elementwise_bytes(device: str, min_time_s: float, sizes=CURVE_ELEMENTWISE_ELEMENTS) -> list[dict]:
    """An allocating ``torch.add(a, b)`` (as an eager model's element-wise ops allocate their
    outputs: large fresh outputs page-fault) at each size: seconds by bytes moved (3 x 4 N)."""
    out = []
    for n in sizes:
        a, b = torch.rand(n, device=device), torch.rand(n, device=device)
        _, med = time_call(lambda a=a, b=b: torch.add(a, b), device, min_time_s)
        out.append({"elements": n, "bytes": 12 * n, "seconds": med})
    return out


def measure_attention_slice(device: str, min_time_s: float, points=CURVE_ATTENTION, head_dim: int = 64,
                            cold_bytes: int = CURVE_COLD_BYTES) -> list[dict]:
    """A decode step's score matmul over a strided cache slice: ``q[BH, 1, d] @ k[:, :S]^T`` where
    the cache holds 2 S positions (the slice is not contiguous, as a preallocated cache's prefix
    is not), cycled over caches of ``cold_bytes`` together so each call finds its cache cold, as
    a decode step does once the other layers' caches and the weights have passed through.
    Seconds by the bytes the matmul reads and writes (k slice, q, scores)."""
    out = []
    for bh, keys in points:
        count = max(1, cold_bytes // (4 * bh * 2 * keys * head_dim))
        ks = [torch.rand(bh, 2 * keys, head_dim, device=device)[:, :keys] for _ in range(count)]
        q = torch.rand(bh, 1, head_dim, device=device)

        def fn(q=q, ks=ks):
            for k in ks:
                torch.matmul(q, k.transpose(-2, -1))

        _, med = time_call(fn, device, min_time_s)
        moved = 4 * (bh * keys * head_dim + bh * head_dim + bh * keys)
        out.append({"batch_heads": bh, "keys": keys, "head_dim": head_dim, "bytes": moved, "seconds": med / count,
                    "flops": 2 * bh * keys * head_dim, "caches": count})
        del ks
    return out


def measure_score_chain(device: str, min_time_s: float, tokens=CURVE_SCORE_CHAIN, heads: int = 8,
                        head_dim: int = 64) -> list[dict]:
    """The reference model's eager attention core over ``T x T`` causal scores (queries = keys =
    T, ``heads`` heads) minus its two matmuls timed alone: what the scale, the mask and the softmax
    cost together, by bytes of scores (4 x heads x T^2 in fp32)."""
    from .layers import EagerAttention

    core = EagerAttention()
    out = []
    for t in tokens:
        q, k, v = (torch.rand(1, heads, t, head_dim, device=device) for _ in range(3))
        _, full = time_call(lambda q=q, k=k, v=v: core(q, k, v, None, True), device, min_time_s)
        _, mms = time_call(lambda q=q, k=k, v=v: torch.matmul(torch.matmul(q, k.transpose(-2, -1)), v), device,
                           min_time_s)
        out.append({"heads": heads, "tokens": t, "head_dim": head_dim, "score_bytes": 4 * heads * t * t,
                    "seconds": max(full - mms, 1e-9), "attention_seconds": full, "matmul_seconds": mms})
        del q, k, v
    return out


def measure_kv_repeat(device: str, min_time_s: float, points=CURVE_KV_REPEAT, kv_heads: int = 2,
                      group: int = 5, head_dim: int = 64) -> list[dict]:
    """The eager reference's GQA repeat (:func:`profiler.layers.repeat_kv`) of a cache slice:
    ``k[:, :, :S]`` of a cache holding 2 S positions (strided, as a preallocated cache's prefix is)
    repeated for ``group`` query heads per kv head into a fresh tensor. Seconds by the bytes
    written (``group`` x the slice's bytes), what the score and value matmuls then read."""
    from .layers import repeat_kv

    out = []
    for batch, keys in points:
        k = torch.rand(batch, kv_heads, 2 * keys, head_dim, device=device)[:, :, :keys]
        _, med = time_call(lambda k=k: repeat_kv(k, group), device, min_time_s)
        out.append({"batch": batch, "kv_heads": kv_heads, "group": group, "keys": keys, "head_dim": head_dim,
                    "out_bytes": 4 * batch * kv_heads * group * keys * head_dim, "seconds": med})
        del k
    return out


def measure_kernel_in_pass(device: str, repeats: int = 20) -> dict:
    """The cost of an op inside a pass of a model, not of a bare op: one cached decode step of
    tiny-llama (2 layers, hidden 64: the arithmetic is negligible, the pass is dispatch and glue),
    median over ``repeats`` passes, divided by the ops costmodel counts in it."""
    from costmodel.analysis import step_cost
    from costmodel.models import get_model
    from costmodel.spec import Workload

    from .generate import decode_one_token
    from .model import build_model
    from .model_timing import _fill_caches

    spec = get_model("tiny-llama")
    model = build_model(spec, dtype="fp32", device=device, seed=0, attention="eager")
    context = 16
    model.setup_caches(1, context + 1)
    _fill_caches(model)
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    _, med = time_call(lambda: decode_one_token(model, token, context), device, 0.0, min_reps=repeats,
                       max_reps=repeats)
    wl = Workload(batch=1, prompt=1, gen=1, weight_dtype="fp32", act_dtype="fp32")
    ops = sum(n for n, _ in step_cost(spec, wl, 1, 1, context + 1, 1).weighted())
    return {"model": spec.name, "batch": 1, "context": context, "pass_seconds": med, "costed_ops": ops,
            "seconds_per_op": med / ops}


def measure_curves(device: str, quick: bool, min_time_s: float) -> dict:
    with torch.inference_mode():
        return {
            "matmul_rows": measure_matmul_rows(device, min_time_s, (QUICK_BANDWIDTH_BYTES,) if quick else CURVE_POOLS,
                                               QUICK_CURVE_ROWS if quick else CURVE_ROWS,
                                               QUICK_CURVE_MATRICES if quick else CURVE_MATRICES),
            "elementwise_bytes": measure_elementwise_bytes(
                device, min_time_s, QUICK_CURVE_ELEMENTWISE_ELEMENTS if quick else CURVE_ELEMENTWISE_ELEMENTS),
            "attention_slice": measure_attention_slice(device, min_time_s,
                                                       QUICK_CURVE_ATTENTION if quick else CURVE_ATTENTION,
                                                       cold_bytes=QUICK_BANDWIDTH_BYTES if quick else CURVE_COLD_BYTES),
            "score_chain": measure_score_chain(device, min_time_s,
                                               QUICK_CURVE_SCORE_CHAIN if quick else CURVE_SCORE_CHAIN),
            "kv_repeat": measure_kv_repeat(device, min_time_s, QUICK_CURVE_KV_REPEAT if quick else CURVE_KV_REPEAT),
            "mmap_threshold_bytes": mmap_threshold_bytes(device),
            "kernel_in_pass": measure_kernel_in_pass(device, 5 if quick else 20),
        }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _cpu_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_request(device: str, dtypes) -> tuple:
    """The dtypes to calibrate on ``device`` (default for None); SpecError for what cannot be."""
    if device not in ("cpu", "cuda"):
        raise SpecError(f"unknown device {device!r}; allowed: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device cuda is not available (torch {torch.__version__}, "
                        f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
    allowed = CPU_DTYPES if device == "cpu" else CUDA_DTYPES
    dtypes = tuple(DEFAULT_DTYPES[device] if not dtypes else dtypes)
    for d in dtypes:
        if d not in allowed:
            raise SpecError(f"cannot calibrate dtype {d!r} on {device}; allowed: {', '.join(allowed)}")
    return dtypes


def calibrate(device: str = "cpu", dtypes=None, quick: bool = False, threads: int | None = None,
              profile_id: str | None = None, min_time_s: float | None = None) -> dict:
    """Measure this machine and return a hardware profile dict (see the module docstring).
    ``min_time_s``: how long each measurement repeats its calls (default 0.75 s; quick 0.02 s)."""
    dtypes = check_request(device, dtypes)
    if threads is not None:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    min_time = min_time_s or (0.02 if quick else 0.75)  # long enough to catch uncontended calls on a shared machine
    shapes = QUICK_MATMUL_SHAPES if quick else MATMUL_SHAPES
    if device == "cpu" and not quick:
        shapes = tuple(s for s in shapes if s != (4096, 4096, 4096))  # ~1 s a call on a small CPU
    with torch.inference_mode():
        matmul = [row for d in dtypes for row in measure_matmul(d, shapes, device, min_time)]
        bandwidth = measure_bandwidth(QUICK_BANDWIDTH_BYTES if quick else BANDWIDTH_BYTES, device, min_time)
        streaming = measure_matmul_streaming(QUICK_BANDWIDTH_BYTES if quick else BANDWIDTH_BYTES, device,
                                             min_time)
        elementwise = [row for d in dtypes if d in ("fp32", "bf16", "fp16")
                       for row in measure_elementwise(d, device, min_time)]
        overhead = measure_op_overhead(device, 200 if quick else 2000)
    curves = measure_curves(device, quick, min(min_time, 0.25))
    peaks = {d: None for d in ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")}
    for row in matmul:
        peaks[row["dtype"]] = max(peaks[row["dtype"]] or 0.0, row["flops_per_s"])
    ew_peaks = {d: None for d in peaks}
    for row in elementwise:
        ew_peaks[row["dtype"]] = max(ew_peaks[row["dtype"]] or 0.0, row["flops_per_s"])
    best_bw = max(b["bytes_per_s"] for b in bandwidth if b["kernel"] != "add (allocating)")
    matmul_bw = max(b["bytes_per_s"] for b in streaming)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name, memory = props.name, props.total_memory
        nthreads = None
    else:
        nthreads = torch.get_num_threads()
        name, memory = f"{_cpu_name()} ({nthreads} threads)", _cpu_memory_bytes()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    how = f"measured by costmodel calibrate on {when} (torch {torch.__version__}"
    how += f", {nthreads} threads)" if nthreads else ")"
    return {
        "id": profile_id or f"calibrated-{device}",
        "name": name,
        "kind": "gpu" if device == "cuda" else "cpu",
        "peak_flops_per_s": peaks,
        "elementwise_flops_per_s": ew_peaks,
        "memory_bytes": memory,
        "memory_bandwidth_bytes_per_s": best_bw,
        "matmul_bandwidth_bytes_per_s": matmul_bw,
        "interconnect": None,
        "interconnect_bandwidth_bytes_per_s": None,
        "interconnect_gpus": 1,
        "pcie_bandwidth_bytes_per_s": None,
        "flops_efficiency": 1.0,
        "bandwidth_efficiency": 1.0,
        "op_overhead_s": overhead,
        "notes": "Peaks are the best this machine reached, so efficiencies are 1. Dtypes not "
                 "measured are null: calibrate them with --dtype.",
        "sources": {
            "peak_flops_per_s": f"{how}: best of torch.matmul (fastest call) over shapes "
                                f"{', '.join('x'.join(map(str, s)) for s in shapes)} per dtype",
            "memory_bytes": "torch.cuda.get_device_properties().total_memory" if device == "cuda"
            else "os.sysconf: physical pages x page size",
            "memory_bandwidth_bytes_per_s": f"{how}: best of a tensor copy (2 x bytes moved) and "
                                            "add (3 x bytes) into preallocated buffers",
            "matmul_bandwidth_bytes_per_s": f"{how}: weight bytes / seconds of F.linear with 1 and 8 rows "
                                            "over fp32 weight matrices far larger than the cache, best",
            "elementwise_flops_per_s": f"{how}: best of softmax (5 FLOP/element) and SiLU (4) over "
                                       f"{ELEMENTWISE_ELEMENTS} cache-resident elements per dtype",
            "op_overhead_s": f"{how}: per-call time of a one-element torch.add (fastest loop)",
        },
        "calibration": {
            "device": device, "torch_version": torch.__version__, "threads": nthreads, "quick": quick,
            "seconds_taken": time.perf_counter() - t_start,
            "matmul": matmul, "elementwise": elementwise, "bandwidth": bandwidth,
            "matmul_streaming": streaming, "op_overhead_s": overhead,
            "curves": curves,
        },
    }
