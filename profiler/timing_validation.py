"""`costmodel validate --timing`: roofline-predicted seconds against the reference model's measured ones.

Over a sweep of prefill passes and single cached decode steps (batch x context), each case runs the
reference model (eager attention: the scores are materialised, as :mod:`costmodel.analysis` counts
them) and is predicted on a hardware profile, normally one written by ``costmodel calibrate`` on the
same machine: by the profile's op table for the model where it has one, else by its generic curves
(the roofline's rates with :mod:`costmodel.curves`), else by the flat roofline; the flat roofline
without curves is always shown beside (``roofline_s``).

Measured time is the geometric mean of ``repeat`` visits to the case spread over the run (each a
warm-up and one timed pass: :func:`profiler.model_timing.time_cases`), on the per-thread CPU clock
at one CPU thread (:mod:`profiler.measure`; the same code times the op tables of
:mod:`profiler.optable`), with the visit-to-visit floor beside it. The model runs on ``--threads``, else
the number of threads the profile was calibrated with, else 1. Where the profile holds an op table
for the model (:mod:`costmodel.optable`), it makes the prediction and the others are shown beside.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodel.hardware import Hardware
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
    predicted_s: float  # the op table's interpolation where the profile has one for the model, else the roofline
    measured_s: float  # geometric mean of the visits (per-thread CPU clock at 1 thread; see profiler.measure)
    measured_median_s: float  # their median
    bound: str  # what the roofline says limits the pass: share of memory-bound time
    roofline_s: float | None = None  # the roofline's prediction (= predicted_s without an op table)
    table_s: float | None = None  # the op table's, when there is one
    curves_s: float | None = None  # the generic curves' (costmodel.curves), when the profile has them
    floor_pct: float = 0.0  # visit-to-visit floor (profiler.measure.floor_pct of the visits)
    measured_min_s: float | None = None
    runs: int = 0
    grid_point: bool = False  # the case is one of the op table's grid points (validation avoids them)

    @property
    def error_pct(self) -> float:
        """Signed: (predicted - measured) / measured x 100."""
        return (self.predicted_s - self.measured_s) / self.measured_s * 100.0

    @property
    def roofline_error_pct(self) -> float | None:
        if self.roofline_s is None:
            return None
        return (self.roofline_s - self.measured_s) / self.measured_s * 100.0

    @property
    def curves_error_pct(self) -> float | None:
        if self.curves_s is None:
            return None
        return (self.curves_s - self.measured_s) / self.measured_s * 100.0

    def to_dict(self) -> dict:
        return {"phase": self.phase, "batch": self.batch, "context": self.context,
                "predicted_s": self.predicted_s, "measured_s": self.measured_s,
                "measured_median_s": self.measured_median_s, "error_pct": self.error_pct,
                "bound": self.bound, "roofline_s": self.roofline_s, "roofline_error_pct": self.roofline_error_pct,
                "table_s": self.table_s, "curves_s": self.curves_s, "curves_error_pct": self.curves_error_pct,
                "floor_pct": self.floor_pct, "measured_min_s": self.measured_min_s,
                "runs": self.runs, "grid_point": self.grid_point}


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
    """Median, p90 and max absolute error of the cases' predictions, with the visit-to-visit floor
    (median and p90 over the cases of each one's :attr:`TimingCase.floor_pct`) beside them, and
    the roofline's own errors where an op table made the prediction."""
    errs = [abs(c.error_pct) for c in cases]
    floors = [c.floor_pct for c in cases]
    out = {"cases": len(errs), "median_abs_error_pct": percentile(errs, 50) if errs else None,
           "p90_abs_error_pct": percentile(errs, 90) if errs else None,
           "max_abs_error_pct": max(errs) if errs else None,
           "floor_median_pct": percentile(floors, 50) if floors else None,
           "floor_p90_pct": percentile(floors, 90) if floors else None,
           "predictor": ("op table" if cases and all(c.table_s is not None for c in cases) else
                         "curves" if cases and all(c.curves_s is not None for c in cases) else "roofline")}
    for name, errs_of in (("curves", lambda c: c.curves_error_pct), ("roofline", lambda c: c.roofline_error_pct)):
        e = [abs(errs_of(c)) for c in cases if errs_of(c) is not None]
        if e and out["predictor"] != name:
            out[f"{name}_median_abs_error_pct"] = percentile(e, 50)
            out[f"{name}_p90_abs_error_pct"] = percentile(e, 90)
    return out


def plan(quick: bool, spec: ModelSpec | None = None) -> list[tuple[str, int, int]]:
    """The cases: (phase, batch, context), clipped to ``spec``'s context length when given."""
    pre, dec = (QUICK_PREFILL_SHAPES, QUICK_DECODE_SHAPES) if quick else (PREFILL_SHAPES, DECODE_SHAPES)
    limit = (spec.max_position_embeddings if spec is not None else None) or 10**9
    return ([("prefill", b, s) for b, s in pre if s <= limit] +
            [("decode", b, s) for b, s in dec if s + 1 <= limit])


def _roofline(spec, wl, hw, batch, q_len, kv_len) -> tuple[float, str]:
    """The flat roofline without the profile's curves (the fallback and the explanation, shown
    beside the curves and the op table): its seconds, and the share of them memory-bound."""
    from costmodel.analysis import step_cost
    from costmodel.roofline import rates, step_time

    t = step_time(step_cost(spec, wl, batch, q_len, kv_len, 1), rates(hw, wl.act_dtype, wl.quant, curves=False))
    memory = t.bound_seconds()["memory"] / t.seconds if t.seconds else 0.0
    return t.seconds, f"{memory:.0%} memory"


def run_timing(hw: Hardware, *, quick: bool = False, device: str = "cpu", repeat: int = 5,
               threads: int | None = None, spec: ModelSpec = TIMING_SPEC, seed: int = 0, progress=None):
    """Yield a :class:`TimingCase` per shape as each finishes (fp32 weights and activations):
    every case is visited in ``repeat`` rounds (:func:`profiler.model_timing.time_cases`), so the
    cases finish in the last round; ``progress(round, repeat)`` is called after each round before.

    Threads: ``threads``, else the count the profile was calibrated with, else 1. The prediction
    is the profile's op table for ``spec`` where it has one, else its generic curves
    (:mod:`costmodel.curves`) where it has them, else the roofline; the others beside it."""
    import torch

    from costmodel.curves import curve_pass_seconds
    from costmodel.optable import table_for

    from .measure import PassTimer, set_threads
    from .model import build_model, check_device
    from .model_timing import time_cases
    from .optable import LONG_PASS_S

    dev = check_device(device)
    calibrated = (hw.calibration or {}).get("threads")
    restore = set_threads(threads or calibrated or 1)
    timer = PassTimer(dev.type, torch.get_num_threads())
    wl = Workload(batch=1, prompt=1, gen=1, weight_dtype="fp32", act_dtype="fp32")
    table = table_for(hw, spec, "fp32", "eager")
    try:
        model = build_model(spec, dtype="fp32", device=str(dev), seed=seed, attention="eager")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        cases, predicted = plan(quick, spec), []
        for phase, b, s in cases:
            q_len, kv_len = (s, s) if phase == "prefill" else (1, s + 1)
            roofline, bound = _roofline(spec, wl, hw, b, q_len, kv_len)
            tab = None if table is None else table.pass_seconds(b, q_len, kv_len)
            curves = curve_pass_seconds(spec, wl, hw, b, q_len, kv_len)
            predicted.append((tab if tab is not None else curves if curves is not None else roofline,
                              roofline, bound, tab, curves))
        with torch.inference_mode():
            for i, m in time_cases(model, spec, cases, dev, gen, timer, repeat, long_pass_s=LONG_PASS_S,
                                   seed=seed, progress=progress):
                (phase, b, s), (pred, roofline, bound, tab, curves) = cases[i], predicted[i]
                yield TimingCase(phase, b, s, pred, m["seconds"], m["seconds_median"], bound,
                                 roofline_s=roofline, table_s=tab, curves_s=curves, floor_pct=m["floor_pct"],
                                 measured_min_s=m["seconds_min"], runs=m["runs"],
                                 grid_point=table is not None and table.is_grid_point(phase, b, s))
    finally:
        restore()


def measurement_info(hw: Hardware, device: str, threads: int | None) -> dict:
    """How the cases were timed: the clock and thread count (as :func:`run_timing` chooses them)."""
    from .measure import clock_name

    n = threads or (hw.calibration or {}).get("threads") or 1
    return {"clock": clock_name(device, n), "threads": None if device == "cuda" else n,
            "statistic": "geometric mean of the visits: each case visited once a round, in rounds "
                         "spread over the run, warm-up passes for 30 ms (at least one), then while each is still 3 % faster "
                         "than the one before, up to 0.25 s (over 0.5 s: the first visit only), and one timed pass a visit",
            "floor": "median absolute deviation of the visits from their median, % of it"}


def table_drift(hw: Hardware, spec: ModelSpec, *, device: str = "cpu", threads: int | None = None,
                repeat: int = 3, seed: int = 0) -> dict | None:
    """How far the machine has moved since the op table was measured: two of its grid points (a
    mid-size prefill and a small decode step) timed again now, the same way (``repeat`` visits), as
    (now - table) / table x 100 each. None without a table. An error below this drift cannot be
    told from it: it is the calibration-to-validation floor, beside the run-to-run one."""
    import torch

    from costmodel.optable import table_for

    from .measure import PassTimer, set_threads
    from .model import build_model, check_device
    from .model_timing import time_cases
    from .optable import LONG_PASS_S

    table = table_for(hw, spec, "fp32", "eager")
    if table is None:
        return None
    dev = check_device(device)
    restore = set_threads(threads or (hw.calibration or {}).get("threads") or 1)
    timer = PassTimer(dev.type, torch.get_num_threads())
    t = table.prefill_tokens[len(table.prefill_tokens) // 2]
    b, c = table.decode_batches[min(1, len(table.decode_batches) - 1)], table.decode_contexts[0]
    points = [("prefill", 1, t, table.prefill_total_s[table.prefill_tokens.index(t)]),
              ("decode", b, c, table.decode_total_s[table.decode_batches.index(b)][0])]
    out = [None] * len(points)
    try:
        model = build_model(spec, dtype="fp32", device=str(dev), seed=seed, attention="eager")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.inference_mode():
            for i, m in time_cases(model, spec, [p[:3] for p in points], dev, gen, timer, repeat,
                                   long_pass_s=LONG_PASS_S, seed=seed):
                phase, pb, pc, then = points[i]
                out[i] = {"phase": phase, "batch": pb, "context": pc, "table_s": then, "now_s": m["seconds"],
                          "drift_pct": (m["seconds"] - then) / then * 100.0}
    finally:
        restore()
    return {"points": out, "max_abs_drift_pct": max(abs(p["drift_pct"]) for p in out)}
