"""Engine profiles: how an implementation runs a model (issue 13, items 1, 3 and 4).

The analysis (:mod:`costmodel.analysis`) counts the reference implementation, an eager forward:
one kernel per op, attention scores written to memory, a contiguous cache. A serving engine runs
the same model differently, and an :class:`Engine` says how: the attention kernel, the cache
layout and its block size, the fused kernels, how kernels are launched in each phase, the
memory it may use, how prefill is chunked. Profiles ship as ``costmodel/data/engines.json``
(``eager`` and ``vllm``); users add their own with ``--engine FILE`` (one object, a list, or
``{"engines": [...]}``, as the hardware catalog). Every figure of a profile carries its public
source in ``sources``.

What an engine changes, and where:

- time: each pass's eager cost becomes what the engine executes,
  :func:`costmodel.fused.executed_step` (:func:`executed`), at the engine's rates
  (:func:`engine_rates`); plus overheads (:func:`pass_overhead_s`) per pass: kernels x
  ``kernel_launch_s[launch mode of the phase]`` + ``host_step_s``, a term of its own;
- memory (:func:`paged_kv_cache_bytes`, :func:`engine_activation_peak_bytes`): a paged cache held
  in blocks of ``kv_block_tokens`` positions per layer; a budget of ``memory_utilization`` x the
  device's capacity in place of the plan's flat reserve; with chunked prefill an activation peak
  of one pass of at most ``max_num_batched_tokens`` tokens; with flash attention no score matrix.

The ``eager`` engine changes nothing: every caller short-cuts it (:attr:`Engine.reference`), so
its numbers are today's exactly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from importlib import resources

from . import fused
from .analysis import StepCost, activation_peak_bytes, step_cost
from .dtypes import nbytes
from .errors import SpecError, parse_profiles, read_json_file
from .roofline import Rates, rates
from .spec import ModelSpec, Workload, decoder_start

ATTENTION = ("eager", "flash")
KV_LAYOUTS = ("contiguous", "paged")
LAUNCH_MODES = ("eager", "graphs")
PHASES = ("prefill", "decode")
RATE_MODELS = ("flat", "shape-aware")
# Fused kernels costmodel.fused understands (vLLM's: fused_add_rms_norm, silu_and_mul,
# rotary_embedding in place, reshape_and_cache); the fused branch may extend the list.
FUSIONS = ("add_rms_norm", "silu_and_mul", "rotary", "kv_cache_write")


@dataclass(frozen=True, eq=False)
class Engine:
    """One engine profile (see the module docstring). Bad fields raise a one-line SpecError."""

    id: str
    name: str
    attention: str  # "eager": scores materialised (today's ops) | "flash": one fused kernel
    kv_layout: str  # "contiguous" | "paged"
    kv_block_tokens: int  # positions per block and layer (16 in vLLM); 1 for a contiguous cache
    fusions: tuple  # names of FUSIONS; () for eager
    launch: dict  # {"prefill": "eager"|"graphs", "decode": "eager"|"graphs"}
    kernel_launch_s: dict  # {"eager": s, "graphs": s}: exposed launch / dispatch time per kernel
    host_step_s: float  # per pass: host-side scheduling, input preparation, sampling bookkeeping
    memory_utilization: float | None  # share of the reported capacity the engine may use; None: flat reserve
    chunked_prefill: bool
    max_num_batched_tokens: int | None  # tokens of one pass (the chunk budget); None: unbounded
    rates: str  # "flat" (today's Rates) | "shape-aware"
    flash: dict = field(default_factory=dict)  # flash-attention parameters (costmodel.fused reads them)
    sources: dict = field(default_factory=dict)  # field -> public source
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"engine {self.id!r}" if isinstance(self.id, str) else "engine"
        if not isinstance(self.id, str) or not self.id or self.id != self.id.strip().lower() or " " in self.id:
            raise SpecError(f"engine: id must be a non-empty lower-case name without spaces, got {self.id!r}")
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"{where}: name must be a non-empty string, got {self.name!r}")
        for f, allowed in (("attention", ATTENTION), ("kv_layout", KV_LAYOUTS), ("rates", RATE_MODELS)):
            if getattr(self, f) not in allowed:
                raise SpecError(f"{where}: {f} must be one of {', '.join(allowed)}; got {getattr(self, f)!r}")
        _count(where, "kv_block_tokens", self.kv_block_tokens)
        if self.kv_layout == "contiguous" and self.kv_block_tokens != 1:
            raise SpecError(f"{where}: kv_block_tokens must be 1 for a contiguous cache (blocks are for "
                            f"kv_layout 'paged'), got {self.kv_block_tokens}")
        fus = self.fusions
        if isinstance(fus, list):
            fus = tuple(fus)
            object.__setattr__(self, "fusions", fus)
        if not isinstance(fus, tuple) or any(f not in FUSIONS for f in fus) or len(set(fus)) != len(fus):
            raise SpecError(f"{where}: fusions must be a list of distinct names from {', '.join(FUSIONS)}; "
                            f"got {self.fusions!r}")
        if not isinstance(self.launch, dict) or set(self.launch) != set(PHASES) \
                or any(v not in LAUNCH_MODES for v in self.launch.values()):
            raise SpecError(f"{where}: launch must be {{\"prefill\": MODE, \"decode\": MODE}} with MODE one of "
                            f"{', '.join(LAUNCH_MODES)}; got {self.launch!r}")
        if not isinstance(self.kernel_launch_s, dict) or set(self.kernel_launch_s) != set(LAUNCH_MODES):
            raise SpecError(f"{where}: kernel_launch_s must be {{\"eager\": SECONDS, \"graphs\": SECONDS}}; "
                            f"got {self.kernel_launch_s!r}")
        for mode, v in self.kernel_launch_s.items():
            _seconds(where, f"kernel_launch_s.{mode}", v)
        _seconds(where, "host_step_s", self.host_step_s)
        u = self.memory_utilization
        if u is not None and (isinstance(u, bool) or not isinstance(u, (int, float)) or not 0 < u <= 1):
            raise SpecError(f"{where}: memory_utilization must be in (0, 1] or null (the plan's flat "
                            f"reserve), got {u!r}")
        if not isinstance(self.chunked_prefill, bool):
            raise SpecError(f"{where}: chunked_prefill must be true or false, got {self.chunked_prefill!r}")
        if self.max_num_batched_tokens is not None:
            _count(where, "max_num_batched_tokens", self.max_num_batched_tokens)
        if self.chunked_prefill and self.max_num_batched_tokens is None:
            raise SpecError(f"{where}: chunked_prefill needs max_num_batched_tokens (the token budget of a pass)")
        if self.attention == "eager" and self.kv_layout == "paged":
            raise SpecError(f"{where}: attention 'eager' reads a contiguous cache; kv_layout 'paged' needs "
                            "attention 'flash' (a kernel that reads the block table)")
        for f in ("flash", "sources"):
            if not isinstance(getattr(self, f), dict):
                raise SpecError(f"{where}: {f} must be an object, got {getattr(self, f)!r}")
        if not isinstance(self.notes, str):
            raise SpecError(f"{where}: notes must be a string")

    @property
    def reference(self) -> bool:
        """The reference implementation (what ``validate`` measures): eager attention, a contiguous
        cache, no fusions, no overheads, no engine budget, no chunking, flat rates. Every caller
        takes today's code path for it, so its numbers are today's exactly."""
        return (self.attention == "eager" and self.kv_layout == "contiguous" and not self.fusions
                and not self.kernel_launch_s["eager"] and not self.kernel_launch_s["graphs"]
                and not self.host_step_s and self.memory_utilization is None and not self.chunked_prefill
                and self.rates == "flat")

    @property
    def paged(self) -> bool:
        return self.kv_layout == "paged"

    def describe(self) -> str:
        """One line naming the engine and what it does: ``vllm (vLLM V1 defaults: flash attention, ...)``."""
        parts = [f"{self.attention} attention"]
        parts.append(f"paged KV, {self.kv_block_tokens}-token blocks" if self.paged else "contiguous KV")
        if self.fusions:
            parts.append("fused " + "/".join(self.fusions))
        parts.append(f"launch prefill {self.launch['prefill']}, decode {self.launch['decode']}")
        if self.chunked_prefill:
            parts.append(f"chunked prefill {self.max_num_batched_tokens} tokens")
        parts.append("flat reserve" if self.memory_utilization is None
                     else f"{self.memory_utilization:g} of memory")
        return f"{self.id} ({self.name}: {', '.join(parts)})"

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["fusions"] = list(self.fusions)
        return d

    def predict(self, spec: ModelSpec, wl: Workload, hw):
        """:func:`predict` with this engine (what ``roofline.predict(..., engine=self)`` calls)."""
        return predict(spec, wl, hw, self)


def _count(where, name, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpecError(f"{where}: {name} must be a positive integer, got {v!r}")


def _seconds(where, name, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
        raise SpecError(f"{where}: {name} must be a number of seconds >= 0, got {v!r}")


_REQUIRED = ("id", "name", "attention", "kv_layout", "kv_block_tokens", "fusions", "launch", "kernel_launch_s",
             "host_step_s", "memory_utilization", "chunked_prefill", "max_num_batched_tokens", "rates")
_OPTIONAL = ("flash", "sources", "notes")


def engine_from_dict(d: object, source: str = "engine") -> Engine:
    """An :class:`Engine` from one parsed JSON object; errors name ``source`` and the field."""
    if not isinstance(d, dict):
        raise SpecError(f"{source}: an engine entry must be a JSON object, got {type(d).__name__}")
    where = f"{source}: entry {d.get('id')!r}" if "id" in d else f"{source}: entry"
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise SpecError(f"{where}: missing required field {missing[0]!r} (required: {', '.join(_REQUIRED)})")
    unknown = [k for k in d if k not in _REQUIRED + _OPTIONAL]
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(_REQUIRED + _OPTIONAL)}")
    kw = dict(d)
    if isinstance(kw["fusions"], list):
        kw["fusions"] = tuple(kw["fusions"])
    try:
        return Engine(**kw)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None


def parse_engines(data: object, source: str) -> list[Engine]:
    """Profiles from parsed JSON: one object with an ``id``, a list, or ``{"engines": [...]}``."""
    return parse_profiles(data, "engines", "an engine", source, engine_from_dict)


_BUILT_IN: list[Engine] | None = None


def engines() -> list[Engine]:
    """The built-in profiles (``costmodel/data/engines.json``, read once)."""
    global _BUILT_IN
    if _BUILT_IN is None:
        text = resources.files("costmodel").joinpath("data/engines.json").read_text(encoding="utf-8")
        _BUILT_IN = parse_engines(json.loads(text), "built-in engines")
    return list(_BUILT_IN)


def engine_ids() -> list[str]:
    return [e.id for e in engines()]


def load_engine(name_or_file) -> Engine:
    """A built-in engine by id, or the one engine of a user's JSON file (an Engine passes through).
    SpecError (one line) for an unknown name, a file that cannot be read, or one with several."""
    if isinstance(name_or_file, Engine):
        return name_or_file
    if not isinstance(name_or_file, str) or not name_or_file:
        raise SpecError(f"engine must be a name ({', '.join(engine_ids())}) or a JSON file, got {name_or_file!r}")
    for e in engines():
        if e.id == name_or_file.lower():
            return e
    looks_like_file = os.sep in name_or_file or name_or_file.endswith(".json") or os.path.exists(name_or_file)
    if not looks_like_file:
        raise SpecError(f"unknown engine {name_or_file!r}; built in: {', '.join(engine_ids())} "
                        "(or give a JSON file)")
    found = parse_engines(read_json_file(name_or_file, "engine file"),
                          f"engine file {os.path.basename(name_or_file)!r}")
    if len(found) > 1:
        raise SpecError(f"engine file {name_or_file!r} holds {len(found)} engines "
                        f"({', '.join(e.id for e in found)}); give a file with one")
    return found[0]


def resolve(engine) -> Engine | None:
    """None for None, else :func:`load_engine`."""
    return None if engine is None else load_engine(engine)


def is_reference(engine) -> bool:
    """True for None and for the reference (eager) engine: today's code paths."""
    return engine is None or load_engine(engine).reference


