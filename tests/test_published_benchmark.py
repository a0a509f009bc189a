"""benchmarks/published_measurements.json: every entry is a complete, sourced, well-formed record.

Checks the file's schema only (required fields, types, a source URL and a quote, known preset and
hardware ids, a workload the plan accepts), never the prediction errors: those are timing claims and
live in benchmarks/README.md (benchmarks/bench_published.py prints them).
"""

import json
import math
from pathlib import Path

import pytest

from costmodel.dtypes import DTYPE_BITS
from costmodel.hardware import hardware_ids
from costmodel.models import preset_names

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "published_measurements.json"
QUANTITIES = {"ttft_s", "tpot_s", "e2e_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu"}
REQUIRED = {"id": str, "quantity": str, "value": float, "as_published": str, "model": str, "preset": str,
            "gpu": str, "hardware": str, "gpus": int, "tp": int, "pp": int, "weight_dtype": str,
            "act_dtype": str, "kv_dtype": str, "engine": str, "engine_version": str, "batching": str,
            "batch": int, "prompt": int, "gen": int, "definition": str, "mapping": str, "source": dict,
            "notes": str}
OPTIONAL_COUNTS = ("concurrency", "request_rate")  # present, null when no load generator was used


def _doc():
    return json.loads(DATA.read_text())


MEASUREMENTS = _doc()["measurements"]


def test_header_names_the_schema_and_states_the_conventions():
    doc = _doc()
    assert doc["schema"] == "costmodel-published-measurements/1"
    text = " ".join(doc["conventions"])
    for word in ("SI units", "quantity", "mapping", "quote", "notes"):
        assert word in text


def test_at_least_fifteen_measurements_with_unique_ids():
    ids = [m["id"] for m in MEASUREMENTS]
    assert len(ids) >= 15
    assert len(ids) == len(set(ids))


def test_the_set_covers_what_the_issue_asks_for():
    # TTFT, TPOT and throughput; A100 and H100 and another GPU; batch 1 and large batches; tp > 1
    quantities = {m["quantity"] for m in MEASUREMENTS}
    assert {"ttft_s", "tpot_s"} <= quantities
    assert quantities & {"output_tokens_per_s", "output_tokens_per_s_per_gpu"}
    gpus = {m["hardware"] for m in MEASUREMENTS}
    assert any(g.startswith("a100") for g in gpus) and any(g.startswith("h100") for g in gpus)
    assert gpus - {g for g in gpus if g.startswith(("a100", "h100"))}
    batches = {m["batch"] for m in MEASUREMENTS}
    assert 1 in batches and max(batches) >= 256
    assert {m["tp"] for m in MEASUREMENTS} >= {1, 2, 4, 8}


@pytest.mark.parametrize("m", MEASUREMENTS, ids=[m["id"] for m in MEASUREMENTS])
def test_entry_is_complete_and_well_formed(m):
    for key, typ in REQUIRED.items():
        assert key in m, key
        assert isinstance(m[key], typ) and not isinstance(m[key], bool), (key, m[key])
    for key in OPTIONAL_COUNTS:
        assert key in m and (m[key] is None or (isinstance(m[key], (int, float)) and m[key] > 0)), key
    assert m["quantity"] in QUANTITIES
    assert math.isfinite(m["value"]) and m["value"] > 0
    assert m["preset"] in preset_names(), m["preset"]
    assert m["hardware"] in hardware_ids(), m["hardware"]
    for key in ("weight_dtype", "act_dtype", "kv_dtype"):
        assert m[key] in DTYPE_BITS, (key, m[key])
    for key in ("gpus", "tp", "pp", "batch", "prompt", "gen"):
        assert m[key] >= 1, key
    assert m["gpus"] == m["tp"] * m["pp"]  # one replica per measurement
    if m["quantity"] == "tpot_s":
        assert m["gen"] >= 2  # a mean over decode steps needs at least one
    if m["concurrency"] is not None:
        assert m["batch"] == m["concurrency"]  # only concurrency 1 = batch 1 is mapped


@pytest.mark.parametrize("m", MEASUREMENTS, ids=[m["id"] for m in MEASUREMENTS])
def test_entry_cites_its_source_with_a_url_and_a_quote(m):
    src = m["source"]
    assert src["url"].startswith("https://"), src["url"]
    for key in ("title", "section", "quote"):
        assert isinstance(src[key], str) and src[key].strip(), key
    assert "'" in src["quote"] and len(src["quote"]) >= 40  # the source's own words, in quotes


@pytest.mark.parametrize("m", MEASUREMENTS, ids=[m["id"] for m in MEASUREMENTS])
def test_published_number_appears_in_the_quote(m):
    # the figure recorded is the one quoted: its digits (thousands separators dropped) are in the quote
    digits = m["as_published"].split()[0].replace(",", "")
    assert digits in m["source"]["quote"].replace(",", ""), (digits, m["source"]["quote"])
