"""Real weights: a local Hugging Face folder of ``*.safetensors`` into the reference model.

Names are mapped per family; every parameter of the model must receive exactly one tensor of its
shape, and every tensor of the checkpoint must be used (known buffers aside): anything else is a
:class:`~costmodel.errors.SpecError` naming the tensor. No ``transformers`` import.

- GPT-2 (``[transformer.]h.{i}.attn.c_attn`` ...): Conv1D matrices are stored ``[in, out]``, so they
  are transposed; the fused ``c_attn`` is split into q, k and v.
- LLaMA, Mistral, Qwen2, Gemma (``model.layers.{i}.self_attn.q_proj`` ...), and Phi-3's fused
  ``qkv_proj`` / ``gate_up_proj``, split in that order.

NB: Gemma multiplies its embeddings by sqrt(hidden) and its RMSNorm by (1 + weight); the reference
model does neither (shapes and FLOPs are unchanged), so Gemma logits from real weights differ
from Hugging Face's.
"""

from __future__ import annotations

import glob
import os
import re

import torch
from torch import Tensor

from costmodel.errors import SpecError

# Checkpoint tensors that are not parameters (buffers some exports keep).
_IGNORED = re.compile(r"(\.attn\.(masked_)?bias|rotary_emb\.inv_freq)$")


