"""costmodel.collectives: collective times by hand, nccl-tests' bus-bandwidth factors, NCCL's
algorithm choice; the plan's communication under the "nccl" model (logits all-gather, hops, token
broadcast) and the vocabulary padding of tp (no torch)."""

import pytest

from costmodel import collectives as C
from costmodel.errors import SpecError
from costmodel.hardware import get_hardware
from costmodel.models import get_model
from costmodel.parallel import Split, check_split, padded_vocab, rank_comm_bytes, rank_prefill_cost
from costmodel.plan import Layout, allreduce_seconds, comm_seconds, parallel_timing, stage_weight_params
from costmodel.spec import Workload

US = 1e-6
H100_BUS = 450e9 * 0.8  # h100-sxm NVLink per direction x the default interconnect efficiency = 3.6e11 B/s


def test_bus_bandwidth_factors_of_nccl_tests():
    # nccl-tests doc/PERFORMANCE.md, "Summary": all-reduce 2(n-1)/n, reduce-scatter, all-gather and
    # all-to-all (n-1)/n, broadcast 1
    assert C.bus_factor("all_reduce", 8) == 2 * 7 / 8 == 1.75
    assert C.bus_factor("all_gather", 8) == C.bus_factor("reduce_scatter", 8) == C.bus_factor("all_to_all", 8) == 0.875
    assert C.bus_factor("broadcast", 8) == C.bus_factor("send", 2) == 1.0
    with pytest.raises(SpecError, match="unknown collective 'gather'"):
        C.bus_factor("gather", 2)


def test_ring_and_tree_all_reduce_by_hand():
    # ring, 8 ranks, 1e6 B, 3.6e11 B/s, 1 us per step: 2 x 7 / 8 x 1e6 / 3.6e11 + 14 x 1 us
    ring = C.all_reduce_s(1_000_000, 8, H100_BUS, 1 * US, "ring")
    assert ring == pytest.approx(1.75e6 / 3.6e11 + 14 * US, rel=1e-12)
    # ... the plan's original ring all-reduce, exactly
    assert ring == allreduce_seconds(get_hardware("h100-sxm"), 8, 1_000_000)
    # tree over 8 ranks, one per node: 2 x log2(8) = 6 hops; 2 x 1e6 / (0.92 x 3.6e11)
    tree = C.all_reduce_s(1_000_000, 8, H100_BUS, 1 * US, "tree")
    assert tree == pytest.approx(6 * US + 2e6 / (0.92 * 3.6e11), rel=1e-12)
    assert C.tree_hops(16, ranks_per_node=8) == 2 * (7 + 1)  # a chain of 8 in each node, 2 nodes
    assert C.tree_hops(6) == 2 * 2  # log2i rounds down: floor(log2 6) = 2
    assert C.all_reduce_s(123, 1, H100_BUS, US) == 0.0
    with pytest.raises(SpecError, match="unknown algo 'butterfly'; allowed: ring, tree"):
        C.all_reduce_s(1, 2, H100_BUS, US, "butterfly")


def test_other_collectives_by_hand():
    # all-gather of an 8,000 B output over 4 ranks at 1e9 B/s, 1 us per step: 3 us + 3/4 x 8 us
    assert C.all_gather_s(8000, 4, 1e9, US) == pytest.approx(3 * US + 6 * US, rel=1e-12)
    assert C.reduce_scatter_s(8000, 4, 1e9, US) == pytest.approx(9 * US, rel=1e-12)
    # all-to-all: base 2 us + one hop 1 us (all peers at once) + 3/4 x 8 us
    assert C.all_to_all_s(8000, 4, 1e9, US, 2 * US) == pytest.approx(9 * US, rel=1e-12)
    assert C.send_s(1000, 1e9, US) == pytest.approx(2 * US, rel=1e-12)  # 1 us + 1,000 / 1e9
    assert C.broadcast_s(1000, 4, 1e9, US) == pytest.approx(3 * US + 1 * US, rel=1e-12)  # 3 hops + 1 us


