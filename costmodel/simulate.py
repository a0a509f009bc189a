"""A continuous-batching serving simulator: requests arrive, a vLLM-V1-style scheduler batches them
step by step, and each step's time is the roofline cost of exactly the mix it runs.

Pure arithmetic: no numpy or torch; randomness from ``random.Random(seed)`` only.

The scheduler (:func:`simulate`), as vLLM V1's ``Scheduler.schedule`` (vllm/v1/core/sched/scheduler.py,
https://github.com/vllm-project/vllm) does it, one iteration at a time:

- every request has ``num_tokens`` (prompt + tokens generated so far) and ``num_computed_tokens``
  (positions in its KV cache); a step feeds it ``num_tokens - num_computed_tokens`` tokens, capped by
  the token budget ``max_num_batched_tokens`` (chunked prefill; without it a prompt is scheduled whole
  or not at all). When a request's computed tokens reach ``num_tokens``, the step samples its next token.
- running requests first, in the order they were admitted (decodes and unfinished prefill chunks
  alike), then waiting requests first come first served while the budget lasts and fewer than
  ``max_num_seqs`` run; none are admitted in a step that pre-empted one.
- the KV cache is paged: ``block_size`` positions a block, ``ceil(positions / block_size)`` blocks a
  request, allocated as its positions grow, freed when it finishes. Blocks available =
  (gpu_memory_utilization x capacity - weights - activation reserve) // bytes of one block (every
  layer holds every position: sliding-window layers are not freed early).
- when a running request needs a block and none is free, the request last in the running list
  (the most recently admitted) is pre-empted by recompute: its blocks are freed, its computed
  tokens reset to 0, and it goes back to the head of the waiting queue; readmitted, it is
  prefilled again over prompt + the tokens it had generated, and the last of them yields its next
  token (the tokens already emitted stay emitted).
- a request that can never run (more positions than the whole cache; without chunking, a prompt
  longer than the budget) is rejected on arrival and reported unfinished: no request is lost (nor
  is one that, unchunked, was pre-empted and can no longer be recomputed within the budget).

Step time (:class:`IterationCost`): the roofline ``max(compute, memory)`` of each op of the pass,
with the FLOPs and bytes of exactly that mix: the per-token ops (projections, MLP, norms) scaled by
the tokens fed, the LM head and sampling by the sequences in the step (vLLM V1 computes logits for
every scheduled request's last token), and attention over each sequence's own context, summed over
the sequences; plus tensor-parallel communication and a per-iteration overhead. The coefficients
come from a handful of :func:`~costmodel.analysis.step_cost` evaluations made once; nothing is
re-analysed per step.

Under an engine (:mod:`costmodel.engine`, e.g. ``vllm``) the passes fitted are the ones the engine
executes (:func:`costmodel.engine.executed`: fused element-wise kernels), at its rates (shape-aware:
a matmul's rate from its rows at the step's token count); its flash attention is costed per
iteration, not fitted (:class:`_FlashAttention`: the tiles of each prefill chunk, split-K decoding
of the decode batch); each iteration adds the engine's launch and host time
(:func:`costmodel.engine.pass_overhead_s`: CUDA graphs for an iteration of decodes only, as vLLM
captures them; eager launches once a prefill chunk is in it), and tp/pp communication is NCCL's
(:func:`costmodel.plan.comm_seconds`, as ``plan`` times an engine).
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace

from . import formulas as F
from . import engine as E
from . import fused
from .analysis import experts_touched, step_cost
from .errors import SpecError
from .hardware import Hardware
from .parallel import Layout, shard_op, shard_step, split_vocab, stage_kv_cache_bytes
from .plan import COMM_MODELS, check_layout, comm_seconds, memory_use
from .roofline import rates
from .spec import ModelSpec, Workload

# vLLM's defaults (vllm/engine/arg_utils.py, EngineArgs.get_batch_defaults, the OpenAI API server
# usage context on GPUs under 70 GiB or A100s: max_num_batched_tokens 2048, max_num_seqs 256; on
# larger GPUs such as H100 it raises them to 8192 and 1024), block size 16 and
# gpu_memory_utilization 0.90 (the EngineArgs field defaults in the same file; vLLM's docs,
# https://docs.vllm.ai/en/stable/configuration/engine_args.html). https://github.com/vllm-project/vllm
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
DEFAULT_BLOCK_SIZE = 16
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9

DISTRIBUTIONS = ("fixed", "uniform", "normal", "lognormal")


# --- Workloads --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One request: it arrives at ``arrival_s``, brings ``prompt_tokens`` and wants ``output_tokens``."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Lengths:
    """A token-length distribution: "fixed" (a), "uniform" (integers a..b), "normal" (mean a, sd b),
    "lognormal" (exp of a normal of mu a, sigma b); draws are rounded and at least 1."""

    kind: str
    a: float
    b: float = 0.0

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            v = self.a
        elif self.kind == "uniform":
            v = rng.randint(int(self.a), int(self.b))
        elif self.kind == "normal":
            v = rng.gauss(self.a, self.b)
        else:
            v = rng.lognormvariate(self.a, self.b)
        return max(1, round(v))

    def describe(self) -> str:
        return f"{self.a:g}" if self.kind == "fixed" else f"{self.kind}:{self.a:g}:{self.b:g}"


def parse_lengths(text: str, what: str = "length") -> Lengths:
    """``N``, ``uniform:LO:HI``, ``normal:MEAN:SD`` or ``lognormal:MU:SIGMA``; SpecError in one line."""
    allowed = "N, uniform:LO:HI, normal:MEAN:SD or lognormal:MU:SIGMA"
    parts = str(text).strip().split(":")
    try:
        if len(parts) == 1:
            n = int(parts[0])
            if n < 1:
                raise ValueError
            return Lengths("fixed", n)
        kind, a, b = parts[0].lower(), float(parts[1]), float(parts[2])
        if len(parts) != 3 or kind not in DISTRIBUTIONS[1:]:
            raise ValueError
    except (ValueError, IndexError):
        raise SpecError(f"bad {what} {text!r}: give {allowed}") from None
    if kind == "uniform" and not (a == int(a) and b == int(b) and 1 <= a <= b):
        raise SpecError(f"bad {what} {text!r}: uniform needs integers 1 <= LO <= HI")
    if kind == "normal" and not (a > 0 and b >= 0):
        raise SpecError(f"bad {what} {text!r}: normal needs MEAN > 0 and SD >= 0")
    if kind == "lognormal" and not (0 <= b <= 5 and a <= 20):
        # MU and SIGMA are of log(tokens): the median is e^MU (lognormal:500:0.5 would ask for
        # e^500 tokens; a float draw past e^709 overflows)
        raise SpecError(f"bad {what} {text!r}: lognormal needs MU <= 20 and 0 <= SIGMA <= 5, both of "
                        f"log(tokens): the median is e^MU tokens (lognormal:6.2:0.5: a median of ~490)")
    return Lengths(kind, a, b)


def poisson_requests(n: int, rps: float, prompt, gen, seed: int = 0, lengths_from=None) -> list[Request]:
    """``n`` requests with Poisson arrivals at ``rps`` per second (exponential gaps of mean 1 / rps,
    the first after one gap), prompt and output lengths ``prompt`` / ``gen`` (ints or :class:`Lengths`),
    or, with ``lengths_from`` (requests, e.g. a trace's), (prompt, output) pairs drawn from those
    uniformly with replacement; all from ``random.Random(seed)``: the same seed gives the same requests."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError(f"requests must be a positive integer, got {n!r}")
    if isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < math.inf:
        raise SpecError(f"rps must be a positive number, got {rps!r}")
    p = prompt if isinstance(prompt, Lengths) else parse_lengths(str(prompt), "prompt")
    g = gen if isinstance(gen, Lengths) else parse_lengths(str(gen), "gen")
    rng = random.Random(seed)
    pairs = None if lengths_from is None else [(q.prompt_tokens, q.output_tokens) for q in lengths_from]
    if pairs is not None and not pairs:
        raise SpecError("lengths_from has no requests to draw lengths from")
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rps)
        if pairs is None:
            out.append(Request(i, t, p.draw(rng), g.draw(rng)))
        else:
            out.append(Request(i, t, *pairs[rng.randrange(len(pairs))]))
    return out


