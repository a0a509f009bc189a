"""Text renderings of an :class:`~costmodel.Analysis`: aligned table, Markdown, CSV.

Pure Python (no pandas) so that the analytic CLI stays fast. Numbers stay SI internally; units
(GFLOP, GB, ...) appear only here, SI throughout (:data:`UNITS_NOTE`, stated once in each output).
"""

from __future__ import annotations

import csv
import io

from costmodel.quant import describe as quant_describe
from costmodel.roofline import join_by_key
from costmodel.spec import decoder_start

_COLUMNS = ("phase", "layer", "op", "kind", "flops", "matmul_flops", "bytes", "weight_bytes",
            "act_read_bytes", "act_write_bytes", "kv_read_bytes", "kv_write_bytes")


def human_flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


# Bytes render in SI units everywhere (tables, plots, HTML), as the hardware catalog and the vendors'
# capacities and bandwidths are given: 1 GB = 10^9 bytes. Each output states it once (UNITS_NOTE).
UNITS_NOTE = "units: SI (1 GB = 10^9 bytes, 1 TFLOP = 10^12 FLOP)"


def human_bytes(x: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
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


def _merge_names(lists) -> list[str]:
    """Ordered union of op names: each phase's ops keep their order; an op only some phases have
    goes after the op it follows there (the encoder's and decoder's blocks share most names)."""
    merged: list[str] = []
    for names in lists:
        for i, name in enumerate(names):
            if name in merged:
                continue
            at = merged.index(names[i - 1]) + 1 if i and names[i - 1] in merged else len(merged)
            merged.insert(at, name)
    return merged


def _phase_op_rows(result, timing=None):
    """Rows of the summary: each block op once (identical in every layer), then model-level ops;
    one column group per phase (prefill and decode; encode for encoder models), and with a
    ``timing`` one (time, bound) pair per phase, each op's time found by its (phase, layer, op) key."""
    phases = list(result.phases.values())
    layer_counts = {p.cost.num_layers for p in phases}
    times = {}
    if timing is not None:
        times = timing.op_times()
        join_by_key(result.rows(), times)  # every op row has its time and every time its row, or ValueError

    def cells(name, scope, values):
        out = [name, scope]
        for v in values:
            out += ["-", "-", ""] if v is None else [human_flops(v[0]), human_bytes(v[1]), _intensity(*v)]
        return out

    def timed(row, pair):
        """``row`` and, with a timing, the two cells ``pair(phase name)`` gives for each phase."""
        return row if timing is None else row + [c for p in phases for c in pair(p.name)]

    def op_time(o):
        return ["-", ""] if o is None else [human_seconds(o.seconds), o.bound]

    def section(ops_of, scope, layer=None):
        """Rows of the ops ``ops_of(cost)`` gives (the same in each phase), timed at ``layer``."""
        by_phase = [{o.op: o for o in ops_of(p.cost)} for p in phases]
        names = _merge_names([[o.op for o in ops_of(p.cost)] for p in phases])
        return [timed(cells(n, scope, [(d[n].flops, d[n].bytes) if n in d else None for d in by_phase]),
                      lambda name: op_time(times.get((name, layer, n)))) for n in names]

    def block_rows(ops_of, count_of, time_ops_of, label, layer):
        """A block's ops (timed at ``layer``, which stands for every block alike), its total for
        one block and for ``label`` blocks."""
        rows = section(ops_of, "each layer", layer)
        per_layer = [(sum(o.flops for o in ops_of(p.cost)), sum(o.bytes for o in ops_of(p.cost))) for p in phases]

        def layer_s(name):
            return sum(o.seconds for o in time_ops_of(timing.phases[name]))

        rows.append(timed(cells("layer total", "each layer", per_layer),
                          lambda name: [human_seconds(layer_s(name)), ""]))
        rows.append(timed(cells(label, "all layers", [(count_of(p.cost) * f, count_of(p.cost) * b)
                                                      for p, (f, b) in zip(phases, per_layer)]),
                          lambda name: [human_seconds(count_of(timing.phases[name]) * layer_s(name)), ""]))
        return rows

    rows = section(lambda c: c.before, "model")
    if all(len(p.cost.groups) == 1 for p in phases):  # every block alike: layer 0 stands for all
        label = f"{layer_counts.pop()} layers" if len(layer_counts) == 1 else "all layers"
        rows += block_rows(lambda c: c.layer, lambda c: c.num_layers, lambda t: t.layer, label, 0)
    else:  # the decoder phases share their layer groups: one block of rows per group
        for k, (g, _) in enumerate(phases[0].cost.groups):
            heading = [g.describe(), ""] + [""] * (3 * len(phases))
            rows.append(timed(heading, lambda name: ["", ""]))

            def count_of(c, k=k):
                return c.groups[k][0].count

            rows += block_rows(lambda c, k=k: c.groups[k][1], count_of, lambda t, k=k: t.groups[k][1],
                               f"{g.count} layers", g.first)
    rows += section(lambda c: c.after, "model")
    rows.append(timed(cells("TOTAL", "", [(p.flops, p.bytes) for p in phases]),
                      lambda name: [human_seconds(timing.phases[name].seconds), ""]))
    matmul = ["  of which matmul", ""]
    for p in phases:
        matmul += [human_flops(p.matmul_flops), "", ""]
    rows.append(timed(matmul, lambda name: ["", ""]))
    return rows


def _header_lines(result) -> list[str]:
    m, w = result.model, result.workload
    layers = (f"{m.num_encoder_layers} encoder + {m.num_layers} decoder layers" if m.arch == "encoder-decoder"
              else f"{m.num_layers} layers")
    first = (f"{m.name}: {human_count(m.num_params)} parameters ({m.num_params:,}), {layers}, "
             f"hidden {m.hidden_size}, {m.num_heads} heads ({m.num_kv_heads} kv, head_dim {m.head_dim}), "
             f"intermediate {m.intermediate_size} ({m.mlp_kind}), vocab {m.vocab_size}")
    if len(m.layer_groups()) > 1 or m.sliding_window is not None:
        first += "; " + "; ".join(g.describe() for g in m.layer_groups())
        if m.sliding_window is not None:
            first += f" (window {m.sliding_window})"
        if "chunked_attention" in m.layer_types:
            first += f" (chunk {m.attention_chunk_size})"
    dtypes = f"weights {w.weight_dtype}, activations {w.act_dtype}"
    if w.quant != "none":
        dtypes += f"; quant {quant_describe(w.quant)}"
    if m.arch == "encoder":
        return [first, f"workload: batch {w.batch}, input {w.prompt} tokens (one bidirectional encode "
                       f"pass, no generation); {dtypes}"]
    cache = "on" if w.kv_cache else "OFF (each decode step recomputes the prefix)"
    if m.arch == "encoder-decoder":
        what = (f"source {w.prompt} tokens (encoded once), decoder prompt {w.decoder_prompt}, gen {w.gen} "
                f"({w.decode_steps} decode steps, decoder context up to {w.decoder_prompt + w.gen - 1})")
    else:
        what = f"prompt {w.prompt}, gen {w.gen} ({w.decode_steps} decode steps, context up to {w.final_context})"
    return [first,
            f"workload: batch {w.batch}{f' x {w.beams} beams' if w.beams > 1 else ''}, {what}; "
            f"{dtypes}, KV {w.kv_dtype}; logits {w.logits}; "
            f"KV cache {cache}{'; causal counting' if w.causal else ''}"]


def _memory_lines(result) -> list[str]:
    mem, w, sv, m = result.memory, result.workload, result.kv_cache_saving(), result.model
    seqs = w.batch * w.beams
    if m.arch == "encoder":
        kv = "no KV cache (encoder-only)"
    elif not w.kv_cache:
        kv = f"KV cache none (would be {human_bytes(mem.kv_cache_bytes_per_token)}/token)"
    else:
        positions = decoder_start(m, w) + w.gen - 1
        kv = (f"KV cache {human_bytes(mem.kv_cache_bytes)} ({human_bytes(mem.kv_cache_bytes_per_token)}/token x "
              f"{positions} positions x {seqs} sequences")
        sliding = m.layer_types.count("sliding_attention")
        if sliding:
            kv += (f"; {sliding} of the {m.num_layers} layers slide over {m.sliding_window} positions and "
                   f"keep at most {m.sliding_window - 1}")
        chunked = m.layer_types.count("chunked_attention")
        if chunked:
            kv += (f"; {chunked} of the {m.num_layers} layers attend within chunks of {m.attention_chunk_size} "
                   f"and keep at most {m.attention_chunk_size - 1}")
        if mem.cross_kv_cache_bytes:
            kv += (f" for self-attention, {human_bytes(mem.self_kv_cache_bytes)}; cross-attention "
                   f"{human_bytes(mem.cross_kv_cache_bytes)} for the {w.prompt} source positions")
        kv += ")"
    lines = [f"memory: weights {human_bytes(mem.weights_bytes)}, {kv}, "
             f"activation peak {human_bytes(mem.activation_peak_bytes)}"]
    moe = result.moe()
    if moe:
        line = (f"experts: {moe['num_experts']} routed, {moe['experts_per_token']} per token; "
                f"{human_count(moe['active_params'])} of {human_count(moe['total_params'])} parameters active per token")
        if "decode_step_tokens" in moe:
            line += (f"; a decode step ({moe['decode_step_tokens']} tokens) reads at most "
                     f"{moe['decode_step_experts_read']} experts a layer ({moe['decode_step_expected_experts_read']:.2f} "
                     f"expected under uniform routing: {human_bytes(moe['decode_step_expected_expert_weight_bytes'])} "
                     f"of expert weights), prefill reads {moe['prefill_experts_read']}")
        lines.append(line)
    if result.checkpoint is not None:
        lines.append(_checkpoint_line(result))
    if sv is not None and sv["flops_ratio"] is not None:
        lines.append(
            f"KV cache saving: decode {human_flops(sv['decode_flops_with_cache'])} with a cache vs "
            f"{human_flops(sv['decode_flops_without_cache'])} without ({sv['flops_ratio']:.1f}x the FLOPs "
            f"without; bytes {human_bytes(sv['decode_bytes_with_cache'])} vs "
            f"{human_bytes(sv['decode_bytes_without_cache'])})")
    return lines


def _checkpoint_line(result) -> str:
    c, w = result.checkpoint, result.workload
    dtypes = ", ".join(f"{dt} {human_bytes(b)}" for dt, b in sorted(c.bytes_by_dtype.items(), key=lambda kv: -kv[1]))
    line = (f"checkpoint: {len(c.files)} safetensors file{'s' if len(c.files) != 1 else ''}, {c.num_tensors:,} "
            f"tensors, {c.num_params:,} elements, {human_bytes(c.weights_bytes)} ({dtypes}); ")
    if c.quantised:
        return line + (f"quantised (matrices in {', '.join(c.quantised_dtypes)}): the weight memory above is the checkpoint's "
                       f"bytes, not the parameter count at {w.weight_dtype}; per-op weight reads still use "
                       f"{w.weight_dtype}")
    return line + f"weight memory above is the spec's parameters at {w.weight_dtype}"


def _summary(result, timing, markdown=False) -> str:
    rows, headers = _phase_op_rows(result, timing), ["op", "scope"]
    for name in result.phases:
        headers += [f"{name} FLOPs", f"{name} bytes", "FLOP/B"]
    if timing is not None:  # roofline time and bound of each row, one column pair per phase
        for name in result.phases:
            headers += [f"{name} time", "bound"]
    return render(headers, rows, markdown=markdown, align=["l", "l"] + ["r"] * (len(headers) - 2))


def _timing_lines(timing) -> list[str]:
    """TTFT, TPOT (first, mean, last), end-to-end latency, tokens/s, and the assumptions."""
    hw, eff, tp = timing.hardware, timing.hardware.efficiencies(), timing.tpot()

    def ms(x):
        return "-" if x is None else human_seconds(x)

    share = []
    for name, ph in timing.phases.items():
        b = ph.bound_seconds()
        if ph.seconds:
            share.append(f"{name} time {b['compute'] / ph.seconds:.0%} in compute-bound ops, "
                         f"{b['memory'] / ph.seconds:.0%} in memory-bound ops, {b['overhead'] / ph.seconds:.0%} "
                         "overhead")
    if timing.prefill is None:  # encoder-only: one pass, nothing generated
        first = f"latency on {hw.id} ({hw.name}): encode pass {human_seconds(timing.e2e_s)}"
    else:
        enc = (f" (encode {human_seconds(timing.encode.seconds)} + prefill "
               f"{human_seconds(timing.prefill.seconds)})" if timing.encode else "")
        first = (f"latency on {hw.id} ({hw.name}): TTFT {human_seconds(timing.ttft_s)}{enc}; "
                 f"TPOT first {ms(tp['first'])}, mean {ms(tp['mean'])}, last {ms(tp['last'])}; end-to-end "
                 f"{human_seconds(timing.e2e_s)}; {timing.tokens_per_s:,.1f} tokens/s generated")
    return [
        first,
        f"roofline: per op max(FLOPs / {timing.rates.flops_per_s / 1e12:,.4g} TFLOP/s, bytes / "
        f"{timing.rates.bytes_per_s / 1e9:,.4g} GB/s) + {hw.op_overhead_s * 1e6:g} us overhead (efficiencies "
        f"{eff['source']}: FLOP/s {eff['flops']:g}, bandwidth {eff['bandwidth']:g}); " + "; ".join(share),
    ]


def _per_phase_tables(result, timing, width: int) -> list[str]:
    """The summary as one narrower table per phase (op, scope, FLOPs, bytes, FLOP/B, and with a timing
    time and bound), for a terminal too narrow for the phases side by side; FLOP/B goes first, then
    the scope, where even that does not fit ``width``."""
    rows, names = _phase_op_rows(result, timing), list(result.phases)
    n = len(names)
    out = []
    for k, name in enumerate(names):
        cols = [0, 1, 2 + 3 * k, 3 + 3 * k, 4 + 3 * k]
        headers = ["op", "scope", f"{name} FLOPs", f"{name} bytes", "FLOP/B"]
        if timing is not None:
            cols += [2 + 3 * n + 2 * k, 3 + 3 * n + 2 * k]
            headers += [f"{name} time", "bound"]
        mine = [r for r in rows if r[cols[2]] != "-"]  # the ops this phase runs
        for drop in ((), ("FLOP/B",), ("FLOP/B", "scope")):
            keep = [i for i, h in enumerate(headers) if h not in drop]
            table = render([headers[i] for i in keep], [[r[cols[i]] for i in keep] for r in mine],
                           align=["l", "l"][:sum(1 for i in keep if i < 2)] + ["r"] * sum(1 for i in keep if i >= 2))
            if max(map(len, table.splitlines())) <= width:
                break
        out += [table, ""]
    return out[:-1]


def wrapped(lines, width: int | None) -> list[str]:
    """Prose lines folded to ``width`` (continuations indented two spaces); None: as they are."""
    return _wrapped(lines, width)


def _wrapped(lines, width: int | None) -> list[str]:
    """Prose lines folded to ``width`` (continuations indented two spaces); None: as they are."""
    import textwrap

    if width is None:
        return list(lines)
    out = []
    for line in lines:
        out += textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False) or [""]
    return out


