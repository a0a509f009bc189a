"""Roofline latency: per-op time, exact decode sums, TTFT/TPOT, and `report --gpu`."""

import csv
import io
import json

import pytest
from click.testing import CliRunner

from costmodel import Workload, analyze, get_model
from costmodel.analysis import OpCost, decode_step_cost, prefill_cost, weight_bytes
from reports.cli import main
from costmodel.errors import SpecError
from costmodel.hardware import Hardware, get_hardware
from costmodel.roofline import (Rates, decode_seconds, decode_step_curve, decode_step_seconds, op_time,
                                pass_seconds, predict, prefill_seconds, rates, summed_op_time)

# A round-number device: 1 TFLOP/s bf16, 100 GB/s, efficiencies 1.
TOY = Hardware(id="toy", name="toy", peak_flops_per_s={"bf16": 1e12, "fp32": 0.5e12},
               memory_bytes=10**10, memory_bandwidth_bytes_per_s=1e11,
               flops_efficiency=1.0, bandwidth_efficiency=1.0)


def test_op_time_is_the_max_of_compute_and_memory():
    r = Rates(1e12, 1e11)
    # compute 2e9 / 1e12 = 2 ms; memory 1e8 / 1e11 = 1 ms -> 2 ms, compute-bound; intensity 2e9/1e8 = 20
    t = op_time(OpCost("x", "matmul", flops=2 * 10**9, matmul_flops=2 * 10**9, weight_bytes=10**8), r)
    assert (t.compute_s, t.memory_s, t.seconds, t.bound) == (2e-3, 1e-3, 2e-3, "compute")
    assert t.arithmetic_intensity == 20.0
    # memory 3e8 / 1e11 = 3 ms > compute 1 ms -> memory-bound; + 5 us overhead
    t = op_time(OpCost("y", "elementwise", flops=10**9, act_read_bytes=3 * 10**8), Rates(1e12, 1e11, 5e-6))
    assert (t.seconds, t.bound, t.overhead_s) == (3e-3 + 5e-6, "memory", 5e-6)


def _three(flops, nbytes):
    """OpCosts at steps 1, 2, 3 from polynomials of the step."""
    return [OpCost("op", "matmul", flops(i), flops(i), act_read_bytes=nbytes(i)) for i in (1, 2, 3)]


@pytest.mark.parametrize("flops, nbytes, steps, seconds, compute_steps", [
    # max(10 i, 60), i = 1..10: 60 * 6 (i <= 6; i = 6 a tie) + 10 * (7 + 8 + 9 + 10) = 360 + 340 = 700
    (lambda i: 10 * i, lambda i: 60, 10, 700, 4),
    # max(i^2, 5 i + 6): i^2 > 5i + 6 for i >= 7; sum_{1..6} (5i + 6) + sum_{7..10} i^2 = 141 + 294 = 435
    (lambda i: i * i, lambda i: 5 * i + 6, 10, 435, 4),
    # max((i - 5)^2 + 1, 5): f = 17 10 5 2 1 2 5 10 17 26 -> 17+10+5+5+5+5+5+10+17+26 = 105;
    # compute wins at i = 1, 2, 8, 9, 10 (the sign changes twice: both sides of the vertex)
    (lambda i: (i - 5) ** 2 + 1, lambda i: 5, 10, 105, 5),
    # always memory: sum_{1..4} (100 + i) = 410
    (lambda i: i, lambda i: 100 + i, 4, 410, 0),
])
def test_decode_sum_of_max_is_exact_with_crossings(flops, nbytes, steps, seconds, compute_steps):
    t = summed_op_time(*_three(flops, nbytes), steps, Rates(1.0, 1.0))
    assert t.seconds == seconds
    assert t.compute_bound_steps == compute_steps
    assert t.flops == sum(flops(i) for i in range(1, steps + 1))
    assert t.bound == ("memory" if compute_steps == 0 else "mixed")


