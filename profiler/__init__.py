"""The runnable reference transformer (PyTorch) and its instruments. Importing this package imports torch."""
