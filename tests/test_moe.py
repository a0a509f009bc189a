"""Mixture of experts: router, top-k experts, shared experts, expert bytes read, parameters."""

import json
from dataclasses import replace

import pytest

from costmodel import Workload, analyze, get_model, load_hf_config
from costmodel.analysis import decode_cost, decode_step_cost, expected_experts_touched, prefill_cost
from costmodel.errors import SpecError

MIX = get_model("tiny-mixtral")  # h 64, 4 heads (2 kv), 4 experts of 96, top 2, gated SiLU
QMOE = get_model("tiny-qwen-moe")  # 6 experts of 32, top 2, one gated shared expert of 64
WL = Workload(batch=2, prompt=8, gen=3)


def ops(cost):
    return {o.op: o for o in cost.layer + cost.before + cost.after}


def test_mixtral_ops_by_hand():
    o = ops(prefill_cost(MIX, WL))  # 16 tokens
    assert o["router"].matmul_flops == 2 * 16 * 64 * 4 == 8192  # 2 * t * h * E
    assert o["router_softmax"].flops == 5 * 16 * 4
    assert o["router_topk"].flops == 16 * 4 + 2 * 16 * 2  # compare over E; renormalise the k
    # each token through 2 experts: 2 * (16 * 2) * 64 * 96 per matrix, however they are spread
    assert o["expert_gate"].matmul_flops == o["expert_up"].matmul_flops == 2 * 32 * 64 * 96 == 393_216
    assert o["expert_down"].matmul_flops == 393_216
    assert o["expert_combine"].flops == 2 * 16 * 2 * 64  # scale and add each expert output
    # 32 (token, expert) pairs touch all 4 experts: 4 * 64 * 96 weights * 2 bytes per matrix
    assert o["expert_gate"].weight_bytes == 4 * 64 * 96 * 2 == 49_152
    assert "mlp_gate" not in o
    step = ops(decode_step_cost(MIX, replace(WL, batch=1), 1))
    # one token, 2 experts: only 2 of the 4 experts' weights are read
    assert step["expert_gate"].weight_bytes == 2 * 64 * 96 * 2 == 24_576
    assert step["expert_gate"].matmul_flops == 2 * 2 * 64 * 96


def test_shared_expert_with_gate():
    o = ops(prefill_cost(QMOE, WL))
    assert o["shared_expert_score"].matmul_flops == 2 * 16 * 64 * 1  # sigmoid gate x @ w[h, 1]
    assert o["shared_expert_gate"].matmul_flops == 2 * 16 * 64 * 64  # the shared expert's gate matrix
    assert o["shared_expert_up"].matmul_flops == 2 * 16 * 64 * 64  # every token, width 64
    assert o["expert_up"].matmul_flops == 2 * 32 * 64 * 32  # routed: 2 per token, width 32
    assert o["shared_expert_combine"].flops == 4 * 16 + 2 * 16 * 64
    assert o["router_topk"].flops == 16 * 6  # Qwen-MoE does not renormalise the top-k weights


def test_parameters_total_and_active():
    # per layer: attention 64*64 + 2*64*32 + 64*64 = 12,288; router 64*4 = 256;
    # experts 4 * 3 * 64 * 96 = 73,728; 2 RMSNorms 128 -> 86,400; two layers 172,800;
    # embedding and LM head 2 * 256 * 64 = 32,768; final norm 64 -> 205,632
    assert MIX.num_params == 205_632
    # active: 2 experts instead of 4 per layer -> 205,632 - 2 * 2 * 3 * 64 * 96 = 131,904
    assert MIX.active_params == 131_904


@pytest.mark.parametrize("name, total, active", [
    ("mixtral-8x7b", 46.7e9, 12.9e9),  # Mistral AI: "46.7B total parameters but only 12.9B per token"
    ("qwen1.5-moe-a2.7b", 14.3e9, 2.7e9),  # Qwen: "14.3B parameters in total and 2.7B activated"
])
def test_published_moe_counts(name, total, active):
    spec = get_model(name)
    assert spec.num_params == pytest.approx(total, rel=0.005)
    assert spec.active_params == pytest.approx(active, rel=0.02)


def test_mixtral_exact_count():
    # 32 layers * (41,943,040 attention + 32,768 router + 8 * 3 * 4096 * 14336 experts + 8,192 norms)
    # + 2 * 32000 * 4096 + 4096 = 46,702,792,704
    assert get_model("mixtral-8x7b").num_params == 46_702_792_704