def test_decode_step_at_batch_1_is_at_least_weights_over_bandwidth():
    spec, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    wl = Workload(batch=1, prompt=512, gen=128)
    # 6,738,415,616 parameters x 2 bytes = 13,476,831,232 bytes / 3.35e12 B/s = 4.0229 ms
    assert weight_bytes(spec, "bf16") == 13_476_831_232
    floor = 13_476_831_232 / 3.35e12
    step = decode_step_seconds(spec, wl, hw, 1)
    assert step >= floor
    # At batch 1 every op is memory-bound (intensity <= ~1 FLOP/B, the ridge is 692.65e12 / 2.68e12
    # = 258 FLOP/B), so the step is exactly its bytes over the achievable bandwidth 0.8 * 3.35e12.
    s1 = decode_step_cost(spec, wl, 1)
    nbytes = sum(s1.total(f) for f in ("weight_bytes", "act_read_bytes", "act_write_bytes",
                                        "kv_read_bytes", "kv_write_bytes"))
    assert step == pytest.approx(nbytes / (0.8 * 3.35e12), rel=1e-12)
    assert predict(spec, wl, hw).decode.bound_seconds()["compute"] == 0


def test_prefill_is_at_least_flops_over_peak():
    spec, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    wl = Workload(batch=8, prompt=2048, gen=2)
    flops = prefill_cost(spec, wl).total("flops")
    assert prefill_seconds(spec, wl, hw) >= flops / 989.5e12
    assert prefill_seconds(spec, wl, hw) >= flops / (0.7 * 989.5e12)  # achievable, the default efficiency


@pytest.mark.parametrize("kw", [
    dict(batch=2, prompt=8, gen=40),
    dict(batch=2, prompt=8, gen=40, kv_cache=False),
    dict(batch=3, prompt=5, gen=17, causal=True, beams=2),
    dict(batch=1, prompt=1, gen=30, kv_cache=False, logits="all"),
])
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_decode_total_equals_the_step_by_step_loop(model, kw):
    spec, wl = get_model(model), Workload(**kw)
    hw = Hardware(id="slow", name="slow", peak_flops_per_s={"bf16": 3e9}, memory_bytes=10**9,
                  memory_bandwidth_bytes_per_s=7e9, op_overhead_s=2e-6)  # ridge ~0.43 FLOP/B: mixed bounds
    loop = [decode_step_seconds(spec, wl, hw, i) for i in range(1, wl.gen)]
    assert decode_seconds(spec, wl, hw) == pytest.approx(sum(loop), rel=1e-12)
    assert decode_step_curve(spec, wl, hw) == pytest.approx(loop, rel=1e-12)
    t = predict(spec, wl, hw)
    assert t.decode.seconds == pytest.approx(sum(loop), rel=1e-12)
    assert (t.tpot_first_s, t.tpot_last_s) == (loop[0], loop[-1])
    assert t.tpot_mean_s == pytest.approx(sum(loop) / (wl.gen - 1), rel=1e-12)
    # per-op rows sum to the phase, FLOPs and bytes as the analysis counts them
    a = analyze(spec, wl)
    assert sum(o.seconds for _, o in t.decode.rows()) == pytest.approx(t.decode.seconds, rel=1e-12)
    assert sum(o.flops for _, o in t.decode.rows()) == a.decode.flops
    assert sum(o.bytes for _, o in t.decode.rows()) == a.decode.bytes


def test_moe_without_cache_sums_early_steps_one_by_one():
    spec, hw = get_model("qwen1.5-moe-a2.7b"), get_hardware("h100-sxm")
    wl = Workload(batch=1, prompt=1, gen=30, kv_cache=False)
    loop = sum(decode_step_seconds(spec, wl, hw, i) for i in range(1, wl.gen))
    assert decode_seconds(spec, wl, hw) == pytest.approx(loop, rel=1e-12)
    assert sum(decode_step_curve(spec, wl, hw)) == pytest.approx(loop, rel=1e-12)


def test_toy_prefill_by_hand():
    # tiny-llama prefill, batch 1, prompt 4 on TOY with no overhead: each op max(F / 1e12, B / 1e11).
    spec, wl = get_model("tiny-llama"), Workload(batch=1, prompt=4, gen=1)
    cost = prefill_cost(spec, wl)
    expected = sum(max(o.flops / 1e12, o.bytes / 1e11) for _, o in cost.rows())
    t = predict(spec, wl, TOY)
    assert t.ttft_s == pytest.approx(expected, rel=1e-12)
    assert t.tpot() == {"first": None, "mean": None, "last": None} and t.decode.seconds == 0
    assert t.tokens_per_s == 1 / t.ttft_s  # batch 1 x gen 1 tokens over the prefill
    assert pass_seconds(spec, wl, TOY, 1, 4, 4) == t.ttft_s