def _joinable(timing):
    """``timing`` when its op times are the counted ops' (no engine, or the reference one); None when
    an engine executes other ops (their times are then in the lines below the table)."""
    if timing is None or timing.engine is None or timing.engine.reference:
        return timing
    return None


def engine_timing_lines(timing) -> list[str]:
    """What an engine's timing adds: its overheads and the FLOPs it executes (none for the reference)."""
    e = timing.engine
    if e is None or e.reference:
        return []
    over = timing.engine_summary()["overhead_s"]
    parts = [f"{name} {human_seconds(v)}" for name, v in over.items() if name != "decode_step"]
    if "decode_step" in over:
        parts.append(f"{human_seconds(over['decode_step'])} per decode step")
    executed = ", ".join(f"{name} {ph.executed_flops:,}" for name, ph in timing.phases.items())
    return [f"engine overhead (kernel launches + host time): {', '.join(parts)}",
            f"executed FLOPs ({e.id}): {executed}; the op table counts the reference convention, per-op "
            "times of the executed ops: --format json (executed_ops)"]


def report_table(result, timing=None, width: int | None = None) -> str:
    """The readable summary: per-layer op table with phase totals, then memory (and latency with
    a :class:`~costmodel.roofline.Timing`; an engine's overheads and executed FLOPs below it).

    ``width``: the terminal's width in characters. None (or a width the full table fits): every
    phase side by side, one line per op, prose unwrapped — the full-detail form (CSV and JSON carry
    every figure too). Narrower: one table per phase, prose wrapped to the width."""
    joined = _joinable(timing)
    body = _summary(result, joined)
    tables = [body] if width is None or max(map(len, body.splitlines())) <= width else \
        _per_phase_tables(result, joined, width)
    note = [] if result.decode is None else [f"decode columns are totals over {result.decode.steps} steps"]
    extra = [] if timing is None else _timing_lines(timing) + engine_timing_lines(timing)
    if width is not None and len(tables) > 1:
        note = [f"decode figures are totals over {result.decode.steps} steps" if result.decode else ""]
        note = [x for x in note if x] + ["(one table per phase to fit the terminal; --wide: side by side)"]
    return "\n".join(_wrapped(_header_lines(result), width) + ["", *tables] + _wrapped(note, width) + [""]
                     + _wrapped(_memory_lines(result) + extra + [UNITS_NOTE], width))


def report_markdown(result, timing=None) -> str:
    body = _summary(result, _joinable(timing), markdown=True)
    head = _header_lines(result)
    extra = [] if timing is None else _timing_lines(timing) + engine_timing_lines(timing)
    note = [] if result.decode is None else [f"Decode columns are totals over {result.decode.steps} steps.", ""]
    return "\n".join([f"# Cost report: {result.model.name}", "", head[0], "", head[1], "", body, ""] + note
                     + [f"- {line}" for line in _memory_lines(result) + extra + [UNITS_NOTE]])


def ops_csv(result, timing=None) -> str:
    """Every (phase, layer, op) row, with exact integer counts (plus ``seconds`` and ``bound``
    with a timing: a decode row's seconds are that op's over all steps)."""
    buf = io.StringIO()
    columns = _COLUMNS if timing is None else _COLUMNS + ("seconds", "bound")
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    rows = [(r, None) for r in result.rows()] if timing is None else join_by_key(result.rows(), timing.op_times())
    for row, o in rows:
        row = {**row, "layer": "" if row["layer"] is None else row["layer"]}
        if o is not None:
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
