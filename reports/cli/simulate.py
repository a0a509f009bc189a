"""``costmodel simulate``: serve a stream of requests with continuous batching (:mod:`costmodel.simulate`).

Pure arithmetic like ``plan``: no numpy, pandas or torch.
"""

from __future__ import annotations

import csv
import io
import json

import click

from costmodel import simulate as S
from costmodel.hardware import get_hardware
from costmodel.models import get_model

from .common import (InputError, engine_option, format_option, hardware_options, input_errors, main,
                     model_argument, read_engine)


def _ms(v):
    return "-" if v is None else f"{v * 1e3:.2f}"


def simulate_text(d: dict) -> str:
    """The summary of a simulation as lines of text."""
    sch, mem = d["scheduler"], d["memory"]
    lines = [
        f"{d['model']} on {d['hardware']} (tp {d['layout']['tp']} x pp {d['layout']['pp']}), engine {d['engine']}",
        f"scheduler: max_num_seqs {sch['max_num_seqs']}, max_num_batched_tokens {sch['max_num_batched_tokens']}, "
        f"chunked prefill {'on' if sch['chunked_prefill'] else 'off'}, block size {sch['block_size']}",
        f"KV cache: {mem['kv_blocks_total']:,} blocks of {mem['block_bytes']:,} bytes "
        f"({mem['gpu_memory_utilization']:g} x {mem['capacity_bytes']:,} - weights {mem['weights_bytes']:,} "
        f"- activations {mem['activation_bytes']:,})",
        f"requests: {d['requests']} ({d['finished']} finished, {d['unfinished']} unfinished, "
        f"{d['rejected']} rejected); {d['iterations']} iterations over {d['duration_s']:.3f} s",
        "",
        f"{'latency (ms)':<14}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}",
    ]
    for key, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "inter-token"), ("e2e_s", "end to end")):
        v = d[key]
        lines.append(f"{name:<14}" + "".join(f"{_ms(v[k]):>10}" for k in ("mean", "p50", "p90", "p99")))
    kv = d["kv_blocks"]
    tps, rps = d["output_tokens_per_s"], d["requests_per_s"]
    tps = "-" if tps is None else f"{tps:,.1f}"
    rps = "-" if rps is None else f"{rps:.3f}"
    lines += ["",
              f"output tokens/s: {tps}; requests/s finished: {rps}",
              f"KV blocks: peak {kv['peak']:,}, mean {kv['mean']:,.1f} of {kv['total']:,}; "
              f"pre-emptions: {d['preemptions']}; mean requests in system: {d['in_system_mean']:.2f}"]
    return "\n".join(lines)


def per_request_csv(result) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(S.CSV_COLUMNS)
    for r in result.requests:
        row = r.to_dict()
        w.writerow(["" if row[c] is None else row[c] for c in S.CSV_COLUMNS])
    return buf.getvalue()


@main.command()
@model_argument
@hardware_options()
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="Tensor-parallel GPUs.")
@click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True, help="Pipeline stages.")
@click.option("--rps", type=click.FloatRange(min=0, min_open=True), default=None, metavar="R",
              help="Poisson arrivals, requests per second.")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Requests to generate (with --rps).")
@click.option("--prompt", default="512", show_default=True, metavar="P",
              help="Prompt tokens: N, uniform:LO:HI, normal:MEAN:SD or lognormal:MU:SIGMA (of log tokens: median e^MU).")
@click.option("--gen", default="128", show_default=True, metavar="G",
              help="Output tokens: N or a distribution as --prompt.")
@click.option("--prompt-dist", default=None, metavar="DIST",
              help="Prompt length distribution (overrides --prompt): uniform:LO:HI, normal:MEAN:SD, lognormal:MU:SIGMA.")
@click.option("--gen-dist", default=None, metavar="DIST", help="Output length distribution (overrides --gen).")
@click.option("--lengths-from", default=None, metavar="FILE.jsonl",
              help="Draw (prompt, output) lengths from this trace's rows (arrival_s not needed) instead "
                   "of --prompt/--gen.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of arrivals and lengths.")
