"""Roofline latency: FLOPs and bytes of each op turned into seconds on a :class:`Hardware` profile.

The model, per op of one pass (an eager implementation: one kernel per op, attention scores
materialised, as in :mod:`costmodel.analysis`)::

    compute_s = flops / (peak_flops_per_s[act_dtype] * flops_efficiency)  (element-wise ops:
                the profile's elementwise_flops_per_s where it has one, e.g. a calibrated CPU)
    memory_s  = bytes / (memory_bandwidth_bytes_per_s * bandwidth_efficiency)
    seconds   = max(compute_s, memory_s) + op_overhead_s

An op is compute-bound when ``compute_s > memory_s``. Matmuls and element-wise ops compute in the
activation dtype (weights may be stored narrower: weight-only quantization reads fewer bytes but
computes at the activation dtype's peak). ``op_overhead_s`` is the per-kernel launch/dispatch time a
calibrated profile measures (0 for catalog GPUs).

Phases: time to first token (TTFT) is the prefill pass. Decode step i (1-based) attends over
``prompt + i`` keys, so its time grows with the context; the decode phase is the exact sum over
steps i = 1 .. gen - 1 of each op's ``max(compute, memory)``, never one step times N. The sum is
closed-form: an op's FLOPs and bytes are polynomials of degree <= 2 in i (affine with a KV cache),
so ``compute(i) - memory(i)`` changes sign at most twice; :func:`costmodel.stepsum.sum_max` finds
where (a vertex split and an integer binary search) and sums each piece with exact integer prefix sums.
A sliding-window layer's keys stop growing once the window is full: the steps split there
(:func:`costmodel.analysis.window_split`) into two polynomials, each summed that way.
No numpy is needed; :func:`decode_step_curve` (numpy) gives every step's time for plots and checks
(flat rates; step by step on a profile with curves).

Rate models (:func:`rates`, ``model``): "flat", the above with one FLOP and one bandwidth efficiency
per GPU (every result before issue 13), and "shape-aware" (:mod:`costmodel.shapes`): a matmul's FLOP
rate from its shape (``OpCost.shape``: tile and wave quantisation over the GPU's SMs, short-K
penalty), memory time ``(bytes + latency bytes) / bandwidth`` with the bandwidth efficiency of the
kernel's kind (memory-bound matmul, streaming, reduction). The decode sums stay exact under it: a
dimension that grows with the step is never quantised (the op builders mark it ``varying``; the
closed form also treats any unmarked one that changes so), so every op's rates are the same at every
step, and the latency is a whole number of bytes added to each step's polynomial.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import analysis as _analysis
from . import shapes as _shapes
from . import stepsum
from .analysis import (OpCost, StepCost, decode_step_cost, first_polynomial_step, prefill_cost, step_cost,
                       window_split)
from .errors import SpecError
from .hardware import Hardware
from .quant import QUANTISED_OPS, scheme_of
from .spec import ModelSpec, Workload


def _weight_elements(op: OpCost) -> float:
    """A weight matmul's weight elements (n x k of its shape; fp32 bytes / 4 without one)."""
    return op.shape[2] * op.shape[3] if op.shape else op.weight_bytes / 4


