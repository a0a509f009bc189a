"""``costmodel validate --timing``: predicted vs measured seconds (called from ``validate``)."""

from __future__ import annotations

import click

from costmodel.hardware import get_hardware, hardware_from_dict

from .common import check_timing_load, emit_json


def timing_spec(name: str | None):
    """``--model`` of the timing commands: anything `report` accepts, or the built-in
    timing-llama-21m (the default of ``validate --timing``)."""
    from costmodel.models import get_model
    from profiler.timing_validation import TIMING_SPEC

    return TIMING_SPEC if name is None or name == TIMING_SPEC.name else get_model(name)


def run_timing_validation(hardware_file, gpu, device, threads, quick, fmt, *, model=None, max_error=10.0,
                          max_load=4.0, repeat=5) -> None:
    """Time the reference model over prefill and decode shapes and hold each against the prediction
    on ``--hardware FILE`` (or ``--gpu NAME``); without either, calibrate this machine first.
    Exit 1 when the median absolute error exceeds ``max_error`` %."""
    from profiler.measure import load_between, load_snapshot
    from profiler.timing_validation import measurement_info, plan, run_timing, summary, table_drift
    from reports.profile import timing_validation_table
    from reports.text import human_seconds

    spec = timing_spec(model)
    if hardware_file is not None or gpu is not None:
        hw = get_hardware(gpu, hardware_file)  # a bad file fails before the load is looked at
    before = check_timing_load(device, max_load)
    if hardware_file is None and gpu is None:
        from profiler.calibrate import calibrate

        click.echo("no --hardware FILE: calibrating this machine first (quick; for the real figures run "
                   "`costmodel calibrate --model MODEL --out cpu.json` and pass --hardware cpu.json)", err=True)
        hw = hardware_from_dict(calibrate(device=device, quick=True, threads=threads or 1), source="calibration")
    planned = len(plan(quick, spec))
    drift = [table_drift(hw, spec, device=device, threads=threads)]  # before the cases, and after
    cases, interrupted = [], False
    try:
        def rounds(r, n):
            click.echo(f"round {r}/{n} done: every case timed {r} time{'s' if r > 1 else ''} (the cases finish in round {n})", err=True)

        for c in run_timing(hw, quick=quick, device=device, threads=threads, spec=spec, repeat=repeat,
                            progress=rounds):
            cases.append(c)
            extra = "" if c.table_s is None else f", roofline {human_seconds(c.roofline_s)}"
            click.echo(f"[{len(cases)}/{planned}] {c.phase} batch {c.batch} context {c.context}: "
                       f"predicted {human_seconds(c.predicted_s)}{extra}, measured {human_seconds(c.measured_s)} "
                       f"({c.error_pct:+.1f} %, floor {c.floor_pct:.1f} %)", err=True)
    except KeyboardInterrupt:
        interrupted = True
        click.echo(f"interrupted: keeping the {len(cases)} finished cases", err=True)
    if drift[0] is not None and not interrupted:
        drift.append(table_drift(hw, spec, device=device, threads=threads))
    s = summary(cases)
    if drift[0] is not None:
        s["table_drift_pct"] = max(d["max_abs_drift_pct"] for d in drift)
    s["max_error_pct"] = max_error
    s["ok"] = s["median_abs_error_pct"] is None or s["median_abs_error_pct"] <= max_error
    load = load_between(before, load_snapshot())
    measurement = {**measurement_info(hw, device, threads), "repeat": repeat, "load": load,
                   "table_drift": [d for d in drift if d is not None]}
    if fmt == "json":
        from costmodel.engine import load_engine

        emit_json({"hardware": hw.id, "model": spec.summary(), "device": device,
                   "cases": [c.to_dict() for c in cases], "summary": s, "planned": planned,
                   "interrupted": interrupted, "measurement": measurement,
                   "engine": "eager", "engine_profile": load_engine("eager").to_dict()})
    else:
        from costmodel.engine import load_engine

        from .common import engine_line

        click.echo(engine_line(load_engine("eager")))
        click.echo(timing_validation_table(cases, s, hw.id, measurement))
    if interrupted:
        click.get_current_context().exit(130)
    if not s["ok"]:
        click.get_current_context().exit(1)