def test_nccl_picks_latency_protocols_for_small_and_simple_for_large():
    # 8 B over 8 NVLink ranks (tuning.cc): ring LL 6.6 + 14 x 0.6 = 15.0 us; tree LL on one node
    # (a chain) 6.8 + 14 x 0.6 = 15.2 us; ring LL128 14 + 14 x 1.9 = 40.6 us; ring Simple
    # 8.4 + 14 x 3.4 = 56.0 us: ring LL, plus 1.75 x 8 / (0.5 x 3.6e11)
    small = C.nccl_all_reduce(8, 8, H100_BUS)
    assert (small.algo, small.proto) == ("ring", "LL")
    assert small.seconds == pytest.approx(15.0 * US + 14 / 1.8e11, rel=1e-12)
    # 1e9 B: ring Simple 56 us + 1.75e9 / 3.6e11 = 4.917 ms beats LL128 40.6 us + 1.75e9 / (0.92 x 3.6e11)
    big = C.nccl_all_reduce(1e9, 8, H100_BUS)
    assert (big.algo, big.proto) == ("ring", "Simple")
    assert big.seconds == pytest.approx(56.0 * US + 1.75e9 / 3.6e11, rel=1e-12)
    # 32 ranks on 4 nodes, 8 B: tree LL 6.8 + 2 x (7 + 2) x 0.6 = 17.6 us < ring LL 6.6 + 62 x 0.6 = 43.8 us
    many = C.nccl_all_reduce(8, 32, H100_BUS, nodes=4)
    assert many.algo == "tree" and many.seconds == pytest.approx(17.6 * US + 2 * 8 / (0.92 * 3.6e11 / 3.8), rel=1e-12)
    # a measured per-hop latency replaces the table's: ring LL 6.6 + 14 x 2 us
    assert C.nccl_all_reduce(8, 8, H100_BUS, hop_latency_s=2 * US).seconds == pytest.approx(
        34.6 * US + 14 / 1.8e11, rel=1e-12)
    assert C.nccl_all_reduce(8, 1, H100_BUS).seconds == 0.0


def test_plan_nccl_comm_adds_the_logits_all_gather():
    spec, hw = get_model("llama-2-70b"), get_hardware("h100-sxm")
    wl = Workload(batch=4, prompt=512, gen=16)
    t = parallel_timing(spec, hw, wl, Layout(4, 1), collectives="nccl")
    # one all-reduce: 4 x 512 tokens x 8192 x 2 B = 33,554,432 B over 4 GPUs: ring Simple
    # 8.4 + 6 x 3.4 = 28.8 us + 1.5 x 33,554,432 / 3.6e11 (LL128: 25.4 us + 1.5 x S / (0.92 x 3.6e11), slower)
    ar = C.nccl_all_reduce(33_554_432, 4, H100_BUS)
    assert ar.proto == "Simple" and ar.seconds == pytest.approx(28.8 * US + 1.5 * 33_554_432 / 3.6e11, rel=1e-12)
    # logits of the 4 last positions x V 32,000 x 2 B = 256,000 B gathered
    ag = C.nccl_all_gather(256_000, 4, H100_BUS)
    assert t.prefill.extra_s == pytest.approx(160 * ar.seconds + ag.seconds, rel=1e-12)
    # each of the 15 decode steps: 160 all-reduces of 4 x 8192 x 2 B and the logits of 4 rows
    step = 160 * C.nccl_all_reduce(4 * 8192 * 2, 4, H100_BUS).seconds + C.nccl_all_gather(256_000, 4, H100_BUS).seconds
    assert t.decode.extra_s == pytest.approx(15 * step, rel=1e-9)
    # the original model ("ring", the default) has no all-gather
    ring = parallel_timing(spec, hw, wl, Layout(4, 1))
    assert ring.prefill.extra_s == pytest.approx(160 * allreduce_seconds(hw, 4, 33_554_432), rel=1e-12)
    with pytest.raises(SpecError, match="unknown collectives 'mpi'; allowed: ring, nccl"):
        comm_seconds(spec, hw, wl, Layout(4, 1), 1, collectives="mpi")