@dataclass(frozen=True)
class Rates:
    """Achievable rates: peak x efficiency, for compute in one dtype."""

    flops_per_s: float
    bytes_per_s: float
    op_overhead_s: float = 0.0
    elementwise_flops_per_s: float | None = None  # None: the same as flops_per_s
    matmul_bytes_per_s: float | None = None  # memory-bound matmuls; None: the same as bytes_per_s
    # fp8 W8A8 quantisation (costmodel.quant): the quantised matmuls (quant_ops) compute at
    # quant_flops_per_s, the GPU's achievable fp8 rate; None: every matmul at flops_per_s
    quant_flops_per_s: float | None = None
    quant_ops: frozenset = frozenset()
    # Added for issue 13. model: "flat" (the rates above for every op) or "shape-aware" (matmul FLOP
    # efficiency from the op's shape, bandwidth by kind of kernel and bytes moved: costmodel.shapes;
    # ``shape`` None: the hardware lacks what that needs, and the flat rates apply).
    model: str = "flat"
    shape: _shapes.ShapeParams | None = None
    # op name -> FLOP efficiency (share of ``peak_flops_per_s``) replacing the model's for that op
    # (the fused attention kernel's published utilisation); peak_flops_per_s: the dense peak it scales.
    op_efficiency: dict | None = field(default=None, hash=False)
    peak_flops_per_s: float | None = field(default=None, compare=False)
    # Added for issue 14: a calibrated profile's generic curves (costmodel.curves.Curves), used by
    # the flat model where the profile has them (fp32, no quantisation): each op's time is its
    # curve's, and op_overhead_s the per-op cost measured inside a pass. None: the flat rates.
    curves: object = None
    # The weight bytes of the pass being priced, on curves (the pool whose weight-streaming rate
    # applies: costmodel.curves.Curves.matmul_rate); set by step_time and summed_time, None: the coldest.
    pass_weight_bytes: float | None = None

    def bytes_rate(self, kind: str) -> float:
        """Achievable bytes/s for an op of ``kind``: matmuls stream weights at their own rate
        where the profile measured one (a calibrated CPU), every other op at ``bytes_per_s``."""
        if kind == "matmul" and self.matmul_bytes_per_s is not None:
            return self.matmul_bytes_per_s
        return self.bytes_per_s

    def flops_rate(self, kind: str, op: str | None = None) -> float:
        """Achievable FLOP/s for an op of ``kind`` ("matmul", "elementwise", "memory"); ``op``: its
        name (an fp8-quantised matmul computes at ``quant_flops_per_s``)."""
        if self.quant_flops_per_s is not None and op in self.quant_ops:
            return self.quant_flops_per_s
        if kind == "elementwise" and self.elementwise_flops_per_s is not None:
            return self.elementwise_flops_per_s
        return self.flops_per_s

    def op_rates(self, op: OpCost, shape=None) -> tuple[float, float, int]:
        """(FLOP/s, bytes/s, latency bytes) of ``op``: its compute time is flops / FLOP/s, its memory
        time (bytes + latency bytes) / bytes/s. Flat: the kind's rates and no latency. ``shape``
        (default ``op.shape``): the shape whose efficiency applies (the decode sum passes one with
        every step-dependent dimension marked varying: :func:`costmodel.shapes.step_invariant`)."""
        p = self.shape
        if p is None and self.curves is not None:
            F, B, lat = self._curve_rates(op)
        elif p is None:
            F, B, lat = self.flops_rate(op.kind, op.op), self.bytes_rate(op.kind), 0
        else:
            shape = op.shape if shape is None else shape
            F = (p.flops_rate(shape) if op.kind == "matmul" and shape is not None
                 else self.flops_rate(op.kind, op.op))
            if self.quant_flops_per_s is not None and op.op in self.quant_ops and op.kind == "matmul" and shape:
                F *= self.quant_flops_per_s / self.flops_per_s  # fp8 compute: the same shape efficiency
            B, lat = p.bytes_rate(op.op, op.kind), p.latency_bytes(op.op, op.kind)
        if self.op_efficiency and op.op in self.op_efficiency:
            F = self.peak_flops_per_s * self.op_efficiency[op.op]
        return F, B, lat

    def curve_parts(self, kind: str, weight_bytes: int, weight_elements: float, flops: float, nbytes: float,
                    op: str | None = None, kv_bytes: float = 0, kv_repeat: int = 1) -> tuple[float, float]:
        """(compute_s, memory_s) of an op on the curves (:func:`costmodel.curves.op_parts`), its
        time their max (the per-op cost apart); a weight matmul's time on the side the flat rates
        say bounds it."""
        from .curves import op_parts

        c, m = op_parts(self.curves, kind, weight_bytes, weight_elements, flops, nbytes, self.flops_per_s,
                        self.flops_rate("elementwise"), self.pass_weight_bytes, op, kv_bytes, kv_repeat)
        if kind == "matmul" and weight_bytes and nbytes / self.bytes_rate("matmul") > flops / self.flops_per_s:
            return 0.0, c  # memory-bound under the flat rates
        return c, m

    def _curve_rates(self, op: OpCost) -> tuple[float, float, int]:
        """The curves as (FLOP/s, bytes/s, 0) for this op's FLOPs and bytes (:meth:`curve_parts`).
        The bytes rate depends on the bytes, so a decode sum on curves prices every step
        (:func:`summed_op_time`)."""
        c, m = self.curve_parts(op.kind, op.weight_bytes, _weight_elements(op), op.flops, op.bytes, op.op,
                                op.kv_read_bytes, op.kv_repeat)
        inf = float("inf")
        return (op.flops / c if c else inf), (op.bytes / m if m else inf), 0

    def to_dict(self) -> dict:
        d = {"flops_per_s": self.flops_per_s, "elementwise_flops_per_s": self.flops_rate("elementwise"),
             "bytes_per_s": self.bytes_per_s, "matmul_bytes_per_s": self.bytes_rate("matmul"),
             "op_overhead_s": self.op_overhead_s, "model": self.model}
        if self.quant_flops_per_s is not None:
            d["quant_matmul_flops_per_s"] = self.quant_flops_per_s
        if self.model != "flat":
            d["shape"] = None if self.shape is None else self.shape.to_dict()
        if self.op_efficiency:
            d["op_efficiency"] = dict(self.op_efficiency)
        if self.curves is not None:
            d["curves"] = True
        return d


RATE_MODELS = ("flat", "shape-aware")


