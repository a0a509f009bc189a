"""Hardware catalog and profiles: published figures, sources, file validation, the `hardware` command."""

import json
import re

import pytest
from click.testing import CliRunner

from reports.cli import main
from costmodel.errors import SpecError
from costmodel.hardware import (FLOPS_DTYPES, Hardware, catalog, get_hardware, hardware_from_dict,
                                hardware_ids, load_hardware_file, parse_hardware)

REQUIRED_IDS = ["a100-sxm-40gb", "a100-sxm-80gb", "a100-pcie-40gb", "a100-pcie-80gb", "h100-sxm",
                "h100-pcie", "h200", "b200", "l4", "l40s", "a10g", "rtx-4090", "mi300x", "cpu-generic"]


def _raw_catalog():
    from importlib import resources

    return json.loads(resources.files("costmodel").joinpath("data/hardware.json").read_text())


def test_catalog_has_the_issue_entries_with_lowercase_hyphenated_ids():
    ids = hardware_ids()
    assert set(REQUIRED_IDS) <= set(ids)
    assert len(ids) == len(set(ids))
    for i in ids:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i), i


def test_every_figure_in_the_catalog_has_a_source():
    for e in _raw_catalog()["hardware"]:
        for field in ("peak_flops_per_s", "memory_bytes", "memory_bandwidth_bytes_per_s",
                      "interconnect_bandwidth_bytes_per_s", "interconnect_gpus", "pcie_bandwidth_bytes_per_s"):
            if e.get(field) is not None and not (field == "interconnect_gpus" and e[field] == 1):
                assert e["sources"].get(field), (e["id"], field)
        assert set(e["peak_flops_per_s"]) == set(FLOPS_DTYPES), e["id"]


@pytest.mark.parametrize("gpu, memory_bytes, bandwidth, bf16, fp8", [
    # H100 SXM datasheet: 80GB (read as 80e9 bytes), 3.35TB/s, BF16 1,979 TFLOPS with sparsity -> 989.5 dense,
    # FP8 3,958 with sparsity -> 1,979 dense
    ("h100-sxm", 80_000_000_000, 3.35e12, 989.5e12, 1979e12),
    # H100 PCIe: 80GB, 2TB/s, BF16 1,513 sparse -> 756.5, FP8 3,026 -> 1,513
    ("h100-pcie", 80_000_000_000, 2.0e12, 756.5e12, 1513e12),
    # H200: 141GB, 4.8TB/s, same tensor cores as H100 SXM
    ("h200", 141_000_000_000, 4.8e12, 989.5e12, 1979e12),
    # A100 80GB SXM: 2,039 GB/s, BF16 312 dense, no FP8
    ("a100-sxm-80gb", 80_000_000_000, 2039e9, 312e12, None),
    ("a100-pcie-40gb", 40_000_000_000, 1555e9, 312e12, None),
    # MI300X data sheet: 192 GB, 5.3 TB/s, BF16 1307.4, FP8 2614.9 (dense)
    ("mi300x", 192_000_000_000, 5.3e12, 1307.4e12, 2614.9e12),
    # L4: 24GB, 300GB/s, BF16 242 sparse -> 121
    ("l4", 24_000_000_000, 300e9, 121e12, 242.5e12),
])
def test_published_figures(gpu, memory_bytes, bandwidth, bf16, fp8):
    h = get_hardware(gpu)
    assert h.memory_bytes == memory_bytes and isinstance(h.memory_bytes, int)
    assert h.memory_bandwidth_bytes_per_s == bandwidth
    assert h.peak_flops_per_s["bf16"] == bf16
    assert h.peak_flops_per_s["fp8"] == fp8


def test_links_are_per_direction_and_limited_to_their_domain():
    h = get_hardware("h100-sxm")
    assert h.link_for(8)[1] == 450e9  # NVLink 900 GB/s bidirectional / 2
    assert h.link_for(16) == ("PCIe", 64e9)  # beyond the 8-GPU NVSwitch domain: PCIe Gen5 128 / 2
    bridge = get_hardware("h100-pcie")
    assert bridge.link_for(2)[1] == 300e9 and bridge.link_for(4) == ("PCIe", 64e9)
    assert get_hardware("l4").link_for(2) == ("PCIe", 32e9)
    assert get_hardware("cpu-generic").link_for(2) is None


