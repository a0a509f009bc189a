"""decoder_start: the tokens the decoder starts from (the prompt, or an encoder-decoder's decoder prompt)."""

import numpy as np

from costmodel import Workload, get_model
from costmodel.analysis import cached_positions, decode_step_cost, kv_cache_bytes, prefill_cost
from costmodel.spec import decoder_start
from reports.sweep import grid_workload

WL = Workload(batch=2, prompt=20, gen=6)
T5_WL = Workload(batch=2, prompt=20, gen=6, decoder_prompt=4)


def _op(ops, name):
    (o,) = [o for o in ops if o.op == name]
    return o


def test_decoder_start_by_arch():
    assert decoder_start(get_model("gpt2"), WL) == 20  # the prompt
    assert decoder_start(get_model("bert-base"), WL) == 20  # an encoder's input
    assert decoder_start(get_model("t5-small"), T5_WL) == 4  # the decoder prompt; the 20 are the source
    assert decoder_start(get_model("t5-small"), WL) == 1  # decoder_prompt defaults to 1


def test_encoder_decoder_passes_start_from_the_decoder_prompt():
    spec = get_model("t5-small")  # h = q = kv = 512 (8 heads x 64), 6 decoder layers
    pre = prefill_cost(spec, T5_WL).layer
    # q_proj over batch x decoder prompt tokens: 2 * (2 * 4) * 512 * 512 = 4,194,304
    assert _op(pre, "q_proj").flops == 4_194_304
    # cross keys projected from the 2 x 20 source tokens once: 2 * 40 * 512 * 512 = 20,971,520
    assert _op(pre, "cross_k_proj").flops == 20_971_520
    # decode step 3 attends over 4 + 3 = 7 keys: 2 * b * heads * q * kv * d = 2 * 2 * 8 * 1 * 7 * 64 = 14,336
    assert _op(decode_step_cost(spec, T5_WL, 3).layer, "attn_scores").flops == 14_336
    # cached after generation: 4 + 6 - 1 = 9 positions x 2 sequences x (2 * 6 layers * 512 * 2 B = 12,288 B)
    assert cached_positions(spec, T5_WL) == 9
    assert kv_cache_bytes(spec, T5_WL) == 9 * 2 * 12_288


def test_decoder_only_passes_start_from_the_prompt():
    spec = get_model("gpt2")  # 12 heads x 64
    # decode step 3 attends over 20 + 3 = 23 keys: 2 * 2 * 12 * 1 * 23 * 64 = 70,656
    assert _op(decode_step_cost(spec, WL, 3).layer, "attn_scores").flops == 70_656
    assert cached_positions(spec, WL) == 20 + 6 - 1


def test_decoder_start_reads_a_grid_workloads_own_prompt():
    # The sweep's grid workload delegates unknown attributes to its base Workload (prompt 20): the
    # start must be the grid's prompts, 8 and 16, not the base's.
    gw = grid_workload(WL, np.array([[1]]), np.array([[8, 16]]))
    assert decoder_start(get_model("gpt2"), gw).tolist() == [[8, 16]]
