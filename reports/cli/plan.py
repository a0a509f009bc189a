"""``costmodel hardware``, ``costmodel plan`` and ``costmodel calibrate``.

``hardware`` and ``plan`` are pure arithmetic (no numpy, pandas or torch); ``calibrate`` imports
torch inside the command only. The tables are :mod:`reports.plan`'s, imported inside the commands
as every rendering module is, so that ``costmodel --help`` loads none.
"""

from __future__ import annotations

import json

import click

from costmodel.dtypes import DTYPE_BITS
from costmodel.hardware import catalog, get_hardware, hardware_from_dict, load_hardware_file
from costmodel.models import get_model
from costmodel.plan import capacity_plan
from profiler.choices import DEVICES

from .common import (InputError, efficiency_options, emit_json, engine_option, format_option, hardware_options,
                     input_errors, install_hint, main, max_load_option, model_argument, read_engine, warn,
                     with_efficiencies, workload_options)


@main.command()
@click.option("--engine", "engine_file", metavar="FILE", default=None, help="Also list the engine in this file.")
@format_option(["table", "json"])
@input_errors
def engines(engine_file, fmt):
    """List the engine profiles: attention, KV cache layout, fusions, launch modes, overheads, memory
    budget, chunked prefill, and the sources of every figure (--format json)."""
    from costmodel.engine import engines as built_in
    from reports.plan import engines_table

    profiles = ([read_engine(engine_file)] if engine_file else []) + built_in()
    if fmt == "json":
        emit_json([e.to_dict() for e in profiles])
    else:
        click.echo(engines_table(profiles))


@main.command()
@hardware_options("hardware_file", hardware_file=dict(help="Also list the profiles in this file."))
@format_option(["table", "json"])
@input_errors
def hardware(hardware_file, fmt):
    """List the hardware catalog: peak FLOP/s per dtype, memory, bandwidths, and their sources."""
    from reports.plan import hardware_table

    profiles = (load_hardware_file(hardware_file) if hardware_file else []) + catalog()
    if fmt == "json":
        emit_json([h.to_dict() for h in profiles])
    else:
        click.echo(hardware_table(profiles))


def _positive_float():
    return click.FloatRange(min=0, min_open=True)


@main.command()
@model_argument
@hardware_options()
@efficiency_options
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="GPUs per replica; picks tp (within the fast interconnect) and pp.")
@click.option("--tp", type=click.IntRange(min=1), default=None, help="Tensor-parallel GPUs.")
@click.option("--pp", type=click.IntRange(min=1), default=None, help="Pipeline stages.")
@click.option("--ep", type=click.IntRange(min=1), default=1, show_default=True,
              help="Expert-parallel GPUs of a mixture-of-experts model (tp = pp = 1; with --engine eager).")
@workload_options(
    "prompt", "gen", "batch", "dtype", "weight_dtype", "kv_dtype", "quant",
    prompt=dict(help="Prompt length in tokens."),
    gen=dict(default=128, show_default=True, help="Tokens generated per request."),
    batch=dict(default=None, show_default=False, help="Batch to evaluate (default: the largest that fits)."),
    weight_dtype=dict(help=f"Weights only: {', '.join(DTYPE_BITS)}."),
    kv_dtype=dict(help="KV cache (default: the activation dtype)."))
@click.option("--ttft-slo", type=_positive_float(), default=None, metavar="MS", help="Time-to-first-token SLO, ms.")
@click.option("--tpot-slo", type=_positive_float(), default=None, metavar="MS", help="Mean time-per-output-token SLO, ms.")
@click.option("--rps", type=_positive_float(), default=None, metavar="R", help="Requests per second to serve.")
@click.option("--gpu-hour-usd", type=_positive_float(), default=None, metavar="X", help="Price of one GPU-hour, USD.")
@click.option("--reserve-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Share of memory kept for the runtime (CUDA context, fragmentation, buffers). [default: what "
                   "the engine's memory budget leaves (vllm: 1 - 0.9); 0.1 for eager]")
@click.option("--simulate", "simulated", is_flag=True,
              help="With --rps and an SLO: find the replicas by simulating continuous batching (p99 SLOs).")
@click.option("--sim-requests", type=click.IntRange(min=10), default=500, show_default=True,
              help="Requests simulated per candidate replica count (with --simulate).")
@click.option("--candidates", default=None, metavar="GPU[:TPxPP][@USD],...",
              help="With --simulate: also find the cheapest of these deployments (GPU, layout, price per "
                   "GPU-hour; default layout 1x1, price --gpu-hour-usd; all priced or none) that meets the SLOs.")
