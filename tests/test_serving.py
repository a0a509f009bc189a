"""The reference server (profiler.serving): its greedy tokens equal the model's own greedy generation
of each prompt (contiguous KV cache), with chunked prefill and with a pre-emption by recompute."""

import pytest
import torch

from costmodel.errors import SpecError
from costmodel.models import get_model
from costmodel.simulate import Request, SchedulerConfig
from profiler.model import build_model
from profiler.serving import check_servable, prompt_ids, serve


def reference_greedy(model, ids, gen):
    """Greedy generation with the model's own contiguous cache: prefill, then one token a step."""
    model.setup_caches(1, len(ids) + gen)
    tok = torch.tensor(ids)[None]
    S = len(ids)
    with torch.no_grad():
        nxt = model(tok, torch.arange(S), S, "last")[0, -1].argmax().item()
        out = [nxt]
        for i in range(1, gen):
            pos = S + i - 1
            nxt = model(torch.tensor([[nxt]]), torch.arange(pos, pos + 1), pos + 1, "last")[0, -1].argmax().item()
            out.append(nxt)
    model.drop_caches()
    return out


def fp64(name):
    # float64 so that batched and unbatched arithmetic cannot flip an argmax on a near tie
    return build_model(get_model(name), seed=0).double()


REQS = [Request(0, 0.0, 21, 6), Request(1, 0.0, 9, 5), Request(2, 0.001, 30, 4), Request(3, 0.002, 5, 7)]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("sched,kv_blocks,preempts", [
    (SchedulerConfig(max_num_batched_tokens=16, block_size=4), 64, False),  # chunked prefill, room for all
    # 10 blocks of 4, all arriving at once: requests 0 and 1 prefilled (6 + 3 blocks), request 0's 25th
    # position takes the last block, request 1's 13th finds none: request 1 is pre-empted (recomputed)
    (SchedulerConfig(max_num_batched_tokens=64, block_size=4), 10, True),
])
def test_server_tokens_equal_reference_generation(name, sched, kv_blocks, preempts):
    spec = get_model(name)
    model = fp64(name)
    toks = {}
    reqs = REQS if not preempts else [Request(q.id, 0.0, q.prompt_tokens, q.output_tokens) for q in REQS]
    res = serve(spec, reqs, kv_blocks=kv_blocks, scheduler=sched, model=model, tokens_out=toks)
    assert all(r.status == "finished" for r in res.requests)
    assert (res.preemptions > 0) == preempts
    for q in reqs:
        assert toks[q.id] == reference_greedy(model, prompt_ids(spec, q), q.output_tokens), q
    for r in res.requests:
        assert r.generated_tokens == r.output_tokens
        assert r.arrival_s <= r.first_token_s <= r.finish_s
        assert r.ttft_s <= r.e2e_s
    assert res.kv_blocks_peak <= kv_blocks


def test_server_refuses_what_it_does_not_build():
    with pytest.raises(SpecError, match="cannot serve tiny-bert"):
        check_servable(get_model("tiny-bert"))
    # tiny-llama has 256 positions: 250 + 8 - 1 = 257 do not fit
    with pytest.raises(SpecError, match="request 0 needs 257 positions"):
        serve(get_model("tiny-llama"), [Request(0, 0.0, 250, 8)], kv_blocks=64)
    with pytest.raises(SpecError, match="kv_blocks must be a positive integer"):
        serve(get_model("tiny-llama"), REQS, kv_blocks=0)


class _Const:
    def seconds(self, prefill_chunks, decode_contexts):
        return 0.01


def test_server_schedules_as_simulate():
    """All arriving at 0 the schedule does not depend on the clock: the server's iterations,
    pre-emptions (per request) and peak blocks are simulate()'s (both run BatchScheduler; this
    checks the server's use of it: block ids kept to its counts, arrivals, emissions)."""
    from costmodel.simulate import simulate

    spec = get_model("tiny-llama")
    reqs = [Request(q.id, 0.0, q.prompt_tokens, q.output_tokens) for q in REQS]
    sched = SchedulerConfig(max_num_batched_tokens=16, max_num_seqs=3, block_size=4)
    res = serve(spec, reqs, kv_blocks=10, scheduler=sched)
    sim = simulate(reqs, _Const(), 10, sched)
    assert res.preemptions > 0
    assert (res.iterations, res.preemptions, res.kv_blocks_peak) == (sim.iterations, sim.preemptions,
                                                                      sim.kv_blocks_peak)
    assert [r.preemptions for r in res.requests] == [r.preemptions for r in sim.requests]
    assert [r.generated_tokens for r in res.requests] == [r.output_tokens for r in reqs]


def test_step_terms_by_hand():
    from profiler.serving import step_terms

    # a chunk of 8 new over 4 cached: T 8, q*k 8 * 12 = 96, k 12; decodes over 5 and 9 cached:
    # T 1 + 1, q*k 6 + 10, k 6 + 10 -> [1, 10, 3, 112, 28]
    assert step_terms([(8, 4)], [5, 9]) == [1.0, 10.0, 3.0, 112.0, 28.0]


def test_calibrated_steps_drive_simulate():
    from costmodel.simulate import simulate
    from profiler.serving import STEP_TERMS, calibrate_steps, step_terms

    spec = get_model("tiny-llama")
    grid = [([(8, 0)], []), ([(32, 16)], []), ([], [16]), ([], [16] * 4), ([(16, 0)], [32] * 2), ([], [64] * 8)]
    cost = calibrate_steps(spec, grid=grid, reps=2)
    assert set(cost.coefficients) == set(STEP_TERMS) and min(cost.coefficients.values()) >= 0
    assert len(cost.samples) == len(grid)
    x = step_terms([(8, 4)], [5, 9])
    assert cost.seconds([(8, 4)], [5, 9]) == pytest.approx(sum(cost.coefficients[t] * v for t, v in zip(STEP_TERMS, x)))
    res = simulate(REQS, cost, 64, SchedulerConfig(max_num_batched_tokens=16, block_size=4))
    assert all(r.status == "finished" for r in res.requests)