def rates(hw: Hardware, act_dtype: str, quant: str = "none", model: str = "flat",
          op_efficiency: dict | None = None, curves: bool = True) -> Rates:
    """Achievable FLOP/s for ``act_dtype`` (matmuls and element-wise ops), achievable bandwidth,
    per-op overhead of ``hw``.

    ``quant``: a weight-only scheme computes at the activation dtype (dequantised in the kernel); an
    fp8 W8A8 one's quantised matmuls at ``hw``'s fp8 peak, refused in one line where it has none (A100).
    ``model``: "flat" (one FLOP and one bandwidth efficiency per GPU, as before issue 13) or
    "shape-aware" (:mod:`costmodel.shapes`: matmul efficiency from M, N, K over the GPU's SMs,
    bandwidth by kind of kernel and bytes moved; the flat rates where the hardware lacks ``sm_count``
    or ``boost_clock_hz``). ``op_efficiency``: op name -> FLOP efficiency (share of the dense peak)
    overriding the model's for that op, in either model. ``curves``: under the flat model, use the
    profile's generic curves (:mod:`costmodel.curves`, measured in fp32 by ``calibrate``) where it
    has them and the pass is fp32 without quantisation; False: the flat rates alone."""
    if model not in RATE_MODELS:
        raise SpecError(f"unknown rate model {model!r}; allowed: {', '.join(RATE_MODELS)}")
    ew = hw.achievable_elementwise_flops_per_s(act_dtype)
    mm_bw = hw.achievable_matmul_bandwidth_bytes_per_s
    shape = _shapes.params_for(hw, act_dtype) if model == "shape-aware" else None
    for name, e in (op_efficiency or {}).items():
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 1:
            raise SpecError(f"op_efficiency[{name!r}] must be a number in (0, 1], got {e!r}")
    r = Rates(hw.achievable_flops_per_s(act_dtype), hw.achievable_bandwidth_bytes_per_s,
              hw.op_overhead_s, None if ew == hw.achievable_flops_per_s(act_dtype) else ew,
              None if mm_bw == hw.achievable_bandwidth_bytes_per_s else mm_bw,
              model=model, shape=shape, op_efficiency=dict(op_efficiency) if op_efficiency else None,
              peak_flops_per_s=hw.peak_for(act_dtype))
    if curves and model == "flat" and quant == "none" and act_dtype == "fp32" and hw.calibration:
        from .curves import parse_curves

        c = parse_curves(hw.calibration, f"hardware {hw.id!r}")
        if c is not None:
            r = replace(r, curves=c, op_overhead_s=c.seconds_per_op)
    scheme = scheme_of(quant)
    if scheme is None or scheme.compute != "fp8":
        return r
    if hw.peak_flops_per_s.get("fp8") is None:
        have = [d for d, v in hw.peak_flops_per_s.items() if v is not None]
        raise SpecError(f"quant {quant} computes in fp8 (W8A8) and {hw.id} has no fp8 peak FLOP/s (dtypes it has: "
                        f"{', '.join(have)}); use a weight-only scheme (awq-int4-g128, gptq-int4-g128, "
                        "int8-channel) or a GPU with fp8 tensor cores (H100, H200, L4, L40S, ...)")
    return replace(r, quant_flops_per_s=hw.achievable_flops_per_s("fp8"), quant_ops=QUANTISED_OPS)