def test_plan_nccl_pipeline_hops_every_pass():
    spec, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    wl = Workload(batch=2, prompt=128, gen=8)
    t = parallel_timing(spec, hw, wl, Layout(1, 2), collectives="nccl")
    # prefill: one hop of 2 x 128 x 4096 x 2 B (p2p Simple: 8.4 + 3.4 us + S / 3.6e11) and the
    # broadcast of 2 token ids x 8 B over 2 GPUs (ring LL: 6.6 + 0.6 us + 16 / (0.5 x 3.6e11))
    hop = 11.8 * US + 2 * 128 * 4096 * 2 / 3.6e11
    bcast = 7.2 * US + 16 / 1.8e11
    assert t.prefill.extra_s == pytest.approx(hop + bcast, rel=1e-12)
    # each of the 7 decode steps: a hop of 2 x 4096 x 2 B and the broadcast
    assert t.decode.extra_s == pytest.approx(7 * (11.8 * US + 2 * 4096 * 2 / 3.6e11 + bcast), rel=1e-9)


def test_vocab_padding_rule():
    # Megatron-LM: the next multiple of 128 x tp, here only where tp does not divide the vocabulary
    assert padded_vocab(50257, 2) == 50432  # ceil(50,257 / 256) = 197; 197 x 256
    assert padded_vocab(50257, 3) == 50304  # ceil(50,257 / 384) = 131; 131 x 384
    assert padded_vocab(50257, 1) == 50257 and padded_vocab(32000, 8) == 32000
    assert padded_vocab(50257, 2, multiple=0) == 50257
    gpt2 = get_model("gpt2")
    check_split(gpt2, Split(2, 1))  # padded: runs
    with pytest.raises(SpecError, match=r"^tp=2 must divide vocab_size \(50257\) of gpt2; allowed tp: 1$"):
        check_split(gpt2, Split(2, 1, vocab_pad_multiple=0))
    with pytest.raises(SpecError, match="vocab_pad_multiple must be a non-negative integer"):
        check_split(gpt2, Split(2, 1, vocab_pad_multiple=-1))


def test_padded_rows_cost_flops_bytes_and_weights():
    gpt2 = get_model("gpt2")
    wl = Workload(batch=1, prompt=4, gen=2, weight_dtype="fp32", act_dtype="fp32")
    head = {o.op: o for o in rank_prefill_cost(gpt2, wl, Split(2, 1), 1).after}["lm_head"]
    # the last position x 768 x 50,432 / 2 = 25,216 rows: 2 x 768 x 25,216 = 38,731,776 FLOPs
    assert head.matmul_flops == 38_731_776
    assert head.weight_bytes == 768 * 25_216 * 4 and head.act_write_bytes == 25_216 * 4
    # logits all-gather payload per rank: 1 row x 25,216 x 4 B
    assert rank_comm_bytes(gpt2, wl, Split(2, 1), 0, "prefill")["all_gather"] == 100_864
    # the plan's weights per GPU: the tied embedding/head's 25,216 rows x 768, not 50,257 / 2
    padded, unpadded = (stage_weight_params(gpt2, Layout(2, 1, vocab_pad_multiple=m), 0) for m in (128, 0))
    assert padded - unpadded == 25_216 * 768 - (50_257 * 768 + 1) // 2 == 67_200  # 87.5 rows x 768
    # and the plan's LM head time reads the padded rows: its bytes grow by 50,432 / 50,257
    pt = parallel_timing(gpt2, get_hardware("h100-sxm"), wl, Layout(2, 1))
    assert pt.prefill.ops_seconds > parallel_timing(gpt2, get_hardware("h100-sxm"), wl,
                                                    Layout(2, 1, vocab_pad_multiple=0)).prefill.ops_seconds
