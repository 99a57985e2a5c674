"""The fast memory: items in DuckDB, vectors in FAISS, MiniLM embeddings."""
from engramma.memory.memory import Memory, MemoryConfig
from engramma.types import Hit, Item, Kind, Probe, Record, Stats

__all__ = ["Hit", "Item", "Kind", "Memory", "MemoryConfig", "Probe", "Record", "Stats"]