def read_trace(lines, source: str = "trace", arrivals: bool = True) -> list[Request]:
    """Requests from JSON lines ``{"arrival_s": s, "prompt_tokens": p, "output_tokens": g}`` (blank
    lines skipped); sorted by arrival (stable). A bad line raises SpecError naming its number.
    ``arrivals`` False: lengths only (``arrival_s`` optional, read as 0)."""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{source} line {number}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise SpecError(f"{source} line {number}: expected an object with arrival_s, prompt_tokens, output_tokens")
        if not arrivals:
            row = {"arrival_s": 0, **row}
        missing = [k for k in ("arrival_s", "prompt_tokens", "output_tokens") if k not in row]
        if missing:
            raise SpecError(f"{source} line {number}: missing {', '.join(missing)}")
        a, p, g = row["arrival_s"], row["prompt_tokens"], row["output_tokens"]
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a < math.inf:
            raise SpecError(f"{source} line {number}: arrival_s must be a number >= 0, got {a!r}")
        for k, v in (("prompt_tokens", p), ("output_tokens", g)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"{source} line {number}: {k} must be a positive integer, got {v!r}")
        out.append(Request(len(out), float(a), p, g))
    if not out:
        raise SpecError(f"{source} has no requests")
    order = sorted(range(len(out)), key=lambda i: out[i].arrival_s)
    return [replace(out[j], id=i) for i, j in enumerate(order)]


def read_trace_file(path: str, arrivals: bool = True) -> list[Request]:
    try:
        with open(path, encoding="utf-8") as f:
            return read_trace(f, path, arrivals)
    except OSError as e:
        raise SpecError(f"cannot read trace {path!r}: {e.strerror or e}") from None


# --- Iteration cost -----------------------------------------------------------------------------------

def _fit_token(e1, e2, e3):
    """Per field: (per pass, per token, per logits row) from passes of (T, R) = (1, 1), (2, 2), (2, 1)."""
    out = []
    for v1, v2, v3 in zip(e1, e2, e3):
        c_r = v2 - v3
        c_t = v3 - v1
        out.append((v1 - c_t - c_r, c_t, c_r))
    return tuple(out)


def _fit_context(f12, f13, f23, f24, f34):
    """Per field: (q*k, k, q, q*q, 1) coefficients of f(q, k), a polynomial in those terms, from
    f at (q, k) = (1, 2), (1, 3), (2, 3), (2, 4), (3, 4):
    f(1, 3) - f(1, 2) = a + b and f(2, 4) - f(2, 3) = 2a + b give a (q*k) and b (k); what is left,
    g(q) = f(q, q + 1) - a q (q + 1) - b (q + 1) = c q + d q^2 + e, by Newton from q = 1, 2, 3."""
    out = []
    for v12, v13, v23, v24, v34 in zip(f12, f13, f23, f24, f34):
        s1, s2 = v13 - v12, v24 - v23
        a = s2 - s1
        b = s1 - a
        g1, g2, g3 = (v - a * q * (q + 1) - b * (q + 1) for q, v in ((1, v12), (2, v23), (3, v34)))
        d = (g3 - 2 * g2 + g1) / 2
        c = g2 - g1 - 3 * d
        e = g1 - c - d
        out.append((a, b, c, d, e))
    return tuple(out)


