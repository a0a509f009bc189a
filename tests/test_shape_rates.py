"""Shape-aware rates (issue 13, item 5): tile / wave / short-K efficiency of matmuls, bandwidth by
kernel kind and bytes moved, the catalog's new GPU fields; "flat" stays exactly today's model."""

import json
from dataclasses import replace

import pytest

from costmodel import Workload, get_model
from costmodel import shapes as S
from costmodel.analysis import OpCost, decode_step_cost, prefill_cost
from costmodel.errors import SpecError
from costmodel.hardware import SHAPE_FIELDS, catalog, get_hardware, hardware_from_dict
from costmodel.parallel import shard_op
from costmodel.roofline import (Rates, decode_seconds, op_time, predict, rates, step_time)

H100 = get_hardware("h100-sxm")  # 132 SMs, 989.5e12 bf16, 3.35e12 B/s, 1830 MHz; defaults 0.7 / 0.8
SA = rates(H100, "bf16", model="shape-aware")


# --- Matmul efficiency by hand on h100-sxm (132 SMs) ---------------------------------------------

def test_square_4096_gemm():
    # 4096^3: every tile divides 4096 (tile factor 1). 256x128: 16 x 32 = 512 tiles, ceil(512/132) = 4
    # waves -> 512 / 528; every other tile gives the same ratio (1024/1056, 2048/2112, 4096/4224), so
    # the first, 256x128, is kept. K: 4096 / (64 x (64 + 2)) = 64 / 66.
    assert S.best_tile((1, 4096, 4096, 4096), 132) == ((256, 128), 512 / 528)
    assert S.matmul_shape_efficiency((1, 4096, 4096, 4096), 132) == pytest.approx(512 / 528 * 64 / 66, rel=1e-12)
    op = OpCost("q_proj", "matmul", 2 * 4096**3, 2 * 4096**3, shape=(1, 4096, 4096, 4096, ""))
    F, B, lat = SA.op_rates(op)
    assert F == pytest.approx(989.5e12 * 0.7 * 512 / 528 * 64 / 66, rel=1e-12)
    # matmul bandwidth 3.35e12 x 0.8; latency 400 cycles / 1.83e9 Hz x that rate, in bytes
    assert B == pytest.approx(3.35e12 * 0.8, rel=1e-12)
    assert lat == round(400 / 1.83e9 * 3.35e12 * 0.8) == 585792


def test_prefill_512_tokens_picks_128x128():
    # 512 x 4096 output: 256x128 and 128x256 make 2 x 32 = 64 tiles, one wave of 132 -> 64/132;
    # 128x128 makes 4 x 32 = 128 tiles -> 128/132 (256x64, 64x256: 128 too; 128x64, 64x128: 256 in 2
    # waves = 256/264; 64x64: 512 in 4 = 512/528: all the same ratio, not more): 128x128, the first.
    assert S.best_tile((1, 512, 4096, 4096), 132) == ((128, 128), 128 / 132)


def test_decode_row_pads_to_64_and_fills_a_wave():
    # M = 1 (one sequence decoding): rows pad to a 64-row tile (1/64); with 64x64 tiles 4096 columns
    # make 64 tiles in one wave of 132 -> 64/132; 64x256 (16 tiles) and 64x128 (32) do worse.
    # Efficiency 1/64 x 64/132 = 1/132, times K 64/66.
    assert S.best_tile((1, 1, 4096, 4096), 132) == ((64, 64), 1 / 132)
    assert S.matmul_shape_efficiency((1, 1, 4096, 4096), 132) == pytest.approx(1 / 132 * 64 / 66, rel=1e-12)


def test_short_k_penalty():
    # K = 128 (a head dim): 128 / (64 x (2 + 2)) = 0.5; K = 512: 512 / (64 x 10) = 0.8; K = 100 pads
    # to 2 blocks: 100 / (64 x 4) = 0.390625
    assert (S.k_efficiency(128), S.k_efficiency(512), S.k_efficiency(100)) == (0.5, 0.8, 0.390625)
    assert S.k_efficiency(128, "k") == 1.0  # a varying K (the attended keys) is not penalised