@dataclass(frozen=True)
class OpTime:
    """Time of one op in one pass, or summed over the ``steps`` of a phase."""

    op: str
    kind: str
    flops: int
    bytes: int
    compute_s: float  # flops / achievable FLOP/s (summed over steps)
    memory_s: float  # bytes / achievable bandwidth (summed over steps)
    overhead_s: float  # op_overhead_s * steps
    seconds: float  # sum over steps of max(compute, memory), plus overhead
    steps: int = 1
    compute_bound_steps: int = 0

    @property
    def bound(self) -> str:
        """'compute' or 'memory' (in every step), 'mixed' when it changes during decode."""
        if self.steps and self.compute_bound_steps == self.steps:
            return "compute"
        return "memory" if self.compute_bound_steps == 0 else "mixed"

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved (0 when nothing moves)."""
        return self.flops / self.bytes if self.bytes else 0.0


def op_time(op: OpCost, r: Rates) -> OpTime:
    """One op of one pass: ``max(flops / F, (bytes + latency bytes) / B) + overhead`` (F, B and the
    latency bytes from :meth:`Rates.op_rates`; no latency under the flat model, nor for an op that
    moves nothing)."""
    F, B, lat = r.op_rates(op)
    nbytes = op.bytes
    c, m = op.flops / F, (nbytes + (lat if nbytes else 0)) / B
    return OpTime(op.op, op.kind, op.flops, op.bytes, c, m, r.op_overhead_s,
                  max(c, m) + r.op_overhead_s, 1, int(c > m))


@dataclass(frozen=True)
class PhaseTime:
    """Op times of a pass or a phase, laid out like :class:`~costmodel.analysis.StepCost`:
    ``groups`` of identical blocks, ((LayerGroup, op times), ...).

    ``extra_s`` is time outside the ops (tensor-parallel all-reduces, pipeline hops; 0 on one GPU).
    ``overhead_s`` is an engine's launch and host time over the phase (:mod:`costmodel.engine`;
    0 without one): a term of its own, beside the ops' per-op ``op_overhead_s``.
    """

    name: str
    steps: int
    before: tuple
    groups: tuple
    after: tuple
    extra_s: float = 0.0
    overhead_s: float = 0.0

    @property
    def num_layers(self) -> int:
        return sum(g.count for g, _ in self.groups)

    @property
    def layer(self) -> tuple:
        """The op times of one block, when every block is alike (one group)."""
        return _analysis.only_group(self.groups)

    def weighted(self):
        """(multiplicity, OpTime) for each distinct op, as ``StepCost.weighted``."""
        return _analysis.weighted_items(self.before, self.groups, self.after)

    @property
    def ops_seconds(self) -> float:
        return sum(n * o.seconds for n, o in self.weighted())

    @property
    def seconds(self) -> float:
        return self.ops_seconds + self.extra_s + self.overhead_s

    @property
    def executed_flops(self) -> int:
        """FLOPs of the ops timed (an engine's executed ops: see :mod:`costmodel.engine`)."""
        return sum(n * o.flops for n, o in self.weighted())

    @property
    def executed_bytes(self) -> int:
        return sum(n * o.bytes for n, o in self.weighted())

    @property
    def num_ops(self) -> int:
        """Kernels in one pass: each block's ops count once per layer."""
        return sum(n for n, _ in self.weighted())

    def rows(self):
        """(layer, OpTime) in execution order, as ``StepCost.rows``."""
        return _analysis.layered_rows(self.before, self.groups, self.after)

    def bound_seconds(self) -> dict:
        """Seconds spent in compute-bound and memory-bound op steps, and in overhead."""
        out = {"compute": 0.0, "memory": 0.0, "overhead": 0.0}
        for _, o in self.rows():
            out["overhead"] += o.overhead_s
            busy = o.seconds - o.overhead_s
            if o.bound == "compute":
                out["compute"] += busy
            elif o.bound == "memory":
                out["memory"] += busy
            else:  # mixed: split by the step counts (an approximation for display only)
                out["compute"] += busy * o.compute_bound_steps / o.steps
                out["memory"] += busy * (1 - o.compute_bound_steps / o.steps)
        return out


def _phase(name: str, steps: int, laid_out, extra_s: float = 0.0) -> PhaseTime:
    before, groups, after = laid_out
    return PhaseTime(name, steps, tuple(before), tuple((g, tuple(ops)) for g, ops in groups), tuple(after),
                     extra_s)


def _for_pass(r: Rates, cost: StepCost) -> Rates:
    """``r`` for pricing ``cost``, one pass: on curves, with the pass's weight bytes (the pool of
    the weight-streaming rate); otherwise ``r`` itself."""
    if r.curves is None or r.pass_weight_bytes is not None:
        return r
    return replace(r, pass_weight_bytes=cost.total("weight_bytes"))


def step_time(cost: StepCost, r: Rates, name: str = "step", extra_s: float = 0.0) -> PhaseTime:
    """Times of the ops of one pass."""
    r = _for_pass(r, cost)
    return _phase(name, 1, _analysis.map_ops(lambda o: op_time(o, r), cost), extra_s)


# --- Decode: exact sum over steps ----------------------------------------------------------------

def summed_op_time(o1: OpCost, o2: OpCost, o3: OpCost, steps: int, r: Rates,
                   f1: OpCost | None = None, f2: OpCost | None = None, f3: OpCost | None = None,
                   split: int | None = None) -> OpTime:
    """One op summed over decode steps 1..steps, from its costs at steps 1, 2 and 3; with
    ``split`` = m < steps, steps m + 1.. follow the polynomial of ``f1``, ``f2``, ``f3`` instead
    (a sliding window that fills at step m: :func:`costmodel.analysis.window_split`)."""
    m = steps if split is None else split
    ops = (o1, o2, o3) if m >= steps else (o1, o2, o3, f1, f2, f3)
    # Shape-aware rates: one efficiency for every step, from the dimensions no step changes
    # (costmodel.shapes: the attended keys, and every token row without a KV cache, are marked
    # varying by the op builders; a dimension that changes unmarked is treated the same way).
    shape = None
    if r.shape is not None and all(o.shape is not None for o in ops):
        shape = _shapes.step_invariant(*(o.shape for o in ops))
    F, B, lat = r.op_rates(o1, shape)
    lat = lat if any(o.bytes for o in ops) else 0  # as op_time: no latency for an op moving nothing
    pf = stepsum.newton(o1.flops, o2.flops, o3.flops)
    pb = stepsum.newton(o1.bytes + lat, o2.bytes + lat, o3.bytes + lat)
    if m < steps:
        qf = stepsum.newton(f1.flops, f2.flops, f3.flops)
        qb = stepsum.newton(f1.bytes + lat, f2.bytes + lat, f3.bytes + lat)
    else:
        qf, qb = pf, pb
    if r.curves is not None:  # bytes-dependent rates: each step on the curves (plain arithmetic)
        pk = stepsum.newton(o1.kv_read_bytes, o2.kv_read_bytes, o3.kv_read_bytes)
        qk = pk if m >= steps else stepsum.newton(f1.kv_read_bytes, f2.kv_read_bytes, f3.kv_read_bytes)
        return _curve_summed(o1, pf, qf, pb, qb, pk, qk, m, steps, r)
    seconds, compute_steps = stepsum.split_sum_max(pf, qf, pb, qb, m, steps, F, B)
    flops, moved = stepsum.split_sum(pf, qf, m, steps), stepsum.split_sum(pb, qb, m, steps)
    overhead = steps * r.op_overhead_s
    return OpTime(o1.op, o1.kind, flops, moved - steps * lat, flops / F, moved / B,
                  overhead, seconds + overhead, steps, compute_steps)


def _curve_summed(o1: OpCost, pf, qf, pb, qb, pk, qk, m: int, steps: int, r: Rates) -> OpTime:
    """:func:`summed_op_time` on a profile's curves: steps 1..m on (pf, pb), the rest on (qf, qb);
    (pk, qk) the cache bytes read the same way (GQA's eager repeat: :attr:`OpCost.kv_repeat`)."""
    elements, g = _weight_elements(o1), o1.kv_repeat
    if pf[1:] == pb[1:] == pk[1:] == (0, 0) and (m >= steps or (qf, qb, qk) == (pf, pb, pk)):  # the same every step
        c, mem = r.curve_parts(o1.kind, o1.weight_bytes, elements, pf[0], pb[0], o1.op, pk[0], g)
        compute, memory, seconds, compute_steps = steps * c, steps * mem, steps * max(c, mem), steps * (c > mem)
    else:
        compute = memory = seconds = 0.0
        compute_steps = 0
        for i in range(1, steps + 1):
            f, b, k = (pf, pb, pk) if i <= m else (qf, qb, qk)
            c, mem = r.curve_parts(o1.kind, o1.weight_bytes, elements, stepsum.at(f, i), stepsum.at(b, i), o1.op,
                                   stepsum.at(k, i), g)
            compute, memory, seconds = compute + c, memory + mem, seconds + max(c, mem)
            compute_steps += c > mem
    overhead = steps * r.op_overhead_s
    return OpTime(o1.op, o1.kind, stepsum.split_sum(pf, qf, m, steps), stepsum.split_sum(pb, qb, m, steps),
                  compute, memory, overhead, seconds + overhead, steps, compute_steps)


def summed_time(s1: StepCost, s2: StepCost, s3: StepCost, steps: int, r: Rates,
                name: str = "decode", extra_s: float = 0.0, full=None, split: int | None = None) -> PhaseTime:
    """Every op of steps 1..``steps`` summed exactly, from the pass costs at steps 1, 2 and 3
    (and, with ``split`` = m, the costs ``full`` at steps 1, 2, 3 of the polynomial steps m + 1..
    follow: see :func:`summed_op_time`)."""
    full = (s1, s2, s3) if full is None else full
    r = _for_pass(r, s1)  # a decode step's weights do not change with the step
    return _phase(name, steps, _analysis.map_ops(
        lambda a, b, c, d, e, f: summed_op_time(a, b, c, steps, r, d, e, f, split), s1, s2, s3, *full), extra_s)


# --- Results ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """Latency of a workload on a hardware profile: phases, per-op times, TTFT, TPOT, throughput."""

    hardware: Hardware
    rates: Rates
    batch: int  # sequences that each receive ``gen`` tokens
    gen: int
    prefill: PhaseTime | None  # None for encoder-only models (nothing is generated)
    decode: PhaseTime | None  # summed over gen - 1 steps
    tpot_first_s: float | None  # decode step 1 (None when gen == 1)
    tpot_last_s: float | None  # decode step gen - 1
    encode: PhaseTime | None = None  # encoder pass (encoder-only and encoder-decoder models)
    engine: object = None  # the costmodel.engine.Engine timed with; None: the reference (eager)

    @property
    def phases(self) -> dict:
        """The phases that apply, in execution order (as ``Analysis.phases``)."""
        return {p.name: p for p in (self.encode, self.prefill, self.decode) if p is not None}

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: the encoder pass (if any) and the prefill pass, which yields the
        first new token. None for encoder-only models."""
        if self.prefill is None:
            return None
        return (self.encode.seconds if self.encode else 0.0) + self.prefill.seconds

    @property
    def tpot_mean_s(self) -> float | None:
        return self.decode.seconds / self.decode.steps if self.decode is not None and self.decode.steps else None

    @property
    def e2e_s(self) -> float:
        """End to end: every phase (encode, prefill, every decode step)."""
        return sum(p.seconds for p in self.phases.values())

    @property
    def tokens_per_s(self) -> float | None:
        """Generated tokens per second over the whole request: batch * gen / e2e (None when the
        model generates nothing)."""
        return None if self.prefill is None else self.batch * self.gen / self.e2e_s

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second while decoding: batch / mean TPOT."""
        m = self.tpot_mean_s
        return self.batch / m if m else None

    def tpot(self) -> dict:
        return {"first": self.tpot_first_s, "mean": self.tpot_mean_s, "last": self.tpot_last_s}

    def summary(self) -> dict:
        """The top-level timing fields of a JSON report (``ttft_s`` and throughputs None for an
        encoder-only model; ``encode_s`` for encoder models)."""
        return {
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot(),
            "e2e_s": self.e2e_s,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            **({"encode_s": self.encode.seconds} if self.encode is not None else {}),
            **(self.engine_summary() if self.engine is not None else {}),
        }

    def engine_summary(self) -> dict:
        """``engine`` (its id), ``engine_profile`` (its fields) and ``overhead_s`` {phase: seconds,
        "decode_step": one decode step's}: the engine's launch and host time, its own term."""
        e = self.engine
        over = {name: p.overhead_s for name, p in self.phases.items()}
        if self.decode is not None:
            over["decode_step"] = self.decode.overhead_s / self.decode.steps if self.decode.steps else 0.0
        return {"engine": e.id, "engine_profile": e.to_dict(), "overhead_s": over}

    def annotate(self, report: dict) -> dict:
        """Add the timing to an ``Analysis.to_dict()`` dict (in place; also returned): ``seconds``
        in each phase and op row (a decode row: that op summed over the steps), ``bound`` per op,
        and top-level ``ttft_s``, ``tpot_s`` {first, mean, last}, ``e2e_s``, ``tokens_per_s``,
        ``decode_tokens_per_s`` and ``timing`` (hardware, efficiencies, model)."""
        executed = self.engine is not None and not self.engine.reference
        for name, phase in self.phases.items():
            report[name]["seconds"] = phase.seconds
            if executed:  # what the engine runs, beside the counted convention's flops and bytes
                report[name]["executed_flops"] = phase.executed_flops
                report[name]["executed_bytes"] = phase.executed_bytes
                report[name]["overhead_s"] = phase.overhead_s
        if "ops" in report and not executed:
            for row, o in join_by_key(report["ops"], self.op_times()):
                row["seconds"] = o.seconds
                row["bound"] = o.bound
        elif "ops" in report:  # the engine's ops differ from the counted ones: listed on their own
            report["executed_ops"] = [
                {"phase": k[0], "layer": k[1], "op": o.op, "kind": o.kind, "flops": o.flops, "bytes": o.bytes,
                 "seconds": o.seconds, "bound": o.bound} for k, o in self.op_times().items()]
        report.update(self.summary())
        report["timing"] = self.assumptions()
        return report

    def op_times(self) -> dict:
        """{(phase, layer, op): OpTime} for every op of every phase, keyed as the op rows of
        ``Analysis.rows()`` (:func:`op_key`); layer is None outside the blocks."""
        out = {}
        for name, phase in self.phases.items():
            for layer, o in phase.rows():
                key = (name, layer, o.op)
                if key in out:
                    raise ValueError(f"two op times for {key}: an op's time cannot be found by its key")
                out[key] = o
        return out

    def assumptions(self) -> dict:
        hw = self.hardware
        return {
            "hardware": hw.id,
            "hardware_name": hw.name,
            "model": "per op: max(flops / achievable FLOP/s, bytes / achievable bandwidth) + op overhead; "
                     "achievable = peak x efficiency; decode summed step by step",
            "efficiency": hw.efficiencies(),
            "achievable": self.rates.to_dict(),
            "rate_model": self.rates.model,
            "rate_model_description": rate_model_description(self.rates),
        }


def rate_model_description(r: Rates) -> str:
    """One line naming the rate model ``r`` uses."""
    if r.model == "flat" and r.curves is not None:
        return ("flat, on the profile's calibrated curves (costmodel.curves): weight matmuls at the "
                "measured FLOP/s for their rows and the pass's weight bytes, attention and element-wise "
                "ops by bytes, plus the per-op cost measured inside a pass")
    if r.model == "flat":
        return "flat: one FLOP efficiency and one bandwidth efficiency per GPU for every op"
    if r.shape is None:
        return ("shape-aware requested, but the hardware has no sm_count / boost_clock_hz: "
                "the flat rates apply")
    return ("shape-aware (costmodel.shapes): matmul FLOP efficiency = base x tile x wave quantisation "
            "over the SMs x short-K factor; memory time = latency + bytes / (peak x efficiency of the "
            "kernel kind: matmul, streaming, reduction)")


def op_key(row: dict) -> tuple:
    """The key that finds an op row's time: (phase, layer, op), as :meth:`Timing.op_times` keys it."""
    return row["phase"], row["layer"], row["op"]


def join_by_key(rows, times: dict, key=op_key) -> list[tuple]:
    """(row, its time) for each of ``rows`` in order, the time found as ``times[key(row)]``: costs
    and times are joined by key, never by position. A row without a time, two rows with one key,
    or a time that no row has raises ValueError naming the key."""
    rows = list(rows)
    keys = [key(r) for r in rows]
    seen = set(keys)
    problems = [f"no time for op {k}" for k in keys if k not in times]
    if len(seen) != len(keys):
        problems += [f"two op rows with the key {k}" for k in dict.fromkeys(keys) if keys.count(k) > 1]
    problems += [f"a time for op {k} that no op row has" for k in times if k not in seen]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"op times do not match the op rows: {problems[0]}{more}")
    return [(r, times[key(r)]) for r in rows]