class IterationCost:
    """Seconds of one scheduler iteration for the mix it runs.

    ``seconds(prefill_chunks, decode_contexts)``: ``prefill_chunks`` is a list of (new_tokens,
    context_before) — a chunk of ``new_tokens`` prompt (or recomputed) tokens of a sequence that has
    ``context_before`` positions cached already; ``decode_contexts`` a list of the cached positions
    of each decoding sequence (its one new token attends over that + 1 keys).

    Built by :meth:`from_model` from closed-form coefficients (see the module docstring); an engine
    model can replace them by passing ``engine`` there (not modelled yet: only None / "eager").
    """

    def __init__(self, token_ops, context_groups, comm, overhead_s: float, op_overhead_s: float,
                 description: dict | None = None, *, token_rates=None, context_latency=None, flash=(),
                 engine=None):
        # token_ops: [(mult, F, B, (flops c0, cT, cR), (bytes c0, cT, cR), expert_bytes_per_copy, act)]
        # context_groups: [(window or None, [(mult, F, B, flops coeffs, bytes coeffs, weight bytes), ...])]
        # token_rates: None (each op's F and B above) or, under shape-aware rates, per token op
        #   (rates, op, shape coeffs): its rates from its shape at the step's tokens and rows
        # context_latency: per context group, per op, the latency bytes of its rates (0: flat)
        # flash: [_FlashAttention]: an engine's fused attention of a layer group, costed per step
        # engine: the costmodel.engine.Engine whose launch and host overheads apply (None: eager)
        self.token_ops = token_ops
        self.context_groups = context_groups
        self.comm = comm  # (seconds at 0 tokens, seconds per token)
        self.overhead_s = overhead_s
        self.op_overhead_s = op_overhead_s
        self.description = description or {}
        self.token_rates = token_rates
        self.context_latency = context_latency
        self.flash = tuple(flash)
        self.engine = engine
        self._kernels = (sum(m for m, *_ in token_ops)
                         + sum(m for _, ops in context_groups for m, *_ in ops)
                         + sum(f.mult for f in self.flash))
        self._token_memo: dict = {}
        self._comm_of = None  # (tokens, sequences) -> seconds, where communication is not affine
        self._comm_memo: dict = {}
        self._expert_cap = None

    @classmethod
    def from_model(cls, spec: ModelSpec, wl: Workload, hw: Hardware, engine=None,
                   layout: Layout | None = None, overhead_s: float = 0.0, *, pass_cost=None,
                   op_rates=None, collectives: str | None = None) -> "IterationCost":
        """Coefficients for ``spec`` run as ``wl`` (its dtypes, causal counting, sampling) on ``hw``
        laid out as ``layout`` (per-GPU shares of tp, pp stages in turn, as the plan times them).

        ``engine`` (a :class:`costmodel.engine.Engine`, a built-in id or a JSON file; None or
        "eager": the reference's eager ops): each pass as the engine executes it
        (:func:`costmodel.engine.executed`: fused element-wise kernels, flash attention), at its rates
        (:func:`costmodel.engine.engine_rates_for`), plus its launch and host overhead per pass
        (:func:`costmodel.engine.pass_overhead_s`: launch mode "decode" for an iteration of decodes
        only, "prefill" for one with a prefill chunk). Flash attention is not fitted (its tile-rounded
        cost is no polynomial): :class:`_FlashAttention` evaluates it per iteration.
        ``collectives`` (tp / pp > 1): the communication model of :func:`costmodel.plan.comm_seconds`,
        as ``plan`` defaults it: "ring" for the eager engine (affine in the tokens), "nccl" for an
        engine (NCCL's algorithm choice, the logits all-gather: evaluated per (tokens, sequences)).
        The two seams a caller may fill instead: ``pass_cost(batch, q_len, kv_len)`` -> the StepCost
        of one pass (per GPU; default: ``analysis.step_cost`` with logits for one position a
        sequence, executed by the engine, sharded over tp), and ``op_rates`` (a ``roofline.Rates``;
        default the engine's); per-step host time of the caller's own goes in ``overhead_s``. The
        coefficients are fitted from eight such passes, so whatever ``pass_cost`` returns must keep
        each op's costs polynomial in (q_len, kv_len) as :func:`_fit_context` assumes."""
        if spec.arch != "decoder":
            raise SpecError(f"simulate serves decoder-only models; {spec.name} is arch {spec.arch!r}")
        if not wl.kv_cache:
            raise SpecError("simulate needs a KV cache (continuous batching pages it)")
        if wl.beams != 1:
            raise SpecError("simulate serves one sequence a request (beams 1)")
        eng = E.resolve(engine)
        eng = None if eng is None or eng.reference else eng
        layout = layout or Layout()
        check_layout(spec, hw, layout)
        wl = replace(wl, batch=1)
        r = op_rates if op_rates is not None else E.engine_rates_for(eng, hw, wl)

        def cost(b, q, k):
            if pass_cost is not None:
                return pass_cost(b, q, k)
            c = step_cost(spec, wl, b, q, k, 1, sliding_keys="growing")  # the window applied per step
            if eng is not None:
                c = E.executed(spec, wl, eng, hw, c, b, q, k, "growing")
            return shard_step(c, layout.tp, vocab=(spec.vocab_size, split_vocab(spec, layout))) if layout.tp > 1 else c

        if r.curves is not None and r.pass_weight_bytes is None:  # on curves: a pass's weight bytes pick the pool
            r = replace(r, pass_weight_bytes=cost(1, 1, 2).total("weight_bytes"))

        def flat(c):
            return [(g, m, o) for g, (m, o) in zip(_group_tags(c), c.weighted()) if o.op not in _FLASH_OPS]

        tok = [flat(cost(1, 1, 2)), flat(cost(2, 1, 2)), flat(cost(1, 2, 2))]
        ctx = [flat(cost(1, q, k)) for q, k in ((1, 2), (1, 3), (2, 3), (2, 4), (3, 4))]
        names = [[(g, o.op) for g, _, o in ops] for ops in tok + ctx]
        if any(n != names[0] for n in names):
            raise SpecError(f"simulate cannot model {spec.name}: its passes differ in their ops with the batch "
                            "or the context")
        eager_groups = step_cost(spec, wl, 1, 1, 1, 1).groups
        windows = {i: spec.window_of(g) for i, (g, _) in enumerate(eager_groups)}
        shaped = r.shape is not None  # shape-aware rates: a matmul's FLOP rate depends on its rows
        token_ops, token_rates, groups, latency = [], [], {}, {}
        for j, (g, m, o) in enumerate(tok[0]):
            varies = any(ctx[a][j][2].costs() != ctx[b][j][2].costs() for a, b in ((0, 1), (2, 3)))  # k alone changes
            if varies:  # attention over the context: sum over sequences
                # under shape-aware rates its shape changes with every sequence: the flat FLOP rate
                Fr, Br, lat = r.op_rates(replace(o, shape=None))
                fit = _fit_context(*(c[j][2].costs() for c in ctx))
                fl = fit[0]
                by = tuple(sum(x) for x in zip(*fit[3:]))  # activations and KV: per sequence
                weights = ctx[0][j][2].weight_bytes  # read once per pass (latent attention's kv_b_proj)
                groups.setdefault(g, []).append((m, Fr, Br, fl, by, weights))
                latency.setdefault(g, []).append(lat)
                continue
            Fr, Br, _ = r.op_rates(o)
            fit = _fit_token(*(e[j][2].costs() for e in tok))
            w1, w2 = tok[0][j][2].weight_bytes, tok[1][j][2].weight_bytes
            per_copy = 0.0
            if spec.num_experts and w1 != w2:  # routed experts: min(E, T k) weight copies read
                per_copy = w1 / experts_touched(spec, 1)
                fit = tuple((0.0, 0.0, 0.0) if i == 2 else f for i, f in enumerate(fit))
            fl = fit[0]
            by = tuple(sum(x) for x in zip(*fit[2:]))
            act = tuple(sum(x) for x in zip(*fit[3:5]))
            token_ops.append((m, Fr, Br, fl, by, per_copy, act))
            shapes = [e[j][2].shape for e in tok]
            if shaped and all(x is not None for x in shapes):
                dims = _fit_token(*(x[:4] for x in shapes))
                token_rates.append((o, dims, shapes[0][4] if len(shapes[0]) > 4 else ""))
            else:
                token_rates.append((o, None, None))
        context_groups = [(windows.get(g), ops) for g, ops in groups.items()]
        flash = []
        if eng is not None and pass_cost is None:
            flash = _FlashAttention.of(spec, wl, eng, hw, r, layout.tp, cost(1, 2, 3), eager_groups)
        if collectives is None:
            collectives = "ring" if eng is None else "nccl"
        if collectives not in COMM_MODELS:
            raise SpecError(f"unknown collectives {collectives!r}; allowed: {', '.join(COMM_MODELS)}")
        ring = collectives == "ring" or layout.gpus == 1
        c0 = comm_seconds(spec, hw, wl, layout, 0) if layout.gpus > 1 and ring else 0.0
        c1 = comm_seconds(spec, hw, wl, layout, 1) - c0 if layout.gpus > 1 and ring else 0.0
        self = cls(token_ops, context_groups, (c0, c1), overhead_s, r.op_overhead_s,
                   {"engine": "eager" if eng is None else eng.id,
                    "layout": {"tp": layout.tp, "pp": layout.pp}, "hardware": hw.id,
                    "overhead_s": overhead_s, "collectives": collectives},
                   token_rates=(token_rates if shaped else None),
                   context_latency=[latency[g] for g in groups] if shaped else None,
                   flash=flash, engine=eng)
        self._rates = r
        if not ring:  # NCCL's choice is piecewise in the message: per (tokens, sequences), memoised
            self._comm_of = lambda t, rows: comm_seconds(spec, hw, wl, layout, t, rows, collectives, rows)
        self._expert_cap = spec if spec.num_experts else None
        return self

    def activation_bytes(self, tokens: int, hidden_bytes_per_token: int, rows: int = 1) -> int:
        """Activation reserve of a pass of ``tokens`` tokens and ``rows`` sequences (logits rows):
        the residual stream plus the largest per-token op's inputs and outputs (attention without a
        materialised score matrix, as a fused kernel runs it)."""
        best = max((a[0] + a[1] * tokens + a[2] * rows for *_, a in self.token_ops), default=0)
        return int(hidden_bytes_per_token * tokens + best)

    def _token_seconds(self, tokens: int, rows: int) -> float:
        key = (tokens, rows)
        s = self._token_memo.get(key)
        if s is None:
            s = 0.0
            copies = experts_touched(self._expert_cap, tokens) if self._expert_cap is not None else 0
            for i, (m, Fr, Br, fl, by, per_copy, _) in enumerate(self.token_ops):
                f = fl[0] + fl[1] * tokens + fl[2] * rows
                b = by[0] + by[1] * tokens + by[2] * rows + per_copy * copies
                if self.token_rates is not None:  # shape-aware: the rates of the op's shape at this step
                    o, dims, vary = self.token_rates[i]
                    shape = None if dims is None else (
                        *(max(1, round(d[0] + d[1] * tokens + d[2] * rows)) for d in dims), vary)
                    Fr, Br, lat = self._rates.op_rates(o, shape)
                    b += lat if b else 0
                s += m * max(f / Fr, b / Br)
            if len(self._token_memo) < 1 << 16:
                self._token_memo[key] = s
        return s

    def seconds(self, prefill_chunks, decode_contexts) -> float:
        """Seconds of one iteration: see the class docstring."""
        n_dec = len(decode_contexts)
        tokens = n_dec + sum(n for n, _ in prefill_chunks)
        rows = n_dec + len(prefill_chunks)
        if rows == 0:
            return 0.0
        s = self._token_seconds(tokens, rows)
        for gi, (window, ops) in enumerate(self.context_groups):
            # sums over sequences of q*k, k, q, q*q, 1 (q new tokens, k keys attended)
            if window is None:
                sum_c = sum(decode_contexts)
                s_qk = s_k = sum_c + n_dec
                s_q = s_qq = s_1 = n_dec
                for q, c in prefill_chunks:
                    k = c + q
                    s_qk += q * k
                    s_k += k
                    s_q += q
                    s_qq += q * q
                    s_1 += 1
            else:
                s_k = sum(c + 1 if c < window else window for c in decode_contexts)
                s_qk = s_k
                s_q = s_qq = s_1 = n_dec
                for q, c in prefill_chunks:
                    k = F.sliding_keys(q, c + q, window)
                    s_qk += q * k
                    s_k += k
                    s_q += q
                    s_qq += q * q
                    s_1 += 1
            lats = self.context_latency[gi] if self.context_latency is not None else None
            for oi, (m, Fr, Br, fl, by, weights) in enumerate(ops):
                f = fl[0] * s_qk + fl[1] * s_k + fl[2] * s_q + fl[3] * s_qq + fl[4] * s_1
                b = weights + by[0] * s_qk + by[1] * s_k + by[2] * s_q + by[3] * s_qq + by[4] * s_1
                if lats is not None and b:
                    b += lats[oi]
                s += m * max(f / Fr, b / Br)
        kernels = self._kernels
        for fa in self.flash:
            t, extra = fa.seconds(prefill_chunks, decode_contexts)
            s += t
            kernels += extra
        if self._comm_of is None:
            s = s + kernels * self.op_overhead_s + self.comm[0] + self.comm[1] * tokens + self.overhead_s
        else:
            c = self._comm_memo.get((tokens, rows))
            if c is None:
                c = self._comm_of(tokens, rows)
                if len(self._comm_memo) < 1 << 16:
                    self._comm_memo[(tokens, rows)] = c
            s = s + kernels * self.op_overhead_s + c + self.overhead_s
        if self.engine is not None:
            s += E.pass_overhead_s(self.engine, "prefill" if prefill_chunks else "decode", kernels)
        return s


