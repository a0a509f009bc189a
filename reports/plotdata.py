"""The data behind each plot, as tidy pandas DataFrames (no matplotlib here).

Each function computes with the analytic model (and :mod:`costmodel.roofline` /
:mod:`costmodel.plan` where hardware is involved) and returns SI units: FLOP, bytes, seconds.
:mod:`reports.plots` only draws these frames.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from costmodel.analysis import (cross_kv_cache_bytes, decode_step_cost, encode_cost, kv_cache_bytes, memory_of,
                                prefill_cost, weight_bytes)
from costmodel.errors import SpecError
from costmodel.ops import TERMS, op_info
from costmodel.spec import decoder_start

from .grid import grid_workload, phases_of

# Prefill FLOP terms, in the textbook's grouping (Kaplan et al. 2020, table 1; "Transformer
# inference arithmetic"): per layer 8bsh^2 (QKVO projections, MHA), 4bs^2h (QK^T and PV),
# 16bsh^2 (a 4h MLP); everything else (norms, softmax, rotary, residuals, LM head) apart.
# TERMS: the labels of costmodel.ops, where each op is given its term.
BYTE_KINDS = ("weights", "activations", "KV cache")


def term_of(op: str, kind: str | None = None) -> str:
    """Which textbook term an op's FLOPs belong to (cross-attention's ops as self-attention's), as
    registered in :mod:`costmodel.ops`; an unregistered op raises. ``kind``: unused, the registry
    knows it (kept for callers)."""
    return op_info(op).term


def term_labels(spec, causal: bool = False) -> dict:
    """Legend text per term with this model's coefficients (b: batch, s: tokens, h: hidden)."""
    h, q, kv = spec.hidden_size, spec.q_size, spec.kv_size
    proj = 2 * (2 * h * q + 2 * h * kv) / h**2  # q, o: h x q each; k, v: h x kv each
    attn = 4 * q / h * (0.5 if causal else 1)
    mats = 3 if spec.mlp_kind == "gated" else 2
    inter = spec.moe_intermediate_size if spec.num_experts else None
    if inter:
        mlp = 2 * mats * inter * spec.experts_per_token / h
    else:
        mlp = 2 * mats * spec.intermediate_size / h
    approx = "≈" if causal else ""
    arch = spec.arch
    if arch == "encoder-decoder":  # self- and cross-attention: sizes of two different sequences
        proj_text, attn_text = "QKVO projections, self and cross", "attention QKᵀ, PV, self and cross"
    else:
        proj_text = f"QKVO projections {proj:.3g}·bsh² per layer (8bsh² for MHA)"
        attn_text = f"attention QKᵀ, PV {approx}{attn:.3g}·bs²h per layer (4bs²h)"
    return {
        "projections": proj_text,
        "attention": attn_text,
        "MLP": f"MLP {mlp:.3g}·bsh² per layer (16bsh² for a 4h MLP)",
        "LM head": ("MLM head 2·b·s·h·V (every position)" if arch == "encoder"
                    else "LM head 2·b·h·V (prefill: last position)"),
        "other": "norms, softmax, position terms, residuals, embedding" + (", pooler" if arch == "encoder" else ""),
    }


