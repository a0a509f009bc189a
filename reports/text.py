"""Text renderings of an :class:`~costmodel.Analysis`: aligned table, Markdown, CSV.

Pure Python (no pandas) so that the analytic CLI stays fast. Numbers stay SI internally; units
(GFLOP, GiB, ...) appear only here.
"""

from __future__ import annotations

import csv
import io

_COLUMNS = ("phase", "layer", "op", "kind", "flops", "matmul_flops", "bytes", "weight_bytes",
            "act_read_bytes", "act_write_bytes", "kv_read_bytes", "kv_write_bytes")


def human_flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def human_bytes(x: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def human_count(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


def human_seconds(x: float) -> str:
    if x >= 1:
        return f"{x:.3f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3f} ms"
    return f"{x * 1e6:.1f} us"


def _intensity(flops: int, nbytes: int) -> str:
    return f"{flops / nbytes:.2f}" if nbytes else "-"


def render(headers, rows, markdown: bool = False, align=None) -> str:
    """Aligned plain-text table, or a Markdown table. ``align``: 'l'/'r' per column."""
    rows = [[str(c) for c in r] for r in rows]
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    if markdown:
        out = ["| " + " | ".join(headers) + " |",
               "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _phase_op_rows(result):
    """Rows of the summary: each block op once (identical in every layer), then model-level ops."""
    pre, dec = result.prefill.cost, result.decode.cost
    L = result.model.num_layers

    def cells(name, scope, p, d):
        return [name, scope, human_flops(p[0]), human_bytes(p[1]), _intensity(*p),
                human_flops(d[0]), human_bytes(d[1]), _intensity(*d)]

    rows = []
    for o_p, o_d in zip(pre.before, dec.before):
        rows.append(cells(o_p.op, "model", (o_p.flops, o_p.bytes), (o_d.flops, o_d.bytes)))
    for o_p, o_d in zip(pre.layer, dec.layer):
        rows.append(cells(o_p.op, "each layer", (o_p.flops, o_p.bytes), (o_d.flops, o_d.bytes)))
    lp = (sum(o.flops for o in pre.layer), sum(o.bytes for o in pre.layer))
    ld = (sum(o.flops for o in dec.layer), sum(o.bytes for o in dec.layer))
    rows.append(cells("layer total", "each layer", lp, ld))
    rows.append(cells(f"{L} layers", "all layers", (L * lp[0], L * lp[1]), (L * ld[0], L * ld[1])))
    for o_p, o_d in zip(pre.after, dec.after):
        rows.append(cells(o_p.op, "model", (o_p.flops, o_p.bytes), (o_d.flops, o_d.bytes)))
    rows.append(cells("TOTAL", "", (result.prefill.flops, result.prefill.bytes),
                      (result.decode.flops, result.decode.bytes)))
    rows.append(["  of which matmul", "", human_flops(result.prefill.matmul_flops), "", "",
                 human_flops(result.decode.matmul_flops), "", ""])
    return rows


def _header_lines(result) -> list[str]:
    m, w = result.model, result.workload
    cache = "on" if w.kv_cache else "OFF (each decode step recomputes the prefix)"
    return [
        f"{m.name}: {human_count(m.num_params)} parameters ({m.num_params:,}), {m.num_layers} layers, "
        f"hidden {m.hidden_size}, {m.num_heads} heads ({m.num_kv_heads} kv, head_dim {m.head_dim}), "
        f"intermediate {m.intermediate_size} ({m.mlp_kind}), vocab {m.vocab_size}",
        f"workload: batch {w.batch}{f' x {w.beams} beams' if w.beams > 1 else ''}, prompt {w.prompt}, "
        f"gen {w.gen} ({w.decode_steps} decode steps, context up to {w.final_context}); "
        f"weights {w.weight_dtype}, activations {w.act_dtype}, KV {w.kv_dtype}; logits {w.logits}; "
        f"KV cache {cache}{'; causal counting' if w.causal else ''}",
    ]


def _memory_lines(result) -> list[str]:
    mem, w, sv = result.memory, result.workload, result.kv_cache_saving()
    kv = (f"KV cache {human_bytes(mem.kv_cache_bytes)} ({human_bytes(mem.kv_cache_bytes_per_token)}/token x "
          f"{w.final_context} positions x {w.batch * w.beams} sequences)" if w.kv_cache
          else f"KV cache none (would be {human_bytes(mem.kv_cache_bytes_per_token)}/token)")
    lines = [f"memory: weights {human_bytes(mem.weights_bytes)}, {kv}, "
             f"prefill activation peak {human_bytes(mem.activation_peak_bytes)}"]
    moe = result.moe()
    if moe:
        lines.append(
            f"experts: {moe['num_experts']} routed, {moe['experts_per_token']} per token; "
            f"{human_count(moe['active_params'])} of {human_count(moe['total_params'])} parameters active per token; "
            f"a decode step ({moe['decode_step_tokens']} tokens) reads at most {moe['decode_step_experts_read']} "
            f"experts a layer ({moe['decode_step_expected_experts_read']:.2f} expected under uniform routing: "
            f"{human_bytes(moe['decode_step_expected_expert_weight_bytes'])} of expert weights), "
            f"prefill reads {moe['prefill_experts_read']}")
    if sv["flops_ratio"] is not None:
        lines.append(
            f"KV cache saving: decode {human_flops(sv['decode_flops_with_cache'])} with a cache vs "
            f"{human_flops(sv['decode_flops_without_cache'])} without ({sv['flops_ratio']:.1f}x the FLOPs "
            f"without; bytes {human_bytes(sv['decode_bytes_with_cache'])} vs "
            f"{human_bytes(sv['decode_bytes_without_cache'])})")
    return lines


_SUMMARY_HEADERS = ["op", "scope", "prefill FLOPs", "prefill bytes", "FLOP/B",
                    "decode FLOPs", "decode bytes", "FLOP/B"]


def _summary(result, timing, markdown=False) -> str:
    rows, headers = _phase_op_rows(result), list(_SUMMARY_HEADERS)
    if timing is not None:  # roofline time and bound of each row, prefill then decode
        headers += ["prefill time", "bound", "decode time", "bound"]
        rows = [r + t for r, t in zip(rows, _time_cells(timing))]
    return render(headers, rows, markdown=markdown, align=["l", "l"] + ["r"] * (len(headers) - 2))


def _time_cells(timing) -> list[list[str]]:
    """Cells aligned with :func:`_phase_op_rows`: seconds and bound per op, then the totals."""
    pre, dec = timing.prefill, timing.decode

    def cells(p, d):
        return [human_seconds(p.seconds), p.bound, human_seconds(d.seconds), d.bound]

    out = [cells(p, d) for p, d in zip(pre.before, dec.before)]
    out += [cells(p, d) for p, d in zip(pre.layer, dec.layer)]
    lp, ld = sum(o.seconds for o in pre.layer), sum(o.seconds for o in dec.layer)
    out.append([human_seconds(lp), "", human_seconds(ld), ""])
    out.append([human_seconds(pre.num_layers * lp), "", human_seconds(dec.num_layers * ld), ""])
    out += [cells(p, d) for p, d in zip(pre.after, dec.after)]
    out.append([human_seconds(pre.seconds), "", human_seconds(dec.seconds), ""])
    out.append(["", "", "", ""])
    return out


def _timing_lines(timing) -> list[str]:
    """TTFT, TPOT (first, mean, last), end-to-end latency, tokens/s, and the assumptions."""
    hw, eff, tp = timing.hardware, timing.hardware.efficiencies(), timing.tpot()

    def ms(x):
        return "-" if x is None else human_seconds(x)

    share = []
    for name, ph in (("prefill", timing.prefill), ("decode", timing.decode)):
        b = ph.bound_seconds()
        if ph.seconds:
            share.append(f"{name} {b['compute'] / ph.seconds:.0%} compute-bound, "
                         f"{b['memory'] / ph.seconds:.0%} memory-bound, {b['overhead'] / ph.seconds:.0%} overhead")
    return [
        f"latency on {hw.id} ({hw.name}): TTFT {human_seconds(timing.ttft_s)}; TPOT first {ms(tp['first'])}, "
        f"mean {ms(tp['mean'])}, last {ms(tp['last'])}; end-to-end {human_seconds(timing.e2e_s)}; "
        f"{timing.tokens_per_s:,.1f} tokens/s generated",
        f"roofline: per op max(FLOPs / {timing.rates.flops_per_s / 1e12:,.4g} TFLOP/s, bytes / "
        f"{timing.rates.bytes_per_s / 1e9:,.4g} GB/s) + {hw.op_overhead_s * 1e6:g} us overhead (efficiencies "
        f"{eff['source']}: FLOP/s {eff['flops']:g}, bandwidth {eff['bandwidth']:g}); " + "; ".join(share),
    ]


def report_table(result, timing=None) -> str:
    """The readable summary: per-layer op table with phase totals, then memory (and latency with
    a :class:`~costmodel.roofline.Timing`)."""
    body = _summary(result, timing)
    note = f"decode columns are totals over {result.decode.steps} steps"
    extra = [] if timing is None else _timing_lines(timing)
    return "\n".join(_header_lines(result) + ["", body, note, ""] + _memory_lines(result) + extra)


def report_markdown(result, timing=None) -> str:
    body = _summary(result, timing, markdown=True)
    head = _header_lines(result)
    extra = [] if timing is None else _timing_lines(timing)
    return "\n".join([f"# Cost report: {result.model.name}", "", head[0], "", head[1], "", body, "",
                      f"Decode columns are totals over {result.decode.steps} steps.", ""]
                     + [f"- {line}" for line in _memory_lines(result) + extra])


def ops_csv(result, timing=None) -> str:
    """Every (phase, layer, op) row, with exact integer counts (plus ``seconds`` and ``bound``
    with a timing: a decode row's seconds are that op's over all steps)."""
    buf = io.StringIO()
    columns = _COLUMNS if timing is None else _COLUMNS + ("seconds", "bound")
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    times = None if timing is None else iter([o for ph in (timing.prefill, timing.decode) for _, o in ph.rows()])
    for row in result.rows():
        row = {**row, "layer": "" if row["layer"] is None else row["layer"]}
        if times is not None:
            o = next(times)
            row.update(seconds=repr(o.seconds), bound=o.bound)
        writer.writerow(row)
    return buf.getvalue()


def models_table(specs) -> str:
    rows = [[s.name, human_count(s.num_params), s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads,
             s.head_dim, s.intermediate_size, s.vocab_size, s.max_position_embeddings, s.mlp_kind,
             s.position_kind] for s in specs]
    return render(["model", "params", "layers", "hidden", "heads", "kv_heads", "head_dim", "inter",
                   "vocab", "max_pos", "mlp", "positions"], rows,
                  align=["l"] + ["r"] * 9 + ["l", "l"])