def _group_tags(cost):
    """The group index of each item of ``cost.weighted()``: -1 before the blocks, -2 after."""
    tags = [-1] * len(cost.before)
    for i, (_, ops) in enumerate(cost.groups):
        tags += [i] * len(ops)
    return tags + [-2] * len(cost.after)


_FLASH_OPS = frozenset(fused.FLASH_OPS.values()) | {f"{n}_combine" for n in fused.FLASH_OPS.values()}


class _FlashAttention:
    """An engine's fused attention kernel (:func:`costmodel.fused.flash_ops`) of one layer group,
    costed for the mix of one iteration; not fitted, as its FLOPs round to whole tiles of queries
    and keys.

    One kernel a layer runs every sequence of the step (vLLM V1 calls one varlen kernel on the
    whole batch): its FLOPs and bytes are summed over the sequences and the roofline taken once.
    - a decode sequence (one query over its c + 1 keys, or the window): FLOPs and bytes affine in
      its keys, so an iteration of n decodes costs f(n, 1) + (f(n, 2) - f(n, 1)) (keys - n) / n,
      from two evaluations at n sequences memoised per n; an iteration of decodes only may split
      the keys (split-K, ``fused.decode_splits`` for n sequences, with its combine kernel), a mixed
      one does not (its prefill tiles fill the GPU);
    - a prefill chunk (q tokens after c cached): the kernel's tiles over q queries and c + q
      positions, memoised per (q, c).
    """

    def __init__(self, spec, wl, engine, hw, r, tp, group, mult, absorbed, window):
        self.spec, self.wl, self.engine, self.hw, self.tp = spec, wl, engine, hw, tp
        self.group, self.mult, self.absorbed, self.window = group, mult, absorbed, window
        self.no_split = replace(engine, flash={**engine.flash, "decode": "none"})
        self.r = r
        self._rates: dict = {}
        self._decode: dict = {}
        self._chunk: dict = {}

    @classmethod
    def of(cls, spec, wl, engine, hw, r, tp, executed, eager_groups) -> list["_FlashAttention"]:
        """One per layer group whose executed pass (``executed``: a pass of 2 tokens over 3
        positions) runs the flash kernel."""
        out = []
        for i, (g, ops) in enumerate(executed.groups):
            if any(o.op == fused.FLASH_OPS[""] for o in ops):
                absorbed = any(o.op == "kv_b_absorb_q" for o in eager_groups[i][1])
                out.append(cls(spec, wl, engine, hw, r, tp, g, g.count, absorbed, spec.window_of(g)))
        return out

    def _ops(self, engine, q: int, kv: int, batch: int):
        shape = fused.self_attention_shape(self.spec, self.wl, self.group, q, kv, encoder=False,
                                           absorbed=self.absorbed, sliding_keys="actual")
        ops = fused.flash_ops(fused.FLASH_OPS[""], shape, batch, self.wl, engine, self.hw)
        return [shard_op(o, self.tp) for o in ops] if self.tp > 1 else ops

    def _op_rates(self, o):
        got = self._rates.get(o.op)
        if got is None:
            got = self._rates[o.op] = self.r.op_rates(o)
        return got

    def _decode_terms(self, n: int, split: bool):
        key = (n, split)
        got = self._decode.get(key)
        if got is None:
            engine = self.engine if split else self.no_split
            # one query a sequence: keys = kv_len (FlashShape's), so kv 1 and 2 give the per-key terms
            one, two = self._ops(engine, 1, 1, n), self._ops(engine, 1, 2, n)
            got = self._decode[key] = [(o, o.flops, o.bytes, (t.flops - o.flops) / n, (t.bytes - o.bytes) / n)
                                       for o, t in zip(one, two)]
        return got

    def _chunk_terms(self, q: int, c: int):
        got = self._chunk.get((q, c))
        if got is None:
            (o,) = self._ops(self.no_split, q, c + q, 1)
            got = (o.flops, o.bytes)
            if len(self._chunk) < 1 << 16:
                self._chunk[(q, c)] = got
        return got

    def seconds(self, prefill_chunks, decode_contexts) -> tuple[float, int]:
        """(seconds of this group's attention in the iteration, kernels beyond the one a layer)."""
        f = b = 0.0
        extra, s = 0, 0.0
        main = None
        n = len(decode_contexts)
        if n:
            w = self.window
            keys = sum(decode_contexts) + n if w is None else sum(c + 1 if c < w else w for c in decode_contexts)
            terms = self._decode_terms(n, split=not prefill_chunks)
            for i, (o, f1, b1, df, db) in enumerate(terms):
                fo, bo = f1 + df * (keys - n), b1 + db * (keys - n)
                if i == 0:
                    main, f, b = o, fo, bo
                else:  # the split-K combine: a kernel of its own
                    F, B, lat = self._op_rates(o)
                    s += self.mult * max(fo / F, (bo + (lat if bo else 0)) / B)
                    extra += self.mult
        for q, c in prefill_chunks:
            fo, bo = self._chunk_terms(q, c)
            f, b = f + fo, b + bo
        if main is None:
            main = self._ops(self.no_split, 2, 3, 1)[0]
        F, B, lat = self._op_rates(main)
        return s + self.mult * max(f / F, (b + (lat if b else 0)) / B), extra