# --- Time --------------------------------------------------------------------------------------------

def engine_rates(engine: Engine | None, hw, act_dtype: str) -> Rates:
    """The achievable rates ``engine`` runs at on ``hw``: the rate model it names (``engine.rates``:
    "flat", or "shape-aware" from :mod:`costmodel.shapes`), and for a flash engine the kernel's
    published utilisation (:func:`costmodel.fused.fa_flops_efficiency`, prefill) as the
    ``flash_attention`` ops' FLOP efficiency where the papers give one. The reference engine:
    ``roofline.rates(hw, act_dtype)`` exactly."""
    if is_reference(engine):
        return rates(hw, act_dtype)
    override = {}
    if engine.attention == "flash":
        e = fused.fa_flops_efficiency(engine, hw, "prefill", act_dtype)
        if e is not None:
            override = {"flash_attention": e, "cross_flash_attention": e}
    return rates(hw, act_dtype, model=engine.rates, op_efficiency=override or None)


def engine_rates_for(engine: Engine | None, hw, wl: Workload) -> Rates:
    """:func:`engine_rates` for a workload, with its quantisation's fp8 compute (``wl.quant``)."""
    if is_reference(engine):
        return rates(hw, wl.act_dtype, wl.quant)
    base = engine_rates(engine, hw, wl.act_dtype)
    return replace_quant(rates(hw, wl.act_dtype, wl.quant), base)


