"""Reference model decode speed on CPU, against Hugging Face transformers' eager implementation of
the same shape, and the cost of our instrumentation.

Run by hand, in an environment that has transformers (it is not a dependency of costmodel):

    python3 -m venv /tmp/benchenv
    /tmp/benchenv/bin/pip install torch==2.13.0 transformers safetensors
    /tmp/benchenv/bin/python benchmarks/bench_decode.py --runs 5

Without transformers the HF columns are skipped. For each shape it reports, as medians of
``--runs`` runs after one warm-up (min - max in brackets):

- decode tokens/s of the reference model (greedy, batch 1) with a KV cache, eager and SDPA attention,
  and without a cache; the measured speed-up next to the analytic FLOPs and bytes ratios;
- decode tokens/s of HF's ``*ForCausalLM`` (``attn_implementation="eager"``, its DynamicCache),
  same weights (saved by HF, loaded by ``profiler.weights``), after checking both give the same logits;
- the instrumentation overhead: phase timers, and per-op forward hooks, against a bare run.

Decode tokens/s = batch * (gen - 1) / decode seconds: prefill and its first token are excluded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from costmodel import ModelSpec, Workload, analyze, get_model  # noqa: E402
from profiler.generate import generate, prefill, random_prompt  # noqa: E402
from profiler.model import build_model  # noqa: E402
from profiler.runner import profile  # noqa: E402
from profiler.sampling import Sampler, Strategy  # noqa: E402
from profiler.timing import TimingProbe  # noqa: E402

# A LLaMA-style shape between the tiny presets and a real 7B: GQA, SwiGLU, 32k vocabulary.
LLAMA_MINI = ModelSpec(name="llama-mini", num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=4,
                       intermediate_size=1408, vocab_size=32000, max_position_embeddings=2048)
SHAPES = {"gpt2": get_model("gpt2"), "llama-mini": LLAMA_MINI, "tiny-llama": get_model("tiny-llama")}


def stats(xs):
    return statistics.median(xs), min(xs), max(xs)


def fmt_rate(tokens, secs):
    med, lo, hi = stats(secs)
    return f"{tokens / med:,.0f} [{tokens / hi:,.0f} - {tokens / lo:,.0f}]"


def reference_decode_seconds(model, spec, prompt, gen, runs, kv_cache=True):
    """Decode-phase seconds of ``runs`` greedy generations (phase timers only)."""
    out = []
    generate(model, prompt, gen, Sampler(Strategy()), kv_cache=kv_cache)  # warm-up
    for _ in range(runs):
        tp = TimingProbe(torch.device("cpu"))
        generate(model, prompt, gen, Sampler(Strategy()), kv_cache=kv_cache, probe=tp)
        out.append(tp.totals()[("decode", None, "total")])
    return out


def hf_model(spec: ModelSpec):
    """The HF model of ``spec`` with random weights, eager attention, fp32."""
    import transformers

    if spec.family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=spec.num_layers, n_embd=spec.hidden_size, n_head=spec.num_heads,
                                      vocab_size=spec.vocab_size, n_positions=spec.max_position_embeddings,
                                      attn_implementation="eager")
        cls = transformers.GPT2LMHeadModel
    else:
        cfg = transformers.LlamaConfig(num_hidden_layers=spec.num_layers, hidden_size=spec.hidden_size,
                                       num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
                                       intermediate_size=spec.intermediate_size, vocab_size=spec.vocab_size,
                                       max_position_embeddings=spec.max_position_embeddings,
                                       rms_norm_eps=spec.norm_eps, rope_theta=spec.rope_theta,
                                       tie_word_embeddings=spec.tie_word_embeddings, attn_implementation="eager")
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    return cls(cfg).eval()


@torch.no_grad()
def hf_decode_seconds(model, prompt, gen, runs):
    """Greedy decode loop on HF's own KV cache: prefill, then gen - 1 one-token steps, timed."""
    def once():
        out = model(prompt, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(gen - 1):
            out = model(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return time.perf_counter() - t0

    once()  # warm-up
    return [once() for _ in range(runs)]


@torch.no_grad()
def same_logits(hf, spec, prompt):
    """Save HF's weights, load them into the reference model, compare prefill logits."""
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d, safe_serialization=True)
        ours = build_model(spec, attention="eager", weights=d)
    a = hf(prompt).logits
    b = prefill(ours, prompt, "all")
    return float((a - b).abs().max()), ours


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, transformers {hf_version}, "
          f"batch 1, prompt {args.prompt}, gen {args.gen} ({args.gen - 1} decode steps), fp32, greedy, "
          f"median [min - max] of {args.runs} runs after 1 warm-up; load average at start "
          f"{os.getloadavg()[0]:.2f}\n")
    tokens = args.gen - 1
    rows, over = [], []
    for name in args.shapes:
        spec = SHAPES[name]
        prompt = random_prompt(spec, 1, args.prompt, 0, "cpu")
        row = {"shape": f"{name} ({spec.num_params / 1e6:.1f}M)"}
        for att in ("eager", "sdpa"):
            m = build_model(spec, attention=att)
            cached = reference_decode_seconds(m, spec, prompt, args.gen, args.runs)
            row[f"ref {att}"] = fmt_rate(tokens, cached)
        nocache = reference_decode_seconds(m, spec, prompt, args.gen, args.runs, kv_cache=False)  # sdpa
        row["ref sdpa, no cache"] = fmt_rate(tokens, nocache)
        if hf_version:
            hf = hf_model(spec)
            diff, _ = same_logits(hf, spec, prompt[:, :16])
            row["max |logit diff|"] = f"{diff:.1e}"
            row["HF eager"] = fmt_rate(tokens, hf_decode_seconds(hf, prompt, args.gen, args.runs))
        rows.append(row)
        # Overhead through the profiler's own runner (bare, phase timers, per-op hooks, interleaved).
        wl = Workload(batch=1, prompt=args.prompt, gen=args.gen, weight_dtype="fp32", act_dtype="fp32")
        r = profile(spec, wl, repeat=args.runs, warmup=1, fvcore=False, compare_cache=False)
        o, saving = r.overhead, analyze(spec, wl).kv_cache_saving()
        over.append({"shape": name, "bare generate": f"{o['bare_seconds'] * 1e3:.1f} ms",
                     "phase timers": f"{o['phase_timers_overhead']:+.1%}",
                     "per-op hooks": f"{o['per_op_hooks_overhead']:+.1%}",
                     "cache speed-up measured": f"{statistics.median(nocache) / statistics.median(cached):.2f}x",
                     "analytic FLOPs ratio": f"{saving['flops_ratio']:.1f}x",
                     "analytic bytes ratio": f"{saving['decode_bytes_without_cache'] / saving['decode_bytes_with_cache']:.1f}x"})
        print(f"done {name}", file=sys.stderr)
    print(f"load average at end {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)\n")
    for table in (rows, over):
        keys = list(dict.fromkeys(k for r in table for k in r))
        print("| " + " | ".join(keys) + " |")
        print("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(keys))) + "|")
        for r in table:
            print("| " + " | ".join(str(r.get(k, "-")) for k in keys) + " |")
        print()


if __name__ == "__main__":
    main()
