"""``costmodel report`` and ``costmodel models``: the analytic model, no torch."""

from __future__ import annotations

from dataclasses import replace

import click

from ..spec import MLA_FORMS
from .common import emit_json, format_option, input_errors, main, model_argument, pop_workload, warn, workload_options
from .plan import hardware_options


@main.command()
@model_argument
@workload_options
@hardware_options
@format_option(["table", "csv", "json", "markdown"])
@click.option("--html", "html_file", default=None, metavar="FILE",
              help="Write one self-contained HTML page (tables and plots embedded) to FILE.")
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="With --format markdown: write report.md and its plots into DIR (relative image links).")
@click.option("--mla", type=click.Choice(MLA_FORMS), default="transformers", show_default=True,
              help="Latent attention (DeepSeek): re-expand the cached latent every step as transformers "
                   "does, or decode absorbed in latent space as serving engines do.")
@input_errors
def report(model, fmt, gpu, hardware_file, html_file, out_dir, mla, **kwargs):
    """FLOPs, bytes and memory of MODEL in prefill and decode, per layer and op.

    MODEL is a built-in name (see `costmodel models`) or a path to a Hugging Face config.json
    (or the folder holding it). With --gpu NAME or --hardware FILE, adds roofline latency:
    seconds per op and phase, TTFT, TPOT (first, mean, last), tokens/s.
    """
    from ..analysis import analyze
    from ..models import get_model
    from reports import text

    spec = get_model(model)
    result = analyze(spec, replace(pop_workload(kwargs, spec), mla=mla))
    timing = None
    if gpu is not None or hardware_file is not None:
        from ..hardware import get_hardware
        from ..roofline import predict

        timing = predict(spec, result.workload, get_hardware(gpu, hardware_file))
    for w in result.warnings:
        warn(w)
    if html_file is not None or out_dir is not None:
        _write_files(spec, result, timing, gpu, hardware_file, fmt, html_file, out_dir)
        return
    if fmt == "json":
        emit_json(result.to_dict() if timing is None else timing.annotate(result.to_dict()))
    elif fmt == "csv":
        click.echo(text.ops_csv(result, timing), nl=False)
    elif fmt == "markdown":
        click.echo(text.report_markdown(result, timing))
    else:
        click.echo(text.report_table(result, timing))


def _write_files(spec, result, timing, gpu, hardware_file, fmt, html_file, out_dir):
    """--html FILE and --out DIR: write the page / report.md and its plots; print the paths."""
    from reports import html, text
    from reports.files import check_writable_dir, check_writable_file

    from ..hardware import get_hardware
    from .common import InputError

    hw = get_hardware(gpu, hardware_file) if gpu is not None or hardware_file is not None else None
    if out_dir is not None:
        if fmt != "markdown":
            raise InputError("--out DIR goes with --format markdown (report.md with relative image "
                             "links); for one self-contained page use --html FILE")
        check_writable_dir(out_dir)
    if html_file is not None:
        check_writable_file(html_file, "--html")
        click.echo(html.write_html(html_file, spec, result, timing, hw))
    if out_dir is not None:
        for path in html.write_markdown_dir(out_dir, spec, result, text.report_markdown(result, timing), hw):
            click.echo(path)


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