@engine_option("vllm")
@format_option(["table", "json"])
@input_errors
def plan(model, gpu, hardware_file, gpus, tp, pp, ep, prompt, gen, batch, dtype, weight_dtype, kv_dtype, quant,
         ttft_slo, tpot_slo, rps, gpu_hour_usd, reserve_fraction, simulated, sim_requests, candidates, engine, fmt):
    """Capacity plan for MODEL on a GPU: memory fit, max batch and context, latency, GPUs, cost.

    Needs --gpu NAME (see `costmodel hardware`) or --hardware FILE.
    """
    from reports.plan import plan_text

    if gpus is not None and (tp is not None or pp is not None):
        raise InputError("give --gpus N or --tp N --pp M, not both")
    if candidates is not None and not simulated:
        raise InputError("--candidates needs --simulate (and --rps with --ttft-slo and/or --tpot-slo)")
    hw = with_efficiencies(get_hardware(gpu, hardware_file))
    eng = read_engine(engine)
    p = capacity_plan(
        get_model(model), hw, prompt=prompt, gen=gen, batch=batch, tp=tp or 1, pp=pp or 1, gpus=gpus, ep=ep,
        weight_dtype=weight_dtype or dtype, act_dtype=dtype, kv_dtype=kv_dtype, quant=quant,
        ttft_slo_s=None if ttft_slo is None else ttft_slo / 1e3,
        tpot_slo_s=None if tpot_slo is None else tpot_slo / 1e3,
        rps=rps, gpu_hour_usd=gpu_hour_usd, reserve_fraction=reserve_fraction, engine=eng)
    sim = cands = None
    if simulated:
        from .simulate import parse_candidates, simulated_candidates, simulated_plan

        pool = None if candidates is None else parse_candidates(candidates, hardware_file, gpu_hour_usd)
        sim = simulated_plan(p, rps, ttft_slo, tpot_slo, sim_requests)
        if pool is not None:
            cands = simulated_candidates(p, pool, rps, ttft_slo, tpot_slo, sim_requests)
    if fmt == "json":
        extra = {} if sim is None else {"simulated": sim}
        if cands is not None:
            extra["simulated_candidates"] = cands
        emit_json({**p.to_dict(), **extra})
    else:
        click.echo(plan_text(p))
        if sim is not None:
            from .simulate import simulated_candidates_text, simulated_plan_text

            click.echo(simulated_plan_text(sim))
            if cands is not None:
                click.echo(simulated_candidates_text(cands))


@main.command()
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--dtype", "dtypes", multiple=True, metavar="DTYPE",
              help="Matmul dtypes to measure (repeatable): fp32, bf16, fp16; tf32 and int8 on cuda. "
                   "Default: fp32 and bf16 on cpu; fp32, tf32, bf16, fp16 on cuda.")
@click.option("--out", "out", metavar="FILE", default=None, help="Write the profile (JSON) here.")
@click.option("--id", "profile_id", default=None, help="Profile id (default: calibrated-<device>).")
@click.option("--quick", is_flag=True, help="Small shapes and short timings (a few seconds; for tests).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads (1: timed with the per-thread CPU clock; more: wall time).")
@click.option("--model", "models", multiple=True, metavar="MODEL",
              help="Also time this model's own ops over a prefill and a decode grid and store its op table "
                   "(repeatable; anything `report` accepts, or timing-llama-21m). Predictions for it then interpolate the table.")
@max_load_option()
@click.option("--collectives", is_flag=True, help="Also time all-reduces on 2 ranks (gloo on cpu, nccl on cuda) "
              "and fit the plan's ring model: interconnect bandwidth and link latency.")
@format_option(["table", "json"])
@input_errors
def calibrate(device, dtypes, out, profile_id, quick, threads, models, max_load, collectives, fmt):
    """Measure this machine (matmul FLOP/s per dtype, memory bandwidth, per-op overhead) and write
    a hardware profile usable wherever --hardware is.

    With --model MODEL: also the model's op table (its passes timed in place over a prefill grid of
    token counts and a decode grid of (batch, context) points), which predictions for that model
    interpolate; the roofline stays the fallback and the explanation."""
    try:
        from profiler import calibrate as cal
    except ImportError as e:
        raise InputError(f"calibrate needs torch ({e}); install it with: {install_hint('profile')}") from None
    from profiler.measure import check_load, load_snapshot
    from reports.files import atomic_write, check_writable_file
    from reports.parallel import collectives_lines
    from reports.plan import calibration_table

    from .validate_timing import timing_spec

    if out:
        check_writable_file(out)  # before measuring: a bad --out costs no minutes of timing
    specs = [timing_spec(m) for m in models]  # bad names fail before any timing
    cal.check_request(device, tuple(dtypes) or None)
    before, note = load_snapshot(), None
    if device == "cpu":
        note = check_load(before, max_load)  # warned with the result (JSON: in calibration.load)
    from reports.progress import Stages

    bar = Stages("calibrate")  # a tqdm bar on stderr, on a terminal only
    try:
        bar("matmul, bandwidth, element-wise and overhead rates, shape-aware curves")
        profile = cal.calibrate(device=device, dtypes=tuple(dtypes) or None, quick=quick, threads=threads,
                                profile_id=profile_id, min_time_s=0.25 if specs and not quick else None)
        if specs:
            from profiler.optable import measure_op_table

            profile["calibration"]["op_tables"] = [
                measure_op_table(spec, device=device, threads=threads, quick=quick, progress=bar)
                for spec in specs]
    finally:
        bar.close()
    if specs:
        profile["sources"]["op_tables"] = ("measured by costmodel calibrate --model: the model's passes "
                                           "timed in place (see costmodel.optable)")
    from profiler.measure import load_between

    profile["calibration"]["load"] = {**load_between(before, load_snapshot()), "warning": note}
    if collectives:
        from profiler.calibrate_collectives import calibrate_collectives

        fit = calibrate_collectives(device=device, quick=quick)
        profile.update(fit["fields"])
        profile["sources"]["interconnect_bandwidth_bytes_per_s"] = profile["sources"]["link_latency_s"] = (
            f"fitted by costmodel calibrate --collectives: {fit['collectives']['model']}")
        profile["calibration"]["collectives"] = fit["collectives"]
    hardware_from_dict(profile, "calibrated profile")  # what --hardware will accept
    if out:  # atomically: a full disk or Ctrl-C leaves no truncated profile
        atomic_write(out, lambda f: f.write(json.dumps(profile, indent=2) + "\n"))
    if fmt == "json":
        emit_json(profile)
    else:
        if note:
            warn(note.removeprefix("warning: "))
        click.echo(calibration_table(profile))
        if collectives:
            click.echo("\n".join(["", *collectives_lines(profile)]))
        if out:
            click.echo(f"profile written to {out}; use it with --hardware {out}")
        else:
            warn("no --out FILE given: the profile was not saved (use --format json to print it)")
