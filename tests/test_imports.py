"""The analytic core and CLI stay light: importing them pulls in no torch, matplotlib or pandas."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["costmodel", "reports.cli"])
def test_import_is_light(module):
    probe = (f"import sys, {module}; "
             "print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_report_does_not_import_torch():
    probe = ("import sys; from click.testing import CliRunner; from reports.cli import main; "
             "r = CliRunner().invoke(main, ['report', 'llama-2-70b', '--format', 'json']); "
             "assert r.exit_code == 0, r.output; "
             "print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("args, extra", [
    (["profile", "tiny-llama"], "profile"),
    (["validate", "--quick"], "profile"),
    (["calibrate", "--quick"], "profile"),
    (["plot", "phases", "tiny-llama"], "plots"),
])
def test_missing_optional_dependency_is_one_line(args, extra, tmp_path):
    # a fresh process where torch and matplotlib cannot be imported, as on an install without extras
    probe = ("import sys; sys.modules['torch'] = None; sys.modules['matplotlib'] = None; "
             "from click.testing import CliRunner; from reports.cli import main; "
             f"r = CliRunner().invoke(main, {args!r}); print(r.exit_code); print(r.output.strip())")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path).stdout.strip().splitlines()
    assert out[0] == "2" and len(out) == 2, out
    assert out[1].startswith("Error: ") and f"pip install 'llm-costmodel[{extra}]'" in out[1], out
