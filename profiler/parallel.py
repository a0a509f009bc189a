"""The reference transformer split over ranks (Megatron tensor parallel x pipeline stages).

Each rank builds the FULL seeded model (:func:`profiler.model.build_model`) and keeps its shard
(:func:`shard_model`): its query / kv heads and MLP columns, its rows of the LM head, the layers
of its stage. Row-parallel o_proj and MLP down all-reduce their partial sums (bias added after);
the last stage all-gathers the vocab-parallel logits and picks the greedy token, broadcast to
every rank when pp > 1. Module names are the unsharded model's (``layers.{global i}...``), so
FlopCounterMode attributes each rank's FLOPs to the analytic ops of
:mod:`costmodel.parallel`, which :func:`run_parallel` holds them against, with the KV bytes and
the payload bytes of every collective.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from costmodel import parallel as P
from costmodel.errors import SpecError
from costmodel.spec import ModelSpec, Workload

from .distributed import Comm, launch
from .flops import count_call, is_matmul_like
from .generate import decode_one_token, generate, prefill, random_prompt
from .model import KVCache, Transformer, build_model, torch_dtype
from .moe import MoE
from .runner import analytic_matmul, check_buildable
from .sampling import Sampler, Strategy

PHASES = ("prefill", "decode")


class RowParallelLinear(nn.Linear):
    """``x @ W_r^T`` on this rank's input columns, summed over the tp group, then the bias."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.comm.all_reduce(F.linear(x, self.weight), "tp")
        return y if self.bias is None else y + self.bias


class ExpertParallelMoE(MoE):
    """One ep rank's MoE layer: dispatch (all-gather the ep ranks' tokens), route every gathered
    token, run the rank's own experts (``owned``) on the pairs routed to them, combine
    (reduce-scatter the partial sums: this rank's tokens back), then its shared experts."""

    def forward(self, x: Tensor) -> Tensor:
        B, T, h = x.shape
        x = x.reshape(B * T, h)  # x: [t, h], this rank's tokens
        xs = self.comm.all_gather(x, "ep", dim=0, kind="dispatch")  # [ep * t, h], rank order
        out = self.comm.reduce_scatter(self.routed(xs, self.owned), "ep", kind="combine")  # [t, h]
        if self.shared_expert is not None:
            out = out + self.shared(x)
        return out.view(B, T, h)


class ShardedTransformer(Transformer):
    """A :class:`Transformer` holding one rank's shard; ``forward`` runs its stage."""

    def setup(self, spec: ModelSpec, split: P.Split, rank: int, comm: Comm) -> None:
        self.full_spec, self.split, self.rank, self.comm = spec, split, rank, comm
        self.stage = split.stage_of(rank)
        self.layer_range = P.stage_range(spec.num_layers, split.pp, self.stage)
        self.first, self.last = self.stage == 0, self.stage == split.pp - 1

    def stage_layers(self):
        return [self.layers[i] for i in self.layer_range]

    def setup_caches(self, rows: int, max_len: int) -> None:
        p = next(self.parameters())
        for layer in self.stage_layers():
            layer.attention.kv_cache = KVCache(rows, self.spec.num_kv_heads, max_len, self.spec.head_dim,
                                               p.dtype, p.device)

    def drop_caches(self) -> None:
        for layer in self.stage_layers():
            layer.attention.kv_cache = None

    def caches(self) -> list[KVCache]:
        return [la.attention.kv_cache for la in self.stage_layers() if la.attention.kv_cache is not None]

    def forward(self, tokens: Tensor, input_pos: Tensor, kv_len: int, logits: str = "last") -> Tensor | None:
        """This stage's share of a pass; the last stage returns the full logits ``[B, 1 or T, V]``."""
        B, T = tokens.shape
        split, dtype = self.split, next(self.parameters()).dtype
        tp_rank = split.tp_rank_of(self.rank)
        if self.first:
            x = self.tok_embeddings(tokens)  # x: [B, T, h]
            if self.pos_embeddings is not None:
                x = x + self.pos_embeddings(input_pos)
        else:
            x = self.comm.recv((B, T, self.spec.hidden_size), dtype, split.rank(self.stage - 1, tp_rank))
        rope = None
        if self.spec.position_kind == "rotary":
            rope = (self.rope_cos[input_pos].to(x.dtype), self.rope_sin[input_pos].to(x.dtype))
        for layer in self.stage_layers():
            x = layer(x, input_pos, kv_len, rope)
        if not self.last:
            self.comm.send(x, split.rank(self.stage + 1, tp_rank))
            return None
        x = self.final_norm(x)
        if logits == "last":
            x = x[:, -1:]
        out = self.lm_head(x)  # [B, t, V_padded / tp]
        if split.tp == 1:
            return out
        return self.comm.all_gather(out, "tp")[..., :self.full_spec.vocab_size]  # padded rows dropped


