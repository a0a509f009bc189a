"""``costmodel sweep`` (a tidy grid of counts) and ``costmodel plot`` (PNG and SVG figures).

numpy, pandas and matplotlib are imported inside the command functions only, so that
``costmodel --help`` and the other commands stay fast.
"""

from __future__ import annotations

import re
from dataclasses import replace

import click

from costmodel.errors import SpecError, parse_json_text, read_text_file
from costmodel.hardware import get_hardware
from costmodel.models import get_model

from .common import (SIZES, WORKLOAD_OPTIONS, InputError, build_workload, complete_model, efficiency_options,
                     engine_option, hardware_options, input_errors, install_hint, main, pop_workload, read_engine,
                     read_hardware, warn, with_efficiencies, workload_options)

PLOT_KINDS = ("phases", "kv-cache", "memory", "roofline", "latency", "validation", "compare")
ENGINE_PLOTS = ("latency", "memory")  # the plots an engine changes (default engine: vllm)


def _range_options(batch="1", prompt="512", gen=None):
    def deco(fn):
        help_ = "N, N1,N2,..., START:STOP, START:STOP:+STEP or START:STOP:xFACTOR"
        for name, short, default, what in reversed([
                ("--batch", "-b", batch, "Batch sizes"),
                ("--prompt", "-s", prompt, "Prompt lengths (encoder models: input / source tokens)"),
                ("--gen", "-n", gen, "Generated tokens [default: 128; encoder-only models: 1, the only value]")]):
            fn = click.option(name, short, default=default, show_default=default is not None,
                              help=f"{what}: {help_}.")(fn)
        return fn
    return deco


NOT_SIZES = tuple(k for k in WORKLOAD_OPTIONS if k not in SIZES)  # sweep takes ranges of the sizes


@main.command()
@click.argument("model", metavar="MODEL", shell_complete=complete_model)
@_range_options()
@workload_options(*NOT_SIZES)
@efficiency_options
@hardware_options(
    gpu=dict(metavar=None, help="Add a `seconds` column (roofline) for this GPU (see `costmodel hardware`)."),
    hardware_file=dict(help="Hardware profile file for `seconds`."))
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "parquet"]), default="csv", show_default=True,
              help="Output format (parquet needs pyarrow and --out).")
@click.option("--out", default=None, metavar="FILE",
              help="Write to FILE (atomically; missing folders are created) instead of stdout. "
                   "Ctrl-C keeps the rows finished in FILE.partial.")
@engine_option("eager")
@input_errors
def sweep(model, batch, prompt, gen, gpu, hardware_file, fmt, out, engine, **kw):
    """Every (batch, prompt, gen) combination of MODEL: one tidy row per phase.

    Phases: prefill and decode (decoder-only); encode (encoder-only, e.g. BERT: gen is ignored,
    every row has gen 1); encode, prefill and decode (encoder-decoder, e.g. T5: --prompt is the
    source, --decoder-prompt the decoder's start). Columns: batch, prompt, gen, phase, steps, flops,
    matmul_flops, bytes, arithmetic_intensity, kv_cache_bytes (everything cached at the end of the
    phase, cross-attention included), weights_bytes, activation_peak_bytes, cross_kv_cache_bytes,
    and seconds (roofline) with --gpu/--hardware. Counts are exact integers. Example:

        costmodel sweep llama-2-7b --batch 1,2,4,8 --prompt 128:32768:x2 --gen 128
    """
    from reports.files import check_writable_file
    from reports.sweep import check_grid, parse_range

    eng = read_engine(engine)
    if not eng.reference:  # the vectorized grid is the reference model's; an engine's passes are not
        raise InputError(f"sweep runs the reference (eager) implementation only, not engine {eng.id!r}: its "
                         "vectorized grid does not model an engine's executed kernels, overheads or paged memory; "
                         f"use `costmodel plan --engine {eng.id}` or `costmodel report --engine {eng.id}` per "
                         "configuration, or --engine eager")
    spec = get_model(model)
    gen = gen if gen is not None else ("1" if spec.arch == "encoder" else "128")
    grid = {k: parse_range(v, f"--{k}") for k, v in (("batch", batch), ("prompt", prompt), ("gen", gen))}
    check_grid(grid["batch"], grid["prompt"], grid["gen"] if spec.arch != "encoder" else [1])  # whole grid
    wl = build_workload(**{k: kw.pop(k) for k in NOT_SIZES})
    hw = read_hardware(gpu, hardware_file)
    if fmt == "parquet":
        if out is None:
            raise InputError("--format parquet needs --out FILE (parquet is binary)")
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError("--format parquet needs pyarrow, which is not installed: "
                             f"{install_hint('sweep')} (or use --format csv or json)") from None
    if out is not None:
        check_writable_file(out)
    largest = replace(wl, prompt=max(grid["prompt"]), gen=max(grid["gen"]))
    for w in largest.check_against(spec):  # the longest contexts of the grid, as `report` words them
        if "max_position_embeddings" in w:
            warn(w)
    rows, written, interrupted = _sweep_in_chunks(spec, wl, grid, hw, fmt, out)
    if out is not None and not interrupted:
        click.echo(f"wrote {rows:,} rows to {written}", err=True)
    if interrupted:
        where = f"; wrote them to {written} ({out} not written)" if out is not None and written != out else ""
        click.echo(f"interrupted: kept the {rows:,} rows finished (batches {', '.join(map(str, interrupted))} "
                   f"not computed){where}", err=True)
        click.get_current_context().exit(130)


