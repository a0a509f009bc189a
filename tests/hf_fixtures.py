"""Shared readers of tests/fixtures/hf/<model_type>.json (what transformers 5.23 executed, measured)."""

from __future__ import annotations

import json
from pathlib import Path

from costmodel.models import spec_from_hf_dict
from costmodel.spec import Workload

HF = Path(__file__).parent / "fixtures" / "hf"


def fixture(model_type: str) -> dict:
    return json.loads((HF / f"{model_type}.json").read_text())


def spec_of(fx: dict):
    """The spec costmodel reads from the fixture's config (only the fields it was given)."""
    return spec_from_hf_dict({"model_type": fx["model_type"], **fx["config"]}, name=fx["model_type"])


def workload(fx: dict, prompt=None, gen=5, logits="last") -> Workload:
    """The fixture's batch and prompt in fp32, as it was measured."""
    return Workload(batch=fx["batch"], prompt=prompt or fx["prompt"], gen=gen, weight_dtype="fp32",
                    act_dtype="fp32", logits=logits)
