"""The hardware catalog, calibrated profiles and capacity plans as text (``costmodel hardware``,
``calibrate``, ``plan``): figures in SI units from the library, converted here to GB, TFLOP/s, ms."""

from __future__ import annotations

from costmodel.quant import describe as quant_describe

from .text import UNITS_NOTE, human_bytes, human_seconds, render


def _tflops(x):
    return "-" if x is None else f"{x / 1e12:,.1f}"


def _gbps(x):
    return "-" if x is None else f"{x / 1e9:,.1f}"


def hardware_table(profiles) -> str:
    dts = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
    rows = []
    for h in profiles:
        link = "-" if not h.interconnect_bandwidth_bytes_per_s else \
            f"{_gbps(h.interconnect_bandwidth_bytes_per_s)} x{h.interconnect_gpus}"
        reported = "-" if h.memory_reported_bytes is None else f"{h.memory_reported_bytes / 1e9:,.2f}"
        rows.append([h.id, h.name, f"{h.memory_bytes / 1e9:,.1f}", reported, _gbps(h.memory_bandwidth_bytes_per_s)]
                    + [_tflops(h.peak_flops_per_s[d]) for d in dts]
                    + [link, _gbps(h.pcie_bandwidth_bytes_per_s)])
    body = render(["id", "name", "memory GB", "reported GB", "mem GB/s"] + [f"{d} TFLOP/s" for d in dts]
                  + ["link GB/s x GPUs", "PCIe GB/s"], rows, align=["l", "l"] + ["r"] * 13)
    return "\n".join([
        body, "",
        "Dense peaks (no sparsity), 1 TFLOP/s = 1e12 FLOP/s; memory in GB as sold (1 GB = 1e9 bytes), "
        "reported: the total the device reports (nvidia-smi), what plans budget against ('-': not known, "
        "plans use the figure as sold); "
        "bandwidths in GB/s (1e9 bytes/s), links per direction ('x8': GPUs the link joins).",
        "Sources for every figure: costmodel hardware --format json.",
    ])


def engines_table(profiles) -> str:
    """``costmodel engines``: one row per engine profile."""
    rows = []
    for e in profiles:
        rows.append([e.id, e.name, e.attention, e.kv_layout + (f" x{e.kv_block_tokens}" if e.paged else ""),
                     ", ".join(e.fusions) or "-", f"{e.launch['prefill']} / {e.launch['decode']}",
                     f"{e.kernel_launch_s['eager'] * 1e6:g} / {e.kernel_launch_s['graphs'] * 1e6:g}",
                     f"{e.host_step_s * 1e6:g}",
                     "flat reserve" if e.memory_utilization is None else f"{e.memory_utilization:g}",
                     str(e.max_num_batched_tokens) if e.chunked_prefill else "-", e.rates])
    body = render(["id", "name", "attention", "KV cache", "fusions", "launch prefill / decode",
                   "us per kernel eager / graphs", "host us per pass", "memory share", "chunk tokens", "rates"],
                  rows, align=["l"] * 6 + ["r"] * 4 + ["l"])
    return "\n".join([
        body, "",
        "KV cache 'paged x16': blocks of 16 positions per layer; memory share: the part of the device's reported "
        "capacity the engine may use (weights, activations, KV cache); chunk tokens: the token budget of one pass "
        "with chunked prefill. Sources for every figure: costmodel engines --format json. Use one with "
        "--engine NAME, or your own with --engine FILE (the same fields, as JSON).",
    ])


def _ms(x):
    return "-" if x is None else f"{x * 1e3:,.3f} ms"


