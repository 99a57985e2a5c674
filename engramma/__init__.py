"""engramma: a memory that learns, for long-running agents."""
from engramma.errors import EngrammaError, InvalidItem, ItemNotFound, StoreBusy, StoreError
from engramma.types import Hit, Item, Kind, Probe, Record
from engramma.wiring import Memory

__all__ = [
    "EngrammaError", "Hit", "InvalidItem", "Item", "ItemNotFound", "Kind", "Memory", "Probe", "Record",
    "StoreBusy", "StoreError",
]
__version__ = "0.1.0"
