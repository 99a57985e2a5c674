"""One error family: catch `EngrammaError` for anything engramma raises on purpose."""
from __future__ import annotations


class EngrammaError(Exception):
    """Base of every error engramma raises for a user mistake or an unusable store."""


class InvalidItem(EngrammaError, ValueError):
    """An `Item` field has a value engramma cannot accept; the message names the field and the fix."""


class ItemNotFound(EngrammaError, LookupError):
    """No item with that id is in the store (never observed, or forgotten)."""


class StoreBusy(EngrammaError):
    """Another process held the store's write lock for longer than the busy timeout."""


class StoreError(EngrammaError):
    """The store folder is unusable as it is: not a store, written by a newer engramma, wrong embedder."""


class InvalidInput(EngrammaError, ValueError):
    """A file or argument given to engramma is malformed (a JSONL line, a config value)."""
