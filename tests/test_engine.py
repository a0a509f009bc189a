"""Engine profiles (costmodel.engine): loading and validation, paged KV blocks, the engine's memory
budget, the chunked-prefill activation bound, launch and host overheads, eager == the reference,
and --engine on the CLI.

Expected values are derived by hand in the comments; they hold with costmodel.fused's executed
passes (flash attention and the fused element-wise kernels).
"""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from costmodel import Workload, get_model
from costmodel.analysis import StepCost, prefill_cost
from costmodel.analysis import OpCost
from costmodel.engine import (Engine, budget_bytes, chunk_shape, engine_activation_peak_bytes, engine_ids,
                              kernel_count, kv_block_bytes, kv_blocks_per_sequence, layer_blocks, load_engine,
                              paged_kv_cache_bytes, pass_activation_peak_bytes, pass_overhead_s, prefill_passes)
from costmodel.errors import SpecError
from costmodel.hardware import get_hardware
from costmodel.plan import capacity_plan, max_batch, max_context, memory_use, parallel_timing
from costmodel.plan import Layout
from costmodel.roofline import predict
from reports.cli import main

H100 = get_hardware("h100-sxm")  # reported capacity 81,559 MiB = 85,520,809,984 bytes
EAGER, VLLM = load_engine("eager"), load_engine("vllm")


def run(*args):
    return CliRunner().invoke(main, list(args))


def _engine(**changes) -> Engine:
    d = VLLM.to_dict()
    d.update(changes)
    d["fusions"] = tuple(d["fusions"])
    return Engine(**d)


# --- profiles ----------------------------------------------------------------------------------------

def test_built_in_profiles():
    assert engine_ids() == ["eager", "vllm"]
    assert EAGER.reference and not VLLM.reference
    assert (VLLM.attention, VLLM.kv_layout, VLLM.kv_block_tokens, VLLM.memory_utilization) == ("flash", "paged", 16, 0.9)
    assert VLLM.chunked_prefill and VLLM.max_num_batched_tokens == 8192
    assert VLLM.launch == {"prefill": "eager", "decode": "graphs"}
    numbers = ("kv_block_tokens", "kernel_launch_s", "host_step_s", "memory_utilization", "max_num_batched_tokens")
    assert all(f in VLLM.sources for f in numbers)  # every figure carries its source


@pytest.mark.parametrize("changes, message", [
    (dict(attention="sdpa"), "attention must be one of eager, flash; got 'sdpa'"),
    (dict(kv_layout="ring"), "kv_layout must be one of contiguous, paged"),
    (dict(kv_block_tokens=0), "kv_block_tokens must be a positive integer, got 0"),
    (dict(fusions=("add_rms_norm", "magic")), "fusions must be a list of distinct names from add_rms_norm"),
    (dict(launch={"prefill": "eager"}), "launch must be"),
    (dict(launch={"prefill": "eager", "decode": "jit"}), "launch must be"),
    (dict(kernel_launch_s={"eager": -1.0, "graphs": 0.0}), "kernel_launch_s.eager must be a number of seconds >= 0"),
    (dict(host_step_s="1ms"), "host_step_s must be a number of seconds >= 0"),
    (dict(memory_utilization=1.5), r"memory_utilization must be in \(0, 1\] or null"),
    (dict(max_num_batched_tokens=None), "chunked_prefill needs max_num_batched_tokens"),
    (dict(rates="fitted"), "rates must be one of flat, shape-aware"),
    (dict(attention="eager"), "kv_layout 'paged' needs attention 'flash'"),
    (dict(kv_layout="contiguous"), "kv_block_tokens must be 1 for a contiguous cache"),
])
def test_bad_fields_are_one_line(changes, message):
    with pytest.raises(SpecError, match=message) as e:
        _engine(**changes)
    assert "\n" not in str(e.value)