def _add(a: OpTime, b: OpTime) -> OpTime:
    return OpTime(a.op, a.kind, a.flops + b.flops, a.bytes + b.bytes, a.compute_s + b.compute_s,
                  a.memory_s + b.memory_s, a.overhead_s + b.overhead_s, a.seconds + b.seconds,
                  a.steps + b.steps, a.compute_bound_steps + b.compute_bound_steps)


def decode_time(cost_at, steps: int, r: Rates, first_poly_step: int = 1, extra_s: float = 0.0,
                name: str = "decode", split: int | None = None) -> PhaseTime:
    """Decode steps 1..``steps`` summed op by op; ``cost_at(i)`` is the StepCost of step i.

    Steps before ``first_poly_step`` are added one by one; from there on the closed form of
    :func:`summed_time` takes over, from the costs at three consecutive steps. ``split`` (a
    sliding window: :func:`costmodel.analysis.window_split`): steps 1..split follow
    ``cost_at(i, "growing")``, the rest ``cost_at(i, "full")``.
    """
    p0 = min(max(first_poly_step, 1), steps + 1)
    if split is not None and split < steps:
        grow = [cost_at(i, "growing") for i in (1, 2, 3)]
        full = [cost_at(i, "full") for i in (1, 2, 3)]
        return replace(summed_time(*grow, steps, r, name, full=full, split=split), extra_s=extra_s)
    phase = summed_time(cost_at(p0), cost_at(p0 + 1), cost_at(p0 + 2), steps - (p0 - 1), r, name)
    for i in range(1, p0):
        phase = _phase(name, phase.steps, _analysis.map_ops(_add, phase, step_time(cost_at(i), r)))
    return replace(phase, steps=steps, extra_s=extra_s)


