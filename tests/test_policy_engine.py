"""The pure engine: a case table (item, signals) -> route covering every predicate, invariants, explanations."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramma.memory.pii import PII_KINDS
from engramma.types import Item, Kind, Probe
from engramma.policies import Route, Signals, decide, explain, load_policy, parse_policy


def one_rule(when: str, route: str = "train", extra: str = "") -> object:
    return parse_policy(f"version: 1\nname: t\ndefault: index\nrules:\n  - name: r\n    when: {when}\n"
                        f"    route: {route}\n{extra}")


ITEM = Item(text="Use the v2 endpoint for uploads.", kind="skill", scope="user:alice", source="docs", key="upload",
            probe=Probe("Which endpoint?", "v2"), meta={"team": "sdk", "feedback": 1})
BARE = Item(text="hello", kind="conversation", scope="session:s1")
SIG = Signals(content_hash="h", novelty=0.6, duplicate=False, recurrence=3, volatility=0.4,
              pii=frozenset({"email"}), length_tokens=12, source_trust=0.9, feedback=1.0, age_seconds=7200)
NONE = Signals()

# (when, item, signals, expected route): each predicate once matching (train) and once not (index, the default)
CASES = [
    ("{kind: [skill, fact]}", ITEM, SIG, "train"),
    ("{kind: [fact]}", ITEM, SIG, "index"),
    ("{source: [docs]}", ITEM, SIG, "train"),
    ("{source: [docs]}", BARE, SIG, "index"),
    ("{scope: 'user:*'}", ITEM, SIG, "train"),
    ("{scope: [global, 'agent:*']}", ITEM, SIG, "index"),
    ("{pii_any: [email, phone]}", ITEM, SIG, "train"),
    ("{pii_any: [phone]}", ITEM, SIG, "index"),
    ("{pii_none: true}", ITEM, NONE, "train"),
    ("{pii_none: true}", ITEM, SIG, "index"),
    ("{pii_none: [phone]}", ITEM, SIG, "train"),
    ("{pii_none: [email]}", ITEM, SIG, "index"),
    ("{novelty: {gte: 0.5}}", ITEM, SIG, "train"),
    ("{novelty: {lte: 0.5}}", ITEM, SIG, "index"),
    ("{recurrence: {gte: 3}}", ITEM, SIG, "train"),
    ("{recurrence: {gte: 3}}", ITEM, NONE, "index"),
    ("{volatility: {gte: 0.3}}", ITEM, SIG, "train"),
    ("{volatility: {gte: 0.3, lte: 0.35}}", ITEM, SIG, "index"),
    ("{length: {lte: 20}}", ITEM, SIG, "train"),
    ("{length: {gte: 20}}", ITEM, SIG, "index"),
    ("{feedback: {gte: 0.5}}", ITEM, SIG, "train"),
    ("{feedback: {gte: 0.5}}", ITEM, NONE, "index"),  # no feedback given: a bound cannot hold
    ("{source_trust: {gte: 0.8}}", ITEM, SIG, "train"),
    ("{source_trust: {gte: 0.8}}", ITEM, NONE, "index"),
    ("{age: {gte: 1h}}", ITEM, SIG, "train"),
    ("{age: {lte: 30m}}", ITEM, SIG, "index"),
    ("{duplicate: false}", ITEM, SIG, "train"),
    ("{duplicate: true}", ITEM, SIG, "index"),
    ("{has_probe: true}", ITEM, SIG, "train"),
    ("{has_probe: true}", BARE, SIG, "index"),
    ("{has_key: true}", ITEM, SIG, "train"),
    ("{has_key: true}", BARE, SIG, "index"),
    ("{meta: {team: sdk}}", ITEM, SIG, "train"),
    ("{meta: {team: web}}", ITEM, SIG, "index"),
    ("{meta: {team: null}}", BARE, SIG, "index"),  # an absent key does not equal null
    ("{kind: [skill], recurrence: {gte: 3}, source_trust: {gte: 0.5}}", ITEM, SIG, "train"),  # all must hold
    ("{kind: [skill], recurrence: {gte: 4}}", ITEM, SIG, "index"),
    ("{}", BARE, NONE, "train"),  # no conditions: always matches
]


@pytest.mark.parametrize("when, item, signals, expected", CASES)
def test_case_table(when, item, signals, expected):
    assert decide(item, signals, one_rule(when)).route.value == expected


def test_every_predicate_is_in_the_case_table():
    from engramma.policies.schema import When

    used = {key for when, *_ in CASES for key in parse_policy(
        f"version: 1\nname: t\ndefault: index\nrules: [{{name: r, route: drop, when: {when}}}]\n").spec.rules[0]
        .when.model_dump(exclude_none=True)}
    assert used == set(When.model_fields)


def test_first_match_wins_and_reasons_say_why():
    policy = parse_policy("""
