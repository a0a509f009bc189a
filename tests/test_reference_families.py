"""The reference model beyond dense decoders: BERT (encode), T5 and the 2017 Transformer (encode,
prefill with the one-time cross K/V projection, decode over self and cross caches), and mixtures
of experts (Mixtral; Qwen-MoE's gated shared expert). Counts are checked exactly, by hand."""

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from costmodel import ModelSpec, Workload, get_model  # noqa: E402
from reports.cli import main  # noqa: E402
from costmodel.errors import SpecError  # noqa: E402
from profiler.encdec import relative_position_bucket  # noqa: E402
from profiler.flops import count_call  # noqa: E402
from profiler.generate import decode_one_token, encode, forward_no_cache, prefill, random_prompt  # noqa: E402
from profiler.model import Transformer, build_model  # noqa: E402
from profiler.runner import count  # noqa: E402

TINY = ["tiny-bert", "tiny-t5", "tiny-t5-gated", "tiny-transformer", "tiny-mixtral", "tiny-qwen-moe"]
FP32 = dict(weight_dtype="fp32", act_dtype="fp32")


@pytest.mark.parametrize("name", TINY)
def test_parameters_are_the_specs(name):
    spec = get_model(name)
    m = build_model(spec, dtype="bf16")
    assert m.num_params() == spec.num_params  # tied matrices counted once on both sides
    assert m.weight_bytes() == 2 * spec.num_params


def _meta(name):
    with torch.device("meta"):  # shapes only: no memory for the weights
        return Transformer(get_model(name))


def test_published_parameter_counts():
    assert _meta("bert-base").num_params() == 109_482_240  # bert-base-uncased, with its pooler
    assert _meta("t5-small").num_params() == 60_506_624  # t5-small, shared embedding
    mix = _meta("mixtral-8x7b")
    total = mix.num_params()
    # one expert: 3 * 4096 * 14336 = 176,160,768; each token skips 6 of 8 in each of 32 layers
    expert = sum(p.numel() for p in mix.layers[0].mlp.experts[0].parameters())
    assert expert == 176_160_768
    active = total - 32 * 6 * expert
    assert total == get_model("mixtral-8x7b").num_params and active == get_model("mixtral-8x7b").active_params
    assert abs(total / 46.7e9 - 1) < 0.002 and abs(active / 12.9e9 - 1) < 0.002  # published: 46.7 B, 12.9 B


def test_t5_buckets_by_hand():
    rel = torch.tensor([-200, -20, -8, -1, 0, 1, 7, 8, 20])
    # bidirectional, 32 buckets: 16 per sign, exact below 8; 8 + log(|r|/8) / log(128/8) * 8 above
    # -20: 8 + 0.916/2.773*8 = 10.6 -> 10; -200: 17.3 -> capped at 15; positive offsets + 16
    assert relative_position_bucket(rel, True, 32).tolist() == [15, 10, 8, 1, 0, 17, 23, 24, 26]
    # causal (decoder), 32 buckets: exact below 16; -20: 16 + log(20/16)/log(128/16)*16 = 17.7 -> 17
    assert relative_position_bucket(rel, False, 32).tolist() == [31, 17, 8, 1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-t5-gated", "tiny-transformer", "tiny-mixtral", "tiny-qwen-moe"])
def test_cached_decode_equals_recomputing_the_prefix(name):
    spec = get_model(name)
    m = build_model(spec, seed=1)
    src = random_prompt(spec, 2, 9, 0, "cpu")
    seq = random_prompt(spec, 2, 3, 1, "cpu")
    with torch.no_grad():
        if spec.arch == "encoder-decoder":
            m.setup_caches(2, 6, source_len=9)
            encode(m, src)
        else:
            m.setup_caches(2, 6)
        logits = prefill(m, seq)
        for pos in range(3, 6):
            tok = logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, tok], 1)
            logits = decode_one_token(m, tok, pos)
            caches = m.caches()
            m.drop_caches()  # the same model, its encoder output kept: recompute the whole prefix
            torch.testing.assert_close(logits, forward_no_cache(m, seq), rtol=1e-4, atol=1e-5)
            for layer, cache in zip(m.layers, caches):  # put the caches back
                layer.attention.kv_cache = cache
            for layer, cache in zip(m.layers, caches[len(m.layers):]):
                layer.cross_attention.kv_cache = cache


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-t5", "tiny-transformer"])
def test_eager_and_sdpa_attention_agree(name):
    spec = get_model(name)
    toks = random_prompt(spec, 2, 7, 2, "cpu")
    outs = []
    for attention in ("eager", "sdpa"):
        m = build_model(spec, attention=attention, seed=3)
        with torch.no_grad():
            out = encode(m, toks)
            outs.append(out[0] if spec.arch == "encoder" else prefill(m, toks[:, :4], "all"))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_bert_encoder_is_bidirectional_with_pooler_and_mlm_head():
    spec = get_model("tiny-bert")
    m = build_model(spec)
    toks = random_prompt(spec, 2, 8, 0, "cpu")
    with torch.no_grad():
        logits, pooled = encode(m, toks)
        changed = toks.clone()
        changed[:, -1] = (changed[:, -1] + 1) % spec.vocab_size
        logits2, _ = encode(m, changed)
    assert tuple(logits.shape) == (2, 8, 256) and tuple(pooled.shape) == (2, 64)
    assert not torch.allclose(logits[:, 0], logits2[:, 0])  # the first position sees the last token
    assert m.lm_head.weight is m.tok_embeddings.weight and m.lm_head.bias is not None


