"""Per-model op tables (costmodel.optable): interpolation, the stored format, and the timing
commands' contract (calibrate --model, validate --timing --model, the load refusal). No timing
asserts: the measured figures are in benchmarks/README.md."""

import json
import math

import pytest
from click.testing import CliRunner

from costmodel.errors import SpecError
from costmodel.hardware import hardware_from_dict, load_hardware_file
from costmodel.models import get_model
from costmodel.optable import (FORMAT, MMAP_THRESHOLD_BYTES, bilinear_loglog, loglog, parse_op_table, same_regime,
                               spec_key, table_for)
from reports.cli import main


def test_loglog_exact_at_grid_points_and_a_power_law_between():
    xs, ys = [1, 4, 16], [2.0, 8.0, 128.0]
    for x, y in zip(xs, ys):
        assert loglog(xs, ys, x) == pytest.approx(y)
    # (1, 2) -> (4, 8): y = 2 x in log-log (slope 1): y(2) = 4
    assert loglog(xs, ys, 2) == pytest.approx(4.0)
    # (4, 8) -> (16, 128): slope log(16) / log(4) = 2, y = 8 (x / 4)^2: y(8) = 32
    assert loglog(xs, ys, 8) == pytest.approx(32.0)
    # beyond the end the last segment continues: y(32) = 8 (32 / 4)^2 = 512
    assert loglog(xs, ys, 32) == pytest.approx(512.0)
    assert loglog([5], [3.0], 100) == 3.0  # one point: a constant


def test_loglog_extrapolation_never_falls():
    xs, ys = [1, 2], [4.0, 2.0]  # slope -1 inside: y = 4 / x
    assert loglog(xs, ys, 1.5) == pytest.approx(4 / 1.5)
    assert loglog(xs, ys, 8) == pytest.approx(2.0)  # beyond: slope clamped at 0
    assert loglog(xs, ys, 0.5) == pytest.approx(4.0)


def test_bilinear_loglog():
    xs, ys = [1, 4], [1, 4]
    grid = [[1.0, 4.0], [4.0, 16.0]]  # f(x, y) = x * y at (1, 1), (1, 4), (4, 1), (4, 4)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert bilinear_loglog(xs, ys, grid, x, y) == pytest.approx(grid[i][j])
    # f = x * y is linear in log-log along both axes, so the interpolation is exact: f(2, 2) = 4
    assert bilinear_loglog(xs, ys, grid, 2, 2) == pytest.approx(4.0)


def test_loglog_interpolates_within_a_regime():
    # a step between x = 2 and x = 4: y = x below it, 3x above it (labels 0 and 1)
    xs, ys, labels = [1, 2, 4, 8], [1.0, 2.0, 12.0, 24.0], [0, 0, 1, 1]
    # above the step (label 1): from (4, 12) and (8, 24), slope 1: y(3) = 12 * 3 / 4 = 9
    assert loglog(xs, ys, 3, labels, 1) == pytest.approx(9.0)
    # below it (label 0): from (1, 1) and (2, 2), extended: y(3) = 3
    assert loglog(xs, ys, 3, labels, 0) == pytest.approx(3.0)
    # without labels the line crosses the step: slope log(6) / log(2), y(3) = 2 * 1.5^2.585 = 5.72
    assert loglog(xs, ys, 3) == pytest.approx(2 * 1.5 ** (math.log(6) / math.log(2)))
    for x, y, l in zip(xs, ys, labels):
        assert loglog(xs, ys, x, labels, l) == pytest.approx(y)  # exact at grid points
    # a regime of one point: in proportion to x, 24 * 6 / 8 = 18
    assert loglog(xs, [1.0, 2.0, 4.0, 24.0], 6, [0, 0, 0, 1], 1) == pytest.approx(18.0)
    # a label no point has: the nearest label's points (a tie: the higher); same_regime gives them
    assert same_regime([0, 0, 1], 2) == [2] and same_regime([0, 2], 1) == [1] and same_regime([0, 1, 1], 1) == [1, 2]
    assert loglog(xs, ys, 16, labels, 2) == pytest.approx(48.0)  # label 1's line: 24 * 16 / 8


def test_bilinear_loglog_within_a_regime():
    xs, ys = [1, 4], [1, 4]
    grid = [[1.0, 4.0], [4.0, 48.0]]  # f = x * y, and 3x that at (4, 4): the one point with x * y >= 16
    step = lambda x, y: int(x * y >= 16)
    # (4, 2): x * y = 8, below: row 4 from its below point (4, 1) alone, in proportion: 4 * 2 = 8;
    # the column at y = 2: rows 1 (2, label 0) and 4 (8, label 0) -> exact f(4, 2) = 8
    assert bilinear_loglog(xs, ys, grid, 4, 2, step) == pytest.approx(8.0)
    # (4, 4) is a grid point: 48; (2, 8): x * y = 16, above: row 1 at y = 8 is 8 (label 0), row 4
    # at y = 8 is 48 * 8 / 4 = 96 (label 1, one point); the column keeps row 4 alone: 96 * 2 / 4 = 48
    assert bilinear_loglog(xs, ys, grid, 4, 4, step) == pytest.approx(48.0)
    assert bilinear_loglog(xs, ys, grid, 2, 8, step) == pytest.approx(48.0)
    assert bilinear_loglog(xs, ys, grid, 2, 8) < 48.0  # without regimes: pulled down by the rest