def test_user_engine_file_shapes(tmp_path):
    d = {**VLLM.to_dict(), "id": "mine", "memory_utilization": 0.5}
    for i, data in enumerate((d, [d], {"engines": [d]})):
        p = tmp_path / f"e{i}.json"
        p.write_text(json.dumps(data))
        e = load_engine(str(p))
        assert e.id == "mine" and e.memory_utilization == 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**d, "speed": "fast"}))
    with pytest.raises(SpecError, match="unknown field 'speed'; allowed: id, name"):
        load_engine(str(bad))
    two = tmp_path / "two.json"
    two.write_text(json.dumps([d, {**d, "id": "other"}]))
    with pytest.raises(SpecError, match="holds 2 engines"):
        load_engine(str(two))
    with pytest.raises(SpecError, match="unknown engine 'tgi'; built in: eager, vllm"):
        load_engine("tgi")


# --- paged KV: blocks --------------------------------------------------------------------------------

def test_layer_blocks():
    assert layer_blocks(2175, 16) == 136  # 2175 / 16 = 135.9 -> 136
    assert layer_blocks(2176, 16) == 136 and layer_blocks(2177, 16) == 137
    assert layer_blocks(100, 16, window=4096) == 7  # the window is not full yet: ceil(100 / 16)
    assert layer_blocks(10_000, 16, window=4096) == 257  # 4096 / 16 + 1 (the window need not start on a block)
    assert layer_blocks(4097, 16, window=4096) == 257  # min(ceil(4097 / 16) = 257, 257)


def test_blocks_per_sequence_and_bytes():
    spec = get_model("llama-2-7b")  # 32 layers, 32 kv heads x head_dim 128
    # prompt 2048 + gen 128 - 1 = 2175 positions: 136 blocks in each of 32 layers = 4352
    assert kv_blocks_per_sequence(spec, VLLM, 2175) == 4352
    # one block of one layer: 16 positions x 2 (k, v) x 32 x 128 x 2 bytes = 262,144
    assert kv_block_bytes(spec, "bf16", VLLM) == 262_144
    wl = Workload(batch=3, prompt=2048, gen=128)
    assert paged_kv_cache_bytes(spec, wl, VLLM) == 3 * 4352 * 262_144
    assert kv_blocks_per_sequence(spec, VLLM, 2175, layers=range(16, 32)) == 16 * 136  # a pipeline stage


def test_sliding_layers_hold_their_window_in_blocks():
    spec = get_model("gpt-oss-20b")  # 24 layers alternating: window 128, full; cache width 1,024
    # at 2175 positions: 12 full layers x 136 + 12 sliding layers x min(136, 128 / 16 + 1 = 9) = 1,740
    assert kv_blocks_per_sequence(spec, VLLM, 2175) == 12 * 136 + 12 * 9 == 1740
    assert kv_block_bytes(spec, "bf16", VLLM) == 16 * 1024 * 2
    m = memory_use(spec, H100, Workload(batch=2, prompt=2048, gen=128), reserve_fraction=None, engine=VLLM)
    assert m.kv_blocks_per_sequence == 1740 and m.kv_bytes == 2 * 1740 * 32_768 and m.kv_blocks == 3480


# --- the engine's memory budget and activation peak ---------------------------------------------------

def test_budget_arithmetic():
    # floor(0.9 x 85,520,809,984) = floor(76,968,728,985.6) = 76,968,728,985; the reserve is the rest
    assert budget_bytes(VLLM, H100) == 76_968_728_985
    spec = get_model("llama-2-7b")
    wl = Workload(batch=8, prompt=2048, gen=128)
    m = memory_use(spec, H100, wl, reserve_fraction=None, engine=VLLM)
    assert m.reserve_bytes == 85_520_809_984 - 76_968_728_985 == 8_552_080_999
    assert m.weights_bytes == 6_738_415_616 * 2  # llama-2-7b's parameters in bf16
    assert m.kv_bytes == 8 * 4352 * 262_144
    # blocks available = (budget - weights - activations) // block bytes
    room = 76_968_728_985 - m.weights_bytes - m.activations_bytes
    assert m.kv_blocks_available == room // 262_144
    assert m.to_dict()["kv_blocks_per_sequence"] == 4352 and m.to_dict()["kv_block_tokens"] == 16


