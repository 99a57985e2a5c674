"""Policy files: every preset loads; a mistake names file, line, key path and the accepted values."""
import pytest

from engramma.policies import PRESETS, PolicyError, load_policy, parse_policy
from engramma.policies.decision import Route


@pytest.mark.parametrize("name", PRESETS)
def test_every_shipped_preset_loads(name):
    policy = load_policy(f"preset:{name}")
    assert policy.name == name
    assert policy.spec.default in Route
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
