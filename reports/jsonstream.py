"""``report --format json`` written piece by piece, in bounded memory.

A 100k-layer model has millions of op rows: ``json.dumps`` of ``Analysis.to_dict()`` needs one
object per row and one string of the whole document (gigabytes). :func:`report_json_pieces` yields
the same document, byte for byte (``json.dumps(annotated to_dict, indent=2)``; the ``ops`` list
stays the per-layer contract), one op row at a time: the rows come from the analysis' generator
(:meth:`Analysis.rows`) and each row's time from the timing's (:meth:`PhaseTime.rows`), in the same
execution order; every pair is checked to carry the same key (phase, layer, op), so costs and
times are still joined by key, never silently by position.

Strict JSON: a non-finite number (infinite seconds from a rate of 1e-300 FLOP/s) raises
ValueError, as ``json.dumps(..., allow_nan=False)`` does.
"""

from __future__ import annotations

import json


def _dumps(value, level: int) -> str:
    """``value`` as ``json.dumps(indent=2)`` writes it nested ``level`` deep."""
    text = json.dumps(value, indent=2, allow_nan=False)
    return text.replace("\n", "\n" + "  " * level) if level else text


def _op_rows(result, timing):
    """The op rows of ``Analysis.to_dict()["ops"]``, with ``seconds`` and ``bound`` when timed."""
    if timing is None:
        yield from result.rows()
        return
    times = ((name, layer, o) for name, phase in timing.phases.items() for layer, o in phase.rows())
    for row in result.rows():
        name, layer, o = next(times, (None, None, None))
        if o is None or (name, layer, o.op) != (row["phase"], row["layer"], row["op"]):
            got = None if o is None else (name, layer, o.op)
            raise ValueError(f"op times do not match the op rows: row {(row['phase'], row['layer'], row['op'])} "
                             f"met time {got}")
        row["seconds"] = o.seconds
        row["bound"] = o.bound
        yield row
    if next(times, None) is not None:
        raise ValueError("op times do not match the op rows: a time that no op row has")


def report_json_pieces(result, timing=None, extra: dict | None = None):
    """Yield the text of ``json.dumps(d, indent=2)`` where ``d`` is ``result.to_dict()``, annotated
    by ``timing`` when given, then the keys of ``extra`` (the engine's), in pieces of one top-level
    value or one op row."""
    base = result.to_dict(include_ops=False)
    keys = list(base)
    d = base if timing is None else timing.annotate(base)  # adds its keys after the base ones
    d = {**d, **(extra or {})}
    order = keys + ["ops"] + [k for k in d if k not in keys]
    yield "{"
    for i, k in enumerate(order):
        yield ("\n" if i == 0 else ",\n") + f"  {json.dumps(k)}: "
        if k != "ops":
            yield _dumps(d[k], 1)
            continue
        first = True
        for row in _op_rows(result, timing):
            yield ("[\n" if first else ",\n") + "    " + _dumps(row, 2)
            first = False
        yield "[]" if first else "\n  ]"
    yield "\n}\n"
