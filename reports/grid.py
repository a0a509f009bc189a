"""The sweep grid: a :class:`~costmodel.spec.Workload` whose batch and prompt are numpy arrays.

The analysis' formulas run unchanged on it (``batch`` shaped [B, 1], ``prompt`` [1, P], broadcasting
to [B, P]); :mod:`reports.sweep` (exact counts) and :mod:`reports.latency` (roofline seconds) both
build on it, as do the plot data. Also here: the phases a grid row can have, and the (batch,
prompt) points whose decode steps are not polynomial in the step from step 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from costmodel import analysis
from costmodel.spec import ModelSpec, Workload

ARCH_PHASES = {"decoder": ("prefill", "decode"), "encoder": ("encode",),
               "encoder-decoder": ("encode", "prefill", "decode")}


def phases_of(spec: ModelSpec) -> tuple[str, ...]:
    """The phases a sweep row can have for ``spec``, in execution order."""
    return ARCH_PHASES[spec.arch]


class GridArray(np.ndarray):
    """Integer sizes over the grid, standing in for one int in the analysis' formulas.

    A formula may branch on a size (``if cross_len:``, ``if new_kv_tokens != 0``); the branch must
    then be the same at every grid point: the truth of an array is True where every element is true,
    False where none is, and an error otherwise, never a silent pick of one grid point's branch."""

    def __bool__(self):
        a = self.view(np.ndarray)
        if bool(a.all()):
            return True
        if not bool(a.any()):
            return False
        raise TypeError("a formula branches differently across the sweep grid; sweep fewer values at once")


@dataclass(frozen=True)
class GridWorkload:
    """A :class:`Workload` whose ``batch`` and ``prompt`` are numpy arrays (broadcasting together).

    Everything else (dtypes, logits, kv_cache, causal, beams, gen, decoder_prompt) is the base
    workload's, so the analysis functions take it in place of a Workload and compute the whole grid.
    """

    base: Workload
    batch: object  # integer array, e.g. shape [B, 1]
    prompt: object  # integer array, e.g. shape [1, P]

    def __getattr__(self, name):
        return getattr(self.base, name)


def grid_workload(wl: Workload, batch, prompt) -> GridWorkload:
    """``wl`` over arrays of batch and prompt values (:class:`GridArray` views: uniform branches;
    subclasses such as the recording shadow are kept)."""
    def grid(a):
        return a if isinstance(a, GridArray) else np.asarray(a).view(GridArray)

    return GridWorkload(wl, grid(batch), grid(prompt))


def irregular_pairs(spec: ModelSpec, wl: Workload, batches, prompts) -> list[tuple[int, int]]:
    """(batch, prompt) indices whose decode costs are not polynomial in the step from step 1.

    Only routed experts without a KV cache have such steps (the experts read, min(E, tokens * k),
    grow until the recomputed prefix covers E); :func:`~costmodel.analysis.decode_cost` sums those
    steps one by one, and so does the sweep, for just those configurations.
    """
    if not spec.num_experts or wl.kv_cache:
        return []
    return [(ib, ip) for ib, b in enumerate(batches) for ip, p in enumerate(prompts)
            if analysis.first_polynomial_step(spec, replace(wl, batch=int(b), prompt=int(p))) > 1]