def test_achievable_is_peak_times_efficiency():
    h = get_hardware("h100-sxm")
    assert h.efficiencies() == {"flops": 0.7, "bandwidth": 0.8, "interconnect": 0.8, "source": "default"}
    assert h.achievable_flops_per_s("bf16") == 989.5e12 * 0.7
    assert h.achievable_bandwidth_bytes_per_s == 3.35e12 * 0.8


def test_missing_dtype_peak_is_a_clear_error():
    with pytest.raises(SpecError, match="a100-sxm-80gb has no fp8 peak FLOP/s; dtypes it has: fp32, tf32, bf16, fp16, int8"):
        get_hardware("a100-sxm-80gb").peak_for("fp8")


def test_unknown_gpu_lists_the_known_ids():
    with pytest.raises(SpecError) as e:
        get_hardware("a100")
    msg = str(e.value)
    assert msg.startswith("unknown GPU 'a100'; known: a100-sxm-40gb, ")
    assert all(i in msg for i in REQUIRED_IDS)


def test_no_hardware_given():
    with pytest.raises(SpecError, match="no hardware given"):
        get_hardware()


GOOD = {"id": "my-gpu", "name": "My GPU", "peak_flops_per_s": {"bf16": 100e12, "fp32": 20e12},
        "memory_bytes": 16e9, "memory_bandwidth_bytes_per_s": 500e9}


