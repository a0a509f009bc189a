"""Run the reference model and hold its measurements against the analytic model, op by op.

:func:`count` runs one generation under the FLOP counters and compares, per phase, per decode
step, per layer and per op, the analytic matmul FLOPs with FlopCounterMode's and fvcore's (x2),
and the analytic KV-cache bytes with the bytes of the cache tensors. :func:`profile` adds timing
(warm-up, visits in rounds, median, spread and load), the instrumentation's own cost, and the decode loop
with versus without a KV cache. Both return objects; rendering lives in ``reports/profile.py``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from costmodel.analysis import (Analysis, analyze, cross_kv_cache_bytes, decode_step_cost, encode_cost,
                                kv_cache_bytes, prefill_cost)
from costmodel.errors import SpecError
from costmodel.ops import registered
from costmodel.spec import ModelSpec, Workload, decoder_start

from .flops import SDPA_OPS, StepCount, count_call, fvcore_count, is_matmul_like
from .generate import NO_PROBE, Probe, encode, generate, random_prompt
from .model import Transformer, build_model, check_device, check_supported
from .sampling import Sampler, Strategy
from .timing import Stats, TimingProbe

SAMPLING = "sampling"  # every analytic sampling_* op, measured as one module (the Sampler)
CONVENTIONS = {
    "flops": "2 FLOPs per multiply-add (torch's FlopCounterMode convention); matmul FLOPs only",
    "fvcore_matmul_flops": "fvcore's count x2: fvcore counts 1 per multiply-add",
    "decode": "totals over the gen - 1 decode steps",
    "bytes": "bytes; seconds: seconds (median of the runs, with min and max)",
}


def check_buildable(spec: ModelSpec, wl: Workload) -> None:
    """Refuse, with one line, what the reference model cannot run."""
    check_supported(spec)
    if wl.weight_dtype != wl.act_dtype or wl.kv_dtype != wl.act_dtype:
        raise SpecError("the reference model keeps weights, activations and the KV cache in one dtype; "
                        f"got weights {wl.weight_dtype}, activations {wl.act_dtype}, KV {wl.kv_dtype}")
    if wl.causal:
        raise SpecError("the counters count full attention scores (the mask is applied after the matmul); "
                        "profile with causal=False")
    if spec.arch == "decoder" and wl.final_context > spec.max_position_embeddings:
        raise SpecError(f"context {wl.final_context} (prompt {wl.prompt} + gen {wl.gen} - 1) exceeds "
                        f"{spec.name}'s max_position_embeddings {spec.max_position_embeddings}")
    warnings = wl.check_against(spec)
    if spec.arch != "decoder":  # learned or sinusoidal tables end at max_position_embeddings
        too_long = [w for w in warnings if "exceeds" in w]
        if too_long:
            raise SpecError(too_long[0])


# --- analytic side ------------------------------------------------------------------------

def analytic_matmul(cost, sdpa: bool) -> dict[tuple, int]:
    """{(layer, op): matmul FLOPs} of a StepCost, keyed as the counters are attributed."""
    out: dict[tuple, int] = defaultdict(int)
    for layer, o in cost.rows():
        if o.op.startswith("sampling_"):
            out[(None, SAMPLING)] += o.matmul_flops
        elif o.kind == "matmul":
            op = o.op
            if sdpa and op in ("attn_scores", "attn_values", "cross_attn_scores", "cross_attn_values"):
                op = ("cross_" if op.startswith("cross_") else "") + SDPA_OPS
            out[(layer, op)] += o.matmul_flops
    return out


# --- comparison ---------------------------------------------------------------------------

@dataclass(frozen=True)
class OpRow:
    """One (phase, layer, op): analytic matmul FLOPs beside the counters' (decode: sum over steps)."""

    phase: str
    layer: int | None
    op: str
    analytic_matmul_flops: int
    counted_matmul_flops: int  # FlopCounterMode, 2 per multiply-add
    fvcore_matmul_flops: int | None  # fvcore x2 (it counts 1 per multiply-add); None: not run

    @property
    def match(self) -> bool:
        return self.counted_matmul_flops == self.analytic_matmul_flops and (
            self.fvcore_matmul_flops is None or self.fvcore_matmul_flops == self.analytic_matmul_flops)

    def to_dict(self) -> dict:
        return {"phase": self.phase, "layer": self.layer, "op": self.op,
                "analytic_matmul_flops": self.analytic_matmul_flops,
                "counted_matmul_flops": self.counted_matmul_flops,
                "fvcore_matmul_flops_x2": self.fvcore_matmul_flops,
                "difference": self.counted_matmul_flops - self.analytic_matmul_flops,
                "match": self.match}


