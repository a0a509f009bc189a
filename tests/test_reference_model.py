"""The reference transformer: shapes and parameters from the spec, the KV cache, the decode loop,
the decoding strategies, and real weights from a safetensors folder."""

import itertools
import json
import os

import pytest

torch = pytest.importorskip("torch")

from costmodel import ModelSpec, get_model  # noqa: E402
from costmodel.analysis import weight_bytes  # noqa: E402
from costmodel.errors import SpecError  # noqa: E402
from profiler.generate import decode_one_token, forward_no_cache, generate, prefill, random_prompt  # noqa: E402
from profiler.model import KVCache, build_model  # noqa: E402
from profiler.sampling import Sampler, Strategy  # noqa: E402
from profiler.weights import hf_state_dict  # noqa: E402

TINY = ["tiny-gpt2", "tiny-llama", "tiny-mqa", "tiny-mha", "tiny-qwen2", "tiny-gemma"]


@pytest.mark.parametrize("name", TINY)
def test_parameters_and_weight_bytes_are_the_specs(name):
    spec = get_model(name)
    m = build_model(spec, dtype="bf16")
    assert m.num_params() == spec.num_params  # a tied LM head counted once on both sides
    assert m.weight_bytes() == weight_bytes(spec, "bf16") == 2 * spec.num_params


def test_tied_head_shares_the_embedding_and_untied_does_not():
    tied, untied = build_model(get_model("tiny-qwen2")), build_model(get_model("tiny-llama"))
    assert tied.lm_head.weight is tied.tok_embeddings.weight
    assert untied.lm_head.weight is not untied.tok_embeddings.weight


def test_gemma_projections_use_head_dim_not_hidden_over_heads():
    m = build_model(get_model("tiny-gemma"))  # hidden 64, 2 heads of 48, 1 kv head
    att = m.layers[0].attention
    assert tuple(att.q_proj.weight.shape) == (96, 64)  # [heads * head_dim, hidden]
    assert tuple(att.k_proj.weight.shape) == (48, 64)
    assert tuple(att.o_proj.weight.shape) == (64, 96)


def test_kv_cache_update_writes_the_positions_and_counts_its_bytes():
    c = KVCache(rows=3, kv_heads=2, max_len=10, head_dim=4, dtype=torch.float32, device="cpu")
    assert c.allocated_bytes() == 2 * 3 * 2 * 10 * 4 * 4  # k and v, [3, 2, 10, 4] fp32 = 1920
    k = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).view(2, 2, 3, 4)  # 2 rows, 3 positions
    k_all, v_all = c.update(torch.arange(3), k, -k)
    assert torch.equal(c.k[:2, :, :3], k) and torch.equal(c.v[:2, :, :3], -k)
    assert tuple(k_all.shape) == (2, 2, 10, 4)
    assert c.filled_bytes() == 2 * 2 * 2 * 3 * 4 * 4  # 2 rows x 2 heads x 3 positions x 4 x 4 B, k and v = 384
    c.update(torch.tensor([3]), k[:, :, :1], k[:, :, :1])
    assert c.positions_filled == 4 and torch.equal(c.k[:2, :, 3], k[:, :, 0])
    c.reorder(torch.tensor([1, 1, 0]))  # beam search kept row 1 twice, then row 0
    assert torch.equal(c.k[0], c.k[1]) and c.rows_used == 3
    assert c.filled_bytes() == 2 * 3 * 2 * 4 * 4 * 4  # 3 rows x 2 heads x 4 positions x 4 x 4 B, k and v = 768


@pytest.mark.parametrize("name", TINY)
def test_cached_decode_equals_recomputing_the_prefix(name):
    spec = get_model(name)
    cached, plain = build_model(spec, seed=0), build_model(spec, seed=0)  # the same weights
    p = random_prompt(spec, 2, 7, 0, "cpu")
    cached.setup_caches(2, 10)
    with torch.no_grad():
        logits, seq = prefill(cached, p), p
        for pos in range(7, 10):  # decode steps 1..3: the token at position pos attends over pos + 1 keys
            tok = logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, tok], 1)
            logits = decode_one_token(cached, tok, pos)
            torch.testing.assert_close(logits, forward_no_cache(plain, seq), rtol=1e-4, atol=1e-5)
    assert cached.kv_cache_bytes() == cached.kv_cache_allocated_bytes()  # all 10 positions written


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma"])
def test_eager_and_sdpa_attention_agree(name):
    spec = get_model(name)
    p = random_prompt(spec, 2, 9, 1, "cpu")
    outs = [generate(build_model(spec, attention=a), p, 5, Sampler(Strategy())) for a in ("eager", "sdpa")]
    assert torch.equal(outs[0], outs[1])


