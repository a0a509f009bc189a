"""Timing the reference model's passes: one code path for op-table calibration and validation.

A *case* is ``(phase, batch, context)``: a prefill pass over ``context`` tokens per sequence, or
one cached decode step at position ``context`` (attending over ``context + 1`` keys). A decode
case's cache is allocated at ``context + 1`` positions and filled with a constant (every page
written, so reads stream real memory, not the kernel's shared zero page), not by a prefill: a
64 x 256 prefill would cost more than the whole sweep.

Every pass is timed with :class:`profiler.measure.PassTimer` (per-thread CPU clock at one CPU
thread, wall time at more, CUDA events on a GPU), after warm-up passes (:data:`WARMUP_S`).
:class:`AttentionHooks` times each block's attention module minus its projections in place.

Two ways to time a set of cases:

- :func:`time_cases` (calibration and validation): every case is *visited* in ``visits`` rounds
  spread over the run, one timed pass a visit; the statistic is the geometric mean of the visits,
  and :func:`profiler.measure.floor_pct` of the visits is the floor beside it. On the shared VM
  this was built on, one pass's speed moves by 10-12 % (standard deviation of log time) from one
  visit to the next a few seconds later, with no memory beyond that (lag-1 autocorrelation of the
  rounds 0.03-0.26), while passes back to back agree within 2-9 %: repeats back to back measure
  one moment of the machine, visits spread over the run average the moments (the standard
  deviation of a 3-visit mean measured 6.0-6.6 %, of a 5-visit one 4.2-4.9 %; benchmarks/README.md).
- :func:`time_case`: ``repeat`` passes back to back, the median (one moment: what the drift
  benchmark measures).
"""

from __future__ import annotations

import math
import statistics

import torch

from .generate import decode_one_token, prefill
from .measure import PassTimer, floor_pct, visit_orders


def _fill_caches(model) -> None:
    for cache in model.caches():
        for buf in cache.buffers():
            buf.fill_(0.01)


def prepare(model, spec, phase: str, batch: int, context: int, dev, gen):
    """Set up the model for one case and return the pass to time (a closure)."""
    if phase == "prefill":
        tokens = torch.randint(0, spec.vocab_size, (batch, context), generator=gen).to(dev)
        model.setup_caches(batch, context)
        return lambda: prefill(model, tokens)
    if phase != "decode":
        raise ValueError(phase)
    token = torch.randint(0, spec.vocab_size, (batch, 1), generator=gen).to(dev)
    model.setup_caches(batch, context + 1)
    _fill_caches(model)
    return lambda: decode_one_token(model, token, context)


class AttentionHooks:
    """Forward hooks around each block's ``attention`` module and its direct ``nn.Linear``
    children (the projections): :attr:`seconds` is attention minus projections, summed over
    blocks since the last :meth:`reset`, on ``ns`` (a CPU clock in ns) or, with ``ns="cuda"``,
    with CUDA event pairs read after one synchronize (GPU kernels are asynchronous)."""

    def __init__(self, model, ns):
        self._ns = ns
        self.attention_ns = 0
        self.proj_ns = 0
        self._t: dict = {}
        self._pairs: list = []  # CUDA: (what, start event, end event), read after one synchronize
        self._handles = []
        for layer in model.layers:
            att = getattr(layer, "attention", None)
            if att is None:
                continue
            self._hook(att, "attention")
            for child in att.children():
                if isinstance(child, torch.nn.Linear):
                    self._hook(child, "proj")

    def _now(self):
        if self._ns == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return self._ns()

    def _hook(self, mod, what: str) -> None:
        key = id(mod)

        def pre(m, args):
            self._t[key] = self._now()

        def post(m, args, out):
            start, end = self._t.pop(key), self._now()
            if self._ns == "cuda":
                self._pairs.append((what, start, end))
                return
            if what == "attention":
                self.attention_ns += end - start
            else:
                self.proj_ns += end - start

        self._handles.append(mod.register_forward_pre_hook(pre))
        self._handles.append(mod.register_forward_hook(post))

    def reset(self) -> None:
        self.attention_ns = self.proj_ns = 0
        self._pairs = []

    @property
    def seconds(self) -> float:
        if self._pairs:
            torch.cuda.synchronize()
            for what, a, b in self._pairs:
                ns = int(a.elapsed_time(b) * 1e6)  # ms -> ns
                if what == "attention":
                    self.attention_ns += ns
                else:
                    self.proj_ns += ns
            self._pairs = []
        return (self.attention_ns - self.proj_ns) * 1e-9

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def time_case(model, spec, case, dev, gen, timer: PassTimer, repeat: int, hooks_ns=None,
              long_pass_s: float | None = None) -> dict:
    """Median seconds of ``repeat`` passes of ``case`` after a warm-up, and the floor (at most 2
    passes when the warm-up took longer than ``long_pass_s``). With
    ``hooks_ns`` (a CPU clock), every unhooked pass is followed by a hooked one (interleaved, so
    both see the same machine), and ``attention_s`` is the median of the hooked attention times."""
    phase, b, s = case
    run = prepare(model, spec, phase, b, s, dev, gen)
    warm = timer.seconds(run)  # warm-up: allocation, kernel selection, caches
    if long_pass_s is not None and warm > long_pass_s:
        repeat = min(repeat, 2)  # a long pass varies less from run to run and costs the most
    totals, atts = [], []
    for _ in range(repeat):
        totals.append(timer.seconds(run))
        if hooks_ns is not None:
            hooks = AttentionHooks(model, hooks_ns)
            try:
                run()
            finally:
                hooks.remove()
            atts.append(hooks.seconds)
    model.drop_caches()
    out = {"seconds": statistics.median(totals), "seconds_min": min(totals), "seconds_max": max(totals),
           "runs": len(totals), "floor_pct": floor_pct(totals)}
    if hooks_ns is not None:
        out["attention_s"] = statistics.median(atts)
    return out


