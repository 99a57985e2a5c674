"""Consolidation: the update queue becomes LoRA adapter versions, with replay, leases, lineage and hot swap."""
from engramma.updater.consolidate import ConsolidationResult, consolidate
from engramma.updater.hotswap import ActiveAdapters
from engramma.updater.model import DEFAULT_MODEL, LanguageModel, ModelNotFound, load_model
from engramma.updater.registry import AdapterError, AdapterStatus, AdapterVersion

__all__ = ["DEFAULT_MODEL", "ActiveAdapters", "AdapterError", "AdapterStatus", "AdapterVersion",
           "ConsolidationResult", "LanguageModel", "ModelNotFound", "consolidate", "load_model"]
