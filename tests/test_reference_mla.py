"""The reference model's multi-head latent attention (DeepSeek-V2/V3), in transformers' form and the
absorbed one: counted FLOPs per op and latent-cache bytes checked exactly against hand-derived
values and against transformers 5.23's own DeepSeek-V3 measurements (tests/fixtures/hf/deepseek_v3.json);
both forms give the same logits while counting different FLOPs."""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from costmodel import ModelSpec, Workload, get_model  # noqa: E402
from costmodel.errors import SpecError  # noqa: E402
from profiler import runner  # noqa: E402
from profiler.flops import SDPA_OPS, count_call  # noqa: E402
from profiler.generate import decode_one_token, forward_no_cache, prefill, random_prompt  # noqa: E402
from profiler.model import build_model  # noqa: E402

HF = Path(__file__).parent / "fixtures" / "hf"
ATTENTION_OPS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj", "kv_b_proj", "kv_b_absorb_q", "attn_scores",
                 "attn_values", SDPA_OPS, "kv_b_absorb_v", "o_proj")  # SDPA_OPS: both attention matmuls


def _counts(model, fn, *args):
    with torch.no_grad():
        out, sc = count_call(fn, model, *args)
    return dict(sc.counted), out


def _attention(c, layer):
    return {op: c[(layer, op)] for op in ATTENTION_OPS if (layer, op) in c}


def test_prefill_counts_and_latent_cache_by_hand():
    # tiny-deepseek: h 64, H 4, r_q 32, d_c 16, nope 16 + rope 8 = 24, v 16; b 2, s 12: t = 24 tokens
    m = build_model(get_model("tiny-deepseek"), attention="eager")
    m.setup_caches(2, 16)
    c, _ = _counts(m, prefill, random_prompt(m.spec, 2, 12, 0, "cpu"))
    expanded = {
        "q_a_proj": 98_304,  # 2*24*64*32
        "q_b_proj": 147_456,  # 2*24*32*(4*24)
        "kv_a_proj": 73_728,  # 2*24*64*(16+8)
        "kv_b_proj": 98_304,  # 2*24*16*(4*(16+16)): the 24 latents expanded
        "attn_scores": 55_296,  # 2*b*H*s*s*(nope+rope) = 2*2*4*12*12*24
        "attn_values": 36_864,  # 2*2*4*12*12*v = 2*2*4*12*12*16
        "o_proj": 196_608,  # 2*24*(4*16)*64
    }
    for layer in range(3):
        assert _attention(c, layer) == expanded
    # the cache: c_kv [2, 1, 12, 16] and k_pe [2, 1, 12, 8] a layer: 3 * 2*12*(16+8) * 4 bytes = 6,912
    assert m.kv_cache_bytes() == 6_912
    cache = m.caches()[0]
    assert (cache.k.shape, cache.v.shape) == ((2, 1, 16, 16), (2, 1, 16, 8))


@pytest.mark.parametrize("form, step", [
    # tiny-deepseek-lite: q_proj (no q rank), d_c 32, nope 16 + rope 8, v 16; b 1, context 8 + 1 = 9.
    # transformers: the 9 cached latents re-expanded, kv_b 2*9*32*(4*(16+16)) = 73,728; scores over
    # nope + rope: 2*1*4*1*9*24 = 1,728; values of 16: 2*4*9*16 = 1,152
    ("transformers", {"kv_b_proj": 73_728, "attn_scores": 1_728, "attn_values": 1_152}),
    # absorbed: W^UK on the query 2*1*4*16*32 = 4,096; scores over d_c + rope: 2*4*9*(32+8) = 2,880;
    # values in latent space: 2*4*9*32 = 2,304; W^UV after: 2*1*4*32*16 = 4,096; no kv_b_proj
    ("absorbed", {"kv_b_absorb_q": 4_096, "attn_scores": 2_880, "attn_values": 2_304, "kv_b_absorb_v": 4_096}),
])
def test_decode_step_counts_by_hand_in_each_form(form, step):
    m = build_model(get_model("tiny-deepseek-lite"), attention="eager", mla=form)
    m.setup_caches(1, 9)
    with torch.no_grad():
        prefill(m, random_prompt(m.spec, 1, 8, 0, "cpu"))
    assert m.kv_cache_bytes() == 2_560  # 2 layers * 8 positions * (32 + 8) * 4 bytes
    c, _ = _counts(m, decode_one_token, torch.zeros(1, 1, dtype=torch.long), 8)
    # q_proj 2*1*64*(4*24) = 12,288; kv_a 2*64*(32+8) = 5,120; o 2*(4*16)*64 = 8,192 in both forms
    for layer in range(2):
        assert _attention(c, layer) == {"q_proj": 12_288, "kv_a_proj": 5_120, **step, "o_proj": 8_192}
    assert m.kv_cache_bytes() == 2_880  # 9 positions: 2 * 9 * 40 * 4


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_both_forms_give_the_same_logits_and_count_different_flops(attention):
    spec = get_model("tiny-deepseek-lite")
    models = {f: build_model(spec, attention=attention, mla=f) for f in ("transformers", "absorbed")}
    prompt = random_prompt(spec, 2, 6, 1, "cpu")
    tokens = random_prompt(spec, 2, 4, 2, "cpu")
    logits, counted = {}, {}
    for f, m in models.items():
        m.setup_caches(2, 10)
        out = [_counts(m, prefill, prompt, "all")[1]]
        steps = 0
        for i in range(4):
            c, o = _counts(m, decode_one_token, tokens[:, i:i + 1], 6 + i)
            out.append(o)
            steps += sum(c[(0, op)] for op in ATTENTION_OPS if (0, op) in c)
        logits[f], counted[f] = torch.cat(out, dim=1), steps
    torch.testing.assert_close(logits["absorbed"], logits["transformers"], rtol=1e-4, atol=1e-5)
    # and equal to recomputing the whole prefix without a cache (expanded: no cache, no absorption)
    with torch.no_grad():
        full = forward_no_cache(models["absorbed"], torch.cat((prompt, tokens), dim=1), "all")
    torch.testing.assert_close(logits["absorbed"][:, 6:], full[:, 6:10], rtol=1e-4, atol=1e-5)
    # layer 0 over the 4 steps (contexts c = 7..10, b 2; shared q_proj 24,576 + kv_a 10,240 + o 16,384):
    # transformers: kv_b 2*2c*32*128 = 16,384 c, scores 2*2*4*c*24 = 384 c, values 256 c: 17,024 c
    # absorbed: absorb_q and absorb_v 8,192 each, scores 2*2*4*c*40 = 640 c, values 512 c: 1,152 c
    shared = 4 * (24_576 + 10_240 + 16_384)
    assert counted["transformers"] == shared + 17_024 * (7 + 8 + 9 + 10) == 783_616
    assert counted["absorbed"] == shared + 4 * 16_384 + 1_152 * 34 == 309_504


