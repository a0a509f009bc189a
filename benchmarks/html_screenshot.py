"""Check the HTML report in a real browser: write `costmodel report --html`, load it in headless
Chromium from disk (no server, no network), and save a screenshot to look at.

Run by hand (CI has no Chromium; the unit tests check the page's structure only):

    .venv/bin/python benchmarks/html_screenshot.py [--model llama-2-7b] [--gpu h100-sxm] [--out /tmp]

Skips cleanly (exit 0, one line) when no Chromium is installed (Debian: apt-get install chromium).
Prints the page and screenshot paths and the page size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--batch", default="8")
    ap.add_argument("--prompt", default="2048")
    ap.add_argument("--out", default=tempfile.gettempdir())
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args()
    browser = chromium()
    if browser is None:
        print("skipped: no chromium on PATH (apt-get install chromium)")
        return 0
    from click.testing import CliRunner

    from reports.cli import main as cli

    page = os.path.join(args.out, f"report-{args.model}.html")
    shot = os.path.join(args.out, f"report-{args.model}.png")
    t = time.perf_counter()
    r = CliRunner().invoke(cli, ["report", args.model, "--batch", args.batch, "--prompt", args.prompt,
                                 "--gpu", args.gpu, "--html", page])
    if r.exit_code != 0:
        print(r.output)
        return 1
    built = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--screenshot={shot}", f"--window-size=1280,{args.height}",
               "file://" + os.path.abspath(page)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        shot_s = time.perf_counter() - t
    if proc.returncode != 0 or not os.path.exists(shot):
        print(f"chromium failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return 1
    print(f"page: {page} ({os.path.getsize(page) / 1e6:.2f} MB, written in {built:.1f} s)")
    print(f"screenshot: {shot} ({os.path.getsize(shot) / 1e3:.0f} kB, chromium {shot_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
