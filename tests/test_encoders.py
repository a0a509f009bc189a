"""Encoder-only (BERT) and encoder-decoder (T5, the 2017 Transformer) models: phases, ops, caches."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from costmodel import Workload, analyze, get_model, load_hf_config
from costmodel.analysis import decode_cost, decode_step_cost, encode_cost, prefill_cost
from reports.cli import main
from costmodel.errors import SpecError

BERT = get_model("tiny-bert")  # h 64, 4 heads of 16, MLP 256, vocab 256, post-norm, pooler + MLM head
T5 = get_model("tiny-t5")  # h 64, 4 heads of 16, MLP 128 (ReLU), 2 + 2 layers, relative bias
WL = Workload(batch=2, prompt=8, gen=3)


def ops(cost):
    return {o.op: o for o in cost.before + cost.layer + cost.after}


@pytest.mark.parametrize("name, params", [
    ("bert-base", 109_482_240),  # bert-base-uncased with its pooler
    ("t5-small", 60_506_624),
    ("t5-base", 222_903_552),
    ("t5-large", 737_668_096),
])
def test_published_counts(name, params):
    assert get_model(name).num_params == params


def test_bert_large_and_transformer_base():
    assert get_model("bert-large").num_params == pytest.approx(335e6, rel=0.005)  # "340M" in the paper
    assert get_model("transformer-base").num_params == pytest.approx(65e6, rel=0.05)  # Vaswani: "65M"


def test_tiny_bert_params_by_hand():
    # embeddings 256*64 + positions 128*64 + 2 types*64 + LayerNorm 128 = 24,832
    # layer: attention 4 * (64*64 + 64) = 16,640; MLP 64*256 + 256 + 256*64 + 64 = 33,088;
    #        2 LayerNorms 256 -> 49,984, two layers 99,968
    # pooler 64*64 + 64 = 4,160; MLM head 64*64 + 64 + LayerNorm 128 + decoder bias 256 = 4,544
    assert BERT.num_params == 24_832 + 99_968 + 4_160 + 4_544 == 133_504


def test_bert_has_one_bidirectional_encode_phase():
    r = analyze(BERT, WL)
    assert list(r.phases) == ["encode"] and r.prefill is None and r.decode is None
    o = ops(r.encode.cost)  # 16 tokens
    assert o["q_proj"].matmul_flops == 2 * 16 * 64 * 64 == 131_072
    assert o["attn_scores"].matmul_flops == 2 * 2 * 4 * 8 * 8 * 16 == 16_384  # every pair: bidirectional
    assert "kv_cache_update" not in o and o["attn_scores"].kv_read_bytes == 0
    assert o["pooler"].matmul_flops == 2 * 2 * 64 * 64  # first token of each sequence
    assert o["lm_head"].matmul_flops == 2 * 16 * 64 * 256  # MLM decoder over every position
    assert o["token_type_embedding"].flops == 16 * 64
    # --causal never applies to an encoder
    assert ops(encode_cost(BERT, replace(WL, causal=True)))["attn_scores"].flops == 16_384
    names = [x.op for x in r.encode.cost.layer]
    assert names.index("attn_norm") == names.index("attn_residual") + 1  # post-norm
    assert r.memory.kv_cache_bytes == 0 and r.kv_cache_saving() is None
    assert "sampling_argmax" not in o


def test_tiny_t5_params_by_hand():
    # shared embedding 256*64 = 16,384 (tied LM head: 0)
    # encoder layer: attention 4*64*64 = 16,384 + MLP 2*64*128 = 16,384 + 2 RMSNorms 128 = 32,896 (x2),
    #   + relative bias 32 buckets * 4 heads + final norm 64 = 192
    # decoder layer: 2 attentions 32,768 + MLP 16,384 + 3 norms 192 = 49,344 (x2), + 192
    assert T5.num_params == 16_384 + 2 * 32_896 + 192 + 2 * 49_344 + 192 == 181_248


def test_t5_phases_by_hand():
    r = analyze(T5, WL)
    assert list(r.phases) == ["encode", "prefill", "decode"]
    enc = ops(r.encode.cost)  # 2 sequences of 8 source tokens
    assert enc["q_proj"].matmul_flops == 2 * 16 * 64 * 64
    assert enc["attn_scores"].matmul_flops == 2 * 2 * 4 * 8 * 8 * 16 == 16_384
    assert enc["attn_softmax"].flops == 5 * 2 * 4 * 64  # T5 does not scale by 1/sqrt(d): 5, not 6
    assert enc["attn_position_bias"].flops == 2 * 4 * 64
    assert r.encode.cost.num_layers == 2
    pre = ops(r.prefill.cost)  # the decoder's start token, 2 sequences
    assert pre["q_proj"].matmul_flops == 2 * 2 * 64 * 64
    # cross keys and values projected once, from the 16 encoder positions, in prefill
    assert pre["cross_k_proj"].matmul_flops == pre["cross_v_proj"].matmul_flops == 2 * 16 * 64 * 64
    assert pre["cross_attn_scores"].matmul_flops == 2 * 2 * 4 * 1 * 8 * 16 == 2048
    assert pre["attn_scores"].matmul_flops == 2 * 2 * 4 * 1 * 1 * 16 == 256
    dec = ops(r.decode.cost)  # steps 1 and 2: self over 2 and 3 keys, cross over the 8 source keys
    assert "cross_k_proj" not in dec  # read from the cross cache instead
    assert dec["cross_attn_scores"].matmul_flops == 2 * 2048
    assert dec["attn_scores"].matmul_flops == 2 * 2 * 4 * (2 + 3) * 16 == 1280
    assert dec["cross_attn_scores"].kv_read_bytes == 2 * (2 * 8 * 64 * 2)  # K of 8 positions, bf16
    # caches: per position 2 (k, v) * 2 layers * 64 * 2 bytes = 512
    m = r.memory
    assert m.kv_cache_bytes_per_token == 512
    assert m.self_kv_cache_bytes == 2 * (1 + 3 - 1) * 512 == 3072
    assert m.cross_kv_cache_bytes == 2 * 8 * 512 == 8192
    assert m.kv_cache_bytes == 3072 + 8192


def test_t5_without_cache_projects_cross_kv_every_step():
    dec = ops(decode_cost(T5, replace(WL, kv_cache=False)))
    assert dec["cross_k_proj"].matmul_flops == 2 * (2 * 16 * 64 * 64)  # two steps
    # self-attention recomputes the decoder prefix of 2, then 3 tokens: 2*b*heads*L*L*d
    assert dec["attn_scores"].matmul_flops == 2 * 2 * 4 * (4 + 9) * 16


@pytest.mark.parametrize("spec", [T5, get_model("tiny-t5-gated"), get_model("transformer-base")])
@pytest.mark.parametrize("wl", [
    Workload(batch=2, prompt=8, gen=5),
    Workload(batch=1, prompt=5, gen=6, kv_cache=False, logits="all", decoder_prompt=3),
    Workload(batch=1, prompt=4, gen=4, beams=2),
])
def test_encdec_decode_total_equals_the_loop(spec, wl):
    dec = decode_cost(spec, wl)
    steps = [decode_step_cost(spec, wl, i) for i in range(1, wl.gen)]
    for f in ("flops", "matmul_flops", "weight_bytes", "act_read_bytes", "kv_read_bytes", "kv_write_bytes"):
        assert dec.total(f) == sum(s.total(f) for s in steps), f


def test_transformer_2017_scales_the_embedding():
    spec = get_model("transformer-base")  # h 512; 2 sequences x 8 source tokens = 16 tokens
    o = ops(encode_cost(spec, WL))
    assert o["embedding_scale"].flops == 16 * 512  # x * sqrt(d_model), one multiply an element
    assert o["pos_embedding"].flops == 16 * 512 and o["pos_embedding"].weight_bytes == 0  # a fixed table


def test_decoder_prompt():
    r = analyze(T5, replace(WL, decoder_prompt=4))
    assert ops(r.prefill.cost)["q_proj"].matmul_flops == 2 * 8 * 64 * 64  # 2 sequences x 4 tokens
    assert r.memory.self_kv_cache_bytes == 2 * (4 + 3 - 1) * 512
    with pytest.raises(SpecError, match="decoder_prompt is for encoder-decoder models"):
        analyze(get_model("tiny-llama"), replace(WL, decoder_prompt=2))


def test_t5_gated_untied_has_lm_head_weights_and_no_scale():
    spec = get_model("tiny-t5-gated")
    assert spec.num_encoder_layers == 3 and spec.num_layers == 2
    o = ops(prefill_cost(spec, WL))
    assert "lm_head_scale" not in o and "mlp_gate" in o
    assert "lm_head_scale" in ops(prefill_cost(T5, WL))  # tied T5 scales by d_model ** -0.5
    assert analyze(spec, WL).encode.cost.num_layers == 3


def write(tmp_path, cfg):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def test_hf_bert_roberta_t5(tmp_path):
    bert = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768,
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu"}
    assert load_hf_config(write(tmp_path, bert)).num_params == 109_482_240
    roberta = {**bert, "model_type": "roberta", "vocab_size": 50265, "max_position_embeddings": 514,
               "type_vocab_size": 1}
    assert load_hf_config(write(tmp_path, roberta)).num_params == 124_645_632  # roberta-base
    t5 = {"model_type": "t5", "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8,
          "vocab_size": 32128, "relative_attention_num_buckets": 32, "feed_forward_proj": "relu",
          "is_encoder_decoder": True}
    assert load_hf_config(write(tmp_path, t5)).num_params == 60_506_624
    v11 = {**t5, "d_ff": 1024, "num_heads": 6, "num_layers": 8, "feed_forward_proj": "gated-gelu",
           "tie_word_embeddings": False}
    assert load_hf_config(write(tmp_path, v11)).num_params == 76_961_152  # google/t5-v1_1-small
    with pytest.raises(SpecError, match="unsupported feed_forward_proj 'swiglu'"):
        load_hf_config(write(tmp_path, {**t5, "feed_forward_proj": "swiglu"}))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_encoder_layers=3), "num_encoder_layers is for arch 'encoder-decoder'"),
    (dict(arch="seq2seq"), "unknown arch 'seq2seq'; allowed: decoder, encoder, encoder-decoder"),
    (dict(pooler=True), "pooler, mlm_head and type_vocab_size are for arch 'encoder'"),
    (dict(position_kind="relative"), "position_kind 'relative' needs relative_attention_buckets > 0"),
])
def test_bad_arch_fields(kwargs, message):
    with pytest.raises(SpecError, match=message):
        replace(get_model("tiny-llama"), **kwargs)


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_encoder_json_and_table():
    r = run("report", "bert-base", "--prompt", "128", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["phases"] == ["encode"] and "prefill" not in d and "decode" not in d
    assert d["workload"]["gen"] == 1  # --gen not given: 1 for an encoder-only model
    assert {o["phase"] for o in d["ops"]} == {"encode"}
    assert sum(o["flops"] for o in d["ops"]) == d["encode"]["flops"]
    table = run("report", "bert-base", "--prompt", "128").output
    assert "encode FLOPs" in table and "prefill FLOPs" not in table and "no KV cache (encoder-only)" in table
    warned = run("report", "bert-base", "--gen", "5")
    assert warned.exit_code == 0 and "gen=5" in warned.output and "ignored" in warned.output


def test_cli_encoder_decoder_json_and_table():
    r = run("report", "t5-small", "--prompt", "64", "--gen", "8", "--decoder-prompt", "2", "--format", "json")
    d = json.loads(r.output)
    assert d["phases"] == ["encode", "prefill", "decode"]
    assert d["decode"]["steps"] == 7 and d["workload"]["decoder_prompt"] == 2
    mem = d["memory"]
    assert mem["kv_cache_bytes"] == mem["self_kv_cache_bytes"] + mem["cross_kv_cache_bytes"]
    assert mem["cross_kv_cache_bytes"] == 64 * 12288  # 64 source positions x 2 * 6 * 512 * 2 bytes
    for phase in d["phases"]:
        assert sum(o["flops"] for o in d["ops"] if o["phase"] == phase) == d[phase]["flops"]
    table = run("report", "t5-small", "--prompt", "64", "--gen", "8").output
    assert "encode FLOPs" in table and "cross_k_proj" in table and "cross-attention" in table
