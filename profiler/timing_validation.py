"""`costmodel validate --timing`: roofline-predicted seconds against the reference model's measured ones.

Over a sweep of prefill passes and single cached decode steps (batch x context), each case runs the
reference model (eager attention: the scores are materialised, as :mod:`costmodel.analysis` counts
them) and is predicted with :func:`costmodel.roofline.pass_seconds` on a hardware profile, normally
one written by ``costmodel calibrate`` on the same machine.

Measured time is the fastest of ``repeat`` timed passes after a warm-up, as calibration measures
its peaks (on a shared machine other processes only ever slow a pass down); the median is kept too.
The model runs on the number of threads the profile was calibrated with, when it records one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from costmodel.hardware import Hardware
from costmodel.roofline import pass_seconds
from costmodel.spec import ModelSpec, Workload

# A LLaMA-style model big enough that its matmuls, not per-op dispatch, dominate on a CPU, and
# small enough to run a sweep in seconds: 4 layers, h 512, 8 heads, SwiGLU 1376, vocab 8192 (21 M).
TIMING_SPEC = ModelSpec(name="timing-llama-21m", num_layers=4, hidden_size=512, num_heads=8,
                        intermediate_size=1376, vocab_size=8192, max_position_embeddings=2048)

# (batch, context): prefill passes over the context; decode steps attending over context + 1 keys.
PREFILL_SHAPES = ((1, 32), (1, 128), (1, 512), (1, 1024), (4, 64), (4, 256), (16, 64))
DECODE_SHAPES = ((1, 64), (1, 1024), (4, 256), (8, 64), (8, 512), (32, 128), (64, 256))
QUICK_PREFILL_SHAPES = ((1, 128), (1, 512), (4, 128))
QUICK_DECODE_SHAPES = ((1, 128), (8, 256), (32, 128))


@dataclass(frozen=True)
class TimingCase:
    phase: str  # "prefill" (a pass over `context` tokens) or "decode" (one step over context + 1 keys)
    batch: int
    context: int
    predicted_s: float
    measured_s: float  # fastest of the repeats
    measured_median_s: float
    bound: str  # what the roofline says limits the pass: share of memory-bound time

    @property
    def error_pct(self) -> float:
        """Signed: (predicted - measured) / measured x 100."""
        return (self.predicted_s - self.measured_s) / self.measured_s * 100.0

    def to_dict(self) -> dict:
        return {"phase": self.phase, "batch": self.batch, "context": self.context,
                "predicted_s": self.predicted_s, "measured_s": self.measured_s,
                "measured_median_s": self.measured_median_s, "error_pct": self.error_pct,
                "bound": self.bound}


def percentile(values, q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(cases) -> dict:
    errs = [abs(c.error_pct) for c in cases]
    return {"cases": len(errs), "median_abs_error_pct": percentile(errs, 50) if errs else None,
            "p90_abs_error_pct": percentile(errs, 90) if errs else None,
            "max_abs_error_pct": max(errs) if errs else None}


def plan(quick: bool) -> list[tuple[str, int, int]]:
    pre, dec = (QUICK_PREFILL_SHAPES, QUICK_DECODE_SHAPES) if quick else (PREFILL_SHAPES, DECODE_SHAPES)
    return [("prefill", b, s) for b, s in pre] + [("decode", b, s) for b, s in dec]


def _bound(spec, wl, hw, batch, q_len, kv_len) -> str:
    from costmodel.analysis import step_cost
    from costmodel.roofline import rates, step_time

    t = step_time(step_cost(spec, wl, batch, q_len, kv_len, 1), rates(hw, wl.act_dtype, wl.quant))
    share = t.bound_seconds()
    memory = share["memory"] / t.seconds if t.seconds else 0.0
    return f"{memory:.0%} memory"


def run_timing(hw: Hardware, *, quick: bool = False, device: str = "cpu", repeat: int = 5,
               threads: int | None = None, spec: ModelSpec = TIMING_SPEC, seed: int = 0):
    """Yield a :class:`TimingCase` per shape as each finishes (fp32 weights and activations)."""
    import torch

    from .generate import decode_one_token, prefill
    from .model import build_model, check_device

    dev = check_device(device)
    calibrated = (hw.calibration or {}).get("threads")
    old_threads = torch.get_num_threads()
    if threads or calibrated:
        torch.set_num_threads(threads or calibrated)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    wl = Workload(batch=1, prompt=1, gen=1, weight_dtype="fp32", act_dtype="fp32")
    try:
        model = build_model(spec, dtype="fp32", device=str(dev), seed=seed, attention="eager")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.inference_mode():
            for phase, b, s in plan(quick):
                tokens = torch.randint(0, spec.vocab_size, (b, s + 1), generator=gen).to(dev)
                model.setup_caches(b, s + 1)
                if phase == "prefill":
                    def run():
                        return prefill(model, tokens[:, :s])
                    predicted = pass_seconds(spec, wl, hw, batch=b, q_len=s, kv_len=s)
                    bound = _bound(spec, wl, hw, b, s, s)
                else:
                    prefill(model, tokens[:, :s])  # fill the cache; the step then attends over s + 1 keys

                    def run():
                        return decode_one_token(model, tokens[:, s:], s)
                    predicted = pass_seconds(spec, wl, hw, batch=b, q_len=1, kv_len=s + 1)
                    bound = _bound(spec, wl, hw, b, 1, s + 1)
                run()  # warm-up
                sync()
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter_ns()
                    run()
                    sync()
                    times.append((time.perf_counter_ns() - t0) * 1e-9)
                model.drop_caches()
                yield TimingCase(phase, b, s, predicted, min(times), statistics.median(times), bound)
    finally:
        torch.set_num_threads(old_threads)
