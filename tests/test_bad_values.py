"""Input that used to be accepted with exit 0 though wrong, or options that changed nothing without a
word (issue 15): each is now refused in one line (exit 2) or warned about, and defaults the user did
not set are never warned about."""

import json

import pytest
from click.testing import CliRunner

from reports.cli import main

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 64}
MIXTRAL = {**LLAMA, "model_type": "mixtral", "num_key_value_heads": 4}

# (name, config, expected substring of the one error line)
WRONG_VALUES = [
    ("rope-nan", {**LLAMA, "rope_theta": float("nan")}, "field 'rope_theta' must be a positive finite number, got NaN"),
    ("rope-zero", {**LLAMA, "rope_theta": 0}, "field 'rope_theta' must be a positive finite number, got 0"),
    ("rope-negative", {**LLAMA, "rope_theta": -10000.0}, "field 'rope_theta' must be a positive finite number"),
    ("rope-infinite", {**LLAMA, "rope_theta": float("inf")}, "field 'rope_theta' must be a positive finite number"),
    ("rope-huge-int", {**LLAMA, "rope_theta": 10 ** 400}, "an integer of 401 digits"),
    ("eps-nan", {**LLAMA, "rms_norm_eps": float("nan")}, "field 'rms_norm_eps' must be a positive finite number"),
    ("eps-zero", {**LLAMA, "rms_norm_eps": 0}, "field 'rms_norm_eps' must be a positive finite number"),
    ("eps-negative", {**LLAMA, "rms_norm_eps": -1e-6}, "field 'rms_norm_eps' must be a positive finite number"),
    ("gpt2-eps-zero", {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100,
                       "layer_norm_epsilon": 0.0}, "field 'layer_norm_epsilon' must be a positive finite number"),
    ("act-empty", {**LLAMA, "hidden_act": ""}, "unsupported hidden_act ''"),
    ("act-zero", {**LLAMA, "hidden_act": 0}, "field 'hidden_act' must be a string, got 0"),
    ("act-list", {**LLAMA, "hidden_act": ["silu"]}, "field 'hidden_act' must be a string"),
    ("experts-zero", {**MIXTRAL, "num_local_experts": 0, "num_experts_per_tok": 2},
     "field 'num_local_experts' must be at least 1 for model_type 'mixtral'"),
    ("experts-zero-k-zero", {**MIXTRAL, "num_local_experts": 0, "num_experts_per_tok": 0},
     "field 'num_local_experts' must be at least 1"),
    ("qwen3-moe-experts-zero", {**LLAMA, "model_type": "qwen3_moe", "num_experts": 0, "num_experts_per_tok": 1,
                                "moe_intermediate_size": 32, "num_key_value_heads": 4},
     "field 'num_experts' must be at least 1 for model_type 'qwen3_moe'"),
]