def test_logits_last_is_the_last_row_of_all():
    spec = get_model("tiny-llama")
    m = build_model(spec)
    p = random_prompt(spec, 2, 6, 0, "cpu")
    with torch.no_grad():
        last, every = forward_no_cache(m, p, "last"), forward_no_cache(m, p, "all")
    assert tuple(last.shape) == (2, 1, 256) and tuple(every.shape) == (2, 6, 256)
    torch.testing.assert_close(last[:, 0], every[:, -1])


def test_generate_with_and_without_cache_gives_the_same_tokens():
    spec = get_model("tiny-mha")
    m = build_model(spec)
    p = random_prompt(spec, 2, 8, 3, "cpu")
    a = generate(m, p, 6, Sampler(Strategy()), kv_cache=True)
    b = generate(m, p, 6, Sampler(Strategy()), kv_cache=False)
    assert tuple(a.shape) == (2, 14) and torch.equal(a, b) and torch.equal(a[:, :8], p)
    assert m.kv_cache_bytes() == 0  # the no-cache run dropped the caches


STRATEGIES = [Strategy("sample", temperature=0.8), Strategy("top_k", top_k=10), Strategy("top_p", top_p=0.8),
              Strategy("top_k_top_p", top_k=20, top_p=0.7, temperature=1.3), Strategy("beam", beams=3)]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_strategies_are_seeded_and_reproducible(strategy):
    spec = get_model("tiny-llama")
    m = build_model(spec)
    p = random_prompt(spec, 2, 8, 0, "cpu")
    a = generate(m, p, 6, Sampler(strategy, seed=5))
    b = generate(m, p, 6, Sampler(strategy, seed=5))
    assert torch.equal(a, b) and tuple(a.shape) == (2, 14)


def test_different_seeds_sample_differently():
    spec = get_model("tiny-llama")
    m = build_model(spec)
    p = random_prompt(spec, 4, 8, 0, "cpu")
    s = Strategy("sample", temperature=2.0)  # flat distribution over 256 tokens: 4 x 8 draws
    assert not torch.equal(generate(m, p, 9, Sampler(s, seed=1)), generate(m, p, 9, Sampler(s, seed=2)))


@pytest.mark.parametrize("strategy", [Strategy("top_k", top_k=1), Strategy("top_p", top_p=1e-6),
                                      Strategy("top_k_top_p", top_k=7, top_p=1e-6), Strategy("beam", beams=1)],
                         ids=lambda s: s.name)
def test_degenerate_strategies_are_greedy(strategy):
    spec = get_model("tiny-qwen2")
    m = build_model(spec)
    p = random_prompt(spec, 2, 8, 0, "cpu")
    assert torch.equal(generate(m, p, 6, Sampler(strategy)), generate(m, p, 6, Sampler(Strategy())))


def test_top_k_only_draws_among_the_k_best():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    top5 = logits.topk(5).indices
    sampler = Sampler(Strategy("top_k", top_k=5, temperature=3.0), seed=0)
    for _ in range(50):
        tok, origin = sampler(logits)
        assert origin is None
        assert all(tok[r] in top5[r] for r in range(3))


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # probabilities 0.5, 0.3, 0.15, 0.05: p = 0.7 keeps the first two (0.5 < 0.7 <= 0.8), never 2 or 3
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    sampler = Sampler(Strategy("top_p", top_p=0.7), seed=0)
    seen = {int(sampler(logits)[0]) for _ in range(200)}
    assert seen == {0, 1}


def test_beam_search_wide_enough_is_exhaustive_search():
    # vocab 4, 3 tokens generated: 4^2 = 16 beams keep every prefix, so beam search must find the
    # sequence of highest total log-probability among all 4^3 = 64, found here by brute force.
    spec = ModelSpec(name="v4", num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32, vocab_size=4,
                     max_position_embeddings=16)
    m = build_model(spec, seed=3)
    p = torch.tensor([[1, 2, 3]])
    best = generate(m, p, 3, Sampler(Strategy("beam", beams=16)))[0, 3:].tolist()

    def logprob(cont):
        seq = torch.tensor([[1, 2, 3] + list(cont)])
        with torch.no_grad():
            lp = torch.log_softmax(forward_no_cache(m, seq[:, :-1], "all").float(), -1)[0]
        return sum(float(lp[2 + i, t]) for i, t in enumerate(cont))

    brute = max(itertools.product(range(4), repeat=3), key=logprob)
    assert best == list(brute)


