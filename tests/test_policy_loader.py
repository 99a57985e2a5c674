"""Policy files: every preset loads; a mistake names file, line, key path and the accepted values."""
import logging
from pathlib import Path

import pytest

from engramma.policies import PRESETS, LivePolicy, PolicyError, load_policy, parse_policy
from engramma.policies.decision import Route

HEAD = "version: 1\nname: x\ndefault: index\n"  # lines 1-3 of every case below


@pytest.mark.parametrize("name", PRESETS)
def test_every_shipped_preset_loads(name):
    policy = load_policy(f"preset:{name}")
    assert policy.name == name
    import yaml

    written = yaml.safe_load((Path(__file__).parents[1] / "policies" / "presets" / f"{name}.yaml").read_text())
    assert isinstance(policy.spec.default, Route) and policy.spec.default.value == written["default"]
    assert len(policy.content_hash) == 16


def test_presets_say_what_the_issue_asks():
    default = load_policy("preset:default")
    names = [rule.spec.name for rule in default.rules]
    assert names[0] == "secrets"  # secrets are dropped before anything else can keep them
    index_only = load_policy("preset:index-only")
    assert not any(rule.spec.route.trained for rule in index_only.rules) and not index_only.spec.default.trained


def test_a_file_and_its_hash(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nname: mine\ndefault: both\n")
    first = load_policy(path)
    path.write_text("version: 1\nname: mine\ndefault: index\n")
    second = load_policy(path)
    assert first.spec.default is Route.BOTH and second.spec.default is Route.INDEX
    assert first.content_hash != second.content_hash


BROKEN = """\
version: 1
name: broken
rules:
  - name: a
    when: {kind: [fcat], novelty: {gt: 3}}
    route: index
  - name: b
    whne: {}
    route: sideways
  - name: c
    route: both
    ttl: 3 days
    when: {pii_none: [emial]}
default: index
"""


@pytest.mark.parametrize("line, path, fragment", [
    (5, "rules[0].when.kind[0]", "'fcat' is not one of fact, event, preference, correction, skill"),
    (5, "rules[0].when.novelty.gt", "unknown key; accepted keys are gte, lte"),
    (8, "rules[1].whne", "unknown key; accepted keys are name, when, route"),
    (9, "rules[1].route", "'sideways' is not one of index, train, both or drop"),
    (12, "rules[2].ttl", "'3 days' is not a duration"),
    (13, "rules[2].when.pii_none[0]", "'emial' is not one of email, phone"),
])
def test_errors_name_file_line_path_and_accepted_values(line, path, fragment):
    with pytest.raises(PolicyError) as caught:
        parse_policy(BROKEN, "team/policy.yaml")
    assert f"team/policy.yaml:{line}: {path}: {fragment}" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("text, fragment", [
    ("version: 1\nname: x\nrules: []\n", "p.yaml:1: default: required key is missing"),
    ("version: 2\nname: x\ndefault: index\n", "p.yaml:1: version: 2 is not one of 1"),
    ("version: 1\nname: x\n  bad: [\n", "p.yaml:3: not valid YAML"),
    ("- just\n- a list\n", "p.yaml:1: a policy is a YAML mapping"),
    ("version: 1\nname: x\ndefault: index\nrules:\n - {name: a, route: drop}\n - {name: a, route: index}\n",
     "two rules are named 'a'"),
    ("version: 1\nname: x\ndefault: index\nsignals: {duplicate_threshold: 1.5}\n",
     "p.yaml:4: signals.duplicate_threshold: Input should be less than or equal to 1"),
    ("version: 1\nname: x\ndefault: index\nconsolidation: {replay: magic}\n",
     "consolidation.replay: 'magic' is not one of none, random, reservoir, retrieval or mir"),
    ("version: 1\nname: x\ndefault: index\ngate: {min_new_acc: 0.9}\n",
     "gate.min_new_acc: unknown key; accepted keys are min_new_accuracy"),
    # a key given twice is refused at its second occurrence, not silently last-wins
    (HEAD + "rules: []\ndefault: drop\n", "p.yaml:5: default: given twice (first on line 3); keep one"),
    (HEAD + "rules:\n  - name: a\n    route: index\n    route: drop\n",
     "p.yaml:7: rules[0].route: given twice (first on line 6); keep one"),
    (HEAD + "signals:\n  source_trust: {docs: 0.9, docs: 0.1}\n",
     "p.yaml:5: signals.source_trust.docs: given twice (first on line 5)"),
    (HEAD + "signals:\n  source_trust: {docs: 5}\n",
     "p.yaml:5: signals.source_trust.docs: trust is a number from 0 to 1, not 5"),
    (HEAD + "signals: {default_trust: -0.5}\n",
     "p.yaml:4: signals.default_trust: trust is a number from 0 to 1, not -0.5"),
    (HEAD + "rules:\n  - name: a\n    when: {pii_none: false}\n    route: index\n",
     "p.yaml:6: rules[0].when.pii_none: False is not accepted; write true (no PII at all) or a list of PII kinds: "
     "email, phone, credit_card, iban, ip_address, api_key, password, national_id"),
    (HEAD + "rules:\n  - name: a\n    when: {pii_none: email}\n    route: index\n",
     "p.yaml:6: rules[0].when.pii_none: 'email' is not accepted; write true (no PII at all) or a list of PII kinds: "
     "email, phone"),
    (HEAD + "rules:\n  - name: a\n    when:\n      novelty: {gte: 0.9, lte: 0.1}\n    route: index\n",
     "p.yaml:7: rules[0].when.novelty: gte 0.9 is above lte 0.1, so no value can match; gte must be at most lte"),
    (HEAD + "rules:\n  - name: a\n    when: {age: {gte: 2d, lte: 1d}}\n    route: index\n",
     "p.yaml:6: rules[0].when.age: gte 172800s is above lte 86400s, so no value can match"),
    (HEAD + "rules:\n  - name: a\n    when:\n      meta: {team: [sdk, web]}\n    route: index\n",
     "p.yaml:7: rules[0].when.meta.team: a list is not accepted; meta[key] equals one value: a string, a number, "
     "true, false or null"),
    (HEAD + "rules:\n  - name: a\n    when: {novlety: {gte: 0.5}}\n    route: index\n",
     "p.yaml:6: rules[0].when.novlety: unknown key; accepted keys are kind, source, scope, pii_any, pii_none, novelty, "
     "recurrence, volatility, length, feedback, source_trust, age, duplicate, has_probe, has_key, meta"),
    ("version: 1\nname: x\ndefault: sideways\n",
     "p.yaml:3: default: 'sideways' is not one of index, train, both or drop"),
])
def test_more_mistakes(text, fragment):
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert fragment in str(caught.value), str(caught.value)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError, match="the presets are default, assistant-private, index-only"):
        load_policy("preset:strict")