def test_decode_attention_scores_quantise_only_the_fixed_dims():
    # llama-2-7b, 1 sequence, step 1 over 513 keys: scores (32 heads, 1 query, 513 keys, d 128, "n").
    # Keys vary: not quantised, no wave factor; the query row pads to 64 (1/64); K = 128 -> 0.5.
    spec = get_model("llama-2-7b")
    ops = {o.op: o for o in decode_step_cost(spec, Workload(batch=1, prompt=512, gen=4), 1).layer}
    assert ops["attn_scores"].shape == (32, 1, 513, 128, "n")
    assert ops["attn_values"].shape == (32, 1, 128, 513, "k")
    assert ops["q_proj"].shape == (1, 1, 4096, 4096, "")
    assert S.matmul_shape_efficiency(ops["attn_scores"].shape, 132) == 1 / 64 * 0.5
    # values: M = 1 and N = d = 128 are fixed, so waves count: 64x64 tiles make 32 heads x 1 x 2 = 64
    # tiles in one wave of 132 -> 1/64 x 64/132 = 1/132 (64x128: 32 tiles, 1/64 x 32/132, less); K varies
    assert S.best_tile(ops["attn_values"].shape, 132) == ((64, 64), 1 / 132)
    assert S.matmul_shape_efficiency(ops["attn_values"].shape, 132) == 1 / 132


def test_no_kv_cache_marks_every_token_row_varying():
    spec = get_model("llama-2-7b")
    ops = {o.op: o for o in decode_step_cost(spec, Workload(batch=2, prompt=8, gen=4, kv_cache=False), 1).layer}
    assert ops["q_proj"].shape == (1, 2 * 9, 4096, 4096, "m")
    assert ops["attn_scores"].shape == (64, 9, 9, 128, "mn")


# --- Bandwidth by kernel kind --------------------------------------------------------------------

def test_streaming_and_reduction_bandwidths():
    norm = OpCost("attn_norm", "elementwise", 10, act_read_bytes=10**9)
    add = OpCost("attn_residual", "elementwise", 10, act_read_bytes=10**9)
    assert SA.op_rates(norm)[1] == pytest.approx(3.35e12 * 0.65, rel=1e-12)
    assert SA.op_rates(add)[1] == pytest.approx(3.35e12 * 0.90, rel=1e-12)
    # a small transfer is latency-bound: 4096 bytes at 3.35e12 x 0.9 take 1.36 ns, plus 400 cycles at
    # 1.83 GHz (218.6 ns): latency bytes round(2.186e-7 x 3.015e12) = 659016
    small = OpCost("attn_residual", "elementwise", 0, act_read_bytes=4096)
    t = op_time(small, SA)
    assert t.memory_s == pytest.approx((4096 + 659016) / (3.35e12 * 0.9), rel=1e-12)
    assert t.bytes == 4096  # the counted bytes are unchanged


def test_op_efficiency_overrides_the_flop_rate():
    r = rates(H100, "bf16", model="shape-aware", op_efficiency={"flash_attention": 0.5})
    op = OpCost("flash_attention", "matmul", 10**12, 10**12, shape=(32, 512, 512, 128, "n"))
    assert r.op_rates(op)[0] == 989.5e12 * 0.5
    flat = rates(H100, "bf16", op_efficiency={"flash_attention": 0.5})
    assert op_time(op, flat).compute_s == 10**12 / (989.5e12 * 0.5)
    with pytest.raises(SpecError, match="op_efficiency"):
        rates(H100, "bf16", op_efficiency={"flash_attention": 1.5})
    with pytest.raises(SpecError, match="allowed: flat, shape-aware"):
        rates(H100, "bf16", model="roofline")


# --- Flat is exactly today -----------------------------------------------------------------------