# --- Memory ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KVBudget:
    """The paged KV cache of one replica (per GPU of the fullest stage)."""

    capacity_bytes: int
    gpu_memory_utilization: float
    weights_bytes: int
    activation_bytes: int
    block_size: int
    block_bytes: int
    blocks: int

    def to_dict(self) -> dict:
        return {"capacity_bytes": self.capacity_bytes, "gpu_memory_utilization": self.gpu_memory_utilization,
                "budget_bytes": math.floor(self.capacity_bytes * self.gpu_memory_utilization),  # as kv_budget
                "weights_bytes": self.weights_bytes, "activation_bytes": self.activation_bytes,
                "block_size": self.block_size, "block_bytes": self.block_bytes, "kv_blocks_total": self.blocks}


def kv_budget(spec: ModelSpec, wl: Workload, hw: Hardware, layout: Layout, cost: IterationCost,
              block_size: int, gpu_memory_utilization: float, max_num_batched_tokens: int,
              activation_bytes: int | None = None, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS) -> KVBudget:
    """Blocks = (gpu_memory_utilization x capacity - weights - activation reserve) // block bytes, on
    the fullest GPU. Activation reserve (default): a pass of ``max_num_batched_tokens`` tokens over
    up to ``max_num_seqs`` sequences (:meth:`IterationCost.activation_bytes`), as vLLM profiles a
    dummy batch of that size before sizing its cache."""
    one = replace(wl, batch=1, prompt=block_size, gen=1)
    weights = memory_use(spec, hw, one, layout, 0.0).weights_bytes
    block = max(stage_kv_cache_bytes(spec, one, layout, s, positions=block_size) for s in range(layout.pp))
    if activation_bytes is None:
        from .dtypes import nbytes

        activation_bytes = cost.activation_bytes(max_num_batched_tokens, nbytes(spec.hidden_size, wl.act_dtype),
                                                 min(max_num_seqs, max_num_batched_tokens))
    free = math.floor(hw.capacity_bytes * gpu_memory_utilization) - weights - activation_bytes
    blocks = free // block if block else 0
    if blocks < 1:
        raise SpecError(f"no KV-cache block fits: {gpu_memory_utilization:g} x {hw.capacity_bytes:,} bytes of "
                        f"{hw.id} - weights {weights:,} - activations {activation_bytes:,} leaves {free:,} bytes, "
                        f"one block needs {block:,}; try a larger tp or pp, or a GPU with more memory")
    return KVBudget(hw.capacity_bytes, gpu_memory_utilization, weights, activation_bytes, block_size, block, blocks)


# --- The simulation ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    chunked_prefill: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self):
        for k in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"{k} must be a positive integer, got {v!r}")

    def to_dict(self) -> dict:
        return {"max_num_seqs": self.max_num_seqs, "max_num_batched_tokens": self.max_num_batched_tokens,
                "chunked_prefill": self.chunked_prefill, "block_size": self.block_size}


def engine_defaults(engine) -> tuple[SchedulerConfig, float]:
    """(scheduler, gpu_memory_utilization) the simulator runs ``engine`` with when not told: the
    engine profile's own token budget, chunked prefill and block size (a paged cache) and memory
    share where it has them (vllm: 8192 tokens, chunked, 16-position blocks, 0.9); vLLM's
    scheduler defaults otherwise, and for the eager reference, which has no scheduler of its own
    (:data:`DEFAULT_MAX_NUM_BATCHED_TOKENS` ...). ``max_num_seqs``: vLLM's 256 (no profile has one)."""
    eng = E.resolve(engine)
    if eng is None or eng.reference:
        return SchedulerConfig(), DEFAULT_GPU_MEMORY_UTILIZATION
    return (SchedulerConfig(max_num_batched_tokens=eng.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS,
                            chunked_prefill=eng.chunked_prefill,
                            block_size=eng.kv_block_tokens if eng.paged else DEFAULT_BLOCK_SIZE),
            eng.memory_utilization if eng.memory_utilization is not None else DEFAULT_GPU_MEMORY_UTILIZATION)