def test_experts_equal_a_token_by_token_loop():
    spec = get_model("tiny-qwen-moe")
    moe = build_model(spec, seed=2).layers[0].mlp
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = moe(x)
        flat = x.reshape(10, 64)
        probs = torch.softmax(moe.router(flat), -1)
        want = torch.zeros_like(flat)
        for t in range(10):
            w, idx = probs[t].topk(2)  # Qwen-MoE: the top-2 weights are not renormalised
            for wj, j in zip(w, idx.tolist()):
                want[t] += wj * moe.experts[j](flat[t])
            want[t] += torch.sigmoid(moe.shared_expert_gate(flat[t])) * moe.shared_expert(flat[t])
    torch.testing.assert_close(got, want.view(2, 5, 64), rtol=1e-5, atol=1e-6)


def test_expert_flops_do_not_depend_on_the_routing():
    spec = get_model("tiny-mixtral")  # h 64, 4 experts of 96, top 2
    m = build_model(spec)
    moe = m.layers[0].mlp
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0)).abs() + 0.1  # positive
    with torch.no_grad():
        _, spread = count_call(moe, x)
        moe.router.weight.zero_()
        moe.router.weight[0] = moe.router.weight[1] = 1.0  # every token now picks experts 0 and 1
        moe.router.weight[0, 0] = 5.0
        _, skewed = count_call(moe, x)
        assert set(moe.router(x).topk(2).indices.flatten().tolist()) == {0, 1}  # all on two experts
    # 10 tokens x 2 experts = 20 routed rows: 2 * 20 * 64 * 96 = 245,760 per expert matrix;
    # router 2 * 10 * 64 * 4 = 5,120
    for sc in (spread, skewed):
        assert sc.counted_total == 5_120 + 3 * 245_760
    # the counter names modules from the MoE module itself: gate, up and down of experts 0 and 1 only
    assert skewed.counted_total == spread.counted_total


def _t5_case(**kw):
    return count(get_model("tiny-t5"), Workload(batch=2, prompt=16, gen=6, **FP32, **kw), attention="eager",
                 fvcore=False)


def test_t5_counts_and_caches_by_hand():
    r = _t5_case()
    assert r.ok and r.phases == ("encode", "prefill", "decode")
    pre = r.phase_dict("prefill")
    # tiny-t5: h 64, 4 heads of 16, d_ff 128 (ReLU), V 256 tied; batch 2, source 16, decoder prompt 1.
    # Per decoder layer: self q,k,v,o 4 * 2*2*64*64 = 65,536; self QK^T + PV 2 * 2*2*4*1*1*16 = 512;
    # cross q,o 2 * 2*2*64*64 = 32,768; cross k,v from 32 source tokens 2 * 2*32*64*64 = 524,288;
    # cross QK^T + PV 2 * 2*2*4*1*16*16 = 8,192; MLP 2 * 2*2*64*128 = 65,536 -> 696,832.
    # Two layers 1,393,664; LM head 2*2*64*256 = 65,536 -> 1,459,200
    assert pre["counted_matmul_flops"] == pre["analytic_matmul_flops"] == 1_459_200
    # caches: 2 layers x (k, v) x 64 x 4 B = 1,024 B per position and row.
    # after prefill: self 2 rows x 1 position = 2,048; cross 2 rows x 16 source positions = 32,768
    assert (pre["self_kv_cache_bytes"], pre["cross_kv_cache_bytes"]) == (2_048, 32_768)
    dec = r.phase_dict("decode")  # self: 2 rows x (1 + 6 - 1) positions = 12,288; cross unchanged
    assert (dec["self_kv_cache_bytes"], dec["cross_kv_cache_bytes"]) == (12_288, 32_768)
    assert dec["analytic_self_kv_cache_bytes"] == 12_288 and dec["analytic_cross_kv_cache_bytes"] == 32_768
    # decode reads cross K/V from the cache: no cross projection after the prefill
    cross_kv = [o for o in r.rows if o.op in ("cross_k_proj", "cross_v_proj")]
    assert {(o.phase, o.counted_matmul_flops) for o in cross_kv} == {("prefill", 262_144)}


