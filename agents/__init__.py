"""Embedding engramma in agent loops (not yet built)."""

__all__: list[str] = []
