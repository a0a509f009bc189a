"""``costmodel report`` and ``costmodel models``: the analytic model, no torch."""

from __future__ import annotations

from dataclasses import replace

import click

from costmodel.analysis import analyze
from costmodel.checkpoint import model_checkpoint, with_checkpoint
from costmodel.models import PRESETS, get_model
from costmodel.plan import fit_warnings, memory_use_of
from costmodel.roofline import predict
from costmodel.spec import MLA_FORMS

from .common import (InputError, emit_json, format_option, hardware_options, input_errors, main, model_argument,
                     pop_workload, read_hardware, warn, workload_options)


@main.command()
@model_argument
@workload_options()
@hardware_options()
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

    MODEL is a built-in name (see `costmodel models`), a path to a Hugging Face config.json
    (or the folder holding it), or a Hugging Face id ORG/NAME[@REVISION] already in the local
    cache (read offline). A safetensors checkpoint beside the config is summed from its headers. With --gpu NAME or --hardware FILE, adds roofline latency:
    seconds per op and phase, TTFT, TPOT (first, mean, last), tokens/s.
    """
    from reports import text

    spec = get_model(model)
    result = with_checkpoint(analyze(spec, replace(pop_workload(kwargs, spec), mla=mla)), model_checkpoint(model))
    hw = read_hardware(gpu, hardware_file)
    timing = None if hw is None else predict(spec, result.workload, hw)
    if hw is not None:  # fit is part of every answer that shows latency
        result = replace(result, warnings=result.warnings + tuple(fit_warnings(memory_use_of(result.memory, hw), hw)))
    for w in result.warnings:
        warn(w)
    if html_file is not None or out_dir is not None:
        _write_files(spec, result, timing, hw, fmt, html_file, out_dir)
        return
    measured = None if hw is None else _op_table_seconds(spec, result.workload, hw)
    if fmt == "json":
        d = result.to_dict() if timing is None else timing.annotate(result.to_dict())
        if measured is not None:
            d["timing"]["op_table"] = measured  # the roofline's figures stay beside it, as the explanation
        emit_json(d)
    elif fmt == "csv":
        click.echo(text.ops_csv(result, timing), nl=False)
    elif fmt == "markdown":
        click.echo(text.report_markdown(result, timing))
    else:
        click.echo(text.report_table(result, timing))
    if measured is not None and fmt in ("table", "markdown"):
        tpot = "" if measured["tpot_mean_s"] is None else f", TPOT mean {measured['tpot_mean_s'] * 1e3:.3f} ms"
        click.echo(f"\n{measured['source']}: TTFT {measured['ttft_s'] * 1e3:.3f} ms{tpot}, end to end "
                   f"{measured['e2e_s'] * 1e3:.3f} ms (the roofline above explains where the time goes)")


def _op_table_seconds(spec, wl, hw):
    """The profile's op table for exactly this model and dtype, interpolated (None without one)."""
    from costmodel.optable import table_for, workload_seconds

    table = table_for(hw, spec, wl.act_dtype, "eager")
    return None if table is None else workload_seconds(table, wl)


def _write_files(spec, result, timing, hw, fmt, html_file, out_dir):
    """--html FILE and --out DIR: write the page / report.md and its plots; print the paths."""
    from reports import html, text
    from reports.files import check_writable_dir, check_writable_file

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
    from reports import text

    if fmt == "json":
        emit_json([spec.summary() for spec in PRESETS.values()])
    else:
        click.echo(text.models_table(PRESETS.values()))
