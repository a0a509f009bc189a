"""Capacity planning: memory fit by hand, max batch/context exact, TP/PP, SLOs, GPUs, cost, the `plan` CLI."""

import json
import math

import pytest
from click.testing import CliRunner

from costmodel import PRESETS, Workload, analyze, capacity_plan, get_model, predict
from reports.cli import main
from costmodel.errors import SpecError
from costmodel.hardware import Hardware, get_hardware
from costmodel.plan import (Layout, allreduce_seconds, layout_for_gpus, max_batch, max_context, memory_use,
                            parallel_timing, stage_weight_params)

# 1,000,000 bytes of memory: a 10 % reserve is 100,000 bytes.
MINI = Hardware(id="mini", name="mini", peak_flops_per_s={"bf16": 1e12}, memory_bytes=1_000_000,
                memory_bandwidth_bytes_per_s=1e11, interconnect_bandwidth_bytes_per_s=1e10,
                interconnect_gpus=8, pcie_bandwidth_bytes_per_s=1e9)
TINY = get_model("tiny-llama")  # 2 layers, hidden 64, 4 heads (2 kv, head_dim 16), MLP 160 gated, vocab 256


def test_memory_by_hand():
    # Parameters: a layer = q 64*64 + k, v 2*64*32 + o 64*64 + MLP 3*64*160 + 2 norms of 64
    #   = 12,288 + 30,720 + 128 = 43,136; model = 2 * 43,136 + embedding 256*64 + LM head 256*64
    #   + final norm 64 = 119,104 -> bf16 238,208 bytes.
    # KV: 2 (k, v) * 2 layers * 32 * 2 bytes = 256 bytes a position; prompt 8 + gen 9 - 1 = 16
    #   positions -> 4,096 bytes a sequence.
    # Activations: residual 8 * 64 * 2 = 1,024 + the largest op, mlp_mul reading 2 * 8 * 160 and
    #   writing 8 * 160 elements: 3,840 * 2 = 7,680 -> 8,704 bytes a sequence.
    m = memory_use(TINY, MINI, Workload(batch=3, prompt=8, gen=9))
    assert m.weights_bytes == 238_208
    assert m.kv_bytes == 3 * 4_096
    assert m.activations_bytes == 3 * 8_704
    assert m.reserve_bytes == 100_000
    assert m.total_bytes == 238_208 + 3 * 12_800 + 100_000
    assert m.fits and m.missing_bytes == 0


@pytest.mark.parametrize("model, kw", [
    ("llama-2-7b", dict(batch=4, prompt=512, gen=64)),
    ("tiny-gpt2", dict(batch=2, prompt=16, gen=4, kv_dtype="int4")),
    ("mixtral-8x7b", dict(batch=1, prompt=128, gen=8)),
])
def test_one_gpu_memory_matches_the_analysis(model, kw):
    spec, wl = get_model(model), Workload(**kw)
    a = analyze(spec, wl).memory
    m = memory_use(spec, get_hardware("h200"), wl, reserve_fraction=0.0)
    assert (m.weights_bytes, m.kv_bytes, m.activations_bytes) == (
        a.weights_bytes, a.kv_cache_bytes, a.activation_peak_bytes)


def test_max_batch_by_hand_and_no_room_for_one_more():
    # 238,208 + 12,800 B + 100,000 <= 1,000,000  <=>  B <= 661,792 / 12,800 = 51.7  ->  51
    wl = Workload(prompt=8, gen=9)
    assert max_batch(TINY, MINI, wl) == 51
    assert memory_use(TINY, MINI, Workload(batch=51, prompt=8, gen=9)).total_bytes == 991_008
    assert memory_use(TINY, MINI, Workload(batch=52, prompt=8, gen=9)).missing_bytes == 3_808


def test_max_context_by_hand():
    # Batch 1, prompt C, gen 1: KV 256 C + residual 128 C + the largest op, attention softmax for
    # C > 60: reads and writes 4 heads * C^2 scores, 16 C^2 bytes. 16 C^2 + 384 C <= 661,792
    # <=> C^2 + 24 C <= 41,362: C = 191 gives 41,065, C = 192 gives 41,472.
    assert max_context(TINY, MINI, Workload(batch=1)) == 191
    fits = [memory_use(TINY, MINI, Workload(batch=1, prompt=c, gen=1)).fits for c in (191, 192)]
    assert fits == [True, False]