def _rows(w: Tensor, i: int, n: int) -> Tensor:
    """Shard i of n along dim 0."""
    k = w.shape[0] // n
    return w[i * k:(i + 1) * k]


def _cols(w: Tensor, i: int, n: int) -> Tensor:
    k = w.shape[1] // n
    return w[:, i * k:(i + 1) * k]


def _ep_model(full: Transformer, spec: ModelSpec, split: P.Split, rank: int, comm: Comm) -> ShardedTransformer:
    """``rank``'s expert-parallel copy of ``full`` (tp = pp = 1): every weight but the routed
    experts of other ranks, which become ``nn.Identity`` (module names keep the global expert
    numbers); each MoE layer an :class:`ExpertParallelMoE` owning experts
    ``[e * E / ep, (e + 1) * E / ep)``."""
    dev, dt = full.tok_embeddings.weight.device, full.tok_embeddings.weight.dtype
    m = ShardedTransformer(spec, full.attention).to(device=dev, dtype=dt)
    m.load_state_dict(full.state_dict())
    m.setup(spec, split, rank, comm)
    per = spec.num_experts // split.ep
    owned = range(split.ep_rank_of(rank) * per, (split.ep_rank_of(rank) + 1) * per)
    for layer in m.layers:
        if isinstance(layer.mlp, MoE):
            layer.mlp.__class__ = ExpertParallelMoE
            layer.mlp.comm, layer.mlp.owned = comm, owned
            for j in range(spec.num_experts):
                if j not in owned:
                    layer.mlp.experts[j] = nn.Identity()
    return m.eval()