def test_expected_experts_touched():
    assert expected_experts_touched(MIX, 1) == pytest.approx(2.0)  # 4 * (1 - 1/2)
    assert expected_experts_touched(MIX, 2) == pytest.approx(3.0)  # 4 * (1 - 1/4)
    r = analyze(get_model("mixtral-8x7b"), Workload(batch=1, prompt=16, gen=4))
    moe = r.to_dict(include_ops=False)["moe"]
    assert moe["decode_step_experts_read"] == 2 and moe["prefill_experts_read"] == 8
    # a decode step reads 2 experts of 3 * 4096 * 14336 bf16 weights in each of 32 layers
    assert moe["decode_step_expert_weight_bytes"] == 32 * 2 * 3 * 4096 * 14336 * 2
    big = analyze(get_model("mixtral-8x7b"), Workload(batch=64, prompt=16, gen=4)).moe()
    assert big["decode_step_experts_read"] == 8 and big["decode_step_expected_experts_read"] > 7.99


@pytest.mark.parametrize("spec", [MIX, QMOE])
@pytest.mark.parametrize("wl", [
    Workload(batch=1, prompt=1, gen=8, kv_cache=False),  # experts read grow over the first steps
    Workload(batch=1, prompt=2, gen=5, kv_cache=False, logits="all"),
    Workload(batch=3, prompt=4, gen=6),
    Workload(batch=1, prompt=1, gen=7, beams=2),
])
def test_decode_total_equals_the_loop(spec, wl):
    dec = decode_cost(spec, wl)
    steps = [decode_step_cost(spec, wl, i) for i in range(1, wl.gen)]
    for f in ("flops", "weight_bytes", "act_read_bytes", "kv_read_bytes"):
        assert dec.total(f) == sum(s.total(f) for s in steps), f


def write(tmp_path, cfg):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def test_hf_mixtral_and_qwen2_moe(tmp_path):
    mixtral = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
               "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
               "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
               "vocab_size": 32000, "router_aux_loss_coef": 0.02}
    assert load_hf_config(write(tmp_path, mixtral)).num_params == 46_702_792_704
    qwen = {"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
            "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
            "num_experts_per_tok": 4, "max_position_embeddings": 8192, "num_attention_heads": 16,
            "num_hidden_layers": 24, "num_key_value_heads": 16, "vocab_size": 151936,
            "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": []}
    spec = load_hf_config(write(tmp_path, qwen))
    assert spec.num_params == get_model("qwen1.5-moe-a2.7b").num_params == 14_315_784_192
    with pytest.raises(SpecError, match="missing required field 'num_local_experts'"):
        load_hf_config(write(tmp_path, {k: v for k, v in mixtral.items() if k != "num_local_experts"}))
    # decoder_sparse_step 2 (refused before issue 12): MoE on layers i with (i + 1) % 2 == 0, dense
    # MLPs of intermediate_size on the 12 others
    sparse = load_hf_config(write(tmp_path, {**qwen, "decoder_sparse_step": 2}))
    assert sparse.mlp_layer_types == ("dense", "moe") * 12


@pytest.mark.parametrize("kwargs, message", [
    (dict(experts_per_token=5), "experts_per_token must be between 1 and num_experts"),
    (dict(experts_per_token=0), "experts_per_token must be between 1 and num_experts"),
    (dict(num_experts=-1), "num_experts must be a non-negative integer"),
    (dict(mlp_bias=True), "mlp_bias is not supported with experts"),
])
def test_bad_moe_specs(kwargs, message):
    with pytest.raises(SpecError, match=message):
        replace(MIX, **kwargs)


def test_mixtral_8x22b_preset_is_its_published_checkpoint():
    # mistralai/Mixtral-8x22B-v0.1, built on the meta device by transformers 5.23
    # (tests/fixtures/hf/published_params.json): 140,630,071,296 total, 39,161,468,928 active
    import json
    from pathlib import Path

    from costmodel.models import PRESETS, spec_from_hf_dict

    published = json.loads((Path(__file__).parent / "fixtures" / "hf" / "published_params.json")
                           .read_text())["presets"]["mixtral-8x22b"]
    spec = PRESETS["mixtral-8x22b"]
    assert spec == spec_from_hf_dict(published["config"], name="mixtral-8x22b")
    assert (spec.num_params, spec.active_params) == (140_630_071_296, 39_161_468_928)
    assert published["num_params"] == spec.num_params and published["active_params"] == spec.active_params
