"""Capacities as devices report them (catalog memory_reported_bytes), and fit as part of every answer
that shows latency: report, plan and the latency plot data warn when a model does not fit, never when it does."""

import json

import pytest
from click.testing import CliRunner

from costmodel import get_model
from costmodel.hardware import Hardware, catalog, get_hardware
from costmodel.plan import MemoryUse, capacity_plan, fit_warnings, reserve_bytes
from costmodel.spec import Workload
from reports import plotdata as D
from reports.cli import main

MIB = 2**20
# llama-2-70b: 68,976,648,192 parameters x 2 bytes (bf16) = 137,953,296,384 bytes of weights
L4_MISFIT = ("does not fit: the weights alone (137,953,296,384 bytes) exceed the 24,152,899,584 bytes of one l4 "
             "(the total the device reports); the latency shown assumes a device that holds it")


def _run(*args):
    return CliRunner().invoke(main, list(args))


# --- capacities as devices report them -----------------------------------------------------------

@pytest.mark.parametrize("gpu, reported", [
    ("h100-sxm", 81_559 * MIB),   # nvidia-smi "81559MiB" = 85,520,809,984 bytes
    ("a100-sxm-80gb", 81_920 * MIB),  # 85,899,345,920
    ("l4", 23_034 * MIB),         # 24,152,899,584
    ("h200", 143_771 * MIB),      # 150,754,820,096
    ("mi300x", 206_141_652_992),  # rocm-smi reports bytes
])
def test_reported_totals(gpu, reported):
    h = get_hardware(gpu)
    assert h.memory_reported_bytes == reported and h.capacity_bytes == reported
    assert h.capacity_figure == "reported" and "http" in h.memory_reported_source


def test_every_catalog_entry_has_a_reported_figure_or_says_why_not():
    for h in catalog():
        assert h.memory_reported_source, h.id
        if h.memory_reported_bytes is None:  # not found: the marketed figure is kept, and said so
            assert h.capacity_bytes == h.memory_bytes and h.capacity_figure == "marketed", h.id
        else:  # the reported totals are all above the SI reading of the marketed figure
            assert h.memory_reported_bytes > h.memory_bytes, h.id


def test_hardware_json_adds_keys_and_keeps_memory_bytes():
    rows = {d["id"]: d for d in json.loads(_run("hardware", "--format", "json").output)}
    assert rows["h100-sxm"]["memory_bytes"] == 80_000_000_000  # as sold, unchanged
    assert rows["h100-sxm"]["memory_reported_bytes"] == 85_520_809_984  # 81,559 * 2**20
    assert rows["h100-pcie"]["memory_reported_bytes"] is None
    assert "no reported total found" in rows["h100-pcie"]["memory_reported_source"]


def test_reserve_is_a_fraction_of_the_reported_total():
    hw = Hardware(id="m", name="m", peak_flops_per_s={"bf16": 1e12}, memory_bytes=1_000_000,
                  memory_bandwidth_bytes_per_s=1e9, memory_reported_bytes=1_048_576)
    assert reserve_bytes(hw, 0.1) == 104_858  # round(0.1 * 1,048,576 = 104,857.6)


def test_bad_reported_bytes_in_a_user_file(tmp_path):
    p = tmp_path / "hw.json"
    p.write_text(json.dumps({"id": "my-gpu", "name": "My GPU", "peak_flops_per_s": {"bf16": 1e14},
                             "memory_bytes": 16e9, "memory_bandwidth_bytes_per_s": 5e11,
                             "memory_reported_bytes": 1.5}))
    r = _run("hardware", "--hardware", str(p))
    assert r.exit_code == 2 and "memory_reported_bytes must be a whole number, got 1.5" in r.output


def test_plan_says_which_capacity_it_used():
    d = json.loads(_run("plan", "llama-2-7b", "--gpu", "h100-sxm", "--format", "json", "--engine", "eager").output)
    assert d["hardware"]["capacity_bytes"] == d["memory"]["capacity_bytes"] == 85_520_809_984
    assert (d["hardware"]["capacity_figure"], d["hardware"]["memory_bytes"]) == ("reported", 80_000_000_000)
    out = _run("plan", "llama-2-7b", "--gpu", "h100-sxm", "--engine", "eager").output
    assert "of 85.52 GB (85,520,809,984 bytes, as the device reports it)" in out


# --- fit warnings ------------------------------------------------------------------------------------