def test_rotary_reaches_only_the_rope_part_of_the_cache():
    # the same token at two positions: the latent c_kv is position-free, k_pe is rotated
    m = build_model(get_model("tiny-deepseek-lite"))
    m.setup_caches(1, 4)
    with torch.no_grad():
        prefill(m, torch.full((1, 4), 7, dtype=torch.long))
    cache = m.caches()[0]
    torch.testing.assert_close(cache.k[0, 0, 3], cache.k[0, 0, 0])
    assert not torch.allclose(cache.v[0, 0, 3], cache.v[0, 0, 0])


def test_attention_counts_and_cache_equal_transformers():
    # transformers' DeepSeek-V3 of the fixture, its MoE layers replaced by dense ones (latent attention
    # is what is compared: its modules per layer, and every decode step's attention FLOPs)
    fx = json.loads((HF / "deepseek_v3.json").read_text())
    cfg = fx["config"]
    spec = ModelSpec(name="hf-deepseek", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=4,
                     intermediate_size=128, vocab_size=128, max_position_embeddings=64,
                     **{k: cfg[k] for k in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                                            "v_head_dim")})
    m = build_model(spec, attention="eager")
    b, s = fx["batch"], fx["prompt"]
    m.setup_caches(b, s + len(fx["decode_steps"]))
    c, out = _counts(m, prefill, random_prompt(spec, b, s, 0, "cpu"), "all")
    hf = fx["prefill"]["logits_all"]["by_module"]
    pre = "DeepseekV3ForCausalLM.model.layers."
    for layer in range(3):
        a = _attention(c, layer)
        for op, module in (("q_a_proj", "q_a_proj"), ("q_b_proj", "q_b_proj"), ("kv_a_proj", "kv_a_proj_with_mqa"),
                           ("kv_b_proj", "kv_b_proj"), ("o_proj", "o_proj")):
            assert a[op] == hf[f"{pre}{layer}.self_attn.{module}"]
        assert sum(a.values()) == hf[f"{pre}{layer}.self_attn"]  # the attention matmuls included
    assert m.kv_cache_bytes() == fx["kv_cache_bytes"]["after_prefill"]
    for step in fx["decode_steps"]:
        ctx = step["context_before"]
        c, out = _counts(m, decode_one_token, out[:, -1].argmax(-1, keepdim=True), ctx)
        # the fixture's step minus its dense layer 98,304, 2 MoE layers 75,776 each and LM head 32,768
        # (tests/test_hf_moe_mla.py): 3 attention layers of 43,008 + 8,832 c, c = context_before + 1
        attn = sum(sum(_attention(c, layer).values()) for layer in range(3))
        assert attn == step["flops"] - 98_304 - 2 * 75_776 - 32_768 == 3 * (43_008 + 8_832 * (ctx + 1))
        assert m.kv_cache_bytes() == step["kv_cache_bytes_after"]


def test_a_model_built_in_the_other_form_is_refused():
    spec = get_model("tiny-deepseek-lite")
    wl = Workload(batch=1, prompt=4, gen=2, weight_dtype="fp32", act_dtype="fp32", mla="absorbed")
    with pytest.raises(SpecError, match="form 'transformers', the workload asks for 'absorbed'"):
        runner.count(spec, wl, model=build_model(spec), fvcore=False)
    with pytest.raises(SpecError, match="unknown latent attention form 'fused'; allowed: transformers, absorbed"):
        build_model(spec, mla="fused")


def test_the_sharded_reference_refuses_latent_attention():
    from costmodel.parallel import Split
    from profiler.parallel import check_parallel

    wl = Workload(batch=1, prompt=8, gen=2, weight_dtype="fp32", act_dtype="fp32")
    for tp in (1, 2):
        with pytest.raises(SpecError, match="latent attention; the sharded reference splits q/k/v attention") as e:
            check_parallel(get_model("tiny-deepseek"), wl, Split(tp=tp))
        assert "\n" not in str(e.value)


def test_real_weights_are_refused_for_latent_attention(tmp_path):
    with pytest.raises(SpecError, match="tiny-deepseek is a latent-attention model: real weights load into dense"):
        build_model(get_model("tiny-deepseek"), weights=str(tmp_path))
