"""``costmodel report`` and ``costmodel models``: the analytic model, no torch."""

from __future__ import annotations

import click

from .common import emit_json, format_option, input_errors, main, model_argument, pop_workload, warn, workload_options
from .plan import hardware_options


@main.command()
@model_argument
@workload_options
@hardware_options
@format_option(["table", "csv", "json", "markdown"])
@input_errors
def report(model, fmt, gpu, hardware_file, **kwargs):
    """FLOPs, bytes and memory of MODEL in prefill and decode, per layer and op.

    MODEL is a built-in name (see `costmodel models`) or a path to a Hugging Face config.json
    (or the folder holding it). With --gpu NAME or --hardware FILE, adds roofline latency:
    seconds per op and phase, TTFT, TPOT (first, mean, last), tokens/s.
    """
    from ..analysis import analyze
    from ..models import get_model
    from reports import text

    spec = get_model(model)
    result = analyze(spec, pop_workload(kwargs))
    timing = None
    if gpu is not None or hardware_file is not None:
        from ..hardware import get_hardware
        from ..roofline import predict

        timing = predict(spec, result.workload, get_hardware(gpu, hardware_file))
    for w in result.warnings:
        warn(w)
    if fmt == "json":
        emit_json(result.to_dict() if timing is None else timing.annotate(result.to_dict()))
    elif fmt == "csv":
        click.echo(text.ops_csv(result, timing), nl=False)
    elif fmt == "markdown":
        click.echo(text.report_markdown(result, timing))
    else:
        click.echo(text.report_table(result, timing))


@main.command()
@format_option(["table", "json"])
def models(fmt):
    """List the built-in models."""
    from ..models import PRESETS
    from reports import text

    if fmt == "json":
        emit_json([spec.summary() for spec in PRESETS.values()])
    else:
        click.echo(text.models_table(PRESETS.values()))