def test_overhead_adds_once_per_op_per_step():
    spec, wl = get_model("tiny-llama"), Workload(batch=1, prompt=4, gen=6)
    with_overhead = Hardware(**{**TOY.to_dict(), "id": "toy-slow", "op_overhead_s": 1e-5})
    a, b = predict(spec, wl, TOY), predict(spec, wl, with_overhead)
    ops = a.prefill.num_ops  # embedding + 2 layers x layer ops + final norm, LM head, sampling
    assert ops == len(prefill_cost(spec, wl).before) + 2 * len(prefill_cost(spec, wl).layer) + len(prefill_cost(spec, wl).after)
    assert b.ttft_s - a.ttft_s == pytest.approx(ops * 1e-5, rel=1e-9)
    assert b.decode.seconds - a.decode.seconds == pytest.approx(5 * ops * 1e-5, rel=1e-9)  # 5 steps


def test_weight_only_quantization_computes_at_the_activation_dtype():
    spec, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    t4 = predict(spec, Workload(weight_dtype="int4", act_dtype="bf16"), hw)
    t16 = predict(spec, Workload(), hw)
    assert t4.rates.flops_per_s == 0.7 * 989.5e12
    assert t4.tpot_first_s < t16.tpot_first_s  # fewer weight bytes per step


def test_phase_totals_and_throughput():
    spec, hw = get_model("llama-2-7b"), get_hardware("a100-sxm-80gb")
    wl = Workload(batch=4, prompt=256, gen=64)
    t = predict(spec, wl, hw)
    assert t.e2e_s == t.ttft_s + t.decode.seconds
    assert t.tokens_per_s == 4 * 64 / t.e2e_s
    assert t.decode_tokens_per_s == 4 / t.tpot_mean_s
    assert t.tpot_first_s < t.tpot_mean_s < t.tpot_last_s  # the context grows every step


def test_elementwise_ops_use_their_own_peak_when_the_profile_has_one():
    cpu = Hardware(**{**TOY.to_dict(), "id": "toy-cpu", "elementwise_flops_per_s": {"bf16": 1e9}})
    r = rates(cpu, "bf16")
    assert (r.flops_rate("matmul"), r.flops_rate("elementwise"), r.flops_rate("memory")) == (1e12, 1e9, 1e12)
    # softmax of 1e6 elements: 6e6 FLOP / 1e9 = 6 ms of compute > 4e6 bytes / 1e11 = 40 us
    soft = OpCost("attn_softmax", "elementwise", 6 * 10**6, 0, act_read_bytes=2 * 10**6, act_write_bytes=2 * 10**6)
    assert op_time(soft, r).seconds == 6e-3 and op_time(soft, r).bound == "compute"
    assert op_time(soft, rates(TOY, "bf16")).seconds == 4e-5  # the matmul peak: memory-bound
    spec, wl = get_model("tiny-llama"), Workload(batch=2, prompt=8, gen=12)
    loop = sum(decode_step_seconds(spec, wl, cpu, i) for i in range(1, wl.gen))
    assert decode_seconds(spec, wl, cpu) == pytest.approx(loop, rel=1e-12)
    assert sum(decode_step_curve(spec, wl, cpu)) == pytest.approx(loop, rel=1e-12)


def test_dtype_without_peak_is_refused():
    with pytest.raises(SpecError, match="toy has no fp8 peak"):
        predict(get_model("tiny-llama"), Workload(act_dtype="fp8"), TOY)


# --- report --gpu / --hardware ---------------------------------------------------------------------

ARGS = ["report", "tiny-llama", "-b", "2", "-s", "16", "-n", "8"]


