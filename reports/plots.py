"""Plots of the cost model (matplotlib, Agg canvas; never pyplot, never ``plt.show()``).

Two layers: *panel* functions take a tidy DataFrame from :mod:`reports.plotdata` and an ``Axes``
and draw on it (returning the artists); *figure* functions (``*_figure``) lay panels out on a new
:class:`~matplotlib.figure.Figure` and return it. :func:`save` writes PNG and SVG atomically.

Units: data arrive in SI (FLOP, bytes, seconds); axes show them with SI prefixes (GFLOP, GB = 1e9
bytes, the hardware catalog's convention, ms). Colours: the Okabe-Ito colour-blind-safe palette.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, LogFormatter

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour deficiency.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
PHASE_COLORS = {"prefill": OKABE_ITO[0], "decode": OKABE_ITO[1], "encode": OKABE_ITO[2]}
TERM_COLORS = {"projections": OKABE_ITO[0], "attention": OKABE_ITO[1], "MLP": OKABE_ITO[2],
               "LM head": OKABE_ITO[3], "other": "#999999"}
BYTE_COLORS = {"weights": OKABE_ITO[0], "activations": OKABE_ITO[4], "KV cache": OKABE_ITO[1],
               "reserve": "#BBBBBB"}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
KINDS = ("phases", "kv-cache", "memory", "roofline", "latency", "validation", "compare")
GB = 1e9


def new_figure(rows: int, cols: int, width: float, height: float):
    """A Figure on an Agg canvas (no pyplot state) and its axes grid (always 2-d)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _fmt(unit):
    return EngFormatter(unit=unit, places=0, sep=" ")


def _loglog(ax, xunit="", yunit=""):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
    if yunit:
        ax.yaxis.set_major_formatter(_fmt(yunit))
    # Where the y range spans less than ~2 decades, label minor ticks plainly (60, 200, 0.6), not
    # 6x10^1 or 6e-01.
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.grid(True, which="major", alpha=0.3)


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which minor ticks to label, written as plain numbers (0.6, 60)."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def _count_label(x, _pos=None):
    """Tick label for a power-of-two count axis: 512, 4k, 32k, 1M."""
    if x >= 2**20 and x % 2**20 == 0:
        return f"{x / 2**20:g}M"
    if x >= 1024 and x % 1024 == 0:
        return f"{x / 1024:g}k"
    return f"{x:g}"


def _gb(x, _pos=None):
    return f"{x / GB:g}"


def _capacity_gb(capacity_bytes, figure: str = "") -> str:
    """A device capacity for a legend, and which figure it is: "85.5 GB (reported)", "80 GB (marketed)"."""
    return f"{capacity_bytes / GB:.3g} GB" + (f" ({figure})" if figure else "")


# --- phases ---------------------------------------------------------------------------------------

PHASE_ORDER = ("encode", "prefill", "decode")
PHASE_LABELS = {"encode": "encode (whole input)", "prefill": "prefill (whole prompt)", "decode": "decode (one step)"}


def phase_labels(spec=None) -> dict:
    """Legend text per pass of the phases plot; an encoder-decoder's prefill is its decoder prompt
    plus the one-time projection of the cross-attention keys and values."""
    if spec is not None and spec.arch == "encoder-decoder":
        return {**PHASE_LABELS, "encode": "encode (whole source)", "prefill": "prefill (decoder prompt + cross K/V)"}
    return dict(PHASE_LABELS)


def _phases_in(d) -> list:
    return [p for p in PHASE_ORDER if (d["phase"] == p).any()]


def plot_phase_totals(ax, totals, axis: str, labels=None):
    """FLOPs (solid) and bytes moved (dashed) of each pass (encode, prefill, one decode step), log-log."""
    d = totals[totals["axis"] == axis]
    x = "prompt" if axis == "context" else "batch"
    labels = labels or PHASE_LABELS
    artists = []
    for phase in _phases_in(d):
        label = labels[phase]
        p = d[d["phase"] == phase].sort_values(x)
        artists += ax.plot(p[x], p["flops"], "-o", ms=3, color=PHASE_COLORS[phase], label=f"{label}: FLOPs")
        artists += ax.plot(p[x], p["bytes"], "--s", ms=3, color=PHASE_COLORS[phase], label=f"{label}: bytes")
    _loglog(ax, yunit="")
    ax.yaxis.set_major_formatter(_fmt(""))
    ax.set_xlabel(_xlabel(axis))
    ax.set_ylabel("FLOP (solid) or bytes (dashed), SI prefixes")
    ax.set_title("FLOPs and bytes moved")
    ax.legend(fontsize=7, loc="upper left")
    return artists


def _context_label(arch: str) -> str:
    """The context axis of an encoder model: its input (BERT) or source (T5) length."""
    return ("input length: tokens (log₂)" if arch == "encoder"
            else "source length: encoder input tokens (log₂)")


def _xlabel(axis: str, fixed=None) -> str:
    return "context length: prompt tokens (log₂)" if axis == "context" else "batch (sequences, log₂)"