def _op_rows(cost, phase, meta):
    """Per-term FLOPs and bytes by kind of one pass on a grid: rows for every grid point."""
    acc = {t: {"flops": 0, "weights": 0, "activations": 0, "KV cache": 0} for t in TERMS}
    for mult, o in cost.weighted():
        a = acc[term_of(o.op, o.kind)]
        a["flops"] = a["flops"] + mult * o.flops
        a["weights"] = a["weights"] + mult * o.weight_bytes
        a["activations"] = a["activations"] + mult * (o.act_read_bytes + o.act_write_bytes)
        a["KV cache"] = a["KV cache"] + mult * (o.kv_read_bytes + o.kv_write_bytes)
    shape = np.broadcast(meta["batch"], meta["prompt"]).shape
    frames = []
    for t, vals in acc.items():
        d = {"batch": meta["batch"], "prompt": meta["prompt"]}
        d.update({k: np.asarray(v, dtype=np.float64) for k, v in vals.items()})
        d = {k: np.broadcast_to(np.asarray(v), shape).ravel() for k, v in d.items()}
        f = pd.DataFrame(d)
        f["phase"], f["term"] = phase, t
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def phase_passes(spec, gw) -> list[tuple[str, object]]:
    """(phase, StepCost) of the passes the phases plot shows: encode (the whole input), prefill
    (the whole prompt; encoder-decoder: the decoder prompt and the cross K/V projection) and one
    decode step (the first after the prompt), those that apply to ``spec``'s architecture."""
    make = {"encode": lambda: encode_cost(spec, gw), "prefill": lambda: prefill_cost(spec, gw),
            "decode": lambda: decode_step_cost(spec, gw, 1)}
    return [(phase, make[phase]()) for phase in phases_of(spec)]


def phase_terms(spec, wl, contexts, batches) -> pd.DataFrame:
    """FLOPs by textbook term and bytes by kind of each pass of :func:`phase_passes`, against
    context (prompt, or an encoder's input / source, at batch = ``wl.batch``) and against batch
    (at prompt = ``wl.prompt``). Columns: axis ('context' or 'batch'), batch, prompt, phase, term,
    flops, weights, activations, KV cache (bytes)."""
    frames = []
    for axis, b, p in (("context", np.array([[wl.batch]], dtype=object),
                        np.array([[int(c) for c in contexts]], dtype=object)),
                       ("batch", np.array([[int(x)] for x in batches], dtype=object),
                        np.array([[wl.prompt]], dtype=object))):
        gw = grid_workload(wl, b, p)
        meta = {"batch": b.astype(np.int64), "prompt": p.astype(np.int64)}
        for phase, cost in phase_passes(spec, gw):
            f = _op_rows(cost, phase, meta)
            f["axis"] = axis
            frames.append(f)
    return pd.concat(frames, ignore_index=True)


def phase_totals(terms: pd.DataFrame) -> pd.DataFrame:
    """Per (axis, batch, prompt, phase): flops, bytes, arithmetic_intensity."""
    g = terms.groupby(["axis", "batch", "prompt", "phase"], as_index=False)[["flops", *BYTE_KINDS]].sum()
    g["bytes"] = g[list(BYTE_KINDS)].sum(axis=1)
    g["arithmetic_intensity"] = g["flops"] / g["bytes"]
    return g


def kv_cache_variants(spec, wl):
    """(label, spec, workload) for the KV-cache comparison: as configured, then with and without
    GQA and at lower precision."""
    H, K = spec.num_heads, spec.num_kv_heads
    attn = "MHA" if K == H else ("MQA" if K == 1 else f"GQA {K} kv heads")
    if spec.mla:  # the latent and the rotary key: no kv-head variants
        attn = f"MLA latent {spec.kv_lora_rank} + rope {spec.qk_rope_head_dim}"
        return [(f"as configured: {attn}, {wl.kv_dtype}", spec, wl)] + [
            (f"{attn}, {dt} cache", spec, replace(wl, kv_dtype=dt)) for dt in ("fp8", "int4") if dt != wl.kv_dtype]
    out = [(f"as configured: {attn}, {wl.kv_dtype}", spec, wl)]
    if K != H:
        out.append((f"without GQA: MHA {H} kv heads, {wl.kv_dtype}", spec.with_(num_kv_heads=H), wl))
    elif H % 8 == 0 and H > 8:
        out.append((f"with GQA: 8 kv heads, {wl.kv_dtype}", spec.with_(num_kv_heads=8), wl))
    if K != 1:
        out.append((f"MQA: 1 kv head, {wl.kv_dtype}", spec.with_(num_kv_heads=1), wl))
    for dt in ("fp8", "int4"):
        if dt != wl.kv_dtype and spec.head_dim % 2 == 0:
            out.append((f"{attn}, {dt} cache", spec, replace(wl, kv_dtype=dt)))
    return out


