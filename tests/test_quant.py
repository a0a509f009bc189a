"""Quantisation as deployed (costmodel.quant): packed weights with their scales and zeros, fp8 W8A8
compute at the fp8 peak, the defaults unchanged, the sweep, the CLI, and published checkpoint sizes."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from costmodel import analyze, get_model
from costmodel.analysis import prefill_cost, weight_bytes
from costmodel.dtypes import NotWholeBytesError, nbytes
from costmodel.errors import SpecError
from costmodel.hardware import get_hardware
from costmodel.plan import capacity_plan
from costmodel.quant import QUANT_CHOICES, SCHEMES, matrix_bytes
from costmodel.roofline import predict, rates
from costmodel.spec import ModelSpec, Workload
from reports.cli import main
from reports.sweep import sweep
from test_sweep import _expected

# Two layers, hidden 128, 2 heads of 64 (1 kv head), gated MLP of 256, vocab 64, untied head.
# Quantised matrices per layer: q [128,128], k [128,64], v [128,64], o [128,128],
# gate [128,256], up [128,256], down [256,128]: 16384 + 8192 + 8192 + 16384 + 3 * 32768 = 147456
# parameters, 1024 output columns in all, 1024 input rows in all (6 * 128 + 256).
# Not quantised: embedding 64 * 128 + LM head 64 * 128 + norms 2 * 2 * 128 + 128 = 17024 parameters,
# at bf16: 34048 bytes.
Q128 = ModelSpec(name="q128", num_layers=2, hidden_size=128, num_heads=2, num_kv_heads=1,
                 intermediate_size=256, vocab_size=64, max_position_embeddings=64)


def run(*args):
    return CliRunner().invoke(main, list(args))


def ops(cost):
    return {o.op: o for o in cost.layer + cost.before + cost.after}


# --- bytes of one matrix, by hand ----------------------------------------------------------------

@pytest.mark.parametrize("scheme, n_in, n_out, expected", [
    # AWQ int4 g128, fp16 scales, int4 zeros: n_in n_out / 2 + (n_in/128) n_out 2 + (n_in/128) n_out / 2
    ("awq-int4-g128", 128, 128, 8192 + 256 + 64),
    ("awq-int4-g128", 256, 128, 16384 + 2 * 128 * 2 + 2 * 128 // 2),  # 2 groups: 16384 + 512 + 128
    ("awq-int4-g128", 4096, 11008, 4096 * 11008 // 2 + 32 * 11008 * 2 + 32 * 11008 // 2),
    # GPTQ adds g_idx, one int32 per input row: + 4 n_in
    ("gptq-int4-g128", 128, 128, 8192 + 256 + 64 + 512),
    # int8 per channel: n_in n_out + n_out 16-bit scales
    ("int8-channel", 128, 256, 32768 + 256 * 2),
    # fp8 per tensor: n_in n_out + one float32; per channel: + n_out float32
    ("fp8-tensor", 128, 256, 32768 + 4),
    ("fp8-channel", 128, 256, 32768 + 256 * 4),
])
def test_matrix_bytes_by_hand(scheme, n_in, n_out, expected):
    assert matrix_bytes(SCHEMES[scheme], n_in, n_out) == expected


@pytest.mark.parametrize("quant, expected", [
    # per layer: q, o 8512 each; k, v 4096 + 128 + 32 = 4256 each; gate, up, down 16384 + 512 + 128
    # = 17024 each: 2 * 8512 + 2 * 4256 + 3 * 17024 = 76608; 2 layers 153216; + 34048 unquantised
    ("awq-int4-g128", 153216 + 34048),
    # + g_idx 4 * 1024 rows per layer, 2 layers: 8192
    ("gptq-int4-g128", 153216 + 8192 + 34048),
    # 147456 int8 + 1024 columns * 2 bytes per layer: 149504; 2 layers 299008
    ("int8-channel", 299008 + 34048),
    # 147456 fp8 + 7 float32 scales per layer: 147484; 2 layers 294968
    ("fp8-tensor", 294968 + 34048),
    # 147456 fp8 + 1024 float32 per layer: 151552; 2 layers 303104
    ("fp8-channel", 303104 + 34048),
])
def test_weight_memory_by_hand(quant, expected):
    assert Q128.num_params == 2 * 147456 + 17024
    assert weight_bytes(Q128, "bf16", quant) == expected
    assert analyze(Q128, Workload(batch=1, prompt=4, gen=2, quant=quant)).memory.weights_bytes == expected


def test_weight_only_matmul_reads_packed_weights_and_computes_at_the_activation_dtype():
    wl = Workload(batch=1, prompt=4, gen=2, quant="awq-int4-g128")
    o = ops(prefill_cost(Q128, wl))
    assert o["q_proj"].weight_bytes == 8512  # 8192 packed + 256 scales + 64 zeros
    assert o["mlp_down"].weight_bytes == 17024  # [256, 128]: 16384 + 2 groups * 128 * 2 + 2 * 128 / 2
    assert o["q_proj"].act_read_bytes == 4 * 128 * 2  # bf16 input, dequantised in the kernel
    assert o["q_proj"].flops == 2 * 4 * 128 * 128  # the counted FLOPs are unchanged
    assert o["lm_head"].weight_bytes == 64 * 128 * 2  # the LM head is not quantised
    assert o["embedding"].weight_bytes == 4 * 128 * 2  # nor the embedding (4 rows read)
    assert "q_proj_quant" not in o  # weight-only: no activation quantisation
    h100 = get_hardware("h100-sxm")
    r = rates(h100, "bf16", "awq-int4-g128")
    assert r.flops_rate("matmul", "q_proj") == h100.achievable_flops_per_s("bf16")


def test_fp8_input_quantisation_and_fp8_matmul_bytes():
    # prefill of 4 tokens; q_proj x[4, 128] @ W[128, 128]
    o = ops(prefill_cost(Q128, Workload(batch=1, prompt=4, gen=2, quant="fp8-tensor")))
    q = o["q_proj_quant"]
    assert q.kind == "elementwise"
    assert q.flops == 2 * 4 * 128 + 4 * 128  # abs-max + scale per input element; 1 rescale per output
    assert q.act_read_bytes == 2 * 4 * 128 * 2  # bf16 input read twice (abs-max pass, scaling pass)
    assert q.act_write_bytes == 4 * 128 + 4  # fp8 input + one float32 scale
    m = o["q_proj"]
    assert m.weight_bytes == 128 * 128 + 4  # fp8 weight + its float32 scale
    assert m.act_read_bytes == 4 * 128 + 4  # fp8 input + its scale
    assert m.act_write_bytes == 4 * 128 * 2  # bf16 output
    # per channel / per token: a float32 scale per token; 2 multiplies per output (s_x[t] * s_w[n])
    o = ops(prefill_cost(Q128, Workload(batch=1, prompt=4, gen=2, quant="fp8-channel")))
    assert o["q_proj_quant"].flops == 2 * 4 * 128 + 2 * 4 * 128
    assert o["q_proj_quant"].act_write_bytes == 4 * 128 + 4 * 4
    assert o["q_proj"].weight_bytes == 128 * 128 + 128 * 4
    assert o["mlp_down_quant"].flops == 2 * 4 * 256 + 2 * 4 * 128  # x[4, 256] @ W[256, 128]


def test_fp8_quant_ops_of_routed_experts_count_tokens_times_k():
    spec = get_model("tiny-mixtral")  # hidden 64, experts of 96, k = 2
    o = ops(prefill_cost(spec, Workload(batch=1, prompt=4, gen=2, quant="fp8-tensor")))
    rows = 4 * 2  # each of 4 tokens through 2 experts
    assert o["expert_up_quant"].flops == 2 * rows * 64 + rows * 96
    assert "router_quant" not in o  # the router is not quantised


def test_fp8_matmuls_compute_at_the_fp8_peak():
    h100 = get_hardware("h100-sxm")
    r = rates(h100, "bf16", "fp8-tensor")
    assert r.flops_rate("matmul", "q_proj") == h100.achievable_flops_per_s("fp8")
    assert r.flops_rate("matmul", "attn_scores") == h100.achievable_flops_per_s("bf16")  # attention stays bf16
    assert r.flops_rate("matmul", "lm_head") == h100.achievable_flops_per_s("bf16")
    assert r.to_dict()["quant_matmul_flops_per_s"] == h100.achievable_flops_per_s("fp8")
    assert "quant_matmul_flops_per_s" not in rates(h100, "bf16").to_dict()  # defaults: no new key
    # a compute-bound prefill is faster in fp8 than the same bytes at bf16 would be
    spec = get_model("llama-2-7b")
    wl = Workload(batch=8, prompt=2048, gen=2)
    t8 = predict(spec, replace(wl, quant="fp8-tensor"), h100)
    t16 = predict(spec, wl, h100)
    assert t8.prefill.seconds < 0.75 * t16.prefill.seconds


@pytest.mark.parametrize("gpu", ["a100-sxm-80gb", "a10g"])
def test_fp8_compute_is_refused_without_an_fp8_peak(gpu):
    with pytest.raises(SpecError, match=f"{gpu} has no fp8 peak"):
        predict(get_model("llama-2-7b"), Workload(quant="fp8-tensor"), get_hardware(gpu))
    r = run("report", "llama-2-7b", "--gpu", gpu, "--quant", "fp8-channel")
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "weight-only scheme" in r.output
    assert "Traceback" not in r.output
    # weight-only schemes run there, at the bf16 peak
    assert run("report", "llama-2-7b", "--gpu", gpu, "--quant", "awq-int4-g128").exit_code == 0


# --- refusals ------------------------------------------------------------------------------------

def test_shapes_the_formats_cannot_hold_are_refused_in_one_line():
    # tiny-llama: hidden 64, not a multiple of the group size 128
    with pytest.raises(SpecError, match="not a multiple of the group size 128"):
        analyze(get_model("tiny-llama"), Workload(quant="awq-int4-g128"))
    r = run("report", "tiny-llama", "--quant", "gptq-int4-g128")
    assert r.exit_code == 2 and r.output.count("\n") == 1
    # per-channel and per-tensor schemes have no group: tiny-llama is fine
    assert analyze(get_model("tiny-llama"), Workload(quant="int8-channel")).memory.weights_bytes > 0
    with pytest.raises(SpecError, match="unknown quant 'int3'; allowed: none, awq-int4-g128"):
        Workload(quant="int3")
    with pytest.raises(SpecError, match="cannot be int4"):
        Workload(quant="awq-int4-g128", weight_dtype="int4")


def test_int4_counts_that_are_not_whole_bytes_are_a_one_line_spec_error():
    with pytest.raises(SpecError, match=r"^3 x int4 is not a whole number of bytes \(4-bit values pack 2 a byte\)$"):
        nbytes(3, "int4")  # 1.5 bytes
    assert issubclass(NotWholeBytesError, AssertionError)  # what it raised before, for old callers
    import numpy as np

    assert (nbytes(np.array([2, 4]), "int4") == np.array([1, 2])).all()  # arrays: element-wise, vectorised
    with pytest.raises(SpecError, match="some of the counts x int4"):
        nbytes(np.array([2, 3]), "int4")


# --- defaults: today's numbers exactly -------------------------------------------------------------

# Computed with main at 28a060e (before quantisation existed): batch 2, prompt 64, gen 8; e2e on h100-sxm.
TODAY = {
    'llama-2-7b': {'phases': {'prefill': {'flops': 1663223003648, 'matmul_flops': 1662676631552, 'bytes': 15117076496, 'weight_bytes': 13215735808, 'act_read_bytes': 967980032, 'kv_read_bytes': 67108864}, 'decode': {'flops': 185557833216, 'matmul_flops': 185497288704, 'bytes': 93205002352, 'weight_bytes': 92502925312, 'act_read_bytes': 107097088, 'kv_read_bytes': 499122176}}, 'memory': {'weights_bytes': 13476831232, 'kv_cache_bytes': 74448896, 'kv_cache_bytes_per_token': 524288, 'activation_peak_bytes': 9502720, 'self_kv_cache_bytes': 74448896, 'cross_kv_cache_bytes': 0}, 'e2e_s': 0.040418686137313434},  # noqa: E501
    'tiny-mixtral': {'phases': {'prefill': {'flops': 30539264, 'matmul_flops': 29556736, 'bytes': 2934672, 'weight_bytes': 394880, 'act_read_bytes': 1366272, 'kv_read_bytes': 32768}, 'decode': {'flops': 3826704, 'matmul_flops': 3713024, 'bytes': 3188752, 'weight_bytes': 2651264, 'act_read_bytes': 160048, 'kv_read_bytes': 243712}}, 'memory': {'weights_bytes': 411264, 'kv_cache_bytes': 36352, 'kv_cache_bytes_per_token': 256, 'activation_peak_bytes': 163840, 'self_kv_cache_bytes': 36352, 'cross_kv_cache_bytes': 0}, 'e2e_s': 2.2848597014925375e-06},  # noqa: E501
    't5-small': {'phases': {'encode': {'flops': 4940627968, 'matmul_flops': 4932501504, 'bytes': 75314688, 'weight_bytes': 37893632, 'act_read_bytes': 20578304, 'kv_read_bytes': 0}, 'prefill': {'flops': 960999744, 'matmul_flops': 960782336, 'bytes': 92112736, 'weight_bytes': 83252736, 'act_read_bytes': 3649792, 'kv_read_bytes': 1597440}, 'decode': {'flops': 1090557888, 'matmul_flops': 1089019904, 'bytes': 557434976, 'weight_bytes': 538728960, 'act_read_bytes': 3549952, 'kv_read_bytes': 11870208}}, 'memory': {'weights_bytes': 121013248, 'kv_cache_bytes': 1769472, 'kv_cache_bytes_per_token': 12288, 'activation_peak_bytes': 1179648, 'self_kv_cache_bytes': 196608, 'cross_kv_cache_bytes': 1572864}, 'e2e_s': 0.0002704710447761194},  # noqa: E501
    'bert-base': {'phases': {'encode': {'flops': 22122826752, 'matmul_flops': 22047621120, 'bytes': 319256064, 'weight_bytes': 171591168, 'act_read_bytes': 78452736, 'kv_read_bytes': 0}}, 'memory': {'weights_bytes': 218964480, 'kv_cache_bytes': 0, 'kv_cache_bytes_per_token': 0, 'activation_peak_bytes': 1769472, 'self_kv_cache_bytes': 0, 'cross_kv_cache_bytes': 0}, 'e2e_s': 0.00011912539701492539},  # noqa: E501
    'tiny-deepseek': {'phases': {'prefill': {'flops': 37869056, 'matmul_flops': 36634624, 'bytes': 3398064, 'weight_bytes': 274592, 'act_read_bytes': 1639680, 'kv_read_bytes': 18432}, 'decode': {'flops': 16180976, 'matmul_flops': 16038400, 'bytes': 3748080, 'weight_bytes': 1809248, 'act_read_bytes': 911232, 'kv_read_bytes': 137088}}, 'memory': {'weights_bytes': 290976, 'kv_cache_bytes': 20448, 'kv_cache_bytes_per_token': 144, 'activation_peak_bytes': 147456, 'self_kv_cache_bytes': 20448, 'cross_kv_cache_bytes': 0}, 'e2e_s': 2.6664716417910446e-06},  # noqa: E501
}


@pytest.mark.parametrize("model", sorted(TODAY))
def test_defaults_keep_todays_numbers(model):
    spec, wl = get_model(model), Workload(batch=2, prompt=64, gen=8)
    assert wl.quant == "none"
    d = analyze(spec, wl).to_dict()
    got = {p: {k: d[p][k] for k in TODAY[model]["phases"][p]} for p in d["phases"]}
    assert got == TODAY[model]["phases"]
    assert d["memory"] == TODAY[model]["memory"]
    assert predict(spec, wl, get_hardware("h100-sxm")).e2e_s == TODAY[model]["e2e_s"]
    assert not any(r["op"].endswith("_quant") for r in d["ops"])
    assert d["workload"]["quant"] == "none" and d["workload"]["quant_scheme"] is None  # added keys
    # quant="none" given explicitly is the same analysis, op for op
    assert analyze(spec, replace(wl, quant="none")).to_dict() == d


# --- sweep: every row equals analyze ---------------------------------------------------------------

@pytest.mark.parametrize("model, quant", [
    ("llama-2-70b", "awq-int4-g128"), ("llama-2-70b", "fp8-channel"), ("bert-base", "gptq-int4-g128"),
    ("t5-small", "fp8-tensor"), ("tiny-mixtral", "fp8-tensor"), ("tiny-qwen-moe", "int8-channel"),
    ("tiny-deepseek", "fp8-channel"),
])
def test_sweep_equals_analyze_with_quant(model, quant):
    spec = get_model(model)
    for wl in (Workload(quant=quant), Workload(quant=quant, kv_cache=False, causal=True)):
        df = sweep(spec, wl, [1, 3], [1, 5, 64], [1, 2, 9])
        for row in df.to_dict("records"):
            assert {k: row[k] for k in _expected(spec, wl, row)} == _expected(spec, wl, row), row


def test_sweep_seconds_with_fp8_equal_predict():
    spec, hw = get_model("tiny-mixtral"), get_hardware("h100-sxm")
    wl = Workload(quant="fp8-tensor")
    df = sweep(spec, wl, [1, 64], [16, 512], [1, 2, 30], hardware=hw)
    for row in df.to_dict("records"):
        t = predict(spec, replace(wl, batch=row["batch"], prompt=row["prompt"], gen=row["gen"]), hw)
        assert row["seconds"] == pytest.approx(t.phases[row["phase"]].seconds, rel=1e-9, abs=1e-15)


def test_cli_sweep_with_quant():
    r = run("sweep", "llama-2-7b", "--batch", "1,2", "--prompt", "128", "--gen", "4", "--quant", "awq-int4-g128",
            "--dtype", "fp16", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert {row["weights_bytes"] for row in rows} == {3889307648}  # see test_published_awq_checkpoint_size


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_help_lists_the_schemes():
    out = run("report", "--help").output
    for q in QUANT_CHOICES:
        assert q in out


def test_cli_report_json_and_text_name_the_scheme():
    r = run("report", "llama-2-7b", "--quant", "gptq-int4-g128", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["workload"]["quant"] == "gptq-int4-g128"
    assert d["workload"]["quant_scheme"]["group_size"] == 128 and d["workload"]["quant_scheme"]["g_idx"]
    assert d["memory"]["weights_bytes"] == weight_bytes(get_model("llama-2-7b"), "bf16", "gptq-int4-g128")
    assert any(row["op"] == "q_proj" for row in d["ops"])
    text = run("report", "llama-2-7b", "--quant", "gptq-int4-g128").output
    assert "quant gptq-int4-g128" in text
    plan = run("plan", "llama-2-7b", "--gpu", "h100-sxm", "--quant", "fp8-tensor")
    assert plan.exit_code == 0, plan.output
    assert "quant fp8-tensor" in plan.output


def test_plan_counts_quantised_weights_per_gpu():
    spec, h100 = get_model("llama-2-7b"), get_hardware("h100-sxm")
    one = capacity_plan(spec, h100, quant="awq-int4-g128", act_dtype="fp16", weight_dtype="fp16")
    assert one.memory.weights_bytes == 3889307648
    assert one.to_dict()["workload"]["quant"] == "awq-int4-g128"
    two = capacity_plan(spec, h100, tp=2, quant="awq-int4-g128", act_dtype="fp16", weight_dtype="fp16")
    # tp 2: each GPU a half of every block's packed matrices, the vocabulary rows split, norms whole;
    # within rounding of one half-share per layer of 3889307648 / 2
    assert abs(two.memory.weights_bytes - (3889307648 + 32 * 2 * 4096 * 2 + 4096 * 2) / 2) < 64
    assert capacity_plan(spec, h100, tp=2).memory.weights_bytes == 13476831232 // 2 + (32 * 2 + 1) * 4096  # today


# --- published checkpoints -------------------------------------------------------------------------

def test_published_awq_checkpoint_size():
    # TheBloke/Llama-2-7B-AWQ, model.safetensors: 3.89 GB on its Hugging Face file listing
    # (https://huggingface.co/TheBloke/Llama-2-7B-AWQ/tree/main; the listing rounds to 10 MB, so the
    # tolerance is 0.005e9 bytes, 0.13 %). Our count: 32 layers of q, k, v, o [4096, 4096] and
    # gate, up [4096, 11008], down [11008, 4096] at int4 (3238002688 bytes) + fp16 scales and int4
    # zeros (32 x 3952640 = 126484480) + fp16 embedding and LM head (2 x 32000 x 4096 x 2 = 524288000)
    # + norms (65 x 4096 x 2 = 532480) = 3889307648.
    got = weight_bytes(get_model("llama-2-7b"), "fp16", "awq-int4-g128")
    assert got == 3238002688 + 126484480 + 524288000 + 532480
    assert abs(got - 3.89e9) <= 0.005e9


def test_fp8_llama_2_7b_weights():
    # Every parameter in fp8 (weight_dtype fp8, no scheme) is 6.74 GB, the parameter count; as vLLM
    # deploys fp8 W8A8 the blocks' matrices are fp8 + a float32 scale each (7 per layer) and the
    # embedding and LM head stay bf16: 6476005376 + 224 x 4 + 524288000 + 532480 bytes.
    spec = get_model("llama-2-7b")
    assert weight_bytes(spec, "fp8") == 6738415616
    assert weight_bytes(spec, "bf16", "fp8-tensor") == 6476005376 + 32 * 7 * 4 + 524288000 + 532480


def test_published_fp8_checkpoint_size():
    # neuralmagic/Meta-Llama-3-8B-Instruct-FP8 (per-tensor fp8 weights, bf16 embedding and LM head):
    # 9.08 GB of safetensors on its Hugging Face file listing (two shards, 5.00 GB + 4.08 GB;
    # https://huggingface.co/neuralmagic/Meta-Llama-3-8B-Instruct-FP8/tree/main). The checkpoint also
    # stores a static float32 input_scale per matrix (32 x 7 x 4 = 896 bytes), which the dynamic
    # scheme does not hold: far inside the listing's rounding. Tolerance 0.01e9 bytes (two rounded shards).
    got = weight_bytes(get_model("llama-3-8b"), "bf16", "fp8-tensor")
    assert abs(got - 9.08e9) <= 0.01e9