def test_max_batch_counted_in_blocks():
    spec = get_model("llama-2-7b")
    wl = Workload(prompt=2048, gen=128)
    n = max_batch(spec, H100, wl, reserve_fraction=None, engine=VLLM)
    # from batch 4 on a chunk is 4 whole prompts (8192 tokens): the activation peak no longer grows, so
    # max batch = blocks available // blocks per sequence
    m = memory_use(spec, H100, replace(wl, batch=n), reserve_fraction=None, engine=VLLM)
    assert n == m.kv_blocks_available // 4352 and n > 34  # the issue's eager plan admitted 34
    assert not memory_use(spec, H100, replace(wl, batch=n + 1), reserve_fraction=None, engine=VLLM).fits


def test_chunk_shape_bounds_the_pass():
    spec = get_model("llama-3-8b")
    # prompt 2048 <= 8192: min(batch, 8192 // 2048 = 4) whole prompts; 32768 > 8192: the last chunk of one
    assert chunk_shape(spec, Workload(batch=13, prompt=2048), VLLM) == (4, 2048, 2048)
    assert chunk_shape(spec, Workload(batch=2, prompt=2048), VLLM) == (2, 2048, 2048)
    assert chunk_shape(spec, Workload(batch=13, prompt=32768), VLLM) == (1, 8192, 32768)
    assert prefill_passes(spec, Workload(batch=13, prompt=32768), VLLM) == 52  # 13 x 32768 / 8192
    assert prefill_passes(spec, Workload(batch=3, prompt=1000), VLLM) == 1  # 3,000 tokens: one pass
    assert prefill_passes(spec, Workload(batch=3, prompt=1000), EAGER) == 1


def test_chunked_activation_peak_does_not_grow_with_batch_or_prompt():
    spec = get_model("llama-3-8b")
    a = engine_activation_peak_bytes(spec, Workload(batch=13, prompt=32768), VLLM, H100)
    b = engine_activation_peak_bytes(spec, Workload(batch=1, prompt=65536), VLLM, H100)
    assert a == b  # both: one chunk of 8192 tokens (the last one attends over the prompt: no scores kept)
    # residual 8192 x 4096 x 2 = 67,108,864 bytes; with no score matrix the largest op is the fused
    # mlp_silu_and_mul: reads gate and up 2 x 8192 x 14336 x 2, writes 8192 x 14336 x 2 = 704,643,072 bytes
    assert a == 67_108_864 + 704_643_072
    eager = memory_use(spec, H100, Workload(batch=1, prompt=32768, gen=512))
    assert eager.activations_bytes > 100 * a  # the eager prefill's 32768^2 scores per head


def test_flash_footprint_without_the_score_matrix():
    # a hand-made block: scores read q (100 bytes) and write the 10,000-byte matrix; softmax reads
    # and writes it; values read it and write the output (100 bytes); one MLP op moves 3,000 bytes
    layer = [OpCost("attn_scores", "matmul", act_read_bytes=100, act_write_bytes=10_000, kv_read_bytes=500),
             OpCost("attn_softmax", "elementwise", act_read_bytes=10_000, act_write_bytes=10_000),
             OpCost("attn_values", "matmul", act_read_bytes=10_000, act_write_bytes=100, kv_read_bytes=500),
             OpCost("mlp_act", "elementwise", act_read_bytes=2_000, act_write_bytes=1_000)]
    cost = StepCost([], layer, [], 2)
    spec, wl = get_model("tiny-llama"), Workload(prompt=4)
    residual = 4 * spec.hidden_size * 2  # 4 tokens, bf16
    assert pass_activation_peak_bytes(spec, wl, EAGER, cost, 4) == residual + 20_000  # the softmax
    # flash: the kernel reads q (100) and writes the output (100); the MLP op (3,000) is the largest
    assert pass_activation_peak_bytes(spec, wl, VLLM, cost, 4) == residual + 3_000