@click.option("--trace", "trace", metavar="FILE.jsonl", default=None,
              help="Requests from a file: one JSON object a line with arrival_s, prompt_tokens, output_tokens.")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=S.DEFAULT_MAX_NUM_SEQS, show_default=True,
              help="Most requests running at once (vLLM's name and default).")
@click.option("--max-num-batched-tokens", type=click.IntRange(min=1), default=None,
              help="Token budget of one iteration. [default: the engine's (vllm: 8192, vLLM's on GPUs of 70 GiB "
                   f"and more); eager: {S.DEFAULT_MAX_NUM_BATCHED_TOKENS}, vLLM's OpenAI-server default below 70 GiB]")
@click.option("--chunked-prefill/--no-chunked-prefill", "chunked_prefill", default=None,
              help="Split prompts over iterations within the token budget, or schedule each whole. "
                   "[default: the engine's (vllm: on); eager: on]")
@click.option("--block-size", type=click.IntRange(min=1), default=None,
              help=f"Tokens per KV-cache block. [default: the engine's (vllm: 16); eager: {S.DEFAULT_BLOCK_SIZE}]")
@click.option("--gpu-memory-utilization", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Share of the GPU's memory for weights, activations and the KV cache. [default: the engine's "
                   f"(vllm: 0.9); eager: {S.DEFAULT_GPU_MEMORY_UTILIZATION:g}]")
@click.option("--collectives", type=click.Choice(["ring", "nccl"]), default=None,
              help="Communication model with --tp/--pp > 1, as `plan`'s. [default: nccl with an engine, ring with eager]")
@click.option("--overhead-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Host / scheduler time added to every iteration, ms.")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Stop the simulation at S seconds; what is left is reported unfinished.")
@click.option("--dtype", default="bf16", show_default=True, help="Weights and activations.")
@click.option("--weight-dtype", default=None, help="Weights only (overrides --dtype).")
@click.option("--kv-dtype", default=None, help="KV cache (default: the activation dtype).")
@click.option("--rps-sweep", default=None, metavar="R1,R2,...",
              help="Also simulate these request rates (same requests count, lengths and seed): latency "
                   "percentiles against the rate (JSON key sweep; with --plot, the knee).")
@click.option("--plot", "plot_dir", default=None, metavar="DIR",
              help="Write simulate-MODEL.png and .svg into DIR: KV use and the queue over time, and with "
                   "--rps-sweep TTFT/TPOT p50 and p99 against the rate (needs matplotlib).")
