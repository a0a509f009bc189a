"""The sharded halves of ``costmodel profile --tp/--pp`` and ``costmodel validate``: start the
ranks, render. torch is imported inside the functions only (they run inside the commands)."""

from __future__ import annotations

import click

from costmodel.parallel import Split

from .common import emit_json


def profile_parallel(spec, wl, tp: int, pp: int, *, device: str, attention: str, seed: int, fmt: str,
                     ep: int = 1) -> None:
    from profiler.parallel import run_parallel
    from reports.parallel import parallel_table

    result = run_parallel(spec, wl, Split(tp, pp, ep), attention=attention, device=device, seed=seed)
    if fmt == "json":
        from costmodel.engine import load_engine

        emit_json({**result.to_dict(), "engine": "eager", "engine_profile": load_engine("eager").to_dict()})
    else:
        from costmodel.engine import load_engine

        from .common import engine_line

        click.echo(engine_line(load_engine("eager")))
        click.echo(parallel_table(result))
    if not result.ok:
        click.get_current_context().exit(1)


def split_case_names(names) -> tuple[list[str], list[str]]:
    """(single-device case names, parallel case names) of ``--case`` values."""
    from profiler.parallel import parallel_case_names

    par = parallel_case_names()
    return [n for n in names if n not in par], [n for n in names if n in par]


def validate_parallel(quick: bool, names, results: list, say) -> None:
    """Run the parallel cases (all, or those of ``names``), appending (case, result) to ``results``."""
    from profiler.parallel import run_parallel_cases

    for case, res in run_parallel_cases(quick=quick, names=names or None):
        results.append((case, res))
        say(f"[parallel {len(results)}] {case.name} (tp={case.tp} x pp={case.pp}): "
            f"{'ok' if res.ok else 'MISMATCH'} ({res.seconds:.2f} s)")
