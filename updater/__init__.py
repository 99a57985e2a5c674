"""Consolidation: the update queue becomes LoRA adapter versions, with replay, leases, lineage and hot swap."""
import warnings

# transformers 5 deprecates a call peft makes on every adapter load; it is not ours to fix, only noise to users.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

from engramma.updater.consolidate import ConsolidationResult, consolidate
from engramma.updater.hotswap import ActiveAdapters
from engramma.updater.model import DEFAULT_MODEL, LanguageModel, ModelNotFound, load_model
from engramma.updater.registry import AdapterError, AdapterStatus, AdapterVersion

__all__ = ["DEFAULT_MODEL", "ActiveAdapters", "AdapterError", "AdapterStatus", "AdapterVersion",
           "ConsolidationResult", "LanguageModel", "ModelNotFound", "consolidate", "load_model"]