def plot_share_stack(ax, terms, axis: str, phase: str, parts, colors, labels=None, value="flops"):
    """Stacked shares (%) of ``parts`` (terms or byte kinds) for one phase against context or batch."""
    d = terms[(terms["axis"] == axis) & (terms["phase"] == phase)]
    x = "prompt" if axis == "context" else "batch"
    if value == "flops":
        wide = d.pivot_table(index=x, columns="term", values="flops", aggfunc="sum")
    else:
        wide = d.groupby(x)[list(parts)].sum()
        parts = [c for c in parts if wide[c].sum() > 0]  # e.g. no KV cache in an encode pass
    wide = wide.reindex(columns=list(parts)).fillna(0)
    share = 100 * wide.div(wide.sum(axis=1), axis=0)
    labels = labels or {}
    artists = ax.stackplot(share.index.to_numpy(), *[share[c].to_numpy() for c in parts],
                           labels=[labels.get(c, c) for c in parts], colors=[colors[c] for c in parts],
                           alpha=0.85)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
    ax.set_ylim(0, 100)
    ax.set_xlim(share.index.min(), share.index.max())
    ax.set_xlabel(_xlabel(axis))
    ax.set_ylabel(f"share of {'FLOPs' if value == 'flops' else 'bytes moved'} (%)")
    return artists


