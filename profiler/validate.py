"""The built-in validation matrix: analytic versus counted FLOPs and KV bytes, case by case.

Each :class:`Case` is a tiny model and a workload; :func:`run_cases` runs them one at a time
(a generator, so a caller can show progress and keep what finished when interrupted) through
:func:`profiler.runner.count`, which checks every op of every step. ``quick`` runs each case on
its own attention path; the full matrix runs every case on both paths (eager and SDPA) and adds
fvcore as a second counter. A case whose analytic side is not merged yet (``pending``: the branch
that holds it) is left out of the default matrix and runs only when named.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from costmodel.errors import SpecError
from costmodel.models import get_model
from costmodel.spec import Workload

from .runner import CountResult, count


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # a preset
    covers: str  # what the case exercises, for the table
    attention: str = "sdpa"
    workload: dict = field(default_factory=dict)  # Workload fields over the defaults below
    pending: str = ""  # why the analytic side does not hold it yet (e.g. "analytic side on branch groups")

    def build_workload(self) -> Workload:
        kw = dict(batch=1, prompt=16, gen=6, weight_dtype="fp32", act_dtype="fp32")
        kw.update(self.workload)
        if "dtype" in kw:
            kw["weight_dtype"] = kw["act_dtype"] = kw.pop("dtype")
        return Workload(**kw)



ALL_CASES: tuple[Case, ...] = (
    Case("gpt2-prefill", "tiny-gpt2", "MHA, GPT-2 style, tied, biases, prefill only", "sdpa",
         dict(batch=1, prompt=24, gen=1)),
    Case("gpt2-decode-b2", "tiny-gpt2", "GPT-2 style decode, batch 2", "eager", dict(batch=2, prompt=12, gen=6)),
    Case("llama-gqa", "tiny-llama", "GQA (2 q heads per kv head), LLaMA style, untied", "sdpa",
         dict(batch=2, prompt=16, gen=6)),
    Case("llama-gqa-eager", "tiny-llama", "GQA on the eager attention path", "eager", dict(batch=2, prompt=16, gen=6)),
    Case("mqa", "tiny-mqa", "MQA (one kv head)", "sdpa", dict(batch=1, prompt=16, gen=6)),
    Case("mha-plain-mlp", "tiny-mha", "MHA, rotary, plain GELU MLP", "eager", dict(batch=2, prompt=8, gen=6)),
    Case("qwen2-qkv-bias", "tiny-qwen2", "q/k/v bias, tied LM head", "sdpa", dict(batch=2, prompt=16, gen=5)),
    Case("gemma-head-dim", "tiny-gemma", "head_dim 48 != hidden/heads 32, MQA, tied", "sdpa",
         dict(batch=1, prompt=16, gen=5)),
    Case("logits-all", "tiny-llama", "prefill LM head on every position", "sdpa",
         dict(batch=2, prompt=16, gen=4, logits="all")),
    Case("decode-ctx-4", "tiny-llama", "decode from a 4-token context", "sdpa", dict(prompt=4, gen=10)),
    Case("decode-ctx-96", "tiny-llama", "decode from a 96-token context", "sdpa", dict(prompt=96, gen=10)),
    Case("decode-ctx-110-gpt2", "tiny-gpt2", "decode up to 117 of 128 learned positions", "eager",
         dict(prompt=110, gen=8)),
    Case("no-cache", "tiny-llama", "decode without a KV cache: the prefix recomputed", "sdpa",
         dict(batch=2, prompt=12, gen=6, kv_cache=False)),
    Case("no-cache-logits-all", "tiny-gpt2", "no cache, LM head on every position each step", "eager",
         dict(prompt=8, gen=5, kv_cache=False, logits="all")),
    Case("sample", "tiny-llama", "temperature sampling (T = 0.8)", "sdpa",
         dict(batch=2, prompt=8, gen=5, strategy="sample", temperature=0.8)),
    Case("top-k", "tiny-qwen2", "top-k sampling (k = 20)", "sdpa", dict(batch=2, prompt=8, gen=5, strategy="top_k", top_k=20)),
    Case("top-p", "tiny-mqa", "top-p sampling (p = 0.9)", "eager", dict(batch=2, prompt=8, gen=5, strategy="top_p")),
    Case("top-k-top-p", "tiny-gemma", "top-k then top-p (k = 40, p = 0.8, T = 0.7)", "sdpa",
         dict(batch=2, prompt=8, gen=5, strategy="top_k_top_p", top_k=40, top_p=0.8, temperature=0.7)),
    Case("beam", "tiny-llama", "beam search, width 3, batch 2: decode on 6 rows", "sdpa",
         dict(batch=2, prompt=8, gen=6, strategy="beam", beams=3)),
    Case("beam-no-cache", "tiny-gpt2", "beam search, width 2, without a cache", "eager",
         dict(prompt=8, gen=5, strategy="beam", beams=2, kv_cache=False)),
    Case("bf16", "tiny-llama", "bf16 weights, activations and cache (2-byte KV)", "sdpa",
         dict(batch=2, prompt=16, gen=4, dtype="bf16")),
    Case("fp16-gpt2", "tiny-gpt2", "fp16 on GPT-2 style", "sdpa", dict(batch=2, prompt=8, gen=4, dtype="fp16")),
    # Encoder-only, encoder-decoder and mixture-of-experts models (phases encode, prefill, decode).
    Case("bert-encode", "tiny-bert", "BERT: one bidirectional encode pass, post-norm, token types, pooler, "
         "tied MLM head with bias", "sdpa", dict(batch=2, prompt=16, gen=1)),
    Case("t5", "tiny-t5", "T5: encode; prefill projects cross K/V once into the cross cache; decode reads "
         "it; relative bias, unscaled scores", "eager", dict(batch=2, prompt=16, gen=6)),
    Case("t5-gated", "tiny-t5-gated", "T5 v1.1: 3 encoder + 2 decoder layers, gated GELU, untied, "
         "decoder prompt 3", "sdpa", dict(batch=1, prompt=12, gen=5, decoder_prompt=3)),
    Case("transformer-2017", "tiny-transformer", "2017 Transformer: post-norm, sinusoidal positions, "
         "biases, tied", "sdpa", dict(batch=2, prompt=10, gen=5)),
    Case("t5-no-cache", "tiny-t5", "T5 decode without caches: prefix and cross K/V recomputed each step",
         "sdpa", dict(batch=2, prompt=12, gen=5, kv_cache=False)),
    Case("mixtral-b3", "tiny-mixtral", "MoE: 4 experts, top 2 renormalised, decode at batch 3", "eager",
         dict(batch=3, prompt=12, gen=6)),
    Case("qwen-moe", "tiny-qwen-moe", "MoE: 6 experts, top 2, sigmoid-gated shared expert, q/k/v bias",
         "sdpa", dict(batch=2, prompt=12, gen=5)),
    Case("moe-no-cache", "tiny-mixtral", "MoE decode without a KV cache: the routed prefix recomputed",
         "sdpa", dict(batch=2, prompt=6, gen=4, kv_cache=False)),
    # Block variants (issue 12): q/k norms, partial rotary, parallel blocks, sliding windows, dense
    # layers among expert ones.
    Case("qwen3-qk-norm", "tiny-qwen3", "q/k RMSNorm over each head (Qwen3), tied", "sdpa",
         dict(batch=2, prompt=12, gen=5)),
    Case("olmo2-qk-norm-full", "tiny-olmo2", "q/k RMSNorm over the whole projections (OLMo 2)", "eager",
         dict(prompt=12, gen=5)),
    Case("neox-parallel", "tiny-neox", "partial rotary (4 of 16 dims), parallel block with 2 LayerNorms, "
         "biases (GPT-NeoX)", "sdpa", dict(batch=2, prompt=12, gen=5)),
    Case("phi-parallel", "tiny-phi", "partial rotary (8 of 16 dims), parallel block with 1 shared LayerNorm "
         "(Phi)", "eager", dict(prompt=12, gen=5)),
    Case("sliding-window", "tiny-mistral-sw", "sliding window 8 on every layer, prompt 12 beyond it", "eager",
         dict(batch=2, prompt=12, gen=5)),
    Case("sliding-window-crossed", "tiny-mistral-sw", "sliding window 8 crossed during decode (context 6 -> 13)",
         "sdpa", dict(batch=2, prompt=5, gen=9)),
    Case("sliding-mixed", "tiny-qwen2-sw", "layer 0 full, layers 1-2 sliding over 8 (Qwen2 max_window_layers)",
         "sdpa", dict(batch=2, prompt=10, gen=5)),
    Case("sliding-no-cache", "tiny-mistral-sw", "sliding window without a cache: the prefix recomputed, masked",
         "eager", dict(prompt=6, gen=6, kv_cache=False)),
    Case("sliding-beam", "tiny-mistral-sw", "beam search, width 2, over a sliding cache", "sdpa",
         dict(prompt=6, gen=6, strategy="beam", beams=2)),
    Case("moe-dense-first", "tiny-moe-dense-first", "layers 0, 2 dense, 1, 3 MoE with a shared expert", "eager",
         dict(batch=2, prompt=8, gen=5)),
    # Multi-head latent attention (DeepSeek-V2/V3): the latent cache, in both forms.
    Case("mla-transformers", "tiny-deepseek", "latent attention as transformers runs it: every step re-expands "
         "the cached latent through kv_b_proj", "eager", dict(batch=2, prompt=12, gen=5)),
    Case("mla-absorbed", "tiny-deepseek", "latent attention absorbed: decode attends in latent space "
         "(W^UK on the query, W^UV after)", "sdpa", dict(batch=2, prompt=12, gen=5, mla="absorbed")),
    Case("mla-q-proj-beam", "tiny-deepseek-lite", "latent attention without q_lora_rank (q_proj), absorbed, "
         "beam search over the latent cache", "sdpa", dict(prompt=8, gen=5, strategy="beam", beams=2,
                                                           mla="absorbed")),
)
CASES: tuple[Case, ...] = tuple(c for c in ALL_CASES if not c.pending)  # the default matrix


def case_names() -> list[str]:
    """Every case, pending ones included (they run when named)."""
    return [c.name for c in ALL_CASES]


@dataclass
class CaseResult:
    case: Case
    attention: str
    counts: CountResult
    seconds: float  # wall time of the case, counting included

    @property
    def ok(self) -> bool:
        return self.counts.ok and not self.counts.uncounted_matmul_ops()

    @property
    def label(self) -> str:
        return f"{self.case.name}[{self.attention}]"

    def to_dict(self) -> dict:
        c = self.counts
        phases = c.phases
        return {
            "case": self.case.name, "model": self.case.model, "covers": self.case.covers,
            "attention": self.attention, "workload": c.workload.resolved(),
            **{p: c.phase_dict(p) for p in phases},
            "weight_bytes": c.weight_bytes, "analytic_weight_bytes": c.analysis.memory.weights_bytes,
            "uncounted_matmul_ops": c.uncounted_matmul_ops(),
            "mismatches": [m.to_dict() for m in c.mismatches],
            "ok": self.ok, "seconds": self.seconds,
        }


def plan(quick: bool = False, names=None) -> list[tuple[Case, str]]:
    """(case, attention path) pairs to run: each case on its own path, or on both when not quick."""
    cases = list(CASES)
    if names:
        unknown = [n for n in names if n not in case_names()]
        if unknown:
            raise SpecError(f"unknown case {unknown[0]!r}; allowed: {', '.join(case_names())}")
        cases = [c for c in ALL_CASES if c.name in names]
    if quick:
        return [(c, c.attention) for c in cases]
    return [(c, a) for c in cases for a in (c.attention, "eager" if c.attention == "sdpa" else "sdpa")]


def run_cases(quick: bool = False, names=None, fvcore: bool | None = None, device: str = "cpu"):
    """Yield a :class:`CaseResult` per (case, attention path) as each finishes.

    ``fvcore``: also count with fvcore (default: in the full matrix, not in ``quick``).
    """
    import torch

    fvcore = (not quick) if fvcore is None else fvcore
    cases = plan(quick, names)
    # One intra-op thread: counts do not depend on it, tiny ops gain nothing from a second thread,
    # and on a busy machine OpenMP's spinning threads made the matrix 3x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case, attention in cases:
            t0 = time.perf_counter()
            res = count(get_model(case.model), case.build_workload(), attention=attention, device=device,
                        fvcore=fvcore)
            yield CaseResult(case, attention, res, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