def test_fit_warnings_at_the_boundary():
    hw = get_hardware("h100-sxm")
    # 100 + 0 + 0 + reserve 10 = 110 <= 110: fits, no warning
    assert fit_warnings(MemoryUse(100, 0, 0, 10, 110), hw) == []
    # 100 + 1 + 0 + 10 = 111 > 110, though 101 held alone would fit: the reserve tips it
    (w,) = fit_warnings(MemoryUse(100, 1, 0, 10, 110), hw)
    assert w.startswith("does not fit: weights 100 + KV cache 1 + activations 0 + runtime reserve 10 "
                        "(0.1 of capacity) = 111 bytes exceed the 110 bytes of one h100-sxm")


def test_report_warns_when_the_weights_do_not_fit():
    r = _run("report", "llama-2-70b", "--gpu", "l4", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["warnings"] == [L4_MISFIT]
    assert r.stderr == f"Warning: {L4_MISFIT}\n"
    r = _run("report", "llama-2-70b", "--gpu", "l4")  # the table: the same line, on stderr
    assert r.stderr == f"Warning: {L4_MISFIT}\n" and "TPOT" in r.stdout


def test_report_never_warns_when_it_fits():
    # llama-2-7b: 6,738,415,616 x 2 = 13.5e9 bytes of weights, far below an H100's 85.5e9
    r = _run("report", "llama-2-7b", "--gpu", "h100-sxm", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["warnings"] == [] and r.stderr == ""
    r = _run("report", "llama-2-70b", "--format", "json")  # no device: nothing to fit
    assert json.loads(r.stdout)["warnings"] == [] and r.stderr == ""


def test_plan_warns_when_the_batch_asked_for_does_not_fit():
    # tp 2 x pp 1 on L4s: 137,953,296,384 / 2 = 68,976,648,192 bytes of weights per GPU (plus the
    # replicated norms and embedding share) > 24,152,899,584
    r = _run("plan", "llama-2-70b", "--gpu", "l4", "--tp", "2", "--batch", "1", "--format", "json", "--engine", "eager")
    d = json.loads(r.output)
    assert d["fits"] is False and d["ttft_s"] is not None and len(d["warnings"]) == 1
    assert d["warnings"][0].startswith("does not fit: the weights alone (")
    assert "bytes per GPU of tp 2 x pp 1) exceed the 24,152,899,584 bytes of one l4" in d["warnings"][0]
    r = _run("plan", "llama-2-70b", "--gpu", "l4", "--tp", "2", "--batch", "1", "--engine", "eager")
    assert f"Warning: {d['warnings'][0]}" in r.output.splitlines()


def test_plan_does_not_warn_when_it_fits():
    p = capacity_plan(get_model("llama-2-70b"), get_hardware("h100-sxm"), prompt=2048, gen=256, tp=4, engine="eager")
    assert p.fits and p.warnings == [] and p.to_dict()["warnings"] == []
    assert "Warning" not in _run("plan", "llama-2-70b", "--gpu", "h100-sxm", "--tp", "4", "--engine", "eager").output


def test_latency_plot_data_warns_per_device():
    spec = get_model("llama-2-70b")
    wl = Workload(batch=1, prompt=128, gen=4)
    curves = D.latency_curves(spec, wl, [get_hardware("l4"), get_hardware("b200")], [1, 2], [128])
    # 3 points per device; none fits one L4 (137.95e9 bytes of weights); all fit a B200 (192.3e9 reported)
    assert not curves[curves["hardware"] == "l4"]["fits"].any()
    assert curves[curves["hardware"] == "b200"]["fits"].all()
    (w,) = curves.attrs["warnings"]
    assert w.startswith("3 of the latency plot's 3 points do not fit on one l4 (hollow markers)")
    assert "the weights alone (137,953,296,384 bytes)" in w


def test_cli_latency_plot_warns_on_stderr(tmp_path):
    args = ["plot", "latency", "llama-2-70b", "--prompt", "16", "--gen", "2", "--batch-range", "1:2:x2",
            "--context-range", "16:32:x2", "--out", str(tmp_path)]
    r = _run(*args, "--gpu", "l4")
    assert r.exit_code == 0, r.output
    # batches 1, 2 and contexts 16, 32: 4 points, none fits one L4 (the weights alone are 137.95e9 bytes)
    assert r.stderr.startswith("Warning: 4 of the latency plot's 4 points do not fit on one l4 (hollow markers)")
    assert r.stderr.count("\n") == 1
    r = _run(*args, "--gpu", "b200")  # 192.3e9 reported bytes: every point fits
    assert r.exit_code == 0 and "Warning" not in r.stderr
