"""Text renderings of the reference-model results: ``costmodel profile`` and ``costmodel validate``.

Counts are shown exactly (``1,714,176``): the point of these tables is that two integers agree.
profile's times are medians of visits in rounds, with their min-max spread; validate --timing's the
geometric mean of its visits, with the visit-to-visit floor.
"""

from __future__ import annotations

from .text import human_bytes, human_flops, human_seconds, render


def _n(x) -> str:
    return "-" if x is None else f"{x:,}"


def _diff(a, b) -> str:
    if b is None:
        return "-"
    return "=" if a == b else f"{b - a:+,}"


def _layer(layer) -> str:
    return "-" if layer is None else str(layer)


def _skipped_line(name: str, ops: dict | None, limit: int = 8) -> str:
    if ops is None:
        return f"  {name}: not run"
    if not ops:
        return f"  {name}: none"
    top = sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{op} x{n}" for op, n in top[:limit])
    more = f", and {len(top) - limit} more" if len(top) > limit else ""
    return f"  {name}: {len(top)} ops without a count: {shown}{more}"


def counts_lines(c) -> list[str]:
    """The per-op FLOP comparison and the memory checks of a CountResult."""
    w = c.workload
    phases = c.phases
    out = []
    rows = [[r.phase, _layer(r.layer), r.op, _n(r.analytic_matmul_flops), _n(r.counted_matmul_flops),
             _diff(r.analytic_matmul_flops, r.counted_matmul_flops), _n(r.fvcore_matmul_flops),
             _diff(r.analytic_matmul_flops, r.fvcore_matmul_flops)] for r in c.rows]
    for p in phases:
        d = c.phase_dict(p)
        rows.append([p, "", "TOTAL", _n(d["analytic_matmul_flops"]), _n(d["counted_matmul_flops"]),
                     _diff(d["analytic_matmul_flops"], d["counted_matmul_flops"]), _n(d["fvcore_matmul_flops"]),
                     _diff(d["analytic_matmul_flops"], d["fvcore_matmul_flops"])])
    out.append(f"Matmul FLOPs per op (2 per multiply-add; decode summed over {w.decode_steps} steps; "
               "fvcore counts 1 per multiply-add, shown x2):")
    out.append(render(["phase", "layer", "op", "analytic", "FlopCounterMode", "diff", "fvcore x2", "diff"], rows,
                      align=["l", "r", "l"] + ["r"] * 5))
    out.append("")
    for p in phases:
        d = c.phase_dict(p)
        out.append(f"KV cache after {p}: measured {d['kv_cache_bytes']:,} B, analytic {d['analytic_kv_cache_bytes']:,} B "
                   f"({'equal' if d['kv_cache_bytes'] == d['analytic_kv_cache_bytes'] else 'DIFFERENT'})")
        for part in ("self", "cross") if "cross_kv_cache_bytes" in d else ():  # encoder-decoder
            m, a = d[f"{part}_kv_cache_bytes"], d[f"analytic_{part}_kv_cache_bytes"]
            out.append(f"  {part}-attention: measured {m:,} B, analytic {a:,} B ({'equal' if m == a else 'DIFFERENT'})")
    a = c.analysis.memory.weights_bytes
    out.append(f"Weights: measured {c.weight_bytes:,} B, analytic {a:,} B ({'equal' if a == c.weight_bytes else 'DIFFERENT'})")
    out.append("Ops the counters ran without counting them (element-wise and data movement; FlopCounterMode "
               "got torch's SDPA formula for the CPU kernel, fvcore an SDPA handle):")
    out.append(_skipped_line("FlopCounterMode", c.flop_counter_uncounted_ops))
    out.append(_skipped_line("fvcore", c.fvcore_skipped_ops))
    bad = c.uncounted_matmul_ops()
    out.append(f"  matmul-class ops left uncounted: {', '.join(bad) if bad else 'none'}")
    return out


def _header(c, extra: str = "") -> str:
    w, m = c.workload, c.spec
    strat = w.strategy + (f" (width {w.beams})" if w.strategy == "beam" else "")
    return (f"{m.name}: {m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} heads ({m.num_kv_heads} kv, "
            f"head_dim {m.head_dim}); batch {w.batch}, prompt {w.prompt}, gen {w.gen} ({w.decode_steps} decode steps), "
            f"{strat}, logits {w.logits}, KV cache {'on' if w.kv_cache else 'OFF'}, {w.act_dtype}, "
            f"{c.attention} attention{extra}")