@engine_option("vllm")
@format_option(["table", "json", "csv"])
@click.option("--out", "out", metavar="FILE", default=None, help="Write the output here instead of stdout.")
@input_errors
def simulate(model, gpu, hardware_file, tp, pp, rps, num_requests, prompt, gen, prompt_dist, gen_dist, lengths_from,
             seed,
             trace, max_num_seqs, max_num_batched_tokens, chunked_prefill, block_size,
             gpu_memory_utilization, collectives, overhead_ms, max_time, dtype, weight_dtype, kv_dtype, rps_sweep,
             plot_dir, engine, fmt, out):
    """Serve requests on MODEL with continuous batching: TTFT, TPOT and end-to-end percentiles,
    throughput, KV-cache use and pre-emptions.

    Workload: --rps R [--requests N --prompt P --gen G --seed S] (Poisson arrivals) or --trace FILE.jsonl.
    Needs --gpu NAME (see `costmodel hardware`) or --hardware FILE. Each iteration runs as --engine
    executes it (vllm: flash attention, fused kernels, CUDA graphs for decode-only iterations; eager:
    the reference's ops).
    """
    ctx = click.get_current_context()
    given = [p for p in ("num_requests", "prompt", "gen", "prompt_dist", "gen_dist", "lengths_from", "seed")
             if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if trace is not None:
        if rps is not None or given:
            raise InputError("give --trace FILE or --rps R with --requests/--prompt/--gen/--seed, not both")
        requests = S.read_trace_file(trace)
    else:
        if rps is None:
            raise InputError("give --rps R (Poisson arrivals) or --trace FILE.jsonl")
        p = S.parse_lengths(prompt_dist if prompt_dist is not None else prompt,
                            "--prompt-dist" if prompt_dist is not None else "--prompt")
        g = S.parse_lengths(gen_dist if gen_dist is not None else gen,
                            "--gen-dist" if gen_dist is not None else "--gen")
        if lengths_from is not None and (prompt_dist or gen_dist or "prompt" in given or "gen" in given):
            raise InputError("give --lengths-from FILE or --prompt/--gen (or their -dist), not both")
        pool = S.read_trace_file(lengths_from, arrivals=False) if lengths_from is not None else None
        requests = S.poisson_requests(num_requests, rps, p, g, seed, pool)
    sweep_rates = []
    if rps_sweep is not None:
        if trace is not None:
            raise InputError("--rps-sweep needs Poisson arrivals (--rps), not --trace")
        try:
            sweep_rates = [float(x) for x in rps_sweep.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"bad --rps-sweep {rps_sweep!r}: give positive rates separated by commas") from None
        if not sweep_rates or any(not 0 < x < float("inf") for x in sweep_rates):
            raise InputError(f"bad --rps-sweep {rps_sweep!r}: give positive rates separated by commas")
    if plot_dir is not None:
        from reports.files import check_writable_dir

        check_writable_dir(plot_dir, "--plot")
    hw = get_hardware(gpu, hardware_file)
    spec = get_model(model)
    eng = read_engine(engine)
    scheduler, default_util = S.engine_defaults(eng)
    scheduler = S.SchedulerConfig(
        max_num_seqs, scheduler.max_num_batched_tokens if max_num_batched_tokens is None else max_num_batched_tokens,
        scheduler.chunked_prefill if chunked_prefill is None else chunked_prefill,
        scheduler.block_size if block_size is None else block_size)
    run_args = dict(tp=tp, pp=pp, scheduler=scheduler,
                    gpu_memory_utilization=default_util if gpu_memory_utilization is None else gpu_memory_utilization,
                    overhead_s=overhead_ms / 1e3, max_time_s=max_time, weight_dtype=weight_dtype or dtype,
                    act_dtype=dtype, kv_dtype=kv_dtype, engine=eng, collectives=collectives)
    result = S.simulate_model(spec, hw, requests, **run_args)
    d = result.to_dict()
    points = []
    for r in sorted(sweep_rates):
        s = S.simulate_model(spec, hw, S.poisson_requests(num_requests, r, p, g, seed, pool), **run_args).summary()
        points.append({"rps": r, **{k: s[k] for k in ("ttft_s", "tpot_s", "e2e_s", "output_tokens_per_s",
                                                      "finished", "unfinished", "preemptions")}})
    if points:
        d["sweep"] = points
    d["workload"]["source"] = trace if trace is not None else {
        "rps": rps, "requests": num_requests, "seed": seed,
        "prompt": (prompt_dist or prompt), "gen": (gen_dist or gen),
        **({"lengths_from": lengths_from} if lengths_from is not None else {})}
    if fmt == "json":
        text = json.dumps(d, indent=2)
    elif fmt == "csv":
        text = per_request_csv(result).rstrip("\n")
    else:
        text = simulate_text(d)
    if plot_dir is not None:
        import re

        from reports import plots

        fig = plots.simulate_figure(d, points)
        stem = "simulate-" + re.sub(r"[^A-Za-z0-9._-]+", "_", spec.name)
        for path in plots.save(fig, plot_dir, stem):
            click.echo(path, err=True)
    if out:
        try:
            with open(out, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as e:
            raise InputError(f"cannot write {out!r}: {e.strerror or e}") from None
    else:
        click.echo(text)


def simulated_plan(p, rps, ttft_slo_ms, tpot_slo_ms, requests: int) -> dict:
    """``plan --simulate``: the replicas whose simulated p99 TTFT / TPOT meet the SLOs at ``rps``
    (:func:`costmodel.simulate.replicas_for_slo`), for the plan's model, GPU, layout and workload."""
    if rps is None or (ttft_slo_ms is None and tpot_slo_ms is None):
        raise InputError("plan --simulate needs --rps R and --ttft-slo MS and/or --tpot-slo MS")
    w = p.workload
    return S.replicas_for_slo(p.model, p.hardware, rps, ttft_slo_s=None if ttft_slo_ms is None else ttft_slo_ms / 1e3,
                              tpot_slo_s=None if tpot_slo_ms is None else tpot_slo_ms / 1e3, prompt=w.prompt,
                              gen=w.gen, tp=p.layout.tp, pp=p.layout.pp, requests=requests,
                              engine=p.engine, collectives=p.collectives,
                              weight_dtype=w.weight_dtype, act_dtype=w.act_dtype, kv_dtype=w.kv_dtype)


def simulated_plan_text(d: dict) -> str:
    at = d["at_replicas"]
    head = f"Simulated continuous batching (p99 SLOs, engine {d['engine']}, its scheduler defaults)"
    if d["replicas"] is None:
        return f"\n{head}: no replica count up to {S.MAX_REPLICAS} meets the SLOs"
    n, g = d["replicas"], d["gpus_needed"]
    return (f"\n{head}: {n} replica{'s' if n != 1 else ''} ({g} GPU{'s' if g != 1 else ''}) for {d['rps']:g} requests/s: "
            f"p99 TTFT {_ms(at['ttft_p99_s'])} ms, p99 TPOT {_ms(at['tpot_p99_s'])} ms at "
            f"{at['rps_per_replica']:.3g} requests/s per replica ({d['requests_simulated']} requests simulated)")


def parse_candidates(text: str, hardware_file: str | None, default_price: float | None) -> list:
    """``--candidates GPU[:TPxPP][@USD],...`` -> [(Hardware, tp, pp, USD per GPU-hour or None)]: a GPU
    of the catalog (or of --hardware FILE), a layout (default 1x1) and a price per GPU-hour (default
    --gpu-hour-usd). One clear line for anything else."""
    allowed = "GPU[:TPxPP][@USD] separated by commas, e.g. l4@0.8,h100-sxm:2x1@4"
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, _, price = item.partition("@")
        name, _, layout = name.partition(":")
        try:
            tp, pp = (int(v) for v in layout.lower().split("x")) if layout else (1, 1)
            usd = float(price) if price else default_price
            if tp < 1 or pp < 1 or (usd is not None and not 0 < usd < float("inf")):
                raise ValueError
        except ValueError:
            raise InputError(f"bad --candidates entry {item!r}: give {allowed}") from None
        out.append((get_hardware(name, hardware_file), tp, pp, usd))
    if not out:
        raise InputError(f"--candidates is empty: give {allowed}")
    return out


def simulated_candidates(p, candidates, rps, ttft_slo_ms, tpot_slo_ms, requests: int) -> dict:
    """``plan --simulate --candidates``: the cheapest candidate deployment
    (:func:`costmodel.simulate.cheapest_deployment`) for the plan's model, workload and engine."""
    w = p.workload
    return S.cheapest_deployment(p.model, candidates, rps,
                                 ttft_slo_s=None if ttft_slo_ms is None else ttft_slo_ms / 1e3,
                                 tpot_slo_s=None if tpot_slo_ms is None else tpot_slo_ms / 1e3, prompt=w.prompt,
                                 gen=w.gen, requests=requests, engine=p.engine, collectives=p.collectives,
                                 weight_dtype=w.weight_dtype, act_dtype=w.act_dtype, kv_dtype=w.kv_dtype)


def simulated_candidates_text(d: dict) -> str:
    lines = ["", f"Candidates (simulated, p99 SLOs, {d['rps']:g} requests/s):",
             f"{'hardware':<16}{'tp x pp':>8}{'replicas':>10}{'GPUs':>7}{'USD/h':>10}  note"]
    for r in d["candidates"]:
        usd = "-" if r["usd_per_hour"] is None else f"{r['usd_per_hour']:.2f}"
        lines.append(f"{r['hardware']:<16}{r['tp']:>4} x {r['pp']:<1}{'-' if r['replicas'] is None else r['replicas']:>10}"
                     f"{'-' if r['gpus_needed'] is None else r['gpus_needed']:>7}{usd:>10}  {r['reason'] or ''}")
    b = d["best"]
    lines.append("cheapest: none meets the SLOs" if b is None else
                 f"cheapest: {b['hardware']} tp {b['tp']} x pp {b['pp']}, {b['replicas']} replica(s), "
                 f"{b['gpus_needed']} GPUs" + ("" if b["usd_per_hour"] is None else f", {b['usd_per_hour']:.2f} USD/h"))
    return "\n".join(lines)