def shard_model(full: Transformer, spec: ModelSpec, split: P.Split, rank: int, comm: Comm) -> ShardedTransformer:
    """``rank``'s shard of the full model ``full`` (weights copied; ``full`` is left as it is).
    Under tp the LM head holds its ``V_padded / tp`` rows of the head padded with zero rows
    (:func:`costmodel.parallel.padded_vocab`)."""
    if split.ep > 1:
        return _ep_model(full, spec, split, rank, comm)
    tp, t = split.tp, split.tp_rank_of(rank)
    sspec = P.shard_spec(spec, tp).with_(tie_word_embeddings=False)
    dev, dt = full.tok_embeddings.weight.device, full.tok_embeddings.weight.dtype
    m = ShardedTransformer(sspec, full.attention).to(device=dev, dtype=dt)
    m.setup(spec, split, rank, comm)
    with torch.no_grad():
        if m.first:
            m.tok_embeddings.weight.copy_(full.tok_embeddings.weight)
            if m.pos_embeddings is not None:
                m.pos_embeddings.weight.copy_(full.pos_embeddings.weight)
        else:
            m.tok_embeddings = m.pos_embeddings = None
        if m.last:
            m.final_norm.load_state_dict(full.final_norm.state_dict())
            vp = P.split_vocab(spec, split)
            m.lm_head = nn.Linear(spec.hidden_size, vp // tp, bias=False, device=dev, dtype=dt)
            w = full.lm_head.weight
            if vp > spec.vocab_size:  # zero rows: their logits are dropped after the all-gather
                w = torch.cat([w, w.new_zeros(vp - spec.vocab_size, w.shape[1])])
            m.lm_head.weight.copy_(_rows(w, t, tp))
        else:
            m.final_norm = m.lm_head = None
        for i in range(spec.num_layers):
            if i not in m.layer_range:
                m.layers[i] = nn.Identity()  # keeps the global layer numbers in module names
                continue
            src, dst = full.layers[i], m.layers[i]
            dst.attn_norm.load_state_dict(src.attn_norm.state_dict())
            dst.mlp_norm.load_state_dict(src.mlp_norm.state_dict())
            column = [(dst.attention.q_proj, src.attention.q_proj), (dst.attention.k_proj, src.attention.k_proj),
                      (dst.attention.v_proj, src.attention.v_proj), (dst.mlp.up, src.mlp.up)]
            if src.mlp.gated:
                column.append((dst.mlp.gate, src.mlp.gate))
            for d, s in column:  # column-parallel: output rows (heads, MLP columns) split
                d.weight.copy_(_rows(s.weight, t, tp))
                if s.bias is not None:
                    d.bias.copy_(_rows(s.bias, t, tp))
            for owner, name in ((dst.attention, "o_proj"), (dst.mlp, "down")):
                s = getattr(src.attention if owner is dst.attention else src.mlp, name)
                d = getattr(owner, name)
                if tp > 1:  # row-parallel: input columns split, partial sums all-reduced
                    d = RowParallelLinear(d.in_features, d.out_features, bias=s.bias is not None,
                                          device=dev, dtype=dt)
                    d.comm = comm
                    setattr(owner, name, d)
                d.weight.copy_(_cols(s.weight, t, tp))
                if s.bias is not None:
                    d.bias.copy_(s.bias)
    return m.eval()


# --- one rank ------------------------------------------------------------------------------

def _greedy(logits: Tensor) -> Tensor:
    return logits[:, -1].argmax(dim=-1)  # [B]: the Sampler's greedy pick


def rank_main(rank: int, comm: Comm, spec: ModelSpec, wl: Workload, split: P.Split, attention: str,
              seed: int, device: str, reference: bool) -> dict:
    """One rank: build the full seeded model, keep the shard, generate greedily under the
    counters; rank 0 also generates with the unsharded model (``reference``) afterwards."""
    import torch.distributed as dist

    world = list(range(split.world))
    comm.groups = {}
    for s in range(split.pp):  # every rank creates every group, in the same order
        ranks = split.tp_group(s)
        pg = dist.new_group(ranks)
        if rank in ranks:
            comm.groups["tp"] = (pg, ranks)
    if split.ep > 1:
        comm.groups["ep"] = (dist.new_group(split.ep_group()), split.ep_group())
    comm.groups["world"] = (dist.group.WORLD, world)
    full = build_model(spec, dtype=wl.act_dtype, device=str(comm.device.type), seed=seed, attention=attention)
    if comm.device.type == "cuda":
        full = full.to(comm.device)
    model = shard_model(full, spec, split, rank, comm)
    if not (reference and rank == 0):
        del full
    dev = comm.device
    full_prompt = random_prompt(spec, wl.batch, wl.prompt, seed, dev)
    b = wl.batch // split.ep  # under ep each rank runs its batch / ep of the sequences
    prompt = full_prompt[split.ep_rank_of(rank) * b:(split.ep_rank_of(rank) + 1) * b]
    B, S = prompt.shape
    last_src = split.rank(split.pp - 1, 0)
    counted: dict = {}  # (phase, step) -> {(layer, op): flops}
    uncounted: set = set()
    kv: dict[str, int] = {}

    def run(phase, step, fn, *args):
        out, sc = count_call(fn, model, *args)
        counted[(phase, step)] = dict(sc.counted)
        uncounted.update(op for op in sc.uncounted if is_matmul_like(op))
        tok = _greedy(out) if out is not None else torch.empty(B, dtype=torch.int64, device=dev)
        if split.pp > 1:
            comm.broadcast(tok, last_src)
        return tok

    t0 = time.perf_counter()
    with torch.no_grad():
        model.setup_caches(B, S + wl.gen - 1)
        comm.phase = "prefill"
        tok = run("prefill", 0, prefill, prompt, wl.logits)
        kv["prefill"] = model.kv_cache_bytes()
        seqs = [prompt, tok[:, None]]
        comm.phase = "decode"
        for i in range(1, wl.gen):
            tok = run("decode", i, decode_one_token, tok[:, None], S + i - 1)
            seqs.append(tok[:, None])
        kv["decode"] = model.kv_cache_bytes()
    seconds = time.perf_counter() - t0
    tokens = torch.cat(seqs, dim=1).cpu().tolist()
    out = {"rank": rank, "counted": counted, "kv_cache_bytes": kv, "comm": comm.summary(),
           "uncounted_matmul_ops": sorted(str(o) for o in uncounted), "tokens": tokens, "seconds": seconds}
    if reference and rank == 0:
        with torch.no_grad():
            ref = generate(full, full_prompt, wl.gen, Sampler(Strategy.of(wl), seed, dev), kv_cache=True,
                           logits=wl.logits)
        out["reference_tokens"] = ref.cpu().tolist()
    return out


# --- the parent: launch, compare --------------------------------------------------------------

def check_parallel(spec: ModelSpec, wl: Workload, split: P.Split) -> None:
    """Refuse, with one line, what the sharded reference cannot run."""
    P.check_split(spec, split)
    P.check_ep_workload(wl, split)
    check_buildable(spec, wl)
    if wl.strategy != "greedy" or wl.beams != 1:
        raise SpecError(f"the sharded reference decodes greedily (one beam); got strategy {wl.strategy!r}")
    if not wl.kv_cache:
        raise SpecError("the sharded reference decodes with a KV cache; drop --no-kv-cache")
    if spec.mla:
        raise SpecError(f"{spec.name} has latent attention; the sharded reference splits q/k/v attention only")
    variants = [f for f, on in (("qk_norm", spec.qk_norm is not None), ("parallel_block", spec.parallel_block),
                                ("sliding_window", "sliding_attention" in spec.layer_types)) if on]
    if variants and split.world > 1:
        raise SpecError(f"{spec.name} has {variants[0]}; the sharded reference splits blocks without q/k "
                        "norms, parallel blocks or sliding layers: use tp = pp = 1")
    torch_dtype(wl.act_dtype)


@dataclass
class RankResult:
    rank: int
    stage: int
    tp_rank: int
    layers: range
    analytic: dict  # phase -> {(layer, op): flops}
    counted: dict  # phase -> {(layer, op): flops}
    kv_cache_bytes: dict  # phase -> measured
    analytic_kv_cache_bytes: dict
    comm: dict  # phase -> kind -> {"calls", "bytes", "seconds"}
    analytic_comm: dict  # phase -> kind -> bytes
    uncounted_matmul_ops: list
    mismatches: list  # one-line strings

    def phase_dict(self, phase: str) -> dict:
        comm = self.comm.get(phase, {})
        return {
            "analytic_matmul_flops": sum(self.analytic[phase].values()),
            "counted_matmul_flops": sum(self.counted[phase].values()),
            "kv_cache_bytes": self.kv_cache_bytes[phase],
            "analytic_kv_cache_bytes": self.analytic_kv_cache_bytes[phase],
            "communication": {k: {"analytic_bytes": self.analytic_comm[phase][k],
                                  "measured_bytes": comm.get(k, {}).get("bytes", 0),
                                  "calls": comm.get(k, {}).get("calls", 0),
                                  "measured_seconds": comm.get(k, {}).get("seconds", 0.0)}
                              for k in self.analytic_comm[phase] if self.analytic_comm[phase][k] or k in comm},
        }

    def to_dict(self) -> dict:
        return {"rank": self.rank, "stage": self.stage, "tp_rank": self.tp_rank,
                "layers": [self.layers.start, self.layers.stop - 1] if len(self.layers) else [],
                **{p: self.phase_dict(p) for p in PHASES},
                "uncounted_matmul_ops": self.uncounted_matmul_ops, "mismatches": self.mismatches}


@dataclass
class ParallelResult:
    spec: ModelSpec
    workload: Workload
    split: P.Split
    attention: str
    device: str
    ranks: list[RankResult]
    tokens: list  # generated by the ranks (every rank the same)
    reference_tokens: list | None  # the unsharded model's, same seed
    seconds: float  # wall time, start-up included

    @property
    def tokens_match(self) -> bool | None:
        return None if self.reference_tokens is None else self.tokens == self.reference_tokens

    @property
    def mismatches(self) -> list[str]:
        out = [f"rank {r.rank}: {m}" for r in self.ranks for m in r.mismatches]
        out += [f"rank {r.rank}: matmul op {op} ran without a FLOP count"
                for r in self.ranks for op in r.uncounted_matmul_ops]
        if self.tokens_match is False:
            out.append("sharded greedy tokens differ from the unsharded model's")
        return out

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def communication(self) -> dict:
        """Per phase: payload bytes summed over ranks and kinds, analytic and measured; seconds
        spent inside collectives (the slowest rank's sum); wire bytes a ring moves (analytic)."""
        out = {}
        for p in PHASES:
            a = sum(sum(r.analytic_comm[p].values()) for r in self.ranks)
            m = sum(v["bytes"] for r in self.ranks for v in r.comm.get(p, {}).values())
            wire = sum(P.wire_bytes(self.split, k, b) for r in self.ranks for k, b in r.analytic_comm[p].items())
            secs = max((sum(v["seconds"] for v in r.comm.get(p, {}).values()) for r in self.ranks), default=0.0)
            out[p] = {"analytic_bytes": a, "measured_bytes": m, "measured_seconds": secs,
                      "analytic_ring_wire_bytes": wire, "match": a == m}
        return out

    def to_dict(self) -> dict:
        return {
            "model": self.spec.name, "tp": self.split.tp, "pp": self.split.pp, "ep": self.split.ep,
            "world": self.split.world, "vocab_rows": P.split_vocab(self.spec, self.split),
            "backend": "nccl" if self.device == "cuda" else "gloo", "device": self.device,
            "attention": self.attention, "workload": self.workload.resolved(),
            "conventions": {
                "flops": "2 FLOPs per multiply-add (FlopCounterMode in each rank); matmul FLOPs only",
                "communication_bytes": "payload: per collective call, the bytes of the tensor this rank "
                                       "passes in (all-reduce buffer, all-gather own shard, sent / "
                                       "received tensor, broadcast buffer); summed over ranks",
                "analytic_ring_wire_bytes": "bytes a ring sends per rank: all-reduce 2 (tp-1)/tp x "
                                            "payload, all-gather (tp-1) x shard, send/broadcast x 1",
                "measured_seconds": "wall time inside the collectives (waits for slower ranks "
                                    "included), the slowest rank",
                "decode": "totals over the gen - 1 decode steps",
                "ep": "dispatch: all-gather of the rank's own tokens (payload: its shard); combine: "
                      "reduce-scatter of the expert outputs (payload: the whole buffer); routed-expert "
                      "FLOPs compared summed over the ep ranks (per rank: the uniform 1 / ep share)",
                "vocab_rows": "LM-head rows under tp: the vocabulary padded to a multiple of "
                              "vocab_pad_multiple x tp where tp does not divide it (Megatron-LM)",
            },
            "ranks": [r.to_dict() for r in self.ranks],
            "communication": self.communication(),
            "tokens": self.tokens, "reference_tokens": self.reference_tokens,
            "tokens_match": self.tokens_match,
            "mismatches": self.mismatches, "ok": self.ok, "seconds": self.seconds,
        }


def _analytic_by_op(cost, sdpa: bool) -> dict:
    """{(layer, op): matmul FLOPs}; a stage's cost keeps the global layer numbers (``stage_view``)."""
    return dict(analytic_matmul(cost, sdpa))


def _routed(key) -> bool:
    """A routed expert's op: under ep its per-rank FLOPs follow the router, only their sum is exact."""
    return key[1].startswith("expert")


def _compare(rank: int, phase: str, step, analytic: dict, counted: dict, out: list, skip=None) -> None:
    for key in sorted(set(analytic) | set(counted), key=lambda k: (k[0] is None, k[0] or 0, k[1])):
        if skip is not None and skip(key):
            continue
        a, c = analytic.get(key, 0), counted.get(key, 0)
        if a != c:
            where = phase + (f" step {step}" if step else "") + (f" layer {key[0]}" if key[0] is not None else "")
            out.append(f"{where} {key[1]}: counted_matmul_flops analytic {a:,} != measured {c:,}")


def compare_rank(spec, wl, split, rank, sdpa: bool, raw: dict) -> RankResult:
    """Hold one rank's counts against :mod:`costmodel.parallel`, step by step and op by op."""
    rng = P.stage_range(spec.num_layers, split.pp, split.stage_of(rank))
    mism: list[str] = []
    skip = _routed if split.ep > 1 else None  # summed over the ep ranks instead (_compare_experts)
    _compare(rank, "prefill", None, _analytic_by_op(P.rank_prefill_cost(spec, wl, split, rank), sdpa),
             raw["counted"][("prefill", 0)], mism, skip)
    dec = defaultdict(int)
    for i in range(1, wl.gen):
        c = raw["counted"][("decode", i)]
        _compare(rank, "decode", i,
                 _analytic_by_op(P.rank_decode_step_cost(spec, wl, split, rank, i), sdpa), c, mism, skip)
        for k, v in c.items():
            dec[k] += v
    analytic = {"prefill": _analytic_by_op(P.rank_prefill_cost(spec, wl, split, rank), sdpa),
                "decode": (_analytic_by_op(P.rank_decode_cost(spec, wl, split, rank), sdpa)
                           if wl.gen > 1 else {})}
    counted = {"prefill": raw["counted"][("prefill", 0)], "decode": dict(dec)}
    _compare(rank, "decode total", None, analytic["decode"], counted["decode"], mism, skip)
    akv = {"prefill": P.rank_kv_cache_bytes(spec, wl, split, rank, wl.prompt),
           "decode": P.rank_kv_cache_bytes(spec, wl, split, rank)}
    acomm = {p: P.rank_comm_bytes(spec, wl, split, rank, p) for p in PHASES}
    for p in PHASES:
        if akv[p] != raw["kv_cache_bytes"][p]:
            mism.append(f"{p}: kv_cache_bytes analytic {akv[p]:,} != measured {raw['kv_cache_bytes'][p]:,}")
        got = raw["comm"].get(p, {})
        for k in P.collective_kinds(split):
            m = got.get(k, {}).get("bytes", 0)
            if m != acomm[p][k]:
                mism.append(f"{p}: {k} bytes analytic {acomm[p][k]:,} != measured {m:,}")
    return RankResult(rank, split.stage_of(rank), split.tp_rank_of(rank), rng, analytic, counted,
                      raw["kv_cache_bytes"], akv, raw["comm"], acomm, raw["uncounted_matmul_ops"], mism)


def run_parallel(spec: ModelSpec, wl: Workload, split: P.Split, *, attention: str = "sdpa",
                 device: str = "cpu", seed: int = 0, reference: bool = True,
                 timeout_s: float = 300.0) -> ParallelResult:
    """Start ``tp * pp`` ranks, generate greedily, and compare every rank with the analytic split."""
    check_parallel(spec, wl, split)
    t0 = time.perf_counter()
    raws = launch(rank_main, split.world, (spec, wl, split, attention, seed, device, reference),
                  device=device, timeout_s=timeout_s)
    sdpa = attention == "sdpa"
    ranks = [compare_rank(spec, wl, split, r, sdpa, raw) for r, raw in enumerate(raws)]
    if split.ep > 1:  # each rank generated its own sequences: the batch is theirs in rank order
        tokens = [row for raw in raws for row in raw["tokens"]]
        ranks[0].mismatches.extend(_compare_experts(spec, wl, raws, sdpa))
    else:
        tokens = raws[0]["tokens"]
        for raw in raws[1:]:
            if raw["tokens"] != tokens:
                ranks[raw["rank"]].mismatches.append("generated tokens differ from rank 0's")
    return ParallelResult(spec, wl, split, attention, device, ranks, tokens, raws[0].get("reference_tokens"),
                          time.perf_counter() - t0)


def _compare_experts(spec: ModelSpec, wl: Workload, raws: list, sdpa: bool) -> list[str]:
    """Under ep: the routed experts' matmul FLOPs summed over the ranks, per pass, layer and op,
    against the whole batch's analytic ones (2 t k h I_e per matrix, however the router spread
    the pairs over the ranks)."""
    from costmodel.analysis import decode_step_cost, prefill_cost

    out: list[str] = []
    steps = [("prefill", 0, prefill_cost(spec, wl))] + [("decode", i, decode_step_cost(spec, wl, i))
                                                         for i in range(1, wl.gen)]
    for phase, i, cost in steps:
        analytic = {k: v for k, v in _analytic_by_op(cost, sdpa).items() if _routed(k)}
        summed = defaultdict(int)
        for raw in raws:
            for k, v in raw["counted"][(phase, i)].items():
                if _routed(k):
                    summed[k] += v
        _compare(0, f"{phase} (experts, all ep ranks)", i or None, analytic, dict(summed), out)
    return out


# --- validation cases ------------------------------------------------------------------------

@dataclass(frozen=True)
class ParallelCase:
    name: str
    model: str  # a preset
    tp: int
    pp: int
    covers: str
    attention: str = "sdpa"
    quick: bool = True  # in ``validate --quick``
    workload: tuple = (("batch", 2), ("prompt", 12), ("gen", 5))

    def build_workload(self) -> Workload:
        return Workload(weight_dtype="fp32", act_dtype="fp32", **dict(self.workload))


PARALLEL_CASES: tuple[ParallelCase, ...] = (
    ParallelCase("tp2", "tiny-llama", 2, 1, "tensor parallel: GQA 4/2 heads -> 2/1 per rank, SwiGLU, untied"),
    ParallelCase("pp2", "tiny-gpt2", 1, 2, "pipeline: 2 stages, learned positions, tied head on the last stage",
                 "eager"),
    ParallelCase("tp2-pp2", "tiny-qwen2", 2, 2, "4 ranks: tp 2 x pp 2, q/k/v bias, tied head", quick=False),
)


def parallel_case_names() -> list[str]:
    return [c.name for c in PARALLEL_CASES]


def run_parallel_cases(quick: bool = False, names=None, device: str = "cpu"):
    """Yield (case, :class:`ParallelResult`) as each finishes."""
    from costmodel.models import get_model

    for case in PARALLEL_CASES:
        if (names and case.name not in names) or (not names and quick and not case.quick):
            continue
        res = run_parallel(get_model(case.model), case.build_workload(), P.Split(case.tp, case.pp),
                           attention=case.attention, device=device)
        yield case, res