def read_safetensors(folder: str) -> dict[str, Tensor]:
    """All tensors of the ``*.safetensors`` files in ``folder`` (sharded checkpoints included)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise SpecError(f"no *.safetensors file in {folder!r}; give a folder holding the model's weights")
    tensors: dict[str, Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise SpecError(f"cannot read weights {f!r}: {e}") from None
    return tensors


def _gpt2_names(spec, hf: dict[str, Tensor]):
    h = spec.hidden_size
    prefix = "transformer." if any(k.startswith("transformer.") for k in hf) else ""
    g = {k[len(prefix):]: v for k, v in hf.items() if k.startswith(prefix)}
    out = {"tok_embeddings.weight": g.pop("wte.weight", None), "pos_embeddings.weight": g.pop("wpe.weight", None),
           "final_norm.weight": g.pop("ln_f.weight", None), "final_norm.bias": g.pop("ln_f.bias", None)}
    for i in range(spec.num_layers):
        p, q = f"h.{i}.", f"layers.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[q + ours + ".weight"] = g.pop(p + theirs + ".weight", None)
            out[q + ours + ".bias"] = g.pop(p + theirs + ".bias", None)
        w, b = g.pop(p + "attn.c_attn.weight", None), g.pop(p + "attn.c_attn.bias", None)
        if w is not None:  # Conv1D [in, 3h] -> three [h, h] Linear weights
            for name, part in zip(("q", "k", "v"), w.split(h, dim=1)):
                out[f"{q}attention.{name}_proj.weight"] = part.t()
        if b is not None:
            for name, part in zip(("q", "k", "v"), b.split(h)):
                out[f"{q}attention.{name}_proj.bias"] = part
        for ours, theirs in (("attention.o_proj", "attn.c_proj"), ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
            w = g.pop(p + theirs + ".weight", None)
            out[q + ours + ".weight"] = None if w is None else w.t()
            out[q + ours + ".bias"] = g.pop(p + theirs + ".bias", None)
    if "lm_head.weight" in hf:
        out["lm_head.weight"] = hf["lm_head.weight"]
    leftover = {k for k in g if not _IGNORED.search(k)}
    return out, leftover


def _llama_names(spec, hf: dict[str, Tensor]):
    g = dict(hf)
    out = {"tok_embeddings.weight": g.pop("model.embed_tokens.weight", None),
           "final_norm.weight": g.pop("model.norm.weight", None),
           "lm_head.weight": g.pop("lm_head.weight", None)}
    for i in range(spec.num_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[q + "attn_norm.weight"] = g.pop(p + "input_layernorm.weight", None)
        out[q + "mlp_norm.weight"] = g.pop(p + "post_attention_layernorm.weight", None)
        fused = g.pop(p + "self_attn.qkv_proj.weight", None)  # Phi-3
        if fused is not None:
            for name, part in zip("qkv", fused.split([spec.q_size, spec.kv_size, spec.kv_size], dim=0)):
                out[f"{q}attention.{name}_proj.weight"] = part
        for name in ("q", "k", "v", "o"):
            for kind in ("weight", "bias"):
                t = g.pop(f"{p}self_attn.{name}_proj.{kind}", None)
                if t is not None:
                    out[f"{q}attention.{name}_proj.{kind}"] = t
        for name in ("q_norm", "k_norm"):  # Qwen3, OLMo 2
            t = g.pop(f"{p}self_attn.{name}.weight", None)
            if t is not None:
                out[f"{q}attention.{name}.weight"] = t
        fused = g.pop(p + "mlp.gate_up_proj.weight", None)  # Phi-3
        if fused is not None:
            out[q + "mlp.gate.weight"], out[q + "mlp.up.weight"] = fused.split(spec.intermediate_size, dim=0)
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            for kind in ("weight", "bias"):
                t = g.pop(f"{p}mlp.{theirs}.{kind}", None)
                if t is not None:
                    out[f"{q}mlp.{ours}.{kind}"] = t
    leftover = {k for k in g if not _IGNORED.search(k)}
    return out, leftover


def load_hf_weights(model, folder: str) -> None:
    """Copy the checkpoint in ``folder`` into ``model`` (in place), checking names and shapes."""
    spec = model.spec
    if spec.arch != "decoder" or spec.num_experts or spec.mla:
        kind = (f"arch {spec.arch!r}" if spec.arch != "decoder" else
                "a mixture-of-experts model" if spec.num_experts else "a latent-attention model")
        raise SpecError(f"{spec.name} is {kind}: real weights load into dense decoder-only models "
                        "(GPT-2, LLaMA families); profile it with seeded random weights")
    hf = read_safetensors(folder)
    mapped, leftover = (_gpt2_names if spec.family == "gpt2" else _llama_names)(spec, hf)
    mapped = {k: v for k, v in mapped.items() if v is not None}
    if leftover:
        names = sorted(leftover)
        raise SpecError(f"{folder}: {len(names)} tensor(s) the {spec.family} reference model has no place for, "
                        f"e.g. {names[0]!r}; is config.json the checkpoint's own?")
    params = dict(model.named_parameters())  # a tied LM head appears once, as tok_embeddings.weight
    if spec.tie_word_embeddings:
        mapped.pop("lm_head.weight", None)  # some exports store the tied copy too
    for name, p in params.items():
        if name not in mapped:
            raise SpecError(f"{folder}: no tensor for parameter {name!r} of {spec.name}")
        t = mapped.pop(name)
        if tuple(t.shape) != tuple(p.shape):
            raise SpecError(f"{folder}: tensor for {name!r} has shape {tuple(t.shape)}, "
                            f"{spec.name} needs {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(t.to(p.dtype))
    if mapped:
        raise SpecError(f"{folder}: tensor(s) for parameters {spec.name} does not have, e.g. {sorted(mapped)[0]!r}")


def hf_state_dict(model) -> dict[str, Tensor]:
    """The model's weights under Hugging Face names (the inverse of :func:`load_hf_weights`)."""
    spec, sd = model.spec, {k: v.detach().clone() for k, v in model.named_parameters()}
    out: dict[str, Tensor] = {}
    if spec.family == "gpt2":
        out["transformer.wte.weight"] = sd.pop("tok_embeddings.weight")
        out["transformer.wpe.weight"] = sd.pop("pos_embeddings.weight")
        for kind in ("weight", "bias"):
            out[f"transformer.ln_f.{kind}"] = sd.pop(f"final_norm.{kind}")
        for i in range(spec.num_layers):
            p, q = f"transformer.h.{i}.", f"layers.{i}."
            for kind in ("weight", "bias"):
                out[f"{p}ln_1.{kind}"] = sd.pop(f"{q}attn_norm.{kind}")
                out[f"{p}ln_2.{kind}"] = sd.pop(f"{q}mlp_norm.{kind}")
            out[p + "attn.c_attn.weight"] = torch.cat([sd.pop(f"{q}attention.{n}_proj.weight").t() for n in "qkv"], 1)
            out[p + "attn.c_attn.bias"] = torch.cat([sd.pop(f"{q}attention.{n}_proj.bias") for n in "qkv"])
            for ours, theirs in (("attention.o_proj", "attn.c_proj"), ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                out[p + theirs + ".weight"] = sd.pop(q + ours + ".weight").t().contiguous()
                out[p + theirs + ".bias"] = sd.pop(q + ours + ".bias")
    else:
        out["model.embed_tokens.weight"] = sd.pop("tok_embeddings.weight")
        out["model.norm.weight"] = sd.pop("final_norm.weight")
        for i in range(spec.num_layers):
            p, q = f"model.layers.{i}.", f"layers.{i}."
            out[p + "input_layernorm.weight"] = sd.pop(q + "attn_norm.weight")
            out[p + "post_attention_layernorm.weight"] = sd.pop(q + "mlp_norm.weight")
            for k in list(sd):
                if k.startswith(q + "attention."):
                    out[p + "self_attn." + k[len(q + "attention."):]] = sd.pop(k)
                elif k.startswith(q + "mlp."):
                    name = k[len(q + "mlp."):]
                    out[p + "mlp." + name.replace("gate", "gate_proj").replace("up", "up_proj")
                        .replace("down", "down_proj")] = sd.pop(k)
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd.pop("lm_head.weight")
    assert not sd, f"unmapped parameters: {sorted(sd)}"
    return {k: v.contiguous() for k, v in out.items()}
