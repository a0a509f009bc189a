"""What a serving engine executes: fused attention and fused element-wise kernels (issue 13, item 2).

STUB on the ``engine`` branch: the ``fused`` branch replaces this module (the lead takes that
branch's version at merge). Here both functions are identities, so that :mod:`costmodel.engine`
can call them: ``executed_step`` returns the eager cost unchanged, ``fa_flops_efficiency`` None.
"""

from __future__ import annotations


def executed_step(spec, wl, engine, hw, cost, batch: int, q_len: int, kv_len: int):
    """The StepCost ``engine`` executes for the eager ``cost`` of one pass (``batch`` sequences,
    ``q_len`` new tokens each, ``kv_len`` positions). Stub: ``cost`` itself (the fused branch
    replaces it with FlashAttention IO, executed FLOPs and the engine's fused kernels)."""
    return cost


def fa_flops_efficiency(engine, hw, phase: str):
    """Achievable share of peak of the flash-attention kernel (None: the hardware default).
    Stub: None (the fused branch replaces it with the FA2/FA3 papers' utilisation)."""
    return None
