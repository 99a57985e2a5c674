"""Routing policy: which items are indexed, trained, both or dropped, and why."""
from engramma.policies.decision import Decision, Route, Signals
from engramma.policies.engine import INDEX_EVERYTHING, Policy, decide

__all__ = ["Decision", "INDEX_EVERYTHING", "Policy", "Route", "Signals", "decide"]