CHUNK_CONFIGS = 1 << 20  # about a second of work: Ctrl-C keeps every chunk finished before it


def _sweep_in_chunks(spec, wl, grid, hw, fmt, out):
    """Run the sweep over chunks of batch sizes, each written out (streamed) as it is finished, so
    that memory holds one chunk whatever the grid. Ctrl-C keeps the chunks finished: with --out they
    go to ``<out>.partial`` (a complete file of those rows; ``out`` itself is left as it was).
    Returns (rows written, the path written or None, the batches not computed)."""
    import numpy as np

    import reports.sweep as rs

    per_batch = len(grid["prompt"]) * len(grid["gen"])
    step = max(1, CHUNK_CONFIGS // per_batch)
    batches = grid["batch"]
    writer = rs.FrameWriter(fmt, out, emit=lambda b: click.echo(b, nl=False))
    try:
        for i in range(0, len(batches), step):
            try:
                with np.errstate(over="ignore", invalid="ignore"):  # a non-finite time is refused below
                    df = rs.sweep(spec, wl, batches[i:i + step], grid["prompt"], grid["gen"], hardware=hw)
            except KeyboardInterrupt:
                if not writer.rows:
                    raise
                return writer.rows, writer.close(partial=True), batches[i:]
            except MemoryError:
                raise InputError(f"out of memory computing batches {batches[i]}..{batches[min(i + step, len(batches)) - 1]}"
                                 " of the sweep: narrow a range") from None
            if i == 0:
                for w in df.attrs.get("warnings", ()):
                    warn(w)
            if "seconds" in df.columns and not np.isfinite(df["seconds"].to_numpy()).all():
                raise InputError("the roofline seconds overflow to infinity: the hardware rates are too "
                                 "small to be physical (e.g. 1e-300 FLOP/s)")
            writer.write(df)
    except BaseException:
        writer.discard()
        raise
    return writer.rows, writer.close(), []


@main.command()
@click.argument("kind", metavar="KIND", type=click.Choice(PLOT_KINDS))
@click.argument("model", metavar="[MODEL]", required=False, shell_complete=complete_model)
@workload_options()
@click.option("--batch-range", default="1:256:x2", show_default=True,
              help="Batch axis: N,N2,..., START:STOP:+STEP or START:STOP:xFACTOR.")
@click.option("--context-range", default=None,
              help="Context (prompt length) axis, same syntax. [default: 128:LIMIT:x2, LIMIT the model's "
                   "max_position_embeddings (the smallest of the models compared; at least 256)]")
@efficiency_options
@hardware_options(gpu=dict(metavar="NAME[,NAME...]",
                           help="Device(s) (see `costmodel hardware`); several for latency and compare."),
                  hardware_file=dict(help="Hardware profile file."))
@click.option("--input", "input_file", default=None, metavar="FILE",
              help="validation: the JSON of `costmodel validate --format json`.")
@click.option("--out", default=".", show_default=True, metavar="DIR", help="Folder for the PNG and SVG files.")
@engine_option(None, "vllm for the latency and memory plots, eager for the others")
@input_errors
def plot(kind, model, batch_range, context_range, gpu, hardware_file, input_file, out, engine, **kw):
    """Draw KIND for MODEL and write KIND-MODEL.png and .svg into --out DIR.

    KIND: phases (prefill vs decode, by textbook term), kv-cache, memory (needs --gpu),
    roofline (needs --gpu), latency (TTFT/TPOT; --gpu A,B), validation (--input FILE from
    `costmodel validate --format json`), compare (MODEL may be A,B,C; --gpu A,B optional).
    --batch/--prompt/--gen set the configuration; --batch-range/--context-range the axes.
    """
    from reports import plots
    from reports.files import check_writable_dir
    from reports.sweep import parse_range

    eng = read_engine(engine if engine is not None else ("vllm" if kind in ENGINE_PLOTS else "eager"))
    if kind not in ENGINE_PLOTS and not eng.reference:
        raise InputError(f"the {kind} plot draws the reference (eager) implementation's counts; --engine "
                         f"{eng.id} applies to the {' and '.join(ENGINE_PLOTS)} plots (or give --engine eager)")
    check_writable_dir(out)
    wl = pop_workload(kw)
    validation = None
    if kind == "validation":
        if input_file is None:
            raise InputError("the validation plot needs --input FILE: the JSON of "
                             "`costmodel validate --format json`")
        validation = parse_json_text(read_text_file(input_file, "--input"), "--input", input_file,
                                     malformed=f"--input {input_file!r} is not JSON")
        specs, stem = [], "validation"
    else:
        if not model:
            raise InputError(f"the {kind} plot needs MODEL (see `costmodel models`)")
        names = [m.strip() for m in model.split(",") if m.strip()] if kind == "compare" else [model]
        specs = [get_model(m) for m in names]
        stem = f"{kind}-" + "-vs-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", s.name) for s in specs)
    hws = _hardware_list(gpu, hardware_file)
    if kind in plots.NEEDS_HARDWARE and not hws:
        raise InputError(f"the {kind} plot needs a device: give --gpu NAME (see `costmodel hardware`) "
                         "or --hardware FILE")
    batches = parse_range(batch_range, "--batch-range")
    if context_range is None:  # stop at the models' context limit, not past it
        top = max(256, min((s.max_position_embeddings for s in specs), default=32768))
        contexts = [c for c in (2 ** i for i in range(7, 31)) if c <= top]
    else:
        contexts = parse_range(context_range, "--context-range")
    longest = max(max(contexts) if kind in ("phases", "memory", "latency", "compare") else 0, wl.prompt)
    for s in specs:
        wl.check_against(s)  # the request itself (e.g. --decoder-prompt on a decoder-only model)
        try:
            warnings = replace(wl, prompt=longest, decoder_prompt=1 if s.arch != "encoder-decoder"
                               else wl.decoder_prompt).check_against(s)
        except SpecError:
            continue  # the plot itself reports it
        for w in warnings:  # the longest contexts of the axes, as `report` words them
            if "max_position_embeddings" in w:
                warn(w.replace(" exceeds ", " on the plot's axes exceeds ", 1))
    fig = plots.build(kind, specs, wl, hws, batches, contexts, validation, engine=eng)
    for w in getattr(fig, "warnings", ()):  # latency points that do not fit the device's memory
        warn(w)
    for path in plots.save(fig, out, stem):
        click.echo(path)  # the figure's title names the engine of the latency and memory plots


def _hardware_list(gpu, hardware_file):
    if gpu is None:
        return [with_efficiencies(get_hardware(None, hardware_file))] if hardware_file else []
    return [with_efficiencies(get_hardware(g.strip(), hardware_file)) for g in gpu.split(",") if g.strip()]