@dataclass(frozen=True)
class RequestResult:
    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int  # asked for
    generated_tokens: int  # emitted by the end (= output_tokens when finished)
    first_token_s: float | None
    finish_s: float | None
    preemptions: int
    status: str  # "finished", "unfinished" (simulation stopped), "rejected" (can never run)

    @property
    def ttft_s(self):
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self):
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def tpot_s(self):
        """Mean time per output token after the first: (finish - first token) / (output - 1)."""
        if self.finish_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    def to_dict(self) -> dict:
        return {"id": self.id, "arrival_s": self.arrival_s, "first_token_s": self.first_token_s,
                "finish_s": self.finish_s, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "e2e_s": self.e2e_s,
                "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "generated_tokens": self.generated_tokens, "preemptions": self.preemptions,
                "status": self.status}


CSV_COLUMNS = ("id", "arrival_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "prompt_tokens",
               "output_tokens", "generated_tokens", "preemptions", "status")


def percentiles(values) -> dict:
    """{mean, p50, p90, p99} of ``values`` (linear interpolation between order statistics, as
    numpy's default); all None when empty."""
    v = sorted(values)
    if not v:
        return {"mean": None, "p50": None, "p90": None, "p99": None}

    def q(p):
        x = (len(v) - 1) * p
        lo = math.floor(x)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (x - lo)

    return {"mean": sum(v) / len(v), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99)}


def weighted_percentiles(pairs) -> dict:
    """{mean, p50, p90, p99} of values given as (value, count) pairs: the q-quantile is the smallest
    value whose cumulative count reaches q x total (nearest rank); all None when empty."""
    v = sorted((x, c) for x, c in pairs if c > 0)
    total = sum(c for _, c in v)
    if not total:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    out = {"mean": sum(x * c for x, c in v) / total}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        need, seen = max(1, math.ceil(q * total)), 0
        for x, c in v:
            seen += c
            if seen >= need:
                out[name] = x
                break
    return out


@dataclass
class SimulationResult:
    requests: list  # [RequestResult] by id
    iterations: int
    duration_s: float
    preemptions: int
    kv_blocks_total: int
    kv_blocks_peak: int
    kv_blocks_mean: float  # time-weighted over the iterations (idle time counts as 0 in use)
    busy_s: float
    in_system_mean: float  # time-weighted mean of requests waiting or running (sampled at step starts)
    series: list = field(repr=False)  # (t_s, waiting, running, kv_blocks) at each iteration start
    config: dict = field(default_factory=dict)
    itl: list = field(default_factory=list, repr=False)  # (inter-token gap s, how many tokens had it)

    @property
    def finished(self) -> list:
        return [r for r in self.requests if r.status == "finished"]

    def summary(self) -> dict:
        done = self.finished
        out = sum(r.generated_tokens for r in self.requests)
        return {
            "requests": len(self.requests),
            "finished": len(done),
            "unfinished": len(self.requests) - len(done),
            "rejected": sum(r.status == "rejected" for r in self.requests),
            "duration_s": self.duration_s,
            "iterations": self.iterations,
            "busy_s": self.busy_s,
            "ttft_s": percentiles(r.ttft_s for r in self.requests if r.ttft_s is not None),
            "tpot_s": percentiles(r.tpot_s for r in done if r.tpot_s is not None),
            "itl_s": weighted_percentiles(self.itl),
            "e2e_s": percentiles(r.e2e_s for r in done),
            "output_tokens": out,
            "output_tokens_per_s": out / self.duration_s if self.duration_s else None,
            "requests_per_s": len(done) / self.duration_s if self.duration_s else None,
            "kv_blocks": {"peak": self.kv_blocks_peak, "mean": self.kv_blocks_mean, "total": self.kv_blocks_total},
            "preemptions": self.preemptions,
            "in_system_mean": self.in_system_mean,
        }

    def queue(self, points: int = 200) -> list[dict]:
        """The queue over time, at most ``points`` samples (every k-th iteration start)."""
        step = max(1, math.ceil(len(self.series) / points))
        return [{"t_s": t, "waiting": w, "running": r, "kv_blocks": k} for t, w, r, k in self.series[::step]]

    def to_dict(self, include_requests: bool = False) -> dict:
        d = {**self.config, **self.summary(), "queue": self.queue()}
        if include_requests:
            d["per_request"] = [r.to_dict() for r in self.requests]
        return d