def plan_text(p) -> str:
    hw, lay, w, m, t = p.hardware, p.layout, p.workload, p.memory, p.timing
    eff = hw.efficiencies()
    lines = [
        f"{p.model.name} on {lay.gpus} x {hw.id} per replica (tp {lay.tp}, pp {lay.pp}): prompt {w.prompt}, "
        f"gen {w.gen}; weights {w.weight_dtype}, activations {w.act_dtype}, KV {w.kv_dtype}"
        + ("" if w.quant == "none" else f"; quant {quant_describe(w.quant)}"),
        f"memory per GPU at batch {max(p.batch, 1)}: weights {human_bytes(m.weights_bytes)} + KV "
        f"{human_bytes(m.kv_bytes)} + activations {human_bytes(m.activations_bytes)} + reserve "
        f"{human_bytes(m.reserve_bytes)} ({p.reserve_fraction:.0%}) = {human_bytes(m.total_bytes)} of "
        f"{human_bytes(m.capacity_bytes)} ({m.capacity_bytes:,} bytes, "
        f"{'as the device reports it' if hw.capacity_figure == 'reported' else 'as sold'}): "
        + ("fits" if m.fits else f"DOES NOT FIT, {human_bytes(m.missing_bytes)} ({m.missing_bytes:,} bytes) missing"),
        f"max batch: {p.max_batch}; max context at batch {p.max_context_batch}: {p.max_context:,} positions "
        f"(model max {p.model.max_position_embeddings:,})",
    ]
    lines.insert(1, "engine: " + ("eager (the reference implementation)" if p.engine is None else p.engine.describe()))
    if m.paged:
        lines.insert(3, f"KV cache in blocks of {m.kv_block_tokens} positions x {human_bytes(m.kv_block_bytes)} per "
                        f"layer: {m.kv_blocks_per_sequence:,} blocks per sequence, {m.kv_blocks:,} held at batch "
                        f"{max(p.batch, 1)}, {m.kv_blocks_available:,} available")
    over = p.to_dict()["overhead_s"] if t is not None else None
    if t is not None and t.prefill is None:  # encoder-only: one pass, nothing generated
        lines.append(f"at batch {p.batch}: encode pass {human_seconds(t.e2e_s)}")
    elif t is not None:
        tp = t.tpot()
        lines.append(
            f"at batch {p.batch}: TTFT {human_seconds(t.ttft_s)}; TPOT first {_ms(tp['first'])}, mean "
            f"{_ms(tp['mean'])}, last {_ms(tp['last'])}; end-to-end {human_seconds(t.e2e_s)}; "
            f"{t.tokens_per_s:,.1f} tokens/s generated"
            + (f" ({t.decode_tokens_per_s:,.1f} tokens/s while decoding)" if t.decode_tokens_per_s else ""))
        if over:
            lines.append(f"engine overhead (launch + host): prefill {human_seconds(over['prefill'])}, "
                         f"{_ms(over.get('decode_step'))} per decode step")
    if p.ttft_slo_s is not None or p.tpot_slo_s is not None:
        slo = ", ".join(s for s in (
            None if p.ttft_slo_s is None else f"TTFT <= {p.ttft_slo_s * 1e3:g} ms",
            None if p.tpot_slo_s is None else f"mean TPOT <= {p.tpot_slo_s * 1e3:g} ms") if s)
        st = p.serving_timing
        lines.append(f"SLOs {slo}: largest batch meeting them {p.serving_batch}"
                     + ("" if st is None or st.prefill is None else f" (TTFT {human_seconds(st.ttft_s)}, "
                        f"mean TPOT {_ms(st.tpot_mean_s)}, {st.tokens_per_s:,.1f} tokens/s)"))
    if p.requests_per_s_per_replica:
        lines.append(f"one replica serves {p.requests_per_s_per_replica:,.3f} requests/s at batch {p.serving_batch}")
    if p.rps is not None:
        lines.append(f"{p.rps:g} requests/s: " + (
            f"{p.replicas} replicas x {lay.gpus} GPUs = {p.gpus_needed} GPUs" if p.gpus_needed
            else "cannot be served (see notes)"))
    usd, usd_all = p.usd_per_million_tokens(), p.usd_per_million_tokens(True)
    if usd is not None:
        lines.append(f"cost at ${p.gpu_hour_usd:g}/GPU-hour: ${usd:,.4f} per million generated tokens "
                     f"(${usd_all:,.4f} per million prompt + generated tokens)")
    elif usd_all is not None:
        lines.append(f"cost at ${p.gpu_hour_usd:g}/GPU-hour: ${usd_all:,.4f} per million input tokens")
    lines += ["", f"efficiencies ({eff['source']}): FLOP/s {eff['flops']:g}, bandwidth {eff['bandwidth']:g}, "
              f"interconnect {eff['interconnect']:g}; per-op overhead {hw.op_overhead_s * 1e6:g} us; "
              f"link latency {hw.link_latency_s_used * 1e6:g} us per all-reduce step"]
    lines += [f"assumption: {a}" for a in p.to_dict()["assumptions"]]
    lines += [f"note: {n}" for n in p.notes]
    lines += [f"Warning: {w}" for w in p.warnings]
    lines.append(UNITS_NOTE)
    return "\n".join(lines)


def calibration_table(profile: dict) -> str:
    cal = profile["calibration"]
    rows = [[m["dtype"], f"{m['m']}x{m['k']}x{m['n']}", f"{m['seconds'] * 1e3:.3f} ms",
             f"{m['flops_per_s'] / 1e9:,.1f}"] for m in cal["matmul"]]
    lines = [f"{profile['name']} ({profile['id']}): calibrated in {cal['seconds_taken']:.1f} s, "
             f"torch {cal['torch_version']}, {cal['threads']} threads" if cal["device"] == "cpu" else
             f"{profile['name']} ({profile['id']}): calibrated in {cal['seconds_taken']:.1f} s, torch {cal['torch_version']}",
             "", render(["dtype", "matmul m x k x n", "time", "GFLOP/s"], rows), ""]
    rows = [[b["kernel"], f"{b['bytes'] / 1e6:,.0f} MB", f"{b['seconds'] * 1e3:.3f} ms",
             f"{b['bytes_per_s'] / 1e9:,.2f}"] for b in cal["bandwidth"] + cal.get("matmul_streaming", [])]
    lines += [render(["kernel", "bytes moved", "time", "GB/s"], rows), ""]
    rows = [[e["dtype"], e["kernel"], f"{e['elements']:,}", f"{e['seconds'] * 1e6:.1f} us",
             f"{e['flops_per_s'] / 1e9:,.2f}"] for e in cal.get("elementwise", [])]
    if rows:
        lines += [render(["dtype", "element-wise", "elements", "time", "GFLOP/s"], rows), ""]
    peaks = ", ".join(f"{d} {v / 1e9:,.1f} GFLOP/s" for d, v in profile["peak_flops_per_s"].items() if v)
    ew = ", ".join(f"{d} {v / 1e9:,.2f} GFLOP/s" for d, v in (profile.get("elementwise_flops_per_s") or {}).items() if v)
    lines += [f"peak (best measured): {peaks}"] + ([f"element-wise peak (best measured): {ew}"] if ew else []) + [
              f"memory bandwidth (best measured): {profile['memory_bandwidth_bytes_per_s'] / 1e9:,.2f} GB/s",
              *([f"matmul weight streaming (best measured): {profile['matmul_bandwidth_bytes_per_s'] / 1e9:,.2f} GB/s"]
                if profile.get("matmul_bandwidth_bytes_per_s") else []),
              f"per-op dispatch overhead: {profile['op_overhead_s'] * 1e6:,.2f} us",
              f"memory: {profile['memory_bytes'] / 1e9:,.1f} GB",
              "efficiencies are 1: the peaks are what this machine reached"]
    return "\n".join(lines)
