"""`report --html FILE` (one self-contained page) and `report --format markdown --out DIR`
(relative image links): structure only; the browser check is benchmarks/html_screenshot.py."""

import base64
import os
import re
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from costmodel import Workload, analyze, get_model
from reports.cli import main
from reports import html as H

pytest.importorskip("matplotlib")

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Structure(HTMLParser):
    """Collects tags, image sources and h2 texts, and checks that every tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.imgs, self.h2, self.tags = [], [], [], [], []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)
        self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)


def _parse(text):
    p = _Structure()
    p.feed(text)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    return p


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_report_html_with_device(tmp_path):
    page = tmp_path / "report.html"
    r = run("report", "tiny-llama", "--batch", "2", "--prompt", "64", "--gen", "16", "--gpu", "h100-sxm",
            "--html", str(page))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(page)
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    p = _parse(text)
    assert p.h2 == ["Model", "Workload", "Prefill vs decode", "Memory", "Per-layer ops", "Plots"]
    # every plot embedded: phases, kv-cache and, with a device, memory, roofline, latency
    assert [i["alt"] for i in p.imgs] == ["phases plot", "kv-cache plot", "memory plot", "roofline plot",
                                          "latency plot"]
    for img in p.imgs:
        assert img["src"].startswith("data:image/svg+xml;base64,")  # vector: legible at full width
        assert base64.b64decode(img["src"].split(",", 1)[1]).lstrip()[:5] == b"<?xml"
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"<(script|link)\b", text) and "http://" not in text and "https://" not in text
    assert not re.search(r"src=\"(?!data:)", text)
    # the numbers are the analysis's (exact FLOPs in the phase table) and the roofline's
    a = analyze(get_model("tiny-llama"), Workload(batch=2, prompt=64, gen=16))
    assert f"{a.prefill.flops:,}" in text and f"{a.decode.flops:,}" in text
    assert "TTFT (time to first token)" in text and "roofline time" in text
    assert "attn_scores" in text and "each of 2 layers" in text
    assert os.listdir(tmp_path) == ["report.html"]


def test_report_html_without_device_has_two_plots(tmp_path):
    page = tmp_path / "r.html"
    r = run("report", "tiny-gpt2", "--prompt", "32", "--gen", "4", "--html", str(page))
    assert r.exit_code == 0, r.output
    p = _parse(page.read_text(encoding="utf-8"))
    assert [i["alt"] for i in p.imgs] == ["phases plot", "kv-cache plot"]


@pytest.mark.parametrize("model, plots", [("tiny-bert", ["phases plot", "memory plot", "roofline plot",
                                                        "latency plot"]),
                                          ("tiny-t5", ["phases plot", "kv-cache plot", "memory plot",
                                                       "roofline plot", "latency plot"])])
def test_report_html_encoder_models(tmp_path, model, plots):
    # an encoder-only model has no KV cache to plot; its latency plot is the encode pass
    page = tmp_path / "r.html"
    r = run("report", model, "--prompt", "16", "--gpu", "h100-sxm", "--html", str(page))
    assert r.exit_code == 0, r.output
    p = _parse(page.read_text(encoding="utf-8"))
    assert [i["alt"] for i in p.imgs] == plots
    assert p.h2[2].startswith("Encode")
    assert page.read_text(encoding="utf-8").count(" ms</td>") + page.read_text(encoding="utf-8").count(" us</td>") >= 1


def test_report_html_escapes_text():
    res = analyze(get_model("tiny-llama").with_(name="<b>&model"), Workload(prompt=8, gen=2))
    page = H.report_html(res, {})
    assert "&lt;b&gt;&amp;model" in page and "<b>&model" not in page
    _parse(page)


def test_markdown_out_dir_links_relative_images(tmp_path):
    r = run("report", "tiny-llama", "--prompt", "32", "--gen", "4", "--format", "markdown", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    paths = r.stdout.strip().splitlines()
    assert paths[-1] == str(tmp_path / "report.md")
    md = (tmp_path / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["phases-tiny-llama.png", "kv-cache-tiny-llama.png"]
    for link in links:
        assert not os.path.isabs(link) and (tmp_path / link).stat().st_size > 10_000
    assert md.startswith("# Cost report: tiny-llama")


@pytest.mark.parametrize("args, words", [
    (["--out", "/tmp"], "--out DIR goes with --format markdown"),
    (["--format", "markdown", "--out", "/dev/null/dir"], "is not a folder"),  # missing ones are created
    (["--html", "/dev/null/dir/r.html"], "is not a folder"),
])
def test_bad_output_paths(args, words):
    r = run("report", "tiny-llama", "--prompt", "32", "--gen", "4", *args)
    assert r.exit_code == 2 and words in r.output
    assert len(r.output.strip().splitlines()) == 1
