"""Fine-grained and DeepSeek-style experts and multi-head latent attention, exact against the
matmul FLOPs, KV-cache bytes and parameter counts transformers 5.23 measured on its own Qwen3-MoE
and DeepSeek-V3 models (tests/fixtures/hf/qwen3_moe.json, deepseek_v3.json; eager attention and
experts, fp32, batch 2, prompt 12), and against the released checkpoints' counts
(tests/fixtures/hf/published_params.json)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from costmodel import Workload, analyze, get_model
from costmodel.analysis import decode_step_cost, kv_cache_bytes, layer_ops, model_ops, prefill_cost
from costmodel.errors import SpecError
from costmodel.models import spec_from_hf_dict

HF = Path(__file__).parent / "fixtures" / "hf"


def fixture(model_type):
    d = json.loads((HF / f"{model_type}.json").read_text())
    return d, spec_from_hf_dict({"model_type": model_type, **d["config"]}, name=model_type)


def workload(d, prompt=None, logits="all", **kw):
    # the fixtures run fp32 weights and activations; 4 generated tokens after the prefill's one
    return Workload(batch=d["batch"], prompt=prompt or d["prompt"], gen=5, weight_dtype="fp32",
                    act_dtype="fp32", logits=logits, **kw)


def matmul(ops):
    return sum(o.matmul_flops for o in ops)


def by_op(ops):
    return {o.op: o for o in ops}


def steps(d):
    """(prompt, decode step i, measured step) for both prompts: context_before c is step c - prompt + 1."""
    yield from ((d["prompt"], s["context_before"] - d["prompt"] + 1, s) for s in d["decode_steps"])
    short = d["decode_steps_short_prompt"]
    yield from ((short["prompt"], s["context_before"] - short["prompt"] + 1, s) for s in short["steps"])


# --- Qwen3-MoE: 4 layers, all MoE, 4 experts of 32, top 2, q/k norms, head_dim 32 --------------------

QWEN, QSPEC = fixture("qwen3_moe")


def test_qwen3_moe_prefill_matmul_flops():
    # per layer (t = 2 * 12 = 24 tokens): q 2*24*64*128 = 393,216, k and v 196,608 each, o 393,216,
    # scores and values 2*2*4*12*12*32 = 73,728 each, router 2*24*64*4 = 12,288, experts 48 rows:
    # gate, up, down 2*48*64*32 = 196,608 each -> 1,929,216; 4 layers 7,716,864 + LM head
    # 2*24*64*128 = 393,216 (all) -> 8,110,080; last: 2*2*64*128 = 32,768 -> 7,749,632
    for logits in ("all", "last"):
        assert prefill_cost(QSPEC, workload(QWEN, logits=logits)).total("matmul_flops") == \
            QWEN["prefill"][f"logits_{logits}"]["flops"]
    layer = by_op(layer_ops(QSPEC, workload(QWEN), 2, 12, 12))
    m = QWEN["prefill"]["logits_all"]["by_module"]
    pre = "Qwen3MoeForCausalLM.model.layers.0."
    assert matmul(layer.values()) == m[pre[:-1]] == 1_929_216
    assert layer["router"].matmul_flops == m[pre + "mlp.gate"]
    assert sum(layer[f"expert_{x}"].matmul_flops for x in ("gate", "up", "down")) == m[pre + "mlp.experts"]
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert layer[p].matmul_flops == m[pre + "self_attn." + p]


def test_qwen3_moe_decode_steps_and_kv_bytes():
    # step over context c: per layer q 2*2*64*128 = 32,768, k, v 16,384 each, o 32,768, router 1,024,
    # experts 4 rows 3 * 2*4*64*32 = 49,152 -> 148,480 (4 layers 593,920) + LM head 32,768 = 626,688
    # of mm; scores and values 2 * 2*2*4*c*32 = 1,024 c per layer, 4,096 c in all (c = 13: 53,248)
    for prompt, i, measured in steps(QWEN):
        wl = workload(QWEN, prompt=prompt)
        assert decode_step_cost(QSPEC, wl, i).total("matmul_flops") == measured["flops"]
        # 4 layers * 2 (k, v) * 2 kv heads * 32 * 4 bytes = 2,048 bytes a position, for batch 2
        assert kv_cache_bytes(QSPEC, wl, prompt + i) == measured["kv_cache_bytes_after"]
    wl = workload(QWEN)
    assert kv_cache_bytes(QSPEC, wl, 12) == QWEN["kv_cache_bytes"]["after_prefill"] == 2 * 12 * 2_048
    assert kv_cache_bytes(QSPEC, wl) == QWEN["kv_cache_bytes"]["after_decode"]  # 12 + 5 - 1 positions


def test_qwen3_moe_params():
    # per layer: attention 64*128 + 2*64*64 + 128*64 = 24,576, q/k norms 2*32, 2 norms 128, router 4*64 =
    # 256, experts 4 * 3 * 64*32 = 24,576 -> 49,600; 4 layers 198,400 + embedding, LM head 2*128*64 =
    # 16,384 + final norm 64 = 214,848
    assert QSPEC.num_params == QWEN["num_params"] == 214_848
    assert QSPEC.qk_norm == "head" and QSPEC.mlp_layer_types == ("moe",) * 4


def test_qwen3_moe_dense_layers_from_the_config():
    # Qwen3MoeDecoderLayer: MoE where the layer is not in mlp_only_layers and (layer + 1) % step == 0
    spec = spec_from_hf_dict({"model_type": "qwen3_moe", **QWEN["config"], "decoder_sparse_step": 2,
                              "mlp_only_layers": [3]}, name="q")
    assert spec.mlp_layer_types == ("dense", "moe", "dense", "dense")
    # a dense layer is an MLP of intermediate_size 128: 3 * 64*128 = 24,576 in place of router + experts
    # (24,832): 214,848 - 3 * 24,832 + 3 * 24,576 = 214,080
    assert spec.num_params == 214_080
    assert spec.active_params == 214_080 - 2 * 3 * 64 * 32  # the one MoE layer uses 2 of its 4 experts
    with pytest.raises(SpecError, match="use_sliding_window true is not supported for qwen3_moe"):
        spec_from_hf_dict({"model_type": "qwen3_moe", **QWEN["config"], "use_sliding_window": True}, name="q")


# --- DeepSeek-V3: 3 layers, layer 0 dense, MLA, 8 experts top 2 in 2 of 4 groups, 1 shared expert -----

DEEP, DSPEC = fixture("deepseek_v3")
DPRE = "DeepseekV3ForCausalLM.model.layers."


def test_deepseek_v3_layers_by_module():
    # t = 24 tokens, H = 4 heads, r_q 32, d_c 16, nope 16 + rope 8 = 24, v 16:
    # q_a 2*24*64*32 = 98,304; q_b 2*24*32*(4*24) = 147,456; kv_a 2*24*64*(16+8) = 73,728;
    # kv_b 2*24*16*(4*(16+16)) = 98,304; o 2*24*(4*16)*64 = 196,608;
    # scores 2*2*4*12*12*24 = 55,296, values 2*2*4*12*12*16 = 36,864 (the fixture's bmm: 92,160 a layer)
    m = DEEP["prefill"]["logits_all"]["by_module"]
    wl = workload(DEEP)
    dense, moe = (by_op(layer_ops(DSPEC, wl, 2, 12, 12, mlp=k)) for k in ("dense", "moe"))
    for layer, ops in ((0, dense), (1, moe), (2, moe)):
        pre = f"{DPRE}{layer}."
        assert matmul(ops.values()) == m[pre[:-1]]
        for op, module in (("q_a_proj", "q_a_proj"), ("q_b_proj", "q_b_proj"), ("kv_a_proj", "kv_a_proj_with_mqa"),
                           ("kv_b_proj", "kv_b_proj"), ("o_proj", "o_proj")):
            assert ops[op].matmul_flops == m[pre + "self_attn." + module]
        assert ops["attn_scores"].matmul_flops + ops["attn_values"].matmul_flops == 92_160
    # dense layer 0: 3 * 2*24*64*128 = 1,179,648; MoE: router 2*24*64*8 = 24,576, experts 48 rows
    # 2*48*64*64 + 2*48*32*64 = 589,824, shared expert of 32: 3 * 2*24*64*32 = 294,912
    assert matmul(dense[f"mlp_{x}"] for x in ("gate", "up", "down")) == m[DPRE + "0.mlp"] == 1_179_648
    assert moe["router"].matmul_flops == m[DPRE + "1.mlp.gate"] == 24_576
    assert matmul(moe[f"expert_{x}"] for x in ("gate", "up", "down")) == m[DPRE + "1.mlp.experts"]
    assert matmul(moe[f"shared_expert_{x}"] for x in ("gate", "up", "down")) == m[DPRE + "1.mlp.shared_experts"]


def _dense_first_total(spec, wl, q_len, kv_len, logits_positions):
    """Matmul FLOPs of one pass summed from the per-layer ops: each layer with its own MLP kind."""
    before, after = model_ops(spec, wl, wl.batch, q_len, logits_positions, kv_len=kv_len)
    layers = sum(matmul(layer_ops(spec, wl, wl.batch, q_len, kv_len, mlp=k)) for k in spec.mlp_layer_types)
    return matmul(before) + layers + matmul(after)


def test_deepseek_v3_passes_from_the_per_layer_ops():
    for logits, rows in (("all", 12), ("last", 1)):
        assert _dense_first_total(DSPEC, workload(DEEP, logits=logits), 12, 12, rows) == \
            DEEP["prefill"][f"logits_{logits}"]["flops"]
    # a decode step over context c (transformers: kv_b_proj re-expands all c cached latents):
    # per layer q_a 8,192, q_b 12,288, kv_a 6,144, o 16,384, kv_b 2*(2*c)*16*128 = 8,192 c,
    # scores 2*2*4*c*24 = 384 c, values 2*2*4*c*16 = 256 c; dense MLP 98,304; MoE MLP router 2,048 +
    # experts 4 rows 49,152 + shared 24,576 = 75,776; LM head 32,768.
    # c = 13: 3 * (43,008 + 8,832 * 13) + 98,304 + 2 * 75,776 + 32,768 = 756,096
    for prompt, i, measured in steps(DEEP):
        c = prompt + i
        assert _dense_first_total(DSPEC, workload(DEEP, prompt=prompt), 1, c, 1) == measured["flops"]
        assert measured["flops"] == 3 * (43_008 + 8_832 * c) + 98_304 + 2 * 75_776 + 32_768


def test_deepseek_v3_latent_cache_bytes():
    # transformers caches c_kv [b, 1, s, 16] and k_rope [b, 1, s, 8]: 3 layers * (16 + 8) * 4 bytes
    # = 288 bytes a position, for batch 2: 12 positions 6,912
    for prompt, i, measured in steps(DEEP):
        assert kv_cache_bytes(DSPEC, workload(DEEP, prompt=prompt), prompt + i) == measured["kv_cache_bytes_after"]
    assert kv_cache_bytes(DSPEC, workload(DEEP), 12) == DEEP["kv_cache_bytes"]["after_prefill"] == 6_912
    assert kv_cache_bytes(DSPEC, workload(DEEP)) == DEEP["kv_cache_bytes"]["after_decode"] == 9_216
    assert analyze(DSPEC, workload(DEEP)).memory.kv_cache_bytes_per_token == 288


def test_deepseek_v3_params():
    # attention a layer: q_a 64*32 + norm 32 + q_b 32*96 + kv_a 64*24 + norm 16 + kv_b 16*128 + o 64*64
    # = 12,848; 2 norms 128; dense MLP 3*64*128 = 24,576 -> 37,552; MoE: router 8*64 = 512, experts
    # 8 * 3*64*32 = 49,152, shared 3*64*32 = 6,144 -> 68,784 (e_score_correction_bias is a buffer);
    # 37,552 + 2 * 68,784 + 2*128*64 + 64 = 191,568
    assert DSPEC.num_params == DEEP["num_params"] == 191_568
    assert DSPEC.mlp_layer_types == ("dense", "moe", "moe")
    assert DSPEC.active_params == 191_568 - 2 * 6 * 3 * 64 * 32  # 6 of 8 experts unused in 2 layers


def test_deepseek_v3_pass_totals():
    # the stack as layer groups (layer 0 dense, layers 1-2 MoE): the same sums as the per-layer ops
    for logits in ("all", "last"):
        wl = workload(DEEP, logits=logits)
        assert prefill_cost(DSPEC, wl).total("matmul_flops") == DEEP["prefill"][f"logits_{logits}"]["flops"]
    for prompt, i, measured in steps(DEEP):
        assert decode_step_cost(DSPEC, workload(DEEP, prompt=prompt), i).total("matmul_flops") == measured["flops"]
    assert [g.describe() for g in get_model("deepseek-v3").layer_groups()] == [
        "layers 0-2: dense, full attention", "layers 3-60: moe, full attention"]


def test_deepseek_router_by_hand():
    o = by_op(layer_ops(DSPEC, workload(DEEP), 2, 12, 12, mlp="moe"))  # 24 tokens, E 8, 4 groups, k 2
    assert o["router_sigmoid"].flops == 5 * 24 * 8 == 960  # sigmoid 4 + the bias 1 per score
    # top-2 of each group: a comparison per expert, 24*8; their sum: 24*4; the best 2 groups: 24*4
    assert o["router_group_topk"].flops == 192 + 96 + 96
    # top 2 of 8: 24*8 comparisons; renormalise 2 * 24*2; scale by 2.5: 24*2 -> 336
    assert o["router_topk"].flops == 192 + 96 + 48
    assert "router_softmax" not in o
    assert o["shared_expert_combine"].flops == 24 * 64  # shared + routed, ungated


def test_plain_q_proj_without_q_lora_rank():
    spec = spec_from_hf_dict({"model_type": "deepseek_v3", **DEEP["config"], "q_lora_rank": None}, name="d")
    o = by_op(layer_ops(spec, workload(DEEP), 2, 12, 12))
    assert "q_a_proj" not in o and o["q_proj"].matmul_flops == 2 * 24 * 64 * 96  # [h, H * (16 + 8)]
    # q_a 2,048 + norm 32 + q_b 3,072 become q_proj 64*96 = 6,144: 3 layers * (6,144 - 5,152) more
    assert spec.num_params == 191_568 + 3 * 992


def test_absorbed_form_by_hand():
    # Absorbed (DeepSeek-V2 section 2.1.2: W^UK into the query, W^UV after attention), decode step
    # over c = 13 positions, batch 2 (t = 2), H = 4, nope 16, rope 8, d_c 16, v 16:
    #   kv_b_absorb_q: q_nope [2, 4, 16] @ W^UK [4, 16, 16] = 2*2*4*16*16 = 4,096
    #   scores over the latent and the rope key: 2 * b*H * c * (d_c + rope) = 2*2*4*13*24 = 4,992
    #   values are the latent: 2 * b*H * c * d_c = 2*2*4*13*16 = 3,328
    #   kv_b_absorb_v: out [2, 4, 16] @ W^UV [4, 16, 16] = 2*2*4*16*16 = 4,096
    #   q_a 8,192, q_b 12,288, kv_a 6,144, o 16,384 as in the expanded form; no kv_b_proj over the cache
    #   -> 59,520 a layer, against 43,008 + 8,832 * 13 = 157,824 expanded
    wl = workload(DEEP, mla="absorbed")
    o = by_op(layer_ops(DSPEC, wl, 2, 1, 13))
    assert "kv_b_proj" not in o
    assert (o["kv_b_absorb_q"].matmul_flops, o["attn_scores"].matmul_flops, o["attn_values"].matmul_flops,
            o["kv_b_absorb_v"].matmul_flops) == (4_096, 4_992, 3_328, 4_096)
    attention = ("q_a_proj", "q_b_proj", "kv_a_proj", "kv_b_absorb_q", "attn_scores", "attn_values",
                 "kv_b_absorb_v", "o_proj")
    assert matmul(o[x] for x in attention) == 59_520
    expanded = by_op(layer_ops(DSPEC, workload(DEEP), 2, 1, 13))
    assert matmul(v for k, v in expanded.items() if k in attention + ("kv_b_proj",)) == 157_824
    # the latent is read from the cache by scores (c * (16 + 8)) and values (c * 16): fp32, batch 2
    assert o["attn_scores"].kv_read_bytes == 2 * 13 * 24 * 4 and o["attn_values"].kv_read_bytes == 2 * 13 * 16 * 4
    # the prefill (nothing cached before) expands in both forms; the cache holds the same latent
    assert layer_ops(DSPEC, wl, 2, 12, 12) == layer_ops(DSPEC, workload(DEEP), 2, 12, 12)
    assert analyze(DSPEC, wl).memory == analyze(DSPEC, workload(DEEP)).memory
    # without a cache every pass expands (nothing to absorb against)
    no_cache = workload(DEEP, mla="absorbed", kv_cache=False)
    assert layer_ops(DSPEC, no_cache, 2, 13, 13) == layer_ops(DSPEC, workload(DEEP, kv_cache=False), 2, 13, 13)


def test_mla_form_is_named_in_the_json_and_checked():
    assert analyze(DSPEC, workload(DEEP, mla="absorbed")).to_dict(include_ops=False)["workload"]["mla"] == "absorbed"
    assert Workload().mla == "transformers"
    with pytest.raises(SpecError, match="mla"):
        Workload(mla="latent")


def test_mla_cli_option():
    from reports.cli import main

    runner = CliRunner()
    args = ["report", "deepseek-v3", "--batch", "1", "--prompt", "16", "--gen", "4", "--format", "json"]
    flops = {}
    for form in ("transformers", "absorbed"):
        r = runner.invoke(main, args + ["--mla", form])
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)  # the mixed-stack warning goes to stderr
        assert d["workload"]["mla"] == form
        flops[form] = d["decode"]["matmul_flops"]
    assert flops["absorbed"] < flops["transformers"]
    r = runner.invoke(main, args + ["--mla", "latent"])
    assert r.exit_code == 2 and "latent" in r.output


def test_bad_mla_and_routing_specs():
    spec = get_model("deepseek-v3")
    with pytest.raises(SpecError, match=r"qk_nope_head_dim, v_head_dim need kv_lora_rank"):
        get_model("tiny-llama").with_(qk_nope_head_dim=16, v_head_dim=16)
    with pytest.raises(SpecError, match=r"head_dim \(64\) must be qk_nope_head_dim \+ qk_rope_head_dim \(192\)"):
        spec.with_(head_dim=64)
    with pytest.raises(SpecError, match=r"moe_groups \(3\) must divide num_experts \(256\)"):
        spec.with_(moe_groups=3)
    with pytest.raises(SpecError, match="moe_scoring"):
        spec.with_(moe_scoring="relu")
    with pytest.raises(SpecError, match="mlp_layer_types has 2 entries, num_layers is 61"):
        spec.with_(mlp_layer_types=("dense", "moe"))


# --- Released checkpoints: total and active parameters ----------------------------------------------

PUBLISHED = json.loads((HF / "published_params.json").read_text())["presets"]


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3"])
def test_published_counts(name):
    p, spec = PUBLISHED[name], get_model(name)
    assert spec.num_params == p["num_params"]
    assert spec.active_params == p["active_params"]
    assert spec == spec_from_hf_dict(p["config"], name=name)  # the preset is its config.json


def test_published_counts_by_hand():
    # Qwen3-30B-A3B: one expert 3 * 2048 * 768 = 4,718,592; 128 in each of 48 layers: 28,991,029,248
    # routed; active: 120 unused in each layer -> 30,532,122,624 - 48 * 120 * 4,718,592 = 3,353,032,704
    q = get_model("qwen3-30b-a3b")
    assert 48 * 128 * 4_718_592 == PUBLISHED["qwen3-30b-a3b"]["routed_expert_params"]
    assert q.active_params == q.num_params - 48 * 120 * 4_718_592 == 3_353_032_704
    # DeepSeek-V3: experts of 3 * 7168 * 2048 = 44,040,192 in the 58 MoE layers (3 dense): 248 unused
    # each -> 671,026,404,352 - 58 * 248 * 44,040,192 = 37,552,282,624
    d = get_model("deepseek-v3")
    assert 58 * 256 * 44_040_192 == PUBLISHED["deepseek-v3"]["routed_expert_params"]
    assert d.active_params == d.num_params - 58 * 248 * 44_040_192 == 37_552_282_624


@pytest.mark.parametrize("form", ["transformers", "absorbed"])
def test_sweep_grid_equals_analyze_with_latent_attention(form):
    pytest.importorskip("numpy")
    from reports.sweep import grid_counts

    spec = get_model("deepseek-v3")  # arrays of prompts through the router and latent attention
    counts, _ = grid_counts(spec, Workload(mla=form), [1, 4], [16, 64], [5])
    for ib, b in enumerate((1, 4)):
        for ip, s in enumerate((16, 64)):
            a = analyze(spec, Workload(batch=b, prompt=s, gen=5, mla=form))
            assert [int(x) for x in counts["matmul_flops"][ib, ip, 0]] == [a.prefill.matmul_flops,
                                                                           a.decode.matmul_flops]