# What AttentionHooks add to a pass, per layer: 0.51 ms on a 12.3 ms decode step of the 4-layer
# timing-llama-21m (median of 200 hooked and 200 unhooked passes, interleaved, 1 thread).
HOOKS_S_PER_LAYER = 1.3e-4


# Warm-up per visit: passes until WARMUP_S has gone (at least one), then on while a pass is still
# 3 % faster than the one before (recovering), up to WARMUP_MAX_S. After a large pass a short one
# runs slow for several passes, longer the larger the pass before (1 thread, Xeon VM, median of 3:
# timing-llama-21m decode 2 x 24 after a 1 x 384 prefill 6.98, 6.59, 5.42, 4.48, 4.36 ms, after a
# decode 4.40, 4.45, 4.39; the LLaMA-GQA model's after its 1 x 384 prefill 10.15, 9.92, 9.59, 8.89,
# 7.97, 7.09, 6.74, 6.83 ms, after a decode 6.59, 6.56, 6.60). A sleep between does not help, nor
# glibc's trim and mmap thresholds. With one warm-up a short case's time depended on its neighbours.
WARMUP_S = 0.03
WARMUP_MAX_S = 0.25
WARMUP_FALLING = 0.97


def time_cases(model, spec, cases, dev, gen, timer: PassTimer, visits: int, hooks_ns=None,
               long_pass_s: float | None = None, seed: int = 0, progress=None, warmup_s: float = WARMUP_S,
               warmup_max_s: float = WARMUP_MAX_S):
    """Time every case of ``cases`` in ``visits`` rounds; yield ``(index, result)`` as each case's
    last visit ends (all of them in the last round).

    A round visits every case once, in an order shuffled by ``seed`` and the round: set the case
    up, warm-up passes (until ``warmup_s`` has gone, at least one, then on while each is 3 % faster
    than the one before, up to ``warmup_max_s``: :data:`WARMUP_S`), one timed pass and, with
    ``hooks_ns`` (a CPU clock, or "cuda"), one hooked pass for the attention share. A case whose
    warm-up took longer than ``long_pass_s`` skips the warm-up on its later visits (a pass that long is not slower cold: first / second pass 0.996-1.02
    measured from 176 ms up, 1.06-1.12 for 8-27 ms passes), and with hooks times the hooked pass
    itself where the hooks cost under 0.1 % of it (:data:`HOOKS_S_PER_LAYER`). ``progress(round, visits)`` is called
    after each round but the last. The result: ``seconds``, the geometric mean of the visits;
    ``seconds_median``, ``seconds_min``, ``seconds_max``; ``runs`` (= visits); ``floor_pct``, the
    visits' spread (:func:`profiler.measure.floor_pct`); ``attention_s``, the mean of the hooked
    attention times, with hooks."""
    cases = list(cases)
    times = [[] for _ in cases]
    atts = [[] for _ in cases]
    long_ = [False] * len(cases)
    hooked_timed = [False] * len(cases)
    hooks_cost_s = HOOKS_S_PER_LAYER * len(getattr(model, "layers", ()))
    for r, order in enumerate(visit_orders(len(cases), visits, seed)):
        for i in order:
            phase, b, s = cases[i]
            run = prepare(model, spec, phase, b, s, dev, gen)
            if not long_[i]:
                warm = timer.seconds(run)
                long_[i] = long_pass_s is not None and warm > long_pass_s
                hooked_timed[i] = long_[i] and warm > 1000 * hooks_cost_s
                spent, prev, falling = warm, warm, False
                while spent < warmup_max_s and (spent < warmup_s or falling):
                    t = timer.seconds(run)
                    spent, prev, falling = spent + t, t, t < WARMUP_FALLING * prev
            if hooks_ns is not None and hooked_timed[i]:
                hooks = AttentionHooks(model, hooks_ns)  # one pass gives both
                try:
                    times[i].append(timer.seconds(run))
                finally:
                    hooks.remove()
                atts[i].append(hooks.seconds)
            else:
                times[i].append(timer.seconds(run))
                if hooks_ns is not None:
                    hooks = AttentionHooks(model, hooks_ns)
                    try:
                        run()
                    finally:
                        hooks.remove()
                    atts[i].append(hooks.seconds)
            model.drop_caches()
            if r == visits - 1:
                ts = times[i]
                out = {"seconds": math.exp(statistics.fmean(math.log(max(t, 1e-12)) for t in ts)),
                       "seconds_median": statistics.median(ts), "seconds_min": min(ts), "seconds_max": max(ts),
                       "runs": len(ts), "floor_pct": floor_pct(ts)}
                if hooks_ns is not None:
                    out["attention_s"] = statistics.fmean(atts[i])
                yield i, out
        if progress is not None and r < visits - 1:
            progress(r + 1, visits)
