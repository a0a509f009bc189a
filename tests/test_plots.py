"""Every plot kind: the data behind it (hand-derived where it is arithmetic), the figure's axes,
titles, labels and legends, and the files `costmodel plot` writes."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from costmodel import Workload, analyze, get_model
from costmodel.analysis import decode_step_cost
from reports.cli import main
from costmodel.hardware import get_hardware
from reports import plotdata as D
from reports import plots

matplotlib = pytest.importorskip("matplotlib")

H100 = get_hardware("h100-sxm")
WL = Workload(batch=2, prompt=64, gen=16)
BATCHES, CONTEXTS = [1, 2, 4, 8], [16, 32, 64, 128]

VALIDATION = {"cases": [  # the shape of `costmodel validate --format json` (fields that are plotted)
    {"case": "a", "attention": "eager",
     "prefill": {"analytic_matmul_flops": 5046272, "counted_matmul_flops": 5046272,
                 "kv_cache_bytes": 24576, "analytic_kv_cache_bytes": 24576},
     "decode": {"analytic_matmul_flops": 1000000, "counted_matmul_flops": 1000000,
                "kv_cache_bytes": 4096, "analytic_kv_cache_bytes": 4096}},
    {"case": "b", "prefill": {"analytic_matmul_flops": 2000, "counted_matmul_flops": 2100,
                              "predicted_s": 0.010, "measured_s": 0.012}},
]}


def run(*args):
    return CliRunner().invoke(main, list(args))


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])  # IHDR width, height


def _texts(fig):
    """Titles, axis labels and legend entries of every visible axes."""
    out = {"titles": [], "xlabels": [], "ylabels": [], "legend": []}
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        out["titles"].append(ax.get_title())
        out["xlabels"].append(ax.get_xlabel())
        out["ylabels"].append(ax.get_ylabel())
        if ax.get_legend():
            out["legend"] += [t.get_text() for t in ax.get_legend().get_texts()]
    return out


def _check_labelled(fig):
    t = _texts(fig)
    assert all(t["titles"]) and all(t["xlabels"]) and all(t["ylabels"]), t
    return t


# --- data ----------------------------------------------------------------------------------------

def test_term_of():
    assert D.term_of("q_proj", "matmul") == "projections"
    assert D.term_of("attn_scores", "matmul") == "attention"
    assert D.term_of("mlp_down", "matmul") == "MLP"
    assert D.term_of("expert_up", "matmul") == "MLP"
    assert D.term_of("mlp_act", "elementwise") == "other"
    assert D.term_of("lm_head", "matmul") == "LM head"


def test_term_labels_textbook_coefficients():
    # GPT-2 (MHA, 4h MLP): exactly the textbook 8bsh^2, 4bs^2h, 16bsh^2
    lab = D.term_labels(get_model("gpt2"))
    assert "projections 8·bsh²" in lab["projections"]
    assert "4·bs²h" in lab["attention"] and "MLP 16·bsh²" in lab["MLP"]
    # llama-2-70b: GQA 8/64 kv heads -> 2 (2 h^2 + 2 h^2/8) / h^2 = 4.5; MLP 2 * 3 * 28672 / 8192 = 21
    lab = D.term_labels(get_model("llama-2-70b"))
    assert "4.5·bsh²" in lab["projections"] and "MLP 21·bsh²" in lab["MLP"]


def test_phase_terms_sum_to_the_analysis():
    spec = get_model("tiny-llama")
    terms = D.phase_terms(spec, WL, CONTEXTS, BATCHES)
    tot = D.phase_totals(terms)
    for p in CONTEXTS:  # the context axis runs at batch WL.batch = 2
        row = tot[(tot["axis"] == "context") & (tot["prompt"] == p)].set_index("phase")
        a = analyze(spec, Workload(batch=2, prompt=p, gen=2))
        assert row.loc["prefill", "flops"] == a.prefill.flops
        assert row.loc["prefill", "bytes"] == a.prefill.bytes
        assert row.loc["decode", "flops"] == decode_step_cost(spec, a.workload, 1).total("flops")
    assert set(terms["term"]) == set(D.TERMS)


def test_kv_cache_curves_hand_derived():
    # tiny-llama: 2 layers, 2 kv heads x head_dim 16 -> 2 (K, V) * 2 * 32 = 128 values a position;
    # bf16: 256 bytes; batch 2: 512 bytes per position. MHA (4 kv heads): twice that.
    d = D.kv_cache_curves(get_model("tiny-llama"), WL)
    at = d[d["positions"] == 64].set_index("variant")["kv_cache_bytes"]
    assert at["as configured: GQA 2 kv heads, bf16"] == 512 * 64
    assert at["without GQA: MHA 4 kv heads, bf16"] == 1024 * 64
    assert at["MQA: 1 kv head, bf16"] == 256 * 64
    assert at["GQA 2 kv heads, int4 cache"] == 128 * 64  # 4 bits: a quarter of bf16
    assert d["positions"].max() == max(WL.final_context, 256)  # to max_position_embeddings


def test_memory_marks_agree_with_the_planner():
    from costmodel import plan

    spec = get_model("llama-2-7b")
    curves, marks = D.memory_curves(spec, Workload(prompt=2048, gen=128), H100, [1, 16, 64], [128, 4096])
    assert marks["max_batch"] == plan.max_batch(spec, H100, Workload(prompt=2048, gen=128)) > 0
    # the H100 SXM's reported 81,559 MiB = 81,559 * 2**20 = 85,520,809,984 bytes (was the marketed 80e9)
    assert (marks["capacity_bytes"], marks["capacity_figure"]) == (85_520_809_984, "reported")
    row = curves[(curves["axis"] == "batch") & (curves["batch"] == 1)].iloc[0]
    assert row["weights"] == 2 * 6_738_415_616


def test_roofline_points_lie_on_or_under_the_roof():
    ops = D.roofline_ops(get_model("llama-2-7b"), Workload(batch=8, prompt=2048), H100)
    F, B = ops.attrs["flops_per_s"], ops.attrs["bytes_per_s"]
    roof = (ops["arithmetic_intensity"] * B).clip(upper=F)
    assert (ops["flops_per_s"] <= roof * (1 + 1e-9)).all()
    assert set(ops["phase"]) == {"prefill", "decode"}
    assert "embedding" in ops.attrs["left_out"]  # no arithmetic: not placed


def test_validation_points_accepts_the_validate_shape():
    pts = D.validation_points(VALIDATION)
    assert len(pts[pts["quantity"] == "flops"]) == 3
    assert len(pts[pts["quantity"] == "seconds"]) == 1
    assert pts[pts["quantity"] == "kv_cache_bytes"]["analytic"].tolist() == [24576, 4096]
    assert "a [eager]" in set(pts["case"])


@pytest.mark.parametrize("bad", [{}, {"cases": []}, {"cases": [{"case": "x"}]}, [1]])
def test_validation_points_rejects(bad):
    with pytest.raises(ValueError):
        D.validation_points(bad)


# --- figures -------------------------------------------------------------------------------------

def test_phases_figure():
    spec = get_model("tiny-llama")
    fig = plots.build("phases", [spec], WL, [H100], BATCHES, CONTEXTS)
    t = _check_labelled(fig)
    assert len([a for a in fig.axes if a.get_visible()]) == 10
    assert any(s.startswith("QKVO projections") for s in t["legend"])
    assert any("ridge point" in s for s in t["legend"])
    assert "Prefill FLOPs by term (batch 2)" in t["titles"]
    assert "context length: prompt tokens (log₂)" in t["xlabels"]
    assert fig._suptitle.get_text().startswith("tiny-llama: prefill vs decode")
    assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_xscale() == "log"


def test_kv_cache_figure_with_and_without_device():
    spec = get_model("llama-2-70b")
    fig = plots.build("kv-cache", [spec], Workload(batch=8, prompt=2048), [H100])
    t = _check_labelled(fig)
    assert t["ylabels"] == ["KV cache (GB = 10⁹ bytes, log)"]
    assert any("h100-sxm memory 85.5 GB (reported)" in s for s in t["legend"])  # 85,520,809,984 bytes
    assert any(s.startswith("without GQA: MHA 64 kv heads") for s in t["legend"])
    text = [x.get_text() for x in fig.axes[0].texts]
    assert any("weights alone (138 GB) exceed" in s for s in text)  # 2 * 68.98e9 bytes
    fig = plots.build("kv-cache", [spec], Workload(batch=8, prompt=2048), [])
    assert not any("memory" in s for s in _texts(fig)["legend"])


def test_memory_figure_marks_max_batch():
    spec = get_model("llama-2-7b")
    fig = plots.build("memory", [spec], Workload(prompt=2048), [H100], BATCHES * 16, CONTEXTS)
    t = _check_labelled(fig)
    assert any(s.startswith("max batch that fits:") for s in t["legend"])
    assert any(s.startswith("h100-sxm capacity 85.5 GB (reported)") for s in t["legend"])  # 81,559 MiB
    assert {"weights", "KV cache", "activations"} <= set(t["legend"])


def test_roofline_figure():
    fig = plots.build("roofline", [get_model("tiny-llama")], WL, [H100])
    t = _check_labelled(fig)
    assert {"memory-bound region", "compute-bound region", "prefill ops"} <= set(t["legend"])
    key = "".join(x.get_text() for x in fig.axes[0].texts)
    assert "q_proj" in key and "attn_scores" in key


def test_latency_figure_several_gpus():
    fig = plots.build("latency", [get_model("tiny-llama")], WL, [H100, get_hardware("a100-sxm-80gb")],
                      BATCHES, CONTEXTS)
    t = _check_labelled(fig)
    assert len(fig.axes) == 4
    assert {"h100-sxm", "a100-sxm-80gb"} <= set(t["legend"])
    assert any("TTFT" in s and "(ms, log)" in s for s in t["ylabels"])


def test_validation_figure():
    fig = plots.build("validation", [], WL, validation=VALIDATION)
    t = _check_labelled(fig)
    assert "identity: measured = analytic" in t["legend"]
    assert t["titles"][0] == "Matmul FLOPs: analytic vs counted (2/3 exactly equal)"
    assert "predicted (s, log)" in t["xlabels"]  # case b has timings


def test_compare_figure():
    specs = [get_model("tiny-llama"), get_model("tiny-gpt2")]
    fig = plots.build("compare", specs, WL, [H100], BATCHES, CONTEXTS)
    t = _check_labelled(fig)
    assert len([a for a in fig.axes if a.get_visible()]) == 5
    assert {"tiny-llama", "tiny-gpt2"} <= set(t["legend"])


# --- encoder and encoder-decoder models ---------------------------------------------------------------

BERT, T5 = get_model("tiny-bert"), get_model("tiny-t5")
ENC_WL = Workload(batch=2, prompt=16, gen=4)


def test_phase_terms_of_encoder_models_sum_to_the_analysis():
    for spec, phases in ((BERT, {"encode"}), (T5, {"encode", "prefill", "decode"})):
        w = ENC_WL if spec is T5 else Workload(batch=2, prompt=16)
        tot = D.phase_totals(D.phase_terms(spec, w, CONTEXTS, BATCHES))
        assert set(tot["phase"]) == phases
        row = tot[(tot["axis"] == "context") & (tot["prompt"] == 32)].set_index("phase")
        a = analyze(spec, Workload(batch=2, prompt=32, gen=4 if spec is T5 else 1))
        assert row.loc["encode", "flops"] == a.encode.flops and row.loc["encode", "bytes"] == a.encode.bytes
        if spec is T5:
            assert row.loc["prefill", "flops"] == a.prefill.flops
            assert row.loc["decode", "flops"] == decode_step_cost(spec, a.workload, 1).total("flops")


def test_cross_attention_ops_count_as_their_terms():
    assert D.term_of("cross_k_proj", "matmul") == "projections"
    assert D.term_of("cross_attn_values", "matmul") == "attention"


def test_phases_figure_encoder_models():
    fig = plots.build("phases", [BERT], Workload(batch=2, prompt=16), [H100], BATCHES, CONTEXTS)
    t = _check_labelled(fig)
    assert len(fig.axes) == 8  # totals, encode FLOPs by term, encode bytes by kind, intensity; x 2
    assert "Encode FLOPs by term (batch 2)" in t["titles"] and "KV cache" not in t["legend"]
    assert "input length: tokens (log₂)" in t["xlabels"]
    fig = plots.build("phases", [T5], ENC_WL, [H100], BATCHES, CONTEXTS)
    t = _check_labelled(fig)
    assert len(fig.axes) == 12  # + prefill and decode FLOPs by term
    assert {"Encode FLOPs by term (batch 2)", "Prefill FLOPs by term (batch 2)",
            "Decode step FLOPs by term (batch 2)", "Decode step bytes by kind (batch 2)"} <= set(t["titles"])
    assert "prefill (decoder prompt + cross K/V): FLOPs" in t["legend"]


def test_kv_cache_figure_encoder_models():
    fig = plots.build("kv-cache", [BERT], Workload(batch=2, prompt=16), [H100])
    _check_labelled(fig)
    assert "tiny-bert is encoder-only: no KV cache" in [x.get_text() for x in fig.axes[0].texts]
    d = D.kv_cache_curves(T5, ENC_WL)
    # tiny-t5: 2 (K, V) * 2 layers * 64 * 2 bytes = 512 bytes a position and sequence;
    # self: batch 2 * (decoder prompt 1 + gen 4 - 1) = 8 positions -> 4,096; cross: 2 * 16 -> 16,384
    assert d.attrs["request"] == {"self_positions": 4, "self_bytes": 4_096,
                                  "cross_positions": 16, "cross_bytes": 16_384}
    fig = plots.build("kv-cache", [T5], ENC_WL, [H100])
    t = _check_labelled(fig)
    assert any(s.startswith("held by the request: self + cross = 20.5 kB") for s in t["legend"])


@pytest.mark.parametrize("spec", [BERT, T5])
def test_memory_roofline_latency_figures_encoder_models(spec):
    w = ENC_WL
    for kind in ("memory", "roofline", "latency"):
        fig = plots.build(kind, [spec], w, [H100], BATCHES, CONTEXTS)
        t = _check_labelled(fig)
        if kind == "roofline":
            assert "encode ops" in t["legend"]
        if kind == "latency":
            assert len(fig.axes) == (2 if spec is BERT else 4)
    curves = D.latency_curves(BERT, w, [H100], BATCHES, CONTEXTS)
    assert curves["tpot_s"].isna().all() and (curves["ttft_s"] > 0).all()  # the encode pass


def test_compare_mixes_families():
    curves = D.compare_curves([BERT, T5, get_model("tiny-gpt2")], ENC_WL, [H100], [16, 32])
    bert = curves[(curves["model"] == "tiny-bert") & (curves["prompt"] == 32)].iloc[0]
    assert bert["prefill_flops"] == analyze(BERT, Workload(batch=2, prompt=32)).encode.flops
    assert np.isnan(bert["decode_flops_per_step"]) and np.isnan(bert["tpot_s"])
    t5 = curves[(curves["model"] == "tiny-t5") & (curves["prompt"] == 32)].iloc[0]
    a = analyze(T5, Workload(batch=2, prompt=32, gen=4))
    assert t5["prefill_flops"] == a.encode.flops + a.prefill.flops  # work before the first token
    # weights + self cache (decoder prompt 1 + gen 4 - 1 = 4 positions) + cross cache (32 source
    # positions), 512 bytes a position and sequence, batch 2, + the activation peak: the memory plot's
    # figures (it stacks the runtime reserve on top)
    assert t5["memory_bytes"] == a.memory.weights_bytes + 512 * 2 * (4 + 32) + a.memory.activation_peak_bytes
    fig = plots.build("compare", [BERT, T5, get_model("tiny-gpt2")], ENC_WL, [H100], BATCHES, CONTEXTS)
    t = _check_labelled(fig)
    assert "tiny-bert: none (encoder-only, no decode)" in t["legend"]


def test_colours_are_colour_blind_safe():
    fig = plots.build("latency", [get_model("tiny-llama")], WL, [H100], BATCHES, CONTEXTS)
    from matplotlib.colors import to_hex

    colours = {to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}
    assert colours <= {c.lower() for c in plots.OKABE_ITO}


def test_build_needs_a_device():
    with pytest.raises(ValueError, match="needs a device"):
        plots.build("roofline", [get_model("tiny-llama")], WL, [])


# --- CLI: files on disk ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, args", [
    ("phases", ["tiny-llama", "--gpu", "h100-sxm"]),
    ("kv-cache", ["tiny-llama"]),
    ("memory", ["tiny-llama", "--gpu", "h100-sxm"]),
    ("roofline", ["tiny-llama", "--gpu", "h100-sxm"]),
    ("latency", ["tiny-llama", "--gpu", "h100-sxm,l4"]),
    ("compare", ["tiny-llama,tiny-gpt2"]),
    ("validation", []),
    ("phases", ["tiny-bert", "--gpu", "h100-sxm"]),
    ("phases", ["tiny-t5", "--gpu", "h100-sxm"]),
    ("kv-cache", ["tiny-bert"]),
    ("kv-cache", ["tiny-t5", "--gpu", "h100-sxm"]),
    ("latency", ["tiny-bert", "--gpu", "h100-sxm"]),
    ("compare", ["tiny-bert,tiny-t5,tiny-gpt2", "--gpu", "h100-sxm"]),
])
def test_cli_writes_png_and_svg(tmp_path, kind, args):  # every family: decoder, encoder, encoder-decoder
    extra = []
    if kind == "validation":
        src = tmp_path / "validate.json"
        src.write_text(json.dumps(VALIDATION))
        extra = ["--input", str(src)]
    out = tmp_path / "plots"
    out.mkdir()
    r = run("plot", kind, *args, "--batch", "2", "--prompt", "32", "--gen", "8", "--batch-range", "1:8:x2",
            "--context-range", "16:128:x2", "--out", str(out), *extra)
    assert r.exit_code == 0, r.output
    paths = r.stdout.strip().splitlines()  # warnings (context past max positions) go to stderr
    assert [os.path.splitext(p)[1] for p in paths] == [".png", ".svg"]
    for p in paths:
        assert os.path.dirname(p) == str(out) and os.path.getsize(p) > 10_000
    w, h = _png_size(paths[0])
    assert 800 <= w <= 3600 and 350 <= h <= 1400  # 350: the one-line "no KV cache" panel of an encoder
    assert open(paths[1]).read(200).lstrip().startswith("<?xml")
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)  # no temp files


@pytest.mark.parametrize("args, words", [
    (["plot", "pie", "tiny-llama"], "'pie' is not one of 'phases', 'kv-cache', 'memory', 'roofline'"),
    (["plot", "roofline", "tiny-llama"], "needs a device: give --gpu NAME"),
    (["plot", "phases"], "needs MODEL"),
    (["plot", "phases", "nope"], "unknown model 'nope'"),
    (["plot", "phases", "tiny-llama", "--context-range", "9:1"], "STOP (1) is below START (9)"),
    (["plot", "validation"], "needs --input FILE"),
    (["plot", "validation", "--input", "/no/such.json"], "cannot read --input"),
    # --out creates missing folders (issue 15); one under a regular file cannot be created
    (["plot", "phases", "tiny-llama", "--out", "/dev/null/dir"], "is not a folder"),
])
def test_cli_bad_input(args, words):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert words in r.output and len(r.output.strip().splitlines()) == 1


def test_cli_validation_input_not_json(tmp_path):
    bad = tmp_path / "v.json"
    bad.write_text("{not json")
    r = run("plot", "validation", "--input", str(bad), "--out", str(tmp_path))
    assert r.exit_code == 2 and "is not JSON" in r.output
    assert os.listdir(tmp_path) == ["v.json"]


def test_command_modules_import_no_heavy_libraries():
    probe = ("import sys, reports.cli.sweep; "
             "print(sorted(m for m in ('numpy', 'pandas', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
