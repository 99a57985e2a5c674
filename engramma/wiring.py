"""`engramma.Memory`: the fast memory wired to the slow one, so that what the policy routes to training is
queued for the updater, and forgetting reaches every adapter that saw an item."""
from __future__ import annotations

from engramma.memory.memory import Memory as FastMemory
from engramma.updater.link import UpdaterWeights


class Memory(FastMemory):
    """One store folder: observe, recall, forget and inspect, with LoRA adapters as its slow memory. Open it
    with `Memory.open(path)`."""

    weights = UpdaterWeights()
