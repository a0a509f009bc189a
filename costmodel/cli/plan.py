"""``costmodel hardware``, ``costmodel plan`` and ``costmodel calibrate``.

``hardware`` and ``plan`` are pure arithmetic (no numpy, pandas or torch); ``calibrate`` imports
torch inside the command only.
"""

from __future__ import annotations

import json

import click

from .common import DTYPES, InputError, emit_json, format_option, input_errors, main, model_argument, warn


def hardware_options(fn):
    """--gpu NAME and --hardware FILE (a calibrated profile or entries in the catalog's format)."""
    fn = click.option("--hardware", "hardware_file", metavar="FILE", default=None,
                      help="Hardware profile file (e.g. from `costmodel calibrate`); with several "
                           "profiles in it, pick one with --gpu.")(fn)
    return click.option("--gpu", metavar="NAME", default=None,
                        help="Hardware id from `costmodel hardware` (or from --hardware FILE).")(fn)


def _tflops(x):
    return "-" if x is None else f"{x / 1e12:,.1f}"


def _gbps(x):
    return "-" if x is None else f"{x / 1e9:,.1f}"


def hardware_table(profiles) -> str:
    from reports.text import render

    dts = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
    rows = []
    for h in profiles:
        link = "-" if not h.interconnect_bandwidth_bytes_per_s else \
            f"{_gbps(h.interconnect_bandwidth_bytes_per_s)} x{h.interconnect_gpus}"
        rows.append([h.id, h.name, f"{h.memory_bytes / 1e9:,.1f}", _gbps(h.memory_bandwidth_bytes_per_s)]
                    + [_tflops(h.peak_flops_per_s[d]) for d in dts]
                    + [link, _gbps(h.pcie_bandwidth_bytes_per_s)])
    body = render(["id", "name", "memory GB", "mem GB/s"] + [f"{d} TFLOP/s" for d in dts]
                  + ["link GB/s x GPUs", "PCIe GB/s"], rows, align=["l", "l"] + ["r"] * 12)
    return "\n".join([
        body, "",
        "Dense peaks (no sparsity), 1 TFLOP/s = 1e12 FLOP/s; memory in GB as sold (1 GB = 1e9 bytes); "
        "bandwidths in GB/s (1e9 bytes/s), links per direction ('x8': GPUs the link joins).",
        "Sources for every figure: costmodel hardware --format json.",
    ])


@main.command()
@click.option("--hardware", "hardware_file", metavar="FILE", default=None,
              help="Also list the profiles in this file.")
@format_option(["table", "json"])
@input_errors
def hardware(hardware_file, fmt):
    """List the hardware catalog: peak FLOP/s per dtype, memory, bandwidths, and their sources."""
    from ..hardware import catalog, load_hardware_file

    profiles = (load_hardware_file(hardware_file) if hardware_file else []) + catalog()
    if fmt == "json":
        emit_json([h.to_dict() for h in profiles])
    else:
        click.echo(hardware_table(profiles))


def _ms(x):
    return "-" if x is None else f"{x * 1e3:,.3f} ms"