# --- overheads ---------------------------------------------------------------------------------------

def test_pass_overhead_sums():
    # decode in CUDA graphs: 100 kernels x 0.875 us + 250 us host = 337.5 us
    assert pass_overhead_s(VLLM, "decode", 100) == pytest.approx(100 * 0.875e-6 + 250e-6, rel=1e-15)
    # prefill launched eagerly: 100 x 3.25 us + 250 us = 575 us
    assert pass_overhead_s(VLLM, "prefill", 100) == pytest.approx(575e-6, rel=1e-15)
    assert pass_overhead_s(None, "decode", 100) == 0.0


def test_overheads_are_their_own_term():
    # an engine that differs from the reference only by its overheads: attention eager, no fusions,
    # contiguous cache (fused.executed_step returns such a pass unchanged, stub or not)
    e = Engine("launchy", "overheads only", "eager", "contiguous", 1, (), {"prefill": "eager", "decode": "graphs"},
               {"eager": 4e-6, "graphs": 1e-6}, 1e-4, None, False, None, "flat")
    assert not e.reference
    spec, wl = get_model("tiny-llama"), Workload(batch=2, prompt=8, gen=5)
    t, t0 = predict(spec, wl, H100, e), predict(spec, wl, H100)
    # tiny-llama: embedding; 2 layers x 18 ops (norm, q, k, v, rotary, cache update, scores, softmax,
    # values, o, residual, norm, gate, up, act, mul, down, residual); final norm, lm_head, argmax = 40
    assert kernel_count(prefill_cost(spec, wl)) == 1 + 2 * 18 + 3 == 40
    assert t.prefill.overhead_s == pytest.approx(40 * 4e-6 + 1e-4, rel=1e-12)  # 260 us
    assert t.decode.overhead_s == pytest.approx(4 * (40 * 1e-6 + 1e-4), rel=1e-12)  # 4 steps x 140 us
    assert t.prefill.ops_seconds == t0.prefill.ops_seconds and t.decode.ops_seconds == t0.decode.ops_seconds
    assert t.ttft_s == pytest.approx(t0.ttft_s + 260e-6, rel=1e-12)
    assert t.tpot_first_s == pytest.approx(t0.tpot_first_s + 140e-6, rel=1e-12)
    s = t.summary()
    assert s["engine"] == "launchy" and s["overhead_s"]["decode_step"] == pytest.approx(140e-6, rel=1e-12)
    assert s["overhead_s"]["prefill"] == t.prefill.overhead_s


# --- eager is today's model exactly -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama-2-7b", "gpt2", "gpt-oss-20b", "mistral-7b-v0.1", "t5-small", "bert-base"])
def test_eager_engine_is_the_reference_exactly(name):
    spec = get_model(name)
    wl = Workload(batch=2, prompt=256, gen=1 if spec.arch == "encoder" else 33)
    a, b = predict(spec, wl, H100), predict(spec, wl, H100, EAGER)
    assert {k: v for k, v in b.summary().items() if k not in ("engine", "engine_profile", "overhead_s")} == a.summary()
    assert b.op_times() == a.op_times()
    assert memory_use(spec, H100, wl, engine=EAGER) == memory_use(spec, H100, wl)
    assert memory_use(spec, H100, wl, engine="eager") == memory_use(spec, H100, wl)
    assert max_batch(spec, H100, wl, engine=EAGER) == max_batch(spec, H100, wl)
    if spec.arch == "decoder":
        assert max_context(spec, H100, wl, engine=EAGER) == max_context(spec, H100, wl)
        assert parallel_timing(spec, H100, wl, Layout(2, 1), engine=EAGER).summary().items() >= \
            parallel_timing(spec, H100, wl, Layout(2, 1)).summary().items()