def timing_from(hw: Hardware, r: Rates, wl: Workload, prefill: StepCost, cost_at,
                first_poly_step: int = 1, prefill_extra_s: float = 0.0,
                decode_extra=(0.0, 0.0, 0.0), split: int | None = None, overheads=(0.0, 0.0)) -> Timing:
    """A :class:`Timing` from pass costs: ``prefill`` and ``cost_at(i)`` for decode step i
    (``cost_at(i, sliding_keys)`` when ``split`` is given: see :func:`decode_time`).

    Used by :func:`predict` and by the planner, which passes per-GPU costs and communication
    time (``decode_extra`` = (step 1, all steps, last step)). ``overheads`` = (prefill, one decode
    step): an engine's launch and host seconds (:func:`costmodel.engine.overheads`), each phase's
    ``overhead_s``.
    """
    n = wl.decode_steps
    pre = replace(step_time(prefill, r, "prefill", prefill_extra_s), overhead_s=overheads[0])
    decode = replace(decode_time(cost_at, n, r, first_poly_step, decode_extra[1] if n else 0.0, split=split),
                     overhead_s=n * overheads[1])
    first = step_time(cost_at(1), r).seconds + decode_extra[0] + overheads[1] if n else None
    last = step_time(cost_at(n), r).seconds + decode_extra[2] + overheads[1] if n else None
    return Timing(hw, r, wl.batch, wl.gen, pre, decode, first, last)