@dataclass(frozen=True)
class Mismatch:
    """What differs, where: ``step`` is the decode step (None: the phase total)."""

    phase: str
    step: int | None
    layer: int | None
    op: str
    what: str  # "counted_matmul_flops", "fvcore_matmul_flops_x2" or "kv_cache_bytes"
    analytic: int
    measured: int

    def __str__(self) -> str:
        where = self.phase + (f" step {self.step}" if self.step is not None else "")
        layer = f" layer {self.layer}" if self.layer is not None else ""
        return (f"{where}{layer} {self.op}: {self.what} analytic {self.analytic:,} "
                f"!= measured {self.measured:,} (difference {self.measured - self.analytic:+,})")

    def to_dict(self) -> dict:
        return {"phase": self.phase, "step": self.step, "layer": self.layer, "op": self.op,
                "what": self.what, "analytic": self.analytic, "measured": self.measured}


@dataclass
class CountResult:
    """Counted and analytic FLOPs and KV bytes of one generation."""

    spec: ModelSpec
    workload: Workload
    attention: str
    analysis: Analysis
    rows: list[OpRow]
    kv_cache_bytes: dict[str, int]  # measured from the cache tensors at the end of each phase
    analytic_kv_cache_bytes: dict[str, int]
    weight_bytes: int
    mismatches: list[Mismatch]
    flop_counter_uncounted_ops: dict[str, int]  # aten op -> calls that FlopCounterMode had no formula for
    fvcore_skipped_ops: dict[str, int] | None  # op -> calls fvcore did not count
    steps: int
    # encoder-decoder: the cross-attention part of kv_cache_bytes, measured and analytic, per phase
    cross_kv_cache_bytes: dict[str, int] = field(default_factory=dict)
    analytic_cross_kv_cache_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases run and compared: encode, prefill, decode where they apply (decode: gen > 1)."""
        return tuple(p for p in self.analysis.phases if p != "decode" or self.workload.gen > 1)

    def phase_total(self, phase: str, key: str) -> int | None:
        vals = [getattr(r, key) for r in self.rows if r.phase == phase]
        if any(v is None for v in vals):
            return None
        return sum(vals)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def phase_dict(self, phase: str) -> dict:
        d = {
            "analytic_matmul_flops": self.phase_total(phase, "analytic_matmul_flops"),
            "counted_matmul_flops": self.phase_total(phase, "counted_matmul_flops"),
            "fvcore_matmul_flops": self.phase_total(phase, "fvcore_matmul_flops"),  # x2 to our convention
            "kv_cache_bytes": self.kv_cache_bytes[phase],
            "analytic_kv_cache_bytes": self.analytic_kv_cache_bytes[phase],
        }
        if self.spec.arch == "encoder-decoder":  # the total above split into self and cross caches
            cross, a_cross = self.cross_kv_cache_bytes[phase], self.analytic_cross_kv_cache_bytes[phase]
            d.update(self_kv_cache_bytes=d["kv_cache_bytes"] - cross,
                     analytic_self_kv_cache_bytes=d["analytic_kv_cache_bytes"] - a_cross,
                     cross_kv_cache_bytes=cross, analytic_cross_kv_cache_bytes=a_cross)
        return d

    def uncounted_matmul_ops(self) -> list[str]:
        """Matmul-class ops a counter skipped: must be empty for the counts to be complete."""
        return sorted(op for op in self.flop_counter_uncounted_ops if is_matmul_like(op))


@contextmanager
def _sliding_caches_kept(model):
    """Run the body, then restore every :class:`~profiler.layers.SlidingKVCache` of ``model`` as it was
    (its update appends, so a second run of the same pass would hold more positions)."""
    from .layers import SlidingKVCache

    saved = [(m, m.k.clone(), m.v.clone(), m.held, m.rows_used) for m in model.modules()
             if isinstance(m, SlidingKVCache)]
    try:
        yield
    finally:
        for m, k, v, held, rows in saved:
            m.k.copy_(k)
            m.v.copy_(v)
            m.held, m.rows_used = held, rows


class CountingProbe(Probe):
    """Counts every forward pass and every pick of the generation loop, step by step."""

    def __init__(self, model: Transformer, fvcore: bool):
        self.model_ref, self.fvcore = model, fvcore
        self.steps: dict[tuple[str, int], StepCount] = {}
        self.kv_bytes: dict[str, int] = {}
        self.cross_kv_bytes: dict[str, int] = {}
        self.uncounted: Counter = Counter()
        self.fvcore_skipped: Counter = Counter()

    @contextmanager
    def phase(self, name):
        yield
        self.kv_bytes[name] = self.model_ref.kv_cache_bytes()
        if hasattr(self.model_ref, "cross_kv_cache_bytes"):
            self.cross_kv_bytes[name] = self.model_ref.cross_kv_cache_bytes()

    def model(self, phase, step, model, fn, *args):
        fv = None
        if self.fvcore:  # tracing runs the pass once: a full cache rewrites the same slots, a sliding
            with _sliding_caches_kept(model):  # one would append again, so its state is put back
                fv = fvcore_count(model, fn, *args)
        out, sc = count_call(fn, model, *args)
        if fv is not None:
            sc.fvcore, sc.fvcore_total = fv.fvcore, fv.fvcore_total
            self.fvcore_skipped.update(fv.fvcore_skipped)
        self.steps[(phase, step)] = sc
        self.uncounted.update(sc.uncounted)
        return out

    def sample(self, phase, step, sampler, logits):
        out, sc = count_call(sampler, logits, as_op=SAMPLING)
        into = self.steps[(phase, step)]
        into.counted[(None, SAMPLING)] += sc.counted[(None, SAMPLING)]
        if into.fvcore is not None:
            into.fvcore.setdefault((None, SAMPLING), 0)  # not traced: no matmul in the sampler (counted above)
        self.uncounted.update(sc.uncounted)
        return out


def _compare(phase, step, analytic: dict, sc: StepCount, mismatches: list) -> None:
    keys = set(analytic) | set(sc.counted) | set(sc.fvcore or {})
    for layer, op in sorted(keys, key=_order):
        a = analytic.get((layer, op), 0)
        c = sc.counted.get((layer, op), 0)
        if c != a:
            mismatches.append(Mismatch(phase, step, layer, op, "counted_matmul_flops", a, c))
        if sc.fvcore is not None:
            f = sc.fvcore.get((layer, op), 0)
            if f != a:
                mismatches.append(Mismatch(phase, step, layer, op, "fvcore_matmul_flops_x2", a, f))


def _measured_order() -> list[str]:
    """Keys of the measured ops in execution order: the registered ops a reference module produces
    (costmodel.ops), the fused SDPA key after each ``attn_scores``, then the sampler, the rest."""
    order = []
    for info in registered():
        if info.modules:
            order.append(info.name)
            if info.name.endswith("attn_scores"):
                order.append(info.name.removesuffix("attn_scores") + SDPA_OPS)
    return order + [SAMPLING, "unattributed"]


_OP_ORDER = _measured_order()
_AFTER_BLOCKS = ("pooler", "mlm_dense", "lm_head", SAMPLING, "unattributed")


def _order(key):
    layer, op = key
    return (-1 if layer is None and op not in _AFTER_BLOCKS else
            (10**9 if layer is None else layer),
            _OP_ORDER.index(op) if op in _OP_ORDER else len(_OP_ORDER), op)


def inputs(spec: ModelSpec, wl: Workload, seed: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Seeded token ids: (prompt, None), or for an encoder-decoder (decoder prompt, source)."""
    if spec.arch == "encoder-decoder":
        return (random_prompt(spec, wl.batch, wl.decoder_prompt, seed + 1, device),
                random_prompt(spec, wl.batch, wl.prompt, seed, device))
    return random_prompt(spec, wl.batch, wl.prompt, seed, device), None