class BatchScheduler:
    """The scheduling state of requests ``0 .. n-1`` and one iteration's decision, as the module
    docstring describes; :func:`simulate` and the reference server (``profiler.serving.serve``)
    both run it, so the two schedule alike by construction.

    ``schedule()`` -> (scheduled requests, tokens fed each, prefill chunks, decode contexts,
    pre-empted in this call): block counts in ``blocks`` already updated (the KV-cache positions
    of the tokens fed are allocated, the pre-empted ones' freed; ``victims`` lists those pre-empted
    this call). ``advance(scheduled, fed)`` after the step: computed positions move on; returns
    (request, tokens emitted so far) for each that emitted a token, a finished one's blocks freed."""

    def __init__(self, prompt, want, kv_blocks: int, scheduler: SchedulerConfig):
        self.bs, self.budget0 = scheduler.block_size, scheduler.max_num_batched_tokens
        self.max_seqs, self.chunked = scheduler.max_num_seqs, scheduler.chunked_prefill
        self.kv_blocks = kv_blocks
        n = len(prompt)
        self.prompt, self.want = list(prompt), list(want)
        self.num_tokens = list(prompt)  # prompt + generated
        self.computed = [0] * n
        self.out = [0] * n
        self.blocks = [0] * n
        self.preempt = [0] * n
        self.finished = [False] * n
        self.waiting: deque = deque()
        self.running: list = []
        self.free = kv_blocks
        self.total_preempt = 0
        self.victims: list = []

    def can_ever_run(self, i) -> bool:
        positions = self.prompt[i] + self.want[i] - 1  # the last token is emitted, never fed
        if -(-positions // self.bs) > self.kv_blocks:
            return False
        return self.chunked or self.prompt[i] <= self.budget0  # unchunked, a prompt is scheduled whole

    def arrive(self, i) -> bool:
        """Request ``i`` arrives: queued if it can ever run; False (reject it) if not."""
        if not self.can_ever_run(i):
            return False
        self.waiting.append(i)
        return True

    def schedule(self):
        bs, max_seqs, chunked = self.bs, self.max_seqs, self.chunked
        computed, num_tokens, blocks, out = self.computed, self.num_tokens, self.blocks, self.out
        running, waiting = self.running, self.waiting
        free = self.free
        budget = self.budget0
        sched = []  # requests scheduled, with their new tokens in ``fed``
        fed = []
        chunks, decodes = [], []  # the mix: (new tokens, cached before) and decoders' cached positions
        victims = self.victims = []
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            c = computed[r]
            left = num_tokens[r] - c
            n_new = left if left < budget else budget
            need = (c + n_new + bs - 1) // bs - blocks[r]
            if need > free:
                while need > free:  # pre-empt from the back of the running list
                    victim = running.pop()
                    free += blocks[victim]
                    blocks[victim] = computed[victim] = 0
                    self.preempt[victim] += 1
                    self.total_preempt += 1
                    waiting.appendleft(victim)
                    victims.append(victim)
                    preempted = True
                    if victim == r:
                        break
                if i >= len(running):  # r itself was pre-empted
                    break
            free -= need
            blocks[r] += need
            sched.append(r)
            fed.append(n_new)
            if n_new == 1 and left == 1 and out[r]:
                decodes.append(c)
            else:
                chunks.append((n_new, c))
            budget -= n_new
            i += 1
        if not preempted:
            while waiting and budget > 0 and len(running) < max_seqs:
                r = waiting[0]
                c = computed[r]
                left = num_tokens[r] - c
                if not chunked and left > budget:
                    break
                n_new = left if left < budget else budget
                need = (c + n_new + bs - 1) // bs - blocks[r]
                if need > free:
                    break
                waiting.popleft()
                running.append(r)
                free -= need
                blocks[r] += need
                sched.append(r)
                fed.append(n_new)
                chunks.append((n_new, c))
                budget -= n_new
        self.free = free
        return sched, fed, chunks, decodes, preempted

    def advance(self, sched, fed) -> list:
        computed, num_tokens, out, want = self.computed, self.num_tokens, self.out, self.want
        emitted = []
        done = False
        for r, k in zip(sched, fed):
            c = computed[r] + k
            computed[r] = c
            if c == num_tokens[r]:
                o = out[r] + 1
                out[r] = o
                num_tokens[r] = c + 1
                emitted.append((r, o))
                if o >= want[r]:
                    self.finished[r] = True
                    self.free += self.blocks[r]
                    self.blocks[r] = 0
                    done = True
        if done:
            fin = self.finished
            self.running = [r for r in self.running if not fin[r]]
        return emitted


def simulate(requests, cost: IterationCost, kv_blocks: int, scheduler: SchedulerConfig = SchedulerConfig(),
             max_time_s: float | None = None, config: dict | None = None) -> SimulationResult:
    """Serve ``requests`` (sorted by arrival) with ``kv_blocks`` KV-cache blocks under ``scheduler``;
    step times from ``cost``. ``max_time_s``: stop there, reporting the rest unfinished."""
    reqs = sorted(requests, key=lambda q: q.arrival_s)
    n = len(reqs)
    prompt = [q.prompt_tokens for q in reqs]
    want = [q.output_tokens for q in reqs]
    S = BatchScheduler(prompt, want, kv_blocks, scheduler)
    first = [None] * n
    last = [0.0] * n  # when each request last emitted a token
    itl_steps = []  # (step seconds, tokens that came one step after their previous one)
    itl_other = []  # inter-token gaps spanning more than one step (a pre-emption in between)
    finish = [None] * n
    status = ["unfinished"] * n
    now, ai, iterations, busy = 0.0, 0, 0, 0.0
    peak, blocks_time, in_sys_time = 0, 0.0, 0.0
    series = []
    seconds = cost.seconds

    while True:
        while ai < n and reqs[ai].arrival_s <= now:
            if not S.arrive(ai):
                status[ai] = "rejected"
            ai += 1
        if max_time_s is not None and now >= max_time_s:
            break
        if not S.waiting and not S.running:
            if ai >= n:
                break
            now = reqs[ai].arrival_s
            continue
        sched, fed, chunks, decodes, preempted = S.schedule()
        if not sched:
            if preempted:  # the only running request was pre-empted: admit again next time round
                continue
            r = S.waiting.popleft()  # nothing runs and the head of the queue cannot be admitted: never
            status[r] = "rejected"
            continue
        dt = seconds(chunks, decodes)
        used = kv_blocks - S.free
        if used > peak:
            peak = used
        series.append((now, len(S.waiting), len(S.running), used))
        blocks_time += used * dt
        in_sys_time += (len(S.waiting) + len(S.running)) * dt
        start = now
        now += dt
        busy += dt
        iterations += 1
        following = 0
        for r, o in S.advance(sched, fed):
            if first[r] is None:
                first[r] = now
            elif last[r] == start:
                following += 1
            else:
                itl_other.append(now - last[r])
            last[r] = now
            if o >= want[r]:
                finish[r] = now
                status[r] = "finished"
        if following:
            itl_steps.append((dt, following))
    results = [RequestResult(i, reqs[i].arrival_s, prompt[i], want[i], S.out[i], first[i], finish[i], S.preempt[i],
                             status[i]) for i in range(n)]
    return SimulationResult(results, iterations, now, S.total_preempt, kv_blocks, peak,
                            blocks_time / now if now else 0.0, busy, in_sys_time / now if now else 0.0,
                            series, dict(config or {}), itl_steps + [(g, 1) for g in itl_other])


def _replica(spec: ModelSpec, hw: Hardware, tp: int, pp: int, scheduler, gpu_memory_utilization, overhead_s,
             engine, collectives, workload_fields):
    """(iteration cost, KV budget, scheduler, workload) of one replica (the shared part of
    :func:`simulate_model` and :func:`replicas_for_slo`); scheduler and memory share None: the
    engine's defaults (:func:`engine_defaults`)."""
    eng = E.resolve(engine)
    default_sched, default_util = engine_defaults(eng)
    scheduler = default_sched if scheduler is None else scheduler
    gpu_memory_utilization = default_util if gpu_memory_utilization is None else gpu_memory_utilization
    if isinstance(gpu_memory_utilization, bool) or not isinstance(gpu_memory_utilization, (int, float)) \
            or not 0 < gpu_memory_utilization <= 1:
        raise SpecError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    if isinstance(overhead_s, bool) or not isinstance(overhead_s, (int, float)) or not 0 <= overhead_s < math.inf:
        raise SpecError(f"overhead_s must be a number >= 0, got {overhead_s!r}")
    layout = Layout(tp, pp)
    wl = Workload(batch=1, prompt=1, gen=1, **workload_fields)
    hw.peak_for(wl.act_dtype)
    cost = IterationCost.from_model(spec, wl, hw, engine=eng, layout=layout, overhead_s=overhead_s,
                                    collectives=collectives)
    budget = kv_budget(spec, wl, hw, layout, cost, scheduler.block_size, gpu_memory_utilization,
                       scheduler.max_num_batched_tokens,
                       max_num_seqs=scheduler.max_num_seqs)
    return cost, budget, scheduler, wl


def simulate_model(spec: ModelSpec, hw: Hardware, requests, *, tp: int = 1, pp: int = 1,
                   scheduler: SchedulerConfig | None = None, gpu_memory_utilization: float | None = None,
                   overhead_s: float = 0.0, max_time_s: float | None = None, engine=None,
                   kv_blocks: int | None = None, collectives: str | None = None,
                   **workload_fields) -> SimulationResult:
    """:func:`simulate` for ``spec`` on ``hw`` (tp x pp GPUs a replica): the iteration cost and the KV
    budget from the model; ``kv_blocks`` overrides the budget's block count (tests, what-ifs).
    ``engine`` (None / "eager": the reference's eager ops; "vllm", an Engine or a JSON file): how
    each iteration runs (:meth:`IterationCost.from_model`); ``scheduler`` and
    ``gpu_memory_utilization`` None: :func:`engine_defaults`. ``collectives``: as in
    :meth:`IterationCost.from_model`. ``workload_fields`` (dtypes, ``causal``, ``strategy`` ...)
    go to :class:`Workload`."""
    cost, budget, scheduler, wl = _replica(spec, hw, tp, pp, scheduler, gpu_memory_utilization, overhead_s,
                                           engine, collectives, workload_fields)
    if kv_blocks is not None:
        if isinstance(kv_blocks, bool) or not isinstance(kv_blocks, int) or kv_blocks < 1:
            raise SpecError(f"kv_blocks must be a positive integer, got {kv_blocks!r}")
        budget = replace(budget, blocks=kv_blocks)
    config = {"model": spec.name, "hardware": hw.id, "layout": {"tp": tp, "pp": pp},
              "engine": cost.description["engine"], "collectives": cost.description["collectives"],
              "scheduler": scheduler.to_dict(), "memory": budget.to_dict(),
              "overhead_s": overhead_s,
              "workload": {"weight_dtype": wl.weight_dtype, "act_dtype": wl.act_dtype, "kv_dtype": wl.kv_dtype}}
    return simulate(requests, cost, budget.blocks, scheduler, max_time_s, config)


# --- Capacity search: replicas that hold p99 SLOs --------------------------------------------------

MAX_REPLICAS = 1 << 12


def replicas_for_slo(spec: ModelSpec, hw: Hardware, rps: float, *, ttft_slo_s: float | None = None,
                     tpot_slo_s: float | None = None, prompt=512, gen=128, tp: int = 1, pp: int = 1,
                     requests: int = 500, seed: int = 0, scheduler: SchedulerConfig | None = None,
                     gpu_memory_utilization: float | None = None, overhead_s: float = 0.0, engine=None,
                     collectives: str | None = None, **workload_fields) -> dict:
    """Fewest replicas (each tp x pp GPUs) whose simulated p99 TTFT and p99 TPOT meet the SLOs when
    ``rps`` Poisson requests/s are spread evenly over them (each replica sees a Poisson stream of
    rps / replicas: a random split of a Poisson stream is Poisson). ``requests`` requests are
    simulated per candidate, with the same ``seed``. The p99s grow with the rate (tested), so the
    search doubles the replicas until the SLOs hold, then bisects. ``replicas`` None: not even
    ``MAX_REPLICAS`` replicas meet them (a lone request is too slow, or never finishes)."""
    if ttft_slo_s is None and tpot_slo_s is None:
        raise SpecError("the simulated capacity search needs a TTFT or a TPOT SLO")
    if isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < math.inf:
        raise SpecError(f"rps must be a positive number, got {rps!r}")
    layout = Layout(tp, pp)
    cost, budget, scheduler, _ = _replica(spec, hw, tp, pp, scheduler, gpu_memory_utilization, overhead_s,
                                          engine, collectives, workload_fields)
    tried = {}

    def check(n: int) -> bool:
        if n not in tried:
            res = simulate(poisson_requests(requests, rps / n, prompt, gen, seed), cost, budget.blocks, scheduler)
            s = res.summary()
            ttft, tpot = s["ttft_s"]["p99"], s["tpot_s"]["p99"]
            ok = s["unfinished"] == 0 and ttft is not None
            ok = ok and (ttft_slo_s is None or ttft <= ttft_slo_s)
            ok = ok and (tpot_slo_s is None or tpot is None or tpot <= tpot_slo_s)
            tried[n] = {"replicas": n, "rps_per_replica": rps / n, "ttft_p99_s": ttft, "tpot_p99_s": tpot,
                        "output_tokens_per_s": s["output_tokens_per_s"], "preemptions": s["preemptions"],
                        "meets_slo": ok}
        return tried[n]["meets_slo"]

    lo, hi = 0, 1  # check(lo) false (0: no replica), check(hi) to be found true
    while not check(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_REPLICAS:
            hi = None
            break
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if check(mid):
                hi = mid
            else:
                lo = mid
    best = tried.get(hi) if hi is not None else None
    return {"replicas": hi, "gpus_needed": None if hi is None else hi * layout.gpus,
            "gpus_per_replica": layout.gpus, "rps": rps, "ttft_slo_s": ttft_slo_s, "tpot_slo_s": tpot_slo_s,
            "requests_simulated": requests, "seed": seed, "engine": cost.description["engine"],
            "scheduler": scheduler.to_dict(),
            "kv_blocks": budget.blocks, "at_replicas": best,
            "searched": [tried[n] for n in sorted(tried)],
            "method": "simulated continuous batching (costmodel.simulate), p99 over each candidate's requests"}


def cheapest_deployment(spec: ModelSpec, candidates, rps: float, *, ttft_slo_s: float | None = None,
                        tpot_slo_s: float | None = None, **kwargs) -> dict:
    """The candidate deployment meeting the p99 SLOs at ``rps`` at least cost: ``candidates`` are
    (hardware, tp, pp, gpu_hour_usd or None); cost = GPUs needed x price per GPU-hour, or GPUs
    needed alone when no candidate has a price (a price on some candidates and not others is
    refused: the costs could not be compared). Each candidate is :func:`replicas_for_slo`
    (``kwargs`` go there); one that cannot hold the model (SpecError) or never meets the SLOs is
    listed with its reason and skipped.
    Returns {"best": the chosen row or None, "candidates": every row}."""
    candidates = list(candidates)
    unpriced = [hw.id for hw, _, _, price in candidates if price is None]
    if unpriced and len(unpriced) < len(candidates):
        raise SpecError(f"candidates: give a price (GPU@USD per GPU-hour) to every candidate or to none; "
                        f"without one: {', '.join(unpriced)}")
    rows = []
    for hw, tp, pp, price in candidates:
        row = {"hardware": hw.id, "tp": tp, "pp": pp, "gpu_hour_usd": price}
        try:
            d = replicas_for_slo(spec, hw, rps, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, tp=tp, pp=pp,
                                 **kwargs)
        except SpecError as e:
            rows.append({**row, "replicas": None, "gpus_needed": None, "usd_per_hour": None, "reason": str(e)})
            continue
        n = d["gpus_needed"]
        rows.append({**row, "replicas": d["replicas"], "gpus_needed": n,
                     "usd_per_hour": None if n is None or price is None else n * price,
                     "reason": None if n is not None else "no replica count meets the SLOs",
                     "at_replicas": d["at_replicas"]})
    ok = [r for r in rows if r["gpus_needed"] is not None]
    priced = [r for r in ok if r["usd_per_hour"] is not None]
    best = (min(priced, key=lambda r: r["usd_per_hour"]) if priced
            else min(ok, key=lambda r: r["gpus_needed"]) if ok else None)
    return {"best": best, "candidates": rows, "rps": rps, "ttft_slo_s": ttft_slo_s, "tpot_slo_s": tpot_slo_s}