def predict(spec: ModelSpec, wl: Workload, hw: Hardware, engine=None, r: Rates | None = None) -> Timing:
    """Roofline latency of ``wl`` on one device ``hw``: TTFT, TPOT first/mean/last, per-op times.

    Encoder models (``spec.arch`` "encoder" or "encoder-decoder") add an ``encode`` phase: one
    bidirectional pass over the input; an encoder-only model has no prefill or decode.

    ``engine``: a :class:`costmodel.engine.Engine` (names resolve with
    :func:`costmodel.engine.load_engine`); None or the reference ``eager`` engine is exactly this
    function's model; another engine times what it executes, plus its overheads
    (:func:`costmodel.engine.predict`). ``r``: the rates to use without an engine (default
    ``rates(hw, wl.act_dtype, wl.quant)``, the flat model; e.g. ``rates(hw, wl.act_dtype,
    model="shape-aware")``).
    """
    if engine is not None:
        if isinstance(engine, str):
            raise TypeError("roofline.predict takes an Engine: resolve a name with costmodel.engine.load_engine")
        if not engine.reference:
            return engine.predict(spec, wl, hw)
        return replace(predict(spec, wl, hw, r=r), engine=engine)
    r = rates(hw, wl.act_dtype, wl.quant) if r is None else r
    arch = spec.arch
    encode = step_time(_analysis.encode_cost(spec, wl), r, "encode") if arch != "decoder" else None
    if arch == "encoder":
        return Timing(hw, r, wl.batch, wl.gen, None, None, None, None, encode)
    t = timing_from(hw, r, wl, prefill_cost(spec, wl), lambda i, keys="actual": decode_step_cost(spec, wl, i, keys),
                    first_polynomial_step(spec, wl), split=window_split(spec, wl, wl.decode_steps))
    return replace(t, encode=encode)