def run_workload(model: Transformer, wl: Workload, prompt, source, sampler: Sampler, probe: Probe = NO_PROBE):
    """One run of ``wl``: an encoder-only model's encode pass, or a generation (encoder first, if any)."""
    if model.spec.arch == "encoder":  # BERT: one bidirectional pass, nothing generated
        with probe.phase("encode"):
            return probe.model("encode", 0, model, encode, prompt)
    return generate(model, prompt, wl.gen, sampler, kv_cache=wl.kv_cache, logits=wl.logits, probe=probe,
                    **({} if source is None else {"source": source}))


def count(spec: ModelSpec, wl: Workload, *, attention: str = "sdpa", device: str = "cpu", seed: int = 0,
          fvcore: bool = True, model: Transformer | None = None, weights: str | None = None) -> CountResult:
    """One generation under the counters; every step and op compared with the analytic model."""
    check_buildable(spec, wl)
    if model is None:
        model = build_model(spec, dtype=wl.act_dtype, device=device, seed=seed, attention=attention,
                            weights=weights, mla=wl.mla)
    elif spec.mla and model.mla != wl.mla:
        raise SpecError(f"the model runs latent attention in form {model.mla!r}, the workload asks for "
                        f"{wl.mla!r}; build it with mla={wl.mla!r}")
    dev = next(model.parameters()).device
    prompt, source = inputs(spec, wl, seed, dev)
    probe = CountingProbe(model, fvcore)
    run_workload(model, wl, prompt, source, Sampler(Strategy.of(wl), seed, dev), probe)
    sdpa = model.attention == "sdpa"
    result = analyze(spec, wl)
    mismatches: list[Mismatch] = []
    phases = [p for p in result.phases if p != "decode" or wl.gen > 1]
    # Per pass: encode and prefill once, each decode step against decode_step_cost(i).
    one_pass = {"encode": encode_cost, "prefill": prefill_cost}
    for p in phases:
        if p in one_pass:
            _compare(p, None, analytic_matmul(one_pass[p](spec, wl), sdpa), probe.steps[(p, 0)], mismatches)
    dec_counted = StepCount()
    dec_counted.fvcore = {} if fvcore else None
    for i in range(1, wl.gen if "decode" in phases else 1):
        sc = probe.steps[("decode", i)]
        _compare("decode", i, analytic_matmul(decode_step_cost(spec, wl, i), sdpa), sc, mismatches)
        for k, v in sc.counted.items():
            dec_counted.counted[k] += v
        if fvcore:
            for k, v in sc.fvcore.items():
                dec_counted.fvcore[k] = dec_counted.fvcore.get(k, 0) + v
    # Phase totals: decode summed over the N - 1 steps (the analytic side by its closed form).
    rows = []
    for phase in phases:
        analytic = analytic_matmul(result.phases[phase].cost, sdpa)
        sc = dec_counted if phase == "decode" else probe.steps[(phase, 0)]
        keys = set(analytic) | set(sc.counted) | set(sc.fvcore or {})
        for layer, op in sorted(keys, key=_order):
            rows.append(OpRow(phase, layer, op, analytic.get((layer, op), 0), sc.counted.get((layer, op), 0),
                              None if sc.fvcore is None else sc.fvcore.get((layer, op), 0)))
        if phase == "decode":  # the phase total, from the closed form, against the sum of the steps
            _compare("decode", None, analytic, sc, mismatches)
    # KV cache: measured bytes of the written part of the cache tensors vs the analytic bytes.
    # The encoder caches nothing. After prefill the cache holds the (decoder) prompt of the batch's
    # sequences (beams fan out at the first decode step), and an encoder-decoder's cross cache the
    # source; after decode, (decoder) prompt + gen - 1 positions of batch * beams rows.
    start = decoder_start(spec, wl)
    one = replace(wl, beams=1)
    analytic_cross = {"encode": 0, "prefill": cross_kv_cache_bytes(spec, one),
                      "decode": result.memory.cross_kv_cache_bytes}
    analytic_kv = {"encode": 0, "prefill": kv_cache_bytes(spec, one, positions=start) + analytic_cross["prefill"],
                   "decode": result.memory.kv_cache_bytes}
    analytic_kv = {p: analytic_kv[p] for p in result.phases}
    analytic_cross = {p: analytic_cross[p] for p in result.phases}
    kv = {p: probe.kv_bytes.get(p, 0) for p in result.phases}
    cross = {p: probe.cross_kv_bytes.get(p, 0) for p in result.phases}
    for phase in phases:
        if spec.arch == "encoder-decoder":  # self-attention and cross-attention caches, each exact
            for what, a, m in (("self_kv_cache_bytes", analytic_kv[phase] - analytic_cross[phase],
                                kv[phase] - cross[phase]),
                               ("cross_kv_cache_bytes", analytic_cross[phase], cross[phase])):
                if a != m:
                    mismatches.append(Mismatch(phase, None, None, what[:-len("_bytes")], what, a, m))
        elif kv[phase] != analytic_kv[phase]:
            mismatches.append(Mismatch(phase, None, None, "kv_cache", "kv_cache_bytes", analytic_kv[phase], kv[phase]))
    weight = model.weight_bytes()
    if weight != result.memory.weights_bytes:
        mismatches.append(Mismatch("model", None, None, "weights", "weight_bytes", result.memory.weights_bytes, weight))
    return CountResult(spec, wl, model.attention, result, rows, kv, analytic_kv, weight, mismatches,
                       dict(probe.uncounted), dict(probe.fvcore_skipped) if fvcore else None, wl.decode_steps,
                       cross, analytic_cross)


