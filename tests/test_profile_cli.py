"""`costmodel profile` through click's CliRunner: the JSON contract, the table, bad input."""

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from reports.cli import main  # noqa: E402

FAST = ["--repeat", "2", "--warmup", "0"]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def llama_json():
    r = invoke("profile", "tiny-llama", "--batch", "2", "--prompt", "8", "--gen", "4", *FAST, "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_json_contract_keys_of_each_phase(llama_json, phase):
    d = llama_json[phase]
    for key in ("analytic_matmul_flops", "counted_matmul_flops", "fvcore_matmul_flops", "seconds", "kv_cache_bytes"):
        assert key in d, key
    assert isinstance(d["counted_matmul_flops"], int) and isinstance(d["seconds"], float)
    assert d["seconds_min"] <= d["seconds"] <= d["seconds_max"]


def test_json_counts_by_hand(llama_json):
    # tiny-llama: h 64, 4 heads of 16, 2 kv heads, SwiGLU 160, V 256, 2 layers; batch 2, prompt 8.
    # Prefill, 16 tokens, per layer: q, o 2*16*64*64 = 131,072 each; k, v 2*16*64*32 = 65,536 each;
    # MLP 3 * 2*16*64*160 = 983,040; QK^T + PV 2 * 2*2*4*8*8*16 = 32,768 -> 1,409,024; x 2 layers
    # = 2,818,048; LM head on the last position 2*2*64*256 = 65,536 -> 2,883,584.
    pre, dec = llama_json["prefill"], llama_json["decode"]
    assert pre["analytic_matmul_flops"] == pre["counted_matmul_flops"] == pre["fvcore_matmul_flops"] == 2_883_584
    # Decode step i (kv = 8 + i keys), 2 tokens: per layer 172,032 + 512 * kv, LM head 65,536:
    # 409,600 + 1,024 * kv per step; steps 1..3, kv 9 + 10 + 11 = 30 -> 1,228,800 + 30,720 = 1,259,520.
    assert dec["analytic_matmul_flops"] == dec["counted_matmul_flops"] == dec["fvcore_matmul_flops"] == 1_259_520
    # KV per position: 2 layers x (k, v) x 2 kv heads x 16 x 4 B = 512; after prefill 2 x 8 positions,
    # after decode 2 x (8 + 4 - 1) = 2 x 11.
    assert pre["kv_cache_bytes"] == pre["analytic_kv_cache_bytes"] == 2 * 8 * 512
    assert dec["kv_cache_bytes"] == dec["analytic_kv_cache_bytes"] == llama_json["memory"]["kv_cache_bytes"] == 11_264
    assert llama_json["memory"]["weight_bytes"] == llama_json["memory"]["analytic_weight_bytes"]
    assert llama_json["memory"]["peak_memory_bytes"] is None  # CPU: not measurable
    assert llama_json["match"] and llama_json["mismatches"] == []


def test_json_per_op_rows_timing_and_overheads(llama_json):
    ops = {(r["phase"], r["layer"], r["op"]): r for r in llama_json["ops"]}
    q = ops[("decode", 1, "q_proj")]
    assert q["analytic_matmul_flops"] == q["counted_matmul_flops"] == q["fvcore_matmul_flops_x2"] == 3 * 16_384
    assert q["difference"] == 0 and q["match"]
    assert ops[("prefill", None, "sampling")]["counted_matmul_flops"] == 0
    parts = {(t["phase"], t["layer"], t["part"]) for t in llama_json["timing"]}
    for layer in (0, 1):
        assert {("decode", layer, p) for p in ("layer", "projections", "attention core", "mlp")} <= parts
    assert {("decode", None, "lm_head"), ("decode", None, "sampling"), ("decode", None, "other")} <= parts
    s = llama_json["kv_cache_speedup"]
    assert set(s) == {"decode_seconds_with_cache", "decode_seconds_without_cache", "measured_speedup",
                      "analytic_flops_ratio", "analytic_bytes_ratio", "runs"}
    o = llama_json["instrumentation_overhead"]
    assert {"bare_seconds", "phase_timers_overhead", "per_op_hooks_overhead", "runs"} <= set(o)
    assert llama_json["skipped_ops"]["uncounted_matmul_ops"] == []
    assert "aten.rsqrt" in llama_json["skipped_ops"]["flop_counter"]  # RMSNorm: run, not counted, listed
    assert "aten::rsqrt" in llama_json["skipped_ops"]["fvcore"]
    assert llama_json["workload"]["strategy"] == "greedy" and llama_json["attention"] == "sdpa"


def test_json_measurement_says_how_the_times_were_taken(llama_json):
    m = llama_json["measurement"]
    # CPU: the per-thread CPU clock at 1 thread (set_threads' default), one visit per round of each
    # variant; --repeat 2 rounds, --warmup 0.
    assert m["clock"] == "thread" and m["threads"] == 1 and m["visits"] == 2 and m["warmup"] == 0
    assert m["variants"] == ["bare", "phase timers", "per-op hooks", "decode without a KV cache"]
    assert m["statistic"] == "median of the visits"
    assert set(m["floor_pct"]) == {"prefill", "decode"} and all(v >= 0 for v in m["floor_pct"].values())
    for key in ("loadavg_1m_start", "loadavg_1m_end", "cpus", "busy_share", "warning"):
        assert key in m["load"], key
    assert llama_json["instrumentation_overhead"]["runs"] == llama_json["kv_cache_speedup"]["runs"] == 2


def test_visit_orders_are_seeded_permutations_that_differ_by_round():
    from profiler.measure import visit_orders

    rounds = list(visit_orders(6, 4, seed=3))
    assert len(rounds) == 4 and all(sorted(r) == list(range(6)) for r in rounds)
    assert rounds == list(visit_orders(6, 4, seed=3)) and rounds != list(visit_orders(6, 4, seed=4))
    assert len({tuple(r) for r in rounds}) > 1


def test_profile_refuses_on_a_loaded_machine_and_warns_on_a_busy_one(monkeypatch):
    import profiler.measure as m

    snap = {"loadavg": [20.0, 20.0, 20.0], "cpus": 2, "stat": None, "time_s": 0.0}
    monkeypatch.setattr(m, "load_snapshot", lambda: snap)
    r = invoke("profile", "tiny-llama", "--prompt", "4", "--gen", "2", *FAST, "--max-load", "8")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("Error: machine too loaded to time: 1-minute load average 20.00 on 2 CPUs")
    assert "exceeds --max-load 8 per CPU" in r.output
    snap["loadavg"] = [3.0, 3.0, 3.0]  # 1.5 per CPU: above 1, a warning; below --max-load 4, timed
    r = invoke("profile", "tiny-llama", "--prompt", "4", "--gen", "2", *FAST, "--format", "json")
    assert r.exit_code == 0, r.output
    assert "1-minute load average 3.00 on 2 CPUs (1.50 per CPU)" in r.stderr
    assert json.loads(r.stdout)["measurement"]["load"]["warning"].startswith("warning: 1-minute load average 3.00")


def test_table_shows_measured_beside_analytic():
    r = invoke("profile", "tiny-gpt2", "--prompt", "8", "--gen", "3", "--attention", "eager", *FAST)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "phase    analytic matmul FLOPs  FlopCounterMode" in out
    assert "KV cache after decode: measured" in out and "(equal)" in out
    assert "Instrumentation overhead" in out and "KV cache: decode" in out
    # how the times were taken, under the phase table
    assert "Times: median of 2 visits; each round visits the loop bare, phase timers, per-op hooks, decode " \
           "without a KV cache once, in a shuffled order; per-thread CPU clock, 1 thread; visit-to-visit " \
           "floor prefill " in out
    assert "; load average " in out and "2 rounds after 0 warm-up" in out
    assert "matmul-class ops left uncounted: none" in out
    assert out.rstrip().endswith("KV-cache and weight bytes equal.")


def test_no_cache_and_beam_search():
    r = invoke("profile", "tiny-gpt2", "--prompt", "6", "--gen", "4", "--no-kv-cache", "--strategy", "beam",
               "--beams", "3", *FAST, "--no-compare-cache", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["decode"]["kv_cache_bytes"] == d["decode"]["analytic_kv_cache_bytes"] == 0
    assert d["decode"]["counted_matmul_flops"] == d["decode"]["analytic_matmul_flops"]
    assert d["kv_cache_speedup"] is None and d["workload"]["beams"] == 3


def test_real_weights_from_a_folder(tmp_path):
    from safetensors.torch import save_file

    from costmodel import get_model
    from profiler.model import build_model
    from profiler.weights import hf_state_dict

    save_file(hf_state_dict(build_model(get_model("tiny-qwen2"), seed=4)), str(tmp_path / "model.safetensors"))
    r = invoke("profile", "tiny-qwen2", "--prompt", "4", "--gen", "2", "--repeat", "1", "--warmup", "0",
               "--no-fvcore", "--no-compare-cache", "--weights", str(tmp_path), "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["decode"]["fvcore_matmul_flops"] is None  # --no-fvcore


@pytest.mark.parametrize("args, message", [
    (["tiny-llama", "--strategy", "top_k", "--top-k", "300"], "top_k (300) exceeds tiny-llama's vocab_size 256"),
    (["tiny-llama", "--beams", "2", "--strategy", "sample"], "beams=2 needs strategy 'beam', got 'sample'"),
    (["tiny-llama", "--repeat", "0"], "repeat must be >= 1 and warmup >= 0, got repeat=0"),
    (["tiny-llama", "--prompt", "250", "--gen", "10"], "context 259 (prompt 250 + gen 10 - 1) exceeds tiny-llama's "
                                                       "max_position_embeddings 256"),
    (["gpt-5"], "unknown model 'gpt-5' (`costmodel models` lists the"),
    (["tiny-llama", "--dtype", "int8"], "Invalid value for '--dtype': 'int8' is not one of 'fp32', 'bf16', 'fp16'."),
    (["tiny-llama", "--top-p", "0"], "top_p must be a number in (0, 1], got 0.0"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    r = invoke("profile", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.count("\n") == 1 and "Traceback" not in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_cuda_without_a_gpu_is_exit_2():
    r = invoke("profile", "tiny-llama", "--device", "cuda")
    assert r.exit_code == 2
    assert r.output.startswith("Error: device 'cuda' is not available here") and r.output.endswith("allowed: cpu\n")


@pytest.mark.parametrize("model, message", [
    ("tiny-bert", "tiny-bert is arch 'encoder': real weights load into dense decoder-only models"),
    ("tiny-mixtral", "tiny-mixtral is a mixture-of-experts model: real weights load into dense decoder-only"),
])
def test_real_weights_for_other_families_are_refused_in_one_line(tmp_path, model, message):
    r = invoke("profile", model, "--weights", str(tmp_path), *FAST)
    assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1


@pytest.mark.parametrize("command", ["profile", "validate"])
def test_help(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output