def kv_cache_curves(spec, wl, points: int = 64) -> pd.DataFrame:
    """KV cache held against positions in the cache: rows (variant, positions, kv_cache_bytes) for
    positions from 1 to the longer of the request (prompt + gen - 1) and the model's
    max_position_embeddings, geometrically spaced, the prompt and the request's end included.

    Encoder-decoder: the curves are the decoder's self-attention cache against its positions; a
    cross-attention position (one source token) takes exactly as many bytes, so the same curves
    give the cross cache against the source length. ``attrs['request']`` has the request's self
    and cross caches and their positions. Encoder-only: no rows (nothing is cached)."""
    if spec.arch == "encoder":
        return pd.DataFrame(columns=["variant", "positions", "kv_cache_bytes"])
    encdec = spec.arch == "encoder-decoder"
    w = replace(wl, kv_cache=True)
    self_positions = decoder_start(spec, wl) + wl.gen - 1
    request = {"self_positions": self_positions, "self_bytes": kv_cache_bytes(spec, w, positions=self_positions),
               "cross_positions": wl.prompt if encdec else 0, "cross_bytes": cross_kv_cache_bytes(spec, w)}
    end = max(wl.final_context, spec.max_position_embeddings)
    positions = np.unique(np.concatenate([np.geomspace(1, end, points).round().astype(int),
                                          [wl.prompt, wl.final_context, end]]))
    rows = []
    for label, s, w in kv_cache_variants(spec, replace(wl, kv_cache=True)):
        for pos in positions.tolist():
            rows.append({"variant": label, "positions": pos, "kv_cache_bytes": kv_cache_bytes(s, w, positions=pos)})
    df = pd.DataFrame(rows)
    df.attrs["request"] = request
    return df


def memory_curves(spec, wl, hw, batches, contexts, engine=None) -> tuple[pd.DataFrame, dict]:
    """Memory of one GPU (``costmodel.plan.memory_use``) against batch (at ``wl.prompt``) and
    against context (prompt with gen = 1, at ``wl.batch``), and the plan's max batch and context,
    under ``engine`` (None: the reference, with the flat reserve; an engine: its budget).

    Rows: axis, batch, prompt, weights, KV cache, activations, reserve (bytes), capacity_bytes."""
    from costmodel import plan
    from costmodel.engine import is_reference

    run = None if is_reference(engine) else engine
    rf = plan.DEFAULT_RESERVE_FRACTION if run is None else None  # None: the engine's budget

    rows = []
    for axis, configs in (("batch", [replace(wl, batch=int(b)) for b in batches]),
                          ("context", [replace(wl, prompt=int(c), gen=1) for c in contexts])):
        for w in configs:
            m = plan.memory_use(spec, hw, w, reserve_fraction=rf, engine=run)
            rows.append({"axis": axis, "batch": w.batch, "prompt": w.prompt,
                         "weights": m.weights_bytes, "KV cache": m.kv_bytes,
                         "activations": m.activations_bytes, "reserve": m.reserve_bytes,
                         "capacity_bytes": m.capacity_bytes})
    marks = {"max_batch": plan.max_batch(spec, hw, wl, reserve_fraction=rf, engine=run),
             "max_context": plan.max_context(spec, hw, replace(wl, gen=1), reserve_fraction=rf, engine=run),
             "capacity_bytes": hw.capacity_bytes, "capacity_figure": hw.capacity_figure}
    if engine is not None:
        marks["engine"] = engine.id
    if run is not None and run.memory_utilization is not None:
        marks["reserve_label"] = f"outside {run.id}'s budget ({1 - run.memory_utilization:.0%})"
    return pd.DataFrame(rows), marks


