"""``costmodel validate --timing``: predicted vs measured seconds (called from ``validate``)."""

from __future__ import annotations

import click

from costmodel.hardware import get_hardware, hardware_from_dict

from .common import emit_json


def run_timing_validation(hardware_file, gpu, device, threads, quick, fmt) -> None:
    """Time the reference model over prefill and decode shapes and hold each against the roofline
    on ``--hardware FILE`` (or ``--gpu NAME``); without either, calibrate this machine first."""
    from profiler.timing_validation import plan, run_timing, summary
    from reports.profile import timing_validation_table
    from reports.text import human_seconds

    if hardware_file is None and gpu is None:
        from profiler.calibrate import calibrate

        click.echo("no --hardware FILE: calibrating this machine first (quick; for the real figures run "
                   "`costmodel calibrate --threads 1 --out cpu.json` and pass --hardware cpu.json)", err=True)
        hw = hardware_from_dict(calibrate(device=device, quick=True, threads=threads), source="calibration")
    else:
        hw = get_hardware(gpu, hardware_file)
    planned = len(plan(quick))
    cases, interrupted = [], False
    try:
        for c in run_timing(hw, quick=quick, device=device, threads=threads):
            cases.append(c)
            click.echo(f"[{len(cases)}/{planned}] {c.phase} batch {c.batch} context {c.context}: "
                       f"predicted {human_seconds(c.predicted_s)}, measured {human_seconds(c.measured_s)} "
                       f"({c.error_pct:+.1f} %)", err=True)
    except KeyboardInterrupt:
        interrupted = True
        click.echo(f"interrupted: keeping the {len(cases)} finished cases", err=True)
    s = summary(cases)
    if fmt == "json":
        from profiler.timing_validation import TIMING_SPEC

        from costmodel.engine import load_engine

        emit_json({"hardware": hw.id, "model": TIMING_SPEC.summary(), "device": device,
                   "cases": [c.to_dict() for c in cases], "summary": s, "planned": planned,
                   "interrupted": interrupted, "engine": "eager", "engine_profile": load_engine("eager").to_dict()})
    else:
        from .common import engine_line
        from costmodel.engine import load_engine

        click.echo(engine_line(load_engine("eager")))
        click.echo(timing_validation_table(cases, s, hw.id))
    if interrupted:
        click.get_current_context().exit(130)
