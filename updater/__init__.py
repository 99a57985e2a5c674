"""Consolidation: replay selection, LoRA training, evaluation, gate and adapter registry (not yet built)."""

__all__: list[str] = []
