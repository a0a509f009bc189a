"""The families costmodel read before issue 12, exact against transformers 5.23's own models.

tests/fixtures/hf/<model_type>.json holds what FlopCounterMode counted (matmul-like aten ops, 2 FLOPs
a multiply-add: costmodel's ``matmul_flops``) over a small random model of each family, eager
attention, fp32 (4 bytes an element), batch 2 (see tests/fixtures/hf/README.md; made by
make_fixtures.py). The newer families have files of their own (test_sliding.py, test_hf_blocks.py,
test_hf_moe_mla.py, test_interleaved_models.py); this one covers gpt2, llama, gemma and qwen2_moe.
"""

from __future__ import annotations

import pytest
from hf_fixtures import fixture, spec_of, workload

from costmodel.analysis import decode_step_cost, kv_cache_bytes, prefill_cost
from costmodel.models import spec_from_hf_dict

TYPES = ("gpt2", "llama", "gemma", "qwen2_moe")


@pytest.mark.parametrize("model_type", TYPES)
def test_parameters_are_transformers(model_type):
    fx = fixture(model_type)
    assert spec_of(fx).num_params == fx["num_params"] == fx["num_params_meta"]


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("logits", ["all", "last"])
def test_prefill_is_transformers(model_type, logits):
    fx = fixture(model_type)
    cost = prefill_cost(spec_of(fx), workload(fx, logits=logits))
    assert cost.total("matmul_flops") == fx["prefill"][f"logits_{logits}"]["flops"]


@pytest.mark.parametrize("model_type", TYPES)
def test_each_decode_step_and_its_cache_are_transformers(model_type):
    fx = fixture(model_type)
    spec = spec_of(fx)
    short = fx["decode_steps_short_prompt"]
    for prompt, steps in ((fx["prompt"], fx["decode_steps"]), (short["prompt"], short["steps"])):
        wl = workload(fx, prompt=prompt, gen=len(steps) + 1)
        assert [s["context_before"] for s in steps] == list(range(prompt, prompt + len(steps)))
        assert [decode_step_cost(spec, wl, i).total("matmul_flops") for i in range(1, len(steps) + 1)] == [
            s["flops"] for s in steps]
        assert [kv_cache_bytes(spec, wl, prompt + i) for i in range(1, len(steps) + 1)] == [
            s["kv_cache_bytes_after"] for s in steps]
    after = fx["kv_cache_bytes"]
    assert kv_cache_bytes(spec, workload(fx), fx["prompt"]) == after["after_prefill"]


def test_one_cache_figure_by_hand():
    # llama fixture: 4 layers x (k, v) x batch 2 x 2 kv heads x 12 positions x head_dim 16 x 4 bytes
    fx = fixture("llama")
    assert fx["kv_cache_bytes"]["after_prefill"] == 4 * 2 * 2 * 2 * 12 * 16 * 4 == 24576


@pytest.mark.parametrize("model_type", TYPES)
def test_missing_fields_are_what_transformers_resolved(model_type):
    fx = fixture(model_type)  # resolved_config: the config class's to_dict(), every default filled in
    assert spec_from_hf_dict(fx["resolved_config"], name=model_type) == spec_of(fx)