def roofline_ops(spec, wl, hw) -> pd.DataFrame:
    """Every distinct op of prefill and of decode (summed over its steps) on ``hw``'s roofline:
    rows (phase, op, kind, flops, bytes, arithmetic_intensity, seconds, flops_per_s, bound).
    Ops that do no arithmetic (embedding lookup, KV-cache writes) have no place on a log axis and
    are left out; ``attrs['left_out']`` names them."""
    from costmodel.roofline import predict

    t = predict(spec, wl, hw)
    rows, left_out = [], set()
    for phase in (p for p in (t.encode, t.prefill, t.decode) if p is not None):
        for o in (o for _, o in phase.weighted()):
            busy = o.seconds - o.overhead_s
            if o.flops == 0 or o.bytes == 0 or busy <= 0:
                left_out.add(o.op)
                continue
            rows.append({"phase": phase.name, "op": o.op, "kind": o.kind, "flops": o.flops,
                         "bytes": o.bytes, "arithmetic_intensity": o.flops / o.bytes,
                         "seconds": o.seconds, "flops_per_s": o.flops / busy, "bound": o.bound})
    df = pd.DataFrame(rows)
    df.attrs["left_out"] = sorted(left_out)
    df.attrs["flops_per_s"] = t.rates.flops_per_s
    df.attrs["bytes_per_s"] = t.rates.bytes_per_s
    return df


def latency_curves(spec, wl, hws, batches, contexts, engine=None) -> pd.DataFrame:
    """TTFT and mean TPOT (roofline) against batch (at ``wl.prompt``) and context (at
    ``wl.batch``) for each hardware profile. Rows: hardware, axis, batch, prompt, ttft_s, tpot_s, fits;
    ``attrs['warnings']``: one per profile on which some points do not fit (none when all fit).
    TTFT includes an encoder-decoder's encode pass; for an encoder-only model ``ttft_s`` is the
    encode pass (its whole latency) and ``tpot_s`` is NaN."""
    from costmodel import plan
    from costmodel.engine import is_reference
    from costmodel.roofline import predict

    run = None if is_reference(engine) else engine  # ``engine``: times and memory of that engine
    rf = plan.DEFAULT_RESERVE_FRACTION if run is None else None
    encoder_only = spec.arch == "encoder"
    if wl.gen < 2 and not encoder_only:
        raise SpecError("the latency plot needs --gen 2 or more (TPOT is the time of a decode step)")
    if encoder_only:  # one encode pass: its time is the latency; nothing is generated
        wl = replace(wl, gen=1, beams=1)
    rows, warnings = [], []
    for hw in hws:
        misfits = []
        for axis, configs in (("batch", [replace(wl, batch=int(b)) for b in batches]),
                              ("context", [replace(wl, prompt=int(c)) for c in contexts])):
            for w in configs:
                t = predict(spec, w, hw, run)
                m = plan.memory_use(spec, hw, w, reserve_fraction=rf, engine=run)
                rows.append({"hardware": hw.id, "axis": axis, "batch": w.batch, "prompt": w.prompt,
                             "ttft_s": t.ttft_s if t.ttft_s is not None else t.e2e_s,
                             "tpot_s": t.tpot_mean_s if t.tpot_mean_s is not None else np.nan,
                             "fits": m.fits})
                if not m.fits:
                    misfits.append((axis, w, m))
        if misfits:
            axis, w, m = misfits[0]
            first = plan.fit_warnings(m, hw)[0].removeprefix("does not fit: ")
            warnings.append(f"{len(misfits)} of the latency plot's {len(batches) + len(contexts)} points do not "
                            f"fit on one {hw.id} (hollow markers); the first, {axis} axis at batch {w.batch}, "
                            f"prompt {w.prompt}: {first}")
    df = pd.DataFrame(rows)
    df.attrs["warnings"] = warnings
    if engine is not None:
        df.attrs["engine"] = engine.id
    return df