def test_what_strictness_still_allows():
    policy = parse_policy(HEAD + "rules:\n"
                          "  - &base {name: a, route: drop, when: {pii_none: true, meta: {team: sdk}}}\n"
                          "  - {<<: *base, name: b}\n"
                          "  - {name: c, route: index, when: {novelty: {gte: 0.5, lte: 0.5}}}\n", "p.yaml")
    assert [rule.spec.name for rule in policy.rules] == ["a", "b", "c"]  # an anchor reused, a merge key overridden
    assert policy.rules[1].spec.when.pii_none is True


def test_a_policy_given_as_text_reopens_from_the_kept_text(caplog):
    text = HEAD + "rules: [{name: a, route: drop}]\n"
    live = LivePolicy.fixed(parse_policy(text))
    # the origin a store records must not read as a file path ("<policy>" did, and every reopen logged it broken)
    assert live.origin.startswith("<policy ") and live.current().origin == live.origin
    with caplog.at_level(logging.INFO, logger="engramma"):
        reopened = LivePolicy(live.origin, last_good=text)
    assert reopened.error is None and not caplog.records
    assert reopened.current().content_hash == live.current().content_hash
    with pytest.raises(PolicyError, match="given as a loaded Policy, and its text was never kept"):
        LivePolicy(live.origin)
    assert LivePolicy.fixed(parse_policy(text, "README.md")).origin == live.origin  # a label is not a file


def test_a_policy_loaded_from_a_file_stays_tied_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy.yaml").write_text(HEAD)
    live = LivePolicy.fixed(load_policy("policy.yaml"))
    # absolute, since the store may be reopened from another working directory
    assert live.origin == str((tmp_path / "policy.yaml").resolve())
    (tmp_path / "policy.yaml").write_text("version: 1\nname: edited\ndefault: drop\n")
    assert live.current().name == "edited"
    assert LivePolicy.fixed(load_policy("preset:default")).origin == "preset:default"