# --- timing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimingRow:
    phase: str
    layer: int | None
    part: str  # "layer", "projections", "attention core", "mlp", "lm_head", "sampling", "other", "total"
    stats: Stats

    def to_dict(self) -> dict:
        return {"phase": self.phase, "layer": self.layer, "part": self.part, **self.stats.to_dict()}


@dataclass
class ProfileResult:
    """Counts (:class:`CountResult`) plus timings, instrumentation overhead and the KV-cache speed-up."""

    counts: CountResult
    device: str
    dtype: str
    repeat: int
    warmup: int
    phase_seconds: dict[str, Stats]
    timing: list[TimingRow]
    overhead: dict
    kv_cache_speedup: dict | None
    peak_memory_bytes: dict[str, int] | None  # torch.cuda.max_memory_allocated per phase; None on CPU
    measurement: dict | None = None  # clock, threads, visits, statistic, floor per phase, load

    def phase_dict(self, phase: str) -> dict:
        wl, a = self.counts.workload, self.counts.analysis.phases[phase]
        d = self.counts.phase_dict(phase)
        st = self.phase_seconds[phase]
        d.update(st.to_dict())
        d["analytic_flops"] = a.flops
        d["achieved_matmul_flops_per_s"] = d["analytic_matmul_flops"] / st.median if st.median else None
        start = decoder_start(self.counts.spec, wl)
        tokens = wl.batch * {"encode": wl.prompt, "prefill": start}.get(phase, wl.decode_steps)
        d["tokens"] = tokens
        d["tokens_per_s"] = tokens / st.median if st.median else None
        d["peak_memory_bytes"] = None if self.peak_memory_bytes is None else self.peak_memory_bytes.get(phase)
        return d

    def to_dict(self) -> dict:
        c = self.counts
        phases = c.phases
        mem = {}
        if c.spec.arch == "encoder-decoder":
            mem = {k: v for k, v in c.phase_dict(phases[-1]).items() if "self_kv" in k or "cross_kv" in k}
        return {
            "conventions": CONVENTIONS,
            "model": c.spec.summary(),
            "workload": c.workload.resolved(),
            "device": self.device,
            "dtype": self.dtype,
            "attention": c.attention,
            "repeat": self.repeat,
            "warmup": self.warmup,
            **{p: self.phase_dict(p) for p in phases},
            "memory": {"weight_bytes": c.weight_bytes, "analytic_weight_bytes": c.analysis.memory.weights_bytes,
                       "kv_cache_bytes": c.kv_cache_bytes[phases[-1]],
                       "analytic_kv_cache_bytes": c.analysis.memory.kv_cache_bytes, **mem,
                       "peak_memory_bytes": self.peak_memory_bytes},
            "kv_cache_speedup": self.kv_cache_speedup,
            "instrumentation_overhead": self.overhead,
            "ops": [r.to_dict() for r in c.rows],
            "timing": [t.to_dict() for t in self.timing],
            "skipped_ops": {"flop_counter": c.flop_counter_uncounted_ops, "fvcore": c.fvcore_skipped_ops,
                            "uncounted_matmul_ops": c.uncounted_matmul_ops()},
            "mismatches": [m.to_dict() for m in c.mismatches],
            "match": c.ok,
            "measurement": self.measurement,
        }


