"""Mixture of experts for the reference transformer: Mixtral's routed experts, Qwen-MoE's shared one.

Each expert runs as plain matmuls on the tokens routed to it (``index_select`` in, ``index_add_``
out), so FlopCounterMode sees ``2 * n_j * h * I_e`` FLOPs per matrix of expert j, which sum over
the experts to the analytic ``2 * t * k * h * I_e`` however the router spreads the tokens (every
token picks k distinct experts: sum_j n_j = t * k). Module names map onto the analytic ops::

    layers.{i}.mlp.router                        router           x @ W_r: [t, h] @ [h, E]
    layers.{i}.mlp.experts.{j}.{gate,up,down}    expert_gate, expert_up, expert_down
    layers.{i}.mlp.shared_expert.{gate,up,down}  shared_expert_gate, shared_expert_up, shared_expert_down
    layers.{i}.mlp.shared_expert_gate            shared_expert_score (Qwen's sigmoid gate, x @ w[h, 1])

The module ``shared_expert_gate`` keeps Hugging Face's name; its op is ``shared_expert_score``, so
that it does not collide with the shared expert's own gate matrix (``shared_expert_gate``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from costmodel.spec import ModelSpec

from .layers import MLP


class MoE(nn.Module):
    """router -> softmax -> top-k (renormalised: Mixtral) -> k experts per token, weighted sum;
    plus shared experts every token takes (one MLP of num_shared * width), sigmoid-gated (Qwen)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        h = spec.hidden_size
        self.k, self.renormalize = spec.experts_per_token, spec.moe_renormalize
        self.router = nn.Linear(h, spec.num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(spec, spec.moe_intermediate_size) for _ in range(spec.num_experts))
        self.shared_expert = (MLP(spec, spec.num_shared_experts * spec.shared_expert_intermediate_size)
                              if spec.num_shared_experts else None)
        self.shared_expert_gate = nn.Linear(h, 1, bias=False) if spec.shared_expert_gate else None

    def forward(self, x: Tensor) -> Tensor:
        B, T, h = x.shape
        x = x.reshape(B * T, h)  # x: [t, h]
        out = self.routed(x)
        if self.shared_expert is not None:
            out = out + self.shared(x)
        return out.view(B, T, h)

    def shared(self, x: Tensor) -> Tensor:
        """The shared experts' output for ``x: [t, h]`` (sigmoid-gated where the model gates it)."""
        shared = self.shared_expert(x)
        if self.shared_expert_gate is not None:
            shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
        return shared

    def routed(self, x: Tensor, owned: range | None = None) -> Tensor:
        """The routed experts' weighted sum for ``x: [t, h]``: every expert, or only those of
        ``owned`` (expert parallelism: the other experts' shares come from the other ranks)."""
        probs = torch.softmax(self.router(x).float(), dim=-1)  # [t, E]
        weights, chosen = probs.topk(self.k, dim=-1)  # [t, k]: each token's k experts, best first
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype).reshape(-1)  # [t * k], row r = token r // k
        order = chosen.reshape(-1).argsort(stable=True)  # (token, slot) pairs grouped by expert
        counts = torch.bincount(chosen.reshape(-1), minlength=len(self.experts)).tolist()
        out = torch.zeros_like(x)
        start = 0
        for j, (expert, n) in enumerate(zip(self.experts, counts)):
            if n and (owned is None or j in owned):
                pairs = order[start:start + n]
                rows = pairs // self.k  # the tokens routed to this expert: [n]
                y = expert(x.index_select(0, rows)) * weights.index_select(0, pairs)[:, None]  # [n, h]
                out.index_add_(0, rows, y)
            start += n
        return out
