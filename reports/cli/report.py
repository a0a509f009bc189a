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

from .common import (InputError, efficiency_options, emit_json, engine_line, engine_option, format_option,
                     hardware_options, input_errors, main, model_argument, pop_workload, read_engine, read_hardware,
                     table_width, warn, wide_option, workload_options)


@main.command()
@model_argument
@workload_options()
@hardware_options()
@format_option(["table", "csv", "json", "markdown"])
@click.option("--html", "html_file", default=None, metavar="FILE",
              help="Write one self-contained HTML page (tables and plots embedded) to FILE.")
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="With --format markdown: write report.md and its plots into DIR (relative image links).")
@efficiency_options
@wide_option
@click.option("--mla", type=click.Choice(MLA_FORMS), default="transformers", show_default=True,
              help="Latent attention (DeepSeek): re-expand the cached latent every step as transformers "
                   "does, or decode absorbed in latent space as serving engines do.")
@engine_option("eager")
@input_errors
def report(model, fmt, gpu, hardware_file, html_file, out_dir, mla, wide, engine, **kwargs):
    """FLOPs, bytes and memory of MODEL in prefill and decode, per layer and op.

    MODEL is a built-in name (see `costmodel models`), a path to a Hugging Face config.json
    (or the folder holding it), or a Hugging Face id ORG/NAME[@REVISION] already in the local
    cache (read offline). A safetensors checkpoint beside the config is summed from its headers. With --gpu NAME or --hardware FILE, adds roofline latency:
    seconds per op and phase, TTFT, TPOT (first, mean, last), tokens/s.
    """
    from reports import text

    if html_file is not None and fmt in ("json", "csv"):  # checked before anything is computed or written
        raise InputError(f"--html FILE writes one HTML page and --format {fmt} prints to stdout: give one "
                         "of them (run twice for both)")
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
    extra = {"engine": eng.id, "engine_profile": eng.to_dict()}
    if memory is not None and not eng.reference:
        extra["engine_memory"] = memory.to_dict()
    measured = None if hw is None or not eng.reference else _op_table_seconds(spec, result.workload, hw)
    if fmt == "json" and (measured is not None or not eng.reference):  # the whole object at once: a
        d = timing.annotate(result.to_dict())  # calibrated small model, or an engine's executed ops
        if measured is not None:
            d["timing"]["op_table"] = measured  # the roofline's figures stay beside it, as the explanation
        emit_json({**d, **extra})
    elif fmt == "json":  # streamed: bounded memory for deep models, the same bytes as emit_json
        _stream_json(result, timing, extra)
    elif fmt == "csv":
        click.echo(text.ops_csv(result, timing), nl=False)
    elif fmt == "markdown":
        click.echo(text.report_markdown(result, timing) + "".join(f"\n- {x}" for x in lines))
    else:
        width = table_width(wide)
        click.echo(text.report_table(result, timing, width) + "".join(f"\n{x}" for x in text.wrapped(lines, width)))
    if measured is not None and fmt in ("table", "markdown"):
        tpot = "" if measured["tpot_mean_s"] is None else f", TPOT mean {measured['tpot_mean_s'] * 1e3:.3f} ms"
        click.echo(f"\n{measured['source']}: TTFT {measured['ttft_s'] * 1e3:.3f} ms{tpot}, end to end "
                   f"{measured['e2e_s'] * 1e3:.3f} ms (the roofline above explains where the time goes)")


def _stream_json(result, timing, extra=None) -> None:
    from reports.jsonstream import report_json_pieces

    pieces = report_json_pieces(result, timing, extra)
    try:
        head = next(pieces)
        batch = [head]
        for piece in pieces:
            batch.append(piece)
            if len(batch) >= 4096:
                click.echo("".join(batch), nl=False)
                batch = []
        click.echo("".join(batch), nl=False)
    except ValueError as e:
        if "JSON compliant" not in str(e):
            raise
        raise InputError("the result holds a number JSON cannot carry (infinite or NaN), e.g. seconds "
                         "from a hardware rate so small that the time overflows (1e-300 FLOP/s): give "
                         "physical rates") from None


def _op_table_seconds(spec, wl, hw):
    """The profile's op table for exactly this model and dtype, interpolated (None without one)."""
    from costmodel.optable import table_for, workload_seconds

    table = table_for(hw, spec, wl.act_dtype, "eager")
    return None if table is None else workload_seconds(table, wl)


def _write_files(spec, result, timing, hw, fmt, html_file, out_dir):
    """--html FILE and --out DIR: write the page / report.md and its plots; print the paths."""
    from reports import html, text
    from reports.files import check_writable_dir, check_writable_file
    from reports.progress import over

    if out_dir is not None:
        if fmt != "markdown":
            raise InputError("--out DIR goes with --format markdown (report.md with relative image "
                             "links); for one self-contained page use --html FILE")
        check_writable_dir(out_dir)
    if html_file is not None:
        check_writable_file(html_file, "--html")
        click.echo(html.write_html(html_file, spec, result, timing, hw,
                                   progress=lambda kinds: over(kinds, "rendering plots")))
    if out_dir is not None:
        for path in html.write_markdown_dir(out_dir, spec, result, text.report_markdown(result, timing), hw,
                                            progress=lambda kinds: over(kinds, "rendering plots")):
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