def test_bad_build_arguments_are_one_line_errors():
    spec = get_model("tiny-llama")
    with pytest.raises(SpecError, match="runs in fp32, bf16 or fp16, not 'int8'; allowed: fp32, bf16, fp16"):
        build_model(spec, dtype="int8")
    with pytest.raises(SpecError, match="unknown attention path 'flash'; allowed: eager, sdpa"):
        build_model(spec, attention="flash")
    with pytest.raises(SpecError, match="unknown device 'tpu'; allowed: cpu, cuda"):
        build_model(spec, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(SpecError, match="device 'cuda' is not available here .*; allowed: cpu"):
        build_model(get_model("tiny-llama"), device="cuda")


def test_a_model_too_big_for_memory_is_refused_before_allocating():
    with pytest.raises(SpecError, match="gpt3-175b needs .* GB of weights in float32, more than the"):
        build_model(get_model("gpt3-175b"))


# --- real weights from a safetensors folder ------------------------------------------------

def _write_checkpoint(folder, tensors, config):
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


GPT2_CONFIG = {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 16, "n_positions": 12}


def _gpt2_tensors():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t = {"wte.weight": r(16, 8), "wpe.weight": r(12, 8), "ln_f.weight": r(8), "ln_f.bias": r(8)}
    for n in ("ln_1", "ln_2"):
        t[f"h.0.{n}.weight"], t[f"h.0.{n}.bias"] = r(8), r(8)
    t["h.0.attn.c_attn.weight"], t["h.0.attn.c_attn.bias"] = r(8, 24), r(24)  # Conv1D: [in, out]
    t["h.0.attn.c_proj.weight"], t["h.0.attn.c_proj.bias"] = r(8, 8), r(8)
    t["h.0.mlp.c_fc.weight"], t["h.0.mlp.c_fc.bias"] = r(8, 32), r(32)
    t["h.0.mlp.c_proj.weight"], t["h.0.mlp.c_proj.bias"] = r(32, 8), r(8)
    t["h.0.attn.bias"] = torch.ones(1, 1, 12, 12)  # an old export's causal-mask buffer: ignored
    return t


def test_gpt2_checkpoint_in_hf_naming_is_mapped_and_transposed(tmp_path):
    t = _gpt2_tensors()
    folder = _write_checkpoint(tmp_path / "gpt2-mini", t, GPT2_CONFIG)
    spec = get_model(folder)
    m = build_model(spec, weights=folder)
    att, mlp = m.layers[0].attention, m.layers[0].mlp
    c = t["h.0.attn.c_attn.weight"]
    assert torch.equal(att.q_proj.weight, c[:, 0:8].t())  # Conv1D [in, 3h]: q, k, v columns, transposed
    assert torch.equal(att.k_proj.weight, c[:, 8:16].t())
    assert torch.equal(att.v_proj.bias, t["h.0.attn.c_attn.bias"][16:24])
    assert torch.equal(mlp.up.weight, t["h.0.mlp.c_fc.weight"].t())
    assert torch.equal(m.pos_embeddings.weight, t["wpe.weight"])
    assert torch.equal(m.lm_head.weight, t["wte.weight"])  # tied


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-mha"])
def test_weights_round_trip_through_hf_names(tmp_path, name):
    spec = get_model(name)
    src = build_model(spec, seed=11)
    from safetensors.torch import save_file

    save_file(hf_state_dict(src), str(tmp_path / "model.safetensors"))
    loaded, fresh = build_model(spec, seed=12, weights=str(tmp_path)), build_model(spec, seed=12)
    p = random_prompt(spec, 1, 6, 0, "cpu")
    with torch.no_grad():
        assert torch.equal(forward_no_cache(loaded, p, "all"), forward_no_cache(src, p, "all"))
        assert not torch.equal(forward_no_cache(fresh, p, "all"), forward_no_cache(src, p, "all"))


def test_bad_checkpoints_name_the_tensor(tmp_path):
    t = _gpt2_tensors()
    del t["h.0.ln_2.bias"]
    folder = _write_checkpoint(tmp_path / "missing", t, GPT2_CONFIG)
    with pytest.raises(SpecError, match="no tensor for parameter 'layers.0.mlp_norm.bias'"):
        build_model(get_model(folder), weights=folder)
    t = _gpt2_tensors()
    t["wpe.weight"] = torch.zeros(11, 8)
    folder = _write_checkpoint(tmp_path / "shape", t, GPT2_CONFIG)
    with pytest.raises(SpecError, match=r"'pos_embeddings.weight' has shape \(11, 8\), shape needs \(12, 8\)"):
        build_model(get_model(folder), weights=folder)
    t = _gpt2_tensors()
    t["h.1.ln_1.weight"] = torch.zeros(8)
    folder = _write_checkpoint(tmp_path / "extra", t, GPT2_CONFIG)
    with pytest.raises(SpecError, match="has no place for, e.g. 'h.1.ln_1.weight'"):
        build_model(get_model(folder), weights=folder)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SpecError, match="no \\*.safetensors file in"):
        build_model(get_model("tiny-gpt2"), weights=str(tmp_path / "empty"))