def _median_parts(runs: list[dict]) -> list[TimingRow]:
    """Per-op totals of each repeat -> one row per key with the median and spread over repeats."""
    keys = sorted({k for r in runs for k in r}, key=lambda k: (k[0] != "prefill", k[1] is not None,
                                                            k[1] if k[1] is not None else -1, k[2]))
    rows = [TimingRow(ph, layer, part, Stats.of(r.get((ph, layer, part), 0.0) for r in runs))
            for ph, layer, part in keys]
    for ph in {k[0] for k in keys}:  # what no hook covers: embedding, final norm, cache reorder, loop
        other = [r[(ph, None, "total")] - sum(v for k, v in r.items() if k[0] == ph and k[2] in
                                              ("layer", "lm_head", "sampling")) for r in runs]
        rows.append(TimingRow(ph, None, "other", Stats.of(other)))
    return rows


def profile(spec: ModelSpec, wl: Workload, *, device: str = "cpu", attention: str = "sdpa", repeat: int = 5,
            warmup: int = 1, seed: int = 0, fvcore: bool = True, compare_cache: bool = True,
            weights: str | None = None, progress=None) -> ProfileResult:
    """Count, then time the generation loop in ``repeat`` rounds after ``warmup`` untimed loops;
    see :class:`ProfileResult`.

    A round visits each variant of the loop once, in an order shuffled per round
    (:func:`profiler.measure.visit_orders`, as calibration and ``validate --timing`` visit their
    cases, so that the machine's drift from one moment to the next lands on all of them alike):
    bare (one :class:`profiler.measure.PassTimer` around the whole call), phase timers only, phase
    plus per-op hooks, and (``compare_cache``) decode with the other KV-cache choice. The phase
    figures come from the second, the per-op ones from the third, each the median of the visits;
    the overhead compares each with the bare loop. ``measurement`` records the clock, the visits'
    spread per phase (:func:`profiler.measure.floor_pct`) and the machine's load over the timing.
    """
    say = progress or (lambda msg: None)
    if repeat < 1 or warmup < 0:
        raise SpecError(f"repeat must be >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    check_buildable(spec, wl)
    dev = check_device(device)
    model = build_model(spec, dtype=wl.act_dtype, device=device, seed=seed, attention=attention, weights=weights,
                        mla=wl.mla)
    say("counting FLOPs (FlopCounterMode" + (", fvcore)" if fvcore else ")"))
    counts = count(spec, wl, model=model, fvcore=fvcore, seed=seed)
    prompt, source = inputs(spec, wl, seed, dev)

    from .measure import PassTimer, check_load, floor_pct, load_between, load_snapshot, visit_orders

    threads = torch.get_num_threads()
    timer = PassTimer(dev.type, threads)  # the probes' clock: per-thread CPU time at 1 thread, CUDA events

    def run(w: Workload, probe: Probe = NO_PROBE) -> float:
        sampler = Sampler(Strategy.of(w), seed, dev)
        return timer.seconds(lambda: run_workload(model, w, prompt, source, sampler, probe))

    compare = compare_cache and wl.gen > 1 and spec.arch != "encoder"
    other = replace(wl, kv_cache=not wl.kv_cache) if compare else None
    before = load_snapshot()
    for i in range(warmup):
        say(f"warm-up {i + 1}/{warmup}")
        run(wl)
        if other is not None:
            run(other)
    bare, phased, hooked, phase_runs, part_runs, other_runs, peaks = [], [], [], [], [], [], None

    def time_bare():
        bare.append(run(wl))

    def time_phased():
        nonlocal peaks
        tp = TimingProbe(dev)
        phased.append(run(wl, tp))
        phase_runs.append(tp.totals())
        if dev.type == "cuda":
            peaks = {p: max(v, (peaks or {}).get(p, 0)) for p, v in tp.peak_bytes.items()}

    def time_hooked():
        tpo = TimingProbe(dev, per_op=True).attach(model)
        try:
            hooked.append(run(wl, tpo))
        finally:
            tpo.detach()
        part_runs.append(tpo.totals())

    def time_other():
        tp = TimingProbe(dev)
        run(other, tp)
        other_runs.append(tp.totals()[("decode", None, "total")])

    variants = [time_bare, time_phased, time_hooked] + ([time_other] if other is not None else [])
    names = ["bare", "phase timers", "per-op hooks"] + (
        [("decode without" if wl.kv_cache else "decode with") + " a KV cache"] if other is not None else [])
    for r, order in enumerate(visit_orders(len(variants), repeat, seed)):
        say(f"round {r + 1}/{repeat}: the loop " + ", ".join(names[i] for i in order))
        for i in order:
            variants[i]()
    phases = tuple(counts.analysis.phases)  # encode, prefill, decode where they apply
    phase_seconds = {p: Stats.of(r[(p, None, "total")] for r in phase_runs) for p in phases}
    b, ph, ho = Stats.of(bare), Stats.of(phased), Stats.of(hooked)
    overhead = {"bare_seconds": b.median, "phase_timers_seconds": ph.median, "per_op_hooks_seconds": ho.median,
                "phase_timers_overhead": ph.median / b.median - 1, "per_op_hooks_overhead": ho.median / b.median - 1,
                "runs": repeat}
    speedup = None
    if other is not None:
        o = Stats.of(other_runs)
        with_s, without_s = (phase_seconds["decode"].median, o.median) if wl.kv_cache else (o.median, phase_seconds["decode"].median)
        saving = counts.analysis.kv_cache_saving()
        speedup = {"decode_seconds_with_cache": with_s, "decode_seconds_without_cache": without_s,
                   "measured_speedup": without_s / with_s if with_s else None,
                   "analytic_flops_ratio": saving["flops_ratio"],
                   "analytic_bytes_ratio": (saving["decode_bytes_without_cache"] / saving["decode_bytes_with_cache"]
                                            if saving["decode_bytes_with_cache"] else None),
                   "runs": repeat}
    measurement = {"clock": timer.clock, "threads": threads if dev.type == "cpu" else None, "visits": repeat,
                   "warmup": warmup, "variants": names, "statistic": "median of the visits",
                   "floor_pct": {p: floor_pct(r[(p, None, "total")] for r in phase_runs) for p in phases},
                   "load": {**load_between(before, load_snapshot()),
                            "warning": check_load(before, None) if dev.type == "cpu" else None}}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return ProfileResult(counts, name, wl.act_dtype, repeat, warmup, phase_seconds, _median_parts(part_runs),
                         overhead, speedup, peaks, measurement)