def test_max_batch_on_a_real_gpu_leaves_no_room_for_one_more():
    spec, hw = get_model("llama-2-70b"), get_hardware("h100-sxm")
    wl = Workload(prompt=2048, gen=256)
    for layout in (Layout(4, 1), Layout(8, 1), Layout(2, 2)):
        b = max_batch(spec, hw, wl, layout)
        assert b > 0
        assert memory_use(spec, hw, Workload(batch=b, prompt=2048, gen=256), layout).fits
        assert not memory_use(spec, hw, Workload(batch=b + 1, prompt=2048, gen=256), layout).fits


def test_does_not_fit_is_an_answer():
    # llama-2-70b in bf16 is 68,976,648,192 * 2 = 137,953,296,384 bytes of weights: no single L4.
    # The plan budgets against the L4's reported 23,034 MiB = 23,034 * 2**20 = 24,152,899,584 bytes
    # (was the marketed 24e9); reserve round(0.1 * 24,152,899,584) = 2,415,289,958.
    p = capacity_plan(get_model("llama-2-70b"), get_hardware("l4"), prompt=512, gen=64, rps=1.0, engine="eager")
    assert not p.fits and p.max_batch == 0 and p.timing is None and p.gpus_needed is None
    assert p.memory.weights_bytes == 137_953_296_384
    assert (p.memory.capacity_bytes, p.memory.reserve_bytes) == (24_152_899_584, 2_415_289_958)
    assert p.memory.missing_bytes == p.memory.total_bytes - 24_152_899_584 > 137_953_296_384 - 24_152_899_584
    d = p.to_dict()
    assert (d["fits"], d["max_batch"], d["ttft_s"], d["gpus_needed"]) == (False, 0, None, None)
    assert d["missing_bytes"] == p.memory.missing_bytes
    assert any(n.startswith("does not fit: one sequence needs") for n in d["notes"])