def test_t5_without_a_cache_projects_cross_kv_every_step():
    r = _t5_case(kv_cache=False)
    assert r.ok and r.kv_cache_bytes["decode"] == r.cross_kv_cache_bytes["decode"] == 0
    dec = {(o.layer, o.op): o.counted_matmul_flops for o in r.rows if o.phase == "decode"}
    # 5 steps, each re-projecting 2 x 16 source tokens: 5 * 2*32*64*64 = 1,310,720 per layer and matrix
    assert dec[(0, "cross_k_proj")] == dec[(1, "cross_v_proj")] == 1_310_720


def test_a_wrong_cross_cache_is_caught(monkeypatch):
    from profiler import runner

    monkeypatch.setattr(runner, "cross_kv_cache_bytes", lambda spec, wl: 0)  # forget the cross cache
    r = _t5_case()
    assert [(m.phase, m.what, m.analytic, m.measured) for m in r.mismatches] == [
        ("prefill", "cross_kv_cache_bytes", 0, 32_768)]


def test_decoder_only_specs_without_a_reference_are_refused_in_one_line():
    spec = ModelSpec(name="sinus-gpt", num_layers=1, hidden_size=64, num_heads=4, intermediate_size=128,
                     vocab_size=256, max_position_embeddings=64, position_kind="sinusoidal")
    with pytest.raises(SpecError, match="decoder-only with sinusoidal positions"):
        build_model(spec)
    with pytest.raises(SpecError, match="input 200 exceeds tiny-bert"):
        count(get_model("tiny-bert"), Workload(prompt=200, gen=1, **FP32))


def invoke(*args):
    return CliRunner().invoke(main, list(args))


FAST = ["--repeat", "1", "--warmup", "0", "--no-fvcore"]


def test_profile_bert_has_one_encode_phase():
    r = invoke("profile", "tiny-bert", "--batch", "2", "--prompt", "8", "--gen", "1", *FAST, "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["match"] and "prefill" not in d and "decode" not in d
    enc = d["encode"]
    assert enc["counted_matmul_flops"] == enc["analytic_matmul_flops"] and enc["tokens"] == 16
    assert {o["phase"] for o in d["ops"]} == {"encode"} and {"pooler", "mlm_dense", "lm_head"} <= {
        o["op"] for o in d["ops"]}


def test_profile_t5_json_has_three_phases_and_both_caches():
    r = invoke("profile", "tiny-t5", "--batch", "2", "--prompt", "8", "--gen", "3", *FAST, "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["match"] and all(p in d for p in ("encode", "prefill", "decode"))
    for p in ("prefill", "decode"):  # the existing keys, plus the split
        x = d[p]
        assert x["kv_cache_bytes"] == x["self_kv_cache_bytes"] + x["cross_kv_cache_bytes"]
    # cross: 2 rows x 8 source positions x 1,024 B = 16,384; self: 2 x (1 + 3 - 1) x 1,024 = 6,144
    assert d["memory"]["cross_kv_cache_bytes"] == d["memory"]["analytic_cross_kv_cache_bytes"] == 16_384
    assert d["memory"]["self_kv_cache_bytes"] == 6_144
    assert {t["phase"] for t in d["timing"]} == {"encode", "prefill", "decode"}


def test_profile_table_for_moe_and_encoder_decoder():
    for model in ("tiny-qwen-moe", "tiny-transformer"):
        r = invoke("profile", model, "--prompt", "6", "--gen", "3", *FAST, "--no-compare-cache")
        assert r.exit_code == 0, r.output
        assert r.output.rstrip().endswith("KV-cache and weight bytes equal.")
    assert "cross-attention: measured" in r.output and "encode " in r.output
