"""The fast memory: items in DuckDB, vectors in FAISS, MiniLM embeddings."""
from engramma.memory.types import Hit, Item, Kind, Probe, Record, Stats  # noqa: I001  (types first: policies imports them)
from engramma.memory.memory import Memory, MemoryConfig

__all__ = ["Hit", "Item", "Kind", "Memory", "MemoryConfig", "Probe", "Record", "Stats"]
