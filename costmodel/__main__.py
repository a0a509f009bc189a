"""``python -m costmodel``: the ``costmodel`` command line.

The one module of this package that reaches above it: the CLI lives in ``reports.cli`` (it renders
tables and plots), and this entry point only hands over to it, importing it when run, never when
``costmodel`` is imported (tests/test_layering.py names it as the one allowed exception).
"""

if __name__ == "__main__":
    from reports.cli import main

    main(prog_name="costmodel")