def replace_quant(quant_rates: Rates, base: Rates) -> Rates:
    """``base`` with the fp8 quantised-matmul rate of ``quant_rates`` (None where there is none)."""
    from dataclasses import replace

    return replace(base, quant_flops_per_s=quant_rates.quant_flops_per_s, quant_ops=quant_rates.quant_ops)


def executed(spec: ModelSpec, wl: Workload, engine: Engine | None, hw, cost: StepCost, batch: int,
             q_len: int, kv_len: int, sliding_keys: str = "actual") -> StepCost:
    """What ``engine`` executes for the eager ``cost`` of one pass (:func:`costmodel.fused.executed_step`;
    ``sliding_keys`` as the eager pass was built); ``cost`` itself for the reference engine."""
    if is_reference(engine):
        return cost
    return fused.executed_step(spec, wl, engine, hw, cost, batch, q_len, kv_len, sliding_keys=sliding_keys)


def decode_shape(spec: ModelSpec, wl: Workload, i: int) -> tuple[int, int, int]:
    """(sequences, q_len, kv_len) of decode step i (1-based), as
    :func:`costmodel.analysis.decode_step_cost` builds it."""
    ctx = decoder_start(spec, wl) + i
    return wl.batch * wl.beams, (1 if wl.kv_cache else ctx), ctx