def _write(tmp_path, obj, name="hw.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_user_file_single_object_list_and_wrapped(tmp_path):
    for obj in (GOOD, [GOOD], {"hardware": [GOOD]}):
        (h,) = load_hardware_file(_write(tmp_path, obj))
        assert h.id == "my-gpu" and h.memory_bytes == 16_000_000_000 and isinstance(h.memory_bytes, int)
        assert h.peak_flops_per_s["fp8"] is None and h.op_overhead_s == 0.0
    assert get_hardware(hardware_file=_write(tmp_path, GOOD)).id == "my-gpu"
    # --gpu picks from the file first, then the catalog
    path = _write(tmp_path, [GOOD, {**GOOD, "id": "other"}])
    assert get_hardware("other", path).id == "other"
    assert get_hardware("h100-sxm", path).id == "h100-sxm"


@pytest.mark.parametrize("change, message", [
    ({"memory_bandwidth_bytes_per_s": None}, "missing required field 'memory_bandwidth_bytes_per_s'"),
    ({"id": None}, "missing required field 'id'"),
    ({"memory_bytes": -1}, "memory_bytes must be > 0, got -1"),
    ({"memory_bytes": 0}, "memory_bytes must be > 0, got 0"),
    ({"memory_bytes": 1.5}, "memory_bytes must be a whole number, got 1.5"),
    ({"memory_bytes": "80GB"}, "memory_bytes must be a number, got '80GB'"),
    ({"memory_bandwidth_bytes_per_s": 0}, "memory_bandwidth_bytes_per_s must be > 0"),
    ({"memory_bandwith_bytes_per_s": 1e9}, "unknown field 'memory_bandwith_bytes_per_s'"),
    ({"peak_flops_per_s": {"bf16": None}}, "peak_flops_per_s needs at least one dtype with a number"),
    ({"peak_flops_per_s": {"bf32": 1e12}}, "peak_flops_per_s has unknown dtype 'bf32'"),
    ({"peak_flops_per_s": {"bf16": -1e12}}, "peak_flops_per_s.bf16 must be > 0"),
    ({"peak_flops_per_s": 1e12}, "peak_flops_per_s must be an object"),
    ({"flops_efficiency": 1.5}, r"flops_efficiency must be in \(0, 1\], got 1.5"),
    ({"op_overhead_s": -1e-6}, "op_overhead_s must be >= 0"),
    ({"id": "H100 SXM"}, "hardware id must be lowercase letters, digits and hyphens"),
    ({"kind": "tpu"}, "unknown kind 'tpu'; allowed: gpu, cpu"),
    ({"interconnect_gpus": 0}, "interconnect_gpus must be > 0"),
    ({"elementwise_flops_per_s": {"bf16": 0}}, "elementwise_flops_per_s.bf16 must be > 0"),
    ({"elementwise_flops_per_s": {"fp64": 1e9}}, "elementwise_flops_per_s must be an object of dtype"),
])
def test_bad_entries_name_the_field(tmp_path, change, message):
    entry = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(SpecError, match=message) as e:
        load_hardware_file(_write(tmp_path, entry))
    assert "\n" not in str(e.value) and "hw.json" in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("{not json", "malformed hardware file .*: Expecting property name"),
    ("[]", "expected a hardware object, a non-empty list"),
    ("42", "expected a hardware object"),
    (json.dumps([GOOD, GOOD]), "duplicate hardware id 'my-gpu'"),
    (json.dumps([GOOD, 3]), "a hardware entry must be a JSON object, got int"),
])
def test_bad_files(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_hardware_file(_write(tmp_path, text))


def test_file_with_several_profiles_needs_gpu(tmp_path):
    path = _write(tmp_path, [GOOD, {**GOOD, "id": "other"}])
    with pytest.raises(SpecError, match=r"holds 2 profiles \(my-gpu, other\); pick one with --gpu"):
        get_hardware(hardware_file=path)


def test_missing_file():
    with pytest.raises(SpecError, match="cannot read hardware file '/no/such/file.json'"):
        load_hardware_file("/no/such/file.json")


def test_to_dict_round_trips():
    for h in catalog():
        assert hardware_from_dict(h.to_dict()) == h
    assert parse_hardware(GOOD, "x")[0] == Hardware(**GOOD)


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_hardware_table_lists_every_entry():
    r = CliRunner().invoke(main, ["hardware"])
    assert r.exit_code == 0, r.output
    for i in REQUIRED_IDS:
        assert re.search(rf"^{i}\s", r.output, re.M), i
    # H100 SXM row: 80.0 GB, 3,350.0 GB/s, bf16 989.5 TFLOP/s, NVLink 450 GB/s per direction over 8
    row = next(line for line in r.output.splitlines() if line.startswith("h100-sxm "))
    assert "80.0" in row and "3,350.0" in row and "989.5" in row and "450.0 x8" in row


def test_cli_hardware_json_has_sources():
    r = CliRunner().invoke(main, ["hardware", "--format", "json"])
    assert r.exit_code == 0
    rows = {d["id"]: d for d in json.loads(r.output)}
    assert set(REQUIRED_IDS) <= set(rows)
    assert rows["h100-sxm"]["memory_bytes"] == 80_000_000_000
    assert "datasheet" in rows["h100-sxm"]["sources"]["memory_bandwidth_bytes_per_s"]


def test_cli_hardware_with_user_file(tmp_path):
    path = _write(tmp_path, GOOD)
    r = CliRunner().invoke(main, ["hardware", "--hardware", path])
    assert r.exit_code == 0 and r.output.startswith("id ") and "\nmy-gpu " in r.output


@pytest.mark.parametrize("args, message", [
    (["--hardware", "/no/such.json"], "cannot read hardware file"),
    (["--format", "xml"], "Invalid value for '--format'"),
])
def test_cli_hardware_bad_input(args, message):
    r = CliRunner().invoke(main, ["hardware", *args])
    assert r.exit_code == 2
    assert message in r.output and r.output.count("\n") == 1 and "Traceback" not in r.output


def test_cli_hardware_bad_file_names_the_field(tmp_path):
    path = _write(tmp_path, {k: v for k, v in GOOD.items() if k != "memory_bytes"})
    r = CliRunner().invoke(main, ["hardware", "--hardware", path])
    assert r.exit_code == 2
    assert r.output == ("Error: hardware file 'hw.json': entry 'my-gpu': missing required field "
                        "'memory_bytes' (required: id, name, peak_flops_per_s, memory_bytes, "
                        "memory_bandwidth_bytes_per_s)\n")
