"""A continuous-batching reference server over the reference transformer, on real wall clocks.

:func:`serve` runs requests (``costmodel.simulate.Request``: arrival, prompt and output lengths)
through the reference model one iteration at a time, with the scheduling rules of
:func:`costmodel.simulate.simulate` (running requests first in admission order, chunked prefill
under ``max_num_batched_tokens``, ``max_num_seqs``, a paged KV cache of ``kv_blocks`` blocks
allocated as positions grow, pre-emption by recompute from the back of the running list, no
admission in a step that pre-empted): both run :class:`costmodel.simulate.BatchScheduler`; the
server keeps each request's block ids to the scheduler's block counts. The step is the model's.

The step: the tokens of every scheduled request flattened into one ``[1, T]`` batch for the
embeddings, projections, norms and MLP (each token at its own position); attention per sequence
over its own keys in a paged cache (per layer k/v pools ``[num_blocks, block_size, Hkv, d]``, a
block table per request: new keys written into their slots, the sequence's keys gathered by its
table); logits only for each sequence's last token; greedy sampling (argmax).

Prompt token ids are drawn per request from ``torch.Generator().manual_seed(seed + id)``
(:func:`prompt_ids`), so a test can run the same prompt through the model's own generation.

:func:`calibrate_steps` times this step over a grid of mixes and fits a per-step time with the
simulator's terms, for ``simulate()`` to be held against :func:`serve`'s measured latencies.
"""

from __future__ import annotations

import gc
import time
from collections import deque

import torch
import torch.nn.functional as F
from torch import Tensor

from costmodel.errors import SpecError
from costmodel.simulate import BatchScheduler, RequestResult, SchedulerConfig, SimulationResult
from costmodel.spec import ModelSpec

from .layers import apply_rotary
from .model import Transformer, build_model


def check_servable(spec: ModelSpec) -> None:
    """Refuse, in one line, a spec the server's step does not implement."""
    why = None
    if spec.arch != "decoder":
        why = f"arch {spec.arch!r} (decoder-only models only)"
    elif spec.mla:
        why = "latent attention (MLA)"
    elif spec.num_experts:
        why = "mixture of experts"
    elif any(t != "full_attention" for t in spec.layer_types):
        why = "sliding or chunked attention layers"
    elif spec.norm_position != "pre":
        why = f"norm_position {spec.norm_position!r} (pre-norm only)"
    elif spec.position_kind not in ("rotary", "learned"):
        why = f"{spec.position_kind} positions (rotary or learned only)"
    if why:
        raise SpecError(f"the reference server cannot serve {spec.name}: {why}")


def prompt_ids(spec: ModelSpec, request, seed: int = 0) -> list[int]:
    """The prompt token ids of ``request``: uniform over the vocabulary, from seed + request id."""
    g = torch.Generator().manual_seed(seed + request.id)
    return torch.randint(0, spec.vocab_size, (request.prompt_tokens,), generator=g).tolist()