def test_tensor_parallel_weights_by_hand():
    # tp 2: a layer's 43,136 - 128 (norms, replicated) = 43,008 split -> 21,504 + 128 = 21,632;
    # 2 layers 43,264 + embedding 16,384 / 2 + LM head 16,384 / 2 + final norm 64 = 59,712.
    assert stage_weight_params(TINY, Layout(2, 1), 0) == 59_712
    # and the KV cache halves: 128 bytes a position
    m1 = memory_use(TINY, MINI, Workload(batch=1, prompt=8, gen=9))
    m2 = memory_use(TINY, MINI, Workload(batch=1, prompt=8, gen=9), Layout(2, 1))
    assert (m2.weights_bytes, m2.kv_bytes) == (2 * 59_712, m1.kv_bytes // 2)


def test_pipeline_stages_by_hand():
    # pp 2: stage 0 = 1 layer 43,136 + embedding 16,384 = 59,520; stage 1 = 43,136 + final norm 64
    # + LM head 16,384 = 59,584 (the fuller one).
    assert [stage_weight_params(TINY, Layout(1, 2), s) for s in (0, 1)] == [59_520, 59_584]
    m = memory_use(TINY, MINI, Workload(batch=1, prompt=8, gen=9), Layout(1, 2))
    assert (m.stage, m.weights_bytes, m.kv_bytes) == (1, 2 * 59_584, 4_096 // 2)
    # a tied head on the last stage keeps its own copy of the embedding matrix
    qwen = get_model("tiny-qwen2")  # tied, layer 43,264
    assert [stage_weight_params(qwen, Layout(1, 2), s) for s in (0, 1)] == [59_648, 59_712]


DECODERS = sorted(n for n, s in PRESETS.items() if getattr(s, "arch", "decoder") == "decoder")


@pytest.mark.parametrize("name", DECODERS)
def test_stage_weights_of_one_gpu_hold_every_parameter(name):
    spec = PRESETS[name]
    assert stage_weight_params(spec, Layout(1, 1), 0) == spec.num_params


@pytest.mark.parametrize("name", sorted(set(PRESETS) - set(DECODERS)))
def test_parallel_plans_are_for_decoders_only(name):
    spec = PRESETS[name]
    with pytest.raises(SpecError, match=f"supports decoder-only models; {name} is arch"):
        capacity_plan(spec, get_hardware("h100-sxm"), prompt=16, gen=4, tp=2, engine="eager")
    p = capacity_plan(spec, get_hardware("h100-sxm"), prompt=16, gen=4, engine="eager")
    assert p.fits and p.memory.weights_bytes == 2 * spec.num_params


def test_ring_allreduce_by_hand():
    hw = get_hardware("h100-sxm")
    # 2 * 7/8 * 1e6 bytes / (450e9 * 0.8) + 2 * 7 * 1e-6 s = 4.8611e-6 + 1.4e-5 = 1.88611e-5 s
    assert allreduce_seconds(hw, 8, 1_000_000) == pytest.approx(1.75e6 / 3.6e11 + 1.4e-5, rel=1e-12)
    assert allreduce_seconds(hw, 1, 1_000_000) == 0.0
    # 16 GPUs leave the NVSwitch domain: PCIe 64e9 per direction
    assert allreduce_seconds(hw, 16, 1_000_000) == pytest.approx(2 * 15 / 16 * 1e6 / (64e9 * 0.8) + 30e-6)


def test_parallel_timing_one_gpu_is_the_roofline():
    spec, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    wl = Workload(batch=8, prompt=1024, gen=32)
    a, b = parallel_timing(spec, hw, wl), predict(spec, wl, hw)
    assert (a.ttft_s, a.tpot(), a.e2e_s) == (b.ttft_s, b.tpot(), b.e2e_s)


def test_tensor_parallel_time_adds_two_allreduces_per_layer():
    spec, hw = get_model("llama-2-70b"), get_hardware("h100-sxm")
    wl = Workload(batch=4, prompt=512, gen=16)
    t = parallel_timing(spec, hw, wl, Layout(4, 1))
    # prefill: 80 layers * 2 all-reduces of 4 * 512 tokens * 8192 * 2 bytes
    assert t.prefill.extra_s == pytest.approx(160 * allreduce_seconds(hw, 4, 4 * 512 * 8192 * 2), rel=1e-12)
    # decode: 15 steps of 4 tokens each
    assert t.decode.extra_s == pytest.approx(15 * 160 * allreduce_seconds(hw, 4, 4 * 8192 * 2), rel=1e-9)
    one = predict(spec, wl, hw)
    assert t.prefill.ops_seconds < one.ttft_s / 3  # compute splits 4 ways, the norms do not
    assert t.tpot_first_s < one.tpot_first_s


def test_pipeline_time_adds_hops_not_speed():
    spec, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    wl = Workload(batch=2, prompt=128, gen=8)
    one, two = parallel_timing(spec, hw, wl), parallel_timing(spec, hw, wl, Layout(1, 2))
    assert two.prefill.ops_seconds == one.prefill.ops_seconds
    # one hop of 2 * 128 tokens * 4096 * 2 bytes over NVLink 450e9 * 0.8, plus 1 us
    assert two.prefill.extra_s == pytest.approx(2 * 128 * 4096 * 2 / 3.6e11 + 1e-6, rel=1e-12)


def test_layout_for_gpus():
    spec = get_model("llama-2-70b")
    assert layout_for_gpus(spec, get_hardware("h100-sxm"), 8) == Layout(8, 1)
    assert layout_for_gpus(spec, get_hardware("h100-sxm"), 16) == Layout(8, 2)  # tp stays on NVLink
    assert layout_for_gpus(spec, get_hardware("h100-pcie"), 4) == Layout(2, 2)  # bridge joins pairs
    assert layout_for_gpus(spec, get_hardware("l4"), 2) == Layout(1, 2)  # no GPU-to-GPU fabric


@pytest.mark.parametrize("spec, hw, kw, message", [
    (TINY, MINI, dict(tp=4), r"tp=4 must divide num_heads \(4\) and num_kv_heads \(2\) of tiny-llama; allowed tp: 1, 2"),
    (TINY, MINI, dict(pp=3), "pp=3 exceeds the 2 layers of tiny-llama"),
    (TINY, MINI, dict(gpus=2, tp=2), "give gpus or tp/pp, not both"),
    (TINY, get_hardware("cpu-generic"), dict(tp=2), "cpu-generic has no interconnect or PCIe bandwidth"),
    (TINY, MINI, dict(ttft_slo_s=0), "ttft_slo_s must be a positive number, got 0"),
    (TINY, MINI, dict(rps=-1.0), "rps must be a positive number"),
    (TINY, MINI, dict(reserve_fraction=1.0), r"reserve_fraction must be in \[0, 1\)"),
    (TINY, MINI, dict(batch=0), "batch must be a positive integer, got 0"),
    (TINY, MINI, dict(act_dtype="fp8"), "mini has no fp8 peak"),
])
def test_plan_bad_input(spec, hw, kw, message):
    with pytest.raises(SpecError, match=message):
        capacity_plan(spec, hw, **kw, engine="eager")


def test_slo_batch_is_the_largest_that_meets_them():
    spec, hw = get_model("llama-2-70b"), get_hardware("h100-sxm")
    p = capacity_plan(spec, hw, prompt=2048, gen=256, tp=4, ttft_slo_s=2.0, tpot_slo_s=0.05, engine="eager")
    b = p.serving_batch
    assert 0 < b < p.max_batch
    assert p.serving_timing.ttft_s <= 2.0 and p.serving_timing.tpot_mean_s <= 0.05
    worse = parallel_timing(spec, hw, Workload(batch=b + 1, prompt=2048, gen=256), Layout(4, 1))
    assert worse.ttft_s > 2.0 or worse.tpot_mean_s > 0.05
    assert p.to_dict()["slo"]["met_at_batch"] is False  # max_batch itself misses them


def test_gpus_needed_and_cost():
    spec, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    p = capacity_plan(spec, hw, prompt=512, gen=128, batch=16, tp=2, rps=25.0, gpu_hour_usd=3.0, engine="eager")
    assert p.batch == p.serving_batch == 16 and p.fits
    rate = 16 / p.timing.e2e_s  # requests per second of one replica (2 GPUs)
    assert p.requests_per_s_per_replica == rate
    assert p.replicas == math.ceil(25.0 / rate) and p.gpus_needed == 2 * p.replicas
    # $3 * 2 GPUs / 3600 s per (16 * 128 tokens / e2e) tokens/s, per million tokens
    per_token = 3.0 * 2 / 3600 / (16 * 128 / p.timing.e2e_s)
    assert p.usd_per_million_tokens() == pytest.approx(per_token * 1e6, rel=1e-12)
    assert p.usd_per_million_tokens(count_prompt=True) == pytest.approx(per_token * 1e6 * 128 / 640, rel=1e-12)


def test_unreachable_slo_gives_no_gpu_count():
    p = capacity_plan(get_model("llama-2-7b"), get_hardware("l4"), prompt=512, gen=16, tpot_slo_s=1e-4, rps=1.0, engine="eager")
    assert p.serving_batch == 0 and p.gpus_needed is None and p.fits
    assert any(n.startswith("no batch meets the SLOs: at batch 1") for n in p.notes)


# --- CLI ------------------------------------------------------------------------------------------

PLAN = ["plan", "llama-2-70b", "--gpu", "h100-sxm", "--tp", "4", "--prompt", "2048", "--gen", "256", "--engine", "eager"]
KEYS = {"fits", "max_batch", "max_context", "ttft_s", "tpot_s", "tokens_per_s", "gpus_needed", "memory"}


def test_cli_plan_json():
    r = CliRunner().invoke(main, PLAN + ["--rps", "10", "--ttft-slo", "2000", "--tpot-slo", "50",
                                         "--gpu-hour-usd", "2.5", "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert KEYS <= set(d)
    assert set(d["memory"]) >= {"weights_bytes", "kv_bytes", "activations_bytes", "reserve_bytes", "capacity_bytes"}
    p = capacity_plan(get_model("llama-2-70b"), get_hardware("h100-sxm"), prompt=2048, gen=256, tp=4,
                      rps=10.0, ttft_slo_s=2.0, tpot_slo_s=0.05, gpu_hour_usd=2.5, engine="eager")
    assert d == json.loads(json.dumps(p.to_dict()))
    assert d["fits"] is True and d["max_batch"] == p.max_batch and d["gpus_needed"] % 4 == 0
    assert set(d["tpot_s"]) == {"first", "mean", "last"}


def test_cli_plan_table():
    r = CliRunner().invoke(main, PLAN + ["--rps", "10", "--gpu-hour-usd", "2.5"])
    assert r.exit_code == 0
    assert r.output.startswith("llama-2-70b on 4 x h100-sxm per replica (tp 4, pp 1)")
    for text in ("memory per GPU at batch", "max batch:", "TTFT", "TPOT first", "requests/s:",
                 "per million generated tokens", "assumption: runtime reserve: 0.1 of capacity"):
        assert text in r.output


def test_cli_plan_gpus_and_does_not_fit():
    r = CliRunner().invoke(main, ["plan", "llama-2-70b", "--gpu", "l4", "--gpus", "2", "--format", "json", "--engine", "eager"])
    assert r.exit_code == 0  # not fitting is an answer
    d = json.loads(r.output)
    assert (d["fits"], d["max_batch"], d["layout"]["tp"], d["layout"]["pp"]) == (False, 0, 1, 2)
    assert d["missing_bytes"] > 0
    r = CliRunner().invoke(main, ["plan", "llama-2-70b", "--gpu", "l4", "--engine", "eager"])
    assert r.exit_code == 0 and "DOES NOT FIT" in r.output


@pytest.mark.parametrize("args, message", [
    (["plan", "llama-2-70b"], "Error: no hardware given: use --gpu NAME"),
    (["plan", "llama-2-70b", "--gpu", "h100"], "Error: unknown GPU 'h100'; known: a100-sxm-40gb"),
    (["plan", "llama-2-70b", "--gpu", "h100-sxm", "--tp", "3"], "Error: tp=3 must divide num_heads (64) and num_kv_heads (8)"),
    (["plan", "llama-2-70b", "--gpu", "h100-sxm", "--gpus", "8", "--tp", "8"], "Error: give --gpus N or --tp N --pp M, not both"),
    (["plan", "tiny-llama", "--gpu", "h100-sxm", "--pp", "5"], "Error: pp=5 exceeds the 2 layers"),
    (["plan", "llama-2-70b", "--gpu", "h100-sxm", "--ttft-slo", "0"], "Error: costmodel plan: Invalid value for '--ttft-slo'"),
    (["plan", "llama-2-70b", "--gpu", "h100-sxm", "--tp", "0"], "Error: costmodel plan: Invalid value for '--tp'"),
    (["plan", "llama-2-70b", "--gpu", "h100-sxm", "--batch", "0"], "Error: batch must be a positive integer, got 0"),
    (["plan", "llama-2-70b", "--gpu", "h100-sxm", "--prompt", "-1"], "Error: prompt must be a positive integer"),
    (["plan", "llama-2-70b", "--gpu", "h100-sxm", "--reserve-fraction", "1"], "Error: costmodel plan: Invalid value for '--reserve-fraction'"),
    (["plan", "nope", "--gpu", "h100-sxm"], "Error: unknown model 'nope'"),
    (["plan", "llama-2-70b", "--hardware", "/no/such.json"], "Error: cannot read hardware file"),
    (["plan", "llama-2-70b", "--gpu", "h100-sxm", "--format", "csv"], "Error: costmodel plan: Invalid value for '--format'"),
])
def test_cli_plan_bad_input(args, message):
    r = CliRunner().invoke(main, args, prog_name="costmodel")
    assert r.exit_code == 2, r.output
    assert r.output.startswith(message) and r.output.count("\n") == 1 and "Traceback" not in r.output


@pytest.mark.parametrize("command", ["hardware", "plan", "calibrate"])
def test_help(command):
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-mixtral", "tiny-bert", "tiny-t5"])
def test_memory_on_one_gpu_is_the_analysis_memory(name):
    # memory_use costs only the first passes; analyze() also the decode: the same bytes
    spec, wl = get_model(name), Workload(batch=3, prompt=24, gen=5)
    m, a = memory_use(spec, MINI, wl), analyze(spec, wl).memory
    assert (m.weights_bytes, m.kv_bytes, m.activations_bytes) == (a.weights_bytes, a.kv_cache_bytes,
                                                                  a.activation_peak_bytes)
