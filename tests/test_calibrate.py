"""`costmodel calibrate`: quick microbenchmarks on this CPU write a profile that --hardware accepts."""

import json

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from reports.cli import main  # noqa: E402
from costmodel.errors import SpecError  # noqa: E402
from costmodel.hardware import hardware_from_dict, load_hardware_file  # noqa: E402
from profiler import calibrate as cal  # noqa: E402


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "cpu.json"
    r = CliRunner().invoke(main, ["calibrate", "--quick", "--dtype", "fp32", "--out", str(path), "--id", "this-cpu",
                                  "--max-load", "0"])
    assert r.exit_code == 0, r.output
    assert f"profile written to {path}" in r.output and "GFLOP/s" in r.output
    return path


def test_profile_is_a_valid_hardware_file(profile_file):
    (h,) = load_hardware_file(str(profile_file))
    assert h.id == "this-cpu" and h.kind == "cpu"
    assert h.peak_flops_per_s["fp32"] > 0 and h.peak_flops_per_s["bf16"] is None  # only fp32 measured
    assert h.memory_bandwidth_bytes_per_s > 0 and h.op_overhead_s > 0 and h.memory_bytes > 0
    assert (h.flops_efficiency, h.bandwidth_efficiency) == (1.0, 1.0)
    raw = json.loads(profile_file.read_text())
    cal_ = raw["calibration"]
    assert [(m["m"], m["k"], m["n"]) for m in cal_["matmul"]] == list(cal.QUICK_MATMUL_SHAPES)
    # the peak is the best shape's measurement: 2 m k n / seconds
    assert raw["peak_flops_per_s"]["fp32"] == max(2 * m["m"] * m["k"] * m["n"] / m["seconds"] for m in cal_["matmul"])
    # bandwidth: the best of the copy (2 x bytes) and the add into a preallocated buffer (3 x bytes);
    # the allocating add is recorded but not used
    kernels = {b["kernel"]: b for b in cal_["bandwidth"]}
    assert [b["bytes"] for b in cal_["bandwidth"]] == [2 * cal.QUICK_BANDWIDTH_BYTES] + [3 * cal.QUICK_BANDWIDTH_BYTES] * 2
    assert raw["memory_bandwidth_bytes_per_s"] == max(kernels[k]["bytes"] / kernels[k]["seconds"] for k in ("copy", "add"))
    # element-wise: softmax 5 FLOP and SiLU 4 FLOP an element, the best of the two
    ew = {e["kernel"]: e for e in cal_["elementwise"]}
    assert (ew["softmax"]["flops_per_element"], ew["silu"]["flops_per_element"]) == (5, 4)
    assert raw["elementwise_flops_per_s"]["fp32"] == max(e["flops_per_element"] * e["elements"] / e["seconds"]
                                                        for e in ew.values())
    assert h.elementwise_flops_per_s["bf16"] is None
    assert all(raw["sources"][k] for k in ("peak_flops_per_s", "elementwise_flops_per_s", "memory_bytes",
                                           "memory_bandwidth_bytes_per_s", "op_overhead_s"))