def profile_table(r) -> str:
    """The ``costmodel profile`` table: phases, per-op FLOPs, per-layer/op timing, memory, overheads."""
    c = r.counts
    phases = c.phases
    lines = [_header(c, f"; {r.device}; {r.repeat} rounds after {r.warmup} warm-up"), ""]
    rows = []
    for p in phases:
        d = r.phase_dict(p)
        rows.append([p, _n(d["analytic_matmul_flops"]), _n(d["counted_matmul_flops"]), _n(d["fvcore_matmul_flops"]),
                     _diff(d["analytic_matmul_flops"], d["counted_matmul_flops"]),
                     f"{human_seconds(d['seconds'])} [{human_seconds(d['seconds_min'])} - {human_seconds(d['seconds_max'])}]",
                     f"{d['tokens_per_s']:,.0f}", human_flops(d["achieved_matmul_flops_per_s"]) + "/s"])
    lines.append(render(["phase", "analytic matmul FLOPs", "FlopCounterMode", "fvcore x2", "diff",
                         "time: median [min - max]", "tokens/s", "matmul FLOP/s"], rows,
                        align=["l"] + ["r"] * 7))
    m = r.measurement
    if m:
        lines.append(_measurement_line(m, r.repeat))
    lines.append("")
    lines += counts_lines(c)
    lines.append("")
    lines.append(f"Time per layer and op (median of {r.repeat} visits with per-op hooks; phase totals from the "
                 "visits with phase timers only):")
    trows = [[t.phase, _layer(t.layer), t.part, human_seconds(t.stats.median),
              f"{human_seconds(t.stats.min)} - {human_seconds(t.stats.max)}"] for t in r.timing]
    lines.append(render(["phase", "layer", "part", "median", "min - max"], trows, align=["l", "r", "l", "r", "r"]))
    lines.append("")
    if r.peak_memory_bytes:
        lines.append("Peak memory (torch.cuda.max_memory_allocated): "
                     + ", ".join(f"{p} {human_bytes(v)}" for p, v in r.peak_memory_bytes.items()))
    else:
        lines.append("Peak memory: not measured on this device (torch.cuda.max_memory_allocated needs a GPU)")
    s = r.kv_cache_speedup
    if s:
        lines.append(f"KV cache: decode {human_seconds(s['decode_seconds_with_cache'])} with vs "
                     f"{human_seconds(s['decode_seconds_without_cache'])} without: measured speed-up "
                     f"{s['measured_speedup']:.2f}x; analytic ratio {s['analytic_flops_ratio']:.2f}x the FLOPs, "
                     f"{s['analytic_bytes_ratio']:.2f}x the bytes (without / with; median of {s['runs']} visits)")
    o = r.overhead
    lines.append(f"Instrumentation overhead (median of {o['runs']} visits, bare {human_seconds(o['bare_seconds'])}): "
                 f"phase timers {o['phase_timers_overhead']:+.1%}, per-op hooks {o['per_op_hooks_overhead']:+.1%}")
    lines.append(_verdict(c))
    return "\n".join(lines)


def _measurement_line(m: dict, rounds: int) -> str:
    """How profile's times were taken: the rounds, the clock, the visits' spread, the load."""
    clock = {"thread": "per-thread CPU clock", "cuda": "CUDA events"}.get(m["clock"], "wall clock")
    threads = f", {m['threads']} thread{'s' if m['threads'] != 1 else ''}" if m.get("threads") else ""
    floors = ", ".join(f"{p} {v:.1f} %" for p, v in m["floor_pct"].items())
    line = (f"Times: median of {rounds} visits; each round visits the loop {', '.join(m['variants'])} once, "
            f"in a shuffled order; {clock}{threads}; visit-to-visit floor {floors}")
    load = m.get("load")
    if load:
        busy = "" if load.get("busy_share") is None else f", machine {load['busy_share']:.0%} busy"
        line += (f"; load average {load['loadavg_1m_start']:.2f} -> {load['loadavg_1m_end']:.2f} on "
                 f"{load['cpus']} CPUs{busy}")
    return line


def _verdict(c) -> str:
    if c.ok and not c.uncounted_matmul_ops():
        return "Analytic matmul FLOPs equal the counted ones for every op and step; KV-cache and weight bytes equal."
    return "\n".join(["MISMATCH:"] + [f"  {m}" for m in c.mismatches]
                     + [f"  uncounted matmul op {op}" for op in c.uncounted_matmul_ops()])