def plan_text(p) -> str:
    from reports.text import human_bytes, human_seconds

    hw, lay, w, m, t = p.hardware, p.layout, p.workload, p.memory, p.timing
    eff = hw.efficiencies()
    lines = [
        f"{p.model.name} on {lay.gpus} x {hw.id} per replica (tp {lay.tp}, pp {lay.pp}): prompt {w.prompt}, "
        f"gen {w.gen}; weights {w.weight_dtype}, activations {w.act_dtype}, KV {w.kv_dtype}",
        f"memory per GPU at batch {max(p.batch, 1)}: weights {human_bytes(m.weights_bytes)} + KV "
        f"{human_bytes(m.kv_bytes)} + activations {human_bytes(m.activations_bytes)} + reserve "
        f"{human_bytes(m.reserve_bytes)} ({p.reserve_fraction:.0%}) = {human_bytes(m.total_bytes)} of "
        f"{human_bytes(m.capacity_bytes)} ({m.capacity_bytes / 1e9:g} GB): "
        + ("fits" if m.fits else f"DOES NOT FIT, {human_bytes(m.missing_bytes)} ({m.missing_bytes:,} bytes) missing"),
        f"max batch: {p.max_batch}; max context at batch {p.max_context_batch}: {p.max_context:,} positions "
        f"(model max {p.model.max_position_embeddings:,})",
    ]
    if t is not None and t.prefill is None:  # encoder-only: one pass, nothing generated
        lines.append(f"at batch {p.batch}: encode pass {human_seconds(t.e2e_s)}")
    elif t is not None:
        tp = t.tpot()
        lines.append(
            f"at batch {p.batch}: TTFT {human_seconds(t.ttft_s)}; TPOT first {_ms(tp['first'])}, mean "
            f"{_ms(tp['mean'])}, last {_ms(tp['last'])}; end-to-end {human_seconds(t.e2e_s)}; "
            f"{t.tokens_per_s:,.1f} tokens/s generated"
            + (f" ({t.decode_tokens_per_s:,.1f} tokens/s while decoding)" if t.decode_tokens_per_s else ""))
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
    return "\n".join(lines)


def _positive_float():
    return click.FloatRange(min=0, min_open=True)


@main.command()
@model_argument
@hardware_options
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="GPUs per replica; picks tp (within the fast interconnect) and pp.")
@click.option("--tp", type=click.IntRange(min=1), default=None, help="Tensor-parallel GPUs.")
@click.option("--pp", type=click.IntRange(min=1), default=None, help="Pipeline stages.")
@click.option("--prompt", "-s", type=int, default=512, show_default=True, help="Prompt length in tokens.")
@click.option("--gen", "-n", type=int, default=128, show_default=True, help="Tokens generated per request.")
@click.option("--batch", "-b", type=int, default=None, help="Batch to evaluate (default: the largest that fits).")
@click.option("--dtype", default="bf16", show_default=True, help=f"Weights and activations: {', '.join(DTYPES[:5])}.")
@click.option("--weight-dtype", default=None, help=f"Weights only: {', '.join(DTYPES)}.")
@click.option("--kv-dtype", default=None, help="KV cache (default: the activation dtype).")
@click.option("--ttft-slo", type=_positive_float(), default=None, metavar="MS", help="Time-to-first-token SLO, ms.")
@click.option("--tpot-slo", type=_positive_float(), default=None, metavar="MS", help="Mean time-per-output-token SLO, ms.")
@click.option("--rps", type=_positive_float(), default=None, metavar="R", help="Requests per second to serve.")
@click.option("--gpu-hour-usd", type=_positive_float(), default=None, metavar="X", help="Price of one GPU-hour, USD.")
@click.option("--reserve-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1,
              show_default=True, help="Share of memory kept for the runtime (CUDA context, fragmentation, buffers).")
@format_option(["table", "json"])
@input_errors
def plan(model, gpu, hardware_file, gpus, tp, pp, prompt, gen, batch, dtype, weight_dtype, kv_dtype,
         ttft_slo, tpot_slo, rps, gpu_hour_usd, reserve_fraction, fmt):
    """Capacity plan for MODEL on a GPU: memory fit, max batch and context, latency, GPUs, cost.

    Needs --gpu NAME (see `costmodel hardware`) or --hardware FILE.
    """
    from ..hardware import get_hardware
    from ..models import get_model
    from ..plan import capacity_plan

    if gpus is not None and (tp is not None or pp is not None):
        raise InputError("give --gpus N or --tp N --pp M, not both")
    hw = get_hardware(gpu, hardware_file)
    p = capacity_plan(
        get_model(model), hw, prompt=prompt, gen=gen, batch=batch, tp=tp or 1, pp=pp or 1, gpus=gpus,
        weight_dtype=weight_dtype or dtype, act_dtype=dtype, kv_dtype=kv_dtype,
        ttft_slo_s=None if ttft_slo is None else ttft_slo / 1e3,
        tpot_slo_s=None if tpot_slo is None else tpot_slo / 1e3,
        rps=rps, gpu_hour_usd=gpu_hour_usd, reserve_fraction=reserve_fraction)
    if fmt == "json":
        emit_json(p.to_dict())
    else:
        click.echo(plan_text(p))