@pytest.mark.parametrize("name, cfg, msg", WRONG_VALUES, ids=[c[0] for c in WRONG_VALUES])
@pytest.mark.parametrize("cmd", [["report"], ["plan", "--gpu", "h100-sxm"]])
def test_wrong_config_values_are_refused_in_one_line(tmp_path, name, cfg, msg, cmd):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))  # NaN and Infinity as Python's json writes them (what HF writes too)
    r = CliRunner().invoke(main, cmd + [str(path)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and msg in lines[0], r.output


def test_presets_keep_their_values():
    # the new checks refuse nothing built in: every preset has a positive rotary base and epsilon
    from costmodel.models import PRESETS

    assert all(s.rope_theta > 0 and s.norm_eps > 0 for s in PRESETS.values())


def _warnings(args):
    r = CliRunner().invoke(main, ["report", *args, "--format", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["warnings"]


@pytest.mark.parametrize("args, expected", [
    # an encoder-only model: only what the user set differently is named
    (["bert-base", "--gen", "128"], ["bert-base is encoder-only: one encode pass over the input, no generation "
                                     "and no KV cache; gen=128 ignored"]),
    (["bert-base", "--no-kv-cache"], ["bert-base is encoder-only: one encode pass over the input, no generation "
                                      "and no KV cache; kv_cache=False ignored"]),
    (["bert-base", "--kv-dtype", "fp8"], ["bert-base is encoder-only: one encode pass over the input, no "
                                          "generation and no KV cache; kv_dtype=fp8 ignored"]),
    (["bert-base", "--logits", "all"], ["bert-base is encoder-only: one encode pass over the input, no generation "
                                        "and no KV cache; logits='all' ignored"]),
    (["bert-base", "--strategy", "top_k", "--beams", "1"], [
        "bert-base is encoder-only: one encode pass over the input, no generation and no KV cache; "
        "strategy 'top_k' ignored"]),
    (["bert-base"], []),  # nothing set: nothing to warn about (it used to name gen, beams and strategy)
    (["bert-base", "--gen", "1", "--strategy", "greedy"], []),  # defaults given explicitly change nothing
    # sampling parameters the strategy does not use
    (["gpt2", "--top-k", "5"], ["strategy 'greedy' does not use top_k=5: ignored (top_k is for top_k and "
                                "top_k_top_p, top_p for top_p and top_k_top_p, temperature for every "
                                "sampling strategy)"]),
    (["gpt2", "--temperature", "0.5"], ["strategy 'greedy' does not use temperature=0.5: ignored (top_k is for "
                                        "top_k and top_k_top_p, top_p for top_p and top_k_top_p, temperature "
                                        "for every sampling strategy)"]),
    (["gpt2", "--beams", "2", "--top-p", "0.5"], ["strategy 'beam' does not use top_p=0.5: ignored (top_k is "
                                                  "for top_k and top_k_top_p, top_p for top_p and top_k_top_p, "
                                                  "temperature for every sampling strategy)"]),
    (["gpt2", "--strategy", "top_k", "--top-k", "5", "--temperature", "0.7"], []),
    (["gpt2", "--strategy", "top_k_top_p", "--top-k", "5", "--top-p", "0.5"], []),
    (["gpt2", "--strategy", "sample", "--top-k", "5"], [
        "strategy 'sample' does not use top_k=5: ignored (top_k is for top_k and top_k_top_p, top_p for top_p "
        "and top_k_top_p, temperature for every sampling strategy)"]),
])
def test_options_that_change_nothing_are_warned_about(args, expected):
    assert _warnings(args) == expected


def test_html_with_a_stdout_format_is_refused_before_anything_is_written(tmp_path):
    page = tmp_path / "r.html"
    for fmt in ("json", "csv"):
        r = CliRunner().invoke(main, ["report", "gpt2", "--format", fmt, "--html", str(page)])
        assert r.exit_code == 2, r.output
        assert r.output.strip() == (f"Error: --html FILE writes one HTML page and --format {fmt} prints to "
                                    "stdout: give one of them (run twice for both)")
    assert not page.exists()


@pytest.mark.parametrize("args, msg", [
    (["report", "llama-7b"], "unknown model 'llama-7b'; did you mean 'llama-2-7b' or "),
    (["report", "gtp2"], "unknown model 'gtp2'; did you mean 'gpt2'?"),
    (["plan", "mixtral", "--gpu", "h100-sxm"], "did you mean 'mixtral-8x7b' or 'mixtral-8x22b'?"),
    (["report", "gpt2", "--gpu", "h100"], "; did you mean 'h100-sxm' or 'h100-pcie' or 'h200'?"),
    (["report", "gpt2", "--gpu", "A100-80GB"], "; did you mean 'a100-sxm-80gb' or 'a100-pcie-80gb'?"),
    (["report", "meta-llama/Llama-2-7b-hf"], "; or use the built-in 'llama-2-7b' (`costmodel report llama-2-7b`)"),
    (["report", "xyzzy"], "unknown model 'xyzzy' (`costmodel models` lists the "),
])
def test_unknown_names_get_a_did_you_mean(args, msg, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: the hub id is not there
    r = CliRunner().invoke(main, args)
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and msg in lines[0], r.output
    if "did you mean" not in msg:
        assert "did you mean" not in lines[0]


def _complete(words: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1),
           "_COSTMODEL_COMPLETE": "bash_complete"}
    code = "import sys; sys.argv[0] = 'costmodel'; from reports.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return [line.split(",", 1)[1] for line in r.stdout.splitlines()]


def test_shell_completion_of_model_and_gpu_names():
    from costmodel.hardware import hardware_ids
    from costmodel.models import preset_names

    assert _complete("costmodel report llama-2-") == ["llama-2-7b", "llama-2-13b", "llama-2-70b"]
    assert _complete("costmodel plan gpt2 --gpu h1") == [h for h in hardware_ids() if h.startswith("h1")]
    assert _complete("costmodel sweep mixtral") == [n for n in preset_names() if n.startswith("mixtral")]


def test_progress_bar_only_on_a_terminal(capsys):
    import io

    from reports import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress.over([1, 2], "x", show=False) == [1, 2]  # not a terminal: the items themselves
    with progress.Stages("profile", show=False) as say:
        say("timing 1/3")  # nothing drawn, nothing raised
    assert capsys.readouterr().err == ""
    stream = Tty()
    import tqdm
    bar = tqdm.tqdm([1, 2, 3], file=stream, desc="rendering plots")
    assert list(bar) == [1, 2, 3] and "rendering plots" in stream.getvalue()  # the library draws it
    shown = progress.over([1, 2, 3], "rendering plots", show=True)
    assert list(shown) == [1, 2, 3] and type(shown).__name__ == "tqdm"


def test_efficiencies_on_the_command_line_equal_a_profile_that_has_them(tmp_path):
    from costmodel.hardware import get_hardware

    hw = get_hardware("h100-sxm", None).to_dict()
    hw.update(id="h100-eff", flops_efficiency=0.35, bandwidth_efficiency=0.6, interconnect_efficiency=0.5)
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(hw))
    args = ["llama-2-7b", "--batch", "4", "--prompt", "1024", "--format", "json"]
    by_file = CliRunner().invoke(main, ["report", *args, "--hardware", str(path)])
    flags = ["--flops-efficiency", "0.35", "--bandwidth-efficiency", "0.6", "--interconnect-efficiency", "0.5"]
    by_flag = CliRunner().invoke(main, ["report", *args, "--gpu", "h100-sxm", *flags])
    default = CliRunner().invoke(main, ["report", *args, "--gpu", "h100-sxm"])
    t_file, t_flag, t_default = (json.loads(r.stdout) for r in (by_file, by_flag, default))
    assert t_flag["ttft_s"] == t_file["ttft_s"] and t_flag["tpot_s"] == t_file["tpot_s"]
    assert t_flag["ttft_s"] > t_default["ttft_s"]  # 0.35 of the peak, not the default 0.7
    plan = [json.loads(CliRunner().invoke(main, ["plan", "llama-2-7b", *extra, "--format", "json"]).stdout)
            for extra in (["--hardware", str(path)], ["--gpu", "h100-sxm", *flags])]
    assert [(p["ttft_s"], p["tpot_s"], p["max_batch"]) for p in plan][0] == \
        [(p["ttft_s"], p["tpot_s"], p["max_batch"]) for p in plan][1]
    r = CliRunner().invoke(main, ["report", "gpt2", "--gpu", "h100-sxm", "--flops-efficiency", "0"])
    assert r.exit_code == 2 and "0<x<=1" in r.output


def test_compare_memory_is_the_memory_plots_figure_less_its_reserve():
    from costmodel.hardware import get_hardware
    from costmodel.models import get_model
    from costmodel.spec import Workload
    from reports import plotdata as D

    spec, hw, wl = get_model("llama-2-7b"), get_hardware("h100-sxm", None), Workload(batch=4, prompt=1024)
    compare = D.compare_curves([spec], wl, [hw], [1024])
    curves, _ = D.memory_curves(spec, wl, hw, [4], [1024])
    row = curves[(curves["batch"] == 4) & (curves["prompt"] == 1024)].iloc[0]
    assert compare["memory_bytes"].iloc[0] == row["weights"] + row["KV cache"] + row["activations"]


def test_plot_context_axis_stops_at_the_models_limit(tmp_path):
    r = CliRunner().invoke(main, ["plot", "phases", "gpt2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    # 128 .. 1024 (gpt2's n_positions): only the largest prompt + gen - 1 = 1151 passes the limit
    assert "context 1151 (prompt 1024 + gen 128 - 1) on the plot's axes exceeds" in r.output
    assert "32895" not in r.output  # the old default axis ran to 32768


@pytest.mark.parametrize("columns", ["80", "100", "120"])
def test_tables_fit_the_terminal_and_wide_keeps_full_detail(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    for args in (["llama-2-7b", "--gpu", "h100-sxm"], ["t5-small", "--gpu", "h100-sxm"], ["gpt2"]):
        out = CliRunner().invoke(main, ["report", *args]).stdout
        assert max(map(len, out.splitlines())) <= int(columns), (args, columns)
        wide = CliRunner().invoke(main, ["report", *args, "--wide"]).stdout
        assert max(map(len, wide.splitlines())) > int(columns)
        assert "prefill FLOPs" in out and "decode FLOPs" in out  # every phase still shown
    monkeypatch.delenv("COLUMNS")
    piped = CliRunner().invoke(main, ["report", "llama-2-7b", "--gpu", "h100-sxm"]).stdout  # not a terminal
    header = next(line for line in piped.splitlines() if line.startswith("op "))
    assert "prefill FLOPs" in header and "decode time" in header  # one table, phases side by side