def validate_table(results, planned: int, interrupted: bool = False) -> str:
    rows = []
    for res in results:
        c = res.counts
        ph = {p: c.phase_dict(p) for p in c.phases}
        kv = ph[c.phases[-1]]
        flops = [_n(ph[p][k]) if p in ph else "-" for p in ("encode", "prefill", "decode")
                 for k in ("analytic_matmul_flops", "counted_matmul_flops")]
        rows.append([res.case.name, res.attention, res.case.model, *flops,
                     _n(kv["analytic_kv_cache_bytes"]), _n(kv["kv_cache_bytes"]), "ok" if res.ok else "MISMATCH"])
    lines = [render(["case", "attention", "model", "encode analytic", "encode counted", "prefill analytic",
                     "prefill counted", "decode analytic", "decode counted", "KV B analytic", "KV B measured",
                     "result"], rows, align=["l", "l", "l"] + ["r"] * 8 + ["l"])]
    lines.append("Matmul FLOPs (2 per multiply-add), compared per op, per layer and per decode step; "
                 "decode columns sum the gen - 1 steps; KV bytes of the cache tensors after the last step "
                 "(encoder-decoder: self- plus cross-attention, each compared on its own).")
    bad = [res for res in results if not res.ok]
    for res in bad:
        for m in res.counts.mismatches:
            lines.append(f"MISMATCH {res.label}: {m}")
        for op in res.counts.uncounted_matmul_ops():
            lines.append(f"MISMATCH {res.label}: matmul op {op} ran without a FLOP count")
    done = len(results)
    status = f"interrupted after {done} of {planned} cases" if interrupted else f"{done} cases"
    lines.append(f"{status}: {done - len(bad)} ok, {len(bad)} mismatched")
    return "\n".join(lines)


def timing_validation_table(cases, summary: dict, hardware_id: str, measurement: dict | None = None) -> str:
    """``costmodel validate --timing``: predicted beside measured seconds per case, then the errors
    with the visit-to-visit floor (and, where an op table predicted, the roofline's beside it)."""
    predictor = summary.get("predictor", "roofline")
    shown = [(name, attr) for name, attr in (("roofline", "roofline"), ("curves", "curves"))
             if name != predictor and cases and all(getattr(c, f"{attr}_s", None) is not None for c in cases)]
    head = ["phase", "batch", "context", "predicted", "measured", "error", "floor"]
    for name, _ in reversed(shown):
        head[3:3] = [name, f"{name} err"]
    head.append("roofline bound")
    rows = []
    for c in cases:
        row = [c.phase, c.batch, c.context, human_seconds(c.predicted_s), human_seconds(c.measured_s),
               f"{c.error_pct:+.1f} %", f"{getattr(c, 'floor_pct', 0.0):.1f} %"]
        for _, attr in reversed(shown):
            row[3:3] = [human_seconds(getattr(c, f"{attr}_s")), f"{getattr(c, f'{attr}_error_pct'):+.1f} %"]
        rows.append(row + [c.bound])
    lines = [render(head, rows, align=["l", "r", "r"] + ["r"] * (len(head) - 4) + ["l"])]
    if cases:
        m = measurement or {}
        how = (f"geometric mean of {m.get('repeat', 5)} visits per case in rounds spread over the run, a "
               f"warm-up (over 0.5 s: the first visit only) and one timed pass each, on the "
               f"{'per-thread CPU' if m.get('clock') == 'thread' else m.get('clock', 'wall')} clock"
               + (f", {m['threads']} thread{'s' if m['threads'] != 1 else ''}" if m.get("threads") else "")
               + "; eager attention, fp32")
        lines.append(f"\n{summary['cases']} cases on {hardware_id}, predicted by the {summary.get('predictor', 'roofline')}: "
                     f"median |error| {summary['median_abs_error_pct']:.1f} %, p90 {summary['p90_abs_error_pct']:.1f} %, "
                     f"max {summary['max_abs_error_pct']:.1f} %; visit-to-visit floor median "
                     f"{summary.get('floor_median_pct') or 0.0:.1f} %, p90 {summary.get('floor_p90_pct') or 0.0:.1f} %")
        if summary.get("table_drift_pct") is not None:
            lines.append(f"calibration-to-validation drift: {summary['table_drift_pct']:.1f} % (two op-table grid "
                         "points timed again before and after the cases; errors below it are not resolved)")
        for name in ("curves", "roofline"):
            if f"{name}_median_abs_error_pct" in summary:
                lines.append(f"{name} alone: median |error| {summary[f'{name}_median_abs_error_pct']:.1f} %, "
                             f"p90 {summary[f'{name}_p90_abs_error_pct']:.1f} %")
        load = m.get("load")
        if load:
            busy = "" if load.get("busy_share") is None else (
                f", machine {load['busy_share']:.0%} busy, steal {load['steal_share']:.1%}")
            how += (f"; load average {load['loadavg_1m_start']:.2f} -> {load['loadavg_1m_end']:.2f} on "
                    f"{load['cpus']} CPUs{busy}")
        lines.append(f"({how})")
        if "max_error_pct" in summary and not summary.get("ok", True):
            lines.append(f"FAIL: median |error| {summary['median_abs_error_pct']:.1f} % exceeds --max-error "
                         f"{summary['max_error_pct']:g} %")
    return "\n".join(lines)