def compare_curves(specs, wl, hws, contexts) -> pd.DataFrame:
    """Several models (and GPUs) against context (prompt; an encoder's input or source) at
    ``wl.batch``: rows (model, hardware, prompt, prefill_flops, decode_flops_per_step, memory_bytes
    (weights + KV cache, self and cross, + activation peak: what the memory plot stacks below its
    runtime reserve, :func:`costmodel.analysis.memory_of`), ttft_s, tpot_s).

    ``prefill_flops`` is the work before the first output: encode + prefill for an encoder-decoder,
    the encode pass of an encoder-only model (whose ``ttft_s`` is that pass's time, and whose
    decode columns are NaN: it decodes nothing)."""
    from costmodel.roofline import predict

    rows = []
    for spec in specs:
        arch = spec.arch
        for c in contexts:
            w = replace(wl, prompt=int(c))
            if arch == "encoder":
                w = replace(w, gen=1, beams=1)
            first = sum(cost.total("flops") for phase, cost in phase_passes(spec, w) if phase != "decode")
            decode = (float(decode_step_cost(spec, w, 1).total("flops")) if arch != "encoder" else np.nan)
            m = memory_of(spec, w)  # the memory plot's figures: weights + KV cache + activation peak
            base = {"model": spec.name, "prompt": w.prompt, "prefill_flops": float(first),
                    "decode_flops_per_step": decode,
                    "memory_bytes": float(m.weights_bytes + m.kv_cache_bytes + m.activation_peak_bytes)}
            if not hws:
                rows.append({**base, "hardware": None, "ttft_s": np.nan, "tpot_s": np.nan})
            for hw in hws:
                t = predict(spec, w, hw)
                rows.append({**base, "hardware": hw.id, "ttft_s": t.ttft_s if t.ttft_s is not None else t.e2e_s,
                             "tpot_s": t.tpot_mean_s if t.tpot_mean_s is not None else np.nan})
    return pd.DataFrame(rows)


# --- validation: the JSON of `costmodel validate --format json` --------------------------------------

_ANALYTIC_FLOPS = ("analytic_matmul_flops", "analytic_flops")
_MEASURED_FLOPS = ("counted_matmul_flops", "measured_flops", "counted_flops")
_PREDICTED_S = ("predicted_s", "predicted_seconds", "analytic_seconds")
_MEASURED_S = ("measured_s", "measured_seconds")


def _first(d: dict, keys):
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def validation_points(data) -> pd.DataFrame:
    """Analytic vs measured pairs from a validate run: rows (case, phase, quantity, analytic, measured).

    Accepted input: ``{"cases": [case, ...]}`` (or the list itself). Each case has a name
    (``case``), and per phase (``prefill``, ``decode``) an object with analytic vs counted matmul
    FLOPs (``analytic_matmul_flops`` / ``counted_matmul_flops``), optionally analytic vs measured
    KV-cache bytes (``analytic_kv_cache_bytes`` / ``kv_cache_bytes``) and predicted vs measured
    seconds (``predicted_s`` / ``measured_s``). Quantities: 'flops', 'kv_cache_bytes', 'seconds'.
    """
    cases = data.get("cases") if isinstance(data, dict) else data
    if not isinstance(cases, list) or not cases:
        raise SpecError("validation input must be the JSON of `costmodel validate --format json`: "
                        "an object with a non-empty \"cases\" list")
    rows = []
    for i, c in enumerate(cases):
        if not isinstance(c, dict):
            raise SpecError(f"validation input: case {i} is not an object")
        name = str(c.get("case") or c.get("name") or f"case {i}")
        if c.get("attention"):
            name += f" [{c['attention']}]"
        for phase in ("prefill", "decode"):
            p = c.get(phase)
            if not isinstance(p, dict):
                continue
            for q, ak, mk in (("flops", _ANALYTIC_FLOPS, _MEASURED_FLOPS),
                              ("kv_cache_bytes", ("analytic_kv_cache_bytes",), ("kv_cache_bytes",)),
                              ("seconds", _PREDICTED_S, _MEASURED_S)):
                a, m = _first(p, ak), _first(p, mk)
                if a is not None and m is not None:
                    rows.append({"case": name, "phase": phase, "quantity": q,
                                 "analytic": float(a), "measured": float(m)})
    df = pd.DataFrame(rows, columns=["case", "phase", "quantity", "analytic", "measured"])
    if not (df["quantity"] == "flops").any():
        raise SpecError("validation input has no case with analytic and counted FLOPs "
                        "(prefill/decode: analytic_matmul_flops and counted_matmul_flops)")
    return df
