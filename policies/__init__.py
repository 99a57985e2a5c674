"""Routing policy: which items are indexed, trained, both or dropped, and why."""
from engramma.policies.decision import Decision, Route, Signals
from engramma.policies.engine import Policy, RuleTrace, decide, explain
from engramma.policies.loader import PRESETS, LivePolicy, PolicyError, load_policy, parse_policy

__all__ = ["PRESETS", "Decision", "LivePolicy", "Policy", "PolicyError", "Route", "RuleTrace", "Signals", "decide", "explain",
           "load_policy", "parse_policy"]

