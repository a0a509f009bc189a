"""``costmodel profile`` and ``costmodel validate``: the reference model against the analytic one.

Both import torch inside the command function only, so that the analytic commands stay light.
"""

from __future__ import annotations

import sys

import click

from costmodel.models import get_model
from profiler.choices import ATTENTION_PATHS, DEVICES, REFERENCE_DTYPES

from .common import (InputError, check_timing_load, emit_json, engine_line, engine_option, format_option,
                     hardware_options, input_errors, main, max_load_option, model_argument, pop_workload, read_engine,
                     refuse_engine, workload_options)
from .parallel import profile_parallel, split_case_names, validate_parallel
from .validate_timing import run_timing_validation


def _progress(desc: str):
    """A tqdm bar on stderr while the reference model runs (only on a terminal)."""
    from reports.progress import Stages

    return Stages(desc)


@main.command()
@model_argument
@workload_options(
    "batch", "prompt", "gen", "strategy", "top_k", "top_p", "temperature", "beams", "dtype", "logits", "no_kv_cache",
    prompt=dict(default=128, help="Prompt length in tokens."),
    gen=dict(default=32, show_default=True,
             help="Tokens generated per sequence (prefill yields the first; gen - 1 decode steps)."),
    strategy=dict(help="How the next token is picked."),
    top_k=dict(help="Candidates kept (top_k, top_k_top_p)."),
    top_p=dict(help="Probability mass kept (top_p, top_k_top_p)."),
    temperature=dict(help="Logits divided by it (sampling)."),
    beams=dict(help="Beam width (beam search)."),
    dtype=dict(type=click.Choice(REFERENCE_DTYPES), default="fp32", help="Weights, activations and KV cache."))
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--attention", type=click.Choice(ATTENTION_PATHS), default="sdpa", show_default=True,
              help="F.scaled_dot_product_attention, or explicit matmuls and softmax.")
@click.option("--repeat", type=int, default=5, show_default=True,
              help="Rounds: each visits the loop bare, with phase timers, with per-op hooks and with the other "
                   "KV-cache choice once, in a shuffled order (times: median and spread of the visits).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed runs first.")