def _table(**changes):
    t = {"format": FORMAT, "model": "m", "spec_key": "abc", "dtype": "fp32", "attention": "eager",
         "device": "cpu", "threads": 1, "clock": "thread",
         "prefill": [{"tokens": 16, "total_s": 0.010, "attention_s": 0.002},
                     {"tokens": 64, "total_s": 0.040, "attention_s": 0.032}],
         "decode": [{"batch": b, "context": c, "total_s": 0.001 * b + 0.0001 * b * (c + 1),
                     "attention_s": 0.0001 * b * (c + 1)} for b in (1, 4) for c in (15, 63)]}
    t.update(changes)
    return t


def test_table_predicts_by_parts():
    tab = parse_op_table(_table(), "t")
    # prefill, grid point: rest 10 - 2 = 8 ms, attention 2 ms
    assert tab.parts(1, 16, 16) == pytest.approx({"rest_s": 0.008, "attention_s": 0.002, "seconds": 0.010})
    # batch 2 x 32 tokens: rest at 64 rows = 40 - 32 = 8 ms (flat: 8 ms at 16 rows too);
    # attention at x = 2 * 32^2 = 2048, between 16^2 = 256 (2 ms) and 64^2 = 4096 (32 ms):
    # slope log(16) / log(16) = 1, so 2 ms * 2048 / 256 = 16 ms
    p = tab.parts(2, 32, 32)
    assert p["rest_s"] == pytest.approx(0.008) and p["attention_s"] == pytest.approx(0.016)
    # decode: rest = 1 ms x batch exactly (total - attention), attention 0.1 ms x batch x keys,
    # a product of powers, so interpolation is exact: batch 2, context 31 (32 keys): 2 ms + 6.4 ms
    d = tab.parts(2, 1, 32)
    assert d["rest_s"] == pytest.approx(0.002) and d["attention_s"] == pytest.approx(0.0064)
    assert tab.is_grid_point("decode", 4, 15) and not tab.is_grid_point("decode", 2, 15)
    assert tab.is_grid_point("prefill", 1, 64) and not tab.is_grid_point("prefill", 4, 64)
    with pytest.raises(SpecError, match="covers prefill passes"):
        tab.parts(1, 4, 16)


@pytest.mark.parametrize("changes, message", [
    ({"format": "v0"}, "unknown format 'v0'; allowed: costmodel-op-table/1"),
    ({"prefill": []}, "prefill must be a non-empty list"),
    ({"prefill": [{"tokens": 0, "total_s": 1.0, "attention_s": 0.0}]}, r"prefill\[0\]: tokens must be a whole number >= 1"),
    ({"prefill": [{"tokens": 8, "total_s": "fast", "attention_s": 0.0}]}, r"prefill\[0\]: total_s must be a number >= 0"),
    ({"decode": [{"batch": 1, "context": 8, "total_s": 1.0, "attention_s": 0.5},
                 {"batch": 2, "context": 16, "total_s": 1.0, "attention_s": 0.5}]},
     "decode grid must be rectangular .* missing batch 1 context 16"),
    ({"threads": 0}, "threads must be a whole number >= 1"),
    ({"mmap_threshold_bytes": 0}, "mmap_threshold_bytes must be a whole number >= 1"),
    ({"mmap_threshold_bytes": "32M"}, "mmap_threshold_bytes must be a whole number >= 1"),
])
def test_bad_table_is_one_line(changes, message):
    with pytest.raises(SpecError, match=message):
        parse_op_table(_table(**changes), "t")


def test_table_missing_field():
    with pytest.raises(SpecError, match="t: missing field 'model'"):
        parse_op_table({k: v for k, v in _table().items() if k != "model"}, "t")


def _profile(tables):
    return {"id": "cal-cpu", "name": "CPU", "kind": "cpu", "peak_flops_per_s": {"fp32": 1e11},
            "memory_bytes": 2**34, "memory_bandwidth_bytes_per_s": 1e10, "calibration": {"op_tables": tables}}


