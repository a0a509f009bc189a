"""FLOP counters on the reference model: torch's FlopCounterMode and fvcore, made complete.

Both count a pass per module and per op; both miss something on CPU, and we say what:

- FlopCounterMode has no formula for ``aten._scaled_dot_product_flash_attention_for_cpu``, the
  kernel ``F.scaled_dot_product_attention`` dispatches to on CPU: it counts SDPA as **zero**. We
  pass it torch's own SDPA formula (two bmm counts, ``sdpa_flop_count``) through
  ``custom_mapping``. Every aten op that ran without a formula is recorded (:class:`OpRecorder`)
  and listed; a matmul-class op among them would be a hole in the count and is flagged.
- fvcore counts a multiply-add as **1** FLOP: its counts are doubled here, and the fields that
  hold them say so (``fvcore_matmul_flops``, "x2 to our convention"). It has no handle for
  ``aten::scaled_dot_product_attention`` (we add one) and skips softmax, RMSNorm's ops and the
  rest; we clear its silent ignore list so that every op it did not count is listed.

Counts are attributed to analytic ops by module name (see :mod:`profiler.model`); counted FLOPs
outside any mapped module land in ``unattributed`` rather than vanish.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from costmodel.ops import op_of_module

aten = torch.ops.aten

SDPA_OPS = "attn_scores+attn_values"  # the fused SDPA kernel is both attention matmuls at once


def sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash-attention kernel: torch's formula for the CUDA SDPA kernels, Q K^T then P V.

    # NB: like torch's, counts the full q_len x kv_len scores (the causal mask is not credited).
    """
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Formulas FlopCounterMode lacks on this build; given per counter, never registered globally.
EXTRA_FORMULAS = {
    op: f for op, f in {aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu_flop}.items()
    if op not in flop_registry
}
COUNTED_OPS = set(flop_registry) | set(EXTRA_FORMULAS)

# Op names that multiply matrices: if one of these runs uncounted, the count has a hole.
_MATMUL_WORDS = ("mm", "matmul", "linear", "einsum", "conv", "scaled_dot_product", "attention")


def is_matmul_like(op_name: str) -> bool:
    base = op_name.split("::")[-1].split(".")[-1].lstrip("_")
    return any(w in base for w in _MATMUL_WORDS) or base in ("bmm", "addmm", "baddbmm", "mm")


