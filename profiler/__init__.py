"""The runnable reference transformer (PyTorch) and its instruments. Every module imports torch but
:mod:`profiler.choices` (what the reference model accepts, torch-free for the CLI's choices)."""