def prefill_shape(spec: ModelSpec, wl: Workload) -> tuple[int, int, int]:
    """(sequences, q_len, kv_len) of the prefill pass (:func:`costmodel.analysis.prefill_cost`)."""
    s = decoder_start(spec, wl)
    return wl.batch, s, s


def executed_cost_at(spec: ModelSpec, wl: Workload, engine: Engine | None, hw, cost_at):
    """``cost_at(i, keys)`` (a decode step's eager cost, as ``roofline.decode_time`` asks for it)
    transformed into what ``engine`` executes at step i: the closed-form decode sums go on calling
    it per step (fused keeps executed costs polynomial in the step)."""
    if is_reference(engine):
        return cost_at

    def at(i, keys="actual"):
        b, q, kv = decode_shape(spec, wl, i)
        return executed(spec, wl, engine, hw, cost_at(i, keys), b, q, kv, keys)

    return at


def kernel_count(cost: StepCost) -> int:
    """Kernels of one pass: each op of the (executed) cost once, a block's ops once per layer of
    its group (:meth:`StepCost.weighted`), the ops before and after the blocks once."""
    return sum(n for n, _ in cost.weighted())


def prefill_passes(spec: ModelSpec, wl: Workload, engine: Engine | None) -> int:
    """Passes the prefill of ``wl`` takes: ceil(batch x prompt / max_num_batched_tokens) with chunked
    prefill, else 1."""
    if engine is None or not engine.chunked_prefill:
        return 1
    b, q, _ = prefill_shape(spec, wl)
    return max(1, -(-b * q // engine.max_num_batched_tokens))


def pass_overhead_s(engine: Engine | None, phase: str, kernels: int) -> float:
    """Overhead of one pass of ``phase``: kernels x kernel_launch_s[launch mode of the phase] +
    host_step_s (0 for no engine)."""
    if engine is None:
        return 0.0
    return kernels * engine.kernel_launch_s[engine.launch[phase]] + engine.host_step_s


def overheads(spec: ModelSpec, wl: Workload, engine: Engine | None, prefill: StepCost, decode_step: StepCost | None):
    """(prefill overhead s, overhead s of one decode step) of ``engine``: per pass kernels x launch
    time + host time (:func:`pass_overhead_s`), the prefill over its :func:`prefill_passes`
    chunks. ``prefill`` / ``decode_step``: executed costs (kernel counts)."""
    if is_reference(engine):
        return 0.0, 0.0
    pre = prefill_passes(spec, wl, engine) * pass_overhead_s(engine, "prefill", kernel_count(prefill))
    dec = 0.0 if decode_step is None else pass_overhead_s(engine, "decode", kernel_count(decode_step))
    return pre, dec


def predict(spec: ModelSpec, wl: Workload, hw, engine):
    """:func:`costmodel.roofline.predict` with ``engine``: every pass executed as the engine does
    (:func:`executed`), at its rates, plus its overheads as a term of their own
    (``PhaseTime.overhead_s``). The reference engine gives ``roofline.predict`` exactly."""
    from dataclasses import replace

    from . import analysis as A
    from . import roofline as R

    engine = load_engine(engine)
    if engine.reference:
        return R.predict(spec, wl, hw)
    r = engine_rates_for(engine, hw, wl)
    encode = None
    if spec.arch != "decoder":
        enc = A.encode_cost(spec, wl)
        enc_x = executed(spec, wl, engine, hw, enc, wl.batch, wl.prompt, wl.prompt)
        encode = replace(R.step_time(enc_x, r, "encode"),
                         overhead_s=pass_overhead_s(engine, "prefill", kernel_count(enc_x)))
    if spec.arch == "encoder":
        return R.Timing(hw, r, wl.batch, wl.gen, None, None, None, None, encode, engine=engine)
    pre = executed(spec, wl, engine, hw, A.prefill_cost(spec, wl), *prefill_shape(spec, wl))
    cost_at = executed_cost_at(spec, wl, engine, hw, lambda i, keys="actual": A.decode_step_cost(spec, wl, i, keys))
    n = wl.decode_steps
    t = R.timing_from(hw, r, wl, pre, cost_at, A.first_polynomial_step(spec, wl),
                      split=A.window_split(spec, wl, n),
                      overheads=overheads(spec, wl, engine, pre, cost_at(1) if n else None))
    return replace(t, encode=encode, engine=engine)


# --- Memory ------------------------------------------------------------------------------------------

def kv_block_bytes(spec: ModelSpec, kv_dtype: str, engine: Engine) -> int:
    """One block of one layer: kv_block_tokens positions x the cache width of a position in a layer
    (keys and values: 2 x kv heads x head_dim; latent attention: kv_lora_rank + qk_rope_head_dim),
    at the cache dtype. vLLM: ``AttentionSpec.page_size_bytes`` = 2 x block_size x num_kv_heads x
    head_size x dtype size (vllm/v1/kv_cache_interface.py)."""
    return nbytes(engine.kv_block_tokens * spec.kv_cache_width, kv_dtype)


def layer_blocks(positions: int, block_tokens: int, window: int | None = None) -> int:
    """Blocks one sequence holds in one layer after ``positions`` positions: ceil(positions /
    block_tokens); a sliding-window layer of window W at most ceil(W / block_tokens) + 1 (vLLM's
    sliding-window manager frees the blocks wholly outside the window; the window need not start
    at a block boundary, hence the + 1: ``SlidingWindowSpec.max_memory_usage_bytes`` in
    vllm/v1/kv_cache_interface.py, with the one new token of a decode step)."""
    full = -(-positions // block_tokens)
    if window is None:
        return full
    return min(full, -(-window // block_tokens) + 1)


def kv_blocks_per_sequence(spec: ModelSpec, engine: Engine, positions: int, layers: range | None = None) -> int:
    """Blocks one sequence holds over ``layers`` (default all) after ``positions`` positions:
    the sum over layers of :func:`layer_blocks` (a sliding layer holds its window)."""
    layers = range(spec.num_layers) if layers is None else layers
    total = 0
    for g in spec.layer_groups():
        count = len(range(max(g.first, layers.start), min(g.first + g.count, layers.stop)))
        if count:
            total += count * layer_blocks(positions, engine.kv_block_tokens, spec.window_of(g))
    return total


def sequences(wl: Workload) -> int:
    return wl.batch * wl.beams


def paged_kv_cache_bytes(spec: ModelSpec, wl: Workload, engine: Engine, positions: int | None = None,
                         layers: range | None = None) -> int:
    """The paged cache of batch x beams sequences: blocks per sequence (:func:`kv_blocks_per_sequence`
    at ``positions``, default prompt + gen - 1) x :func:`kv_block_bytes`; an encoder-decoder adds
    the cross-attention cache of every decoder layer in ceil(source / block_tokens) blocks."""
    from .analysis import cached_positions

    if not wl.kv_cache or spec.arch == "encoder":
        return 0
    positions = cached_positions(spec, wl) if positions is None else positions
    blocks = kv_blocks_per_sequence(spec, engine, positions, layers)
    if spec.arch == "encoder-decoder":
        n = len(range(spec.num_layers) if layers is None else layers)
        blocks += n * layer_blocks(wl.prompt, engine.kv_block_tokens)
    return sequences(wl) * blocks * kv_block_bytes(spec, wl.kv_dtype, engine)


def kv_bytes(spec: ModelSpec, wl: Workload, engine: Engine | None, positions: int | None = None,
             layers: range | None = None) -> int:
    """The KV cache ``engine`` holds: paged (:func:`paged_kv_cache_bytes`) or, for a contiguous
    cache, the analysis' :func:`~costmodel.analysis.kv_cache_bytes` (+ the cross cache)."""
    from .analysis import cross_kv_cache_bytes, kv_cache_bytes

    if engine is not None and engine.paged:
        return paged_kv_cache_bytes(spec, wl, engine, positions, layers)
    cross = cross_kv_cache_bytes(spec, wl) if layers is None else 0
    return kv_cache_bytes(spec, wl, positions, layers) + cross


def chunk_shape(spec: ModelSpec, wl: Workload, engine: Engine) -> tuple[int, int, int]:
    """(sequences, q_len, kv_len) of the largest pass of a chunked prefill: with a budget of T =
    max_num_batched_tokens tokens, min(batch, T // prompt) whole prompts when one fits in T, else
    the last chunk of one prompt (T tokens attending over the whole prompt)."""
    b, s, _ = prefill_shape(spec, wl)
    budget = engine.max_num_batched_tokens
    if s <= budget:
        return max(1, min(b, budget // s)), s, s
    return 1, budget, s


# Eager ops whose footprint is the score matrix (batch x heads x q x kv): a flash kernel keeps it on chip.
SCORE_OPS = ("attn_softmax", "attn_position_bias", "attn_softcap", "attn_sinks")


def _flash_footprints(ops):
    """Activation footprints (bytes read + written) of a pass's ops when attention runs as one flash
    kernel but ``ops`` still hold the eager score ops (a model flash does not run): the score ops' matrix is
    never in memory, and the kernel reads what ``attn_scores`` reads (the queries, and keys not in
    the cache) and writes what ``attn_values`` writes (the output)."""
    ops = list(ops)
    out = []
    for prefix in ("", "cross_"):
        scores = [o for o in ops if o.op == f"{prefix}attn_scores"]
        values = [o for o in ops if o.op == f"{prefix}attn_values"]
        for s, v in zip(scores, values):
            out.append(s.act_read_bytes + v.act_write_bytes)
    skip = {f"{p}{n}" for p in ("", "cross_") for n in SCORE_OPS + ("attn_scores", "attn_values")}
    out += [o.act_read_bytes + o.act_write_bytes for o in ops if o.op not in skip]
    return out


def pass_activation_peak_bytes(spec: ModelSpec, wl: Workload, engine: Engine | None, cost: StepCost,
                               tokens: int, q_len: int | None = None, kv_len: int | None = None) -> int:
    """Activation peak of one executed pass over ``tokens`` tokens (of ``q_len`` queries a sequence
    over ``kv_len`` keys): the residual stream plus the largest op's inputs and outputs
    (:func:`costmodel.analysis.activation_peak_bytes`); a flash op holds Q, O once and no score
    matrix (:func:`costmodel.fused.flash_activation_peak_bytes`); with eager score ops still in a
    flash engine's ``cost`` (a model flash does not run), those ops as one kernel (:func:`_flash_footprints`)."""
    flash_names = set(fused.FLASH_OPS.values())
    if (engine is not None and engine.attention == "flash" and q_len is not None
            and any(o.op in flash_names for o in cost.ops())):
        return fused.flash_activation_peak_bytes(spec, wl, cost, q_len, kv_len, tokens=tokens)
    if engine is None or engine.attention != "flash" or not any(o.op.endswith("attn_scores") for o in cost.ops()):
        return activation_peak_bytes(spec, wl, cost, tokens=tokens)
    return nbytes(tokens * spec.hidden_size, wl.act_dtype) + max(_flash_footprints(cost.ops()))


def peak_pass(spec: ModelSpec, wl: Workload, engine: Engine, hw) -> tuple[StepCost, int]:
    """(executed cost, tokens) of the pass with the largest activations: with chunked prefill the
    largest chunk (:func:`chunk_shape`), else the whole prefill."""
    cost, tokens, _, _ = peak_pass_shape(spec, wl, engine, hw)
    return cost, tokens


def peak_pass_shape(spec: ModelSpec, wl: Workload, engine: Engine, hw) -> tuple[StepCost, int, int, int]:
    """:func:`peak_pass` and the pass's (q_len, kv_len)."""
    from .analysis import prefill_cost

    if engine.chunked_prefill and spec.arch == "decoder":
        b, q, kv = chunk_shape(spec, wl, engine)
        cost = step_cost(spec, wl, b, q, kv, q if wl.logits == "all" else 1)
    else:
        (b, q, kv), cost = prefill_shape(spec, wl), prefill_cost(spec, wl)
    return executed(spec, wl, engine, hw, cost, b, q, kv), b * q, q, kv


def engine_activation_peak_bytes(spec: ModelSpec, wl: Workload, engine: Engine, hw) -> int:
    """Activation peak of ``wl`` under ``engine`` on one GPU: the largest pass (:func:`peak_pass`),
    at most max_num_batched_tokens tokens with chunked prefill (decoder-only models; others as
    the analysis' :func:`~costmodel.analysis.memory_of`)."""
    from .analysis import memory_of

    if spec.arch != "decoder":
        return memory_of(spec, wl).activation_peak_bytes
    cost, tokens, q, kv = peak_pass_shape(spec, wl, engine, hw)
    return pass_activation_peak_bytes(spec, wl, engine, cost, tokens, q, kv)


def budget_bytes(engine: Engine, hw) -> int:
    """Bytes ``engine`` may use on one ``hw``: floor(memory_utilization x capacity) (vLLM:
    ``requested_memory = total_memory x gpu_memory_utilization``)."""
    return math.floor(engine.memory_utilization * hw.capacity_bytes)


def blocks_available(engine: Engine, hw, spec: ModelSpec, kv_dtype: str, free_bytes: int) -> int:
    """Blocks of :func:`kv_block_bytes` that ``free_bytes`` holds (vLLM: num_gpu_blocks =
    available KV memory // page size)."""
    return max(0, free_bytes) // kv_block_bytes(spec, kv_dtype, engine)