class OpRecorder(TorchDispatchMode):
    """Records every aten op executed (entered outside FlopCounterMode: sees ops after its decompositions)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func._overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def _op_of(parts: list[str]) -> str | None:
    """Analytic op of a module path (root name removed), or None for a container."""
    if not parts:
        return None
    if parts[-1] == "sdpa":  # one fused module for both attention matmuls, not an op of its own
        return ("cross_" if "cross_attention" in parts else "") + SDPA_OPS
    return op_of_module(parts)  # the modules each op is registered with in costmodel.ops


def attribute(by_module: dict[str, int], root_prefix: bool = True) -> dict[tuple, int]:
    """{module path: FLOPs} -> {(layer, op): FLOPs} for the mapped leaf modules.

    ``root_prefix``: paths start with the root module's name (FlopCounterMode's ``Transformer.``).
    """
    out: dict[tuple, int] = defaultdict(int)
    for name, flops in by_module.items():
        parts = name.split(".")
        if root_prefix:
            parts = parts[1:]
        op = _op_of(parts)
        if op is None:
            continue
        # layers.{i}...: decoder (or BERT) layer i; encoder.layers.{i}...: encoder layer i
        layer = int(parts[parts.index("layers") + 1]) if "layers" in parts else None
        out[(layer, op)] += flops
    return out


class StepCount:
    """Counted matmul FLOPs of one pass, per (layer, op), from each counter."""

    def __init__(self):
        self.counted: dict[tuple, int] = defaultdict(int)  # FlopCounterMode, 2 per multiply-add
        self.counted_total = 0
        self.fvcore: dict[tuple, int] | None = None  # fvcore x2 to our convention
        self.fvcore_total: int | None = None
        self.uncounted: Counter = Counter()  # aten ops FlopCounterMode ran without a formula: calls
        self.fvcore_skipped: Counter = Counter()  # ops fvcore did not count: calls


def count_call(fn, *args, as_op: str | None = None) -> tuple[object, StepCount]:
    """Run ``fn(*args)`` under FlopCounterMode (with the missing formulas) and record uncounted ops.

    ``as_op``: attribute every counted FLOP to this model-level op (the sampler) instead of by module.
    """
    rec = OpRecorder()
    with rec, FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as fc:
        out = fn(*args)
    sc = StepCount()
    counts = fc.get_flop_counts()
    by_module = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global"}
    sc.counted_total = fc.get_total_flops()
    if as_op is not None:
        sc.counted[(None, as_op)] = sc.counted_total
    else:
        for key, v in attribute(by_module).items():
            sc.counted[key] += v
    rest = sc.counted_total - sum(sc.counted.values())
    # FLOPs of a root module other than the model (the sampler) or outside every module
    if rest:
        sc.counted[(None, "unattributed")] += rest
    for op, n in rec.calls.items():
        if op not in COUNTED_OPS:
            sc.uncounted[str(op)] += n
    return out, sc


# --- fvcore ---------------------------------------------------------------------------------

def _fvcore_sdpa(inputs, outputs) -> int:
    """aten::scaled_dot_product_attention in fvcore's convention (1 per multiply-add): Q K^T + P V."""
    from fvcore.nn.jit_handles import get_shape

    b, h, s_q, d = get_shape(inputs[0])
    s_k, d_v = get_shape(inputs[2])[-2:]
    return b * h * s_q * s_k * d + b * h * s_q * s_k * d_v


_FVCORE_MATMUL_OPS = ("addmm", "bmm", "einsum", "matmul", "mm", "linear", "scaled_dot_product_attention")


class _Call(nn.Module):
    """``fn(model, *args)`` as a module whose inputs are the tensor arguments (for jit tracing)."""

    def __init__(self, model: nn.Module, fn, args: tuple):
        super().__init__()
        self.model, self.fn, self.args = model, fn, args
        self.slots = [i for i, a in enumerate(args) if isinstance(a, Tensor)]

    def forward(self, *tensors):
        args = list(self.args)
        for i, t in zip(self.slots, tensors):
            args[i] = t
        return self.fn(self.model, *args)


def fvcore_count(model: nn.Module, fn, *args) -> StepCount:
    """Trace ``fn(model, *args)`` with fvcore. NB: tracing runs the pass (a cache write included)."""
    with warnings.catch_warnings():  # fvcore.nn scripts a loss function at import: torch.jit.script is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        from fvcore.nn import FlopCountAnalysis

    call = _Call(model, fn, args)
    fa = FlopCountAnalysis(call, tuple(a for a in args if isinstance(a, Tensor)))
    fa._ignored_ops = set()  # fvcore silently ignores ~50 ops by default: list them instead
    fa.set_op_handle("aten::scaled_dot_product_attention", _fvcore_sdpa)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    sc = StepCount()
    by_mod_op = fa.by_module_and_operator()
    matmul = {name: 2 * sum(v for op, v in ops.items() if op in _FVCORE_MATMUL_OPS)  # x2: fvcore counts 1/MAC
              for name, ops in by_mod_op.items() if name}
    sc.fvcore = dict(attribute({k[len("model."):]: v for k, v in matmul.items() if k.startswith("model.")},
                               root_prefix=False))
    sc.fvcore_total = 2 * sum(v for op, v in by_mod_op[""].items() if op in _FVCORE_MATMUL_OPS)
    rest = sc.fvcore_total - sum(sc.fvcore.values())
    if rest:
        sc.fvcore[(None, "unattributed")] = rest
    sc.fvcore_skipped.update(fa.unsupported_ops())
    return sc
