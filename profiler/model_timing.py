"""Timing the reference model's passes: one code path for op-table calibration and validation.

A *case* is ``(phase, batch, context)``: a prefill pass over ``context`` tokens per sequence, or
one cached decode step at position ``context`` (attending over ``context + 1`` keys). A decode
case's cache is allocated at ``context + 1`` positions and filled with a constant (every page
written, so reads stream real memory, not the kernel's shared zero page), not by a prefill: a
64 x 256 prefill would cost more than the whole sweep.

Every pass is timed with :class:`profiler.measure.PassTimer` (per-thread CPU clock at one CPU
thread, wall time at more, CUDA events on a GPU), after a warm-up pass, and the statistic is the
median of the repeats, with :func:`profiler.measure.floor_pct` as the run-to-run floor.
:class:`AttentionHooks` times each block's attention module minus its projections in place.
"""

from __future__ import annotations

import statistics

import torch

from .generate import decode_one_token, prefill
from .measure import PassTimer, floor_pct


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