def calibration_table(profile: dict) -> str:
    from reports.text import render

    cal = profile["calibration"]
    rows = [[m["dtype"], f"{m['m']}x{m['k']}x{m['n']}", f"{m['seconds'] * 1e3:.3f} ms",
             f"{m['flops_per_s'] / 1e9:,.1f}"] for m in cal["matmul"]]
    lines = [f"{profile['name']} ({profile['id']}): calibrated in {cal['seconds_taken']:.1f} s, "
             f"torch {cal['torch_version']}, {cal['threads']} threads" if cal["device"] == "cpu" else
             f"{profile['name']} ({profile['id']}): calibrated in {cal['seconds_taken']:.1f} s, torch {cal['torch_version']}",
             "", render(["dtype", "matmul m x k x n", "time", "GFLOP/s"], rows), ""]
    rows = [[b["kernel"], f"{b['bytes'] / 2**20:,.0f} MiB", f"{b['seconds'] * 1e3:.3f} ms",
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


@main.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", "dtypes", multiple=True, metavar="DTYPE",
              help="Matmul dtypes to measure (repeatable): fp32, bf16, fp16; tf32 and int8 on cuda. "
                   "Default: fp32 and bf16 on cpu; fp32, tf32, bf16, fp16 on cuda.")
@click.option("--out", "out", metavar="FILE", default=None, help="Write the profile (JSON) here.")
@click.option("--id", "profile_id", default=None, help="Profile id (default: calibrated-<device>).")
@click.option("--quick", is_flag=True, help="Small shapes and short timings (a few seconds; for tests).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: torch's).")
@click.option("--collectives", is_flag=True, help="Also time all-reduces on 2 ranks (gloo on cpu, nccl on cuda) "
              "and fit the plan's ring model: interconnect bandwidth and link latency.")
@format_option(["table", "json"])
@input_errors
def calibrate(device, dtypes, out, profile_id, quick, threads, collectives, fmt):
    """Measure this machine (matmul FLOP/s per dtype, memory bandwidth, per-op overhead) and write
    a hardware profile usable wherever --hardware is."""
    try:
        from profiler import calibrate as cal
    except ImportError as e:
        raise InputError(f"calibrate needs torch ({e}); install it with: pip install 'costmodel[profile]'") from None
    from ..hardware import hardware_from_dict

    profile = cal.calibrate(device=device, dtypes=tuple(dtypes) or None, quick=quick, threads=threads,
                            profile_id=profile_id)
    if collectives:
        from profiler.calibrate_collectives import calibrate_collectives

        fit = calibrate_collectives(device=device, quick=quick)
        profile.update(fit["fields"])
        profile["sources"]["interconnect_bandwidth_bytes_per_s"] = profile["sources"]["link_latency_s"] = (
            f"fitted by costmodel calibrate --collectives: {fit['collectives']['model']}")
        profile["calibration"]["collectives"] = fit["collectives"]
    hardware_from_dict(profile, "calibrated profile")  # what --hardware will accept
    if out:
        try:
            with open(out, "w", encoding="utf-8") as f:
                json.dump(profile, f, indent=2)
                f.write("\n")
        except OSError as e:
            raise InputError(f"cannot write {out!r}: {e.strerror or e}") from None
    if fmt == "json":
        emit_json(profile)
    else:
        click.echo(calibration_table(profile))
        if collectives:
            from reports.parallel import collectives_lines

            click.echo("\n".join(["", *collectives_lines(profile)]))
        if out:
            click.echo(f"profile written to {out}; use it with --hardware {out}")
        else:
            warn("no --out FILE given: the profile was not saved (use --format json to print it)")
