"""Presets against published parameter counts, and the offline HF config.json reader."""

import json

import pytest

from costmodel import Workload, analyze, get_model, load_hf_config
from costmodel.errors import SpecError
from costmodel.models import PRESETS

# Published totals (model cards / the checkpoints' own tensor sizes), tied embeddings counted once.
PUBLISHED_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
    "qwen2-7b": 7_615_616_512,
    "gemma-7b": 8_537_680_896,
    "phi-3-mini": 3_821_079_552,
}


@pytest.mark.parametrize("name, params", PUBLISHED_PARAMS.items())
def test_published_parameter_counts(name, params):
    assert get_model(name).num_params == params


def test_gpt3_175b_is_175_billion():
    # Brown et al. 2020 report "175.0B"; tolerance 0.5 %
    assert get_model("gpt3-175b").num_params == pytest.approx(175.0e9, rel=0.005)


def test_gpt2_by_hand():
    # embeddings 50257*768 + positions 1024*768 = 38,597,376 + 786,432; per layer 7,087,872
    # (2 LayerNorms 2*1536, qkv 768*2304 + 2304, o 768*768 + 768, fc 768*3072 + 3072,
    #  proj 3072*768 + 768); 12 layers; final LayerNorm 1536; LM head tied: 0
    assert get_model("gpt2").layer_params() == 7_087_872
    assert 38_597_376 + 786_432 + 12 * 7_087_872 + 1536 == 124_439_808


def test_llama_2_7b_kv_cache_is_half_a_mebibyte_per_token_in_fp16():
    # 2 (k, v) * 32 layers * 32 kv heads * 128 * 2 bytes = 524,288
    r = analyze(get_model("llama-2-7b"), Workload(batch=1, prompt=16, gen=1, act_dtype="fp16"))
    assert r.memory.kv_cache_bytes_per_token == 524_288


def test_llama_2_70b_gqa_cache_is_eight_times_smaller():
    # 2 * 80 layers * 8 kv heads * 128 * 2 bytes = 327,680
    r = analyze(get_model("llama-2-70b"), Workload(batch=1, prompt=16, gen=1))
    assert r.memory.kv_cache_bytes_per_token == 327_680


def test_every_preset_analyzes():
    for spec in PRESETS.values():
        r = analyze(spec, Workload(batch=1, prompt=8, gen=2))
        expected = {"decoder": ["prefill", "decode"], "encoder": ["encode"],
                    "encoder-decoder": ["encode", "prefill", "decode"]}[spec.arch]
        assert list(r.phases) == expected
        assert all(p.matmul_flops > 0 for p in r.phases.values())


def write(tmp_path, cfg, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


# Excerpts of the published config.json files (fields the reader uses plus some it must ignore).
GPT2_CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_ctx": 1024,
               "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257,
               "activation_function": "gelu_new", "resid_pdrop": 0.1, "task_specific_params": {}}
LLAMA2_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                 "intermediate_size": 11008, "max_position_embeddings": 4096, "num_attention_heads": 32,
                 "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05,
                 "vocab_size": 32000, "hidden_act": "silu", "tie_word_embeddings": False,
                 "torch_dtype": "float16", "rope_scaling": None}
MISTRAL_CONFIG = {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                  "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
                  "num_key_value_heads": 8, "vocab_size": 32000, "sliding_window": 4096}
QWEN2_05B_CONFIG = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                    "max_position_embeddings": 32768, "num_attention_heads": 14, "num_hidden_layers": 24,
                    "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                    "rope_theta": 1000000.0}
GEMMA_2B_CONFIG = {"model_type": "gemma", "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048,
                   "intermediate_size": 16384, "max_position_embeddings": 8192, "num_attention_heads": 8,
                   "num_hidden_layers": 18, "num_key_value_heads": 1, "vocab_size": 256000}
PHI3_MINI_CONFIG = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
                    "max_position_embeddings": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
                    "num_key_value_heads": 32, "vocab_size": 32064, "tie_word_embeddings": False}