class PagedStep:
    """The server's forward step over a paged KV cache of ``num_blocks`` blocks of ``block_size``."""

    def __init__(self, model: Transformer, num_blocks: int, block_size: int):
        check_servable(model.spec)
        self.model, self.spec, self.bs = model, model.spec, block_size
        p = model.tok_embeddings.weight
        s = self.spec
        shape = (num_blocks, block_size, s.num_kv_heads, s.head_dim)
        # zero_() touches every page now, not in the first steps that write there
        self.k = [torch.empty(shape, dtype=p.dtype).zero_() for _ in model.layers]
        self.v = [torch.empty(shape, dtype=p.dtype).zero_() for _ in model.layers]

    def warm_up(self) -> None:
        """A few steps before the clock starts (first calls allocate); they write block 0's slots only,
        which a request writes again before it reads them."""
        for n in (1, 2, self.bs):
            self([([0] * n, 0, [0])])

    def _attention(self, attn, x: Tensor, positions: Tensor, seqs, li: int) -> Tensor:
        """x: [1, T, h] of the flattened batch; seqs: [(start in T, n new, cached before, block table)]."""
        _, T, _ = x.shape
        H, Hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
        q, k = attn.q_proj(x), attn.k_proj(x)
        if attn.qk_norm == "full":
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.view(1, T, H, d), k.view(1, T, Hkv, d)
        if attn.qk_norm == "head":
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [1, H, T, d], [1, Hkv, T, d]
        v = attn.v_proj(x).view(1, T, Hkv, d)
        if self.spec.position_kind == "rotary":
            cos, sin = self.model.rope_cos[positions].to(x.dtype), self.model.rope_sin[positions].to(x.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k = k.transpose(1, 2)[0]  # [T, Hkv, d]
        v = v[0]
        # the new keys into their slots: position p of a sequence -> (table[p // bs], p % bs)
        slot_block, slot_off = self._slots
        kp, vp = self.k[li], self.v[li]
        kp[slot_block, slot_off] = k
        vp[slot_block, slot_off] = v
        ys = []
        for start, n, c, table in seqs:
            S = c + n
            tb = torch.tensor(table, dtype=torch.long)
            ks = kp[tb].reshape(-1, Hkv, d)[:S].transpose(0, 1)[None]  # [1, Hkv, S, d]
            vs = vp[tb].reshape(-1, Hkv, d)[:S].transpose(0, 1)[None]
            if Hkv != H:
                ks, vs = ks.repeat_interleave(H // Hkv, dim=1), vs.repeat_interleave(H // Hkv, dim=1)
            qs = q[:, :, start:start + n]  # [1, H, n, d]
            if n == 1:
                y = F.scaled_dot_product_attention(qs, ks, vs, scale=attn.scale)
            else:  # query i at position c + i sees keys 0 .. c + i
                mask = torch.arange(S)[None, :] <= (c + torch.arange(n))[:, None]
                y = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=attn.scale)
            ys.append(y)
        y = torch.cat(ys, dim=2) if len(ys) > 1 else ys[0]  # [1, H, T, d]
        return attn.o_proj(y.transpose(1, 2).reshape(1, T, H * d))

    @torch.no_grad()
    def __call__(self, items) -> Tensor:
        """items: [(token ids fed, cached positions before, block table)] -> greedy next token of each
        sequence's last fed position, a LongTensor [len(items)]."""
        tokens, positions, seqs, blocks, offs = [], [], [], [], []
        start = 0
        for ids, c, table in items:
            n = len(ids)
            tokens.extend(ids)
            pos = range(c, c + n)
            positions.extend(pos)
            blocks.extend(table[p // self.bs] for p in pos)
            offs.extend(p % self.bs for p in pos)
            seqs.append((start, n, c, table))
            start += n
        tok = torch.tensor(tokens, dtype=torch.long)[None]
        pos = torch.tensor(positions, dtype=torch.long)
        self._slots = (torch.tensor(blocks, dtype=torch.long), torch.tensor(offs, dtype=torch.long))
        m = self.model
        x = m.tok_embeddings(tok)
        if m.pos_embeddings is not None:
            x = x + m.pos_embeddings(pos)
        for li, layer in enumerate(m.layers):
            if layer.parallel:
                h = layer.attn_norm(x)
                mm = h if layer.mlp_norm is None else layer.mlp_norm(x)
                x = x + self._attention(layer.attention, h, pos, seqs, li) + layer.mlp(mm)
            else:
                x = x + self._attention(layer.attention, layer.attn_norm(x), pos, seqs, li)
                x = x + layer.mlp(layer.mlp_norm(x))
        last = torch.tensor([s + n - 1 for s, n, _, _ in seqs], dtype=torch.long)
        logits = m.lm_head(m.final_norm(x[0, last]))  # [R, V]: each sequence's last token only
        return logits.argmax(dim=-1)


def serve(spec: ModelSpec, requests, *, kv_blocks: int, scheduler: SchedulerConfig = SchedulerConfig(),
          seed: int = 0, dtype: str = "fp32", threads: int = 1, model: Transformer | None = None,
          tokens_out: dict | None = None, steps_out: list | None = None) -> SimulationResult:
    """Serve ``requests`` on the reference model of ``spec`` (seeded weights; or ``model``) in real
    time: a request is not seen before its ``arrival_s`` (seconds after the start, by
    ``time.perf_counter``); idle, the server sleeps until the next arrival. Returns the rows of
    :func:`costmodel.simulate.simulate` (first token and finish times measured at the end of the
    step that emitted them). ``tokens_out``: filled with {request id: generated token ids};
    ``steps_out``: a list, appended (prefill chunks, decode contexts, step s, iteration s) per iteration
    (the step: the model's forward; the iteration: scheduling + step + bookkeeping)."""
    if isinstance(kv_blocks, bool) or not isinstance(kv_blocks, int) or kv_blocks < 1:
        raise SpecError(f"kv_blocks must be a positive integer, got {kv_blocks!r}")
    check_servable(spec)
    torch.set_num_threads(threads)
    if model is None:
        model = build_model(spec, dtype=dtype, seed=seed)
    was = gc.isenabled()
    gc.collect()
    gc.disable()  # no collector pause inside the measured run
    try:
        return _serve(spec, requests, kv_blocks, scheduler, seed, dtype, threads, model, tokens_out, steps_out)
    finally:
        if was:
            gc.enable()


def _serve(spec, requests, kv_blocks, scheduler, seed, dtype, threads, model, tokens_out, steps_out):
    step = PagedStep(model, kv_blocks, scheduler.block_size)
    reqs = sorted(requests, key=lambda q: q.arrival_s)
    n = len(reqs)
    for q in reqs:
        if q.prompt_tokens + q.output_tokens - 1 > spec.max_position_embeddings:
            raise SpecError(f"request {q.id} needs {q.prompt_tokens + q.output_tokens - 1} positions, more than "
                            f"{spec.name}'s max_position_embeddings {spec.max_position_embeddings}")
    prompt = [q.prompt_tokens for q in reqs]
    want = [q.output_tokens for q in reqs]
    S = BatchScheduler(prompt, want, kv_blocks, scheduler)  # simulate()'s scheduler, block counts
    ids = [prompt_ids(spec, q, seed) for q in reqs]  # prompt + generated token ids
    table = [[] for _ in range(n)]  # each request's block ids, kept to S.blocks' counts
    free_list = list(range(kv_blocks - 1, -1, -1))
    first = [None] * n
    last = [0.0] * n
    itl = []
    finish = [None] * n
    status = ["unfinished"] * n
    ai, iterations, busy = 0, 0, 0.0
    peak, blocks_time, in_sys_time = 0, 0.0, 0.0
    series = []
    step.warm_up()

    t0 = time.perf_counter()
    now = 0.0
    while True:
        now = time.perf_counter() - t0
        while ai < n and reqs[ai].arrival_s <= now:
            if not S.arrive(ai):
                status[ai] = "rejected"
            ai += 1
        if not S.waiting and not S.running:
            if ai >= n:
                break
            time.sleep(max(0.0, reqs[ai].arrival_s - (time.perf_counter() - t0)))
            continue
        sched, fed, chunks, decodes, preempted = S.schedule()
        for v in S.victims:  # pre-empted: their blocks back to the pool
            free_list.extend(table[v])
            table[v] = []
        if not sched:
            if preempted:
                continue
            r = S.waiting.popleft()
            status[r] = "rejected"
            continue
        for r in sched:  # the blocks the scheduler counted in, taken from the pool
            for _ in range(S.blocks[r] - len(table[r])):
                table[r].append(free_list.pop())
        used = kv_blocks - S.free
        peak = max(peak, used)
        series.append((now, len(S.waiting), len(S.running), used))
        start = now
        ts = time.perf_counter()
        nxt = step([(ids[r][S.computed[r]:S.computed[r] + k], S.computed[r], table[r]) for r, k in zip(sched, fed)])
        te = time.perf_counter()
        now = te - t0
        dt = now - start
        if steps_out is not None:
            steps_out.append((chunks, decodes, te - ts, dt))
        blocks_time += used * dt
        in_sys_time += (len(S.waiting) + len(S.running)) * dt
        busy += dt
        iterations += 1
        nxt = dict(zip(sched, nxt.tolist()))
        for r, o in S.advance(sched, fed):
            ids[r].append(nxt[r])
            if first[r] is None:
                first[r] = now
            else:
                itl.append((now - last[r], 1))  # measured inter-token gap
            last[r] = now
            if o >= want[r]:
                finish[r] = now
                status[r] = "finished"
                free_list.extend(table[r])
                table[r] = []
    if tokens_out is not None:
        for i in range(n):
            tokens_out[reqs[i].id] = ids[i][prompt[i]:]
    results = [RequestResult(i, reqs[i].arrival_s, prompt[i], want[i], S.out[i], first[i], finish[i],
                             S.preempt[i], status[i]) for i in range(n)]
    config = {"model": spec.name, "server": "profiler.serving", "scheduler": scheduler.to_dict(),
              "threads": threads, "dtype": dtype}
    return SimulationResult(results, iterations, now, S.total_preempt, kv_blocks, peak,
                            blocks_time / now if now else 0.0, busy, in_sys_time / now if now else 0.0,
                            series, config, itl)


# --- A per-step time model of this server, calibrated by timing its own step ----------------------

STEP_TERMS = ("per_pass_s", "per_token_s", "per_seq_s", "per_qk_s", "per_key_s")


def step_terms(prefill_chunks, decode_contexts) -> list[float]:
    """The simulator's terms of one step: [1, tokens T, sequences R, sum q*k, sum k], a chunk
    (n new, c cached) attending q = n queries over k = c + n keys, a decode q = 1 over c + 1."""
    T = R = qk = k = 0
    for n, c in prefill_chunks:
        T, R, qk, k = T + n, R + 1, qk + n * (c + n), k + c + n
    for c in decode_contexts:
        T, R, qk, k = T + 1, R + 1, qk + c + 1, k + c + 1
    return [1.0, float(T), float(R), float(qk), float(k)]


class StepTimeModel:
    """Seconds of one server step: coefficients x :func:`step_terms`; ``seconds`` as
    :meth:`costmodel.simulate.IterationCost.seconds` takes its arguments, so ``simulate()`` runs on it."""

    def __init__(self, coefficients: dict, samples: list | None = None, description: dict | None = None):
        self.coefficients = dict(coefficients)
        self.samples = samples or []  # (prefill_chunks, decode_contexts, measured s, fitted s)
        self.description = description or {}

    def seconds(self, prefill_chunks, decode_contexts) -> float:
        x = step_terms(prefill_chunks, decode_contexts)
        return sum(self.coefficients[t] * v for t, v in zip(STEP_TERMS, x))

    def to_dict(self) -> dict:
        return {**self.coefficients, **self.description,
                "samples": [{"prefill_chunks": p, "decode_contexts": d, "measured_s": m, "fitted_s": f}
                            for p, d, m, f in self.samples]}


def default_grid(max_tokens: int = 256) -> list:
    """Mixes of (prefill chunks, decode contexts): prefill chunks alone, decode batches x contexts, both."""
    grid = []
    for n in (8, 32, 64, 128, 256):
        if n <= max_tokens:
            for c in (0, 64, 128):
                grid.append(([(n, c)], []))
    for b in (1, 2, 4, 8, 16, 32):
        for c in (16, 64, 128, 256):
            grid.append(([], [c] * b))
    for n, b, c in ((32, 4, 64), (64, 8, 96), (16, 16, 80), (128, 2, 32)):
        if n <= max_tokens:
            grid.append(([(n, 0)], [c] * b))
    return grid


def calibrate_steps(spec: ModelSpec, *, seed: int = 0, dtype: str = "fp32", threads: int = 1, block_size: int = 16,
                    grid=None, reps: int = 15, model: Transformer | None = None) -> StepTimeModel:
    """Time the server's own step (:class:`PagedStep`, with the building of its inputs) over ``grid``
    (default :func:`default_grid`): ``reps`` rounds over the grid after a warm-up round, each mix's
    median taken; fit
    :data:`STEP_TERMS` by least squares on the relative error (each row divided by its measured
    time), terms whose coefficient comes out negative dropped and the rest refitted."""
    check_servable(spec)
    torch.set_num_threads(threads)
    if model is None:
        model = build_model(spec, dtype=dtype, seed=seed)
    if grid is None:  # the mixes whose positions fit the model's
        grid = [(p, d) for p, d in default_grid() if max([c + n for n, c in p] + [c + 1 for c in d])
                <= spec.max_position_embeddings]
    need = max(sum(-(-(c + n) // block_size) for n, c in p) + sum(-(-(c + 1) // block_size) for c in d)
               for p, d in grid)
    step = PagedStep(model, need, block_size)
    g = torch.Generator().manual_seed(seed)
    mixes = []
    for chunks, decodes in grid:
        items, nb = [], 0
        for n, c in list(chunks) + [(1, c) for c in decodes]:
            nblk = -(-(c + n) // block_size)
            table = list(range(nb, nb + nblk))
            nb += nblk
            ids = torch.randint(0, spec.vocab_size, (c + n,), generator=g).tolist()
            items.append((ids, c, table))
        mixes.append(items)
    step.warm_up()
    times = [[] for _ in grid]
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:  # round after round over the whole grid, so that a slow spell of the machine spreads over all
        for rep in range(reps + 1):
            for j, items in enumerate(mixes):
                t = time.perf_counter()
                step([(ids[c:], c, table) for ids, c, table in items])
                if rep:
                    times[j].append(time.perf_counter() - t)
    finally:
        if was:
            gc.enable()
    rows = [step_terms(p, d) for p, d in grid]
    ys = [sorted(t)[len(t) // 2] for t in times]
    X, y = torch.tensor(rows, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    keep = list(range(len(STEP_TERMS)))
    while True:
        A = X[:, keep] / y[:, None]
        sol = torch.linalg.lstsq(A, torch.ones_like(y)[:, None]).solution[:, 0]
        if (sol >= 0).all() or len(keep) == 1:
            break
        keep = [k for k, s in zip(keep, sol.tolist()) if s >= 0] or keep[:1]
    coef = {t: 0.0 for t in STEP_TERMS}
    for k, s in zip(keep, sol.tolist()):
        coef[STEP_TERMS[k]] = max(s, 0.0)
    cost = StepTimeModel(coef, description={"model": spec.name, "threads": threads, "dtype": dtype,
                                            "block_size": block_size, "reps": reps})
    cost.samples = [(list(p), list(d), m, cost.seconds(p, d)) for (p, d), m in zip(grid, ys)]
    return cost