def test_eager_plan_is_the_plan_of_before():
    spec = get_model("llama-2-7b")
    p = capacity_plan(spec, H100, prompt=2048, gen=128, engine="eager")
    wl = Workload(prompt=2048, gen=128)
    assert p.max_batch == max_batch(spec, H100, wl) and p.memory == memory_use(spec, H100, replace(wl, batch=p.max_batch))
    assert p.reserve_fraction == 0.1 and p.to_dict()["engine"] == "eager"
    assert p.to_dict()["kv_blocks_per_sequence"] is None


def test_plan_defaults_to_vllm():
    spec = get_model("llama-2-7b")
    p = capacity_plan(spec, H100, prompt=2048, gen=128)
    d = p.to_dict()
    assert d["engine"] == "vllm" and d["engine_profile"]["kv_block_tokens"] == 16
    assert d["kv_block_tokens"] == 16 and d["kv_blocks_per_sequence"] == 4352
    assert d["kv_blocks_available"] == p.memory.kv_blocks_available
    assert p.max_batch == max_batch(spec, H100, Workload(prompt=2048, gen=128), reserve_fraction=None, engine=VLLM)
    assert d["overhead_s"]["prefill"] > 0 and d["overhead_s"]["decode_step"] > 0
    assert any(a.startswith("engine: vllm") for a in d["assumptions"])


def test_issue_example_long_prompt_fits_about_a_dozen():
    # llama-3-8b, prompt 32768 + gen 512: 33,279 positions = 2,080 blocks x 32 layers x 65,536 bytes
    # (16 x 2 x 8 kv heads x 128 x 2) = 4,362,076,160 bytes per sequence; budget 76,968,728,985 -
    # weights 16,060,522,496 - one chunk's activations 771,751,936 = 60,136,454,553 -> 13 sequences
    p = capacity_plan(get_model("llama-3-8b"), H100, prompt=32768, gen=512)
    assert p.fits and p.memory.kv_blocks_per_sequence == 2080 * 32
    assert p.max_batch == (76_968_728_985 - 16_060_522_496 - p.memory.activations_bytes) // 4_362_076_160
    assert 10 <= p.max_batch <= 14


def test_tensor_parallel_paged_memory():
    spec = get_model("llama-2-70b")  # 80 layers, 8 kv heads x 128
    wl = Workload(batch=1, prompt=2048, gen=128)
    m = memory_use(spec, H100, wl, Layout(4, 1), reserve_fraction=None, engine=VLLM)
    # one GPU of tp 4 holds 2 kv heads: a block is 16 x 2 x 2 x 128 x 2 = 16,384 bytes; 136 x 80 blocks
    assert m.kv_block_bytes == 16_384 and m.kv_blocks_per_sequence == 136 * 80
    assert m.kv_bytes == 136 * 80 * 16_384


# --- CLI ---------------------------------------------------------------------------------------------

def test_cli_engines_listing():
    r = run("engines")
    assert r.exit_code == 0 and "vllm" in r.output and "paged x16" in r.output
    rows = json.loads(run("engines", "--format", "json").output)
    assert [e["id"] for e in rows] == ["eager", "vllm"] and rows[1]["sources"]["max_num_batched_tokens"]


def test_cli_bad_engine_is_one_line():
    for cmd in (["plan", "gpt2", "--gpu", "h100-sxm"], ["report", "gpt2"], ["sweep", "gpt2"]):
        r = run(*cmd, "--engine", "tgi")
        assert r.exit_code == 2
        assert r.output.strip().count("\n") == 0
        assert "unknown engine 'tgi'; built in: eager, vllm" in r.output


def test_cli_eager_only_commands_refuse_other_engines(tmp_path):
    for cmd, what in ((["sweep", "gpt2", "--gpu", "h100-sxm"], "sweep runs the reference"),
                      (["profile", "tiny-llama"], "profile runs the reference"),
                      (["validate", "--quick"], "validate runs the reference"),
                      (["plot", "phases", "gpt2", "--out", str(tmp_path)], "the phases plot draws the reference")):
        r = run(*cmd, "--engine", "vllm")
        assert r.exit_code == 2 and what in r.output and r.output.strip().count("\n") == 0, r.output