@pytest.mark.parametrize("cfg, params", [
    (GPT2_CONFIG, 124_439_808),
    (LLAMA2_CONFIG, 6_738_415_616),
    (MISTRAL_CONFIG, 7_241_732_096),
    (QWEN2_05B_CONFIG, 494_032_768),  # Qwen2-0.5B: "0.49B"
    (GEMMA_2B_CONFIG, 2_506_172_416),  # gemma-2b: "2.51B"
    (PHI3_MINI_CONFIG, 3_821_079_552),
])
def test_hf_configs_give_published_counts(tmp_path, cfg, params):
    assert load_hf_config(str(write(tmp_path, cfg))).num_params == params


def test_hf_family_details(tmp_path):
    qwen = load_hf_config(str(write(tmp_path, QWEN2_05B_CONFIG)))
    assert qwen.attention_bias and not qwen.attention_out_bias and qwen.tie_word_embeddings
    assert (qwen.num_kv_heads, qwen.head_dim) == (2, 64)
    gemma = load_hf_config(str(write(tmp_path, GEMMA_2B_CONFIG)))
    assert gemma.head_dim == 256 and gemma.hidden_size // gemma.num_heads == 256
    # HF's Gemma reads `hidden_activation` (default gelu_pytorch_tanh) and ignores `hidden_act`
    assert gemma.tie_word_embeddings and gemma.activation == "gelu_tanh"
    gpt2 = load_hf_config(str(write(tmp_path, GPT2_CONFIG)))
    assert (gpt2.family, gpt2.intermediate_size, gpt2.position_kind) == ("gpt2", 3072, "learned")


def test_folder_path_and_name(tmp_path):
    folder = tmp_path / "my-llama"
    folder.mkdir()
    write(folder, LLAMA2_CONFIG)
    spec = get_model(str(folder))
    assert spec.name == "my-llama" and spec.num_params == 6_738_415_616


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed config .*: Expecting property name enclosed in double quotes at line 1"),
    ('{"model_type": "llama", "hidden_size": 4096', "malformed config"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({**LLAMA2_CONFIG, "model_type": "xlnet"}), "unsupported model_type .xlnet.; supported: gpt2, llama"),
    (json.dumps({k: v for k, v in LLAMA2_CONFIG.items() if k != "num_hidden_layers"}),
     "missing required field 'num_hidden_layers' for model_type 'llama'"),
    (json.dumps({**LLAMA2_CONFIG, "hidden_size": "4096"}), "field 'hidden_size' must be an integer, got '4096'"),
    (json.dumps({**LLAMA2_CONFIG, "num_attention_heads": 30, "num_key_value_heads": 30}),
     r"config.json: hidden_size \(4096\) is not divisible by num_heads \(30\)"),
    (json.dumps({**LLAMA2_CONFIG, "num_key_value_heads": 5}), r"must be a multiple of num_kv_heads \(5\)"),
    (json.dumps({**LLAMA2_CONFIG, "hidden_act": "mish"}), "unsupported hidden_act 'mish'"),
    (json.dumps({**LLAMA2_CONFIG, "rope_theta": "big"}), "field 'rope_theta' must be a number"),
])
def test_bad_configs(tmp_path, content, message):
    p = tmp_path / "config.json"
    p.write_text(content)
    with pytest.raises(SpecError, match=message):
        load_hf_config(str(p))


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(SpecError, match="cannot read config"):
        get_model(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(SpecError, match=r"unknown model 'llama-9' \(`costmodel models` lists the \d+ built-in"):
        get_model("llama-9")
    # did-you-mean: a name it begins, then the closest spellings (difflib), at most three
    with pytest.raises(SpecError, match=r"unknown model 'llama-7b'; did you mean 'llama-2-7b' or "):
        get_model("llama-7b")
    with pytest.raises(SpecError, match=r"unknown model 'mixtral'; did you mean 'mixtral-8x7b' or 'mixtral-8x22b'\?"):
        get_model("mixtral")