version: 1
name: ordered
default: drop
rules:
  - {name: first, when: {kind: [skill]}, route: both, priority: 3, ttl: 1d}
  - {name: second, when: {kind: [skill]}, route: index}
""")
    decision = decide(ITEM, SIG, policy)
    assert (decision.route, decision.rule, decision.priority, decision.ttl_seconds) == (Route.BOTH, "first", 3, 86400)
    assert decision.reasons == ("kind skill (in [skill])",)
    fallback = decide(BARE, SIG, policy)
    assert (fallback.route, fallback.rule) == (Route.DROP, "default")


def test_pii_never_trains_wider_than_its_own_scope():
    shared = one_rule("{}", route="both", extra="    train_scope: shared\n")
    clean = decide(ITEM, NONE, shared)
    assert clean.train_scope == "global"
    personal = decide(ITEM, SIG, shared)  # SIG carries an email
    assert personal.train_scope == "user:alice"
    assert any("PII found (email)" in reason for reason in personal.reasons)


def test_routes_that_do_not_train_have_no_train_scope():
    assert decide(ITEM, SIG, one_rule("{}", route="index")).train_scope is None
    assert decide(ITEM, SIG, one_rule("{}", route="both")).train_scope == "user:alice"


def test_explain_says_why_each_earlier_rule_failed():
    policy = load_policy("preset:default")
    item = Item(text="Customers prefer short answers.", kind="preference", source="admin")
    traces = explain(item, Signals(source_trust=0.9), policy)
    assert [t.rule for t in traces] == ["secrets", "near-duplicates", "private-details", "volatile-facts",
                                        "trusted-corrections-and-preferences"]
    assert [t.matched for t in traces] == [False] * 4 + [True]
    assert traces[0].why == ("PII found: none, needs any of [credit_card, password, api_key]",)
    assert traces[1].why == ("duplicate false, needs is true",)
    assert traces[-1].why == ("kind preference (in [correction, preference])", "source_trust 0.9 (>= 0.6)")
    assert decide(item, Signals(source_trust=0.9), policy).rule == traces[-1].rule


def test_a_correction_of_a_learned_value_is_queued_where_that_value_was_learned():
    index_only = one_rule("{kind: [conversation]}", route="drop")  # facts fall to the default: index
    fact = Item(text="The rate limit is 300 a minute.", key="rate_limit", scope="user:alice")
    assert decide(fact, Signals(), index_only).route is Route.INDEX
    corrected = decide(fact, Signals(supersedes_learned="global"), index_only)
    assert (corrected.route, corrected.train_scope) == (Route.BOTH, "global")
    assert any("queued as a correction there" in r for r in corrected.reasons)
    private = decide(fact, Signals(supersedes_learned="global", pii=frozenset({"phone"})), index_only)
    assert (private.route, private.train_scope) == (Route.INDEX, None), "PII never reaches a shared adapter"
    assert any("carries PII" in r and "not queued" in r for r in private.reasons)
    own = decide(fact, Signals(supersedes_learned="user:alice", pii=frozenset({"phone"})), index_only)
    assert (own.route, own.train_scope) == (Route.BOTH, "user:alice")
    dropped = decide(Item(text="hi", kind="conversation", key="k"), Signals(supersedes_learned="global"), index_only)
    assert dropped.route is Route.DROP and dropped.train_scope is None


def test_decide_reads_no_clock_and_does_no_io(monkeypatch):
    """Pure: the case table decides the same with every clock and file access made to fail."""
    import builtins
    import datetime as dt
    import os
    import time

    policies = [one_rule(when) for when, *_ in CASES] + [load_policy(f"preset:{n}") for n in
                                                        ("default", "assistant-private", "index-only")]

    def forbidden(*args, **kwargs):
        raise AssertionError("decide() read a clock or touched a file")

    class NoClock(dt.datetime):
        now = utcnow = today = classmethod(forbidden)

    for name in ("time", "monotonic", "perf_counter", "time_ns"):
        monkeypatch.setattr(time, name, forbidden)
    monkeypatch.setattr(dt, "datetime", NoClock)
    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(os, "stat", forbidden)
    for policy in policies:
        for _, item, sig, _ in CASES:
            decide(item, sig, policy)
            explain(item, sig, policy)
    import engramma.policies.engine as engine

    assert not {"time", "datetime", "os", "io", "pathlib", "duckdb", "faiss"} & set(vars(engine)), \
        "the engine module holds a clock or I/O module a monkeypatch here would not catch"


def test_assistant_private_preset_intent():
    policy = load_policy("preset:assistant-private")
    decision = lambda item, **s: decide(item, Signals(**s), policy)  # noqa: E731
    bob = lambda text, **fields: Item(text=text, scope="user:bob", **fields)  # noqa: E731
    contact = decision(bob("Reach me at bob@example.org"), pii=frozenset({"email"}))
    assert (contact.route, contact.rule) == (Route.INDEX, "contact-details"), "personal details never train"
    assert decision(bob("IBAN DE89 3704 0044 0532 0130 00"), pii=frozenset({"iban"})).route is Route.DROP
    prefers = decision(bob("Call me Bobby.", kind="preference", source="user"), source_trust=0.7)
    assert (prefers.route, prefers.train_scope) == (Route.BOTH, "user:bob"), "a user's preferences: that user's adapter"
    moving = decision(bob("Bob's desk is 4B.", key="desk"), volatility=0.5)
    assert (moving.route, moving.rule) == (Route.INDEX, "changing-user-facts")
    chat = decision(Item(text="We talked about the weather.", kind="conversation", scope="session:s1"))
    assert (chat.route, chat.ttl_seconds) == (Route.INDEX, 7 * 86400)
    skill = Item(text="Summarise in three bullets.", kind="skill")
    shared = decision(skill, recurrence=3)
    assert (shared.route, shared.train_scope) == (Route.TRAIN, "global")
    assert decision(skill, recurrence=3, pii=frozenset({"phone"})).route is Route.INDEX
    assert decision(bob("Summarise in three bullets.", kind="skill"), recurrence=5).route is Route.INDEX


def test_default_preset_intent():
    policy = load_policy("preset:default")
    route = lambda item, **s: decide(item, Signals(**s), policy).route.value  # noqa: E731
    fact = Item(text="Refunds are accepted within 45 days.", key="refund_window", source="docs")
    assert route(fact, pii=frozenset({"credit_card"})) == "drop"
    assert route(fact, pii=frozenset({"api_key"})) == "drop"
    assert route(Item(text="alice@example.com", scope="user:alice"), pii=frozenset({"email"})) == "index"
    assert route(fact, volatility=0.5) == "index"
    assert route(Item(text="Say 'kind regards'.", kind="correction", source="admin"), source_trust=0.9) == "both"
    assert route(Item(text="x", kind="correction", source="web"), source_trust=0.3) == "index"
    assert route(Item(text="sort with key=", kind="skill"), recurrence=3) == "train"
    assert route(Item(text="sort with key=", kind="skill"), recurrence=2) == "index"
    assert route(fact, duplicate=True) == "drop"


items = st.builds(
    Item,
    text=st.text(min_size=1, max_size=40).filter(str.strip),
    kind=st.sampled_from(list(Kind)),
    scope=st.sampled_from(["global", "user:alice", "user:bob", "agent:a1", "session:s9"]),
    source=st.sampled_from([None, "docs", "user", "chat"]),
    key=st.sampled_from([None, "k1", "k2"]),
)
signals = st.builds(
    Signals,
    novelty=st.floats(0, 1), duplicate=st.booleans(), recurrence=st.integers(1, 10), volatility=st.floats(0, 1),
    pii=st.frozensets(st.sampled_from(PII_KINDS), max_size=3), length_tokens=st.integers(0, 500),
    source_trust=st.floats(0, 1), feedback=st.none() | st.floats(-1, 1), age_seconds=st.floats(0, 1e7),
)
policies = st.sampled_from(["preset:default", "preset:assistant-private", "preset:index-only"]).map(load_policy)


@settings(max_examples=300, deadline=None)
@given(stream=st.lists(st.tuples(items, signals), min_size=1, max_size=30), policy=policies)
def test_every_item_gets_one_decision_and_pii_never_reaches_a_shared_scope(stream, policy):
    for item, sig in stream:
        decision = decide(item, sig, policy)
        routes = {r.spec.name: r.spec.route for r in policy.rules} | {"default": policy.spec.default}
        assert decision.rule in routes and decision.reasons
        assert decision.route is routes[decision.rule], "the route of the rule it names (no supersession here)"
        if decision.route.trained:
            assert decision.train_scope in (item.scope, "global")
            if sig.pii:
                assert decision.train_scope == item.scope
        else:
            assert decision.train_scope is None
        assert decide(item, sig, policy) == decision  # pure: same input, same decision


@settings(max_examples=200, deadline=None)
@given(item=items, sig=signals, shared=st.booleans())
def test_pii_invariant_holds_whatever_the_rules_say(item, sig, shared):
    policy = one_rule("{}", route="train", extra=f"    train_scope: {'shared' if shared else 'own'}\n")
    decision = decide(item, sig, policy)
    assert decision.train_scope == (item.scope if sig.pii or not shared else "global")