def test_bad_table_in_a_hardware_file_is_exit_2(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_profile([_table(decode=[])])))
    r = CliRunner().invoke(main, ["report", "tiny-llama", "--hardware", str(path)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "op table 0: decode must be a non-empty list" in r.output
    r = CliRunner().invoke(main, ["validate", "--timing", "--hardware", str(path)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "Traceback" not in r.output


def test_table_for_matches_the_exact_spec():
    spec = get_model("tiny-llama")
    hw = hardware_from_dict(_profile([_table(model=spec.name, spec_key=spec_key(spec))]))
    assert table_for(hw, spec).model == "tiny-llama"
    assert table_for(hw, get_model("tiny-qwen2")) is None  # another spec: the roofline
    assert table_for(hw, spec, dtype="bf16") is None


def test_decode_rest_adds_batches_for_the_rows_part():
    # the grid's rest is 1 ms x batch (batches 1 and 4); decode_rest times batch 2 at context 15:
    # total 8.2 ms, attention 3.2 ms, so its rest is 5 ms (a step up, as a CPU's 4-6-row matmuls are)
    rest = [{"batch": 2, "context": 15, "total_s": 0.0082, "attention_s": 0.0032}]
    tab = parse_op_table(_table(decode_rest=rest), "t")
    batches, rest_s = tab.decode_rest_by_batch()
    assert batches == [1, 2, 4] and rest_s == pytest.approx([0.001, 0.005, 0.004])
    assert tab.parts(2, 1, 32)["rest_s"] == pytest.approx(0.005)
    # batch 3: between (2, 5 ms) and (4, 4 ms) in log-log: 5 ms x 1.5^(log(0.8) / log(2)) = 4.39 ms
    assert tab.parts(3, 1, 32)["rest_s"] == pytest.approx(0.005 * 1.5 ** (math.log(0.8) / math.log(2)))
    # its attention stays the grid's (batch 2 is not a row of it): 0.1 ms x 2 x 32 keys
    assert tab.parts(2, 1, 32)["attention_s"] == pytest.approx(0.0064)
    assert tab.is_grid_point("decode", 2, 15) and not tab.is_grid_point("decode", 2, 63)
    assert parse_op_table(_table(), "t").decode_rest_by_batch()[0] == [1, 4]  # optional: older tables
    with pytest.raises(SpecError, match=r"t: decode_rest\[0\]: batch must be a whole number >= 1"):
        parse_op_table(_table(decode_rest=[{**rest[0], "batch": 0}]), "t")
    with pytest.raises(SpecError, match="t: decode_rest must be a list"):
        parse_op_table(_table(decode_rest={"batch": 2}), "t")


def test_regimes_count_the_fresh_tensors_over_the_threshold():
    spec = get_model("tiny-llama")  # 4 heads of 16, 2 kv heads, hidden 64, MLP 160; fp32: 4 bytes
    hw = hardware_from_dict(_profile([_table(model=spec.name, spec_key=spec_key(spec), mmap_threshold_bytes=2**16)]))
    tab = table_for(hw, spec)
    assert tab.mmap_threshold_bytes == 65536 and tab.dims == (4, 2, 16, (64, 160), 4)
    # scores batch x 4 heads x q x k x 4 B; GQA's repeated k, v batch x 4 heads x k x 16 x 4 B
    assert tab.attention_regime(1, 64, 64) == 1  # scores 65,536 B: at the threshold; repeat 16,384
    assert tab.attention_regime(1, 63, 64) == 0  # scores 64,512 B
    assert tab.attention_regime(64, 1, 64) == 2  # scores 65,536, repeat 1,048,576
    assert tab.attention_regime(16, 1, 64) == 1  # scores 16,384, repeat 262,144
    assert tab.rest_regime(102) == 0 and tab.rest_regime(103) == 1  # 160 x 4 B: 65,280 / 65,920
    assert tab.rest_regime(256) == 2  # 64 x 4 x 256 = 65,536 too
    # no threshold stored (a GPU, an older table): one regime, the lines of test_table_predicts_by_parts
    plain = table_for(hardware_from_dict(_profile([_table(model=spec.name, spec_key=spec_key(spec))])), spec)
    assert plain.attention_regime(64, 1, 64) is None and plain.rest_regime(256) is None


def test_a_table_steps_with_its_regime():
    spec = get_model("tiny-llama")  # 4 heads: prefill scores 4 x s^2 x 4 B
    # prefill attention 2 ms at 16 tokens (4,096 B of scores) and 64 ms at 64 (65,536 B: over a
    # 60,000 B threshold): a step, twice the line through the 16-token point
    pre = [{"tokens": 16, "total_s": 0.010, "attention_s": 0.002}, {"tokens": 64, "total_s": 0.072, "attention_s": 0.064}]
    table = _table(model=spec.name, spec_key=spec_key(spec), prefill=pre)
    tab = table_for(hardware_from_dict(_profile([{**table, "mmap_threshold_bytes": 60000}])), spec)
    plain = table_for(hardware_from_dict(_profile([table])), spec)
    # 1 x 60: 57,600 B, below: the 16-token point alone, in proportion to the score elements:
    # 2 ms x 60^2 / 16^2 = 28.125 ms; one regime: the line up to the step, slope log(32) / log(16),
    # 2 ms x (3600 / 256)^1.25 = 54.4 ms
    assert tab.parts(1, 60, 60)["attention_s"] == pytest.approx(0.002 * 3600 / 256)
    assert plain.parts(1, 60, 60)["attention_s"] == pytest.approx(0.002 * (3600 / 256) ** 1.25)
    # 1 x 62: 61,504 B, above: the 64-token point alone, 64 ms x 62^2 / 64^2 = 60.06 ms
    assert tab.parts(1, 62, 62)["attention_s"] == pytest.approx(0.064 * 62 ** 2 / 64 ** 2)
    assert tab.parts(1, 16, 16)["attention_s"] == pytest.approx(0.002)  # grid points stay exact
    assert tab.parts(1, 64, 64)["attention_s"] == pytest.approx(0.064)


def test_calibrate_records_the_mmap_threshold(monkeypatch):
    pytest.importorskip("torch")
    import platform

    from profiler.measure import mmap_threshold_bytes

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("glibc", "2.36"))
    assert mmap_threshold_bytes("cpu") == MMAP_THRESHOLD_BYTES == 32 * 2**20
    assert mmap_threshold_bytes("cuda") is None
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))  # musl, or unknown
    assert mmap_threshold_bytes("cpu") is None


# --- the load -----------------------------------------------------------------------------------

def test_check_load_warns_and_refuses():
    from profiler.measure import LoadError, check_load, floor_pct

    quiet = {"loadavg": [1.0, 1.0, 1.0], "cpus": 2}
    busy = {"loadavg": [3.0, 1.0, 1.0], "cpus": 2}  # 1.5 per CPU: warned
    swamped = {"loadavg": [10.0, 1.0, 1.0], "cpus": 2}  # 5 per CPU > 4: refused
    assert check_load(quiet) is None
    assert "1.50 per CPU" in check_load(busy)
    with pytest.raises(LoadError, match="1-minute load average 10.00 on 2 CPUs .5.00 per CPU. exceeds --max-load 4"):
        check_load(swamped)
    assert check_load(swamped, max_load=0).startswith("warning")  # 0: never refuse
    # floor: median |x - median| / median: [1, 2, 3] -> deviations 1, 0, 1 -> 1 / 2 = 50 %
    assert floor_pct([1.0, 2.0, 3.0]) == pytest.approx(50.0) and floor_pct([4.0]) == 0.0


def test_load_between_reads_steal():
    from profiler.measure import load_between

    a = {"loadavg": [1.0, 0, 0], "cpus": 2, "time_s": 0.0, "stat": [100, 0, 50, 800, 0, 0, 0, 50]}
    b = {"loadavg": [2.0, 0, 0], "cpus": 2, "time_s": 1.0, "stat": [200, 0, 100, 900, 0, 0, 0, 100]}
    # deltas: user 100, system 50, idle 100, steal 50: total 300, busy (300 - 100) / 300, steal 50 / 300
    d = load_between(a, b)
    assert d["busy_share"] == pytest.approx(2 / 3) and d["steal_share"] == pytest.approx(1 / 6)


def test_validate_timing_refuses_on_a_loaded_machine(monkeypatch):
    pytest.importorskip("torch")
    import profiler.measure as m

    monkeypatch.setattr(m, "load_snapshot", lambda: {"loadavg": [20.0, 20.0, 20.0], "cpus": 2, "stat": None,
                                                     "time_s": 0.0})
    r = CliRunner().invoke(main, ["validate", "--timing", "--gpu", "cpu-generic"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("Error: machine too loaded to time: 1-minute load average 20.00 on 2 CPUs")
    r = CliRunner().invoke(main, ["calibrate", "--quick", "--dtype", "fp32", "--max-load", "8"])
    assert r.exit_code == 2 and "exceeds --max-load 8 per CPU" in r.output


# --- the commands, with tiny grids ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("optable") / "cpu.json"
    r = CliRunner().invoke(main, ["calibrate", "--quick", "--dtype", "fp32", "--model", "tiny-llama", "--max-load", "0",
                                  "--out", str(path)])
    assert r.exit_code == 0, r.output
    return path


def test_calibrate_model_stores_a_valid_table(tiny_profile):
    from profiler import calibrate as cal
    from profiler.optable import QUICK_DECODE_BATCHES, QUICK_DECODE_CONTEXTS, QUICK_PREFILL_TOKENS

    (hw,) = load_hardware_file(str(tiny_profile))
    spec = get_model("tiny-llama")
    tab = table_for(hw, spec)
    assert tab is not None and tab.clock == "thread" and tab.threads == 1
    assert tab.prefill_tokens == QUICK_PREFILL_TOKENS
    assert (tab.decode_batches, tab.decode_contexts) == (QUICK_DECODE_BATCHES, QUICK_DECODE_CONTEXTS)
    # the rows' part at the quick rest batches the grid lacks (2), at the grid's first context
    assert [(b, c) for b, c, _, _ in tab.decode_rest] == [(2, QUICK_DECODE_CONTEXTS[0])]
    raw = json.loads(tiny_profile.read_text())["calibration"]["op_tables"][0]
    assert raw["load"]["cpus"] >= 1 and raw["seconds_taken"] > 0
    assert "mmap_threshold_bytes" in raw and tab.dims is not None  # 32 MiB on glibc, else null
    assert all(p["total_s"] > 0 and p["attention_s"] > 0 for p in raw["prefill"] + raw["decode"])
    curves = json.loads(tiny_profile.read_text())["calibration"]["curves"]
    assert {r["rows"] for r in curves["matmul_rows"]} == set(cal.QUICK_CURVE_ROWS)
    assert curves["kernel_in_pass"]["seconds_per_op"] > 0
    assert [r["tokens"] for r in curves["score_chain"]] == list(cal.QUICK_CURVE_SCORE_CHAIN)
    assert [(r["batch"], r["keys"]) for r in curves["kv_repeat"]] == list(cal.QUICK_CURVE_KV_REPEAT)
    assert "mmap_threshold_bytes" in curves  # 32 MiB on glibc, else null


def test_validate_timing_with_a_table(tiny_profile):
    args = ["validate", "--timing", "--quick", "--hardware", str(tiny_profile), "--model", "tiny-llama",
            "--max-load", "0", "--repeat", "2"]
    r = CliRunner().invoke(main, args + ["--max-error", "1e9", "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["model"]["name"] == "tiny-llama" and d["summary"]["predictor"] == "op table"
    assert d["measurement"]["clock"] == "thread" and d["measurement"]["threads"] == 1
    for c in d["cases"]:
        assert not c["grid_point"] and c["table_s"] == c["predicted_s"] and c["roofline_s"] > 0
        assert c["runs"] == 2 and c["floor_pct"] >= 0 and c["curves_s"] > 0  # the quick profile has curves
    s = d["summary"]
    assert set(s) >= {"median_abs_error_pct", "p90_abs_error_pct", "floor_median_pct", "floor_p90_pct",
                      "roofline_median_abs_error_pct", "curves_median_abs_error_pct", "table_drift_pct", "ok"}
    # the drift: two grid points re-timed before and after the cases, each against its table entry
    for run in d["measurement"]["table_drift"]:
        for p in run["points"]:
            assert p["drift_pct"] == pytest.approx((p["now_s"] - p["table_s"]) / p["table_s"] * 100)
    # --max-error 0: any error fails, exit 1, the table says so
    r = CliRunner().invoke(main, args + ["--max-error", "0"])
    assert r.exit_code == 1 and "FAIL: median |error|" in r.output and "roofline alone" in r.output
    assert "calibration-to-validation drift" in r.output


def test_calibrate_unknown_model_is_exit_2():
    r = CliRunner().invoke(main, ["calibrate", "--model", "no-such-model"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "unknown model 'no-such-model'" in r.output



# --- generic curves (costmodel.curves) ------------------------------------------------------------

def _curves_calibration():
    return {"curves": {
        "matmul_rows": [{"rows": 1, "weight_bytes": 4096, "flops_per_s": 1e9},
                        {"rows": 4, "weight_bytes": 4096, "flops_per_s": 4e9}],
        "elementwise_bytes": [{"bytes": 100, "seconds": 1e-6}, {"bytes": 10000, "seconds": 1e-4}],
        "attention_slice": [{"bytes": 100, "seconds": 2e-6}, {"bytes": 10000, "seconds": 2e-4}],
        "kernel_in_pass": {"seconds_per_op": 1e-6}}}


def test_curves_price_each_op():
    from costmodel.analysis import OpCost
    from costmodel.curves import op_seconds, parse_curves

    c = parse_curves(_curves_calibration(), "t")
    # a weight matmul: 4096 bytes of fp32 = 1024 elements, 4096 FLOPs -> 4096 / (2 x 1024) = 2 rows;
    # rate between (1, 1 GFLOP/s) and (4, 4 GFLOP/s), slope 1: 2 GFLOP/s -> 2.048 us, + 1 us per op
    mm = OpCost("q_proj", "matmul", flops=4096, matmul_flops=4096, weight_bytes=4096)
    assert op_seconds(mm, c, peak=1e12, ew_peak=1e12, weight_bits=32) == pytest.approx(2.048e-6 + 1e-6)
    # rows beyond the grid: the rate is held at the last point's (16 rows: 4 GFLOP/s)
    big = OpCost("q_proj", "matmul", flops=2 * 16 * 1024, matmul_flops=2 * 16 * 1024, weight_bytes=4096)
    assert op_seconds(big, c, 1e12, 1e12, 32) == pytest.approx(2 * 16 * 1024 / 4e9 + 1e-6)
    # element-wise, 1000 bytes: between (100, 1 us) and (10^4, 100 us), slope 1: 10 us (> 10 FLOP / 1 GFLOP/s)
    ew = OpCost("softmax", "elementwise", flops=10, act_read_bytes=500, act_write_bytes=500)
    assert op_seconds(ew, c, 1e12, 1e9, 32) == pytest.approx(1e-5 + 1e-6)
    # a matmul without weights (attention scores): the strided-slice curve at 1000 bytes, 20 us
    sc = OpCost("attn_scores", "matmul", flops=100, matmul_flops=100, kv_read_bytes=1000)
    assert op_seconds(sc, c, 1e12, 1e12, 32) == pytest.approx(2e-5 + 1e-6)


def test_the_weight_rate_follows_the_pass_weight_bytes():
    from costmodel.curves import parse_curves

    cal = _curves_calibration()
    # one matrix size (4096 B) over two pools: 1 and 4 GFLOP/s at 1 and 4 rows over 1 MiB of
    # weights, 4 and 16 over 64 KiB (warmer: a pass reading fewer weights finds them in cache)
    cold = [{**r, "pool_bytes": 2**20} for r in cal["curves"]["matmul_rows"]]
    warm = [{"rows": 1, "weight_bytes": 4096, "pool_bytes": 2**16, "flops_per_s": 4e9},
            {"rows": 4, "weight_bytes": 4096, "pool_bytes": 2**16, "flops_per_s": 16e9}]
    c = parse_curves({"curves": {**cal["curves"], "matmul_rows": cold + warm}}, "t")
    assert c.matmul_rate(1, 4096) == pytest.approx(1e9)  # no pass weight bytes: the coldest pool
    assert c.matmul_rate(1, 4096, 2**20) == pytest.approx(1e9) and c.matmul_rate(4, 4096, 2**16) == pytest.approx(16e9)
    # 256 KiB, halfway between the pools in log: at 2 rows 2 and 8 GFLOP/s, so sqrt(2 x 8) = 4
    assert c.matmul_rate(2, 4096, 2**18) == pytest.approx(4e9)
    # held within the pools measured: 16 KiB is the warm pool's, 16 MiB the cold one's
    assert c.matmul_rate(1, 4096, 2**14) == pytest.approx(4e9) and c.matmul_rate(1, 4096, 2**24) == pytest.approx(1e9)
    # a profile from before the pools (no pool_bytes): one pool, whatever the pass
    old = parse_curves(cal, "t")
    assert old.matmul_rate(1, 4096, 2**14) == old.matmul_rate(1, 4096) == pytest.approx(1e9)
    # a pass is priced at its own weight bytes, by the roofline and by curve_pass_seconds alike
    from costmodel.analysis import step_cost
    from costmodel.curves import curve_pass_seconds, op_seconds
    from costmodel.roofline import rates, step_time
    from costmodel.spec import Workload

    hw = hardware_from_dict({**_profile([]), "calibration": {"curves": {**cal["curves"], "matmul_rows": cold + warm}}})
    spec, wl = get_model("tiny-llama"), Workload(batch=2, prompt=8, gen=2, weight_dtype="fp32", act_dtype="fp32")
    cost = step_cost(spec, wl, 2, 1, 9, 1)
    pool = cost.total("weight_bytes")
    assert 2**16 < pool < 2**20  # between the pools: warmer than the cold one
    by_op = sum(n * op_seconds(o, c, 1e11, 1e11, 32, pool) for n, o in cost.weighted())
    assert step_time(cost, rates(hw, "fp32")).seconds == pytest.approx(by_op, rel=1e-12)
    assert curve_pass_seconds(spec, wl, hw, 2, 1, 9) == pytest.approx(by_op, rel=1e-12)
    assert by_op < sum(n * op_seconds(o, c, 1e11, 1e11, 32) for n, o in cost.weighted())
    # simulate fits its per-op rates once, at a pass's weight bytes too: warmer than the cold pool alone
    from costmodel.simulate import IterationCost

    cold_hw = hardware_from_dict({**_profile([]), "calibration": {"curves": {**cal["curves"], "matmul_rows": cold}}})
    warm_s = IterationCost.from_model(spec, wl, hw).seconds([], [8, 8])
    assert 0 < warm_s < IterationCost.from_model(spec, wl, cold_hw).seconds([], [8, 8])
    for rows, message in ((cold + [{**warm[0], "pool_bytes": None}], "every row or none has pool_bytes"),
                          ([{**cold[0], "pool_bytes": -1}], "pool_bytes must be a number > 0, got -1")):
        with pytest.raises(SpecError, match=message):
            parse_curves({"curves": {**cal["curves"], "matmul_rows": rows}}, "t")


def test_the_softmax_is_priced_on_the_score_chain():
    from costmodel.analysis import OpCost, step_cost
    from costmodel.curves import op_seconds, parse_curves
    from costmodel.roofline import rates, step_time
    from costmodel.spec import Workload

    cal = _curves_calibration()["curves"]
    # scale + mask + softmax: 10 us over 1,000 B of scores, 3 ms over 100,000 B (slope log 300 / log 100)
    chain = [{"score_bytes": 1000, "seconds": 1e-5}, {"score_bytes": 100000, "seconds": 3e-3}]
    split = parse_curves({"curves": {**cal, "score_chain": chain, "mmap_threshold_bytes": 50000}}, "t")
    whole = parse_curves({"curves": {**cal, "score_chain": chain}}, "t")
    old = parse_curves({"curves": cal}, "t")
    sm = OpCost("attn_softmax", "elementwise", flops=10, act_read_bytes=2000, act_write_bytes=2000)
    # it reads 2,000 B of scores: below the 50,000 B threshold, the 1,000 B point alone, in
    # proportion: 10 us x 2 = 20 us; as one regime 10 us x 2^(log 300 / log 100) = 23.6 us; + 1 us per op
    assert op_seconds(sm, split, 1e12, 1e9, 32) == pytest.approx(2e-5 + 1e-6)
    assert op_seconds(sm, whole, 1e12, 1e9, 32) == pytest.approx(1e-5 * 2 ** (math.log(300) / math.log(100)) + 1e-6)
    big = OpCost("attn_softmax", "elementwise", flops=10, act_read_bytes=60000, act_write_bytes=60000)
    assert op_seconds(big, split, 1e12, 1e9, 32) == pytest.approx(3e-3 * 0.6 + 1e-6)  # above: the 100,000 B point
    # a profile from before the chain, and any other element-wise op: the element-wise curve
    # (4,000 B between (100, 1 us) and (10^4, 100 us), slope 1: 40 us)
    act = OpCost("mlp_act", "elementwise", flops=10, act_read_bytes=2000, act_write_bytes=2000)
    assert op_seconds(sm, old, 1e12, 1e9, 32) == op_seconds(act, split, 1e12, 1e9, 32) == pytest.approx(4e-5 + 1e-6)
    # the roofline on curves prices it the same way, op by op
    hw = hardware_from_dict({**_profile([]), "calibration": {"curves": {**cal, "score_chain": chain,
                                                                         "mmap_threshold_bytes": 50000}}})
    spec, wl = get_model("tiny-llama"), Workload(batch=2, prompt=40, gen=2, weight_dtype="fp32", act_dtype="fp32")
    cost = step_cost(spec, wl, 2, 40, 40, 1)
    t = step_time(cost, rates(hw, "fp32"))
    pool = cost.total("weight_bytes")
    assert t.seconds == pytest.approx(sum(n * op_seconds(o, split, 1e11, 1e11, 32, pool) for n, o in cost.weighted()),
                                      rel=1e-12)
    softmax = next(o for o in cost.groups[0][1] if o.op == "attn_softmax")
    chain_s = split.score_chain_seconds(softmax.bytes / 2)
    assert op_seconds(softmax, split, 1e11, 1e11, 32) == pytest.approx(chain_s + 1e-6)
    for changes, message in (({"score_chain": [{"score_bytes": 10, "seconds": 0}]},
                              r"score_chain\[0\]: seconds must be a number > 0"),
                             ({"mmap_threshold_bytes": "32M"},
                              "mmap_threshold_bytes must be a whole number >= 1 or null")):
        with pytest.raises(SpecError, match=message):
            parse_curves({"curves": {**cal, **changes}}, "t")


def test_gqa_scores_and_values_are_priced_with_the_eager_repeat():
    """GQA's score and value matmuls on the curves: the eager reference repeats the cache slice
    for each query head (kv_repeat curve) and the matmul reads the repeated tensor."""
    from dataclasses import replace

    from costmodel.analysis import OpCost, step_cost
    from costmodel.curves import curve_pass_seconds, op_seconds, parse_curves
    from costmodel.roofline import decode_step_seconds, predict, rates, step_time
    from costmodel.spec import Workload

    cal = _curves_calibration()["curves"]
    rep = [{"out_bytes": 100, "seconds": 1e-6}, {"out_bytes": 10000, "seconds": 1e-4}]  # slope 1: 10 ns/B
    c = parse_curves({"curves": {**cal, "kv_repeat": rep}}, "t")
    old = parse_curves({"curves": cal}, "t")
    sc = OpCost("attn_scores", "matmul", flops=100, matmul_flops=100, act_read_bytes=200, act_write_bytes=300,
                kv_read_bytes=1000, kv_repeat=4)
    # repeated: 4 x 1,000 B = 4,000 B written (40 us); the matmul reads it in place of the cache:
    # 200 + 300 + 4,000 = 4,500 B on the slice curve (slope 1, 20 ns/B): 90 us; + 1 us per op
    assert op_seconds(sc, c, 1e12, 1e12, 32) == pytest.approx(4e-5 + 9e-5 + 1e-6)
    # a profile from before the repeat, or MHA (kv_repeat 1): 1,500 B on the slice curve, 30 us
    assert op_seconds(sc, old, 1e12, 1e12, 32) == pytest.approx(3e-5 + 1e-6)
    assert op_seconds(replace(sc, kv_repeat=1), c, 1e12, 1e12, 32) == pytest.approx(3e-5 + 1e-6)
    # past the mmap threshold (5,000 B) the repeat is priced on the points past it alone
    split = parse_curves({"curves": {**cal, "kv_repeat": rep, "mmap_threshold_bytes": 5000}}, "t")
    assert split.kv_repeat_seconds(4000) == pytest.approx(4e-5)  # the 100 B point alone, in proportion
    assert split.kv_repeat_seconds(8000) == pytest.approx(8e-5)  # the 10,000 B point alone
    # the analytic ops carry the group: tiny-llama has 4 query heads over 2 kv heads
    spec, wl = get_model("tiny-llama"), Workload(batch=2, prompt=40, gen=6, weight_dtype="fp32", act_dtype="fp32")
    assert (spec.num_heads, spec.num_kv_heads) == (4, 2)
    ops = {o.op: o for o in step_cost(spec, wl, 2, 1, 41, 1).groups[0][1]}
    assert ops["attn_scores"].kv_repeat == ops["attn_values"].kv_repeat == 2 and ops["q_proj"].kv_repeat == 1
    assert ops["attn_scores"].with_costs(ops["attn_scores"].costs()).kv_repeat == 2
    mha = {o.op: o for o in step_cost(replace(spec, num_kv_heads=4), wl, 2, 1, 41, 1).groups[0][1]}
    assert mha["attn_scores"].kv_repeat == 1
    # the roofline on such a profile: a pass op by op, and the decode sum step by step
    hw = hardware_from_dict({**_profile([]), "calibration": {"curves": {**cal, "kv_repeat": rep}}}, "t")
    r = rates(hw, "fp32")
    for q, kv in ((40, 40), (1, 41)):
        cost = step_cost(spec, wl, 2, q, kv, 1)
        by_op = sum(n * op_seconds(o, c, 1e11, 1e11, 32) for n, o in cost.weighted())
        assert step_time(cost, r).seconds == pytest.approx(by_op, rel=1e-12)
        assert curve_pass_seconds(spec, wl, hw, 2, q, kv) == pytest.approx(by_op, rel=1e-12)
        before = hardware_from_dict({**_profile([]), "calibration": {"curves": cal}}, "t")
        assert curve_pass_seconds(spec, wl, hw, 2, q, kv) > curve_pass_seconds(spec, wl, before, 2, q, kv)
    for sp in (spec, replace(spec, sliding_window=43)):
        total = sum(decode_step_seconds(sp, wl, hw, i) for i in range(1, 6))
        assert predict(sp, wl, hw).decode.seconds == pytest.approx(total, rel=1e-12)
    with pytest.raises(SpecError, match=r"kv_repeat\[0\]: out_bytes must be a number > 0, got 0"):
        parse_curves({"curves": {**cal, "kv_repeat": [{"out_bytes": 0, "seconds": 1.0}]}}, "t")


def _curves_hw():
    return hardware_from_dict({**_profile([]), "calibration": _curves_calibration()}, "t")


def test_the_roofline_prices_each_op_on_the_curves():
    """Issue 14 item 2: where the profile has curves, the flat model's rates are the curves: a pass
    is the sum of op_seconds over its ops, the per-op cost replaces op_overhead_s, and the decode
    phase is every step on the curves (their bytes rates change with the context)."""
    from dataclasses import replace

    from costmodel.analysis import step_cost
    from costmodel.curves import curve_pass_seconds, op_seconds, parse_curves
    from costmodel.roofline import decode_step_seconds, predict, rates, step_time
    from costmodel.spec import Workload

    hw, spec = _curves_hw(), get_model("tiny-llama")
    c = parse_curves(hw.calibration, "t")
    wl = Workload(batch=2, prompt=40, gen=6, weight_dtype="fp32", act_dtype="fp32")
    r = rates(hw, "fp32")
    assert r.curves == c and r.op_overhead_s == 1e-6
    for q, kv in ((40, 40), (1, 41), (1, 45)):
        cost = step_cost(spec, wl, 2, q, kv, 1)
        by_op = sum(n * op_seconds(o, c, 1e11, 1e11, 32) for n, o in cost.weighted())
        assert step_time(cost, r).seconds == pytest.approx(by_op, rel=1e-12)
        assert curve_pass_seconds(spec, wl, hw, 2, q, kv) == pytest.approx(by_op, rel=1e-12)
    t = predict(spec, wl, hw)
    # decode steps 1..5 attend over 41..45 keys, each priced on the curves
    steps = [decode_step_seconds(spec, wl, hw, i) for i in range(1, 6)]
    assert steps[0] == pytest.approx(step_time(step_cost(spec, wl, 2, 1, 41, 1), r).seconds, rel=1e-12)
    assert t.decode.seconds == pytest.approx(sum(steps), rel=1e-12) and t.decode.steps == 5
    assert t.ttft_s == pytest.approx(curve_pass_seconds(spec, wl, hw, 2, 40, 40), rel=1e-12)
    # a sliding window filling at step 4 (40 + 4 keys > 43) and a decode without a KV cache (the
    # weight matmuls' rows grow with the step): the closed form's split and rows, step by step
    for sp, w in ((replace(spec, sliding_window=43), wl), (spec, replace(wl, kv_cache=False))):
        total = sum(decode_step_seconds(sp, w, hw, i) for i in range(1, 6))
        assert predict(sp, w, hw).decode.seconds == pytest.approx(total, rel=1e-12)
    # a 2-row weight matmul is memory-bound under the flat rates: its curve time on that side
    mm = next(o for o in step_cost(spec, wl, 2, 1, 41, 1).groups[0][1] if o.op == "q_proj")
    F, B, _ = r.op_rates(mm)
    assert F == float("inf") and mm.bytes / B == pytest.approx(op_seconds(mm, c, 1e11, 1e11, 32) - 1e-6, rel=1e-12)


def test_curves_only_where_they_were_measured():
    """The curves are fp32 without quantisation, under the flat model; curves=False is the flat
    roofline (validate --timing's "roofline" column)."""
    from costmodel.curves import curve_pass_seconds
    from costmodel.roofline import rates
    from costmodel.spec import Workload

    hw = _curves_hw()
    assert rates(hw, "fp32", curves=False).curves is None and rates(hw, "fp32", curves=False).op_overhead_s == 0
    assert rates(hw, "fp32", model="shape-aware").curves is None
    assert rates(hardware_from_dict(_profile([]), "t"), "fp32").curves is None
    wl = Workload(batch=1, prompt=8, gen=1, weight_dtype="fp32", act_dtype="fp32", quant="int8-channel")
    assert rates(hw, "fp32", "int8-channel").curves is None
    assert curve_pass_seconds(get_model("tiny-llama"), wl, hardware_from_dict(_profile([]), "t"), 1, 8, 8) is None


def test_bad_curves_are_one_line(tmp_path):
    cal = _curves_calibration()
    cal["curves"]["elementwise_bytes"] = [{"bytes": -1, "seconds": 1.0}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**_profile([]), "calibration": cal}))
    r = CliRunner().invoke(main, ["report", "tiny-llama", "--hardware", str(path)])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "calibration.curves.elementwise_bytes[0]: bytes must be a number > 0, got -1" in r.output


def test_report_shows_the_table_beside_the_roofline(tmp_path):
    spec = get_model("tiny-llama")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_profile([_table(model=spec.name, spec_key=spec_key(spec))])))
    r = CliRunner().invoke(main, ["report", "tiny-llama", "-b", "1", "-s", "16", "-n", "3", "--dtype", "fp32",
                                  "--hardware", str(path), "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    t = d["timing"]
    # TTFT: the prefill grid point 16 tokens, 10 ms; decode steps 1, 2 attend over 17, 18 keys:
    # rest 1 ms each (batch 1) + attention 0.1 ms x keys (1.7, 1.8 ms): 5.5 ms, mean 2.75 ms
    assert t["op_table"]["ttft_s"] == pytest.approx(0.010)
    assert t["op_table"]["decode_s"] == pytest.approx(0.0055) and t["op_table"]["tpot_mean_s"] == pytest.approx(0.00275)
    assert d["ttft_s"] > 0 and d["ttft_s"] != t["op_table"]["ttft_s"]  # the roofline's own, kept
    r = CliRunner().invoke(main, ["report", "tiny-llama", "-b", "1", "-s", "16", "-n", "3", "--dtype", "fp32",
                                  "--hardware", str(path)])
    assert r.exit_code == 0 and "op table of tiny-llama (cpu, thread clock): TTFT 10.000 ms" in r.output