def test_report_json_has_seconds_everywhere():
    r = CliRunner().invoke(main, ARGS + ["--gpu", "h100-sxm", "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    t = predict(get_model("tiny-llama"), Workload(batch=2, prompt=16, gen=8), get_hardware("h100-sxm"))
    assert d["ttft_s"] == t.ttft_s == d["prefill"]["seconds"]
    assert d["tpot_s"] == {"first": t.tpot_first_s, "mean": t.tpot_mean_s, "last": t.tpot_last_s}
    assert d["tokens_per_s"] == t.tokens_per_s and d["e2e_s"] == t.e2e_s
    assert d["decode"]["seconds"] == t.decode.seconds
    assert all("seconds" in row and row["bound"] in ("compute", "memory", "mixed") for row in d["ops"])
    for phase in ("prefill", "decode"):
        total = sum(row["seconds"] for row in d["ops"] if row["phase"] == phase)
        assert total == pytest.approx(d[phase]["seconds"], rel=1e-12)
    assert d["timing"]["hardware"] == "h100-sxm"
    assert d["timing"]["efficiency"] == {"flops": 0.7, "bandwidth": 0.8, "interconnect": 0.8, "source": "default"}


def test_report_without_gpu_has_no_timing():
    d = json.loads(CliRunner().invoke(main, ARGS + ["--format", "json"]).output)
    assert "ttft_s" not in d and "seconds" not in d["prefill"] and "seconds" not in d["ops"][0]


def test_report_csv_table_markdown_with_gpu():
    r = CliRunner().invoke(main, ARGS + ["--gpu", "l4", "--format", "csv"])
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert list(rows[0])[-2:] == ["seconds", "bound"] and float(rows[0]["seconds"]) > 0
    for fmt, marker in (("table", "latency on l4 (NVIDIA L4 24GB): TTFT "), ("markdown", "- latency on l4")):
        r = CliRunner().invoke(main, ARGS + ["--gpu", "l4", "--format", fmt])
        assert r.exit_code == 0 and marker in r.output
        assert "prefill time" in r.output and "TPOT first" in r.output and "tokens/s generated" in r.output


def test_report_with_hardware_file(tmp_path):
    p = tmp_path / "toy.json"
    p.write_text(json.dumps(TOY.to_dict()))
    r = CliRunner().invoke(main, ARGS + ["--hardware", str(p), "--format", "json"])
    assert r.exit_code == 0
    assert json.loads(r.output)["timing"]["efficiency"]["source"] == "profile"


@pytest.mark.parametrize("extra, message", [
    (["--gpu", "h100"], "Error: unknown GPU 'h100'; known: a100-sxm-40gb"),
    (["--gpu", "a100-sxm-80gb", "--dtype", "fp8"], "Error: a100-sxm-80gb has no fp8 peak FLOP/s"),
    (["--hardware", "/no/such.json"], "Error: cannot read hardware file '/no/such.json'"),
])
def test_report_gpu_bad_input(extra, message):
    r = CliRunner().invoke(main, ARGS + extra)
    assert r.exit_code == 2
    assert r.output.startswith(message) and r.output.count("\n") == 1


def test_encoder_models_add_an_encode_phase():
    hw = get_hardware("l4")
    wl = Workload(batch=2, prompt=32, gen=6)
    t5 = predict(get_model("tiny-t5"), wl, hw)
    assert list(t5.phases) == ["encode", "prefill", "decode"]
    assert t5.ttft_s == t5.encode.seconds + t5.prefill.seconds  # the source is encoded before the first token
    assert t5.e2e_s == t5.encode.seconds + t5.prefill.seconds + t5.decode.seconds
    bert = predict(get_model("tiny-bert"), wl, hw)
    assert list(bert.phases) == ["encode"]
    assert (bert.ttft_s, bert.tokens_per_s, bert.tpot_mean_s) == (None, None, None)
    assert bert.e2e_s == bert.encode.seconds > 0


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-t5"])
def test_report_gpu_for_encoder_models_in_every_format(model):
    args = ["report", model, "-s", "16", "-n", "4", "--gpu", "l4"]
    d = json.loads(CliRunner().invoke(main, args + ["--format", "json"]).stdout)  # a warning goes to stderr
    assert all("seconds" in d[p] for p in d["phases"]) and all("seconds" in row for row in d["ops"])
    assert d["encode_s"] == d["encode"]["seconds"]
    for fmt in ("table", "markdown", "csv"):
        r = CliRunner().invoke(main, args + ["--format", fmt])
        assert r.exit_code == 0 and ("encode time" in r.output or "seconds" in r.output)
