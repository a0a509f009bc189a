"""A shareable report: one self-contained HTML page, and Markdown with relative image links.

The page has no external resource (no script, font or stylesheet link): CSS is inline and every
plot is a PNG embedded as a base64 ``data:`` URI, so it opens from disk in any browser and can be
mailed as one file. Sections: model, workload, phase comparison (with roofline latency when a
device is given), memory, the per-layer op table, then the plots.
"""

from __future__ import annotations

import base64
import html
import os

from .text import human_bytes, human_count, human_flops, human_seconds

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1400px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.l { text-align: left; } tr.total td { font-weight: 600; background: #fafafa; }
.note { color: #555; font-size: 0.92em; } .warn { color: #a04000; }
figure { margin: 1.2em 0 2em; } figure img { width: 100%; max-width: 1200px; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.95em; margin-top: 0.3em; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 0.15em 1.2em; }
dl.kv dt { color: #555; } dl.kv dd { margin: 0; }
"""

CAPTIONS = {
    "phases": "Each pass (encode, prefill, a decode step: those the model has): FLOPs and bytes, FLOPs by "
              "textbook term (8bsh², 4bs²h, 16bsh² per layer), the last pass's bytes by kind, and "
              "arithmetic intensity, against context and against batch.",
    "kv-cache": "KV cache against positions held, as configured and with/without GQA and at lower "
                "precision, against the device memory.",
    "memory": "Weights, KV cache, activations and reserve against batch and context, with the device "
              "capacity and the largest batch / context that fits.",
    "roofline": "Every op of prefill and of decode placed on the device roofline by arithmetic intensity.",
    "latency": "Roofline TTFT and TPOT against batch and against context.",
    "validation": "Analytic vs measured counts from a validate run, with the identity line.",
    "compare": "Several models or devices on the same axes.",
}


def _e(x) -> str:
    return html.escape(str(x))


def _table(headers, rows, total_rows=(), left=1) -> str:
    """A table; the first ``left`` columns are text (left-aligned), the rest numbers."""
    out = ["<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        cls = ' class="total"' if i in total_rows else ""
        out.append(f"<tr{cls}>" + "".join(f'<td class="l">{_e(c)}</td>' if 0 < j < left else f"<td>{_e(c)}</td>"
                                          for j, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _kv(pairs) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs) + "</dl>"


def _ai(flops, nbytes) -> str:
    return f"{flops / nbytes:.2f}" if nbytes else "-"


def phase_rows(result, timing=None):
    """The phase comparison: one row per phase."""
    rows = []
    times = {}
    if timing is not None:
        times = timing.phases() if callable(timing.phases) else timing.phases  # name -> PhaseTime
    for ph in result.phases.values():
        row = [ph.name, f"{ph.steps:,}", human_flops(ph.flops), f"{ph.flops:,}", human_flops(ph.matmul_flops),
               human_bytes(ph.bytes), _ai(ph.flops, ph.bytes)]
        if timing is not None:
            t = times.get(ph.name)
            row.append(human_seconds(t.seconds) if t is not None and (t.steps or ph.name != "decode") else "-")
        rows.append(row)
    return rows


def single_phase_rows(phase, num_layers):
    """Per-layer op table of one phase (models whose phases run different blocks: encoders)."""
    c = phase.cost
    rows = [[o.op, "model", human_flops(o.flops), human_bytes(o.bytes), _ai(o.flops, o.bytes)] for o in c.before]
    for g, ops in c.groups:
        scope = f"each of {num_layers} layers" if len(c.groups) == 1 else f"each of {g.describe()}"
        rows += [[o.op, scope, human_flops(o.flops), human_bytes(o.bytes), _ai(o.flops, o.bytes)] for o in ops]
    rows += [[o.op, "model", human_flops(o.flops), human_bytes(o.bytes), _ai(o.flops, o.bytes)] for o in c.after]
    rows.append(["TOTAL", "", human_flops(phase.flops), human_bytes(phase.bytes), _ai(phase.flops, phase.bytes)])
    return rows


def layer_rows(result):
    """Per-layer op table: each block op once (identical in every layer), then model-level ops."""
    pre, dec = result.prefill.cost, result.decode.cost
    rows = []

    def add(name, scope, p, d):
        rows.append([name, scope, human_flops(p.flops), human_bytes(p.bytes), _ai(p.flops, p.bytes),
                     human_flops(d.flops), human_bytes(d.bytes), _ai(d.flops, d.bytes)])

    for p, d in zip(pre.before, dec.before):
        add(p.op, "model", p, d)
    for (g, pops), (_, dops) in zip(pre.groups, dec.groups):
        scope = f"each of {result.model.num_layers} layers" if len(pre.groups) == 1 else f"each of {g.describe()}"
        for p, d in zip(pops, dops):
            add(p.op, scope, p, d)
    for p, d in zip(pre.after, dec.after):
        add(p.op, "model", p, d)
    rows.append(["TOTAL", "", human_flops(result.prefill.flops), human_bytes(result.prefill.bytes),
                 _ai(result.prefill.flops, result.prefill.bytes), human_flops(result.decode.flops),
                 human_bytes(result.decode.bytes), _ai(result.decode.flops, result.decode.bytes)])
    return rows


def data_uri(image: bytes) -> str:
    """A data: URI of a PNG or an SVG (told apart by the SVG's XML start)."""
    kind = "svg+xml" if image.lstrip()[:5] in (b"<?xml", b"<svg ") else "png"
    return f"data:image/{kind};base64," + base64.b64encode(image).decode("ascii")


def report_html(result, figures: dict, timing=None, hardware=None) -> str:
    """The page. ``figures``: kind -> SVG (or PNG) bytes, embedded in that order at the page's width."""
    m, w, mem = result.model, result.workload, result.memory
    title = f"Cost report: {m.name}"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f'<p class="note">FLOPs count a multiply-add as 2; bytes are moved by an eager implementation '
             f"(every op's output materialised); bytes in SI units in the tables and the plots (1 GB = 10⁹ bytes)."
             f"{' Latency: roofline on ' + _e(hardware.name) + '.' if hardware is not None else ''}</p>"]
    for warning in result.warnings:
        parts.append(f'<p class="warn">Warning: {_e(warning)}</p>')
    parts += ["<h2>Model</h2>", _kv([
        ("parameters", f"{human_count(m.num_params)} ({m.num_params:,})"),
        ("layers", m.num_layers), ("hidden size", m.hidden_size),
        ("attention heads", f"{m.num_heads} query, {m.num_kv_heads} key/value, head_dim {m.head_dim}"),
        ("MLP", f"{m.mlp_kind}, intermediate {m.intermediate_size}, {m.activation}"),
        ("vocabulary", m.vocab_size), ("max positions", m.max_position_embeddings),
        ("norm, positions", f"{m.norm_kind}, {m.position_kind}")])]
    parts += ["<h2>Workload</h2>", _kv([
        ("batch", f"{w.batch}" + (f" × {w.beams} beams" if w.beams > 1 else "")),
        ("prompt", f"{w.prompt:,} tokens"),
        ("generated", f"{w.gen:,} tokens ({w.decode_steps:,} decode steps, context up to {w.final_context:,})"),
        ("number formats", f"weights {w.weight_dtype}, activations {w.act_dtype}, KV cache {w.kv_dtype}"
         + ("" if w.quant == "none" else f"; quant {w.quant}")),
        ("KV cache", "on" if w.kv_cache else "off: each decode step recomputes the prefix"),
        ("logits", w.logits), ("attention counting", "causal (lower triangle)" if w.causal else "full")])]
    headers = ["phase", "steps", "FLOPs", "FLOPs (exact)", "matmul FLOPs", "bytes moved", "FLOP/byte"]
    if timing is not None:
        headers.append("roofline time")
    parts += [f"<h2>{_e(' vs '.join(n.capitalize() if i == 0 else n for i, n in enumerate(result.phases)))}</h2>",
              _table(headers, phase_rows(result, timing))]
    if timing is not None:
        tp = timing.tpot()
        pairs = [("TTFT (time to first token)", human_seconds(timing.ttft_s))] if timing.ttft_s else []
        pairs += [(f"TPOT {k}", human_seconds(v)) for k, v in tp.items() if v is not None]
        pairs += [("end to end", human_seconds(timing.e2e_s))]
        if timing.tokens_per_s:
            pairs.append(("tokens per second", f"{timing.tokens_per_s:,.1f}"))
        parts.append(_kv(pairs))
    sv = result.kv_cache_saving()
    if sv and sv.get("flops_ratio"):
        parts.append(f'<p class="note">Decode with a KV cache: {_e(human_flops(sv["decode_flops_with_cache"]))}; '
                     f'without: {_e(human_flops(sv["decode_flops_without_cache"]))} '
                     f'({sv["flops_ratio"]:.1f}× the FLOPs).</p>')
    mem_rows = [["weights", human_bytes(mem.weights_bytes), f"{mem.weights_bytes:,}"],
                ["KV cache (after generation)", human_bytes(mem.kv_cache_bytes), f"{mem.kv_cache_bytes:,}"],
                ["KV cache per token", human_bytes(mem.kv_cache_bytes_per_token), f"{mem.kv_cache_bytes_per_token:,}"],
                ["prefill activation peak", human_bytes(mem.activation_peak_bytes), f"{mem.activation_peak_bytes:,}"]]
    total = mem.weights_bytes + mem.kv_cache_bytes + mem.activation_peak_bytes
    mem_rows.append(["total", human_bytes(total), f"{total:,}"])
    if hardware is not None:
        cap = hardware.capacity_bytes
        mem_rows.append([f"{hardware.name} capacity ({hardware.capacity_figure})", human_bytes(cap), f"{cap:,}"])
    parts += ["<h2>Memory</h2>", _table(["", "size", "bytes"], mem_rows, total_rows=(4,))]
    parts += ["<h2>Per-layer ops</h2>",
              '<p class="note">Block ops are identical in every layer and shown once'
              + (f"; decode columns are totals over {result.decode.steps:,} steps" if result.decode is not None else "")
              + ".</p>",
              ]
    if set(result.phases) == {"prefill", "decode"}:
        rows = layer_rows(result)
        parts.append(_table(["op", "scope", "prefill FLOPs", "prefill bytes", "FLOP/B", "decode FLOPs",
                             "decode bytes", "FLOP/B"], rows, total_rows=(len(rows) - 1,), left=2))
    else:
        for ph in result.phases.values():
            rows = single_phase_rows(ph, ph.cost.num_layers)
            parts += [f"<h3>{_e(ph.name)}</h3>",
                      _table(["op", "scope", "FLOPs", "bytes", "FLOP/B"], rows, total_rows=(len(rows) - 1,), left=2)]
    if figures:
        parts.append("<h2>Plots</h2>")
        for kind, png in figures.items():
            parts.append(f'<figure id="plot-{_e(kind)}"><img alt="{_e(kind)} plot" src="{data_uri(png)}">'
                         f"<figcaption><b>{_e(kind)}</b>: {_e(CAPTIONS.get(kind, ''))}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def report_kinds(hardware, spec=None, wl=None) -> list[str]:
    """The plots a report shows: the hardware-free ones, and the device ones when there is a device.
    An encoder-only model has no KV cache to plot; a generating model's latency (TPOT) needs decode
    steps (an encoder-only model's latency plot is its encode pass)."""
    arch = "decoder" if spec is None else spec.arch
    kinds = ["phases"] + (["kv-cache"] if arch != "encoder" else [])
    device = ["memory", "roofline"] + (["latency"] if arch == "encoder" or wl is None or wl.gen >= 2 else [])
    return kinds + (device if hardware is not None else [])


def report_figures(spec, wl, hardware=None, batches=None, contexts=None, progress=None):
    """kind -> Figure for a report: batch axis 1..256, context axis 128 .. the model's max positions.
    ``progress``: wraps the list of kinds while they render (a progress bar), or None."""
    from . import plots

    batches = batches or [2**i for i in range(9)]
    if contexts is None:
        top = max(256, spec.max_position_embeddings)
        contexts = [c for c in (2**i for i in range(7, 21)) if c <= top]
    hws = [hardware] if hardware is not None else []
    kinds = report_kinds(hardware, spec, wl)
    return {k: plots.build(k, [spec], wl, hws, batches, contexts) for k in (progress or list)(kinds)}


def write_html(path: str, spec, result, timing=None, hardware=None, progress=None) -> str:
    """Render the plots (SVG, legible at the page's full width) and write the self-contained page to
    ``path`` atomically. ``progress`` as in :func:`report_figures`."""
    from .files import atomic_write
    from .plots import svg_bytes

    figures = {k: svg_bytes(f) for k, f in report_figures(spec, result.workload, hardware, progress=progress).items()}
    page = report_html(result, figures, timing, hardware)
    return atomic_write(path, lambda f: f.write(page))


def write_markdown_dir(folder: str, spec, result, markdown: str, hardware=None, progress=None) -> list[str]:
    """Write the plots (PNG) and ``report.md`` (the given Markdown plus relative image links) into
    ``folder``; return the paths written, report.md last."""
    from .files import atomic_write
    from .plots import save

    paths, links = [], []
    stem_model = "".join(c if c.isalnum() or c in "._-" else "_" for c in spec.name)
    for kind, fig in report_figures(spec, result.workload, hardware, progress=progress).items():
        png, svg = save(fig, folder, f"{kind}-{stem_model}")
        paths += [png, svg]
        links.append(f"### {kind}\n\n![{kind}]({os.path.basename(png)})\n\n{CAPTIONS.get(kind, '')}\n")
    text = markdown.rstrip("\n") + "\n\n## Plots\n\n" + "\n".join(links)
    paths.append(atomic_write(os.path.join(folder, "report.md"), lambda f: f.write(text)))
    return paths
