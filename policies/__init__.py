"""Routing policy: which items are indexed, trained, both or dropped, and why."""
from engramma.policies.decision import Decision, Route, Signals
from engramma.policies.engine import Policy, RuleTrace, decide, explain
from engramma.policies.loader import PRESETS, PolicyError, load_policy, parse_policy

__all__ = ["PRESETS", "Decision", "Policy", "PolicyError", "Route", "RuleTrace", "Signals", "decide", "explain",
           "load_policy", "parse_policy"]

# Until memory/ reads a store's policy file, it routes with this built-in one.
INDEX_EVERYTHING = parse_policy("version: 1\nname: builtin:index-everything\ndefault: index\n", "builtin")
__all__ += ["INDEX_EVERYTHING"]