@pytest.mark.parametrize("model, gpu, wl", [
    ("llama-2-7b", "h100-sxm", Workload(batch=4, prompt=512, gen=32)),
    ("mistral-7b", "a100-sxm-80gb", Workload(batch=2, prompt=300, gen=20)),
    ("gpt2", "l4", Workload(batch=3, prompt=100, gen=10, kv_cache=False)),
    ("tiny-deepseek", "mi300x", Workload(batch=2, prompt=40, gen=8)),
])
def test_flat_is_todays_rates_exactly(model, gpu, wl):
    hw, spec = get_hardware(gpu), get_model(model)
    r = rates(hw, wl.act_dtype)
    today = Rates(hw.achievable_flops_per_s(wl.act_dtype), hw.achievable_bandwidth_bytes_per_s, hw.op_overhead_s)
    assert r == today and r.model == "flat" and r.shape is None
    # every op's time: flops / F, bytes / B of its kind, as before
    for _, o in prefill_cost(spec, wl).weighted():
        t = op_time(o, r)
        assert (t.compute_s, t.memory_s) == (o.flops / today.flops_rate(o.kind), o.bytes / today.bytes_rate(o.kind))
    t = predict(spec, wl, hw)
    assert t.assumptions()["rate_model"] == "flat"
    assert predict(spec, wl, hw, r=r).e2e_s == t.e2e_s


def test_rates_to_dict_adds_keys_only():
    flat, sa = rates(H100, "bf16").to_dict(), SA.to_dict()
    assert set(flat) == {"flops_per_s", "elementwise_flops_per_s", "bytes_per_s", "matmul_bytes_per_s",
                         "op_overhead_s", "model"}
    assert sa["model"] == "shape-aware" and sa["shape"]["sm_count"] == 132
    assert json.loads(json.dumps(sa)) == sa
    cpu = rates(get_hardware("cpu-generic"), "bf16", model="shape-aware")
    assert cpu.shape is None and "flat rates apply" in predict(
        get_model("tiny-llama"), Workload(batch=1, prompt=8, gen=2), get_hardware("cpu-generic"), r=cpu
    ).assumptions()["rate_model_description"]


def test_shape_is_not_a_cost():
    a = OpCost("q_proj", "matmul", 2, 2, shape=(1, 1, 1, 1, ""))
    assert a == replace(a, shape=None) and a.with_costs(a.costs()).shape == a.shape


# --- Closed-form decode sums == the per-step loop under shape-aware ------------------------------

@pytest.mark.parametrize("model, gpu, wl", [
    ("llama-2-7b", "h100-sxm", Workload(batch=4, prompt=500, gen=70)),
    ("tiny-mistral-sw", "a100-sxm-80gb", Workload(batch=3, prompt=30, gen=60)),  # the window fills
    ("gpt2", "l4", Workload(batch=2, prompt=20, gen=12, kv_cache=False)),  # quadratic, rows vary
    ("tiny-deepseek", "h100-sxm", Workload(batch=2, prompt=40, gen=20)),  # MLA: kv_b_proj rows vary
    ("tiny-deepseek", "h100-sxm", Workload(batch=2, prompt=40, gen=20, mla="absorbed")),
    ("tiny-mixtral", "mi300x", Workload(batch=5, prompt=64, gen=15)),
])
def test_closed_form_equals_per_step_loop(model, gpu, wl):
    spec, hw = get_model(model), get_hardware(gpu)
    r = rates(hw, wl.act_dtype, model="shape-aware")
    t = predict(spec, wl, hw, r=r)
    loop = [step_time(decode_step_cost(spec, wl, i), r) for i in range(1, wl.decode_steps + 1)]
    assert t.decode.seconds == pytest.approx(sum(s.seconds for s in loop), rel=1e-10)
    assert t.tpot_first_s == loop[0].seconds and t.tpot_last_s == loop[-1].seconds
    # op by op (decode rows sum the same op over the steps)
    per_op = {}
    for s in loop:
        for n, o in s.weighted():
            per_op[o.op] = per_op.get(o.op, 0.0) + n * o.seconds
    summed = {}
    for n, o in t.decode.weighted():
        summed[o.op] = summed.get(o.op, 0.0) + n * o.seconds
    assert summed == pytest.approx(per_op, rel=1e-10)
    # and the shape-aware model changes something (it is not the flat one in disguise)
    assert t.decode.seconds != predict(spec, wl, hw).decode.seconds