# --- One pass: the calls a timing validation makes ------------------------------------------------

def pass_seconds(spec: ModelSpec, wl: Workload, hw: Hardware, batch: int, q_len: int, kv_len: int,
                 logits_positions: int = 1) -> float:
    """Predicted seconds of one forward pass: ``batch`` sequences feeding ``q_len`` tokens each and
    attending over ``kv_len`` keys (prefill: q_len = kv_len = prompt; cached decode: q_len = 1,
    kv_len = context). Dtypes, KV-cache use and causal counting come from ``wl``."""
    cost = step_cost(spec, wl, batch, q_len, kv_len, logits_positions)
    return step_time(cost, rates(hw, wl.act_dtype, wl.quant)).seconds


def prefill_seconds(spec: ModelSpec, wl: Workload, hw: Hardware) -> float:
    """Predicted seconds of the prefill pass of ``wl`` (its TTFT)."""
    return step_time(prefill_cost(spec, wl), rates(hw, wl.act_dtype, wl.quant)).seconds


def decode_step_seconds(spec: ModelSpec, wl: Workload, hw: Hardware, i: int) -> float:
    """Predicted seconds of decode step ``i`` (1-based: attends over prompt + i keys)."""
    return step_time(decode_step_cost(spec, wl, i), rates(hw, wl.act_dtype, wl.quant)).seconds


def decode_seconds(spec: ModelSpec, wl: Workload, hw: Hardware) -> float:
    """Predicted seconds of all gen - 1 decode steps, summed exactly."""
    n = wl.decode_steps
    return decode_time(lambda i, keys="actual": decode_step_cost(spec, wl, i, keys), n,
                       rates(hw, wl.act_dtype, wl.quant), first_polynomial_step(spec, wl),
                       split=window_split(spec, wl, n)).seconds


def decode_step_curve(spec: ModelSpec, wl: Workload, hw: Hardware) -> list[float]:
    """Predicted seconds of every decode step 1..gen-1, vectorised over steps with numpy
    (:func:`~costmodel.stepsum.max_step_curve`; with a sliding window, the "growing" polynomial up
    to :func:`~costmodel.analysis.window_split` and the "full" one after it). Its sum equals
    :func:`decode_seconds` up to float rounding."""
    import numpy as np

    r = rates(hw, wl.act_dtype, wl.quant)
    n = wl.decode_steps
    if r.curves is not None:  # bytes-dependent rates: step by step (decode_time does the same)
        return [decode_step_seconds(spec, wl, hw, i) for i in range(1, n + 1)]
    p0 = min(first_polynomial_step(spec, wl), n + 1)
    m = window_split(spec, wl, n) - (p0 - 1)
    early = [decode_step_seconds(spec, wl, hw, i) for i in range(1, p0)]
    steps = np.arange(1, n - (p0 - 1) + 1)

    def curve(cost_at):
        out = np.zeros(n - (p0 - 1))
        for (mult, o1), (_, o2), (_, o3) in zip(*(cost_at(i).weighted() for i in (p0, p0 + 1, p0 + 2))):
            step = stepsum.max_step_curve(stepsum.newton(o1.flops, o2.flops, o3.flops),
                                          stepsum.newton(o1.bytes, o2.bytes, o3.bytes), n - (p0 - 1),
                                          r.flops_rate(o1.kind, o1.op), r.bytes_rate(o1.kind))
            out = out + mult * (step + r.op_overhead_s)
        return out

    total = curve(lambda i: decode_step_cost(spec, wl, i, "growing"))
    if m < n - (p0 - 1):
        total = np.where(steps <= m, total, curve(lambda i: decode_step_cost(spec, wl, i, "full")))
    return early + total.tolist()
