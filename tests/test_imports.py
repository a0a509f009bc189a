"""The analytic core and CLI stay light: importing them pulls in no torch, matplotlib or pandas."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["costmodel", "costmodel.cli"])
def test_import_is_light(module):
    probe = (f"import sys, {module}; "
             "print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_report_does_not_import_torch():
    probe = ("import sys; from click.testing import CliRunner; from costmodel.cli import main; "
             "r = CliRunner().invoke(main, ['report', 'llama-2-70b', '--format', 'json']); "
             "assert r.exit_code == 0, r.output; "
             "print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