def test_decode_seconds_is_unchanged_flat():
    spec, wl = get_model("llama-2-7b"), Workload(batch=2, prompt=100, gen=9)
    r = rates(H100, "bf16")
    loop = sum(step_time(decode_step_cost(spec, wl, i), r).seconds for i in range(1, 9))
    assert decode_seconds(spec, wl, H100) == pytest.approx(loop, rel=1e-12)


# --- Tensor parallelism cuts the shapes ----------------------------------------------------------

def test_shard_op_divides_the_split_dimension():
    spec = get_model("llama-2-7b")
    ops = {o.op: o for o in prefill_cost(spec, Workload(batch=1, prompt=512, gen=2)).layer}
    assert shard_op(ops["q_proj"], 4).shape == (1, 512, 1024, 4096, "")  # column: n / 4
    assert shard_op(ops["o_proj"], 4).shape == (1, 512, 4096, 1024, "")  # row: k / 4
    assert shard_op(ops["attn_scores"], 4).shape == (8, 512, 512, 128, "n")  # heads / 4
    assert shard_op(ops["attn_norm"], 4).shape is None


# --- The catalog's new fields --------------------------------------------------------------------

def test_every_gpu_has_the_shape_fields_with_sources():
    for h in catalog():
        if h.kind != "gpu":
            continue
        assert h.architecture and h.sm_count and h.shared_memory_per_sm_bytes and h.boost_clock_hz, h.id
        for f in SHAPE_FIELDS:  # a source for every field, also where the figure is left null (B200's L2)
            assert f in h.sources and len(h.sources[f]) > 20, (h.id, f)
    h100 = get_hardware("h100-sxm")
    assert (h100.architecture, h100.sm_count, h100.shared_memory_per_sm_bytes, h100.l2_cache_bytes) == \
        ("hopper", 132, 228 * 1024, 50 * 2**20)
    assert get_hardware("a100-sxm-80gb").sm_count == 108 and get_hardware("mi300x").architecture == "cdna3"


def test_to_dict_adds_the_fields():
    d = get_hardware("l4").to_dict()
    assert (d["architecture"], d["sm_count"], d["boost_clock_hz"]) == ("ada", 58, 2040e6)
    assert "sm_count" not in get_hardware("cpu-generic").to_dict()


_BASE = {"id": "x", "name": "x", "peak_flops_per_s": {"bf16": 1e12}, "memory_bytes": 10**9,
         "memory_bandwidth_bytes_per_s": 1e11}


@pytest.mark.parametrize("extra, message", [
    ({"architecture": "pascal"}, "unknown architecture 'pascal'; allowed: volta"),
    ({"sm_count": 0}, "sm_count must be > 0"),
    ({"sm_count": 1.5}, "sm_count must be a whole number"),
    ({"shared_memory_per_sm_bytes": "228KB"}, "shared_memory_per_sm_bytes must be a number"),
    ({"l2_cache_bytes": -1}, "l2_cache_bytes must be > 0"),
    ({"boost_clock_hz": 1830}, "boost_clock_hz must be in hertz"),
    ({"gemm_tiles": [[128]]}, "gemm_tiles must be a non-empty list of [rows, cols] pairs"),
    ({"gemm_tiles": [[128, 0]]}, "gemm_tiles cols must be > 0"),
])
def test_bad_shape_fields_are_refused_in_one_line(extra, message):
    with pytest.raises(SpecError) as e:
        hardware_from_dict({**_BASE, **extra}, "hardware file 'x.json'")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_user_profile_with_its_own_tiles():
    hw = hardware_from_dict({**_BASE, "sm_count": 10, "boost_clock_hz": 1e9, "gemm_tiles": [[128, 128]]})
    r = rates(hw, "bf16", model="shape-aware")
    # 256 x 256 output in 128x128 tiles: 4 tiles on 10 SMs, one wave -> 0.4; K 256: 256 / (64 x 6)
    op = OpCost("q_proj", "matmul", 1, 1, shape=(1, 256, 256, 256, ""))
    assert r.op_rates(op)[0] == pytest.approx(1e12 * 0.7 * 0.4 * 256 / 384, rel=1e-12)