@max_load_option()
@click.option("--seed", type=int, default=0, show_default=True, help="Weights, prompt and sampling seed.")
@click.option("--weights", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of *.safetensors in Hugging Face naming (default: seeded random weights).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads (1: timed with the per-thread CPU clock, as calibrate and validate --timing; "
                   "more: wall time).")
@click.option("--no-fvcore", is_flag=True, help="Skip fvcore's count (it traces every step).")
@click.option("--no-compare-cache", is_flag=True, help="Skip timing decode with the other KV-cache choice.")
@click.option("--tp", type=int, default=1, show_default=True,
              help="Tensor-parallel ranks (Megatron split; starts tp x pp processes on gloo / nccl).")
@click.option("--pp", type=int, default=1, show_default=True, help="Pipeline stages (layers split in order).")
@click.option("--ep", type=int, default=1, show_default=True,
              help="Expert-parallel ranks of a mixture-of-experts model (experts split, tokens exchanged "
                   "by all-gather dispatch and reduce-scatter combine; tp = pp = 1).")
@engine_option("eager")
@format_option(["table", "json"])
@input_errors
def profile(model, device, attention, repeat, warmup, max_load, seed, weights, threads, no_fvcore, no_compare_cache,
            tp, pp, ep, engine, fmt, **kwargs):
    """Run the reference model of MODEL and show measured beside analytic, per phase, layer and op.

    FLOPs from torch's FlopCounterMode and fvcore (x2 to 2 FLOPs per multiply-add) against the
    analytic matmul FLOPs; KV-cache and weight bytes from the tensors; time per phase, layer and op
    (median and spread of --repeat visits in rounds, with the load); the decode loop with versus
    without a KV cache. On a CPU the load is checked first: a warning above 1 per CPU, a refusal
    above --max-load.

    With --tp/--pp: the model split over tp x pp ranks, per rank and phase the counted matmul
    FLOPs, KV-cache bytes and collective payload bytes and time beside the analytic split.
    """
    eng = read_engine(engine)
    refuse_engine(eng, "profile")
    spec = get_model(model)
    wl = pop_workload(kwargs, spec)
    if tp != 1 or pp != 1 or ep != 1:
        if weights:
            raise InputError("--weights is not supported with --tp/--pp/--ep (seeded random weights only)")
        return profile_parallel(spec, wl, tp, pp, device=device, attention=attention, seed=seed, fmt=fmt, ep=ep)
    from profiler.runner import profile as run_profile
    from reports.profile import profile_table

    from profiler.measure import set_threads

    check_timing_load(device, max_load)
    restore = set_threads(threads)
    try:
        with _progress(f"profile {spec.name}") as say:
            result = run_profile(spec, wl, device=device, attention=attention, repeat=repeat, warmup=warmup,
                                 seed=seed, fvcore=not no_fvcore, compare_cache=not no_compare_cache,
                                 weights=weights, progress=say)
    finally:
        restore()
    if fmt == "json":
        emit_json({**result.to_dict(), "engine": eng.id, "engine_profile": eng.to_dict()})
    else:
        click.echo(engine_line(eng))
        click.echo(profile_table(result))


@main.command()
@click.option("--quick", is_flag=True, help="Each case on its own attention path, FlopCounterMode only (< 1 min).")
@click.option("--case", "cases", multiple=True, metavar="NAME", help="Run only this case (repeatable).")
@click.option("--timing", is_flag=True, help="Instead: roofline-predicted vs measured seconds over prefill "
              "and decode shapes (with --hardware FILE from `costmodel calibrate`).")
@hardware_options("hardware_file", "gpu", hardware_file=dict(help="--timing: hardware profile."),
                  gpu=dict(help="--timing: a catalog device (with --device cuda)."))
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="--timing: where the reference model runs.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="--timing: CPU threads (default: the profile's, else 1: the per-thread CPU clock).")
@click.option("--model", "timing_model", default=None, metavar="MODEL",
              help="--timing: the model to predict and measure (anything `report` accepts; default: "
                   "the built-in timing-llama-21m).")
@click.option("--max-error", type=click.FloatRange(min=0), default=10.0, show_default=True, metavar="PCT",
              help="--timing: exit 1 when the median absolute error exceeds PCT %.")
@max_load_option("--timing: ")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="--timing: visits per case, in rounds spread over the run, one timed pass each (their "
                   "geometric mean is the measurement).")
@engine_option("eager")
@format_option(["table", "json"])
@input_errors
def validate(quick, cases, fmt, timing, hardware_file, gpu, device, threads, timing_model, max_error, max_load,
             repeat, engine):
    """Analytic vs counted FLOPs and KV bytes over a built-in matrix of cases; exit 1 on any mismatch.

    Cases cover MHA, GQA and MQA; GPT-2 and LLaMA styles; tied and untied LM heads; biases;
    head_dim != hidden/heads; batch 1 and > 1; prefill; decode at several context lengths; decode
    without a KV cache; every decoding strategy; BERT (encode), T5 and the 2017 Transformer
    (encode, prefill, decode; self and cross caches), mixtures of experts; q/k norms, partial rotary,
    parallel blocks, sliding windows, dense-first MoE (pending cases run when named); tensor and pipeline
    parallel splits (tp2, pp2; tp2-pp2 in the full run). The full run takes each case on both attention
    paths (eager and SDPA) and adds fvcore as a second counter. Ctrl-C keeps and prints the
    finished cases.

    With --timing: the roofline's predicted seconds against the reference model's measured ones
    over prefill and decode shapes (never the op table's grid points), with the median and
    90th-percentile absolute error beside the visit-to-visit floor; exit 1 when the median exceeds
    --max-error. Where the profile holds an op table for the model (`costmodel calibrate --model`),
    the table predicts and the roofline is shown beside it.
    """
    eng = read_engine(engine)
    refuse_engine(eng, "validate")
    if timing:
        return run_timing_validation(hardware_file, gpu, device, threads, quick, fmt, model=timing_model,
                                     max_error=max_error, max_load=max_load, repeat=repeat)
    from profiler.validate import plan, run_cases
    from reports.parallel import parallel_cases_table
    from reports.profile import validate_table

    single, parallel = split_case_names(cases)  # tp / pp cases run after the single-device ones
    planned = len(plan(quick, single or None)) if single or not cases else 0
    results, par_results, interrupted = [], [], False
    try:
        for res in (run_cases(quick=quick, names=single or None) if planned else ()):
            results.append(res)
            click.echo(f"[{len(results)}/{planned}] {res.label}: {'ok' if res.ok else 'MISMATCH'} "
                       f"({res.seconds:.2f} s)", err=True)
        if parallel or not cases:
            validate_parallel(quick, parallel, par_results, lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        interrupted = True
        click.echo(f"interrupted: keeping the {len(results)} finished cases", err=True)
    ok = all(r.ok for r in results) and all(r.ok for _, r in par_results)
    if fmt == "json":
        from profiler.runner import CONVENTIONS

        emit_json({"conventions": CONVENTIONS, "cases": [r.to_dict() for r in results], "planned": planned,
                   "finished": len(results),
                   "parallel_cases": [{"case": c.name, **r.to_dict()} for c, r in par_results],
                   "interrupted": interrupted, "ok": ok, "engine": eng.id, "engine_profile": eng.to_dict()})
    else:
        click.echo(engine_line(eng))
        click.echo(validate_table(results, planned, interrupted))
        if par_results:
            click.echo("\n" + parallel_cases_table(par_results))
    if not ok:
        click.get_current_context().exit(1)
    if interrupted:
        click.get_current_context().exit(130)