def test_cli_plan_names_the_engine():
    r = run("plan", "llama-2-7b", "--gpu", "h100-sxm", "--prompt", "2048", "--gen", "128")
    assert r.exit_code == 0, r.output
    assert "\nengine: vllm (vLLM V1 defaults" in r.output and "4,352 blocks per sequence" in r.output
    d = json.loads(run("plan", "llama-2-7b", "--gpu", "h100-sxm", "--prompt", "2048", "--gen", "128",
                       "--format", "json").output)
    assert d["engine"] == "vllm" and d["max_batch"] > 34 and d["kv_blocks_per_sequence"] == 4352
    r = run("plan", "llama-2-7b", "--gpu", "h100-sxm", "--engine", "eager")
    assert "\nengine: eager" in r.output


def test_cli_plan_user_engine_file(tmp_path):
    p = tmp_path / "half.json"
    p.write_text(json.dumps({**VLLM.to_dict(), "id": "half", "memory_utilization": 0.5}))
    args = ["plan", "llama-2-7b", "--gpu", "h100-sxm", "--prompt", "2048", "--gen", "128", "--format", "json"]
    half, full = (json.loads(run(*args, "--engine", e).output) for e in (str(p), "vllm"))
    assert half["engine"] == "half" and 0 < half["max_batch"] < full["max_batch"]
    # reserve: 85,520,809,984 - floor(0.5 x 85,520,809,984) = 42,760,404,992
    assert half["memory"]["reserve_bytes"] == 42_760_404_992
    p.write_text(json.dumps({**VLLM.to_dict(), "id": "bad", "kv_block_tokens": -16}))
    r = run(*args, "--engine", str(p))
    assert r.exit_code == 2 and "kv_block_tokens must be a positive integer, got -16" in r.output


def test_cli_report_with_engine():
    r = run("report", "gpt2", "--gpu", "h100-sxm", "--engine", "vllm", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["engine"] == "vllm" and d["engine_profile"]["attention"] == "flash"
    assert d["overhead_s"]["decode_step"] > 0 and d["engine_memory"]["kv_block_tokens"] == 16
    assert "executed_flops" in d["prefill"] and d["executed_ops"]
    assert d["prefill"]["flops"] == json.loads(run("report", "gpt2", "--format", "json").output)["prefill"]["flops"]
    d = json.loads(run("report", "gpt2", "--gpu", "h100-sxm", "--format", "json").output)
    assert d["engine"] == "eager" and "executed_ops" not in d and "seconds" in d["ops"][0]
    r = run("report", "gpt2", "--gpu", "h100-sxm", "--engine", "vllm")
    assert r.exit_code == 0 and "engine overhead" in r.output and "\nengine: vllm" in r.output
    r = run("report", "gpt2", "--engine", "vllm")  # an engine changes time and memory: needs a device
    assert r.exit_code == 2 and "give --gpu NAME" in r.output
    r = run("report", "gpt2", "--gpu", "h100-sxm", "--engine", "vllm", "--format", "csv")
    assert r.exit_code == 2 and "--format json" in r.output


def test_cli_memory_plot_uses_the_engine(tmp_path):
    pytest.importorskip("matplotlib")
    r = run("plot", "memory", "llama-2-7b", "--gpu", "h100-sxm", "--batch-range", "1:4:x2",
            "--context-range", "1024:2048:x2", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    from reports.plotdata import memory_curves

    spec = get_model("llama-2-7b")
    curves, marks = memory_curves(spec, Workload(prompt=512, gen=128), H100, [1, 2], [1024], VLLM)
    assert marks["engine"] == "vllm"
    assert marks["max_batch"] == max_batch(spec, H100, Workload(prompt=512, gen=128), reserve_fraction=None,
                                           engine=VLLM)