def plot_intensity(ax, totals, axis: str, ridge: float | None = None, ridge_label: str = ""):
    """Arithmetic intensity (FLOP/byte) of each pass (encode, prefill, a decode step), with the
    device ridge point."""
    d = totals[totals["axis"] == axis]
    x = "prompt" if axis == "context" else "batch"
    artists = []
    for phase in _phases_in(d):
        label = "decode step" if phase == "decode" else phase
        p = d[d["phase"] == phase].sort_values(x)
        artists += ax.plot(p[x], p["arithmetic_intensity"], "-o", ms=3, color=PHASE_COLORS[phase], label=label)
    if ridge:
        artists.append(ax.axhline(ridge, color="black", ls=":", lw=1.2,
                                  label=f"{ridge_label} ridge point {ridge:.0f} FLOP/B"))
    _loglog(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_xlabel(_xlabel(axis))
    ax.set_ylabel("arithmetic intensity (FLOP/byte, log)")
    ax.set_title("Arithmetic intensity: above the ridge = compute-bound")
    ax.legend(fontsize=7, loc="best")
    return artists


def phases_figure(terms, spec, wl, hw=None) -> Figure:
    """The passes of the model side by side: rows against context (batch fixed) and against batch
    (prompt fixed); columns: totals, FLOPs by textbook term of each pass (encode, prefill, a decode
    step: those that apply), bytes by kind of the last pass, arithmetic intensity."""
    from .plotdata import BYTE_KINDS, TERMS, phase_totals, term_labels

    totals = phase_totals(terms)
    labels = term_labels(spec, wl.causal)
    phases = _phases_in(terms)
    arch = spec.arch
    ridge = hw_ridge = None
    if hw is not None:
        ridge = hw.achievable_flops_per_s(wl.act_dtype) / hw.achievable_bandwidth_bytes_per_s
        hw_ridge = hw.id
    cols = len(phases) + 3
    fig, axes = new_figure(2, cols, 5.4 * cols if cols <= 5 else 4.8 * cols, 10.5)
    names = {"encode": "Encode", "prefill": "Prefill", "decode": "Decode step"}
    last = phases[-1]
    context = {"decoder": "prompt", "encoder": "input", "encoder-decoder": "source"}[arch]
    for r, axis in enumerate(("context", "batch")):
        fixed = f"batch {wl.batch}" if axis == "context" else f"{context} {wl.prompt}"
        plot_phase_totals(axes[r, 0], totals, axis, phase_labels(spec))
        axes[r, 0].set_title(f"FLOPs and bytes moved ({fixed})")
        for c, phase in enumerate(phases, start=1):
            plot_share_stack(axes[r, c], terms, axis, phase, TERMS, TERM_COLORS, labels)
            axes[r, c].set_title(f"{names[phase]} FLOPs by term ({fixed})")
        plot_share_stack(axes[r, cols - 2], terms, axis, last, BYTE_KINDS, BYTE_COLORS, value="bytes")
        axes[r, cols - 2].set_title(f"{names[last]} bytes by kind ({fixed})")
        plot_intensity(axes[r, cols - 1], totals, axis, ridge, hw_ridge or "")
        axes[r, cols - 1].set_title(f"Arithmetic intensity ({fixed})")
        if axis == "context" and arch != "decoder":
            for ax in axes[r]:
                ax.set_xlabel(_context_label(arch))
    # Term legends once, centre-left of the top row's first term panel; a decode step's attention
    # grows with the context, not its square.
    axes[0, 1].legend(loc="center left", fontsize=7, framealpha=0.9)
    if "decode" in phases and len(phases) > 1:
        k = phases.index("decode") + 1
        axes[0, k].legend(handles=axes[0, k].collections[:len(TERMS)],
                          labels=["QKVO projections", "attention QKᵀ, PV (4·b·s·h per layer, s = context)",
                                  "MLP", "LM head", "other"], loc="center left", fontsize=7, framealpha=0.9)
    axes[0, cols - 2].legend(loc="center left", fontsize=8, framealpha=0.9)
    what = {"decoder": "prefill vs decode", "encoder": "the encode pass, the only pass of an encoder-only model",
            "encoder-decoder": "encode, prefill and decode"}[arch]
    step = "; decode = one step after the prompt" if "decode" in phases else ""
    fig.suptitle(f"{spec.name}: {what} ({wl.weight_dtype} weights, {wl.act_dtype} activations{step}"
                 f"{'' if wl.kv_cache or 'decode' not in phases else ', no KV cache'})", fontsize=14)
    return fig


# --- kv-cache ---------------------------------------------------------------------------------------

def plot_kv_cache(ax, curves, capacity_bytes=None, weights_bytes=None, hw_label: str = "",
                  prompt=None, final_context=None, capacity_figure: str = ""):
    """KV cache held against positions in the cache (log-log: every variant is a straight line, the
    gaps are the ratios), the request's prefill and generation spans shaded, with the device memory
    and what the weights leave of it. Variants of identical size share a line and a legend entry."""
    artists = []
    merged = {}
    for variant, d in curves.groupby("variant", sort=False):
        merged.setdefault(tuple(d["kv_cache_bytes"]), (d, []))[1].append(variant)
    for i, (d, names) in enumerate(merged.values()):
        artists += ax.plot(d["positions"], d["kv_cache_bytes"], color=OKABE_ITO[i % 7],
                           ls=LINESTYLES[i % 4], lw=2.4 if i == 0 else 1.8, label=" = ".join(names))
    if prompt:
        artists.append(ax.axvspan(1, prompt, color="#F0F0F0", lw=0, label=f"prefill writes the prompt: 1..{prompt:,}"))
    if prompt and final_context and final_context > prompt:
        artists.append(ax.axvspan(prompt, final_context, color=OKABE_ITO[4], alpha=0.25, lw=0,
                                  label=f"decode adds 1 per token: ..{final_context:,}"))
    if capacity_bytes:
        artists.append(ax.axhline(capacity_bytes, color="black", lw=1.5,
                                  label=f"{hw_label} memory {_capacity_gb(capacity_bytes, capacity_figure)}"))
        if weights_bytes is not None and weights_bytes < capacity_bytes:
            artists.append(ax.axhline(capacity_bytes - weights_bytes, color="black", ls=":", lw=1.5,
                                      label=f"memory left after the weights ({(capacity_bytes - weights_bytes) / GB:.1f} GB)"))
        elif weights_bytes is not None:
            artists.append(ax.text(0.02, 0.90, f"the weights alone ({weights_bytes / GB:.0f} GB) exceed the "
                                   f"{capacity_bytes / GB:.3g} GB of one {hw_label}", transform=ax.transAxes,
                                   va="top", fontsize=9, color=OKABE_ITO[1]))
    _loglog(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v / GB:g}"))
    ax.set_xlim(1, curves["positions"].max())
    ax.set_xlabel("positions in the cache (log₂)")
    ax.set_ylabel("KV cache (GB = 10⁹ bytes, log)")
    ax.legend(fontsize=8, loc="lower right")
    return artists


def plot_kv_cache_request(ax, request):
    """An encoder-decoder request's two caches on the per-position curves: the self-attention cache
    at its decoder positions, the cross-attention cache at its source positions, and their sum."""
    total = request["self_bytes"] + request["cross_bytes"]
    artists = ax.plot([request["self_positions"]], [request["self_bytes"]], "o", ms=9, color=OKABE_ITO[4],
                      mec="black", zorder=4,
                      label=f"this request's self-attention cache: {request['self_positions']:,} decoder "
                            f"positions, {_bytes_label(request['self_bytes'])}")
    artists += ax.plot([request["cross_positions"]], [request["cross_bytes"]], "s", ms=9, color=OKABE_ITO[2],
                       mec="black", zorder=4,
                       label=f"its cross-attention cache: {request['cross_positions']:,} source positions, "
                             f"{_bytes_label(request['cross_bytes'])}")
    artists.append(ax.axhline(total, color=OKABE_ITO[2], ls="--", lw=1.2,
                              label=f"held by the request: self + cross = {_bytes_label(total)}"))
    return artists


def _bytes_label(n) -> str:
    """Bytes in SI units, 3 significant digits, for a legend: 1.57 MB, 12 GB."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}B"
    return f"{n:g} B"


def no_kv_cache_panel(ax, spec):
    """The KV-cache panel of an encoder-only model: there is none, said in words."""
    ax.text(0.5, 0.55, f"{spec.name} is encoder-only: no KV cache", ha="center", va="center",
            transform=ax.transAxes, fontsize=15, fontweight="bold")
    ax.text(0.5, 0.40, "One bidirectional encode pass reads the whole input; nothing is generated,\n"
            "so no keys or values are kept from one pass to the next.", ha="center", va="center",
            transform=ax.transAxes, fontsize=11, color="dimgrey")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("positions in the cache (none)")
    ax.set_ylabel("KV cache (none)")


def kv_cache_figure(curves, spec, wl, hw=None) -> Figure:
    from costmodel.analysis import weight_bytes

    arch = spec.arch
    fig, axes = new_figure(1, 1, 10, 3.5 if arch == "encoder" else 6.5)
    ax = axes[0, 0]
    if arch == "encoder":
        no_kv_cache_panel(ax, spec)
        ax.set_title(f"{spec.name}: KV cache (batch {wl.batch}, input {wl.prompt})")
        return fig
    encdec = arch == "encoder-decoder"
    plot_kv_cache(ax, curves, hw.capacity_bytes if hw else None, weight_bytes(spec, wl.weight_dtype, wl.quant),
                  hw.id if hw else "", None if encdec else wl.prompt, None if encdec else wl.final_context,
                  hw.capacity_figure if hw else "")
    n = wl.batch * wl.beams
    seqs = f"{n} sequence{'s' if n > 1 else ''}"
    if encdec:
        plot_kv_cache_request(ax, curves.attrs["request"])
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("positions in the cache, log₂: decoder tokens (self-attention) or source tokens "
                      "(cross-attention: the same bytes a position)")
        ax.set_title(f"{spec.name}: self- and cross-attention caches for {seqs}\n"
                     f"(source {wl.prompt}, decoder prompt {wl.decoder_prompt}, {wl.gen} generated)")
    else:
        ax.set_title(f"{spec.name}: KV cache for {seqs} (prompt {wl.prompt}, {wl.gen} generated)")
    return fig


# --- memory ------------------------------------------------------------------------------------------

def plot_memory(ax, curves, axis: str, marks: dict, hw_label: str = "", kv_label: str | None = None):
    """Weights / KV cache / activations / reserve stacked against batch or context, with the
    device capacity and the largest batch (or context) that fits."""
    d = curves[curves["axis"] == axis]
    x = "batch" if axis == "batch" else "prompt"
    parts = ["weights", "KV cache", "activations", "reserve"]
    labels = {"reserve": marks.get("reserve_label", "runtime reserve (10 %)"), "KV cache": kv_label or "KV cache"}
    artists = ax.stackplot(d[x].to_numpy(), *[d[p].to_numpy() for p in parts], colors=[BYTE_COLORS[p] for p in parts],
                           labels=[labels.get(p, p) for p in parts], alpha=0.85)
    cap = marks["capacity_bytes"]
    artists.append(ax.axhline(cap, color="black", lw=1.5,
                              label=f"{hw_label} capacity {_capacity_gb(cap, marks.get('capacity_figure', ''))}"))
    best = marks["max_batch" if axis == "batch" else "max_context"]
    what = "max batch" if axis == "batch" else "max context"
    if best:
        beyond = " (beyond this axis)" if best > d[x].max() else ""
        artists.append(ax.axvline(best, color=OKABE_ITO[1], ls="--", lw=1.5, label=f"{what} that fits: {best:,}{beyond}"))
        artists += ax.plot([best], [cap], "o", color=OKABE_ITO[1], ms=8)
    else:  # low in the axes (under the capacity line, clear of the legend), on a white box
        artists.append(ax.text(0.5, 0.25, f"does not fit on one GPU\neven at {'batch' if axis == 'batch' else 'context'} 1 "
                               f"({what} = 0)", transform=ax.transAxes, ha="center", va="center",
                               color=OKABE_ITO[1], fontsize=11, fontweight="bold", zorder=5,
                               bbox=dict(boxstyle="round,pad=0.4", facecolor="white", edgecolor=OKABE_ITO[1],
                                         alpha=0.95)))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
    ax.yaxis.set_major_formatter(FuncFormatter(_gb))
    ax.set_xlim(d[x].min(), d[x].max())
    ax.set_ylim(0, min(max(cap, float(d[parts].sum(axis=1).max())), 2 * cap) * 1.05)  # clip far above capacity
    ax.set_xlabel("batch (sequences, log₂)" if axis == "batch" else "context: prompt tokens (log₂)")
    ax.set_ylabel("memory per GPU (GB = 10⁹ bytes)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return artists


def memory_figure(curves, marks, spec, wl, hw) -> Figure:
    arch = spec.arch
    fig, axes = new_figure(1, 2, 15, 6)
    kv_label = {"encoder": "KV cache (none: encoder-only)", "encoder-decoder": "KV cache (self + cross)"}.get(arch)
    plot_memory(axes[0, 0], curves, "batch", marks, hw.id, kv_label)
    plot_memory(axes[0, 1], curves, "context", marks, hw.id, kv_label)
    if arch == "encoder":
        axes[0, 0].set_title(f"Against batch (input {wl.prompt}; one encode pass)")
        axes[0, 1].set_title(f"Against input length (batch {wl.batch})")
    elif arch == "encoder-decoder":
        axes[0, 0].set_title(f"Against batch (source {wl.prompt}, decoder prompt {wl.decoder_prompt} + gen {wl.gen})")
        axes[0, 1].set_title(f"Against source length (batch {wl.batch}, encode and prefill only)")
    else:
        axes[0, 0].set_title(f"Against batch (prompt {wl.prompt} + gen {wl.gen})")
        axes[0, 1].set_title(f"Against context (batch {wl.batch}, prefill only)")
    if arch != "decoder":
        axes[0, 1].set_xlabel(_context_label(arch))
    engine = marks.get("engine")
    fig.suptitle(f"{spec.name} on one {hw.name}: memory ({wl.weight_dtype} weights"
                 f"{'' if arch == 'encoder' else f', {wl.kv_dtype} KV cache'})"
                 + (f"; engine {engine}" if engine else ""), fontsize=13)
    return fig


# --- roofline ----------------------------------------------------------------------------------------

def _clusters(ops, tol=1.3):
    """Groups of ops whose points nearly coincide (within ``tol`` in x and y), across phases."""
    groups = []
    for _, r in ops.sort_values("arithmetic_intensity").iterrows():
        for g in groups:
            if (g["ai"] / tol <= r["arithmetic_intensity"] <= g["ai"] * tol
                    and g["y"] / tol <= r["flops_per_s"] <= g["y"] * tol):
                g["ops"].setdefault(r["phase"], []).append(r["op"])
                break
        else:
            groups.append({"ai": r["arithmetic_intensity"], "y": r["flops_per_s"], "ops": {r["phase"]: [r["op"]]}})
    return groups


def plot_roofline(ax, ops, hw_label: str = ""):
    """The roofline min(F, I * B) with each op at its arithmetic intensity I and attained FLOP/s;
    memory-bound (left of the ridge) and compute-bound (right) regions shaded. Points that nearly
    coincide get one number; the key beside the plot lists the ops behind each number."""
    F, B = ops.attrs["flops_per_s"], ops.attrs["bytes_per_s"]
    ridge = F / B
    lo = min(ops["arithmetic_intensity"].min(), ridge) / 4
    hi = max(ops["arithmetic_intensity"].max(), ridge) * 4
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    artists = [ax.axvspan(lo, ridge, color=OKABE_ITO[5], alpha=0.12, lw=0, label="memory-bound region"),
               ax.axvspan(ridge, hi, color=OKABE_ITO[4], alpha=0.12, lw=0, label="compute-bound region")]
    artists += ax.plot(x, np.minimum(F, x * B), color="black", lw=2,
                       label=f"{hw_label} roofline: {F / 1e12:.0f} TFLOP/s, {B / 1e12:.2f} TB/s achievable")
    artists.append(ax.axvline(ridge, color="black", ls=":", lw=1))
    artists.append(ax.text(ridge * 1.08, F * 1.6, f"ridge {ridge:.0f} FLOP/B", fontsize=9))
    markers = {"prefill": "o", "decode": "^", "encode": "s"}
    for phase, d in ops.groupby("phase", sort=False):
        artists.append(ax.scatter(d["arithmetic_intensity"], d["flops_per_s"], marker=markers.get(phase, "o"),
                                  s=50, color=PHASE_COLORS.get(phase, "grey"), edgecolor="black", lw=0.5, zorder=3,
                                  alpha=0.9, label=f"{phase} ops" + (" (summed over its steps)" if phase == "decode" else "")))
    key = []
    for k, g in enumerate(_clusters(ops), start=1):
        artists.append(ax.annotate(str(k), (g["ai"], g["y"]), xytext=(-4, 7), textcoords="offset points",
                                   fontsize=9, fontweight="bold", ha="right"))
        names = [f"{phase}: {', '.join(g['ops'][phase])}" for phase in sorted(g["ops"], key=("encode", "prefill", "decode").index)]
        key.append(f"{k}. " + "; ".join(names))
    if ops.attrs.get("left_out"):  # in the key, not under the axes (where it met the x label)
        key += ["", "Not shown (no arithmetic, nothing to place on a log axis): "
                + ", ".join(ops.attrs["left_out"])]
    artists.append(ax.text(1.02, 1.0, "\n".join(_wrap_line(t) for t in key), transform=ax.transAxes,
                           va="top", ha="left", fontsize=8, family="monospace"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(ops["flops_per_s"].min(), F) / 20, F * 5)
    ax.yaxis.set_major_formatter(_fmt("FLOP/s"))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_xlabel("arithmetic intensity (FLOP/byte, log)")
    ax.set_ylabel("attained FLOP/s (roofline estimate, log)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return artists


def _wrap_line(text: str, width: int = 48) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, subsequent_indent="    "))


def roofline_figure(ops, spec, wl, hw) -> Figure:
    fig, axes = new_figure(1, 1, 15, 8)
    plot_roofline(axes[0, 0], ops, hw.id)
    phases = [p for p in PHASE_ORDER if (ops["phase"] == p).any()]
    sizes = (f"batch {wl.batch}, input {wl.prompt}" if spec.arch == "encoder"
             else f"batch {wl.batch}, {'source' if spec.arch == 'encoder-decoder' else 'prompt'} {wl.prompt}, gen {wl.gen}")
    listed = " and ".join(phases) if len(phases) < 3 else ", ".join(phases[:-1]) + " and " + phases[-1]
    axes[0, 0].set_title(f"{spec.name} on {hw.name}: every op of {listed} ({sizes})")
    return fig


# --- latency -----------------------------------------------------------------------------------------

def plot_latency(ax, curves, axis: str, metric: str):
    """TTFT or TPOT (ms, log) against batch or context, one line per hardware profile; hollow
    markers where the configuration does not fit in the device memory."""
    d = curves[curves["axis"] == axis]
    x = "batch" if axis == "batch" else "prompt"
    artists, hollow = [], False
    for i, (hw, h) in enumerate(d.groupby("hardware", sort=False)):
        h = h.sort_values(x)
        c = OKABE_ITO[i % 7]
        artists += ax.plot(h[x], h[metric] * 1e3, "-", color=c, label=hw)
        fit = h["fits"].astype(bool)
        artists.append(ax.scatter(h[x][fit], h[metric][fit] * 1e3, color=c, s=18, zorder=3))
        if (~fit).any():
            artists.append(ax.scatter(h[x][~fit], h[metric][~fit] * 1e3, facecolor="white", edgecolor=c,
                                      s=24, zorder=3, label=None if hollow else "hollow: does not fit in memory"))
            hollow = True
    _loglog(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_xlabel(_xlabel(axis))
    ax.set_ylabel(("TTFT: time to first token" if metric == "ttft_s" else "TPOT: time per output token (mean)")
                  + " (ms, log)")
    ax.legend(fontsize=8, loc="upper left")
    return artists


def latency_figure(curves, spec, wl) -> Figure:
    """TTFT and TPOT against batch and context; an encoder-only model's one column is its encode
    pass (its whole latency: nothing is generated)."""
    arch = spec.arch
    metrics = ("ttft_s",) if arch == "encoder" else ("ttft_s", "tpot_s")
    if arch == "encoder":  # one metric: batch and context side by side
        fig, grid = new_figure(1, 2, 14, 5.5)
        axes = grid.T
    else:
        fig, axes = new_figure(2, 2, 14, 10)
    context = {"decoder": "prompt", "encoder": "input", "encoder-decoder": "source"}[arch]
    for r, axis in enumerate(("batch", "context")):
        fixed = f"{context} {wl.prompt}" if axis == "batch" else f"batch {wl.batch}"
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            plot_latency(ax, curves, axis, metric)
            if arch == "encoder":
                ax.set_title(f"Encode pass against {axis} ({fixed})")
                ax.set_ylabel("encode pass: the whole latency (ms, log)")
            else:
                name = "TTFT" if metric == "ttft_s" else "TPOT"
                ax.set_title(f"{name} against {axis} ({fixed}, gen {wl.gen})")
                if metric == "ttft_s" and arch == "encoder-decoder":
                    ax.set_ylabel("TTFT: encode + prefill (ms, log)")
            if axis == "context" and arch != "decoder":
                ax.set_xlabel(_context_label(arch))
    engine = curves.attrs.get("engine")
    fig.suptitle(f"{spec.name}: roofline latency ({wl.weight_dtype} weights, {wl.act_dtype} compute)"
                 + (f"; engine {engine}" if engine else ""), fontsize=13)
    fig.warnings = list(curves.attrs.get("warnings", ()))  # points that do not fit: the CLI prints them
    return fig


# --- validation --------------------------------------------------------------------------------------

def plot_validation(ax, points, quantity: str, unit: str):
    """Analytic (x) against measured (y) for one quantity, log-log, with the identity line."""
    d = points[points["quantity"] == quantity]
    artists = []
    for phase, p in d.groupby("phase", sort=False):
        artists.append(ax.scatter(p["analytic"], p["measured"], s=30, color=PHASE_COLORS.get(phase, "grey"),
                                  marker="o" if phase == "prefill" else "^", edgecolor="black", lw=0.4,
                                  label=f"{phase} ({len(p)} cases)", zorder=3))
    vals = np.concatenate([d["analytic"].to_numpy(), d["measured"].to_numpy()])
    vals = vals[vals > 0]
    lo, hi = (vals.min() / 2, vals.max() * 2) if len(vals) else (1, 10)
    artists += ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="identity: measured = analytic")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.xaxis.set_major_formatter(_fmt(unit))
    ax.yaxis.set_major_formatter(_fmt(unit))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return artists


def validation_figure(points) -> Figure:
    second = "seconds" if (points["quantity"] == "seconds").any() else "kv_cache_bytes"
    fig, axes = new_figure(1, 2, 13, 6.5)
    plot_validation(axes[0, 0], points, "flops", "FLOP")
    n = (points["quantity"] == "flops").sum()
    exact = int(((points["quantity"] == "flops") & (points["analytic"] == points["measured"])).sum())
    axes[0, 0].set_title(f"Matmul FLOPs: analytic vs counted ({exact}/{n} exactly equal)")
    axes[0, 0].set_xlabel("analytic (FLOP, log)")
    axes[0, 0].set_ylabel("counted by the profiler (FLOP, log)")
    if second == "seconds":
        plot_validation(axes[0, 1], points, "seconds", "s")
        axes[0, 1].set_title("Time: roofline prediction vs measured")
        axes[0, 1].set_xlabel("predicted (s, log)")
        axes[0, 1].set_ylabel("measured (s, log)")
    else:
        plot_validation(axes[0, 1], points, "kv_cache_bytes", "B")
        axes[0, 1].set_title("KV-cache bytes: analytic vs measured (this run has no timings)")
        axes[0, 1].set_xlabel("analytic (bytes, log)")
        axes[0, 1].set_ylabel("measured from the cache tensors (bytes, log)")
    fig.suptitle("Validation: the analytic model against the reference transformer", fontsize=13)
    return fig


# --- compare -----------------------------------------------------------------------------------------

def plot_compare(ax, curves, metric: str, ylabel: str, unit_scale: float = 1.0, capacity=None, figures=None):
    """One line per (model, hardware) of ``metric`` against context: colour per model, line style
    per hardware."""
    artists = []
    models = list(dict.fromkeys(curves["model"]))
    hws = list(dict.fromkeys(curves["hardware"]))
    per_model = metric in ("prefill_flops", "decode_flops_per_step", "memory_bytes")
    for i, m in enumerate(models):
        for j, hw in enumerate(hws if not per_model else hws[:1]):
            d = curves[(curves["model"] == m) & ((curves["hardware"] == hw) if hw is not None
                                                 else curves["hardware"].isna())].sort_values("prompt")
            label = m if per_model or len(hws) == 1 else f"{m} on {hw}"
            if d[metric].isna().all():  # an encoder-only model has no decode: say so, draw nothing
                artists += ax.plot([], [], LINESTYLES[j % 4], marker=MARKERS[i % len(MARKERS)], ms=4,
                                   color=OKABE_ITO[i % 7], label=f"{label}: none (encoder-only, no decode)")
                continue
            # markers differ by model too: models of similar size (bert-base, gpt2) overlap exactly
            artists += ax.plot(d["prompt"], d[metric] / unit_scale, LINESTYLES[j % 4],
                               marker=MARKERS[i % len(MARKERS)], ms=4, color=OKABE_ITO[i % 7], label=label)
    if capacity:
        for j, (hw, cap) in enumerate(capacity.items()):
            artists.append(ax.axhline(cap / unit_scale, color="black", ls=LINESTYLES[j % 4], lw=1,
                                      label=f"{hw} memory {_capacity_gb(cap, (figures or {}).get(hw, ''))}"))
    _loglog(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_xlabel("context length: prompt tokens; encoders: input or source (log₂)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left")
    return artists


def compare_figure(curves, wl, hws=()) -> Figure:
    panels = [("prefill_flops", "prefill FLOPs, encoders: + encode (TFLOP, log)", 1e12,
               "Prefill FLOPs (encoder models: encode + prefill)"),
              ("decode_flops_per_step", "decode step FLOPs (GFLOP, log)", 1e9, "Decode step FLOPs"),
              ("memory_bytes", "weights + KV cache + activations (GB, log)", GB,
               "Memory: weights + KV cache + activation peak (as the memory plot, less its reserve)")]
    if hws:
        panels += [("ttft_s", "TTFT (ms, log)", 1e-3, "Time to first token"),
                   ("tpot_s", "TPOT, mean (ms, log)", 1e-3, "Time per output token")]
    cols = 3 if len(panels) <= 3 else 3
    rows = -(-len(panels) // cols)
    fig, axes = new_figure(rows, cols, 6 * cols, 5 * rows)
    flat = axes.ravel()
    for ax, (metric, ylabel, scale, title) in zip(flat, panels):
        cap = {h.id: h.capacity_bytes for h in hws} if metric == "memory_bytes" and hws else None
        plot_compare(ax, curves, metric, ylabel, scale, cap, {h.id: h.capacity_figure for h in hws})
        ax.set_title(f"{title} (batch {wl.batch}{', gen ' + str(wl.gen) if metric.endswith('_s') else ''})")
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    models = ", ".join(dict.fromkeys(curves["model"]))
    on = f" on {', '.join(h.id for h in hws)}" if hws else ""
    fig.suptitle(f"Compare {models}{on} ({wl.weight_dtype} weights)", fontsize=13)
    return fig


# --- files -------------------------------------------------------------------------------------------

def png_bytes(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def svg_bytes(fig) -> bytes:
    """The figure as SVG: vector, legible at any width (the HTML page embeds these)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


def save(fig, folder: str, stem: str, dpi: int = 110) -> list[str]:
    """Write ``stem.png`` and ``stem.svg`` into ``folder`` (atomically); return their paths."""
    import os

    from .files import atomic_write

    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(folder, f"{stem}.{ext}")
        atomic_write(path, lambda f, ext=ext: fig.savefig(f, format=ext, dpi=dpi), binary=True)
        paths.append(path)
    return paths


# --- one entry point for the CLI and the HTML report ------------------------------------------------

NEEDS_HARDWARE = ("memory", "roofline", "latency")


def build(kind: str, specs, wl, hws=(), batches=(), contexts=(), validation=None, engine=None) -> Figure:
    """The figure of ``kind`` (one of :data:`KINDS`) for ``specs`` (one model; several for
    'compare') on ``hws`` (hardware profiles; the first is used where one device is drawn).
    ``engine`` (:mod:`costmodel.engine`; None: the reference) times and sizes the latency and
    memory plots."""
    from costmodel.errors import SpecError

    from . import plotdata as D

    if kind not in KINDS:
        raise SpecError(f"unknown plot kind {kind!r}; allowed: {', '.join(KINDS)}")
    if kind in NEEDS_HARDWARE and not hws:
        raise SpecError(f"the {kind} plot needs a device: give --gpu NAME (see `costmodel hardware`) "
                        "or --hardware FILE")
    if kind == "validation":
        return validation_figure(D.validation_points(validation))
    if kind == "compare":
        return compare_figure(D.compare_curves(specs, wl, hws, contexts), wl, tuple(hws))
    spec, hw = specs[0], (hws[0] if hws else None)
    if kind == "phases":
        return phases_figure(D.phase_terms(spec, wl, contexts, batches), spec, wl, hw)
    if kind == "kv-cache":
        return kv_cache_figure(D.kv_cache_curves(spec, wl), spec, wl, hw)
    if kind == "memory":
        curves, marks = D.memory_curves(spec, wl, hw, batches, contexts, engine)
        return memory_figure(curves, marks, spec, wl, hw)
    if kind == "roofline":
        return roofline_figure(D.roofline_ops(spec, wl, hw), spec, wl, hw)
    return latency_figure(D.latency_curves(spec, wl, hws, batches, contexts, engine), spec, wl)


# --- Serving simulation (costmodel simulate --plot) -------------------------------------------------

def plot_latency_vs_rate(ax, points, metric: str, label: str):
    """p50 and p99 of ``metric`` ("ttft_s", "tpot_s", "e2e_s") against the request rate: the knee."""
    rates_ = [p["rps"] for p in points]
    for q, style, color in (("p50", "-", OKABE_ITO[0]), ("p99", "--", OKABE_ITO[1])):
        ys = [p[metric][q] for p in points]
        keep = [(x, y * 1e3) for x, y in zip(rates_, ys) if y is not None]
        if keep:
            ax.plot(*zip(*keep), linestyle=style, marker="o", color=color, label=q)
    ax.set_xlabel("requests / s (Poisson)")
    ax.set_ylabel(f"{label} (ms)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)


def plot_kv_over_time(ax, queue, kv_total: int):
    """KV-cache blocks in use, and requests running and waiting, over the simulated time."""
    t = [q["t_s"] for q in queue]
    ax.plot(t, [q["kv_blocks"] for q in queue], color=OKABE_ITO[1], label="KV blocks in use")
    ax.axhline(kv_total, color="#999999", linestyle=":", label=f"KV blocks available ({kv_total:,})")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("KV-cache blocks")
    ax.grid(True, alpha=0.3)
    twin = ax.twinx()
    twin.plot(t, [q["running"] for q in queue], color=OKABE_ITO[0], linewidth=0.8, label="running")
    twin.plot(t, [q["waiting"] for q in queue], color=OKABE_ITO[2], linewidth=0.8, label="waiting")
    twin.set_ylabel("requests")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], frameon=False, fontsize="small", loc="upper left")


def simulate_figure(result: dict, points=()) -> Figure:
    """``costmodel simulate --plot``: KV use and the queue over time of ``result`` (the JSON of
    one run) and, with ``points`` (one summary per rate of --rps-sweep), TTFT and TPOT p50 / p99
    against the request rate."""
    cols = 3 if points else 1
    fig, axes = new_figure(1, cols, 5.2 * cols, 4.0)
    if points:
        plot_latency_vs_rate(axes[0][0], points, "ttft_s", "TTFT")
        plot_latency_vs_rate(axes[0][1], points, "tpot_s", "TPOT")
    plot_kv_over_time(axes[0][cols - 1], result["queue"], result["kv_blocks"]["total"])
    fig.suptitle(f"{result['model']} on {result['hardware']}: continuous batching "
                 f"(max_num_seqs {result['scheduler']['max_num_seqs']}, "
                 f"max_num_batched_tokens {result['scheduler']['max_num_batched_tokens']})")
    return fig
