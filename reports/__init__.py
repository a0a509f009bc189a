"""Renderings of costmodel results: text tables (pure Python), and plots (matplotlib, imported lazily)."""
