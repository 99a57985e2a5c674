"""Embedding engramma in agent loops: context building, a local model runner with hot swap, turning turns and
feedback into items, consolidation triggers. LlamaIndex integration: `engramma.agents.llamaindex`."""
from engramma.agents.context import context_block
from engramma.agents.feedback import observe_correction, observe_rating, observe_turn
from engramma.agents.runner import Answer, LocalAgent
from engramma.agents.triggers import ConsolidationTrigger

__all__ = ["Answer", "ConsolidationTrigger", "LocalAgent", "context_block", "observe_correction", "observe_rating",
           "observe_turn"]
