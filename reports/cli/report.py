"""``costmodel report`` and ``costmodel models``: the analytic model, no torch."""

from __future__ import annotations

from dataclasses import replace

import click

from costmodel.analysis import analyze
from costmodel.checkpoint import model_checkpoint, with_checkpoint
from costmodel.models import PRESETS, get_model
from costmodel.plan import fit_warnings, memory_use, memory_use_of
from costmodel.roofline import predict
from costmodel.spec import MLA_FORMS

from .common import (InputError, emit_json, engine_line, engine_option, format_option, hardware_options, input_errors,
                     main, model_argument, pop_workload, read_engine, read_hardware, warn, workload_options)


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
@engine_option("eager")
@input_errors
def report(model, fmt, gpu, hardware_file, html_file, out_dir, mla, engine, **kwargs):
    """FLOPs, bytes and memory of MODEL in prefill and decode, per layer and op.

    MODEL is a built-in name (see `costmodel models`), a path to a Hugging Face config.json
    (or the folder holding it), or a Hugging Face id ORG/NAME[@REVISION] already in the local
    cache (read offline). A safetensors checkpoint beside the config is summed from its headers. With --gpu NAME or --hardware FILE, adds roofline latency:
    seconds per op and phase, TTFT, TPOT (first, mean, last), tokens/s.
    """
    from reports import text

    spec = get_model(model)
    eng = read_engine(engine)
    result = with_checkpoint(analyze(spec, replace(pop_workload(kwargs, spec), mla=mla)), model_checkpoint(model))
    hw = read_hardware(gpu, hardware_file)
    if not eng.reference:
        if hw is None:
            raise InputError(f"--engine {eng.id} changes the time and memory of a run: give --gpu NAME or "
                             "--hardware FILE (the counts without a device are the reference implementation's)")
        if fmt == "csv" or html_file is not None or out_dir is not None:
            raise InputError(f"--engine {eng.id} executes other ops than the counted rows: use --format json "
                             "(executed_ops) or table/markdown, or --engine eager for csv, --html and --out")
    timing = None if hw is None else predict(spec, result.workload, hw, eng)
    memory = None
    if hw is not None:  # fit is part of every answer that shows latency
        memory = (memory_use_of(result.memory, hw) if eng.reference
                  else memory_use(spec, hw, result.workload, reserve_fraction=None, engine=eng))
        result = replace(result, warnings=result.warnings + tuple(fit_warnings(memory, hw)))
    lines = [engine_line(eng)]
    if memory is not None and not eng.reference:
        lines.insert(0, f"memory under {eng.id} on one {hw.id}: weights {memory.weights_bytes:,} + KV cache "
                        f"{memory.kv_bytes:,}" + (f" ({memory.kv_blocks:,} blocks of {memory.kv_block_tokens} positions)"
                                                  if memory.paged else "")
                        + f" + activations {memory.activations_bytes:,} + reserve {memory.reserve_bytes:,} = "
                          f"{memory.total_bytes:,} of {memory.capacity_bytes:,} bytes: "
                        + ("fits" if memory.fits else "DOES NOT FIT"))
    for w in result.warnings:
        warn(w)
    if html_file is not None or out_dir is not None:
        _write_files(spec, result, timing, hw, fmt, html_file, out_dir)
        return
    if fmt == "json":
        d = result.to_dict() if timing is None else timing.annotate(result.to_dict())
        d["engine"], d["engine_profile"] = eng.id, eng.to_dict()
        if memory is not None and not eng.reference:
            d["engine_memory"] = memory.to_dict()
        emit_json(d)
    elif fmt == "csv":
        click.echo(text.ops_csv(result, timing), nl=False)
    elif fmt == "markdown":
        click.echo(text.report_markdown(result, timing) + "".join(f"\n- {x}" for x in lines))
    else:
        click.echo(text.report_table(result, timing) + "".join(f"\n{x}" for x in lines))


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