def test_profile_works_where_hardware_does(profile_file):
    r = CliRunner().invoke(main, ["report", "tiny-llama", "-s", "16", "-n", "4", "--dtype", "fp32",
                                  "--hardware", str(profile_file), "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["ttft_s"] > 0 and d["timing"]["hardware"] == "this-cpu"
    assert d["timing"]["efficiency"]["source"] == "profile"
    r = CliRunner().invoke(main, ["plan", "tiny-llama", "--hardware", str(profile_file), "--dtype", "fp32",
                                  "--prompt", "16", "--gen", "4", "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.output)["fits"] is True
    # a bf16 report needs a bf16 peak, which this profile did not measure
    r = CliRunner().invoke(main, ["report", "tiny-llama", "--hardware", str(profile_file)])
    assert r.exit_code == 2 and "this-cpu has no bf16 peak FLOP/s; dtypes it has: fp32" in r.output


def test_calibrate_json_to_stdout():
    r = CliRunner().invoke(main, ["calibrate", "--quick", "--dtype", "fp32", "--format", "json", "--max-load", "0"])
    assert r.exit_code == 0, r.output
    h = hardware_from_dict(json.loads(r.output))
    assert h.id == "calibrated-cpu"


def test_calibrate_measures_bf16_too():
    p = cal.calibrate(quick=True, dtypes=("fp32", "bf16"))
    assert p["peak_flops_per_s"]["bf16"] > 0 and p["peak_flops_per_s"]["fp32"] > 0
    assert {m["dtype"] for m in p["calibration"]["matmul"]} == {"fp32", "bf16"}


def test_bad_dtype_and_device():
    with pytest.raises(SpecError, match="cannot calibrate dtype 'tf32' on cpu; allowed: fp32, bf16, fp16"):
        cal.calibrate(quick=True, dtypes=("tf32",))
    with pytest.raises(SpecError, match="unknown device 'tpu'"):
        cal.calibrate(device="tpu")


@pytest.mark.parametrize("args, message", [
    (["--dtype", "tf32"], "Error: cannot calibrate dtype 'tf32' on cpu"),
    (["--device", "tpu"], "Error: costmodel calibrate: Invalid value for '--device'"),
    (["--threads", "0"], "Error: costmodel calibrate: Invalid value for '--threads'"),
    (["--quick", "--dtype", "fp32", "--id", "Bad Id"], "Error: calibrated profile: hardware id must be lowercase"),
    # issue 15: --out creates missing folders; one under a regular file cannot be
    (["--quick", "--dtype", "fp32", "--out", "/dev/null/dir/p.json"], "Error: cannot write --out '/dev/null/dir/p.json'"),
])
def test_calibrate_bad_input(args, message):
    r = CliRunner().invoke(main, ["calibrate", *args, "--max-load", "0"], prog_name="costmodel")
    assert r.exit_code == 2, r.output
    assert r.output.startswith(message) and r.output.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_unavailable_is_a_clear_error():
    r = CliRunner().invoke(main, ["calibrate", "--device", "cuda"])
    assert r.exit_code == 2 and r.output.startswith("Error: device cuda is not available")


def test_curve_probes_cycle_a_pool_past_the_cache():
    from profiler.calibrate import (CURVE_COLD_BYTES, measure_attention_slice, measure_kv_repeat, measure_matmul_rows,
                                    measure_score_chain)

    assert CURVE_COLD_BYTES == 256 * 2**20  # 64 MiB stayed partly cached on a 480 MiB-L3 Xeon
    # One cache of batch x heads 2, 2 x 8 positions, head_dim 4, fp32: 4 * 2 * 16 * 4 = 512 B; a pool
    # of 1,536 B holds 3 of them, and each is read once a call: seconds are per matmul.
    (row,) = measure_attention_slice("cpu", 0.0, points=((2, 8),), head_dim=4, cold_bytes=1536)
    assert row["caches"] == 3 and row["flops"] == 2 * 2 * 8 * 4
    assert row["bytes"] == 4 * (2 * 8 * 4 + 2 * 4 + 2 * 8) and row["seconds"] > 0
    # Weights [n 4, k 2] fp32 = 32 B; a pool of 96 B cycles 3 matrices: 2 m k n FLOPs per matrix.
    # the score chain: 2 heads over 4 x 4 scores, fp32: 4 * 2 * 16 = 128 B; the core minus its matmuls
    (chain,) = measure_score_chain("cpu", 0.0, tokens=(4,), heads=2, head_dim=4)
    assert chain["score_bytes"] == 128 and chain["seconds"] > 0
    assert chain["attention_seconds"] > 0 and chain["matmul_seconds"] > 0
    # GQA's repeat: batch 2 x 3 kv heads x 4 keys x head_dim 2, each kv head for 5 query heads,
    # fp32: 4 * 2 * 3 * 5 * 4 * 2 = 960 B written
    (rep,) = measure_kv_repeat("cpu", 0.0, points=((2, 4),), kv_heads=3, group=5, head_dim=2)
    assert rep["out_bytes"] == 960 and rep["seconds"] > 0
    rows = measure_matmul_rows("cpu", 0.0, (96, 64), rows=(1, 2), matrices=((2, 4),))
    assert [(r["rows"], r["weight_bytes"], r["pool_bytes"], r["matrices"]) for r in rows] == [
        (1, 32, 96, 3), (2, 32, 96, 3), (1, 32, 64, 2), (2, 32, 64, 2)]
    assert all(r["flops_per_s"] == pytest.approx(2 * r["rows"] * 2 * 4 / r["seconds"]) for r in rows)
